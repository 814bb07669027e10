// AVX-512 VNNI kernels of the lane-layout types (lanes.h), compiled with the flags of
// kernels_avx512.cc and called only when the CPU has them.
//
// A unit's values come out of its planes straight into registers, four 64-byte vectors per 16
// values (4 values of 16 rows each); vpdpbusd multiplies them (unsigned) by 4 broadcast bytes of
// the activations' Q8_0 block (signed) and leaves each row's sum in its own 32-bit lane. Sums are
// exact integers until a group's float scales are applied, as in the reference.
#include "quant/lane_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include <cstring>

#include "quant/formats.h"
#include "quant/lane_scales.h"
#include "quant/lane_values_avx512.h"

namespace pyengine {
namespace {

inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// One unit against NT tokens: acc[t] += the 16 rows' products with token t. sc: the unit's
// decoded scales ([groups][16] dsc, then dmn); x: the Q8_0 block of the unit's first value for
// the first token; tokens are ldx blocks apart.
template <GgmlType T, int NT>
inline void TileUnit(const uint8_t* unit, const float* sc, const XQ8Block* x, int64_t ldx,
                     uintptr_t prefetch, __m512 acc[NT]) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  constexpr int kSubs = L.group / 16;  // LoadSub brings 16 values at a time
  constexpr int kGroups = L.values / L.group;
  // The unit at `prefetch` is asked for a slice per group, not in one burst: a stream of
  // requests the memory system keeps up with.
  constexpr int kSlice = (U.bytes / kGroups + 63) / 64 * 64;
  for (int g = 0; g < kGroups; ++g) {
    for (int p = g * kSlice; p < (g + 1) * kSlice && p < U.bytes; p += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + p), _MM_HINT_T0);
    }
    __m512i w[4 * kSubs];
    for (int i = 0; i < kSubs; ++i) LoadSub<T>(unit, g * kSubs + i, w + 4 * i);
    const __m512 dsc = _mm512_loadu_ps(sc + g * kLaneRows);
    const __m512 dmn = _mm512_loadu_ps(sc + (kGroups + g) * kLaneRows);
    const int blk = g * L.group / 32, q0 = g * L.group % 32;  // the group's activation block
    for (int t = 0; t < NT; ++t) {
      const XQ8Block& xb = x[t * ldx + blk];
      const int8_t* q = xb.q + q0;
      // Two chains halve the latency of the dependent dot-product instructions.
      __m512i p0 = _mm512_setzero_si512(), p1 = _mm512_setzero_si512();
      for (int m = 0; m < 4 * kSubs; m += 2) {
        p0 = _mm512_dpbusd_epi32(p0, w[m], Broadcast4(q + 4 * m));
        p1 = _mm512_dpbusd_epi32(p1, w[m + 1], Broadcast4(q + 4 * m + 4));
      }
      const __m512i p = _mm512_add_epi32(p0, p1);
      // The offset or min, times d * sum(q) of the group's activations.
      const float dsum = L.group == 32 ? xb.dsum : xb.dsum16[q0 / 16];
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dsc, _mm512_set1_ps(xb.d)), acc[t]);
      acc[t] = _mm512_fnmadd_ps(dmn, _mm512_set1_ps(dsum), acc[t]);
    }
  }
}

// One row group against NT tokens: every unit of the group's rows, streamed once. pre: the
// group's scales decoded beforehand (units x LaneScaleFloats), or null to decode them here.
template <GgmlType T, int NT>
void Tokens(const uint8_t* wg, int64_t units, const float* pre, const XQ8Block* x, int64_t ldx,
            float* y, int64_t ldy, __mmask16 mask) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  constexpr int kScaleFloats = LaneScaleFloats(L);
  constexpr int kAhead = U.bytes >= 1024 ? 2 : (2048 + U.bytes - 1) / U.bytes;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t u = 0; u < units; ++u) {
    const uint8_t* unit = wg + u * U.bytes;
    alignas(64) float here[kScaleFloats];
    const float* sc = pre ? pre + u * kScaleFloats : here;
    if (!pre) DecodeUnit<T>(unit, here);
    // Decode streams the weights from memory: the unit about 2 KB ahead (at least two units)
    // is asked for while this one is computed, as far ahead as the Q8_0 kernel asks.
    TileUnit<T, NT>(unit, sc, x + u * (L.values / 32), ldx,
                    reinterpret_cast<uintptr_t>(unit) + kAhead * U.bytes, acc);
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

template <GgmlType T>
void Gemm(const uint8_t* w, int64_t cols, const XQ8Block* x, int64_t n_tok, int64_t g0, int64_t g1,
          int64_t rows, float* y, int64_t ldy, float* scratch) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr int64_t kUnitBytes = GetLaneUnit(L).bytes;
  const int64_t units = cols / L.values, nb = cols / 32;  // nb: activation blocks per token
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = w + g * units * kUnitBytes;
    const __mmask16 mask = RowMask(rows, g);
    float* yg = y + g * kLaneRows;
    // Several passes over the group (more than 8 tokens): decode its scales once for all.
    const float* pre = nullptr;
    if (n_tok > 8 && scratch) {
      for (int64_t u = 0; u < units; ++u) DecodeUnit<T>(wg + u * kUnitBytes, scratch + u * LaneScaleFloats(L));
      pre = scratch;
    }
    int64_t t = 0;
    // Up to 8 tokens share each pass over the weights (a batched decode step reads them once).
    for (; t < n_tok; t += 8) {
      const XQ8Block* xt = x + t * nb;
      float* yt = yg + t * ldy;
      switch (n_tok - t < 8 ? n_tok - t : 8) {
        case 1: Tokens<T, 1>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        case 2: Tokens<T, 2>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        case 3: Tokens<T, 3>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        case 4: Tokens<T, 4>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        case 5: Tokens<T, 5>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        case 6: Tokens<T, 6>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        case 7: Tokens<T, 7>(wg, units, pre, xt, nb, yt, ldy, mask); break;
        default: Tokens<T, 8>(wg, units, pre, xt, nb, yt, ldy, mask); break;
      }
    }
  }
}

}  // namespace

void GemmLanesAvx512(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Block* x,
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
