// NEON kernels for every AArch64 CPU (ARMv8.0: Advanced SIMD is part of the base architecture).
// The kernels themselves are in neon_kernels.inc, shared with kernels_neon_dot.cc.
#include "quant/kernel_set.h"

#if defined(__aarch64__)
#define PYENGINE_NEON_LEVEL IsaLevel::kNeon
#define PYENGINE_NEON_SET NeonKernels
#include "quant/neon_kernels.inc"
#else
namespace pyengine {
const KernelSet* NeonKernels() { return nullptr; }
}  // namespace pyengine
#endif
