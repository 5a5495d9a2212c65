// The budget search (engine/stages/search.h) on fake measurement tables:
// the paper's non-monotonic example, ties, all-fail, stage order, early-exit
// calibration, option and measurement errors, statistics and progress.
#include "engine/stages/search.h"

#include <cmath>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "engine/stages/search_report.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// What the fake table says about one configuration.
struct Cell {
  double metric = 0;
  std::vector<double> stage_latency;  // Seconds per stage; end to end = sum.
};

// A measurer reading a table; every question gets the same values, so the
// mean metric is the table's and latencies are exact. Records every call.
class TableMeasurer : public ConfigurationMeasurer {
 public:
  explicit TableMeasurer(std::function<Cell(const Configuration&)> table,
                         int questions = 4)
      : table_(std::move(table)), questions_(questions) {}

  absl::StatusOr<Measurement> Measure(
      const Configuration& configuration) override {
    calls.push_back(configuration);
    const Cell cell = table_(configuration);
    Measurement m;
    double total = 0;
    for (double latency : cell.stage_latency) total += latency;
    m.metric.assign(questions_, cell.metric);
    m.latency_seconds.assign(questions_, total);
    for (double latency : cell.stage_latency) {
      m.stage_latency_seconds.push_back(
          std::vector<double>(questions_, latency));
    }
    return m;
  }

  std::vector<Configuration> calls;

 private:
  std::function<Cell(const Configuration&)> table_;
  int questions_;
};

// A one-stage table indexed by k (early exit ignored).
std::function<Cell(const Configuration&)> ByK(
    std::vector<std::pair<double, double>> metric_latency) {
  return [metric_latency](const Configuration& c) {
    const auto& [metric, latency] = metric_latency.at(c.stages[0].skip);
    return Cell{metric, {latency}};
  };
}

SearchOptions OneStage(int64_t max_skip, double epsilon) {
  SearchOptions options;
  options.stage_names = {"answer"};
  options.max_skip = max_skip;
  options.epsilon = epsilon;
  return options;
}

const SearchRow& ChosenSkipRow(const SearchResult& result, int stage) {
  for (const SearchRow& row : result.table) {
    if (row.phase == SearchPhase::kSkip && row.stage == stage && row.chosen) {
      return row;
    }
  }
  ADD_FAILURE() << "no chosen row for stage " << stage;
  return result.table.front();
}

// The paper's worked example (litestage-method.md, "Offline configuration"):
// the figure shows one stage searched over #skip 0..8 where latency does NOT
// fall monotonically with #skip, because the damaged model writes longer
// outputs (8 skips: 0.3202 s, slower than 0 skips: 0.3192 s), so the search
// must measure latency rather than count skipped layers. Here the metric
// crosses the target (0.60 - 0.025 = 0.575) between k = 4 and k = 5, and
// the table is built so that every shortcut picks wrong:
//   - "fastest overall" picks k = 5 (0.2990 s) which fails the target;
//   - "stop when latency rises" stops at k = 3 and keeps k = 2;
//   - "largest k meeting the target" picks k = 7 (meets again by noise, but
//     slower than k = 4);
//   - "more skips is faster" would never look past the crossing.
// The lowest latency among the k that meet the target is k = 4.
TEST(BudgetSearchTest, PaperExampleNonMonotonicLatencyPicksK4) {
  TableMeasurer measurer(ByK({{0.60, 0.3192},
                              {0.60, 0.3150},
                              {0.59, 0.3120},
                              {0.59, 0.3135},
                              {0.58, 0.3050},
                              {0.52, 0.2990},
                              {0.50, 0.3100},
                              {0.58, 0.3160},
                              {0.45, 0.3202}}));
  absl::StatusOr<SearchResult> result =
      RunBudgetSearch(OneStage(8, 0.025), measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_DOUBLE_EQ(result->full_metric, 0.60);
  EXPECT_DOUBLE_EQ(result->target, 0.575);
  ASSERT_EQ(result->chosen.stages.size(), 1u);
  EXPECT_EQ(result->chosen.stages[0].skip, 4);
  EXPECT_FALSE(result->skip_fallback[0]);
  // Every k was measured once (k = 0 is full, measured once): no early stop.
  EXPECT_EQ(measurer.calls.size(), 9u);
  EXPECT_EQ(result->measurements, 9);
  // full + k = 0..8, exactly one chosen skip row, and it is k = 4.
  ASSERT_EQ(result->table.size(), 10u);
  EXPECT_EQ(result->table[0].phase, SearchPhase::kFull);
  int chosen_rows = 0;
  for (size_t i = 1; i < result->table.size(); ++i) {
    const SearchRow& row = result->table[i];
    EXPECT_EQ(row.configuration.stages[0].skip, static_cast<int64_t>(i - 1));
    EXPECT_EQ(row.meets_target, i - 1 <= 4 || i - 1 == 7) << "k=" << i - 1;
    chosen_rows += row.chosen ? 1 : 0;
  }
  EXPECT_EQ(chosen_rows, 1);
  EXPECT_EQ(ChosenSkipRow(*result, 0).configuration.stages[0].skip, 4);
  EXPECT_DOUBLE_EQ(result->chosen_measurement.MeanLatency(), 0.3050);
}

TEST(BudgetSearchTest, EqualLatenciesPickTheSmallerK) {
  // k = 1 and k = 3 tie for the lowest latency, both meet the target.
  TableMeasurer measurer(
      ByK({{0.8, 0.31}, {0.8, 0.30}, {0.8, 0.305}, {0.8, 0.30}, {0.2, 0.10}}));
  absl::StatusOr<SearchResult> result =
      RunBudgetSearch(OneStage(4, 0.05), measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->chosen.stages[0].skip, 1);
}

TEST(BudgetSearchTest, AllFailKeepsKZeroAndSaysSo) {
  // Every k >= 1 misses the target, some are faster than k = 0.
  TableMeasurer measurer(
      ByK({{0.7, 0.5}, {0.5, 0.4}, {0.4, 0.45}, {0.1, 0.6}}));
  absl::StatusOr<SearchResult> result =
      RunBudgetSearch(OneStage(3, 0.1), measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->chosen.stages[0].skip, 0);
  EXPECT_TRUE(result->skip_fallback[0]);
  const SearchRow& chosen = ChosenSkipRow(*result, 0);
  EXPECT_EQ(chosen.configuration.stages[0].skip, 0);
  EXPECT_THAT(chosen.note, HasSubstr("fallback"));
  for (const SearchRow& row : result->table) {
    if (row.phase == SearchPhase::kSkip &&
        row.configuration.stages[0].skip > 0) {
      EXPECT_FALSE(row.meets_target);
      EXPECT_FALSE(row.chosen);
    }
  }
  EXPECT_DOUBLE_EQ(result->chosen_measurement.MeanLatency(), 0.5);
}

// Three stages; full's stage latencies: recall 0.2, analysis 0.5, summary
// 0.2, so the order is analysis (slowest), then recall and summary (equal:
// pipeline order). Each k saves 0.01 s in its stage. analysis tolerates
// k <= 3; recall tolerates analysis_k + recall_k <= 5, so with analysis at
// its chosen 3 it may take 2, but 4 (max_skip) if analysis were left at 0;
// summary tolerates k <= 1.
TEST(BudgetSearchTest, StagesSlowestFirstWithEarlierChoicesInPlace) {
  TableMeasurer measurer([](const Configuration& c) {
    const int64_t recall = c.stages[0].skip;
    const int64_t analysis = c.stages[1].skip;
    const int64_t summary = c.stages[2].skip;
    const bool ok = analysis <= 3 && analysis + recall <= 5 && summary <= 1;
    return Cell{
        ok ? 0.9 : 0.3,
        {0.2 - 0.01 * recall, 0.5 - 0.01 * analysis, 0.2 - 0.01 * summary}};
  });
  SearchOptions options;
  options.stage_names = {"recall", "analysis", "summary"};
  options.max_skip = 4;
  options.epsilon = 0.01;
  absl::StatusOr<SearchResult> result = RunBudgetSearch(options, measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->order, ElementsAre(1, 0, 2));
  EXPECT_EQ(result->chosen.stages[1].skip, 3);
  EXPECT_EQ(result->chosen.stages[0].skip, 2);
  EXPECT_EQ(result->chosen.stages[2].skip, 1);

  // Which stage each skip row searched, in table order, and what the other
  // stages were set to while it was searched.
  std::vector<int> searched;
  for (const SearchRow& row : result->table) {
    if (row.phase != SearchPhase::kSkip) continue;
    if (searched.empty() || searched.back() != row.stage) {
      searched.push_back(row.stage);
    }
    const auto& s = row.configuration.stages;
    if (row.stage == 1) {
      EXPECT_EQ(s[0].skip, 0);
      EXPECT_EQ(s[2].skip, 0);
    } else if (row.stage == 0) {
      EXPECT_EQ(s[1].skip, 3) << "recall searched without analysis's k";
      EXPECT_EQ(s[2].skip, 0) << "summary is not visited yet";
    } else {
      EXPECT_EQ(s[1].skip, 3);
      EXPECT_EQ(s[0].skip, 2);
    }
  }
  EXPECT_THAT(searched, ElementsAre(1, 0, 2));
  // 1 (full) + 3 stages x 5 k, minus each later stage's k = 0 (memoized).
  EXPECT_EQ(result->table.size(), 16u);
  EXPECT_EQ(measurer.calls.size(), 13u);
}

TEST(BudgetSearchTest, EqualStageSharesKeepPipelineOrder) {
  TableMeasurer measurer([](const Configuration&) {
    return Cell{0.5, {0.1, 0.3, 0.3, 0.1}};
  });
  SearchOptions options;
  options.stage_names = {"a", "b", "c", "d"};
  options.max_skip = 1;
  absl::StatusOr<SearchResult> result = RunBudgetSearch(options, measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->order, ElementsAre(1, 2, 0, 3));
}

// One stage fixed at k = 1 (k = 1 is fastest and meets), then early exit:
// windows {4, 8} x thresholds {0.2, 0.3}.
std::function<Cell(const Configuration&)> EarlyExitTable(
    std::map<std::pair<int64_t, float>, Cell> exits) {
  return [exits](const Configuration& c) {
    const StageSetting& s = c.stages[0];
    if (!s.early_exit.enabled()) {
      return s.skip == 0 ? Cell{0.9, {1.2}} : Cell{0.9, {1.0}};
    }
    EXPECT_EQ(s.skip, 1) << "early exit calibrated without the chosen k";
    return exits.at({s.early_exit.window, s.early_exit.threshold});
  };
}

TEST(BudgetSearchTest, EarlyExitPicksTheFastestGridPointMeetingTheTarget) {
  TableMeasurer measurer(EarlyExitTable({{{4, 0.2f}, {0.88, {0.8}}},
                                         {{4, 0.3f}, {0.50, {0.6}}},
                                         {{8, 0.2f}, {0.89, {0.85}}},
                                         {{8, 0.3f}, {0.86, {0.7}}}}));
  SearchOptions options = OneStage(1, 0.05);
  options.early_exit_grid = {EarlyExitGrid({4, 8}, {0.2f, 0.3f})};
  absl::StatusOr<SearchResult> result = RunBudgetSearch(options, measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->chosen.stages[0].skip, 1);
  EXPECT_EQ(result->chosen.stages[0].early_exit,
            (EarlyExitConfig{8, 0.3f, ConfidenceKind::kMaxProb, 0}));
  EXPECT_DOUBLE_EQ(result->chosen_measurement.MeanLatency(), 0.7);
  int early_exit_rows = 0;
  for (const SearchRow& row : result->table) {
    if (row.phase != SearchPhase::kEarlyExit) continue;
    ++early_exit_rows;
    EXPECT_EQ(row.chosen,
              row.configuration.stages[0].early_exit.window == 8 &&
                  row.configuration.stages[0].early_exit.threshold == 0.3f);
  }
  EXPECT_EQ(early_exit_rows, 5);  // "no early exit" + 4 grid points.
}

TEST(BudgetSearchTest, EarlyExitNoneWhenEveryGridPointFailsOrIsSlower) {
  // (4, 0.2) meets the target but is slower than no early exit.
  TableMeasurer measurer(EarlyExitTable({{{4, 0.2f}, {0.88, {1.1}}},
                                         {{4, 0.3f}, {0.50, {0.6}}},
                                         {{8, 0.2f}, {0.70, {0.85}}},
                                         {{8, 0.3f}, {0.60, {0.7}}}}));
  SearchOptions options = OneStage(1, 0.05);
  options.early_exit_grid = {EarlyExitGrid({4, 8}, {0.2f, 0.3f})};
  absl::StatusOr<SearchResult> result = RunBudgetSearch(options, measurer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->chosen.stages[0].early_exit.enabled());
  for (const SearchRow& row : result->table) {
    if (row.phase == SearchPhase::kEarlyExit && row.chosen) {
      EXPECT_FALSE(row.configuration.stages[0].early_exit.enabled());
      EXPECT_EQ(row.note, "no early exit");
    }
  }
  EXPECT_DOUBLE_EQ(result->chosen_measurement.MeanLatency(), 1.0);
}

TEST(BudgetSearchTest, RejectsBadOptions) {
  TableMeasurer measurer(ByK({{0.5, 1.0}, {0.5, 1.0}}));
  SearchOptions options = OneStage(1, -0.01);
  EXPECT_EQ(RunBudgetSearch(options, measurer).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = OneStage(-1, 0.01);
  EXPECT_EQ(RunBudgetSearch(options, measurer).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = OneStage(1, 0.01);
  options.early_exit_grid = {{}, {}};  // Two grids for one stage.
  EXPECT_EQ(RunBudgetSearch(options, measurer).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.early_exit_grid = {{EarlyExitConfig{}}};  // Window 0.
  EXPECT_EQ(RunBudgetSearch(options, measurer).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.stage_names.clear();
  options.early_exit_grid.clear();
  EXPECT_EQ(RunBudgetSearch(options, measurer).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(measurer.calls.empty());
}

class FailingMeasurer : public ConfigurationMeasurer {
 public:
  explicit FailingMeasurer(Measurement m) : m_(std::move(m)) {}
  absl::StatusOr<Measurement> Measure(const Configuration&) override {
    if (fail) return absl::UnavailableError("engine gone");
    return m_;
  }
  bool fail = false;

 private:
  Measurement m_;
};

TEST(BudgetSearchTest, MeasurerErrorsAndBadMeasurements) {
  Measurement good{{0.5}, {1.0}, {{1.0}}};
  FailingMeasurer failing(good);
  failing.fail = true;
  EXPECT_EQ(RunBudgetSearch(OneStage(1, 0), failing).status().code(),
            absl::StatusCode::kUnavailable);

  for (const Measurement& bad :
       {Measurement{{}, {}, {{}}}, Measurement{{1.5}, {1.0}, {{1.0}}},
        Measurement{{0.5}, {-1.0}, {{1.0}}}, Measurement{{0.5}, {1.0}, {}},
        Measurement{{0.5}, {1.0, 2.0}, {{1.0}}}}) {
    FailingMeasurer measurer(bad);
    absl::StatusOr<SearchResult> result =
        RunBudgetSearch(OneStage(1, 0), measurer);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << result.status();
  }
}

TEST(SearchStatsTest, IntervalsAndPairedDifference) {
  const MeanInterval interval = MeanInterval95({0, 1, 0, 1});
  EXPECT_DOUBLE_EQ(interval.mean, 0.5);
  // s = sqrt(1/3), se = s / 2, half width 1.96 * se.
  EXPECT_NEAR(interval.high - interval.mean, 1.96 * std::sqrt(1.0 / 3) / 2,
              1e-12);
  EXPECT_DOUBLE_EQ(MeanInterval95({0.7}).low, 0.7);

  Measurement a{{1, 1, 0, 1}, {1, 1, 1, 1}, {{1, 1, 1, 1}}};
  Measurement b{{1, 0, 0, 1}, {1, 1, 1, 1}, {{1, 1, 1, 1}}};
  absl::StatusOr<MeanInterval> difference = PairedMetricDifference(a, b);
  ASSERT_TRUE(difference.ok());
  EXPECT_DOUBLE_EQ(difference->mean, 0.25);
  EXPECT_LT(difference->low, 0.25);
  b.metric.pop_back();
  EXPECT_FALSE(PairedMetricDifference(a, b).ok());
}

TEST(SearchStatsTest, GridAndQuantiles) {
  std::vector<EarlyExitConfig> grid = EarlyExitGrid({4, 8}, {0.2f, 0.3f});
  ASSERT_EQ(grid.size(), 4u);
  EXPECT_EQ(grid[1].window, 4);
  EXPECT_FLOAT_EQ(grid[1].threshold, 0.3f);
  EXPECT_EQ(grid[2].window, 8);

  absl::StatusOr<std::vector<float>> q =
      ConfidenceQuantiles({5, 1, 4, 2, 3}, {0, 0.25, 0.5, 0.625, 1});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(*q, ElementsAre(1.0f, 2.0f, 3.0f, 3.5f, 5.0f));
  EXPECT_FALSE(ConfidenceQuantiles({}, {0.5}).ok());
  EXPECT_FALSE(ConfidenceQuantiles({1}, {1.5}).ok());
}

TEST(SearchProgressTest, QuietWithoutTerminalButOneLinePerStage) {
  std::ostringstream out;
  ProgressReporter progress(&out, /*interactive=*/false);
  TableMeasurer measurer([](const Configuration&) {
    return Cell{0.5, {0.1, 0.3}};
  });
  SearchOptions options;
  options.stage_names = {"recall", "summary"};
  options.max_skip = 2;
  options.progress = &progress;
  ASSERT_TRUE(RunBudgetSearch(options, measurer).ok());
  std::vector<std::string> lines =
      absl::StrSplit(out.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << out.str();
  EXPECT_THAT(lines[0], HasSubstr("summary: k=0"));  // Slowest first.
  EXPECT_THAT(lines[1], HasSubstr("recall: k=0"));
  EXPECT_EQ(out.str().find('\r'), std::string::npos);
}

TEST(SearchProgressTest, TerminalBarHasCountElapsedAndEta) {
  std::ostringstream out;
  double now = 100;
  ProgressReporter progress(&out, /*interactive=*/true, [&] { return now; });
  progress.Start(4);
  now += 10;
  progress.Step("recall k=0");
  EXPECT_THAT(out.str(), HasSubstr("1/4 recall k=0"));
  EXPECT_THAT(out.str(), HasSubstr("elapsed 10s"));
  EXPECT_THAT(out.str(), HasSubstr("ETA 30s"));
  now += 50;
  progress.Step("recall k=1");
  EXPECT_THAT(out.str(), HasSubstr("2/4 recall k=1  elapsed 1m00s  ETA 1m00s"));
  now += 30;
  progress.Question(16, 64);  // A quarter into step 3: 2.25 of 4 done.
  EXPECT_THAT(out.str(), HasSubstr("2/4 question 16/64  elapsed 1m30s  "
                                   "ETA 1m10s"));
  progress.StageDone("recall: k=1");
  EXPECT_THAT(out.str(), HasSubstr("\r\x1b[Krecall: k=1\n"));
  progress.Finish();
  EXPECT_EQ(FormatDuration(3725), "1h02m");
}

}  // namespace
}  // namespace litestage
