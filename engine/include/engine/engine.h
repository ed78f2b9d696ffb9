// logkv's storage engine: a Bitcask-style store. Every mutation is an event
// appended to a per-shard segmented log; an in-memory hash index points at the
// newest record of each key; compaction rewrites old segments; a sweeper
// expires TTLs; per-partition Merkle trees summarise the contents for
// anti-entropy between replicas. The engine knows nothing of networking.
//
// Thread-safety: every method of Engine may be called from any thread at once.
// Shards never contend with each other; within a shard, reads share a lock and
// writes take it exclusively for the few hundred nanoseconds of an append.
#ifndef LOGKV_ENGINE_ENGINE_H_
#define LOGKV_ENGINE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include "absl/strings/string_view.h"
#include <string>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace logkv::engine {

class FileSystem;
class Shard;
class MerkleForest;
class HybridClock;

enum class FsyncPolicy {
  kNever,     // the operating system writes back when it likes
  kInterval,  // a background thread syncs every fsync_interval_ms (default)
  kAlways,    // a write is acknowledged only after fdatasync (group commit)
};

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// A write refused because the disk is full (ENOSPC or EDQUOT while a segment
// or file was created): ResourceExhausted carrying a payload, so that callers
// can tell it from a limit and answer "insufficient storage". The engine
// keeps the payload when it adds context to the message.
[[nodiscard]] absl::Status NoSpaceError(absl::string_view message);
bool IsNoSpace(const absl::Status& status);

// The engine's sense of wall-clock time, replaceable in tests.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() = 0;
};
Clock* SystemClock();

// How Put values are stored (docs/format.md, "Compressed values").
enum class Compression {
  kNone,  // every value as it is
  kZstd,  // values of at least compression_min_bytes zstd-compressed when it pays
};

inline constexpr int kMinCompressionLevel = 1;
inline constexpr int kMaxCompressionLevel = 19;

struct Options {
  std::string data_dir = "./data";
  // Only used when the data directory is created; afterwards the MANIFEST rules.
  uint32_t shard_count = 8;

  uint64_t segment_bytes = 64ull << 20;
  uint32_t max_key_bytes = 4096;           // hard ceiling: 65535
  uint32_t max_value_bytes = 16u << 20;    // hard ceiling: 512 MiB

  // Value compression. With kZstd a Put value of at least
  // compression_min_bytes is compressed at compression_level (1..19) and
  // stored so when that saves at least an eighth of it; otherwise, and for
  // replicated values alike, it is stored as it is. Reads always return the
  // plain value whatever the setting, so a directory may mix both kinds of
  // record and the setting may change between runs. Off by default: a binary
  // from before compression refuses compressed records as corrupt, so turning
  // it on is a choice not to downgrade (docs/format.md).
  Compression compression = Compression::kNone;
  int compression_level = 3;
  uint32_t compression_min_bytes = 128;

  FsyncPolicy fsync = FsyncPolicy::kInterval;
  int64_t fsync_interval_ms = 1000;

  // How many versions of each key stay readable through GetVersion (>= 1).
  uint32_t versions_kept = 1;

  // Compaction rewrites an immutable segment once its dead bytes reach this
  // fraction of it or this many bytes, whichever comes first (Bitcask's
  // fragmentation and dead-bytes triggers).
  double compaction_dead_fraction = 0.5;
  uint64_t compaction_dead_bytes = 32ull << 20;
  // Small immutable segments (under segment_bytes / 4, left by restarts) are
  // merged once at least this many have accumulated.
  uint32_t compaction_small_segments = 4;
  // Space amplification bound: while a shard's segments hold more than this
  // many times its live bytes (log bytes / (log bytes - dead bytes)),
  // segments with at least compaction_min_dead_fraction dead are rewritten
  // too, the most garbage first, until the estimate is back under it. The
  // per-segment triggers above alone let a log settle at up to
  // 1 / (1 - compaction_dead_fraction) times its live bytes. 0 = off.
  double compaction_space_amp = 1.25;
  double compaction_min_dead_fraction = 0.1;
  uint64_t compaction_bytes_per_second = 128ull << 20;  // 0 = unlimited
  int64_t compaction_check_interval_ms = 10'000;
  // Added to the maintenance thread's nice value (compaction, the TTL sweep,
  // hint files), in [0, 19]: where the cores are all busy, the threads that
  // answer requests get the larger share and the shorter waits, and the
  // maintenance thread the rest (at 10, about a tenth of a core it shares
  // with one busy thread). 0 leaves it at the process's priority.
  int maintenance_nice = 10;

  int64_t ttl_sweep_interval_ms = 1000;
  // Tombstones (and swept expired records) are kept at least this long before
  // compaction may drop them, so replicas learn of the deletion first.
  int64_t tombstone_grace_ms = 24ll * 3600 * 1000;
  // false: compaction keeps Delete tombstones of summarised keys whatever
  // their age, until Forget drops them (a cluster collects a tombstone once
  // every owner holds it; docs/cluster.md). Tombstones of
  // merkle_excluded_prefixes keys (this store's own) and expired records
  // still go after tombstone_grace_ms.
  bool collect_tombstones = true;

  // Merkle summary: partitions over the XXH3 key-hash space, each a fixed tree
  // with merkle_leaves leaves. Both powers of two.
  uint32_t merkle_partitions = 64;
  uint32_t merkle_leaves = 1024;

  // How many recent events per shard the change feed can locate without
  // scanning a segment from its start.
  uint32_t feed_recent_events = 4096;

  // The open applies records in the order of their index slots (a sort)
  // once a shard's hash tables have this many slots (5 bytes each, besides
  // the 48-byte entries and the keys they lead to): larger tables miss the
  // caches in log order. Measured with bench/scale.sh, a shard of 500,000
  // keys (tables of 1M slots) opened in 12% less time sorted, of 1.5M keys
  // (2M slots) in a third less.
  // A matter of speed only (tests set 0 to sort always).
  uint64_t recovery_sort_min_slots = 1ull << 20;
  // Records sorted together at most (each takes 68 bytes and its key while
  // queued: this bounds the memory the open needs beyond the index). Larger
  // batches place the lookups closer together.
  uint64_t recovery_sort_batch_records = 1ull << 20;
  // And their keys' bytes at most (a store of long keys ends its batches
  // sooner).
  uint64_t recovery_sort_batch_key_bytes = 64ull << 20;
  // A clean Close writes a shard's index to a file (index.snapshot) when
  // the shard holds at least this many index entries, and the next open
  // loads it instead of rebuilding the index from the hint files of the
  // segments before it (and reads those written after it); a compaction or
  // a repair that changes those segments makes the open fall back to the
  // hint files. Small shards open from their hint files about as fast.
  // UINT64_MAX: never write one.
  uint64_t index_snapshot_min_entries = 100000;
  // A running shard writes the same file as a checkpoint (taken while
  // writes go on) once the records written since the last one reach this
  // fraction of its index entries, and it holds at least
  // index_snapshot_min_entries: an open after a crash then loads it and
  // reads only the segments written since (docs/engine.md, "Index snapshots").
  // Each writes the whole index (about 70 bytes a key): smaller fractions
  // give faster restarts after a crash for more background writing. 0:
  // none.
  double checkpoint_ratio = 0.5;
  // A compaction that rewrites a segment the snapshot on disk describes
  // makes it stale (the next open refuses it and reads the hint files):
  // then the next checkpoint comes once this long has passed since the last
  // and an eighth of checkpoint_ratio's writes have come (at most one
  // whole-index write per interval while compaction keeps rewriting old
  // segments; none for a trickle of writes). 0: only by checkpoint_ratio.
  int64_t checkpoint_stale_interval_ms = 60'000;

  // Salvage what verifies instead of refusing to open a damaged log; damaged
  // segments are rewritten without the bad bytes.
  bool repair = false;
  // Run the durability, compaction and sweeper threads. Tests that drive these
  // by hand (CompactNow, SweepExpiredNow) turn them off.
  bool background_threads = true;

  FileSystem* file_system = nullptr;  // default: DefaultFileSystem(); must outlive the Engine
  Clock* clock = nullptr;             // default: SystemClock(); must outlive the Engine
  std::function<void(LogLevel, absl::string_view)> log;  // default: stderr
  // Called after every applied write with its shard and sequence number, on
  // the writing thread, outside the engine's locks (for change-feed watchers:
  // it should only note the news and wake someone). May be empty.
  std::function<void(uint32_t shard, uint64_t sequence)> on_event;
  // Called by Open once it holds the data directory's lock, before it reads
  // anything there; a status other than OK ends the open with that status.
  // For what an embedder checks of its own files in the directory before
  // the open's work (logkvd: that the node id kept there is the one asked
  // for, which a large store would otherwise tell only after its open).
  // May be empty.
  std::function<absl::Status()> on_locked;
  // Keys starting with one of these are left out of the Merkle summary (and
  // of MerkleLeafKeys): data that belongs to this store alone and must not
  // make replicas' trees differ.
  std::vector<std::string> merkle_excluded_prefixes;
  // Keys under these prefixes (each non-empty) are kept in key order from
  // the start, each insert and removal of one updating it, so that a scan
  // whose prefix lies under one of them reads only those keys: it neither
  // walks every key (build_key_order false, the store never ordered) nor
  // builds the whole order. For small namespaces a server reads in pages at
  // every start (logkvd's hinted handoff), in a store of millions of keys.
  std::vector<std::string> ordered_prefixes;
  // Called after every fdatasync of a log segment with its duration, on the
  // syncing thread (for latency histograms). May be empty.
  std::function<void(int64_t duration_ns)> on_fsync;
  // A checkpoint copies this many index entries at a time under the shard's
  // lock (writes to the shard wait for one batch at most), and calls
  // on_checkpoint_batch between batches, outside the shard's lock but with
  // its compaction lock held (it may write, not compact or checkpoint), with
  // the entries visited so far, both passes counted (tests write there).
  // May be empty.
  uint32_t checkpoint_batch_entries = 1024;
  std::function<void(uint32_t shard, uint64_t entries_visited)> on_checkpoint_batch;
};

// Every record carries a timestamp from a hybrid logical clock: unix
// milliseconds in the high bits, a counter in the low kTimestampLogicalBits,
// so timestamps follow wall-clock time, never repeat and never go backwards.
// Replicas compare them (last write wins); these convert to and from time.
inline constexpr int kTimestampLogicalBits = 16;
inline int64_t TimestampUnixMs(uint64_t timestamp) {
  return static_cast<int64_t>(timestamp >> kTimestampLogicalBits);
}
// The smallest timestamp of the millisecond unix_ms.
inline uint64_t TimestampAtUnixMs(int64_t unix_ms) {
  return static_cast<uint64_t>(unix_ms) << kTimestampLogicalBits;
}

struct WriteOptions {
  int64_t ttl_ms = 0;  // 0 = no expiry
  // Compare-and-set: the write happens only if the key is at this version now
  // (0 = the key must be absent). Otherwise FailedPrecondition.
  std::optional<uint64_t> if_version;
  // The write happens only if the key exists now (true) or does not
  // (false); otherwise FailedPrecondition. For a check made before the write
  // (an ACL that lets a caller create keys but not overwrite them, or the
  // reverse), held while the write is made.
  std::optional<bool> if_present;
  // Replication: apply with this timestamp instead of stamping a new one, and
  // only if it is newer than what the key has (last write wins). 0 = stamp.
  uint64_t timestamp = 0;
  // Absolute expiry for replicated writes (overrides ttl_ms when non-zero).
  int64_t expiry_unix_ms = 0;
};

struct WriteResult {
  uint64_t version = 0;
  uint64_t timestamp = 0;
  uint64_t sequence = 0;
  uint32_t shard = 0;
  bool applied = true;  // false when a replicated write lost to a newer one
};

struct ValueMeta {
  uint64_t version = 0;
  uint64_t timestamp = 0;
  int64_t expiry_unix_ms = 0;
};

struct Record {
  std::string value;
  ValueMeta meta;
};

// A key's newest record as the index knows it, tombstones included: what a
// replica compares and copies (last write wins on timestamp).
struct KeyRecord {
  bool found = false;      // false: the engine knows nothing of the key
  bool tombstone = false;  // deleted (or expired: an expired key reads as deleted)
  uint64_t timestamp = 0;
  int64_t expiry_unix_ms = 0;
  uint64_t version = 0;
  std::string value;  // empty for tombstones, and when the value was not asked for
};

struct ScanOptions {
  std::string prefix;     // only keys starting with it
  std::string start_key;  // inclusive lower bound ("" = none)
  std::string end_key;    // exclusive upper bound ("" = none)
  std::string after_key;  // cursor: the last key of the previous page
  uint32_t limit = 1000;  // at most kMaxScanLimit
  bool keys_only = false;  // items carry keys only: no value, meta left zero
  // A page ends early, with a cursor, once its keys and values pass this many
  // bytes (at least one item is always returned). 0 = no byte budget.
  uint64_t max_bytes = 0;
  // Whether a scan of a store that no scan has ordered yet builds the key
  // order (and so makes every later insert of a new key dearer), or walks
  // every key instead (O(keys) a page, the order left unbuilt). false is for
  // a scan made once, such as a start-up load of a reserved prefix: a store
  // that clients never scan then stays unordered. Once built, every scan
  // uses the order.
  bool build_key_order = true;
};
inline constexpr uint32_t kMaxScanLimit = 10'000;

struct ScanItem {
  std::string key;
  std::string value;
  ValueMeta meta;
};

struct ScanResult {
  std::vector<ScanItem> items;  // in key order
  std::string next_cursor;      // empty when there is nothing more
};

enum class EventType { kPut, kDelete };

struct Event {
  uint64_t sequence = 0;
  EventType type = EventType::kPut;
  std::string key;
  std::string value;
  ValueMeta meta;
};

// Everything the engine can tell about itself, summed over shards.
struct Stats {
  uint64_t keys = 0;             // live keys (not deleted, not yet swept)
  uint64_t tombstones = 0;       // deleted or expired keys still indexed
  // Readable versions: each live key's current one and the older ones kept
  // for GetVersion (Options::versions_kept). Counted from the index, so
  // they are right after a restart too.
  uint64_t versions = 0;
  // Of keys and versions, those of keys outside merkle_excluded_prefixes:
  // the clients' data, without the store's own records.
  uint64_t client_keys = 0;
  uint64_t client_versions = 0;
  uint64_t segments = 0;
  uint64_t log_bytes = 0;        // bytes in all segments
  uint64_t dead_bytes = 0;       // bytes compaction could reclaim
  // Disk blocks reserved ahead of the data of the segments being written
  // (the active ones, a running compaction's outputs): on disk, not in
  // log_bytes.
  uint64_t reserved_bytes = 0;
  uint64_t key_bytes = 0;        // bytes of live keys in the index arena
  uint64_t index_bytes = 0;      // memory of the index beyond key bytes
  uint64_t puts = 0, deletes = 0, gets = 0;
  uint64_t fsyncs = 0;
  uint64_t fsync_total_us = 0;
  // Group commit (kAlways): rounds of syncs, the writers they served, and
  // the rounds that waited for writers to gather (docs/engine.md).
  uint64_t sync_rounds = 0;
  uint64_t sync_round_writers = 0;
  uint64_t sync_round_waits = 0;
  uint64_t sync_round_waits_cut_short = 0;
  uint64_t compactions = 0;
  uint64_t compaction_bytes_read = 0;
  uint64_t compaction_bytes_written = 0;
  uint64_t compaction_bytes_reclaimed = 0;
  bool compaction_running = false;
  uint64_t compaction_progress_bytes = 0;  // of the running compaction
  uint64_t compaction_total_bytes = 0;     // of the running compaction
  uint64_t expired_swept = 0;
  uint64_t tombstones_dropped = 0;
  uint64_t forgotten = 0;  // keys dropped by Forget
  uint64_t recovery_ms = 0;
  uint64_t recovered_from_hints = 0;  // segments loaded from hint files at open
  uint64_t recovered_by_scan = 0;     // segments scanned at open
  uint64_t recovered_from_snapshot = 0;  // shards whose index came from an index snapshot
  uint64_t checkpoints_written = 0;      // index snapshots written while running
  // Index entries the open made room for before it read them (from what the
  // hint files say, or from the records of the first segment read).
  uint64_t recovery_reserved_entries = 0;
  uint64_t torn_bytes_truncated = 0;
  uint64_t torn_segments_removed = 0;   // header-less newest segments removed at open
  uint64_t repaired_bytes_skipped = 0;
  uint64_t repaired_segments = 0;       // segments repair salvaged records from
  uint64_t repaired_segments_set_aside = 0;  // segments with a bad header, renamed *.damaged
  // Records a Scan met that did not verify (corrupt on disk): left out of
  // the page and counted here; a Get of such a key answers DataLoss.
  uint64_t unreadable_records_skipped = 0;
  // Value compression, since open: the plain bytes of the Put values written
  // and the bytes they took in their records (compressed or not), so their
  // ratio is the compression ratio; how many values were stored compressed,
  // how many were tried and stored plain because it did not pay, and the
  // CPU time spent compressing and decompressing.
  uint64_t value_bytes_in = 0;
  uint64_t value_bytes_stored = 0;
  uint64_t values_compressed = 0;
  uint64_t values_compression_skipped = 0;
  uint64_t values_decompressed = 0;
  uint64_t compress_cpu_ns = 0;
  uint64_t decompress_cpu_ns = 0;
  // Records ReadEvents decoded, matching or not, since open (what reading the
  // feed cost: about the records read, however many batches they took).
  uint64_t feed_records_decoded = 0;
  // Shards refusing writes now: the last write failed for lack of disk
  // space, or a sync failed (see WriteHealth).
  uint32_t shards_refusing_writes = 0;
  uint32_t shard_count = 0;
};

// Online backup (Engine::Backup). The engine hands a consistent cut of its
// files to a sink, one file after another; the sink decides where the bytes
// go (a directory, an archive) and checksums them. Paths are relative to the
// data directory: "MANIFEST", "shard-000/000000000001.log", "...hint".
class BackupSink {
 public:
  virtual ~BackupSink() = default;
  // A file of exactly `bytes` bytes follows in Write calls, then EndFile.
  [[nodiscard]] virtual absl::Status BeginFile(const std::string& relative_path,
                                               uint64_t bytes) = 0;
  [[nodiscard]] virtual absl::Status Write(absl::string_view data) = 0;
  [[nodiscard]] virtual absl::Status EndFile() = 0;
  // BeginFile for a sealed segment, which never changes again, whose file
  // is source_path: a sink that can may hard-link it instead of writing it
  // (its bytes still follow in Write calls, for the sink's checksum).
  [[nodiscard]] virtual absl::Status BeginSealedFile(const std::string& relative_path,
                                                     uint64_t bytes,
                                                     const std::string& /*source_path*/) {
    return BeginFile(relative_path, bytes);
  }
};

struct BackupOptions {
  // Pace of the copy, so that foreground requests keep their latency
  // (0 = as fast as the disk goes).
  uint64_t bytes_per_second = 0;
  // Called after every chunk copied, on the backup's thread. May be empty.
  std::function<void(uint64_t bytes_done, uint64_t bytes_total)> progress;
  // Checked between chunks: when it becomes true the backup stops with
  // Cancelled. May be null.
  const std::atomic<bool>* cancel = nullptr;
};

// What a backup holds: the cut every shard was copied at.
struct BackupCut {
  int64_t unix_ms = 0;  // when the cut was taken
  // Per shard, the last sequence number the copy holds: every write the
  // store acknowledged before the cut, none after it.
  std::vector<uint64_t> shard_sequences;
  uint64_t files = 0;
  uint64_t bytes = 0;
};

class Engine {
 public:
  // Opens or creates the store at options.data_dir.
  static absl::StatusOr<std::unique_ptr<Engine>> Open(const Options& options);

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  // Closes if Close was not called, logging any error.
  ~Engine();

  [[nodiscard]] absl::StatusOr<Record> Get(absl::string_view key);
  // The allocation-free form for hot paths: value_out is reused.
  [[nodiscard]] absl::Status Get(absl::string_view key, std::string* value_out, ValueMeta* meta);
  // The key's newest record, tombstones included (for replication and repair).
  [[nodiscard]] absl::StatusOr<KeyRecord> GetRecord(absl::string_view key, bool with_value);
  // Version n of key, if it is still kept (Options::versions_kept).
  [[nodiscard]] absl::StatusOr<Record> GetVersion(absl::string_view key, uint64_t version);
  // Starts loading the index memory that lookups of these keys (a batch of
  // requests about to be served) will read, in stages over the whole batch,
  // so that their cache misses overlap instead of following one another.
  // A hint only: it changes nothing a lookup finds; keys that are not valid
  // keys are passed over.
  void Prefetch(absl::Span<const absl::string_view> keys);

  // Returns once the write is durable per Options::fsync: for kAlways after
  // fdatasync; otherwise after the bytes are in the operating system's hands.
  [[nodiscard]] absl::StatusOr<WriteResult> Put(absl::string_view key, absl::string_view value,
                                                const WriteOptions& options = {});
  [[nodiscard]] absl::StatusOr<WriteResult> Delete(absl::string_view key,
                                                   const WriteOptions& options = {});

  // Asynchronous forms: done runs once the write is durable per the policy,
  // inline for kNever/kInterval and, for kAlways, on the thread of the group
  // commit's round that synced the write (the leader or a helper). There
  // done must not wait for durability itself (a synchronous Put under
  // kAlways): that round cannot end, and no later one can start, until it
  // returns. Keep it short: every shard's next round waits for it.
  // The caller never blocks on a disk sync.
  using WriteCallback = std::function<void(absl::StatusOr<WriteResult>)>;
  void PutAsync(absl::string_view key, absl::string_view value, const WriteOptions& options,
                WriteCallback done);
  void DeleteAsync(absl::string_view key, const WriteOptions& options, WriteCallback done);
  // Whether a write returns before it is durable (every policy but kAlways):
  // then Put and Delete never wait for a group commit's sync (a segment's
  // roll still syncs the segment it seals), and the asynchronous forms'
  // done runs inline.
  bool WritesFinishInline() const;

  // Drops the key from this store, as if it had never been written here, if
  // its newest record (tombstone or not) still has this timestamp; returns
  // whether it did. For a replica that no longer owns the key, or a
  // tombstone every owner holds: the key leaves the index, the Merkle
  // summary and the counts, its records become garbage, and no change-feed
  // event is produced. A Forget record on disk keeps it gone after a
  // restart, and a later write (replicated or not) starts the key afresh.
  [[nodiscard]] absl::StatusOr<bool> Forget(absl::string_view key, uint64_t timestamp);

  [[nodiscard]] absl::StatusOr<ScanResult> Scan(const ScanOptions& options);

  // Change feed: events of one shard with sequence > after_sequence, in order,
  // at most limit, and no more than max_bytes of keys and values (but always at
  // least one event; 0 = no byte budget). OutOfRange ("compacted") when compaction already removed
  // some of them. *read_through (when given) is the sequence the read went up
  // to: the next read goes on after it. It is the last event's when a limit
  // ended the read, and past the records that are no events (a Forget's)
  // when the read reached the end, so that a feed whose newest records are
  // those does not read them again and again.
  [[nodiscard]] absl::StatusOr<std::vector<Event>> ReadEvents(uint32_t shard,
                                                              uint64_t after_sequence,
                                                              uint32_t limit,
                                                              uint64_t max_bytes = 0,
                                                              uint64_t* read_through = nullptr);
  uint64_t LastSequence(uint32_t shard);
  uint32_t ShardCount() const;
  uint32_t ShardOf(absl::string_view key) const;

  // Merkle summary. Node 1 is a partition's root; node i has children 2i and
  // 2i+1; leaves are nodes [leaves, 2 * leaves).
  uint32_t MerklePartitionCount() const;
  uint32_t MerkleLeafCount() const;
  uint32_t MerklePartitionOf(absl::string_view key) const;
  uint64_t MerkleNodeHash(uint32_t partition, uint32_t node) const;
  // Keys (live and tombstoned) whose hashes fall in the given leaf (a node index
  // in [leaves, 2 * leaves)), with their timestamps and tombstone bits.
  struct LeafKey {
    std::string key;
    uint64_t timestamp;
    bool tombstone;
  };
  [[nodiscard]] absl::StatusOr<std::vector<LeafKey>> MerkleLeafKeys(uint32_t partition,
                                                                    uint32_t leaf_node);
  // The keys of several leaves of one partition, in key order, in one pass
  // over the index (anti-entropy asks for every differing leaf at once).
  [[nodiscard]] absl::StatusOr<std::vector<LeafKey>> MerkleLeafKeys(
      uint32_t partition, absl::Span<const uint32_t> leaf_nodes);

  // Every key the index holds (tombstones included, keys of
  // merkle_excluded_prefixes left out), shard by shard in pages of at most
  // limit keys, in no particular order: pass the cursor back in (start with
  // {}) until cursor->done. Keys written or removed meanwhile may be missed
  // or listed twice.
  struct KeyCursor {
    uint32_t shard = 0;
    uint32_t entry = 0;
    bool done = false;
  };
  [[nodiscard]] absl::StatusOr<std::vector<LeafKey>> ListKeys(KeyCursor* cursor, uint32_t limit);

  Stats GetStats();
  // OK while every shard takes writes; otherwise why one does not: its last
  // write failed for lack of disk space (NoSpace; cleared by its next write
  // that succeeds), or a failed sync made it refuse writes until restart.
  [[nodiscard]] absl::Status WriteHealth();

  // The live keys starting with prefix, their readable versions (as in
  // Stats::versions) and the bytes of those versions' log records. O(keys
  // in the store): it walks every shard's index under its read lock, so it
  // is for occasional statistics (one tenant's share), not a request path.
  struct PrefixStats {
    uint64_t keys = 0;
    uint64_t versions = 0;
    uint64_t record_bytes = 0;
  };
  PrefixStats CountPrefix(absl::string_view prefix);
  // Copies a point-in-time image of the store to sink while writes go on.
  // Every shard's lock is held (shared) at once for an instant to record the
  // cut: each segment and the length of its data (the active segment's
  // current end), so the image is one moment of the whole store, and a
  // write is in it if and only if it had been applied before that moment.
  // The bytes are copied afterwards, outside the locks, from the segments
  // themselves (kept open, so compaction removing one meanwhile does no
  // harm), paced to options.bytes_per_second. Sealed segments' hint files
  // are copied when present; the active segment gets none (a restore scans
  // it). Restoring the image is opening the engine on it: recovery treats it
  // as a store whose process stopped at the cut. One backup at a time is
  // the caller's business; several at once are correct, only slower.
  [[nodiscard]] absl::StatusOr<BackupCut> Backup(BackupSink* sink,
                                                 const BackupOptions& options = {});

  // Syncs every shard's unsynced appends now.
  [[nodiscard]] absl::Status Sync();
  // Compacts every shard's eligible segments now (force: every immutable one).
  [[nodiscard]] absl::Status CompactNow(bool force = false);
  // Removes expired keys from the index; returns how many.
  uint64_t SweepExpiredNow();
  // Writes every shard's checkpoint now (Options::checkpoint_ratio says when
  // the background thread does), whatever its size.
  [[nodiscard]] absl::Status CheckpointNow();
  // Writes the hint file of every sealed segment that has none (the
  // maintenance thread does so every ttl_sweep_interval_ms), so that a
  // restart after a crash scans only the segments written since.
  [[nodiscard]] absl::Status WriteHintsNow();
  // Stops background work, syncs, writes hint files and index snapshots
  // (Options::index_snapshot_min_entries), closes files; the shards side by
  // side.
  [[nodiscard]] absl::Status Close();

 private:
  explicit Engine(const Options& options);
  [[nodiscard]] absl::Status OpenFiles();
  void MaintenanceLoop();

  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_ENGINE_H_
