#include "engine/group_commit.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace logkv::engine {

GroupCommit::GroupCommit(size_t parts, std::function<void(size_t part)> sync)
    : GroupCommit(parts, std::move(sync), Delay{}) {}

GroupCommit::GroupCommit(size_t parts, std::function<void(size_t part)> sync, Delay delay)
    : parts_(std::max<size_t>(parts, 1)), sync_(std::move(sync)), delay_(delay) {}

GroupCommit::~GroupCommit() { Stop(); }

void GroupCommit::Start() {
  threads_.emplace_back([this] { Lead(); });
  for (size_t part = 1; part < parts_; ++part) threads_.emplace_back([this, part] { Help(part); });
}

void GroupCommit::Request() {
  absl::MutexLock lock(&mu_);
  ++requests_;
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
  for (std::thread &thread : threads_) thread.join();
  threads_.clear();
}

GroupCommit::Counts GroupCommit::counts() {
  absl::MutexLock lock(&mu_);
  return counts_;
}

uint64_t GroupCommit::Company() const { return *std::max_element(recent_.begin(), recent_.end()); }

void GroupCommit::Lead() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && requests_ == 0) requested_.Wait(&mu_);
      if (stop_) return;
      if (company_ > 1 && requests_ < company_) {
        ++counts_.waits;
        const absl::Time until =
            absl::Now() + std::clamp(last_round_, delay_.min, std::max(delay_.min, delay_.max));
        while (!stop_ && requests_ < company_) {
          if (requested_.WaitWithDeadline(&mu_, until)) break;
        }
        if (stop_) return;
        if (requests_ < company_) ++counts_.waits_cut_short;
      }
      ++counts_.rounds;
      counts_.writers += requests_;
      recent_[next_recent_] = requests_;
      next_recent_ = (next_recent_ + 1) % recent_.size();
      company_ = Company();
      requests_ = 0;
      ++round_;
      helpers_busy_ = parts_ - 1;
      started_.SignalAll();
    }
    const absl::Time start = absl::Now();
    sync_(0);
    absl::MutexLock lock(&mu_);
    // Helpers leave only between rounds, so this one is finished first.
    while (helpers_busy_ > 0) finished_.Wait(&mu_);
    last_round_ = absl::Now() - start;
  }
}

void GroupCommit::Help(size_t part) {
  uint64_t done = 0;  // the last round this helper took part in
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && round_ == done) started_.Wait(&mu_);
      if (round_ == done) return;  // stopping, and no round to finish
      done = round_;
    }
    sync_(part);
    absl::MutexLock lock(&mu_);
    if (--helpers_busy_ == 0) finished_.Signal();
  }
}

}  // namespace logkv::engine
