#include "quant/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "quant/blocks.h"
#include "quant/cpu_features.h"
#include "quant/formats.h"
#include "quant/lanes.h"
#include "core/os_memory.h"
#include "core/thread_pool.h"

namespace pyengine {
namespace {

}  // namespace

void PackedMatrix::Free::operator()(void* p) const { AlignedFree(p); }

static_assert(kLaneRows == kQ8Rows && kQ8Rows == kFloatRows, "every layout groups 16 rows");

size_t PackedMatrix::GroupBytes(const TensorView& t) {
  if (const BlockLayout* l = GetBlockLayout(t.type)) {
    return static_cast<size_t>(t.cols() / l->values * GetLaneUnit(*l).bytes);
  }
  if (t.type == GgmlType::kQ8_0) return static_cast<size_t>(t.cols() / kQ8_0Block) * sizeof(Q8x16Block);
  return static_cast<size_t>(t.cols() * kFloatRows) * (t.type == GgmlType::kF32 ? 4 : 2);
}

size_t PackedMatrix::PackedBytes(const TensorView& t) {
  const size_t bytes = static_cast<size_t>((t.rows() + kLaneRows - 1) / kLaneRows) * GroupBytes(t);
  return (bytes + 63) / 64 * 64;
}

PackedMatrix PackedMatrix::Unpacked(const TensorView& t, uint8_t* dst) {
  PackedMatrix m;
  m.src_ = t;
  m.data_ = dst;
  return m;
}

void PackedMatrix::PackRows(const TensorView& t, int64_t r0, int64_t r1, ThreadPool& pool, uint8_t* dst) {
  const TensorView slice = t.Rows(r0, r1);
  dst += static_cast<size_t>(r0 / kLaneRows) * GroupBytes(t);
  if (GetBlockLayout(t.type)) {
    PackLanes(slice, pool, dst);
  } else if (t.type == GgmlType::kQ8_0) {
    PackQ8(slice, pool, dst);
  } else {
    PackFloat(slice, pool, dst);
  }
}

PackedMatrix::PackedMatrix(const TensorView& t, ThreadPool& pool, uint8_t* dst) : src_(t) {
  if (!dst) {
    // 64-byte alignment: every group's data starts on a cache line.
    void* mem = AlignedAlloc(64, PackedBytes(t));
    if (!mem) throw std::bad_alloc();
    owned_.reset(static_cast<uint8_t*>(mem));
    dst = owned_.get();
  }
  data_ = dst;
  PackRows(t, 0, t.rows(), pool, dst);
}

void PackedMatrix::PackQ8(const TensorView& t, ThreadPool& pool, uint8_t* dst_bytes) {
  const int64_t rows = t.rows(), nb = t.cols() / kQ8_0Block;
  const int64_t groups = (rows + kQ8Rows - 1) / kQ8Rows;
  Q8x16Block* out = reinterpret_cast<Q8x16Block*>(dst_bytes);
  ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t b = 0; b < nb; ++b) {
        Q8x16Block& dst = out[g * nb + b];
        std::memset(&dst, 0, sizeof(dst));  // rows past the end: scale 0, quants 0 (+128 below)
        for (int r = 0; r < kQ8Rows && g * kQ8Rows + r < rows; ++r) {
          const uint8_t* src = t.row(g * kQ8Rows + r) + b * sizeof(BlockQ8_0);
          std::memcpy(&dst.d[r], src, 2);
          for (int c = 0; c < 8; ++c) std::memcpy(dst.q + c * 64 + r * 4, src + 2 + 4 * c, 4);
        }
        // Bias every quant to unsigned: w + 128 == w ^ 0x80 for int8 w.
        for (int i = 0; i < kQ8Rows * 32; i += 8) {
          uint64_t v;
          std::memcpy(&v, dst.q + i, 8);
          v ^= 0x8080808080808080ull;
          std::memcpy(dst.q + i, &v, 8);
        }
      }
    }
  });
}

void PackedMatrix::PackLanes(const TensorView& t, ThreadPool& pool, uint8_t* dst) {
  const BlockLayout& l = *GetBlockLayout(t.type);
  const int64_t rows = t.rows(), units = t.cols() / l.values;
  const int64_t groups = (rows + kLaneRows - 1) / kLaneRows;
  const int unit_bytes = GetLaneUnit(l).bytes;
  ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t u = 0; u < units; ++u) {
        const uint8_t* blocks[kLaneRows];
        for (int r = 0; r < kLaneRows; ++r) {
          const int64_t row = g * kLaneRows + r;
          blocks[r] = row < rows ? t.row(row) + u * l.bytes : nullptr;
        }
        RepackUnit(l, blocks, dst + (g * units + u) * unit_bytes);
      }
    }
  });
}

WeightArena::WeightArena(size_t bytes) {
  constexpr size_t kLargePage = size_t{1} << 21;
  bytes = (std::max<size_t>(bytes, 1) + kLargePage - 1) / kLargePage * kLargePage;
  void* mem = AlignedAlloc(kLargePage, bytes);
  if (!mem) throw std::bad_alloc();
  AdviseHugePages(mem, bytes);
  mem_.reset(static_cast<uint8_t*>(mem));
}

void WeightArena::Free::operator()(void* p) const { AlignedFree(p); }

namespace {

// Transposes 16 rows of E-typed values into [cols][16]; rows past `valid` are zero.
template <typename E>
void InterleaveGroup(const TensorView& t, int64_t g, int64_t valid, E* dst) {
  const int64_t cols = t.cols();
  const E* src[kFloatRows];
  for (int r = 0; r < kFloatRows; ++r) {
    src[r] = r < valid ? reinterpret_cast<const E*>(t.row(g * kFloatRows + r)) : nullptr;
  }
  for (int64_t k = 0; k < cols; ++k) {
    for (int r = 0; r < kFloatRows; ++r) dst[k * kFloatRows + r] = src[r] ? src[r][k] : E{};
  }
}

}  // namespace

void PackedMatrix::PackFloat(const TensorView& t, ThreadPool& pool, uint8_t* out) {
  const int64_t rows = t.rows(), cols = t.cols(), groups = (rows + kFloatRows - 1) / kFloatRows;
  const bool f32 = t.type == GgmlType::kF32;
  ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t valid = std::min<int64_t>(kFloatRows, rows - g * kFloatRows);
      if (f32) {
        InterleaveGroup(t, g, valid, reinterpret_cast<float*>(out) + g * cols * kFloatRows);
      } else {
        InterleaveGroup(t, g, valid, reinterpret_cast<uint16_t*>(out) + g * cols * kFloatRows);
      }
    }
  });
}

void PackedMatrix::Row(int64_t r, float* out) const {
  if (const BlockLayout* l = GetBlockLayout(type())) {
    // Each block back in the file's form, then the file's own dequantization: bit-identical
    // to reading the file.
    const int unit_bytes = GetLaneUnit(*l).bytes;
    const int64_t units = cols() / l->values;
    const uint8_t* g = data_ + (r / kLaneRows) * units * unit_bytes;
    uint8_t block[256];
    for (int64_t u = 0; u < units; ++u) {
      UnpackBlock(*l, g + u * unit_bytes, static_cast<int>(r % kLaneRows), block);
      DequantizeRow(type(), block, out + u * l->values, l->values);
    }
    return;
  }
  if (type() != GgmlType::kQ8_0) {
    const int64_t lane = r % kFloatRows, cols = this->cols();
    const size_t elem = type() == GgmlType::kF32 ? 4 : 2;
    const uint8_t* g = data_ + static_cast<size_t>((r / kFloatRows) * cols * kFloatRows) * elem;
    for (int64_t k = 0; k < cols; ++k) DequantizeRow(type(), g + (k * kFloatRows + lane) * elem, out + k, 1);
    return;
  }
  const int64_t nb = cols() / kQ8_0Block, lane = r % kQ8Rows;
  const Q8x16Block* g = q8() + (r / kQ8Rows) * nb;
  for (int64_t b = 0; b < nb; ++b) {
    const float d = Fp16ToFp32(g[b].d[lane]);
    for (int k = 0; k < 32; ++k) {
      out[b * 32 + k] = d * static_cast<float>(static_cast<int>(g[b].q[(k / 4) * 64 + lane * 4 + k % 4]) - 128);
    }
  }
}

void MatMulInput::Set(const float* x, int64_t n_tok, int64_t cols) {
  x_ = x;
  n_tok_ = n_tok;
  cols_ = cols;
  q8_isa_ = tiles_kind_ = tiles_isa_ = i16_isa_ = amx_isa_ = -1;
}

const XQ8Block* MatMulInput::Q8(const KernelSet& k, ThreadPool& pool) {
  if (q8_isa_ != static_cast<int>(k.level)) {
    const int64_t nb = cols_ / kQ8_0Block;
    q8_.resize(static_cast<size_t>(n_tok_ * nb));
    XQ8Block* out = q8_.data();
    ParallelRanges(pool, n_tok_, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) k.quantize_q8(x_ + t * cols_, cols_, out + t * nb);
    });
    q8_isa_ = static_cast<int>(k.level);
  }
  return q8_.data();
}

const XQ8Tile16* MatMulInput::AmxTiles(const KernelSet& k, ThreadPool& pool) {
  if (amx_isa_ != static_cast<int>(k.level)) {
    const XQ8Block* x = Q8(k, pool);
    const int64_t nb = cols_ / kQ8_0Block, tiles = n_tok_ / kAmxTokens;
    amx_.resize(static_cast<size_t>(tiles * nb));
    XQ8Tile16* out = amx_.data();
    ParallelRanges(pool, tiles, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t b = 0; b < nb; ++b) {
          XQ8Tile16& o = out[i * nb + b];
          for (int t = 0; t < kAmxTokens; ++t) {
            const XQ8Block& xb = x[(i * kAmxTokens + t) * nb + b];
            std::memcpy(o.q[t], xb.q, sizeof(o.q[t]));
            o.d[t] = xb.d;
            o.dsum[t] = xb.dsum;
            o.bias[t] = 128 * xb.sum();
          }
        }
      }
    });
    amx_isa_ = static_cast<int>(k.level);
  }
  return amx_.data();
}

const float* MatMulInput::Tiles(const KernelSet& k, GgmlType type, ThreadPool& pool) {
  if (tiles_kind_ != static_cast<int>(type) || tiles_isa_ != static_cast<int>(k.level)) {
    // The reference converts activations to the weights' 16-bit type first.
    const XRound round = type == GgmlType::kF16    ? XRound::kF16
                         : type == GgmlType::kBF16 ? XRound::kBF16
                                                   : XRound::kNone;
    tiles_.resize(static_cast<size_t>(n_tok_ * cols_));
    float* out = tiles_.data();  // [n_tok, cols] in tiles of k.x_tile tokens
    const int64_t tiles = (n_tok_ + k.x_tile - 1) / k.x_tile;
    ParallelRanges(pool, tiles, 4, [&](int64_t a, int64_t b) {
      k.pack_x(x_, n_tok_, cols_, a * k.x_tile, std::min(n_tok_, b * k.x_tile), round, out);
    });
    tiles_kind_ = static_cast<int>(type);
    tiles_isa_ = static_cast<int>(k.level);
  }
  return tiles_.data();
}

void MatMulInput::I16(const KernelSet& k, ThreadPool& pool, const int16_t** xq, const float** xs) {
  if (i16_isa_ != static_cast<int>(k.level)) {
    const int64_t nblk = cols_ / kI16Block;
    i16_.resize(static_cast<size_t>(n_tok_ * cols_));
    i16_scales_.resize(static_cast<size_t>(n_tok_ * nblk));
    int16_t* q = i16_.data();
    float* sc = i16_scales_.data();
    ParallelRanges(pool, n_tok_, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) k.quantize_i16(x_ + t * cols_, cols_, q + t * cols_, sc + t * nblk);
    });
    i16_isa_ = static_cast<int>(k.level);
  }
  *xq = i16_.data();
  *xs = i16_scales_.data();
}

float* MatMulInput::LaneScratch(int n_threads) {
  lane_scratch_.resize(static_cast<size_t>(n_threads * LaneScratchFloats(cols_)));
  return lane_scratch_.data();
}

void MatMulInput::I16Scratch(int n_threads, int32_t** wq, float** ws) {
  const int64_t nblk = cols_ / kI16Block;
  panel_.resize(static_cast<size_t>(n_threads * nblk * 8 * kFloatRows));
  panel_scales_.resize(static_cast<size_t>(n_threads * nblk * kFloatRows));
  *wq = panel_.data();
  *ws = panel_scales_.data();
}

void MatMul(const PackedMatrix& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool) {
  MatMulInput in;
  in.Set(x, n_tok, w.cols());
  MatMul(w, in, y, pool);
}

namespace {

// Whether a product of n_tok tokens with lane layout l goes through k.gemm_lanes_amx (its
// whole tiles of 16 tokens; the rest through gemm_lanes). Types whose scales cover 16 values
// stay with gemm_lanes: their tile products would be a quarter of the instruction's depth,
// and measured slower than vpdpbusd.
bool UsesAmx(const KernelSet& k, const BlockLayout& l, int64_t n_tok) {
  return k.gemm_lanes_amx && n_tok >= kAmxTokens && l.group == 32 && AmxActive();
}

// Whether a product of n_tok tokens with Q8_0 weights goes through k.gemm_q8_amx (likewise).
bool UsesAmxQ8(const KernelSet& k, int64_t n_tok) {
  return k.gemm_q8_amx && n_tok >= kAmxTokens && AmxActive();
}

// Row groups [g0, g1) of a Q8_0 product, split as LaneProduct splits its tokens.
void Q8Product(const KernelSet& k, const PackedMatrix& w, const XQ8Block* x, const XQ8Tile16* xt,
               int64_t n_tok, int64_t g0, int64_t g1, float* y) {
  const int64_t rows = w.rows(), nb = w.cols() / kQ8_0Block;
  int64_t done = 0;
  if (xt) {
    const int64_t tiles = n_tok / kAmxTokens;
    k.gemm_q8_amx(w.q8(), nb, xt, tiles, g0, g1, rows, y, rows);
    done = tiles * kAmxTokens;
  }
  if (done < n_tok) k.gemm_q8(w.q8(), nb, x + done * nb, n_tok - done, g0, g1, rows, y + done * rows, rows);
}

// Row groups [g0, g1) of a lane-layout product: whole tiles of 16 tokens through the AMX
// kernel when xt (the input's AmxTiles) is given, the other tokens through gemm_lanes.
void LaneProduct(const KernelSet& k, const BlockLayout& l, const PackedMatrix& w, const XQ8Block* x,
                 const XQ8Tile16* xt, int64_t n_tok, int64_t g0, int64_t g1, float* y,
                 float* scratch) {
  const int64_t rows = w.rows(), cols = w.cols();
  int64_t done = 0;
  if (xt) {
    const int64_t tiles = n_tok / kAmxTokens;
    k.gemm_lanes_amx(l, w.data(), cols, xt, tiles, g0, g1, rows, y, rows, scratch);
    done = tiles * kAmxTokens;
  }
  if (done < n_tok) {
    k.gemm_lanes(l, w.data(), cols, x + done * (cols / kQ8_0Block), n_tok - done, g0, g1, rows,
                 y + done * rows, rows, scratch);
  }
}

bool IsFloat(GgmlType t) { return t == GgmlType::kF16 || t == GgmlType::kBF16 || t == GgmlType::kF32; }

// Whether a product of F16 weights takes the integer prompt path (see kernel_set.h).
bool UsesI16(const KernelSet& k, const PackedMatrix& w, int64_t n_tok) {
  return w.type() == GgmlType::kF16 && k.gemm_f16_i16 && n_tok >= kI16MinTokens &&
         w.cols() % kI16Block == 0;
}

// The float kernels work on pairs of row groups (the AVX-512 one takes two at once).
int64_t FloatPairs(const PackedMatrix& w) {
  return ((w.rows() + kFloatRows - 1) / kFloatRows + 1) / 2;
}

// Rows of pairs [p0, p1) of float weights w times the activation tiles xp.
void FloatPairsProduct(const KernelSet& k, const PackedMatrix& w, const float* xp, int64_t n_tok,
                       int64_t p0, int64_t p1, float* y) {
  const int64_t rows = w.rows(), cols = w.cols(), groups = (rows + kFloatRows - 1) / kFloatRows;
  const int64_t g0 = 2 * p0, g1 = std::min(groups, 2 * p1);
  if (w.type() == GgmlType::kF32) {
    k.gemm_f32(reinterpret_cast<const float*>(w.data()), cols, xp, n_tok, g0, g1, rows, y, rows);
  } else {
    auto gemm = w.type() == GgmlType::kF16 ? k.gemm_f16 : k.gemm_bf16;
    gemm(reinterpret_cast<const uint16_t*>(w.data()), cols, xp, n_tok, g0, g1, rows, y, rows);
  }
}

}  // namespace

void MatMul(const PackedMatrix& w, MatMulInput& in, float* y, ThreadPool& pool) {
  const KernelSet& k = ActiveKernels();  // one snapshot for the whole product
  const int64_t rows = w.rows(), cols = w.cols(), n_tok = in.n_tok();
  if (in.cols() != cols) throw std::invalid_argument("MatMul: input width does not match the matrix");
  if (const BlockLayout* l = GetBlockLayout(w.type())) {
    // Levels without lane kernels of their own use the reference's.
    const KernelSet& lk = k.gemm_lanes ? k : ScalarKernels();
    const XQ8Block* x = in.Q8(lk, pool);
    const XQ8Tile16* xt = UsesAmx(lk, *l, n_tok) ? in.AmxTiles(lk, pool) : nullptr;
    const int64_t groups = (rows + kLaneRows - 1) / kLaneRows;
    float* scratch = in.LaneScratch(pool.size());
    ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1, int thread) {
      LaneProduct(lk, *l, w, x, xt, n_tok, g0, g1, y, scratch + thread * LaneScratchFloats(cols));
    });
    return;
  }
  switch (w.type()) {
    case GgmlType::kQ8_0: {
      const int64_t nb = cols / kQ8_0Block;
      const XQ8Block* xq = in.Q8(k, pool);
      const XQ8Tile16* xt = UsesAmxQ8(k, n_tok) ? in.AmxTiles(k, pool) : nullptr;
      const int64_t groups = (rows + kQ8Rows - 1) / kQ8Rows;
      ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1) {
        Q8Product(k, w, xq, xt, n_tok, g0, g1, y);
      });
      return;
    }
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kF32: {
      const int64_t groups = (rows + kFloatRows - 1) / kFloatRows;
      if (UsesI16(k, w, n_tok)) {
        // Prompts: integer dot products, twice the float multiply rate (see kernel_set.h).
        const int16_t* xq;
        const float* xs;
        in.I16(k, pool, &xq, &xs);
        int32_t* wq;
        float* ws;
        in.I16Scratch(pool.size(), &wq, &ws);
        const int64_t nblk = cols / kI16Block;
        ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1, int thread) {
          k.gemm_f16_i16(reinterpret_cast<const uint16_t*>(w.data()), cols, xq, xs, n_tok, g0, g1,
                         rows, y, rows, wq + thread * nblk * 8 * kFloatRows,
                         ws + thread * nblk * kFloatRows);
        });
        return;
      }
      const float* xp = in.Tiles(k, w.type(), pool);
      ParallelRanges(pool, FloatPairs(w), 1, [&](int64_t p0, int64_t p1) {
        FloatPairsProduct(k, w, xp, n_tok, p0, p1, y);
      });
      return;
    }
    default:
      throw std::invalid_argument(std::string("no kernel for weight type ") + TypeName(w.type()));
  }
}

void MatMulMany(const MatMulJob* jobs, int n_jobs, ThreadPool& pool) {
  const KernelSet& k = ActiveKernels();
  struct Part {
    const MatMulJob* job;
    const BlockLayout* layout;  // lane kernels; null: Q8_0 or a float type
    const KernelSet* ks;
    const XQ8Block* x;          // the Q8_0 form of the input (lane kernels, Q8_0)
    const XQ8Tile16* xt;        // its AMX tiles (where the product uses them); null otherwise
    const float* xp;            // its tiles (float types); null otherwise
    float* scratch;
    int64_t first, groups;  // the part's units (row groups; pairs of them for the float types)
                            // are [first, first + groups) of all
  };
  // Called for every layer of every step from the one thread that runs the model: the list is
  // kept, so a step allocates nothing.
  thread_local std::vector<Part> kept;
  std::vector<Part>& parts = kept;  // the pool's threads read this thread's list
  parts.clear();
  int64_t total = 0;
  for (int j = 0; j < n_jobs; ++j) {
    const MatMulJob& job = jobs[j];
    const PackedMatrix& w = *job.w;
    if (job.in->cols() != w.cols()) {
      throw std::invalid_argument("MatMul: input width does not match the matrix");
    }
    const BlockLayout* l = GetBlockLayout(w.type());
    const KernelSet* ks = l ? (k.gemm_lanes ? &k : &ScalarKernels()) : &k;
    // An input serves every part in one form of each kind; one that two kernel levels (or two
    // float types' roundings) would build twice, the second overwriting the first, goes through
    // MatMul on its own, as do F16 prompts (the integer path).
    const bool is_float = IsFloat(w.type());
    bool clash = false;
    for (const Part& p : parts) {
      if (p.job->in != job.in || (p.xp != nullptr) != is_float) continue;
      clash |= is_float ? p.job->w->type() != w.type() : p.ks->level != ks->level;
    }
    if (clash || !(l || w.type() == GgmlType::kQ8_0 || is_float) ||
        (is_float && UsesI16(k, w, job.in->n_tok()))) {
      MatMul(w, *job.in, job.y, pool);
      continue;
    }
    if (is_float) {
      parts.push_back({&job, nullptr, &k, nullptr, nullptr, job.in->Tiles(k, w.type(), pool),
                       nullptr, total, FloatPairs(w)});
      total += parts.back().groups;
      continue;
    }
    const bool amx = l ? UsesAmx(*ks, *l, job.in->n_tok()) : UsesAmxQ8(*ks, job.in->n_tok());
    Part p{&job, l, ks, job.in->Q8(*ks, pool), amx ? job.in->AmxTiles(*ks, pool) : nullptr, nullptr,
           nullptr, total, 0};
    if (l) {
      p.scratch = job.in->LaneScratch(pool.size());
      p.groups = (w.rows() + kLaneRows - 1) / kLaneRows;
    } else {
      p.groups = (w.rows() + kQ8Rows - 1) / kQ8Rows;
    }
    total += p.groups;
    parts.push_back(p);
  }
  ParallelRanges(pool, total, 1, [&](int64_t a, int64_t b, int thread) {
    for (const Part& p : parts) {
      const int64_t g0 = std::max(a, p.first) - p.first;
      const int64_t g1 = std::min(b, p.first + p.groups) - p.first;
      if (g0 >= g1) continue;
      const PackedMatrix& w = *p.job->w;
      const int64_t rows = w.rows(), cols = w.cols(), n_tok = p.job->in->n_tok();
      if (p.xp) {
        FloatPairsProduct(*p.ks, w, p.xp, n_tok, g0, g1, p.job->y);
      } else if (p.layout) {
        LaneProduct(*p.ks, *p.layout, w, p.x, p.xt, n_tok, g0, g1, p.job->y,
                    p.scratch + thread * LaneScratchFloats(cols));
      } else {
        Q8Product(*p.ks, w, p.x, p.xt, n_tok, g0, g1, p.job->y);
      }
    }
  });
}

}  // namespace pyengine
