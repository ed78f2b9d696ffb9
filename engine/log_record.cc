#include "engine/log_record.h"

#include <xxhash.h>

#include <cassert>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace logkv::engine {

using format::kRecordHeaderBytes;
using format::RecordHeader;

uint64_t HashKey(absl::string_view key) { return XXH3_64bits(key.data(), key.size()); }

void EncodeRecord(const LogRecord& record, std::string* out) {
  assert(record.key.size() <= format::kMaxKeyBytes);
  assert(!record.is_tombstone() || record.value.empty());
  assert(!record.compressed() ||
         (record.type == format::RecordType::kPut &&
          record.value.size() > format::kCompressedSizeBytes));
  const size_t start = out->size();
  const uint64_t total = format::RecordBytes(record.key.size(), record.value.size());
  out->resize(start + total);
  char* base = out->data() + start;

  RecordHeader header{};
  header.type = static_cast<uint8_t>(record.type);
  header.flags = record.flags;
  header.key_size = static_cast<uint16_t>(record.key.size());
  header.value_size = static_cast<uint32_t>(record.value.size());
  header.timestamp = record.timestamp;
  header.expiry_unix_ms = record.expiry_unix_ms;
  header.sequence = record.sequence;
  header.version = record.version;
  std::memcpy(base, &header, kRecordHeaderBytes);
  std::memcpy(base + kRecordHeaderBytes, record.key.data(), record.key.size());
  if (!record.value.empty()) {
    std::memcpy(base + kRecordHeaderBytes + record.key.size(), record.value.data(),
                record.value.size());
  }
  const size_t payload = kRecordHeaderBytes + record.key.size() + record.value.size();
  std::memset(base + payload, 0, total - payload);
  const uint64_t checksum = XXH3_64bits(base + format::kChecksumBytes,
                                        payload - format::kChecksumBytes);
  std::memcpy(base, &checksum, sizeof(checksum));
}

RecordHeader PeekHeader(absl::string_view bytes) {
  assert(bytes.size() >= kRecordHeaderBytes);
  RecordHeader header;
  std::memcpy(&header, bytes.data(), kRecordHeaderBytes);
  return header;
}

namespace {

bool AllZero(const char* data, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (data[i] != 0) return false;
  }
  return true;
}

}  // namespace

DecodeResult DecodeRecord(absl::string_view bytes, uint32_t max_key_bytes,
                          uint32_t max_value_bytes) {
  DecodeResult result{DecodeOutcome::kCorrupt, {}, 0, {}};
  if (bytes.size() < kRecordHeaderBytes) {
    if (AllZero(bytes.data(), bytes.size())) {
      result.outcome = DecodeOutcome::kEnd;
      return result;
    }
    result.outcome = DecodeOutcome::kTruncated;
    result.error = absl::StrCat("only ", bytes.size(), " bytes left for a ",
                                kRecordHeaderBytes, "-byte record header");
    return result;
  }
  if (AllZero(bytes.data(), kRecordHeaderBytes)) {
    result.outcome = DecodeOutcome::kEnd;
    return result;
  }
  const RecordHeader header = PeekHeader(bytes);
  if (header.type == 0 || header.type > format::kMaxKnownRecordType) {
    // Check the checksum first: a torn header is not an unknown type.
    const uint64_t payload = kRecordHeaderBytes + uint64_t{header.key_size} + header.value_size;
    if (payload <= bytes.size() &&
        XXH3_64bits(bytes.data() + format::kChecksumBytes, payload - format::kChecksumBytes) ==
            header.checksum) {
      result.error = absl::StrCat("unknown record type ", header.type);
    } else {
      result.error = absl::StrCat("bad record type ", header.type, " and checksum mismatch");
    }
    return result;
  }
  if (header.key_size == 0 || header.key_size > max_key_bytes) {
    result.error = absl::StrCat("key size ", header.key_size, " outside [1, ", max_key_bytes, "]");
    return result;
  }
  if (header.value_size > max_value_bytes) {
    result.error =
        absl::StrCat("value size ", header.value_size, " exceeds the limit ", max_value_bytes);
    return result;
  }
  const uint64_t payload = kRecordHeaderBytes + uint64_t{header.key_size} + header.value_size;
  if (payload > bytes.size()) {
    result.outcome = DecodeOutcome::kTruncated;
    result.error = absl::StrCat("record of ", payload, " bytes but only ", bytes.size(),
                                " bytes left in the segment");
    return result;
  }
  const uint64_t checksum =
      XXH3_64bits(bytes.data() + format::kChecksumBytes, payload - format::kChecksumBytes);
  if (checksum != header.checksum) {
    result.error = absl::StrCat("checksum mismatch (stored ", header.checksum, ", computed ",
                                checksum, ")");
    return result;
  }
  if ((header.flags & ~format::kKnownRecordFlags) != 0) {
    result.error = absl::StrCat("unknown record flags ", header.flags);
    return result;
  }
  const auto type = static_cast<format::RecordType>(header.type);
  if (type != format::RecordType::kPut && header.value_size != 0) {
    result.error = type == format::RecordType::kDelete ? "tombstone with a value"
                                                        : "forget record with a value";
    return result;
  }
  if (header.sequence == 0) {
    result.error = "sequence number 0";
    return result;
  }
  const absl::string_view value =
      bytes.substr(kRecordHeaderBytes + header.key_size, header.value_size);
  if ((header.flags & format::kRecordFlagZstd) != 0) {
    if (type != format::RecordType::kPut) {
      result.error = "compressed flag on a record without a value";
      return result;
    }
    if (value.size() <= format::kCompressedSizeBytes) {
      result.error = absl::StrCat("compressed value of only ", value.size(), " bytes");
      return result;
    }
    uint32_t plain_size;
    std::memcpy(&plain_size, value.data(), sizeof(plain_size));
    if (plain_size > max_value_bytes) {
      result.error = absl::StrCat("compressed value of ", plain_size,
                                  " plain bytes exceeds the limit ", max_value_bytes);
      return result;
    }
  }
  result.outcome = DecodeOutcome::kRecord;
  result.record.type = type;
  result.record.timestamp = header.timestamp;
  result.record.expiry_unix_ms = header.expiry_unix_ms;
  result.record.sequence = header.sequence;
  result.record.version = header.version;
  result.record.flags = header.flags;
  result.record.key = bytes.substr(kRecordHeaderBytes, header.key_size);
  result.record.value = value;
  result.record_bytes = format::AlignRecord(payload);
  return result;
}

}  // namespace logkv::engine
