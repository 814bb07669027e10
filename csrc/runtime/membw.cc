#include "runtime/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "runtime/thread_pool.h"

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

}  // namespace

double MemoryReadBandwidth(int64_t n_bytes, int n_threads, int reps) {
  n_bytes = std::max<int64_t>(n_bytes, 1 << 20) / 4096 * 4096;
  ThreadPool pool(n_threads);
  const int64_t words = n_bytes / 8;
  std::unique_ptr<uint64_t, decltype(&std::free)> buf(
      static_cast<uint64_t*>(std::aligned_alloc(4096, static_cast<size_t>(n_bytes))), &std::free);
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
      if (b > a) sink = sink ^ SumWords(buf.get() + a, b - a);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n_bytes) / s / 1e9);
  }
  return best;
}

}  // namespace pyengine
