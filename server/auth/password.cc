#include "server/auth/password.h"

#include <sodium.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace logkv::server::auth {

PasswordHashLimits PasswordHashLimits::Interactive() {
  return {crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE};
}

PasswordHashLimits PasswordHashLimits::Minimum() {
  return {crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN};
}

absl::Status InitSodium() {
  // A function-local static: initialised exactly once even when threads race
  // here, and sodium_init itself is safe to repeat.
  static const int result = sodium_init();
  if (result < 0) return absl::InternalError("libsodium could not be initialised");
  return absl::OkStatus();
}

absl::StatusOr<std::string> HashPassword(absl::string_view password,
                                         const PasswordHashLimits& limits) {
  if (absl::Status status = InitSodium(); !status.ok()) return status;
  if (limits.ops_limit < crypto_pwhash_OPSLIMIT_MIN ||
      limits.ops_limit > crypto_pwhash_OPSLIMIT_MAX ||
      limits.memory_limit_bytes < crypto_pwhash_MEMLIMIT_MIN ||
      limits.memory_limit_bytes > crypto_pwhash_MEMLIMIT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("argon2id limits out of range: ops_limit ",
                                                   limits.ops_limit, ", memory_limit_bytes ",
                                                   limits.memory_limit_bytes));
  }
  char hash[crypto_pwhash_STRBYTES];
  // crypto_pwhash_str_alg names the algorithm, so a libsodium whose default
  // changes cannot silently switch away from argon2id.
  if (crypto_pwhash_str_alg(hash, password.data(), password.size(), limits.ops_limit,
                            limits.memory_limit_bytes, crypto_pwhash_ALG_ARGON2ID13) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "argon2id could not allocate ", limits.memory_limit_bytes, " bytes to hash a password"));
  }
  return std::string(hash, strnlen(hash, sizeof(hash)));
}

bool VerifyPassword(absl::string_view hash, absl::string_view password) {
  if (!InitSodium().ok()) return false;
  // crypto_pwhash_str_verify reads a NUL-terminated string of bounded length.
  if (hash.empty() || hash.size() >= crypto_pwhash_STRBYTES) return false;
  if (hash.find('\0') != absl::string_view::npos) return false;
  const std::string terminated(hash);
  return crypto_pwhash_str_verify(terminated.c_str(), password.data(), password.size()) == 0;
}

}  // namespace logkv::server::auth
