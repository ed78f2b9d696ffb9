// The keys whose every operation goes through the control plane's Raft log
// (docs/cluster.md, "Compare-and-set"): those under the cluster's consensus
// prefixes. Their values are not in the data engines. The Service asks
// Covers for every single-key operation and sends the covered ones here;
// the node implements it on its ControlPlane.
//
// Answers are linearizable: a write is one command of the log, a read is
// a KvSync command followed by a local read once this node has applied the
// log up to it. Compare-and-set (if_version) is atomic.
//
// Thread-safety: every method may be called from any thread; callbacks run
// on the control plane's thread or the transport's.
#ifndef LOGKV_SERVER_CORE_CONSENSUS_KEYS_H_
#define LOGKV_SERVER_CORE_CONSENSUS_KEYS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/engine.h"
#include "server/core/coordinator.h"

namespace logkv::server {

class ConsensusKeys {
 public:
  virtual ~ConsensusKeys() = default;

  // Whether engine_key is a consensus key. Cheap: one atomic load on a
  // cluster without consensus prefixes.
  virtual bool Covers(absl::string_view engine_key) const = 0;

  // The key's value (found = false: absent), version and time of its last
  // write, as of a moment between the call and the answer.
  virtual void Get(std::string key,
                   std::function<void(absl::StatusOr<Coordinator::ReadResult>)> done) = 0;

  // A put (value present) or a delete; with if_version, only if the key is
  // at that version (0: absent), else FailedPrecondition. The answer's
  // version is the key's after the write. Unavailable when the control
  // plane could not be reached (the write may or may not have happened).
  virtual void Write(std::string key, std::optional<std::string> value,
                     std::optional<uint64_t> if_version,
                     std::function<void(absl::StatusOr<engine::WriteResult>)> done) = 0;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CORE_CONSENSUS_KEYS_H_
