// The permission rules of the ACLs (docs/security.md), as a table: every
// class (owner, group member, other) x every permission bit x prefix
// nesting (the longest prefix decides; a key no entry covers follows the
// default). Then the commands' validation, snapshots, and the longest-prefix
// match against a brute-force one over many entries.
#include "server/control/acl_state.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/control/command_encoding.h"
#include "server/control/control_generated.h"
#include "server/control/control_state.h"

namespace logkv::server::control {
namespace {

// "\0t" + 8-byte big-endian user id (server/namespaces.h).
std::string Ns(uint64_t user) {
  std::string prefix("\0t", 2);
  for (int shift = 56; shift >= 0; shift -= 8) prefix.push_back(static_cast<char>(user >> shift));
  return prefix;
}

constexpr uint64_t kOwner = 2;   // the namespace's user and the entries' owner
constexpr uint64_t kMember = 3;  // in the group
constexpr uint64_t kOther = 4;   // in no group
constexpr uint64_t kAdmin = 1;   // the first account: no data rights from that

// The accounts of the tests: admin (1), owner (2), member (3), other (4).
void SignUpEveryone(ControlState* state) {
  for (const char* name : {"admin", "owner", "member", "other"}) {
    AccountUser user;
    user.email = absl::StrCat(name, "@example.com");
    user.username = name;
    user.email_key = user.email;
    user.username_key = user.username;
    user.password_hash = "$argon2id$x";
    ASSERT_TRUE(state->Apply(EncodeSignUp(user)).ok());
  }
}

// The owner's, all permissions to the owner, audited.
AclEntry AuditedEntry() {
  AclEntry entry;
  entry.owner = kOwner;
  entry.mode = 0xf00;
  entry.audit = true;
  return entry;
}

class AclStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SignUpEveryone(&state_);
    absl::StatusOr<uint64_t> group = state_.Apply(EncodeCreateGroup("room", 1));
    ASSERT_TRUE(group.ok()) << group.status();
    group_ = *group;
    ASSERT_TRUE(state_.Apply(EncodeSetGroupMember(group_, kMember, true)).ok());
  }

  void SetAcl(absl::string_view user_prefix, uint32_t mode) {
    AclEntry entry;
    entry.owner = kOwner;
    entry.group_id = group_;
    entry.mode = mode;
    absl::StatusOr<uint64_t> done =
        state_.Apply(EncodeSetAcl(absl::StrCat(Ns(kOwner), user_prefix), entry));
    ASSERT_TRUE(done.ok()) << done.status();
  }

  uint32_t Allowed(uint64_t user, absl::string_view user_key) const {
    return state_.access().Allowed(user, absl::StrCat(Ns(kOwner), user_key));
  }

  ControlState state_;
  uint64_t group_ = 0;
};

TEST_F(AclStateTest, DefaultIsTheNamespacesUserAlone) {
  EXPECT_EQ(Allowed(kOwner, "a/b"), kPermAll);
  EXPECT_EQ(Allowed(kMember, "a/b"), 0u);
  EXPECT_EQ(Allowed(kOther, "a/b"), 0u);
  EXPECT_EQ(Allowed(kAdmin, "a/b"), 0u);
  // Not a tenant key: nobody.
  EXPECT_EQ(state_.access().Allowed(kOwner, "plain"), 0u);
}

// Owner, group and others x create, delete, write, read, one bit at a time:
// exactly that class gets exactly that bit.
TEST_F(AclStateTest, EachClassGetsItsOwnBits) {
  struct Class {
    const char* name;
    uint64_t user;
    int shift;
  };
  const Class classes[] = {{"owner", kOwner, kOwnerShift},
                           {"group", kMember, kGroupShift},
                           {"others", kOther, kOthersShift}};
  const uint32_t bits[] = {kPermCreate, kPermDelete, kPermWrite, kPermRead};
  for (const Class& granted : classes) {
    for (uint32_t bit : bits) {
      SetAcl("shared/", bit << granted.shift);
      for (const Class& asking : classes) {
        const uint32_t expected = asking.shift == granted.shift ? bit : 0;
        EXPECT_EQ(Allowed(asking.user, "shared/doc"), expected)
            << "mode " << ModeString(bit << granted.shift) << " asked by " << asking.name;
      }
      // The administrator is an "other" like anyone.
      EXPECT_EQ(Allowed(kAdmin, "shared/doc"), granted.shift == kOthersShift ? bit : 0u);
    }
  }
}

// Nesting: the longest prefix decides, whichever is more or less generous;
// removing an entry hands its keys back to the next shorter one.
TEST_F(AclStateTest, MostSpecificPrefixWins) {
  struct Row {
    const char* key;
    uint32_t owner, member, other;
  };
  SetAcl("home/", 0xf40);               // owner all, group delete, others none
  SetAcl("home/room/", 0xf31);          // group write and read, others read
  SetAcl("home/room/private/", 0xc00);  // owner create+delete only
  SetAcl("home/roomy", 0x0ff);          // shares bytes with home/room/, not a parent
  const Row rows[] = {
      {"elsewhere", kPermAll, 0, 0},                       // no entry: default
      {"home/x", 0xf, 0x4, 0x0},                           // home/
      {"home/room", 0xf, 0x4, 0x0},                        // not under home/room/
      {"home/room/doc", 0xf, 0x3, 0x1},                    // home/room/
      {"home/room/private/diary", 0xc, 0x0, 0x0},          // home/room/private/
      {"home/room/privatex", 0xf, 0x3, 0x1},               // home/room/
      {"home/roomy/z", 0x0, 0xf, 0xf},                     // home/roomy
      {"home/roomx", 0xf, 0x4, 0x0},                       // home/ (roomy is not a prefix)
  };
  for (const Row& row : rows) {
    EXPECT_EQ(Allowed(kOwner, row.key), row.owner) << row.key;
    EXPECT_EQ(Allowed(kMember, row.key), row.member) << row.key;
    EXPECT_EQ(Allowed(kOther, row.key), row.other) << row.key;
  }
  ASSERT_TRUE(state_.Apply(EncodeRemoveAcl(absl::StrCat(Ns(kOwner), "home/room/private/"))).ok());
  EXPECT_EQ(Allowed(kMember, "home/room/private/diary"), 0x3u);
  // A scan over home/room/ is not uniform while an entry lies under it.
  uint32_t bits = 0;
  EXPECT_FALSE(state_.access().Uniform(kMember, absl::StrCat(Ns(kOwner), "home/"), &bits));
  EXPECT_TRUE(state_.access().Uniform(kMember, absl::StrCat(Ns(kOwner), "home/room/"), &bits));
  EXPECT_EQ(bits, 0x3u);
}

TEST_F(AclStateTest, LeavingTheGroupLosesItsBits) {
  SetAcl("shared/", 0xf30);
  EXPECT_EQ(Allowed(kMember, "shared/a"), 0x3u);
  ASSERT_TRUE(state_.Apply(EncodeSetGroupMember(group_, kMember, false)).ok());
  EXPECT_EQ(Allowed(kMember, "shared/a"), 0u);
  ASSERT_TRUE(state_.Apply(EncodeSetGroupMember(group_, kMember, true)).ok());
  ASSERT_TRUE(state_.Apply(EncodeDeleteGroup(group_)).ok());
  EXPECT_EQ(Allowed(kMember, "shared/a"), 0u);  // a deleted group grants nothing
}

TEST_F(AclStateTest, AuditFlagFollowsTheDecidingEntry) {
  AclEntry entry;
  entry.owner = kOwner;
  entry.mode = 0xf00;
  entry.audit = true;
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(absl::StrCat(Ns(kOwner), "ledger/"), entry)).ok());
  SetAcl("ledger/scratch/", 0xf00);
  EXPECT_TRUE(state_.access().AuditsKey(absl::StrCat(Ns(kOwner), "ledger/2024")));
  EXPECT_FALSE(state_.access().AuditsKey(absl::StrCat(Ns(kOwner), "ledger/scratch/x")));
  EXPECT_FALSE(state_.access().AuditsKey(absl::StrCat(Ns(kOwner), "other")));
}

// The audit flag is an administrator's (docs/security.md, "Access control"):
// a user who is not one may neither set it, nor clear it, nor remove an
// entry that has it; everything else of an audited entry stays theirs.
TEST_F(AclStateTest, OnlyAnAdministratorChangesAnAuditFlag) {
  const std::string prefix = absl::StrCat(Ns(kOwner), "ledger/");
  const Actor owner = Actor::User(kOwner, "n1");
  const Actor admin = Actor::User(kAdmin, "n1");
  AclEntry entry = AuditedEntry();
  EXPECT_TRUE(absl::IsPermissionDenied(state_.Apply(EncodeSetAcl(prefix, entry, owner)).status()));
  EXPECT_FALSE(state_.access().AuditsKey(prefix + "x"));
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(prefix, entry, admin)).ok());
  EXPECT_TRUE(state_.access().AuditsKey(prefix + "x"));
  // The owner changes the mode, keeping the flag; not the flag.
  entry.mode = 0xf40;
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(prefix, entry, owner)).ok());
  EXPECT_EQ(state_.access().Current().acls.at(prefix).mode, 0xf40u);
  entry.audit = false;
  EXPECT_TRUE(absl::IsPermissionDenied(state_.Apply(EncodeSetAcl(prefix, entry, owner)).status()));
  EXPECT_TRUE(absl::IsPermissionDenied(state_.Apply(EncodeRemoveAcl(prefix, owner)).status()));
  EXPECT_TRUE(state_.access().AuditsKey(prefix + "x"));
  // Another user made an administrator may; so may the node and the
  // cluster secret (no user asked).
  ASSERT_TRUE(state_.Apply(EncodeSetAdmin(kOther, true)).ok());
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(prefix, entry, Actor::User(kOther, "n2"))).ok());
  EXPECT_FALSE(state_.access().AuditsKey(prefix + "x"));
  entry.audit = true;
  Actor node;
  node.kind = Actor::Kind::kNode;
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(prefix, entry, node)).ok());
  ASSERT_TRUE(state_.Apply(EncodeRemoveAcl(prefix, admin)).ok());
  // An entry without the flag: its owner sets and removes it as before.
  entry.audit = false;
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(prefix, entry, owner)).ok());
  ASSERT_TRUE(state_.Apply(EncodeRemoveAcl(prefix, owner)).ok());
}

// The longest entry decides whether a key is audited, so the rule is about
// keys, not entries: under an audited entry the owner's new entries are
// audited too (a change that names no flag takes the one deciding there),
// and an unaudited one, or the removal of one that differs from the entry
// above it, is an administrator's.
TEST_F(AclStateTest, EntriesUnderAnAuditedOneCannotUnauditItsKeys) {
  const std::string ledger = absl::StrCat(Ns(kOwner), "ledger/");
  const Actor owner = Actor::User(kOwner, "n1");
  AclEntry entry = AuditedEntry();
  const Actor admin = Actor::User(kAdmin, "n1");
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(ledger, entry, admin)).ok());
  entry.audit = false;
  EXPECT_TRUE(absl::IsPermissionDenied(
      state_.Apply(EncodeSetAcl(ledger + "a", entry, owner)).status()));
  EXPECT_TRUE(state_.access().AuditsKey(ledger + "a1"));
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(ledger + "a", entry, owner, /*keep_audit=*/true)).ok());
  EXPECT_TRUE(state_.access().Current().acls.at(ledger + "a").audit);
  EXPECT_TRUE(state_.access().AuditsKey(ledger + "a1"));
  ASSERT_TRUE(state_.Apply(EncodeRemoveAcl(ledger + "a", owner)).ok());  // changes no key
  // An unaudited entry an administrator put under it: the owner may keep
  // it as it is, not remove it (its keys would become audited).
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(ledger + "scratch/", entry, admin)).ok());
  entry.mode = 0xf40;
  ASSERT_TRUE(
      state_.Apply(EncodeSetAcl(ledger + "scratch/", entry, owner, /*keep_audit=*/true)).ok());
  EXPECT_FALSE(state_.access().AuditsKey(ledger + "scratch/x"));
  EXPECT_TRUE(absl::IsPermissionDenied(
      state_.Apply(EncodeRemoveAcl(ledger + "scratch/", owner)).status()));
  // Keep applies as the command does: an administrator's change that names
  // no flag keeps the one set meanwhile.
  entry.audit = false;
  ASSERT_TRUE(state_.Apply(EncodeSetAcl(ledger, entry, admin, /*keep_audit=*/true)).ok());
  EXPECT_TRUE(state_.access().AuditsKey(ledger + "b"));
}

// A SetAcl committed by an older version carries no audit_needs_admin and
// applies as it did then: replaying a log must rebuild the state it built.
TEST_F(AclStateTest, AnOlderVersionsAuditedSetAclAppliesAsCommitted) {
  const std::string prefix = absl::StrCat(Ns(kOwner), "ledger/");
  flatbuffers::FlatBufferBuilder builder;
  auto p = builder.CreateVector(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
  fb::SetAclBuilder body(builder);
  body.add_prefix(p);
  body.add_owner(kOwner);
  body.add_mode(0xf00);
  body.add_audit(true);
  CommandOptions options;
  options.actor = Actor::User(kOwner, "n1");
  const std::string command =
      FinishCommand(builder, fb::CommandBody::SetAcl, body.Finish().Union(), options);
  ASSERT_TRUE(state_.Apply(command).ok());
  EXPECT_TRUE(state_.access().AuditsKey(prefix + "x"));
}

// A restored backup's table is taken back whole, ids kept, once, and only
// into a cluster whose table holds nothing; the snapshot keeps that it was.
TEST_F(AclStateTest, AnImportedTableIsTakenOnceIntoAnEmptyOne) {
  SetAcl("shared/", 0xf30);
  const Access backup = state_.access().Current();
  ControlState fresh;
  SignUpEveryone(&fresh);
  ASSERT_TRUE(fresh.Apply(EncodeImportAccess("backup", backup)).ok());
  Access taken = fresh.access().Current();
  EXPECT_EQ(taken.import_source, "backup");
  taken.import_source.clear();
  EXPECT_EQ(taken, backup);
  EXPECT_EQ(fresh.access().Allowed(kMember, absl::StrCat(Ns(kOwner), "shared/a")), 3u);
  EXPECT_TRUE(absl::IsAlreadyExists(fresh.Apply(EncodeImportAccess("backup", backup)).status()));
  // Through a snapshot: still taken, so never again.
  ControlState restored;
  ASSERT_TRUE(restored.Restore(fresh.Snapshot()).ok());
  EXPECT_EQ(restored.access().Current().import_source, "backup");
  EXPECT_TRUE(
      absl::IsAlreadyExists(restored.Apply(EncodeImportAccess("backup", backup)).status()));
  // Into a table of its own: kept, and that is final (emptied, the table
  // takes no import after).
  absl::StatusOr<uint64_t> kept = state_.Apply(EncodeImportAccess("backup", backup));
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, kAccessKept);
  Access own = state_.access().Current();
  EXPECT_EQ(own.import_source, "backup, not taken back");
  own.import_source.clear();
  EXPECT_EQ(own, backup);
  ASSERT_TRUE(state_.Apply(EncodeRemoveAcl(absl::StrCat(Ns(kOwner), "shared/"))).ok());
  ASSERT_TRUE(state_.Apply(EncodeDeleteGroup(group_)).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(state_.Apply(EncodeImportAccess("backup", backup)).status()));
}

// A table that holds nothing but the record of an import (an imported
// administrator since revoked) is still written to snapshots: the import is
// not taken again after a restart.
TEST_F(AclStateTest, TheRecordOfAnImportOutlivesAnEmptiedTable) {
  Access backup;
  backup.admins.insert(kOther);
  ControlState fresh;
  SignUpEveryone(&fresh);
  ASSERT_TRUE(fresh.Apply(EncodeImportAccess("backup", backup)).ok());
  EXPECT_TRUE(fresh.access().IsAdmin(kOther));
  ASSERT_TRUE(fresh.Apply(EncodeSetAdmin(kOther, false)).ok());
  ControlState restored;
  ASSERT_TRUE(restored.Restore(fresh.Snapshot()).ok());
  EXPECT_EQ(restored.access().Current().import_source, "backup");
  EXPECT_TRUE(
      absl::IsAlreadyExists(restored.Apply(EncodeImportAccess("backup", backup)).status()));
  EXPECT_FALSE(restored.access().IsAdmin(kOther));
}

TEST_F(AclStateTest, CommandsAreValidated) {
  AclEntry entry;
  entry.owner = kOwner;
  entry.mode = 0xf00;
  EXPECT_TRUE(absl::IsInvalidArgument(state_.Apply(EncodeSetAcl("no-namespace", entry)).status()));
  entry.owner = 99;
  EXPECT_TRUE(absl::IsNotFound(state_.Apply(EncodeSetAcl(Ns(kOwner), entry)).status()));
  entry.owner = kOwner;
  entry.group_id = 77;
  EXPECT_TRUE(absl::IsNotFound(state_.Apply(EncodeSetAcl(Ns(kOwner), entry)).status()));
  EXPECT_TRUE(absl::IsAlreadyExists(state_.Apply(EncodeCreateGroup("room", 2)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(state_.Apply(EncodeCreateGroup("bad name", 2)).status()));
  EXPECT_TRUE(absl::IsNotFound(state_.Apply(EncodeSetGroupMember(group_, 99, true)).status()));
  EXPECT_TRUE(absl::IsNotFound(state_.Apply(EncodeSetAdmin(99, true)).status()));
  EXPECT_TRUE(
      absl::IsFailedPrecondition(state_.Apply(EncodeSetAdmin(kFirstUserId, false)).status()));
  EXPECT_TRUE(absl::IsNotFound(state_.Apply(EncodeRemoveAcl(Ns(kOwner))).status()));
  EXPECT_FALSE(state_.access().IsAdmin(kOwner));
  ASSERT_TRUE(state_.Apply(EncodeSetAdmin(kOwner, true)).ok());
  EXPECT_TRUE(state_.access().IsAdmin(kOwner));
  EXPECT_TRUE(state_.access().IsAdmin(kFirstUserId));
}

TEST_F(AclStateTest, SnapshotRoundTrips) {
  SetAcl("a/", 0xf31);
  SetAcl(std::string("b\xff\0", 3), 0x001);
  ASSERT_TRUE(state_.Apply(EncodeSetAdmin(kOwner, true)).ok());
  const std::string snapshot = state_.Snapshot();
  ControlState restored;
  ASSERT_TRUE(restored.Restore(snapshot).ok());
  EXPECT_EQ(restored.access().Current(), state_.access().Current());
  EXPECT_EQ(restored.Snapshot(), snapshot);  // byte-identical
  // A state without access commands writes no access table at all.
  ControlState empty;
  ControlState empty_restored;
  ASSERT_TRUE(empty_restored.Restore(empty.Snapshot()).ok());
  EXPECT_EQ(empty_restored.access().Current(), Access());
}

TEST(AclModeTest, ParsesAndPrints) {
  EXPECT_EQ(ModeString(0xf31), "cdwr--wr---r");
  EXPECT_EQ(*ParseMode("cdwr--wr---r"), 0xf31u);
  EXPECT_EQ(*ParseMode("f31"), 0xf31u);
  EXPECT_EQ(*ParseMode("------------"), 0u);
  EXPECT_FALSE(ParseMode("rwdc--wr---r").ok());
  EXPECT_FALSE(ParseMode("1000").ok());
  EXPECT_FALSE(ParseMode("xyz").ok());
}

// Longest-prefix match against the obvious linear one, over random nested
// prefixes of a small alphabet (many shared bytes, many near misses).
TEST(AclLongestPrefixTest, MatchesBruteForce) {
  std::mt19937 random(7);
  auto word = [&random](size_t max) {
    std::string s;
    const size_t n = random() % (max + 1);
    for (size_t i = 0; i < n; ++i) s.push_back("ab/"[random() % 3]);
    return s;
  };
  Access access;
  for (int i = 0; i < 1000; ++i) {
    AclEntry entry;
    entry.mode = static_cast<uint32_t>(i);
    access.acls.emplace(Ns(1 + random() % 3) + word(8), entry);
  }
  for (int i = 0; i < 5000; ++i) {
    const std::string key = Ns(1 + random() % 3) + word(10);
    const AclEntry* expected = nullptr;
    size_t best = 0;
    for (const auto& [prefix, entry] : access.acls) {
      if (key.compare(0, prefix.size(), prefix) == 0 && (expected == nullptr || prefix.size() > best)) {
        expected = &entry;
        best = prefix.size();
      }
    }
    EXPECT_EQ(access.Longest(key), expected) << key;
  }
}

}  // namespace
}  // namespace logkv::server::control
