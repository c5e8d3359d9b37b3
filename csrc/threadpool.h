// A persistent pool of worker threads for the kernels. No OpenMP: macOS's clang ships without
// it, and a pool we own lets decode reuse hot, spinning workers for the ~200 small matmuls of
// each token instead of paying a wake-up per call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tritlm {

// Physical cores available to this process (hyper-threads share a core's SIMD units, so the
// kernels gain nothing from them); at least 1.
int physical_cores();

class ThreadPool {
 public:
  static ThreadPool& instance();

  // Runs task(i) for every i in [0, n_tasks) on up to n_threads threads, the caller included,
  // and returns when all are done. Tasks are claimed one at a time, so a thread slowed by a
  // noisy neighbour simply takes fewer, and a worker that is not scheduled at all leaves its
  // share to the caller. Calls from several threads at once run one after another.
  void run(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& task);

 private:
  ThreadPool() = default;
  void grow(int n_workers);
  void worker_loop(int index, uint32_t seen);
  // Claims and runs tasks of job `gen` until none are left; false if `gen` is no longer current.
  void work_on(uint32_t gen);

  std::mutex run_mutex_;  // one job at a time
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::atomic<int> active_workers_{0};  // workers 0..active-1 take part in the current job

  // The current job. ticket_ holds the job's generation (high 32 bits) and the next unclaimed
  // task (low 32 bits): claiming a task is one compare-and-swap that fails for a stale job, so a
  // worker that wakes late can never run a task of a job it did not see published.
  std::atomic<uint64_t> ticket_{0};
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> done_{0};
};

}  // namespace tritlm
