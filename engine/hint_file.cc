#include "engine/hint_file.h"

#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"

namespace logkv::engine {

using format::HintEntry;
using format::HintHeader;

namespace {

// Fast to write (compaction writes a hint per output) and to read (start-up
// reads them all); higher levels save little more on these entries.
constexpr int kHintCompressionLevel = 1;

bool KnownVersion(uint32_t version) {
  return version == format::kFormatVersion || version == format::kHintCompressedFormatVersion ||
         version == format::kHintFormatVersion;
}

// The bytes before a file's entries (compressed or not): the header, and in
// version 3 the index's entry count.
constexpr size_t PrefixBytes(uint32_t version) {
  return version == format::kHintFormatVersion ? sizeof(HintHeader) + format::kHintIndexEntriesBytes
                                               : sizeof(HintHeader);
}

}  // namespace

HintWriter::HintWriter(uint32_t segment_id, uint64_t segment_bytes) : segment_id_(segment_id) {
  static_assert(sizeof(HintEntry) <= format::kRecordHeaderBytes);
  // At most kMaxReservedBytes: a segment of large values (or of one record
  // of hundreds of MiB) has few entries, and memory reserved for them would
  // still count against a strict overcommit limit; past it the buffer grows.
  buffer_.reserve(sizeof(HintHeader) + std::min(segment_bytes, kMaxReservedBytes));
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

absl::Status HintWriter::Finish(FileSystem* fs, const std::string& path, uint64_t segment_bytes,
                                uint64_t index_entries) {
  HintHeader header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, format::kHintMagic, sizeof(header.magic));
  header.segment_id = segment_id_;
  header.segment_bytes = segment_bytes;
  header.entry_count = count_;
  // The entries, zstd-compressed: their fixed fields repeat from entry to
  // entry (sizes, types, nearby sequences and timestamps), so a hint shrinks
  // to a fraction (about 1/6 with 16-byte keys) of the 48 bytes plus key it
  // spends per record, which would otherwise add a third to the disk of a
  // store of small values.
  header.format_version = format::kHintFormatVersion;
  const size_t prefix = PrefixBytes(format::kHintFormatVersion);
  const absl::string_view entries = absl::string_view(buffer_).substr(sizeof(HintHeader));
  // Not zero-filled: the bound is about the entries' size (tens of MiB for a
  // full segment) and zstd writes a sixth of it; zeroing all of it cost a
  // page fault for each 4 KiB.
  const size_t bound = ZSTD_compressBound(entries.size());
  const std::unique_ptr<char[]> file =
      std::make_unique_for_overwrite<char[]>(prefix + bound + format::kHintTrailerBytes);
  const size_t compressed =
      ZSTD_compress(file.get() + prefix, bound, entries.data(), entries.size(),
                    kHintCompressionLevel);
  if (ZSTD_isError(compressed)) {
    return absl::InternalError(absl::StrCat("compressing the hint file ", path, ": ",
                                            ZSTD_getErrorName(compressed)));
  }
  // Every byte before the entries is written here (the buffer is not zeroed).
  static_assert(PrefixBytes(format::kHintFormatVersion) ==
                sizeof(header) + sizeof(index_entries));
  std::memcpy(file.get(), &header, sizeof(header));
  std::memcpy(file.get() + sizeof(header), &index_entries, sizeof(index_entries));
  const size_t checked = prefix + compressed;
  const uint64_t checksum = XXH3_64bits(file.get(), checked);
  static_assert(format::kHintTrailerBytes == sizeof(checksum));
  std::memcpy(file.get() + checked, &checksum, sizeof(checksum));
  return fs->WriteFile(path, absl::string_view(file.get(), checked + sizeof(checksum)),
                       /*sync=*/true);
}

absl::Status ReadHintFile(
    FileSystem* fs, const std::string& path, uint32_t segment_id, uint64_t segment_bytes,
    absl::FunctionRef<void(const LogRecord&, uint32_t offset, uint32_t record_bytes)> visit) {
  return ReadHintFile(
      fs, path, segment_id, segment_bytes, visit, [] {}, nullptr);
}

absl::Status ReadHintFile(
    FileSystem* fs, const std::string& path, uint32_t segment_id, uint64_t segment_bytes,
    absl::FunctionRef<void(const LogRecord&, uint32_t offset, uint32_t record_bytes)> visit,
    absl::FunctionRef<void()> after_last, std::string* scratch) {
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
      !KnownVersion(header.format_version) || header.segment_id != segment_id) {
    return absl::DataLossError(absl::StrCat(path, ": not a hint file for segment ", segment_id));
  }
  const size_t prefix_bytes = PrefixBytes(header.format_version);
  if (bytes.size() < prefix_bytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", bytes.size(), " bytes, truncated"));
  }
  if (header.segment_bytes != segment_bytes) {
    return absl::DataLossError(absl::StrCat(path, ": describes ", header.segment_bytes,
                                            " bytes of segment but it has ", segment_bytes));
  }
  // Versions 2 and 3 hold their entries zstd-compressed (version 1, as they
  // are): from here on bytes is the header followed by the plain entries.
  std::string own_plain;
  std::string& plain = scratch != nullptr ? *scratch : own_plain;
  if (header.format_version != format::kFormatVersion) {
    const absl::string_view stored = bytes.substr(prefix_bytes);
    const unsigned long long plain_bytes = ZSTD_getFrameContentSize(stored.data(), stored.size());
    // Every entry is at least an entry header and a byte of key, and stands
    // for a record of the segment no smaller than it (a record's header is as
    // long as an entry's, and holds the key too): a file that claims more
    // bytes than its segment holds (its checksum proves only that it was
    // written so) is refused before its claimed size is allocated.
    static_assert(sizeof(HintEntry) == format::kRecordHeaderBytes);
    if (plain_bytes == ZSTD_CONTENTSIZE_ERROR || plain_bytes == ZSTD_CONTENTSIZE_UNKNOWN ||
        header.entry_count > plain_bytes / (sizeof(HintEntry) + 1) || plain_bytes > segment_bytes) {
      return absl::DataLossError(absl::StrCat(path, ": the compressed entries are unreadable"));
    }
    // Grown, never shrunk: a reused buffer keeps its pages, and what lies
    // past this file's entries is left out of the view below.
    const size_t plain_size = sizeof(HintHeader) + plain_bytes;
    if (plain.size() < plain_size) plain.resize(plain_size);
    std::memcpy(plain.data(), bytes.data(), sizeof(HintHeader));
    const size_t decompressed = ZSTD_decompress(plain.data() + sizeof(HintHeader), plain_bytes,
                                                stored.data(), stored.size());
    if (ZSTD_isError(decompressed) || decompressed != plain_bytes) {
      return absl::DataLossError(absl::StrCat(path, ": the compressed entries are unreadable"));
    }
    bytes = absl::string_view(plain.data(), plain_size);
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

absl::StatusOr<HintSummary> ReadHintSummary(FileSystem* fs, const std::string& path) {
  auto file = fs->NewReadableFile(path);
  if (!file.ok()) return file.status();
  char prefix[sizeof(HintHeader) + format::kHintIndexEntriesBytes];
  const uint64_t size = std::min<uint64_t>((*file)->Size(), sizeof(prefix));
  auto bytes = (*file)->Read(0, size, prefix);
  if (!bytes.ok()) return bytes.status();
  HintHeader header;
  if (bytes->size() < sizeof(header)) {
    return absl::DataLossError(absl::StrCat(path, ": ", bytes->size(), " bytes, truncated"));
  }
  std::memcpy(&header, bytes->data(), sizeof(header));
  if (std::memcmp(header.magic, format::kHintMagic, sizeof(header.magic)) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": not a hint file"));
  }
  if (!KnownVersion(header.format_version)) {
    return absl::DataLossError(absl::StrCat(path, ": hint file version ", header.format_version));
  }
  HintSummary summary;
  summary.segment_id = header.segment_id;
  summary.segment_bytes = header.segment_bytes;
  summary.entry_count = header.entry_count;
  if (header.format_version == format::kHintFormatVersion) {
    if (bytes->size() < PrefixBytes(header.format_version)) {
      return absl::DataLossError(absl::StrCat(path, ": ", bytes->size(), " bytes, truncated"));
    }
    std::memcpy(&summary.index_entries, bytes->data() + sizeof(header),
                sizeof(summary.index_entries));
  }
  return summary;
}

}  // namespace logkv::engine
