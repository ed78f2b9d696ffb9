// Recovery after crashes and corruption.
//
// Crashes are simulated with FaultInjectionFileSystem (leveldb's
// db/fault_injection_test.cc): the file system goes dead, the engine is
// destroyed, unsynced bytes are dropped and the store is reopened; the result
// is checked against an oracle of acknowledged writes.
//
// Corruption is tested case by case on real files after a clean Close, in the
// manner of leveldb's db/log_test.cc: a torn tail, a bad checksum, a bad
// length, an unknown record type, a damaged hint file and a bad segment
// header. Each case parses the segment with the structs of log_format.h to
// find the bytes to damage.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/file_system.h"
#include "engine/log_format.h"
#include "gtest/gtest.h"
#include "tests/engine/fault_injection_file_system.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::BaseName;
using test::FaultInjectionFileSystem;
using test::GetOrStatus;
using test::LogCapture;
using test::ManualClock;
using test::Random;
using test::ScopedTempDir;
using test::TestOptions;

// ---- A segment parser written from log_format.h alone ------------------------------

struct ParsedRecord {
  uint64_t offset = 0;         // of the record header in the segment file
  uint64_t record_bytes = 0;   // aligned size
  uint64_t payload_bytes = 0;  // header + key + value, before padding
  format::RecordHeader header{};
  std::string key;
  std::string value;
};

struct ParsedSegment {
  format::SegmentHeader header{};
  std::vector<ParsedRecord> records;
  uint64_t data_end = 0;  // offset after the last record
};

// Parses a segment written by a clean Close: a valid header, verified records,
// then nothing or zeros. Any surprise is an error, because the corruption
// tests must know exactly what they damage.
absl::StatusOr<ParsedSegment> ParseSegment(const std::string& bytes) {
  ParsedSegment segment;
  if (bytes.size() < format::kSegmentHeaderBytes) {
    return absl::InternalError(absl::StrCat("segment of ", bytes.size(), " bytes has no header"));
  }
  std::memcpy(&segment.header, bytes.data(), sizeof(segment.header));
  if (std::memcmp(segment.header.magic, format::kSegmentMagic, sizeof(format::kSegmentMagic)) !=
      0) {
    return absl::InternalError("bad segment magic");
  }
  if (XXH3_64bits(bytes.data(), offsetof(format::SegmentHeader, checksum)) !=
      segment.header.checksum) {
    return absl::InternalError("bad segment header checksum");
  }
  uint64_t offset = format::kSegmentHeaderBytes;
  while (offset + format::kRecordHeaderBytes <= bytes.size()) {
    ParsedRecord record;
    record.offset = offset;
    std::memcpy(&record.header, bytes.data() + offset, sizeof(record.header));
    if (record.header.type == 0 && record.header.checksum == 0) break;  // unwritten space
    record.payload_bytes =
        format::kRecordHeaderBytes + record.header.key_size + record.header.value_size;
    record.record_bytes = format::AlignRecord(record.payload_bytes);
    if (offset + record.payload_bytes > bytes.size()) {
      return absl::InternalError(absl::StrCat("record at ", offset, " runs past the end"));
    }
    const uint64_t checksum = XXH3_64bits(bytes.data() + offset + format::kChecksumBytes,
                                          record.payload_bytes - format::kChecksumBytes);
    if (checksum != record.header.checksum) {
      return absl::InternalError(absl::StrCat("record at ", offset, " has a bad checksum"));
    }
    record.key = bytes.substr(offset + format::kRecordHeaderBytes, record.header.key_size);
    record.value = bytes.substr(offset + format::kRecordHeaderBytes + record.header.key_size,
                                record.header.value_size);
    segment.records.push_back(record);
    offset += record.record_bytes;
  }
  segment.data_end = offset;
  for (uint64_t i = offset; i < bytes.size(); ++i) {
    if (bytes[i] != 0) return absl::InternalError(absl::StrCat("stray byte at ", i));
  }
  return segment;
}

// Recomputes a record's checksum after a test changed its header fields,
// over the payload the header now announces.
void RewriteChecksum(std::string* segment, uint64_t record_offset, uint64_t payload_bytes) {
  const uint64_t checksum = XXH3_64bits(segment->data() + record_offset + format::kChecksumBytes,
                                        payload_bytes - format::kChecksumBytes);
  std::memcpy(segment->data() + record_offset, &checksum, sizeof(checksum));
}

// ---- The fault-injecting file system itself -------------------------------------------
// The crash tests are only as good as this harness, so it is checked first
// against the real file system.

class FaultInjectionFileSystemTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_.Subdir(name); }

  ScopedTempDir dir_;
  FaultInjectionFileSystem fs_{DefaultFileSystem()};
};

TEST_F(FaultInjectionFileSystemTest, DropUnsyncedDataKeepsOnlySyncedBytes) {
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file,
                         fs_.NewWritableFile(Path("partly-synced"), 4096));
    ASSERT_OK(file->Append("durable"));
    ASSERT_OK(file->Sync());
    ASSERT_OK(file->Append("-lost"));
    ASSERT_OK(file->Close());
  }
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file,
                         fs_.NewWritableFile(Path("never-synced"), 4096));
    ASSERT_OK(file->Append("lost"));
    ASSERT_OK(file->Close());
  }
  ASSERT_OK(fs_.WriteFile(Path("written-synced"), "kept", /*sync=*/true));
  ASSERT_OK(fs_.WriteFile(Path("written-unsynced"), "lost", /*sync=*/false));
  EXPECT_EQ(test::ReadFileBytes(Path("partly-synced")), "durable-lost");
  EXPECT_EQ(fs_.sync_count(), 1u);
  EXPECT_EQ(fs_.file_sync_count(), 1u);

  ASSERT_OK(fs_.DropUnsyncedData());
  EXPECT_EQ(test::ReadFileBytes(Path("partly-synced")), "durable");
  EXPECT_FALSE(fs_.FileExists(Path("never-synced")));
  EXPECT_EQ(test::ReadFileBytes(Path("written-synced")), "kept");
  EXPECT_FALSE(fs_.FileExists(Path("written-unsynced")));
}

TEST_F(FaultInjectionFileSystemTest, InactiveFileSystemChangesNothing) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file,
                       fs_.NewWritableFile(Path("segment"), 4096));
  ASSERT_OK(file->Append("before"));
  ASSERT_OK(file->Sync());
  ASSERT_OK(fs_.WriteFile(Path("existing"), "old", /*sync=*/true));

  fs_.SetActive(false);
  EXPECT_OK(file->Append("-after"));
  EXPECT_EQ(file->Size(), 12u) << "the engine still sees its appends";
  EXPECT_OK(file->Sync());
  EXPECT_OK(fs_.WriteFile(Path("existing"), "new", /*sync=*/true));
  EXPECT_OK(fs_.WriteFile(Path("created"), "x", /*sync=*/true));
  EXPECT_OK(fs_.RenameFile(Path("existing"), Path("renamed")));
  EXPECT_OK(fs_.RemoveFile(Path("existing")));
  EXPECT_OK(file->Close());
  file.reset();
  fs_.SetActive(true);

  ASSERT_OK(fs_.DropUnsyncedData());
  EXPECT_EQ(test::ReadFileBytes(Path("segment")), "before");
  EXPECT_EQ(test::ReadFileBytes(Path("existing")), "old");
  EXPECT_FALSE(fs_.FileExists(Path("created")));
  EXPECT_FALSE(fs_.FileExists(Path("renamed")));
}

TEST_F(FaultInjectionFileSystemTest, DirectoryEntriesNeedSyncDir) {
  ASSERT_OK(fs_.WriteFile(Path("synced-entry"), "a", /*sync=*/true));
  ASSERT_OK(fs_.SyncDir(dir_.path()));
  ASSERT_OK(fs_.WriteFile(Path("unsynced-entry"), "b", /*sync=*/true));
  EXPECT_EQ(fs_.dir_sync_count(), 1u);
  ASSERT_OK(fs_.RemoveFilesCreatedAfterLastDirSync());
  EXPECT_TRUE(fs_.FileExists(Path("synced-entry")));
  EXPECT_FALSE(fs_.FileExists(Path("unsynced-entry")));
}

TEST_F(FaultInjectionFileSystemTest, FailWritesAfterFailsLaterCalls) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file,
                       fs_.NewWritableFile(Path("failing"), 4096));
  fs_.FailWritesAfter(2);
  EXPECT_OK(file->Append("one"));
  EXPECT_OK(file->Sync());
  EXPECT_FALSE(file->Append("two").ok());
  EXPECT_FALSE(file->Sync().ok());
  EXPECT_FALSE(fs_.WriteFile(Path("other"), "x", /*sync=*/true).ok());
  EXPECT_EQ(fs_.injected_failures(), 3u);
  fs_.ClearFailures();
  EXPECT_OK(file->Append("three"));
  EXPECT_OK(file->Close());
  EXPECT_EQ(test::ReadFileBytes(Path("failing")), "onethree");
}

TEST_F(FaultInjectionFileSystemTest, DropRefusesWhileAFileIsOpen) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file, fs_.NewWritableFile(Path("open"), 4096));
  EXPECT_STATUS_CODE(fs_.DropUnsyncedData(), absl::StatusCode::kFailedPrecondition);
  file.reset();
  EXPECT_OK(fs_.DropUnsyncedData());
}

// ---- Crashes ------------------------------------------------------------------------------

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_ = TestOptions(dir_.Subdir("db"), &clock_, &log_);
    options_.file_system = &fs_;
  }

  void TearDown() override {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  absl::Status Open() {
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(options_);
    if (!engine.ok()) return engine.status();
    engine_ = std::move(engine).value();
    return absl::OkStatus();
  }

  // The machine dies: nothing the engine does from now on reaches the disk,
  // and whatever was not synced is gone.
  void Crash(bool lose_unsynced_directory_entries) {
    fs_.SetActive(false);
    engine_.reset();
    ASSERT_OK(fs_.DropUnsyncedData());
    if (lose_unsynced_directory_entries) {
      ASSERT_OK(fs_.RemoveFilesCreatedAfterLastDirSync());
    }
    fs_.SetActive(true);
  }

  static std::string KeyName(uint64_t i) { return absl::StrFormat("key-%03d", i); }

  // Rounds of random writes, each ended by a crash, under kAlways: every
  // acknowledged write must be there after each crash, and nothing else.
  void RunAlwaysRounds(bool lose_unsynced_directory_entries, bool write_hints = false) {
    const uint64_t seed = test::TestSeed();
    SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
    Random random(seed);
    options_.fsync = FsyncPolicy::kAlways;
    options_.background_threads = true;
    constexpr int kKeys = 60;
    std::map<std::string, std::string> oracle;
    for (int round = 0; round < 5; ++round) {
      SCOPED_TRACE(absl::StrCat("round ", round));
      ASSERT_OK(Open());
      for (int i = 0; i < kKeys; ++i) {
        auto it = oracle.find(KeyName(i));
        ASSERT_EQ(GetOrStatus(engine_.get(), KeyName(i)),
                  it == oracle.end() ? "NOT_FOUND" : it->second)
            << KeyName(i);
      }
      const uint64_t operations = 50 + random.Uniform(100);
      for (uint64_t op = 0; op < operations; ++op) {
        const std::string key = KeyName(random.Uniform(kKeys));
        const uint64_t dice = random.Uniform(100);
        if (dice < 70) {
          const std::string value =
              absl::StrCat(key, "@", round, ".", op, ":", random.Bytes(random.Uniform(1500)));
          ASSERT_OK(engine_->Put(key, value));
          oracle[key] = value;
        } else if (dice < 92) {
          absl::Status status = engine_->Delete(key).status();
          ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
          oracle.erase(key);
        } else if (write_hints && random.Percent(50)) {
          ASSERT_OK(engine_->WriteHintsNow());
        } else {
          ASSERT_OK(engine_->CompactNow(/*force=*/random.Percent(50)));
        }
      }
      ASSERT_NO_FATAL_FAILURE(Crash(lose_unsynced_directory_entries));
    }
    ASSERT_OK(Open());
    for (int i = 0; i < kKeys; ++i) {
      auto it = oracle.find(KeyName(i));
      EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)),
                it == oracle.end() ? "NOT_FOUND" : it->second)
          << KeyName(i);
    }
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  LogCapture log_;
  FaultInjectionFileSystem fs_{DefaultFileSystem()};
  Options options_;
  std::unique_ptr<Engine> engine_;  // declared last: destroyed before what it uses
};

TEST_F(CrashTest, AlwaysKeepsEveryAcknowledgedWrite) {
  RunAlwaysRounds(/*lose_unsynced_directory_entries=*/false);
}

// A new segment's directory entry must be synced (SyncDir) before writes in it
// are acknowledged, or a crash can lose the whole file.
TEST_F(CrashTest, AlwaysKeepsEveryAcknowledgedWriteWhenDirectoryEntriesAreLost) {
  RunAlwaysRounds(/*lose_unsynced_directory_entries=*/true);
}

// Hint files written for sealed segments while the engine runs (not only at
// Close) are used after a crash, and change nothing of what is recovered.
TEST_F(CrashTest, AlwaysKeepsEveryAcknowledgedWriteWithHintsWrittenWhileRunning) {
  RunAlwaysRounds(/*lose_unsynced_directory_entries=*/false, /*write_hints=*/true);
}

TEST_F(CrashTest, AlwaysKeepsEveryAcknowledgedWriteWithHintsWrittenWhileRunningAndLost) {
  RunAlwaysRounds(/*lose_unsynced_directory_entries=*/true, /*write_hints=*/true);
}

// Many writers at once on every shard, as a server's clients are, and the
// machine dies while they write: the group commit answers a writer only
// after its shard's round synced its record, so every write answered
// before the crash is there after it, whichever shard and round it was in.
TEST_F(CrashTest, ConcurrentWritersOnEveryShardKeepEveryAcknowledgedWriteInACrash) {
  constexpr int kWriters = 8;
  constexpr int kAckedBeforeCrash = 1500;
  options_.fsync = FsyncPolicy::kAlways;
  options_.shard_count = 4;
  options_.segment_bytes = 64 << 10;  // rolls during the run
  for (int crash = 0; crash < 6; ++crash) {
    const bool lose_entries = crash % 2 == 1;
    SCOPED_TRACE(absl::StrCat("crash ", crash, ", lose_unsynced_directory_entries=", lose_entries));
    ASSERT_OK(Open());
    // Set before the machine dies: a writer that still reads false after
    // its Put returned was answered while the disk was alive.
    std::atomic<bool> dying{false};
    std::atomic<bool> stop{false};
    std::atomic<int> acked{0};
    std::vector<int> last_acked(kWriters, -1);  // each writer's own slot
    std::vector<std::thread> writers;
    const std::string round = absl::StrCat("crash", crash);
    for (int w = 0; w < kWriters; ++w) {
      writers.emplace_back([&, w] {
        for (int i = 0; !stop.load(); ++i) {
          const std::string key = absl::StrCat(round, "-w", w, "-", i);
          if (!engine_->Put(key, absl::StrCat("value of ", key)).ok()) continue;
          if (dying.load()) continue;
          last_acked[w] = i;
          acked.fetch_add(1);
        }
      });
    }
    // Bounded: at most a minute for the writers to have enough answered.
    for (int i = 0; i < 6000 && acked.load() < kAckedBeforeCrash; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    dying.store(true);
    fs_.SetActive(false);
    stop.store(true);
    for (std::thread& writer : writers) writer.join();
    ASSERT_GE(acked.load(), kAckedBeforeCrash);
    ASSERT_NO_FATAL_FAILURE(Crash(lose_entries));

    ASSERT_OK(Open());
    for (int w = 0; w < kWriters; ++w) {
      for (int i = 0; i <= last_acked[w]; ++i) {
        const std::string key = absl::StrCat(round, "-w", w, "-", i);
        ASSERT_EQ(GetOrStatus(engine_.get(), key), absl::StrCat("value of ", key));
      }
    }
    ASSERT_OK(engine_->Close());
    engine_.reset();
  }
}

TEST_F(CrashTest, HintsOfSealedSegmentsServeTheRestartAfterACrash) {
  options_.versions_kept = 3;
  ASSERT_OK(Open());
  // Three versions of each key over many 64 KiB segments.
  constexpr int kKeys = 300;
  const std::string filler(400, 'v');
  for (int version = 1; version <= 3; ++version) {
    for (int i = 0; i < kKeys; ++i) {
      ASSERT_OK(engine_->Put(KeyName(i), absl::StrCat(version, ":", filler)));
    }
  }
  ASSERT_OK(engine_->Sync());
  ASSERT_OK(engine_->WriteHintsNow());
  const uint64_t segments = engine_->GetStats().segments;
  const uint64_t shards = engine_->ShardCount();
  ASSERT_GT(segments, 2 * shards) << "the test needs sealed segments";
  EXPECT_FALSE(test::ListHintFiles(options_.data_dir, 0).empty());
  EXPECT_FALSE(test::ListHintFiles(options_.data_dir, 1).empty());
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));

  ASSERT_OK(Open());
  const Stats stats = engine_->GetStats();
  // Only the segments that were active at the crash (one per shard) are scanned.
  EXPECT_LE(stats.recovered_by_scan, shards);
  EXPECT_EQ(stats.recovered_from_hints + stats.recovered_by_scan, segments);
  EXPECT_EQ(stats.keys, static_cast<uint64_t>(kKeys));
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), absl::StrCat(3, ":", filler));
    for (uint64_t version = 1; version <= 3; ++version) {
      absl::StatusOr<Record> record = engine_->GetVersion(KeyName(i), version);
      ASSERT_OK(record.status()) << KeyName(i) << " version " << version;
      EXPECT_EQ(record->value, absl::StrCat(version, ":", filler));
    }
  }
}

// A store killed and restarted again and again (no Close: each shard's
// active segment is left unsealed and without a hint file, as a kill leaves
// it) continues that segment at every restart instead of starting one more,
// so the number of segments stays put however many kills there are; and the
// writes, the older versions kept, the expiries and the deletes of every
// round survive. Now and then the machine crashes instead, after a Sync:
// the Sync must cover what the restarts before it recovered too (a segment
// a kill left behind and the restart sealed was never synced, nor was the
// recovered part of a continued one). Once the hint files are lost as well.
TEST_F(CrashTest, RepeatedKillsDoNotAddSegments) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.versions_kept = 2;
  constexpr int kKeys = 40;
  constexpr int kKills = 40;
  struct Life {
    std::vector<std::string> values;  // of the key's current life, oldest first
    std::vector<int64_t> expiries;    // each value's; 0: none
    int64_t expiry_unix_ms = 0;       // of the newest value; 0: none
  };
  std::map<std::string, Life> model;
  auto check = [&](const std::string& when) {
    SCOPED_TRACE(when);
    const int64_t now = clock_.NowUnixMs();
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = KeyName(i);
      const Life& life = model[key];
      const bool expired = life.expiry_unix_ms != 0 && life.expiry_unix_ms <= now;
      if (life.values.empty() || expired) {
        ASSERT_EQ(GetOrStatus(engine_.get(), key), "NOT_FOUND") << key;
        continue;
      }
      ASSERT_EQ(GetOrStatus(engine_.get(), key), life.values.back()) << key;
      if (life.values.size() >= 2) {
        const uint64_t older = life.values.size() - 1;
        absl::StatusOr<Record> record = engine_->GetVersion(key, older);
        const int64_t older_expiry = life.expiries[older - 1];
        if (older_expiry != 0 && older_expiry <= now) {  // gone at its own expiry
          EXPECT_TRUE(absl::IsNotFound(record.status())) << key << " version " << older;
          continue;
        }
        ASSERT_OK(record.status()) << key << " version " << older;
        EXPECT_EQ(record->value, life.values[older - 1]) << key << " version " << older;
      }
    }
  };
  ASSERT_OK(Open());
  std::vector<size_t> segments_at_start;
  for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
    segments_at_start.push_back(test::ListSegmentFiles(options_.data_dir, shard).size());
  }
  uint64_t written_bytes = 0;
  for (int kill = 0; kill < kKills; ++kill) {
    // A round that ends in a machine crash writes nothing, so its Sync finds
    // nothing new to sync: what the kills before it left unsynced must have
    // been synced by the opens after them.
    const bool machine_crash = kill % 8 == 7;
    for (int op = 0; op < (machine_crash ? 0 : 8); ++op) {
      const std::string key = KeyName(random.Uniform(kKeys));
      Life& life = model[key];
      const bool visible = !life.values.empty() && (life.expiry_unix_ms == 0 ||
                                                    life.expiry_unix_ms > clock_.NowUnixMs());
      if (!visible) life = Life{};  // an expired key starts a new life
      if (random.Percent(15)) {
        absl::Status status = engine_->Delete(key).status();
        ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
        life = Life{};
        written_bytes += 64 + key.size();
        continue;
      }
      const std::string value = absl::StrCat(key, "@", kill, ".", op);
      WriteOptions write;
      if (random.Percent(20)) write.ttl_ms = 1 + static_cast<int64_t>(random.Uniform(3000));
      ASSERT_OK(engine_->Put(key, value, write));
      life.values.push_back(value);
      life.expiry_unix_ms = write.ttl_ms == 0 ? 0 : clock_.NowUnixMs() + write.ttl_ms;
      life.expiries.push_back(life.expiry_unix_ms);
      written_bytes += 64 + key.size() + value.size();
    }
    clock_.AdvanceMs(1000);
    ASSERT_NO_FATAL_FAILURE(check(absl::StrCat("kill ", kill, ", before")));
    if (machine_crash) {
      ASSERT_OK(engine_->Sync());
      ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/kill % 16 == 15));
      if (kill == 23) test::RemoveAllHintFiles(options_.data_dir);
    } else {
      // A kill: whatever was written is in the page cache, synced or not.
      fs_.SetActive(false);
      engine_.reset();
      fs_.SetActive(true);
    }
    ASSERT_OK(Open());
    for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
      ASSERT_EQ(test::ListSegmentFiles(options_.data_dir, shard).size(), segments_at_start[shard])
          << "shard " << shard << " after kill " << kill;
    }
    ASSERT_NO_FATAL_FAILURE(check(absl::StrCat("kill ", kill, ", after")));
  }
  // Every write fitted in the segments the store started with.
  ASSERT_LT(written_bytes, options_.segment_bytes / 2) << "the test must not fill a segment";
  EXPECT_EQ(engine_->GetStats().segments,
            std::accumulate(segments_at_start.begin(), segments_at_start.end(), uint64_t{0}));
}

// A restart after a kill serves what the killed process wrote, synced or
// not, so the open must make it durable first. Here the newest segment
// cannot be continued (a file system that cannot reopen files): it stays
// sealed, a new segment is started, and a machine crash follows.
TEST_F(CrashTest, AMachineCrashAfterAKillKeepsWhatTheRestartServedWithoutAContinuedSegment) {
  options_.fsync = FsyncPolicy::kNever;
  fs_.SetReopenUnsupported(true);
  constexpr int kKeys = 40;
  ASSERT_OK(Open());
  const std::vector<std::string> segments_before = test::ListSegmentFiles(options_.data_dir, 0);
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), absl::StrCat("v", i)));
  // A kill: the writes are in the page cache only.
  fs_.SetActive(false);
  engine_.reset();
  fs_.SetActive(true);
  ASSERT_OK(Open());
  ASSERT_GT(test::ListSegmentFiles(options_.data_dir, 0).size(), segments_before.size())
      << "the newest segment was continued: this test needs a new one";
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(GetOrStatus(engine_.get(), KeyName(i)), absl::StrCat("v", i)) << KeyName(i);
  }
  ASSERT_OK(engine_->Sync());
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), absl::StrCat("v", i)) << KeyName(i);
  }
}

// The same, with the open's sync failing: the open fails and leaves the
// directory as it was (no new segment after the unsynced one, no hint
// claiming it was synced), so the next open syncs it. A kill, then a clean
// close, between the two opens must not change that.
TEST_F(CrashTest, AFailedSyncOfTheNewestSegmentFailsTheOpenAndTheNextOpenSyncsIt) {
  options_.fsync = FsyncPolicy::kNever;
  fs_.SetReopenUnsupported(true);
  constexpr int kKeys = 40;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), absl::StrCat("v", i)));
  fs_.SetActive(false);  // a kill
  engine_.reset();
  fs_.SetActive(true);
  const std::vector<std::string> segments = test::ListSegmentFiles(options_.data_dir, 0);

  fs_.SetSyncFileFails(true);
  absl::Status failed = Open();
  EXPECT_FALSE(failed.ok());
  EXPECT_TRUE(absl::StrContains(failed.message(), "injected")) << failed;
  EXPECT_TRUE(absl::StrContains(failed.message(), "check the disk")) << failed;
  EXPECT_EQ(test::ListSegmentFiles(options_.data_dir, 0), segments);
  fs_.SetSyncFileFails(false);

  // The next open, then a clean close and another open (which finds hint
  // files), then a machine crash: nothing the killed process wrote is lost.
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK(Open());
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), absl::StrCat("v", i)) << KeyName(i);
  }
}

TEST_F(CrashTest, NeverRecoversAPrefixOfEachShardsWrites) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.fsync = FsyncPolicy::kNever;
  constexpr int kKeys = 60;

  // The state every shard was known to be in, and the writes acknowledged
  // since (nullopt = delete).
  using State = std::map<std::string, std::string>;
  using Operation = std::pair<std::string, std::optional<std::string>>;
  std::map<uint32_t, State> known;
  std::map<uint32_t, std::vector<Operation>> since;
  std::map<std::string, std::set<std::string>> ever_written;

  for (int round = 0; round <= 5; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    ASSERT_OK(Open());
    std::map<uint32_t, State> recovered;
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = KeyName(i);
      const std::string value = GetOrStatus(engine_.get(), key);
      if (value == "NOT_FOUND") continue;
      EXPECT_EQ(ever_written[key].count(value), 1u)
          << key << " has a value that was never written: " << value;
      recovered[engine_->ShardOf(key)][key] = value;
    }
    // Each shard's log is one sequence: what survives must be the known state
    // plus some prefix of the writes after it, with no holes.
    for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
      State state = known[shard];
      bool matched = state == recovered[shard];
      for (const auto& [key, value] : since[shard]) {
        if (matched) break;
        if (value.has_value()) {
          state[key] = *value;
        } else {
          state.erase(key);
        }
        matched = state == recovered[shard];
      }
      EXPECT_TRUE(matched) << "shard " << shard
                           << " recovered a state that no prefix of its writes produces";
      known[shard] = recovered[shard];
      since[shard].clear();
    }
    if (round == 5) break;

    const uint64_t operations = 100 + random.Uniform(200);
    for (uint64_t op = 0; op < operations; ++op) {
      const std::string key = KeyName(random.Uniform(kKeys));
      const uint32_t shard = engine_->ShardOf(key);
      const uint64_t dice = random.Uniform(100);
      if (dice < 70) {
        const std::string value =
            absl::StrCat(key, "@", round, ".", op, ":", random.Bytes(random.Uniform(1500)));
        ASSERT_OK(engine_->Put(key, value));
        ever_written[key].insert(value);
        since[shard].emplace_back(key, value);
      } else if (dice < 90) {
        absl::Status status = engine_->Delete(key).status();
        ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
        since[shard].emplace_back(key, std::nullopt);
      } else if (dice < 96) {
        ASSERT_OK(engine_->Sync());
      } else {
        ASSERT_OK(engine_->CompactNow(/*force=*/random.Percent(50)));
      }
    }
    ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  }
}

TEST_F(CrashTest, SyncMakesEarlierWritesDurableUnderNever) {
  options_.fsync = FsyncPolicy::kNever;
  ASSERT_OK(Open());
  for (int i = 0; i < 50; ++i) ASSERT_OK(engine_->Put(KeyName(i), "synced"));
  ASSERT_OK(engine_->Sync());
  for (int i = 50; i < 60; ++i) ASSERT_OK(engine_->Put(KeyName(i), "maybe lost"));
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  ASSERT_OK(Open());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), "synced");
}

// Under kInterval the sync thread starts the write-back of every 4 MiB
// appended, without waiting for the interval (here an hour): left to the
// interval's fdatasync, a second of appends is written back at once, and
// that burst of the kernel's work stalls the writers. One write-back a
// 4 MiB, not one an append; and write-back makes nothing durable.
TEST_F(CrashTest, IntervalStartsTheWritebackAsAppendsGrowAndMakesNothingDurable) {
  options_.fsync = FsyncPolicy::kInterval;
  options_.fsync_interval_ms = 3'600'000;
  options_.background_threads = true;
  options_.shard_count = 1;
  options_.segment_bytes = 64 << 20;  // no roll, whose seal syncs
  ASSERT_OK(Open());
  fs_.ResetCounters();  // the open synced its new segment's header
  const std::string value(4096, 'v');
  constexpr int kPutsPerStep = 1100;  // a little over 4 MiB in records of 4 KiB
  int written = 0;
  for (uint64_t step = 1; step <= 3; ++step) {
    for (int i = 0; i < kPutsPerStep; ++i) ASSERT_OK(engine_->Put(KeyName(written++), value));
    for (int wait = 0; wait < 3000 && fs_.writeback_count() < step; ++wait) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    ASSERT_GE(fs_.writeback_count(), step);
  }
  EXPECT_EQ(fs_.writeback_count(), 3u);
  EXPECT_EQ(fs_.sync_count(), 0u);
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  ASSERT_OK(Open());
  EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(0)), "NOT_FOUND");
}

// The interval's fdatasync comes on time while write-back requests keep
// arriving (one every 4 MiB, more often than the interval here).
TEST_F(CrashTest, IntervalSyncsWhileWritebackRequestsKeepArriving) {
  options_.fsync = FsyncPolicy::kInterval;
  options_.fsync_interval_ms = 50;
  options_.background_threads = true;
  options_.shard_count = 1;
  options_.segment_bytes = 64 << 20;  // no roll, whose seal syncs
  ASSERT_OK(Open());
  fs_.ResetCounters();  // the open synced its new segment's header
  const std::string value(4096, 'v');
  constexpr int kPuts = 14'000;  // under 64 MiB
  for (int i = 0; i < kPuts && fs_.sync_count() < 2; ++i) {
    ASSERT_OK(engine_->Put(KeyName(i), value));
    if (i % 100 == 99) absl::SleepFor(absl::Milliseconds(1));  // a request every 10+ ms
  }
  EXPECT_GE(fs_.sync_count(), 2u);
  EXPECT_GE(fs_.writeback_count(), 1u);
}

// The open applies records in log order while a shard's tables are small
// and in the order of their slots once they pass recovery_sort_min_slots,
// here part way through a scan of the segments (sized from the records of
// the first one, the tables pass it as they grow): every key comes back
// with its newest value. Then from their hint files, which size the tables
// right away: in log order (the pipeline's records point into the buffer
// each hint file reuses) and sorted from the start.
TEST_F(CrashTest, AnOpenThatTurnsToTheSlotOrderPartWayKeepsEveryKey) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.recovery_sort_min_slots = 8192;
  options_.versions_kept = 3;
  options_.shard_count = 1;
  ASSERT_OK(Open());
  constexpr int kKeys = 12'000;
  std::map<std::string, std::string> oracle;
  for (int i = 0; i < 40'000; ++i) {
    const std::string key = KeyName(random.Uniform(kKeys));
    if (random.Percent(85)) {
      const std::string value = absl::StrCat("v", i);
      ASSERT_OK(engine_->Put(key, value));
      oracle[key] = value;
    } else {
      absl::Status status = engine_->Delete(key).status();
      ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
      oracle.erase(key);
    }
  }
  ASSERT_OK(engine_->Sync());
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  struct Round {
    const char* how;
    uint64_t min_slots;
  };
  for (const Round& round :
       {Round{"scanned", 8192}, Round{"from hint files, in log order", UINT64_MAX},
        Round{"from hint files, sorted", 8192}}) {
    SCOPED_TRACE(round.how);
    options_.recovery_sort_min_slots = round.min_slots;
    ASSERT_OK(Open());
    const Stats stats = engine_->GetStats();
    EXPECT_EQ(stats.recovered_by_scan > 0, round.how[0] == 's');
    for (int i = 0; i < kKeys; ++i) {
      auto it = oracle.find(KeyName(i));
      ASSERT_EQ(GetOrStatus(engine_.get(), KeyName(i)),
                it == oracle.end() ? "NOT_FOUND" : it->second)
          << KeyName(i);
    }
    ASSERT_OK(engine_->Close());  // writes the hint files
    engine_.reset();
  }
}

// The open sizes the index from what the hint files say the index held
// when they were written, not from the records: a store whose keys were
// each written four times makes room for about as many entries as it has
// keys. The summary it reads is not verified, so a damaged count can make
// it reserve no more than there are records.
TEST_F(CrashTest, TheOpenMakesRoomForTheKeysTheHintFilesCountNotForEveryRecord) {
  options_.shard_count = 1;
  options_.versions_kept = 1;
  options_.segment_bytes = 64 << 10;
  ASSERT_OK(Open());
  constexpr uint64_t kKeys = 3000;
  constexpr int kRounds = 4;
  for (int round = 0; round < kRounds; ++round) {
    for (uint64_t i = 0; i < kKeys; ++i) {
      ASSERT_OK(engine_->Put(KeyName(static_cast<int>(i)), absl::StrCat("round", round)));
    }
  }
  ASSERT_OK(engine_->Close());  // a hint file for every segment
  engine_.reset();
  auto expect_every_key = [&] {
    for (uint64_t i = 0; i < kKeys; ++i) {
      ASSERT_EQ(GetOrStatus(engine_.get(), KeyName(static_cast<int>(i))),
                absl::StrCat("round", kRounds - 1));
    }
  };

  ASSERT_OK(Open());
  Stats stats = engine_->GetStats();
  EXPECT_GT(stats.recovered_from_hints, 3u);
  EXPECT_EQ(stats.recovered_by_scan, 0u);
  EXPECT_EQ(stats.recovery_reserved_entries, kKeys);
  ASSERT_NO_FATAL_FAILURE(expect_every_key());
  ASSERT_OK(engine_->Close());
  engine_.reset();

  // Every hint file claims 2^60 entries in the index, and then 2^60 of its
  // own too (each fails its checksum, so each segment is scanned): the
  // open reserves for the records at most, then for what the segments'
  // sizes can hold at most.
  const std::vector<std::string> hints = test::ListHintFiles(options_.data_dir, 0);
  ASSERT_GT(hints.size(), 3u);
  uint64_t segment_bytes = 0;
  for (const std::string& path : test::ListSegmentFiles(options_.data_dir, 0)) {
    segment_bytes += test::FileSizeOf(path);
  }
  const uint64_t claimed = uint64_t{1} << 60;
  for (const bool entry_count_too : {false, true}) {
    SCOPED_TRACE(entry_count_too ? "index and entry counts damaged" : "index count damaged");
    for (const std::string& path : test::ListHintFiles(options_.data_dir, 0)) {
      std::string bytes = test::ReadFileBytes(path);
      ASSERT_GT(bytes.size(), sizeof(format::HintHeader) + sizeof(claimed));
      std::memcpy(bytes.data() + sizeof(format::HintHeader), &claimed, sizeof(claimed));
      if (entry_count_too) {
        std::memcpy(bytes.data() + offsetof(format::HintHeader, entry_count), &claimed,
                    sizeof(claimed));
      }
      test::WriteFileBytes(path, bytes);
    }
    ASSERT_OK(Open());
    stats = engine_->GetStats();
    EXPECT_EQ(stats.recovered_from_hints, 0u);
    EXPECT_GE(stats.recovery_reserved_entries, kKeys);
    EXPECT_LE(stats.recovery_reserved_entries,
              entry_count_too ? segment_bytes / format::RecordBytes(1, 0) : kKeys * kRounds + 100);
    ASSERT_NO_FATAL_FAILURE(expect_every_key());
    // Closed without a write: the hint files are written again, whole.
    ASSERT_OK(engine_->Close());
    engine_.reset();
  }
}

TEST_F(CrashTest, WriteErrorsAreReportedAndAcknowledgedWritesSurvive) {
  options_.fsync = FsyncPolicy::kAlways;
  options_.background_threads = true;
  ASSERT_OK(Open());
  for (int i = 0; i < 20; ++i) ASSERT_OK(engine_->Put(KeyName(i), "acknowledged"));
  fs_.FailWritesAfter(0);
  absl::Status failed = engine_->Put(KeyName(20), "refused").status();
  EXPECT_FALSE(failed.ok()) << "a write whose append or sync failed must not be acknowledged";
  EXPECT_GT(fs_.injected_failures(), 0u);
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  fs_.ClearFailures();

  ASSERT_OK(Open());
  for (int i = 0; i < 20; ++i) EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), "acknowledged");
  const std::string unacknowledged = GetOrStatus(engine_.get(), KeyName(20));
  EXPECT_TRUE(unacknowledged == "NOT_FOUND" || unacknowledged == "refused") << unacknowledged;
  EXPECT_OK(engine_->Put(KeyName(21), "after recovery"));
}

// ---- A full disk -----------------------------------------------------------------------------
// A segment is reserved in full (fallocate) when it is created, so a full
// disk shows when a shard rolls to a new segment. The write is refused with
// NoSpace; nothing is left on disk for it, however often it is retried, and
// the shard takes writes again once there is space.

class DiskFullTest : public CrashTest {
 protected:
  void SetUp() override {
    CrashTest::SetUp();
    options_.shard_count = 1;
  }

  // Small writes until one is refused (a roll on the full disk); their keys
  // are in *written. REQUIRES: the disk is full.
  void WriteUntilRefused(std::vector<std::string>* written, absl::Status* refused) {
    const std::string value(1000, 'v');
    for (int i = 0; i < 1000; ++i) {
      const std::string key = KeyName(written->size());
      absl::Status status = engine_->Put(key, value).status();
      if (!status.ok()) {
        *refused = status;
        return;
      }
      written->push_back(key);
    }
    FAIL() << "1000 writes of 1000 bytes fit in one 64 KiB segment";
  }

  // REQUIRES: the disk is full and the store open with segment 1 alone.
  // Writes are refused (and leave no segment behind) until space is freed;
  // then "other" is written.
  void ExpectWritesRefusedUntilSpaceIsFreed() {
    EXPECT_TRUE(IsNoSpace(engine_->WriteHealth())) << engine_->WriteHealth();
    absl::Status refused = engine_->Put("other", "value").status();
    EXPECT_TRUE(IsNoSpace(refused)) << refused;
    EXPECT_EQ(SegmentNames(), std::vector<std::string>{"000000000001.log"});
    fs_.SetDiskFull(false);
    ASSERT_OK(engine_->Put("other", "value"));
  }

  std::vector<std::string> SegmentNames() const {
    std::vector<std::string> names;
    for (const std::string& path : test::ListSegmentFiles(options_.data_dir, 0)) {
      names.push_back(BaseName(path));
    }
    return names;
  }
};

TEST_F(DiskFullTest, ARefusedRollLeavesNoFileAndTakesNoSegmentId) {
  ASSERT_OK(Open());
  const std::vector<std::string> before = SegmentNames();
  ASSERT_EQ(before, std::vector<std::string>{"000000000001.log"});
  fs_.SetDiskFull(true);
  std::vector<std::string> written;
  absl::Status refused;
  ASSERT_NO_FATAL_FAILURE(WriteUntilRefused(&written, &refused));
  EXPECT_TRUE(IsNoSpace(refused)) << refused;
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "000000000002.log")) << refused;
  for (int attempt = 0; attempt < 50; ++attempt) {
    absl::Status status = engine_->Put("refused", "value").status();
    ASSERT_TRUE(IsNoSpace(status)) << "attempt " << attempt << ": " << status;
  }
  EXPECT_EQ(SegmentNames(), before) << "a refused write leaves nothing behind";
  EXPECT_TRUE(IsNoSpace(engine_->WriteHealth())) << engine_->WriteHealth();
  EXPECT_EQ(engine_->GetStats().shards_refusing_writes, 1u);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "until space is freed")) << log_.Dump();
  for (const std::string& key : written) {
    EXPECT_EQ(GetOrStatus(engine_.get(), key), std::string(1000, 'v')) << key;
  }

  // Space is freed: the next write rolls into segment 2, not 52.
  fs_.SetDiskFull(false);
  ASSERT_OK(engine_->Put("after", "space was freed"));
  EXPECT_OK(engine_->WriteHealth());
  EXPECT_EQ(engine_->GetStats().shards_refusing_writes, 0u);
  EXPECT_EQ(SegmentNames(), (std::vector<std::string>{"000000000001.log", "000000000002.log"}));
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK(Open());
  for (const std::string& key : written) {
    EXPECT_EQ(GetOrStatus(engine_.get(), key), std::string(1000, 'v')) << key;
  }
  EXPECT_EQ(GetOrStatus(engine_.get(), "after"), "space was freed");
  EXPECT_EQ(GetOrStatus(engine_.get(), "refused"), "NOT_FOUND");
}

// Any failure while a segment is created, not only a full disk: the header
// cannot be written. The file must go, or the next start-up finds a segment
// too short for its header.
TEST_F(DiskFullTest, ASegmentWhoseHeaderCannotBeWrittenIsRemoved) {
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("small", "value"));
  // A value larger than a segment rolls at once. The sealing sync of the
  // old segment succeeds; the header append of the new one fails.
  const std::string large(options_.segment_bytes + 1, 'x');
  fs_.FailWritesAfter(1);
  absl::Status status = engine_->Put("large", large).status();
  fs_.ClearFailures();
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "injected")) << status;
  EXPECT_EQ(SegmentNames(), std::vector<std::string>{"000000000001.log"});
  EXPECT_FALSE(IsNoSpace(status)) << "an I/O error is no full disk: " << status;
  EXPECT_OK(engine_->WriteHealth());

  ASSERT_OK(engine_->Put("large", large));
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK(Open());
  EXPECT_EQ(GetOrStatus(engine_.get(), "small"), "value");
  EXPECT_EQ(GetOrStatus(engine_.get(), "large"), large);
}

// A store on a full disk still opens and serves reads; writes are refused
// until space is freed.
TEST_F(DiskFullTest, OpenOnAFullDiskServesReads) {
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("key", "value"));
  ASSERT_OK(engine_->Close());
  engine_.reset();

  fs_.SetDiskFull(true);
  ASSERT_OK(Open());
  EXPECT_EQ(GetOrStatus(engine_.get(), "key"), "value");
  ASSERT_NO_FATAL_FAILURE(ExpectWritesRefusedUntilSpaceIsFreed());
  EXPECT_OK(engine_->WriteHealth());
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK(Open());
  EXPECT_EQ(GetOrStatus(engine_.get(), "key"), "value");
  EXPECT_EQ(GetOrStatus(engine_.get(), "other"), "value");
}

// After a kill the open continues the newest segment, which reserves its
// full size again: on a full disk that fails, and so does a new segment.
// The store opens anyway and serves what the killed process wrote, synced at
// open (a machine crash later keeps it); writes are refused until space is
// freed, and go to a new segment then.
TEST_F(DiskFullTest, AKilledStoreOpensOnAFullDiskAndKeepsWhatItServes) {
  options_.fsync = FsyncPolicy::kNever;
  ASSERT_OK(Open());
  for (int i = 0; i < 10; ++i) ASSERT_OK(engine_->Put(KeyName(i), "before the kill"));
  fs_.SetActive(false);  // a kill: the writes are in the page cache only
  engine_.reset();
  fs_.SetActive(true);

  fs_.SetDiskFull(true);
  ASSERT_OK(Open());
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "cannot continue")) << log_.Dump();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), "before the kill");
  ASSERT_NO_FATAL_FAILURE(ExpectWritesRefusedUntilSpaceIsFreed());
  EXPECT_EQ(SegmentNames(), (std::vector<std::string>{"000000000001.log", "000000000002.log"}));
  ASSERT_OK(engine_->Sync());
  ASSERT_NO_FATAL_FAILURE(Crash(/*lose_unsynced_directory_entries=*/false));
  ASSERT_OK(Open());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), "before the kill");
  EXPECT_EQ(GetOrStatus(engine_.get(), "other"), "value");
}

// The same on a real file system that fills up: a small tmpfs (needs the
// right to mount, so it is skipped elsewhere). posix_fallocate fails with
// ENOSPC there, after open(2) created the file.
class RealDiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mount_point_ = dir_.Subdir("tmpfs");
    ASSERT_EQ(::mkdir(mount_point_.c_str(), 0755), 0) << std::strerror(errno);
    if (::mount("tmpfs", mount_point_.c_str(), "tmpfs", 0, "size=1m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << ")";
    }
    mounted_ = true;
    options_ = TestOptions(mount_point_ + "/db", &clock_, &log_);
    options_.shard_count = 1;
  }

  void TearDown() override {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
    engine_.reset();
    if (mounted_) {
      EXPECT_EQ(::umount2(mount_point_.c_str(), MNT_DETACH), 0) << std::strerror(errno);
    }
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  LogCapture log_;
  std::string mount_point_;
  bool mounted_ = false;
  Options options_;
  std::unique_ptr<Engine> engine_;  // declared last: destroyed before what it uses
};

TEST_F(RealDiskFullTest, RefusedWritesLeaveNoEmptySegmentsAndTheStoreReopens) {
  // A filler that the test removes later, to free space.
  const std::string filler = mount_point_ + "/filler";
  test::WriteFileBytes(filler, std::string(256 << 10, 'f'));
  ASSERT_OK_AND_ASSIGN(engine_, Engine::Open(options_));
  const std::string value(4000, 'v');
  std::vector<std::string> written;
  absl::Status refused;
  for (int i = 0; i < 1000 && refused.ok(); ++i) {
    const std::string key = absl::StrCat("key-", i);
    refused = engine_->Put(key, value).status();
    if (refused.ok()) written.push_back(key);
  }
  ASSERT_FALSE(refused.ok()) << "4 MB do not fit in a 1 MiB tmpfs";
  EXPECT_TRUE(IsNoSpace(refused)) << refused;
  for (int attempt = 0; attempt < 100; ++attempt) {
    ASSERT_TRUE(IsNoSpace(engine_->Put("refused", value).status())) << attempt;
  }
  const std::vector<std::string> segments = test::ListSegmentFiles(options_.data_dir, 0);
  for (const std::string& segment : segments) {
    EXPECT_GE(test::FileSizeOf(segment), format::kSegmentHeaderBytes) << segment;
  }
  EXPECT_EQ(test::FileIdOf(segments.back()), segments.size()) << "no segment id was skipped";
  EXPECT_TRUE(IsNoSpace(engine_->WriteHealth()));

  ASSERT_EQ(::unlink(filler.c_str()), 0);
  ASSERT_OK(engine_->Put("after", value));
  EXPECT_OK(engine_->WriteHealth());
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK_AND_ASSIGN(engine_, Engine::Open(options_));
  for (const std::string& key : written) EXPECT_EQ(GetOrStatus(engine_.get(), key), value) << key;
  EXPECT_EQ(GetOrStatus(engine_.get(), "after"), value);
}

// ---- Corruption ---------------------------------------------------------------------------------

class CorruptionTest : public ::testing::Test {
 protected:
  static constexpr int kRecordsPerGeneration = 10;

  void SetUp() override {
    options_ = TestOptions(dir_.Subdir("db"), &clock_, &log_);
    options_.shard_count = 1;
  }

  void TearDown() override {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  absl::Status Open() {
    log_.Clear();
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(options_);
    if (!engine.ok()) return engine.status();
    engine_ = std::move(engine).value();
    return absl::OkStatus();
  }

  void Close() {
    ASSERT_OK(engine_->Close());
    engine_.reset();
  }

  static std::string KeyName(int i) { return absl::StrCat("key-", i); }
  // Values are 3 + 8k bytes so that with a 5-byte key ("key-N") the record
  // has no padding and every byte offset inside it is a real tear point.
  static std::string ValueFor(int i) {
    return absl::StrCat("v", i % 10, "-", std::string(8 * (i % 4), 'a' + i % 26));
  }

  // Writes `generations` groups of records, each in a fresh engine (so each in
  // its own segment), closes cleanly and, unless keep_hints, removes the hint
  // files so that recovery reads the segments.
  void Build(int generations, bool keep_hints) {
    int next = 0;
    for (int generation = 0; generation < generations; ++generation) {
      ASSERT_OK(Open());
      for (int i = 0; i < kRecordsPerGeneration; ++i, ++next) {
        ASSERT_OK(engine_->Put(KeyName(next), ValueFor(next)));
      }
      Close();
    }
    written_ = next;
    if (!keep_hints) test::RemoveAllHintFiles(options_.data_dir);
    segments_ = test::ListSegmentFiles(options_.data_dir, 0);
    ASSERT_GE(segments_.size(), static_cast<size_t>(generations));
  }

  // The segment holding key and the record of it there.
  void Locate(const std::string& key, std::string* path, ParsedRecord* record) {
    for (const std::string& candidate : segments_) {
      absl::StatusOr<ParsedSegment> parsed = ParseSegment(test::ReadFileBytes(candidate));
      ASSERT_OK(parsed) << candidate;
      for (const ParsedRecord& r : parsed->records) {
        if (r.key == key) {
          *path = candidate;
          *record = r;
          return;
        }
      }
    }
    FAIL() << key << " is in no segment";
  }

  // Every key written, except those in missing, has its value.
  void ExpectAllPresentExcept(const std::set<std::string>& missing) {
    for (int i = 0; i < written_; ++i) {
      const std::string key = KeyName(i);
      EXPECT_EQ(GetOrStatus(engine_.get(), key), missing.count(key) ? "NOT_FOUND" : ValueFor(i))
          << key;
    }
  }

  // Open must fail with DataLoss and name the damaged file.
  void ExpectDataLoss(const std::string& damaged_path, const std::string& also_named = "") {
    absl::Status status = Open();
    ASSERT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), BaseName(damaged_path)))
        << "the error should name the file: " << status;
    if (!also_named.empty()) {
      EXPECT_TRUE(absl::StrContains(status.message(), also_named))
          << "the error should name " << also_named << ": " << status;
    }
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  LogCapture log_;
  Options options_;
  int written_ = 0;
  std::vector<std::string> segments_;  // oldest first
  std::unique_ptr<Engine> engine_;     // declared last: destroyed before what it uses
};

// (a) A crash in the middle of the last append leaves part of a record. For
// every length of that part, recovery drops it, keeps everything before it,
// logs a warning and truncates the file so the next open is clean.
TEST_F(CorruptionTest, TornTailAtEveryByteOfTheLastRecord) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/false));
  const std::string newest = segments_.back();
  absl::StatusOr<ParsedSegment> parsed = ParseSegment(test::ReadFileBytes(newest));
  ASSERT_OK(parsed);
  ASSERT_EQ(parsed->records.size(), static_cast<size_t>(kRecordsPerGeneration));
  const ParsedRecord last = parsed->records.back();
  ASSERT_EQ(last.key, KeyName(written_ - 1));
  ASSERT_EQ(last.payload_bytes, last.record_bytes) << "the last record must have no padding";
  const std::string original = test::ReadFileBytes(newest);
  const std::string pristine = dir_.Subdir("pristine");
  test::CopyDirectory(options_.data_dir, pristine);

  for (uint64_t cut = last.offset; cut < last.offset + last.record_bytes; ++cut) {
    const uint64_t torn_bytes = cut - last.offset;
    SCOPED_TRACE(absl::StrCat("segment cut at ", cut, " (", torn_bytes, " bytes of the record)"));
    test::CopyDirectory(pristine, options_.data_dir);
    test::TruncateFileTo(newest, cut);

    ASSERT_OK(Open());
    ExpectAllPresentExcept({last.key});
    const Stats stats = engine_->GetStats();
    // A torn part that happens to be all zero bytes looks like unwritten
    // space, and the engine may treat it so.
    const bool torn_part_is_zero = original.find_first_not_of('\0', last.offset) >= cut;
    if (!torn_part_is_zero) {
      EXPECT_EQ(stats.torn_bytes_truncated, torn_bytes);
      EXPECT_TRUE(log_.Contains(LogLevel::kWarning, BaseName(newest)))
          << "a torn tail is logged with its file; log:\n"
          << log_.Dump();
    }
    if (torn_bytes == 0) {
      EXPECT_EQ(stats.torn_bytes_truncated, 0u);
    }
    Close();

    // The tear was cut off the file for good: the next open finds nothing
    // torn (and would find corruption if the segment were no longer newest).
    ASSERT_OK(Open());
    ExpectAllPresentExcept({last.key});
    EXPECT_EQ(engine_->GetStats().torn_bytes_truncated, 0u);
    Close();
    // One failing cut explains the rest; stop before the log fills up.
    if (HasFailure()) return;
  }
}

// A preallocated segment that was never trimmed (the machine died with the
// file at its full capacity) ends in zeros: that is unwritten space.
TEST_F(CorruptionTest, ZeroFilledTailIsUnwrittenSpace) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/false));
  const std::string newest = segments_.back();
  test::TruncateFileTo(newest, test::FileSizeOf(newest) + 8192);
  ASSERT_OK(Open());
  ExpectAllPresentExcept({});
  Close();
  ASSERT_OK(Open());
  ExpectAllPresentExcept({});
}

// After a crash the active segment's file has its full capacity, mostly a
// hole; start-up reads only what the file system holds data for, and still
// sees bytes that follow a hole.
void AppendAfterHole(const std::string& path, uint64_t hole_bytes, absl::string_view bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  const off_t at = static_cast<off_t>(test::FileSizeOf(path) + hole_bytes);
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), at), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

TEST_F(CorruptionTest, AHoleAtTheEndIsUnwrittenSpace) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/false));
  const std::string newest = segments_.back();
  const uint64_t size = test::FileSizeOf(newest);
  test::TruncateFileTo(newest, size + (8 << 20));
  ASSERT_OK(Open());
  ExpectAllPresentExcept({});
  EXPECT_EQ(engine_->GetStats().torn_bytes_truncated, 0u);
  Close();
  EXPECT_LT(test::FileSizeOf(newest), size + 4096) << "the unwritten space was trimmed";
}

TEST_F(CorruptionTest, BytesAfterAHoleInTheNewestSegmentAreATornTail) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/false));
  const std::string newest = segments_.back();
  const uint64_t size = test::FileSizeOf(newest);
  ASSERT_NO_FATAL_FAILURE(AppendAfterHole(newest, 3 << 20, "garbage"));
  ASSERT_OK(Open());
  ExpectAllPresentExcept({});
  EXPECT_EQ(engine_->GetStats().torn_bytes_truncated, (3u << 20) + 7);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, BaseName(newest))) << log_.Dump();
  Close();
  EXPECT_LT(test::FileSizeOf(newest), size + 4096);
}

TEST_F(CorruptionTest, BytesAfterAHoleInAnOlderSegmentAreDataLoss) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/2, /*keep_hints=*/false));
  const std::string older = segments_.front();
  ASSERT_NO_FATAL_FAILURE(AppendAfterHole(older, 3 << 20, "garbage"));
  ASSERT_NO_FATAL_FAILURE(ExpectDataLoss(older));
}

// A block of the newest segment a crash left unwritten (the segment's space
// is allocated at its creation, so a later block can reach the disk before
// an earlier one, which then reads as zeros): the records from the first one
// it damaged on were written after it and never synced, and go with it, the
// valid ones after it too; the shard keeps a prefix of its writes. In an
// older segment (synced whole before the next was begun) it is damage, and
// so is a block of anything but zeros in the newest. Repair keeps every
// record that verifies, those after the block too.
TEST_F(CorruptionTest, AnUnwrittenBlockInTheNewestSegmentEndsItsRecords) {
  struct Case {
    const char* name;  // and the data directory's
    bool newest;
    char fill;
    bool repair;
  };
  for (const Case& c : {Case{"zeros-in-the-newest-segment", true, '\0', false},
                        Case{"zeros-in-an-older-segment", false, '\0', false},
                        Case{"garbage-in-the-newest-segment", true, '\x5a', false},
                        Case{"zeros-in-the-newest-segment-repaired", true, '\0', true}}) {
    SCOPED_TRACE(c.name);
    const bool newest = c.newest;
    options_.data_dir = dir_.Subdir(c.name);
    options_.repair = false;
    // About 26 records a block: the segments span a dozen blocks.
    int next = 0;
    for (int generation = 0; generation < 2; ++generation) {
      ASSERT_OK(Open());
      for (int i = 0; i < 300; ++i, ++next) {
        ASSERT_OK(engine_->Put(KeyName(next), std::string(140, static_cast<char>('a' + next % 26))));
      }
      Close();
    }
    test::RemoveAllHintFiles(options_.data_dir);
    segments_ = test::ListSegmentFiles(options_.data_dir, 0);
    ASSERT_EQ(segments_.size(), 2u);
    const std::string path = newest ? segments_.back() : segments_.front();
    std::string bytes = test::ReadFileBytes(path);
    absl::StatusOr<ParsedSegment> parsed = ParseSegment(bytes);
    ASSERT_OK(parsed);
    constexpr uint64_t kBlock = 4096;
    const uint64_t hole = 5 * kBlock;
    ASSERT_GT(parsed->data_end, hole + 2 * kBlock) << "records must follow the hole";
    std::fill(bytes.begin() + hole, bytes.begin() + hole + kBlock, c.fill);
    test::WriteFileBytes(path, bytes);
    // As a crash leaves it: the segment's preallocated space after its data.
    constexpr uint64_t kPreallocated = 8 << 20;
    test::TruncateFileTo(path, bytes.size() + kPreallocated);
    if (!newest || c.fill != '\0') {
      ASSERT_NO_FATAL_FAILURE(ExpectDataLoss(path));
      continue;
    }
    std::set<std::string> lost;
    uint64_t first_damaged = 0;
    for (const ParsedRecord& record : parsed->records) {
      if (record.offset + record.record_bytes <= hole) continue;
      if (c.repair && record.offset >= hole + kBlock) continue;
      if (first_damaged == 0) first_damaged = record.offset;
      lost.insert(record.key);
    }
    ASSERT_GT(lost.size(), c.repair ? 20u : 26u);
    // Every key has its value, but those lost.
    auto expect_all_but_lost = [&] {
      for (int i = 0; i < next; ++i) {
        const std::string key = KeyName(i);
        EXPECT_EQ(GetOrStatus(engine_.get(), key),
                  lost.contains(key) ? "NOT_FOUND"
                                     : std::string(140, static_cast<char>('a' + i % 26)))
            << key;
      }
    };
    options_.repair = c.repair;
    ASSERT_OK(Open());
    if (c.repair) {
      EXPECT_EQ(engine_->GetStats().torn_bytes_truncated, 0u);
      EXPECT_GT(engine_->GetStats().repaired_bytes_skipped, kBlock);
      expect_all_but_lost();
      Close();
      continue;
    }
    EXPECT_EQ(engine_->GetStats().torn_bytes_truncated,
              bytes.size() + kPreallocated - first_damaged);
    EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "unwritten")) << log_.Dump();
    // The bytes of data dropped: to the last record's last non-zero byte.
    const uint64_t data_dropped = bytes.find_last_not_of('\0') + 1 - first_damaged;
    EXPECT_TRUE(log_.Contains(LogLevel::kWarning,
                              absl::StrCat("dropped the ", data_dropped, " bytes of data")))
        << log_.Dump();
    expect_all_but_lost();
    // The next open finds the segment cut where the damage began.
    Close();
    EXPECT_EQ(test::FileSizeOf(path), first_damaged);
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().torn_bytes_truncated, 0u);
    Close();
  }
}

// A damaged record whose own value holds blocks of zeros, the record after
// it intact, is damage: no block a crash left unwritten took a record's
// start, and the records after it may have been synced.
TEST_F(CorruptionTest, ADamagedRecordHoldingZerosInTheNewestSegmentIsDataLoss) {
  ASSERT_OK(Open());
  for (int i = 0; i < 20; ++i) ASSERT_OK(engine_->Put(KeyName(i), "before"));
  ASSERT_OK(engine_->Put("zeros", std::string(16 << 10, '\0')));
  for (int i = 20; i < 40; ++i) ASSERT_OK(engine_->Put(KeyName(i), "after"));
  Close();
  test::RemoveAllHintFiles(options_.data_dir);
  segments_ = test::ListSegmentFiles(options_.data_dir, 0);
  std::string path;
  ParsedRecord record;
  ASSERT_NO_FATAL_FAILURE(Locate("zeros", &path, &record));
  ASSERT_EQ(path, segments_.back());
  std::string bytes = test::ReadFileBytes(path);
  bytes[record.offset + format::kRecordHeaderBytes] ^= 0x01;  // its key
  test::WriteFileBytes(path, bytes);
  ASSERT_NO_FATAL_FAILURE(ExpectDataLoss(path, std::to_string(record.offset)));
}

TEST(PosixFileSystemTest, NextDataSkipsHoles) {
  test::ScopedTempDir dir;
  FileSystem* fs = DefaultFileSystem();
  const std::string path = dir.Subdir("file");
  ASSERT_OK(fs->WriteFile(path, std::string(4096, 'a'), /*sync=*/false));
  ASSERT_NO_FATAL_FAILURE(AppendAfterHole(path, (1 << 20) - 4096, std::string(4096, 'b')));
  test::TruncateFileTo(path, 4 << 20);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ReadableFile> file, fs->NewReadableFile(path));
  uint64_t begin;
  uint64_t end;
  file->NextData(0, &begin, &end);
  EXPECT_EQ(begin, 0u);
  EXPECT_GE(end, 4096u);
  // A file system without SEEK_HOLE reports everything as data; ext4, xfs,
  // btrfs and tmpfs report the holes.
  if (end < (1u << 20)) {
    file->NextData(end, &begin, &end);
    EXPECT_EQ(begin, 1u << 20);
    EXPECT_GE(end, (1u << 20) + 4096);
    if (end < (4u << 20)) {
      file->NextData(end, &begin, &end);
      EXPECT_EQ(begin, file->Size()) << "only a hole follows";
    }
  }
  file->NextData(5 << 20, &begin, &end);
  EXPECT_EQ(begin, file->Size());
  EXPECT_EQ(end, file->Size());
}

// The VmFlags line of the mapping that holds address, from /proc/self/smaps
// ("" if none holds it).
// The line of /proc/self/smaps that starts with `name`, of the mapping
// that holds address ("" if none).
std::string SmapsLineOf(const void* address, absl::string_view name) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    const std::string first = line.substr(0, line.find(' '));
    const std::vector<absl::string_view> range = absl::StrSplit(first, absl::MaxSplits('-', 1));
    uint64_t begin = 0;
    uint64_t end = 0;
    if (range.size() == 2 && absl::SimpleHexAtoi(range[0], &begin) &&
        absl::SimpleHexAtoi(range[1], &end)) {
      inside = begin <= at && at < end;  // a mapping's first line
      continue;
    }
    if (inside && absl::StartsWith(line, name)) return line;
  }
  return "";
}

std::string VmFlagsOf(const void* address) { return SmapsLineOf(address, "VmFlags:"); }

// A segment's writable mapping has no read-ahead (madvise MADV_RANDOM, "rr"
// in its VmFlags): with it, an append's fault on a reserved page zeroed the
// whole read-ahead window on the writer's thread (docs/performance.md).
// Created and reopened alike.
TEST(PosixFileSystemTest, WritableMappingsHaveNoReadAhead) {
  test::ScopedTempDir dir;
  FileSystem* fs = DefaultFileSystem();
  const std::string path = dir.Subdir("segment");
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file, fs->NewWritableFile(path, 1 << 20));
    ASSERT_OK(file->Append("record"));
    ASSERT_OK_AND_ASSIGN(absl::string_view mapped, file->Read(0, 6, nullptr));
    const std::string flags = VmFlagsOf(mapped.data());
    ASSERT_FALSE(flags.empty()) << "no mapping holds the file's bytes";
    EXPECT_TRUE(absl::StrContains(flags, " rr")) << flags;
    ASSERT_OK(file->Close());
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file, fs->ReopenWritableFile(path, 2 << 20));
  ASSERT_OK_AND_ASSIGN(absl::string_view mapped, file->Read(0, 6, nullptr));
  EXPECT_EQ(mapped, "record");
  const std::string flags = VmFlagsOf(mapped.data());
  EXPECT_TRUE(absl::StrContains(flags, " rr")) << flags;
  ASSERT_OK(file->Close());
}

// How many of the whole pages in [from, to) of this process's memory have a
// page table entry (/proc/self/pagemap, bit 63: present).
uint64_t PagesInPageTables(const char* from, const char* to) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << std::strerror(errno);  // the test skips without it
  uint64_t present = 0;
  for (const char* at = from; at < to; at += page) {
    uint64_t entry = 0;
    const off_t offset = static_cast<off_t>(reinterpret_cast<uintptr_t>(at) / page * 8);
    EXPECT_EQ(::pread(fd, &entry, sizeof(entry), offset), static_cast<ssize_t>(sizeof(entry)))
        << "pagemap unreadable at " << static_cast<const void*>(at) << ": " << std::strerror(errno);
    present += entry >> 63;
  }
  if (fd >= 0) ::close(fd);
  return present;
}

// Before the appended pages are written back (a write-back started, or a
// sync) they leave the process's page tables, so that writing them back
// does not write-protect them one page at a time, each with a TLB flush on
// every core the process runs on. The page being filled stays; the pages
// read back are as appended, and so is the file.
TEST(PosixFileSystemTest, AppendedPagesLeaveThePageTablesBeforeTheirWriteback) {
  if (::access("/proc/self/pagemap", R_OK) != 0) GTEST_SKIP() << "no /proc/self/pagemap";
  test::ScopedTempDir dir;
  FileSystem* fs = DefaultFileSystem();
  const std::string path = dir.Subdir("segment");
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<WritableFile> file, fs->NewWritableFile(path, 64 << 20));
  const std::string record(page * 5 / 2, 'r');  // so that a page is always being filled
  std::string expected;
  ASSERT_OK_AND_ASSIGN(absl::string_view mapped, file->Read(0, 1, nullptr));
  const char* const base = mapped.data();
  uint64_t written_back = 0;  // whole pages below it were taken out
  for (const bool by_sync : {false, true, false}) {
    SCOPED_TRACE(by_sync ? "sync" : "write-back started");
    while (file->Size() < written_back + (256 << 10)) {
      ASSERT_OK(file->Append(record));
      expected += record;
    }
    if (file->Size() % page == 0) {
      ASSERT_OK(file->Append("+"));
      expected += "+";
    }
    const uint64_t whole = file->Size() / page * page;
    // A file mapped with huge pages (tmpfs mounted huge=) leaves the page
    // tables 2 MiB at a time, the page being filled with the rest.
    for (const char* field : {"FilePmdMapped:", "ShmemPmdMapped:"}) {
      const std::string line = SmapsLineOf(base, field);
      if (!line.empty() && !absl::StrContains(line, " 0 kB")) GTEST_SKIP() << line;
    }
    ASSERT_EQ(PagesInPageTables(base + written_back, base + whole + page),
              (whole + page - written_back) / page)
        << "the appends went through the mapping";
    if (by_sync) {
      ASSERT_OK(file->Sync());
    } else {
      file->StartWriteback();
    }
    EXPECT_EQ(PagesInPageTables(base + written_back, base + whole), 0u);
    EXPECT_EQ(PagesInPageTables(base + whole, base + whole + page), 1u)
        << "the page being filled stays";
    written_back = whole;
  }
  ASSERT_OK_AND_ASSIGN(absl::string_view all, file->Read(0, file->Size(), nullptr));
  EXPECT_EQ(all, expected);
  ASSERT_OK(file->Close());
  EXPECT_EQ(test::ReadFileBytes(path), expected);
  // Reopened (a restart continues the newest segment): the same.
  ASSERT_OK_AND_ASSIGN(file, fs->ReopenWritableFile(path, 64 << 20));
  const uint64_t reopened_at = file->Size() / page * page;
  for (int i = 0; i < 100; ++i) {
    ASSERT_OK(file->Append(record));
    expected += record;
  }
  ASSERT_OK_AND_ASSIGN(mapped, file->Read(0, 1, nullptr));
  const uint64_t whole = (file->Size() - 1) / page * page;
  file->StartWriteback();
  EXPECT_EQ(PagesInPageTables(mapped.data() + reopened_at, mapped.data() + whole), 0u);
  ASSERT_OK(file->Sync());
  ASSERT_OK(file->Close());
  EXPECT_EQ(test::ReadFileBytes(path), expected);
}

// A segment is created, preallocated, and only then given its header: a
// crash (or, before it was handled, a full disk) in between leaves a newest
// segment without a header. It never held a record; start-up removes it with
// a warning instead of refusing to open.
TEST_F(CorruptionTest, HeaderlessNewestSegmentsAreTornCreations) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/false));
  const uint64_t newest_id = test::FileIdOf(segments_.back());
  const std::string pristine = dir_.Subdir("pristine");
  test::CopyDirectory(options_.data_dir, pristine);
  const struct {
    const char* name;
    std::vector<std::string> contents;  // of segments newest_id + 1, + 2, ...
  } cases[] = {
      {"empty", {""}},
      {"shorter than a header", {std::string(20, '\0')}},
      {"preallocated, header never written", {std::string(64 << 10, '\0')}},
      {"a run left by refused writes", {"", "", ""}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    test::CopyDirectory(pristine, options_.data_dir);
    std::vector<std::string> paths;
    for (size_t i = 0; i < c.contents.size(); ++i) {
      paths.push_back(absl::StrFormat("%s/%012u.log", test::ShardDir(options_.data_dir, 0),
                                      newest_id + 1 + i));
      test::WriteFileBytes(paths.back(), c.contents[i]);
    }
    ASSERT_OK(Open());
    ExpectAllPresentExcept({});
    EXPECT_EQ(engine_->GetStats().torn_segments_removed, c.contents.size());
    for (const std::string& path : paths) {
      EXPECT_TRUE(log_.Contains(LogLevel::kWarning, BaseName(path))) << log_.Dump();
    }
    ASSERT_OK(engine_->Put("after", "value"));
    Close();
    ASSERT_OK(Open());
    ExpectAllPresentExcept({});
    EXPECT_EQ(GetOrStatus(engine_.get(), "after"), "value");
    EXPECT_EQ(engine_->GetStats().torn_segments_removed, 0u);
    Close();
    if (HasFailure()) return;
  }
}

// A zero header followed by data is no torn creation but damage, and a
// header-less segment with a newer one after it is not the newest.
TEST_F(CorruptionTest, HeaderlessSegmentsThatMayHoldDataAreDataLoss) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/false));
  const uint64_t newest_id = test::FileIdOf(segments_.back());
  const std::string zero_header =
      absl::StrFormat("%s/%012u.log", test::ShardDir(options_.data_dir, 0), newest_id + 1);
  test::WriteFileBytes(zero_header, std::string(format::kSegmentHeaderBytes, '\0') + "data");
  ExpectDataLoss(zero_header);

  test::WriteFileBytes(zero_header, "");
  const std::string newer =
      absl::StrFormat("%s/%012u.log", test::ShardDir(options_.data_dir, 0), newest_id + 2);
  test::WriteFileBytes(newer, test::ReadFileBytes(segments_.back()));
  ExpectDataLoss(zero_header);
}

// Recovery from hint files does not read the records, so damage inside a
// record shows when it is read. A scan leaves the record out and counts it
// rather than failing every page over it; a Get of its key is DataLoss.
TEST_F(CorruptionTest, ScanSkipsAnUnreadableRecordAndGetIsDataLoss) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/1, /*keep_hints=*/true));
  std::string path;
  ParsedRecord record;
  const std::string damaged_key = KeyName(4);
  ASSERT_NO_FATAL_FAILURE(Locate(damaged_key, &path, &record));
  std::string bytes = test::ReadFileBytes(path);
  bytes[record.offset + format::kRecordHeaderBytes + record.header.key_size] ^= 0x40;
  test::WriteFileBytes(path, bytes);

  ASSERT_OK(Open());
  ASSERT_GT(engine_->GetStats().recovered_from_hints, 0u);
  EXPECT_EQ(engine_->Get(damaged_key).status().code(), absl::StatusCode::kDataLoss);
  for (const uint32_t limit : {1u, 3u, 1000u}) {
    SCOPED_TRACE(absl::StrCat("page limit ", limit));
    ScanOptions scan;
    scan.limit = limit;
    absl::StatusOr<std::vector<ScanItem>> items = test::ScanAll(engine_.get(), scan);
    ASSERT_OK(items);
    std::vector<std::string> keys;
    for (const ScanItem& item : *items) keys.push_back(item.key);
    EXPECT_EQ(keys.size(), static_cast<size_t>(written_ - 1));
    EXPECT_EQ(std::count(keys.begin(), keys.end(), damaged_key), 0);
  }
  EXPECT_EQ(engine_->GetStats().unreadable_records_skipped, 3u);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, BaseName(path))) << log_.Dump();
  // Keys only: the index alone answers, the damaged key included.
  ScanOptions keys_only;
  keys_only.keys_only = true;
  absl::StatusOr<std::vector<ScanItem>> listed = test::ScanAll(engine_.get(), keys_only);
  ASSERT_OK(listed);
  EXPECT_EQ(listed->size(), static_cast<size_t>(written_));
}

// Damage to one record in the middle of a segment, with valid records after
// it: in the newest segment (where a careless reader would take it for a torn
// tail and silently drop what follows) and in an older one.
class MidSegmentCorruptionTest : public CorruptionTest, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    CorruptionTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/2, /*keep_hints=*/false));
    // The fifth record of its generation: four valid records before, five after.
    target_key_ = KeyName(in_newest() ? kRecordsPerGeneration + 4 : 4);
    ASSERT_NO_FATAL_FAILURE(Locate(target_key_, &path_, &record_));
    ASSERT_EQ(path_ == segments_.back(), in_newest()) << path_;
    bytes_ = test::ReadFileBytes(path_);
  }

  bool in_newest() const { return GetParam(); }

  std::string target_key_;
  std::string path_;
  ParsedRecord record_;
  std::string bytes_;  // the damaged segment, to modify and write back
};

// (b) A bad checksum is refused with its location; repair skips the record,
// keeps the rest and rewrites the segment so a normal open succeeds after.
TEST_P(MidSegmentCorruptionTest, BadChecksumIsDataLossUnlessRepairing) {
  bytes_[record_.offset + format::kRecordHeaderBytes + record_.header.key_size] ^= 0x40;
  test::WriteFileBytes(path_, bytes_);
  ExpectDataLoss(path_, std::to_string(record_.offset));

  options_.repair = true;
  ASSERT_OK(Open());
  ExpectAllPresentExcept({target_key_});
  EXPECT_GE(engine_->GetStats().repaired_bytes_skipped, record_.record_bytes);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, BaseName(path_)))
      << "repair says what it skipped and where; log:\n"
      << log_.Dump();
  const Stats stats = engine_->GetStats();
  EXPECT_EQ(stats.repaired_segments, 1u);
  EXPECT_EQ(stats.repaired_segments_set_aside, 0u);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning,
                            absl::StrCat("repair done: ", stats.repaired_bytes_skipped,
                                         " unreadable bytes dropped from 1 segment(s)")))
      << "repair ends with what it dropped in all; log:\n"
      << log_.Dump();
  Close();

  options_.repair = false;
  ASSERT_OK(Open()) << "repair rewrote the damaged segment";
  ExpectAllPresentExcept({target_key_});
  EXPECT_EQ(engine_->GetStats().repaired_bytes_skipped, 0u);
}

// (c) A length no writer could have produced (beyond the 512 MiB ceiling) is
// corruption even though the record it announces would run past the end of
// the file like a torn one.
TEST_P(MidSegmentCorruptionTest, ImpossibleValueSizeIsDataLoss) {
  const uint32_t huge = 0xFFFFFFF0u;
  std::memcpy(bytes_.data() + record_.offset + offsetof(format::RecordHeader, value_size), &huge,
              sizeof(huge));
  test::WriteFileBytes(path_, bytes_);
  ExpectDataLoss(path_, std::to_string(record_.offset));
}

// (c) An empty key is never written, so a key size of 0 is corruption.
TEST_P(MidSegmentCorruptionTest, ZeroKeySizeIsDataLoss) {
  const uint16_t zero = 0;
  std::memcpy(bytes_.data() + record_.offset + offsetof(format::RecordHeader, key_size), &zero,
              sizeof(zero));
  test::WriteFileBytes(path_, bytes_);
  ExpectDataLoss(path_, std::to_string(record_.offset));
}

// (d) A record of a type this version does not know, with a valid checksum (a
// newer writer, or a bug): refused, naming the type, never skipped silently.
TEST_P(MidSegmentCorruptionTest, UnknownRecordTypeWithValidChecksumIsDataLoss) {
  bytes_[record_.offset + offsetof(format::RecordHeader, type)] = 7;
  RewriteChecksum(&bytes_, record_.offset, record_.payload_bytes);
  test::WriteFileBytes(path_, bytes_);
  absl::Status status = Open();
  ASSERT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), BaseName(path_))) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), std::to_string(record_.offset))) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "type") &&
              absl::StrContains(status.message(), "7"))
      << "the error should name the unknown type: " << status;
}

// An unknown flag bit is refused the same way (log_format.h: kKnownRecordFlags).
TEST_P(MidSegmentCorruptionTest, UnknownRecordFlagWithValidChecksumIsDataLoss) {
  bytes_[record_.offset + offsetof(format::RecordHeader, flags)] = 0x80;
  RewriteChecksum(&bytes_, record_.offset, record_.payload_bytes);
  test::WriteFileBytes(path_, bytes_);
  ExpectDataLoss(path_, std::to_string(record_.offset));
}

INSTANTIATE_TEST_SUITE_P(NewestAndOlderSegment, MidSegmentCorruptionTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "InNewestSegment" : "InOlderSegment";
                         });

// (e) Hint files only speed recovery up: a damaged one is ignored (with a
// warning) and its segment scanned instead.
class HintCorruptionTest : public CorruptionTest {
 protected:
  void SetUp() override {
    CorruptionTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/2, /*keep_hints=*/true));
    hints_ = test::ListHintFiles(options_.data_dir, 0);
    ASSERT_GE(hints_.size(), 2u) << "Close writes a hint file per segment";
  }

  void ExpectRecoveredByScanning(const std::string& damaged_hint) {
    ASSERT_OK(Open());
    ExpectAllPresentExcept({});
    const Stats stats = engine_->GetStats();
    EXPECT_GT(stats.recovered_by_scan, 0u);
    EXPECT_GT(stats.recovered_from_hints, 0u) << "the undamaged hint file is still used";
    EXPECT_TRUE(log_.Contains(LogLevel::kWarning, BaseName(damaged_hint)))
        << "a damaged hint file is logged; log:\n"
        << log_.Dump();
  }

  std::vector<std::string> hints_;
};

TEST_F(HintCorruptionTest, TruncatedHintFileFallsBackToScanning) {
  const std::string hint = hints_.front();
  test::TruncateFileTo(hint, test::FileSizeOf(hint) / 2);
  ExpectRecoveredByScanning(hint);
}

TEST_F(HintCorruptionTest, HintFileWithABadChecksumFallsBackToScanning) {
  const std::string hint = hints_.front();
  std::string bytes = test::ReadFileBytes(hint);
  ASSERT_GT(bytes.size(), sizeof(format::HintHeader) + format::kHintTrailerBytes);
  // A key byte of the first entry: only the trailer checksum can tell.
  bytes[sizeof(format::HintHeader) + sizeof(format::HintEntry)] ^= 0x01;
  test::WriteFileBytes(hint, bytes);
  ExpectRecoveredByScanning(hint);
}

// (f) A segment whose header is damaged cannot be trusted at all.
TEST_F(CorruptionTest, BadSegmentMagicIsDataLoss) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/2, /*keep_hints=*/false));
  const std::string older = segments_.front();
  std::string bytes = test::ReadFileBytes(older);
  bytes[0] = 'X';
  test::WriteFileBytes(older, bytes);
  ExpectDataLoss(older);
}

TEST_F(CorruptionTest, BadSegmentHeaderChecksumIsDataLoss) {
  ASSERT_NO_FATAL_FAILURE(Build(/*generations=*/2, /*keep_hints=*/false));
  const std::string older = segments_.front();
  std::string bytes = test::ReadFileBytes(older);
  bytes[offsetof(format::SegmentHeader, created_unix_ms)] ^= 0x01;
  test::WriteFileBytes(older, bytes);
  ExpectDataLoss(older);
}

}  // namespace
}  // namespace logkv::engine
