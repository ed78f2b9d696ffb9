// Membership merge rules (server/cluster/membership.h), as pure functions;
// and whole Memberships driven by hand (manual ticks, an injected clock and
// send function), as bench/cluster_sim.cc runs them.
#include "server/cluster/membership.h"

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "protocol/frame.h"

namespace logkv::server::cluster {
namespace {

Member M(MemberState state, uint64_t incarnation) {
  Member member;
  member.node_id = "n1";
  member.address = "127.0.0.1:7070";
  member.state = state;
  member.incarnation = incarnation;
  return member;
}

constexpr MemberState kAlive = MemberState::kAlive;
constexpr MemberState kSuspect = MemberState::kSuspect;
constexpr MemberState kDead = MemberState::kDead;
constexpr MemberState kLeft = MemberState::kLeft;

TEST(MembershipMergeTest, HigherIncarnationWins) {
  EXPECT_TRUE(Supersedes(M(kAlive, 2), M(kDead, 1)));
  EXPECT_TRUE(Supersedes(M(kAlive, 2), M(kSuspect, 1)));
  EXPECT_TRUE(Supersedes(M(kAlive, 2), M(kLeft, 1)));  // a left node that came back
  EXPECT_FALSE(Supersedes(M(kDead, 1), M(kAlive, 2)));
  EXPECT_FALSE(Supersedes(M(kLeft, 1), M(kAlive, 2)));
}

TEST(MembershipMergeTest, AtEqualIncarnationLaterStateWins) {
  EXPECT_TRUE(Supersedes(M(kSuspect, 5), M(kAlive, 5)));
  EXPECT_TRUE(Supersedes(M(kDead, 5), M(kSuspect, 5)));
  EXPECT_TRUE(Supersedes(M(kDead, 5), M(kAlive, 5)));
  EXPECT_TRUE(Supersedes(M(kLeft, 5), M(kDead, 5)));
  EXPECT_FALSE(Supersedes(M(kAlive, 5), M(kSuspect, 5)));
  EXPECT_FALSE(Supersedes(M(kSuspect, 5), M(kDead, 5)));
}

TEST(MembershipMergeTest, LeftIsFinalForItsIncarnation) {
  for (MemberState state : {kAlive, kSuspect, kDead}) {
    EXPECT_FALSE(Supersedes(M(state, 5), M(kLeft, 5)));
  }
}

TEST(MembershipMergeTest, SameNewsIsNoChange) {
  for (MemberState state : {kAlive, kSuspect, kDead, kLeft}) {
    EXPECT_FALSE(Supersedes(M(state, 3), M(state, 3)));
  }
}

TEST(MembershipMergeTest, SuspicionIsRefutedWithAHigherIncarnation) {
  const Member self = M(kAlive, 7);
  EXPECT_EQ(RefutingIncarnation(self, M(kSuspect, 7), false), 8u);
  EXPECT_EQ(RefutingIncarnation(self, M(kDead, 7), false), 8u);
  EXPECT_EQ(RefutingIncarnation(self, M(kLeft, 7), false), 8u);
  // A rumour from a previous life with a higher incarnation, whatever it says.
  EXPECT_EQ(RefutingIncarnation(self, M(kDead, 9), false), 10u);
  EXPECT_EQ(RefutingIncarnation(self, M(kAlive, 9), false), 10u);
  // The refutation supersedes the rumour everywhere.
  EXPECT_TRUE(Supersedes(M(kAlive, 8), M(kSuspect, 7)));
}

TEST(MembershipMergeTest, NothingToRefute) {
  const Member self = M(kAlive, 7);
  EXPECT_EQ(RefutingIncarnation(self, M(kAlive, 7), false), 0u);
  EXPECT_EQ(RefutingIncarnation(self, M(kSuspect, 6), false), 0u);  // old news
  EXPECT_EQ(RefutingIncarnation(self, M(kDead, 6), false), 0u);
  // A leaving node does not argue with what it hears.
  EXPECT_EQ(RefutingIncarnation(M(kLeft, 7), M(kDead, 7), true), 0u);
}

TEST(MembershipMergeTest, StateNames) {
  EXPECT_STREQ(MemberStateName(kAlive), "alive");
  EXPECT_STREQ(MemberStateName(kSuspect), "suspect");
  EXPECT_STREQ(MemberStateName(kDead), "dead");
  EXPECT_STREQ(MemberStateName(kLeft), "left");
}

// Three nodes with manual ticks: gossip goes through a queue the test
// drains, time is a counter. They find each other through node 0, and a
// node that stops answering becomes Suspect, then Dead, everywhere.
class ManualMembershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      MembershipOptions options;
      options.self.node_id = absl::StrCat("n", i);
      options.self.address = absl::StrCat("10.0.0.", i, ":7070");
      if (i > 0) options.seeds = {"10.0.0.0:7070"};
      options.now_unix_ms = [this] { return now_ms_; };
      options.send = [this](const std::string& address, std::string frame, absl::Duration,
                            std::function<void(absl::StatusOr<std::string>)> done) {
        queue_.push_back(Message{address, std::move(frame), std::move(done)});
      };
      options.random_seed = 7 + i;
      options.manual_ticks = true;
      auto membership = std::make_unique<Membership>(options, nullptr);
      by_address_[options.self.address] = membership.get();
      nodes_.push_back(std::move(membership));
    }
    for (auto& node : nodes_) ASSERT_TRUE(node->Start().ok());
  }
  void TearDown() override {
    Deliver();  // nothing may stay in flight at Stop
    for (auto& node : nodes_) node->Stop();
  }

  // Delivers every queued gossip (and those their answers cause).
  void Deliver() {
    while (!queue_.empty()) {
      Message message = std::move(queue_.front());
      queue_.pop_front();
      Membership* target = by_address_.at(message.address);
      if (down_.contains(message.address)) {
        message.done(absl::DeadlineExceededError("down"));
        if (after_each_) after_each_();
        continue;
      }
      absl::StatusOr<const protocol::Request*> request =
          protocol::VerifyRequest(message.frame, protocol::Limits{});
      ASSERT_TRUE(request.ok()) << request.status();
      ASSERT_NE((*request)->operation_as_Gossip(), nullptr);
      flatbuffers::FlatBufferBuilder builder(256);
      target->HandleGossip(*(*request)->operation_as_Gossip(), &builder, 1);
      if (after_each_) after_each_();
      message.done(std::string(protocol::FrameOf(builder)));
      if (after_each_) after_each_();
    }
  }

  // One gossip interval: every node that is up ticks, then gossip settles.
  void Round() {
    now_ms_ += 500;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (!down_.contains(nodes_[i]->self().address)) nodes_[i]->Tick();
      if (after_each_) after_each_();
    }
    Deliver();
  }

  MemberState StateSeenBy(size_t observer, const std::string& node_id) {
    Member member;
    EXPECT_TRUE(nodes_[observer]->Find(node_id, &member)) << node_id;
    return member.state;
  }

  struct Message {
    std::string address;
    std::string frame;
    std::function<void(absl::StatusOr<std::string>)> done;
  };
  // Called after each tick, each gossip handled and each answer merged.
  std::function<void()> after_each_;
  int64_t now_ms_ = 1'800'000'000'000;
  std::deque<Message> queue_;
  std::map<std::string, Membership*> by_address_;
  std::set<std::string> down_;
  std::vector<std::unique_ptr<Membership>> nodes_;
};

TEST_F(ManualMembershipTest, NodesFindEachOtherAndDetectAStoppedOne) {
  // No thread ticks: nothing happens until the test ticks.
  EXPECT_EQ(nodes_[1]->Members().size(), 1u);
  for (int i = 0; i < 4; ++i) Round();
  for (size_t observer = 0; observer < 3; ++observer) {
    ASSERT_EQ(nodes_[observer]->Members().size(), 3u) << observer;
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(StateSeenBy(observer, absl::StrCat("n", i)), MemberState::kAlive);
    }
    EXPECT_TRUE(nodes_[observer]->ViewConfirmed());
  }
  // Node 2 stops answering: missed pings make it Suspect, and after
  // dead_after (10 s of the injected clock) Dead, at both others.
  down_.insert("10.0.0.2:7070");
  bool suspected = false;
  for (int i = 0; i < 200 && !suspected; ++i) {
    Round();
    suspected = StateSeenBy(0, "n2") != MemberState::kAlive &&
                StateSeenBy(1, "n2") != MemberState::kAlive;
  }
  ASSERT_TRUE(suspected);
  for (int i = 0; i < 200 && (StateSeenBy(0, "n2") != MemberState::kDead ||
                              StateSeenBy(1, "n2") != MemberState::kDead);
       ++i) {
    Round();
  }
  EXPECT_EQ(StateSeenBy(0, "n2"), MemberState::kDead);
  EXPECT_EQ(StateSeenBy(1, "n2"), MemberState::kDead);
}

// FindAddresses answers what Find does of a member's addresses and state.
TEST_F(ManualMembershipTest, FindAddressesAnswersAsFindDoes) {
  for (int i = 0; i < 4; ++i) Round();
  down_.insert("10.0.0.2:7070");
  for (int i = 0; i < 10; ++i) Round();
  for (size_t observer = 0; observer < 3; ++observer) {
    for (int i = 0; i < 3; ++i) {
      const std::string node_id = absl::StrCat("n", i);
      Member member;
      ASSERT_TRUE(nodes_[observer]->Find(node_id, &member)) << node_id;
      std::string address = "left over", http_address = "left over";
      MemberState state = MemberState::kLeft;
      ASSERT_TRUE(nodes_[observer]->FindAddresses(node_id, &address, &http_address, &state));
      EXPECT_EQ(address, member.address);
      EXPECT_EQ(http_address, member.http_address);
      EXPECT_EQ(state, member.state);
    }
    std::string address, http_address;
    MemberState state;
    EXPECT_FALSE(nodes_[observer]->FindAddresses("nobody", &address, &http_address, &state));
  }
}

// Whatever FindAddresses answers of any member changes only with the
// version: through joins, a member suspected, declared dead and back,
// checked after each tick, each gossip handled and each answer merged.
TEST_F(ManualMembershipTest, TheVersionMovesWheneverWhatFindAddressesAnswersDoes) {
  struct Seen {
    uint64_t version = 0;
    std::vector<std::string> answers;  // per member: found, addresses, state
  };
  auto look = [this](size_t observer) {
    Seen seen;
    seen.version = nodes_[observer]->version();
    for (int i = 0; i < 3; ++i) {
      std::string address, http_address;
      MemberState state = MemberState::kLeft;
      const bool found =
          nodes_[observer]->FindAddresses(absl::StrCat("n", i), &address, &http_address, &state);
      seen.answers.push_back(absl::StrCat(found, " ", address, " ", http_address, " ",
                                          MemberStateName(state)));
    }
    return seen;
  };
  std::vector<Seen> last;
  for (size_t observer = 0; observer < 3; ++observer) last.push_back(look(observer));
  // No two memberships share a version.
  EXPECT_NE(last[0].version, last[1].version);
  EXPECT_NE(last[1].version, last[2].version);
  int changes = 0;
  after_each_ = [&] {
    for (size_t observer = 0; observer < 3; ++observer) {
      Seen now = look(observer);
      if (now.answers != last[observer].answers) {
        ++changes;
        EXPECT_NE(now.version, last[observer].version) << observer;
      }
      last[observer] = std::move(now);
    }
  };
  for (int i = 0; i < 4; ++i) Round();
  down_.insert("10.0.0.2:7070");
  for (int i = 0; i < 60; ++i) Round();
  EXPECT_EQ(StateSeenBy(0, "n2"), MemberState::kDead);
  down_.erase("10.0.0.2:7070");
  for (int i = 0; i < 20; ++i) Round();
  after_each_ = nullptr;
  EXPECT_EQ(StateSeenBy(0, "n2"), MemberState::kAlive);
  // Joins, suspicion, death and return were all seen (each observer at least once).
  EXPECT_GE(changes, 6);
}

}  // namespace
}  // namespace logkv::server::cluster
