#include "engine/stages/stage_runner.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/util/check.h"

namespace litestage {

// One job: a cohort of sessions, or one generation, and its running stage.
struct StageRunner::Job {
  Listener* listener = nullptr;
  std::vector<ReasoningSession> sessions;       // Empty for a generation.
  std::optional<GenerationRequest> generation;  // Until it is queued.

  // The running stage. Sequence k belongs to session owner[k].first,
  // branch owner[k].second.
  size_t stage = 0;
  uint64_t serial = 0;  // Tells callbacks of an earlier stage apart.
  Clock::time_point stage_start;
  std::vector<std::pair<size_t, size_t>> owner;        // [sequences]
  std::vector<SequenceHandle> handles;                 // [sequences]
  std::vector<GenerationResult> results;               // [sequences]
  std::vector<std::vector<int32_t>> prompt_token_ids;  // [sequences]
  int64_t pending = 0;  // Sequences of the stage still running.
};

StageRunner::StageRunner(Scheduler* scheduler) : scheduler_(scheduler) {
  LS_CHECK(scheduler_ != nullptr);
}

StageRunner::~StageRunner() {
  // Forget the jobs first: the cancelled sequences' callbacks find nothing.
  std::unordered_map<JobId, std::unique_ptr<Job>> jobs;
  jobs.swap(jobs_);
  for (auto& [id, job] : jobs) {
    for (SequenceHandle handle : job->handles) scheduler_->Cancel(handle);
  }
}

int64_t StageRunner::pending_sequences() const {
  int64_t count = 0;
  for (const auto& [id, job] : jobs_) count += job->pending;
  return count;
}

absl::StatusOr<StageRunner::JobId> StageRunner::AddSessions(
    std::vector<ReasoningSession> sessions, Listener* listener) {
  LS_CHECK(!sessions.empty());
  LS_CHECK(listener != nullptr);
  for (const ReasoningSession& session : sessions) {
    LS_CHECK(!session.done());
    LS_CHECK_EQ(session.next_stage(), sessions[0].next_stage());
  }
  auto job = std::make_unique<Job>();
  job->listener = listener;
  job->sessions = std::move(sessions);
  return AddJob(std::move(job));
}

absl::StatusOr<StageRunner::JobId> StageRunner::AddGeneration(
    GenerationRequest request, Listener* listener) {
  LS_CHECK(listener != nullptr);
  auto job = std::make_unique<Job>();
  job->listener = listener;
  job->generation = std::move(request);
  return AddJob(std::move(job));
}

absl::StatusOr<StageRunner::JobId> StageRunner::AddJob(
    std::unique_ptr<Job> job) {
  const JobId id = next_id_++;
  Job& added = *job;
  jobs_.emplace(id, std::move(job));
  if (absl::Status started = StartStage(id, added); !started.ok()) {
    jobs_.erase(id);
    return started;
  }
  return id;
}

absl::Status StageRunner::StartStage(JobId id, Job& job) {
  std::vector<GenerationRequest> requests;
  job.owner.clear();
  if (job.sessions.empty()) {
    requests.push_back(*std::move(job.generation));
    job.generation.reset();
    job.owner.emplace_back(0, 0);
  } else {
    job.stage = job.sessions[0].next_stage();
    const size_t n = job.sessions.size();
    for (size_t i = 0; i < n; ++i) {
      absl::StatusOr<std::vector<GenerationRequest>> stage_requests =
          job.sessions[i].StageRequests();
      if (!stage_requests.ok()) {
        if (n == 1) return stage_requests.status();
        return absl::Status(stage_requests.status().code(),
                            absl::StrCat("request ", i, ": ",
                                         stage_requests.status().message()));
      }
      for (size_t b = 0; b < stage_requests->size(); ++b) {
        GenerationRequest& request = (*stage_requests)[b];
        // A cohort's requests of a stage form one prefix group: the
        // scheduler picks, per sequence, the earlier one sharing the
        // longest prefix (the few-shot prefix across questions, each
        // question's prefix across its branches).
        if (n > 1) request.prefix_group = 1;
        requests.push_back(std::move(request));
        job.owner.emplace_back(i, b);
      }
    }
  }
  const size_t sequences = requests.size();
  ++job.serial;
  job.prompt_token_ids.clear();
  if (!job.sessions.empty()) {
    for (const GenerationRequest& r : requests) {
      job.prompt_token_ids.push_back(r.prompt_tokens);
    }
  }
  std::vector<SequenceCallbacks> callbacks(sequences);
  for (size_t k = 0; k < sequences; ++k) {
    const uint64_t serial = job.serial;
    callbacks[k].on_text = [this, id, serial, k](const std::string& piece) {
      auto it = jobs_.find(id);
      if (it == jobs_.end() || it->second->serial != serial) return;
      Job& j = *it->second;
      j.listener->OnText(j.owner[k].first, j.stage, j.owner[k].second, piece);
    };
    callbacks[k].on_finish = [this, id, serial, k](GenerationResult result) {
      auto it = jobs_.find(id);
      if (it == jobs_.end() || it->second->serial != serial) return;
      Job& j = *it->second;
      j.results[k] = std::move(result);
      if (--j.pending == 0) ready_.push_back(id);
    };
  }
  job.results.assign(sequences, GenerationResult());
  job.pending = static_cast<int64_t>(sequences);
  job.handles.clear();
  job.stage_start = Clock::now();
  absl::StatusOr<std::vector<SequenceHandle>> handles =
      scheduler_->AddBatch(std::move(requests), std::move(callbacks));
  if (!handles.ok()) {
    job.pending = 0;
    return handles.status();
  }
  job.handles = *std::move(handles);
  // Sequences are in session order, so each session's count is one run.
  for (size_t k = 0; k < sequences;) {
    const size_t session = job.owner[k].first;
    size_t end = k;
    while (end < sequences && job.owner[end].first == session) ++end;
    job.listener->OnStageStarted(session, job.stage, end - k);
    k = end;
  }
  return absl::OkStatus();
}

void StageRunner::Cancel(JobId id, absl::Status reason) {
  if (jobs_.count(id) == 0) return;
  Complete(id, std::move(reason), JobResult());
}

absl::Status StageRunner::Step() {
  absl::Status step = absl::OkStatus();
  if (!scheduler_->idle()) {
    step = scheduler_->Step();
    if (!step.ok()) last_step_error_ = step;
  } else if (ready_.empty() && !jobs_.empty()) {
    // Every running job has sequences in the scheduler or is ready, so
    // this is a broken invariant; fail the jobs rather than spin or crash
    // a server.
    std::vector<JobId> stuck;
    for (const auto& [id, job] : jobs_) stuck.push_back(id);
    for (JobId id : stuck) {
      Complete(id,
               absl::InternalError("stage runner: job has no sequence "
                                   "running (a bug; please report it)"),
               JobResult());
    }
  }
  while (!ready_.empty()) {
    std::vector<JobId> ready;
    ready.swap(ready_);
    for (JobId id : ready) Advance(id);
  }
  return step;
}

void StageRunner::Advance(JobId id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  Job& job = *it->second;
  job.handles.clear();  // Every sequence finished.
  for (const GenerationResult& r : job.results) {
    if (r.finish_reason == FinishReason::kCancelled) {
      Complete(id,
               absl::InternalError(absl::StrCat("backend step failed: ",
                                                last_step_error_.message())),
               JobResult());
      return;
    }
  }
  if (job.sessions.empty()) {
    JobResult result;
    result.generation = std::move(job.results[0]);
    Complete(id, absl::OkStatus(), std::move(result));
    return;
  }
  // Every session of the cohort gets the stage's wall time: what one
  // request sees in a cohort of one, the batch's time in a larger one.
  const double seconds =
      std::chrono::duration<double>(Clock::now() - job.stage_start).count();
  const size_t n = job.sessions.size();
  std::vector<std::vector<GenerationResult>> results(n);
  std::vector<std::vector<std::vector<int32_t>>> prompts(n);
  for (size_t k = 0; k < job.results.size(); ++k) {
    const size_t session = job.owner[k].first;
    results[session].push_back(std::move(job.results[k]));
    prompts[session].push_back(std::move(job.prompt_token_ids[k]));
  }
  job.results.clear();
  job.prompt_token_ids.clear();
  for (size_t i = 0; i < n; ++i) {
    job.sessions[i].FinishStage(std::move(results[i]), seconds,
                                std::move(prompts[i]));
    job.listener->OnStageFinished(i, job.stage,
                                  job.sessions[i].result().stages.back());
  }
  if (job.sessions[0].done()) {
    JobResult result;
    for (ReasoningSession& session : job.sessions) {
      result.sessions.push_back(session.TakeResult());
    }
    Complete(id, absl::OkStatus(), std::move(result));
    return;
  }
  if (absl::Status started = StartStage(id, job); !started.ok()) {
    Complete(id, std::move(started), JobResult());
  }
}

void StageRunner::Complete(JobId id, absl::Status status, JobResult result) {
  auto it = jobs_.find(id);
  LS_CHECK(it != jobs_.end());
  std::unique_ptr<Job> job = std::move(it->second);
  jobs_.erase(it);
  // Their on_finish callbacks find no job and are ignored.
  for (SequenceHandle handle : job->handles) scheduler_->Cancel(handle);
  job->listener->OnDone(std::move(status), std::move(result));
}

}  // namespace litestage
