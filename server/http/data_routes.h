// The data routes of every REST dialect (REST.md sections 1-5) and the node
// routes (/health, /metrics, /store, ...). Each handler turns its request
// into the binary protocol's operation and runs it through the Service, the
// one place the data logic lives; only the shapes of requests and answers
// differ between dialects.
//
// Thread-safety: handlers run on every loop at once; DataRoutes holds only
// constant state and thread-safe dependencies.
#ifndef LOGKV_SERVER_HTTP_DATA_ROUTES_H_
#define LOGKV_SERVER_HTTP_DATA_ROUTES_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/auth_store.h"
#include "server/auth/rate_limiter.h"
#include "server/http/json_body.h"
#include "server/http/router.h"
#include "server/metrics.h"
#include "server/service.h"

namespace logkv::server::cluster {
class ClusterNode;
class Coordinator;
}  // namespace logkv::server::cluster

namespace logkv::server::http {

struct DataRoutesConfig {
  std::string node_id;
  std::string node_url;  // "http://host:port" of this node's first HTTP address
  std::string mode = "normal";  // normal | read-only
  size_t max_document_bytes = 1u << 20;  // seed 004's JSON documents
  // --cluster-secret: X-Cluster-Secret with it authorizes the routes that
  // change membership ("" = that header authorizes nothing).
  std::string cluster_secret;
  // With auth on, the credential for node-wide statistics (/metrics,
  // /db/stats, /cache/stats): "Authorization: Bearer <operator_secret>".
  // logkvd passes its --cluster-secret. Empty: only tenants' own figures.
  std::string operator_secret;
  // Deepest nesting of any JSON body, and of a stored value seed 003's
  // routes read back as JSON (json_body.h).
  size_t max_json_depth = kDefaultMaxJsonDepth;
};

struct DataRoutesDependencies {
  Service* service = nullptr;               // required
  auth::AuthStore* auth_store = nullptr;    // null: auth is off
  auth::RateLimiter* rate_limiter = nullptr;  // null: no limit
  ServerMetrics* metrics = nullptr;         // required
  // The membership behind /nodes, /servers, /members/, /join, /health's
  // member_count; null: a single node on its own (and /join answers 501).
  cluster::ClusterNode* cluster = nullptr;
  // The key's owners behind the writes' primary_node and replicas; null: a
  // single node (this node, no replicas).
  Coordinator* coordinator = nullptr;
};

class DataRoutes {
 public:
  // Every dependency must outlive the router's use of the routes.
  DataRoutes(const DataRoutesConfig& config, const DataRoutesDependencies& dependencies);
  DataRoutes(const DataRoutes&) = delete;
  DataRoutes& operator=(const DataRoutes&) = delete;

  void AddTo(Router* router);

  // The caller's namespace and scopes (auth on: from X-API-Key), or the
  // answer refusing the request (401, 429). Exposed for tests.
  absl::StatusOr<RequestContext> Authorize(const HttpRequest& request, HttpResponse* refusal);
  // Whether the caller may change the membership (POST /join, /members/join,
  // /members/leave): X-Cluster-Secret equal to --cluster-secret, or, with
  // auth on, the administrator's API key (the first account, user id 1).
  // With auth off and no cluster secret, every caller may (the node then
  // listens on loopback only, or was told --insecure). Else the refusal
  // (401 without credentials, 403 with credentials that are not enough).
  bool AuthorizeAdmin(const HttpRequest& request, HttpResponse* refusal);

  // Replaces config.node_url once the first HTTP address's port is known
  // (configured as 0, it is bound by the server). Any thread.
  void SetNodeUrl(std::string node_url) ABSL_LOCKS_EXCLUDED(node_url_mu_);
  // Before a graceful leave (POST /members/leave): hands this node's records
  // to their next owners off the loop, then calls then. Null: leave at once.
  // then gets the hand-off's outcome: the node leaves only when it is OK.
  using HandOffFunction = std::function<void(std::function<void(absl::Status)> then)>;
  void SetHandOff(HandOffFunction hand_off) ABSL_LOCKS_EXCLUDED(hand_off_mu_);
  // Runs blocking work off the network loops (on a thread the owner joins
  // at shutdown). Null: such work is refused (POST /join naming an HTTP URL
  // answers 503).
  using BackgroundFunction = std::function<void(std::function<void()> work)>;
  void SetBackground(BackgroundFunction background) ABSL_LOCKS_EXCLUDED(hand_off_mu_);
  // Whether the node is still filling up after joining (anti-entropy not
  // caught up): /health says mode "syncing" then. Null: never.
  void SetSyncing(std::function<bool()> syncing) ABSL_LOCKS_EXCLUDED(hand_off_mu_);

 private:
  // Each takes the request and its Responder; see data_routes.cc.
  void PutKv(HttpRequest& request, Responder responder);
  void GetKv(HttpRequest& request, Responder responder, bool local_only);
  void DeleteKv(HttpRequest& request, Responder responder);
  void PutQuery(HttpRequest& request, Responder responder);
  void GetQuery(HttpRequest& request, Responder responder);
  void DeleteQuery(HttpRequest& request, Responder responder);
  void PostBase64(HttpRequest& request, Responder responder);
  void GetBase64(HttpRequest& request, Responder responder);
  void PutVersioned(HttpRequest& request, Responder responder);
  void GetVersioned(HttpRequest& request, Responder responder);
  void PutDocument(HttpRequest& request, Responder responder);
  void GetDocument(HttpRequest& request, Responder responder);
  void DeleteDocument(HttpRequest& request, Responder responder);
  void Health(HttpRequest& request, Responder responder);
  void MetricsRoute(HttpRequest& request, Responder responder);
  // Who may read node statistics, and how much: with auth off everyone
  // the node's; with auth on the operator (the operator secret) the node's,
  // a tenant (X-API-Key) its own, anyone else 401.
  struct StatsCaller {
    bool node_wide = true;
    std::string key_prefix;  // the tenant's, when !node_wide
  };
  absl::StatusOr<StatsCaller> AuthorizeStats(const HttpRequest& request, HttpResponse* refusal);
  // The statistics routes' first steps: ?server= naming another member, then
  // AuthorizeStats. nullopt: responder was answered.
  std::optional<StatsCaller> StatsRouteCaller(const HttpRequest& request, Responder& responder);
  // Seed 003's ?server=: nullopt when it names this node (or is absent),
  // else the answer: a redirect to the member it names, or 404.
  std::optional<HttpResponse> OtherServer(const HttpRequest& request) const;
  void CacheStats(HttpRequest& request, Responder responder);
  void DbStats(HttpRequest& request, Responder responder);
  void Nodes(HttpRequest& request, Responder responder);
  void Members(HttpRequest& request, Responder responder);
  void Servers(HttpRequest& request, Responder responder);
  // POST /join (body host:port) and POST /members/join ({"address"}).
  void Join(HttpRequest& request, Responder responder, bool json_body);
  // Joins through a member's binary-protocol address; answers responder.
  void JoinThrough(const std::string& address, std::shared_ptr<Responder> responder);
  void Leave(HttpRequest& request, Responder responder);
  void Fault(HttpRequest& request, Responder responder);

  const DataRoutesConfig config_;
  const DataRoutesDependencies deps_;
  const int64_t joined_unix_ms_;

  std::string NodeUrl() const ABSL_LOCKS_EXCLUDED(node_url_mu_);
  // This node's id: the cluster member's once it runs, else config.node_id.
  std::string NodeId() const;
  mutable absl::Mutex hand_off_mu_;
  HandOffFunction hand_off_ ABSL_GUARDED_BY(hand_off_mu_);
  BackgroundFunction background_ ABSL_GUARDED_BY(hand_off_mu_);
  std::function<bool()> syncing_ ABSL_GUARDED_BY(hand_off_mu_);
  mutable absl::Mutex node_url_mu_;
  std::string node_url_ ABSL_GUARDED_BY(node_url_mu_);
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_DATA_ROUTES_H_
