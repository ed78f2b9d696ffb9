// The coordinator of client operations over N replicas (server/cluster/
// coordinator.h has the contract): any node coordinates any key.
//
// Placement: a key's owners are the first min(--replicas, members) distinct
// members of the ring clockwise from it (Ring::PreferenceList); the first is
// its primary. The local engine is written and read directly when this node
// is an owner; other owners through the PeerTransport (Replicate,
// ReadRecords; server/cluster/replica.h has the replica side).
//
// Acknowledgements asked for, per request:
//   Eventual              W = 1, R = 1
//   Strong                W = R = majority of N, linearizable (below)
//   Default               W = --w, R = --r (0: 1), capped at N
//
// Writes are stamped by the coordinator with a cluster timestamp
// (ClusterClock); replicas keep the newest (last write wins). A write
// answers once W owners applied it; when W is not reached within
// write_wait it answers Unavailable, naming the owners that did apply it
// (nothing is rolled back: they keep it, and the others get it from hinted
// handoff). Owners that fail, time out, or are known dead (not even tried)
// get a hint.
//
// Reads ask R owners (the local engine first when it is one, then live
// owners in preference order, the next one when one fails) and answer the
// newest record; a tombstone newer than a value means not found. Stale
// owners among those asked are repaired with Replicate: in the background
// for Eventual and Default, before answering for Strong.
//
// While the membership changes (a Placement with a next ring: a member
// joins or leaves), a key has two owner sets, before and after the change.
// A strong operation then needs a majority of each (joint quorums, as Raft's
// joint consensus); writes of every consistency go to both sets' owners.
// With the fill of new owners and the epoch barrier (docs/cluster.md,
// "Membership changes") this keeps strong operations linearizable through
// joins and decommissions. Each strong operation is counted under the
// epoch of the placement it used until it answers (InFlightBefore), so a
// barrier can wait until none placed under an older epoch is left. An
// operation an owner refuses as placed under an older configuration than
// its own is run again once this node holds a newer one, within the write
// wait (ReplicaCoordinatorOptions::epoch_poll).
//
// Strong is linearizable for single-key get, put and delete (ABD): a
// strong write first reads the key's timestamps from a majority and is
// stamped above them, then sent to every owner and acknowledged by a
// majority; a strong read reads a majority and, unless a majority already
// holds the newest record, writes it back until one does before answering
// (docs/cluster.md, "Strong writes").
//
// Lifetimes: engine, the send function's transport, the ring and lookup
// functions' membership, metrics and handoff must outlive the coordinator,
// and every operation must have finished (the transport stopped: it fails
// what is pending) before it is destroyed.
//
// Thread-safety: every method may be called from any thread at once;
// callbacks run on the thread that completes the operation (the caller's
// for answers from the local engine alone, else the one whose loop got the
// peers' answers: a server loop attached to the transport, which sent them
// from its own connections, or the transport's thread; or the engine's
// sync thread). No call blocks: each operation keeps a small state
// object with its own mutex, and the write wait is the transport's
// per-request timeout.
#ifndef LOGKV_SERVER_CLUSTER_REPLICA_COORDINATOR_H_
#define LOGKV_SERVER_CLUSTER_REPLICA_COORDINATOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "server/cluster/hinted_handoff.h"
#include "server/cluster/peer_transport.h"
#include "server/cluster/replica.h"
#include "server/cluster/replica_batcher.h"
#include "server/cluster/ring.h"
#include "server/core/coordinator.h"
#include "server/metrics.h"

namespace logkv::server::cluster {

// ---- Cluster timestamps ----------------------------------------------------
//
// A cluster timestamp is the engine's hybrid-logical-clock form, (unix ms <<
// 16) | logical, whose low 8 bits are the stamping coordinator's node tag:
//
//   bits 63..16  unix milliseconds    bits 15..8  logical counter    bits 7..0  node tag
//
// Two coordinators with different tags never produce the same timestamp, so
// "last write wins" never has to choose between two different writes with
// equal timestamps (the node id tie-break of DESIGN.md, folded into the
// number: the engine compares plain integers). Tags are assigned from the
// ring's members (AssignNodeTag): each member's tag is XXH3-64(node id) &
// 0xff, and members whose hashes collide take the next free tag in order of
// (hash, node id). Residual risk: two nodes that collide and transiently
// hold different views of the membership (one knows a member the other
// does not yet) can share a tag for that window, and clusters of more than
// 256 members share tags; a duplicate timestamp then also needs both to
// stamp the same key in the same millisecond with the same logical count.
inline constexpr int kNodeTagBits = 8;
inline constexpr uint64_t kNodeTagMask = (uint64_t{1} << kNodeTagBits) - 1;

// XXH3-64(node_id) & 0xff.
uint8_t HashNodeTag(absl::string_view node_id);
// self's tag among members (see above); when self is not a member (a node
// that left and still coordinates as a gateway), the first tag from
// HashNodeTag(self) on that no member has.
uint8_t AssignNodeTag(absl::string_view self, absl::Span<const std::string> members);

// Issues cluster timestamps: monotonic (each greater than every one issued
// or observed before), following wall-clock time, low bits = the node tag.
//
// Thread-safety: every method may be called from any thread at once.
class ClusterClock {
 public:
  // clock must outlive this ClusterClock.
  ClusterClock(engine::Clock* clock, uint8_t tag) : clock_(clock), tag_(tag) {}
  ClusterClock(const ClusterClock&) = delete;
  ClusterClock& operator=(const ClusterClock&) = delete;

  uint64_t Now();
  // Moves the clock past a timestamp seen elsewhere.
  void Observe(uint64_t timestamp);
  void set_tag(uint8_t tag) { tag_.store(tag, std::memory_order_relaxed); }
  uint8_t tag() const { return tag_.load(std::memory_order_relaxed); }

 private:
  engine::Clock* const clock_;
  std::atomic<uint8_t> tag_;
  std::atomic<uint64_t> last_{0};
};

// ---- The coordinator ---------------------------------------------------------

struct ReplicaCoordinatorOptions {
  size_t replicas = 3;      // N (--replicas), capped at the ring's size
  size_t write_acks = 0;    // W of Consistency::Default (--w); 0 = 1
  size_t read_acks = 0;     // R of Consistency::Default (--r); 0 = 1
  absl::Duration write_wait = absl::Seconds(3);  // --write-wait
  engine::Clock* clock = nullptr;  // default engine::SystemClock(); must outlive
  // The peers' frame limit (--max-frame-bytes): batched peer requests stay
  // under half of it.
  uint32_t max_frame_bytes = 64u << 20;
  // Runs a task after a delay (PeerTransport::RunAfter; false when it will
  // not). With it, a client write whose W acknowledgements are not in yet
  // sends again, every owner_retry_delay until the write wait ends, to an
  // owner that failed or is down (it may be restarting), before giving it a
  // hint. Unset: an owner that fails is given up at once.
  std::function<bool(absl::Duration, std::function<void()>)> run_after;
  absl::Duration owner_retry_delay = absl::Milliseconds(100);
  // With run_after: an operation an owner refused as placed under an older
  // configuration than the owner's ("stale configuration") waits, looking
  // every epoch_poll until the write wait ends, for this node to hold a
  // newer one, and then runs again under it (reads from the start, writes
  // with the timestamp they were stamped with). Unset run_after: the
  // refusal is the answer.
  absl::Duration epoch_poll = absl::Milliseconds(5);
};

// What the coordinator needs to know of a member.
struct PeerInfo {
  std::string address;       // binary-protocol host:port
  std::string http_address;  // "" = none
  bool alive = false;        // Alive or Suspect
};

class ReplicaCoordinator final : public Coordinator {
 public:
  // The current ring (never null once the node runs; Membership::ring).
  using RingFunction = std::function<std::shared_ptr<const Ring>()>;
  // The placement of the committed configuration (ring.h).
  using PlacementFunction = std::function<Placement()>;
  // A number that changes whenever the placement function's answer may
  // (the committed configuration's epoch), read without a lock.
  using GenerationFunction = std::function<uint64_t()>;
  // A member by node id; false when unknown.
  using PeerLookup = std::function<bool(const std::string& node_id, PeerInfo* info)>;
  using SendFunction = PeerSendFunction;

  // handoff and metrics may be null (no hints, no figures).
  ReplicaCoordinator(engine::Engine* local, SendFunction send, RingFunction ring,
                     PeerLookup lookup, std::string self_node_id, ServerMetrics* metrics,
                     HintedHandoff* handoff, const ReplicaCoordinatorOptions& options);
  ReplicaCoordinator(engine::Engine* local, PeerTransport* transport, RingFunction ring,
                     PeerLookup lookup, std::string self_node_id, ServerMetrics* metrics,
                     HintedHandoff* handoff, const ReplicaCoordinatorOptions& options)
      : ReplicaCoordinator(local, SendFromLoops(transport), std::move(ring), std::move(lookup),
                           std::move(self_node_id), metrics, handoff, options) {}
  ReplicaCoordinator(const ReplicaCoordinator&) = delete;
  ReplicaCoordinator& operator=(const ReplicaCoordinator&) = delete;
  ~ReplicaCoordinator() override = default;

  bool Active() const override;
  void Get(std::string key, protocol::Consistency consistency, ReadDone done) override;
  void Write(std::string key, std::optional<std::string> value, int64_t ttl_ms,
             protocol::Consistency consistency, WriteDone done) override;
  std::vector<std::string> Owners(absl::string_view key) const override;

  // Replaces the node id given at construction, for a node whose id is
  // known only once its port is bound. REQUIRES: before any operation and
  // before the ring first has a member (in main: before ClusterNode::Start,
  // which publishes the membership the ring function reads).
  void set_self_node_id(std::string node_id);

  // Whether this node's copy is complete (anti-entropy caught up since the
  // last membership change). While it is not, reads ask the other owners
  // first and this node's engine only when they are not enough, so a node
  // that is still filling up does not answer "not found" for what it lacks.
  // Unset: always complete.
  void set_caught_up(std::function<bool()> caught_up) ABSL_LOCKS_EXCLUDED(caught_up_mu_);

  // This node lost its data (--replace) and is not refilled yet: its engine
  // counts in no quorum it coordinates (it may miss writes it acknowledged
  // before the loss, which a quorum of the other owners alone holds).
  void SetRefilling(bool refilling) { refilling_.store(refilling, std::memory_order_release); }

  // Whether this node's membership view is confirmed (Membership::
  // ViewConfirmed). Until it is, the coordinator is Active (so nothing is
  // served from a view of one), operations that need a quorum (Strong, or
  // --w / --r above 1) fail with Unavailable, and the others use the view
  // as it is. Unset: always confirmed.
  void set_view_confirmed(std::function<bool()> confirmed) ABSL_LOCKS_EXCLUDED(caught_up_mu_);

  // Where Get and Write place keys: the committed configuration's rings
  // (two during a membership change) and its epoch. Unset: the ring
  // function's ring alone, at epoch 0.
  //
  // With generation, each thread keeps the placement it read last and calls
  // placement again only once generation() differs from when it read it: no
  // lock and no copy of the configuration per operation. generation must
  // change no later than a newer placement can be learned any other way
  // (an epoch barrier reads the epoch, then counts operations in flight:
  // one counted after it must see the new generation). Active() then reads
  // the placement's ring, which must be the ring function's.
  // REQUIRES: before any operation.
  void set_placement(PlacementFunction placement, GenerationFunction generation = nullptr);

  // A number that moves whenever the lookup's answer for a node may
  // (Membership::version), read without a lock; with generation (above)
  // it keys each thread's copies of the lookup's answers, which are used
  // until either moves. An answer looked up after both were read must be
  // at least as new as they are. Unset: the lookup is asked every time.
  // REQUIRES: before any operation.
  void set_peer_version(GenerationFunction version);

  // Strong (quorum) operations placed under an epoch below this one that
  // have not answered yet.
  size_t InFlightBefore(uint64_t epoch) const ABSL_LOCKS_EXCLUDED(in_flight_mu_);

  // A member's HTTP address when it advertises one, else its node id (for
  // answers such as primary_node).
  std::string HttpAddressOf(const std::string& node_id) const;

  // Batches the peer requests of a loop turn: a thread that runs an event
  // loop holds (ReplicaBatcher::HoldOnThisThread) and flushes every turn.
  ReplicaBatcher* batcher() { return &batcher_; }

  ClusterClock* clock() { return &clock_; }

 private:
  // One owner's answer to a read. The record has no key (the read's key:
  // not copied for each answer).
  struct Reply {
    std::string node_id;
    VersionedRecord record;
  };
  // Node ids (or their addresses, or "node: why" lines) of one operation:
  // one per owner, so for the usual N of 3 the list needs no allocation of
  // its own (a longer list, as during a membership change, allocates).
  using NodeList = absl::InlinedVector<std::string, 3>;
  // Replies are moved from state to callback to callback: a vector moves
  // by its pointer (inline storage would move each record).
  using Replies = std::vector<Reply>;
  struct ReadState;
  struct SendState;
  struct WriteOp;
  struct ReadOp;
  using RepliesDone = absl::AnyInvocable<void(absl::StatusOr<Replies>)>;
  // What a send to owners came to. reached: need acks arrived; applied: the
  // owners that applied (so far); failures: "node: why" of those that did
  // not (so far); local: this node's write, when it was a target.
  struct SendOutcome {
    bool reached = false;
    std::string needed;  // when not reached: what was (Need::Describe)
    NodeList applied;
    NodeList failures;
    std::optional<engine::WriteResult> local;
    bool stale = false;  // a target refused it as placed under an older configuration
    // The peers among them, when the send is a client write's (hint): the
    // write hints them once it is over, unless it is placed again.
    NodeList stale_peers;
  };
  using SendDone = absl::AnyInvocable<void(SendOutcome outcome)>;

  // A list of owners, shared (not copied) by an operation's states and
  // callbacks.
  using Names = std::shared_ptr<const std::vector<std::string>>;
  // The acknowledgements an operation needs: count of the members of each
  // group (one group; two, before and after, during a membership change).
  struct Need {
    struct Group {
      Names members;
      size_t count = 0;
    };
    absl::InlinedVector<Group, 2> groups;
    // One group, and it lists every node the operation asks (the nodes
    // MetBy is given are its members): MetBy counts them.
    bool whole = false;

    // drawn_from: the list the operation's nodes come from (whole when it
    // is members itself).
    static Need Of(Names members, size_t count, const Names& drawn_from);
    // REQUIRES: nodes are distinct.
    bool MetBy(absl::Span<const std::string> nodes) const;
    bool MetBy(absl::Span<const Reply> replies) const;  // by the replies' nodes
    std::string Describe() const;  // "2 of [a, b, c] and 2 of [a, b, d]"
  };
  // A key's owners under a placement: every owner once (the current ring's
  // first, in preference order), and each ring's owners (one group, the
  // same list as all; or two during a change).
  struct KeyOwners {
    Names all;
    absl::InlinedVector<Names, 2> groups;
  };

  // From this thread's owner lists by ring point (built on a miss); the
  // lists are shared with that cache. REQUIRES: placement.ring has a member.
  KeyOwners OwnersOf(const Placement& placement, absl::string_view key) const;
  // The owners of the keys on a point of placement.ring and (next_point:
  // during a change) one of placement.next (Ring::PointOf). REQUIRES: the
  // points are those rings'.
  static KeyOwners OwnersAt(const Placement& placement, size_t replicas, size_t point,
                            std::optional<size_t> next_point);
  Placement CurrentPlacement() const;
  // REQUIRES: generation_ set. This thread's placement under the current
  // generation, read again when the generation changed. The reference is
  // good until this thread's next call (use it before calling out).
  const Placement& CachedPlacement() const;
  // Counts an operation under its epoch (InFlightBefore) until it is
  // released or destroyed. Move-only; an empty ticket counts nothing.
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& other) noexcept
        : coordinator_(std::exchange(other.coordinator_, nullptr)), epoch_(other.epoch_) {}
    Ticket& operator=(Ticket&& other) noexcept;
    ~Ticket() { Release(); }
    void Release();

   private:
    friend class ReplicaCoordinator;
    Ticket(ReplicaCoordinator* coordinator, uint64_t epoch)
        : coordinator_(coordinator), epoch_(epoch) {}
    ReplicaCoordinator* coordinator_ = nullptr;
    uint64_t epoch_ = 0;
  };
  // The placement of a quorum operation, counted (ticket) under its epoch
  // so that an epoch barrier cannot miss it.
  Placement TrackedPlacement(Ticket* ticket) ABSL_LOCKS_EXCLUDED(in_flight_mu_);
  // A majority of each group.
  static Need Majorities(const KeyOwners& owners);
  // The owners that answered.
  static NodeList NodesOf(absl::Span<const Reply> replies);
  // Counts an operation under epoch until the returned ticket is released.
  Ticket Track(uint64_t epoch) ABSL_LOCKS_EXCLUDED(in_flight_mu_);
  bool ViewConfirmed() const ABSL_LOCKS_EXCLUDED(caught_up_mu_);
  std::atomic<bool> refilling_{false};  // SetRefilling
  // Whether this node's copy is complete (set_caught_up).
  bool LocalCopyComplete() const ABSL_LOCKS_EXCLUDED(caught_up_mu_);
  // Whether an operation of this consistency needs a quorum (and so a
  // confirmed view).
  bool NeedsQuorum(protocol::Consistency consistency, bool write) const;
  void RefreshTag(const Placement& placement) ABSL_LOCKS_EXCLUDED(tag_mu_);
  size_t WriteAcks(protocol::Consistency consistency, size_t owners) const;
  size_t ReadAcks(protocol::Consistency consistency, size_t owners) const;

  // Reads key from need owners (candidates in order, the next on failure).
  // epoch: the configuration a quorum operation was placed under (replicas,
  // and this node, refuse it once they hold a newer one), or kSenderEpoch.
  // key is shared with the requests to peers, not copied for each.
  void ReadQuorum(const std::vector<std::string>& owners, std::shared_ptr<const std::string> key,
                  bool with_value, Need need, absl::Time deadline, uint64_t epoch,
                  RepliesDone done);
  // Asks the next candidate. looked_up: at the address ReadQuorum looked up
  // moments before (its first asks); else (an ask after a failure) the
  // candidate is looked up again, as a restarted member may be on another
  // port.
  void ReadNext(const std::shared_ptr<ReadState>& state, bool looked_up);
  void OnRead(const std::shared_ptr<ReadState>& state, const std::string& node,
              absl::StatusOr<VersionedRecord> record);

  // Sends record to targets; done once need of them applied it, or all
  // answered without. hint: failed owners get a hint. An owner holding a
  // newer write counts as having applied it (last write wins orders it).
  void SendToOwners(absl::Span<const std::string> targets,
                    std::shared_ptr<const VersionedRecord> record, Need need, absl::Time deadline,
                    bool hint, uint64_t epoch, SendDone done);
  // Whether an operation placed under epoch may still run here: not once
  // this node holds a newer configuration (kSenderEpoch: always).
  absl::Status CheckEpoch(uint64_t epoch) const;
  // Sends state's record to one of its targets (the local engine for this
  // node); now is the time it is sent.
  void SendToOwner(const std::shared_ptr<SendState>& state, size_t target, absl::Time now);
  // The result of this node's own write of state's record, passed to OnSent.
  void OnWrittenHere(const std::shared_ptr<SendState>& state,
                     const absl::StatusOr<engine::WriteResult>& result);
  // A member's binary address and whether it is alive (lookup_, through
  // this thread's copies of its answers under peer_version_); false when
  // unknown.
  bool Lookup(const std::string& node_id, std::string* address, bool* alive) const;
  // Queues record for node in the hinted handoff (when there is one).
  void Hint(const std::string& node, const VersionedRecord& record);
  // held_timestamp: what the owner holds for the key after the write (0 unknown).
  void OnSent(const std::shared_ptr<SendState>& state, const std::string& node,
              const absl::Status& status, std::optional<engine::WriteResult> local,
              uint64_t held_timestamp);

  // Places op's write under the current configuration (its owners, what
  // it needs of them, its epoch), stamps it unless it was stamped under an
  // older one, and sends it.
  void PlaceWrite(std::shared_ptr<WriteOp> op);
  // Sends op's stamped write to its owners and answers once its need
  // applied it.
  void WriteStamped(std::shared_ptr<WriteOp> op);
  // A write an owner refused as stale: placed again once this node holds a
  // newer configuration than the one it was placed under, else answered
  // Unavailable with why.
  void PlaceWriteAgain(std::shared_ptr<WriteOp> op, std::string why);
  // Get with the deadline of the read's first attempt.
  void GetBy(std::string key, protocol::Consistency consistency, absl::Time deadline,
             ReadDone done);
  // Answers op's read, or one an owner refused as stale (Aborted) reads
  // again from the start once this node holds a newer configuration than
  // placed_epoch, the one it was placed under.
  void AnswerRead(const std::shared_ptr<ReadOp>& op, uint64_t placed_epoch,
                  absl::StatusOr<ReadResult> result);
  // then(true) once this node holds a configuration newer than epoch
  // (looked at now, then every epoch_poll by one task for every operation
  // waiting, through run_after); then(false) when deadline comes first
  // (less than an epoch_poll left) or nothing can run later.
  void AwaitNewerEpoch(uint64_t epoch, absl::Time deadline, std::function<void(bool)> then)
      ABSL_LOCKS_EXCLUDED(waiters_mu_);
  // The epoch_poll task: answers the waiters whose wait is over, and runs
  // again while some are left.
  void PollEpoch() ABSL_LOCKS_EXCLUDED(waiters_mu_);
  // Asks run_after for the next PollEpoch; when it will not run it, every
  // waiter is answered.
  void SchedulePoll() ABSL_LOCKS_EXCLUDED(waiters_mu_);
  // Answered Aborted when an owner's refusal as stale made it fail
  // (AnswerRead runs it again), else Unavailable.
  void FinishRead(KeyOwners owners, absl::string_view key, Replies replies, bool strong,
                  absl::Time deadline, uint64_t epoch, ReadDone done);

  // Constant after construction.
  engine::Engine* const local_;
  ReplicaBatcher batcher_;  // every peer request goes through it
  const RingFunction ring_;
  const PeerLookup lookup_;
  std::string self_;  // constant once operations begin (set_self_node_id)
  mutable absl::Mutex caught_up_mu_;
  std::function<bool()> caught_up_ ABSL_GUARDED_BY(caught_up_mu_);
  std::function<bool()> view_confirmed_ ABSL_GUARDED_BY(caught_up_mu_);
  // Once confirmed a view stays confirmed: no lock per request after that.
  mutable std::atomic<bool> view_confirmed_seen_{false};
  ServerMetrics* const metrics_;
  HintedHandoff* const handoff_;
  const ReplicaCoordinatorOptions options_;

  PlacementFunction placement_;    // set before operations begin
  GenerationFunction generation_;  // the same; unset: placement_ per operation
  GenerationFunction peer_version_;  // set before operations begin, or never
  // Tells this coordinator's entries in a thread's caches from those of one
  // destroyed before at the same address.
  const uint64_t instance_;

  // Operations waiting for a newer configuration (AwaitNewerEpoch).
  struct EpochWaiter {
    uint64_t epoch;  // newer than this
    absl::Time deadline;
    std::function<void(bool)> then;
  };
  absl::Mutex waiters_mu_;
  std::vector<EpochWaiter> waiters_ ABSL_GUARDED_BY(waiters_mu_);
  bool polling_ ABSL_GUARDED_BY(waiters_mu_) = false;  // a PollEpoch is scheduled

  mutable absl::Mutex in_flight_mu_;
  std::map<uint64_t, size_t> in_flight_ ABSL_GUARDED_BY(in_flight_mu_);  // by epoch

  ClusterClock clock_;
  absl::Mutex tag_mu_;
  uint64_t tagged_epoch_ ABSL_GUARDED_BY(tag_mu_) = 0;
  std::shared_ptr<const Ring> tagged_ring_ ABSL_GUARDED_BY(tag_mu_);
  std::shared_ptr<const Ring> tagged_next_ ABSL_GUARDED_BY(tag_mu_);
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_REPLICA_COORDINATOR_H_
