// RmsNorm, SiluMul, softmax / logit statistics and attention against
// double-precision references.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "engine/backends/cpu/activation.h"
#include "engine/backends/cpu/attention.h"
#include "engine/backends/cpu/rmsnorm.h"
#include "engine/backends/cpu/softmax.h"
#include "engine/runtime/logit_stats.h"
#include "gtest/gtest.h"

namespace litestage::cpu {
namespace {

std::vector<float> RandomValues(size_t count, std::mt19937& rng,
                                float low = -1.0f, float high = 1.0f) {
  std::uniform_real_distribution<float> dist(low, high);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

// Results are O(1) and each is a handful of fp32 operations past an fp32
// reduction, so a few ulps (relative 1e-6 = ~8 ulp) is the bound. A wrong
// formula (missing eps, mean vs sum, wrong weight) is off by far more.
constexpr double kElementwiseRelativeTolerance = 1e-6;

TEST(RmsNormTest, MatchesReference) {
  std::mt19937 rng(11);
  for (int64_t dim : {1, 7, 16, 64, 100, 896}) {
    const int64_t rows = 3;
    const float eps = 1e-6f;
    std::vector<float> x = RandomValues(rows * dim, rng, -3.0f, 3.0f);
    const std::vector<float> weight = RandomValues(dim, rng, 0.5f, 1.5f);
    std::vector<float> out(rows * dim);
    RmsNorm(x.data(), weight.data(), rows, dim, eps, out.data());
    for (int64_t r = 0; r < rows; ++r) {
      double sum_squares = 0.0;
      for (int64_t i = 0; i < dim; ++i)
        sum_squares += double{x[r * dim + i]} * x[r * dim + i];
      const double inv_rms = 1.0 / std::sqrt(sum_squares / dim + eps);
      for (int64_t i = 0; i < dim; ++i) {
        const double expected = x[r * dim + i] * inv_rms * weight[i];
        ASSERT_NEAR(
            out[r * dim + i], expected,
            kElementwiseRelativeTolerance * (std::fabs(expected) + 1e-3))
            << "dim=" << dim << " row=" << r << " i=" << i;
      }
    }
    // In place gives the same result.
    RmsNorm(x.data(), weight.data(), rows, dim, eps, x.data());
    EXPECT_EQ(x, out);
  }
}

TEST(RmsNormTest, EpsDominatesForZeroInput) {
  std::vector<float> x(8, 0.0f), weight(8, 1.0f), out(8, NAN);
  RmsNorm(x.data(), weight.data(), 1, 8, 1e-5f, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(SiluMulTest, MatchesReferenceAndAliases) {
  std::mt19937 rng(12);
  const int64_t n = 1000;
  std::vector<float> gate = RandomValues(n, rng, -10.0f, 10.0f);
  const std::vector<float> up = RandomValues(n, rng, -2.0f, 2.0f);
  gate[0] = -100.0f;  // exp(100) overflows: result must be -0, not NaN.
  gate[1] = 100.0f;
  std::vector<float> out(n);
  SiluMul(gate.data(), up.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double expected = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_NEAR(out[i], expected,
                kElementwiseRelativeTolerance * (std::fabs(expected) + 1e-6))
        << "gate=" << g;
  }
  EXPECT_FALSE(std::isnan(out[0]));
  SiluMul(gate.data(), up.data(), n, gate.data());
  EXPECT_EQ(gate, out);
}

TEST(SoftmaxTest, MatchesReferenceAndSumsToOne) {
  std::mt19937 rng(13);
  for (int64_t n : {1, 2, 17, 1000}) {
    std::vector<float> x = RandomValues(n, rng, -20.0f, 20.0f);
    x[0] += 1000.0f;  // Unstable without subtracting the max.
    std::vector<double> expected(n);
    const double max_value = *std::max_element(x.begin(), x.end());
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i)
      sum += expected[i] = std::exp(x[i] - max_value);
    SoftmaxInPlace(x.data(), n);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(x[i], expected[i] / sum, 1e-6 * (expected[i] / sum) + 1e-12);
      total += x[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST(SoftmaxTest, NegativeInfinityBecomesZero) {
  std::vector<float> x = {0.0f, -INFINITY, 0.0f};
  SoftmaxInPlace(x.data(), 3);
  EXPECT_EQ(x[1], 0.0f);
  EXPECT_FLOAT_EQ(x[0], 0.5f);
  EXPECT_FLOAT_EQ(x[2], 0.5f);
}

struct ReferenceStats {
  double max_prob;
  double entropy;
};

ReferenceStats ReferenceLogitStats(const std::vector<float>& logits) {
  const double max_value = *std::max_element(logits.begin(), logits.end());
  double z = 0.0;
  for (float l : logits) z += std::exp(l - max_value);
  double entropy = 0.0;
  for (float l : logits) {
    const double p = std::exp(l - max_value) / z;
    if (p > 0.0) entropy -= p * std::log(p);
  }
  return {1.0 / z, entropy};
}

TEST(LogitStatsTest, MatchesReference) {
  std::mt19937 rng(14);
  for (int64_t n : {1, 5, 1000, 151936}) {
    for (float spread : {0.1f, 5.0f, 40.0f}) {
      const std::vector<float> logits = RandomValues(n, rng, -spread, spread);
      const LogitStats stats = ComputeLogitStats(logits.data(), n);
      const auto max_it = std::max_element(logits.begin(), logits.end());
      EXPECT_EQ(stats.argmax, max_it - logits.begin());
      EXPECT_EQ(stats.max_logit, *max_it);
      const ReferenceStats expected = ReferenceLogitStats(logits);
      // fp32 exp per term (relative 1e-7), double sums: ~1e-6 relative.
      EXPECT_NEAR(stats.max_prob, expected.max_prob,
                  1e-6 * expected.max_prob + 1e-12);
      EXPECT_NEAR(stats.entropy, expected.entropy,
                  1e-5 * expected.entropy + 1e-6)
          << "n=" << n << " spread=" << spread;
    }
  }
}

TEST(LogitStatsTest, TiesPickTheLowestIndex) {
  const std::vector<float> logits = {1.0f, 5.0f, 5.0f, 2.0f, 5.0f};
  const LogitStats stats = ComputeLogitStats(logits.data(), 5);
  EXPECT_EQ(stats.argmax, 1);
  EXPECT_EQ(stats.max_logit, 5.0f);
}

TEST(LogitStatsTest, UniformAndMaskedLogits) {
  std::vector<float> logits(1024, 3.0f);
  LogitStats stats = ComputeLogitStats(logits.data(), 1024);
  EXPECT_EQ(stats.argmax, 0);
  EXPECT_NEAR(stats.entropy, std::log(1024.0), 1e-5);
  EXPECT_NEAR(stats.max_prob, 1.0 / 1024, 1e-9);
  // -inf (masked) logits have probability 0 and add nothing to the entropy.
  for (size_t i = 0; i < logits.size(); i += 2) logits[i] = -INFINITY;
  stats = ComputeLogitStats(logits.data(), 1024);
  EXPECT_EQ(stats.argmax, 1);
  EXPECT_NEAR(stats.entropy, std::log(512.0), 1e-5);
  EXPECT_FALSE(std::isnan(stats.entropy));
  // One dominant logit: entropy ~ 0, max_prob ~ 1.
  std::vector<float> peaked(100, -50.0f);
  peaked[42] = 50.0f;
  stats = ComputeLogitStats(peaked.data(), 100);
  EXPECT_EQ(stats.argmax, 42);
  EXPECT_NEAR(stats.max_prob, 1.0, 1e-6);
  EXPECT_NEAR(stats.entropy, 0.0, 1e-6);
}

// A paged cache for one KV head: blocks allocated separately and handed out in
// shuffled order, as a block table would.
struct PagedHead {
  PagedHead(int64_t num_positions, int64_t block_size, int64_t head_dim,
            std::mt19937& rng) {
    const int64_t num_blocks = (num_positions + block_size - 1) / block_size;
    for (int64_t b = 0; b < num_blocks; ++b) {
      storage.push_back(RandomValues(block_size * head_dim, rng));
      storage.push_back(RandomValues(block_size * head_dim, rng));
    }
    std::vector<int64_t> order(num_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t b : order) {
      keys.push_back(storage[2 * b].data());
      values.push_back(storage[2 * b + 1].data());
    }
  }
  std::vector<std::vector<float>> storage;
  std::vector<const float*> keys;    // [num_blocks] -> [block_size, head_dim]
  std::vector<const float*> values;  // [num_blocks] -> [block_size, head_dim]
};

TEST(AttentionTest, MatchesReferenceWithPartialBlocks) {
  std::mt19937 rng(15);
  const int64_t block_size = 16;
  for (int64_t head_dim : {7, 64}) {
    for (int64_t end_pos : {1, 15, 16, 17, 40, 100}) {
      for (int64_t begin_pos : {0, 5, 20}) {
        if (begin_pos >= end_pos) continue;
        PagedHead cache(end_pos, block_size, head_dim, rng);
        const std::vector<float> q = RandomValues(head_dim, rng, -2.0f, 2.0f);
        const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
        std::vector<float> scores(end_pos, NAN), out(head_dim, NAN),
            expected(head_dim);
        AttentionHead(q.data(), cache.keys.data(), cache.values.data(),
                      block_size, begin_pos, end_pos, head_dim, scale,
                      scores.data(), out.data());
        AttentionHeadReference(q.data(), cache.keys.data(), cache.values.data(),
                               block_size, begin_pos, end_pos, head_dim, scale,
                               expected.data());
        for (int64_t d = 0; d < head_dim; ++d) {
          // Outputs are convex combinations of values in [-1, 1]: fp32
          // scores and weights put the error near 1e-7 per term.
          ASSERT_NEAR(out[d], expected[d], 2e-6)
              << "head_dim=" << head_dim << " begin=" << begin_pos
              << " end=" << end_pos;
        }
      }
    }
  }
}

TEST(AttentionTest, SinglePositionCopiesItsValue) {
  std::mt19937 rng(16);
  PagedHead cache(40, 16, 8, rng);
  const std::vector<float> q = RandomValues(8, rng);
  std::vector<float> scores(40), out(8);
  AttentionHead(q.data(), cache.keys.data(), cache.values.data(), 16, 37, 38, 8,
                0.5f, scores.data(), out.data());
  const float* value = cache.values[37 / 16] + (37 % 16) * 8;
  for (int d = 0; d < 8; ++d) EXPECT_FLOAT_EQ(out[d], value[d]);
}

}  // namespace
}  // namespace litestage::cpu
