// PrefixCache: full KV blocks found by what produced them. A block's key is a 128-bit hash of its
// tokens chained onto the key of everything before it, so equal keys mean equal prefixes (the
// chance of two different prefixes meeting is about n^2 / 2^129 for n blocks). Blocks that no
// sequence references wait here, least recently used first, to be reused or evicted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace pyengine {

struct BlockKey {
  uint64_t a = 0, b = 0;  // {0, 0}: the empty prefix
  bool operator==(const BlockKey& o) const { return a == o.a && b == o.b; }
};

// A block of one KV group: what the prefix cache and the disk cache look blocks up by.
struct GroupKey {
  BlockKey key;
  int group = 0;
  bool operator==(const GroupKey& o) const { return key == o.key && group == o.group; }
};
struct GroupKeyHash {
  size_t operator()(const GroupKey& k) const { return static_cast<size_t>(k.key.a ^ (k.key.b * 31) ^ k.group); }
};

class PrefixCache {
 public:
  // Block ids are below max_blocks.
  explicit PrefixCache(int64_t max_blocks);

  // The key of a block holding `tokens` [n] right after the prefix whose key is `parent`.
  static BlockKey Chain(const BlockKey& parent, const int32_t* tokens, int64_t n);

  // The block cached for `key` in KV group `group`, or -1.
  int32_t Find(int group, const BlockKey& key) const;
  // Registers a full block; false (and nothing changes) when the key already has a block or
  // the block is cached under another key.
  bool Insert(int group, const BlockKey& key, int32_t block);
  bool Contains(int32_t block) const { return slot(block).cached; }

  // A cached block nobody references any more: it joins the evictable list (newest end).
  void Park(int32_t block);
  // A parked block is referenced again and leaves the evictable list.
  void Unpark(int32_t block);
  // Forgets the least recently used parked block and returns it (to be freed), or -1.
  int32_t EvictOldest();

  int64_t n_cached() const { return static_cast<int64_t>(map_.size()); }
  int64_t n_parked() const { return n_parked_; }

 private:
  struct Slot {
    bool cached = false, parked = false;
    GroupKey key{};
    int32_t prev = -1, next = -1;  // evictable list, oldest at head_
  };
  Slot& slot(int32_t b) { return slots_.at(static_cast<size_t>(b)); }
  const Slot& slot(int32_t b) const { return slots_.at(static_cast<size_t>(b)); }

  std::unordered_map<GroupKey, int32_t, GroupKeyHash> map_;
  std::vector<Slot> slots_;  // [max_blocks]
  int32_t head_ = -1, tail_ = -1;
  int64_t n_parked_ = 0;
};

}  // namespace pyengine
