// CPU feature detection and the instruction-set level the kernels run at.
#pragma once

#include <string>

namespace pyengine {

// Kernel levels. Each architecture has its own ladder above the scalar reference, each rung a
// superset of the one below: x86-64 scalar < avx2 < avx512, AArch64 scalar < neon < dotprod.
// The dispatcher only sees a KernelSet.
enum class IsaLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3, kNeonDot = 4 };

// True when `level` is `best` or a rung below it on the same ladder.
bool IsaAtMost(IsaLevel level, IsaLevel best);

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
  bool neon = false, dotprod = false;  // AArch64: Advanced SIMD, and its sdot/udot extension
  // x86-64 AMX: tile registers and their 8-bit integer products, with the OS saving the tile
  // state (XCR0). Linux also wants each process to ask for that state before its first use.
  bool amx_int8 = false;
};

const CpuFeatures& GetCpuFeatures();

// The best level this CPU (and this build) supports.
IsaLevel BestIsa();

// The level in use: BestIsa(), capped by the PYENGINE_ISA environment variable
// ("scalar", "avx2", "avx512", "neon", "dotprod") when the process starts, or by SetIsa.
IsaLevel ActiveIsa();

// Forces a level (tests, benchmarks). Returns false, changing nothing, when the CPU lacks it.
bool SetIsa(IsaLevel level);

// AMX tile products for prompts at the avx512 level: whether this CPU, OS and build can run
// them (the process's permission asked for once), and whether they are in use: from the start
// unless PYENGINE_AMX=0, or as SetAmx last set. SetAmx(true) returns false where they cannot run.
bool AmxUsable();
bool AmxActive();
bool SetAmx(bool on);

const char* IsaName(IsaLevel level);
bool ParseIsa(const std::string& name, IsaLevel* out);

}  // namespace pyengine
