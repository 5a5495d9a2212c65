// Sub-layer importance: cosine similarity between each sub-layer's input and
// output residual stream at every stage's prefill, on the full model.
#include "engine/stages/importance.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

constexpr char kTwoStagePipeline[] = R"json({
  "schema": "litestage.pipeline/v1",
  "name": "two",
  "stages": [
    {"name": "first", "prompt": "Q: {question}\nA:", "max_new_tokens": 4},
    {"name": "second", "prompt": "Q: {question}\nA: {stage.first}\nSo",
     "max_new_tokens": 3}
  ]
})json";

std::vector<QuestionItem> Samples() {
  return {{"s1", "Why is the sky blue?", {}, std::nullopt},
          {"s2", "What do cows eat in winter?", {}, std::nullopt}};
}

// Zeroing a sub-layer's output projection makes it the identity on the
// residual stream: its cosine similarity is exactly 1, the most redundant,
// while every real sub-layer stays below 1.
TEST(ImportanceTest, IdentitySublayersRankFirst) {
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.matrix_dtype = DType::kF32;
  options.backend.num_threads = 2;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const ModelWeights& weights = (*engine)->weights();
  ASSERT_EQ(weights.config.num_hidden_layers, 2);
  const Tensor& o_proj = weights.layers[1].o_proj;
  const Tensor& down_proj = weights.layers[0].down_proj;
  std::memset(const_cast<void*>(o_proj.data), 0, o_proj.nbytes());
  std::memset(const_cast<void*>(down_proj.data), 0, down_proj.nbytes());

  auto pipeline = ParsePipeline(kTwoStagePipeline, "test:two");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  auto importance = MeasureSublayerImportance(**engine, *pipeline, Samples());
  ASSERT_TRUE(importance.ok()) << importance.status();
  EXPECT_EQ(importance->num_samples, 2);
  ASSERT_EQ(importance->stage_names,
            (std::vector<std::string>{"first", "second"}));
  for (const std::vector<double>& stage : importance->stage_similarity) {
    ASSERT_EQ(stage.size(), 4u);
    EXPECT_NEAR(stage[SublayerIndex(1, SublayerKind::kAttention)], 1.0, 1e-6);
    EXPECT_NEAR(stage[SublayerIndex(0, SublayerKind::kMlp)], 1.0, 1e-6);
    EXPECT_LT(stage[SublayerIndex(0, SublayerKind::kAttention)], 0.9999);
    EXPECT_LT(stage[SublayerIndex(1, SublayerKind::kMlp)], 0.9999);
    for (double value : stage) {
      EXPECT_GE(value, -1.0);
      EXPECT_LE(value, 1.0 + 1e-6);
    }
  }
  // Summed over the two stages.
  EXPECT_NEAR(
      importance->total_similarity[SublayerIndex(1, SublayerKind::kAttention)],
      2.0, 1e-6);
  const std::vector<SublayerRef> ranking = importance->Ranking();
  ASSERT_EQ(ranking.size(), 4u);
  const std::set<std::string> top = {SublayerRefName(ranking[0]),
                                     SublayerRefName(ranking[1])};
  EXPECT_EQ(top, (std::set<std::string>{"attention.1", "mlp.0"}));
  const nlohmann::json json = importance->ToJson();
  EXPECT_EQ(json["ranking"].size(), 4u);
  EXPECT_TRUE(json["stage_similarity"]["second"].contains("mlp.1"));
}

TEST(ImportanceTest, RealModelGivesAPermutationOfAllSublayers) {
  const char* shared = std::getenv("LITESTAGE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "LITESTAGE_SHARED is not set";
  const std::string model_dir = std::string(shared) + "/models/stories260K";
  const std::string obqa = std::string(shared) + "/data/obqa/test.jsonl";
  ASSERT_TRUE(std::filesystem::exists(model_dir + "/config.json"))
      << model_dir << " missing but LITESTAGE_SHARED is set";
  EngineOptions options;
  options.model = model_dir;
  options.backend.num_threads = 2;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto questions = LoadQuestions(obqa, 2);
  ASSERT_TRUE(questions.ok()) << questions.status();
  auto pipeline = BuiltinPipeline("tinythinker");
  ASSERT_TRUE(pipeline.ok());
  // stories260K reads 512 tokens with a 512-piece vocabulary (~2 bytes a
  // token): the 751-byte few-shot example alone would fill its context, so
  // the stages run zero-shot here.
  pipeline->few_shot.clear();
  ReasoningRequest base;
  base.max_new_tokens_cap = 8;
  auto importance =
      MeasureSublayerImportance(**engine, *pipeline, *questions, base);
  ASSERT_TRUE(importance.ok()) << importance.status();
  const std::vector<SublayerRef> ranking = importance->Ranking();
  ASSERT_EQ(ranking.size(), 10u);
  std::set<std::string> names;
  double previous = 1e9;
  for (const SublayerRef& ref : ranking) {
    names.insert(SublayerRefName(ref));
    const double total =
        importance->total_similarity[SublayerIndex(ref.layer, ref.kind)];
    EXPECT_LE(total, previous);
    previous = total;
    // Three stages, each a cosine in [-1, 1].
    EXPECT_LE(total, 3.0 + 1e-9);
    EXPECT_GE(total, -3.0 - 1e-9);
  }
  EXPECT_EQ(names.size(), 10u);
}

}  // namespace
}  // namespace litestage
