// One node's part in the cluster: owns the node-to-node transport and the
// membership, answers cluster-internal operations arriving on peer
// connections (PeerHandler), and is where the coordinator, hinted handoff
// and anti-entropy plug in: their owners register the peer operations they
// answer with AddPeerOperationHandler and reach the transport and the
// membership through the accessors.
//
// Lifetime: construct before the Server (it is the ServerConfig's
// peer_handler), Start once the server listens (the advertised port is then
// known), Stop before the server stops.
//
// Thread-safety: AcceptPeer and HandlePeer run on every I/O loop at once;
// the other methods may be called from any thread. Handlers are registered
// before Start.
#ifndef LOGKV_SERVER_CLUSTER_CLUSTER_NODE_H_
#define LOGKV_SERVER_CLUSTER_CLUSTER_NODE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/cluster/membership.h"
#include "server/cluster/peer_transport.h"
#include "server/core/outcome.h"
#include "server/core/peer_handler.h"

namespace logkv::server::cluster {

struct ClusterNodeOptions {
  std::string node_id;          // "" = the advertised address
  std::string advertise;        // binary-protocol host:port peers reach this node at
  std::string http_advertise;   // HTTP host:port, "" = none
  std::vector<std::string> seeds;  // host:port of peers to join through
  std::string cluster_secret;   // "" = peers are not authenticated
  int replicas = 3;             // N, capped at the cluster's size
  absl::Duration gossip_interval = absl::Milliseconds(500);
  int suspect_after_missed = 3;
  absl::Duration dead_after = absl::Seconds(10);
  absl::Duration ping_timeout = absl::Milliseconds(500);
  // Test builds only (LOGKV_FAULT_INJECTION) with --fault-injection.
  bool allow_fault_injection = false;
  uint32_t max_frame_bytes = 64u << 20;
  // Where the member list is kept (MembershipOptions::load_state and
  // save_state); unset: not kept.
  std::function<absl::StatusOr<std::string>()> load_membership;
  std::function<absl::Status(const std::string&)> save_membership;
  // This node's --auth: peers must run with the same setting (accounts
  // and tenant namespaces are per node until they are cluster-wide).
  bool auth_on = false;
  // Refuse peers when no cluster_secret is set (auth on, or a non-loopback
  // address): peers see every tenant's keys.
  bool require_secret = false;
  // This node's cluster id (sent in the ClusterHello; a peer naming another
  // is refused): "" while it has none (joining); an error while it cannot
  // tell yet (its control plane is starting), when peers are refused.
  // Unset: no id, every peer accepted.
  std::function<absl::StatusOr<std::string>()> cluster_id;
  // TLS to the peers (PeerTransportOptions::tls and its files).
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_crl_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ciphersuites;
};

class ClusterNode : public PeerHandler {
 public:
  std::string MemberAddress(absl::string_view node_id) const override;
  // The handler of one cluster-internal operation: the contract of
  // Service::Handle (answer in builder, or defer and complete later).
  using PeerOperationHandler = std::function<Outcome(
      const protocol::Request&, flatbuffers::FlatBufferBuilder*,
      absl::FunctionRef<Completion()>)>;

  explicit ClusterNode(const ClusterNodeOptions& options);
  ClusterNode(const ClusterNode&) = delete;
  ClusterNode& operator=(const ClusterNode&) = delete;
  ~ClusterNode() override;

  // The advertised addresses and node id once the server's ports are known
  // (an empty argument keeps the option). REQUIRES: before Start.
  void SetAdvertise(const std::string& advertise, const std::string& http_advertise);
  // The node id, when the options had none (a node id kept in the data
  // directory). REQUIRES: before SetAdvertise and Start.
  void SetNodeId(const std::string& node_id);
  // Starts the transport and the membership (joining through the seeds).
  absl::Status Start();
  void Stop();

  // REQUIRES: before Start. Replicate, ReadRecords, MerkleHashes, MerkleLeaf
  // are registered by their owners; Gossip is answered here.
  void AddPeerOperationHandler(protocol::Operation operation, PeerOperationHandler handler);

  // PeerHandler.
  absl::StatusOr<Challenge> ChallengePeer(absl::string_view node_id,
                                          absl::string_view their_nonce, bool their_auth,
                                          absl::string_view their_cluster_id) override;
  bool AcceptPeer(absl::string_view node_id, absl::string_view their_nonce,
                  absl::string_view own_nonce, absl::string_view proof) override;
  Outcome HandlePeer(const protocol::Request& request,
                              flatbuffers::FlatBufferBuilder* builder,
                              absl::FunctionRef<Completion()> defer) override;

  const ClusterNodeOptions& options() const { return options_; }
  const std::string& node_id() const { return options_.node_id; }
  PeerTransport* transport() { return &transport_; }
  // Reads the peer transport's TLS files again (PeerTransport::ReloadTls).
  absl::Status ReloadTls() { return transport_.ReloadTls(); }
  // Null before Start.
  Membership* membership() { return membership_.load(std::memory_order_acquire); }
  const Membership* membership() const { return membership_.load(std::memory_order_acquire); }

  // Members known (this node included) and of them Alive or Suspect; 1 and
  // 1 before Start.
  size_t MemberCount() const;
  size_t LiveMemberCount() const;

  // Data operations refused because the sender's epoch was older.
  uint64_t fenced() const { return fenced_.load(std::memory_order_relaxed); }

  // Fault injection (tests): false when the build or the flags do not allow it.
  bool fault_injection_enabled() const { return options_.allow_fault_injection; }
  absl::Status SetDropped(std::vector<std::string> addresses);

  // The coordinator, hinted handoff and anti-entropy objects are created by
  // the Node (server/node.h) next to this one (they take transport() and membership()) and
  // register their peer operations above.

 private:
  ClusterNodeOptions options_;  // constant after Start
  PeerTransport transport_;
  std::unique_ptr<Membership> owned_membership_;
  std::atomic<Membership*> membership_{nullptr};
  std::atomic<bool> started_{false};
  std::atomic<uint64_t> fenced_{0};

  mutable absl::Mutex handlers_mu_;
  absl::flat_hash_map<uint8_t, PeerOperationHandler> handlers_ ABSL_GUARDED_BY(handlers_mu_);
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_CLUSTER_NODE_H_
