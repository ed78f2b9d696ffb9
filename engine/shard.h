// One shard of the engine: its own segmented log, index and lock, so shards
// never contend. Split across files by concern: shard.cc (reads, writes,
// durability, change feed, scan), recovery.cc (start-up), compaction.cc
// (compaction, hint files, TTL sweeping).
//
// Thread-safety: every public method may be called from any thread.
// Reads take mu_ shared; writes, rolls, sweeps and compaction's copy batches
// take it exclusively. sync_mu_ guards the durability bookkeeping so waiting
// writers never hold mu_. compaction_mu_ lets one compaction run at a time.
#ifndef LOGKV_ENGINE_SHARD_H_
#define LOGKV_ENGINE_SHARD_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include "absl/strings/string_view.h"
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/group_commit.h"
#include "engine/hlc.h"
#include "engine/key_index.h"
#include "engine/log_record.h"
#include "engine/merkle.h"
#include "engine/segment.h"
#include "engine/version_chains.h"

namespace logkv::engine {

// What every shard shares; owned by the Engine, which outlives its shards.
struct ShardContext {
  const Options* options;
  FileSystem* fs;
  Clock* clock;
  HybridClock* hlc;
  MerkleForest* merkle;
  // Under kAlways, the engine's group commit, which syncs every shard in
  // rounds; null otherwise (under kInterval each shard's SyncLoop syncs it).
  GroupCommit* group_commit = nullptr;
  void Log(LogLevel level, absl::string_view message) const;
};

// Counters read by Stats; relaxed atomics, written under various locks.
struct ShardCounters {
  std::atomic<uint64_t> puts{0}, deletes{0}, gets{0};
  std::atomic<uint64_t> fsyncs{0}, fsync_total_us{0};
  std::atomic<uint64_t> compactions{0}, compaction_bytes_read{0}, compaction_bytes_written{0},
      compaction_bytes_reclaimed{0};
  std::atomic<bool> compaction_running{false};
  std::atomic<uint64_t> compaction_progress_bytes{0}, compaction_total_bytes{0};
  std::atomic<uint64_t> expired_swept{0}, tombstones_dropped{0}, forgotten{0};
  std::atomic<uint64_t> recovered_from_hints{0}, recovered_by_scan{0}, recovered_from_snapshot{0};
  std::atomic<uint64_t> recovery_reserved_entries{0}, checkpoints_written{0};
  std::atomic<uint64_t> torn_bytes_truncated{0}, torn_segments_removed{0};
  std::atomic<uint64_t> repaired_bytes_skipped{0}, repaired_segments{0},
      repaired_segments_set_aside{0};
  std::atomic<uint64_t> value_bytes_in{0}, value_bytes_stored{0}, values_compressed{0},
      values_compression_skipped{0}, values_decompressed{0}, compress_cpu_ns{0},
      decompress_cpu_ns{0};
  std::atomic<uint64_t> feed_records_decoded{0};
};

class Shard {
 public:
  Shard(const ShardContext& context, uint32_t shard_id, std::string directory);
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  // Loads the shard from disk; appends continue in the newest segment when
  // it has room, else in a fresh one.
  absl::Status Open();
  // Seals the active segment and writes missing hint files, then the index
  // snapshot (Options::index_snapshot_min_entries). No writes after.
  absl::Status Close();

  absl::Status Get(const KeyRef& key, std::string* value_out, ValueMeta* meta);
  absl::StatusOr<KeyRecord> GetRecord(const KeyRef& key, bool with_value);
  // Engine::Prefetch for keys of this shard.
  void Prefetch(absl::Span<const KeyRef> keys) ABSL_LOCKS_EXCLUDED(mu_);
  // The last sequence a change-feed reader may see: the durable one under
  // FsyncPolicy::kAlways, else every appended one (UINT64_MAX).
  uint64_t ReadableThrough() ABSL_LOCKS_EXCLUDED(sync_mu_);
  // Whether the key is part of the Merkle summary (Options::merkle_excluded_prefixes).
  // Every write asks (for the Merkle summary and the key counts), so a key
  // whose first byte begins no excluded prefix (all of a client's keys, with
  // the server's own prefixes starting with a NUL byte) is answered by one
  // table lookup, without comparing prefixes.
  bool Summarised(absl::string_view key) const {
    if (!key.empty() && !excluded_first_bytes_[static_cast<uint8_t>(key[0])]) return true;
    for (const std::string& prefix : options_.merkle_excluded_prefixes) {
      if (key.substr(0, prefix.size()) == prefix) return false;
    }
    return true;
  }
  absl::StatusOr<Record> GetVersion(const KeyRef& key, uint64_t version);

  // Appends a Put or Delete. On success *durable_after is the sequence number
  // that must be synced before the write may be acknowledged under kAlways.
  absl::StatusOr<WriteResult> Write(format::RecordType type, const KeyRef& key,
                                    absl::string_view value, const WriteOptions& options);

  // Drops the key from this store if its newest record still has this
  // timestamp: appends a Forget record and removes the index entry. Returns
  // whether it did. Not a change-feed event, and not waited on for
  // durability (a forget lost in a crash is only asked for again).
  absl::StatusOr<bool> Forget(const KeyRef& key, uint64_t timestamp);

  // Appends at most limit records (live and tombstoned, Summarised keys only)
  // to out, starting at entry id from_id; returns the id to continue from,
  // or KeyIndex::kNoEntry when the index is done. Entries added or removed
  // meanwhile may be missed or listed twice.
  uint32_t ListKeys(uint32_t from_id, size_t limit, std::vector<Engine::LeafKey>* out);

  // Durability (kAlways): block until sequence is synced, or register a
  // callback run once it is (by the group commit's round that synced it).
  absl::Status WaitDurable(uint64_t sequence);
  void NotifyWhenDurable(uint64_t sequence, std::function<void(absl::Status)> done);
  // Syncs what was appended and not yet synced, without taking mu_. Called
  // by the group commit, the interval sync thread and
  // by Engine::Sync. Returns whether there were waiters or unsynced appends.
  absl::Status SyncNow();
  // The shard's sync thread under kInterval (kAlways has the group commit
  // instead): syncs every interval until StopSyncLoop, and in between
  // starts the write-back of every kWritebackBytes appended.
  void SyncLoop();
  void StopSyncLoop();
  // Kicks off write-back of the active segment without waiting.
  void StartWriteback();
  // Appends between two write-backs started by the sync thread under
  // kInterval. Left to the interval's fdatasync, a second of appends is
  // written back at once (tens of MiB): the kernel's CPU work for it (each
  // mapped page cleaned, its blocks mapped) competes with the writers for
  // the cores, and a segment roll's fdatasync waits behind it. In steps of
  // this size both stay short.
  static constexpr uint64_t kWritebackBytes = uint64_t{4} << 20;

  // Appends the live items of this shard that match options to candidates,
  // keeping only the `keep` smallest keys (a bounded max-heap).
  void CollectScanKeys(const ScanOptions& options, size_t keep,
                       std::priority_queue<std::string>* heap);

  // *read_through: Engine::ReadEvents.
  absl::StatusOr<std::vector<Event>> ReadEvents(uint64_t after_sequence, uint32_t limit,
                                                uint64_t max_bytes, uint64_t* read_through);
  uint64_t LastSequence();

  // Appends the keys of partition whose leaf is wanted (indexed by leaf node
  // minus the leaf count).
  void CollectLeafKeys(uint32_t partition, const std::vector<bool>& wanted,
                       std::vector<Engine::LeafKey>* out);

  // Writes the hint file of every sealed segment that has none, so that a
  // restart after a crash (no Close to write them) scans only the segments
  // written since. Returns the first failure.
  absl::Status WriteMissingHints() ABSL_LOCKS_EXCLUDED(mu_, compaction_mu_);
  // Whether a checkpoint is due (Options::checkpoint_ratio).
  bool NeedsCheckpoint() ABSL_LOCKS_EXCLUDED(mu_);
  // Writes a checkpoint (index_snapshot.cc): the active segment sealed, the
  // index written to format::kIndexSnapshotName while writes go on, so that
  // an open after a crash loads it and reads only the segments written
  // since, as after a clean Close. Stops early once stopping() says so.
  absl::Status WriteCheckpoint(const std::function<bool()>& stopping)
      ABSL_LOCKS_EXCLUDED(mu_, compaction_mu_);

  // One compaction run: rewrites eligible immutable segments (every
  // immutable one when force). Without force a run is a small step, about
  // one segment of live data, damaged segments and a batch of small ones
  // excepted; callers repeat while NeedsCompaction.
  absl::Status Compact(bool force);
  bool NeedsCompaction();
  // Turns expired keys into expired tombstones; O(expired). Returns how many.
  uint64_t SweepExpired();

  // Online backup (Engine::Backup). The engine holds every shard's mu_
  // shared at once (LockForBackup) while it takes each one's cut, so the
  // cut is one moment of the whole store.
  struct BackupSegment {
    std::shared_ptr<Segment> segment;  // kept open: compaction may remove the file
    uint64_t bytes = 0;                // the data the cut holds
    std::string hint_path;             // empty: no hint file to copy
    std::string sealed_path;           // the file of a sealed segment; empty: active
  };
  void LockForBackup() ABSL_SHARED_LOCK_FUNCTION(mu_) { mu_.ReaderLock(); }
  void UnlockForBackup() ABSL_UNLOCK_FUNCTION(mu_) { mu_.ReaderUnlock(); }
  // The segments of the cut, by id, and the last sequence number they hold.
  // A compaction's unfinished output is left out: the segments it copies
  // from are all still in the cut (as after a crash, docs/engine.md).
  absl::Status CutForBackup(std::vector<BackupSegment>* segments, uint64_t* last_sequence)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  uint32_t id() const { return shard_id_; }

  void AddStats(Stats* stats);
  void AddPrefixStats(absl::string_view prefix, Engine::PrefixStats* stats);
  const ShardCounters& counters() const { return counters_; }

  // After a failed fsync the state of the file is unknown (the kernel may have
  // dropped the dirty pages): the shard refuses writes from then on.
  absl::Status health();
  // health(), else OK unless the last write failed for lack of disk space
  // (then that NoSpace status, until a write succeeds).
  absl::Status WriteHealth() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct FeedMark {  // where a recent event's record is
    uint64_t sequence;
    uint32_t segment_id;
    uint32_t offset;
  };
  struct TtlItem {
    int64_t expiry_unix_ms;
    uint32_t entry_id;
    bool operator>(const TtlItem& other) const { return expiry_unix_ms > other.expiry_unix_ms; }
  };
  struct DurableWaiter {
    uint64_t sequence;
    std::function<void(absl::Status)> done;
  };
  class RecoveryState;

  std::string PathOf(const std::string& file_name) const { return directory_ + "/" + file_name; }
  bool Expired(uint32_t entry_id, int64_t now_unix_ms) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const int64_t expiry = index_.expiry(entry_id);
    return expiry != 0 && expiry <= now_unix_ms;
  }
  absl::StatusOr<LogRecord> ReadRecord(const RecordLocation& location, absl::string_view key) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The plain value of a record ReadRecord returned (decompressed if need be).
  absl::Status ValueOf(const LogRecord& record, std::string* out);
  absl::Status RollActive(uint64_t needed_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends record to the active segment (rolling it when full) with the
  // next sequence number, which it sets in record, and marks it in the change
  // feed; where it was written.
  absl::StatusOr<RecordLocation> AppendLocked(LogRecord* record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<Segment>> NewSegment(uint32_t flags, uint64_t capacity_bytes,
                                                      const std::string& path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a segment NewSegment just made that never took a record.
  void DiscardNewSegment(std::shared_ptr<Segment> segment) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the active segment, which holds no record (its header only): out
  // of segments_ and original_ids_, no longer active, its file removed (the
  // removal's status; the caller syncs the directory).
  absl::Status DropEmptyActive() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // WriteCheckpoint's work, under the compaction lock.
  absl::Status WriteCheckpointLocked(const std::function<bool()>& stopping)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(compaction_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  void MarkDead(const RecordLocation& location) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropHistory(uint32_t entry_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PushTtl(int64_t expiry_unix_ms, uint32_t entry_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes the key out of the index, the Merkle summary and the counts; its
  // current record and history count as dead.
  void RemoveEntry(uint32_t entry_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts the entry's current record as dead unless the sweeper already did.
  void ReleaseCurrentRecord(const IndexEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t LeafHashOf(const IndexEntry& entry) const {
    return MerkleForest::LeafHash(entry.key(), entry.timestamp,
                                  (entry.flags & kEntryTombstone) != 0);
  }
  void SetFailed(const absl::Status& status);

  // Recovery (recovery.cc).
  // Removes the newest segments that have no header (torn creations) from
  // the directory and from segment_ids (ascending).
  absl::Status RemoveTornCreations(std::vector<uint32_t>* segment_ids);
  absl::Status LoadSegment(const std::shared_ptr<Segment>& segment, bool newest_original,
                           RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ScanSegment(const std::shared_ptr<Segment>& segment, bool newest_original,
                           RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyRecovered(const LogRecord& record, const RecordLocation& location, uint64_t key_hash,
                      RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ApplyRecovered, for a record of segment, by DrainRecovered at the
  // latest: with large tables the records (their keys copied) are kept and
  // applied in batches in the order of their index slots (ApplyRecovered
  // does not depend on the order). Otherwise the record's views must stay
  // valid until DrainRecovered.
  void QueueRecovered(const LogRecord& record, const RecordLocation& location, Segment* segment,
                      RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DrainRecovered(RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SortAndApplyQueued(RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether QueueRecovered sorts, from the tables' size now.
  void UpdateRecoveryOrder(RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ApplyRecovered, a few records later: the record's index slot is
  // prefetched now, and the records given meanwhile are applied first (in
  // order); DrainPipeline applies the rest.
  void Pipeline(const LogRecord& record, const RecordLocation& location, uint64_t key_hash,
                RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DrainPipeline(RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Where a loaded snapshot stands in the log: the segments from
  // tail_segment_id on hold the records written after it.
  struct SnapshotPoint {
    uint32_t tail_segment_id = 0;
    uint64_t next_sequence = 0;
    uint64_t max_timestamp = 0;
  };
  // Readies state to read the segments written after a loaded snapshot.
  void StartTailReplay(const SnapshotPoint& point, RecoveryState* state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishRecovery(RecoveryState* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What every open does once the index holds each key's newest record:
  // Forgotten keys leave it, and the Merkle summary, the key counts and the
  // expiry heap are built from it.
  void IndexLoaded() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Index snapshots (index_snapshot.cc).
  // Writes the index to format::kIndexSnapshotName. REQUIRES: closed_, the
  // active segment sealed, no compaction running (compaction_mu_ held).
  absl::Status WriteIndexSnapshot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(compaction_mu_, mu_);
  // Loads the index, the counts of the segments it describes and
  // next_sequence_ from the snapshot when the segments below its
  // tail_segment_id are exactly those it describes; nothing, with nothing
  // loaded and the file removed, when they are not (logged). The file is
  // kept after a load. REQUIRES: the index is empty.
  std::optional<SnapshotPoint> LoadIndexSnapshot(
      const absl::flat_hash_map<uint32_t, bool>& hint_ids) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The index entries the open is to make room for, and the records it is
  // to read, from what the hint files say (HintSummary); 0 where they do
  // not say.
  struct OpenEstimate {
    uint64_t entries = 0;
    uint64_t records = 0;
  };
  OpenEstimate EstimateFromHints(const RecoveryState& state, uint64_t total_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entries of the index now, for a hint file written outside mu_.
  uint64_t IndexEntries() const ABSL_LOCKS_EXCLUDED(mu_);
  // Makes the newest original segment active again, appends going after its
  // last record; false (nothing changed) if it is not fit to take appends.
  bool ContinueNewestSegment() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Syncs the newest original segment when it is not continued (what a
  // killed process wrote to it counts as durable from the open on).
  absl::Status SyncNewestSegment() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ComputeFeedStart() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Compaction (compaction.cc).
  absl::Status WriteHint(const std::shared_ptr<Segment>& segment);
  // What a compaction run has made so far, for Compact to undo if it stops.
  struct CompactionRun {
    std::vector<std::shared_ptr<Segment>> victims;
    std::vector<std::shared_ptr<Segment>> outputs;
    bool victims_dropped = false;  // the outputs replaced them in segments_
  };
  absl::Status RunCompaction(bool force, CompactionRun* run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(compaction_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // After a run that stopped before its victims went (a full disk, a failed
  // sync): points every entry and older version it had moved into an output
  // back at the victim's copy (the same event, found by its sequence number)
  // and drops the outputs. Without it the index would keep pointing into an
  // unsynced *.compacting file, which start-up deletes, while the victims'
  // copies looked dead and went with the next run.
  void AbandonOutputs(const CompactionRun& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(compaction_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // The segments a finished run replaced go all or none: their ids (with
  // those of a list an earlier run left, which *ids then holds too) go to a
  // durable list (kRemovalsName) before the first leaves segments_, and
  // start-up completes it. A tombstone a run dropped from one and the older
  // put it hid in another would otherwise, cut between the two unlinks (a
  // crash, a failed unlink), revive the key.
  absl::Status ListRemovals(std::vector<uint32_t>* ids) ABSL_LOCKS_EXCLUDED(mu_);
  // Unlinks the listed segments and their hint files, then the list.
  absl::Status RemoveListed(const std::vector<uint32_t>& ids) ABSL_LOCKS_EXCLUDED(mu_);
  // Appends the ids the list names (none when there is none); DataLoss for
  // a list that does not verify.
  absl::Status ReadRemovals(std::vector<uint32_t>* ids);
  // Start-up, before the directory is listed: finishes the removals named by
  // a list a run left.
  absl::Status FinishRemovals();
  std::vector<std::shared_ptr<Segment>> PickCompactionVictims(bool force)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // ---- Constant after construction ----
  const ShardContext context_;
  const Options& options_;
  // The first bytes of Options::merkle_excluded_prefixes (all 256 when one
  // of them is empty): a key that starts with another byte is Summarised.
  std::array<bool, 256> excluded_first_bytes_{};
  const uint32_t shard_id_;
  const std::string directory_;

  mutable absl::Mutex mu_;
  KeyIndex index_ ABSL_GUARDED_BY(mu_);
  // Every segment by id; the active one is also active_.
  absl::flat_hash_map<uint32_t, std::shared_ptr<Segment>> segments_ ABSL_GUARDED_BY(mu_);
  // Null only when start-up could not create a segment (a full disk); the
  // next write tries again.
  std::shared_ptr<Segment> active_ ABSL_GUARDED_BY(mu_);  // changed only by SetActive
  // NoSpace while the last append failed for lack of disk space, else OK.
  absl::Status out_of_space_ ABSL_GUARDED_BY(mu_);
  // next_sequence_ at the newest snapshot on disk (0: none): a checkpoint is
  // due once Options::checkpoint_ratio of the entries' count has been
  // written since.
  uint64_t checkpoint_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  // The tail_segment_id of the index snapshot on disk (0: none): the open
  // never continues a segment below it, which the snapshot describes with
  // its size. A compaction that removes one makes the snapshot stale (the
  // next open refuses it).
  uint32_t snapshot_tail_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool snapshot_stale_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time checkpoint_written_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Ids of the original (appended, not compacted) segments, ascending; the
  // change feed reads these. Their sequence ranges are increasing.
  std::vector<uint32_t> original_ids_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  uint32_t next_segment_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Events with sequence <= this are gone from the log (compacted).
  uint64_t compacted_through_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  // The older versions kept of each entry (versions_kept > 1).
  VersionChains history_ ABSL_GUARDED_BY(mu_);
  std::priority_queue<TtlItem, std::vector<TtlItem>, std::greater<TtlItem>> ttl_heap_
      ABSL_GUARDED_BY(mu_);
  std::vector<FeedMark> recent_events_ ABSL_GUARDED_BY(mu_);  // ring
  // Where the last reads of the feed stopped: the record a reader that goes
  // on from there asks for first (by sequence % size). A reader resuming
  // from before the ring starts there instead of at its segment's
  // beginning, so reading a segment's events a batch at a time costs the
  // segment once, not once a batch. Marks of segments gone are not found
  // and cost nothing.
  static constexpr size_t kResumeMarks = 64;
  mutable absl::Mutex resume_mu_;
  std::array<FeedMark, kResumeMarks> resume_marks_ ABSL_GUARDED_BY(resume_mu_){};
  // Live keys and the older versions kept for them (history_ items),
  // counted apart for Summarised keys (the clients') and the store's own.
  struct KeyCounts {
    uint64_t live_keys = 0;
    uint64_t kept_versions = 0;
  };
  KeyCounts& CountsOf(absl::string_view key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return CountsOf(Summarised(key));
  }
  KeyCounts& CountsOf(bool summarised) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return summarised ? client_counts_ : own_counts_;
  }
  KeyCounts client_counts_ ABSL_GUARDED_BY(mu_);
  KeyCounts own_counts_ ABSL_GUARDED_BY(mu_);
  // The last sequence appended, and the segment taking appends: written
  // under mu_, read by SyncNow without it, so that a round of the group
  // commit never waits for a shard's lock (a first scan's key order, a
  // sweep). SyncNow reads the sequence first: every record up to it is then
  // in the segment it reads next or in one sealed (synced) before that
  // segment was published.
  std::atomic<uint64_t> appended_sequence_{0};
  std::atomic<std::shared_ptr<Segment>> active_for_sync_;
  // Sets active_ and publishes it to SyncNow: the only way active_ changes.
  void SetActive(std::shared_ptr<Segment> segment) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    active_ = std::move(segment);
    active_for_sync_.store(active_, std::memory_order_release);
    writeback_requested_at_ = 0;
  }
  // Under kInterval, the active segment's size when its write-back was last
  // asked of the sync thread (SyncLoop).
  uint64_t writeback_requested_at_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::string encode_buffer_ ABSL_GUARDED_BY(mu_);

  absl::Mutex sync_mu_ ABSL_ACQUIRED_AFTER(mu_);
  uint64_t durable_sequence_ ABSL_GUARDED_BY(sync_mu_) = 0;
  std::deque<DurableWaiter> durable_waiters_ ABSL_GUARDED_BY(sync_mu_);
  uint64_t blocked_waiters_ ABSL_GUARDED_BY(sync_mu_) = 0;
  absl::Status failed_ ABSL_GUARDED_BY(sync_mu_);
  absl::CondVar durable_cv_;
  std::atomic<bool> failed_flag_{false};  // failed_ is set; lets writers skip sync_mu_

  // Asks the group commit for a round (writers wait only under kAlways).
  // Called under sync_mu_ by waiting writers.
  void RequestSync();
  absl::Mutex sync_request_mu_ ABSL_ACQUIRED_AFTER(sync_mu_);
  bool sync_stop_ ABSL_GUARDED_BY(sync_request_mu_) = false;
  bool writeback_requested_ ABSL_GUARDED_BY(sync_request_mu_) = false;
  absl::CondVar sync_request_cv_;

  absl::Mutex compaction_mu_ ABSL_ACQUIRED_BEFORE(mu_);

  ShardCounters counters_;
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_SHARD_H_
