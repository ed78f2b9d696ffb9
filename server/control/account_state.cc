#include "server/control/account_state.h"

#include <algorithm>
#include <optional>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "flatbuffers/flatbuffers.h"
#include "protocol/frame.h"
#include "server/control/command_encoding.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

namespace {

using protocol::View;

template <typename T>
std::string EncodeBody(flatbuffers::FlatBufferBuilder& builder, fb::CommandBody type,
                       flatbuffers::Offset<T> body, const Actor& actor = {}) {
  CommandOptions options;
  options.actor = actor;
  return FinishCommand(builder, type, body.Union(), options);
}

absl::Status CheckText(absl::string_view what, absl::string_view text, size_t min, size_t max) {
  if (text.size() < min || text.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of ", text.size(), " bytes is not in [", min, ", ", max, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckUserFields(const AccountUser& user) {
  if (absl::Status s = CheckText("email", user.email, 1, kMaxAccountEmailBytes); !s.ok()) return s;
  if (absl::Status s = CheckText("username", user.username, 1, kMaxAccountUsernameBytes); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckText("email key", user.email_key, 1, kMaxAccountNameKeyBytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckText("username key", user.username_key, 1, kMaxAccountNameKeyBytes);
      !s.ok()) {
    return s;
  }
  return CheckText("password hash", user.password_hash, 1, kMaxPasswordHashBytes);
}

absl::Status CheckKeyFields(const AccountApiKey& key) {
  if (absl::Status s = CheckText("API key name", key.name, 1, kMaxApiKeyNameBytes_); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckText("API key prefix", key.key_prefix, 1, kMaxApiKeyPrefixBytes);
      !s.ok()) {
    return s;
  }
  if (key.key_hash.size() != kApiKeyHashBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("API key hash of ", key.key_hash.size(), " bytes is not ", kApiKeyHashBytes));
  }
  if (key.scopes == 0 || (key.scopes & ~(kScopeRead | kScopeWrite)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("API key scopes ", key.scopes, " are not valid"));
  }
  if (key.created_at_ms < 0 || key.expires_at_ms < 0 || key.last_used_at_ms < 0) {
    return absl::InvalidArgumentError("API key times must not be negative");
  }
  return absl::OkStatus();
}

AccountUser UserFrom(const fb::User& in) {
  AccountUser user;
  user.id = in.id();
  user.email = std::string(View(in.email()));
  user.username = std::string(View(in.username()));
  user.email_key = std::string(View(in.email_key()));
  user.username_key = std::string(View(in.username_key()));
  user.password_hash = std::string(View(in.password_hash()));
  user.is_active = in.is_active();
  user.created_at_ms = in.created_at_ms();
  user.session_generation = in.session_generation();
  return user;
}

AccountApiKey KeyFrom(const fb::ApiKey& in) {
  AccountApiKey key;
  key.id = in.id();
  key.user_id = in.user_id();
  key.name = std::string(View(in.name()));
  key.key_prefix = std::string(View(in.key_prefix()));
  key.key_hash = std::string(View(in.key_hash()));
  key.scopes = in.scopes();
  key.is_active = in.is_active();
  key.created_at_ms = in.created_at_ms();
  key.expires_at_ms = in.expires_at_ms();
  key.last_used_at_ms = in.last_used_at_ms();
  return key;
}

flatbuffers::Offset<fb::User> BuildUser(flatbuffers::FlatBufferBuilder& b, const AccountUser& u) {
  auto email = b.CreateString(u.email);
  auto username = b.CreateString(u.username);
  auto email_key = b.CreateString(u.email_key);
  auto username_key = b.CreateString(u.username_key);
  auto hash = b.CreateString(u.password_hash);
  return fb::CreateUser(b, u.id, email, username, email_key, username_key, hash, u.is_active,
                        u.created_at_ms, u.session_generation);
}

flatbuffers::Offset<fb::ApiKey> BuildKey(flatbuffers::FlatBufferBuilder& b,
                                         const AccountApiKey& k) {
  auto name = b.CreateString(k.name);
  auto prefix = b.CreateString(k.key_prefix);
  auto hash = ByteVector(b, k.key_hash);
  return fb::CreateApiKey(b, k.id, k.user_id, name, prefix, hash, k.scopes, k.is_active,
                          k.created_at_ms, k.expires_at_ms, k.last_used_at_ms);
}

flatbuffers::Offset<fb::RevokedToken> BuildRevoked(flatbuffers::FlatBufferBuilder& b,
                                                   const std::string& jti,
                                                   const RevokedTokenEntry& entry) {
  return fb::CreateRevokedToken(b, b.CreateString(jti), entry.user_id, entry.expires_at_s);
}

size_t BytesOf(const AccountUser& u) {
  return kAccountRecordOverheadBytes + u.email.size() + u.username.size() + u.email_key.size() +
         u.username_key.size() + u.password_hash.size();
}
size_t BytesOf(const AccountApiKey& k) {
  return kAccountRecordOverheadBytes + k.name.size() + k.key_prefix.size() + k.key_hash.size();
}
size_t BytesOf(absl::string_view jti) { return kAccountRecordOverheadBytes + jti.size(); }

absl::Status CheckRoom(const Accounts& a, size_t more, size_t freed = 0) {
  if (a.bytes - std::min(a.bytes, freed) + more > kMaxAccountBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the cluster's accounts take the most bytes they may (", kMaxAccountBytes,
                     "); free some (revoked keys stay) or raise the limit in a new version"));
  }
  return absl::OkStatus();
}

// Adds a user to the state and its indexes. A name another user holds stays
// that user's (imports of accounts an older version made distinct only by
// case); everywhere else the caller has refused duplicates.
void InsertUser(Accounts& a, AccountUser user) {
  a.user_by_email_key.emplace(user.email_key, user.id);
  a.user_by_username_key.emplace(user.username_key, user.id);
  a.next_user_id = std::max(a.next_user_id, user.id + 1);
  a.bytes += BytesOf(user);
  const uint64_t id = user.id;
  a.users.insert_or_assign(id, std::move(user));
}

void InsertKey(Accounts& a, AccountApiKey key) {
  a.api_key_by_hash.emplace(key.key_hash, key.id);
  a.api_keys_by_user[key.user_id].push_back(key.id);
  a.next_api_key_id = std::max(a.next_api_key_id, key.id + 1);
  a.bytes += BytesOf(key);
  const uint64_t id = key.id;
  a.api_keys.insert_or_assign(id, std::move(key));
}

// Checks a user or key read from a snapshot or an import against the state
// built so far (ids increasing, keys of known users, hashes distinct).
absl::Status CheckImportedUser(const Accounts& a, const AccountUser& user) {
  if (user.id == 0) return absl::InvalidArgumentError("user id 0 is reserved");
  if (!a.users.empty() && a.users.rbegin()->first >= user.id) {
    return absl::InvalidArgumentError("users are not in increasing id order");
  }
  if (user.created_at_ms < 0) return absl::InvalidArgumentError("a user's time is negative");
  return CheckUserFields(user);
}

absl::Status CheckImportedKey(const Accounts& a, const AccountApiKey& key) {
  if (key.id == 0) return absl::InvalidArgumentError("API key id 0 is reserved");
  if (!a.api_keys.empty() && a.api_keys.rbegin()->first >= key.id) {
    return absl::InvalidArgumentError("API keys are not in increasing id order");
  }
  if (!a.users.contains(key.user_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("API key ", key.id, " belongs to no user (", key.user_id, ")"));
  }
  if (a.api_key_by_hash.contains(key.key_hash)) {
    return absl::InvalidArgumentError(absl::StrCat("API key ", key.id, "'s hash is another's"));
  }
  return CheckKeyFields(key);
}

void EraseKey(Accounts& a, uint64_t key_id) {
  auto it = a.api_keys.find(key_id);
  if (it == a.api_keys.end()) return;
  const AccountApiKey& key = it->second;
  a.api_key_by_hash.erase(key.key_hash);
  if (auto ids = a.api_keys_by_user.find(key.user_id); ids != a.api_keys_by_user.end()) {
    std::erase(ids->second, key_id);
    if (ids->second.empty()) a.api_keys_by_user.erase(ids);
  }
  a.bytes -= std::min(a.bytes, BytesOf(key));
  a.api_keys.erase(it);
}

// The keys that make room for one more retired key of user_id: the oldest
// retired ones (revoked, or expired at at_ms) past kMaxUserRetiredApiKeys - 1.
std::vector<uint64_t> RetiredKeysToPrune(const Accounts& a, uint64_t user_id, int64_t at_ms) {
  auto ids = a.api_keys_by_user.find(user_id);
  if (ids == a.api_keys_by_user.end()) return {};
  std::vector<uint64_t> retired;
  for (uint64_t id : ids->second) {
    const AccountApiKey& key = a.api_keys.at(id);
    if (!key.is_active || (key.expires_at_ms != 0 && key.expires_at_ms <= at_ms)) {
      retired.push_back(id);
    }
  }
  if (retired.size() < kMaxUserRetiredApiKeys) return {};
  std::sort(retired.begin(), retired.end());  // ids grow: oldest first
  retired.resize(retired.size() - (kMaxUserRetiredApiKeys - 1));
  return retired;
}

// Ends user_id's sessions: its tokens carry the generation before this, and
// its used refresh tokens need no keeping (no token of it passes any more).
void EndSessionsOf(Accounts& a, uint64_t user_id) {
  if (auto it = a.users.find(user_id); it != a.users.end()) ++it->second.session_generation;
  for (auto it = a.revoked_tokens.begin(); it != a.revoked_tokens.end();) {
    if (it->second.user_id == user_id) {
      a.bytes -= std::min(a.bytes, BytesOf(it->first));
      it = a.revoked_tokens.erase(it);
    } else {
      ++it;
    }
  }
}

size_t ActiveKeys(const Accounts& a, uint64_t user_id, int64_t at_ms) {
  auto ids = a.api_keys_by_user.find(user_id);
  if (ids == a.api_keys_by_user.end()) return 0;
  size_t active = 0;
  for (uint64_t id : ids->second) {
    const AccountApiKey& key = a.api_keys.at(id);
    if (key.is_active && (key.expires_at_ms == 0 || key.expires_at_ms > at_ms)) ++active;
  }
  return active;
}

}  // namespace

// ---- Accounts -------------------------------------------------------------------

const AccountUser* Accounts::FindUser(uint64_t id) const {
  auto it = users.find(id);
  return it == users.end() ? nullptr : &it->second;
}

const AccountApiKey* Accounts::FindApiKeyByHash(absl::string_view hash) const {
  auto it = api_key_by_hash.find(hash);
  return it == api_key_by_hash.end() ? nullptr : &api_keys.at(it->second);
}

// ---- Encoders -------------------------------------------------------------------

std::string EncodeSetAuthMode(bool on, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::SetAuthMode, fb::CreateSetAuthMode(b, on), actor);
}

std::string EncodeSetJwtSecret(absl::string_view secret, bool replace, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(128 + secret.size());
  auto bytes = ByteVector(b, secret);
  return EncodeBody(b, fb::CommandBody::SetJwtSecret, fb::CreateSetJwtSecret(b, bytes, replace), actor);
}

std::string EncodeSetRateLimit(int64_t requests_per_minute, int64_t burst, bool only_if_unset, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::SetRateLimit,
                    fb::CreateSetRateLimit(b, requests_per_minute, burst, only_if_unset), actor);
}

std::string EncodeSignUp(const AccountUser& user, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(512);
  auto email = b.CreateString(user.email);
  auto username = b.CreateString(user.username);
  auto email_key = b.CreateString(user.email_key);
  auto username_key = b.CreateString(user.username_key);
  auto hash = b.CreateString(user.password_hash);
  return EncodeBody(b, fb::CommandBody::SignUp,
                    fb::CreateSignUp(b, email, username, email_key, username_key, hash,
                                     user.created_at_ms), actor);
}

std::string EncodeCreateApiKey(const AccountApiKey& key, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(256);
  auto name = b.CreateString(key.name);
  auto prefix = b.CreateString(key.key_prefix);
  auto hash = ByteVector(b, key.key_hash);
  return EncodeBody(b, fb::CommandBody::IssueApiKey,
                    fb::CreateIssueApiKey(b, key.user_id, name, prefix, hash, key.scopes,
                                           key.created_at_ms, key.expires_at_ms,
                                           /*prune_retired=*/true),
                    actor);
}

std::string EncodeRevokeApiKey(uint64_t user_id, uint64_t key_id, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::RevokeApiKey, fb::CreateRevokeApiKey(b, user_id, key_id), actor);
}

std::string EncodeSetUserActive(uint64_t user_id, bool active, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::SetUserActive,
                    fb::CreateSetUserActive(b, user_id, active, /*end_sessions=*/true), actor);
}

std::string EncodeEndSessions(uint64_t user_id, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::EndSessions, fb::CreateEndSessions(b, user_id), actor);
}

std::string EncodeRevokeToken(absl::string_view jti, uint64_t user_id, int64_t expires_at_s,
                              int64_t now_s) {
  flatbuffers::FlatBufferBuilder b(128);
  auto id = b.CreateString(jti.data(), jti.size());
  return EncodeBody(b, fb::CommandBody::RevokeToken,
                    fb::CreateRevokeToken(b, id, user_id, expires_at_s, now_s,
                                          /*bounded_per_user=*/true));
}

std::string EncodeTouchApiKeys(const std::vector<std::pair<uint64_t, int64_t>>& uses) {
  flatbuffers::FlatBufferBuilder b(64 + 16 * uses.size());
  std::vector<fb::KeyUse> structs;
  structs.reserve(uses.size());
  for (const auto& [id, at] : uses) structs.emplace_back(id, at);
  auto vector = b.CreateVectorOfStructs(structs);
  return EncodeBody(b, fb::CommandBody::TouchApiKeys, fb::CreateTouchApiKeys(b, vector));
}

std::string EncodeImportAccounts(absl::string_view source, const std::vector<AccountUser>& users,
                                 const std::vector<AccountApiKey>& keys,
                                 const std::vector<std::pair<std::string, RevokedTokenEntry>>& revoked,
                                 absl::string_view jwt_secret, uint64_t next_user_id,
                                 uint64_t next_api_key_id, bool last, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(1024 + 320 * users.size() + 160 * keys.size() +
                                   64 * revoked.size());
  auto source_offset = b.CreateString(source.data(), source.size());
  std::vector<flatbuffers::Offset<fb::User>> user_offsets;
  for (const AccountUser& user : users) user_offsets.push_back(BuildUser(b, user));
  std::vector<flatbuffers::Offset<fb::ApiKey>> key_offsets;
  for (const AccountApiKey& key : keys) key_offsets.push_back(BuildKey(b, key));
  std::vector<flatbuffers::Offset<fb::RevokedToken>> revoked_offsets;
  for (const auto& [jti, entry] : revoked) revoked_offsets.push_back(BuildRevoked(b, jti, entry));
  auto u = b.CreateVector(user_offsets);
  auto k = b.CreateVector(key_offsets);
  auto r = b.CreateVector(revoked_offsets);
  auto secret = ByteVector(b, jwt_secret);
  return EncodeBody(b, fb::CommandBody::ImportAccounts,
                    fb::CreateImportAccounts(b, source_offset, u, k, r, secret, next_user_id,
                                             next_api_key_id, last), actor);
}

// ---- AccountState -----------------------------------------------------------------

Accounts AccountState::Current() const {
  absl::ReaderMutexLock lock(&mu_);
  return accounts_;
}

bool AccountState::Await(const std::function<bool(const Accounts&)>& pred,
                         absl::Time deadline) const {
  auto holds = [this, &pred]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pred(accounts_); };
  absl::ReaderMutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(&holds), deadline);
}

void AccountState::SetListener(Listener listener) {
  absl::MutexLock lock(&listener_mu_);
  listener_ = std::move(listener);
}

void AccountState::Notify(bool revoked, bool rate_limit) {
  if (revoked) revocation_generation_.fetch_add(1, std::memory_order_acq_rel);
  if (!revoked && !rate_limit) return;
  Listener listener;
  {
    absl::MutexLock lock(&listener_mu_);
    listener = listener_;
  }
  if (revoked && listener.on_revoked) listener.on_revoked();
  if (rate_limit && listener.on_rate_limit) {
    int64_t rpm = 0;
    int64_t burst = 0;
    {
      absl::ReaderMutexLock lock(&mu_);
      rpm = accounts_.requests_per_minute;
      burst = accounts_.burst;
    }
    listener.on_rate_limit(rpm, burst);
  }
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::SetAuthMode& cmd, bool may_switch) {
  const AuthModeCommitted mode = cmd.on() ? AuthModeCommitted::kOn : AuthModeCommitted::kOff;
  absl::MutexLock lock(&mu_);
  if (accounts_.auth_mode == AuthModeCommitted::kUnset || may_switch) {
    accounts_.auth_mode = mode;
  } else if (accounts_.auth_mode != mode) {
    return absl::FailedPreconditionError(
        absl::StrCat("the cluster runs with accounts ",
                     accounts_.auth_mode == AuthModeCommitted::kOn ? "on" : "off",
                     " (committed when it was bootstrapped); a node with --auth=",
                     cmd.on() ? "on" : "off", " cannot be part of it"));
  }
  return 0;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::SetJwtSecret& cmd) {
  const absl::string_view secret = View(cmd.secret());
  if (absl::Status s = CheckText("JWT secret", secret, kMinJwtSecretBytes, kMaxJwtSecretBytes);
      !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  if (accounts_.jwt_secret.empty() || cmd.replace()) {
    accounts_.jwt_secret = std::string(secret);
  } else if (accounts_.jwt_secret != secret) {
    return absl::AlreadyExistsError("the cluster's JWT secret is already set, to another value");
  }
  return 0;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::SetRateLimit& cmd) {
  if (cmd.requests_per_minute() < 0 || cmd.requests_per_minute() > kMaxRequestsPerMinute ||
      cmd.burst() < 0 || cmd.burst() > kMaxRequestsPerMinute) {
    return absl::InvalidArgumentError(absl::StrCat("rate limit ", cmd.requests_per_minute(),
                                                   "/min, burst ", cmd.burst(),
                                                   " is out of range"));
  }
  bool changed = false;
  {
    absl::MutexLock lock(&mu_);
    if (accounts_.rate_limit_set && cmd.only_if_unset()) return 0;
    changed = !accounts_.rate_limit_set ||
              accounts_.requests_per_minute != cmd.requests_per_minute() ||
              accounts_.burst != cmd.burst();
    accounts_.rate_limit_set = true;
    accounts_.requests_per_minute = cmd.requests_per_minute();
    accounts_.burst = cmd.burst();
  }
  Notify(false, changed);
  return 0;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::SignUp& cmd) {
  AccountUser user;
  user.email = std::string(View(cmd.email()));
  user.username = std::string(View(cmd.username()));
  user.email_key = std::string(View(cmd.email_key()));
  user.username_key = std::string(View(cmd.username_key()));
  user.password_hash = std::string(View(cmd.password_hash()));
  user.created_at_ms = cmd.created_at_ms();
  user.is_active = true;
  if (absl::Status s = CheckUserFields(user); !s.ok()) return s;
  if (user.created_at_ms < 0) return absl::InvalidArgumentError("sign-up time is negative");
  absl::MutexLock lock(&mu_);
  if (accounts_.user_by_email_key.contains(user.email_key)) {
    return absl::AlreadyExistsError("email is already registered");
  }
  if (accounts_.user_by_username_key.contains(user.username_key)) {
    return absl::AlreadyExistsError("username is already taken");
  }
  if (accounts_.users.size() >= kMaxAccountUsers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the cluster has the most accounts it may have (", kMaxAccountUsers, ")"));
  }
  if (absl::Status s = CheckRoom(accounts_, BytesOf(user)); !s.ok()) return s;
  user.id = accounts_.next_user_id;
  const uint64_t id = user.id;
  InsertUser(accounts_, std::move(user));
  return id;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::IssueApiKey& cmd) {
  AccountApiKey key;
  key.user_id = cmd.user_id();
  key.name = std::string(View(cmd.name()));
  key.key_prefix = std::string(View(cmd.key_prefix()));
  key.key_hash = std::string(View(cmd.key_hash()));
  key.scopes = cmd.scopes();
  key.created_at_ms = cmd.created_at_ms();
  key.expires_at_ms = cmd.expires_at_ms();
  if (absl::Status s = CheckKeyFields(key); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const AccountUser* user = accounts_.FindUser(key.user_id);
  if (user == nullptr || !user->is_active) {
    return absl::NotFoundError(
        absl::StrCat("user ", key.user_id, " does not exist or is disabled"));
  }
  const size_t active = ActiveKeys(accounts_, key.user_id, key.created_at_ms);
  if (active >= kMaxUserActiveApiKeys) {
    return absl::ResourceExhaustedError(absl::StrCat("user ", key.user_id, " already has ", active,
                                                     " active API keys; revoke one first"));
  }
  // The user's own revoked and expired keys make room first (entries of
  // the log from before the rule replay without it). Nothing changes
  // unless the key is accepted.
  const std::vector<uint64_t> prune =
      cmd.prune_retired() ? RetiredKeysToPrune(accounts_, key.user_id, key.created_at_ms)
                          : std::vector<uint64_t>{};
  size_t freed = 0;
  for (const uint64_t id : prune) freed += BytesOf(accounts_.api_keys.at(id));
  if (accounts_.api_keys.size() - prune.size() >= kMaxAccountApiKeys) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the cluster has the most API keys it may have (", kMaxAccountApiKeys, ")"));
  }
  // 2^-256 odds, but a collision would let one key stand for another.
  if (accounts_.api_key_by_hash.contains(key.key_hash)) {
    return absl::AlreadyExistsError("an API key with this hash already exists");
  }
  if (absl::Status s = CheckRoom(accounts_, BytesOf(key), freed); !s.ok()) return s;
  for (const uint64_t id : prune) EraseKey(accounts_, id);
  key.id = accounts_.next_api_key_id;
  const uint64_t id = key.id;
  InsertKey(accounts_, std::move(key));
  return id;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::RevokeApiKey& cmd) {
  {
    absl::MutexLock lock(&mu_);
    auto it = accounts_.api_keys.find(cmd.key_id());
    // Someone else's key is "not found" too: ids must not reveal other users' keys.
    if (it == accounts_.api_keys.end() || it->second.user_id != cmd.user_id()) {
      return absl::NotFoundError(absl::StrCat("API key ", cmd.key_id(), " not found"));
    }
    if (!it->second.is_active) return cmd.key_id();
    it->second.is_active = false;
  }
  Notify(true, false);
  return cmd.key_id();
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::SetUserActive& cmd) {
  {
    absl::MutexLock lock(&mu_);
    auto it = accounts_.users.find(cmd.user_id());
    if (it == accounts_.users.end()) {
      return absl::NotFoundError(absl::StrCat("user ", cmd.user_id(), " not found"));
    }
    if (it->second.is_active == cmd.active()) return cmd.user_id();
    it->second.is_active = cmd.active();
    // A reactivated account does not bring back the tokens it had (log
    // entries from before the rule replay without it).
    if (cmd.end_sessions()) EndSessionsOf(accounts_, cmd.user_id());
  }
  Notify(true, false);
  return cmd.user_id();
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::EndSessions& cmd) {
  {
    absl::MutexLock lock(&mu_);
    auto it = accounts_.users.find(cmd.user_id());
    if (it == accounts_.users.end()) {
      return absl::NotFoundError(absl::StrCat("user ", cmd.user_id(), " not found"));
    }
    EndSessionsOf(accounts_, cmd.user_id());
  }
  Notify(true, false);
  return cmd.user_id();
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::RevokeToken& cmd) {
  const absl::string_view jti = View(cmd.jti());
  if (absl::Status s = CheckText("token id", jti, 1, kMaxJtiBytes); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    if (accounts_.revoked_tokens.contains(jti)) {
      return absl::AlreadyExistsError("refresh token already used or revoked");
    }
    // Expired entries are dropped by the clock of the command, so that
    // every server drops the same ones.
    const int64_t now_s = cmd.now_s();
    struct Held {
      size_t count = 0;
      size_t bytes = 0;
    };
    absl::flat_hash_map<uint64_t, Held> per_user;
    for (auto it = accounts_.revoked_tokens.begin(); it != accounts_.revoked_tokens.end();) {
      if (it->second.expires_at_s <= now_s) {
        accounts_.bytes -= BytesOf(it->first);
        it = accounts_.revoked_tokens.erase(it);
      } else {
        Held& held = per_user[it->second.user_id];
        ++held.count;
        held.bytes += BytesOf(it->first);
        ++it;
      }
    }
    if (!cmd.bounded_per_user()) {
      // Log entries from before the bound replay as they applied.
      if (accounts_.revoked_tokens.size() >= kMaxRevokedTokens) {
        return absl::ResourceExhaustedError(
            absl::StrCat("the cluster holds the most used refresh tokens it may (",
                         kMaxRevokedTokens, "); try again later"));
      }
      if (absl::Status s = CheckRoom(accounts_, BytesOf(jti)); !s.ok()) return s;
    } else {
      // Past its share the user's sessions end, this refresh's token with
      // them (AuthStore::Refresh then refuses it by its generation). When
      // the table is full all the same, so do those of the user holding the
      // most (the lowest id of those tied), whoever asks.
      std::optional<uint64_t> ending;
      if (per_user[cmd.user_id()].count + 1 >= kMaxUserRevokedTokens) {
        ending = cmd.user_id();
      } else if (accounts_.revoked_tokens.size() >= kMaxRevokedTokens) {
        uint64_t heaviest = 0;
        size_t most = 0;
        for (const auto& [user_id, held] : per_user) {
          if (held.count > most || (held.count == most && user_id < heaviest)) {
            heaviest = user_id;
            most = held.count;
          }
        }
        ending = heaviest;
      }
      const size_t freed = ending.has_value() ? per_user[*ending].bytes : 0;
      if (absl::Status s = CheckRoom(accounts_, BytesOf(jti), freed); !s.ok()) return s;
      if (ending.has_value()) EndSessionsOf(accounts_, *ending);
    }
    accounts_.bytes += BytesOf(jti);
    accounts_.revoked_tokens.emplace(std::string(jti),
                                     RevokedTokenEntry{cmd.user_id(), cmd.expires_at_s()});
  }
  // No session rests on a refresh token: nothing to recheck.
  return 0;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::TouchApiKeys& cmd) {
  if (cmd.uses() == nullptr) return 0;
  absl::MutexLock lock(&mu_);
  // Unknown keys are skipped (nothing to note), and a time only moves forward.
  for (const fb::KeyUse* use : *cmd.uses()) {
    auto it = accounts_.api_keys.find(use->key_id());
    if (it == accounts_.api_keys.end()) continue;
    it->second.last_used_at_ms = std::max(it->second.last_used_at_ms, use->used_at_ms());
  }
  return 0;
}

absl::StatusOr<uint64_t> AccountState::Apply(const fb::ImportAccounts& cmd) {
  const absl::string_view source = View(cmd.source());
  if (absl::Status s = CheckText("import source", source, 1, kMaxImportSourceBytes); !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  if (accounts_.import_done || (!accounts_.import_source.empty() && accounts_.import_source != source) ||
      (accounts_.import_source.empty() && !accounts_.empty())) {
    return absl::FailedPreconditionError(
        "the cluster already has accounts: accounts of another data directory cannot be merged "
        "into them");
  }
  // Built on a copy and swapped in whole, so a refused import changes nothing.
  Accounts next = accounts_;
  next.import_source = std::string(source);
  if (cmd.users() != nullptr) {
    for (const fb::User* in : *cmd.users()) {
      AccountUser user = UserFrom(*in);
      if (absl::Status s = CheckImportedUser(next, user); !s.ok()) return s;
      InsertUser(next, std::move(user));
    }
  }
  if (cmd.api_keys() != nullptr) {
    for (const fb::ApiKey* in : *cmd.api_keys()) {
      AccountApiKey key = KeyFrom(*in);
      if (absl::Status s = CheckImportedKey(next, key); !s.ok()) return s;
      InsertKey(next, std::move(key));
    }
  }
  if (cmd.revoked_tokens() != nullptr) {
    for (const fb::RevokedToken* in : *cmd.revoked_tokens()) {
      const absl::string_view jti = View(in->jti());
      if (absl::Status s = CheckText("token id", jti, 1, kMaxJtiBytes); !s.ok()) return s;
      if (next.revoked_tokens
              .insert_or_assign(std::string(jti),
                                RevokedTokenEntry{in->user_id(), in->expires_at_s()})
              .second) {
        next.bytes += BytesOf(jti);
      }
    }
  }
  if (next.users.size() > kMaxAccountUsers || next.api_keys.size() > kMaxAccountApiKeys ||
      next.revoked_tokens.size() > kMaxRevokedTokens || next.bytes > kMaxAccountBytes) {
    return absl::ResourceExhaustedError("the imported accounts exceed the cluster's limits");
  }
  const absl::string_view secret = View(cmd.jwt_secret());
  if (!secret.empty()) {
    if (secret.size() > kMaxJwtSecretBytes) {
      return absl::InvalidArgumentError("imported JWT secret is too long");
    }
    if (!next.jwt_secret.empty() && next.jwt_secret != secret) {
      return absl::AlreadyExistsError("the cluster's JWT secret is already set, to another value");
    }
    next.jwt_secret = std::string(secret);
  }
  next.next_user_id = std::max(next.next_user_id, cmd.next_user_id());
  next.next_api_key_id = std::max(next.next_api_key_id, cmd.next_api_key_id());
  next.import_done = cmd.last();
  accounts_ = std::move(next);
  return 0;
}

flatbuffers::Offset<fb::Accounts> AccountState::Encode(flatbuffers::FlatBufferBuilder& b) const {
  absl::ReaderMutexLock lock(&mu_);
  const Accounts& a = accounts_;
  std::vector<flatbuffers::Offset<fb::User>> users;
  users.reserve(a.users.size());
  for (const auto& [id, user] : a.users) users.push_back(BuildUser(b, user));
  std::vector<flatbuffers::Offset<fb::ApiKey>> keys;
  keys.reserve(a.api_keys.size());
  for (const auto& [id, key] : a.api_keys) keys.push_back(BuildKey(b, key));
  std::vector<flatbuffers::Offset<fb::RevokedToken>> revoked;
  revoked.reserve(a.revoked_tokens.size());
  for (const auto& [jti, entry] : a.revoked_tokens) revoked.push_back(BuildRevoked(b, jti, entry));
  auto secret = ByteVector(b, a.jwt_secret);
  auto u = b.CreateVector(users);
  auto k = b.CreateVector(keys);
  auto r = b.CreateVector(revoked);
  auto source = b.CreateString(a.import_source);
  return fb::CreateAccounts(b, static_cast<uint8_t>(a.auth_mode), secret, a.rate_limit_set,
                            a.requests_per_minute, a.burst, a.next_user_id, a.next_api_key_id, u,
                            k, r, source, a.import_done);
}

absl::StatusOr<Accounts> AccountState::Decode(const fb::Accounts* in) {
  Accounts a;
  if (in == nullptr) return a;
  if (in->auth_mode() > static_cast<uint8_t>(AuthModeCommitted::kOn)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown auth mode ", in->auth_mode()));
  }
  a.auth_mode = static_cast<AuthModeCommitted>(in->auth_mode());
  a.jwt_secret = std::string(View(in->jwt_secret()));
  if (a.jwt_secret.size() > kMaxJwtSecretBytes) {
    return absl::InvalidArgumentError("the JWT secret is too long");
  }
  a.rate_limit_set = in->rate_limit_set();
  a.requests_per_minute = in->requests_per_minute();
  a.burst = in->burst();
  if (a.requests_per_minute < 0 || a.requests_per_minute > kMaxRequestsPerMinute ||
      a.burst < 0 || a.burst > kMaxRequestsPerMinute) {
    return absl::InvalidArgumentError("the rate limit is out of range");
  }
  a.import_source = std::string(View(in->import_source()));
  if (a.import_source.size() > kMaxImportSourceBytes) {
    return absl::InvalidArgumentError("the import source is too long");
  }
  a.import_done = in->import_done();
  if ((in->users() != nullptr && in->users()->size() > kMaxAccountUsers) ||
      (in->api_keys() != nullptr && in->api_keys()->size() > kMaxAccountApiKeys) ||
      (in->revoked_tokens() != nullptr && in->revoked_tokens()->size() > kMaxRevokedTokens)) {
    return absl::InvalidArgumentError("the accounts are over their limits");
  }
  if (in->users() != nullptr) {
    for (const fb::User* u : *in->users()) {
      AccountUser user = UserFrom(*u);
      if (absl::Status s = CheckImportedUser(a, user); !s.ok()) return s;
      InsertUser(a, std::move(user));
    }
  }
  if (in->api_keys() != nullptr) {
    for (const fb::ApiKey* k : *in->api_keys()) {
      AccountApiKey key = KeyFrom(*k);
      if (absl::Status s = CheckImportedKey(a, key); !s.ok()) return s;
      InsertKey(a, std::move(key));
    }
  }
  if (in->revoked_tokens() != nullptr) {
    for (const fb::RevokedToken* r : *in->revoked_tokens()) {
      const absl::string_view jti = View(r->jti());
      if (absl::Status s = CheckText("token id", jti, 1, kMaxJtiBytes); !s.ok()) return s;
      if (!a.revoked_tokens.empty() && a.revoked_tokens.rbegin()->first >= jti) {
        return absl::InvalidArgumentError("used tokens are not sorted and distinct");
      }
      a.revoked_tokens.emplace_hint(a.revoked_tokens.end(), std::string(jti),
                                    RevokedTokenEntry{r->user_id(), r->expires_at_s()});
      a.bytes += BytesOf(jti);
    }
  }
  if (a.bytes > kMaxAccountBytes) return absl::InvalidArgumentError("the accounts are over their byte limit");
  // The counters only grow past what was handed out.
  if (in->next_user_id() < a.next_user_id || in->next_api_key_id() < a.next_api_key_id) {
    return absl::InvalidArgumentError("the next ids are below ids already handed out");
  }
  a.next_user_id = in->next_user_id();
  a.next_api_key_id = in->next_api_key_id();
  return a;
}

void AccountState::Replace(Accounts accounts) {
  bool rate_limit = false;
  {
    absl::MutexLock lock(&mu_);
    rate_limit = accounts.rate_limit_set &&
                 (!accounts_.rate_limit_set ||
                  accounts.requests_per_minute != accounts_.requests_per_minute ||
                  accounts.burst != accounts_.burst);
    accounts_ = std::move(accounts);
  }
  Notify(true, rate_limit);
}

}  // namespace logkv::server::control
