// The CPU emulator's runtime: device memory, streams and graphs, and the block scheduler that
// runs a block's threads as fibers (see emulator.h for what it checks).
#include "emulator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if !(defined(__x86_64__) && (defined(__linux__) || defined(__APPLE__)))
#include <ucontext.h>
#define PYE_EMU_UCONTEXT 1
#endif

namespace cuda_emulator {

struct Stream {
  bool invalidated = false;
  std::vector<std::function<void()>> ops;  // while capturing
};
struct Graph {
  std::vector<std::function<void()>> ops;
};

namespace {

std::mutex g_mutex;  // one host thread at a time in the emulated device
cudaError_t g_last = cudaSuccess;    // returned (and cleared) by cudaGetLastError
cudaError_t g_sticky = cudaSuccess;  // a kernel fault: every later call fails
std::string g_detail;                // what went wrong, for cudaGetErrorString
Stream* g_capture_stream = nullptr;  // the stream being captured (one at a time is emulated)

bool Capturing(const Stream* s) { return s && s == g_capture_stream; }
std::map<uintptr_t, size_t> g_allocs;  // device allocations: start -> bytes

cudaError_t Fail(cudaError_t e, const std::string& detail, bool sticky = false) {
  g_detail = detail;
  if (sticky) g_sticky = e;
  g_last = e;
  return e;
}

// A call that is not allowed while a stream is being captured invalidates the capture.
bool CaptureForbids(const char* what) {
  if (!g_capture_stream) return false;
  g_capture_stream->invalidated = true;
  Fail(cudaErrorStreamCaptureUnsupported,
       std::string(what) + " while a stream is being captured");
  return true;
}

// The allocation holding [p, p + bytes), or false.
bool InDevice(const void* p, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second;
}

// ------------------------------------------------------------------ fibers

// Fiber stacks: kernels keep a few small arrays in registers-to-be, so 16 KiB is ample. They
// sit side by side in one huge-page-backed region: a block switches between its threads'
// stacks at every barrier, and scattered stacks make each switch a cache and TLB miss.
constexpr size_t kStackBytes = 16 << 10;
constexpr size_t kRegionAlign = 2 << 20;
constexpr uint64_t kCanary = 0x5ca1ab1e0ddba11ull;
constexpr int kWarpSize = 32;

enum class State { kReady, kBarrier, kWarp, kDone };

struct Fiber {
#ifdef PYE_EMU_UCONTEXT
  ucontext_t ctx;
#else
  void* sp = nullptr;
#endif
  char* stack = nullptr;
  uint3 tid;
  State state = State::kReady;
  unsigned syncs = 0;  // warp exchanges so far: slot parity
  const char* waiting = "";
};

struct Block {
  std::vector<Fiber> fibers;
  char* stacks = nullptr;  // [capacity, kStackBytes]
  size_t capacity = 0;
  std::vector<uint64_t> slots[2];  // per thread, by exchange parity
  const std::function<void()>* body = nullptr;
  const char* name = "";  // the kernel's
  Fiber* current = nullptr;
  int current_index = 0;
  bool failed = false;
#ifdef PYE_EMU_UCONTEXT
  ucontext_t scheduler;
#else
  void* scheduler_sp = nullptr;
#endif
};

Block g_block;

}  // namespace
}  // namespace cuda_emulator

#ifndef PYE_EMU_UCONTEXT
// Saves the callee-saved registers and the stack pointer in *save, switches to the stack `to`
// and restores what was saved there (System V x86-64).
extern "C" void pyengine_emu_switch(void** save, void* to);
#ifdef __APPLE__
#define PYE_SYM(x) "_" #x
#else
#define PYE_SYM(x) #x
#endif
asm(".text\n"
    ".globl " PYE_SYM(pyengine_emu_switch) "\n"
#ifndef __APPLE__
    ".hidden pyengine_emu_switch\n"
    ".type pyengine_emu_switch,@function\n"
#endif
    PYE_SYM(pyengine_emu_switch) ":\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n");
#endif

namespace cuda_emulator {
namespace {

void Switch(Fiber* from, Fiber* to) {
  Block& b = g_block;
  b.current = to;
  if (to) threadIdx = to->tid;
#ifdef PYE_EMU_UCONTEXT
  swapcontext(from ? &from->ctx : &b.scheduler, to ? &to->ctx : &b.scheduler);
#else
  pyengine_emu_switch(from ? &from->sp : &b.scheduler_sp, to ? to->sp : b.scheduler_sp);
#endif
}

// The calling thread has stopped (at a barrier, an exchange, or its end): the next ready thread
// of this pass runs, straight from this one; after the last, the scheduler.
void ToScheduler() {
  Block& b = g_block;
  Fiber* me = b.current;
  Fiber* next = nullptr;
  if (!b.failed) {
    for (Fiber* f = me + 1; f < b.fibers.data() + b.fibers.size(); ++f) {
      if (f->state == State::kReady) {
        next = f;
        break;
      }
    }
  }
  Switch(me, next);
}

void FiberMain() {
  Block& b = g_block;
  try {
    (*b.body)();
  } catch (...) {
    b.failed = true;
    Fail(cudaErrorLaunchFailure, "an exception escaped a kernel thread", true);
  }
  b.current->state = State::kDone;
  ToScheduler();
  std::abort();  // a finished fiber is never resumed
}

void StartFiber(Fiber& f, char* stack) {
  f.stack = stack;
  std::memcpy(stack, &kCanary, sizeof(kCanary));
#ifdef PYE_EMU_UCONTEXT
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, FiberMain, 0);
#else
  // The top of the stack as pyengine_emu_switch leaves it: six saved registers, then the
  // address it returns to (FiberMain, entered as if called: rsp = 8 mod 16).
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStackBytes) & ~uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;  // FiberMain's return address (it never returns)
  *--sp = reinterpret_cast<void*>(&FiberMain);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  f.sp = sp;
#endif
}

// Whether every thread of the block has finished, or waits where the scheduler can release it.
// Returns false (with a sticky error) for a state a GPU would hang in or leave undefined.
bool Release(const char* name) {
  Block& b = g_block;
  const int n = static_cast<int>(b.fibers.size());
  int barrier = 0, live = 0;
  for (const Fiber& f : b.fibers) {
    if (f.state != State::kDone) ++live;
    if (f.state == State::kBarrier) ++barrier;
  }
  if (live == 0) return true;
  bool released = false;
  if (barrier == live && live < n) {
    Fail(cudaErrorIllegalAddress,
         std::string(name) + ": __syncthreads reached by " + std::to_string(barrier) + " of " +
             std::to_string(n) + " threads (the rest returned)",
         true);
    return false;
  }
  if (barrier == live) {
    for (Fiber& f : b.fibers) {
      if (f.state == State::kBarrier) f.state = State::kReady;
    }
    return true;
  }
  for (int w = 0; w < n; w += kWarpSize) {
    const int end = std::min(n, w + kWarpSize);
    int waiting = 0, done = 0;
    for (int i = w; i < end; ++i) {
      waiting += b.fibers[i].state == State::kWarp;
      done += b.fibers[i].state == State::kDone;
    }
    if (waiting == 0) continue;
    if (waiting + done < end - w) continue;  // some lanes are still on their way
    if (done > 0 || end - w < kWarpSize) {
      const char* what = "";
      for (int i = w; i < end; ++i) {
        if (b.fibers[i].state == State::kWarp) what = b.fibers[i].waiting;
      }
      Fail(cudaErrorIllegalAddress,
           std::string(name) + ": " + what + " with a full mask in warp " +
               std::to_string(w / kWarpSize) +
               ", where " + std::to_string(done + kWarpSize - (end - w)) +
               " lanes have returned or do not exist",
           true);
      return false;
    }
    for (int i = w; i < end; ++i) b.fibers[i].state = State::kReady;
    released = true;
  }
  if (!released) {
    Fail(cudaErrorIllegalAddress,
         std::string(name) + ": threads wait at different barriers (" +
             std::to_string(barrier) + " of " + std::to_string(live) +
             " live threads at __syncthreads, the rest at a warp exchange)",
         true);
    return false;
  }
  return true;
}

bool RunBlock(const char* name) {
  Block& b = g_block;
  for (;;) {
    // A pass: the first ready thread runs, and each hands over to the next (ToScheduler).
    for (Fiber& f : b.fibers) {
      if (f.state == State::kReady) {
        Switch(nullptr, &f);
        break;
      }
    }
    if (b.failed) return false;
    bool all_done = true;
    for (const Fiber& f : b.fibers) all_done = all_done && f.state == State::kDone;
    if (all_done) break;
    if (!Release(name)) return false;
  }
  for (const Fiber& f : b.fibers) {
    uint64_t c;
    std::memcpy(&c, f.stack, sizeof(c));
    if (c != kCanary) {
      Fail(cudaErrorLaunchFailure, std::string(name) + ": a thread overflowed its stack", true);
      return false;
    }
  }
  return true;
}

void RunKernel(const char* name, dim3 grid, dim3 block, const std::function<void()>& body) {
  Block& b = g_block;
  const size_t n = size_t{block.x} * block.y * block.z;
  b.fibers.assign(n, Fiber{});
  if (b.capacity < n) {
    std::free(b.stacks);
    const size_t bytes = (n * kStackBytes + kRegionAlign - 1) / kRegionAlign * kRegionAlign;
    b.stacks = static_cast<char*>(std::aligned_alloc(kRegionAlign, bytes));
    if (!b.stacks) std::abort();
#ifdef MADV_HUGEPAGE
    madvise(b.stacks, bytes, MADV_HUGEPAGE);
#endif
    b.capacity = n;
  }
  for (auto& s : b.slots) s.assign(n, 0);
  b.body = &body;
  b.name = name;
  b.failed = false;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        for (size_t i = 0; i < n; ++i) {
          Fiber& f = b.fibers[i];
          f.state = State::kReady;
          f.syncs = 0;
          f.tid = {static_cast<unsigned>(i % block.x),
                   static_cast<unsigned>(i / block.x % block.y),
                   static_cast<unsigned>(i / (size_t{block.x} * block.y))};
          StartFiber(f, b.stacks + i * kStackBytes);
        }
        if (!RunBlock(name)) return;
      }
    }
  }
}

int LinearIndex() { return static_cast<int>(g_block.current - g_block.fibers.data()); }

}  // namespace

int Lane() { return LinearIndex() % kWarpSize; }

uint64_t Exchange(unsigned mask, uint64_t mine, int src_lane, const char* what) {
  Block& b = g_block;
  Fiber* f = b.current;
  const int i = LinearIndex();
  if (mask != 0xffffffffu) {
    b.failed = true;
    Fail(cudaErrorLaunchFailure, std::string(what) + ": only full masks are emulated", true);
    ToScheduler();
  }
  const unsigned parity = f->syncs++ & 1u;
  b.slots[parity][i] = mine;
  f->state = State::kWarp;
  f->waiting = what;
  ToScheduler();
  return b.slots[parity][i - i % kWarpSize + src_lane];
}

void SyncWarp(unsigned mask) { Exchange(mask, 0, Lane(), "__syncwarp"); }

void SyncThreads() {
  g_block.current->state = State::kBarrier;
  ToScheduler();
}

void WmmaCheck(const void* p, unsigned ldm_bytes, const char* what) {
  SyncWarp(0xffffffffu);  // a warp-wide call: every lane must make it
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm_bytes % 16 != 0) {
    Block& b = g_block;
    b.failed = true;
    Fail(cudaErrorIllegalAddress,
         std::string(b.name) + ": " + what +
             ": a pointer off a 32-byte boundary or ldm not a multiple of 16 bytes",
         true);
    ToScheduler();
  }
}

bool CheckKernelPointer(const char* name, int arg, const void* p) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (p == nullptr || InDevice(p, 0)) return true;
  Fail(cudaErrorInvalidDevicePointer,
       std::string(name) + ": argument " + std::to_string(arg) + " is not device memory", true);
  return false;
}

void Submit(cudaStream_t s, const char* name, dim3 grid, dim3 block, size_t smem,
            std::function<void()> body) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_sticky != cudaSuccess) return;
  const size_t threads = size_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu || smem > 48 * 1024) {
    Fail(cudaErrorInvalidConfiguration,
         std::string(name) + ": grid (" + std::to_string(grid.x) + ", " +
             std::to_string(grid.y) + ", " + std::to_string(grid.z) + "), block of " +
             std::to_string(threads) + " threads");
    return;
  }
  if (cuda_emulator::Capturing(s)) {
    s->ops.push_back([name, grid, block, body = std::move(body)] {
      if (g_sticky == cudaSuccess) RunKernel(name, grid, block, body);
    });
    return;
  }
  RunKernel(name, grid, block, body);
}

// Clears every error, a sticky one included (the fault checks' way back to a healthy device).
void Reset() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_last = g_sticky = cudaSuccess;
  g_detail.clear();
}

}  // namespace cuda_emulator

// ------------------------------------------------------------------ runtime API

using cuda_emulator::Fail;
using cuda_emulator::g_mutex;
using cuda_emulator::g_sticky;

#define PYE_EMU_LOCK std::lock_guard<std::mutex> lock(g_mutex)
#define PYE_EMU_STICKY \
  if (g_sticky != cudaSuccess) return g_sticky

const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string s;
  const char* base = "unknown error";
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: base = "invalid argument"; break;
    case cudaErrorMemoryAllocation: base = "out of memory"; break;
    case cudaErrorInvalidConfiguration: base = "invalid configuration argument"; break;
    case cudaErrorInvalidDevicePointer: base = "invalid device pointer"; break;
    case cudaErrorInvalidMemcpyDirection: base = "invalid copy direction for memcpy"; break;
    case cudaErrorIllegalAddress: base = "an illegal memory access was encountered"; break;
    case cudaErrorLaunchFailure: base = "unspecified launch failure"; break;
    case cudaErrorStreamCaptureUnsupported:
      base = "operation not permitted when stream is capturing";
      break;
    case cudaErrorStreamCaptureInvalidated:
      base = "operation failed due to a previous error during capture";
      break;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  s = std::string(base) + " [emulator: " + cuda_emulator::g_detail + "]";
  return s.c_str();
}

cudaError_t cudaGetLastError() {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  const cudaError_t e = cuda_emulator::g_last;
  cuda_emulator::g_last = cudaSuccess;
  return e;
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return Fail(cudaErrorInvalidValue, "no such device");
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof(p->name), "CPU emulator of CUDA");
  p->totalGlobalMem = size_t{16} << 30;
  p->multiProcessorCount = 1;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  PYE_EMU_LOCK;
  *p = nullptr;
  PYE_EMU_STICKY;
  if (cuda_emulator::CaptureForbids("cudaMalloc")) return cudaErrorStreamCaptureUnsupported;
  // Aligned as device allocations are (256 bytes), and exactly as large as asked, so that an
  // address sanitizer sees a kernel reading past the end.
  void* a = nullptr;
  if (posix_memalign(&a, 256, std::max<size_t>(bytes, 1)) != 0) {
    return Fail(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes));
  }
  cuda_emulator::g_allocs[reinterpret_cast<uintptr_t>(a)] = bytes;
  *p = a;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  PYE_EMU_LOCK;
  if (!p) return cudaSuccess;
  if (cuda_emulator::CaptureForbids("cudaFree")) return cudaErrorStreamCaptureUnsupported;
  auto it = cuda_emulator::g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == cuda_emulator::g_allocs.end()) {
    return Fail(cudaErrorInvalidDevicePointer, "cudaFree of a pointer cudaMalloc did not return");
  }
  cuda_emulator::g_allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}

namespace cuda_emulator {
namespace {

cudaError_t CheckCopy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dst_dev = InDevice(dst, bytes), src_dev = InDevice(src, bytes);
  const bool want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault || kind == cudaMemcpyHostToHost) {
    return Fail(cudaErrorInvalidMemcpyDirection, "only explicit directions are emulated");
  }
  // The first side that is not what the direction names.
  const bool dst_wrong = dst_dev != want_dst;
  if (!dst_wrong && src_dev == want_src) return cudaSuccess;
  const bool want_device = dst_wrong ? want_dst : want_src;
  return Fail(cudaErrorInvalidValue,
              "memcpy of " + std::to_string(bytes) + " bytes: the " +
                  (dst_wrong ? "destination" : "source") +
                  (want_device ? " is not (wholly) inside a device allocation"
                               : " is device memory where host memory was named"));
}

}  // namespace
}  // namespace cuda_emulator

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (cuda_emulator::CaptureForbids("cudaMemcpy")) return cudaErrorStreamCaptureUnsupported;
  if (const cudaError_t e = cuda_emulator::CheckCopy(dst, src, bytes, kind)) return e;
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (const cudaError_t e = cuda_emulator::CheckCopy(dst, src, bytes, kind)) return e;
  if (cuda_emulator::Capturing(s)) {
    // Host memory the application pages in and out cannot be part of a graph.
    if (kind != cudaMemcpyDeviceToDevice) {
      s->invalidated = true;
      return Fail(cudaErrorStreamCaptureUnsupported, "a host copy into a captured stream");
    }
    s->ops.push_back([dst, src, bytes] { std::memcpy(dst, src, bytes); });
    return cudaSuccess;
  }
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (cuda_emulator::CaptureForbids("cudaMemset")) return cudaErrorStreamCaptureUnsupported;
  if (!cuda_emulator::InDevice(p, bytes)) {
    return Fail(cudaErrorInvalidValue, "cudaMemset outside a device allocation");
  }
  std::memset(p, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (!cuda_emulator::InDevice(p, bytes)) {
    return Fail(cudaErrorInvalidValue, "cudaMemsetAsync outside a device allocation");
  }
  if (cuda_emulator::Capturing(s)) {
    s->ops.push_back([p, value, bytes] { std::memset(p, value, bytes); });
    return cudaSuccess;
  }
  std::memset(p, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (cuda_emulator::CaptureForbids("cudaDeviceSynchronize")) {
    return cudaErrorStreamCaptureUnsupported;
  }
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new cuda_emulator::Stream;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  PYE_EMU_LOCK;
  if (cuda_emulator::Capturing(s)) cuda_emulator::g_capture_stream = nullptr;
  delete s;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (cuda_emulator::Capturing(s)) {
    s->invalidated = true;
    return Fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize of a capturing stream");
  }
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (!s || cuda_emulator::g_capture_stream) {
    return Fail(cudaErrorInvalidValue, "a capture while another is under way");
  }
  s->invalidated = false;
  s->ops.clear();
  cuda_emulator::g_capture_stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  PYE_EMU_LOCK;
  *graph = nullptr;
  if (!cuda_emulator::Capturing(s)) {
    return Fail(cudaErrorInvalidValue, "end of a capture never begun");
  }
  cuda_emulator::g_capture_stream = nullptr;
  if (s->invalidated) {
    s->ops.clear();
    return Fail(cudaErrorStreamCaptureInvalidated, "the capture was invalidated");
  }
  *graph = new cuda_emulator::Graph{std::move(s->ops)};
  s->ops.clear();
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!graph) return Fail(cudaErrorInvalidValue, "instantiate of a null graph");
  *exec = new cuda_emulator::Graph{graph->ops};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  PYE_EMU_LOCK;
  PYE_EMU_STICKY;
  if (!exec) return Fail(cudaErrorInvalidValue, "launch of a null graph");
  if (cuda_emulator::Capturing(s)) {
    s->ops.push_back([exec] {
      for (const auto& op : exec->ops) op();
    });
    return cudaSuccess;
  }
  for (const auto& op : exec->ops) op();
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
