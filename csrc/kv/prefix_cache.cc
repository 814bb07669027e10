#include "kv/prefix_cache.h"

#include <stdexcept>

namespace pyengine {
namespace {

// The finaliser of SplitMix64: every input bit flips about half the output bits.
inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

PrefixCache::PrefixCache(int64_t max_blocks) : slots_(static_cast<size_t>(max_blocks)) {}

BlockKey PrefixCache::Chain(const BlockKey& parent, const int32_t* tokens, int64_t n) {
  // Two independent chains (different constants and combining steps) make the 128-bit key.
  uint64_t a = Mix(parent.a ^ 0x9e3779b97f4a7c15ULL);
  uint64_t b = Mix(parent.b + 0x632be59bd9b4e019ULL);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t t = static_cast<uint32_t>(tokens[i]);
    a = Mix(a ^ (t * 0xd6e8feb86659fd93ULL + static_cast<uint64_t>(i)));
    b = Mix((b + t) * 0xff51afd7ed558ccdULL + 0xc4ceb9fe1a85ec53ULL);
  }
  // Never the empty prefix's key.
  if (a == 0 && b == 0) a = 1;
  return {a, b};
}

int32_t PrefixCache::Find(int group, const BlockKey& key) const {
  auto it = map_.find(GroupKey{key, group});
  return it == map_.end() ? -1 : it->second;
}

bool PrefixCache::Insert(int group, const BlockKey& key, int32_t block) {
  Slot& s = slot(block);
  if (s.cached) return false;
  const GroupKey mk{key, group};
  if (!map_.emplace(mk, block).second) return false;
  s.cached = true;
  s.key = mk;
  return true;
}

void PrefixCache::Park(int32_t block) {
  Slot& s = slot(block);
  if (!s.cached || s.parked) throw std::logic_error("Park of a block that is not cached or already parked");
  s.parked = true;
  s.prev = tail_;
  s.next = -1;
  if (tail_ >= 0) slot(tail_).next = block; else head_ = block;
  tail_ = block;
  ++n_parked_;
}

void PrefixCache::Unpark(int32_t block) {
  Slot& s = slot(block);
  if (!s.parked) throw std::logic_error("Unpark of a block that is not parked");
  if (s.prev >= 0) slot(s.prev).next = s.next; else head_ = s.next;
  if (s.next >= 0) slot(s.next).prev = s.prev; else tail_ = s.prev;
  s.parked = false;
  s.prev = s.next = -1;
  --n_parked_;
}

int32_t PrefixCache::EvictOldest() {
  const int32_t b = head_;
  if (b < 0) return -1;
  Unpark(b);
  Slot& s = slot(b);
  map_.erase(s.key);
  s.cached = false;
  return b;
}

}  // namespace pyengine
