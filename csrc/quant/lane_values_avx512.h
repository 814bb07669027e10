// A lane unit's values unpacked into AVX-512 registers (lanes.h), and its scales decoded:
// shared by the VNNI kernels (lanes_avx512.cc) and the AMX ones (kernels_amx.cc), both compiled
// with AVX-512 instructions.
// Internal linkage on purpose, as in lane_scales.h: each including file keeps its own copy.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "quant/lane_kernels.h"
#include "quant/lane_scales.h"
#include "quant/lanes.h"

namespace pyengine {
namespace {  // NOLINT(build/namespaces): one private copy per kernel file is the point

inline __m512 Halves16(const uint16_t* h) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
}

// The rows of group g that exist (a padded last group stores fewer).
inline __mmask16 RowMask(int64_t rows, int64_t g) {
  const int64_t valid = rows - g * kLaneRows;
  return valid >= kLaneRows ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << valid) - 1);
}

// The decoded scales of one unit into sc (LaneScaleFloats of its type).
template <GgmlType T>
inline void DecodeUnit(const uint8_t* unit, float* sc) {
  DecodeUnitScales<T>(unit, [](const uint16_t* p, float* out) { _mm512_storeu_ps(out, Halves16(p)); }, sc);
}

// Values of sub-block s (values 16 s .. 16 s + 15, chunks 4 s .. 4 s + 3) of a unit of type T.
template <GgmlType T>
inline void LoadSub(const uint8_t* unit, int s, __m512i w[4]) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  if constexpr (L.lo.bits == 4) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const __m512i v0 = _mm512_loadu_si512(unit + 128 * s), v1 = _mm512_loadu_si512(unit + 128 * s + 64);
    w[0] = _mm512_and_si512(v0, nib);
    w[1] = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib);
    w[2] = _mm512_and_si512(v1, nib);
    w[3] = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib);
  } else {
    const __m512i crumb = _mm512_set1_epi8(3);
    const __m512i v = _mm512_loadu_si512(unit + 64 * s);
    w[0] = _mm512_and_si512(v, crumb);
    w[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), crumb);
    w[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), crumb);
    w[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), crumb);
  }
  const uint8_t* hi = unit + U.lo_bytes;
  if constexpr (L.hi.bits == 1) {
    // Bit c % 8 of the line of chunk c; adding the bit's weight sets it (it is zero before).
    const __m512i hb = _mm512_loadu_si512(hi + 64 * (s / 2));
    const __m512i one = _mm512_set1_epi8(1 << L.lo.bits);
    for (int m = 0; m < 4; ++m) {
      const __mmask64 set = _mm512_test_epi8_mask(hb, _mm512_set1_epi8(static_cast<char>(1 << (4 * (s % 2) + m))));
      w[m] = _mm512_mask_add_epi8(w[m], set, w[m], one);
    }
  } else if constexpr (L.hi.bits == 2) {
    // Bits 2 m, 2 m + 1 of chunk m's line, moved to bits 4 and 5 (Q6_K's high bits).
    static_assert(L.lo.bits == 4, "2-bit high planes sit above 4-bit values");
    const __m512i hc = _mm512_loadu_si512(hi + 64 * s);
    const __m512i top = _mm512_set1_epi8(0x30);
    w[0] = _mm512_or_si512(w[0], _mm512_and_si512(_mm512_slli_epi16(hc, 4), top));
    w[1] = _mm512_or_si512(w[1], _mm512_and_si512(_mm512_slli_epi16(hc, 2), top));
    w[2] = _mm512_or_si512(w[2], _mm512_and_si512(hc, top));
    w[3] = _mm512_or_si512(w[3], _mm512_and_si512(_mm512_srli_epi16(hc, 2), top));
  }
  if constexpr (L.lut) {
    // Table value + 128 (unsigned for vpdpbusd), looked up in every 128-bit lane.
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlBiased.v)));
    for (int m = 0; m < 4; ++m) w[m] = _mm512_shuffle_epi8(lut, w[m]);
  }
}

}  // namespace
}  // namespace pyengine
