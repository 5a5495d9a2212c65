// Entry points of the per-ISA matmul translation units (matmul.cc dispatches).
// Each computes the output columns [n_begin, n_end) of y = x * w^T for all m
// rows, single-threaded:
//   x: [m, k] f32; w: [n, k] f32, bf16 bits or quant blocks (n rows of k / 32
//   blocks); y: [m, n] f32; panel (block types): null or kMaxPanelRows * k
//   floats of scratch, used when m > 4 (see MatMulColumns).
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_INTERNAL_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_INTERNAL_H_

#include <cstdint>

#include "engine/model/quant_blocks.h"

namespace litestage::cpu::internal {

// Weight rows per micro-tile of the widest kernel: the panel's height.
inline constexpr int64_t kMaxPanelRows = 4;

#define LITESTAGE_DECLARE_MATMUL_COLUMNS(suffix)                            \
  void MatMulColumnsF32##suffix(const float* x, int64_t m, int64_t k,       \
                                const float* w, int64_t n, int64_t n_begin, \
                                int64_t n_end, float* y);                   \
  void MatMulColumnsBf16##suffix(const float* x, int64_t m, int64_t k,      \
                                 const uint16_t* w, int64_t n,              \
                                 int64_t n_begin, int64_t n_end, float* y); \
  void MatMulColumnsQ4_0##suffix(                                           \
      const float* x, int64_t m, int64_t k, const BlockQ4_0* w, int64_t n,  \
      int64_t n_begin, int64_t n_end, float* y, float* panel);              \
  void MatMulColumnsQ4_1##suffix(                                           \
      const float* x, int64_t m, int64_t k, const BlockQ4_1* w, int64_t n,  \
      int64_t n_begin, int64_t n_end, float* y, float* panel);              \
  void MatMulColumnsQ8_0##suffix(                                           \
      const float* x, int64_t m, int64_t k, const BlockQ8_0* w, int64_t n,  \
      int64_t n_begin, int64_t n_end, float* y, float* panel);

LITESTAGE_DECLARE_MATMUL_COLUMNS(Scalar)
LITESTAGE_DECLARE_MATMUL_COLUMNS(Avx2)
LITESTAGE_DECLARE_MATMUL_COLUMNS(Avx512)

#undef LITESTAGE_DECLARE_MATMUL_COLUMNS

}  // namespace litestage::cpu::internal

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_INTERNAL_H_
