// Gated activations of the MLP.
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_ACTIVATION_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_ACTIVATION_H_

#include <cstdint>

namespace litestage::cpu {

// SwiGLU: out = silu(gate) * up = gate * sigmoid(gate) * up.
//   gate, up, out: [n] f32; out may be gate (or up).
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_ACTIVATION_H_
