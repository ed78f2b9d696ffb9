// Value compression (Options::compression, the kRecordFlagZstd record flag):
// the codec on its own, including hostile compressed bytes, and the engine
// storing, reading, compacting and recovering compressed records, alone and
// mixed with plain ones in one data directory.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/engine.h"
#include "engine/log_format.h"
#include "engine/log_record.h"
#include "engine/value_codec.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/fault_injection_file_system.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::GetOrStatus;
using test::Random;

// JSON-like text of exactly n bytes: compresses well, as documents do.
std::string JsonLike(size_t n, uint64_t seed) {
  std::string out;
  for (uint64_t i = seed; out.size() < n; ++i) {
    absl::StrAppend(&out, "{\"id\":", i, ",\"name\":\"user-", i % 97,
                    "\",\"active\":true,\"tags\":[\"alpha\",\"beta\"]},");
  }
  out.resize(n);
  return out;
}

// n bytes that do not compress.
std::string RandomBytes(size_t n, uint64_t seed) {
  Random random(seed);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t word = random.Next();
    std::memcpy(out.data() + i, &word, std::min<size_t>(8, n - i));
  }
  return out;
}

LogRecord PutRecord(absl::string_view stored, bool compressed) {
  LogRecord record;
  record.type = format::RecordType::kPut;
  record.flags = compressed ? format::kRecordFlagZstd : 0;
  record.sequence = 1;
  record.key = "k";
  record.value = stored;
  return record;
}

// ---- The codec ------------------------------------------------------------------------------

TEST(ValueCodecTest, RoundTripsAtEveryLevel) {
  const std::string value = JsonLike(10'000, 1);
  for (int level = kMinCompressionLevel; level <= kMaxCompressionLevel; ++level) {
    SCOPED_TRACE(absl::StrCat("level ", level));
    const std::string stored(CompressValue(value, level));
    ASSERT_FALSE(stored.empty());
    EXPECT_LT(stored.size(), value.size() / 4);
    const LogRecord record = PutRecord(stored, true);
    EXPECT_EQ(PlainValueSize(record), value.size());
    std::string plain;
    ASSERT_OK(DecodeValue(record, format::kHardMaxValueBytes, &plain));
    EXPECT_EQ(plain, value);
  }
}

TEST(ValueCodecTest, DeclinesWhatDoesNotPay) {
  EXPECT_TRUE(CompressValue(RandomBytes(4096, 2), 3).empty()) << "random bytes";
  EXPECT_TRUE(CompressValue(RandomBytes(65536, 3), 19).empty()) << "random bytes";
  EXPECT_TRUE(CompressValue("", 3).empty()) << "nothing to save";
  EXPECT_TRUE(CompressValue("abcdefgh", 3).empty()) << "a frame outweighs 8 bytes";
  // Compressible, but only by less than an eighth: half random, half text.
  const std::string mixed = RandomBytes(3800, 4) + JsonLike(296, 5);
  EXPECT_TRUE(CompressValue(mixed, 3).empty());
  // And what pays saves at least an eighth.
  const std::string text = JsonLike(4096, 6);
  const absl::string_view stored = CompressValue(text, 3);
  ASSERT_FALSE(stored.empty());
  EXPECT_LE(stored.size(), text.size() - text.size() / 8);
}

TEST(ValueCodecTest, PlainRecordsAreCopied) {
  std::string out = "previous contents";
  ASSERT_OK(DecodeValue(PutRecord("plain value", false), format::kHardMaxValueBytes, &out));
  EXPECT_EQ(out, "plain value");
}

TEST(ValueCodecTest, StatedSizeOverTheLimitIsRefusedBeforeAllocating) {
  std::string stored(CompressValue(JsonLike(4096, 7), 3));
  ASSERT_FALSE(stored.empty());
  const uint32_t huge = 0xFFFFFFFFu;
  std::memcpy(stored.data(), &huge, sizeof(huge));
  std::string out;
  const absl::Status status = DecodeValue(PutRecord(stored, true), 1 << 20, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "exceeds the limit")) << status;
  EXPECT_TRUE(out.empty());
  // Within the limit but not the frame's size: refused too.
  const uint32_t other = 4095;
  std::memcpy(stored.data(), &other, sizeof(other));
  EXPECT_EQ(DecodeValue(PutRecord(stored, true), 1 << 20, &out).code(),
            absl::StatusCode::kDataLoss);
}

// Hostile or damaged compressed bytes (the record checksum normally catches
// damage first; a crafted record passes it): every bit flip and every
// truncation of a compressed value is an error or, where zstd cannot tell,
// a value of exactly the stated size, never a crash or an overrun.
TEST(ValueCodecTest, BitFlipsAndTruncationsAreErrorsNotCrashes) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  for (const size_t size : {200u, 300u, 5000u}) {
    SCOPED_TRACE(absl::StrCat("value of ", size, " bytes"));
    const std::string value = JsonLike(size, size);
    const std::string stored(CompressValue(value, 3));
    ASSERT_FALSE(stored.empty());
    std::string out;
    size_t errors = 0;
    for (size_t bit = 0; bit < stored.size() * 8; ++bit) {
      std::string damaged = stored;
      damaged[bit / 8] = static_cast<char>(damaged[bit / 8] ^ (1 << (bit % 8)));
      const absl::Status status = DecodeValue(PutRecord(damaged, true), 1 << 20, &out);
      if (status.ok()) {
        EXPECT_EQ(out.size(), size) << "bit " << bit;
      } else {
        EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
        ++errors;
      }
    }
    EXPECT_GT(errors, 0u);
    for (size_t length = 0; length < stored.size(); ++length) {
      const absl::Status status =
          DecodeValue(PutRecord(absl::string_view(stored).substr(0, length), true), 1 << 20, &out);
      EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << "truncated to " << length;
    }
    for (int trial = 0; trial < 200; ++trial) {
      std::string damaged = stored;
      const uint64_t flips = 1 + random.Uniform(8);
      for (uint64_t i = 0; i < flips; ++i) {
        damaged[random.Uniform(damaged.size())] = static_cast<char>(random.Next());
      }
      const absl::Status status = DecodeValue(PutRecord(damaged, true), 1 << 20, &out);
      if (status.ok()) {
        EXPECT_EQ(out.size(), PlainValueSize(PutRecord(damaged, true)));
      }
    }
  }
  // Garbage that states a plausible size.
  for (int trial = 0; trial < 200; ++trial) {
    std::string garbage = RandomBytes(4 + random.Uniform(200), random.Next());
    const uint32_t plain = static_cast<uint32_t>(random.Uniform(1 << 16));
    std::memcpy(garbage.data(), &plain, sizeof(plain));
    std::string out;
    EXPECT_EQ(DecodeValue(PutRecord(garbage, true), 1 << 20, &out).code(),
              absl::StatusCode::kDataLoss);
  }
}

// The record decoder checks what it can without decompressing.
TEST(ValueCodecTest, DecodeRecordChecksTheCompressedLayout) {
  const std::string stored(CompressValue(JsonLike(1000, 8), 3));
  ASSERT_FALSE(stored.empty());
  LogRecord record = PutRecord(stored, true);
  std::string encoded;
  EncodeRecord(record, &encoded);
  DecodeResult decoded = DecodeRecord(encoded, format::kMaxKeyBytes, format::kHardMaxValueBytes);
  ASSERT_EQ(decoded.outcome, DecodeOutcome::kRecord) << decoded.error;
  EXPECT_TRUE(decoded.record.compressed());
  EXPECT_EQ(decoded.record.value, stored);

  decoded = DecodeRecord(encoded, format::kMaxKeyBytes, /*max_value_bytes=*/999);
  EXPECT_EQ(decoded.outcome, DecodeOutcome::kCorrupt);
  EXPECT_TRUE(absl::StrContains(decoded.error, "plain bytes exceeds")) << decoded.error;

  // A tombstone with the flag, checksum and all valid, is corrupt.
  std::string tombstone;
  LogRecord deleted = PutRecord("", false);
  deleted.type = format::RecordType::kDelete;
  EncodeRecord(deleted, &tombstone);
  tombstone[offsetof(format::RecordHeader, flags)] = format::kRecordFlagZstd;
  const uint64_t payload = format::kRecordHeaderBytes + 1;
  const uint64_t checksum =
      XXH3_64bits(tombstone.data() + format::kChecksumBytes, payload - format::kChecksumBytes);
  std::memcpy(tombstone.data(), &checksum, sizeof(checksum));
  decoded = DecodeRecord(tombstone, format::kMaxKeyBytes, format::kHardMaxValueBytes);
  EXPECT_EQ(decoded.outcome, DecodeOutcome::kCorrupt);
}

// ---- The engine -----------------------------------------------------------------------------

class CompressionTest : public test::EngineFixture<> {
 protected:
  void SetUp() override {
    EngineFixture::SetUp();
    options_.compression = Compression::kZstd;
    options_.compression_min_bytes = kMinBytes;
  }

  static constexpr uint32_t kMinBytes = 64;

  // Every value a test writes: compressible ones of each size around the
  // threshold and some far from it, and incompressible ones.
  static std::map<std::string, std::string> Values() {
    std::map<std::string, std::string> values;
    for (size_t size = 0; size <= kMinBytes + 16; ++size) {
      values[absl::StrFormat("text-%05d", size)] = JsonLike(size, size);
    }
    for (const size_t size : {100u, 4096u, 65536u, 1u << 20, 3u << 20}) {
      values[absl::StrFormat("text-%07d", size)] = JsonLike(size, size);
      values[absl::StrFormat("random-%07d", size)] = RandomBytes(size, size);
    }
    return values;
  }

  void PutAll(const std::map<std::string, std::string>& values) {
    for (const auto& [key, value] : values) ASSERT_OK(engine_->Put(key, value)) << key;
  }

  // Every way of reading a value gives the plain one.
  void ExpectReadable(const std::map<std::string, std::string>& values) {
    for (const auto& [key, value] : values) {
      EXPECT_EQ(GetOrStatus(engine_.get(), key), value) << key;
      absl::StatusOr<KeyRecord> record = engine_->GetRecord(key, /*with_value=*/true);
      ASSERT_OK(record);
      EXPECT_EQ(record->value, value) << key;
    }
    absl::StatusOr<std::vector<ScanItem>> items = test::ScanAll(engine_.get(), ScanOptions{});
    ASSERT_OK(items);
    ASSERT_EQ(items->size(), values.size());
    for (const ScanItem& item : *items) EXPECT_EQ(item.value, values.at(item.key)) << item.key;
  }

  uint64_t LogBytes() { return engine_->GetStats().log_bytes; }
};

TEST_F(CompressionTest, RoundTripAtEverySizeAroundTheThreshold) {
  ASSERT_OK(Open());
  const std::map<std::string, std::string> values = Values();
  PutAll(values);
  ExpectReadable(values);

  const Stats stats = engine_->GetStats();
  uint64_t in = 0;
  uint64_t random_in = 0;
  uint64_t tried = 0;
  for (const auto& [key, value] : values) {
    in += value.size();
    if (absl::StartsWith(key, "random")) random_in += value.size();
    if (value.size() >= kMinBytes) ++tried;
  }
  EXPECT_EQ(stats.value_bytes_in, in);
  EXPECT_LT(stats.value_bytes_stored, random_in + (in - random_in) / 4)
      << "the large text values compress";
  EXPECT_EQ(stats.values_compressed + stats.values_compression_skipped, tried);
  EXPECT_GE(stats.values_compression_skipped, 4u) << "random values are stored plain";
  EXPECT_GT(stats.values_decompressed, 0u);
  EXPECT_GT(stats.compress_cpu_ns, 0u);

  ASSERT_OK(Reopen());
  ExpectReadable(values);
}

TEST_F(CompressionTest, ChangeFeedHistoryAndReplicaReadsGetPlainValues) {
  options_.versions_kept = 3;
  ASSERT_OK(Open());
  const std::string v1 = JsonLike(5000, 1);
  const std::string v2 = JsonLike(6000, 2);
  ASSERT_OK(engine_->Put("doc", v1));
  ASSERT_OK(engine_->Put("doc", v2));
  ASSERT_OK_AND_ASSIGN(Record first, engine_->GetVersion("doc", 1));
  EXPECT_EQ(first.value, v1);
  ASSERT_OK_AND_ASSIGN(Record second, engine_->GetVersion("doc", 2));
  EXPECT_EQ(second.value, v2);

  const uint32_t shard = engine_->ShardOf("doc");
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, engine_->ReadEvents(shard, 0, 10));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].value, v1);
  EXPECT_EQ(events[1].value, v2);
  // The byte budget counts plain bytes: the first event alone passes 5000.
  ASSERT_OK_AND_ASSIGN(events, engine_->ReadEvents(shard, 0, 10, /*max_bytes=*/5100));
  EXPECT_EQ(events.size(), 1u);

  // A replicated write of a compressed value stores and reads back the same.
  WriteOptions replicated;
  replicated.timestamp = TimestampAtUnixMs(clock_.NowUnixMs() + 1000);
  ASSERT_OK(engine_->Put("copy", v2, replicated));
  ASSERT_OK_AND_ASSIGN(KeyRecord copy, engine_->GetRecord("copy", true));
  EXPECT_EQ(copy.value, v2);
  EXPECT_EQ(copy.timestamp, replicated.timestamp);
}

// The Merkle summary hashes keys and timestamps, never stored bytes: a
// compressing and a plain store holding the same writes agree.
TEST_F(CompressionTest, MerkleSummaryDoesNotDependOnCompression) {
  test::ScopedTempDir other_dir;
  Options plain_options = options_;
  plain_options.data_dir = other_dir.Subdir("db");
  plain_options.compression = Compression::kNone;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> plain, Engine::Open(plain_options));
  ASSERT_OK(Open());
  uint64_t timestamp = TimestampAtUnixMs(clock_.NowUnixMs());
  for (const auto& [key, value] : Values()) {
    WriteOptions write;
    write.timestamp = ++timestamp;
    ASSERT_OK(engine_->Put(key, value, write));
    ASSERT_OK(plain->Put(key, value, write));
  }
  EXPECT_LT(LogBytes(), plain->GetStats().log_bytes);
  for (uint32_t partition = 0; partition < engine_->MerklePartitionCount(); ++partition) {
    EXPECT_EQ(engine_->MerkleNodeHash(partition, 1), plain->MerkleNodeHash(partition, 1));
  }
  ASSERT_OK(plain->Close());
}

TEST_F(CompressionTest, MixedDirectoriesReadBothWays) {
  // Written plain, then opened with compression on.
  options_.compression = Compression::kNone;
  ASSERT_OK(Open());
  std::map<std::string, std::string> plain_values;
  for (const auto& [key, value] : Values()) plain_values["plain/" + key] = value;
  PutAll(plain_values);
  EXPECT_EQ(engine_->GetStats().values_compressed, 0u);
  const uint64_t plain_bytes = LogBytes();

  options_.compression = Compression::kZstd;
  ASSERT_OK(Reopen());
  ExpectReadable(plain_values);
  std::map<std::string, std::string> all = plain_values;
  for (const auto& [key, value] : Values()) all["zstd/" + key] = value;
  for (const auto& [key, value] : Values()) ASSERT_OK(engine_->Put("zstd/" + key, value));
  EXPECT_GT(engine_->GetStats().values_compressed, 0u);
  EXPECT_LT(LogBytes() - plain_bytes, plain_bytes * 3 / 4) << "the same values, compressed";
  ExpectReadable(all);

  // Then with compression off again: the compressed records still read.
  options_.compression = Compression::kNone;
  ASSERT_OK(Reopen());
  ExpectReadable(all);
  // And by scanning the segments, not the hint files.
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_GT(test::RemoveAllHintFiles(options_.data_dir), 0u);
  ASSERT_OK(Open());
  EXPECT_GT(engine_->GetStats().recovered_by_scan, 0u);
  ExpectReadable(all);
}

TEST_F(CompressionTest, CompactionKeepsCompressedRecordsReadable) {
  options_.versions_kept = 2;
  ASSERT_OK(Open());
  std::map<std::string, std::string> values = Values();
  PutAll(values);
  // Overwrite half so compaction has dead records to drop, and delete some.
  int i = 0;
  for (auto& [key, value] : values) {
    if (++i % 2 == 0) {
      value = JsonLike(value.size() + 100, i);
      ASSERT_OK(engine_->Put(key, value));
    }
  }
  ASSERT_OK(engine_->Delete("text-00070"));
  values.erase("text-00070");
  ASSERT_OK(engine_->Put("history", JsonLike(3000, 1)));
  ASSERT_OK(engine_->Put("history", JsonLike(3000, 2)));
  values["history"] = JsonLike(3000, 2);
  // Expired compressed values become value-less shadows in compaction.
  WriteOptions ttl;
  ttl.ttl_ms = 1000;
  ASSERT_OK(engine_->Put("expiring", JsonLike(5000, 9), ttl));
  clock_.AdvanceMs(2000);
  EXPECT_EQ(engine_->SweepExpiredNow(), 1u);
  ASSERT_OK(engine_->Put("roll", RandomBytes(70 << 10, 10)));  // seals the active segments
  values["roll"] = RandomBytes(70 << 10, 10);
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  EXPECT_GT(engine_->GetStats().compactions, 0u);
  ExpectReadable(values);
  EXPECT_EQ(GetOrStatus(engine_.get(), "expiring"), "NOT_FOUND");
  ASSERT_OK_AND_ASSIGN(Record old, engine_->GetVersion("history", 1));
  EXPECT_EQ(old.value, JsonLike(3000, 1));

  ASSERT_OK(Reopen());
  ExpectReadable(values);
  ASSERT_OK_AND_ASSIGN(old, engine_->GetVersion("history", 1));
  EXPECT_EQ(old.value, JsonLike(3000, 1));
}

// A compressed record whose frame is damaged behind a valid record checksum
// (written so on purpose): reads are DataLoss, Scan skips it, nothing crashes.
TEST_F(CompressionTest, DamagedFrameIsDataLossOnRead) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  const std::string value = JsonLike(4000, 11);
  ASSERT_OK(engine_->Put("a-damaged", value));
  ASSERT_OK(engine_->Put("b-fine", value));
  ASSERT_OK(engine_->Close());
  engine_.reset();
  test::RemoveAllHintFiles(options_.data_dir);

  const std::string path = test::ListSegmentFiles(options_.data_dir, 0).back();
  std::string bytes = test::ReadFileBytes(path);
  const size_t offset = format::kSegmentHeaderBytes;  // the first record
  format::RecordHeader header;
  std::memcpy(&header, bytes.data() + offset, sizeof(header));
  ASSERT_EQ(header.flags, format::kRecordFlagZstd);
  // The zstd frame's magic number, just after the key and the plain size.
  const size_t frame = offset + format::kRecordHeaderBytes + header.key_size +
                       format::kCompressedSizeBytes;
  bytes[frame] ^= 0x01;
  const uint64_t payload = format::kRecordHeaderBytes + header.key_size + header.value_size;
  const uint64_t checksum =
      XXH3_64bits(bytes.data() + offset + format::kChecksumBytes, payload - format::kChecksumBytes);
  std::memcpy(bytes.data() + offset, &checksum, sizeof(checksum));
  test::WriteFileBytes(path, bytes);

  ASSERT_OK(Open());
  EXPECT_EQ(engine_->Get("a-damaged").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(GetOrStatus(engine_.get(), "b-fine"), value);
  absl::StatusOr<std::vector<ScanItem>> items = test::ScanAll(engine_.get(), ScanOptions{});
  ASSERT_OK(items);
  ASSERT_EQ(items->size(), 1u);
  EXPECT_EQ((*items)[0].key, "b-fine");
  EXPECT_EQ(engine_->ReadEvents(0, 0, 10).status().code(), absl::StatusCode::kDataLoss);
}

// A stated plain size over the format's ceiling, behind a valid checksum, is
// refused when the record is decoded, as any impossible size is.
TEST_F(CompressionTest, ImpossiblePlainSizeIsCorruption) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("a-damaged", JsonLike(4000, 12)));
  ASSERT_OK(engine_->Put("b-after", JsonLike(4000, 13)));
  ASSERT_OK(engine_->Close());
  engine_.reset();
  test::RemoveAllHintFiles(options_.data_dir);

  const std::string path = test::ListSegmentFiles(options_.data_dir, 0).back();
  std::string bytes = test::ReadFileBytes(path);
  const size_t offset = format::kSegmentHeaderBytes;
  format::RecordHeader header;
  std::memcpy(&header, bytes.data() + offset, sizeof(header));
  const uint32_t huge = format::kHardMaxValueBytes + 1;
  std::memcpy(bytes.data() + offset + format::kRecordHeaderBytes + header.key_size, &huge,
              sizeof(huge));
  const uint64_t payload = format::kRecordHeaderBytes + header.key_size + header.value_size;
  const uint64_t checksum =
      XXH3_64bits(bytes.data() + offset + format::kChecksumBytes, payload - format::kChecksumBytes);
  std::memcpy(bytes.data() + offset, &checksum, sizeof(checksum));
  test::WriteFileBytes(path, bytes);

  const absl::Status status = Open();
  ASSERT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), test::BaseName(path))) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "plain bytes exceeds")) << status;
}

TEST_F(CompressionTest, OptionsOutOfRangeAreRefused) {
  for (const int level : {0, -1, 20, 100}) {
    options_.compression_level = level;
    const absl::Status status = Open();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << level;
    EXPECT_TRUE(absl::StrContains(status.message(), "compression_level must be in [1, 19]"))
        << status;
  }
  options_.compression_level = 3;
  options_.compression = static_cast<Compression>(7);
  EXPECT_EQ(Open().code(), absl::StatusCode::kInvalidArgument);
  options_.compression = Compression::kZstd;
  options_.compression_min_bytes = format::kHardMaxValueBytes + 1;
  EXPECT_EQ(Open().code(), absl::StatusCode::kInvalidArgument);
  options_.compression_min_bytes = 0;
  ASSERT_OK(Open());
  for (const int level : {1, 19}) {
    options_.compression_level = level;
    ASSERT_OK(Reopen());
    ASSERT_OK(engine_->Put(absl::StrCat("level-", level), JsonLike(2000, level)));
    EXPECT_EQ(GetOrStatus(engine_.get(), absl::StrCat("level-", level)), JsonLike(2000, level));
  }
}

// ---- Crashes --------------------------------------------------------------------------------

// The crash pattern of recovery_test (a machine dying with unsynced data
// lost), with compressed values: every acknowledged write is there after
// each crash, and nothing else.
TEST(CompressionCrashTest, AlwaysKeepsEveryAcknowledgedCompressedWrite) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  test::ScopedTempDir dir;
  test::ManualClock clock;
  test::LogCapture log;
  test::FaultInjectionFileSystem fs(DefaultFileSystem());
  Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
  options.file_system = &fs;
  options.fsync = FsyncPolicy::kAlways;
  options.background_threads = true;
  options.compression = Compression::kZstd;
  options.compression_min_bytes = 32;
  constexpr int kKeys = 40;
  std::map<std::string, std::string> oracle;
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    // Alternate the setting: every round reads what the others wrote.
    options.compression = round % 2 == 0 ? Compression::kZstd : Compression::kNone;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = absl::StrCat("key-", i);
      auto it = oracle.find(key);
      ASSERT_EQ(GetOrStatus(engine.get(), key), it == oracle.end() ? "NOT_FOUND" : it->second)
          << key;
    }
    const uint64_t operations = 40 + random.Uniform(60);
    for (uint64_t op = 0; op < operations; ++op) {
      const std::string key = absl::StrCat("key-", random.Uniform(kKeys));
      const uint64_t dice = random.Uniform(100);
      if (dice < 75) {
        const size_t size = random.Uniform(6000);
        const std::string value = random.Percent(80) ? JsonLike(size, random.Next())
                                                     : RandomBytes(size, random.Next());
        ASSERT_OK(engine->Put(key, value));
        oracle[key] = value;
      } else if (dice < 92) {
        absl::Status status = engine->Delete(key).status();
        ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
        oracle.erase(key);
      } else {
        ASSERT_OK(engine->CompactNow(/*force=*/random.Percent(50)));
      }
    }
    // The machine dies: nothing reaches the disk any more, unsynced data is gone.
    fs.SetActive(false);
    engine.reset();
    ASSERT_OK(fs.DropUnsyncedData());
    fs.SetActive(true);
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = absl::StrCat("key-", i);
    auto it = oracle.find(key);
    EXPECT_EQ(GetOrStatus(engine.get(), key), it == oracle.end() ? "NOT_FOUND" : it->second);
  }
  ASSERT_OK(engine->Close());
}

}  // namespace
}  // namespace logkv::engine
