// Decoding a lane unit's scales (LaneScales, lanes.h), written once with the compiler's vector
// extensions (16 lanes: one per row) and compiled by each kernel file with its own instruction
// set: one 512-bit register per value with AVX-512, two 256-bit ones with AVX2, four 128-bit ones
// in the scalar build. Every unit of a decode step goes through here, so it must be vector code,
// not loops left to the auto-vectorizer. Internal linkage on purpose, as in isa_local.h: each
// kernel file keeps its own copy, so a copy built with wide instructions never serves a narrower
// level.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/tensor.h"
#include "quant/lanes.h"

// 64-byte vectors only pass between inlined functions of this file: no ABI is involved. (The
// warning comes at the end of the including file, so it stays off from here on.)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace pyengine {
namespace {  // NOLINT(build/namespaces): one private copy per kernel file is the point

typedef int32_t LaneInts __attribute__((vector_size(64)));     // [16] one per row
typedef float LaneFloats __attribute__((vector_size(64)));     // [16]
typedef uint16_t LaneHalves __attribute__((vector_size(32)));  // [16]

// Halfword j of the header of every row.
inline LaneInts HeaderHalf(const uint16_t* h, int j) {
  LaneHalves v;
  std::memcpy(&v, h + j * kLaneRows, sizeof(v));
  return __builtin_convertvector(v, LaneInts);
}

// Byte b of the header of every row.
inline LaneInts HeaderByte(const uint16_t* h, int b) {
  return (HeaderHalf(h, b / 2) >> (8 * (b % 2))) & 0xFF;
}

inline LaneFloats ToFloats(LaneInts v) { return __builtin_convertvector(v, LaneFloats); }

inline void Store(float* out, LaneFloats v) { std::memcpy(out, &v, sizeof(v)); }

// Scales of one unit of type T from its header lanes h, as LaneScales (lanes.h) lays them out:
// dsc and dmn are [groups of the unit][16]. ToFloat16(p, out)
// converts the 16 fp16 values at p (one header halfword of every row) to floats: each kernel
// file brings its own.
template <GgmlType T, class ToFloat16>
inline void DecodeLaneScales(const uint16_t* h, ToFloat16 to_float, float (*dsc)[kLaneRows],
                             float (*dmn)[kLaneRows]) {
  LaneFloats d{}, dmin{};
  auto half_floats = [&](int j, LaneFloats* out) {
    float f[kLaneRows];
    to_float(h + j * kLaneRows, f);
    std::memcpy(out, f, sizeof(f));
  };
  if constexpr (T == GgmlType::kQ4_0 || T == GgmlType::kQ5_0 || T == GgmlType::kIQ4_NL) {
    to_float(h, dsc[0]);  // {fp16 d; ...}
  } else if constexpr (T == GgmlType::kQ4_1 || T == GgmlType::kQ5_1) {
    to_float(h, dsc[0]);  // {fp16 d, m; ...}: w = d * u + m
    half_floats(1, &d);
    Store(dmn[0], -d);
  } else if constexpr (T == GgmlType::kQ4_K || T == GgmlType::kQ5_K) {
    // {fp16 d, dmin; u8 scales[12]}: a 6-bit scale and min per 32 values (blocks.h ScaleMinK4).
    half_floats(0, &d);
    half_floats(1, &dmin);
    for (int j = 0; j < 4; ++j) {
      Store(dsc[j], d * ToFloats(HeaderByte(h, 4 + j) & 63));
      Store(dmn[j], dmin * ToFloats(HeaderByte(h, 8 + j) & 63));
    }
    for (int j = 4; j < 8; ++j) {
      const LaneInts a = HeaderByte(h, 8 + j);
      Store(dsc[j], d * ToFloats((a & 0xF) | ((HeaderByte(h, j) >> 6) << 4)));
      Store(dmn[j], dmin * ToFloats((a >> 4) | ((HeaderByte(h, 4 + j) >> 6) << 4)));
    }
  } else if constexpr (T == GgmlType::kQ6_K) {
    // {i8 scales[16]; fp16 d}: w = d * sc * (u - 32) per 16 values.
    half_floats(8, &d);
    for (int j = 0; j < 16; ++j) {
      const LaneInts sc = (HeaderByte(h, j) ^ 0x80) - 0x80;  // sign-extend the byte
      Store(dsc[j], d * ToFloats(sc));
    }
  } else if constexpr (T == GgmlType::kQ2_K) {
    // {u8 scales[16] (scale in the low nibble, min in the high one); fp16 d, dmin}.
    half_floats(8, &d);
    half_floats(9, &dmin);
    for (int j = 0; j < 16; ++j) {
      const LaneInts a = HeaderByte(h, j);
      Store(dsc[j], d * ToFloats(a & 0xF));
      Store(dmn[j], dmin * ToFloats(a >> 4));
    }
  } else if constexpr (T == GgmlType::kQ3_K) {
    // {u8 scales[12] (16 x 6 bits, blocks.h ScaleK3); fp16 d}: w = d * (sc - 32) * (u - 4).
    half_floats(6, &d);
    for (int j = 0; j < 16; ++j) {
      const LaneInts a = HeaderByte(h, j < 8 ? j : j - 8);
      LaneInts lo = a >> 4;
      if (j < 8) lo = a & 0xF;
      const LaneInts hi = (HeaderByte(h, 8 + j % 4) >> (2 * (j / 4))) & 3;
      Store(dsc[j], d * ToFloats((lo | (hi << 4)) - 32));
    }
  } else if constexpr (T == GgmlType::kIQ4_XS) {
    // {fp16 d; u16 scales_h; u8 scales_l[4]}: w = d * (ls - 32) * table[u] per 32 values.
    half_floats(0, &d);
    const LaneInts scales_h = HeaderHalf(h, 1);
    for (int j = 0; j < 8; ++j) {
      const LaneInts ls = ((HeaderByte(h, 4 + j / 2) >> (4 * (j % 2))) & 0xF) |
                          (((scales_h >> (2 * j)) & 3) << 4);
      Store(dsc[j], d * ToFloats(ls - 32));
    }
  }
  // A type with an integer offset instead of a min: dmn = offset * dsc, exactly (the offsets
  // are powers of two).
  constexpr BlockLayout L = *GetBlockLayout(T);
  if constexpr (!L.min) {
    for (int g = 0; g < L.values / L.group; ++g) {
      LaneFloats v;
      std::memcpy(&v, dsc[g], sizeof(v));
      Store(dmn[g], static_cast<float>(L.offset) * v);
    }
  }
}

// The scales of one unit into sc, laid out as LaneScaleFloats counts them (every group's dsc,
// then every group's dmn).
template <GgmlType T, class ToFloat16>
inline void DecodeUnitScales(const uint8_t* unit, ToFloat16 to_float, float* sc) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  auto* dsc = reinterpret_cast<float(*)[kLaneRows]>(sc);
  DecodeLaneScales<T>(LaneHeader(GetLaneUnit(L), unit), to_float, dsc, dsc + L.values / L.group);
}

}  // namespace
}  // namespace pyengine

