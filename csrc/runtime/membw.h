// A memory read-bandwidth probe: the decode speed ceiling is bandwidth / bytes read per token.
#pragma once

#include <cstdint>

namespace pyengine {

// Reads a buffer of n_bytes (much larger than the caches) with n_threads threads (0: all),
// reps times, and returns the best rate in GB/s (1e9 bytes per second).
double MemoryReadBandwidth(int64_t n_bytes, int n_threads, int reps);

}  // namespace pyengine
