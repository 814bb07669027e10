// Writing one position's keys or values into the KV cache in its KvType (core/kv_type.h).
#pragma once

#include <cstdint>

#include "core/kv_type.h"
#include "quant/kernel_set.h"

namespace pyengine {

// out = x [n] in type t: fp16 through the kernel set; Q8_0 and Q4_0 block by block as ggml's
// CPU backend quantizes a row it copies into such a cache (n a multiple of 32 for those).
void StoreKvRow(const KernelSet& k, KvType t, const float* x, int64_t n, uint8_t* out);

}  // namespace pyengine
