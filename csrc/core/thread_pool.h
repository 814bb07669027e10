// ThreadPool: persistent workers for data-parallel loops (no thread is created per operation).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace pyengine {

class ThreadPool {
 public:
  // n_threads counts the calling thread: n_threads - 1 workers are started. 0 means all cores;
  // more than kMaxThreads is refused (std::invalid_argument).
  explicit ThreadPool(int n_threads);
  static constexpr int kMaxThreads = 256;
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(task, thread_index) for every task in [0, n_tasks), spread over all threads
  // (the caller takes part), and returns when all are done. If fn throws, the remaining
  // tasks are skipped and the first exception is rethrown here once every thread has stopped.
  // Tasks are handed out in order from a shared counter, so give each a contiguous slice.
  void ParallelFor(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

 private:
  // Tasks are claimed through one word: [generation:16][n_tasks:24][next task:24]. A worker
  // claims task i of the current job only by a compare-and-swap that finds the job it read, so
  // a worker that wakes late (descheduled on a busy machine) can neither run a finished job's
  // tasks nor hold up the caller: the caller waits for the job's tasks, not for its workers.
  static constexpr int kTaskBits = 24;
  static constexpr uint64_t kTaskMask = (uint64_t{1} << kTaskBits) - 1;
  void RunJob(uint64_t job);  // claims and runs tasks of the job whose word is `job`
  void Job(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);
  void WorkerLoop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;

  std::atomic<uint64_t> claim_{0};       // see above; generation 0 is never a job
  std::atomic<int64_t> remaining_{0};    // tasks of the current job not yet finished
  const std::function<void(int64_t, int)>* fn_ = nullptr;  // read after a successful claim
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;  // first exception of the current job (set once, under mu_)
  std::atomic<bool> stop_{false};
  // Sleeping workers wait here for a new job; wake_ counts jobs so a sleeper sees any change.
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> wake_{0};
  std::mutex call_mu_;  // serialises ParallelFor callers
  static thread_local int thread_index_;  // fn's thread index: 0 the caller, 1.. the workers
};

// Number of threads to use when the caller asks for 0 ("all").
int DefaultThreadCount();

// Runs body(begin, end) over contiguous slices of [0, n) on the pool: at most 8 slices per
// thread, none smaller than min_chunk items (small loops stay on the calling thread). A body
// taking (begin, end, thread_index) also learns which thread runs it (per-thread scratch).
template <typename F>
void ParallelRanges(ThreadPool& pool, int64_t n, int64_t min_chunk, F&& body) {
  if (n <= 0) return;
  int64_t chunk = (n + pool.size() * 8 - 1) / (pool.size() * 8);
  if (chunk < min_chunk) chunk = min_chunk;
  const int64_t tasks = (n + chunk - 1) / chunk;
  auto run = [&](int64_t a, int64_t b, int thread) {
    if constexpr (std::is_invocable_v<F&, int64_t, int64_t, int>) {
      body(a, b, thread);
    } else {
      body(a, b);
    }
  };
  if (tasks <= 1) {
    run(int64_t{0}, n, 0);
    return;
  }
  pool.ParallelFor(tasks, [&](int64_t task, int thread) {
    const int64_t a = task * chunk;
    run(a, a + chunk < n ? a + chunk : n, thread);
  });
}

}  // namespace pyengine
