#include "runtime/engine.h"

#include <algorithm>

#include "core/errors.h"
#include "runtime/vocab.h"

namespace pyengine {
namespace {

// Prompt tokens per forward call: bounds the workspace (and matches llama.cpp's ubatch).
constexpr int64_t kUbatch = 512;
// Positions per KV block: small enough that a shared prefix wastes little, large enough that
// the block lookup is rare next to the 16-position stretch it covers.
constexpr int64_t kBlockTokens = 16;

int64_t ClampCtx(int64_t requested, int64_t train) {
  if (requested <= 0) return train;
  return std::min(requested, train);
}

}  // namespace

Engine::Engine(const std::string& path, const EngineOptions& opts)
    : file_(std::make_unique<GgufFile>(path)),
      cfg_(LoadConfig(*file_)),
      pool_(opts.n_threads),
      tok_(std::make_unique<Tokenizer>(LoadVocab(*file_))),
      model_(std::make_unique<Gemma3Model>(*file_, cfg_, pool_)),
      n_ctx_(ClampCtx(opts.n_ctx, cfg_.n_ctx_train)),
      arena_(cfg_.n_layer, cfg_.kv_dim(), kBlockTokens, (n_ctx_ + kBlockTokens - 1) / kBlockTokens) {
  if (tok_->n_vocab() > cfg_.n_vocab) {
    throw ModelError(path + ": the tokenizer has " + std::to_string(tok_->n_vocab()) +
                     " tokens but token_embd only " + std::to_string(cfg_.n_vocab) + " rows");
  }
}

Engine::KvStats Engine::kv_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return {arena_.n_blocks(), arena_.n_free(), arena_.block_tokens(),
          static_cast<int64_t>(table_.blocks().size())};
}

void Engine::CheckIds(const std::vector<int32_t>& ids) const {
  if (ids.empty()) throw EngineError("no tokens to evaluate");
  if (static_cast<int64_t>(ids.size()) > n_ctx_) {
    throw EngineError(std::to_string(ids.size()) + " tokens do not fit the context of " +
                      std::to_string(n_ctx_));
  }
  for (int32_t t : ids) {
    if (t < 0 || t >= cfg_.n_vocab) {
      throw EngineError("token id " + std::to_string(t) + " is outside the vocabulary of " +
                        std::to_string(cfg_.n_vocab));
    }
  }
}

std::vector<float> Engine::Logits(const std::vector<int32_t>& ids) {
  CheckIds(ids);
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> out(static_cast<size_t>(n * cfg_.n_vocab));  // [n, n_vocab]
  std::lock_guard<std::mutex> lock(mu_);
  cached_.clear();
  if (!table_.Reserve(arena_, n)) throw EngineError("the KV arena is full");
  const KvView kv{&arena_, &table_};
  for (int64_t s = 0; s < n; s += kUbatch) {
    const int64_t m = std::min(kUbatch, n - s);
    model_->Forward(ids.data() + s, m, s, kv, ws_, /*all_logits=*/true, out.data() + s * cfg_.n_vocab, pool_);
  }
  cached_ = ids;
  return out;
}

int64_t Engine::Eval(const std::vector<int32_t>& ids, float* out) {
  CheckIds(ids);
  const int64_t n = static_cast<int64_t>(ids.size());
  std::lock_guard<std::mutex> lock(mu_);
  // The last token is always evaluated: its logits are the answer.
  int64_t keep = 0;
  const int64_t max_keep = std::min<int64_t>(n - 1, static_cast<int64_t>(cached_.size()));
  while (keep < max_keep && cached_[keep] == ids[keep]) ++keep;
  cached_.resize(static_cast<size_t>(keep));
  if (!table_.Reserve(arena_, n)) throw EngineError("the KV arena is full");
  const KvView kv{&arena_, &table_};
  for (int64_t s = keep; s < n; s += kUbatch) {
    const int64_t m = std::min(kUbatch, n - s);
    // Positions [s, s+m) overwrite whatever an older sequence left there. Only the last
    // chunk's logits are wanted: the others skip the output projection.
    model_->Forward(ids.data() + s, m, s, kv, ws_, /*all_logits=*/false,
                    s + m == n ? out : nullptr, pool_);
    cached_.insert(cached_.end(), ids.begin() + s, ids.begin() + s + m);
  }
  return n - keep;
}

}  // namespace pyengine
