#include "runtime/request.h"

#include <chrono>

namespace pyengine {

bool Request::Next(GenerationStep* step, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [&] { return !steps_.empty(); };
  if (timeout_ms < 0) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
    return false;
  }
  *step = std::move(steps_.front());
  steps_.pop_front();
  return true;
}

std::vector<GenerationStep> Request::Poll() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<GenerationStep> out(std::make_move_iterator(steps_.begin()),
                                  std::make_move_iterator(steps_.end()));
  steps_.clear();
  return out;
}

bool Request::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

RequestCounts Request::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

std::string Request::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

std::vector<float> Request::TakeResult() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(result_);
}

void Request::Push(GenerationStep step) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = step.done;
    steps_.push_back(std::move(step));
  }
  cv_.notify_all();
}

void Request::Fail(const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    error_ = error;
    finished_ = true;
    GenerationStep step;
    step.done = true;
    step.done_reason = "error";
    steps_.push_back(std::move(step));
  }
  cv_.notify_all();
}

void Request::SetCounts(const RequestCounts& c) {
  std::lock_guard<std::mutex> lock(mu_);
  counts_ = c;
}

}  // namespace pyengine
