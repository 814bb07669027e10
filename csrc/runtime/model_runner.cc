#include "runtime/model_runner.h"

namespace pyengine {

const StepOutput& ModelRunner::Run(const std::vector<StepRun>& runs) {
  batch_.Clear();
  out_.row.assign(runs.size(), -1);
  out_.hidden_row.assign(runs.size(), -1);
  int64_t rows = 0, hidden_rows = 0;
  bool argmax = true;  // every row only argmax'ed: a model may bring back ids instead of logits
  for (size_t i = 0; i < runs.size(); ++i) {
    const StepRun& r = runs[i];
    const int32_t idx = static_cast<int32_t>(batch_.views.size());
    batch_.views.push_back(r.view);
    batch_.Add(idx, r.tokens, r.n, r.pos, r.logits, r.every_logit, r.hidden);
    if (r.logits) {
      out_.row[i] = rows;
      rows += r.every_logit ? r.n : 1;
      argmax = argmax && r.argmax_suffices && !r.every_logit;
    }
    if (r.hidden) {
      out_.hidden_row[i] = hidden_rows;
      hidden_rows += r.n;
    }
  }
  out_.logits = nullptr;
  out_.argmax = nullptr;
  out_.hidden = nullptr;
  if (argmax && rows > 0 && hidden_rows == 0) {
    argmax_.resize(static_cast<size_t>(rows));
    if (model_.ForwardArgmax(batch_, argmax_.data())) {
      out_.argmax = argmax_.data();
      return out_;
    }
  }
  const int64_t n_vocab = model_.config().n_vocab, n_embd = model_.config().n_embd;
  logits_.resize(static_cast<size_t>(rows * n_vocab));
  hidden_.resize(static_cast<size_t>(hidden_rows * n_embd));
  model_.Forward(batch_, logits_.data(), hidden_.data());
  out_.logits = logits_.data();
  out_.hidden = hidden_.data();
  return out_;
}

}  // namespace pyengine
