// Accounts of logkvd (REST.md section 1, "Accounts"): users with argon2id
// password hashes, JWT access and refresh tokens, and API keys with scopes.
//
// The accounts are the cluster's: they live in the control plane's
// replicated state machine (server/control/account_state.h,
// docs/control-plane.md "Accounts"). A mutation (sign-up, key creation and
// revocation, refresh rotation, last-use times) is validated and prepared
// here (argon2id hash, key hash, normalised names, times), proposed to the
// Raft leader (AuthConfig::propose), applied by every node in log order, and
// returns once this node has applied it too. Reads (logins, every request's
// API key or token) are local: they look into the applied state in place,
// under its reader lock, with no round trip and no copy.
//
// Accounts an older version kept in this node's engine, under kAuthPrefix
// (server/namespaces.h), are moved into the state machine by the first Load
// that finds them (see Load); the engine copies are then not read again.
//
// Legacy layout (read once, for the move; each value a JSON object with
// "v": 1 unless noted; never change these names):
//   "\0auth/secret"               {"v","hs256_key"}: the generated JWT secret
//   "\0auth/next/user"            decimal text: the next user id to hand out
//   "\0auth/next/apikey"          decimal text: the next API key id
//   "\0auth/user/<id>"            {"v","id","email","username","password_hash",
//                                 "is_active","created_at_ms"}
//   "\0auth/apikey/<id>"          {"v","id","user_id","name","key_prefix",
//                                 "key_hash","scopes","is_active","created_at_ms",
//                                 "expires_at_ms","last_used_at_ms"}
//   "\0auth/revoked/<jti>"        {"v","user_id","exp"}: a used refresh token
//   "\0auth/moved"                {"v","users","api_keys"}: written after the
//                                 move; its presence means the records above
//                                 are no longer authoritative
// <id> is 20 decimal digits, zero-padded.
//
// Thread-safety: every method may be called from any thread at once; before
// Load has returned OK, mutations and logins answer Unavailable.
// SignUp and Login hash passwords with argon2id (tens of milliseconds) and
// mutations wait for Raft: call them from a worker thread, never from a
// network loop.
#ifndef LOGKV_SERVER_AUTH_AUTH_STORE_H_
#define LOGKV_SERVER_AUTH_AUTH_STORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "nlohmann/json_fwd.hpp"
#include "server/auth/password.h"
#include "server/control/account_state.h"
#include "server/control/acl_state.h"

namespace logkv::server::control {
class ControlState;
}  // namespace logkv::server::control

namespace logkv::server::auth {

// Limits on what clients may register (bytes unless said otherwise).
inline constexpr size_t kMaxEmailBytes = 254;         // RFC 5321's path limit
inline constexpr size_t kMaxUsernameCharacters = 64;  // Unicode code points
inline constexpr size_t kMinPasswordCharacters = 8;   // Unicode code points
inline constexpr size_t kMaxPasswordBytes = 1024;
inline constexpr size_t kMaxApiKeyNameBytes = 256;
inline constexpr int64_t kMaxApiKeyExpiryDays = 3650;
inline constexpr size_t kMaxActiveApiKeysPerUser = 100;

// API keys: "ydht_" (the seed's prefix) + base64url of 30 random bytes (240
// bits), 45 characters; the first kApiKeyPrefixCharacters are shown in lists.
inline constexpr absl::string_view kApiKeyMarker = "ydht_";
inline constexpr size_t kApiKeyRandomBytes = 30;
inline constexpr size_t kApiKeyBytes = 5 + kApiKeyRandomBytes / 3 * 4;
inline constexpr size_t kApiKeyPrefixCharacters = 8;
static_assert(kApiKeyRandomBytes % 3 == 0, "random bytes must fill base64 groups exactly");
static_assert(kApiKeyBytes == 45, "an API key is ydht_ plus 40 characters");

struct AuthConfig {
  // Where the accounts live: the control plane's account state as applied
  // on this node, and how to propose a command to the cluster (the state
  // machine's answer once the leader applied it; Unavailable while there is
  // no leader). It must outlive the store. Unset: UseControlPlane, before
  // Load.
  control::AccountState* accounts = nullptr;
  std::function<absl::StatusOr<uint64_t>(std::string command)> propose;
  // How long a mutation waits for this node to apply what the leader
  // applied.
  absl::Duration apply_timeout = absl::Seconds(10);
  // This data directory's name in the cluster (the node id), recorded with
  // an import of its legacy accounts.
  std::string import_source = "local";
  // A control-plane state restored from a backup (its accounts are taken
  // back when the cluster has none); "" or a missing file: none.
  std::string restored_state_file;
  // This node starts a cluster of its own (no seeds): only then does it take
  // a restored backup's accounts and access table back.
  bool restored_starts_cluster = true;
  // The HS256 secret. Empty: the cluster's (committed by the first node to
  // load, generated at random). A configured secret other than the
  // committed one replaces it on every node when this node loads: give
  // every node the same. Secrets shorter than 32 bytes are accepted (the
  // seed's JWT_SECRET) with a warning.
  std::string jwt_secret;
  int64_t access_token_ttl_s = 3600;  // the caller honours JWT_EXPIRATION
  int64_t refresh_token_ttl_s = 7 * 24 * 3600;
  PasswordHashLimits password_limits = PasswordHashLimits::Interactive();
  engine::Clock* clock = nullptr;  // default engine::SystemClock(); must outlive the store
  // Where warnings and notices go; default stderr.
  std::function<void(absl::string_view)> log;
  // Called after a revocation (an API key revoked, a user disabled, a
  // refresh token used, a snapshot installed) was applied on this node, on
  // the applying thread with no lock held, so that sessions opened with it
  // can end at once (Server::RecheckSessions), whichever node revoked it.
  std::function<void()> on_revoked;
  // Called when the cluster's committed rate limit changes (and once at
  // Load with the committed value).
  std::function<void(int64_t requests_per_minute, int64_t burst)> on_rate_limit;
  // This node's id, named in the audit entries of the commands it proposes
  // (control::Actor::node); unset: none named.
  std::function<std::string()> node_id;
};

struct User {
  uint64_t id = 0;
  std::string email;  // as given at sign-up; matched after NFKC_Casefold
  std::string username;
  bool is_active = true;
  int64_t created_at_ms = 0;
  uint64_t session_generation = 0;  // the tokens issued now carry it
};

struct Tokens {
  std::string access_token;
  std::string refresh_token;
  int64_t expires_in_seconds = 0;  // of the access token
  User user;
};

struct ApiKeyInfo {
  uint64_t id = 0;
  uint64_t user_id = 0;
  std::string name;
  std::string key_prefix;
  std::vector<std::string> scopes;  // a non-empty subset of {"read", "write"}, in that order
  bool is_active = true;            // false once revoked
  int64_t created_at_ms = 0;
  int64_t expires_at_ms = 0;    // 0: never
  int64_t last_used_at_ms = 0;  // 0: never
};

struct CreatedApiKey {
  ApiKeyInfo info;
  std::string key;  // the only time the full key exists outside its owner
};

// Who a request with a valid API key acts for.
// The administrator: the first account signed up in the cluster (ids count
// from 1). It may change the cluster's membership.
inline constexpr uint64_t kAdministratorUserId = 1;

struct Principal {
  uint64_t user_id = 0;
  uint64_t api_key_id = 0;
  bool can_read = false;
  bool can_write = false;
  int64_t expires_at_ms = 0;  // of the key; 0: never
  // AuthStore::credentials_generation() when the key was last found valid:
  // what RecheckApiKey compares to tell cheaply that nothing was revoked since.
  uint64_t generation = 0;
};

class AuthStore {
 public:
  // engine (may be null) is read only for the move of legacy accounts; it
  // must outlive the store.
  AuthStore(engine::Engine* engine, AuthConfig config);
  AuthStore(const AuthStore&) = delete;
  AuthStore& operator=(const AuthStore&) = delete;
  ~AuthStore();

  // Where the accounts live, for a node whose control plane starts after
  // the store was made (else config.accounts and config.propose). Before
  // Load, and before anything else uses the store.
  void UseControlPlane(control::AccountState* accounts,
                       std::function<absl::StatusOr<uint64_t>(std::string command)> propose);

  // Makes the store ready, proposing what the cluster does not hold yet:
  // the auth mode "on" (FailedPrecondition when the cluster committed "off"),
  // the legacy accounts of this node's engine (once; DataLoss names a record
  // that does not parse; FailedPrecondition when the cluster already has
  // accounts of its own), the JWT secret, and the rate limit given (the
  // node's flags, committed for the cluster). Needs a leader: call it once
  // the control plane runs.
  [[nodiscard]] absl::Status Load(int64_t requests_per_minute = 0, int64_t burst = 0);

  // InvalidArgument for a malformed email, a username outside 1..64
  // characters, an email or username with a control or format character
  // (Unicode Cc, Cf: zero-width, bidi overrides), or a password shorter
  // than 8 or with a control character; AlreadyExists when the email or
  // username is taken, compared after Unicode NFKC_Casefold (case in any
  // script, fullwidth forms), across the cluster. Slow: hashes the password.
  // actor: who asks (an anonymous sign-up, or an administrator), for the
  // audit log; as every mutation below, its node is filled with this node's
  // when empty (ActorOf).
  [[nodiscard]] absl::StatusOr<User> SignUp(absl::string_view email, absl::string_view username,
                                            absl::string_view password,
                                            control::Actor actor = {});

  // Unauthenticated("invalid email or password") for an unknown email and a
  // wrong password alike, after the same amount of hashing. Slow.
  [[nodiscard]] absl::StatusOr<Tokens> Login(absl::string_view email, absl::string_view password);
  // The name under which Login finds email (its NFKC_Casefold form), for a
  // throttle of failed logins: every spelling Login takes for one account
  // (case, fullwidth letters, ignorable characters) counts as that account.
  // An email Login cannot match (too long, not UTF-8) is returned as it is.
  std::string LoginName(absl::string_view email) const;

  // New tokens for a valid, unused refresh token, whose jti is then revoked
  // in the cluster, so each refresh token works once, on any node. admit,
  // when given, is asked with the token's user before anything is proposed
  // (a rate limit); its refusal is returned.
  [[nodiscard]] absl::StatusOr<Tokens> Refresh(
      absl::string_view refresh_token,
      const std::function<absl::Status(uint64_t user_id)>& admit = nullptr);

  // The user an Authorization header value ("Bearer <access jwt>") speaks for.
  [[nodiscard]] absl::StatusOr<User> AuthenticateBearer(absl::string_view authorization);

  // InvalidArgument for a name outside 1..256 bytes, scopes that are not a
  // non-empty subset of {"read","write"}, or expires_in_days outside
  // 0..3650 (0: never expires); ResourceExhausted past 100 active keys.
  [[nodiscard]] absl::StatusOr<CreatedApiKey> CreateApiKey(uint64_t user_id, absl::string_view name,
                                                           const std::vector<std::string>& scopes,
                                                           int64_t expires_in_days,
                                                           control::Actor actor = {});

  // user_id's keys, revoked ones included, oldest first.
  std::vector<ApiKeyInfo> ListApiKeys(uint64_t user_id);

  // NotFound unless key_id is one of user_id's keys. Revoking a revoked key is OK.
  [[nodiscard]] absl::Status RevokeApiKey(uint64_t user_id, uint64_t key_id,
                                          control::Actor actor = {});

  // Disables (or enables again) a user: a disabled user's tokens and keys
  // are refused on every node. NotFound for an unknown user.
  [[nodiscard]] absl::Status SetUserActive(uint64_t user_id, bool active,
                                           control::Actor actor = {});
  // Ends every session of user_id on every node: the access and refresh
  // tokens issued so far are refused from then on (SetUserActive does the
  // same when it changes anything). NotFound for an unknown user.
  [[nodiscard]] absl::Status EndSessions(uint64_t user_id, control::Actor actor = {});

  // The hot path of every data request: no engine access, no round trip and
  // no allocation. Unauthenticated("invalid API key"), ("API key revoked"),
  // ("API key expired"). Notes the time of use in memory for FlushLastUsed.
  [[nodiscard]] absl::StatusOr<Principal> AuthenticateApiKey(absl::string_view key)
      ABSL_LOCKS_EXCLUDED(dirty_mu_);

  // Whether a principal found valid earlier still is, for sessions that
  // authenticate once and then make many requests (the binary protocol): the
  // key's expiry is compared with the clock and, unless a revocation
  // happened since principal->generation, nothing else is read (one atomic
  // load, no lock). Otherwise the key is looked up under the reader lock and
  // principal->generation updated. Unauthenticated as AuthenticateApiKey.
  [[nodiscard]] absl::Status RecheckApiKey(Principal* principal);
  // Changes whenever something is revoked (account_state.h).
  uint64_t credentials_generation() const;

  // Proposes the last-use times noted since the previous flush: one command
  // for many keys (at most 20000 per command), not one per request. Returns
  // how many keys it carried. The server calls it every few seconds and at
  // shutdown.
  [[nodiscard]] absl::StatusOr<size_t> FlushLastUsed() ABSL_LOCKS_EXCLUDED(dirty_mu_);

  size_t UserCount() const;

  // ---- Administration (the /api/users and /api/groups routes) ----
  // Every user, by id.
  std::vector<User> ListUsers() const;
  // NotFound for an unknown id.
  absl::StatusOr<User> GetUser(uint64_t user_id) const;
  // Revokes every active API key of user_id (an administrator's reset);
  // how many. NotFound for an unknown user.
  absl::StatusOr<size_t> RevokeAllApiKeys(uint64_t user_id, control::Actor actor = {});

  // The control plane's administrators, groups and ACLs (acl_state.h), for
  // proposals to wait on; before Load, like UseControlPlane.
  void UseAccess(control::AclState* access) { access_.store(access, std::memory_order_release); }
  // The state as applied here; null until UseAccess.
  const control::AclState* access() const { return access_.load(std::memory_order_acquire); }
  // Proposes an access command (acl_state.h's encoders) and waits until
  // this node has applied it: done(access, the command's value) holds. The
  // state machine's refusal is returned as it is; no leader or a timeout is
  // Unavailable.
  absl::StatusOr<uint64_t> ProposeAccess(
      std::string command, const std::function<bool(const control::Access&, uint64_t)>& done);
  // --admins (docs/security.md, "Roles"): makes each user named (by
  // username, compared as sign-up compares them) an administrator, once per
  // user id in *granted: a user not signed up yet is granted when it is, and
  // an administrator's later revocation stands until *granted is new (the
  // node restarts). Proposes nothing for a user already an administrator.
  // The first failure is returned (the rest are tried again next time).
  absl::Status GrantAdmins(const std::vector<std::string>& usernames,
                           absl::flat_hash_set<uint64_t>* granted);
  // actor with this node as its node when it names none; Actor::Node() for
  // an actor of kind unknown (what the store proposes on its own).
  control::Actor ActorOf(control::Actor actor) const;
  // The current time, as the store's clock gives it.
  int64_t Now() const { return NowMs(); }

 private:
  int64_t NowMs() const;
  void LogLine(absl::string_view message) const;
  absl::Status NotReady() const;
  // Proposes a command and waits until this node has applied it (done).
  absl::StatusOr<uint64_t> ProposeAndAwait(std::string command,
                                           const std::function<bool(const control::Accounts&, uint64_t)>& done);
  void SpreadCommit();
  [[nodiscard]] absl::Status MoveLegacyAccounts();
  // ProposeAccess without waiting for Load (which calls it).
  absl::StatusOr<uint64_t> ProposeAccessWhileLoading(
      std::string command, const std::function<bool(const control::Access&, uint64_t)>& done);
  // A restored backup's accounts, then its access table, each once.
  [[nodiscard]] absl::Status ImportRestoredAccounts();
  [[nodiscard]] absl::Status ImportRestoredAccountsOf(const control::ControlState& restored);
  [[nodiscard]] absl::Status ImportRestoredAccess(const control::ControlState& restored);
  // Proposes accounts as ImportAccounts commands of a bounded size.
  [[nodiscard]] absl::Status ImportInCommands(const std::string& source,
                                              const std::vector<control::AccountUser>& users,
                                              const std::vector<control::AccountApiKey>& keys,
                                              const std::vector<std::pair<std::string, control::RevokedTokenEntry>>& revoked,
                                              const std::string& secret, uint64_t next_user_id,
                                              uint64_t next_api_key_id);
  [[nodiscard]] absl::Status SettleSecret();
  Tokens IssueTokens(const User& user) const;
  // f(the cluster's JWT secret), under the account state's reader lock: a
  // secret replaced on any node is in force here at once.
  template <typename F>
  auto WithSecret(F&& f) const;

  // Constant after construction.
  engine::Engine* const engine_;
  const AuthConfig config_;
  engine::Clock* const clock_;
  control::AccountState* state() const { return accounts_.load(std::memory_order_acquire); }
  control::AccountState empty_accounts_;  // until UseControlPlane
  std::atomic<control::AccountState*> accounts_;
  std::atomic<control::AclState*> access_{nullptr};
  std::function<absl::StatusOr<uint64_t>(std::string command)> propose_;  // set before Load

  // Written by Load before ready_ turns true: constant afterwards.
  std::string dummy_password_hash_;  // verified for unknown emails, to equalise timing
  std::atomic<bool> ready_{false};

  // Ids of keys whose last use is newer than what was proposed. A key enters
  // once per flush (when its dirty flag turns on), so this lock is rare on
  // the hot path. Lock order: the account state's lock, then dirty_mu_.
  absl::Mutex dirty_mu_;
  std::vector<uint64_t> dirty_api_keys_ ABSL_GUARDED_BY(dirty_mu_);
  absl::Mutex flush_mu_;  // one flush at a time
};

// Renderers of the REST shapes. Times are RFC 3339 UTC ("2024-11-15T10:00:00Z");
// "never" is null.
nlohmann::json UserJson(const User& user);  // {"id","email","username","is_active","created_at"}
// {"access_token","refresh_token","token_type":"Bearer","expires_in","user"}
nlohmann::json TokensJson(const Tokens& tokens);
// {"id","name","key_prefix","key","scopes","is_active","expires_at","created_at"}
nlohmann::json CreatedApiKeyJson(const CreatedApiKey& created);
// {"id","name","key_prefix","scopes","is_active","last_used_at","expires_at","created_at"}
nlohmann::json ApiKeyJson(const ApiKeyInfo& info);
std::string FormatRfc3339(int64_t unix_ms);
// json as compact text. Never throws: invalid UTF-8 in a string becomes U+FFFD.
std::string SerializeJson(const nlohmann::json& json);

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_AUTH_STORE_H_
