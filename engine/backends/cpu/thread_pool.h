// A fixed set of persistent worker threads for data-parallel kernels.
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_THREAD_POOL_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace litestage::cpu {

// ParallelFor splits [0, n) into at most num_threads() contiguous, evenly
// sized chunks (static scheduling: chunk i always goes to worker i, which
// keeps each thread on the same slice of a weight matrix call after call) and
// runs them concurrently; the calling thread runs chunk 0.
//
// Workers spin briefly on a generation counter after each job so that
// back-to-back calls (one per matmul in a decode step) wake in well under a
// microsecond, then block on a condition variable so an idle pool costs no
// CPU.
//
// Not reentrant: `fn` must not call ParallelFor on the same pool, and only one
// thread may call ParallelFor at a time. `fn` must not throw.
class ThreadPool {
 public:
  // num_threads counts the caller; 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n) and returns when
  // every chunk is done. n <= 0 does nothing.
  void ParallelFor(int64_t n,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  void WorkerLoop(int worker_index);
  // Runs chunk `chunk` of the current job.
  void RunChunk(int chunk);

  const int num_threads_;
  std::vector<std::thread> workers_;  // num_threads_ - 1 threads.

  // The current job; written by the caller before generation_ is bumped.
  const std::function<void(int64_t, int64_t)>* job_fn_ = nullptr;
  int64_t job_size_ = 0;
  int job_chunks_ = 0;

  std::atomic<uint64_t> generation_{0};  // Bumped once per job.
  std::atomic<int> pending_workers_{0};  // Workers yet to finish this job.
  std::atomic<bool> stop_{false};

  std::mutex mutex_;
  std::condition_variable work_cv_;  // Sleeping workers wait for a job.
  std::condition_variable done_cv_;  // A sleeping caller waits for the end.
  int sleeping_workers_ = 0;         // Guarded by mutex_.
  bool caller_sleeping_ = false;     // Guarded by mutex_.
};

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_THREAD_POOL_H_
