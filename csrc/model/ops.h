// Building blocks the forward passes share: binding checked tensors, packing weights into one
// arena, RMSNorm, RoPE, and attention over a sequence's paged keys and values.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/gguf.h"
#include "core/tensor.h"
#include "model/model.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"
#include "quant/matmul.h"

namespace pyengine {

// The CPU models' scratch: buffers of one forward call, kept between calls so steady-state
// decode allocates nothing. n is the batch's token count.
struct Workspace {
  std::vector<float> x;      // [n, n_embd] residual stream (gemma3n: the active AltUp stream)
  std::vector<float> xn;     // [n, n_embd] normed input of a sub-block
  std::vector<float> q;      // [n, n_head * head_dim]
  std::vector<float> k;      // [n, n_head_kv * head_dim]
  std::vector<float> v;      // [n, n_head_kv * head_dim]
  std::vector<float> attn;   // [n, n_head * head_dim]
  std::vector<float> o;      // [n, n_embd]
  std::vector<float> gate;   // [n, n_ff]
  std::vector<float> up;     // [n, n_ff]
  std::vector<float> scores; // [n_threads, ...] Attend's scratch: a tile's scores and key chunks
  std::vector<int64_t> attn_tiles;  // Attend's tiles: first token of each, then n
  std::vector<float> rope;   // [n, head_dim] cos (first half) and sin (second half) per token
  // Gemma 3n only.
  std::vector<float> streams;  // [4, n, n_embd] AltUp streams
  std::vector<float> pred;     // [4, n, n_embd] predictions of a layer
  std::vector<float> a;        // [n, n_embd] attention + LAuReL branch
  std::vector<float> laurel;   // [n, n_embd]
  std::vector<float> small;    // [n, max(laurel rank, per-layer width, 16)] narrow products
  std::vector<float> per_layer;  // [n, n_layer, per-layer width] per-layer inputs
  std::vector<float> per_layer_emb;  // [n, n_layer, per-layer width] their embedding rows
  std::vector<float> coefs;    // [n, 16] AltUp router outputs and coefficients
  std::vector<float> ones;     // [per-layer width] all 1: gelu alone is gelu_mul by ones
  // Gemma 4 MoE.
  std::vector<float> router;   // [n, n_expert] router logits, then probabilities
  std::vector<int32_t> expert_of;   // [n, n_expert_used] chosen experts, best first
  std::vector<float> expert_w;      // [n, n_expert_used] their renormalised weights
  // The experts' rows, expert after expert (n * n_expert_used in all):
  std::vector<float> moe_in;        // [rows, n_embd] gathered inputs
  std::vector<float> moe_gu;        // [rows, 2 * n_ff_exp] gate then up (fused form), or gate
                                    // then gelu(gate) * up (split form)
  std::vector<float> moe_up;        // [rows, n_ff_exp] up (split form), or gelu(gate) * up (fused)
  std::vector<float> moe_out;       // [n, n_expert_used, n_embd] each slot's weighted output
  std::vector<float> moe_down;      // [n * n_expert_used, n_embd] the experts' down outputs
  std::vector<MatMulInput> moe_x, moe_act;  // [active experts] their inputs and activations
  std::vector<int32_t> moe_rank;    // [n_expert] experts by probability (one token's)
  std::vector<int64_t> moe_rows;    // [rows] the (token * n_expert_used + slot) of each row
  std::vector<int64_t> moe_start;   // [active experts + 1] where each one's rows start
  std::vector<int32_t> moe_active;  // [active experts] the experts the step's tokens chose
  std::vector<MatMulJob> moe_jobs;  // the experts' products of one pass
  MatMulInput in;            // the current projection input, in the forms its weights want
  MatMulInput in2;           // a second one, for products of two inputs in one pass
};


// Query heads per KV head a model may have (GQA).
constexpr int64_t kMaxGroup = 64;
// Attend: tokens of one sequence whose query rows share each key chunk.
constexpr int64_t kAttnTileTokens = 16;

// A tensor with GGUF shape `ne` (contiguous dimension first) and a supported weight type.
// Throws ModelError naming it when it is missing (unless optional) or its shape is wrong.
TensorView Bind(const GgufFile& f, const std::string& name, std::vector<int64_t> ne,
                bool optional = false);
// A 1-D tensor [n] as floats.
std::vector<float> BindVector(const GgufFile& f, const std::string& name, int64_t n);
// A tensor's values as floats (small matrices the products do not need packed).
std::vector<float> BindFloats(const GgufFile& f, const std::string& name, std::vector<int64_t> ne);

// Matrices bound while a model is read, packed together at the end into one arena (large
// pages, one copy: each tensor's file pages are released once copied).
class WeightPacker {
 public:
  void Add(const TensorView& t, PackedMatrix* dst) { jobs_.emplace_back(t, dst); }
  std::unique_ptr<WeightArena> Pack(const GgufFile& f, ThreadPool& pool);

 private:
  std::vector<std::pair<TensorView, PackedMatrix*>> jobs_;
};

// The 2-D matrix i of a 3-D tensor [ne0, ne1, ne2] (ne2 matrices of ne1 rows).
TensorView Slice(const TensorView& t, int64_t i);

// x[n, dim] normalised row by row in place-or-copy: out = x / sqrt(mean(x^2) + eps) * w, or
// without a weight when w is null. The sum of squares is accumulated in double as ggml does.
void RmsNorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);
// x[i] = cap * tanh(x[i] / cap), tanh within 1.5 ulp of exact (NaN stays NaN): plain float
// arithmetic the compiler vectorizes, where a quarter of a million std::tanh calls per logits row
// cost a thread a millisecond.
void Softcap(float* x, int64_t n, float cap);

// RmsNorm of n rows, split over the pool when there are enough rows to pay for it.
void NormRows(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out,
              ThreadPool& pool);

// RoPE inverse frequencies of one layer: [head_dim / 2] base^(-2i/d) * position scale.
std::vector<float> RopeInvFreq(int64_t head_dim, float base, float scale);
// cs [d] = cos(pos * inv_freq[i]) for i < d/2, then the sines: one token's rotation.
void RopeAngles(int64_t d, int64_t pos, const float* inv_freq, float* cs);
// NEOX rotation: element i pairs with i + d/2.
void Rope(float* x, int64_t d, const float* cs);

inline float RoundFp16(float x) { return Fp16ToFp32(Fp32ToFp16(x)); }

inline void Grow(std::vector<float>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
}

// Checks the batch's token ids and positions, sizes the buffers both models use, and returns
// the longest span of keys a token can attend to.
int64_t PrepareBatch(const ModelConfig& c, const Batch& batch, Workspace& ws, ThreadPool& pool);
// Every token id inside the vocabulary and every position covered by its sequence's blocks
// (EngineError naming the first that is not): what any backend checks before a step.
void CheckBatch(const ModelConfig& c, const Batch& batch);

// Per token: q and k head norms, RoPE, q scaled by c.attn_scale and rounded to fp16, and (when
// write_kv) keys and values stored in the KV cache's type through the sequence's view; v_norm
// applies a weightless RMSNorm to v first (Gemma 3n).
void PrepareQkv(const ModelConfig& c, int64_t layer, const Batch& batch, Workspace& ws,
                const float* q_norm, const float* k_norm, const float* inv_freq, bool write_kv,
                bool v_norm, ThreadPool& pool);

// x [n, n_embd] = the tokens' embeddings scaled by sqrt(n_embd), read from the output
// projection's packed rows when tied (the file's pages of token_embd are released then).
void Embed(const ModelConfig& c, const Batch& batch, const TensorView& tok_embd,
           const PackedMatrix& output, bool tied, float* x);

// The last step of both models: hidden [n_hidden, n_embd] = RMSNorm(x, norm) of the batch's
// hidden rows, and out [n_out, n_vocab] = the output projection of its logit rows, soft-capped
// when the model says so.
void Output(const ModelConfig& c, const Batch& batch, const float* x, const float* norm,
            const PackedMatrix& output, Workspace& ws, float* out, float* hidden,
            ThreadPool& pool);

// ws.attn [n, q_dim] = softmax(q . K^T) V over each token's own sequence, causal, and within
// the sliding window on sliding layers; keys and values of `layer` are read through the views.
void Attend(const ModelConfig& c, int64_t layer, const Batch& batch, Workspace& ws,
            ThreadPool& pool);

}  // namespace pyengine
