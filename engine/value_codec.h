// Per-record value compression (the kRecordFlagZstd layout in log_format.h and
// docs/format.md). Each thread keeps one zstd compression and one
// decompression context and reuses them, so a write or read allocates no
// zstd state after the thread's first.
#ifndef LOGKV_ENGINE_VALUE_CODEC_H_
#define LOGKV_ENGINE_VALUE_CODEC_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/log_record.h"

namespace logkv::engine {

// Compresses value at level (1..19) into the stored form of a
// kRecordFlagZstd record's value (plain size, then a zstd frame), if that
// saves at least an eighth of the value and at least one record alignment
// unit, and returns a view of it; otherwise returns an empty view and the
// value is to be stored plain. The view is of a buffer of the calling
// thread's, valid until its next call.
absl::string_view CompressValue(absl::string_view value, int level);

// Frees the calling thread's compression buffer if it is large (call once
// the view CompressValue returned is no longer used).
void ReleaseCompressionBuffer();

// The plain value of a decoded Put record into *out: a copy, or the
// decompressed frame of a compressed record. A frame that does not
// decompress to exactly the size the record states, or states more than
// max_value_bytes, is DataLoss; at most that size is ever allocated.
absl::Status DecodeValue(const LogRecord& record, uint32_t max_value_bytes, std::string* out);

// The plain value's size (the stated size of a compressed record).
uint32_t PlainValueSize(const LogRecord& record);

// CPU time the calling thread has used, in nanoseconds (for the compression
// cost counters).
int64_t ThreadCpuNanos();

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_VALUE_CODEC_H_
