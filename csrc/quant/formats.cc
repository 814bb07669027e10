#include "quant/formats.h"

#include "quant/blocks.h"

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
         t == GgmlType::kQ8_0 || GetBlockLayout(t) != nullptr;
}

const char* SupportedWeightTypes() {
  return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, "
         "IQ4_XS";
}

namespace {

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return Fp16ToFp32(h);
}

// One block of a lane-kernel type to floats, with the reference's arithmetic (each product and
// difference rounded in the same order), so the values are bit-identical to it.
void DequantizeBlock(const BlockLayout& l, const uint8_t* b, float* y) {
  uint8_t u[256];
  DecodeValues(l, b, u);
  switch (l.type) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0: {
      const float d = Half(b);
      for (int k = 0; k < 32; ++k) y[k] = static_cast<float>(u[k] - l.offset) * d;
      return;
    }
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1: {
      const float d = Half(b), m = Half(b + 2);
      for (int k = 0; k < 32; ++k) y[k] = static_cast<float>(u[k]) * d + m;
      return;
    }
    case GgmlType::kIQ4_NL: {
      const float d = Half(b);
      for (int k = 0; k < 32; ++k) y[k] = d * static_cast<float>(kIq4nlValues[u[k]]);
      return;
    }
    case GgmlType::kQ2_K: {  // {u8 scales[16]; u8 qs[64]; fp16 d, dmin}
      const float d = Half(b + 80), dmin = Half(b + 82);
      for (int s = 0; s < 16; ++s) {
        const float dl = d * static_cast<float>(b[s] & 0xF), ml = dmin * static_cast<float>(b[s] >> 4);
        for (int k = 16 * s; k < 16 * s + 16; ++k) y[k] = dl * static_cast<float>(u[k]) - ml;
      }
      return;
    }
    case GgmlType::kQ3_K: {  // {u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}
      const float d = Half(b + 108);
      for (int s = 0; s < 16; ++s) {
        const float dl = d * static_cast<float>(ScaleK3(b + 96, s) - 32);
        for (int k = 16 * s; k < 16 * s + 16; ++k) y[k] = dl * static_cast<float>(u[k] - 4);
      }
      return;
    }
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K: {  // {fp16 d, dmin; u8 scales[12]; ...}
      const float d = Half(b), dmin = Half(b + 2);
      for (int j = 0; j < 8; ++j) {
        int sc, m;
        ScaleMinK4(b + 4, j, &sc, &m);
        const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
        for (int k = 32 * j; k < 32 * j + 32; ++k) y[k] = d1 * static_cast<float>(u[k]) - m1;
      }
      return;
    }
    case GgmlType::kQ6_K: {  // {u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d}
      const float d = Half(b + 208);
      for (int s = 0; s < 16; ++s) {
        const float ds = d * static_cast<float>(static_cast<int8_t>(b[192 + s]));
        for (int k = 16 * s; k < 16 * s + 16; ++k) y[k] = ds * static_cast<float>(u[k] - 32);
      }
      return;
    }
    case GgmlType::kIQ4_XS: {  // {fp16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}
      const float d = Half(b);
      uint16_t scales_h;
      std::memcpy(&scales_h, b + 2, 2);
      for (int j = 0; j < 8; ++j) {
        const float dl = d * static_cast<float>(ScaleIq4xs(scales_h, b + 4, j) - 32);
        for (int k = 32 * j; k < 32 * j + 32; ++k) y[k] = dl * static_cast<float>(kIq4nlValues[u[k]]);
      }
      return;
    }
    default:
      throw std::invalid_argument(std::string("no kernel for weight type ") + TypeName(l.type));
  }
}

}  // namespace

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
    default: {
      const BlockLayout* l = GetBlockLayout(type);
      if (!l) throw std::invalid_argument(std::string("no kernel for weight type ") + TypeName(type));
      for (int64_t b = 0; b < n / l->values; ++b) DequantizeBlock(*l, src + b * l->bytes, dst + b * l->values);
      return;
    }
  }
}

}  // namespace pyengine
