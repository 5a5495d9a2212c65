// The search's CSV table, provenance record, searched profile and progress
// bar.
#include "engine/stages/search_report.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

// RFC 4180: quoted when it holds a comma, quote or line break; quotes
// doubled.
std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

double StringToDouble(const std::string& text) {
  return std::strtod(text.c_str(), nullptr);
}

std::string Number(double value) { return absl::StrFormat("%.6g", value); }

// The shortest decimal that reads back as the same float, as a double (so
// 0.3f is written 0.3).
double FloatValue(float value) {
  const std::string text = absl::StrFormat("%.9g", value);
  for (int digits = 1; digits <= 9; ++digits) {
    const double shorter =
        StringToDouble(absl::StrFormat("%.*g", digits, value));
    if (static_cast<float>(shorter) == value) return shorter;
  }
  return StringToDouble(text);
}

json EarlyExitJson(const EarlyExitConfig& config) {
  if (!config.enabled()) return nullptr;
  return json{{"window", config.window},
              {"threshold", FloatValue(config.threshold)},
              {"confidence", ConfidenceKindName(config.kind)},
              {"min_tokens", config.min_tokens}};
}

// The stage whose values a row's k/window/threshold columns show: the stage
// searched, or (full row) none.
const StageSetting* RowSetting(const SearchRow& row) {
  if (row.stage < 0) return nullptr;
  return &row.configuration.stages[row.stage];
}

}  // namespace

std::string SearchTableCsv(const std::vector<std::string>& stage_names,
                           const SearchResult& result) {
  std::vector<std::string> header = {
      "phase",  "stage",         "k",
      "window", "threshold",     "configuration",
      "metric", "metric_ci_low", "metric_ci_high",
      "target", "mean_latency_s"};
  for (const std::string& stage : stage_names) {
    header.push_back(CsvField(absl::StrCat(stage, "_latency_s")));
  }
  for (const char* column : {"meets_target", "chosen", "note"}) {
    header.push_back(column);
  }
  std::string csv = absl::StrJoin(header, ",") + "\n";
  for (const SearchRow& row : result.table) {
    const StageSetting* setting = RowSetting(row);
    const MeanInterval ci = row.measurement.MetricInterval95();
    std::vector<std::string> fields = {
        SearchPhaseName(row.phase),
        row.stage < 0 ? "" : CsvField(stage_names[row.stage]),
        setting == nullptr ? "0" : absl::StrCat(setting->skip),
        setting == nullptr ? "0" : absl::StrCat(setting->early_exit.window),
        setting == nullptr || !setting->early_exit.enabled()
            ? ""
            : Number(setting->early_exit.threshold),
        CsvField(ConfigurationName(row.configuration)),
        Number(ci.mean),
        Number(ci.low),
        Number(ci.high),
        Number(result.target),
        Number(row.measurement.MeanLatency())};
    for (size_t s = 0; s < stage_names.size(); ++s) {
      fields.push_back(Number(row.measurement.MeanStageLatency(s)));
    }
    fields.push_back(row.meets_target ? "1" : "0");
    fields.push_back(row.chosen ? "1" : "0");
    fields.push_back(CsvField(row.note));
    csv += absl::StrJoin(fields, ",") + "\n";
  }
  return csv;
}

json SearchProvenanceJson(const std::vector<std::string>& stage_names,
                          const SearchResult& result,
                          const SearchRecordInfo& info) {
  json order = json::array();
  for (int stage : result.order) order.push_back(stage_names[stage]);
  json chosen = json::object();
  for (size_t s = 0; s < stage_names.size(); ++s) {
    const StageSetting& setting = result.chosen.stages[s];
    chosen[stage_names[s]] = {{"k", setting.skip},
                              {"early_exit", EarlyExitJson(setting.early_exit)},
                              {"skip_fallback", result.skip_fallback[s]}};
  }
  json table = json::array();
  for (const SearchRow& row : result.table) {
    const StageSetting* setting = RowSetting(row);
    const MeanInterval ci = row.measurement.MetricInterval95();
    json stage_latency = json::array();
    for (size_t s = 0; s < stage_names.size(); ++s) {
      stage_latency.push_back(row.measurement.MeanStageLatency(s));
    }
    table.push_back(json{
        {"phase", SearchPhaseName(row.phase)},
        {"stage", row.stage < 0 ? "" : stage_names[row.stage]},
        {"k", setting == nullptr ? 0 : setting->skip},
        {"early_exit", setting == nullptr ? json(nullptr)
                                          : EarlyExitJson(setting->early_exit)},
        {"configuration", ConfigurationName(row.configuration)},
        {"metric", ci.mean},
        {"metric_ci", {ci.low, ci.high}},
        {"latency_seconds", row.measurement.MeanLatency()},
        {"stage_latency_seconds", std::move(stage_latency)},
        {"meets_target", row.meets_target},
        {"chosen", row.chosen},
        {"note", row.note}});
  }
  return json{{"metric", info.metric},
              {"epsilon", info.epsilon},
              {"max_skip", info.max_skip},
              {"dataset", info.dataset},
              {"latency",
               {{"batch", info.batch},
                {"measured_alone",
                 info.batch > 0
                     ? std::min<int64_t>(info.latency_questions,
                                         info.search_question_ids.size())
                     : static_cast<int64_t>(info.search_question_ids.size())}}},
              {"calibration_questions", info.calibration_question_ids},
              {"search_questions", info.search_question_ids},
              {"full_metric", result.full_metric},
              {"target", result.target},
              {"order", std::move(order)},
              {"chosen", std::move(chosen)},
              {"measurements", result.measurements},
              {"table", std::move(table)}};
}

absl::StatusOr<Profile> MakeSearchedProfile(const std::string& name,
                                            const SearchSpace& space,
                                            const SearchResult& result,
                                            const SearchRecordInfo& info) {
  LS_ASSIGN_OR_RETURN(std::vector<StageProfile> stages,
                      ResolveConfiguration(space, result.chosen));
  Profile profile;
  profile.name = name;
  profile.model = space.model;
  profile.pipeline = space.pipeline;
  profile.ranking = space.ranking;
  for (size_t s = 0; s < stages.size(); ++s) {
    profile.stages[space.stage_names[s]] = std::move(stages[s]);
  }
  ProfileProvenance& provenance = profile.provenance;
  provenance.method = "litestage-search";
  provenance.dataset = info.dataset;
  if (info.metric == "accuracy") {
    // The typed accuracy fields mean labelled accuracy; a fidelity value
    // lives only in provenance.search.
    provenance.accuracy = result.chosen_measurement.MeanMetric();
    provenance.full_accuracy = result.full_metric;
  }
  provenance.latency_seconds = result.chosen_measurement.MeanLatency();
  provenance.full_latency_seconds = result.full_measurement.MeanLatency();
  provenance.notes = absl::StrFormat("%s within %g of full (target %.4f)",
                                     info.metric, info.epsilon, result.target);
  provenance.search = SearchProvenanceJson(space.stage_names, result, info);
  // What ParseProfile would say about the file, before anyone writes it.
  absl::StatusOr<Profile> parsed =
      ParseProfile(ProfileToJson(profile), absl::StrCat("profile ", name));
  if (!parsed.ok()) return parsed.status();
  return profile;
}

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
  const int64_t total = static_cast<int64_t>(std::llround(seconds));
  if (total >= 3600) {
    return absl::StrFormat("%dh%02dm", total / 3600, (total % 3600) / 60);
  }
  if (total >= 60) return absl::StrFormat("%dm%02ds", total / 60, total % 60);
  return absl::StrFormat("%ds", total);
}

ProgressReporter::ProgressReporter(std::ostream* out, bool interactive,
                                   Clock clock)
    : out_(out), interactive_(interactive), clock_(std::move(clock)) {
  LS_CHECK(out_ != nullptr);
  if (!clock_) {
    clock_ = [] {
      return std::chrono::duration<double>(
                 std::chrono::steady_clock::now().time_since_epoch())
          .count();
    };
  }
}

ProgressReporter ProgressReporter::ForStderr() {
  return ProgressReporter(&std::cerr, ::isatty(STDERR_FILENO) == 1);
}

void ProgressReporter::Start(int64_t total) {
  total_ = std::max<int64_t>(total, 1);
  done_ = 0;
  start_ = clock_();
}

void ProgressReporter::Step(const std::string& label) {
  done_ = std::min(done_ + 1, total_);
  if (interactive_) Draw(static_cast<double>(done_), label);
}

void ProgressReporter::Question(int64_t done, int64_t total) {
  if (!interactive_ || total <= 0 || done_ >= total_) return;
  Draw(static_cast<double>(done_) + static_cast<double>(std::min(done, total)) /
                                        static_cast<double>(total),
       absl::StrCat("question ", done, "/", total));
}

void ProgressReporter::Draw(double progress, const std::string& label) {
  constexpr int kWidth = 24;
  const double total = static_cast<double>(total_);
  const int filled = static_cast<int>(kWidth * progress / total);
  const double elapsed = clock_() - start_;
  // Steps differ in cost (memo hits are free), so this is a rough guide.
  const double eta =
      progress > 0 ? elapsed / progress * (total - progress) : -1.0;
  *out_ << "\r[" << std::string(filled, '#')
        << std::string(kWidth - filled, '.') << "] " << done_ << "/" << total_
        << " " << label << "  elapsed " << FormatDuration(elapsed) << "  ETA "
        << FormatDuration(eta) << "\x1b[K" << std::flush;
  bar_drawn_ = true;
}

void ProgressReporter::StageDone(const std::string& line) {
  if (bar_drawn_) *out_ << "\r\x1b[K";
  *out_ << line << "\n";
  bar_drawn_ = false;
  // The bar is redrawn at the next step.
  *out_ << std::flush;
}

void ProgressReporter::Finish() {
  if (bar_drawn_) *out_ << "\n";
  bar_drawn_ = false;
  if (interactive_) {
    *out_ << "search done: " << done_ << " steps in "
          << FormatDuration(clock_() - start_) << "\n";
  }
  *out_ << std::flush;
}

}  // namespace litestage
