// Entry points of the per-ISA matmul translation units (matmul.cc dispatches).
// Each computes the output columns [n_begin, n_end) of y = x * w^T for all m
// rows, single-threaded:
//   x: [m, k] f32; w: [n, k] f32 or bf16 bits; y: [m, n] f32.
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_INTERNAL_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_INTERNAL_H_

#include <cstdint>

namespace litestage::cpu::internal {

#define LITESTAGE_DECLARE_MATMUL_COLUMNS(suffix)                            \
  void MatMulColumnsF32##suffix(const float* x, int64_t m, int64_t k,       \
                                const float* w, int64_t n, int64_t n_begin, \
                                int64_t n_end, float* y);                   \
  void MatMulColumnsBf16##suffix(const float* x, int64_t m, int64_t k,      \
                                 const uint16_t* w, int64_t n,              \
                                 int64_t n_begin, int64_t n_end, float* y);

LITESTAGE_DECLARE_MATMUL_COLUMNS(Scalar)
LITESTAGE_DECLARE_MATMUL_COLUMNS(Avx2)
LITESTAGE_DECLARE_MATMUL_COLUMNS(Avx512)

#undef LITESTAGE_DECLARE_MATMUL_COLUMNS

}  // namespace litestage::cpu::internal

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_INTERNAL_H_
