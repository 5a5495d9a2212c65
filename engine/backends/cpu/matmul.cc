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

// The kernels cast Tensor::data of a block dtype to these structs.
static_assert(DTypeBlockBytes(DType::kQ4_0) == sizeof(BlockQ4_0));
static_assert(DTypeBlockBytes(DType::kQ4_1) == sizeof(BlockQ4_1));
static_assert(DTypeBlockBytes(DType::kQ8_0) == sizeof(BlockQ8_0));
static_assert(DTypeBlockElements(DType::kQ4_1) == kQuantBlockElements);

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

// y[:, n_begin:n_end] = x * w[n_begin:n_end, :]^T with the kernel of the
// active ISA for w's dtype. `panel`: for block types with m > 1, null or
// internal::kMaxPanelRows * k floats of scratch.
void Columns(const float* x, int64_t m, const Tensor& w, float* y,
             int64_t n_begin, int64_t n_end, float* panel) {
  const Isa isa = ActiveIsa();
  const int64_t n = w.rows();
  const int64_t k = w.cols();
  // Picks the entry point of `isa` from its three variants.
  const auto pick = [isa](auto scalar, auto avx2, auto avx512) {
    if (isa == Isa::kAvx512) return avx512;
    if (isa == Isa::kAvx2) return avx2;
    return scalar;
  };
  switch (w.dtype) {
    case DType::kF32:
      pick(internal::MatMulColumnsF32Scalar, internal::MatMulColumnsF32Avx2,
           internal::MatMulColumnsF32Avx512)(x, m, k, w.f32(), n, n_begin,
                                             n_end, y);
      return;
    case DType::kBF16:
      pick(internal::MatMulColumnsBf16Scalar, internal::MatMulColumnsBf16Avx2,
           internal::MatMulColumnsBf16Avx512)(
          x, m, k, static_cast<const uint16_t*>(w.data), n, n_begin, n_end, y);
      return;
    case DType::kQ4_0:
      pick(internal::MatMulColumnsQ4_0Scalar, internal::MatMulColumnsQ4_0Avx2,
           internal::MatMulColumnsQ4_0Avx512)(
          x, m, k, static_cast<const BlockQ4_0*>(w.data), n, n_begin, n_end, y,
          panel);
      return;
    case DType::kQ4_1:
      pick(internal::MatMulColumnsQ4_1Scalar, internal::MatMulColumnsQ4_1Avx2,
           internal::MatMulColumnsQ4_1Avx512)(
          x, m, k, static_cast<const BlockQ4_1*>(w.data), n, n_begin, n_end, y,
          panel);
      return;
    case DType::kQ8_0:
      pick(internal::MatMulColumnsQ8_0Scalar, internal::MatMulColumnsQ8_0Avx2,
           internal::MatMulColumnsQ8_0Avx512)(
          x, m, k, static_cast<const BlockQ8_0*>(w.data), n, n_begin, n_end, y,
          panel);
      return;
    case DType::kF16:
      break;
  }
  LS_CHECK(false) << "unreachable: " << DTypeName(w.dtype);
}

}  // namespace

void MatMul(const float* x, int64_t m, const Tensor& w, float* y,
            ThreadPool& pool) {
  const MatMulOutput output{&w, y};
  MatMulGroup(x, m, absl::MakeConstSpan(&output, 1), pool);
}

void MatMulGroup(const float* x, int64_t m,
                 absl::Span<const MatMulOutput> outputs, ThreadPool& pool) {
  LS_CHECK(!outputs.empty());
  const int64_t k = outputs[0].w->cols();
  // The group's columns in units of kColumnUnit, weight after weight.
  int64_t units = 0;
  int64_t work = 0;
  bool blocks = false;
  for (const MatMulOutput& out : outputs) {
    CheckWeight(*out.w);
    LS_CHECK(out.w->cols() == k) << "MatMulGroup weights must share x";
    units += (out.w->rows() + kColumnUnit - 1) / kColumnUnit;
    work += m * out.w->rows() * k;
    blocks = blocks || IsBlockQuantized(out.w->dtype);
  }
  if (m <= 0 || units == 0) return;
  if (k == 0) {
    for (const MatMulOutput& out : outputs) {
      std::fill(out.y, out.y + m * out.w->rows(), 0.0f);
    }
    return;
  }
  // Units [begin, end) of the group: each weight's share, with a panel for
  // block weights when m > 1 (more rows than one micro-tile share it).
  const auto run = [&](int64_t begin, int64_t end) {
    std::unique_ptr<float[]> panel;
    if (blocks && m > 1) {
      panel = std::make_unique<float[]>(
          static_cast<size_t>(internal::kMaxPanelRows * k));
    }
    int64_t first = 0;  // The weight's first unit in the group.
    for (const MatMulOutput& out : outputs) {
      const int64_t n = out.w->rows();
      const int64_t count = (n + kColumnUnit - 1) / kColumnUnit;
      const int64_t lo = std::max(begin, first) - first;
      const int64_t hi = std::min(end, first + count) - first;
      if (lo < hi) {
        Columns(x, m, *out.w, out.y, lo * kColumnUnit,
                std::min(hi * kColumnUnit, n), panel.get());
      }
      first += count;
    }
  };
  if (pool.num_threads() == 1 || units == 1 || work < kMinParallelWork) {
    run(0, units);
    return;
  }
  pool.ParallelFor(units, run);
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
