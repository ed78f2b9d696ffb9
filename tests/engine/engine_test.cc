// Behaviour of the public Engine API, one feature per test: reads and writes,
// limits, compare-and-set, versions, TTL, scans, the change feed, reopening,
// asynchronous writes, statistics, Merkle summaries and the directory lock.
#include "engine/engine.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <sys/stat.h>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/file_system.h"
#include "engine/log_format.h"
#include "gtest/gtest.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::GetOrStatus;
using test::LogCapture;
using test::ManualClock;
using test::ScanAll;
using test::ScopedTempDir;
using test::TestOptions;

// A hybrid logical clock timestamp for replicated writes in tests.
uint64_t Timestamp(int64_t unix_ms, uint16_t logical = 0) {
  return (static_cast<uint64_t>(unix_ms) << 16) | logical;
}

class EngineTest : public test::EngineFixture<> {
 protected:
  std::string Get(absl::string_view key) { return GetOrStatus(engine_.get(), key); }

  // Keys named prefix0, prefix1, ... that the engine puts in shard, count of
  // them, in name order.
  std::vector<std::string> KeysInShard(absl::string_view prefix, uint32_t shard, size_t count) {
    std::vector<std::string> keys;
    for (int i = 0; keys.size() < count && i < 100'000; ++i) {
      std::string key = absl::StrCat(prefix, i);
      if (engine_->ShardOf(key) == shard) keys.push_back(std::move(key));
    }
    return keys;
  }

};

// ---- Reads and writes ------------------------------------------------------------

TEST_F(EngineTest, PutGetOverwriteDelete) {
  ASSERT_OK(Open());

  ASSERT_OK_AND_ASSIGN(WriteResult first, engine_->Put("alpha", "one"));
  EXPECT_EQ(first.version, 1u);
  EXPECT_TRUE(first.applied);
  EXPECT_GT(first.timestamp, 0u);
  EXPECT_GT(first.sequence, 0u);
  EXPECT_EQ(first.shard, engine_->ShardOf("alpha"));

  ASSERT_OK_AND_ASSIGN(Record record, engine_->Get("alpha"));
  EXPECT_EQ(record.value, "one");
  EXPECT_EQ(record.meta.version, 1u);
  EXPECT_EQ(record.meta.timestamp, first.timestamp);
  EXPECT_EQ(record.meta.expiry_unix_ms, 0);

  ASSERT_OK_AND_ASSIGN(WriteResult second, engine_->Put("alpha", "two"));
  EXPECT_EQ(second.version, 2u);
  EXPECT_GT(second.timestamp, first.timestamp);
  EXPECT_GT(second.sequence, first.sequence);
  EXPECT_EQ(Get("alpha"), "two");

  // The allocation-free form reuses the caller's string.
  std::string value = "stale contents that must be replaced";
  ValueMeta meta;
  ASSERT_OK(engine_->Get("alpha", &value, &meta));
  EXPECT_EQ(value, "two");
  EXPECT_EQ(meta.version, 2u);
  EXPECT_EQ(meta.timestamp, second.timestamp);

  ASSERT_OK_AND_ASSIGN(WriteResult deleted, engine_->Delete("alpha"));
  EXPECT_TRUE(deleted.applied);
  EXPECT_GT(deleted.sequence, second.sequence);
  EXPECT_EQ(Get("alpha"), "NOT_FOUND");
  EXPECT_STATUS_CODE(engine_->Get("alpha", &value, &meta), absl::StatusCode::kNotFound);
  EXPECT_EQ(Get("never-written"), "NOT_FOUND");
}

// Disk blocks of the active segment: a few keys hold about a megabyte, not
// the whole segment; a segment filled past its first reservation reserves more
// and every record reads back, before and after a reopen.
TEST_F(EngineTest, ActiveSegmentReservesDiskBlocksAsItFills) {
  options_.shard_count = 1;
  options_.segment_bytes = 64 << 20;
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("a", "b"));
  auto allocated = [&] {
    struct stat st;
    const std::string path = options_.data_dir + "/shard-000/000000000001.log";
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return static_cast<uint64_t>(st.st_blocks) * 512;
  };
  EXPECT_LE(allocated(), 2u << 20) << "a tiny store reserves a megabyte, not the segment";
  const std::string value(1000, 'v');
  for (int i = 0; i < 5000; ++i) ASSERT_OK(engine_->Put(absl::StrCat("key-", i), value));
  EXPECT_GE(allocated(), 5000u * 1000);
  EXPECT_LT(allocated(), 32u << 20);
  ASSERT_OK(Reopen());
  for (int i = 0; i < 5000; ++i) EXPECT_EQ(GetOrStatus(engine_.get(), absl::StrCat("key-", i)), value);
  EXPECT_EQ(GetOrStatus(engine_.get(), "a"), "b");
}

// WritableFile::Prepare readies appends (blocks and pages) and changes
// nothing a reader sees: not the size, not the bytes appended, not the zeros
// after them; appends after it read back; past the capacity it stops there.
TEST_F(EngineTest, PreparedAppendsChangeNothingButTheReservation) {
  const std::string path = dir_.Subdir("prepare") + "/file";
  ASSERT_OK(engine::DefaultFileSystem()->CreateDir(dir_.Subdir("prepare")));
  constexpr uint64_t kCapacity = 8 << 20;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<engine::WritableFile> file,
                       engine::DefaultFileSystem()->NewWritableFile(path, kCapacity));
  const std::string first(5000, 'a');  // ends inside a page
  ASSERT_OK(file->Append(first));
  file->Prepare(3u << 20);  // past the first reservation step
  EXPECT_EQ(file->Size(), first.size());
  EXPECT_GE(file->Reserved(), first.size() + (3u << 20));
  ASSERT_OK_AND_ASSIGN(absl::string_view read, file->Read(0, first.size(), nullptr));
  EXPECT_EQ(read, first);
  ASSERT_OK_AND_ASSIGN(absl::string_view after, file->Read(first.size(), 100000, nullptr));
  EXPECT_EQ(after, std::string(100000, '\0'));
  std::string appended;
  for (int i = 0; i < 300; ++i) appended += absl::StrCat("record-", i, std::string(9000, 'x'));
  ASSERT_OK(file->Append(appended));
  file->Prepare(kCapacity * 2);  // clamped to the capacity
  EXPECT_EQ(file->Reserved(), kCapacity);
  EXPECT_EQ(file->Size(), first.size() + appended.size());
  ASSERT_OK(file->Sync());
  ASSERT_OK(file->Close());
  ASSERT_OK_AND_ASSIGN(std::string whole, engine::DefaultFileSystem()->ReadFile(path));
  EXPECT_EQ(whole, first + appended) << "closing trims the file to its data";
}

TEST_F(EngineTest, EmptyValuesAndBinaryBytesRoundTrip) {
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("empty", ""));
  const std::string binary_key("k\0e\xffy", 5);
  const std::string binary_value("\0\x01\x02\xfe\xff\0", 6);
  ASSERT_OK(engine_->Put(binary_key, binary_value));

  ASSERT_OK_AND_ASSIGN(Record empty, engine_->Get("empty"));
  EXPECT_EQ(empty.value, "");
  EXPECT_EQ(Get(binary_key), binary_value);
  // A key that is a prefix of the binary key is a different key.
  EXPECT_EQ(Get(std::string("k\0e", 3)), "NOT_FOUND");

  ASSERT_OK(Reopen());
  EXPECT_EQ(Get("empty"), "");
  EXPECT_EQ(Get(binary_key), binary_value);
}

// Prefetch is a hint: any keys (missing, empty, too long, repeated, more
// than a batch) change nothing, on every shard, also while another thread
// writes (the index's tables grow and move meanwhile).
TEST_F(EngineTest, PrefetchChangesNothingWhateverTheKeys) {
  options_.shard_count = 4;
  options_.max_key_bytes = 40;
  ASSERT_OK(Open());
  std::vector<std::string> keys;
  for (int i = 0; i < 500; ++i) keys.push_back(absl::StrCat("prefetched-", i));
  for (size_t i = 0; i < keys.size(); i += 2) ASSERT_OK(engine_->Put(keys[i], keys[i]));
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      ASSERT_OK(engine_->Put(absl::StrCat("written-", i), "w"));
    }
  });
  // The keys that are not keys first (a batch's first 64 are looked at).
  const std::string too_long(41, 'k');  // over max_key_bytes
  std::vector<absl::string_view> views = {"", too_long, keys[0], keys[0], "missing"};
  views.insert(views.end(), keys.begin(), keys.end());
  for (int round = 0; round < 200; ++round) {
    engine_->Prefetch(views);
    engine_->Prefetch(absl::MakeConstSpan(views).subspan((round * 7) % views.size()));
    engine_->Prefetch({});
  }
  stop = true;
  writer.join();
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(Get(keys[i]), i % 2 == 0 ? keys[i] : "NOT_FOUND") << keys[i];
  }
  ASSERT_OK(engine_->Close());
  engine_->Prefetch(views);  // closed: nothing to load
}

TEST_F(EngineTest, KeyAndValueLimitsAreEnforcedWithTheLimitNamed) {
  options_.max_key_bytes = 40;
  options_.max_value_bytes = 1000;
  ASSERT_OK(Open());

  EXPECT_STATUS_CODE(engine_->Put("", "value"), absl::StatusCode::kInvalidArgument);
  EXPECT_STATUS_CODE(engine_->Delete(""), absl::StatusCode::kInvalidArgument);

  const std::string longest_key(40, 'k');
  const std::string too_long_key(41, 'k');
  EXPECT_OK(engine_->Put(longest_key, "fits"));
  absl::Status key_status = engine_->Put(too_long_key, "value").status();
  EXPECT_EQ(key_status.code(), absl::StatusCode::kInvalidArgument) << key_status;
  EXPECT_TRUE(absl::StrContains(key_status.message(), "max_key_bytes") ||
              absl::StrContains(key_status.message(), "40"))
      << "the error should name the key limit: " << key_status;
  EXPECT_STATUS_CODE(engine_->Delete(too_long_key), absl::StatusCode::kInvalidArgument);

  const std::string largest_value(1000, 'v');
  const std::string too_large_value(1001, 'v');
  EXPECT_OK(engine_->Put("big", largest_value));
  absl::Status value_status = engine_->Put("bigger", too_large_value).status();
  EXPECT_EQ(value_status.code(), absl::StatusCode::kInvalidArgument) << value_status;
  EXPECT_TRUE(absl::StrContains(value_status.message(), "max_value_bytes") ||
              absl::StrContains(value_status.message(), "1000"))
      << "the error should name the value limit: " << value_status;

  // Refused writes leave nothing behind.
  EXPECT_EQ(Get(longest_key), "fits");
  EXPECT_EQ(Get("big"), largest_value);
  EXPECT_EQ(Get("bigger"), "NOT_FOUND");
}

TEST_F(EngineTest, OpenRefusesOptionsBeyondHardLimits) {
  // Each case breaks one documented constraint of Options.
  struct Case {
    const char* what;
    void (*apply)(Options&);
  };
  const Case cases[] = {
      {"max_key_bytes above 65535", [](Options& o) { o.max_key_bytes = 65536; }},
      {"max_value_bytes above 512 MiB", [](Options& o) { o.max_value_bytes = (512u << 20) + 1; }},
      {"versions_kept of 0", [](Options& o) { o.versions_kept = 0; }},
      {"merkle_leaves not a power of two", [](Options& o) { o.merkle_leaves = 12; }},
      {"merkle_partitions not a power of two", [](Options& o) { o.merkle_partitions = 6; }},
      {"recovery_sort_batch_records of 0", [](Options& o) { o.recovery_sort_batch_records = 0; }},
      {"recovery_sort_batch_records above 2^30",
       [](Options& o) { o.recovery_sort_batch_records = (1ull << 30) + 1; }},
      {"recovery_sort_batch_key_bytes of 0",
       [](Options& o) { o.recovery_sort_batch_key_bytes = 0; }},
      {"recovery_sort_batch_key_bytes above 2^36",
       [](Options& o) { o.recovery_sort_batch_key_bytes = (1ull << 36) + 1; }},
      {"maintenance_nice below 0", [](Options& o) { o.maintenance_nice = -1; }},
      {"maintenance_nice above 19", [](Options& o) { o.maintenance_nice = 20; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Options options = options_;
    c.apply(options);
    EXPECT_STATUS_CODE(Engine::Open(options), absl::StatusCode::kInvalidArgument);
  }
}

// ---- Background threads ---------------------------------------------------------------

// The nice value of this process's thread named `name`, from /proc (nullopt
// while there is none).
std::optional<int> NiceOfThread(const std::string& name) {
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string thread_name;
    if (!std::getline(comm, thread_name) || thread_name != name) continue;
    std::ifstream stat_file(task.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
    // Fields after the name's closing parenthesis: state is the 3rd, nice the 19th.
    std::vector<std::string> fields = absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
    int nice = 0;
    if (fields.size() > 16 && absl::SimpleAtoi(fields[16], &nice)) return nice;
  }
  return std::nullopt;
}

std::optional<int> AwaitNiceOfThread(const std::string& name) {
  for (int i = 0; i < 500; ++i) {  // the thread names itself as it starts
    if (std::optional<int> nice = NiceOfThread(name)) return nice;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return std::nullopt;
}

TEST_F(EngineTest, MaintenanceThreadRunsAtLowerPriority) {
  const int process_nice = getpriority(PRIO_PROCESS, 0);
  options_.background_threads = true;
  options_.fsync = FsyncPolicy::kInterval;
  options_.maintenance_nice = 7;
  ASSERT_OK(Open());
  std::optional<int> nice = AwaitNiceOfThread("maintenance");
  ASSERT_TRUE(nice.has_value()) << "no thread named maintenance";
  EXPECT_EQ(*nice, std::min(19, process_nice + 7));
  // The other engine threads keep the process's priority.
  std::optional<int> sync_nice = AwaitNiceOfThread("sync-0");
  ASSERT_TRUE(sync_nice.has_value()) << "no thread named sync-0";
  EXPECT_EQ(*sync_nice, process_nice);
  options_.maintenance_nice = 0;
  ASSERT_OK(Reopen());
  nice = AwaitNiceOfThread("maintenance");
  ASSERT_TRUE(nice.has_value());
  EXPECT_EQ(*nice, process_nice);
}

// ---- Compare-and-set ----------------------------------------------------------------

TEST_F(EngineTest, IfVersionIsCompareAndSet) {
  ASSERT_OK(Open());
  WriteOptions absent;
  absent.if_version = 0;
  WriteOptions at_one;
  at_one.if_version = 1;
  WriteOptions at_two;
  at_two.if_version = 2;

  ASSERT_OK_AND_ASSIGN(WriteResult created, engine_->Put("cas", "first", absent));
  EXPECT_EQ(created.version, 1u);
  EXPECT_STATUS_CODE(engine_->Put("cas", "second", absent), absl::StatusCode::kFailedPrecondition);
  EXPECT_STATUS_CODE(engine_->Put("cas", "second", at_two), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Get("cas"), "first") << "a refused compare-and-set must not write";

  ASSERT_OK_AND_ASSIGN(WriteResult updated, engine_->Put("cas", "second", at_one));
  EXPECT_EQ(updated.version, 2u);
  EXPECT_EQ(Get("cas"), "second");

  EXPECT_STATUS_CODE(engine_->Delete("cas", at_one), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Get("cas"), "second");
  EXPECT_OK(engine_->Delete("cas", at_two));
  EXPECT_EQ(Get("cas"), "NOT_FOUND");

  // After a delete the key is absent again: version 0 is what matches.
  EXPECT_STATUS_CODE(engine_->Put("cas", "third", at_one), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK_AND_ASSIGN(WriteResult recreated, engine_->Put("cas", "third", absent));
  EXPECT_EQ(recreated.version, 1u);
}

// ---- Versions ---------------------------------------------------------------------------

TEST_F(EngineTest, GetVersionReadsTheLastVersionsKept) {
  options_.versions_kept = 3;
  ASSERT_OK(Open());
  for (int v = 1; v <= 5; ++v) {
    ASSERT_OK_AND_ASSIGN(WriteResult result, engine_->Put("history", absl::StrCat("value-", v)));
    ASSERT_EQ(result.version, static_cast<uint64_t>(v));
  }
  for (uint64_t v = 3; v <= 5; ++v) {
    SCOPED_TRACE(absl::StrCat("version ", v));
    ASSERT_OK_AND_ASSIGN(Record record, engine_->GetVersion("history", v));
    EXPECT_EQ(record.value, absl::StrCat("value-", v));
    EXPECT_EQ(record.meta.version, v);
  }
  EXPECT_STATUS_CODE(engine_->GetVersion("history", 2), absl::StatusCode::kNotFound);
  EXPECT_STATUS_CODE(engine_->GetVersion("history", 1), absl::StatusCode::kNotFound);
  EXPECT_STATUS_CODE(engine_->GetVersion("history", 6), absl::StatusCode::kNotFound);
  EXPECT_STATUS_CODE(engine_->GetVersion("never-written", 1), absl::StatusCode::kNotFound);
  EXPECT_EQ(Get("history"), "value-5");

  // A delete ends the key's life; the next put starts again at version 1.
  ASSERT_OK(engine_->Delete("history"));
  EXPECT_EQ(Get("history"), "NOT_FOUND");
  ASSERT_OK_AND_ASSIGN(WriteResult reborn, engine_->Put("history", "reborn"));
  EXPECT_EQ(reborn.version, 1u);
  ASSERT_OK_AND_ASSIGN(Record first, engine_->GetVersion("history", 1));
  EXPECT_EQ(first.value, "reborn");
}

// An older version written with a TTL is gone at its expiry, as the newest
// would be: overwriting a key does not make its earlier value outlive it.
TEST_F(EngineTest, AnOlderVersionExpiresAtItsOwnTime) {
  options_.versions_kept = 3;
  ASSERT_OK(Open());
  WriteOptions one_second;
  one_second.ttl_ms = 1000;
  ASSERT_OK(engine_->Put("token", "secret", one_second));
  ASSERT_OK(engine_->Put("token", "public"));
  ASSERT_OK_AND_ASSIGN(Record kept, engine_->GetVersion("token", 1));
  EXPECT_EQ(kept.value, "secret");
  clock_.AdvanceMs(1001);
  const absl::StatusOr<Record> expired = engine_->GetVersion("token", 1);
  EXPECT_STATUS_CODE(expired, absl::StatusCode::kNotFound);
  EXPECT_EQ(expired.status().message(), "version 1 of key \"token\" has expired");
  ASSERT_OK_AND_ASSIGN(Record newest, engine_->GetVersion("token", 2));
  EXPECT_EQ(newest.value, "public");
}

TEST_F(EngineTest, KeptVersionsSurviveReopenAndCompaction) {
  options_.versions_kept = 3;
  options_.shard_count = 1;
  ASSERT_OK(Open());
  // Filler between the versions spreads them over several segments, so that
  // compaction has old segments to rewrite.
  const std::string filler(2000, 'f');
  for (int v = 1; v <= 5; ++v) {
    ASSERT_OK(engine_->Put("history", absl::StrCat("value-", v)));
    for (int i = 0; i < 20; ++i)
      ASSERT_OK(engine_->Put(absl::StrCat("filler-", v, "-", i), filler));
  }
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    for (uint64_t v = 3; v <= 5; ++v) {
      absl::StatusOr<Record> record = engine_->GetVersion("history", v);
      ASSERT_OK(record);
      EXPECT_EQ(record->value, absl::StrCat("value-", v));
    }
    EXPECT_STATUS_CODE(engine_->GetVersion("history", 2), absl::StatusCode::kNotFound);
  };
  check("before reopen");
  ASSERT_OK(Reopen());
  check("after reopen with hints");
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  check("after forced compaction");
  ASSERT_OK(engine_->Close());
  engine_.reset();
  test::RemoveAllHintFiles(options_.data_dir);
  ASSERT_OK(Open());
  check("after reopen by scanning");
}

// A key is left out of the client counts (and the Merkle summary) by its
// whole prefix, not its first byte, which only lets other keys skip the
// comparison: keys that share a prefix's first byte still count, the
// server's NUL-led prefixes included; an empty prefix leaves out every key.
TEST_F(EngineTest, ExcludedPrefixesAreMatchedWholeNotByFirstByte) {
  options_.merkle_excluded_prefixes = {std::string("\0own/", 5), "own/"};
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put(std::string("\0own/a", 6), "v"));     // excluded
  ASSERT_OK(engine_->Put("own/b", "v"));                      // excluded
  ASSERT_OK(engine_->Put(std::string("\0other", 6), "v"));    // same first byte: counted
  ASSERT_OK(engine_->Put("owner", "v"));                      // same first bytes: counted
  ASSERT_OK(engine_->Put("x", "v"));                          // counted
  Stats stats = engine_->GetStats();
  EXPECT_EQ(stats.keys, 5u);
  EXPECT_EQ(stats.client_keys, 3u);
  // A partition's root (node 1) moves with the keys it summarises only.
  auto root_of = [&](absl::string_view key) {
    return engine_->MerkleNodeHash(engine_->MerklePartitionOf(key), 1);
  };
  const uint64_t excluded_root = root_of("own/c");
  ASSERT_OK(engine_->Put("own/c", "v"));
  EXPECT_EQ(root_of("own/c"), excluded_root);
  const uint64_t counted_root = root_of("ox");
  ASSERT_OK(engine_->Put("ox", "v"));
  EXPECT_NE(root_of("ox"), counted_root);
  ASSERT_OK(engine_->Close());
  engine_.reset();

  options_.data_dir = dir_.Subdir("all-excluded");
  options_.merkle_excluded_prefixes = {""};
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("a", "v"));
  ASSERT_OK(engine_->Put(std::string("\0b", 2), "v"));
  stats = engine_->GetStats();
  EXPECT_EQ(stats.keys, 2u);
  EXPECT_EQ(stats.client_keys, 0u);
}

// Stats::versions counts what the index holds (current versions and the
// older ones kept), so a restart, with or without hint files, gives the same
// figures; client_* leave out the store's own prefixes.
TEST_F(EngineTest, VersionCountsComeFromTheIndexAndSurviveReopen) {
  options_.versions_kept = 3;
  options_.merkle_excluded_prefixes = {"own/"};
  ASSERT_OK(Open());
  for (int v = 1; v <= 5; ++v) ASSERT_OK(engine_->Put("five", absl::StrCat("v", v)));  // 3 kept
  for (int v = 1; v <= 2; ++v) ASSERT_OK(engine_->Put("two", absl::StrCat("v", v)));   // 2 kept
  ASSERT_OK(engine_->Put("gone", "v1"));
  ASSERT_OK(engine_->Put("gone", "v2"));
  ASSERT_OK(engine_->Delete("gone"));  // a delete drops every version
  for (int v = 1; v <= 2; ++v) ASSERT_OK(engine_->Put("own/record", absl::StrCat("v", v)));
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    const Stats stats = engine_->GetStats();
    EXPECT_EQ(stats.keys, 3u);
    EXPECT_EQ(stats.versions, 3u + 2u + 2u);
    EXPECT_EQ(stats.client_keys, 2u);
    EXPECT_EQ(stats.client_versions, 3u + 2u);
    const Engine::PrefixStats five = engine_->CountPrefix("fiv");
    EXPECT_EQ(five.keys, 1u);
    EXPECT_EQ(five.versions, 3u);
    EXPECT_GT(five.record_bytes, 0u);
    const Engine::PrefixStats all = engine_->CountPrefix("");
    EXPECT_EQ(all.keys, stats.keys);
    EXPECT_EQ(all.versions, stats.versions);
    EXPECT_EQ(engine_->CountPrefix("none").keys, 0u);
  };
  check("as written");
  ASSERT_OK(Reopen());
  check("after reopen with hints");
  ASSERT_OK(engine_->Close());
  engine_.reset();
  test::RemoveAllHintFiles(options_.data_dir);
  ASSERT_OK(Open());
  check("after reopen by scanning");
  // Overwrites keep at most versions_kept; the counts follow.
  ASSERT_OK(engine_->Put("two", "v3"));
  ASSERT_OK(engine_->Put("two", "v4"));
  EXPECT_EQ(engine_->GetStats().client_versions, 3u + 3u);
  ASSERT_OK(engine_->Delete("five"));
  EXPECT_EQ(engine_->GetStats().client_versions, 3u);
}

// ---- TTL ------------------------------------------------------------------------------------

TEST_F(EngineTest, TtlKeysVanishAtExpiryAndAreSwept) {
  ASSERT_OK(Open());
  const int64_t start_ms = clock_.NowUnixMs();
  WriteOptions one_second;
  one_second.ttl_ms = 1000;
  ASSERT_OK(engine_->Put("ephemeral", "soon gone", one_second));
  ASSERT_OK(engine_->Put("durable", "stays"));

  ASSERT_OK_AND_ASSIGN(Record record, engine_->Get("ephemeral"));
  EXPECT_EQ(record.meta.expiry_unix_ms, start_ms + 1000);
  EXPECT_EQ(engine_->GetStats().keys, 2u);

  clock_.AdvanceMs(999);
  EXPECT_EQ(Get("ephemeral"), "soon gone");
  // Past the expiry (the exact millisecond of expiry is left to the engine).
  clock_.AdvanceMs(2);
  EXPECT_EQ(Get("ephemeral"), "NOT_FOUND") << "expired keys are invisible before any sweep";
  EXPECT_EQ(Get("durable"), "stays");
  ASSERT_OK_AND_ASSIGN(std::vector<ScanItem> items, ScanAll(engine_.get(), ScanOptions{}));
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].key, "durable");

  EXPECT_EQ(engine_->SweepExpiredNow(), 1u);
  Stats stats = engine_->GetStats();
  EXPECT_EQ(stats.expired_swept, 1u);
  EXPECT_EQ(stats.keys, 1u);
  EXPECT_EQ(engine_->SweepExpiredNow(), 0u) << "a swept key is not swept twice";
  EXPECT_EQ(Get("ephemeral"), "NOT_FOUND");

  // An expired key is absent: it can be created again from version 1.
  WriteOptions create;
  create.if_version = 0;
  ASSERT_OK_AND_ASSIGN(WriteResult recreated, engine_->Put("ephemeral", "again", create));
  EXPECT_EQ(recreated.version, 1u);
}

TEST_F(EngineTest, ExpiryIsKeptAcrossReopenAndAbsoluteExpiryIsHonoured) {
  ASSERT_OK(Open());
  const int64_t start_ms = clock_.NowUnixMs();
  WriteOptions short_ttl;
  short_ttl.ttl_ms = 500;
  WriteOptions long_ttl;
  long_ttl.ttl_ms = 60'000;
  WriteOptions absolute;
  absolute.expiry_unix_ms = start_ms + 5000;
  absolute.ttl_ms = 10;  // overridden by expiry_unix_ms
  ASSERT_OK(engine_->Put("short", "s", short_ttl));
  ASSERT_OK(engine_->Put("long", "l", long_ttl));
  ASSERT_OK(engine_->Put("absolute", "a", absolute));
  ASSERT_OK_AND_ASSIGN(Record record, engine_->Get("absolute"));
  EXPECT_EQ(record.meta.expiry_unix_ms, start_ms + 5000);

  clock_.AdvanceMs(501);
  ASSERT_OK(Reopen());
  EXPECT_EQ(Get("short"), "NOT_FOUND") << "recovery must not resurrect an expired key";
  ASSERT_OK_AND_ASSIGN(Record long_record, engine_->Get("long"));
  EXPECT_EQ(long_record.meta.expiry_unix_ms, start_ms + 60'000);
  EXPECT_EQ(Get("absolute"), "a");

  ASSERT_OK(engine_->Close());
  engine_.reset();
  test::RemoveAllHintFiles(options_.data_dir);
  clock_.AdvanceMs(5000);
  ASSERT_OK(Open());
  EXPECT_EQ(Get("absolute"), "NOT_FOUND");
  EXPECT_EQ(Get("long"), "l");
}

// ---- Scan --------------------------------------------------------------------------------------

class ScanTest : public EngineTest {
 protected:
  void SetUp() override {
    EngineTest::SetUp();
    ASSERT_OK(Open());
    for (int i = 0; i < 60; ++i) Add(absl::StrFormat("user/%03d", i));
    for (int i = 0; i < 25; ++i) Add(absl::StrFormat("item/%03d", i));
    Add("zebra");
    ASSERT_OK(engine_->Delete("user/010"));
    live_.erase("user/010");
  }

  void Add(const std::string& key) {
    ASSERT_OK(engine_->Put(key, "v-" + key));
    live_.insert(key);
  }

  // The live keys that satisfy the filters, in order.
  std::vector<std::string> Expected(absl::string_view prefix, absl::string_view start,
                                    absl::string_view end) const {
    std::vector<std::string> keys;
    for (const std::string& key : live_) {
      if (!absl::StartsWith(key, prefix)) continue;
      if (!start.empty() && key < start) continue;
      if (!end.empty() && key >= end) continue;
      keys.push_back(key);
    }
    return keys;
  }

  static std::vector<std::string> KeysOf(const std::vector<ScanItem>& items) {
    std::vector<std::string> keys;
    for (const ScanItem& item : items) keys.push_back(item.key);
    return keys;
  }

  std::set<std::string> live_;
};

TEST_F(ScanTest, PrefixReturnsMatchingKeysInOrder) {
  ScanOptions options;
  options.prefix = "item/";
  ASSERT_OK_AND_ASSIGN(ScanResult result, engine_->Scan(options));
  EXPECT_EQ(KeysOf(result.items), Expected("item/", "", ""));
  EXPECT_TRUE(result.next_cursor.empty()) << "everything fit in one page";
  for (const ScanItem& item : result.items) {
    EXPECT_EQ(item.value, "v-" + item.key);
    EXPECT_EQ(item.meta.version, 1u);
  }
}

TEST_F(ScanTest, RangeIsStartInclusiveEndExclusive) {
  ScanOptions options;
  options.start_key = "user/005";
  options.end_key = "user/015";
  ASSERT_OK_AND_ASSIGN(ScanResult result, engine_->Scan(options));
  const std::vector<std::string> expected = Expected("", "user/005", "user/015");
  ASSERT_EQ(expected.size(), 9u) << "user/010 is deleted";
  EXPECT_EQ(KeysOf(result.items), expected);
}

TEST_F(ScanTest, CursorPagingReturnsEveryKeyOnceInOrder) {
  for (uint32_t limit : {1u, 7u, 85u, 1000u}) {
    SCOPED_TRACE(absl::StrCat("limit ", limit));
    ScanOptions options;
    options.limit = limit;
    std::vector<std::string> seen;
    size_t pages = 0;
    while (true) {
      ASSERT_LT(pages, 200u) << "the cursor does not advance";
      ASSERT_OK_AND_ASSIGN(ScanResult page, engine_->Scan(options));
      ++pages;
      EXPECT_LE(page.items.size(), limit);
      for (const ScanItem& item : page.items) seen.push_back(item.key);
      if (page.next_cursor.empty()) break;
      options.after_key = page.next_cursor;
    }
    EXPECT_EQ(seen, Expected("", "", "")) << "in order, each key once, none missing";
    if (limit == 7) {
      EXPECT_GE(pages, 13u) << "85 keys need at least 13 pages of 7";
    }
  }
}

TEST_F(ScanTest, CursorPagingWithinPrefixAndRange) {
  ScanOptions options;
  options.prefix = "user/";
  options.start_key = "user/020";
  options.limit = 6;
  ASSERT_OK_AND_ASSIGN(std::vector<ScanItem> items, ScanAll(engine_.get(), options));
  EXPECT_EQ(KeysOf(items), Expected("user/", "user/020", ""));
}

TEST_F(ScanTest, ByteBudgetEndsPagesEarlyWithoutLosingKeys) {
  ScanOptions options;
  options.limit = 1000;
  // Smaller than any key plus value: every page holds exactly one item.
  options.max_bytes = 1;
  std::vector<std::string> seen;
  size_t pages = 0;
  while (true) {
    ASSERT_LT(pages, 1000u) << "the cursor does not advance";
    ASSERT_OK_AND_ASSIGN(ScanResult page, engine_->Scan(options));
    ++pages;
    ASSERT_EQ(page.items.size(), 1u) << "a page always carries at least one item";
    seen.push_back(page.items[0].key);
    if (page.next_cursor.empty()) break;
    EXPECT_EQ(page.next_cursor, page.items[0].key);
    options.after_key = page.next_cursor;
  }
  EXPECT_EQ(seen, Expected("", "", ""));
}

TEST_F(ScanTest, KeysOnlyLeavesValuesEmpty) {
  ScanOptions options;
  options.prefix = "item/";
  options.keys_only = true;
  ASSERT_OK_AND_ASSIGN(ScanResult result, engine_->Scan(options));
  EXPECT_EQ(KeysOf(result.items), Expected("item/", "", ""));
  for (const ScanItem& item : result.items) EXPECT_TRUE(item.value.empty()) << item.key;
}

// ---- Change feed ------------------------------------------------------------------------------

// A reader going through a shard's feed a batch at a time, from before
// the recent events the engine locates at once (a watch resumed from an old
// position), decodes each record about once: each read goes on where the
// last one stopped, not from its segment's beginning. The batches cut by
// the byte budget go on from where they stopped too.
TEST_F(EngineTest, ReadingTheFeedInBatchesDecodesEachRecordOnce) {
  options_.feed_recent_events = 8;
  ASSERT_OK(Open());
  const std::vector<std::string> keys = KeysInShard("batch-", 0, 3000);
  for (const std::string& key : keys) ASSERT_OK(engine_->Put(key, std::string(40, 'v')));
  for (const uint64_t max_bytes : {uint64_t{0}, uint64_t{1000}}) {
    SCOPED_TRACE(absl::StrCat("max_bytes ", max_bytes));
    const uint64_t decoded_before = engine_->GetStats().feed_records_decoded;
    uint64_t after = 0;
    size_t read = 0;
    for (int batch = 0; batch < 10'000; ++batch) {
      ASSERT_OK_AND_ASSIGN(std::vector<Event> events, engine_->ReadEvents(0, after, 50, max_bytes));
      if (events.empty()) break;
      for (const Event& event : events) {
        ASSERT_EQ(event.key, keys[read]);
        ++read;
      }
      after = events.back().sequence;
    }
    ASSERT_EQ(read, keys.size());
    const uint64_t decoded = engine_->GetStats().feed_records_decoded - decoded_before;
    // Once each, and one record past each batch's end at most; reading from
    // each segment's beginning decoded 20,864 and 48,170 records here.
    EXPECT_LT(decoded, 2 * keys.size()) << decoded << " records decoded";
  }
}

TEST_F(EngineTest, ReadEventsReturnsAShardsEventsInOrder) {
  ASSERT_OK(Open());
  const std::vector<std::string> keys = KeysInShard("feed-", 0, 3);
  ASSERT_EQ(keys.size(), 3u);

  struct Expected {
    EventType type;
    std::string key;
    std::string value;
    WriteResult result;
  };
  std::vector<Expected> expected;
  auto put = [&](const std::string& key, const std::string& value) {
    absl::StatusOr<WriteResult> result = engine_->Put(key, value);
    ASSERT_OK(result);
    expected.push_back({EventType::kPut, key, value, *result});
  };
  put(keys[0], "a");
  put(keys[1], "b");
  {
    absl::StatusOr<WriteResult> result = engine_->Delete(keys[0]);
    ASSERT_OK(result);
    expected.push_back({EventType::kDelete, keys[0], "", *result});
  }
  put(keys[2], "c");
  put(keys[1], "d");

  auto check_events = [&](const std::vector<Event>& events, size_t first) {
    ASSERT_EQ(events.size(), expected.size() - first);
    for (size_t i = 0; i < events.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("event ", first + i));
      const Expected& want = expected[first + i];
      EXPECT_EQ(events[i].sequence, want.result.sequence);
      EXPECT_EQ(events[i].type, want.type);
      EXPECT_EQ(events[i].key, want.key);
      EXPECT_EQ(events[i].value, want.value);
      EXPECT_EQ(events[i].meta.timestamp, want.result.timestamp);
      if (want.type == EventType::kPut) {
        EXPECT_EQ(events[i].meta.version, want.result.version);
      }
      if (i > 0) {
        EXPECT_GT(events[i].sequence, events[i - 1].sequence);
      }
    }
  };

  ASSERT_OK_AND_ASSIGN(std::vector<Event> all, engine_->ReadEvents(0, 0, 100));
  check_events(all, 0);
  EXPECT_EQ(engine_->LastSequence(0), expected.back().result.sequence);

  ASSERT_OK_AND_ASSIGN(std::vector<Event> after_second,
                       engine_->ReadEvents(0, expected[1].result.sequence, 100));
  check_events(after_second, 2);

  ASSERT_OK_AND_ASSIGN(std::vector<Event> limited, engine_->ReadEvents(0, 0, 2));
  ASSERT_EQ(limited.size(), 2u);
  EXPECT_EQ(limited[0].sequence, expected[0].result.sequence);
  EXPECT_EQ(limited[1].sequence, expected[1].result.sequence);

  ASSERT_OK_AND_ASSIGN(std::vector<Event> none,
                       engine_->ReadEvents(0, expected.back().result.sequence, 100));
  EXPECT_TRUE(none.empty());

  // The other shard saw none of these writes.
  ASSERT_OK_AND_ASSIGN(std::vector<Event> other, engine_->ReadEvents(1, 0, 100));
  EXPECT_TRUE(other.empty());

  // After a restart the events come from the log rather than from memory.
  ASSERT_OK(Reopen());
  ASSERT_OK_AND_ASSIGN(std::vector<Event> reopened, engine_->ReadEvents(0, 0, 100));
  check_events(reopened, 0);
  EXPECT_EQ(engine_->LastSequence(0), expected.back().result.sequence);
}

// A read tells how far it went: past the Forget records after the last event
// (no events themselves) when it reached the end, so that a feed whose newest
// records are Forgets (delivered hints, purged tombstones) does not read them
// again on every poll; only to the last event when a limit stopped it.
TEST_F(EngineTest, ReadEventsTellsHowFarItReadPastRecordsThatAreNoEvents) {
  ASSERT_OK(Open());
  const std::vector<std::string> keys = KeysInShard("feed-", 0, 3);
  ASSERT_EQ(keys.size(), 3u);
  ASSERT_OK_AND_ASSIGN(WriteResult first, engine_->Put(keys[0], "a"));
  ASSERT_OK_AND_ASSIGN(WriteResult second, engine_->Put(keys[1], "b"));
  ASSERT_OK_AND_ASSIGN(WriteResult third, engine_->Put(keys[2], "c"));
  ASSERT_OK_AND_ASSIGN(bool forgot, engine_->Forget(keys[1], second.timestamp));
  ASSERT_TRUE(forgot);
  ASSERT_OK_AND_ASSIGN(forgot, engine_->Forget(keys[2], third.timestamp));
  ASSERT_TRUE(forgot);
  const uint64_t last = engine_->LastSequence(0);
  ASSERT_EQ(last, third.sequence + 2);  // the two Forgets
  uint64_t through = 0;
  ASSERT_OK_AND_ASSIGN(std::vector<Event> all, engine_->ReadEvents(0, 0, 100, 0, &through));
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(through, last);
  // From the last event on: no event, and the read went past the Forgets.
  through = 0;
  ASSERT_OK_AND_ASSIGN(std::vector<Event> none,
                       engine_->ReadEvents(0, third.sequence, 100, 0, &through));
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(through, last);
  // Stopped by the limit, or by the byte budget: the last event returned.
  ASSERT_OK_AND_ASSIGN(std::vector<Event> limited, engine_->ReadEvents(0, 0, 2, 0, &through));
  ASSERT_EQ(limited.size(), 2u);
  EXPECT_EQ(through, second.sequence);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> budget, engine_->ReadEvents(0, 0, 100, 1, &through));
  ASSERT_EQ(budget.size(), 1u);
  EXPECT_EQ(through, first.sequence);
  // Past the end: where it was.
  ASSERT_OK_AND_ASSIGN(std::vector<Event> after, engine_->ReadEvents(0, last, 100, 0, &through));
  EXPECT_TRUE(after.empty());
  EXPECT_EQ(through, last);
  // The same from the log after a restart.
  ASSERT_OK(Reopen());
  ASSERT_OK_AND_ASSIGN(none, engine_->ReadEvents(0, third.sequence, 100, 0, &through));
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(through, last);
}

TEST_F(EngineTest, ReadEventsIsOutOfRangeOnceCompactionRemovedEvents) {
  options_.shard_count = 1;
  // A short in-memory window, so the early events can only come from the log.
  options_.feed_recent_events = 16;
  ASSERT_OK(Open());
  const std::string value(1000, 'x');
  for (int i = 0; i < 300; ++i) ASSERT_OK(engine_->Put("hot", absl::StrCat(i, value)));
  ASSERT_GT(test::ListSegmentFiles(options_.data_dir, 0).size(), 2u)
      << "the test needs several segments";
  ASSERT_OK_AND_ASSIGN(std::vector<Event> before, engine_->ReadEvents(0, 0, 10));
  EXPECT_EQ(before.size(), 10u);

  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  EXPECT_GT(engine_->GetStats().compactions, 0u);

  absl::StatusOr<std::vector<Event>> gone = engine_->ReadEvents(0, 0, 10);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kOutOfRange) << gone.status();
  const uint64_t last = engine_->LastSequence(0);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> latest, engine_->ReadEvents(0, last - 1, 10));
  ASSERT_EQ(latest.size(), 1u);
  EXPECT_EQ(latest[0].sequence, last);
  EXPECT_EQ(latest[0].value, absl::StrCat(299, value));
}

// ---- Forget ----------------------------------------------------------------------------------

TEST_F(EngineTest, ForgetDropsTheKeyOnlyAtTheTimestampAskedFor) {
  ASSERT_OK(Open());
  ASSERT_OK_AND_ASSIGN(WriteResult first, engine_->Put("gone", "v1"));
  ASSERT_OK(engine_->Put("stays", "s"));
  ASSERT_OK_AND_ASSIGN(WriteResult second, engine_->Put("gone", "v2"));
  ASSERT_OK_AND_ASSIGN(bool stale, engine_->Forget("gone", first.timestamp));
  EXPECT_FALSE(stale) << "a newer record than the one checked must stay";
  EXPECT_EQ(Get("gone"), "v2");
  ASSERT_OK_AND_ASSIGN(bool unknown, engine_->Forget("never-written", 1));
  EXPECT_FALSE(unknown);

  const uint64_t last_sequence = engine_->LastSequence(engine_->ShardOf("gone"));
  ASSERT_OK_AND_ASSIGN(bool forgot, engine_->Forget("gone", second.timestamp));
  EXPECT_TRUE(forgot);
  ASSERT_OK_AND_ASSIGN(KeyRecord record, engine_->GetRecord("gone", /*with_value=*/true));
  EXPECT_FALSE(record.found) << "not even a tombstone is left";
  EXPECT_EQ(Get("gone"), "NOT_FOUND");
  Stats stats = engine_->GetStats();
  EXPECT_EQ(stats.keys, 1u);
  EXPECT_EQ(stats.tombstones, 0u);
  EXPECT_EQ(stats.forgotten, 1u);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events,
                       engine_->ReadEvents(engine_->ShardOf("gone"), last_sequence, 10));
  EXPECT_TRUE(events.empty()) << "a forget is no change-feed event";

  // A later write starts the key afresh, even an older replicated one.
  WriteOptions replicated;
  replicated.timestamp = first.timestamp;
  ASSERT_OK_AND_ASSIGN(WriteResult again, engine_->Put("gone", "back", replicated));
  EXPECT_TRUE(again.applied);
  EXPECT_EQ(again.version, 1u);
  EXPECT_EQ(Get("gone"), "back");
}

TEST_F(EngineTest, ForgetDropsTombstonesToo) {
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("deleted", "v"));
  ASSERT_OK_AND_ASSIGN(WriteResult tombstone, engine_->Delete("deleted"));
  ASSERT_EQ(engine_->GetStats().tombstones, 1u);
  ASSERT_OK_AND_ASSIGN(bool forgot, engine_->Forget("deleted", tombstone.timestamp));
  EXPECT_TRUE(forgot);
  EXPECT_EQ(engine_->GetStats().tombstones, 0u);
  ASSERT_OK_AND_ASSIGN(KeyRecord record, engine_->GetRecord("deleted", false));
  EXPECT_FALSE(record.found);
}

// Compaction drops a tombstone once its grace has passed and nothing older
// of its key remains, unless tombstones are left to Forget (a cluster's
// owners collect them together); expired records, and tombstones of keys
// outside the Merkle summary, go either way.
TEST_F(EngineTest, CompactionCollectsTombstonesOnlyWhenAllowed) {
  for (const bool collect : {true, false}) {
    SCOPED_TRACE(collect ? "collect_tombstones" : "tombstones left to Forget");
    if (engine_ != nullptr) {
      ASSERT_OK(engine_->Close());
      engine_.reset();
    }
    options_.data_dir = dir_.Subdir(collect ? "collect" : "keep");
    options_.shard_count = 1;
    options_.tombstone_grace_ms = 60'000;
    options_.collect_tombstones = collect;
    options_.merkle_excluded_prefixes = {"own/"};
    ASSERT_OK(Open());
    ASSERT_OK(engine_->Put("deleted", "v"));
    ASSERT_OK(engine_->Delete("deleted"));
    ASSERT_OK(engine_->Put("own/deleted", "v"));
    ASSERT_OK(engine_->Delete("own/deleted"));
    WriteOptions ttl;
    ttl.ttl_ms = 1000;
    ASSERT_OK(engine_->Put("expiring", "v", ttl));
    const std::string filler(2000, 'f');
    for (int i = 0; i < 80; ++i) ASSERT_OK(engine_->Put("churn", filler));
    clock_.AdvanceMs(120'000);
    engine_->SweepExpiredNow();
    ASSERT_OK(engine_->CompactNow(/*force=*/true));
    ASSERT_OK_AND_ASSIGN(KeyRecord deleted, engine_->GetRecord("deleted", false));
    EXPECT_EQ(deleted.found, !collect);
    ASSERT_OK_AND_ASSIGN(KeyRecord expired, engine_->GetRecord("expiring", false));
    EXPECT_FALSE(expired.found) << "expired records are dropped after the grace either way";
    ASSERT_OK_AND_ASSIGN(KeyRecord own, engine_->GetRecord("own/deleted", false));
    EXPECT_FALSE(own.found) << "so are tombstones of keys only this store holds";
  }
}

// The Forget record must outlive every older record of its key: compaction
// of the Forget's segment alone keeps it, and a restart (with or without
// hint files) does not bring the key back.
TEST_F(EngineTest, AForgottenKeyStaysGoneThroughCompactionAndRestarts) {
  options_.shard_count = 1;
  ASSERT_OK(Open());
  const std::string filler(2000, 'f');
  ASSERT_OK(engine_->Put("old", "the old value"));
  ASSERT_OK_AND_ASSIGN(WriteResult doomed, engine_->Put("doomed", "v"));
  // Live filler: the first segments are never compaction victims.
  for (int i = 0; i < 40; ++i) ASSERT_OK(engine_->Put(absl::StrCat("live-", i), filler));
  ASSERT_OK_AND_ASSIGN(KeyRecord old_record, engine_->GetRecord("old", false));
  ASSERT_OK_AND_ASSIGN(bool forgot_old, engine_->Forget("old", old_record.timestamp));
  ASSERT_TRUE(forgot_old);
  // Overwritten filler after the Forget: its segments are mostly dead.
  for (int i = 0; i < 80; ++i) ASSERT_OK(engine_->Put("churn", filler));
  ASSERT_OK_AND_ASSIGN(bool forgot_doomed, engine_->Forget("doomed", doomed.timestamp));
  ASSERT_TRUE(forgot_doomed);
  for (int i = 0; i < 80; ++i) ASSERT_OK(engine_->Put("churn", filler));
  ASSERT_GT(test::ListSegmentFiles(options_.data_dir, 0).size(), 3u)
      << "the test needs several segments";

  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    for (const char* key : {"old", "doomed"}) {
      ASSERT_OK_AND_ASSIGN(KeyRecord record, engine_->GetRecord(key, false));
      EXPECT_FALSE(record.found) << key;
    }
    EXPECT_EQ(Get("live-7"), filler);
    EXPECT_EQ(engine_->GetStats().keys, 41u);
  };
  ASSERT_OK(engine_->CompactNow(/*force=*/false));
  EXPECT_GT(engine_->GetStats().compactions, 0u);
  check("after compacting the dead segments");
  ASSERT_OK(engine_->Close());
  engine_.reset();
  test::RemoveAllHintFiles(options_.data_dir);
  ASSERT_OK(Open());
  check("after a reopen by scanning");
  ASSERT_OK(Reopen());
  check("after a reopen with hints");
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  check("after compacting everything");
  ASSERT_OK(Reopen());
  check("after the last reopen");
}

// ---- Reopen -----------------------------------------------------------------------------------

TEST_F(EngineTest, ReopenKeepsEverythingWithAndWithoutHints) {
  ASSERT_OK(Open());
  std::map<std::string, std::string> expected;
  std::set<std::string> deleted;
  for (int i = 0; i < 300; ++i) {
    const std::string key = absl::StrFormat("key-%04d", i);
    const std::string value =
        absl::StrCat(key, ":", std::string(100 + (i * 37) % 900, 'a' + i % 26));
    ASSERT_OK(engine_->Put(key, value));
    expected[key] = value;
  }
  for (int i = 0; i < 300; i += 3) {
    const std::string key = absl::StrFormat("key-%04d", i);
    ASSERT_OK(engine_->Put(key, "overwritten"));
    expected[key] = "overwritten";
  }
  for (int i = 1; i < 300; i += 6) {
    const std::string key = absl::StrFormat("key-%04d", i);
    ASSERT_OK(engine_->Delete(key));
    expected.erase(key);
    deleted.insert(key);
  }
  std::vector<uint64_t> last_sequences;
  for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
    last_sequences.push_back(engine_->LastSequence(shard));
  }

  auto check = [&] {
    for (const auto& [key, value] : expected) EXPECT_EQ(Get(key), value) << key;
    for (const std::string& key : deleted) EXPECT_EQ(Get(key), "NOT_FOUND") << key;
    EXPECT_EQ(engine_->GetStats().keys, expected.size());
    for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
      EXPECT_EQ(engine_->LastSequence(shard), last_sequences[shard]) << "shard " << shard;
    }
  };

  ASSERT_OK(Reopen());
  EXPECT_FALSE(test::ListAllHintFiles(options_.data_dir).empty()) << "Close writes hint files";
  {
    SCOPED_TRACE("reopened with hint files");
    check();
    EXPECT_GT(engine_->GetStats().recovered_from_hints, 0u);
  }

  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_GT(test::RemoveAllHintFiles(options_.data_dir), 0u);
  ASSERT_OK(Open());
  {
    SCOPED_TRACE("reopened by scanning segments");
    check();
    Stats stats = engine_->GetStats();
    EXPECT_GT(stats.recovered_by_scan, 0u);
    EXPECT_EQ(stats.recovered_from_hints, 0u);
  }

  // Numbering continues where it stopped.
  ASSERT_OK_AND_ASSIGN(WriteResult next, engine_->Put("key-0000", "after reopen"));
  EXPECT_EQ(next.version, 3u) << "put, overwrite, then this put";
  EXPECT_GT(next.sequence, last_sequences[next.shard]);
}

// ---- Asynchronous writes ----------------------------------------------------------------------

class AsyncWriteTest : public EngineTest, public ::testing::WithParamInterface<FsyncPolicy> {};

TEST_P(AsyncWriteTest, CallbacksFireOnceForEveryWrite) {
  options_.fsync = GetParam();
  options_.fsync_interval_ms = 20;
  // kAlways completes writes on the engine's sync thread.
  options_.background_threads = true;
  ASSERT_OK(Open());

  constexpr int kPuts = 40;
  constexpr int kDeletes = 10;
  absl::Mutex mu;
  int completed = 0;
  std::vector<absl::StatusOr<WriteResult>> results(kPuts + kDeletes,
                                                   absl::UnknownError("callback not run"));
  auto callback_for = [&](int index) {
    return [&, index](absl::StatusOr<WriteResult> result) {
      absl::MutexLock lock(&mu);
      results[index] = std::move(result);
      ++completed;
    };
  };
  const bool inline_completion = GetParam() != FsyncPolicy::kAlways;
  for (int i = 0; i < kPuts; ++i) {
    engine_->PutAsync(absl::StrCat("async-", i), absl::StrCat("value-", i), WriteOptions{},
                      callback_for(i));
    if (inline_completion) {
      absl::MutexLock lock(&mu);
      EXPECT_EQ(completed, i + 1) << "kNever and kInterval complete inline";
    }
  }
  for (int i = 0; i < kDeletes; ++i) {
    engine_->DeleteAsync(absl::StrCat("async-", i), WriteOptions{}, callback_for(kPuts + i));
  }
  bool all_done = false;
  {
    absl::MutexLock lock(&mu);
    all_done =
        mu.AwaitWithTimeout(absl::Condition(
                                +[](int* done) { return *done == kPuts + kDeletes; }, &completed),
                            absl::Seconds(30));
  }
  if (!all_done) {
    // Close first: late callbacks must not outlive the variables they capture.
    EXPECT_OK(engine_->Close());
    engine_.reset();
    absl::MutexLock lock(&mu);
    FAIL() << "after 30 s only " << completed << " of " << kPuts + kDeletes << " callbacks ran";
  }
  for (int i = 0; i < kPuts + kDeletes; ++i) {
    absl::MutexLock lock(&mu);
    ASSERT_OK(results[i]);
    if (i < kPuts) {
      EXPECT_EQ(results[i]->version, 1u) << i;
    }
  }
  for (int i = 0; i < kPuts; ++i) {
    const std::string key = absl::StrCat("async-", i);
    EXPECT_EQ(Get(key), i < kDeletes ? "NOT_FOUND" : absl::StrCat("value-", i)) << key;
  }
  ASSERT_OK(engine_->Close());
  engine_.reset();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(completed, kPuts + kDeletes) << "no callback runs twice";
}

// The change feed announces and shows events: at once, except under
// kAlways, where only durable events are announced and readable (a sequence
// a watcher saw must survive a machine crash).
TEST_P(AsyncWriteTest, ChangeFeedAnnouncesEventsAndNeverShowsMoreThanLastSequence) {
  options_.fsync = GetParam();
  options_.fsync_interval_ms = 20;
  options_.background_threads = true;
  absl::Mutex mu;
  std::vector<uint64_t> announced(options_.shard_count, 0);
  options_.on_event = [&](uint32_t shard, uint64_t sequence) {
    absl::MutexLock lock(&mu);
    announced[shard] = std::max(announced[shard], sequence);
  };
  ASSERT_OK(Open());
  for (int i = 0; i < 50; ++i) {
    ASSERT_OK_AND_ASSIGN(WriteResult written,
                         engine_->Put(absl::StrCat("feed-", i), absl::StrCat("v", i)));
    // Put returns once the write is as durable as the policy asks: its
    // event is readable by then, and announced (under kAlways by the sync
    // thread, just after the write's durability is known).
    EXPECT_GE(engine_->LastSequence(written.shard), written.sequence) << i;
    {
      absl::MutexLock lock(&mu);
      // Evaluated by AwaitWithTimeout with mu held, possibly on the thread
      // that releases it: the analysis cannot see that lock.
      auto reached = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return announced[written.shard] >= written.sequence;
      };
      EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(10))) << i;
    }
    for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
      ASSERT_OK_AND_ASSIGN(std::vector<Event> events, engine_->ReadEvents(shard, 0, 10'000));
      const uint64_t last = engine_->LastSequence(shard);
      for (const Event& event : events) EXPECT_LE(event.sequence, last) << "shard " << shard;
    }
  }
  ASSERT_OK(engine_->Close());
  engine_.reset();
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, AsyncWriteTest,
                         ::testing::Values(FsyncPolicy::kNever, FsyncPolicy::kInterval,
                                           FsyncPolicy::kAlways),
                         [](const ::testing::TestParamInfo<FsyncPolicy>& info) {
                           switch (info.param) {
                             case FsyncPolicy::kNever:
                               return "Never";
                             case FsyncPolicy::kInterval:
                               return "Interval";
                             case FsyncPolicy::kAlways:
                               return "Always";
                           }
                           return "Unknown";
                         });

// ---- Stats --------------------------------------------------------------------------------------

TEST_F(EngineTest, StatsFollowTheWrites) {
  ASSERT_OK(Open());
  const Stats empty = engine_->GetStats();
  EXPECT_EQ(empty.shard_count, 2u);
  EXPECT_EQ(empty.keys, 0u);
  EXPECT_EQ(empty.puts, 0u);

  uint64_t record_bytes = 0;
  uint64_t live_key_bytes = 0;
  for (int i = 0; i < 10; ++i) {
    const std::string key = absl::StrCat("stat-", i);
    const std::string value(50 + i, 'v');
    ASSERT_OK(engine_->Put(key, value));
    record_bytes += format::RecordBytes(key.size(), value.size());
    if (i != 9) live_key_bytes += key.size();
  }
  for (int i = 0; i < 2; ++i) {
    ASSERT_OK(engine_->Put(absl::StrCat("stat-", i), "new"));
    record_bytes += format::RecordBytes(6, 3);
  }
  ASSERT_OK(engine_->Delete("stat-9"));
  record_bytes += format::RecordBytes(6, 0);
  for (int i = 0; i < 5; ++i) EXPECT_NE(Get(absl::StrCat("stat-", i)), "NOT_FOUND");

  const Stats stats = engine_->GetStats();
  EXPECT_EQ(stats.keys, 9u);
  EXPECT_EQ(stats.tombstones, 1u);
  EXPECT_EQ(stats.puts, 12u);
  EXPECT_EQ(stats.deletes, 1u);
  EXPECT_EQ(stats.gets, 5u);
  EXPECT_GE(stats.segments, 1u);
  EXPECT_GE(stats.log_bytes, record_bytes) << "every record is in some segment";
  EXPECT_GT(stats.dead_bytes, 0u) << "overwritten and deleted records are dead";
  EXPECT_GE(stats.key_bytes, live_key_bytes);
  EXPECT_GT(stats.index_bytes, 0u);
}

// ---- Merkle summaries ---------------------------------------------------------------------------

class MerkleTest : public EngineTest {
 protected:
  void SetUp() override {
    EngineTest::SetUp();
    ASSERT_OK(Open());
    Options other = options_;
    other.data_dir = dir_.Subdir("other");
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(other);
    ASSERT_OK(engine);
    other_ = std::move(engine).value();
    base_ms_ = clock_.NowUnixMs() - 100'000;
  }

  void TearDown() override {
    if (other_ != nullptr) {
      EXPECT_OK(other_->Close());
    }
    EngineTest::TearDown();
  }

  // The same replicated writes on both engines.
  void PutOnBoth(const std::string& key, uint64_t timestamp) {
    WriteOptions options;
    options.timestamp = timestamp;
    ASSERT_OK(engine_->Put(key, "value of " + key, options));
    ASSERT_OK(other_->Put(key, "value of " + key, options));
  }

  // Partitions whose roots differ between the engines.
  std::vector<uint32_t> DifferingPartitions() const {
    std::vector<uint32_t> partitions;
    for (uint32_t p = 0; p < engine_->MerklePartitionCount(); ++p) {
      if (engine_->MerkleNodeHash(p, 1) != other_->MerkleNodeHash(p, 1)) partitions.push_back(p);
    }
    return partitions;
  }

  std::unique_ptr<Engine> other_;
  int64_t base_ms_ = 0;
};

TEST_F(MerkleTest, IdenticalWritesGiveIdenticalTrees) {
  EXPECT_EQ(engine_->MerklePartitionCount(), 8u);
  EXPECT_EQ(engine_->MerkleLeafCount(), 16u);
  for (int i = 0; i < 200; ++i) PutOnBoth(absl::StrCat("merkle-", i), Timestamp(base_ms_ + i));

  bool any_nonzero = false;
  for (uint32_t p = 0; p < engine_->MerklePartitionCount(); ++p) {
    for (uint32_t node = 1; node < 2 * engine_->MerkleLeafCount(); ++node) {
      EXPECT_EQ(engine_->MerkleNodeHash(p, node), other_->MerkleNodeHash(p, node))
          << "partition " << p << " node " << node;
    }
    any_nonzero |= engine_->MerkleNodeHash(p, 1) != 0;
  }
  EXPECT_TRUE(any_nonzero) << "200 keys must leave a mark on some partition";
}

TEST_F(MerkleTest, ADifferingKeyChangesOnlyItsPathAndIsListedInItsLeaf) {
  for (int i = 0; i < 200; ++i) PutOnBoth(absl::StrCat("merkle-", i), Timestamp(base_ms_ + i));
  ASSERT_TRUE(DifferingPartitions().empty());

  const std::string extra = "only-in-the-first";
  const uint64_t extra_timestamp = Timestamp(base_ms_ + 500, 3);
  WriteOptions options;
  options.timestamp = extra_timestamp;
  ASSERT_OK(engine_->Put(extra, "x", options));

  const uint32_t partition = engine_->MerklePartitionOf(extra);
  EXPECT_EQ(other_->MerklePartitionOf(extra), partition);
  EXPECT_EQ(DifferingPartitions(), std::vector<uint32_t>{partition});

  // Walk down from the root: exactly one child of a differing node differs.
  const uint32_t leaves = engine_->MerkleLeafCount();
  std::set<uint32_t> path = {1};
  uint32_t node = 1;
  while (node < leaves) {
    const bool left =
        engine_->MerkleNodeHash(partition, 2 * node) != other_->MerkleNodeHash(partition, 2 * node);
    const bool right = engine_->MerkleNodeHash(partition, 2 * node + 1) !=
                       other_->MerkleNodeHash(partition, 2 * node + 1);
    ASSERT_NE(left, right) << "below node " << node << " exactly one child must differ";
    node = left ? 2 * node : 2 * node + 1;
    path.insert(node);
  }
  for (uint32_t n = 1; n < 2 * leaves; ++n) {
    EXPECT_EQ(path.count(n) == 1,
              engine_->MerkleNodeHash(partition, n) != other_->MerkleNodeHash(partition, n))
        << "node " << n;
  }

  ASSERT_OK_AND_ASSIGN(std::vector<Engine::LeafKey> listed,
                       engine_->MerkleLeafKeys(partition, node));
  auto it = std::find_if(listed.begin(), listed.end(),
                         [&](const Engine::LeafKey& k) { return k.key == extra; });
  ASSERT_NE(it, listed.end()) << "the differing leaf lists the key";
  EXPECT_EQ(it->timestamp, extra_timestamp);
  EXPECT_FALSE(it->tombstone);
  for (const Engine::LeafKey& k : listed) EXPECT_EQ(engine_->MerklePartitionOf(k.key), partition);
  ASSERT_OK_AND_ASSIGN(std::vector<Engine::LeafKey> other_listed,
                       other_->MerkleLeafKeys(partition, node));
  EXPECT_EQ(other_listed.size() + 1, listed.size());

  // Copying the record over (what anti-entropy does) makes the trees agree.
  ASSERT_OK(other_->Put(extra, "x", options));
  EXPECT_TRUE(DifferingPartitions().empty());
}

TEST_F(MerkleTest, HashDependsOnlyOnTheFinalKeyTimestampAndTombstone) {
  for (int i = 0; i < 20; ++i) PutOnBoth(absl::StrCat("base-", i), Timestamp(base_ms_ + i));
  const std::string key = "churn";
  WriteOptions first;
  first.timestamp = Timestamp(base_ms_ + 100);
  WriteOptions second;
  second.timestamp = Timestamp(base_ms_ + 200);
  WriteOptions third;
  third.timestamp = Timestamp(base_ms_ + 300);

  ASSERT_OK(engine_->Put(key, "one", first));
  ASSERT_OK(engine_->Delete(key, second));
  ASSERT_OK(engine_->Put(key, "three", third));
  // The other engine only ever sees the final state; the value is not hashed.
  ASSERT_OK(other_->Put(key, "a different value", third));

  EXPECT_TRUE(DifferingPartitions().empty());
  const uint32_t partition = engine_->MerklePartitionOf(key);
  for (uint32_t node = 1; node < 2 * engine_->MerkleLeafCount(); ++node) {
    EXPECT_EQ(engine_->MerkleNodeHash(partition, node), other_->MerkleNodeHash(partition, node))
        << "node " << node;
  }
}

TEST_F(MerkleTest, ADeleteMatchesAReplicatedTombstone) {
  for (int i = 0; i < 20; ++i) PutOnBoth(absl::StrCat("base-", i), Timestamp(base_ms_ + i));
  const std::string key = "doomed";
  WriteOptions put;
  put.timestamp = Timestamp(base_ms_ + 100);
  WriteOptions del;
  del.timestamp = Timestamp(base_ms_ + 200);
  ASSERT_OK(engine_->Put(key, "v", put));
  ASSERT_OK(engine_->Delete(key, del));
  // A replica that never saw the put still records the tombstone, so that
  // anti-entropy converges.
  ASSERT_OK(other_->Delete(key, del));

  EXPECT_TRUE(DifferingPartitions().empty());
  const uint32_t partition = engine_->MerklePartitionOf(key);
  // Find the key's leaf by listing all leaves of its partition.
  bool found = false;
  for (uint32_t leaf = engine_->MerkleLeafCount(); leaf < 2 * engine_->MerkleLeafCount(); ++leaf) {
    ASSERT_OK_AND_ASSIGN(std::vector<Engine::LeafKey> listed,
                         engine_->MerkleLeafKeys(partition, leaf));
    for (const Engine::LeafKey& k : listed) {
      if (k.key != key) continue;
      EXPECT_FALSE(found) << "a key is listed in one leaf only";
      found = true;
      EXPECT_TRUE(k.tombstone);
      EXPECT_EQ(k.timestamp, del.timestamp);
    }
  }
  EXPECT_TRUE(found) << "tombstones are listed";
}

TEST_F(MerkleTest, AForgottenKeyLeavesTheTreeAsIfNeverWritten) {
  for (int i = 0; i < 200; ++i) PutOnBoth(absl::StrCat("merkle-", i), Timestamp(base_ms_ + i));
  WriteOptions options;
  options.timestamp = Timestamp(base_ms_ + 500);
  ASSERT_OK(engine_->Put("only-here", "x", options));
  ASSERT_FALSE(DifferingPartitions().empty());
  ASSERT_OK_AND_ASSIGN(bool forgot, engine_->Forget("only-here", options.timestamp));
  ASSERT_TRUE(forgot);
  EXPECT_TRUE(DifferingPartitions().empty());
  Engine::KeyCursor cursor;
  size_t listed = 0;
  while (!cursor.done) {
    ASSERT_OK_AND_ASSIGN(std::vector<Engine::LeafKey> keys, engine_->ListKeys(&cursor, 7));
    EXPECT_LE(keys.size(), 7u);
    for (const Engine::LeafKey& key : keys) EXPECT_NE(key.key, "only-here");
    listed += keys.size();
  }
  EXPECT_EQ(listed, 200u) << "ListKeys pages through every key once";
}

TEST_F(MerkleTest, ReplicatedWritesAreLastWriterWins) {
  WriteOptions newer;
  newer.timestamp = Timestamp(base_ms_ + 100);
  WriteOptions older;
  older.timestamp = Timestamp(base_ms_ + 50);
  ASSERT_OK_AND_ASSIGN(WriteResult applied, engine_->Put("lww", "newer", newer));
  EXPECT_TRUE(applied.applied);
  EXPECT_EQ(applied.timestamp, newer.timestamp);

  ASSERT_OK_AND_ASSIGN(WriteResult lost, engine_->Put("lww", "older", older));
  EXPECT_FALSE(lost.applied);
  ASSERT_OK_AND_ASSIGN(WriteResult lost_delete, engine_->Delete("lww", older));
  EXPECT_FALSE(lost_delete.applied);

  ASSERT_OK_AND_ASSIGN(Record record, engine_->Get("lww"));
  EXPECT_EQ(record.value, "newer");
  EXPECT_EQ(record.meta.timestamp, newer.timestamp);
}

// ---- Directory lock
// --------------------------------------------------------------------------------

TEST_F(EngineTest, SecondOpenOfAnOpenDirectoryFails) {
  ASSERT_OK(Open());
  ASSERT_OK(engine_->Put("k", "v"));
  absl::StatusOr<std::unique_ptr<Engine>> second = Engine::Open(options_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();

  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK(Open()) << "the lock is released by Close";
  EXPECT_EQ(Get("k"), "v");
}

}  // namespace
}  // namespace logkv::engine
