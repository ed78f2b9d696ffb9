// One logkv node, whole: the composition root that builds the engine, the
// service, accounts (with --auth=on), the cluster member, hinted handoff,
// the replica coordinator, the HTTP routes, the network server,
// anti-entropy and the purger from one NodeOptions, starts them in that
// order and stops them in the reverse one.
//
// logkvd is flag parsing, a Node and a sigwait (server/main.cc); tests run
// whole nodes, and clusters of them, in one process with the same wiring.
// A Node touches no process-wide state: no signals, no flags, no log level.
//
// Thread-safety: Start, Stop and the destructor are called by the owner,
// one at a time. The accessors may be called from any thread while the node
// runs.
#ifndef LOGKV_SERVER_NODE_H_
#define LOGKV_SERVER_NODE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/http/json_body.h"
#include "server/cluster/ring.h"
#include "server/consensus_node.h"
#include "server/metrics.h"
#include "server/net/tls.h"
#include "server/service.h"

namespace logkv::server {

class PeriodicWorker;
class Server;
namespace auth {
class AuthStore;
class Admission;
class RateLimiter;
class WorkerPool;
class LoginThrottle;
}  // namespace auth
namespace control {
class ControlPlane;
struct ClusterConfig;
}  // namespace control
namespace cluster {
class AntiEntropy;
class ClusterNode;
class HintedHandoff;
class Purger;
class ReplicaCoordinator;
}  // namespace cluster
namespace backup {
class BackupManager;
}  // namespace backup
namespace http {
class BackupRoutes;
class AuditRoutes;
class ClusterRoutes;
class DataRoutes;
class NodeUrl;
class Router;
}  // namespace http

enum class AuthMode { kOff, kOn };

// An address as logkvd binds it.
struct HostPort {
  std::string host;
  int port = 0;  // 0 = any free port

  std::string ToString() const;  // "host:port"
};

// "host:port" with port in [0, 65535]; an empty host is 0.0.0.0 and
// "localhost" is 127.0.0.1. InvalidArgument "'text' is not host:port".
absl::StatusOr<HostPort> ParseHostPort(absl::string_view text);
// "off" | "on"; InvalidArgument "--auth must be off or on".
absl::StatusOr<AuthMode> ParseAuthMode(absl::string_view text);
// "never" | "interval" | "always"; InvalidArgument "--fsync must be ...".
absl::StatusOr<engine::FsyncPolicy> ParseFsyncPolicy(absl::string_view text);
const char* FsyncPolicyName(engine::FsyncPolicy policy);
// "none" | "zstd"; InvalidArgument "--compression must be none or zstd".
absl::StatusOr<engine::Compression> ParseCompression(absl::string_view text);
const char* CompressionName(engine::Compression compression);

// Every setting of a node, typed. The defaults are logkvd's flag defaults;
// the comments name the flag (docs/operations.md describes them). Each
// component's own options are derived from these in one place (node.cc),
// so a setting several components share (N, W, R, the frame limit) is
// stated once here.
struct NodeOptions {
  // ---- Storage.
  std::string data_dir = "./data";  // --data_dir, created if missing
  engine::FsyncPolicy fsync = engine::FsyncPolicy::kInterval;  // --fsync
  absl::Duration fsync_interval = absl::Seconds(1);            // --fsync_interval_ms
  int shards = 0;  // --shards, when the directory is created; 0 = one per core
  uint64_t segment_bytes = 64ull << 20;  // --segment_bytes
  uint32_t versions = 3;                 // --versions kept readable
  bool repair = false;                   // --repair: salvage a damaged directory
  // --index_snapshot_min_entries (engine::Options::index_snapshot_min_entries)
  uint64_t index_snapshot_min_entries = 100000;
  double checkpoint_ratio = 0.5;  // --checkpoint_ratio (engine::Options::checkpoint_ratio)
  // --checkpoint_stale_interval_ms (engine::Options::checkpoint_stale_interval_ms)
  absl::Duration checkpoint_stale_interval = absl::Seconds(60);
  // Age before a tombstone may be collected (once every owner holds it).
  absl::Duration tombstone_grace = absl::Hours(24);  // --tombstone_grace_ms
  // Value compression (engine::Options::compression; docs/format.md).
  engine::Compression compression = engine::Compression::kNone;  // --compression
  int compression_level = 3;             // --compression_level, 1..19
  uint32_t compression_min_bytes = 128;  // --compression_min_bytes
  int maintenance_nice = 10;             // --maintenance_nice, 0..19 (engine::Options)

  // ---- Limits.
  uint32_t max_key_bytes = 4096;             // --max_key_bytes (as the client sends it)
  uint32_t max_value_bytes = 16u << 20;      // --max_value_bytes
  uint32_t max_frame_bytes = 64u << 20;      // --max_frame_bytes, clients' and peers'
  uint32_t max_batch_items = 10000;          // --max_batch_items
  uint32_t max_document_bytes = 1u << 20;    // --max_document_bytes
  uint32_t max_json_depth = http::kDefaultMaxJsonDepth;  // --max_json_depth
  uint32_t http_max_header_bytes = 16u << 10;            // --http_max_header_bytes
  uint64_t max_buffered_bytes = 256ull << 20;            // --max_buffered_bytes; 0 = none
  uint64_t max_watches_per_connection = 1024;            // --max_watches_per_connection
  uint64_t max_watches_per_user = 10'000;                // --max_watches_per_user

  // ---- Network.
  HostPort listen{"127.0.0.1", 7070};  // --listen, the binary protocol
  // --http: every address serves the REST API; empty: no HTTP.
  std::vector<HostPort> http = {HostPort{"127.0.0.1", 8080}};
  // --http_allowed_hosts: names HTTP requests may give in Host beside
  // addresses, localhost and the node's own (ServerConfig::http_check_host);
  // empty: every name, except on a node without authenticated clients.
  std::vector<std::string> http_allowed_hosts;
  int threads = 0;  // --threads, I/O loops; 0 = one per core
  absl::Duration http_idle_timeout = absl::Seconds(60);    // --http_idle_timeout_ms
  absl::Duration binary_idle_timeout = absl::Seconds(60);  // --binary_idle_timeout_ms
  // --insecure: non-loopback addresses without TLS or auth (the client
  // ports), and without mutual TLS between nodes (the control plane's port).
  bool insecure = false;
  // --tls-cert, --tls-key, --tls-ca, --tls-client-auth, --tls-min-version:
  // TLS on every listener (docs/tls.md); no certificate: plaintext.
  net::TlsOptions tls;
  // --peer-tls-cert, --peer-tls-key, --peer-tls-ca: node-to-node mutual TLS
  // with the cluster's CA (needs --tls-cert: peers dial the binary port).
  // Without them, peers dial with --tls-cert, --tls-key and --tls-ca.
  // --peer-tls-crl: CRLs of the cluster CA, checked on every peer link.
  // SIGHUP rereads them all (Node::ReloadTls).
  std::string peer_tls_cert;
  std::string peer_tls_key;
  std::string peer_tls_ca;
  std::string peer_tls_crl;
  bool read_only = false;  // --read_only
  // --slow_request_threshold: requests answered after at least this long
  // are logged (operation, key or path, duration, status); zero: none.
  absl::Duration slow_request_threshold = absl::ZeroDuration();

  // ---- Accounts.
  AuthMode auth = AuthMode::kOff;              // --auth
  std::string jwt_secret;                      // --jwt_secret; empty: kept in the data
  absl::Duration jwt_expiration = absl::Hours(1);  // --jwt_expiration
  int64_t rate_limit = 100;                    // --rate_limit per user a minute; 0 = off
  int64_t rate_limit_burst = 10;               // --rate_limit_burst
  int64_t account_rate_limit = 20;             // --account_rate_limit per user a minute; 0 = off
  int64_t account_rate_limit_burst = 20;       // --account_rate_limit_burst
  int64_t signup_rate_limit = 1;               // --signup_rate_limit per client address a minute; 0 = off
  int64_t signup_rate_limit_burst = 20;        // --signup_rate_limit_burst
  // --admins: usernames this node makes administrators through the control
  // plane once they exist (docs/security.md, "Roles"); needs --auth=on.
  std::vector<std::string> admins;

  // ---- Cluster.
  std::string node_id;         // --node_id; empty: the advertised address
  std::string advertise;       // --advertise host:port; empty: the bound listen address
  std::string http_advertise;  // --http_advertise; empty: the first HTTP address
  std::vector<std::string> seeds;  // --seeds, binary-protocol host:port of members
  std::string cluster_secret;      // --cluster_secret; empty: peers not authenticated
  int replicas = 3;                // --replicas (N)
  int write_quorum = 0;            // --w (W); 0 = by consistency level
  int read_quorum = 0;             // --r (R); 0 = by consistency level
  absl::Duration write_wait = absl::Milliseconds(3000);     // --write_wait_ms
  absl::Duration gossip_interval = absl::Milliseconds(500); // --gossip_interval_ms
  absl::Duration dead_after = absl::Seconds(10);            // --dead_after_ms
  absl::Duration anti_entropy_interval = absl::Seconds(30); // --anti_entropy_interval_ms
  uint64_t anti_entropy_bytes_per_second = 8u << 20;        // --anti_entropy_bytes_per_second
  absl::Duration purge_interval = absl::Seconds(60);        // --purge_interval_ms
  absl::Duration purge_ring_stable = absl::Seconds(60);     // --purge_ring_stable_ms
  bool fault_injection = false;  // --fault_injection (test builds only)
  // The control plane's Raft transport: its port (0: chosen at the first
  // start and kept in the data directory) and how many members vote.
  int control_port = 0;    // --control_port
  int control_voters = 3;  // --control_voters: 1, 3 or 5
  absl::Duration join_timeout = absl::Seconds(60);  // --join_timeout_ms
  // --replace: this node, started without control-plane state under the
  // node id of a member, takes that member's place (its data was lost).
  // Without it such a start is refused: a duplicated --node_id must not
  // evict a live member.
  bool replace = false;

  // ---- Backups (docs/operations.md, "Backups").
  std::string backup_dir;       // --backup_dir; empty: backups off
  std::string backup_schedule;  // --backup_schedule, cron (5 fields, UTC); empty: on request
  size_t backup_retention = 0;  // --backup_retention: newest kept; 0 = all
  uint64_t backup_rate_limit = 32ull << 20;  // --backup_rate_limit, bytes/s; 0 = unlimited
  std::string backup_format = "archive";     // --backup_format: archive | directory
  bool backup_hard_links = false;            // --backup_hard_links (directory format)

  // ---- Audit log (docs/security.md, "Audit log").
  size_t audit_retention = 100000;  // --audit_retention: entries in this node's file; 0 = all
  absl::Duration audit_retention_age = absl::ZeroDuration();  // --audit_retention_hours; 0 = none
  // --audit_prefix: data writes whose engine key starts with one of these
  // are audited (with accounts on, a tenant's keys are "\0t<user id>/..."
  // in the engine; "" audits every write).
  std::vector<std::string> audit_prefixes;

  // ---- Consensus keys (docs/cluster.md, "Compare-and-set").
  // --consensus_prefix: keys whose client part starts with one of these go
  // through the control plane's log. A new cluster's first node commits
  // them; every node then follows the committed ones.
  std::vector<std::string> consensus_prefixes;

  // Every check logkvd makes of its flags before it opens anything, with
  // logkvd's messages (they name the flags). OK when the node may start.
  absl::Status Validate() const;
};

class Node {
 public:
  explicit Node(NodeOptions options);
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node();  // Stop()

  // Validates the options, then opens the engine and builds and starts
  // everything (see the member list for the order), binds the ports and
  // logs "listening on ..." for each. On a failure it logs it, undoes what
  // it had started (Stop's path) and returns it. A Node starts once; to
  // restart, make a new one on the same options (data directory, ports).
  absl::Status Start();
  // Finishes the requests in flight and stops everything in the reverse
  // order of Start, flushes, and closes the engine: its Close status (also
  // logged). Idempotent; the later calls return the first one's status.
  absl::Status Stop();

  // Changes the per-user rate limit (--rate-limit, --rate-limit-burst), as
  // logkvd does on SIGHUP: the cluster's setting, committed in the control
  // plane and put in force on every node. FailedPrecondition when the node
  // is not running or accounts are off (there are no users to limit).
  absl::Status SetRateLimit(int64_t requests_per_minute, int64_t burst);
  // Reads the TLS certificate, key, CA and CRL files again (SIGHUP), for the
  // listeners and the peer links (the data plane's transport and the
  // control plane's Raft transport): connections made or accepted from then
  // on use them, open ones keep theirs. A part whose files do not read keeps
  // the ones in use (the error names them). OK and nothing done without TLS.
  absl::Status ReloadTls();

  // Whether the node runs and each of its network loops answered within
  // timeout (logkvd's systemd watchdog). From the thread that calls Stop.
  bool Responsive(absl::Duration timeout) const;

  bool running() const { return running_.load(std::memory_order_acquire); }
  const NodeOptions& options() const { return options_; }
  // REQUIRES: Start succeeded. The bound binary-protocol port, and the bound
  // port of each of options().http, in order.
  int port() const;
  const std::vector<int>& http_ports() const;
  // The cluster member's id (known once Start bound the ports).
  std::string node_id() const;
  // The engine (null before Start); it stays readable after Stop until the
  // Node is destroyed.
  engine::Engine* engine() const { return engine_.get(); }
  ServerMetrics* metrics() { return &metrics_; }
  // Every HTTP route (null before Start): the API reference's test checks
  // /openapi.json against it.
  const http::Router* router() const { return router_.get(); }
  // The backups (null before Start): a configuration reload (SIGHUP) changes
  // their schedule, retention and rate through BackupManager::Reconfigure.
  backup::BackupManager* backup_manager() const { return backup_manager_.get(); }
  // The cluster member (null before Start).
  cluster::ClusterNode* cluster() const { return cluster_.get(); }
  // Returns once this node's view of the membership has been confirmed by
  // a majority of the members it knows (Membership::ViewConfirmed) and it
  // knows at least min_live_members live ones; DeadlineExceeded at deadline.
  absl::Status WaitViewConfirmed(absl::Time deadline, size_t min_live_members = 1) const;
  // The control plane (null before Start).
  control::ControlPlane* control_plane() const {
    return control_ptr_.load(std::memory_order_acquire);
  }

 private:
  // The steps of Start, each undone by Stop when it was reached.
  absl::Status StartEngine();
  absl::Status StartAuth();
  // Loads the accounts from the control plane (--auth=on), or commits that
  // they are off (the first node).
  absl::Status LoadAccounts();
  absl::Status BuildCluster();
  void AddRoutes();
  absl::Status StartServer();
  absl::Status StartClusterMember();
  // data_dir/control/node_id: the node id the directory keeps (written at
  // the node's first start).
  std::filesystem::path NodeIdFile() const;
  // The node id the directory keeps ("" before the first start); an error
  // when --node_id names another.
  absl::StatusOr<std::string> KeptNodeId() const;
  // The server accepts connections from now on (once; Start's thread).
  absl::Status AcceptConnections();
  absl::Status StartBackgroundWork();
  absl::Status StartFlusher();
  absl::Status StartControlPlane();
  // A new cluster's first node commits --replicas (N) and
  // --consensus_prefix; every node warns when its flags differ from what
  // the cluster committed (background).
  void CommitClusterSettings();
  // Ends refilling_ once a pull from every other owner of this node's keys
  // succeeded (background; retried while one of them is down).
  void Refill();
  // The control plane's figures in the Prometheus output.
  void AddControlMetrics();
  // Adds this node to the cluster's control plane through its seeds (a new
  // node), or takes the place of its member (a node that lost its data).
  absl::Status JoinControlPlane();
  // A node that left and was asked to join again (gossip joined) is added
  // to the committed configuration again (the rejoin worker's task).
  void RejoinIfLeft();
  // Goes on with a committed leave nobody is running (RejoinIfLeft).
  void ResumeLeave();
  // POST /members/remove: another member that is joining and down leaves
  // the committed configuration.
  absl::Status RemoveJoiningMember(const std::string& node_id, absl::Time deadline);
  // A joining member (this node) becomes active (docs/cluster.md,
  // "Membership changes"): the epoch barrier, the fill from the owners, then
  // ActivateMember. Returns once this node applied its activation.
  absl::Status FinishJoin(absl::Time deadline);
  // Leaves the committed configuration: BeginLeave, the epoch barrier, the
  // hand-off of this node's keys to the owners after it, RemoveMember.
  absl::Status Leave(absl::Time deadline);
  // Returns once every live member holds epoch (or a later one) and has no
  // strong operation placed under an older epoch running (EpochBarrier).
  absl::Status AwaitEpochBarrier(uint64_t epoch, absl::Time deadline);
  // This node's answer to EpochBarrier: OK when it holds epoch and no strong
  // operation placed under an older one runs here.
  absl::Status LocalEpochBarrier(uint64_t epoch);
  // A restarted or new node learns the epoch committed when it asks
  // (a Barrier command) and waits until it applied it: until then it
  // coordinates no quorum operation (its configuration may be stale).
  void CatchUpWithControlPlane();
  // The placement of the committed configuration (cached per epoch): the
  // ring of active and leaving members, and during a change the ring of
  // active and joining members; this node alone before any configuration.
  cluster::Placement CommittedPlacement() ABSL_LOCKS_EXCLUDED(ring_mu_);
  std::shared_ptr<const cluster::Ring> CommittedRing() { return CommittedPlacement().ring; }
  // N: the cluster's committed replication factor, or --replicas before the
  // first node commits it.
  size_t ReplicasOf(const control::ClusterConfig& config) const;
  void LogListening() const;
  // Runs work on a thread joined by Stop (blocking work asked for over HTTP).
  void RunInBackground(std::function<void()> work) ABSL_LOCKS_EXCLUDED(background_mu_);

  const NodeOptions options_;
  // The engine's directory, absolute (Start).
  std::string data_dir_;
  std::atomic<bool> started_{false};  // Start was called
  std::atomic<bool> running_{false};  // Start succeeded and Stop has not begun
  bool stopped_ = false;
  absl::Status stop_status_;

  // The parts of the node. They are declared in the order Start builds
  // them, so members are destroyed in the reverse order; Stop first closes
  // the server to requests (every part is reached through it) and then
  // stops the others in that same reverse order, before any is destroyed.
  // Adding a part: declare it after everything it uses and before whatever
  // uses it, and start and stop it at the matching places.
  ServerMetrics metrics_;  // before the engine: its callbacks count into it
  ServerCounters counters_;
  // The server once it runs, for the engine's and accounts' notifications.
  std::atomic<Server*> server_for_events_{nullptr};
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<Service> service_;
  // Backups of the engine, on request and on a schedule.
  std::unique_ptr<backup::BackupManager> backup_manager_;
  // Accounts and API keys (auth on; live in the engine, server/namespaces.h).
  std::unique_ptr<auth::AuthStore> auth_store_;
  std::atomic<bool> accounts_stopping_{false};
  std::unique_ptr<auth::RateLimiter> rate_limiter_;
  // Refreshes and key creations per user (a bucket apart from the data
  // requests', so a workload at its limit, or a leaked key, cannot lock its
  // user out of them).
  std::unique_ptr<auth::RateLimiter> account_limiter_;
  // Sign-ups per client address (POST /signup), keyed by the address's hash.
  std::unique_ptr<auth::RateLimiter> signup_limiter_;
  std::unique_ptr<auth::Admission> admission_;  // of both protocols, with auth on
  std::unique_ptr<auth::WorkerPool> password_workers_;
  std::unique_ptr<auth::LoginThrottle> login_throttle_;
  // The cluster member: the server hands it peer connections.
  std::unique_ptr<cluster::ClusterNode> cluster_;
  bool cluster_started_ = false;
  std::unique_ptr<cluster::HintedHandoff> handoff_;
  bool handoff_started_ = false;
  std::unique_ptr<cluster::ReplicaCoordinator> coordinator_;
  std::unique_ptr<http::Router> router_;
  std::unique_ptr<http::NodeUrl> node_url_;  // both route sets name the node by it
  std::unique_ptr<http::DataRoutes> data_routes_;
  std::unique_ptr<http::ClusterRoutes> cluster_routes_;
  std::unique_ptr<http::BackupRoutes> backup_routes_;
  std::unique_ptr<http::AuditRoutes> audit_routes_;
  // Looked up once, found by index at answer time.
  std::vector<HttpRouteMetrics*> route_metrics_;
  HttpRouteMetrics* unrouted_metrics_ = nullptr;
  std::vector<ProtocolOperationMetrics*> operation_metrics_;
  // With options().tls: the listeners' certificates (outlives server_).
  std::unique_ptr<net::TlsContext> tls_;
  std::unique_ptr<Server> server_;
  bool server_started_ = false;
  // Whether server_ accepts connections (StartServer, AcceptConnections).
  bool accepting_ = false;
  // The control plane (Raft): started once the server bound its ports.
  std::unique_ptr<control::ControlPlane> control_;
  // On control_; the Service's consensus keys (set after control_ starts).
  std::unique_ptr<ControlConsensusKeys> consensus_;
  bool store_was_empty_ = false;  // no client key when the engine opened
  std::atomic<control::ControlPlane*> control_ptr_{nullptr};
  absl::Mutex ring_mu_;
  uint64_t ring_epoch_ ABSL_GUARDED_BY(ring_mu_) = ~uint64_t{0};
  cluster::Placement placement_ ABSL_GUARDED_BY(ring_mu_);
  // CatchUpWithControlPlane finished (then stays true).
  std::atomic<bool> control_caught_up_{false};
  std::atomic<bool> stopping_{false};  // Stop has begun
  // This node lost its data and took its member's place (--replace, or a
  // refill that had not finished when it stopped: <data>/refilling): until
  // it pulled every key it owns from every other owner (Refill), it answers
  // no quorum read and counts in none it coordinates.
  std::atomic<bool> refilling_{false};
  // Told of every committed change (anti-entropy, purger, hand-off), from
  // the control plane's thread; set once they run, cleared by Stop.
  absl::Mutex control_listener_mu_;
  std::function<void()> control_listener_ ABSL_GUARDED_BY(control_listener_mu_);
  // Built once the server bound its port: they take the node's id.
  std::unique_ptr<cluster::AntiEntropy> anti_entropy_;
  std::unique_ptr<cluster::Purger> purger_;
  // Blocking work asked for over HTTP (a leave's hand-off, the lookup of a
  // join target named by its URL), never run on a loop.
  // Each thread's flag is set as its work ends; the next RunInBackground
  // joins those (a finished thread's stack stays mapped until it is joined).
  struct BackgroundThread {
    std::shared_ptr<std::atomic<bool>> done;
    std::thread thread;
  };
  absl::Mutex background_mu_;
  std::vector<BackgroundThread> background_threads_ ABSL_GUARDED_BY(background_mu_);
  // Writes API keys' last-use times in batches (auth on).
  std::unique_ptr<PeriodicWorker> flusher_;
  // Grants --admins (every second, until every name is granted).
  std::unique_ptr<PeriodicWorker> admins_worker_;
  // Re-adds this node to the control plane after a leave and a join.
  std::unique_ptr<PeriodicWorker> rejoin_worker_;
  // Audit events that are not commands (audited data writes), proposed to
  // the control plane in batches (RecordAudit) every 100 ms.
  struct PendingAuditEvent {
    int64_t at_ms = 0;
    std::string kind;
    std::string actor;
    std::string detail;
  };
  void RecordAuditEvent(std::string kind, std::string actor, std::string detail);
  void FlushAuditEvents();
  absl::Mutex audit_mu_;
  std::vector<PendingAuditEvent> audit_events_ ABSL_GUARDED_BY(audit_mu_);
  uint64_t audit_dropped_ ABSL_GUARDED_BY(audit_mu_) = 0;
  std::unique_ptr<PeriodicWorker> audit_flusher_;
  std::atomic<int> audit_in_flight_{0};  // RecordAudit commands proposed, not answered
  std::atomic<uint64_t> logins_throttled_{0};  // since the last login.throttled entry
  int64_t last_throttle_entry_ms_ = 0;         // the flusher's thread (and Stop's, after it)
  // A leave is under way: the rejoin worker waits (it would otherwise add
  // back a node whose RemoveMember committed before gossip says it left).
  std::atomic<bool> leaving_{false};
  // A leave of this process removed this node: a configuration that still
  // says leaving is one the removal has not reached (RejoinIfLeft).
  std::atomic<bool> left_{false};
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_NODE_H_
