// AVX-512 (F, BW, VL) matmul micro-kernels. Compiled with -mavx512f
// -mavx512bw -mavx512vl -mfma; only called when ActiveIsa() is kAvx512. Must
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

struct Avx512Kernel {
  // 4 x 4 tile: 16 accumulators + 4 weight vectors + 1 x vector of the 32
  // zmm registers; 8 loads feed 16 FMAs per 16-element step.
  static constexpr int kMaxRows = 4;
  static constexpr int kMaxCols = 4;

  template <int MR, int NR, typename WT>
  static void Tile(const float* x, int64_t ldx, const WT* w, int64_t ldw,
                   int64_t k_len, float* y, int64_t ldy, bool accumulate) {
    __m512 acc[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    }
    int64_t kk = 0;
    for (; kk + 16 <= k_len; kk += 16) {
      if constexpr (MR == 1) {
        // Decode (m = 1) is bound by memory bandwidth: ask for the same
        // columns of the next NR weight rows (the next tile) now, so the
        // stream never stalls at a tile boundary. Prefetches past the end
        // of w are harmless (they never fault).
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
          _mm_prefetch(reinterpret_cast<const char*>(w + (NR + j) * ldw + kk),
                       _MM_HINT_T0);
        }
      }
      __m512 wv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) wv[j] = LoadW(w + j * ldw + kk);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_loadu_ps(x + i * ldx + kk);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    if (kk < k_len) {
      const __mmask16 mask = static_cast<__mmask16>((1u << (k_len - kk)) - 1u);
      __m512 wv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) wv[j] = LoadWMasked(w + j * ldw + kk, mask);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * ldx + kk);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
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

}  // namespace litestage::cpu::internal
