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

inline void SetPairs(const int32_t (&mn)[16][kLaneRows], LaneScales* s) {
  for (int p = 0; p < 8; ++p) {
    for (int r = 0; r < kLaneRows; ++r) {
      s->mn[p][r] = static_cast<int32_t>(static_cast<uint32_t>(mn[2 * p][r] & 0xFFFF) |
                                         static_cast<uint32_t>(mn[2 * p + 1][r]) << 16);
    }
  }
}

// Scales of one unit of a 256-value type, from its header lanes h. signed_lut: the kernel reads
// IQ4_XS values as the table's signed int8 (no +128), so they need no min.
template <GgmlType T>
inline void DecodeLaneScales(const uint16_t* h, bool signed_lut, LaneScales* s) {
  int32_t mn[16][kLaneRows];
  int32_t a[kLaneRows], b[kLaneRows], c[kLaneRows];
  if constexpr (T == GgmlType::kQ4_K || T == GgmlType::kQ5_K) {
    // {fp16 d, dmin; u8 scales[12]}: 6-bit scale and min per 32 values (blocks.h, ScaleMinK4).
    for (int j = 0; j < 8; ++j) {
      HeaderByte(h, 4 + (j < 4 ? j : j + 4), a);
      HeaderByte(h, 4 + (j < 4 ? j + 4 : j - 4), b);
      if (j >= 4) HeaderByte(h, 4 + j, c);
      for (int r = 0; r < kLaneRows; ++r) {
        const int32_t sc = j < 4 ? a[r] & 63 : (a[r] & 0xF) | ((b[r] >> 6) << 4);
        const int32_t m = j < 4 ? b[r] & 63 : (a[r] >> 4) | ((c[r] >> 6) << 4);
        s->sc[2 * j][r] = s->sc[2 * j + 1][r] = sc;
        mn[2 * j][r] = mn[2 * j + 1][r] = m;
      }
    }
    s->d = h;
    s->dmin = h + kLaneRows;
  } else if constexpr (T == GgmlType::kQ6_K) {
    // {i8 scales[16]; fp16 d}: w = d * sc * (u - 32).
    for (int j = 0; j < 16; ++j) {
      HeaderByte(h, j, a);
      for (int r = 0; r < kLaneRows; ++r) {
        s->sc[j][r] = static_cast<int8_t>(a[r]);
        mn[j][r] = 32 * s->sc[j][r];
      }
    }
    s->d = s->dmin = h + 8 * kLaneRows;
  } else if constexpr (T == GgmlType::kQ2_K) {
    // {u8 scales[16] (scale low nibble, min high nibble); fp16 d, dmin}.
    for (int j = 0; j < 16; ++j) {
      HeaderByte(h, j, a);
      for (int r = 0; r < kLaneRows; ++r) {
        s->sc[j][r] = a[r] & 0xF;
        mn[j][r] = a[r] >> 4;
      }
    }
    s->d = h + 8 * kLaneRows;
    s->dmin = h + 9 * kLaneRows;
  } else if constexpr (T == GgmlType::kQ3_K) {
    // {u8 scales[12] (16 x 6 bits, blocks.h ScaleK3); fp16 d}: w = d * (sc - 32) * (u - 4).
    for (int j = 0; j < 16; ++j) {
      HeaderByte(h, j < 8 ? j : j - 8, a);
      HeaderByte(h, 8 + j % 4, b);
      for (int r = 0; r < kLaneRows; ++r) {
        const int32_t lo = j < 8 ? a[r] & 0xF : a[r] >> 4;
        s->sc[j][r] = (lo | ((b[r] >> (2 * (j / 4))) & 3) << 4) - 32;
        mn[j][r] = 4 * s->sc[j][r];
      }
    }
    s->d = s->dmin = h + 6 * kLaneRows;
  } else if constexpr (T == GgmlType::kIQ4_XS) {
    // {fp16 d; u16 scales_h; u8 scales_l[4]}: w = d * (ls - 32) * table[u].
    for (int j = 0; j < 8; ++j) {
      HeaderByte(h, 4 + j / 2, a);
      for (int r = 0; r < kLaneRows; ++r) {
        const int32_t ls = ((a[r] >> (4 * (j % 2))) & 0xF) | ((h[kLaneRows + r] >> (2 * j)) & 3) << 4;
        s->sc[2 * j][r] = s->sc[2 * j + 1][r] = ls - 32;
        mn[2 * j][r] = mn[2 * j + 1][r] = signed_lut ? 0 : 128 * (ls - 32);
      }
    }
    s->d = s->dmin = h;
  }
  SetPairs(mn, s);
}

}  // namespace
}  // namespace pyengine
