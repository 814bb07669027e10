#include "kv/block_table.h"

namespace pyengine {

bool BlockTable::Reserve(KvArena& arena, int64_t n_tokens) {
  const size_t need = static_cast<size_t>((n_tokens + arena.block_tokens() - 1) >> arena.block_shift());
  const size_t had = blocks_.size();
  while (blocks_.size() < need) {
    const int32_t b = arena.Allocate();
    if (b < 0) {
      Truncate(arena, static_cast<int64_t>(had) * arena.block_tokens());
      return false;
    }
    blocks_.push_back(b);
  }
  return true;
}

void BlockTable::Truncate(KvArena& arena, int64_t n_tokens) {
  const size_t keep = static_cast<size_t>((n_tokens + arena.block_tokens() - 1) >> arena.block_shift());
  while (blocks_.size() > keep) {
    arena.Unref(blocks_.back());
    blocks_.pop_back();
  }
}

}  // namespace pyengine
