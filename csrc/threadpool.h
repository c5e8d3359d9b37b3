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

  // From a task: when the calling thread is a worker, it prefetches [p, p + bytes) into its L2
  // after its part of the current job, while the job's caller goes on (stopping early if the
  // next job starts). A prefetch never faults, so memory freed meanwhile does no harm. On the
  // caller's thread this does nothing.
  static void prefetch_after_job(const void* p, int64_t bytes);

 private:
  ThreadPool() = default;
  void grow(int n_workers);
  void worker_loop(int index, uint64_t seen);
  // Claims tasks of job `gen` one at a time and runs them, until none are left or the job is
  // no longer the current one.
  void work_on(uint64_t gen);

  std::mutex run_mutex_;  // one job at a time
  std::vector<std::thread> workers_;

  // The current job. Claiming a task reads the job's fields and advances next_ under job_mutex_,
  // so a worker that wakes late sees either the job it was woken for or a newer one, complete
  // and consistent, never a mix: a task index is only ever paired with its own job.
  std::mutex job_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // also read without the mutex, to spin on
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t n_tasks_ = 0, next_ = 0;
  int active_workers_ = 0;  // workers 0..active-1 take part
  std::atomic<int64_t> done_{0};
};

}  // namespace tritlm
