#include "runtime/generation.h"

#include <algorithm>

namespace pyengine {

Generation::Generation(const Tokenizer& tok, GenerateOptions opts, int64_t n_ctx)
    : tok_(tok), opts_(std::move(opts)), n_ctx_(n_ctx), sampler_(opts_.sampling), decoder_(tok) {
  opts_.stop.erase(std::remove(opts_.stop.begin(), opts_.stop.end(), std::string()), opts_.stop.end());
  if (opts_.max_tokens == 0) done_ = true;
}

GenerationStep Generation::Accept(const float* logits, int64_t n_vocab, std::vector<int32_t>& tokens) {
  GenerationStep step;
  if (done_) {
    step.done = true;
    return step;
  }
  // Only ids the tokenizer knows are candidates (a file may pad token_embd beyond them).
  const int32_t n_cand = static_cast<int32_t>(std::min<int64_t>(n_vocab, tok_.n_vocab()));
  return AcceptToken(sampler_.Sample(logits, n_cand, tokens), tokens);
}

GenerationStep Generation::AcceptToken(int32_t t, std::vector<int32_t>& tokens) {
  GenerationStep step;
  if (done_) {
    step.done = true;
    return step;
  }
  const bool eog = !opts_.ignore_eos && tok_.IsEog(t);
  const std::string text = eog ? std::string() : decoder_.Push(t);
  step.token = t;
  tokens.push_back(t);
  ++n_output_;

  if (eog) return End(step, "stop", true);
  pending_ += text;
  if (ReleaseText(&step.text)) return End(step, "stop", false);
  if (opts_.max_tokens > 0 && n_output_ >= opts_.max_tokens) return End(step, "length", true);
  // The new token would need a position past the context: it is the last one.
  if (static_cast<int64_t>(tokens.size()) > n_ctx_) return End(step, "length", true);
  return step;
}

GenerationStep Generation::Finish(const std::string& reason, bool flush_text) {
  if (done_) {
    GenerationStep step;
    step.done = true;
    return step;
  }
  return End(GenerationStep{}, reason, flush_text);
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

GenerationStep Generation::End(GenerationStep step, const std::string& reason, bool flush_text) {
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
