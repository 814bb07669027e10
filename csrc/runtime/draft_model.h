// DraftModel: a smaller model of the same vocabulary that proposes draft tokens for speculative
// decoding: its greedy continuation of each drafting sequence, a few tokens ahead. It keeps its
// own keys and values per sequence (a KvCache of its own layout), computed lazily: what the
// sequence's tokens gained since its last draft is run first, and positions whose tokens the
// target refused are written over. Used by the scheduler's thread alone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/gguf.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "runtime/drafter.h"
#include "runtime/model_runner.h"
#include "runtime/tokenizer.h"

namespace pyengine {

class DraftModel : public Drafter {
 public:
  // Loads `path`; its vocabulary must be `target`'s, token for token (ModelError otherwise).
  DraftModel(const std::string& path, const Tokenizer& target, ThreadPool& pool, KvType kv_type,
             int64_t kv_bytes, int64_t max_step_tokens);

  const ModelConfig& config() const { return cfg_; }
  // Greedy proposals for every job, batched: one step per draft position (after a first that
  // catches each sequence up).
  void Propose(std::vector<DraftJob>& jobs) override;
  void Release(DraftState& s) override {
    kv_.Release(s.table);
    s.computed.clear();
  }

 private:
  std::unique_ptr<GgufFile> file_;
  ModelConfig cfg_;
  std::unique_ptr<Model> model_;
  KvCache kv_;
  ModelRunner runner_;
  int64_t max_step_tokens_;
  int32_t n_cand_;  // ids a draft may be: those both vocabularies name
};

}  // namespace pyengine
