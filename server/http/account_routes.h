// The account routes of REST.md section 1 ("Accounts"): POST /signup,
// POST /login, POST /refresh, POST /apikeys, GET /apikeys and
// DELETE /apikeys/{id}, adapting HTTP to auth::AuthStore.
//
// Anything that hashes a password or writes the engine (every route but
// GET /apikeys) runs on the worker pool, so a network loop never waits for
// argon2id or an fsync; when the pool's queue is full the answer is 503 with
// Retry-After. Bearer tokens are checked on the loop before any work is queued.
#ifndef LOGKV_SERVER_HTTP_ACCOUNT_ROUTES_H_
#define LOGKV_SERVER_HTTP_ACCOUNT_ROUTES_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "server/auth/auth_store.h"
#include "server/auth/login_throttle.h"
#include "server/auth/worker_pool.h"
#include "server/http/http_message.h"
#include "server/http/json_body.h"
#include "server/http/route_support.h"
#include "server/http/router.h"

namespace logkv::server::http {

struct AccountRoutesOptions {
  // Failed logins per account and client address (429 with Retry-After
  // while one is held back); null: not throttled. Must outlive the router.
  auth::LoginThrottle* login_throttle = nullptr;
  // Called for every credential refused: a wrong email or password, a bad
  // or expired bearer or refresh token. Any thread.
  std::function<void()> on_auth_failure;
  // Called for every login refused by the throttle. Any thread.
  std::function<void()> on_throttled;
  // Milliseconds for the throttle; default the wall clock.
  std::function<int64_t()> now_ms;
  // Bodies nested deeper are refused with 400 (json_body.h).
  size_t max_json_depth = kDefaultMaxJsonDepth;
  // The id of the node the routes run on, for the audit log; unset: none.
  std::function<std::string()> node_id;
  // A per-user rate limit (ResourceExhausted with the wait attached), asked
  // before a refresh and before a key is created, each a command of the
  // control plane; unset: none. Revocations are never held back.
  std::function<absl::Status(uint64_t user_id)> admit;
  // Sign-ups per client address (ResourceExhausted with the wait attached),
  // asked before the password is hashed; unset: none.
  std::function<absl::Status(absl::string_view address)> admit_signup;
};

// store and pool must outlive router (the handlers keep the pointers).
void AddAccountRoutes(Router* router, auth::AuthStore* store, auth::WorkerPool* pool,
                      AccountRoutesOptions options = {});

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_ACCOUNT_ROUTES_H_
