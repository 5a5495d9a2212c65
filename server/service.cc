// The gRPC service (LiteStageServer::Service): validation and admission on
// gRPC's threads. Every method is raw (ByteBuffer in and out) so that
// requests protobuf refuses to parse get a real answer (server/wire.h). A
// handler checks every field (INVALID_ARGUMENT / OUT_OF_RANGE naming it),
// resolves the pipeline and profile, builds the job and posts it to the
// admission queue; the scheduler thread (server.cc) runs and answers it.
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/util/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "litestage/v1/litestage.grpc.pb.h"
#include "litestage/v1/litestage.pb.h"
#include "server/convert.h"
#include "server/job.h"
#include "server/metrics.h"
#include "server/reactors.h"
#include "server/server.h"
#include "server/server_state.h"
#include "server/wire.h"

namespace litestage {
namespace {

constexpr char kVersion[] = "0.1.0";

std::string NewRequestId() {
  thread_local absl::BitGen bitgen;
  return absl::StrFormat("ls-%016x", absl::Uniform<uint64_t>(bitgen));
}

}  // namespace

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
    const ServerClock::time_point arrival = ServerClock::now();
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
    const ServerClock::time_point arrival = ServerClock::now();
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
               ServerClock::time_point arrival) {
    if (ServerMetrics* metrics = server_->metrics()) {
      metrics->ObserveRequest(method, StatusCodeLabel(status.error_code()),
                              SecondsSince(arrival, ServerClock::now()));
    }
  }

  void Reject(UnaryReactor* reactor, Method method, const absl::Status& status,
              ServerClock::time_point arrival) {
    Observe(MethodName(method), ToGrpc(status), arrival);
    reactor->Finish(ToGrpc(status));
  }
  template <typename Event>
  void RejectStream(StreamReactor<Event>* reactor, Method method,
                    const absl::Status& status,
                    ServerClock::time_point arrival) {
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
      grpc::CallbackServerContext* context, ServerClock::time_point arrival) {
    return PrepareReason(request, method, context, arrival);
  }
  absl::StatusOr<std::shared_ptr<Job>> Prepare(
      const v1::GenerateRequest& request, Method method,
      grpc::CallbackServerContext* context, ServerClock::time_point arrival) {
    return PrepareGenerate(request, method, context, arrival);
  }

  // Parses, validates and admits a unary request; the scheduler thread
  // answers it through job->finish.
  template <typename Request>
  grpc::ServerUnaryReactor* StartUnary(Method method,
                                       grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer& request_bytes,
                                       grpc::ByteBuffer* response) {
    const ServerClock::time_point arrival = ServerClock::now();
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
    const ServerClock::time_point arrival = ServerClock::now();
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
                              ServerClock::time_point arrival) {
    auto job = std::make_shared<Job>();
    job->method = method;
    job->request_id = request_id.empty() ? NewRequestId() : request_id;
    job->arrival = arrival;
    job->deadline = context->deadline();
    job->server = server_;
    return job;
  }

  absl::StatusOr<std::shared_ptr<Job>> PrepareReason(
      const v1::ReasonRequest& request, Method method,
      grpc::CallbackServerContext* context, ServerClock::time_point arrival) {
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
      grpc::CallbackServerContext* context, ServerClock::time_point arrival) {
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

std::unique_ptr<grpc::Service> LiteStageServer::NewService(
    LiteStageServer* server) {
  return std::make_unique<Service>(server);
}

}  // namespace litestage
