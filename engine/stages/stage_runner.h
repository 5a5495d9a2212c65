// The multi-stage runner: drives reasoning sessions (and single
// generations) through their stages on a Scheduler, many jobs at once.
//
// A job is either one generation or a cohort of ReasoningSessions that move
// through the pipeline in lockstep: each stage of every session in the
// cohort goes to the scheduler together and the next stage starts when all
// of them finished. A cohort of one is a server request (its fan-out
// branches share their prompt prefix); a cohort of many is an offline
// batch, where every request of a stage joins one prefix group so the
// few-shot prefix is prefilled once for all of them (PlanPrefixSharing).
//
// The runner owns the per-job state a stage needs (sequence handles, branch
// results, prompt ids, stage timing) and reports progress to a Listener; it
// knows nothing of RPCs. The server's scheduler thread, RunReasoning,
// RunReasoningBatch (litestage-run, litestage-eval, the search, the
// benchmarks) all run on it.
//
// Not thread-safe: one thread owns the runner, its scheduler and engine,
// and every Listener call happens on that thread.
#ifndef LITESTAGE_ENGINE_STAGES_STAGE_RUNNER_H_
#define LITESTAGE_ENGINE_STAGES_STAGE_RUNNER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/scheduler.h"
#include "engine/stages/session.h"

namespace litestage {

class StageRunner {
 public:
  using JobId = uint64_t;

  // What a finished job produced.
  struct JobResult {
    std::vector<ReasoningResult> sessions;  // AddSessions: in cohort order.
    std::optional<GenerationResult> generation;  // AddGeneration.
  };

  // Told about one job as it runs. `session` indexes the cohort (0 for a
  // generation, whose only stage and branch are 0).
  class Listener {
   public:
    virtual ~Listener() = default;
    // A stage's `branches` sequences were queued.
    virtual void OnStageStarted(size_t session, size_t stage, size_t branches) {
    }
    // Each new piece of a branch's text (stop strings held back until safe).
    virtual void OnText(size_t session, size_t stage, size_t branch,
                        const std::string& piece) {}
    // The session's record of the stage that just finished.
    virtual void OnStageFinished(size_t session, size_t stage,
                                 const StageRecord& record) {}
    // Exactly once, last; the runner forgets the job before the call, so
    // the listener may be destroyed inside it. OK: `result` holds every
    // session's result (or the generation's). Otherwise why the job
    // stopped, and `result` is empty: a later stage's prompt did not fit
    // (OutOfRange) or its sequences were refused (scheduler validation), a
    // backend step failed (Internal), or Cancel's reason.
    virtual void OnDone(absl::Status status, JobResult result) = 0;
  };

  explicit StageRunner(Scheduler* scheduler);
  // Cancels what is still running without telling the listeners.
  ~StageRunner();

  StageRunner(const StageRunner&) = delete;
  StageRunner& operator=(const StageRunner&) = delete;

  // Starts a cohort at its first stage (every session must be at the same
  // stage, none done; at least one). If the stage cannot be queued, the
  // error ("request i: ..." for a cohort of several) is returned, nothing
  // is kept and the listener is never called. `listener` must outlive the
  // job's OnDone.
  absl::StatusOr<JobId> AddSessions(std::vector<ReasoningSession> sessions,
                                    Listener* listener);
  // One generation as a single-stage job.
  absl::StatusOr<JobId> AddGeneration(GenerationRequest request,
                                      Listener* listener);

  // Stops the job now: its sequences leave the batch (KV freed) and its
  // listener's OnDone(reason) runs before Cancel returns. Unknown or
  // finished ids: no-op.
  void Cancel(JobId job, absl::Status reason);

  // One scheduler step (when it has sequences), then every job whose stage
  // finished moves on: the next stage is queued, or OnDone runs. Returns
  // the step's error, if any (the jobs of that step end with Internal).
  absl::Status Step();

  bool idle() const { return jobs_.empty(); }
  int64_t num_jobs() const { return static_cast<int64_t>(jobs_.size()); }
  // Sequences of running stages that have not finished yet.
  int64_t pending_sequences() const;
  Scheduler& scheduler() { return *scheduler_; }

 private:
  struct Job;
  using Clock = std::chrono::steady_clock;

  absl::StatusOr<JobId> AddJob(std::unique_ptr<Job> job);
  // Queues the next stage of `job`: its sessions' requests, or the
  // generation.
  absl::Status StartStage(JobId id, Job& job);
  // Every branch of the job's stage finished: record it, then the next
  // stage or OnDone.
  void Advance(JobId id);
  // Forgets the job, cancels its sequences and calls OnDone.
  void Complete(JobId id, absl::Status status, JobResult result);

  Scheduler* scheduler_;
  JobId next_id_ = 1;
  std::unordered_map<JobId, std::unique_ptr<Job>> jobs_;
  std::vector<JobId> ready_;  // Stage finished; advanced after the step.
  absl::Status last_step_error_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_STAGE_RUNNER_H_
