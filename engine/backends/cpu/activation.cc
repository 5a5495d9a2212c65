// Scalar on purpose: n is the MLP width per token (a few thousand floats), a
// rounding error next to the matmuls around it, and std::exp keeps the result
// within an ulp or two of torch's silu.
#include "engine/backends/cpu/activation.h"

#include <cmath>

namespace litestage::cpu {

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    // For g << 0, exp(-g) overflows to inf and g / inf is -0: the right limit.
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace litestage::cpu
