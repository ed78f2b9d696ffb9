// The on-disk layout of segments, records and hint files. The grammar is
// written down in docs/format.md; this header is its single source in code.
// All integers are little-endian. Persisted values marked "never change" are
// part of the format: add new values, never renumber old ones.
#ifndef LOGKV_ENGINE_LOG_FORMAT_H_
#define LOGKV_ENGINE_LOG_FORMAT_H_

#include <bit>
#include <cstddef>
#include <cstdint>

namespace logkv::engine::format {

static_assert(std::endian::native == std::endian::little,
              "the on-disk format is little-endian and is read by casting");

// Bumped only with a migration path; a segment or hint of another version is
// refused with a clear error.
inline constexpr uint32_t kFormatVersion = 1;

// ---- Segment file: <12-digit id>.log --------------------------------------
inline constexpr char kSegmentMagic[8] = {'L', 'O', 'G', 'K', 'V', 'S', 'E', 'G'};

// Segment flags (never change).
inline constexpr uint32_t kSegmentFlagCompacted = 1u << 0;  // written by compaction

struct SegmentHeader {
  char magic[8];           // kSegmentMagic
  uint32_t format_version;  // kFormatVersion
  uint32_t flags;           // kSegmentFlag*
  uint32_t shard_id;
  uint32_t segment_id;
  uint64_t base_sequence;   // the shard's next sequence number when the segment was made
  int64_t created_unix_ms;
  uint64_t checksum;        // XXH3-64 of the 40 bytes before it
};
static_assert(sizeof(SegmentHeader) == 48);
inline constexpr size_t kSegmentHeaderBytes = sizeof(SegmentHeader);

// ---- Record ----------------------------------------------------------------
// A record starts at an 8-byte aligned offset; zero bytes pad it to the next one.
inline constexpr size_t kRecordAlignment = 8;

// Record types (never change). 0 is never written: an all-zero header marks
// the unwritten, preallocated end of an active segment.
enum class RecordType : uint8_t {
  kPut = 1,
  kDelete = 2,  // tombstone
  // This store no longer keeps the key (a replica that stopped owning it, or a
  // tombstone every owner has): the key leaves the index as if it had never
  // been written. Not a client event and not replicated; it stays on disk as
  // long as an older record of its key may. No value.
  kForget = 3,
};
inline constexpr uint8_t kMaxKnownRecordType = 3;

// Record flags (never change). A record with an unknown flag bit is refused as
// corrupt.
//
// kRecordFlagZstd: a Put whose value is stored compressed. Its value_size
// bytes are the plain value's size (u32, at most kHardMaxValueBytes) followed
// by one zstd frame that decompresses to exactly that many bytes. Readers get
// the plain value; the flag never appears on a Delete or Forget.
inline constexpr uint8_t kRecordFlagZstd = 1u << 0;
inline constexpr uint8_t kKnownRecordFlags = kRecordFlagZstd;
inline constexpr size_t kCompressedSizeBytes = sizeof(uint32_t);  // the plain-size prefix

struct RecordHeader {
  uint64_t checksum;    // XXH3-64 over bytes [8, 48 + key_size + value_size)
  uint8_t type;         // RecordType
  uint8_t flags;        // kRecordFlag*
  uint16_t key_size;
  uint32_t value_size;  // stored value bytes; 0 for a tombstone
  uint64_t timestamp;   // hybrid logical clock: (unix ms << 16) | logical counter
  int64_t expiry_unix_ms;  // 0 = never expires
  uint64_t sequence;       // per-shard event number, from 1
  uint64_t version;        // per-key version, 1 for the first put after absence
};
static_assert(sizeof(RecordHeader) == 48);
static_assert(offsetof(RecordHeader, type) == 8);
static_assert(offsetof(RecordHeader, timestamp) == 16);
static_assert(offsetof(RecordHeader, version) == 40);
inline constexpr size_t kRecordHeaderBytes = sizeof(RecordHeader);
inline constexpr size_t kChecksumBytes = sizeof(uint64_t);

inline constexpr uint32_t kMaxKeyBytes = UINT16_MAX;  // key_size is 16 bits
// Offsets and record sizes are 32-bit in the index and hint files.
inline constexpr uint32_t kHardMaxValueBytes = 512u << 20;

constexpr uint64_t AlignRecord(uint64_t n) {
  return (n + kRecordAlignment - 1) & ~uint64_t{kRecordAlignment - 1};
}
constexpr uint64_t RecordBytes(uint64_t key_size, uint64_t value_size) {
  return AlignRecord(kRecordHeaderBytes + key_size + value_size);
}
static_assert(kSegmentHeaderBytes % kRecordAlignment == 0);

// ---- Hint file: <12-digit id>.hint -------------------------------------------
// One entry per record of its segment (live or not), so that start-up can build
// the index without reading values. Written by compaction and on clean close.
inline constexpr char kHintMagic[8] = {'L', 'O', 'G', 'K', 'V', 'H', 'N', 'T'};

struct HintHeader {
  char magic[8];            // kHintMagic
  uint32_t format_version;  // kFormatVersion
  uint32_t segment_id;
  uint64_t segment_bytes;   // size of the segment the hint describes
  uint64_t entry_count;
};
static_assert(sizeof(HintHeader) == 32);

struct HintEntry {  // followed by key_size bytes of key
  uint32_t offset;
  uint32_t record_bytes;
  uint16_t key_size;
  uint8_t type;
  uint8_t flags;        // the record's flags
  uint32_t value_size;  // the record's (stored) value_size
  uint64_t timestamp;
  int64_t expiry_unix_ms;
  uint64_t sequence;
  uint64_t version;
};
static_assert(sizeof(HintEntry) == 48);
// Hint files of version 1 (kFormatVersion) hold their entries as they are;
// version 2 holds them as one zstd frame (with its content size) after the
// header. Version 3, written from then on, is version 2 with a uint64 between
// the header and the frame: the entries the shard's index held when the
// hint was written, from which start-up sizes the index before it reads a
// single entry (the records counted in the segments over-count the keys by
// every overwrite). All three are read.
inline constexpr uint32_t kHintFormatVersion = 3;
inline constexpr uint32_t kHintCompressedFormatVersion = 2;
inline constexpr size_t kHintIndexEntriesBytes = sizeof(uint64_t);  // version 3
// The file ends with XXH3-64 of everything before it.
inline constexpr size_t kHintTrailerBytes = sizeof(uint64_t);

// ---- MANIFEST ------------------------------------------------------------------
// A text file at the top of the data directory:
//   logkv-manifest <format version>\n shards <count>\n checksum <16 hex digits>\n
// where the checksum is XXH3-64 of the lines before it.
inline constexpr char kManifestName[] = "MANIFEST";
inline constexpr char kLockName[] = "LOCK";

// ---- REMOVING (in a shard's directory) ------------------------------------------
// The segments a finished compaction replaced, written (to a temporary name,
// synced, renamed, the directory synced) before the first of them is
// unlinked and removed once all are: start-up unlinks what it names, so a
// run's victims go all or none. Text:
//   logkv-removing\n <segment ids, space-separated>\n checksum <16 hex digits>\n
// where the checksum is XXH3-64 of the lines before it.
inline constexpr char kRemovalsName[] = "REMOVING";

// ---- index.snapshot (in a shard's directory) ----------------------------------
// The shard's index at a point in its log, so that an open loads it instead
// of rebuilding it from every hint file (each key's records, in order), and
// replays only the records written after that point. Two writers: a clean
// Close (every segment sealed, the index exact, nothing after it), and a
// running shard's checkpoint (Shard::WriteCheckpoint: the active segment
// sealed, then the entries copied about a thousand at a time while writes go
// on; flag kIndexSnapshotFuzzy). Written to kIndexSnapshotName + ".tmp",
// synced, renamed, the directory synced. An open uses it only if the
// segments with ids below tail_segment_id are exactly those it describes,
// with their sizes and first sequence numbers (a compaction or a repair
// since changes that); the segments from tail_segment_id on hold the
// records written after it, which the open reads as it would without a
// snapshot. Layout: an IndexSnapshotHeader, segment_count
// IndexSnapshotSegments, the entries (each an IndexSnapshotEntry, an int64
// expiry when the entry's flags have kEntryHasExpiry, key_size bytes of key,
// history_count IndexSnapshotLocations, newest first), an
// IndexSnapshotFooter with their counts (a checkpoint learns them only as it
// writes), then XXH3-64 of everything before.
inline constexpr char kIndexSnapshotName[] = "index.snapshot";
inline constexpr char kIndexSnapshotMagic[8] = {'L', 'O', 'G', 'K', 'V', 'I', 'D', 'X'};
inline constexpr uint32_t kIndexSnapshotVersion = 2;
// The entries were copied while writes went on: each is the key's state at
// the snapshot's point (one a later write had replaced by the time it was
// copied is written from the put before the point in its chain of older
// versions, or left out), but the segments' dead bytes are not; the open
// counts them from the entries.
inline constexpr uint32_t kIndexSnapshotFuzzy = 1;

struct IndexSnapshotHeader {
  char magic[8];            // kIndexSnapshotMagic
  uint32_t format_version;  // kIndexSnapshotVersion
  uint32_t shard_id;
  uint32_t versions_kept;   // Options::versions_kept of the run that wrote it
  uint32_t segment_count;
  uint64_t next_sequence;   // at the snapshot's point
  uint64_t max_timestamp;   // the clock's reading then (above every record's before it)
  uint32_t tail_segment_id; // segments from this id on were written after the point
  uint32_t flags;           // kIndexSnapshotFuzzy
};
static_assert(sizeof(IndexSnapshotHeader) == 48);

struct IndexSnapshotFooter {
  uint64_t entry_count;
  uint64_t history_count;  // older versions, all entries together
};
static_assert(sizeof(IndexSnapshotFooter) == 16);

struct IndexSnapshotSegment {
  uint32_t id;
  uint32_t unused;
  uint64_t size;
  uint64_t base_sequence;  // its header's
  uint64_t min_sequence;   // of its records (UINT64_MAX: none)
  uint64_t max_sequence;
  uint64_t dead_bytes;
};
static_assert(sizeof(IndexSnapshotSegment) == 48);

struct IndexSnapshotEntry {
  uint64_t timestamp;
  uint64_t version;
  uint32_t segment_id;
  uint32_t offset;
  uint32_t record_bytes;
  uint16_t key_size;
  uint16_t history_count;  // older versions that follow the key (< versions_kept)
  uint8_t flags;           // IndexEntry::flags
  uint8_t unused[7];
};
static_assert(sizeof(IndexSnapshotEntry) == 40);

struct IndexSnapshotLocation {
  uint32_t segment_id;
  uint32_t offset;
  uint32_t record_bytes;
};
static_assert(sizeof(IndexSnapshotLocation) == 12);

}  // namespace logkv::engine::format

#endif  // LOGKV_ENGINE_LOG_FORMAT_H_
