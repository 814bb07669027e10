// CPU feature detection and the instruction-set level the kernels run at.
#pragma once

#include <string>

namespace pyengine {

// Kernel levels, each a superset of the one before. An ARM NEON level would slot in beside
// kAvx2 with its own kernel file; the dispatcher only sees a KernelSet.
enum class IsaLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
};

const CpuFeatures& GetCpuFeatures();

// The best level this CPU (and this build) supports.
IsaLevel BestIsa();

// The level in use: BestIsa(), capped by the PYENGINE_ISA environment variable
// ("scalar", "avx2", "avx512") when the process starts, or by SetIsa.
IsaLevel ActiveIsa();

// Forces a level (tests, benchmarks). Returns false, changing nothing, when the CPU lacks it.
bool SetIsa(IsaLevel level);

const char* IsaName(IsaLevel level);
bool ParseIsa(const std::string& name, IsaLevel* out);

}  // namespace pyengine
