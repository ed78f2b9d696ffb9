// Encoding and verified decoding of log records (layout in log_format.h and
// docs/format.md). Decoding checks every field before any of it is trusted.
#ifndef LOGKV_ENGINE_LOG_RECORD_H_
#define LOGKV_ENGINE_LOG_RECORD_H_

#include <cstdint>
#include "absl/strings/string_view.h"
#include <string>


#include "absl/status/status.h"
#include "engine/log_format.h"

namespace logkv::engine {

// A record's fields; key and value are views whose lifetime the caller manages.
struct LogRecord {
  format::RecordType type = format::RecordType::kPut;
  uint64_t timestamp = 0;
  int64_t expiry_unix_ms = 0;
  uint64_t sequence = 0;
  uint64_t version = 0;
  uint8_t flags = 0;  // format::kRecordFlag*
  absl::string_view key;
  // The value bytes as stored: with kRecordFlagZstd the plain size and a zstd
  // frame (see value_codec.h for the plain value), else the value itself.
  absl::string_view value;

  bool is_tombstone() const { return type == format::RecordType::kDelete; }
  bool is_forget() const { return type == format::RecordType::kForget; }
  bool compressed() const { return (flags & format::kRecordFlagZstd) != 0; }
};

// Appends the encoded record, padded to the record alignment, to out.
// REQUIRES: key.size() <= format::kMaxKeyBytes; a compressed record's value is
// a well-formed stored form (value_codec.h).
void EncodeRecord(const LogRecord& record, std::string* out);

// Outcome of looking at the bytes where a record should start.
enum class DecodeOutcome {
  kRecord,     // a verified record
  kEnd,        // an all-zero header: the unwritten end of an active segment
  kTruncated,  // fewer bytes than the header or the sizes it announces
  kCorrupt,    // checksum mismatch, unknown type or flags, impossible sizes
};

struct DecodeResult {
  DecodeOutcome outcome;
  LogRecord record;        // valid for kRecord; views into the input bytes
  uint64_t record_bytes;   // aligned size, valid for kRecord
  std::string error;       // why, for kCorrupt and kTruncated
};

// Decodes the record at the start of bytes, which holds everything from the
// record's offset to the end of the segment's data. A compressed record's
// plain size is checked against max_value_bytes here; its frame is checked
// when it is decompressed.
DecodeResult DecodeRecord(absl::string_view bytes, uint32_t max_key_bytes,
                          uint32_t max_value_bytes);

// Reads just the header fields of an encoded record without verifying it.
// REQUIRES: bytes.size() >= format::kRecordHeaderBytes.
format::RecordHeader PeekHeader(absl::string_view bytes);

uint64_t HashKey(absl::string_view key);

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_LOG_RECORD_H_
