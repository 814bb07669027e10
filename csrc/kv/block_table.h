// BlockTable: one sequence's logical -> physical KV blocks, and KvView, the only KV structure
// the forward pass sees.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/kv_arena.h"

namespace pyengine {

class BlockTable {
 public:
  const std::vector<int32_t>& blocks() const { return blocks_; }
  int64_t capacity(const KvArena& arena) const {
    return static_cast<int64_t>(blocks_.size()) * arena.block_tokens();
  }

  // Makes room for positions [0, n_tokens). Returns false, holding what it held before, when
  // the arena has too few free blocks.
  bool Reserve(KvArena& arena, int64_t n_tokens);
  // Gives back every block beyond the first n_tokens positions.
  void Truncate(KvArena& arena, int64_t n_tokens);
  void Release(KvArena& arena) { Truncate(arena, 0); }

 private:
  std::vector<int32_t> blocks_;
};

// Keys and values of one sequence as the forward pass reads and writes them.
struct KvView {
  KvArena* arena;
  const BlockTable* table;

  int64_t capacity() const { return table->capacity(*arena); }
  uint16_t* k(int64_t layer, int64_t pos) const { return At(layer, pos, true); }
  uint16_t* v(int64_t layer, int64_t pos) const { return At(layer, pos, false); }

 private:
  uint16_t* At(int64_t layer, int64_t pos, bool key) const {
    const int32_t block = table->blocks()[static_cast<size_t>(pos >> arena->block_shift())];
    const int64_t slot = pos & (arena->block_tokens() - 1);
    return key ? arena->k(block, layer, slot) : arena->v(block, layer, slot);
  }
};

}  // namespace pyengine
