// The consistent-hash ring: balance, stability under membership change, and
// preference lists (server/cluster/ring.h).
#include "server/cluster/ring.h"

#include <xxhash.h>

#include <algorithm>
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

// The ring's points computed apart, as placement.h defines them: each
// member's 150 virtual nodes at XXH3-64("node#i"), by position then member.
struct ReferencePoint {
  uint64_t position;
  std::string member;
};
std::vector<ReferencePoint> ReferencePoints(std::vector<std::string> members) {
  std::sort(members.begin(), members.end());
  std::vector<ReferencePoint> points;
  for (const std::string& member : members) {
    for (int i = 0; i < placement::kVirtualNodesPerMember; ++i) {
      const std::string name = absl::StrCat(member, "#", i);
      points.push_back({XXH3_64bits(name.data(), name.size()), member});
    }
  }
  std::sort(points.begin(), points.end(), [](const ReferencePoint& a, const ReferencePoint& b) {
    return a.position != b.position ? a.position < b.position : a.member < b.member;
  });
  return points;
}

// The first n distinct members clockwise from the first point at or after hash.
std::vector<std::string> ReferenceList(const std::vector<ReferencePoint>& points, uint64_t hash,
                                       size_t n) {
  size_t start = 0;
  while (start < points.size() && points[start].position < hash) ++start;
  std::vector<std::string> owners;
  for (size_t step = 0; step < points.size() && owners.size() < n; ++step) {
    const std::string& member = points[(start + step) % points.size()].member;
    if (std::find(owners.begin(), owners.end(), member) == owners.end()) owners.push_back(member);
  }
  return owners;
}

// A key's list is its point's (the coordinator keeps lists by point), as
// computed apart; hashes on a point, between points and past the last one.
TEST(RingTest, KeysOnOnePointShareTheirList) {
  const std::vector<std::string> members = Nodes(4);
  const Ring ring(members);
  const std::vector<ReferencePoint> points = ReferencePoints(members);
  ASSERT_EQ(ring.point_count(), points.size());
  std::map<size_t, std::vector<std::string>> by_point;
  for (int i = 0; i < 20'000; ++i) {
    const std::string key = Key(i);
    const uint64_t hash = XXH3_64bits(key.data(), key.size());
    const size_t point = ring.PointOf(hash);
    const std::vector<std::string> owners = ReferenceList(points, hash, 3);
    EXPECT_EQ(ring.PreferenceList(key, 3), owners) << key;
    EXPECT_EQ(ring.PreferenceListAt(point, 3), owners) << key;
    auto [it, added] = by_point.try_emplace(point, owners);
    if (!added) {
      EXPECT_EQ(it->second, owners) << "point " << point;
    }
  }
  // 4 members' 600 points: 20,000 keys land on most of them.
  EXPECT_GT(by_point.size(), 500u);
  // A hash on a point is that point's; past the last point, the first's.
  for (size_t i = 0; i < points.size(); i += 37) {
    EXPECT_EQ(ring.PointOf(points[i].position), i);
    EXPECT_EQ(ring.PreferenceListAt(i, 1), std::vector<std::string>{points[i].member});
  }
  EXPECT_EQ(ring.PointOf(0), 0u);
  EXPECT_EQ(ring.PointOf(points.back().position + 1), 0u);
  EXPECT_EQ(ring.PreferenceListOfHash(points.back().position + 1, 3), ReferenceList(points, 0, 3));
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
