// The engine under concurrent use: writers, readers and compaction at once,
// and group commit under FsyncPolicy::kAlways.
//
// Every key has a single writer, and every value names its key and the
// writer's counter and carries filler derived from both, so a reader can tell
// a value that was really written for a key from a torn, misplaced or stale
// one. Per reader and key, counters seen must never go backwards: once a
// write is visible, no later read (during compaction, say) may show an older
// one.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::GetOrStatus;
using test::LogCapture;
using test::ManualClock;
using test::Random;
using test::ScanAll;
using test::ScopedTempDir;
using test::TestOptions;

constexpr int kWriters = 4;
constexpr int kReaders = 2;
constexpr int kKeysPerWriter = 40;
constexpr int kWritesPerWriter = 3000;
constexpr int kMaxCompactions = 2000;

std::string KeyName(int writer, int key) { return absl::StrCat("w", writer, "-k", key); }

// Deterministic filler of 50 to 449 bytes, different for every counter.
std::string Filler(int writer, int key, uint64_t counter) {
  const size_t size = 50 + (counter * 7919 + static_cast<uint64_t>(key) * 31) % 400;
  std::string filler(size, '\0');
  for (size_t i = 0; i < size; ++i) {
    filler[i] = static_cast<char>('a' + (counter + i + static_cast<uint64_t>(writer)) % 26);
  }
  return filler;
}

std::string ValueFor(int writer, int key, uint64_t counter) {
  return absl::StrCat(KeyName(writer, key), "/", counter, "/", Filler(writer, key, counter));
}

// The counter of a value if it is exactly a value written for key, else
// nullopt.
std::optional<uint64_t> CounterOf(int writer, int key, const std::string& value) {
  std::vector<std::string> parts = absl::StrSplit(value, absl::MaxSplits('/', 2));
  uint64_t counter = 0;
  if (parts.size() != 3 || parts[0] != KeyName(writer, key) ||
      !absl::SimpleAtoi(parts[1], &counter) || counter >= kWritesPerWriter) {
    return std::nullopt;
  }
  if (value != ValueFor(writer, key, counter)) return std::nullopt;
  return counter;
}

using ConcurrencyTest = test::EngineFixture<>;

TEST_F(ConcurrencyTest, WritersReadersAndCompactionAgree) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  ASSERT_OK(Open());

  // final[writer][key]: the value of the writer's last acknowledged write,
  // or nullopt after a delete. Each writer touches only its own row.
  std::vector<std::vector<std::optional<std::string>>> final(
      kWriters, std::vector<std::optional<std::string>>(kKeysPerWriter));
  std::atomic<int> writers_running{kWriters};
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> puts{0};
  std::atomic<uint64_t> reads_checked{0};

  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      Random random(seed + 1000 + static_cast<uint64_t>(w));
      for (uint64_t counter = 0; counter < kWritesPerWriter && !failed; ++counter) {
        const int key = static_cast<int>(random.Uniform(kKeysPerWriter));
        if (random.Uniform(100) < 5) {
          absl::Status status = engine_->Delete(KeyName(w, key)).status();
          if (!status.ok() && !absl::IsNotFound(status)) {
            ADD_FAILURE() << "delete of " << KeyName(w, key) << ": " << status;
            failed = true;
          }
          final[w][key].reset();
        } else {
          absl::Status status = engine_->Put(KeyName(w, key), ValueFor(w, key, counter)).status();
          if (!status.ok()) {
            ADD_FAILURE() << "put of " << KeyName(w, key) << ": " << status;
            failed = true;
          }
          final[w][key] = ValueFor(w, key, counter);
          ++puts;
        }
      }
      --writers_running;
    });
  }

  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      Random random(seed + 2000 + static_cast<uint64_t>(r));
      std::map<std::string, uint64_t> last_seen;
      // Checks one value read for (w, key) and that time did not run backwards.
      auto check = [&](int w, int key, const std::string& value) {
        std::optional<uint64_t> counter = CounterOf(w, key, value);
        if (!counter.has_value()) {
          ADD_FAILURE() << KeyName(w, key)
                        << " has a value never written for it: " << value.substr(0, 80);
          failed = true;
          return;
        }
        uint64_t& last = last_seen[KeyName(w, key)];
        if (*counter < last) {
          ADD_FAILURE() << KeyName(w, key) << " went back from write " << last << " to "
                        << *counter;
          failed = true;
        }
        last = std::max(last, *counter);
        ++reads_checked;
      };
      for (int i = 0; i < 1'000'000 && writers_running > 0 && !failed; ++i) {
        const int w = static_cast<int>(random.Uniform(kWriters));
        if (random.Uniform(100) < 2) {
          ScanOptions options;
          options.prefix = absl::StrCat("w", w, "-");
          options.limit = 17;
          absl::StatusOr<std::vector<ScanItem>> items = ScanAll(engine_.get(), options);
          if (!items.ok()) {
            ADD_FAILURE() << "scan: " << items.status();
            failed = true;
            continue;
          }
          for (const ScanItem& item : *items) {
            int key = -1;
            std::vector<std::string> parts = absl::StrSplit(item.key, absl::MaxSplits("-k", 1));
            if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &key) || key < 0 ||
                key >= kKeysPerWriter || item.key != KeyName(w, key)) {
              ADD_FAILURE() << "scan returned a key never written: " << item.key;
              failed = true;
              continue;
            }
            check(w, key, item.value);
          }
          continue;
        }
        const int key = static_cast<int>(random.Uniform(kKeysPerWriter));
        absl::StatusOr<Record> record = engine_->Get(KeyName(w, key));
        if (absl::IsNotFound(record.status())) continue;
        if (!record.ok()) {
          ADD_FAILURE() << "get of " << KeyName(w, key) << ": " << record.status();
          failed = true;
          continue;
        }
        check(w, key, record->value);
      }
    });
  }

  std::atomic<int> compactions{0};
  threads.emplace_back([&] {
    for (int i = 0; i < kMaxCompactions && writers_running > 0 && !failed; ++i) {
      absl::Status status = engine_->CompactNow(/*force=*/i % 3 == 0);
      if (!status.ok()) {
        ADD_FAILURE() << "compaction: " << status;
        failed = true;
      }
      ++compactions;
      // Leaves the two cores to the writers and readers between rounds.
      absl::SleepFor(absl::Milliseconds(1));
    }
  });

  for (std::thread& thread : threads) thread.join();
  ASSERT_FALSE(failed.load());
  EXPECT_GT(compactions.load(), 0);
  EXPECT_GT(reads_checked.load(), 0u);

  auto check_final = [&](const char* when) {
    SCOPED_TRACE(when);
    for (int w = 0; w < kWriters; ++w) {
      for (int key = 0; key < kKeysPerWriter; ++key) {
        EXPECT_EQ(GetOrStatus(engine_.get(), KeyName(w, key)), final[w][key].value_or("NOT_FOUND"))
            << KeyName(w, key);
      }
    }
  };
  check_final("after the run");
  EXPECT_EQ(engine_->GetStats().puts, puts.load());
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  check_final("after a final forced compaction");
  ASSERT_OK(engine_->Close());
  engine_.reset();
  ASSERT_OK(Open());
  check_final("after reopen");
}

// Under kAlways concurrent writers share fdatasyncs (group commit): every
// write is acknowledged, and there are fewer syncs than writes, with one
// shard and with several (whose rounds sync them side by side).
class GroupCommitTest : public ConcurrencyTest, public ::testing::WithParamInterface<uint32_t> {};

TEST_P(GroupCommitTest, SharesSyncs) {
  constexpr int kThreads = 8;
  constexpr int kPutsPerThread = 50;
  options_.shard_count = GetParam();
  options_.fsync = FsyncPolicy::kAlways;
  options_.background_threads = true;
  ASSERT_OK(Open());
  const uint64_t fsyncs_before = engine_->GetStats().fsyncs;

  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPutsPerThread; ++i) {
        absl::Status status =
            engine_->Put(absl::StrCat("t", t, "-", i), absl::StrCat("value-", t, "-", i)).status();
        if (!status.ok()) {
          ADD_FAILURE() << status;
          ++failures;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_EQ(failures.load(), 0);

  const Stats stats = engine_->GetStats();
  const uint64_t fsyncs = stats.fsyncs - fsyncs_before;
  EXPECT_EQ(stats.puts, static_cast<uint64_t>(kThreads * kPutsPerThread));
  EXPECT_GT(fsyncs, 0u) << "kAlways syncs";
  EXPECT_LT(fsyncs, static_cast<uint64_t>(kThreads * kPutsPerThread))
      << "concurrent writers should share syncs";
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPutsPerThread; ++i) {
      EXPECT_EQ(GetOrStatus(engine_.get(), absl::StrCat("t", t, "-", i)),
                absl::StrCat("value-", t, "-", i));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shards, GroupCommitTest, ::testing::Values(1u, 4u));

// Close while writers keep writing under kAlways: every writer is answered
// (none waits for a round that will never come, even one that appended
// after the last round and before its shard closed), and every write
// answered OK is there after a reopen. A hang here is the failure.
TEST_F(ConcurrencyTest, CloseAnswersEveryWaitingWriter) {
  constexpr int kThreads = 8;
  options_.shard_count = 4;
  options_.fsync = FsyncPolicy::kAlways;
  for (int attempt = 0; attempt < 20; ++attempt) {
    SCOPED_TRACE(absl::StrCat("attempt ", attempt));
    ASSERT_OK(Open());
    std::atomic<int> acked{0};
    std::vector<int> last_ok(kThreads, -1);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0;; ++i) {
          if (!engine_->Put(absl::StrCat("a", attempt, "-t", t, "-", i), "v").ok()) return;
          last_ok[t] = i;
          acked.fetch_add(1);
        }
      });
    }
    for (int i = 0; i < 6000 && acked.load() < 200; ++i) absl::SleepFor(absl::Milliseconds(10));
    ASSERT_OK(engine_->Close());
    for (std::thread& thread : threads) thread.join();
    engine_.reset();
    ASSERT_OK(Open());
    for (int t = 0; t < kThreads; ++t) {
      for (int i = 0; i <= last_ok[t]; ++i) {
        ASSERT_EQ(GetOrStatus(engine_.get(), absl::StrCat("a", attempt, "-t", t, "-", i)), "v");
      }
    }
    ASSERT_OK(engine_->Close());
    engine_.reset();
  }
}

}  // namespace
}  // namespace logkv::engine
