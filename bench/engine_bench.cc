// engine_bench: litestage's side of `make bench`.
//
//   engine_bench --models_dir build/bench-models --threads 2 --json_out
//   out.json
//
// Loads the model directories bench/hf_peer.py prepares (<preset>-f32 and
// <preset>-bf16: real shapes, random weights, safetensors) through
// Engine::Create, the path a user's model takes, and measures with the same
// prompts, lengths and thread count as the transformers peer:
//   * prefill tokens/s: one --prefill_tokens prompt to its first token;
//   * decode tokens/s at each --batches size: GenerateBatch over that many
//     --decode_prompt_tokens prompts, --new_tokens greedy tokens each (EOS
//     ignored); tokens after the first / decode seconds;
//   * the machine's read bandwidth, measured here with the same threads (sum
//     of a --bandwidth_mb float buffer with the widest vector loads), before
//     the first model and after each (bench/run.sh runs one model per
//     invocation, alternating with the transformers peer);
//   * weight bytes streamed per decode step (every layer matrix + lm_head),
//     achieved bandwidth = weight bytes x decode steps/s, and the batch-1
//     "floor" tokens/s = read bandwidth / weight bytes that batch-1 decode
//     cannot beat, with our fraction of it.
// Each figure is the median of --reps runs after --warmup untimed ones.
// Prints a table to stdout and writes every sample as JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/read_bandwidth.h"
#include "engine/runtime/engine.h"
#include "engine/util/check.h"
#include "engine/util/flags.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, models_dir, "build/bench-models",
          "Directory holding <preset>-<dtype>/ models made by bench/hf_peer.py "
          "prepare");
ABSL_FLAG(std::vector<std::string>, presets,
          std::vector<std::string>({"smollm2-135m", "qwen2.5-0.5b"}),
          "Comma-separated presets");
ABSL_FLAG(std::vector<std::string>, dtypes,
          std::vector<std::string>({"f32", "bf16"}),
          "Comma-separated weight dtypes: f32, bf16");
ABSL_FLAG(
    int32_t, threads, 0,
    "Worker threads (engine and bandwidth probe); 0: every hardware thread");
ABSL_FLAG(int64_t, prefill_tokens, 128,
          "Prompt length of the prefill measurement");
ABSL_FLAG(int64_t, decode_prompt_tokens, 32,
          "Prompt length per sequence before decoding");
ABSL_FLAG(int64_t, new_tokens, 32,
          "Tokens generated per sequence in the decode measurement");
ABSL_FLAG(std::vector<std::string>, batches,
          std::vector<std::string>({"1", "8"}),
          "Comma-separated decode batch sizes");
ABSL_FLAG(int32_t, reps, 3,
          "Timed repetitions per figure (the median is reported)");
ABSL_FLAG(int32_t, warmup, 1, "Untimed repetitions before the timed ones");
ABSL_FLAG(int64_t, bandwidth_mb, 512,
          "Size of the read-bandwidth probe buffer in MiB");
ABSL_FLAG(int32_t, bandwidth_passes, 5,
          "Timed passes of each read-bandwidth probe");
ABSL_FLAG(std::string, json_out, "",
          "Write every figure and sample here as JSON");

namespace litestage {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid]
                                : 0.5 * (values[mid - 1] + values[mid]);
}

// Bytes of every weight matrix one decode step reads: each layer's
// projections and the lm_head. The embedding lookup reads one row and the
// norm vectors are negligible, so neither is counted.
int64_t DecodeWeightBytes(const ModelWeights& weights) {
  int64_t bytes = 0;
  for (const LayerWeights& layer : weights.layers) {
    for (const Tensor* matrix :
         {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
          &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
      bytes += static_cast<int64_t>(matrix->nbytes());
    }
  }
  return bytes + static_cast<int64_t>(weights.lm_head.nbytes());
}

// Row `row` of the shared bench prompt (same formula as bench/hf_peer.py).
std::vector<int32_t> PromptRow(int64_t row, int64_t length,
                               int64_t vocab_size) {
  const int64_t modulus = std::min<int64_t>(vocab_size, 32000);
  std::vector<int32_t> tokens(length);
  for (int64_t i = 0; i < length; ++i) {
    tokens[i] = static_cast<int32_t>((17 + 7919 * row + 104729 * i) % modulus);
  }
  return tokens;
}

struct BenchSettings {
  int threads = 1;
  int64_t prefill_tokens = 0;
  int64_t decode_prompt_tokens = 0;
  int64_t new_tokens = 0;
  std::vector<int64_t> batches;
  int reps = 1;
  int warmup = 0;
};

// Seconds from the start of GenerateBatch to the first token of one prompt.
absl::StatusOr<double> TimePrefill(Engine& engine,
                                   const BenchSettings& settings) {
  GenerationRequest request;
  request.prompt_tokens =
      PromptRow(0, settings.prefill_tokens, engine.config().vocab_size);
  request.max_new_tokens = 1;
  request.ignore_eos = true;
  LS_ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                      engine.GenerateBatch({&request, 1}));
  return results[0].prefill_seconds;
}

// Decode tokens/s of `batch` sequences generating together.
absl::StatusOr<double> TimeDecode(Engine& engine, const BenchSettings& settings,
                                  int64_t batch) {
  std::vector<GenerationRequest> requests(batch);
  for (int64_t row = 0; row < batch; ++row) {
    requests[row].prompt_tokens = PromptRow(row, settings.decode_prompt_tokens,
                                            engine.config().vocab_size);
    requests[row].max_new_tokens = settings.new_tokens;
    requests[row].ignore_eos = true;
  }
  LS_ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                      engine.GenerateBatch(requests));
  int64_t decoded_tokens = 0;
  double decode_seconds = 0.0;
  for (const GenerationResult& result : results) {
    if (static_cast<int64_t>(result.tokens.size()) != settings.new_tokens) {
      return absl::InternalError(absl::StrCat(
          "decode benchmark: a sequence produced ", result.tokens.size(),
          " tokens, expected ", settings.new_tokens));
    }
    // The first token comes from the prefill; the rest are decode steps,
    // which every sequence of the batch shares.
    decoded_tokens += static_cast<int64_t>(result.tokens.size()) - 1;
    decode_seconds = std::max(decode_seconds, result.decode_seconds);
  }
  if (decode_seconds <= 0.0)
    return absl::InternalError("decode benchmark: no decode time");
  return static_cast<double>(decoded_tokens) / decode_seconds;
}

absl::StatusOr<nlohmann::json> BenchModel(const std::string& preset,
                                          const std::string& dtype_name,
                                          const BenchSettings& settings) {
  const std::string model_dir = absl::StrCat(absl::GetFlag(FLAGS_models_dir),
                                             "/", preset, "-", dtype_name);
  EngineOptions options;
  options.model = model_dir;
  if (dtype_name == "f32") {
    options.matrix_dtype = DType::kF32;
  } else if (dtype_name == "bf16") {
    options.matrix_dtype = DType::kBF16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dtypes: unknown dtype '", dtype_name, "' (f32 or bf16)"));
  }
  options.backend.num_threads = settings.threads;
  int64_t largest_batch = 1;
  for (int64_t b : settings.batches) largest_batch = std::max(largest_batch, b);
  // Room for the biggest measurement, with a block of slack per sequence.
  options.backend.kv_cache_tokens =
      std::max(settings.prefill_tokens + 1,
               largest_batch *
                   (settings.decode_prompt_tokens + settings.new_tokens)) +
      largest_batch * options.backend.kv_block_size;
  LS_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  std::cerr << "[engine_bench] " << preset << " " << dtype_name << ": "
            << engine->Describe() << " on " << engine->backend().description()
            << "\n";

  const int64_t weight_bytes = DecodeWeightBytes(engine->weights());
  nlohmann::json entry = {{"preset", preset},
                          {"dtype", dtype_name},
                          {"model_dir", model_dir},
                          {"model", engine->Describe()},
                          {"backend", engine->backend().description()},
                          {"weight_bytes", weight_bytes}};

  for (int i = 0; i < settings.warmup; ++i) {
    LS_RETURN_IF_ERROR(TimePrefill(*engine, settings).status());
  }
  std::vector<double> prefill_seconds;
  for (int i = 0; i < settings.reps; ++i) {
    LS_ASSIGN_OR_RETURN(double seconds, TimePrefill(*engine, settings));
    prefill_seconds.push_back(seconds);
  }
  entry["prefill_seconds"] = prefill_seconds;
  entry["prefill_tokens_per_s"] =
      static_cast<double>(settings.prefill_tokens) / Median(prefill_seconds);

  nlohmann::json decode = nlohmann::json::object();
  for (int64_t batch : settings.batches) {
    for (int i = 0; i < settings.warmup; ++i) {
      LS_RETURN_IF_ERROR(TimeDecode(*engine, settings, batch).status());
    }
    std::vector<double> rates;
    for (int i = 0; i < settings.reps; ++i) {
      LS_ASSIGN_OR_RETURN(double rate, TimeDecode(*engine, settings, batch));
      rates.push_back(rate);
    }
    const double tokens_per_s = Median(rates);
    const double steps_per_s = tokens_per_s / static_cast<double>(batch);
    decode[std::to_string(batch)] = {
        {"tokens_per_s", tokens_per_s},
        {"samples_tokens_per_s", rates},
        {"achieved_bandwidth_bytes_per_s",
         steps_per_s * static_cast<double>(weight_bytes)}};
  }
  entry["decode"] = decode;
  return entry;
}

void PrintTable(const nlohmann::json& report) {
  const double gb = 1e9;
  std::printf(
      "\nlitestage engine_bench: %d threads, read bandwidth %.2f GB/s "
      "(median)\n",
      report["threads"].get<int>(),
      report["read_bandwidth_bytes_per_s"].get<double>() / gb);
  std::printf("%-14s %-5s %9s %10s %9s %9s %11s %9s %8s\n", "preset", "dtype",
              "weights", "prefill", "dec b1", "dec b8", "achieved", "floor",
              "of floor");
  std::printf("%-14s %-5s %9s %10s %9s %9s %11s %9s %8s\n", "", "", "MB",
              "tok/s", "tok/s", "tok/s", "GB/s (b1)", "tok/s", "");
  for (const nlohmann::json& entry : report["results"]) {
    const nlohmann::json& decode = entry["decode"];
    // Batches other than 1 and 8 are in the JSON only; "-" when not run.
    const auto rate = [&](const char* batch) {
      return decode.contains(batch)
                 ? absl::StrFormat("%.2f",
                                   decode[batch]["tokens_per_s"].get<double>())
                 : std::string("-");
    };
    const double achieved =
        decode.contains("1")
            ? decode["1"]["achieved_bandwidth_bytes_per_s"].get<double>()
            : 0.0;
    std::printf("%-14s %-5s %9.1f %10.1f %9s %9s %11.2f %9.2f %7.0f%%\n",
                entry["preset"].get<std::string>().c_str(),
                entry["dtype"].get<std::string>().c_str(),
                entry["weight_bytes"].get<double>() / 1e6,
                entry["prefill_tokens_per_s"].get<double>(), rate("1").c_str(),
                rate("8").c_str(), achieved / gb,
                entry["floor_tokens_per_s"].get<double>(),
                100.0 * entry.value("fraction_of_floor", 0.0));
  }
}

absl::Status Run() {
  BenchSettings settings;
  settings.threads = absl::GetFlag(FLAGS_threads);
  if (settings.threads <= 0) {
    settings.threads =
        std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }
  settings.prefill_tokens = absl::GetFlag(FLAGS_prefill_tokens);
  settings.decode_prompt_tokens = absl::GetFlag(FLAGS_decode_prompt_tokens);
  settings.new_tokens = absl::GetFlag(FLAGS_new_tokens);
  settings.reps = absl::GetFlag(FLAGS_reps);
  settings.warmup = absl::GetFlag(FLAGS_warmup);
  for (const std::string& text : absl::GetFlag(FLAGS_batches)) {
    int64_t batch = 0;
    // 4096 sequences in one step is far past a CPU batch; larger values
    // would allocate activations for nothing.
    if (!absl::SimpleAtoi(text, &batch) || batch < 1 || batch > 4096) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--batches: '", text, "' is not an integer in [1, 4096]"));
    }
    settings.batches.push_back(batch);
  }
  if (settings.prefill_tokens < 1 || settings.decode_prompt_tokens < 1 ||
      settings.new_tokens < 2 || settings.reps < 1 || settings.warmup < 0) {
    return absl::InvalidArgumentError(
        "--prefill_tokens and --decode_prompt_tokens must be >= 1, "
        "--new_tokens >= 2, "
        "--reps >= 1, --warmup >= 0");
  }
  const int64_t bandwidth_mb = absl::GetFlag(FLAGS_bandwidth_mb);
  const int bandwidth_passes = absl::GetFlag(FLAGS_bandwidth_passes);
  if (bandwidth_mb < 1 || bandwidth_passes < 1) {
    return absl::InvalidArgumentError(
        "--bandwidth_mb and --bandwidth_passes must be >= 1");
  }

  // The probe runs before the first model and after each one, so its
  // samples see the machine as the measurements did; the median of all
  // passes is the machine's read bandwidth for this run.
  std::vector<double> bandwidth =
      MeasureReadBandwidth(bandwidth_mb, settings.threads, bandwidth_passes);
  std::cerr << absl::StrFormat(
      "[engine_bench] read bandwidth (%d threads, %d MiB): %.2f GB/s\n",
      settings.threads, bandwidth_mb, Median(bandwidth) / 1e9);

  nlohmann::json report = {
      {"peer", "litestage"},
      {"threads", settings.threads},
      {"settings",
       {{"prefill_tokens", settings.prefill_tokens},
        {"decode_prompt_tokens", settings.decode_prompt_tokens},
        {"new_tokens", settings.new_tokens},
        {"batches", settings.batches},
        {"reps", settings.reps},
        {"warmup", settings.warmup},
        {"bandwidth_mb", bandwidth_mb},
        {"bandwidth_passes", bandwidth_passes}}},
      {"results", nlohmann::json::array()}};
  std::vector<nlohmann::json> entries;
  for (const std::string& preset : absl::GetFlag(FLAGS_presets)) {
    for (const std::string& dtype : absl::GetFlag(FLAGS_dtypes)) {
      LS_ASSIGN_OR_RETURN(nlohmann::json entry,
                          BenchModel(preset, dtype, settings));
      entries.push_back(std::move(entry));
      const std::vector<double> after = MeasureReadBandwidth(
          bandwidth_mb, settings.threads, bandwidth_passes);
      bandwidth.insert(bandwidth.end(), after.begin(), after.end());
    }
  }
  const double read_bandwidth = Median(bandwidth);
  report["read_bandwidth_bytes_per_s"] = read_bandwidth;
  report["read_bandwidth_samples_bytes_per_s"] = bandwidth;
  report["read_bandwidth_probe_isa"] = ReadBandwidthProbeIsa();
  for (nlohmann::json& entry : entries) {
    // Batch-1 decode streams every weight byte per token, so it cannot beat
    // read bandwidth / weight bytes.
    const double floor_tokens_per_s =
        read_bandwidth / entry["weight_bytes"].get<double>();
    entry["floor_tokens_per_s"] = floor_tokens_per_s;
    if (entry["decode"].contains("1")) {
      entry["fraction_of_floor"] =
          entry["decode"]["1"]["tokens_per_s"].get<double>() /
          floor_tokens_per_s;
    }
    report["results"].push_back(std::move(entry));
  }

  PrintTable(report);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << report.dump(2) << "\n";
    if (!out)
      return absl::UnavailableError(
          absl::StrCat(json_out, ": cannot write the report"));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Benchmarks litestage on bench/hf_peer.py's model directories; see "
      "bench/README.md");
  litestage::ParseFlagsAllowingDashes(argc, argv);
  // Every numeric flag against its range (docs/server.md, "Limits"). The
  // read-bandwidth buffer is allocated whole: 4 GiB is far past any
  // last-level cache and still fits the machines we measure on.
  using litestage::CheckFlagRange;
  using litestage::kMaxCountFlag;
  if (const absl::Status flags = litestage::FirstError({
          CheckFlagRange("prefill-tokens", absl::GetFlag(FLAGS_prefill_tokens),
                         1, litestage::kMaxNewTokensFlag),
          CheckFlagRange("decode-prompt-tokens",
                         absl::GetFlag(FLAGS_decode_prompt_tokens), 1,
                         litestage::kMaxNewTokensFlag),
          CheckFlagRange("new-tokens", absl::GetFlag(FLAGS_new_tokens), 1,
                         litestage::kMaxNewTokensFlag),
          CheckFlagRange("reps", absl::GetFlag(FLAGS_reps), 1, kMaxCountFlag),
          CheckFlagRange("warmup", absl::GetFlag(FLAGS_warmup), 0,
                         kMaxCountFlag),
          CheckFlagRange("bandwidth-mb", absl::GetFlag(FLAGS_bandwidth_mb), 0,
                         int64_t{4} << 10),
          CheckFlagRange("bandwidth-passes",
                         absl::GetFlag(FLAGS_bandwidth_passes), 1,
                         kMaxCountFlag),
      });
      !flags.ok()) {
    std::cerr << "engine_bench: " << flags.message() << "\n";
    return litestage::kUsageExitCode;
  }
  const absl::Status status = litestage::Run();
  if (!status.ok()) {
    std::cerr << "engine_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
