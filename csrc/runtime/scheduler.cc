#include "runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "core/errors.h"

namespace pyengine {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

GenerationStep DoneStep(const char* reason) {
  GenerationStep step;
  step.done = true;
  step.done_reason = reason;
  return step;
}

}  // namespace

struct Scheduler::Sequence {
  std::shared_ptr<Request> req;
  RequestOptions opts;
  std::vector<int32_t> tokens;      // prompt, then output
  int64_t prompt_len = 0;
  std::unique_ptr<Generation> gen;  // null when scoring
  BlockTable table;
  int64_t n_done = 0;               // leading positions whose keys and values the table holds
  int64_t attached = 0;             // of those, shared from the prefix cache at admission
  bool finished = false;
  RequestCounts counts;
  std::vector<double> hidden_sum;   // [n_embd] embedding requests: sum of hidden states so far
  // Logits and hidden-state rows of this step (-1: none); whether it had output before.
  int64_t row = -1, hidden_row = -1;
  bool had_output = false;
  // Speculative decoding: the tokens proposed after the pending one, this step's input (the
  // pending token, then them), and how many to propose next (grows while they are kept).
  std::vector<int32_t> draft;
  std::vector<int32_t> step_input;
  int64_t draft_len = 0;
  DraftState dstate;  // what the draft model holds of this sequence (when there is one)

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - n_done; }
};

Scheduler::Scheduler(const Model& model, KvCache& kv, const Tokenizer& tok, ThreadPool& pool,
                     const SchedulerOptions& opts, Drafter* draft)
    : model_(model), kv_(kv), tok_(tok), runner_(model, pool), opts_(opts), draft_(draft) {
  if (opts_.max_batch < 1 || opts_.max_batch_tokens < opts_.max_batch) {
    throw EngineError("max_batch must be >= 1 and max_batch_tokens >= max_batch");
  }
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  ready_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Request> Scheduler::Submit(std::vector<int32_t> prompt, const RequestOptions& opts) {
  auto s = std::make_unique<Sequence>();
  s->opts = opts;
  s->tokens = std::move(prompt);
  s->prompt_len = static_cast<int64_t>(s->tokens.size());
  s->counts.prompt_tokens = s->prompt_len;
  if (!opts.scoring()) s->gen = std::make_unique<Generation>(tok_, opts.gen, opts.n_ctx);
  s->draft_len = opts_.num_draft;
  std::shared_ptr<Request> req;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) throw EngineError("the engine is closed");
    req = std::make_shared<Request>(next_id_++);
    s->req = req;
    if (s->gen && s->gen->done()) {
      // Nothing to generate (max_tokens == 0): finished before it starts.
      s->req->SetCounts(s->counts);
      s->req->Push(s->gen->Finish("length", true));
      return req;
    }
    incoming_.push_back(std::move(s));
  }
  cv_.notify_all();
  return req;
}

void Scheduler::Cancel(Request& r) {
  r.MarkCancelled();
  cv_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  s.running = static_cast<int64_t>(running_.size());
  s.waiting = static_cast<int64_t>(waiting_.size() + incoming_.size());
  return s;
}

KvCache::Stats Scheduler::kv_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_.stats();
}

std::vector<uint64_t> Scheduler::WaitReady(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(ready_mu_);
  ready_cv_.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0)),
                     [&] { return !ready_.empty() || stop_; });
  std::vector<uint64_t> out;
  out.swap(ready_);
  return out;
}

void Scheduler::Notify(const Sequence* s) {
  if (!s->opts.notify) return;
  {
    std::lock_guard<std::mutex> lock(ready_mu_);
    ready_.push_back(s->req->id());
  }
  ready_cv_.notify_all();
}

void Scheduler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !incoming_.empty() || !running_.empty() || !waiting_.empty(); });
    if (stop_) break;
    if (running_.empty() && waiting_.empty() && opts_.batch_wait_us > 0) {
      // An idle engine gives requests arriving together a moment to share the first step.
      cv_.wait_for(lock, std::chrono::microseconds(opts_.batch_wait_us), [&] {
        return stop_ || static_cast<int64_t>(incoming_.size()) >= opts_.max_batch;
      });
      if (stop_) break;
    }
    while (!incoming_.empty()) {
      waiting_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
    DropCancelled();
    Admit();
    if (!Plan()) {
      // Everything admitted ended while memory was reserved; the waiting ones go next turn.
      RemoveFinished();
      continue;
    }
    lock.unlock();
    Run();
    lock.lock();

    // Bookkeeping of the step: positions computed, blocks offered and trimmed, tokens out.
    ++stats_.steps;
    stats_.last_step_sequences = static_cast<int64_t>(plan_.size());
    stats_.max_step_sequences = std::max(stats_.max_step_sequences, stats_.last_step_sequences);
    stats_.step_sequences += stats_.last_step_sequences;
    for (const Item& it : plan_) stats_.step_tokens += it.n;
    Settle();
    for (size_t i = 0; i < plan_.size(); ++i) {
      Sequence* s = plan_[i].s;
      if (!step_error_.empty()) {
        FailSequence(s, step_error_);
        continue;
      }
      const int64_t n = kept_[i];
      s->n_done += n;
      if (s->n_done <= s->prompt_len || !s->had_output) {
        s->counts.prompt_eval_count += n;
        stats_.prompt_tokens += n;
      } else {
        stats_.decode_tokens += n;
      }
      if (opts_.prefix_cache) {
        kv_.Offer(s->table, s->tokens.data(), s->n_done, s->opts.keep ? s->prompt_len : 0);
      }
      kv_.Trim(s->table, s->n_done);
      if (s->had_output) {
        s->counts.eval_ns += step_ns_;
      } else {
        s->counts.prompt_eval_ns += step_ns_;
      }
      if (s->opts.scoring()) {
        if (s->n_done == s->prompt_len) {
          if (s->opts.embed) {
            std::vector<float>& out = s->req->result();
            out.resize(s->hidden_sum.size());
            for (size_t i = 0; i < out.size(); ++i) {
              out[i] = static_cast<float>(s->hidden_sum[i] / static_cast<double>(s->prompt_len));
            }
          }
          Finish(s, DoneStep("stop"));
        }
        continue;
      }
      if (!item_error_[i].empty()) {
        FailSequence(s, item_error_[i]);
        continue;
      }
      if (s->row < 0) continue;
      s->counts.eval_count = s->gen->n_output();
      for (GenerationStep& step : sampled_[i]) {
        if (step.done) {
          Finish(s, std::move(step));
          break;
        }
        s->req->Push(std::move(step));
      }
      if (!s->finished) Notify(s);
    }
    step_error_.clear();
    RemoveFinished();
  }
  // Shutting down: nobody will serve what is left.
  for (auto* q : {&incoming_, &waiting_}) {
    for (auto& s : *q) s->req->Fail("the engine was closed");
    q->clear();
  }
  for (auto& s : running_) {
    ReleaseKv(s.get());
    s->req->Fail("the engine was closed");
  }
  running_.clear();
}

void Scheduler::DropCancelled() {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    Sequence* s = it->get();
    if (!s->req->cancelled()) {
      ++it;
      continue;
    }
    ReleaseKv(s);
    s->req->SetCounts(s->counts);
    s->req->Push(s->gen ? s->gen->Finish("cancel", true) : DoneStep("cancel"));
    Notify(s);
    ++stats_.cancelled;
    it = waiting_.erase(it);
  }
  for (auto& s : running_) {
    if (s->finished || !s->req->cancelled()) continue;
    ++stats_.cancelled;
    Finish(s.get(), s->gen ? s->gen->Finish("cancel", true) : DoneStep("cancel"));
  }
  RemoveFinished();
}

void Scheduler::Admit() {
  std::deque<std::unique_ptr<Sequence>> later;  // waiting for a running prompt's blocks
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < opts_.max_batch) {
    std::unique_ptr<Sequence> s = std::move(waiting_.front());
    waiting_.pop_front();
    // Scoring needs every position's logits, so it computes everything; a generation reuses
    // all but its last token (whose logits start the output).
    const int64_t size = static_cast<int64_t>(s->tokens.size());
    const int64_t reuse = s->opts.scoring() || !opts_.prefix_cache ? 0 : size - 1;
    s->attached = s->n_done = kv_.AttachPrefix(s->table, s->tokens.data(), size, reuse, s->opts.keep);
    if (reuse > 0 && AwaitsRunningPrefix(*s)) {
      kv_.Release(s->table);
      s->attached = s->n_done = 0;
      later.push_back(std::move(s));
      continue;
    }
    if (s->counts.cached_tokens == 0) s->counts.cached_tokens = std::min(s->attached, s->prompt_len);
    running_.push_back(std::move(s));
  }
  // They keep their places at the head of the line and try again next step, when the running
  // prompt has offered more of its blocks to the prefix cache.
  while (!later.empty()) {
    waiting_.push_front(std::move(later.back()));
    later.pop_back();
  }
}

bool Scheduler::AwaitsRunningPrefix(const Sequence& s) const {
  // Requests that arrive together with one long prefix (a system prompt, a judge's rubric)
  // would each compute it side by side; the later ones wait until the first has computed the
  // whole blocks they share, then attach them from the prefix cache.
  const int64_t bt = kv_.block_tokens();
  for (const auto& r : running_) {
    if (r->opts.scoring() || r->n_done >= r->prompt_len) continue;  // nothing more to offer
    const int64_t limit = std::min(s.prompt_len - 1, r->prompt_len);
    int64_t shared = 0;
    while (shared < limit && s.tokens[shared] == r->tokens[shared]) ++shared;
    shared = shared / bt * bt;  // whole blocks: what the prefix cache shares
    if (shared > s.attached && r->n_done < shared) return true;
  }
  return false;
}

bool Scheduler::Plan() {
  plan_.clear();
  int64_t budget = opts_.max_batch_tokens;
  int64_t decoding = 0;
  bool prompts = false;
  for (const auto& s : running_) {
    if (s->pending() == 1 && !s->opts.scoring()) {
      ++decoding;
    } else if (s->pending() > 0) {
      prompts = true;
    }
  }
  // Drafts while the step is small: with many sequences (or a prompt to compute) the step
  // already uses the weights it reads, and draft rows would only take its compute.
  const bool speculate = opts_.num_draft > 0 && !prompts && decoding <= opts_.draft_max_sequences;
  int64_t draft_room = std::min(opts_.draft_step_tokens, budget) - decoding;  // drafts in all
  const int64_t share = decoding > 0 ? (draft_room + decoding - 1) / decoding : 0;  // each
  // Decoding sequences first: one token each (and its draft) keeps every stream moving.
  for (auto& s : running_) {
    if (s->pending() == 1 && !s->opts.scoring()) {
      const int64_t draft = speculate && draft_room > 0 ? Draft(*s, std::min(share, draft_room)) : 0;
      plan_.push_back({s.get(), 1 + draft, true, draft});
      budget -= 1 + draft;
      draft_room -= draft;
    }
  }
  // Then prompt chunks, oldest sequence first.
  for (auto& s : running_) {
    if (budget <= 0) break;
    if (s->pending() > 1 || (s->opts.scoring() && s->pending() > 0)) {
      const int64_t n = std::min(s->pending(), budget);
      const bool logits = s->opts.logits_all || (!s->opts.embed && n == s->pending());
      plan_.push_back({s.get(), n, logits});
      budget -= n;
    }
  }
  Reserve();
  return !plan_.empty();
}

int64_t Scheduler::Draft(Sequence& s, int64_t room) {
  s.draft.clear();
  if (!s.gen || !s.opts.speculative || s.gen->n_output() == 0) return 0;
  // Never a position past the context, nor more tokens than the output may still take (the
  // step samples one more than it drafts).
  const int64_t positions_left = s.opts.n_ctx - static_cast<int64_t>(s.tokens.size());
  const int64_t limit =
      std::min({room, s.draft_len, positions_left, s.gen->outputs_left() - 1});
  if (limit <= 0) return 0;
  if (draft_) return limit;  // the draft model proposes them in Run(), outside the lock
  return PromptLookup(s.tokens, limit, opts_.lookup, &s.draft);
}

void Scheduler::ProposeDrafts() {
  std::vector<DraftJob> jobs;
  for (Item& it : plan_) {
    if (it.draft > 0) jobs.push_back({&it.s->dstate, &it.s->tokens, it.draft, &it.s->draft});
  }
  if (jobs.empty()) return;
  try {
    draft_->Propose(jobs);
  } catch (const std::exception&) {
    // The step goes on without drafts (the output is the same, only slower); counted.
    for (DraftJob& j : jobs) j.draft->clear();
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.draft_failures;
  }
  for (Item& it : plan_) {
    if (it.draft == 0) continue;
    Sequence* s = it.s;
    // Memory was reserved for the most it could propose; it may have proposed fewer.
    it.draft = static_cast<int64_t>(s->draft.size());
    it.n = 1 + it.draft;
  }
}

void Scheduler::ReleaseKv(Sequence* s) {
  kv_.Release(s->table);
  if (draft_) draft_->Release(s->dstate);
}

void Scheduler::Settle() {
  // A drafted item keeps the positions whose input agreed with what sampling chose: the
  // pending token and the drafts before the first disagreement. Later positions hold keys and
  // values of rejected tokens; nothing reads them before the next steps write over them.
  kept_.assign(plan_.size(), 0);
  for (size_t i = 0; i < plan_.size(); ++i) {
    const Item& it = plan_[i];
    Sequence* s = it.s;
    kept_[i] = it.n;
    if (it.draft == 0 || !step_error_.empty()) continue;  // a failed step fails its sequences
    const std::vector<GenerationStep>& steps = sampled_[i];
    int64_t agreed = 0;
    while (agreed < static_cast<int64_t>(steps.size()) && agreed < it.draft &&
           steps[static_cast<size_t>(agreed)].token == s->draft[static_cast<size_t>(agreed)]) {
      ++agreed;
    }
    // Sampling stops at the first disagreement: the steps are the agreed tokens and one more.
    kept_[i] = item_error_[i].empty() && !steps.empty() ? static_cast<int64_t>(steps.size()) : 1;
    ++stats_.draft_steps;
    stats_.drafted += it.draft;
    stats_.draft_accepted += agreed;
    // Longer drafts while they are kept whole, back to what was kept after a miss.
    s->draft_len = agreed == it.draft ? std::min<int64_t>(opts_.num_draft, 2 * it.draft) : agreed + 1;
  }
}

void Scheduler::Reserve() {
  // Oldest first, so that when memory runs short the newest sequences give way.
  for (size_t r = 0; r < running_.size(); ++r) {
    Sequence* s = running_[r].get();
    auto item = std::find_if(plan_.begin(), plan_.end(), [&](const Item& it) { return it.s == s; });
    if (item == plan_.end()) continue;
    int64_t end = s->n_done + item->n;
    bool drafted = item->draft > 0;  // checked before any Preempt() moves plan_'s items
    while (!kv_.Grow(s->table, end)) {
      if (drafted) {
        // Drafts never cost another sequence its place: without them first.
        item->n -= item->draft;
        item->draft = 0;
        end = s->n_done + item->n;
        drafted = false;
        continue;
      }
      Sequence* newest = running_.back().get();
      if (newest != s) {
        // A sequence that computed nothing since admission is only put back in line.
        Preempt(newest, newest->n_done > newest->attached);
        continue;
      }
      if (running_.size() > 1) {
        Preempt(s, s->n_done > s->attached);
      } else if (s->gen && s->n_done >= s->prompt_len) {
        // Alone and still short: the memory holds no more of this sequence.
        Finish(s, s->gen->Finish("length", true));
        plan_.clear();
      } else {
        FailSequence(s, "the KV cache is too small for this prompt (" +
                            std::to_string(end) + " positions)");
        plan_.clear();
      }
      break;
    }
    // Preempt() removed the newest sequences; running_ still holds s at index r or earlier.
    if (r >= running_.size() || running_[r].get() != s) break;
  }
  RemoveFinished();
}

void Scheduler::Preempt(Sequence* s, bool counted) {
  ReleaseKv(s);  // its full blocks were offered: a resumed sequence may find them
  s->n_done = 0;
  s->hidden_sum.clear();  // an embedding starts over with its recomputation
  if (counted) {
    ++s->counts.preemptions;
    ++stats_.preemptions;
  }
  plan_.erase(std::remove_if(plan_.begin(), plan_.end(), [&](const Item& it) { return it.s == s; }),
              plan_.end());
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == s; });
  waiting_.push_front(std::move(*it));
  running_.erase(it);
}

void Scheduler::Run() {
  const int64_t t0 = NowNs();
  if (draft_) ProposeDrafts();
  const int64_t n_vocab = model_.config().n_vocab, n_embd = model_.config().n_embd;
  runs_.resize(plan_.size());
  item_error_.assign(plan_.size(), std::string());
  constrained_.clear();
  for (size_t i = 0; i < plan_.size(); ++i) {
    const Item& it = plan_[i];
    Sequence* s = it.s;
    StepRun& r = runs_[i];
    if (it.draft > 0) {
      s->step_input.assign(1, s->tokens.back());
      s->step_input.insert(s->step_input.end(), s->draft.begin(), s->draft.end());
    }
    r.tokens = it.draft > 0 ? s->step_input.data() : s->tokens.data() + s->n_done;
    r.pos = s->n_done;
    r.n = it.n;
    r.view = kv_.View(s->table);
    r.logits = it.logits;
    r.every_logit = s->opts.logits_all || it.draft > 0;
    r.hidden = s->opts.embed;
    const bool constrained = it.logits && !s->opts.scoring() && s->opts.constraint;
    // A constrained row samples from masked logits: the model's argmax would ignore the mask.
    r.argmax_suffices = !s->opts.scoring() && !constrained && s->gen->TakesArgmax(n_vocab);
    s->had_output = s->gen && s->gen->n_output() > 0;
    if (constrained) constrained_.push_back(i);
  }
  // The grammar's masks depend only on tokens already sampled: computed during the forward pass.
  std::future<void> masks;
  if (!constrained_.empty()) masks = std::async(std::launch::async, [this] { FillMasks(); });
  const StepOutput* out = nullptr;
  try {
    out = &runner_.Run(runs_);
  } catch (const std::exception& e) {
    if (masks.valid()) masks.wait();
    step_error_ = e.what();
    step_ns_ = NowNs() - t0;
    return;
  }
  if (masks.valid()) masks.wait();
  for (size_t i = 0; i < plan_.size(); ++i) {
    plan_[i].s->row = out->row[i];
    plan_[i].s->hidden_row = out->hidden_row[i];
  }
  // Scoring rows go to their requests; embeddings add up their hidden states.
  for (const Item& it : plan_) {
    Sequence* s = it.s;
    if (s->opts.embed) {
      // Summed in position order, in double: the same result however the prompt was chunked.
      s->hidden_sum.resize(static_cast<size_t>(n_embd), 0.0);
      for (int64_t t = 0; t < it.n; ++t) {
        const float* h = out->hidden + (s->hidden_row + t) * n_embd;
        for (int64_t i = 0; i < n_embd; ++i) s->hidden_sum[i] += h[i];
      }
      continue;
    }
    if (!s->opts.logits_all || s->row < 0) continue;
    std::vector<float>& dst = s->req->result();
    dst.resize(static_cast<size_t>(s->prompt_len * n_vocab));
    std::memcpy(dst.data() + s->n_done * n_vocab, out->logits + s->row * n_vocab,
                sizeof(float) * static_cast<size_t>(it.n * n_vocab));
  }
  Sample(*out);
  step_ns_ = NowNs() - t0;
}

void Scheduler::Sample(const StepOutput& out) {
  // Generating sequences sample their rows, in parallel. A row's token comes from the model's
  // argmax when it brought one back, else from the sequence's own sampler over the logits,
  // masked first by the row's grammar when it has one. A drafted sequence samples its rows in
  // order while the tokens agree with its draft: with a draft that is one fixed guess, this
  // is speculative sampling's acceptance rule (keep the guess with the probability the
  // sampler gives it, else draw from the rest), so the output follows the same distribution.
  sampled_.assign(plan_.size(), {});
  std::vector<int64_t> mask_of(plan_.size(), -1);  // [items] row of masks_, or -1
  for (size_t k = 0; k < constrained_.size(); ++k) mask_of[constrained_[k]] = static_cast<int64_t>(k);
  const int64_t n_vocab = model_.config().n_vocab;
  ParallelRanges(runner_.pool(), static_cast<int64_t>(plan_.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      Sequence* s = plan_[i].s;
      if (s->opts.scoring() || s->row < 0 || !item_error_[i].empty()) continue;
      if (mask_of[i] < 0) {
        Verify(static_cast<size_t>(i), out, 0);
        continue;
      }
      // A constrained row: its first row's mask came with the forward pass; the grammar
      // advances below, for all such rows in one call, before any further row is sampled.
      const uint32_t* mask = masks_.data() + static_cast<size_t>(mask_of[i]) * mask_words_;
      if (!ApplyMask(mask, out.logits + s->row * n_vocab, n_vocab)) {
        item_error_[i] = "the output's grammar allows no token here";
        continue;
      }
      sampled_[i].push_back(SampleRow(static_cast<size_t>(i), out, 0));
    }
  });
  // Each grammar advances by its row's token (one call for all, as the masks).
  std::vector<Constraint*> rows;
  std::vector<int32_t> tokens;
  std::vector<size_t> items;
  for (size_t i : constrained_) {
    if (!item_error_[i].empty() || sampled_[i].empty() || sampled_[i][0].token < 0) continue;
    rows.push_back(plan_[i].s->opts.constraint.get());
    tokens.push_back(sampled_[i][0].token);
    items.push_back(i);
  }
  if (rows.empty()) return;
  try {
    const std::vector<std::string> errors = rows.front()->solver()->Advance(rows, tokens);
    for (size_t k = 0; k < items.size() && k < errors.size(); ++k) {
      if (!errors[k].empty()) item_error_[items[k]] = "the output's grammar: " + errors[k];
    }
  } catch (const std::exception& e) {
    for (size_t i : items) item_error_[i] = std::string("the output's grammar failed: ") + e.what();
  }
  // Drafted constrained rows whose first token agreed go on one row at a time: each further
  // row's mask follows the token before it (a draft token the grammar refuses is never kept).
  for (size_t i : items) {
    const Item& it = plan_[i];
    const GenerationStep& first = sampled_[i][0];
    if (it.draft > 0 && item_error_[i].empty() && !first.done && first.token == it.s->draft[0]) {
      Verify(i, out, 1);
    }
  }
}

void Scheduler::Verify(size_t i, const StepOutput& out, size_t j0) {
  Sequence* s = plan_[i].s;
  const size_t n_draft = static_cast<size_t>(plan_[i].draft);
  Constraint* grammar = j0 > 0 ? s->opts.constraint.get() : nullptr;  // see Sample
  const int64_t n_vocab = model_.config().n_vocab;
  std::vector<uint32_t> mask;
  for (size_t j = j0;; ++j) {
    if (grammar) {
      mask.assign(static_cast<size_t>(mask_words_), 0u);
      try {
        grammar->solver()->FillMasks({grammar}, mask.data(), mask_words_);
      } catch (const std::exception& e) {
        item_error_[i] = std::string("the output's grammar failed: ") + e.what();
        return;
      }
      if (!ApplyMask(mask.data(), out.logits + (s->row + static_cast<int64_t>(j)) * n_vocab, n_vocab)) {
        item_error_[i] = "the output's grammar allows no token here";
        return;
      }
    }
    GenerationStep step = SampleRow(i, out, j);
    if (grammar && step.token >= 0) {
      std::vector<std::string> errors;
      try {
        errors = grammar->solver()->Advance({grammar}, {step.token});
      } catch (const std::exception& e) {
        errors = {std::string("failed: ") + e.what()};
      }
      if (!errors.empty() && !errors[0].empty()) {
        item_error_[i] = "the output's grammar: " + errors[0];
        return;
      }
    }
    const bool agrees = j < n_draft && step.token == s->draft[j];
    const bool done = step.done;
    sampled_[i].push_back(std::move(step));
    if (done || !agrees) return;
  }
}

GenerationStep Scheduler::SampleRow(size_t i, const StepOutput& out, size_t j) {
  // The sequence's tokens grow by the sampled one; its KV is computed next step.
  Sequence* s = plan_[i].s;
  const int64_t row = s->row + static_cast<int64_t>(j), n_vocab = model_.config().n_vocab;
  return out.argmax ? s->gen->AcceptToken(out.argmax[row], s->tokens)
                    : s->gen->Accept(out.logits + row * n_vocab, n_vocab, s->tokens);
}

void Scheduler::FillMasks() {
  mask_words_ = (model_.config().n_vocab + 31) / 32;
  masks_.assign(constrained_.size() * static_cast<size_t>(mask_words_), 0u);
  std::vector<Constraint*> rows;
  for (size_t i : constrained_) rows.push_back(plan_[i].s->opts.constraint.get());
  try {
    // Every constraint of an engine comes from the same solver (the bindings make one).
    rows.front()->solver()->FillMasks(rows, masks_.data(), mask_words_);
  } catch (const std::exception& e) {
    for (size_t i : constrained_) item_error_[i] = std::string("the output's grammar failed: ") + e.what();
  }
}

bool Scheduler::ApplyMask(const uint32_t* m, float* logits, int64_t n_vocab) {
  // Word by word: a grammar's mask is mostly whole words of refused (or, inside a string,
  // allowed) tokens.
  constexpr float kRefused = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int64_t w = 0; w * 32 < n_vocab; ++w) {
    const uint32_t bits = m[w];
    const int64_t t0 = w * 32, t1 = std::min<int64_t>(n_vocab, t0 + 32);
    if (bits == 0) {
      std::fill(logits + t0, logits + t1, kRefused);
      continue;
    }
    any = true;
    if (bits == ~0u) continue;
    for (int64_t t = t0; t < t1; ++t) {
      if (!((bits >> (t - t0)) & 1u)) logits[t] = kRefused;
    }
  }
  return any;
}

void Scheduler::Finish(Sequence* s, GenerationStep step) {
  if (s->finished) return;
  ReleaseKv(s);
  s->finished = true;
  if (s->gen) s->counts.eval_count = s->gen->n_output();
  s->req->SetCounts(s->counts);
  s->req->Push(std::move(step));
  Notify(s);
  ++stats_.finished;
}

void Scheduler::FailSequence(Sequence* s, const std::string& error) {
  if (s->finished) return;
  ReleaseKv(s);
  s->finished = true;
  s->req->SetCounts(s->counts);
  s->req->Fail(error);
  Notify(s);
  ++stats_.failed;
}

void Scheduler::RemoveFinished() {
  running_.erase(std::remove_if(running_.begin(), running_.end(), [](const auto& s) { return s->finished; }),
                 running_.end());
}

}  // namespace pyengine
