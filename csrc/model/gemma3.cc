#include "model/gemma3.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/errors.h"
#include "core/gguf.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"
#include "runtime/thread_pool.h"

namespace pyengine {
namespace {

std::string Shape(const TensorView& t) {
  std::string s = "[";
  for (int d = 0; d < t.n_dims; ++d) s += (d ? ", " : "") + std::to_string(t.ne[d]);
  return s + "]";
}

// Finds a tensor and checks its GGUF shape (ne order: contiguous dimension first).
TensorView Bind(const GgufFile& f, const std::string& name, std::vector<int64_t> ne,
                bool optional = false) {
  const TensorView* t = f.FindTensor(name);
  if (!t) {
    if (optional) return TensorView{};
    throw ModelError(f.path() + ": tensor '" + name + "' is missing");
  }
  bool ok = t->n_dims == static_cast<int>(ne.size());
  for (size_t d = 0; ok && d < ne.size(); ++d) ok = t->ne[d] == ne[d];
  if (!ok) {
    TensorView want;
    want.n_dims = static_cast<int>(ne.size());
    for (size_t d = 0; d < ne.size(); ++d) want.ne[d] = ne[d];
    throw ModelError(f.path() + ": tensor '" + name + "' has shape " + Shape(*t) + ", expected " +
                     Shape(want));
  }
  if (!IsSupportedWeightType(t->type)) {
    throw ModelError(f.path() + ": tensor '" + name + "' has type " + TypeName(t->type) +
                     ", which this engine cannot compute with yet (F32, F16, BF16, Q8_0)");
  }
  return *t;
}

std::vector<float> BindVector(const GgufFile& f, const std::string& name, int64_t n) {
  TensorView t = Bind(f, name, {n});
  std::vector<float> v(static_cast<size_t>(n));
  DequantizeRow(t.type, t.data, v.data(), n);
  return v;
}

// x[n, dim] normalised row by row in place-or-copy: out = x / sqrt(mean(x^2) + eps) * w.
// The sum of squares is accumulated in double as ggml does.
void RmsNorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* yr = out + t * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = 1.f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

// NEOX rotation: element i pairs with i + d/2. inv_freq already carries the position scale.
void Rope(float* x, int64_t d, int64_t pos, const float* inv_freq) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float theta = static_cast<float>(pos) * inv_freq[i];
    const float c = std::cos(theta), s = std::sin(theta);
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * s;
    x[i + half] = x0 * s + x1 * c;
  }
}

inline float RoundFp16(float x) { return Fp16ToFp32(Fp32ToFp16(x)); }

float GeluTanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * x * (1.f + 0.044715f * x * x)));
}

// GELU through a table indexed by the fp16 bits of x, as ggml's CPU backend computes it:
// a lookup instead of a tanh per element, and the same values as the reference.
class GeluTable {
 public:
  GeluTable() : table_(1 << 16) {
    for (uint32_t h = 0; h < table_.size(); ++h) {
      table_[h] = Fp32ToFp16(GeluTanh(Fp16ToFp32(static_cast<uint16_t>(h))));
    }
  }
  float operator()(float x) const {
    if (x <= -10.f) return 0.f;
    if (x >= 10.f) return x;
    return Fp16ToFp32(table_[Fp32ToFp16(x)]);
  }

 private:
  std::vector<uint16_t> table_;  // [65536] fp16 gelu(fp16 x)
};

const GeluTable& Gelu() {
  static const GeluTable table;
  return table;
}

void Grow(std::vector<float>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
}

}  // namespace

Gemma3Model::Gemma3Model(const GgufFile& f, const ModelConfig& cfg, ThreadPool& pool) : cfg_(cfg) {
  const int64_t E = cfg.n_embd, D = cfg.head_dim, F = cfg.n_ff;
  // A repacked copy replaces the file's bytes: release those pages so memory holds one copy.
  auto pack = [&](const TensorView& t) {
    PackedMatrix m(t, pool);
    if (m.repacked()) f.ReleasePages(t);
    return m;
  };
  tok_embd_ = Bind(f, "token_embd.weight", {E, cfg.n_vocab});
  TensorView out = Bind(f, "output.weight", {E, cfg.n_vocab}, /*optional=*/true);
  // Tied embeddings: lookups read rows of the output projection's packed copy, so the
  // released file pages stay released.
  output_ = pack(out.data ? out : tok_embd_);
  tied_ = out.data == nullptr;
  output_norm_ = BindVector(f, "output_norm.weight", E);

  layers_.resize(static_cast<size_t>(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    Layer& L = layers_[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    L.attn_norm = BindVector(f, p + "attn_norm.weight", E);
    L.attn_q = pack(Bind(f, p + "attn_q.weight", {E, cfg.q_dim()}));
    L.attn_k = pack(Bind(f, p + "attn_k.weight", {E, cfg.kv_dim()}));
    L.attn_v = pack(Bind(f, p + "attn_v.weight", {E, cfg.kv_dim()}));
    L.attn_output = pack(Bind(f, p + "attn_output.weight", {cfg.q_dim(), E}));
    L.attn_q_norm = BindVector(f, p + "attn_q_norm.weight", D);
    L.attn_k_norm = BindVector(f, p + "attn_k_norm.weight", D);
    L.post_attention_norm = BindVector(f, p + "post_attention_norm.weight", E);
    L.ffn_norm = BindVector(f, p + "ffn_norm.weight", E);
    L.ffn_gate = pack(Bind(f, p + "ffn_gate.weight", {E, F}));
    L.ffn_up = pack(Bind(f, p + "ffn_up.weight", {E, F}));
    L.ffn_down = pack(Bind(f, p + "ffn_down.weight", {F, E}));
    L.post_ffw_norm = BindVector(f, p + "post_ffw_norm.weight", E);

    // Sliding layers: local base, no scaling. Global layers: global base with linear scaling.
    const bool swa = cfg.layer_is_swa[l];
    const float base = swa ? cfg.rope_base_swa : cfg.rope_base;
    const float scale = swa ? 1.f : cfg.rope_scale;
    L.rope_inv_freq.resize(static_cast<size_t>(D / 2));
    for (int64_t i = 0; i < D / 2; ++i) {
      L.rope_inv_freq[i] = scale * std::pow(base, -2.f * static_cast<float>(i) / static_cast<float>(D));
    }
  }
}

void Gemma3Model::Forward(const int32_t* tokens, int64_t n, int64_t pos0, KvCache& kv,
                          Workspace& ws, bool all_logits, float* out, ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, D = c.head_dim, F = c.n_ff;
  const int64_t QD = c.q_dim(), KVD = c.kv_dim();
  if (n <= 0) return;
  if (pos0 < 0 || pos0 + n > kv.n_ctx()) throw EngineError("sequence exceeds the context length");
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab) {
      throw EngineError("token id " + std::to_string(tokens[t]) + " is outside the vocabulary");
    }
  }
  Grow(ws.x, n * E); Grow(ws.xn, n * E); Grow(ws.o, n * E);
  Grow(ws.q, n * QD); Grow(ws.attn, n * QD);
  Grow(ws.k, n * KVD); Grow(ws.v, n * KVD);
  Grow(ws.gate, n * F); Grow(ws.up, n * F);
  Grow(ws.scores, pool.size() * kv.n_ctx());
  float* x = ws.x.data();
  // Per-token work is split over the pool only when there are enough tokens to pay for it.
  constexpr int64_t kMinTokens = 8;

  // Embedding, scaled by sqrt(n_embd).
  const float emb_scale = std::sqrt(static_cast<float>(E));
  for (int64_t t = 0; t < n; ++t) {
    float* xr = x + t * E;
    if (tied_) {
      output_.Row(tokens[t], xr);
    } else {
      DequantizeRow(tok_embd_.type, tok_embd_.row(tokens[t]), xr, E);
    }
    for (int64_t i = 0; i < E; ++i) xr[i] *= emb_scale;
  }

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    // Attention block.
    RmsNorm(x, L.attn_norm.data(), n, E, c.rms_eps, ws.xn.data());
    MatMul(L.attn_q, ws.xn.data(), n, ws.q.data(), pool);
    MatMul(L.attn_k, ws.xn.data(), n, ws.k.data(), pool);
    MatMul(L.attn_v, ws.xn.data(), n, ws.v.data(), pool);
    ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t pos = pos0 + t;
        for (int64_t h = 0; h < c.n_head; ++h) {
          float* qh = ws.q.data() + t * QD + h * D;
          RmsNorm(qh, L.attn_q_norm.data(), 1, D, c.rms_eps, qh);
          Rope(qh, D, pos, L.rope_inv_freq.data());
          // q meets the fp16 keys in fp16, as in the reference's f16 dot product.
          for (int64_t i = 0; i < D; ++i) qh[i] = RoundFp16(qh[i] * c.attn_scale);
        }
        for (int64_t h = 0; h < c.n_head_kv; ++h) {
          float* kh = ws.k.data() + t * KVD + h * D;
          RmsNorm(kh, L.attn_k_norm.data(), 1, D, c.rms_eps, kh);
          Rope(kh, D, pos, L.rope_inv_freq.data());
        }
        uint16_t* kc = kv.k(l, pos);
        uint16_t* vc = kv.v(l, pos);
        for (int64_t i = 0; i < KVD; ++i) {
          kc[i] = Fp32ToFp16(ws.k[t * KVD + i]);
          vc[i] = Fp32ToFp16(ws.v[t * KVD + i]);
        }
      }
    });
    Attention(l, n, pos0, kv, ws, pool);
    MatMul(L.attn_output, ws.attn.data(), n, ws.o.data(), pool);
    RmsNorm(ws.o.data(), L.post_attention_norm.data(), n, E, c.rms_eps, ws.o.data());
    for (int64_t i = 0; i < n * E; ++i) x[i] += ws.o[i];

    // Feed-forward block: gelu_tanh(gate) * up, projected down.
    RmsNorm(x, L.ffn_norm.data(), n, E, c.rms_eps, ws.xn.data());
    MatMul(L.ffn_gate, ws.xn.data(), n, ws.gate.data(), pool);
    MatMul(L.ffn_up, ws.xn.data(), n, ws.up.data(), pool);
    const GeluTable& gelu = Gelu();
    ParallelRanges(pool, n * F, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) ws.gate[i] = gelu(ws.gate[i]) * ws.up[i];
    });
    MatMul(L.ffn_down, ws.gate.data(), n, ws.o.data(), pool);
    RmsNorm(ws.o.data(), L.post_ffw_norm.data(), n, E, c.rms_eps, ws.o.data());
    for (int64_t i = 0; i < n * E; ++i) x[i] += ws.o[i];
  }

  // Only the rows whose logits are wanted go through the (large) output projection.
  const int64_t n_out = all_logits ? n : 1;
  const float* last = x + (n - n_out) * E;
  RmsNorm(last, output_norm_.data(), n_out, E, c.rms_eps, ws.xn.data());
  MatMul(output_, ws.xn.data(), n_out, out, pool);
  if (c.final_softcap > 0) {
    for (int64_t i = 0; i < n_out * c.n_vocab; ++i) {
      out[i] = c.final_softcap * std::tanh(out[i] / c.final_softcap);
    }
  }
}

void Gemma3Model::Attention(int64_t l, int64_t n, int64_t pos0, KvCache& kv, Workspace& ws,
                            ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const int64_t D = c.head_dim, QD = c.q_dim();
  const int64_t group = c.n_head / c.n_head_kv;  // query heads per KV head (GQA)
  const bool swa = c.layer_is_swa[l];
  const KernelSet& k = ActiveKernels();
  // One task per (token, head); each thread keeps its softmax weights in its own row.
  pool.ParallelFor(n * c.n_head, [&](int64_t task, int thread) {
    const int64_t t = task / c.n_head, h = task % c.n_head;
    float* scores = ws.scores.data() + thread * kv.n_ctx();
    const int64_t pos = pos0 + t;
    // Causal; a sliding layer also drops keys with pos - key_pos >= window.
    const int64_t first = swa ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
    const float* qh = ws.q.data() + t * QD + h * D;
    const int64_t kvh = h / group;
    float mx = -INFINITY;
    for (int64_t p = first; p <= pos; ++p) {
      scores[p] = k.dot_f16(qh, kv.k(l, p) + kvh * D, D);
      mx = std::max(mx, scores[p]);
    }
    double sum = 0;
    for (int64_t p = first; p <= pos; ++p) {
      scores[p] = std::exp(scores[p] - mx);
      sum += scores[p];
    }
    const float inv = static_cast<float>(1.0 / sum);
    float* oh = ws.attn.data() + t * QD + h * D;
    std::fill_n(oh, D, 0.f);
    for (int64_t p = first; p <= pos; ++p) {
      // Weights rounded to fp16 as the reference's f16 product with V rounds them.
      k.axpy_f16(RoundFp16(scores[p] * inv), kv.v(l, p) + kvh * D, oh, D);
    }
  });
}

}  // namespace pyengine
