// A CPU emulator of the part of CUDA the backend uses, so that the backend's own kernels and
// its host code (streams, graphs, copies) run and are tested on machines without a GPU.
//
// Built with PYENGINE_CUDA=EMULATE: the .cu files are compiled as C++ against this folder's
// cuda_runtime.h / cuda_fp16.h / cuda_bf16.h / mma.h, and launches go through PYE_LAUNCH
// (device.h).
// Blocks run one after another; each thread of a block is a fiber that runs until its next
// synchronisation point (__syncthreads, a warp shuffle), so barriers and shuffles keep CUDA's
// meaning. It is strict where a GPU would be undefined or fail, and names the kernel:
//   - a shuffle while some lanes of the warp have returned, a barrier not every thread reaches;
//   - a launch whose pointer arguments are not device memory, a bad launch configuration;
//   - copies out of the bounds of an allocation or in the wrong direction;
//   - allocation, synchronisation or host copies while a stream is being captured;
//   - WMMA loads and stores off their 32-byte alignment (mma.h).
// Kernel faults are sticky, as on a device: every later call returns the error.
// It says nothing about speed, coalescing or races between blocks.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------ language

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // blocks run one at a time, so a static is the block's shared memory
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(4) char4 {
  signed char x, y, z, w;
};
struct alignas(8) ushort4 {
  unsigned short x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// The running thread's coordinates (set by the scheduler before it resumes a thread).
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::max;
using std::min;

inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// The four signed byte products of a and b, summed, plus c.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    c += static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i)) *
         static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
  }
  return c;
}

// ------------------------------------------------------------------ fp16 / bf16
// Written apart from the CPU's conversions (quant/formats.h) on purpose: the kernels are held
// to CPU results, and a shared mistake would agree with itself.

struct __half {
  uint16_t x;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct __nv_bfloat16 {
  uint16_t x;
};

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t{h.x & 0x8000u} << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
  if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (m << 13));  // inf, nan
  if (e != 0) return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
  const float v = std::ldexp(static_cast<float>(m), -24);  // subnormal or zero
  return sign ? -v : v;
}
// Round to nearest even, overflow to infinity.
inline __half __float2half_rn(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504
  if (a < 0x38800000u) {  // below the smallest normal: a multiple of 2^-24
    const float q = std::nearbyint(__uint_as_float(a) * 16777216.f);
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(q))};
  }
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return {static_cast<uint16_t>(sign | (r >> 13))};
}
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(uint32_t{b.x} << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// ------------------------------------------------------------------ runtime API

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

namespace cuda_emulator {
struct Stream;
struct Graph;
}  // namespace cuda_emulator
using cudaStream_t = cuda_emulator::Stream*;
using cudaGraph_t = cuda_emulator::Graph*;
using cudaGraphExec_t = cuda_emulator::Graph*;

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

// ------------------------------------------------------------------ kernels

namespace cuda_emulator {

// Runs body as grid x block threads now, or records it when s is being captured.
void Submit(cudaStream_t s, const char* name, dim3 grid, dim3 block, size_t smem,
            std::function<void()> body);
// Fails the launch (a sticky error naming the kernel) unless p is null or device memory.
bool CheckKernelPointer(const char* name, int arg, const void* p);

// Warp primitives: the value of lane `src` of the calling thread's warp, after every lane has
// offered its own (a full mask is required).
uint64_t Exchange(unsigned mask, uint64_t mine, int src_lane, const char* what);
void SyncThreads();
void SyncWarp(unsigned mask);
int Lane();

template <typename T>
T Shuffle(unsigned mask, T v, int src_lane, const char* what) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = Exchange(mask, bits, src_lane, what);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <typename... P>
struct Launcher {
  const char* name;
  void (*fn)(P...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;

  template <typename... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
    // Arguments are converted to the parameter types and copied at launch, as CUDA does.
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    if (!CheckPointers(args, std::index_sequence_for<P...>{})) return;
    Submit(stream, name, grid, block, smem, [f = fn, args] { std::apply(f, args); });
  }

 private:
  template <typename Tuple, size_t... I>
  bool CheckPointers(const Tuple& t, std::index_sequence<I...>) const {
    bool ok = true;
    ((ok = ok && (!std::is_pointer_v<std::tuple_element_t<I, Tuple>> ||
                  CheckKernelPointer(name, static_cast<int>(I), PointerOf(std::get<I>(t))))),
     ...);
    return ok;
  }
  template <typename T>
  static const void* PointerOf(const T& v) {
    if constexpr (std::is_pointer_v<T>) {
      return static_cast<const void*>(v);
    } else {
      return nullptr;
    }
  }
};

template <typename... P>
Launcher<P...> Launch(const char* name, void (*fn)(P...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t s) {
  return {name, fn, grid, block, smem, s};
}

}  // namespace cuda_emulator

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = cuda_emulator::Lane();
  const int src = lane ^ lane_mask;
  return cuda_emulator::Shuffle(mask, v, src / width == lane / width ? src : lane,
                                "__shfl_xor_sync");
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = cuda_emulator::Lane();
  return cuda_emulator::Shuffle(mask, v, lane / width * width + src_lane % width, "__shfl_sync");
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = cuda_emulator::Lane();
  const int src = lane + static_cast<int>(delta);
  return cuda_emulator::Shuffle(mask, v, src / width == lane / width ? src : lane,
                                "__shfl_down_sync");
}
inline void __syncthreads() { cuda_emulator::SyncThreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_emulator::SyncWarp(mask); }
