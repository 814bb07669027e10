// Device memory and weights of the CUDA backend, and the error check every CUDA call goes through.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/errors.h"

namespace pyengine {
namespace cuda {

inline void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw EngineError(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}
#define PYE_CUDA(call) ::pyengine::cuda::Check((call), #call)

// Every kernel launch goes through PYE_LAUNCH(kernel, grid, block, shared bytes, stream)(args),
// so that the same source also runs on the CPU emulator (PYENGINE_CUDA=EMULATE), which tests
// the backend where there is no GPU.
#ifdef PYENGINE_CUDA_EMULATOR
#define PYE_LAUNCH(kernel, grid, block, smem, stream) \
  ::cuda_emulator::Launch(#kernel, kernel, grid, block, smem, stream)
#else
#define PYE_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

// One device allocation, freed with its owner.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { Resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DeviceBuffer() { if (p_) cudaFree(p_); }

  // Grows (never shrinks) to hold n values; the contents are not kept.
  void Reserve(size_t n) {
    if (n > n_) Resize(n);
  }
  void Upload(const T* host, size_t n, cudaStream_t s) {
    Reserve(n);
    PYE_CUDA(cudaMemcpyAsync(p_, host, n * sizeof(T), cudaMemcpyHostToDevice, s));
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void Resize(size_t n) {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
    PYE_CUDA(cudaMalloc(&p_, n * sizeof(T)));
    n_ = n;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Storage types of device matrices. Q8_0 is split into its quants and its scales so that loads
// are aligned (a GGUF block of 34 bytes is not).
enum class WType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8_0 = 3 };

// A weight matrix [rows, cols] on the device, as the kernels read it (plain data: passed by
// value to kernels).
struct DevMatrix {
  WType type = WType::kF32;
  int64_t rows = 0, cols = 0;
  const void* w = nullptr;      // [rows, cols] float / half / bf16 bits / int8 quants
  const __half* d = nullptr;    // Q8_0 only: [rows, cols / 32] block scales
};

}  // namespace cuda
}  // namespace pyengine
