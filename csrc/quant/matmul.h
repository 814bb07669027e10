// PackedMatrix and MatMul: weight matrices prepared once for the kernels, and the threaded
// matrix product every projection of the forward pass goes through.
#pragma once

#include <cstdint>
#include <memory>

#include "core/tensor.h"
#include "quant/kernel_set.h"

namespace pyengine {

class ThreadPool;

class PackedMatrix {
 public:
  PackedMatrix() = default;
  // Q8_0 is repacked into Q8x16Block groups (a copy, built in parallel on `pool`); float types
  // are used in place from the mapped file.
  PackedMatrix(const TensorView& t, ThreadPool& pool);

  GgmlType type() const { return src_.type; }
  int64_t rows() const { return src_.rows(); }
  int64_t cols() const { return src_.cols(); }
  const TensorView& source() const { return src_; }
  bool repacked() const { return packed_ != nullptr; }
  size_t packed_bytes() const { return packed_bytes_; }
  const Q8x16Block* q8() const { return reinterpret_cast<const Q8x16Block*>(packed_.get()); }

  // Dequantizes row r (an embedding lookup) from whichever copy the matrix reads.
  void Row(int64_t r, float* out) const;

 private:
  struct Free {
    void operator()(void* p) const;
  };
  TensorView src_;
  std::unique_ptr<uint8_t, Free> packed_;
  size_t packed_bytes_ = 0;
};

// Quantizes rows of activations to Q8_0 exactly as ggml does: x [n_tok, cols] -> out [n_tok, cols/32].
void QuantizeActivations(const float* x, int64_t n_tok, int64_t cols, XQ8Block* out);

// y[t, r] = W[r, :] . x[t, :]   w: [rows, cols], x: [n_tok, cols], y: [n_tok, rows].
// Activations are rounded the way the reference rounds them for W's type (Q8_0 / F16 / BF16);
// rows are split over the pool's threads; the kernels are those of ActiveIsa().
void MatMul(const PackedMatrix& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool);

}  // namespace pyengine
