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
enum class DType : uint8_t { kF32, kF16, kBF16 };

inline size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

inline const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
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
  size_t nbytes() const {
    return static_cast<size_t>(numel()) * DTypeSize(dtype);
  }
  // For a 2-D weight [rows, cols].
  int64_t rows() const { return shape.size() == 2 ? shape[0] : 0; }
  int64_t cols() const { return shape.size() == 2 ? shape[1] : 0; }
  const float* f32() const { return static_cast<const float*>(data); }
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_TENSOR_H_
