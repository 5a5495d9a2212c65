// The search's report (engine/stages/search_report.h): the CSV has one row
// per evaluated configuration, and the searched profile with its provenance
// round-trips through the profile parser.
#include "engine/stages/search_report.h"

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "engine/util/check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Two stages; recall tolerates k <= 1, "sum, mary" (a name that needs CSV
// quoting) k <= 2; early exit (4, 0.3) on the second stage is faster and
// keeps the metric.
class Table : public ConfigurationMeasurer {
 public:
  absl::StatusOr<Measurement> Measure(const Configuration& c) override {
    const int64_t a = c.stages[0].skip;
    const int64_t b = c.stages[1].skip;
    const bool ok = a <= 1 && b <= 2;
    const double exit_saving = c.stages[1].early_exit.enabled() ? 0.05 : 0;
    const double la = 0.4 - 0.01 * a;
    const double lb = 0.3 - 0.01 * b - exit_saving;
    return Measurement{{ok ? 1.0 : 0.0, ok ? 1.0 : 0.5},
                       {la + lb, la + lb},
                       {{la, la}, {lb, lb}}};
  }
};

const std::vector<std::string> kStages = {"recall", "sum, mary"};

SearchResult RunExample() {
  Table table;
  SearchOptions options;
  options.stage_names = kStages;
  options.max_skip = 3;
  options.epsilon = 0.05;
  options.early_exit_grid = {
      {}, EarlyExitGrid({4}, {0.3f}, ConfidenceKind::kMaxProb, 2)};
  absl::StatusOr<SearchResult> result = RunBudgetSearch(options, table);
  LS_CHECK(result.ok()) << result.status();
  return *result;
}

SearchSpace Space() {
  SearchSpace space;
  space.model.architecture = "LlamaForCausalLM";
  space.model.num_hidden_layers = 2;
  space.model.hidden_size = 64;
  space.model.config_hash = 0x1234;
  space.model.tensor_hash = 0x5678;
  space.pipeline = "tinythinker";
  space.stage_names = kStages;
  space.num_layers = 2;
  space.ranking = {{SublayerKind::kMlp, 1},
                   {SublayerKind::kAttention, 1},
                   {SublayerKind::kMlp, 0},
                   {SublayerKind::kAttention, 0}};
  return space;
}

SearchRecordInfo Info() {
  SearchRecordInfo info;
  info.metric = "fidelity";
  info.epsilon = 0.05;
  info.max_skip = 3;
  info.calibration_question_ids = {"c1", "c2"};
  info.search_question_ids = {"s1", "s2"};
  info.dataset = "obqa/train.jsonl";
  return info;
}

TEST(SearchReportTest, CsvHasOneRowPerEvaluatedConfiguration) {
  const SearchResult result = RunExample();
  ASSERT_EQ(result.chosen.stages[0].skip, 1);
  ASSERT_EQ(result.chosen.stages[1].skip, 2);
  ASSERT_TRUE(result.chosen.stages[1].early_exit.enabled());
  const std::string csv = SearchTableCsv(kStages, result);
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), result.table.size() + 1);
  EXPECT_EQ(lines[0],
            "phase,stage,k,window,threshold,configuration,metric,"
            "metric_ci_low,metric_ci_high,target,mean_latency_s,"
            "recall_latency_s,"
            "\"sum, mary_latency_s\",meets_target,chosen,note");
  // full, recall k=0..3, summary k=0..3, early exit: none + one point.
  ASSERT_EQ(result.table.size(), 11u);
  EXPECT_THAT(lines[1],
              ::testing::StartsWith("full,,0,0,,k=0|k=0,1,1,1,0.95,0.7,"));
  EXPECT_THAT(lines[3], ::testing::StartsWith("skip,recall,1,0,,k=1|k=0,"));
  EXPECT_THAT(lines[3], ::testing::EndsWith(",1,1,"));  // meets, chosen.
  EXPECT_THAT(lines[4], ::testing::EndsWith(",0,0,"));
  EXPECT_THAT(lines[10],
              ::testing::StartsWith("early_exit,\"sum, mary\",2,0,,k=1|k=2,"));
  EXPECT_THAT(lines[10], ::testing::EndsWith(",1,0,no early exit"));
  EXPECT_THAT(lines[11],
              ::testing::StartsWith("early_exit,\"sum, mary\",2,4,0.3,"));
  EXPECT_THAT(lines[11], ::testing::EndsWith(",1,1,"));
  // recall k=2 fails: per-question metric 0 and 0.5, mean 0.25.
  EXPECT_THAT(lines[4], HasSubstr(",0.25,"));
}

TEST(SearchReportTest, ProvenanceRoundTripsThroughTheProfileParser) {
  const SearchResult result = RunExample();
  absl::StatusOr<Profile> profile =
      MakeSearchedProfile("tiny-obqa-fid5", Space(), result, Info());
  ASSERT_TRUE(profile.ok()) << profile.status();
  // Per stage the first k of the ranking.
  const StageProfile& recall = profile->stages.at("recall");
  EXPECT_TRUE(recall.skip.skips_mlp(1));
  EXPECT_EQ(recall.skip.num_skipped(), 1);
  const StageProfile& summary = profile->stages.at("sum, mary");
  EXPECT_EQ(summary.skip.num_skipped(), 2);
  EXPECT_TRUE(summary.skip.skips_attention(1));
  EXPECT_EQ(summary.early_exit,
            (EarlyExitConfig{4, 0.3f, ConfidenceKind::kMaxProb, 2}));
  EXPECT_EQ(profile->provenance.method, "litestage-search");
  EXPECT_FALSE(profile->provenance.accuracy.has_value());  // Fidelity.

  const json& search = profile->provenance.search;
  EXPECT_EQ(search["metric"], "fidelity");
  EXPECT_EQ(search["epsilon"], 0.05);
  EXPECT_EQ(search["calibration_questions"], json({"c1", "c2"}));
  EXPECT_EQ(search["search_questions"], json({"s1", "s2"}));
  EXPECT_EQ(search["order"], json({"recall", "sum, mary"}));
  EXPECT_EQ(search["chosen"]["sum, mary"]["k"], 2);
  EXPECT_EQ(search["chosen"]["sum, mary"]["early_exit"]["threshold"], 0.3);
  ASSERT_EQ(search["table"].size(), result.table.size());
  EXPECT_EQ(search["table"][0]["phase"], "full");
  EXPECT_EQ(search["table"][2]["chosen"], true);

  const std::string text = ProfileToJson(*profile);
  absl::StatusOr<Profile> parsed = ParseProfile(text, "searched.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, *profile);
  EXPECT_EQ(ProfileToJson(*parsed), text);
}

TEST(SearchReportTest, AccuracyMetricFillsTheTypedProvenanceFields) {
  const SearchResult result = RunExample();
  SearchRecordInfo info = Info();
  info.metric = "accuracy";
  absl::StatusOr<Profile> profile =
      MakeSearchedProfile("tiny-obqa-acc5", Space(), result, info);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(profile->provenance.accuracy,
            result.chosen_measurement.MeanMetric());
  EXPECT_EQ(profile->provenance.full_accuracy, 1.0);
  EXPECT_EQ(profile->provenance.latency_seconds,
            result.chosen_measurement.MeanLatency());
  EXPECT_DOUBLE_EQ(*profile->provenance.full_latency_seconds, 0.7);

  // A configuration that does not fit the space is an error, not a profile.
  SearchSpace small = Space();
  small.ranking.resize(1);
  EXPECT_EQ(MakeSearchedProfile("x", small, result, info).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace litestage
