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
#include <memory>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/shard.h"

namespace logkv::engine {

namespace {

using format::IndexSnapshotEntry;
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

std::string TemporaryName() { return absl::StrCat(format::kIndexSnapshotName, ".tmp"); }

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
      history * sizeof(IndexSnapshotLocation) + sizeof(uint64_t);

  const std::string temporary = PathOf(TemporaryName());
  auto file = context_.fs->NewWritableFile(temporary, file_bytes);
  if (!file.ok()) return file.status();
  bool closed = false;
  bool kept = false;
  absl::Cleanup remove_temporary = [&] {
    if (!closed) (void)(*file)->Close();
    if (!kept) (void)context_.fs->RemoveFile(temporary);
  };
  XXH3_state_t* checksum = XXH3_createState();
  if (checksum == nullptr) return absl::ResourceExhaustedError("out of memory for a checksum");
  absl::Cleanup free_checksum = [checksum] { XXH3_freeState(checksum); };
  XXH3_64bits_reset(checksum);

  std::string buffer;
  buffer.reserve(kWriteChunkBytes + 4096);
  uint64_t written = 0;
  absl::Status failure;
  // After a failure the rest is dropped as it comes (the buffer never grows
  // past a chunk), and the walk stops at the next entry.
  auto flush = [&] {
    if (!buffer.empty() && failure.ok()) {
      XXH3_64bits_update(checksum, buffer.data(), buffer.size());
      written += buffer.size();
      if (written > file_bytes) {
        failure = absl::InternalError("the index changed while its snapshot was written");
      } else {
        failure = (*file)->Append(buffer);
      }
    }
    buffer.clear();
  };
  auto put = [&](const auto& item) {
    buffer.append(reinterpret_cast<const char*>(&item), sizeof(item));
  };

  IndexSnapshotHeader header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, format::kIndexSnapshotMagic, sizeof(header.magic));
  header.format_version = format::kIndexSnapshotVersion;
  header.shard_id = shard_id_;
  header.versions_kept = options_.versions_kept;
  header.segment_count = static_cast<uint32_t>(segments_.size());
  header.entry_count = index_.size();
  header.history_count = history;
  header.next_sequence = next_sequence_;
  // The clock's reading now is above every record's timestamp (it issued
  // or observed each), also those no entry names any more (a Forget's, one
  // a compaction dropped): the next open's clock must not start below one
  // it issued.
  header.max_timestamp = context_.hlc->Now();
  put(header);
  for (const auto& [id, segment] : segments_) {
    IndexSnapshotSegment item;
    std::memset(&item, 0, sizeof(item));
    item.id = id;
    item.size = segment->size();
    item.base_sequence = segment->header().base_sequence;
    item.min_sequence = segment->min_sequence;
    item.max_sequence = segment->max_sequence;
    item.dead_bytes = segment->dead_bytes;
    put(item);
  }
  uint64_t history_written = 0;
  index_.ForEachInSlotOrder([&](uint32_t id, const IndexEntry& entry) {
    mu_.AssertHeld();  // ForEachInSlotOrder calls back before it returns
    if (buffer.size() >= kWriteChunkBytes) flush();
    if (!failure.ok()) return;
    IndexSnapshotEntry item;
    std::memset(&item, 0, sizeof(item));
    item.timestamp = entry.timestamp;
    item.version = entry.version;
    item.segment_id = entry.segment_id;
    item.offset = entry.offset;
    item.record_bytes = entry.record_bytes;
    item.key_size = entry.key_size;
    item.flags = entry.flags;
    const size_t at = buffer.size();
    put(item);
    if ((entry.flags & kEntryHasExpiry) != 0) put(index_.expiry(id));
    buffer.append(entry.key_data, entry.key_size);
    if (history == 0) return;
    uint16_t older = 0;
    history_.ForEach(id, [&](uint32_t node) {
      mu_.AssertHeld();
      const RecordLocation& location = history_.location(node);
      put(IndexSnapshotLocation{location.segment_id, location.offset, location.record_bytes});
      ++older;
    });
    history_written += older;
    std::memcpy(buffer.data() + at + offsetof(IndexSnapshotEntry, history_count), &older,
                sizeof(older));
  });
  flush();
  if (failure.ok() && (written + sizeof(uint64_t) != file_bytes || history_written != history)) {
    failure = absl::InternalError(absl::StrCat("the index snapshot came to ", written,
                                               " bytes where ", file_bytes - sizeof(uint64_t),
                                               " were counted"));
  }
  if (!failure.ok()) return failure;
  const uint64_t sum = XXH3_64bits_digest(checksum);
  if (absl::Status status = (*file)->Append(absl::string_view(
          reinterpret_cast<const char*>(&sum), sizeof(sum)));
      !status.ok()) {
    return status;
  }
  if (absl::Status status = (*file)->Sync(); !status.ok()) return status;
  closed = true;
  if (absl::Status status = (*file)->Close(); !status.ok()) return status;
  if (absl::Status status =
          context_.fs->RenameFile(temporary, PathOf(format::kIndexSnapshotName));
      !status.ok()) {
    return status;
  }
  if (absl::Status status = context_.fs->SyncDir(directory_); !status.ok()) {
    // Whether the name is durable is unknown: none is better than one the
    // log says was not written.
    (void)context_.fs->RemoveFile(PathOf(format::kIndexSnapshotName));
    return status;
  }
  kept = true;
  return absl::OkStatus();
}

bool Shard::LoadIndexSnapshot(const absl::flat_hash_map<uint32_t, bool>& hint_ids) {
  const std::string path = PathOf(format::kIndexSnapshotName);
  uint64_t history_loaded = 0;
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
    if (header.entry_count > bytes.size() / (sizeof(IndexSnapshotEntry) + 1) ||
        header.history_count > bytes.size() / sizeof(IndexSnapshotLocation) ||
        header.entry_count >= KeyIndex::kNoEntry) {
      return absl::DataLossError("counts larger than the file");
    }
    if (header.segment_count != segments_.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("describes ", header.segment_count, " segments, the directory holds ",
                       segments_.size()));
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
      if (item.dead_bytes > item.size || item.max_sequence >= header.next_sequence ||
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
    // Two passes: every entry is checked before the first goes into the
    // index, which a refused snapshot then leaves untouched.
    const SnapshotReader entries_start = reader;
    for (bool checking : {true, false}) {
      reader = entries_start;
      uint64_t older_versions = 0;
      uint64_t kept[2] = {0, 0};  // by Summarised
      if (!checking) {
        index_.Reserve(header.entry_count);
        if (options_.versions_kept > 1) {
          history_.ReserveHeads(static_cast<uint32_t>(header.entry_count));
        }
      }
      for (uint64_t i = 0; i < header.entry_count; ++i) {
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
          entry.set_record_flags(item.flags);
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
          if (!checking) {
            history_.PushBack(id, RecordLocation{older.segment_id, older.offset,
                                                 older.record_bytes},
                              &tail);
          }
        }
        older_versions += item.history_count;
      }
      if (!reader.done() || older_versions != header.history_count) {
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
      segment.dead_bytes = item.dead_bytes;
      segment.has_hint = hint_ids.contains(id);
    }
    next_sequence_ = std::max<uint64_t>(header.next_sequence, 1);
    context_.hlc->Observe(header.max_timestamp);
    counters_.recovery_reserved_entries.store(header.entry_count, std::memory_order_relaxed);
    return absl::OkStatus();
  };
  const absl::Status status = load();
  if (!status.ok()) {
    index_.Clear();
    history_.Clear();
  }
  // Used once: the first append makes it stale, and the next clean Close
  // writes another. If it cannot be removed, the next open refuses it for
  // the segments that changed since.
  absl::Status removed = context_.fs->RemoveFile(path);
  if (removed.ok()) removed = context_.fs->SyncDir(directory_);
  if (!removed.ok()) {
    context_.Log(LogLevel::kWarning, absl::StrCat("cannot remove ", path, ": ", removed.message()));
  }
  if (!status.ok()) {
    context_.Log(LogLevel::kWarning,
                 absl::StrCat(path, " not used (the index is rebuilt from the segments): ",
                              status.message()));
    return false;
  }
  counters_.recovered_from_snapshot.fetch_add(1, std::memory_order_relaxed);
  context_.Log(LogLevel::kInfo, absl::StrCat("shard ", shard_id_, ": index loaded from ", path,
                                             " (", index_.size(), " keys, ", history_loaded,
                                             " older versions)"));
  return true;
}

}  // namespace logkv::engine
