#include "server/control/control_state.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "flatbuffers/flatbuffers.h"
#include "gtest/gtest.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {
namespace {

Member NewMember(uint64_t raft_id, const std::string& node_id, Role role = Role::kVoter) {
  Member member;
  member.raft_id = raft_id;
  member.node_id = node_id;
  member.binary_address = absl::StrCat("10.0.0.", raft_id, ":7000");
  member.http_address = absl::StrCat("10.0.0.", raft_id, ":8000");
  member.role = role;
  return member;
}

// Adds and activates members 1..n ("n1".."nn").
void AddActive(ControlState& state, int n) {
  for (int i = 1; i <= n; ++i) {
    std::string id = absl::StrCat("n", i);
    ASSERT_TRUE(state.Apply(EncodeAddMember(NewMember(i, id))).ok());
    ASSERT_TRUE(state.Apply(EncodeActivateMember(id)).ok());
  }
}

absl::StatusCode CodeOf(const absl::StatusOr<uint64_t>& result) { return result.status().code(); }

TEST(ControlStateTest, StartsEmptyAtEpochZero) {
  ControlState state;
  ClusterConfig config = state.Current();
  EXPECT_EQ(config.epoch, 0u);
  EXPECT_EQ(config.replicas, kInitialReplicas);
  EXPECT_EQ(config.vnodes_per_member, kInitialVnodesPerMember);
  EXPECT_TRUE(config.members.empty());
}

TEST(ControlStateTest, MemberLifeAdvancesTheEpochByOneEachStep) {
  ControlState state;
  EXPECT_EQ(*state.Apply(EncodeAddMember(NewMember(1, "a"))), 1u);
  EXPECT_EQ(state.Current().Find("a")->state, MemberState::kJoining);
  EXPECT_EQ(*state.Apply(EncodeActivateMember("a")), 2u);
  EXPECT_EQ(*state.Apply(EncodeAddMember(NewMember(2, "b", Role::kStandby))), 3u);
  EXPECT_EQ(*state.Apply(EncodeActivateMember("b")), 4u);
  EXPECT_EQ(*state.Apply(EncodeSetReplicas(2)), 5u);

  ClusterConfig config = state.Current();
  ASSERT_EQ(config.members.size(), 2u);
  const Member* b = config.Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->raft_id, 2u);
  EXPECT_EQ(b->binary_address, "10.0.0.2:7000");
  EXPECT_EQ(b->http_address, "10.0.0.2:8000");
  EXPECT_EQ(b->role, Role::kStandby);
  EXPECT_EQ(b->state, MemberState::kActive);
  EXPECT_EQ(b->since_epoch, 4u);
  EXPECT_EQ(config.replicas, 2u);

  // N is capped at the ring's size: with two active members and N = 2 one
  // may leave (the other then holds every key).
  EXPECT_EQ(*state.Apply(EncodeBeginLeave("b")), 6u);
  EXPECT_EQ(state.Current().Find("b")->state, MemberState::kLeaving);
  EXPECT_EQ(*state.Apply(EncodeRemoveMember("b")), 7u);
  EXPECT_EQ(state.Current().Find("b")->state, MemberState::kRemoved);
  EXPECT_EQ(state.Current().Find("b")->since_epoch, 7u);

  // The last active member never leaves.
  absl::StatusOr<uint64_t> refused = state.Apply(EncodeBeginLeave("a"));
  EXPECT_EQ(CodeOf(refused), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(refused.status().message(),
            "cannot begin the leave of \"a\": no other active member would hold its keys");
  EXPECT_EQ(state.epoch(), 7u);
}

// A Barrier changes nothing and is answered with the epoch where it applies
// (a restarted node waits until it holds that epoch); the snapshot stays
// byte-identical.
TEST(ControlStateTest, BarrierAnswersTheEpochAndChangesNothing) {
  ControlState state;
  EXPECT_EQ(*state.Apply(EncodeBarrier()), 0u);
  AddActive(state, 2);
  const std::string before = state.Snapshot();
  EXPECT_EQ(*state.Apply(EncodeBarrier()), 4u);
  EXPECT_EQ(*state.Apply(EncodeBarrier()), 4u);
  EXPECT_EQ(state.epoch(), 4u);
  EXPECT_EQ(state.Snapshot(), before);
}

// The last step of a membership change names the epoch its barrier and fill
// ran under: a change committed meanwhile makes it fail (Aborted), so the
// member starts the step again at the new epoch.
TEST(ControlStateTest, ActivationAtAnOlderEpochIsAborted) {
  ControlState state;
  AddActive(state, 2);
  ASSERT_EQ(*state.Apply(EncodeAddMember(NewMember(3, "n3"))), 5u);
  ASSERT_EQ(*state.Apply(EncodeAddMember(NewMember(4, "n4"))), 6u);
  CommandOptions at_five;
  at_five.if_epoch = 5;
  EXPECT_EQ(CodeOf(state.Apply(EncodeActivateMember("n3", at_five))),
            absl::StatusCode::kAborted);
  EXPECT_EQ(state.Current().Find("n3")->state, MemberState::kJoining);
  CommandOptions at_six;
  at_six.if_epoch = 6;
  EXPECT_EQ(*state.Apply(EncodeActivateMember("n3", at_six)), 7u);
}

TEST(ControlStateTest, JoiningMemberMayBeRemovedWithoutLeaving) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeAddMember(NewMember(1, "a"))).ok());
  EXPECT_EQ(*state.Apply(EncodeRemoveMember("a")), 2u);
  EXPECT_EQ(CodeOf(state.Apply(EncodeActivateMember("a"))), absl::StatusCode::kFailedPrecondition);
}

TEST(ControlStateTest, StateTransitionsOutOfOrderAreRefused) {
  ControlState state;
  AddActive(state, 2);
  const uint64_t epoch = state.epoch();
  EXPECT_EQ(CodeOf(state.Apply(EncodeActivateMember("n1"))), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<uint64_t> remove_active = state.Apply(EncodeRemoveMember("n1"));
  EXPECT_EQ(CodeOf(remove_active), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(remove_active.status().message(), "cannot remove \"n1\": it is active");
  EXPECT_EQ(CodeOf(state.Apply(EncodeActivateMember("zz"))), absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(state.Apply(EncodeBeginLeave("zz"))), absl::StatusCode::kNotFound);
  absl::StatusOr<uint64_t> unknown = state.Apply(EncodeRemoveMember("zz"));
  EXPECT_EQ(CodeOf(unknown), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(), "no member \"zz\"");
  ASSERT_TRUE(state.Apply(EncodeBeginLeave("n1")).ok());
  EXPECT_EQ(CodeOf(state.Apply(EncodeBeginLeave("n1"))), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CodeOf(state.Apply(EncodeActivateMember("n1"))), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(state.Apply(EncodeRemoveMember("n1")).ok());
  EXPECT_EQ(CodeOf(state.Apply(EncodeRemoveMember("n1"))), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(state.epoch(), epoch + 2);
}

TEST(ControlStateTest, AddMemberValidatesItsFields) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeAddMember(NewMember(1, "a"))).ok());
  const ClusterConfig before = state.Current();

  struct Case {
    const char* name;
    Member member;
    absl::StatusCode code;
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, absl::StatusCode code, auto change) {
    Member member = NewMember(7, "g");
    change(member);
    cases.push_back({name, member, code});
  };
  using C = absl::StatusCode;
  add("raft id 0", C::kInvalidArgument, [](Member& m) { m.raft_id = 0; });
  add("empty node id", C::kInvalidArgument, [](Member& m) { m.node_id = ""; });
  add("long node id", C::kInvalidArgument,
      [](Member& m) { m.node_id = std::string(kMaxNodeIdBytes + 1, 'x'); });
  add("node id with a space", C::kInvalidArgument, [](Member& m) { m.node_id = "a b"; });
  add("node id with a NUL", C::kInvalidArgument, [](Member& m) { m.node_id = std::string("a\0b", 3); });
  add("node id not ASCII", C::kInvalidArgument, [](Member& m) { m.node_id = "n\xc3\xa9"; });
  add("empty binary address", C::kInvalidArgument, [](Member& m) { m.binary_address = ""; });
  add("long address", C::kInvalidArgument,
      [](Member& m) { m.http_address = std::string(kMaxAddressBytes + 1, '1'); });
  add("address with newline", C::kInvalidArgument, [](Member& m) { m.binary_address = "h:1\n"; });
  add("same binary and http address", C::kInvalidArgument,
      [](Member& m) { m.http_address = m.binary_address; });
  add("duplicate node id", C::kAlreadyExists, [](Member& m) { m.node_id = "a"; });
  add("duplicate raft id", C::kAlreadyExists, [](Member& m) { m.raft_id = 1; });
  add("duplicate binary address", C::kAlreadyExists,
      [](Member& m) { m.binary_address = "10.0.0.1:7000"; });
  add("binary address taken as http", C::kAlreadyExists,
      [](Member& m) { m.binary_address = "10.0.0.1:8000"; });
  add("http address taken", C::kAlreadyExists, [](Member& m) { m.http_address = "10.0.0.1:8000"; });
  for (const Case& c : cases) {
    absl::StatusOr<uint64_t> result = state.Apply(EncodeAddMember(c.member));
    EXPECT_EQ(CodeOf(result), c.code) << c.name << ": " << result.status();
    EXPECT_EQ(state.Current(), before) << c.name;
  }
  // No http address is fine.
  Member no_http = NewMember(7, "g");
  no_http.http_address = "";
  EXPECT_TRUE(state.Apply(EncodeAddMember(no_http)).ok());
}

TEST(ControlStateTest, RemovedMemberFreesItsAddressesAndMayJoinAgain) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeAddMember(NewMember(1, "a"))).ok());
  ASSERT_TRUE(state.Apply(EncodeRemoveMember("a")).ok());
  // Its raft id stays taken by the tombstone.
  Member same_raft_id = NewMember(1, "b");
  same_raft_id.binary_address = "elsewhere:1";
  same_raft_id.http_address = "";
  EXPECT_EQ(CodeOf(state.Apply(EncodeAddMember(same_raft_id))), absl::StatusCode::kAlreadyExists);
  // Its addresses are free.
  Member same_addresses = NewMember(2, "b");
  same_addresses.binary_address = "10.0.0.1:7000";
  same_addresses.http_address = "10.0.0.1:8000";
  EXPECT_EQ(*state.Apply(EncodeAddMember(same_addresses)), 3u);
  // The node that left comes back under its node id (here with a new raft
  // id and addresses): joining again, at a new epoch.
  Member again = NewMember(3, "a");
  again.binary_address = "10.0.0.3:7000";
  again.http_address = "";
  EXPECT_EQ(*state.Apply(EncodeAddMember(again)), 4u);
  EXPECT_EQ(state.Current().Find("a")->state, MemberState::kJoining);
  EXPECT_EQ(state.Current().Find("a")->raft_id, 3u);
  // A node id that is not removed stays taken.
  Member taken = NewMember(4, "a");
  taken.binary_address = "10.0.0.4:7000";
  taken.http_address = "";
  EXPECT_EQ(CodeOf(state.Apply(EncodeAddMember(taken))), absl::StatusCode::kAlreadyExists);
}

TEST(ControlStateTest, ReplaceMemberKeepsThePlaceWithANewRaftId) {
  ControlState state;
  AddActive(state, 3);
  const ClusterConfig before = state.Current();
  const Member* n2 = before.Find("n2");
  ASSERT_NE(n2, nullptr);
  Member replacement = *n2;
  replacement.raft_id = 99;
  replacement.binary_address = "10.9.9.9:7000";
  replacement.http_address = "";
  replacement.control_address = "10.9.9.9:7100";
  absl::StatusOr<uint64_t> replaced = state.Apply(EncodeReplaceMember(replacement));
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_EQ(*replaced, before.epoch + 1);
  const ClusterConfig current = state.Current();  // held: Find points into it
  const Member* after = current.Find("n2");
  EXPECT_EQ(after->raft_id, 99u);
  EXPECT_EQ(after->state, MemberState::kActive);
  EXPECT_EQ(after->binary_address, "10.9.9.9:7000");
  EXPECT_EQ(after->control_address, "10.9.9.9:7100");
  // The same raft id again, a raft id of another member, an unknown or a
  // removed member: refused, nothing changes.
  EXPECT_EQ(CodeOf(state.Apply(EncodeReplaceMember(replacement))),
            absl::StatusCode::kAlreadyExists);
  Member other_id = replacement;
  other_id.raft_id = before.Find("n1")->raft_id;
  EXPECT_EQ(CodeOf(state.Apply(EncodeReplaceMember(other_id))), absl::StatusCode::kAlreadyExists);
  Member unknown = replacement;
  unknown.node_id = "nobody";
  unknown.raft_id = 100;
  EXPECT_EQ(CodeOf(state.Apply(EncodeReplaceMember(unknown))), absl::StatusCode::kNotFound);
  Member stolen_address = replacement;
  stolen_address.raft_id = 101;
  stolen_address.binary_address = before.Find("n1")->binary_address;
  EXPECT_EQ(CodeOf(state.Apply(EncodeReplaceMember(stolen_address))),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(state.epoch(), before.epoch + 1);
}

TEST(ControlStateTest, ReplicasAreCommittedOnceAndCappedAtTheRing) {
  ControlState state;
  EXPECT_EQ(CodeOf(state.Apply(EncodeSetReplicas(0))), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(state.Apply(EncodeSetReplicas(kMaxReplicas + 1))),
            absl::StatusCode::kInvalidArgument);
  // A new cluster's first node commits its --replicas before it is active:
  // N is capped at the ring's size, so fewer members are no obstacle.
  EXPECT_EQ(*state.Apply(EncodeSetReplicas(3)), 1u);
  EXPECT_EQ(state.Current().replicas, 3u);
  // The same N is no change: accepted at the same epoch.
  EXPECT_EQ(*state.Apply(EncodeSetReplicas(3)), 1u);
  AddActive(state, 2);
  // Another N would move keys to owners that never got them: refused.
  absl::StatusOr<uint64_t> two = state.Apply(EncodeSetReplicas(2));
  EXPECT_EQ(CodeOf(two), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(two.status().message(),
            "the cluster's replication factor is 3, committed when it was created; it cannot "
            "change to 2");
  EXPECT_EQ(state.Current().replicas, 3u);
  // Kept by snapshots; a configuration without it decodes as uncommitted.
  absl::StatusOr<ClusterConfig> decoded = ControlState::DecodeSnapshot(state.Snapshot());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->replicas, 3u);
  decoded = ControlState::DecodeSnapshot(ControlState().Snapshot());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->replicas, 0u);
}

TEST(ControlStateTest, VnodesChangeOnlyBeforeAnyMemberIsActive) {
  ControlState state;
  EXPECT_EQ(CodeOf(state.Apply(EncodeSetVnodes(0))), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(state.Apply(EncodeSetVnodes(kMaxVnodesPerMember + 1))),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*state.Apply(EncodeSetVnodes(64)), 1u);
  ASSERT_TRUE(state.Apply(EncodeAddMember(NewMember(1, "a"))).ok());
  EXPECT_EQ(*state.Apply(EncodeSetVnodes(32)), 3u);  // joining only: still allowed
  ASSERT_TRUE(state.Apply(EncodeActivateMember("a")).ok());
  EXPECT_EQ(CodeOf(state.Apply(EncodeSetVnodes(16))), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(state.Current().vnodes_per_member, 32u);
}

TEST(ControlStateTest, IfEpochIsACompareAndSet) {
  ControlState state;
  EXPECT_EQ(*state.Apply(EncodeAddMember(NewMember(1, "a"), {.if_epoch = 0})), 1u);
  absl::StatusOr<uint64_t> stale = state.Apply(EncodeActivateMember("a", {.if_epoch = 0}));
  EXPECT_EQ(CodeOf(stale), absl::StatusCode::kAborted);
  EXPECT_EQ(stale.status().message(), "the command is for epoch 0; the epoch is 1");
  EXPECT_EQ(state.Current().Find("a")->state, MemberState::kJoining);
  EXPECT_EQ(*state.Apply(EncodeActivateMember("a", {.if_epoch = 1})), 2u);
}

TEST(ControlStateTest, MemberLimitIsEnforced) {
  ControlState state;
  for (size_t i = 1; i <= kMaxMembers; ++i) {
    Member member = NewMember(i, absl::StrCat("m", i));
    member.binary_address = absl::StrCat("h", i, ":1");
    member.http_address = "";
    ASSERT_TRUE(state.Apply(EncodeAddMember(member)).ok()) << i;
    if (i % 2 == 0) {
      ASSERT_TRUE(state.Apply(EncodeRemoveMember(member.node_id)).ok());
    }
  }
  Member one_more = NewMember(kMaxMembers + 1, "x");
  EXPECT_EQ(CodeOf(state.Apply(EncodeAddMember(one_more))), absl::StatusCode::kResourceExhausted);
  // The full state still snapshots and restores within the limits.
  ControlState copy;
  ASSERT_TRUE(copy.Restore(state.Snapshot()).ok());
  EXPECT_EQ(copy.Current(), state.Current());
}

// A sequence with acceptances and refusals of every kind.
std::vector<std::string> Script() {
  std::vector<std::string> script;
  for (uint64_t i = 1; i <= 5; ++i) {
    script.push_back(EncodeAddMember(NewMember(i, absl::StrCat("n", i), i > 3 ? Role::kStandby
                                                                                : Role::kVoter)));
  }
  script.push_back(EncodeAddMember(NewMember(3, "dup")));
  for (int i = 1; i <= 4; ++i) script.push_back(EncodeActivateMember(absl::StrCat("n", i)));
  script.push_back(EncodeSetReplicas(3));
  script.push_back(EncodeSetReplicas(9));
  script.push_back(EncodeBeginLeave("n2"));
  script.push_back(EncodeRemoveMember("n5"));
  script.push_back(EncodeBeginLeave("n1"));
  script.push_back(EncodeRemoveMember("n2"));
  script.push_back(EncodeActivateMember("ghost"));
  script.push_back(EncodeSetVnodes(10));
  script.push_back(EncodeSetReplicas(2, {.if_epoch = 3}));
  script.push_back("not a flatbuffer");
  return script;
}

TEST(ControlStateTest, SameCommandsGiveSameResultsAndSameSnapshotBytes) {
  ControlState a;
  ControlState b;
  std::vector<std::string> script = Script();
  for (size_t i = 0; i < script.size(); ++i) {
    absl::StatusOr<uint64_t> ra = a.Apply(script[i]);
    absl::StatusOr<uint64_t> rb = b.Apply(script[i]);
    EXPECT_EQ(ra.status(), rb.status()) << i;
    if (ra.ok() && rb.ok()) {
      EXPECT_EQ(*ra, *rb) << i;
    }
    EXPECT_EQ(a.Snapshot(), b.Snapshot()) << i;
  }
  // (n1's leave is accepted: N = 3 is capped at the two active members left.)
  EXPECT_EQ(a.epoch(), 14u);
  EXPECT_EQ(a.Current(), b.Current());
}

TEST(ControlStateTest, SnapshotRestoresTheSameStateAndFuture) {
  ControlState original;
  std::vector<std::string> script = Script();
  const size_t half = script.size() / 2;
  for (size_t i = 0; i < half; ++i) (void)original.Apply(script[i]);

  ControlState restored;
  ASSERT_TRUE(restored.Apply(EncodeAddMember(NewMember(99, "to-be-replaced"))).ok());
  ASSERT_TRUE(restored.Restore(original.Snapshot()).ok());
  EXPECT_EQ(restored.Current(), original.Current());
  EXPECT_EQ(restored.Snapshot(), original.Snapshot());
  for (size_t i = half; i < script.size(); ++i) {
    absl::StatusOr<uint64_t> ro = original.Apply(script[i]);
    absl::StatusOr<uint64_t> rr = restored.Apply(script[i]);
    EXPECT_EQ(ro.status(), rr.status()) << i;
    if (ro.ok()) {
      EXPECT_EQ(*ro, *rr) << i;
    }
  }
  EXPECT_EQ(restored.Snapshot(), original.Snapshot());

  // The empty state round-trips too.
  ControlState empty;
  ASSERT_TRUE(restored.Restore(empty.Snapshot()).ok());
  EXPECT_EQ(restored.Current(), ClusterConfig());
}

TEST(ControlStateTest, MisalignedInputIsRead) {
  ControlState state;
  std::string command = EncodeAddMember(NewMember(1, "a"));
  std::string shifted = "x" + command;
  EXPECT_EQ(*state.Apply(absl::string_view(shifted).substr(1)), 1u);
  std::string snapshot = "x" + state.Snapshot();
  ControlState copy;
  ASSERT_TRUE(copy.Restore(absl::string_view(snapshot).substr(1)).ok());
  EXPECT_EQ(copy.Current(), state.Current());
}

// ---- Hostile input ---------------------------------------------------------

// After any input, accepted or not, the state is one the state machine could
// have reached: its snapshot decodes, and restores to the same state.
void ExpectConsistent(const ControlState& state) {
  std::string snapshot = state.Snapshot();
  absl::StatusOr<ClusterConfig> decoded = ControlState::DecodeSnapshot(snapshot);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, state.Current());
}

TEST(ControlStateHostileTest, GarbageCommandsAreRefused) {
  ControlState state;
  AddActive(state, 2);
  const ClusterConfig before = state.Current();
  EXPECT_EQ(CodeOf(state.Apply("")), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(state.Apply(std::string(3, '\0'))), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(state.Apply(std::string(64, '\xff'))), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(state.Apply(std::string(kMaxCommandBytes + 1, 'a'))),
            absl::StatusCode::kInvalidArgument);
  // A snapshot is not a command.
  EXPECT_FALSE(state.Apply(state.Snapshot()).ok());
  std::mt19937_64 random(20240601);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(random() % 200, '\0');
    for (char& c : bytes) c = static_cast<char>(random());
    if (bytes.size() >= 8 && i % 2 == 0) bytes.replace(4, 4, "LKVC");  // past the identifier
    EXPECT_FALSE(state.Apply(bytes).ok()) << i;
  }
  EXPECT_EQ(state.Current(), before);
}

TEST(ControlStateHostileTest, TruncatedAndFlippedCommandsNeverCrash) {
  std::string command = EncodeAddMember(NewMember(1, "a"));
  ControlState whole;
  ASSERT_TRUE(whole.Apply(command).ok());
  // A truncation is refused, unless all it cut was trailing padding: then
  // it is the same command.
  size_t accepted = 0;
  for (size_t n = 0; n < command.size(); ++n) {
    ControlState state;
    if (state.Apply(command.substr(0, n)).ok()) {
      ++accepted;
      EXPECT_EQ(state.Current(), whole.Current()) << n;
    } else {
      EXPECT_EQ(state.epoch(), 0u) << n;
    }
  }
  EXPECT_LT(accepted, 8u);
  // Every single-bit flip: refused, or accepted as some valid command.
  for (size_t i = 0; i < command.size() * 8; ++i) {
    ControlState fresh;
    std::string flipped = command;
    flipped[i / 8] = static_cast<char>(flipped[i / 8] ^ (1 << (i % 8)));
    absl::StatusOr<uint64_t> result = fresh.Apply(flipped);
    if (result.ok()) {
      EXPECT_LE(*result, 1u) << i;  // some command, or one that changes nothing
    }
    ExpectConsistent(fresh);
  }
}

TEST(ControlStateHostileTest, UnknownUnionTypeAndEnumValuesAreRefused) {
  ControlState state;
  {  // A body type this version does not know (a newer writer's command).
    flatbuffers::FlatBufferBuilder builder;
    auto body = fb::CreateSetReplicas(builder, 2);
    fb::CommandBuilder command(builder);
    command.add_body_type(static_cast<fb::CommandBody>(42));
    command.add_body(body.Union());
    builder.Finish(command.Finish(), fb::CommandIdentifier());
    absl::StatusOr<uint64_t> result = state.Apply(absl::string_view(
        reinterpret_cast<const char*>(builder.GetBufferPointer()), builder.GetSize()));
    EXPECT_EQ(CodeOf(result), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(result.status().message(), "unknown command type 42");
  }
  {  // No body.
    flatbuffers::FlatBufferBuilder builder;
    fb::CommandBuilder command(builder);
    builder.Finish(command.Finish(), fb::CommandIdentifier());
    absl::StatusOr<uint64_t> result = state.Apply(absl::string_view(
        reinterpret_cast<const char*>(builder.GetBufferPointer()), builder.GetSize()));
    EXPECT_EQ(result.status().message(), "command has no body");
  }
  {  // A body type with no body.
    flatbuffers::FlatBufferBuilder builder;
    fb::CommandBuilder command(builder);
    command.add_body_type(fb::CommandBody::AddMember);
    builder.Finish(command.Finish(), fb::CommandIdentifier());
    absl::StatusOr<uint64_t> result = state.Apply(absl::string_view(
        reinterpret_cast<const char*>(builder.GetBufferPointer()), builder.GetSize()));
    EXPECT_EQ(result.status().message(), "command has no body");
  }
  {  // A role out of the enum.
    Member member = NewMember(1, "a");
    member.role = static_cast<Role>(9);
    absl::StatusOr<uint64_t> result = state.Apply(EncodeAddMember(member));
    EXPECT_EQ(CodeOf(result), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(result.status().message(), "unknown role 9");
  }
  {  // The wrong file identifier.
    std::string command = EncodeSetReplicas(1);
    command.replace(4, 4, "XXXX");
    EXPECT_EQ(state.Apply(command).status().message(), "malformed command");
  }
  EXPECT_EQ(state.epoch(), 0u);
}

// A snapshot written with the generated builders, so it can say anything.
struct RawMember {
  uint64_t raft_id;
  std::string node_id;
  std::string binary_address;
  std::string http_address;
  uint8_t role;
  uint8_t state;
  uint64_t since_epoch;
};
std::string RawSnapshot(uint32_t version, uint64_t epoch, uint32_t replicas, uint32_t vnodes,
                        const std::vector<RawMember>& members) {
  flatbuffers::FlatBufferBuilder builder;
  std::vector<flatbuffers::Offset<fb::Member>> offsets;
  for (const RawMember& m : members) {
    offsets.push_back(fb::CreateMember(builder, m.raft_id, builder.CreateString(m.node_id),
                                       builder.CreateString(m.binary_address),
                                       builder.CreateString(m.http_address),
                                       static_cast<fb::Role>(m.role),
                                       static_cast<fb::MemberState>(m.state), m.since_epoch));
  }
  auto vector = builder.CreateVector(offsets);
  builder.Finish(fb::CreateSnapshot(builder, version, epoch, vnodes, vector, /*accounts=*/0,
                                    /*access=*/0, /*audit=*/0, /*consensus=*/0, replicas),
                 fb::CommandIdentifier());
  return std::string(reinterpret_cast<const char*>(builder.GetBufferPointer()),
                     builder.GetSize());
}

TEST(ControlStateHostileTest, InconsistentSnapshotsAreRefused) {
  const RawMember a{1, "a", "h1:1", "h1:2", 0, 1, 1};
  const RawMember b{2, "b", "h2:1", "", 0, 1, 2};
  ControlState state;
  ASSERT_TRUE(state.Restore(RawSnapshot(1, 2, 2, 150, {a, b})).ok());
  const std::string good = state.Snapshot();

  struct Case {
    const char* name;
    std::string snapshot;
  };
  auto with = [](RawMember m, auto change) {
    change(m);
    return m;
  };
  std::vector<Case> cases = {
      {"format version 2", RawSnapshot(2, 2, 2, 150, {a, b})},
      {"format version 0", RawSnapshot(0, 2, 2, 150, {a, b})},
      {"replicas over the limit", RawSnapshot(1, 2, kMaxReplicas + 1, 150, {a, b})},
      {"vnodes 0", RawSnapshot(1, 2, 2, 0, {a, b})},
      {"unsorted", RawSnapshot(1, 2, 2, 150, {b, a})},
      {"duplicate node id", RawSnapshot(1, 2, 1, 150, {a, a})},
      {"duplicate raft id",
       RawSnapshot(1, 2, 2, 150, {a, with(b, [](RawMember& m) { m.raft_id = 1; })})},
      {"raft id 0", RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.raft_id = 0; })})},
      {"duplicate address",
       RawSnapshot(1, 2, 2, 150, {a, with(b, [](RawMember& m) { m.http_address = "h1:1"; })})},
      {"bad node id", RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.node_id = "a b"; })})},
      {"empty address",
       RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.binary_address = ""; })})},
      {"unknown role", RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.role = 3; })})},
      {"unknown state", RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.state = 4; })})},
      {"member from the future",
       RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.since_epoch = 3; })})},
      {"member from epoch 0",
       RawSnapshot(1, 2, 1, 150, {with(a, [](RawMember& m) { m.since_epoch = 0; })})},
      {"a command", EncodeSetReplicas(1)},
      {"empty", ""},
      {"too big", std::string(kMaxSnapshotBytes + 1, '\0')},
  };
  for (const Case& c : cases) {
    absl::Status status = state.Restore(c.snapshot);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << status;
    EXPECT_EQ(state.Snapshot(), good) << c.name;  // unchanged
  }
  // Removed members' addresses may repeat (they were freed).
  EXPECT_TRUE(state
                  .Restore(RawSnapshot(1, 3, 2, 150,
                                       {a, b, RawMember{3, "c", "h1:1", "h1:2", 0, 3, 3}}))
                  .ok());
}

TEST(ControlStateHostileTest, TruncatedFlippedAndRandomSnapshotsNeverCrash) {
  ControlState source;
  for (const std::string& command : Script()) (void)source.Apply(command);
  const std::string snapshot = source.Snapshot();
  const ClusterConfig expected = source.Current();

  // A truncation is refused, unless all it cut was trailing padding.
  size_t accepted = 0;
  for (size_t n = 0; n < snapshot.size(); ++n) {
    ControlState target;
    if (target.Restore(snapshot.substr(0, n)).ok()) {
      ++accepted;
      EXPECT_EQ(target.Current(), expected) << n;
    } else {
      EXPECT_EQ(target.Current(), ClusterConfig()) << n;
    }
  }
  EXPECT_LT(accepted, 8u);
  ControlState target;
  for (size_t i = 0; i < snapshot.size() * 8; ++i) {
    std::string flipped = snapshot;
    flipped[i / 8] = static_cast<char>(flipped[i / 8] ^ (1 << (i % 8)));
    ControlState fresh;
    if (fresh.Restore(flipped).ok()) {
      ExpectConsistent(fresh);  // accepted only as some valid state
    } else {
      EXPECT_EQ(fresh.Current(), ClusterConfig()) << i;
    }
  }
  std::mt19937_64 random(7);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(random() % 400, '\0');
    for (char& c : bytes) c = static_cast<char>(random());
    if (bytes.size() >= 8) bytes.replace(4, 4, "LKVC");
    EXPECT_FALSE(target.Restore(bytes).ok()) << i;
  }
  ASSERT_TRUE(target.Restore(snapshot).ok());
  EXPECT_EQ(target.Current(), expected);
}

}  // namespace
}  // namespace logkv::server::control
