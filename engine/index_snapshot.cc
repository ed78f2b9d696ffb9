// Index snapshots: the index a clean Close leaves beside the segments, so
// that the next open loads each key's entry once instead of rebuilding the
// index from every record's hint (format: log_format.h, docs/format.md).
//
// Rebuilding looks up every record's key in tables of millions of slots,
// about six random memory accesses a record (docs/performance.md), and a
// store that overwrites has many records a key. The snapshot holds each key
// once, in the order of the tables' slots, so that loading it fills the
// tables, the slab and the key arena front to back.
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/types/span.h"
#include "engine/shard.h"

namespace logkv::engine {

namespace {

using format::IndexSnapshotEntry;
using format::IndexSnapshotFooter;
using format::IndexSnapshotHeader;
using format::IndexSnapshotLocation;
using format::IndexSnapshotSegment;

constexpr size_t kWriteChunkBytes = size_t{1} << 20;
// What a running index holds (kEntryForgotten exists during an open only).
constexpr uint8_t kKnownEntryFlags =
    kEntryTombstone | kEntryExpired | kEntryShadowCounted | kEntryHasExpiry;

// Flags a running shard can leave together: the sweeper expires a put with
// an expiry (keeping it) and counts its record dead (the shadow), a delete
// or an expiry drops the key's older versions.
bool ConsistentFlags(uint8_t flags, uint16_t history_count) {
  if ((flags & ~kKnownEntryFlags) != 0) return false;
  if ((flags & kEntryShadowCounted) != 0 && (flags & kEntryExpired) == 0) return false;
  if ((flags & kEntryExpired) != 0 &&
      ((flags & kEntryHasExpiry) == 0 || (flags & kEntryTombstone) != 0)) {
    return false;
  }
  return history_count == 0 || (flags & (kEntryTombstone | kEntryExpired)) == 0;
}

// The file's bytes in order, each fixed-size item copied out of it.
class SnapshotReader {
 public:
  explicit SnapshotReader(absl::string_view bytes) : rest_(bytes) {}
  template <typename T>
  bool Take(T* out) {
    if (rest_.size() < sizeof(T)) return false;
    std::memcpy(out, rest_.data(), sizeof(T));
    rest_.remove_prefix(sizeof(T));
    return true;
  }
  bool TakeBytes(size_t n, absl::string_view* out) {
    if (rest_.size() < n) return false;
    *out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return true;
  }
  bool done() const { return rest_.empty(); }

 private:
  absl::string_view rest_;
};

// A snapshot on its way to disk: written through the FileSystem to a
// temporary name (preallocated and mapped to the size counted beforehand),
// a chunk at a time, checksummed as it goes, then synced and renamed into
// place. Abandoned (the temporary removed) unless Finish succeeds.
class SnapshotWriter {
 public:
  SnapshotWriter(FileSystem* fs, std::string directory)
      : fs_(fs),
        directory_(std::move(directory)),
        temporary_(absl::StrCat(directory_, "/", format::kIndexSnapshotName, ".tmp")),
        final_(absl::StrCat(directory_, "/", format::kIndexSnapshotName)) {}
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;
  ~SnapshotWriter() {
    if (file_ != nullptr) (void)file_->Close();
    if (checksum_ != nullptr) XXH3_freeState(checksum_);
    if (created_ && !kept_) (void)fs_->RemoveFile(temporary_);
  }

  // exact: the file will hold file_bytes; else at most that many, and the
  // file is cut to its bytes when closed.
  absl::Status Begin(uint64_t file_bytes, bool exact = true) {
    exact_ = exact;
    checksum_ = XXH3_createState();
    if (checksum_ == nullptr) return absl::ResourceExhaustedError("out of memory for a checksum");
    XXH3_64bits_reset(checksum_);
    auto file = fs_->NewWritableFile(temporary_, file_bytes);
    if (!file.ok()) return file.status();
    file_ = *std::move(file);
    created_ = true;
    expected_ = file_bytes;
    // Twice a chunk: a checkpoint adds a batch of entries under the shard's
    // lock after FlushIfFull, and the buffer is not to grow (reallocate)
    // there.
    buffer_.reserve(2 * kWriteChunkBytes);
    return absl::OkStatus();
  }

  // Where items are appended; handed to the file by FlushIfFull and Finish.
  std::string& buffer() { return buffer_; }
  template <typename T>
  void Put(const T& item) {
    buffer_.append(reinterpret_cast<const char*>(&item), sizeof(item));
  }
  // After a failure the rest is dropped as it comes (the buffer never grows
  // past a chunk); the caller stops at the next item.
  bool FlushIfFull() {
    if (buffer_.size() >= kWriteChunkBytes) Flush();
    return failure_.ok();
  }

  // The footer, then the checksum; the file synced and renamed.
  absl::Status Finish(const IndexSnapshotFooter& footer) {
    Put(footer);
    Flush();
    if (!failure_.ok()) return failure_;
    const uint64_t total = written_ + sizeof(uint64_t);
    if (exact_ ? total != expected_ : total > expected_) {
      return absl::InternalError(absl::StrCat("the index snapshot came to ", written_,
                                              " bytes where ", expected_ - sizeof(uint64_t),
                                              " were counted"));
    }
    const uint64_t sum = XXH3_64bits_digest(checksum_);
    if (absl::Status status =
            file_->Append(absl::string_view(reinterpret_cast<const char*>(&sum), sizeof(sum)));
        !status.ok()) {
      return status;
    }
    if (absl::Status status = file_->Sync(); !status.ok()) return status;
    absl::Status closed = file_->Close();
    file_.reset();
    if (!closed.ok()) return closed;
    if (!exact_) {
      // Closing cut the file to its bytes: its new size made durable too.
      if (absl::Status status = fs_->SyncFile(temporary_); !status.ok()) return status;
    }
    if (absl::Status status = fs_->RenameFile(temporary_, final_); !status.ok()) return status;
    kept_ = true;
    if (absl::Status status = fs_->SyncDir(directory_); !status.ok()) {
      // Whether the name is durable is unknown: none is better than one the
      // log says was not written.
      (void)fs_->RemoveFile(final_);
      return status;
    }
    return absl::OkStatus();
  }

 private:
  void Flush() {
    if (!buffer_.empty() && failure_.ok()) {
      XXH3_64bits_update(checksum_, buffer_.data(), buffer_.size());
      written_ += buffer_.size();
      if (written_ + sizeof(uint64_t) > expected_) {
        failure_ = absl::InternalError("the index changed while its snapshot was written");
      } else {
        failure_ = file_->Append(buffer_);
      }
    }
    buffer_.clear();
  }

  FileSystem* const fs_;
  const std::string directory_;
  const std::string temporary_;
  const std::string final_;
  std::unique_ptr<WritableFile> file_;
  XXH3_state_t* checksum_ = nullptr;
  bool created_ = false;
  bool kept_ = false;
  bool exact_ = true;
  uint64_t expected_ = 0;
  uint64_t written_ = 0;
  std::string buffer_;
  absl::Status failure_;
};

IndexSnapshotHeader MakeHeader(uint32_t shard_id, uint32_t versions_kept) {
  IndexSnapshotHeader header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, format::kIndexSnapshotMagic, sizeof(header.magic));
  header.format_version = format::kIndexSnapshotVersion;
  header.shard_id = shard_id;
  header.versions_kept = versions_kept;
  return header;
}

IndexSnapshotSegment DescribeSegment(uint32_t id, const Segment& segment) {
  IndexSnapshotSegment item;
  std::memset(&item, 0, sizeof(item));
  item.id = id;
  item.size = segment.size();
  item.base_sequence = segment.header().base_sequence;
  item.min_sequence = segment.min_sequence;
  item.max_sequence = segment.max_sequence;
  item.dead_bytes = segment.dead_bytes;
  return item;
}

IndexSnapshotEntry DescribeEntry(const IndexEntry& entry) {
  IndexSnapshotEntry item;
  std::memset(&item, 0, sizeof(item));
  item.timestamp = entry.timestamp;
  item.version = entry.version;
  item.segment_id = entry.segment_id;
  item.offset = entry.offset;
  item.record_bytes = entry.record_bytes;
  item.key_size = entry.key_size;
  item.flags = entry.flags;
  return item;
}

}  // namespace

absl::Status Shard::WriteIndexSnapshot() {
  if (failed_flag_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError("a sync failed, so the segments' state is unknown");
  }
  for (const auto& [id, segment] : segments_) {
    if (segment->damaged || !segment->has_hint || segment->writable()) {
      return absl::FailedPreconditionError(
          absl::StrCat("segment ", id, " is damaged, open for appends or without a hint file"));
    }
  }
  // The file's size from what the index counts as it goes (its live key
  // bytes, its entries with an expiry): the walk below checks it.
  const uint64_t key_bytes = index_.key_bytes();
  const uint64_t expiries = index_.with_expiry();
  const uint64_t history = options_.versions_kept > 1 ? history_.nodes() : 0;
  const uint64_t file_bytes =
      sizeof(IndexSnapshotHeader) + segments_.size() * sizeof(IndexSnapshotSegment) +
      index_.size() * sizeof(IndexSnapshotEntry) + expiries * sizeof(int64_t) + key_bytes +
      history * sizeof(IndexSnapshotLocation) + sizeof(IndexSnapshotFooter) + sizeof(uint64_t);
  SnapshotWriter writer(context_.fs, directory_);
  if (absl::Status status = writer.Begin(file_bytes); !status.ok()) return status;

  IndexSnapshotHeader header = MakeHeader(shard_id_, options_.versions_kept);
  header.segment_count = static_cast<uint32_t>(segments_.size());
  header.next_sequence = next_sequence_;
  // The clock's reading now is above every record's timestamp (it issued
  // or observed each), also those no entry names any more (a Forget's, one
  // a compaction dropped): the next open's clock must not start below one
  // it issued.
  header.max_timestamp = context_.hlc->Now();
  // Every segment is described: what the next run writes goes to new ones.
  header.tail_segment_id = next_segment_id_;
  writer.Put(header);
  for (const auto& [id, segment] : segments_) writer.Put(DescribeSegment(id, *segment));
  uint64_t history_written = 0;
  bool writing = true;
  index_.ForEachInSlotOrder([&](uint32_t id, const IndexEntry& entry) {
    mu_.AssertHeld();  // ForEachInSlotOrder calls back before it returns
    if (!writing || !(writing = writer.FlushIfFull())) return;
    std::string& buffer = writer.buffer();
    const size_t at = buffer.size();
    writer.Put(DescribeEntry(entry));
    if ((entry.flags & kEntryHasExpiry) != 0) writer.Put(index_.expiry(id));
    buffer.append(entry.key_data, entry.key_size);
    if (history == 0) return;
    uint16_t older = 0;
    history_.ForEach(id, [&](uint32_t node) {
      mu_.AssertHeld();
      const RecordLocation& location = history_.location(node);
      writer.Put(IndexSnapshotLocation{location.segment_id, location.offset,
                                       location.record_bytes});
      ++older;
    });
    history_written += older;
    std::memcpy(buffer.data() + at + offsetof(IndexSnapshotEntry, history_count), &older,
                sizeof(older));
  });
  if (writing && history_written != history) {
    return absl::InternalError(absl::StrCat("the index snapshot held ", history_written,
                                            " older versions where ", history, " were counted"));
  }
  return writer.Finish(IndexSnapshotFooter{index_.size(), history});
}

bool Shard::NeedsCheckpoint() {
  if (!(options_.checkpoint_ratio > 0)) return false;  // 0, negative or NaN: none
  absl::ReaderMutexLock lock(&mu_);
  if (closed_ || active_ == nullptr || !out_of_space_.ok() ||
      failed_flag_.load(std::memory_order_acquire)) {
    return false;
  }
  // Nothing written since a compaction made its output: the checkpoint
  // would seal an empty segment, which the next compaction removes first.
  if (active_->size() == format::kSegmentHeaderBytes && active_->id() + 1 != next_segment_id_) {
    return false;
  }
  const uint64_t entries = index_.size();
  if (entries == 0 || entries < options_.index_snapshot_min_entries) return false;
  const uint64_t since = next_sequence_ - std::min(next_sequence_, checkpoint_sequence_);
  const double due = options_.checkpoint_ratio * static_cast<double>(entries);
  // A stale snapshot (a compaction rewrote a segment it describes) is
  // replaced once the interval has passed and an eighth of the usual writes
  // have come: not for a trickle of writes, whose own checkpoints would seal
  // small segments that compaction rewrites, stale again, forever.
  if (snapshot_stale_ && options_.checkpoint_stale_interval_ms > 0 &&
      static_cast<double>(since) >= std::max(1.0, due / 8) &&
      absl::Now() - checkpoint_written_at_ >=
          absl::Milliseconds(options_.checkpoint_stale_interval_ms)) {
    return true;
  }
  return since > 0 && static_cast<double>(since) >= due;
}

absl::Status Shard::WriteCheckpoint(const std::function<bool()>& stopping) {
  absl::MutexLock compaction_lock(&compaction_mu_);
  absl::Status status = WriteCheckpointLocked(stopping);
  if (!status.ok() && !absl::IsCancelled(status)) {
    // Not tried again until as many records again are written (or, when
    // the snapshot on disk is stale, the interval has passed again): the
    // walk costs a pass over the index, and a full disk would fail it each
    // time.
    absl::MutexLock lock(&mu_);
    checkpoint_sequence_ = next_sequence_;
    checkpoint_written_at_ = absl::Now();
    return status;
  }
  if (status.ok()) counters_.checkpoints_written.fetch_add(1, std::memory_order_relaxed);
  return status;
}

absl::Status Shard::WriteCheckpointLocked(const std::function<bool()>& stopping) {
  const absl::Time began = absl::Now();
  IndexSnapshotHeader header = MakeHeader(shard_id_, options_.versions_kept);
  header.flags = format::kIndexSnapshotFuzzy;
  std::vector<IndexSnapshotSegment> described;
  uint64_t expected_entries;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::FailedPreconditionError("the shard is closed");
    if (failed_flag_.load(std::memory_order_acquire)) {
      return absl::FailedPreconditionError("a sync failed, so the segments' state is unknown");
    }
    if (active_ == nullptr || !out_of_space_.ok()) {
      return absl::FailedPreconditionError("no segment takes writes (a full disk)");
    }
    // Checked before anything is sealed: a checkpoint refused for it would
    // otherwise leave a sealed segment each time it is tried.
    for (const auto& [id, segment] : segments_) {
      if (segment != active_ && (segment->damaged || segment->writable())) {
        return absl::FailedPreconditionError(
            absl::StrCat("segment ", id, " is damaged or open for appends"));
      }
    }
    // The point: every record before it is in a sealed segment (immutable,
    // its size final), every record after it in a segment with a higher id.
    // The active segment is sealed, unless it is empty: if it is the newest,
    // the point is its start; if a compaction's output (made later, with
    // records from before the point) is newer, it goes, and a new segment
    // takes its place (sealed, it would be an empty segment the checkpoint
    // describes, which compaction removes first: stale at once).
    absl::Status rolled;
    if (active_->size() > format::kSegmentHeaderBytes) {
      rolled = RollActive(0);
    } else if (active_->id() + 1 != next_segment_id_) {
      // Its directory entry goes with the new segment's directory sync; if
      // it cannot be removed, an empty segment is harmless.
      if (absl::Status removed = DropEmptyActive(); !removed.ok()) {
        context_.Log(LogLevel::kWarning,
                     absl::StrCat("cannot remove an empty segment: ", removed.message()));
      }
      rolled = RollActive(0);
    }
    if (!rolled.ok()) {
      // As a write that needed a new segment: a full disk refuses writes
      // until space is freed (the old segment is sealed).
      if (IsNoSpace(rolled) && out_of_space_.ok()) {
        context_.Log(LogLevel::kWarning, absl::StrCat(rolled.message(), "; shard ", shard_id_,
                                                      " refuses writes until space is freed"));
        out_of_space_ = rolled;
      }
      return rolled;
    }
    header.tail_segment_id = active_->id();
    header.next_sequence = next_sequence_;
    header.max_timestamp = context_.hlc->Now();
    for (const auto& [id, segment] : segments_) {
      if (id < header.tail_segment_id) described.push_back(DescribeSegment(id, *segment));
    }
    std::sort(described.begin(), described.end(),
              [](const auto& a, const auto& b) { return a.id < b.id; });
    expected_entries = index_.size();
  }
  header.segment_count = static_cast<uint32_t>(described.size());

  // The entries, Options::checkpoint_batch_entries at a time under the
  // shard's lock, so that writes wait for one batch at most: each as its
  // key stood at the point.
  // An entry that names a record before the point is that state: a write
  // since would have moved it past the point, and compaction (whose lock is
  // held) moves nothing. One that names a record after it (a write since,
  // or an entry made since) is written from the put before the point in
  // its chain of older versions, if it has one there; else left out, and
  // the open finds what it needs of the key in the records after the point.
  // Each entry's place in the hash tables is noted, and the entries written
  // in that order (see above).
  const uint32_t batch = std::max<uint32_t>(1, options_.checkpoint_batch_entries);
  // The longest a batch held the shard's lock (writes waited at most that
  // long for the checkpoint), for the log.
  int64_t longest_hold_ns = 0;
  auto held_since = [&](int64_t since_ns) {
    longest_hold_ns = std::max(longest_hold_ns, absl::GetCurrentTimeNanos() - since_ns);
  };
  auto between_batches = [&](uint64_t visited) -> absl::Status {
    if (stopping()) return absl::CancelledError("the engine is closing");
    if (visited > 0 && options_.on_checkpoint_batch) {
      options_.on_checkpoint_batch(shard_id_, visited);
    }
    return absl::OkStatus();
  };
  // First pass: each entry's place in the hash tables (the top 32 bits of
  // KeyIndex::LocalityOf) and its id, 8 bytes an entry, and the most bytes
  // the file can take. Every entry the second pass writes is among these:
  // one made since names a record after the point.
  // Both passes read the index only: under the shard's lock shared, which
  // readers share too (writes wait for one batch). Under it nothing
  // allocates or touches new memory: each batch goes to a buffer of its
  // own, added to the rest once the lock is released.
  std::vector<uint64_t> order;
  order.reserve(expected_entries + expected_entries / 8);
  std::vector<uint64_t> batch_order;
  batch_order.reserve(batch);
  const bool has_history = options_.versions_kept > 1;
  uint64_t most_bytes = sizeof(header) + described.size() * sizeof(IndexSnapshotSegment) +
                        sizeof(IndexSnapshotFooter) + sizeof(uint64_t);
  for (uint64_t first = 0;; first += batch) {
    if (absl::Status status = between_batches(first); !status.ok()) return status;
    batch_order.clear();
    {
      absl::ReaderMutexLock lock(&mu_);
      const int64_t locked_ns = absl::GetCurrentTimeNanos();
      if (closed_) return absl::CancelledError("the shard closed");
      const uint64_t limit = index_.id_limit();
      if (first >= limit) break;
      const uint64_t end = std::min<uint64_t>(limit, first + batch);
      for (uint64_t id = first; id < end; ++id) {
        if (!index_.contains_id(static_cast<uint32_t>(id))) continue;
        const IndexEntry& entry = index_.at(static_cast<uint32_t>(id));
        batch_order.push_back((index_.LocalityOf(HashKey(entry.key())) & ~uint64_t{0xffffffff}) |
                              id);
        // Its older versions now are at least those before the point later
        // (writes add newer ones; the oldest only go).
        const uint64_t older = has_history ? history_.Count(static_cast<uint32_t>(id)) : 0;
        most_bytes += sizeof(IndexSnapshotEntry) + sizeof(int64_t) + entry.key_size +
                      older * sizeof(IndexSnapshotLocation);
      }
      held_since(locked_ns);
    }
    order.insert(order.end(), batch_order.begin(), batch_order.end());
  }
  std::sort(order.begin(), order.end());

  SnapshotWriter writer(context_.fs, directory_);
  if (absl::Status status = writer.Begin(most_bytes, /*exact=*/false); !status.ok()) {
    return status;
  }
  writer.Put(header);
  for (const IndexSnapshotSegment& item : described) writer.Put(item);

  // Second pass, in that order: each entry as its key stood at the point.
  IndexSnapshotFooter footer{0, 0};
  std::vector<RecordLocation> history;  // one entry's older versions, newest first
  history.reserve(options_.versions_kept);
  auto put_entry = [&](IndexSnapshotEntry item, int64_t expiry, absl::string_view key,
                       absl::Span<const RecordLocation> older) {
    item.history_count = static_cast<uint16_t>(older.size());
    footer.history_count += older.size();
    ++footer.entry_count;
    writer.Put(item);
    if ((item.flags & kEntryHasExpiry) != 0) writer.Put(expiry);
    writer.buffer().append(key.data(), key.size());
    for (const RecordLocation& location : older) {
      writer.Put(IndexSnapshotLocation{location.segment_id, location.offset,
                                       location.record_bytes});
    }
  };
  // Entries written from an older version's put: noted under the lock, the
  // put's header read after it (reading a sealed segment may wait for the
  // disk, which writers are not to wait for). Compaction, whose lock is
  // held, moves no put meanwhile.
  struct FromOlder {
    std::shared_ptr<Segment> segment;
    RecordLocation location;
    size_t key_offset;  // in from_older_keys
    uint16_t key_size;
    size_t history_offset;  // in from_older_history
    size_t history_count;
  };
  std::vector<FromOlder> from_older;
  std::string from_older_keys;
  std::vector<RecordLocation> from_older_history;
  if (options_.versions_kept > 1) {
    from_older.reserve(batch);
    from_older_keys.reserve(size_t{batch} * 64);
    from_older_history.reserve(size_t{batch} * (options_.versions_kept - 1));
  }
  for (size_t next = 0; next < order.size();) {
    if (absl::Status status = between_batches(order.size() + next); !status.ok()) return status;
    if (!writer.FlushIfFull()) break;  // Finish reports it
    from_older.clear();
    from_older_keys.clear();
    from_older_history.clear();
    {
      absl::ReaderMutexLock lock(&mu_);
      const int64_t locked_ns = absl::GetCurrentTimeNanos();
      absl::Cleanup held = [&] { held_since(locked_ns); };
      if (closed_) return absl::CancelledError("the shard closed");
      const size_t end = std::min(order.size(), next + batch);
      for (; next < end; ++next) {
        const uint32_t id = static_cast<uint32_t>(order[next]);
        if (!index_.contains_id(id)) continue;
        const IndexEntry& entry = index_.at(id);
        history.clear();
        if (options_.versions_kept > 1) {
          history_.ForEach(id, [&](uint32_t node) {
            mu_.AssertReaderHeld();  // ForEach calls back before it returns
            history.push_back(history_.location(node));
          });
        }
        if (entry.segment_id < header.tail_segment_id) {
          // Its older versions are before the point too, as its record is.
          put_entry(DescribeEntry(entry),
                    (entry.flags & kEntryHasExpiry) != 0 ? index_.expiry(id) : 0, entry.key(),
                    absl::MakeConstSpan(history));
          continue;
        }
        // A write after the point replaced it. Where older versions are
        // kept, the put it replaced (the key's state at the point) and that
        // one's older versions are in its chain, after those written since:
        // the entry is written as that put left it.
        size_t first_before = 0;
        while (first_before < history.size() &&
               history[first_before].segment_id >= header.tail_segment_id) {
          ++first_before;
        }
        if (first_before == history.size()) continue;
        const RecordLocation& location = history[first_before];
        auto segment = segments_.find(location.segment_id);
        if (segment == segments_.end()) {
          return absl::InternalError(absl::StrCat("an older version is in segment ",
                                                  location.segment_id, ", which does not exist"));
        }
        from_older.push_back(FromOlder{segment->second, location, from_older_keys.size(),
                                       entry.key_size, from_older_history.size(),
                                       history.size() - first_before - 1});
        from_older_keys.append(entry.key_data, entry.key_size);
        from_older_history.insert(from_older_history.end(), history.begin() + first_before + 1,
                                  history.end());
      }
    }
    for (const FromOlder& older : from_older) {
      // The put's header is all that is needed: the segment is sealed, and
      // the put was read when it went into the chain.
      auto bytes = older.segment->Read(older.location.offset, format::kRecordHeaderBytes);
      if (!bytes.ok()) return bytes.status();
      format::RecordHeader put;
      if (bytes->size() < sizeof(put)) return absl::DataLossError("an older version is cut short");
      std::memcpy(&put, bytes->data(), sizeof(put));
      if (put.type != static_cast<uint8_t>(format::RecordType::kPut) ||
          put.key_size != older.key_size) {
        return absl::DataLossError(absl::StrCat(older.segment->path(), " at offset ",
                                                older.location.offset,
                                                ": not the put an older version names"));
      }
      IndexSnapshotEntry item;
      std::memset(&item, 0, sizeof(item));
      item.timestamp = put.timestamp;
      item.version = put.version;
      item.segment_id = older.location.segment_id;
      item.offset = older.location.offset;
      item.record_bytes = older.location.record_bytes;
      item.key_size = older.key_size;
      item.flags = put.expiry_unix_ms != 0 ? kEntryHasExpiry : 0;
      put_entry(item, put.expiry_unix_ms,
                absl::string_view(from_older_keys).substr(older.key_offset, older.key_size),
                absl::MakeConstSpan(from_older_history)
                    .subspan(older.history_offset, older.history_count));
    }
  }
  std::vector<uint64_t>().swap(order);
  // Entries left out or written from an older version stand on records
  // after the point, which may be in the page cache alone: made durable
  // before the file that relies on them (a machine crash must not keep the
  // file and lose them).
  if (absl::Status status = SyncNow(); !status.ok()) return status;
  if (failed_flag_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError("a sync failed, so the segments' state is unknown");
  }
  if (absl::Status status = writer.Finish(footer); !status.ok()) return status;
  {
    absl::MutexLock lock(&mu_);
    checkpoint_sequence_ = header.next_sequence;
    snapshot_tail_id_ = header.tail_segment_id;
    snapshot_stale_ = false;
    checkpoint_written_at_ = absl::Now();
  }
  context_.Log(LogLevel::kInfo,
               absl::StrCat("shard ", shard_id_, ": checkpoint of ", footer.entry_count,
                            " keys written in ", absl::FormatDuration(absl::Now() - began),
                            " (an open after a crash reads segments ", header.tail_segment_id,
                            " on); the shard's lock held at most ",
                            absl::StrFormat("%.2f", static_cast<double>(longest_hold_ns) / 1e6),
                            " ms at a stretch"));
  return absl::OkStatus();
}

std::optional<Shard::SnapshotPoint> Shard::LoadIndexSnapshot(
    const absl::flat_hash_map<uint32_t, bool>& hint_ids) {
  const std::string path = PathOf(format::kIndexSnapshotName);
  uint64_t history_loaded = 0;
  uint64_t tail_segments = 0;
  SnapshotPoint point;
  auto load = [&]() -> absl::Status {
    mu_.AssertHeld();  // called before LoadIndexSnapshot returns
    if (options_.repair) return absl::FailedPreconditionError("a repair reads every segment");
    auto file = context_.fs->NewReadableFile(path);
    if (!file.ok()) return file.status();
    const uint64_t size = (*file)->Size();
    if (size < sizeof(IndexSnapshotHeader) + sizeof(uint64_t)) {
      return absl::DataLossError(absl::StrCat(size, " bytes, truncated"));
    }
    auto contents = (*file)->Read(0, size, nullptr);
    if (!contents.ok()) return contents.status();
    absl::string_view bytes = *contents;
    uint64_t stored_sum;
    std::memcpy(&stored_sum, bytes.data() + bytes.size() - sizeof(stored_sum), sizeof(stored_sum));
    bytes.remove_suffix(sizeof(stored_sum));
    if (XXH3_64bits(bytes.data(), bytes.size()) != stored_sum) {
      return absl::DataLossError("checksum mismatch (truncated or damaged)");
    }
    if (bytes.size() < sizeof(IndexSnapshotHeader) + sizeof(IndexSnapshotFooter)) {
      return absl::DataLossError(absl::StrCat(size, " bytes, truncated"));
    }
    IndexSnapshotFooter footer;
    std::memcpy(&footer, bytes.data() + bytes.size() - sizeof(footer), sizeof(footer));
    bytes.remove_suffix(sizeof(footer));
    SnapshotReader reader(bytes);
    IndexSnapshotHeader header;
    reader.Take(&header);
    if (std::memcmp(header.magic, format::kIndexSnapshotMagic, sizeof(header.magic)) != 0 ||
        header.format_version != format::kIndexSnapshotVersion || header.shard_id != shard_id_) {
      return absl::DataLossError(absl::StrCat("not an index snapshot of shard ", shard_id_));
    }
    if (header.versions_kept != options_.versions_kept) {
      return absl::FailedPreconditionError(
          absl::StrCat("written when versions_kept was ", header.versions_kept, ", now ",
                       options_.versions_kept));
    }
    // Every entry takes its fixed part and a byte of key, every older
    // version its location: counts the file cannot hold are refused before
    // anything is sized from them.
    if (footer.entry_count > bytes.size() / (sizeof(IndexSnapshotEntry) + 1) ||
        footer.history_count > bytes.size() / sizeof(IndexSnapshotLocation) ||
        footer.entry_count >= KeyIndex::kNoEntry) {
      return absl::DataLossError("counts larger than the file");
    }
    if ((header.flags & ~format::kIndexSnapshotFuzzy) != 0) {
      return absl::DataLossError(absl::StrCat("unknown flags ", header.flags));
    }
    const bool fuzzy = (header.flags & format::kIndexSnapshotFuzzy) != 0;
    // The segments below tail_segment_id are the ones described; those
    // from it on were written after the snapshot, and are read as they
    // would be without it.
    uint64_t before = 0;
    uint64_t tail_bytes = 0;
    for (const auto& [id, segment] : segments_) {
      if (id < header.tail_segment_id) {
        ++before;
      } else {
        ++tail_segments;
        tail_bytes += segment->size();
      }
    }
    if (header.segment_count != before) {
      return absl::FailedPreconditionError(
          absl::StrCat("describes ", header.segment_count, " segments, the directory holds ",
                       before, " below segment ", header.tail_segment_id));
    }
    absl::flat_hash_map<uint32_t, IndexSnapshotSegment> described;
    for (uint32_t i = 0; i < header.segment_count; ++i) {
      IndexSnapshotSegment item;
      if (!reader.Take(&item)) return absl::DataLossError("cut short in its segments");
      auto it = segments_.find(item.id);
      if (it == segments_.end() || it->second->size() != item.size ||
          it->second->header().base_sequence != item.base_sequence) {
        return absl::FailedPreconditionError(absl::StrCat(
            "segment ", item.id, " is not as it was (appended to, compacted or removed since)"));
      }
      const bool no_records = item.min_sequence == UINT64_MAX && item.max_sequence == 0;
      // (A fuzzy snapshot's dead bytes are not used: the open counts them.)
      if (item.id >= header.tail_segment_id || item.size < format::kSegmentHeaderBytes ||
          (!fuzzy && item.dead_bytes > item.size) || item.max_sequence >= header.next_sequence ||
          (!no_records && item.min_sequence > item.max_sequence) ||
          item.base_sequence > header.next_sequence || !described.emplace(item.id, item).second) {
        return absl::DataLossError(absl::StrCat("segment ", item.id, " is described wrongly"));
      }
    }
    auto valid_location = [&](uint32_t segment_id, uint32_t offset, uint32_t record_bytes) {
      auto it = described.find(segment_id);
      return it != described.end() && offset >= format::kSegmentHeaderBytes &&
             offset % format::kRecordAlignment == 0 &&
             uint64_t{offset} + record_bytes <= it->second.size &&
             record_bytes >= format::kRecordHeaderBytes;
    };
    // The bytes of each described segment that entries name (a fuzzy
    // snapshot's dead bytes are what is left).
    absl::flat_hash_map<uint32_t, uint64_t> named;
    uint64_t named_bytes = 0;
    // Counts a record an entry names; false when its segment's records
    // would then take more bytes than the segment holds.
    auto name = [&](uint32_t segment_id, uint32_t record_bytes) {
      uint64_t& bytes = named[segment_id];
      bytes += record_bytes;
      named_bytes += record_bytes;
      return bytes <= described.at(segment_id).size - format::kSegmentHeaderBytes;
    };
    // Two passes: every entry is checked before the first goes into the
    // index, which a refused snapshot then leaves untouched.
    const SnapshotReader entries_start = reader;
    for (bool checking : {true, false}) {
      reader = entries_start;
      uint64_t older_versions = 0;
      uint64_t kept[2] = {0, 0};  // by Summarised
      if (!checking) {
        // Room for the keys the segments after it may add too, guessed
        // from the bytes a key's record takes before it.
        const uint64_t named_records = footer.entry_count + footer.history_count;
        const uint64_t per_record =
            named_records == 0 ? 0 : std::max<uint64_t>(1, named_bytes / named_records);
        const uint64_t tail_entries = per_record == 0 ? 0 : tail_bytes / per_record;
        index_.Reserve(std::min<uint64_t>(footer.entry_count + tail_entries,
                                          KeyIndex::kNoEntry - 1));
        if (options_.versions_kept > 1) {
          history_.ReserveHeads(static_cast<uint32_t>(footer.entry_count));
        }
      }
      for (uint64_t i = 0; i < footer.entry_count; ++i) {
        IndexSnapshotEntry item;
        int64_t expiry = 0;
        absl::string_view key;
        if (!reader.Take(&item) ||
            ((item.flags & kEntryHasExpiry) != 0 && !reader.Take(&expiry)) ||
            !reader.TakeBytes(item.key_size, &key)) {
          return absl::DataLossError(absl::StrCat("entry ", i, " is cut short"));
        }
        if (checking &&
            (item.key_size == 0 || !ConsistentFlags(item.flags, item.history_count) ||
             ((item.flags & kEntryHasExpiry) != 0) != (expiry != 0) ||
             item.history_count >= options_.versions_kept ||
             !valid_location(item.segment_id, item.offset, item.record_bytes))) {
          return absl::DataLossError(absl::StrCat("entry ", i, " is invalid"));
        }
        if (checking && !name(item.segment_id, item.record_bytes)) {
          return absl::DataLossError(absl::StrCat("entry ", i, " overlaps others"));
        }
        uint32_t id = KeyIndex::kNoEntry;
        uint32_t tail = VersionChains::kNone;
        if (!checking) {
          const KeyRef ref{key, HashKey(key)};
          // A key twice would be a bug of the writer, which walks the
          // tables; the file's checksum would not catch it.
          id = index_.TryInsert(ref);
          if (id == KeyIndex::kNoEntry) {
            return absl::DataLossError(absl::StrCat("entry ", i, " repeats a key"));
          }
          IndexEntry& entry = index_.at(id);
          entry.set_location(RecordLocation{item.segment_id, item.offset, item.record_bytes});
          // A fuzzy snapshot's entries come back as the segments give them
          // without it: an expired put is a put with an expiry, which the
          // sweeper expires again, and its record is counted live.
          entry.set_record_flags(fuzzy ? static_cast<uint8_t>(item.flags & ~(kEntryExpired |
                                                                             kEntryShadowCounted))
                                       : item.flags);
          entry.timestamp = item.timestamp;
          entry.version = item.version;
          if (expiry != 0) index_.set_expiry(id, expiry);
          kept[Summarised(key) ? 1 : 0] += item.history_count;
        }
        for (uint16_t h = 0; h < item.history_count; ++h) {
          IndexSnapshotLocation older;
          if (!reader.Take(&older)) {
            return absl::DataLossError(absl::StrCat("entry ", i, " is cut short"));
          }
          if (checking && !valid_location(older.segment_id, older.offset, older.record_bytes)) {
            return absl::DataLossError(absl::StrCat("entry ", i, " has an invalid older version"));
          }
          if (checking && !name(older.segment_id, older.record_bytes)) {
            return absl::DataLossError(absl::StrCat("entry ", i, " overlaps others"));
          }
          if (!checking) {
            history_.PushBack(id, RecordLocation{older.segment_id, older.offset,
                                                 older.record_bytes},
                              &tail);
          }
        }
        older_versions += item.history_count;
      }
      if (!reader.done() || older_versions != footer.history_count) {
        return absl::DataLossError("its counts do not match its entries");
      }
      if (!checking) {
        CountsOf(false).kept_versions += kept[0];
        CountsOf(true).kept_versions += kept[1];
        history_loaded = older_versions;
      }
    }
    for (const auto& [id, item] : described) {
      Segment& segment = *segments_.at(id);
      segment.min_sequence = item.min_sequence;
      segment.max_sequence = item.max_sequence;
      // Every byte of a segment before the point that no entry names is a
      // record replaced, deleted or forgotten before the point (a Forget
      // record is counted too, which a rebuild does not: its segment is
      // compacted a little sooner).
      segment.dead_bytes = fuzzy ? item.size - format::kSegmentHeaderBytes -
                                       (named.contains(id) ? named.at(id) : 0)
                                 : item.dead_bytes;
      segment.has_hint = hint_ids.contains(id);
    }
    next_sequence_ = std::max<uint64_t>(header.next_sequence, 1);
    context_.hlc->Observe(header.max_timestamp);
    point = SnapshotPoint{header.tail_segment_id, next_sequence_, header.max_timestamp};
    counters_.recovery_reserved_entries.store(footer.entry_count, std::memory_order_relaxed);
    return absl::OkStatus();
  };
  const absl::Status status = load();
  if (!status.ok()) {
    index_.Clear();
    history_.Clear();
    // A file refused once is refused again: removed, and the next clean
    // Close or checkpoint writes another.
    absl::Status removed = context_.fs->RemoveFile(path);
    if (removed.ok()) removed = context_.fs->SyncDir(directory_);
    if (!removed.ok()) {
      context_.Log(LogLevel::kWarning,
                   absl::StrCat("cannot remove ", path, ": ", removed.message()));
    }
    context_.Log(LogLevel::kWarning,
                 absl::StrCat(path, " not used (the index is rebuilt from the segments): ",
                              status.message()));
    return std::nullopt;
  }
  // Kept: it stays true while the segments it describes stay as they are
  // (the open never appends to one, Shard::ContinueNewestSegment), so that
  // a crash before the next checkpoint reads only the segments written
  // since. A compaction that removes one of them makes the next open refuse
  // it.
  counters_.recovered_from_snapshot.fetch_add(1, std::memory_order_relaxed);
  context_.Log(LogLevel::kInfo,
               absl::StrCat("shard ", shard_id_, ": index loaded from ", path, " (",
                            index_.size(), " keys, ", history_loaded, " older versions; ",
                            tail_segments, " segments written after it to read)"));
  return point;
}

}  // namespace logkv::engine
