#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace pyengine {

int32_t FirstBestId(const float* logits, int32_t n) {
  int32_t best = 0;
  float best_logit = -INFINITY;
  for (int32_t i = 0; i < n; ++i) {
    if (logits[i] > best_logit) {
      best_logit = logits[i];
      best = i;
    }
  }
  return best;
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}

int32_t Sampler::Sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history) {
  const bool penalise = p_.repeat_penalty != 1.f || p_.presence_penalty != 0.f ||
                        p_.frequency_penalty != 0.f;
  if (PlainGreedy()) {
    // Greedy without penalties: no candidate copy (a batch of streams samples every step, so
    // skipping it matters at 262k tokens).
    return FirstBestId(logits, n_vocab);
  }
  cand_.resize(static_cast<size_t>(n_vocab));
  // NaN would break the orderings below: it ranks as impossible.
  for (int32_t i = 0; i < n_vocab; ++i) cand_[i] = {i, std::isnan(logits[i]) ? -INFINITY : logits[i]};

  // Penalties over the recent window (llama.cpp / Ollama semantics: divide positive logits,
  // multiply negative ones by repeat_penalty; presence/frequency subtract).
  if (penalise && p_.repeat_last_n != 0 && !history.empty()) {
    size_t n = p_.repeat_last_n < 0 ? history.size()
                                    : std::min(history.size(), static_cast<size_t>(p_.repeat_last_n));
    std::unordered_map<int32_t, int> counts;
    for (size_t i = history.size() - n; i < history.size(); ++i) ++counts[history[i]];
    for (const auto& [id, cnt] : counts) {
      if (id < 0 || id >= n_vocab) continue;
      float& l = cand_[id].logit;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
      l -= static_cast<float>(cnt) * p_.frequency_penalty + p_.presence_penalty;
    }
  }

  auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  if (p_.temperature <= 0.f) {
    return std::min_element(cand_.begin(), cand_.end(), by_logit)->id;
  }

  // Top-k keeps the k best, sorted; without it everything is sorted once.
  size_t keep = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) keep = static_cast<size_t>(p_.top_k);
  std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
  cand_.resize(keep);

  // Probabilities at temperature 1 for the top-p / min-p cuts (as llama.cpp's chain does
  // before temperature), then the temperature for the final draw.
  std::vector<double>& prob = prob_;
  prob.resize(keep);
  const double mx = cand_[0].logit;
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += prob[i] = std::exp(cand_[i].logit - mx);
  if (p_.top_p < 1.f) {
    double cum = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      cum += prob[i] / sum;
      if (cum >= p_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  if (p_.min_p > 0.f) {
    // Relative to the best token: p_i >= min_p * p_max  <=>  prob[i] >= min_p (prob[0] == 1).
    size_t cut = 1;
    while (cut < keep && prob[cut] >= p_.min_p) ++cut;
    keep = cut;
  }

  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp((cand_[i].logit - mx) / p_.temperature);
    total += prob[i];
  }
  std::uniform_real_distribution<double> uni(0.0, total);
  double r = uni(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return cand_[i].id;
  }
  return cand_[keep - 1].id;
}

}  // namespace pyengine
