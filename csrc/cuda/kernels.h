// CUDA kernels of the forward pass, as host-callable launchers on a stream. Buffers are
// row-major device arrays; n is the number of tokens in the batch. Each mirrors a CPU step of
// model/ops.cc and rounds where it rounds, so both backends compute the same numbers.
#pragma once

#include <cstdint>

#include "cuda/device.h"

namespace pyengine {
namespace cuda {

// Where a batch's keys and values live, per KV group (global, sliding): for token t of
// sequence s = seq[t], logical block b, page p (the layer's page within the group's blocks):
// page id = table[off[s] + b * pages + p] (-1: the block was let go), and the page holds
// [2 (k, v), block_tokens, kv_dim] halves at kv + page id * 2 * block_tokens * kv_dim.
struct KvGroup {
  const int32_t* table = nullptr;
  const int32_t* off = nullptr;   // [n_seq]
  int pages = 0;
};

struct KvArgs {
  __half* kv = nullptr;
  const int32_t* seq = nullptr;   // [n]
  const int32_t* pos = nullptr;   // [n]
  int block_tokens = 16;
  int kv_dim = 0;
};

// x [n, cols] float activations in the form a matrix of `type` meets them, as the CPU kernels
// prepare them: rounded to fp16 / bf16, or quantized to Q8_0 blocks (int8 quants xq [n, cols]
// and fp16-rounded scales xd [n, cols / 32]), exactly as llama.cpp quantizes activations.
// With gelu_u: the activations are gelu(x) * gelu_u (GELU from gelu_table, as GeluMul), the
// FFN's product fused into its down projection's input. cols: a multiple of 32.
void PrepareInput(WType type, const float* x, int64_t n, int64_t cols, float* xr, int8_t* xq,
                  float* xd, cudaStream_t s, const float* gelu_u = nullptr,
                  const float* gelu_table = nullptr);

// RMSNorm of x [n, dim] with weight w, written as PrepareInput writes it (no float copy in
// between). dim: a multiple of 32.
void NormPrepare(WType type, const float* x, const float* w, int64_t n, int64_t dim, float eps,
                 float* xr, int8_t* xq, float* xd, cudaStream_t s);

// y [n, rows] = x [n, cols] . W^T with x prepared for W's type (xr, or xq/xd for Q8_0).
void MatMul(const DevMatrix& w, const float* xr, const int8_t* xq, const float* xd, int64_t n,
            float* y, cudaStream_t s);
// The same for 1 to kMaxMatSet matrices of one type and width on one input, in one launch.
constexpr int kMaxMatSet = 4;
void MatMul(const DevMatrix* const* ws, float* const* ys, int count, const float* xr,
            const int8_t* xq, const float* xd, int64_t n, cudaStream_t s);

// x [n, dim] = row `tokens[t]` of table, times scale.
void Embed(const DevMatrix& table, const int32_t* tokens, int64_t n, float scale, float* x,
           cudaStream_t s);

// out [n, dim] = x / rms(x) * w (w may be null: no weight). out may be x.
void RmsNorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out,
             cudaStream_t s);

// x [n, dim] += o / rms(o) * w (a sublayer's normed output added to the residual).
void RmsNormAdd(const float* o, const float* w, int64_t n, int64_t dim, float eps, float* x,
                cudaStream_t s);

// x += o, count values.
void Add(float* x, const float* o, int64_t count, cudaStream_t s);

// g = gelu(g) * u, GELU read from the fp16 table (table [65536], as the CPU's).
void GeluMul(float* g, const float* u, const float* table, int64_t count, cudaStream_t s);

// Per token: q and k heads RMS-normed (q_norm / k_norm [head_dim]) and rotated (NEOX, angles
// pos * inv_freq [head_dim / 2]); q scaled by attn_scale and rounded to fp16; with write_kv,
// k and v (v RMS-normed without weight when v_norm) stored as fp16 in the token's KV slot.
// head_dim must be a multiple of 64 and at most 256.
void PrepareQkv(float* q, const float* k, const float* v, int64_t n, int n_head, int n_head_kv,
                int head_dim, const float* q_norm, const float* k_norm, const float* inv_freq,
                float attn_scale, float eps, bool write_kv, bool v_norm, const KvArgs& kv,
                const KvGroup& group, int page, cudaStream_t s);

// Device scratch of Attend: stats [n * n_head * splits * 2], partial [n * n_head * splits *
// head_dim] (unused with one split).
constexpr int kMaxAttnSplits = 64;
struct AttendScratch {
  float* stats = nullptr;
  float* partial = nullptr;
  int splits = 1;
};

// How many warps share each (token, head)'s keys, for n tokens whose longest context is
// max_keys positions.
int AttendSplits(int64_t n, int n_head, int max_keys);

// attn [n, n_head * head_dim]: each query head over its KV head's keys from `first` (window:
// pos - window + 1, else 0) to pos, softmax weights rounded to fp16 as the CPU rounds them.
void Attend(const float* q, float* attn, int64_t n, int n_head, int n_head_kv, int head_dim,
            int window, const KvArgs& kv, const KvGroup& group, int page,
            const AttendScratch& scratch, cudaStream_t s);

// rows [n_rows, dim] = x [rows_idx[r]] (gathers the rows whose logits are wanted).
void GatherRows(const float* x, const int32_t* rows_idx, int64_t n_rows, int64_t dim, float* out,
                cudaStream_t s);

// out [n] = the first index of the largest of each row of x [n, cols] (NaN never wins; 0 when
// nothing beats -inf): the greedy choice, without bringing the logits back.
void ArgmaxRows(const float* x, int64_t n, int64_t cols, int32_t* out, cudaStream_t s);

// x = cap * tanh(x / cap), count values.
void Softcap(float* x, int64_t count, float cap, cudaStream_t s);

}  // namespace cuda
}  // namespace pyengine
