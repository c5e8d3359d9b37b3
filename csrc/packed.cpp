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

namespace {

// Upper bound on one matmul's lookup tables: activation rows go in slabs whose tables fit.
constexpr int64_t kMaxLutBytes = int64_t{32} << 20;

void matmul_rows(const kernels::KernelTable& t, const PackedWeights& w, const kernels::ActView& av, float* y,
                 int n_threads) {
  const kernels::WeightView wv = w.view();
  const kernels::MatmulFn fn = t.matmul[static_cast<int>(w.format)];
  // Decode streams each weight byte once: two long chunks a thread keep each thread's reads
  // sequential (measured 82-86% of read bandwidth against 74-81% with eight). Batched calls are
  // compute-bound and balance better with eight. At least 16 rows a chunk either way, and whole
  // tiles of the binary layout.
  const int64_t per_thread = av.rows <= 8 ? 2 : 8;
  const int64_t align = w.format == kernels::Format::kBinary ? kernels::kTileRows : 1;
  int64_t chunk = std::max<int64_t>(16, (w.n + per_thread * n_threads - 1) / (per_thread * n_threads));
  chunk = (chunk + align - 1) / align * align;
  const int64_t n_chunks = (w.n + chunk - 1) / chunk;
  ThreadPool::instance().run(n_chunks, n_threads, [&](int64_t c) {
    fn(wv, av, c * chunk, std::min(w.n, (c + 1) * chunk), y, w.n);
  });
}

}  // namespace

void matmul(const kernels::KernelTable& t, const PackedWeights& w, const QuantizedActivations& a, float* y,
            int n_threads) {
  if (w.format != kernels::Format::kBinary || !t.build_lut) {
    matmul_rows(t, w, a.view(), y, n_threads);
    return;
  }
  // The binary kernels look products up in per-row tables: built once here for every weight
  // row to share, a slab of activation rows at a time.
  const int64_t lut_bytes = t.lut_bytes(a.k), nblocks = a.k / kernels::kBlock;
  const int64_t slab = std::clamp<int64_t>(kMaxLutBytes / lut_bytes, 1, a.rows);
  std::vector<uint8_t> lut(static_cast<size_t>(slab * lut_bytes));
  for (int64_t b0 = 0; b0 < a.rows; b0 += slab) {
    const int64_t rows = std::min(slab, a.rows - b0);
    ThreadPool::instance().run(rows, n_threads, [&](int64_t b) {
      t.build_lut(a.q.data() + (b0 + b) * a.k, a.k, lut.data() + b * lut_bytes);
    });
    const kernels::ActView av{a.q.data() + b0 * a.k, a.s.data() + b0, a.block_sums.data() + b0 * nblocks, rows, a.k,
                              lut.data()};
    matmul_rows(t, w, av, y + b0 * w.n, n_threads);
  }
}

}  // namespace tritlm
