// How the KV cache stores keys and values: fp16, or in llama.cpp's Q8_0 / Q4_0 blocks (32 values
// sharing one fp16 scale), which hold 64/34 = 1.9x and 64/18 = 3.6x the positions of fp16 in the
// same memory. Quantized rows are quantized per 32-value block exactly as ggml's reference
// quantizers do; a head's values start on a block boundary (head dimensions are multiples of 32).
#pragma once

#include <cstdint>
#include <string>

#include "core/errors.h"

namespace pyengine {

enum class KvType : uint8_t { kF16, kQ8_0, kQ4_0 };

constexpr int64_t kKvBlockValues = 32;  // values per scale of the quantized types
constexpr int64_t kKvQ8Bytes = 34;      // fp16 d, 32 x int8
constexpr int64_t kKvQ4Bytes = 18;      // fp16 d, 16 bytes of two 4-bit values

// Bytes of n consecutive values of a row (n a multiple of 32 for the quantized types).
constexpr int64_t KvRowBytes(KvType t, int64_t n) {
  return t == KvType::kF16    ? 2 * n
         : t == KvType::kQ8_0 ? n / kKvBlockValues * kKvQ8Bytes
                              : n / kKvBlockValues * kKvQ4Bytes;
}

inline const char* KvTypeName(KvType t) {
  return t == KvType::kF16 ? "f16" : t == KvType::kQ8_0 ? "q8_0" : "q4_0";
}

// "f16", "q8_0" or "q4_0" (llama.cpp's and Ollama's names); EngineError otherwise.
inline KvType ParseKvType(const std::string& s) {
  if (s == "f16") return KvType::kF16;
  if (s == "q8_0") return KvType::kQ8_0;
  if (s == "q4_0") return KvType::kQ4_0;
  throw EngineError("KV cache type must be f16, q8_0 or q4_0, got '" + s + "'");
}

}  // namespace pyengine
