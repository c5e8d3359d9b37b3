#include "packed.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

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
// Up to this size (a decode step's row, or a few), every thread of a binary matmul builds its
// own copy of the lookup tables (see matmul).
constexpr int64_t kOwnLutBytes = int64_t{256} << 10;

// The rows of several matrices, in units of one binary tile (kTileRows rows), concatenated and
// cut into one span a thread (no more spans than units): span i is units [U i / n, U (i+1) / n).
struct Partition {
  std::vector<const PackedWeights*> ws;
  std::vector<int64_t> end_unit;  // end_unit[i]: one past matrix i's last unit
  int64_t units = 0;
  int n = 1;

  Partition(std::vector<const PackedWeights*> weights, int n_threads) : ws(std::move(weights)) {
    for (const PackedWeights* w : ws) end_unit.push_back(units += (w->n + kernels::kTileRows - 1) / kernels::kTileRows);
    n = static_cast<int>(std::clamp<int64_t>(units, 1, n_threads));
  }
  int64_t begin(int i) const { return units * i / n; }
  int64_t end(int i) const { return units * (i + 1) / n; }

  // Asks the pool to fetch the first kPrefetchBytes of span i's codes into this worker's L2
  // once its part of the job is done: about what a core draws from memory while the caller
  // works alone between two decode matmuls (64-512 KiB measured alike).
  void prefetch_start(int i) const {
    constexpr int64_t kPrefetchBytes = int64_t{128} << 10;
    if (i >= n || begin(i) >= end(i)) return;
    size_t m = 0;
    while (begin(i) >= end_unit[m]) ++m;
    const PackedWeights& w = *ws[m];
    const int64_t row = (begin(i) - (m == 0 ? 0 : end_unit[m - 1])) * kernels::kTileRows;
    const int64_t from = kernels::code_bytes(w.format, row, w.k);
    ThreadPool::prefetch_after_job(w.code_data() + from, std::min(w.code_bytes() - from, kPrefetchBytes));
  }
};

// The rows of several products, in units of one binary tile (kTileRows rows), split into one
// contiguous span a thread. Decode streams each weight byte once, and a long sequential read a
// thread keeps the memory system busiest (two chunks a thread measured 82-86% of read bandwidth
// against 74-81% with eight), but fixed chunks leave the thread that finishes first idle for
// up to a chunk, and on a shared host the threads' speeds differ. So a thread that runs out
// takes the back half of the fullest other span and streams that front to back as its own,
// where it can be taken from in turn: the tail shrinks by halves, and reads stay sequential.
class Spans {
 public:
  Spans(const std::vector<Product>& products, int n_threads, const std::vector<const PackedWeights*>& next)
      : products_(products), parts_(weights_of(products), n_threads), next_(next, n_threads) {
    spans_.reset(new Span[parts_.n]);
    for (int i = 0; i < parts_.n; ++i) spans_[i].range.store(pack(parts_.begin(i), parts_.end(i)));
  }

  int count() const { return parts_.n; }

  // Computes span `own` and then whatever it can take from the others. A worker then fetches
  // the start of the next job's span `own` while the caller works alone between the two jobs
  // (norms, RoPE, quantization), and usually takes that span then.
  void run(const kernels::KernelTable& t, const kernels::ActView& av, int64_t b0, int own) {
    Span& mine = spans_[own];
    int64_t last = -1;  // one past the last unit this thread computed
    for (;;) {
      int64_t u0, u1;
      while (take_front(mine, u0, u1)) {
        compute(t, av, b0, u0, u1, u0 == last);
        last = u1;
      }
      if (!steal(mine)) break;
    }
    next_.prefetch_start(own);
  }

 private:
  struct alignas(64) Span {
    std::atomic<uint64_t> range;  // unclaimed units [front, back), front in the high half
  };
  static uint64_t pack(int64_t front, int64_t back) { return static_cast<uint64_t>(front) << 32 | static_cast<uint64_t>(back); }
  static int64_t front(uint64_t r) { return static_cast<int64_t>(r >> 32); }
  static int64_t back(uint64_t r) { return static_cast<int64_t>(r & 0xffffffffu); }

  // The owner claims a few tiles at a time: few enough that the tail stays short, enough that
  // a claim costs nothing beside the tiles' kernel time.
  static bool take_front(Span& s, int64_t& u0, int64_t& u1) {
    constexpr int64_t kClaim = 4;
    uint64_t r = s.range.load(std::memory_order_relaxed);
    do {
      if (front(r) >= back(r)) return false;
      u0 = front(r);
      u1 = std::min(back(r), u0 + kClaim);
    } while (!s.range.compare_exchange_weak(r, pack(u1, back(r))));
    return true;
  }

  // Moves the back half of the fullest other span into `mine` (empty: only its owner fills
  // it, and a thief's stale compare-exchange fails); false when every span is empty.
  bool steal(Span& mine) {
    for (;;) {
      int victim = -1;
      int64_t most = 0;
      for (int i = 0; i < parts_.n; ++i) {
        const uint64_t r = spans_[i].range.load(std::memory_order_relaxed);
        if (&spans_[i] != &mine && back(r) - front(r) > most) {
          most = back(r) - front(r);
          victim = i;
        }
      }
      if (victim < 0) return false;
      uint64_t r = spans_[victim].range.load(std::memory_order_relaxed);
      const int64_t f = front(r), b = back(r);
      if (f >= b) continue;
      const int64_t mid = b - (b - f + 1) / 2;
      if (spans_[victim].range.compare_exchange_strong(r, pack(f, mid))) {
        mine.range.store(pack(mid, b));
        return true;
      }
    }
  }

  // Units [u0, u1) of the concatenated products, split where one product ends. `continues`: this
  // thread computed the units just before u0, so a kernel's prefetches ran ahead into u0's rows
  // unless a new product starts there.
  void compute(const kernels::KernelTable& t, const kernels::ActView& av, int64_t b0, int64_t u0, int64_t u1,
               bool continues) const {
    int64_t start = 0;
    for (size_t i = 0; i < products_.size() && u0 < u1; start = parts_.end_unit[i++]) {
      if (u0 >= parts_.end_unit[i]) continue;
      const Product& p = products_[i];
      const int64_t end = std::min(u1, parts_.end_unit[i]), n = p.w->n;
      const int64_t r0 = (u0 - start) * kernels::kTileRows, r1 = std::min(n, (end - start) * kernels::kTileRows);
      t.matmul[static_cast<int>(p.w->format)](p.w->view(), av, r0, r1, p.y + b0 * n, n, continues && r0 > 0);
      u0 = end;
      continues = false;
    }
  }

  static std::vector<const PackedWeights*> weights_of(const std::vector<Product>& products) {
    std::vector<const PackedWeights*> ws;
    for (const Product& p : products) ws.push_back(p.w);
    return ws;
  }

  const std::vector<Product>& products_;
  Partition parts_, next_;
  std::unique_ptr<Span[]> spans_;
};

// av with the binary kernels' lookup tables of its rows built into a buffer this thread keeps.
kernels::ActView with_own_luts(const kernels::KernelTable& t, kernels::ActView av) {
  thread_local std::unique_ptr<uint8_t[]> buf;
  thread_local int64_t capacity = 0;
  const int64_t lut_bytes = t.lut_bytes(av.k);
  if (capacity < av.rows * lut_bytes) {
    buf.reset(new uint8_t[static_cast<size_t>(av.rows * lut_bytes)]);  // no zero fill
    capacity = av.rows * lut_bytes;
  }
  for (int64_t b = 0; b < av.rows; ++b) t.build_lut(av.q + b * av.k, av.k, buf.get() + b * lut_bytes);
  av.lut = buf.get();
  return av;
}

// Runs the products' rows in one parallel job; with own_luts, each task first builds its own
// lookup tables of av's rows.
void matmul_rows(const kernels::KernelTable& t, const std::vector<Product>& products, const kernels::ActView& av,
                 int64_t b0, int n_threads, const std::vector<const PackedWeights*>& next, bool own_luts = false) {
  Spans spans(products, n_threads, next);
  ThreadPool::instance().run(spans.count(), n_threads, [&](int64_t i) {
    spans.run(t, own_luts ? with_own_luts(t, av) : av, b0, static_cast<int>(i));
  });
}

}  // namespace

void matmul(const kernels::KernelTable& t, const PackedWeights& w, const QuantizedActivations& a, float* y,
            int n_threads) {
  matmul(t, std::vector<Product>{{&w, y}}, a, n_threads, {});
}

void matmul(const kernels::KernelTable& t, const std::vector<Product>& products, const QuantizedActivations& a,
            int n_threads, const std::vector<const PackedWeights*>& next) {
  const bool any_binary = std::any_of(products.begin(), products.end(),
                                      [](const Product& p) { return p.w->format == kernels::Format::kBinary; });
  if (!any_binary || !t.build_lut) {
    matmul_rows(t, products, a.view(), 0, n_threads, next);
    return;
  }
  // The binary kernels look products up in per-row tables. For a few rows, each thread builds
  // its own at the start of its part of the job, in a buffer it keeps: one copy for both threads
  // cost twice over, as a serial build (5% of a Bonsai-1.7B decode step, its stores missing
  // lines the other core had read) and as the other core's first reads of the tables (decode
  // +3%, the two alternating in one process).
  const int64_t lut_bytes = t.lut_bytes(a.k), nblocks = a.k / kernels::kBlock;
  if (a.rows * lut_bytes <= kOwnLutBytes) {
    matmul_rows(t, products, a.view(), 0, n_threads, next, /*own_luts=*/true);
    return;
  }
  // More rows (prompts): built once, in parallel, for every weight row to share, a slab of
  // activation rows at a time.
  const int64_t slab = std::clamp<int64_t>(kMaxLutBytes / lut_bytes, 1, a.rows);
  const std::unique_ptr<uint8_t[]> lut(new uint8_t[static_cast<size_t>(slab * lut_bytes)]);  // no zero fill
  for (int64_t b0 = 0; b0 < a.rows; b0 += slab) {
    const int64_t rows = std::min(slab, a.rows - b0);
    ThreadPool::instance().run(rows, n_threads, [&](int64_t b) {
      t.build_lut(a.q.data() + (b0 + b) * a.k, a.k, lut.get() + b * lut_bytes);
    });
    const kernels::ActView av{a.q.data() + b0 * a.k, a.s.data() + b0, a.block_sums.data() + b0 * nblocks, rows, a.k,
                              lut.get()};
    matmul_rows(t, products, av, b0, n_threads, b0 + rows == a.rows ? next : std::vector<const PackedWeights*>{});
  }
}

}  // namespace tritlm
