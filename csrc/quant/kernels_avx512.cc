// AVX-512 kernels (F, BW, VL, VNNI, plus F16C/FMA). This file alone is compiled with those
// instructions enabled; it is only called when the CPU reports them.
#include "quant/kernel_set.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "quant/attn_tiles.h"
#include "quant/formats.h"
#include "quant/isa_local.h"
#include "quant/lane_kernels.h"

namespace pyengine {
namespace {


// Asks for `lines` cache lines from address `at` on. Addresses come as integers: the lines
// may lie past the end of the array (a prefetch never faults).
inline void Prefetch(uintptr_t at, int lines) {
  for (int p = 0; p < lines; ++p) _mm_prefetch(reinterpret_cast<const char*>(at + 64 * p), _MM_HINT_T0);
}

// Store mask of row group g (16 rows, Q8_0 or float layout): a padded last group stores only
// its rows below `rows`.
static_assert(kQ8Rows == kFloatRows, "one mask serves both layouts");
inline __mmask16 RowMask(int64_t rows, int64_t g) {
  const int64_t valid = rows - g * kFloatRows;
  return valid >= kFloatRows ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << valid) - 1);
}

inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// One row group (16 rows) against T tokens: the group's 8 weight registers per block are
// loaded once and reused by every token of the tile.
template <int T>
inline void TileQ8(const Q8x16Block* wg, int64_t nb, const XQ8Block* x, int64_t ldx, float* y,
                   int64_t ldy, __mmask16 store_mask) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const Q8x16Block& blk = wg[b];
    // Decode streams weights from memory: request all 9 cache lines of a block 4 blocks
    // (~2 KB) ahead; the hardware prefetcher alone left the loads waiting on DRAM.
    Prefetch(reinterpret_cast<uintptr_t>(wg + b) + 4 * sizeof(Q8x16Block), 9);
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.d)));
    __m512i w[8];
    for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(blk.q + 64 * c);
    for (int t = 0; t < T; ++t) {
      const XQ8Block& xb = x[t * ldx + b];
      // Two chains halve the latency of eight dependent dot-product instructions.
      __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
      for (int c = 0; c < 8; c += 2) {
        s0 = _mm512_dpbusd_epi32(s0, w[c], Broadcast4(xb.q + 4 * c));
        s1 = _mm512_dpbusd_epi32(s1, w[c + 1], Broadcast4(xb.q + 4 * c + 4));
      }
      const __m512i s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(128 * xb.sum()));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, store_mask, acc[t]);
}

// One token (decode): bandwidth bound. Four independent dot-product chains per block keep
// enough loads in flight; the whole block 4 ahead is prefetched. The float accumulation runs in
// block order through one register, exactly as TileQ8 does, so a token's result does not depend
// on how many tokens share the product (batched decode equals decode alone, bit for bit).
inline void VecQ8(const Q8x16Block* wg, int64_t nb, const XQ8Block* x, float* y, __mmask16 store_mask) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const Q8x16Block& blk = wg[b];
    Prefetch(reinterpret_cast<uintptr_t>(wg + b) + 4 * sizeof(Q8x16Block), 9);
    const XQ8Block& xb = x[b];
    __m512i s[4];
    for (int c = 0; c < 4; ++c) {
      s[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(blk.q + 64 * c), Broadcast4(xb.q + 4 * c));
    }
    for (int c = 4; c < 8; ++c) {
      s[c - 4] = _mm512_dpbusd_epi32(s[c - 4], _mm512_loadu_si512(blk.q + 64 * c), Broadcast4(xb.q + 4 * c));
    }
    // Integer sums are exact in any order; only the float steps below must match TileQ8's.
    const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(_mm512_add_epi32(s[0], s[1]), _mm512_add_epi32(s[2], s[3])),
                                         _mm512_set1_epi32(128 * xb.sum()));
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.d)));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc);
  }
  _mm512_mask_storeu_ps(y, store_mask, acc);
}

void GemmQ8(const Q8x16Block* w, int64_t nb, const XQ8Block* x, int64_t n_tok, int64_t g0,
            int64_t g1, int64_t rows, float* y, int64_t ldy) {
  constexpr int kT = 8;
  if (n_tok == 1) {
    for (int64_t g = g0; g < g1; ++g) {
      VecQ8(w + g * nb, nb, x, y + g * kQ8Rows, RowMask(rows, g));
    }
    return;
  }
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = g * kQ8Rows;
    const __mmask16 mask = RowMask(rows, g);
    const Q8x16Block* wg = w + g * nb;
    int64_t t = 0;
    for (; t + kT <= n_tok; t += kT) TileQ8<kT>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask);
    switch (n_tok - t) {
      case 7: TileQ8<7>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      case 6: TileQ8<6>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      case 5: TileQ8<5>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      case 4: TileQ8<4>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      case 3: TileQ8<3>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      case 2: TileQ8<2>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      case 1: TileQ8<1>(wg, nb, x + t * nb, nb, y + t * ldy + r0, ldy, mask); break;
      default: break;
    }
  }
}

// 16 weights (one value of each row of a group) as floats.
struct LoadF16 {
  using W = uint16_t;
  static __m512 Load(const W* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 LoadMasked(const W* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
};
struct LoadBF16 {
  using W = uint16_t;
  static __m512 Load(const W* p) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  }
};
struct LoadF32 {
  using W = float;
  static __m512 Load(const W* p) { return _mm512_loadu_ps(p); }
};

constexpr int kXTile = 12;  // tokens per tile: 2 groups x 12 tokens = 24 accumulators

// G row groups (16 rows each) x T tokens. Per k: G weight vectors, T broadcasts, G*T FMAs.
template <class L, int G, int T>
inline void TileFloat(const typename L::W* wg, int64_t cols, const float* xt, int64_t tw, float* y,
                      int64_t ldy, const __mmask16* masks) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < T; ++t) acc[g][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < cols; ++k) {
    __m512 wv[G];
    for (int g = 0; g < G; ++g) wv[g] = L::Load(wg + (g * cols + k) * kFloatRows);
    for (int t = 0; t < T; ++t) {
      const __m512 xb = _mm512_set1_ps(xt[k * tw + t]);
      for (int g = 0; g < G; ++g) acc[g][t] = _mm512_fmadd_ps(wv[g], xb, acc[g][t]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy + g * kFloatRows, masks[g], acc[g][t]);
}

template <class L, int G>
void TokensFloat(const typename L::W* wg, int64_t cols, const float* x, int64_t n_tok, float* y,
                 int64_t ldy, const __mmask16* masks) {
  for (int64_t a = 0; a < n_tok; a += kXTile) {
    const int64_t tw = n_tok - a < kXTile ? n_tok - a : kXTile;
    const float* xt = x + a * cols;
    float* ya = y + a * ldy;
    switch (tw) {
#define PYENGINE_TILE(N) case N: TileFloat<L, G, N>(wg, cols, xt, tw, ya, ldy, masks); break;
      PYENGINE_TILE(1) PYENGINE_TILE(2) PYENGINE_TILE(3) PYENGINE_TILE(4) PYENGINE_TILE(5)
      PYENGINE_TILE(6) PYENGINE_TILE(7) PYENGINE_TILE(8) PYENGINE_TILE(9) PYENGINE_TILE(10)
      PYENGINE_TILE(11) PYENGINE_TILE(12)
#undef PYENGINE_TILE
      default: break;
    }
  }
}

template <class L>
void GemmFloat(const typename L::W* w, int64_t cols, const float* x, int64_t n_tok, int64_t g0,
               int64_t g1, int64_t rows, float* y, int64_t ldy) {
  // Every token count, one token included, goes through the same tiles: a token's products
  // never depend on how many others share its step (a separate one-token loop summed in
  // another order and was no faster).
  int64_t g = g0;
  for (; g + 2 <= g1; g += 2) {
    const __mmask16 masks[2] = {RowMask(rows, g), RowMask(rows, g + 1)};
    TokensFloat<L, 2>(w + g * cols * kFloatRows, cols, x, n_tok, y + g * kFloatRows, ldy, masks);
  }
  if (g < g1) {
    const __mmask16 masks[1] = {RowMask(rows, g)};
    TokensFloat<L, 1>(w + g * cols * kFloatRows, cols, x, n_tok, y + g * kFloatRows, ldy, masks);
  }
}

// ---- F16 weights through 16-bit integer dot products (prompt processing) ----

// One group's panel [cols][16] of fp16 weights as 14-bit integers: per 16-value block of each
// row a scale (lane = row) and eight registers of (k, k+1) pairs, the layout vpdpwssd reads.
//   wq: [cols/16][8][16] int32 (two int16 each), ws: [cols/16][16] float
void PanelI16(const uint16_t* wg, int64_t cols, int32_t* wq, float* ws) {
  const __m512i lo16 = _mm512_set1_epi32(0xffff);
  for (int64_t blk = 0; blk < cols / kI16Block; ++blk) {
    __m512 v[kI16Block];
    __m512 m = _mm512_setzero_ps();
    for (int j = 0; j < kI16Block; ++j) {
      v[j] = LoadF16::Load(wg + (blk * kI16Block + j) * kFloatRows);
      m = _mm512_max_ps(m, _mm512_abs_ps(v[j]));
    }
    const __mmask16 nz = _mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    const __m512 inv = _mm512_maskz_div_ps(nz, _mm512_set1_ps(static_cast<float>(kI16WeightMax)), m);
    _mm512_storeu_ps(ws + blk * kFloatRows, _mm512_div_ps(m, _mm512_set1_ps(static_cast<float>(kI16WeightMax))));
    for (int c = 0; c < 8; ++c) {
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v[2 * c], inv));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v[2 * c + 1], inv));
      _mm512_storeu_si512(wq + (blk * 8 + c) * kFloatRows,
                          _mm512_or_si512(_mm512_and_si512(q0, lo16), _mm512_slli_epi32(q1, 16)));
    }
  }
}

template <int T>
inline void TileI16(const int32_t* wq, const float* ws, int64_t nblk, const int16_t* xq,
                    const float* xs, int64_t cols, float* y, int64_t ldy, __mmask16 mask) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < nblk; ++blk) {
    __m512i w[8];
    for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(wq + (blk * 8 + c) * kFloatRows);
    const __m512 sw = _mm512_loadu_ps(ws + blk * kFloatRows);
    for (int t = 0; t < T; ++t) {
      const int16_t* xr = xq + t * cols + blk * kI16Block;
      __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
      for (int c = 0; c < 8; c += 2) {
        int32_t p0, p1;
        std::memcpy(&p0, xr + 2 * c, 4);
        std::memcpy(&p1, xr + 2 * c + 2, 4);
        a0 = _mm512_dpwssd_epi32(a0, w[c], _mm512_set1_epi32(p0));
        a1 = _mm512_dpwssd_epi32(a1, w[c + 1], _mm512_set1_epi32(p1));
      }
      const __m512 scale = _mm512_mul_ps(sw, _mm512_set1_ps(xs[t * (cols / kI16Block) + blk]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), scale, acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

void GemmF16I16(const uint16_t* w, int64_t cols, const int16_t* xq, const float* xs, int64_t n_tok,
                int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy, int32_t* wq, float* ws) {
  constexpr int kT = 12;
  const int64_t nblk = cols / kI16Block;
  for (int64_t g = g0; g < g1; ++g) {
    // Converted once per group into this thread's scratch, then used by every prompt token.
    PanelI16(w + g * cols * kFloatRows, cols, wq, ws);
    const __mmask16 mask = RowMask(rows, g);
    float* yg = y + g * kFloatRows;
    int64_t t = 0;
    for (; t + kT <= n_tok; t += kT) {
      TileI16<kT>(wq, ws, nblk, xq + t * cols, xs + t * nblk, cols, yg + t * ldy, ldy, mask);
    }
    for (; t < n_tok; ++t) {
      TileI16<1>(wq, ws, nblk, xq + t * cols, xs + t * nblk, cols, yg + t * ldy, ldy, mask);
    }
  }
}

// Activations for GemmF16I16: fp16-rounded (as the reference rounds them), then 15-bit
// integers per 16-value block.
void QuantizeI16(const float* x, int64_t cols, int16_t* xq, float* xs) {
  for (int64_t blk = 0; blk < cols / kI16Block; ++blk) {
    const __m512 v = _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(x + blk * kI16Block),
                                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const float amax = _mm512_reduce_max_ps(_mm512_abs_ps(v));
    const float inv = amax != 0.f ? static_cast<float>(kI16ActMax) / amax : 0.f;
    xs[blk] = amax / static_cast<float>(kI16ActMax);
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inv)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + blk * kI16Block), _mm512_cvtepi32_epi16(q));
  }
}

// Rounds one row of activations as the reference does for the weight type.
void RoundRow(const float* x, int64_t n, XRound round, float* out) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512 v = _mm512_loadu_ps(x + k);
    if (round == XRound::kF16) {
      v = _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else if (round == XRound::kBF16) {
      // Nearest-even on the upper 16 bits; NaNs stay (quiet) NaNs.
      const __m512i b = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
      r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(static_cast<int>(0xffff0000u))), _mm512_set1_epi32(0x400000)));
      v = _mm512_castsi512_ps(r);
    }
    _mm512_storeu_ps(out + k, v);
  }
  for (; k < n; ++k) {
    out[k] = round == XRound::kF16 ? H2F(F2H(x[k]))
           : round == XRound::kBF16 ? B2F(Fp32ToBf16(x[k])) : x[k];
  }
}

void PackX(const float* x, int64_t n_tok, int64_t cols, int64_t t0, int64_t t1, XRound round, float* out) {
  constexpr int64_t kChunk = 256;
  float row[kChunk];  // one token's rounded values for a chunk of k
  for (int64_t a = t0; a < t1; a += kXTile) {
    const int64_t tw = n_tok - a < kXTile ? n_tok - a : kXTile;
    float* o = out + a * cols;  // [cols, tw]
    for (int64_t k0 = 0; k0 < cols; k0 += kChunk) {
      const int64_t len = cols - k0 < kChunk ? cols - k0 : kChunk;
      for (int64_t j = 0; j < tw; ++j) {
        RoundRow(x + (a + j) * cols + k0, len, round, row);
        for (int64_t k = 0; k < len; ++k) o[(k0 + k) * tw + j] = row[k];
      }
    }
  }
}

void QuantizeQ8(const float* x, int64_t cols, XQ8Block* out) {
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, ++out) {
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    out->d = H2F(F2H(amax / 127.f));
    // Conversion under the default rounding mode: nearest, ties to even, as ggml's
    // _mm256_round_ps(_MM_ROUND_NEAREST).
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out->q), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out->q + 16), _mm512_cvtepi32_epi8(q1));
    out->SetSums(_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
  }
}

void ToF16(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = F2H(x[i]);
}

void GeluMul(float* g, const float* u, int64_t n) {
  const float* table = GeluFp16Table();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512i idx = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m512 r = _mm512_i32gather_ps(idx, table, 4);
    r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x, _mm512_set1_ps(10.f), _CMP_GE_OQ), x);
    r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-10.f), _CMP_GT_OQ), r);
    _mm512_storeu_ps(g + i, _mm512_mul_ps(r, _mm512_loadu_ps(u + i)));
  }
  for (; i < n; ++i) {
    const float x = g[i];
    g[i] = (x <= -10.f ? 0.f : x >= 10.f ? x : table[F2H(x)]) * u[i];
  }
}

void F16ToF32(const uint16_t* h, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, LoadF16::Load(h + i));
  if (i < n) {  // masked only at the end: every key and value row of attention comes through here
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, LoadF16::LoadMasked(h + i, m));
  }
}

// kt [16][16] = the 16 x 16 block vf [16][ld] transposed, in registers: interleave 32-bit,
// then 64-bit elements, then 128-bit lanes twice.
void Transpose16(const float* vf, int64_t ld, float* kt) {
  __m512 r[16], t[16];
  for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(vf + j * ld);
  for (int j = 0; j < 16; j += 2) {
    t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
  }
  auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int j = 0; j < 16; j += 4) {
    r[j] = lo(t[j], t[j + 2]);
    r[j + 1] = hi(t[j], t[j + 2]);
    r[j + 2] = lo(t[j + 1], t[j + 3]);
    r[j + 3] = hi(t[j + 1], t[j + 3]);
  }
  for (int j = 0; j < 16; j += 8) {
    for (int q = 0; q < 4; ++q) {
      t[j + q] = _mm512_shuffle_f32x4(r[j + q], r[j + 4 + q], 0x88);
      t[j + 4 + q] = _mm512_shuffle_f32x4(r[j + q], r[j + 4 + q], 0xdd);
    }
  }
  for (int q = 0; q < 8; ++q) {
    _mm512_storeu_ps(kt + q * 16, _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88));
    _mm512_storeu_ps(kt + (8 + q) * 16, _mm512_shuffle_f32x4(t[q], t[8 + q], 0xdd));
  }
}

void AttnKeys(KvType t, const uint8_t* k, int64_t ldk, int nk, int64_t d, float* vf, float* kt) {
  KvRowsTile<F16ToF32>(t, k, ldk, nk, d, vf);
  std::fill(vf + nk * d, vf + kAttnKeys * d, 0.f);
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) Transpose16(vf + i, d, kt + i * kAttnKeys);
  for (; i < d; ++i) {
    for (int j = 0; j < kAttnKeys; ++j) kt[i * kAttnKeys + j] = vf[j * d + i];
  }
}

void RoundF16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
  }
}

}  // namespace

const KernelSet* Avx512Kernels() {
  static const KernelSet set = {IsaLevel::kAvx512, GemmQ8, GemmFloat<LoadF16>,
                                GemmFloat<LoadBF16>, GemmFloat<LoadF32>, GemmF16I16,
                                QuantizeI16, kXTile, PackX,
                                QuantizeQ8, ToF16, GeluMul, AttnScoresTile, AttnValuesTile,
                                AttnKeys, KvRowsTile<F16ToF32>, F16ToF32, RoundF16,
                                GemmLanesAvx512, GemmLanesAmx, GemmQ8Amx};
  return &set;
}

}  // namespace pyengine

#else

namespace pyengine {
const KernelSet* Avx512Kernels() { return nullptr; }
}  // namespace pyengine

#endif
