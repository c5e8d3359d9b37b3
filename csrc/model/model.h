// A BitNet b1.58-family transformer: its configuration and weights, and a Session that runs the
// KV-cached forward pass for one sequence. The forward pass reads like the paper; the kernels
// (csrc/kernels) do the heavy lifting.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "packed.h"

namespace tritlm::model {

enum class Activation { kRelu2, kSilu };

struct Config {
  int n_layers = 0, dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn_dim = 0, vocab_size = 0;
  float rope_theta = 10000.0f, norm_eps = 1e-5f;
  Activation activation = Activation::kRelu2;
  bool sub_norms = true;  // attn_sub_norm before attn_output, ffn_sub_norm before ffn_down
  bool qk_norm = false;   // Qwen3: attn_q_norm / attn_k_norm, an RMSNorm over each head before RoPE
};

// A linear layer y = W x: BitLinear on the int8 kernels when the weights are ternary or binary,
// otherwise a float matmul. Weights are views; the binding keeps their owners alive.
struct Linear {
  const PackedWeights* packed = nullptr;
  const float* dense = nullptr;  // [out, in] when not packed
  int64_t out = 0, in = 0;
  std::string kind() const;
  int64_t nbytes() const;
};

// A [rows, cols] table of f16, f32, or int8 values with one f32 scale per row (embeddings, the
// output head), a view.
struct Table {
  const uint16_t* f16 = nullptr;
  const float* f32 = nullptr;
  const int8_t* q8 = nullptr;
  const float* q8_scale = nullptr;
  int64_t rows = 0, cols = 0;
  float at(int64_t r, int64_t c) const;
  int64_t nbytes() const { return rows * cols * (q8 ? 1 : f16 ? 2 : 4) + (q8 ? rows * 4 : 0); }
};

struct Layer {
  std::vector<float> attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
  std::vector<float> attn_q_norm, attn_k_norm;  // [head_dim], shared by every head (when qk_norm)
  Linear attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down;
};

struct Model {
  Config config;
  Table token_embd;
  Table output;  // the tied embedding when the file has no separate head
  const PackedWeights* output_packed = nullptr;  // a 1-bit head (GGUF Q1_0), run like the linears
  std::vector<float> output_norm;
  std::vector<Layer> layers;
};

enum class Output { kNone, kLast, kAll, kHidden };

// One sequence's keys and values, preallocated for n_ctx positions and laid out
// [layer][kv head][position][head_dim], so one head's keys (and values) are a contiguous matrix
// the f16 kernels can stream. Allocated without initializing: the pages of positions not yet
// used are never touched and cost no resident memory.
class KvCache {
 public:
  KvCache(const Config& c, int n_ctx, bool f16);
  size_t offset(int layer, int kv_head, int pos) const;
  void store(int layer, int pos, const float* k, const float* v);  // one token's kv_dim values
  void copy_prefix(const KvCache& src, int n);                      // positions 0..n-1 of src

  int n_ctx, n_layers, n_kv_heads, head_dim;
  bool f16;
  std::unique_ptr<uint16_t[]> k16, v16;
  std::unique_ptr<float[]> k32, v32;
};

// One token of a forward step: the cache of the sequence it belongs to and its position there.
// A step may hold tokens of many sequences; the weights are read once for all of them.
struct Row {
  KvCache* kv;
  int pos;
};

// Runs tokens[i] at rows[i] through every layer and leaves the final normed hidden states in
// x [n, dim]; stores each token's keys and values in its row's cache.
void forward(const Model& m, const int32_t* tokens, const std::vector<Row>& rows, int n_threads, std::vector<float>& x);

// logits[t, :] = hidden[t] . output^T for n hidden states.
void logits(const Model& m, const float* hidden, int n, float* out, int n_threads);

// One sequence: its KV cache and how many positions of it are filled.
class Session {
 public:
  Session(const Model& model, int n_ctx, bool kv_f16, int n_threads);

  // Runs `tokens` at positions n_past.. and appends them to the cache. Returns, per `out`:
  // nothing, the logits of the last token [vocab], of every token [n, vocab], or the final
  // normed hidden states [n, dim]. Throws std::length_error if the tokens do not fit.
  std::vector<float> eval(const int32_t* tokens, int64_t n, Output out);

  // Throws unless n tokens fit after n_past and every id is in the vocabulary.
  void check_tokens(const int32_t* tokens, int64_t n) const;

  int n_past() const { return n_past_; }
  int n_ctx() const { return kv_.n_ctx; }
  bool kv_f16() const { return kv_.f16; }
  const Model& model() const { return m_; }
  void truncate(int n);
  void set_threads(int n) { n_threads_ = n; }
  // Takes the first n positions of another sequence of the same model (a shared prompt prefix).
  void copy_prefix(const Session& src, int n);

 private:
  // Prompt tokens go through the batched kernels this many at a time: each chunk streams every
  // weight once, so longer chunks read less (pp128 on 2B4T: 66 tokens/s at 64, 74 at 128).
  static constexpr int kChunk = 128;
  friend std::vector<std::vector<float>> eval_batch(const std::vector<Session*>&,
                                                    const std::vector<std::vector<int32_t>>&, int);

  const Model& m_;
  int n_threads_;
  int n_past_ = 0;
  KvCache kv_;
};

// One step of continuous batching: appends tokens[i] to seqs[i] (distinct sequences of one
// model) in a single forward pass and returns the logits of each sequence's last new token.
std::vector<std::vector<float>> eval_batch(const std::vector<Session*>& seqs,
                                           const std::vector<std::vector<int32_t>>& tokens, int n_threads);

}  // namespace tritlm::model
