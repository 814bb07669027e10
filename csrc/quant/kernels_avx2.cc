// AVX2 kernels (plus FMA and F16C), for x86-64 CPUs without AVX-512 VNNI. This file alone is
// compiled with those instructions enabled; it is only called when the CPU reports them.
#include "quant/kernel_set.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstring>

#include "quant/formats.h"

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

struct LoadF16 {
  using W = uint16_t;
  static __m256 Load(const W* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static float One(W v) { return Fp16ToFp32(v); }
};
struct LoadBF16 {
  using W = uint16_t;
  static __m256 Load(const W* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static float One(W v) { return Bf16ToFp32(v); }
};
struct LoadF32 {
  using W = float;
  static __m256 Load(const W* p) { return _mm256_loadu_ps(p); }
  static float One(W v) { return v; }
};

template <class L, int R, int T>
inline void TileFloat(const typename L::W* w, int64_t cols, const float* x, float* y, int64_t ldy) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const int64_t full = cols / 8 * 8;
  for (int64_t k = 0; k < full; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = L::Load(w + r * cols + k);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * cols + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = HorizontalSum(acc[r][t]);
      for (int64_t k = full; k < cols; ++k) s += L::One(w[r * cols + k]) * x[t * cols + k];
      y[t * ldy + r] = s;
    }
  }
}

template <class L, int R>
inline void RowsFloat(const typename L::W* w, int64_t cols, const float* x, int64_t n_tok,
                      float* y, int64_t ldy) {
  constexpr int kT = 2;
  int64_t t = 0;
  for (; t + kT <= n_tok; t += kT) TileFloat<L, R, kT>(w, cols, x + t * cols, y + t * ldy, ldy);
  for (; t < n_tok; ++t) TileFloat<L, R, 1>(w, cols, x + t * cols, y + t * ldy, ldy);
}

template <class L>
void GemmFloat(const typename L::W* w, int64_t cols, const float* x, int64_t n_tok, int64_t r0,
               int64_t r1, float* y, int64_t ldy) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) RowsFloat<L, 4>(w + r * cols, cols, x, n_tok, y + r, ldy);
  for (; r < r1; ++r) RowsFloat<L, 1>(w + r * cols, cols, x, n_tok, y + r, ldy);
}

float DotF16(const float* x, const uint16_t* h, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), LoadF16::Load(h + i), acc);
  float s = HorizontalSum(acc);
  for (; i < n; ++i) s += x[i] * Fp16ToFp32(h[i]);
  return s;
}

void AxpyF16(float a, const uint16_t* h, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, LoadF16::Load(h + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * Fp16ToFp32(h[i]);
}

}  // namespace

const KernelSet* Avx2Kernels() {
  static const KernelSet set = {IsaLevel::kAvx2, GemmQ8, GemmFloat<LoadF16>, GemmFloat<LoadBF16>,
                                GemmFloat<LoadF32>, DotF16, AxpyF16};
  return &set;
}

}  // namespace pyengine

#else

namespace pyengine {
const KernelSet* Avx2Kernels() { return nullptr; }
}  // namespace pyengine

#endif
