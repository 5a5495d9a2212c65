// Conversion of GGUF tensor rows (plain and block-quantized ggml types) to
// fp32, bit-for-bit as ggml's dequantize_row_* computes them (same operation
// order, fp32 arithmetic).
#ifndef LITESTAGE_ENGINE_MODEL_DEQUANTIZE_H_
#define LITESTAGE_ENGINE_MODEL_DEQUANTIZE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/gguf.h"

namespace litestage {

// Whether DequantizeRow handles `type`: F32, F16, BF16, Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
bool IsDequantizeSupported(GgufType type);

// Decodes `n` elements of `type` from `src` into `dst` ([n] f32). `n` must
// be a multiple of the type's block size and `src` must hold
// n / block_elements * block_bytes bytes (no alignment needed).
// InvalidArgument for a bad `n`; Unimplemented (naming the type) for a type
// not supported.
absl::Status DequantizeRow(GgufType type, const uint8_t* src, int64_t n,
                           float* dst);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_DEQUANTIZE_H_
