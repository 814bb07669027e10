#include "model/gemma3n.h"

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

constexpr int kS = Gemma3nModel::kStreams;
constexpr int64_t kMinTokens = 8;  // per-token work is split over the pool from this many

// sqrt(sum(x^2)) accumulated in double, as ggml's row sums accumulate.
float Magnitude(const float* x, int64_t n) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  return std::sqrt(static_cast<float>(ss));
}

// Gaussian top-k activation sparsity of one token's gate [n]: g = relu(g - (mean + k * std)),
// the standard deviation with n - 1.
void Sparsify(float* g, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += g[i];
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float d = g[i] - mean;
    ss += static_cast<double>(d) * d;
  }
  const float std = std::sqrt(static_cast<float>(ss) / static_cast<float>(n - 1));
  const float cut = mean + std * Gemma3nModel::kSparsityStd;
  for (int64_t i = 0; i < n; ++i) g[i] = std::max(g[i] - cut, 0.f);
}

// y = w . x for a small float matrix, with x rounded as the reference rounds activations for
// the weight's type (Q8_0 rows of 4 cannot exist).
float Round(float x, GgmlType t) {
  if (t == GgmlType::kF16) return RoundFp16(x);
  if (t == GgmlType::kBF16) return Bf16ToFp32(Fp32ToBf16(x));
  return x;
}

}  // namespace

void Gemma3nModel::Small::Apply(const float* x, float* y) const {
  float xr[16];
  for (int64_t c = 0; c < cols; ++c) xr[c] = Round(x[c], type);
  for (int64_t r = 0; r < rows; ++r) {
    float s = 0;
    for (int64_t c = 0; c < cols; ++c) s += w[r * cols + c] * xr[c];
    y[r] = s;
  }
}

Gemma3nModel::Gemma3nModel(const GgufFile& f, const ModelConfig& cfg, ThreadPool& pool)
    : cfg_(cfg), pool_(pool) {
  const int64_t NL = cfg.n_layer;
  CheckHeadGrouping(f, cfg);
  using I = TensorId;
  const ModelTensors t(f, cfg, TensorTableOf(cfg.arch));
  WeightPacker packer;
  auto pack = [&](I id, int64_t l, PackedMatrix* dst) { packer.Add(t.Get(id, l), dst); };
  auto small = [&](I id, int64_t l) {
    const TensorView& v = t.Get(id, l);
    Small s;
    s.type = v.type;
    s.w = t.Floats(id, l);
    s.rows = v.rows();
    s.cols = v.cols();
    return s;
  };

  BindEmbeddings(t, packer, &tok_embd_, &output_, &tied_);
  output_norm_ = t.Floats(I::kOutputNorm);
  // Stays mapped: [n_vocab, n_layer * 256] is the largest tensor of the real models, and a
  // token reads one row of it. It may stop short of n_vocab (Ollama's blobs): see the lookup.
  per_layer_.table = t.Get(I::kPerLayerTokEmbd);
  pack(I::kPerLayerModelProj, -1, &per_layer_.model_proj);
  per_layer_.norm = t.Floats(I::kPerLayerProjNorm);
  for (int k = 0; k < kS - 1; ++k) {
    packer.Add(Slice(t.Get(I::kAltupProj), k), &altup_proj_[k]);
    packer.Add(Slice(t.Get(I::kAltupUnembdProj), k), &altup_unembd_proj_[k]);
  }

  layers_.resize(static_cast<size_t>(NL));
  for (int64_t l = 0; l < NL; ++l) {
    Layer& L = layers_[l];
    L.Bind(t, cfg, l, packer);
    pack(I::kInpGate, l, &L.inp_gate);
    pack(I::kProj, l, &L.proj);
    L.post_norm = t.Floats(I::kPostNorm, l);
    pack(I::kLaurelL, l, &L.laurel_l);
    pack(I::kLaurelR, l, &L.laurel_r);
    L.laurel_post_norm = t.Floats(I::kLaurelPostNorm, l);
    pack(I::kAltupRouter, l, &L.altup_router);
    L.altup_router_norm = t.Floats(I::kAltupRouterNorm, l);
    L.altup_predict_coef = small(I::kAltupPredictCoef, l);
    L.altup_correct_coef = small(I::kAltupCorrectCoef, l);
    L.altup_correct_scale = t.Floats(I::kAltupCorrectScale, l);
  }
  arena_ = packer.Pack(f, pool);
}

void Gemma3nModel::Route(const Layer& L, const float* x, int64_t n, float* r, Workspace& ws,
                         ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd;
  const float inv_e = 1.f / static_cast<float>(E);
  ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
    RmsNorm(x + t0 * E, L.altup_router_norm.data(), t1 - t0, E, cfg_.rms_eps, ws.xn.data() + t0 * E);
    for (int64_t i = t0 * E; i < t1 * E; ++i) ws.xn[i] *= inv_e;
  });
  ws.in.Set(ws.xn.data(), n, E);
  MatMul(L.altup_router, ws.in, r, pool);
  for (int64_t i = 0; i < n * kS; ++i) r[i] = std::tanh(r[i]);
}

namespace {

// Rescales rows of y [n, E] to the L2 norms of the rows of ref [n, E].
void MatchMagnitude(const float* ref, float* y, int64_t n, int64_t E) {
  for (int64_t t = 0; t < n; ++t) {
    const float target = Magnitude(ref + t * E, E), now = Magnitude(y + t * E, E);
    for (int64_t i = 0; i < E; ++i) y[t * E + i] = y[t * E + i] * target / now;
  }
}

}  // namespace

void Gemma3nModel::NormRows(const float* in, const std::vector<float>& w, float* o, int64_t n,
                            ThreadPool& pool) const {
  pyengine::NormRows(in, w.data(), n, cfg_.n_embd, cfg_.rms_eps, o, pool);
}

void Gemma3nModel::Streams(const Batch& batch, Workspace& ws, ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd, n = batch.size();
  float* S0 = ws.streams.data();
  Embed(cfg_, batch, tok_embd_, output_, tied_, S0);
  ws.in.Set(S0, n, E);
  MatMulJob proj[kStreams - 1];
  for (int k = 1; k < kStreams; ++k) proj[k - 1] = {&altup_proj_[k - 1], &ws.in, S0 + k * n * E};
  MatMulMany(proj, kStreams - 1, pool);
  for (int k = 1; k < kStreams; ++k) MatchMagnitude(S0, S0 + k * n * E, n, E);
}

void Gemma3nModel::Predict(const Layer& L, int64_t n, Workspace& ws, ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd;
  const float* S = ws.streams.data();
  float* P = ws.pred.data();
  float* r = ws.coefs.data();  // [n, 4] router outputs
  float* cf = r + n * kStreams;  // [n, 16] prediction coefficients
  Route(L, S, n, r, ws, pool);
  for (int64_t t = 0; t < n; ++t) L.altup_predict_coef.Apply(r + t * kStreams, cf + t * kStreams * kStreams);
  ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* ct = cf + t * kStreams * kStreams;
      for (int j = 0; j < kStreams; ++j) {
        float* pj = P + j * n * E + t * E;
        const float* sj = S + j * n * E + t * E;
        for (int64_t i = 0; i < E; ++i) {
          float acc = 0;
          for (int k = 0; k < kStreams; ++k) acc += S[k * n * E + t * E + i] * ct[j * kStreams + k];
          pj[i] = acc + sj[i];
        }
      }
    }
  });
}

void Gemma3nModel::Correct(const Layer& L, const float* o, int64_t n, Workspace& ws,
                           ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd;
  float* S = ws.streams.data();
  const float* P = ws.pred.data();
  float* r = ws.coefs.data();
  float* m = r + n * kStreams + n * kStreams * kStreams;  // [n, 4] correction coefficients
  Route(L, o, n, r, ws, pool);
  for (int64_t t = 0; t < n; ++t) {
    L.altup_correct_coef.Apply(r + t * kStreams, m + t * kStreams);
    for (int j = 0; j < kStreams; ++j) m[t * kStreams + j] += 1.f;
  }
  ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int j = 0; j < kStreams; ++j) {
        float* sj = S + j * n * E + t * E;
        const float* pj = P + j * n * E + t * E;
        for (int64_t i = 0; i < E; ++i) sj[i] = (o[t * E + i] - P[t * E + i]) * m[t * kStreams + j] + pj[i];
      }
    }
  });
}

void Gemma3nModel::AddPerLayerInput(const Layer& L, int64_t l, int64_t n, Workspace& ws,
                                    ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd;
  float* S0 = ws.streams.data();
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < E; ++i) ws.xn[t * E + i] = S0[t * E + i] * L.altup_correct_scale[i];
  }
  PerLayerBranch(cfg_, l, L.inp_gate, L.proj, L.post_norm, ws.xn.data(), n, ws.o.data(), ws, pool);
  for (int k = 1; k < kStreams; ++k) {
    float* sk = S0 + k * n * E;
    for (int64_t i = 0; i < n * E; ++i) sk[i] += ws.o[i];
  }
}

void Gemma3nModel::Unembed(int64_t n, Workspace& ws, ThreadPool& pool) const {
  const int64_t E = cfg_.n_embd;
  const float* S0 = ws.streams.data();
  float* h = ws.a.data();
  std::copy_n(S0, n * E, h);
  for (int k = 1; k < kStreams; ++k) {
    ws.in.Set(S0 + k * n * E, n, E);
    MatMul(altup_unembd_proj_[k - 1], ws.in, ws.laurel.data(), pool);
    MatchMagnitude(S0, ws.laurel.data(), n, E);
    for (int64_t i = 0; i < n * E; ++i) h[i] += ws.laurel[i];
  }
  for (int64_t i = 0; i < n * E; ++i) h[i] *= 1.f / kStreams;
}

void Gemma3nModel::Run(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
                           float* hidden) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, F = c.n_ff, QD = c.q_dim(), NL = c.n_layer;
  const int64_t n = batch.size();
  if (n <= 0) return;
  PrepareBatch(c, batch, ws, pool);
  Grow(ws.streams, kStreams * n * E);
  Grow(ws.pred, kStreams * n * E);
  Grow(ws.a, n * E);
  Grow(ws.laurel, n * E);
  Grow(ws.small, n * kPerLayer);
  Grow(ws.coefs, n * (kStreams * kStreams + 2 * kStreams));
  const KernelSet& kernels = ActiveKernels();
  const float half = 1.f / std::sqrt(2.f);

  // Stream 0: the token embedding scaled by sqrt(n_embd); streams 1..3 its projections,
  // rescaled to its magnitude. Per-layer inputs PL [n, NL, 256] = (RMSNorm(proj . x /
  // sqrt(E)) + 16 * row of per_layer_token_embd) / sqrt(2).
  Streams(batch, ws, pool);
  per_layer_.Compute(c, batch, ws, pool);  // ws.in still holds stream 0, as Streams set it

  for (int64_t l = 0; l < NL; ++l) {
    const Layer& L = layers_[l];
    // AltUp predict: P_j = S_j + sum_k c[j][k] S_k with c from the router on stream 0.
    Predict(L, n, ws, pool);
    const float* P0 = ws.pred.data();
    float* xn = ws.x.data();  // [n, E] the attention input (kept: LAuReL adds it back)
    NormRows(P0, L.attn_norm, xn, n, pool);

    // LAuReL: xn + RMSNorm(laurel_r . laurel_l . xn).
    ws.in.Set(xn, n, E);
    const bool owns_kv = c.kv_layer[l] == l;
    const MatMulJob proj[] = {{&L.laurel_l, &ws.in, ws.small.data()},
                              {&L.attn_q, &ws.in, ws.q.data()},
                              {&L.attn_k, &ws.in, ws.k.data()},
                              {&L.attn_v, &ws.in, ws.v.data()}};
    MatMulMany(proj, owns_kv ? 4 : 2, pool);

    // Attention over this layer's (or the sharing source's) keys and values; scale 1.
    PrepareQkv(c, l, batch, ws, L.attn_q_norm.data(), L.attn_k_norm.data(),
               L.rope_inv_freq.data(), /*write_kv=*/owns_kv, /*v_norm=*/true, pool);
    Attend(c, l, batch, ws, pool);
    // The attention output and LAuReL's second product in one pass.
    ws.in.Set(ws.attn.data(), n, QD);
    ws.in2.Set(ws.small.data(), n, kLaurelRank);
    const MatMulJob out[] = {{&L.attn_output, &ws.in, ws.o.data()},
                             {&L.laurel_r, &ws.in2, ws.laurel.data()}};
    MatMulMany(out, 2, pool);
    NormRows(ws.laurel.data(), L.laurel_post_norm, ws.laurel.data(), n, pool);
    NormRows(ws.o.data(), L.post_attention_norm, ws.o.data(), n, pool);
    float* a = ws.a.data();  // (RMSNorm(attn) + P0 + LAuReL) / sqrt(2)
    for (int64_t i = 0; i < n * E; ++i) a[i] = ((ws.o[i] + P0[i]) + (ws.laurel[i] + xn[i])) * half;

    // Feed-forward with activation sparsity in the first layers.
    NormRows(a, L.ffn_norm, ws.xn.data(), n, pool);
    ws.in.Set(ws.xn.data(), n, E);
    const MatMulJob gate_up[] = {{&L.ffn_gate, &ws.in, ws.gate.data()},
                                 {&L.ffn_up, &ws.in, ws.up.data()}};
    MatMulMany(gate_up, 2, pool);
    if (l < kSparseLayers) {
      ParallelRanges(pool, n, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) Sparsify(ws.gate.data() + t * F, F);
      });
    }
    ParallelRanges(pool, n * F, 4096, [&](int64_t i0, int64_t i1) {
      kernels.gelu_mul(ws.gate.data() + i0, ws.up.data() + i0, i1 - i0);
    });
    ws.in.Set(ws.gate.data(), n, F);
    MatMul(L.ffn_down, ws.in, ws.o.data(), pool);
    NormRows(ws.o.data(), L.post_ffw_norm, ws.o.data(), n, pool);
    float* o = ws.o.data();  // the layer's output on the active stream
    for (int64_t i = 0; i < n * E; ++i) o[i] += a[i];

    // AltUp correct: S_j = P_j + (c[j] + 1) (o - P0), c from the router on o. Then the
    // per-layer input: RMSNorm(proj . (gelu(inp_gate . (S0 * scale)) * PL[l])), added to
    // streams 1..3.
    Correct(L, o, n, ws, pool);
    AddPerLayerInput(L, l, n, ws, pool);
  }

  // Unembedding: streams 1..3 projected back and rescaled to stream 0's magnitude, then the
  // mean of the four.
  Unembed(n, ws, pool);
  Output(c, batch, ws.a.data(), output_norm_.data(), output_, ws, out, hidden, pool);
}

namespace {

// Gemma 3n constants llama.cpp fixes in code, whatever the file's keys say.
constexpr int64_t kKvLayers = 20;  // layers 0..19 own their KV; later ones share it
constexpr float kSoftcap = 30.f;

}  // namespace

void ConfigureGemma3n(const GgufFile& f, ModelConfig& c) {
  RequireUniformLayers(f, c);
  c.n_embd_per_layer = Gemma3nModel::kPerLayer;
  c.attn_scale = 1.f;  // the q norm carries the scale
  c.final_softcap = kSoftcap;
  // Four sliding-window layers, then one global, unless the file lists the pattern itself.
  SetLayerPattern(f, c, 5);
  // Layers from 20 on read the KV of the last earlier layer of their own kind.
  for (int64_t l = kKvLayers; l < c.n_layer; ++l) {
    int64_t src = kKvLayers - 1;
    while (src >= 0 && c.layer_is_swa[src] != c.layer_is_swa[l]) --src;
    if (src < 0) f.Fail("no earlier layer of the same kind to share KV with");
    c.kv_layer[l] = static_cast<int32_t>(src);
  }
  // llama.cpp's converter pads this table with zero rows to token_embd's 262400; Ollama's
  // blobs keep HF's 262144 rows (ids past them are the image/audio tokens). The model binds
  // and checks the tensor itself; here only its row count matters.
  c.n_vocab_per_layer = c.n_vocab;
  const std::string name = GlobalTensorName(TensorId::kPerLayerTokEmbd);
  const TensorView* ple = f.FindTensor(name);
  if (ple && ple->n_dims == 2) {
    if (ple->ne[1] > c.n_vocab) {
      f.Fail(name + " has " + std::to_string(ple->ne[1]) +
             " rows, more than " + GlobalTensorName(TensorId::kTokEmbd) + "'s " + std::to_string(c.n_vocab));
    }
    c.n_vocab_per_layer = ple->ne[1];
  }
}

std::unique_ptr<Model> LoadGemma3n(const GgufFile& f, const ModelConfig& c, ThreadPool& pool) {
  return std::make_unique<Gemma3nModel>(f, c, pool);
}

}  // namespace pyengine
