// litestage-cli: a command-line client of the litestage gRPC service
// (proto/litestage/v1/litestage.proto) and a load generator.
// This file is the usage text and the dispatch; cli_common.h lists where
// each subcommand lives.
//
//   litestage-cli reason   --question Q [--choices "a|b|c"] [--json] ...
//   litestage-cli stream   --question Q [--choices "a|b|c"] [--json] ...
//   litestage-cli generate --prompt P [--chat] [--stream] [--json] ...
//   litestage-cli info | profiles | health
//   litestage-cli bench    --concurrency C --requests N | --duration S ...
//
// stdout carries results; diagnostics and RPC errors go to stderr. Exit
// codes: 0 success, 1 usage error, 2 RPC error (printed as
// "litestage-cli: <CODE_NAME>: <message>"), 3 health check answered but not
// SERVING. docs/client.md describes every subcommand.
#include <algorithm>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli_common.h"
#include "client/cli_flags.h"
#include "engine/util/flags.h"

namespace litestage::cli {
namespace {

constexpr char kUsage[] =
    R"(the client of the litestage gRPC service and a load generator.

Usage: litestage-cli <subcommand> [flags]

Subcommands:
  reason    Reason RPC: run a question through a pipeline's stages; prints
            each stage (name, output, tokens, seconds, skipped sub-layers,
            early exit) and the answer. --question Q [--choices "a|b|c|d"]
            [--pipeline --profile --early-exit-window N
             --early-exit-threshold T --early-exit-confidence
             --max-new-tokens --temperature --top-k --top-p --seed
             --request-id] [--json]
  stream    ReasonStream RPC: the same flags; prints tokens as they arrive
            under stage headers, then the answer (--json: one line per event)
  generate  Generate RPC: --prompt P [--chat --max-new-tokens --stop
            --profile --stage --stream] [--json]
  info      GetServerInfo RPC: model, backend, pipelines, profiles, limits
  profiles  ListProfiles RPC [--pipeline NAME]
  health    grpc.health.v1 Check [--service NAME]; prints SERVING or
            NOT_SERVING, exit 0 only when SERVING
  bench     Load generator: --concurrency C --requests N | --duration S
            [--questions FILE --method reason|generate] plus reason flags;
            reports p50/p90/p99 latency end to end and per stage,
            throughput and status codes [--json] [--allow-errors]

Common flags: --target host:port|dns:///name:port (round_robin)
  --timeout SECONDS --tls --tls-ca FILE --tls-server-name NAME --json
Flag names take dashes or underscores (--max-new-tokens, --max_new_tokens).

Exit codes: 0 success; 1 usage error; 2 RPC error (stderr:
"litestage-cli: <CODE_NAME>: <message>"; bench: any request failed);
3 health answered but not SERVING.

Examples:
  litestage-cli reason --target localhost:50051 --question "..." \
      --choices "a|b|c|d" --json
  litestage-cli health --target localhost:50051
  litestage-cli bench --target localhost:50051 --concurrency 8 --requests 32)";

}  // namespace

int Main(int argc, char** argv) {
  absl::FlagsUsageConfig usage_config;
  // --help lists this file's flags (absl matches the program name otherwise,
  // and litestage-cli is spelt with a dash).
  usage_config.contains_help_flags = [](absl::string_view filename) {
    return absl::StrContains(filename, "client/cli_flags.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(kUsage);
  const std::vector<char*> positional = ParseFlagsAllowingDashes(argc, argv);
  if (positional.size() < 2) return UsageError("missing subcommand");
  if (positional.size() > 2) {
    return UsageError(
        absl::StrCat("unexpected argument '", positional[2],
                     "' (flags take --name=value or --name value)"));
  }
  const std::string subcommand = positional[1];
  if (absl::GetFlag(FLAGS_timeout) <= 0) {
    return UsageError("--timeout must be positive");
  }
  if (const absl::Status flags = ValidateFlags(); !flags.ok()) {
    return UsageError(std::string(flags.message()));
  }
  static const char* const kSubcommands[] = {
      "reason", "stream", "generate", "info", "profiles", "health", "bench"};
  if (std::find(std::begin(kSubcommands), std::end(kSubcommands), subcommand) ==
      std::end(kSubcommands)) {
    return UsageError(
        absl::StrCat("unknown subcommand '", subcommand,
                     "'; one of: ", absl::StrJoin(kSubcommands, ", ")));
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel();
  if (!channel.ok()) return UsageError(std::string(channel.status().message()));
  if (subcommand == "health") return RunHealth(*channel);
  if (subcommand == "bench") return RunBench(*channel);
  std::unique_ptr<pb::LiteStage::Stub> stub = pb::LiteStage::NewStub(*channel);
  if (subcommand == "reason") return RunReason(*stub);
  if (subcommand == "stream") return RunStream(*stub);
  if (subcommand == "generate") return RunGenerate(*stub);
  if (subcommand == "info") return RunInfo(*stub);
  return RunProfiles(*stub);
}

}  // namespace litestage::cli

int main(int argc, char** argv) { return litestage::cli::Main(argc, argv); }
