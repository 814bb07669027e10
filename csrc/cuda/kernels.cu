#include "cuda/kernels.h"

#include <cuda_bf16.h>

#include <algorithm>

#include "cuda/device_math.cuh"

namespace pyengine {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 8;    // MatMul: one warp per output row, 8 warps a block
constexpr int kMaxHeadDim = 256;
constexpr int kMaxLaneDims = kMaxHeadDim / kWarp;

__device__ __forceinline__ float Bf16Bits(uint16_t b) { return __uint_as_float(uint32_t{b} << 16); }

__device__ __forceinline__ float RoundBf16(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

__device__ __forceinline__ float RoundHalf(float x) { return __half2float(__float2half_rn(x)); }

// Four consecutive weights of a row, starting at a multiple of 4.
__device__ __forceinline__ float4 Load4(const DevMatrix& m, int64_t row, int64_t c) {
  const int64_t i = row * m.cols + c;
  switch (m.type) {
    case WType::kF32:
      return *reinterpret_cast<const float4*>(static_cast<const float*>(m.w) + i);
    case WType::kF16: {
      const __half2* h = reinterpret_cast<const __half2*>(static_cast<const __half*>(m.w) + i);
      const float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
      return make_float4(a.x, a.y, b.x, b.y);
    }
    case WType::kBF16: {
      const ushort4 u = *reinterpret_cast<const ushort4*>(static_cast<const uint16_t*>(m.w) + i);
      return make_float4(Bf16Bits(u.x), Bf16Bits(u.y), Bf16Bits(u.z), Bf16Bits(u.w));
    }
    default: {
      const char4 q = *reinterpret_cast<const char4*>(static_cast<const int8_t*>(m.w) + i);
      const float d = __half2float(m.d[row * (m.cols / 32) + c / 32]);
      return make_float4(d * q.x, d * q.y, d * q.z, d * q.w);
    }
  }
}

__device__ __forceinline__ float Load1(const DevMatrix& m, int64_t row, int64_t c) {
  const int64_t i = row * m.cols + c;
  switch (m.type) {
    case WType::kF32: return static_cast<const float*>(m.w)[i];
    case WType::kF16: return __half2float(static_cast<const __half*>(m.w)[i]);
    case WType::kBF16: return Bf16Bits(static_cast<const uint16_t*>(m.w)[i]);
    default:
      return __half2float(m.d[row * (m.cols / 32) + c / 32]) * static_cast<const int8_t*>(m.w)[i];
  }
}

// One block per (token, 32-value block) group of a row: a warp per row, a lane per value.
__global__ void QuantizeQ8Kernel(const float* x, int64_t n, int64_t cols, int8_t* xq, float* xd) {
  const int64_t blocks = cols / 32;
  const int64_t b = blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (b >= n * blocks) return;
  const int lane = threadIdx.x % kWarp;
  const float v = x[b * 32 + lane];
  float amax = fabsf(v);
  for (int o = kWarp / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  // llama.cpp's quantize_row_q8_0: d = amax / 127 stored as fp16, quants from the exact 1 / d.
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  xq[b * 32 + lane] = static_cast<int8_t>(roundf(v * id));
  if (lane == 0) xd[b] = RoundHalf(d);
}

__global__ void RoundKernel(const float* x, int64_t count, bool bf16, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = bf16 ? RoundBf16(x[i]) : RoundHalf(x[i]);
}

// y[t, row] for TOK tokens: a warp walks the row 128 values (4 per lane) at a time.
template <int TOK>
__global__ void MatMulKernel(DevMatrix m, const float* x, int64_t n, float* y) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  if (row >= m.rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t0 = blockIdx.y * static_cast<int64_t>(TOK);
  const int nt = static_cast<int>(min(static_cast<int64_t>(TOK), n - t0));
  float acc[TOK];
#pragma unroll
  for (int j = 0; j < TOK; ++j) acc[j] = 0.f;
  for (int64_t c = lane * 4; c < m.cols; c += 4 * kWarp) {  // no shuffles inside: lanes may differ
    const float4 w = Load4(m, row, c);
#pragma unroll
    for (int j = 0; j < TOK; ++j) {
      if (j < nt) {
        const float4 a = *reinterpret_cast<const float4*>(x + (t0 + j) * m.cols + c);
        acc[j] += w.x * a.x + w.y * a.y + w.z * a.z + w.w * a.w;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < TOK; ++j) {
    const float s = WarpSum(acc[j]);
    if (lane == 0 && j < nt) y[(t0 + j) * m.rows + row] = s;
  }
}

// Q8_0 weights against Q8_0 activations: integer dot products per 32-value block (dp4a), each
// block's sum scaled by both blocks' scales, as llama.cpp's vec_dot_q8_0_q8_0.
template <int TOK>
__global__ void MatMulQ8Kernel(DevMatrix m, const int8_t* xq, const float* xd, int64_t n,
                               float* y) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  if (row >= m.rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t0 = blockIdx.y * static_cast<int64_t>(TOK);
  const int nt = static_cast<int>(min(static_cast<int64_t>(TOK), n - t0));
  const int64_t nb = m.cols / 32;
  const int8_t* wq = static_cast<const int8_t*>(m.w) + row * m.cols;
  float acc[TOK];
#pragma unroll
  for (int j = 0; j < TOK; ++j) acc[j] = 0.f;
  // A lane handles 4 values; 8 lanes make one block. Per-block sums are reduced over those 8
  // lanes before scaling, so each block's integer sum is exact. Every lane runs every
  // iteration (cols is a multiple of 32, not always of 128), so the shuffles see all lanes.
  for (int64_t c0 = 0; c0 < m.cols; c0 += 4 * kWarp) {
    const int64_t c = c0 + lane * 4;
    const bool in = c < m.cols;
    const int w4 = in ? *reinterpret_cast<const int*>(wq + c) : 0;
    const int64_t b = c / 32;
    const float dw = in ? __half2float(m.d[row * nb + b]) : 0.f;
#pragma unroll
    for (int j = 0; j < TOK; ++j) {
      int sum = 0;
      if (in && j < nt) {
        sum = __dp4a(w4, *reinterpret_cast<const int*>(xq + (t0 + j) * m.cols + c), 0);
      }
      // Sum the block's 8 lanes (lanes 8k .. 8k+7 share a block).
      for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (in && j < nt && lane % 8 == 0) {
        acc[j] += dw * xd[(t0 + j) * nb + b] * static_cast<float>(sum);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < TOK; ++j) {
    const float s = WarpSum(acc[j]);
    if (lane == 0 && j < nt) y[(t0 + j) * m.rows + row] = s;
  }
}

__global__ void EmbedKernel(DevMatrix m, const int32_t* tokens, float scale, float* x) {
  const int64_t t = blockIdx.x;
  const int64_t row = tokens[t];
  for (int64_t c = threadIdx.x; c < m.cols; c += blockDim.x) {
    x[t * m.cols + c] = Load1(m, row, c) * scale;
  }
}

// One block per row: the sum of squares reduced over the block.
__global__ void RmsNormKernel(const float* x, const float* w, int64_t dim, float eps, float* out) {
  __shared__ float partial[32];
  const float* xr = x + blockIdx.x * dim;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = WarpSum(ss);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = ss;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    float v = threadIdx.x < blockDim.x / kWarp ? partial[threadIdx.x] : 0.f;
    v = WarpSum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float scale = rsqrtf(partial[0] / static_cast<float>(dim) + eps);
  float* yr = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = w ? xr[i] * scale * w[i] : xr[i] * scale;
  }
}

__global__ void AddKernel(float* x, const float* o, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] += o[i];
}

__global__ void GeluMulKernel(float* g, const float* u, const float* table, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float x = g[i];
  const float gelu = x <= -10.f ? 0.f : x >= 10.f ? x : table[__half_as_ushort(__float2half_rn(x))];
  g[i] = gelu * u[i];
}

__global__ void SoftcapKernel(float* x, int64_t count, float cap) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] = cap * tanhf(x[i] / cap);
}

__global__ void GatherKernel(const float* x, const int32_t* rows, int64_t dim, float* out) {
  const float* src = x + static_cast<int64_t>(rows[blockIdx.x]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[blockIdx.x * dim + i] = src[i];
}

// A head's values in one warp: lane l holds dims l, l + 32, ... (nd = head_dim / 32 of them).
// NEOX rotation pairs dim i with i + head_dim / 2: in this layout, slot j with j + nd / 2.
__device__ void NormRope(float* v, int nd, int head_dim, const float* w, float eps, int pos,
                         const float* inv_freq, bool rope) {
  const int lane = threadIdx.x % kWarp;
  float ss = 0.f;
  for (int j = 0; j < nd; ++j) ss += v[j] * v[j];
  ss = WarpSum(ss);
  const float scale = rsqrtf(ss / static_cast<float>(head_dim) + eps);
  for (int j = 0; j < nd; ++j) v[j] = w ? v[j] * scale * w[lane + kWarp * j] : v[j] * scale;
  if (!rope) return;
  const int half = nd / 2;
  for (int j = 0; j < half; ++j) {
    const float theta = static_cast<float>(pos) * inv_freq[lane + kWarp * j];
    const float c = cosf(theta), s = sinf(theta);
    const float x0 = v[j], x1 = v[j + half];
    v[j] = x0 * c - x1 * s;
    v[j + half] = x0 * s + x1 * c;
  }
}

__device__ __forceinline__ __half* KvSlot(const KvArgs& kv, const KvGroup& g, int page, int64_t t,
                                          bool value) {
  const int s = kv.seq[t];
  const int p = kv.pos[t];
  const int32_t id = g.table[g.off[s] + (p / kv.block_tokens) * g.pages + page];
  return kv.kv + static_cast<int64_t>(id) * 2 * kv.block_tokens * kv.kv_dim +
         (value ? kv.block_tokens * kv.kv_dim : 0) + (p % kv.block_tokens) * kv.kv_dim;
}

// One warp per (token, head): heads 0 .. n_head-1 are queries, then n_head_kv keys.
__global__ void PrepareQkvKernel(float* q, const float* k, const float* v, int64_t n, int n_head,
                                 int n_head_kv, int head_dim, const float* q_norm,
                                 const float* k_norm, const float* inv_freq, float attn_scale,
                                 float eps, bool write_kv, bool v_norm, KvArgs kv, KvGroup g,
                                 int page) {
  const int heads = n_head + (write_kv ? n_head_kv : 0);
  const int64_t task = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (task >= n * heads) return;
  const int64_t t = task / heads;
  const int h = static_cast<int>(task % heads);
  const int lane = threadIdx.x % kWarp;
  const int nd = head_dim / kWarp;
  const int pos = kv.pos[t];
  float r[kMaxLaneDims];
  if (h < n_head) {
    float* qh = q + (t * n_head + h) * head_dim;
    for (int j = 0; j < nd; ++j) r[j] = qh[lane + kWarp * j];
    NormRope(r, nd, head_dim, q_norm, eps, pos, inv_freq, true);
    // q meets the fp16 keys in fp16, as on the CPU.
    for (int j = 0; j < nd; ++j) qh[lane + kWarp * j] = RoundHalf(r[j] * attn_scale);
    return;
  }
  const int kh = h - n_head;
  const float* kr = k + (t * n_head_kv + kh) * head_dim;
  for (int j = 0; j < nd; ++j) r[j] = kr[lane + kWarp * j];
  NormRope(r, nd, head_dim, k_norm, eps, pos, inv_freq, true);
  __half* kd = KvSlot(kv, g, page, t, false) + kh * head_dim;
  for (int j = 0; j < nd; ++j) kd[lane + kWarp * j] = __float2half_rn(r[j]);
  const float* vr = v + (t * n_head_kv + kh) * head_dim;
  for (int j = 0; j < nd; ++j) r[j] = vr[lane + kWarp * j];
  if (v_norm) NormRope(r, nd, head_dim, nullptr, eps, pos, inv_freq, false);
  __half* vd = KvSlot(kv, g, page, t, true) + kh * head_dim;
  for (int j = 0; j < nd; ++j) vd[lane + kWarp * j] = __float2half_rn(r[j]);
}

// One warp per (token, query head). Pass 1: running max and sum of exp over the keys; pass 2:
// weights exp(s - max) / sum rounded to fp16 (as the CPU's fp16 product with V rounds them),
// accumulated over the values.
__global__ void AttendKernel(const float* q, float* attn, int64_t n, int n_head, int n_head_kv,
                             int head_dim, int window, KvArgs kv, KvGroup g, int page) {
  const int64_t task = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (task >= n * n_head) return;
  const int64_t t = task / n_head;
  const int h = static_cast<int>(task % n_head);
  const int kvh = h / (n_head / n_head_kv);
  const int lane = threadIdx.x % kWarp;
  const int nd = head_dim / kWarp;
  const int pos = kv.pos[t];
  const int first = window > 0 ? max(0, pos - window + 1) : 0;
  const int s = kv.seq[t];
  float qr[kMaxLaneDims];
  for (int j = 0; j < nd; ++j) qr[j] = q[(t * n_head + h) * head_dim + lane + kWarp * j];
  auto key_or_value = [&](int p, bool value) {
    const int32_t id = g.table[g.off[s] + (p / kv.block_tokens) * g.pages + page];
    return kv.kv + static_cast<int64_t>(id) * 2 * kv.block_tokens * kv.kv_dim +
           (value ? kv.block_tokens * kv.kv_dim : 0) + (p % kv.block_tokens) * kv.kv_dim +
           kvh * head_dim;
  };
  auto score = [&](int p) {
    const __half* key = key_or_value(p, false);
    float dot = 0.f;
    for (int j = 0; j < nd; ++j) dot += qr[j] * __half2float(key[lane + kWarp * j]);
    return WarpSum(dot);
  };
  float mx = -INFINITY, sum = 0.f;
  for (int p = first; p <= pos; ++p) {
    const float sc = score(p);
    const float m2 = fmaxf(mx, sc);
    sum = sum * expf(mx - m2) + expf(sc - m2);
    mx = m2;
  }
  const float inv = 1.f / sum;
  float acc[kMaxLaneDims];
  for (int j = 0; j < nd; ++j) acc[j] = 0.f;
  for (int p = first; p <= pos; ++p) {
    const float w = RoundHalf(expf(score(p) - mx) * inv);
    const __half* val = key_or_value(p, true);
    for (int j = 0; j < nd; ++j) acc[j] += w * __half2float(val[lane + kWarp * j]);
  }
  for (int j = 0; j < nd; ++j) attn[(t * n_head + h) * head_dim + lane + kWarp * j] = acc[j];
}

}  // namespace

void PrepareInput(WType type, const float* x, int64_t n, int64_t cols, float* xr, int8_t* xq,
                  float* xd, cudaStream_t s) {
  if (type == WType::kQ8_0) {
    const int64_t blocks = n * (cols / 32);
    QuantizeQ8Kernel<<<Blocks(blocks, 8), 8 * kWarp, 0, s>>>(x, n, cols, xq, xd);
  } else if (type == WType::kF16 || type == WType::kBF16) {
    RoundKernel<<<Blocks(n * cols, 256), 256, 0, s>>>(x, n * cols, type == WType::kBF16, xr);
  } else if (xr != x) {
    PYE_CUDA(cudaMemcpyAsync(xr, x, n * cols * sizeof(float), cudaMemcpyDeviceToDevice, s));
  }
  PYE_CUDA(cudaGetLastError());
}

void MatMul(const DevMatrix& w, const float* xr, const int8_t* xq, const float* xd, int64_t n,
            float* y, cudaStream_t s) {
  const dim3 block(kRowsPerBlock * kWarp);
  // One token at a time keeps decode's single row in registers; prompts share each weight
  // load over 8 tokens.
  if (n == 1) {
    const dim3 grid(Blocks(w.rows, kRowsPerBlock), 1);
    if (w.type == WType::kQ8_0) {
      MatMulQ8Kernel<1><<<grid, block, 0, s>>>(w, xq, xd, n, y);
    } else {
      MatMulKernel<1><<<grid, block, 0, s>>>(w, xr, n, y);
    }
  } else {
    const dim3 grid(Blocks(w.rows, kRowsPerBlock), Blocks(n, 8));
    if (w.type == WType::kQ8_0) {
      MatMulQ8Kernel<8><<<grid, block, 0, s>>>(w, xq, xd, n, y);
    } else {
      MatMulKernel<8><<<grid, block, 0, s>>>(w, xr, n, y);
    }
  }
  PYE_CUDA(cudaGetLastError());
}

void Embed(const DevMatrix& table, const int32_t* tokens, int64_t n, float scale, float* x,
           cudaStream_t s) {
  EmbedKernel<<<static_cast<unsigned>(n), 256, 0, s>>>(table, tokens, scale, x);
  PYE_CUDA(cudaGetLastError());
}

void RmsNorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out,
             cudaStream_t s) {
  RmsNormKernel<<<static_cast<unsigned>(n), 256, 0, s>>>(x, w, dim, eps, out);
  PYE_CUDA(cudaGetLastError());
}

void Add(float* x, const float* o, int64_t count, cudaStream_t s) {
  AddKernel<<<Blocks(count, 256), 256, 0, s>>>(x, o, count);
  PYE_CUDA(cudaGetLastError());
}

void GeluMul(float* g, const float* u, const float* table, int64_t count, cudaStream_t s) {
  GeluMulKernel<<<Blocks(count, 256), 256, 0, s>>>(g, u, table, count);
  PYE_CUDA(cudaGetLastError());
}

void PrepareQkv(float* q, const float* k, const float* v, int64_t n, int n_head, int n_head_kv,
                int head_dim, const float* q_norm, const float* k_norm, const float* inv_freq,
                float attn_scale, float eps, bool write_kv, bool v_norm, const KvArgs& kv,
                const KvGroup& group, int page, cudaStream_t s) {
  const int64_t tasks = n * (n_head + (write_kv ? n_head_kv : 0));
  PrepareQkvKernel<<<Blocks(tasks, 4), 4 * kWarp, 0, s>>>(
      q, k, v, n, n_head, n_head_kv, head_dim, q_norm, k_norm, inv_freq, attn_scale, eps,
      write_kv, v_norm, kv, group, page);
  PYE_CUDA(cudaGetLastError());
}

void Attend(const float* q, float* attn, int64_t n, int n_head, int n_head_kv, int head_dim,
            int window, const KvArgs& kv, const KvGroup& group, int page, cudaStream_t s) {
  AttendKernel<<<Blocks(n * n_head, 4), 4 * kWarp, 0, s>>>(q, attn, n, n_head, n_head_kv,
                                                           head_dim, window, kv, group, page);
  PYE_CUDA(cudaGetLastError());
}

void GatherRows(const float* x, const int32_t* rows_idx, int64_t n_rows, int64_t dim, float* out,
                cudaStream_t s) {
  if (n_rows == 0) return;
  GatherKernel<<<static_cast<unsigned>(n_rows), 256, 0, s>>>(x, rows_idx, dim, out);
  PYE_CUDA(cudaGetLastError());
}

void Softcap(float* x, int64_t count, float cap, cudaStream_t s) {
  SoftcapKernel<<<Blocks(count, 256), 256, 0, s>>>(x, count, cap);
  PYE_CUDA(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pyengine
