#include "client/load_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace litestage {

double Percentile(const std::vector<double>& sorted_values, double p) {
  if (sorted_values.empty()) return 0.0;
  p = std::clamp(p, 0.0, 100.0);
  const double rank = p / 100.0 * static_cast<double>(sorted_values.size() - 1);
  const size_t lower = static_cast<size_t>(std::floor(rank));
  const size_t upper = std::min(lower + 1, sorted_values.size() - 1);
  const double fraction = rank - static_cast<double>(lower);
  return sorted_values[lower] +
         fraction * (sorted_values[upper] - sorted_values[lower]);
}

LatencySummary Summarize(std::vector<double> values) {
  LatencySummary summary;
  if (values.empty()) return summary;
  std::sort(values.begin(), values.end());
  summary.count = static_cast<int64_t>(values.size());
  summary.mean = std::accumulate(values.begin(), values.end(), 0.0) /
                 static_cast<double>(values.size());
  summary.min = values.front();
  summary.max = values.back();
  summary.p50 = Percentile(values, 50.0);
  summary.p90 = Percentile(values, 90.0);
  summary.p99 = Percentile(values, 99.0);
  return summary;
}

void LoadStats::Record(RequestOutcome outcome) {
  std::lock_guard<std::mutex> lock(mutex_);
  outcomes_.push_back(std::move(outcome));
}

LoadReport LoadStats::Report(double wall_seconds) const {
  std::lock_guard<std::mutex> lock(mutex_);
  LoadReport report;
  report.wall_seconds = wall_seconds;
  std::vector<double> latencies;
  std::vector<double> first_token;
  // Stage names in first-seen order, with their latencies.
  std::vector<std::pair<std::string, std::vector<double>>> stage_values;
  for (const RequestOutcome& outcome : outcomes_) {
    ++report.requests;
    ++report.codes[outcome.code];
    if (outcome.code != "OK") {
      ++report.failed;
      report.first_error_messages.emplace(outcome.code, outcome.message);
      continue;
    }
    ++report.ok;
    report.generated_tokens += outcome.generated_tokens;
    latencies.push_back(outcome.seconds);
    if (outcome.time_to_first_token_seconds >= 0.0) {
      first_token.push_back(outcome.time_to_first_token_seconds);
    }
    for (const auto& [name, seconds] : outcome.stage_seconds) {
      auto it = std::find_if(
          stage_values.begin(), stage_values.end(),
          [&name](const auto& entry) { return entry.first == name; });
      if (it == stage_values.end()) {
        stage_values.emplace_back(name, std::vector<double>());
        it = std::prev(stage_values.end());
      }
      it->second.push_back(seconds);
    }
  }
  report.latency = Summarize(std::move(latencies));
  report.time_to_first_token = Summarize(std::move(first_token));
  for (auto& [name, values] : stage_values) {
    report.stages.emplace_back(name, Summarize(std::move(values)));
  }
  if (wall_seconds > 0.0) {
    report.requests_per_second = static_cast<double>(report.ok) / wall_seconds;
    report.generated_tokens_per_second =
        static_cast<double>(report.generated_tokens) / wall_seconds;
  }
  return report;
}

}  // namespace litestage
