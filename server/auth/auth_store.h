// Accounts of logkvd (REST.md section 1, "Accounts"): users with argon2id
// password hashes, JWT access and refresh tokens, and API keys with scopes.
// Everything is kept in the engine under the reserved namespace kAuthPrefix
// (server/namespaces.h), so accounts share the data directory's durability
// and need no second store; Load reads them back into memory at startup.
//
// Persisted layout (each value a JSON object with "v": 1 unless noted; these
// names are in data directories: never change them):
//   "\0auth/secret"               {"v","hs256_key"}: the generated JWT secret
//                                 (base64url), when no jwt_secret is configured
//   "\0auth/next/user"            decimal text: the next user id to hand out
//   "\0auth/next/apikey"          decimal text: the next API key id
//   "\0auth/user/<id>"            {"v","id","email","username","password_hash",
//                                 "is_active","created_at_ms"}
//   "\0auth/apikey/<id>"          {"v","id","user_id","name","key_prefix",
//                                 "key_hash","scopes","is_active","created_at_ms",
//                                 "expires_at_ms","last_used_at_ms"}
//   "\0auth/revoked/<jti>"        {"v","user_id","exp"}: a used refresh token,
//                                 written with an engine TTL ending at its expiry
// <id> is 20 decimal digits, zero-padded, so a scan returns records in id
// order. The email and username indexes are not persisted: Load rebuilds them
// from the user records, so a sign-up is a single record write and can never
// leave an index entry pointing nowhere. API keys are stored only as their
// BLAKE2b-256 hash (key_hash, hex); the key itself is shown once, at creation.
//
// Thread-safety: every method may be called from any thread at once, once
// Load has returned OK (REQUIRES: Load is called exactly once, before anything
// else). Mutations (sign-up, key creation and revocation, refresh rotation,
// FlushLastUsed) are serialised by write_mu_, which is held across their
// engine writes; the in-memory maps are guarded by mu_, which is held only for
// memory work, so the per-request AuthenticateApiKey and AuthenticateBearer
// (readers of mu_) never wait for a disk. Lock order: write_mu_, then mu_,
// then dirty_mu_.
//
// SignUp and Login hash passwords with argon2id (tens of milliseconds): call
// them from a worker thread, never from a network loop.
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
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "nlohmann/json_fwd.hpp"
#include "server/auth/password.h"

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
  // The HS256 secret. Empty: one is generated on first start and persisted
  // under "\0auth/secret", so tokens survive restarts. Secrets shorter than
  // 32 bytes are accepted (the seed's JWT_SECRET) with a warning.
  std::string jwt_secret;
  int64_t access_token_ttl_s = 3600;  // the caller honours JWT_EXPIRATION
  int64_t refresh_token_ttl_s = 7 * 24 * 3600;
  PasswordHashLimits password_limits = PasswordHashLimits::Interactive();
  engine::Clock* clock = nullptr;  // default engine::SystemClock(); must outlive the store
  // Where warnings and notices go; default stderr.
  std::function<void(absl::string_view)> log;
  // Called after an API key was revoked, on the revoking thread with no lock
  // held, so that sessions opened with it can end at once (Server::RecheckSessions).
  std::function<void()> on_revoked;
};

struct User {
  uint64_t id = 0;
  std::string email;  // as given at sign-up; matched after NFKC_Casefold
  std::string username;
  bool is_active = true;
  int64_t created_at_ms = 0;
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
// The administrator: the first account signed up on a node (ids count from
// 1). It may change the cluster's membership.
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
  // engine must outlive the store.
  AuthStore(engine::Engine* engine, AuthConfig config);
  AuthStore(const AuthStore&) = delete;
  AuthStore& operator=(const AuthStore&) = delete;
  ~AuthStore();

  // Reads every account record back from the engine and settles the JWT
  // secret. DataLoss names the key of a record that does not parse.
  [[nodiscard]] absl::Status Load() ABSL_LOCKS_EXCLUDED(write_mu_, mu_);

  // InvalidArgument for a malformed email, a username outside 1..64
  // characters, an email or username with a control or format character
  // (Unicode Cc, Cf: zero-width, bidi overrides), or a password shorter
  // than 8 or with a control character; AlreadyExists when the email or
  // username is taken, compared after Unicode NFKC_Casefold (case in any
  // script, fullwidth forms). Slow: hashes the password.
  [[nodiscard]] absl::StatusOr<User> SignUp(absl::string_view email, absl::string_view username,
                                            absl::string_view password)
      ABSL_LOCKS_EXCLUDED(write_mu_, mu_);

  // Unauthenticated("invalid email or password") for an unknown email and a
  // wrong password alike, after the same amount of hashing. Slow.
  [[nodiscard]] absl::StatusOr<Tokens> Login(absl::string_view email, absl::string_view password)
      ABSL_LOCKS_EXCLUDED(write_mu_, mu_);

  // New tokens for a valid, unused refresh token, whose jti is then revoked
  // for good (persisted), so each refresh token works once.
  [[nodiscard]] absl::StatusOr<Tokens> Refresh(absl::string_view refresh_token)
      ABSL_LOCKS_EXCLUDED(write_mu_, mu_);

  // The user an Authorization header value ("Bearer <access jwt>") speaks for.
  [[nodiscard]] absl::StatusOr<User> AuthenticateBearer(absl::string_view authorization)
      ABSL_LOCKS_EXCLUDED(mu_);

  // InvalidArgument for a name outside 1..256 bytes, scopes that are not a
  // non-empty subset of {"read","write"}, or expires_in_days outside
  // 0..3650 (0: never expires); ResourceExhausted past 100 active keys.
  [[nodiscard]] absl::StatusOr<CreatedApiKey> CreateApiKey(uint64_t user_id, absl::string_view name,
                                                           const std::vector<std::string>& scopes,
                                                           int64_t expires_in_days)
      ABSL_LOCKS_EXCLUDED(write_mu_, mu_);

  // user_id's keys, revoked ones included, oldest first.
  std::vector<ApiKeyInfo> ListApiKeys(uint64_t user_id) ABSL_LOCKS_EXCLUDED(mu_);

  // NotFound unless key_id is one of user_id's keys. Revoking a revoked key is OK.
  [[nodiscard]] absl::Status RevokeApiKey(uint64_t user_id, uint64_t key_id)
      ABSL_LOCKS_EXCLUDED(write_mu_, mu_);

  // The hot path of every data request: no engine access and no allocation.
  // Unauthenticated("invalid API key"), ("API key revoked"), ("API key
  // expired"). Notes the time of use in memory for FlushLastUsed.
  [[nodiscard]] absl::StatusOr<Principal> AuthenticateApiKey(absl::string_view key)
      ABSL_LOCKS_EXCLUDED(mu_, dirty_mu_);

  // Whether a principal found valid earlier still is, for sessions that
  // authenticate once and then make many requests (the binary protocol): the
  // key's expiry is compared with the clock and, unless a revocation
  // happened since principal->generation, nothing else is read (one atomic
  // load, no lock). Otherwise the key is looked up under the reader lock and
  // principal->generation updated. Unauthenticated as AuthenticateApiKey.
  [[nodiscard]] absl::Status RecheckApiKey(Principal* principal) ABSL_LOCKS_EXCLUDED(mu_);
  // Changes whenever a key is revoked.
  uint64_t credentials_generation() const {
    return credentials_generation_.load(std::memory_order_acquire);
  }

  // Persists the last-use times noted since the previous flush, one record
  // write per key used (not per request). Returns how many were written. The
  // server calls it every few seconds and at shutdown.
  [[nodiscard]] absl::StatusOr<size_t> FlushLastUsed()
      ABSL_LOCKS_EXCLUDED(write_mu_, mu_, dirty_mu_);

  size_t UserCount() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct UserEntry {
    User user;
    std::string password_hash;
  };
  // Heap-allocated so AuthenticateApiKey may use it under a reader lock; the
  // atomics are what readers change.
  struct ApiKeyEntry {
    ApiKeyInfo info;       // last_used_at_ms unused: see the atomic
    std::string key_hash;  // 32 raw bytes
    std::atomic<int64_t> last_used_at_ms{0};
    std::atomic<bool> last_used_dirty{false};
  };

  int64_t NowMs() const;
  void LogLine(absl::string_view message) const;
  [[nodiscard]] absl::Status LoadSecret();
  [[nodiscard]] absl::Status LoadRecord(absl::string_view key, absl::string_view value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_, mu_);
  [[nodiscard]] absl::Status Write(absl::string_view key, absl::string_view value,
                                   int64_t ttl_ms = 0);
  Tokens IssueTokens(const User& user) const;
  void InsertApiKeyLocked(std::unique_ptr<ApiKeyEntry> entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ApiKeyInfo SnapshotLocked(const ApiKeyEntry& entry) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::string UserRecord(const UserEntry& entry) const;
  std::string ApiKeyRecord(const ApiKeyInfo& info, absl::string_view key_hash) const;

  // Constant after construction.
  engine::Engine* const engine_;
  const AuthConfig config_;
  engine::Clock* const clock_;

  // Written once by Load, which happens before every other call: constant afterwards.
  std::string jwt_secret_;
  std::string dummy_password_hash_;  // verified for unknown emails, to equalise timing

  // Serialises mutations with their engine writes.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  uint64_t next_user_id_ ABSL_GUARDED_BY(write_mu_) = 1;
  uint64_t next_api_key_id_ ABSL_GUARDED_BY(write_mu_) = 1;

  mutable absl::Mutex mu_ ABSL_ACQUIRED_BEFORE(dirty_mu_);
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<uint64_t, UserEntry> users_ ABSL_GUARDED_BY(mu_);
  // Keyed by the names' NFKC_Casefold forms (unique per user).
  absl::flat_hash_map<std::string, uint64_t> user_by_email_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> user_by_username_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::unique_ptr<ApiKeyEntry>> api_keys_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, ApiKeyEntry*> api_key_by_hash_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> api_keys_by_user_ ABSL_GUARDED_BY(mu_);
  // Used refresh tokens until they expire: jti -> exp (seconds).
  absl::flat_hash_map<std::string, int64_t> revoked_jtis_ ABSL_GUARDED_BY(mu_);
  size_t revoked_prune_size_ ABSL_GUARDED_BY(mu_) = 1024;

  // Incremented after each revocation is in api_keys_ (RecheckApiKey).
  std::atomic<uint64_t> credentials_generation_{0};

  // Ids of keys whose last use is newer than their record. A key enters once
  // per flush (when its dirty flag turns on), so this lock is rare on the hot path.
  absl::Mutex dirty_mu_;
  std::vector<uint64_t> dirty_api_keys_ ABSL_GUARDED_BY(dirty_mu_);
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
