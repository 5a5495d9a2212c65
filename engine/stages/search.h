// LiteStage's offline budget search (litestage-method.md, "Offline
// configuration", step 2; docs/search.md): the configuration and
// measurement types, the interface through which the search measures a
// configuration, and the search itself (per-stage skip budgets, slowest
// stage first, then per-stage early-exit calibration).
//
// The search is pure: it only sees measurements through
// ConfigurationMeasurer, so tests drive it with fake tables and
// litestage-search with the real engine (through the per-question cache of
// search_cache.h). It knows nothing about models, questions or the
// evaluation library.
#ifndef LITESTAGE_ENGINE_STAGES_SEARCH_H_
#define LITESTAGE_ENGINE_STAGES_SEARCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/fingerprint.h"
#include "engine/runtime/early_exit.h"
#include "engine/stages/profile.h"

namespace litestage {

// What the search reports as it goes (ProgressReporter in search_report.h
// draws it on stderr). Calls come from the searching thread only.
class SearchProgress {
 public:
  virtual ~SearchProgress() = default;
  // Before the first measurement: at most `total` steps follow.
  virtual void Start(int64_t total) = 0;
  // One candidate evaluated (measured, or found in the search's memo).
  virtual void Step(const std::string& label) = 0;
  // Within a measurement: `done` of `total` questions measured
  // (QuestionSetMeasurer reports them; one configuration can take minutes).
  virtual void Question(int64_t done, int64_t total) {}
  // A stage's decision, one line ("analysis: k=4 (latency 0.3050 s)").
  virtual void StageDone(const std::string& line) = 0;
  virtual void Finish() = 0;
};

// One stage's setting: skip the first `skip` sub-layers of the importance
// ranking (SkipSetFromRanking), and this early exit (disabled by default).
struct StageSetting {
  int64_t skip = 0;
  EarlyExitConfig early_exit;
  bool operator==(const StageSetting& other) const = default;
};

// A setting per pipeline stage, in pipeline order.
struct Configuration {
  std::vector<StageSetting> stages;
  bool operator==(const Configuration& other) const = default;
};

// "k=4 ee=8@0.3|k=0|k=2": compact, one entry per stage in pipeline order,
// for tables and messages (and the search's memo key).
std::string ConfigurationName(const Configuration& configuration);

// What a configuration is applied to: the model, the pipeline and the
// ranking the skip counts index into.
struct SearchSpace {
  ModelFingerprint model;
  std::string pipeline;
  std::vector<std::string> stage_names;  // Pipeline order.
  std::vector<SublayerRef> ranking;      // Most redundant first.
  int64_t num_layers = 0;
};

// The per-stage skip sets and early exits of `configuration` over `space`;
// InvalidArgument when the stage count differs, a skip count is outside
// [0, ranking size] or an early exit is invalid.
absl::StatusOr<std::vector<StageProfile>> ResolveConfiguration(
    const SearchSpace& space, const Configuration& configuration);

// mean +- half_width (normal approximation). Not evaluation.h's Interval
// (Wilson, low/high only): a binary wires both libraries in one file.
struct MeanInterval {
  double mean = 0;
  double low = 0;
  double high = 0;
};
// The 95% interval of the mean of `values` by the normal approximation with
// the sample standard deviation (1.96 * s / sqrt(n)); zero width for n < 2.
MeanInterval MeanInterval95(const std::vector<double>& values);

// A configuration measured on the search questions. Per-question values are
// kept (same question order in every measurement of one search) so callers
// can compute intervals and paired comparisons, not only means.
struct Measurement {
  // The metric per question, in [0, 1]: 0/1 correctness for accuracy, or
  // the caller's fidelity (agreement with `full`, token fidelity, ...).
  std::vector<double> metric;
  std::vector<double> latency_seconds;  // End to end, per question.
  // [stage][question], stages in pipeline order.
  std::vector<std::vector<double>> stage_latency_seconds;

  double MeanMetric() const;
  double MeanLatency() const;
  double MeanStageLatency(size_t stage) const;
  MeanInterval MetricInterval95() const { return MeanInterval95(metric); }
};

// InvalidArgument unless `measurement` has at least one question, the same
// question count in every vector, `num_stages` stage vectors, metrics in
// [0, 1] and finite latencies >= 0.
absl::Status ValidateMeasurement(const Measurement& measurement,
                                 size_t num_stages);

// Question-by-question difference a - b of the metric (the two measured on
// the same questions): its mean and 95% interval. Far tighter than
// comparing two independent intervals, since most questions agree.
absl::StatusOr<MeanInterval> PairedMetricDifference(const Measurement& a,
                                                    const Measurement& b);

// How the search measures a configuration over its questions.
class ConfigurationMeasurer {
 public:
  virtual ~ConfigurationMeasurer() = default;
  virtual absl::StatusOr<Measurement> Measure(
      const Configuration& configuration) = 0;
};

struct SearchOptions {
  std::vector<std::string> stage_names;  // Pipeline order; at least one.
  int64_t max_skip = 0;  // K_max: budgets 0..max_skip are tried.
  double epsilon = 0;    // target = full's metric - epsilon; >= 0.
  // Early exits tried per stage (pipeline order; empty or an empty entry:
  // no calibration for that stage). See EarlyExitGrid.
  std::vector<std::vector<EarlyExitConfig>> early_exit_grid;
  SearchProgress* progress = nullptr;  // Optional.
};

enum class SearchPhase { kFull, kSkip, kEarlyExit };
const char* SearchPhaseName(SearchPhase phase);  // "full", "skip", ...

// One evaluated candidate. The full row has stage -1.
struct SearchRow {
  SearchPhase phase = SearchPhase::kFull;
  int stage = -1;  // Index into stage_names of the stage being searched.
  Configuration configuration;
  Measurement measurement;
  bool meets_target = false;
  bool chosen = false;  // The candidate kept for this stage and phase.
  std::string note;     // Why, when not obvious ("fallback: ...").
};

struct SearchResult {
  double full_metric = 0;
  double target = 0;
  std::vector<int> order;  // Stage indices, in the order searched.
  Configuration chosen;
  Measurement chosen_measurement;
  Measurement full_measurement;
  // Per stage: no budget k >= 1 met the target, so it kept k = 0.
  std::vector<bool> skip_fallback;
  std::vector<SearchRow> table;  // Every candidate, in evaluation order.
  int64_t measurements = 0;      // Distinct configurations measured.
};

// The budget search and early-exit calibration of docs/search.md:
//  1. measure full (all k = 0, no early exit): target = metric - epsilon;
//     order stages by full's mean per-stage latency, slowest first (ties:
//     pipeline order);
//  2. per stage in that order, k = 0..max_skip with the other stages at
//     their chosen values (unvisited at 0); keep the k of lowest mean
//     latency among those meeting the target (ties: smaller k); nothing
//     meeting: k = 0 (skip_fallback). Every k is measured: latency is not
//     monotonic in k;
//  3. per stage in the same order, with all budgets fixed: the early exits
//     of its grid; keep the fastest meeting the target if it is strictly
//     faster than no early exit, else none.
// Identical configurations are measured once. Errors: InvalidArgument for
// bad options or measurements, else the measurer's error.
absl::StatusOr<SearchResult> RunBudgetSearch(const SearchOptions& options,
                                             ConfigurationMeasurer& measurer);

// Every (window, threshold) pair, windows outer, with `kind` and
// `min_tokens`.
std::vector<EarlyExitConfig> EarlyExitGrid(
    const std::vector<int64_t>& windows, const std::vector<float>& thresholds,
    ConfidenceKind kind = ConfidenceKind::kMaxProb, int64_t min_tokens = 0);

// The `quantiles` (each in [0, 1]) of `confidences` (linear interpolation
// between order statistics): thresholds from the per-token confidences the
// caller measured. InvalidArgument for no values or a quantile outside
// [0, 1].
absl::StatusOr<std::vector<float>> ConfidenceQuantiles(
    std::vector<float> confidences, const std::vector<double>& quantiles);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_SEARCH_H_
