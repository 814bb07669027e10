// What the core asks of the operating system about memory: read-only file mappings, aligned
// allocations and paging hints, for POSIX systems and for Windows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyengine {

// A whole file mapped read-only (copy-on-write private mapping on POSIX, a view of a read-only
// file mapping on Windows). Throws std::runtime_error with the OS's reason.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  intptr_t file_ = -1;     // a file descriptor, or a HANDLE
  intptr_t mapping_ = -1;  // Windows: the file mapping's HANDLE
};

// The system's memory page size.
size_t PageSize();

// Memory aligned to `align` (a power of two, at least sizeof(void*)); nullptr when out of
// memory. Freed with AlignedFree only.
void* AlignedAlloc(size_t align, size_t bytes);
void AlignedFree(void* p);

// Hints, each a no-op where the system has no such advice: back [p, p + n) with huge pages;
// read the pages of a mapping in ahead of use; drop a mapping's pages (they read back from the
// file when touched again).
void AdviseHugePages(void* p, size_t n);
void PrefaultPages(const void* p, size_t n);
void ReleasePages(const void* p, size_t n);

}  // namespace pyengine
