// CPU kernel throughput next to its ceiling, measured in the same run:
//   BM_MatMul          weights streamed per second (bytes/s) for Qwen2.5-0.5B
//                      shapes in f32 and bf16 and SmolLM2-135M shapes in
//                      f32 and the GGUF block types (Q4_0, Q4_1, Q8_0),
//                      decode (m = 1) and prefill (m = 8, 128).
//   BM_ReadBandwidth   median read bandwidth of bench/read_bandwidth.h, the
//                      probe engine_bench measures its decode floor with.
//   BM_MatMulReference the naive scalar loop, the peer for a speed-up ratio.
// The kernels use cpu::ActiveIsa(); set LITESTAGE_CPU_ISA to compare levels.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
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

// The dtypes of the benchmark's dtype argument, in order.
constexpr DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kQ4_0,
                             DType::kQ4_1, DType::kQ8_0};
constexpr int64_t kF32 = 0, kBf16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 4;

// One weight matrix at a time (the largest is 545 MB in f32); benchmarks of
// the same shape run consecutively, so it is rebuilt only on a change.
// Block types get hashed bytes with a scale and minimum of GGUF-like size.
const Tensor& WeightFor(DType dtype, int64_t n, int64_t k) {
  static Tensor tensor;
  static std::vector<uint8_t> bytes;
  if (tensor.dtype != dtype || tensor.rows() != n || tensor.cols() != k) {
    bytes.clear();
    bytes.shrink_to_fit();
    tensor.dtype = dtype;
    tensor.shape = {n, k};
    bytes.resize(tensor.nbytes());
    if (dtype == DType::kF32) {
      auto* f32 = reinterpret_cast<float*>(bytes.data());
      for (int64_t i = 0; i < n * k; ++i) f32[i] = HashToUnit(i) * 0.05f;
    } else if (dtype == DType::kBF16) {
      auto* bf16 = reinterpret_cast<uint16_t*>(bytes.data());
      for (int64_t i = 0; i < n * k; ++i)
        bf16[i] = F32ToBf16(HashToUnit(i) * 0.05f);
    } else {
      const size_t block_bytes = DTypeBlockBytes(dtype);
      const uint16_t kScale = 0x1A66;  // f16 ~0.0031
      const uint16_t kMin = 0xA666;    // f16 ~-0.025
      for (size_t b = 0; b < bytes.size() / block_bytes; ++b) {
        uint8_t* block = bytes.data() + b * block_bytes;
        for (size_t i = 0; i < block_bytes; ++i) {
          block[i] = static_cast<uint8_t>(HashToUnit(b * 64 + i) * 127.0f);
        }
        std::memcpy(block, &kScale, 2);
        if (dtype == DType::kQ4_1) std::memcpy(block + 2, &kMin, 2);
      }
    }
    tensor.data = bytes.data();
  }
  return tensor;
}

// Args: m, k, n, dtype (an index into kDTypes), threads.
void BM_MatMul(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  const DType dtype = kDTypes[state.range(3)];
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
  state.SetLabel(absl::StrCat(IsaName(ActiveIsa()), " ", DTypeName(dtype)));
}

void BM_MatMulReference(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  const DType dtype = kDTypes[state.range(3)];
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

// Qwen2.5-0.5B: hidden 896, MLP 4864, vocabulary 151936 (f32, bf16);
// SmolLM2-135M: hidden 576, MLP 1536, vocabulary 49152 (f32 and the block
// types its GGUF files use).
void MatMulArgs(benchmark::internal::Benchmark* bench) {
  bench->ArgNames({"m", "k", "n", "dtype", "threads"});
  const int64_t shapes[][2] = {{896, 4864}, {4864, 896}, {896, 151936}};
  for (const auto& [k, n] : shapes) {
    for (int64_t dtype : {kF32, kBf16}) {
      bench->Args({1, k, n, dtype, 1});
      bench->Args({1, k, n, dtype, 2});
      bench->Args({8, k, n, dtype, 2});
      bench->Args({128, k, n, dtype, 2});
    }
  }
  const int64_t small[][2] = {{576, 1536}, {1536, 576}, {576, 49152}};
  for (const auto& [k, n] : small) {
    for (int64_t dtype : {kF32, kQ4_0, kQ4_1, kQ8_0}) {
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
    ->ArgNames({"m", "k", "n", "dtype"})
    ->Args({1, 896, 4864, kF32})
    ->Args({1, 896, 4864, kBf16})
    ->UseRealTime();

}  // namespace
}  // namespace litestage::cpu

BENCHMARK_MAIN();
