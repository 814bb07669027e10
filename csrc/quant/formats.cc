#include "quant/formats.h"

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

}  // namespace pyengine
