// KvCache: the keys and values of one sequence for every layer, positions [0, n_ctx).
// A simple contiguous cache; the shared paged arena replaces it for batched serving.
// Stored as fp16, as llama.cpp (and Ollama) store theirs by default: half the memory and
// bandwidth of float32, and the same rounding as the reference implementation.
#pragma once

#include <cstdint>
#include <memory>

namespace pyengine {

class KvCache {
 public:
  KvCache(int64_t n_layer, int64_t n_ctx, int64_t kv_dim)
      : n_layer_(n_layer), n_ctx_(n_ctx), kv_dim_(kv_dim),
        // Left uninitialised on purpose: pages are touched only as positions fill.
        k_(new uint16_t[static_cast<size_t>(n_layer * n_ctx * kv_dim)]),
        v_(new uint16_t[static_cast<size_t>(n_layer * n_ctx * kv_dim)]) {}

  int64_t n_ctx() const { return n_ctx_; }
  int64_t kv_dim() const { return kv_dim_; }

  // [kv_dim] fp16 keys / values of `layer` at `pos`.
  uint16_t* k(int64_t layer, int64_t pos) { return k_.get() + (layer * n_ctx_ + pos) * kv_dim_; }
  uint16_t* v(int64_t layer, int64_t pos) { return v_.get() + (layer * n_ctx_ + pos) * kv_dim_; }

 private:
  int64_t n_layer_, n_ctx_, kv_dim_;
  std::unique_ptr<uint16_t[]> k_;  // [n_layer, n_ctx, kv_dim] fp16
  std::unique_ptr<uint16_t[]> v_;  // [n_layer, n_ctx, kv_dim] fp16
};

}  // namespace pyengine
