#include "kv/kv_arena.h"

#include <stdexcept>
#include <string>

namespace pyengine {

KvArena::KvArena(int64_t n_layer, int64_t kv_dim, int64_t block_tokens, int64_t n_blocks)
    : n_layer_(n_layer), kv_dim_(kv_dim), block_tokens_(block_tokens), block_shift_(0) {
  if (block_tokens <= 0 || (block_tokens & (block_tokens - 1)) != 0) {
    throw std::invalid_argument("KV block size must be a power of two");
  }
  if (n_blocks <= 0 || n_blocks > (int64_t{1} << 30)) {
    throw std::invalid_argument("KV arena of " + std::to_string(n_blocks) + " blocks");
  }
  while ((int64_t{1} << block_shift_) < block_tokens) ++block_shift_;
  data_.reset(new uint16_t[static_cast<size_t>(n_blocks * BlockBytes(n_layer, kv_dim, block_tokens) / 2)]);
  refs_.assign(static_cast<size_t>(n_blocks), 0);
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int32_t KvArena::Allocate() {
  if (free_.empty()) return -1;
  const int32_t b = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(b)] = 1;
  return b;
}

void KvArena::Ref(int32_t block) {
  if (refs_.at(static_cast<size_t>(block)) <= 0) throw std::logic_error("Ref of a free KV block");
  ++refs_[static_cast<size_t>(block)];
}

void KvArena::Unref(int32_t block) {
  int32_t& r = refs_.at(static_cast<size_t>(block));
  if (r <= 0) throw std::logic_error("Unref of a free KV block");
  if (--r == 0) free_.push_back(block);
}

}  // namespace pyengine
