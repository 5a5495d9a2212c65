// The JSON forms of the evaluation's rows, summaries and full's reference
// tokens (evaluation.h): what litestage-eval prints and what a search caches
// on disk. Readers reject anything but what the writers produce.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/stages/evaluation.h"
#include "engine/util/status_macros.h"

namespace litestage {

nlohmann::json ReferenceTokensToJson(const ReferenceTokens& tokens) {
  nlohmann::json stages = nlohmann::json::array();
  for (const std::vector<ReferenceTokens::Branch>& stage : tokens.stages) {
    nlohmann::json branches = nlohmann::json::array();
    for (const ReferenceTokens::Branch& branch : stage) {
      branches.push_back(
          {{"prompt", branch.prompt}, {"generated", branch.generated}});
    }
    stages.push_back(std::move(branches));
  }
  return {{"stages", std::move(stages)}};
}

absl::StatusOr<ReferenceTokens> ReferenceTokensFromJson(
    const nlohmann::json& json) {
  ReferenceTokens tokens;
  try {
    for (const nlohmann::json& stage : json.at("stages")) {
      std::vector<ReferenceTokens::Branch>& branches =
          tokens.stages.emplace_back();
      for (const nlohmann::json& branch : stage) {
        branches.push_back(
            {branch.at("prompt").get<std::vector<int32_t>>(),
             branch.at("generated").get<std::vector<int32_t>>()});
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("reference tokens: ", e.what()));
  }
  return tokens;
}

namespace {

nlohmann::json OptionalIndex(const std::optional<size_t>& index) {
  return index.has_value() ? nlohmann::json(*index) : nlohmann::json(nullptr);
}

nlohmann::json IntervalToJson(const Interval& interval) {
  return nlohmann::json::array({interval.low, interval.high});
}

}  // namespace

nlohmann::json QuestionEvalToJson(const QuestionEval& row) {
  nlohmann::json stages = nlohmann::json::array();
  for (const StageEval& s : row.stages) {
    stages.push_back({{"name", s.name},
                      {"prompt_tokens", s.prompt_tokens},
                      {"generated_tokens", s.generated_tokens},
                      {"prefill_tokens", s.prefill_tokens},
                      {"decode_tokens", s.decode_tokens},
                      {"seconds", s.seconds},
                      {"prefill_seconds", s.prefill_seconds},
                      {"decode_seconds", s.decode_seconds},
                      {"early_exit_fired", s.early_exit_fired},
                      {"branches", s.branches},
                      {"fidelity_hits", s.fidelity.hits},
                      {"fidelity_total", s.fidelity.total},
                      {"fidelity", s.fidelity.fidelity()}});
  }
  return {{"profile", row.profile},
          {"question_id", row.question_id},
          {"answer_index", OptionalIndex(row.answer_index)},
          {"label", OptionalIndex(row.label)},
          {"answered", row.answered()},
          {"correct", row.correct()},
          {"seconds", row.seconds},
          {"latency_measured", row.latency_measured},
          {"fidelity_measured", row.fidelity_measured},
          {"fidelity_seconds", row.fidelity_seconds},
          {"stages", std::move(stages)}};
}

absl::StatusOr<QuestionEval> QuestionEvalFromJson(const nlohmann::json& json) {
  // A cache entry written by QuestionEvalToJson; anything else is rejected
  // rather than half-read (the reader recomputes the row then).
  const auto index =
      [](const nlohmann::json& value) -> absl::StatusOr<std::optional<size_t>> {
    if (value.is_null()) return std::nullopt;
    if (!value.is_number_unsigned()) {
      return absl::InvalidArgumentError("index is not a non-negative integer");
    }
    return value.get<size_t>();
  };
  if (!json.is_object() || !json.contains("stages") ||
      !json["stages"].is_array()) {
    return absl::InvalidArgumentError(
        "evaluation row: not an object with "
        "stages");
  }
  QuestionEval row;
  try {
    row.profile = json.at("profile").get<std::string>();
    row.question_id = json.at("question_id").get<std::string>();
    LS_ASSIGN_OR_RETURN(row.answer_index, index(json.at("answer_index")));
    LS_ASSIGN_OR_RETURN(row.label, index(json.at("label")));
    row.seconds = json.at("seconds").get<double>();
    row.latency_measured = json.at("latency_measured").get<bool>();
    row.fidelity_measured = json.at("fidelity_measured").get<bool>();
    row.fidelity_seconds = json.at("fidelity_seconds").get<double>();
    for (const nlohmann::json& s : json["stages"]) {
      StageEval stage;
      stage.name = s.at("name").get<std::string>();
      stage.prompt_tokens = s.at("prompt_tokens").get<int64_t>();
      stage.generated_tokens = s.at("generated_tokens").get<int64_t>();
      stage.prefill_tokens = s.at("prefill_tokens").get<int64_t>();
      stage.decode_tokens = s.at("decode_tokens").get<int64_t>();
      stage.seconds = s.at("seconds").get<double>();
      stage.prefill_seconds = s.at("prefill_seconds").get<double>();
      stage.decode_seconds = s.at("decode_seconds").get<double>();
      stage.early_exit_fired = s.at("early_exit_fired").get<bool>();
      stage.branches = s.at("branches").get<int64_t>();
      stage.fidelity.hits = s.at("fidelity_hits").get<int64_t>();
      stage.fidelity.total = s.at("fidelity_total").get<int64_t>();
      row.stages.push_back(std::move(stage));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluation row: ", e.what()));
  }
  return row;
}

nlohmann::json ProfileSummaryToJson(const ProfileSummary& summary) {
  nlohmann::json stages = nlohmann::json::array();
  for (const StageSummary& s : summary.stages) {
    stages.push_back(
        {{"name", s.name},
         {"fidelity", s.fidelity.has_value() ? nlohmann::json(*s.fidelity)
                                             : nlohmann::json(nullptr)},
         {"fidelity_hits", s.fidelity_hits},
         {"fidelity_total", s.fidelity_total},
         {"mean_seconds", s.mean_seconds},
         {"p90_seconds", s.p90_seconds},
         {"mean_prefill_seconds", s.mean_prefill_seconds},
         {"mean_decode_seconds", s.mean_decode_seconds},
         {"mean_prompt_tokens", s.mean_prompt_tokens},
         {"mean_generated_tokens", s.mean_generated_tokens},
         {"early_exit_rate", s.early_exit_rate}});
  }
  return {
      {"profile", summary.profile},
      {"n", summary.n},
      {"labelled", summary.labelled},
      {"correct", summary.correct},
      {"accuracy", summary.accuracy},
      {"accuracy_ci95", IntervalToJson(summary.accuracy_ci)},
      {"answered", summary.answered},
      {"answered_rate", summary.answered_rate},
      {"agree", summary.agree},
      {"agreement", summary.agreement},
      {"agreement_ci95", IntervalToJson(summary.agreement_ci)},
      {"mean_seconds", summary.mean_seconds},
      {"p90_seconds", summary.p90_seconds},
      {"speedup", summary.speedup},
      {"mean_fidelity_seconds", summary.mean_fidelity_seconds},
      {"latency_measured", summary.latency_measured},
      {"latency_check",
       {{"n", summary.latency_check.n},
        {"mean_abs_relative_error",
         summary.latency_check.mean_abs_relative_error},
        {"mean_relative_error", summary.latency_check.mean_relative_error}}},
      {"stages", std::move(stages)}};
}

}  // namespace litestage
