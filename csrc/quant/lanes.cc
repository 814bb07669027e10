#include "quant/lanes.h"

#include <cstring>

namespace pyengine {
namespace {

// Plane byte (for row 0; row r adds 4 r) and shift of every value of a unit of layout l.
struct PlaneBits {
  uint16_t lo_byte[256], hi_byte[256];
  uint8_t lo_shift[256], hi_shift[256];
};

PlaneBits PlanesOf(const BlockLayout& l) {
  PlaneBits p{};
  for (int k = 0; k < l.values; ++k) {
    int byte, shift;
    PlaneAt(l.lo.bits, 0, k, &byte, &shift);
    p.lo_byte[k] = static_cast<uint16_t>(byte);
    p.lo_shift[k] = static_cast<uint8_t>(shift);
    if (l.hi.bits) {
      PlaneAt(l.hi.bits, 0, k, &byte, &shift);
      p.hi_byte[k] = static_cast<uint16_t>(byte);
      p.hi_shift[k] = static_cast<uint8_t>(shift);
    }
  }
  return p;
}

}  // namespace

void RepackUnit(const BlockLayout& l, const uint8_t* const blocks[kLaneRows], uint8_t* unit) {
  static const PlaneBits* planes = [] {
    constexpr size_t n = sizeof(kBlockLayouts) / sizeof(kBlockLayouts[0]);
    auto* p = new PlaneBits[n];  // one per layout, for the life of the process
    for (size_t i = 0; i < n; ++i) p[i] = PlanesOf(kBlockLayouts[i]);
    return p;
  }();
  const PlaneBits& pb = planes[&l - kBlockLayouts];
  const BlockBits& bb = GetBlockBits(l);
  const LaneUnit lu = GetLaneUnit(l);
  std::memset(unit, 0, static_cast<size_t>(lu.bytes));
  uint8_t* lo = unit;
  uint8_t* hi = unit + lu.lo_bytes;
  uint16_t header[kLaneRows][128];  // header halfwords of each row
  uint8_t u[256];
  const int lo_mask = (1 << l.lo.bits) - 1;
  for (int r = 0; r < kLaneRows; ++r) {
    if (!blocks[r]) {
      std::memset(header[r], 0, sizeof(header[r]));
      continue;
    }
    DecodeValues(l, blocks[r], u);
    for (int k = 0; k < l.values; ++k) {
      lo[pb.lo_byte[k] + 4 * r] |= static_cast<uint8_t>((u[k] & lo_mask) << pb.lo_shift[k]);
    }
    if (l.hi.bits) {
      for (int k = 0; k < l.values; ++k) {
        hi[pb.hi_byte[k] + 4 * r] |= static_cast<uint8_t>((u[k] >> l.lo.bits) << pb.hi_shift[k]);
      }
    }
    uint8_t* hb = reinterpret_cast<uint8_t*>(header[r]);
    for (int i = 0; i < l.header_bytes; ++i) hb[i] = blocks[r][bb.header[i]];
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
