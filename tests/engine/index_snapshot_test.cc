// Index snapshots: what a clean Close leaves for the next open. An open from
// the snapshot must find what an open from the hint files finds (every key,
// value, older version, count, dead byte and Merkle hash); a snapshot that
// no longer describes the segments (an append, a compaction, a changed
// option, damage) must be refused, removed, and the store opened from its
// hint files with nothing lost.
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
  void Workload(Engine* engine, Random* random, int operations, bool markers = true) {
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
      } else {
        ASSERT_OK(engine->CompactNow(/*force=*/random->Percent(50)));
      }
    }
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  LogCapture log_;
  FaultInjectionFileSystem fs_{DefaultFileSystem()};
  Options options_;
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
      EXPECT_FALSE(std::filesystem::exists(SnapshotPath(options_.data_dir, shard)))
          << "a snapshot serves one open";
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

// A snapshot put back after the store moved on (as a copy, or one whose
// removal did not reach the disk) is refused: each change the open can meet
// makes one of the segments it describes differ.
TEST_F(IndexSnapshotTest, AStaleSnapshotIsRefusedAndNothingIsLost) {
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
    std::string expected = "first-2";
    switch (change) {
      case Change::kAppend:
      case Change::kAppendThenKill:
        for (int i = 0; i < kKeys; i += 2) ASSERT_OK(engine_->Put(KeyName(i), "second").status());
        break;
      case Change::kCompaction:
        ASSERT_OK(engine_->CompactNow(/*force=*/true));
        break;
      case Change::kVersionsKept:
        break;
    }
    if (change == Change::kAppendThenKill) {
      // The process dies: nothing more reaches the disk, and no Close
      // writes a snapshot.
      fs_.SetActive(false);
      engine_.reset();
      fs_.SetActive(true);
    } else {
      ASSERT_NO_FATAL_FAILURE(CloseEngine());
    }
    if (change == Change::kVersionsKept) options_.versions_kept = 1;
    for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
      test::WriteFileBytes(SnapshotPath(options_.data_dir, shard), saved[shard]);
    }
    log_.Clear();
    ASSERT_OK(Open());
    EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
    EXPECT_TRUE(log_.Contains(LogLevel::kWarning, "not used")) << log_.Dump();
    for (uint32_t shard = 0; shard < options_.shard_count; ++shard) {
      EXPECT_FALSE(std::filesystem::exists(SnapshotPath(options_.data_dir, shard)));
    }
    const bool appended = change == Change::kAppend || change == Change::kAppendThenKill;
    for (int i = 0; i < kKeys; ++i) {
      ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)),
                appended && i % 2 == 0 ? "second" : expected)
          << KeyName(i);
    }
    if (change == Change::kVersionsKept) {
      EXPECT_TRUE(absl::IsNotFound(engine_->GetVersion(KeyName(0), 1).status()));
    } else {
      ASSERT_OK_AND_ASSIGN(Record older, engine_->GetVersion(KeyName(1), 2));
      EXPECT_EQ(older.value, "first-1");
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
  ASSERT_OK(Open());
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
  const uint64_t one_more = header.entry_count + 1;
  std::memcpy(twice.data() + offsetof(format::IndexSnapshotHeader, entry_count), &one_more,
              sizeof(one_more));
  const uint64_t more_history = header.history_count + first.history_count;
  std::memcpy(twice.data() + offsetof(format::IndexSnapshotHeader, history_count), &more_history,
              sizeof(more_history));
  const uint64_t twice_sum = XXH3_64bits(twice.data(), twice.size() - sizeof(uint64_t));
  std::memcpy(twice.data() + twice.size() - sizeof(twice_sum), &twice_sum, sizeof(twice_sum));
  const std::vector<Case> cases = {
      {"a key twice", twice, "repeats a key"},
      {"a flipped byte", damaged(good.size() / 2, "\x5a", /*resum=*/false), "checksum mismatch"},
      {"cut short", good.substr(0, good.size() - 100), "checksum mismatch"},
      {"empty", "", "truncated"},
      {"an entry count past the file",
       damaged(offsetof(format::IndexSnapshotHeader, entry_count), u64(uint64_t{1} << 40), true),
       "counts larger than the file"},
      {"one entry too many",
       damaged(offsetof(format::IndexSnapshotHeader, entry_count), u64(header.entry_count + 1),
               true),
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
// from it followed by writes and a crash loses no acknowledged write.
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
  EXPECT_EQ(engine_->GetStats().recovered_from_snapshot, 0u);
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(test::GetOrStatus(engine_.get(), KeyName(i)), i % 3 == 0 ? "after" : "before");
  }
}

}  // namespace
}  // namespace logkv::engine
