// What the network layer hands cluster-internal operations to. A connection
// becomes a peer connection with ClusterHello (checked against the cluster
// secret); only then are Gossip, Replicate, ReadRecords, MerkleHashes and
// MerkleLeaf accepted on it, and client operations on it see the global key
// space (peers replicate engine keys, tenant prefixes included).
//
// Thread-safety: HandlePeer is called from every I/O loop at once.
#ifndef LOGKV_SERVER_CLUSTER_PEER_HANDLER_H_
#define LOGKV_SERVER_CLUSTER_PEER_HANDLER_H_

#include <string>

#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "protocol/frame.h"
#include "server/service.h"

namespace logkv::server::cluster {

class PeerHandler {
 public:
  virtual ~PeerHandler() = default;

  // Whether a ClusterHello may open a peer connection (constant-time
  // comparison of the secret; any secret when none is configured).
  virtual bool AcceptPeer(absl::string_view secret, absl::string_view node_id) = 0;

  // A cluster-internal operation from an accepted peer; the contract of
  // Service::Handle (answer in builder, or defer and complete later).
  virtual Service::Outcome HandlePeer(const protocol::Request& request,
                                      flatbuffers::FlatBufferBuilder* builder,
                                      absl::FunctionRef<Service::Completion()> defer) = 0;
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_PEER_HANDLER_H_
