// Element types and a non-owning tensor view used for model weights.
#ifndef LITESTAGE_ENGINE_MODEL_TENSOR_H_
#define LITESTAGE_ENGINE_MODEL_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace litestage {

// Element types of weights. Activations and the KV cache are always fp32.
// kQ4_0, kQ4_1 and kQ8_0 are ggml's block-quantized types, kept from a GGUF
// file in its blocks with f32 scales (engine/model/quant_blocks.h): each
// row is cols / 32 blocks of 32 elements; the matmul computes on them.
enum class DType : uint8_t { kF32, kF16, kBF16, kQ4_0, kQ4_1, kQ8_0 };

// Elements per storage block: 1 for the plain types, 32 for the block types.
constexpr int64_t DTypeBlockElements(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return 1;
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return 32;
  }
  return 1;
}

// Bytes per storage block (per element for the plain types).
constexpr size_t DTypeBlockBytes(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kQ4_0:
      return 20;  // sizeof(BlockQ4_0)
    case DType::kQ4_1:
      return 24;  // sizeof(BlockQ4_1)
    case DType::kQ8_0:
      return 36;  // sizeof(BlockQ8_0)
  }
  return 0;
}

constexpr bool IsBlockQuantized(DType dtype) {
  return DTypeBlockElements(dtype) > 1;
}

// Bytes of one element of a plain type; 0 for the block types, which have
// no per-element size (use DTypeRowBytes).
inline size_t DTypeSize(DType dtype) {
  return IsBlockQuantized(dtype) ? 0 : DTypeBlockBytes(dtype);
}

// Bytes of `count` consecutive elements; for a block type `count` must be a
// multiple of 32 (a GGUF row always is).
inline size_t DTypeRowBytes(DType dtype, int64_t count) {
  return static_cast<size_t>(count / DTypeBlockElements(dtype)) *
         DTypeBlockBytes(dtype);
}

inline const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kQ4_0:
      return "q4_0";
    case DType::kQ4_1:
      return "q4_1";
    case DType::kQ8_0:
      return "q8_0";
  }
  return "?";
}

// A view of a row-major tensor whose bytes live elsewhere (a mapped file or a
// buffer owned by ModelWeights). An empty view (data == nullptr) marks an
// optional weight the architecture does not have, e.g. a QKV bias in Llama.
struct Tensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // Row-major; a linear layer is [out, in].
  const void* data = nullptr;

  bool empty() const { return data == nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return shape.empty() ? 0 : n;
  }
  size_t nbytes() const { return DTypeRowBytes(dtype, numel()); }
  // For a 2-D weight [rows, cols].
  int64_t rows() const { return shape.size() == 2 ? shape[0] : 0; }
  int64_t cols() const { return shape.size() == 2 ? shape[1] : 0; }
  const float* f32() const { return static_cast<const float*>(data); }
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_TENSOR_H_
