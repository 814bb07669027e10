// The lane-layout kernels of the SIMD levels (the scalar reference lives in kernels_scalar.cc),
// each compiled in its own file with its level's instructions; the KernelSet of that level
// points at them.
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/kernel_set.h"
#include "quant/lanes.h"

namespace pyengine {

// Every lane type, for switches that instantiate a kernel per type.
#define PYENGINE_LANE_TYPES(X) \
  X(kQ4_0) X(kQ4_1) X(kQ5_0) X(kQ5_1) X(kIQ4_NL) X(kQ2_K) X(kQ3_K) X(kQ4_K) X(kQ5_K) X(kQ6_K) X(kIQ4_XS)

// IQ4 table values + 128: the unsigned bytes an unsigned-by-signed dot product reads.
struct Iq4nlBiased {
  uint8_t v[16];
};
constexpr Iq4nlBiased MakeIq4nlBiased() {
  Iq4nlBiased t{};
  for (int i = 0; i < 16; ++i) t.v[i] = static_cast<uint8_t>(kIq4nlValues[i] + 128);
  return t;
}
inline constexpr Iq4nlBiased kIq4nlBiased = MakeIq4nlBiased();

// KernelSet::gemm_lanes of each level (defined only where that level is compiled).
void GemmLanesAvx512(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Block* x,
                     int64_t n_tok, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                     float* scratch);
// KernelSet::gemm_lanes_amx and ::gemm_q8_amx of the avx512 level (kernels_amx.cc; without
// AMX in the build, stubs that are never called: AmxUsable() is false there).
void GemmLanesAmx(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Tile16* x,
                  int64_t tiles, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                  float* scratch);
void GemmQ8Amx(const Q8x16Block* w, int64_t nb, const XQ8Tile16* x, int64_t tiles, int64_t g0,
               int64_t g1, int64_t rows, float* y, int64_t ldy);
void GemmLanesAvx2(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Block* x,
                   int64_t n_tok, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                   float* scratch);

}  // namespace pyengine
