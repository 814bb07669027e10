// The Gemma 3n forward pass on a CUDA device: the steps of model/gemma3n.cc in the same order
// and with the same roundings. The per-layer token table stays in the mapped file on the host
// (it is larger than the rest of the model at the real sizes); each step gathers its tokens'
// rows there and uploads them with the batch.
#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_model.h"
#include "cuda/kernels_gemma3n.h"
#include "model/gemma3n.h"
#include "model/ops.h"
#include "model/tensor_table.h"
#include "quant/formats.h"

namespace pyengine {
namespace {

using cuda::DeviceBuffer;
using cuda::DevWeight;

constexpr int kS = Gemma3nModel::kStreams;
constexpr int64_t kPerLayer = Gemma3nModel::kPerLayer;
constexpr int64_t kLaurelRank = Gemma3nModel::kLaurelRank;

// A small coefficient matrix (AltUp's [16, 4] and [4, 4]) as floats, with the type its input is
// rounded to (as on the CPU).
struct DevSmall {
  DeviceBuffer<float> w;
  int rows = 0, cols = 0;
  GgmlType type = GgmlType::kF32;
};

class CudaGemma3nModel : public CudaModel {
 public:
  CudaGemma3nModel(const GgufFile& f, const ModelConfig& cfg);

 protected:
  void ReserveLayers(int64_t n) const override;
  void UploadInputs(const Batch& batch) const override;
  const float* EnqueueLayers(int64_t n, const KvLayout& layout) const override;
  void AddAddresses(std::vector<const void*>* a) const override;

 private:
  // Gemma 3's decoder weights and what Gemma 3n adds to a layer.
  struct Layer : DevBlockWeights {
    DevWeight inp_gate, proj, laurel_l, laurel_r, altup_router;
    DevSmall predict, correct;
    DeviceBuffer<float> post_norm, laurel_post_norm, altup_router_norm, altup_correct_scale;
  };
  // r [n, 4] = tanh(router . RMSNorm(x, router_norm) / n_embd).
  void Route(const Layer& L, const float* x, int64_t n, float* r) const;
  void Small(const DevSmall& s, const float* x, int64_t n, float add, float* y) const;

  TensorView per_layer_tok_embd_;  // [n_vocab_per_layer, n_layer * 256], in the mapped file
  DevWeight per_layer_model_proj_;
  DeviceBuffer<float> per_layer_proj_norm_;
  std::array<DevWeight, kS - 1> altup_proj_, altup_unembd_proj_;
  std::vector<Layer> layers_;
  // Scratch: streams_/pred_ [4, n, E]; xa_ the attention input, t_ a normed or scaled copy,
  // a_ the attention + LAuReL branch, laurel_, o_, h_ [n, E]; small_ [n, 256]; q_/attn_
  // [n, QD]; k_/v_ [n, KVD]; gate_/up_ [n, F]; pl_proj_/pl_rows_ [n, NL * 256] and pl_
  // [NL, n, 256] per-layer inputs; r_ [n, 4], cf_ [n, 16], m_ [n, 4] AltUp coefficients.
  mutable DeviceBuffer<float> streams_, pred_, xa_, t_, a_, laurel_, o_, h_, small_, q_, k_, v_;
  mutable DeviceBuffer<float> attn_, gate_, up_, pl_proj_, pl_rows_, pl_, r_, cf_, m_;
  mutable std::vector<float> host_rows_;
};

CudaGemma3nModel::CudaGemma3nModel(const GgufFile& f, const ModelConfig& cfg) : CudaModel(f, cfg) {
  using I = TensorId;
  const int64_t NL = cfg.n_layer;
  const ModelTensors t(f, cfg, TensorTableOf(cfg.arch));
  auto upload = [&](const TensorView& v) { return cuda::Upload(f.path(), v); };
  auto mat = [&](I id, int64_t l) { return upload(t.Get(id, l)); };
  auto vec = [&](I id, int64_t l) { return cuda::UploadFloats(t.Floats(id, l)); };
  auto small = [&](I id, int64_t l) {
    const TensorView& v = t.Get(id, l);
    DevSmall s;
    s.type = v.type;
    s.w = cuda::UploadFloats(t.Floats(id, l));
    s.rows = static_cast<int>(v.rows());
    s.cols = static_cast<int>(v.cols());
    return s;
  };
  per_layer_tok_embd_ = t.Get(I::kPerLayerTokEmbd);
  per_layer_model_proj_ = mat(I::kPerLayerModelProj, -1);
  per_layer_proj_norm_ = vec(I::kPerLayerProjNorm, -1);
  for (int k = 0; k < kS - 1; ++k) {
    altup_proj_[k] = upload(Slice(t.Get(I::kAltupProj), k));
    altup_unembd_proj_[k] = upload(Slice(t.Get(I::kAltupUnembdProj), k));
  }
  layers_.resize(static_cast<size_t>(NL));
  for (int64_t l = 0; l < NL; ++l) {
    Layer& L = layers_[l];
    L.Upload(f, t, cfg, l);
    L.inp_gate = mat(I::kInpGate, l);
    L.proj = mat(I::kProj, l);
    L.post_norm = vec(I::kPostNorm, l);
    L.laurel_l = mat(I::kLaurelL, l);
    L.laurel_r = mat(I::kLaurelR, l);
    L.laurel_post_norm = vec(I::kLaurelPostNorm, l);
    L.altup_router = mat(I::kAltupRouter, l);
    L.altup_router_norm = vec(I::kAltupRouterNorm, l);
    L.predict = small(I::kAltupPredictCoef, l);
    L.correct = small(I::kAltupCorrectCoef, l);
    L.altup_correct_scale = vec(I::kAltupCorrectScale, l);
  }
}

void CudaGemma3nModel::ReserveLayers(int64_t n) const {
  const int64_t E = cfg_.n_embd, F = cfg_.n_ff, QD = cfg_.q_dim(), KVD = cfg_.kv_dim();
  const int64_t NL = cfg_.n_layer;
  for (auto* b : {&streams_, &pred_}) b->Reserve(static_cast<size_t>(kS * n * E));
  for (auto* b : {&xa_, &t_, &a_, &laurel_, &o_, &h_}) b->Reserve(static_cast<size_t>(n * E));
  small_.Reserve(static_cast<size_t>(n * kPerLayer));
  for (auto* b : {&q_, &attn_}) b->Reserve(static_cast<size_t>(n * QD));
  for (auto* b : {&k_, &v_}) b->Reserve(static_cast<size_t>(n * KVD));
  for (auto* b : {&gate_, &up_}) b->Reserve(static_cast<size_t>(n * F));
  for (auto* b : {&pl_proj_, &pl_rows_, &pl_}) b->Reserve(static_cast<size_t>(n * NL * kPerLayer));
  r_.Reserve(static_cast<size_t>(n * kS));
  cf_.Reserve(static_cast<size_t>(n * kS * kS));
  m_.Reserve(static_cast<size_t>(n * kS));
  ReserveInput(n, std::max({E, QD, F, kPerLayer}));
}

void CudaGemma3nModel::AddAddresses(std::vector<const void*>* a) const {
  for (const auto* b : {&streams_, &pred_, &xa_, &t_, &a_, &laurel_, &o_, &h_, &small_, &q_,
                        &k_, &v_, &attn_, &gate_, &up_, &pl_proj_, &pl_rows_, &pl_, &r_, &cf_,
                        &m_}) {
    a->push_back(b->get());
  }
}

void CudaGemma3nModel::UploadInputs(const Batch& batch) const {
  const int64_t width = cfg_.n_layer * kPerLayer, n = batch.size();
  host_rows_.resize(static_cast<size_t>(n * width));
  for (int64_t t = 0; t < n; ++t) {
    float* dst = host_rows_.data() + t * width;
    // Ids past the table (Ollama's blobs: the multimodal tokens) have a zero row, as in
    // llama.cpp's files.
    if (batch.tokens[t] < cfg_.n_vocab_per_layer) {
      DequantizeRow(per_layer_tok_embd_.type, per_layer_tok_embd_.row(batch.tokens[t]), dst,
                    width);
    } else {
      std::fill(dst, dst + width, 0.f);
    }
  }
  pl_rows_.Reserve(static_cast<size_t>(n * width));  // before the copy: Reserve discards
  PYE_CUDA(cudaMemcpyAsync(pl_rows_.get(), host_rows_.data(), host_rows_.size() * sizeof(float),
                           cudaMemcpyHostToDevice, stream_));
}

void CudaGemma3nModel::Route(const Layer& L, const float* x, int64_t n, float* r) const {
  const int64_t E = cfg_.n_embd;
  cuda::RmsNormScaled(x, L.altup_router_norm.get(), n, E, cfg_.rms_eps,
                      1.f / static_cast<float>(E), t_.get(), stream_);
  Project(L.altup_router, t_.get(), n, r);
  cuda::Tanh(r, n * kS, stream_);
}

void CudaGemma3nModel::Small(const DevSmall& s, const float* x, int64_t n, float add,
                             float* y) const {
  cuda::SmallMatVec(s.w.get(), s.rows, s.cols, s.type == GgmlType::kF16,
                    s.type == GgmlType::kBF16, x, n, add, y, stream_);
}

const float* CudaGemma3nModel::EnqueueLayers(int64_t n, const KvLayout& layout) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, F = c.n_ff, NL = c.n_layer;
  const int H = static_cast<int>(c.n_head), HKV = static_cast<int>(c.n_head_kv);
  const int D = static_cast<int>(c.head_dim);
  const float half = 1.f / std::sqrt(2.f);
  float* S = streams_.get();  // [4, n, E]
  float* P = pred_.get();     // [4, n, E]
  auto stream = [&](float* base, int k) { return base + k * n * E; };
  float* S0 = stream(S, 0);

  // Stream 0: the token embedding scaled by sqrt(n_embd); streams 1..3 its projections,
  // rescaled to its magnitude.
  EnqueueEmbed(n, S0);
  for (int k = 1; k < kS; ++k) {
    Project(altup_proj_[k - 1], S0, n, stream(S, k));
    cuda::MatchMagnitude(S0, stream(S, k), n, E, stream_);
  }
  // Per-layer inputs, layer-major [NL, n, 256].
  Project(per_layer_model_proj_, S0, n, pl_proj_.get());
  cuda::PerLayerInputs(pl_proj_.get(), pl_rows_.get(), per_layer_proj_norm_.get(), n,
                       static_cast<int>(NL), c.rms_eps, 1.f / std::sqrt(static_cast<float>(E)),
                       std::sqrt(static_cast<float>(kPerLayer)), pl_.get(), stream_);

  const cuda::KvArgs kv = Kv();
  for (int64_t l = 0; l < NL; ++l) {
    const Layer& L = layers_[l];
    const int g = layout.group_of_layer[static_cast<size_t>(l)];
    const int page = layout.page_of_layer[static_cast<size_t>(l)];
    const int window = c.layer_is_swa[l] ? static_cast<int>(c.sliding_window) : 0;
    // AltUp predict: P_j = S_j + sum_k c[j][k] S_k with c from the router on stream 0.
    Route(L, S0, n, r_.get());
    Small(L.predict, r_.get(), n, 0.f, cf_.get());
    cuda::AltUpPredict(S, cf_.get(), P, n, E, stream_);
    float* P0 = stream(P, 0);
    cuda::RmsNorm(P0, L.attn_norm.get(), n, E, c.rms_eps, xa_.get(), stream_);

    // LAuReL: xa + RMSNorm(laurel_r . laurel_l . xa); attention projections of xa.
    if (L.owns_kv) {
      Project({{&L.attn_q, q_.get()}, {&L.attn_k, k_.get()}, {&L.attn_v, v_.get()},
               {&L.laurel_l, small_.get()}}, xa_.get(), n);
    } else {
      Project({{&L.attn_q, q_.get()}, {&L.laurel_l, small_.get()}}, xa_.get(), n);
    }
    Project(L.laurel_r, small_.get(), n, laurel_.get());
    cuda::RmsNorm(laurel_.get(), L.laurel_post_norm.get(), n, E, c.rms_eps, laurel_.get(),
                  stream_);
    // Attention over this layer's (or the sharing source's) keys and values; scale 1.
    cuda::PrepareQkv(q_.get(), k_.get(), v_.get(), n, H, HKV, D, L.attn_q_norm.get(),
                     L.attn_k_norm.get(), L.rope_inv_freq.get(), c.attn_scale, c.rms_eps,
                     /*write_kv=*/L.owns_kv, /*v_norm=*/true, kv, groups_[g], page, stream_);
    cuda::Attend(q_.get(), attn_.get(), n, H, HKV, D, window, kv, groups_[g], page,
                 AttnScratch(), stream_);
    Project(L.attn_output, attn_.get(), n, o_.get());
    cuda::RmsNorm(o_.get(), L.post_attention_norm.get(), n, E, c.rms_eps, o_.get(), stream_);
    cuda::Combine(o_.get(), P0, laurel_.get(), xa_.get(), half, a_.get(), n * E, stream_);

    // Feed-forward with activation sparsity in the first layers.
    cuda::RmsNorm(a_.get(), L.ffn_norm.get(), n, E, c.rms_eps, t_.get(), stream_);
    Project({{&L.ffn_up, up_.get()}, {&L.ffn_gate, gate_.get()}}, t_.get(), n);
    if (l < Gemma3nModel::kSparseLayers) {
      cuda::Sparsify(gate_.get(), n, F, Gemma3nModel::kSparsityStd, stream_);
    }
    ProjectGelu(L.ffn_down, gate_.get(), up_.get(), n, o_.get());
    cuda::RmsNorm(o_.get(), L.post_ffw_norm.get(), n, E, c.rms_eps, o_.get(), stream_);
    cuda::Add(o_.get(), a_.get(), n * E, stream_);  // the layer's output on the active stream

    // AltUp correct: S_j = P_j + (c[j] + 1) (o - P0), c from the router on o.
    Route(L, o_.get(), n, r_.get());
    Small(L.correct, r_.get(), n, 1.f, m_.get());
    cuda::AltUpCorrect(S, P, o_.get(), m_.get(), n, E, stream_);

    // Per-layer input: RMSNorm(proj . (gelu(inp_gate . (S0 * scale)) * PL[l])), added to
    // streams 1..3.
    cuda::MulVec(S0, L.altup_correct_scale.get(), n, E, t_.get(), stream_);
    Project(L.inp_gate, t_.get(), n, small_.get());
    cuda::GeluMul(small_.get(), pl_.get() + l * n * kPerLayer, gelu_table_.get(), n * kPerLayer,
                  stream_);
    Project(L.proj, small_.get(), n, o_.get());
    cuda::RmsNorm(o_.get(), L.post_norm.get(), n, E, c.rms_eps, o_.get(), stream_);
    for (int k = 1; k < kS; ++k) cuda::Add(stream(S, k), o_.get(), n * E, stream_);
  }

  // Unembedding: streams 1..3 projected back and rescaled to stream 0's magnitude, then the
  // mean of the four.
  float* h = h_.get();
  PYE_CUDA(cudaMemcpyAsync(h, S0, n * E * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  for (int k = 1; k < kS; ++k) {
    Project(altup_unembd_proj_[k - 1], stream(S, k), n, laurel_.get());
    cuda::MatchMagnitude(S0, laurel_.get(), n, E, stream_);
    cuda::Add(h, laurel_.get(), n * E, stream_);
  }
  cuda::Scale(h, n * E, 1.f / kS, stream_);
  return h;
}

}  // namespace

std::unique_ptr<Model> MakeCudaGemma3n(const GgufFile& f, const ModelConfig& cfg) {
  return std::make_unique<CudaGemma3nModel>(f, cfg);
}

}  // namespace pyengine
