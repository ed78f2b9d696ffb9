// Batching of the coordinator's peer requests: the Replicate and meta-only
// ReadRecords requests a thread makes to one peer during one turn of its
// event loop go out as one request each, carrying every record (or key), and
// the answer is handed back record by record. A strong write under load is
// a meta-only read and two Replicates per write; batched, a turn of 20
// writes costs each peer one request of each kind instead of 20.
//
// Only a thread that flushes before it blocks may hold (a server loop, at
// the end of each turn; the peer transport's loop likewise): requests from
// any other thread, and reads with values (whose answers are budgeted by
// bytes: docs/cluster.md), are sent at once, alone. A batch ends at
// Limits::max_items items or Limits::max_bytes of keys and values (a single
// larger record goes alone), and its timeout is the shortest of its items';
// items are grouped by timeout first (longest first, a new batch when one
// is under half the batch's longest; in the order they came when none is
// under half of the longest), so an item close to its deadline cannot cut
// short the wait of items with plenty of time.
// A failed request fails each of its items with its status.
//
// Thread-safety: every method may be called from any thread. The held
// requests are per thread (and per batcher); callbacks run where the send
// function calls back (the transport's thread).
#ifndef LOGKV_SERVER_CLUSTER_REPLICA_BATCHER_H_
#define LOGKV_SERVER_CLUSTER_REPLICA_BATCHER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "absl/time/time.h"
#include "server/cluster/peer_transport.h"
#include "server/cluster/replica.h"
#include "server/metrics.h"

namespace logkv::server::cluster {

class ReplicaBatcher {
 public:
  using SendFunction = PeerSendFunction;
  // A replica's answer for one record: whether it holds that version or a
  // newer one, and the timestamp it holds (0: not told).
  struct Applied {
    bool applied = false;
    uint64_t held_timestamp = 0;
  };
  // Move-only: a callback that holds one shared pointer needs no allocation.
  using ReplicateDone = absl::AnyInvocable<void(absl::StatusOr<Applied>)>;
  // The record read has no key (it is the one asked for).
  using ReadDone = absl::AnyInvocable<void(absl::StatusOr<VersionedRecord>)>;
  struct Limits {
    size_t max_items = 256;
    // Keys and values per request; a quarter of a ReadRecords answer's
    // budget, so no key of a meta-only batch is answered as unknown.
    uint64_t max_bytes = kMaxRecordsAnswerBytes / 4;
  };

  explicit ReplicaBatcher(SendFunction send) : ReplicaBatcher(std::move(send), Limits{}) {}
  ReplicaBatcher(SendFunction send, Limits limits);
  ReplicaBatcher(const ReplicaBatcher&) = delete;
  ReplicaBatcher& operator=(const ReplicaBatcher&) = delete;
  // Sends what the destroying thread still holds for it. REQUIRES: no other
  // thread holds requests for it (StopHoldingOnThisThread).
  ~ReplicaBatcher();

  // Replicates record to the peer at address; done is called exactly once.
  // epoch: the configuration the operation was placed under (items of
  // different epochs go in different batches), or kSenderEpoch
  // (FinishPeerRequest).
  void Replicate(const std::string& address, std::shared_ptr<const VersionedRecord> record,
                 absl::Duration timeout, ReplicateDone done, uint64_t epoch = kSenderEpoch);
  // Reads key's record from the peer (its value too unless meta_only). The
  // key is shared, not copied, by the batches of the peers it goes to.
  void Read(const std::string& address, std::shared_ptr<const std::string> key, bool meta_only,
            absl::Duration timeout, ReadDone done, uint64_t epoch = kSenderEpoch);
  void Read(const std::string& address, std::string key, bool meta_only, absl::Duration timeout,
            ReadDone done, uint64_t epoch = kSenderEpoch) {
    Read(address, std::make_shared<const std::string>(std::move(key)), meta_only, timeout,
         std::move(done), epoch);
  }

  // From now on this thread's requests wait for Flush (or the end of
  // holding). The thread must call Flush before it blocks. A thread holds
  // for one batcher at a time: holding for this one ends (and flushes) its
  // holding for another.
  void HoldOnThisThread();
  // Sends what this thread holds for this batcher, again until nothing is
  // left (a callback run during the flush may add more).
  void Flush();
  // Flushes and returns the thread to immediate sends.
  void StopHoldingOnThisThread();

  // Requests sent and items carried (figures, tests).
  uint64_t requests_sent() const { return requests_sent_.load(std::memory_order_relaxed); }
  uint64_t items_sent() const { return items_sent_.load(std::memory_order_relaxed); }
  // Request frames built (tests): peers with the same items share them.
  uint64_t frames_built() const { return frames_built_.load(std::memory_order_relaxed); }
  // Counters (/metrics) to add the same figures to; null: none. REQUIRES:
  // before the first request.
  void set_counters(Counter* requests, Counter* items) {
    requests_counter_ = requests;
    items_counter_ = items;
  }
  // Called with the keys of a batch of reads answered, before their
  // callbacks run (which write the keys here, as a strong write's second
  // phase does): the engine's Prefetch. REQUIRES: before the first request.
  using PrefetchFunction = std::function<void(absl::Span<const absl::string_view> keys)>;
  void set_prefetch(PrefetchFunction prefetch) {
    prefetch_ = std::make_shared<const PrefetchFunction>(std::move(prefetch));
  }

 private:
  struct ReplicateItem {
    std::shared_ptr<const VersionedRecord> record;
    absl::Duration timeout;
    ReplicateDone done;
    uint64_t epoch = kSenderEpoch;
  };
  struct ReadItem {
    std::shared_ptr<const std::string> key;
    absl::Duration timeout;
    ReadDone done;
    uint64_t epoch = kSenderEpoch;
  };
  struct Pending {
    std::vector<ReplicateItem> replicates;
    std::vector<ReadItem> reads;  // meta-only
  };
  using PendingByAddress = absl::flat_hash_map<std::string, Pending>;
  struct Held {
    ReplicaBatcher* owner = nullptr;
    PendingByAddress pending;
  };
  static thread_local Held held_;

  // The frames of one peer's runs, kept for peers whose held items are the
  // same (SameItems): each run's frame is built once and copied to them.
  struct SharedFrames {
    std::vector<std::string> frames;  // one per run
    bool built = false;               // frames holds every run's: take them
    bool last = false;                // the last peer to take them: move them
    size_t next = 0;                  // the next run's
  };

  bool Holding() const { return held_.owner == this; }
  void Count(size_t items);
  // reuse: null, or the frames to keep (not built yet) or to take.
  void SendReplicates(const std::string& address, std::vector<ReplicateItem> items,
                      SharedFrames* reuse = nullptr);
  void SendReads(const std::string& address, std::vector<ReadItem> items, bool meta_only,
                 SharedFrames* reuse = nullptr);

  const SendFunction send_;
  const Limits limits_;
  std::atomic<uint64_t> requests_sent_{0};
  std::atomic<uint64_t> items_sent_{0};
  std::atomic<uint64_t> frames_built_{0};
  Counter* requests_counter_ = nullptr;
  Counter* items_counter_ = nullptr;
  // Shared with the answers' callbacks, which may outlive a reset of it.
  std::shared_ptr<const PrefetchFunction> prefetch_;
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_REPLICA_BATCHER_H_
