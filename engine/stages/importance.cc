#include "engine/stages/importance.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

// Mean over tokens of cos(input, output) per sub-layer, for one prompt.
class CosineObserver : public SublayerObserver {
 public:
  explicit CosineObserver(int64_t num_layers)
      : sum_(2 * num_layers, 0.0), tokens_(2 * num_layers, 0) {}

  void Observe(int64_t /*chunk_index*/, int64_t layer, SublayerKind kind,
               const float* input, const float* output, int64_t num_tokens,
               int64_t hidden_size) override {
    const int64_t index = SublayerIndex(layer, kind);
    for (int64_t t = 0; t < num_tokens; ++t) {
      const float* x = input + t * hidden_size;
      const float* y = output + t * hidden_size;
      float dot = 0, x_norm = 0, y_norm = 0;  // fp32, as the method states
      for (int64_t i = 0; i < hidden_size; ++i) {
        dot += x[i] * y[i];
        x_norm += x[i] * x[i];
        y_norm += y[i] * y[i];
      }
      const float denominator = std::sqrt(x_norm) * std::sqrt(y_norm);
      // A zero vector has no direction; count it as unchanged (cos = 1).
      sum_[index] += denominator > 0 ? dot / denominator : 1.0f;
      ++tokens_[index];
    }
  }

  // [2L] means over the observed tokens.
  std::vector<double> Means() const {
    std::vector<double> means(sum_.size(), 0.0);
    for (size_t i = 0; i < sum_.size(); ++i) {
      if (tokens_[i] > 0) means[i] = sum_[i] / static_cast<double>(tokens_[i]);
    }
    return means;
  }

 private:
  std::vector<double> sum_;      // [2L]
  std::vector<int64_t> tokens_;  // [2L]
};

}  // namespace

std::vector<SublayerRef> SublayerImportance::Ranking() const {
  std::vector<int64_t> order(total_similarity.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return total_similarity[a] > total_similarity[b];
  });
  std::vector<SublayerRef> ranking;
  ranking.reserve(order.size());
  for (int64_t index : order) {
    ranking.push_back(SublayerRef{
        index % 2 == 0 ? SublayerKind::kAttention : SublayerKind::kMlp,
        index / 2});
  }
  return ranking;
}

nlohmann::json SublayerImportance::ToJson() const {
  nlohmann::json stages = nlohmann::json::object();
  for (size_t s = 0; s < stage_names.size(); ++s) {
    nlohmann::json per = nlohmann::json::object();
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      for (SublayerKind kind : {SublayerKind::kAttention, SublayerKind::kMlp}) {
        per[SublayerRefName({kind, layer})] =
            stage_similarity[s][SublayerIndex(layer, kind)];
      }
    }
    stages[stage_names[s]] = std::move(per);
  }
  nlohmann::json ranking = nlohmann::json::array();
  for (const SublayerRef& ref : Ranking()) {
    ranking.push_back(SublayerRefName(ref));
  }
  return {{"num_layers", num_layers},
          {"num_samples", num_samples},
          {"stage_similarity", std::move(stages)},
          {"ranking", std::move(ranking)}};
}

absl::StatusOr<SublayerImportance> MeasureSublayerImportance(
    Engine& engine, const Pipeline& pipeline,
    const std::vector<QuestionItem>& samples, const ReasoningRequest& base) {
  if (samples.empty()) {
    return absl::InvalidArgumentError("importance: no calibration samples");
  }
  const int64_t layers = engine.config().num_hidden_layers;
  LS_ASSIGN_OR_RETURN(Profile full, BuiltinProfile("full", layers));
  SublayerImportance importance;
  importance.num_layers = layers;
  importance.num_samples = static_cast<int64_t>(samples.size());
  for (const PipelineStage& stage : pipeline.stages) {
    importance.stage_names.push_back(stage.name);
  }
  importance.stage_similarity.assign(pipeline.stages.size(),
                                     std::vector<double>(2 * layers, 0.0));

  for (const QuestionItem& sample : samples) {
    ReasoningRequest request = base;
    request.question = sample.question;
    request.choices = sample.choices;
    request.early_exit_override.reset();
    // Full's run gives every stage's prompts (prompt_token_ids), each
    // observed afresh below.
    absl::StatusOr<ReasoningResult> run =
        RunReasoning(engine, pipeline, full, request);
    if (!run.ok()) {
      return absl::Status(run.status().code(),
                          absl::StrCat("importance: sample ", sample.id, ": ",
                                       run.status().message()));
    }
    for (size_t stage = 0; stage < run->stages.size(); ++stage) {
      const std::vector<BranchRecord>& branches = run->stages[stage].branches;
      // Each branch's prefill counts equally within the sample.
      for (const BranchRecord& branch : branches) {
        CosineObserver observer(layers);
        LS_RETURN_IF_ERROR(
            engine.ObservePrompt(branch.prompt_token_ids, &observer));
        const std::vector<double> means = observer.Means();
        for (int64_t i = 0; i < 2 * layers; ++i) {
          importance.stage_similarity[stage][i] +=
              means[i] / static_cast<double>(branches.size() * samples.size());
        }
      }
    }
  }
  importance.total_similarity.assign(2 * layers, 0.0);
  for (const std::vector<double>& stage : importance.stage_similarity) {
    for (int64_t i = 0; i < 2 * layers; ++i) {
      importance.total_similarity[i] += stage[i];
    }
  }
  return importance;
}

}  // namespace litestage
