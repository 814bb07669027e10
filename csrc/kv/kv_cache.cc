#include "kv/kv_cache.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/errors.h"

namespace pyengine {
namespace {

// Global layers form one group, sliding-window layers another (a model may have only one kind).
// A window at least as long as the training context keeps every position: such layers are global.
KvLayout MakeLayout(const ModelConfig& c) {
  KvLayout l;
  l.group_of_layer.assign(static_cast<size_t>(c.n_layer), -1);
  l.page_of_layer.assign(static_cast<size_t>(c.n_layer), -1);
  int group_id[2] = {-1, -1};  // [global, sliding]
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const int32_t src = c.kv_layer.empty() ? static_cast<int32_t>(i) : c.kv_layer[i];
    if (src != i) {  // shares an earlier layer's keys and values: no pages of its own
      l.group_of_layer[static_cast<size_t>(i)] = l.group_of_layer[static_cast<size_t>(src)];
      l.page_of_layer[static_cast<size_t>(i)] = l.page_of_layer[static_cast<size_t>(src)];
      continue;
    }
    const bool sliding = c.layer_is_swa[static_cast<size_t>(i)] && c.sliding_window > 0 &&
                         c.sliding_window < c.n_ctx_train;
    int& g = group_id[sliding ? 1 : 0];
    if (g < 0) {
      g = l.n_groups++;
      l.group_window[g] = sliding ? c.sliding_window : 0;
    }
    l.group_of_layer[static_cast<size_t>(i)] = g;
    l.page_of_layer[static_cast<size_t>(i)] = l.group_pages[g]++;
  }
  return l;
}

int64_t PagesInBudget(const KvLayout& l, const ModelConfig& c, KvType type, int64_t block_tokens,
                      int64_t budget) {
  if (type != KvType::kF16) {
    for (int64_t i = 0; i < c.n_layer; ++i) {
      if (c.head_dim_at(i) % kKvBlockValues != 0) {
        throw EngineError(std::string("a ") + KvTypeName(type) + " KV cache needs head dimensions "
                          "that are multiples of 32; layer " + std::to_string(i) + " has " +
                          std::to_string(c.head_dim_at(i)));
      }
    }
  }
  const int64_t page = KvArena::PageBytes(type, c.kv_dim(), block_tokens);
  int64_t min_pages = 0;
  for (int g = 0; g < l.n_groups; ++g) min_pages += l.group_pages[g];
  const int64_t n = budget / page;
  if (n < min_pages) {
    throw EngineError("a KV cache of " + std::to_string(budget >> 20) + " MiB holds less than one block (" +
                      std::to_string(min_pages * page / 1024) + " KiB) of this model");
  }
  return n;
}

int MinGroupPages(const KvLayout& l) {
  int m = l.group_pages[0];
  for (int g = 1; g < l.n_groups; ++g) m = std::min(m, l.group_pages[g]);
  return m;
}

int MaxGroupPages(const KvLayout& l) {
  int m = l.group_pages[0];
  for (int g = 1; g < l.n_groups; ++g) m = std::max(m, l.group_pages[g]);
  return m;
}

}  // namespace

KvCache::KvCache(const ModelConfig& cfg, KvType type, int64_t block_tokens, int64_t budget_bytes)
    : layout_(MakeLayout(cfg)),
      arena_(type, cfg.kv_dim(), block_tokens,
             PagesInBudget(layout_, cfg, type, block_tokens, budget_bytes),
             MaxGroupPages(layout_), MinGroupPages(layout_)),
      cache_(arena_.n_pages() / MinGroupPages(layout_)) {}

int64_t KvCache::PagesFor(int64_t n, int64_t chunk) const {
  const int64_t bt = block_tokens();
  const int64_t blocks = (n + bt - 1) / bt;
  int64_t pages = 0;
  for (int g = 0; g < layout_.n_groups; ++g) {
    const int64_t w = layout_.group_window[g];
    // Positions a step can see: the window behind its first token plus the chunk itself,
    // over at most one more block than they span.
    const int64_t held = w > 0 ? std::min(blocks, (w - 1 + chunk + bt - 1) / bt + 1) : blocks;
    pages += held * layout_.group_pages[g];
  }
  return pages;
}

int32_t KvCache::AllocateBlock(int pages) {
  for (;;) {
    const int32_t b = arena_.Allocate(pages);
    if (b >= 0) return b;
    const int32_t victim = cache_.EvictOldest();
    if (victim < 0) return -1;
    parked_pages_ -= arena_.pages(victim);
    ++evictions_;
    arena_.Free(victim);
  }
}

void KvCache::Drop(int32_t block) {
  if (arena_.Unref(block) > 0) return;
  if (cache_.Contains(block)) {
    cache_.Park(block);
    parked_pages_ += arena_.pages(block);
  } else {
    arena_.Free(block);
  }
}

void KvCache::Take(int32_t block) {
  if (arena_.refs(block) == 0) {
    cache_.Unpark(block);
    parked_pages_ -= arena_.pages(block);
  }
  arena_.Ref(block);
}

void KvCache::EnableDisk(const DiskCacheOptions& o) {
  std::vector<int> pages(layout_.group_pages, layout_.group_pages + layout_.n_groups);
  disk_ = std::make_unique<DiskCache>(o, arena_.type(), block_tokens(), page_bytes(), pages);
}

int32_t KvCache::LoadBlock(int group, const BlockKey& key) {
  const int32_t b = AllocateBlock(layout_.group_pages[group]);
  if (b < 0) return -1;
  if (!disk_->Read(group, key, [&](int i) { return arena_.k(b, i); }) || !cache_.Insert(group, key, b)) {
    Drop(b);  // not cached: freed
    return -1;
  }
  return b;
}

void KvCache::Persist(int group, const BlockKey& key, int32_t block) {
  disk_->Write(group, key, [&](int i) -> const uint8_t* { return arena_.k(block, i); });
}

int64_t KvCache::AttachPrefix(BlockTable& t, const int32_t* tokens, int64_t n, int64_t max_positions,
                              bool keep) {
  if (t.n_blocks() != 0) throw std::logic_error("AttachPrefix on a table that holds blocks");
  const int64_t bt = block_tokens();
  const int64_t n_full = std::min(n, max_positions) / bt;
  prefix_query_tokens_ += n;
  // Keys of the prompt's full blocks, and where each group has them: in memory (found), or
  // on disk only.
  t.keys.clear();
  BlockKey key;
  std::vector<int32_t> found[kMaxKvGroups];
  std::vector<uint8_t> on_disk[kMaxKvGroups];
  for (int64_t i = 0; i < n / bt; ++i) {
    key = PrefixCache::Chain(key, tokens + i * bt, bt);
    t.keys.push_back(key);
    for (int g = 0; g < layout_.n_groups && i < n_full; ++g) {
      found[g].push_back(cache_.Find(g, key));
      on_disk[g].push_back(found[g].back() < 0 && disk_ && disk_->Has(g, key));
    }
  }
  // The first block a group needs to continue from m blocks: a global group all of them, a
  // sliding one those holding positions [m*bt - window + 1, m*bt).
  auto first_needed = [&](int g, int64_t m) {
    const int64_t w = layout_.group_window[g];
    return w > 0 ? std::max<int64_t>(0, m * bt - w + 1) / bt : 0;
  };
  // Reading from disk allocates blocks, which may evict parked ones: when the disk has any
  // block memory lacks, the blocks found in memory are held until the prefix is settled.
  std::vector<int32_t> held;
  bool from_disk = false;
  for (int g = 0; g < layout_.n_groups; ++g) {
    from_disk = from_disk || std::find(on_disk[g].begin(), on_disk[g].end(), 1) != on_disk[g].end();
  }
  if (from_disk) {
    for (int g = 0; g < layout_.n_groups; ++g) {
      for (int32_t b : found[g]) {
        if (b >= 0) {
          Take(b);
          held.push_back(b);
        }
      }
    }
  }
  int64_t m = n_full;
  for (;;) {
    // The longest m (blocks) every group can continue from, memory and disk together.
    for (; m > 0; --m) {
      bool ok = true;
      for (int g = 0; g < layout_.n_groups && ok; ++g) {
        for (int64_t i = first_needed(g, m); i < m && ok; ++i) {
          ok = found[g][static_cast<size_t>(i)] >= 0 || on_disk[g][static_cast<size_t>(i)];
        }
      }
      if (ok) break;
    }
    // Blocks only the disk has, read back; a file that fails shortens the prefix and the
    // search runs again without it.
    bool loaded = true;
    for (int g = 0; g < layout_.n_groups && loaded; ++g) {
      for (int64_t i = first_needed(g, m); i < m && loaded; ++i) {
        int32_t& b = found[g][static_cast<size_t>(i)];
        if (b >= 0) continue;
        b = LoadBlock(g, t.keys[static_cast<size_t>(i)]);
        if (b >= 0) {
          held.push_back(b);
        } else {
          on_disk[g][static_cast<size_t>(i)] = 0;
          loaded = false;
        }
      }
    }
    if (loaded) break;
  }
  for (int g = 0; g < layout_.n_groups; ++g) {
    const int64_t first = first_needed(g, m);
    for (int64_t i = 0; i < m; ++i) {
      const int32_t b = i < first ? -1 : found[g][static_cast<size_t>(i)];
      if (b >= 0) {
        Take(b);
        const BlockKey& k = t.keys[static_cast<size_t>(i)];
        // Blocks served from memory often enough (or kept by request) go to disk too.
        if (disk_ && (keep || disk_->NoteHit(g, k))) Persist(g, k, b);
      }
      t.blocks[g].push_back(b);
    }
  }
  for (int32_t b : held) Drop(b);
  t.n_offered = m;  // shared blocks are cached already
  prefix_hit_tokens_ += m * bt;
  return m * bt;
}

bool KvCache::Grow(BlockTable& t, int64_t end) {
  const int64_t bt = block_tokens();
  const int64_t had = t.n_blocks(), need = (end + bt - 1) / bt;
  for (int64_t i = had; i < need; ++i) {
    for (int g = 0; g < layout_.n_groups; ++g) {
      const int32_t b = AllocateBlock(layout_.group_pages[g]);
      if (b < 0) {
        // Undo this call: drop the partial row, then every block added since `had`.
        for (int h = 0; h < g; ++h) {
          Drop(t.blocks[h].back());
          t.blocks[h].pop_back();
        }
        for (int h = 0; h < layout_.n_groups; ++h) {
          while (static_cast<int64_t>(t.blocks[h].size()) > had) {
            Drop(t.blocks[h].back());
            t.blocks[h].pop_back();
          }
        }
        return false;
      }
      t.blocks[g].push_back(b);
    }
  }
  return true;
}

void KvCache::Offer(BlockTable& t, const int32_t* tokens, int64_t n_done, int64_t keep_upto) {
  const int64_t bt = block_tokens();
  const int64_t full = std::min(n_done / bt, t.n_blocks());
  for (int64_t i = t.n_offered; i < full; ++i) {
    if (static_cast<int64_t>(t.keys.size()) <= i) {
      const BlockKey parent = i > 0 ? t.keys[static_cast<size_t>(i - 1)] : BlockKey{};
      t.keys.push_back(PrefixCache::Chain(parent, tokens + i * bt, bt));
    }
    for (int g = 0; g < layout_.n_groups; ++g) {
      const int32_t b = t.blocks[g][static_cast<size_t>(i)];
      // A block whose key another block holds already stays private and is freed on release.
      if (b >= 0) cache_.Insert(g, t.keys[static_cast<size_t>(i)], b);
      if (b >= 0 && disk_ && (i + 1) * bt <= keep_upto) Persist(g, t.keys[static_cast<size_t>(i)], b);
    }
  }
  t.n_offered = std::max(t.n_offered, full);
}

void KvCache::Trim(BlockTable& t, int64_t next) {
  const int64_t bt = block_tokens();
  for (int g = 0; g < layout_.n_groups; ++g) {
    const int64_t w = layout_.group_window[g];
    if (w <= 0) continue;
    // Position next attends to keys >= next - w + 1; blocks wholly below that are done.
    const int64_t keep_from = std::max<int64_t>(0, next - w + 1) / bt;
    auto& blocks = t.blocks[g];
    for (int64_t i = 0; i < std::min<int64_t>(keep_from, static_cast<int64_t>(blocks.size())); ++i) {
      int32_t& b = blocks[static_cast<size_t>(i)];
      if (b >= 0) {
        Drop(b);
        b = -1;
      }
    }
  }
}

void KvCache::Release(BlockTable& t) {
  for (int g = 0; g < layout_.n_groups; ++g) {
    for (int32_t b : t.blocks[g]) {
      if (b >= 0) Drop(b);
    }
    t.blocks[g].clear();
  }
  t.keys.clear();
  t.n_offered = 0;
}

KvCache::Stats KvCache::stats() const {
  Stats s{};
  s.pages_total = arena_.n_pages();
  s.pages_free = arena_.n_free_pages();
  s.pages_cached = parked_pages_;
  s.pages_used = s.pages_total - s.pages_free - s.pages_cached;
  s.page_bytes = page_bytes();
  s.block_tokens = block_tokens();
  s.blocks_cached = cache_.n_cached();
  s.prefix_query_tokens = prefix_query_tokens_;
  s.prefix_hit_tokens = prefix_hit_tokens_;
  s.evictions = evictions_;
  s.type = arena_.type();
  s.disk = disk_ != nullptr;
  s.disk_stats = disk_ ? disk_->stats() : DiskCache::Stats{};
  return s;
}

}  // namespace pyengine
