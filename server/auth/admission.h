// The one admission path for every protocol. An API key becomes a Session
// (the user's namespace and the key's scopes); a session's credentials are
// rechecked before each request (a key revoked since is refused at once);
// and every request takes a token from its user's rate-limit bucket. The
// binary protocol asks through ServerConfig's authenticate, check_session
// and admit_request; the HTTP routes ask per request. Both get the same
// answers, counted in the same metrics.
//
// Thread-safety: every method may be called from any thread at once.
#ifndef LOGKV_SERVER_AUTH_ADMISSION_H_
#define LOGKV_SERVER_AUTH_ADMISSION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/auth_store.h"
#include "server/auth/rate_limiter.h"
#include "server/core/request_context.h"
#include "server/metrics.h"

namespace logkv::server::auth {

class Admission {
 public:
  // store, limiter and metrics must outlive the Admission. limiter null: no
  // rate limit.
  Admission(AuthStore* store, RateLimiter* limiter, ServerMetrics* metrics);

  // The session of an API key: Unauthenticated for an unknown, revoked or
  // expired key (counted as an authentication failure).
  absl::StatusOr<Session> Authenticate(absl::string_view api_key) const;
  // Whether a session's credentials still hold; updates its generation.
  absl::Status Recheck(Session* session) const;
  // One request of user_id: ResourceExhausted past the user's rate, with the
  // wait attached (protocol::RetryAfterMs).
  absl::Status Admit(uint64_t user_id) const;

 private:
  AuthStore* const store_;
  RateLimiter* const limiter_;
  ServerMetrics* const metrics_;
};

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_ADMISSION_H_
