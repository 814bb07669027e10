#include "quant/kernels.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace pyengine {

uint16_t Fp32ToFp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) return sign | (abs > 0x7f800000 ? 0x7e00 : 0x7c00);  // NaN / inf
  if (abs >= 0x477ff000) return sign | 0x7c00;                               // rounds to inf
  if (abs < 0x38800000) {  // result is subnormal (or zero): shift the implicit-one mantissa
    if (abs < 0x33000000) return sign;
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 + (113 - e)
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t h = ((abs - 0x38000000) >> 13);  // rebias exponent 127 -> 15
  const uint32_t rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // carries into the exponent correctly
  return sign | static_cast<uint16_t>(h);
}

uint16_t Fp32ToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((x + (0x7fff + ((x >> 16) & 1))) >> 16);             // nearest even
}

bool IsSupportedWeightType(GgmlType t) {
  return t == GgmlType::kF32 || t == GgmlType::kF16 || t == GgmlType::kBF16 ||
         t == GgmlType::kQ8_0;
}

void DequantizeRow(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = Fp16ToFp32(h);
      }
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = Bf16ToFp32(h);
      }
      return;
    case GgmlType::kQ8_0: {
      for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
        BlockQ8_0 blk;
        std::memcpy(&blk, src + b * sizeof(BlockQ8_0), sizeof(BlockQ8_0));
        const float d = Fp16ToFp32(blk.d);
        for (int j = 0; j < kQ8_0Block; ++j) dst[b * kQ8_0Block + j] = d * blk.qs[j];
      }
      return;
    }
    default:
      throw std::invalid_argument(std::string("no kernel for weight type ") + TypeName(type));
  }
}

namespace {

// Eight independent partial sums let the compiler keep several lanes busy without
// reassociating a single float chain.
float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Q8_0 activations exactly as ggml's SIMD quantizer makes them (so both engines see the same
// int8 inputs): scale amax/127 stored as fp16, values x * (127/amax) rounded half to even.
void QuantizeRowQ8_0(const float* x, BlockQ8_0* out, int64_t n) {
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const float* xb = x + b * kQ8_0Block;
    float amax = 0;
    for (int j = 0; j < kQ8_0Block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    out[b].d = Fp32ToFp16(amax / 127.f);
    for (int j = 0; j < kQ8_0Block; ++j) {
      out[b].qs[j] = static_cast<int8_t>(std::nearbyint(xb[j] * id));
    }
  }
}

float DotQ8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t n_blocks) {
  float sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < kQ8_0Block; ++j) isum += static_cast<int32_t>(w[b].qs[j]) * x[b].qs[j];
    sum += static_cast<float>(isum) * (Fp16ToFp32(w[b].d) * Fp16ToFp32(x[b].d));
  }
  return sum;
}

// Q8_0 weights meet Q8_0-quantized activations in integer dot products, as llama.cpp's CPU
// backend computes them (so results agree with it, and int8 SIMD can speed this up later).
void MatMulQ8_0(const TensorView& w, const float* x, int64_t n_tok, float* y) {
  const int64_t cols = w.cols(), rows = w.rows(), nb = cols / kQ8_0Block;
  thread_local std::vector<BlockQ8_0> xq;  // [n_tok, nb]
  xq.resize(static_cast<size_t>(n_tok * nb));
  for (int64_t t = 0; t < n_tok; ++t) QuantizeRowQ8_0(x + t * cols, xq.data() + t * nb, cols);
  for (int64_t r = 0; r < rows; ++r) {
    const auto* wr = reinterpret_cast<const BlockQ8_0*>(w.row(r));
    for (int64_t t = 0; t < n_tok; ++t) y[t * rows + r] = DotQ8_0(wr, xq.data() + t * nb, nb);
  }
}

}  // namespace

// The reference converts activations to the weights' 16-bit type before the dot product;
// rounding them the same way keeps results aligned with it.
void RoundActivations(GgmlType type, const float* x, int64_t n, float* out) {
  if (type == GgmlType::kF16) {
    for (int64_t i = 0; i < n; ++i) out[i] = Fp16ToFp32(Fp32ToFp16(x[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToFp32(Fp32ToBf16(x[i]));
  }
}

void MatMul(const TensorView& w, const float* x, int64_t n_tok, float* y) {
  if (w.type == GgmlType::kQ8_0) return MatMulQ8_0(w, x, n_tok, y);
  const int64_t cols = w.cols();
  const int64_t rows = w.rows();
  thread_local std::vector<float> xr;  // [n_tok, cols] activations rounded to the weight type
  if (w.type == GgmlType::kF16 || w.type == GgmlType::kBF16) {
    xr.resize(static_cast<size_t>(n_tok * cols));
    RoundActivations(w.type, x, n_tok * cols, xr.data());
    x = xr.data();
  }
  // One dequantized row is reused against every token, so each weight byte is decoded once.
  thread_local std::vector<float> row;  // [cols]
  const float* r_ptr;
  if (w.type != GgmlType::kF32) row.resize(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    if (w.type == GgmlType::kF32) {
      r_ptr = reinterpret_cast<const float*>(w.row(r));
    } else {
      DequantizeRow(w.type, w.row(r), row.data(), cols);
      r_ptr = row.data();
    }
    for (int64_t t = 0; t < n_tok; ++t) y[t * rows + r] = Dot(r_ptr, x + t * cols, cols);
  }
}

}  // namespace pyengine
