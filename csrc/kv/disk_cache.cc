#include "kv/disk_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>
#include <utility>

#include "core/errors.h"

namespace pyengine {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'P', 'Y', 'E', 'K', 'V', 'B', '0', '1'};

// A block file: this header, the block's pages one after another, then a checksum of both.
struct FileHeader {
  char magic[8];
  uint32_t kv_type, group, n_pages, reserved;
  uint64_t page_bytes, block_tokens, key_a, key_b;
  char model[64];  // the model id, zero padded
};
static_assert(sizeof(FileHeader) == 120, "no padding in the file header");

// A 64-bit checksum of a byte stream (a corrupt or truncated file, not an adversary).
class Checksum {
 public:
  void Add(const uint8_t* p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h_ ^= w * 0xff51afd7ed558ccdULL;
      h_ = ((h_ << 27) | (h_ >> 37)) * 0xc4ceb9fe1a85ec53ULL;
    }
    for (; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ULL;
  }
  uint64_t Final() const {
    uint64_t x = h_ ^ (h_ >> 33);
    x *= 0xff51afd7ed558ccdULL;
    return x ^ (x >> 33);
  }

 private:
  uint64_t h_ = 0x9E3779B97F4A7C15ULL;
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

FileHeader MakeHeader(KvType type, int group, int n_pages, int64_t page_bytes, int64_t block_tokens,
                      const BlockKey& key, const std::string& model) {
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.kv_type = static_cast<uint32_t>(type);
  h.group = static_cast<uint32_t>(group);
  h.n_pages = static_cast<uint32_t>(n_pages);
  h.page_bytes = static_cast<uint64_t>(page_bytes);
  h.block_tokens = static_cast<uint64_t>(block_tokens);
  h.key_a = key.a;
  h.key_b = key.b;
  std::memcpy(h.model, model.data(), std::min(model.size(), sizeof(h.model)));
  return h;
}

// "<group>-<32 hex digits of the key>.kvb" -> group and key; false for any other name.
bool ParseName(const std::string& name, int* group, BlockKey* key) {
  if (name.size() != 2 + 32 + 4 || name[1] != '-' || name.compare(34, 4, ".kvb") != 0) return false;
  if (name[0] < '0' || name[0] > '9') return false;
  *group = name[0] - '0';
  uint64_t v[2] = {0, 0};
  for (int i = 0; i < 32; ++i) {
    const char c = name[2 + i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v[i / 16] = (v[i / 16] << 4) | static_cast<uint64_t>(d);
  }
  key->a = v[0];
  key->b = v[1];
  return true;
}

}  // namespace

DiskCache::DiskCache(const DiskCacheOptions& o, KvType type, int64_t block_tokens, int64_t page_bytes,
                     std::vector<int> group_pages)
    : opts_(o), type_(type), block_tokens_(block_tokens), page_bytes_(page_bytes),
      group_pages_(std::move(group_pages)) {
  if (opts_.budget_bytes <= 0) throw EngineError("the prompt cache's disk budget must be positive");
  std::error_code ec;
  fs::create_directories(opts_.dir, ec);
  if (ec || !fs::is_directory(opts_.dir)) {
    throw EngineError("cannot use '" + opts_.dir + "' as a prompt cache folder: " + ec.message());
  }
  // What an earlier run left, oldest first: the least recently used go first.
  std::vector<std::pair<fs::file_time_type, Entry>> found;
  for (const fs::directory_entry& e : fs::directory_iterator(opts_.dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      fs::remove(e.path(), ec);  // a write that never finished
      continue;
    }
    Id id{};
    if (!ParseName(name, &id.group, &id.key)) continue;  // not ours: left alone
    if (id.group >= static_cast<int>(group_pages_.size()) ||
        static_cast<int64_t>(e.file_size(ec)) != FileBytes(id.group)) {
      Reject(id, "its size does not match this model's blocks");
      fs::remove(e.path(), ec);
      continue;
    }
    found.push_back({e.last_write_time(ec), Entry{id, FileBytes(id.group)}});
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [time, entry] : found) {
    lru_.push_back(entry);
    index_[entry.id] = std::prev(lru_.end());
    bytes_ += entry.bytes;
  }
  EvictTo(opts_.budget_bytes);
}

int64_t DiskCache::FileBytes(int group) const {
  return static_cast<int64_t>(sizeof(FileHeader)) +
         group_pages_[static_cast<size_t>(group)] * page_bytes_ + 8;
}

std::string DiskCache::PathOf(const Id& id) const {
  char name[48];
  std::snprintf(name, sizeof(name), "%d-%016llx%016llx.kvb", id.group,
                static_cast<unsigned long long>(id.key.a), static_cast<unsigned long long>(id.key.b));
  return (fs::path(opts_.dir) / name).string();
}

bool DiskCache::Has(int group, const BlockKey& key) const { return index_.count(Id{key, group}) > 0; }

void DiskCache::Forget(const Id& id, bool remove_file) {
  auto it = index_.find(id);
  if (it != index_.end()) {
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }
  if (remove_file) {
    std::error_code ec;
    fs::remove(PathOf(id), ec);
  }
}

void DiskCache::Reject(const Id& id, const std::string& why) {
  ++rejected_;
  std::fprintf(stderr, "pyengine: ignoring prompt cache file %s: %s\n", PathOf(id).c_str(), why.c_str());
}

void DiskCache::EvictTo(int64_t budget) {
  while (bytes_ > budget && !lru_.empty()) {
    const Id oldest = lru_.front().id;
    Forget(oldest, true);
    ++evictions_;
  }
}

bool DiskCache::Read(int group, const BlockKey& key, const std::function<uint8_t*(int)>& page) {
  const Id id{key, group};
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  const std::string path = PathOf(id);
  const int n_pages = group_pages_[static_cast<size_t>(group)];
  auto fail = [&](const std::string& why) {
    Reject(id, why);
    Forget(id, true);
    return false;
  };
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) return fail("it cannot be opened");
  FileHeader h{};
  if (std::fread(&h, sizeof(h), 1, f.get()) != 1) return fail("it is truncated");
  const FileHeader want = MakeHeader(type_, group, n_pages, page_bytes_, block_tokens_, key, opts_.model_id);
  if (std::memcmp(&h, &want, sizeof(h)) != 0) {
    return fail("it was written for another model, KV type or block");
  }
  Checksum sum;
  sum.Add(reinterpret_cast<const uint8_t*>(&h), sizeof(h));
  for (int i = 0; i < n_pages; ++i) {
    uint8_t* p = page(i);
    if (std::fread(p, 1, static_cast<size_t>(page_bytes_), f.get()) != static_cast<size_t>(page_bytes_)) {
      return fail("it is truncated");
    }
    sum.Add(p, static_cast<size_t>(page_bytes_));
  }
  uint64_t stored = 0;
  if (std::fread(&stored, 8, 1, f.get()) != 1) return fail("it is truncated");
  if (stored != sum.Final()) return fail("its checksum does not match its contents");
  if (std::fgetc(f.get()) != EOF) return fail("it is longer than a block");
  ++reads_;
  lru_.splice(lru_.end(), lru_, it->second);  // most recently used now, here and on disk
  std::error_code ec;
  fs::last_write_time(path, fs::file_time_type::clock::now(), ec);
  return true;
}

void DiskCache::Write(int group, const BlockKey& key, const std::function<const uint8_t*(int)>& page) {
  const Id id{key, group};
  if (index_.count(id) > 0) return;
  const int64_t bytes = FileBytes(group);
  if (bytes > opts_.budget_bytes) return;
  EvictTo(opts_.budget_bytes - bytes);
  const int n_pages = group_pages_[static_cast<size_t>(group)];
  const std::string path = PathOf(id), tmp = path + ".tmp";
  const FileHeader h = MakeHeader(type_, group, n_pages, page_bytes_, block_tokens_, key, opts_.model_id);
  Checksum sum;
  sum.Add(reinterpret_cast<const uint8_t*>(&h), sizeof(h));
  bool ok;
  {
    File f(std::fopen(tmp.c_str(), "wb"));
    ok = f && std::fwrite(&h, sizeof(h), 1, f.get()) == 1;
    for (int i = 0; ok && i < n_pages; ++i) {
      const uint8_t* p = page(i);
      ok = std::fwrite(p, 1, static_cast<size_t>(page_bytes_), f.get()) == static_cast<size_t>(page_bytes_);
      sum.Add(p, static_cast<size_t>(page_bytes_));
    }
    const uint64_t final_sum = sum.Final();
    ok = ok && std::fwrite(&final_sum, 8, 1, f.get()) == 1;
    if (f) ok = std::fclose(f.release()) == 0 && ok;
  }
  std::error_code ec;
  if (ok) fs::rename(tmp, path, ec);
  if (!ok || ec) {  // a full or read-only disk: the cache stays as it was
    fs::remove(tmp, ec);
    return;
  }
  lru_.push_back(Entry{id, bytes});
  index_[id] = std::prev(lru_.end());
  bytes_ += bytes;
  ++writes_;
}

bool DiskCache::NoteHit(int group, const BlockKey& key) {
  if (hits_.size() > (size_t{1} << 20)) hits_.clear();  // bounded: counts restart
  return ++hits_[Id{key, group}] == opts_.hits_to_keep;
}

DiskCache::Stats DiskCache::stats() const {
  return Stats{static_cast<int64_t>(index_.size()), bytes_, opts_.budget_bytes, reads_, writes_, rejected_,
               evictions_};
}

}  // namespace pyengine
