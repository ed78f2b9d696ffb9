// The one admission path for every protocol. An API key becomes a Session
// (the user's namespace and the key's scopes); a session's credentials are
// rechecked before each request (a key revoked since is refused at once);
// and every request takes a token from its user's rate-limit bucket. The
// binary protocol asks through ServerConfig's authenticate, check_session
// and admit_request; the HTTP routes ask per request. Both get the same
// answers, counted in the same metrics.
//
// It is also the AccessPolicy every request's context carries: what a user
// may do with a key is the control plane's ACLs' answer (docs/security.md),
// read in place, no round trip.
//
// Thread-safety: every method may be called from any thread at once.
#ifndef LOGKV_SERVER_AUTH_ADMISSION_H_
#define LOGKV_SERVER_AUTH_ADMISSION_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/auth_store.h"
#include "server/auth/rate_limiter.h"
#include "server/control/acl_state.h"
#include "server/core/request_context.h"
#include "server/metrics.h"

namespace logkv::server::auth {

class Admission : public AccessPolicy {
 public:
  // store, limiter and metrics must outlive the Admission. limiter null: no
  // rate limit.
  Admission(AuthStore* store, RateLimiter* limiter, ServerMetrics* metrics);

  // The ACLs and administrators (the control plane's, applied on this
  // node); it must outlive the Admission. Until set (and with none): each
  // user's namespace is its own alone and the first account is the only
  // administrator.
  void UseAccess(const control::AclState* access) {
    access_.store(access, std::memory_order_release);
  }

  // AccessPolicy: the ACLs' answers (control::AclState).
  uint32_t Allowed(uint64_t user_id, absl::string_view engine_key) const override;
  bool Uniform(uint64_t user_id, absl::string_view engine_prefix, uint32_t* bits) const override;
  // Whether user_id is an administrator (the first account, or one made so).
  bool IsAdmin(uint64_t user_id) const;
  // *context addressed to namespace_user's namespace (0: its own user's):
  // what it may do there is the ACLs' answer. InvalidArgument when
  // namespace_user is not a possible user id.
  static absl::Status Address(RequestContext* context, uint64_t namespace_user);

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
  std::atomic<const control::AclState*> access_{nullptr};
};

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_ADMISSION_H_
