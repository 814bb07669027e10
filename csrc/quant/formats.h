// Weight formats as GGUF stores them and scalar conversions (the quantized types' blocks are
// described in blocks.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/tensor.h"

namespace pyengine {

// Q8_0: 32 values share one fp16 scale; x = d * q.
constexpr int kQ8_0Block = 32;
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQ8_0Block];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes as in GGUF");

inline float Fp16ToFp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise into a float32 normal
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even float32 -> fp16 (overflow to inf, NaN kept).
uint16_t Fp32ToFp16(float f);

// Round-to-nearest-even float32 -> bf16 (NaN kept quiet).
uint16_t Fp32ToBf16(float f);

inline float Bf16ToFp32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// True for the weight types the kernels can read; SupportedWeightTypes() lists them.
bool IsSupportedWeightType(GgmlType t);
const char* SupportedWeightTypes();

// dst[0..n) = values of one row stored as `type` (n must be a multiple of the block size).
void DequantizeRow(GgmlType type, const uint8_t* src, float* dst, int64_t n);

}  // namespace pyengine
