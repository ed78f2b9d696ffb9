#include "server/auth/admission.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "protocol/frame.h"
#include "server/namespaces.h"

namespace logkv::server::auth {

// The Service asks with core's bits; the ACLs hold control's: the same.
static_assert(kAccessRead == control::kPermRead && kAccessWrite == control::kPermWrite &&
              kAccessDelete == control::kPermDelete && kAccessCreate == control::kPermCreate);

Admission::Admission(AuthStore* store, RateLimiter* limiter, ServerMetrics* metrics)
    : store_(store), limiter_(limiter), metrics_(metrics) {}

absl::StatusOr<Session> Admission::Authenticate(absl::string_view api_key) const {
  absl::StatusOr<Principal> principal = store_->AuthenticateApiKey(api_key);
  if (!principal.ok()) {
    metrics_->auth_failures()->Inc();
    return principal.status();
  }
  Session session;
  session.context.key_prefix = TenantPrefix(principal->user_id);
  session.context.may_read = principal->can_read;
  session.context.may_write = principal->can_write;
  session.context.access = this;
  session.context.user_id = principal->user_id;
  session.user_id = principal->user_id;
  session.credential_id = principal->api_key_id;
  session.expires_at_ms = principal->expires_at_ms;
  session.generation = principal->generation;
  return session;
}

absl::Status Admission::Recheck(Session* session) const {
  Principal principal;
  principal.user_id = session->user_id;
  principal.api_key_id = session->credential_id;
  principal.expires_at_ms = session->expires_at_ms;
  principal.generation = session->generation;
  if (absl::Status status = store_->RecheckApiKey(&principal); !status.ok()) {
    metrics_->auth_failures()->Inc();
    return status;
  }
  session->generation = principal.generation;
  return absl::OkStatus();
}

uint32_t Admission::Allowed(uint64_t user_id, absl::string_view engine_key) const {
  const control::AclState* access = access_.load(std::memory_order_acquire);
  if (access != nullptr) return access->Allowed(user_id, engine_key);
  return TenantOf(engine_key) == user_id && user_id != 0 ? control::kPermAll : 0;
}

bool Admission::Uniform(uint64_t user_id, absl::string_view engine_prefix, uint32_t* bits) const {
  const control::AclState* access = access_.load(std::memory_order_acquire);
  if (access != nullptr) return access->Uniform(user_id, engine_prefix, bits);
  *bits = Allowed(user_id, engine_prefix);
  return true;
}

bool Admission::IsAdmin(uint64_t user_id) const {
  const control::AclState* access = access_.load(std::memory_order_acquire);
  if (access != nullptr) return access->IsAdmin(user_id);
  return user_id == kAdministratorUserId;
}

absl::Status Admission::Address(RequestContext* context, uint64_t namespace_user) {
  if (namespace_user == 0 || namespace_user == context->user_id) {
    if (context->user_id != 0) SetTenantPrefix(context->user_id, &context->key_prefix);
    return absl::OkStatus();
  }
  if (context->access == nullptr) {
    return absl::InvalidArgumentError("another user's namespace needs accounts on (--auth=on)");
  }
  SetTenantPrefix(namespace_user, &context->key_prefix);
  return absl::OkStatus();
}

absl::Status Admission::Admit(uint64_t user_id) const {
  if (limiter_ == nullptr) return absl::OkStatus();
  int64_t retry_after_ms = 0;
  if (limiter_->Allow(user_id, absl::ToUnixMillis(absl::Now()), &retry_after_ms)) {
    return absl::OkStatus();
  }
  metrics_->rate_limited()->Inc();
  return protocol::WithRetryAfter(
      absl::ResourceExhaustedError(absl::StrCat(
          "rate limit exceeded (", limiter_->requests_per_minute(),
          " requests a minute per user, --rate-limit); retry after ", retry_after_ms, " ms")),
      retry_after_ms);
}

}  // namespace logkv::server::auth
