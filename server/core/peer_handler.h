// What the network layer hands cluster-internal operations to. A connection
// becomes a peer connection through the ClusterHello handshake (both ends
// prove they hold the cluster secret without sending it; protocol/logkv.fbs);
// only then are Gossip, Replicate, ReadRecords, MerkleHashes and
// MerkleLeaf accepted on it, and client operations on it see the global key
// space (peers replicate engine keys, tenant prefixes included).
//
// Thread-safety: HandlePeer is called from every I/O loop at once.
#ifndef LOGKV_SERVER_CORE_PEER_HANDLER_H_
#define LOGKV_SERVER_CORE_PEER_HANDLER_H_

#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "protocol/frame.h"
#include "server/core/outcome.h"

namespace logkv::server {

class PeerHandler {
 public:
  virtual ~PeerHandler() = default;

  // Step 1 of the handshake, the first ClusterHello: refuses a peer that
  // may not connect (its --auth setting differs from this node's, it names
  // another cluster id than this node's, or this node requires a cluster
  // secret and has none), else answers with this node's nonce and its proof
  // over both nonces. their_cluster_id: "" when the peer sent none.
  struct Challenge {
    std::string nonce;
    std::string proof;
    bool auth = false;  // this node's --auth
  };
  virtual absl::StatusOr<Challenge> ChallengePeer(absl::string_view node_id,
                                                  absl::string_view their_nonce, bool their_auth,
                                                  absl::string_view their_cluster_id) = 0;
  // Step 3, the second ClusterHello: whether the connecting node's proof
  // over the two nonces shows it holds the secret (constant time).
  virtual bool AcceptPeer(absl::string_view node_id, absl::string_view their_nonce,
                          absl::string_view own_nonce, absl::string_view proof) = 0;
  // The advertised binary-protocol address (host:port) of the member
  // node_id, "" when it is not a member (yet): with node-to-node TLS a
  // peer's certificate must name that host.
  virtual std::string MemberAddress(absl::string_view /*node_id*/) const { return ""; }

  // A cluster-internal operation from an accepted peer; the contract of
  // Service::Handle (answer in builder, or defer and complete later).
  virtual Outcome HandlePeer(const protocol::Request& request,
                                      flatbuffers::FlatBufferBuilder* builder,
                                      absl::FunctionRef<Completion()> defer) = 0;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CORE_PEER_HANDLER_H_
