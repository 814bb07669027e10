// AMX kernels for prompts, of the lane-layout types with 32-value groups (lanes.h) and of Q8_0:
// the integer dot products of a group of 32 values for 16 tokens and 16 rows at once, in one
// tile instruction, instead of 8 vpdpbusd per token. A unit's values unpack (LoadSub) into
// exactly the layout the instruction's second operand wants: 4 consecutive values of each of 16
// rows per 64-byte line. The activations' Q8_0 blocks come 16 tokens to a tile (XQ8Tile16), the
// first operand.
//
// The sums are the same exact integers vpdpbusd makes, and the float steps that follow are
// those of the AVX-512 kernels in the same order, so the results equal theirs bit for bit.
// What remains per group and token (a conversion and two or three float operations on 16 rows)
// is most of the time: on the CPU measured, the tile instructions and those vector operations
// do not overlap, so the gain over vpdpbusd is 1.2-1.4x, not the tile unit's 8x.
#include "quant/lane_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AMX_TILE__) && defined(__AMX_INT8__)
#include <immintrin.h>

#include <cstring>

#include "quant/lane_values_avx512.h"

namespace pyengine {
namespace {

constexpr int kTileTokens = kAmxTokens;
constexpr int kGroupValues = 32;  // K: the values of a group, one activation block

// Tile registers: C (16 tokens x 16 rows of int32) in 0-3, A (16 tokens x K quants) in 4 and
// 5, B (K / 4 lines of 16 rows x 4 values) in 6 and 7 (GroupProducts).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TileConfig MakeConfig() {
  TileConfig c;
  for (int i = 0; i < 4; ++i) c.rows[i] = kTileTokens, c.colsb[i] = 64;           // C
  for (int i = 4; i < 6; ++i) c.rows[i] = kTileTokens, c.colsb[i] = kGroupValues;  // A
  for (int i = 6; i < 8; ++i) c.rows[i] = kGroupValues / 4, c.colsb[i] = 64;       // B
  return c;
}

// Group j's values (of every group of a row group, in order) unpacked once for all the
// prompt's token tiles: [groups][K / 4 lines][64 bytes].
template <GgmlType T>
void UnpackGroups(const uint8_t* wg, int64_t units, uint8_t* b) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr LaneUnit U = GetLaneUnit(L);
  for (int64_t u = 0; u < units; ++u) {
    for (int s = 0; s < L.values / 16; ++s, b += 256) {
      __m512i w[4];
      LoadSub<T>(wg + u * U.bytes, s, w);
      for (int m = 0; m < 4; ++m) _mm512_storeu_si512(b + 64 * m, w[m]);
    }
  }
}

// The products of group j with 16 tokens into cbuf [16 tokens][16 rows]: signed activations
// (A, q: the first token's K quants, rows `stride` bytes apart) times unsigned weights (B).
// Consecutive groups rotate through 4 result tiles (0-3) and 2 of each operand (4-7), so
// several groups' tile work is in flight; GCC's intrinsics want the registers as literals.
template <int P>
inline void GroupProducts(const uint8_t* b, const int8_t* q, int64_t stride, int32_t* cbuf) {
#define PYENGINE_GROUP_TILES(C, A, B) \
  _tile_loadd(B, b, 64);              \
  _tile_loadd(A, q, stride);          \
  _tile_zero(C);                      \
  _tile_dpbsud(C, A, B);              \
  _tile_stored(C, cbuf, 64)
  if constexpr (P == 0) {
    PYENGINE_GROUP_TILES(0, 4, 6);
  } else if constexpr (P == 1) {
    PYENGINE_GROUP_TILES(1, 5, 7);
  } else if constexpr (P == 2) {
    PYENGINE_GROUP_TILES(2, 4, 6);
  } else {
    PYENGINE_GROUP_TILES(3, 5, 7);
  }
#undef PYENGINE_GROUP_TILES
}
constexpr int kInFlight = 4;  // result tiles, and cbuf slots

// The tile products of groups [0, n) (group j: weights at bj(j), activations x[j]) run
// kInFlight - 1 groups ahead of epilogue(j, sums of group j [16 tokens][16 rows]), so the tile
// unit works while the vector units apply the scales.
template <class WeightsOf, class Epilogue>
inline void Pipelined(int64_t n, const XQ8Tile16* x, WeightsOf bj, Epilogue epilogue) {
  alignas(64) int32_t cbuf[kInFlight][kTileTokens * kLaneRows];
  auto issue = [&](int64_t j) {
    const int8_t* q = x[j].q[0];
    switch (j % kInFlight) {
      case 0: GroupProducts<0>(bj(j), q, 32, cbuf[0]); break;
      case 1: GroupProducts<1>(bj(j), q, 32, cbuf[1]); break;
      case 2: GroupProducts<2>(bj(j), q, 32, cbuf[2]); break;
      default: GroupProducts<3>(bj(j), q, 32, cbuf[3]); break;
    }
  };
  for (int64_t j = 0; j < kInFlight - 1 && j < n; ++j) issue(j);
  for (int64_t j = 0; j < n; ++j) {
    if (j + kInFlight - 1 < n) issue(j + kInFlight - 1);
    epilogue(j, cbuf[j % kInFlight]);
  }
}

// 16 tokens (x: their tile blocks) against every group of a row group (b: UnpackGroups; pre:
// the decoded scales of its units); group j reads activation block j.
template <GgmlType T>
void TokenTile(const uint8_t* b, int64_t units, const float* pre, const XQ8Tile16* x, float* y,
               int64_t ldy, __mmask16 mask) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  static_assert(L.group == kGroupValues, "one activation block per group");
  constexpr int kScaleFloats = LaneScaleFloats(L);
  constexpr int kGroups = L.values / L.group;
  constexpr int kGroupBytes = L.group * kLaneRows;
  __m512 acc[kTileTokens];
  for (int t = 0; t < kTileTokens; ++t) acc[t] = _mm512_setzero_ps();
  Pipelined(units * kGroups, x, [&](int64_t j) { return b + j * kGroupBytes; },
            [&](int64_t j, const int32_t* c) {
              // As TileUnit in lanes_avx512.cc: the group's scale, then its offset or min.
              const float* sc = pre + (j / kGroups) * kScaleFloats;
              const int gi = static_cast<int>(j % kGroups);
              const __m512 dsc = _mm512_loadu_ps(sc + gi * kLaneRows);
              const __m512 dmn = _mm512_loadu_ps(sc + (kGroups + gi) * kLaneRows);
              const XQ8Tile16& xj = x[j];
              for (int t = 0; t < kTileTokens; ++t) {
                const __m512i s = _mm512_load_si512(c + t * kLaneRows);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dsc, _mm512_set1_ps(xj.d[t])), acc[t]);
                acc[t] = _mm512_fnmadd_ps(dmn, _mm512_set1_ps(xj.dsum[t]), acc[t]);
              }
            });
  for (int t = 0; t < kTileTokens; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

// Q8_0 weights: a block's quants are already the second operand's layout (kernel_set.h), read
// in place; the epilogue is TileQ8's in kernels_avx512.cc.
void TokenTileQ8(const Q8x16Block* wg, int64_t nb, const XQ8Tile16* x, float* y, int64_t ldy,
                 __mmask16 mask) {
  __m512 acc[kTileTokens];
  for (int t = 0; t < kTileTokens; ++t) acc[t] = _mm512_setzero_ps();
  Pipelined(nb, x, [&](int64_t j) { return wg[j].q; }, [&](int64_t j, const int32_t* c) {
    const __m512 dw = Halves16(wg[j].d);
    const XQ8Tile16& xj = x[j];
    for (int t = 0; t < kTileTokens; ++t) {
      const __m512i s = _mm512_sub_epi32(_mm512_load_si512(c + t * kLaneRows), _mm512_set1_epi32(xj.bias[t]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xj.d[t])), acc[t]);
    }
  });
  for (int t = 0; t < kTileTokens; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

template <GgmlType T>
void Gemm(const uint8_t* w, int64_t cols, const XQ8Tile16* x, int64_t tiles, int64_t g0, int64_t g1,
          int64_t rows, float* y, int64_t ldy, float* scratch) {
  constexpr BlockLayout L = *GetBlockLayout(T);
  constexpr int64_t kUnitBytes = GetLaneUnit(L).bytes;
  const int64_t units = cols / L.values, nb = cols / 32;
  // The calling thread's scratch: a row group's decoded scales, then its values unpacked
  // (LaneScratchFloats counts both).
  uint8_t* unpacked = reinterpret_cast<uint8_t*>(scratch + LaneScaleFloatsOf(cols));
  const TileConfig cfg = MakeConfig();
  _tile_loadconfig(&cfg);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = w + g * units * kUnitBytes;
    for (int64_t u = 0; u < units; ++u) DecodeUnit<T>(wg + u * kUnitBytes, scratch + u * LaneScaleFloats(L));
    UnpackGroups<T>(wg, units, unpacked);
    for (int64_t i = 0; i < tiles; ++i) {
      TokenTile<T>(unpacked, units, scratch, x + i * nb, y + i * kTileTokens * ldy + g * kLaneRows,
                   ldy, RowMask(rows, g));
    }
  }
  _tile_release();  // back to the initial state: a context switch need not save the tiles
}

}  // namespace

void GemmLanesAmx(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Tile16* x,
                  int64_t tiles, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                  float* scratch) {
  switch (l.type) {
#define PYENGINE_LANE_TYPE(T)                                                \
  case GgmlType::T:                                                          \
    if constexpr (GetBlockLayout(GgmlType::T)->group == kGroupValues) {      \
      Gemm<GgmlType::T>(w, cols, x, tiles, g0, g1, rows, y, ldy, scratch);   \
    }                                                                        \
    return;
    PYENGINE_LANE_TYPES(PYENGINE_LANE_TYPE)
#undef PYENGINE_LANE_TYPE
    default: return;
  }
}

void GemmQ8Amx(const Q8x16Block* w, int64_t nb, const XQ8Tile16* x, int64_t tiles, int64_t g0,
               int64_t g1, int64_t rows, float* y, int64_t ldy) {
  const TileConfig cfg = MakeConfig();
  _tile_loadconfig(&cfg);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t i = 0; i < tiles; ++i) {
      TokenTileQ8(w + g * nb, nb, x + i * nb, y + i * kTileTokens * ldy + g * kQ8Rows, ldy, RowMask(rows, g));
    }
  }
  _tile_release();
}

}  // namespace pyengine

#else

namespace pyengine {

void GemmLanesAmx(const BlockLayout&, const uint8_t*, int64_t, const XQ8Tile16*, int64_t, int64_t,
                  int64_t, int64_t, float*, int64_t, float*) {}  // never called: see the header
void GemmQ8Amx(const Q8x16Block*, int64_t, const XQ8Tile16*, int64_t, int64_t, int64_t, int64_t, float*,
               int64_t) {}

}  // namespace pyengine

#endif
