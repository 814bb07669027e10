#include "runtime/engine.h"

#include <algorithm>

#include "core/errors.h"
#include "model/architecture.h"
#include "cuda/cuda_backend.h"
#include "runtime/vocab.h"

namespace pyengine {
namespace {

// Positions per KV block: small enough that a shared prefix wastes little, large enough that
// the block lookup is rare next to the 16-position stretch it covers.
constexpr int64_t kBlockTokens = 16;

std::unique_ptr<Model> LoadEngineModel(const GgufFile& file, const ModelConfig& cfg,
                                       ThreadPool& pool, const std::string& device) {
  if (device == "cuda") return LoadCudaModel(file, cfg);
  if (device != "cpu") throw EngineError("device must be cpu or cuda, got '" + device + "'");
  return LoadModel(file, cfg, pool);
}

// Bytes of KV pages one position takes, up to the cache type's factor: every layer that stores
// its own keys and values, at the page width. Splits one budget between a model and its draft
// model so that both hold as many positions.
int64_t KvWidth(const ModelConfig& c) {
  int64_t w = 0;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    if (c.kv_layer.empty() || c.kv_layer[static_cast<size_t>(l)] == l) w += c.kv_dim();
  }
  return std::max<int64_t>(w, 1);
}

int64_t ClampCtx(int64_t requested, int64_t train) {
  if (requested <= 0) return train;
  return std::min(requested, train);
}

}  // namespace

Engine::Engine(const std::string& path, const EngineOptions& opts)
    : file_(std::make_unique<GgufFile>(path)),
      cfg_(LoadConfig(*file_)),
      pool_(opts.n_threads),
      tok_(std::make_unique<Tokenizer>(LoadVocab(*file_, cfg_.n_vocab))),
      model_(LoadEngineModel(*file_, cfg_, pool_, opts.device)),
      n_ctx_(ClampCtx(opts.n_ctx, cfg_.n_ctx_train)) {
  CheckTokenizerFits(path, *tok_, cfg_);
  if (opts.kv_cache_bytes <= 0) throw EngineError("the KV cache budget must be positive");
  if (opts.kv_type != KvType::kF16 && opts.device != "cpu") {
    throw EngineError(std::string("a ") + KvTypeName(opts.kv_type) +
                      " KV cache runs on the CPU only; the CUDA backend keeps fp16 keys and values");
  }
  int64_t kv_bytes = opts.kv_cache_bytes, draft_bytes = 0;
  if (!opts.draft_path.empty()) {
    if (opts.device != "cpu") throw EngineError("a draft model runs with the CPU backend only");
    // The draft model's keys and values come out of the same budget, unless given their own.
    const ModelConfig draft_cfg = LoadConfig(GgufFile(opts.draft_path));
    const int64_t a = KvWidth(cfg_), b = KvWidth(draft_cfg);
    draft_bytes = opts.draft_kv_bytes > 0
                      ? opts.draft_kv_bytes
                      : static_cast<int64_t>(static_cast<double>(kv_bytes) * b / static_cast<double>(a + b));
    if (opts.draft_kv_bytes <= 0) kv_bytes -= draft_bytes;
  }
  kv_ = std::make_unique<KvCache>(cfg_, opts.kv_type, kBlockTokens, kv_bytes);
  if (!opts.prompt_cache_dir.empty()) {
    if (opts.model_id.empty()) throw EngineError("a prompt cache needs the model file's digest");
    DiskCacheOptions d;
    d.dir = opts.prompt_cache_dir;
    d.model_id = opts.model_id;
    d.budget_bytes = opts.prompt_cache_bytes;
    kv_->EnableDisk(d);
  }
  if (!opts.draft_path.empty()) {
    draft_ = std::make_unique<DraftModel>(opts.draft_path, *tok_, pool_, opts.kv_type, draft_bytes,
                                          opts.scheduler.max_batch_tokens);
  }
  scheduler_ = std::make_shared<Scheduler>(*model_, *kv_, *tok_, pool_, opts.scheduler, draft_.get());
}

Engine::~Engine() { Close(); }

void Engine::Close() {
  std::shared_ptr<Scheduler> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.swap(scheduler_);
  }
  s.reset();  // joins the loop thread outside the lock
}

std::shared_ptr<Scheduler> Engine::scheduler() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!scheduler_) throw EngineError("the engine is closed");
  return scheduler_;
}

void CheckPromptIds(const ModelConfig& cfg, const std::vector<int32_t>& ids, int64_t n_ctx) {
  if (ids.empty()) throw EngineError("the prompt is empty: no tokens to evaluate");
  if (static_cast<int64_t>(ids.size()) > n_ctx) {
    throw EngineError("the prompt of " + std::to_string(ids.size()) +
                      " tokens does not fit the context of " + std::to_string(n_ctx));
  }
  CheckTokenIds(ids, cfg.n_vocab);
}

void CheckTokenIds(const std::vector<int32_t>& ids, int64_t n_vocab) {
  for (int32_t t : ids) {
    if (t < 0 || t >= n_vocab) {
      throw EngineError("token id " + std::to_string(t) + " is outside the vocabulary of " +
                        std::to_string(n_vocab));
    }
  }
}

void CheckTokenizerFits(const std::string& path, const Tokenizer& tok, const ModelConfig& cfg) {
  if (tok.n_vocab() > cfg.n_vocab) {
    throw ModelError(path + ": the tokenizer has " + std::to_string(tok.n_vocab()) +
                     " tokens but token_embd only " + std::to_string(cfg.n_vocab) + " rows");
  }
}

std::shared_ptr<Request> Engine::Submit(std::vector<int32_t> prompt, RequestOptions opts) {
  opts.n_ctx = opts.n_ctx > 0 ? std::min(opts.n_ctx, cfg_.n_ctx_train) : n_ctx_;
  CheckPromptIds(cfg_, prompt, opts.n_ctx);
  std::shared_ptr<Scheduler> s = scheduler();
  const int64_t need = kv_->PagesFor(static_cast<int64_t>(prompt.size()), s->options().max_batch_tokens);
  if (need > kv_->n_pages()) {
    throw EngineError("the prompt of " + std::to_string(prompt.size()) + " tokens needs " +
                      std::to_string((need * kv_->page_bytes()) >> 10) + " KiB of KV cache, more than the " +
                      std::to_string((kv_->n_pages() * kv_->page_bytes()) >> 10) + " KiB budget");
  }
  return s->Submit(std::move(prompt), opts);
}

void Engine::Cancel(Request& r) {
  std::shared_ptr<Scheduler> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = scheduler_;
  }
  if (s) s->Cancel(r);
}

std::vector<float> Engine::Logits(const std::vector<int32_t>& ids) {
  RequestOptions o;
  o.logits_all = true;
  return Score(ids, o);
}

std::vector<float> Engine::Embed(const std::vector<int32_t>& ids) {
  RequestOptions o;
  o.embed = true;
  return Score(ids, o);
}

std::vector<float> Engine::Score(const std::vector<int32_t>& ids, RequestOptions o) {
  o.n_ctx = n_ctx_;
  std::shared_ptr<Request> r = Submit(ids, o);
  GenerationStep step;
  while (r->Next(&step, -1) && !step.done) {}
  if (!r->error().empty()) throw EngineError(r->error());
  return r->TakeResult();
}

SchedulerStats Engine::stats() const { return scheduler()->stats(); }
KvCache::Stats Engine::kv_stats() const { return scheduler()->kv_stats(); }

std::vector<uint64_t> Engine::WaitReady(int64_t timeout_ms) {
  std::shared_ptr<Scheduler> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = scheduler_;
  }
  if (!s) return {};
  return s->WaitReady(timeout_ms);
}

}  // namespace pyengine
