#include "client/load_stats.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(PercentileTest, InterpolatesBetweenClosestRanks) {
  const std::vector<double> values = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_DOUBLE_EQ(Percentile(values, 0), 1.0);
  EXPECT_DOUBLE_EQ(Percentile(values, 100), 10.0);
  // rank 4.5: between 5 and 6.
  EXPECT_DOUBLE_EQ(Percentile(values, 50), 5.5);
  // rank 8.1: 9 + 0.1 * (10 - 9).
  EXPECT_NEAR(Percentile(values, 90), 9.1, 1e-12);
  // rank 8.91.
  EXPECT_NEAR(Percentile(values, 99), 9.91, 1e-12);
  // rank 2.25: 3 + 0.25.
  EXPECT_NEAR(Percentile(values, 25), 3.25, 1e-12);
}

TEST(PercentileTest, OddCountMedianIsTheMiddleValue) {
  EXPECT_DOUBLE_EQ(Percentile({10, 20, 40}, 50), 20.0);
  // rank 1.8: 20 + 0.8 * 20.
  EXPECT_NEAR(Percentile({10, 20, 40}, 90), 36.0, 1e-12);
}

TEST(PercentileTest, EdgeCases) {
  EXPECT_EQ(Percentile({}, 50), 0.0);
  EXPECT_EQ(Percentile({7}, 0), 7.0);
  EXPECT_EQ(Percentile({7}, 99), 7.0);
  EXPECT_EQ(Percentile({1, 2}, -5), 1.0);   // Clamped to 0.
  EXPECT_EQ(Percentile({1, 2}, 250), 2.0);  // Clamped to 100.
}

TEST(SummarizeTest, SortsAndSummarizes) {
  // 100 values 1..100 shuffled: p99 at rank 98.01 is 99.01.
  std::vector<double> values;
  for (int i = 100; i >= 1; --i) values.push_back(i);
  const LatencySummary summary = Summarize(values);
  EXPECT_EQ(summary.count, 100);
  EXPECT_DOUBLE_EQ(summary.min, 1.0);
  EXPECT_DOUBLE_EQ(summary.max, 100.0);
  EXPECT_DOUBLE_EQ(summary.mean, 50.5);
  EXPECT_DOUBLE_EQ(summary.p50, 50.5);
  EXPECT_NEAR(summary.p90, 90.1, 1e-9);
  EXPECT_NEAR(summary.p99, 99.01, 1e-9);
}

TEST(SummarizeTest, EmptyIsAllZero) {
  const LatencySummary summary = Summarize({});
  EXPECT_EQ(summary.count, 0);
  EXPECT_EQ(summary.mean, 0.0);
  EXPECT_EQ(summary.p99, 0.0);
}

RequestOutcome Ok(double seconds, int64_t tokens, double first_stage,
                  double second_stage) {
  RequestOutcome outcome;
  outcome.seconds = seconds;
  outcome.generated_tokens = tokens;
  outcome.time_to_first_token_seconds = seconds / 10;
  outcome.stage_seconds = {{"recall", first_stage}, {"answer", second_stage}};
  return outcome;
}

RequestOutcome Failed(const std::string& code, const std::string& message) {
  RequestOutcome outcome;
  outcome.code = code;
  outcome.message = message;
  outcome.seconds = 0.001;
  return outcome;
}

TEST(LoadStatsTest, ReportsCodesThroughputAndStages) {
  LoadStats stats;
  stats.Record(Ok(1.0, 10, 0.4, 0.6));
  stats.Record(Ok(3.0, 30, 1.0, 2.0));
  stats.Record(Failed("UNAVAILABLE", "queue full"));
  stats.Record(Failed("UNAVAILABLE", "draining"));
  stats.Record(Failed("DEADLINE_EXCEEDED", "late"));
  const LoadReport report = stats.Report(/*wall_seconds=*/4.0);

  EXPECT_EQ(report.requests, 5);
  EXPECT_EQ(report.ok, 2);
  EXPECT_EQ(report.failed, 3);
  EXPECT_THAT(report.codes, ElementsAre(Pair("DEADLINE_EXCEEDED", 1),
                                        Pair("OK", 2), Pair("UNAVAILABLE", 2)));
  EXPECT_EQ(report.first_error_messages.at("UNAVAILABLE"), "queue full");
  EXPECT_EQ(report.generated_tokens, 40);
  EXPECT_DOUBLE_EQ(report.requests_per_second, 0.5);
  EXPECT_DOUBLE_EQ(report.generated_tokens_per_second, 10.0);
  // Latency of OK requests only: failures would drag it toward 0.
  EXPECT_EQ(report.latency.count, 2);
  EXPECT_DOUBLE_EQ(report.latency.p50, 2.0);
  EXPECT_DOUBLE_EQ(report.latency.max, 3.0);
  EXPECT_DOUBLE_EQ(report.time_to_first_token.p50, 0.2);
  ASSERT_EQ(report.stages.size(), 2u);
  EXPECT_EQ(report.stages[0].first, "recall");
  EXPECT_EQ(report.stages[1].first, "answer");
  EXPECT_DOUBLE_EQ(report.stages[0].second.p50, 0.7);
  EXPECT_DOUBLE_EQ(report.stages[1].second.max, 2.0);
}

TEST(LoadStatsTest, ZeroWallTimeGivesZeroRates) {
  LoadStats stats;
  stats.Record(Ok(1.0, 10, 0.5, 0.5));
  const LoadReport report = stats.Report(0.0);
  EXPECT_EQ(report.requests_per_second, 0.0);
  EXPECT_EQ(report.generated_tokens_per_second, 0.0);
}

TEST(LoadStatsTest, RecordsFromManyThreads) {
  LoadStats stats;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&stats] {
      for (int i = 0; i < 100; ++i) stats.Record(Ok(1.0, 1, 0.5, 0.5));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const LoadReport report = stats.Report(1.0);
  EXPECT_EQ(report.ok, 800);
  EXPECT_EQ(report.generated_tokens, 800);
  EXPECT_EQ(report.stages[0].second.count, 800);
}

}  // namespace
}  // namespace litestage
