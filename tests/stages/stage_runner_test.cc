// StageRunner on the synthetic `tiny` model: cohorts and concurrent jobs
// give exactly the tokens of the stage-by-stage reference (each stage's
// requests through Engine::GenerateBatch), the listener sees every stage in
// order, cancellation frees the cache without disturbing other jobs, and
// errors end a job with a status naming the cause.
#include "engine/stages/stage_runner.h"

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/echo_engine.h"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

std::vector<ReasoningRequest> Questions() {
  std::vector<ReasoningRequest> requests(3);
  requests[0].question = "Which one is a fruit?";
  requests[0].choices = {"stone", "apple"};
  requests[1].question = "Where does rain come from?";
  requests[1].choices = {"clouds", "rocks", "trees"};
  requests[2].question = "What melts ice?";
  requests[2].choices = {"heat", "cold", "dark", "salt"};
  return requests;
}

ReasoningSession NewSession(const Engine& engine, const Pipeline& pipeline,
                            const Profile& profile,
                            const ReasoningRequest& request) {
  auto session = ReasoningSession::Create(engine, pipeline, profile, request);
  EXPECT_TRUE(session.ok()) << session.status();
  return *std::move(session);
}

// The reference the runner must equal: each stage's requests through one
// blocking GenerateBatch, the session driven by hand.
ReasoningResult StageByStage(Engine& engine, const Pipeline& pipeline,
                             const Profile& profile,
                             const ReasoningRequest& request) {
  ReasoningSession session = NewSession(engine, pipeline, profile, request);
  while (!session.done()) {
    auto requests = session.StageRequests();
    EXPECT_TRUE(requests.ok()) << requests.status();
    auto results = engine.GenerateBatch(*requests);
    EXPECT_TRUE(results.ok()) << results.status();
    session.FinishStage(*std::move(results), 0);
  }
  return session.TakeResult();
}

void ExpectSameTokens(const ReasoningResult& actual,
                      const ReasoningResult& expected) {
  ASSERT_EQ(actual.stages.size(), expected.stages.size());
  for (size_t s = 0; s < actual.stages.size(); ++s) {
    const StageRecord& a = actual.stages[s];
    const StageRecord& e = expected.stages[s];
    ASSERT_EQ(a.branches.size(), e.branches.size()) << a.name;
    for (size_t b = 0; b < a.branches.size(); ++b) {
      SCOPED_TRACE(absl::StrCat(a.name, " branch ", b));
      EXPECT_EQ(a.branches[b].generated_token_ids,
                e.branches[b].generated_token_ids);
      EXPECT_EQ(a.branches[b].text, e.branches[b].text);
      EXPECT_EQ(a.branches[b].finish_reason, e.branches[b].finish_reason);
      EXPECT_EQ(a.branches[b].token_max_prob, e.branches[b].token_max_prob);
    }
    EXPECT_EQ(a.output, e.output);
  }
  EXPECT_EQ(actual.answer_index, expected.answer_index);
}

// Records every event of one job, checking their order as they come.
class RecordingListener : public StageRunner::Listener {
 public:
  void OnStageStarted(size_t session, size_t stage, size_t branches) override {
    EXPECT_FALSE(done_);
    EXPECT_FALSE(running_[session].has_value())
        << "stage " << stage << " started before the last one finished";
    running_[session] = stage;
    started[{session, stage}] = branches;
  }
  void OnText(size_t session, size_t stage, size_t branch,
              const std::string& piece) override {
    EXPECT_FALSE(done_);
    EXPECT_EQ(running_[session], std::optional<size_t>(stage));
    EXPECT_LT(branch, (started[{session, stage}]));
    text[{session, stage, branch}] += piece;
  }
  void OnStageFinished(size_t session, size_t stage,
                       const StageRecord& record) override {
    EXPECT_FALSE(done_);
    EXPECT_EQ(running_[session], std::optional<size_t>(stage));
    running_[session].reset();
    finished.push_back({session, stage});
    EXPECT_EQ(record.branches.size(), (started[{session, stage}]));
  }
  void OnDone(absl::Status status_in,
              StageRunner::JobResult result_in) override {
    EXPECT_FALSE(done_) << "OnDone twice";
    done_ = true;
    status = std::move(status_in);
    result = std::move(result_in);
  }

  bool done() const { return done_; }

  std::map<std::pair<size_t, size_t>, size_t> started;
  std::map<std::tuple<size_t, size_t, size_t>, std::string> text;
  std::vector<std::pair<size_t, size_t>> finished;
  absl::Status status;
  StageRunner::JobResult result;

 private:
  bool done_ = false;
  std::map<size_t, std::optional<size_t>> running_;
};

struct Harness {
  explicit Harness(Engine* engine, int64_t max_batch = 64)
      : scheduler(engine,
                  [&] {
                    SchedulerOptions options;
                    options.max_batch = max_batch;
                    return options;
                  }()),
        runner(&scheduler) {}
  void RunToEnd() {
    while (!runner.idle()) ASSERT_TRUE(runner.Step().ok());
  }
  // Starts one request as a cohort of one (a server request).
  absl::StatusOr<StageRunner::JobId> Start(const Engine& engine,
                                           const Pipeline& pipeline,
                                           const Profile& profile,
                                           const ReasoningRequest& request,
                                           StageRunner::Listener* listener) {
    std::vector<ReasoningSession> sessions;
    sessions.push_back(NewSession(engine, pipeline, profile, request));
    return runner.AddSessions(std::move(sessions), listener);
  }
  Scheduler scheduler;
  StageRunner runner;
};

TEST(StageRunnerTest, CohortEqualsTheStageByStageReference) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 4);
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  const std::vector<ReasoningRequest> requests = Questions();

  Harness harness(engine.get());
  std::vector<ReasoningSession> sessions;
  for (const ReasoningRequest& r : requests) {
    sessions.push_back(NewSession(*engine, pipeline, full, r));
  }
  RecordingListener listener;
  ASSERT_TRUE(harness.runner.AddSessions(std::move(sessions), &listener).ok());
  harness.RunToEnd();
  ASSERT_TRUE(listener.done());
  ASSERT_TRUE(listener.status.ok()) << listener.status;
  ASSERT_EQ(listener.result.sessions.size(), requests.size());
  int64_t cached = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    const ReasoningResult& result = listener.result.sessions[i];
    ExpectSameTokens(result,
                     StageByStage(*engine, pipeline, full, requests[i]));
    for (const StageRecord& stage : result.stages) {
      cached += stage.cached_prompt_tokens;
      // Every branch keeps the ids it was fed (teacher forcing needs them).
      for (const BranchRecord& branch : stage.branches) {
        EXPECT_EQ(static_cast<int64_t>(branch.prompt_token_ids.size()),
                  branch.prompt_tokens);
      }
    }
    // Streamed text is the branch text, stage by stage.
    for (size_t s = 0; s < result.stages.size(); ++s) {
      for (size_t b = 0; b < result.stages[s].branches.size(); ++b) {
        EXPECT_EQ((listener.text[{i, s, b}]),
                  result.stages[s].branches[b].text);
      }
    }
  }
  // The cohort steps stage by stage: every session's stage s finished
  // before any stage s + 1 started.
  ASSERT_EQ(listener.finished.size(), 3 * requests.size());
  for (size_t k = 1; k < listener.finished.size(); ++k) {
    EXPECT_LE(listener.finished[k - 1].second, listener.finished[k].second);
  }
  // Fan-out branches share their question's prefix.
  EXPECT_GT(cached, 0);
  EXPECT_EQ(harness.scheduler.kv_cache_usage(), 0.0);
}

TEST(StageRunnerTest, ConcurrentJobsEqualEachAlone) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(7, 4, 5);
  const int64_t layers = engine->config().num_hidden_layers;
  const Profile full = Builtin("full", layers);
  const Profile skipping = Builtin("last:1", layers);
  const std::vector<ReasoningRequest> requests = Questions();

  GenerationRequest generation;
  generation.prompt_tokens = *engine->EncodePrompt("Once upon a time");
  generation.max_new_tokens = 9;
  generation.ignore_eos = true;

  // Jobs with different profiles and lengths, started at different steps,
  // share the batch: each must produce what it produces alone.
  Harness harness(engine.get());
  RecordingListener a, b, c, g;
  ASSERT_TRUE(harness.Start(*engine, pipeline, full, requests[0], &a).ok());
  ASSERT_TRUE(harness.runner.Step().ok());
  ASSERT_TRUE(harness.runner.AddGeneration(generation, &g).ok());
  ASSERT_TRUE(harness.Start(*engine, pipeline, skipping, requests[1], &b).ok());
  ASSERT_TRUE(harness.runner.Step().ok());
  ASSERT_TRUE(harness.runner.Step().ok());
  ASSERT_TRUE(harness.Start(*engine, pipeline, full, requests[2], &c).ok());
  EXPECT_EQ(harness.runner.num_jobs(), 4);
  harness.RunToEnd();

  for (RecordingListener* l : {&a, &b, &c, &g}) {
    ASSERT_TRUE(l->done());
    ASSERT_TRUE(l->status.ok()) << l->status;
  }
  ExpectSameTokens(a.result.sessions.at(0),
                   StageByStage(*engine, pipeline, full, requests[0]));
  ExpectSameTokens(b.result.sessions.at(0),
                   StageByStage(*engine, pipeline, skipping, requests[1]));
  ExpectSameTokens(c.result.sessions.at(0),
                   StageByStage(*engine, pipeline, full, requests[2]));
  // The skip profile really ran skipped.
  EXPECT_GT(b.result.sessions[0].sublayers.skipped(), 0);

  auto alone = engine->Generate(generation);
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_TRUE(g.result.generation.has_value());
  EXPECT_TRUE(g.result.sessions.empty());
  EXPECT_EQ(g.result.generation->tokens, alone->tokens);
  EXPECT_EQ(g.result.generation->text, alone->text);
  EXPECT_EQ((g.text[{0, 0, 0}]), alone->text);
  EXPECT_EQ(g.started.size(), 1u);
  EXPECT_EQ(harness.scheduler.kv_cache_usage(), 0.0);
}

TEST(StageRunnerTest, CancelEndsOneJobAtOnceAndFreesItsCache) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(12, 12, 12);
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  const std::vector<ReasoningRequest> requests = Questions();

  Harness harness(engine.get());
  RecordingListener cancelled, kept;
  auto id = harness.Start(*engine, pipeline, full, requests[2], &cancelled);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(harness.Start(*engine, pipeline, full, requests[1], &kept).ok());
  // Into the fan-out stage of the job to cancel.
  while (cancelled.finished.empty()) ASSERT_TRUE(harness.runner.Step().ok());
  ASSERT_TRUE(harness.runner.Step().ok());
  const double usage_with_both = harness.scheduler.kv_cache_usage();
  harness.runner.Cancel(*id, absl::CancelledError("cancelled by the test"));
  ASSERT_TRUE(cancelled.done());
  EXPECT_EQ(cancelled.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(cancelled.result.sessions.empty());
  EXPECT_LT(harness.scheduler.kv_cache_usage(), usage_with_both);
  EXPECT_EQ(harness.runner.num_jobs(), 1);
  harness.runner.Cancel(*id, absl::CancelledError("again"));  // No-op.

  harness.RunToEnd();
  ASSERT_TRUE(kept.status.ok()) << kept.status;
  ExpectSameTokens(kept.result.sessions.at(0),
                   StageByStage(*engine, pipeline, full, requests[1]));
  EXPECT_EQ(harness.scheduler.kv_cache_usage(), 0.0);
  EXPECT_TRUE(harness.scheduler.idle());
}

TEST(StageRunnerTest, DestroyingTheRunnerCancelsSilently) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(12, 12, 12);
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  SchedulerOptions options;
  Scheduler scheduler(engine.get(), options);
  RecordingListener listener;
  {
    StageRunner runner(&scheduler);
    ASSERT_TRUE(
        runner
            .AddSessions({NewSession(*engine, pipeline, full, Questions()[0])},
                         &listener)
            .ok());
    ASSERT_TRUE(runner.Step().ok());
    EXPECT_GT(scheduler.kv_cache_usage(), 0.0);
  }
  EXPECT_FALSE(listener.done());
  EXPECT_EQ(scheduler.kv_cache_usage(), 0.0);
  EXPECT_TRUE(scheduler.idle());
}

TEST(StageRunnerTest, AJobThatCannotStartIsRefusedAndNotKept) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(4, 4, 4);
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  Harness harness(engine.get());
  RecordingListener listener;

  GenerationRequest bad;
  bad.prompt_tokens = {1, 5, 100000};
  auto generation = harness.runner.AddGeneration(bad, &listener);
  EXPECT_EQ(generation.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(generation.status().message(), HasSubstr("100000"));

  // A question too long for the context: the cohort names the request.
  ReasoningRequest long_question = Questions()[1];
  long_question.question.clear();
  for (int i = 0; i < 400; ++i)
    absl::StrAppend(&long_question.question, "rain ");
  std::vector<ReasoningSession> sessions;
  sessions.push_back(NewSession(*engine, pipeline, full, Questions()[0]));
  sessions.push_back(NewSession(*engine, pipeline, full, long_question));
  auto cohort = harness.runner.AddSessions(std::move(sessions), &listener);
  EXPECT_EQ(cohort.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(cohort.status().message(),
              HasSubstr("request 1: stage 'recall'"));

  EXPECT_TRUE(harness.runner.idle());
  EXPECT_TRUE(harness.scheduler.idle());
  EXPECT_FALSE(listener.done());
  EXPECT_TRUE(listener.started.empty());
}

TEST(StageRunnerTest, ALaterStageThatDoesNotFitEndsTheJob) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  // The second stage's prompt holds the question twice: with a question of
  // ~750 tokens the first fits the 1024-token context, the second cannot.
  auto pipeline = ParsePipeline(R"json({
    "schema": "litestage.pipeline/v1", "name": "twice",
    "min_choices": 2, "max_choices": 2, "answer_regex": "([AB])",
    "stages": [
      {"name": "first", "prompt": "{question}\nA:", "max_new_tokens": 3},
      {"name": "second", "prompt": "{question}\n{question}\n{stage.first}",
       "max_new_tokens": 3}]})json",
                                "test:twice");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  ReasoningRequest request;
  for (int i = 0; i < 150; ++i) absl::StrAppend(&request.question, "rain ");
  request.choices = {"yes", "no"};
  Harness harness(engine.get());
  RecordingListener listener;
  ASSERT_TRUE(harness.Start(*engine, *pipeline, full, request, &listener).ok());
  harness.RunToEnd();
  ASSERT_TRUE(listener.done());
  ASSERT_EQ(listener.finished.size(), 1u) << "only the first stage ran";
  EXPECT_EQ(listener.status.code(), absl::StatusCode::kOutOfRange)
      << listener.status;
  EXPECT_THAT(listener.status.message(), HasSubstr("stage 'second'"));
  EXPECT_TRUE(listener.result.sessions.empty());
  EXPECT_EQ(harness.scheduler.kv_cache_usage(), 0.0);
}

TEST(StageRunnerTest, AFailedBackendStepEndsTheJobsInThatStep) {
  InProcessEchoKnobs() = {};
  auto engine = MakeTinyEchoEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(4, 4, 4);
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  Harness harness(engine.get());
  RecordingListener listener;
  ASSERT_TRUE(
      harness.Start(*engine, pipeline, full, Questions()[0], &listener).ok());
  ASSERT_TRUE(harness.runner.Step().ok());  // Recall's prefill.
  InProcessEchoKnobs().fail_forward_calls = 1;
  const absl::Status step = harness.runner.Step();
  EXPECT_EQ(step.code(), absl::StatusCode::kInternal);
  ASSERT_TRUE(listener.done());
  EXPECT_EQ(listener.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(listener.status.message(),
              HasSubstr("backend step failed: echo: injected step failure"));
  EXPECT_TRUE(listener.result.sessions.empty());
  EXPECT_TRUE(harness.runner.idle());
  EXPECT_EQ(harness.scheduler.kv_cache_usage(), 0.0);

  // The runner and the engine keep working afterwards.
  RecordingListener next;
  ASSERT_TRUE(
      harness.Start(*engine, pipeline, full, Questions()[1], &next).ok());
  harness.RunToEnd();
  EXPECT_TRUE(next.status.ok()) << next.status;
  InProcessEchoKnobs() = {};
}

}  // namespace
}  // namespace litestage
