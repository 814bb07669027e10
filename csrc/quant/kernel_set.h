// KernelSet: the matrix kernels of one instruction-set level, and the packed layouts they read.
#pragma once

#include <cstdint>

#include "core/kv_type.h"
#include "quant/blocks.h"
#include "quant/cpu_features.h"
#include "quant/lanes.h"

namespace pyengine {

// Q8_0 weights repacked at load time: 16 rows interleaved per 32-value block, so one 512-bit
// register holds 4 consecutive values of each of the 16 rows and an integer dot-product
// instruction advances 16 rows at once; every lane ends up holding one row's sum.
// Quants are stored biased to unsigned (w + 128) because that instruction multiplies unsigned
// by signed bytes; the bias is removed with the activations' precomputed 128 * sum(x).
constexpr int kQ8Rows = 16;
struct Q8x16Block {
  uint16_t d[kQ8Rows];      // fp16 scale of each row's block
  uint8_t q[kQ8Rows * 32];  // q[c * 64 + r * 4 + j] = w[r][4c + j] + 128, chunk c in [0, 8)
};
static_assert(sizeof(Q8x16Block) == 16 * 34, "same size as 16 Q8_0 blocks");

// One 32-value block of activations quantized to Q8_0 (bit-identical to ggml's), plus the sums
// that unsigned, offset or min-carrying weights need: 128 * sum(q) for the biased Q8_0 layout,
// and d times the sums of each half and of the block for the lane kernels' min terms.
struct XQ8Block {
  int8_t q[32];
  float d;            // scale
  int16_t sum16[2];   // sums of q[0..16) and q[16..32)
  float dsum16[2];    // d * sum16[i]
  float dsum;         // d * (sum16[0] + sum16[1])
  int32_t sum() const { return sum16[0] + sum16[1]; }
  // Sets the sums from q's halves' sums, once d is set.
  void SetSums(int32_t s0, int32_t s1) {
    sum16[0] = static_cast<int16_t>(s0);
    sum16[1] = static_cast<int16_t>(s1);
    dsum16[0] = d * static_cast<float>(s0);
    dsum16[1] = d * static_cast<float>(s1);
    dsum = d * static_cast<float>(s0 + s1);
  }
};
static_assert(sizeof(XQ8Block) == 52, "packed activation block");

// The Q8_0 blocks of 16 tokens side by side, for the AMX kernels (kernels_amx.cc): q is a tile
// of 16 rows (tokens) of 32 quants, 64-byte aligned and contiguous, so one tile load reads 8
// whole cache lines; d and dsum are each token's XQ8Block::d and ::dsum, bias its 128 * sum(q).
struct alignas(64) XQ8Tile16 {
  int8_t q[16][32];
  float d[16];
  float dsum[16];
  int32_t bias[16];
};
static_assert(sizeof(XQ8Tile16) == 704, "tile of activation blocks");

// F16, BF16 and F32 weights are repacked the same way: [group][k][16], the k-th value of each of
// 16 rows side by side, so a vector load yields one value of 16 rows, lane r accumulates row r,
// and each thread streams one contiguous region.
constexpr int kFloatRows = 16;

// How activations reach the float kernels: rounded to the weight type (as the reference
// rounds them) and transposed into tiles of `x_tile` tokens, [tile][k][tokens in tile], so the
// kernels broadcast one value per token from one contiguous stream.
enum class XRound { kNone, kF16, kBF16 };

// Keys per chunk of the attention kernels (attn_scores, attn_values).
constexpr int kAttnKeys = 16;
// The longest head a quantized KV row may hold, in 32-value blocks (kv_rows' scratch).
constexpr int64_t kMaxKvBlocksPerRow = 64;

// Every kernel computes y[t * ldy + r] = W[r, :] . x[t, :] for tokens [0, n_tok) and the row
// groups [g0, g1) it is given (16 rows each; `rows` bounds the stores of a padded last group).
// Levels differ only in speed and float summation order.
struct KernelSet {
  IsaLevel level;
  void (*gemm_q8)(const Q8x16Block* w, int64_t nb, const XQ8Block* x, int64_t n_tok, int64_t g0,
                  int64_t g1, int64_t rows, float* y, int64_t ldy);
  // w: [groups, cols, 16] of the 16- or 32-bit type; x: packed by pack_x.
  void (*gemm_f16)(const uint16_t* w, int64_t cols, const float* x, int64_t n_tok, int64_t g0,
                   int64_t g1, int64_t rows, float* y, int64_t ldy);
  void (*gemm_bf16)(const uint16_t* w, int64_t cols, const float* x, int64_t n_tok, int64_t g0,
                    int64_t g1, int64_t rows, float* y, int64_t ldy);
  void (*gemm_f32)(const float* w, int64_t cols, const float* x, int64_t n_tok, int64_t g0,
                   int64_t g1, int64_t rows, float* y, int64_t ldy);
  // Prompt-sized F16 products through 16-bit integer dot products (twice the multiply rate of
  // float FMA where the CPU has them); nullptr where a level has no such kernel. Each 16-value
  // block of a row is scaled to 14-bit integers on the fly (|error| <= max|w_block| / 16382),
  // activations come as XI16 rows. Used for n_tok >= kI16MinTokens only. wq / ws are the
  // calling thread's scratch for one converted group: [cols/16 * 128] and [cols/16 * 16].
  void (*gemm_f16_i16)(const uint16_t* w, int64_t cols, const int16_t* xq, const float* xs,
                       int64_t n_tok, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                       int32_t* wq, float* ws);
  void (*quantize_i16)(const float* x, int64_t cols, int16_t* xq, float* xs);  // one XI16 row
  int x_tile;  // tokens per activation tile the float kernels expect
  // Rounds and transposes tokens [t0, t1) of x [n_tok, cols] (t0 a multiple of x_tile) into
  // out, which has the packed layout of all n_tok tokens.
  void (*pack_x)(const float* x, int64_t n_tok, int64_t cols, int64_t t0, int64_t t1, XRound round,
                 float* out);
  // Quantizes one row of activations (cols a multiple of 32) bit-identically to ggml's Q8_0.
  void (*quantize_q8)(const float* x, int64_t cols, XQ8Block* out);
  // out[i] = fp16(x[i]) (round to nearest even).
  void (*to_f16)(const float* x, uint16_t* out, int64_t n);
  // g[i] = gelu(g[i]) * u[i] with GELU read from GeluFp16Table() at fp16(g[i]), as the
  // reference's CPU backend computes it (0 below -10, identity above 10).
  void (*gelu_mul)(float* g, const float* u, int64_t n);
  // Attention over the KV cache, a tile of query rows against a block of keys at a time
  // (ops.cc, Attend; attn_tiles.h). attn_scores: s[r * lds + j] = q[r] . kt[:, j] for j < 16,
  // kt [d][16] a key block transposed to floats. attn_values: o[r][:] += sum over j < nk of
  // p[r * ldp + j] * v[j][:], v [nk][d] floats.
  void (*attn_scores)(const float* const* q, int rows, const float* kt, int64_t d, float* s,
                      int64_t lds);
  void (*attn_values)(const float* p, int64_t ldp, int rows, const float* v, int nk, int64_t d,
                      float* const* o);
  // kt [d][16] = the keys j < nk of k (rows of KV type t, ldk bytes apart) as floats,
  // transposed for attn_scores, zero past nk; vf [16][d] is scratch.
  void (*attn_keys)(KvType t, const uint8_t* k, int64_t ldk, int nk, int64_t d, float* vf,
                    float* kt);
  // out [nk][d] = the rows j < nk of KV type t (ld bytes apart) as floats: a chunk of values.
  void (*kv_rows)(KvType t, const uint8_t* rows, int64_t ld, int nk, int64_t d, float* out);
  // out[i] = float(h[i]) for fp16 h; and x[i] rounded to the nearest fp16 in place.
  void (*f16_to_f32)(const uint16_t* h, float* out, int64_t n);
  void (*round_f16)(float* x, int64_t n);
  // The quantized types of blocks.h in their lane layout (lanes.h): w is [groups][cols /
  // l.values] units; x is [n_tok, cols / 32] blocks from quantize_q8 (ldx is implied by cols).
  // scratch: the calling thread's kLaneScratchFloats(cols) floats, where a product of more
  // tokens than one pass takes decodes each row group's scales once for all its passes.
  void (*gemm_lanes)(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Block* x,
                     int64_t n_tok, int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy,
                     float* scratch);
  // Prompts on CPUs with AMX (null where a level has none; only while AmxActive()): the lane
  // types with 32-value groups (matmul.cc, UsesAmx), tokens [0, 16 * tiles) as XQ8Tile16 [tiles][cols /
  // 32], equal bit for bit to gemm_lanes. scratch as for gemm_lanes.
  void (*gemm_lanes_amx)(const BlockLayout& l, const uint8_t* w, int64_t cols, const XQ8Tile16* x,
                         int64_t tiles, int64_t g0, int64_t g1, int64_t rows, float* y,
                         int64_t ldy, float* scratch);
  // The same for Q8_0 weights (as gemm_q8, bit for bit), tokens [0, 16 * tiles).
  void (*gemm_q8_amx)(const Q8x16Block* w, int64_t nb, const XQ8Tile16* x, int64_t tiles,
                      int64_t g0, int64_t g1, int64_t rows, float* y, int64_t ldy);
};

// Tokens per tile of the AMX kernels (XQ8Tile16).
constexpr int kAmxTokens = 16;

// Activations for gemm_f16_i16: each row rounded to fp16 (as the reference rounds them), then
// every 16-value block scaled to 15-bit integers: xq [n_tok, cols], xs [n_tok, cols / 16] with
// x ~= xq * xs. 14-bit weights times 15-bit activations, 16 per lane, cannot overflow int32.
constexpr int kI16Block = 16;
constexpr int64_t kI16MinTokens = 16;
constexpr int64_t kI16WeightMax = 8191, kI16ActMax = 16383;
static_assert(kI16Block * kI16WeightMax * kI16ActMax <= 2147483647LL,
              "a lane's 16 products must fit int32");

// Scratch floats gemm_lanes and gemm_lanes_amx need per thread: a row group's decoded scales
// and mins (LaneScales per unit, only the groups a unit has), at most 2 * 16 floats per 16
// values; then, for gemm_lanes_amx, the row group's values unpacked to bytes (16 per column).
constexpr int64_t LaneScaleFloatsOf(int64_t cols) { return 2 * cols; }
constexpr int64_t LaneScratchFloats(int64_t cols) { return LaneScaleFloatsOf(cols) + 4 * cols; }

// GELU-tanh of every fp16 value, rounded to fp16 and stored as float: [65536].
const float* GeluFp16Table();

// Packs activations into tiles of `tile` tokens with a scalar loop; `round_one` gives the
// rounding. Shared by the levels whose SIMD rounding is not worth a special case.
void PackXGeneric(const float* x, int64_t n_tok, int64_t cols, int64_t t0, int64_t t1, int tile,
                  XRound round, float* out);

const KernelSet& ScalarKernels();
const KernelSet* Avx2Kernels();    // nullptr when not compiled for this target
const KernelSet* Avx512Kernels();  // nullptr when not compiled for this target
const KernelSet* NeonKernels();    // nullptr when not compiled for this target
const KernelSet* NeonDotKernels(); // nullptr when not compiled for this target

// The set for ActiveIsa().
const KernelSet& ActiveKernels();

}  // namespace pyengine
