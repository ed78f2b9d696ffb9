#include "engine/hint_file.h"

#include <xxhash.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace logkv::engine {

using format::HintEntry;
using format::HintHeader;

HintWriter::HintWriter(uint32_t segment_id) : segment_id_(segment_id) {
  buffer_.resize(sizeof(HintHeader));
}

void HintWriter::Add(const LogRecord& record, uint32_t offset, uint32_t record_bytes) {
  HintEntry entry;
  std::memset(&entry, 0, sizeof(entry));
  entry.offset = offset;
  entry.record_bytes = record_bytes;
  entry.key_size = static_cast<uint16_t>(record.key.size());
  entry.type = static_cast<uint8_t>(record.type);
  entry.flags = record.flags;
  entry.value_size = static_cast<uint32_t>(record.value.size());
  entry.timestamp = record.timestamp;
  entry.expiry_unix_ms = record.expiry_unix_ms;
  entry.sequence = record.sequence;
  entry.version = record.version;
  buffer_.append(reinterpret_cast<const char*>(&entry), sizeof(entry));
  buffer_.append(record.key.data(), record.key.size());
  ++count_;
}

absl::Status HintWriter::Finish(FileSystem* fs, const std::string& path, uint64_t segment_bytes) {
  HintHeader header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, format::kHintMagic, sizeof(header.magic));
  header.format_version = format::kFormatVersion;
  header.segment_id = segment_id_;
  header.segment_bytes = segment_bytes;
  header.entry_count = count_;
  std::memcpy(buffer_.data(), &header, sizeof(header));
  const uint64_t checksum = XXH3_64bits(buffer_.data(), buffer_.size());
  buffer_.append(reinterpret_cast<const char*>(&checksum), sizeof(checksum));
  return fs->WriteFile(path, buffer_, /*sync=*/true);
}

absl::Status ReadHintFile(
    FileSystem* fs, const std::string& path, uint32_t segment_id, uint64_t segment_bytes,
    absl::FunctionRef<void(const LogRecord&, uint32_t offset, uint32_t record_bytes)> visit) {
  return ReadHintFile(fs, path, segment_id, segment_bytes, visit, [] {});
}

absl::Status ReadHintFile(
    FileSystem* fs, const std::string& path, uint32_t segment_id, uint64_t segment_bytes,
    absl::FunctionRef<void(const LogRecord&, uint32_t offset, uint32_t record_bytes)> visit,
    absl::FunctionRef<void()> after_last) {
  auto contents = fs->ReadFile(path);
  if (!contents.ok()) return contents.status();
  absl::string_view bytes = *contents;
  if (bytes.size() < sizeof(HintHeader) + format::kHintTrailerBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", bytes.size(), " bytes, truncated"));
  }
  uint64_t stored_checksum;
  std::memcpy(&stored_checksum, bytes.data() + bytes.size() - format::kHintTrailerBytes,
              sizeof(stored_checksum));
  bytes.remove_suffix(format::kHintTrailerBytes);
  if (XXH3_64bits(bytes.data(), bytes.size()) != stored_checksum) {
    return absl::DataLossError(absl::StrCat(path, ": checksum mismatch (truncated or damaged)"));
  }
  HintHeader header;
  std::memcpy(&header, bytes.data(), sizeof(header));
  if (std::memcmp(header.magic, format::kHintMagic, sizeof(header.magic)) != 0 ||
      header.format_version != format::kFormatVersion || header.segment_id != segment_id) {
    return absl::DataLossError(absl::StrCat(path, ": not a hint file for segment ", segment_id));
  }
  if (header.segment_bytes != segment_bytes) {
    return absl::DataLossError(absl::StrCat(path, ": describes ", header.segment_bytes,
                                            " bytes of segment but it has ", segment_bytes));
  }
  // Two passes: validate every entry first, so a damaged file visits nothing
  // and the caller's fallback scan starts from a clean slate.
  for (bool validating : {true, false}) {
    size_t position = sizeof(HintHeader);
    for (uint64_t i = 0; i < header.entry_count; ++i) {
      if (bytes.size() - position < sizeof(HintEntry)) {
        return absl::DataLossError(absl::StrCat(path, ": entry ", i, " is cut short"));
      }
      HintEntry entry;
      std::memcpy(&entry, bytes.data() + position, sizeof(entry));
      position += sizeof(entry);
      if (bytes.size() - position < entry.key_size || entry.key_size == 0 || entry.type == 0 ||
          entry.type > format::kMaxKnownRecordType || entry.sequence == 0 ||
          entry.offset < format::kSegmentHeaderBytes ||
          uint64_t{entry.offset} + entry.record_bytes > segment_bytes) {
        return absl::DataLossError(absl::StrCat(path, ": entry ", i, " is invalid"));
      }
      if (!validating) {
        LogRecord record;
        record.type = static_cast<format::RecordType>(entry.type);
        record.flags = entry.flags;
        record.timestamp = entry.timestamp;
        record.expiry_unix_ms = entry.expiry_unix_ms;
        record.sequence = entry.sequence;
        record.version = entry.version;
        record.key = bytes.substr(position, entry.key_size);
        visit(record, entry.offset, entry.record_bytes);
      }
      position += entry.key_size;
    }
    if (position != bytes.size()) {
      return absl::DataLossError(absl::StrCat(path, ": trailing bytes after the last entry"));
    }
  }
  after_last();
  return absl::OkStatus();
}

}  // namespace logkv::engine
