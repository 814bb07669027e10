// TensorView: a non-owning view of one tensor's bytes inside a memory-mapped GGUF file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyengine {

// ggml type ids as stored in GGUF tensor infos.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct TypeTraits {
  const char* name;
  int64_t block_size;  // values per block (1 for plain types)
  int64_t type_size;   // bytes per block
};

// Traits of a known type, or nullptr for an id this reader does not know.
const TypeTraits* GetTypeTraits(uint32_t type_id);
const char* TypeName(GgmlType type);

struct TensorView {
  std::string name;
  GgmlType type = GgmlType::kF32;
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous (innermost) dimension
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t cols() const { return ne[0]; }
  int64_t rows() const { return ne[1] * ne[2] * ne[3]; }
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  size_t row_bytes() const { return rows() == 0 ? 0 : nbytes / static_cast<size_t>(rows()); }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes(); }
  // Rows [r0, r1) as a 2-D view of their own.
  TensorView Rows(int64_t r0, int64_t r1) const {
    TensorView v = *this;
    v.n_dims = 2;
    v.ne[1] = r1 - r0;
    v.ne[2] = v.ne[3] = 1;
    v.data = row(r0);
    v.nbytes = static_cast<size_t>(r1 - r0) * row_bytes();
    return v;
  }
};

}  // namespace pyengine
