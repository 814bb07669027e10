// BlockTable: one sequence's logical -> physical KV blocks, KvLayout: which layers share a
// block, and KvView: the only KV structure the forward pass sees.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/kv_arena.h"
#include "kv/prefix_cache.h"

namespace pyengine {

// Layers whose keys live equally long share blocks: group 0 holds every position (global
// attention), group 1 (when the model has sliding-window layers) only a window of them.
constexpr int kMaxKvGroups = 2;

struct KvLayout {
  int n_groups = 0;
  std::vector<int> group_of_layer;  // [n_layer]
  std::vector<int> page_of_layer;   // [n_layer] the layer's page within its group's blocks
  int group_pages[kMaxKvGroups] = {0, 0};     // pages (layers) per block of each group
  int64_t group_window[kMaxKvGroups] = {0, 0};  // attention window; 0: every position
};

struct BlockTable {
  // [logical blocks] physical block of each group; -1 where a sliding group let it go.
  std::vector<int32_t> blocks[kMaxKvGroups];
  std::vector<BlockKey> keys;  // [full blocks known so far] prefix key of each full block
  int64_t n_offered = 0;       // leading full blocks already offered to the prefix cache

  int64_t n_blocks() const { return static_cast<int64_t>(blocks[0].size()); }
};

// Keys and values of one sequence as the forward pass reads and writes them.
struct KvView {
  KvArena* arena;
  const KvLayout* layout;
  const BlockTable* table;

  int64_t capacity() const { return table->n_blocks() * arena->block_tokens(); }
  // [block_tokens, arena->row_bytes()] keys / values of `layer` for the positions of logical
  // block i, in the arena's KvType.
  uint8_t* k_block(int64_t layer, int64_t i) const { return Block(layer, i, false); }
  uint8_t* v_block(int64_t layer, int64_t i) const { return Block(layer, i, true); }
  // [row_bytes] keys / values of `layer` at position pos.
  uint8_t* k(int64_t layer, int64_t pos) const { return Slot(layer, pos, false); }
  uint8_t* v(int64_t layer, int64_t pos) const { return Slot(layer, pos, true); }

 private:
  uint8_t* Block(int64_t layer, int64_t i, bool value) const {
    const int g = layout->group_of_layer[static_cast<size_t>(layer)];
    const int32_t b = table->blocks[g][static_cast<size_t>(i)];
    const int page = layout->page_of_layer[static_cast<size_t>(layer)];
    return value ? arena->v(b, page) : arena->k(b, page);
  }
  uint8_t* Slot(int64_t layer, int64_t pos, bool value) const {
    return Block(layer, pos >> arena->block_shift(), value) +
           (pos & (arena->block_tokens() - 1)) * arena->row_bytes();
  }
};

}  // namespace pyengine
