// Sampler: turns one row of logits into the next token (penalties, top-k, top-p, min-p,
// temperature), deterministic for a given seed.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace pyengine {

struct SamplingParams {
  float temperature = 0.8f;   // <= 0: greedy (argmax after penalties)
  int32_t top_k = 40;         // <= 0: off
  float top_p = 0.9f;         // >= 1: off
  float min_p = 0.0f;         // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int32_t repeat_last_n = 64;   // window of recent tokens penalised; -1: whole history
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
};

// The first best id among logits [n] (NaN never winning): greedy decoding's choice.
int32_t FirstBestId(const float* logits, int32_t n);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);

  // Picks a token from logits [n_vocab]; `history` is the sequence so far (prompt + output),
  // its tail is what the penalties look at.
  int32_t Sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history);
  // Greedy without penalties: Sample is the first best id (NaN never winning), which a
  // backend may compute where the logits are.
  bool PlainGreedy() const {
    return p_.temperature <= 0.f && p_.repeat_penalty == 1.f && p_.presence_penalty == 0.f &&
           p_.frequency_penalty == 0.f;
  }

 private:
  struct Candidate {
    int32_t id;
    float logit;
  };
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<Candidate> cand_;  // [n_vocab] scratch
  std::vector<double> prob_;     // [kept candidates] scratch
};

}  // namespace pyengine
