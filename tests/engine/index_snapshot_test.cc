// Index snapshots: what a clean Close or a running shard's checkpoint leaves
// for the next open. An open from the snapshot, and the segments written
// after it, must find what an open from the hint files finds (every key,
// value, older version, count, dead byte and Merkle hash), also when the
// checkpoint was taken while writes went on; a snapshot that no longer
// describes the segments before its point (a compaction, a changed option,
// damage) must be refused, removed, and the store opened from its hint
// files with nothing lost.
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/log_format.h"
#include "gtest/gtest.h"
#include "tests/engine/fault_injection_file_system.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::FaultInjectionFileSystem;
using test::LogCapture;
using test::ManualClock;
using test::Random;
using test::ScopedTempDir;
using test::TestOptions;

constexpr int kKeys = 400;
constexpr uint32_t kVersionsKept = 3;

std::string KeyName(uint64_t i) { return absl::StrFormat("key-%04d", i); }

std::string SnapshotPath(const std::string& data_dir, uint32_t shard) {
  return absl::StrCat(test::ShardDir(data_dir, shard), "/", format::kIndexSnapshotName);
}

// Everything a reader can learn of one store, to compare two opens.
struct Observed {
  std::map<std::string, std::string> records;  // key -> its record and older versions
  std::map<std::string, std::string> values;   // the same without timestamps
  Stats stats;
  std::vector<uint64_t> merkle;
  // By shard: the last sequence number, and where the change feed starts.
  std::vector<uint64_t> last_sequences;
  std::vector<std::string> feed_starts;
};

Observed Observe(Engine* engine) {
  Observed observed;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = KeyName(i);
    absl::StatusOr<KeyRecord> record = engine->GetRecord(key, /*with_value=*/true);
    std::string text;
    std::string value;
    if (!record.ok()) {
      text = std::string(record.status().message());
    } else if (record->found) {
      value = absl::StrCat(record->tombstone ? "tombstone" : "put", " v=", record->version, " ",
                           record->value);
      text = absl::StrCat(value, " ts=", record->timestamp, " expiry=", record->expiry_unix_ms);
      for (uint64_t v = record->version > kVersionsKept ? record->version - kVersionsKept : 1;
           v < record->version; ++v) {
        absl::StatusOr<Record> older = engine->GetVersion(key, v);
        const std::string older_text = absl::StrCat(
            " | v", v, ":", older.ok() ? older->value : std::string(older.status().message()));
        absl::StrAppend(&text, older_text);
        absl::StrAppend(&value, older_text);
      }
    } else {
      continue;
    }
    observed.records[key] = text;
    observed.values[key] = value;
  }
  observed.stats = engine->GetStats();
  for (uint32_t shard = 0; shard < engine->ShardCount(); ++shard) {
    observed.last_sequences.push_back(engine->LastSequence(shard));
    absl::StatusOr<std::vector<Event>> first = engine->ReadEvents(shard, 0, 1);
    observed.feed_starts.push_back(
        !first.ok() ? std::string(first.status().message())
        : first->empty() ? std::string("none")
                         : absl::StrCat(first->front().sequence));
  }
  for (uint32_t p = 0; p < engine->MerklePartitionCount(); ++p) {
    observed.merkle.push_back(engine->MerkleNodeHash(p, 0));
  }
  return observed;
}

// dead_bytes: whether the dead bytes must agree too. They do but for two
// kinds of record that keep a key's older records from coming back: a
// Forget, and an expired put that compaction rewrote without its value. A
// running store counts neither dead (as it does not count a tombstone that
// is a key's newest record); an open from the hint files counts the first
// dead once the key is written again, and the second once its sweeper
// passes. The snapshot keeps the running store's count.
// The texts of the keys that are not deleted.
std::map<std::string, std::string> LiveOnly(const std::map<std::string, std::string>& texts) {
  std::map<std::string, std::string> live;
  for (const auto& [key, text] : texts) {
    if (!text.starts_with("tombstone")) live.emplace(key, text);
  }
  return live;
}

// Names the keys whose texts differ (at most a few), rather than printing
// both maps whole.
void ExpectSameTexts(const std::map<std::string, std::string>& a,
                     const std::map<std::string, std::string>& b) {
  EXPECT_EQ(a.size(), b.size());
  int reported = 0;
  for (int i = 0; i < kKeys && reported < 5; ++i) {
    const std::string key = KeyName(i);
    auto x = a.find(key);
    auto y = b.find(key);
    const std::string left = x == a.end() ? "(absent)" : x->second;
    const std::string right = y == b.end() ? "(absent)" : y->second;
    if (left != right) {
      ADD_FAILURE() << key << ":\n  " << left << "\n  " << right;
      ++reported;
    }
  }
}

// timestamps: whether the records' timestamps must agree too (they do until
// the two stores write: the snapshot's open starts its clock where the
// close's stood, the other open at the newest record's timestamp).
void ExpectSame(const Observed& a, const Observed& b, bool dead_bytes, bool timestamps) {
  ExpectSameTexts(timestamps ? a.records : a.values, timestamps ? b.records : b.values);
  EXPECT_EQ(a.stats.keys, b.stats.keys);
  EXPECT_EQ(a.stats.tombstones, b.stats.tombstones);
  EXPECT_EQ(a.stats.versions, b.stats.versions);
  EXPECT_EQ(a.stats.client_keys, b.stats.client_keys);
  EXPECT_EQ(a.stats.client_versions, b.stats.client_versions);
  EXPECT_EQ(a.stats.segments, b.stats.segments);
  EXPECT_EQ(a.stats.log_bytes, b.stats.log_bytes);
  if (dead_bytes) {
    EXPECT_EQ(a.stats.dead_bytes, b.stats.dead_bytes);
  }
  EXPECT_EQ(a.stats.key_bytes, b.stats.key_bytes);
  EXPECT_EQ(a.merkle, b.merkle);
  EXPECT_EQ(a.last_sequences, b.last_sequences);
  EXPECT_EQ(a.feed_starts, b.feed_starts);
}

class IndexSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_ = TestOptions(dir_.Subdir("db"), &clock_, &log_);
    options_.file_system = &fs_;
    options_.versions_kept = kVersionsKept;
    options_.index_snapshot_min_entries = 0;
  }

  void TearDown() override {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  absl::Status Open(std::unique_ptr<Engine>* engine, const Options& options) {
    absl::StatusOr<std::unique_ptr<Engine>> opened = Engine::Open(options);
    if (!opened.ok()) return opened.status();
    *engine = std::move(opened).value();
    return absl::OkStatus();
  }
  absl::Status Open() { return Open(&engine_, options_); }
  void CloseEngine() {
    ASSERT_OK(engine_->Close());
    engine_.reset();
  }

  // Puts (some with a TTL, some over live keys, so older versions are
  // kept), deletes, forgets, expiries and compactions, the same for a seed.
  // compactions: whether it compacts too (one would remove segments a
  // checkpoint describes).
  void Workload(Engine* engine, Random* random, int operations, bool markers = true,
                bool compactions = true) {
    for (int op = 0; op < operations; ++op) {
      const std::string key = KeyName(random->Uniform(kKeys));
      const uint64_t dice = random->Uniform(100);
      if (dice < 70) {
        WriteOptions write;
        if (markers && random->Percent(15)) {
          write.ttl_ms = 1 + static_cast<int64_t>(random->Uniform(5000));
        }
        const std::string value =
            absl::StrCat(key, "#", op, ":", random->Bytes(random->Uniform(300)));
        ASSERT_OK(engine->Put(key, value, write).status());
      } else if (dice < 85) {
        const absl::Status status = engine->Delete(key).status();
        ASSERT_TRUE(status.ok() || absl::IsNotFound(status)) << status;
      } else if (dice < 88) {
        if (!markers) continue;
        absl::StatusOr<KeyRecord> record = engine->GetRecord(key, /*with_value=*/false);
        ASSERT_OK(record.status());
        if (record->found) {
          ASSERT_OK(engine->Forget(key, record->timestamp).status());
        }
      } else if (dice < 95) {
        clock_.AdvanceMs(static_cast<int64_t>(random->Uniform(2000)));
        if (random->Percent(50)) engine->SweepExpiredNow();
      } else if (compactions) {
        ASSERT_OK(engine->CompactNow(/*force=*/random->Percent(50)));
      }
    }
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  LogCapture log_;
  FaultInjectionFileSystem fs_{DefaultFileSystem()};
  Options options_;
  // The process is killed: nothing more reaches the disk, no Close runs.
  void Kill() {
    fs_.SetActive(false);
    engine_.reset();
    fs_.SetActive(true);
  }

  // A copy of the store without its snapshots, which opens from the hint
  // files.
  Options CopyWithoutSnapshots(const std::string& name) {
    Options copy = options_;
    copy.data_dir = dir_.Subdir(name);
    std::filesystem::remove_all(copy.data_dir);
    std::filesystem::copy(options_.data_dir, copy.data_dir,
                          std::filesystem::copy_options::recursive);
    for (uint32_t shard = 0; shard < copy.shard_count; ++shard) {
      std::filesystem::remove(SnapshotPath(copy.data_dir, shard));
    }
    return copy;
  }

  std::unique_ptr<Engine> engine_;  // declared last: destroyed before what it uses
};

class IndexSnapshotEquivalenceTest : public IndexSnapshotTest,
                                      public ::testing::WithParamInterface<bool> {};

TEST_P(IndexSnapshotEquivalenceTest, AnOpenFromTheSnapshotFindsWhatAnOpenFromTheHintFilesFinds) {
  // With Forgets and TTLs, or without (ExpectSame).
  const bool markers = GetParam();
  // Compaction drops tombstones once no older record of the key is left
  // outside its victims, which it learns from the segments' sequence ranges.
  options_.tombstone_grace_ms = 0;
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  ASSERT_OK(Open());
  ASSERT_NO_FATAL_FAILURE(Workload(engine_.get(), &random, 3000, markers));
  engine_->SweepExpiredNow();
  const uint64_t running_dead = engine_->GetStats().dead_bytes;
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
    ASSERT_TRUE(std::filesystem::exists(SnapshotPath(options_.data_dir, shard)));
  }
  // A copy of the store without its snapshots opens from the hint files.
  Options copy = options_;
  copy.data_dir = dir_.Subdir("copy");
  std::filesystem::copy(options_.data_dir, copy.data_dir,
                        std::filesystem::copy_options::recursive);
  for (uint32_t shard = 0; shard < copy.shard_count; ++shard) {
    std::filesystem::remove(SnapshotPath(copy.data_dir, shard));
  }

  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    std::unique_ptr<Engine> from_hints;
    ASSERT_OK(Open());
    ASSERT_OK(Open(&from_hints, copy));
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, options_.shard_count);
    EXPECT_EQ(engine_->GetStats().recovered_from_hints, 0u);
    EXPECT_EQ(from_hints->GetStats().recovered_from_snapshot, 0u);
    for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
      EXPECT_TRUE(std::filesystem::exists(SnapshotPath(options_.data_dir, shard)))
          << "a snapshot is kept for the next open";
    }
    // The open from the hint files finds expired keys live until the
    // sweeper passes (the running store had swept some): both sweep.
    engine_->SweepExpiredNow();
    from_hints->SweepExpiredNow();
    if (round == 0) {
      EXPECT_EQ(engine_->GetStats().dead_bytes, running_dead);
    }
    const Observed opened = Observe(engine_.get());
    const Observed reference = Observe(from_hints.get());
    if (markers && round > 0) {
      // The dead bytes differed from the first open on, so the rounds'
      // compactions may have chosen other segments and dropped other
      // tombstones: what the two agree on is what is live.
      ExpectSameTexts(LiveOnly(opened.values), LiveOnly(reference.values));
      EXPECT_EQ(opened.stats.keys, reference.stats.keys);
      EXPECT_EQ(opened.stats.versions, reference.stats.versions);
      EXPECT_EQ(opened.last_sequences, reference.last_sequences);
    } else {
      ASSERT_NO_FATAL_FAILURE(ExpectSame(opened, reference, /*dead_bytes=*/!markers,
                                         /*timestamps=*/round == 0));
    }
    // Both go on alike: the same writes, compactions and expiries.
    Random a(seed + round + 1);
    Random b(seed + round + 1);
    const int64_t start = clock_.NowUnixMs();
    ASSERT_NO_FATAL_FAILURE(Workload(engine_.get(), &a, 500, markers));
    const int64_t end = clock_.NowUnixMs();
    clock_.SetUnixMs(start);
    ASSERT_NO_FATAL_FAILURE(Workload(from_hints.get(), &b, 500, markers));
    ASSERT_EQ(clock_.NowUnixMs(), end);
    engine_->SweepExpiredNow();
    from_hints->SweepExpiredNow();
    const Observed ours = Observe(engine_.get());
    const Observed theirs = Observe(from_hints.get());
    if (markers) {
      ExpectSameTexts(LiveOnly(ours.values), LiveOnly(theirs.values));
    } else {
      ExpectSameTexts(ours.values, theirs.values);
      EXPECT_EQ(ours.stats.tombstones, theirs.stats.tombstones);
    }
    EXPECT_EQ(ours.stats.keys, theirs.stats.keys);
    EXPECT_EQ(ours.stats.versions, theirs.stats.versions);
    EXPECT_EQ(ours.last_sequences, theirs.last_sequences);
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
    ASSERT_OK(from_hints->Close());
    for (uint32_t shard = 0; shard < copy.shard_count; ++shard) {
      std::filesystem::remove(SnapshotPath(copy.data_dir, shard));
    }
  }
  // What three opens from snapshots, and the compactions after them, left
  // opens from the hint files alike: no deleted key came back.
  for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
    std::filesystem::remove(SnapshotPath(options_.data_dir, shard));
  }
  std::unique_ptr<Engine> from_hints;
  ASSERT_OK(Open());
  ASSERT_OK(Open(&from_hints, copy));
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
  if (markers) {
    ExpectSameTexts(LiveOnly(Observe(engine_.get()).values),
                    LiveOnly(Observe(from_hints.get()).values));
  } else {
    ExpectSameTexts(Observe(engine_.get()).values, Observe(from_hints.get()).values);
  }
  ASSERT_OK(from_hints->Close());
}

INSTANTIATE_TEST_SUITE_P(WithAndWithoutMarkers, IndexSnapshotEquivalenceTest, ::testing::Bool());

TEST_F(IndexSnapshotTest, NoSnapshotBelowTheThreshold) {
  options_.shard_count = 1;
  for (const uint64_t threshold : {uint64_t{kKeys} + 1, uint64_t{kKeys}}) {
    SCOPED_TRACE(threshold);
    std::filesystem::remove_all(options_.data_dir);
    options_.index_snapshot_min_entries = threshold;
    ASSERT_OK(Open());
    for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "v").status());
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
    EXPECT_EQ(std::filesystem::exists(SnapshotPath(options_.data_dir, 0)), threshold == kKeys);
  }
}

// A snapshot put back after the store moved on (as a copy, or an older one
// the next close did not replace): the appends since went to segments after
// its point, so it is used and they are read after it; a compaction or a
// changed versions_kept makes it refused.
TEST_F(IndexSnapshotTest, ASnapshotPutBackServesAfterAppendsAndIsRefusedAfterAChange) {
  enum class Change { kAppend, kCompaction, kVersionsKept, kAppendThenKill };
  for (const Change change :
       {Change::kAppend, Change::kCompaction, Change::kVersionsKept, Change::kAppendThenKill}) {
    SCOPED_TRACE(static_cast<int>(change));
    std::filesystem::remove_all(options_.data_dir);
    options_.versions_kept = kVersionsKept;
    ASSERT_OK(Open());
    for (int round = 0; round < 3; ++round) {
      for (int i = 0; i < kKeys; ++i) {
        ASSERT_OK(engine_->Put(KeyName(i), absl::StrCat("first-", round)).status());
      }
    }
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
    std::vector<std::string> saved;
    for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
      saved.push_back(test::ReadFileBytes(SnapshotPath(options_.data_dir, shard)));
    }
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, options_.shard_count);
    switch (change) {
      case Change::kAppend:
      case Change::kAppendThenKill:
        for (int i = 0; i < kKeys; i += 2) ASSERT_OK(engine_->Put(KeyName(i), "second").status());
        for (int i = 1; i < kKeys; i += 4) ASSERT_OK(engine_->Delete(KeyName(i)).status());
        break;
      case Change::kCompaction:
        ASSERT_OK(engine_->CompactNow(/*force=*/true));
        break;
      case Change::kVersionsKept:
        break;
    }
    if (change == Change::kAppendThenKill) {
      Kill();
    } else {
      ASSERT_NO_FATAL_FAILURE(CloseEngine());
    }
    if (change == Change::kVersionsKept) options_.versions_kept = 1;
    for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
      test::WriteFileBytes(SnapshotPath(options_.data_dir, shard), saved[shard]);
    }
    log_.Clear();
    ASSERT_OK(Open());
    const bool appended = change == Change::kAppend || change == Change::kAppendThenKill;
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, appended ? options_.shard_count : 0u);
    EXPECT_EQ(log_.Contains(LogLevel::kWarning, "not used"), !appended) << log_.Dump();
    for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
      EXPECT_EQ(std::filesystem::exists(SnapshotPath(options_.data_dir, shard)), appended);
    }
    for (int i = 0; i < kKeys; ++i) {
      const std::string expected = !appended    ? "first-2"
                                   : i % 2 == 0 ? "second"
                                   : i % 4 == 1 ? "NOT_FOUND"
                                                : "first-2";
      ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), expected) << KeyName(i);
    }
    if (change == Change::kVersionsKept) {
      EXPECT_TRUE(absl::IsNotFound(engine_->GetVersion(KeyName(0), 1).status()));
    } else {
      // Older versions from the snapshot, and the one a write after it
      // pushed back.
      ASSERT_OK_AND_ASSIGN(Record older, engine_->GetVersion(KeyName(3), 2));
      EXPECT_EQ(older.value, "first-1");
      if (appended) {
        ASSERT_OK_AND_ASSIGN(Record pushed, engine_->GetVersion(KeyName(0), 3));
        EXPECT_EQ(pushed.value, "first-2");
        ASSERT_OK_AND_ASSIGN(Record oldest, engine_->GetVersion(KeyName(0), 2));
        EXPECT_EQ(oldest.value, "first-1");
        EXPECT_TRUE(absl::IsNotFound(engine_->GetVersion(KeyName(0), 1).status()))
            << "three versions kept: the current one and two older";
      }
    }
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
  }
}

// A compaction after an open from the snapshot keeps a tombstone while an
// older put of its key lies in a segment outside its victims, which it knows
// from the segments' sequence ranges the snapshot carried: the deleted keys
// stay deleted at the next open from the hint files.
TEST_F(IndexSnapshotTest, ACompactionAfterTheOpenKeepsTombstonesThatHideOlderPuts) {
  options_.shard_count = 1;
  options_.versions_kept = 1;
  options_.tombstone_grace_ms = 0;
  ASSERT_OK(Open());
  const std::string value(1000, 'v');
  // The first segment: live keys, and the puts the tombstones will hide.
  for (int i = 0; i < 50; ++i) ASSERT_OK(engine_->Put(absl::StrCat("live-", i), value).status());
  for (int i = 0; i < 10; ++i) ASSERT_OK(engine_->Put(absl::StrCat("old-", i), value).status());
  // Later segments: the tombstones among fillers written over and over, so
  // that these segments are mostly dead and the first one is not.
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 60; ++i) {
      ASSERT_OK(engine_->Put(absl::StrCat("filler-", i), value).status());
    }
    if (round == 0) {
      for (int i = 0; i < 10; ++i) ASSERT_OK(engine_->Delete(absl::StrCat("old-", i)).status());
    }
  }
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  ASSERT_OK(Open());
  ASSERT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
  ASSERT_OK(engine_->CompactNow(/*force=*/false));
  EXPECT_GT(engine_->GetStats().compactions, 0u);
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  std::filesystem::remove(SnapshotPath(options_.data_dir, 0));
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(test::GetOrStatus(engine_.get(), absl::StrCat("old-", i)), "NOT_FOUND");
  }
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(test::GetOrStatus(engine_.get(), absl::StrCat("live-", i)), value);
  }
}

// Bytes added to a segment after the close (its size is all the open
// compares of a segment's contents; no append of the engine's own can grow a
// segment a snapshot lists, since the open after a clean close starts a new
// one): the snapshot is refused and the open reads the segments.
TEST_F(IndexSnapshotTest, ASegmentThatGrewSinceTheCloseIsNotTheOneTheSnapshotDescribes) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "v").status());
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  const std::vector<std::string> segments = test::ListSegmentFiles(options_.data_dir, 0);
  ASSERT_FALSE(segments.empty());
  test::WriteFileBytes(segments.back(),
                       test::ReadFileBytes(segments.back()) + std::string(4096, '\0'));
  log_.Clear();
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "is not as it was")) << log_.Dump();
  for (int i = 0; i < kKeys; ++i) ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), "v");
}

// Damage the checksum catches, and damage it cannot (a snapshot rewritten
// with its checksum fixed, as a writer's bug would leave it): refused,
// removed, and the store opened from its hint files.
TEST_F(IndexSnapshotTest, ADamagedSnapshotIsRefused) {
  options_.shard_count = 1;
  // The keys' own order too (Options::ordered_prefixes): what a refused
  // snapshot loaded of it is dropped with the rest.
  options_.ordered_prefixes = {"key-"};
  ASSERT_OK(Open());
  // A scan in that order: every key once, in order.
  auto check_order = [&] {
    ScanOptions scan;
    scan.prefix = "key-";
    scan.limit = kMaxScanLimit;
    scan.keys_only = true;
    scan.build_key_order = false;
    ASSERT_OK_AND_ASSIGN(ScanResult page, engine_->Scan(scan));
    ASSERT_EQ(page.items.size(), static_cast<size_t>(kKeys));
    for (int i = 0; i < kKeys; ++i) ASSERT_EQ(page.items[i].key, KeyName(i));
  };
  // Dead records, which no entry names: room in the segment for an entry
  // twice (below).
  for (int i = 0; i < 50; ++i) {
    ASSERT_OK(engine_->Put(absl::StrCat("filler-", i), "x").status());
    ASSERT_OK(engine_->Delete(absl::StrCat("filler-", i)).status());
  }
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kKeys; ++i) {
      WriteOptions write;
      if (i % 7 == 0) write.ttl_ms = 3'600'000;
      ASSERT_OK(engine_->Put(KeyName(i), absl::StrCat("v", round), write).status());
    }
  }
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  const std::string path = SnapshotPath(options_.data_dir, 0);
  const std::string good = test::ReadFileBytes(path);
  // Rewrites bytes [at, at + n) and, when resum, the checksum after them.
  auto damaged = [&](size_t at, absl::string_view bytes, bool resum) {
    std::string file = good;
    std::memcpy(file.data() + at, bytes.data(), bytes.size());
    if (resum) {
      const uint64_t sum = XXH3_64bits(file.data(), file.size() - sizeof(uint64_t));
      std::memcpy(file.data() + file.size() - sizeof(sum), &sum, sizeof(sum));
    }
    return file;
  };
  auto u32 = [](uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), sizeof(v)); };
  auto u64 = [](uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), sizeof(v)); };
  format::IndexSnapshotHeader header;
  std::memcpy(&header, good.data(), sizeof(header));
  // The footer's place, from the end (before the checksum).
  constexpr size_t kFooterFromEnd = sizeof(format::IndexSnapshotFooter) + sizeof(uint64_t);
  format::IndexSnapshotFooter footer;
  std::memcpy(&footer, good.data() + good.size() - kFooterFromEnd, sizeof(footer));
  const size_t footer_at = good.size() - kFooterFromEnd;
  const size_t first_entry =
      sizeof(header) + header.segment_count * sizeof(format::IndexSnapshotSegment);
  struct Case {
    std::string name;
    std::string file;
    std::string reason;  // what the warning says
  };
  // The first entry twice (a writer's bug the checksum cannot catch): the
  // second copy is found only while the first is in the index.
  format::IndexSnapshotEntry first;
  std::memcpy(&first, good.data() + first_entry, sizeof(first));
  const size_t first_bytes = sizeof(first) +
                             ((first.flags & 16) != 0 ? sizeof(int64_t) : 0) + first.key_size +
                             first.history_count * sizeof(format::IndexSnapshotLocation);
  std::string twice = good;
  twice.insert(first_entry + first_bytes, good.substr(first_entry, first_bytes));
  const format::IndexSnapshotFooter one_more{footer.entry_count + 1,
                                             footer.history_count + first.history_count};
  std::memcpy(twice.data() + twice.size() - kFooterFromEnd, &one_more, sizeof(one_more));
  const uint64_t twice_sum = XXH3_64bits(twice.data(), twice.size() - sizeof(uint64_t));
  std::memcpy(twice.data() + twice.size() - sizeof(twice_sum), &twice_sum, sizeof(twice_sum));
  // And a hundred times: the entries name more bytes of the segment than
  // it holds records in, which the first pass finds.
  std::string many = good;
  for (int i = 0; i < 100; ++i) {
    many.insert(first_entry + first_bytes, good.substr(first_entry, first_bytes));
  }
  const format::IndexSnapshotFooter hundred_more{footer.entry_count + 100,
                                                 footer.history_count + 100 * first.history_count};
  std::memcpy(many.data() + many.size() - kFooterFromEnd, &hundred_more, sizeof(hundred_more));
  const uint64_t many_sum = XXH3_64bits(many.data(), many.size() - sizeof(uint64_t));
  std::memcpy(many.data() + many.size() - sizeof(many_sum), &many_sum, sizeof(many_sum));
  const std::vector<Case> cases = {
      {"a key twice", twice, "repeats a key"},
      {"a key a hundred times", many, "overlaps others"},
      {"a flipped byte", damaged(good.size() / 2, "\x5a", /*resum=*/false), "checksum mismatch"},
      {"cut short", good.substr(0, good.size() - 100), "checksum mismatch"},
      {"empty", "", "truncated"},
      {"an entry count past the file",
       damaged(footer_at + offsetof(format::IndexSnapshotFooter, entry_count),
               u64(uint64_t{1} << 40), true),
       "counts larger than the file"},
      {"one entry too many",
       damaged(footer_at + offsetof(format::IndexSnapshotFooter, entry_count),
               u64(footer.entry_count + 1), true),
       "cut short"},
      {"an entry in a segment that is not there",
       damaged(first_entry + offsetof(format::IndexSnapshotEntry, segment_id), u32(999999), true),
       "entry 0 is invalid"},
      {"an entry past its segment's end",
       damaged(first_entry + offsetof(format::IndexSnapshotEntry, offset), u32(0x7ffffff8), true),
       "entry 0 is invalid"},
      {"an entry at an offset no record starts at",
       damaged(first_entry + offsetof(format::IndexSnapshotEntry, offset), u32(first.offset + 4),
               true),
       "entry 0 is invalid"},
      {"a key of no bytes",
       damaged(first_entry + offsetof(format::IndexSnapshotEntry, key_size),
               std::string(2, '\0'), true),
       "entry 0 is invalid"},
      {"an unknown flag",
       damaged(first_entry + offsetof(format::IndexSnapshotEntry, flags), "\x80", true),
       "entry 0 is invalid"},
      {"another shard's", damaged(offsetof(format::IndexSnapshotHeader, shard_id), u32(5), true),
       "not an index snapshot of shard 0"},
      {"a sequence behind its segments",
       damaged(offsetof(format::IndexSnapshotHeader, next_sequence), u64(1), true),
       "described wrongly"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    test::WriteFileBytes(path, c.file);
    log_.Clear();
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
    EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "not used")) << log_.Dump();
    EXPECT_TRUE(log_.Contains(LogLevel::kWarning, c.reason)) << log_.Dump();
    EXPECT_FALSE(std::filesystem::exists(path));
    for (int i = 0; i < kKeys; ++i) {
      ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), "v1") << KeyName(i);
    }
    EXPECT_EQ(engine_->GetStats().keys, static_cast<uint64_t>(kKeys));
    ASSERT_NO_FATAL_FAILURE(check_order());
    // Closed without a write: the same segments, and a snapshot like the
    // first (the same bytes, but for the order of the segment table).
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
    ASSERT_TRUE(std::filesystem::exists(path));
  }
  // And the snapshot as it was serves the open.
  test::WriteFileBytes(path, good);
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), "v1") << KeyName(i);
  }
  ASSERT_NO_FATAL_FAILURE(check_order());
}

TEST_F(IndexSnapshotTest, ASnapshotThatCannotBeWrittenFailsNothingAndAnUnfinishedOneIsRemoved) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "v").status());
  // A directory where the close creates its file: the creation fails, as
  // on a full disk, after every hint file is written.
  const std::string path = SnapshotPath(options_.data_dir, 0);
  std::filesystem::create_directory(path + ".tmp");
  log_.Clear();
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "no index snapshot written")) << log_.Dump();
  std::filesystem::remove(path + ".tmp");

  // A close killed while it wrote one leaves the temporary file.
  test::WriteFileBytes(path + ".tmp", std::string(4096, 'x'));
  ASSERT_OK(Open());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
  EXPECT_EQ(engine_->GetStats().recovered_by_scan, 0u);
  for (int i = 0; i < kKeys; ++i) ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), "v");
}

// The snapshot is synced and its name made durable before the close
// returns: a machine crash right after the close keeps it, and an open
// from it followed by writes and a crash loses no acknowledged write (the
// next open uses it again, and reads the segments written since).
TEST_F(IndexSnapshotTest, ACrashAfterTheCloseOrAfterAnOpenFromTheSnapshotLosesNothing) {
  options_.fsync = FsyncPolicy::kAlways;
  options_.background_threads = true;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "before").status());
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  ASSERT_OK(fs_.DropUnsyncedData());
  ASSERT_OK(fs_.RemoveFilesCreatedAfterLastDirSync());
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, options_.shard_count);
  for (int i = 0; i < kKeys; i += 3) ASSERT_OK(engine_->Put(KeyName(i), "after").status());
  fs_.SetActive(false);
  engine_.reset();
  ASSERT_OK(fs_.DropUnsyncedData());
  ASSERT_OK(fs_.RemoveFilesCreatedAfterLastDirSync());
  fs_.SetActive(true);
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, options_.shard_count);
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i % 3 == 0 ? "after" : "before");
  }
}

// ---- Checkpoints: the snapshot a running shard writes ----------------------

class CheckpointEquivalenceTest : public IndexSnapshotTest,
                                  public ::testing::WithParamInterface<bool> {};

// Written with the shard idle between batches, and with writes (puts over
// keys the walk has passed and keys it has not, new keys, deletes, forgets)
// between every two batches of a few entries; with one version kept and
// three; followed by a kill after more writes, or by a machine crash right
// away (what was not synced is lost, FsyncPolicy::kNever): whichever, the
// open from the checkpoint and the segments after it finds what an open
// from the hint files of the same files finds.
TEST_P(CheckpointEquivalenceTest, ACrashAfterACheckpointFindsWhatAnOpenFromTheHintFilesFinds) {
  const bool markers = GetParam();
  options_.tombstone_grace_ms = 0;
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  for (const uint32_t versions : {1u, kVersionsKept}) {
    for (const bool writes_during : {false, true}) {
      for (const bool power_cut : {false, true}) {
        SCOPED_TRACE(absl::StrCat("versions kept ", versions, ", writes during the checkpoint ",
                                  writes_during, ", power cut ", power_cut));
        std::filesystem::remove_all(options_.data_dir);
        options_.versions_kept = versions;
        options_.checkpoint_batch_entries = 8;
        int batches = 0;
        options_.on_checkpoint_batch = [&](uint32_t, uint64_t) {
          ++batches;
          if (writes_during) {
            ASSERT_NO_FATAL_FAILURE(Workload(engine_.get(), &random, 4, markers,
                                             /*compactions=*/false));
          }
        };
        ASSERT_OK(Open());
        ASSERT_NO_FATAL_FAILURE(Workload(engine_.get(), &random, 2500, markers));
        ASSERT_OK(engine_->CheckpointNow());
        EXPECT_GT(batches, 10);
        EXPECT_EQ(engine_->GetStats().checkpoints_written, options_.shard_count);
        if (power_cut) {
          fs_.SetActive(false);
          engine_.reset();
          ASSERT_OK(fs_.DropUnsyncedData());
          ASSERT_OK(fs_.RemoveFilesCreatedAfterLastDirSync());
          fs_.SetActive(true);
        } else {
          ASSERT_NO_FATAL_FAILURE(Workload(engine_.get(), &random, 800, markers, false));
          Kill();
        }
        const Options copy = CopyWithoutSnapshots("copy");
        std::unique_ptr<Engine> from_hints;
        log_.Clear();
        ASSERT_OK(Open());
        ASSERT_OK(Open(&from_hints, copy));
        EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, options_.shard_count)
            << log_.Dump();
        EXPECT_EQ(from_hints->GetStats().recovered_from_snapshot, 0u);
        engine_->SweepExpiredNow();
        from_hints->SweepExpiredNow();
        // Dead bytes as well without Forgets and TTLs: with them the
        // checkpoint counts every byte no entry names (a Forget record too).
        ASSERT_NO_FATAL_FAILURE(ExpectSame(Observe(engine_.get()), Observe(from_hints.get()),
                                           /*dead_bytes=*/!markers, /*timestamps=*/true));
        // And both go on alike, compactions too.
        Random a(seed + 7);
        Random b(seed + 7);
        const int64_t start = clock_.NowUnixMs();
        ASSERT_NO_FATAL_FAILURE(Workload(engine_.get(), &a, 500, markers));
        clock_.SetUnixMs(start);
        ASSERT_NO_FATAL_FAILURE(Workload(from_hints.get(), &b, 500, markers));
        engine_->SweepExpiredNow();
        from_hints->SweepExpiredNow();
        ExpectSameTexts(LiveOnly(Observe(engine_.get()).values),
                        LiveOnly(Observe(from_hints.get()).values));
        ASSERT_OK(from_hints->Close());
        ASSERT_NO_FATAL_FAILURE(CloseEngine());
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WithAndWithoutMarkers, CheckpointEquivalenceTest, ::testing::Bool());

// A checkpoint serves every open after it, however many kills, while the
// segments it describes stay; a compaction that removes one makes the next
// open refuse it (and remove it), and the open reads the hint files.
TEST_F(IndexSnapshotTest, ACheckpointServesEachOpenUntilACompactionRemovesASegmentItDescribes) {
  options_.shard_count = 1;
  options_.versions_kept = 1;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "v0").status());
  ASSERT_OK(engine_->CheckpointNow());
  const std::string path = SnapshotPath(options_.data_dir, 0);
  for (int round = 1; round <= 3; ++round) {
    SCOPED_TRACE(round);
    for (int i = 0; i < kKeys; i += round + 1) {
      ASSERT_OK(engine_->Put(KeyName(i), absl::StrCat("v", round)).status());
    }
    Kill();
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
    EXPECT_EQ(engine_->GetStats().keys, static_cast<uint64_t>(kKeys));
    EXPECT_TRUE(std::filesystem::exists(path));
  }
  auto expected = [](int i) {
    for (int round = 3; round >= 1; --round) {
      if (i % (round + 1) == 0) return absl::StrCat("v", round);
    }
    return std::string("v0");
  };
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), expected(i)) << KeyName(i);
  }
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  Kill();
  log_.Clear();
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
  EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "not used")) << log_.Dump();
  EXPECT_FALSE(std::filesystem::exists(path));
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), expected(i)) << KeyName(i);
  }
}

// A checkpoint that cannot be written (its file cannot be created, as on a
// full disk) fails alone: nothing is lost, the background thread tries the
// next only once as many writes again have come (not every round), and the
// open after a kill reads the hint files.
TEST_F(IndexSnapshotTest, ACheckpointThatCannotBeWrittenIsTriedAgainAfterAsManyWrites) {
  options_.shard_count = 1;
  options_.versions_kept = 1;
  options_.background_threads = true;
  options_.ttl_sweep_interval_ms = 10;
  // No compaction by the thread: one that rewrote a segment the checkpoint
  // describes would make it stale (tested on its own below).
  options_.compaction_check_interval_ms = 3'600'000;
  options_.index_snapshot_min_entries = kKeys;
  ASSERT_OK(Open());
  const std::string path = SnapshotPath(options_.data_dir, 0);
  std::filesystem::create_directory(path + ".tmp");
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "v").status());
  auto failures = [&] {
    size_t count = 0;
    const std::string log = log_.Dump();
    for (size_t at = log.find("writing a checkpoint failed"); at != std::string::npos;
         at = log.find("writing a checkpoint failed", at + 1)) {
      ++count;
    }
    return count;
  };
  // Bounded waits: the thread looks every 10 ms.
  for (int wait = 0; wait < 3000 && failures() == 0; ++wait) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(failures(), 1u) << log_.Dump();
  absl::SleepFor(absl::Milliseconds(300));  // thirty rounds or so, and no write
  EXPECT_EQ(failures(), 1u) << "tried again without new writes";
  EXPECT_EQ(engine_->GetStats().checkpoints_written, 0u);
  std::filesystem::remove(path + ".tmp");
  // Half the keys' count again: due.
  for (int i = 0; i < kKeys / 2; ++i) ASSERT_OK(engine_->Put(KeyName(i), "w").status());
  for (int wait = 0; wait < 3000 && engine_->GetStats().checkpoints_written == 0; ++wait) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(engine_->GetStats().checkpoints_written, 1u) << log_.Dump();
  EXPECT_EQ(failures(), 1u);
  Kill();
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i < kKeys / 2 ? "w" : "v");
  }
}

// A compaction that rewrites a segment the checkpoint describes makes it
// stale: the next comes once Options::checkpoint_stale_interval_ms has
// passed and an eighth of the usual writes have come, not only after
// checkpoint_ratio of the keys again; the open after a kill uses it.
TEST_F(IndexSnapshotTest, ACompactionThatMakesTheCheckpointStaleBringsTheNextSooner) {
  options_.shard_count = 1;
  options_.versions_kept = 1;
  options_.background_threads = true;
  options_.ttl_sweep_interval_ms = 10;
  options_.compaction_check_interval_ms = 3'600'000;  // compactions by the test only
  options_.index_snapshot_min_entries = kKeys;
  options_.checkpoint_stale_interval_ms = 50;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "v").status());
  // Bounded waits: the thread looks every 10 ms.
  auto wait_for = [&](uint64_t checkpoints) {
    for (int wait = 0; wait < 3000 && engine_->GetStats().checkpoints_written < checkpoints;
         ++wait) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  };
  wait_for(1);
  ASSERT_EQ(engine_->GetStats().checkpoints_written, 1u);
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  // An eighth of the usual (half the keys) writes: enough for a stale one.
  for (int i = 0; i < kKeys / 16 + 1; ++i) ASSERT_OK(engine_->Put(KeyName(i), "w").status());
  wait_for(2);
  ASSERT_EQ(engine_->GetStats().checkpoints_written, 2u) << log_.Dump();
  Kill();
  log_.Clear();
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u) << log_.Dump();
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i <= kKeys / 16 ? "w" : "v");
  }
}

// A clean close that removes its empty active segment leaves a snapshot
// whose point is past that segment's id: the next open's segments still come
// after the point, and a kill after writes finds the snapshot usable.
TEST_F(IndexSnapshotTest, AStartWithoutWritesBetweenTwoCleanClosesKeepsTheNextSnapshotUsable) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "a").status());
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  ASSERT_OK(Open());  // nothing written: the close removes the segment the open started
  ASSERT_NO_FATAL_FAILURE(CloseEngine());
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
  for (int i = 0; i < kKeys; i += 2) ASSERT_OK(engine_->Put(KeyName(i), "b").status());
  Kill();
  log_.Clear();
  ASSERT_OK(Open());
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u) << log_.Dump();
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i % 2 == 0 ? "b" : "a");
  }
}

// Keys the sweeper expired before a clean close, written again after the
// open from its snapshot, then a kill: their expired records were counted
// dead once (by the sweeper), and the open after the kill does not count
// them again.
TEST_F(IndexSnapshotTest, ExpiredKeysWrittenAfterTheSnapshotAreCountedDeadOnce) {
  options_.shard_count = 1;
  for (const uint32_t versions : {1u, kVersionsKept}) {
    SCOPED_TRACE(versions);
    std::filesystem::remove_all(options_.data_dir);
    options_.versions_kept = versions;
    ASSERT_OK(Open());
    for (int i = 0; i < kKeys; ++i) {
      WriteOptions write;
      if (i % 2 == 0) write.ttl_ms = 1000;
      ASSERT_OK(engine_->Put(KeyName(i), "first", write).status());
    }
    clock_.AdvanceMs(2000);
    EXPECT_EQ(engine_->SweepExpiredNow(), static_cast<uint64_t>(kKeys / 2));
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
    ASSERT_OK(Open());
    ASSERT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
    for (int i = 0; i < kKeys; i += 2) ASSERT_OK(engine_->Put(KeyName(i), "again").status());
    const Stats running = engine_->GetStats();
    Kill();
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u);
    EXPECT_EQ(engine_->GetStats().dead_bytes, running.dead_bytes);
    EXPECT_EQ(engine_->GetStats().versions, running.versions)
        << "an expired put is no older version";
    for (int i = 0; i < kKeys; ++i) {
      ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i % 2 == 0 ? "again" : "first");
    }
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
  }
}

// The background thread writes a checkpoint once the writes since the last
// reach Options::checkpoint_ratio of the keys, none with the ratio 0; a
// machine crash right after one keeps it, and loses no acknowledged write.
TEST_F(IndexSnapshotTest, TheBackgroundThreadWritesCheckpointsThatSurviveAMachineCrash) {
  options_.shard_count = 1;
  options_.fsync = FsyncPolicy::kAlways;
  options_.background_threads = true;
  options_.ttl_sweep_interval_ms = 10;
  // No compaction by the thread: one that rewrote a segment the checkpoint
  // describes would make it stale (tested on its own below).
  options_.compaction_check_interval_ms = 3'600'000;
  // None before the shard holds every key; then one (every write so far
  // is since the last), and none for the third of them written again.
  options_.index_snapshot_min_entries = kKeys;
  for (const double ratio : {0.0, 0.5}) {
    SCOPED_TRACE(ratio);
    std::filesystem::remove_all(options_.data_dir);
    options_.checkpoint_ratio = ratio;
    ASSERT_OK(Open());
    for (int i = 0; i < kKeys; ++i) ASSERT_OK(engine_->Put(KeyName(i), "before").status());
    // Bounded: the thread looks every 10 ms (with the ratio 0, a few of
    // its rounds pass).
    const int waits = ratio == 0 ? 30 : 3000;
    for (int wait = 0; wait < waits && engine_->GetStats().checkpoints_written == 0; ++wait) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (ratio == 0) {
      EXPECT_EQ(engine_->GetStats().checkpoints_written, 0u);
      ASSERT_NO_FATAL_FAILURE(CloseEngine());
      continue;
    }
    ASSERT_EQ(engine_->GetStats().checkpoints_written, 1u);
    for (int i = 0; i < kKeys; i += 3) ASSERT_OK(engine_->Put(KeyName(i), "after").status());
    fs_.SetActive(false);
    engine_.reset();
    ASSERT_OK(fs_.DropUnsyncedData());
    ASSERT_OK(fs_.RemoveFilesCreatedAfterLastDirSync());
    fs_.SetActive(true);
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 1u) << log_.Dump();
    for (int i = 0; i < kKeys; ++i) {
      ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i % 3 == 0 ? "after" : "before");
    }
    EXPECT_EQ(engine_->GetStats().checkpoints_written, 0u);
    ASSERT_NO_FATAL_FAILURE(CloseEngine());
  }
}

}  // namespace
}  // namespace logkv::engine
