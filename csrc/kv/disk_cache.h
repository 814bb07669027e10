// DiskCache: full KV blocks of prefixes worth keeping, one file per (KV group, block key) in one
// folder per model file and KV type, so that a restarted engine reads a known prefix back
// instead of computing it again. Bounded by a byte budget, least recently used files deleted
// first. A file is trusted only when its header names this model, KV type, group and page shape
// and its checksum holds; any other file is reported, deleted and treated as a miss. Not
// thread-safe: its owner (KvCache, on the scheduler thread) calls it.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/kv_type.h"
#include "kv/prefix_cache.h"

namespace pyengine {

struct DiskCacheOptions {
  std::string dir;        // the folder (created when missing)
  std::string model_id;   // the model file's digest (at most 64 characters are stored)
  int64_t budget_bytes = 0;
  int hits_to_keep = 2;   // a block served from memory this many times is written
};

class DiskCache {
 public:
  // Blocks of group g hold group_pages[g] pages of page_bytes bytes each.
  DiskCache(const DiskCacheOptions& o, KvType type, int64_t block_tokens, int64_t page_bytes,
            std::vector<int> group_pages);

  bool Has(int group, const BlockKey& key) const;
  // Fills the block's pages (page(i): where page i goes) from its file: false, with the file
  // deleted and counted as rejected, when the file is unreadable, foreign or corrupt.
  bool Read(int group, const BlockKey& key, const std::function<uint8_t*(int)>& page);
  // Writes the block (page(i): page i) unless a file holds it already or it exceeds the budget;
  // older files are deleted to stay within the budget.
  void Write(int group, const BlockKey& key, const std::function<const uint8_t*(int)>& page);
  // Counts a block served from memory; true when the count reaches hits_to_keep (once).
  bool NoteHit(int group, const BlockKey& key);

  struct Stats {
    int64_t files, bytes, budget_bytes, reads, writes, rejected, evictions;
  };
  Stats stats() const;

 private:
  using Id = GroupKey;
  struct Entry {
    Id id;
    int64_t bytes;
  };
  std::string PathOf(const Id& id) const;
  int64_t FileBytes(int group) const;
  void Forget(const Id& id, bool remove_file);
  void Reject(const Id& id, const std::string& why);
  void EvictTo(int64_t budget);

  DiskCacheOptions opts_;
  KvType type_;
  int64_t block_tokens_, page_bytes_;
  std::vector<int> group_pages_;
  std::list<Entry> lru_;  // oldest first
  std::unordered_map<Id, std::list<Entry>::iterator, GroupKeyHash> index_;
  std::unordered_map<Id, int, GroupKeyHash> hits_;
  int64_t bytes_ = 0, reads_ = 0, writes_ = 0, rejected_ = 0, evictions_ = 0;
};

}  // namespace pyengine
