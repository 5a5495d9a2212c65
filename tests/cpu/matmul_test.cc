#include "engine/backends/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/backends/cpu/cpu_features.h"
#include "engine/util/float16.h"
#include "gtest/gtest.h"
#include "tests/cpu/isa_test_util.h"

namespace litestage::cpu {
namespace {

// A weight matrix [n, k] in f32 or bf16, stored one element past an aligned
// boundary so that the kernels see unaligned rows. For bf16 the f32 copy holds
// the widened values, so the reference sees exactly what the kernel sees.
struct TestWeight {
  TestWeight(DType dtype, int64_t n, int64_t k,
             const std::vector<float>& values)
      : f32_values(values) {
    tensor.dtype = dtype;
    tensor.shape = {n, k};
    if (dtype == DType::kF32) {
      f32_storage.assign(values.size() + 1, 0.0f);
      for (size_t i = 0; i < values.size(); ++i) f32_storage[i + 1] = values[i];
      tensor.data = f32_storage.data() + 1;
    } else {
      bf16_storage.assign(values.size() + 1, 0);
      for (size_t i = 0; i < values.size(); ++i) {
        bf16_storage[i + 1] = F32ToBf16(values[i]);
        f32_values[i] = Bf16ToF32(bf16_storage[i + 1]);
      }
      tensor.data = bf16_storage.data() + 1;
    }
  }
  Tensor tensor;
  std::vector<float> f32_values;  // [n, k] the exact values the kernel reads
  std::vector<float> f32_storage;
  std::vector<uint16_t> bf16_storage;
};

std::vector<float> RandomValues(size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

// sum_k |x[i, k] * w[j, k]|: the scale of the rounding error of a dot product
// (cancellation makes the result itself a poor yardstick).
std::vector<double> AbsoluteProductSums(const std::vector<float>& x, int64_t m,
                                        const std::vector<float>& w, int64_t n,
                                        int64_t k) {
  std::vector<double> sums(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t kk = 0; kk < k; ++kk)
        sum += std::fabs(double{x[i * k + kk]} * w[j * k + kk]);
      sums[i * n + j] = sum;
    }
  }
  return sums;
}

// Tolerance: the kernels accumulate in fp32 (unit roundoff u = 6e-8) over k
// terms split across vector lanes; rounding errors grow like sqrt(k) * u *
// sum|x w| for random data. 2e-6 * sqrt(k) leaves ~30x headroom over that
// yet stays far below the error of one dropped or doubled term, about
// sum|x w| / k (k <= 1100 here: 9e-4 vs at most 7e-5 relative). BF16 weights
// are widened exactly, so they get the same bound.
constexpr double kRelativeTolerancePerSqrtK = 2e-6;

void CheckAllIsas(const float* x_data, int64_t m, const TestWeight& weight,
                  const std::vector<float>& x, ThreadPool& pool, bool exact) {
  const int64_t n = weight.tensor.rows();
  const int64_t k = weight.tensor.cols();
  std::vector<float> expected(m * n);
  MatMulReference(x_data, m, weight.tensor, expected.data());
  const std::vector<double> scale =
      AbsoluteProductSums(x, m, weight.f32_values, n, k);
  IsaRestorer restore;
  for (Isa isa : AvailableIsas()) {
    ASSERT_EQ(SetActiveIsaForTesting(isa), isa);
    SCOPED_TRACE(testing::Message() << "isa=" << IsaName(isa) << " dtype="
                                    << DTypeName(weight.tensor.dtype)
                                    << " m=" << m << " k=" << k << " n=" << n);
    std::vector<float> actual(m * n, NAN);
    MatMul(x_data, m, weight.tensor, actual.data(), pool);
    for (int64_t i = 0; i < m * n; ++i) {
      const double tolerance =
          exact ? 0.0
                : kRelativeTolerancePerSqrtK * std::sqrt(double(k)) * scale[i] +
                      1e-30;
      ASSERT_NEAR(actual[i], expected[i], tolerance)
          << "at row " << i / n << " col " << i % n;
    }
  }
}

void CheckRandom(DType dtype, int64_t m, int64_t k, int64_t n, ThreadPool& pool,
                 std::mt19937& rng) {
  const TestWeight weight(dtype, n, k, RandomValues(n * k, rng));
  // x also starts one float past the allocation: unaligned rows.
  const std::vector<float> x = RandomValues(m * k, rng);
  std::vector<float> x_storage(m * k + 1);
  std::copy(x.begin(), x.end(), x_storage.begin() + 1);
  CheckAllIsas(x_storage.data() + 1, m, weight, x, pool, /*exact=*/false);
}

TEST(MatMulTest, MatchesReferenceOnAwkwardSizes) {
  ThreadPool pool(3);
  std::mt19937 rng(1234);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t m : {1, 2, 3, 5, 8, 17, 64}) {
      for (int64_t k : {1, 7, 16, 64, 100, 896}) {
        for (int64_t n : {1, 3, 33, 257}) {
          CheckRandom(dtype, m, k, n, pool, rng);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(MatMulTest, RowAndDepthBlocking) {
  // m > 128 crosses a row block; k = 1100 is summed in two k blocks (y
  // accumulates partial sums), and 128 rows x 1100 floats of x exceed
  // 512 KiB, so the k blocks are the outer loop.
  ThreadPool pool(2);
  std::mt19937 rng(99);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    CheckRandom(dtype, 131, 1100, 37, pool, rng);
    CheckRandom(dtype, 300, 40, 19, pool, rng);
  }
}

// A row's result is the same bits whatever else is in the call: computing
// rows alone (m = 1), in small groups and in one call of m = 131 (which
// crosses a row block and, at k = 1100 and 4100, the size where the k blocks
// become the outer loop) gives identical outputs, for every ISA and dtype and
// thread count. Chunked prefill, decode steps and batches of any size then
// compute a token the same way (the backend conformance suite and the prefix
// cache rely on it).
TEST(MatMulTest, ARowsResultDoesNotDependOnTheOtherRows) {
  ThreadPool one(1), three(3);
  std::mt19937 rng(2024);
  IsaRestorer restore;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t k : {64, 1000, 1100, 4100}) {
      constexpr int64_t kM = 131, kN = 21;
      const TestWeight weight(dtype, kN, k, RandomValues(kN * k, rng));
      const std::vector<float> x = RandomValues(kM * k, rng);
      for (Isa isa : AvailableIsas()) {
        ASSERT_EQ(SetActiveIsaForTesting(isa), isa);
        SCOPED_TRACE(testing::Message() << "isa=" << IsaName(isa) << " dtype="
                                        << DTypeName(dtype) << " k=" << k);
        std::vector<float> all(kM * kN);
        MatMul(x.data(), kM, weight.tensor, all.data(), three);
        for (int64_t group : {1, 3, 40}) {
          for (int64_t i0 = 0; i0 < kM; i0 += group) {
            const int64_t rows = std::min(group, kM - i0);
            std::vector<float> part(rows * kN);
            MatMul(x.data() + i0 * k, rows, weight.tensor, part.data(),
                   group == 3 ? three : one);
            for (int64_t i = 0; i < rows * kN; ++i) {
              ASSERT_EQ(part[i], all[i0 * kN + i])
                  << "row " << i0 + i / kN << " col " << i % kN
                  << " in groups of " << group;
            }
          }
        }
      }
    }
  }
}

TEST(MatMulTest, SmallIntegersAreExact) {
  // Products and sums of small integers are exact in fp32 in any order, so
  // every kernel must reproduce the reference bit for bit: a wrong index or
  // a lost tail element cannot hide inside a tolerance.
  ThreadPool pool(2);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dist(-3, 3);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t m : {1, 4, 6, 9}) {
      for (int64_t k : {1, 9, 31, 33, 250}) {
        for (int64_t n : {1, 5, 18, 70}) {
          std::vector<float> w(n * k), x(m * k);
          for (float& v : w) v = static_cast<float>(dist(rng));
          for (float& v : x) v = static_cast<float>(dist(rng));
          const TestWeight weight(dtype, n, k, w);
          CheckAllIsas(x.data(), m, weight, x, pool, /*exact=*/true);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(MatMulTest, SingleThreadPoolAndLargeMatVec) {
  // The decode path split across threads (n = 4864 = 304 column units).
  ThreadPool single(1), pool(3);
  std::mt19937 rng(5);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    CheckRandom(dtype, 1, 896, 4864, single, rng);
    CheckRandom(dtype, 1, 896, 4864, pool, rng);
  }
}

TEST(MatMulTest, ZeroRowsWritesNothing) {
  ThreadPool pool(2);
  std::vector<float> w(12, 1.0f);
  Tensor tensor{DType::kF32, {3, 4}, w.data()};
  float y = 42.0f;
  MatMul(nullptr, 0, tensor, &y, pool);
  EXPECT_EQ(y, 42.0f);
}

}  // namespace
}  // namespace litestage::cpu
