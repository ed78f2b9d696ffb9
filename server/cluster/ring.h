// The cluster places keys with the protocol's placement (protocol/placement.h),
// the same function clients route with; these names are the cluster's.
#ifndef LOGKV_SERVER_CLUSTER_RING_H_
#define LOGKV_SERVER_CLUSTER_RING_H_

#include <cstdint>
#include <memory>

#include "protocol/placement.h"

namespace logkv::server::cluster {

using ::logkv::placement::kVirtualNodesPerMember;
using ::logkv::placement::Ring;

// Where keys live under one committed configuration (docs/cluster.md,
// "Membership changes"). Outside a membership change there is one ring. While
// a member joins or leaves there are two: ring, the owners before the change
// (active and leaving members), and next, the owners after it (active and
// joining members); a strong operation then needs a quorum of each.
struct Placement {
  uint64_t epoch = 0;                  // of the configuration (0: none)
  std::shared_ptr<const Ring> ring;    // null: no owners known yet
  std::shared_ptr<const Ring> next;    // null: no change under way
  size_t replicas = 0;                 // N, committed (0: this node's --replicas)
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_RING_H_
