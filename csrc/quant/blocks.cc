#include "quant/blocks.h"

namespace pyengine {
namespace {

// Byte and bit position of value k's field.
void Locate(const Field& f, int k, int* byte, int* shift) {
  switch (f.map) {
    case FieldMap::kNib32: *byte = f.off + 16 * (k / 32) + k % 16; *shift = 4 * (k % 32 / 16); return;
    case FieldMap::kBit32: *byte = f.off + k / 8; *shift = k % 8; return;
    case FieldMap::kNib64: *byte = f.off + 32 * (k / 64) + k % 32; *shift = 4 * (k % 64 / 32); return;
    case FieldMap::kNibK6: {
      // Per 128 values: quarter q = k % 128 / 32 sits in bytes 64 n + (q odd ? 32 : 0) + k % 32,
      // low nibble for q < 2, high for q >= 2.
      const int q = k % 128 / 32;
      *byte = f.off + 64 * (k / 128) + 32 * (q % 2) + k % 32;
      *shift = 4 * (q / 2);
      return;
    }
    case FieldMap::kCrumbK: *byte = f.off + 32 * (k / 128) + k % 32; *shift = 2 * (k % 128 / 32); return;
    case FieldMap::kBitK: *byte = f.off + k % 32; *shift = k / 32; return;
    case FieldMap::kNone: break;
  }
  *byte = 0;
  *shift = 0;
}

int FieldValue(const Field& f, const uint8_t* block, int k) {
  if (f.map == FieldMap::kNone) return 0;
  int byte, shift;
  Locate(f, k, &byte, &shift);
  return (block[byte] >> shift) & ((1 << f.bits) - 1);
}

}  // namespace

int BlockValue(const BlockLayout& l, const uint8_t* block, int k) {
  return FieldValue(l.lo, block, k) | FieldValue(l.hi, block, k) << l.lo.bits;
}

void SetBlockValue(const BlockLayout& l, uint8_t* block, int k, int u) {
  int byte, shift;
  Locate(l.lo, k, &byte, &shift);
  block[byte] = static_cast<uint8_t>(block[byte] | (u & ((1 << l.lo.bits) - 1)) << shift);
  if (l.hi.map != FieldMap::kNone) {
    Locate(l.hi, k, &byte, &shift);
    block[byte] = static_cast<uint8_t>(block[byte] | (u >> l.lo.bits) << shift);
  }
}

const BlockBits& GetBlockBits(const BlockLayout& l) {
  static const auto* tables = [] {
    constexpr size_t n = sizeof(kBlockLayouts) / sizeof(kBlockLayouts[0]);
    auto* t = new BlockBits[n]();  // one per layout, for the life of the process
    for (size_t i = 0; i < n; ++i) {
      const BlockLayout& bl = kBlockLayouts[i];
      for (int k = 0; k < bl.values; ++k) {
        int byte, shift;
        Locate(bl.lo, k, &byte, &shift);
        t[i].lo_byte[k] = static_cast<uint16_t>(byte);
        t[i].lo_shift[k] = static_cast<uint8_t>(shift);
        Locate(bl.hi, k, &byte, &shift);
        t[i].hi_byte[k] = static_cast<uint16_t>(byte);
        t[i].hi_shift[k] = static_cast<uint8_t>(shift);
      }
      int h = 0;
      for (int b = 0; b < bl.bytes; ++b) {
        if (!IsQuantByte(bl, b)) t[i].header[h++] = static_cast<uint16_t>(b);
      }
    }
    return t;
  }();
  return tables[&l - kBlockLayouts];
}

void DecodeValues(const BlockLayout& l, const uint8_t* block, uint8_t* u) {
  const BlockBits& b = GetBlockBits(l);
  const int lo_mask = (1 << l.lo.bits) - 1, hi_mask = (1 << l.hi.bits) - 1;
  for (int k = 0; k < l.values; ++k) {
    int v = (block[b.lo_byte[k]] >> b.lo_shift[k]) & lo_mask;
    if (l.hi.bits) v |= ((block[b.hi_byte[k]] >> b.hi_shift[k]) & hi_mask) << l.lo.bits;
    u[k] = static_cast<uint8_t>(v);
  }
}

void EncodeValues(const BlockLayout& l, const uint8_t* u, uint8_t* block) {
  for (int i = 0; i < l.bytes; ++i) {
    if (IsQuantByte(l, i)) block[i] = 0;
  }
  for (int k = 0; k < l.values; ++k) SetBlockValue(l, block, k, u[k]);
}

bool IsQuantByte(const BlockLayout& l, int byte) {
  auto in = [&](const Field& f, int n) { return f.map != FieldMap::kNone && byte >= f.off && byte < f.off + n; };
  const int lo_bytes = l.values * l.lo.bits / 8, hi_bytes = l.values * l.hi.bits / 8;
  return in(l.lo, lo_bytes) || in(l.hi, hi_bytes);
}

}  // namespace pyengine
