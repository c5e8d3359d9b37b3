// The forward pass of BitNet b1.58 (and its gated-SiLU Llama kin), one function per block:
//
//   x = embed(tokens)
//   per layer:  a = rmsnorm(x, attn_norm);  q, k, v = BitLinear(a)
//               q, k = per-head rmsnorm(q, attn_q_norm), (k, attn_k_norm)   (Qwen3 only);  rope(q, k)
//               attn = causal_attention(q, K-cache, V-cache)          (grouped-query heads)
//               x += BitLinear_o(rmsnorm(attn, attn_sub_norm))
//               b = rmsnorm(x, ffn_norm);  h = relu(gate(b))^2 * up(b)  (or silu(gate(b)) * up(b))
//               x += BitLinear_down(rmsnorm(h, ffn_sub_norm))
//   logits = rmsnorm(x, output_norm) . output^T
//
// BitLinear = per-token int8 activation quantization + ternary (or binary) weights + scale.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "f16.h"
#include "kernels/dispatch.h"
#include "model/model.h"
#include "prefetch.h"
#include "threadpool.h"

namespace tritlm::model {

std::string Linear::kind() const { return packed ? (packed->format == kernels::Format::kTernary ? "ternary" : "binary") : "float"; }

int64_t Linear::nbytes() const { return packed ? packed->nbytes() : out * in * 4; }

float Table::at(int64_t r, int64_t c) const {
  if (q8) return static_cast<float>(q8[r * cols + c]) * q8_scale[r];
  return f16 ? fp16_to_f32(f16[r * cols + c]) : f32[r * cols + c];
}

namespace {

// RMSNorm in f32: x * w / sqrt(mean(x^2) + eps), row by row (out may be x). The sum of squares
// runs in 8 interleaved partial sums: one running sum is a chain of dependent adds the compiler
// may not reorder, 2% of a Bonsai-1.7B decode step.
void rmsnorm(float* out, const float* x, const std::vector<float>& w, int n, int dim, float eps) {
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<int64_t>(t) * dim;
    float part[8] = {};
    int i = 0;
    for (; i + 8 <= dim; i += 8)
      for (int j = 0; j < 8; ++j) part[j] += xt[i + j] * xt[i + j];
    for (; i < dim; ++i) part[0] += xt[i] * xt[i];
    float ss = 0.0f;
    for (float p : part) ss += p;
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    float* ot = out + static_cast<int64_t>(t) * dim;
    for (int i = 0; i < dim; ++i) ot[i] = w[i] * (xt[i] * inv);
  }
}

// Qwen3's QK-norm: RMSNorm over each head of q (or k) with one weight vector shared by the heads.
// A head is head_dim contiguous values, so this is rmsnorm over rows of head_dim, in place.
void head_rmsnorm(std::vector<float>& x, const std::vector<float>& w, int head_dim, float eps) {
  rmsnorm(x.data(), x.data(), w, static_cast<int>(x.size() / head_dim), head_dim, eps);
}

// The rotation of each token's position for rotary position embedding: cos and sin of
// pos * inv_freq[i], [token][head_dim / 2], computed once per forward pass (every layer and both
// q and k use the same angles). inv_freq is 1 / theta^(2i / head_dim) in f32, as transformers
// computes it.
struct Rotation {
  std::vector<float> cos, sin;
};

Rotation rotation(const Config& c, const std::vector<Row>& rows) {
  const int half = c.head_dim / 2;
  Rotation r;
  r.cos.resize(rows.size() * half);
  r.sin.resize(rows.size() * half);
  for (int i = 0; i < half; ++i) {
    const float inv_freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
    for (size_t t = 0; t < rows.size(); ++t) {
      const float angle = static_cast<float>(rows[t].pos) * inv_freq;
      r.cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      r.sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return r;
}

// Rotary position embedding in NEOX (rotate-half) order over each head of width head_dim.
void rope(float* x, const Rotation& rot, int n_tokens, int n_heads, int head_dim) {
  const int half = head_dim / 2;
  for (int t = 0; t < n_tokens; ++t)
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float c = rot.cos[static_cast<size_t>(t) * half + i], s = rot.sin[static_cast<size_t>(t) * half + i];
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
}

float relu2(float g) { return g > 0.0f ? g * g : 0.0f; }

// e^x within 2 ulp of expf (Cephes' range reduction and polynomial), clamped to e^-87.3..e^88.4,
// in operations a compiler vectorizes: glibc's expf is a call per element, and SwiGLU takes one
// per FFN unit per token (172k a Bonsai-1.7B step). Inlined by force: called from two loops,
// GCC would otherwise call it per element and vectorize neither (SwiGLU 3.6x slower).
[[gnu::always_inline]] inline float exp_poly(float x) {
  x = std::min(88.3762626647949f, std::max(-87.3365478515625f, x));
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n ln 2, in two steps
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in -126..127
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

float silu(float g) { return g / (1.0f + exp_poly(-g)); }

}  // namespace

KvCache::KvCache(const Config& c, int n_ctx_, bool f16_)
    : n_ctx(n_ctx_), n_layers(c.n_layers), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim), f16(f16_) {
  if (f16 && head_dim % 16 != 0)
    throw std::invalid_argument("an f16 KV cache needs head_dim to be a multiple of 16 (got " +
                                std::to_string(head_dim) + "); use kv_f16=False");
  const size_t size = static_cast<size_t>(n_layers) * n_kv_heads * n_ctx * head_dim;
  if (f16) {
    k16.reset(new uint16_t[size]);
    v16.reset(new uint16_t[size]);
  } else {
    k32.reset(new float[size]);
    v32.reset(new float[size]);
  }
}

size_t KvCache::offset(int layer, int kv_head, int pos) const {
  return ((static_cast<size_t>(layer) * n_kv_heads + kv_head) * n_ctx + pos) * head_dim;
}

void KvCache::store(int layer, int pos, const float* k, const float* v) {
  const kernels::F32ToF16Fn to_f16 = kernels::active_table().f32_to_f16;
  for (int h = 0; h < n_kv_heads; ++h) {
    const size_t src = static_cast<size_t>(h) * head_dim, dst = offset(layer, h, pos);
    if (f16) {
      to_f16(k + src, k16.get() + dst, head_dim);
      to_f16(v + src, v16.get() + dst, head_dim);
    } else {
      std::copy_n(k + src, head_dim, k32.get() + dst);
      std::copy_n(v + src, head_dim, v32.get() + dst);
    }
  }
}

void KvCache::copy_prefix(const KvCache& src, int n) {
  const size_t len = static_cast<size_t>(n) * head_dim;
  for (int l = 0; l < n_layers; ++l)
    for (int h = 0; h < n_kv_heads; ++h) {
      const size_t from = src.offset(l, h, 0), to = offset(l, h, 0);
      if (f16) {
        std::copy_n(src.k16.get() + from, len, k16.get() + to);
        std::copy_n(src.v16.get() + from, len, v16.get() + to);
      } else {
        std::copy_n(src.k32.get() + from, len, k32.get() + to);
        std::copy_n(src.v32.get() + from, len, v32.get() + to);
      }
    }
}

namespace {

void dense_linear(const Linear& l, const std::vector<float>& x, int n, std::vector<float>& y, int n_threads) {
  constexpr int64_t kRows = 64;
  ThreadPool::instance().run((l.out + kRows - 1) / kRows, n_threads, [&](int64_t task) {
    for (int64_t r = task * kRows; r < std::min(l.out, (task + 1) * kRows); ++r)
      for (int t = 0; t < n; ++t) {
        const float* w = l.dense + r * l.in;
        const float* xt = x.data() + static_cast<int64_t>(t) * l.in;
        float acc = 0.0f;
        for (int64_t i = 0; i < l.in; ++i) acc += w[i] * xt[i];
        y[static_cast<size_t>(t) * l.out + r] = acc;
      }
  });
}

// y_i = W_i x for linear layers that read the same x: the packed ones share one quantization of
// x and one parallel run (packed.h), float ones go one at a time. `next`: the packed weights the
// forward pass multiplies after these, for idle workers to start fetching.
void linears(std::initializer_list<std::pair<const Linear*, std::vector<float>*>> outs, const std::vector<float>& x,
             int n, int n_threads, std::vector<const PackedWeights*> next) {
  std::vector<Product> products;
  for (const auto& [l, y] : outs) {
    y->resize(static_cast<size_t>(n) * l->out);
    if (l->packed) {
      products.push_back({l->packed, y->data()});
    } else {
      dense_linear(*l, x, n, *y, n_threads);
    }
  }
  if (products.empty()) return;
  const kernels::KernelTable& t = kernels::active_table();
  matmul(t, products, quantize(t, x.data(), n, outs.begin()->first->in, n_threads), n_threads, next);
}

// gate = act(gate) * up, element by element: SiLU (Llama, Qwen3) or ReLU^2 (BitNet), in slices
// across the threads. On the caller alone it was 3% of a Bonsai-1.7B decode step with the
// workers waiting, half of its inputs in the other core's cache (split: decode +3-5%).
void gated_activation(Activation act, std::vector<float>& gate, const std::vector<float>& up, int n_threads) {
  constexpr int64_t kSlice = 1024;
  const int64_t n = static_cast<int64_t>(gate.size());
  ThreadPool::instance().run((n + kSlice - 1) / kSlice, n_threads, [&](int64_t task) {
    const int64_t i0 = task * kSlice, i1 = std::min(n, i0 + kSlice);
    if (act == Activation::kRelu2) {  // one loop each: a branch inside would keep them scalar
      for (int64_t i = i0; i < i1; ++i) gate[i] = relu2(gate[i]) * up[i];
    } else {
      for (int64_t i = i0; i < i1; ++i) gate[i] = silu(gate[i]) * up[i];
    }
  });
}

// s = softmax(s * scale) in place. A NaN or infinite score makes every weight NaN, so that the
// head's output is NaN and the next quantizer names it (exp_poly would clamp a NaN to a number).
// The maximum, the NaN check and the sum run in eight lanes the compiler keeps in one vector
// rather than in serial chains: the softmax then takes a third less time (Bonsai-1.7B decode at
// 2048 positions: 9% -> 6% of the threads' time).
void softmax(float* s, int len, float scale) {
  constexpr int kLanes = 8;
  float lane_max[kLanes], lane_poison[kLanes], lane_sum[kLanes];  // poison: NaN once a score is NaN or infinite
  for (int l = 0; l < kLanes; ++l) {
    lane_max[l] = -INFINITY;
    lane_poison[l] = lane_sum[l] = 0.0f;
  }
  const int whole = len / kLanes * kLanes;
  for (int p = 0; p < whole; p += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float v = s[p + l] *= scale;
      lane_max[l] = lane_max[l] > v ? lane_max[l] : v;
      lane_poison[l] += v * 0.0f;
    }
  float max_score = -INFINITY, poison = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    max_score = std::max(max_score, lane_max[l]);
    poison += lane_poison[l];
  }
  for (int p = whole; p < len; ++p) {
    max_score = std::max(max_score, s[p] *= scale);
    poison += s[p] * 0.0f;
  }
  if (poison != 0.0f) {
    std::fill(s, s + len, NAN);
    return;
  }
  for (int p = 0; p < len; ++p) s[p] = exp_poly(s[p] - max_score);
  for (int p = 0; p < whole; p += kLanes)
    for (int l = 0; l < kLanes; ++l) lane_sum[l] += s[p + l];
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += lane_sum[l];
  for (int p = whole; p < len; ++p) sum += s[p];
  for (int p = 0; p < len; ++p) s[p] /= sum;
}

// Asks for the first 32 KiB of a kv head's keys and values (positions from `base`) at once. A
// short cache otherwise comes from memory a miss after another at the start of each stream, the
// values' only once the keys are done: Bonsai-1.7B decode from an empty context ran faster with
// this in 7 of 9 alternating pairs of processes (median +2.7%), unchanged at 512 and 2048
// positions, where the kernels' streams run long enough to ramp up; asking for the whole cache
// there evicted it before use (-15 to -30%).
void prefetch_kv_start(const KvCache& kv, size_t base, int len, int hd) {
  constexpr int64_t kBytes = int64_t{32} << 10;
  const int64_t elem = kv.f16 ? 2 : 4, bytes = std::min(kBytes, int64_t{len} * hd * elem);
  prefetch_l2(kv.f16 ? static_cast<const void*>(kv.k16.get() + base) : kv.k32.get() + base, bytes);
  prefetch_l2(kv.f16 ? static_cast<const void*>(kv.v16.get() + base) : kv.v32.get() + base, bytes);
}

// Causal attention of each token over its own sequence's cache (positions 0..pos), one task per
// (token, kv head): query heads g * group .. (g + 1) * group - 1 read kv head g, so its keys and
// values come from memory once for the group (they are cold: a decode step streams hundreds
// of MB of weights between two visits to a layer's cache).
void attention(const Config& c, int layer, const std::vector<Row>& rows, const std::vector<float>& q,
               std::vector<float>& out, int n_threads) {
  const kernels::KernelTable& kt = kernels::active_table();
  const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  out.assign(rows.size() * c.n_heads * hd, 0.0f);
  ThreadPool::instance().run(static_cast<int64_t>(rows.size()) * c.n_kv_heads, n_threads, [&](int64_t task) {
    const size_t t = static_cast<size_t>(task / c.n_kv_heads);
    const int g = static_cast<int>(task % c.n_kv_heads);
    const KvCache& kv = *rows[t].kv;
    const int len = rows[t].pos + 1;
    const size_t base = kv.offset(layer, g, 0);
    const size_t first = t * c.n_heads + static_cast<size_t>(g) * group;  // the group's first query head
    std::vector<float> score(static_cast<size_t>(group) * len);  // [query head of the group][position]
    prefetch_kv_start(kv, base, len, hd);
    if (kv.f16) {
      kt.matvec_f16(kv.k16.get() + base, hd, q.data() + first * hd, group, 0, len, score.data(), len);
    } else {
      for (int j = 0; j < group; ++j) {
        const float* qh = q.data() + (first + j) * hd;
        for (int p = 0; p < len; ++p) {
          const float* key = kv.k32.get() + base + static_cast<size_t>(p) * hd;
          float dot = 0.0f;
          for (int i = 0; i < hd; ++i) dot += qh[i] * key[i];
          score[static_cast<size_t>(j) * len + p] = dot;
        }
      }
    }
    for (int j = 0; j < group; ++j) softmax(score.data() + static_cast<size_t>(j) * len, len, scale);
    float* o = out.data() + first * hd;
    if (kv.f16) {
      kt.axpy_rows_f16(kv.v16.get() + base, hd, score.data(), len, group, len, o, hd, hd);
    } else {
      for (int j = 0; j < group; ++j)
        for (int p = 0; p < len; ++p)
          for (int i = 0; i < hd; ++i)
            o[j * hd + i] += score[static_cast<size_t>(j) * len + p] * kv.v32[base + static_cast<size_t>(p) * hd + i];
    }
  });
}

}  // namespace

void forward(const Model& m, const int32_t* tokens, const std::vector<Row>& rows, int n_threads, std::vector<float>& x) {
  const Config& c = m.config;
  const int n = static_cast<int>(rows.size());
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  const Rotation rot = rotation(c, rows);
  x.resize(static_cast<size_t>(n) * c.dim);
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < c.dim; ++i) x[static_cast<size_t>(t) * c.dim + i] = m.token_embd.at(tokens[t], i);

  // The packed weights among some linears (a float one has none): what a next matmul reads.
  auto packed = [](std::initializer_list<const Linear*> ls) {
    std::vector<const PackedWeights*> ws;
    for (const Linear* l : ls)
      if (l->packed) ws.push_back(l->packed);
    return ws;
  };
  std::vector<float> a, q, k, v, attn, normed, proj, gate, up;
  for (int l = 0; l < c.n_layers; ++l) {
    const Layer& L = m.layers[l];
    const Layer* next_layer = l + 1 < c.n_layers ? &m.layers[l + 1] : nullptr;
    // Attention block.
    a.resize(x.size());
    rmsnorm(a.data(), x.data(), L.attn_norm, n, c.dim, c.norm_eps);
    linears({{&L.attn_q, &q}, {&L.attn_k, &k}, {&L.attn_v, &v}}, a, n, n_threads, packed({&L.attn_output}));
    if (c.qk_norm) {
      head_rmsnorm(q, L.attn_q_norm, c.head_dim, c.norm_eps);
      head_rmsnorm(k, L.attn_k_norm, c.head_dim, c.norm_eps);
    }
    rope(q.data(), rot, n, c.n_heads, c.head_dim);
    rope(k.data(), rot, n, c.n_kv_heads, c.head_dim);
    for (int t = 0; t < n; ++t) rows[t].kv->store(l, rows[t].pos, k.data() + t * kv_dim, v.data() + t * kv_dim);
    attention(c, l, rows, q, attn, n_threads);
    if (c.sub_norms) {
      normed.resize(attn.size());
      rmsnorm(normed.data(), attn.data(), L.attn_sub_norm, n, c.n_heads * c.head_dim, c.norm_eps);
      attn.swap(normed);
    }
    linears({{&L.attn_output, &proj}}, attn, n, n_threads, packed({&L.ffn_gate, &L.ffn_up}));
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];

    // Feed-forward block.
    rmsnorm(a.data(), x.data(), L.ffn_norm, n, c.dim, c.norm_eps);
    linears({{&L.ffn_gate, &gate}, {&L.ffn_up, &up}}, a, n, n_threads, packed({&L.ffn_down}));
    gated_activation(c.activation, gate, up, n_threads);
    if (c.sub_norms) {
      normed.resize(gate.size());
      rmsnorm(normed.data(), gate.data(), L.ffn_sub_norm, n, c.ffn_dim, c.norm_eps);
      gate.swap(normed);
    }
    std::vector<const PackedWeights*> after_down;  // the next layer's q, k, v, or a 1-bit head
    if (next_layer) {
      after_down = packed({&next_layer->attn_q, &next_layer->attn_k, &next_layer->attn_v});
    } else if (m.output_packed) {
      after_down = {m.output_packed};
    }
    linears({{&L.ffn_down, &proj}}, gate, n, n_threads, after_down);
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
  }
  std::vector<float> out(x.size());
  rmsnorm(out.data(), x.data(), m.output_norm, n, c.dim, c.norm_eps);
  x.swap(out);
}

// logits[t, v] = hidden[t] . output[v], one task per block of vocabulary rows. The head is the
// largest tensor a decode step reads: an f16 head goes through the f16 kernel, an 8-bit head
// (half the bytes) through the int8 kernel on the hidden state quantized per token.
void logits(const Model& m, const float* hidden, int n, float* out, int n_threads) {
  const Table& head = m.output;
  const kernels::KernelTable& k = kernels::active_table();
  if (m.output_packed) {  // a 1-bit head reads 1/13 of an f16 one: BitLinear, as the linears
    matmul(k, *m.output_packed, quantize(k, hidden, n, m.config.dim, n_threads), out, n_threads);
    return;
  }
  if (head.f16 && head.cols % 16 != 0) throw std::logic_error("logits: an f16 head needs cols % 16 == 0");
  QuantizedActivations hq;
  if (head.q8) hq = quantize(k, hidden, n, head.cols, n_threads);
  constexpr int64_t kRows = 256;
  ThreadPool::instance().run((head.rows + kRows - 1) / kRows, n_threads, [&](int64_t task) {
    const int64_t r0 = task * kRows, r1 = std::min(head.rows, r0 + kRows);
    if (head.q8) {
      k.matvec_q8(head.q8, head.q8_scale, head.cols, hq.q.data(), hq.s.data(), n, r0, r1, out, head.rows);
      return;
    }
    if (head.f16) {
      k.matvec_f16(head.f16, head.cols, hidden, n, r0, r1, out, head.rows);
      return;
    }
    for (int64_t r = r0; r < r1; ++r)
      for (int t = 0; t < n; ++t) {
        const float* h = hidden + static_cast<int64_t>(t) * head.cols;
        float acc = 0.0f;
        for (int64_t i = 0; i < head.cols; ++i) acc += h[i] * head.f32[r * head.cols + i];
        out[static_cast<int64_t>(t) * head.rows + r] = acc;
      }
  });
}

Session::Session(const Model& model, int n_ctx, bool kv_f16, int n_threads)
    : m_(model), n_threads_(n_threads), kv_(model.config, n_ctx, kv_f16) {}

void Session::truncate(int n) {
  if (n < 0 || n > n_past_)
    throw std::out_of_range("truncate: position " + std::to_string(n) + " is outside 0.." + std::to_string(n_past_));
  n_past_ = n;
}

void Session::copy_prefix(const Session& src, int n) {
  if (&src.m_ != &m_) throw std::invalid_argument("copy_prefix: the sessions belong to different models");
  if (src.kv_.f16 != kv_.f16) throw std::invalid_argument("copy_prefix: the sessions' KV caches differ in precision");
  if (n < 0 || n > src.n_past_ || n > kv_.n_ctx)
    throw std::out_of_range("copy_prefix: " + std::to_string(n) + " positions requested, the source holds " +
                            std::to_string(src.n_past_) + " and this context " + std::to_string(kv_.n_ctx));
  if (&src != this) kv_.copy_prefix(src.kv_, n);
  n_past_ = n;
}

void Session::check_tokens(const int32_t* tokens, int64_t n) const {
  const int vocab = m_.config.vocab_size;
  if (n < 1) throw std::invalid_argument("tokens must not be empty");
  if (n_past_ + n > kv_.n_ctx)
    throw std::length_error(std::to_string(n_past_ + n) + " tokens do not fit the context of " +
                            std::to_string(kv_.n_ctx) + " (" + std::to_string(n_past_) + " already in the cache + " +
                            std::to_string(n) + " new)");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                  " is outside the vocabulary (0.." + std::to_string(vocab - 1) + ")");
}

std::vector<float> Session::eval(const int32_t* tokens, int64_t n, Output out) {
  const Config& c = m_.config;
  check_tokens(tokens, n);
  std::vector<float> result;
  std::vector<float> hidden;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int len = static_cast<int>(std::min<int64_t>(kChunk, n - start));
    std::vector<Row> rows;
    for (int t = 0; t < len; ++t) rows.push_back({&kv_, n_past_ + t});
    forward(m_, tokens + start, rows, n_threads_, hidden);
    n_past_ += len;
    const bool last_chunk = start + len == n;
    if (out == Output::kAll) {
      const size_t at = result.size();
      result.resize(at + static_cast<size_t>(len) * c.vocab_size);
      logits(m_, hidden.data(), len, result.data() + at, n_threads_);
    } else if (out == Output::kHidden) {
      result.insert(result.end(), hidden.begin(), hidden.end());
    } else if (out == Output::kLast && last_chunk) {
      result.resize(c.vocab_size);
      logits(m_, hidden.data() + static_cast<size_t>(len - 1) * c.dim, 1, result.data(), n_threads_);
    }
  }
  return result;
}

std::vector<std::vector<float>> eval_batch(const std::vector<Session*>& seqs,
                                           const std::vector<std::vector<int32_t>>& tokens, int n_threads) {
  if (seqs.empty()) throw std::invalid_argument("eval_batch: no sequences");
  if (seqs.size() != tokens.size()) throw std::invalid_argument("eval_batch: one token list per sequence is needed");
  const Model& m = seqs[0]->m_;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (&seqs[i]->m_ != &m) throw std::invalid_argument("eval_batch: the sequences belong to different models");
    for (size_t j = 0; j < i; ++j)
      if (seqs[j] == seqs[i]) throw std::invalid_argument("eval_batch: a sequence appears twice");
    seqs[i]->check_tokens(tokens[i].data(), static_cast<int64_t>(tokens[i].size()));
  }
  std::vector<int32_t> flat;
  std::vector<Row> rows;
  std::vector<int> last;  // the row of each sequence's last token
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (size_t t = 0; t < tokens[i].size(); ++t) rows.push_back({&seqs[i]->kv_, seqs[i]->n_past_ + static_cast<int>(t)});
    flat.insert(flat.end(), tokens[i].begin(), tokens[i].end());
    last.push_back(static_cast<int>(rows.size()) - 1);
  }
  std::vector<float> hidden;
  forward(m, flat.data(), rows, n_threads, hidden);
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i]->n_past_ += static_cast<int>(tokens[i].size());

  const int dim = m.config.dim, vocab = m.config.vocab_size;
  std::vector<float> picked(seqs.size() * static_cast<size_t>(dim));
  for (size_t i = 0; i < seqs.size(); ++i)
    std::copy_n(hidden.data() + static_cast<size_t>(last[i]) * dim, dim, picked.data() + i * dim);
  std::vector<float> all(seqs.size() * static_cast<size_t>(vocab));
  logits(m, picked.data(), static_cast<int>(seqs.size()), all.data(), n_threads);
  std::vector<std::vector<float>> result;
  for (size_t i = 0; i < seqs.size(); ++i)
    result.emplace_back(all.begin() + static_cast<int64_t>(i) * vocab, all.begin() + static_cast<int64_t>(i + 1) * vocab);
  return result;
}

}  // namespace tritlm::model
