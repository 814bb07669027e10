// Scalar reference kernels: plain loops, the definition the SIMD kernels are tested against.
#include "quant/formats.h"
#include "quant/kernel_set.h"
#include "quant/lane_scales.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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
void GemmFloat(const W* w, int64_t cols, const float* x, int64_t n_tok, int64_t g0, int64_t g1,
               int64_t rows, float* y, int64_t ldy) {
  // x_tile is 1 here, so x is plain row-major [n_tok, cols].
  for (int64_t g = g0; g < g1; ++g) {
    const W* wg = w + g * cols * kFloatRows;
    for (int64_t t = 0; t < n_tok; ++t) {
      float acc[kFloatRows] = {};
      for (int64_t k = 0; k < cols; ++k) {
        for (int r = 0; r < kFloatRows; ++r) acc[r] += Load(wg[k * kFloatRows + r]) * x[t * cols + k];
      }
      for (int r = 0; r < kFloatRows && g * kFloatRows + r < rows; ++r) y[t * ldy + g * kFloatRows + r] = acc[r];
    }
  }
}

float RoundValue(float v, XRound round) {
  switch (round) {
    case XRound::kF16: return Fp16ToFp32(Fp32ToFp16(v));
    case XRound::kBF16: return Bf16ToFp32(Fp32ToBf16(v));
    default: return v;
  }
}

void PackX(const float* x, int64_t n_tok, int64_t cols, int64_t t0, int64_t t1, XRound round, float* out) {
  PackXGeneric(x, n_tok, cols, t0, t1, 1, round, out);
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

// ggml's SIMD quantizer: scale amax/127 stored as fp16, values x * (127/amax) rounded half to even.
void QuantizeQ8(const float* x, int64_t cols, XQ8Block* out) {
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, ++out) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    out->d = Fp16ToFp32(Fp32ToFp16(amax / 127.f));
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      out->q[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
      sum += out->q[j];
    }
    out->sum128 = 128 * sum;
  }
}

void ToF16(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = Fp32ToFp16(x[i]);
}

void GeluMul(float* g, const float* u, int64_t n) {
  const float* table = GeluFp16Table();
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    const float gelu = x <= -10.f ? 0.f : x >= 10.f ? x : table[Fp32ToFp16(x)];
    g[i] = gelu * u[i];
  }
}

// ggml's nearest_int: round half to even through the float adder (|f| < 2^22).
inline int NearestInt(float f) {
  const float v = f + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// ggml's quantize_row_q8_K_ref: the value of largest magnitude maps to -127 (so d may be
// negative), the rest rounded half to even and capped at 127.
void QuantizeQ8K(const float* x, int64_t cols, XQ8K* out) {
  for (int64_t b = 0; b < cols / 256; ++b, x += 256, ++out) {
    float max = 0, amax = 0;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (amax == 0.f) {
      std::memset(out, 0, sizeof(*out));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; ++j) out->q[j] = static_cast<int8_t>(std::min(127, NearestInt(iscale * x[j])));
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += out->q[16 * j + i];
      out->bsums[j] = static_cast<int16_t>(sum);
    }
    out->d = 1.f / iscale;
  }
}

void DecodeScales(const BlockLayout& l, const uint16_t* h, LaneScales* s) {
  switch (l.type) {
    case GgmlType::kQ2_K: DecodeLaneScales<GgmlType::kQ2_K>(h, false, s); return;
    case GgmlType::kQ3_K: DecodeLaneScales<GgmlType::kQ3_K>(h, false, s); return;
    case GgmlType::kQ4_K: DecodeLaneScales<GgmlType::kQ4_K>(h, false, s); return;
    case GgmlType::kQ5_K: DecodeLaneScales<GgmlType::kQ5_K>(h, false, s); return;
    case GgmlType::kQ6_K: DecodeLaneScales<GgmlType::kQ6_K>(h, false, s); return;
    case GgmlType::kIQ4_XS: DecodeLaneScales<GgmlType::kIQ4_XS>(h, false, s); return;
    default: return;
  }
}

// The value a weight multiplies in integer arithmetic: u, or the table's value + 128.
inline int32_t KernelValue(const BlockLayout& l, const LaneUnit& lu, const uint8_t* unit, int r, int k) {
  const int u = LaneValue(l, lu, unit, r, k);
  return l.lut ? kIq4nlValues[u] + 128 : u;
}

// The reference for every lane type: exact integer sums per sub-block, then the float scales.
//   256-value types: y += x.d * (d * sum_s sc[s] * (u . q)_s - dmin * sum_s mn[s] * bsums[s])
//   32-value types:  y += (d * x.d) * (u . q - offset * sum(q)) [+ m * x.d * sum(q)]
void GemmLanes(const BlockLayout& l, const uint8_t* w, int64_t cols, const void* x, int64_t n_tok,
               int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy) {
  const LaneUnit lu = GetLaneUnit(l);
  const int64_t units = cols / l.values;
  const bool with_min = l.values == 32 && l.header_bytes == 4;  // Q4_1, Q5_1: {d, m}
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = w + g * units * lu.bytes;
    for (int64_t t = 0; t < n_tok; ++t) {
      float acc[kLaneRows] = {};
      for (int64_t u = 0; u < units; ++u) {
        const uint8_t* unit = wg + u * lu.bytes;
        const uint16_t* h = LaneHeader(lu, unit);
        if (l.values == 256) {
          const XQ8K& xb = static_cast<const XQ8K*>(x)[t * units + u];
          LaneScales s;
          DecodeScales(l, h, &s);
          for (int r = 0; r < kLaneRows; ++r) {
            int32_t isum = 0, msum = 0;
            for (int sb = 0; sb < 16; ++sb) {
              int32_t dot = 0;
              for (int k = 16 * sb; k < 16 * sb + 16; ++k) dot += KernelValue(l, lu, unit, r, k) * xb.q[k];
              isum += s.sc[sb][r] * dot;
              msum += static_cast<int16_t>(s.mn[sb / 2][r] >> (16 * (sb % 2))) * xb.bsums[sb];
            }
            acc[r] += xb.d * (Fp16ToFp32(s.d[r]) * static_cast<float>(isum) -
                              Fp16ToFp32(s.dmin[r]) * static_cast<float>(msum));
          }
        } else {
          const XQ8Block& xb = static_cast<const XQ8Block*>(x)[t * units + u];
          const int32_t xsum = xb.sum128 / 128;
          for (int r = 0; r < kLaneRows; ++r) {
            int32_t dot = -l.offset * xsum;
            for (int k = 0; k < 32; ++k) dot += KernelValue(l, lu, unit, r, k) * xb.q[k];
            acc[r] += static_cast<float>(dot) * (Fp16ToFp32(h[r]) * xb.d);
            if (with_min) acc[r] += Fp16ToFp32(h[kLaneRows + r]) * (xb.d * static_cast<float>(xsum));
          }
        }
      }
      for (int r = 0; r < kLaneRows && g * kLaneRows + r < rows; ++r) y[t * ldy + g * kLaneRows + r] = acc[r];
    }
  }
}

}  // namespace

const float* GeluFp16Table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(1 << 16);
    for (uint32_t h = 0; h < t.size(); ++h) {
      const float x = Fp16ToFp32(static_cast<uint16_t>(h));
      constexpr float kSqrt2OverPi = 0.7978845608028654f;
      const float gelu = 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * x * (1.f + 0.044715f * x * x)));
      t[h] = Fp16ToFp32(Fp32ToFp16(gelu));
    }
    return t;
  }();
  return table.data();
}

void PackXGeneric(const float* x, int64_t n_tok, int64_t cols, int64_t t0, int64_t t1, int tile,
                  XRound round, float* out) {
  for (int64_t a = t0; a < t1; a += tile) {
    const int64_t tw = std::min<int64_t>(tile, n_tok - a);
    float* o = out + a * cols;  // [cols, tw]
    for (int64_t j = 0; j < tw; ++j) {
      const float* xr = x + (a + j) * cols;
      for (int64_t k = 0; k < cols; ++k) o[k * tw + j] = RoundValue(xr[k], round);
    }
  }
}

const KernelSet& ScalarKernels() {
  static const KernelSet set = {IsaLevel::kScalar, GemmQ8, GemmFloat<uint16_t, Fp16ToFp32>,
                                GemmFloat<uint16_t, Bf16ToFp32>, GemmFloat<float, LoadF32>,
                                /*gemm_f16_i16=*/nullptr, /*quantize_i16=*/nullptr,
                                /*x_tile=*/1, PackX, QuantizeQ8, ToF16, GeluMul,
                                DotF16, AxpyF16, GemmLanes, QuantizeQ8K};
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
