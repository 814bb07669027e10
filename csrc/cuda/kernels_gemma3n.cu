#include "cuda/kernels_gemma3n.h"

#include <cuda_bf16.h>

#include "cuda/device_math.cuh"

namespace pyengine {
namespace cuda {
namespace {

constexpr int kPerLayer = 256;

// The sum of v over a block of up to 1024 threads (every thread gets it).
__device__ float BlockSum(float v) {
  __shared__ float partial[32];
  __syncthreads();  // partial may still be read by a previous call
  v = WarpSum(v);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) total += partial[w];
  return total;
}

__global__ void MatchMagnitudeKernel(const float* ref, float* y, int64_t dim) {
  const float* r = ref + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  float a = 0.f, b = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    a += r[i] * r[i];
    b += yr[i] * yr[i];
  }
  const float target = sqrtf(BlockSum(a)), now = sqrtf(BlockSum(b));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = yr[i] * target / now;
}

// One warp per (token, layer): 256 values, 8 per lane.
__global__ void PerLayerInputsKernel(const float* proj, const float* rows, const float* norm_w,
                                     int64_t n, int n_layer, float eps, float proj_scale,
                                     float emb_scale, float* out) {
  const int64_t task = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (task >= n * n_layer) return;
  const int64_t t = task / n_layer;
  const int l = static_cast<int>(task % n_layer);
  const int lane = threadIdx.x % kWarp;
  const float* p = proj + (t * n_layer + l) * kPerLayer;
  const float* r = rows + (t * n_layer + l) * kPerLayer;
  float v[kPerLayer / kWarp];
  float ss = 0.f;
  for (int j = 0; j < kPerLayer / kWarp; ++j) {
    v[j] = p[lane + kWarp * j] * proj_scale;
    ss += v[j] * v[j];
  }
  const float scale = rsqrtf(WarpSum(ss) / kPerLayer + eps);
  const float half = rsqrtf(2.f);
  float* o = out + (static_cast<int64_t>(l) * n + t) * kPerLayer;
  for (int j = 0; j < kPerLayer / kWarp; ++j) {
    const int i = lane + kWarp * j;
    o[i] = (v[j] * scale * norm_w[i] + r[i] * emb_scale) * half;
  }
}

__global__ void RmsNormScaledKernel(const float* x, const float* w, int64_t dim, float eps,
                                    float post, float* out) {
  const float* xr = x + blockIdx.x * dim;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  const float scale = rsqrtf(BlockSum(ss) / static_cast<float>(dim) + eps);
  float* yr = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = (xr[i] * scale * w[i]) * post;
}

__global__ void TanhKernel(float* x, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] = tanhf(x[i]);
}

__global__ void SmallMatVecKernel(const float* w, int rows, int cols, bool round_f16,
                                  bool round_bf16, const float* x, int64_t n, float add,
                                  float* y) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= n) return;
  float xr[16];
  for (int c = 0; c < cols; ++c) {
    const float v = x[t * cols + c];
    xr[c] = round_f16 ? __half2float(__float2half_rn(v))
            : round_bf16 ? __bfloat162float(__float2bfloat16_rn(v)) : v;
  }
  for (int r = 0; r < rows; ++r) {
    float s = 0.f;
    for (int c = 0; c < cols; ++c) s += w[r * cols + c] * xr[c];
    y[t * rows + r] = s + add;
  }
}

__global__ void AltUpPredictKernel(const float* S, const float* cf, float* P, int64_t n,
                                   int64_t dim) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * dim) return;
  const int64_t t = idx / dim;
  const float* c = cf + t * 16;
  const int64_t stride = n * dim;
  for (int j = 0; j < 4; ++j) {
    float acc = 0.f;
    for (int k = 0; k < 4; ++k) acc += S[k * stride + idx] * c[j * 4 + k];
    P[j * stride + idx] = acc + S[j * stride + idx];
  }
}

__global__ void AltUpCorrectKernel(float* S, const float* P, const float* o, const float* m,
                                   int64_t n, int64_t dim) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * dim) return;
  const int64_t t = idx / dim, stride = n * dim;
  const float innovation = o[idx] - P[idx];
  for (int j = 0; j < 4; ++j) S[j * stride + idx] = innovation * m[t * 4 + j] + P[j * stride + idx];
}

__global__ void CombineKernel(const float* o, const float* p0, const float* laurel, const float* xn,
                              float half, float* a, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) a[i] = ((o[i] + p0[i]) + (laurel[i] + xn[i])) * half;
}

__global__ void SparsifyKernel(float* g, int64_t dim, float k) {
  float* r = g + blockIdx.x * dim;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += r[i];
  const float mean = BlockSum(sum) / static_cast<float>(dim);
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += (r[i] - mean) * (r[i] - mean);
  const float std = sqrtf(BlockSum(ss) / static_cast<float>(dim - 1));
  const float cut = mean + std * k;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) r[i] = fmaxf(r[i] - cut, 0.f);
}

__global__ void MulVecKernel(const float* x, const float* v, int64_t dim, int64_t count,
                             float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = x[i] * v[i % dim];
}

__global__ void ScaleKernel(float* x, int64_t count, float f) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] *= f;
}

}  // namespace

void MatchMagnitude(const float* ref, float* y, int64_t n, int64_t dim, cudaStream_t s) {
  PYE_LAUNCH(MatchMagnitudeKernel, static_cast<unsigned>(n), 256, 0, s)(ref, y, dim);
  PYE_CUDA(cudaGetLastError());
}

void PerLayerInputs(const float* proj, const float* rows, const float* norm_w, int64_t n,
                    int n_layer, float eps, float proj_scale, float emb_scale, float* out,
                    cudaStream_t s) {
  PYE_LAUNCH(PerLayerInputsKernel, Blocks(n * n_layer, 4), 4 * kWarp, 0, s)(
      proj, rows, norm_w, n, n_layer, eps, proj_scale, emb_scale, out);
  PYE_CUDA(cudaGetLastError());
}

void RmsNormScaled(const float* x, const float* w, int64_t n, int64_t dim, float eps, float post,
                   float* out, cudaStream_t s) {
  PYE_LAUNCH(RmsNormScaledKernel, static_cast<unsigned>(n), 256, 0, s)(x, w, dim, eps, post, out);
  PYE_CUDA(cudaGetLastError());
}

void Tanh(float* x, int64_t count, cudaStream_t s) {
  PYE_LAUNCH(TanhKernel, Blocks(count, 256), 256, 0, s)(x, count);
  PYE_CUDA(cudaGetLastError());
}

void SmallMatVec(const float* w, int rows, int cols, bool round_f16, bool round_bf16,
                 const float* x, int64_t n, float add, float* y, cudaStream_t s) {
  PYE_LAUNCH(SmallMatVecKernel, Blocks(n, 128), 128, 0, s)(w, rows, cols, round_f16,
                                                            round_bf16, x, n, add, y);
  PYE_CUDA(cudaGetLastError());
}

void AltUpPredict(const float* streams, const float* coefs, float* pred, int64_t n, int64_t dim,
                  cudaStream_t s) {
  PYE_LAUNCH(AltUpPredictKernel, Blocks(n * dim, 256), 256, 0, s)(streams, coefs, pred, n, dim);
  PYE_CUDA(cudaGetLastError());
}

void AltUpCorrect(float* streams, const float* pred, const float* o, const float* m, int64_t n,
                  int64_t dim, cudaStream_t s) {
  PYE_LAUNCH(AltUpCorrectKernel, Blocks(n * dim, 256), 256, 0, s)(streams, pred, o, m, n, dim);
  PYE_CUDA(cudaGetLastError());
}

void Combine(const float* o, const float* p0, const float* laurel, const float* xn, float half,
             float* a, int64_t count, cudaStream_t s) {
  PYE_LAUNCH(CombineKernel, Blocks(count, 256), 256, 0, s)(o, p0, laurel, xn, half, a, count);
  PYE_CUDA(cudaGetLastError());
}

void Sparsify(float* g, int64_t n, int64_t dim, float k, cudaStream_t s) {
  PYE_LAUNCH(SparsifyKernel, static_cast<unsigned>(n), 256, 0, s)(g, dim, k);
  PYE_CUDA(cudaGetLastError());
}

void MulVec(const float* x, const float* v, int64_t n, int64_t dim, float* out, cudaStream_t s) {
  PYE_LAUNCH(MulVecKernel, Blocks(n * dim, 256), 256, 0, s)(x, v, dim, n * dim, out);
  PYE_CUDA(cudaGetLastError());
}

void Scale(float* x, int64_t count, float f, cudaStream_t s) {
  PYE_LAUNCH(ScaleKernel, Blocks(count, 256), 256, 0, s)(x, count, f);
  PYE_CUDA(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pyengine
