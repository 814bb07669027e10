// Faults the emulator must report (emulated builds only): each check runs a broken kernel or
// call and returns the error it got, then clears the emulator's sticky state. The tests hold
// each message to its fault, so a lenient emulator cannot pass the backend's tests silently.
#include <mma.h>

#include <string>
#include <utility>
#include <vector>

#include "cuda/device.h"
#include "cuda/device_math.cuh"

namespace cuda_emulator {
void Reset();
}

namespace pyengine {
namespace {

using cuda::kWarp;

// Lanes 16..31 return before the warp's shuffle.
__global__ void ShuffleAfterReturnKernel(float* out) {
  if (threadIdx.x % kWarp >= 16) return;
  out[threadIdx.x] = cuda::WarpSum(1.f);
}

// Only the first warp reaches the barrier.
__global__ void HalfBarrierKernel(float* out) {
  if (threadIdx.x < kWarp) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void WriteKernel(float* out) { out[threadIdx.x] = 1.f; }

// A WMMA load 16 bytes off the 32-byte boundary it needs.
__global__ void MisalignedWmmaKernel(float* out) {
  __shared__ __align__(32) __half tile[16 * 24 + 8];
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
  nvcuda::wmma::load_matrix_sync(a, tile + 8, 24);
  out[threadIdx.x] = 1.f;
}

// What the first failing call returned, the emulator reset afterwards.
std::string Outcome(cudaError_t launch) {
  cudaError_t e = launch != cudaSuccess ? launch : cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  std::string what = e == cudaSuccess ? "no error" : cudaGetErrorString(e);
  cuda_emulator::Reset();
  return what;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> CudaEmulatorFaults() {
  std::vector<std::pair<std::string, std::string>> out;
  float* d = nullptr;
  PYE_CUDA(cudaMalloc(&d, 64 * sizeof(float)));
  std::vector<float> host(64);

  PYE_LAUNCH(ShuffleAfterReturnKernel, 1, 64, 0, nullptr)(d);
  out.emplace_back("shuffle_after_return", Outcome(cudaSuccess));
  PYE_LAUNCH(HalfBarrierKernel, 1, 64, 0, nullptr)(d);
  out.emplace_back("partial_barrier", Outcome(cudaSuccess));
  PYE_LAUNCH(MisalignedWmmaKernel, 1, 32, 0, nullptr)(d);
  out.emplace_back("misaligned_wmma", Outcome(cudaSuccess));
  PYE_LAUNCH(WriteKernel, 1, 64, 0, nullptr)(host.data());
  out.emplace_back("host_pointer", Outcome(cudaSuccess));
  PYE_LAUNCH(WriteKernel, 0, 64, 0, nullptr)(d);
  out.emplace_back("empty_grid", Outcome(cudaSuccess));
  out.emplace_back("copy_out_of_bounds",
                   Outcome(cudaMemcpy(host.data(), d, 65 * sizeof(float), cudaMemcpyDeviceToHost)));

  cudaStream_t s = nullptr;
  PYE_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  PYE_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  float* more = nullptr;
  out.emplace_back("malloc_in_capture", Outcome(cudaMalloc(&more, 16)));
  cudaGraph_t graph = nullptr;
  out.emplace_back("invalidated_capture", Outcome(cudaStreamEndCapture(s, &graph)));

  // And a healthy launch afterwards works: the faults above were cleared.
  PYE_LAUNCH(WriteKernel, 1, 64, 0, s)(d);
  PYE_CUDA(cudaStreamSynchronize(s));
  PYE_CUDA(cudaMemcpy(host.data(), d, 64 * sizeof(float), cudaMemcpyDeviceToHost));
  out.emplace_back("healthy_after_reset", host[63] == 1.f ? "ok" : "wrong result");
  cudaStreamDestroy(s);
  cudaFree(d);
  return out;
}

}  // namespace pyengine
