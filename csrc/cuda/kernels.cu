#include "cuda/kernels.h"

#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

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

// Up to kMaxMatSet matrices of one type and width (q, k, v; gate and up) in one launch: the
// grid's x blocks are theirs in turn, `first[i]` the first block of matrix i.
struct MatSet {
  DevMatrix m[kMaxMatSet];
  float* y[kMaxMatSet];
  unsigned first[kMaxMatSet];
  int count;
  unsigned block;  // set by Pick: the block within the picked matrix

  // Constant indices only (unrolled selects): an indexed kernel parameter would be copied to
  // local memory.
  __device__ __forceinline__ DevMatrix Pick(float** out) {
    DevMatrix r = m[0];
    float* yr = y[0];
    unsigned f = first[0];
#pragma unroll
    for (int k = 1; k < kMaxMatSet; ++k) {
      if (k < count && blockIdx.x >= first[k]) r = m[k], yr = y[k], f = first[k];
    }
    block = blockIdx.x - f;
    *out = yr;
    return r;
  }
};

// GELU read from the fp16 table (table [65536], as the CPU's), saturated outside +-10.
__device__ __forceinline__ float Gelu(float x, const float* table) {
  return x <= -10.f ? 0.f : x >= 10.f ? x : table[__half_as_ushort(__float2half_rn(x))];
}

// Value v (lane `lane` of a warp's 32-value group; every lane calls) stored at i of the input
// a matrix of `type` reads: rounded to fp16 / bf16 in xr, copied to xr (F32), or quantized
// with the group (i a multiple of 32 at lane 0) as llama.cpp's quantize_row_q8_0 does:
// d = amax / 127 stored as fp16, quants from the exact 1 / d.
__device__ __forceinline__ void EmitInput(WType type, float v, int lane, int64_t i, float* xr,
                                          int8_t* xq, float* xd) {
  if (type != WType::kQ8_0) {
    xr[i] = type == WType::kF16 ? RoundHalf(v) : type == WType::kBF16 ? RoundBf16(v) : v;
    return;
  }
  float amax = fabsf(v);
  for (int o = kWarp / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  xq[i] = static_cast<int8_t>(roundf(v * id));
  if (lane == 0) xd[i / 32] = RoundHalf(d);
}

// The matrix input from x [n, cols] (with u: gelu(x) * u, the FFN's down input): a warp per
// 32-value group.
__global__ void PrepareKernel(WType type, const float* x, const float* u, const float* table,
                              int64_t groups, float* xr, int8_t* xq, float* xd) {
  const int64_t g = blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (g >= groups) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t i = g * 32 + lane;
  const float v = u ? Gelu(x[i], table) * u[i] : x[i];
  EmitInput(type, v, lane, i, xr, xq, xd);
}

// 1 / rms of row x [dim] plus eps, reduced over the block (every thread gets it). Once per
// block: a second call could overwrite `partial` while it is read.
__device__ float RowRmsScale(const float* xr, int64_t dim, float eps) {
  __shared__ float partial[32];
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
  return rsqrtf(partial[0] / static_cast<float>(dim) + eps);
}

// RMSNorm of each row straight into the input of a matrix of `type`: a block per row, a warp
// per 32-value group (dim a multiple of 32).
__global__ void NormPrepareKernel(const float* x, const float* w, int64_t dim, float eps,
                                  WType type, float* xr, int8_t* xq, float* xd) {
  const float* row = x + blockIdx.x * dim;
  const float scale = RowRmsScale(row, dim, eps);
  const int lane = threadIdx.x % kWarp;
  for (int64_t g = threadIdx.x / kWarp; g < dim / 32; g += blockDim.x / kWarp) {
    const int64_t c = g * 32 + lane;
    EmitInput(type, row[c] * scale * w[c], lane, blockIdx.x * dim + c, xr, xq, xd);
  }
}

// Each of a warp's TOK per-lane partial sums, summed over the warp, stored at y[j * stride] for
// j < nt. The sums are transposed while they are reduced: each step halves the values a lane
// holds, so TOK = 8 takes 9 shuffles instead of 8 x 5.
template <int TOK>
__device__ __forceinline__ void StoreRowSums(float (&acc)[TOK], int lane, int nt, float* y,
                                             int64_t stride) {
  static_assert((TOK & (TOK - 1)) == 0 && TOK <= kWarp, "TOK: a power of 2 up to 32");
  int o = kWarp / 2, j = 0;
#pragma unroll
  for (int half = TOK / 2; half >= 1; half /= 2, o /= 2) {
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float send = upper ? acc[i] : acc[i + half];
      const float keep = upper ? acc[i + half] : acc[i];
      acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
    if (upper) j += half;
  }
  float s = acc[0];
  for (; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  // Lanes that differ only in the low bits hold the same sum: the first of them stores it.
  if ((lane & (kWarp / TOK - 1)) == 0 && j < nt) y[j * stride] = s;
}

// y[t, row] for TOK tokens: a warp walks the row 128 values (4 per lane) at a time.
template <int TOK>
__global__ void MatMulKernel(MatSet set, const float* x, int64_t n) {
  float* y;
  const DevMatrix m = set.Pick(&y);
  const int64_t row = set.block * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
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
  StoreRowSums<TOK>(acc, lane, nt, y + t0 * m.rows + row, m.rows);
}

// Q8_0 weights against Q8_0 activations: integer dot products of 4 values (dp4a), each scaled
// by both blocks' scales. llama.cpp's CUDA kernel scales such partial sums too; only the order
// of the float additions differs from a per-block sum.
template <int TOK>
__global__ void MatMulQ8Kernel(MatSet set, const int8_t* xq, const float* xd, int64_t n) {
  float* y;
  const DevMatrix m = set.Pick(&y);
  const int64_t row = set.block * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  if (row >= m.rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t0 = blockIdx.y * static_cast<int64_t>(TOK);
  const int nt = static_cast<int>(min(static_cast<int64_t>(TOK), n - t0));
  const int64_t nb = m.cols / 32;
  const int8_t* wq = static_cast<const int8_t*>(m.w) + row * m.cols;
  float acc[TOK];
#pragma unroll
  for (int j = 0; j < TOK; ++j) acc[j] = 0.f;
  for (int64_t c = lane * 4; c < m.cols; c += 4 * kWarp) {  // no shuffles inside: lanes may differ
    const int w4 = *reinterpret_cast<const int*>(wq + c);
    const int64_t b = c / 32;
    const float dw = __half2float(m.d[row * nb + b]);
#pragma unroll
    for (int j = 0; j < TOK; ++j) {
      if (j < nt) {
        const int sum = __dp4a(w4, *reinterpret_cast<const int*>(xq + (t0 + j) * m.cols + c), 0);
        acc[j] += dw * xd[(t0 + j) * nb + b] * static_cast<float>(sum);
      }
    }
  }
  StoreRowSums<TOK>(acc, lane, nt, y + t0 * m.rows + row, m.rows);
}

// y [n, rows] for prompts and large batches of F32 matrices (the other types go through the
// tensor cores below): a block computes a tile of 64 rows x 32 tokens, staging 32 columns of
// the weights and of the input in shared memory at a time, so each weight is read once per
// 32 tokens. Thread (r, c) of 16 x 16 owns rows r + 16 i (i < 4) and tokens c + 16 j (j < 2).
constexpr int kTileRows = 64, kTileTokens = 32, kTileK = 32;

__global__ void MatMulTiledKernel(MatSet set, const float* xr, int64_t n) {
  __shared__ float ws[kTileRows][kTileK + 1];  // +1: rows fall in different banks
  __shared__ float xs[kTileTokens][kTileK + 1];
  float* y;
  const DevMatrix m = set.Pick(&y);
  const int tid = threadIdx.x;
  const int64_t r0 = set.block * static_cast<int64_t>(kTileRows);
  const int64_t t0 = blockIdx.y * static_cast<int64_t>(kTileTokens);
  const int tr = tid % 16, tc = tid / 16;
  float acc[4][2] = {};
  for (int64_t k0 = 0; k0 < m.cols; k0 += kTileK) {
    {  // weights: 8 values a thread
      const int r = tid / 4, c = (tid % 4) * 8;
      const int64_t row = r0 + r;
      for (int h = 0; h < 8; h += 4) {
        const float4 v = row < m.rows ? Load4(m, row, k0 + c + h) : make_float4(0.f, 0.f, 0.f, 0.f);
        ws[r][c + h] = v.x, ws[r][c + h + 1] = v.y, ws[r][c + h + 2] = v.z, ws[r][c + h + 3] = v.w;
      }
    }
    {  // input: 4 values a thread
      const int t = tid / 8, c = (tid % 8) * 4;
      const int64_t tok = t0 + t;
      const float4 v = tok < n ? *reinterpret_cast<const float4*>(xr + tok * m.cols + k0 + c)
                               : make_float4(0.f, 0.f, 0.f, 0.f);
      xs[t][c] = v.x, xs[t][c + 1] = v.y, xs[t][c + 2] = v.z, xs[t][c + 3] = v.w;
    }
    __syncthreads();
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = ws[tr + 16 * i][kk];
#pragma unroll
      for (int j = 0; j < 2; ++j) b[j] = xs[tc + 16 * j][kk];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();  // the tiles are read before the next step overwrites them
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t row = r0 + tr + 16 * i, tok = t0 + tc + 16 * j;
      if (row < m.rows && tok < n) y[tok * m.rows + row] = acc[i][j];
    }
  }
}

// Tensor-core products for more than 8 tokens of F16, BF16 and Q8_0 matrices (F32 keeps the
// CUDA-core tiles above): the same 64-row x 32-token tiles and 32-column steps, each of the 8
// warps one 16 x 16 piece (rows 16 (w % 4), tokens 16 (w / 4)). F16 / BF16 weights meet the
// input, already rounded to their type, with float sums. Q8_0 quants give exact int32 sums
// per 32-value block, scaled by both blocks' scales as the other kernels scale them.
// Shared tiles are stored as two 16-column halves, so every fragment starts on a 32-byte
// boundary as WMMA requires.
template <WType TYPE>
__global__ void MatMulMmaKernel(MatSet set, const float* xr, const int8_t* xq, const float* xd,
                                int64_t n) {
  using namespace nvcuda;
  constexpr bool kQ8 = TYPE == WType::kQ8_0;
  using T = std::conditional_t<kQ8, signed char,
                               std::conditional_t<TYPE == WType::kF16, __half, __nv_bfloat16>>;
  using Acc = std::conditional_t<kQ8, int, float>;
  constexpr int kLdH = kQ8 ? 32 : 24;  // elements a row of a half-tile: 32 or 48 bytes
  constexpr int kLdC = kTileTokens + 4;
  __shared__ __align__(32) T ws[2][kTileRows][kLdH];
  __shared__ __align__(32) T xs[2][kTileTokens][kLdH];
  __shared__ __align__(32) Acc cs[kTileRows][kLdC];
  __shared__ float wd[kTileRows], xds[kTileTokens];  // Q8_0: this step's block scales
  float* y;
  const DevMatrix m = set.Pick(&y);
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  const int wr = warp % 4, wc = warp / 4;
  const int64_t r0 = set.block * static_cast<int64_t>(kTileRows);
  const int64_t t0 = blockIdx.y * static_cast<int64_t>(kTileTokens);
  const int64_t nb = m.cols / 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, Acc> acc;
  wmma::fill_fragment(acc, Acc(0));
  float qacc[8] = {};  // Q8_0: this lane's 8 of the warp's 16 x 16 sums
  for (int64_t k0 = 0; k0 < m.cols; k0 += kTileK) {
    {  // weights: 8 values a thread, straight from their storage
      const int r = tid / 4, c = (tid % 4) * 8;
      const int64_t row = r0 + r;
      T* dst = &ws[c / 16][r][c % 16];
      if (row < m.rows) {
        const T* src = static_cast<const T*>(m.w) + row * m.cols + k0 + c;
        for (int i = 0; i < 8; ++i) dst[i] = src[i];
      } else {
        for (int i = 0; i < 8; ++i) dst[i] = T{};
      }
      if (kQ8 && tid < kTileRows) {
        wd[tid] = r0 + tid < m.rows ? __half2float(m.d[(r0 + tid) * nb + k0 / 32]) : 0.f;
      }
    }
    {  // input: 4 values a thread
      const int t = tid / 8, c = (tid % 8) * 4;
      const int64_t tok = t0 + t;
      T* dst = &xs[c / 16][t][c % 16];
      for (int i = 0; i < 4; ++i) {
        if (tok >= n) {
          dst[i] = T{};
        } else if constexpr (kQ8) {
          dst[i] = xq[tok * m.cols + k0 + c + i];
        } else if constexpr (TYPE == WType::kF16) {
          dst[i] = __float2half_rn(xr[tok * m.cols + k0 + c + i]);  // exact: already rounded
        } else {
          dst[i] = __float2bfloat16_rn(xr[tok * m.cols + k0 + c + i]);
        }
      }
      if (kQ8 && tid < kTileTokens) xds[tid] = t0 + tid < n ? xd[(t0 + tid) * nb + k0 / 32] : 0.f;
    }
    __syncthreads();
    if constexpr (kQ8) wmma::fill_fragment(acc, 0);
    for (int h = 0; h < 2; ++h) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
      wmma::load_matrix_sync(a, &ws[h][wr * 16][0], kLdH);
      wmma::load_matrix_sync(b, &xs[h][wc * 16][0], kLdH);
      wmma::mma_sync(acc, a, b, acc);
    }
    if constexpr (kQ8) {  // this block's exact sums, scaled into float
      wmma::store_matrix_sync(&cs[wr * 16][wc * 16], acc, kLdC, wmma::mem_row_major);
      __syncwarp();
      for (int i = 0; i < 8; ++i) {
        const int e = lane + kWarp * i, r = wr * 16 + e / 16, t = wc * 16 + e % 16;
        qacc[i] += wd[r] * xds[t] * static_cast<float>(cs[r][t]);
      }
    }
    __syncthreads();  // the tiles are read before the next step overwrites them
  }
  if constexpr (kQ8) {
    for (int i = 0; i < 8; ++i) {
      const int e = lane + kWarp * i;
      const int64_t row = r0 + wr * 16 + e / 16, tok = t0 + wc * 16 + e % 16;
      if (row < m.rows && tok < n) y[tok * m.rows + row] = qacc[i];
    }
  } else {
    wmma::store_matrix_sync(&cs[wr * 16][wc * 16], acc, kLdC, wmma::mem_row_major);
    __syncthreads();
    for (int e = tid; e < kTileRows * kTileTokens; e += blockDim.x) {
      const int r = e % kTileRows, t = e / kTileRows;
      if (r0 + r < m.rows && t0 + t < n) y[(t0 + t) * m.rows + r0 + r] = cs[r][t];
    }
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
__global__ void RmsNormKernel(const float* x, const float* w, int64_t dim, float eps, bool add,
                              float* out) {
  const float* xr = x + blockIdx.x * dim;
  const float scale = RowRmsScale(xr, dim, eps);
  float* yr = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = w ? xr[i] * scale * w[i] : xr[i] * scale;
    yr[i] = add ? yr[i] + v : v;
  }
}

__global__ void AddKernel(float* x, const float* o, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] += o[i];
}

__global__ void GeluMulKernel(float* g, const float* u, const float* table, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  g[i] = Gelu(g[i], table) * u[i];
}

__global__ void SoftcapKernel(float* x, int64_t count, float cap) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] = cap * tanhf(x[i] / cap);
}

// One block per row: the first index of the largest value, NaN never winning (0 when no value
// beats -inf), as the CPU's greedy sampler picks it. Each thread keeps the first best of its
// strided share; pairs then merge by value, ties to the lower index.
__global__ void ArgmaxKernel(const float* x, int64_t cols, int32_t* out) {
  __shared__ float best_v[32];
  __shared__ int32_t best_i[32];
  const float* r = x + blockIdx.x * cols;
  float v = -INFINITY;
  int32_t idx = INT32_MAX;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    if (r[i] > v) v = r[i], idx = static_cast<int32_t>(i);
  }
  auto merge = [&](float ov, int32_t oi) {
    if (ov > v || (ov == v && oi < idx)) v = ov, idx = oi;
  };
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
    merge(ov, oi);
  }
  if (threadIdx.x % kWarp == 0) best_v[threadIdx.x / kWarp] = v, best_i[threadIdx.x / kWarp] = idx;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (unsigned w = 1; w < blockDim.x / kWarp; ++w) merge(best_v[w], best_i[w]);
    out[blockIdx.x] = idx == INT32_MAX ? 0 : idx;
  }
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

// Sequence s's keys (value = false) or values at position p: kv_dim halves of the layer's page.
__device__ __forceinline__ __half* KvAt(const KvArgs& kv, const KvGroup& g, int page, int s,
                                        int p, bool value) {
  const int32_t id = g.table[g.off[s] + (p / kv.block_tokens) * g.pages + page];
  return kv.kv + static_cast<int64_t>(id) * 2 * kv.block_tokens * kv.kv_dim +
         (value ? kv.block_tokens * kv.kv_dim : 0) + (p % kv.block_tokens) * kv.kv_dim;
}

// Token t's slot.
__device__ __forceinline__ __half* KvSlot(const KvArgs& kv, const KvGroup& g, int page, int64_t t,
                                          bool value) {
  return KvAt(kv, g, page, kv.seq[t], kv.pos[t], value);
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

// Attention is split over the context (flash-decoding): each (token, query head) task's keys are
// shared among `splits` warps, so a decode step of few tokens still fills the device. Two
// passes keep the CPU's rounding: AttendStatsKernel finds each split's max score and sum of
// exp; AttendValuesKernel combines them into the task's softmax, then weighs its split's
// values with weights exp(s - max) / sum rounded to fp16 (as the CPU's fp16 product with V
// rounds them); AttendReduceKernel adds the splits' partial outputs in order.
constexpr int kAttnWarps = 4;  // warps per block

struct AttnTask {
  int64_t t;
  int h, kvh, lane, seq, begin, end;  // this split's keys: [begin, end)
};

// The task of the calling warp and its split's share of the keys (a multiple of 32), or false.
__device__ __forceinline__ bool GetAttnTask(int64_t n, int n_head, int n_head_kv, int window,
                                            const KvArgs& kv, AttnTask* a) {
  const int64_t task =
      blockIdx.x * static_cast<int64_t>(kAttnWarps) + threadIdx.x / kWarp;
  if (task >= n * n_head) return false;
  a->t = task / n_head;
  a->h = static_cast<int>(task % n_head);
  a->kvh = a->h / (n_head / n_head_kv);
  a->lane = threadIdx.x % kWarp;
  a->seq = kv.seq[a->t];
  const int pos = kv.pos[a->t];
  const int first = window > 0 ? max(0, pos - window + 1) : 0;
  const int splits = static_cast<int>(gridDim.y);
  const int chunk = ((pos - first + splits) / splits + kWarp - 1) / kWarp * kWarp;
  a->begin = min(first + static_cast<int>(blockIdx.y) * chunk, pos + 1);
  a->end = min(a->begin + chunk, pos + 1);
  return true;
}

// Position p's key (value = false) or value row of the task's KV head.
__device__ __forceinline__ const __half* KvRow(const KvArgs& kv, const KvGroup& g, int page,
                                               const AttnTask& a, int head_dim, int p,
                                               bool value) {
  return KvAt(kv, g, page, a.seq, p, value) + a.kvh * head_dim;
}

// q . key over head_dim values (one lane, one key).
__device__ __forceinline__ float KeyDot(const float* qh, const __half* key, int head_dim) {
  const __half2* k2 = reinterpret_cast<const __half2*>(key);
  float dot = 0.f;
  for (int d = 0; d < head_dim / 2; ++d) {
    const float2 kf = __half22float2(k2[d]);
    dot += qh[2 * d] * kf.x + qh[2 * d + 1] * kf.y;
  }
  return dot;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// stats [n * n_head, splits]: (max score, sum of exp(score - max)) of each split's keys; a
// lane per key, each lane's running pair merged at the end.
__global__ void AttendStatsKernel(const float* q, float2* stats, int64_t n, int n_head,
                                  int n_head_kv, int head_dim, int window, KvArgs kv, KvGroup g,
                                  int page) {
  AttnTask a;
  if (!GetAttnTask(n, n_head, n_head_kv, window, kv, &a)) return;
  const float* qh = q + (a.t * n_head + a.h) * head_dim;
  float mx = -INFINITY, sum = 0.f;
  for (int p = a.begin + a.lane; p < a.end; p += kWarp) {
    const float sc = KeyDot(qh, KvRow(kv, g, page, a, head_dim, p, false), head_dim);
    const float m2 = fmaxf(mx, sc);
    sum = sum * expf(mx - m2) + expf(sc - m2);
    mx = m2;
  }
  const float m_all = WarpMax(mx);
  const float total = WarpSum(mx == -INFINITY ? 0.f : sum * expf(mx - m_all));
  if (a.lane == 0) {
    stats[(a.t * n_head + a.h) * gridDim.y + blockIdx.y] = make_float2(m_all, total);
  }
}

// out: attn [n, n_head * head_dim] with one split, else partial [n * n_head, splits, head_dim].
// Lane l holds dims l, l + 32, ... of the output; the weights of 32 keys at a time are computed
// a lane per key and shared through shared memory.
__global__ void AttendValuesKernel(const float* q, const float2* stats, float* out, int64_t n,
                                   int n_head, int n_head_kv, int head_dim, int window,
                                   KvArgs kv, KvGroup g, int page) {
  __shared__ float weights[kAttnWarps][kWarp];
  AttnTask a;
  if (!GetAttnTask(n, n_head, n_head_kv, window, kv, &a)) return;
  const int64_t task = a.t * n_head + a.h;
  const int splits = static_cast<int>(gridDim.y);
  float mx = -INFINITY, sum = 0.f;
  for (int i = 0; i < splits; ++i) mx = fmaxf(mx, stats[task * splits + i].x);
  for (int i = 0; i < splits; ++i) {
    const float2 st = stats[task * splits + i];
    if (st.y > 0.f) sum += st.y * expf(st.x - mx);
  }
  const float inv = 1.f / sum;
  const float* qh = q + task * head_dim;
  float* w = weights[threadIdx.x / kWarp];
  const int nd = head_dim / kWarp;
  float acc[kMaxLaneDims];
  for (int j = 0; j < nd; ++j) acc[j] = 0.f;
  for (int p0 = a.begin; p0 < a.end; p0 += kWarp) {  // the same trip count on every lane
    const int p = p0 + a.lane;
    w[a.lane] = p < a.end
                    ? RoundHalf(expf(KeyDot(qh, KvRow(kv, g, page, a, head_dim, p, false),
                                            head_dim) - mx) * inv)
                    : 0.f;
    __syncwarp();
    const int keys = min(kWarp, a.end - p0);
    for (int i = 0; i < keys; ++i) {
      const __half* val = KvRow(kv, g, page, a, head_dim, p0 + i, true);
      const float wi = w[i];
      for (int j = 0; j < nd; ++j) acc[j] += wi * __half2float(val[a.lane + kWarp * j]);
    }
    __syncwarp();  // the weights are read before the next keys' overwrite them
  }
  float* o = out + (task * splits + blockIdx.y) * head_dim;
  for (int j = 0; j < nd; ++j) o[a.lane + kWarp * j] = acc[j];
}

// attn [n * n_head, head_dim] = the sum over splits of partial [n * n_head, splits, head_dim].
__global__ void AttendReduceKernel(const float* partial, int splits, int head_dim, int64_t count,
                                   float* attn) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const int64_t task = i / head_dim, d = i % head_dim;
  float s = 0.f;
  for (int k = 0; k < splits; ++k) s += partial[(task * splits + k) * head_dim + d];
  attn[i] = s;
}

}  // namespace

void PrepareInput(WType type, const float* x, int64_t n, int64_t cols, float* xr, int8_t* xq,
                  float* xd, cudaStream_t s, const float* gelu_u, const float* gelu_table) {
  if (type == WType::kF32 && !gelu_u) {
    if (xr != x) {
      PYE_CUDA(cudaMemcpyAsync(xr, x, n * cols * sizeof(float), cudaMemcpyDeviceToDevice, s));
    }
    return;
  }
  const int64_t groups = n * cols / 32;  // cols: a multiple of 32
  PYE_LAUNCH(PrepareKernel, Blocks(groups, 8), 8 * kWarp, 0, s)(type, x, gelu_u, gelu_table,
                                                                groups, xr, xq, xd);
  PYE_CUDA(cudaGetLastError());
}

void NormPrepare(WType type, const float* x, const float* w, int64_t n, int64_t dim, float eps,
                 float* xr, int8_t* xq, float* xd, cudaStream_t s) {
  PYE_LAUNCH(NormPrepareKernel, static_cast<unsigned>(n), 256, 0, s)(x, w, dim, eps, type, xr,
                                                                     xq, xd);
  PYE_CUDA(cudaGetLastError());
}

void MatMul(const DevMatrix* const* ws, float* const* ys, int count, const float* xr,
            const int8_t* xq, const float* xd, int64_t n, cudaStream_t s) {
  if (count < 1 || count > kMaxMatSet) throw EngineError("MatMul: 1 to 4 matrices at a time");
  const DevMatrix& w = *ws[0];
  // One token at a time keeps decode's single row in registers; up to 8 tokens share each
  // weight load in registers; more go through shared-memory tiles of 32 tokens (tensor cores
  // for F16, BF16 and Q8_0).
  const bool tiled = n > 8;
  const int rows_per_block = tiled ? kTileRows : kRowsPerBlock;
  MatSet set{};
  set.count = count;
  unsigned blocks = 0;
  for (int i = 0; i < count; ++i) {
    if (ws[i]->type != w.type || ws[i]->cols != w.cols) {
      throw EngineError("MatMul: matrices of one launch must share type and width");
    }
    set.m[i] = *ws[i];
    set.y[i] = ys[i];
    set.first[i] = blocks;
    blocks += Blocks(ws[i]->rows, rows_per_block);
  }
  const bool q8 = w.type == WType::kQ8_0;
  if (tiled) {
    const dim3 grid(blocks, Blocks(n, kTileTokens));
    if (q8) {
      PYE_LAUNCH(MatMulMmaKernel<WType::kQ8_0>, grid, 256, 0, s)(set, xr, xq, xd, n);
    } else if (w.type == WType::kF16) {
      PYE_LAUNCH(MatMulMmaKernel<WType::kF16>, grid, 256, 0, s)(set, xr, xq, xd, n);
    } else if (w.type == WType::kBF16) {
      PYE_LAUNCH(MatMulMmaKernel<WType::kBF16>, grid, 256, 0, s)(set, xr, xq, xd, n);
    } else {
      PYE_LAUNCH(MatMulTiledKernel, grid, 256, 0, s)(set, xr, n);
    }
  } else {
    const dim3 block(kRowsPerBlock * kWarp);
    if (n == 1) {
      if (q8) {
        PYE_LAUNCH(MatMulQ8Kernel<1>, blocks, block, 0, s)(set, xq, xd, n);
      } else {
        PYE_LAUNCH(MatMulKernel<1>, blocks, block, 0, s)(set, xr, n);
      }
    } else if (q8) {
      PYE_LAUNCH(MatMulQ8Kernel<8>, blocks, block, 0, s)(set, xq, xd, n);
    } else {
      PYE_LAUNCH(MatMulKernel<8>, blocks, block, 0, s)(set, xr, n);
    }
  }
  PYE_CUDA(cudaGetLastError());
}

void MatMul(const DevMatrix& w, const float* xr, const int8_t* xq, const float* xd, int64_t n,
            float* y, cudaStream_t s) {
  const DevMatrix* ws[] = {&w};
  float* ys[] = {y};
  MatMul(ws, ys, 1, xr, xq, xd, n, s);
}

void Embed(const DevMatrix& table, const int32_t* tokens, int64_t n, float scale, float* x,
           cudaStream_t s) {
  PYE_LAUNCH(EmbedKernel, static_cast<unsigned>(n), 256, 0, s)(table, tokens, scale, x);
  PYE_CUDA(cudaGetLastError());
}

void RmsNorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out,
             cudaStream_t s) {
  PYE_LAUNCH(RmsNormKernel, static_cast<unsigned>(n), 256, 0, s)(x, w, dim, eps, false, out);
  PYE_CUDA(cudaGetLastError());
}

void RmsNormAdd(const float* o, const float* w, int64_t n, int64_t dim, float eps, float* x,
                cudaStream_t s) {
  PYE_LAUNCH(RmsNormKernel, static_cast<unsigned>(n), 256, 0, s)(o, w, dim, eps, true, x);
  PYE_CUDA(cudaGetLastError());
}

void Add(float* x, const float* o, int64_t count, cudaStream_t s) {
  PYE_LAUNCH(AddKernel, Blocks(count, 256), 256, 0, s)(x, o, count);
  PYE_CUDA(cudaGetLastError());
}

void GeluMul(float* g, const float* u, const float* table, int64_t count, cudaStream_t s) {
  PYE_LAUNCH(GeluMulKernel, Blocks(count, 256), 256, 0, s)(g, u, table, count);
  PYE_CUDA(cudaGetLastError());
}

void PrepareQkv(float* q, const float* k, const float* v, int64_t n, int n_head, int n_head_kv,
                int head_dim, const float* q_norm, const float* k_norm, const float* inv_freq,
                float attn_scale, float eps, bool write_kv, bool v_norm, const KvArgs& kv,
                const KvGroup& group, int page, cudaStream_t s) {
  const int64_t tasks = n * (n_head + (write_kv ? n_head_kv : 0));
  PYE_LAUNCH(PrepareQkvKernel, Blocks(tasks, 4), 4 * kWarp, 0, s)(
      q, k, v, n, n_head, n_head_kv, head_dim, q_norm, k_norm, inv_freq, attn_scale, eps,
      write_kv, v_norm, kv, group, page);
  PYE_CUDA(cudaGetLastError());
}

int AttendSplits(int64_t n, int n_head, int max_keys) {
  // Enough warps to fill a large device (about 1024), at least 64 keys a split, at most 64
  // splits; powers of 2, so that few distinct step shapes are captured as graphs.
  auto pow2 = [](int64_t v) {
    int p = 1;
    while (p < v && p < kMaxAttnSplits) p *= 2;
    return p;
  };
  const int64_t tasks = std::max<int64_t>(n * n_head, 1);
  return std::min(pow2((1024 + tasks - 1) / tasks), pow2((max_keys + 63) / 64));
}

void Attend(const float* q, float* attn, int64_t n, int n_head, int n_head_kv, int head_dim,
            int window, const KvArgs& kv, const KvGroup& group, int page,
            const AttendScratch& scratch, cudaStream_t s) {
  const dim3 grid(Blocks(n * n_head, kAttnWarps), static_cast<unsigned>(scratch.splits));
  float2* stats = reinterpret_cast<float2*>(scratch.stats);
  PYE_LAUNCH(AttendStatsKernel, grid, kAttnWarps * kWarp, 0, s)(
      q, stats, n, n_head, n_head_kv, head_dim, window, kv, group, page);
  PYE_LAUNCH(AttendValuesKernel, grid, kAttnWarps * kWarp, 0, s)(
      q, stats, scratch.splits == 1 ? attn : scratch.partial, n, n_head, n_head_kv, head_dim,
      window, kv, group, page);
  if (scratch.splits > 1) {
    const int64_t count = n * n_head * head_dim;
    PYE_LAUNCH(AttendReduceKernel, Blocks(count, 256), 256, 0, s)(scratch.partial, scratch.splits,
                                                                  head_dim, count, attn);
  }
  PYE_CUDA(cudaGetLastError());
}

void GatherRows(const float* x, const int32_t* rows_idx, int64_t n_rows, int64_t dim, float* out,
                cudaStream_t s) {
  if (n_rows == 0) return;
  PYE_LAUNCH(GatherKernel, static_cast<unsigned>(n_rows), 256, 0, s)(x, rows_idx, dim, out);
  PYE_CUDA(cudaGetLastError());
}

void ArgmaxRows(const float* x, int64_t n, int64_t cols, int32_t* out, cudaStream_t s) {
  PYE_LAUNCH(ArgmaxKernel, static_cast<unsigned>(n), 256, 0, s)(x, cols, out);
  PYE_CUDA(cudaGetLastError());
}

void Softcap(float* x, int64_t count, float cap, cudaStream_t s) {
  PYE_LAUNCH(SoftcapKernel, Blocks(count, 256), 256, 0, s)(x, count, cap);
  PYE_CUDA(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pyengine
