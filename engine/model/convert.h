// Element-type conversion and a chunked parallel loop used when loading or
// generating weights. Internal to litestage_model.
#ifndef LITESTAGE_ENGINE_MODEL_CONVERT_H_
#define LITESTAGE_ENGINE_MODEL_CONVERT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "engine/model/tensor.h"

namespace litestage {

// Runs body(begin, end) over [0, count) split into contiguous chunks of at
// least `min_chunk` elements, on up to hardware_concurrency() threads. Chunks
// are disjoint, so bodies may write their own ranges without locking.
void ParallelForChunks(size_t count, size_t min_chunk,
                       const std::function<void(size_t, size_t)>& body);

// An uninitialised buffer for weights (compatible with
// ModelWeights::owned_buffers); malloc'd, so at least 16-byte aligned.
std::unique_ptr<uint8_t[]> AllocateWeightBuffer(size_t bytes);

// Converts `count` elements from `source` (any alignment) in `source_dtype`
// to `destination` in `destination_dtype`. Narrowing to bf16 rounds to
// nearest even; f16 is read only (destination f16 is a programmer error).
void ConvertElements(const void* source, DType source_dtype, void* destination,
                     DType destination_dtype, size_t count);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_CONVERT_H_
