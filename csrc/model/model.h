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

// One sequence: its KV cache (preallocated for n_ctx positions) and scratch buffers.
class Session {
 public:
  Session(const Model& model, int n_ctx, bool kv_f16, int n_threads);

  // Runs `tokens` at positions n_past.. and appends them to the cache. Returns, per `out`:
  // nothing, the logits of the last token [vocab], of every token [n, vocab], or the final
  // normed hidden states [n, dim]. Throws std::length_error if the tokens do not fit.
  std::vector<float> eval(const int32_t* tokens, int64_t n, Output out);

  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  void truncate(int n);
  void set_threads(int n) { n_threads_ = n; }

 private:
  // Prompt tokens go through the batched kernels this many at a time: each chunk streams every
  // weight once, so longer chunks read less (pp128 on 2B4T: 66 tokens/s at 64, 74 at 128).
  static constexpr int kChunk = 128;

  void forward_chunk(const int32_t* tokens, int n, std::vector<float>& x);
  void attention(int layer, int n, int pos0, const std::vector<float>& q, std::vector<float>& out);
  size_t kv_offset(int layer, int kv_head, int pos) const;
  void store_kv(int layer, int n, int pos0, const std::vector<float>& k, const std::vector<float>& v);
  void linear(const Linear& l, const std::vector<float>& x, int n, std::vector<float>& y);
  void logits(const float* hidden, int n, float* out);

  const Model& m_;
  int n_ctx_, n_threads_;
  bool kv_f16_;
  int n_past_ = 0;
  int64_t kv_dim_;
  // [layer][kv head][pos][head_dim], f16 or f32. Allocated without initializing, so the pages of
  // positions not yet used are never touched and cost no resident memory.
  std::unique_ptr<uint16_t[]> k16_, v16_;
  std::unique_ptr<float[]> k32_, v32_;
  std::vector<float> rope_inv_freq_;
};

}  // namespace tritlm::model
