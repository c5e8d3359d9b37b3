#include "bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "threadpool.h"
#include "weight_memory.h"

namespace tritlm {
namespace {

// Eight independent accumulators so the loop is bound by loads, not by a dependency chain.
uint64_t xor_words(const uint64_t* p, int64_t n) {
  uint64_t a[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] ^= p[i + j];
  for (; i < n; ++i) a[0] ^= p[i];
  uint64_t x = 0;
  for (uint64_t v : a) x ^= v;
  return x;
}

}  // namespace

double measure_read_bandwidth(int64_t nbytes, int n_threads, int repeats) {
  const int64_t words = std::max<int64_t>(nbytes / 8, 1);
  // The memory the weights live in (weight_memory.h): the yardstick must not read faster or
  // slower for being allocated differently.
  WeightVector<uint64_t> buf(static_cast<size_t>(words));
  for (int64_t i = 0; i < words; ++i) buf[i] = static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
  const int64_t tasks = std::max(1, n_threads) * 16;
  const int64_t per_task = (words + tasks - 1) / tasks;
  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  for (int rep = 0; rep < std::max(1, repeats); ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    ThreadPool::instance().run(tasks, n_threads, [&](int64_t t) {
      const int64_t lo = std::min(words, t * per_task), hi = std::min(words, (t + 1) * per_task);
      sink.fetch_xor(xor_words(buf.data() + lo, hi - lo), std::memory_order_relaxed);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(words * 8) / s);
  }
  return best;
}

}  // namespace tritlm
