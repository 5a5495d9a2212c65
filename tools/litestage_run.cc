// litestage-run: local generation with the litestage engine.
//
//   litestage-run --model <dir|file.gguf|synthetic:preset> --prompt <text>
//                 --max-new-tokens N [--temperature T] [--top-k K] [--top-p P]
//                 [--seed S] [--chat] [--json]
//
//   litestage-run --model <...> --pipeline tinythinker --question <text>
//                 --choices "<a>|<b>|<c>|<d>" --profile
//                 <file|full|even:K|last:K>
//                 [--early-exit-window N --early-exit-threshold T] [--json]
//   litestage-run --model <...> --pipeline tinythinker
//                 --importance-samples <dataset> [--importance-limit N]
//
// stdout carries only the generated continuation (streamed as it decodes),
// the stage outputs and answer in pipeline mode, or with --json one JSON
// object; every diagnostic goes to stderr.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "engine/backend/registry.h"
#include "engine/model/fingerprint.h"
#include "engine/runtime/early_exit.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/importance.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/session.h"
#include "engine/util/flags.h"
#include "engine/util/process_memory.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(
    std::string, model, "",
    "Hugging Face model directory, a .gguf file, or synthetic:<preset> (random "
    "weights; "
    "presets: tiny, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b, qwen3-0.6b)");
ABSL_FLAG(std::string, prompt, "", "Prompt text");
ABSL_FLAG(int64_t, max_new_tokens, 128, "Most tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int32_t, top_k, 0,
          "Sample among the K most likely tokens; 0 disables");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass in (0, 1]; 1 disables");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(bool, chat, false,
          "Format the prompt as one user turn with the model's chat template");
ABSL_FLAG(bool, json, false,
          "Print one JSON object instead of the bare continuation");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Comma-separated stop strings");
ABSL_FLAG(bool, ignore_eos, false,
          "Keep generating after an end-of-sequence token");
ABSL_FLAG(std::string, device, "cpu", litestage::kDeviceFlagHelp);
ABSL_FLAG(std::string, dtype, "auto", litestage::kDTypeFlagHelp);
ABSL_FLAG(int32_t, threads, 0, "Worker threads; 0 uses every hardware thread");
ABSL_FLAG(uint64_t, synthetic_seed, 0, "Seed of synthetic random weights");
ABSL_FLAG(int64_t, kv_cache_tokens, 16384, "Token capacity of the KV cache");
ABSL_FLAG(bool, prefix_cache, true, litestage::kPrefixCacheFlagHelp);
ABSL_FLAG(bool, no_mmap, false,
          "Copy the weights into memory at load instead of serving them from "
          "the mapped model files (see docs/server.md, Model files)");

// Multi-stage reasoning (LiteStage).
ABSL_FLAG(std::string, pipeline, "",
          "Run a multi-stage pipeline: a built-in name (tinythinker) or a "
          "pipeline JSON file (docs/pipelines.md)");
ABSL_FLAG(std::string, question, "", "Question for --pipeline");
ABSL_FLAG(std::string, choices, "",
          "Answer choices for --pipeline, separated by '|'; empty uses the "
          "pipeline's defaults (tinythinker: yes|no)");
ABSL_FLAG(std::string, profile, "full",
          "Skip profile: full, even:K, last:K, or a profile JSON file "
          "(docs/profiles.md)");
ABSL_FLAG(int64_t, early_exit_window, -1,
          "Early-exit window n for every stage, overriding the profile; 0 "
          "disables early exit, -1 keeps the profile's settings");
ABSL_FLAG(double, early_exit_threshold, 0.0,
          "Early-exit threshold for every stage (with --early-exit-window)");
ABSL_FLAG(std::string, early_exit_confidence, "max_prob",
          "Early-exit confidence: max_prob or max_logit");
ABSL_FLAG(int64_t, early_exit_min_tokens, 0,
          "Tokens every stage keeps before early exit may fire");
ABSL_FLAG(int64_t, stage_max_new_tokens, 0,
          "Caps every stage's max_new_tokens; 0 keeps the pipeline's");
ABSL_FLAG(bool, share_fan_out_prefix, true,
          "Fan-out branches share the KV of their common prompt prefix "
          "(prefilled once); false recomputes it per branch");
ABSL_FLAG(std::string, importance_samples, "",
          "With --pipeline: measure sub-layer importance (input/output cosine "
          "similarity at each stage's prefill, full model) over the questions "
          "of this dataset file and print it as JSON");
ABSL_FLAG(int64_t, importance_limit, 8,
          "Questions of --importance-samples to use; 0 uses all");
ABSL_FLAG(bool, print_pipeline, false,
          "Print the --pipeline document as JSON and exit");

namespace litestage {
namespace {

// Every numeric flag against its range (docs/server.md, "Limits"), before
// anything is loaded.
absl::Status ValidateFlags() {
  return FirstError({
      CheckFlagRange("max-new-tokens", absl::GetFlag(FLAGS_max_new_tokens), 0,
                     kMaxNewTokensFlag),
      CheckSamplingFlags(absl::GetFlag(FLAGS_temperature),
                         absl::GetFlag(FLAGS_top_k),
                         absl::GetFlag(FLAGS_top_p)),
      CheckFlagRange("threads", absl::GetFlag(FLAGS_threads), 0,
                     kMaxThreadsFlag),
      CheckFlagRange("kv-cache-tokens", absl::GetFlag(FLAGS_kv_cache_tokens), 1,
                     kMaxKvCacheTokensFlag),
      CheckEarlyExitFlags(absl::GetFlag(FLAGS_early_exit_window),
                          absl::GetFlag(FLAGS_early_exit_threshold),
                          absl::GetFlag(FLAGS_early_exit_min_tokens),
                          kMaxEarlyExitWindow, kMaxEarlyExitMinTokens),
      CheckFlagRange("stage-max-new-tokens",
                     absl::GetFlag(FLAGS_stage_max_new_tokens), 0,
                     kMaxNewTokensFlag),
      CheckFlagRange("importance-limit", absl::GetFlag(FLAGS_importance_limit),
                     0, kMaxCountFlag),
  });
}

// Replaces invalid UTF-8 (possible from random weights) rather than throw.
void PrintJson(const nlohmann::json& out) {
  std::cout << out.dump(-1, ' ', false,
                        nlohmann::json::error_handler_t::replace)
            << "\n";
}

absl::StatusOr<ReasoningRequest> ReasoningRequestFromFlags() {
  ReasoningRequest request;
  request.question = absl::GetFlag(FLAGS_question);
  const std::string choices = absl::GetFlag(FLAGS_choices);
  if (!choices.empty()) {
    request.choices = absl::StrSplit(choices, '|');
  }
  request.sampling.temperature =
      static_cast<float>(absl::GetFlag(FLAGS_temperature));
  request.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  request.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  request.sampling.seed = absl::GetFlag(FLAGS_seed);
  request.max_new_tokens_cap = absl::GetFlag(FLAGS_stage_max_new_tokens);
  request.share_fan_out_prefix = absl::GetFlag(FLAGS_share_fan_out_prefix);
  const int64_t window = absl::GetFlag(FLAGS_early_exit_window);
  if (window >= 0) {
    EarlyExitConfig early_exit;
    early_exit.window = window;
    early_exit.threshold =
        static_cast<float>(absl::GetFlag(FLAGS_early_exit_threshold));
    early_exit.min_tokens = absl::GetFlag(FLAGS_early_exit_min_tokens);
    auto kind = ParseConfidenceKind(absl::GetFlag(FLAGS_early_exit_confidence));
    if (!kind.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--early-exit-confidence: ", kind.status().message()));
    }
    early_exit.kind = *kind;
    if (absl::Status status = ValidateEarlyExitConfig(early_exit);
        !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--",
          absl::StrReplaceAll(status.message(),
                              {{"early_exit.", "early-exit-"}, {"_", "-"}})));
    }
    request.early_exit_override = early_exit;
  }
  return request;
}

void PrintReadable(const ReasoningResult& result) {
  for (const StageRecord& stage : result.stages) {
    std::cout << "[" << stage.name << "] " << stage.output << "\n";
    std::cout << absl::StrFormat(
        "    %d prompt (%d cached) + %d generated tokens, %.3f s (prefill "
        "%.3f, decode %.3f), skipped %d attention + %d mlp of %d sub-layers, "
        "finish %s%s\n",
        stage.prompt_tokens, stage.cached_prompt_tokens, stage.generated_tokens,
        stage.seconds, stage.prefill_seconds, stage.decode_seconds,
        stage.skipped_attention_layers, stage.skipped_mlp_layers,
        stage.sublayers.total() > 0 && stage.forwarded_tokens > 0
            ? stage.sublayers.total() / stage.forwarded_tokens
            : 0,
        stage.finish_reason,
        stage.early_exit_fired
            ? absl::StrCat(", early exit (", stage.early_exit_reason, ")")
            : "");
  }
  if (result.answer.empty()) {
    std::cout << "answer: none (the final stage named no choice)\n";
  } else {
    std::cout << "answer: " << result.answer << " (" << result.answer_text
              << ")\n";
  }
  std::cout << absl::StrFormat(
      "total: %.3f s, %d prompt + %d generated tokens\n", result.seconds,
      result.prompt_tokens, result.generated_tokens);
}

absl::Status RunPipeline(Engine& engine, const Pipeline& pipeline) {
  std::vector<std::string> stage_names;
  for (const PipelineStage& stage : pipeline.stages) {
    stage_names.push_back(stage.name);
  }
  LS_ASSIGN_OR_RETURN(ReasoningRequest request, ReasoningRequestFromFlags());
  const std::string samples = absl::GetFlag(FLAGS_importance_samples);
  if (!samples.empty()) {
    LS_ASSIGN_OR_RETURN(
        std::vector<QuestionItem> questions,
        LoadQuestions(samples, absl::GetFlag(FLAGS_importance_limit)));
    LS_ASSIGN_OR_RETURN(
        SublayerImportance importance,
        MeasureSublayerImportance(engine, pipeline, questions, request));
    nlohmann::json out = importance.ToJson();
    out["model"] = engine.Describe();
    out["fingerprint"] = engine.fingerprint().ToString();
    out["pipeline"] = pipeline.name;
    out["samples"] = samples;
    PrintJson(out);
    return absl::OkStatus();
  }
  const std::string profile_spec = absl::GetFlag(FLAGS_profile);
  LS_ASSIGN_OR_RETURN(Profile profile,
                      ResolveProfile(profile_spec, engine.fingerprint(),
                                     engine.config().num_hidden_layers,
                                     pipeline.name, stage_names));
  LS_ASSIGN_OR_RETURN(ReasoningResult result,
                      RunReasoning(engine, pipeline, profile, request));
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json out = ReasoningResultToJson(result);
    out["model"] = engine.Describe();
    out["fingerprint"] = engine.fingerprint().ToString();
    out["num_layers"] = engine.config().num_hidden_layers;
    out["pipeline"] = pipeline.name;
    out["profile"] = profile.name;
    out["question"] = request.question;
    PrintJson(out);
  } else {
    PrintReadable(result);
  }
  return absl::OkStatus();
}

absl::Status Run() {
  const std::string pipeline_name = absl::GetFlag(FLAGS_pipeline);
  std::optional<Pipeline> pipeline;
  if (!pipeline_name.empty()) {
    LS_ASSIGN_OR_RETURN(pipeline, ResolvePipeline(pipeline_name));
    if (absl::GetFlag(FLAGS_print_pipeline)) {
      std::cout << PipelineToJson(*pipeline) << "\n";
      return absl::OkStatus();
    }
  }
  EngineOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  if (options.model.empty())
    return absl::InvalidArgumentError("--model is required");
  options.device = absl::GetFlag(FLAGS_device);
  options.synthetic_seed = absl::GetFlag(FLAGS_synthetic_seed);
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  options.backend.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  options.use_mmap = !absl::GetFlag(FLAGS_no_mmap);
  options.prefix_cache = absl::GetFlag(FLAGS_prefix_cache);
  auto dtype = ParseMatrixDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return dtype.status();
  options.matrix_dtype = *dtype;
  if (pipeline.has_value()) {
    LS_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                        Engine::Create(options));
    return RunPipeline(*engine, *pipeline);
  }

  GenerationRequest request;
  request.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  request.sampling.temperature =
      static_cast<float>(absl::GetFlag(FLAGS_temperature));
  request.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  request.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  request.sampling.seed = absl::GetFlag(FLAGS_seed);
  request.stop_strings = absl::GetFlag(FLAGS_stop);
  request.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  if (request.max_new_tokens < 0) {
    return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  }
  if (absl::Status status = ValidateSamplingParams(request.sampling);
      !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", status.message()));
  }
  const std::string prompt = absl::GetFlag(FLAGS_prompt);

  auto engine_or = Engine::Create(options);
  if (!engine_or.ok()) return engine_or.status();
  Engine& engine = **engine_or;
  // The loaded model's footprint (weights, KV cache, buffers) before any
  // request; the peak below also counts the load's transient pages.
  const std::optional<int64_t> resident_after_load = ResidentBytes();

  const bool chat = absl::GetFlag(FLAGS_chat);
  auto tokens = chat ? engine.EncodeChat(prompt) : engine.EncodePrompt(prompt);
  if (!tokens.ok()) return tokens.status();
  request.prompt_tokens = *std::move(tokens);
  if (request.prompt_tokens.empty()) {
    return absl::InvalidArgumentError(
        "--prompt encodes to no tokens and the tokenizer adds no BOS; give a "
        "prompt");
  }

  const bool json = absl::GetFlag(FLAGS_json);
  TextCallback stream;
  if (!json) {
    stream = [](size_t, const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
  }
  auto result = engine.Generate(request, stream);
  if (!result.ok()) return result.status();

  const double decode_tokens =
      result->tokens.empty() ? 0 : result->tokens.size() - 1;
  const double decode_tps =
      result->decode_seconds > 0 ? decode_tokens / result->decode_seconds : 0;
  const double prefill_tps =
      result->prefill_seconds > 0
          ? result->prompt_tokens / result->prefill_seconds
          : 0;
  if (json) {
    nlohmann::json out;
    out["model"] = engine.Describe();
    out["synthetic"] = engine.weights().synthetic;
    out["fingerprint"] = engine.fingerprint().ToString();
    out["backend"] = engine.backend().description();
    out["prompt"] = prompt;
    out["chat"] = chat;
    out["prompt_token_ids"] = request.prompt_tokens;
    out["generated_token_ids"] = result->tokens;
    out["text"] = result->text;
    out["finish_reason"] = FinishReasonName(result->finish_reason);
    out["prefill_seconds"] = result->prefill_seconds;
    out["decode_seconds"] = result->decode_seconds;
    out["prefill_tokens_per_second"] = prefill_tps;
    out["decode_tokens_per_second"] = decode_tps;
    if (resident_after_load) {
      out["resident_bytes_after_load"] = *resident_after_load;
    }
    if (const std::optional<int64_t> peak = PeakResidentBytes()) {
      out["peak_resident_bytes"] = *peak;
    }
    nlohmann::json confidences = nlohmann::json::array();
    for (const TokenConfidence& c : result->confidences) {
      confidences.push_back({{"max_prob", c.max_prob},
                             {"max_logit", c.max_logit},
                             {"entropy", c.entropy}});
    }
    out["confidences"] = std::move(confidences);
    PrintJson(out);
  } else {
    std::cout << std::endl;  // Flush before the stderr summary line.
    std::fprintf(
        stderr,
        "[litestage-run] %lld prompt + %zu generated tokens, finish=%s, "
        "prefill %.1f tok/s, decode %.1f tok/s\n",
        static_cast<long long>(result->prompt_tokens), result->tokens.size(),
        FinishReasonName(result->finish_reason), prefill_tps, decode_tps);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) {
  return litestage::RunCommandLineTool(
      "litestage-run",
      "Generates text, or runs a multi-stage reasoning pipeline, locally "
      "with the litestage engine.\n"
      "  litestage-run --model <dir|file.gguf|synthetic:preset> --prompt "
      "<text> --max-new-tokens N\n"
      "  litestage-run --model <...> --pipeline tinythinker --question <text> "
      "--choices \"a|b|c|d\" --profile <file|full|even:K|last:K> "
      "[--early-exit-window N --early-exit-threshold T] [--json]\n",
      argc, argv, &litestage::ValidateFlags, &litestage::Run);
}
