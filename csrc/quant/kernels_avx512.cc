// AVX-512 kernels (F, BW, VL, VNNI, plus F16C/FMA). This file alone is compiled with those
// instructions enabled; it is only called when the CPU reports them.
#include "quant/kernel_set.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include <cstring>

namespace pyengine {
namespace {

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
    // Decode streams weights from memory: ask for the block after next early.
    _mm_prefetch(reinterpret_cast<const char*>(&wg[b + 2]), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(&wg[b + 2]) + 256, _MM_HINT_T0);
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
      const __m512i s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(xb.sum128));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, store_mask, acc[t]);
}

void GemmQ8(const Q8x16Block* w, int64_t nb, const XQ8Block* x, int64_t n_tok, int64_t g0,
            int64_t g1, int64_t rows, float* y, int64_t ldy) {
  constexpr int kT = 8;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = g * kQ8Rows;
    const int64_t valid = rows - r0 < kQ8Rows ? rows - r0 : kQ8Rows;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
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

// 16 weights of a row as floats; `m` masks the ragged end of a row.
struct LoadF16 {
  using W = uint16_t;
  static __m512 Load(const W* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct LoadBF16 {
  using W = uint16_t;
  static __m512 Load(const W* p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
};
struct LoadF32 {
  using W = float;
  static __m512 Load(const W* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};

// R rows x T tokens of dot products, 16 values of k at a time: R*T accumulators, each weight
// vector converted once and used by T tokens.
template <class L, int R, int T>
inline void TileFloat(const typename L::W* w, int64_t cols, const float* x, float* y, int64_t ldy) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < cols; k += 16) {
    const __mmask16 m = cols - k >= 16 ? static_cast<__mmask16>(0xffff)
                                       : static_cast<__mmask16>((1u << (cols - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = L::Load(w + r * cols + k, m);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * cols + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <class L, int R>
inline void RowsFloat(const typename L::W* w, int64_t cols, const float* x, int64_t n_tok,
                      float* y, int64_t ldy) {
  constexpr int kT = 6;
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
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), LoadF16::Load(h + i, m), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

void AxpyF16(float a, const uint16_t* h, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, LoadF16::Load(h + i, m), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

}  // namespace

const KernelSet* Avx512Kernels() {
  static const KernelSet set = {IsaLevel::kAvx512, GemmQ8, GemmFloat<LoadF16>,
                                GemmFloat<LoadBF16>, GemmFloat<LoadF32>, DotF16, AxpyF16};
  return &set;
}

}  // namespace pyengine

#else

namespace pyengine {
const KernelSet* Avx512Kernels() { return nullptr; }
}  // namespace pyengine

#endif
