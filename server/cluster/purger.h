// The purger: what a replica drops once others are known to hold it
// (docs/cluster.md, "Ownership changes and garbage").
//
// Two kinds of records leave a node's engine through it, with
// engine::Engine::Forget (no tombstone, no replication, no change event):
//   - records of keys the ring no longer places on this node (a member
//     joined, or this node took a dead member's keys before it came back),
//     once every owner holds the same version or a newer one;
//   - tombstones older than the grace period on an owner, once every other
//     owner holds the tombstone (or a newer record, or nothing at all: it
//     collected the tombstone itself).
// Nothing is dropped on this node's word alone: each candidate is checked
// against every owner with a meta-only ReadRecords, and a candidate whose
// owner cannot be asked waits for a later sweep. Sweeps run only once the
// ring has not changed for ring_stable_for, so ownership read from a ring
// still settling does not move data twice, and a sweep during which the
// ring changes forgets nothing more: its owners were the old ring's. A node
// that expects peers (started with seeds) and has not seen one yet does not
// sweep: alone, it would confirm its tombstones with nobody. Records that owners lack are not
// sent from here: their anti-entropy rounds pull them (or a graceful leave
// pushes them), and the next sweep finds them confirmed.
//
// Thread-safety: every public method may be called from any thread; sweeps
// (the background thread's, a PeriodicWorker, and RunOnce's) never overlap.
#ifndef LOGKV_SERVER_CLUSTER_PURGER_H_
#define LOGKV_SERVER_CLUSTER_PURGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/cluster/anti_entropy.h"
#include "server/cluster/membership.h"
#include "server/cluster/replica.h"
#include "server/cluster/ring.h"
#include "server/core/periodic_worker.h"

namespace logkv::server {
class ServerMetrics;
class Counter;
class Gauge;
}  // namespace logkv::server

namespace logkv::server::cluster {

struct PurgerOptions {
  // Time between the starts of two sweeps over the whole index.
  absl::Duration interval = absl::Seconds(60);
  // A sweep is skipped while the ring changed less than this long ago.
  absl::Duration ring_stable_for = absl::Seconds(60);
  // How old (by its timestamp) a tombstone must be before owners collect it:
  // a replica that was away longer than this and still holds an older value
  // could bring the key back (docs/cluster.md).
  absl::Duration tombstone_grace = absl::Hours(24);
  size_t replicas = 3;  // N: the length of a key's preference list
  // Keys read from the index per page, and keys asked of one owner per
  // request (also bounded by bytes; see the .cc).
  uint32_t page_keys = 4096;
  uint32_t keys_per_request = 1024;
  absl::Duration request_timeout = absl::Seconds(10);
  // The node was started to join a cluster (--seeds): with a ring of itself
  // alone it does not sweep until it has seen another member.
  bool peers_expected = false;
};

// What sweeps did: per sweep (RunOnce) or summed since start (Figures).
struct PurgerFigures {
  uint64_t sweeps = 0;
  uint64_t sweeps_skipped = 0;  // the ring had changed too recently, or no peer seen yet
  uint64_t sweeps_cut_short = 0;  // the ring changed during the sweep
  uint64_t keys_listed = 0;     // index entries looked at
  uint64_t candidates = 0;      // not owned here, or tombstones past their grace
  uint64_t forgotten_not_owned = 0;
  uint64_t tombstones_collected = 0;
  uint64_t waiting = 0;  // candidates some owner did not (yet) confirm
  uint64_t requests = 0;
  uint64_t failed_requests = 0;
  double last_sweep_seconds = 0;

  void Add(const PurgerFigures& sweep);
};

class Purger {
 public:
  using RingFunction = std::function<std::shared_ptr<const Ring>()>;
  using MembersFunction = std::function<std::vector<Member>()>;

  // engine must outlive this object; so must metrics when not null. members:
  // the members whose addresses the owners are reached at (only Alive ones
  // are asked).
  Purger(engine::Engine* engine, PeerSendFunction send, RingFunction ring, MembersFunction members,
         std::string self_node_id, ServerMetrics* metrics, const PurgerOptions& options);
  Purger(const Purger&) = delete;
  Purger& operator=(const Purger&) = delete;
  ~Purger();  // Stop()

  // Starts the background thread: a sweep every interval. FailedPrecondition
  // when it is already running.
  absl::Status Start();
  // Ends a sweep in progress at its next request (RunOnce's too, until the
  // next Start), joins the thread. Idempotent; Start may follow.
  void Stop();

  // Membership changed: sweeps wait until the ring is stable again, and the
  // thread wakes for a sweep once it has been stable for ring_stable_for
  // (sooner if one was due), so keys this node no longer owns go without
  // waiting for the next interval.
  void NotifyRingChanged();
  // N as the cluster committed it (options.replicas until then); a change
  // counts as a ring change.
  void SetReplicas(size_t replicas);

  // One sweep now, from the calling thread (not an I/O loop); waits for a
  // background sweep in progress first. Skipped (sweeps_skipped = 1) while
  // the ring is not stable.
  absl::StatusOr<PurgerFigures> RunOnce();

  PurgerFigures Figures() const;

 private:
  struct Candidate {
    std::string key;
    uint64_t timestamp = 0;
    bool tombstone = false;
    bool owned = false;    // this node is an owner: a tombstone past its grace
    bool grace_passed = false;
    std::vector<std::string> owners;  // the other owners, to be asked
    size_t confirmations = 0;
    bool refused = false;  // an owner lacks this version, or could not be asked
  };

  // The background thread's task: one sweep.
  void SweepTask();
  absl::StatusOr<PurgerFigures> Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sweep_mu_);
  // Asks the owners about the candidates and forgets the confirmed ones,
  // unless the ring is no longer `ring` or changed after `start`: then it
  // forgets nothing and returns false.
  bool Settle(std::vector<Candidate>* candidates, const std::shared_ptr<const Ring>& ring,
              absl::Time start, PurgerFigures* figures);
  bool RingUnchangedSince(const std::shared_ptr<const Ring>& ring, absl::Time start) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // One meta-only ReadRecords to address; the records in key order.
  absl::StatusOr<std::vector<VersionedRecord>> ReadMeta(const std::string& address,
                                                        const std::vector<std::string>& keys,
                                                        PurgerFigures* figures);
  bool stopping() const ABSL_LOCKS_EXCLUDED(mu_);

  engine::Engine* const engine_;
  const PeerSendFunction send_;
  const RingFunction ring_;
  const MembersFunction members_;
  const std::string self_;
  const PurgerOptions options_;
  std::atomic<size_t> replicas_;  // N: options_.replicas until SetReplicas
  Counter* sweeps_counter_ = nullptr;
  Counter* not_owned_counter_ = nullptr;
  Counter* tombstones_counter_ = nullptr;
  Gauge* waiting_gauge_ = nullptr;
  Gauge* last_sweep_gauge_ = nullptr;

  absl::Mutex sweep_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // held for the length of a sweep
  bool saw_peers_ ABSL_GUARDED_BY(sweep_mu_) = false;  // a ring of more than this node

  mutable absl::Mutex mu_;
  absl::Time ring_changed_at_ ABSL_GUARDED_BY(mu_);
  PurgerFigures totals_ ABSL_GUARDED_BY(mu_);

  // Runs SweepTask; its stopping() ends sweeps. Last: it stops first.
  PeriodicWorker worker_;
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_PURGER_H_
