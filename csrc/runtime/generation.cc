#include "runtime/generation.h"

#include <algorithm>
#include <chrono>

#include "core/errors.h"

namespace pyengine {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Generation::Generation(Engine& engine, std::vector<int32_t> prompt, GenerateOptions opts)
    : engine_(engine),
      opts_(std::move(opts)),
      sampler_(opts_.sampling),
      decoder_(engine.tokenizer()),
      seq_(std::move(prompt)),
      prompt_len_(seq_.size()) {
  if (seq_.empty()) throw EngineError("the prompt is empty");
  if (static_cast<int64_t>(seq_.size()) > engine_.n_ctx()) {
    throw EngineError("the prompt of " + std::to_string(seq_.size()) +
                      " tokens does not fit the context of " + std::to_string(engine_.n_ctx()));
  }
  opts_.stop.erase(std::remove(opts_.stop.begin(), opts_.stop.end(), std::string()), opts_.stop.end());
  logits_.resize(static_cast<size_t>(engine_.config().n_vocab));
  if (opts_.max_tokens == 0) done_ = true;
}

GenerationStep Generation::Next() {
  std::lock_guard<std::mutex> lock(mu_);
  GenerationStep step;
  if (done_) {
    step.done = true;
    return step;
  }
  if (static_cast<int64_t>(seq_.size()) > engine_.n_ctx()) return Finish(step, "length", true);

  const int64_t t0 = NowNs();
  const int64_t evaluated = engine_.Eval(seq_, logits_.data());
  const int64_t dt = NowNs() - t0;
  if (output_.empty()) {
    prompt_eval_count_ += evaluated;
    prompt_eval_ns_ += dt;
  } else {
    eval_ns_ += dt;
  }

  // Only ids the tokenizer knows are candidates (a file may pad token_embd beyond them).
  const int32_t n_cand = std::min<int32_t>(static_cast<int32_t>(logits_.size()), engine_.tokenizer().n_vocab());
  const int32_t tok = sampler_.Sample(logits_.data(), n_cand, seq_);
  const bool eog = !opts_.ignore_eos && engine_.tokenizer().IsEog(tok);
  const std::string text = eog ? std::string() : decoder_.Push(tok);
  step.token = tok;
  seq_.push_back(tok);
  output_.push_back(tok);
  ++eval_count_;

  if (eog) return Finish(step, "stop", true);
  pending_ += text;
  if (ReleaseText(&step.text)) return Finish(step, "stop", false);
  if (opts_.max_tokens > 0 && eval_count_ >= opts_.max_tokens) return Finish(step, "length", true);
  return step;
}

bool Generation::ReleaseText(std::string* out) {
  // Earliest match of any stop string ends the output before it.
  size_t cut = std::string::npos;
  for (const std::string& s : opts_.stop) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    out->append(pending_, 0, cut);
    pending_.clear();
    return true;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : opts_.stop) {
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  out->append(pending_, 0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return false;
}

GenerationStep Generation::Finish(GenerationStep step, const std::string& reason, bool flush_text) {
  if (flush_text) {
    pending_ += decoder_.Flush();
    // A stop string may still complete inside the flushed bytes.
    for (const std::string& s : opts_.stop) {
      size_t at = pending_.find(s);
      if (at != std::string::npos) pending_.resize(at);
    }
    step.text += pending_;
  }
  pending_.clear();
  done_ = true;
  step.done = true;
  step.done_reason = reason;
  return step;
}

}  // namespace pyengine
