// The cache-blocking loop nest shared by every matmul ISA level. Included only
// by matmul.cc, matmul_avx2.cc and matmul_avx512.cc, each of which supplies a
// `Kernel` with register-blocked micro-kernels compiled for its ISA.
//
// Everything here is in an anonymous namespace on purpose: the translation
// units are compiled with different -m flags, and a shared inline or template
// definition (including std:: helpers such as std::min) could be emitted with
// AVX-512 instructions in one TU and picked by the linker for all of them,
// crashing on older CPUs. Internal linkage gives each TU its own copy; the
// ISA files therefore also avoid calling inline library templates.
//
// Kernel interface:
//   template <int MR, int NR, typename WT>
//   static void Tile(const float* x, int64_t ldx, const WT* w, int64_t ldw,
//                    int64_t k_len, float* y, int64_t ldy, bool accumulate);
// computes the MR x NR block y[i, j] (+)= sum_{kk < k_len} x[i, kk] * w[j, kk]
// with MR, NR in 1..4; y is overwritten unless `accumulate`. WT is float,
// uint16_t (bf16 bits) or a quant block (engine/model/quant_blocks.h), whose
// w and ldw count blocks of 32 elements (k_len stays in elements, a multiple
// of 32). A block Tile decodes each block in registers and feeds the f32
// Tile's FMAs in the f32 Tile's order, so it gives the f32 Tile's bits on the
// dequantized weights. For a block type the kernel also supplies
//   static void DequantizeRow(const WT* row, int64_t blocks, float* out);
// which writes the exact f32 values (the prefill panel below).
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_TILES_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_TILES_H_

#include <cstdint>

#include "engine/model/quant_blocks.h"

namespace litestage::cpu::internal {
namespace {

inline int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

// Rows of x handled per pass over the weights. Each pass streams this
// thread's slice of w from memory once, so prefill with m <= 128 reads the
// weights once; larger m re-reads them every 128 rows.
constexpr int64_t kRowBlock = 128;
// k is summed in blocks of this many elements whatever m is: a row's result
// (each block's lane sums reduced, then the blocks added in order) is then
// the same bits for any m, so a token computes the same in a prefill chunk,
// a decode step or a batch of any size (the backend conformance suite and
// the prefix cache rely on it). 128 rows x 1024 f32 = 512 KiB of x stay hot
// in L2 while the weights stream past.
constexpr int64_t kKBlock = 1024;
// Bytes of x that fit in L2 beside the streaming weights: below this the
// whole of k is looped inside each weight tile (the weights stream once,
// contiguously); above it, the k blocks are the outer loop.
constexpr int64_t kXBlockBytes = 512 * 1024;

// Elements per unit of a weight row: 1 for float and bf16, 32 for blocks.
template <typename WT>
struct WeightUnit {
  static constexpr int64_t kElements = 1;
};
template <>
struct WeightUnit<BlockQ4_0> {
  static constexpr int64_t kElements = kQuantBlockElements;
};
template <>
struct WeightUnit<BlockQ4_1> {
  static constexpr int64_t kElements = kQuantBlockElements;
};
template <>
struct WeightUnit<BlockQ8_0> {
  static constexpr int64_t kElements = kQuantBlockElements;
};

template <typename WT>
constexpr bool kIsQuantBlock = WeightUnit<WT>::kElements > 1;

template <class K, typename WT>
using TileFn = void (*)(const float*, int64_t, const WT*, int64_t, int64_t,
                        float*, int64_t, bool);

// Single-row (decode) tiles 1 x 1..K::kDecodeCols (at most 8; wider
// entries exist but a kernel never reaches them): more weight rows per
// pass give the FMA chains of the outputs room to overlap (each output's
// accumulator is one dependency chain whatever the tile width, so the
// width never changes a result's bits).
template <class K, typename WT>
struct RowTileTable {
  static constexpr TileFn<K, WT> kTiles[8] = {
      &K::template Tile<1, 1, WT>, &K::template Tile<1, 2, WT>,
      &K::template Tile<1, 3, WT>, &K::template Tile<1, 4, WT>,
      &K::template Tile<1, 5, WT>, &K::template Tile<1, 6, WT>,
      &K::template Tile<1, 7, WT>, &K::template Tile<1, 8, WT>,
  };
};

template <class K, typename WT>
struct TileTable {
  static constexpr TileFn<K, WT> kTiles[4][4] = {
      {&K::template Tile<1, 1, WT>, &K::template Tile<1, 2, WT>,
       &K::template Tile<1, 3, WT>, &K::template Tile<1, 4, WT>},
      {&K::template Tile<2, 1, WT>, &K::template Tile<2, 2, WT>,
       &K::template Tile<2, 3, WT>, &K::template Tile<2, 4, WT>},
      {&K::template Tile<3, 1, WT>, &K::template Tile<3, 2, WT>,
       &K::template Tile<3, 3, WT>, &K::template Tile<3, 4, WT>},
      {&K::template Tile<4, 1, WT>, &K::template Tile<4, 2, WT>,
       &K::template Tile<4, 3, WT>, &K::template Tile<4, 4, WT>},
  };
};

// y[:, n_begin:n_end] = x * w[n_begin:n_end, :]^T.
//   x: [m, k] f32; w: [n, k] WT; y: [m, n] f32.
//   panel: for a block WT, null or room for K::kMaxCols * k floats. With a
//   panel and more x rows than one micro-tile, each kNr weight rows are
//   dequantized once into it and every row group runs the f32 Tile on them
//   (prefill pays the decoding once, not once per row group; the bits are
//   the same either way).
template <class K, typename WT>
void MatMulColumns(const float* x, int64_t m, int64_t k, const WT* w, int64_t n,
                   int64_t n_begin, int64_t n_end, float* y,
                   float* panel = nullptr) {
  constexpr int64_t kMr = K::kMaxRows;  // x rows per micro-tile
  constexpr int64_t kNr = K::kMaxCols;  // w rows per micro-tile
  constexpr int64_t kUnit = WeightUnit<WT>::kElements;
  const int64_t ldw = k / kUnit;  // Units per weight row.
  if (m == 1) {
    constexpr int64_t kDecodeNr = K::kDecodeCols;
    for (int64_t j0 = n_begin; j0 < n_end; j0 += kDecodeNr) {
      const int64_t nr = MinI64(kDecodeNr, n_end - j0);
      for (int64_t k0 = 0; k0 < k; k0 += kKBlock) {
        RowTileTable<K, WT>::kTiles[nr - 1](
            x + k0, k, w + j0 * ldw + k0 / kUnit, ldw, MinI64(kKBlock, k - k0),
            y + j0, n, /*accumulate=*/k0 > 0);
      }
    }
    return;
  }
  for (int64_t m0 = 0; m0 < m; m0 += kRowBlock) {
    const int64_t mb = MinI64(kRowBlock, m - m0);
    const bool use_panel = kUnit > 1 && panel != nullptr && mb > kMr;
    // One micro-tile: rows [i0, i0 + mr) x weight rows [j0, j0 + nr) over
    // k block [k0, k0 + kKBlock). With the panel, weight rows j0.. hold
    // elements [panel_k0, panel_k0 + panel_k) of the panel.
    int64_t panel_k0 = 0;
    int64_t panel_k = 0;
    const auto tile = [&](int64_t i0, int64_t j0, int64_t k0) {
      const int64_t mr = MinI64(kMr, m0 + mb - i0);
      const int64_t nr = MinI64(kNr, n_end - j0);
      const int64_t k_len = MinI64(kKBlock, k - k0);
      if (use_panel) {
        TileTable<K, float>::kTiles[mr - 1][nr - 1](
            x + i0 * k + k0, k, panel + (k0 - panel_k0), panel_k, k_len,
            y + i0 * n + j0, n, /*accumulate=*/k0 > 0);
        return;
      }
      TileTable<K, WT>::kTiles[mr - 1][nr - 1](
          x + i0 * k + k0, k, w + j0 * ldw + k0 / kUnit, ldw, k_len,
          y + i0 * n + j0, n, /*accumulate=*/k0 > 0);
    };
    // Dequantizes elements [k0, k0 + count) of weight rows j0.. (no-op
    // without the panel).
    const auto fill_panel = [&](int64_t j0, int64_t k0, int64_t count) {
      if constexpr (kUnit > 1) {
        if (!use_panel) return;
        panel_k0 = k0;
        panel_k = count;
        const int64_t nr = MinI64(kNr, n_end - j0);
        for (int64_t j = 0; j < nr; ++j) {
          K::DequantizeRow(w + (j0 + j) * ldw + k0 / kUnit, count / kUnit,
                           panel + j * count);
        }
      }
    };
    if (mb * k * static_cast<int64_t>(sizeof(float)) <= kXBlockBytes) {
      // x fits: each kNr weight rows (L1-resident per k block) meet every x
      // row of the block, all of k, before the next tile.
      for (int64_t j0 = n_begin; j0 < n_end; j0 += kNr) {
        fill_panel(j0, 0, k);
        for (int64_t i0 = m0; i0 < m0 + mb; i0 += kMr) {
          for (int64_t k0 = 0; k0 < k; k0 += kKBlock) tile(i0, j0, k0);
        }
      }
    } else {
      // Keep one k block of x hot while every weight tile streams past it.
      for (int64_t k0 = 0; k0 < k; k0 += kKBlock) {
        for (int64_t j0 = n_begin; j0 < n_end; j0 += kNr) {
          fill_panel(j0, k0, MinI64(kKBlock, k - k0));
          for (int64_t i0 = m0; i0 < m0 + mb; i0 += kMr) tile(i0, j0, k0);
        }
      }
    }
  }
}

}  // namespace
}  // namespace litestage::cpu::internal

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_MATMUL_TILES_H_
