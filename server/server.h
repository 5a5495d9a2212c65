// The litestage gRPC service (proto/litestage/v1/litestage.proto) and the
// scheduler thread behind it, as a library: litestage-server's main() and
// the in-process tests both run it.
//
// Threads:
// - gRPC's callback threads run the handlers: they validate a request
//   (INVALID_ARGUMENT / OUT_OF_RANGE naming the field), resolve its pipeline
//   and profile, and post it to the bounded admission queue (full:
//   UNAVAILABLE). They never touch the Engine's mutable state.
// - ONE scheduler thread loads the model, then owns the Engine, the
//   continuous-batching Scheduler and the StageRunner on it
//   (engine/stages/stage_runner.h): it takes requests from the admission
//   queue while the batch has room and hands each to the runner, which
//   queues a stage's sequences (fan-out branches are separate sequences),
//   steps every running sequence of every request together, and advances a
//   request to its next stage when all its branches finished. The thread
//   checks cancellation and deadlines every step and blocks on a condition
//   variable when there is nothing to do.
//
// Files: service.cc (handlers), convert.{h,cc} (proto <-> engine types),
// reactors.{h,cc} (gRPC reactors), job.h (one request), server_state.h (the
// catalog and the scheduler thread's state), server.cc
// (lifecycle, loading, the scheduler thread).
//
// Health: "" (liveness) is SERVING once the server listens;
// "litestage.v1.LiteStage" (readiness) is NOT_SERVING while the model loads
// and while draining, SERVING in between.
#ifndef LITESTAGE_SERVER_SERVER_H_
#define LITESTAGE_SERVER_SERVER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/scheduler.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/shipped_profiles.h"
#include "prometheus/registry.h"

namespace google::protobuf {
class Message;
}
namespace grpc {
class Server;
class Service;
class Status;
}  // namespace grpc

namespace litestage {

class ServerMetrics;

// The gRPC service name; also the readiness name in grpc.health.v1.
inline constexpr char kLiteStageServiceName[] = "litestage.v1.LiteStage";

struct ServerOptions {
  // Model, device, dtype, threads and KV cache size.
  EngineOptions engine;
  std::string host = "0.0.0.0";
  int port = 50051;  // 0: pick a free port (see LiteStageServer::port()).
  // Optional TLS: PEM file paths; both or neither.
  std::string tls_cert_path;
  std::string tls_key_path;
  // Pipeline JSON files served besides the built-in ones.
  std::vector<std::string> pipeline_files;
  // Profile JSON files; each is validated against the model and its
  // pipeline once the model is loaded (a bad one fails the load).
  std::vector<std::string> profile_files;
  // Offer the shipped profiles (profiles/*.json, compiled in) made for the
  // loaded model: same fingerprint, a pipeline this server loads, a name no
  // --profiles file takes.
  bool shipped_profiles = true;
  // Tests: replaces the compiled-in list.
  std::optional<std::vector<ShippedProfile>> shipped_profiles_override;
  std::string default_pipeline = "tinythinker";
  // A built-in spec, or the name of a loaded file profile (the default for
  // its own pipeline; other pipelines then default to "full").
  std::string default_profile = "full";
  int64_t max_queue = 64;  // Admitted requests waiting for the batch.
  int64_t max_batch = 32;  // Sequences per forward step.
  // How sequences of different skip sets share steps
  // (engine/runtime/scheduler.h). nullopt: what the backend's capabilities say
  // (engine/runtime/scheduler.h).
  std::optional<SkipSetBatching> skip_set_batching;
  // Per stage (Reason) and per request (Generate); also Generate's default.
  int64_t max_new_tokens = 512;
  // Metrics go here (the server always keeps them; serve them with
  // StartMetricsServer). Null: the server makes a private registry.
  std::shared_ptr<prometheus::Registry> metrics_registry;
  // Tests: runs on the scheduler thread just before the model loads, so a
  // test can hold the server in its "loading" state.
  std::function<void()> before_load;
};

class LiteStageServer {
 public:
  // Validates the options, reads pipeline and profile files, starts
  // listening (liveness SERVING, readiness NOT_SERVING) and starts loading
  // the model on the scheduler thread. Returns once listening.
  static absl::StatusOr<std::unique_ptr<LiteStageServer>> Start(
      ServerOptions options);
  // Shuts down at once (no grace) unless Shutdown already ran.
  ~LiteStageServer();

  LiteStageServer(const LiteStageServer&) = delete;
  LiteStageServer& operator=(const LiteStageServer&) = delete;

  int port() const { return port_; }
  // "host:port" as bound.
  const std::string& address() const { return address_; }

  // Blocks until the model is loaded and profiles validated (OK) or that
  // failed (its status: the file path and the reason).
  absl::Status WaitUntilReady();
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // Non-OK once loading failed; OK while loading or after success.
  absl::Status load_status() const;

  // Readiness NOT_SERVING and new RPCs UNAVAILABLE "server is draining";
  // requests already accepted keep running. Idempotent.
  void BeginDrain();
  bool draining() const { return draining_.load(); }
  // BeginDrain, wait up to `grace_seconds` for accepted requests to be
  // answered AND delivered (a slow reader of a stream gets every message it
  // was promised within the grace period), cancel what is left (UNAVAILABLE),
  // then stop gRPC and the scheduler thread. Idempotent.
  void Shutdown(double grace_seconds);

  // Metrics (null until the model is loaded).
  ServerMetrics* metrics() const {
    return metrics_ready_.load(std::memory_order_acquire) ? metrics_.get()
                                                          : nullptr;
  }

  // Introspection, for tests and logs (updated by the scheduler thread
  // after every step).
  int64_t max_batch_size_seen() const { return max_batch_seen_.load(); }
  double kv_cache_usage() const { return kv_cache_usage_.load(); }
  // Accepted requests not yet answered (queued or running).
  int64_t requests_in_flight() const { return in_flight_.load(); }
  // Accepted requests whose RPC is not done yet: not answered, or answered
  // but still being written to the client.
  int64_t requests_undelivered() const { return undelivered_.load(); }
  int64_t requests_running() const { return running_.load(); }

  struct Job;  // One accepted request (job.h).

  // Wakes the scheduler thread (a request was cancelled); any thread.
  void Wake();
  // An accepted request's RPC is done (its reactor's OnDone); any thread.
  void RequestDelivered();

 private:
  class Service;
  struct Impl;

  explicit LiteStageServer(ServerOptions options);

  // --- called by handlers (any thread) ---
  // UNAVAILABLE while loading/draining or when the queue is full.
  absl::Status Admit(std::shared_ptr<Job> job);
  absl::Status CheckServing() const;

  static std::unique_ptr<grpc::Service> NewService(LiteStageServer* server);

  // --- scheduler thread ---
  void SchedulerLoop();
  // Starts an admitted job on the stage runner (or answers it at once if
  // its first stage cannot be queued).
  void StartJob(Job& job);
  // Answers the job's RPC once: `response` (a v1::ReasonResponse or
  // v1::GenerateResponse) when OK, then the request metrics and counters.
  void CompleteJob(Job& job, const grpc::Status& status,
                   const google::protobuf::Message* response);
  absl::Status Load();
  // Adds the shipped profiles made for the loaded model to the file
  // profiles (before the server is ready: handlers read them after).
  void AddShippedProfiles(const std::map<std::string, std::vector<std::string>>&
                              stages_by_pipeline);

  ServerOptions options_;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::atomic<bool> metrics_ready_{false};
  std::string address_;
  int port_ = 0;

  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> shut_down_{false};

  // Admission queue and the scheduler thread's wake-up.
  mutable std::mutex mutex_;
  std::condition_variable wake_cv_;             // Scheduler thread waits here.
  std::condition_variable state_cv_;            // Ready / in-flight changes.
  std::deque<std::shared_ptr<Job>> admission_;  // Guarded by mutex_.
  bool wake_pending_ = false;                   // Guarded by mutex_.
  bool stop_ = false;                           // Guarded by mutex_.
  bool cancel_all_ = false;                     // Guarded by mutex_.
  bool load_done_ = false;                      // Guarded by mutex_.
  absl::Status load_status_;                    // Guarded by mutex_.
  std::thread scheduler_thread_;

  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> undelivered_{0};
  std::atomic<int64_t> running_{0};
  std::atomic<int64_t> max_batch_seen_{0};
  std::atomic<double> kv_cache_usage_{0};
};

}  // namespace litestage

#endif  // LITESTAGE_SERVER_SERVER_H_
