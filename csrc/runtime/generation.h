// Generation: the decoding state of one request: sampling, stop conditions and the text
// released so far. The scheduler feeds it one row of logits per step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "runtime/tokenizer.h"

namespace pyengine {

struct GenerateOptions {
  SamplingParams sampling;
  int64_t max_tokens = 128;        // < 0: until the context is full
  std::vector<std::string> stop;   // stop strings: output ends before the first match
  bool ignore_eos = false;         // keep going past end-of-generation tokens (benchmarks)
};

struct GenerationStep {
  int32_t token = -1;       // sampled token, -1 when the step produced none
  std::string text;         // complete UTF-8 text released by this step (may be empty)
  bool done = false;
  std::string done_reason;  // "stop" (end token or stop string), "length", "cancel" or "error"
};

class Generation {
 public:
  // n_ctx: positions the sequence may use; a token sampled beyond them ends it with "length".
  Generation(const Tokenizer& tok, GenerateOptions opts, int64_t n_ctx);

  // Samples the next token from logits [n_vocab] of `tokens` (prompt + output so far) and
  // appends it there. Returns the step for the caller; after `done`, nothing more is sampled.
  GenerationStep Accept(const float* logits, int64_t n_vocab, std::vector<int32_t>& tokens);
  // Whether Accept's choice over logits [n_vocab] is their argmax (first best id, NaN never
  // winning), so that a step may bring back only that; then AcceptToken takes it.
  bool TakesArgmax(int64_t n_vocab) const {
    return sampler_.PlainGreedy() && tok_.n_vocab() >= n_vocab;
  }
  GenerationStep AcceptToken(int32_t token, std::vector<int32_t>& tokens);
  // Ends the output early (cancel, error, out of memory), releasing any held-back text.
  GenerationStep Finish(const std::string& reason, bool flush_text);

  bool done() const { return done_; }
  int64_t n_output() const { return n_output_; }
  // Tokens the output may still take (max_tokens < 0: no bound but the context's).
  int64_t outputs_left() const {
    return done_ ? 0 : opts_.max_tokens < 0 ? INT64_MAX : opts_.max_tokens - n_output_;
  }

 private:
  // Moves releasable text out of pending_, holding back a tail that may start a stop string.
  // Returns true when a stop string matched (pending_ is cut before it).
  bool ReleaseText(std::string* out);
  GenerationStep End(GenerationStep step, const std::string& reason, bool flush_text);

  const Tokenizer& tok_;
  GenerateOptions opts_;
  int64_t n_ctx_;
  Sampler sampler_;
  StreamDecoder decoder_;
  std::string pending_;  // decoded text not yet released (stop-string look-behind)
  bool done_ = false;
  int64_t n_output_ = 0;
};

}  // namespace pyengine
