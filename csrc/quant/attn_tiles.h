// Attention tiles (KernelSet::attn_scores / attn_values): the inner loops of Attend (ops.cc),
// written once as plain loops that each kernel file compiles with its own instruction set, where
// the compiler vectorizes them over the 16 keys of a block (scores) or the head dimension
// (values). Internal linkage on purpose, as in isa_local.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/kv_type.h"
#include "quant/kernel_set.h"

namespace pyengine {
namespace {  // NOLINT(build/namespaces): one private copy per kernel file is the point

// a * b + c, fused wherever the kernel file's instruction set has FMA and never otherwise. Left
// to the compiler, contraction is decided loop by loop, so the 4-row and 2-row paths below could
// round a score differently; with fp16 keys every product is exact and hid that, with Q8_0
// keys it changed a position's result with the shape of the step that computed it.
inline float MulAdd(float a, float b, float c) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

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
        a0[j] = MulAdd(q0[i], k[j], a0[j]);
        a1[j] = MulAdd(q1[i], k[j], a1[j]);
        a2[j] = MulAdd(q2[i], k[j], a2[j]);
        a3[j] = MulAdd(q3[i], k[j], a3[j]);
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
        a0[j] = MulAdd(q0[i], k[j], a0[j]);
        a1[j] = MulAdd(q1[i], k[j], a1[j]);
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
      for (int j = 0; j < kAttnKeys; ++j) a[j] = MulAdd(q[r][i], kt[i * kAttnKeys + j], a[j]);
    }
    for (int j = 0; j < kAttnKeys; ++j) s[r * lds + j] = a[j];
  }
}

// out [nk][d] = rows j < nk of KV type t (ld bytes apart) as floats (KernelSet::kv_rows). The
// quantized types are dequantized as ggml dequantizes them, d * q per 32-value block; plain
// loops over a block, which each kernel file vectorizes with its own instructions. ToF32
// converts fp16 values (the kernel file's own).
template <void (*ToF32)(const uint16_t*, float*, int64_t)>
inline void KvRowsTile(KvType t, const uint8_t* rows, int64_t ld, int nk, int64_t d, float* out) {
  for (int j = 0; j < nk; ++j) {
    const uint8_t* r = rows + j * ld;
    float* o = out + j * d;
    if (t == KvType::kF16) {
      ToF32(reinterpret_cast<const uint16_t*>(r), o, d);
      continue;
    }
    const int64_t block_bytes = t == KvType::kQ8_0 ? kKvQ8Bytes : kKvQ4Bytes;
    const int64_t nb = d / kKvBlockValues;
    uint16_t dh[kMaxKvBlocksPerRow];
    float df[kMaxKvBlocksPerRow];
    for (int64_t b = 0; b < nb; ++b) std::memcpy(&dh[b], r + b * block_bytes, 2);
    ToF32(dh, df, nb);
    // The block's bytes are copied to a local array first: read through a uint8_t pointer they
    // could alias the floats written, which would keep the loops scalar.
    for (int64_t b = 0; b < nb; ++b, o += kKvBlockValues) {
      const float db = df[b];
      if (t == KvType::kQ8_0) {
        int8_t q[32];
        std::memcpy(q, r + b * block_bytes + 2, 32);
        for (int i = 0; i < 32; ++i) o[i] = db * static_cast<float>(q[i]);
      } else {  // byte i: value i in the low nibble, value i + 16 in the high one, both + 8
        uint8_t q[16];
        std::memcpy(q, r + b * block_bytes + 2, 16);
        for (int i = 0; i < 16; ++i) o[i] = db * static_cast<float>((q[i] & 0xF) - 8);
        for (int i = 0; i < 16; ++i) o[i + 16] = db * static_cast<float>((q[i] >> 4) - 8);
      }
    }
  }
}

// kt [d][16] = the keys j < nk of k (rows of type t, ldk bytes apart) as floats, transposed;
// zero past nk. vf [16][d] is scratch. Plain loops: a kernel file with a register transpose has
// its own.
template <void (*ToF32)(const uint16_t*, float*, int64_t)>
inline void AttnKeysTile(KvType t, const uint8_t* k, int64_t ldk, int nk, int64_t d, float* vf,
                         float* kt) {
  KvRowsTile<ToF32>(t, k, ldk, nk, d, vf);
  for (int64_t i = 0; i < d; ++i) {
    for (int j = 0; j < kAttnKeys; ++j) kt[i * kAttnKeys + j] = j < nk ? vf[j * d + i] : 0.f;
  }
}

// o[r][:d] += sum_{j < nk} p[r * ldp + j] * v[j * d + :] for r < rows. A row's 64-value slice of
// o stays in registers while the keys stream past; four rows (a group of query heads), or two,
// share each load of v. Every row's sums run in the same order whichever pass takes it.
inline void AttnValuesTile(const float* p, int64_t ldp, int rows, const float* v, int nk, int64_t d,
                           float* const* o) {
  constexpr int64_t kSlice = 64;
  int r = 0;
  for (; r + 4 <= rows && d % kSlice == 0; r += 4) {
    const float* pr[4] = {p + r * ldp, p + (r + 1) * ldp, p + (r + 2) * ldp, p + (r + 3) * ldp};
    for (int64_t c = 0; c < d; c += kSlice) {
      float a[4][kSlice];
      for (int q = 0; q < 4; ++q) {
        for (int64_t i = 0; i < kSlice; ++i) a[q][i] = o[r + q][c + i];
      }
      for (int j = 0; j < nk; ++j) {
        const float* vj = v + j * d + c;
        for (int q = 0; q < 4; ++q) {
          const float pj = pr[q][j];
          for (int64_t i = 0; i < kSlice; ++i) a[q][i] = MulAdd(pj, vj[i], a[q][i]);
        }
      }
      for (int q = 0; q < 4; ++q) {
        for (int64_t i = 0; i < kSlice; ++i) o[r + q][c + i] = a[q][i];
      }
    }
  }
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
          a0[i] = MulAdd(p0[j], vj[i], a0[i]);
          a1[i] = MulAdd(p1[j], vj[i], a1[i]);
        }
      }
      for (int64_t i = 0; i < kSlice; ++i) {
        o[r][c + i] = a0[i];
        o[r + 1][c + i] = a1[i];
      }
    }
    for (int j = 0; j < nk; ++j) {
      for (int64_t i = c; i < d; ++i) {
        o[r][i] = MulAdd(p0[j], v[j * d + i], o[r][i]);
        o[r + 1][i] = MulAdd(p1[j], v[j * d + i], o[r + 1][i]);
      }
    }
  }
  for (; r < rows; ++r) {
    for (int j = 0; j < nk; ++j) {
      const float pj = p[r * ldp + j];
      for (int64_t i = 0; i < d; ++i) o[r][i] = MulAdd(pj, v[j * d + i], o[r][i]);
    }
  }
}

}  // namespace
}  // namespace pyengine
