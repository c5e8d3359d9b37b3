#include "packed.h"

#include <algorithm>
#include <atomic>
#include <memory>
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

// Runs the products' row chunks in one parallel job.
void matmul_rows(const kernels::KernelTable& t, const std::vector<Product>& products, const kernels::ActView& av,
                 int64_t b0, int n_threads) {
  // Decode streams each weight byte once: two long chunks a thread keep each thread's reads
  // sequential (measured 82-86% of read bandwidth against 74-81% with eight). Batched calls are
  // compute-bound and balance better with eight. At least 16 rows a chunk either way, and whole
  // tiles of the binary layout.
  struct Chunk {
    const Product* p;
    kernels::WeightView w;
    int64_t r0, r1;
  };
  std::vector<Chunk> chunks;
  const int64_t per_thread = av.rows <= 8 ? 2 : 8;
  for (const Product& p : products) {
    const int64_t n = p.w->n, align = p.w->format == kernels::Format::kBinary ? kernels::kTileRows : 1;
    int64_t chunk = std::max<int64_t>(16, (n + per_thread * n_threads - 1) / (per_thread * n_threads));
    chunk = (chunk + align - 1) / align * align;
    for (int64_t r0 = 0; r0 < n; r0 += chunk) chunks.push_back({&p, p.w->view(), r0, std::min(n, r0 + chunk)});
  }
  ThreadPool::instance().run(static_cast<int64_t>(chunks.size()), n_threads, [&](int64_t i) {
    const Chunk& c = chunks[i];
    const int64_t n = c.p->w->n;
    t.matmul[static_cast<int>(c.w.format)](c.w, av, c.r0, c.r1, c.p->y + b0 * n, n);
  });
}

}  // namespace

void matmul(const kernels::KernelTable& t, const PackedWeights& w, const QuantizedActivations& a, float* y,
            int n_threads) {
  matmul(t, std::vector<Product>{{&w, y}}, a, n_threads);
}

void matmul(const kernels::KernelTable& t, const std::vector<Product>& products, const QuantizedActivations& a,
            int n_threads) {
  const bool any_binary = std::any_of(products.begin(), products.end(),
                                      [](const Product& p) { return p.w->format == kernels::Format::kBinary; });
  if (!any_binary || !t.build_lut) {
    matmul_rows(t, products, a.view(), 0, n_threads);
    return;
  }
  // The binary kernels look products up in per-row tables: built once here for every weight
  // row to share, a slab of activation rows at a time.
  const int64_t lut_bytes = t.lut_bytes(a.k), nblocks = a.k / kernels::kBlock;
  const int64_t slab = std::clamp<int64_t>(kMaxLutBytes / lut_bytes, 1, a.rows);
  const std::unique_ptr<uint8_t[]> lut(new uint8_t[static_cast<size_t>(slab * lut_bytes)]);  // no zero fill
  for (int64_t b0 = 0; b0 < a.rows; b0 += slab) {
    const int64_t rows = std::min(slab, a.rows - b0);
    ThreadPool::instance().run(rows, n_threads, [&](int64_t b) {
      t.build_lut(a.q.data() + (b0 + b) * a.k, a.k, lut.get() + b * lut_bytes);
    });
    const kernels::ActView av{a.q.data() + b0 * a.k, a.s.data() + b0, a.block_sums.data() + b0 * nblocks, rows, a.k,
                              lut.get()};
    matmul_rows(t, products, av, b0, n_threads);
  }
}

}  // namespace tritlm
