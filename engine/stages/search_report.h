// What a budget search leaves behind (docs/search.md, "Report"): the CSV of
// every evaluated configuration (scripts/plot_search.py draws it), the
// provenance object a searched profile records, the profile itself, and the
// progress reporter the search draws on stderr.
#ifndef LITESTAGE_ENGINE_STAGES_SEARCH_REPORT_H_
#define LITESTAGE_ENGINE_STAGES_SEARCH_REPORT_H_

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/stages/profile.h"
#include "engine/stages/search.h"
#include "nlohmann/json.hpp"

namespace litestage {

// One header line, then one line per row of result.table, in order:
//   phase,stage,k,window,threshold,configuration,metric,metric_ci_low,
//   metric_ci_high,target,mean_latency_s,<stage>_latency_s...,meets_target,
//   chosen,note
// `stage` is the name of the stage searched (empty for the full row); k,
// window and threshold are that stage's values in the row's configuration
// (window 0 = no early exit); target is the same on every row. Fields with
// commas or quotes are quoted.
std::string SearchTableCsv(const std::vector<std::string>& stage_names,
                           const SearchResult& result);

// What the search was run on, for the provenance record.
struct SearchRecordInfo {
  std::string metric;  // "accuracy" | "fidelity".
  double epsilon = 0;
  int64_t max_skip = 0;
  std::vector<std::string> calibration_question_ids;
  std::vector<std::string> search_question_ids;
  std::string dataset;  // Path or name of the question set.
  // How latency was obtained: the first `latency_questions` search
  // questions measured alone, the others run `batch` at a time with latency
  // predicted from those (batch 0: every question measured alone).
  int64_t batch = 0;
  int64_t latency_questions = 0;
};

// The profile's provenance.search object: {"metric", "epsilon", "max_skip",
// "dataset", "latency": {"batch", "measured_alone"},
// "calibration_questions", "search_questions", "full_metric",
// "target", "order": [stage names], "chosen": {stage: {"k", "early_exit"}},
// "measurements", "table": [one object per row: phase, stage, k,
// early_exit, configuration, metric, metric_ci, latency_seconds,
// stage_latency_seconds, meets_target, chosen, note]}. Summaries only, no
// per-question values: a profile file must stay small (1 MiB limit).
nlohmann::json SearchProvenanceJson(const std::vector<std::string>& stage_names,
                                    const SearchResult& result,
                                    const SearchRecordInfo& info);

// The searched profile: per stage the first k sub-layers of the ranking and
// the calibrated early exit; provenance method "litestage-search", the
// latencies of the choice and of full, accuracy fields only for the
// accuracy metric, and provenance.search = SearchProvenanceJson(...).
// InvalidArgument when the configuration does not fit `space`.
absl::StatusOr<Profile> MakeSearchedProfile(const std::string& name,
                                            const SearchSpace& space,
                                            const SearchResult& result,
                                            const SearchRecordInfo& info);

// The search's progress on a terminal: a redrawn bar
//   [#########.........] 12/40 recall k=3  elapsed 1m02s  ETA 2m25s
// (between steps "question 17/64" as the label) when `interactive`, else
// only the one line per stage (logs stay short).
class ProgressReporter : public SearchProgress {
 public:
  using Clock = std::function<double()>;  // Seconds, monotonic.
  ProgressReporter(std::ostream* out, bool interactive, Clock clock = {});
  // On std::cerr, interactive when stderr is a terminal.
  static ProgressReporter ForStderr();

  void Start(int64_t total) override;
  void Step(const std::string& label) override;
  void Question(int64_t done, int64_t total) override;
  void StageDone(const std::string& line) override;
  void Finish() override;

 private:
  // Redraws the bar at `progress` steps done (fractional within a step).
  void Draw(double progress, const std::string& label);

  std::ostream* out_;
  bool interactive_;
  Clock clock_;
  int64_t total_ = 0;
  int64_t done_ = 0;
  double start_ = 0;
  bool bar_drawn_ = false;  // The current line holds a bar to overwrite.
};

// "1h02m", "3m05s", "12s".
std::string FormatDuration(double seconds);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_SEARCH_REPORT_H_
