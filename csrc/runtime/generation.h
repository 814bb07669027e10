// Generation: one request's decoding loop: prompt, sampling, stop conditions, streamed text.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.h"
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
  std::string done_reason;  // "stop" (end token or stop string) or "length"
};

class Generation {
 public:
  Generation(Engine& engine, std::vector<int32_t> prompt, GenerateOptions opts);

  // Advances by one token; the first call evaluates the prompt. After `done`, returns an
  // empty done step.
  GenerationStep Next();

  int64_t prompt_eval_count() const { return prompt_eval_count_; }
  int64_t eval_count() const { return eval_count_; }
  int64_t prompt_eval_ns() const { return prompt_eval_ns_; }
  int64_t eval_ns() const { return eval_ns_; }
  std::vector<int32_t> output_tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  // Moves releasable text out of pending_, holding back a tail that may start a stop string.
  // Returns true when a stop string matched (pending_ is cut before it).
  bool ReleaseText(std::string* out);
  GenerationStep Finish(GenerationStep step, const std::string& reason, bool flush_text);

  mutable std::mutex mu_;  // one step at a time, even if two threads share this object
  Engine& engine_;
  GenerateOptions opts_;
  Sampler sampler_;
  StreamDecoder decoder_;
  std::vector<int32_t> seq_;     // prompt + output so far
  std::vector<int32_t> output_;  // sampled tokens
  std::vector<float> logits_;    // [n_vocab]
  std::string pending_;          // decoded text not yet released (stop-string look-behind)
  size_t prompt_len_;
  bool done_ = false;
  int64_t prompt_eval_count_ = 0, eval_count_ = 0, prompt_eval_ns_ = 0, eval_ns_ = 0;
};

}  // namespace pyengine
