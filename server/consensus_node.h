// The node's consensus keys (server/core/consensus_keys.h) on its control
// plane: writes are KvWrite commands, reads a KvSync command and then a read
// of this node's copy once it has applied the log that far
// (docs/cluster.md, "Compare-and-set").
//
// Which keys are covered: the committed prefixes once this node has applied
// them; before that, those it had applied before its last stop (kept in the
// control plane's directory; they never change); and on a node that never
// applied them (a new node catching up with the log, a first node committing
// them) its own --consensus_prefix, so that no key that will be a consensus
// key is written to the data engines by a node started with the same flag. A key the
// guess covers wrongly is refused by the log (InvalidArgument), not lost.
//
// Thread-safety: as the interface.
#ifndef LOGKV_SERVER_CONSENSUS_NODE_H_
#define LOGKV_SERVER_CONSENSUS_NODE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "server/core/consensus_keys.h"

namespace logkv::server {

namespace control {
class ControlPlane;
}  // namespace control

class ControlConsensusKeys final : public ConsensusKeys {
 public:
  // control() is the node's control plane, null until it runs (then
  // operations are refused as Unavailable; the flag decides what is
  // covered); what it returns must outlive this object. read_wait bounds how
  // long a read waits for this node to apply the log up to its KvSync.
  ControlConsensusKeys(std::function<control::ControlPlane*()> control,
                       std::vector<std::string> flag_prefixes,
                       absl::Duration read_wait = absl::Seconds(5));

  bool Covers(absl::string_view engine_key) const override;
  void Get(std::string key,
           std::function<void(absl::StatusOr<Coordinator::ReadResult>)> done) override;
  void Write(std::string key, std::optional<std::string> value,
             std::optional<uint64_t> if_version,
             std::function<void(absl::StatusOr<engine::WriteResult>)> done) override;

 private:
  const std::function<control::ControlPlane*()> control_;
  const std::vector<std::string> flag_prefixes_;
  const absl::Duration read_wait_;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CONSENSUS_NODE_H_
