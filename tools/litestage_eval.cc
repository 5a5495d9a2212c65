// litestage-eval: several skip profiles on the same questions in one run,
// against the full model (docs/evaluation.md).
//
//   litestage-eval --model M --pipeline P --dataset FILE [--limit N]
//                  [--offset N] --profiles full,even:4,adaskip:8,FILE,
//                  full@ee=4,0.3 [--calibration N]
//                  [--calibration-dataset FILE] [--json] [--csv F]
//                  [--threads N] [--max-new-tokens N] [--few-shot=false]
//                  [--device auto|cpu|cuda]
//
// One request at a time on an otherwise idle engine, profiles interleaved
// per question. stdout carries the table (or with --json one JSON object);
// progress and diagnostics go to stderr.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/model/fingerprint.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/evaluation.h"
#include "engine/stages/importance.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/util/flags.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/question_tool_flags.h"

ABSL_FLAG(std::string, dataset, "",
          "Questions to evaluate: OBQA/CSQA JSONL, StrategyQA JSON, or "
          "{question, choices, answer} JSONL");
ABSL_FLAG(int64_t, limit, 0, "Questions to evaluate; 0 uses all");
ABSL_FLAG(int64_t, offset, 0, "Questions of --dataset to skip first");
ABSL_FLAG(std::string, profiles, "full",
          "Comma-separated profile specs: full, even:K, last:K, adaskip:K, a "
          "profile JSON file, each optionally with @ee=WINDOW,THRESHOLD"
          "[,max_prob|max_logit]; full is always evaluated");
ABSL_FLAG(int64_t, calibration, 8,
          "Questions for the importance ranking of adaskip:K (disjoint from "
          "the evaluated ones)");
ABSL_FLAG(std::string, calibration_dataset, "",
          "Where the calibration questions come from; empty: --dataset, "
          "outside the evaluated range");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of the table");
ABSL_FLAG(std::string, csv, "",
          "Write the per-profile summary to this CSV file and the per-question "
          "rows next to it (NAME-questions.csv)");
ABSL_FLAG(bool, fidelity, true,
          "Run the teacher-forced fidelity passes (one extra prefill of every "
          "stage per question and profile); false reports no fidelity");
ABSL_FLAG(bool, progress, true, "Progress with ETA on stderr");
ABSL_FLAG(int64_t, batch, 0,
          "0: every question runs alone and its latency is measured. N > 0: "
          "the first --latency-questions run alone (measured), the rest N "
          "questions at a time (same outputs, shared few-shot prefix) with "
          "latency predicted from the measured per-token costs");
ABSL_FLAG(int64_t, latency_questions, 16,
          "With --batch: questions per profile whose latency is measured "
          "alone (the latency model is fitted and checked on them)");
ABSL_FLAG(int64_t, kv_cache_tokens, 0,
          "KV cache capacity in tokens; 0 keeps the engine's default (raise "
          "it with --batch so a whole batch is admitted at once)");

namespace litestage {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status ValidateFlags() {
  return FirstError({
      CheckFlagRange("limit", absl::GetFlag(FLAGS_limit), 0, kMaxCountFlag),
      CheckFlagRange("offset", absl::GetFlag(FLAGS_offset), 0, kMaxCountFlag),
      CheckFlagRange("calibration", absl::GetFlag(FLAGS_calibration), 0,
                     kMaxCountFlag),
      CheckQuestionToolFlags(
          {.batch = absl::GetFlag(FLAGS_batch),
           .latency_questions = absl::GetFlag(FLAGS_latency_questions),
           .kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens),
           .min_kv_cache_tokens = 0}),
  });
}

void PrintJson(const nlohmann::json& out) {
  std::cout << out.dump(-1, ' ', false,
                        nlohmann::json::error_handler_t::replace)
            << "\n";
}

// The evaluated slice [offset, offset + limit) of `path`.
absl::StatusOr<std::vector<QuestionItem>> LoadEvaluated(const std::string& path,
                                                        int64_t offset,
                                                        int64_t limit) {
  LS_ASSIGN_OR_RETURN(std::vector<QuestionItem> all,
                      LoadQuestions(path, limit > 0 ? offset + limit : 0));
  if (offset >= static_cast<int64_t>(all.size())) {
    return absl::InvalidArgumentError(absl::StrCat("--offset ", offset, ": ",
                                                   path, " has only ",
                                                   all.size(), " questions"));
  }
  return std::vector<QuestionItem>(all.begin() + offset, all.end());
}

// Calibration questions for the importance ranking, disjoint from the
// evaluated ones (by id and by text): AdaSkip's ranking must not have seen
// the test questions.
absl::StatusOr<std::vector<QuestionItem>> LoadCalibration(
    const std::vector<QuestionItem>& evaluated) {
  const int64_t wanted = absl::GetFlag(FLAGS_calibration);
  if (wanted <= 0) {
    return absl::InvalidArgumentError(
        "--calibration must be >= 1 when a profile is adaskip:K");
  }
  std::string path = absl::GetFlag(FLAGS_calibration_dataset);
  const bool same_file = path.empty();
  if (same_file) path = absl::GetFlag(FLAGS_dataset);
  LS_ASSIGN_OR_RETURN(std::vector<QuestionItem> all, LoadQuestions(path, 0));
  std::set<std::string> ids, texts;
  for (const QuestionItem& item : evaluated) {
    ids.insert(item.id);
    texts.insert(item.question);
  }
  std::vector<QuestionItem> chosen;
  for (const QuestionItem& item : all) {
    if (static_cast<int64_t>(chosen.size()) == wanted) break;
    const bool overlaps =
        (same_file && ids.count(item.id) > 0) || texts.count(item.question) > 0;
    if (overlaps) {
      if (same_file) continue;  // Take the next one instead.
      return absl::InvalidArgumentError(
          absl::StrCat("--calibration-dataset ", path, ": question ", item.id,
                       " is also evaluated; calibration must be disjoint"));
    }
    chosen.push_back(item);
  }
  if (static_cast<int64_t>(chosen.size()) < wanted) {
    return absl::InvalidArgumentError(
        absl::StrCat("--calibration ", wanted, ": ", path, " has only ",
                     chosen.size(), " questions outside the evaluated ones"));
  }
  return chosen;
}

std::string Percent(double value) {
  return absl::StrFormat("%.1f", 100 * value);
}

std::string WithInterval(double value, const Interval& ci) {
  return absl::StrFormat("%s [%s,%s]", Percent(value), Percent(ci.low),
                         Percent(ci.high));
}

// "-" when the teacher-forced passes were not run (--fidelity=false).
std::string FormatFidelity(const std::optional<double>& fidelity) {
  return fidelity.has_value() ? absl::StrFormat("%.3f", *fidelity) : "-";
}

void PrintTable(const Evaluation& evaluation) {
  std::cout << absl::StrFormat("%-24s %4s %-18s %6s %-18s %6s %6s %7s  %s\n",
                               "profile", "n", "accuracy% [95%]", "ans%",
                               "agree% [95%]", "mean_s", "p90_s", "speedup",
                               "fidelity per stage");
  for (const ProfileSummary& s : evaluation.summaries) {
    std::vector<std::string> fidelity;
    for (const StageSummary& stage : s.stages) {
      fidelity.push_back(FormatFidelity(stage.fidelity));
    }
    std::cout << absl::StrFormat(
        "%-24s %4d %-18s %6s %-18s %6.2f %6.2f %6.2fx  %s\n", s.profile, s.n,
        WithInterval(s.accuracy, s.accuracy_ci), Percent(s.answered_rate),
        WithInterval(s.agreement, s.agreement_ci), s.mean_seconds,
        s.p90_seconds, s.speedup, absl::StrJoin(fidelity, " "));
  }
  std::cout << "\n"
            << absl::StrFormat("%-24s %-10s %8s %8s %8s %8s %8s %6s %6s\n",
                               "profile", "stage", "fidelity", "mean_s",
                               "p90_s", "prefill", "decode", "prompt", "gen")
            << absl::StrFormat("%-24s %-10s %8s %8s %8s %8s %8s %6s %6s %s\n",
                               "", "", "", "", "", "mean_s", "mean_s", "tok",
                               "tok", "early_exit%");
  for (const ProfileSummary& s : evaluation.summaries) {
    for (const StageSummary& stage : s.stages) {
      std::cout << absl::StrFormat(
          "%-24s %-10s %8s %8.3f %8.3f %8.3f %8.3f %6.1f %6.1f %s\n", s.profile,
          stage.name, FormatFidelity(stage.fidelity), stage.mean_seconds,
          stage.p90_seconds, stage.mean_prefill_seconds,
          stage.mean_decode_seconds, stage.mean_prompt_tokens,
          stage.mean_generated_tokens, Percent(stage.early_exit_rate));
    }
  }
  bool predicted = false;
  for (const ProfileSummary& s : evaluation.summaries) {
    predicted = predicted || s.latency_measured < s.n;
  }
  if (!predicted) return;
  std::cout << "\nLatency measured with each request alone on the first "
               "questions, predicted for the rest from per-token costs "
               "fitted on them (2-fold check: per-question |error|, error "
               "of the mean):\n";
  for (const ProfileSummary& s : evaluation.summaries) {
    std::cout << absl::StrFormat(
        "%-24s measured %4d of %4d  |error| %5.1f%%  mean error %+5.1f%%\n",
        s.profile, s.latency_measured, s.n,
        100 * s.latency_check.mean_abs_relative_error,
        100 * s.latency_check.mean_relative_error);
  }
}

// RFC 4180 quoting: profile names hold commas (full@ee=4,0.3).
std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string QuestionsCsvPath(const std::string& path) {
  absl::string_view stem = path;
  absl::ConsumeSuffix(&stem, ".csv");
  return absl::StrCat(stem, "-questions.csv");
}

absl::Status WriteCsv(const Evaluation& evaluation, const std::string& path) {
  std::ofstream summary(path);
  if (!summary)
    return absl::InvalidArgumentError("--csv: cannot write " + path);
  std::vector<std::string> header = {"profile",
                                     "n",
                                     "labelled",
                                     "correct",
                                     "accuracy",
                                     "accuracy_low",
                                     "accuracy_high",
                                     "answered_rate",
                                     "agreement",
                                     "agreement_low",
                                     "agreement_high",
                                     "mean_seconds",
                                     "p90_seconds",
                                     "speedup",
                                     "latency_measured",
                                     "latency_abs_relative_error",
                                     "latency_mean_relative_error"};
  const std::vector<ProfileSummary>& summaries = evaluation.summaries;
  for (const StageSummary& stage : summaries[0].stages) {
    for (const char* field :
         {"fidelity", "mean_seconds", "p90_seconds", "mean_prefill_seconds",
          "mean_decode_seconds", "mean_prompt_tokens", "mean_generated_tokens",
          "early_exit_rate"}) {
      header.push_back(absl::StrCat(stage.name, "_", field));
    }
  }
  summary << absl::StrJoin(header, ",") << "\n";
  for (const ProfileSummary& s : summaries) {
    std::vector<std::string> row = {
        CsvField(s.profile),
        absl::StrCat(s.n),
        absl::StrCat(s.labelled),
        absl::StrCat(s.correct),
        absl::StrCat(s.accuracy),
        absl::StrCat(s.accuracy_ci.low),
        absl::StrCat(s.accuracy_ci.high),
        absl::StrCat(s.answered_rate),
        absl::StrCat(s.agreement),
        absl::StrCat(s.agreement_ci.low),
        absl::StrCat(s.agreement_ci.high),
        absl::StrCat(s.mean_seconds),
        absl::StrCat(s.p90_seconds),
        absl::StrCat(s.speedup),
        absl::StrCat(s.latency_measured),
        absl::StrCat(s.latency_check.mean_abs_relative_error),
        absl::StrCat(s.latency_check.mean_relative_error)};
    for (const StageSummary& st : s.stages) {
      row.push_back(st.fidelity.has_value() ? absl::StrCat(*st.fidelity) : "");
      for (double v : {st.mean_seconds, st.p90_seconds, st.mean_prefill_seconds,
                       st.mean_decode_seconds, st.mean_prompt_tokens,
                       st.mean_generated_tokens, st.early_exit_rate}) {
        row.push_back(absl::StrCat(v));
      }
    }
    summary << absl::StrJoin(row, ",") << "\n";
  }
  const std::string questions_path = QuestionsCsvPath(path);
  std::ofstream questions(questions_path);
  if (!questions) {
    return absl::InvalidArgumentError("--csv: cannot write " + questions_path);
  }
  header = {"profile",  "question_id", "answer_index",     "label",
            "answered", "correct",     "agrees_with_full", "seconds"};
  for (const StageSummary& stage : summaries[0].stages) {
    for (const char* field :
         {"prompt_tokens", "generated_tokens", "seconds", "prefill_seconds",
          "decode_seconds", "early_exit", "fidelity_hits", "fidelity_total"}) {
      header.push_back(absl::StrCat(stage.name, "_", field));
    }
  }
  questions << absl::StrJoin(header, ",") << "\n";
  const auto index = [](const std::optional<size_t>& i) {
    return i.has_value() ? absl::StrCat(*i) : std::string();
  };
  for (size_t p = 0; p < evaluation.rows.size(); ++p) {
    for (size_t q = 0; q < evaluation.rows[p].size(); ++q) {
      const QuestionEval& r = evaluation.rows[p][q];
      std::vector<std::string> row = {
          CsvField(r.profile),
          CsvField(r.question_id),
          index(r.answer_index),
          index(r.label),
          r.answered() ? "1" : "0",
          r.correct() ? "1" : "0",
          AnswersAgree(r, evaluation.rows[0][q]) ? "1" : "0",
          absl::StrCat(r.seconds)};
      for (const StageEval& s : r.stages) {
        for (const std::string& v :
             {absl::StrCat(s.prompt_tokens), absl::StrCat(s.generated_tokens),
              absl::StrCat(s.seconds), absl::StrCat(s.prefill_seconds),
              absl::StrCat(s.decode_seconds),
              std::string(s.early_exit_fired ? "1" : "0"),
              absl::StrCat(s.fidelity.hits), absl::StrCat(s.fidelity.total)}) {
          row.push_back(v);
        }
      }
      questions << absl::StrJoin(row, ",") << "\n";
    }
  }
  if (!summary.flush() || !questions.flush()) {
    return absl::InternalError("--csv: write failed for " + path);
  }
  return absl::OkStatus();
}

absl::Status Run() {
  const std::string dataset = absl::GetFlag(FLAGS_dataset);
  if (dataset.empty())
    return absl::InvalidArgumentError("--dataset is required");
  LS_ASSIGN_OR_RETURN(
      const EngineOptions options,
      EngineOptionsFromFlags(absl::GetFlag(FLAGS_kv_cache_tokens)));
  // Everything about the command line before the model is loaded.
  LS_ASSIGN_OR_RETURN(std::vector<ProfileSpec> specs,
                      ParseProfileList(absl::GetFlag(FLAGS_profiles)));
  bool has_full = false, needs_ranking = false;
  for (const ProfileSpec& spec : specs) {
    has_full |= spec.text == "full";
    needs_ranking |= spec.adaskip.has_value();
  }
  if (!has_full) {
    LS_ASSIGN_OR_RETURN(ProfileSpec full, ParseProfileSpec("full"));
    specs.insert(specs.begin(), full);
  }
  // full first: every other profile is measured against its run.
  std::stable_partition(specs.begin(), specs.end(),
                        [](const ProfileSpec& s) { return s.text == "full"; });
  LS_ASSIGN_OR_RETURN(Pipeline pipeline, PipelineFromFlags());
  const bool few_shot = absl::GetFlag(FLAGS_few_shot);
  LS_ASSIGN_OR_RETURN(std::vector<QuestionItem> questions,
                      LoadEvaluated(dataset, absl::GetFlag(FLAGS_offset),
                                    absl::GetFlag(FLAGS_limit)));
  std::vector<QuestionItem> calibration;
  if (needs_ranking) {
    LS_ASSIGN_OR_RETURN(calibration, LoadCalibration(questions));
  }

  LS_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  EvaluationOptions eval_options;
  eval_options.base.max_new_tokens_cap = absl::GetFlag(FLAGS_max_new_tokens);
  eval_options.fidelity = absl::GetFlag(FLAGS_fidelity);
  eval_options.batch = absl::GetFlag(FLAGS_batch);
  eval_options.latency_questions = absl::GetFlag(FLAGS_latency_questions);
  const bool progress = absl::GetFlag(FLAGS_progress);

  std::vector<SublayerRef> ranking;
  nlohmann::json calibration_json = nullptr;
  if (needs_ranking) {
    if (progress) {
      std::fprintf(stderr,
                   "[litestage-eval] importance on %zu calibration "
                   "questions...\n",
                   calibration.size());
    }
    LS_ASSIGN_OR_RETURN(SublayerImportance importance,
                        MeasureSublayerImportance(
                            *engine, pipeline, calibration, eval_options.base));
    ranking = importance.Ranking();
    std::vector<std::string> ids, names;
    for (const QuestionItem& item : calibration) ids.push_back(item.id);
    for (const SublayerRef& ref : ranking)
      names.push_back(SublayerRefName(ref));
    const std::string path = absl::GetFlag(FLAGS_calibration_dataset);
    calibration_json = {{"dataset", path.empty() ? dataset : path},
                        {"question_ids", ids},
                        {"ranking", names}};
  }
  std::vector<Profile> profiles;
  std::vector<std::string> names;
  for (const ProfileSpec& spec : specs) {
    LS_ASSIGN_OR_RETURN(Profile profile,
                        ResolveProfileSpec(spec, *engine, pipeline, ranking));
    profiles.push_back(std::move(profile));
    names.push_back(spec.text);
  }

  const Clock::time_point start = Clock::now();
  EvaluationProgress on_progress;
  const bool tty = isatty(STDERR_FILENO) == 1;
  if (progress) {
    on_progress = [&](int64_t done, int64_t total) {
      const double elapsed =
          std::chrono::duration<double>(Clock::now() - start).count();
      const double eta = elapsed / done * (total - done);
      // One line redrawn on a terminal; a line per run in a log.
      std::fprintf(stderr,
                   "%s[litestage-eval] %lld/%lld runs, %.0f s, ETA %.0f s%s",
                   tty ? "\r" : "", static_cast<long long>(done),
                   static_cast<long long>(total), elapsed, eta,
                   tty && done < total ? " " : "\n");
    };
  }
  LS_ASSIGN_OR_RETURN(Evaluation evaluation,
                      EvaluateProfiles(*engine, pipeline, profiles, names,
                                       questions, eval_options, on_progress));

  if (const std::string csv = absl::GetFlag(FLAGS_csv); !csv.empty()) {
    LS_RETURN_IF_ERROR(WriteCsv(evaluation, csv));
  }
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json summaries = nlohmann::json::array();
    for (const ProfileSummary& s : evaluation.summaries) {
      summaries.push_back(ProfileSummaryToJson(s));
    }
    nlohmann::json rows = nlohmann::json::array();
    for (size_t p = 0; p < evaluation.rows.size(); ++p) {
      for (size_t q = 0; q < evaluation.rows[p].size(); ++q) {
        nlohmann::json row = QuestionEvalToJson(evaluation.rows[p][q]);
        row["agrees_with_full"] =
            AnswersAgree(evaluation.rows[p][q], evaluation.rows[0][q]);
        rows.push_back(std::move(row));
      }
    }
    PrintJson({{"model", engine->Describe()},
               {"fingerprint", engine->fingerprint().ToString()},
               {"num_layers", engine->config().num_hidden_layers},
               {"pipeline", pipeline.name},
               {"few_shot", few_shot},
               {"dataset", dataset},
               {"offset", absl::GetFlag(FLAGS_offset)},
               {"question_ids", evaluation.question_ids},
               {"max_new_tokens", eval_options.base.max_new_tokens_cap},
               {"batch", eval_options.batch},
               {"latency_questions",
                eval_options.batch > 0
                    ? nlohmann::json(eval_options.latency_questions)
                    : nlohmann::json(nullptr)},
               {"calibration", calibration_json},
               {"profiles", std::move(summaries)},
               {"rows", std::move(rows)}});
  } else {
    std::cout << absl::StrFormat("%s, pipeline %s%s, %s: %d questions\n",
                                 engine->Describe(), pipeline.name,
                                 few_shot ? "" : " (zero-shot)", dataset,
                                 questions.size());
    PrintTable(evaluation);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) {
  return litestage::RunCommandLineTool(
      "litestage-eval",
      "Evaluates skip profiles against the full model on a question set.\n"
      "  litestage-eval --model M --pipeline P --dataset FILE [--limit N] "
      "--profiles full,even:4,adaskip:8,FILE,full@ee=4,0.3 [--json] "
      "[--csv F]\n",
      argc, argv, &litestage::ValidateFlags, &litestage::Run);
}
