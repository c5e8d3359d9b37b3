// Python bindings of the model: Model (weights checked against the config, held as views of the
// caller's arrays), Session (one sequence's KV cache) and Sampler.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>

#include "bindings_util.h"
#include "model/model.h"
#include "model/sampling.h"

namespace tritlm {
namespace {

using model::Linear;
using model::Table;

// The model plus the Python objects whose memory it views, and the aligned copies of tables it
// could not view (Builder::table).
struct PyModel {
  model::Model m;
  std::vector<nb::object> owners;
  std::vector<std::vector<uint16_t>> f16_copies;  // moving these vectors keeps their data in place
  std::vector<std::vector<float>> f32_copies;
};

template <class T>
T config_value(const nb::dict& cfg, const char* key) {
  if (!cfg.contains(key)) throw nb::value_error((std::string("config is missing '") + key + "'").c_str());
  try {
    return nb::cast<T>(cfg[key]);
  } catch (const nb::cast_error&) {
    throw nb::type_error((std::string("config['") + key + "'] has the wrong type").c_str());
  }
}

int positive(const nb::dict& cfg, const char* key) {
  const int v = config_value<int>(cfg, key);
  if (v <= 0) throw nb::value_error((std::string("config['") + key + "'] must be positive, got " + std::to_string(v)).c_str());
  return v;
}

model::Config parse_config(const nb::dict& cfg) {
  model::Config c;
  c.n_layers = positive(cfg, "n_layers");
  c.dim = positive(cfg, "dim");
  c.n_heads = positive(cfg, "n_heads");
  c.n_kv_heads = positive(cfg, "n_kv_heads");
  c.head_dim = positive(cfg, "head_dim");
  c.ffn_dim = positive(cfg, "ffn_dim");
  c.vocab_size = positive(cfg, "vocab_size");
  c.rope_theta = config_value<float>(cfg, "rope_theta");
  c.norm_eps = config_value<float>(cfg, "norm_eps");
  c.sub_norms = config_value<bool>(cfg, "sub_norms");
  c.qk_norm = cfg.contains("qk_norm") && config_value<bool>(cfg, "qk_norm");  // optional: Qwen3 only
  const std::string act = config_value<std::string>(cfg, "activation");
  if (act == "relu2")
    c.activation = model::Activation::kRelu2;
  else if (act == "silu")
    c.activation = model::Activation::kSilu;
  else
    throw nb::value_error(("config['activation'] must be 'relu2' or 'silu', got '" + act + "'").c_str());
  if (c.n_heads % c.n_kv_heads != 0)
    throw nb::value_error("config: n_heads must be a multiple of n_kv_heads");
  if (c.head_dim % 2 != 0) throw nb::value_error("config: head_dim must be even for RoPE");
  if (!(c.rope_theta > 0.0f) || !(c.norm_eps >= 0.0f) || !std::isfinite(c.rope_theta))
    throw nb::value_error("config: rope_theta must be positive and norm_eps non-negative");
  return c;
}

class Builder {
 public:
  Builder(PyModel& pm, const nb::dict& weights) : pm_(pm), w_(weights) {}

  nb::handle get(const std::string& name) {
    if (!w_.contains(name.c_str())) throw nb::value_error(("missing weight '" + name + "'").c_str());
    return w_[name.c_str()];
  }

  std::vector<float> norm(const std::string& name, int64_t size) {
    nb::handle h = get(name);
    Input a;
    if (!nb::try_cast(h, a)) throw nb::type_error(("weight '" + name + "' must be a numpy array").c_str());
    const float* p = require<float>(a, name.c_str(), 1);
    if (static_cast<int64_t>(a.shape(0)) != size)
      throw nb::value_error(("weight '" + name + "' has " + std::to_string(a.shape(0)) + " values, expected " +
                             std::to_string(size)).c_str());
    return std::vector<float>(p, p + size);
  }

  Linear linear(const std::string& name, int64_t out, int64_t in) {
    nb::handle h = get(name);
    Linear l;
    l.out = out;
    l.in = in;
    int64_t got_out, got_in;
    if (nb::isinstance<PackedWeights>(h)) {
      l.packed = nb::inst_ptr<PackedWeights>(h);
      got_out = l.packed->n;
      got_in = l.packed->k;
    } else {
      Input a;
      if (!nb::try_cast(h, a))
        throw nb::type_error(("weight '" + name + "' must be PackedWeights or a float32 array").c_str());
      l.dense = require<float>(a, name.c_str(), 2);
      got_out = static_cast<int64_t>(a.shape(0));
      got_in = static_cast<int64_t>(a.shape(1));
    }
    if (got_out != out || got_in != in)
      throw nb::value_error(("weight '" + name + "' is [" + std::to_string(got_out) + ", " + std::to_string(got_in) +
                             "], expected [" + std::to_string(out) + ", " + std::to_string(in) + "]").c_str());
    pm_.owners.push_back(nb::borrow(h));
    return l;
  }

  // An embedding or output table, viewed in place. A GGUF file's tables are views of its memory
  // map, and a file whose general.alignment is 1 (or 2, for f32) puts them at addresses not
  // aligned for their elements, which the kernels and Table::at must not read as such: those
  // get an aligned copy the model owns instead.
  Table table(const std::string& name, int64_t rows, int64_t cols) {
    nb::handle h = get(name);
    Input a;
    if (!nb::try_cast(h, a)) throw nb::type_error(("weight '" + name + "' must be a numpy array").c_str());
    Table t;
    t.rows = rows;
    t.cols = cols;
    const void* data;
    const bool half = a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) &&
                      a.dtype().bits == 16 && a.dtype().lanes == 1;
    if (a.dtype() == nb::dtype<float>()) {
      data = require_bytes<float>(a, name.c_str(), 2);
    } else if (half) {
      if (a.device_type() != nb::device::cpu::value)
        throw nb::value_error(("weight '" + name + "' must be a CPU array").c_str());
      if (a.ndim() != 2 || a.stride(1) != 1 || a.stride(0) != static_cast<int64_t>(a.shape(1)))
        throw nb::value_error(("weight '" + name + "' must be a C-contiguous 2-D array").c_str());
      data = a.data();
    } else {
      throw nb::type_error(("weight '" + name + "' must be float16 or float32, got " + dtype_name(a.dtype())).c_str());
    }
    if (static_cast<int64_t>(a.shape(0)) != rows || static_cast<int64_t>(a.shape(1)) != cols)
      throw nb::value_error(("weight '" + name + "' is [" + std::to_string(a.shape(0)) + ", " +
                             std::to_string(a.shape(1)) + "], expected [" + std::to_string(rows) + ", " +
                             std::to_string(cols) + "]").c_str());
    const size_t count = static_cast<size_t>(rows * cols);
    if (half ? aligned_for<uint16_t>(data) : aligned_for<float>(data)) {
      if (half)
        t.f16 = static_cast<const uint16_t*>(data);
      else
        t.f32 = static_cast<const float*>(data);
      pm_.owners.push_back(nb::borrow(h));
    } else if (half) {
      t.f16 = aligned_copy(data, count, pm_.f16_copies);
    } else {
      t.f32 = aligned_copy(data, count, pm_.f32_copies);
    }
    return t;
  }

  // An 8-bit head: int8 [rows, cols] and one f32 scale per row.
  Table q8_table(const std::string& name, const std::string& scale_name, int64_t rows, int64_t cols) {
    if (cols % 32 != 0 || cols > (int64_t{1} << 17))
      throw nb::value_error("an 8-bit head needs dim to be a multiple of 32 and at most 131072");
    nb::handle h = get(name), hs = get(scale_name);
    Input a, sc;
    if (!nb::try_cast(h, a) || !nb::try_cast(hs, sc))
      throw nb::type_error(("weights '" + name + "' and '" + scale_name + "' must be numpy arrays").c_str());
    Table t;
    t.rows = rows;
    t.cols = cols;
    t.q8 = reinterpret_cast<const int8_t*>(require<int8_t>(a, name.c_str(), 2));
    t.q8_scale = require<float>(sc, scale_name.c_str(), 1);
    if (static_cast<int64_t>(a.shape(0)) != rows || static_cast<int64_t>(a.shape(1)) != cols ||
        static_cast<int64_t>(sc.shape(0)) != rows)
      throw nb::value_error(("weight '" + name + "' must be [" + std::to_string(rows) + ", " + std::to_string(cols) +
                             "] with " + std::to_string(rows) + " scales").c_str());
    // The kernels negate weights (the sign trick), so -128 would wrap.
    const int64_t size = rows * cols;
    for (int64_t i = 0; i < size; ++i)
      if (t.q8[i] == -128)
        throw nb::value_error(("weight '" + name + "' holds -128 at row " + std::to_string(i / cols) +
                               "; 8-bit head values must lie in [-127, 127]").c_str());
    pm_.owners.push_back(nb::borrow(h));
    pm_.owners.push_back(nb::borrow(hs));
    return t;
  }

 private:
  template <class T>
  static const T* aligned_copy(const void* data, size_t count, std::vector<std::vector<T>>& copies) {
    std::vector<T> copy(count);
    std::memcpy(copy.data(), data, count * sizeof(T));
    copies.push_back(std::move(copy));
    return copies.back().data();
  }

  PyModel& pm_;
  const nb::dict& w_;
};

// Builds into a local first: if a check throws, nanobind never runs the destructor of a
// half-initialized instance, and the references it took would leak.
void build(PyModel* self, const nb::dict& config, const nb::dict& weights) {
  PyModel pm;
  model::Model& m = pm.m;
  m.config = parse_config(config);
  const model::Config& c = m.config;
  Builder b(pm, weights);
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim, kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  m.token_embd = b.table("token_embd", c.vocab_size, c.dim);
  if (weights.contains("output.q8")) {
    m.output = b.q8_table("output.q8", "output.q8_scale", c.vocab_size, c.dim);
  } else if (weights.contains("output") && nb::isinstance<PackedWeights>(weights["output"])) {
    m.output_packed = b.linear("output", c.vocab_size, c.dim).packed;
    m.output = m.token_embd;
  } else {
    m.output = weights.contains("output") ? b.table("output", c.vocab_size, c.dim) : m.token_embd;
  }
  m.output_norm = b.norm("output_norm", c.dim);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    model::Layer L;
    L.attn_norm = b.norm(p + "attn_norm", c.dim);
    L.ffn_norm = b.norm(p + "ffn_norm", c.dim);
    if (c.sub_norms) {
      L.attn_sub_norm = b.norm(p + "attn_sub_norm", q_dim);
      L.ffn_sub_norm = b.norm(p + "ffn_sub_norm", c.ffn_dim);
    }
    if (c.qk_norm) {
      L.attn_q_norm = b.norm(p + "attn_q_norm", c.head_dim);
      L.attn_k_norm = b.norm(p + "attn_k_norm", c.head_dim);
    }
    L.attn_q = b.linear(p + "attn_q", q_dim, c.dim);
    L.attn_k = b.linear(p + "attn_k", kv_dim, c.dim);
    L.attn_v = b.linear(p + "attn_v", kv_dim, c.dim);
    L.attn_output = b.linear(p + "attn_output", c.dim, q_dim);
    L.ffn_gate = b.linear(p + "ffn_gate", c.ffn_dim, c.dim);
    L.ffn_up = b.linear(p + "ffn_up", c.ffn_dim, c.dim);
    L.ffn_down = b.linear(p + "ffn_down", c.dim, c.ffn_dim);
    m.layers.push_back(std::move(L));
  }
  new (self) PyModel(std::move(pm));
}

nb::dict model_info(const PyModel& pm) {
  const model::Model& m = pm.m;
  nb::dict linears;
  int64_t linear_bytes = 0;
  const char* names[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const model::Layer& L = m.layers[i];
    const Linear* ls[] = {&L.attn_q, &L.attn_k, &L.attn_v, &L.attn_output, &L.ffn_gate, &L.ffn_up, &L.ffn_down};
    for (int j = 0; j < 7; ++j) {
      linears[("blk." + std::to_string(i) + "." + names[j]).c_str()] = ls[j]->kind();
      linear_bytes += ls[j]->nbytes();
    }
  }
  nb::dict info;
  info["linears"] = linears;
  info["linear_bytes"] = linear_bytes;
  info["embedding_bytes"] = m.token_embd.nbytes();
  info["embedding_dtype"] = m.token_embd.f16 ? "f16" : "f32";
  const Linear packed_head{m.output_packed};
  info["head_dtype"] = m.output_packed ? packed_head.kind() : m.output.q8 ? "q8" : m.output.f16 ? "f16" : "f32";
  info["tied_head"] = !m.output_packed && !m.output.q8 && m.output.f16 == m.token_embd.f16 &&
                      m.output.f32 == m.token_embd.f32;
  info["head_bytes"] = m.output_packed ? packed_head.nbytes() : m.output.nbytes();
  return info;
}

// One sequence, used by one thread at a time.
struct PySession {
  model::Session s;
  std::mutex busy;
  PySession(const PyModel& m, int n_ctx, bool kv_f16, int threads) : s(m.m, n_ctx, kv_f16, threads) {}
};

model::Output parse_output(const std::string& v) {
  if (v == "last") return model::Output::kLast;
  if (v == "all") return model::Output::kAll;
  if (v == "none") return model::Output::kNone;
  if (v == "hidden") return model::Output::kHidden;
  throw nb::value_error(("output must be 'last', 'all', 'hidden' or 'none', got '" + v + "'").c_str());
}

void check_range(const char* name, float v, float lo, float hi) {
  if (!(v >= lo && v <= hi))
    throw nb::value_error((std::string(name) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                           ", got " + std::to_string(v)).c_str());
}

}  // namespace

void bind_model(nb::module_& m) {
  nb::class_<PyModel>(m, "Model", "A transformer's weights, checked against its config.")
      .def("__init__", &build, "config"_a, "weights"_a)
      .def("info", &model_info)
      .def_prop_ro("vocab_size", [](const PyModel& pm) { return pm.m.config.vocab_size; })
      .def_prop_ro("dim", [](const PyModel& pm) { return pm.m.config.dim; });

  nb::class_<PySession>(m, "Session", "One sequence's KV cache and forward pass.")
      .def(
          "__init__",
          [](PySession* self, const PyModel& model, int n_ctx, bool kv_f16, std::optional<int> n_threads) {
            if (n_ctx < 1) throw nb::value_error(("n_ctx must be positive, got " + std::to_string(n_ctx)).c_str());
            new (self) PySession(model, n_ctx, kv_f16, resolve_threads(n_threads));
          },
          "model"_a, "n_ctx"_a, "kv_f16"_a = true, "n_threads"_a = nb::none(), nb::keep_alive<1, 2>())
      .def(
          "eval",
          [](PySession& ps, const Input& tokens, const std::string& output) {
            const int32_t* t = require<int32_t>(tokens, "tokens", 1);
            const model::Output out = parse_output(output);
            const int64_t n = static_cast<int64_t>(tokens.shape(0));
            std::vector<float> result;
            {
              nb::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(ps.busy);
              result = ps.s.eval(t, n, out);
            }
            if (out == model::Output::kNone) return nb::object(nb::none());
            const size_t rows = out == model::Output::kLast ? 1 : static_cast<size_t>(n);
            const size_t cols = result.size() / rows;
            if (out == model::Output::kLast) return nb::cast(to_numpy(std::move(result), {cols}));
            return nb::cast(to_numpy(std::move(result), {rows, cols}));
          },
          "tokens"_a, "output"_a = "last",
          "Appends tokens to the sequence; returns logits (last or all), hidden states, or nothing.")
      .def_prop_ro("n_past", [](const PySession& ps) { return ps.s.n_past(); })
      .def_prop_ro("n_ctx", [](const PySession& ps) { return ps.s.n_ctx(); })
      .def("truncate", [](PySession& ps, int n) {
        std::lock_guard<std::mutex> lock(ps.busy);
        ps.s.truncate(n);
      }, "n"_a)
      .def("set_threads", [](PySession& ps, int n) { ps.s.set_threads(check_threads(n)); }, "n"_a)
      .def(
          "copy_prefix",
          [](PySession& ps, PySession& src, int n) {
            nb::gil_scoped_release release;
            if (&ps == &src) {
              std::lock_guard<std::mutex> lock(ps.busy);
              ps.s.copy_prefix(src.s, n);
              return;
            }
            std::scoped_lock lock(ps.busy, src.busy);
            ps.s.copy_prefix(src.s, n);
          },
          "src"_a, "n"_a, "Takes the first n cached positions of another sequence of the same model.");

  m.def(
      "eval_batch",
      [](const std::vector<PySession*>& sessions, const std::vector<Input>& tokens, std::optional<int> n_threads) {
        if (sessions.size() != tokens.size())
          throw nb::value_error("eval_batch: one token array per session is needed");
        if (sessions.size() > 4096) throw nb::value_error("eval_batch: at most 4096 sessions per step");
        std::vector<std::vector<int32_t>> ids;
        int64_t total = 0;
        for (const Input& t : tokens) {
          const int32_t* p = require<int32_t>(t, "tokens", 1);
          ids.emplace_back(p, p + t.shape(0));
          total += static_cast<int64_t>(t.shape(0));
        }
        if (total > 8192) throw nb::value_error(("eval_batch: " + std::to_string(total) +
                                                 " tokens in one step, at most 8192").c_str());
        const int threads = resolve_threads(n_threads);
        std::vector<model::Session*> seqs;
        std::vector<PySession*> order(sessions.begin(), sessions.end());
        for (PySession* ps : sessions) {
          if (!ps) throw nb::type_error("eval_batch: sessions must not be None");
          seqs.push_back(&ps->s);
        }
        std::sort(order.begin(), order.end());
        if (std::adjacent_find(order.begin(), order.end()) != order.end())
          throw nb::value_error("eval_batch: a session appears twice");
        std::vector<std::vector<float>> result;
        {
          nb::gil_scoped_release release;
          // Locked in address order, so two concurrent steps can never wait on each other.
          std::vector<std::unique_lock<std::mutex>> locks;
          for (PySession* ps : order) locks.emplace_back(ps->busy);
          result = model::eval_batch(seqs, ids, threads);
        }
        nb::list out;
        for (std::vector<float>& r : result) {
          const size_t n = r.size();
          out.append(to_numpy(std::move(r), {n}));
        }
        return out;
      },
      "sessions"_a, "tokens"_a, "n_threads"_a = nb::none(),
      "One continuous-batching step: appends tokens[i] to sessions[i] in a single forward pass "
      "and returns each session's logits after its last new token.");

  nb::class_<model::Sampler>(m, "Sampler", "Chooses tokens from logits with a seeded generator.")
      .def(
          "__init__",
          [](model::Sampler* self, float temperature, int top_k, float top_p, float min_p, float repetition_penalty,
             float presence_penalty, float frequency_penalty, const std::vector<std::pair<int32_t, float>>& logit_bias,
             uint64_t seed) {
            check_range("temperature", temperature, 0.0f, 100.0f);
            if (top_k < 0) throw nb::value_error(("top_k must be >= 0, got " + std::to_string(top_k)).c_str());
            check_range("top_p", top_p, 0.0f, 1.0f);
            if (top_p == 0.0f) throw nb::value_error("top_p must be greater than 0");
            check_range("min_p", min_p, 0.0f, 1.0f);
            check_range("repetition_penalty", repetition_penalty, 1e-3f, 100.0f);
            check_range("presence_penalty", presence_penalty, -2.0f, 2.0f);
            check_range("frequency_penalty", frequency_penalty, -2.0f, 2.0f);
            for (const auto& [token, bias] : logit_bias) check_range("logit_bias value", bias, -100.0f, 100.0f);
            model::SamplingParams p{temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
                                    frequency_penalty, logit_bias, seed};
            new (self) model::Sampler(std::move(p));
          },
          "temperature"_a = 1.0f, "top_k"_a = 0, "top_p"_a = 1.0f, "min_p"_a = 0.0f, "repetition_penalty"_a = 1.0f,
          "presence_penalty"_a = 0.0f, "frequency_penalty"_a = 0.0f,
          "logit_bias"_a = std::vector<std::pair<int32_t, float>>{}, "seed"_a = 0)
      .def(
          "sample",
          [](model::Sampler& s, const Input& logits, const Input& history, int n_top) {
            const float* l = require<float>(logits, "logits", 1);
            const int32_t* h = require<int32_t>(history, "history", 1);
            if (n_top < 0 || n_top > 20) throw nb::value_error("n_top must be between 0 and 20");
            if (logits.shape(0) < 1 || logits.shape(0) > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
              throw nb::value_error(("logits must hold between 1 and 2^31 - 1 values, got " +
                                     std::to_string(logits.shape(0))).c_str());
            const model::Sample r =
                s.sample(l, static_cast<int32_t>(logits.shape(0)), h, static_cast<int64_t>(history.shape(0)), n_top);
            return std::make_tuple(r.token, r.logprob, r.top);
          },
          "logits"_a, "history"_a, "n_top"_a = 0);
}

}  // namespace tritlm
