// litestage-cli bench: a closed-loop load generator over Reason or Generate
// (--concurrency threads, --requests or --duration), reporting latency
// percentiles end to end and per stage, throughput and status codes; the
// statistics are load_stats.h.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cli_common.h"
#include "client/cli_flags.h"
#include "client/load_stats.h"
#include "engine/stages/dataset.h"
#include "nlohmann/json.hpp"

namespace litestage::cli {

namespace {

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

}  // namespace

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

}  // namespace litestage::cli
