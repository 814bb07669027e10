// The scheduler without a model file: a scripted model stands in for the network. Each token
// writes (token, position) into its KV slot of two layers (one global, one with an 8-position
// window); each output row's logits pick the token that a hash of every slot the position may
// attend to names. So the tokens a request gets are right only if every KV block the scheduler
// handed the model holds exactly that sequence's history: after chunked prefill, batching,
// preemption and recomputation, prefix sharing and window trimming. The expected tokens come
// from the same hash over the plain token list, with no scheduler involved.
//
// Built and run by tests/test_scheduler_native.py; prints one line per check, exits 1 on a failure.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"

namespace pyengine {
namespace {

constexpr int64_t kVocab = 64, kEmbd = 4, kWindow = 8, kBlock = 16;
constexpr int32_t kFirstWord = 3;  // ids 0-2: pad, eos, bos

ModelConfig ScriptedConfig() {
  ModelConfig c;
  c.arch = "scripted";
  c.n_vocab = kVocab;
  c.n_ctx_train = 4096;
  c.n_embd = kEmbd;
  c.n_layer = 2;
  c.n_ff = 4;
  c.n_head = 1;
  c.n_head_kv = 1;
  c.head_dim = 2;
  c.sliding_window = kWindow;
  c.layer_is_swa = {0, 1};
  c.kv_layer = {0, 1};
  return c;
}

uint32_t Mix(uint32_t h, uint32_t token, uint32_t pos) { return (h ^ (token * 2654435761u + pos)) * 16777619u; }

// The next token after a sequence whose last position is `pos`, given the (token, position)
// pairs its layers see.
int32_t NextToken(uint32_t global, uint32_t window) {
  return kFirstWord + static_cast<int32_t>((global * 31u + window) % (kVocab - kFirstWord));
}

class ScriptedModel : public Model {
 public:
  ScriptedModel() : cfg_(ScriptedConfig()) {}
  const ModelConfig& config() const override { return cfg_; }

  // While held, a step waits at its start (after saying it began): what a test does meanwhile
  // happens between two steps of the scheduler, not at a moment left to chance.
  void Hold() { held_ = true; }
  void Release() { held_ = false; }
  void WaitUntilHeld() const {
    while (!waiting_) std::this_thread::yield();
  }

  void Forward(const Batch& b, float* out, float* hidden) const override {
    if (held_) {
      waiting_ = true;
      while (held_) std::this_thread::yield();
      waiting_ = false;
    }
    for (int64_t t = 0; t < b.size(); ++t) {
      const KvView& v = b.views[b.seq[t]];
      if (b.pos[t] >= v.capacity()) Fail("a token past its sequence's blocks");
      for (int layer = 0; layer < 2; ++layer) {
        auto* k = reinterpret_cast<uint16_t*>(v.k(layer, b.pos[t]));
        k[0] = static_cast<uint16_t>(b.tokens[t]);
        k[1] = static_cast<uint16_t>(b.pos[t]);
      }
    }
    auto hashes = [&](int64_t t, uint32_t* g, uint32_t* w) {
      const KvView& v = b.views[b.seq[t]];
      *g = *w = 2166136261u;
      for (int64_t p = 0; p <= b.pos[t]; ++p) {
        const uint16_t* k = reinterpret_cast<const uint16_t*>(v.k(0, p));
        if (k[1] != p) Fail("a global slot holds another position");
        *g = Mix(*g, k[0], k[1]);
      }
      for (int64_t p = std::max<int64_t>(0, b.pos[t] - kWindow + 1); p <= b.pos[t]; ++p) {
        const uint16_t* k = reinterpret_cast<const uint16_t*>(v.k(1, p));
        if (k[1] != p) Fail("a window slot holds another position");
        *w = Mix(*w, k[0], k[1]);
      }
    };
    for (size_t r = 0; r < b.out_rows.size(); ++r) {
      uint32_t g, w;
      hashes(b.out_rows[r], &g, &w);
      float* row = out + r * kVocab;
      for (int64_t i = 0; i < kVocab; ++i) row[i] = -1.f;
      row[NextToken(g, w)] = 1.f;
    }
    for (size_t r = 0; r < b.hidden_rows.size(); ++r) {
      uint32_t g, w;
      hashes(b.hidden_rows[r], &g, &w);
      for (int64_t i = 0; i < kEmbd; ++i) hidden[r * kEmbd + i] = static_cast<float>((g >> (8 * i)) & 0xff);
    }
  }

 private:
  static void Fail(const char* what) {
    std::fprintf(stderr, "scripted model: %s\n", what);
    std::abort();
  }
  ModelConfig cfg_;
  std::atomic<bool> held_{false};
  mutable std::atomic<bool> waiting_{false};
};

// What the scripted model answers, computed on the plain token list.
std::vector<int32_t> Expected(std::vector<int32_t> tokens, int n_new) {
  std::vector<int32_t> out;
  for (int i = 0; i < n_new; ++i) {
    uint32_t g = 2166136261u, w = 2166136261u;
    const int64_t last = static_cast<int64_t>(tokens.size()) - 1;
    for (int64_t p = 0; p <= last; ++p) g = Mix(g, static_cast<uint32_t>(tokens[p]), static_cast<uint32_t>(p));
    for (int64_t p = std::max<int64_t>(0, last - kWindow + 1); p <= last; ++p) {
      w = Mix(w, static_cast<uint32_t>(tokens[p]), static_cast<uint32_t>(p));
    }
    out.push_back(NextToken(g, w));
    tokens.push_back(out.back());
  }
  return out;
}

Tokenizer ScriptedTokenizer() {
  Vocab v;
  for (int64_t i = 0; i < kVocab; ++i) {
    v.tokens.push_back(i == 0 ? "<pad>" : i == 1 ? "<eos>" : i == 2 ? "<bos>" : "w" + std::to_string(i));
    v.scores.push_back(0.f);
    v.types.push_back(i < kFirstWord ? TokenType::kControl : TokenType::kNormal);
  }
  v.pad_id = 0;
  v.eos_id = 1;
  v.bos_id = 2;
  v.eog_ids = {1};
  return Tokenizer(std::move(v));
}

std::vector<int32_t> Prompt(int n, int seed) {
  std::vector<int32_t> p{2};
  uint32_t x = static_cast<uint32_t>(seed) * 7919u + 1;
  for (int i = 1; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    p.push_back(kFirstWord + static_cast<int32_t>((x >> 8) % (kVocab - kFirstWord)));
  }
  return p;
}

RequestOptions Greedy(int max_tokens) {
  RequestOptions o;
  o.gen.max_tokens = max_tokens;
  o.gen.sampling.temperature = 0.f;
  o.gen.ignore_eos = true;
  o.n_ctx = 4096;
  return o;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::string reason;
  RequestCounts counts;
};

Outcome Collect(Request& r) {
  Outcome o;
  GenerationStep s;
  while (r.Next(&s, -1)) {
    if (s.token >= 0) o.tokens.push_back(s.token);
    if (s.done) {
      o.reason = s.done_reason;
      break;
    }
  }
  if (!r.error().empty()) o.reason = "error: " + r.error();
  o.counts = r.counts();
  return o;
}

int failures = 0;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok" : "FAILED", what.c_str());
  if (!ok) ++failures;
}

// A scheduler over the scripted model with a KV budget of `pages` blocks' worth of pages.
struct Rig {
  ScriptedModel model;
  Tokenizer tok = ScriptedTokenizer();
  ThreadPool pool{2};
  KvCache kv;
  Scheduler sched;
  Rig(int64_t kv_blocks, const SchedulerOptions& o, Drafter* drafter = nullptr)
      : kv(model.config(), KvType::kF16, kBlock,
           kv_blocks * 2 * KvArena::PageBytes(KvType::kF16, 2, kBlock)),
        sched(model, kv, tok, pool, o, drafter) {}
  bool AllPagesBack() {
    const auto s = sched.kv_stats();
    return s.pages_used == 0 && s.pages_free + s.pages_cached == s.pages_total;
  }
};

// Submits every prompt while the scheduler is held inside the first one's first step, so all
// of them are queued before it plans its second: the same steps on every run, however the
// operating system schedules this thread.
std::vector<std::shared_ptr<Request>> SubmitTogether(Rig& rig, const std::vector<std::vector<int32_t>>& prompts,
                                                     const std::vector<int>& max_tokens) {
  std::vector<std::shared_ptr<Request>> reqs;
  rig.model.Hold();
  for (size_t i = 0; i < prompts.size(); ++i) {
    reqs.push_back(rig.sched.Submit(prompts[i], Greedy(max_tokens[i])));
    if (i == 0) rig.model.WaitUntilHeld();
  }
  rig.model.Release();
  return reqs;
}

SchedulerOptions Opts(int max_batch, int64_t max_tokens, bool prefix = true) {
  SchedulerOptions o;
  o.max_batch = max_batch;
  o.max_batch_tokens = max_tokens;
  o.prefix_cache = prefix;
  return o;
}

void ChunkedPrefill() {
  Rig rig(64, Opts(4, 8));
  const auto prompt = Prompt(45, 1);
  auto req = rig.sched.Submit(prompt, Greedy(12));
  const Outcome o = Collect(*req);
  Check(o.tokens == Expected(prompt, 12) && o.reason == "length", "chunked prefill: a 45-token prompt in chunks of 8 gives the expected 12 tokens");
  // ceil(45 / 8) prompt steps (the last one samples the first token) + 11 decode steps.
  Check(rig.sched.stats().steps == 6 + 11, "chunked prefill: 6 prompt steps and 11 decode steps");
  Check(o.counts.prompt_eval_count == 45 && o.counts.eval_count == 12, "chunked prefill: counts");
  Check(rig.AllPagesBack(), "chunked prefill: every page back");
}

void Batching() {
  Rig rig(256, Opts(3, 64));
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> lengths;
  for (int i = 0; i < 7; ++i) {
    prompts.push_back(Prompt(5 + 9 * i, 10 + i));
    lengths.push_back(6 + i);
  }
  const auto reqs = SubmitTogether(rig, prompts, lengths);
  bool all = true;
  for (int i = 0; i < 7; ++i) all = all && Collect(*reqs[i]).tokens == Expected(prompts[i], 6 + i);
  Check(all, "batching: 7 requests, at most 3 at once, each gets its own expected tokens");
  const auto st = rig.sched.stats();
  Check(st.max_step_sequences == 3 && st.finished == 7, "batching: steps hold at most max_batch sequences");
  Check(rig.AllPagesBack(), "batching: every page back");
}

void Preemption() {
  // 7 blocks of KV for 4 sequences that each grow to 3 blocks (plus the window group's):
  // the newest are set back and recomputed.
  Rig rig(7, Opts(4, 32, /*prefix=*/false));
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) prompts.push_back(Prompt(20, 30 + i));
  const auto reqs = SubmitTogether(rig, prompts, {24, 24, 24, 24});
  bool all = true;
  int64_t preempted = 0;
  for (int i = 0; i < 4; ++i) {
    const Outcome o = Collect(*reqs[i]);
    all = all && o.tokens == Expected(prompts[i], 24) && o.reason == "length";
    preempted += o.counts.preemptions;
  }
  Check(rig.sched.stats().preemptions > 0 && preempted == rig.sched.stats().preemptions,
        "preemption: memory runs short and sequences are set back (" + std::to_string(preempted) + ")");
  Check(all, "preemption: every request still gets its expected tokens");
  Check(rig.AllPagesBack(), "preemption: every page back");
}

void Cancellation() {
  Rig rig(64, Opts(1, 16));
  const auto prompt = Prompt(12, 5), other = Prompt(20, 6);
  rig.model.Hold();
  auto running = rig.sched.Submit(prompt, Greedy(1000));
  rig.model.WaitUntilHeld();  // the scheduler is inside running's first step
  auto queued = rig.sched.Submit(other, Greedy(30));
  rig.sched.Cancel(*running);
  rig.sched.Cancel(*queued);
  rig.model.Release();
  const Outcome r = Collect(*running), q = Collect(*queued);
  // The step under way completes (its token is delivered); nothing runs after it.
  Check(r.reason == "cancel" && r.tokens == Expected(prompt, 1),
        "cancellation: a running request ends with 'cancel' after the step under way");
  Check(q.reason == "cancel" && q.tokens.empty() && q.counts.prompt_eval_count == 0,
        "cancellation: a queued request ends with 'cancel', nothing computed");
  const auto st = rig.sched.stats();
  Check(st.steps == 1 && st.cancelled == 2, "cancellation: one step ran, two requests cancelled");
  Check(rig.AllPagesBack(), "cancellation: every page back");
}

void PrefixHits() {
  Rig rig(64, Opts(4, 64));
  auto a = Prompt(50, 8), b = a;
  b.resize(40);
  const auto tail = Prompt(15, 9);
  b.insert(b.end(), tail.begin() + 1, tail.end());  // shares a's first 40 tokens
  const Outcome oa = Collect(*rig.sched.Submit(a, Greedy(5)));
  const Outcome ob = Collect(*rig.sched.Submit(b, Greedy(5)));
  Check(oa.tokens == Expected(a, 5) && ob.tokens == Expected(b, 5), "prefix: both requests get their expected tokens");
  // Whole blocks of the shared 40 tokens: 32 positions.
  Check(oa.counts.cached_tokens == 0 && ob.counts.cached_tokens == 32 &&
            ob.counts.prompt_eval_count == static_cast<int64_t>(b.size()) - 32,
        "prefix: the second request shares 32 positions and computes the rest (" +
            std::to_string(ob.counts.cached_tokens) + ")");
  const Outcome again = Collect(*rig.sched.Submit(a, Greedy(5)));
  Check(again.tokens == oa.tokens && again.counts.cached_tokens == 48, "prefix: the same prompt again shares its whole blocks");
  Check(rig.AllPagesBack(), "prefix: every page back (cached ones evictable)");
}

void Scoring() {
  Rig rig(64, Opts(4, 16));
  const auto prompt = Prompt(30, 11);
  RequestOptions o;
  o.logits_all = true;
  o.n_ctx = 4096;
  auto req = rig.sched.Submit(prompt, o);
  const Outcome got = Collect(*req);
  const std::vector<float> logits = req->TakeResult();
  bool right = got.reason == "stop" && logits.size() == prompt.size() * kVocab;
  for (size_t p = 0; right && p < prompt.size(); ++p) {
    std::vector<int32_t> head(prompt.begin(), prompt.begin() + p + 1);
    right = logits[p * kVocab + Expected(head, 1)[0]] == 1.f;
  }
  Check(right, "scoring: every position's logits, computed over chunks of 16");
  Check(rig.AllPagesBack(), "scoring: every page back");
}

void Drafts() {
  // Prompt lookup on single tokens finds a draft nearly every step; the scripted answers
  // almost never agree with one, so most drafted positions are written and then written over.
  SchedulerOptions o = Opts(4, 64);
  o.num_draft = 8;
  o.lookup.min_ngram = 1;
  Rig rig(256, o);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = Prompt(30, 40 + i);
    p.insert(p.end(), p.begin() + 1, p.end());  // the prompt twice: drafts that can agree
    prompts.push_back(p);
  }
  const auto reqs = SubmitTogether(rig, prompts, {40, 40, 40, 40});
  bool all = true;
  for (int i = 0; i < 4; ++i) all = all && Collect(*reqs[i]).tokens == Expected(prompts[i], 40);
  const SchedulerStats st = rig.sched.stats();
  Check(all && st.drafted > st.draft_accepted && st.draft_steps > 0,
        "drafts: 4 streams with drafts nearly every step get the expected 40 tokens each");
  Check(rig.AllPagesBack(), "drafts: every page back");
}

// A draft model that knows the scripted answers: it proposes them, but gets one wrong in every
// third proposal, so that drafts are kept whole, kept in part and refused.
class ScriptedDrafter : public Drafter {
 public:
  void Propose(std::vector<DraftJob>& jobs) override {
    for (DraftJob& j : jobs) {
      *j.draft = Expected(*j.tokens, static_cast<int>(j.limit));
      if (++calls_ % 3 == 0) {
        int32_t& t = (*j.draft)[j.draft->size() / 2];
        t = kFirstWord + (t - kFirstWord + 1) % (kVocab - kFirstWord);
      }
    }
  }
  void Release(DraftState& s) override { ++released; s.computed.clear(); }
  int released = 0;

 private:
  int calls_ = 0;
};

void DraftModelSteps() {
  SchedulerOptions o = Opts(4, 64);
  o.num_draft = 6;
  ScriptedDrafter drafter;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) prompts.push_back(Prompt(20 + 7 * i, 60 + i));
  // Twice: with room for every sequence, and in so few blocks that sequences are set back.
  for (int64_t blocks : {256, 7}) {
    Rig rig(blocks, o, &drafter);
    const auto reqs = SubmitTogether(rig, prompts, {50, 50, 50});
    bool all = true;
    for (int i = 0; i < 3; ++i) all = all && Collect(*reqs[i]).tokens == Expected(prompts[i], 50);
    const SchedulerStats st = rig.sched.stats();
    const std::string what = blocks == 256 ? "room" : "preempted";
    Check(all && st.draft_accepted > 0 && st.draft_accepted < st.drafted &&
              st.steps < 3 * 50 && (blocks == 256 || st.preemptions > 0),
          "draft model (" + what + "): drafts kept whole and in part, the expected 50 tokens each");
    Check(rig.AllPagesBack() && drafter.released >= 3, "draft model (" + what + "): every page back");
  }
}

}  // namespace
}  // namespace pyengine

int main() {
  pyengine::ChunkedPrefill();
  pyengine::Batching();
  pyengine::Preemption();
  pyengine::Cancellation();
  pyengine::PrefixHits();
  pyengine::Scoring();
  pyengine::Drafts();
  pyengine::DraftModelSteps();
  std::printf("%d failed\n", pyengine::failures);
  return pyengine::failures == 0 ? 0 : 1;
}
