// y = x * w^T for linear layers, the kernel that dominates inference time.
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_H_

#include <cstdint>

#include "absl/types/span.h"
#include "engine/backends/cpu/thread_pool.h"
#include "engine/model/tensor.h"

namespace litestage::cpu {

// y[i, j] = sum_k x[i, k] * w[j, k] with fp32 accumulation.
//   x: [m, k] f32 row-major, k = w.cols().
//   w: [n, k] F32, BF16, Q4_0, Q4_1 or Q8_0 (a linear layer's [out, in]
//      weight), n = w.rows(); a block type's k is a multiple of 32.
//   y: [m, n] f32 row-major; must not overlap x or w.
// Any m >= 0, k >= 1, n >= 1; pointers need no particular alignment. BF16
// weights are widened exactly and quant blocks decoded exactly in registers,
// in the f32 kernel's summation order: the result is bit-identical to F32
// weights holding the same values (the quantized model computes what its
// f32 dequantization does, at a fifth of the memory traffic). A row's result
// does not depend on m or on the other rows (k is summed in fixed blocks,
// matmul_tiles.h), so a token computes to the same bits in any batch or chunk.
// Parallelised over n on `pool`; uses the kernel of ActiveIsa().
void MatMul(const float* x, int64_t m, const Tensor& w, float* y,
            ThreadPool& pool);

// One weight of a MatMulGroup and where its product goes.
struct MatMulOutput {
  const Tensor* w;  // [n_i, k], any dtype MatMul takes.
  float* y;         // [m, n_i] f32.
};

// MatMul of one x against several weights sharing k (q/k/v, gate/up) in
// one parallel pass: the threads split the union of the weights' columns,
// so the step pays one fork/join instead of one per weight. Each y is
// bit-identical to its own MatMul.
void MatMulGroup(const float* x, int64_t m,
                 absl::Span<const MatMulOutput> outputs, ThreadPool& pool);

// Row `row` of a weight MatMul takes, as exact f32 (out: [w.cols()]); the
// embedding lookup of a quantized table.
void WeightRow(const Tensor& w, int64_t row, float* out);

// The obvious triple loop with double accumulation (rounded to f32 at the
// end): the accuracy reference for tests and the scalar peer for benchmarks.
void MatMulReference(const float* x, int64_t m, const Tensor& w, float* y);

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_H_
