// Hint files: one entry per record of a segment (the record's header fields,
// location and key, no value), so start-up builds the index without reading
// values. Layout in log_format.h and docs/format.md.
#ifndef LOGKV_ENGINE_HINT_FILE_H_
#define LOGKV_ENGINE_HINT_FILE_H_

#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/file_system.h"
#include "engine/log_record.h"

namespace logkv::engine {

// Accumulates entries, then writes the file in one piece.
class HintWriter {
 public:
  // segment_bytes, when known (a sealed segment's size), bounds the entries'
  // bytes (an entry is no larger than its record): room for them is reserved
  // at once (up to kMaxReservedBytes), so the buffer of a segment of the
  // default size is never copied to grow, and the pages it does not use are
  // never touched.
  explicit HintWriter(uint32_t segment_id, uint64_t segment_bytes = 0);
  static constexpr uint64_t kMaxReservedBytes = uint64_t{64} << 20;
  void Add(const LogRecord& record, uint32_t offset, uint32_t record_bytes);
  // Writes and syncs path; segment_bytes is the size of the finished segment,
  // index_entries the entries of the shard's index now (HintSummary).
  absl::Status Finish(FileSystem* fs, const std::string& path, uint64_t segment_bytes,
                      uint64_t index_entries);

 private:
  uint32_t segment_id_;
  uint64_t count_ = 0;
  std::string buffer_;
};

// Calls visit(record, offset, record_bytes) for every entry (the record's value
// is empty). Fails with DataLoss if the file is damaged, truncated, or does not
// describe a segment of segment_bytes bytes; the caller then scans the segment.
absl::Status ReadHintFile(
    FileSystem* fs, const std::string& path, uint32_t segment_id, uint64_t segment_bytes,
    absl::FunctionRef<void(const LogRecord&, uint32_t offset, uint32_t record_bytes)> visit);
// The same; after_last runs once every entry was visited, while the records'
// keys (views into the file's contents) are still valid. The entries are
// decompressed into *scratch when it is given (its contents are replaced,
// and it is never shrunk): start-up passes one buffer for all of a shard's
// hint files, where a fresh buffer a file (tens of MiB for a full segment)
// cost the kernel a zero-filled page for each 4 KiB of it, every time.
absl::Status ReadHintFile(
    FileSystem* fs, const std::string& path, uint32_t segment_id, uint64_t segment_bytes,
    absl::FunctionRef<void(const LogRecord&, uint32_t offset, uint32_t record_bytes)> visit,
    absl::FunctionRef<void()> after_last, std::string* scratch);

// What a hint file's first bytes say, read without the rest: for an
// estimate only, since nothing is verified but the magic and the version
// (ReadHintFile checks the whole file).
struct HintSummary {
  uint32_t segment_id = 0;
  uint64_t segment_bytes = 0;
  uint64_t entry_count = 0;
  // The entries of the shard's index when the hint was written (0: a hint
  // file of a version before 3, which does not say).
  uint64_t index_entries = 0;
};
absl::StatusOr<HintSummary> ReadHintSummary(FileSystem* fs, const std::string& path);

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_HINT_FILE_H_
