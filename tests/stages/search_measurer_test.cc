// The model-free parts of engine/stages/search_measurer.h: the metric
// decoders, the cache-key helpers and the reference-run JSON round trip.
// The engine side runs end to end in search_cli_test.cc.
#include "engine/stages/search_measurer.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

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

}  // namespace
}  // namespace litestage
