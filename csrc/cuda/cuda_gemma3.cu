// The Gemma 3 forward pass on a CUDA device: the same steps as model/gemma3.cc, each a kernel
// of cuda/kernels.cu. Weights are uploaded once; keys and values live in a device copy of the
// KV arena, addressed by the host arena's page ids, so the scheduler, the block tables and the
// prefix cache work unchanged.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/errors.h"
#include "core/gguf.h"
#include "cuda/cuda_backend.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/weights.h"
#include "model/ops.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"

namespace pyengine {
namespace {

using cuda::DevMatrix;
using cuda::DeviceBuffer;
using cuda::DevWeight;
using cuda::UploadFloats;
using cuda::WType;

class CudaGemma3Model : public Model {
 public:
  CudaGemma3Model(const GgufFile& f, const ModelConfig& cfg);
  ~CudaGemma3Model() override { if (stream_) cudaStreamDestroy(stream_); }

  const ModelConfig& config() const override { return cfg_; }
  void Forward(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
               float* hidden) const override;

 private:
  struct Layer {
    DevWeight attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down;
    DeviceBuffer<float> attn_norm, attn_q_norm, attn_k_norm, post_attention_norm;
    DeviceBuffer<float> ffn_norm, post_ffw_norm, rope_inv_freq;
  };
  // Scratch of one forward call (grown, never shrunk) and the batch's metadata on the device.
  struct Scratch {
    DeviceBuffer<float> x, xn, xr, xd, q, k, v, attn, o, gate, up, rows, logits;
    DeviceBuffer<int8_t> xq;
    DeviceBuffer<int32_t> tokens, pos, seq, out_rows, hidden_rows;
    DeviceBuffer<int32_t> table[kMaxKvGroups], off[kMaxKvGroups];
  };

  // y [n, rows] = x [n, cols] . W^T, x prepared for W's storage first.
  void Project(const DevWeight& w, const float* x, int64_t n, float* y) const;
  void UploadBatch(const Batch& batch) const;

  ModelConfig cfg_;
  DevWeight tok_embd_, output_;
  bool tied_ = false;
  DeviceBuffer<float> output_norm_, gelu_table_;
  std::vector<Layer> layers_;
  cudaStream_t stream_ = nullptr;
  mutable Scratch s_;
  mutable DeviceBuffer<__half> kv_;  // [arena pages, 2, block_tokens, kv_dim]
  mutable const KvArena* kv_arena_ = nullptr;
  mutable cuda::KvGroup groups_[kMaxKvGroups];
};

CudaGemma3Model::CudaGemma3Model(const GgufFile& f, const ModelConfig& cfg) : cfg_(cfg) {
  const int64_t E = cfg.n_embd, D = cfg.head_dim, F = cfg.n_ff;
  if (D % 64 != 0 || D > 256) {
    throw ModelError(f.path() + ": head_dim " + std::to_string(D) +
                     " is not run by the CUDA backend (multiples of 64 up to 256)");
  }
  if (cfg.n_head % cfg.n_head_kv != 0) {
    throw ModelError(f.path() + ": query heads are not a multiple of KV heads");
  }
  PYE_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TensorView out = Bind(f, "output.weight", {E, cfg.n_vocab}, /*optional=*/true);
  tied_ = out.data == nullptr;
  output_ = cuda::Upload(f.path(), tied_ ? Bind(f, "token_embd.weight", {E, cfg.n_vocab}) : out);
  if (!tied_) tok_embd_ = cuda::Upload(f.path(), Bind(f, "token_embd.weight", {E, cfg.n_vocab}));
  output_norm_ = UploadFloats(BindVector(f, "output_norm.weight", E));
  const float* table = GeluFp16Table();
  gelu_table_ = UploadFloats(std::vector<float>(table, table + (1 << 16)));

  layers_.resize(static_cast<size_t>(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    Layer& L = layers_[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    auto mat = [&](const std::string& name, std::vector<int64_t> ne) {
      return cuda::Upload(f.path(), Bind(f, p + name, std::move(ne)));
    };
    auto vec = [&](const std::string& name, int64_t n) {
      return UploadFloats(BindVector(f, p + name, n));
    };
    L.attn_norm = vec("attn_norm.weight", E);
    L.attn_q = mat("attn_q.weight", {E, cfg.q_dim()});
    L.attn_k = mat("attn_k.weight", {E, cfg.kv_dim()});
    L.attn_v = mat("attn_v.weight", {E, cfg.kv_dim()});
    L.attn_output = mat("attn_output.weight", {cfg.q_dim(), E});
    L.attn_q_norm = vec("attn_q_norm.weight", D);
    L.attn_k_norm = vec("attn_k_norm.weight", D);
    L.post_attention_norm = vec("post_attention_norm.weight", E);
    L.ffn_norm = vec("ffn_norm.weight", E);
    L.ffn_gate = mat("ffn_gate.weight", {E, F});
    L.ffn_up = mat("ffn_up.weight", {E, F});
    L.ffn_down = mat("ffn_down.weight", {F, E});
    L.post_ffw_norm = vec("post_ffw_norm.weight", E);
    const bool swa = cfg.layer_is_swa[l];
    L.rope_inv_freq = UploadFloats(RopeInvFreq(D, swa ? cfg.rope_base_swa : cfg.rope_base,
                                               swa ? 1.f : cfg.rope_scale));
  }
  PYE_CUDA(cudaDeviceSynchronize());
}

void CudaGemma3Model::Project(const DevWeight& w, const float* x, int64_t n, float* y) const {
  const int64_t cols = w.m.cols;
  s_.xr.Reserve(static_cast<size_t>(n * cols));
  s_.xq.Reserve(static_cast<size_t>(n * cols));
  s_.xd.Reserve(static_cast<size_t>(n * cols / 32 + 1));
  cuda::PrepareInput(w.m.type, x, n, cols, s_.xr.get(), s_.xq.get(), s_.xd.get(), stream_);
  cuda::MatMul(w.m, s_.xr.get(), s_.xq.get(), s_.xd.get(), n, y, stream_);
}

void CudaGemma3Model::UploadBatch(const Batch& batch) const {
  const KvView& v0 = batch.views[0];
  const KvArena* arena = v0.arena;
  const int64_t page_halves = 2 * arena->block_tokens() * arena->kv_dim();
  if (kv_arena_ != arena) {  // first call: the device copy of the arena
    kv_ = DeviceBuffer<__half>(static_cast<size_t>(arena->n_pages() * page_halves));
    kv_arena_ = arena;
  }
  s_.tokens.Upload(batch.tokens.data(), batch.tokens.size(), stream_);
  s_.pos.Upload(batch.pos.data(), batch.pos.size(), stream_);
  s_.seq.Upload(batch.seq.data(), batch.seq.size(), stream_);
  if (!batch.out_rows.empty()) s_.out_rows.Upload(batch.out_rows.data(), batch.out_rows.size(), stream_);
  if (!batch.hidden_rows.empty()) {
    s_.hidden_rows.Upload(batch.hidden_rows.data(), batch.hidden_rows.size(), stream_);
  }
  // Per group: every sequence's blocks, each as its pages' arena ids.
  const KvLayout& layout = *v0.layout;
  for (int g = 0; g < layout.n_groups; ++g) {
    std::vector<int32_t> table, off;
    for (const KvView& v : batch.views) {
      off.push_back(static_cast<int32_t>(table.size()));
      for (int32_t b : v.table->blocks[g]) {
        for (int p = 0; p < layout.group_pages[g]; ++p) {
          table.push_back(b >= 0 ? static_cast<int32_t>(arena->page_id(b, p)) : -1);
        }
      }
    }
    if (table.empty()) table.push_back(-1);
    s_.table[g].Upload(table.data(), table.size(), stream_);
    s_.off[g].Upload(off.data(), off.size(), stream_);
    groups_[g] = {s_.table[g].get(), s_.off[g].get(), layout.group_pages[g]};
  }
  // The host vectors above are freed on return: wait until the copies have read them.
  PYE_CUDA(cudaStreamSynchronize(stream_));
}

void CudaGemma3Model::Forward(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
                              float* hidden) const {
  const ModelConfig& c = cfg_;
  const int64_t n = batch.size();
  if (n <= 0) return;
  for (int64_t t = 0; t < n; ++t) {
    if (batch.tokens[t] < 0 || batch.tokens[t] >= c.n_vocab) {
      throw EngineError("token id " + std::to_string(batch.tokens[t]) + " is outside the vocabulary");
    }
    if (batch.pos[t] < 0 || batch.pos[t] >= batch.views[batch.seq[t]].capacity()) {
      throw EngineError("position " + std::to_string(batch.pos[t]) + " has no KV block");
    }
  }
  const int64_t E = c.n_embd, F = c.n_ff, QD = c.q_dim(), KVD = c.kv_dim(), D = c.head_dim;
  UploadBatch(batch);
  for (auto* b : {&s_.x, &s_.xn, &s_.o}) b->Reserve(static_cast<size_t>(n * E));
  for (auto* b : {&s_.q, &s_.attn}) b->Reserve(static_cast<size_t>(n * QD));
  for (auto* b : {&s_.k, &s_.v}) b->Reserve(static_cast<size_t>(n * KVD));
  for (auto* b : {&s_.gate, &s_.up}) b->Reserve(static_cast<size_t>(n * F));
  float *x = s_.x.get(), *xn = s_.xn.get(), *o = s_.o.get();

  cuda::Embed(tied_ ? output_.m : tok_embd_.m, s_.tokens.get(), n,
              std::sqrt(static_cast<float>(E)), x, stream_);
  const KvLayout& layout = *batch.views[0].layout;
  cuda::KvArgs kv{kv_.get(), s_.seq.get(), s_.pos.get(),
                  static_cast<int>(kv_arena_->block_tokens()), static_cast<int>(KVD)};
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    const int g = layout.group_of_layer[static_cast<size_t>(l)];
    const int page = layout.page_of_layer[static_cast<size_t>(l)];
    const int window = c.layer_is_swa[l] ? static_cast<int>(c.sliding_window) : 0;

    cuda::RmsNorm(x, L.attn_norm.get(), n, E, c.rms_eps, xn, stream_);
    Project(L.attn_q, xn, n, s_.q.get());
    Project(L.attn_k, xn, n, s_.k.get());
    Project(L.attn_v, xn, n, s_.v.get());
    cuda::PrepareQkv(s_.q.get(), s_.k.get(), s_.v.get(), n, static_cast<int>(c.n_head),
                     static_cast<int>(c.n_head_kv), static_cast<int>(D), L.attn_q_norm.get(),
                     L.attn_k_norm.get(), L.rope_inv_freq.get(), c.attn_scale, c.rms_eps,
                     /*write_kv=*/true, /*v_norm=*/false, kv, groups_[g], page, stream_);
    cuda::Attend(s_.q.get(), s_.attn.get(), n, static_cast<int>(c.n_head),
                 static_cast<int>(c.n_head_kv), static_cast<int>(D), window, kv, groups_[g], page,
                 stream_);
    Project(L.attn_output, s_.attn.get(), n, o);
    cuda::RmsNorm(o, L.post_attention_norm.get(), n, E, c.rms_eps, o, stream_);
    cuda::Add(x, o, n * E, stream_);

    cuda::RmsNorm(x, L.ffn_norm.get(), n, E, c.rms_eps, xn, stream_);
    Project(L.ffn_gate, xn, n, s_.gate.get());
    Project(L.ffn_up, xn, n, s_.up.get());
    cuda::GeluMul(s_.gate.get(), s_.up.get(), gelu_table_.get(), n * F, stream_);
    Project(L.ffn_down, s_.gate.get(), n, o);
    cuda::RmsNorm(o, L.post_ffw_norm.get(), n, E, c.rms_eps, o, stream_);
    cuda::Add(x, o, n * E, stream_);
  }

  const int64_t n_hidden = static_cast<int64_t>(batch.hidden_rows.size());
  if (hidden && n_hidden > 0) {
    s_.rows.Reserve(static_cast<size_t>(n_hidden * E));
    cuda::GatherRows(x, s_.hidden_rows.get(), n_hidden, E, s_.rows.get(), stream_);
    cuda::RmsNorm(s_.rows.get(), output_norm_.get(), n_hidden, E, c.rms_eps, s_.rows.get(), stream_);
    PYE_CUDA(cudaMemcpyAsync(hidden, s_.rows.get(), n_hidden * E * sizeof(float),
                             cudaMemcpyDeviceToHost, stream_));
    PYE_CUDA(cudaStreamSynchronize(stream_));
  }
  const int64_t n_out = static_cast<int64_t>(batch.out_rows.size());
  if (out && n_out > 0) {
    s_.rows.Reserve(static_cast<size_t>(n_out * E));
    s_.logits.Reserve(static_cast<size_t>(n_out * c.n_vocab));
    cuda::GatherRows(x, s_.out_rows.get(), n_out, E, s_.rows.get(), stream_);
    cuda::RmsNorm(s_.rows.get(), output_norm_.get(), n_out, E, c.rms_eps, s_.rows.get(), stream_);
    Project(output_, s_.rows.get(), n_out, s_.logits.get());
    if (c.final_softcap > 0) cuda::Softcap(s_.logits.get(), n_out * c.n_vocab, c.final_softcap, stream_);
    PYE_CUDA(cudaMemcpyAsync(out, s_.logits.get(), n_out * c.n_vocab * sizeof(float),
                             cudaMemcpyDeviceToHost, stream_));
  }
  PYE_CUDA(cudaStreamSynchronize(stream_));
}

}  // namespace

bool CudaAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string CudaDeviceInfo() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(e);
  if (n == 0) return "no CUDA device";
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return "a CUDA device (properties unreadable)";
  return std::string(p.name) + " (compute capability " + std::to_string(p.major) + "." +
         std::to_string(p.minor) + ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

std::unique_ptr<Model> LoadCudaModel(const GgufFile& file, const ModelConfig& config) {
  if (!CudaAvailable()) throw EngineError("CUDA backend: " + CudaDeviceInfo());
  if (config.arch != "gemma3") {
    throw ModelError(file.path() + ": the CUDA backend runs gemma3 so far, not " + config.arch);
  }
  return std::make_unique<CudaGemma3Model>(file, config);
}

}  // namespace pyengine
