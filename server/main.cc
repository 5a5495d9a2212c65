// litestage-server: the litestage gRPC service (docs/server.md).
//
//   litestage-server --model <dir|file.gguf|synthetic:preset> [--port 50051]
//                    [--metrics-port 9090] [--profiles a.json,b.json] ...
//
// Listens before the model loads (readiness NOT_SERVING until it is ready);
// SIGTERM or SIGINT drains: readiness NOT_SERVING, new requests refused,
// accepted ones finish within --grace-period, then exit 0.
#include <signal.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/registry.h"
#include "engine/util/flags.h"
#include "server/metrics.h"
#include "server/server.h"

ABSL_FLAG(std::string, model, "",
          "Required. Hugging Face model directory, a .gguf file, or "
          "synthetic:<preset> (random weights; presets: tiny, smollm2-135m, "
          "qwen2.5-0.5b, tinyllama-1.1b, qwen3-0.6b)");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on");
ABSL_FLAG(int32_t, port, 50051,
          "gRPC port; 0 picks a free one (printed as 'listening on ADDR' on "
          "stderr and written to --port-file)");
ABSL_FLAG(std::string, port_file, "",
          "Write the bound gRPC port (decimal, newline) to this file once "
          "listening (for scripts and tests with --port 0)");
ABSL_FLAG(int32_t, metrics_port, 9090,
          "Prometheus /metrics port on --host; 0 disables the exporter");
ABSL_FLAG(std::string, device, "cpu", litestage::kDeviceFlagHelp);
ABSL_FLAG(std::string, dtype, "auto", litestage::kDTypeFlagHelp);
ABSL_FLAG(int32_t, threads, 0,
          "Compute threads of the backend; 0 uses every hardware thread");
ABSL_FLAG(std::vector<std::string>, pipelines, {},
          "Comma-separated pipeline JSON files to serve besides the built-in "
          "tinythinker (docs/pipelines.md); requests pick them by name");
ABSL_FLAG(std::vector<std::string>, profiles, {},
          "Comma-separated skip-profile JSON files (docs/profiles.md), each "
          "validated against the model and its pipeline at start (a bad file "
          "exits 1 naming it); requests pick them by name. Built-ins full, "
          "even:K and last:K are always available");
ABSL_FLAG(std::string, default_pipeline, "tinythinker",
          "Pipeline of requests that name none");
ABSL_FLAG(std::string, default_profile, "full",
          "Profile of requests that name none: a built-in spec, or the name "
          "of a --profiles file (default for its own pipeline only)");
ABSL_FLAG(int64_t, max_queue, 64,
          "Accepted requests that may wait for a batch slot; beyond it new "
          "requests get UNAVAILABLE (retry with backoff or another replica)");
ABSL_FLAG(int64_t, max_batch, 32, "Most sequences in one forward step");
ABSL_FLAG(std::string, skip_set_batching, "auto",
          "auto: what the backend does well (mixed on the CPU); mixed: a step "
          "runs every sequence, each sub-layer over the rows that execute "
          "it; grouped: a step runs one skip set's sequences, skip sets "
          "taking turns (docs/server.md has the measurements)");
ABSL_FLAG(int64_t, kv_cache_tokens, 16384,
          "Token capacity of the KV cache shared by all running sequences");
ABSL_FLAG(int64_t, max_new_tokens, 512,
          "Limit on max_new_tokens per stage (Reason) or per request "
          "(Generate, also its default); larger requests get OUT_OF_RANGE");
ABSL_FLAG(double, grace_period, 30.0,
          "Seconds accepted requests get to finish after SIGTERM/SIGINT");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: serve TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls-cert");
ABSL_FLAG(uint64_t, synthetic_seed, 0, "Seed of synthetic random weights");
ABSL_FLAG(bool, shipped_profiles, true,
          "Offer the shipped profiles (profiles/*.json, compiled in) made for "
          "the loaded model");
ABSL_FLAG(bool, prefix_cache, true, litestage::kPrefixCacheFlagHelp);
ABSL_FLAG(bool, no_mmap, false,
          "Copy the weights into memory at load instead of serving them from "
          "the mapped model files, so the files may be replaced in place "
          "(see docs/server.md, Model files)");

namespace litestage {
namespace {

// Largest --max-queue / --max-batch: each waiting request holds its prompt
// and each batched sequence its activations; 65536 waiting and 4096 in a
// step are far past what one CPU process serves.
constexpr int64_t kMaxQueueFlag = 65536;
constexpr int64_t kMaxBatchFlag = 4096;

// Every numeric flag against its range (docs/server.md, "Limits"), before
// anything is loaded or bound.
absl::Status ValidateFlags() {
  return FirstError({
      CheckFlagRange("port", absl::GetFlag(FLAGS_port), 0, 65535),
      CheckFlagRange("metrics-port", absl::GetFlag(FLAGS_metrics_port), 0,
                     65535),
      CheckFlagRange("threads", absl::GetFlag(FLAGS_threads), 0,
                     kMaxThreadsFlag),
      CheckFlagRange("max-queue", absl::GetFlag(FLAGS_max_queue), 1,
                     kMaxQueueFlag),
      CheckFlagRange("max-batch", absl::GetFlag(FLAGS_max_batch), 1,
                     kMaxBatchFlag),
      CheckFlagRange("kv-cache-tokens", absl::GetFlag(FLAGS_kv_cache_tokens), 1,
                     kMaxKvCacheTokensFlag),
      CheckFlagRange("max-new-tokens", absl::GetFlag(FLAGS_max_new_tokens), 1,
                     kMaxNewTokensFlag),
      CheckDoubleFlagRange("grace-period", absl::GetFlag(FLAGS_grace_period), 0,
                           kMaxGracePeriodSeconds),
  });
}

int Run() {
  ServerOptions options;
  options.engine.model = absl::GetFlag(FLAGS_model);
  options.engine.device = absl::GetFlag(FLAGS_device);
  options.engine.synthetic_seed = absl::GetFlag(FLAGS_synthetic_seed);
  options.engine.backend.num_threads = absl::GetFlag(FLAGS_threads);
  options.engine.backend.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  options.engine.use_mmap = !absl::GetFlag(FLAGS_no_mmap);
  options.engine.prefix_cache = absl::GetFlag(FLAGS_prefix_cache);
  absl::StatusOr<std::optional<DType>> dtype =
      ParseMatrixDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    std::fprintf(stderr, "litestage-server: %s\n",
                 dtype.status().ToString().c_str());
    return 1;
  }
  options.engine.matrix_dtype = *dtype;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  options.pipeline_files = absl::GetFlag(FLAGS_pipelines);
  options.profile_files = absl::GetFlag(FLAGS_profiles);
  options.shipped_profiles = absl::GetFlag(FLAGS_shipped_profiles);
  options.default_pipeline = absl::GetFlag(FLAGS_default_pipeline);
  options.default_profile = absl::GetFlag(FLAGS_default_profile);
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.max_batch = absl::GetFlag(FLAGS_max_batch);
  absl::StatusOr<std::optional<SkipSetBatching>> skip_set_batching =
      ParseSkipSetBatching(absl::GetFlag(FLAGS_skip_set_batching));
  if (!skip_set_batching.ok()) {
    std::fprintf(stderr, "litestage-server: --skip-set-batching: %s\n",
                 std::string(skip_set_batching.status().message()).c_str());
    return 1;
  }
  options.skip_set_batching = *skip_set_batching;
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  options.metrics_registry = std::make_shared<prometheus::Registry>();
  const double grace = absl::GetFlag(FLAGS_grace_period);  // Validated.

  // Signals are taken synchronously by this thread (sigtimedwait); block
  // them before any thread starts so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::unique_ptr<MetricsHttpServer> metrics_server;
  const int32_t metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port != 0) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        StartMetricsServer(absl::StrCat(options.host, ":", metrics_port),
                           options.metrics_registry);
    if (!started.ok()) {
      std::fprintf(stderr, "litestage-server: --metrics-port: %s\n",
                   started.status().ToString().c_str());
      return 1;
    }
    metrics_server = *std::move(started);
  }

  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  absl::StatusOr<std::unique_ptr<LiteStageServer>> server =
      LiteStageServer::Start(std::move(options));
  if (!server.ok()) {
    std::fprintf(stderr, "litestage-server: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "litestage-server: listening on %s\n",
               (*server)->address().c_str());
  if (!port_file.empty()) {
    // Written whole under a temporary name, then renamed: a reader never
    // sees a partial number.
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << (*server)->port() << "\n";
      if (!out) {
        std::fprintf(stderr, "litestage-server: cannot write --port-file %s\n",
                     port_file.c_str());
        (*server)->Shutdown(0);
        return 1;
      }
    }
    std::rename(tmp.c_str(), port_file.c_str());
  }

  bool reported_ready = false;
  while (true) {
    timespec timeout = {0, 200 * 1000 * 1000};
    const int signal = sigtimedwait(&signals, nullptr, &timeout);
    if (signal == SIGTERM || signal == SIGINT) {
      std::fprintf(stderr,
                   "litestage-server: %s: draining (grace period %.1f s)\n",
                   signal == SIGTERM ? "SIGTERM" : "SIGINT", grace);
      (*server)->Shutdown(grace);
      std::fprintf(stderr, "litestage-server: stopped\n");
      return 0;
    }
    const absl::Status load = (*server)->load_status();
    if (!load.ok()) {
      std::fprintf(stderr, "litestage-server: %s\n", load.ToString().c_str());
      (*server)->Shutdown(0);
      return 1;
    }
    if (!reported_ready && (*server)->ready()) {
      reported_ready = true;
      std::fprintf(stderr, "litestage-server: ready\n");
    }
  }
}

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves multi-stage reasoning with LiteStage skipping over gRPC "
      "(litestage.v1.LiteStage, docs/server.md).\n"
      "  litestage-server --model <dir|file.gguf|synthetic:preset> "
      "[--port 50051] [--metrics-port 9090] [--profiles a.json,...]\n"
      "Flags may be spelled with dashes or underscores.");
  litestage::ParseFlagsAllowingDashes(argc, argv);
  if (const absl::Status flags = litestage::ValidateFlags(); !flags.ok()) {
    std::fprintf(stderr, "litestage-server: %s\n",
                 std::string(flags.message()).c_str());
    return litestage::kUsageExitCode;
  }
  if (absl::GetFlag(FLAGS_model).empty()) {
    std::fprintf(stderr,
                 "litestage-server: --model is required (see --help)\n");
    return 1;
  }
  return litestage::Run();
}
