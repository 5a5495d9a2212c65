// What the Scheduler sends to a backend, step by step, on the echo backend
// (tests/common/echo_backend.h: no model computation, greedy generation
// counts upwards): chunking under the prefill budget, positions, logits
// modes, block tables, sampling draws, prefix-group forks, a failed step and
// early exit on the backend's confidences. The model-backed scheduler tests
// (outputs equal to running alone) are in scheduler_test.cc.
#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/runtime/scheduler.h"
#include "gtest/gtest.h"
#include "tests/common/echo_engine.h"

namespace litestage {
namespace {

using RecordedChunk = EchoBackend::RecordedChunk;
using RecordedStep = EchoBackend::RecordedStep;

// Records every step of the in-process echo backend for one test.
class SchedulerStepsTest : public testing::Test {
 protected:
  void SetUp() override {
    InProcessEchoKnobs() = {};
    InProcessEchoKnobs().steps = &steps_;
    engine_ = MakeTinyEchoEngine();
    ASSERT_NE(engine_, nullptr);
    vocab_ = engine_->config().vocab_size;
  }
  void TearDown() override { InProcessEchoKnobs() = {}; }

  // Greedy, EOS ignored; prompt ids first, first + 1, ... (mod vocab).
  GenerationRequest Request(int64_t prompt_length, int32_t first,
                            int64_t max_new_tokens) const {
    GenerationRequest request;
    for (int64_t i = 0; i < prompt_length; ++i) {
      request.prompt_tokens.push_back(
          static_cast<int32_t>((first + i) % vocab_));
    }
    request.max_new_tokens = max_new_tokens;
    request.ignore_eos = true;
    return request;
  }

  struct Outcome {
    std::optional<GenerationResult> result;
    SequenceCallbacks Callbacks() {
      return {nullptr, [this](GenerationResult r) { result = std::move(r); }};
    }
  };

  void RunToIdle(Scheduler& scheduler) {
    for (int guard = 0; !scheduler.idle() && guard < 10000; ++guard) {
      ASSERT_TRUE(scheduler.Step().ok());
    }
    ASSERT_TRUE(scheduler.idle());
  }

  std::unique_ptr<Engine> engine_;
  int64_t vocab_ = 0;
  std::vector<RecordedStep> steps_;
};

// Three sequences under a 24-token prefill budget: every step stays in the
// budget; each sequence's chunks continue where the last ended, cover its
// prompt in order (kNone until the chunk that completes it, kSample from
// there on), feed back the token sampled last, and name blocks that cover
// what they write, that only grow, and that no other sequence holds.
TEST_F(SchedulerStepsTest, EachStepCarriesWhatItsSequencesNeed) {
  constexpr int64_t kPrefillBudget = 24;
  Scheduler scheduler(engine_.get(), {.max_prefill_tokens = kPrefillBudget});
  const std::vector<GenerationRequest> requests = {
      Request(50, 100, 5), Request(7, 300, 6), Request(1, 400, 3)};
  std::vector<Outcome> outcomes(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(scheduler.Add(requests[i], outcomes[i].Callbacks()).ok());
  }
  ASSERT_NO_FATAL_FAILURE(RunToIdle(scheduler));

  // A sequence's first block is its own (no prefix groups here).
  std::map<int32_t, std::vector<RecordedChunk>> by_sequence;
  for (const RecordedStep& step : steps_) {
    int64_t prefill_tokens = 0;
    std::set<int32_t> blocks_in_step;
    for (const RecordedChunk& chunk : step) {
      ASSERT_FALSE(chunk.block_table.empty());
      if (chunk.tokens.size() > 1 || chunk.logits == LogitsMode::kNone) {
        prefill_tokens += static_cast<int64_t>(chunk.tokens.size());
      }
      for (int32_t block : chunk.block_table) {
        EXPECT_TRUE(blocks_in_step.insert(block).second)
            << "block " << block << " named by two sequences of one step";
      }
      by_sequence[chunk.block_table[0]].push_back(chunk);
    }
    EXPECT_LE(prefill_tokens, kPrefillBudget);
  }
  ASSERT_EQ(by_sequence.size(), requests.size());

  for (const auto& [first_block, chunks] : by_sequence) {
    // Which request: the one whose prompt starts with the first chunk.
    size_t r = 0;
    while (r < requests.size() &&
           requests[r].prompt_tokens[0] != chunks[0].tokens[0])
      ++r;
    ASSERT_LT(r, requests.size());
    SCOPED_TRACE(::testing::Message() << "request " << r);
    const std::vector<int32_t>& prompt = requests[r].prompt_tokens;
    const int64_t prompt_length = static_cast<int64_t>(prompt.size());
    int64_t position = 0;
    std::vector<int32_t> table;
    int32_t last_sampled = -1;
    std::vector<int32_t> sampled;
    int64_t prompt_chunks = 0;
    for (const RecordedChunk& chunk : chunks) {
      const int64_t n = static_cast<int64_t>(chunk.tokens.size());
      EXPECT_EQ(chunk.start_position, position);
      EXPECT_EQ(chunk.skip, kNoSkip);
      if (position < prompt_length) {
        ++prompt_chunks;
        EXPECT_EQ(chunk.tokens,
                  std::vector<int32_t>(prompt.begin() + position,
                                       prompt.begin() + position + n));
        EXPECT_EQ(chunk.logits, position + n < prompt_length
                                    ? LogitsMode::kNone
                                    : LogitsMode::kSample);
      } else {
        ASSERT_EQ(n, 1);
        EXPECT_EQ(chunk.tokens[0], last_sampled);
        EXPECT_EQ(chunk.logits, LogitsMode::kSample);
      }
      EXPECT_GE(static_cast<int64_t>(chunk.block_table.size()) *
                    engine_->kv_blocks().block_size(),
                position + n);
      ASSERT_GE(chunk.block_table.size(), table.size());
      EXPECT_TRUE(
          std::equal(table.begin(), table.end(), chunk.block_table.begin()))
          << "a block table changed under a running sequence";
      table = chunk.block_table;
      if (chunk.logits == LogitsMode::kSample) {
        last_sampled = chunk.sampled;
        sampled.push_back(chunk.sampled);
      }
      position += n;
    }
    // At most kPrefillBudget prompt tokens per step.
    EXPECT_GE(prompt_chunks,
              (prompt_length + kPrefillBudget - 1) / kPrefillBudget);
    // Echo: each token is the one before plus one.
    ASSERT_TRUE(outcomes[r].result.has_value());
    std::vector<int32_t> counting;
    for (int64_t i = 1; i <= requests[r].max_new_tokens; ++i) {
      counting.push_back(static_cast<int32_t>((prompt.back() + i) % vocab_));
    }
    EXPECT_EQ(outcomes[r].result->tokens, counting);
    EXPECT_EQ(sampled, counting);
    EXPECT_EQ(outcomes[r].result->forwarded_tokens, position);
  }
  EXPECT_EQ(engine_->kv_blocks().num_sequences(), 0);
  EXPECT_EQ(engine_->kv_blocks().free_blocks(),
            engine_->kv_blocks().num_blocks());
}

// A sampled sequence's draws are its seeded stream, one variate per token
// (Sampler::Next), carried with its parameters; a greedy one's draws are
// greedy and take no variate.
TEST_F(SchedulerStepsTest, DrawsComeFromEachSequencesSeededStream) {
  Scheduler scheduler(engine_.get(), {});
  GenerationRequest sampled = Request(6, 10, 7);
  sampled.sampling = {
      .temperature = 0.9f, .top_k = 7, .top_p = 0.8f, .seed = 42};
  GenerationRequest greedy = Request(4, 200, 5);
  Outcome outcomes[2];
  ASSERT_TRUE(scheduler.Add(sampled, outcomes[0].Callbacks()).ok());
  ASSERT_TRUE(scheduler.Add(greedy, outcomes[1].Callbacks()).ok());
  ASSERT_NO_FATAL_FAILURE(RunToIdle(scheduler));

  Sampler stream(sampled.sampling);
  int64_t sampled_draws = 0, greedy_draws = 0;
  for (const RecordedStep& step : steps_) {
    for (const RecordedChunk& chunk : step) {
      if (chunk.logits != LogitsMode::kSample) continue;
      if (chunk.draw.greedy()) {
        EXPECT_EQ(chunk.draw.uniform, 0.0);
        ++greedy_draws;
        continue;
      }
      const TokenDraw expected = stream.Next();
      EXPECT_EQ(chunk.draw.temperature, expected.temperature);
      EXPECT_EQ(chunk.draw.top_k, expected.top_k);
      EXPECT_EQ(chunk.draw.top_p, expected.top_p);
      EXPECT_EQ(chunk.draw.uniform, expected.uniform) << sampled_draws;
      ++sampled_draws;
    }
  }
  EXPECT_EQ(sampled_draws, 7);
  EXPECT_EQ(greedy_draws, 5);
}

// A prefix group: the leader prefills the whole shared prefix; each other
// member starts at the last whole block of it (32 of 40 tokens), its block
// table beginning with the leader's blocks, and no chunk writes into them.
TEST_F(SchedulerStepsTest, PrefixGroupMembersStartFromTheLeadersBlocks) {
  Scheduler scheduler(engine_.get(), {});
  std::vector<GenerationRequest> group;
  for (int i = 0; i < 3; ++i) {
    GenerationRequest request = Request(40, 50, 2);
    for (int t = 0; t < 5; ++t)
      request.prompt_tokens.push_back(300 + 10 * i + t);
    group.push_back(request);
  }
  std::vector<Outcome> outcomes(3);
  std::vector<SequenceCallbacks> callbacks;
  for (Outcome& outcome : outcomes) callbacks.push_back(outcome.Callbacks());
  ASSERT_TRUE(scheduler.AddGroup(group, std::move(callbacks)).ok());
  ASSERT_NO_FATAL_FAILURE(RunToIdle(scheduler));

  std::vector<RecordedChunk> leader_chunks, member_starts;
  for (const RecordedStep& step : steps_) {
    for (const RecordedChunk& chunk : step) {
      if (chunk.start_position == 0) leader_chunks.push_back(chunk);
      if (chunk.start_position == 32) member_starts.push_back(chunk);
      EXPECT_TRUE(chunk.start_position == 0 || chunk.start_position >= 32)
          << "a chunk writes position " << chunk.start_position
          << ", inside the shared blocks";
    }
  }
  ASSERT_EQ(leader_chunks.size(), 1u);
  EXPECT_EQ(leader_chunks[0].tokens, group[0].prompt_tokens);
  ASSERT_EQ(member_starts.size(), 2u);
  for (const RecordedChunk& member : member_starts) {
    EXPECT_EQ(member.tokens.size(), 13u);  // Positions 32..44.
    ASSERT_GE(member.block_table.size(), 3u);
    EXPECT_EQ(member.block_table[0], leader_chunks[0].block_table[0]);
    EXPECT_EQ(member.block_table[1], leader_chunks[0].block_table[1]);
    EXPECT_NE(member.block_table[2], leader_chunks[0].block_table[2]);
  }
  EXPECT_NE(member_starts[0].block_table[2], member_starts[1].block_table[2]);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(outcomes[i].result.has_value());
    EXPECT_EQ(outcomes[i].result->cached_prompt_tokens, i == 0 ? 0 : 32) << i;
    EXPECT_EQ(outcomes[i].result->tokens,
              (std::vector<int32_t>{301 + 10 * i + 4, 302 + 10 * i + 4}))
        << i;
  }
  EXPECT_EQ(engine_->kv_blocks().free_blocks(),
            engine_->kv_blocks().num_blocks());
}

// A backend error fails the step: its sequences finish cancelled, their
// cache is freed, and the scheduler goes on serving new requests.
TEST_F(SchedulerStepsTest, AFailedStepCancelsItsSequencesAndFreesTheCache) {
  Scheduler scheduler(engine_.get(), {});
  Outcome outcomes[3];
  ASSERT_TRUE(scheduler.Add(Request(9, 10, 20), outcomes[0].Callbacks()).ok());
  ASSERT_TRUE(scheduler.Add(Request(3, 90, 20), outcomes[1].Callbacks()).ok());
  ASSERT_TRUE(scheduler.Step().ok());
  InProcessEchoKnobs().fail_forward_calls = 1;
  const absl::Status failed = scheduler.Step();
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal) << failed;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(outcomes[i].result.has_value()) << i;
    EXPECT_EQ(outcomes[i].result->finish_reason, FinishReason::kCancelled);
  }
  EXPECT_TRUE(scheduler.idle());
  EXPECT_EQ(engine_->kv_blocks().free_blocks(),
            engine_->kv_blocks().num_blocks());
  ASSERT_TRUE(scheduler.Add(Request(4, 7, 3), outcomes[2].Callbacks()).ok());
  ASSERT_NO_FATAL_FAILURE(RunToIdle(scheduler));
  ASSERT_TRUE(outcomes[2].result.has_value());
  EXPECT_EQ(outcomes[2].result->tokens, (std::vector<int32_t>{11, 12, 13}));
}

// Early exit reads the confidences the backend returned with its samples:
// the echo row (10 on one token, 0 on the rest) has max prob
// e^10 / (e^10 + vocab - 1). A threshold just above it ends the sequence
// once the window is full, dropping the token that filled it; one just below
// never fires.
TEST_F(SchedulerStepsTest, EarlyExitFollowsTheBackendsConfidences) {
  const double max_prob =
      std::exp(10.0) / (std::exp(10.0) + static_cast<double>(vocab_ - 1));
  for (const double offset : {1e-3, -1e-3}) {
    SCOPED_TRACE(offset);
    Scheduler scheduler(engine_.get(), {});
    GenerationRequest request = Request(5, 20, 12);
    request.early_exit = {.window = 3,
                          .threshold = static_cast<float>(max_prob + offset)};
    Outcome outcome;
    ASSERT_TRUE(scheduler.Add(request, outcome.Callbacks()).ok());
    ASSERT_NO_FATAL_FAILURE(RunToIdle(scheduler));
    ASSERT_TRUE(outcome.result.has_value());
    for (const TokenConfidence& confidence : outcome.result->confidences) {
      EXPECT_NEAR(confidence.max_prob, max_prob, 1e-6);
    }
    if (offset > 0) {
      EXPECT_EQ(outcome.result->finish_reason, FinishReason::kEarlyExit);
      EXPECT_EQ(outcome.result->tokens, (std::vector<int32_t>{25, 26}));
    } else {
      EXPECT_EQ(outcome.result->finish_reason, FinishReason::kLength);
      EXPECT_EQ(outcome.result->tokens.size(), 12u);
    }
  }
}

}  // namespace
}  // namespace litestage
