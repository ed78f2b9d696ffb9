// The consensus keys' part of the control plane's state machine
// (kv_state.h): the engine's single-key semantics (versions, compare-and-set,
// a delete restarting the count), which keys are consensus keys (a tenant's
// namespace skipped, the server's reserved keys never), prefixes committed
// once, limits refused alike everywhere, snapshots that restore the same
// state byte for byte, and the waits of reads for a revision.
#include "server/control/kv_state.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/control/command_encoding.h"
#include "server/control/control_state.h"

namespace logkv::server::control {
namespace {

// "\0t" + 8-byte big-endian user id (server/namespaces.h).
std::string Ns(uint64_t user) {
  std::string prefix("\0t", 2);
  for (int shift = 56; shift >= 0; shift -= 8) prefix.push_back(static_cast<char>(user >> shift));
  return prefix;
}

class KvStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(state_.Apply(EncodeSetConsensusPrefixes({"locks/", "ctr/"})).ok());
  }

  absl::StatusOr<uint64_t> Put(const std::string& key, const std::string& value,
                               std::optional<uint64_t> if_version = std::nullopt) {
    return state_.Apply(EncodeKvWrite(key, value, if_version));
  }
  absl::StatusOr<uint64_t> Delete(const std::string& key,
                                  std::optional<uint64_t> if_version = std::nullopt) {
    return state_.Apply(EncodeKvWrite(key, std::nullopt, if_version));
  }

  ControlState state_;
};

TEST(KvPrefixTest, ATenantsNamespaceIsSkippedAndReservedKeysAreNeverCovered) {
  const std::vector<std::string> prefixes = {"locks/"};
  EXPECT_TRUE(UnderConsensusPrefix(prefixes, "locks/a"));
  EXPECT_TRUE(UnderConsensusPrefix(prefixes, Ns(7) + "locks/a"));
  EXPECT_FALSE(UnderConsensusPrefix(prefixes, "lock"));
  EXPECT_FALSE(UnderConsensusPrefix(prefixes, Ns(7) + "other/locks/a"));
  // The server's own keys ("\0hint/...") and a namespace too short.
  EXPECT_FALSE(UnderConsensusPrefix(prefixes, std::string("\0hint/locks/", 12)));
  EXPECT_FALSE(UnderConsensusPrefix(prefixes, std::string("\0t", 2) + "locks/"));
  EXPECT_FALSE(UnderConsensusPrefix({}, "locks/a"));
}

TEST(KvPrefixTest, PrefixesAreCommittedOnce) {
  ControlState state;
  EXPECT_FALSE(state.kv().committed());
  EXPECT_FALSE(state.kv().Covers("locks/a"));
  ASSERT_EQ(*state.Apply(EncodeSetConsensusPrefixes({"b/", "a/", "b/"})), 2u);
  EXPECT_TRUE(state.kv().committed());
  EXPECT_EQ(state.kv().prefixes(), (std::vector<std::string>{"a/", "b/"}));
  // The same again (a restarted first node): accepted; others: refused.
  EXPECT_TRUE(state.Apply(EncodeSetConsensusPrefixes({"a/", "b/"})).ok());
  EXPECT_EQ(state.Apply(EncodeSetConsensusPrefixes({"a/"})).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(state.kv().prefixes(), (std::vector<std::string>{"a/", "b/"}));
  // None committed is a choice too: nothing is covered, for good.
  ControlState none;
  ASSERT_TRUE(none.Apply(EncodeSetConsensusPrefixes({})).ok());
  EXPECT_TRUE(none.kv().committed());
  EXPECT_FALSE(none.kv().Covers("a/x"));
  EXPECT_FALSE(none.Apply(EncodeSetConsensusPrefixes({"a/"})).ok());
}

TEST(KvPrefixTest, HostilePrefixesAreRefused) {
  ControlState state;
  EXPECT_EQ(state.Apply(EncodeSetConsensusPrefixes({""})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Apply(EncodeSetConsensusPrefixes({std::string("\0t", 2)})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Apply(EncodeSetConsensusPrefixes({std::string(kMaxConsensusPrefixBytes + 1, 'p')}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::string> many;
  for (size_t i = 0; i <= kMaxConsensusPrefixes; ++i) many.push_back(absl::StrCat("p", i));
  EXPECT_EQ(state.Apply(EncodeSetConsensusPrefixes(many)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(state.kv().committed());
}

TEST_F(KvStateTest, VersionsAndCompareAndSetFollowTheEngine) {
  EXPECT_EQ(*Put("locks/a", "1", 0), 1u);  // must be absent: it is
  EXPECT_EQ(Put("locks/a", "x", 0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*Put("locks/a", "2"), 2u);
  EXPECT_EQ(Put("locks/a", "x", 1).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*Put("locks/a", "3", 2), 3u);
  absl::StatusOr<KvEntry> entry = state_.kv().Get("locks/a");
  ASSERT_TRUE(entry.ok());
  EXPECT_EQ(entry->value, "3");
  EXPECT_EQ(entry->version, 3u);
  EXPECT_EQ(Delete("locks/a", 2).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*Delete("locks/a", 3), 4u);
  EXPECT_TRUE(absl::IsNotFound(state_.kv().Get("locks/a").status()));
  EXPECT_TRUE(absl::IsNotFound(Delete("locks/a").status()));
  // A delete ends the key's life: the next put starts at 1.
  EXPECT_EQ(*Put("locks/a", "again"), 1u);
  EXPECT_EQ(state_.kv().revision(), 5u);  // the writes that took effect
}

TEST_F(KvStateTest, KeysOutsideThePrefixesAndOverLimitsAreRefused) {
  EXPECT_EQ(Put("other/a", "v").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Put("locks/a", std::string(kMaxConsensusValueBytes + 1, 'v')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Put("locks/" + std::string(kMaxConsensusKeyBytes, 'k'), "v").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state_.kv().revision(), 0u);
  // The whole set is bounded: fill it to kMaxConsensusBytes with large values.
  const std::string value(kMaxConsensusValueBytes, 'v');
  size_t written = 0;
  absl::StatusOr<uint64_t> last = 0;
  while ((last = Put(absl::StrCat("locks/", written), value)).ok()) ++written;
  EXPECT_EQ(last.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_GE(written * value.size(), kMaxConsensusBytes - 2 * kMaxConsensusValueBytes);
  EXPECT_LE(state_.kv().Current().bytes, kMaxConsensusBytes);
  // Overwriting within the bound, and deleting, still work.
  EXPECT_TRUE(Put("locks/0", "small").ok());
  EXPECT_TRUE(Delete("locks/1").ok());
  EXPECT_TRUE(Put("locks/new", value).ok());
}

// A tenant can take its share of the cluster's bound, not all of it: the
// others can still write, and so can it once it deleted.
TEST_F(KvStateTest, ATenantCannotFillTheClusterForTheOthers) {
  const std::string value(kMaxConsensusValueBytes, 'v');
  size_t written = 0;
  absl::StatusOr<uint64_t> last = 0;
  while ((last = Put(absl::StrCat(Ns(7), "locks/", written), value)).ok()) ++written;
  EXPECT_EQ(last.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(last.status().message(), "tenant")) << last.status();
  EXPECT_LE(written * value.size(), kMaxConsensusBytesPerTenant);
  EXPECT_GE(written * value.size(), kMaxConsensusBytesPerTenant - 2 * kMaxConsensusValueBytes);
  EXPECT_LT(state_.kv().Current().bytes, kMaxConsensusBytes / 2);
  // Another tenant, and keys of no tenant, are not held back.
  EXPECT_TRUE(Put(Ns(8) + "locks/a", value).ok());
  EXPECT_TRUE(Put("locks/a", value).ok());
  // Overwrites within the share, and a put after a delete, work.
  EXPECT_TRUE(Put(Ns(7) + "locks/0", "small").ok());
  EXPECT_TRUE(Delete(Ns(7) + "locks/1").ok());
  EXPECT_TRUE(Put(Ns(7) + "locks/again", value).ok());
  // The count of keys is bounded too.
  for (size_t i = 0; i < written; ++i) (void)Delete(absl::StrCat(Ns(7), "locks/", i));
  (void)Delete(Ns(7) + "locks/again");
  EXPECT_EQ(state_.kv().Current().tenants.count(7), 0u);
  size_t keys = 0;
  while ((last = Put(absl::StrCat(Ns(7), "ctr/", keys), "1")).ok()) ++keys;
  EXPECT_EQ(keys, kMaxConsensusEntriesPerTenant) << last.status();
  EXPECT_EQ(last.status().code(), absl::StatusCode::kResourceExhausted);
  // The usage is derived: a snapshot restores it as it was.
  ControlState restored;
  ASSERT_TRUE(restored.Restore(state_.Snapshot()).ok());
  EXPECT_EQ(restored.kv().Current(), state_.kv().Current());
  EXPECT_EQ(restored.kv().Current().tenants.at(7).keys, kMaxConsensusEntriesPerTenant);
}

// A KvWrite as proposed before the tenants' share existed: without the
// field that asks for it.
std::string KvWriteWithoutShare(absl::string_view key, absl::string_view value) {
  flatbuffers::FlatBufferBuilder b;
  auto k = ByteVector(b, key);
  auto v = ByteVector(b, value);
  fb::KvWriteBuilder write(b);
  write.add_key(k);
  write.add_value(v);
  return FinishCommand(b, fb::CommandBody::KvWrite, write.Finish().Union());
}

// Entries proposed before the share are replayed as they were applied then:
// a tenant over its share that way is kept, may overwrite with values no
// larger and delete, and only grows no further.
TEST_F(KvStateTest, EntriesFromBeforeTheShareReplayAsTheyWereApplied) {
  const std::string value(kMaxConsensusValueBytes - 16, 'v');
  const size_t over = kMaxConsensusBytesPerTenant / value.size() + 4;
  for (size_t i = 0; i < over; ++i) {
    ASSERT_TRUE(state_.Apply(KvWriteWithoutShare(absl::StrCat(Ns(5), "locks/", i), value)).ok())
        << i;
  }
  EXPECT_GT(state_.kv().Current().tenants.at(5).bytes, kMaxConsensusBytesPerTenant);
  // Grows no further now.
  EXPECT_EQ(Put(Ns(5) + "locks/new", "x").status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Put(Ns(5) + "locks/0", value + "more").status().code(),
            absl::StatusCode::kResourceExhausted);
  // But its counters and locks work: the same size, smaller, a delete.
  EXPECT_TRUE(Put(Ns(5) + "locks/0", std::string(value.size(), 'w')).ok());
  EXPECT_TRUE(Put(Ns(5) + "locks/1", "small").ok());
  EXPECT_TRUE(Delete(Ns(5) + "locks/2").ok());
  EXPECT_EQ(Put(Ns(5) + "locks/1", "small!").status().code(), absl::StatusCode::kResourceExhausted)
      << "grew while still over its share";
}

TEST_F(KvStateTest, ATenantsKeysAreCoveredInItsNamespace) {
  const std::string key = Ns(9) + "ctr/hits";
  EXPECT_TRUE(state_.kv().Covers(key));
  EXPECT_EQ(*Put(key, "1", 0), 1u);
  EXPECT_EQ(state_.kv().Get(key)->value, "1");
  EXPECT_TRUE(absl::IsNotFound(state_.kv().Get("ctr/hits").status()));
}

TEST_F(KvStateTest, ASnapshotRestoresTheSameStateByteForByte) {
  ASSERT_TRUE(Put("locks/a", "1").ok());
  ASSERT_TRUE(Put("locks/a", "2").ok());
  ASSERT_TRUE(Put(Ns(3) + "ctr/x", std::string("\0\xff", 2)).ok());
  ASSERT_TRUE(Put("locks/gone", "x").ok());
  ASSERT_TRUE(Delete("locks/gone").ok());
  const std::string snapshot = state_.Snapshot();
  ControlState restored;
  ASSERT_TRUE(restored.Restore(snapshot).ok());
  EXPECT_EQ(restored.kv().Current(), state_.kv().Current());
  EXPECT_EQ(restored.Snapshot(), snapshot);
  EXPECT_TRUE(restored.kv().committed());
  EXPECT_EQ(restored.kv().Get("locks/a")->version, 2u);
  // And goes on alike.
  EXPECT_EQ(*restored.Apply(EncodeKvWrite("locks/a", "3", 2)), 3u);
  // A snapshot of a state that never had consensus keys holds no table.
  ControlState plain;
  ControlState from_plain;
  ASSERT_TRUE(from_plain.Restore(plain.Snapshot()).ok());
  EXPECT_FALSE(from_plain.kv().committed());
}

TEST_F(KvStateTest, ReadsWaitForTheirRevision) {
  std::vector<std::string> events;
  state_.kv().WhenAt(0, absl::InfiniteFuture(),
                     [&](absl::Status status) { events.push_back("0:" + status.ToString()); });
  EXPECT_EQ(events, std::vector<std::string>{"0:OK"});  // reached already
  state_.kv().WhenAt(2, absl::InfiniteFuture(),
                     [&](absl::Status status) { events.push_back("2:" + status.ToString()); });
  state_.kv().WhenAt(1, absl::InfiniteFuture(),
                     [&](absl::Status status) { events.push_back("1:" + status.ToString()); });
  state_.kv().WhenAt(9, absl::Now() - absl::Seconds(1),
                     [&](absl::Status status) { events.push_back("9:" + status.ToString()); });
  ASSERT_TRUE(Put("locks/a", "1").ok());
  EXPECT_EQ(events.size(), 2u);
  EXPECT_EQ(events.back(), "1:OK");
  // A refused write moves nothing.
  ASSERT_FALSE(Put("locks/a", "x", 7).ok());
  EXPECT_EQ(events.size(), 2u);
  ASSERT_TRUE(Put("locks/a", "2").ok());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events.back(), "2:OK");
  state_.kv().Expire(absl::Now());
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events.back().substr(0, 20), "9:DEADLINE_EXCEEDED:");
  state_.kv().WhenAt(100, absl::InfiniteFuture(),
                     [&](absl::Status status) { events.push_back(status.ToString()); });
  state_.kv().Stop();
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events.back().substr(0, 12), "UNAVAILABLE:");
  state_.kv().WhenAt(1, absl::InfiniteFuture(),
                     [&](absl::Status status) { events.push_back(status.ToString()); });
  EXPECT_EQ(events.back().substr(0, 12), "UNAVAILABLE:");
}

TEST_F(KvStateTest, ReadsAndWritesOfConsensusKeysAreNotControlPlaneAuditEntries) {
  const uint64_t before = state_.audit().Current().head_seq;
  ASSERT_TRUE(Put("locks/a", "1").ok());
  ASSERT_TRUE(state_.Apply(EncodeKvSync()).ok());
  EXPECT_EQ(state_.audit().Current().head_seq, before);
  // Setting the prefixes was one.
  EXPECT_GT(before, 0u);
}

}  // namespace
}  // namespace logkv::server::control
