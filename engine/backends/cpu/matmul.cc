// MatMul dispatch (ISA, dtype, threads), the portable scalar kernel and the
// double-precision reference.
#include "engine/backends/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

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

// A quant block's 32 weights, exactly their f32 dequantization.
void DecodeBlock(const BlockQ4_0& block, float* out /*[32]*/) {
  const float d = block.d;
  for (int j = 0; j < 16; ++j) {
    out[j] = static_cast<float>((block.qs[j] & 0x0F) - 8) * d;
    out[j + 16] = static_cast<float>((block.qs[j] >> 4) - 8) * d;
  }
}
void DecodeBlock(const BlockQ4_1& block, float* out /*[32]*/) {
  const float d = block.d;
  const float m = block.m;
  for (int j = 0; j < 16; ++j) {
    out[j] = static_cast<float>(block.qs[j] & 0x0F) * d + m;
    out[j + 16] = static_cast<float>(block.qs[j] >> 4) * d + m;
  }
}
void DecodeBlock(const BlockQ8_0& block, float* out /*[32]*/) {
  const float d = block.d;
  for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(block.qs[j]) * d;
}

struct ScalarKernel {
  static constexpr int kMaxRows = 4;
  static constexpr int kMaxCols = 4;
  // Weight rows of a single-row (decode) tile.
  static constexpr int kDecodeCols = 4;

  template <int MR, int NR, typename WT>
  static void Tile(const float* x, int64_t ldx, const WT* w, int64_t ldw,
                   int64_t k_len, float* y, int64_t ldy, bool accumulate) {
    float acc[MR][NR] = {};
    if constexpr (kIsQuantBlock<WT>) {
      // The same per-element order on each block's decoded weights.
      for (int64_t b = 0; b < k_len / kQuantBlockElements; ++b) {
        float wv[NR][kQuantBlockElements];
        for (int j = 0; j < NR; ++j) DecodeBlock(w[j * ldw + b], wv[j]);
        for (int kk = 0; kk < kQuantBlockElements; ++kk) {
          for (int i = 0; i < MR; ++i) {
            const float xv = x[i * ldx + b * kQuantBlockElements + kk];
            for (int j = 0; j < NR; ++j) acc[i][j] += xv * wv[j][kk];
          }
        }
      }
    } else {
      for (int64_t kk = 0; kk < k_len; ++kk) {
        float wv[NR];
        for (int j = 0; j < NR; ++j) wv[j] = WidenWeight(w[j * ldw + kk]);
        for (int i = 0; i < MR; ++i) {
          const float xv = x[i * ldx + kk];
          for (int j = 0; j < NR; ++j) acc[i][j] += xv * wv[j];
        }
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) {
        float* out = y + i * ldy + j;
        *out = accumulate ? *out + acc[i][j] : acc[i][j];
      }
    }
  }

  template <typename Block>
  static void DequantizeRow(const Block* row, int64_t blocks, float* out) {
    for (int64_t b = 0; b < blocks; ++b) {
      DecodeBlock(row[b], out + b * kQuantBlockElements);
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

void MatMulColumnsQ4_0Scalar(const float* x, int64_t m, int64_t k,
                             const BlockQ4_0* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y, float* panel) {
  MatMulColumns<ScalarKernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

void MatMulColumnsQ4_1Scalar(const float* x, int64_t m, int64_t k,
                             const BlockQ4_1* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y, float* panel) {
  MatMulColumns<ScalarKernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

void MatMulColumnsQ8_0Scalar(const float* x, int64_t m, int64_t k,
                             const BlockQ8_0* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y, float* panel) {
  MatMulColumns<ScalarKernel>(x, m, k, w, n, n_begin, n_end, y, panel);
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
  LS_CHECK(w.dtype != DType::kF16) << "MatMul does not take f16 weights";
  LS_CHECK(w.cols() % DTypeBlockElements(w.dtype) == 0)
      << DTypeName(w.dtype) << " rows must be whole blocks, got " << w.cols()
      << " columns";
}

// Splits y's columns over the pool. `columns(n_begin, n_end, panel)`
// computes y[:, n_begin:n_end]; `panel_floats` > 0 gives each call that
// much scratch (block weights with m > 1: the dequantized panel).
template <typename ColumnsFn>
void Run(int64_t m, int64_t k, int64_t n, size_t panel_floats, ThreadPool& pool,
         const ColumnsFn& columns) {
  const auto run = [&](int64_t n_begin, int64_t n_end) {
    std::unique_ptr<float[]> panel;
    if (panel_floats > 0) panel = std::make_unique<float[]>(panel_floats);
    columns(n_begin, n_end, panel.get());
  };
  const int64_t units = (n + kColumnUnit - 1) / kColumnUnit;
  if (pool.num_threads() == 1 || units == 1 || m * n * k < kMinParallelWork) {
    run(0, n);
    return;
  }
  pool.ParallelFor(units, [&](int64_t begin, int64_t end) {
    run(begin * kColumnUnit, std::min(end * kColumnUnit, n));
  });
}

// The per-ISA entry points of one weight type.
template <typename WT>
struct IsaColumns {
  using Fn = void (*)(const float*, int64_t, int64_t, const WT*, int64_t,
                      int64_t, int64_t, float*, float*);
  Fn scalar;
  Fn avx2;
  Fn avx512;
};

template <typename WT>
void RunBlocks(const IsaColumns<WT>& table, const float* x, int64_t m,
               int64_t k, const Tensor& w, float* y, ThreadPool& pool) {
  const Isa isa = ActiveIsa();
  typename IsaColumns<WT>::Fn fn = table.scalar;
  if (isa == Isa::kAvx512) fn = table.avx512;
  if (isa == Isa::kAvx2) fn = table.avx2;
  const auto* blocks = static_cast<const WT*>(w.data);
  const int64_t n = w.rows();
  // A single micro-tile of rows decodes in registers; more rows share a
  // dequantized panel (MatMulColumns).
  const size_t panel =
      m > 1 ? static_cast<size_t>(internal::kMaxPanelRows * k) : 0;
  Run(m, k, n, panel, pool, [&](int64_t n_begin, int64_t n_end, float* p) {
    fn(x, m, k, blocks, n, n_begin, n_end, y, p);
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
  switch (w.dtype) {
    case DType::kF32: {
      auto columns = internal::MatMulColumnsF32Scalar;
      if (isa == Isa::kAvx512) columns = internal::MatMulColumnsF32Avx512;
      if (isa == Isa::kAvx2) columns = internal::MatMulColumnsF32Avx2;
      Run(m, k, n, 0, pool, [&](int64_t n_begin, int64_t n_end, float*) {
        columns(x, m, k, w.f32(), n, n_begin, n_end, y);
      });
      return;
    }
    case DType::kBF16: {
      auto columns = internal::MatMulColumnsBf16Scalar;
      if (isa == Isa::kAvx512) columns = internal::MatMulColumnsBf16Avx512;
      if (isa == Isa::kAvx2) columns = internal::MatMulColumnsBf16Avx2;
      const auto* bits = static_cast<const uint16_t*>(w.data);
      Run(m, k, n, 0, pool, [&](int64_t n_begin, int64_t n_end, float*) {
        columns(x, m, k, bits, n, n_begin, n_end, y);
      });
      return;
    }
    case DType::kQ4_0:
      RunBlocks<BlockQ4_0>(
          {internal::MatMulColumnsQ4_0Scalar, internal::MatMulColumnsQ4_0Avx2,
           internal::MatMulColumnsQ4_0Avx512},
          x, m, k, w, y, pool);
      return;
    case DType::kQ4_1:
      RunBlocks<BlockQ4_1>(
          {internal::MatMulColumnsQ4_1Scalar, internal::MatMulColumnsQ4_1Avx2,
           internal::MatMulColumnsQ4_1Avx512},
          x, m, k, w, y, pool);
      return;
    case DType::kQ8_0:
      RunBlocks<BlockQ8_0>(
          {internal::MatMulColumnsQ8_0Scalar, internal::MatMulColumnsQ8_0Avx2,
           internal::MatMulColumnsQ8_0Avx512},
          x, m, k, w, y, pool);
      return;
    case DType::kF16:
      break;
  }
  LS_CHECK(false) << "unreachable: " << DTypeName(w.dtype);
}

void WeightRow(const Tensor& w, int64_t row, float* out) {
  CheckWeight(w);
  const int64_t k = w.cols();
  const uint8_t* bytes = static_cast<const uint8_t*>(w.data) +
                         static_cast<size_t>(row) * DTypeRowBytes(w.dtype, k);
  const auto decode_blocks = [&](const auto* blocks) {
    for (int64_t b = 0; b < k / kQuantBlockElements; ++b) {
      internal::DecodeBlock(blocks[b], out + b * kQuantBlockElements);
    }
  };
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, bytes, static_cast<size_t>(k) * sizeof(float));
      return;
    case DType::kBF16: {
      const auto* bits = reinterpret_cast<const uint16_t*>(bytes);
      for (int64_t i = 0; i < k; ++i) out[i] = Bf16ToF32(bits[i]);
      return;
    }
    case DType::kQ4_0:
      decode_blocks(reinterpret_cast<const BlockQ4_0*>(bytes));
      return;
    case DType::kQ4_1:
      decode_blocks(reinterpret_cast<const BlockQ4_1*>(bytes));
      return;
    case DType::kQ8_0:
      decode_blocks(reinterpret_cast<const BlockQ8_0*>(bytes));
      return;
    case DType::kF16:
      break;
  }
  LS_CHECK(false) << "unreachable: " << DTypeName(w.dtype);
}

void MatMulReference(const float* x, int64_t m, const Tensor& w, float* y) {
  CheckWeight(w);
  const int64_t n = w.rows();
  const int64_t k = w.cols();
  std::vector<float> weight(static_cast<size_t>(k));
  for (int64_t j = 0; j < n; ++j) {
    WeightRow(w, j, weight.data());
    for (int64_t i = 0; i < m; ++i) {
      double sum = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) {
        sum += static_cast<double>(x[i * k + kk]) * weight[kk];
      }
      y[i * n + j] = static_cast<float>(sum);
    }
  }
}

}  // namespace litestage::cpu
