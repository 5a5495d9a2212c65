// Sub-layer importance for the offline skip search (litestage-method.md,
// "Step 1, importance"): run the FULL model through a pipeline on
// calibration questions and, at each stage's prefill, measure for every
// sub-layer the cosine similarity between its input and output residual
// stream (attention j: cos(x, h); MLP j: cos(h, y)). Higher similarity means
// the sub-layer changes the stream less: more redundant.
#ifndef LITESTAGE_ENGINE_STAGES_IMPORTANCE_H_
#define LITESTAGE_ENGINE_STAGES_IMPORTANCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/session.h"
#include "nlohmann/json.hpp"

namespace litestage {

// Index of a sub-layer in the [2 * num_layers] arrays below.
inline int64_t SublayerIndex(int64_t layer, SublayerKind kind) {
  return 2 * layer + (kind == SublayerKind::kMlp ? 1 : 0);
}

struct SublayerImportance {
  std::vector<std::string> stage_names;  // [stages]
  int64_t num_layers = 0;
  int64_t num_samples = 0;
  // [stages][2 * num_layers] f64: cosine similarity per token computed in
  // fp32, averaged over each prompt's tokens, then over samples (and over
  // fan-out branches within a sample).
  std::vector<std::vector<double>> stage_similarity;
  // [2 * num_layers]: stage_similarity summed over stages.
  std::vector<double> total_similarity;

  // All 2L sub-layers, most redundant (highest total similarity) first;
  // ties broken by index so the ranking is deterministic.
  std::vector<SublayerRef> Ranking() const;
  nlohmann::json ToJson() const;
};

// Runs `samples` through `pipeline` with the full model (greedy unless
// `base` says otherwise; `base.max_new_tokens_cap` bounds each stage) and
// measures each stage's prefill.
absl::StatusOr<SublayerImportance> MeasureSublayerImportance(
    Engine& engine, const Pipeline& pipeline,
    const std::vector<QuestionItem>& samples,
    const ReasoningRequest& base = {});

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_IMPORTANCE_H_
