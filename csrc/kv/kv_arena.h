// KvArena: one fixed pool of memory holding keys and values (fp16, or Q8_0 / Q4_0 blocks:
// core/kv_type.h) for every sequence of a model.
// Storage comes in pages: a page is one layer's keys and values for block_tokens positions, so
// every page has the same size whatever the layer. A block is the set of pages one KV group (the
// layers whose keys live equally long: all global layers, or all sliding-window layers) needs for
// block_tokens positions. Blocks are reference-counted; the arena knows no request and no hash.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/kv_type.h"

namespace pyengine {

class KvArena {
 public:
  // n_pages pages of block_tokens positions (a power of two) x kv_dim values of `type`; blocks
  // hold at most max_block_pages pages and at least min_block_pages (which bounds how many blocks
  // can exist).
  KvArena(KvType type, int64_t kv_dim, int64_t block_tokens, int64_t n_pages, int max_block_pages,
          int min_block_pages);

  // Bytes of one page: keys and values of one layer for block_tokens positions.
  static int64_t PageBytes(KvType type, int64_t kv_dim, int64_t block_tokens) {
    return 2 * block_tokens * KvRowBytes(type, kv_dim);
  }

  int64_t n_pages() const { return n_pages_; }
  int64_t n_free_pages() const { return static_cast<int64_t>(free_pages_.size()); }
  int64_t block_tokens() const { return block_tokens_; }
  int block_shift() const { return block_shift_; }
  int64_t kv_dim() const { return kv_dim_; }
  KvType type() const { return type_; }
  int64_t row_bytes() const { return row_bytes_; }  // one position's kv_dim values

  // A block of n pages with reference count 1, or -1 when fewer than n pages are free.
  int32_t Allocate(int n);
  // One more reference; a block at zero references that still holds its pages may be revived.
  void Ref(int32_t block);
  // Drops one reference and returns how many are left. At zero the block keeps its pages (a
  // prefix cache may want it) until Free.
  int32_t Unref(int32_t block);
  // Returns the pages of a block nobody references to the free list; its id may be reused.
  void Free(int32_t block);

  int32_t refs(int32_t block) const { return blocks_[static_cast<size_t>(block)].refs; }
  int pages(int32_t block) const { return blocks_[static_cast<size_t>(block)].n_pages; }

  // The arena-wide index of page i of `block`: a device copy of the arena (CUDA) lays its pages
  // out by this index, so the same block tables address both.
  int64_t page_id(int32_t block, int i) const {
    return page_ids_[static_cast<size_t>(block) * max_block_pages_ + i];
  }

  // [block_tokens, row_bytes] keys / values of page i of `block`, position slot 0 first.
  uint8_t* k(int32_t block, int i) { return Page(block, i); }
  uint8_t* v(int32_t block, int i) { return Page(block, i) + block_tokens_ * row_bytes_; }

 private:
  struct Block {
    int32_t refs = 0;
    int32_t n_pages = 0;  // 0: the id is unused
  };
  uint8_t* Page(int32_t block, int i) {
    const int64_t page = page_ids_[static_cast<size_t>(block) * max_block_pages_ + i];
    return data_.get() + page * 2 * block_tokens_ * row_bytes_;
  }

  KvType type_;
  int64_t kv_dim_, row_bytes_, block_tokens_, n_pages_;
  int block_shift_ = 0;
  int max_block_pages_;
  // Left uninitialised on purpose: pages are touched only as they fill, so memory in use grows
  // with the work and never exceeds n_pages pages.
  std::unique_ptr<uint8_t[]> data_;   // [n_pages, 2 (k, v), block_tokens, row_bytes]
  std::vector<int32_t> free_pages_;   // a stack: recently freed pages are warm
  std::vector<Block> blocks_;         // [max blocks]
  std::vector<int32_t> page_ids_;     // [max blocks, max_block_pages] pages of each block
  std::vector<int32_t> free_ids_;     // unused block ids
};

}  // namespace pyengine
