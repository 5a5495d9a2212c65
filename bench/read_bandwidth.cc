#include "bench/read_bandwidth.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>
#include <utility>

#include "engine/util/check.h"

namespace litestage {
namespace {

using Clock = std::chrono::steady_clock;

// Sums floats [begin, end) with several independent vector accumulators, so
// the loop is bound by memory, not by the latency of one add chain. The
// widest loads the CPU has read fastest (on AVX-512 machines the SSE loop
// reads ~30% slower), so the probe dispatches like the kernels do: a floor
// measured with narrow loads would be too low.
float SumRangeGeneric(const float* begin, const float* end) {
  typedef float Vec4 __attribute__((vector_size(16)));
  constexpr int kLanes = 4;
  constexpr int kAccumulators = 8;
  Vec4 acc[kAccumulators] = {};
  const float* p = begin;
  for (; p + kLanes * kAccumulators <= end; p += kLanes * kAccumulators) {
    for (int a = 0; a < kAccumulators; ++a) {
      Vec4 v;
      __builtin_memcpy(&v, p + a * kLanes, sizeof(v));
      acc[a] += v;
    }
  }
  float total = 0.0f;
  for (int a = 0; a < kAccumulators; ++a) {
    for (int lane = 0; lane < kLanes; ++lane) total += acc[a][lane];
  }
  for (; p < end; ++p) total += *p;
  return total;
}

__attribute__((target("avx2"))) float SumRangeAvx2(const float* begin,
                                                   const float* end) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps(), _mm256_setzero_ps()};
  const float* p = begin;
  for (; p + 32 <= end; p += 32) {
    for (int a = 0; a < 4; ++a) {
      acc[a] = _mm256_add_ps(acc[a], _mm256_loadu_ps(p + 8 * a));
    }
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]),
                                       _mm256_add_ps(acc[2], acc[3])));
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  for (; p < end; ++p) total += *p;
  return total;
}

__attribute__((target("avx512f"))) float SumRangeAvx512(const float* begin,
                                                        const float* end) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps(), _mm512_setzero_ps()};
  const float* p = begin;
  for (; p + 64 <= end; p += 64) {
    for (int a = 0; a < 4; ++a) {
      acc[a] = _mm512_add_ps(acc[a], _mm512_loadu_ps(p + 16 * a));
    }
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]),
                                       _mm512_add_ps(acc[2], acc[3])));
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  for (; p < end; ++p) total += *p;
  return total;
}

using SumRangeFn = float (*)(const float*, const float*);

// The widest sum loop this CPU runs, and its name for the report.
std::pair<SumRangeFn, const char*> PickSumRange() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {SumRangeAvx512, "avx512"};
  if (__builtin_cpu_supports("avx2")) return {SumRangeAvx2, "avx2"};
  return {SumRangeGeneric, "sse"};
}

}  // namespace

// The buffer is written first so every page is resident before timing.
std::vector<double> MeasureReadBandwidth(int64_t megabytes, int threads,
                                         int passes) {
  const size_t count =
      static_cast<size_t>(megabytes) * (1 << 20) / sizeof(float);
  std::unique_ptr<float[]> buffer(new float[count]);  // [count] f32
  std::fill(buffer.get(), buffer.get() + count, 1.0f);
  std::vector<float> partial(threads);  // [threads] per-thread sums
  const SumRangeFn sum_range = PickSumRange().first;
  std::vector<double> bytes_per_second;
  for (int pass = 0; pass < passes + 1; ++pass) {  // Pass 0 warms up.
    const Clock::time_point start = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        const size_t begin = count * t / threads;
        const size_t end = count * (t + 1) / threads;
        partial[t] = sum_range(buffer.get() + begin, buffer.get() + end);
      });
    }
    for (std::thread& worker : workers) worker.join();
    const double seconds =
        std::chrono::duration<double>(Clock::now() - start).count();
    // Every element is 1, so the sum is the element count (exact in each
    // accumulator lane); checking it keeps the reads from being optimized
    // away and proves the whole buffer was read.
    double sum = 0.0;
    for (float p : partial) sum += p;
    LS_CHECK(std::abs(sum - static_cast<double>(count)) <= 1e-3 * count)
        << "bandwidth probe read " << sum << " of " << count << " elements";
    if (pass > 0)
      bytes_per_second.push_back(static_cast<double>(count * sizeof(float)) /
                                 seconds);
  }
  return bytes_per_second;
}

const char* ReadBandwidthProbeIsa() { return PickSumRange().second; }

}  // namespace litestage
