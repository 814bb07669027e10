// Request: what a caller holds while the scheduler serves its sequence: the steps produced so
// far (a queue the caller drains), cancellation, final counts and, for scoring requests, the
// logits. Shared between one caller thread and the scheduler thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/constraint.h"
#include "runtime/generation.h"

namespace pyengine {

struct RequestOptions {
  GenerateOptions gen;
  int64_t n_ctx = 0;        // positions the sequence may use; 0: the engine's default
  bool logits_all = false;  // scoring: logits of every prompt position, nothing generated
  bool embed = false;       // embedding: the mean of every prompt position's final hidden
                            // state (llama.cpp's mean pooling), nothing generated
  bool scoring() const { return logits_all || embed; }
  bool notify = false;      // report new steps to the engine's ready list (asyncio callers)
  bool keep = false;        // write the prompt's full KV blocks to the disk cache (if any)
  bool speculative = true;  // may bring drafts when the engine decodes speculatively
  // The grammar the output must follow (null: none); its mask applies before sampling.
  std::shared_ptr<Constraint> constraint;
};

struct RequestCounts {
  int64_t prompt_tokens = 0;      // tokens in the prompt
  int64_t prompt_eval_count = 0;  // prompt positions computed (the rest came from the prefix cache)
  int64_t cached_tokens = 0;      // prompt positions shared from the prefix cache
  int64_t eval_count = 0;         // tokens generated
  int64_t prompt_eval_ns = 0;     // steps spent on the prompt
  int64_t eval_ns = 0;            // steps spent generating
  int64_t preemptions = 0;        // times the sequence was set back to make room
};

class Request {
 public:
  explicit Request(uint64_t id) : id_(id) {}
  uint64_t id() const { return id_; }

  // Caller side. Waits up to timeout_ms (< 0: forever) for the next step; false on timeout.
  bool Next(GenerationStep* step, int64_t timeout_ms);
  // Every step available now, without waiting.
  std::vector<GenerationStep> Poll();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  bool finished() const;
  RequestCounts counts() const;
  std::string error() const;
  // Scoring requests, once finished: logits [prompt tokens, n_vocab], or the embedding [n_embd].
  std::vector<float> TakeResult();

  // Scheduler side.
  void MarkCancelled() { cancelled_.store(true, std::memory_order_release); }
  void Push(GenerationStep step);  // a done step finishes the request
  void Fail(const std::string& error);
  void SetCounts(const RequestCounts& c);
  std::vector<float>& result() { return result_; }  // written by the scheduler before finishing

 private:
  const uint64_t id_;
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationStep> steps_;
  bool finished_ = false;
  std::string error_;
  RequestCounts counts_;
  std::vector<float> result_;
};

}  // namespace pyengine
