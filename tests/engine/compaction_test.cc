// Compaction's space bound and small steps: segments under the per-segment
// dead fraction are rewritten while the log exceeds compaction_space_amp
// times its live bytes; runs are small steps; writers running meanwhile lose
// nothing; a crash at any file-system step of a compaction loses no
// acknowledged write. Hint files are compressed, and those of the earlier
// format still serve a restart. No test here looks at the clock.
#include <sys/stat.h>
#include <xxhash.h>
#include <zstd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/numbers.h"
#include "engine/engine.h"
#include "engine/file_system.h"
#include "engine/log_format.h"
#include "engine/segment.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/fault_injection_file_system.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::FaultInjectionFileSystem;
using test::GetOrStatus;
using test::Random;

std::string KeyName(uint64_t i) { return absl::StrFormat("key-%05d", i); }

std::string ValueOf(uint64_t key, uint64_t round) {
  return absl::StrCat(KeyName(key), "@", round, ":", std::string(180 + key % 40, 'v'));
}

double SpaceAmp(const Stats& stats) {
  const uint64_t live = stats.log_bytes - std::min(stats.log_bytes, stats.dead_bytes);
  return live == 0 ? 0 : static_cast<double>(stats.log_bytes) / static_cast<double>(live);
}

using CompactionTest = test::EngineFixture<>;

// Writes kKeys keys, then overwrites every third one: each older segment ends
// up about a third dead, under compaction_dead_fraction (0.5), so only the
// space bound makes them candidates.
void WriteAThirdDead(Engine* engine, int keys) {
  for (int i = 0; i < keys; ++i) ASSERT_OK(engine->Put(KeyName(i), ValueOf(i, 0)));
  for (int i = 0; i < keys; i += 3) ASSERT_OK(engine->Put(KeyName(i), ValueOf(i, 1)));
}

TEST_F(CompactionTest, PerSegmentTriggersAloneLeaveAThirdDead) {
  options_.compaction_space_amp = 0;  // off: the triggers as they were
  ASSERT_OK(Open());
  ASSERT_NO_FATAL_FAILURE(WriteAThirdDead(engine_.get(), 3000));
  const double before = SpaceAmp(engine_->GetStats());
  ASSERT_GT(before, 1.3) << "the setup must exceed the bound";
  ASSERT_OK(engine_->CompactNow(/*force=*/false));
  EXPECT_EQ(engine_->GetStats().compactions, 0u);
  EXPECT_DOUBLE_EQ(SpaceAmp(engine_->GetStats()), before);
}

TEST_F(CompactionTest, SpaceBoundRewritesSegmentsUnderTheDeadFraction) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  constexpr int kKeys = 3000;
  ASSERT_NO_FATAL_FAILURE(WriteAThirdDead(engine_.get(), kKeys));
  const Stats before = engine_->GetStats();
  ASSERT_GT(SpaceAmp(before), 1.3);
  ASSERT_OK(engine_->CompactNow(/*force=*/false));
  const Stats after = engine_->GetStats();
  // The active segment's dead bytes cannot be reclaimed until it rolls: the
  // bound holds for the rest.
  const uint64_t live = after.log_bytes - after.dead_bytes;
  EXPECT_LE(static_cast<double>(after.log_bytes),
            options_.compaction_space_amp * static_cast<double>(live) +
                static_cast<double>(options_.segment_bytes))
      << "log " << after.log_bytes << " live " << live;
  EXPECT_LT(after.log_bytes, before.log_bytes);
  // Small steps: about one segment of live data per run, so several runs.
  EXPECT_GE(after.compactions, 2u);
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), ValueOf(i, i % 3 == 0 ? 1 : 0));
  }
  ASSERT_OK(Reopen());
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), ValueOf(i, i % 3 == 0 ? 1 : 0));
  }
}

// Segments barely dead (under compaction_min_dead_fraction) are not worth a
// rewrite even over the bound.
TEST_F(CompactionTest, SpaceBoundLeavesSegmentsWithLittleGarbage) {
  options_.compaction_space_amp = 1.01;
  options_.compaction_min_dead_fraction = 0.9;
  ASSERT_OK(Open());
  ASSERT_NO_FATAL_FAILURE(WriteAThirdDead(engine_.get(), 3000));
  ASSERT_OK(engine_->CompactNow(/*force=*/false));
  EXPECT_EQ(engine_->GetStats().compactions, 0u);
}

// The active segment reserves disk blocks a few MiB ahead of its data, not
// up to double it.
TEST_F(CompactionTest, ActiveSegmentReservesLittleAheadOfItsData) {
  options_.shard_count = 1;
  options_.segment_bytes = 64 << 20;
  ASSERT_OK(Open());
  const std::string value(1000, 'v');
  // 33 MiB: a doubling reservation would have reached 64 MiB.
  for (int i = 0; i < 33 * 1024; ++i) ASSERT_OK(engine_->Put(KeyName(i), value));
  struct stat st;
  const std::string path = options_.data_dir + "/shard-000/000000000001.log";
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
  const uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
  const uint64_t data = engine_->GetStats().log_bytes;
  EXPECT_GE(allocated, data);
  EXPECT_LE(allocated, data + (5u << 20)) << "allocated " << allocated << " data " << data;
}

// Writers (with older versions kept) and back-to-back compactions under the
// space bound: every key ends with its last write, and every kept version
// stays readable, before and after a reopen.
TEST_F(CompactionTest, WritersAndSpaceBoundCompactionsAgree) {
  options_.versions_kept = 3;
  ASSERT_OK(Open());
  constexpr int kWriters = 3;
  constexpr int kKeysPerWriter = 60;
  constexpr int kRounds = 40;
  std::atomic<int> writers_running{kWriters};
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < kRounds && !failed; ++round) {
        for (int k = 0; k < kKeysPerWriter; ++k) {
          const uint64_t key = static_cast<uint64_t>(w * kKeysPerWriter + k);
          if (absl::Status status = engine_->Put(KeyName(key), ValueOf(key, round)).status();
              !status.ok()) {
            ADD_FAILURE() << status;
            failed = true;
          }
        }
      }
      --writers_running;
    });
  }
  int compactions = 0;
  while (writers_running > 0 && !failed) {
    ASSERT_OK(engine_->CompactNow(/*force=*/false));
    ++compactions;
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_FALSE(failed.load());
  EXPECT_GT(compactions, 0);
  ASSERT_OK(engine_->CompactNow(/*force=*/false));

  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    for (uint64_t key = 0; key < kWriters * kKeysPerWriter; ++key) {
      EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(key)), ValueOf(key, kRounds - 1));
      for (uint64_t version = kRounds - 2; version <= kRounds; ++version) {
        absl::StatusOr<Record> record = engine_->GetVersion(KeyName(key), version);
        ASSERT_OK(record.status()) << KeyName(key) << " version " << version;
        EXPECT_EQ(record->value, ValueOf(key, version - 1));
      }
    }
  };
  check("after the run");
  EXPECT_LE(SpaceAmp(engine_->GetStats()),
            options_.compaction_space_amp + 2.0 * static_cast<double>(options_.segment_bytes) /
                                                static_cast<double>(engine_->GetStats().log_bytes));
  ASSERT_OK(Reopen());
  check("after reopen");
}

// Hint files hold their entries zstd-compressed (versions 2 and 3, which
// puts the index's entry count before them); the files of version 1 (entries
// as they are, from earlier builds) still serve a restart.
TEST_F(CompactionTest, HintFilesAreCompressedAndVersionOneStillServes) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  constexpr int kKeys = 2000;
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), ValueOf(i, 0)));
  ASSERT_OK(engine_->Close());  // writes a hint file for every segment
  engine_.reset();
  const std::vector<std::string> hints = test::ListHintFiles(options_.data_dir, 0);
  ASSERT_GE(hints.size(), 2u);
  for (const std::string& hint : hints) {
    SCOPED_TRACE(hint);
    const std::string bytes = test::ReadFileBytes(hint);
    ASSERT_GT(bytes.size(), sizeof(format::HintHeader) + format::kHintTrailerBytes);
    format::HintHeader header;
    std::memcpy(&header, bytes.data(), sizeof(header));
    EXPECT_EQ(header.format_version, format::kHintFormatVersion);
    const size_t prefix = sizeof(header) + format::kHintIndexEntriesBytes;
    uint64_t index_entries;
    std::memcpy(&index_entries, bytes.data() + sizeof(header), sizeof(index_entries));
    EXPECT_EQ(index_entries, static_cast<uint64_t>(kKeys));
    const absl::string_view stored =
        absl::string_view(bytes).substr(prefix, bytes.size() - prefix - format::kHintTrailerBytes);
    const unsigned long long plain_bytes = ZSTD_getFrameContentSize(stored.data(), stored.size());
    ASSERT_NE(plain_bytes, ZSTD_CONTENTSIZE_ERROR);
    ASSERT_NE(plain_bytes, ZSTD_CONTENTSIZE_UNKNOWN);
    EXPECT_GE(plain_bytes, header.entry_count * (sizeof(format::HintEntry) + 9));
    EXPECT_LT(stored.size() * 3, plain_bytes) << "compressed to under a third";
    // The same entries as version 1 wrote them.
    std::string plain(plain_bytes, '\0');
    ASSERT_EQ(ZSTD_decompress(plain.data(), plain.size(), stored.data(), stored.size()),
              plain_bytes);
    header.format_version = format::kFormatVersion;
    std::string version1(reinterpret_cast<const char*>(&header), sizeof(header));
    version1 += plain;
    const uint64_t checksum = XXH3_64bits(version1.data(), version1.size());
    version1.append(reinterpret_cast<const char*>(&checksum), sizeof(checksum));
    test::WriteFileBytes(hint, version1);
  }
  ASSERT_OK(Open());
  const Stats stats = engine_->GetStats();
  EXPECT_EQ(stats.recovered_from_hints, hints.size());
  EXPECT_EQ(stats.recovered_by_scan, 0u);
  EXPECT_FALSE(log_.Contains(LogLevel::kWarning, "hint")) << log_.Dump();
  for (int i = 0; i < kKeys; ++i) EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(i)), ValueOf(i, 0));
}

// A file system that "loses power" (FaultInjectionFileSystem::SetActive
// false) just before its n-th durable step: creating a file, a sync, a whole
// file write, a rename, a removal, a truncation or a directory sync.
class PowerCutFileSystem final : public FileSystem {
 public:
  explicit PowerCutFileSystem(FaultInjectionFileSystem* base) : base_(base) {}

  // n < 0: never.
  void CutBeforeStep(int n) { steps_left_ = n; }
  bool cut() const { return cut_; }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                uint64_t capacity) override {
    Step();
    auto file = base_->NewWritableFile(path, capacity);
    if (!file.ok()) return file.status();
    return std::unique_ptr<WritableFile>(new File(this, *std::move(file)));
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> NewReadableFile(const std::string& path) override {
    return base_->NewReadableFile(path);
  }
  absl::Status WriteFile(const std::string& path, absl::string_view data, bool sync) override {
    Step();
    return base_->WriteFile(path, data, sync);
  }
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    return base_->ReadFile(path);
  }
  absl::Status CreateDir(const std::string& path) override { return base_->CreateDir(path); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    return base_->ListDir(path);
  }
  absl::Status RemoveFile(const std::string& path) override {
    Step();
    return base_->RemoveFile(path);
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    Step();
    return base_->RenameFile(from, to);
  }
  absl::Status TruncateFile(const std::string& path, uint64_t size) override {
    Step();
    return base_->TruncateFile(path, size);
  }
  absl::StatusOr<uint64_t> FileSize(const std::string& path) override {
    return base_->FileSize(path);
  }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  absl::Status SyncDir(const std::string& path) override {
    Step();
    return base_->SyncDir(path);
  }
  absl::Status SyncFile(const std::string& path) override {
    Step();
    return base_->SyncFile(path);
  }
  absl::StatusOr<std::unique_ptr<Lock>> LockFile(const std::string& path) override {
    return base_->LockFile(path);
  }

 private:
  class File final : public WritableFile {
   public:
    File(PowerCutFileSystem* fs, std::unique_ptr<WritableFile> base)
        : fs_(fs), base_(std::move(base)) {}
    absl::Status Append(absl::string_view data) override { return base_->Append(data); }
    absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n,
                                           char* scratch) const override {
      return base_->Read(offset, n, scratch);
    }
    absl::Status Sync() override {
      fs_->Step();
      return base_->Sync();
    }
    void StartWriteback() override { base_->StartWriteback(); }
    void Prepare(uint64_t bytes) override { base_->Prepare(bytes); }
    absl::Status Close() override { return base_->Close(); }
    uint64_t Size() const override { return base_->Size(); }
    uint64_t Capacity() const override { return base_->Capacity(); }

   private:
    PowerCutFileSystem* const fs_;
    std::unique_ptr<WritableFile> base_;
  };

  void Step() {
    if (steps_left_ < 0 || cut_) return;
    if (steps_left_-- == 0) {
      cut_ = true;
      base_->SetActive(false);
    }
  }

  FaultInjectionFileSystem* const base_;
  // Single-threaded use (the tests below run no background threads).
  int steps_left_ = -1;
  bool cut_ = false;
};

// Power is cut before each durable step of a compaction in turn (its outputs,
// their syncs, renames and hints, the directory syncs, the removals of the
// old segments): the reopened store has every write acknowledged before it,
// current value, kept versions and deletions alike. With
// lose_unsynced_directory_entries the cut also loses every directory entry
// no SyncDir made durable (a new or renamed file).
class CompactionCrashTest : public ::testing::TestWithParam<bool> {};

TEST_P(CompactionCrashTest, APowerCutAtAnyStepLosesNoAcknowledgedWrite) {
  const bool lose_unsynced_directory_entries = GetParam();
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  constexpr int kKeys = 200;
  bool cut_during_compaction = true;
  for (int step = 0; cut_during_compaction; ++step) {
    SCOPED_TRACE(absl::StrCat("power cut before step ", step, " of the compaction"));
    test::ScopedTempDir dir;
    test::ManualClock clock;
    test::LogCapture log;
    FaultInjectionFileSystem fault_fs(DefaultFileSystem());
    PowerCutFileSystem fs(&fault_fs);
    Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
    options.file_system = &fs;
    options.versions_kept = 2;
    options.tombstone_grace_ms = 0;

    Random random(seed);
    std::map<std::string, std::vector<std::string>> versions;  // the values, oldest first
    std::map<std::string, bool> ever_deleted;
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
      for (int round = 0; round < 6; ++round) {
        for (int i = 0; i < kKeys; ++i) {
          const std::string key = KeyName(i);
          if (random.Percent(10)) {
            absl::Status status = engine->Delete(key).status();
            ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
            if (status.ok()) {
              ever_deleted[key] = true;
              versions[key].clear();
            }
          } else if (round == 0 || random.Percent(60)) {
            const std::string value =
                absl::StrCat(key, "@", round, ":", random.Bytes(100 + random.Uniform(300)));
            ASSERT_OK(engine->Put(key, value));
            versions[key].push_back(value);
          }
        }
      }
      // Everything so far is acknowledged.
      ASSERT_OK(engine->Sync());
      fs.CutBeforeStep(step);
      // After the cut the compaction may fail (its files never reached the
      // disk): what counts is what the disk holds.
      const absl::Status status = engine->CompactNow(/*force=*/false);
      cut_during_compaction = fs.cut();
      if (!cut_during_compaction) {
        ASSERT_OK(status);
      }
      // The machine is gone: nothing more reaches the disk.
      fault_fs.SetActive(false);
    }
    ASSERT_OK(fault_fs.DropUnsyncedData());
    if (lose_unsynced_directory_entries) {
      ASSERT_OK(fault_fs.RemoveFilesCreatedAfterLastDirSync());
    }
    fault_fs.SetActive(true);
    fs.CutBeforeStep(-1);

    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = KeyName(i);
      const std::vector<std::string>& values = versions[key];
      if (values.empty()) {
        EXPECT_EQ(GetOrStatus(engine.get(), key), "NOT_FOUND") << key;
        continue;
      }
      EXPECT_EQ(GetOrStatus(engine.get(), key), values.back()) << key;
      if (values.size() >= 2 && !ever_deleted[key]) {
        // Never deleted: the n-th put is version n.
        absl::StatusOr<Record> older = engine->GetVersion(key, values.size() - 1);
        ASSERT_OK(older.status()) << key;
        EXPECT_EQ(older->value, values[values.size() - 2]) << key;
      }
    }
    ASSERT_OK(engine->Close());
    if (!cut_during_compaction) {
      EXPECT_GT(step, 3) << "the compaction took durable steps";
    }
  }
}

// Each of KeyName(0 .. keys - 1) reads as expected says (absent: NOT_FOUND).
void ExpectKeys(Engine* engine, int keys, const std::map<std::string, std::string>& expected) {
  for (int i = 0; i < keys; ++i) {
    const std::string key = KeyName(i);
    auto it = expected.find(key);
    ASSERT_EQ(GetOrStatus(engine, key), it == expected.end() ? "NOT_FOUND" : it->second) << key;
  }
}

// A compaction that stops part way (a write of its output fails: a full or
// failing disk) leaves the store as it was: the records it had already moved
// are read from the segments they came from again, so the next run (which
// removes those segments) and a restart (which removes the unfinished
// output) lose nothing. Each failure point in turn, from the first append.
TEST(CompactionFailureTest, ARunThatStopsPartWayLosesNothing) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  constexpr int kKeys = 300;
  bool failed = true;
  int stopped_runs = 0;
  for (int n = 0; failed; n += 7) {
    SCOPED_TRACE(absl::StrCat("writes fail after ", n, " more"));
    test::ScopedTempDir dir;
    test::ManualClock clock;
    test::LogCapture log;
    FaultInjectionFileSystem fs(DefaultFileSystem());
    Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
    options.file_system = &fs;
    options.versions_kept = 2;
    options.tombstone_grace_ms = 0;  // the run drops the tombstones it can
    options.shard_count = 1;  // one run: a failure stops it, not another shard's
    Random random(seed);
    std::map<std::string, std::vector<std::string>> versions;  // oldest first; empty: deleted
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
    for (int round = 0; round < 4; ++round) {
      for (int i = 0; i < kKeys; ++i) {
        const std::string key = KeyName(i);
        if (round == 2 && random.Percent(15)) {
          ASSERT_OK(engine->Delete(key).status());
          versions[key].clear();
          continue;
        }
        if (round > 0 && !random.Percent(40)) continue;
        const std::string value =
            absl::StrCat(key, "@", round, ":", random.Bytes(100 + random.Uniform(200)));
        ASSERT_OK(engine->Put(key, value));
        versions[key].push_back(value);
      }
    }
    ASSERT_OK(engine->Sync());
    // What a replica compares (the Merkle roots) and what compaction counts.
    auto summary = [&] {
      std::vector<uint64_t> roots;
      for (uint32_t p = 0; p < engine->MerklePartitionCount(); ++p) {
        roots.push_back(engine->MerkleNodeHash(p, 1));
      }
      const Stats stats = engine->GetStats();
      roots.push_back(stats.dead_bytes);
      roots.push_back(stats.log_bytes);
      return roots;
    };
    auto check = [&](const char* when) {
      SCOPED_TRACE(when);
      for (int i = 0; i < kKeys; ++i) {
        const std::string key = KeyName(i);
        const std::vector<std::string>& values = versions[key];
        if (values.empty()) {
          ASSERT_EQ(GetOrStatus(engine.get(), key), "NOT_FOUND") << key;
          continue;
        }
        ASSERT_EQ(GetOrStatus(engine.get(), key), values.back()) << key;
        if (values.size() >= 2) {
          absl::StatusOr<Record> older = engine->GetVersion(key, values.size() - 1);
          ASSERT_OK(older.status()) << key;
          EXPECT_EQ(older->value, values[values.size() - 2]) << key;
        }
      }
    };
    const std::vector<uint64_t> before = summary();
    fs.FailWritesAfter(n);
    const absl::Status status = engine->CompactNow(/*force=*/true);
    failed = !status.ok();
    fs.ClearFailures();
    if (failed) {
      ++stopped_runs;
      ASSERT_NO_FATAL_FAILURE(check("after the run that stopped"));
      // Undone: not a tombstone dropped, not a byte counted otherwise.
      EXPECT_EQ(summary(), before);
      // The next run removes the segments the first one copied from.
      ASSERT_OK(engine->CompactNow(/*force=*/true));
    }
    ASSERT_NO_FATAL_FAILURE(check("after a run that finished"));
    ASSERT_OK(engine->Close());
    ASSERT_OK_AND_ASSIGN(engine, Engine::Open(options));
    ASSERT_NO_FATAL_FAILURE(check("after a restart"));
    ASSERT_OK(engine->Close());
  }
  EXPECT_GT(stopped_runs, 3) << "runs stopped at several points";
}

// A file system whose removals of segment files fail while armed (a file a
// failing disk will not let go), over another; and which, when asked, calls
// a hook once in place of the next directory sync (what it returns is the
// sync's answer). A run's first directory sync comes after its outputs are
// written, synced and renamed, with no lock of the shard held.
class StubbornFileSystem final : public FileSystem {
 public:
  explicit StubbornFileSystem(FileSystem* base) : base_(base) {}
  void SetRemovalsFail(bool fail) { fail_ = fail; }
  void SetDirSyncHook(std::function<absl::Status()> hook) { hook_ = std::move(hook); }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                uint64_t capacity) override {
    return base_->NewWritableFile(path, capacity);
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> ReopenWritableFile(const std::string& path,
                                                                   uint64_t capacity) override {
    return base_->ReopenWritableFile(path, capacity);
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> NewReadableFile(const std::string& path) override {
    return base_->NewReadableFile(path);
  }
  absl::Status WriteFile(const std::string& path, absl::string_view data, bool sync) override {
    return base_->WriteFile(path, data, sync);
  }
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    return base_->ReadFile(path);
  }
  absl::Status CreateDir(const std::string& path) override { return base_->CreateDir(path); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    return base_->ListDir(path);
  }
  absl::Status RemoveFile(const std::string& path) override {
    if (fail_ && absl::EndsWith(path, ".log")) {
      return absl::InternalError(absl::StrCat("injected: cannot remove ", path));
    }
    return base_->RemoveFile(path);
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    return base_->RenameFile(from, to);
  }
  absl::Status TruncateFile(const std::string& path, uint64_t size) override {
    return base_->TruncateFile(path, size);
  }
  absl::StatusOr<uint64_t> FileSize(const std::string& path) override {
    return base_->FileSize(path);
  }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  absl::Status SyncDir(const std::string& path) override {
    if (hook_) {
      if (absl::Status status = std::exchange(hook_, nullptr)(); !status.ok()) return status;
    }
    return base_->SyncDir(path);
  }
  absl::Status SyncFile(const std::string& path) override { return base_->SyncFile(path); }
  absl::StatusOr<std::unique_ptr<Lock>> LockFile(const std::string& path) override {
    return base_->LockFile(path);
  }

 private:
  FileSystem* const base_;
  bool fail_ = false;
  std::function<absl::Status()> hook_;
};

// Writers go on while a run copies; when the run is undone, what they made
// dead in the meantime (the copies' bytes, by then) is counted dead in the
// victims: the undone store counts what a restart, reading every record
// again, counts. Here the writes come after the copy, before the directory
// sync that follows the outputs' renames, which then fails.
TEST(CompactionFailureTest, AnUndoneRunCountsWhatWritersChangedMeanwhile) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  constexpr int kKeys = 300;
  test::ScopedTempDir dir;
  test::ManualClock clock;
  test::LogCapture log;
  StubbornFileSystem fs(DefaultFileSystem());
  Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
  options.file_system = &fs;
  options.shard_count = 1;
  options.versions_kept = 2;
  Random random(seed);
  std::map<std::string, std::string> expected;  // absent: deleted
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kKeys; ++i) {
      if (round > 0 && !random.Percent(40)) continue;
      const std::string key = KeyName(i);
      expected[key] = absl::StrCat(key, "@", round, ":", random.Bytes(150));
      ASSERT_OK(engine->Put(key, expected[key]));
    }
  }
  ASSERT_OK(engine->Sync());
  fs.SetDirSyncHook([&]() -> absl::Status {
    // Overwrites (the copy of the current record and of the older version
    // kept become dead), deletes (the same, and the older versions go).
    for (int i = 0; i < kKeys; i += 3) {
      const std::string key = KeyName(i);
      if (i % 2 == 0) {
        expected[key] = absl::StrCat(key, "@meanwhile:", random.Bytes(150));
        if (absl::Status status = engine->Put(key, expected[key]).status(); !status.ok()) {
          return status;
        }
      } else {
        if (absl::Status status = engine->Delete(key).status(); !status.ok()) return status;
        expected.erase(key);
      }
    }
    return absl::InternalError("injected: the directory's sync fails");
  });
  ASSERT_FALSE(engine->CompactNow(/*force=*/true).ok());
  ASSERT_TRUE(log.Contains(LogLevel::kWarning, "undone")) << log.Dump();
  EXPECT_FALSE(log.Contains(LogLevel::kWarning, "(0 bytes of them counted dead)")) << log.Dump();
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    ExpectKeys(engine.get(), kKeys, expected);
  };
  ASSERT_NO_FATAL_FAILURE(check("after the undone run"));
  const Stats undone = engine->GetStats();
  ASSERT_OK(engine->Close());
  ASSERT_OK_AND_ASSIGN(engine, Engine::Open(options));
  ASSERT_NO_FATAL_FAILURE(check("after a restart"));
  const Stats restarted = engine->GetStats();
  EXPECT_EQ(undone.dead_bytes, restarted.dead_bytes);
  ASSERT_OK(engine->Close());
}

// A key deleted before a run, whose tombstone the run leaves behind, and
// written again while the run goes on keeps its new record: the run drops
// the entry only where it still points at the tombstone.
TEST(CompactionFailureTest, AKeyWrittenWhileTheRunGoesOnKeepsItsNewRecord) {
  constexpr int kKeys = 200;
  test::ScopedTempDir dir;
  test::ManualClock clock;
  test::LogCapture log;
  StubbornFileSystem fs(DefaultFileSystem());
  Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
  options.file_system = &fs;
  options.shard_count = 1;
  options.tombstone_grace_ms = 0;
  std::map<std::string, std::string> expected;  // absent: deleted
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = KeyName(i);
    expected[key] = absl::StrCat(key, ":", std::string(300, 'v'));
    ASSERT_OK(engine->Put(key, expected[key]));
  }
  for (int i = 0; i < kKeys; i += 2) {
    ASSERT_OK(engine->Delete(KeyName(i)).status());
    expected.erase(KeyName(i));
  }
  // Enough after them that the tombstones' segment is sealed.
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_OK(engine->Put(absl::StrCat("filler-", i), std::string(400, 'f')));
  }
  ASSERT_OK(engine->Sync());
  fs.SetDirSyncHook([&]() -> absl::Status {
    for (int i = 0; i < kKeys; i += 4) {
      const std::string key = KeyName(i);
      expected[key] = absl::StrCat(key, ":again");
      if (absl::Status status = engine->Put(key, expected[key]).status(); !status.ok()) {
        return status;
      }
    }
    return absl::OkStatus();
  });
  ASSERT_OK(engine->CompactNow(/*force=*/true));
  EXPECT_GT(engine->GetStats().tombstones_dropped, 0u);
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    ExpectKeys(engine.get(), kKeys, expected);
  };
  ASSERT_NO_FATAL_FAILURE(check("after the run"));
  ASSERT_OK(engine->Close());
  ASSERT_OK_AND_ASSIGN(engine, Engine::Open(options));
  ASSERT_NO_FATAL_FAILURE(check("after a restart"));
  ASSERT_OK(engine->Close());
}

// A segment file that will not be removed is neither forgotten nor relied
// on: an undone run's renamed output that stays on disk stays a segment (all
// of it dead, for a later run), and a finished run's victim that stays is
// named in the list, which the next run takes in rather than replaces, so
// every segment file on disk is either the shard's or listed for removal.
// A run stopped at each write in turn while no segment file can be removed.
TEST(CompactionFailureTest, FilesThatWillNotGoAreNeitherForgottenNorReliedOn) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  constexpr int kKeys = 300;
  bool write_failed = true;
  int outputs_kept = 0;   // runs undone whose renamed outputs stayed
  int victims_listed = 0;  // runs finished whose victims stayed, listed
  for (int n = 0; write_failed; ++n) {
    SCOPED_TRACE(absl::StrCat("writes fail after ", n, " more"));
    test::ScopedTempDir dir;
    test::ManualClock clock;
    test::LogCapture log;
    FaultInjectionFileSystem fault_fs(DefaultFileSystem());
    StubbornFileSystem fs(&fault_fs);
    Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
    options.file_system = &fs;
    options.shard_count = 1;
    options.tombstone_grace_ms = 0;
    Random random(seed);
    std::map<std::string, std::string> expected;  // absent: deleted
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
    for (int round = 0; round < 3; ++round) {
      for (int i = 0; i < kKeys; ++i) {
        const std::string key = KeyName(i);
        if (round == 2 && random.Percent(20)) {
          ASSERT_OK(engine->Delete(key).status());
          expected.erase(key);
        } else if (round == 0 || random.Percent(50)) {
          expected[key] = absl::StrCat(key, "@", round, ":", random.Bytes(150));
          ASSERT_OK(engine->Put(key, expected[key]));
        }
      }
    }
    ASSERT_OK(engine->Sync());
    const std::string shard_dir = dir.Subdir("db") + "/shard-000";
    // Every *.log on disk is a segment of the shard or named for removal.
    auto accounted = [&](const char* when) {
      SCOPED_TRACE(when);
      std::vector<uint32_t> listed;
      if (auto text = DefaultFileSystem()->ReadFile(shard_dir + "/REMOVING"); text.ok()) {
        std::vector<absl::string_view> lines = absl::StrSplit(*text, '\n');
        ASSERT_GE(lines.size(), 2u);
        for (absl::string_view word : absl::StrSplit(lines[1], ' ', absl::SkipEmpty())) {
          uint32_t id = 0;
          ASSERT_TRUE(absl::SimpleAtoi(word, &id)) << *text;
          listed.push_back(id);
        }
      }
      ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, DefaultFileSystem()->ListDir(shard_dir));
      uint64_t on_disk = 0;
      uint64_t listed_on_disk = 0;
      for (const std::string& name : names) {
        uint32_t id = 0;
        if (!ParseSegmentFileName(name, ".log", &id)) continue;
        ++on_disk;
        if (std::find(listed.begin(), listed.end(), id) != listed.end()) ++listed_on_disk;
      }
      EXPECT_EQ(on_disk, engine->GetStats().segments + listed_on_disk);
    };
    auto check = [&](const char* when) {
      SCOPED_TRACE(when);
      ExpectKeys(engine.get(), kKeys, expected);
    };
    fault_fs.FailWritesAfter(n);
    fs.SetRemovalsFail(true);
    EXPECT_FALSE(engine->CompactNow(/*force=*/true).ok()) << "nothing can be removed";
    write_failed = fault_fs.injected_failures() > 0;
    fault_fs.ClearFailures();
    fs.SetRemovalsFail(false);
    outputs_kept += log.Contains(LogLevel::kWarning, "kept whole") ? 1 : 0;
    victims_listed += DefaultFileSystem()->FileExists(shard_dir + "/REMOVING") ? 1 : 0;
    ASSERT_NO_FATAL_FAILURE(accounted("after the run that stopped"));
    ASSERT_NO_FATAL_FAILURE(check("after the run that stopped"));
    ASSERT_OK(engine->CompactNow(/*force=*/true));
    ASSERT_NO_FATAL_FAILURE(accounted("after a run that finished"));
    EXPECT_FALSE(DefaultFileSystem()->FileExists(shard_dir + "/REMOVING"));
    ASSERT_NO_FATAL_FAILURE(check("after a run that finished"));
    ASSERT_OK(engine->Close());
    ASSERT_OK_AND_ASSIGN(engine, Engine::Open(options));
    ASSERT_NO_FATAL_FAILURE(check("after a restart"));
    ASSERT_OK(engine->Close());
  }
  EXPECT_GT(outputs_kept, 0) << "no run was undone after its outputs were renamed";
  EXPECT_EQ(victims_listed, 1) << "the last run finished, its victims listed";
}

// Segments a compaction replaced go all or none. Here a key's older put sits
// in the output of an earlier compaction (a high segment id) and its
// tombstone in an original segment written after it (a lower id); the second
// compaction drops both. Had its removals stopped after the tombstone's
// segment and before the output, the put would have come back at the next
// start. Power is cut before each durable step of that second compaction.
TEST(CompactionFailureTest, ReplacedSegmentsGoAllOrNone) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  constexpr int kKeys = 200;
  bool cut_during_compaction = true;
  for (int step = 0; cut_during_compaction; ++step) {
    SCOPED_TRACE(absl::StrCat("power cut before step ", step, " of the second compaction"));
    test::ScopedTempDir dir;
    test::ManualClock clock;
    test::LogCapture log;
    FaultInjectionFileSystem fault_fs(DefaultFileSystem());
    PowerCutFileSystem fs(&fault_fs);
    Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
    options.file_system = &fs;
    options.tombstone_grace_ms = 0;
    Random random(seed);
    std::map<std::string, std::string> expected;  // absent: deleted
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
      for (int i = 0; i < kKeys; ++i) {
        const std::string key = KeyName(i);
        expected[key] = absl::StrCat(key, ":", random.Bytes(900));
        ASSERT_OK(engine->Put(key, expected[key]));
      }
      // The first compaction copies the puts of the sealed segments into
      // outputs whose ids are above the active segment's.
      ASSERT_OK(engine->CompactNow(/*force=*/true));
      // Tombstones for half the keys, in the active segment (a lower id),
      // then enough other writes to seal it.
      for (int i = 0; i < kKeys; i += 2) {
        ASSERT_OK(engine->Delete(KeyName(i)).status());
        expected.erase(KeyName(i));
      }
      for (int i = 0; i < kKeys; ++i) {
        const std::string key = absl::StrCat("filler-", i);
        expected[key] = absl::StrCat(key, ":", random.Bytes(900));
        ASSERT_OK(engine->Put(key, expected[key]));
      }
      ASSERT_OK(engine->Sync());
      fs.CutBeforeStep(step);
      const absl::Status status = engine->CompactNow(/*force=*/true);
      cut_during_compaction = fs.cut();
      if (!cut_during_compaction) {
        ASSERT_OK(status);
      }
      fault_fs.SetActive(false);
    }
    ASSERT_OK(fault_fs.DropUnsyncedData());
    fault_fs.SetActive(true);
    fs.CutBeforeStep(-1);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
    ExpectKeys(engine.get(), kKeys, expected);
    ASSERT_OK(engine->Close());
    if (!cut_during_compaction) {
      EXPECT_GT(step, 6) << "the compaction took durable steps";
    }
  }
}

// A new segment's header is durable before its directory entry is relied
// on: a segment that survives a power cut as zeros below a compaction's
// output would keep the store from opening.
TEST(CompactionFailureTest, ANewSegmentsHeaderIsSyncedWhenItIsMade) {
  test::ScopedTempDir dir;
  test::ManualClock clock;
  test::LogCapture log;
  FaultInjectionFileSystem fs(DefaultFileSystem());
  Options options = test::TestOptions(dir.Subdir("db"), &clock, &log);
  options.file_system = &fs;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::Open(options));
  // Open made each shard's first segment; the writes below roll to more.
  for (int i = 0; i < 600; ++i) {
    ASSERT_OK(engine->Put(KeyName(i), std::string(300, 'v')));
  }
  int segments = 0;
  for (const std::string& path : fs.TrackedFiles()) {
    if (!absl::EndsWith(path, ".log")) continue;
    ++segments;
    std::optional<FaultInjectionFileSystem::FileState> state = fs.GetFileState(path);
    ASSERT_TRUE(state.has_value()) << path;
    EXPECT_GE(state->synced_bytes, format::kSegmentHeaderBytes) << path;
  }
  EXPECT_GT(segments, 2);
  ASSERT_OK(engine->Close());
}

INSTANTIATE_TEST_SUITE_P(DirectoryEntries, CompactionCrashTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "LostUnlessSynced" : "Kept";
                         });

}  // namespace
}  // namespace logkv::engine
