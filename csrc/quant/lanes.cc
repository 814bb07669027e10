#include "quant/lanes.h"

#include <cstring>

namespace pyengine {
namespace {

// The header bytes of a block (every byte that is not a quant), in block order.
int HeaderBytes(const BlockLayout& l, const uint8_t* block, uint8_t* out) {
  int n = 0;
  for (int i = 0; i < l.bytes; ++i) {
    if (!IsQuantByte(l, i)) out[n++] = block[i];
  }
  return n;
}

}  // namespace

void RepackUnit(const BlockLayout& l, const uint8_t* const blocks[kLaneRows], uint8_t* unit) {
  const LaneUnit lu = GetLaneUnit(l);
  std::memset(unit, 0, static_cast<size_t>(lu.bytes));
  uint8_t* lo = unit;
  uint8_t* hi = unit + lu.lo_bytes;
  uint16_t header[kLaneRows][128];  // header halfwords of each row
  uint8_t u[256];
  for (int r = 0; r < kLaneRows; ++r) {
    if (!blocks[r]) {
      std::memset(header[r], 0, sizeof(header[r]));
      continue;
    }
    DecodeValues(l, blocks[r], u);
    for (int k = 0; k < l.values; ++k) {
      int byte, shift;
      PlaneAt(l.lo.bits, r, k, &byte, &shift);
      lo[byte] = static_cast<uint8_t>(lo[byte] | (u[k] & ((1 << l.lo.bits) - 1)) << shift);
      if (l.hi.bits) {
        PlaneAt(l.hi.bits, r, k, &byte, &shift);
        hi[byte] = static_cast<uint8_t>(hi[byte] | (u[k] >> l.lo.bits) << shift);
      }
    }
    uint8_t bytes[256];
    HeaderBytes(l, blocks[r], bytes);
    std::memcpy(header[r], bytes, static_cast<size_t>(l.header_bytes));
  }
  uint16_t* h = reinterpret_cast<uint16_t*>(unit + lu.lo_bytes + lu.hi_bytes);
  for (int j = 0; j < l.header_bytes / 2; ++j) {
    for (int r = 0; r < kLaneRows; ++r) h[j * kLaneRows + r] = header[r][j];
  }
}

int LaneValue(const BlockLayout& l, const LaneUnit& lu, const uint8_t* unit, int r, int k) {
  int byte, shift;
  PlaneAt(l.lo.bits, r, k, &byte, &shift);
  int u = (unit[byte] >> shift) & ((1 << l.lo.bits) - 1);
  if (l.hi.bits) {
    PlaneAt(l.hi.bits, r, k, &byte, &shift);
    u |= ((unit[lu.lo_bytes + byte] >> shift) & ((1 << l.hi.bits) - 1)) << l.lo.bits;
  }
  return u;
}

void UnpackBlock(const BlockLayout& l, const uint8_t* unit, int r, uint8_t* block) {
  const LaneUnit lu = GetLaneUnit(l);
  uint8_t u[256];
  for (int k = 0; k < l.values; ++k) u[k] = static_cast<uint8_t>(LaneValue(l, lu, unit, r, k));
  uint8_t header[256];
  const uint16_t* h = LaneHeader(lu, unit);
  for (int j = 0; j < l.header_bytes / 2; ++j) std::memcpy(header + 2 * j, &h[j * kLaneRows + r], 2);
  int n = 0;
  for (int i = 0; i < l.bytes; ++i) {
    if (!IsQuantByte(l, i)) block[i] = header[n++];
  }
  EncodeValues(l, u, block);
}

}  // namespace pyengine
