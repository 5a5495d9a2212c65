// litestage-run: local generation with the litestage engine.
//
//   litestage-run --model <dir|file.gguf|synthetic:preset> --prompt <text>
//                 --max-new-tokens N [--temperature T] [--top-k K] [--top-p P]
//                 [--seed S] [--chat] [--json]
//
// stdout carries only the generated continuation (streamed as it decodes), or
// with --json one JSON object; every diagnostic goes to stderr.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "engine/model/fingerprint.h"
#include "engine/util/flags.h"
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
ABSL_FLAG(std::string, device, "cpu", "Compute device: cpu");
ABSL_FLAG(std::string, dtype, "auto",
          "Weight dtype for matrices: auto (as stored; bf16 for synthetic), "
          "f32 or bf16");
ABSL_FLAG(int32_t, threads, 0, "Worker threads; 0 uses every hardware thread");
ABSL_FLAG(uint64_t, synthetic_seed, 0, "Seed of synthetic random weights");

namespace litestage {
namespace {

absl::StatusOr<std::optional<DType>> ParseDType(const std::string& name) {
  if (name == "auto") return std::optional<DType>();
  if (name == "f32") return std::optional<DType>(DType::kF32);
  if (name == "bf16") return std::optional<DType>(DType::kBF16);
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype must be auto, f32 or bf16, got '", name, "'"));
}

absl::Status Run() {
  EngineOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  if (options.model.empty())
    return absl::InvalidArgumentError("--model is required");
  options.device = absl::GetFlag(FLAGS_device);
  options.synthetic_seed = absl::GetFlag(FLAGS_synthetic_seed);
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  auto dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return dtype.status();
  options.matrix_dtype = *dtype;

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
    out["fingerprint"] = ComputeModelFingerprint(engine.weights()).ToString();
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
    nlohmann::json confidences = nlohmann::json::array();
    for (const TokenConfidence& c : result->confidences) {
      confidences.push_back({{"max_prob", c.max_prob},
                             {"max_logit", c.max_logit},
                             {"entropy", c.entropy}});
    }
    out["confidences"] = std::move(confidences);
    // Replace invalid UTF-8 (possible from random weights) rather than throw.
    std::cout << out.dump(-1, ' ', false,
                          nlohmann::json::error_handler_t::replace)
              << "\n";
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
  absl::SetProgramUsageMessage(
      "Generates text locally with the litestage engine.\n"
      "  litestage-run --model <dir|file.gguf|synthetic:preset> --prompt "
      "<text> "
      "--max-new-tokens N\n"
      "Flags may be spelled with dashes or underscores.");
  litestage::ParseFlagsAllowingDashes(argc, argv);
  const absl::Status status = litestage::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "litestage-run: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
