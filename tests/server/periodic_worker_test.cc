// PeriodicWorker (server/core/periodic_worker.h): runs, wakes, stops and
// restarts. Waits are bounded by generous limits and never measure time: a
// run that only a wake can cause is made certain by an interval of an hour.
#include "server/core/periodic_worker.h"

#include <atomic>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace logkv::server {
namespace {

// Far longer than any test: a run this far away never happens by itself.
constexpr absl::Duration kNever = absl::Hours(1);
// How long a test waits for what must happen before it gives up.
constexpr absl::Duration kPatience = absl::Seconds(30);

// Counts the runs; tests wait for counts.
class Counter {
 public:
  void Add() {
    absl::MutexLock lock(&mu_);
    ++runs_;
  }
  int runs() const {
    absl::MutexLock lock(&mu_);
    return runs_;
  }
  // Whether at least `runs` runs happened within kPatience.
  bool WaitFor(int runs) const {
    absl::MutexLock lock(&mu_);
    auto reached = [this, runs]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return runs_ >= runs; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), kPatience);
  }

 private:
  mutable absl::Mutex mu_;
  int runs_ ABSL_GUARDED_BY(mu_) = 0;
};

PeriodicWorkerOptions Every(absl::Duration interval, absl::Duration initial_delay) {
  PeriodicWorkerOptions options;
  options.interval = interval;
  options.initial_delay = initial_delay;
  return options;
}

TEST(PeriodicWorkerTest, RunsEveryInterval) {
  Counter counter;
  PeriodicWorker worker("test-periodic", [&counter] { counter.Add(); },
                        Every(absl::Milliseconds(1), absl::ZeroDuration()));
  EXPECT_FALSE(worker.running());
  ASSERT_TRUE(worker.Start().ok());
  EXPECT_TRUE(worker.running());
  EXPECT_TRUE(counter.WaitFor(5));
  worker.Stop();
  EXPECT_FALSE(worker.running());
  EXPECT_TRUE(worker.stopping());
  // The thread is joined: no run happens any more.
  const int runs = counter.runs();
  worker.Wake();
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(counter.runs(), runs);
}

TEST(PeriodicWorkerTest, FixedRateRunsToo) {
  Counter counter;
  PeriodicWorkerOptions options = Every(absl::Milliseconds(1), absl::ZeroDuration());
  options.interval_from_start = true;
  PeriodicWorker worker("test-rate", [&counter] { counter.Add(); }, options);
  ASSERT_TRUE(worker.Start().ok());
  EXPECT_TRUE(counter.WaitFor(5));
}

TEST(PeriodicWorkerTest, WakeRunsWithoutWaitingForTheInterval) {
  Counter counter;
  PeriodicWorker worker("test-wake", [&counter] { counter.Add(); }, Every(kNever, kNever));
  ASSERT_TRUE(worker.Start().ok());
  EXPECT_EQ(counter.runs(), 0);
  worker.Wake();
  ASSERT_TRUE(counter.WaitFor(1));
  worker.Wake();
  ASSERT_TRUE(counter.WaitFor(2));
  worker.WakeAfter(absl::Milliseconds(5));
  ASSERT_TRUE(counter.WaitFor(3));
  worker.Stop();
  EXPECT_EQ(counter.runs(), 3);
}

TEST(PeriodicWorkerTest, AWakeDuringARunCallsForAnotherRun) {
  Counter counter;
  absl::Notification entered;
  absl::Notification release;
  PeriodicWorker worker(
      "test-wake-run",
      [&] {
        counter.Add();
        if (!entered.HasBeenNotified()) {
          entered.Notify();
          release.WaitForNotification();
        }
      },
      Every(kNever, absl::ZeroDuration()));
  ASSERT_TRUE(worker.Start().ok());
  entered.WaitForNotification();
  worker.Wake();  // while the first run is in progress
  release.Notify();
  ASSERT_TRUE(counter.WaitFor(2));
  worker.Stop();
  EXPECT_EQ(counter.runs(), 2);
}

TEST(PeriodicWorkerTest, WakeBeforeStartDoesNothing) {
  Counter counter;
  PeriodicWorker worker("test-early", [&counter] { counter.Add(); }, Every(kNever, kNever));
  worker.Wake();
  ASSERT_TRUE(worker.Start().ok());
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(counter.runs(), 0);
}

// A long task ends when asked to: through SleepUntil, which returns early,
// or by looking at stopping() between its steps. Stop returning at all is
// the assertion (the tests would time out otherwise).
TEST(PeriodicWorkerTest, StopDuringALongSleepReturnsPromptly) {
  absl::Notification entered;
  std::atomic<bool> slept_through{true};
  PeriodicWorker* self = nullptr;
  PeriodicWorker worker(
      "test-long-sleep",
      [&] {
        entered.Notify();
        slept_through = self->SleepUntil(absl::Now() + kNever);
      },
      Every(kNever, absl::ZeroDuration()));
  self = &worker;
  ASSERT_TRUE(worker.Start().ok());
  entered.WaitForNotification();
  worker.Stop();
  EXPECT_FALSE(slept_through.load());
}

TEST(PeriodicWorkerTest, StopDuringALongLoopReturnsPromptly) {
  absl::Notification entered;
  std::atomic<int> steps{0};
  PeriodicWorker* self = nullptr;
  PeriodicWorker worker(
      "test-long-loop",
      [&] {
        while (!self->stopping()) {
          steps.fetch_add(1);
          if (!entered.HasBeenNotified()) entered.Notify();
          absl::SleepFor(absl::Microseconds(100));
        }
      },
      Every(kNever, absl::ZeroDuration()));
  self = &worker;
  ASSERT_TRUE(worker.Start().ok());
  entered.WaitForNotification();
  worker.Stop();
  EXPECT_GT(steps.load(), 0);
}

TEST(PeriodicWorkerTest, SleepUntilSleepsWhenNotStopping) {
  PeriodicWorker worker("test-sleep", [] {}, Every(kNever, kNever));
  EXPECT_TRUE(worker.SleepUntil(absl::Now() + absl::Milliseconds(1)));
  EXPECT_TRUE(worker.SleepUntil(absl::InfinitePast()));
  worker.Stop();
  EXPECT_FALSE(worker.SleepUntil(absl::Now() + kNever)) << "a stopped worker does not sleep";
}

TEST(PeriodicWorkerTest, StopIsIdempotent) {
  Counter counter;
  {
    PeriodicWorker never_started("test-idle", [&counter] { counter.Add(); },
                                 Every(kNever, kNever));
    never_started.Stop();
    never_started.Stop();
    EXPECT_FALSE(never_started.running());
  }  // and the destructor stops once more
  PeriodicWorker worker("test-stop", [&counter] { counter.Add(); },
                        Every(kNever, absl::ZeroDuration()));
  ASSERT_TRUE(worker.Start().ok());
  ASSERT_TRUE(counter.WaitFor(1));
  worker.Stop();
  worker.Stop();
  EXPECT_FALSE(worker.running());
  EXPECT_EQ(counter.runs(), 1);
}

TEST(PeriodicWorkerTest, RestartsAfterStop) {
  Counter counter;
  PeriodicWorker worker("test-restart", [&counter] { counter.Add(); }, Every(kNever, kNever));
  for (int round = 1; round <= 3; ++round) {
    ASSERT_TRUE(worker.Start().ok()) << "round " << round;
    EXPECT_FALSE(worker.stopping());
    worker.Wake();
    ASSERT_TRUE(counter.WaitFor(round));
    worker.Stop();
    EXPECT_TRUE(worker.stopping());
  }
  EXPECT_EQ(counter.runs(), 3);
}

TEST(PeriodicWorkerTest, StartTwiceFails) {
  Counter counter;
  PeriodicWorker worker("test-twice", [&counter] { counter.Add(); }, Every(kNever, kNever));
  ASSERT_TRUE(worker.Start().ok());
  const absl::Status again = worker.Start();
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find("test-twice"), absl::string_view::npos) << again;
  // The first start still works.
  worker.Wake();
  EXPECT_TRUE(counter.WaitFor(1));
  worker.Stop();
}

}  // namespace
}  // namespace logkv::server
