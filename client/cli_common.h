// What the subcommands of litestage-cli share: exit codes, error and JSON
// output, the channel with its deadline, and requests built from the flags.
// The subcommands themselves: reason_commands.cc (reason, stream),
// generate_command.cc, service_commands.cc (info, profiles, health) and
// bench_command.cc; litestage_cli.cc dispatches.
#ifndef LITESTAGE_CLIENT_CLI_COMMON_H_
#define LITESTAGE_CLIENT_CLI_COMMON_H_

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/util/flags.h"
#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"
#include "litestage/v1/litestage.grpc.pb.h"
#include "litestage/v1/litestage.pb.h"

namespace litestage::cli {

namespace pb = ::litestage::v1;

constexpr int kExitOk = 0;
constexpr int kExitUsage = kUsageExitCode;
constexpr int kExitRpcError = 2;
constexpr int kExitNotServing = 3;

// "INVALID_ARGUMENT" etc.: gRPC and absl share the canonical code numbers.
std::string CodeName(grpc::StatusCode code);
// Prints "litestage-cli: <CODE_NAME>: <message>" to stderr; kExitRpcError.
int RpcError(const grpc::Status& status);
// Prints the message and a pointer to --help to stderr; kExitUsage.
int UsageError(const std::string& message);
// Every numeric flag against its range (docs/server.md, "Limits").
absl::Status ValidateFlags();

// Proto JSON on one line (.proto field names, every field present).
std::string ToJson(const google::protobuf::Message& message);
void PrintJsonLine(const google::protobuf::Message& message);
// `text` with `prefix` before each line.
std::string Indent(const std::string& text, const std::string& prefix);
// "1.234 s".
std::string Seconds(double seconds);
// "window 8, threshold 0.3, max_prob", or "off".
std::string EarlyExitSettings(const pb::EarlyExit& early_exit);

// The channel to --target (round_robin; TLS with --tls, --tls-ca,
// --tls-server-name); InvalidArgument naming --tls-ca when it is unreadable.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel();
// --timeout from now.
void SetDeadline(grpc::ClientContext& context);

// Requests from the reason/stream and generate flags.
pb::ReasonRequest ReasonRequestFromFlags();
pb::GenerateRequest GenerateRequestFromFlags();

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

// The subcommands; each returns the process exit code.
int RunReason(pb::LiteStage::Stub& stub);
int RunStream(pb::LiteStage::Stub& stub);
int RunGenerate(pb::LiteStage::Stub& stub);
int RunInfo(pb::LiteStage::Stub& stub);
int RunProfiles(pb::LiteStage::Stub& stub);
int RunHealth(const std::shared_ptr<grpc::Channel>& channel);
int RunBench(const std::shared_ptr<grpc::Channel>& channel);

}  // namespace litestage::cli

#endif  // LITESTAGE_CLIENT_CLI_COMMON_H_
