// Throttling of password guessing on POST /login. Failed logins are counted
// per account (the email, case-insensitively) and per client address; after
// a few free failures, each further one doubles the time before the next
// attempt for that account or address is heard (429 with Retry-After until
// then), up to a cap. Refused attempts are answered before any password is
// hashed, so guessing costs the server nothing either. A successful login
// forgets its account's failures, not its address's (an attacker with an
// account of their own must not be able to reset the address count).
// Failures are forgotten after a quiet period.
//
// Memory is bounded like RateLimiter's: past max_tracked entries, forgotten
// ones are dropped first, then the longest quiet.
//
// Thread-safety: every method may be called from any thread at once. Time
// comes from the caller.
#ifndef LOGKV_SERVER_AUTH_LOGIN_THROTTLE_H_
#define LOGKV_SERVER_AUTH_LOGIN_THROTTLE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace logkv::server::auth {

struct LoginThrottleConfig {
  int64_t free_failures_per_account = 5;
  int64_t free_failures_per_address = 20;
  int64_t first_delay_ms = 1000;      // after the free failures; doubled by each further one
  int64_t max_delay_ms = 300'000;     // the cap of the doubling
  int64_t forget_after_ms = 900'000;  // failures this old are forgotten
  size_t max_tracked = 100'000;       // accounts and addresses together (>= 4 is used)
};

class LoginThrottle {
 public:
  explicit LoginThrottle(const LoginThrottleConfig& config = {});
  LoginThrottle(const LoginThrottle&) = delete;
  LoginThrottle& operator=(const LoginThrottle&) = delete;

  // Whether a login for account from address may be tried at now_ms. When
  // not, *retry_after_ms (if not null) is how long until it may, at least 1;
  // when yes, 0. An empty address is not counted.
  bool Allow(absl::string_view account, absl::string_view address, int64_t now_ms,
             int64_t* retry_after_ms) ABSL_LOCKS_EXCLUDED(mu_);
  void RecordFailure(absl::string_view account, absl::string_view address, int64_t now_ms)
      ABSL_LOCKS_EXCLUDED(mu_);
  void RecordSuccess(absl::string_view account) ABSL_LOCKS_EXCLUDED(mu_);

  // Accounts and addresses tracked now (for tests).
  size_t Tracked() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    int64_t failures = 0;
    int64_t last_failure_ms = 0;
  };
  // When the next attempt for entry may come (<= now: at once).
  int64_t AllowedFromMs(const Entry& entry, int64_t free_failures, int64_t now_ms) const;
  void EvictLocked(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const LoginThrottleConfig config_;

  mutable absl::Mutex mu_;
  // "a" + lowercased account, "i" + address.
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_LOGIN_THROTTLE_H_
