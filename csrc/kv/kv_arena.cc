#include "kv/kv_arena.h"

#include <stdexcept>
#include <string>

namespace pyengine {

KvArena::KvArena(KvType type, int64_t kv_dim, int64_t block_tokens, int64_t n_pages,
                 int max_block_pages, int min_block_pages)
    : type_(type), kv_dim_(kv_dim), row_bytes_(KvRowBytes(type, kv_dim)), block_tokens_(block_tokens),
      n_pages_(n_pages), max_block_pages_(max_block_pages) {
  if (type != KvType::kF16 && kv_dim % kKvBlockValues != 0) {
    throw std::invalid_argument("a quantized KV row needs a multiple of 32 values");
  }
  if (block_tokens <= 0 || (block_tokens & (block_tokens - 1)) != 0) {
    throw std::invalid_argument("KV block size must be a power of two");
  }
  if (n_pages <= 0 || n_pages > (int64_t{1} << 30)) {
    throw std::invalid_argument("KV arena of " + std::to_string(n_pages) + " pages");
  }
  if (min_block_pages <= 0 || max_block_pages < min_block_pages) {
    throw std::invalid_argument("KV blocks of " + std::to_string(min_block_pages) + ".." +
                                std::to_string(max_block_pages) + " pages");
  }
  while ((int64_t{1} << block_shift_) < block_tokens) ++block_shift_;
  data_.reset(new uint8_t[static_cast<size_t>(n_pages * PageBytes(type, kv_dim, block_tokens))]);
  free_pages_.reserve(static_cast<size_t>(n_pages));
  for (int64_t p = n_pages - 1; p >= 0; --p) free_pages_.push_back(static_cast<int32_t>(p));
  const int64_t max_blocks = n_pages / min_block_pages;
  blocks_.resize(static_cast<size_t>(max_blocks));
  page_ids_.assign(static_cast<size_t>(max_blocks * max_block_pages), -1);
  free_ids_.reserve(static_cast<size_t>(max_blocks));
  for (int64_t b = max_blocks - 1; b >= 0; --b) free_ids_.push_back(static_cast<int32_t>(b));
}

int32_t KvArena::Allocate(int n) {
  if (n <= 0 || n > max_block_pages_) throw std::logic_error("KV block of a bad page count");
  if (static_cast<int64_t>(free_pages_.size()) < n || free_ids_.empty()) return -1;
  const int32_t b = free_ids_.back();
  free_ids_.pop_back();
  for (int i = 0; i < n; ++i) {
    page_ids_[static_cast<size_t>(b) * max_block_pages_ + i] = free_pages_.back();
    free_pages_.pop_back();
  }
  blocks_[static_cast<size_t>(b)] = Block{1, n};
  return b;
}

void KvArena::Ref(int32_t block) {
  Block& blk = blocks_.at(static_cast<size_t>(block));
  if (blk.n_pages == 0) throw std::logic_error("Ref of an unused KV block");
  ++blk.refs;
}

int32_t KvArena::Unref(int32_t block) {
  Block& blk = blocks_.at(static_cast<size_t>(block));
  if (blk.n_pages == 0 || blk.refs <= 0) throw std::logic_error("Unref of an unreferenced KV block");
  return --blk.refs;
}

void KvArena::Free(int32_t block) {
  Block& blk = blocks_.at(static_cast<size_t>(block));
  if (blk.n_pages == 0 || blk.refs != 0) throw std::logic_error("Free of a KV block in use");
  for (int i = blk.n_pages - 1; i >= 0; --i) {
    free_pages_.push_back(page_ids_[static_cast<size_t>(block) * max_block_pages_ + i]);
  }
  blk = Block{};
  free_ids_.push_back(block);
}

}  // namespace pyengine
