#include "quant/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <vector>

#include "quant/formats.h"
#include "runtime/thread_pool.h"

namespace pyengine {
namespace {

// ggml's SIMD quantizer: scale amax/127 stored as fp16, values x * (127/amax) rounded half to even.
void QuantizeBlock(const float* x, XQ8Block* out) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float id = amax != 0.f ? 127.f / amax : 0.f;
  out->d = Fp16ToFp32(Fp32ToFp16(amax / 127.f));
  int32_t sum = 0;
  for (int j = 0; j < 32; ++j) {
    out->q[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
    sum += out->q[j];
  }
  out->sum128 = 128 * sum;
}

}  // namespace

void PackedMatrix::Free::operator()(void* p) const { std::free(p); }

PackedMatrix::PackedMatrix(const TensorView& t, ThreadPool& pool) : src_(t) {
  if (t.type != GgmlType::kQ8_0) return;
  const int64_t rows = t.rows(), nb = t.cols() / kQ8_0Block;
  const int64_t groups = (rows + kQ8Rows - 1) / kQ8Rows;
  packed_bytes_ = static_cast<size_t>(groups * nb) * sizeof(Q8x16Block);
  // 64-byte alignment: every block's quants start on a cache line.
  void* mem = std::aligned_alloc(64, (packed_bytes_ + 63) / 64 * 64);
  if (!mem) throw std::bad_alloc();
  packed_.reset(static_cast<uint8_t*>(mem));
  Q8x16Block* out = reinterpret_cast<Q8x16Block*>(packed_.get());
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

void PackedMatrix::Row(int64_t r, float* out) const {
  if (!packed_) {
    DequantizeRow(src_.type, src_.row(r), out, cols());
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

void QuantizeActivations(const float* x, int64_t n_tok, int64_t cols, XQ8Block* out) {
  const int64_t nb = cols / kQ8_0Block;
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t b = 0; b < nb; ++b) QuantizeBlock(x + t * cols + b * 32, out + t * nb + b);
  }
}

void MatMul(const PackedMatrix& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool) {
  const KernelSet& k = ActiveKernels();
  const int64_t rows = w.rows(), cols = w.cols();
  switch (w.type()) {
    case GgmlType::kQ8_0: {
      const int64_t nb = cols / kQ8_0Block;
      // Thread-local storage of the calling thread, handed to the workers by pointer (a
      // thread_local named inside the lambdas would be each worker's own, empty, copy).
      thread_local std::vector<XQ8Block> xq_buf;
      xq_buf.resize(static_cast<size_t>(n_tok * nb));
      XQ8Block* xq = xq_buf.data();  // [n_tok, nb]
      ParallelRanges(pool, n_tok, 16, [&](int64_t t0, int64_t t1) {
        QuantizeActivations(x + t0 * cols, t1 - t0, cols, xq + t0 * nb);
      });
      const int64_t groups = (rows + kQ8Rows - 1) / kQ8Rows;
      ParallelRanges(pool, groups, 1, [&](int64_t g0, int64_t g1) {
        k.gemm_q8(w.q8(), nb, xq, n_tok, g0, g1, rows, y, rows);
      });
      return;
    }
    case GgmlType::kF16:
    case GgmlType::kBF16: {
      // The reference converts activations to the weights' 16-bit type first.
      thread_local std::vector<float> xr_buf;
      xr_buf.resize(static_cast<size_t>(n_tok * cols));
      float* xr = xr_buf.data();  // [n_tok, cols]
      const bool f16 = w.type() == GgmlType::kF16;
      for (int64_t i = 0; i < n_tok * cols; ++i) {
        xr[i] = f16 ? Fp16ToFp32(Fp32ToFp16(x[i])) : Bf16ToFp32(Fp32ToBf16(x[i]));
      }
      const auto* wp = reinterpret_cast<const uint16_t*>(w.source().data);
      auto gemm = f16 ? k.gemm_f16 : k.gemm_bf16;
      ParallelRanges(pool, rows, 4, [&](int64_t r0, int64_t r1) {
        gemm(wp, cols, xr, n_tok, r0, r1, y, rows);
      });
      return;
    }
    case GgmlType::kF32: {
      const auto* wp = reinterpret_cast<const float*>(w.source().data);
      ParallelRanges(pool, rows, 4, [&](int64_t r0, int64_t r1) {
        k.gemm_f32(wp, cols, x, n_tok, r0, r1, y, rows);
      });
      return;
    }
    default:
      throw std::invalid_argument(std::string("no kernel for weight type ") + TypeName(w.type()));
  }
}

}  // namespace pyengine
