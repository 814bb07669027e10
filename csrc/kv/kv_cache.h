// KvCache: the KV memory of one model: the arena, which layers share blocks, and the prefix
// cache. Sequences' block tables grow, share cached prefixes, let go of what their attention
// window no longer sees, and are released through it. Not thread-safe: one owner (the
// scheduler thread) calls it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "kv/block_table.h"
#include "kv/disk_cache.h"
#include "kv/kv_arena.h"
#include "kv/prefix_cache.h"

namespace pyengine {

class KvCache {
 public:
  // As many pages of `type` as fit in budget_bytes (at least one block of every group).
  KvCache(const ModelConfig& cfg, KvType type, int64_t block_tokens, int64_t budget_bytes);

  const KvLayout& layout() const { return layout_; }
  int64_t block_tokens() const { return arena_.block_tokens(); }
  KvType type() const { return arena_.type(); }
  int64_t page_bytes() const {
    return KvArena::PageBytes(arena_.type(), arena_.kv_dim(), arena_.block_tokens());
  }
  KvView View(const BlockTable& t) { return KvView{&arena_, &layout_, &t}; }

  // Pages a sequence of n positions holds at its peak when it writes up to `chunk` positions
  // per step (a sliding group holds its window plus the chunk).
  int64_t PagesFor(int64_t n, int64_t chunk) const;
  int64_t n_pages() const { return arena_.n_pages(); }

  // Keeps blocks of chosen prefixes on disk too (DiskCache): read back where memory lacks them,
  // written when served from memory often enough or when a request asks to keep its prompt.
  void EnableDisk(const DiskCacheOptions& o);

  // Shares with the empty table t the longest cached prefix of tokens [n] that covers whole
  // blocks and at most max_positions positions, and that every group can continue from (a
  // sliding group needs the last window of it); blocks memory lacks come from the disk cache
  // when it has them. keep: the shared blocks are written to the disk cache. Returns the
  // positions shared.
  int64_t AttachPrefix(BlockTable& t, const int32_t* tokens, int64_t n, int64_t max_positions,
                       bool keep = false);
  // Gives t blocks for every position below `end`, evicting cached blocks nobody uses when
  // free pages run out. Returns false, with t as it was, when memory is short even then.
  bool Grow(BlockTable& t, int64_t end);
  // Offers t's full blocks among positions [0, n_done) (tokens [n_done]) to the prefix cache;
  // those within the first keep_upto positions are written to the disk cache too.
  void Offer(BlockTable& t, const int32_t* tokens, int64_t n_done, int64_t keep_upto = 0);
  // Lets the sliding group go of blocks that no position >= next can attend to.
  void Trim(BlockTable& t, int64_t next);
  // Drops every block of t; cached ones stay cached and become evictable.
  void Release(BlockTable& t);

  struct Stats {
    int64_t pages_total, pages_free, pages_cached, pages_used, page_bytes, block_tokens;
    int64_t blocks_cached;       // blocks the prefix cache knows (in use or evictable)
    int64_t prefix_query_tokens; // prompt positions looked up in the prefix cache
    int64_t prefix_hit_tokens;   // of those, positions shared instead of computed
    int64_t evictions;           // cached blocks reclaimed for new ones
    KvType type;                 // how pages store keys and values
    bool disk;                   // a disk cache is attached (the disk_* counters below)
    DiskCache::Stats disk_stats;
  };
  Stats stats() const;

 private:
  int32_t AllocateBlock(int pages);
  void Drop(int32_t block);  // one reference less; at zero the block is parked or freed
  void Take(int32_t block);  // one reference more, reviving a parked block
  // A new block of `group` holding the disk cache's copy of `key`, referenced once and cached;
  // -1 when no memory is free or the file is refused.
  int32_t LoadBlock(int group, const BlockKey& key);
  void Persist(int group, const BlockKey& key, int32_t block);

  KvLayout layout_;
  KvArena arena_;
  PrefixCache cache_;
  std::unique_ptr<DiskCache> disk_;
  int64_t parked_pages_ = 0;
  int64_t prefix_query_tokens_ = 0, prefix_hit_tokens_ = 0, evictions_ = 0;
};

}  // namespace pyengine
