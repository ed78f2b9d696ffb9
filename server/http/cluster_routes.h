// The node's own routes, beside the data dialects (data_routes.h): health
// (/health, /internal/ping), statistics (/metrics, /cache/stats,
// /db/stats), the membership (/nodes, /servers, /members/, POST /join,
// /members/join, /members/leave) and, in test builds, /internal/fault.
//
// Thread-safety: handlers run on every loop at once; ClusterRoutes holds
// constant state, thread-safe dependencies and the hooks below (guarded).
#ifndef LOGKV_SERVER_HTTP_CLUSTER_ROUTES_H_
#define LOGKV_SERVER_HTTP_CLUSTER_ROUTES_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/http/http_fetch.h"
#include "server/http/json_body.h"
#include "server/http/route_support.h"
#include "server/http/router.h"
#include "server/metrics.h"
#include "server/service.h"

namespace logkv::server::cluster {
class ClusterNode;
}  // namespace logkv::server::cluster

namespace logkv::server::http {

struct ClusterRoutesConfig {
  std::string node_id;          // until the cluster member runs (then its id)
  std::string mode = "normal";  // normal | read-only, as /health says it
  // --cluster-secret: X-Cluster-Secret with it authorizes the routes that
  // change membership ("" = that header authorizes nothing).
  std::string cluster_secret;
  // With auth on, the credential for node-wide statistics (/metrics,
  // /db/stats, /cache/stats): "Authorization: Bearer <operator_secret>".
  // logkvd passes its --cluster-secret. Empty: only tenants' own figures.
  std::string operator_secret;
  // Deepest nesting of a JSON body (POST /members/join, /internal/fault).
  size_t max_json_depth = kDefaultMaxJsonDepth;
  // POST /join naming a member by an https:// URL, taken when join_https
  // (logkvd: with --tls-cert; a node without TLS could not reach the
  // members of a cluster that serves it anyway): the member's certificate
  // must chain to join_tls_ca_file (empty: the system's CAs) and name the
  // URL's host; join_tls_cert_file and join_tls_key_file are shown when it
  // asks for a client certificate. logkvd passes its peer-link files
  // (--peer-tls-ca else --tls-ca, --peer-tls-cert else --tls-cert).
  bool join_https = false;
  std::string join_tls_ca_file;
  std::string join_tls_cert_file;
  std::string join_tls_key_file;
};

// Not owned; each must outlive the router's use of the routes.
struct ClusterRoutesDependencies {
  Service* service = nullptr;  // required: the engine's health and statistics
  // Who a caller is (tenants' own statistics; the administrator may change
  // the membership). auth.metrics is required: failures and /metrics.
  ApiKeyAuth auth;
  // The membership behind /nodes, /servers, /members/, /join, /health's
  // member_count; null: a single node on its own (and /join answers 501).
  cluster::ClusterNode* cluster = nullptr;
  const NodeUrl* node_url = nullptr;  // required
};

class ClusterRoutes {
 public:
  ClusterRoutes(const ClusterRoutesConfig& config, const ClusterRoutesDependencies& dependencies);
  ClusterRoutes(const ClusterRoutes&) = delete;
  ClusterRoutes& operator=(const ClusterRoutes&) = delete;

  void AddTo(Router* router);
  // GET /console/cluster, the console's cluster page's figures of every member.
  void AddConsoleRoutesTo(Router* router);

  // Whether the caller may change the membership (POST /join, /members/join,
  // /members/leave): X-Cluster-Secret equal to --cluster-secret, or, with
  // auth on, the administrator's API key (the first account, user id 1).
  // With auth off and no cluster secret, every caller may (the node then
  // listens on loopback only, or was told --insecure). Else the refusal
  // (401 without credentials, 403 with credentials that are not enough).
  // The refusals name what was asked: `asked` ("changing the membership")
  // and, for a caller who is not the administrator, `may` ("change the
  // membership"). The backup routes use the same check.
  bool AuthorizeAdmin(const HttpRequest& request, HttpResponse* refusal,
                      absl::string_view asked = "changing the membership",
                      absl::string_view may = "change the membership");

  // Before a graceful leave (POST /members/leave): hands this node's records
  // to their next owners off the loop, then calls then. Null: leave at once.
  // then gets the hand-off's outcome: the node leaves only when it is OK.
  using HandOffFunction = std::function<void(std::function<void(absl::Status)> then)>;
  void SetHandOff(HandOffFunction hand_off) ABSL_LOCKS_EXCLUDED(hooks_mu_);
  // POST /members/remove: removes another member that is still joining and
  // is down (it died before it was filled), off the loop; then gets the
  // outcome. Null: 501.
  using RemoveMemberFunction =
      std::function<void(std::string node_id, std::function<void(absl::Status)> then)>;
  void SetRemoveMember(RemoveMemberFunction remove) ABSL_LOCKS_EXCLUDED(hooks_mu_);
  // Runs blocking work off the network loops (on a thread the owner joins
  // at shutdown). Null: such work is refused (POST /join naming an HTTP URL
  // answers 503).
  using BackgroundFunction = std::function<void(std::function<void()> work)>;
  void SetBackground(BackgroundFunction background) ABSL_LOCKS_EXCLUDED(hooks_mu_);
  // Whether the node is still filling up after joining (anti-entropy not
  // caught up): /health says mode "syncing" then. Null: never.
  void SetSyncing(std::function<bool()> syncing) ABSL_LOCKS_EXCLUDED(hooks_mu_);
  // The control plane's state as JSON: {"raft_state", "term", "commit_index",
  // "applied_index", "epoch", "leader", "voters", "members": {node id:
  // {"role", "state", "raft_id"}}}; shown by /health and /members/.
  void SetControlStatus(std::function<nlohmann::json()> status) ABSL_LOCKS_EXCLUDED(hooks_mu_);

 private:
  // Each takes the request and its Responder; see cluster_routes.cc.
  void Health(HttpRequest& request, Responder responder);
  void MetricsRoute(HttpRequest& request, Responder responder);
  // GET /metrics' JSON: this node's figures.
  nlohmann::json NodeFigures() const;
  void ClusterSummary(HttpRequest& request, Responder responder);
  // Answers the ReadFigures peer operation (NodeFigures) for the cluster
  // page of another member; no-op without a cluster.
  void AddPeerHandlers();
  // A request to another member, over HTTPS checked with the peer links'
  // files (join_tls_*) when https.
  FetchRequest MemberFetch(bool https) const;
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
  void Ping(HttpRequest& request, Responder responder);
  // POST /join (body host:port or a member's URL) and POST /members/join
  // ({"address"}): Join with json_body false and true.
  void JoinByText(HttpRequest& request, Responder responder);
  void JoinByJson(HttpRequest& request, Responder responder);
  void Join(HttpRequest& request, Responder responder, bool json_body);
  // Joins through a member's binary-protocol address; answers responder.
  void JoinThrough(const std::string& address, std::shared_ptr<Responder> responder);
  void Leave(HttpRequest& request, Responder responder);
  void RemoveMember(HttpRequest& request, Responder responder);
  void Fault(HttpRequest& request, Responder responder);

  // This node's id: the cluster member's once it runs, else config.node_id.
  std::string NodeId() const;

  const ClusterRoutesConfig config_;
  const ClusterRoutesDependencies deps_;
  const int64_t joined_unix_ms_;

  mutable absl::Mutex hooks_mu_;
  HandOffFunction hand_off_ ABSL_GUARDED_BY(hooks_mu_);
  RemoveMemberFunction remove_member_ ABSL_GUARDED_BY(hooks_mu_);
  BackgroundFunction background_ ABSL_GUARDED_BY(hooks_mu_);
  std::function<bool()> syncing_ ABSL_GUARDED_BY(hooks_mu_);
  std::function<nlohmann::json()> control_status_ ABSL_GUARDED_BY(hooks_mu_);
  nlohmann::json ControlStatus() ABSL_LOCKS_EXCLUDED(hooks_mu_);
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_CLUSTER_ROUTES_H_
