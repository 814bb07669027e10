// PackedMatrix and MatMul: weight matrices prepared once for the kernels, and the threaded
// matrix product every projection of the forward pass goes through.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "quant/kernel_set.h"

namespace pyengine {

class ThreadPool;

class PackedMatrix {
 public:
  PackedMatrix() = default;
  // Repacks the matrix for the kernels (a copy, built in parallel on `pool`): Q8_0 into
  // Q8x16Block groups, F16/BF16/F32 into [group][k][16] (see kernel_set.h), the other
  // quantized types into lane units (lanes.h), all without changing a value. The copy goes to
  // `dst` (PackedBytes(t) bytes, 64-byte aligned, owned by the caller) or, when null, to memory
  // this object owns.
  PackedMatrix(const TensorView& t, ThreadPool& pool, uint8_t* dst = nullptr);

  // Bytes the packed copy of t takes (a multiple of 64).
  static size_t PackedBytes(const TensorView& t);
  // Bytes of one group of 16 rows of t's packed copy (groups lie one after another).
  static size_t GroupBytes(const TensorView& t);

  // A matrix whose packed copy is at `dst` (PackedBytes(t) bytes, owned by the caller) but not
  // written yet: the caller fills it with PackRows, a slice at a time.
  static PackedMatrix Unpacked(const TensorView& t, uint8_t* dst);
  // Packs rows [r0, r1) of t (r0 a multiple of 16, r1 a multiple of 16 or t's last row) into
  // their place in dst, the packed copy of all of t.
  static void PackRows(const TensorView& t, int64_t r0, int64_t r1, ThreadPool& pool, uint8_t* dst);

  GgmlType type() const { return src_.type; }
  int64_t rows() const { return src_.rows(); }
  int64_t cols() const { return src_.cols(); }
  const TensorView& source() const { return src_; }
  bool repacked() const { return data_ != nullptr; }
  const uint8_t* data() const { return data_; }
  const Q8x16Block* q8() const { return reinterpret_cast<const Q8x16Block*>(data_); }

  // Dequantizes row r (an embedding lookup) from whichever copy the matrix reads.
  void Row(int64_t r, float* out) const;

 private:
  struct Free {
    void operator()(void* p) const;
  };
  // Pack the rows of view t (a slice of src_ or all of it) into dst, its own packed copy.
  static void PackQ8(const TensorView& t, ThreadPool& pool, uint8_t* dst);
  static void PackLanes(const TensorView& t, ThreadPool& pool, uint8_t* dst);
  static void PackFloat(const TensorView& t, ThreadPool& pool, uint8_t* dst);

  TensorView src_;  // the file's tensor: its data is not read after packing
  uint8_t* data_ = nullptr;                // the packed copy
  std::unique_ptr<uint8_t, Free> owned_;   // data_ when this object allocated it
};

// Memory for packed weights: one block for a whole model, so large pages (fewer TLB misses,
// hardware prefetch that does not stop every 4 KB) cost at most one partly used page.
class WeightArena {
 public:
  explicit WeightArena(size_t bytes);
  uint8_t* data() const { return mem_.get(); }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<uint8_t, Free> mem_;
};

// One input of several projections (q, k and v read the same normed rows): the form each
// weight type wants (Q8_0 blocks, or rounded token tiles) is built on first use and reused.
class MatMulInput {
 public:
  // x [n_tok, cols] must stay unchanged until the next Set.
  void Set(const float* x, int64_t n_tok, int64_t cols);

  const float* x() const { return x_; }
  int64_t n_tok() const { return n_tok_; }
  int64_t cols() const { return cols_; }
  // Each form is built with (and only valid for) the kernel set `k`: callers take one
  // snapshot of ActiveKernels() per product, so a concurrent SetIsa cannot mix layouts.
  const XQ8Block* Q8(const KernelSet& k, ThreadPool& pool);                // [n_tok, cols / 32]
  // The Q8 form's whole tiles of 16 tokens for the AMX kernels: [n_tok / 16, cols / 32].
  const XQ8Tile16* AmxTiles(const KernelSet& k, ThreadPool& pool);
  const float* Tiles(const KernelSet& k, GgmlType type, ThreadPool& pool);  // pack_x layout
  // fp16-rounded rows as 15-bit integer blocks: xq [n_tok, cols], scales [n_tok, cols/16].
  void I16(const KernelSet& k, ThreadPool& pool, const int16_t** xq, const float** xs);
  // Per-thread scratch of the lane kernels (see KernelSet::gemm_lanes).
  float* LaneScratch(int n_threads);
  // Per-thread scratch for one converted F16 group (see KernelSet::gemm_f16_i16).
  void I16Scratch(int n_threads, int32_t** wq, float** ws);

 private:
  const float* x_ = nullptr;
  int64_t n_tok_ = 0, cols_ = 0;
  bool q8_ready_ = false;
  int q8_isa_ = -1;      // kernel level that built each form, -1: not built
  int tiles_kind_ = -1;  // GgmlType whose rounding tiles_ holds, -1: none
  int tiles_isa_ = -1;   // the tile width depends on the kernel level
  int i16_isa_ = -1;
  int amx_isa_ = -1;
  bool i16_ready_ = false;
  std::vector<XQ8Block> q8_;
  std::vector<XQ8Tile16> amx_;
  std::vector<float> tiles_;
  std::vector<int16_t> i16_;
  std::vector<float> i16_scales_;
  std::vector<float> lane_scratch_;   // [n_threads, LaneScratchFloats(cols)]
  std::vector<int32_t> panel_;        // [n_threads, cols/16 * 128]
  std::vector<float> panel_scales_;   // [n_threads, cols/16 * 16]
};

// y[t, r] = W[r, :] . x[t, :]   w: [rows, cols], x: [n_tok, cols], y: [n_tok, rows].
// Activations are rounded the way the reference rounds them for W's type (Q8_0 / F16 / BF16);
// rows are split over the pool's threads; the kernels are those of ActiveIsa().
void MatMul(const PackedMatrix& w, MatMulInput& in, float* y, ThreadPool& pool);
void MatMul(const PackedMatrix& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool);

// One product of MatMulMany: y = w . in, as MatMul computes it.
struct MatMulJob {
  const PackedMatrix* w;
  MatMulInput* in;
  float* y;
};
// Several products in one pass over the pool: their row groups are split over the threads
// together, so a step of small matrices (a layer's q, k and v; the experts a token chose) waits
// for the pool once instead of once per matrix. Each y is what MatMul writes, bit for bit.
void MatMulMany(const MatMulJob* jobs, int n_jobs, ThreadPool& pool);

}  // namespace pyengine
