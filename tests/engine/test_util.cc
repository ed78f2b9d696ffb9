#include "tests/engine/test_util.h"

#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace logkv::test {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "test_util: %s\n", message.c_str());
  std::abort();
}

bool IsIdFileName(const std::string& name, absl::string_view suffix) {
  if (name.size() != 12 + suffix.size()) return false;
  if (!absl::EndsWith(name, suffix)) return false;
  return std::all_of(name.begin(), name.begin() + 12, [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> ListIdFiles(const std::string& dir, absl::string_view suffix) {
  std::vector<std::string> paths;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (IsIdFileName(name, suffix)) paths.push_back(entry.path().string());
  }
  // Ids are zero-padded to a fixed width, so name order is id order.
  std::sort(paths.begin(), paths.end());
  return paths;
}

// Shard numbers of the shard-NNN directories present, ascending.
std::vector<uint32_t> ShardsPresent(const std::string& data_dir) {
  std::vector<uint32_t> shards;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(data_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !absl::StartsWith(name, "shard-")) continue;
    const std::string digits = name.substr(6);
    if (digits.empty() ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    shards.push_back(static_cast<uint32_t>(std::stoul(digits)));
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}

}  // namespace

// ---- ScopedTempDir -----------------------------------------------------------------

ScopedTempDir::ScopedTempDir() {
  const char* root = std::getenv("TEST_TMPDIR");
  std::string pattern =
      absl::StrCat(root != nullptr && *root != '\0' ? root : "/tmp", "/logkv-test-XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) Die(absl::StrCat("mkdtemp ", pattern, " failed"));
  path_ = pattern;
}

ScopedTempDir::~ScopedTempDir() {
  std::error_code error;
  fs::remove_all(path_, error);
}

std::string ScopedTempDir::Subdir(absl::string_view name) const {
  return absl::StrCat(path_, "/", name);
}

// ---- ScopedTmpfs -------------------------------------------------------------------------

ScopedTmpfs::ScopedTmpfs(const std::string& path, absl::string_view size) : path_(path) {
  if (::mkdir(path.c_str(), 0755) != 0) {
    error_ = std::strerror(errno);
    return;
  }
  const std::string options = absl::StrCat("size=", size);
  if (::mount("tmpfs", path.c_str(), "tmpfs", 0, options.c_str()) != 0) {
    error_ = std::strerror(errno);
    return;
  }
  mounted_ = true;
}

ScopedTmpfs::~ScopedTmpfs() {
  if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
}

absl::Status ScopedTmpfs::Resize(absl::string_view size) {
  const std::string options = absl::StrCat("size=", size);
  if (!mounted_ || ::mount("tmpfs", path_.c_str(), "tmpfs", MS_REMOUNT, options.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("remount ", path_, " with ", options, ": ",
                                            mounted_ ? std::strerror(errno) : "not mounted"));
  }
  return absl::OkStatus();
}

// ---- LogCapture ------------------------------------------------------------------------

const char* LogLevelName(engine::LogLevel level) {
  switch (level) {
    case engine::LogLevel::kDebug:
      return "DEBUG";
    case engine::LogLevel::kInfo:
      return "INFO";
    case engine::LogLevel::kWarning:
      return "WARNING";
    case engine::LogLevel::kError:
      return "ERROR";
  }
  return "?";
}

LogCapture::LogCapture() : echo_(std::getenv("LOGKV_TEST_VERBOSE") != nullptr) {}

std::function<void(engine::LogLevel, absl::string_view)> LogCapture::Callback() {
  return [this](engine::LogLevel level, absl::string_view message) {
    if (echo_) {
      std::fprintf(stderr, "[engine %s] %.*s\n", LogLevelName(level),
                   static_cast<int>(message.size()), message.data());
    }
    absl::MutexLock lock(&mu_);
    lines_.push_back({level, std::string(message)});
  };
}

std::vector<LogCapture::Line> LogCapture::Lines() const {
  absl::MutexLock lock(&mu_);
  return lines_;
}

bool LogCapture::Contains(engine::LogLevel min_level, absl::string_view substring) const {
  absl::MutexLock lock(&mu_);
  return std::any_of(lines_.begin(), lines_.end(), [&](const Line& line) {
    return line.level >= min_level && absl::StrContains(line.message, substring);
  });
}

size_t LogCapture::Count(engine::LogLevel min_level) const {
  absl::MutexLock lock(&mu_);
  return static_cast<size_t>(std::count_if(
      lines_.begin(), lines_.end(), [&](const Line& line) { return line.level >= min_level; }));
}

void LogCapture::Clear() {
  absl::MutexLock lock(&mu_);
  lines_.clear();
}

std::string LogCapture::Dump() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const Line& line : lines_)
    absl::StrAppend(&out, LogLevelName(line.level), ": ", line.message, "\n");
  return out;
}

// ---- The store's files ---------------------------------------------------------------

std::string ShardDir(const std::string& data_dir, uint32_t shard) {
  return absl::StrFormat("%s/shard-%03u", data_dir, shard);
}

std::vector<std::string> ListSegmentFiles(const std::string& data_dir, uint32_t shard) {
  return ListIdFiles(ShardDir(data_dir, shard), ".log");
}

std::vector<std::string> ListHintFiles(const std::string& data_dir, uint32_t shard) {
  return ListIdFiles(ShardDir(data_dir, shard), ".hint");
}

std::vector<std::string> ListAllSegmentFiles(const std::string& data_dir) {
  std::vector<std::string> paths;
  for (uint32_t shard : ShardsPresent(data_dir)) {
    std::vector<std::string> shard_paths = ListSegmentFiles(data_dir, shard);
    paths.insert(paths.end(), shard_paths.begin(), shard_paths.end());
  }
  return paths;
}

std::vector<std::string> ListAllHintFiles(const std::string& data_dir) {
  std::vector<std::string> paths;
  for (uint32_t shard : ShardsPresent(data_dir)) {
    std::vector<std::string> shard_paths = ListHintFiles(data_dir, shard);
    paths.insert(paths.end(), shard_paths.begin(), shard_paths.end());
  }
  return paths;
}

size_t RemoveAllHintFiles(const std::string& data_dir) {
  std::vector<std::string> hints = ListAllHintFiles(data_dir);
  for (const std::string& path : hints) {
    std::error_code error;
    if (!fs::remove(path, error)) Die(absl::StrCat("cannot remove ", path, ": ", error.message()));
  }
  return hints.size();
}

uint64_t FileIdOf(const std::string& path) {
  const std::string name = BaseName(path);
  if (!IsIdFileName(name, ".log") && !IsIdFileName(name, ".hint")) return 0;
  return std::stoull(name.substr(0, 12));
}

std::string BaseName(const std::string& path) { return fs::path(path).filename().string(); }

// ---- Raw file access ------------------------------------------------------------------

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die(absl::StrCat("cannot open ", path));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) Die(absl::StrCat("cannot read ", path));
  return bytes;
}

void WriteFileBytes(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) Die(absl::StrCat("cannot open ", path, " for writing"));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) Die(absl::StrCat("cannot write ", path));
}

void TruncateFileTo(const std::string& path, uint64_t size) {
  std::error_code error;
  fs::resize_file(path, size, error);
  if (error) Die(absl::StrCat("cannot resize ", path, ": ", error.message()));
}

uint64_t FileSizeOf(const std::string& path) {
  std::error_code error;
  const uintmax_t size = fs::file_size(path, error);
  if (error) Die(absl::StrCat("cannot stat ", path, ": ", error.message()));
  return size;
}

void CopyDirectory(const std::string& from, const std::string& to) {
  std::error_code error;
  fs::remove_all(to, error);
  fs::copy(from, to, fs::copy_options::recursive, error);
  if (error) Die(absl::StrCat("cannot copy ", from, " to ", to, ": ", error.message()));
}

// ---- Reading a store ------------------------------------------------------------------

std::string GetOrStatus(engine::Engine* engine, absl::string_view key) {
  absl::StatusOr<engine::Record> record = engine->Get(key);
  if (absl::IsNotFound(record.status())) return "NOT_FOUND";
  if (!record.ok()) return absl::StrCat("ERROR(", record.status().ToString(), ")");
  return std::move(record->value);
}

absl::StatusOr<std::vector<engine::ScanItem>> ScanAll(engine::Engine* engine,
                                                      engine::ScanOptions options) {
  std::vector<engine::ScanItem> items;
  // Each page but the last holds at least one item, so more pages than items
  // (plus the empty last one) means the cursor does not advance.
  for (size_t pages = 0;; ++pages) {
    if (pages > items.size() + 1) {
      return absl::InternalError(
          absl::StrCat("scan did not end after ", pages, " pages and ", items.size(), " items"));
    }
    absl::StatusOr<engine::ScanResult> page = engine->Scan(options);
    if (!page.ok()) return page.status();
    for (engine::ScanItem& item : page->items) items.push_back(std::move(item));
    if (page->next_cursor.empty()) return items;
    options.after_key = std::move(page->next_cursor);
  }
}

// ---- Options and seeds -------------------------------------------------------------------

engine::Options TestOptions(const std::string& data_dir, engine::Clock* clock, LogCapture* log) {
  engine::Options options;
  options.data_dir = data_dir;
  options.shard_count = 2;
  options.segment_bytes = 64 << 10;
  options.fsync = engine::FsyncPolicy::kNever;
  options.background_threads = false;
  options.merkle_partitions = 8;
  options.merkle_leaves = 16;
  options.compaction_bytes_per_second = 0;
  // The open's sorted order, which the default keeps for stores of
  // millions of keys (server and cluster tests open in log order).
  options.recovery_sort_min_slots = 0;
  // In batches that end in the middle of a segment or hint file, or span
  // several hint files; by their records or, with keys longer than about
  // 10 bytes, by their keys' bytes.
  options.recovery_sort_batch_records = 97;
  options.recovery_sort_batch_key_bytes = 1000;
  options.clock = clock;
  if (log != nullptr) options.log = log->Callback();
  return options;
}

uint64_t TestSeed() {
  if (const char* text = std::getenv("LOGKV_TEST_SEED"); text != nullptr && *text != '\0') {
    return std::strtoull(text, nullptr, 0);
  }
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

uint64_t Random::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string Random::Bytes(size_t n) {
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>('a' + Uniform(26));
  return bytes;
}

}  // namespace logkv::test
