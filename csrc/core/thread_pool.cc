#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYENGINE_PAUSE() _mm_pause()
#else
#define PYENGINE_PAUSE() std::this_thread::yield()
#endif

namespace pyengine {
namespace {

// Workers spin this long for the next job before sleeping: a decode step issues hundreds of
// short loops back to back, and waking a sleeping thread costs tens of microseconds.
constexpr auto kSpin = std::chrono::microseconds(2000);

}  // namespace

int DefaultThreadCount() {
#ifdef __linux__
  // The CPUs this process may run on (affinity, cgroup cpusets), not all the machine has:
  // spinning workers on CPUs we do not get would stall every parallel loop.
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
    return std::min(CPU_COUNT(&set), ThreadPool::kMaxThreads);
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : std::min(static_cast<int>(n), ThreadPool::kMaxThreads);
}

ThreadPool::ThreadPool(int n_threads)
    : n_threads_(n_threads > 0 ? n_threads : DefaultThreadCount()) {
  if (n_threads_ > kMaxThreads) {
    throw std::invalid_argument("n_threads " + std::to_string(n_threads_) + " exceeds " +
                                std::to_string(kMaxThreads));
  }
  try {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  } catch (...) {
    // Joinable threads must not be destroyed: stop and join the ones that started.
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      wake_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    throw;
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    wake_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

thread_local int ThreadPool::thread_index_ = 0;

void ThreadPool::RunJob(uint64_t job) {
  const int64_t n_tasks = static_cast<int64_t>((job >> kTaskBits) & kTaskMask);
  uint64_t word = claim_.load(std::memory_order_acquire);
  for (;;) {
    // Same job (generation and size) and a task left: claim it.
    if ((word >> kTaskBits) != (job >> kTaskBits)) return;
    const int64_t task = static_cast<int64_t>(word & kTaskMask);
    if (task >= n_tasks) return;
    if (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      continue;  // word now holds the current value
    }
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        (*fn_)(task, thread_index_);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
    remaining_.fetch_sub(1, std::memory_order_acq_rel);
    word = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::Job(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  fn_ = &fn;
  remaining_.store(n_tasks, std::memory_order_relaxed);
  const uint64_t gen = ((claim_.load(std::memory_order_relaxed) >> (2 * kTaskBits)) + 1) & 0xffff;
  const uint64_t job = ((gen == 0 ? 1 : gen) << (2 * kTaskBits)) |
                       (static_cast<uint64_t>(n_tasks) << kTaskBits);
  claim_.store(job, std::memory_order_release);  // publishes fn_ and remaining_ with it
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  thread_index_ = 0;
  RunJob(job);
  // Tasks other threads claimed and still run: fn must outlive them. Workers that have not
  // woken yet are not waited for; they will find the job done.
  for (int spins = 0; remaining_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 4096) {
      PYENGINE_PAUSE();
    } else {
      std::this_thread::yield();  // the worker holding a task may be waiting for this CPU
    }
  }
}

void ThreadPool::ParallelFor(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (n_threads_ == 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mu_);
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  // A job holds at most 2^24 - 1 tasks; larger loops run as several jobs.
  const int64_t max_job = static_cast<int64_t>(kTaskMask);
  for (int64_t base = 0; base < n_tasks && !failed_.load(); base += max_job) {
    const int64_t n = std::min(max_job, n_tasks - base);
    if (base == 0 && n == n_tasks) {
      Job(n, fn);
    } else {
      const std::function<void(int64_t, int)> shifted = [&](int64_t t, int i) { fn(base + t, i); };
      Job(n, shifted);
    }
  }
  if (failed_.load()) {
    std::exception_ptr e;
    {
      std::lock_guard<std::mutex> lock(mu_);
      e = error_;
      error_ = nullptr;
    }
    std::rethrow_exception(e);
  }
}

void ThreadPool::WorkerLoop(int index) {
  thread_index_ = index;
  // Not wake_'s current value: a pool destroyed before this thread first runs has already
  // counted its stop, which must still wake this thread.
  uint64_t seen = 0;
  for (;;) {
    // Spin briefly for a new job (a decode step issues hundreds of short loops back to back),
    // yielding after a while so a busy machine's other threads get the CPU, then sleep.
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    int spins = 0;
    uint64_t now;
    while ((now = wake_.load(std::memory_order_acquire)) == seen) {
      if (++spins < 2048) {
        PYENGINE_PAUSE();
        continue;
      }
      std::this_thread::yield();
      if (spins % 64 == 0 && std::chrono::steady_clock::now() > deadline) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return wake_.load(std::memory_order_acquire) != seen; });
      }
    }
    seen = now;
    if (stop_.load()) return;
    RunJob(claim_.load(std::memory_order_acquire));
  }
}

}  // namespace pyengine
