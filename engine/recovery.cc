// Shard start-up: rebuild the index from hint files or by scanning segments,
// truncate a torn tail, refuse (or, in repair mode, salvage) corruption.
#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/hint_file.h"
#include "engine/shard.h"

namespace logkv::engine {

using format::RecordType;

// What start-up tracks beyond the index itself; dropped once the shard is open.
class Shard::RecoveryState {
 public:
  // Sequence number of each entry's current record, by entry id.
  std::vector<uint64_t> sequence_of;
  // versions_kept > 1: older puts of each key, from which FinishRecovery
  // picks the key's history. One flat list sorted at the end: a map of
  // per-key vectors cost an allocation and a random access per overwrite.
  struct OlderPut {
    uint32_t entry_id;
    RecordLocation location;
    uint64_t sequence;
    uint64_t version;
  };
  static_assert(sizeof(OlderPut) == 32);
  std::vector<OlderPut> older_puts;
  uint64_t records = 0;  // records queued or applied so far
  uint64_t max_sequence = 0;
  uint64_t max_timestamp = 0;
  uint64_t max_base_sequence = 0;
  // After an index snapshot: its next_sequence. Every record written after
  // it has at least this sequence number; one below it in a segment after
  // the snapshot is a compaction's copy of a record before it (a run that
  // stopped before removing its victims, which the snapshot then still
  // describes), already accounted for by the snapshot.
  uint64_t snapshot_sequence = 0;
  // The sequence number every entry the snapshot gave counts as until a
  // record after it replaces the entry (snapshot_sequence - 1).
  uint64_t entries_sequence = 0;
  absl::flat_hash_map<uint32_t, bool> hint_ids;  // segment id -> hint file present
  // The decompressed entries of the hint file being read, one buffer for all.
  std::string hint_scratch;

  // Records queued by QueueRecovered while `sort`, applied in the order of
  // their index slots (KeyIndex::LocalityOf), found by a counting sort on
  // the top bits of that order, in batches of
  // Options::recovery_sort_batch_records records (across hint files; the
  // rest by DrainRecovered): in log order each lookup went to a random slot
  // of a table of millions. Smaller tables than
  // Options::recovery_sort_min_slots stay in the caches, and there the
  // queue and the sort would cost more than they save: records go straight
  // to the pipeline. Measured with bench/scale.sh, 2 shards, restarts
  // alternating: 5M keys (4M slots a shard) opened in 1.56 s sorted against
  // 3.09 s in log order, 3M keys (2M slots) in 0.99 against 1.49 s, 1M keys
  // (1M slots) in 0.44 against 0.51 s.
  bool sort = false;
  // A queued record: what ApplyRecovered reads of it, in 64 bytes (a
  // LogRecord with its location takes 104), its key copied to queued_keys:
  // a batch spans hint files, whose buffer the next one reuses.
  struct Queued {
    uint64_t key_hash;
    uint64_t sequence;
    uint64_t timestamp;
    uint64_t version;
    int64_t expiry_unix_ms;
    uint64_t key_offset;  // in queued_keys
    RecordLocation location;
    uint16_t key_size;
    format::RecordType type;
    uint8_t flags;

    LogRecord Record(const char* keys) const {
      LogRecord record;
      record.type = type;
      record.timestamp = timestamp;
      record.expiry_unix_ms = expiry_unix_ms;
      record.sequence = sequence;
      record.version = version;
      record.flags = flags;
      record.key = absl::string_view(keys + key_offset, key_size);
      return record;
    }
  };
  static_assert(sizeof(Queued) == 64);
  // A batch is at most Options::recovery_sort_batch_records of them, and
  // their keys at most Options::recovery_sort_batch_key_bytes: 68 bytes a
  // record and its key (about 85 MB a shard at the default 2^20 and
  // 16-byte keys; at most 132 MB). The larger the batch, the closer together its
  // lookups fall: at 10M keys, batches of 2^18 records opened 12% slower
  // than of 2^19, and those about 6% slower than of 2^20 (bench/scale.sh).
  std::vector<Queued> queued;
  std::string queued_keys;
  std::vector<uint32_t> order;  // indexes into queued, in slot order
  std::vector<uint32_t> bucket_starts;

  // Records in the prefetch pipeline (Pipeline), oldest at pending_head. A
  // lookup of a key already in the index reads three places, each found
  // through the one before: the table slot, the entry it names, the key
  // bytes the entry points to (and, here, the entry's sequence number).
  // Each is prefetched in its own step, kStageRecords records after the
  // step before, so the cache misses of a dozen records overlap instead of
  // each record stalling three times in a row. kStageRecords is about what
  // a prefetch needs to arrive while the records before it are applied.
  struct Pending {
    LogRecord record;
    RecordLocation location;
    uint64_t key_hash;
  };
  static constexpr size_t kStageRecords = 4;
  static constexpr size_t kPending = 3 * kStageRecords;
  std::array<Pending, kPending> pending;
  size_t pending_head = 0;
  size_t pending_count = 0;
};

namespace {

bool AllZero(absl::string_view bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](char c) { return c == 0; });
}

// Whether every byte of segment from offset on is zero. Only what the file
// system may hold data for is read: after a crash the active segment's file
// is mostly a hole (it has its full capacity from the start), and reading a
// hole through the mapping makes the kernel zero a page-cache page for every
// 4 KiB of it (up to 64 MiB a segment).
bool TailIsZero(const Segment& segment, uint64_t offset) {
  const uint64_t size = segment.size();
  while (offset < size) {
    uint64_t begin;
    uint64_t end;
    segment.NextData(offset, &begin, &end);
    if (begin >= size) return true;
    auto bytes = segment.Read(begin, end - begin);
    if (!bytes.ok() || !AllZero(*bytes)) return false;
    if (end <= offset) {  // no progress: read the rest
      auto rest = segment.ReadToEnd(offset);
      return rest.ok() && AllZero(*rest);
    }
    offset = end;
  }
  return true;
}

// Where segment's data ends, from offset on: after its last non-zero byte
// (the rest of the file is its preallocated space). Reads only what the
// file system may hold data for (TailIsZero).
uint64_t DataEnd(const Segment& segment, uint64_t offset) {
  const uint64_t size = segment.size();
  uint64_t data_end = offset;
  while (offset < size) {
    uint64_t begin;
    uint64_t end;
    segment.NextData(offset, &begin, &end);
    if (begin >= size) break;
    if (end <= offset) end = size;  // no progress: the rest
    auto bytes = segment.Read(begin, end - begin);
    if (!bytes.ok()) return size;
    const size_t last = bytes->find_last_not_of('\0');
    if (last != absl::string_view::npos) data_end = begin + last + 1;
    offset = end;
  }
  return data_end;
}

// The file system's block: what a crash leaves unwritten comes in whole
// blocks (a page of the page cache written back, or not).
constexpr uint64_t kBlockBytes = 4096;

// Whether [from, to) of segment holds a whole block of zeros: a block a
// crash left unwritten (the segment's space is allocated when it is made, so
// a later block may reach the disk before an earlier one, which then reads
// as zeros).
bool HoldsUnwrittenBlock(const Segment& segment, uint64_t from, uint64_t to) {
  for (uint64_t block = (from + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
       block + kBlockBytes <= to; block += kBlockBytes) {
    auto bytes = segment.Read(block, kBlockBytes);
    if (bytes.ok() && AllZero(*bytes)) return true;
  }
  return false;
}

// Whether a crash explains the damage at offset, records verifying again
// from next_valid on: a block between them left unwritten, which took the
// start of a record after the damaged one (when its header says where it
// ends). A damaged record whose own value holds a block of zeros, with the
// record after it intact, does not pass for one.
bool LostToAnUnwrittenBlock(const Segment& segment, uint64_t offset, uint64_t next_valid) {
  auto header = segment.Read(offset, format::kRecordHeaderBytes);
  if (!header.ok() || header->size() < format::kRecordHeaderBytes) return false;
  if (!AllZero(*header)) {
    const format::RecordHeader fields = PeekHeader(*header);
    if (offset + format::RecordBytes(fields.key_size, fields.value_size) >= next_valid) {
      return false;
    }
  }
  return HoldsUnwrittenBlock(segment, offset, next_valid);
}

// The next 8-aligned offset after `from` where a record verifies, or 0.
uint64_t FindNextValidRecord(const Segment& segment, uint64_t from) {
  const uint64_t size = segment.size();
  for (uint64_t offset = format::AlignRecord(from + 1); offset + format::kRecordHeaderBytes <= size;
       offset += format::kRecordAlignment) {
    auto bytes = segment.ReadToEnd(offset);
    if (!bytes.ok()) return 0;
    DecodeResult decoded = DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
    if (decoded.outcome == DecodeOutcome::kRecord) return offset;
  }
  return 0;
}

}  // namespace

void Shard::QueueRecovered(const LogRecord& record, const RecordLocation& location,
                           Segment* segment, RecoveryState* state) {
  segment->min_sequence = std::min(segment->min_sequence, record.sequence);
  segment->max_sequence = std::max(segment->max_sequence, record.sequence);
  ++state->records;
  const uint64_t hash = HashKey(record.key);
  if (state->sort) {
    state->queued.push_back(
        RecoveryState::Queued{hash, record.sequence, record.timestamp, record.version,
                              record.expiry_unix_ms, state->queued_keys.size(), location,
                              static_cast<uint16_t>(record.key.size()), record.type, record.flags});
    state->queued_keys.append(record.key.data(), record.key.size());
    // Applied in batches, which bounds the memory the open needs beyond
    // the index (RecoveryState::Queued).
    if (state->queued.size() >= options_.recovery_sort_batch_records ||
        state->queued_keys.size() >= options_.recovery_sort_batch_key_bytes) {
      SortAndApplyQueued(state);
    }
  } else {
    Pipeline(record, location, hash, state);
  }
}

void Shard::UpdateRecoveryOrder(RecoveryState* state) {
  const bool was_sorting = state->sort;
  // absl's tables have 2^k - 1 slots: counted as 2^k here, so that a
  // power of two of a threshold takes in the tables of that size.
  state->sort = index_.table_slots() + index_.groups() >= options_.recovery_sort_min_slots;
  if (state->sort && !was_sorting) {
    // Room for a whole batch at once (pages are only taken as it fills): a
    // buffer grown by doubling held up to twice the batch while it moved.
    state->queued.reserve(options_.recovery_sort_batch_records);
    state->queued_keys.reserve(options_.recovery_sort_batch_key_bytes + format::kMaxKeyBytes);
  }
}

void Shard::DrainRecovered(RecoveryState* state) {
  SortAndApplyQueued(state);
  DrainPipeline(state);
  UpdateRecoveryOrder(state);
}

void Shard::SortAndApplyQueued(RecoveryState* state) {
  std::vector<RecoveryState::Queued>& queued = state->queued;
  if (queued.empty()) return;
  // A counting sort on the top bits of each record's slot order, of the
  // records' indexes only; the records are read through it, each (and its
  // key) prefetched a few records ahead. Stable: a key's records keep their
  // log order (not that ApplyRecovered needs it).
  const int bits = std::clamp(static_cast<int>(std::bit_width(queued.size())) - 2, 1, 16);
  const size_t buckets = size_t{1} << bits;
  std::vector<uint32_t>& starts = state->bucket_starts;  // records before each bucket
  starts.assign(buckets + 1, 0);
  std::vector<uint32_t>& order = state->order;
  for (const RecoveryState::Queued& record : queued) {
    ++starts[(index_.LocalityOf(record.key_hash) >> (64 - bits)) + 1];
  }
  for (size_t b = 1; b <= buckets; ++b) starts[b] += starts[b - 1];
  order.resize(queued.size());
  for (size_t i = 0; i < queued.size(); ++i) {
    order[starts[index_.LocalityOf(queued[i].key_hash) >> (64 - bits)]++] =
        static_cast<uint32_t>(i);
  }
  const char* keys = state->queued_keys.data();
  constexpr size_t kAhead = 16;
  const size_t n = order.size();
  for (size_t j = 0; j < n; ++j) {
    if (j + kAhead < n) __builtin_prefetch(&queued[order[j + kAhead]]);
    if (j + kAhead / 2 < n) __builtin_prefetch(keys + queued[order[j + kAhead / 2]].key_offset);
    const RecoveryState::Queued& record = queued[order[j]];
    Pipeline(record.Record(keys), record.location, record.key_hash, state);
  }
  // The pipeline's records point into queued_keys, which the next batch
  // overwrites.
  DrainPipeline(state);
  queued.clear();
  state->queued_keys.clear();
}

void Shard::Pipeline(const LogRecord& record, const RecordLocation& location, uint64_t hash,
                     RecoveryState* state) {
  index_.Prefetch(KeyRef{record.key, hash});
  constexpr size_t kSlots = RecoveryState::kPending;
  constexpr size_t kStage = RecoveryState::kStageRecords;
  if (state->pending_count == kSlots) {
    const RecoveryState::Pending& oldest = state->pending[state->pending_head];
    ApplyRecovered(oldest.record, oldest.location, oldest.key_hash, state);
    state->pending_head = (state->pending_head + 1) % kSlots;
    --state->pending_count;
  }
  state->pending[(state->pending_head + state->pending_count) % kSlots] =
      RecoveryState::Pending{record, location, hash};
  ++state->pending_count;
  // The record queued kStage records ago has its table memory cached by
  // now: prefetch the entries its lookup will compare. The one queued twice
  // that long ago has those entries cached: prefetch their keys and
  // sequence numbers. Prefetches only: nothing here changes what a lookup
  // finds, however the records in between change the index.
  const size_t newest = state->pending_head + state->pending_count - 1;
  if (state->pending_count > kStage) {
    const RecoveryState::Pending& queued = state->pending[(newest - kStage) % kSlots];
    index_.ForEachCandidate(KeyRef{queued.record.key, queued.key_hash}, [&](uint32_t id) {
      mu_.AssertHeld();  // ForEachCandidate calls back before it returns
      __builtin_prefetch(&index_.at(id));
    });
  }
  if (state->pending_count > 2 * kStage) {
    const RecoveryState::Pending& queued = state->pending[(newest - 2 * kStage) % kSlots];
    index_.ForEachCandidate(KeyRef{queued.record.key, queued.key_hash}, [&](uint32_t id) {
      mu_.AssertHeld();
      const IndexEntry& entry = index_.at(id);
      __builtin_prefetch(entry.key_data);
      __builtin_prefetch(entry.key_data + entry.key_size - 1);
      if (id < state->sequence_of.size()) __builtin_prefetch(&state->sequence_of[id]);
    });
  }
}

void Shard::DrainPipeline(RecoveryState* state) {
  constexpr size_t kSlots = RecoveryState::kPending;
  for (; state->pending_count > 0; --state->pending_count) {
    const RecoveryState::Pending& oldest = state->pending[state->pending_head];
    ApplyRecovered(oldest.record, oldest.location, oldest.key_hash, state);
    state->pending_head = (state->pending_head + 1) % kSlots;
  }
  state->pending_head = 0;
}

void Shard::ApplyRecovered(const LogRecord& record, const RecordLocation& location,
                           uint64_t key_hash, RecoveryState* state) {
  if (record.sequence < state->snapshot_sequence) {
    MarkDead(location);
    return;
  }
  state->max_sequence = std::max(state->max_sequence, record.sequence);
  state->max_timestamp = std::max(state->max_timestamp, record.timestamp);

  const KeyRef ref{record.key, key_hash};
  uint32_t id = index_.Find(ref);
  const bool keep_history = options_.versions_kept > 1;
  // Remembers a record that is not (or no longer) the key's newest.
  auto retire = [&](uint32_t entry_id, uint64_t sequence, bool tombstone,
                    const RecordLocation& older, uint64_t version)
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (keep_history && !tombstone) {
      state->older_puts.push_back(RecoveryState::OlderPut{entry_id, older, sequence, version});
    } else {
      MarkDead(older);
    }
  };
  auto assign = [&](uint32_t entry_id) {
    mu_.AssertHeld();  // called before ApplyRecovered returns
    IndexEntry& entry = index_.at(entry_id);
    entry.set_location(location);
    entry.set_record_flags(record.is_tombstone() ? kEntryTombstone
                           : record.is_forget()  ? (kEntryTombstone | kEntryForgotten)
                                                 : uint8_t{0});
    entry.timestamp = record.timestamp;
    entry.version = record.version;
    index_.set_expiry(entry_id, record.expiry_unix_ms);
  };

  if (id == KeyIndex::kNoEntry) {
    id = index_.Insert(ref);
    if (state->sequence_of.size() <= id) state->sequence_of.resize(id + 1, 0);
    assign(id);
    state->sequence_of[id] = record.sequence;
    return;
  }
  IndexEntry& entry = index_.at(id);
  const uint64_t current = state->sequence_of[id];
  if (record.sequence == current) {
    // The same event twice: compaction copied it and crashed before removing
    // the original. Either copy serves; this one is dead.
    MarkDead(location);
    return;
  }
  if (record.sequence > current) {
    if (keep_history && current == state->entries_sequence && state->snapshot_sequence != 0) {
      // The first record after the snapshot of a key it gave: the older
      // versions it gave join the older puts, numbered below the entry's
      // own, newest first, and a version less each (a kept history is such
      // a run), so that FinishRecovery builds the key's history from both.
      uint64_t older = 0;
      history_.ForEach(id, [&](uint32_t node) {
        mu_.AssertHeld();  // ForEach calls back before it returns
        ++older;
        state->older_puts.push_back(RecoveryState::OlderPut{
            id, history_.location(node), current - older, entry.version - older});
      });
      if (older > 0) {
        history_.Truncate(id, 0, [](const RecordLocation&) {});
        CountsOf(entry.key()).kept_versions -= older;  // FinishRecovery counts what it keeps
      }
    }
    // An entry a close's snapshot gave as expired by the sweeper: its
    // record is counted dead already, and an expired put is no older
    // version.
    if ((entry.flags & kEntryShadowCounted) == 0) {
      retire(id, current, (entry.flags & kEntryTombstone) != 0, entry.location(), entry.version);
    }
    assign(id);
    state->sequence_of[id] = record.sequence;
  } else {
    retire(id, record.sequence, record.type != format::RecordType::kPut, location,
           record.version);
  }
}

absl::Status Shard::ScanSegment(const std::shared_ptr<Segment>& segment, bool newest_original,
                                RecoveryState* state) {
  counters_.recovered_by_scan.fetch_add(1, std::memory_order_relaxed);
  uint64_t offset = format::kSegmentHeaderBytes;
  while (offset < segment->size()) {
    auto bytes = segment->ReadToEnd(offset);
    if (!bytes.ok()) return bytes.status();
    DecodeResult decoded = DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
    if (decoded.outcome == DecodeOutcome::kRecord) {
      QueueRecovered(decoded.record,
                     RecordLocation{segment->id(), static_cast<uint32_t>(offset),
                                    static_cast<uint32_t>(decoded.record_bytes)},
                     segment.get(), state);
      offset += decoded.record_bytes;
      continue;
    }
    // The pipeline's records point into the mapping that a truncation
    // replaces.
    DrainRecovered(state);
    if (decoded.outcome == DecodeOutcome::kEnd && TailIsZero(*segment, offset)) {
      // Preallocated space never written: the segment was not closed cleanly.
      return segment->TruncateTo(context_.fs, offset);
    }
    const std::string reason = decoded.outcome == DecodeOutcome::kEnd
                                   ? std::string("zero bytes where a record should start")
                                   : decoded.error;
    const uint64_t next_valid = FindNextValidRecord(*segment, offset);
    if (newest_original && next_valid == 0) {
      // The last append was cut short by a crash; it was never acknowledged
      // as durable (a sync covers whole records), so dropping it is correct.
      const uint64_t dropped = segment->size() - offset;
      context_.Log(LogLevel::kWarning,
                   absl::StrCat("torn tail in ", segment->path(), " at offset ", offset,
                                ": dropped ", dropped, " bytes (", reason, ")"));
      counters_.torn_bytes_truncated.fetch_add(dropped, std::memory_order_relaxed);
      return segment->TruncateTo(context_.fs, offset);
    }
    if (newest_original && !options_.repair && !state->hint_ids.contains(segment->id()) &&
        LostToAnUnwrittenBlock(*segment, offset, next_valid)) {
      // Records follow a block a crash left unwritten. They were written
      // after it, so no sync completed after them (a sync makes everything
      // written before it durable, the block too): none was acknowledged as
      // durable (with --fsync=always; otherwise what came since the last
      // sync may be lost to a crash anyway). They go with it: what the shard
      // keeps is a prefix of its writes, not a log with a gap in it. (A
      // segment with a hint file was synced whole when it was sealed; repair
      // keeps every record that verifies.)
      const uint64_t dropped = segment->size() - offset;
      context_.Log(LogLevel::kWarning,
                   absl::StrCat("torn tail in ", segment->path(), " at offset ", offset,
                                ": a block of zeros a crash left unwritten, records after it at "
                                "offset ",
                                next_valid, "; dropped the ",
                                DataEnd(*segment, offset) - offset,
                                " bytes of data from the first damaged record on (", reason,
                                ")"));
      counters_.torn_bytes_truncated.fetch_add(dropped, std::memory_order_relaxed);
      return segment->TruncateTo(context_.fs, offset);
    }
    if (!options_.repair) {
      return absl::DataLossError(absl::StrCat(
          segment->path(), " at offset ", offset, ": ", reason,
          next_valid != 0 ? absl::StrCat("; valid records follow at offset ", next_valid)
                          : std::string("; the segment is not the newest, so this is no torn tail"),
          ". Open with repair to salvage the records that verify."));
    }
    if (!segment->damaged) counters_.repaired_segments.fetch_add(1, std::memory_order_relaxed);
    segment->damaged = true;
    const uint64_t skipped = (next_valid != 0 ? next_valid : segment->size()) - offset;
    counters_.repaired_bytes_skipped.fetch_add(skipped, std::memory_order_relaxed);
    context_.Log(LogLevel::kWarning, absl::StrCat("repair: skipped ", skipped, " bytes of ",
                                                  segment->path(), " at offset ", offset, " (",
                                                  reason, ")"));
    if (next_valid == 0) break;
    offset = next_valid;
  }
  DrainRecovered(state);
  return absl::OkStatus();
}

absl::Status Shard::LoadSegment(const std::shared_ptr<Segment>& segment, bool newest_original,
                                RecoveryState* state) {
  const std::string hint_path = PathOf(HintFileName(segment->id()));
  if (state->hint_ids.contains(segment->id())) {
    // ReadHintFile validates the whole file before it visits any entry, so a
    // damaged hint leaves no trace in the index before the scan below.
    absl::Status status = ReadHintFile(
        context_.fs, hint_path, segment->id(), segment->size(),
        [&](const LogRecord& record, uint32_t offset, uint32_t record_bytes) {
          mu_.AssertHeld();  // ReadHintFile calls back before it returns
          QueueRecovered(record, RecordLocation{segment->id(), offset, record_bytes},
                         segment.get(), state);
        },
        [&] {
          mu_.AssertHeld();
          // The pipeline's records point into the hint's buffer, which the
          // next hint file reuses; queued ones have their keys copied, and
          // their batch goes on.
          if (!state->sort) DrainRecovered(state);
        },
        &state->hint_scratch);
    if (status.ok()) {
      segment->has_hint = true;
      counters_.recovered_from_hints.fetch_add(1, std::memory_order_relaxed);
      return absl::OkStatus();
    }
    context_.Log(LogLevel::kWarning, absl::StrCat("hint file unusable, scanning the segment: ",
                                                  status.message()));
    if (absl::Status removed = context_.fs->RemoveFile(hint_path); !removed.ok()) return removed;
  }
  return ScanSegment(segment, newest_original, state);
}

Shard::OpenEstimate Shard::EstimateFromHints(const RecoveryState& state,
                                             uint64_t total_bytes) {
  // The newest count any hint file gives is the largest one, near enough (a
  // store that deletes keys does not drop their entries until a Forget or
  // an expiry: an over-estimate, which FinishRecovery trims). The
  // segments without a hint file add their records (estimated from the
  // records per byte of the rest) as new keys at most. The counts are not
  // verified yet (LoadSegment does that): no estimate exceeds the records
  // the segments' sizes can hold, which a damaged header could otherwise
  // make it do.
  uint64_t index_entries = 0;
  uint64_t hinted_bytes = 0;
  uint64_t hinted_records = 0;
  for (const auto& [id, segment] : segments_) {
    if (!state.hint_ids.contains(id)) continue;
    absl::StatusOr<HintSummary> summary = ReadHintSummary(context_.fs, PathOf(HintFileName(id)));
    if (!summary.ok() || summary->segment_id != id || summary->segment_bytes != segment->size()) {
      continue;  // LoadSegment finds out and scans the segment
    }
    const uint64_t most = segment->size() / format::RecordBytes(1, 0);  // one-byte keys
    index_entries = std::max(index_entries, summary->index_entries);
    hinted_bytes += summary->segment_bytes;
    hinted_records += std::min(summary->entry_count, most);
  }
  if (index_entries == 0 || hinted_bytes == 0) return {};
  const double unhinted_records =
      static_cast<double>(total_bytes - std::min(total_bytes, hinted_bytes)) *
      static_cast<double>(hinted_records) / static_cast<double>(hinted_bytes);
  const double entries =
      static_cast<double>(std::min(index_entries, hinted_records)) +
      std::min(unhinted_records, static_cast<double>(total_bytes / format::RecordBytes(1, 0)));
  // Entry ids are 32-bit.
  return {static_cast<uint64_t>(std::min(entries, static_cast<double>(KeyIndex::kNoEntry - 1))),
          hinted_records + static_cast<uint64_t>(std::min(
                               unhinted_records,
                               static_cast<double>(total_bytes / format::RecordBytes(1, 0))))};
}

void Shard::StartTailReplay(const SnapshotPoint& point, RecoveryState* state) {
  // Every entry the snapshot gave is older than every record after it:
  // each counts as the sequence number just below those.
  const uint64_t entries_sequence = point.next_sequence - 1;
  state->snapshot_sequence = point.next_sequence;
  state->max_sequence = entries_sequence;
  state->max_timestamp = point.max_timestamp;
  state->entries_sequence = entries_sequence;
  state->sequence_of.assign(index_.id_limit(), entries_sequence);
  // Their older versions stay in their chains until a record replaces the
  // entry (ApplyRecovered).
  UpdateRecoveryOrder(state);
}

void Shard::FinishRecovery(RecoveryState* state) {
  std::vector<RecoveryState::Queued>().swap(state->queued);
  std::string().swap(state->queued_keys);
  std::vector<uint32_t>().swap(state->order);
  if (options_.versions_kept > 1) {
    // A key's history is the run of puts just before its current record whose
    // versions count down by one; a version 1 began the key's current life (a
    // delete or an expiry ended the one before), so the run stops there. Puts
    // of earlier lives may linger on disk, and are dead.
    // By key, newest first.
    // Grouped by entry with a counting sort (the puts read in order, each
    // written straight to its entry's range: stores that do not wait for
    // one another), then each entry's few puts sorted by sequence below; a
    // comparison sort of every put was O(n log n) moves of 32-byte items.
    // (In place, following each displaced put to its range, it moved each
    // put once and took no copy, but every move waited for the load before
    // it: 10M keys opened 20-40% slower.)
    std::vector<RecoveryState::OlderPut> puts;
    {
      std::vector<RecoveryState::OlderPut>& unsorted = state->older_puts;
      std::vector<uint32_t> next(size_t{index_.id_limit()} + 1, 0);
      for (const RecoveryState::OlderPut& put : unsorted) ++next[put.entry_id + 1];
      for (size_t id = 1; id < next.size(); ++id) next[id] += next[id - 1];
      puts.resize(unsorted.size());
      for (const RecoveryState::OlderPut& put : unsorted) puts[next[put.entry_id]++] = put;
      std::vector<RecoveryState::OlderPut>().swap(unsorted);
    }
    // One pass over the groups: each entry's puts are sorted while they are
    // in the cache, and its history built from them at once.
    history_.ReserveHeads(index_.id_limit());
    for (size_t begin = 0; begin < puts.size();) {
      const uint32_t id = puts[begin].entry_id;
      size_t end = begin + 1;
      while (end < puts.size() && puts[end].entry_id == id) ++end;
      if (end - begin > 1) {
        std::sort(puts.begin() + begin, puts.begin() + end,
                  [](const auto& a, const auto& b) { return a.sequence > b.sequence; });
      }
      const IndexEntry& entry = index_.at(id);
      size_t kept = 0;
      uint32_t tail = VersionChains::kNone;
      uint64_t next_version = (entry.flags & kEntryTombstone) != 0 ? 1 : entry.version;
      for (size_t i = begin; i < end; ++i) {
        const RecoveryState::OlderPut& put = puts[i];
        if (i > begin && put.sequence == puts[i - 1].sequence) {
          // The same event twice: compaction copied it and crashed before
          // removing the original. Either copy serves; this one is dead (and
          // must not break the run).
          MarkDead(put.location);
          continue;
        }
        if (next_version > 1 && put.version == next_version - 1 &&
            kept + 1 < options_.versions_kept) {
          history_.PushBack(id, put.location, &tail);
          ++kept;
          next_version = put.version;
        } else {
          next_version = 1;  // the run is broken: nothing older belongs to it
          MarkDead(put.location);
        }
      }
      if (kept > 0) CountsOf(entry.key()).kept_versions += kept;
      begin = end;
    }
  }
  IndexLoaded();
  next_sequence_ = std::max(state->max_sequence + 1, state->max_base_sequence);
  next_sequence_ = std::max<uint64_t>(next_sequence_, 1);
  context_.hlc->Observe(state->max_timestamp);
}

void Shard::IndexLoaded() {
  // Keys whose newest record is a Forget leave the index now that no older
  // record can turn up; the Forget records stay on disk, not counted dead.
  std::vector<uint32_t> forgotten;
  index_.ForEach([&](uint32_t id, const IndexEntry& entry) {
    if ((entry.flags & kEntryForgotten) != 0) forgotten.push_back(id);
  });
  for (const uint32_t id : forgotten) index_.Remove(id);
  index_.ForEach([&](uint32_t id, const IndexEntry& entry) {
    mu_.AssertHeld();  // ForEach calls back before it returns
    if (Summarised(entry.key())) context_.merkle->Update(HashKey(entry.key()), LeafHashOf(entry));
    if (entry.present()) ++CountsOf(entry.key()).live_keys;
    if (const int64_t expiry = index_.expiry(id); expiry != 0 && entry.present()) {
      ttl_heap_.push(TtlItem{expiry, id});
    }
  });
  index_.ShrinkToFit();
}

void Shard::ComputeFeedStart() {
  // Sequence numbers run without gaps through the original segments, so a
  // gap (or a first segment that does not start at 1) marks events that
  // compaction removed; the feed cannot serve anything up to the last gap.
  compacted_through_sequence_ = 0;
  uint64_t covered_through = 0;
  for (uint32_t id : original_ids_) {
    const Segment& segment = *segments_.at(id);
    const uint64_t base = segment.header().base_sequence;
    if (base > covered_through + 1) compacted_through_sequence_ = base - 1;
    covered_through = std::max(covered_through, segment.max_sequence > 0 ? segment.max_sequence
                                                                        : base - 1);
  }
}

absl::Status Shard::RemoveTornCreations(std::vector<uint32_t>* segment_ids) {
  // A segment is made by creating and preallocating its file, then writing
  // its header; a crash or a full disk in between leaves the newest segment
  // without a header (empty, short, or all zeros). Such a file never held a
  // record, since records follow the header. Versions that did not clean up
  // after a refused creation left a run of empty newest segments, one per
  // refused write, so the run is removed as a whole.
  bool removed = false;
  while (!segment_ids->empty()) {
    const std::string path = PathOf(SegmentFileName(segment_ids->back()));
    auto file = context_.fs->NewReadableFile(path);
    if (!file.ok()) return file.status();
    const uint64_t size = (*file)->Size();
    if (size >= format::kSegmentHeaderBytes) {
      auto bytes = (*file)->Read(0, size, nullptr);
      if (!bytes.ok()) return bytes.status();
      // A preallocated file whose header never reached the disk is zeros; if
      // anything else follows, it is no torn creation but damage.
      if (!AllZero(*bytes)) break;
    }
    file->reset();
    context_.Log(LogLevel::kWarning,
                 absl::StrCat("removing ", path, ": ", size,
                              " bytes and no segment header, a segment creation cut short by a "
                              "crash or a full disk (it never held a record)"));
    if (absl::Status status = context_.fs->RemoveFile(path); !status.ok()) return status;
    counters_.torn_segments_removed.fetch_add(1, std::memory_order_relaxed);
    segment_ids->pop_back();
    removed = true;
  }
  return removed ? context_.fs->SyncDir(directory_) : absl::OkStatus();
}

absl::Status Shard::Open() {
  if (absl::Status status = context_.fs->CreateDir(directory_); !status.ok()) return status;
  if (absl::Status status = FinishRemovals(); !status.ok()) return status;
  auto names = context_.fs->ListDir(directory_);
  if (!names.ok()) return names.status();

  RecoveryState state;
  std::vector<uint32_t> segment_ids;
  bool snapshot = false;
  for (const std::string& name : *names) {
    uint32_t id;
    if (ParseSegmentFileName(name, ".log", &id)) {
      segment_ids.push_back(id);
    } else if (ParseSegmentFileName(name, ".hint", &id)) {
      state.hint_ids[id] = true;
    } else if (name == format::kIndexSnapshotName) {
      snapshot = true;
    } else if (name == absl::StrCat(format::kIndexSnapshotName, ".tmp")) {
      // A close stopped while it wrote one; nothing needs it.
      if (absl::Status status = context_.fs->RemoveFile(PathOf(name)); !status.ok()) {
        context_.Log(LogLevel::kWarning, absl::StrCat("cannot remove ", PathOf(name), ": ",
                                                      status.message()));
      }
    } else if (absl::EndsWith(name, ".compacting")) {
      // An unfinished compaction's output: the segments it was copying from
      // are all still here.
      context_.Log(LogLevel::kInfo, absl::StrCat("removing unfinished compaction output ",
                                                 PathOf(name)));
      if (absl::Status status = context_.fs->RemoveFile(PathOf(name)); !status.ok()) {
        return status;
      }
    }
  }
  std::sort(segment_ids.begin(), segment_ids.end());
  if (absl::Status status = RemoveTornCreations(&segment_ids); !status.ok()) return status;

  absl::MutexLock lock(&mu_);
  UpdateRecoveryOrder(&state);
  for (uint32_t id : segment_ids) {
    auto segment = Segment::Open(context_.fs, PathOf(SegmentFileName(id)), shard_id_, id);
    if (!segment.ok()) {
      if (!options_.repair || segment.status().code() != absl::StatusCode::kDataLoss) {
        return segment.status();
      }
      const std::string from = PathOf(SegmentFileName(id));
      context_.Log(LogLevel::kWarning, absl::StrCat("repair: setting aside ", from, ": ",
                                                    segment.status().message()));
      if (absl::Status status = context_.fs->RenameFile(from, from + ".damaged"); !status.ok()) {
        return status;
      }
      counters_.repaired_segments_set_aside.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    std::shared_ptr<Segment> shared = std::move(*segment);
    state.max_base_sequence = std::max(state.max_base_sequence, shared->header().base_sequence);
    if (!shared->compacted()) original_ids_.push_back(id);
    segments_[id] = shared;
    next_segment_id_ = std::max(next_segment_id_, id + 1);
  }
  // A clean Close or a checkpoint left the index itself: loaded (or
  // refused, and removed) before anything else reads the segments; then
  // only the segments written after it are read, their records newer than
  // every entry it gave (StartTailReplay).
  const std::optional<SnapshotPoint> point =
      snapshot ? LoadIndexSnapshot(state.hint_ids) : std::nullopt;
  bool tail_read = false;
  if (point.has_value()) {
    snapshot_tail_id_ = point->tail_segment_id;
    checkpoint_sequence_ = point->next_sequence;
    // New segments come after the point, also when the segment just below it
    // is gone (a clean close removes an empty active segment).
    next_segment_id_ = std::max(next_segment_id_, point->tail_segment_id);
    // Counts as written now (Options::checkpoint_stale_interval_ms).
    checkpoint_written_at_ = absl::Now();
    const uint32_t newest_original = original_ids_.empty() ? 0 : original_ids_.back();
    for (uint32_t id : segment_ids) {
      auto it = segments_.find(id);
      if (id < point->tail_segment_id || it == segments_.end()) continue;
      if (!tail_read) {
        tail_read = true;
        StartTailReplay(*point, &state);
      }
      if (absl::Status status = LoadSegment(it->second, id == newest_original, &state);
          !status.ok()) {
        return status;
      }
    }
    DrainRecovered(&state);
  } else {
    const uint32_t newest_original = original_ids_.empty() ? 0 : original_ids_.back();
    uint64_t total_bytes = 0;
    for (const auto& [id, segment] : segments_) total_bytes += segment->size();
    uint64_t loaded_bytes = 0;
    bool reserved = false;
    // Sizes the index once, so that growing it never rehashes millions of
    // keys (each rehash reads every key back from the arena), and each
    // entry's sequence number too (growing it copies it, with the page faults
    // of each new copy).
    // And the older puts (versions_kept > 1): at most one a record (up to
    // 2^24 of them, 512 MiB of address space, beyond which the list grows
    // by doubling). Only what is written of it takes memory; grown by
    // doubling instead, each copy's pages were written (and zeroed by the
    // kernel) once more: at 10M keys read without hint files, 667k page
    // faults against 547k.
    auto reserve = [&](OpenEstimate estimate) {
      mu_.AssertHeld();  // called before Open returns
      reserved = true;
      index_.Reserve(estimate.entries);
      state.sequence_of.reserve(estimate.entries);
      if (options_.versions_kept > 1) {
        state.older_puts.reserve(std::min<uint64_t>(estimate.records, uint64_t{1} << 24));
      }
      counters_.recovery_reserved_entries.store(estimate.entries, std::memory_order_relaxed);
      UpdateRecoveryOrder(&state);
    };
    // Before a record is read, from what the hint files say: the tables are
    // then no larger than the keys need, and the fewer slots, the closer
    // together the sorted batches' lookups fall.
    if (const OpenEstimate estimate = EstimateFromHints(state, total_bytes);
        estimate.entries > 0) {
      reserve(estimate);
    }
    for (uint32_t id : segment_ids) {
      auto it = segments_.find(id);
      if (it == segments_.end()) continue;
      if (absl::Status status = LoadSegment(it->second, id == newest_original, &state);
          !status.ok()) {
        return status;
      }
      loaded_bytes += it->second->size();
      if (!reserved && state.records >= 1024 && loaded_bytes < total_bytes) {
        // Without hint files that say, from the records per byte seen so far.
        // Overwrites make this an over-estimate of the keys; FinishRecovery
        // gives back what is left unused.
        const uint64_t records = static_cast<uint64_t>(static_cast<double>(state.records) *
                                                       static_cast<double>(total_bytes) /
                                                       static_cast<double>(loaded_bytes));
        reserve({records, records});
      }
    }
    DrainRecovered(&state);
  }
  for (const auto& [id, present] : state.hint_ids) {
    if (!segments_.contains(id) && context_.fs->FileExists(PathOf(HintFileName(id)))) {
      (void)context_.fs->RemoveFile(PathOf(HintFileName(id)));  // orphan of a removed segment
    }
  }
  if (point.has_value() && !tail_read) {
    IndexLoaded();  // LoadIndexSnapshot set next_sequence_ and the clock
  } else {
    FinishRecovery(&state);
  }
  ComputeFeedStart();
  appended_sequence_.store(next_sequence_ - 1, std::memory_order_release);
  {
    absl::MutexLock sync_lock(&sync_mu_);
    durable_sequence_ = next_sequence_ - 1;
  }
  const bool continued = ContinueNewestSegment();
  if (!continued) {
    if (absl::Status synced = SyncNewestSegment(); !synced.ok()) return synced;
  }
  absl::Status status = continued ? absl::OkStatus() : RollActive(0);
  if (IsNoSpace(status)) {
    // A full disk need not keep the data from being read: the shard opens
    // without an active segment and its first write tries again.
    context_.Log(LogLevel::kWarning,
                 absl::StrCat(status.message(), "; shard ", shard_id_,
                              " serves reads and refuses writes until space is freed"));
    out_of_space_ = status;
    return absl::OkStatus();
  }
  return status;
}

bool Shard::ContinueNewestSegment() {
  // After a crash (a kill), appending to the newest original segment where
  // it ends, rather than starting a new one, keeps a store that is killed
  // and restarted again and again from growing a segment per shard each
  // time: a clean Close removes an empty active segment, a kill leaves it,
  // and with it whatever the restart wrote. Recovery has already cut a torn
  // tail off it, so the new records follow the last whole one, and it is
  // still the only segment a crash can leave torn. A segment with a hint
  // file was sealed by a clean Close (a running shard writes hints only for
  // sealed segments): it stays sealed, so its hint stays true. A segment
  // that is full, damaged (repair) or cannot be reopened is left sealed too,
  // and a new one is started.
  // A segment an index snapshot describes stays as it is described.
  if (original_ids_.empty() || original_ids_.back() < snapshot_tail_id_) return false;
  const std::shared_ptr<Segment>& newest = segments_.at(original_ids_.back());
  if (newest->has_hint || newest->damaged || newest->writable() ||
      newest->size() >= options_.segment_bytes) {
    return false;
  }
  if (absl::Status status = newest->Reopen(context_.fs, options_.segment_bytes); !status.ok()) {
    if (!absl::IsUnimplemented(status)) {
      context_.Log(LogLevel::kWarning,
                   absl::StrCat("starting a new segment: cannot continue ", newest->path(), ": ",
                                status.message()));
    }
    return false;
  }
  SetActive(newest);
  // What the killed process appended may still be only in the page cache,
  // and the shard counts every recovered record as durable from now on (a
  // Sync with nothing new to sync does nothing): sync it now. A failure
  // leaves the file's state unknown, as a failed sync of a running shard
  // does, and the shard refuses writes.
  if (absl::Status status = newest->Sync(); !status.ok()) SetFailed(status);
  return true;
}

absl::Status Shard::SyncNewestSegment() {
  // The newest segment is the only one a killed process can have left with
  // records in the page cache alone (a full one is sealed, and synced, before
  // the next takes writes), and the shard counts every recovered record as
  // durable. ContinueNewestSegment syncs the one it continues; one that stays
  // sealed (full, damaged, or on a file system that cannot reopen files) is
  // synced here. One with a hint was sealed by a clean Close.
  //
  // A failure fails the open. Opening anyway, refusing writes, would start a
  // new segment after this one (the next open's newest, synced instead of
  // it) or write this one a hint at close (which tells the next open it was
  // synced): no later open would sync it again. Failing leaves the
  // directory as it was and the next open syncs again, which helps after a
  // transient failure; after an I/O error Linux may have marked the pages
  // clean (a later fdatasync then succeeds without writing them), so a disk
  // that fails there needs an operator either way, and the failed open says so.
  if (original_ids_.empty()) return absl::OkStatus();
  const std::shared_ptr<Segment>& newest = segments_.at(original_ids_.back());
  if (newest->has_hint) return absl::OkStatus();
  if (absl::Status status = context_.fs->SyncFile(newest->path()); !status.ok()) {
    return WithContext(
        absl::StrCat("shard ", shard_id_,
                     ": syncing its newest segment, which the last run wrote (the open "
                     "failed; check the disk before starting again): "),
        status);
  }
  return absl::OkStatus();
}

absl::Status Shard::Close() {
  std::vector<std::shared_ptr<Segment>> need_hints;
  std::vector<DurableWaiter> ready;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    closed_ = true;
    if (active_ != nullptr) {
      if (absl::Status status = active_->Seal(context_.fs); !status.ok()) {
        SetFailed(status);  // answers the writers still waiting
        return status;
      }
    }
    {
      // Every record is now in a sealed (synced) segment. A writer that
      // appended after the engine's last sync and registers only now is
      // answered at once, and those already waiting are answered here: the
      // group commit has stopped.
      absl::MutexLock sync_lock(&sync_mu_);
      durable_sequence_ = std::max(durable_sequence_, next_sequence_ - 1);
      for (DurableWaiter& waiter : durable_waiters_) ready.push_back(std::move(waiter));
      durable_waiters_.clear();
      durable_cv_.SignalAll();
    }
    if (active_ != nullptr) {
      if (active_->size() == format::kSegmentHeaderBytes && segments_.size() > 1) {
        // Nothing was written since start-up: drop the empty segment rather
        // than leave one per restart.
        if (absl::Status status = DropEmptyActive(); !status.ok()) return status;
      }
    }
    for (const auto& [id, segment] : segments_) {
      if (!segment->has_hint && !segment->damaged) need_hints.push_back(segment);
    }
  }
  for (DurableWaiter& waiter : ready) waiter.done(absl::OkStatus());
  for (const std::shared_ptr<Segment>& segment : need_hints) {
    if (absl::Status status = WriteHint(segment); !status.ok()) return status;
  }
  // Not while a compaction run (Engine::CompactNow on another thread) holds
  // the compaction lock: between renaming its outputs and removing its
  // victims the snapshot would list both. (WriteHintsNow takes it too.)
  if (IndexEntries() >= options_.index_snapshot_min_entries) {
    if (compaction_mu_.TryLock()) {
      {
        absl::MutexLock lock(&mu_);
        // The next open does without it (it uses an older one that still
        // fits the segments, else the hint files), so a failure here (a full
        // disk) does not fail the close.
        if (absl::Status status = WriteIndexSnapshot(); !status.ok()) {
          context_.Log(LogLevel::kWarning,
                       absl::StrCat("shard ", shard_id_, ": no index snapshot written (the next "
                                    "open uses the last one if it still fits the segments, else "
                                    "the hint files): ",
                                    status.message()));
        }
      }
      compaction_mu_.Unlock();
    } else {
      context_.Log(LogLevel::kWarning,
                   absl::StrCat("shard ", shard_id_, ": no index snapshot written: a compaction "
                                "or a hint-file pass is running (the next open uses the last one "
                                "if it still fits the segments, else the hint files)"));
    }
  }
  return context_.fs->SyncDir(directory_);
}

}  // namespace logkv::engine
