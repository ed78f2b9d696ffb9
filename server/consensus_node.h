// The node's consensus keys (server/core/consensus_keys.h) on its control
// plane: writes are KvWrite commands, reads a KvSync command and then a read
// of this node's copy once it has applied the log that far
// (docs/cluster.md, "Compare-and-set").
//
// Reads share KvSync commands: at most one of this node's is in flight, and
// the reads that arrive meanwhile wait together for the next, proposed when
// it completes. A read needs a KvSync proposed after it arrived (one proposed
// before could be ordered before a write the read must see); the next one is,
// for every read of its group. So N concurrent reads cost about two log
// entries, not N. If the one in flight fails (no leader within 5 s), so do
// the reads waiting for the next: every read ends within the wait, as a
// write does.
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
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/consensus_keys.h"

namespace logkv::server {

namespace control {
class ControlPlane;
}  // namespace control

// The KvSyncs of a node's reads, shared as the top of this file says.
// Thread-safety: Await may be called from any thread; done runs where the
// proposal's answer runs (the control plane's thread or the transport's), or
// inline on the thread of whichever call proposed when the control plane is
// stopping.
class SharedReadSyncs final : public std::enable_shared_from_this<SharedReadSyncs> {
 public:
  using Done = std::function<void(absl::StatusOr<uint64_t>)>;
  // Proposes one KvSync and calls its argument with the revision it answers.
  using Propose = std::function<void(Done)>;

  // done gets the revision of a KvSync proposed after this call, or the
  // error of the one in flight when it came (a failure ends the reads that
  // wait for the next one too). A chain of proposals uses the propose of the
  // call that started it (made when none was in flight); later calls' are
  // not used, so every call must pass an equivalent one.
  // REQUIRES: owned by a shared_ptr (the proposals in flight keep it).
  void Await(Propose propose, Done done) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // REQUIRES: in_flight_, set by the caller for this group.
  void Start(Propose propose, std::vector<Done> group) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Done> next_ ABSL_GUARDED_BY(mu_);  // reads waiting for the next KvSync
};

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
  // Shared with the callbacks of the KvSyncs in flight, which may outlive
  // this object.
  const std::shared_ptr<SharedReadSyncs> syncs_;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CONSENSUS_NODE_H_
