#include "model/gemma4.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/errors.h"
#include "core/gguf.h"
#include "core/thread_pool.h"
#include "model/architecture.h"
#include "model/tensor_table.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"

namespace pyengine {
namespace {

constexpr int64_t kMinTokens = 8;  // per-token work is split over the pool from this many
// Weights of the chosen experts are divided by their sum, kept at least the smallest normal
// fp16 (llama.cpp's guard against a zero sum).
constexpr float kMinWeightSum = 6.103515625e-5f;

}  // namespace

Gemma4Model::Gemma4Model(const GgufFile& f, const ModelConfig& cfg, ThreadPool& pool)
    : cfg_(cfg), pool_(pool) {
  CheckHeadGrouping(f, cfg);
  using I = TensorId;
  const ModelTensors t(f, cfg, TensorTableOf(cfg.arch));
  WeightPacker packer;
  BindEmbeddings(t, packer, &tok_embd_, &output_, &tied_);
  output_norm_ = t.Floats(I::kOutputNorm);
  if (cfg.n_embd_per_layer > 0) {
    per_layer_.table = t.Get(I::kPerLayerTokEmbd);  // stays mapped: a token reads one row
    packer.Add(t.Get(I::kPerLayerModelProj), &per_layer_.model_proj);
    per_layer_.norm = t.Floats(I::kPerLayerProjNorm);
  }
  // Proportional RoPE: the full layers divide their frequencies by these factors (1e30 leaves a
  // pair unrotated).
  std::vector<float> freq_factors;
  if (t.Get(I::kRopeFreqs).data) freq_factors = t.Floats(I::kRopeFreqs);

  layers_.resize(static_cast<size_t>(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    Layer& L = layers_[l];
    L.Bind(t, cfg, l, packer);
    L.has_v = t.Get(I::kAttnV, l).data != nullptr;
    if (cfg.kv_layer[l] == l && !t.Get(I::kAttnK, l).data) {
      throw ModelError(f.path() + ": layer " + std::to_string(l) + " computes its own keys but has no " +
                       TensorName(*FindSpec(TensorTableOf(cfg.arch), I::kAttnK), l));
    }
    if (!cfg.layer_is_swa[l]) {
      for (size_t i = 0; i < L.rope_inv_freq.size(); ++i) L.rope_inv_freq[i] /= freq_factors[i];
    }
    if (cfg.n_embd_per_layer > 0) {
      packer.Add(t.Get(I::kInpGate, l), &L.inp_gate);
      packer.Add(t.Get(I::kProj, l), &L.proj);
      L.post_norm = t.Floats(I::kPostNorm, l);
    }
    if (t.Get(I::kLayerOutputScale, l).data) L.out_scale = t.Floats(I::kLayerOutputScale, l)[0];
    if (cfg.layer_is_moe.empty() || !cfg.layer_is_moe[l]) continue;

    auto X = std::make_unique<Experts>();
    packer.Add(t.Get(I::kFfnGateInp, l), &X->router);
    X->router_scale = t.Floats(I::kFfnGateInpScale, l);
    X->pre_norm = t.Floats(I::kPreFfwNorm2, l);
    X->post_norm_shared = t.Floats(I::kPostFfwNorm1, l);
    X->post_norm = t.Floats(I::kPostFfwNorm2, l);
    const TensorView& gate_up = t.Get(I::kFfnGateUpExps, l);
    const TensorView& gate = t.Get(I::kFfnGateExps, l);
    const TensorView& up = t.Get(I::kFfnUpExps, l);
    if (!gate_up.data && !(gate.data && up.data)) {
      const TensorTable& table = TensorTableOf(cfg.arch);
      throw ModelError(f.path() + ": MoE layer " + std::to_string(l) + " has neither " +
                       TensorName(*FindSpec(table, I::kFfnGateUpExps), l) + " nor both " +
                       TensorName(*FindSpec(table, I::kFfnGateExps), l) + " and " +
                       TensorName(*FindSpec(table, I::kFfnUpExps), l));
    }
    const int64_t NX = cfg.n_expert;
    if (gate_up.data) X->gate_up.resize(NX);
    else X->gate.resize(NX), X->up.resize(NX);
    X->down.resize(NX);
    for (int64_t e = 0; e < NX; ++e) {
      if (gate_up.data) {
        packer.Add(Slice(gate_up, e), &X->gate_up[e]);
      } else {
        packer.Add(Slice(gate, e), &X->gate[e]);
        packer.Add(Slice(up, e), &X->up[e]);
      }
      packer.Add(Slice(t.Get(I::kFfnDownExps, l), e), &X->down[e]);
    }
    for (I id : {I::kFfnDownExpsScale, I::kFfnExpertScaleOllama}) {
      if (t.Get(id, l).data) X->down_scale = t.Floats(id, l);
    }
    L.moe = std::move(X);
  }
  arena_ = packer.Pack(f, pool);
}

void Gemma4Model::DenseFfn(const Layer& L, int64_t l, const float* xn, int64_t n, float* o,
                           Workspace& ws, ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd, F = cfg_.n_ff_at(l);
  const KernelSet& kernels = ActiveKernels();
  ws.in.Set(xn, n, E);
  const MatMulJob gate_up[] = {{&L.ffn_gate, &ws.in, ws.gate.data()},
                               {&L.ffn_up, &ws.in, ws.up.data()}};
  MatMulMany(gate_up, 2, pool);
  ParallelRanges(pool, n * F, 4096, [&](int64_t i0, int64_t i1) {
    kernels.gelu_mul(ws.gate.data() + i0, ws.up.data() + i0, i1 - i0);
  });
  ws.in.Set(ws.gate.data(), n, F);
  MatMul(L.ffn_down, ws.in, o, pool);
}

void Gemma4Model::Route(const Experts& X, const float* a, int64_t n, Workspace& ws,
                        ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd, NX = cfg_.n_expert, K = cfg_.n_expert_used;
  // The router reads RMSNorm(a) (no weight) / sqrt(E) * router_scale.
  const float inv_sqrt_e = 1.f / std::sqrt(static_cast<float>(E));
  float* xr = ws.moe_in.data();
  ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
    RmsNorm(a + t0 * E, nullptr, t1 - t0, E, cfg_.rms_eps, xr + t0 * E);
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t i = 0; i < E; ++i) xr[t * E + i] = xr[t * E + i] * inv_sqrt_e * X.router_scale[i];
    }
  });
  ws.in.Set(xr, n, E);
  MatMul(X.router, ws.in, ws.router.data(), pool);
  // Softmax over all experts, the K most probable (best first), their weights renormalised.
  for (int64_t t = 0; t < n; ++t) {
    float* p = ws.router.data() + t * NX;
    const float mx = *std::max_element(p, p + NX);
    double sum = 0;
    for (int64_t e = 0; e < NX; ++e) sum += (p[e] = std::exp(p[e] - mx));
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t e = 0; e < NX; ++e) p[e] *= inv;
    int32_t* ids = ws.expert_of.data() + t * K;
    std::vector<int32_t>& order = ws.moe_rank;
    order.resize(static_cast<size_t>(NX));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int32_t x, int32_t y) { return p[x] > p[y] || (p[x] == p[y] && x < y); });
    float wsum = 0;
    for (int64_t k = 0; k < K; ++k) wsum += p[ids[k] = order[k]];
    wsum = std::max(wsum, kMinWeightSum);
    for (int64_t k = 0; k < K; ++k) ws.expert_w[t * K + k] = p[ids[k]] / wsum;
  }
}

void Gemma4Model::ExpertFfn(const Experts& X, const float* a, int64_t n, float* out,
                            Workspace& ws, ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd, NX = cfg_.n_expert, K = cfg_.n_expert_used, FX = cfg_.n_ff_exp;
  const KernelSet& kernels = ActiveKernels();
  Grow(ws.router, n * NX);
  Grow(ws.moe_in, n * K * E);
  Grow(ws.moe_gu, n * K * 2 * FX);
  Grow(ws.moe_up, n * K * FX);
  Grow(ws.moe_down, n * K * E);
  Grow(ws.moe_out, n * K * E);
  if (ws.expert_of.size() < static_cast<size_t>(n * K)) ws.expert_of.resize(static_cast<size_t>(n * K));
  Grow(ws.expert_w, n * K);
  Route(X, a, n, ws, pool);
  // The experts' input: RMSNorm(a, pre_ffw_norm_2), in ws.xn.
  float* xe = ws.xn.data();
  NormRows(a, X.pre_norm.data(), n, E, cfg_.rms_eps, xe, pool);
  // Rows grouped by expert: order[r] is the (token * K + slot) pair of row r; each chosen
  // expert's rows are contiguous, [start[i], start[i + 1]) for the i-th active expert.
  // (Kept in the workspace: a decoding step allocates nothing.)
  std::vector<int64_t>& order = ws.moe_rows;
  std::vector<int64_t>& start = ws.moe_start;
  std::vector<int32_t>& active = ws.moe_active;
  order.clear();
  start.assign(1, 0);
  active.clear();
  for (int64_t e = 0; e < NX; ++e) {
    for (int64_t i = 0; i < n * K; ++i) {
      if (ws.expert_of[i] == e) order.push_back(i);
    }
    if (static_cast<int64_t>(order.size()) > start.back()) {
      active.push_back(static_cast<int32_t>(e));
      start.push_back(static_cast<int64_t>(order.size()));
    }
  }
  const int64_t rows = static_cast<int64_t>(order.size());
  for (int64_t r = 0; r < rows; ++r) std::copy_n(xe + order[r] / K * E, E, ws.moe_in.data() + r * E);
  const size_t n_active = active.size();
  if (ws.moe_x.size() < n_active) ws.moe_x.resize(n_active);
  if (ws.moe_act.size() < n_active) ws.moe_act.resize(n_active);

  // Every chosen expert's gate and up in one pass over the pool, then its down in another:
  // a decoding token's k experts are k small products each.
  std::vector<MatMulJob>& jobs = ws.moe_jobs;
  jobs.clear();
  const bool fused = !X.gate_up.empty();
  for (size_t i = 0; i < n_active; ++i) {
    const int64_t r0 = start[i], e = active[i];
    ws.moe_x[i].Set(ws.moe_in.data() + r0 * E, start[i + 1] - r0, E);
    if (fused) {
      jobs.push_back({&X.gate_up[e], &ws.moe_x[i], ws.moe_gu.data() + r0 * 2 * FX});
    } else {
      jobs.push_back({&X.gate[e], &ws.moe_x[i], ws.moe_gu.data() + r0 * FX});
      jobs.push_back({&X.up[e], &ws.moe_x[i], ws.moe_up.data() + r0 * FX});
    }
  }
  MatMulMany(jobs.data(), static_cast<int>(jobs.size()), pool);
  // act [rows, FX] = gelu(gate) * up: in place in the split form; the fused form's rows hold
  // gate then up, so their results are gathered into moe_up.
  float* act = fused ? ws.moe_up.data() : ws.moe_gu.data();
  if (fused) {
    for (int64_t r = 0; r < rows; ++r) {
      float* row = ws.moe_gu.data() + r * 2 * FX;
      kernels.gelu_mul(row, row + FX, FX);
      std::copy_n(row, FX, act + r * FX);
    }
  } else {
    kernels.gelu_mul(ws.moe_gu.data(), ws.moe_up.data(), rows * FX);
  }
  jobs.clear();
  for (size_t i = 0; i < n_active; ++i) {
    const int64_t r0 = start[i];
    ws.moe_act[i].Set(act + r0 * FX, start[i + 1] - r0, FX);
    jobs.push_back({&X.down[active[i]], &ws.moe_act[i], ws.moe_down.data() + r0 * E});
  }
  MatMulMany(jobs.data(), static_cast<int>(jobs.size()), pool);
  // Each row's down output times its expert's scale and its weight, into its (token, slot).
  for (size_t i = 0; i < n_active; ++i) {
    const float scale = X.down_scale.empty() ? 1.f : X.down_scale[active[i]];
    for (int64_t r = start[i]; r < start[i + 1]; ++r) {
      const float w = ws.expert_w[order[r]];
      const float* src = ws.moe_down.data() + r * E;
      float* dst = ws.moe_out.data() + order[r] * E;
      for (int64_t j = 0; j < E; ++j) dst[j] = src[j] * scale * w;
    }
  }
  // The slots summed in order, best expert first.
  for (int64_t t = 0; t < n; ++t) {
    float* o = out + t * E;
    std::copy_n(ws.moe_out.data() + t * K * E, E, o);
    for (int64_t k = 1; k < K; ++k) {
      const float* s = ws.moe_out.data() + (t * K + k) * E;
      for (int64_t i = 0; i < E; ++i) o[i] += s[i];
    }
  }
}

void Gemma4Model::Run(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
                      float* hidden) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, n = batch.size();
  if (n <= 0) return;
  PrepareBatch(c, batch, ws, pool);
  Grow(ws.a, n * E);
  Grow(ws.laurel, n * E);
  float* x = ws.x.data();
  float* a = ws.a.data();        // [n, E] the attention block's output (attn_out)
  float* f2 = ws.laurel.data();  // [n, E] the experts' output on MoE layers
  auto norm_rows = [&](const float* in, const std::vector<float>& w, float* o) {
    NormRows(in, w.data(), n, E, c.rms_eps, o, pool);
  };

  Embed(c, batch, tok_embd_, output_, tied_, x);
  if (c.n_embd_per_layer > 0) {
    ws.in.Set(x, n, E);
    per_layer_.Compute(c, batch, ws, pool);  // ws.per_layer [n, n_layer, P]
  }

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    // Attention: V is K's raw projection where the layer has no V; both are normed (V without
    // a weight) in PrepareQkv. Layers that share KV only project queries.
    norm_rows(x, L.attn_norm, ws.xn.data());
    ws.in.Set(ws.xn.data(), n, E);
    const bool owns_kv = c.kv_layer[l] == l;
    const MatMulJob qkv[] = {{&L.attn_q, &ws.in, ws.q.data()}, {&L.attn_k, &ws.in, ws.k.data()},
                             {&L.attn_v, &ws.in, ws.v.data()}};
    MatMulMany(qkv, owns_kv ? (L.has_v ? 3 : 2) : 1, pool);
    if (owns_kv && !L.has_v) std::copy_n(ws.k.data(), n * c.kv_dim_at(l), ws.v.data());
    PrepareQkv(c, l, batch, ws, L.attn_q_norm.data(), L.attn_k_norm.data(),
               L.rope_inv_freq.data(), /*write_kv=*/owns_kv, /*v_norm=*/true, pool);
    Attend(c, l, batch, ws, pool);
    ws.in.Set(ws.attn.data(), n, c.q_dim_at(l));
    MatMul(L.attn_output, ws.in, ws.o.data(), pool);
    norm_rows(ws.o.data(), L.post_attention_norm, ws.o.data());
    for (int64_t i = 0; i < n * E; ++i) a[i] = ws.o[i] + x[i];

    // Feed-forward: the dense FFN, and on MoE layers the experts beside it, each post-normed.
    norm_rows(a, L.ffn_norm, ws.xn.data());
    DenseFfn(L, l, ws.xn.data(), n, x, ws, pool);  // x is free until the residual below
    if (L.moe) {
      norm_rows(x, L.moe->post_norm_shared, x);
      ExpertFfn(*L.moe, a, n, f2, ws, pool);
      norm_rows(f2, L.moe->post_norm, f2);
      for (int64_t i = 0; i < n * E; ++i) x[i] += f2[i];
    }
    norm_rows(x, L.post_ffw_norm, x);
    for (int64_t i = 0; i < n * E; ++i) x[i] += a[i];

    // Per-layer input: x += RMSNorm(proj . (gelu(inp_gate . x) * PL[l])), then the layer scale.
    if (c.n_embd_per_layer > 0) {
      PerLayerBranch(c, l, L.inp_gate, L.proj, L.post_norm, x, n, ws.o.data(), ws, pool);
      for (int64_t i = 0; i < n * E; ++i) x[i] += ws.o[i];
    }
    if (L.out_scale != 1.f) {
      for (int64_t i = 0; i < n * E; ++i) x[i] *= L.out_scale;
    }
  }
  Output(c, batch, x, output_norm_.data(), output_, ws, out, hidden, pool);
}

namespace {

constexpr double kDefaultSoftcap = 30.0;  // llama.cpp's when the file names none

// Gemma 4's metadata that is missing or contradicts itself: the file reads, the model cannot run.
[[noreturn]] void Bad(const GgufFile& f, const std::string& what) {
  throw ModelError(f.path() + ": gemma4: " + what);
}

int64_t Need(const GgufFile& f, const std::string& key) {
  if (!f.Find(key)) Bad(f, "key '" + key + "' is missing");
  return f.GetInt(key);
}

}  // namespace

void ConfigureGemma4(const GgufFile& f, ModelConfig& c) {
  const std::string p = c.arch + ".";
  c.attn_scale = 1.f;  // the q norm carries the scale
  c.final_softcap = static_cast<float>(f.GetFloat(p + "final_logit_softcapping", kDefaultSoftcap));
  if (!(c.final_softcap >= 0.f && std::isfinite(c.final_softcap))) {
    Bad(f, "final_logit_softcapping is out of range");
  }
  if (!f.Find(p + "rope.freq_base")) Bad(f, "key '" + p + "rope.freq_base' is missing");
  const GgufValue* pattern = f.Find(p + "attention.sliding_window_pattern");
  if (!pattern) Bad(f, "key '" + p + "attention.sliding_window_pattern' is missing");
  if (pattern->type != GgufType::kArray || pattern->count != static_cast<uint64_t>(c.n_layer)) {
    Bad(f, "attention.sliding_window_pattern must list block_count (" + std::to_string(c.n_layer) +
        ") layers");
  }
  SetLayerPattern(f, c, 0);

  // Head sizes and rotated dimensions: key_length on full layers, key_length_swa on sliding.
  const int64_t hd_full = c.head_dim, hd_swa = Need(f, p + "attention.key_length_swa");
  if (f.GetInt(p + "attention.value_length_swa", hd_swa) != hd_swa) {
    Bad(f, "key_length_swa != value_length_swa is not supported");
  }
  if (hd_swa <= 0 || hd_swa > 4096 || hd_swa % 2 != 0) Bad(f, "key_length_swa is out of range");
  const int64_t rot_full = f.GetInt(p + "rope.dimension_count", hd_full);
  const int64_t rot_swa = f.GetInt(p + "rope.dimension_count_swa", rot_full);
  c.layer_head_dim.resize(static_cast<size_t>(c.n_layer));
  c.layer_n_rot.resize(static_cast<size_t>(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const bool swa = c.layer_is_swa[l];
    const int64_t hd = swa ? hd_swa : hd_full, rot = swa ? rot_swa : rot_full;
    if (rot <= 0 || rot > hd || rot % 2 != 0) {
      Bad(f, "rope.dimension_count" + std::string(swa ? "_swa" : "") + " = " + std::to_string(rot) +
             " does not fit a head of " + std::to_string(hd));
    }
    c.layer_head_dim[l] = static_cast<int32_t>(hd);
    c.layer_n_rot[l] = static_cast<int32_t>(rot);
  }
  c.head_dim = std::max(hd_full, hd_swa);

  // Per-layer inputs (0: none); the table has a row per token.
  c.n_embd_per_layer = Need(f, p + "embedding_length_per_layer_input");
  if (c.n_embd_per_layer < 0 || c.n_embd_per_layer > 65536) {
    Bad(f, "embedding_length_per_layer_input is out of range");
  }
  c.n_vocab_per_layer = c.n_vocab;

  // KV sharing: from layer S = n_layer - shared_kv_layers on, sliding layers read layer S-2's
  // keys and values and full layers S-1's (llama.cpp's rule, whatever those layers' kinds).
  const int64_t shared = f.GetInt(p + "attention.shared_kv_layers", 0);
  if (shared < 0 || shared > c.n_layer - 2 * (shared > 0)) Bad(f, "shared_kv_layers is out of range");
  const int64_t S = c.n_layer - shared;
  for (int64_t l = S; l < c.n_layer; ++l) {
    const int64_t src = S - (c.layer_is_swa[l] ? 2 : 1);
    if (c.layer_is_swa[src] != c.layer_is_swa[l] || c.head_dim_at(src) != c.head_dim_at(l) ||
        c.n_head_kv_at(src) != c.n_head_kv_at(l)) {
      Bad(f, "layer " + std::to_string(l) + " shares the KV of layer " + std::to_string(src) +
             ", whose attention kind or shape differs");
    }
    c.kv_layer[l] = static_cast<int32_t>(src);
  }

  // Mixture of experts: the layers with a router. Their shapes are checked against these
  // counts when the model binds them.
  const TensorSpec* router = FindSpec(TensorTableOf(c.arch), TensorId::kFfnGateInp);
  c.layer_is_moe.assign(static_cast<size_t>(c.n_layer), 0);
  bool any = false;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    c.layer_is_moe[l] = f.FindTensor(TensorName(*router, l)) != nullptr;
    any = any || c.layer_is_moe[l];
  }
  if (!any) {
    c.layer_is_moe.clear();
    return;
  }
  auto uniform = [&](const std::string& key) {
    const std::vector<int32_t> v = [&] {
      const GgufValue* val = f.Find(key);
      if (!val) Bad(f, "key '" + key + "' is missing (the file has expert layers)");
      if (val->type == GgufType::kArray && (val->elem_type == GgufType::kArray ||
                                            val->elem_type == GgufType::kString)) {
        Bad(f, "key '" + key + "' must be an integer or an array of integers");
      }
      if (val->type != GgufType::kArray) return std::vector<int32_t>{static_cast<int32_t>(f.GetInt(key))};
      std::vector<int32_t> out;
      for (uint64_t i = 0; i < val->count; ++i) out.push_back(static_cast<int32_t>(val->IntegerAt(i)));
      return out;
    }();
    if (v.empty() || std::any_of(v.begin(), v.end(), [&](int32_t x) { return x != v[0]; })) {
      Bad(f, "per-layer '" + key + "' values differ; this engine runs one value for all "
          "expert layers");
    }
    return static_cast<int64_t>(v[0]);
  };
  c.n_expert = uniform(p + "expert_count");
  c.n_expert_used = uniform(p + "expert_used_count");
  c.n_ff_exp = uniform(p + "expert_feed_forward_length");
  if (c.n_expert <= 0 || c.n_expert > 4096) Bad(f, "expert_count is out of range");
  if (c.n_expert_used <= 0 || c.n_expert_used > c.n_expert) {
    Bad(f, "expert_used_count = " + std::to_string(c.n_expert_used) + " does not fit " +
           std::to_string(c.n_expert) + " experts");
  }
  if (c.n_ff_exp <= 0 || c.n_ff_exp > (1 << 20)) Bad(f, "expert_feed_forward_length is out of range");
}

std::unique_ptr<Model> LoadGemma4(const GgufFile& f, const ModelConfig& c, ThreadPool& pool) {
  return std::make_unique<Gemma4Model>(f, c, pool);
}

}  // namespace pyengine
