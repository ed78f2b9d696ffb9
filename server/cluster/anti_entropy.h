// Anti-entropy: replicas find and repair the differences between their copies
// by comparing the engine's per-partition Merkle trees (docs/cluster.md,
// "Anti-entropy").
//
// One exchange ("round") with a peer:
//   1. one MerkleHashes request for the roots of every partition;
//   2. level by level, one request for the children of every node that
//      differs (across all partitions at once), down to the leaves;
//   3. per partition with differing leaves, the peer's keys of those leaves
//      (MerkleLeaf, paged by a byte budget) against the local ones;
//   4. records newer here are pushed (Replicate), records newer there are
//      pulled (ReadRecords) and applied with their timestamps (last write
//      wins), in batches.
// Only keys the ring places on the receiving side move: a key is pushed
// when the peer is one of its owners and pulled when this node is one, so a
// new owner fills up from old owners (rebalancing) through the same rounds.
// Bytes sent and received pass a token bucket (bytes_per_second).
//
// Thread-safety: every public method may be called from any thread. Rounds
// never overlap: the background thread's (a PeriodicWorker) and RunOnce's
// take turns.
#ifndef LOGKV_SERVER_CLUSTER_ANTI_ENTROPY_H_
#define LOGKV_SERVER_CLUSTER_ANTI_ENTROPY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "protocol/frame.h"
#include "server/cluster/membership.h"
#include "server/cluster/peer_transport.h"
#include "server/cluster/ring.h"
#include "server/core/periodic_worker.h"

namespace logkv::server {
class ServerMetrics;
class Counter;
class Gauge;
}  // namespace logkv::server

namespace logkv::server::cluster {

// ---- Handlers of the Merkle operations (registered for peer connections) --

// Most nodes one MerkleHashes request may ask for (8 MiB of hashes).
inline constexpr uint32_t kMaxMerkleNodesPerRequest = 1u << 20;

// MerkleHashes: the hashes of the nodes asked for, with the forest's leaf and
// partition counts, as a finished size-prefixed Response in builder.
// InvalidArgument (as the answer) for a partition or node out of range.
void HandleMerkleHashes(engine::Engine* engine, const protocol::Request& request,
                        flatbuffers::FlatBufferBuilder* builder);

// MerkleLeaf: the keys of the leaves asked for, after after_key, in key
// order, at most max_frame_bytes / 2 of them (at least one key); truncated
// says the budget ended the list.
void HandleMerkleLeaf(engine::Engine* engine, const protocol::Request& request,
                      uint32_t max_frame_bytes, flatbuffers::FlatBufferBuilder* builder);

// ---- The exchanges --------------------------------------------------------

struct AntiEntropyOptions {
  // Time between the starts of two passes over every live peer.
  absl::Duration interval = absl::Seconds(30);
  // The first pass starts this soon after Start, and a pass starts this soon
  // after a ring change (joins and leaves settle first).
  absl::Duration initial_delay = absl::Seconds(1);
  size_t replicas = 3;  // N: the length of a key's preference list
  // Bytes sent plus received per second over all exchanges; 0 = unlimited.
  uint64_t bytes_per_second = 8ull << 20;
  absl::Duration request_timeout = absl::Seconds(10);
  uint32_t max_frame_bytes = 64u << 20;
  // A Replicate request is closed at about this many bytes of records.
  uint32_t push_batch_bytes = 1u << 20;
  // Keys per ReadRecords request (their values come back in one frame).
  uint32_t pull_batch_keys = 128;
  // Whether a round also pushes records that are newer here. When every
  // node runs rounds (logkvd), pulling alone converges, and a node that
  // lost its data is filled once (by its own pulls, one peer after the
  // other) instead of by every peer at the same time.
  bool push = true;
};

// What the exchanges did: per round (RunOnce) or summed since start (Figures).
struct AntiEntropyFigures {
  uint64_t rounds = 0;  // exchanges with one peer, finished or failed
  uint64_t failed_rounds = 0;
  uint64_t requests = 0;  // requests sent to peers
  uint64_t partitions_compared = 0;
  uint64_t partitions_differing = 0;
  uint64_t leaves_differing = 0;
  uint64_t keys_compared = 0;  // keys of differing leaves, both sides, merged
  // Keys in differing leaves that neither side may repair because the ring
  // does not place them on the receiving side: the cost of comparing trees
  // that span several owner sets (docs/cluster.md, "Anti-entropy").
  uint64_t keys_not_owned = 0;
  uint64_t keys_pushed = 0;     // records the peer acknowledged
  uint64_t keys_pulled = 0;     // records applied here
  uint64_t bytes_sent = 0;      // request frames
  uint64_t bytes_received = 0;  // response frames
  double last_round_seconds = 0;
  double repair_keys_per_second = 0;  // of the last round that repaired keys

  void Add(const AntiEntropyFigures& round);
};

class AntiEntropy {
 public:
  using RingFunction = std::function<std::shared_ptr<const Ring>()>;
  using MembersFunction = std::function<std::vector<Member>()>;

  // engine must outlive this object; so must metrics when not null (the
  // Prometheus families are registered in its registry). ring: the current
  // ring (null: every key counts as owned by both sides). live_members: the
  // members to exchange with (this node among them or not; only Alive peers
  // are visited).
  AntiEntropy(engine::Engine* engine, PeerSendFunction send, RingFunction ring,
              MembersFunction live_members, std::string self_node_id, ServerMetrics* metrics,
              const AntiEntropyOptions& options);
  AntiEntropy(const AntiEntropy&) = delete;
  AntiEntropy& operator=(const AntiEntropy&) = delete;
  ~AntiEntropy();  // Stop()

  // Starts the background thread: a pass over every live peer after
  // initial_delay, then every interval. FailedPrecondition when it is
  // already running.
  absl::Status Start();
  // Ends a round in progress at its next request (RunOnce's and HandOff's
  // too: they fail with Cancelled until the next Start), joins the thread.
  // Idempotent; Start may follow.
  void Stop();

  // Membership changed (Membership::OnChange): a pass over every live peer
  // starts within initial_delay (the thread wakes for it), so a new owner
  // fills up and caught_up() waits for it.
  void NotifyRingChanged();
  // N as the cluster committed it (options.replicas until then); a change
  // counts as a ring change.
  void SetReplicas(size_t replicas);

  // One round with this peer now, from the calling thread (not an I/O loop);
  // waits for a background round in progress first. The round's figures, or
  // why it failed (NotFound: no live member has this id).
  absl::StatusOr<AntiEntropyFigures> RunOnce(const std::string& peer_node_id);

  // Summed since construction.
  AntiEntropyFigures Figures() const;

  // The last finished (not failed) round with one peer: how far the two
  // copies had drifted apart, per peer (Prometheus, label peer:
  // logkv_anti_entropy_peer_differing_leaves, _keys_repaired and
  // _last_round_timestamp_seconds).
  struct PeerRound {
    uint64_t leaves_differing = 0;
    uint64_t keys_repaired = 0;  // pushed plus pulled
    int64_t finished_unix_ms = 0;
  };
  std::map<std::string, PeerRound> PeerRounds() const;

  // Whether a round with every live peer finished without error since the
  // last ring change (or since start): the node then holds what its peers
  // held of its keys at those rounds. A coordinator may proxy reads of a
  // node that is not caught up.
  bool caught_up() const { return caught_up_.load(std::memory_order_acquire); }

  // Before a graceful leave: pushes to every live peer the records it will
  // own once this node is gone (ownership from the ring without this node),
  // so a write only this node holds is not lost with it. Stops at deadline.
  // FailedPrecondition when no other member is left to own the keys or none
  // is alive to take them; the first failure of a peer otherwise.
  // after: the ring without this node, as the committed configuration has
  // it (null: made from the current ring's other members).
  absl::Status HandOff(absl::Time deadline, std::shared_ptr<const Ring> after = nullptr);

  // Before a joining member is activated: pulls from each of peers (every
  // one must answer) the records this node owns under ring, the ring after
  // the change, so that it holds the newest record any of them held (and
  // so what a quorum of the old owners held). Stops at deadline.
  absl::Status Fill(std::shared_ptr<const Ring> ring, const std::vector<std::string>& peers,
                    absl::Time deadline);

 private:
  struct Round;

  // The background thread's task: one pass, then caught_up().
  void PassTask();
  // A pass over every live peer; true when every round succeeded.
  bool Pass();
  // ring: ownership to use (null: the current ring); hand_off: push only;
  // deadline: no request is sent after it, none waits past it;
  // yields_to_fills: the round ends at its next request while a fill runs.
  absl::StatusOr<AntiEntropyFigures> RunRound(const std::string& peer_id,
                                              const std::string& address,
                                              std::shared_ptr<const Ring> ring = nullptr,
                                              bool hand_off = false,
                                              absl::Time deadline = absl::InfiniteFuture(),
                                              bool yields_to_fills = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(round_mu_);
  // Takes round_mu_ (another round may hold it) unless deadline passes first.
  bool LockRoundsBefore(absl::Time deadline) ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true, round_mu_);
  absl::Status CompareTrees(Round* round);
  absl::Status ComparePartition(Round* round, uint32_t partition,
                                const std::vector<uint32_t>& leaves);
  absl::Status FlushPushes(Round* round);
  absl::Status FlushPulls(Round* round);
  // Reads keys' records from the peer and applies them here.
  absl::Status Pull(Round* round, absl::Span<const std::string> keys);
  // Sends one request and waits for its verified answer (whose status is Ok);
  // counts and rate-limits the bytes.
  absl::StatusOr<std::string> Call(Round* round, std::string request_frame)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Sleeps as long as the token bucket asks for bytes; false when stopping.
  bool Throttle(uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  void Account(const AntiEntropyFigures& round) ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  engine::Engine* const engine_;
  const PeerSendFunction send_;
  const RingFunction ring_;
  const MembersFunction live_members_;
  const std::string self_;
  const AntiEntropyOptions options_;
  std::atomic<size_t> replicas_;  // N: options_.replicas until SetReplicas
  Counter* rounds_counter_ = nullptr;
  Counter* failed_rounds_counter_ = nullptr;
  Counter* pushed_counter_ = nullptr;
  Counter* pulled_counter_ = nullptr;
  Counter* sent_counter_ = nullptr;
  Counter* received_counter_ = nullptr;
  Counter* not_owned_counter_ = nullptr;
  Gauge* last_round_gauge_ = nullptr;
  Gauge* repair_rate_gauge_ = nullptr;
  // The last round with each peer. Shared with the metrics' collectors,
  // which hold it weakly: once this object is gone they report nothing,
  // and it may go before the registry does.
  struct PeerRoundsBox {
    mutable absl::Mutex mu;
    std::map<std::string, PeerRound> rounds ABSL_GUARDED_BY(mu);
  };
  const std::shared_ptr<PeerRoundsBox> peer_rounds_ = std::make_shared<PeerRoundsBox>();

  std::atomic<bool> caught_up_{false};

  // Held for the length of a round: rounds take turns.
  absl::Mutex round_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // Fills running (a joining node's): the background pass yields to them,
  // ending its round at its next request and starting no other.
  std::atomic<int> fills_running_{0};

  mutable absl::Mutex mu_;
  // A ring change since the pass in progress started.
  bool ring_changed_ ABSL_GUARDED_BY(mu_) = false;
  // After a pass that failed (a peer's round failed, e.g. refused while the
  // two held different epochs for a moment), the next starts this soon:
  // initial_delay, doubling up to interval while passes keep failing.
  absl::Duration retry_delay_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  // Token bucket: the time at which the bytes accepted so far are paid for.
  absl::Time bucket_paid_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  AntiEntropyFigures totals_ ABSL_GUARDED_BY(mu_);

  // Runs PassTask; its stopping() ends rounds. Last: it stops first.
  PeriodicWorker worker_;
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_ANTI_ENTROPY_H_
