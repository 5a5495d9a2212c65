#include "engine/backends/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace litestage::cpu {
namespace {

// How long a thread busy-waits before blocking. Long enough to bridge the gap
// between the matmuls of one decode step, short enough that an idle pool (or
// an oversubscribed machine) does not burn a core.
constexpr auto kSpinDuration = std::chrono::microseconds(50);
// Iterations (of ~10-40 ns each) spun before also yielding the core.
constexpr int kPureSpinIterations = 256;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Spins until done() or kSpinDuration passes; returns done().
template <typename Done>
bool SpinUntil(const Done& done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinDuration;
  for (int i = 0;; ++i) {
    if (done()) return true;
    CpuRelax();
    // Reading the clock costs ~20 ns; do it only every few iterations.
    if ((i & 63) == 63) {
      if (std::chrono::steady_clock::now() >= deadline) return done();
      // Past the first few microseconds, offer the core: when threads
      // outnumber free cores, the thread being waited for may need it.
      if (i >= kPureSpinIterations) std::this_thread::yield();
    }
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(
          num_threads > 0
              ? num_threads
              : std::max(
                    1, static_cast<int>(std::thread::hardware_concurrency()))) {
  workers_.reserve(num_threads_ - 1);
  for (int i = 1; i < num_threads_; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_release);
  }
  work_cv_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::RunChunk(int chunk) {
  // Even split: the first (size % chunks) chunks get one extra item.
  const int64_t base = job_size_ / job_chunks_;
  const int64_t extra = job_size_ % job_chunks_;
  const int64_t begin = chunk * base + std::min<int64_t>(chunk, extra);
  const int64_t end = begin + base + (chunk < extra ? 1 : 0);
  (*job_fn_)(begin, end);
}

void ThreadPool::ParallelFor(
    int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (n <= 0) return;
  const int chunks = static_cast<int>(std::min<int64_t>(n, num_threads_));
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  job_fn_ = &fn;
  job_size_ = n;
  job_chunks_ = chunks;
  // Every worker acknowledges every generation, even those without a chunk,
  // so that none can still be reading job_* when the next job overwrites it.
  pending_workers_.store(num_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sleeping_workers_ > 0) work_cv_.notify_all();
  }

  RunChunk(0);

  auto all_done = [this] {
    return pending_workers_.load(std::memory_order_acquire) == 0;
  };
  if (!SpinUntil(all_done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    caller_sleeping_ = true;
    done_cv_.wait(lock, all_done);
    caller_sleeping_ = false;
  }
  job_fn_ = nullptr;
}

void ThreadPool::WorkerLoop(int worker_index) {
  uint64_t seen_generation = 0;
  for (;;) {
    auto has_news = [&] {
      return generation_.load(std::memory_order_acquire) != seen_generation ||
             stop_.load(std::memory_order_acquire);
    };
    if (!SpinUntil(has_news)) {
      std::unique_lock<std::mutex> lock(mutex_);
      ++sleeping_workers_;
      work_cv_.wait(lock, has_news);
      --sleeping_workers_;
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen_generation = generation_.load(std::memory_order_acquire);

    if (worker_index < job_chunks_) RunChunk(worker_index);

    if (pending_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Last one out wakes the caller if it gave up spinning. Taking the lock
      // orders this with the caller's check-then-wait.
      std::lock_guard<std::mutex> lock(mutex_);
      if (caller_sleeping_) done_cv_.notify_one();
    }
  }
}

}  // namespace litestage::cpu
