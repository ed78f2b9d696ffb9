// Membership merge rules (server/cluster/membership.h), as pure functions.
#include "server/cluster/membership.h"

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace logkv::server::cluster
