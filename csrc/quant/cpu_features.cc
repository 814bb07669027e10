#include "quant/cpu_features.h"

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define PYENGINE_X86 1
#endif
#if defined(PYENGINE_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace pyengine {
namespace {

CpuFeatures Detect() {
  CpuFeatures f;
#ifdef PYENGINE_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (!osxsave) return CpuFeatures{};
  // The OS must save the wide registers on context switch (XCR0), or using them corrupts state.
  unsigned xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_os = (xlo & 0x6) == 0x6;
  const bool zmm_os = (xlo & 0xe6) == 0xe6;
  if (!ymm_os) return CpuFeatures{};
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = b & (1u << 5);
  if (zmm_os) {
    f.avx512f = b & (1u << 16);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
  }
  const bool tiles_os = (xlo & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA
  f.amx_int8 = tiles_os && (d & (1u << 24)) && (d & (1u << 25));
#endif
#if defined(__aarch64__)
  f.neon = true;  // part of the base architecture
#if defined(__linux__)
  f.dotprod = getauxval(AT_HWCAP) & (1ul << 20);  // HWCAP_ASIMDDP
#elif defined(__APPLE__)
  int v = 0;
  size_t n = sizeof(v);
  f.dotprod = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, nullptr, 0) == 0 && v;
#endif
#endif
  return f;
}

// A level's rung on its architecture's ladder, and the ladder (0: the scalar reference, on all).
int Rung(IsaLevel l) {
  switch (l) {
    case IsaLevel::kAvx2: case IsaLevel::kNeon: return 1;
    case IsaLevel::kAvx512: case IsaLevel::kNeonDot: return 2;
    default: return 0;
  }
}
int Ladder(IsaLevel l) {
  return l == IsaLevel::kScalar ? 0 : l == IsaLevel::kNeon || l == IsaLevel::kNeonDot ? 2 : 1;
}

IsaLevel FromEnv(IsaLevel best) {
  const char* env = std::getenv("PYENGINE_ISA");
  IsaLevel want;
  if (env && ParseIsa(env, &want) && IsaAtMost(want, best)) return want;
  return best;
}

std::atomic<int>& Active() {
  static std::atomic<int> level{static_cast<int>(FromEnv(BestIsa()))};
  return level;
}

// Linux keeps the tile state (8 KB per thread) off until a process asks for it; a tile
// instruction before that is an illegal instruction.
bool AskForTiles() {
#if defined(PYENGINE_X86) && defined(__linux__) && defined(PYENGINE_HAVE_AMX)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;  // a build without the AMX kernels, or an OS this code cannot ask
#endif
}

std::atomic<bool>& AmxOn() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("PYENGINE_AMX");
    return AmxUsable() && !(env && std::string(env) == "0");
  }()};
  return on;
}

}  // namespace

bool AmxUsable() {
  static const bool usable = GetCpuFeatures().amx_int8 && AskForTiles();
  return usable;
}

bool AmxActive() { return AmxOn().load(std::memory_order_relaxed); }

bool SetAmx(bool on) {
  if (on && !AmxUsable()) return false;
  AmxOn().store(on);
  return true;
}

bool IsaAtMost(IsaLevel level, IsaLevel best) {
  if (level == IsaLevel::kScalar) return true;
  return Ladder(level) == Ladder(best) && Rung(level) <= Rung(best);
}

const CpuFeatures& GetCpuFeatures() {
  static const CpuFeatures features = Detect();
  return features;
}

IsaLevel BestIsa() {
  const CpuFeatures& f = GetCpuFeatures();
#ifdef PYENGINE_X86
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.fma && f.f16c) return IsaLevel::kAvx512;
  if (f.avx2 && f.fma && f.f16c) return IsaLevel::kAvx2;
#endif
#if defined(__aarch64__)
  if (f.dotprod) return IsaLevel::kNeonDot;
  if (f.neon) return IsaLevel::kNeon;
#endif
  (void)f;
  return IsaLevel::kScalar;
}

IsaLevel ActiveIsa() { return static_cast<IsaLevel>(Active().load(std::memory_order_relaxed)); }

bool SetIsa(IsaLevel level) {
  if (!IsaAtMost(level, BestIsa())) return false;
  Active().store(static_cast<int>(level));
  return true;
}

const char* IsaName(IsaLevel level) {
  switch (level) {
    case IsaLevel::kScalar: return "scalar";
    case IsaLevel::kAvx2: return "avx2";
    case IsaLevel::kAvx512: return "avx512";
    case IsaLevel::kNeon: return "neon";
    case IsaLevel::kNeonDot: return "dotprod";
  }
  return "unknown";
}

bool ParseIsa(const std::string& name, IsaLevel* out) {
  for (IsaLevel l : {IsaLevel::kScalar, IsaLevel::kAvx2, IsaLevel::kAvx512, IsaLevel::kNeon,
                     IsaLevel::kNeonDot}) {
    if (name == IsaName(l)) {
      *out = l;
      return true;
    }
  }
  return false;
}

}  // namespace pyengine
