#include "engine/group_commit.h"

#include <pthread.h>

#include <algorithm>
#include <cassert>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace logkv::engine {

GroupCommit::GroupCommit(size_t parts, std::function<void(size_t part)> sync)
    : GroupCommit(parts, std::move(sync), Delay{}) {}

GroupCommit::GroupCommit(size_t parts, std::function<void(size_t part)> sync, Delay delay)
    : parts_(std::max<size_t>(parts, 1)),
      sync_(std::move(sync)),
      delay_(delay),
      asked_(parts_, false),
      go_(parts_, false) {}

GroupCommit::~GroupCommit() { Stop(); }

void GroupCommit::Start() {
  // Named for top -H, ps -L and perf.
  threads_.emplace_back([this] {
    pthread_setname_np(pthread_self(), "group-commit");
    Lead();
  });
  for (size_t part = 1; part < parts_; ++part) {
    threads_.emplace_back([this, part] {
      pthread_setname_np(pthread_self(), absl::StrCat("commit-", part).substr(0, 15).c_str());
      Help(part);
    });
  }
}

void GroupCommit::Request(size_t part) {
  assert(part < parts_);
  absl::MutexLock lock(&mu_);
  ++requests_;
  asked_[part] = true;
  // The leader waits for the first request, or for its company: any other
  // wake-up would only put it back to sleep.
  if (requests_ == 1 || requests_ >= company_) requested_.Signal();
}

void GroupCommit::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    requested_.Signal();
    started_.SignalAll();
  }
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

GroupCommit::Counts GroupCommit::counts() {
  absl::MutexLock lock(&mu_);
  return counts_;
}

void GroupCommit::Lead() {
  while (true) {
    bool sync_first;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && requests_ == 0) requested_.Wait(&mu_);
      if (stop_) return;
      bool cut_short = false;
      if (company_ > 1 && requests_ < company_) {
        ++counts_.waits;
        const absl::Time until =
            absl::Now() + std::clamp(last_round_, delay_.min, std::max(delay_.min, delay_.max));
        while (!stop_ && requests_ < company_) {
          if (requested_.WaitWithDeadline(&mu_, until)) break;
        }
        if (stop_) return;
        cut_short = requests_ < company_;
        if (cut_short) ++counts_.waits_cut_short;
      }
      // Fewer came than the company: it becomes what came. Otherwise it
      // keeps the largest group, so that a round that happens to gather
      // a few less does not make the next one start early.
      company_ = cut_short ? requests_ : std::max(company_, requests_);
      ++counts_.rounds;
      counts_.writers += requests_;
      requests_ = 0;
      sync_first = asked_[0];
      for (size_t part = 1; part < parts_; ++part) {
        if (!asked_[part]) continue;
        go_[part] = true;
        ++helpers_busy_;
      }
      std::fill(asked_.begin(), asked_.end(), false);
      if (helpers_busy_ > 0) started_.SignalAll();
    }
    const absl::Time start = absl::Now();
    if (sync_first) sync_(0);
    absl::MutexLock lock(&mu_);
    // Helpers leave only between rounds, so this one is finished first.
    while (helpers_busy_ > 0) finished_.Wait(&mu_);
    last_round_ = absl::Now() - start;
  }
}

void GroupCommit::Help(size_t part) {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && !go_[part]) started_.Wait(&mu_);
      if (!go_[part]) return;  // stopping, and no round to finish
      go_[part] = false;
    }
    sync_(part);
    absl::MutexLock lock(&mu_);
    if (--helpers_busy_ == 0) finished_.Signal();
  }
}

}  // namespace logkv::engine
