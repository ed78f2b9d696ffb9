// Hint files read through one reused buffer, as start-up reads all of a
// shard's: each file's entries come out exactly, whatever the buffer held
// before (a larger file's entries stay in it past the smaller one's end).
#include "engine/hint_file.h"

#include <cstdint>
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
  EXPECT_OK(writer.Finish(DefaultFileSystem(), hint.path, hint.segment_bytes));
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

}  // namespace
}  // namespace logkv::engine
