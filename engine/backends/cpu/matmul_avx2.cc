// AVX2 + FMA matmul micro-kernels, for f32, bf16 and quant-block weights.
// Compiled with -mavx2 -mfma -mf16c; only
// called when ActiveIsa() >= kAvx2. Must not use inline functions or templates
// shared with other translation units (see matmul_tiles.h).
#include <immintrin.h>

#include <cstdint>

#include "engine/backends/cpu/matmul_internal.h"
#include "engine/backends/cpu/matmul_tiles.h"

namespace litestage::cpu::internal {
namespace {

inline __m256 LoadW(const float* p) { return _mm256_loadu_ps(p); }
// bf16 -> f32 is exact: zero-extend (vpmovzxwd) and shift into the high half.
inline __m256 LoadW(const uint16_t* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// The k tail (fewer than 8 elements): vmaskmovps does not fault on masked
// lanes; AVX2 has no 16-bit masked load, so bf16 goes through a small buffer.
inline __m256i TailMask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256 LoadWTail(const float* p, int64_t count, __m256i mask) {
  return _mm256_maskload_ps(p, mask);
}
inline __m256 LoadWTail(const uint16_t* p, int64_t count, __m256i mask) {
  alignas(16) uint16_t buffer[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < count; ++i) buffer[i] = p[i];
  return LoadW(buffer);
}

inline float HorizontalSum(__m256 v) {
  __m128 sum =
      _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// Elements [8 * q, 8 * q + 8) of a quant block (q = 0..3), exactly their
// f32 dequantization (engine/model/quant_blocks.h).
template <int Q>
inline __m256i Nibbles8(const uint8_t* qs) {
  // Elements 0..15 are the low nibbles of bytes 0..15, 16..31 the high ones.
  const __m256i bytes = _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * (Q & 1))));
  return Q < 2 ? _mm256_and_si256(bytes, _mm256_set1_epi32(0x0F))
               : _mm256_srli_epi32(bytes, 4);
}
template <int Q>
inline __m256 Decode8(const BlockQ4_0& block) {
  const __m256i q =
      _mm256_sub_epi32(Nibbles8<Q>(block.qs), _mm256_set1_epi32(8));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(block.d));
}
template <int Q>
inline __m256 Decode8(const BlockQ4_1& block) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(Nibbles8<Q>(block.qs)),
                         _mm256_set1_ps(block.d), _mm256_set1_ps(block.m));
}
template <int Q>
inline __m256 Decode8(const BlockQ8_0& block) {
  const __m256i q = _mm256_cvtepi8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(block.qs + 8 * Q)));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(block.d));
}

struct Avx2Kernel {
  // 4 x 3 tile: 12 accumulators + 3 weight vectors + 1 x vector fill the 16
  // ymm registers exactly (a 4 x 4 tile would spill).
  static constexpr int kMaxRows = 4;
  static constexpr int kMaxCols = 3;
  // Weight rows of a single-row (decode) tile.
  static constexpr int kDecodeCols = 3;

  template <int MR, int NR, typename WT>
  static void Tile(const float* x, int64_t ldx, const WT* w, int64_t ldw,
                   int64_t k_len, float* y, int64_t ldy, bool accumulate) {
    if constexpr (kIsQuantBlock<WT>) {
      TileBlocks<MR, NR>(x, ldx, w, ldw, k_len, y, ldy, accumulate);
    } else {
      TileValues<MR, NR>(x, ldx, w, ldw, k_len, y, ldy, accumulate);
    }
  }

  template <int MR, int NR, typename WT>
  static void TileValues(const float* x, int64_t ldx, const WT* w, int64_t ldw,
                         int64_t k_len, float* y, int64_t ldy,
                         bool accumulate) {
    __m256 acc[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    }
    int64_t kk = 0;
    for (; kk + 8 <= k_len; kk += 8) {
      __m256 wv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) wv[j] = LoadW(w + j * ldw + kk);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + i * ldx + kk);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    if (kk < k_len) {
      const int64_t count = k_len - kk;
      const __m256i mask = TailMask(count);
      __m256 wv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j)
        wv[j] = LoadWTail(w + j * ldw + kk, count, mask);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_maskload_ps(x + i * ldx + kk, mask);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    Store<MR, NR>(acc, y, ldy, accumulate);
  }

  // The f32 Tile's loop on quant blocks: the block's four 8-element pieces
  // meet each accumulator in the order of the f32 Tile's 8-wide steps (one
  // piece per weight row at a time keeps the 16 ymm registers enough), so
  // the bits match it on the dequantized weights.
  template <int MR, int NR, typename Block>
  static void TileBlocks(const float* x, int64_t ldx, const Block* w,
                         int64_t ldw, int64_t k_len, float* y, int64_t ldy,
                         bool accumulate) {
    __m256 acc[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    }
    const int64_t blocks = k_len / kQuantBlockElements;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t kk = b * kQuantBlockElements;
      Piece<0, MR, NR>(x + kk, ldx, w + b, ldw, acc);
      Piece<1, MR, NR>(x + kk, ldx, w + b, ldw, acc);
      Piece<2, MR, NR>(x + kk, ldx, w + b, ldw, acc);
      Piece<3, MR, NR>(x + kk, ldx, w + b, ldw, acc);
    }
    Store<MR, NR>(acc, y, ldy, accumulate);
  }

  // acc[i][j] += x[i, 8Q..8Q+8) * block j's piece Q.
  template <int Q, int MR, int NR, typename Block>
  static void Piece(const float* x, int64_t ldx, const Block* w, int64_t ldw,
                    __m256 (&acc)[MR][NR]) {
    __m256 wv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) wv[j] = Decode8<Q>(w[j * ldw]);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + 8 * Q);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }

  template <typename Block>
  static void DequantizeRow(const Block* row, int64_t blocks, float* out) {
    for (int64_t b = 0; b < blocks; ++b) {
      float* piece = out + b * kQuantBlockElements;
      _mm256_storeu_ps(piece, Decode8<0>(row[b]));
      _mm256_storeu_ps(piece + 8, Decode8<1>(row[b]));
      _mm256_storeu_ps(piece + 16, Decode8<2>(row[b]));
      _mm256_storeu_ps(piece + 24, Decode8<3>(row[b]));
    }
  }

  // Reduces each accumulator's lanes and writes (or adds) the MR x NR block.
  template <int MR, int NR>
  static void Store(__m256 (&acc)[MR][NR], float* y, int64_t ldy,
                    bool accumulate) {
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const float sum = HorizontalSum(acc[i][j]);
        float* out = y + i * ldy + j;
        *out = accumulate ? *out + sum : sum;
      }
    }
  }
};

}  // namespace

void MatMulColumnsF32Avx2(const float* x, int64_t m, int64_t k, const float* w,
                          int64_t n, int64_t n_begin, int64_t n_end, float* y) {
  MatMulColumns<Avx2Kernel>(x, m, k, w, n, n_begin, n_end, y);
}

void MatMulColumnsBf16Avx2(const float* x, int64_t m, int64_t k,
                           const uint16_t* w, int64_t n, int64_t n_begin,
                           int64_t n_end, float* y) {
  MatMulColumns<Avx2Kernel>(x, m, k, w, n, n_begin, n_end, y);
}

void MatMulColumnsQ4_0Avx2(const float* x, int64_t m, int64_t k,
                           const BlockQ4_0* w, int64_t n, int64_t n_begin,
                           int64_t n_end, float* y, float* panel) {
  MatMulColumns<Avx2Kernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

void MatMulColumnsQ4_1Avx2(const float* x, int64_t m, int64_t k,
                           const BlockQ4_1* w, int64_t n, int64_t n_begin,
                           int64_t n_end, float* y, float* panel) {
  MatMulColumns<Avx2Kernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

void MatMulColumnsQ8_0Avx2(const float* x, int64_t m, int64_t k,
                           const BlockQ8_0* w, int64_t n, int64_t n_begin,
                           int64_t n_end, float* y, float* panel) {
  MatMulColumns<Avx2Kernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

}  // namespace litestage::cpu::internal
