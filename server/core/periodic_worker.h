// A thread that runs one task periodically: every interval, and at once when
// woken. The node's background tasks (anti-entropy, the purger, hinted
// handoff) share it, so they start, stop and wake the same way.
//
// Runs never overlap: one thread runs them one after the other. Start
// launches the thread (the first run after initial_delay); Stop asks the run
// in progress to end (stopping() turns true and SleepUntil returns early),
// then joins the thread. A stopped worker may be started again.
//
// A wake is never lost: one that arrives during a run calls for another run
// right after it, since whatever called for it (a ring change, a new hint)
// may have come after the run read its inputs.
//
// Thread-safety: every method may be called from any thread, the task's
// included, except Start and Stop, which must not be called from the task
// (Stop joins its thread). Calls to Start and Stop are serialised.
#ifndef LOGKV_SERVER_CORE_PERIODIC_WORKER_H_
#define LOGKV_SERVER_CORE_PERIODIC_WORKER_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace logkv::server {

struct PeriodicWorkerOptions {
  // Time between two runs.
  absl::Duration interval = absl::Seconds(1);
  // The first run starts this long after Start.
  absl::Duration initial_delay = absl::ZeroDuration();
  // Whether interval counts from the start of a run (a fixed rate: a run
  // longer than interval is followed at once) instead of from its end (a
  // fixed pause between runs).
  bool interval_from_start = false;
};

class PeriodicWorker {
 public:
  using Task = std::function<void()>;

  // name: for the thread's name and messages (the thread's name is cut to
  // the 15 bytes Linux keeps).
  PeriodicWorker(std::string name, Task task, const PeriodicWorkerOptions& options);
  PeriodicWorker(const PeriodicWorker&) = delete;
  PeriodicWorker& operator=(const PeriodicWorker&) = delete;
  ~PeriodicWorker();  // Stop()

  // Starts the thread: the first run after initial_delay. FailedPrecondition
  // when it is already running.
  absl::Status Start();
  // Makes stopping() true, ends the wait and every SleepUntil, and joins the
  // thread once the run in progress returned. Idempotent; also fine when the
  // worker never started.
  void Stop();

  // A run starts now: ends the current wait, or, during a run, calls for
  // another one right after it. Nothing when the worker is not running
  // (Start schedules the first run).
  void Wake() { WakeAfter(absl::ZeroDuration()); }
  // The next run starts within delay (sooner if it was due sooner).
  void WakeAfter(absl::Duration delay);

  // Whether Stop was called and Start not since: a long task checks it
  // between steps and returns early.
  bool stopping() const;
  // Between Start and Stop.
  bool running() const;
  // Sleeps until deadline, or less when a stop is asked for: false when
  // stopping. For pauses inside a task (rate limits, retries), from any
  // thread.
  bool SleepUntil(absl::Time deadline) const;

  const std::string& name() const { return name_; }

 private:
  void Loop();

  const std::string name_;
  const Task task_;
  const PeriodicWorkerOptions options_;

  // Serialises Start and Stop; held while Stop joins (the task never takes it).
  absl::Mutex control_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::thread thread_ ABSL_GUARDED_BY(control_mu_);

  mutable absl::Mutex mu_;
  // Signalled on Stop and on every wake; the loop and SleepUntil wait on it.
  mutable absl::CondVar changed_;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // When the next run starts; during a run, InfiniteFuture unless a wake
  // asked for one.
  absl::Time next_run_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CORE_PERIODIC_WORKER_H_
