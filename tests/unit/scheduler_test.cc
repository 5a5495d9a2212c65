// Scheduler: sequences that arrive and leave between steps, cancellation,
// KV-reserving admission and batch limits, on the synthetic `tiny` model.
#include "engine/runtime/scheduler.h"

#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/echo_engine.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Engine> MakeTinyEngine(int64_t kv_cache_tokens = 4096) {
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.matrix_dtype = DType::kF32;
  options.backend.num_threads = 2;
  options.backend.kv_cache_tokens = kv_cache_tokens;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

GenerationRequest Greedy(int64_t prompt_length, int32_t seed,
                         int64_t max_new_tokens) {
  GenerationRequest request;
  for (int64_t i = 0; i < prompt_length; ++i) {
    request.prompt_tokens.push_back(
        static_cast<int32_t>((seed * 131 + i * 17) % 500));
  }
  request.max_new_tokens = max_new_tokens;
  request.ignore_eos = true;
  return request;
}

// Collects what the callbacks report for one sequence.
struct Outcome {
  std::optional<GenerationResult> result;
  std::string streamed;
  SequenceCallbacks Callbacks() {
    return {[this](const std::string& piece) { streamed += piece; },
            [this](GenerationResult r) { result = std::move(r); }};
  }
};

TEST(SchedulerTest, LateArrivalsMatchRunningAlone) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  std::vector<GenerationRequest> requests = {Greedy(9, 1, 12), Greedy(30, 2, 9),
                                             Greedy(4, 3, 15)};
  std::vector<GenerationResult> alone;
  for (const GenerationRequest& r : requests) {
    auto result = engine->Generate(r);
    ASSERT_TRUE(result.ok());
    alone.push_back(*result);
  }
  Scheduler scheduler(engine.get(), {});
  std::vector<Outcome> outcomes(requests.size());
  // The second arrives after 3 steps, the third after 7: they join batches
  // already decoding.
  int step = 0;
  size_t added = 0;
  while (added < requests.size() || !scheduler.idle()) {
    if ((added == 0 && step == 0) || (added == 1 && step == 3) ||
        (added == 2 && step == 7)) {
      ASSERT_TRUE(
          scheduler.Add(requests[added], outcomes[added].Callbacks()).ok());
      ++added;
    }
    ASSERT_TRUE(scheduler.Step().ok());
    ++step;
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(outcomes[i].result.has_value()) << i;
    EXPECT_EQ(outcomes[i].result->tokens, alone[i].tokens) << i;
    EXPECT_EQ(outcomes[i].streamed, alone[i].text) << i;
  }
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
}

TEST(SchedulerTest, CancelFreesTheCacheAtOnce) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  Scheduler scheduler(engine.get(), {});
  Outcome running, waiting_outcome, other;
  auto a = scheduler.Add(Greedy(40, 1, 50), running.Callbacks());
  auto b = scheduler.Add(Greedy(10, 2, 20), other.Callbacks());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(scheduler.Step().ok());
  ASSERT_TRUE(scheduler.Step().ok());
  EXPECT_GT(scheduler.kv_cache_usage(), 0);
  scheduler.Cancel(*a);
  ASSERT_TRUE(running.result.has_value());
  EXPECT_EQ(running.result->finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(scheduler.num_running(), 1);
  scheduler.Cancel(*a);  // Idempotent.
  while (!scheduler.idle()) ASSERT_TRUE(scheduler.Step().ok());
  ASSERT_TRUE(other.result.has_value());
  EXPECT_EQ(other.result->tokens.size(), 20u);
  EXPECT_EQ(scheduler.kv_cache_usage(), 0);
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);

  // Cancelling a sequence that never left the queue works too.
  Scheduler tight(engine.get(), {.max_batch = 1});
  auto first = tight.Add(Greedy(5, 1, 5), Outcome().Callbacks());
  auto queued = tight.Add(Greedy(5, 2, 5), waiting_outcome.Callbacks());
  ASSERT_TRUE(first.ok() && queued.ok());
  ASSERT_TRUE(tight.Step().ok());
  EXPECT_EQ(tight.num_waiting(), 1);
  tight.Cancel(*queued);
  ASSERT_TRUE(waiting_outcome.result.has_value());
  EXPECT_EQ(waiting_outcome.result->finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(tight.num_waiting(), 0);
}

TEST(SchedulerTest, AdmissionReservesWholeSequences) {
  // 64 tokens of cache: one sequence of 30 + 20 fits, two do not.
  auto engine = MakeTinyEngine(/*kv_cache_tokens=*/64);
  ASSERT_NE(engine, nullptr);
  Scheduler scheduler(engine.get(), {});
  Outcome first, second;
  ASSERT_TRUE(scheduler.Add(Greedy(30, 1, 21), first.Callbacks()).ok());
  ASSERT_TRUE(scheduler.Add(Greedy(30, 2, 21), second.Callbacks()).ok());
  ASSERT_TRUE(scheduler.Step().ok());
  EXPECT_EQ(scheduler.num_running(), 1);
  EXPECT_EQ(scheduler.num_waiting(), 1);
  while (!scheduler.idle()) ASSERT_TRUE(scheduler.Step().ok());
  ASSERT_TRUE(first.result.has_value() && second.result.has_value());
  EXPECT_EQ(first.result->tokens.size(), 21u);
  EXPECT_EQ(second.result->tokens.size(), 21u);

  auto never = scheduler.Add(Greedy(60, 3, 30), Outcome().Callbacks());
  EXPECT_EQ(never.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(never.status().message(), HasSubstr("KV cache"));
}

TEST(SchedulerTest, BatchSizeIsBoundedAndFinishMayAddMore) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  Scheduler scheduler(engine.get(), {.max_batch = 3});
  int finished = 0;
  int64_t largest_batch = 0;
  // Each finishing sequence adds a follow-up from inside on_finish (how the
  // server chains stages), six in all.
  std::function<void(int)> add = [&](int generation) {
    SequenceCallbacks callbacks;
    callbacks.on_finish = [&, generation](GenerationResult result) {
      EXPECT_EQ(result.tokens.size(), 4u);
      ++finished;
      if (generation < 1) add(generation + 1);
    };
    ASSERT_TRUE(
        scheduler.Add(Greedy(6, generation + 1, 4), std::move(callbacks)).ok());
  };
  for (int i = 0; i < 3; ++i) add(0);
  while (!scheduler.idle()) {
    ASSERT_TRUE(scheduler.Step().ok());
    largest_batch = std::max(largest_batch, scheduler.last_batch_size());
    EXPECT_LE(scheduler.last_batch_size(), 3);
  }
  EXPECT_EQ(finished, 6);
  EXPECT_EQ(largest_batch, 3);
}

// Four prompts with a common 40-token prefix (2 whole blocks of 16 shared):
// the followers start from the leader's blocks and generate exactly what
// they generate alone, feeding 32 fewer tokens each.
TEST(SchedulerTest, PrefixGroupSharesTheCommonPrefix) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->kv_blocks().block_size(), 16);
  std::vector<GenerationRequest> requests;
  for (int32_t branch = 0; branch < 4; ++branch) {
    GenerationRequest r = Greedy(40, 5, 10);
    r.prompt_tokens.push_back(100 + branch);
    r.prompt_tokens.push_back(200 + branch);
    requests.push_back(r);
  }
  std::vector<GenerationResult> alone;
  for (const GenerationRequest& r : requests) {
    auto result = engine->Generate(r);
    ASSERT_TRUE(result.ok());
    alone.push_back(*result);
  }
  for (bool cancel_leader : {false, true}) {
    SCOPED_TRACE(cancel_leader ? "leader cancelled" : "all run");
    Scheduler scheduler(engine.get(), {.max_batch = cancel_leader ? 1 : 8});
    std::vector<Outcome> outcomes(requests.size());
    std::vector<SequenceCallbacks> callbacks;
    for (Outcome& o : outcomes) callbacks.push_back(o.Callbacks());
    auto handles = scheduler.AddGroup(requests, std::move(callbacks));
    ASSERT_TRUE(handles.ok()) << handles.status();
    // With one batch slot the followers wait in the queue; cancelling the
    // leader then leaves them to prefill in full.
    if (cancel_leader) {
      ASSERT_TRUE(scheduler.Step().ok());
      scheduler.Cancel((*handles)[0]);
    }
    while (!scheduler.idle()) ASSERT_TRUE(scheduler.Step().ok());
    for (size_t i = cancel_leader ? 1 : 0; i < requests.size(); ++i) {
      ASSERT_TRUE(outcomes[i].result.has_value());
      const GenerationResult& r = *outcomes[i].result;
      EXPECT_EQ(r.tokens, alone[i].tokens) << i;
      const int64_t cached = (i == 0 || cancel_leader) ? 0 : 32;
      EXPECT_EQ(r.cached_prompt_tokens, cached) << i;
      EXPECT_EQ(r.forwarded_tokens, 42 - cached + 10 - 1) << i;
    }
    EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
    EXPECT_EQ(scheduler.kv_cache_usage(), 0);
  }

  // Different skip sets share nothing.
  Scheduler scheduler(engine.get(), {});
  requests[1].skip.mlp = {true};
  std::vector<Outcome> outcomes(2);
  ASSERT_TRUE(scheduler
                  .AddGroup({requests[0], requests[1]},
                            {outcomes[0].Callbacks(), outcomes[1].Callbacks()})
                  .ok());
  while (!scheduler.idle()) ASSERT_TRUE(scheduler.Step().ok());
  EXPECT_EQ(outcomes[1].result->cached_prompt_tokens, 0);
}

// Each prompt starts from the earlier one sharing the longest whole-block
// prefix it is allowed to share; ties go to the earliest.
TEST(PlanPrefixSharingTest, PicksTheLongestBlockAlignedPrefix) {
  const std::vector<int32_t> root(40, 7);
  std::vector<int32_t> a = root, b = root, c = root, d = root, e(10, 7);
  a.insert(a.end(), {1, 2, 3});
  b.insert(b.end(), {1, 2, 3, 4});
  b.insert(b.end(), 20, 9);  // b extends a's 43 tokens by 24
  c.insert(c.end(), {5});
  d = b;
  d.back() = 8;  // d shares all of b but its last token
  const std::vector<absl::Span<const int32_t>> prompts = {root, a, b, c, d, e};
  std::vector<int64_t> limits;
  for (const auto& p : prompts) limits.push_back(int64_t(p.size()) - 1);
  const auto all = [](size_t, size_t) { return true; };
  std::vector<PrefixShare> plan = PlanPrefixSharing(prompts, limits, 16, all);
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan[0].leader, -1);
  // a: 40 common with root (limit 39 for root's length) -> 32.
  EXPECT_EQ(plan[1].leader, 0);
  EXPECT_EQ(plan[1].tokens, 32);
  // b shares 43 with a -> 32, the same as with root: the earliest wins.
  EXPECT_EQ(plan[2].leader, 0);
  EXPECT_EQ(plan[2].tokens, 32);
  EXPECT_EQ(plan[3].tokens, 32);
  // d shares 63 tokens with b -> 48 blocks' worth, more than with anyone.
  EXPECT_EQ(plan[4].leader, 2);
  EXPECT_EQ(plan[4].tokens, 48);
  // Shorter than a block: nothing to share.
  EXPECT_EQ(plan[5].leader, -1);

  // Limits cap what is shared (d must compute from position 20 on).
  limits[4] = 20;
  plan = PlanPrefixSharing(prompts, limits, 16, all);
  EXPECT_EQ(plan[4].tokens, 16);
  // can_share rules leaders out.
  plan = PlanPrefixSharing(prompts, limits, 16,
                           [](size_t, size_t j) { return j != 0; });
  EXPECT_EQ(plan[1].leader, -1);
  EXPECT_EQ(plan[2].leader, 1);
  EXPECT_EQ(plan[2].tokens, 32);
}

// A group shaped like a batched fan-out stage (two questions behind one
// few-shot prefix, two branches each): every branch shares the longest
// prefix it can, through a chain of forks, and generates what it generates
// alone.
TEST(SchedulerTest, PrefixGroupSharesAlongATree) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  std::vector<GenerationRequest> requests;
  for (int32_t question = 0; question < 2; ++question) {
    for (int32_t branch = 0; branch < 2; ++branch) {
      GenerationRequest r = Greedy(32, 5, 6);  // the shared "few-shot"
      for (int i = 0; i < 20; ++i) r.prompt_tokens.push_back(300 + question);
      r.prompt_tokens.push_back(100 + branch);
      requests.push_back(r);
    }
  }
  std::vector<GenerationResult> alone;
  for (const GenerationRequest& r : requests) {
    auto result = engine->Generate(r);
    ASSERT_TRUE(result.ok());
    alone.push_back(*result);
  }
  Scheduler scheduler(engine.get(), {.max_batch = 8});
  std::vector<Outcome> outcomes(requests.size());
  std::vector<SequenceCallbacks> callbacks;
  for (Outcome& o : outcomes) callbacks.push_back(o.Callbacks());
  ASSERT_TRUE(scheduler.AddGroup(requests, std::move(callbacks)).ok());
  while (!scheduler.idle()) ASSERT_TRUE(scheduler.Step().ok());
  // 52 common tokens within a question (48 shared), 32 across questions.
  const int64_t cached[] = {0, 48, 32, 48};
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(outcomes[i].result.has_value());
    EXPECT_EQ(outcomes[i].result->tokens, alone[i].tokens) << i;
    EXPECT_EQ(outcomes[i].result->cached_prompt_tokens, cached[i]) << i;
  }
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
}

// Two sequences skipping nothing (one with an explicit all-false skip set,
// the same skips) and two skipping layer 1: mixed steps run all four
// together; grouped steps run one skip set at a time, the two taking turns,
// and every sequence generates what it generates alone.
TEST(SchedulerTest, GroupedBatchingRunsOneSkipSetPerStep) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->config().num_hidden_layers, 2);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) requests.push_back(Greedy(5 + i, i + 1, 8));
  requests[1].skip.attention = {false, false};
  requests[1].skip.mlp = {false, false};
  for (int i : {2, 3}) {
    requests[i].skip.attention = {false, true};
    requests[i].skip.mlp = {false, true};
  }
  std::vector<GenerationResult> alone;
  for (const GenerationRequest& r : requests) {
    auto result = engine->Generate(r);
    ASSERT_TRUE(result.ok());
    alone.push_back(*result);
  }
  for (SkipSetBatching batching :
       {SkipSetBatching::kMixed, SkipSetBatching::kGrouped}) {
    SCOPED_TRACE(SkipSetBatchingName(batching));
    Scheduler scheduler(engine.get(), {.skip_set_batching = batching});
    std::vector<Outcome> outcomes(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_TRUE(scheduler.Add(requests[i], outcomes[i].Callbacks()).ok());
    }
    std::vector<int64_t> batch_sizes;
    while (!scheduler.idle()) {
      ASSERT_TRUE(scheduler.Step().ok());
      batch_sizes.push_back(scheduler.last_batch_size());
    }
    // 8 tokens: one prefill step and 7 decode steps per skip set.
    const std::vector<int64_t> expected = batching == SkipSetBatching::kMixed
                                              ? std::vector<int64_t>(8, 4)
                                              : std::vector<int64_t>(16, 2);
    EXPECT_EQ(batch_sizes, expected);
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_TRUE(outcomes[i].result.has_value()) << i;
      EXPECT_EQ(outcomes[i].result->tokens, alone[i].tokens) << i;
      EXPECT_EQ(outcomes[i].result->sublayers, alone[i].sublayers) << i;
    }
  }
  auto grouped = ParseSkipSetBatching("grouped");
  ASSERT_TRUE(grouped.ok());
  EXPECT_EQ(*grouped, SkipSetBatching::kGrouped);
  auto automatic = ParseSkipSetBatching("auto");
  ASSERT_TRUE(automatic.ok());
  EXPECT_FALSE(automatic->has_value());
  EXPECT_THAT(ParseSkipSetBatching("batched").status().message(),
              HasSubstr("'auto', 'mixed' or 'grouped'"));
  // Unset, the policy follows the backend: the CPU backend batches mixed.
  ASSERT_TRUE(engine->backend().capabilities().efficient_mixed_skip_batches);
  EXPECT_EQ(Scheduler(engine.get(), {}).skip_set_batching(),
            SkipSetBatching::kMixed);
}

TEST(SchedulerTest, InvalidRequestsAreRefusedAtAdd) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  Scheduler scheduler(engine.get(), {});
  GenerationRequest empty;
  EXPECT_THAT(scheduler.Add(empty, {}).status().message(),
              HasSubstr("prompt_tokens"));
  GenerationRequest long_prompt = Greedy(2000, 1, 4);
  EXPECT_EQ(scheduler.Add(long_prompt, {}).status().code(),
            absl::StatusCode::kOutOfRange);
  GenerationRequest bad_exit = Greedy(4, 1, 4);
  bad_exit.early_exit.window = -1;
  EXPECT_THAT(scheduler.Add(bad_exit, {}).status().message(),
              HasSubstr("early_exit.window"));
  EXPECT_TRUE(scheduler.idle());
}

// Unset, the skip-set batching policy follows the backend's capabilities:
// a backend that runs a skip set as one fused graph gets grouped steps.
TEST(SchedulerTest, SkipSetBatchingFollowsTheBackendsCapabilities) {
  InProcessEchoKnobs() = {};
  for (const bool mixed_is_efficient : {true, false}) {
    InProcessEchoKnobs().efficient_mixed_skip_batches = mixed_is_efficient;
    auto engine = MakeTinyEchoEngine();
    ASSERT_NE(engine, nullptr);
    Scheduler scheduler(engine.get(), {});
    EXPECT_EQ(scheduler.skip_set_batching(), mixed_is_efficient
                                                 ? SkipSetBatching::kMixed
                                                 : SkipSetBatching::kGrouped);
    // An explicit option wins.
    Scheduler forced(engine.get(),
                     {.skip_set_batching = SkipSetBatching::kMixed});
    EXPECT_EQ(forced.skip_set_batching(), SkipSetBatching::kMixed);
  }
  InProcessEchoKnobs() = {};
}

}  // namespace
}  // namespace litestage
