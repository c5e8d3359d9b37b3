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
  ~ThreadPool();

  // Runs task(i) for every i in [0, n_tasks) on up to n_threads threads, the caller included,
  // and returns when all are done. Tasks are handed out one at a time from a shared counter, so
  // a thread slowed by a noisy neighbour simply takes fewer. Calls from several threads at once
  // are run one after another.
  void run(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& task);

 private:
  ThreadPool() = default;
  void grow(int n_workers);
  void worker_loop(int index, uint64_t seen);
  void take_tasks();

  std::mutex run_mutex_;  // one job at a time
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};

  // The current job.
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t n_tasks_ = 0;
  int participants_ = 0;  // workers (not counting the caller) that take part
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
};

}  // namespace tritlm
