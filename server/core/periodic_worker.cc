#include "server/core/periodic_worker.h"

#include <pthread.h>

#include <algorithm>
#include <cassert>
#include <utility>

#include "absl/strings/str_cat.h"

namespace logkv::server {

namespace {

// Linux keeps 15 bytes of a thread's name (plus the terminating zero).
constexpr size_t kThreadNameBytes = 15;

}  // namespace

PeriodicWorker::PeriodicWorker(std::string name, Task task, const PeriodicWorkerOptions& options)
    : name_(std::move(name)), task_(std::move(task)), options_(options) {
  assert(task_ != nullptr);
  assert(options_.interval > absl::ZeroDuration());  // else the thread would spin
}

PeriodicWorker::~PeriodicWorker() { Stop(); }

absl::Status PeriodicWorker::Start() {
  absl::MutexLock control(&control_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (running_) return absl::FailedPreconditionError(absl::StrCat(name_, " is already running"));
    assert(!thread_.joinable());  // Stop joined the previous thread
    running_ = true;
    stopping_ = false;
    next_run_ = absl::Now() + options_.initial_delay;
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void PeriodicWorker::Stop() {
  absl::MutexLock control(&control_mu_);
  // From the task, the join below would wait for itself.
  assert(!thread_.joinable() || thread_.get_id() != std::this_thread::get_id());
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    changed_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  running_ = false;
}

void PeriodicWorker::WakeAfter(absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  if (!running_ || stopping_) return;
  next_run_ = std::min(next_run_, absl::Now() + delay);
  changed_.SignalAll();
}

bool PeriodicWorker::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

bool PeriodicWorker::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

bool PeriodicWorker::SleepUntil(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  while (!stopping_ && absl::Now() < deadline) changed_.WaitWithDeadline(&mu_, deadline);
  return !stopping_;
}

void PeriodicWorker::Loop() {
  const std::string thread_name = name_.substr(0, kThreadNameBytes);
  pthread_setname_np(pthread_self(), thread_name.c_str());
  for (;;) {
    absl::Time started;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && absl::Now() < next_run_) changed_.WaitWithDeadline(&mu_, next_run_);
      if (stopping_) return;
      // From here on, a wake calls for the run after this one.
      next_run_ = absl::InfiniteFuture();
      started = absl::Now();
    }
    task_();
    absl::MutexLock lock(&mu_);
    const absl::Time from = options_.interval_from_start ? started : absl::Now();
    next_run_ = std::min(next_run_, from + options_.interval);
  }
}

}  // namespace logkv::server
