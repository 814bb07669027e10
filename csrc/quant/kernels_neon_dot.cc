// NEON kernels with the ARMv8.2 dot-product extension (sdot): this file alone is compiled with
// it (CMakeLists.txt) and only called when the CPU reports it (cpu_features.cc).
#include "quant/kernel_set.h"

#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define PYENGINE_NEON_LEVEL IsaLevel::kNeonDot
#define PYENGINE_NEON_SET NeonDotKernels
#include "quant/neon_kernels.inc"
#else
namespace pyengine {
const KernelSet* NeonDotKernels() { return nullptr; }
}  // namespace pyengine
#endif
