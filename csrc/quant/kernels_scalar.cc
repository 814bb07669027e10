// Scalar reference kernels: plain loops, the definition the SIMD kernels are tested against.
#include "quant/attn_tiles.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"
#include "quant/lane_kernels.h"
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

void F16ToF32(const uint16_t* h, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = Fp16ToFp32(h[i]);
}

void RoundF16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = Fp16ToFp32(Fp32ToFp16(x[i]));
}

// ggml's SIMD quantizer: scale amax/127 stored as fp16, values x * (127/amax) rounded half to even.
void QuantizeQ8(const float* x, int64_t cols, XQ8Block* out) {
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, ++out) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    out->d = Fp16ToFp32(Fp32ToFp16(amax / 127.f));
    int32_t sum[2] = {0, 0};
    for (int j = 0; j < 32; ++j) {
      out->q[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
      sum[j / 16] += out->q[j];
    }
    out->SetSums(sum[0], sum[1]);
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

void DecodeScales(const BlockLayout& l, const uint16_t* h, LaneScales* s) {
  auto to_float = [](const uint16_t* p, float* out) {
    for (int r = 0; r < kLaneRows; ++r) out[r] = Fp16ToFp32(p[r]);
  };
  switch (l.type) {
#define PYENGINE_LANE_TYPE(T) \
  case GgmlType::T: DecodeLaneScales<GgmlType::T>(h, to_float, s->dsc, s->dmn); return;
    PYENGINE_LANE_TYPES(PYENGINE_LANE_TYPE)
#undef PYENGINE_LANE_TYPE
    default: return;
  }
}

// The value a weight multiplies in integer arithmetic: u, or the table's value + 128.
inline int32_t KernelValue(const BlockLayout& l, const LaneUnit& lu, const uint8_t* unit, int r, int k) {
  const int u = LaneValue(l, lu, unit, r, k);
  return l.lut ? kIq4nlValues[u] + 128 : u;
}

// The reference for every lane type: per group of values that share a scale, an exact integer
// dot product with the activations' Q8_0 block, then the float scales:
//   y += dsc * d_x * (v . q) - dmn * d_x * sum(q),   dmn = min, or offset * dsc.
void GemmLanes(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Block* x,
               int64_t n_tok, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
               float* /*scratch*/) {
  const LaneUnit lu = GetLaneUnit(l);
  const int64_t units = cols / l.values, nb = cols / 32;
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = w + g * units * lu.bytes;
    for (int64_t t = 0; t < n_tok; ++t) {
      float acc[kLaneRows] = {};
      for (int64_t u = 0; u < units; ++u) {
        const uint8_t* unit = wg + u * lu.bytes;
        LaneScales s;
        DecodeScales(l, LaneHeader(lu, unit), &s);
        for (int gi = 0; gi < l.values / l.group; ++gi) {
          const int k0 = gi * l.group;
          const XQ8Block& xb = x[t * nb + (u * l.values + k0) / 32];
          const int q0 = k0 % 32;  // where the group starts inside the activation block
          const float dsum = l.group == 32 ? xb.dsum : xb.dsum16[q0 / 16];
          for (int r = 0; r < kLaneRows; ++r) {
            int32_t dot = 0;
            for (int k = 0; k < l.group; ++k) dot += KernelValue(l, lu, unit, r, k0 + k) * xb.q[q0 + k];
            acc[r] += static_cast<float>(dot) * (s.dsc[gi][r] * xb.d);
            acc[r] -= s.dmn[gi][r] * dsum;
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
                                AttnScoresTile, AttnValuesTile, AttnKeysTile<F16ToF32>,
                                KvRowsTile<F16ToF32>,
                                F16ToF32, RoundF16,
                                GemmLanes, /*gemm_lanes_amx=*/nullptr,
                                /*gemm_q8_amx=*/nullptr};
  return set;
}

const KernelSet& ActiveKernels() {
  switch (ActiveIsa()) {
    case IsaLevel::kAvx512:
      if (const KernelSet* k = Avx512Kernels()) return *k;
      [[fallthrough]];
    case IsaLevel::kAvx2:
      if (const KernelSet* k = Avx2Kernels()) return *k;
      return ScalarKernels();
    case IsaLevel::kNeonDot:
      if (const KernelSet* k = NeonDotKernels()) return *k;
      [[fallthrough]];
    case IsaLevel::kNeon:
      if (const KernelSet* k = NeonKernels()) return *k;
      [[fallthrough]];
    default:
      return ScalarKernels();
  }
}

}  // namespace pyengine
