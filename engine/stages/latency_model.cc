// The LatencyModel of evaluation.h: per-stage per-token costs fitted on
// rows measured alone, the prediction for batched rows, and its two-fold
// check. Apart from evaluation.cc, which runs the questions, because it
// needs nothing but the rows.
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/stages/evaluation.h"
#include "engine/util/status_macros.h"

namespace litestage {

absl::StatusOr<LatencyModel> FitLatencyModel(
    absl::Span<const QuestionEval* const> measured) {
  if (measured.empty()) {
    return absl::InvalidArgumentError(
        "latency model: no rows measured alone to fit on");
  }
  const size_t num_stages = measured[0]->stages.size();
  std::vector<double> prefill_seconds(num_stages), decode_seconds(num_stages);
  std::vector<double> prefill_tokens(num_stages), decode_tokens(num_stages);
  for (const QuestionEval* row : measured) {
    if (!row->latency_measured) {
      return absl::InvalidArgumentError(absl::StrCat(
          "latency model: question ", row->question_id, " was not measured"));
    }
    if (row->stages.size() != num_stages) {
      return absl::InvalidArgumentError(
          absl::StrCat("latency model: question ", row->question_id, " has ",
                       row->stages.size(), " stages, expected ", num_stages));
    }
    for (size_t s = 0; s < num_stages; ++s) {
      const StageEval& stage = row->stages[s];
      prefill_seconds[s] += stage.prefill_seconds;
      decode_seconds[s] += stage.decode_seconds;
      prefill_tokens[s] += static_cast<double>(stage.prefill_tokens);
      decode_tokens[s] += static_cast<double>(stage.decode_tokens);
    }
  }
  LatencyModel model;
  for (size_t s = 0; s < num_stages; ++s) {
    StageLatencyCost cost;
    if (prefill_tokens[s] > 0) {
      cost.prefill_seconds_per_token = prefill_seconds[s] / prefill_tokens[s];
    }
    if (decode_tokens[s] > 0) {
      cost.decode_seconds_per_token = decode_seconds[s] / decode_tokens[s];
    }
    model.stages.push_back(cost);
  }
  return model;
}

absl::Status ApplyLatencyModel(const LatencyModel& model, QuestionEval* row) {
  if (row->stages.size() != model.stages.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "latency model: question ", row->question_id, " has ",
        row->stages.size(), " stages, the model ", model.stages.size()));
  }
  row->seconds = 0;
  for (size_t s = 0; s < model.stages.size(); ++s) {
    StageEval& stage = row->stages[s];
    stage.prefill_seconds = model.stages[s].prefill_seconds_per_token *
                            static_cast<double>(stage.prefill_tokens);
    stage.decode_seconds = model.stages[s].decode_seconds_per_token *
                           static_cast<double>(stage.decode_tokens);
    stage.seconds = stage.prefill_seconds + stage.decode_seconds;
    row->seconds += stage.seconds;
  }
  row->latency_measured = false;
  return absl::OkStatus();
}

absl::StatusOr<LatencyModelCheck> CrossValidateLatencyModel(
    absl::Span<const QuestionEval* const> measured) {
  LatencyModelCheck check;
  if (measured.size() < 2) return check;
  std::vector<const QuestionEval*> folds[2];
  for (size_t i = 0; i < measured.size(); ++i) {
    folds[i % 2].push_back(measured[i]);
  }
  double abs_relative = 0, predicted_sum = 0, measured_sum = 0;
  for (int fold = 0; fold < 2; ++fold) {
    LS_ASSIGN_OR_RETURN(LatencyModel model, FitLatencyModel(folds[1 - fold]));
    for (const QuestionEval* row : folds[fold]) {
      QuestionEval predicted = *row;
      LS_RETURN_IF_ERROR(ApplyLatencyModel(model, &predicted));
      if (row->seconds > 0) {
        abs_relative +=
            std::abs(predicted.seconds - row->seconds) / row->seconds;
      }
      predicted_sum += predicted.seconds;
      measured_sum += row->seconds;
      ++check.n;
    }
  }
  check.mean_abs_relative_error = abs_relative / static_cast<double>(check.n);
  if (measured_sum > 0) {
    check.mean_relative_error = (predicted_sum - measured_sum) / measured_sum;
  }
  return check;
}

}  // namespace litestage
