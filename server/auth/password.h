// Password hashing with argon2id (libsodium's crypto_pwhash_str). The stored
// string is self-describing ("$argon2id$v=19$m=...,t=...,p=...$salt$hash"), so
// hashes made with other limits keep verifying after the limits change.
//
// Both calls are deliberately slow (tens of milliseconds and tens of MiB with
// the interactive limits): run them on a worker thread, never on a network loop.
// Thread-safety: every function may be called from any thread at once.
#ifndef LOGKV_SERVER_AUTH_PASSWORD_H_
#define LOGKV_SERVER_AUTH_PASSWORD_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace logkv::server::auth {

// Argon2id cost. The work factor of a hash is fixed when it is made.
struct PasswordHashLimits {
  uint64_t ops_limit = 0;
  size_t memory_limit_bytes = 0;

  // libsodium's INTERACTIVE limits (2 passes, 64 MiB): what a login should cost.
  static PasswordHashLimits Interactive();
  // libsodium's MIN limits: far too weak for real passwords; for tests only.
  static PasswordHashLimits Minimum();
};

// Initialises libsodium once per process; later calls return the first
// result. Every other function of server/auth calls it, so callers need not.
[[nodiscard]] absl::Status InitSodium();

// The argon2id hash string of password. ResourceExhausted if the memory for
// the hash cannot be had; InvalidArgument if limits are outside libsodium's range.
[[nodiscard]] absl::StatusOr<std::string> HashPassword(absl::string_view password,
                                                       const PasswordHashLimits& limits);

// Whether password matches hash (a string HashPassword made). A malformed hash
// does not match anything. Takes the time of one hash with the hash's limits.
bool VerifyPassword(absl::string_view hash, absl::string_view password);

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_PASSWORD_H_
