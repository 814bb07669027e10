#include "model/gemma3.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/errors.h"
#include "core/gguf.h"
#include "core/thread_pool.h"
#include "model/architecture.h"
#include "model/ops.h"
#include "model/tensor_table.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"

namespace pyengine {
namespace {

// Per-token work is split over the pool only when there are enough tokens to pay for it.
constexpr int64_t kMinTokens = 8;

}  // namespace

Gemma3Model::Gemma3Model(const GgufFile& f, const ModelConfig& cfg, ThreadPool& pool)
    : cfg_(cfg), pool_(pool) {
  CheckHeadGrouping(f, cfg);
  // Matrices are bound first and packed together at the end, into one arena.
  using I = TensorId;
  const ModelTensors t(f, cfg, TensorTableOf(cfg.arch));
  WeightPacker packer;
  BindEmbeddings(t, packer, &tok_embd_, &output_, &tied_);
  output_norm_ = t.Floats(I::kOutputNorm);

  layers_.resize(static_cast<size_t>(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; ++l) layers_[l].Bind(t, cfg, l, packer);
  arena_ = packer.Pack(f, pool);
}

void Gemma3Model::Run(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
                          float* hidden) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, F = c.n_ff, QD = c.q_dim();
  const int64_t n = batch.size();
  if (n <= 0) return;
  PrepareBatch(c, batch, ws, pool);
  float* x = ws.x.data();

  Embed(c, batch, tok_embd_, output_, tied_, x);

  const KernelSet& kernels = ActiveKernels();
  // Row-wise helpers over all n tokens, split over the pool when n is large enough.
  auto norm_rows = [&](const float* in, const std::vector<float>& w, float* o) {
    NormRows(in, w.data(), n, E, c.rms_eps, o, pool);
  };
  auto add_rows = [&](const float* o) {  // x += o
    ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
      for (int64_t i = t0 * E; i < t1 * E; ++i) x[i] += o[i];
    });
  };

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    // Attention block.
    norm_rows(x, L.attn_norm, ws.xn.data());
    ws.in.Set(ws.xn.data(), n, E);
    const MatMulJob qkv[] = {{&L.attn_q, &ws.in, ws.q.data()}, {&L.attn_k, &ws.in, ws.k.data()},
                             {&L.attn_v, &ws.in, ws.v.data()}};
    MatMulMany(qkv, 3, pool);
    PrepareQkv(c, l, batch, ws, L.attn_q_norm.data(), L.attn_k_norm.data(),
               L.rope_inv_freq.data(), /*write_kv=*/true, /*v_norm=*/false, pool);
    Attend(c, l, batch, ws, pool);
    ws.in.Set(ws.attn.data(), n, QD);
    MatMul(L.attn_output, ws.in, ws.o.data(), pool);
    norm_rows(ws.o.data(), L.post_attention_norm, ws.o.data());
    add_rows(ws.o.data());

    // Feed-forward block: gelu_tanh(gate) * up, projected down.
    norm_rows(x, L.ffn_norm, ws.xn.data());
    ws.in.Set(ws.xn.data(), n, E);
    const MatMulJob gate_up[] = {{&L.ffn_gate, &ws.in, ws.gate.data()},
                                 {&L.ffn_up, &ws.in, ws.up.data()}};
    MatMulMany(gate_up, 2, pool);
    ParallelRanges(pool, n * F, 4096, [&](int64_t i0, int64_t i1) {
      kernels.gelu_mul(ws.gate.data() + i0, ws.up.data() + i0, i1 - i0);
    });
    ws.in.Set(ws.gate.data(), n, F);
    MatMul(L.ffn_down, ws.in, ws.o.data(), pool);
    norm_rows(ws.o.data(), L.post_ffw_norm, ws.o.data());
    add_rows(ws.o.data());
  }

  Output(c, batch, x, output_norm_.data(), output_, ws, out, hidden, pool);
}

namespace {

bool HasTensorWithPrefix(const GgufFile& f, const std::string& prefix) {
  for (const TensorView& t : f.tensors()) {
    if (t.name.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

// Context length from which Ollama's blobs of Gemma 3 4B/12B/27B imply linear RoPE scaling x8
// (their converter wrote no rope.scaling keys; the 1B and 270M have 32768 and no scaling).
constexpr int64_t kOllamaScaledContext = 131072;
constexpr double kOllamaImpliedScaling = 8.0;
// What Ollama's older Gemma 3 converter wrote as final_logit_softcapping when the model has
// none (every Gemma 3 text model); it wrote it next to rope.global.freq_base.
constexpr double kOllamaDefaultSoftcap = 30.0;

}  // namespace

bool IsOllamaGemma3(const GgufFile& f) {
  if (f.GetString("general.architecture", "") != "gemma3") return false;
  return f.Find("gemma3.mm.tokens_per_image") || HasTensorWithPrefix(f, "v.") ||
         HasTensorWithPrefix(f, "mm.") || f.Find("gemma3.rope.global.freq_base") ||
         f.Find("gemma3.rope.local.freq_base") || f.Find("tokenizer.ggml.add_padding_token") ||
         f.Find("tokenizer.ggml.add_unknown_token") ||
         !f.Find("gemma3.attention.layer_norm_rms_epsilon");
}

void ConfigureGemma3(const GgufFile& f, ModelConfig& c) {
  RequireUniformLayers(f, c);
  const std::string p = c.arch + ".";
  // Ollama's blobs of the 131072-context models (4B/12B/27B) carry no scaling keys although
  // the models scale linearly by 8; its patch fills in each missing key by context length.
  // Its older engine decided by layer count (34/48/62) instead: where the two rules disagree
  // the scaling cannot be told from the file.
  const bool ollama = IsOllamaGemma3(f);
  const bool implied = ollama && c.n_ctx_train >= kOllamaScaledContext;
  if (ollama && !implied && !f.Find(p + "rope.scaling.type") &&
      !f.Find(p + "rope.scaling.factor") &&
      (c.n_layer == 34 || c.n_layer == 48 || c.n_layer == 62)) {
    f.Fail("key '" + p + "rope.scaling.factor' is missing and cannot be inferred: a " +
           std::to_string(c.n_layer) + "-layer Ollama Gemma 3 blob with a context of " +
           std::to_string(c.n_ctx_train) + " may or may not scale RoPE by 8");
  }
  if (implied && !f.Find(p + "rope.scaling.type")) {
    const double factor = f.GetFloat(p + "rope.scaling.factor", kOllamaImpliedScaling);
    if (!(factor >= 1e-3 && factor <= 1e6)) f.Fail("rope.scaling.factor is out of range");
    c.rope_scale = static_cast<float>(1.0 / factor);
  }
  // Gemma 3 27B (62 layers) scales queries by 1/sqrt(n_embd/n_head), the others by
  // 1/sqrt(head_dim).
  c.attn_scale = c.n_layer == 62 ? 1.f / std::sqrt(static_cast<float>(c.n_embd / c.n_head))
                                 : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  if (!std::isfinite(c.attn_scale)) f.Fail("embedding_length / head_count is zero");
  c.final_softcap = static_cast<float>(f.GetFloat(p + "final_logit_softcapping", 0.0));
  // Ollama's older Gemma 3 converter (the one that wrote rope.global.freq_base) filled in 30
  // where the model has no final softcap (no Gemma 3 has one); its own engine dropped it again.
  if (f.Find(p + "rope.global.freq_base") && c.final_softcap == kOllamaDefaultSoftcap) {
    c.final_softcap = 0.f;
  }
  if (!(c.final_softcap >= 0.f && std::isfinite(c.final_softcap))) {
    f.Fail("final_logit_softcapping is out of range");
  }
  // Five sliding-window layers, then one global, unless the file lists the pattern itself.
  SetLayerPattern(f, c, 6);
}

std::unique_ptr<Model> LoadGemma3(const GgufFile& f, const ModelConfig& c, ThreadPool& pool) {
  return std::make_unique<Gemma3Model>(f, c, pool);
}

}  // namespace pyengine
