// One segment file of a shard's log: a header followed by records. The newest
// "original" segment of a shard is active (appended to); every other segment is
// immutable. Compaction writes new segments flagged kSegmentFlagCompacted.
//
// Thread-safety: Append, Read, Seal, Reopen and TruncateTo are called under the owning
// shard's mutex (Read shared, the others exclusive); the accounting fields are
// guarded by it too. Sync may run without the shard mutex (a sync thread
// fdatasyncs while writers append); file_mu_ orders it against Seal and
// Reopen, the only places the file objects change.
#ifndef LOGKV_ENGINE_SEGMENT_H_
#define LOGKV_ENGINE_SEGMENT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"
#include <string>


#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/file_system.h"
#include "engine/log_format.h"

namespace logkv::engine {

std::string SegmentFileName(uint32_t segment_id);  // 000000000001.log
std::string HintFileName(uint32_t segment_id);     // 000000000001.hint
// Parses "<12 digits><suffix>"; false if name is not of that form.
bool ParseSegmentFileName(absl::string_view name, absl::string_view suffix, uint32_t* segment_id);

class Segment {
 public:
  // Creates a new, writable segment file at path with its header. On
  // failure no file is left at path.
  static absl::StatusOr<std::unique_ptr<Segment>> Create(FileSystem* fs, const std::string& path,
                                                         const format::SegmentHeader& header,
                                                         uint64_t capacity_bytes);
  // Opens an existing segment read-only and verifies its header.
  static absl::StatusOr<std::unique_ptr<Segment>> Open(FileSystem* fs, const std::string& path,
                                                       uint32_t expected_shard_id,
                                                       uint32_t expected_segment_id);

  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  // Appends encoded records and returns the offset of the first byte.
  // REQUIRES: writable(), data.size() <= remaining().
  absl::StatusOr<uint32_t> Append(absl::string_view data);
  // Reads n bytes at offset. REQUIRES: offset + n <= size().
  absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n) const;
  // Everything from offset to the end of the data.
  absl::StatusOr<absl::string_view> ReadToEnd(uint64_t offset) const;
  // ReadableFile::NextData of a sealed or recovered segment ([offset,
  // size()) for the active one).
  void NextData(uint64_t offset, uint64_t* begin, uint64_t* end) const;

  // Copies n bytes at offset into out (replacing it), without the shard
  // mutex: file_mu_ keeps Seal from swapping the file meanwhile. For an
  // online backup reading a segment that writers keep appending to.
  // REQUIRES: offset + n <= size().
  absl::Status CopyOut(uint64_t offset, size_t n, std::string* out) ABSL_LOCKS_EXCLUDED(file_mu_);

  // fdatasync. A sealed segment was synced when sealed: OK at once.
  absl::Status Sync();
  void StartWriteback();
  // WritableFile::Prepare: the next `bytes` of appends without allocation or
  // page faults. Without the shard mutex, by the segment's one writer (a
  // compaction, for its output, before it takes the mutex for a batch).
  void Prepare(uint64_t bytes) ABSL_LOCKS_EXCLUDED(file_mu_);
  // Syncs, trims the file to its data and reopens it read-only.
  absl::Status Seal(FileSystem* fs);

  // Makes a segment that Open opened writable again, appends going after
  // its data, up to capacity_bytes in all: a shard continues its newest
  // segment after a restart. On failure it stays as it was (read-only).
  // REQUIRES: !writable(), capacity_bytes > size().
  absl::Status Reopen(FileSystem* fs, uint64_t capacity_bytes);

  // Renames the file (compaction's *.compacting output becoming *.log).
  absl::Status Rename(FileSystem* fs, const std::string& new_path);

  // For a segment being opened at recovery: its valid data ends at size
  // (a torn tail was found); the file is truncated to it.
  absl::Status TruncateTo(FileSystem* fs, uint64_t size);

  const std::string& path() const { return path_; }
  uint32_t id() const { return header_.segment_id; }
  const format::SegmentHeader& header() const { return header_; }
  bool compacted() const { return (header_.flags & format::kSegmentFlagCompacted) != 0; }
  bool writable() const { return writable_ != nullptr; }
  uint64_t size() const { return size_.load(std::memory_order_acquire); }
  uint64_t remaining() const;
  // Disk reserved ahead of the data while the segment is written (0 once
  // sealed: Seal trims the file to its data).
  uint64_t reserved_ahead() const;

  // ---- Accounting, guarded by the owning shard's mutex ----
  uint64_t dead_bytes = 0;      // bytes of records no longer referenced
  uint64_t min_sequence = UINT64_MAX;
  uint64_t max_sequence = 0;
  bool has_hint = false;
  bool damaged = false;         // repair skipped bytes in it; compaction rewrites it

 private:
  Segment(std::string path, const format::SegmentHeader& header);

  std::string path_;  // changes only in Rename, under the shard mutex
  const format::SegmentHeader header_;

  absl::Mutex file_mu_;
  // Exactly one is set. Changed only by Seal and Reopen, holding file_mu_
  // and (by contract) the shard mutex exclusively.
  std::unique_ptr<WritableFile> writable_;
  std::unique_ptr<ReadableFile> readable_;
  std::atomic<uint64_t> size_{0};
};

format::SegmentHeader MakeSegmentHeader(uint32_t shard_id, uint32_t segment_id, uint32_t flags,
                                        uint64_t base_sequence, int64_t now_unix_ms);

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_SEGMENT_H_
