// The matmul on quant blocks (Q4_0, Q4_1, Q8_0; engine/model/quant_blocks.h)
// against two independent references: the f32 matmul on the weights
// dequantized by the GGUF loader's dequantizer (engine/model/dequantize.cc,
// ggml's formulas on the file's bytes) must give the same bits at every ISA
// level, row count and thread count; and the double-precision reference
// must agree within f32 rounding.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <random>
#include <vector>

#include "engine/backends/cpu/cpu_features.h"
#include "engine/backends/cpu/matmul.h"
#include "engine/backends/cpu/thread_pool.h"
#include "engine/model/dequantize.h"
#include "engine/model/gguf.h"
#include "engine/model/quant_blocks.h"
#include "engine/model/tensor.h"
#include "engine/util/float16.h"
#include "gtest/gtest.h"
#include "tests/cpu/isa_test_util.h"

namespace litestage::cpu {
namespace {

struct QuantType {
  DType dtype;
  GgufType gguf;
  int file_block_bytes;  // As a GGUF file stores one block.
};

constexpr QuantType kTypes[] = {{DType::kQ4_0, GgufType::kQ4_0, 18},
                                {DType::kQ4_1, GgufType::kQ4_1, 20},
                                {DType::kQ8_0, GgufType::kQ8_0, 34}};

// A random f16 scale: mostly normal values of either sign around 2^-8..2^4,
// sometimes subnormal or zero (the exactness argument covers them too).
uint16_t RandomHalf(std::mt19937& rng) {
  const uint32_t pick = rng() % 16;
  const uint16_t sign = (rng() & 1) ? 0x8000 : 0;
  const uint16_t mantissa = rng() & 0x3FF;
  if (pick == 0) return sign;                                    // +-0
  if (pick == 1) return static_cast<uint16_t>(sign | mantissa);  // subnormal
  const uint16_t exponent = static_cast<uint16_t>(7 + rng() % 13);
  return static_cast<uint16_t>(sign | (exponent << 10) | mantissa);
}

// A [n, k] quantized weight in both forms: the file's bytes (dequantized by
// the loader's DequantizeRow into `dequantized`) and the kernels' blocks
// (f32 scales), which `tensor` views. The blocks sit 4 bytes past a 64-byte
// boundary so that no row is vector-aligned.
struct QuantWeight {
  QuantWeight(const QuantType& type, int64_t n, int64_t k, std::mt19937& rng)
      : dequantized(static_cast<size_t>(n * k)) {
    const int64_t blocks = n * k / kQuantBlockElements;
    const size_t block_bytes = DTypeBlockBytes(type.dtype);
    storage.assign(blocks * block_bytes / 4 + 17, 0);
    uint8_t* base = reinterpret_cast<uint8_t*>(storage.data());
    base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64 + 4;
    std::vector<uint8_t> file(static_cast<size_t>(type.file_block_bytes));
    for (int64_t b = 0; b < blocks; ++b) {
      for (uint8_t& byte : file) byte = static_cast<uint8_t>(rng());
      const uint16_t d = RandomHalf(rng);
      const uint16_t m = RandomHalf(rng);
      std::memcpy(file.data(), &d, 2);
      if (type.dtype == DType::kQ4_1) std::memcpy(file.data() + 2, &m, 2);
      EXPECT_TRUE(DequantizeRow(type.gguf, file.data(), kQuantBlockElements,
                                dequantized.data() + b * kQuantBlockElements)
                      .ok());
      uint8_t* out = base + b * block_bytes;
      const float scale = F16ToF32(d);
      const float minimum = F16ToF32(m);
      std::memcpy(out, &scale, 4);
      if (type.dtype == DType::kQ4_1) {
        std::memcpy(out + 4, &minimum, 4);
        std::memcpy(out + 8, file.data() + 4, 16);
      } else {
        std::memcpy(out + 4, file.data() + 2, type.file_block_bytes - 2);
      }
    }
    tensor = Tensor{type.dtype, {n, k}, base};
    f32 = Tensor{DType::kF32, {n, k}, dequantized.data()};
  }
  Tensor tensor;
  Tensor f32;  // The same values dequantized, as f32.
  std::vector<float> dequantized;
  std::vector<uint32_t> storage;
};

std::vector<float> RandomX(int64_t m, int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * k));
  for (float& v : x) v = dist(rng);
  return x;
}

// Fresh random inputs every run (the seed is printed on failure).
uint32_t FreshSeed() { return std::random_device{}(); }

TEST(QuantMatMulTest, BitIdenticalToF32OnTheDequantizedWeights) {
  IsaRestorer restore;
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  ThreadPool one(1);
  ThreadPool two(2);
  // k: one block, under and over the 1024-element k block, not a multiple
  // of it; m: decode, one micro-tile, the panel path, more than 128 rows;
  // n: tails of every tile width.
  const int64_t shapes[][3] = {{1, 32, 1},    {1, 576, 37},  {2, 64, 9},
                               {3, 1056, 13}, {4, 2080, 8},  {5, 576, 17},
                               {9, 1536, 33}, {33, 96, 70},  {130, 64, 20},
                               {1, 2080, 45}, {7, 1024, 16}, {1, 4096, 24}};
  for (const Isa level : AvailableIsas()) {
    const Isa isa = SetActiveIsaForTesting(level);
    for (const QuantType& type : kTypes) {
      for (const auto& [m, k, n] : shapes) {
        QuantWeight w(type, n, k, rng);
        const std::vector<float> x = RandomX(m, k, rng);
        std::vector<float> expected(static_cast<size_t>(m * n), NAN);
        MatMul(x.data(), m, w.f32, expected.data(), one);
        for (ThreadPool* pool : {&one, &two}) {
          std::vector<float> got(static_cast<size_t>(m * n), NAN);  // Poison.
          MatMul(x.data(), m, w.tensor, got.data(), *pool);
          ASSERT_EQ(std::memcmp(got.data(), expected.data(),
                                got.size() * sizeof(float)),
                    0)
              << DTypeName(type.dtype) << " " << IsaName(isa) << " m=" << m
              << " k=" << k << " n=" << n << " threads=" << pool->num_threads()
              << " seed=" << seed;
        }
      }
    }
  }
}

// The double-precision loop on the same values: the sums differ only by f32
// rounding, bounded by ~k * 2^-24 * sum |x w| (asserted at 1e-5 relative to
// that sum, k <= 2080).
TEST(QuantMatMulTest, AgreesWithTheDoubleReference) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  ThreadPool pool(2);
  for (const QuantType& type : kTypes) {
    for (const int64_t m : {1, 6}) {
      const int64_t k = 2080;
      const int64_t n = 19;
      QuantWeight w(type, n, k, rng);
      const std::vector<float> x = RandomX(m, k, rng);
      std::vector<float> got(static_cast<size_t>(m * n));
      std::vector<float> reference(static_cast<size_t>(m * n));
      MatMul(x.data(), m, w.tensor, got.data(), pool);
      MatMulReference(x.data(), m, w.tensor, reference.data());
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double scale = 0;
          for (int64_t kk = 0; kk < k; ++kk) {
            scale +=
                std::fabs(double{x[i * k + kk]} * w.dequantized[j * k + kk]);
          }
          EXPECT_NEAR(got[i * n + j], reference[i * n + j],
                      1e-5 * scale + 1e-30)
              << DTypeName(type.dtype) << " m=" << m << " (" << i << ", " << j
              << ") seed=" << seed;
        }
      }
    }
  }
}

TEST(QuantMatMulTest, WeightRowIsTheDequantizedRow) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  for (const QuantType& type : kTypes) {
    QuantWeight w(type, 5, 96, rng);
    std::vector<float> row(96, NAN);
    for (int64_t r = 0; r < 5; ++r) {
      WeightRow(w.tensor, r, row.data());
      ASSERT_EQ(std::memcmp(row.data(), w.dequantized.data() + r * 96,
                            96 * sizeof(float)),
                0)
          << DTypeName(type.dtype) << " row " << r << " seed=" << seed;
    }
  }
}

// The group's threads split the union of its weights' columns; every output
// must still be its own MatMul's bits (mixed dtypes, column counts that do
// not fill the 16-column units, m on both sides of the panel threshold).
TEST(MatMulGroupTest, EachOutputIsItsOwnMatMul) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  ThreadPool two(2);
  const int64_t k = 1088;
  QuantWeight q41(kTypes[1], 75, k, rng);
  QuantWeight q80(kTypes[2], 24, k, rng);
  QuantWeight q40(kTypes[0], 9, k, rng);
  for (const int64_t m : {1, 7}) {
    const std::vector<float> x = RandomX(m, k, rng);
    const Tensor* weights[] = {&q41.tensor, &q80.f32, &q80.tensor, &q40.tensor};
    std::vector<std::vector<float>> grouped;
    grouped.reserve(std::size(weights));
    std::vector<MatMulOutput> outputs;
    for (const Tensor* w : weights) {
      grouped.emplace_back(static_cast<size_t>(m * w->rows()), NAN);
      outputs.push_back({w, grouped.back().data()});
    }
    MatMulGroup(x.data(), m, outputs, two);
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::vector<float> alone(grouped[i].size(), NAN);
      MatMul(x.data(), m, *weights[i], alone.data(), two);
      ASSERT_EQ(std::memcmp(alone.data(), grouped[i].data(),
                            alone.size() * sizeof(float)),
                0)
          << "output " << i << " m=" << m << " seed=" << seed;
    }
  }
}

}  // namespace
}  // namespace litestage::cpu
