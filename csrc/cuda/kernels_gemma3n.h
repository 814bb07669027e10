// CUDA kernels of Gemma 3n's extra steps (AltUp, LAuReL, per-layer inputs, activation
// sparsity), each mirroring its CPU counterpart in model/gemma3n.cc. Row-major device arrays;
// n tokens; E = n_embd.
#pragma once

#include <cstdint>

#include "cuda/device.h"

namespace pyengine {
namespace cuda {

// Rows of y [n, dim] rescaled to the L2 norms of the rows of ref [n, dim].
void MatchMagnitude(const float* ref, float* y, int64_t n, int64_t dim, cudaStream_t s);

// Per-layer inputs: for token t and layer l, with p = proj [t, l * 256 .. +256] (the model
// projection of the embedding) and r = rows [t, l * 256 ..] (the token's per-layer row):
// out [l, t, :] = (RMSNorm(p * proj_scale, norm_w) + r * emb_scale) / sqrt(2). The output is
// layer-major so each layer reads its [n, 256] slice contiguously.
void PerLayerInputs(const float* proj, const float* rows, const float* norm_w, int64_t n,
                    int n_layer, float eps, float proj_scale, float emb_scale, float* out,
                    cudaStream_t s);

// out [n, dim] = RMSNorm(x, w) * post (the AltUp router's input: post = 1 / n_embd).
void RmsNormScaled(const float* x, const float* w, int64_t n, int64_t dim, float eps, float post,
                   float* out, cudaStream_t s);

void Tanh(float* x, int64_t count, cudaStream_t s);

// y [n, rows] = w [rows, cols] . round(x [n, cols]) + add, summed in column order as the CPU
// does; round_bf16 / round_f16 round x as the reference rounds it for such weights.
void SmallMatVec(const float* w, int rows, int cols, bool round_f16, bool round_bf16,
                 const float* x, int64_t n, float add, float* y, cudaStream_t s);

// AltUp predict: P_j = S_j + sum_k c [t, j * 4 + k] S_k over the 4 streams S, P [4, n, E].
void AltUpPredict(const float* streams, const float* coefs, float* pred, int64_t n, int64_t dim,
                  cudaStream_t s);

// AltUp correct: S_j = (o - P_0) * m [t, j] + P_j.
void AltUpCorrect(float* streams, const float* pred, const float* o, const float* m, int64_t n,
                  int64_t dim, cudaStream_t s);

// a = ((o + p0) + (laurel + xn)) * half, count values.
void Combine(const float* o, const float* p0, const float* laurel, const float* xn, float half,
             float* a, int64_t count, cudaStream_t s);

// Gaussian top-k sparsity of rows g [n, dim]: g = max(g - (mean + k * std), 0), std with
// dim - 1 as the CPU (and llama.cpp) compute it.
void Sparsify(float* g, int64_t n, int64_t dim, float k, cudaStream_t s);

// out [n, dim] = x [n, dim] * v [dim].
void MulVec(const float* x, const float* v, int64_t n, int64_t dim, float* out, cudaStream_t s);

// x *= f, count values.
void Scale(float* x, int64_t count, float f, cudaStream_t s);

}  // namespace cuda
}  // namespace pyengine
