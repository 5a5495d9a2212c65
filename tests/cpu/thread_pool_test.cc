#include "engine/backends/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace litestage::cpu {
namespace {

// Records the chunks of one ParallelFor and checks they tile [0, n) exactly
// once, evenly, with at most num_threads chunks.
void ExpectExactEvenCover(ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<int>> hits(n);
  std::mutex mutex;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    std::lock_guard<std::mutex> lock(mutex);
    chunks.emplace_back(begin, end);
  });
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(hits[i].load(), 1) << "index " << i << " of " << n;
  EXPECT_EQ(static_cast<int64_t>(chunks.size()),
            std::min<int64_t>(n, pool.num_threads()));
  std::sort(chunks.begin(), chunks.end());
  int64_t smallest = n, largest = 0;
  for (const auto& [begin, end] : chunks) {
    EXPECT_LT(begin, end);
    smallest = std::min(smallest, end - begin);
    largest = std::max(largest, end - begin);
  }
  EXPECT_LE(largest - smallest, 1) << "chunks of " << n << " are not even";
}

TEST(ThreadPoolTest, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {1, 2, 3, 4, 5, 7, 64, 100, 1001}) {
      SCOPED_TRACE(testing::Message() << "threads=" << threads << " n=" << n);
      ExpectExactEvenCover(pool, n);
    }
  }
}

TEST(ThreadPoolTest, FewerItemsThanThreadsUsesFewerChunks) {
  ThreadPool pool(8);
  ExpectExactEvenCover(pool, 3);
  ExpectExactEvenCover(pool, 1);
}

TEST(ThreadPoolTest, EmptyRangeCallsNothing) {
  ThreadPool pool(3);
  int calls = 0;
  pool.ParallelFor(0, [&](int64_t, int64_t) { ++calls; });
  pool.ParallelFor(-5, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, ManyBackToBackCalls) {
  ThreadPool pool(4);
  std::atomic<int64_t> total{0};
  constexpr int kCalls = 20000;
  for (int call = 0; call < kCalls; ++call) {
    const int64_t n = 1 + call % 9;
    pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
      int64_t local = 0;
      for (int64_t i = begin; i < end; ++i) local += i + 1;
      total.fetch_add(local);
    });
  }
  int64_t expected = 0;
  for (int call = 0; call < kCalls; ++call) {
    const int64_t n = 1 + call % 9;
    expected += n * (n + 1) / 2;
  }
  EXPECT_EQ(total.load(), expected);
}

TEST(ThreadPoolTest, ResultsAreVisibleToTheCaller) {
  // Plain (non-atomic) writes by workers must be visible after ParallelFor.
  ThreadPool pool(3);
  std::vector<int64_t> values(3000);
  for (int round = 1; round <= 200; ++round) {
    pool.ParallelFor(static_cast<int64_t>(values.size()),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t i = begin; i < end; ++i)
                         values[i] = i * round;
                     });
    for (int64_t i = 0; i < static_cast<int64_t>(values.size()); i += 97) {
      ASSERT_EQ(values[i], i * round);
    }
  }
}

TEST(ThreadPoolTest, ZeroMeansHardwareConcurrency) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.num_threads(),
            std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  ExpectExactEvenCover(pool, 17);
}

TEST(ThreadPoolTest, SurvivesIdlePeriodsAndDestruction) {
  // Workers fall asleep on the condition variable after spinning; a later call
  // must wake them.
  ThreadPool pool(3);
  ExpectExactEvenCover(pool, 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ExpectExactEvenCover(pool, 10);
  { ThreadPool unused(4); }  // Constructed and destroyed without a job.
}

}  // namespace
}  // namespace litestage::cpu
