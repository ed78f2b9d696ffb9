// The consistent-hash ring: balance, stability under membership change, and
// preference lists (server/cluster/ring.h).
#include "server/cluster/ring.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "protocol/placement.h"
#include "server/namespaces.h"

namespace logkv::server::cluster {
namespace {

constexpr int kKeys = 100'000;

std::vector<std::string> Nodes(int count) {
  std::vector<std::string> nodes;
  for (int i = 0; i < count; ++i) nodes.push_back(absl::StrCat("node-", i));
  return nodes;
}

std::string Key(int i) { return absl::StrCat("key:", i); }

void ExpectBalanced(int members) {
  const Ring ring(Nodes(members));
  std::map<std::string, int> primaries;
  for (int i = 0; i < kKeys; ++i) ++primaries[ring.PreferenceList(Key(i), 1).at(0)];
  ASSERT_EQ(primaries.size(), static_cast<size_t>(members));
  const double expected = static_cast<double>(kKeys) / members;
  for (const auto& [node, count] : primaries) {
    EXPECT_GE(count, expected * 0.85) << node << " owns too few keys of " << members;
    EXPECT_LE(count, expected * 1.15) << node << " owns too many keys of " << members;
  }
}

TEST(RingTest, BalancedWithThreeMembers) { ExpectBalanced(3); }

// With accounts on, a key is placed (and routed by clients) as the engine
// key: the tenant's prefix, then the client's key.
TEST(RingTest, ThePlacementKeyIsTheTenantPrefixedEngineKey) {
  for (uint64_t user : {uint64_t{1}, uint64_t{258}, ~uint64_t{0}}) {
    EXPECT_EQ(placement::TenantPrefix(user), TenantPrefix(user));
    EXPECT_EQ(placement::PlacementKey(TenantPrefix(user), "user:123"),
              TenantPrefix(user) + "user:123");
  }
  EXPECT_EQ(placement::PlacementKey("", "user:123"), "user:123");
  EXPECT_EQ(placement::TenantPrefix(258), std::string("\0t\0\0\0\0\0\0\x01\x02", 10));
}
TEST(RingTest, BalancedWithFiveMembers) { ExpectBalanced(5); }

TEST(RingTest, AddingAMemberMovesAboutItsShare) {
  for (int members : {3, 5}) {
    const Ring before(Nodes(members));
    const Ring after(Nodes(members + 1));
    const std::string added = absl::StrCat("node-", members);
    int moved = 0;
    for (int i = 0; i < kKeys; ++i) {
      const std::string old_owner = before.PreferenceList(Key(i), 1).at(0);
      const std::string new_owner = after.PreferenceList(Key(i), 1).at(0);
      if (old_owner == new_owner) continue;
      ++moved;
      // A key only ever moves to the new member.
      EXPECT_EQ(new_owner, added) << Key(i);
    }
    const double share = static_cast<double>(kKeys) / (members + 1);
    EXPECT_GE(moved, share * 0.75) << members << " -> " << members + 1;
    EXPECT_LE(moved, share * 1.25) << members << " -> " << members + 1;
  }
}

TEST(RingTest, PreferenceListsAreDistinctAndCapped) {
  const Ring ring(Nodes(5));
  for (int i = 0; i < 1000; ++i) {
    for (size_t n : {1u, 3u, 5u, 7u}) {
      const std::vector<std::string> owners = ring.PreferenceList(Key(i), n);
      EXPECT_EQ(owners.size(), std::min<size_t>(n, 5));
      EXPECT_EQ(std::set<std::string>(owners.begin(), owners.end()).size(), owners.size());
    }
    // A longer list extends a shorter one: the primary stays first.
    const auto three = ring.PreferenceList(Key(i), 3);
    const auto five = ring.PreferenceList(Key(i), 5);
    EXPECT_TRUE(std::equal(three.begin(), three.end(), five.begin()));
  }
}

TEST(RingTest, SameMembersSameRing) {
  std::vector<std::string> shuffled = {"c", "a", "b", "a"};
  const Ring one(shuffled);
  const Ring two({"a", "b", "c"});
  EXPECT_EQ(one.size(), 3u);
  EXPECT_EQ(one.members(), two.members());
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(one.PreferenceList(Key(i), 3), two.PreferenceList(Key(i), 3));
  }
}

TEST(RingTest, EmptyAndSingle) {
  const Ring empty({});
  EXPECT_TRUE(empty.PreferenceList("k", 3).empty());
  const Ring single({"only"});
  EXPECT_EQ(single.PreferenceList("k", 3), std::vector<std::string>{"only"});
  EXPECT_TRUE(single.PreferenceList("k", 0).empty());
}

}  // namespace
}  // namespace logkv::server::cluster
