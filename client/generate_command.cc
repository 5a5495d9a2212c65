// litestage-cli generate: the Generate and GenerateStream RPCs.
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cli_common.h"
#include "client/cli_flags.h"

namespace litestage::cli {

namespace {

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

}  // namespace

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

}  // namespace litestage::cli
