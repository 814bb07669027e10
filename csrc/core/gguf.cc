#include "core/gguf.h"

#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "core/errors.h"

namespace pyengine {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
// Nested arrays are legal but nothing real nests deeply; the cap keeps recursion bounded.
constexpr int kMaxArrayDepth = 8;
constexpr uint64_t kMaxKeyLength = 1 << 16;
constexpr uint64_t kMaxNestedArrays = 1 << 20;  // per array; real files have none

const TypeTraits kTraits[] = {
    /*0 F32*/ {"F32", 1, 4},     /*1 F16*/ {"F16", 1, 2},
    /*2 Q4_0*/ {"Q4_0", 32, 18}, /*3 Q4_1*/ {"Q4_1", 32, 20},
    /*4*/ {nullptr, 0, 0},       /*5*/ {nullptr, 0, 0},
    /*6 Q5_0*/ {"Q5_0", 32, 22}, /*7 Q5_1*/ {"Q5_1", 32, 24},
    /*8 Q8_0*/ {"Q8_0", 32, 34}, /*9 Q8_1*/ {"Q8_1", 32, 36},
    /*10 Q2_K*/ {"Q2_K", 256, 84}, /*11 Q3_K*/ {"Q3_K", 256, 110},
    /*12 Q4_K*/ {"Q4_K", 256, 144}, /*13 Q5_K*/ {"Q5_K", 256, 176},
    /*14 Q6_K*/ {"Q6_K", 256, 210}, /*15 Q8_K*/ {"Q8_K", 256, 292},
    // Every type ggml defines, so that a file holding any of them opens and its tensors' types
    // can be named; which ones the kernels compute is IsSupportedWeightType's to say.
    /*16*/ {"IQ2_XXS", 256, 66}, /*17*/ {"IQ2_XS", 256, 74}, /*18*/ {"IQ3_XXS", 256, 98},
    /*19*/ {"IQ1_S", 256, 50},   /*20*/ {"IQ4_NL", 32, 18},  /*21*/ {"IQ3_S", 256, 110},
    /*22*/ {"IQ2_S", 256, 82},   /*23*/ {"IQ4_XS", 256, 136},
    /*24 I8*/ {"I8", 1, 1},      /*25 I16*/ {"I16", 1, 2},
    /*26 I32*/ {"I32", 1, 4},    /*27 I64*/ {"I64", 1, 8},
    /*28 F64*/ {"F64", 1, 8},    /*29*/ {"IQ1_M", 256, 56},
    /*30 BF16*/ {"BF16", 1, 2},
    /*31..33: removed from GGUF*/ {nullptr, 0, 0}, {nullptr, 0, 0}, {nullptr, 0, 0},
    /*34*/ {"TQ1_0", 256, 54},   /*35*/ {"TQ2_0", 256, 66},
    /*36..38: removed from GGUF*/ {nullptr, 0, 0}, {nullptr, 0, 0}, {nullptr, 0, 0},
    /*39*/ {"MXFP4", 32, 17},    /*40*/ {"NVFP4", 64, 36},   /*41*/ {"Q1_0", 128, 18},
};

// Bytes one scalar of a metadata type occupies; 0 for string/array (variable size).
size_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    default: return 0;
  }
}

bool ValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kF64); }

// Bounds-checked little-endian reader over [pos, end) of the mapped file.
class Cursor {
 public:
  Cursor(const GgufFile& f, const uint8_t* base, size_t size) : f_(f), base_(base), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void Need(uint64_t n, const char* what) const {
    if (n > remaining()) {
      f_.Fail(std::string("truncated while reading ") + what + " at offset " +
              std::to_string(pos_) + " (need " + std::to_string(n) + " bytes, " +
              std::to_string(remaining()) + " left)");
    }
  }
  template <typename T>
  T Read(const char* what) {
    Need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string_view ReadString(const char* what) {
    uint64_t n = Read<uint64_t>(what);
    Need(n, what);
    std::string_view s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  const uint8_t* Skip(uint64_t n, const char* what) {
    Need(n, what);
    const uint8_t* p = base_ + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }

 private:
  const GgufFile& f_;
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
};

GgufValue ReadValue(const GgufFile& f, Cursor& c, GgufType type, const std::string& key, int depth);

GgufValue ReadArray(const GgufFile& f, Cursor& c, const std::string& key, int depth) {
  if (depth >= kMaxArrayDepth) f.Fail("key '" + key + "': arrays nested deeper than 8 levels");
  GgufValue v;
  v.type = GgufType::kArray;
  uint32_t et = c.Read<uint32_t>("array element type");
  if (!ValidType(et)) f.Fail("key '" + key + "': unknown array element type " + std::to_string(et));
  v.elem_type = static_cast<GgufType>(et);
  v.count = c.Read<uint64_t>("array length");
  size_t es = ScalarSize(v.elem_type);
  if (es != 0) {
    // Checked as a division so a hostile count cannot overflow the product.
    if (v.count > c.remaining() / es) {
      f.Fail("key '" + key + "': array of " + std::to_string(v.count) +
             " elements does not fit in the file");
    }
    v.raw = c.Skip(v.count * es, "array data");
    return v;
  }
  // Strings take >= 8 bytes, arrays >= 12: a count larger than that cannot be real.
  uint64_t min_size = v.elem_type == GgufType::kString ? 8 : 12;
  if (v.count > c.remaining() / min_size) {
    f.Fail("key '" + key + "': array of " + std::to_string(v.count) +
           " elements does not fit in the file");
  }
  if (v.elem_type == GgufType::kString) {
    v.strings.reserve(static_cast<size_t>(v.count));
    for (uint64_t k = 0; k < v.count; ++k) v.strings.push_back(c.ReadString("array string"));
  } else {
    // Each nested array costs ~10x its 12 file bytes in memory: cap them so a hostile file
    // raises an error instead of exhausting memory.
    if (v.count > kMaxNestedArrays) f.Fail("key '" + key + "': too many nested arrays");
    v.items.reserve(static_cast<size_t>(v.count));
    for (uint64_t k = 0; k < v.count; ++k) v.items.push_back(ReadArray(f, c, key, depth + 1));
  }
  return v;
}

GgufValue ReadValue(const GgufFile& f, Cursor& c, GgufType type, const std::string& key, int depth) {
  if (type == GgufType::kArray) return ReadArray(f, c, key, depth);
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::kU8: v.u = c.Read<uint8_t>("value"); break;
    case GgufType::kI8: v.i = c.Read<int8_t>("value"); break;
    case GgufType::kU16: v.u = c.Read<uint16_t>("value"); break;
    case GgufType::kI16: v.i = c.Read<int16_t>("value"); break;
    case GgufType::kU32: v.u = c.Read<uint32_t>("value"); break;
    case GgufType::kI32: v.i = c.Read<int32_t>("value"); break;
    case GgufType::kU64: v.u = c.Read<uint64_t>("value"); break;
    case GgufType::kI64: v.i = c.Read<int64_t>("value"); break;
    case GgufType::kF32: v.f = c.Read<float>("value"); break;
    case GgufType::kF64: v.f = c.Read<double>("value"); break;
    case GgufType::kBool: {
      uint8_t b = c.Read<uint8_t>("value");
      if (b > 1) f.Fail("key '" + key + "': bool value " + std::to_string(b) + " is neither 0 nor 1");
      v.u = b;
      break;
    }
    case GgufType::kString: v.str = c.ReadString("string value"); break;
    default: f.Fail("key '" + key + "': unknown value type");
  }
  return v;
}

}  // namespace

const TypeTraits* GetTypeTraits(uint32_t type_id) {
  if (type_id >= sizeof(kTraits) / sizeof(kTraits[0])) return nullptr;
  return kTraits[type_id].name ? &kTraits[type_id] : nullptr;
}

const char* TypeName(GgmlType type) {
  const TypeTraits* t = GetTypeTraits(static_cast<uint32_t>(type));
  return t ? t->name : "unknown";
}

const char* GgufTypeName(GgufType t) {
  static const char* kNames[] = {"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                 "bool", "string", "array", "u64", "i64", "f64"};
  auto k = static_cast<uint32_t>(t);
  return k < 13 ? kNames[k] : "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64:
      return true;
    default: return false;
  }
}

bool GgufValue::is_number() const {
  return is_integer() || type == GgufType::kBool || type == GgufType::kF32 ||
         type == GgufType::kF64;
}

int64_t GgufValue::AsInt() const {
  switch (type) {
    case GgufType::kI8: case GgufType::kI16: case GgufType::kI32: case GgufType::kI64: return i;
    case GgufType::kU8: case GgufType::kU16: case GgufType::kU32: case GgufType::kBool:
      return static_cast<int64_t>(u);
    case GgufType::kU64:
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        throw std::invalid_argument("u64 value out of range");
      }
      return static_cast<int64_t>(u);
    default: throw std::invalid_argument(std::string("expected an integer, found ") + GgufTypeName(type));
  }
}

double GgufValue::AsDouble() const {
  if (type == GgufType::kF32 || type == GgufType::kF64) return f;
  return static_cast<double>(AsInt());
}

double GgufValue::NumberAt(uint64_t k) const {
  const uint8_t* p = raw + k * ScalarSize(elem_type);
  auto load = [p](auto v) { std::memcpy(&v, p, sizeof(v)); return v; };
  switch (elem_type) {
    case GgufType::kU8: return load(uint8_t{});
    case GgufType::kI8: return load(int8_t{});
    case GgufType::kU16: return load(uint16_t{});
    case GgufType::kI16: return load(int16_t{});
    case GgufType::kU32: return load(uint32_t{});
    case GgufType::kI32: return load(int32_t{});
    case GgufType::kU64: return static_cast<double>(load(uint64_t{}));
    case GgufType::kI64: return static_cast<double>(load(int64_t{}));
    case GgufType::kF32: return load(float{});
    case GgufType::kF64: return load(double{});
    case GgufType::kBool: return load(uint8_t{}) != 0;
    default: throw std::invalid_argument("array does not hold numbers");
  }
}

int64_t GgufValue::IntegerAt(uint64_t k) const {
  const uint8_t* p = raw + k * ScalarSize(elem_type);
  auto load = [p](auto v) { std::memcpy(&v, p, sizeof(v)); return v; };
  switch (elem_type) {
    case GgufType::kI8: return load(int8_t{});
    case GgufType::kI16: return load(int16_t{});
    case GgufType::kI32: return load(int32_t{});
    case GgufType::kI64: return load(int64_t{});
    default: return static_cast<int64_t>(UnsignedAt(k));
  }
}

uint64_t GgufValue::UnsignedAt(uint64_t k) const {
  const uint8_t* p = raw + k * ScalarSize(elem_type);
  auto load = [p](auto v) { std::memcpy(&v, p, sizeof(v)); return v; };
  switch (elem_type) {
    case GgufType::kU8: case GgufType::kBool: return load(uint8_t{});
    case GgufType::kU16: return load(uint16_t{});
    case GgufType::kU32: return load(uint32_t{});
    case GgufType::kU64: return load(uint64_t{});
    default: return static_cast<uint64_t>(IntegerAt(k));
  }
}

GgufFile::GgufFile(const std::string& path) : path_(path) {
  try {
    file_ = std::make_unique<MappedFile>(path);
  } catch (const std::runtime_error& e) {
    throw GgufError(path, e.what());
  }
  size_ = file_->size();
  if (size_ < 24) {
    throw GgufError(path, "file of " + std::to_string(size_) + " bytes is too small for a GGUF header");
  }
  base_ = file_->data();
  Parse();  // on a throw, file_ unmaps and closes
}

GgufFile::~GgufFile() = default;

void GgufFile::Fail(const std::string& what) const { throw GgufError(path_, what); }

void GgufFile::Parse() {
  Cursor c(*this, base_, size_);
  uint32_t magic = c.Read<uint32_t>("magic");
  if (magic != kMagic) Fail("not a GGUF file (bad magic)");
  version_ = c.Read<uint32_t>("version");
  if (version_ == 1) Fail("GGUF version 1 is not supported (re-convert the model)");
  if (version_ != 2 && version_ != 3) Fail("unknown GGUF version " + std::to_string(version_));
  uint64_t n_tensors = c.Read<uint64_t>("tensor count");
  uint64_t n_kv = c.Read<uint64_t>("metadata count");
  // Each KV pair needs >= 13 bytes (key length, one key byte, type, a 1-byte value) and each
  // tensor info >= 29, so larger counts are lies; checking first keeps reserve() sane.
  if (n_kv > c.remaining() / 13) Fail("metadata count " + std::to_string(n_kv) + " exceeds file size");
  if (n_tensors > c.remaining() / 29) {
    Fail("tensor count " + std::to_string(n_tensors) + " exceeds file size");
  }

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string_view key = c.ReadString("metadata key");
    if (key.empty() || key.size() > kMaxKeyLength) Fail("metadata key " + std::to_string(k) + " has a bad length");
    std::string skey(key);
    uint32_t t = c.Read<uint32_t>("metadata type");
    if (!ValidType(t)) Fail("key '" + skey + "': unknown value type " + std::to_string(t));
    GgufValue v = ReadValue(*this, c, static_cast<GgufType>(t), skey, 0);
    if (kv_.count(skey)) Fail("duplicate metadata key '" + skey + "'");
    kv_.emplace(skey, std::move(v));
    key_order_.push_back(std::move(skey));
  }

  if (Find("general.alignment")) {
    const int64_t al = GetInt("general.alignment");
    if (al <= 0 || al > (1 << 20) || (al & (al - 1)) != 0) {
      Fail("general.alignment " + std::to_string(al) + " is not a power of two");
    }
    alignment_ = static_cast<uint64_t>(al);
  }

  struct RawInfo { uint32_t type; uint64_t offset; };
  std::vector<RawInfo> raw;
  tensors_.reserve(static_cast<size_t>(n_tensors));
  raw.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorView tv;
    std::string_view name = c.ReadString("tensor name");
    if (name.empty() || name.size() > 256) Fail("tensor " + std::to_string(k) + " has a bad name length");
    tv.name = std::string(name);
    uint32_t n_dims = c.Read<uint32_t>("tensor dims");
    if (n_dims < 1 || n_dims > 4) Fail("tensor '" + tv.name + "': " + std::to_string(n_dims) + " dimensions");
    tv.n_dims = static_cast<int>(n_dims);
    uint64_t total = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = c.Read<uint64_t>("tensor shape");
      if (ne == 0 || ne > (uint64_t{1} << 40)) {
        Fail("tensor '" + tv.name + "': dimension " + std::to_string(d) + " = " + std::to_string(ne));
      }
      if (total > (uint64_t{1} << 50) / ne) Fail("tensor '" + tv.name + "': element count overflows");
      total *= ne;
      tv.ne[d] = static_cast<int64_t>(ne);
    }
    uint32_t type = c.Read<uint32_t>("tensor type");
    const TypeTraits* tr = GetTypeTraits(type);
    if (!tr) Fail("tensor '" + tv.name + "': unknown or unsupported ggml type " + std::to_string(type));
    tv.type = static_cast<GgmlType>(type);
    if (tv.ne[0] % tr->block_size != 0) {
      Fail("tensor '" + tv.name + "': row of " + std::to_string(tv.ne[0]) +
           " values is not a multiple of the " + tr->name + " block size");
    }
    tv.nbytes = static_cast<size_t>(total / tr->block_size * tr->type_size);
    uint64_t offset = c.Read<uint64_t>("tensor offset");
    if (offset % alignment_ != 0) Fail("tensor '" + tv.name + "': offset " + std::to_string(offset) + " is not aligned");
    if (tensor_index_.count(tv.name)) Fail("duplicate tensor name '" + tv.name + "'");
    tensor_index_[tv.name] = tensors_.size();
    tensors_.push_back(std::move(tv));
    raw.push_back({type, offset});
  }

  // The data section starts at the next multiple of the alignment after the infos.
  uint64_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_start > size_) Fail("data section starts past the end of the file");
  uint64_t data_size = size_ - std::min<uint64_t>(data_start, size_);
  for (size_t k = 0; k < tensors_.size(); ++k) {
    TensorView& tv = tensors_[k];
    uint64_t off = raw[k].offset;
    if (off > data_size || tv.nbytes > data_size - off) {
      Fail("tensor '" + tv.name + "': data [" + std::to_string(off) + ", +" + std::to_string(tv.nbytes) +
           ") lies outside the data section of " + std::to_string(data_size) + " bytes (truncated file?)");
    }
    tv.data = base_ + data_start + off;
  }
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

int64_t GgufFile::GetInt(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (!v) Fail("required key '" + key + "' is missing");
  if (!v->is_integer() && v->type != GgufType::kBool) {
    Fail("key '" + key + "' should be an integer, found " + GgufTypeName(v->type));
  }
  try {
    return v->AsInt();
  } catch (const std::invalid_argument& e) {
    Fail("key '" + key + "': " + e.what());
  }
}

int64_t GgufFile::GetInt(const std::string& key, int64_t fallback) const {
  return Find(key) ? GetInt(key) : fallback;
}

double GgufFile::GetFloat(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (!v) Fail("required key '" + key + "' is missing");
  if (!v->is_number()) Fail("key '" + key + "' should be a number, found " + GgufTypeName(v->type));
  return v->AsDouble();
}

double GgufFile::GetFloat(const std::string& key, double fallback) const {
  return Find(key) ? GetFloat(key) : fallback;
}

std::string GgufFile::GetString(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (!v) Fail("required key '" + key + "' is missing");
  if (v->type != GgufType::kString) Fail("key '" + key + "' should be a string, found " + GgufTypeName(v->type));
  return std::string(v->str);
}

std::string GgufFile::GetString(const std::string& key, const std::string& fallback) const {
  return Find(key) ? GetString(key) : fallback;
}

bool GgufFile::GetBool(const std::string& key, bool fallback) const {
  const GgufValue* v = Find(key);
  if (!v) return fallback;
  if (v->type != GgufType::kBool) Fail("key '" + key + "' should be a bool, found " + GgufTypeName(v->type));
  return v->u != 0;
}

void GgufFile::Prefault(const TensorView& t) const { PrefaultPages(t.data, t.nbytes); }

void GgufFile::ReleasePages(const TensorView& t) const { pyengine::ReleasePages(t.data, t.nbytes); }

const TensorView* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace pyengine
