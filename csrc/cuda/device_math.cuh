// Small device helpers the kernel files share.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace pyengine {
namespace cuda {

constexpr int kWarp = 32;

// The sum of v over the 32 lanes of a warp (every lane gets it).
__device__ __forceinline__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Blocks of per_block threads (or warps) that cover count items.
inline unsigned Blocks(int64_t count, int per_block) {
  return static_cast<unsigned>((count + per_block - 1) / per_block);
}

}  // namespace cuda
}  // namespace pyengine
