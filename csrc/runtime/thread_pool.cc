#include "runtime/thread_pool.h"

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
      generation_.fetch_add(1);
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
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunTasks(int index) {
  for (;;) {
    const int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (task >= n_tasks_ || failed_.load(std::memory_order_relaxed)) break;
    try {
      (*fn_)(task, index);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_tasks_ = n_tasks;
    failed_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    next_task_.store(0, std::memory_order_relaxed);
    busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  RunTasks(0);
  // Workers still finishing their last task: wait for all of them before fn goes out of scope.
  while (busy_workers_.load(std::memory_order_acquire) != 0) PYENGINE_PAUSE();
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
  uint64_t seen = 0;
  for (;;) {
    // Spin briefly for a new generation, then sleep on the condition variable.
    auto deadline = std::chrono::steady_clock::now() + kSpin;
    uint64_t gen;
    int spins = 0;
    while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
      PYENGINE_PAUSE();
      if (++spins % 1024 == 0 && std::chrono::steady_clock::now() > deadline) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
    }
    seen = gen;
    if (stop_.load()) return;
    RunTasks(index);
    busy_workers_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace pyengine
