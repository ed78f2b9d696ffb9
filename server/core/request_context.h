// Who is asking, as every protocol sees it once admission is done: the
// binary protocol after a Hello, HTTP per request (server/auth/admission.h
// builds both from an API key).
#ifndef LOGKV_SERVER_CORE_REQUEST_CONTEXT_H_
#define LOGKV_SERVER_CORE_REQUEST_CONTEXT_H_

#include <cstdint>
#include <string>

namespace logkv::server {

// As far as the data logic cares. Client keys are mapped into key_prefix's
// namespace (a tenant's, when auth is on) and may not begin with the
// reserved byte; scans and answers see the client's own keys only.
struct RequestContext {
  std::string key_prefix;  // empty: the global namespace
  bool may_read = true;
  bool may_write = true;
  bool local_only = false;  // read this node's engine even in a cluster
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
