// Who is asking, as every protocol sees it once admission is done: the
// binary protocol after a Hello, HTTP per request (server/auth/admission.h
// builds both from an API key).
#ifndef LOGKV_SERVER_CORE_REQUEST_CONTEXT_H_
#define LOGKV_SERVER_CORE_REQUEST_CONTEXT_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace logkv::server {

// The permissions an ACL grants on a key (docs/security.md), as bits.
inline constexpr uint32_t kAccessRead = 1;
inline constexpr uint32_t kAccessWrite = 2;
inline constexpr uint32_t kAccessDelete = 4;
inline constexpr uint32_t kAccessCreate = 8;

// Who may do what with which key: the access control lists, asked by the
// Service for every key a request touches (auth::Admission implements it
// over the control plane's ACLs). Keys are engine keys, the namespace
// included. Every method may be called from any thread, and is cheap: no
// round trip, no scan over the entries.
class AccessPolicy {
 public:
  virtual ~AccessPolicy() = default;
  // The kAccess* bits user_id holds on engine_key.
  virtual uint32_t Allowed(uint64_t user_id, absl::string_view engine_key) const = 0;
  // For a scan or watch over engine_prefix: true when every key under it is
  // decided as the prefix itself (its bits in *bits); false when each key
  // must be asked about.
  virtual bool Uniform(uint64_t user_id, absl::string_view engine_prefix,
                       uint32_t* bits) const = 0;
};

// As far as the data logic cares. Client keys are mapped into key_prefix's
// namespace (a tenant's, when auth is on) and may not begin with the
// reserved byte; scans and answers see the client's own keys only.
struct RequestContext {
  std::string key_prefix;  // empty: the global namespace
  bool may_read = true;
  bool may_write = true;
  bool local_only = false;  // read this node's engine even in a cluster
  // The ACLs to obey and whose request it is (auth on); null: none, the
  // namespace alone decides (auth off, or the server's own requests).
  // key_prefix may be another user's namespace: the ACLs then say what
  // user_id may do there.
  const AccessPolicy* access = nullptr;
  uint64_t user_id = 0;
};

// A connection's credentials once an API key was accepted.
struct Session {
  RequestContext context;  // whose keys, which scopes
  uint64_t user_id = 0;    // whose limits apply
  // The authenticator's own, opaque to the server: what a recheck needs to
  // tell cheaply whether the credentials still hold (auth::Principal's key
  // id, expiry and generation).
  uint64_t credential_id = 0;
  int64_t expires_at_ms = 0;
  uint64_t generation = 0;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CORE_REQUEST_CONTEXT_H_
