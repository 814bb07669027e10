// Engine: owns a mapped model file, its weights, tokenizer, the shared KV cache and the
// scheduler that batches every request on the model.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/gguf.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "runtime/request.h"
#include "runtime/draft_model.h"
#include "runtime/scheduler.h"
#include "core/thread_pool.h"
#include "runtime/tokenizer.h"

namespace pyengine {

struct EngineOptions {
  int64_t n_ctx = 4096;        // a request's default context; capped at the model's training context
  int32_t n_threads = 0;       // 0: all cores
  int64_t kv_cache_bytes = int64_t{2048} << 20;  // memory for keys and values of all sequences
  KvType kv_type = KvType::kF16;  // how that memory stores them
  // Where full KV blocks of chosen prefixes are kept across restarts (empty: nowhere), named by
  // the model file's digest, and how many bytes of disk they may take.
  std::string prompt_cache_dir;
  std::string model_id;
  int64_t prompt_cache_bytes = int64_t{4096} << 20;
  std::string device = "cpu";  // "cpu", or "cuda": the forward pass on the CUDA device
  // Speculative decoding's draft model (empty: none, drafts come from prompt lookup): a file
  // of the same vocabulary, on the CPU. Its keys and values take draft_kv_bytes more memory,
  // or (0) their share of kv_cache_bytes: split so that both models hold as many positions.
  std::string draft_path;
  int64_t draft_kv_bytes = 0;
  SchedulerOptions scheduler;
};

// Checks a prompt for a sequence of n_ctx positions: not empty, fits, every id in the
// vocabulary (EngineError naming the problem). Every backend checks requests with it.
void CheckPromptIds(const ModelConfig& cfg, const std::vector<int32_t>& ids, int64_t n_ctx);
// The one check of token ids against a vocabulary of n_vocab ids (EngineError naming the id).
void CheckTokenIds(const std::vector<int32_t>& ids, int64_t n_vocab);
// A tokenizer must not name ids token_embd has no row for (ModelError naming the file).
void CheckTokenizerFits(const std::string& path, const Tokenizer& tok, const ModelConfig& cfg);

class Engine {
 public:
  Engine(const std::string& path, const EngineOptions& opts);
  ~Engine();

  const ModelConfig& config() const { return cfg_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  const GgufFile& file() const { return *file_; }
  int64_t n_ctx() const { return n_ctx_; }
  int n_threads() const { return pool_.size(); }

  // Checks a request (ids, context, memory; EngineError naming the problem) and queues it.
  std::shared_ptr<Request> Submit(std::vector<int32_t> prompt, RequestOptions opts);
  void Cancel(Request& r);
  // Teacher-forced logits of `ids` as a fresh sequence: [ids.size(), n_vocab]. Blocks.
  std::vector<float> Logits(const std::vector<int32_t>& ids);
  // Mean of the final normed hidden states of `ids` (a fresh sequence): [n_embd]. Blocks.
  std::vector<float> Embed(const std::vector<int32_t>& ids);

  SchedulerStats stats() const;
  KvCache::Stats kv_stats() const;
  std::vector<uint64_t> WaitReady(int64_t timeout_ms);
  // Stops the scheduler: queued and running requests end with an error, new ones are refused.
  void Close();

 private:
  std::shared_ptr<Scheduler> scheduler() const;  // EngineError once closed
  // Runs a scoring request (logits_all or embed in o) at the engine's context and waits for it.
  std::vector<float> Score(const std::vector<int32_t>& ids, RequestOptions o);

  std::unique_ptr<GgufFile> file_;
  ModelConfig cfg_;
  ThreadPool pool_;
  std::unique_ptr<Tokenizer> tok_;       // before the model: a bad vocabulary fails fast
  std::unique_ptr<Model> model_;
  int64_t n_ctx_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<DraftModel> draft_;     // before the scheduler, which uses it
  mutable std::mutex mu_;                 // guards scheduler_ (Close may reset it)
  std::shared_ptr<Scheduler> scheduler_;  // last: its thread uses everything above
};

}  // namespace pyengine
