// The Gemma 3 forward pass on a CUDA device: the steps of model/gemma3.cc, each a kernel of
// cuda/kernels.cu, over keys and values in the device copy of the KV arena (see CudaModel).
#include <algorithm>
#include <string>
#include <vector>

#include "cuda/cuda_model.h"
#include "model/ops.h"
#include "model/tensor_table.h"

namespace pyengine {
namespace {

using cuda::DeviceBuffer;
using cuda::DevWeight;

class CudaGemma3Model : public CudaModel {
 public:
  CudaGemma3Model(const GgufFile& f, const ModelConfig& cfg);

 protected:
  void ReserveLayers(int64_t n) const override;
  const float* EnqueueLayers(int64_t n, const KvLayout& layout) const override;
  void AddAddresses(std::vector<const void*>* a) const override;

 private:
  using Layer = DevBlockWeights;
  std::vector<Layer> layers_;
  // Scratch: x [n, E] residual stream, xn its normed copy, o a sub-block's output, q/attn
  // [n, QD], k/v [n, KVD], gate/up [n, F].
  mutable DeviceBuffer<float> x_, xn_, o_, q_, k_, v_, attn_, gate_, up_;
};

CudaGemma3Model::CudaGemma3Model(const GgufFile& f, const ModelConfig& cfg) : CudaModel(f, cfg) {
  const ModelTensors t(f, cfg, TensorTableOf(cfg.arch));
  layers_.resize(static_cast<size_t>(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; ++l) layers_[l].Upload(f, t, cfg, l);
}

void CudaGemma3Model::ReserveLayers(int64_t n) const {
  const int64_t E = cfg_.n_embd, F = cfg_.n_ff, QD = cfg_.q_dim(), KVD = cfg_.kv_dim();
  for (auto* b : {&x_, &xn_, &o_}) b->Reserve(static_cast<size_t>(n * E));
  for (auto* b : {&q_, &attn_}) b->Reserve(static_cast<size_t>(n * QD));
  for (auto* b : {&k_, &v_}) b->Reserve(static_cast<size_t>(n * KVD));
  for (auto* b : {&gate_, &up_}) b->Reserve(static_cast<size_t>(n * F));
  ReserveInput(n, std::max({E, QD, F}));
}

void CudaGemma3Model::AddAddresses(std::vector<const void*>* a) const {
  for (const auto* b : {&x_, &xn_, &o_, &q_, &k_, &v_, &attn_, &gate_, &up_}) a->push_back(b->get());
}

const float* CudaGemma3Model::EnqueueLayers(int64_t n, const KvLayout& layout) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd;
  const int H = static_cast<int>(c.n_head), HKV = static_cast<int>(c.n_head_kv);
  const int D = static_cast<int>(c.head_dim);
  float *x = x_.get(), *xn = xn_.get(), *o = o_.get();
  EnqueueEmbed(n, x);
  const cuda::KvArgs kv = Kv();
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    const int g = layout.group_of_layer[static_cast<size_t>(l)];
    const int page = layout.page_of_layer[static_cast<size_t>(l)];
    const int window = c.layer_is_swa[l] ? static_cast<int>(c.sliding_window) : 0;

    // Attention block.
    NormProject(x, L.attn_norm.get(), n, xn,
                {{&L.attn_q, q_.get()}, {&L.attn_k, k_.get()}, {&L.attn_v, v_.get()}});
    cuda::PrepareQkv(q_.get(), k_.get(), v_.get(), n, H, HKV, D, L.attn_q_norm.get(),
                     L.attn_k_norm.get(), L.rope_inv_freq.get(), c.attn_scale, c.rms_eps,
                     /*write_kv=*/true, /*v_norm=*/false, kv, groups_[g], page, stream_);
    cuda::Attend(q_.get(), attn_.get(), n, H, HKV, D, window, kv, groups_[g], page,
                 AttnScratch(), stream_);
    Project(L.attn_output, attn_.get(), n, o);
    cuda::RmsNormAdd(o, L.post_attention_norm.get(), n, E, c.rms_eps, x, stream_);

    // Feed-forward block: gelu_tanh(gate) * up, projected down.
    NormProject(x, L.ffn_norm.get(), n, xn, {{&L.ffn_gate, gate_.get()}, {&L.ffn_up, up_.get()}});
    ProjectGelu(L.ffn_down, gate_.get(), up_.get(), n, o);
    cuda::RmsNormAdd(o, L.post_ffw_norm.get(), n, E, c.rms_eps, x, stream_);
  }
  return x;
}

}  // namespace

std::unique_ptr<Model> MakeCudaGemma3(const GgufFile& f, const ModelConfig& cfg) {
  return std::make_unique<CudaGemma3Model>(f, cfg);
}

}  // namespace pyengine
