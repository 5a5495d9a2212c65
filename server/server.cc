// LiteStageServer's lifecycle (start, readiness, drain, shutdown),
// loading the model and profiles, and the scheduler thread that runs every
// admitted request on the stage runner (server/server.h). The handlers are
// in service.cc.
#include "server/server.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/runtime/scheduler.h"
#include "engine/stages/session.h"
#include "engine/stages/stage_runner.h"
#include "engine/util/check.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/service_type.h"
#include "litestage/v1/litestage.pb.h"
#include "server/convert.h"
#include "server/job.h"
#include "server/metrics.h"
#include "server/server_state.h"
#include "server/wire.h"

namespace litestage {

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
  server->service_ = NewService(server.get());
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
    const auto grace = std::chrono::duration_cast<ServerClock::duration>(
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
      // Those answers (UNAVAILABLE, "grace period over") get a second to
      // reach their clients; the shutdown below cancels what is still
      // writing after it, which would replace them with gRPC's own
      // "Cancelling all calls".
      state_cv_.wait_for(lock, std::chrono::seconds(1),
                         [&] { return undelivered_.load() == 0; });
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
  impl.runner = std::make_unique<StageRunner>(impl.scheduler.get());

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
               << impl.engine->backend().description() << "; skip-set batching "
               << SkipSetBatchingName(impl.scheduler->skip_set_batching());
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

// ---------------------------------------------------------------------------
// The scheduler thread.

namespace {

// Why a job must leave now, if it must.
std::optional<absl::Status> StopReason(
    const LiteStageServer::Job& job, bool cancel_all,
    std::chrono::system_clock::time_point now) {
  if (now >= job.deadline) {
    return absl::DeadlineExceededError(
        "deadline exceeded before the request finished");
  }
  if (job.cancelled.load()) {
    return absl::CancelledError("cancelled by the client");
  }
  if (cancel_all) {
    return absl::UnavailableError(
        "server shut down before the request finished (grace period over); "
        "retry on another replica");
  }
  return std::nullopt;
}

}  // namespace

void LiteStageServer::CompleteJob(Job& job, const grpc::Status& status,
                                  const google::protobuf::Message* response) {
  if (job.completed) return;
  job.completed = true;
  job.finish(status, response);
  if (ServerMetrics* metrics = this->metrics()) {
    metrics->ObserveRequest(MethodName(job.method),
                            StatusCodeLabel(status.error_code()),
                            SecondsSince(job.arrival, ServerClock::now()));
  }
  if (job.started) running_.fetch_sub(1);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_.fetch_sub(1);
  }
  state_cv_.notify_all();
}

void LiteStageServer::StartJob(Job& job) {
  StageRunner& runner = *impl_->runner;
  job.started = true;
  running_.fetch_add(1);
  job.queue_seconds = SecondsSince(job.arrival, ServerClock::now());
  absl::StatusOr<StageRunner::JobId> id;
  if (IsReason(job.method)) {
    std::vector<ReasoningSession> sessions;
    sessions.push_back(*std::move(job.session));
    job.session.reset();
    id = runner.AddSessions(std::move(sessions), &job);
  } else {
    id = runner.AddGeneration(std::move(job.generation), &job);
  }
  if (!id.ok()) {
    CompleteJob(job, ToGrpc(AsRequestError(id.status())), nullptr);
    return;
  }
  job.runner_job = *id;
}

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
  StageRunner& runner = *impl.runner;
  while (true) {
    std::vector<std::shared_ptr<Job>> incoming;
    std::vector<std::shared_ptr<Job>> dropped;
    bool cancel_all = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto has_work = [&] {
        return stop_ || wake_pending_ || cancel_all_ || !admission_.empty();
      };
      if (runner.idle()) wake_cv_.wait(lock, has_work);
      wake_pending_ = false;
      if (stop_ && runner.idle() && admission_.empty()) break;
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
      int64_t sequences = runner.pending_sequences();
      while (!admission_.empty() && sequences < options_.max_batch) {
        incoming.push_back(std::move(admission_.front()));
        admission_.pop_front();
        ++sequences;
      }
    }
    const auto wall_now = std::chrono::system_clock::now();
    for (auto& job : dropped) {
      CompleteJob(*job, ToGrpc(*StopReason(*job, cancel_all, wall_now)),
                  nullptr);
    }
    for (auto& job : incoming) {
      StartJob(*job);
      if (!job->completed) impl.active.push_back(std::move(job));
    }
    // Cancellation, deadlines and shutdown: leave the batch at once.
    for (auto& job : impl.active) {
      if (job->completed || !job->runner_job.has_value()) continue;
      if (std::optional<absl::Status> reason =
              StopReason(*job, cancel_all, wall_now)) {
        runner.Cancel(*job->runner_job, *std::move(reason));
      }
    }
    // One forward step; stages whose branches all finished move on.
    if (!runner.idle()) {
      absl::Status step = runner.Step();
      if (!step.ok()) LS_LOG(ERROR) << "forward step failed: " << step;
      const int64_t batch = scheduler.last_batch_size();
      if (batch > max_batch_seen_.load()) max_batch_seen_.store(batch);
      if (ServerMetrics* metrics = this->metrics(); metrics && batch > 0) {
        metrics->ObserveBatchSize(batch);
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
      const KvBlockManager& blocks = impl.engine->kv_blocks();
      metrics->SetPrefixCache(blocks.cached_blocks(), blocks.evictions());
    }
  }
}

}  // namespace litestage
