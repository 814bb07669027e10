// KernelSet: the matrix kernels of one instruction-set level, and the packed layouts they read.
#pragma once

#include <cstdint>

#include "quant/cpu_features.h"

namespace pyengine {

// Q8_0 weights repacked at load time: 16 rows interleaved per 32-value block, so one 512-bit
// register holds 4 consecutive values of each of the 16 rows and an integer dot-product
// instruction advances 16 rows at once; every lane ends up holding one row's sum.
// Quants are stored biased to unsigned (w + 128) because that instruction multiplies unsigned
// by signed bytes; the bias is removed with the activations' precomputed 128 * sum(x).
constexpr int kQ8Rows = 16;
struct Q8x16Block {
  uint16_t d[kQ8Rows];      // fp16 scale of each row's block
  uint8_t q[kQ8Rows * 32];  // q[c * 64 + r * 4 + j] = w[r][4c + j] + 128, chunk c in [0, 8)
};
static_assert(sizeof(Q8x16Block) == 16 * 34, "same size as 16 Q8_0 blocks");

// One 32-value block of activations quantized to Q8_0 (bit-identical to ggml's), plus the
// bias correction the unsigned weights need.
struct XQ8Block {
  int8_t q[32];
  float d;         // scale
  int32_t sum128;  // 128 * sum(q)
};
static_assert(sizeof(XQ8Block) == 40, "packed activation block");

// Every kernel computes y[t * ldy + r] = W[r, :] . x[t, :] for tokens [0, n_tok) and the rows
// it is given; they differ only in speed (and in float summation order).
struct KernelSet {
  IsaLevel level;
  // Row groups [g0, g1) of 16 rows each; `rows` bounds the stores of a padded last group.
  void (*gemm_q8)(const Q8x16Block* w, int64_t nb, const XQ8Block* x, int64_t n_tok, int64_t g0,
                  int64_t g1, int64_t rows, float* y, int64_t ldy);
  // Row-major 16/32-bit float weights, rows [r0, r1) of `cols` values each; x holds floats
  // already rounded to the weight type.
  void (*gemm_f16)(const uint16_t* w, int64_t cols, const float* x, int64_t n_tok, int64_t r0,
                   int64_t r1, float* y, int64_t ldy);
  void (*gemm_bf16)(const uint16_t* w, int64_t cols, const float* x, int64_t n_tok, int64_t r0,
                    int64_t r1, float* y, int64_t ldy);
  void (*gemm_f32)(const float* w, int64_t cols, const float* x, int64_t n_tok, int64_t r0,
                   int64_t r1, float* y, int64_t ldy);
  // Attention over the fp16 KV cache: x . h, and y += a * h.
  float (*dot_f16)(const float* x, const uint16_t* h, int64_t n);
  void (*axpy_f16)(float a, const uint16_t* h, float* y, int64_t n);
};

const KernelSet& ScalarKernels();
const KernelSet* Avx2Kernels();    // nullptr when not compiled for this target
const KernelSet* Avx512Kernels();  // nullptr when not compiled for this target

// The set for ActiveIsa().
const KernelSet& ActiveKernels();

}  // namespace pyengine
