// The CPU emulator's stand-in for CUDA's <mma.h> (warp matrix multiply-accumulate, WMMA).
// On a device each lane holds a share of a fragment in an unspecified layout (so code may not
// depend on which). Here lane l holds rows l, l + 32, ... of A and accumulator tiles and all
// of a B tile: a product is computed once per warp, each lane its rows. Loads, products and
// stores are warp-wide calls, checked for a full warp and for the device's alignment rules:
// the pointer on a 32-byte boundary, ldm a multiple of 16 bytes.
#pragma once

#include <cstdint>

#include "emulator.h"

namespace cuda_emulator {
void WmmaCheck(const void* p, unsigned ldm_bytes, const char* what);
}

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32 {};
}

template <typename Use, int M, int N, int K>
struct TileShape;
template <int M, int N, int K>
struct TileShape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct TileShape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct TileShape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename T>
inline float Widen(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return static_cast<float>(v);
  }
}

// The tile, row-major; a lane uses the rows it holds (see above).
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = TileShape<Use, M, N, K>::rows, cols = TileShape<Use, M, N, K>::cols;
  T v[rows * cols];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  cuda_emulator::WmmaCheck(p, ldm * sizeof(T), "wmma::load_matrix_sync");
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool col = std::is_same_v<Layout, col_major>;
  const int first = std::is_same_v<Use, matrix_b> ? 0 : cuda_emulator::Lane();
  const int step = std::is_same_v<Use, matrix_b> ? 1 : 32;
  for (int r = first; r < F::rows; r += step) {
    for (int c = 0; c < F::cols; ++c) f.v[r * F::cols + c] = col ? p[c * ldm + r] : p[r * ldm + c];
  }
}

template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm,
                      layout_t layout) {
  cuda_emulator::WmmaCheck(p, ldm * sizeof(T), "wmma::load_matrix_sync");
  for (int r = cuda_emulator::Lane(); r < M; r += 32) {
    for (int c = 0; c < N; ++c) {
      f.v[r * N + c] = layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
    }
  }
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                       layout_t layout) {
  cuda_emulator::WmmaCheck(p, ldm * sizeof(T), "wmma::store_matrix_sync");
  for (int r = cuda_emulator::Lane(); r < M; r += 32) {
    for (int c = 0; c < N; ++c) {
      (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.v[r * N + c];
    }
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T value) {
  for (T& x : f.v) x = value;
  __syncwarp();
}

// d = a . b + c. Integer tiles multiply in int32, others in float.
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, TC>& c) {
  __syncwarp();  // a warp-wide call: every lane must make it
  for (int r = cuda_emulator::Lane(); r < M; r += 32) {
    for (int col = 0; col < N; ++col) {
      TC s = c.v[r * N + col];
      for (int k = 0; k < K; ++k) {
        if constexpr (std::is_integral_v<TC>) {
          s += static_cast<TC>(a.v[r * K + k]) * static_cast<TC>(b.v[k * N + col]);
        } else {
          s += Widen(a.v[r * K + k]) * Widen(b.v[k * N + col]);
        }
      }
      d.v[r * N + col] = s;
    }
  }
}

}  // namespace wmma
}  // namespace nvcuda
