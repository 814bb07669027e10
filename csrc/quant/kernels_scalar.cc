// Scalar reference kernels: plain loops, the definition the SIMD kernels are tested against.
#include "quant/formats.h"
#include "quant/kernel_set.h"

namespace pyengine {
namespace {

void GemmQ8(const Q8x16Block* w, int64_t nb, const XQ8Block* x, int64_t n_tok, int64_t g0,
            int64_t g1, int64_t rows, float* y, int64_t ldy) {
  for (int64_t g = g0; g < g1; ++g) {
    const Q8x16Block* wg = w + g * nb;
    for (int64_t t = 0; t < n_tok; ++t) {
      const XQ8Block* xt = x + t * nb;
      float acc[kQ8Rows] = {};
      for (int64_t b = 0; b < nb; ++b) {
        for (int r = 0; r < kQ8Rows; ++r) {
          int32_t isum = 0;
          for (int k = 0; k < 32; ++k) {
            const int c = k / 4, j = k % 4;
            isum += (static_cast<int32_t>(wg[b].q[c * 64 + r * 4 + j]) - 128) * xt[b].q[k];
          }
          acc[r] += static_cast<float>(isum) * (Fp16ToFp32(wg[b].d[r]) * xt[b].d);
        }
      }
      for (int r = 0; r < kQ8Rows && g * kQ8Rows + r < rows; ++r) y[t * ldy + g * kQ8Rows + r] = acc[r];
    }
  }
}

template <typename W, float (*Load)(W)>
void GemmFloat(const W* w, int64_t cols, const float* x, int64_t n_tok, int64_t r0, int64_t r1,
               float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const W* wr = w + r * cols;
    for (int64_t t = 0; t < n_tok; ++t) {
      const float* xt = x + t * cols;
      float s = 0;
      for (int64_t k = 0; k < cols; ++k) s += Load(wr[k]) * xt[k];
      y[t * ldy + r] = s;
    }
  }
}

float LoadF32(float v) { return v; }

float DotF16(const float* x, const uint16_t* h, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * Fp16ToFp32(h[i]);
  return s;
}

void AxpyF16(float a, const uint16_t* h, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * Fp16ToFp32(h[i]);
}

}  // namespace

const KernelSet& ScalarKernels() {
  static const KernelSet set = {IsaLevel::kScalar, GemmQ8, GemmFloat<uint16_t, Fp16ToFp32>,
                                GemmFloat<uint16_t, Bf16ToFp32>, GemmFloat<float, LoadF32>,
                                DotF16, AxpyF16};
  return set;
}

const KernelSet& ActiveKernels() {
  switch (ActiveIsa()) {
    case IsaLevel::kAvx512:
      if (const KernelSet* k = Avx512Kernels()) return *k;
      [[fallthrough]];
    case IsaLevel::kAvx2:
      if (const KernelSet* k = Avx2Kernels()) return *k;
      [[fallthrough]];
    default:
      return ScalarKernels();
  }
}

}  // namespace pyengine
