// The lane layout of the quantized types of blocks.h: weights repacked at load so that 16 rows
// sit side by side and a 64-byte vector holds 4 consecutive values of each row, the layout an
// integer dot-product instruction reads (one 32-bit lane per row). The repack moves bits, never
// values: a unit (one block of each of 16 rows) takes exactly 16 blocks' bytes.
//
// A unit of a type whose blocks hold V values (32 or 256) is, for chunk c = k / 4 of 4 values
// and lane byte b = 4 * row + k % 4:
//   low plane   4-bit values: byte 64 * (c / 2) + b, nibble c % 2
//               2-bit values: byte 64 * (c / 4) + b, bits 2 * (c % 4)
//   high plane  1-bit values: byte 64 * (c / 8) + b, bit c % 8
//               2-bit values: byte 64 * (c / 4) + b, bits 2 * (c % 4)
//   header      the blocks' other bytes (scales, mins) as halfwords: halfword j of row r at
//               index 16 * j + r, so one vector load reads a scale of all 16 rows.
#pragma once

#include <cstdint>

#include "quant/blocks.h"

namespace pyengine {

constexpr int kLaneRows = 16;

// Byte and shift of value k (0..V) of lane row r in a plane of `bits`-bit values.
inline void PlaneAt(int bits, int r, int k, int* byte, int* shift) {
  const int c = k / 4, per_line = 8 / bits;  // chunks of 4 values that share one 64-byte line
  *byte = 64 * (c / per_line) + 4 * r + k % 4;
  *shift = bits * (c % per_line);
}

// Byte offsets of a unit's parts.
struct LaneUnit {
  int lo_bytes;      // the low plane, first
  int hi_bytes;      // the high plane (0 when the type has none), next
  int header_bytes;  // 16 rows' headers, last
  int bytes;         // the whole unit: 16 * block bytes
};
constexpr LaneUnit GetLaneUnit(const BlockLayout& l) {
  const int lo = l.values * kLaneRows * l.lo.bits / 8, hi = l.values * kLaneRows * l.hi.bits / 8;
  const int header = l.header_bytes * kLaneRows;
  return {lo, hi, header, lo + hi + header};
}

// Repacks one unit from 16 rows' blocks (a null block is a row past the matrix: all zero).
void RepackUnit(const BlockLayout& l, const uint8_t* const blocks[kLaneRows], uint8_t* unit);
// The block of row r (0..15) of a unit, as the file stored it.
void UnpackBlock(const BlockLayout& l, const uint8_t* unit, int r, uint8_t* block);
// The integer value u of index k of row r of a unit (before any table lookup).
int LaneValue(const BlockLayout& l, const LaneUnit& lu, const uint8_t* unit, int r, int k);
// The halfwords of the 16 rows' headers.
inline const uint16_t* LaneHeader(const LaneUnit& lu, const uint8_t* unit) {
  return reinterpret_cast<const uint16_t*>(unit + lu.lo_bytes + lu.hi_bytes);
}

// The scales of one unit, decoded for the kernels: with v the value of a weight of group g
// (BlockLayout::group values) in row r,
//   w = dsc[g][r] * v - dmn[g][r],   dmn = the block's min, or offset * dsc,
// so against a Q8_0 activation block (d, q) the group contributes
// dsc * d * (v . q) - dmn * d * sum(q): an exact integer dot product, then two float terms.
struct LaneScales {
  float dsc[16][kLaneRows];
  float dmn[16][kLaneRows];
};

// Floats of one unit's decoded scales: the groups' dsc, then their dmn.
constexpr int LaneScaleFloats(const BlockLayout& l) { return 2 * (l.values / l.group) * kLaneRows; }

}  // namespace pyengine
