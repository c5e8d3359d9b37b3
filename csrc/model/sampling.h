// Choosing the next token from logits: penalties and biases, then greedy or temperature
// sampling filtered by top-k, top-p and min-p, with a per-request seeded generator so the same
// seed and prompt give the same output.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace tritlm::model {

struct SamplingParams {
  float temperature = 1.0f;  // <= 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::pair<int32_t, float>> logit_bias;
  uint64_t seed = 0;
};

struct Sample {
  int32_t token;
  float logprob;                                 // log-probability under the adjusted logits
  std::vector<std::pair<int32_t, float>> top;    // the n_top most likely tokens and logprobs
};

class Sampler {
 public:
  explicit Sampler(SamplingParams p);
  // `history` is every token of the sequence so far (prompt and generated), for the penalties.
  // Throws std::invalid_argument unless vocab >= 1.
  Sample sample(const float* logits, int32_t vocab, const int32_t* history, int64_t n_history, int n_top);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace tritlm::model
