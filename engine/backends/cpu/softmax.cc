// Scalar: softmax runs once per token over the vocabulary or per head over
// the context, both small next to the matmuls; exp dominates and std::exp is
// not auto-vectorised without -ffast-math, which would also break -inf
// handling.
#include "engine/backends/cpu/softmax.h"

#include <cmath>

namespace litestage::cpu {

void SoftmaxInPlace(float* x, int64_t n) {
  if (n <= 0) return;
  float max_value = x[0];
  for (int64_t i = 1; i < n; ++i)
    max_value = x[i] > max_value ? x[i] : max_value;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_value);
    sum += x[i];
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv_sum;
}

}  // namespace litestage::cpu
