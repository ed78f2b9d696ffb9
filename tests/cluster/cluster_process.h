// A test cluster of real logkvd processes on loopback ports: node i is
// started as --node-id=n<i> with its own data directory, node 0 first and
// the others seeded through it, with fast gossip and fault injection on, one
// I/O thread and two shards each so that five of them stay responsive on a
// two-core machine. Nodes can be killed (SIGKILL), stopped (SIGTERM), wiped
// and restarted on the same ports and data directory; partitions are set
// through every node's test-only POST /internal/fault; an HTTP helper talks
// to /v1/kv, /store, /nodes and /metrics with a deadline on every request,
// so a hung node fails a test instead of blocking it.
//
// Ports. A restarted node must come back on its ports (its peers know it by
// its advertised address), so ports are chosen up front: bind port 0, read
// the port, close, and pass it explicitly. Between that close and logkvd's
// bind another process may take the port (a small race, as in any
// pick-then-bind scheme); a fresh node whose bind fails with "in use" is
// retried with new ports, a restarted node is retried on its own ports for a
// bounded time.
//
// Every process started is stopped by the destructor, and the data
// directories are removed. A background thread keeps reading what the nodes
// write to stderr, so a chatty node never blocks on a full pipe.
//
// Thread-safety: the control methods (start, stop, kill, add, partitions)
// are meant for the test's main thread; the HTTP helpers (Put, Get, Delete,
// GetStore, Nodes, Metrics...) may be called from any thread, also while the
// main thread restarts a node (they then fail, as a real client would) or
// adds one (at most kMaxNodes nodes, so the node table never moves).
#ifndef LOGKV_TESTS_CLUSTER_CLUSTER_PROCESS_H_
#define LOGKV_TESTS_CLUSTER_CLUSTER_PROCESS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {

enum class Consistency { kDefault, kEventual, kStrong };

// "eventual", "strong", or "" for kDefault (no X-Consistency header).
const char* ConsistencyName(Consistency consistency);

struct ClusterOptions {
  std::string logkvd_binary;
  int nodes = 3;
  int replicas = 3;  // --replicas (N)
  std::string cluster_secret = "cluster-test-secret";
  int gossip_interval_ms = 100;
  int dead_after_ms = 2000;
  // --write-wait-ms; 0 leaves the server's default.
  int write_wait_ms = 0;
  // The purger: short, so ownership changes in tests settle in seconds.
  int purge_interval_ms = 300;
  int purge_ring_stable_ms = 1000;
  // Flags added to every node's command line (e.g. "--w=2").
  std::vector<std::string> extra_flags;
  // Flags added to node i's command line only (node_flags[i]), after extra_flags.
  std::vector<std::vector<std::string>> node_flags;
  // Node i's data directory when node_data_dirs[i] is set (e.g. on a small
  // file system); otherwise one under the cluster's temporary directory.
  std::vector<std::string> node_data_dirs;
  absl::Duration start_timeout = absl::Seconds(20);
  // All traffic over mutual TLS: certificates of one CA made at start
  // (tools/make-certs.sh, naming 127.0.0.1 and every node id), TLS on the
  // binary and HTTP ports (HttpExchange then speaks HTTPS with a client
  // certificate), --peer-tls-* for the data plane's peers and the control
  // plane's Raft transport.
  bool mutual_tls = false;
};

// With a mutual-TLS cluster running: the files its clients use.
struct ClusterTlsFiles {
  std::string ca_file;
  std::string cert_file;  // a client certificate of the cluster CA
  std::string key_file;
};
// The files of the mutual-TLS cluster alive in this process, if any.
std::optional<ClusterTlsFiles> ClusterTls();

// One HTTP exchange with a deadline on all of it. Connecting is tried once,
// so a node that is down fails at once with Unavailable (connection
// refused); DeadlineExceeded when no complete answer came in time.
absl::StatusOr<HttpAnswer> HttpExchange(int port, absl::string_view method,
                                        absl::string_view target, const HttpHeaders& headers,
                                        absl::string_view body, absl::Duration timeout);

class ClusterProcess {
 public:
  static constexpr int kMaxNodes = 16;

  explicit ClusterProcess(ClusterOptions options);
  ClusterProcess(const ClusterProcess&) = delete;
  ClusterProcess& operator=(const ClusterProcess&) = delete;
  ~ClusterProcess();

  // Starts options.nodes nodes, node 0 first. Fails at once (with the
  // node's output) when a node exits at start-up, e.g. on an unknown flag.
  absl::Status Start();
  // Starts one more node seeded through the first running node; its index.
  absl::StatusOr<int> AddNode();

  int size() const { return static_cast<int>(nodes_.size()); }
  bool running(int node) const;
  std::vector<int> RunningNodes() const;
  std::string node_id(int node) const { return nodes_[node]->node_id; }
  // The binary-protocol address peers know the node by ("127.0.0.1:port").
  std::string address(int node) const;
  int port(int node) const { return nodes_[node]->port; }
  int http_port(int node) const { return nodes_[node]->http_port; }
  // The node's process id; -1 when it is not running.
  pid_t pid(int node) const {
    return nodes_[node]->process != nullptr ? nodes_[node]->process->pid() : -1;
  }
  const std::string& data_dir(int node) const { return nodes_[node]->data_dir; }

  // SIGKILL (kill -9) and reap.
  void Kill(int node);
  // SIGTERM (graceful shutdown) and wait; the exit status or -1.
  int Stop(int node);
  // Removes everything in the data directory. REQUIRES: the node is stopped.
  absl::Status Wipe(int node);
  // Starts a stopped node again on its ports and data directory, seeded
  // through every other node.
  absl::Status Restart(int node);
  // The same with the command line it was first started with, as an
  // operator restarts a node (node 0 without seeds, the others seeded
  // through the node that was first then).
  absl::Status RestartAsStarted(int node);

  // Polls (bounded) until the GET /nodes of every observer lists every
  // expected node alive. Defaults: all running nodes, both ways.
  absl::Status WaitAlive(const std::vector<int>& observers, const std::vector<int>& expected,
                         absl::Duration timeout = absl::Seconds(30));
  absl::Status WaitAllAlive(absl::Duration timeout = absl::Seconds(30));
  // Polls until every running node's GET /health says view_confirmed (a
  // majority of its members confirmed its view: it serves strong operations).
  absl::Status WaitViewsConfirmed(absl::Duration timeout = absl::Seconds(30));
  // Polls until no observer lists the node alive (dead, left or gone).
  absl::Status WaitNotAlive(const std::vector<int>& observers, int node,
                            absl::Duration timeout = absl::Seconds(30));

  // Node-to-node traffic of each running node to every node outside its
  // group is dropped (set on both sides). Nodes in no group are isolated.
  absl::Status Partition(const std::vector<std::vector<int>>& groups);
  // Node `from` drops its traffic to `to` (one side only).
  absl::Status SetDropped(int from, const std::vector<int>& to);
  // Every running node drops nothing.
  absl::Status Heal();

  // The client API (/v1/kv) and a node's local copy (/store).
  absl::StatusOr<HttpAnswer> Put(int node, absl::string_view key, absl::string_view value,
                                 Consistency consistency,
                                 absl::Duration timeout = absl::Seconds(5)) const;
  absl::StatusOr<HttpAnswer> Get(int node, absl::string_view key, Consistency consistency,
                                 absl::Duration timeout = absl::Seconds(5)) const;
  absl::StatusOr<HttpAnswer> Delete(int node, absl::string_view key, Consistency consistency,
                                    absl::Duration timeout = absl::Seconds(5)) const;
  absl::StatusOr<HttpAnswer> GetStore(int node, absl::string_view key,
                                      absl::Duration timeout = absl::Seconds(5)) const;
  // The local copy as found/value: nullopt when absent (404); an error for
  // anything else.
  absl::StatusOr<std::optional<std::string>> StoreValue(int node, absl::string_view key) const;

  // GET /nodes and GET /metrics (JSON), and /metrics in Prometheus text.
  absl::StatusOr<nlohmann::json> Nodes(int node) const;
  absl::StatusOr<nlohmann::json> MetricsJson(int node) const;
  absl::StatusOr<std::string> MetricsText(int node) const;
  // /metrics key_count.
  absl::StatusOr<int64_t> KeyCount(int node) const;

  // What a node wrote to stderr (all of it, or the last max_lines lines).
  std::string Output(int node, int max_lines = 0);
  // Every node: id, ports, running, and the tail of its output; for failure
  // messages.
  std::string Describe(int max_lines_per_node = 15);

 private:
  struct Node {
    std::string node_id;
    int port = 0;
    int http_port = 0;
    bool wiped = false;  // Wipe was called: restarts with --replace
    std::string data_dir;
    std::unique_ptr<LogkvdProcess> process;
    std::string earlier_output;  // of the node's previous lives
    std::vector<std::string> first_seeds;  // --seeds of its first start
  };

  // Starts node (its process object is made here) with seeds; fresh: the
  // ports may be re-picked if taken.
  absl::Status StartNode(int node, const std::vector<std::string>& seeds, bool fresh);
  std::vector<std::string> Flags(const Node& node, const std::vector<std::string>& seeds) const;
  absl::Status PostFault(int node, const std::vector<std::string>& dropped);
  int PickUnusedPort();

  void DrainOutputs();

  const ClusterOptions options_;
  ScopedTempDir root_;
  // With options_.mutual_tls: the certificates, and whether they were made.
  ClusterTlsFiles tls_files_;
  bool tls_ready_ = false;
  // Reserved to kMaxNodes: adding a node never moves the others, so HTTP
  // helpers on other threads can read their ports meanwhile.
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<int> ports_used_;
  // Guards every Node::process and Node::earlier_output (LogkvdProcess is
  // not thread-safe, and the drainer reads their output).
  mutable std::mutex process_mu_;
  std::atomic<bool> stopping_{false};
  std::thread drainer_;
};

// Whether a /nodes entry says alive: "alive": true, or a "state" of
// "alive"/"suspect". Its id from "id" or "node_id".
bool NodeEntryAlive(const nlohmann::json& entry);
std::string NodeEntryId(const nlohmann::json& entry);

// The seed of a randomized test: LOGKV_TEST_SEED when set, else a random one;
// printed ("LOGKV_TEST_SEED=...") so that a failure replays.
uint64_t TestSeedFromEnvironment(absl::string_view test_name);

}  // namespace logkv::test

#endif  // LOGKV_TESTS_CLUSTER_CLUSTER_PROCESS_H_
