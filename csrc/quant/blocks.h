// The block layouts of GGUF's quantized weight types, described as data: where each value's bits
// sit inside a block, and which bytes are the block's scales ("header"). One description serves
// dequantization, the load-time repack into the kernels' lane layout, and its inverse.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace pyengine {

// IQ4_NL / IQ4_XS: a 4-bit index into this table of int8 values.
constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

// One bit field of a value inside a block: the value of index k (0 <= k < block values) keeps
// `bits` bits at byte Byte(k) of the block, from bit Shift(k) up.
enum class FieldMap {
  kNone,
  kNib32,    // Q4_0, Q4_1, Q5_*, IQ4_*: per 32 values 16 bytes, nibble (k % 32) / 16 of byte k % 16
  kBit32,    // Q5_0 / Q5_1 high bit: bit k of the 32-bit little-endian word at off
  kNib64,    // Q4_K, Q5_K: per 64 values 32 bytes, nibble (k % 64) / 32 of byte k % 32
  kNibK6,    // Q6_K low nibbles: per 128 values 64 bytes (see blocks.cc)
  kCrumbK,   // Q2_K, Q3_K low / Q6_K high 2 bits: per 128 values 32 bytes, crumb (k % 128) / 32
  kBitK,     // Q3_K, Q5_K high bit: byte off + k % 32, bit k / 32
};

struct Field {
  FieldMap map = FieldMap::kNone;
  int off = 0;   // first byte of the field inside the block
  int bits = 0;  // bits it holds of each value
};

// How a type's integer value u (0 <= u < 2^(lo.bits + hi.bits), u = lo | hi << lo.bits) becomes
// a weight: per group of `group` values that share a scale,
//   w = scale * (v - offset) - min,   v = u, or kIq4nlValues[u] + 128 for the table types,
// with scale and min taken from the block's header (lane_scales.h decodes them).
struct BlockLayout {
  GgmlType type;
  int values;        // values per block (32 or 256)
  int bytes;         // bytes per block
  Field lo, hi;      // the value's low bits and (optionally) high bits
  int header_bytes;  // bytes that are not quants (scales, mins), even
  bool lut;          // u indexes kIq4nlValues
  int offset;        // integer subtracted from v
  int group;         // values per scale: 32, or 16 (Q2_K, Q3_K, Q6_K)
  bool min;          // a min is subtracted (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K)
};

// Offsets follow the block structs of GGUF (ggml-common.h), e.g. Q4_K = {fp16 d, fp16 dmin,
// u8 scales[12], u8 qs[128]}. Headers are every other byte, in block order.
inline constexpr BlockLayout kBlockLayouts[] = {
    // type, values, bytes, low bits' field, high bits' field, header bytes, table, offset,
    // group, min
    {GgmlType::kQ4_0, 32, 18, {FieldMap::kNib32, 2, 4}, {}, 2, false, 8, 32, false},
    {GgmlType::kQ4_1, 32, 20, {FieldMap::kNib32, 4, 4}, {}, 4, false, 0, 32, true},
    {GgmlType::kQ5_0, 32, 22, {FieldMap::kNib32, 6, 4}, {FieldMap::kBit32, 2, 1}, 2, false, 16, 32, false},
    {GgmlType::kQ5_1, 32, 24, {FieldMap::kNib32, 8, 4}, {FieldMap::kBit32, 4, 1}, 4, false, 0, 32, true},
    {GgmlType::kIQ4_NL, 32, 18, {FieldMap::kNib32, 2, 4}, {}, 2, true, 128, 32, false},
    {GgmlType::kQ2_K, 256, 84, {FieldMap::kCrumbK, 16, 2}, {}, 20, false, 0, 16, true},
    {GgmlType::kQ3_K, 256, 110, {FieldMap::kCrumbK, 32, 2}, {FieldMap::kBitK, 0, 1}, 14, false, 4, 16, false},
    {GgmlType::kQ4_K, 256, 144, {FieldMap::kNib64, 16, 4}, {}, 16, false, 0, 32, true},
    {GgmlType::kQ5_K, 256, 176, {FieldMap::kNib64, 48, 4}, {FieldMap::kBitK, 16, 1}, 16, false, 0, 32, true},
    {GgmlType::kQ6_K, 256, 210, {FieldMap::kNibK6, 0, 4}, {FieldMap::kCrumbK, 128, 2}, 18, false, 32, 16, false},
    {GgmlType::kIQ4_XS, 256, 136, {FieldMap::kNib32, 8, 4}, {}, 8, true, 128, 32, false},
};

// The layout of a quantized type the lane kernels compute, or nullptr (F32, F16, BF16, Q8_0 and
// unknown types have kernels of their own or none). constexpr: kernels specialise on it.
constexpr const BlockLayout* GetBlockLayout(GgmlType type) {
  for (const BlockLayout& l : kBlockLayouts) {
    if (l.type == type) return &l;
  }
  return nullptr;
}

// The value u of index k of one block.
int BlockValue(const BlockLayout& l, const uint8_t* block, int k);
// Stores u at index k of one block (the field's bits must be zero before).
void SetBlockValue(const BlockLayout& l, uint8_t* block, int k, int u);
// True for bytes of the block that hold quants (the rest is the header, in block order).
bool IsQuantByte(const BlockLayout& l, int byte);

// Where every value's bits and every header byte sit in a block of one type, precomputed once
// (the load-time repack and the dequantization walk these tables instead of the field maps).
struct BlockBits {
  uint8_t lo_shift[256], hi_shift[256];
  uint16_t lo_byte[256], hi_byte[256];
  uint16_t header[256];  // block offsets of the header bytes, in block order
};
const BlockBits& GetBlockBits(const BlockLayout& l);

// u[0..values) = every value of one block (DecodeValues), or the block's quant bytes from u
// (EncodeValues: the quant bytes are overwritten, the header is left alone).
void DecodeValues(const BlockLayout& l, const uint8_t* block, uint8_t* u);
void EncodeValues(const BlockLayout& l, const uint8_t* u, uint8_t* block);

// The 6-bit scale and min of sub-block j (0..7) packed in 12 bytes (Q4_K, Q5_K).
inline void ScaleMinK4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// The 6-bit scale of sub-block j (0..15) packed in 12 bytes (Q3_K), before its -32 bias.
inline int ScaleK3(const uint8_t* s, int j) {
  const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
  return lo | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4;
}

// The 6-bit scale of sub-block j (0..7) of IQ4_XS, before its -32 bias.
inline int ScaleIq4xs(uint16_t scales_h, const uint8_t* scales_l, int j) {
  return ((scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | ((scales_h >> (2 * j)) & 3) << 4;
}

}  // namespace pyengine
