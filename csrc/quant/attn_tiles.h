// Attention tiles (KernelSet::attn_scores / attn_values): the inner loops of Attend (ops.cc),
// written once as plain loops that each kernel file compiles with its own instruction set, where
// the compiler vectorizes them over the 16 keys of a block (scores) or the head dimension
// (values). Internal linkage on purpose, as in isa_local.h.
#pragma once

#include <cstdint>

#include "quant/kernel_set.h"

namespace pyengine {
namespace {  // NOLINT(build/namespaces): one private copy per kernel file is the point

// s[r * lds + j] = q[r] . kt[:, j] for r < rows, j < 16; kt is [d][16] (a key block,
// transposed). Four rows share each load of kt.
inline void AttnScoresTile(const float* const* q, int rows, const float* kt, int64_t d, float* s,
                           int64_t lds) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    float a0[kAttnKeys] = {}, a1[kAttnKeys] = {}, a2[kAttnKeys] = {}, a3[kAttnKeys] = {};
    const float *q0 = q[r], *q1 = q[r + 1], *q2 = q[r + 2], *q3 = q[r + 3];
    for (int64_t i = 0; i < d; ++i) {
      const float* k = kt + i * kAttnKeys;
      for (int j = 0; j < kAttnKeys; ++j) {
        a0[j] += q0[i] * k[j];
        a1[j] += q1[i] * k[j];
        a2[j] += q2[i] * k[j];
        a3[j] += q3[i] * k[j];
      }
    }
    for (int j = 0; j < kAttnKeys; ++j) {
      s[r * lds + j] = a0[j];
      s[(r + 1) * lds + j] = a1[j];
      s[(r + 2) * lds + j] = a2[j];
      s[(r + 3) * lds + j] = a3[j];
    }
  }
  // Two rows (a decoding token's pair of query heads per KV head): two independent chains of
  // sums instead of one at a time, each row's sums in the same order as above.
  for (; r + 2 <= rows; r += 2) {
    float a0[kAttnKeys] = {}, a1[kAttnKeys] = {};
    const float *q0 = q[r], *q1 = q[r + 1];
    for (int64_t i = 0; i < d; ++i) {
      const float* k = kt + i * kAttnKeys;
      for (int j = 0; j < kAttnKeys; ++j) {
        a0[j] += q0[i] * k[j];
        a1[j] += q1[i] * k[j];
      }
    }
    for (int j = 0; j < kAttnKeys; ++j) {
      s[r * lds + j] = a0[j];
      s[(r + 1) * lds + j] = a1[j];
    }
  }
  for (; r < rows; ++r) {
    float a[kAttnKeys] = {};
    for (int64_t i = 0; i < d; ++i) {
      for (int j = 0; j < kAttnKeys; ++j) a[j] += q[r][i] * kt[i * kAttnKeys + j];
    }
    for (int j = 0; j < kAttnKeys; ++j) s[r * lds + j] = a[j];
  }
}

// kt [d][16] = the keys j < nk of k (fp16 rows ldk apart) as floats, transposed; zero past nk.
// vf [16][d] is scratch. Plain loops: a kernel file with a register transpose has its own.
template <void (*ToF32)(const uint16_t*, float*, int64_t)>
inline void AttnKeysTile(const uint16_t* k, int64_t ldk, int nk, int64_t d, float* vf, float* kt) {
  for (int j = 0; j < nk; ++j) ToF32(k + j * ldk, vf + j * d, d);
  for (int64_t i = 0; i < d; ++i) {
    for (int j = 0; j < kAttnKeys; ++j) kt[i * kAttnKeys + j] = j < nk ? vf[j * d + i] : 0.f;
  }
}

// o[r][:d] += sum_{j < nk} p[r * ldp + j] * v[j * d + :] for r < rows. A row's 64-value slice of
// o stays in registers while the keys stream past; two rows share each load of v.
inline void AttnValuesTile(const float* p, int64_t ldp, int rows, const float* v, int nk, int64_t d,
                           float* const* o) {
  constexpr int64_t kSlice = 64;
  int r = 0;
  for (; r + 2 <= rows; r += 2) {
    const float *p0 = p + r * ldp, *p1 = p0 + ldp;
    int64_t c = 0;
    for (; c + kSlice <= d; c += kSlice) {
      float a0[kSlice], a1[kSlice];
      for (int64_t i = 0; i < kSlice; ++i) {
        a0[i] = o[r][c + i];
        a1[i] = o[r + 1][c + i];
      }
      for (int j = 0; j < nk; ++j) {
        const float* vj = v + j * d + c;
        for (int64_t i = 0; i < kSlice; ++i) {
          a0[i] += p0[j] * vj[i];
          a1[i] += p1[j] * vj[i];
        }
      }
      for (int64_t i = 0; i < kSlice; ++i) {
        o[r][c + i] = a0[i];
        o[r + 1][c + i] = a1[i];
      }
    }
    for (int j = 0; j < nk; ++j) {
      for (int64_t i = c; i < d; ++i) {
        o[r][i] += p0[j] * v[j * d + i];
        o[r + 1][i] += p1[j] * v[j * d + i];
      }
    }
  }
  for (; r < rows; ++r) {
    for (int j = 0; j < nk; ++j) {
      const float pj = p[r * ldp + j];
      for (int64_t i = 0; i < d; ++i) o[r][i] += pj * v[j * d + i];
    }
  }
}

}  // namespace
}  // namespace pyengine
