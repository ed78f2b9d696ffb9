// The data routes of every REST dialect (REST.md sections 1-5; docs/http.md,
// "Routes"). Each dialect is a table in data_routes.cc, one entry per route:
// its method and pattern, the operation, where the key comes from, how the
// body decodes and how the answer encodes. One handler serves every entry:
// it authorizes the caller, decodes the request, runs the binary protocol's
// operation through the Service (the one place the data logic lives) and
// encodes the answer as the dialect does. The node's own routes (/health,
// statistics, membership) are cluster_routes.h.
//
// Thread-safety: handlers run on every loop at once; DataRoutes holds only
// constant state and thread-safe dependencies.
#ifndef LOGKV_SERVER_HTTP_DATA_ROUTES_H_
#define LOGKV_SERVER_HTTP_DATA_ROUTES_H_

#include <cstddef>
#include <cstdint>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

#include "server/http/json_body.h"
#include "server/http/route_support.h"
#include "server/http/router.h"
#include "server/service.h"

namespace logkv::server::cluster {
class ClusterNode;
}  // namespace logkv::server::cluster

namespace logkv::server::http {

struct DataRoutesConfig {
  size_t max_document_bytes = 1u << 20;  // seed 004's JSON documents
  // Deepest nesting of any JSON body, and of a stored value seed 003's
  // routes read back as JSON (json_body.h).
  size_t max_json_depth = kDefaultMaxJsonDepth;
  // GET /v1/watch streams open at once, on this node and per user (0: no
  // limit); one more is 429.
  size_t max_watch_streams = 256;
  size_t max_watch_streams_per_user = 8;
};

// The count of open watch streams, per user and in all (user 0, everyone
// when auth is off, has only the limit in all). Any thread.
class WatchStreams {
 public:
  WatchStreams(size_t max_total, size_t max_per_user)
      : max_total_(max_total), max_per_user_(max_per_user) {}
  // false: a limit is reached.
  bool Acquire(uint64_t user_id) ABSL_LOCKS_EXCLUDED(mu_);
  void Release(uint64_t user_id) ABSL_LOCKS_EXCLUDED(mu_);
  size_t open() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const size_t max_total_;
  const size_t max_per_user_;
  mutable absl::Mutex mu_;
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, size_t> by_user_ ABSL_GUARDED_BY(mu_);
};

// Not owned; each must outlive the router's use of the routes.
struct DataRoutesDependencies {
  Service* service = nullptr;  // required
  ApiKeyAuth auth;             // who the caller is; auth.metrics is required
  // The members behind a write's primary_node (their HTTP addresses); null:
  // a single node.
  cluster::ClusterNode* cluster = nullptr;
  // The key's owners behind the writes' primary_node and replicas; null: a
  // single node (this node, no replicas).
  Coordinator* coordinator = nullptr;
  const NodeUrl* node_url = nullptr;  // required: a single node's primary_node
  // Wakes the loops' event streams (Server::NotifyEvents), from any thread:
  // a watch stream's events of other members arrived. Null: watch streams
  // see this node's engine only.
  std::function<void()> wake_streams;
};

class DataRoutes {
 public:
  DataRoutes(const DataRoutesConfig& config, const DataRoutesDependencies& dependencies);
  DataRoutes(const DataRoutes&) = delete;
  DataRoutes& operator=(const DataRoutes&) = delete;

  // Adds every dialect's routes, the busiest first (the router searches its
  // table in order).
  void AddTo(Router* router);
  // GET /v1/kv?prefix= (a page of keys by prefix) and GET /v1/watch (changes
  // under a prefix as Server-Sent Events): the console's data browser's.
  void AddBrowseRoutesTo(Router* router);

  const WatchStreams& watch_streams() const { return streams_; }

 private:
  void ServeWatch(HttpRequest& request, Responder responder);

  const DataRoutesConfig config_;
  const DataRoutesDependencies deps_;
  WatchStreams streams_;
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_DATA_ROUTES_H_
