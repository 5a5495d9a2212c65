// One accepted request of the gRPC service (LiteStageServer::Job): what the
// handler resolved, how the scheduler thread answers it, and the listener
// through which the stage runner reports its progress. Internal to
// server/.
#ifndef LITESTAGE_SERVER_JOB_H_
#define LITESTAGE_SERVER_JOB_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/session.h"
#include "engine/stages/stage_runner.h"
#include "litestage/v1/litestage.pb.h"
#include "server/server.h"

namespace litestage {

using ServerClock = std::chrono::steady_clock;

enum class Method { kReason, kReasonStream, kGenerate, kGenerateStream };
const char* MethodName(Method method);  // "Reason", the metrics label.
inline bool IsReason(Method method) {
  return method == Method::kReason || method == Method::kReasonStream;
}

inline double SecondsSince(ServerClock::time_point start,
                           ServerClock::time_point now) {
  return std::chrono::duration<double>(now - start).count();
}

// Lengths that can never fit the KV cache (the scheduler's
// ResourceExhausted) are the request's fault: OutOfRange; others unchanged.
absl::Status AsRequestError(absl::Status status);

struct LiteStageServer::Job : public StageRunner::Listener {
  Method method = Method::kReason;
  std::string request_id;
  ServerClock::time_point arrival;
  std::chrono::system_clock::time_point deadline;
  std::atomic<bool> cancelled{false};  // Set by reactors on any thread.
  // Set by Admit: the server counts the RPC until its reactor's OnDone.
  std::atomic<bool> admitted{false};

  // Reason. The session is handed to the stage runner when the job starts;
  // it points into `pipeline` and `profile`, which the job keeps alive.
  const Pipeline* pipeline = nullptr;
  std::shared_ptr<const Profile> profile;
  std::optional<ReasoningSession> session;
  // Generate: handed to the stage runner when the job starts.
  GenerationRequest generation;
  std::string profile_name;

  // Output; called on the scheduler thread (finish: exactly once, with a
  // v1::ReasonResponse or v1::GenerateResponse, filled in only when OK).
  std::function<void(v1::ReasonEvent)> emit_reason;
  std::function<void(v1::GenerateEvent)> emit_generate;
  std::function<void(const grpc::Status&, const google::protobuf::Message*)>
      finish;

  // Scheduler-thread state.
  LiteStageServer* server = nullptr;
  std::optional<StageRunner::JobId> runner_job;  // While the runner has it.
  bool started = false;
  bool completed = false;  // The RPC was answered.
  double queue_seconds = 0;
  std::optional<double> ttft_seconds;
  // When each branch of the running stage last produced text: [branches].
  std::vector<std::optional<ServerClock::time_point>> last_text;

  // StageRunner::Listener (scheduler thread): events to the client,
  // latency metrics, and the answer (job.cc).
  void OnStageStarted(size_t session, size_t stage, size_t branches) override;
  void OnText(size_t session, size_t stage, size_t branch,
              const std::string& piece) override;
  void OnStageFinished(size_t session, size_t stage,
                       const StageRecord& record) override;
  void OnDone(absl::Status status, StageRunner::JobResult result) override;
};

}  // namespace litestage

#endif  // LITESTAGE_SERVER_JOB_H_
