// The routes of users, groups and access control lists (docs/security.md),
// adapting HTTP to auth::AuthStore and the control plane's ACLs:
//
//   GET/POST /api/users, GET/PUT/DELETE /api/users/{id}          administrators
//   GET/POST /api/groups, GET/PUT/DELETE /api/groups/{id},        administrators
//   POST /api/groups/{id}/members, DELETE /api/groups/{id}/members/{user}
//   GET/PUT/DELETE /api/acl?prefix=&namespace=                     the namespace's
//                                                                  user, administrators
//
// Without credentials 401, with a key that may not 403. Reads look at the
// state applied on this node; changes are proposed to the control plane and
// answered once this node has applied them, on the worker pool (they wait
// for a commit), never on a network loop.
#ifndef LOGKV_SERVER_HTTP_ACCESS_ROUTES_H_
#define LOGKV_SERVER_HTTP_ACCESS_ROUTES_H_

#include <cstddef>
#include <functional>
#include <string>

#include "server/auth/auth_store.h"
#include "server/auth/worker_pool.h"
#include "server/http/http_message.h"
#include "server/http/json_body.h"
#include "server/http/route_support.h"
#include "server/http/router.h"

namespace logkv::server::http {

struct AccessRoutesDependencies {
  auth::AuthStore* store = nullptr;  // with UseAccess done; must outlive the router
  auth::WorkerPool* pool = nullptr;  // must outlive the router
  ApiKeyAuth auth;                   // on
  // Whether the caller is an administrator (the cluster secret counts as
  // one); when not, fills the refusal (401 or 403).
  std::function<bool(const HttpRequest& request, HttpResponse* refusal)> authorize_admin;
  size_t max_json_depth = kDefaultMaxJsonDepth;
  // The id of the node the routes run on, for the audit log; unset: none.
  std::function<std::string()> node_id;
};

void AddAccessRoutes(Router* router, AccessRoutesDependencies deps);

// The routes' answer with accounts off: 404 naming --auth=on.
void AddAccessRoutesOff(Router* router);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_ACCESS_ROUTES_H_
