// AVX2 kernels of the lane-layout types (lanes.h), compiled with the flags of kernels_avx2.cc
// and called only when the CPU has them.
//
// A 256-bit register holds 4 values of 8 rows, so each 16-row group runs as two halves. Without
// VNNI, vpmaddubsw multiplies unsigned values by signed activation bytes into 16-bit pair sums
// and vpmaddwd adds those into each row's 32-bit lane. The 16-bit sums cannot saturate: a type's
// values are small enough (below 64) or, for the IQ4 tables, signed and multiplied with the sign
// trick |w| * (x * sign(w)).
#include "quant/lane_kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstring>

#include "quant/formats.h"
#include "quant/lane_scales.h"

namespace pyengine {
namespace {

inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256 Halves8(const uint16_t* h) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
}

inline __m256i Load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Values of sub-block s of rows 8 h .. 8 h + 7 of a unit of type T: 4 registers of 4 values of
// 8 rows. IQ4 types come out as the table's signed values.
template <GgmlType T>
inline void LoadSub(const uint8_t* unit, int s, int h, __m256i w[4]) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  const uint8_t* lo = unit + 32 * h;
  if constexpr (L.lo.bits == 4) {
    const __m256i nib = _mm256_set1_epi8(0x0F);
    const __m256i v0 = Load32(lo + 128 * s), v1 = Load32(lo + 128 * s + 64);
    w[0] = _mm256_and_si256(v0, nib);
    w[1] = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib);
    w[2] = _mm256_and_si256(v1, nib);
    w[3] = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib);
  } else {
    const __m256i crumb = _mm256_set1_epi8(3);
    const __m256i v = Load32(lo + 64 * s);
    w[0] = _mm256_and_si256(v, crumb);
    w[1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), crumb);
    w[2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), crumb);
    w[3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), crumb);
  }
  const uint8_t* hi = unit + U.lo_bytes + 32 * h;
  if constexpr (L.hi.bits == 1) {
    const __m256i hb = Load32(hi + 64 * (s / 2));
    const __m256i one = _mm256_set1_epi8(1 << L.lo.bits);
    for (int m = 0; m < 4; ++m) {
      const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << (4 * (s % 2) + m)));
      const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit);
      w[m] = _mm256_or_si256(w[m], _mm256_and_si256(set, one));
    }
  } else if constexpr (L.hi.bits == 2) {
    static_assert(L.lo.bits == 4, "2-bit high planes sit above 4-bit values");
    const __m256i hc = Load32(hi + 64 * s);
    const __m256i top = _mm256_set1_epi8(0x30);
    w[0] = _mm256_or_si256(w[0], _mm256_and_si256(_mm256_slli_epi16(hc, 4), top));
    w[1] = _mm256_or_si256(w[1], _mm256_and_si256(_mm256_slli_epi16(hc, 2), top));
    w[2] = _mm256_or_si256(w[2], _mm256_and_si256(hc, top));
    w[3] = _mm256_or_si256(w[3], _mm256_and_si256(_mm256_srli_epi16(hc, 2), top));
  }
  if constexpr (L.lut) {
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    for (int m = 0; m < 4; ++m) w[m] = _mm256_shuffle_epi8(lut, w[m]);
  }
}

// Per row (32-bit lane): the dot product of 16 values w[0..3] with 16 activation bytes q.
template <GgmlType T>
inline __m256i Dot16(const __m256i w[4], const int8_t* q) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (L.lut) {
    // Signed table values: |w| * (x * sign(w)) keeps each pair sum within 2 * 127 * 127.
    __m256i s = _mm256_setzero_si256();
    for (int m = 0; m < 4; ++m) {
      const __m256i x = Broadcast4(q + 4 * m);
      const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w[m], w[m]), _mm256_sign_epi8(x, w[m]));
      s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
    }
    return s;
  } else {
    // Unsigned values below 2^bits: up to 32767 / (2 * 127 * max value) pair sums fit 16 bits.
    constexpr int kMax = (1 << (L.lo.bits + L.hi.bits)) - 1;
    constexpr int kFit = 32767 / (2 * 127 * kMax);
    static_assert(kFit >= 2, "16-bit sums of two products must not saturate");
    __m256i p[4];
    for (int m = 0; m < 4; ++m) p[m] = _mm256_maddubs_epi16(w[m], Broadcast4(q + 4 * m));
    if constexpr (kFit >= 4) {
      const __m256i sum = _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3]));
      return _mm256_madd_epi16(sum, ones);
    } else {
      return _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(p[0], p[1]), ones),
                              _mm256_madd_epi16(_mm256_add_epi16(p[2], p[3]), ones));
    }
  }
}

// One unit, rows 8 h .. 8 h + 7, against NT tokens: acc[t] += the rows' products with token t.
// x: the Q8_0 block of the unit's first value for the first token; tokens are ldx blocks apart.
template <GgmlType T, int NT>
inline void TileUnit(const uint8_t* unit, int h, const float* sc, const XQ8Block* x,
                     int64_t ldx, uintptr_t prefetch, __m256 acc[NT]) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  constexpr int kSubs = L.group / 16;
  constexpr int kOffset = L.lut ? 0 : L.offset;  // the IQ4 tables come out signed here
  constexpr int kGroups = L.values / L.group;
  // The unit at `prefetch` is asked for a slice per group, not in one burst (as AVX-512 does).
  constexpr int kSlice = (U.bytes / kGroups + 63) / 64 * 64;
  for (int g = 0; g < kGroups; ++g) {
    for (int p = g * kSlice; p < (g + 1) * kSlice && p < U.bytes; p += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + p), _MM_HINT_T0);
    }
    const int blk = g * L.group / 32, q0 = g * L.group % 32;  // the group's activation block
    __m256i p[NT];
    for (int t = 0; t < NT; ++t) p[t] = _mm256_setzero_si256();
    for (int i = 0; i < kSubs; ++i) {
      __m256i w[4];
      LoadSub<T>(unit, g * kSubs + i, h, w);
      for (int t = 0; t < NT; ++t) p[t] = _mm256_add_epi32(p[t], Dot16<T>(w, x[t * ldx + blk].q + q0 + 16 * i));
    }
    const __m256 dsc = _mm256_loadu_ps(sc + g * kLaneRows + 8 * h);
    const __m256 dmn = _mm256_loadu_ps(sc + (kGroups + g) * kLaneRows + 8 * h);
    for (int t = 0; t < NT; ++t) {
      const XQ8Block& xb = x[t * ldx + blk];
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[t]), _mm256_mul_ps(dsc, _mm256_set1_ps(xb.d)), acc[t]);
      // The offset or min, times d * sum(q) of the group's activations; the IQ4 tables'
      // signed values here have neither.
      if constexpr (kOffset != 0 || L.min) {
        const float dsum = L.group == 32 ? xb.dsum : xb.dsum16[q0 / 16];
        acc[t] = _mm256_fnmadd_ps(dmn, _mm256_set1_ps(dsum), acc[t]);
      }
    }
  }
}

// The decoded scales of one unit into sc (LaneScaleFloats of its type).
template <GgmlType T>
inline void DecodeUnit(const uint8_t* unit, float* sc) {
  auto to_float = [](const uint16_t* p, float* out) {
    _mm256_storeu_ps(out, Halves8(p));
    _mm256_storeu_ps(out + 8, Halves8(p + 8));
  };
  DecodeUnitScales<T>(unit, to_float, sc);
}

// Rows 8 h .. 8 h + 7 of one row group against NT tokens. pre: the group's scales decoded
// beforehand (units x LaneScaleFloats), or null to decode them here.
template <GgmlType T, int NT>
void Tokens(const uint8_t* wg, int64_t units, const float* pre, const XQ8Block* x, int64_t ldx,
            int h, float* y, int64_t ldy, int valid) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  constexpr int kScaleFloats = LaneScaleFloats(L);
  constexpr int kAhead = U.bytes >= 1024 ? 2 : (2048 + U.bytes - 1) / U.bytes;
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t u = 0; u < units; ++u) {
    const uint8_t* unit = wg + u * U.bytes;
    alignas(32) float here[kScaleFloats];
    const float* sc = pre ? pre + u * kScaleFloats : here;
    if (!pre) DecodeUnit<T>(unit, here);
    // About 2 KB (at least two units) ahead, as in the AVX-512 kernels; the second half's
    // pass finds the group's units in cache and asks again for nothing new.
    TileUnit<T, NT>(unit, h, sc, x + u * (L.values / 32), ldx,
                    reinterpret_cast<uintptr_t>(unit) + kAhead * U.bytes, acc);
  }
  for (int t = 0; t < NT; ++t) {
    if (valid >= 8) {
      _mm256_storeu_ps(y + t * ldy, acc[t]);
    } else {
      float tmp[8];
      _mm256_storeu_ps(tmp, acc[t]);
      for (int r = 0; r < valid; ++r) y[t * ldy + r] = tmp[r];
    }
  }
}

template <GgmlType T>
void Gemm(const uint8_t* w, int64_t cols, const XQ8Block* x, int64_t n_tok, int64_t g0, int64_t g1,
          int64_t rows, float* y, int64_t ldy, float* scratch) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr int64_t kUnitBytes = GetLaneUnit(L).bytes;
  const int64_t units = cols / L.values, nb = cols / 32;  // nb: activation blocks per token
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = w + g * units * kUnitBytes;
    // Both halves read every unit, so decode the group's scales once (unless one token).
    const float* pre = nullptr;
    if (n_tok > 1 && scratch) {
      for (int64_t u = 0; u < units; ++u) DecodeUnit<T>(wg + u * kUnitBytes, scratch + u * LaneScaleFloats(L));
      pre = scratch;
    }
    for (int h = 0; h < 2; ++h) {
      const int64_t r0 = g * kLaneRows + 8 * h;
      const int valid = static_cast<int>(rows - r0 < 8 ? rows - r0 : 8);
      if (valid <= 0) break;
      for (int64_t t = 0; t < n_tok; t += 4) {
        const XQ8Block* xt = x + t * nb;
        float* yt = y + t * ldy + r0;
        switch (n_tok - t < 4 ? n_tok - t : 4) {
          case 1: Tokens<T, 1>(wg, units, pre, xt, nb, h, yt, ldy, valid); break;
          case 2: Tokens<T, 2>(wg, units, pre, xt, nb, h, yt, ldy, valid); break;
          case 3: Tokens<T, 3>(wg, units, pre, xt, nb, h, yt, ldy, valid); break;
          default: Tokens<T, 4>(wg, units, pre, xt, nb, h, yt, ldy, valid); break;
        }
      }
    }
  }
}

}  // namespace

void GemmLanesAvx2(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Block* x,
                   int64_t n_tok, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                   float* scratch) {
  switch (l.type) {
#define PYENGINE_LANE_TYPE(T) \
  case GgmlType::T: Gemm<GgmlType::T>(w, cols, x, n_tok, g0, g1, rows, y, ldy, scratch); return;
    PYENGINE_LANE_TYPES(PYENGINE_LANE_TYPE)
#undef PYENGINE_LANE_TYPE
    default: return;
  }
}

}  // namespace pyengine

#endif
