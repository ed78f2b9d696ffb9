// The cluster places keys with the protocol's placement (protocol/placement.h),
// the same function clients route with; these names are the cluster's.
#ifndef LOGKV_SERVER_CLUSTER_RING_H_
#define LOGKV_SERVER_CLUSTER_RING_H_

#include "protocol/placement.h"

namespace logkv::server::cluster {

using ::logkv::placement::kVirtualNodesPerMember;
using ::logkv::placement::Ring;

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_RING_H_
