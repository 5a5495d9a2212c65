// The block-quantized layouts litestage computes on (DType kQ4_0, kQ4_1,
// kQ8_0): ggml's blocks of 32 elements with their quantized values exactly
// as a GGUF file stores them, and the f16 scale (and Q4_1's f16 minimum)
// widened to f32 at load. Widening is exact; it costs 2 or 4 bytes per
// block (Q4_1: 24 bytes instead of 20) and saves the kernels two f16
// conversions per block on the vector ports that bound them. Element j is
//   Q4_0: (nibble_j - 8) * d       Q4_1: nibble_j * d + m       Q8_0: q_j * d
// where nibble_j is the low nibble of qs[j] for j < 16 and the high nibble
// of qs[j - 16] otherwise. Each product is exact in f32 (an 11-bit f16
// significand times an integer of at most 8 bits), so a fused multiply-add
// and a multiply then add give the same bits: every kernel reproduces the
// f32 dequantization (engine/model/dequantize.cc) exactly.
#ifndef LITESTAGE_ENGINE_MODEL_QUANT_BLOCKS_H_
#define LITESTAGE_ENGINE_MODEL_QUANT_BLOCKS_H_

#include <cstdint>

namespace litestage {

inline constexpr int kQuantBlockElements = 32;

struct BlockQ4_0 {
  float d;         // The scale (an f16 value).
  uint8_t qs[16];  // Nibbles: elements 0..15 low, 16..31 high.
};

struct BlockQ4_1 {
  float d;         // The scale (an f16 value).
  float m;         // The minimum (an f16 value).
  uint8_t qs[16];  // Nibbles as in BlockQ4_0.
};

struct BlockQ8_0 {
  float d;        // The scale (an f16 value).
  int8_t qs[32];  // Elements 0..31.
};

static_assert(sizeof(BlockQ4_0) == 20 && alignof(BlockQ4_0) == 4);
static_assert(sizeof(BlockQ4_1) == 24 && alignof(BlockQ4_1) == 4);
static_assert(sizeof(BlockQ8_0) == 36 && alignof(BlockQ8_0) == 4);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_QUANT_BLOCKS_H_
