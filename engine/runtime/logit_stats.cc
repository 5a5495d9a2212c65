// Scalar: once per token over the vocabulary, small next to the matmuls;
// exp dominates and std::exp is not auto-vectorised without -ffast-math,
// which would also break -inf handling.
#include "engine/runtime/logit_stats.h"

#include <cmath>

namespace litestage {

LogitStats ComputeLogitStats(const float* logits, int64_t n) {
  LogitStats stats;
  if (n <= 0) return stats;
  float max_value = logits[0];
  int64_t argmax = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (logits[i] > max_value) {  // Strict: ties keep the lowest index.
      max_value = logits[i];
      argmax = i;
    }
  }
  double partition = 0.0;         // Z = sum exp(l - max)
  double weighted_shifted = 0.0;  // sum exp(l - max) * (l - max)
  for (int64_t i = 0; i < n; ++i) {
    const float shifted = logits[i] - max_value;
    // expf (a few ns) rather than double exp: 150k calls per token.
    const float e = std::exp(shifted);
    if (e == 0.0f) continue;  // Also skips -inf, where e * shifted is NaN.
    partition += e;
    weighted_shifted += static_cast<double>(e) * shifted;
  }
  stats.max_logit = max_value;
  stats.argmax = static_cast<int32_t>(argmax);
  stats.max_prob = static_cast<float>(1.0 / partition);
  stats.entropy =
      static_cast<float>(std::log(partition) - weighted_shifted / partition);
  return stats;
}

}  // namespace litestage
