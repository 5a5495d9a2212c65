// litestage-cli reason and stream: the Reason and ReasonStream RPCs, printed
// stage by stage (or as proto JSON with --json).
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

}  // namespace

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

}  // namespace litestage::cli
