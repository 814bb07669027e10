#include "core/os_memory.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#ifdef _WIN32
#define WIN32_LEAN_AND_MEAN
#define NOMINMAX
#include <malloc.h>
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace pyengine {

#ifdef _WIN32

namespace {
std::string LastError() { return "Windows error " + std::to_string(GetLastError()); }
}  // namespace

MappedFile::MappedFile(const std::string& path) {
  HANDLE f = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                         FILE_ATTRIBUTE_NORMAL, nullptr);
  if (f == INVALID_HANDLE_VALUE) throw std::runtime_error("cannot open: " + LastError());
  LARGE_INTEGER size;
  if (GetFileType(f) != FILE_TYPE_DISK || !GetFileSizeEx(f, &size)) {
    CloseHandle(f);
    throw std::runtime_error("not a regular file");
  }
  size_ = static_cast<size_t>(size.QuadPart);
  file_ = reinterpret_cast<intptr_t>(f);
  if (size_ == 0) return;  // nothing to map; the caller rejects it by size
  HANDLE m = CreateFileMappingA(f, nullptr, PAGE_READONLY, 0, 0, nullptr);
  if (m == nullptr) {
    CloseHandle(f);
    throw std::runtime_error("cannot map: " + LastError());
  }
  void* p = MapViewOfFile(m, FILE_MAP_READ, 0, 0, 0);
  if (p == nullptr) {
    CloseHandle(m);
    CloseHandle(f);
    throw std::runtime_error("cannot map: " + LastError());
  }
  mapping_ = reinterpret_cast<intptr_t>(m);
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_) UnmapViewOfFile(data_);
  if (mapping_ != -1) CloseHandle(reinterpret_cast<HANDLE>(mapping_));
  if (file_ != -1) CloseHandle(reinterpret_cast<HANDLE>(file_));
}

size_t PageSize() {
  SYSTEM_INFO info;
  GetSystemInfo(&info);
  return info.dwPageSize;
}

void* AlignedAlloc(size_t align, size_t bytes) { return _aligned_malloc(bytes, align); }
void AlignedFree(void* p) { _aligned_free(p); }
void AdviseHugePages(void*, size_t) {}
void PrefaultPages(const void*, size_t) {}
void ReleasePages(const void*, size_t) {}

#else

MappedFile::MappedFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(std::string("cannot open: ") + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error("not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  file_ = fd;
  if (size_ == 0) return;  // nothing to map; the caller rejects it by size
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    ::close(fd);
    file_ = -1;
    throw std::runtime_error(std::string("mmap failed: ") + std::strerror(errno));
  }
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (file_ >= 0) ::close(static_cast<int>(file_));
}

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void* AlignedAlloc(size_t align, size_t bytes) {
  // std::aligned_alloc wants a size that is a multiple of the alignment.
  return std::aligned_alloc(align, (bytes + align - 1) / align * align);
}
void AlignedFree(void* p) { std::free(p); }

void AdviseHugePages(void* p, size_t n) {
#ifdef MADV_HUGEPAGE
  madvise(p, n, MADV_HUGEPAGE);  // a hint: without transparent huge pages, nothing changes
#else
  (void)p, (void)n;
#endif
}

void PrefaultPages(const void* p, size_t n) {
  const size_t page = PageSize();
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + n;
#ifdef MADV_POPULATE_READ
  // Best effort: older kernels refuse the advice and the pages fault in as they are read.
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ);
#else
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
#endif
}

void ReleasePages(const void* p, size_t n) {
  const size_t page = PageSize();
  // Only whole pages inside the range: neighbours may still be in use.
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

#endif

}  // namespace pyengine
