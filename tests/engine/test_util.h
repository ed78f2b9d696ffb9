// Shared pieces of the engine tests: a temporary data directory, a clock the
// test moves by hand, a log sink that keeps what the engine said, helpers that
// find a store's files on disk, and Options sized so that tests roll segments
// and compact quickly.
#ifndef LOGKV_TESTS_ENGINE_TEST_UTIL_H_
#define LOGKV_TESTS_ENGINE_TEST_UTIL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"

namespace logkv::test {

// A fresh directory under $TEST_TMPDIR (or /tmp), removed with everything in
// it when the object is destroyed. Aborts if the directory cannot be made,
// since no test can run without it.
class ScopedTempDir {
 public:
  ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  ~ScopedTempDir();

  const std::string& path() const { return path_; }
  // path()/name, not created.
  std::string Subdir(absl::string_view name) const;

 private:
  std::string path_;
};

// A tmpfs of a given size mounted on path (made here), unmounted (lazily)
// on destruction. Needs the right to mount: mounted() is false elsewhere,
// and tests that need one skip.
class ScopedTmpfs {
 public:
  ScopedTmpfs(const std::string& path, absl::string_view size);
  ScopedTmpfs(const ScopedTmpfs&) = delete;
  ScopedTmpfs& operator=(const ScopedTmpfs&) = delete;
  ~ScopedTmpfs();

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  // Grows (or shrinks) the mounted tmpfs in place ("64m"): a full disk
  // given room again.
  absl::Status Resize(absl::string_view size);

 private:
  std::string path_;
  bool mounted_ = false;
  std::string error_;
};

// A Clock that stands still until the test moves it. Safe from any thread.
class ManualClock final : public engine::Clock {
 public:
  // A realistic start (2023-11-14) so that timestamps and expiries look like
  // the ones the engine sees in production.
  static constexpr int64_t kDefaultStartUnixMs = 1'700'000'000'000;

  explicit ManualClock(int64_t start_unix_ms = kDefaultStartUnixMs) : now_unix_ms_(start_unix_ms) {}

  int64_t NowUnixMs() override { return now_unix_ms_.load(std::memory_order_acquire); }
  void SetUnixMs(int64_t unix_ms) { now_unix_ms_.store(unix_ms, std::memory_order_release); }
  // REQUIRES: delta_ms >= 0 (wall time as the engine sees it never goes back
  // in these tests).
  void AdvanceMs(int64_t delta_ms) { now_unix_ms_.fetch_add(delta_ms, std::memory_order_acq_rel); }

 private:
  std::atomic<int64_t> now_unix_ms_;
};

// Keeps every line the engine logs so that tests can assert on warnings.
// Lines are echoed to stderr when LOGKV_TEST_VERBOSE is set. Safe from any
// thread; must outlive every engine given its Callback().
class LogCapture {
 public:
  struct Line {
    engine::LogLevel level;
    std::string message;
  };

  LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::function<void(engine::LogLevel, absl::string_view)> Callback();

  std::vector<Line> Lines() const;
  // Whether a line at min_level or above contains substring.
  bool Contains(engine::LogLevel min_level, absl::string_view substring) const;
  size_t Count(engine::LogLevel min_level) const;
  void Clear();
  // Every line, one per row, for failure messages.
  std::string Dump() const;

 private:
  const bool echo_;
  mutable absl::Mutex mu_;
  std::vector<Line> lines_ ABSL_GUARDED_BY(mu_);
};

const char* LogLevelName(engine::LogLevel level);

// ---- The store's files ---------------------------------------------------------

// <data_dir>/shard-NNN
std::string ShardDir(const std::string& data_dir, uint32_t shard);
// Full paths of a shard's segment (.log) or hint (.hint) files, oldest first
// (by id). Only names of exactly 12 digits and the suffix count.
std::vector<std::string> ListSegmentFiles(const std::string& data_dir, uint32_t shard);
std::vector<std::string> ListHintFiles(const std::string& data_dir, uint32_t shard);
// Over every shard-NNN directory present, by shard, then by id.
std::vector<std::string> ListAllSegmentFiles(const std::string& data_dir);
std::vector<std::string> ListAllHintFiles(const std::string& data_dir);
// Removes every hint file of the store; returns how many there were.
size_t RemoveAllHintFiles(const std::string& data_dir);
// The id in a segment or hint file's name (000000000012.log -> 12); 0 if the
// name is not of that form.
uint64_t FileIdOf(const std::string& path);
// The file name without its directory.
std::string BaseName(const std::string& path);

// ---- Raw file access for corruption tests -----------------------------------------
// These abort on I/O errors: a test that cannot set up its damage is broken.

std::string ReadFileBytes(const std::string& path);
void WriteFileBytes(const std::string& path, absl::string_view bytes);
void TruncateFileTo(const std::string& path, uint64_t size);
uint64_t FileSizeOf(const std::string& path);
// Replaces to with a recursive copy of from.
void CopyDirectory(const std::string& from, const std::string& to);

// ---- Reading a store ----------------------------------------------------------------

// The value of key, "NOT_FOUND", or "ERROR(<status>)": one string a test can
// compare, in the manner of leveldb's DBTest::Get.
std::string GetOrStatus(engine::Engine* engine, absl::string_view key);

// Every item Scan returns for options, following next_cursor page by page
// (options.limit items a page). Fails if Scan fails or the pages do not end.
absl::StatusOr<std::vector<engine::ScanItem>> ScanAll(engine::Engine* engine,
                                                      engine::ScanOptions options);

// ---- Options and seeds --------------------------------------------------------------

// Options for a store in data_dir that rolls segments every 64 KiB, has two
// shards, small Merkle trees and no background threads (tests drive
// compaction, sweeping and syncing by hand). clock and log, if given, must
// outlive the engine.
engine::Options TestOptions(const std::string& data_dir, engine::Clock* clock = nullptr,
                            LogCapture* log = nullptr);

// The seed for a randomised test: LOGKV_TEST_SEED if set, else a random one.
// Tests print it (SCOPED_TRACE) so a failure can be replayed.
uint64_t TestSeed();

// A deterministic pseudo-random generator (SplitMix64) whose sequence does not
// depend on the standard library, so a seed replays anywhere.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, n). REQUIRES: n > 0.
  uint64_t Uniform(uint64_t n) { return Next() % n; }
  // True with probability percent / 100.
  bool Percent(uint32_t percent) { return Uniform(100) < percent; }
  // n printable bytes.
  std::string Bytes(size_t n);

 private:
  uint64_t state_;
};

}  // namespace logkv::test

#endif  // LOGKV_TESTS_ENGINE_TEST_UTIL_H_
