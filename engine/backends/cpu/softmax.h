// Softmax over a row of f32 values.
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_SOFTMAX_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_SOFTMAX_H_

#include <cstdint>

namespace litestage::cpu {

// x[i] = exp(x[i] - max) / sum_j exp(x[j] - max); x: [n] f32, n >= 1.
// -inf entries become 0 (at least one entry must be finite).
void SoftmaxInPlace(float* x, int64_t n);

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_SOFTMAX_H_
