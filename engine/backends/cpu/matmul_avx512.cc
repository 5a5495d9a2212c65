// AVX-512 (F, BW, VL) matmul micro-kernels, for f32, bf16 and quant-block
// weights. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c; only
// called when ActiveIsa() is kAvx512. Must
// not use inline functions or templates shared with other translation units
// (see matmul_tiles.h).
//
// Not used (yet): vdpbf16ps (AVX512_BF16) for m > 1 with BF16 weights. It
// would halve the multiply instructions of prefill but needs x rounded to
// bf16 (relative error 2^-9 per element, ~1e-2 relative on a dot product
// against sum|x w| instead of ~1e-6), and prefill would then disagree with
// decode (m = 1, exact widening) on the same tokens. Decode is bound by
// memory bandwidth, where it cannot help.
#include <immintrin.h>

#include <cstdint>

#include "engine/backends/cpu/matmul_internal.h"
#include "engine/backends/cpu/matmul_tiles.h"

namespace litestage::cpu::internal {
namespace {

inline __m512 LoadW(const float* p) { return _mm512_loadu_ps(p); }
// bf16 -> f32 is exact: zero-extend to 32 bits (vpmovzxwd) and shift the
// bits into the high half (vpslld 16).
inline __m512 LoadW(const uint16_t* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
// Masked loads never touch (or fault on) the lanes outside `mask`.
inline __m512 LoadWMasked(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
inline __m512 LoadWMasked(const uint16_t* p, __mmask16 mask) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// A quant block's 32 weights as two vectors (elements 0..15, 16..31), each
// exactly its f32 dequantization (engine/model/quant_blocks.h). The kernel
// is bound by the two ports that execute 512-bit operations, so the 4-bit
// types decode through a table: the block's 16 possible values, one FMA
// (q * d + m, exactly the dequantizer's rounding), then vpermps picks each
// element's value by its nibble (vpermps reads only the index's low 4 bits,
// so the low nibbles need no mask).
inline __m512 Iota16() {
  return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
inline void DecodeNibbles(const uint8_t* qs, __m512 table, __m512* low,
                          __m512* high) {
  const __m512i bytes = _mm512_cvtepu8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  *low = _mm512_permutexvar_ps(bytes, table);
  *high = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
}
inline void Decode(const BlockQ4_0& block, __m512* low, __m512* high) {
  const __m512 table = _mm512_mul_ps(
      _mm512_sub_ps(Iota16(), _mm512_set1_ps(8.0f)), _mm512_set1_ps(block.d));
  DecodeNibbles(block.qs, table, low, high);
}
inline void Decode(const BlockQ4_1& block, __m512* low, __m512* high) {
  const __m512 table = _mm512_fmadd_ps(Iota16(), _mm512_set1_ps(block.d),
                                       _mm512_set1_ps(block.m));
  DecodeNibbles(block.qs, table, low, high);
}
inline void Decode(const BlockQ8_0& block, __m512* low, __m512* high) {
  const __m512 d = _mm512_set1_ps(block.d);
  const auto* qs = reinterpret_cast<const __m128i*>(block.qs);
  *low = _mm512_mul_ps(
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qs))), d);
  *high = _mm512_mul_ps(
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qs + 1))), d);
}

struct Avx512Kernel {
  // 4 x 4 tile: 16 accumulators + 4 weight vectors + 1 x vector of the 32
  // zmm registers; 8 loads feed 16 FMAs per 16-element step.
  static constexpr int kMaxRows = 4;
  static constexpr int kMaxCols = 4;
  // Weight rows of a single-row (decode) tile.
  static constexpr int kDecodeCols = 8;

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
    __m512 acc[MR][NR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    }
    int64_t kk = 0;
    for (; kk + 16 <= k_len; kk += 16) {
      if constexpr (MR == 1) {
        // Decode (m = 1) is bound by memory bandwidth: ask for the same
        // columns of the next NR weight rows (the next tile) now, so the
        // stream never stalls at a tile boundary. Prefetches past the end
        // of w are harmless (they never fault).
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) {
          _mm_prefetch(reinterpret_cast<const char*>(w + (NR + j) * ldw + kk),
                       _MM_HINT_T0);
        }
      }
      __m512 wv[NR];
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) wv[j] = LoadW(w + j * ldw + kk);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_loadu_ps(x + i * ldx + kk);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    if (kk < k_len) {
      const __mmask16 mask = static_cast<__mmask16>((1u << (k_len - kk)) - 1u);
      __m512 wv[NR];
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) wv[j] = LoadWMasked(w + j * ldw + kk, mask);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * ldx + kk);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    Store<MR, NR>(acc, y, ldy, accumulate);
  }

  // The f32 Tile's loop on quant blocks: per block, the low then the high
  // 16 elements meet each accumulator in the order the f32 Tile's 16-wide
  // steps would, so the bits match it on the dequantized weights.
  template <int MR, int NR, typename Block>
  static void TileBlocks(const float* x, int64_t ldx, const Block* w,
                         int64_t ldw, int64_t k_len, float* y, int64_t ldy,
                         bool accumulate) {
    __m512 acc[MR][NR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    }
    const int64_t blocks = k_len / kQuantBlockElements;
    for (int64_t b = 0; b < blocks; ++b) {
      if constexpr (MR == 1) {
        // As in Tile: start the next tile's weight rows now.
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) {
          _mm_prefetch(reinterpret_cast<const char*>(w + (NR + j) * ldw + b),
                       _MM_HINT_T0);
        }
      }
      __m512 low[NR];
      __m512 high[NR];
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) Decode(w[j * ldw + b], &low[j], &high[j]);
      const int64_t kk = b * kQuantBlockElements;
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 x_low = _mm512_loadu_ps(x + i * ldx + kk);
        const __m512 x_high = _mm512_loadu_ps(x + i * ldx + kk + 16);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) {
          acc[i][j] = _mm512_fmadd_ps(x_low, low[j], acc[i][j]);
          acc[i][j] = _mm512_fmadd_ps(x_high, high[j], acc[i][j]);
        }
      }
    }
    Store<MR, NR>(acc, y, ldy, accumulate);
  }

  template <typename Block>
  static void DequantizeRow(const Block* row, int64_t blocks, float* out) {
    for (int64_t b = 0; b < blocks; ++b) {
      __m512 low;
      __m512 high;
      Decode(row[b], &low, &high);
      _mm512_storeu_ps(out + b * kQuantBlockElements, low);
      _mm512_storeu_ps(out + b * kQuantBlockElements + 16, high);
    }
  }

  // Reduces each accumulator's lanes and writes (or adds) the MR x NR block.
  template <int MR, int NR>
  static void Store(__m512 (&acc)[MR][NR], float* y, int64_t ldy,
                    bool accumulate) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) {
        const float sum = _mm512_reduce_add_ps(acc[i][j]);
        float* out = y + i * ldy + j;
        *out = accumulate ? *out + sum : sum;
      }
    }
  }
};

}  // namespace

void MatMulColumnsF32Avx512(const float* x, int64_t m, int64_t k,
                            const float* w, int64_t n, int64_t n_begin,
                            int64_t n_end, float* y) {
  MatMulColumns<Avx512Kernel>(x, m, k, w, n, n_begin, n_end, y);
}

void MatMulColumnsBf16Avx512(const float* x, int64_t m, int64_t k,
                             const uint16_t* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y) {
  MatMulColumns<Avx512Kernel>(x, m, k, w, n, n_begin, n_end, y);
}

void MatMulColumnsQ4_0Avx512(const float* x, int64_t m, int64_t k,
                             const BlockQ4_0* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y, float* panel) {
  MatMulColumns<Avx512Kernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

void MatMulColumnsQ4_1Avx512(const float* x, int64_t m, int64_t k,
                             const BlockQ4_1* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y, float* panel) {
  MatMulColumns<Avx512Kernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

void MatMulColumnsQ8_0Avx512(const float* x, int64_t m, int64_t k,
                             const BlockQ8_0* w, int64_t n, int64_t n_begin,
                             int64_t n_end, float* y, float* panel) {
  MatMulColumns<Avx512Kernel>(x, m, k, w, n, n_begin, n_end, y, panel);
}

}  // namespace litestage::cpu::internal
