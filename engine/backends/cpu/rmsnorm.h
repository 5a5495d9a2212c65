// RMS normalisation (LlamaRMSNorm, computed in fp32).
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_RMSNORM_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_RMSNORM_H_

#include <cstdint>

namespace litestage::cpu {

// For each row: out = x * rsqrt(mean(x^2) + eps) * weight.
//   x, out: [rows, dim] f32 (out may be x); weight: [dim] f32.
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
             float eps, float* out);

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_RMSNORM_H_
