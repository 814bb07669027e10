// AVX2 kernels (plus FMA and F16C), for x86-64 CPUs without AVX-512 VNNI. This file alone is
// compiled with those instructions enabled; it is only called when the CPU reports them.
#include "quant/kernel_set.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstring>

#include "quant/attn_tiles.h"
#include "quant/formats.h"
#include "quant/isa_local.h"
#include "quant/lane_kernels.h"

namespace pyengine {
namespace {


inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight of a group's 16 rows (half h) against T tokens. Without VNNI the u8 x s8 multiply
// (maddubs) saturates for biased weights, so weights are unbiased and the sign trick keeps
// every pairwise sum in range: |w| * (x * sign(w)).
template <int T>
inline void TileQ8Half(const Q8x16Block* wg, int64_t nb, int h, const XQ8Block* x, int64_t ldx,
                       float* y, int64_t ldy, int valid) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const Q8x16Block& blk = wg[b];
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d + 8 * h)));
    __m256i ws[8];
    for (int c = 0; c < 8; ++c) {
      ws[c] = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.q + 64 * c + 32 * h)), bias);
    }
    for (int t = 0; t < T; ++t) {
      const XQ8Block& xb = x[t * ldx + b];
      __m256i s = _mm256_setzero_si256();
      for (int c = 0; c < 8; ++c) {
        int32_t v;
        std::memcpy(&v, xb.q + 4 * c, 4);
        const __m256i xv = _mm256_set1_epi32(v);
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(ws[c], ws[c]), _mm256_sign_epi8(xv, ws[c]));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
      }
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) {
    if (valid >= 8) {
      _mm256_storeu_ps(y + t * ldy, acc[t]);
    } else {
      float tmp[8];
      _mm256_storeu_ps(tmp, acc[t]);
      for (int r = 0; r < valid; ++r) y[t * ldy + r] = tmp[r];
    }
  }
}

void GemmQ8(const Q8x16Block* w, int64_t nb, const XQ8Block* x, int64_t n_tok, int64_t g0,
            int64_t g1, int64_t rows, float* y, int64_t ldy) {
  constexpr int kT = 4;
  for (int64_t g = g0; g < g1; ++g) {
    const Q8x16Block* wg = w + g * nb;
    for (int h = 0; h < 2; ++h) {
      const int64_t r0 = g * kQ8Rows + 8 * h;
      const int valid = static_cast<int>(rows - r0 < 8 ? rows - r0 : 8);
      if (valid <= 0) break;
      int64_t t = 0;
      for (; t + kT <= n_tok; t += kT) TileQ8Half<kT>(wg, nb, h, x + t * nb, nb, y + t * ldy + r0, ldy, valid);
      for (; t < n_tok; ++t) TileQ8Half<1>(wg, nb, h, x + t * nb, nb, y + t * ldy + r0, ldy, valid);
    }
  }
}

// 8 weights (one value of 8 rows of a group) as floats.
struct LoadF16 {
  using W = uint16_t;
  static __m256 Load(const W* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
};
struct LoadBF16 {
  using W = uint16_t;
  static __m256 Load(const W* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
};
struct LoadF32 {
  using W = float;
  static __m256 Load(const W* p) { return _mm256_loadu_ps(p); }
};

constexpr int kXTile = 4;  // tokens per tile: 2 half-groups x 4 tokens = 8 accumulators

// One group (16 rows, two 8-lane halves) x T tokens.
template <class L, int T>
inline void TileFloat(const typename L::W* wg, int64_t cols, const float* xt, int64_t tw, float* y,
                      int64_t ldy, int valid) {
  __m256 acc[2][T];
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < T; ++t) acc[h][t] = _mm256_setzero_ps();
  for (int64_t k = 0; k < cols; ++k) {
    const __m256 w0 = L::Load(wg + k * kFloatRows), w1 = L::Load(wg + k * kFloatRows + 8);
    for (int t = 0; t < T; ++t) {
      const __m256 xb = _mm256_broadcast_ss(xt + k * tw + t);
      acc[0][t] = _mm256_fmadd_ps(w0, xb, acc[0][t]);
      acc[1][t] = _mm256_fmadd_ps(w1, xb, acc[1][t]);
    }
  }
  for (int t = 0; t < T; ++t) {
    float tmp[kFloatRows];
    _mm256_storeu_ps(tmp, acc[0][t]);
    _mm256_storeu_ps(tmp + 8, acc[1][t]);
    for (int r = 0; r < valid; ++r) y[t * ldy + r] = tmp[r];
  }
}

template <class L>
void GemmFloat(const typename L::W* w, int64_t cols, const float* x, int64_t n_tok, int64_t g0,
               int64_t g1, int64_t rows, float* y, int64_t ldy) {
  for (int64_t g = g0; g < g1; ++g) {
    const int valid = static_cast<int>(rows - g * kFloatRows < kFloatRows ? rows - g * kFloatRows : kFloatRows);
    const typename L::W* wg = w + g * cols * kFloatRows;
    for (int64_t a = 0; a < n_tok; a += kXTile) {
      const int64_t tw = n_tok - a < kXTile ? n_tok - a : kXTile;
      const float* xt = x + a * cols;
      float* ya = y + a * ldy + g * kFloatRows;
      switch (tw) {
        case 4: TileFloat<L, 4>(wg, cols, xt, tw, ya, ldy, valid); break;
        case 3: TileFloat<L, 3>(wg, cols, xt, tw, ya, ldy, valid); break;
        case 2: TileFloat<L, 2>(wg, cols, xt, tw, ya, ldy, valid); break;
        default: TileFloat<L, 1>(wg, cols, xt, tw, ya, ldy, valid); break;
      }
    }
  }
}

void PackX(const float* x, int64_t n_tok, int64_t cols, int64_t t0, int64_t t1, XRound round, float* out) {
  PackXGeneric(x, n_tok, cols, t0, t1, kXTile, round, out);
}

void QuantizeQ8(const float* x, int64_t cols, XQ8Block* out) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, ++out) {
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(x + 8 * j);
      m = _mm256_max_ps(m, _mm256_and_ps(v[j], abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    out->d = H2F(F2H(amax / 127.f));
    int32_t q[32];
    for (int j = 0; j < 4; ++j) {
      const __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], _mm256_set1_ps(id)));  // nearest even
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 8 * j), qi);
    }
    for (int j = 0; j < 32; ++j) out->q[j] = static_cast<int8_t>(q[j]);
    int32_t s0 = 0, s1 = 0;
    for (int j = 0; j < 16; ++j) {
      s0 += q[j];
      s1 += q[16 + j];
    }
    out->SetSums(s0, s1);
  }
}

void ToF16(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = F2H(x[i]);
}

void GeluMul(float* g, const float* u, int64_t n) {
  const float* table = GeluFp16Table();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256 r = _mm256_i32gather_ps(table, idx, 4);
    r = _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, _mm256_set1_ps(10.f), _CMP_GE_OQ));
    r = _mm256_and_ps(r, _mm256_cmp_ps(x, _mm256_set1_ps(-10.f), _CMP_GT_OQ));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(r, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) {
    const float x = g[i];
    g[i] = (x <= -10.f ? 0.f : x >= 10.f ? x : table[F2H(x)]) * u[i];
  }
}

void F16ToF32(const uint16_t* h, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, LoadF16::Load(h + i));
  for (; i < n; ++i) out[i] = H2F(h[i]);
}

void RoundF16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
  }
  for (; i < n; ++i) x[i] = H2F(F2H(x[i]));
}

}  // namespace

const KernelSet* Avx2Kernels() {
  static const KernelSet set = {IsaLevel::kAvx2, GemmQ8, GemmFloat<LoadF16>, GemmFloat<LoadBF16>,
                                GemmFloat<LoadF32>, /*gemm_f16_i16=*/nullptr,
                                /*quantize_i16=*/nullptr, kXTile, PackX, QuantizeQ8, ToF16, GeluMul,
                                AttnScoresTile, AttnValuesTile, AttnKeysTile<F16ToF32>,
                                KvRowsTile<F16ToF32>,
                                F16ToF32, RoundF16,
                                GemmLanesAvx2, /*gemm_lanes_amx=*/nullptr,
                                /*gemm_q8_amx=*/nullptr};
  return &set;
}

}  // namespace pyengine

#else

namespace pyengine {
const KernelSet* Avx2Kernels() { return nullptr; }
}  // namespace pyengine

#endif
