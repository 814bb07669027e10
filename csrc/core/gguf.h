// GgufFile: a memory-mapped GGUF (v2/v3) file with validated metadata and tensor directory.
// Knows no model. Every count, size and offset read from the file is checked against the file
// before use; a bad file throws GgufError naming the file and the defect.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/os_memory.h"
#include "core/tensor.h"

namespace pyengine {

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

const char* GgufTypeName(GgufType t);

// One metadata value. Scalars are decoded; arrays of numbers stay zero-copy views into the map;
// arrays of strings hold views; arrays of arrays hold nested values.
struct GgufValue {
  GgufType type = GgufType::kU8;
  uint64_t u = 0;  // unsigned integer types and bool
  int64_t i = 0;   // signed integer types
  double f = 0;    // f32 / f64
  std::string_view str;

  GgufType elem_type = GgufType::kU8;     // arrays only
  uint64_t count = 0;                     // arrays only
  const uint8_t* raw = nullptr;           // arrays of numbers: count little-endian elements
  std::vector<std::string_view> strings;  // arrays of strings
  std::vector<GgufValue> items;           // arrays of arrays

  bool is_integer() const;
  bool is_number() const;  // integer, bool or float
  int64_t AsInt() const;   // integer or bool; throws std::invalid_argument otherwise
  double AsDouble() const; // any number
  // Element k of an array of numbers as double (bounds-checked by caller via count).
  double NumberAt(uint64_t k) const;
  // Element k of an array of integers, exactly (u64 values above INT64_MAX: use UnsignedAt).
  int64_t IntegerAt(uint64_t k) const;
  uint64_t UnsignedAt(uint64_t k) const;
};

class GgufFile {
 public:
  // Maps and validates the file. Throws GgufError.
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t file_size() const { return size_; }
  uint64_t alignment() const { return alignment_; }

  const std::vector<std::string>& keys() const { return key_order_; }
  const GgufValue* Find(const std::string& key) const;  // nullptr when absent

  // Typed getters: throw GgufError naming the key when it is absent (no default) or mistyped.
  int64_t GetInt(const std::string& key) const;
  int64_t GetInt(const std::string& key, int64_t fallback) const;
  double GetFloat(const std::string& key, double fallback) const;
  double GetFloat(const std::string& key) const;
  std::string GetString(const std::string& key, const std::string& fallback) const;
  std::string GetString(const std::string& key) const;
  bool GetBool(const std::string& key, bool fallback) const;

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* FindTensor(const std::string& name) const;

  // Maps a tensor's pages in ahead of a full read: one call instead of a fault per page.
  void Prefault(const TensorView& t) const;

  // Tells the OS that a tensor's pages will not be read soon (its data was copied elsewhere);
  // they are dropped from this process's memory and re-read from the file if touched again.
  void ReleasePages(const TensorView& t) const;

  [[noreturn]] void Fail(const std::string& what) const;

 private:
  void Parse();

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<std::string> key_order_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace pyengine
