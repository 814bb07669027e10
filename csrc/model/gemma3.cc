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

// cs [d] = cos(pos * inv_freq[i]) for i < d/2, then the sines: one token's rotation, shared
// by all its heads. inv_freq already carries the position scale.
void RopeAngles(int64_t d, int64_t pos, const float* inv_freq, float* cs) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float theta = static_cast<float>(pos) * inv_freq[i];
    cs[i] = std::cos(theta);
    cs[half + i] = std::sin(theta);
  }
}

// NEOX rotation: element i pairs with i + d/2.
void Rope(float* x, int64_t d, const float* cs) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = cs[i], s = cs[half + i];
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * s;
    x[i + half] = x0 * s + x1 * c;
  }
}

// Query heads per KV head the attention loop keeps running maxima for.
constexpr int64_t kMaxGroup = 64;

inline float RoundFp16(float x) { return Fp16ToFp32(Fp32ToFp16(x)); }

void Grow(std::vector<float>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
}

}  // namespace

Gemma3Model::Gemma3Model(const GgufFile& f, const ModelConfig& cfg, ThreadPool& pool) : cfg_(cfg) {
  const int64_t E = cfg.n_embd, D = cfg.head_dim, F = cfg.n_ff;
  if (cfg.n_head % cfg.n_head_kv != 0 || cfg.n_head / cfg.n_head_kv > kMaxGroup) {
    throw ModelError(f.path() + ": " + std::to_string(cfg.n_head) + " query heads over " +
                     std::to_string(cfg.n_head_kv) + " KV heads is not a supported grouping");
  }
  // Matrices are bound first and packed together at the end, into one arena.
  std::vector<std::pair<TensorView, PackedMatrix*>> jobs;
  auto pack = [&](const TensorView& t, PackedMatrix* dst) { jobs.emplace_back(t, dst); };
  tok_embd_ = Bind(f, "token_embd.weight", {E, cfg.n_vocab});
  TensorView out = Bind(f, "output.weight", {E, cfg.n_vocab}, /*optional=*/true);
  // Tied embeddings: lookups read rows of the output projection's packed copy, so the
  // released file pages stay released.
  pack(out.data ? out : tok_embd_, &output_);
  tied_ = out.data == nullptr;
  output_norm_ = BindVector(f, "output_norm.weight", E);

  layers_.resize(static_cast<size_t>(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    Layer& L = layers_[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    L.attn_norm = BindVector(f, p + "attn_norm.weight", E);
    pack(Bind(f, p + "attn_q.weight", {E, cfg.q_dim()}), &L.attn_q);
    pack(Bind(f, p + "attn_k.weight", {E, cfg.kv_dim()}), &L.attn_k);
    pack(Bind(f, p + "attn_v.weight", {E, cfg.kv_dim()}), &L.attn_v);
    pack(Bind(f, p + "attn_output.weight", {cfg.q_dim(), E}), &L.attn_output);
    L.attn_q_norm = BindVector(f, p + "attn_q_norm.weight", D);
    L.attn_k_norm = BindVector(f, p + "attn_k_norm.weight", D);
    L.post_attention_norm = BindVector(f, p + "post_attention_norm.weight", E);
    L.ffn_norm = BindVector(f, p + "ffn_norm.weight", E);
    pack(Bind(f, p + "ffn_gate.weight", {E, F}), &L.ffn_gate);
    pack(Bind(f, p + "ffn_up.weight", {E, F}), &L.ffn_up);
    pack(Bind(f, p + "ffn_down.weight", {F, E}), &L.ffn_down);
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

  size_t total = 0;
  for (const auto& job : jobs) total += PackedMatrix::PackedBytes(job.first);
  arena_ = std::make_unique<WeightArena>(total);
  size_t offset = 0;
  for (const auto& [view, dst] : jobs) {
    f.Prefault(view);
    *dst = PackedMatrix(view, pool, arena_->data() + offset);
    offset += PackedMatrix::PackedBytes(view);
    // The packed copy replaces the file's bytes: release those pages so memory holds one copy.
    f.ReleasePages(view);
  }
}

void Gemma3Model::Forward(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
                          float* hidden) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, D = c.head_dim, F = c.n_ff;
  const int64_t QD = c.q_dim(), KVD = c.kv_dim();
  const int64_t n = batch.size();
  if (n <= 0) return;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t tok = batch.tokens[t];
    if (tok < 0 || tok >= c.n_vocab) {
      throw EngineError("token id " + std::to_string(tok) + " is outside the vocabulary");
    }
    if (batch.pos[t] < 0 || batch.pos[t] >= batch.views[batch.seq[t]].capacity()) {
      throw EngineError("position " + std::to_string(batch.pos[t]) + " has no KV block");
    }
  }
  // Scores rows are as long as the longest sequence in the batch.
  int64_t longest = 1;
  for (int64_t t = 0; t < n; ++t) longest = std::max<int64_t>(longest, batch.pos[t] + 1);
  Grow(ws.x, n * E); Grow(ws.xn, n * E); Grow(ws.o, n * E);
  Grow(ws.q, n * QD); Grow(ws.attn, n * QD);
  Grow(ws.k, n * KVD); Grow(ws.v, n * KVD);
  Grow(ws.gate, n * F); Grow(ws.up, n * F);
  Grow(ws.scores, pool.size() * (c.n_head / c.n_head_kv) * longest);
  Grow(ws.rope, n * D);
  float* x = ws.x.data();
  // Per-token work is split over the pool only when there are enough tokens to pay for it.
  constexpr int64_t kMinTokens = 8;

  // Embedding, scaled by sqrt(n_embd).
  const float emb_scale = std::sqrt(static_cast<float>(E));
  for (int64_t t = 0; t < n; ++t) {
    float* xr = x + t * E;
    if (tied_) {
      output_.Row(batch.tokens[t], xr);
    } else {
      DequantizeRow(tok_embd_.type, tok_embd_.row(batch.tokens[t]), xr, E);
    }
    for (int64_t i = 0; i < E; ++i) xr[i] *= emb_scale;
  }

  const KernelSet& kernels = ActiveKernels();
  // Row-wise helpers over all n tokens, split over the pool when n is large enough.
  auto norm_rows = [&](const float* in, const std::vector<float>& w, float* o) {
    ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
      RmsNorm(in + t0 * E, w.data(), t1 - t0, E, c.rms_eps, o + t0 * E);
    });
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
    MatMul(L.attn_q, ws.in, ws.q.data(), pool);
    MatMul(L.attn_k, ws.in, ws.k.data(), pool);
    MatMul(L.attn_v, ws.in, ws.v.data(), pool);
    ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t pos = batch.pos[t];
        float* cs = ws.rope.data() + t * D;
        RopeAngles(D, pos, L.rope_inv_freq.data(), cs);
        for (int64_t h = 0; h < c.n_head; ++h) {
          float* qh = ws.q.data() + t * QD + h * D;
          RmsNorm(qh, L.attn_q_norm.data(), 1, D, c.rms_eps, qh);
          Rope(qh, D, cs);
          // q meets the fp16 keys in fp16, as in the reference's f16 dot product.
          for (int64_t i = 0; i < D; ++i) qh[i] = RoundFp16(qh[i] * c.attn_scale);
        }
        for (int64_t h = 0; h < c.n_head_kv; ++h) {
          float* kh = ws.k.data() + t * KVD + h * D;
          RmsNorm(kh, L.attn_k_norm.data(), 1, D, c.rms_eps, kh);
          Rope(kh, D, cs);
        }
        const KvView& kv = batch.views[batch.seq[t]];
        kernels.to_f16(ws.k.data() + t * KVD, kv.k(l, pos), KVD);
        kernels.to_f16(ws.v.data() + t * KVD, kv.v(l, pos), KVD);
      }
    });
    Attention(l, batch, ws, pool);
    ws.in.Set(ws.attn.data(), n, QD);
    MatMul(L.attn_output, ws.in, ws.o.data(), pool);
    norm_rows(ws.o.data(), L.post_attention_norm, ws.o.data());
    add_rows(ws.o.data());

    // Feed-forward block: gelu_tanh(gate) * up, projected down.
    norm_rows(x, L.ffn_norm, ws.xn.data());
    ws.in.Set(ws.xn.data(), n, E);
    MatMul(L.ffn_gate, ws.in, ws.gate.data(), pool);
    MatMul(L.ffn_up, ws.in, ws.up.data(), pool);
    ParallelRanges(pool, n * F, 4096, [&](int64_t i0, int64_t i1) {
      kernels.gelu_mul(ws.gate.data() + i0, ws.up.data() + i0, i1 - i0);
    });
    ws.in.Set(ws.gate.data(), n, F);
    MatMul(L.ffn_down, ws.in, ws.o.data(), pool);
    norm_rows(ws.o.data(), L.post_ffw_norm, ws.o.data());
    add_rows(ws.o.data());
  }

  if (hidden) {
    for (size_t r = 0; r < batch.hidden_rows.size(); ++r) {
      RmsNorm(x + batch.hidden_rows[r] * E, output_norm_.data(), 1, E, c.rms_eps, hidden + r * E);
    }
  }
  // Only the rows whose logits are wanted go through the (large) output projection.
  const int64_t n_out = static_cast<int64_t>(batch.out_rows.size());
  if (n_out == 0 || !out) return;
  for (int64_t r = 0; r < n_out; ++r) {
    RmsNorm(x + batch.out_rows[r] * E, output_norm_.data(), 1, E, c.rms_eps, ws.xn.data() + r * E);
  }
  ws.in.Set(ws.xn.data(), n_out, E);
  MatMul(output_, ws.in, out, pool);
  if (c.final_softcap > 0) {
    for (int64_t i = 0; i < n_out * c.n_vocab; ++i) {
      out[i] = c.final_softcap * std::tanh(out[i] / c.final_softcap);
    }
  }
}

void Gemma3Model::Attention(int64_t l, const Batch& batch, Workspace& ws, ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const int64_t D = c.head_dim, QD = c.q_dim(), KVD = c.kv_dim();
  const int64_t group = c.n_head / c.n_head_kv;  // query heads per KV head (GQA)
  const bool swa = c.layer_is_swa[l];
  const KernelSet& k = ActiveKernels();
  const int64_t n = batch.size();
  const int64_t stride = static_cast<int64_t>(ws.scores.size()) / (pool.size() * group);
  // One task per (token, KV head): the group's query heads read each key block once. Each
  // thread keeps its softmax weights in its own rows.
  pool.ParallelFor(n * c.n_head_kv, [&](int64_t task, int thread) {
    const int64_t t = task / c.n_head_kv, kvh = task % c.n_head_kv;
    const KvView& kv = batch.views[batch.seq[t]];
    const int64_t pos = batch.pos[t];
    // Causal; a sliding layer also drops keys with pos - key_pos >= window.
    const int64_t first = swa ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
    const int64_t bt = kv.arena->block_tokens();
    float* scores = ws.scores.data() + thread * group * stride;  // [group, pos - first + 1]
    float mx[kMaxGroup];
    for (int64_t j = 0; j < group; ++j) mx[j] = -INFINITY;
    for (int64_t p = first; p <= pos;) {
      const int64_t blk = p / bt, end = std::min(pos + 1, (blk + 1) * bt);
      const uint16_t* kb = kv.k_block(l, blk) + kvh * D;  // [bt, KVD] from this head's slice
      for (; p < end; ++p) {
        const uint16_t* key = kb + (p - blk * bt) * KVD;
        for (int64_t j = 0; j < group; ++j) {
          const float* qh = ws.q.data() + t * QD + (kvh * group + j) * D;
          const float s = k.dot_f16(qh, key, D);
          scores[j * stride + (p - first)] = s;
          mx[j] = std::max(mx[j], s);
        }
      }
    }
    for (int64_t j = 0; j < group; ++j) {
      float* sc = scores + j * stride;
      double sum = 0;
      for (int64_t p = 0; p <= pos - first; ++p) {
        sc[p] = std::exp(sc[p] - mx[j]);
        sum += sc[p];
      }
      const float inv = static_cast<float>(1.0 / sum);
      float* oh = ws.attn.data() + t * QD + (kvh * group + j) * D;
      std::fill_n(oh, D, 0.f);
      for (int64_t p = first; p <= pos;) {
        const int64_t blk = p / bt, end = std::min(pos + 1, (blk + 1) * bt);
        const uint16_t* vb = kv.v_block(l, blk) + kvh * D;
        for (; p < end; ++p) {
          // Weights rounded to fp16 as the reference's f16 product with V rounds them.
          k.axpy_f16(RoundFp16(sc[p - first] * inv), vb + (p - blk * bt) * KVD, oh, D);
        }
      }
    }
  });
}

}  // namespace pyengine
