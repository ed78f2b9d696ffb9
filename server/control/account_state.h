// The cluster's accounts as part of the control plane's state machine
// (docs/control-plane.md, "Accounts"): users (with their argon2id hashes),
// API keys (their BLAKE2b-256 hashes only), scopes, expiry, whether each is
// active, used refresh tokens until they expire, the JWT signing secret, the
// per-user rate limit and the cluster's auth mode.
//
// Like the configuration, it is a pure function of the commands applied:
// everything that needs a clock, randomness or Unicode tables (times, the
// password hash, the key hash, the NFKC_Casefold forms that make names
// unique) is computed by the proposing node and carried in the command, so
// every server gives each command the same answer. Ids are assigned here, in
// log order, so two nodes never hand out one id twice, and the email and
// username are unique across the cluster.
//
// ControlState owns the one AccountState of a server and applies the account
// commands to it; AuthStore (server/auth) reads it in place under a reader
// lock (Read), so a request needs no round trip and no copy.
//
// Thread-safety: every method may be called from any thread.
#ifndef LOGKV_SERVER_CONTROL_ACCOUNT_STATE_H_
#define LOGKV_SERVER_CONTROL_ACCOUNT_STATE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/control/command_options.h"

namespace flatbuffers {
template <typename T>
struct Offset;
class FlatBufferBuilder;
}  // namespace flatbuffers

namespace logkv::server::control {

namespace fb {
struct Accounts;
struct SetAuthMode;
struct SetJwtSecret;
struct SetRateLimit;
struct SignUp;
struct IssueApiKey;
struct RevokeApiKey;
struct SetUserActive;
struct EndSessions;
struct RevokeToken;
struct TouchApiKeys;
struct ImportAccounts;
}  // namespace fb

// Bounds of the account state, the same on every server (a refusal is as
// deterministic as an acceptance). Besides the counts, the bytes the
// accounts take in a snapshot are bounded (kMaxAccountBytes, counted as
// each record's fields plus kAccountRecordOverheadBytes), so that a snapshot
// stays under kMaxSnapshotBytes (control_state.h) whatever the fields hold.
// A typical user takes about 300 bytes, a key about 150, a used token 60.
inline constexpr size_t kMaxAccountBytes = size_t{96} << 20;
inline constexpr size_t kAccountRecordOverheadBytes = 64;
inline constexpr size_t kMaxAccountUsers = 100000;
inline constexpr size_t kMaxAccountApiKeys = 200000;       // revoked ones included
inline constexpr size_t kMaxRevokedTokens = 200000;        // until they expire
inline constexpr size_t kMaxUserActiveApiKeys = 100;
// Revoked and expired keys kept per user (listed as such); a new key makes
// the oldest of them go past it, so churning keys cannot fill the table.
inline constexpr size_t kMaxUserRetiredApiKeys = 100;
// Used refresh tokens kept per user until they expire. A user past it has
// its sessions ended (its tokens are refused, its entries go), and so has
// the user with the most when the table is full: one account refreshing in
// a loop cannot fill the table for everyone. A used token is kept for about
// the refresh tokens' week; the web console refreshes every 48 minutes (four
// fifths of the access tokens' default hour), 210 a week a tab, so this is
// some twenty tabs or devices refreshing all week.
inline constexpr size_t kMaxUserRevokedTokens = 5000;
inline constexpr size_t kMaxAccountEmailBytes = 254;
inline constexpr size_t kMaxAccountUsernameBytes = 256;    // 64 characters of UTF-8
inline constexpr size_t kMaxAccountNameKeyBytes = 1024;    // a normalised email or username
inline constexpr size_t kMaxPasswordHashBytes = 256;
inline constexpr size_t kMaxApiKeyNameBytes_ = 256;
inline constexpr size_t kMaxApiKeyPrefixBytes = 16;
inline constexpr size_t kApiKeyHashBytes = 32;
inline constexpr size_t kMaxJtiBytes = 64;
inline constexpr size_t kMinJwtSecretBytes = 1;
inline constexpr size_t kMaxJwtSecretBytes = 512;
inline constexpr size_t kMaxImportSourceBytes = 128;
inline constexpr int64_t kMaxRequestsPerMinute = int64_t{1} << 40;
// Scopes, as bits.
inline constexpr uint8_t kScopeRead = 1;
inline constexpr uint8_t kScopeWrite = 2;

enum class AuthModeCommitted : uint8_t { kUnset = 0, kOff = 1, kOn = 2 };

struct AccountUser {
  uint64_t id = 0;
  std::string email;
  std::string username;
  std::string email_key;
  std::string username_key;
  std::string password_hash;
  bool is_active = true;
  int64_t created_at_ms = 0;
  // Moves on when the user's sessions end (EndSessions, SetUserActive): a
  // token carries the value it was issued under.
  uint64_t session_generation = 0;

  bool operator==(const AccountUser&) const = default;
};

// What this node saw of a key's use since its last flush: node-local, not
// replicated, not in snapshots or comparisons (copies start empty).
struct LocalUse {
  mutable std::atomic<int64_t> used_at_ms{0};
  mutable std::atomic<bool> dirty{false};
  LocalUse() = default;
  LocalUse(const LocalUse&) {}
  LocalUse& operator=(const LocalUse&) { return *this; }
  bool operator==(const LocalUse&) const { return true; }
};

struct AccountApiKey {
  uint64_t id = 0;
  uint64_t user_id = 0;
  std::string name;
  std::string key_prefix;
  std::string key_hash;  // 32 raw bytes
  uint8_t scopes = 0;    // kScopeRead | kScopeWrite
  bool is_active = true;
  int64_t created_at_ms = 0;
  int64_t expires_at_ms = 0;    // 0: never
  int64_t last_used_at_ms = 0;  // committed (batched); 0: never
  LocalUse local;

  bool operator==(const AccountApiKey&) const = default;
};

struct RevokedTokenEntry {
  uint64_t user_id = 0;
  int64_t expires_at_s = 0;
  bool operator==(const RevokedTokenEntry&) const = default;
};

// The whole account state, as a value.
struct Accounts {
  AuthModeCommitted auth_mode = AuthModeCommitted::kUnset;
  std::string jwt_secret;  // "" until committed
  bool rate_limit_set = false;
  int64_t requests_per_minute = 0;
  int64_t burst = 0;
  uint64_t next_user_id = 1;
  uint64_t next_api_key_id = 1;
  std::map<uint64_t, AccountUser> users;
  std::map<uint64_t, AccountApiKey> api_keys;
  std::map<std::string, RevokedTokenEntry, std::less<>> revoked_tokens;  // by jti
  std::string import_source;  // the node whose engine accounts were imported
  bool import_done = false;

  // Derived (rebuilt on restore): names to user ids (the older user keeps a
  // name two imported users share), key hashes to key ids, keys per user.
  std::map<std::string, uint64_t> user_by_email_key;
  std::map<std::string, uint64_t> user_by_username_key;
  absl::flat_hash_map<std::string, uint64_t> api_key_by_hash;
  std::map<uint64_t, std::vector<uint64_t>> api_keys_by_user;
  size_t bytes = 0;  // what the records take, as kMaxAccountBytes counts

  bool operator==(const Accounts&) const = default;

  const AccountUser* FindUser(uint64_t id) const;
  const AccountApiKey* FindApiKeyByHash(absl::string_view hash) const;
  bool empty() const { return users.empty() && api_keys.empty(); }
};

// The encoders of the account commands (the bytes to hand to Raft).
std::string EncodeSetAuthMode(bool on, const Actor& actor = {});
std::string EncodeSetJwtSecret(absl::string_view secret, bool replace, const Actor& actor = {});
std::string EncodeSetRateLimit(int64_t requests_per_minute, int64_t burst, bool only_if_unset,
                               const Actor& actor = {});
std::string EncodeSignUp(const AccountUser& user,
                         const Actor& actor = {});  // id and is_active ignored
std::string EncodeCreateApiKey(const AccountApiKey& key,
                               const Actor& actor = {});  // id, is_active, last use ignored
std::string EncodeRevokeApiKey(uint64_t user_id, uint64_t key_id, const Actor& actor = {});
std::string EncodeSetUserActive(uint64_t user_id, bool active, const Actor& actor = {});
std::string EncodeEndSessions(uint64_t user_id, const Actor& actor = {});
std::string EncodeRevokeToken(absl::string_view jti, uint64_t user_id, int64_t expires_at_s,
                              int64_t now_s);
std::string EncodeTouchApiKeys(const std::vector<std::pair<uint64_t, int64_t>>& uses);
// One command of an import: the parts of `accounts` given (users, keys,
// revoked tokens; the secret and next ids when last).
std::string EncodeImportAccounts(absl::string_view source, const std::vector<AccountUser>& users,
                                 const std::vector<AccountApiKey>& keys,
                                 const std::vector<std::pair<std::string, RevokedTokenEntry>>& revoked,
                                 absl::string_view jwt_secret, uint64_t next_user_id,
                                 uint64_t next_api_key_id, bool last,
                                 const Actor& actor = {});

class AccountState {
 public:
  AccountState() = default;
  AccountState(const AccountState&) = delete;
  AccountState& operator=(const AccountState&) = delete;

  // Runs f(const Accounts&) under the reader lock and returns what it
  // returns. f must not call back into this object.
  template <typename F>
  auto Read(F&& f) const {
    absl::ReaderMutexLock lock(&mu_);
    return f(accounts_);
  }
  // A copy (tests, tools).
  Accounts Current() const;

  // Waits (bounded) until pred(accounts) holds; false on the deadline.
  bool Await(const std::function<bool(const Accounts&)>& pred, absl::Time deadline) const;

  // Changes whenever a key is revoked, a user deactivated, a refresh token
  // used or the state restored from a snapshot: what sessions compare to
  // tell cheaply that nothing they rely on was revoked.
  uint64_t revocation_generation() const {
    return revocation_generation_.load(std::memory_order_acquire);
  }

  // Called with no lock held, on the applying thread (Raft's loop), after a
  // revocation was applied or a snapshot restored (on_revoked) and after
  // the committed rate limit changed (on_rate_limit).
  struct Listener {
    std::function<void()> on_revoked;
    std::function<void(int64_t requests_per_minute, int64_t burst)> on_rate_limit;
  };
  void SetListener(Listener listener);

  // ---- For ControlState ----
  // Each applies one command, or refuses it leaving the state as it was. The
  // value is the id assigned or named (user or key), 0 when none.
  // may_switch: the cluster is a single member (or none), which may change
  // its mode (a lone node restarted with the other --auth).
  absl::StatusOr<uint64_t> Apply(const fb::SetAuthMode& cmd, bool may_switch);
  absl::StatusOr<uint64_t> Apply(const fb::SetJwtSecret& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::SetRateLimit& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::SignUp& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::IssueApiKey& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::RevokeApiKey& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::SetUserActive& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::EndSessions& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::RevokeToken& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::TouchApiKeys& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::ImportAccounts& cmd);

  // The state as the snapshot's Accounts table (null offset-free: always
  // written), and back. Decode checks everything and builds the indexes.
  flatbuffers::Offset<fb::Accounts> Encode(flatbuffers::FlatBufferBuilder& builder) const;
  static absl::StatusOr<Accounts> Decode(const fb::Accounts* in);  // null: empty state
  void Replace(Accounts accounts);  // after Decode; notifies on_revoked

 private:
  // Notifies after the lock is released.
  void Notify(bool revoked, bool rate_limit);

  mutable absl::Mutex mu_;
  Accounts accounts_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> revocation_generation_{0};
  absl::Mutex listener_mu_;
  Listener listener_ ABSL_GUARDED_BY(listener_mu_);
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_ACCOUNT_STATE_H_
