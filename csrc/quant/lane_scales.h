// Decoding a lane unit's scales (LaneScales, lanes.h), written once as plain loops over the 16
// rows and compiled by each kernel file with its own instruction set, where the compiler turns
// them into vector code. Internal linkage on purpose, as in isa_local.h: each kernel file keeps
// its own copy, so a copy built with wide instructions never serves a narrower level.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "quant/lanes.h"

namespace pyengine {
namespace {  // NOLINT(build/namespaces): one private copy per kernel file is the point

// Byte b of the header of every row: out[r] for r < 16.
inline void HeaderByte(const uint16_t* h, int b, int32_t* out) {
  const uint16_t* p = h + (b / 2) * kLaneRows;
  const int shift = 8 * (b % 2);
  for (int r = 0; r < kLaneRows; ++r) out[r] = (p[r] >> shift) & 0xFF;
}

// Scales of one unit of type T from its header lanes h, as LaneScales (lanes.h) lays them out:
// dsc and dmn are [groups of the unit][16] (dmn only for types with a min). ToFloat16(p, out)
// converts the 16 fp16 values at p (one header halfword of every row) to floats: each kernel
// file brings its own.
template <GgmlType T, class ToFloat16>
inline void DecodeLaneScales(const uint16_t* h, ToFloat16 to_float, float (*dsc)[kLaneRows],
                             float (*dmn)[kLaneRows]) {
  float d[kLaneRows], dmin[kLaneRows];
  int32_t a[kLaneRows], b[kLaneRows], c[kLaneRows];
  if constexpr (T == GgmlType::kQ4_0 || T == GgmlType::kQ5_0 || T == GgmlType::kIQ4_NL) {
    to_float(h, dsc[0]);  // {fp16 d; ...}
  } else if constexpr (T == GgmlType::kQ4_1 || T == GgmlType::kQ5_1) {
    to_float(h, dsc[0]);  // {fp16 d, m; ...}: w = d * u + m
    to_float(h + kLaneRows, d);
    for (int r = 0; r < kLaneRows; ++r) dmn[0][r] = -d[r];
  } else if constexpr (T == GgmlType::kQ4_K || T == GgmlType::kQ5_K) {
    // {fp16 d, dmin; u8 scales[12]}: a 6-bit scale and min per 32 values (blocks.h ScaleMinK4).
    to_float(h, d);
    to_float(h + kLaneRows, dmin);
    for (int j = 0; j < 8; ++j) {
      HeaderByte(h, 4 + (j < 4 ? j : j + 4), a);
      HeaderByte(h, 4 + (j < 4 ? j + 4 : j - 4), b);
      if (j >= 4) HeaderByte(h, 4 + j, c);
      for (int r = 0; r < kLaneRows; ++r) {
        const int32_t sc = j < 4 ? a[r] & 63 : (a[r] & 0xF) | ((b[r] >> 6) << 4);
        const int32_t m = j < 4 ? b[r] & 63 : (a[r] >> 4) | ((c[r] >> 6) << 4);
        dsc[j][r] = d[r] * static_cast<float>(sc);
        dmn[j][r] = dmin[r] * static_cast<float>(m);
      }
    }
  } else if constexpr (T == GgmlType::kQ6_K) {
    // {i8 scales[16]; fp16 d}: w = d * sc * (u - 32) per 16 values.
    to_float(h + 8 * kLaneRows, d);
    for (int j = 0; j < 16; ++j) {
      HeaderByte(h, j, a);
      for (int r = 0; r < kLaneRows; ++r) dsc[j][r] = d[r] * static_cast<float>(static_cast<int8_t>(a[r]));
    }
  } else if constexpr (T == GgmlType::kQ2_K) {
    // {u8 scales[16] (scale in the low nibble, min in the high one); fp16 d, dmin}.
    to_float(h + 8 * kLaneRows, d);
    to_float(h + 9 * kLaneRows, dmin);
    for (int j = 0; j < 16; ++j) {
      HeaderByte(h, j, a);
      for (int r = 0; r < kLaneRows; ++r) {
        dsc[j][r] = d[r] * static_cast<float>(a[r] & 0xF);
        dmn[j][r] = dmin[r] * static_cast<float>(a[r] >> 4);
      }
    }
  } else if constexpr (T == GgmlType::kQ3_K) {
    // {u8 scales[12] (16 x 6 bits, blocks.h ScaleK3); fp16 d}: w = d * (sc - 32) * (u - 4).
    to_float(h + 6 * kLaneRows, d);
    for (int j = 0; j < 16; ++j) {
      HeaderByte(h, j < 8 ? j : j - 8, a);
      HeaderByte(h, 8 + j % 4, b);
      for (int r = 0; r < kLaneRows; ++r) {
        const int32_t lo = j < 8 ? a[r] & 0xF : a[r] >> 4;
        dsc[j][r] = d[r] * static_cast<float>((lo | ((b[r] >> (2 * (j / 4))) & 3) << 4) - 32);
      }
    }
  } else if constexpr (T == GgmlType::kIQ4_XS) {
    // {fp16 d; u16 scales_h; u8 scales_l[4]}: w = d * (ls - 32) * table[u] per 32 values.
    to_float(h, d);
    for (int j = 0; j < 8; ++j) {
      HeaderByte(h, 4 + j / 2, a);
      for (int r = 0; r < kLaneRows; ++r) {
        const int32_t ls = ((a[r] >> (4 * (j % 2))) & 0xF) | ((h[kLaneRows + r] >> (2 * j)) & 3) << 4;
        dsc[j][r] = d[r] * static_cast<float>(ls - 32);
      }
    }
  }
}

}  // namespace
}  // namespace pyengine
