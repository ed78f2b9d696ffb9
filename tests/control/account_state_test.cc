// The accounts part of the control plane's state machine (account_state.h),
// through ControlState::Apply as Raft drives it: ids assigned in log order,
// uniqueness of names, refusals, limits, revocations, determinism, snapshots
// and hostile bytes.
#include "server/control/account_state.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/control/command_encoding.h"
#include "server/control/control_state.h"

namespace logkv::server::control {
namespace {

AccountUser NewUser(absl::string_view name) {
  AccountUser user;
  user.email = absl::StrCat(name, "@example.com");
  user.username = std::string(name);
  user.email_key = user.email;
  user.username_key = user.username;
  user.password_hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
  user.created_at_ms = 1000;
  return user;
}

AccountApiKey NewKey(uint64_t user_id, char fill, uint8_t scopes = kScopeRead | kScopeWrite) {
  AccountApiKey key;
  key.user_id = user_id;
  key.name = "key";
  key.key_prefix = "ydht_abc";
  key.key_hash = std::string(kApiKeyHashBytes, fill);
  key.scopes = scopes;
  key.created_at_ms = 2000;
  return key;
}

TEST(AccountStateTest, SignUpAssignsIdsInLogOrderAndKeepsNamesUnique) {
  ControlState state;
  ASSERT_EQ(state.Apply(EncodeSignUp(NewUser("alice"))).value(), 1u);
  ASSERT_EQ(state.Apply(EncodeSignUp(NewUser("bob"))).value(), 2u);
  AccountUser same_email = NewUser("carol");
  same_email.email_key = "alice@example.com";
  absl::StatusOr<uint64_t> refused = state.Apply(EncodeSignUp(same_email));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(refused.status().message(), "email is already registered");
  AccountUser same_name = NewUser("dave");
  same_name.username_key = "bob";
  EXPECT_EQ(state.Apply(EncodeSignUp(same_name)).status().message(), "username is already taken");
  // A refused sign-up spends no id, and the configuration's epoch never moves.
  EXPECT_EQ(state.Apply(EncodeSignUp(NewUser("erin"))).value(), 3u);
  EXPECT_EQ(state.epoch(), 0u);
  const Accounts accounts = state.accounts().Current();
  EXPECT_EQ(accounts.users.size(), 3u);
  EXPECT_EQ(accounts.user_by_email_key.at("erin@example.com"), 3u);
}

TEST(AccountStateTest, FieldsOutOfTheirLimitsAreRefused) {
  ControlState state;
  auto refused = [&](AccountUser user) {
    return state.Apply(EncodeSignUp(user)).status().code();
  };
  AccountUser user = NewUser("a");
  user.email = "";
  EXPECT_EQ(refused(user), absl::StatusCode::kInvalidArgument);
  user = NewUser("a");
  user.email = std::string(kMaxAccountEmailBytes + 1, 'e');
  EXPECT_EQ(refused(user), absl::StatusCode::kInvalidArgument);
  user = NewUser("a");
  user.password_hash = std::string(kMaxPasswordHashBytes + 1, 'h');
  EXPECT_EQ(refused(user), absl::StatusCode::kInvalidArgument);
  user = NewUser("a");
  user.created_at_ms = -1;
  EXPECT_EQ(refused(user), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("a"))).ok());
  AccountApiKey key = NewKey(1, 'k');
  key.key_hash = "short";
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(key)).status().code(),
            absl::StatusCode::kInvalidArgument);
  key = NewKey(1, 'k', 0);
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(key)).status().code(),
            absl::StatusCode::kInvalidArgument);
  key = NewKey(1, 'k', 4);
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(key)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Apply(EncodeSetJwtSecret("", false)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Apply(EncodeSetRateLimit(-1, 0, false)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Apply(EncodeRevokeToken("", 1, 10, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AccountStateTest, KeysBelongToActiveUsersAndAreLimited) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(NewKey(9, 'x'))).status().code(),
            absl::StatusCode::kNotFound);
  for (size_t i = 0; i < kMaxUserActiveApiKeys; ++i) {
    AccountApiKey key = NewKey(1, 'a');
    key.key_hash[0] = static_cast<char>(i);
    ASSERT_EQ(state.Apply(EncodeCreateApiKey(key)).value(), i + 1);
  }
  AccountApiKey more = NewKey(1, 'b');
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(more)).status().code(),
            absl::StatusCode::kResourceExhausted);
  // A revoked key frees a place; the same hash twice is refused.
  ASSERT_EQ(state.Apply(EncodeRevokeApiKey(1, 1)).value(), 1u);
  EXPECT_EQ(state.Apply(EncodeRevokeApiKey(2, 1)).status().code(), absl::StatusCode::kNotFound);
  AccountApiKey duplicate = NewKey(1, 'a');
  duplicate.key_hash[0] = 5;
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(duplicate)).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(more)).value(), kMaxUserActiveApiKeys + 1);
  // A disabled user gets no key.
  ASSERT_TRUE(state.Apply(EncodeSetUserActive(1, false)).ok());
  AccountApiKey after = NewKey(1, 'c');
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(after)).status().code(), absl::StatusCode::kNotFound);
}

TEST(AccountStateTest, RevocationsMoveTheGenerationAndCallTheListener) {
  ControlState state;
  int revoked = 0;
  std::vector<std::pair<int64_t, int64_t>> limits;
  state.accounts().SetListener(
      {.on_revoked = [&] { ++revoked; },
       .on_rate_limit = [&](int64_t rpm, int64_t burst) { limits.emplace_back(rpm, burst); }});
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  ASSERT_TRUE(state.Apply(EncodeCreateApiKey(NewKey(1, 'k'))).ok());
  const uint64_t before = state.accounts().revocation_generation();
  ASSERT_TRUE(state.Apply(EncodeRevokeApiKey(1, 1)).ok());
  EXPECT_EQ(revoked, 1);
  ASSERT_TRUE(state.Apply(EncodeRevokeApiKey(1, 1)).ok());  // already revoked: no change
  EXPECT_EQ(revoked, 1);
  ASSERT_TRUE(state.Apply(EncodeSetUserActive(1, false)).ok());
  EXPECT_EQ(revoked, 2);
  EXPECT_NE(state.accounts().revocation_generation(), before);
  // Refresh tokens: each once; expired ones are dropped by the command's clock.
  ASSERT_TRUE(state.Apply(EncodeRevokeToken("jti-1", 1, 100, 50)).ok());
  EXPECT_EQ(state.Apply(EncodeRevokeToken("jti-1", 1, 100, 60)).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(state.Apply(EncodeRevokeToken("jti-2", 1, 300, 200)).ok());
  EXPECT_FALSE(state.accounts().Current().revoked_tokens.contains("jti-1"));
  // The rate limit: the first node's flags only if none is committed.
  ASSERT_TRUE(state.Apply(EncodeSetRateLimit(60, 10, true)).ok());
  ASSERT_TRUE(state.Apply(EncodeSetRateLimit(120, 20, true)).ok());
  ASSERT_TRUE(state.Apply(EncodeSetRateLimit(30, 5, false)).ok());
  EXPECT_EQ(limits, (std::vector<std::pair<int64_t, int64_t>>{{60, 10}, {30, 5}}));
}

// A user's revoked and expired keys are kept up to kMaxUserRetiredApiKeys;
// a new key makes the oldest go, so creating and revoking keys in a loop
// neither grows the table nor takes another user's room.
TEST(AccountStateTest, RetiredKeysAreKeptUpToTheirLimitOldestGoingFirst) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("bob"))).ok());
  AccountApiKey bobs = NewKey(2, 'b');
  ASSERT_EQ(state.Apply(EncodeCreateApiKey(bobs)).value(), 1u);
  constexpr uint64_t kChurn = kMaxUserRetiredApiKeys + 50;
  for (uint64_t i = 0; i < kChurn; ++i) {
    AccountApiKey key = NewKey(1, 'a');
    key.key_hash[0] = static_cast<char>(i);
    key.key_hash[1] = static_cast<char>(i >> 8);
    absl::StatusOr<uint64_t> id = state.Apply(EncodeCreateApiKey(key));
    ASSERT_TRUE(id.ok()) << i << " " << id.status();
    ASSERT_TRUE(state.Apply(EncodeRevokeApiKey(1, *id)).ok());
  }
  // An expired key counts as retired too, once the new key's time is past its expiry.
  AccountApiKey expired = NewKey(1, 'e');
  expired.expires_at_ms = 2500;
  ASSERT_EQ(state.Apply(EncodeCreateApiKey(expired)).value(), kChurn + 2);
  AccountApiKey last = NewKey(1, 'l');
  last.created_at_ms = 3000;
  ASSERT_EQ(state.Apply(EncodeCreateApiKey(last)).value(), kChurn + 3);
  const Accounts accounts = state.accounts().Current();
  size_t alices = 0;
  for (const auto& [id, key] : accounts.api_keys) alices += key.user_id == 1 ? 1 : 0;
  // Room is made for a retired key to come: 99 retired and the last, active one.
  EXPECT_EQ(alices, kMaxUserRetiredApiKeys);
  EXPECT_FALSE(accounts.api_keys.contains(2)) << "the oldest retired key went";
  EXPECT_TRUE(accounts.api_keys.contains(kChurn + 1)) << "the newest revoked one stays";
  EXPECT_TRUE(accounts.api_keys.contains(kChurn + 2)) << "and the expired one";
  EXPECT_TRUE(accounts.api_keys.contains(1)) << "bob's key is not alice's to drop";
  EXPECT_EQ(accounts.api_keys_by_user.at(1).size(), alices);
  EXPECT_EQ(accounts.api_key_by_hash.size(), accounts.api_keys.size());
  // What the indexes and the byte count say matches a restored copy's.
  ControlState restored;
  ASSERT_TRUE(restored.Restore(state.Snapshot()).ok());
  EXPECT_EQ(restored.accounts().Current(), accounts);
}

// A user's sessions end (their generation moves on) with EndSessions and
// with every change of SetUserActive; a user past kMaxUserRevokedTokens used
// refresh tokens ends its own, its entries going with them, and no one else's.
TEST(AccountStateTest, SessionsEndOnRequestOnActivationChangesAndPastTheUsedTokensShare) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("bob"))).ok());
  auto generation = [&](uint64_t user) {
    return state.accounts().Current().users.at(user).session_generation;
  };
  EXPECT_EQ(generation(1), 0u);
  ASSERT_TRUE(state.Apply(EncodeEndSessions(1)).ok());
  EXPECT_EQ(generation(1), 1u);
  ASSERT_TRUE(state.Apply(EncodeSetUserActive(1, true)).ok());  // no change: no end
  EXPECT_EQ(generation(1), 1u);
  ASSERT_TRUE(state.Apply(EncodeSetUserActive(1, false)).ok());
  ASSERT_TRUE(state.Apply(EncodeSetUserActive(1, true)).ok());
  EXPECT_EQ(generation(1), 3u);
  EXPECT_EQ(state.Apply(EncodeEndSessions(9)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(generation(2), 0u);

  ASSERT_TRUE(state.Apply(EncodeRevokeToken("bob-1", 2, 100000, 0)).ok());
  for (size_t i = 0; i + 1 < kMaxUserRevokedTokens; ++i) {
    ASSERT_TRUE(state.Apply(EncodeRevokeToken(absl::StrCat("alice-", i), 1, 100000, 0)).ok());
  }
  EXPECT_EQ(generation(1), 3u);
  EXPECT_EQ(state.accounts().Current().revoked_tokens.size(), kMaxUserRevokedTokens);
  // Her share's last place: her sessions end, her entries go, this one is kept.
  ASSERT_TRUE(state.Apply(EncodeRevokeToken("alice-last", 1, 100000, 0)).ok());
  EXPECT_EQ(generation(1), 4u);
  const Accounts accounts = state.accounts().Current();
  EXPECT_EQ(accounts.revoked_tokens.size(), 2u);
  EXPECT_TRUE(accounts.revoked_tokens.contains("alice-last"));
  EXPECT_TRUE(accounts.revoked_tokens.contains("bob-1"));
  EXPECT_EQ(generation(2), 0u);
  ControlState restored;
  ASSERT_TRUE(restored.Restore(state.Snapshot()).ok());
  EXPECT_EQ(restored.accounts().Current(), accounts);
}

// Entries of the log written before a rule existed replay as they applied
// then (each node replays its log from its own snapshot, some from before
// an upgrade): the rules above apply only to commands that ask for them,
// as every proposer now does.
TEST(AccountStateTest, EntriesFromBeforeTheNewRulesReplayAsTheyApplied) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  auto old_set_active = [](uint64_t user, bool active) {
    flatbuffers::FlatBufferBuilder b(64);
    return FinishCommand(b, fb::CommandBody::SetUserActive,
                         fb::CreateSetUserActive(b, user, active).Union());
  };
  ASSERT_TRUE(state.Apply(old_set_active(1, false)).ok());
  ASSERT_TRUE(state.Apply(old_set_active(1, true)).ok());
  EXPECT_EQ(state.accounts().Current().users.at(1).session_generation, 0u);
  // Retired keys past the limit stay when the command does not ask.
  for (uint64_t i = 0; i < kMaxUserRetiredApiKeys + 5; ++i) {
    AccountApiKey key = NewKey(1, 'a');
    key.key_hash[0] = static_cast<char>(i);
    flatbuffers::FlatBufferBuilder b(256);
    const std::string old_issue = FinishCommand(
        b, fb::CommandBody::IssueApiKey,
        fb::CreateIssueApiKey(b, key.user_id, b.CreateString(key.name),
                              b.CreateString(key.key_prefix), ByteVector(b, key.key_hash),
                              key.scopes, key.created_at_ms, key.expires_at_ms)
            .Union());
    absl::StatusOr<uint64_t> id = state.Apply(old_issue);
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(state.Apply(EncodeRevokeApiKey(1, *id)).ok());
  }
  EXPECT_EQ(state.accounts().Current().api_keys.size(), kMaxUserRetiredApiKeys + 5);
  // A used token past the user's share is kept, its sessions untouched.
  for (size_t i = 0; i < kMaxUserRevokedTokens + 1; ++i) {
    flatbuffers::FlatBufferBuilder b(128);
    const std::string old_revoke =
        FinishCommand(b, fb::CommandBody::RevokeToken,
                      fb::CreateRevokeToken(b, b.CreateString(absl::StrCat("t", i)), 1, 100000, 0)
                          .Union());
    ASSERT_TRUE(state.Apply(old_revoke).ok()) << i;
  }
  EXPECT_EQ(state.accounts().Current().revoked_tokens.size(), kMaxUserRevokedTokens + 1);
  EXPECT_EQ(state.accounts().Current().users.at(1).session_generation, 0u);
}

// A refused command changes nothing: a key refused for the byte budget or a
// duplicate hash leaves the retired keys it would have pruned.
TEST(AccountStateTest, ARefusedKeyPrunesNothing) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  for (uint64_t i = 0; i < kMaxUserRetiredApiKeys; ++i) {
    AccountApiKey key = NewKey(1, 'a');
    key.key_hash[0] = static_cast<char>(i);
    absl::StatusOr<uint64_t> id = state.Apply(EncodeCreateApiKey(key));
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(state.Apply(EncodeRevokeApiKey(1, *id)).ok());
  }
  const Accounts before = state.accounts().Current();
  AccountApiKey duplicate = NewKey(1, 'a');
  duplicate.key_hash[0] = 5;  // the hash of key 6, revoked but kept
  EXPECT_EQ(state.Apply(EncodeCreateApiKey(duplicate)).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(state.accounts().Current(), before);
}

TEST(AccountStateTest, AuthModeAndSecretAreCommittedOnce) {
  ControlState state;
  // A cluster of one may change its mode (a lone node restarted with the
  // other --auth); a cluster of two may not.
  for (const char* id : {"n1", "n2"}) {
    Member member;
    member.raft_id = id[1];
    member.node_id = id;
    member.binary_address = absl::StrCat("127.0.0.1:", static_cast<int>(id[1]));
    ASSERT_TRUE(state.Apply(EncodeSetAuthMode(false)).ok()) << id;
    ASSERT_TRUE(state.Apply(EncodeAddMember(member)).ok());
  }
  ASSERT_EQ(state.Apply(EncodeSetAuthMode(true)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(state.Apply(EncodeRemoveMember("n2")).ok());
  ASSERT_TRUE(state.Apply(EncodeSetAuthMode(true)).ok());
  ASSERT_TRUE(state.Apply(EncodeAddMember([] {
                Member m;
                m.raft_id = 9;
                m.node_id = "n9";
                m.binary_address = "127.0.0.1:9";
                return m;
              }()))
                  .ok());
  ASSERT_TRUE(state.Apply(EncodeSetAuthMode(true)).ok());
  absl::StatusOr<uint64_t> off = state.Apply(EncodeSetAuthMode(false));
  EXPECT_EQ(off.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(off.status().message().find("--auth=off"), absl::string_view::npos);
  // A joining node of the other mode is refused by its AddMember.
  Member member;
  member.raft_id = 7;
  member.node_id = "n7";
  member.binary_address = "127.0.0.1:7";
  CommandOptions off_node;
  off_node.requires_auth_on = false;
  EXPECT_EQ(state.Apply(EncodeAddMember(member, off_node)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  CommandOptions on_node;
  on_node.requires_auth_on = true;
  EXPECT_TRUE(state.Apply(EncodeAddMember(member, on_node)).ok());

  ASSERT_TRUE(state.Apply(EncodeSetJwtSecret("first", false)).ok());
  EXPECT_EQ(state.Apply(EncodeSetJwtSecret("second", false)).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(state.Apply(EncodeSetJwtSecret("configured", true)).ok());
  EXPECT_EQ(state.accounts().Current().jwt_secret, "configured");
}

TEST(AccountStateTest, ImportsOnlyIntoEmptyAccountsFromOneSource) {
  ControlState state;
  AccountUser user = NewUser("old");
  user.id = 4;
  AccountApiKey key = NewKey(4, 'k');
  key.id = 9;
  key.last_used_at_ms = 5000;
  ASSERT_TRUE(state.Apply(EncodeImportAccounts("n1", {user}, {}, {}, "", 0, 0, false)).ok());
  EXPECT_EQ(state.Apply(EncodeImportAccounts("n2", {}, {}, {}, "", 0, 0, true)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(state.Apply(EncodeImportAccounts("n1", {}, {key}, {{"jti", {4, 99}}}, "secret", 7, 12,
                                               true))
                  .ok());
  const Accounts accounts = state.accounts().Current();
  EXPECT_TRUE(accounts.import_done);
  EXPECT_EQ(accounts.next_user_id, 7u);
  EXPECT_EQ(accounts.next_api_key_id, 12u);
  EXPECT_EQ(accounts.api_keys.at(9).last_used_at_ms, 5000);
  EXPECT_EQ(accounts.jwt_secret, "secret");
  EXPECT_EQ(state.Apply(EncodeImportAccounts("n1", {}, {}, {}, "", 0, 0, true)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(state.Apply(EncodeSignUp(NewUser("new"))).value(), 7u);
  // A key of an unknown user, or ids out of order, are refused whole.
  ControlState other;
  AccountApiKey orphan = NewKey(3, 'o');
  orphan.id = 1;
  EXPECT_EQ(other.Apply(EncodeImportAccounts("n1", {user}, {orphan}, {}, "", 0, 0, true))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(other.accounts().Current().empty());
  EXPECT_TRUE(other.accounts().Current().import_source.empty());
}

TEST(AccountStateTest, LastUseTimesAreBatchedAndOnlyMoveForward) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  ASSERT_TRUE(state.Apply(EncodeCreateApiKey(NewKey(1, 'a'))).ok());
  ASSERT_TRUE(state.Apply(EncodeCreateApiKey(NewKey(1, 'b'))).ok());
  ASSERT_TRUE(state.Apply(EncodeTouchApiKeys({{1, 500}, {2, 700}, {99, 1}})).ok());
  ASSERT_TRUE(state.Apply(EncodeTouchApiKeys({{1, 400}})).ok());
  const Accounts accounts = state.accounts().Current();
  EXPECT_EQ(accounts.api_keys.at(1).last_used_at_ms, 500);
  EXPECT_EQ(accounts.api_keys.at(2).last_used_at_ms, 700);
}

// Two servers fed the same commands (refusals and garbage included) answer
// alike and take byte-identical snapshots; a restored snapshot continues
// exactly like the original.
TEST(AccountStateTest, ApplyIsDeterministicAndSnapshotsRoundTrip) {
  std::vector<std::string> script;
  std::mt19937_64 random(12);
  for (int i = 0; i < 300; ++i) {
    const uint64_t user = 1 + random() % 40;
    switch (random() % 8) {
      case 0:
      case 1:
        script.push_back(EncodeSignUp(NewUser(absl::StrCat("u", random() % 60))));
        break;
      case 2:
        script.push_back(EncodeCreateApiKey(NewKey(user, static_cast<char>(random() % 200))));
        break;
      case 3:
        script.push_back(EncodeRevokeApiKey(user, 1 + random() % 50));
        break;
      case 4:
        script.push_back(EncodeRevokeToken(absl::StrCat("j", random() % 80), user,
                                           static_cast<int64_t>(random() % 1000),
                                           static_cast<int64_t>(i)));
        break;
      case 5:
        script.push_back(EncodeTouchApiKeys({{1 + random() % 50, static_cast<int64_t>(i)}}));
        break;
      case 6:
        script.push_back(random() % 2 == 0 ? EncodeEndSessions(user)
                                           : EncodeSetUserActive(user, random() % 2 == 0));
        break;
      default:
        script.push_back(std::string(1 + random() % 64, static_cast<char>(random())));
        break;
    }
  }
  ControlState a;
  ControlState b;
  ControlState restored;
  for (size_t i = 0; i < script.size(); ++i) {
    if (i == script.size() / 2) {
      ASSERT_TRUE(restored.Restore(a.Snapshot()).ok());
    }
    absl::StatusOr<uint64_t> ra = a.Apply(script[i]);
    absl::StatusOr<uint64_t> rb = b.Apply(script[i]);
    ASSERT_EQ(ra.status(), rb.status()) << i;
    if (ra.ok()) {
      ASSERT_EQ(*ra, *rb) << i;
    }
    if (i >= script.size() / 2) {
      absl::StatusOr<uint64_t> rr = restored.Apply(script[i]);
      ASSERT_EQ(ra.status(), rr.status()) << i;
    }
    ASSERT_EQ(a.Snapshot(), b.Snapshot()) << i;
  }
  EXPECT_EQ(a.Snapshot(), restored.Snapshot());
  EXPECT_EQ(a.accounts().Current(), restored.accounts().Current());
  EXPECT_FALSE(a.accounts().Current().users.empty());
}

// Every truncation and single-bit flip of an account command and of a
// snapshot with accounts is refused, or accepted only as a consistent state
// (a restore of it snapshots to a state that restores again).
TEST(AccountStateTest, HostileBytesAreRefusedOrConsistent) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeSetAuthMode(true)).ok());
  ASSERT_TRUE(state.Apply(EncodeSignUp(NewUser("alice"))).ok());
  ASSERT_TRUE(state.Apply(EncodeCreateApiKey(NewKey(1, 'k'))).ok());
  ASSERT_TRUE(state.Apply(EncodeRevokeToken("jti", 1, 100, 0)).ok());
  const std::string snapshot = state.Snapshot();
  const std::string command = EncodeCreateApiKey(NewKey(1, 'z'));
  for (const std::string* bytes : {&snapshot, &command}) {
    for (size_t length = 0; length < bytes->size(); ++length) {
      ControlState target;
      (void)target.Apply(bytes->substr(0, length));
      (void)target.Restore(bytes->substr(0, length));
    }
    for (size_t bit = 0; bit < bytes->size() * 8; ++bit) {
      std::string flipped = *bytes;
      flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
      ControlState target;
      ASSERT_TRUE(target.Apply(EncodeSignUp(NewUser("alice"))).ok());
      (void)target.Apply(flipped);
      if (target.Restore(flipped).ok()) {
        ControlState again;
        ASSERT_TRUE(again.Restore(target.Snapshot()).ok()) << bit;
        EXPECT_EQ(again.Snapshot(), target.Snapshot()) << bit;
      }
    }
  }
}

TEST(AccountStateTest, TheAccountsBytesAreBounded) {
  ControlState state;
  AccountUser big = NewUser("x");
  big.email_key = std::string(kMaxAccountNameKeyBytes, 'e');
  big.username_key = std::string(kMaxAccountNameKeyBytes, 'u');
  big.password_hash = std::string(kMaxPasswordHashBytes, 'h');
  size_t accepted = 0;
  absl::Status last;
  for (size_t i = 0; i < kMaxAccountUsers; ++i) {
    big.email_key.replace(0, 20, absl::StrCat(i, "                    ").substr(0, 20));
    big.username_key.replace(0, 20, absl::StrCat(i, "                    ").substr(0, 20));
    absl::StatusOr<uint64_t> id = state.Apply(EncodeSignUp(big));
    if (!id.ok()) {
      last = id.status();
      break;
    }
    ++accepted;
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  EXPECT_LT(accepted, kMaxAccountUsers);
  const std::string snapshot = state.Snapshot();
  EXPECT_LT(snapshot.size(), kMaxSnapshotBytes);
  ControlState restored;
  ASSERT_TRUE(restored.Restore(snapshot).ok());
  EXPECT_EQ(restored.accounts().Current().users.size(), accepted);
}

}  // namespace
}  // namespace logkv::server::control
