// The budget search and early-exit calibration (docs/search.md), and the
// statistics the search and its report need.
#include "engine/stages/search.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

double Mean(const std::vector<double>& values) {
  LS_CHECK(!values.empty());
  return std::accumulate(values.begin(), values.end(), 0.0) /
         static_cast<double>(values.size());
}

// Runs the measurer once per distinct configuration: the k = 0 candidate of
// a stage is the configuration already chosen before it, and the early-exit
// baseline is the final budgets, so neither costs a second measurement.
class MemoizedMeasurer {
 public:
  MemoizedMeasurer(ConfigurationMeasurer& measurer, size_t num_stages)
      : measurer_(measurer), num_stages_(num_stages) {}

  absl::StatusOr<Measurement> Measure(const Configuration& configuration) {
    const std::string key = ConfigurationName(configuration);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    LS_ASSIGN_OR_RETURN(Measurement measurement,
                        measurer_.Measure(configuration));
    absl::Status valid = ValidateMeasurement(measurement, num_stages_);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("measurement of ", key, ": ", valid.message()));
    }
    ++measured_;
    return memo_.emplace(key, std::move(measurement)).first->second;
  }

  int64_t measured() const { return measured_; }

 private:
  ConfigurationMeasurer& measurer_;
  size_t num_stages_;
  std::map<std::string, Measurement> memo_;
  int64_t measured_ = 0;
};

absl::Status ValidateOptions(const SearchOptions& options) {
  if (options.stage_names.empty()) {
    return absl::InvalidArgumentError("search: no stages");
  }
  if (options.max_skip < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("search: max_skip must be >= 0, got ", options.max_skip));
  }
  if (!(options.epsilon >= 0 && std::isfinite(options.epsilon))) {
    // A negative epsilon would let full itself miss the target.
    return absl::InvalidArgumentError(absl::StrCat(
        "search: epsilon must be a finite number >= 0, got ", options.epsilon));
  }
  if (!options.early_exit_grid.empty() &&
      options.early_exit_grid.size() != options.stage_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "search: early_exit_grid has ", options.early_exit_grid.size(),
        " entries for ", options.stage_names.size(), " stages"));
  }
  for (const auto& grid : options.early_exit_grid) {
    for (const EarlyExitConfig& config : grid) {
      if (!config.enabled()) {
        return absl::InvalidArgumentError(
            "search: an early-exit grid point has window 0 (no early exit is "
            "always a candidate; do not list it)");
      }
      absl::Status valid = ValidateEarlyExitConfig(config);
      if (!valid.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("search: early-exit grid: ", valid.message()));
      }
    }
  }
  return absl::OkStatus();
}

std::string StageLine(const std::string& stage, const StageSetting& setting,
                      const Measurement& measurement, absl::string_view note) {
  std::string line =
      absl::StrFormat("%s: k=%d", stage, static_cast<int>(setting.skip));
  if (setting.early_exit.enabled()) {
    absl::StrAppendFormat(&line, " early exit %d@%g",
                          static_cast<int>(setting.early_exit.window),
                          setting.early_exit.threshold);
  }
  absl::StrAppendFormat(&line, " (metric %.4f, latency %.4f s)",
                        measurement.MeanMetric(), measurement.MeanLatency());
  if (!note.empty()) absl::StrAppend(&line, "; ", note);
  return line;
}

}  // namespace

std::string ConfigurationName(const Configuration& configuration) {
  std::vector<std::string> parts;
  for (const StageSetting& stage : configuration.stages) {
    std::string part = absl::StrCat("k=", stage.skip);
    if (stage.early_exit.enabled()) {
      // %.9g round-trips a float, so distinct thresholds never share a name.
      absl::StrAppendFormat(
          &part, " ee=%d@%.9g/%s/%d", static_cast<int>(stage.early_exit.window),
          stage.early_exit.threshold, ConfidenceKindName(stage.early_exit.kind),
          static_cast<int>(stage.early_exit.min_tokens));
    }
    parts.push_back(std::move(part));
  }
  return absl::StrJoin(parts, "|");
}

absl::StatusOr<std::vector<StageProfile>> ResolveConfiguration(
    const SearchSpace& space, const Configuration& configuration) {
  if (configuration.stages.size() != space.stage_names.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("configuration has ", configuration.stages.size(),
                     " stages, the pipeline ", space.stage_names.size()));
  }
  std::vector<StageProfile> stages;
  for (size_t s = 0; s < configuration.stages.size(); ++s) {
    const StageSetting& setting = configuration.stages[s];
    if (setting.skip < 0 ||
        setting.skip > static_cast<int64_t>(space.ranking.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stage ", space.stage_names[s], ": skip count ", setting.skip,
          " outside [0, ", space.ranking.size(), "] (the ranking's size)"));
    }
    for (const SublayerRef& ref : space.ranking) {
      if (ref.layer < 0 || ref.layer >= space.num_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("ranking names ", SublayerRefName(ref),
                         " but the "
                         "model has ",
                         space.num_layers, " layers"));
      }
    }
    absl::Status valid = ValidateEarlyExitConfig(setting.early_exit);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage ", space.stage_names[s], ": ", valid.message()));
    }
    StageProfile stage;
    stage.skip =
        SkipSetFromRanking(space.ranking, setting.skip, space.num_layers);
    stage.early_exit = setting.early_exit;
    stages.push_back(std::move(stage));
  }
  return stages;
}

MeanInterval MeanInterval95(const std::vector<double>& values) {
  MeanInterval interval;
  if (values.empty()) return interval;
  interval.mean = Mean(values);
  double half_width = 0;
  if (values.size() >= 2) {
    double sum_squares = 0;
    for (double value : values) {
      sum_squares += (value - interval.mean) * (value - interval.mean);
    }
    const double n = static_cast<double>(values.size());
    half_width = 1.96 * std::sqrt(sum_squares / (n - 1) / n);
  }
  interval.low = interval.mean - half_width;
  interval.high = interval.mean + half_width;
  return interval;
}

double Measurement::MeanMetric() const { return Mean(metric); }
double Measurement::MeanLatency() const { return Mean(latency_seconds); }
double Measurement::MeanStageLatency(size_t stage) const {
  LS_CHECK_LT(stage, stage_latency_seconds.size());
  return Mean(stage_latency_seconds[stage]);
}

absl::Status ValidateMeasurement(const Measurement& measurement,
                                 size_t num_stages) {
  const size_t n = measurement.metric.size();
  if (n == 0) return absl::InvalidArgumentError("no questions measured");
  if (measurement.latency_seconds.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " metric values but ",
                     measurement.latency_seconds.size(), " latencies"));
  }
  if (measurement.stage_latency_seconds.size() != num_stages) {
    return absl::InvalidArgumentError(
        absl::StrCat(measurement.stage_latency_seconds.size(),
                     " stage latency rows for ", num_stages, " stages"));
  }
  for (size_t q = 0; q < n; ++q) {
    const double metric = measurement.metric[q];
    if (!(metric >= 0 && metric <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "question ", q, ": metric must be in [0, 1], got ", metric));
    }
    const double latency = measurement.latency_seconds[q];
    if (!(latency >= 0 && std::isfinite(latency))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "question ", q, ": latency must be finite and >= 0, got ", latency));
    }
  }
  for (size_t s = 0; s < num_stages; ++s) {
    const std::vector<double>& row = measurement.stage_latency_seconds[s];
    if (row.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stage ", s, ": ", row.size(), " latencies for ", n, " questions"));
    }
    for (double latency : row) {
      if (!(latency >= 0 && std::isfinite(latency))) {
        return absl::InvalidArgumentError(
            absl::StrCat("stage ", s,
                         ": latency must be finite and >= 0, "
                         "got ",
                         latency));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<MeanInterval> PairedMetricDifference(const Measurement& a,
                                                    const Measurement& b) {
  if (a.metric.size() != b.metric.size() || a.metric.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "paired comparison needs the same questions: ", a.metric.size(), " vs ",
        b.metric.size(), " values"));
  }
  std::vector<double> differences(a.metric.size());
  for (size_t q = 0; q < a.metric.size(); ++q) {
    differences[q] = a.metric[q] - b.metric[q];
  }
  return MeanInterval95(differences);
}

const char* SearchPhaseName(SearchPhase phase) {
  switch (phase) {
    case SearchPhase::kFull:
      return "full";
    case SearchPhase::kSkip:
      return "skip";
    case SearchPhase::kEarlyExit:
      return "early_exit";
  }
  return "?";
}

absl::StatusOr<SearchResult> RunBudgetSearch(const SearchOptions& options,
                                             ConfigurationMeasurer& measurer) {
  LS_RETURN_IF_ERROR(ValidateOptions(options));
  const size_t num_stages = options.stage_names.size();
  MemoizedMeasurer memo(measurer, num_stages);
  SearchProgress* progress = options.progress;
  if (progress != nullptr) {
    int64_t total =
        1 + static_cast<int64_t>(num_stages) * (options.max_skip + 1);
    for (const auto& grid : options.early_exit_grid) {
      if (!grid.empty()) total += static_cast<int64_t>(grid.size()) + 1;
    }
    progress->Start(total);
  }

  SearchResult result;
  result.chosen.stages.assign(num_stages, StageSetting{});
  result.skip_fallback.assign(num_stages, false);

  // Step 1: full gives the target and the stage order.
  LS_ASSIGN_OR_RETURN(result.full_measurement, memo.Measure(result.chosen));
  result.full_metric = result.full_measurement.MeanMetric();
  result.target = result.full_metric - options.epsilon;
  result.table.push_back(SearchRow{SearchPhase::kFull, -1, result.chosen,
                                   result.full_measurement,
                                   /*meets_target=*/true, /*chosen=*/true,
                                   "baseline: target = metric - epsilon"});
  if (progress != nullptr) progress->Step("full");

  std::vector<double> full_stage_latency(num_stages);
  for (size_t s = 0; s < num_stages; ++s) {
    full_stage_latency[s] = result.full_measurement.MeanStageLatency(s);
    result.order.push_back(static_cast<int>(s));
  }
  // Stable: equal shares keep pipeline order.
  std::stable_sort(result.order.begin(), result.order.end(), [&](int a, int b) {
    return full_stage_latency[a] > full_stage_latency[b];
  });

  const auto meets = [&](const Measurement& m) {
    return m.MeanMetric() >= result.target;
  };

  // Step 2: skip budgets, slowest stage first.
  for (int stage : result.order) {
    const std::string& name = options.stage_names[stage];
    size_t best_row = 0;
    bool have_best = false;
    double best_latency = 0;
    size_t k0_row = 0;
    for (int64_t k = 0; k <= options.max_skip; ++k) {
      Configuration candidate = result.chosen;
      candidate.stages[stage].skip = k;
      LS_ASSIGN_OR_RETURN(Measurement measurement, memo.Measure(candidate));
      const bool ok = meets(measurement);
      const double latency = measurement.MeanLatency();
      result.table.push_back(SearchRow{SearchPhase::kSkip, stage, candidate,
                                       std::move(measurement), ok, false, ""});
      if (k == 0) k0_row = result.table.size() - 1;
      // Strictly lower wins, so among equal latencies the smaller k stays.
      if (ok && (!have_best || latency < best_latency)) {
        have_best = true;
        best_latency = latency;
        best_row = result.table.size() - 1;
      }
      if (progress != nullptr) progress->Step(absl::StrCat(name, " k=", k));
    }
    bool any_skip_met = false;
    for (size_t row = k0_row + 1; row < result.table.size(); ++row) {
      any_skip_met = any_skip_met || result.table[row].meets_target;
    }
    std::string note;
    if (!any_skip_met) {
      // Also covers k = 0 itself missing the target (a noisy measurer): 0 is
      // the safe value, nothing is skipped beyond what earlier stages chose.
      result.skip_fallback[stage] = true;
      best_row = k0_row;
      note = absl::StrCat("fallback: no k in 1..", options.max_skip,
                          " met the target; k=0 kept");
    }
    SearchRow& chosen = result.table[best_row];
    chosen.chosen = true;
    chosen.note = note;
    result.chosen.stages[stage].skip = chosen.configuration.stages[stage].skip;
    if (progress != nullptr) {
      progress->StageDone(StageLine(name, result.chosen.stages[stage],
                                    chosen.measurement, note));
    }
  }

  // Step 3: early exit per stage, budgets fixed, same order.
  for (int stage : result.order) {
    if (options.early_exit_grid.empty() ||
        options.early_exit_grid[stage].empty()) {
      continue;
    }
    const std::string& name = options.stage_names[stage];
    // No early exit is the baseline candidate: an exit is only worth
    // keeping when it is faster.
    Configuration baseline = result.chosen;
    baseline.stages[stage].early_exit = EarlyExitConfig{};
    LS_ASSIGN_OR_RETURN(Measurement base, memo.Measure(baseline));
    const double base_latency = base.MeanLatency();
    result.table.push_back(SearchRow{SearchPhase::kEarlyExit, stage, baseline,
                                     std::move(base), false, false,
                                     "no early exit"});
    size_t best_row = result.table.size() - 1;
    result.table[best_row].meets_target =
        meets(result.table[best_row].measurement);
    double best_latency = base_latency;
    if (progress != nullptr) progress->Step(absl::StrCat(name, " no exit"));
    for (const EarlyExitConfig& config : options.early_exit_grid[stage]) {
      Configuration candidate = result.chosen;
      candidate.stages[stage].early_exit = config;
      LS_ASSIGN_OR_RETURN(Measurement measurement, memo.Measure(candidate));
      const bool ok = meets(measurement);
      const double latency = measurement.MeanLatency();
      result.table.push_back(SearchRow{SearchPhase::kEarlyExit, stage,
                                       candidate, std::move(measurement), ok,
                                       false, ""});
      if (ok && latency < best_latency) {
        best_latency = latency;
        best_row = result.table.size() - 1;
      }
      if (progress != nullptr) {
        progress->Step(absl::StrFormat("%s exit %d@%g", name,
                                       static_cast<int>(config.window),
                                       config.threshold));
      }
    }
    SearchRow& chosen = result.table[best_row];
    chosen.chosen = true;
    result.chosen.stages[stage].early_exit =
        chosen.configuration.stages[stage].early_exit;
    if (progress != nullptr) {
      progress->StageDone(StageLine(name, result.chosen.stages[stage],
                                    chosen.measurement, chosen.note));
    }
  }

  LS_ASSIGN_OR_RETURN(result.chosen_measurement, memo.Measure(result.chosen));
  result.measurements = memo.measured();
  if (progress != nullptr) progress->Finish();
  return result;
}

std::vector<EarlyExitConfig> EarlyExitGrid(const std::vector<int64_t>& windows,
                                           const std::vector<float>& thresholds,
                                           ConfidenceKind kind,
                                           int64_t min_tokens) {
  std::vector<EarlyExitConfig> grid;
  for (int64_t window : windows) {
    for (float threshold : thresholds) {
      grid.push_back(EarlyExitConfig{window, threshold, kind, min_tokens});
    }
  }
  return grid;
}

absl::StatusOr<std::vector<float>> ConfidenceQuantiles(
    std::vector<float> confidences, const std::vector<double>& quantiles) {
  if (confidences.empty()) {
    return absl::InvalidArgumentError("confidence quantiles: no values");
  }
  std::sort(confidences.begin(), confidences.end());
  std::vector<float> result;
  for (double q : quantiles) {
    if (!(q >= 0 && q <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("confidence quantile must be in [0, 1], got ", q));
    }
    const double position = q * static_cast<double>(confidences.size() - 1);
    const size_t lower = static_cast<size_t>(std::floor(position));
    const size_t upper = std::min(lower + 1, confidences.size() - 1);
    const double fraction = position - static_cast<double>(lower);
    result.push_back(static_cast<float>(
        confidences[lower] +
        fraction * (confidences[upper] - confidences[lower])));
  }
  return result;
}

}  // namespace litestage
