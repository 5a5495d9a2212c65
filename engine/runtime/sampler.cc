#include "engine/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/runtime/logit_stats.h"

namespace litestage {

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!(params.temperature >= 0.0f) || !std::isfinite(params.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be a finite number >= 0, got ", params.temperature));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0 (0 disables it), got ", params.top_k));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", params.top_p));
  }
  return absl::OkStatus();
}

const char* ConfidenceKindName(ConfidenceKind kind) {
  switch (kind) {
    case ConfidenceKind::kMaxProb:
      return "max_prob";
    case ConfidenceKind::kMaxLogit:
      return "max_logit";
  }
  return "?";
}

absl::StatusOr<ConfidenceKind> ParseConfidenceKind(absl::string_view name) {
  if (name == "max_prob") return ConfidenceKind::kMaxProb;
  if (name == "max_logit") return ConfidenceKind::kMaxLogit;
  return absl::InvalidArgumentError(absl::StrCat(
      "confidence kind must be max_prob or max_logit, got '", name, "'"));
}

float ConfidenceValue(const TokenConfidence& confidence, ConfidenceKind kind) {
  return kind == ConfidenceKind::kMaxLogit ? confidence.max_logit
                                           : confidence.max_prob;
}

double MeanMaxProb(absl::Span<const TokenConfidence> confidences) {
  if (confidences.empty()) return 0;
  double sum = 0;
  for (const TokenConfidence& c : confidences) sum += c.max_prob;
  return sum / static_cast<double>(confidences.size());
}

int32_t SampleToken(const float* logits, int64_t vocab_size,
                    const TokenDraw& draw, TokenConfidence* confidence,
                    SamplingScratch* scratch) {
  const LogitStats stats = ComputeLogitStats(logits, vocab_size);
  if (confidence != nullptr) {
    *confidence = {stats.max_prob, stats.max_logit, stats.entropy};
  }
  if (draw.greedy()) return stats.argmax;

  // Candidates in descending logit order, cut to top_k when set. Sorting the
  // whole vocabulary is only needed for top-p without top-k.
  std::vector<int32_t>& candidates = scratch->candidates;
  candidates.resize(vocab_size);
  std::iota(candidates.begin(), candidates.end(), 0);
  const auto by_logit = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int64_t count = vocab_size;
  if (draw.top_k > 0 && draw.top_k < vocab_size) {
    count = draw.top_k;
    std::partial_sort(candidates.begin(), candidates.begin() + count,
                      candidates.end(), by_logit);
  } else if (draw.top_p < 1.0f) {
    std::sort(candidates.begin(), candidates.end(), by_logit);
  }

  // Softmax over the candidates at the given temperature.
  const float inv_temperature = 1.0f / draw.temperature;
  const float max_logit = stats.max_logit;
  std::vector<double>& weights = scratch->weights;
  weights.resize(count);
  double total = 0;
  for (int64_t i = 0; i < count; ++i) {
    weights[i] =
        std::exp(static_cast<double>(logits[candidates[i]] - max_logit) *
                 inv_temperature);
    total += weights[i];
  }
  // Nucleus: keep the smallest prefix whose probability reaches top_p (the
  // candidates are sorted whenever top_p < 1).
  if (draw.top_p < 1.0f) {
    double cumulative = 0;
    int64_t keep = count;
    for (int64_t i = 0; i < count; ++i) {
      cumulative += weights[i] / total;
      if (cumulative >= draw.top_p) {
        keep = i + 1;
        break;
      }
    }
    count = keep;
    total = std::accumulate(weights.begin(), weights.begin() + count, 0.0);
  }
  // uniform * total is what std::uniform_real_distribution<double>(0, total)
  // returns for the same variate, so the stream of tokens is the one the
  // sampler gave before the draw moved into the step.
  double target = draw.uniform * total;
  for (int64_t i = 0; i < count; ++i) {
    target -= weights[i];
    if (target < 0) return candidates[i];
  }
  return candidates[count - 1];
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), rng_(params.seed) {}

TokenDraw Sampler::Next() {
  TokenDraw draw{params_.temperature, params_.top_k, params_.top_p, 0.0};
  if (!draw.greedy()) {
    draw.uniform = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }
  return draw;
}

int32_t Sampler::Sample(const float* logits, int64_t vocab_size,
                        TokenConfidence* confidence) {
  return SampleToken(logits, vocab_size, Next(), confidence, &scratch_);
}

}  // namespace litestage
