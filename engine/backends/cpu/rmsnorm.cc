// Written lane-wise (kLanes independent partial sums) so that -O3 vectorises
// it without -ffast-math: GCC may not reorder a single float accumulator.
// Rows are a few thousand floats and memory bound, so the baseline SSE2 the
// file is compiled for is enough.
#include "engine/backends/cpu/rmsnorm.h"

#include <cmath>

namespace litestage::cpu {
namespace {
constexpr int kLanes = 16;
}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
             float eps, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * dim;
    float* out_row = out + r * dim;
    float partial[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= dim; i += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane)
        partial[lane] += row[i + lane] * row[i + lane];
    }
    for (; i < dim; ++i) partial[0] += row[i] * row[i];
    float sum_squares = 0.0f;
    for (int lane = 0; lane < kLanes; ++lane) sum_squares += partial[lane];
    const float inv_rms =
        1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
    // As HF: (x * inv_rms) first, then * weight, both rounded in fp32.
    for (int64_t j = 0; j < dim; ++j)
      out_row[j] = weight[j] * (row[j] * inv_rms);
  }
}

}  // namespace litestage::cpu
