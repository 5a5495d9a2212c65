// CPU kernel throughput next to its ceiling, measured in the same run:
//   BM_MatMul          weights streamed per second (bytes/s) for Qwen2.5-0.5B
//                      shapes, decode (m = 1) and prefill (m = 8, 128).
//   BM_ReadBandwidth   median read bandwidth of bench/read_bandwidth.h, the
//                      probe engine_bench measures its decode floor with.
//   BM_MatMulReference the naive scalar loop, the peer for a speed-up ratio.
// The kernels use cpu::ActiveIsa(); set LITESTAGE_CPU_ISA to compare levels.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "bench/read_bandwidth.h"
#include "engine/backends/cpu/cpu_features.h"
#include "engine/backends/cpu/matmul.h"
#include "engine/backends/cpu/thread_pool.h"
#include "engine/model/tensor.h"
#include "engine/util/float16.h"

namespace litestage::cpu {
namespace {

ThreadPool& PoolWithThreads(int threads) {
  static auto* pools = new std::map<int, std::unique_ptr<ThreadPool>>();
  std::unique_ptr<ThreadPool>& pool = (*pools)[threads];
  if (pool == nullptr) pool = std::make_unique<ThreadPool>(threads);
  return *pool;
}

// Deterministic values in [-1, 1) without the cost of <random> on 10^8
// elements.
float HashToUnit(uint64_t i) {
  uint64_t h = i * 0x9E3779B97F4A7C15ull;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  return static_cast<float>(h >> 40) / static_cast<float>(1 << 23) - 1.0f;
}

// One weight matrix at a time (the largest is 545 MB in f32); benchmarks of
// the same shape run consecutively, so it is rebuilt only on a change.
const Tensor& WeightFor(DType dtype, int64_t n, int64_t k) {
  static Tensor tensor;
  static std::vector<float> f32;
  static std::vector<uint16_t> bf16;
  if (tensor.dtype != dtype || tensor.rows() != n || tensor.cols() != k) {
    f32.clear();
    f32.shrink_to_fit();
    bf16.clear();
    bf16.shrink_to_fit();
    tensor.dtype = dtype;
    tensor.shape = {n, k};
    if (dtype == DType::kF32) {
      f32.resize(n * k);
      for (int64_t i = 0; i < n * k; ++i) f32[i] = HashToUnit(i) * 0.05f;
      tensor.data = f32.data();
    } else {
      bf16.resize(n * k);
      for (int64_t i = 0; i < n * k; ++i)
        bf16[i] = F32ToBf16(HashToUnit(i) * 0.05f);
      tensor.data = bf16.data();
    }
  }
  return tensor;
}

// Args: m, k, n, dtype (0 = f32, 1 = bf16), threads.
void BM_MatMul(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  const DType dtype = state.range(3) == 0 ? DType::kF32 : DType::kBF16;
  ThreadPool& pool = PoolWithThreads(static_cast<int>(state.range(4)));
  const Tensor& w = WeightFor(dtype, n, k);
  std::vector<float> x(m * k), y(m * n);
  for (int64_t i = 0; i < m * k; ++i) x[i] = HashToUnit(i + 12345);
  for (auto _ : state) {
    MatMul(x.data(), m, w, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(w.nbytes()));
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * m * n * k * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(IsaName(ActiveIsa()));
}

void BM_MatMulReference(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  const DType dtype = state.range(3) == 0 ? DType::kF32 : DType::kBF16;
  const Tensor& w = WeightFor(dtype, n, k);
  std::vector<float> x(m * k), y(m * n);
  for (int64_t i = 0; i < m * k; ++i) x[i] = HashToUnit(i + 12345);
  for (auto _ : state) {
    MatMulReference(x.data(), m, w, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(w.nbytes()));
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * m * n * k * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: threads. The same probe engine_bench uses for its floor, so the
// matmul GB/s figures compare against the figure the reports quote.
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  std::vector<double> passes;
  for (auto _ : state) {
    passes = MeasureReadBandwidth(/*megabytes=*/512, threads, /*passes=*/5);
  }
  std::sort(passes.begin(), passes.end());
  state.counters["read_GB/s"] = passes[passes.size() / 2] * 1e-9;
}

constexpr int64_t kF32 = 0, kBf16 = 1;

// Qwen2.5-0.5B: hidden 896, MLP 4864, vocabulary 151936.
void MatMulArgs(benchmark::internal::Benchmark* bench) {
  bench->ArgNames({"m", "k", "n", "bf16", "threads"});
  const int64_t shapes[][2] = {{896, 4864}, {4864, 896}, {896, 151936}};
  for (const auto& [k, n] : shapes) {
    for (int64_t dtype : {kF32, kBf16}) {
      bench->Args({1, k, n, dtype, 1});
      bench->Args({1, k, n, dtype, 2});
      bench->Args({8, k, n, dtype, 2});
      bench->Args({128, k, n, dtype, 2});
    }
  }
}

BENCHMARK(BM_ReadBandwidth)->ArgName("threads")->Arg(1)->Arg(2)->Iterations(1);
BENCHMARK(BM_MatMul)->Apply(MatMulArgs)->UseRealTime();
BENCHMARK(BM_MatMulReference)
    ->ArgNames({"m", "k", "n", "bf16"})
    ->Args({1, 896, 4864, kF32})
    ->Args({1, 896, 4864, kBf16})
    ->UseRealTime();

}  // namespace
}  // namespace litestage::cpu

BENCHMARK_MAIN();
