// Older versions (versions_kept > 1): the chains that hold their locations
// (VersionChains), and the versions a store serves against a model of what
// it was told, across overwrites, deletes, expiry, compaction, clean
// restarts (hint files), restarts after a crash with and without hint files,
// and a crash in the middle of a compaction. No test here looks at the clock.
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/engine.h"
#include "engine/version_chains.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::GetOrStatus;
using test::Random;

// ---- VersionChains ------------------------------------------------------------------

RecordLocation Loc(uint32_t n) { return RecordLocation{n, n * 8, 16 + n}; }

std::vector<RecordLocation> Chain(const VersionChains& chains, uint32_t entry_id) {
  std::vector<RecordLocation> out;
  chains.ForEach(entry_id, [&](uint32_t node) { out.push_back(chains.location(node)); });
  return out;
}

TEST(VersionChainsTest, PushFrontKeepsNewestFirstAndTruncateDropsTheOldest) {
  VersionChains chains;
  EXPECT_EQ(chains.head(0), VersionChains::kNone);
  EXPECT_EQ(chains.head(1000), VersionChains::kNone);
  chains.PushFront(7, Loc(1));
  chains.PushFront(7, Loc(2));
  chains.PushFront(7, Loc(3));
  chains.PushFront(3, Loc(10));
  EXPECT_EQ(Chain(chains, 7), (std::vector<RecordLocation>{Loc(3), Loc(2), Loc(1)}));
  EXPECT_EQ(Chain(chains, 3), (std::vector<RecordLocation>{Loc(10)}));
  EXPECT_TRUE(Chain(chains, 5).empty());
  EXPECT_EQ(chains.nodes(), 4u);

  std::vector<RecordLocation> dropped;
  EXPECT_EQ(chains.Truncate(7, 1, [&](const RecordLocation& l) { dropped.push_back(l); }), 2u);
  EXPECT_EQ(dropped, (std::vector<RecordLocation>{Loc(2), Loc(1)}));
  EXPECT_EQ(Chain(chains, 7), (std::vector<RecordLocation>{Loc(3)}));
  EXPECT_EQ(chains.Truncate(7, 5, [](const RecordLocation&) { FAIL(); }), 0u);
  EXPECT_EQ(chains.Truncate(99, 0, [](const RecordLocation&) { FAIL(); }), 0u);
  EXPECT_EQ(chains.Truncate(7, 0, [](const RecordLocation&) {}), 1u);
  EXPECT_EQ(chains.head(7), VersionChains::kNone);
  EXPECT_EQ(chains.nodes(), 1u);
  EXPECT_EQ(Chain(chains, 3), (std::vector<RecordLocation>{Loc(10)}));
}

TEST(VersionChainsTest, PushBackBuildsOldestLastAndLocationsCanMove) {
  VersionChains chains;
  chains.ReserveHeads(4);
  uint32_t tail = VersionChains::kNone;
  chains.PushBack(2, Loc(5), &tail);
  chains.PushBack(2, Loc(4), &tail);
  chains.PushBack(2, Loc(3), &tail);
  EXPECT_EQ(Chain(chains, 2), (std::vector<RecordLocation>{Loc(5), Loc(4), Loc(3)}));
  // Compaction moves a kept record: the node's location is updated in place.
  const uint32_t second = chains.next(chains.head(2));
  chains.location(second) = Loc(40);
  EXPECT_EQ(Chain(chains, 2), (std::vector<RecordLocation>{Loc(5), Loc(40), Loc(3)}));
  EXPECT_EQ(chains.Count(2), 3u);
}

TEST(VersionChainsTest, FreedNodesAreReusedSoMemoryFollowsTheVersionsKept) {
  VersionChains chains;
  // Many keys take two older versions each, then give them up, again and
  // again: the node slab stops growing after the first pass.
  constexpr uint32_t kKeys = 20000;
  size_t bytes_after_first_pass = 0;
  for (int pass = 0; pass < 4; ++pass) {
    for (uint32_t id = 0; id < kKeys; ++id) {
      chains.PushFront(id, Loc(id));
      chains.PushFront(id, Loc(id + 1));
    }
    EXPECT_EQ(chains.nodes(), 2u * kKeys);
    for (uint32_t id = 0; id < kKeys; ++id) chains.Truncate(id, 0, [](const RecordLocation&) {});
    EXPECT_EQ(chains.nodes(), 0u);
    if (pass == 0) bytes_after_first_pass = chains.bytes();
  }
  EXPECT_EQ(chains.bytes(), bytes_after_first_pass);
  // A head slot per id and 16 bytes per node, rounded up to whole chunks.
  EXPECT_LE(chains.bytes(), kKeys * (4 + 2 * 16) * 2 + (64 << 10));
}

// ---- A store's versions against a model ---------------------------------------------

std::string KeyName(int i) { return absl::StrFormat("key-%04d", i); }

// What each key's current life holds: its puts since it was created, deleted
// or expired, so that put n is version n.
struct Life {
  std::vector<std::string> values;
  std::vector<uint64_t> timestamps;
  std::vector<bool> ttl;      // each put's: whether it was written with a TTL
  std::vector<bool> expired;  // each put's: its TTL ran out (an older version is then gone)
  bool expiring = false;  // the newest put has a TTL that the test lets run out
};

class VersionsTest : public test::EngineFixture<::testing::TestWithParam<uint32_t>> {
 protected:
  uint32_t kept() const { return GetParam(); }

  // One round: each key is deleted, put (some with a TTL), or left alone.
  void WriteRound(Random* random, int round) {
    for (int i = 0; i < keys_; ++i) {
      const std::string key = KeyName(i);
      Life& life = model_[key];
      const uint64_t dice = random->Uniform(100);
      if (dice < 8) {
        absl::StatusOr<WriteResult> deleted = engine_->Delete(key);
        if (life.values.empty()) {
          EXPECT_TRUE(absl::IsNotFound(deleted.status())) << key << " " << deleted.status();
        } else {
          ASSERT_OK(deleted.status());
          EXPECT_EQ(deleted->version, life.values.size() + 1) << key;
        }
        life = Life{};
      } else if (dice < 75) {
        const bool ttl = dice < 12;
        const std::string value =
            absl::StrCat(key, "@", round, ":", random->Bytes(60 + random->Uniform(200)));
        WriteOptions options;
        if (ttl) options.ttl_ms = 1000;
        ASSERT_OK_AND_ASSIGN(WriteResult written, engine_->Put(key, value, options));
        life.values.push_back(value);
        life.timestamps.push_back(written.timestamp);
        life.ttl.push_back(ttl);
        life.expired.push_back(false);
        life.expiring = ttl;
        ASSERT_EQ(written.version, life.values.size()) << key;
      }
    }
  }

  // Lets every TTL run out: those keys' lives end. Until the sweeper turns
  // them into tombstones they still count as keys in the statistics.
  void ExpireAll(bool sweep) {
    clock_.AdvanceMs(2000);
    for (auto& [key, life] : model_) {
      if (life.expiring) life = Life{};
      for (size_t i = 0; i < life.ttl.size(); ++i) life.expired[i] = life.expired[i] || life.ttl[i];
    }
    if (sweep) engine_->SweepExpiredNow();
    swept_ = sweep;
  }
  void Sweep() {
    engine_->SweepExpiredNow();
    swept_ = true;
  }

  void Check(const std::string& when) {
    SCOPED_TRACE(when);
    uint64_t versions = 0;
    for (int i = 0; i < keys_; ++i) {
      const std::string key = KeyName(i);
      const Life& life = model_[key];
      const uint64_t n = life.values.size();
      if (n == 0) {
        ASSERT_EQ(GetOrStatus(engine_.get(), key), "NOT_FOUND") << key;
        EXPECT_TRUE(absl::IsNotFound(engine_->GetVersion(key, 1).status())) << key;
        continue;
      }
      ASSERT_OK_AND_ASSIGN(Record current, engine_->Get(key));
      ASSERT_EQ(current.value, life.values.back()) << key;
      ASSERT_EQ(current.meta.version, n) << key;
      for (uint64_t version = 1; version <= n + 1; ++version) {
        absl::StatusOr<Record> record = engine_->GetVersion(key, version);
        if (version <= n && version + kept() > n && !life.expired[version - 1]) {
          ASSERT_OK(record.status()) << key << " version " << version;
          EXPECT_EQ(record->value, life.values[version - 1]) << key << " version " << version;
          EXPECT_EQ(record->meta.version, version) << key;
          EXPECT_EQ(record->meta.timestamp, life.timestamps[version - 1]) << key;
        } else {
          EXPECT_TRUE(absl::IsNotFound(record.status()))
              << key << " version " << version << ": " << record.status();
        }
      }
      versions += std::min<uint64_t>(n, kept());
    }
    if (!swept_) return;
    // A restart counts an expired key as a key until the sweeper runs.
    engine_->SweepExpiredNow();
    EXPECT_EQ(engine_->GetStats().versions, versions);
    EXPECT_EQ(engine_->CountPrefix("key-").versions, versions);
  }

  // Opens a copy of the store's directory taken now, as a crash would leave
  // it (the active segments unsealed, without hint files).
  absl::Status CrashAndOpen(bool remove_hints) {
    if (absl::Status status = engine_->Sync(); !status.ok()) return status;
    const std::string copy = dir_.Subdir(absl::StrCat("crash-", crashes_++));
    test::CopyDirectory(options_.data_dir, copy);
    if (absl::Status status = engine_->Close(); !status.ok()) return status;
    engine_.reset();
    if (remove_hints) test::RemoveAllHintFiles(copy);
    options_.data_dir = copy;
    return Open();
  }

  int keys_ = 150;
  std::map<std::string, Life> model_;
  int crashes_ = 0;
  bool swept_ = true;  // no expired key waits for the sweeper
};

TEST_P(VersionsTest, KeptVersionsSurviveCompactionRestartsAndCrashes) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.versions_kept = kept();
  options_.tombstone_grace_ms = 0;
  ASSERT_OK(Open());
  for (int round = 0; round < 18; ++round) {
    Sweep();
    ASSERT_NO_FATAL_FAILURE(WriteRound(&random, round));
    if (round % 4 == 3) ExpireAll(/*sweep=*/round % 8 != 3);
    ASSERT_NO_FATAL_FAILURE(Check(absl::StrCat("round ", round, " written")));
    switch (round % 6) {
      case 0:
        ASSERT_OK(engine_->CompactNow(/*force=*/true));
        break;
      case 1:
        ASSERT_OK(Reopen());
        break;
      case 2:
        ASSERT_OK(engine_->WriteHintsNow());
        ASSERT_OK(CrashAndOpen(/*remove_hints=*/false));
        break;
      case 3:
        ASSERT_OK(CrashAndOpen(/*remove_hints=*/true));
        break;
      case 4:
        ASSERT_OK(engine_->CompactNow(/*force=*/false));
        ASSERT_OK(Reopen());
        break;
      case 5:
        ASSERT_OK(engine_->CompactNow(/*force=*/true));
        ASSERT_OK(CrashAndOpen(/*remove_hints=*/true));
        break;
    }
    ASSERT_NO_FATAL_FAILURE(Check(absl::StrCat("round ", round, " after step ", round % 6)));
  }
}

// Start-up groups the older puts by entry (a counting sort on the entry
// id) before it builds each key's history: with 6,000 keys in one shard,
// every key's versions come back from hint files and by a scan. (A sort of
// the low 12 bits of the id only, which groups the ids below 4,096, fails
// here; the rest of this file's stores have 150 keys.)
TEST_P(VersionsTest, TheVersionsOfManyKeysSurviveARestartAndACrash) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.versions_kept = kept();
  options_.shard_count = 1;
  keys_ = 6000;
  ASSERT_OK(Open());
  for (int round = 0; round < 4; ++round) ASSERT_NO_FATAL_FAILURE(WriteRound(&random, round));
  ASSERT_NO_FATAL_FAILURE(Check("written"));
  ASSERT_OK(Reopen());
  ASSERT_NO_FATAL_FAILURE(Check("after a restart, from hint files"));
  ASSERT_NO_FATAL_FAILURE(WriteRound(&random, 4));
  ASSERT_OK(CrashAndOpen(/*remove_hints=*/true));
  ASSERT_NO_FATAL_FAILURE(Check("after a crash, scanned"));
}

// Start-up looks each record's key up a dozen records after it reads the
// record (prefetching what the lookup reads in between), so records of one
// key that come close together, several writes of a key in a row, are all in
// flight at once. They must come out as written, whether the segments are
// read through hint files or scanned.
TEST_P(VersionsTest, WritesOfOneKeyInARowSurviveRestartsAndCrashes) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.versions_kept = kept();
  ASSERT_OK(Open());
  for (int round = 0; round < 9; ++round) {
    for (int burst = 0; burst < 300; ++burst) {
      const std::string key = KeyName(static_cast<int>(random.Uniform(keys_)));
      Life& life = model_[key];
      const uint64_t writes = 1 + random.Uniform(8);
      for (uint64_t w = 0; w < writes; ++w) {
        if (random.Percent(10)) {
          absl::StatusOr<WriteResult> deleted = engine_->Delete(key);
          if (life.values.empty()) {
            EXPECT_TRUE(absl::IsNotFound(deleted.status())) << key << " " << deleted.status();
          } else {
            ASSERT_OK(deleted.status());
          }
          life = Life{};
          continue;
        }
        const std::string value = absl::StrCat(key, "@", round, ".", burst, ".", w);
        ASSERT_OK_AND_ASSIGN(WriteResult written, engine_->Put(key, value));
        life.values.push_back(value);
        life.timestamps.push_back(written.timestamp);
        life.ttl.push_back(false);
        life.expired.push_back(false);
        ASSERT_EQ(written.version, life.values.size()) << key;
      }
    }
    ASSERT_NO_FATAL_FAILURE(Check(absl::StrCat("round ", round, " written")));
    switch (round % 3) {
      case 0:
        ASSERT_OK(Reopen());
        break;
      case 1:
        ASSERT_OK(engine_->WriteHintsNow());
        ASSERT_OK(CrashAndOpen(/*remove_hints=*/false));
        break;
      case 2:
        ASSERT_OK(CrashAndOpen(/*remove_hints=*/true));
        break;
    }
    ASSERT_NO_FATAL_FAILURE(Check(absl::StrCat("round ", round, " after step ", round % 3)));
  }
}

// A crash after a compaction made its outputs final and before it removed
// the segments it copied from leaves every record twice: once in a victim
// and once in an output. A crash before the outputs were renamed leaves a
// .compacting file. Either way the versions are those of before.
TEST_P(VersionsTest, ACrashInTheMiddleOfACompactionKeepsEveryVersion) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  Random random(seed);
  options_.versions_kept = kept();
  ASSERT_OK(Open());
  for (int round = 0; round < 8; ++round) ASSERT_NO_FATAL_FAILURE(WriteRound(&random, round));
  ASSERT_OK(engine_->Sync());
  ASSERT_OK(engine_->WriteHintsNow());
  const std::string before = dir_.Subdir("before");
  test::CopyDirectory(options_.data_dir, before);
  std::set<std::string> files_before;
  for (const std::string& path : test::ListAllSegmentFiles(options_.data_dir)) {
    files_before.insert(path);
  }
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  ASSERT_NO_FATAL_FAILURE(Check("compacted"));
  std::vector<std::string> outputs;  // paths relative to the data directory
  for (const std::string& path : test::ListAllSegmentFiles(options_.data_dir)) {
    if (!files_before.contains(path)) outputs.push_back(path.substr(options_.data_dir.size()));
  }
  ASSERT_FALSE(outputs.empty());
  const std::string compacted = options_.data_dir;
  ASSERT_OK(engine_->Close());
  engine_.reset();

  for (const bool renamed : {true, false}) {
    for (const bool hints : {true, false}) {
      SCOPED_TRACE(absl::StrCat(renamed ? "outputs final" : "outputs unfinished",
                                hints ? ", hint files" : ", no hint files"));
      const std::string dir = dir_.Subdir(absl::StrCat("mid-", renamed, hints));
      test::CopyDirectory(before, dir);
      for (const std::string& output : outputs) {
        const std::string to = dir + output + (renamed ? "" : ".compacting");
        test::WriteFileBytes(to, test::ReadFileBytes(compacted + output));
        const std::string hint = output.substr(0, output.size() - 4) + ".hint";
        if (renamed && hints) {
          test::WriteFileBytes(dir + hint, test::ReadFileBytes(compacted + hint));
        }
      }
      if (!hints) test::RemoveAllHintFiles(dir);
      options_.data_dir = dir;
      ASSERT_OK(Open());
      ASSERT_NO_FATAL_FAILURE(Check("opened"));
      ASSERT_OK(engine_->CompactNow(/*force=*/true));
      ASSERT_NO_FATAL_FAILURE(Check("compacted again"));
      ASSERT_OK(Reopen());
      ASSERT_NO_FATAL_FAILURE(Check("reopened"));
      const Stats stats = engine_->GetStats();
      EXPECT_LE(stats.dead_bytes, stats.log_bytes);
      ASSERT_OK(engine_->Close());
      engine_.reset();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(VersionsKept, VersionsTest, ::testing::Values(2u, 3u, 5u),
                         [](const ::testing::TestParamInfo<uint32_t>& info) {
                           return absl::StrCat("Kept", info.param);
                         });

}  // namespace
}  // namespace logkv::engine
