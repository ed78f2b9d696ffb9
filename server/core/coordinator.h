// The coordinator of client operations in a cluster: it places a key on the
// ring (its preference list of N owners), sends the operation to the owners
// (the local engine directly, peers through the PeerTransport), waits for the
// consistency level asked for, and answers.
//
//   eventual: W = 1, R = 1 (the --w / --r flags override the defaults)
//   strong:   W = R = majority of N, linearizable (ABD): a strong write is
//             stamped above the timestamps a majority of owners hold; a
//             strong read writes the newest record back to a majority of
//             owners before answering.
//
// Writes are stamped with a hybrid-logical-clock timestamp at the coordinator
// whose low bits carry a tag of the coordinator's node id, so two coordinators
// never produce the same timestamp; replicas apply a record only when it is
// newer (last write wins): idempotent and order-independent. Owners that do
// not answer get the write later from the durable hinted-handoff queue.
// Reads ask R owners, answer the newest, and repair stale owners (in the
// background for eventual, before answering for strong).
//
// Thread-safety: every method may be called from any thread; callbacks run on
// the thread that completes the operation (an I/O loop or the transport's).
#ifndef LOGKV_SERVER_CORE_COORDINATOR_H_
#define LOGKV_SERVER_CORE_COORDINATOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "protocol/frame.h"

namespace logkv::server {

class Coordinator {
 public:
  virtual ~Coordinator() = default;

  // True when operations go through the cluster (more than one member known).
  virtual bool Active() const = 0;

  struct ReadResult {
    bool found = false;  // false: absent or deleted on the newest owner
    std::string value;
    uint64_t version = 0;
    uint64_t timestamp = 0;
    int64_t expiry_unix_ms = 0;
  };
  // key is the engine key (tenant prefix included). NotFound is a ReadResult
  // with found = false, not an error; Unavailable when R owners cannot be
  // reached within the write wait.
  // Callbacks are move-only: a callback that holds one shared state needs no
  // allocation of its own.
  using ReadDone = absl::AnyInvocable<void(absl::StatusOr<ReadResult>)>;
  virtual void Get(std::string key, protocol::Consistency consistency, ReadDone done) = 0;

  struct WriteOutcome {
    engine::WriteResult result;  // of the local apply, or the timestamp used
    // Every owner the write was sent to: the ring's preference list, primary
    // first, then (during a membership change) the next ring's other owners.
    // Immutable and shared (the coordinator keeps it for the other keys on
    // the same ring points), not copied per write; null if not reported.
    std::shared_ptr<const std::vector<std::string>> owners;
    size_t acknowledged = 0;  // owners that applied it
  };
  // value nullopt: delete. Unavailable (with the owners that did apply it in
  // the message) when fewer than W owners acknowledge within the write wait;
  // what was written is not rolled back.
  using WriteDone = absl::AnyInvocable<void(absl::StatusOr<WriteOutcome>)>;
  virtual void Write(std::string key, std::optional<std::string> value, int64_t ttl_ms,
                     protocol::Consistency consistency, WriteDone done) = 0;

  // The owners of a key (primary first), for answers such as primary_node.
  virtual std::vector<std::string> Owners(absl::string_view key) const = 0;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CORE_COORDINATOR_H_
