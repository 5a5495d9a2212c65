// litestage-search: LiteStage's offline configuration (importance ranking,
// per-stage skip budgets, early-exit calibration) on a question set,
// written as a skip profile with its whole measured table (docs/search.md,
// "litestage-search").
//
//   litestage-search --model M --pipeline P --dataset FILE --calibration N
//                    --search N --metric accuracy|fidelity --epsilon E
//                    --max-skip K --out PROFILE.json [--report-dir DIR]
//                    [--cache-dir DIR] [--seed S] [--offset N] ...
//
// This file owns the command line, the question split and the outputs; the
// search is engine/stages/search.h, the engine runs
// engine/stages/search_measurer.h. stdout carries the summary; progress and
// diagnostics go to stderr.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/runtime/early_exit.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/evaluation.h"
#include "engine/stages/importance.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/search.h"
#include "engine/stages/search_cache.h"
#include "engine/stages/search_measurer.h"
#include "engine/stages/search_report.h"
#include "engine/util/flags.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/question_tool_flags.h"

ABSL_FLAG(std::string, dataset, "",
          "Questions: OBQA/CSQA JSONL, StrategyQA JSON, or {question, "
          "choices, answer} JSONL");
ABSL_FLAG(int64_t, calibration, 8,
          "Questions for the importance ranking (the first after --offset)");
ABSL_FLAG(int64_t, search, 16,
          "Questions every configuration is measured on (the next ones)");
ABSL_FLAG(std::string, metric, "fidelity",
          "accuracy (correct 1/0) or fidelity ((agreement with full + "
          "teacher-forced token fidelity) / 2)");
ABSL_FLAG(double, epsilon, 0.05,
          "Tolerated drop of the metric below full's, in [0, 1]");
ABSL_FLAG(int64_t, max_skip, 4,
          "K_max: skip budgets 0..K are tried per stage (at most 2 * layers)");
ABSL_FLAG(std::string, out, "", "Where the searched profile JSON is written");
ABSL_FLAG(std::string, report_dir, "",
          "search.csv, plots and summary.json; empty: <out without .json>"
          "-report");
ABSL_FLAG(std::string, cache_dir, "",
          "Per-question measurement cache; empty: <report-dir>/cache");
ABSL_FLAG(int64_t, seed, -1,
          "Shuffle the questions after --offset with this seed (0..2^32-1) "
          "before the split; -1 keeps file order");
ABSL_FLAG(int64_t, offset, 0, "Questions of --dataset to skip first");
ABSL_FLAG(std::string, early_exit_windows, "4,8",
          "Early-exit windows tried per stage; empty: no early exit");
ABSL_FLAG(std::string, early_exit_quantiles, "0.1,0.2,0.3",
          "Thresholds: these quantiles of full's per-token max_prob on the "
          "search questions");
ABSL_FLAG(int64_t, batch, 16,
          "Search questions per batched run (same outputs as running each "
          "alone; the few-shot prefix is shared); 0 runs every question alone");
ABSL_FLAG(int64_t, latency_questions, 8,
          "With --batch: the first N search questions run alone and their "
          "measured per-token costs predict the others' latency");
ABSL_FLAG(int64_t, kv_cache_tokens, 65536,
          "KV cache capacity in tokens (a batch's sequences are reserved "
          "whole: prompt + max_new_tokens each)");
ABSL_FLAG(std::string, name, "",
          "Profile name; empty: search-<metric>-e<epsilon>");
ABSL_FLAG(bool, plot, true,
          "Draw PNG plots with scripts/plot_search.py when python3 has "
          "matplotlib (never fails the search)");
ABSL_FLAG(std::string, plot_script, "",
          "Path of plot_search.py; empty: the source tree's");

namespace litestage {
namespace {

using Clock = std::chrono::steady_clock;

// Seeds: -1 (no shuffle) or a 32-bit value, which is all a split needs;
// larger values are typos.
constexpr int64_t kMaxSeedFlag = (int64_t{1} << 32) - 1;

absl::Status ValidateFlags() {
  return FirstError({
      CheckFlagRange("calibration", absl::GetFlag(FLAGS_calibration), 1,
                     kMaxCountFlag),
      CheckFlagRange("search", absl::GetFlag(FLAGS_search), 1, kMaxCountFlag),
      CheckDoubleFlagRange("epsilon", absl::GetFlag(FLAGS_epsilon), 0, 1),
      // 2 * layers is checked once the model is loaded.
      CheckFlagRange("max-skip", absl::GetFlag(FLAGS_max_skip), 0,
                     kMaxCountFlag),
      CheckFlagRange("seed", absl::GetFlag(FLAGS_seed), -1, kMaxSeedFlag),
      CheckFlagRange("offset", absl::GetFlag(FLAGS_offset), 0, kMaxCountFlag),
      CheckQuestionToolFlags(
          {.batch = absl::GetFlag(FLAGS_batch),
           .latency_questions = absl::GetFlag(FLAGS_latency_questions),
           .kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens),
           .min_kv_cache_tokens = 1}),
  });
}

// "4,8" -> {4, 8}, each in [1, kMaxEarlyExitWindow].
absl::StatusOr<std::vector<int64_t>> ParseWindows(const std::string& text) {
  std::vector<int64_t> windows;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t window = 0;
    if (!absl::SimpleAtoi(piece, &window) || window < 1 ||
        window > kMaxEarlyExitWindow) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--early-exit-windows: '", piece.substr(0, 80),
          "' is not an integer in [1, ", kMaxEarlyExitWindow, "]"));
    }
    windows.push_back(window);
  }
  return windows;
}

// "0.1,0.2" -> {0.1, 0.2}, each finite in [0, 1].
absl::StatusOr<std::vector<double>> ParseQuantiles(const std::string& text) {
  std::vector<double> quantiles;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double q = 0;
    if (!absl::SimpleAtod(piece, &q) || !(q >= 0 && q <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--early-exit-quantiles: '", piece.substr(0, 80),
                       "' is not a number in [0, 1]"));
    }
    quantiles.push_back(q);
  }
  return quantiles;
}

// The calibration and search questions: after --offset, optionally
// shuffled (Fisher-Yates over mt19937_64's raw output, so the split is the
// same on every platform), then the first N and the next N. Disjoint by
// construction; duplicate ids in the file are refused since the ids are
// what the provenance and the cache name.
struct QuestionSplit {
  std::vector<QuestionItem> calibration;
  std::vector<QuestionItem> search;
};
absl::StatusOr<QuestionSplit> SplitQuestions(const std::string& path) {
  const int64_t offset = absl::GetFlag(FLAGS_offset);
  const int64_t calibration = absl::GetFlag(FLAGS_calibration);
  const int64_t search = absl::GetFlag(FLAGS_search);
  const int64_t seed = absl::GetFlag(FLAGS_seed);
  LS_ASSIGN_OR_RETURN(
      std::vector<QuestionItem> all,
      LoadQuestions(path, seed < 0 ? offset + calibration + search : 0));
  if (static_cast<int64_t>(all.size()) < offset + calibration + search) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--offset ", offset, " + --calibration ", calibration, " + --search ",
        search, ": ", path, " has only ", all.size(), " questions"));
  }
  all.erase(all.begin(), all.begin() + offset);
  if (seed >= 0) {
    std::mt19937_64 random(static_cast<uint64_t>(seed));
    for (size_t i = all.size(); i > 1; --i)
      std::swap(all[i - 1], all[random() % i]);
  }
  QuestionSplit split;
  split.calibration.assign(all.begin(), all.begin() + calibration);
  split.search.assign(all.begin() + calibration,
                      all.begin() + calibration + search);
  std::set<std::string> ids;
  for (const auto* part : {&split.calibration, &split.search}) {
    for (const QuestionItem& item : *part) {
      if (!ids.insert(item.id).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": question id '", item.id.substr(0, 80),
            "' appears twice among the calibration and search questions"));
      }
    }
  }
  return split;
}

std::vector<std::string> Ids(const std::vector<QuestionItem>& items) {
  std::vector<std::string> ids;
  for (const QuestionItem& item : items) ids.push_back(item.id);
  return ids;
}

// The importance ranking on the calibration questions, cached in the cache
// directory under a hash of everything it depends on, so a resumed or
// repeated search does not pay for it again.
absl::StatusOr<std::vector<SublayerRef>> Ranking(
    Engine& engine, const Pipeline& pipeline, const std::string& identity,
    const std::vector<QuestionItem>& calibration, const ReasoningRequest& base,
    const std::string& cache_dir, bool* cached) {
  std::vector<std::string> keys;
  for (const QuestionItem& item : calibration)
    keys.push_back(QuestionCacheKey(item));
  const nlohmann::json key = {{"model", engine.fingerprint().ToString()},
                              {"pipeline", identity},
                              {"calibration", keys}};
  const std::string path =
      absl::StrCat(cache_dir, "/importance-", StableHash(key.dump()), ".json");
  *cached = false;
  if (std::ifstream in(path); in) {
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json stored =
        nlohmann::json::parse(text.str(), nullptr, false);
    if (stored.is_object() && stored.value("key", nlohmann::json()) == key &&
        stored.contains("ranking") && stored["ranking"].is_array()) {
      std::vector<SublayerRef> ranking;
      bool ok = true;
      for (const nlohmann::json& name : stored["ranking"]) {
        absl::StatusOr<SublayerRef> ref =
            name.is_string() ? ParseSublayerRef(name.get<std::string>())
                             : absl::InvalidArgumentError("not a string");
        if (!ref.ok()) {
          ok = false;
          break;
        }
        ranking.push_back(*ref);
      }
      if (ok && static_cast<int64_t>(ranking.size()) ==
                    2 * engine.config().num_hidden_layers) {
        *cached = true;
        return ranking;
      }
    }
    std::fprintf(stderr, "[litestage-search] ignoring unusable %s\n",
                 path.c_str());
  }
  std::fprintf(stderr,
               "[litestage-search] importance on %zu calibration questions\n",
               calibration.size());
  LS_ASSIGN_OR_RETURN(
      SublayerImportance importance,
      MeasureSublayerImportance(engine, pipeline, calibration, base));
  std::vector<SublayerRef> ranking = importance.Ranking();
  std::vector<std::string> names;
  for (const SublayerRef& ref : ranking) names.push_back(SublayerRefName(ref));
  LS_RETURN_IF_ERROR(WriteFileAtomically(
      path, nlohmann::json({{"key", key}, {"ranking", names}}).dump(1)));
  return ranking;
}

std::string EarlyExitName(const EarlyExitConfig& early_exit) {
  if (!early_exit.enabled()) return "none";
  return absl::StrFormat("%d@%.4g", early_exit.window, early_exit.threshold);
}

// "python3 -c 'import matplotlib'" succeeds: plots can be drawn.
bool HaveMatplotlib() {
  return std::system("python3 -c 'import matplotlib' >/dev/null 2>&1") == 0;
}

std::string ShellQuote(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Draws the plots when possible; reports what it did. Never an error: the
// search's result does not depend on pictures.
void Plot(const std::string& csv, const std::string& report_dir) {
  std::string script = absl::GetFlag(FLAGS_plot_script);
  if (script.empty()) {
    script = std::string(LITESTAGE_SOURCE_DIR) + "/scripts/plot_search.py";
  }
  const std::string command =
      absl::StrCat("python3 ", ShellQuote(script), " ", ShellQuote(csv), " ",
                   ShellQuote(report_dir));
  if (!absl::GetFlag(FLAGS_plot)) return;
  if (!std::filesystem::exists(script) || !HaveMatplotlib()) {
    std::fprintf(stderr,
                 "[litestage-search] no plots (python3 with matplotlib or %s "
                 "missing); draw them with:\n  %s\n",
                 script.c_str(), command.c_str());
    return;
  }
  if (std::system((command + " >&2").c_str()) != 0) {
    std::fprintf(stderr, "[litestage-search] plotting failed: %s\n",
                 command.c_str());
  }
}

// The default --report-dir: PROFILE.json -> PROFILE-report.
std::string DefaultReportDir(const std::string& out) {
  std::string stem = out;
  if (stem.size() > 5 && stem.substr(stem.size() - 5) == ".json") {
    stem.resize(stem.size() - 5);
  }
  return stem + "-report";
}

absl::Status Run() {
  const Clock::time_point start = Clock::now();
  const std::string dataset = absl::GetFlag(FLAGS_dataset);
  const std::string out = absl::GetFlag(FLAGS_out);
  LS_ASSIGN_OR_RETURN(
      const EngineOptions options,
      EngineOptionsFromFlags(absl::GetFlag(FLAGS_kv_cache_tokens)));
  if (dataset.empty())
    return absl::InvalidArgumentError("--dataset is required");
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  // Everything about the command line before the model is loaded.
  LS_ASSIGN_OR_RETURN(SearchMetric metric,
                      ParseSearchMetric(absl::GetFlag(FLAGS_metric)));
  LS_ASSIGN_OR_RETURN(std::vector<int64_t> windows,
                      ParseWindows(absl::GetFlag(FLAGS_early_exit_windows)));
  LS_ASSIGN_OR_RETURN(
      std::vector<double> quantiles,
      ParseQuantiles(absl::GetFlag(FLAGS_early_exit_quantiles)));
  const double epsilon = absl::GetFlag(FLAGS_epsilon);
  const int64_t max_skip = absl::GetFlag(FLAGS_max_skip);
  const std::string name =
      absl::GetFlag(FLAGS_name).empty()
          ? absl::StrFormat("search-%s-e%g", SearchMetricName(metric), epsilon)
          : absl::GetFlag(FLAGS_name);
  LS_ASSIGN_OR_RETURN(Pipeline pipeline, PipelineFromFlags());
  const bool few_shot = absl::GetFlag(FLAGS_few_shot);
  LS_ASSIGN_OR_RETURN(QuestionSplit split, SplitQuestions(dataset));
  std::string report_dir = absl::GetFlag(FLAGS_report_dir);
  if (report_dir.empty()) report_dir = DefaultReportDir(out);
  std::string cache_dir = absl::GetFlag(FLAGS_cache_dir);
  if (cache_dir.empty()) cache_dir = report_dir + "/cache";
  for (const std::string& dir : {report_dir, cache_dir}) {
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (error) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot create ", dir, ": ", error.message()));
    }
  }

  LS_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  const int64_t num_layers = engine->config().num_hidden_layers;
  if (max_skip > 2 * num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-skip ", max_skip, ": the model has only ",
                     2 * num_layers, " sub-layers"));
  }
  ReasoningRequest base;
  base.max_new_tokens_cap = absl::GetFlag(FLAGS_max_new_tokens);
  const std::string identity =
      PipelineCacheIdentity(pipeline, base.max_new_tokens_cap);

  SearchSpace space;
  space.model = engine->fingerprint();
  space.pipeline = pipeline.name;
  for (const PipelineStage& stage : pipeline.stages)
    space.stage_names.push_back(stage.name);
  space.num_layers = num_layers;
  bool ranking_cached = false;
  LS_ASSIGN_OR_RETURN(space.ranking,
                      Ranking(*engine, pipeline, identity, split.calibration,
                              base, cache_dir, &ranking_cached));

  // The caches key on the pipeline's identity (prompts, few-shot, cap), not
  // only its name, which is what the profile records.
  SearchSpace cache_space = space;
  cache_space.pipeline = identity;
  LS_ASSIGN_OR_RETURN(SearchCache cache,
                      SearchCache::Open(cache_dir, cache_space));
  LS_ASSIGN_OR_RETURN(SearchCache reference_cache,
                      SearchCache::Open(cache_dir + "/reference", cache_space));
  EngineQuestionMeasurer engine_measurer(engine.get(), &pipeline, space,
                                         split.search, base, &reference_cache);

  std::vector<std::string> keys;
  for (const QuestionItem& item : split.search) {
    keys.push_back(QuestionCacheKey(item));
  }
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  // Batched, the first --latency-questions run alone: their measured
  // latency fits the per-token costs that predict the others'.
  std::set<std::string> latency_keys;
  for (size_t q = 0; q < keys.size(); ++q) {
    if (batch == 0 ||
        static_cast<int64_t>(q) < absl::GetFlag(FLAGS_latency_questions)) {
      latency_keys.insert(keys[q]);
    }
  }
  engine_measurer.set_batching(batch, latency_keys);

  // full on every search question first: its per-token confidences set the
  // early-exit thresholds, and every later candidate is compared to it.
  std::vector<float> confidences;
  const bool tty = isatty(STDERR_FILENO) == 1;
  const size_t group = batch > 0 ? static_cast<size_t>(batch) : 1;
  for (size_t begin = 0; begin < keys.size(); begin += group) {
    const size_t end = std::min(keys.size(), begin + group);
    // One line redrawn on a terminal; a line per group in a log.
    std::fprintf(stderr,
                 "%s[litestage-search] full on search questions %zu-%zu of "
                 "%zu%s",
                 tty ? "\r" : "", begin + 1, end, keys.size(), tty ? "" : "\n");
    LS_RETURN_IF_ERROR(engine_measurer.EnsureReferences(
        absl::MakeConstSpan(keys).subspan(begin, end - begin)));
  }
  for (const std::string& key : keys) {
    LS_ASSIGN_OR_RETURN(const ReferenceRun* reference,
                        engine_measurer.Reference(key));
    confidences.insert(confidences.end(), reference->token_max_prob.begin(),
                       reference->token_max_prob.end());
  }
  if (tty) std::fprintf(stderr, "\n");
  std::vector<float> thresholds;
  if (!windows.empty() && !quantiles.empty()) {
    if (confidences.empty()) {
      std::fprintf(stderr,
                   "[litestage-search] full generated no tokens: no "
                   "early-exit calibration\n");
    } else {
      LS_ASSIGN_OR_RETURN(thresholds,
                          ConfidenceQuantiles(confidences, quantiles));
      // Equal quantiles (a peaked distribution) would measure one point
      // several times under different names in the table.
      std::sort(thresholds.begin(), thresholds.end());
      thresholds.erase(std::unique(thresholds.begin(), thresholds.end()),
                       thresholds.end());
    }
  }
  const std::vector<EarlyExitConfig> grid =
      thresholds.empty() ? std::vector<EarlyExitConfig>{}
                         : EarlyExitGrid(windows, thresholds);

  CachingQuestionMeasurer caching(&cache, &engine_measurer);
  // A latency question's entry must hold a measured latency (an earlier
  // search may have batched it).
  caching.set_accept([&](const std::string& key, const nlohmann::json& result) {
    return latency_keys.count(key) == 0 ||
           result.value("latency_measured", false);
  });
  QuestionSetMeasurer measurer(
      &caching, keys, space.stage_names.size(),
      MakeSearchDecoder(metric, space.stage_names.size()));
  measurer.set_group_size(static_cast<int64_t>(group));
  measurer.set_result_hook(PredictBatchedLatency);
  ProgressReporter progress = ProgressReporter::ForStderr();
  measurer.set_progress(&progress);
  SearchOptions search_options;
  search_options.stage_names = space.stage_names;
  search_options.max_skip = max_skip;
  search_options.epsilon = epsilon;
  search_options.early_exit_grid.assign(space.stage_names.size(), grid);
  search_options.progress = &progress;
  LS_ASSIGN_OR_RETURN(SearchResult result,
                      RunBudgetSearch(search_options, measurer));

  SearchRecordInfo info;
  info.metric = SearchMetricName(metric);
  info.epsilon = epsilon;
  info.max_skip = max_skip;
  info.calibration_question_ids = Ids(split.calibration);
  info.search_question_ids = Ids(split.search);
  info.dataset = dataset;
  info.batch = batch;
  info.latency_questions = absl::GetFlag(FLAGS_latency_questions);
  LS_ASSIGN_OR_RETURN(Profile profile,
                      MakeSearchedProfile(name, space, result, info));
  LS_RETURN_IF_ERROR(WriteFileAtomically(out, ProfileToJson(profile)));
  const std::string csv = report_dir + "/search.csv";
  LS_RETURN_IF_ERROR(
      WriteFileAtomically(csv, SearchTableCsv(space.stage_names, result)));
  Plot(csv, report_dir);

  // Summary: per stage the choice and its latency against full's.
  std::cout << absl::StrFormat(
      "%s, pipeline %s%s, %s: %d calibration + %d "
      "search questions, metric %s, epsilon %g\n",
      engine->Describe(), pipeline.name, few_shot ? "" : " (zero-shot)",
      dataset, split.calibration.size(), split.search.size(), info.metric,
      epsilon);
  std::cout << absl::StrFormat("%-12s %4s %-12s %10s %10s\n", "stage", "k",
                               "early_exit", "latency_s", "full_s");
  for (size_t s = 0; s < space.stage_names.size(); ++s) {
    const StageSetting& setting = result.chosen.stages[s];
    std::cout << absl::StrFormat(
        "%-12s %4d %-12s %10.4f %10.4f%s\n", space.stage_names[s], setting.skip,
        EarlyExitName(setting.early_exit),
        result.chosen_measurement.MeanStageLatency(s),
        result.full_measurement.MeanStageLatency(s),
        result.skip_fallback[s] ? "  (no k >= 1 met the target)" : "");
  }
  const MeanInterval ci = result.chosen_measurement.MetricInterval95();
  const double full_latency = result.full_measurement.MeanLatency();
  const double chosen_latency = result.chosen_measurement.MeanLatency();
  const double wall =
      std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << absl::StrFormat(
      "metric %.4f [%.4f, %.4f] vs target %.4f (full %.4f); latency %.4f s "
      "vs full %.4f s (%.2fx)\n",
      ci.mean, ci.low, ci.high, result.target, result.full_metric,
      chosen_latency, full_latency,
      chosen_latency > 0 ? full_latency / chosen_latency : 0.0);
  std::cout << absl::StrFormat(
      "%d configurations, cache %d hits / %d misses, %d full runs, %d "
      "candidate runs, wall %.1f s (%s)\n",
      result.measurements, cache.hits(), cache.misses(),
      engine_measurer.full_runs(), engine_measurer.candidate_runs(), wall,
      FormatDuration(wall));
  std::cout << "profile: " << out << "\nreport: " << csv << "\n";

  // The held-out evaluation is litestage-eval's: the questions after the
  // search ones (only a contiguous range when the split was not shuffled).
  const int64_t held_out_offset = absl::GetFlag(FLAGS_offset) +
                                  absl::GetFlag(FLAGS_calibration) +
                                  absl::GetFlag(FLAGS_search);
  std::string eval = absl::StrCat(
      "litestage-eval --model ", ShellQuote(options.model), " --pipeline ",
      ShellQuote(absl::GetFlag(FLAGS_pipeline)), " --dataset ",
      ShellQuote(dataset), " --offset ", held_out_offset,
      " --limit 200 --profiles full,", ShellQuote(out));
  if (!few_shot) absl::StrAppend(&eval, " --few-shot=false");
  if (options.device != "cpu") {
    absl::StrAppend(&eval, " --device ", ShellQuote(options.device));
  }
  if (base.max_new_tokens_cap > 0) {
    absl::StrAppend(&eval, " --max-new-tokens ", base.max_new_tokens_cap);
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    std::cout << "held-out evaluation: the split was shuffled, so evaluate on "
                 "another file (e.g. search on train, evaluate on test):\n  "
              << eval << "\n";
  } else {
    std::cout << "held-out evaluation:\n  " << eval << "\n";
  }

  const nlohmann::json summary = {
      {"profile", out},
      {"name", name},
      {"model", engine->Describe()},
      {"fingerprint", engine->fingerprint().ToString()},
      {"num_layers", num_layers},
      {"pipeline", pipeline.name},
      {"calibration_questions", info.calibration_question_ids},
      {"search_questions", info.search_question_ids},
      {"measurements", result.measurements},
      {"cache",
       {{"dir", cache_dir},
        {"hits", cache.hits()},
        {"misses", cache.misses()},
        {"corrupt", cache.corrupt()}}},
      {"ranking_cached", ranking_cached},
      {"full_runs", engine_measurer.full_runs()},
      {"candidate_runs", engine_measurer.candidate_runs()},
      {"wall_seconds", wall},
      {"held_out_command", eval}};
  return WriteFileAtomically(report_dir + "/summary.json",
                             summary.dump(2) + "\n");
}

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) {
  return litestage::RunCommandLineTool(
      "litestage-search",
      "Searches per-stage skip budgets and early exits; writes a profile.\n"
      "  litestage-search --model M --pipeline P --dataset FILE "
      "--calibration N --search N --metric accuracy|fidelity --epsilon E "
      "--max-skip K --out PROFILE.json [--report-dir DIR] [--cache-dir DIR] "
      "[--seed S]\n",
      argc, argv, &litestage::ValidateFlags, &litestage::Run);
}
