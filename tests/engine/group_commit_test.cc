// GroupCommit's rounds, driven by hand: a fake sync per part that the test
// can hold, and a delay fixed at a minute, so that whether the leader waits
// for its company is decided by the counts alone, never by timing. Checks
// that something does not happen (a round started too early) watch for a
// while: they cannot fail when the code is right, however slow the machine.
#include "engine/group_commit.h"

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace logkv::engine {
namespace {

constexpr absl::Duration kLongDelay = absl::Minutes(1);
constexpr absl::Duration kPatience = absl::Seconds(30);  // far longer than any round here
constexpr absl::Duration kWatch = absl::Milliseconds(200);

// What each part's sync saw, and a gate per part the test may close.
class Parts {
 public:
  explicit Parts(size_t count) : synced_(count, 0), open_(count, true) {}

  void Sync(size_t part) {
    absl::MutexLock lock(&mu_);
    if (part == 0) seen_at_start_.push_back(requested_);
    auto open = [this, part]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> bool { return open_[part]; };
    mu_.Await(absl::Condition(&open));
    ++synced_[part];
  }

  // A writer's request, counted before the round it joins can start.
  void Request(GroupCommit *group, size_t part = 0) {
    {
      absl::MutexLock lock(&mu_);
      ++requested_;
    }
    group->Request(part);
  }

  void SetOpen(size_t part, bool open) {
    absl::MutexLock lock(&mu_);
    open_[part] = open;
  }

  // Waits until `rounds` rounds have started (part 0 was called).
  bool AwaitRounds(size_t rounds, absl::Duration timeout = kPatience) {
    absl::MutexLock lock(&mu_);
    auto started = [this, rounds]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return seen_at_start_.size() >= rounds;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&started), timeout);
  }

  bool AwaitSynced(size_t part, int times) {
    absl::MutexLock lock(&mu_);
    auto done = [this, part, times]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return synced_[part] >= times; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), kPatience);
  }

  size_t rounds() {
    absl::MutexLock lock(&mu_);
    return seen_at_start_.size();
  }
  // Writers requested before each round started.
  std::vector<int> seen_at_start() {
    absl::MutexLock lock(&mu_);
    return seen_at_start_;
  }
  int synced(size_t part) {
    absl::MutexLock lock(&mu_);
    return synced_[part];
  }

 private:
  absl::Mutex mu_;
  int requested_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int> seen_at_start_ ABSL_GUARDED_BY(mu_);
  std::vector<int> synced_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> open_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<GroupCommit> Start(Parts *parts, size_t count) {
  auto group = std::make_unique<GroupCommit>(
      count, [parts](size_t part) { parts->Sync(part); },
      GroupCommit::Delay{kLongDelay, kLongDelay});
  group->Start();
  return group;
}

// Rounds 1 and 2 on part 0: round 1 serves a lone writer, `group` more
// arrive while it syncs, and round 2 (whose company was one) serves them at
// once. The company is then `group`.
void GatherACompany(Parts *parts, GroupCommit *group_commit, int group) {
  parts->SetOpen(0, false);
  parts->Request(group_commit);
  ASSERT_TRUE(parts->AwaitRounds(1));
  for (int i = 0; i < group; ++i) parts->Request(group_commit);
  parts->SetOpen(0, true);
  ASSERT_TRUE(parts->AwaitRounds(2));
  ASSERT_TRUE(parts->AwaitSynced(0, 2));
}

TEST(GroupCommitTest, TheLeaderWaitsForItsCompany) {
  Parts parts(1);
  std::unique_ptr<GroupCommit> group = Start(&parts, 1);
  ASSERT_NO_FATAL_FAILURE(GatherACompany(&parts, group.get(), 3));

  // One writer of the next group arrives: the leader waits for the other two.
  parts.Request(group.get());
  absl::SleepFor(kWatch);
  EXPECT_EQ(parts.rounds(), 2u) << "a round started for 1 writer of a group of 3";
  parts.Request(group.get());
  parts.Request(group.get());
  ASSERT_TRUE(parts.AwaitRounds(3));
  EXPECT_EQ(parts.seen_at_start(), (std::vector<int>{1, 4, 7}));
  group->Stop();
}

// After a large group, a round of one writer waits for the rest, which
// never come: cut short at its bound, it makes the company what came, so
// the next lone writer does not wait.
TEST(GroupCommitTest, AWaitCutShortMakesTheCompanyWhatCame) {
  Parts parts(1);
  GroupCommit group(
      1, [&parts](size_t part) { parts.Sync(part); },
      GroupCommit::Delay{absl::Milliseconds(20), absl::Milliseconds(20)});
  group.Start();
  ASSERT_NO_FATAL_FAILURE(GatherACompany(&parts, &group, 3));
  for (size_t round = 3; round <= 5; ++round) {
    parts.Request(&group);
    ASSERT_TRUE(parts.AwaitRounds(round)) << "round " << round;
    ASSERT_TRUE(parts.AwaitSynced(0, static_cast<int>(round)));
  }
  const GroupCommit::Counts counts = group.counts();
  EXPECT_EQ(counts.rounds, 5u);
  EXPECT_EQ(counts.writers, 7u);
  EXPECT_EQ(counts.waits, 1u) << "only round 3 waits";
  EXPECT_EQ(counts.waits_cut_short, 1u);
  group.Stop();
}

TEST(GroupCommitTest, ALoneWriterNeverWaits) {
  Parts parts(1);
  std::unique_ptr<GroupCommit> group = Start(&parts, 1);
  // With a minute's delay, any wait would exhaust the test's patience.
  for (size_t round = 1; round <= 20; ++round) {
    parts.Request(group.get());
    ASSERT_TRUE(parts.AwaitRounds(round)) << "round " << round;
    ASSERT_TRUE(parts.AwaitSynced(0, static_cast<int>(round)));
  }
  EXPECT_EQ(group->counts().waits, 0u);
  group->Stop();
}

// A round syncs the parts its writers asked for, side by side (part 0 ends
// while part 2 is still syncing), and the next round waits for the slowest.
// Requests are made while a held round runs, so each round's set is known.
TEST(GroupCommitTest, ARoundSyncsThePartsAskedForSideBySideAndEndsWithTheSlowest) {
  Parts parts(3);
  std::unique_ptr<GroupCommit> group = Start(&parts, 3);
  parts.SetOpen(0, false);
  parts.Request(group.get(), 0);
  ASSERT_TRUE(parts.AwaitRounds(1));  // round 1: part 0, held
  parts.SetOpen(2, false);
  parts.Request(group.get(), 0);
  parts.Request(group.get(), 2);
  parts.SetOpen(0, true);
  // Round 2 (parts 0 and 2): part 0 is done while part 2 still syncs.
  ASSERT_TRUE(parts.AwaitSynced(0, 2));
  EXPECT_EQ(parts.synced(2), 0);
  // The next round, for part 1's two writers (the company is two), waits.
  parts.Request(group.get(), 1);
  parts.Request(group.get(), 1);
  absl::SleepFor(kWatch);
  EXPECT_EQ(group->counts().rounds, 2u) << "a round started before the last one ended";
  EXPECT_EQ(parts.synced(1), 0);
  parts.SetOpen(2, true);
  EXPECT_TRUE(parts.AwaitSynced(1, 1));
  EXPECT_TRUE(parts.AwaitSynced(2, 1));
  group->Stop();
  EXPECT_EQ(group->counts().rounds, 3u);
  EXPECT_EQ(parts.synced(0), 2) << "round 3 did not ask for part 0";
  EXPECT_EQ(parts.synced(1), 1) << "rounds 1 and 2 did not ask for part 1";
  EXPECT_EQ(parts.synced(2), 1);
}

TEST(GroupCommitTest, StopEndsALeaderWaitingForItsCompany) {
  Parts parts(2);
  std::unique_ptr<GroupCommit> group = Start(&parts, 2);
  ASSERT_NO_FATAL_FAILURE(GatherACompany(&parts, group.get(), 2));
  parts.Request(group.get());  // one of two: the leader waits (a minute)

  absl::Notification stopped;
  std::thread stopper([&] {
    group->Stop();
    stopped.Notify();
  });
  EXPECT_TRUE(stopped.WaitForNotificationWithTimeout(kPatience));
  stopper.join();
  EXPECT_EQ(parts.rounds(), 2u);
}

}  // namespace
}  // namespace logkv::engine
