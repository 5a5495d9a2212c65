// litestage-cli: a command-line client of the litestage gRPC service
// (proto/litestage/v1/litestage.proto) and a load generator.
// (~960 lines: one subcommand per RPC plus bench; the shared pieces, load
// statistics, live in load_stats.h. Splitting the subcommands into files is
// due with issue 12's move of the binaries to the top level.)
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
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/load_stats.h"
#include "engine/runtime/early_exit.h"
#include "engine/stages/dataset.h"
#include "engine/util/flags.h"
#include "engine/util/mapped_file.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "litestage/v1/litestage.grpc.pb.h"
#include "litestage/v1/litestage.pb.h"
#include "nlohmann/json.hpp"

// Connection (every subcommand).
ABSL_FLAG(std::string, target, "localhost:50051",
          "Server address: host:port, or dns:///name:port to balance "
          "round_robin across every address the name resolves to");
ABSL_FLAG(double, timeout, 300.0, "Deadline of each RPC, seconds");
ABSL_FLAG(bool, tls, false, "Connect with TLS (system root certificates)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of root certificates to trust (implies --tls)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Server name to verify the certificate against, overriding the "
          "target's host (implies --tls)");
ABSL_FLAG(bool, json, false,
          "Print the response as JSON (proto field names; stream: one line "
          "per event; bench: one report object)");

// reason, stream, bench.
ABSL_FLAG(std::string, question, "", "Question (reason, stream)");
ABSL_FLAG(std::string, choices, "",
          "Answer choices separated by '|'; empty: the pipeline's defaults");
ABSL_FLAG(std::string, pipeline, "",
          "Pipeline name; empty: the server's default (profiles: only "
          "profiles usable with this pipeline)");
ABSL_FLAG(std::string, profile, "",
          "Skip profile name (full, even:K, last:K, or one the server "
          "loaded); empty: the server's default");
ABSL_FLAG(int64_t, early_exit_window, -1,
          "Early-exit window for every stage, replacing the profile's; 0 "
          "disables early exit, -1 keeps the profile's settings");
ABSL_FLAG(double, early_exit_threshold, 0.0,
          "Early-exit threshold (with --early-exit-window)");
ABSL_FLAG(std::string, early_exit_confidence, "",
          "Early-exit confidence: max_prob (default) or max_logit");
ABSL_FLAG(int64_t, early_exit_min_tokens, 0,
          "Tokens every stage keeps before early exit may fire");
ABSL_FLAG(int64_t, max_new_tokens, 0,
          "reason/stream/bench: caps every stage's max_new_tokens; generate: "
          "tokens to generate. 0: the pipeline's or the server's default");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int32_t, top_k, 0, "Sample among the K most likely; 0 disables");
ABSL_FLAG(double, top_p, 0.0, "Nucleus mass in (0, 1]; 0 or 1 disables");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::string, request_id, "",
          "Request id echoed by the server; empty: the server makes one");

// generate.
ABSL_FLAG(std::string, prompt, "", "Prompt (generate)");
ABSL_FLAG(bool, chat, false,
          "generate: format the prompt as one user turn of the chat template");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate: comma-separated stop strings");
ABSL_FLAG(std::string, stage, "",
          "generate: the profile stage whose skip set and early exit apply");
ABSL_FLAG(bool, split_special_tokens, false,
          "generate: encode special-token text in a raw prompt as plain text "
          "(chat prompts always are)");
ABSL_FLAG(bool, stream, false,
          "generate: use GenerateStream and print tokens as they arrive");

// health.
ABSL_FLAG(std::string, service, "litestage.v1.LiteStage",
          "health: service to check; \"\" is the server's liveness");

// bench.
ABSL_FLAG(int32_t, concurrency, 1, "bench: concurrent client threads");
ABSL_FLAG(int64_t, requests, 0,
          "bench: requests to send in all; 0 with --duration 0 sends 16");
ABSL_FLAG(double, duration, 0.0,
          "bench: seconds to keep sending (with --requests: whichever ends "
          "first)");
ABSL_FLAG(std::string, questions, "",
          "bench: question file (OBQA/CSQA JSONL, StrategyQA JSON, or JSONL "
          "of {question, choices}); empty: built-in questions");
ABSL_FLAG(int64_t, questions_limit, 0,
          "bench: use the first N questions of --questions; 0: all");
ABSL_FLAG(std::string, method, "reason",
          "bench: RPC to load: reason or generate (the question as prompt)");
ABSL_FLAG(bool, allow_errors, false,
          "bench: exit 0 even when some requests failed");

namespace litestage {
namespace {

namespace pb = ::litestage::v1;

constexpr int kExitOk = 0;
constexpr int kExitUsage = kUsageExitCode;
constexpr int kExitRpcError = 2;
constexpr int kExitNotServing = 3;

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

// ---------------------------------------------------------------------------
// Errors and output helpers.

std::string CodeName(grpc::StatusCode code) {
  // gRPC and absl share the canonical code numbers.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

int RpcError(const grpc::Status& status) {
  std::cerr << "litestage-cli: " << CodeName(status.error_code()) << ": "
            << status.error_message() << "\n";
  return kExitRpcError;
}

// The exit code of a finished server stream: its status, and whether the
// final result message arrived.
template <typename Reader>
int FinishStream(Reader& reader, bool got_result) {
  const grpc::Status status = reader.Finish();
  if (!status.ok()) {
    std::cout << std::flush;
    return RpcError(status);
  }
  if (!got_result) {
    std::cerr << "litestage-cli: the stream ended without a result\n";
    return kExitRpcError;
  }
  return kExitOk;
}

// Every numeric flag against its range (docs/server.md, "Limits"). -1 (the
// default) leaves the early-exit window to the server's profile; 0 for
// max-new-tokens, top-k, top-p, requests and duration means "server default"
// or "unbounded" as each flag's help says.
absl::Status ValidateFlags() {
  return FirstError({
      CheckDoubleFlagRange("timeout", absl::GetFlag(FLAGS_timeout), 0,
                           kMaxDurationSeconds),
      CheckEarlyExitFlags(absl::GetFlag(FLAGS_early_exit_window),
                          absl::GetFlag(FLAGS_early_exit_threshold),
                          absl::GetFlag(FLAGS_early_exit_min_tokens),
                          kMaxEarlyExitWindow, kMaxEarlyExitMinTokens),
      CheckFlagRange("max-new-tokens", absl::GetFlag(FLAGS_max_new_tokens), 0,
                     kMaxNewTokensFlag),
      CheckSamplingFlags(absl::GetFlag(FLAGS_temperature),
                         absl::GetFlag(FLAGS_top_k),
                         absl::GetFlag(FLAGS_top_p)),
      CheckFlagRange("concurrency", absl::GetFlag(FLAGS_concurrency), 1,
                     kMaxThreadsFlag),
      CheckFlagRange("requests", absl::GetFlag(FLAGS_requests), 0,
                     kMaxCountFlag),
      CheckDoubleFlagRange("duration", absl::GetFlag(FLAGS_duration), 0,
                           kMaxDurationSeconds),
      CheckFlagRange("questions-limit", absl::GetFlag(FLAGS_questions_limit), 0,
                     kMaxCountFlag),
  });
}

int UsageError(const std::string& message) {
  std::cerr << "litestage-cli: " << message
            << "\nRun 'litestage-cli --help' for the subcommands and flags.\n";
  return kExitUsage;
}

// Proto JSON with the .proto field names and every field present (an empty
// answer is "" rather than missing), on one line. int64 fields are strings,
// as the proto3 JSON mapping specifies.
std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status =
      google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    // Only reachable for malformed messages (e.g. invalid UTF-8).
    return nlohmann::json({{"error", status.ToString()}}).dump();
  }
  return json;
}

void PrintJsonLine(const google::protobuf::Message& message) {
  std::cout << ToJson(message) << "\n" << std::flush;
}

std::string Indent(const std::string& text, const std::string& prefix) {
  return prefix + absl::StrReplaceAll(text, {{"\n", "\n" + prefix}});
}

std::string Seconds(double seconds) {
  return absl::StrFormat("%.3f s", seconds);
}

// ---------------------------------------------------------------------------
// Channel and contexts.

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel() {
  const std::string ca_path = absl::GetFlag(FLAGS_tls_ca);
  const std::string server_name = absl::GetFlag(FLAGS_tls_server_name);
  const bool use_tls =
      absl::GetFlag(FLAGS_tls) || !ca_path.empty() || !server_name.empty();
  grpc::ChannelArguments arguments;
  // One subchannel per resolved address, requests spread over them; with a
  // single address this is the same as pick_first.
  arguments.SetLoadBalancingPolicyName("round_robin");
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (use_tls) {
    grpc::SslCredentialsOptions options;
    if (!ca_path.empty()) {
      absl::StatusOr<std::string> roots = ReadFileToString(ca_path);
      if (!roots.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls-ca ", ca_path, ": ", roots.status().message()));
      }
      options.pem_root_certs = *std::move(roots);
    }
    if (!server_name.empty()) arguments.SetSslTargetNameOverride(server_name);
    credentials = grpc::SslCredentials(options);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), credentials,
                                   arguments);
}

void SetDeadline(grpc::ClientContext& context) {
  const double timeout = absl::GetFlag(FLAGS_timeout);
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::duration<double>(timeout)));
}

// ---------------------------------------------------------------------------
// Requests from flags.

std::vector<std::string> SplitChoices(const std::string& choices) {
  if (choices.empty()) return {};
  // Empty choices are kept so that the server rejects them by name.
  return absl::StrSplit(choices, '|');
}

void FillSampling(pb::SamplingParams& sampling) {
  sampling.set_temperature(
      static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  sampling.set_top_k(absl::GetFlag(FLAGS_top_k));
  sampling.set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  sampling.set_seed(absl::GetFlag(FLAGS_seed));
}

// Sets `early_exit` only when --early-exit-window was given: an absent field
// keeps the profile's settings on the server.
void FillEarlyExit(bool& has_early_exit, pb::EarlyExit& early_exit) {
  const int64_t window = absl::GetFlag(FLAGS_early_exit_window);
  has_early_exit = window >= 0;
  if (!has_early_exit) return;
  early_exit.set_window(window);
  early_exit.set_threshold(
      static_cast<float>(absl::GetFlag(FLAGS_early_exit_threshold)));
  early_exit.set_confidence(absl::GetFlag(FLAGS_early_exit_confidence));
  early_exit.set_min_tokens(absl::GetFlag(FLAGS_early_exit_min_tokens));
}

pb::ReasonRequest ReasonRequestFromFlags() {
  pb::ReasonRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  request.set_question(absl::GetFlag(FLAGS_question));
  for (std::string& choice : SplitChoices(absl::GetFlag(FLAGS_choices))) {
    request.add_choices(std::move(choice));
  }
  request.set_pipeline(absl::GetFlag(FLAGS_pipeline));
  request.set_profile(absl::GetFlag(FLAGS_profile));
  bool has_early_exit = false;
  pb::EarlyExit early_exit;
  FillEarlyExit(has_early_exit, early_exit);
  if (has_early_exit) *request.mutable_early_exit() = early_exit;
  FillSampling(*request.mutable_sampling());
  request.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  return request;
}

pb::GenerateRequest GenerateRequestFromFlags() {
  pb::GenerateRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  request.set_prompt(absl::GetFlag(FLAGS_prompt));
  request.set_chat(absl::GetFlag(FLAGS_chat));
  request.set_split_special_tokens(absl::GetFlag(FLAGS_split_special_tokens));
  FillSampling(*request.mutable_sampling());
  request.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) {
    request.add_stop(stop);
  }
  request.set_profile(absl::GetFlag(FLAGS_profile));
  request.set_stage(absl::GetFlag(FLAGS_stage));
  bool has_early_exit = false;
  pb::EarlyExit early_exit;
  FillEarlyExit(has_early_exit, early_exit);
  if (has_early_exit) *request.mutable_early_exit() = early_exit;
  return request;
}

// ---------------------------------------------------------------------------
// Readable output.

std::string EarlyExitSettings(const pb::EarlyExit& early_exit) {
  if (early_exit.window() <= 0) return "off";
  return absl::StrFormat(
      "window %d, threshold %.3g, %s", early_exit.window(),
      early_exit.threshold(),
      early_exit.confidence().empty() ? "max_prob" : early_exit.confidence());
}

void PrintStageSummary(const pb::StageRecord& stage, bool with_output) {
  std::cout << absl::StrFormat(
      "[%d] %s: %d generated tokens (prompt %d), %s (prefill %s, decode "
      "%s), finish %s\n",
      stage.index() + 1, stage.name(), stage.generated_tokens(),
      stage.prompt_tokens(), Seconds(stage.seconds()),
      Seconds(stage.prefill_seconds()), Seconds(stage.decode_seconds()),
      stage.finish_reason().empty() ? "-" : stage.finish_reason());
  const pb::SublayerCounts& counts = stage.sublayers();
  std::cout << absl::StrFormat(
      "    skipped sub-layers: attention %d layers, mlp %d layers (per "
      "token: attention %d executed / %d skipped, mlp %d / %d)\n",
      stage.skipped_attention_layers(), stage.skipped_mlp_layers(),
      counts.attention_executed(), counts.attention_skipped(),
      counts.mlp_executed(), counts.mlp_skipped());
  std::cout
      << "    early exit: "
      << (stage.early_exit_fired()
              ? absl::StrCat(
                    "fired (", stage.early_exits(), " of ",
                    std::max<int>(stage.branches_size(), 1),
                    stage.early_exit_reason().empty()
                        ? ")"
                        : absl::StrCat("; ", stage.early_exit_reason(), ")"))
              : std::string("no"))
      << "; settings " << EarlyExitSettings(stage.early_exit())
      << absl::StrFormat("; mean confidence %.3f\n", stage.mean_confidence());
  if (with_output) {
    std::cout << "    output:\n" << Indent(stage.output(), "      ") << "\n";
  }
}

void PrintAnswer(const pb::ReasonResponse& response) {
  if (response.answer().empty()) {
    std::cout << "Answer: none (the final stage named no choice)\n";
  } else {
    std::cout << "Answer: " << response.answer();
    if (!response.answer_text().empty()) {
      std::cout << " (" << response.answer_text() << ")";
    }
    std::cout << "\n";
  }
  std::cout << absl::StrFormat(
      "Tokens: prompt %d, generated %d; time: total %s, queue %s, first "
      "token %s\n",
      response.prompt_tokens(), response.generated_tokens(),
      Seconds(response.timings().total_seconds()),
      Seconds(response.timings().queue_seconds()),
      Seconds(response.timings().time_to_first_token_seconds()));
}

void PrintReasonHeader(const pb::ReasonResponse& response) {
  std::cout << "request " << response.request_id() << " (pipeline "
            << response.pipeline() << ", profile " << response.profile()
            << ", choices " << absl::StrJoin(response.choices(), "|") << ")\n";
}

// ---------------------------------------------------------------------------
// Subcommands.

int RunReason(pb::LiteStage::Stub& stub) {
  const pb::ReasonRequest request = ReasonRequestFromFlags();
  grpc::ClientContext context;
  SetDeadline(context);
  pb::ReasonResponse response;
  const grpc::Status status = stub.Reason(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(response);
    return kExitOk;
  }
  PrintReasonHeader(response);
  for (const pb::StageRecord& stage : response.stages()) {
    PrintStageSummary(stage, /*with_output=*/true);
  }
  PrintAnswer(response);
  return kExitOk;
}

int RunStream(pb::LiteStage::Stub& stub) {
  const pb::ReasonRequest request = ReasonRequestFromFlags();
  const bool json = absl::GetFlag(FLAGS_json);
  grpc::ClientContext context;
  SetDeadline(context);
  std::unique_ptr<grpc::ClientReader<pb::ReasonEvent>> reader =
      stub.ReasonStream(&context, request);
  pb::ReasonEvent event;
  bool got_result = false;
  int current_branch = -1;  // Branch of the last printed delta.
  int stage_branches = 1;
  while (reader->Read(&event)) {
    if (json) {
      PrintJsonLine(event);
      if (event.has_result()) got_result = true;
      continue;
    }
    switch (event.event_case()) {
      case pb::ReasonEvent::kStageStarted: {
        const pb::StageStarted& started = event.stage_started();
        stage_branches = std::max(started.branches(), 1);
        current_branch = -1;
        std::cout << "== [" << started.stage_index() + 1 << "] "
                  << started.name();
        if (stage_branches > 1) {
          std::cout << " (" << stage_branches << " branches)";
        }
        std::cout << " ==\n" << std::flush;
        break;
      }
      case pb::ReasonEvent::kDelta: {
        const pb::TokenDelta& delta = event.delta();
        if (stage_branches > 1 && delta.branch() != current_branch) {
          // Fan-out branches decode together: label each switch.
          std::cout << (current_branch >= 0 ? "\n" : "") << "<"
                    << static_cast<char>('A' + delta.branch()) << "> ";
        }
        current_branch = delta.branch();
        std::cout << delta.text() << std::flush;
        break;
      }
      case pb::ReasonEvent::kStageFinished:
        std::cout << "\n";
        PrintStageSummary(event.stage_finished(), /*with_output=*/false);
        std::cout << std::flush;
        break;
      case pb::ReasonEvent::kResult:
        got_result = true;
        PrintReasonHeader(event.result());
        PrintAnswer(event.result());
        break;
      case pb::ReasonEvent::EVENT_NOT_SET:
        break;
    }
  }
  return FinishStream(*reader, got_result);
}

void PrintGenerateSummary(const pb::GenerateResponse& response) {
  std::cerr << absl::StrFormat(
      "[request %s: %d generated tokens (prompt %d), finish %s%s, total %s, "
      "first token %s, mean confidence %.3f]\n",
      response.request_id(), response.generated_tokens(),
      response.prompt_tokens(), response.finish_reason(),
      response.early_exit_reason().empty()
          ? ""
          : absl::StrCat(" (", response.early_exit_reason(), ")"),
      Seconds(response.timings().total_seconds()),
      Seconds(response.timings().time_to_first_token_seconds()),
      response.mean_confidence());
}

int RunGenerate(pb::LiteStage::Stub& stub) {
  const pb::GenerateRequest request = GenerateRequestFromFlags();
  const bool json = absl::GetFlag(FLAGS_json);
  grpc::ClientContext context;
  SetDeadline(context);
  if (!absl::GetFlag(FLAGS_stream)) {
    pb::GenerateResponse response;
    const grpc::Status status = stub.Generate(&context, request, &response);
    if (!status.ok()) return RpcError(status);
    if (json) {
      PrintJsonLine(response);
    } else {
      std::cout << response.text() << "\n";
      PrintGenerateSummary(response);
    }
    return kExitOk;
  }
  std::unique_ptr<grpc::ClientReader<pb::GenerateEvent>> reader =
      stub.GenerateStream(&context, request);
  pb::GenerateEvent event;
  bool got_result = false;
  while (reader->Read(&event)) {
    if (event.has_result()) got_result = true;
    if (json) {
      PrintJsonLine(event);
    } else if (event.has_delta()) {
      std::cout << event.delta().text() << std::flush;
    } else if (event.has_result()) {
      std::cout << "\n" << std::flush;
      PrintGenerateSummary(event.result());
    }
  }
  return FinishStream(*reader, got_result);
}

void PrintProfile(const pb::ProfileInfo& profile) {
  std::cout << "  " << profile.name()
            << (profile.builtin()
                    ? " (built-in)"
                    : absl::StrCat(" (pipeline ", profile.pipeline(), ")"))
            << "\n";
  for (const pb::StageProfileInfo& stage : profile.stages()) {
    std::cout << absl::StrFormat(
        "    %s: skip attention %d, mlp %d layers (ratio %.3f); early exit "
        "%s\n",
        stage.stage(), stage.skipped_attention_layers(),
        stage.skipped_mlp_layers(), stage.skip_ratio(),
        EarlyExitSettings(stage.early_exit()));
  }
  if (!profile.provenance().empty()) {
    std::cout << Indent(profile.provenance(), "    # ") << "\n";
  }
}

int RunInfo(pb::LiteStage::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  pb::ServerInfo info;
  const grpc::Status status =
      stub.GetServerInfo(&context, pb::GetServerInfoRequest(), &info);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(info);
    return kExitOk;
  }
  std::cout << "version      " << info.version() << "\n"
            << "model        " << info.model() << "\n"
            << "fingerprint  " << info.fingerprint() << "\n"
            << "backend      " << info.backend() << " (device " << info.device()
            << ", dtype " << info.dtype() << ", " << info.num_layers()
            << " layers)\n"
            << "defaults     pipeline " << info.default_pipeline()
            << ", profile " << info.default_profile() << "\n";
  const pb::Limits& limits = info.limits();
  std::cout << absl::StrFormat(
      "limits       queue %d, batch %d, kv cache %d tokens, context %d, "
      "max new tokens %d, max choices %d\n",
      limits.max_queue(), limits.max_batch(), limits.kv_cache_tokens(),
      limits.context_length(), limits.max_new_tokens(), limits.max_choices());
  std::cout << "pipelines:\n";
  for (const pb::PipelineInfo& pipeline : info.pipelines()) {
    std::cout << "  " << pipeline.name() << ": "
              << absl::StrJoin(pipeline.stages(), " -> ") << " (choices "
              << pipeline.min_choices() << ".." << pipeline.max_choices();
    if (!pipeline.default_choices().empty()) {
      std::cout << ", default "
                << absl::StrJoin(pipeline.default_choices(), "|");
    }
    std::cout << ")\n";
    if (!pipeline.description().empty()) {
      std::cout << "    " << pipeline.description() << "\n";
    }
  }
  std::cout << "profiles:\n";
  for (const pb::ProfileInfo& profile : info.profiles()) PrintProfile(profile);
  return kExitOk;
}

int RunProfiles(pb::LiteStage::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  pb::ListProfilesRequest request;
  request.set_pipeline(absl::GetFlag(FLAGS_pipeline));
  pb::ListProfilesResponse response;
  const grpc::Status status = stub.ListProfiles(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(response);
    return kExitOk;
  }
  std::cout << "profiles:\n";
  for (const pb::ProfileInfo& profile : response.profiles()) {
    PrintProfile(profile);
  }
  return kExitOk;
}

int RunHealth(const std::shared_ptr<grpc::Channel>& channel) {
  using ::grpc::health::v1::Health;
  using ::grpc::health::v1::HealthCheckRequest;
  using ::grpc::health::v1::HealthCheckResponse;
  std::unique_ptr<Health::Stub> stub = Health::NewStub(channel);
  grpc::ClientContext context;
  SetDeadline(context);
  HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(response);
  } else {
    std::cout << HealthCheckResponse::ServingStatus_Name(response.status())
              << "\n";
  }
  return response.status() == HealthCheckResponse::SERVING ? kExitOk
                                                           : kExitNotServing;
}

// ---------------------------------------------------------------------------
// bench.

// Short questions: they must fit small models' contexts (synthetic:tiny has
// 1024 tokens and a byte tokenizer) after the pipeline's few-shot prompts.
std::vector<QuestionItem> BuiltinQuestions() {
  return {
      {"builtin 1",
       "Which animal is a mammal?",
       {"whale", "shark", "trout", "eel"},
       0},
      {"builtin 2",
       "What melts ice on roads?",
       {"salt", "sand", "paper", "wood"},
       0},
      {"builtin 3", "Is the sun a star?", {"yes", "no"}, 0},
      {"builtin 4",
       "What do plants need to make food?",
       {"light", "dark", "plastic", "iron"},
       0},
      {"builtin 5", "Which is hottest?", {"ice", "lava", "snow", "rain"}, 1},
      {"builtin 6", "Can fish breathe air?", {"yes", "no"}, 1},
      {"builtin 7",
       "What does a compass point to?",
       {"north", "up", "east", "down"},
       0},
      {"builtin 8",
       "Which is a liquid?",
       {"rock", "water", "wood", "glass"},
       1},
  };
}

nlohmann::json SummaryJson(const LatencySummary& summary) {
  return {{"count", summary.count}, {"mean", summary.mean},
          {"min", summary.min},     {"max", summary.max},
          {"p50", summary.p50},     {"p90", summary.p90},
          {"p99", summary.p99}};
}

std::string SummaryRow(const std::string& name, const LatencySummary& s) {
  return absl::StrFormat("  %-24s %6d %9.4f %9.4f %9.4f %9.4f %9.4f\n", name,
                         s.count, s.mean, s.p50, s.p90, s.p99, s.max);
}

// Times one unary RPC (`call` issues it on the context it is given, with
// the --timeout deadline) and fills the outcome from its status and the
// response's token count and time to first token.
template <typename Call, typename Response>
RequestOutcome TimedCall(const Call& call, const Response& response) {
  grpc::ClientContext context;
  SetDeadline(context);
  const auto start = std::chrono::steady_clock::now();
  const grpc::Status status = call(&context);
  RequestOutcome outcome;
  outcome.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  outcome.code = CodeName(status.error_code());
  if (!status.ok()) {
    outcome.message = status.error_message();
    return outcome;
  }
  outcome.generated_tokens = response.generated_tokens();
  outcome.time_to_first_token_seconds =
      response.timings().time_to_first_token_seconds();
  return outcome;
}

RequestOutcome ReasonOnce(pb::LiteStage::Stub& stub, const QuestionItem& item,
                          int64_t index) {
  pb::ReasonRequest request = ReasonRequestFromFlags();
  request.set_request_id(absl::StrCat("bench-", index));
  request.set_question(item.question);
  request.clear_choices();
  for (const std::string& choice : item.choices) request.add_choices(choice);
  pb::ReasonResponse response;
  RequestOutcome outcome = TimedCall(
      [&](grpc::ClientContext* context) {
        return stub.Reason(context, request, &response);
      },
      response);
  if (outcome.code != "OK") return outcome;
  for (const pb::StageRecord& stage : response.stages()) {
    outcome.stage_seconds.emplace_back(stage.name(), stage.seconds());
  }
  return outcome;
}

RequestOutcome GenerateOnce(pb::LiteStage::Stub& stub, const QuestionItem& item,
                            int64_t index) {
  pb::GenerateRequest request = GenerateRequestFromFlags();
  request.set_request_id(absl::StrCat("bench-", index));
  std::string prompt = absl::StrCat("Question: ", item.question, "\n");
  for (size_t i = 0; i < item.choices.size(); ++i) {
    absl::StrAppend(&prompt, std::string(1, static_cast<char>('A' + i)), ". ",
                    item.choices[i], "\n");
  }
  absl::StrAppend(&prompt, "Answer:");
  request.set_prompt(prompt);
  pb::GenerateResponse response;
  return TimedCall(
      [&](grpc::ClientContext* context) {
        return stub.Generate(context, request, &response);
      },
      response);
}

int RunBench(const std::shared_ptr<grpc::Channel>& channel) {
  const int32_t concurrency = absl::GetFlag(FLAGS_concurrency);
  int64_t requests = absl::GetFlag(FLAGS_requests);
  const double duration = absl::GetFlag(FLAGS_duration);
  const std::string method = absl::GetFlag(FLAGS_method);
  if (concurrency < 1) return UsageError("--concurrency must be at least 1");
  if (requests < 0) return UsageError("--requests must be >= 0");
  if (duration < 0) return UsageError("--duration must be >= 0");
  if (method != "reason" && method != "generate") {
    return UsageError(absl::StrCat("--method must be reason or generate, got '",
                                   method, "'"));
  }
  if (requests == 0 && duration == 0) requests = 16;

  std::vector<QuestionItem> questions;
  const std::string questions_path = absl::GetFlag(FLAGS_questions);
  if (questions_path.empty()) {
    questions = BuiltinQuestions();
  } else {
    absl::StatusOr<std::vector<QuestionItem>> loaded =
        LoadQuestions(questions_path, absl::GetFlag(FLAGS_questions_limit));
    if (!loaded.ok()) return UsageError(std::string(loaded.status().message()));
    questions = *std::move(loaded);
    if (questions.empty()) {
      return UsageError(absl::StrCat("--questions ", questions_path,
                                     ": no questions in the file"));
    }
  }

  LoadStats stats;
  std::atomic<int64_t> next_index{0};
  const auto start = std::chrono::steady_clock::now();
  const auto end =
      start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                  std::chrono::duration<double>(duration));
  std::vector<std::thread> workers;
  workers.reserve(concurrency);
  for (int32_t t = 0; t < concurrency; ++t) {
    workers.emplace_back([&] {
      // One stub per thread over the shared channel (HTTP/2 multiplexes).
      std::unique_ptr<pb::LiteStage::Stub> stub =
          pb::LiteStage::NewStub(channel);
      while (true) {
        if (duration > 0 && std::chrono::steady_clock::now() >= end) break;
        const int64_t index = next_index.fetch_add(1);
        if (requests > 0 && index >= requests) break;
        const QuestionItem& item = questions[index % questions.size()];
        stats.Record(method == "reason" ? ReasonOnce(*stub, item, index)
                                        : GenerateOnce(*stub, item, index));
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const LoadReport report = stats.Report(wall_seconds);

  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& [name, summary] : report.stages) {
      stages.push_back(
          {{"name", name}, {"latency_seconds", SummaryJson(summary)}});
    }
    nlohmann::json out = {
        {"target", absl::GetFlag(FLAGS_target)},
        {"method", method},
        {"pipeline", absl::GetFlag(FLAGS_pipeline)},
        {"profile", absl::GetFlag(FLAGS_profile)},
        {"max_new_tokens", absl::GetFlag(FLAGS_max_new_tokens)},
        {"concurrency", concurrency},
        {"questions", questions.size()},
        {"requests", report.requests},
        {"ok", report.ok},
        {"failed", report.failed},
        {"wall_seconds", report.wall_seconds},
        {"requests_per_second", report.requests_per_second},
        {"generated_tokens", report.generated_tokens},
        {"generated_tokens_per_second", report.generated_tokens_per_second},
        {"codes", report.codes},
        {"errors", report.first_error_messages},
        {"latency_seconds", SummaryJson(report.latency)},
        {"time_to_first_token_seconds",
         SummaryJson(report.time_to_first_token)},
        {"stages", stages},
    };
    std::cout << out.dump(-1, ' ', false,
                          nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    std::vector<std::string> codes;
    for (const auto& [code, count] : report.codes) {
      codes.push_back(absl::StrCat(code, "=", count));
    }
    std::cout << absl::StrFormat(
        "target       %s\nmethod       %s (pipeline %s, profile %s)\n"
        "concurrency  %d\nrequests     %d (ok %d, failed %d)\n"
        "wall         %s\nthroughput   %.3f requests/s, %.3f generated "
        "tokens/s (%d tokens)\ncodes        %s\n",
        absl::GetFlag(FLAGS_target), method,
        absl::GetFlag(FLAGS_pipeline).empty() ? "default"
                                              : absl::GetFlag(FLAGS_pipeline),
        absl::GetFlag(FLAGS_profile).empty() ? "default"
                                             : absl::GetFlag(FLAGS_profile),
        concurrency, report.requests, report.ok, report.failed,
        Seconds(report.wall_seconds), report.requests_per_second,
        report.generated_tokens_per_second, report.generated_tokens,
        absl::StrJoin(codes, " "));
    std::cout << absl::StrFormat(
        "latency (s, OK requests)   %6s %9s %9s %9s %9s %9s\n", "count", "mean",
        "p50", "p90", "p99", "max");
    std::cout << SummaryRow("end-to-end", report.latency);
    std::cout << SummaryRow("first token (server)", report.time_to_first_token);
    for (const auto& [name, summary] : report.stages) {
      std::cout << SummaryRow(absl::StrCat("stage ", name), summary);
    }
    for (const auto& [code, message] : report.first_error_messages) {
      std::cout << "error " << code << ": " << message << "\n";
    }
  }
  if (report.failed > 0 && !absl::GetFlag(FLAGS_allow_errors)) {
    const auto& [code, message] = *report.first_error_messages.begin();
    std::cerr << "litestage-cli: " << code << ": " << report.failed << " of "
              << report.requests << " requests failed (" << message << ")\n";
    return kExitRpcError;
  }
  return kExitOk;
}

int Main(int argc, char** argv) {
  absl::FlagsUsageConfig usage_config;
  // --help lists this file's flags (absl matches the program name otherwise,
  // and litestage-cli is spelt with a dash).
  usage_config.contains_help_flags = [](absl::string_view filename) {
    return absl::StrContains(filename, "client/litestage_cli.cc");
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

}  // namespace
}  // namespace litestage

int main(int argc, char** argv) { return litestage::Main(argc, argv); }
