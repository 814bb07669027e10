// Scheduler: the dynamic (continuous) batcher. One thread owns the model's compute and its KV
// cache; each step runs every decoding sequence's next token plus chunks of waiting prompts in
// one forward pass (decode first, chunked prefill), admits new requests while sequences and
// memory allow, frees a finished or cancelled sequence's blocks at once, and sets the newest
// sequence back (to be recomputed later, never corrupted) when memory runs out.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kv/kv_cache.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "runtime/drafter.h"
#include "runtime/model_runner.h"
#include "runtime/prompt_lookup.h"
#include "runtime/request.h"
#include "runtime/tokenizer.h"

namespace pyengine {

struct SchedulerOptions {
  int max_batch = 16;              // sequences in one step
  int64_t max_batch_tokens = 512;  // tokens in one step: decode tokens plus prompt chunks
  int64_t batch_wait_us = 0;       // an idle engine waits this long for more requests to join
  bool prefix_cache = true;        // share cached prompt prefixes across requests
  // Speculative decoding: a decoding sequence may bring up to num_draft draft tokens, scored
  // in the same step and kept as far as sampling agrees with them: those that followed an
  // earlier occurrence of its last tokens (PromptLookup), or the draft model's when the
  // scheduler has one. 0: off.
  int num_draft = 0;
  // Drafts cost compute that a busy step's other sequences would use: they are proposed only
  // while a step decodes at most this many sequences and no prompt waits for its chunk.
  int draft_max_sequences = 4;
  // ... and a step with drafts computes at most this many tokens: each draft row costs the
  // whole network's compute, which a step of several sequences no longer has to spare.
  int64_t draft_step_tokens = 16;
  PromptLookupOptions lookup;
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0;         // sequences now
  int64_t steps = 0;                        // forward passes so far
  int64_t step_tokens = 0;                  // tokens over all steps
  int64_t step_sequences = 0;               // sequences over all steps (mean batch = / steps)
  int64_t max_step_sequences = 0, last_step_sequences = 0;
  int64_t decode_tokens = 0, prompt_tokens = 0;
  int64_t preemptions = 0;
  int64_t draft_steps = 0;                  // sequence steps that scored drafts
  int64_t drafted = 0, draft_accepted = 0;  // draft tokens scored, and kept
  int64_t draft_failures = 0;               // steps whose draft model failed (no drafts then)
  int64_t finished = 0, cancelled = 0, failed = 0;
};

class Scheduler {
 public:
  // draft: proposes the drafts instead of prompt lookup (null: none); must outlive this.
  Scheduler(const Model& model, KvCache& kv, const Tokenizer& tok, ThreadPool& pool,
            const SchedulerOptions& opts, Drafter* draft = nullptr);
  ~Scheduler();  // stops the thread; requests still queued or running end with an error
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerOptions& options() const { return opts_; }

  // Queues a sequence whose prompt the caller has validated (ids in the vocabulary, length
  // within opts.n_ctx, memory). Returns at once.
  std::shared_ptr<Request> Submit(std::vector<int32_t> prompt, const RequestOptions& opts);
  // Ends the request at the next step boundary; its blocks are freed then.
  void Cancel(Request& r);

  SchedulerStats stats() const;
  KvCache::Stats kv_stats() const;

  // For asyncio callers: ids of `notify` requests that got steps since the last call. Waits
  // up to timeout_ms for one; empty on timeout or when the scheduler stops.
  std::vector<uint64_t> WaitReady(int64_t timeout_ms);

 private:
  struct Sequence;
  struct Item {
    Sequence* s;
    int64_t n;    // tokens this step
    bool logits;  // this step's last token (every token when scoring) gets logits
    int64_t draft = 0;  // of the n tokens, draft tokens after the pending one (all get logits)
  };

  void Loop();
  void Admit();
  // True while a running sequence's prompt is still computing whole blocks s shares beyond
  // what s attached from the prefix cache (s then waits a step instead of computing them too).
  bool AwaitsRunningPrefix(const Sequence& s) const;
  bool Plan();
  // Proposes s's draft for a step with `room` tokens to spare (none when s may not draft);
  // with a draft model, only how many it may propose (ProposeDrafts fills them in).
  int64_t Draft(Sequence& s, int64_t room);
  // The draft model's proposals for the step's drafting items, run outside the lock.
  void ProposeDrafts();
  // Lets go of everything s holds in the KV caches (the draft model's too).
  void ReleaseKv(Sequence* s);
  void Reserve();
  void Preempt(Sequence* s, bool counted);
  // After sampling: the positions each item keeps (kept_), the draft counters and lengths.
  void Settle();
  void Run();  // the step on the runner, then sampling; without the lock
  void Sample(const StepOutput& out);  // the sampling stage: each generating row's next token
  // Samples item i's logits rows from row j on, while they agree with its draft (one row when
  // it has none): the steps into sampled_[i]. A constrained item's grammar advances here.
  void Verify(size_t i, const StepOutput& out, size_t j);
  GenerationStep SampleRow(size_t i, const StepOutput& out, size_t j);
  // The allowed tokens of the step's constrained rows (constrained_), into masks_; run while
  // the forward pass runs. A solver's failure fails its rows (item_error_).
  void FillMasks();
  // Masks row logits [n_vocab] with mask [words]; false when it allows no token.
  static bool ApplyMask(const uint32_t* mask, float* logits, int64_t n_vocab);
  void Finish(Sequence* s, GenerationStep step);
  void FailSequence(Sequence* s, const std::string& error);
  void DropCancelled();
  void RemoveFinished();
  void Notify(const Sequence* s);

  const Model& model_;
  KvCache& kv_;
  const Tokenizer& tok_;
  ModelRunner runner_;
  const SchedulerOptions opts_;
  Drafter* const draft_;

  mutable std::mutex mu_;  // guards everything below except what only the loop thread touches
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};  // written under mu_, read by WaitReady too
  uint64_t next_id_ = 1;
  std::deque<std::unique_ptr<Sequence>> incoming_;  // submitted, not yet seen by the loop
  std::deque<std::unique_ptr<Sequence>> waiting_;   // not admitted (or set back); front first
  std::vector<std::unique_ptr<Sequence>> running_;  // admitted, in admission order
  SchedulerStats stats_;

  // Loop thread only (sequences in running_ are changed by the loop thread alone, so the
  // forward pass and sampling run without the lock).
  std::vector<Item> plan_;
  std::vector<StepRun> runs_;                 // [items] the plan as the runner takes it
  std::vector<std::vector<GenerationStep>> sampled_;  // [items][steps] what sampling produced
  std::vector<int64_t> kept_;                 // [items] positions computed that stay valid
  std::vector<std::string> item_error_;       // [items] why an item's sequence fails, or ""
  std::vector<size_t> constrained_;           // items that sample under a grammar this step
  std::vector<uint32_t> masks_;               // [constrained_, words] their allowed tokens
  int64_t mask_words_ = 0;                    // ceil(n_vocab / 32)
  int64_t step_ns_ = 0;                       // duration of the current step
  std::string step_error_;                    // set when the forward pass failed

  std::mutex ready_mu_;
  std::condition_variable ready_cv_;
  std::vector<uint64_t> ready_;

  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace pyengine
