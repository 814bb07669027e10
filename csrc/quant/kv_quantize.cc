#include "quant/kv_quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/formats.h"

namespace pyengine {
namespace {

void PutScale(float d, uint8_t* block) {
  const uint16_t h = Fp32ToFp16(d);
  std::memcpy(block, &h, 2);
}

// ggml's x86 quantize_row_q8_0: d = amax / 127 stored fp16, q = x * (127 / amax) rounded to
// nearest even (the unrounded scale, as there).
void QuantizeQ8Row(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kKvBlockValues; ++b, x += kKvBlockValues, out += kKvQ8Bytes) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    PutScale(amax / 127.f, out);
    for (int j = 0; j < 32; ++j) {
      out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(x[j] * id)));
    }
  }
}

// ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, q = x / d + 8
// truncated after adding 8.5 and capped at 15; value j in the low nibble of byte j, value
// j + 16 in its high nibble.
void QuantizeQ4Row(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kKvBlockValues; ++b, x += kKvBlockValues, out += kKvQ4Bytes) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    PutScale(d, out);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[16 + j] * id + 8.5f)));
      out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

}  // namespace

void StoreKvRow(const KernelSet& k, KvType t, const float* x, int64_t n, uint8_t* out) {
  switch (t) {
    case KvType::kF16: k.to_f16(x, reinterpret_cast<uint16_t*>(out), n); return;
    case KvType::kQ8_0: QuantizeQ8Row(x, n, out); return;
    case KvType::kQ4_0: QuantizeQ4Row(x, n, out); return;
  }
}

}  // namespace pyengine
