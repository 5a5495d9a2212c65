// The prefix cache (KvBlockManager, EngineOptions::prefix_cache) against the
// faithful path, re-prefilling every prompt: requests that share a context,
// a question asked twice, and profiles with different skip sets one after
// another on one engine give, stage by stage and branch by branch, the same
// text, tokens, finish reasons and confidences as an engine without the
// cache, while later stages and requests compute fewer prompt tokens. On the
// synthetic tiny model, on stories260K (LITESTAGE_SHARED) and on the default
// GGUF model with tinythinker's few-shot prompt (LITESTAGE_DEFAULT_GGUF).
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/stages/session.h"
#include "gtest/gtest.h"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

std::unique_ptr<Engine> MakeEngine(const std::string& model, bool cache) {
  EngineOptions options;
  options.model = model;
  options.matrix_dtype = DType::kF32;
  options.backend.num_threads = 2;
  options.prefix_cache = cache;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// Every stage and branch of `cached` equals `faithful` in what it produced.
void ExpectSameOutputs(const ReasoningResult& cached,
                       const ReasoningResult& faithful) {
  ASSERT_EQ(cached.stages.size(), faithful.stages.size());
  for (size_t s = 0; s < cached.stages.size(); ++s) {
    const StageRecord& a = cached.stages[s];
    const StageRecord& b = faithful.stages[s];
    SCOPED_TRACE(a.name);
    EXPECT_EQ(a.output, b.output);
    EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
    EXPECT_EQ(a.generated_tokens, b.generated_tokens);
    ASSERT_EQ(a.branches.size(), b.branches.size());
    for (size_t i = 0; i < a.branches.size(); ++i) {
      EXPECT_EQ(a.branches[i].text, b.branches[i].text) << i;
      EXPECT_EQ(a.branches[i].finish_reason, b.branches[i].finish_reason) << i;
      // Bit-equal: the CPU kernels give a position the same bits however
      // the prompt is split into chunks (the matmul sums k in fixed blocks
      // whatever the row count, matmul_tiles.h).
      EXPECT_EQ(a.branches[i].mean_confidence, b.branches[i].mean_confidence)
          << i;
    }
  }
  EXPECT_EQ(cached.answer, faithful.answer);
}

int64_t CachedTokens(const ReasoningResult& result) {
  int64_t cached = 0;
  for (const StageRecord& stage : result.stages) {
    cached += stage.cached_prompt_tokens;
  }
  return cached;
}

struct Case {
  std::string question;
  std::vector<std::string> choices;
};

// Runs `cases` under each profile in turn on a cached and an uncached
// engine of `model` and compares every result; returns the cached tokens
// of each run on the cached engine, in order.
std::vector<int64_t> CompareRuns(const std::string& model, Pipeline pipeline,
                                 const std::vector<std::string>& profiles,
                                 const std::vector<Case>& cases,
                                 int64_t max_new_tokens_cap) {
  std::unique_ptr<Engine> cached = MakeEngine(model, true);
  std::unique_ptr<Engine> faithful = MakeEngine(model, false);
  if (cached == nullptr || faithful == nullptr) return {};
  const int64_t layers = cached->config().num_hidden_layers;
  std::vector<int64_t> cached_tokens;
  for (const std::string& spec : profiles) {
    const Profile profile = Builtin(spec, layers);
    for (const Case& c : cases) {
      SCOPED_TRACE(spec + ": " + c.question);
      ReasoningRequest request;
      request.question = c.question;
      request.choices = c.choices;
      request.max_new_tokens_cap = max_new_tokens_cap;
      auto with_cache = RunReasoning(*cached, pipeline, profile, request);
      auto without = RunReasoning(*faithful, pipeline, profile, request);
      EXPECT_TRUE(with_cache.ok()) << with_cache.status();
      EXPECT_TRUE(without.ok()) << without.status();
      if (!with_cache.ok() || !without.ok()) return cached_tokens;
      ExpectSameOutputs(*with_cache, *without);
      EXPECT_GE(CachedTokens(*with_cache), CachedTokens(*without));
      cached_tokens.push_back(CachedTokens(*with_cache));
    }
  }
  EXPECT_EQ(cached->kv_blocks().num_sequences(), 0);
  EXPECT_EQ(cached->kv_blocks().free_blocks(),
            cached->kv_blocks().num_blocks());
  EXPECT_GT(cached->kv_blocks().cached_blocks(), 0);
  EXPECT_EQ(faithful->kv_blocks().cached_blocks(), 0);
  return cached_tokens;
}

TEST(PrefixCacheTest, TinyModelGivesTheFaithfulOutputs) {
  // A long shared context, so questions and stages share whole blocks.
  const std::string context =
      "Read this first, it is the same for every question: the quick brown "
      "fox jumps over the lazy dog, and then it runs far away. ";
  const std::vector<Case> cases = {
      {context + "Which is a fruit?", {"stone", "apple"}},
      {context + "Which is a colour?", {"red", "fast", "loud"}},
      {context + "Which is a fruit?", {"stone", "apple"}},  // Asked again.
  };
  // full and even:0 have the same skip set (none): even:0 reuses full's
  // blocks; last:1 has another and shares nothing with them.
  const std::vector<int64_t> cached = CompareRuns(
      "synthetic:tiny", ShortPipeline(6, 5, 7), {"full", "even:0", "last:1"},
      cases, /*max_new_tokens_cap=*/0);
  ASSERT_EQ(cached.size(), 9u);
  // The question asked again takes at least its whole first prompt (all but
  // the last block) from the cache, more than the first time.
  EXPECT_GT(cached[2], cached[0]);
  EXPECT_GT(cached[1], 0);          // The shared context.
  EXPECT_GE(cached[3], cached[2]);  // even:0 after full: all cached.
}

TEST(PrefixCacheTest, Stories260KGivesTheFaithfulOutputs) {
  const char* shared = std::getenv("LITESTAGE_SHARED");
  if (shared == nullptr || *shared == '\0') {
    GTEST_SKIP() << "LITESTAGE_SHARED is unset";
  }
  const std::string model = std::string(shared) + "/models/stories260K";
  ASSERT_TRUE(std::filesystem::exists(model + "/config.json"))
      << model << " is missing but LITESTAGE_SHARED is set";
  auto pipeline = BuiltinPipeline("tinythinker");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  pipeline->few_shot.clear();  // stories260K's context cannot hold it.
  const std::vector<Case> cases = {
      {"Where did the little dog go?",
       {"to the park", "to the moon", "under the bed", "into the sea"}},
      {"Where did the little dog go?",
       {"to the park", "to the moon", "under the bed", "into the sea"}},
      {"What did the girl find?", {"a ball", "a cat"}},
  };
  const std::vector<int64_t> cached = CompareRuns(
      model, *pipeline, {"full", "even:1"}, cases, /*max_new_tokens_cap=*/24);
  ASSERT_EQ(cached.size(), 6u);
  EXPECT_GT(cached[1], cached[0]);  // The repeated question.
}

// The default model as served: tinythinker with its few-shot prefix, which
// the second question takes from the first one's blocks.
TEST(PrefixCacheTest, DefaultModelGivesTheFaithfulOutputs) {
  const char* gguf = std::getenv("LITESTAGE_DEFAULT_GGUF");
  if (gguf == nullptr || *gguf == '\0') {
    GTEST_SKIP() << "LITESTAGE_DEFAULT_GGUF is unset "
                    "(scripts/fetch-default-model.sh)";
  }
  ASSERT_TRUE(std::filesystem::exists(gguf)) << gguf << " is missing";
  auto pipeline = BuiltinPipeline("tinythinker");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  const std::vector<Case> cases = {
      {"Which of these would let the most heat travel through?",
       {"a new pair of jeans", "a steel spoon in a cafeteria",
        "a cotton candy at a store", "a calvin klein cotton hat"}},
      {"What is used to measure the mass of an object?",
       {"a balance", "a thermometer", "a ruler", "a clock"}},
  };
  const std::vector<int64_t> cached = CompareRuns(
      gguf, *pipeline, {"full", "even:2"}, cases, /*max_new_tokens_cap=*/12);
  ASSERT_EQ(cached.size(), 4u);
  EXPECT_GT(cached[1], cached[0]);  // The few-shot prefix, computed once.
}

}  // namespace
}  // namespace litestage
