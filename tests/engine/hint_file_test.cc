// Hint files read through one reused buffer, as start-up reads all of a
// shard's: each file's entries come out exactly, whatever the buffer held
// before (a larger file's entries stay in it past the smaller one's end).
// The summary start-up sizes the index from, and the files of version 2,
// which say nothing of the index, still read. A file whose checksum holds
// but whose content size is more than its segment can hold is refused
// before anything of that size is allocated.
#include "engine/hint_file.h"

#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/file_system.h"
#include "engine/log_format.h"
#include "engine/log_record.h"
#include "gtest/gtest.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

constexpr uint32_t kRecordBytes = 64;
constexpr uint64_t kIndexEntries = 123456789;

struct HintOf {
  std::string path;
  uint32_t segment_id;
  uint64_t segment_bytes;
  int entries;
};

std::string KeyOf(uint32_t segment_id, int i) {
  return absl::StrCat("segment", segment_id, "/key", i);
}

HintOf WriteHint(const test::ScopedTempDir& dir, uint32_t segment_id, int entries) {
  HintWriter writer(segment_id);
  uint32_t offset = format::kSegmentHeaderBytes;
  for (int i = 0; i < entries; ++i) {
    const std::string key = KeyOf(segment_id, i);
    LogRecord record;
    record.key = key;
    record.sequence = static_cast<uint64_t>(i) + 1;
    record.version = 1;
    record.timestamp = 1000 + static_cast<uint64_t>(i);
    writer.Add(record, offset, kRecordBytes);
    offset += kRecordBytes;
  }
  HintOf hint{dir.Subdir(absl::StrCat(segment_id, ".hint")), segment_id, offset, entries};
  EXPECT_OK(writer.Finish(DefaultFileSystem(), hint.path, hint.segment_bytes, kIndexEntries));
  return hint;
}

TEST(HintFileTest, AReusedBufferReadsEachFileExactly) {
  test::ScopedTempDir dir;
  const HintOf large = WriteHint(dir, 7, 5000);
  const HintOf small = WriteHint(dir, 8, 30);
  std::string scratch;
  for (const HintOf* hint : {&large, &small, &large, &small}) {
    SCOPED_TRACE(hint->path);
    int visited = 0;
    int wrong = 0;
    ASSERT_OK(ReadHintFile(
        DefaultFileSystem(), hint->path, hint->segment_id, hint->segment_bytes,
        [&](const LogRecord& record, uint32_t offset, uint32_t record_bytes) {
          const bool right = record.key == KeyOf(hint->segment_id, visited) &&
                             record.sequence == static_cast<uint64_t>(visited) + 1 &&
                             offset == format::kSegmentHeaderBytes + kRecordBytes * visited &&
                             record_bytes == kRecordBytes;
          if (!right) ++wrong;
          ++visited;
        },
        [] {}, &scratch));
    EXPECT_EQ(visited, hint->entries);
    EXPECT_EQ(wrong, 0);
  }
}

int CountEntries(const HintOf& hint) {
  int visited = 0;
  EXPECT_OK(ReadHintFile(DefaultFileSystem(), hint.path, hint.segment_id, hint.segment_bytes,
                         [&](const LogRecord&, uint32_t, uint32_t) { ++visited; }));
  return visited;
}

TEST(HintFileTest, TheSummarySaysWhatTheIndexHeldWithoutReadingTheEntries) {
  test::ScopedTempDir dir;
  const HintOf hint = WriteHint(dir, 9, 700);
  absl::StatusOr<HintSummary> summary = ReadHintSummary(DefaultFileSystem(), hint.path);
  ASSERT_OK(summary.status());
  EXPECT_EQ(summary->segment_id, 9u);
  EXPECT_EQ(summary->segment_bytes, hint.segment_bytes);
  EXPECT_EQ(summary->entry_count, 700u);
  EXPECT_EQ(summary->index_entries, kIndexEntries);
  EXPECT_EQ(CountEntries(hint), 700);

  // Too short to hold a header, or not a hint file at all: refused.
  const std::string short_path = dir.Subdir("short.hint");
  ASSERT_OK(DefaultFileSystem()->WriteFile(short_path, "LOGKVHNT", /*sync=*/false));
  EXPECT_FALSE(ReadHintSummary(DefaultFileSystem(), short_path).ok());
  const std::string other_path = dir.Subdir("other.hint");
  ASSERT_OK(DefaultFileSystem()->WriteFile(other_path, std::string(64, 'x'), /*sync=*/false));
  EXPECT_FALSE(ReadHintSummary(DefaultFileSystem(), other_path).ok());
  // A version no build wrote: refused too.
  auto contents = DefaultFileSystem()->ReadFile(hint.path);
  ASSERT_OK(contents.status());
  std::string future = *contents;
  const uint32_t version = format::kHintFormatVersion + 1;
  std::memcpy(future.data() + offsetof(format::HintHeader, format_version), &version,
              sizeof(version));
  const std::string future_path = dir.Subdir("future.hint");
  ASSERT_OK(DefaultFileSystem()->WriteFile(future_path, future, /*sync=*/false));
  EXPECT_FALSE(ReadHintSummary(DefaultFileSystem(), future_path).ok());
}

// Ends a hint made or changed here with the checksum of what comes before.
void AppendChecksum(std::string* file) {
  const uint64_t checksum = XXH3_64bits(file->data(), file->size());
  file->append(reinterpret_cast<const char*>(&checksum), sizeof(checksum));
}

TEST(HintFileTest, AVersionTwoFileReadsAndItsSummarySaysNothingOfTheIndex) {
  // Version 2 is version 3 without the index's entry count before the
  // compressed entries: made here from a version 3 file, its checksum
  // recomputed.
  test::ScopedTempDir dir;
  const HintOf hint = WriteHint(dir, 11, 300);
  auto contents = DefaultFileSystem()->ReadFile(hint.path);
  ASSERT_OK(contents.status());
  std::string file = *contents;
  file.resize(file.size() - format::kHintTrailerBytes);
  file.erase(sizeof(format::HintHeader), format::kHintIndexEntriesBytes);
  const uint32_t version = format::kHintCompressedFormatVersion;
  std::memcpy(file.data() + offsetof(format::HintHeader, format_version), &version,
              sizeof(version));
  AppendChecksum(&file);
  ASSERT_OK(DefaultFileSystem()->WriteFile(hint.path, file, /*sync=*/false));

  EXPECT_EQ(CountEntries(hint), 300);
  absl::StatusOr<HintSummary> summary = ReadHintSummary(DefaultFileSystem(), hint.path);
  ASSERT_OK(summary.status());
  EXPECT_EQ(summary->entry_count, 300u);
  EXPECT_EQ(summary->index_entries, 0u);
}

// A version-3 hint of hint's segment whose header claims `entries` entries
// of a segment of `segment_bytes` and whose body is only a zstd frame header
// declaring `content_bytes` (RFC 8878 3.1.1: the magic, then a descriptor for
// a single segment with an 8-byte content size), its checksum recomputed.
void WriteClaimingHint(const HintOf& hint, uint64_t segment_bytes, uint64_t entries,
                       uint64_t content_bytes) {
  auto contents = DefaultFileSystem()->ReadFile(hint.path);
  ASSERT_OK(contents.status());
  std::string file =
      contents->substr(0, sizeof(format::HintHeader) + format::kHintIndexEntriesBytes);
  std::memcpy(file.data() + offsetof(format::HintHeader, segment_bytes), &segment_bytes,
              sizeof(segment_bytes));
  std::memcpy(file.data() + offsetof(format::HintHeader, entry_count), &entries, sizeof(entries));
  const uint32_t zstd_magic = 0xFD2FB528;
  const uint8_t descriptor = 0xE0;  // content size in 8 bytes, single segment
  file.append(reinterpret_cast<const char*>(&zstd_magic), sizeof(zstd_magic));
  file.append(reinterpret_cast<const char*>(&descriptor), sizeof(descriptor));
  file.append(reinterpret_cast<const char*>(&content_bytes), sizeof(content_bytes));
  file.append(64, '\0');
  AppendChecksum(&file);
  ASSERT_OK(DefaultFileSystem()->WriteFile(hint.path, file, /*sync=*/false));
}

TEST(HintFileTest, AFileClaimingMoreThanItsSegmentHoldsIsRefusedUnallocated) {
  // A checksum proves only that the file was written as it is, not that a
  // build of logkv wrote it. Each file here claims a content size that the
  // entry count it also claims allows (at least an entry header and a byte
  // of key an entry, at most an entry header and the longest key), but
  // that its segment cannot hold: reading it must fail as damaged, not try
  // to allocate what it claims (tens of terabytes: the test would die of
  // it).
  test::ScopedTempDir dir;
  const HintOf hint = WriteHint(dir, 12, 300);
  struct Claim {
    const char* what;
    uint64_t segment_bytes;
    uint64_t entries;
    uint64_t content_bytes;
  };
  constexpr uint64_t kEntries = uint64_t{1} << 40;
  constexpr uint64_t kSegmentBytes = uint64_t{1} << 36;
  constexpr uint64_t kMostEntries = kSegmentBytes / format::RecordBytes(1, 0);
  for (const Claim& claim : {
           // More entries than records fit in the segment, each with a
           // one-byte key, in a segment of 300 records.
           Claim{"entries", hint.segment_bytes, kEntries,
                 kEntries * (sizeof(format::HintEntry) + 1)},
           // As many entries as records fit in a segment of 64 GiB, each
           // with the longest key there is.
           Claim{"bytes", kSegmentBytes, kMostEntries,
                 kMostEntries * (sizeof(format::HintEntry) + format::kMaxKeyBytes)},
       }) {
    SCOPED_TRACE(claim.what);
    WriteClaimingHint(hint, claim.segment_bytes, claim.entries, claim.content_bytes);
    int visited = 0;
    const absl::Status status =
        ReadHintFile(DefaultFileSystem(), hint.path, hint.segment_id, claim.segment_bytes,
                     [&](const LogRecord&, uint32_t, uint32_t) { ++visited; });
    EXPECT_TRUE(absl::IsDataLoss(status)) << status;
    EXPECT_EQ(visited, 0);
  }
}

}  // namespace
}  // namespace logkv::engine
