// One node's part in the control plane: a libraft server on a libuv loop
// thread of its own, with the libuv disk backend in a directory beside the
// node's data, the authenticated transport (raft_transport.h), and the
// state machine (ControlState through RaftFsm). docs/control-plane.md.
//
// What it gives the node:
//   - config(): the cluster's configuration at the highest epoch this node
//     has applied. It is kept in a file (`applied`) written whenever the
//     epoch rises, and read at Start, so a restarted node serves under the
//     epoch it last held before Raft has replayed anything; Raft's replay
//     only ever brings it forward.
//   - Submit(): a command proposed on the leader, from any member: on a
//     follower it goes to the leader through the forwarder the node gives
//     (the data plane's authenticated peer connection), where
//     ProposeLocal() takes it.
//   - The leader keeps the Raft configuration in step with the members the
//     state machine holds (the reconciler): a member added by AddMember is
//     added to Raft, made a voter while there are fewer than max_voters
//     voters and a standby otherwise (it activates itself once filled; the
//     reconciler activates only a new cluster's first member); a removed
//     member is removed from Raft after a short grace; a voter leaving or
//     removed is replaced by another member. One Raft configuration change
//     at a time, as Raft requires; after a leader change the new leader
//     picks up where the old one stopped, since what to do next is read
//     from the committed state, not remembered.
//
// Identity: the first Start makes a random Raft id and picks the transport's
// port (when none is given) and keeps both in `identity` in the directory;
// later starts reuse them, as the Raft configuration names them.
//
// Thread-safety: every public method may be called from any thread.
#ifndef LOGKV_SERVER_CONTROL_CONTROL_PLANE_H_
#define LOGKV_SERVER_CONTROL_CONTROL_PLANE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/control/audit_log.h"
#include "server/control/control_state.h"

namespace logkv::server::control {

struct ControlPlaneOptions {
  std::string dir;                // holds identity, applied and raft/
  std::string listen_host = "127.0.0.1";
  int port = 0;                   // 0: chosen at the first start, then kept
  std::string advertise_host;     // "" = listen_host
  std::string cluster_secret;     // "" = a public constant (loopback clusters)
  // Mutual TLS on the Raft transport (--peer-tls-*): this node's certificate
  // and key, and the cluster CA. Off while peer_tls_ca is empty.
  std::string peer_tls_cert;
  std::string peer_tls_key;
  std::string peer_tls_ca;
  std::string peer_tls_crl;  // --peer-tls-crl: CRLs of the cluster CA; "" none
  std::string peer_tls_ciphersuites;  // --tls-ciphersuites; "" OpenSSL's default
  // Called on the control thread with why the Raft transport refused a
  // connection (TLS, a certificate not naming the peer, a wrong proof).
  std::function<void(const std::string& why)> on_transport_refused;
  // Called on the audit log's thread when a write of this node's audit file
  // fails (why, and the entries waiting in memory), and with why empty when
  // writes succeed again (AuditLogOptions::on_problem).
  std::function<void(const std::string& why, size_t waiting)> on_audit_problem;
  // This node as a member: node id, binary and HTTP addresses. The raft id
  // and control address are the control plane's own.
  Member self;
  // No control-plane state yet and no cluster to join: start a new cluster
  // of this node alone. Otherwise the node waits to be added by a leader
  // (Join).
  bool bootstrap = false;
  int max_voters = 3;             // 1, 3 or 5
  unsigned election_timeout_ms = 1000;
  unsigned heartbeat_timeout_ms = 100;
  unsigned snapshot_threshold = 1024;  // entries between snapshots
  unsigned snapshot_trailing = 128;    // entries kept behind a snapshot
  // Whether a member answers (the data plane's failure detector); used to
  // pick voters among live members. Unset: every member counts as live.
  std::function<bool(const std::string& node_id)> is_alive;
  // Sends a command to the leader's node (its binary address) for
  // ProposeLocal there; done with the leader's answer. Unset: a follower
  // refuses Submit.
  std::function<void(const std::string& binary_address, std::string command,
                     std::function<void(absl::StatusOr<uint64_t>)> done)>
      forward;
  // The audit log's file on this node (<dir>/audit): its retention
  // (audit_log.h). Its key is derived from cluster_secret.
  size_t audit_retention_entries = 100000;
  absl::Duration audit_retention_age = absl::ZeroDuration();
  // Called on the control thread after the configuration's epoch rose.
  std::function<void()> on_change;
  // Called on the control thread when a command proposed on this leader is
  // applied, with the seconds from its proposal.
  std::function<void(double seconds)> on_applied;
};

// What `logkv nodes`, /members and the metrics show.
struct ControlStatus {
  uint64_t raft_id = 0;
  std::string address;         // the control transport's host:port
  std::string raft_state;      // "leader", "follower", "candidate", "unavailable"
  std::string role;            // this server's Raft role: "voter", "standby", "spare", "none"
  uint64_t term = 0;
  uint64_t commit_index = 0;
  uint64_t applied_index = 0;
  uint64_t last_index = 0;
  uint64_t leader_raft_id = 0;  // 0 = unknown
  std::string leader_node_id;   // "" = unknown
  uint64_t epoch = 0;           // of config()
  uint64_t voters = 0;          // in the Raft configuration
  uint64_t leader_changes = 0;  // times this node saw a new leader
  uint64_t commands_applied = 0;
  uint64_t snapshots_taken = 0;
  uint64_t snapshots_restored = 0;
  uint64_t proposals = 0;       // proposed here as leader
  uint64_t proposals_failed = 0;
  double apply_seconds_sum = 0;  // proposal to applied, on this leader
  // The Raft role of every server in this node's Raft configuration.
  std::vector<std::pair<uint64_t, std::string>> roles;  // raft id, role
};

// Writes a small file so that a crash leaves the old contents or the new,
// never a part (a temporary file, fsync, rename, fsync of the directory).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

class ControlPlane {
 public:
  explicit ControlPlane(ControlPlaneOptions options);
  ControlPlane(const ControlPlane&) = delete;
  ControlPlane& operator=(const ControlPlane&) = delete;
  ~ControlPlane();

  // Reads or makes the identity, loads the applied configuration, starts
  // Raft on the control thread (bootstrapping when the options say so and
  // there is no state).
  absl::Status Start();
  void Stop();

  // The configuration at the highest epoch applied here; never null once
  // started (epoch 0 before any command).
  std::shared_ptr<const ClusterConfig> config() const;
  // config()->epoch without a lock or a copy, for readers on every request.
  // It is stored before config() returns the configuration of that epoch:
  // whoever saw an epoch through config() reads it (or a newer one) here.
  uint64_t epoch() const;
  // The cluster's accounts as applied here (account_state.h); valid for the
  // life of this object, filled as Raft applies.
  AccountState* accounts();
  // Administrators, groups and ACLs as applied here (acl_state.h); as
  // accounts().
  AclState* access();
  // The consensus keys as applied here (kv_state.h); as accounts().
  KvState* kv();
  // The consensus prefixes this node had applied before it last stopped
  // (kept in <dir>/consensus_prefixes once committed; they never change),
  // or null; fixed once started.
  const std::vector<std::string>* saved_consensus_prefixes() const;
  // This node's cluster's id (kClusterIdBytes bytes): the committed one,
  // else the one kept in <dir>/cluster_id (drawn by a new cluster's first
  // node at its first start, saved by every node once committed), else ""
  // (a node that has not joined yet). Peers of another cluster are refused.
  std::string cluster_id() const;
  // The whole state as applied here (configuration and accounts), in the
  // snapshot encoding: what a backup keeps.
  std::string StateSnapshot();
  // The audit chain as applied here (head, last entries) and this node's
  // file of it; valid for the life of this object once started.
  AuditState* audit();
  AuditLog* audit_log();
  // This node as the control plane knows it (raft id, control address).
  const Member& self() const { return self_; }
  ControlStatus Status() const;
  // Reads the Raft transport's TLS files again (SIGHUP): connections made
  // or accepted from then on use them, open ones keep theirs. OK and nothing
  // done without TLS or before Start. Any thread; not concurrently with
  // Start or Stop.
  absl::Status ReloadTls();

  // Proposes a command (control_state.h's Encode*): done with the epoch
  // after it or why it was refused (the state machine's refusal, or
  // Unavailable: no leader, leadership lost, the leader unreachable). Called
  // on the control thread or the forwarder's.
  void Submit(std::string command, std::function<void(absl::StatusOr<uint64_t>)> done);
  // Proposes on this node only: Unavailable("not the leader ...") unless it
  // leads. The handler of forwarded commands.
  void ProposeLocal(std::string command, std::function<void(absl::StatusOr<uint64_t>)> done);
  // The same, waiting (bounded).
  absl::StatusOr<uint64_t> SubmitAndWait(std::string command, absl::Duration timeout);

  // Waits (bounded) until config() holds this node in one of the states, or
  // fails with DeadlineExceeded.
  absl::Status WaitForSelf(std::initializer_list<MemberState> states, absl::Time deadline) const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
  Member self_;  // filled at Start
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_CONTROL_PLANE_H_
