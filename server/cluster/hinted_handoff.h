// Hinted handoff: writes an owner missed (it was dead, unreachable or did not
// answer within the write wait) wait here, durably, until it is back, and are
// then delivered with Replicate (hinted = true). Replicas apply records with
// last write wins, so a hint delivered twice, late or out of order is
// harmless.
//
// Storage: every hint is one record of the local engine, in the reserved
// namespace of server/namespaces.h:
//
//   key   = "\0hint/" + target node id + "/" + 8-byte big-endian sequence
//   value = EncodeRecord(record) (server/cluster/replica.h): a FlatBuffer
//           whose root is a protocol ReplicaRecord
//
// so hints are in the log (and synced per --fsync) before Enqueue returns,
// and survive restarts: Load rebuilds the in-memory queue from a Scan of
// the prefix. The key's engine timestamp tells when the hint was queued
// (the lag). A delivered hint is deleted (a tombstone, collected by
// compaction after the engine's tombstone grace). Keys of this namespace
// are local to the node: anti-entropy must skip them.
//
// Delivery: one thread (a PeriodicWorker, every poll_interval and on
// Notify) visits the targets with hints; for a target that is
// alive (state_of says so) it sends batches in sequence order, deletes the
// delivered hints, and on a failure waits before trying again, with an
// exponential backoff per target (initial_backoff doubling to max_backoff).
// A target that is gone for good (left the cluster) has its hints dropped:
// the keys' new owners get them through anti-entropy.
//
// Bounds: at most max_hints_per_target hints and max_bytes_per_target bytes
// per target. Past either, the oldest hints of that target are dropped with
// a warning (and counted as failed replica sends); anti-entropy repairs what
// they carried. A record too large to be stored as an engine value is not
// queued (Enqueue fails with ResourceExhausted) for the same reason.
//
// Memory: 24 bytes per queued hint (its sequence, age and size); values stay
// in the engine.
//
// Figures (ServerMetrics, when given): logkv_replication_queue_size = hints
// queued; logkv_replication_retries_in_progress = targets with hints whose
// last delivery failed (in backoff); logkv_replication_lag_max_seconds = age
// of the oldest hint; logkv_replica_acks_total{ok} += hints delivered,
// {failed} += hints dropped. Per target (label peer, the node id; a target
// is listed while hints wait for it): logkv_hinted_handoff_hints,
// logkv_hinted_handoff_bytes and logkv_replication_lag_seconds (the age of
// its oldest hint).
//
// Thread-safety: every public method may be called from any thread.
#ifndef LOGKV_SERVER_CLUSTER_HINTED_HANDOFF_H_
#define LOGKV_SERVER_CLUSTER_HINTED_HANDOFF_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/cluster/peer_transport.h"
#include "server/cluster/replica.h"
#include "server/core/periodic_worker.h"
#include "server/metrics.h"

namespace logkv::server::cluster {

struct HintedHandoffOptions {
  size_t max_hints_per_target = 1'000'000;
  uint64_t max_bytes_per_target = 1ull << 30;  // of encoded hints
  size_t batch_records = 256;                  // records per Replicate
  uint64_t batch_bytes = 4ull << 20;           // encoded bytes per Replicate (at least one)
  // Batches sent to one target in one pass before the thread visits others.
  size_t batches_per_pass = 16;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
  absl::Duration send_timeout = absl::Seconds(3);
  absl::Duration poll_interval = absl::Milliseconds(100);
};

// What the membership says of a hint's target.
enum class TargetState {
  kAlive,        // deliver now
  kUnreachable,  // suspect, dead or unknown for now: keep the hints
  kGone,         // left the cluster for good: drop its hints
};

// The key of a hint (exposed for tests and tools).
std::string HintKey(absl::string_view target_node_id, uint64_t sequence);
// The target and sequence of a hint key; false if key is not one.
bool ParseHintKey(absl::string_view key, std::string* target_node_id, uint64_t* sequence);

class HintedHandoff {
 public:
  // Sends a finished Request frame to the node named by its node id; done is
  // called exactly once (any thread) with the verified Response frame or why
  // there is none.
  using SendFunction = PeerSendFunction;
  using StateFunction = std::function<TargetState(const std::string& target_node_id)>;

  // engine (and metrics, which may be null) must outlive the HintedHandoff.
  HintedHandoff(engine::Engine* engine, const HintedHandoffOptions& options,
                ServerMetrics* metrics);
  HintedHandoff(const HintedHandoff&) = delete;
  HintedHandoff& operator=(const HintedHandoff&) = delete;
  // Stops the delivery thread.
  ~HintedHandoff();

  // Rebuilds the queue from the hints stored in the engine.
  // REQUIRES: called once, before Enqueue and Start.
  [[nodiscard]] absl::Status Load();

  // Starts the delivery thread: a pass at once, then every poll_interval.
  // send and state_of are called from it. FailedPrecondition when it is
  // already running. REQUIRES: not called at the same time as Stop.
  [[nodiscard]] absl::Status Start(SendFunction send, StateFunction state_of);
  // Stops the delivery thread (waits for a send in flight, at most
  // send_timeout). Hints stay stored for the next start. Idempotent.
  void Stop();
  // A delivery pass now (a target may be back): wakes the delivery thread,
  // or calls for another pass right after the one in progress. Targets in
  // backoff stay in backoff.
  void Notify();

  // Queues record for target_node_id: in the engine's log when it returns.
  // Past the bounds the target's oldest hints are dropped first.
  [[nodiscard]] absl::Status Enqueue(const std::string& target_node_id,
                                     const VersionedRecord& record);

  // One delivery pass over the targets that are due, on the calling thread
  // (the delivery thread's body; tests call it directly). Returns the
  // number of hints delivered.
  size_t DeliverOnce(const SendFunction& send, const StateFunction& state_of);

  struct Figures {
    uint64_t queued = 0;            // hints stored, every target
    uint64_t targets_retrying = 0;  // targets in backoff
    double max_lag_seconds = 0.0;   // age of the oldest hint
  };
  Figures GetFigures() const;
  // One target's backlog: what it has not received of the writes this node
  // accepted for it, the per-peer replication lag of docs/operations.md.
  struct TargetFigures {
    std::string target;  // node id
    uint64_t hints = 0;
    uint64_t bytes = 0;          // of encoded hints
    double lag_seconds = 0.0;    // age of its oldest hint
  };
  // Every target with hints queued, by node id.
  std::vector<TargetFigures> GetTargetFigures() const;
  // Hints queued for one target.
  size_t Pending(const std::string& target_node_id) const;

 private:
  struct Hint {
    uint64_t sequence;
    int64_t enqueued_unix_ms;
    uint32_t bytes;
  };
  struct Target {
    std::deque<Hint> hints;  // by sequence, oldest first
    uint64_t bytes = 0;
    absl::Duration backoff = absl::ZeroDuration();  // zero: the last attempt succeeded
    absl::Time next_attempt = absl::InfinitePast();
    uint64_t dropped = 0;  // since start, for rate-limited warnings
  };

  // Sends one batch of target's oldest hints; true when it was delivered.
  bool DeliverBatch(const std::string& target, const SendFunction& send, size_t* delivered)
      ABSL_LOCKS_EXCLUDED(mu_);
  void DropAll(const std::string& target) ABSL_LOCKS_EXCLUDED(mu_);
  // overflow: dropped for the bounds (warned about, rate-limited).
  void DropOldest(const std::string& target_id, Target* target, bool overflow)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The delivery thread's task: one DeliverOnce with the functions Start got.
  void DeliveryTask();

  // Constant after construction.
  engine::Engine* const engine_;
  const HintedHandoffOptions options_;
  ServerMetrics* const metrics_;
  // The per-target families (null without metrics); their collectors read this object.
  std::vector<CollectedFamily*> target_families_;

  mutable absl::Mutex mu_;
  std::map<std::string, Target> targets_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  SendFunction send_ ABSL_GUARDED_BY(mu_);
  StateFunction state_of_ ABSL_GUARDED_BY(mu_);

  // Runs DeliveryTask; its stopping() ends a pass. Last: it stops first.
  PeriodicWorker worker_;
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_HINTED_HANDOFF_H_
