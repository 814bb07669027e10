#include "runtime/draft_model.h"

#include <algorithm>

#include "core/errors.h"
#include "model/architecture.h"
#include "runtime/sampler.h"
#include "runtime/vocab.h"

namespace pyengine {
namespace {

constexpr int64_t kBlockTokens = 16;  // as the engine's own cache

}  // namespace

DraftModel::DraftModel(const std::string& path, const Tokenizer& target, ThreadPool& pool,
                       KvType kv_type, int64_t kv_bytes, int64_t max_step_tokens)
    : file_(std::make_unique<GgufFile>(path)),
      cfg_(LoadConfig(*file_)),
      model_(LoadModel(*file_, cfg_, pool)),
      kv_(cfg_, kv_type, kBlockTokens, kv_bytes),
      runner_(*model_, pool),
      max_step_tokens_(max_step_tokens) {
  // Drafts are token ids of the target: both files must mean the same text by every id.
  const Tokenizer tok(LoadVocab(*file_, cfg_.n_vocab));
  bool same = tok.n_vocab() == target.n_vocab();
  for (int32_t id = 0; same && id < tok.n_vocab(); ++id) {
    same = tok.PieceView(id, true) == target.PieceView(id, true) &&
           tok.vocab().types[id] == target.vocab().types[id];
  }
  if (!same) {
    throw ModelError(path + ": the draft model's vocabulary differs from the model's (" +
                     std::to_string(tok.n_vocab()) + " against " + std::to_string(target.n_vocab()) +
                     " tokens, or different tokens): its drafts would name other text");
  }
  n_cand_ = static_cast<int32_t>(std::min<int64_t>(cfg_.n_vocab, tok.n_vocab()));
}

void DraftModel::Propose(std::vector<DraftJob>& jobs) {
  // One unit of work per drafting sequence: the tokens it must run next (first what the
  // sequence gained since its last draft, then each new draft token), logits on the last.
  struct Work {
    DraftJob* job;
    std::vector<int32_t> input;
    size_t off = 0;
  };
  std::vector<Work> work;
  for (DraftJob& j : jobs) {
    j.draft->clear();
    const std::vector<int32_t>& t = *j.tokens;
    std::vector<int32_t>& c = j.state->computed;
    // Keys and values of positions whose token the sequence still has stay; the pending
    // token is always run, for the logits that give the first draft.
    const size_t limit = std::min(c.size(), t.size() - 1);
    size_t keep = 0;
    while (keep < limit && c[keep] == t[keep]) ++keep;
    c.resize(keep);
    kv_.Trim(j.state->table, static_cast<int64_t>(keep));
    if (j.limit > 0) work.push_back({&j, std::vector<int32_t>(t.begin() + keep, t.end())});
  }
  std::vector<StepRun> runs;
  std::vector<Work*> ran;
  while (!work.empty()) {
    runs.clear();
    ran.clear();
    int64_t budget = max_step_tokens_;
    for (Work& w : work) {
      if (budget <= 0) break;
      DraftState& st = *w.job->state;
      const int64_t pos = static_cast<int64_t>(st.computed.size());
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(w.input.size() - w.off), budget);
      if (!kv_.Grow(st.table, pos + n)) {
        w.job->limit = 0;  // no memory for more: what it has is its draft
        continue;
      }
      StepRun r;
      r.tokens = w.input.data() + w.off;
      r.pos = pos;
      r.n = n;
      r.view = kv_.View(st.table);
      r.logits = w.off + static_cast<size_t>(n) == w.input.size();
      r.argmax_suffices = true;
      runs.push_back(r);
      ran.push_back(&w);
      budget -= n;
    }
    if (!runs.empty()) {
      const StepOutput& out = runner_.Run(runs);
      for (size_t i = 0; i < ran.size(); ++i) {
        Work& w = *ran[i];
        std::vector<int32_t>& c = w.job->state->computed;
        c.insert(c.end(), w.input.begin() + static_cast<std::ptrdiff_t>(w.off),
                 w.input.begin() + static_cast<std::ptrdiff_t>(w.off + runs[i].n));
        w.off += static_cast<size_t>(runs[i].n);
        if (out.row[i] < 0) continue;  // more of its input next step
        const int32_t next = out.argmax ? out.argmax[out.row[i]]
                                        : FirstBestId(out.logits + out.row[i] * cfg_.n_vocab, n_cand_);
        w.job->draft->push_back(next);
        w.input.assign(1, next);
        w.off = 0;
      }
    }
    work.erase(std::remove_if(work.begin(), work.end(), [](const Work& w) {
                 return static_cast<int64_t>(w.job->draft->size()) >= w.job->limit;
               }),
               work.end());
  }
}

}  // namespace pyengine
