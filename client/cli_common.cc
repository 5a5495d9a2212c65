// Shared pieces of litestage-cli (cli_common.h).
#include "client/cli_common.h"

#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/cli_flags.h"
#include "engine/runtime/early_exit.h"
#include "engine/util/flags.h"
#include "engine/util/mapped_file.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace litestage::cli {

std::string CodeName(grpc::StatusCode code) {
  // gRPC and absl share the canonical code numbers.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

int RpcError(const grpc::Status& status) {
  std::cerr << "litestage-cli: " << CodeName(status.error_code()) << ": "
            << status.error_message() << "\n";
  return kExitRpcError;
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

std::string EarlyExitSettings(const pb::EarlyExit& early_exit) {
  if (early_exit.window() <= 0) return "off";
  return absl::StrFormat(
      "window %d, threshold %.3g, %s", early_exit.window(),
      early_exit.threshold(),
      early_exit.confidence().empty() ? "max_prob" : early_exit.confidence());
}

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

namespace {

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

}  // namespace

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

}  // namespace litestage::cli
