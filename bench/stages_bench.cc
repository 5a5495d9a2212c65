// stages_bench: LiteStage's end-to-end multi-stage latency against the full
// model, measured in the same run (bench/stages_bench.sh drives it).
//
//   stages_bench --model synthetic:qwen2.5-0.5b --pipeline tinythinker
//                --skip_percents 0,10,25,40 --reps 3 --json_out out.json
//
// 1. Ranks the 2L sub-layers with MeasureSublayerImportance (full model,
//    --calibration_questions questions), as the offline search does.
// 2. Builds one profile per --skip_percents value: every stage skips the
//    first round(p% x 2L) sub-layers of that ranking (0% is `full`).
// 3. Calibrates early exit from the full model's own decode: the threshold
//    is the --early_exit_quantile quantile of its window-mean confidences
//    (window --early_exit_window), so it cuts the least confident tail.
// 4. Runs every (profile, early exit on/off) configuration over the same
//    questions, interleaved across --reps repetitions, and reports per
//    configuration the median mean-request latency, its speedup over full,
//    the tokens generated per stage, early exits and answer agreement with
//    full. A last row runs full without sharing the fan-out branches'
//    common prefix (each branch re-prefills it), to show what that saves.
//    Prints a markdown table; writes every sample as JSON.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/runtime/early_exit.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/importance.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/session.h"
#include "engine/util/flags.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "synthetic:qwen2.5-0.5b",
          "Model directory, .gguf or synthetic:<preset>");
ABSL_FLAG(std::string, pipeline, "tinythinker", "Pipeline name or file");
ABSL_FLAG(bool, few_shot, true,
          "Keep the pipeline's few-shot prefix. Synthetic presets have a byte "
          "tokenizer, on which the prefix costs ~4x the tokens a real "
          "tokenizer spends");
ABSL_FLAG(std::string, questions, "",
          "Dataset file (OBQA/CSQA/StrategyQA or plain JSONL); empty uses two "
          "built-in questions");
ABSL_FLAG(int64_t, num_questions, 2, "Questions timed per repetition");
ABSL_FLAG(int64_t, calibration_questions, 2,
          "Questions for the importance ranking");
ABSL_FLAG(std::vector<std::string>, skip_percents,
          std::vector<std::string>({"0", "10", "25", "40"}),
          "Percent of the 2L sub-layers each profile skips in every stage");
ABSL_FLAG(int64_t, stage_max_new_tokens, 32,
          "Caps every stage's max_new_tokens");
ABSL_FLAG(int64_t, early_exit_window, 8, "Early-exit window n");
ABSL_FLAG(double, early_exit_quantile, 0.2,
          "Threshold = this quantile of the full model's window means");
ABSL_FLAG(int32_t, reps, 3, "Timed repetitions (medians reported)");
ABSL_FLAG(int32_t, threads, 0, "Threads; 0 uses every hardware thread");
ABSL_FLAG(std::string, json_out, "", "Write every sample here as JSON");

namespace litestage {
namespace {

struct Config {
  std::string name;
  Profile profile;
  int64_t skipped_sublayers = 0;
  bool early_exit = false;
  bool share_fan_out_prefix = true;
};

struct Sample {
  double seconds = 0;                 // Mean over questions.
  std::vector<double> stage_tokens;   // Mean generated per stage.
  double prefilled_tokens = 0;        // Mean prompt tokens computed.
  std::vector<double> stage_seconds;  // Mean per stage.
  int64_t early_exits = 0;
  std::vector<std::string> answers;  // Per question.
};

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::vector<QuestionItem> BuiltinQuestions() {
  return {{"q1",
           "Which material is the best conductor of electricity?",
           {"wood", "copper", "rubber", "glass"},
           1},
          {"q2",
           "What do plants need to make their own food?",
           {"sunlight", "darkness", "sand", "plastic"},
           0}};
}

absl::Status Run() {
  EngineOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  LS_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  LS_ASSIGN_OR_RETURN(Pipeline pipeline,
                      ResolvePipeline(absl::GetFlag(FLAGS_pipeline)));
  if (!absl::GetFlag(FLAGS_few_shot)) pipeline.few_shot.clear();
  std::vector<QuestionItem> questions = BuiltinQuestions();
  if (!absl::GetFlag(FLAGS_questions).empty()) {
    LS_ASSIGN_OR_RETURN(questions,
                        LoadQuestions(absl::GetFlag(FLAGS_questions), 0));
  }
  const size_t calibration = std::min<size_t>(
      questions.size(), absl::GetFlag(FLAGS_calibration_questions));
  const size_t timed =
      std::min<size_t>(questions.size(), absl::GetFlag(FLAGS_num_questions));
  // Calibrate on the first questions, time the next ones when there are
  // enough (a dataset), else the same ones (the built-in pair).
  const size_t timed_begin =
      questions.size() >= calibration + timed ? calibration : 0;
  const std::vector<QuestionItem> calibration_set(
      questions.begin(), questions.begin() + calibration);
  const std::vector<QuestionItem> timed_set(
      questions.begin() + timed_begin, questions.begin() + timed_begin + timed);

  const int64_t layers = engine->config().num_hidden_layers;
  ReasoningRequest base;
  base.max_new_tokens_cap = absl::GetFlag(FLAGS_stage_max_new_tokens);
  std::cerr << "stages_bench: ranking sub-layers on " << calibration
            << " questions\n";
  LS_ASSIGN_OR_RETURN(
      SublayerImportance importance,
      MeasureSublayerImportance(*engine, pipeline, calibration_set, base));
  const std::vector<SublayerRef> ranking = importance.Ranking();

  // Early-exit threshold from the full model's own confidences.
  LS_ASSIGN_OR_RETURN(Profile full, BuiltinProfile("full", layers));
  const int64_t window = absl::GetFlag(FLAGS_early_exit_window);
  std::vector<double> window_means;
  for (const QuestionItem& q : calibration_set) {
    ReasoningRequest request = base;
    request.question = q.question;
    request.choices = q.choices;
    LS_ASSIGN_OR_RETURN(ReasoningResult run,
                        RunReasoning(*engine, pipeline, full, request));
    for (const StageRecord& stage : run.stages) {
      for (const BranchRecord& branch : stage.branches) {
        const std::vector<float>& p = branch.token_max_prob;
        for (size_t i = window; i <= p.size(); ++i) {
          double sum = 0;
          for (size_t k = i - window; k < i; ++k) sum += p[k];
          window_means.push_back(sum / static_cast<double>(window));
        }
      }
    }
  }
  float threshold = 0;
  if (!window_means.empty()) {
    std::sort(window_means.begin(), window_means.end());
    const size_t index =
        std::min(window_means.size() - 1,
                 static_cast<size_t>(absl::GetFlag(FLAGS_early_exit_quantile) *
                                     static_cast<double>(window_means.size())));
    threshold = static_cast<float>(window_means[index]);
  }
  const EarlyExitConfig early_exit{.window = window, .threshold = threshold};

  std::vector<Config> configs;
  for (const std::string& text : absl::GetFlag(FLAGS_skip_percents)) {
    double percent = 0;
    if (!absl::SimpleAtod(text, &percent) || percent < 0 || percent > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("--skip_percents: bad value '", text, "'"));
    }
    const int64_t count = std::llround(percent / 100.0 * 2 * layers);
    Profile profile = full;
    if (count > 0) {
      profile = Profile{};
      profile.name = absl::StrCat("top", count);
      profile.model = engine->fingerprint();
      profile.pipeline = pipeline.name;
      profile.ranking = ranking;
      for (const PipelineStage& stage : pipeline.stages) {
        profile.stages[stage.name].skip =
            SkipSetFromRanking(ranking, count, layers);
      }
      profile.provenance.method = "stages_bench: importance top-k";
    }
    for (bool exit_early : {false, true}) {
      configs.push_back({absl::StrCat(count == 0 ? "full" : profile.name,
                                      exit_early ? "+exit" : ""),
                         profile, count, exit_early});
    }
  }
  // What prefix caching of the fan-out branches buys, on the full model.
  configs.push_back({"full, no prefix cache", full, 0, false, false});

  // samples[config][rep]
  std::vector<std::vector<Sample>> samples(configs.size());
  const int32_t reps = absl::GetFlag(FLAGS_reps);
  for (int32_t rep = -1; rep < reps; ++rep) {  // rep -1: warm-up, untimed
    for (size_t c = 0; c < configs.size(); ++c) {
      Sample sample;
      sample.stage_tokens.assign(pipeline.stages.size(), 0);
      sample.stage_seconds.assign(pipeline.stages.size(), 0);
      for (const QuestionItem& q : timed_set) {
        ReasoningRequest request = base;
        request.question = q.question;
        request.choices = q.choices;
        if (configs[c].early_exit) request.early_exit_override = early_exit;
        request.share_fan_out_prefix = configs[c].share_fan_out_prefix;
        LS_ASSIGN_OR_RETURN(
            ReasoningResult result,
            RunReasoning(*engine, pipeline, configs[c].profile, request));
        sample.seconds += result.seconds / timed_set.size();
        for (size_t s = 0; s < result.stages.size(); ++s) {
          sample.stage_tokens[s] +=
              static_cast<double>(result.stages[s].generated_tokens) /
              timed_set.size();
          sample.stage_seconds[s] +=
              result.stages[s].seconds / timed_set.size();
          sample.early_exits += result.stages[s].early_exits;
          sample.prefilled_tokens +=
              static_cast<double>(result.stages[s].prompt_tokens -
                                  result.stages[s].cached_prompt_tokens) /
              timed_set.size();
        }
        sample.answers.push_back(result.answer);
      }
      if (rep >= 0) samples[c].push_back(std::move(sample));
      if (rep == -1 && c == 0) {
        std::cerr << "stages_bench: warm-up done\n";
      }
    }
    if (rep >= 0) std::cerr << "stages_bench: rep " << rep + 1 << " done\n";
  }

  std::vector<std::string> stage_names;
  for (const PipelineStage& stage : pipeline.stages) {
    stage_names.push_back(stage.name);
  }
  const double full_median = [&] {
    std::vector<double> v;
    for (const Sample& s : samples[0]) v.push_back(s.seconds);
    return Median(v);
  }();
  std::cout << absl::StrFormat(
      "model %s, pipeline %s%s, %d questions x %d reps, stage cap %d tokens, "
      "early exit window %d threshold %.4g (max_prob, q%.0f of full)\n\n",
      engine->Describe(), pipeline.name,
      absl::GetFlag(FLAGS_few_shot) ? "" : " (no few-shot)", timed_set.size(),
      reps, base.max_new_tokens_cap, window, threshold,
      100 * absl::GetFlag(FLAGS_early_exit_quantile));
  std::cout
      << "| config | skipped sub-layers | early exit | median s/request "
         "| speedup vs full | tokens per stage ("
      << absl::StrJoin(stage_names, "/")
      << ") | prompt tokens computed | s per stage | early exits | answers "
         "= full |\n"
         "|---|---|---|---|---|---|---|---|---|---|\n";
  nlohmann::json out;
  out["model"] = engine->Describe();
  out["fingerprint"] = engine->fingerprint().ToString();
  out["pipeline"] = pipeline.name;
  out["few_shot"] = absl::GetFlag(FLAGS_few_shot);
  out["stage_max_new_tokens"] = base.max_new_tokens_cap;
  out["early_exit"] = {{"window", window}, {"threshold", threshold}};
  out["ranking"] = nlohmann::json::array();
  for (const SublayerRef& ref : ranking) {
    out["ranking"].push_back(SublayerRefName(ref));
  }
  out["configs"] = nlohmann::json::array();
  for (size_t c = 0; c < configs.size(); ++c) {
    std::vector<double> seconds, prefilled;
    std::vector<std::string> tokens, stage_seconds;
    int64_t exits = 0;
    int64_t agree = 0, total = 0;
    for (const Sample& s : samples[c]) {
      seconds.push_back(s.seconds);
      prefilled.push_back(s.prefilled_tokens);
      exits += s.early_exits;
      for (size_t q = 0; q < s.answers.size(); ++q) {
        agree += s.answers[q] == samples[0][0].answers[q] ? 1 : 0;
        ++total;
      }
    }
    for (size_t st = 0; st < stage_names.size(); ++st) {
      std::vector<double> t, sec;
      for (const Sample& s : samples[c]) {
        t.push_back(s.stage_tokens[st]);
        sec.push_back(s.stage_seconds[st]);
      }
      tokens.push_back(absl::StrFormat("%.1f", Median(t)));
      stage_seconds.push_back(absl::StrFormat("%.2f", Median(sec)));
    }
    const double median = Median(seconds);
    std::cout << absl::StrFormat(
        "| %s | %d/%d (%.0f%%) | %s | %.3f | %.2fx | %s | %.0f | %s | %.1f | "
        "%d/%d |\n",
        configs[c].name, configs[c].skipped_sublayers, 2 * layers,
        100.0 * configs[c].skipped_sublayers / (2.0 * layers),
        configs[c].early_exit ? "yes" : "no", median, full_median / median,
        absl::StrJoin(tokens, "/"), Median(prefilled),
        absl::StrJoin(stage_seconds, "/"),
        static_cast<double>(exits) / samples[c].size(), agree, total);
    nlohmann::json config = {
        {"name", configs[c].name},
        {"skipped_sublayers", configs[c].skipped_sublayers},
        {"early_exit", configs[c].early_exit},
        {"median_seconds", median},
        {"speedup_vs_full", full_median / median},
        {"samples", nlohmann::json::array()}};
    for (const Sample& s : samples[c]) {
      config["samples"].push_back({{"seconds", s.seconds},
                                   {"stage_tokens", s.stage_tokens},
                                   {"stage_seconds", s.stage_seconds},
                                   {"prefilled_tokens", s.prefilled_tokens},
                                   {"early_exits", s.early_exits},
                                   {"answers", s.answers}});
    }
    out["configs"].push_back(std::move(config));
  }
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream file(json_out);
    file << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
         << "\n";
    if (!file) {
      return absl::UnavailableError(absl::StrCat("cannot write ", json_out));
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "End-to-end multi-stage latency of LiteStage profiles against the full "
      "model (see the header of bench/stages_bench.cc).");
  litestage::ParseFlagsAllowingDashes(argc, argv);
  // Every numeric flag against its range (docs/server.md, "Limits").
  using litestage::CheckFlagRange;
  using litestage::kMaxCountFlag;
  if (const absl::Status flags = litestage::FirstError({
          CheckFlagRange("num-questions", absl::GetFlag(FLAGS_num_questions), 1,
                         kMaxCountFlag),
          CheckFlagRange("calibration-questions",
                         absl::GetFlag(FLAGS_calibration_questions), 1,
                         kMaxCountFlag),
          CheckFlagRange("stage-max-new-tokens",
                         absl::GetFlag(FLAGS_stage_max_new_tokens), 1,
                         litestage::kMaxNewTokensFlag),
          CheckFlagRange("early-exit-window",
                         absl::GetFlag(FLAGS_early_exit_window), 1,
                         litestage::kMaxEarlyExitWindow),
          litestage::CheckDoubleFlagRange(
              "early-exit-quantile", absl::GetFlag(FLAGS_early_exit_quantile),
              0, 1),
          CheckFlagRange("reps", absl::GetFlag(FLAGS_reps), 1, kMaxCountFlag),
          CheckFlagRange("threads", absl::GetFlag(FLAGS_threads), 0,
                         litestage::kMaxThreadsFlag),
      });
      !flags.ok()) {
    std::cerr << "stages_bench: " << flags.message() << "\n";
    return litestage::kUsageExitCode;
  }
  const absl::Status status = litestage::Run();
  if (!status.ok()) {
    std::cerr << "stages_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
