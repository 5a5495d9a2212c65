// The model-free parts of engine/stages/search_measurer.h: the metric
// decoders, the cache-key helpers and the reference-run JSON round trip.
// The engine side runs end to end in search_cli_test.cc.
#include "engine/stages/search_measurer.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

// A result as EngineQuestionMeasurer writes it, two stages.
nlohmann::json Result(bool agrees, double token_fidelity, bool correct,
                      bool labelled) {
  QuestionEval row;
  row.profile = "k=1|k=0";
  row.question_id = "q1";
  row.answer_index = 1;
  if (labelled) row.label = correct ? 1 : 2;
  row.seconds = 3;
  row.stages.resize(2);
  row.stages[0].name = "a";
  row.stages[0].seconds = 1;
  row.stages[1].name = "b";
  row.stages[1].seconds = 2;
  nlohmann::json result = QuestionEvalToJson(row);
  result["agrees_with_full"] = agrees;
  result["token_fidelity"] = token_fidelity;
  result["correct"] = correct;
  result["labelled"] = labelled;
  return result;
}

TEST(SearchDecoderTest, FidelityIsTheMeanOfAgreementAndTokenFidelity) {
  const QuestionDecoder decode = MakeSearchDecoder(SearchMetric::kFidelity, 2);
  absl::StatusOr<QuestionValues> agree = decode(Result(true, 0.8, false, true));
  ASSERT_TRUE(agree.ok()) << agree.status();
  EXPECT_DOUBLE_EQ(agree->metric, 0.9);
  EXPECT_DOUBLE_EQ(agree->latency_seconds, 3);
  EXPECT_THAT(agree->stage_latency_seconds, ::testing::ElementsAre(1, 2));
  absl::StatusOr<QuestionValues> differ =
      decode(Result(false, 0.5, true, true));
  ASSERT_TRUE(differ.ok()) << differ.status();
  EXPECT_DOUBLE_EQ(differ->metric, 0.25);
}

TEST(SearchDecoderTest, AccuracyIsCorrectnessAndNeedsLabels) {
  const QuestionDecoder decode = MakeSearchDecoder(SearchMetric::kAccuracy, 2);
  EXPECT_EQ(decode(Result(false, 0, true, true))->metric, 1);
  EXPECT_EQ(decode(Result(true, 1, false, true))->metric, 0);
  absl::StatusOr<QuestionValues> unlabelled =
      decode(Result(true, 1, false, false));
  EXPECT_FALSE(unlabelled.ok());
  EXPECT_THAT(unlabelled.status().message(), HasSubstr("no label"));
}

TEST(SearchDecoderTest, RejectsMalformedResults) {
  const QuestionDecoder decode = MakeSearchDecoder(SearchMetric::kFidelity, 3);
  EXPECT_THAT(decode(Result(true, 1, true, true)).status().message(),
              HasSubstr("2 stages, the pipeline has 3"));
  nlohmann::json missing = Result(true, 1, true, true);
  missing.erase("token_fidelity");
  EXPECT_FALSE(MakeSearchDecoder(SearchMetric::kFidelity, 2)(missing).ok());
  EXPECT_FALSE(decode(nlohmann::json::object()).ok());
}

TEST(SearchKeysTest, QuestionKeyHashesTextAndChoices) {
  QuestionItem a{"line 3", "Why?", {"x", "y"}, 0};
  QuestionItem b = a;
  b.choices = {"x", "z"};
  EXPECT_THAT(QuestionCacheKey(a), ::testing::StartsWith("line 3#"));
  EXPECT_NE(QuestionCacheKey(a), QuestionCacheKey(b));
  EXPECT_EQ(QuestionCacheKey(a), QuestionCacheKey(QuestionItem(a)));
  EXPECT_EQ(StableHash(""), "cbf29ce484222325");  // FNV-1a 64 offset basis.
}

TEST(SearchKeysTest, PipelineIdentityFollowsPromptsAndCap) {
  absl::StatusOr<Pipeline> pipeline = BuiltinPipeline("tinythinker");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  Pipeline zero_shot = *pipeline;
  zero_shot.few_shot.clear();
  const std::string identity = PipelineCacheIdentity(*pipeline, 0);
  EXPECT_THAT(identity, ::testing::StartsWith("tinythinker@"));
  EXPECT_NE(identity, PipelineCacheIdentity(zero_shot, 0));
  EXPECT_NE(identity, PipelineCacheIdentity(*pipeline, 24));
  EXPECT_EQ(identity, PipelineCacheIdentity(*pipeline, 0));
}

TEST(SearchKeysTest, FullConfiguration) {
  Configuration full{std::vector<StageSetting>(3)};
  EXPECT_TRUE(IsFullConfiguration(full));
  Configuration skip = full;
  skip.stages[1].skip = 1;
  EXPECT_FALSE(IsFullConfiguration(skip));
  Configuration exit = full;
  exit.stages[2].early_exit.window = 4;
  EXPECT_FALSE(IsFullConfiguration(exit));
}

TEST(ReferenceRunTest, JsonRoundTrip) {
  ReferenceRun reference;
  reference.tokens.stages = {{{{1, 2, 3}, {4, 5}}}, {{{6}, {}}, {{7}, {8}}}};
  reference.row.profile = "full";
  reference.row.question_id = "q";
  reference.row.seconds = 1.5;
  reference.row.stages.resize(2);
  reference.token_max_prob = {0.25f, 0.5f, 1.0f};
  absl::StatusOr<ReferenceRun> back =
      ReferenceRunFromJson(ReferenceRunToJson(reference));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->token_max_prob, reference.token_max_prob);
  EXPECT_EQ(back->row.seconds, 1.5);
  ASSERT_EQ(back->tokens.stages.size(), 2u);
  EXPECT_EQ(back->tokens.stages[1][1].generated, std::vector<int32_t>{8});
  EXPECT_FALSE(ReferenceRunFromJson({{"row", 1}}).ok());
}

// The engine measurer batched (latency questions alone, the rest
// together, teacher forcing batched and shared across early exits) gives
// the same outputs, agreement and fidelity as measuring every question
// alone; PredictBatchedLatency then fills the batched rows' latency.
TEST(EngineQuestionMeasurerTest, BatchedEqualsAloneAndLatencyIsPredicted) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 5);
  SearchSpace space;
  space.model = engine->fingerprint();
  space.pipeline = pipeline.name;
  for (const PipelineStage& stage : pipeline.stages) {
    space.stage_names.push_back(stage.name);
  }
  space.num_layers = engine->config().num_hidden_layers;
  space.ranking = {{SublayerKind::kMlp, 1},
                   {SublayerKind::kAttention, 0},
                   {SublayerKind::kMlp, 0},
                   {SublayerKind::kAttention, 1}};
  std::vector<QuestionItem> items;
  std::vector<std::string> keys;
  for (int q = 0; q < 5; ++q) {
    QuestionItem item;
    item.id = absl::StrCat("q", q);
    item.question = absl::StrCat(
        "A long shared preamble that every question starts with, so that "
        "batched runs share its cache blocks. Question ",
        q, "?");
    item.choices = {"yes", "no", "maybe"};
    item.answer = 0;
    items.push_back(item);
    keys.push_back(QuestionCacheKey(item));
  }
  EngineQuestionMeasurer alone(engine.get(), &pipeline, space, items, {},
                               nullptr);
  EngineQuestionMeasurer batched(engine.get(), &pipeline, space, items, {},
                                 nullptr);
  batched.set_batching(2, {keys[0], keys[1]});
  Configuration skip{std::vector<StageSetting>(3)};
  skip.stages[1].skip = 2;
  Configuration skip_ee = skip;
  skip_ee.stages[1].early_exit = EarlyExitConfig{.window = 3, .threshold = 0.5};
  const Configuration full{std::vector<StageSetting>(3)};
  for (const Configuration& c : {full, skip, skip_ee}) {
    SCOPED_TRACE(ConfigurationName(c));
    auto a = alone.MeasureQuestions(c, keys);
    auto b = batched.MeasureQuestions(c, keys);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    for (size_t q = 0; q < keys.size(); ++q) {
      for (const char* field :
           {"answer_index", "agrees_with_full", "token_fidelity", "correct"}) {
        EXPECT_EQ((*a)[q][field], (*b)[q][field]) << q << " " << field;
      }
      EXPECT_EQ((*b)[q]["latency_measured"].get<bool>(), q < 2) << q;
      for (size_t s = 0; s < 3; ++s) {
        for (const char* field : {"generated_tokens", "prefill_tokens",
                                  "decode_tokens", "fidelity_hits"}) {
          EXPECT_EQ((*a)[q]["stages"][s][field], (*b)[q]["stages"][s][field])
              << q << " " << s << " " << field;
        }
      }
    }
    std::vector<nlohmann::json> results = *b;
    ASSERT_TRUE(PredictBatchedLatency(results).ok());
    auto model_rows = [&](size_t q) {
      auto row = QuestionEvalFromJson(results[q]);
      EXPECT_TRUE(row.ok());
      return *row;
    };
    for (size_t q = 2; q < keys.size(); ++q) {
      const QuestionEval row = model_rows(q);
      EXPECT_FALSE(row.latency_measured);
      double sum = 0;
      for (const StageEval& stage : row.stages) sum += stage.seconds;
      EXPECT_NEAR(row.seconds, sum, 1e-12);
      EXPECT_GT(row.seconds, 0);
    }
    // Measured rows are left as measured.
    EXPECT_EQ(results[0]["seconds"], (*b)[0]["seconds"]);
  }
  // One teacher-forced pass per skip-set combination and question: the
  // early-exit configuration reused the skip one's.
  EXPECT_EQ(batched.full_runs(), 5);
  // Rows predicted with nothing measured to fit on: an error.
  std::vector<nlohmann::json> unfit;
  nlohmann::json row = QuestionEvalToJson(QuestionEval{});
  row["latency_measured"] = false;
  unfit.push_back(row);
  EXPECT_FALSE(PredictBatchedLatency(unfit).ok());
}

}  // namespace
}  // namespace litestage
