// The gRPC service (raw ByteBuffer methods: server/wire.h) and the
// scheduler thread that runs every request's stages (server/server.h).
// ~1760 lines: the multi-stage loop still lives here; issue 12 moves it
// into a runner under engine/stages/, leaving the gRPC layer.
#include "server/server.h"

#include <algorithm>
#include <chrono>
#include <list>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/scheduler.h"
#include "engine/stages/session.h"
#include "engine/util/check.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "litestage/v1/litestage.grpc.pb.h"
#include "litestage/v1/litestage.pb.h"
#include "server/metrics.h"
#include "server/wire.h"

namespace litestage {

namespace v1 = ::litestage::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kVersion[] = "0.1.0";

enum class Method { kReason, kReasonStream, kGenerate, kGenerateStream };

const char* MethodName(Method method) {
  switch (method) {
    case Method::kReason:
      return "Reason";
    case Method::kReasonStream:
      return "ReasonStream";
    case Method::kGenerate:
      return "Generate";
    case Method::kGenerateStream:
      return "GenerateStream";
  }
  return "Unknown";
}

bool IsReason(Method method) {
  return method == Method::kReason || method == Method::kReasonStream;
}

// The canonical gRPC name of a status code, the `code` label of
// litestage_requests_total.
const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

// absl and gRPC share the canonical code numbering.
grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

double SecondsSince(Clock::time_point start, Clock::time_point now) {
  return std::chrono::duration<double>(now - start).count();
}

std::string NewRequestId() {
  thread_local absl::BitGen bitgen;
  return absl::StrFormat("ls-%016x", absl::Uniform<uint64_t>(bitgen));
}

// ---------------------------------------------------------------------------
// Proto conversion.

absl::StatusOr<SamplingParams> SamplingFromProto(const v1::SamplingParams& p) {
  SamplingParams sampling;
  sampling.temperature = p.temperature();
  sampling.top_k = p.top_k();
  // Unset (0) means no nucleus cut; other values are checked as given.
  sampling.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  sampling.seed = p.seed();
  if (absl::Status status = ValidateSamplingParams(sampling); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.", status.message()));
  }
  return sampling;
}

// `max_new_tokens`: the most tokens a stage (Reason) or the request
// (Generate) may generate; a window longer than that could never fill.
absl::StatusOr<EarlyExitConfig> EarlyExitFromProto(const v1::EarlyExit& p,
                                                   int64_t max_new_tokens) {
  EarlyExitConfig config;
  config.window = p.window();
  config.threshold = p.threshold();
  config.min_tokens = p.min_tokens();
  if (!p.confidence().empty()) {
    LS_RETURN_IF_ERROR(
        CheckFieldSize("early_exit.confidence", p.confidence(), kMaxNameBytes));
    absl::StatusOr<ConfidenceKind> kind = ParseConfidenceKind(p.confidence());
    if (!kind.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("early_exit.confidence: ", kind.status().message()));
    }
    config.kind = *kind;
  }
  // Its messages already name "early_exit.<field>".
  LS_RETURN_IF_ERROR(ValidateEarlyExitConfig(config));
  if (config.window > max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "early_exit.window: ", config.window, " is over max_new_tokens (",
        max_new_tokens, "): the window could never fill"));
  }
  if (config.min_tokens > max_new_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_exit.min_tokens: ", config.min_tokens,
                     " is over max_new_tokens (", max_new_tokens, ")"));
  }
  return config;
}

void EarlyExitToProto(const EarlyExitConfig& config, v1::EarlyExit* out) {
  out->set_window(config.window);
  out->set_threshold(config.threshold);
  out->set_confidence(ConfidenceKindName(config.kind));
  out->set_min_tokens(config.min_tokens);
}

void SublayersToProto(const SublayerCounts& counts, v1::SublayerCounts* out) {
  out->set_attention_executed(counts.attention_executed);
  out->set_attention_skipped(counts.attention_skipped);
  out->set_mlp_executed(counts.mlp_executed);
  out->set_mlp_skipped(counts.mlp_skipped);
}

void StageRecordToProto(int32_t index, const StageRecord& record,
                        v1::StageRecord* out) {
  out->set_index(index);
  out->set_name(record.name);
  out->set_output(record.output);
  out->set_prompt_tokens(record.prompt_tokens);
  out->set_cached_prompt_tokens(record.cached_prompt_tokens);
  out->set_generated_tokens(record.generated_tokens);
  out->set_forwarded_tokens(record.forwarded_tokens);
  SublayersToProto(record.sublayers, out->mutable_sublayers());
  out->set_skipped_attention_layers(record.skipped_attention_layers);
  out->set_skipped_mlp_layers(record.skipped_mlp_layers);
  EarlyExitToProto(record.early_exit, out->mutable_early_exit());
  out->set_seconds(record.seconds);
  out->set_prefill_seconds(record.prefill_seconds);
  out->set_decode_seconds(record.decode_seconds);
  out->set_early_exit_fired(record.early_exit_fired);
  out->set_early_exit_reason(record.early_exit_reason);
  out->set_early_exits(record.early_exits);
  out->set_mean_confidence(record.mean_confidence);
  out->set_finish_reason(record.finish_reason);
  for (const BranchRecord& branch : record.branches) {
    v1::BranchRecord* b = out->add_branches();
    b->set_option(branch.option);
    b->set_text(branch.text);
    b->set_prompt_tokens(branch.prompt_tokens);
    b->set_cached_prompt_tokens(branch.cached_prompt_tokens);
    b->set_generated_tokens(branch.generated_tokens);
    b->set_finish_reason(branch.finish_reason);
    b->set_early_exit_reason(branch.early_exit_reason);
    b->set_mean_confidence(branch.mean_confidence);
  }
}

double MeanMaxProb(const std::vector<TokenConfidence>& confidences) {
  if (confidences.empty()) return 0;
  double sum = 0;
  for (const TokenConfidence& c : confidences) sum += c.max_prob;
  return sum / static_cast<double>(confidences.size());
}

int64_t CountTrue(const std::vector<bool>& flags) {
  return std::count(flags.begin(), flags.end(), true);
}

std::string ProvenanceText(const ProfileProvenance& p) {
  std::vector<std::string> parts;
  if (!p.method.empty()) parts.push_back(absl::StrCat("method=", p.method));
  if (!p.created.empty()) parts.push_back(absl::StrCat("created=", p.created));
  if (!p.dataset.empty()) parts.push_back(absl::StrCat("dataset=", p.dataset));
  if (p.accuracy) parts.push_back(absl::StrCat("accuracy=", *p.accuracy));
  if (p.full_accuracy) {
    parts.push_back(absl::StrCat("full_accuracy=", *p.full_accuracy));
  }
  if (p.latency_seconds) {
    parts.push_back(absl::StrCat("latency_seconds=", *p.latency_seconds));
  }
  if (p.full_latency_seconds) {
    parts.push_back(
        absl::StrCat("full_latency_seconds=", *p.full_latency_seconds));
  }
  if (!p.notes.empty()) parts.push_back(absl::StrCat("notes=", p.notes));
  return absl::StrJoin(parts, "; ");
}

void StageProfileToProto(const std::string& stage, const StageProfile& sp,
                         int64_t num_layers, v1::StageProfileInfo* out) {
  out->set_stage(stage);
  const int64_t attention = CountTrue(sp.skip.attention);
  const int64_t mlp = CountTrue(sp.skip.mlp);
  out->set_skipped_attention_layers(attention);
  out->set_skipped_mlp_layers(mlp);
  out->set_skip_ratio(num_layers > 0 ? static_cast<double>(attention + mlp) /
                                           static_cast<double>(2 * num_layers)
                                     : 0.0);
  EarlyExitToProto(sp.early_exit, out->mutable_early_exit());
}

// ---------------------------------------------------------------------------
// Reactors. Each holds the job (for OnCancel) and is deleted in OnDone; the
// scheduler thread calls Finish/Write through the job's callbacks and never
// after it finished the job. Requests and responses are raw ByteBuffers
// (server/wire.h says why).

class UnaryReactor : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryReactor(LiteStageServer* server) : server_(server) {}
  void set_job(std::shared_ptr<LiteStageServer::Job> job);
  void OnCancel() override;
  void OnDone() override;

 private:
  LiteStageServer* server_;
  std::mutex mutex_;
  std::shared_ptr<LiteStageServer::Job> job_;  // Guarded by mutex_.
};

// Server-streaming with gRPC flow control: one write in flight, the rest
// queued in order; Finish only once every queued event was written.
//
// What a slow reader can make the server buffer is bounded: a token delta
// joins the queued delta of the same stage and branch (no other event
// between them), so the queue holds at most one delta per branch between
// structural events (stage started / finished, result), and its bytes are
// bounded by the text the request may generate.
template <typename Event>
class StreamReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit StreamReactor(LiteStageServer* server) : server_(server) {}
  void set_job(std::shared_ptr<LiteStageServer::Job> job) {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = std::move(job);
  }

  // Scheduler thread.
  void Write(Event event) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_ || finish_requested_) return;
    if (!Coalesce(&event)) queue_.push_back(std::move(event));
    if (writing_) return;
    writing_ = true;
    StartNextWrite(std::move(lock));
  }
  // Scheduler thread; last call.
  void Complete(const grpc::Status& status) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (finish_requested_) return;
    finish_requested_ = true;
    finish_status_ = status;
    if (writing_) return;  // OnWriteDone finishes.
    lock.unlock();
    this->Finish(status);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!ok) {  // The client is gone: drop the rest, stop the work.
      broken_ = true;
      queue_.clear();
      if (job_) MarkCancelled();
    }
    if (!queue_.empty()) {
      StartNextWrite(std::move(lock));
      return;
    }
    writing_ = false;
    if (finish_requested_) {
      const grpc::Status status = finish_status_;
      lock.unlock();
      this->Finish(status);
    }
  }
  void OnCancel() override;
  void OnDone() override;

 private:
  void MarkCancelled();

  // Merges a token delta into a queued delta of the same stage and branch
  // that no structural event follows. True when merged.
  bool Coalesce(Event* event) {
    if (!event->has_delta()) return false;
    for (auto it = queue_.rbegin(); it != queue_.rend(); ++it) {
      if (!it->has_delta()) return false;
      v1::TokenDelta* queued = it->mutable_delta();
      if (queued->stage_index() == event->delta().stage_index() &&
          queued->branch() == event->delta().branch()) {
        queued->mutable_text()->append(event->delta().text());
        return true;
      }
    }
    return false;
  }

  // Serializes the queue's front into the one buffer in flight and writes it.
  void StartNextWrite(std::unique_lock<std::mutex> lock) {
    SerializeResponse(queue_.front(), &in_flight_);
    queue_.pop_front();
    lock.unlock();
    this->StartWrite(&in_flight_);
  }

  LiteStageServer* server_;
  std::mutex mutex_;
  std::shared_ptr<LiteStageServer::Job> job_;
  std::deque<Event> queue_;     // Not yet written.
  grpc::ByteBuffer in_flight_;  // Being written (while writing_).
  bool writing_ = false;
  bool broken_ = false;
  bool finish_requested_ = false;
  grpc::Status finish_status_;
};

}  // namespace

// ---------------------------------------------------------------------------
// One accepted request.
struct LiteStageServer::Job {
  Method method = Method::kReason;
  std::string request_id;
  Clock::time_point arrival;
  std::chrono::system_clock::time_point deadline;
  std::atomic<bool> cancelled{false};  // Set by reactors on any thread.
  // Set by Admit: the server counts the RPC until its reactor's OnDone.
  std::atomic<bool> admitted{false};

  // Reason.
  const Pipeline* pipeline = nullptr;
  std::shared_ptr<const Profile> profile;  // The session points into it.
  std::optional<ReasoningSession> session;
  // Generate.
  GenerationRequest generation;
  std::string profile_name;

  // Output; called on the scheduler thread (finish: exactly once, with a
  // v1::ReasonResponse or v1::GenerateResponse, filled in only when OK).
  std::function<void(v1::ReasonEvent)> emit_reason;
  std::function<void(v1::GenerateEvent)> emit_generate;
  std::function<void(const grpc::Status&, const google::protobuf::Message*)>
      finish;

  // Scheduler-thread state.
  bool started = false;
  bool finished = false;   // Callbacks of its sequences are ignored.
  bool completed = false;  // The RPC was answered.
  double queue_seconds = 0;
  std::optional<double> ttft_seconds;
  uint64_t stage_serial = 0;  // Tells callbacks of an old stage apart.
  int32_t stage_index = 0;
  Clock::time_point stage_start;
  std::vector<SequenceHandle> handles;
  std::vector<GenerationResult> results;                    // [branches]
  std::vector<std::optional<Clock::time_point>> last_text;  // [branches]
  int64_t pending = 0;  // Branches of the current stage still running.
};

namespace {

void UnaryReactor::set_job(std::shared_ptr<LiteStageServer::Job> job) {
  std::lock_guard<std::mutex> lock(mutex_);
  job_ = std::move(job);
}

void UnaryReactor::OnDone() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (job_ && job_->admitted.load()) server_->RequestDelivered();
  }
  delete this;
}

template <typename Event>
void StreamReactor<Event>::OnDone() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (job_ && job_->admitted.load()) server_->RequestDelivered();
  }
  delete this;
}

void UnaryReactor::OnCancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (job_) {
    job_->cancelled.store(true);
    server_->Wake();
  }
}

template <typename Event>
void StreamReactor<Event>::OnCancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (job_) MarkCancelled();
}

template <typename Event>
void StreamReactor<Event>::MarkCancelled() {
  job_->cancelled.store(true);
  server_->Wake();
}

}  // namespace

// ---------------------------------------------------------------------------
// State shared by handlers (read-only once ready) and the scheduler thread.
struct LiteStageServer::Impl {
  // Immutable once ready: set by Start(), and the shipped profiles by Load()
  // before ready_ is released.
  std::map<std::string, Pipeline> pipelines;
  // File (and shipped) profiles by name, with their paths (for messages).
  std::map<std::string, std::shared_ptr<const Profile>> file_profiles;
  std::map<std::string, std::string> profile_paths;
  int64_t max_choices = 0;

  // Set by the scheduler thread before ready_ (release), read after.
  std::unique_ptr<Engine> engine;
  int64_t num_layers = 0;
  int64_t context_length = 0;

  // Scheduler thread only.
  std::unique_ptr<Scheduler> scheduler;
  std::list<std::shared_ptr<Job>> active;
  std::vector<Job*> ready_jobs;  // Stage finished; advance after Step.
  absl::Status last_step_error;

  const Pipeline* FindPipeline(const std::string& name) const {
    auto it = pipelines.find(name);
    return it == pipelines.end() ? nullptr : &it->second;
  }

  std::string PipelineNames() const {
    std::vector<std::string> names;
    for (const auto& [name, unused] : pipelines) names.push_back(name);
    return absl::StrJoin(names, ", ");
  }

  std::string ProfileNames() const {
    std::vector<std::string> names = {"full", "even:K", "last:K"};
    for (const auto& [name, unused] : file_profiles) names.push_back(name);
    return absl::StrJoin(names, ", ");
  }

  // `name` for `pipeline` (nullptr: Generate, any pipeline). Empty names
  // are resolved by the caller.
  absl::StatusOr<std::shared_ptr<const Profile>> ResolveProfile(
      const std::string& name, const Pipeline* pipeline) const {
    auto it = file_profiles.find(name);
    if (it != file_profiles.end()) {
      if (pipeline != nullptr && it->second->pipeline != pipeline->name) {
        return absl::InvalidArgumentError(absl::StrCat(
            "profile: '", name, "' is made for pipeline '",
            it->second->pipeline, "', not '", pipeline->name, "'"));
      }
      return it->second;
    }
    if (IsBuiltinProfileSpec(name)) {
      absl::StatusOr<Profile> builtin = BuiltinProfile(name, num_layers);
      if (!builtin.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("profile: ", builtin.status().message()));
      }
      return std::make_shared<const Profile>(*std::move(builtin));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("profile: unknown profile '", Abbreviate(name),
                     "'; this server has: ", ProfileNames()));
  }

  int64_t ActiveSequences() const {
    int64_t count = 0;
    for (const auto& job : active) count += job->pending;
    return count;
  }
};

// ---------------------------------------------------------------------------
// The gRPC service: validation and admission on gRPC's threads.
// Every method is raw (ByteBuffer in and out) so that requests protobuf
// refuses to parse get a real answer (server/wire.h).
using RawLiteStageService = v1::LiteStage::WithRawCallbackMethod_Reason<
    v1::LiteStage::WithRawCallbackMethod_ReasonStream<
        v1::LiteStage::WithRawCallbackMethod_Generate<
            v1::LiteStage::WithRawCallbackMethod_GenerateStream<
                v1::LiteStage::WithRawCallbackMethod_GetServerInfo<
                    v1::LiteStage::WithRawCallbackMethod_ListProfiles<
                        v1::LiteStage::Service>>>>>>;

class LiteStageServer::Service : public RawLiteStageService {
 public:
  explicit Service(LiteStageServer* server) : server_(server) {}

  grpc::ServerUnaryReactor* Reason(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override {
    return StartUnary<v1::ReasonRequest>(Method::kReason, context, *request,
                                         response);
  }
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReasonStream(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override {
    return StartStream<v1::ReasonRequest, v1::ReasonEvent>(
        Method::kReasonStream, context, *request);
  }
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override {
    return StartUnary<v1::GenerateRequest>(Method::kGenerate, context, *request,
                                           response);
  }
  grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerateStream(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override {
    return StartStream<v1::GenerateRequest, v1::GenerateEvent>(
        Method::kGenerateStream, context, *request);
  }

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override {
    auto* reactor = context->DefaultReactor();
    const Clock::time_point arrival = Clock::now();
    v1::GetServerInfoRequest parsed;
    absl::Status status = ParseRequest(*request, &parsed);
    if (status.ok()) status = server_->CheckServing();
    if (status.ok()) {
      v1::ServerInfo info;
      FillServerInfo(&info);
      SerializeResponse(info, response);
    }
    Observe("GetServerInfo", ToGrpc(status), arrival);
    reactor->Finish(ToGrpc(status));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListProfiles(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override {
    auto* reactor = context->DefaultReactor();
    const Clock::time_point arrival = Clock::now();
    v1::ListProfilesRequest parsed;
    absl::Status status = ParseRequest(*request, &parsed);
    if (status.ok()) status = server_->CheckServing();
    if (status.ok()) {
      const Pipeline* pipeline = nullptr;
      if (!parsed.pipeline().empty()) {
        pipeline = impl().FindPipeline(parsed.pipeline());
        if (pipeline == nullptr) status = UnknownPipeline(parsed.pipeline());
      }
      if (status.ok()) {
        v1::ListProfilesResponse profiles;
        FillProfiles(pipeline, profiles.mutable_profiles());
        SerializeResponse(profiles, response);
      }
    }
    Observe("ListProfiles", ToGrpc(status), arrival);
    reactor->Finish(ToGrpc(status));
    return reactor;
  }

 private:
  Impl& impl() { return *server_->impl_; }

  void Observe(const char* method, const grpc::Status& status,
               Clock::time_point arrival) {
    if (ServerMetrics* metrics = server_->metrics()) {
      metrics->ObserveRequest(method, StatusCodeName(status.error_code()),
                              SecondsSince(arrival, Clock::now()));
    }
  }

  void Reject(UnaryReactor* reactor, Method method, const absl::Status& status,
              Clock::time_point arrival) {
    Observe(MethodName(method), ToGrpc(status), arrival);
    reactor->Finish(ToGrpc(status));
  }
  template <typename Event>
  void RejectStream(StreamReactor<Event>* reactor, Method method,
                    const absl::Status& status, Clock::time_point arrival) {
    Observe(MethodName(method), ToGrpc(status), arrival);
    reactor->Complete(ToGrpc(status));
  }

  absl::Status UnknownPipeline(const std::string& name) const {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline: unknown pipeline '", Abbreviate(name),
                     "'; this server has: ", server_->impl_->PipelineNames()));
  }

  absl::StatusOr<std::shared_ptr<Job>> Prepare(
      const v1::ReasonRequest& request, Method method,
      grpc::CallbackServerContext* context, Clock::time_point arrival) {
    return PrepareReason(request, method, context, arrival);
  }
  absl::StatusOr<std::shared_ptr<Job>> Prepare(
      const v1::GenerateRequest& request, Method method,
      grpc::CallbackServerContext* context, Clock::time_point arrival) {
    return PrepareGenerate(request, method, context, arrival);
  }

  // Parses, validates and admits a unary request; the scheduler thread
  // answers it through job->finish.
  template <typename Request>
  grpc::ServerUnaryReactor* StartUnary(Method method,
                                       grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer& request_bytes,
                                       grpc::ByteBuffer* response) {
    const Clock::time_point arrival = Clock::now();
    auto* reactor = new UnaryReactor(server_);
    Request request;
    absl::Status parsed = ParseRequest(request_bytes, &request);
    absl::StatusOr<std::shared_ptr<Job>> job =
        parsed.ok() ? Prepare(request, method, context, arrival)
                    : absl::StatusOr<std::shared_ptr<Job>>(parsed);
    if (!job.ok()) {
      Reject(reactor, method, job.status(), arrival);
      return reactor;
    }
    (*job)->finish = [reactor, response](
                         const grpc::Status& status,
                         const google::protobuf::Message* result) {
      if (status.ok()) SerializeResponse(*result, response);
      reactor->Finish(status);
    };
    reactor->set_job(*job);
    if (absl::Status admitted = server_->Admit(*job); !admitted.ok()) {
      Reject(reactor, method, admitted, arrival);
    }
    return reactor;
  }

  // The same for a server stream of `Event`s (v1::ReasonEvent or
  // v1::GenerateEvent), whose last event carries the result.
  template <typename Request, typename Event>
  grpc::ServerWriteReactor<grpc::ByteBuffer>* StartStream(
      Method method, grpc::CallbackServerContext* context,
      const grpc::ByteBuffer& request_bytes) {
    using Result = std::remove_pointer_t<decltype(Event().mutable_result())>;
    const Clock::time_point arrival = Clock::now();
    auto* reactor = new StreamReactor<Event>(server_);
    Request request;
    absl::Status parsed = ParseRequest(request_bytes, &request);
    absl::StatusOr<std::shared_ptr<Job>> job =
        parsed.ok() ? Prepare(request, method, context, arrival)
                    : absl::StatusOr<std::shared_ptr<Job>>(parsed);
    if (!job.ok()) {
      RejectStream(reactor, method, job.status(), arrival);
      return reactor;
    }
    auto emit = [reactor](Event event) { reactor->Write(std::move(event)); };
    if constexpr (std::is_same_v<Event, v1::ReasonEvent>) {
      (*job)->emit_reason = std::move(emit);
    } else {
      (*job)->emit_generate = std::move(emit);
    }
    (*job)->finish = [reactor, request_id = (*job)->request_id](
                         const grpc::Status& status,
                         const google::protobuf::Message* result) {
      if (status.ok()) {
        Event event;
        event.set_request_id(request_id);
        event.mutable_result()->CopyFrom(static_cast<const Result&>(*result));
        reactor->Write(std::move(event));
      }
      reactor->Complete(status);
    };
    reactor->set_job(*job);
    if (absl::Status admitted = server_->Admit(*job); !admitted.ok()) {
      RejectStream(reactor, method, admitted, arrival);
    }
    return reactor;
  }

  std::shared_ptr<Job> NewJob(Method method, const std::string& request_id,
                              grpc::CallbackServerContext* context,
                              Clock::time_point arrival) {
    auto job = std::make_shared<Job>();
    job->method = method;
    job->request_id = request_id.empty() ? NewRequestId() : request_id;
    job->arrival = arrival;
    job->deadline = context->deadline();
    return job;
  }

  absl::StatusOr<std::shared_ptr<Job>> PrepareReason(
      const v1::ReasonRequest& request, Method method,
      grpc::CallbackServerContext* context, Clock::time_point arrival) {
    LS_RETURN_IF_ERROR(server_->CheckServing());
    const Impl& state = impl();
    const ServerOptions& options = server_->options_;
    LS_RETURN_IF_ERROR(
        CheckFieldSize("request_id", request.request_id(), kMaxRequestIdBytes));
    LS_RETURN_IF_ERROR(
        CheckFieldSize("question", request.question(), kMaxQuestionBytes));
    for (int i = 0; i < request.choices_size(); ++i) {
      LS_RETURN_IF_ERROR(CheckFieldSize(absl::StrCat("choices[", i, "]"),
                                        request.choices(i), kMaxChoiceBytes));
    }
    LS_RETURN_IF_ERROR(
        CheckFieldSize("pipeline", request.pipeline(), kMaxNameBytes));
    LS_RETURN_IF_ERROR(
        CheckFieldSize("profile", request.profile(), kMaxNameBytes));
    if (request.question().empty()) {
      return absl::InvalidArgumentError(
          "question: required, must be non-empty");
    }
    const std::string pipeline_name = request.pipeline().empty()
                                          ? options.default_pipeline
                                          : request.pipeline();
    const Pipeline* pipeline = state.FindPipeline(pipeline_name);
    if (pipeline == nullptr) return UnknownPipeline(pipeline_name);
    std::string profile_name = request.profile();
    if (profile_name.empty()) {
      profile_name = options.default_profile;
      // A file default belongs to its own pipeline; others run in full.
      auto it = state.file_profiles.find(profile_name);
      if (it != state.file_profiles.end() &&
          it->second->pipeline != pipeline->name) {
        profile_name = "full";
      }
    }
    LS_ASSIGN_OR_RETURN(std::shared_ptr<const Profile> profile,
                        state.ResolveProfile(profile_name, pipeline));

    ReasoningRequest reasoning;
    reasoning.question = request.question();
    reasoning.choices.assign(request.choices().begin(),
                             request.choices().end());
    LS_ASSIGN_OR_RETURN(reasoning.sampling,
                        SamplingFromProto(request.sampling()));
    if (request.max_new_tokens() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_new_tokens: must be >= 0 (0: the pipeline's), got ",
                       request.max_new_tokens()));
    }
    if (request.max_new_tokens() > options.max_new_tokens) {
      return absl::OutOfRangeError(
          absl::StrCat("max_new_tokens: ", request.max_new_tokens(),
                       " is over this server's limit of ",
                       options.max_new_tokens, " per stage"));
    }
    reasoning.max_new_tokens_cap = request.max_new_tokens() > 0
                                       ? request.max_new_tokens()
                                       : options.max_new_tokens;
    if (request.has_early_exit()) {
      LS_ASSIGN_OR_RETURN(reasoning.early_exit_override,
                          EarlyExitFromProto(request.early_exit(),
                                             reasoning.max_new_tokens_cap));
    }

    std::shared_ptr<Job> job =
        NewJob(method, request.request_id(), context, arrival);
    job->pipeline = pipeline;
    job->profile = std::move(profile);
    job->profile_name = profile_name;
    absl::StatusOr<ReasoningSession> session = ReasoningSession::Create(
        *state.engine, *pipeline, *job->profile, reasoning);
    if (!session.ok()) return session.status();
    job->session.emplace(*std::move(session));
    // The first stage's prompt must fit the context (later stages are
    // checked when they start).
    absl::StatusOr<std::vector<GenerationRequest>> first =
        job->session->StageRequests();
    if (!first.ok()) {
      return absl::Status(first.status().code(),
                          absl::StrCat("question: ", first.status().message()));
    }
    return job;
  }

  absl::StatusOr<std::shared_ptr<Job>> PrepareGenerate(
      const v1::GenerateRequest& request, Method method,
      grpc::CallbackServerContext* context, Clock::time_point arrival) {
    LS_RETURN_IF_ERROR(server_->CheckServing());
    const Impl& state = impl();
    const ServerOptions& options = server_->options_;
    LS_RETURN_IF_ERROR(
        CheckFieldSize("request_id", request.request_id(), kMaxRequestIdBytes));
    LS_RETURN_IF_ERROR(
        CheckFieldSize("prompt", request.prompt(), kMaxPromptBytes));
    LS_RETURN_IF_ERROR(
        CheckFieldSize("profile", request.profile(), kMaxNameBytes));
    LS_RETURN_IF_ERROR(CheckFieldSize("stage", request.stage(), kMaxNameBytes));
    if (request.prompt().empty()) {
      return absl::InvalidArgumentError("prompt: required, must be non-empty");
    }
    GenerationRequest generation;
    LS_ASSIGN_OR_RETURN(generation.sampling,
                        SamplingFromProto(request.sampling()));
    if (request.max_new_tokens() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_new_tokens: must be >= 0 (0: the server's "
                       "default), got ",
                       request.max_new_tokens()));
    }
    if (request.max_new_tokens() > options.max_new_tokens) {
      return absl::OutOfRangeError(absl::StrCat(
          "max_new_tokens: ", request.max_new_tokens(),
          " is over this server's limit of ", options.max_new_tokens));
    }
    generation.max_new_tokens = request.max_new_tokens() > 0
                                    ? request.max_new_tokens()
                                    : options.max_new_tokens;
    if (request.stop_size() > kMaxStopStrings) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop: ", request.stop_size(),
                       " stop strings, over the limit of ", kMaxStopStrings));
    }
    for (int i = 0; i < request.stop_size(); ++i) {
      const std::string field = absl::StrCat("stop[", i, "]");
      LS_RETURN_IF_ERROR(CheckFieldSize(field, request.stop(i), kMaxStopBytes));
      if (request.stop(i).empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": empty stop string"));
      }
      generation.stop_strings.push_back(request.stop(i));
    }
    const std::string profile_name =
        request.profile().empty() ? "full" : request.profile();
    LS_ASSIGN_OR_RETURN(std::shared_ptr<const Profile> profile,
                        state.ResolveProfile(profile_name, nullptr));
    if (!profile->builtin) {
      if (request.stage().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("stage: required with file profile '", profile_name,
                         "' (the pipeline stage whose settings apply)"));
      }
      if (profile->stages.count(request.stage()) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("stage: profile '", profile_name, "' has no stage '",
                         Abbreviate(request.stage()), "'"));
      }
    }
    const StageProfile& settings = profile->ForStage(request.stage());
    generation.skip = settings.skip;
    generation.early_exit = settings.early_exit;
    if (request.has_early_exit()) {
      LS_ASSIGN_OR_RETURN(
          generation.early_exit,
          EarlyExitFromProto(request.early_exit(), generation.max_new_tokens));
    }
    const std::vector<TextRange> plain_prompt =
        request.split_special_tokens()
            ? std::vector<TextRange>{{0, request.prompt().size()}}
            : std::vector<TextRange>{};
    absl::StatusOr<std::vector<int32_t>> tokens =
        request.chat()
            ? state.engine->EncodeChat(request.prompt())
            : state.engine->EncodePrompt(request.prompt(), plain_prompt);
    if (!tokens.ok()) {
      return absl::Status(tokens.status().code(),
                          absl::StrCat(request.chat() ? "chat: " : "prompt: ",
                                       tokens.status().message()));
    }
    if (tokens->empty()) {
      return absl::InvalidArgumentError(
          "prompt: encodes to no tokens and the tokenizer adds no BOS");
    }
    const int64_t length = static_cast<int64_t>(tokens->size());
    if (state.context_length > 0 && length >= state.context_length) {
      return absl::OutOfRangeError(
          absl::StrCat("prompt: ", length, " tokens, the model's context is ",
                       state.context_length, " (shorten the prompt)"));
    }
    generation.prompt_tokens = *std::move(tokens);

    std::shared_ptr<Job> job =
        NewJob(method, request.request_id(), context, arrival);
    job->generation = std::move(generation);
    job->profile = std::move(profile);
    job->profile_name = profile_name;
    return job;
  }

  void FillProfileInfo(const Profile& profile, v1::ProfileInfo* out) {
    const Impl& state = impl();
    out->set_name(profile.name);
    out->set_builtin(profile.builtin);
    out->set_provenance(ProvenanceText(profile.provenance));
    if (profile.builtin) {
      // The same settings in every stage of every pipeline.
      StageProfileToProto("*", profile.ForStage(""), state.num_layers,
                          out->add_stages());
      return;
    }
    out->set_pipeline(profile.pipeline);
    const Pipeline* pipeline = state.FindPipeline(profile.pipeline);
    if (pipeline == nullptr) return;
    for (const PipelineStage& stage : pipeline->stages) {
      StageProfileToProto(stage.name, profile.ForStage(stage.name),
                          state.num_layers, out->add_stages());
    }
  }

  void FillProfiles(const Pipeline* pipeline,
                    google::protobuf::RepeatedPtrField<v1::ProfileInfo>* out) {
    const Impl& state = impl();
    std::vector<std::string> builtins = {"full"};
    const std::string& default_profile = server_->options_.default_profile;
    if (default_profile != "full" && IsBuiltinProfileSpec(default_profile)) {
      builtins.push_back(default_profile);
    }
    for (const std::string& spec : builtins) {
      absl::StatusOr<Profile> profile = BuiltinProfile(spec, state.num_layers);
      if (profile.ok()) FillProfileInfo(*profile, out->Add());
    }
    for (const auto& [name, profile] : state.file_profiles) {
      if (pipeline != nullptr && profile->pipeline != pipeline->name) continue;
      FillProfileInfo(*profile, out->Add());
    }
  }

  void FillServerInfo(v1::ServerInfo* info) {
    const Impl& state = impl();
    const ServerOptions& options = server_->options_;
    const Engine& engine = *state.engine;
    info->set_version(kVersion);
    info->set_model(options.engine.model);
    info->set_fingerprint(engine.fingerprint().ToString());
    info->set_backend(state.engine->backend().name());
    info->set_device(options.engine.device);
    info->set_dtype(DTypeName(engine.weights().matrix_dtype));
    info->set_num_layers(state.num_layers);
    for (const auto& [name, pipeline] : state.pipelines) {
      v1::PipelineInfo* p = info->add_pipelines();
      p->set_name(name);
      p->set_description(pipeline.description);
      for (const PipelineStage& stage : pipeline.stages) {
        p->add_stages(stage.name);
      }
      p->set_min_choices(pipeline.min_choices);
      p->set_max_choices(pipeline.max_choices);
      for (const std::string& choice : pipeline.default_choices) {
        p->add_default_choices(choice);
      }
    }
    FillProfiles(nullptr, info->mutable_profiles());
    info->set_default_pipeline(options.default_pipeline);
    info->set_default_profile(options.default_profile);
    v1::Limits* limits = info->mutable_limits();
    limits->set_max_queue(options.max_queue);
    limits->set_max_batch(options.max_batch);
    limits->set_kv_cache_tokens(options.engine.backend.kv_cache_tokens);
    limits->set_context_length(state.context_length);
    limits->set_max_new_tokens(options.max_new_tokens);
    limits->set_max_choices(state.max_choices);
  }

  LiteStageServer* server_;
};

// ---------------------------------------------------------------------------
// Start / stop.

LiteStageServer::LiteStageServer(ServerOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}

absl::StatusOr<std::unique_ptr<LiteStageServer>> LiteStageServer::Start(
    ServerOptions options) {
  if (options.engine.model.empty()) {
    return absl::InvalidArgumentError("--model is required");
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--port must be in [0, 65535], got ", options.port));
  }
  if (options.max_queue < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-queue must be >= 1, got ", options.max_queue));
  }
  if (options.max_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batch must be >= 1, got ", options.max_batch));
  }
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-new-tokens must be >= 1, got ", options.max_new_tokens));
  }
  if (options.tls_cert_path.empty() != options.tls_key_path.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key must be given together");
  }

  std::unique_ptr<LiteStageServer> server(
      new LiteStageServer(std::move(options)));
  const ServerOptions& opts = server->options_;
  Impl& impl = *server->impl_;

  // Pipelines: the built-ins, then the files (names must be unique).
  for (const std::string& name : BuiltinPipelineNames()) {
    LS_ASSIGN_OR_RETURN(Pipeline pipeline, BuiltinPipeline(name));
    impl.pipelines.emplace(name, std::move(pipeline));
  }
  for (const std::string& path : opts.pipeline_files) {
    LS_ASSIGN_OR_RETURN(Pipeline pipeline, LoadPipelineFile(path));
    if (impl.pipelines.count(pipeline.name) > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": pipeline '", pipeline.name,
          "' is already loaded (built-in or an earlier --pipelines file)"));
    }
    const std::string name = pipeline.name;
    impl.pipelines.emplace(name, std::move(pipeline));
  }
  for (const auto& [name, pipeline] : impl.pipelines) {
    impl.max_choices = std::max(impl.max_choices, pipeline.max_choices);
  }
  if (impl.FindPipeline(opts.default_pipeline) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default-pipeline: unknown pipeline '", opts.default_pipeline,
        "'; loaded: ", impl.PipelineNames()));
  }
  // Profiles: parsed now, validated against the model once it is loaded.
  for (const std::string& path : opts.profile_files) {
    LS_ASSIGN_OR_RETURN(Profile profile, LoadProfileFile(path));
    if (IsBuiltinProfileSpec(profile.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": profile name '", profile.name,
                       "' is a built-in profile's; rename it"));
    }
    if (impl.file_profiles.count(profile.name) > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": profile '", profile.name, "' is also defined in ",
          impl.profile_paths[profile.name]));
    }
    if (impl.FindPipeline(profile.pipeline) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": profile '", profile.name, "' is for pipeline '",
          profile.pipeline, "', which this server does not load (loaded: ",
          impl.PipelineNames(), "; add it with --pipelines)"));
    }
    impl.profile_paths[profile.name] = path;
    const std::string name = profile.name;
    impl.file_profiles.emplace(
        name, std::make_shared<const Profile>(std::move(profile)));
  }
  if (!IsBuiltinProfileSpec(opts.default_profile) &&
      impl.file_profiles.count(opts.default_profile) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default-profile: unknown profile '", opts.default_profile,
        "'; give full, even:K, last:K or the name of a --profiles file"));
  }

  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  if (!opts.tls_cert_path.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    LS_ASSIGN_OR_RETURN(pair.cert_chain, ReadFileToString(opts.tls_cert_path));
    LS_ASSIGN_OR_RETURN(pair.private_key, ReadFileToString(opts.tls_key_path));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    credentials = grpc::SslServerCredentials(ssl);
  }

  server->registry_ = opts.metrics_registry
                          ? opts.metrics_registry
                          : std::make_shared<prometheus::Registry>();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  InstallProtobufLogHandler();
  server->service_ = std::make_unique<Service>(server.get());
  grpc::ServerBuilder builder;
  // Larger requests are refused by gRPC (RESOURCE_EXHAUSTED) before any
  // handler runs; every field has its own, smaller bound (server/wire.h).
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxRequestBytes));
  // Two servers must never share a port silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  const std::string listen = absl::StrCat(opts.host, ":", opts.port);
  builder.AddListeningPort(listen, credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen,
                     " (port in use, or a bad --host / TLS files)"));
  }
  server->address_ = absl::StrCat(opts.host, ":", server->port_);
  grpc::HealthCheckServiceInterface* health =
      server->grpc_server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kLiteStageServiceName, false);

  server->scheduler_thread_ =
      std::thread([raw = server.get()] { raw->SchedulerLoop(); });
  return server;
}

LiteStageServer::~LiteStageServer() { Shutdown(0); }

absl::Status LiteStageServer::WaitUntilReady() {
  std::unique_lock<std::mutex> lock(mutex_);
  state_cv_.wait(lock, [&] { return load_done_; });
  return load_status_;
}

absl::Status LiteStageServer::load_status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return load_status_;
}

void LiteStageServer::BeginDrain() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (draining_.exchange(true)) return;
  }
  if (!grpc_server_) return;  // Never listened (Start failed).
  grpc_server_->GetHealthCheckService()->SetServingStatus(kLiteStageServiceName,
                                                          false);
  LS_LOG(INFO) << "draining: readiness NOT_SERVING, new requests refused, "
               << in_flight_.load() << " accepted requests still running";
}

void LiteStageServer::Shutdown(double grace_seconds) {
  if (shut_down_.exchange(true)) return;
  BeginDrain();
  bool grace_over = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto grace = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(std::max(0.0, grace_seconds)));
    state_cv_.wait_for(lock, grace, [&] { return undelivered_.load() == 0; });
    if (undelivered_.load() > 0) {
      grace_over = true;
      LS_LOG(WARNING) << "grace period over: cancelling " << in_flight_.load()
                      << " requests still running; "
                      << undelivered_.load() - in_flight_.load()
                      << " answered ones are still being delivered";
      cancel_all_ = true;
      wake_cv_.notify_all();
      // Only a loaded server has accepted requests, and its scheduler
      // thread answers them all now.
      state_cv_.wait(lock, [&] { return in_flight_.load() == 0; });
    }
  }
  if (grpc_server_) {
    // Cancels the calls still writing to slow readers: after the grace
    // period at once, else after a second (all were delivered already).
    grpc_server_->Shutdown(
        std::chrono::system_clock::now() +
        (grace_over ? std::chrono::seconds(0) : std::chrono::seconds(1)));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_cv_.notify_all();
  if (scheduler_thread_.joinable()) scheduler_thread_.join();
  if (grpc_server_) grpc_server_->Wait();
}

absl::Status LiteStageServer::CheckServing() const {
  if (draining_.load()) {
    return absl::UnavailableError(
        "server is draining (shutting down); retry on another replica");
  }
  if (!ready_.load(std::memory_order_acquire)) {
    absl::Status load = load_status();
    if (!load.ok()) {
      return absl::UnavailableError(
          absl::StrCat("model failed to load: ", load.message()));
    }
    return absl::UnavailableError("loading model; retry shortly");
  }
  return absl::OkStatus();
}

absl::Status LiteStageServer::Admit(std::shared_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Rechecked under the lock: BeginDrain flips draining_ holding it, so
    // nothing is admitted after Shutdown starts counting in_flight_.
    if (draining_.load()) {
      return absl::UnavailableError(
          "server is draining (shutting down); retry on another replica");
    }
    const int64_t waiting = static_cast<int64_t>(admission_.size());
    if (waiting >= options_.max_queue) {
      return absl::UnavailableError(absl::StrCat(
          "admission queue full (", waiting,
          " requests waiting); retry with backoff or another replica"));
    }
    job->admitted.store(true);
    admission_.push_back(std::move(job));
    in_flight_.fetch_add(1);
    undelivered_.fetch_add(1);
  }
  wake_cv_.notify_one();
  return absl::OkStatus();
}

void LiteStageServer::RequestDelivered() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    undelivered_.fetch_sub(1);
  }
  state_cv_.notify_all();
}

void LiteStageServer::Wake() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_pending_ = true;
  }
  wake_cv_.notify_one();
}

// ---------------------------------------------------------------------------
// The scheduler thread.

absl::Status LiteStageServer::Load() {
  if (options_.before_load) options_.before_load();
  Impl& impl = *impl_;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(options_.engine);
  if (!engine.ok()) {
    return absl::Status(engine.status().code(),
                        absl::StrCat("--model ", options_.engine.model, ": ",
                                     engine.status().message()));
  }
  impl.engine = *std::move(engine);
  impl.num_layers = impl.engine->config().num_hidden_layers;
  impl.context_length = impl.engine->config().max_position_embeddings;

  std::map<std::string, std::vector<std::string>> stages_by_pipeline;
  for (const auto& [name, pipeline] : impl.pipelines) {
    for (const PipelineStage& stage : pipeline.stages) {
      stages_by_pipeline[name].push_back(stage.name);
    }
  }
  for (const auto& [name, profile] : impl.file_profiles) {
    const std::vector<std::string>& stages =
        stages_by_pipeline[profile->pipeline];
    absl::Status valid =
        ValidateProfile(*profile, impl.engine->fingerprint(), impl.num_layers,
                        profile->pipeline, stages);
    if (!valid.ok()) {
      return absl::Status(valid.code(), absl::StrCat(impl.profile_paths[name],
                                                     ": ", valid.message()));
    }
  }
  if (options_.shipped_profiles) AddShippedProfiles(stages_by_pipeline);
  if (IsBuiltinProfileSpec(options_.default_profile)) {
    absl::StatusOr<Profile> profile =
        BuiltinProfile(options_.default_profile, impl.num_layers);
    if (!profile.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--default-profile: ", profile.status().message()));
    }
  }

  SchedulerOptions scheduler_options;
  scheduler_options.max_batch = options_.max_batch;
  scheduler_options.skip_set_batching = options_.skip_set_batching;
  impl.scheduler =
      std::make_unique<Scheduler>(impl.engine.get(), scheduler_options);

  const std::string& model = options_.engine.model;
  ModelLabels labels;
  labels.model = model.substr(model.find_last_of('/') == std::string::npos
                                  ? 0
                                  : model.find_last_of('/') + 1);
  labels.backend = impl.engine->backend().name();
  labels.dtype = DTypeName(impl.engine->weights().matrix_dtype);
  metrics_ =
      std::make_unique<ServerMetrics>(registry_, labels, stages_by_pipeline);
  // The skip ratio of every profile this server names, per stage.
  std::vector<std::string> builtins = {"full"};
  if (options_.default_profile != "full" &&
      IsBuiltinProfileSpec(options_.default_profile)) {
    builtins.push_back(options_.default_profile);
  }
  for (const std::string& spec : builtins) {
    absl::StatusOr<Profile> profile = BuiltinProfile(spec, impl.num_layers);
    if (!profile.ok()) continue;
    for (const auto& [pipeline, stages] : stages_by_pipeline) {
      for (const std::string& stage : stages) {
        metrics_->SetStageSkipRatio(pipeline, stage, spec,
                                    profile->SkipRatio(stage, impl.num_layers));
      }
    }
  }
  for (const auto& [name, profile] : impl.file_profiles) {
    for (const std::string& stage : stages_by_pipeline[profile->pipeline]) {
      metrics_->SetStageSkipRatio(profile->pipeline, stage, name,
                                  profile->SkipRatio(stage, impl.num_layers));
    }
  }
  metrics_ready_.store(true, std::memory_order_release);
  LS_LOG(INFO) << "model loaded: " << impl.engine->Describe() << " on "
               << impl.engine->backend().description();
  return absl::OkStatus();
}

void LiteStageServer::AddShippedProfiles(
    const std::map<std::string, std::vector<std::string>>& stages_by_pipeline) {
  Impl& impl = *impl_;
  const std::vector<ShippedProfile>& shipped =
      options_.shipped_profiles_override ? *options_.shipped_profiles_override
                                         : ShippedProfiles();
  for (const ShippedProfile& entry : shipped) {
    absl::StatusOr<Profile> profile = ParseProfile(entry.json, entry.source);
    if (!profile.ok()) {  // Every shipped file parses (profile_test).
      LS_LOG(ERROR) << "skipping shipped profile: " << profile.status();
      continue;
    }
    // Made for another model, or for a pipeline this server does not load.
    if (!(profile->model == impl.engine->fingerprint())) continue;
    auto stages = stages_by_pipeline.find(profile->pipeline);
    if (stages == stages_by_pipeline.end()) continue;
    if (impl.file_profiles.count(profile->name) > 0) {
      LS_LOG(INFO) << "shipped profile '" << profile->name << "' ("
                   << entry.source << ") is replaced by "
                   << impl.profile_paths[profile->name];
      continue;
    }
    absl::Status valid =
        ValidateProfile(*profile, impl.engine->fingerprint(), impl.num_layers,
                        profile->pipeline, stages->second);
    if (!valid.ok()) {
      LS_LOG(ERROR) << "skipping shipped profile " << entry.source << ": "
                    << valid;
      continue;
    }
    LS_LOG(INFO) << "shipped profile '" << profile->name << "' ("
                 << entry.source << ") for pipeline " << profile->pipeline;
    const std::string name = profile->name;
    impl.profile_paths[name] = entry.source;
    impl.file_profiles.emplace(
        name, std::make_shared<const Profile>(*std::move(profile)));
  }
}

namespace {

void FillTimings(const LiteStageServer::Job& job, double total_seconds,
                 v1::Timings* out) {
  out->set_queue_seconds(job.queue_seconds);
  out->set_total_seconds(total_seconds);
  out->set_time_to_first_token_seconds(job.ttft_seconds.value_or(0));
}

}  // namespace

void LiteStageServer::SchedulerLoop() {
  const absl::Status loaded = Load();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    load_done_ = true;
    load_status_ = loaded;
    if (loaded.ok()) ready_.store(true, std::memory_order_release);
  }
  state_cv_.notify_all();
  if (!loaded.ok()) {
    LS_LOG(ERROR) << "loading failed: " << loaded;
    std::unique_lock<std::mutex> lock(mutex_);
    wake_cv_.wait(lock, [&] { return stop_; });
    return;
  }
  if (!draining_.load()) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(
        kLiteStageServiceName, true);
  }

  Impl& impl = *impl_;
  Scheduler& scheduler = *impl.scheduler;

  // Answers the RPC once; the job leaves `active` after this iteration.
  auto complete = [&](Job& job, const grpc::Status& status) {
    if (job.completed) return;
    job.completed = true;
    job.finished = true;
    const Clock::time_point now = Clock::now();
    const double total = SecondsSince(job.arrival, now);
    if (IsReason(job.method)) {
      v1::ReasonResponse response;
      if (status.ok()) {
        const ReasoningResult& result = job.session->result();
        response.set_request_id(job.request_id);
        response.set_pipeline(job.pipeline->name);
        response.set_profile(job.profile_name);
        for (size_t i = 0; i < result.stages.size(); ++i) {
          StageRecordToProto(static_cast<int32_t>(i), result.stages[i],
                             response.add_stages());
        }
        for (const std::string& choice : result.choices) {
          response.add_choices(choice);
        }
        response.set_answer(result.answer);
        response.set_answer_index(
            result.answer_index.has_value()
                ? static_cast<int32_t>(*result.answer_index)
                : -1);
        response.set_answer_text(result.answer_text);
        response.set_prompt_tokens(result.prompt_tokens);
        response.set_generated_tokens(result.generated_tokens);
        SublayersToProto(result.sublayers, response.mutable_sublayers());
        FillTimings(job, total, response.mutable_timings());
      }
      job.finish(status, &response);
    } else {
      v1::GenerateResponse response;
      if (status.ok()) {
        const GenerationResult& r = job.results[0];
        response.set_request_id(job.request_id);
        response.set_text(r.text);
        response.set_finish_reason(FinishReasonName(r.finish_reason));
        response.set_early_exit_reason(r.early_exit_reason);
        response.set_prompt_tokens(r.prompt_tokens);
        response.set_generated_tokens(static_cast<int64_t>(r.tokens.size()));
        SublayersToProto(r.sublayers, response.mutable_sublayers());
        FillTimings(job, total, response.mutable_timings());
        response.set_mean_confidence(MeanMaxProb(r.confidences));
      }
      job.finish(status, &response);
    }
    if (ServerMetrics* metrics = this->metrics()) {
      metrics->ObserveRequest(MethodName(job.method),
                              StatusCodeName(status.error_code()), total);
    }
    if (job.started) running_.fetch_sub(1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_flight_.fetch_sub(1);
    }
    state_cv_.notify_all();
  };

  // Removes the job's sequences from the batch now (KV freed) and answers.
  auto cancel = [&](Job& job, const grpc::Status& status) {
    if (job.completed) return;
    job.finished = true;  // Their on_finish callbacks are ignored.
    for (SequenceHandle handle : job.handles) scheduler.Cancel(handle);
    job.handles.clear();
    complete(job, status);
  };

  auto start_sequences = [&](Job& job,
                             std::vector<GenerationRequest> requests) {
    const size_t branches = requests.size();
    ++job.stage_serial;
    job.stage_start = Clock::now();
    job.results.assign(branches, GenerationResult());
    job.last_text.assign(branches, std::nullopt);
    job.pending = static_cast<int64_t>(branches);
    job.handles.clear();
    if (job.emit_reason) {
      v1::ReasonEvent event;
      event.set_request_id(job.request_id);
      v1::StageStarted* started = event.mutable_stage_started();
      started->set_stage_index(job.stage_index);
      started->set_name(job.pipeline->stages[job.stage_index].name);
      started->set_branches(static_cast<int32_t>(branches));
      job.emit_reason(std::move(event));
    }
    std::vector<SequenceCallbacks> all_callbacks;
    for (size_t b = 0; b < branches; ++b) {
      Job* raw = &job;
      const uint64_t serial = job.stage_serial;
      SequenceCallbacks callbacks;
      callbacks.on_text = [this, raw, serial, b](const std::string& piece) {
        Job& j = *raw;
        if (j.finished || j.stage_serial != serial) return;
        const Clock::time_point now = Clock::now();
        ServerMetrics* metrics = this->metrics();
        if (!j.ttft_seconds.has_value()) {
          j.ttft_seconds = SecondsSince(j.arrival, now);
          if (metrics) metrics->ObserveTimeToFirstToken(*j.ttft_seconds);
        } else if (j.last_text[b].has_value() && metrics) {
          metrics->ObserveInterTokenLatency(SecondsSince(*j.last_text[b], now));
        }
        j.last_text[b] = now;
        if (j.emit_reason) {
          v1::ReasonEvent event;
          event.set_request_id(j.request_id);
          v1::TokenDelta* delta = event.mutable_delta();
          delta->set_stage_index(j.stage_index);
          delta->set_branch(static_cast<int32_t>(b));
          delta->set_text(piece);
          j.emit_reason(std::move(event));
        } else if (j.emit_generate) {
          v1::GenerateEvent event;
          event.set_request_id(j.request_id);
          v1::TokenDelta* delta = event.mutable_delta();
          delta->set_stage_index(0);
          delta->set_branch(0);
          delta->set_text(piece);
          j.emit_generate(std::move(event));
        }
      };
      callbacks.on_finish = [&impl, raw, serial, b](GenerationResult result) {
        Job& j = *raw;
        if (j.finished || j.stage_serial != serial) return;
        j.results[b] = std::move(result);
        if (--j.pending == 0) impl.ready_jobs.push_back(raw);
      };
      all_callbacks.push_back(std::move(callbacks));
    }
    absl::Status added = absl::OkStatus();
    if (branches > 1 && requests[0].prefix_group != 0) {
      // Fan-out branches: the scheduler prefills their common prefix once.
      absl::StatusOr<std::vector<SequenceHandle>> handles =
          scheduler.AddGroup(std::move(requests), std::move(all_callbacks));
      if (handles.ok()) {
        job.handles = *std::move(handles);
      } else {
        added = handles.status();
      }
    } else {
      for (size_t b = 0; b < branches && added.ok(); ++b) {
        absl::StatusOr<SequenceHandle> handle =
            scheduler.Add(std::move(requests[b]), std::move(all_callbacks[b]));
        if (handle.ok()) {
          job.handles.push_back(*handle);
        } else {
          added = handle.status();
        }
      }
    }
    if (!added.ok()) {
      // Lengths that can never fit the KV cache are the request's fault.
      if (absl::IsResourceExhausted(added)) {
        added = absl::OutOfRangeError(added.message());
      }
      cancel(job, ToGrpc(added));
    }
  };

  auto start_stage = [&](Job& job) {
    absl::StatusOr<std::vector<GenerationRequest>> requests =
        job.session->StageRequests();
    if (!requests.ok()) {
      complete(job, ToGrpc(requests.status()));
      return;
    }
    job.stage_index = static_cast<int32_t>(job.session->next_stage());
    start_sequences(job, *std::move(requests));
  };

  auto advance = [&](Job& job) {
    job.handles.clear();
    for (const GenerationResult& r : job.results) {
      if (r.finish_reason == FinishReason::kCancelled) {
        complete(job,
                 grpc::Status(grpc::StatusCode::INTERNAL,
                              absl::StrCat("backend step failed: ",
                                           impl.last_step_error.message())));
        return;
      }
    }
    if (!IsReason(job.method)) {
      complete(job, grpc::Status::OK);
      return;
    }
    const double seconds = SecondsSince(job.stage_start, Clock::now());
    job.session->FinishStage(std::move(job.results), seconds);
    job.results.clear();
    const StageRecord& record = job.session->result().stages.back();
    if (ServerMetrics* metrics = this->metrics()) {
      metrics->ObserveStage(job.pipeline->name, record);
      // Profiles spelled by clients (even:K, last:K) get their series on
      // first use; the server's own were set at start-up.
      metrics->SetStageSkipRatio(
          job.pipeline->name, record.name, job.profile_name,
          job.profile->SkipRatio(record.name, impl.num_layers));
    }
    if (job.emit_reason) {
      v1::ReasonEvent event;
      event.set_request_id(job.request_id);
      StageRecordToProto(job.stage_index, record,
                         event.mutable_stage_finished());
      job.emit_reason(std::move(event));
    }
    if (job.session->done()) {
      complete(job, grpc::Status::OK);
    } else {
      start_stage(job);
    }
  };

  // Why a job must leave now, if it must.
  auto stop_reason = [&](const Job& job, bool cancel_all,
                         std::chrono::system_clock::time_point now)
      -> std::optional<grpc::Status> {
    if (now >= job.deadline) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "deadline exceeded before the request finished");
    }
    if (job.cancelled.load()) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "cancelled by the client");
    }
    if (cancel_all) {
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          "server shut down before the request finished (grace period "
          "over); retry on another replica");
    }
    return std::nullopt;
  };

  while (true) {
    std::vector<std::shared_ptr<Job>> incoming;
    std::vector<std::shared_ptr<Job>> dropped;
    bool cancel_all = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto has_work = [&] {
        return stop_ || wake_pending_ || cancel_all_ || !admission_.empty();
      };
      if (impl.active.empty()) {
        wake_cv_.wait(lock, has_work);
      } else if (scheduler.idle()) {
        // Jobs wait for nothing the scheduler runs: should not happen, but
        // never spin.
        wake_cv_.wait_for(lock, std::chrono::milliseconds(5), has_work);
      }
      wake_pending_ = false;
      if (stop_ && impl.active.empty() && admission_.empty()) break;
      cancel_all = cancel_all_;
      // Queued requests already cancelled or past their deadline leave now.
      const auto now = std::chrono::system_clock::now();
      for (auto it = admission_.begin(); it != admission_.end();) {
        if (cancel_all || (*it)->cancelled.load() || now >= (*it)->deadline) {
          dropped.push_back(std::move(*it));
          it = admission_.erase(it);
        } else {
          ++it;
        }
      }
      // Take requests while the batch has room; the rest wait here, in
      // the bounded queue, rather than inside the Scheduler.
      int64_t sequences = impl.ActiveSequences();
      while (!admission_.empty() && sequences < options_.max_batch) {
        incoming.push_back(std::move(admission_.front()));
        admission_.pop_front();
        ++sequences;
      }
    }
    const auto wall_now = std::chrono::system_clock::now();
    for (auto& job : dropped) {
      complete(*job, *stop_reason(*job, cancel_all, wall_now));
    }
    for (auto& job : incoming) {
      impl.active.push_back(job);
      job->started = true;
      running_.fetch_add(1);
      job->queue_seconds = SecondsSince(job->arrival, Clock::now());
      if (IsReason(job->method)) {
        start_stage(*job);
      } else {
        job->stage_index = 0;
        std::vector<GenerationRequest> requests;
        requests.push_back(std::move(job->generation));
        start_sequences(*job, std::move(requests));
      }
    }
    // Cancellation, deadlines and shutdown: leave the batch at once.
    for (auto& job : impl.active) {
      if (job->completed) continue;
      if (std::optional<grpc::Status> reason =
              stop_reason(*job, cancel_all, wall_now)) {
        cancel(*job, *reason);
      }
    }
    if (!scheduler.idle()) {
      absl::Status step = scheduler.Step();
      if (!step.ok()) {
        LS_LOG(ERROR) << "forward step failed: " << step;
        impl.last_step_error = step;
      }
      const int64_t batch = scheduler.last_batch_size();
      if (batch > max_batch_seen_.load()) max_batch_seen_.store(batch);
      if (ServerMetrics* metrics = this->metrics(); metrics && batch > 0) {
        metrics->ObserveBatchSize(batch);
      }
    }
    // Stages whose branches all finished: next stage, or the answer.
    while (!impl.ready_jobs.empty()) {
      std::vector<Job*> ready;
      ready.swap(impl.ready_jobs);
      for (Job* job : ready) {
        if (!job->completed) advance(*job);
      }
    }
    impl.active.remove_if(
        [](const std::shared_ptr<Job>& job) { return job->completed; });

    kv_cache_usage_.store(scheduler.kv_cache_usage());
    if (ServerMetrics* metrics = this->metrics()) {
      int64_t queued;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queued = static_cast<int64_t>(admission_.size());
      }
      metrics->SetQueueDepth(queued + scheduler.num_waiting());
      metrics->SetRequestsRunning(static_cast<int64_t>(impl.active.size()));
      metrics->SetKvCacheUsage(scheduler.kv_cache_usage());
    }
  }
}

}  // namespace litestage
