#include "server/auth/worker_pool.h"

#include <cassert>
#include <utility>

namespace logkv::server::auth {

WorkerPool::WorkerPool(size_t thread_count, size_t max_queued_tasks)
    : max_queued_tasks_(max_queued_tasks) {
  assert(thread_count >= 1);
  assert(max_queued_tasks >= 1);
  threads_.reserve(thread_count);
  for (size_t i = 0; i < thread_count; ++i) threads_.emplace_back([this] { Run(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

bool WorkerPool::Submit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= max_queued_tasks_) return false;
  queue_.push_back(std::move(task));
  return true;
}

size_t WorkerPool::QueuedTasks() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

bool WorkerPool::HasWorkOrStopping() const { return stopping_ || !queue_.empty(); }

void WorkerPool::Run() {
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &WorkerPool::HasWorkOrStopping));
      // Accepted tasks still run after stopping_: each holds a promise to
      // answer someone (a Responder), and running it keeps that promise.
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace logkv::server::auth
