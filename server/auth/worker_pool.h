// A small fixed set of threads for work too slow for a network loop: argon2id
// password hashing (tens of milliseconds and tens of MiB each) and account
// writes that may wait for an fsync. The queue is bounded so that a flood of
// logins is refused quickly (the caller answers 503 with Retry-After) instead
// of piling up memory and latency.
//
// Thread-safety: Submit may be called from any thread at once, including
// from a task. Destruction stops intake, runs every task already accepted and
// joins the threads; it must not happen on one of the pool's own threads, and
// whatever the tasks use must outlive the pool.
#ifndef LOGKV_SERVER_AUTH_WORKER_POOL_H_
#define LOGKV_SERVER_AUTH_WORKER_POOL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace logkv::server::auth {

class WorkerPool {
 public:
  // REQUIRES: thread_count >= 1, max_queued_tasks >= 1.
  WorkerPool(size_t thread_count, size_t max_queued_tasks);
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  ~WorkerPool();

  // Queues task to run on a pool thread. False, with task dropped unrun, when
  // max_queued_tasks are already waiting or the pool is shutting down.
  // REQUIRES: task does not throw.
  [[nodiscard]] bool Submit(std::function<void()> task);

  // Tasks waiting for a thread (not counting those running).
  size_t QueuedTasks() const;

 private:
  void Run();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const size_t max_queued_tasks_;

  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Started in the constructor, joined in the destructor; touched by no one else.
  std::vector<std::thread> threads_;
};

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_WORKER_POOL_H_
