#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace tritlm::model {

Sampler::Sampler(SamplingParams p) : p_(std::move(p)), rng_(p_.seed) {}

Sample Sampler::sample(const float* logits, int32_t vocab, const int32_t* history, int64_t n_history, int n_top) {
  // The maximum below reads the first logit, and a token must exist to be chosen.
  if (vocab < 1) throw std::invalid_argument("logits must hold at least one value, got " + std::to_string(vocab));
  std::vector<float> l(logits, logits + vocab);
  for (const auto& [token, bias] : p_.logit_bias)
    if (token >= 0 && token < vocab) l[token] += bias;

  // Penalties on tokens already in the sequence (as llama.cpp and the OpenAI API define them).
  std::unordered_map<int32_t, int> counts;
  for (int64_t i = 0; i < n_history; ++i)
    if (history[i] >= 0 && history[i] < vocab) ++counts[history[i]];
  for (const auto& [token, count] : counts) {
    float& v = l[token];
    if (p_.repetition_penalty != 1.0f) v = v > 0.0f ? v / p_.repetition_penalty : v * p_.repetition_penalty;
    v -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(count);
  }

  // Log-probabilities of the adjusted distribution: what logprobs report.
  const float max_l = *std::max_element(l.begin(), l.end());
  double sum = 0.0;
  for (float v : l) sum += std::exp(static_cast<double>(v - max_l));
  const float log_z = max_l + static_cast<float>(std::log(sum));
  auto logprob = [&](int32_t t) { return l[t] - log_z; };

  int32_t chosen;
  if (p_.temperature <= 0.0f) {
    chosen = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  } else {
    // Candidates sorted by logit; ties keep the lower id first so results are reproducible.
    std::vector<int32_t> cand(vocab);
    std::iota(cand.begin(), cand.end(), 0);
    std::stable_sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    if (p_.top_k > 0 && p_.top_k < vocab) cand.resize(p_.top_k);
    std::vector<double> prob(cand.size());
    double total = 0.0;
    for (size_t i = 0; i < cand.size(); ++i)
      total += prob[i] = std::exp(static_cast<double>(l[cand[i]] - l[cand[0]]) / p_.temperature);
    size_t keep = cand.size();
    if (p_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
      double mass = 0.0;
      for (size_t i = 0; i < cand.size(); ++i) {
        mass += prob[i] / total;
        if (mass >= p_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (p_.min_p > 0.0f)  // drop tokens less likely than min_p times the most likely one
      while (keep > 1 && prob[keep - 1] < p_.min_p * prob[0]) --keep;
    double kept = 0.0;
    for (size_t i = 0; i < keep; ++i) kept += prob[i];
    const double u = std::uniform_real_distribution<double>(0.0, kept)(rng_);
    double acc = 0.0;
    chosen = cand[keep - 1];
    for (size_t i = 0; i < keep; ++i) {
      acc += prob[i];
      if (u < acc) {
        chosen = cand[i];
        break;
      }
    }
  }

  Sample s{chosen, logprob(chosen), {}};
  if (n_top > 0) {
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min(n_top, vocab);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    for (int i = 0; i < k; ++i) s.top.emplace_back(order[i], logprob(order[i]));
  }
  return s;
}

}  // namespace tritlm::model
