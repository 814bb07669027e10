// Engine: owns a mapped model file, its weights, tokenizer, the KV arena, and (until the
// batcher lands) the block table of one sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/gguf.h"
#include "kv/block_table.h"
#include "kv/kv_arena.h"
#include "model/gemma3.h"
#include "runtime/thread_pool.h"
#include "runtime/tokenizer.h"

namespace pyengine {

struct EngineOptions {
  int64_t n_ctx = 4096;  // capped at the model's training context
  int32_t n_threads = 0; // 0: all cores
};

class Engine {
 public:
  Engine(const std::string& path, const EngineOptions& opts);

  const ModelConfig& config() const { return cfg_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  const GgufFile& file() const { return *file_; }
  int64_t n_ctx() const { return n_ctx_; }
  int n_threads() const { return pool_.size(); }

  struct KvStats {
    int64_t blocks_total, blocks_free, block_tokens, sequence_blocks;
  };
  KvStats kv_stats();

  // Teacher-forced logits of `ids` as a fresh sequence: [ids.size(), n_vocab].
  std::vector<float> Logits(const std::vector<int32_t>& ids);

  // Makes the cached sequence equal `ids` and writes the last position's logits to
  // out [n_vocab]. Reuses the longest prefix already cached, so a generation that appends
  // one token per call costs one token of compute. Returns the number of tokens evaluated.
  // Thread-safe: calls from several generations interleave correctly (each call is atomic).
  int64_t Eval(const std::vector<int32_t>& ids, float* out);

 private:
  void CheckIds(const std::vector<int32_t>& ids) const;

  std::unique_ptr<GgufFile> file_;
  ModelConfig cfg_;
  ThreadPool pool_;
  std::unique_ptr<Tokenizer> tok_;       // before the model: a bad vocabulary fails fast
  std::unique_ptr<Gemma3Model> model_;
  int64_t n_ctx_;

  std::mutex mu_;  // guards everything below
  KvArena arena_;     // sized for n_ctx positions
  BlockTable table_;  // the one sequence's blocks
  Workspace ws_;
  std::vector<int32_t> cached_;  // tokens whose keys/values kv_ holds, positions 0..
};

}  // namespace pyengine
