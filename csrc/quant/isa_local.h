// Scalar conversions for the ISA-specific kernel files only (include it after <immintrin.h>).
// They have internal linkage on purpose: a shared inline helper compiled in a file with wider
// instructions could be the copy the linker keeps for every caller, and then run on a CPU
// without them. For the same reason those files use no STL templates.
#pragma once

#include <cstdint>
#include <cstring>

namespace pyengine {
namespace {  // NOLINT(build/namespaces): one private copy per kernel file is the point

inline float H2F(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t F2H(float f) { return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }
inline float B2F(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace
}  // namespace pyengine
