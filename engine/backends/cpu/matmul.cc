// MatMul dispatch (ISA, dtype, threads), the portable scalar kernel and the
// double-precision reference.
#include "engine/backends/cpu/matmul.h"

#include <algorithm>
#include <cstring>

#include "engine/backends/cpu/cpu_features.h"
#include "engine/backends/cpu/matmul_internal.h"
#include "engine/backends/cpu/matmul_tiles.h"
#include "engine/util/check.h"
#include "engine/util/float16.h"

namespace litestage::cpu {
namespace internal {
namespace {

inline float WidenWeight(float value) { return value; }
inline float WidenWeight(uint16_t bits) { return Bf16ToF32(bits); }

struct ScalarKernel {
  static constexpr int kMaxRows = 4;
  static constexpr int kMaxCols = 4;

  template <int MR, int NR, typename WT>
  static void Tile(const float* x, int64_t ldx, const WT* w, int64_t ldw,
                   int64_t k_len, float* y, int64_t ldy, bool accumulate) {
    float acc[MR][NR] = {};
    for (int64_t kk = 0; kk < k_len; ++kk) {
      float wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = WidenWeight(w[j * ldw + kk]);
      for (int i = 0; i < MR; ++i) {
        const float xv = x[i * ldx + kk];
        for (int j = 0; j < NR; ++j) acc[i][j] += xv * wv[j];
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) {
        float* out = y + i * ldy + j;
        *out = accumulate ? *out + acc[i][j] : acc[i][j];
      }
    }
  }
};

}  // namespace

void MatMulColumnsF32Scalar(const float* x, int64_t m, int64_t k,
                            const float* w, int64_t n, int64_t n_begin,
                            int64_t n_end, float* y) {
  MatMulColumns<ScalarKernel>(x, m, k, w, n, n_begin, n_end, y);
}

void MatMulColumnsBf16Scalar(const float* x, int64_t m, int64_t k,
                             const uint16_t* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y) {
  MatMulColumns<ScalarKernel>(x, m, k, w, n, n_begin, n_end, y);
}

}  // namespace internal

namespace {

// Threads split n in units of 16 columns so that (for n a multiple of 16)
// no two threads write the same 64-byte line of y.
constexpr int64_t kColumnUnit = 16;
// Below this many multiply-adds one thread finishes before the others would
// have woken up.
constexpr int64_t kMinParallelWork = 128 * 1024;

void CheckWeight(const Tensor& w) {
  LS_CHECK(w.shape.size() == 2 && w.data != nullptr)
      << "MatMul needs a 2-D weight";
  LS_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kBF16)
      << "MatMul supports F32 and BF16 weights, got " << DTypeName(w.dtype);
}

template <typename WT>
using ColumnsFn = void (*)(const float*, int64_t, int64_t, const WT*, int64_t,
                           int64_t, int64_t, float*);

template <typename WT>
void Run(ColumnsFn<WT> columns, const float* x, int64_t m, int64_t k,
         const WT* w, int64_t n, float* y, ThreadPool& pool) {
  const int64_t units = (n + kColumnUnit - 1) / kColumnUnit;
  if (pool.num_threads() == 1 || units == 1 || m * n * k < kMinParallelWork) {
    columns(x, m, k, w, n, 0, n, y);
    return;
  }
  pool.ParallelFor(units, [&](int64_t begin, int64_t end) {
    columns(x, m, k, w, n, begin * kColumnUnit, std::min(end * kColumnUnit, n),
            y);
  });
}

}  // namespace

void MatMul(const float* x, int64_t m, const Tensor& w, float* y,
            ThreadPool& pool) {
  CheckWeight(w);
  const int64_t n = w.rows();
  const int64_t k = w.cols();
  if (m <= 0 || n <= 0) return;
  if (k == 0) {
    std::fill(y, y + m * n, 0.0f);
    return;
  }
  const Isa isa = ActiveIsa();
  if (w.dtype == DType::kF32) {
    ColumnsFn<float> columns = internal::MatMulColumnsF32Scalar;
    if (isa == Isa::kAvx512) columns = internal::MatMulColumnsF32Avx512;
    if (isa == Isa::kAvx2) columns = internal::MatMulColumnsF32Avx2;
    Run(columns, x, m, k, w.f32(), n, y, pool);
  } else {
    ColumnsFn<uint16_t> columns = internal::MatMulColumnsBf16Scalar;
    if (isa == Isa::kAvx512) columns = internal::MatMulColumnsBf16Avx512;
    if (isa == Isa::kAvx2) columns = internal::MatMulColumnsBf16Avx2;
    Run(columns, x, m, k, static_cast<const uint16_t*>(w.data), n, y, pool);
  }
}

void MatMulReference(const float* x, int64_t m, const Tensor& w, float* y) {
  CheckWeight(w);
  const int64_t n = w.rows();
  const int64_t k = w.cols();
  const auto* bf16 = static_cast<const uint16_t*>(w.data);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const float weight = w.dtype == DType::kF32
                                 ? w.f32()[j * k + kk]
                                 : Bf16ToF32(bf16[j * k + kk]);
        sum += static_cast<double>(x[i * k + kk]) * weight;
      }
      y[i * n + j] = static_cast<float>(sum);
    }
  }
}

}  // namespace litestage::cpu
