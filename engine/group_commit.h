// Group commit for --fsync=always: the engine's shards are made durable
// together, in rounds. A writer that waits for durability asks for a round
// for its shard (Request). A leader thread waits for the first request and,
// when the last round served more than one writer, for the group to gather
// (below); then every shard a writer asked for fdatasyncs its active
// segment, all at once: the leader syncs part 0 and one helper thread per
// other part syncs its own, so a round lasts as long as the slowest
// fdatasync, not the sum. Parts nobody asked for are left alone.
//
// Why one group for all shards, and why wait. Under a closed load (each
// client sends its next write once the last is answered) the writers a
// round released come back within a round trip. Started at the first of
// them, the next fdatasync would split them over several rounds; per shard,
// it would also split them by the shard their next key hashes to, so a
// per-shard count never knows how many are coming. Counted for the whole
// engine, the group that comes back is the one that left. So the leader
// waits until as many writers wait as the company (the largest group
// gathered since a wait last ended short of it), or until the last round's
// duration has passed (at most a millisecond): a lone writer (company 1)
// never waits, and when fewer come back (a client left, a burst of
// asynchronous writes is over) one round waits to its bound and the company
// becomes the group that round gathered. Measured: docs/performance.md,
// "Group commit".
//
// A round's parts are synced by SyncNow, which takes no shard lock, so a
// shard busy under its own lock (a first scan's key order, a sweep) does
// not hold up the others' writers; a slow fdatasync does, for its round.
//
// Thread-safety: every method may be called from any thread. The sync
// callback runs on the leader or a helper; what it runs (a shard answering
// its writers) must not wait for a later round.
#ifndef LOGKV_ENGINE_GROUP_COMMIT_H_
#define LOGKV_ENGINE_GROUP_COMMIT_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace logkv::engine {

class GroupCommit {
 public:
  // How long the leader may wait for its company: the last round's
  // duration, within these bounds (tests fix it).
  struct Delay {
    absl::Duration min = absl::ZeroDuration();
    absl::Duration max = absl::Milliseconds(1);
  };

  // sync(part), for part in [0, parts): syncs that part (a shard) if it has
  // unsynced writes and answers its waiting writers; a failure is the
  // part's to record and report.
  GroupCommit(size_t parts, std::function<void(size_t part)> sync);
  GroupCommit(size_t parts, std::function<void(size_t part)> sync, Delay delay);
  ~GroupCommit();  // Stop()
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  // What the rounds did, for metrics and tests.
  struct Counts {
    uint64_t rounds = 0;
    uint64_t writers = 0;          // requests the rounds served
    uint64_t waits = 0;            // rounds that waited for their company
    uint64_t waits_cut_short = 0;  // ... and started without all of it
  };
  Counts counts();

  // Starts the leader and the helpers.
  void Start();
  // One writer of part (< parts) waits for the next round.
  void Request(size_t part);
  // Ends after the round in progress and joins the threads. Writers still
  // waiting are the caller's (Engine::Close syncs every shard once more).
  void Stop();

 private:
  void Lead();
  void Help(size_t part);

  const size_t parts_;
  const std::function<void(size_t)> sync_;
  const Delay delay_;
  std::vector<std::thread> threads_;

  absl::Mutex mu_;
  absl::CondVar requested_;  // the leader waits here for writers
  absl::CondVar started_;    // helpers wait here for a round
  absl::CondVar finished_;   // the leader waits here for the helpers
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  Counts counts_ ABSL_GUARDED_BY(mu_);
  uint64_t requests_ ABSL_GUARDED_BY(mu_) = 0;    // since the last round started
  std::vector<bool> asked_ ABSL_GUARDED_BY(mu_);  // per part, since then
  uint64_t company_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration last_round_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  std::vector<bool> go_ ABSL_GUARDED_BY(mu_);     // per helper: sync in this round
  size_t helpers_busy_ ABSL_GUARDED_BY(mu_) = 0;  // in the current round
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_GROUP_COMMIT_H_
