#include "runtime/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "quant/cpu_features.h"
#include "core/os_memory.h"
#include "core/thread_pool.h"

namespace pyengine {
namespace {

// Sums 64-bit words with eight independent chains: enough loads in flight to saturate memory
// without SIMD (kept portable: the bound is the memory system, not the core).
uint64_t SumWords(const uint64_t* p, int64_t n) {
  uint64_t a[8] = {};
  for (int64_t i = 0; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) a[k] += p[i + k];
  }
  return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PYENGINE_HAVE_AVX2_PROBE 1
// Wide loads reach a higher rate than 64-bit ones on CPUs that have them; compiled for AVX2
// here alone and called only when the CPU reports it.
__attribute__((target("avx2"))) uint64_t SumWordsAvx2(const uint64_t* p, int64_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  const __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
  return static_cast<uint64_t>(_mm256_extract_epi64(a, 0) ^ _mm256_extract_epi64(a, 3));
}
#endif

uint64_t Sum(const uint64_t* p, int64_t n) {
#ifdef PYENGINE_HAVE_AVX2_PROBE
  if (GetCpuFeatures().avx2) return SumWordsAvx2(p, n);
#endif
  return SumWords(p, n);
}

}  // namespace

double MemoryReadBandwidth(int64_t n_bytes, int n_threads, int reps) {
  n_bytes = std::max<int64_t>(n_bytes, 1 << 20) / 4096 * 4096;
  ThreadPool pool(n_threads);
  const int64_t words = n_bytes / 8;
  std::unique_ptr<uint64_t, decltype(&AlignedFree)> buf(
      static_cast<uint64_t*>(AlignedAlloc(4096, static_cast<size_t>(n_bytes))), &AlignedFree);
  if (!buf) throw std::bad_alloc();
  // Touch every page first (from all threads, so pages spread as the reads will).
  const int64_t per = (words + pool.size() - 1) / pool.size();
  pool.ParallelFor(pool.size(), [&](int64_t t, int) {
    const int64_t a = t * per, b = std::min(words, a + per);
    if (b > a) std::memset(buf.get() + a, 1, static_cast<size_t>(b - a) * 8);
  });
  double best = 0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.ParallelFor(pool.size(), [&](int64_t t, int) {
      const int64_t a = t * per, b = std::min(words, a + per);
      if (b > a) sink = sink ^ Sum(buf.get() + a, b - a);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n_bytes) / s / 1e9);
  }
  return best;
}

}  // namespace pyengine
