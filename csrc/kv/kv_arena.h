// KvArena: one pool of fixed-size blocks holding keys and values (fp16) for every layer, shared
// by all sequences of a model. Knows no request: blocks are handed out, reference-counted and
// returned to the free list; block tables map a sequence's positions onto them.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace pyengine {

class KvArena {
 public:
  // n_blocks blocks of block_tokens positions (a power of two) for n_layer layers of kv_dim.
  KvArena(int64_t n_layer, int64_t kv_dim, int64_t block_tokens, int64_t n_blocks);

  // Bytes one block takes: keys and values of every layer.
  static int64_t BlockBytes(int64_t n_layer, int64_t kv_dim, int64_t block_tokens) {
    return 2 * n_layer * block_tokens * kv_dim * static_cast<int64_t>(sizeof(uint16_t));
  }

  int64_t n_blocks() const { return static_cast<int64_t>(refs_.size()); }
  int64_t n_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t block_tokens() const { return block_tokens_; }
  int block_shift() const { return block_shift_; }

  // A free block with reference count 1, or -1 when none is left.
  int32_t Allocate();
  void Ref(int32_t block);
  // Drops one reference; at zero the block is free again.
  void Unref(int32_t block);
  int32_t refs(int32_t block) const { return refs_[static_cast<size_t>(block)]; }

  // [kv_dim] fp16 keys / values of `layer` at `slot` (0 .. block_tokens-1) of `block`.
  uint16_t* k(int32_t block, int64_t layer, int64_t slot) { return At(block, 0, layer, slot); }
  uint16_t* v(int32_t block, int64_t layer, int64_t slot) { return At(block, 1, layer, slot); }

 private:
  uint16_t* At(int32_t block, int kv, int64_t layer, int64_t slot) {
    return data_.get() + (((static_cast<int64_t>(block) * 2 + kv) * n_layer_ + layer) * block_tokens_ + slot) * kv_dim_;
  }

  int64_t n_layer_, kv_dim_, block_tokens_;
  int block_shift_;
  // Left uninitialised on purpose: pages are touched only as blocks fill.
  std::unique_ptr<uint16_t[]> data_;  // [n_blocks, 2 (k, v), n_layer, block_tokens, kv_dim]
  std::vector<int32_t> refs_;         // [n_blocks]
  std::vector<int32_t> free_;         // free block ids (a stack: recently freed blocks are warm)
};

}  // namespace pyengine
