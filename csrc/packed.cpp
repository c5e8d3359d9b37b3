#include "packed.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "threadpool.h"

namespace tritlm {

QuantizedActivations quantize(const kernels::KernelTable& t, const float* x, int64_t rows, int64_t k, int n_threads) {
  QuantizedActivations a;
  a.rows = rows;
  a.k = k;
  a.q.resize(rows * k);
  a.s.resize(rows);
  a.block_sums.resize(rows * (k / kernels::kBlock));
  std::atomic<int64_t> bad_row{rows};
  ThreadPool::instance().run(rows, n_threads, [&](int64_t b) {
    if (!t.quantize_row(x + b * k, k, a.q.data() + b * k, &a.s[b], a.block_sums.data() + b * (k / kernels::kBlock))) {
      int64_t cur = bad_row.load();
      while (b < cur && !bad_row.compare_exchange_weak(cur, b)) {
      }
    }
  });
  if (bad_row.load() < rows)
    throw std::invalid_argument("x: row " + std::to_string(bad_row.load()) + " holds a NaN or an infinity");
  return a;
}

QuantizedActivations activations_from_int8(const int8_t* q, const float* s, int64_t rows, int64_t k) {
  QuantizedActivations a;
  a.rows = rows;
  a.k = k;
  a.q.assign(q, q + rows * k);
  a.s.assign(s, s + rows);
  a.block_sums.assign(rows * (k / kernels::kBlock), 0);
  for (int64_t i = 0; i < rows * k; ++i) a.block_sums[i / kernels::kBlock] += q[i];
  return a;
}

void matmul(const kernels::KernelTable& t, const PackedWeights& w, const QuantizedActivations& a, float* y,
            int n_threads) {
  const kernels::WeightView wv = w.view();
  const kernels::ActView av = a.view();
  const kernels::MatmulFn fn = t.matmul[static_cast<int>(w.format)];
  // Decode streams each weight byte once: two long chunks a thread keep each thread's reads
  // sequential (measured 82-86% of read bandwidth against 74-81% with eight). Batched calls are
  // compute-bound and balance better with eight. At least 16 rows a chunk either way.
  const int64_t per_thread = a.rows <= 8 ? 2 : 8;
  const int64_t chunk = std::max<int64_t>(16, (w.n + per_thread * n_threads - 1) / (per_thread * n_threads));
  const int64_t n_chunks = (w.n + chunk - 1) / chunk;
  ThreadPool::instance().run(n_chunks, n_threads, [&](int64_t c) {
    fn(wv, av, c * chunk, std::min(w.n, (c + 1) * chunk), y, w.n);
  });
}

}  // namespace tritlm
