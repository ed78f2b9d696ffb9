// engine_bench: logkv's storage engine against RocksDB and LevelDB, same workloads, one binary.
//
// Workloads, each run with 1 and with 2 threads on every engine built in:
//   fillrandom  -- put every key once, in random order, into a fresh, empty store
//   readrandom  -- get random keys from a store that holds every key
//   mixed       -- 50% gets and 50% puts (overwrites) of random keys on that same store
//
// Keys are 16 bytes (the number n in [0, keys) as 16 hex digits), values 100 bytes. No write
// waits for a disk sync: RocksDB and LevelDB keep their write-ahead logs on with the default
// WriteOptions (sync = false); logkv runs with its default FsyncPolicy::kInterval. Every run
// does `keys` operations in all, split evenly between its threads, and reports items per second.
//
// After the benchmarks it measures, on a fresh logkv store of all keys, the index memory per key
// beyond the key bytes and the wall time of Engine::Open with and without the hint files, then
// prints a table of all engines side by side and checks the targets: logkv puts and reads at
// least 5x RocksDB's, and at most 64 bytes of index per key.
//
// With --compression it runs, instead, logkv alone with value compression off and on
// (Options::compression) side by side: JSON-like text and random bytes at 100 B, 4 KiB and 64 KiB,
// each store filled with --compression_mib MiB of values by one thread, then every key read back
// once. It reports puts and gets per second and the bytes of the segment files after a clean
// close, with zstd's figures as ratios to none's. Each pair runs --compression_rounds times,
// none and zstd alternating, and the best round of each counts, so that other load on the machine
// weighs on both alike.
//
// Usage: engine_bench [--keys=N] [--seed=N] [Google Benchmark flags, e.g. --benchmark_filter=]
//        engine_bench --compression [--compression_mib=N] [--compression_rounds=N] [--seed=N]
//   --keys defaults to $LOGKV_BENCH_KEYS, else 1,000,000; CI runs a smoke version with 20000.
//   Stores live in a fresh directory under $TMPDIR (default /tmp) that is removed at exit.

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "engine/engine.h"

#ifdef LOGKV_BENCH_HAVE_ROCKSDB
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#endif
#ifdef LOGKV_BENCH_HAVE_LEVELDB
#include <leveldb/db.h>
#include <leveldb/options.h>
#endif

namespace logkv::bench {
namespace {

using logkv::engine::Engine;

constexpr size_t kKeyBytes = 16;
constexpr size_t kValueBytes = 100;
// Values are 100-byte windows into this pool, so a million values cost one megabyte.
constexpr size_t kValuePoolBytes = 1 << 20;
constexpr uint64_t kDefaultKeyCount = 1'000'000;
// Fill order and read keys come from this seed; it is printed so that a run can be replayed.
constexpr uint64_t kDefaultSeed = 301;
constexpr int kThreadCounts[] = {1, 2};

// The targets from the issue that asked for this benchmark.
constexpr double kTargetPutRatio = 5.0;   // logkv fillrandom / RocksDB fillrandom
constexpr double kTargetReadRatio = 5.0;  // logkv readrandom / RocksDB readrandom
constexpr double kTargetIndexBytesPerKey = 64.0;

// A store that still has flushes or compactions running after this long is reported as failed.
constexpr std::chrono::minutes kSettleTimeout{5};

enum class EngineKind { kLogkv = 0, kRocksDb = 1, kLevelDb = 2 };
constexpr size_t kEngineKindCount = 3;
constexpr std::array<EngineKind, kEngineKindCount> kEngineKinds = {
    EngineKind::kLogkv, EngineKind::kRocksDb, EngineKind::kLevelDb};
constexpr std::array<const char*, kEngineKindCount> kEngineNames = {"logkv", "rocksdb", "leveldb"};

const char* EngineName(EngineKind kind) {
  switch (kind) {
    case EngineKind::kLogkv:
      return kEngineNames[0];
    case EngineKind::kRocksDb:
      return kEngineNames[1];
    case EngineKind::kLevelDb:
      return kEngineNames[2];
  }
  return "unknown";
}

bool EngineBuilt(EngineKind kind) {
  switch (kind) {
    case EngineKind::kLogkv:
      return true;
    case EngineKind::kRocksDb:
#ifdef LOGKV_BENCH_HAVE_ROCKSDB
      return true;
#else
      return false;
#endif
    case EngineKind::kLevelDb:
#ifdef LOGKV_BENCH_HAVE_LEVELDB
      return true;
#else
      return false;
#endif
  }
  return false;
}

enum class Workload { kFillRandom, kReadRandom, kMixed };
constexpr Workload kWorkloads[] = {Workload::kFillRandom, Workload::kReadRandom, Workload::kMixed};

const char* WorkloadName(Workload workload) {
  switch (workload) {
    case Workload::kFillRandom:
      return "fillrandom";
    case Workload::kReadRandom:
      return "readrandom";
    case Workload::kMixed:
      return "mixed";
  }
  return "unknown";
}

// ---- Keys and values ------------------------------------------------------------------------

// The keys and values every workload draws from. Built before any benchmark runs and read-only
// afterwards, so benchmark threads share it without locks, and every engine sees the same keys
// in the same order.
class Dataset {
 public:
  Dataset(uint64_t key_count, uint64_t seed) : key_count_(key_count), seed_(seed) {
    key_bytes_.resize(key_count * kKeyBytes);
    char formatted[kKeyBytes + 1];
    for (uint64_t n = 0; n < key_count; ++n) {
      std::snprintf(formatted, sizeof(formatted), "%016" PRIx64, n);
      std::memcpy(&key_bytes_[n * kKeyBytes], formatted, kKeyBytes);
    }

    fill_order_.resize(key_count);
    std::iota(fill_order_.begin(), fill_order_.end(), uint32_t{0});
    std::mt19937_64 rng(seed);
    std::shuffle(fill_order_.begin(), fill_order_.end(), rng);

    // Random letters and digits: Snappy finds nothing to shrink, so no engine gains from
    // compressing what a real workload's values might not let it compress.
    static constexpr absl::string_view kAlphabet =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    value_pool_.resize(kValuePoolBytes);
    for (char& c : value_pool_) c = kAlphabet[rng() % kAlphabet.size()];
  }

  Dataset(const Dataset&) = delete;
  Dataset& operator=(const Dataset&) = delete;

  uint64_t key_count() const { return key_count_; }
  uint64_t seed() const { return seed_; }

  // Key number n as 16 hex digits. REQUIRES: n < key_count().
  absl::string_view Key(uint64_t n) const {
    return absl::string_view(key_bytes_.data() + n * kKeyBytes, kKeyBytes);
  }

  // The key number put at position i of a fill: a random permutation of [0, key_count()), so a
  // fill puts every key exactly once. REQUIRES: i < key_count().
  uint64_t FillOrder(uint64_t i) const { return fill_order_[i]; }

  // A 100-byte value; nearby n give different values. The view lives as long as the Dataset.
  absl::string_view Value(uint64_t n) const {
    const uint64_t offset = (n * 101) % (value_pool_.size() - kValueBytes + 1);
    return absl::string_view(value_pool_.data() + offset, kValueBytes);
  }

 private:
  const uint64_t key_count_;
  const uint64_t seed_;
  std::string key_bytes_;
  std::vector<uint32_t> fill_order_;
  std::string value_pool_;
};

// ---- The stores under test ------------------------------------------------------------------

// One store under test, reduced to what the workloads need. Put and Get may be called from
// several threads at once, as every wrapped store allows.
class Store {
 public:
  virtual ~Store() = default;

  virtual absl::Status Put(absl::string_view key, absl::string_view value) = 0;
  // NotFound when the key is absent. *value is reused from call to call, so reads do not
  // allocate once it has grown to a value's size.
  virtual absl::Status Get(absl::string_view key, std::string* value) = 0;
  // Returns once the store has no background work left from earlier writes, so that work does
  // not take CPU from the next benchmark (this machine may have two cores). Not timed.
  virtual absl::Status Settle() = 0;
  // REQUIRES: no call is running or follows.
  virtual absl::Status Close() = 0;
};

logkv::engine::Options LogkvOptions(const std::string& data_dir) {
  logkv::engine::Options options;
  options.data_dir = data_dir;
  // kInterval is logkv's default: a put returns once its bytes are in the operating system's
  // hands and a background thread fdatasyncs once a second. RocksDB and LevelDB with their WAL on
  // and sync = false never sync on a write either, so neither side pays a disk sync per put.
  options.fsync = logkv::engine::FsyncPolicy::kInterval;
  // Informational lines would break up Google Benchmark's table; problems still show.
  options.log = [](logkv::engine::LogLevel level, absl::string_view message) {
    if (level < logkv::engine::LogLevel::kWarning) return;
    std::fprintf(stderr, "logkv: %.*s\n", static_cast<int>(message.size()), message.data());
  };
  return options;
}

class LogkvStore final : public Store {
 public:
  explicit LogkvStore(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {}

  absl::Status Put(absl::string_view key, absl::string_view value) override {
    return engine_->Put(key, value).status();
  }

  absl::Status Get(absl::string_view key, std::string* value) override {
    logkv::engine::ValueMeta meta;
    return engine_->Get(key, value, &meta);
  }

  // Runs now whatever compaction the last writes made due, rather than letting the maintenance
  // thread start it in the middle of another engine's benchmark.
  absl::Status Settle() override { return engine_->CompactNow(); }

  absl::Status Close() override { return engine_->Close(); }

 private:
  std::unique_ptr<Engine> engine_;
};

// RocksDB's and LevelDB's statuses have the same shape; the workloads only need to tell a
// missing key from a failure, and the message says which store failed.
template <typename ForeignStatus>
absl::Status ToAbslStatus(const ForeignStatus& status, const char* engine_name) {
  if (status.ok()) return absl::OkStatus();
  std::string message = std::string(engine_name) + ": " + status.ToString();
  if (status.IsNotFound()) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

#ifdef LOGKV_BENCH_HAVE_ROCKSDB
class RocksDbStore final : public Store {
 public:
  // Takes ownership of db.
  explicit RocksDbStore(rocksdb::DB* db) : db_(db) {}

  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir) {
    // RocksDB as a user gets it, except that its background work may use both cores, as logkv's
    // and LevelDB's background threads may.
    rocksdb::Options options;
    options.create_if_missing = true;
    options.IncreaseParallelism(2);
    rocksdb::DB* db = nullptr;
    const rocksdb::Status status = rocksdb::DB::Open(options, dir, &db);
    if (!status.ok()) return ToAbslStatus(status, "rocksdb");
    return std::unique_ptr<Store>(new RocksDbStore(db));
  }

  absl::Status Put(absl::string_view key, absl::string_view value) override {
    return ToAbslStatus(db_->Put(write_options_, rocksdb::Slice(key.data(), key.size()),
                                 rocksdb::Slice(value.data(), value.size())),
                        "rocksdb");
  }

  absl::Status Get(absl::string_view key, std::string* value) override {
    return ToAbslStatus(db_->Get(read_options_, rocksdb::Slice(key.data(), key.size()), value),
                        "rocksdb");
  }

  // Polls RocksDB's own counters of pending and running flushes and compactions; waiting for
  // the work it scheduled leaves its layout as a user's store would have it.
  absl::Status Settle() override {
    const auto deadline = std::chrono::steady_clock::now() + kSettleTimeout;
    for (;;) {
      uint64_t busy = 0;
      for (const std::string* property : {&rocksdb::DB::Properties::kMemTableFlushPending,
                                          &rocksdb::DB::Properties::kNumRunningFlushes,
                                          &rocksdb::DB::Properties::kCompactionPending,
                                          &rocksdb::DB::Properties::kNumRunningCompactions}) {
        uint64_t value = 0;
        if (db_->GetIntProperty(*property, &value)) busy += value;
      }
      if (busy == 0) return absl::OkStatus();
      if (std::chrono::steady_clock::now() >= deadline) {
        return absl::DeadlineExceededError(
            "rocksdb: flushes or compactions still running after 5 minutes");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  absl::Status Close() override {
    const rocksdb::Status status = db_->Close();
    db_.reset();
    return ToAbslStatus(status, "rocksdb");
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::WriteOptions write_options_;  // the defaults: WAL on, sync = false
  rocksdb::ReadOptions read_options_;
};
#endif  // LOGKV_BENCH_HAVE_ROCKSDB

#ifdef LOGKV_BENCH_HAVE_LEVELDB
class LevelDbStore final : public Store {
 public:
  // Takes ownership of db.
  explicit LevelDbStore(leveldb::DB* db) : db_(db) {}

  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir) {
    leveldb::Options options;
    options.create_if_missing = true;
    leveldb::DB* db = nullptr;
    const leveldb::Status status = leveldb::DB::Open(options, dir, &db);
    if (!status.ok()) return ToAbslStatus(status, "leveldb");
    return std::unique_ptr<Store>(new LevelDbStore(db));
  }

  absl::Status Put(absl::string_view key, absl::string_view value) override {
    return ToAbslStatus(db_->Put(write_options_, leveldb::Slice(key.data(), key.size()),
                                 leveldb::Slice(value.data(), value.size())),
                        "leveldb");
  }

  absl::Status Get(absl::string_view key, std::string* value) override {
    return ToAbslStatus(db_->Get(read_options_, leveldb::Slice(key.data(), key.size()), value),
                        "leveldb");
  }

  // LevelDB offers no way to wait for its background compaction other than running a manual
  // one. Compacting everything also gives its reads the best layout, which can only make the
  // comparison harder for logkv.
  absl::Status Settle() override {
    db_->CompactRange(nullptr, nullptr);
    return absl::OkStatus();
  }

  // LevelDB closes when its DB object is deleted and reports no error.
  absl::Status Close() override {
    db_.reset();
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<leveldb::DB> db_;
  leveldb::WriteOptions write_options_;  // the defaults: log on, sync = false
  leveldb::ReadOptions read_options_;
};
#endif  // LOGKV_BENCH_HAVE_LEVELDB

absl::StatusOr<std::unique_ptr<Store>> OpenStore(EngineKind kind, const std::string& dir) {
  switch (kind) {
    case EngineKind::kLogkv: {
      absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(LogkvOptions(dir));
      if (!engine.ok()) return engine.status();
      return std::unique_ptr<Store>(new LogkvStore(*std::move(engine)));
    }
    case EngineKind::kRocksDb:
#ifdef LOGKV_BENCH_HAVE_ROCKSDB
      return RocksDbStore::Open(dir);
#else
      break;
#endif
    case EngineKind::kLevelDb:
#ifdef LOGKV_BENCH_HAVE_LEVELDB
      return LevelDbStore::Open(dir);
#else
      break;
#endif
  }
  return absl::UnimplementedError(std::string(EngineName(kind)) + " is not built in");
}

// ---- State shared by the benchmarks ---------------------------------------------------------

// Set up by Main before any benchmark runs; constant afterwards.
const Dataset* g_dataset = nullptr;
std::filesystem::path g_root;

// Per engine, the stores its benchmarks run against. Only the main thread changes them, in the
// setup and teardown hooks that Google Benchmark calls before it starts a run's threads and
// after it joins them, so a run's threads see them fixed.
struct EngineSlot {
  std::unique_ptr<Store> fill_store;  // a fresh, empty store for each fillrandom run
  std::filesystem::path fill_dir;
  int fill_runs = 0;         // numbers the fill directories
  absl::Status fill_status;  // why fill_store is missing

  std::unique_ptr<Store> prefilled_store;  // every key; shared by readrandom and mixed
  std::filesystem::path prefilled_dir;
  absl::Status prefilled_status;  // why prefilled_store is missing; a failed load is not retried
};
std::array<EngineSlot, kEngineKindCount> g_slots;

// A hook cannot fail a benchmark, so its failures are remembered for the exit status.
bool g_hook_failed = false;

EngineSlot& SlotOf(EngineKind kind) { return g_slots[static_cast<size_t>(kind)]; }

void ReportHookFailure(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "engine_bench: %s: %s\n", what.c_str(), status.ToString().c_str());
  g_hook_failed = true;
}

absl::Status FillAll(Store& store) {
  const Dataset& dataset = *g_dataset;
  for (uint64_t i = 0; i < dataset.key_count(); ++i) {
    absl::Status status = store.Put(dataset.Key(dataset.FillOrder(i)), dataset.Value(i));
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

void SettleOpenStores() {
  for (EngineKind kind : kEngineKinds) {
    EngineSlot& slot = SlotOf(kind);
    if (slot.prefilled_store == nullptr) continue;
    absl::Status status = slot.prefilled_store->Settle();
    if (!status.ok()) ReportHookFailure(std::string("settling ") + EngineName(kind), status);
  }
}

// The store holding every key, loaded on first use so that a --benchmark_filter which skips an
// engine's reads does not pay for its load. nullptr when loading failed (see prefilled_status).
Store* EnsurePrefilled(EngineKind kind) {
  EngineSlot& slot = SlotOf(kind);
  if (slot.prefilled_store != nullptr || !slot.prefilled_status.ok()) {
    return slot.prefilled_store.get();
  }
  slot.prefilled_dir = g_root / (std::string(EngineName(kind)) + "-prefilled");
  std::fflush(stdout);
  std::fprintf(stderr, "engine_bench: loading %" PRIu64 " keys into %s for readrandom and mixed\n",
               g_dataset->key_count(), EngineName(kind));
  const auto start = std::chrono::steady_clock::now();

  absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(kind, slot.prefilled_dir.string());
  absl::Status status = store.status();
  if (status.ok()) status = FillAll(**store);
  if (status.ok()) status = (*store)->Settle();
  if (!status.ok()) {
    slot.prefilled_status = status;
    // The load already failed; a second error from closing would add nothing.
    if (store.ok()) (*store)->Close().IgnoreError();
    ReportHookFailure(std::string("loading ") + EngineName(kind), status);
    return nullptr;
  }
  slot.prefilled_store = *std::move(store);

  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  std::fprintf(stderr, "engine_bench: loaded %s in %.1f s\n", EngineName(kind), elapsed.count());
  return slot.prefilled_store.get();
}

// Google Benchmark takes setup and teardown hooks as plain function pointers, so each engine
// gets its own instance of these templates.

template <EngineKind kKind>
void SetUpFill(const benchmark::State&) {
  SettleOpenStores();
  EngineSlot& slot = SlotOf(kKind);
  slot.fill_dir =
      g_root / (std::string(EngineName(kKind)) + "-fill-" + std::to_string(++slot.fill_runs));
  absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(kKind, slot.fill_dir.string());
  if (store.ok()) {
    slot.fill_store = *std::move(store);
    slot.fill_status = absl::OkStatus();
  } else {
    slot.fill_status = store.status();
  }
}

template <EngineKind kKind>
void TearDownFill(const benchmark::State&) {
  EngineSlot& slot = SlotOf(kKind);
  if (slot.fill_store != nullptr) {
    absl::Status status = slot.fill_store->Close();
    if (!status.ok()) {
      ReportHookFailure(std::string("closing fill store of ") + EngineName(kKind), status);
    }
    slot.fill_store.reset();
  }
  // Each fill leaves a full store behind; dropping it now keeps the disk use to one at a time.
  // Whatever cannot be removed now goes with the root directory at exit.
  std::error_code ignored;
  std::filesystem::remove_all(slot.fill_dir, ignored);
}

template <EngineKind kKind>
void SetUpPrefilled(const benchmark::State&) {
  EnsurePrefilled(kKind);
  SettleOpenStores();
}

// ---- The workloads --------------------------------------------------------------------------

// Threads of one run draw different keys; thread t of every engine draws the same keys, so the
// engines see the same sequence.
uint64_t ThreadSeed(const benchmark::State& state) {
  return g_dataset->seed() +
         0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(state.thread_index()) + 1);
}

void SkipWithError(benchmark::State& state, Workload workload, EngineKind kind,
                   absl::string_view key, const absl::Status& status) {
  std::string message = std::string(WorkloadName(workload)) + "/" + EngineName(kind);
  if (!key.empty()) message += " key " + std::string(key);
  message += ": " + status.ToString();
  state.SkipWithError(message.c_str());
}

void FillRandom(benchmark::State& state, EngineKind kind) {
  const EngineSlot& slot = SlotOf(kind);
  Store* store = slot.fill_store.get();
  if (store == nullptr) {
    SkipWithError(state, Workload::kFillRandom, kind, "", slot.fill_status);
    return;
  }
  const Dataset& dataset = *g_dataset;
  // Thread t puts positions [t * n, (t + 1) * n) of the fill order, so together the threads put
  // distinct keys, each new to the store.
  const uint64_t per_thread = static_cast<uint64_t>(state.max_iterations);
  uint64_t position = static_cast<uint64_t>(state.thread_index()) * per_thread;
  if (position + per_thread > dataset.key_count()) {
    SkipWithError(state, Workload::kFillRandom, kind, "",
                  absl::InvalidArgumentError("more puts asked for than there are keys"));
    return;
  }
  for (auto _ : state) {
    const absl::string_view key = dataset.Key(dataset.FillOrder(position));
    absl::Status status = store->Put(key, dataset.Value(position));
    ++position;
    if (!status.ok()) {
      SkipWithError(state, Workload::kFillRandom, kind, key, status);
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

Store* PrefilledStoreOrSkip(benchmark::State& state, Workload workload, EngineKind kind) {
  const EngineSlot& slot = SlotOf(kind);
  if (slot.prefilled_store == nullptr) {
    SkipWithError(state, workload, kind, "",
                  slot.prefilled_status.ok() ? absl::InternalError("store was not loaded")
                                             : slot.prefilled_status);
  }
  return slot.prefilled_store.get();
}

// Every key was loaded, so a missing key is an error like any other, as is a value of the wrong
// size.
absl::Status CheckedGet(Store& store, absl::string_view key, std::string* value) {
  absl::Status status = store.Get(key, value);
  if (status.ok() && value->size() != kValueBytes) {
    return absl::DataLossError("value of " + std::to_string(value->size()) + " bytes, expected " +
                               std::to_string(kValueBytes));
  }
  return status;
}

void ReadRandom(benchmark::State& state, EngineKind kind) {
  Store* store = PrefilledStoreOrSkip(state, Workload::kReadRandom, kind);
  if (store == nullptr) return;
  const Dataset& dataset = *g_dataset;
  std::mt19937_64 rng(ThreadSeed(state));
  std::string value;
  for (auto _ : state) {
    // The modulo's bias, under key_count / 2^64, is below 1e-9 for any key count allowed.
    const absl::string_view key = dataset.Key(rng() % dataset.key_count());
    absl::Status status = CheckedGet(*store, key, &value);
    if (!status.ok()) {
      SkipWithError(state, Workload::kReadRandom, kind, key, status);
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void Mixed(benchmark::State& state, EngineKind kind) {
  Store* store = PrefilledStoreOrSkip(state, Workload::kMixed, kind);
  if (store == nullptr) return;
  const Dataset& dataset = *g_dataset;
  std::mt19937_64 rng(ThreadSeed(state));
  std::string value;
  for (auto _ : state) {
    // One draw decides both the key and, by its lowest bit, whether to read or write.
    const uint64_t draw = rng();
    const absl::string_view key = dataset.Key((draw >> 1) % dataset.key_count());
    absl::Status status = (draw & 1) != 0 ? store->Put(key, dataset.Value(draw >> 8))
                                          : CheckedGet(*store, key, &value);
    if (!status.ok()) {
      SkipWithError(state, Workload::kMixed, kind, key, status);
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void RunWorkload(benchmark::State& state, Workload workload, EngineKind kind) {
  switch (workload) {
    case Workload::kFillRandom:
      FillRandom(state, kind);
      return;
    case Workload::kReadRandom:
      ReadRandom(state, kind);
      return;
    case Workload::kMixed:
      Mixed(state, kind);
      return;
  }
}

// ---- Registration ---------------------------------------------------------------------------

struct EngineHooks {
  EngineKind kind;
  void (*set_up_fill)(const benchmark::State&);
  void (*tear_down_fill)(const benchmark::State&);
  void (*set_up_prefilled)(const benchmark::State&);
};

template <EngineKind kKind>
constexpr EngineHooks HooksOf() {
  return {kKind, &SetUpFill<kKind>, &TearDownFill<kKind>, &SetUpPrefilled<kKind>};
}

// The engines compiled in, in the order of the summary table's columns.
std::vector<EngineHooks> BuiltEngines() {
  return {
      HooksOf<EngineKind::kLogkv>(),
#ifdef LOGKV_BENCH_HAVE_ROCKSDB
      HooksOf<EngineKind::kRocksDb>(),
#endif
#ifdef LOGKV_BENCH_HAVE_LEVELDB
      HooksOf<EngineKind::kLevelDb>(),
#endif
  };
}

// Registered workload by workload, so that the console lists the engines' runs of one workload
// next to each other.
void RegisterBenchmarks(uint64_t key_count) {
  const std::vector<EngineHooks> engines = BuiltEngines();
  for (Workload workload : kWorkloads) {
    for (int threads : kThreadCounts) {
      for (const EngineHooks& engine : engines) {
        const std::string name =
            std::string(WorkloadName(workload)) + "/" + EngineName(engine.kind);
        benchmark::internal::Benchmark* benchmark = benchmark::RegisterBenchmark(
            name.c_str(), [workload, kind = engine.kind](benchmark::State& state) {
              RunWorkload(state, workload, kind);
            });
        // Iterations are per thread: every run does key_count operations in all, so a fill puts
        // each key once whatever the thread count. Throughput is against wall time because the
        // threads run at once.
        benchmark->Iterations(static_cast<benchmark::IterationCount>(key_count / threads))
            ->Threads(threads)
            ->UseRealTime();
        if (workload == Workload::kFillRandom) {
          benchmark->Setup(engine.set_up_fill)->Teardown(engine.tear_down_fill);
        } else {
          benchmark->Setup(engine.set_up_prefilled);
        }
      }
    }
  }
}

// ---- Results --------------------------------------------------------------------------------

// Prints what ConsoleReporter prints and keeps each run's throughput for the summary.
class RecordingReporter final : public benchmark::ConsoleReporter {
 public:
  // One workload on one engine at one thread count, averaged over --benchmark_repetitions.
  struct Result {
    double items_per_second_sum = 0;
    int runs = 0;
    std::string error;  // of the last failed run; empty when none failed

    bool ok() const { return error.empty() && runs > 0; }
    double items_per_second() const { return runs == 0 ? 0 : items_per_second_sum / runs; }
  };

  explicit RecordingReporter(OutputOptions options) : ConsoleReporter(options) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      // Aggregates (mean, median, ...) restate the repetitions recorded here.
      if (run.run_type != Run::RT_Iteration) continue;
      const std::string& name = run.run_name.function_name;  // "<workload>/<engine>"
      const size_t slash = name.find('/');
      if (slash == std::string::npos) continue;
      Result& result = results_[{name.substr(0, slash), run.threads, name.substr(slash + 1)}];
      if (run.error_occurred) {
        result.error = run.error_message;
        continue;
      }
      const auto counter = run.counters.find("items_per_second");
      if (counter == run.counters.end()) continue;
      result.items_per_second_sum += counter->second.value;
      ++result.runs;
    }
  }

  // nullptr when that combination did not run.
  const Result* Find(Workload workload, int threads, EngineKind kind) const {
    const auto it = results_.find({WorkloadName(workload), threads, EngineName(kind)});
    return it == results_.end() ? nullptr : &it->second;
  }

  bool empty() const { return results_.empty(); }

  bool AnyError() const {
    return std::any_of(results_.begin(), results_.end(),
                       [](const auto& entry) { return !entry.second.error.empty(); });
  }

  bool RanEngine(EngineKind kind) const {
    return std::any_of(results_.begin(), results_.end(), [kind](const auto& entry) {
      return std::get<2>(entry.first) == EngineName(kind);
    });
  }

 private:
  // Keyed by workload name, thread count and engine name.
  std::map<std::tuple<std::string, int64_t, std::string>, Result> results_;
};

// ---- logkv's index and recovery -------------------------------------------------------------

struct LogkvFigures {
  uint64_t keys = 0;
  double index_bytes_per_key = 0;  // Stats::index_bytes / Stats::keys: beyond the key bytes
  double key_bytes_per_key = 0;
  double open_with_hints_ms = 0;
  uint64_t segments_from_hints = 0;
  uint64_t hint_files_deleted = 0;
  double open_without_hints_ms = 0;
  uint64_t segments_scanned = 0;
};

struct TimedOpen {
  double open_ms = 0;
  logkv::engine::Stats stats;
};

// Opens the store at data_dir, timing Engine::Open alone, checks that every key came back and
// closes it again.
absl::StatusOr<TimedOpen> TimeLogkvOpen(const std::filesystem::path& data_dir) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(LogkvOptions(data_dir.string()));
  const std::chrono::duration<double, std::milli> elapsed =
      std::chrono::steady_clock::now() - start;
  if (!engine.ok()) return engine.status();

  TimedOpen result{elapsed.count(), (*engine)->GetStats()};
  absl::Status closed = (*engine)->Close();
  if (!closed.ok()) return closed;
  if (result.stats.keys != g_dataset->key_count()) {
    return absl::DataLossError("reopened " + data_dir.string() + " with " +
                               std::to_string(result.stats.keys) + " keys, expected " +
                               std::to_string(g_dataset->key_count()));
  }
  return result;
}

absl::StatusOr<std::vector<std::filesystem::path>> ListDirectory(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> entries;
  std::error_code error;
  for (std::filesystem::directory_iterator it(dir, error), end; !error && it != end;
       it.increment(error)) {
    entries.push_back(it->path());
  }
  if (error) return absl::InternalError("listing " + dir.string() + ": " + error.message());
  return entries;
}

// Deletes <data_dir>/shard-*/*.hint and returns how many there were.
absl::StatusOr<uint64_t> DeleteHintFiles(const std::filesystem::path& data_dir) {
  absl::StatusOr<std::vector<std::filesystem::path>> shards = ListDirectory(data_dir);
  if (!shards.ok()) return shards.status();
  uint64_t deleted = 0;
  for (const std::filesystem::path& shard : *shards) {
    std::error_code error;
    if (!shard.filename().string().starts_with("shard-") ||
        !std::filesystem::is_directory(shard, error)) {
      continue;
    }
    absl::StatusOr<std::vector<std::filesystem::path>> files = ListDirectory(shard);
    if (!files.ok()) return files.status();
    for (const std::filesystem::path& file : *files) {
      if (file.extension() != ".hint") continue;
      if (!std::filesystem::remove(file, error)) {
        return absl::InternalError("deleting " + file.string() + ": " + error.message());
      }
      ++deleted;
    }
  }
  return deleted;
}

// Measured on a store of exactly key_count puts, apart from the benchmarks' stores whose mixed
// runs add overwrites, so that the figures describe "a store of N keys".
absl::StatusOr<LogkvFigures> MeasureLogkvFigures() {
  const std::filesystem::path dir = g_root / "logkv-reopen";
  std::fflush(stdout);
  std::fprintf(stderr, "engine_bench: measuring logkv's index and reopen time\n");
  {
    absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(EngineKind::kLogkv, dir.string());
    if (!store.ok()) return store.status();
    absl::Status filled = FillAll(**store);
    // A clean close writes the hint files that the first reopen loads.
    absl::Status closed = (*store)->Close();
    if (!filled.ok()) return filled;
    if (!closed.ok()) return closed;
  }

  LogkvFigures figures;
  absl::StatusOr<TimedOpen> with_hints = TimeLogkvOpen(dir);
  if (!with_hints.ok()) return with_hints.status();
  const logkv::engine::Stats& stats = with_hints->stats;
  figures.keys = stats.keys;
  figures.index_bytes_per_key = static_cast<double>(stats.index_bytes) / stats.keys;
  figures.key_bytes_per_key = static_cast<double>(stats.key_bytes) / stats.keys;
  figures.open_with_hints_ms = with_hints->open_ms;
  figures.segments_from_hints = stats.recovered_from_hints;

  absl::StatusOr<uint64_t> deleted = DeleteHintFiles(dir);
  if (!deleted.ok()) return deleted.status();
  figures.hint_files_deleted = *deleted;

  absl::StatusOr<TimedOpen> without_hints = TimeLogkvOpen(dir);
  if (!without_hints.ok()) return without_hints.status();
  figures.open_without_hints_ms = without_hints->open_ms;
  figures.segments_scanned = without_hints->stats.recovered_by_scan;

  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return figures;
}

// ---- Summary --------------------------------------------------------------------------------

// 1234567.8 -> "1,234,568", easier to compare by eye across columns.
std::string WithThousands(double value) {
  const std::string digits = std::to_string(static_cast<uint64_t>(value + 0.5));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string ThroughputCell(const RecordingReporter::Result* result) {
  if (result == nullptr) return "-";
  if (!result->ok()) return "error";
  return WithThousands(result->items_per_second());
}

std::optional<double> Ratio(const RecordingReporter::Result* numerator,
                            const RecordingReporter::Result* denominator) {
  if (numerator == nullptr || denominator == nullptr || !numerator->ok() || !denominator->ok() ||
      denominator->items_per_second() <= 0) {
    return std::nullopt;
  }
  return numerator->items_per_second() / denominator->items_per_second();
}

std::string RatioCell(std::optional<double> ratio) {
  if (!ratio) return "-";
  char cell[32];
  std::snprintf(cell, sizeof(cell), "%.2fx", *ratio);
  return cell;
}

// One line of the targets list: what is compared, the figure, the target, and whether it is met.
void PrintTarget(const std::string& what, const std::string& figure, const std::string& target,
                 const char* verdict) {
  std::printf("  %-36s %12s   %-14s %s\n", what.c_str(), figure.c_str(), target.c_str(), verdict);
}

void PrintTargetRatio(const RecordingReporter& reporter, Workload workload, int threads,
                      double target) {
  const std::optional<double> ratio = Ratio(reporter.Find(workload, threads, EngineKind::kLogkv),
                                            reporter.Find(workload, threads, EngineKind::kRocksDb));
  const char* verdict = !ratio ? "not measured" : *ratio >= target ? "met" : "MISSED";
  PrintTarget(std::string(WorkloadName(workload)) + ", " + std::to_string(threads) +
                  (threads == 1 ? " thread" : " threads") + ", logkv/rocksdb",
              RatioCell(ratio), ">= " + RatioCell(target), verdict);
}

void PrintSummary(const RecordingReporter& reporter,
                  const std::optional<LogkvFigures>& logkv_figures) {
  const Dataset& dataset = *g_dataset;
  std::printf("\nSummary: %s keys of %zu bytes, values of %zu bytes, operations per second\n",
              WithThousands(static_cast<double>(dataset.key_count())).c_str(), kKeyBytes,
              kValueBytes);
  std::printf("%-11s %7s %13s %13s %13s %14s %14s\n", "workload", "threads", "logkv", "rocksdb",
              "leveldb", "logkv/rocksdb", "logkv/leveldb");
  for (Workload workload : kWorkloads) {
    for (int threads : kThreadCounts) {
      const RecordingReporter::Result* logkv_result =
          reporter.Find(workload, threads, EngineKind::kLogkv);
      const RecordingReporter::Result* rocksdb =
          reporter.Find(workload, threads, EngineKind::kRocksDb);
      const RecordingReporter::Result* leveldb =
          reporter.Find(workload, threads, EngineKind::kLevelDb);
      if (logkv_result == nullptr && rocksdb == nullptr && leveldb == nullptr) continue;
      std::printf("%-11s %7d %13s %13s %13s %14s %14s\n", WorkloadName(workload), threads,
                  ThroughputCell(logkv_result).c_str(), ThroughputCell(rocksdb).c_str(),
                  ThroughputCell(leveldb).c_str(), RatioCell(Ratio(logkv_result, rocksdb)).c_str(),
                  RatioCell(Ratio(logkv_result, leveldb)).c_str());
    }
  }
  for (EngineKind kind : kEngineKinds) {
    if (!EngineBuilt(kind)) {
      std::printf("(%s is not built in: it was not found when the build was configured)\n",
                  EngineName(kind));
    }
  }

  if (logkv_figures) {
    const LogkvFigures& figures = *logkv_figures;
    std::printf("\nlogkv with %s keys:\n",
                WithThousands(static_cast<double>(figures.keys)).c_str());
    std::printf("  index memory beyond the key bytes  %8.1f bytes/key  (key bytes %.1f/key)\n",
                figures.index_bytes_per_key, figures.key_bytes_per_key);
    std::printf("  reopen with hint files             %8.1f ms  (segments from hints: %" PRIu64
                ")\n",
                figures.open_with_hints_ms, figures.segments_from_hints);
    std::printf("  reopen without hint files          %8.1f ms  (segments scanned: %" PRIu64
                ", after deleting %" PRIu64 " hint files)\n",
                figures.open_without_hints_ms, figures.segments_scanned,
                figures.hint_files_deleted);
    if (figures.hint_files_deleted == 0) {
      std::printf(
          "  note: no *.hint files were found under shard-*/, so both reopens read the same\n");
    }
  }

  std::printf("\nTargets:\n");
  for (int threads : kThreadCounts) {
    PrintTargetRatio(reporter, Workload::kFillRandom, threads, kTargetPutRatio);
  }
  for (int threads : kThreadCounts) {
    PrintTargetRatio(reporter, Workload::kReadRandom, threads, kTargetReadRatio);
  }
  char index_figure[32];
  if (logkv_figures) {
    std::snprintf(index_figure, sizeof(index_figure), "%.1f", logkv_figures->index_bytes_per_key);
  }
  PrintTarget("logkv index bytes/key beyond the key", logkv_figures ? index_figure : "-",
              "<= " + std::to_string(static_cast<int>(kTargetIndexBytesPerKey)),
              !logkv_figures                                                  ? "not measured"
              : logkv_figures->index_bytes_per_key <= kTargetIndexBytesPerKey ? "met"
                                                                              : "MISSED");
}

// ---- main -----------------------------------------------------------------------------------

struct Flags {
  uint64_t key_count = kDefaultKeyCount;
  uint64_t seed = kDefaultSeed;
  bool compression = false;
  uint64_t compression_mib = 64;
  uint64_t compression_rounds = 3;
};

// ---- Value compression: none vs zstd ------------------------------------------------------

// Distinct values per store; key i gets value i % kCompressionPoolValues. Each record is
// compressed on its own, so repeating values across keys does not flatter zstd.
constexpr size_t kCompressionPoolValues = 256;

// JSON-like documents of exactly n bytes: field names repeat, values vary.
std::string JsonLikeValue(size_t n, std::mt19937_64& random) {
  static constexpr const char* kNames[] = {"alice", "bob",   "carol", "dave",
                                           "erin",  "frank", "grace", "heidi"};
  static constexpr const char* kCities[] = {"Lisbon", "Oslo", "Kyoto", "Lima", "Austin"};
  std::string out;
  while (out.size() < n) {
    const uint64_t r = random();
    out += "{\"id\":" + std::to_string(r % 10'000'000) + ",\"name\":\"" + kNames[r % 8] +
           "\",\"city\":\"" + kCities[(r >> 8) % 5] + "\",\"age\":" +
           std::to_string(18 + (r >> 16) % 70) + ",\"score\":" +
           std::to_string((r >> 24) % 100'000) + ",\"active\":" +
           ((r >> 40) % 2 ? "true" : "false") + ",\"tags\":[\"t" +
           std::to_string((r >> 44) % 32) + "\",\"t" + std::to_string((r >> 50) % 32) + "\"]},";
  }
  out.resize(n);
  return out;
}

std::string RandomValue(size_t n, std::mt19937_64& random) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t word = random();
    std::memcpy(out.data() + i, &word, std::min<size_t>(8, n - i));
  }
  return out;
}

struct CompressionCase {
  const char* kind;  // "text" or "random"
  size_t value_bytes;
  uint32_t min_bytes;  // Options::compression_min_bytes
};

struct CompressionRun {
  double puts_per_second = 0;
  double gets_per_second = 0;
  uint64_t disk_bytes = 0;
  uint64_t values_compressed = 0;
  double compress_cpu_us_per_put = 0;
  double decompress_cpu_us_per_get = 0;
};

uint64_t SegmentBytes(const std::filesystem::path& dir) {
  uint64_t bytes = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().extension() == ".log") bytes += entry.file_size();
  }
  return bytes;
}

absl::StatusOr<CompressionRun> RunCompressionCase(const CompressionCase& c, bool zstd,
                                                  const std::vector<std::string>& pool,
                                                  uint64_t count, const std::string& dir) {
  logkv::engine::Options options;
  options.data_dir = dir;
  options.shard_count = 2;
  options.max_value_bytes = 1 << 20;
  options.compression =
      zstd ? logkv::engine::Compression::kZstd : logkv::engine::Compression::kNone;
  options.compression_min_bytes = c.min_bytes;
  CompressionRun run;
  {
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(options);
    if (!engine.ok()) return engine.status();
    char key[kKeyBytes + 1];
    const auto start = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < count; ++i) {
      std::snprintf(key, sizeof(key), "%016" PRIx64, i);
      absl::StatusOr<logkv::engine::WriteResult> written =
          (*engine)->Put(absl::string_view(key, kKeyBytes), pool[i % pool.size()]);
      if (!written.ok()) return written.status();
    }
    const auto filled = std::chrono::steady_clock::now();
    std::string value;
    for (uint64_t i = 0; i < count; ++i) {
      std::snprintf(key, sizeof(key), "%016" PRIx64, i);
      absl::Status status = (*engine)->Get(absl::string_view(key, kKeyBytes), &value, nullptr);
      if (!status.ok()) return status;
      if (value.size() != c.value_bytes) return absl::InternalError("a value read back wrong");
    }
    const auto read = std::chrono::steady_clock::now();
    const logkv::engine::Stats stats = (*engine)->GetStats();
    run.puts_per_second = count / std::chrono::duration<double>(filled - start).count();
    run.gets_per_second = count / std::chrono::duration<double>(read - filled).count();
    run.values_compressed = stats.values_compressed;
    run.compress_cpu_us_per_put = stats.compress_cpu_ns / 1e3 / count;
    run.decompress_cpu_us_per_get = stats.decompress_cpu_ns / 1e3 / count;
    if (absl::Status closed = (*engine)->Close(); !closed.ok()) return closed;
  }
  run.disk_bytes = SegmentBytes(dir);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return run;
}

std::string MiB(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", bytes / 1048576.0);
  return text;
}

// Returns whether every case ran.
bool RunCompressionComparison(const Flags& flags) {
  const std::vector<CompressionCase> cases = {
      {"text", 100, 128},  {"text", 100, 64},  {"text", 4096, 128},  {"text", 65536, 128},
      {"random", 100, 128}, {"random", 4096, 128}, {"random", 65536, 128},
  };
  std::printf("engine_bench --compression: %" PRIu64 " MiB of values per store, best of %" PRIu64
              " rounds, seed %" PRIu64 ", stores under %s\n\n",
              flags.compression_mib, flags.compression_rounds, flags.seed, g_root.c_str());
  std::printf("%-7s %7s %5s | %12s %12s %9s | %12s %12s %9s | %6s %6s %6s | %8s %8s\n", "values",
              "bytes", "min", "none put/s", "none get/s", "none MiB", "zstd put/s", "zstd get/s",
              "zstd MiB", "put x", "get x", "disk x", "cpu/put", "cpu/get");
  bool ok = true;
  for (const CompressionCase& c : cases) {
    std::mt19937_64 random(flags.seed + c.value_bytes);
    std::vector<std::string> pool;
    for (size_t i = 0; i < kCompressionPoolValues; ++i) {
      pool.push_back(std::string(c.kind) == "text" ? JsonLikeValue(c.value_bytes, random)
                                                    : RandomValue(c.value_bytes, random));
    }
    const uint64_t count = std::max<uint64_t>(
        kCompressionPoolValues, (flags.compression_mib << 20) / c.value_bytes);
    CompressionRun best[2];
    for (uint64_t round = 0; round < flags.compression_rounds && ok; ++round) {
      for (int zstd = 0; zstd < 2; ++zstd) {
        absl::StatusOr<CompressionRun> run =
            RunCompressionCase(c, zstd == 1, pool, count,
                               (g_root / ("compression-" + std::to_string(zstd))).string());
        if (!run.ok()) {
          std::fprintf(stderr, "engine_bench: %s %zu B %s: %s\n", c.kind, c.value_bytes,
                       zstd ? "zstd" : "none", run.status().ToString().c_str());
          ok = false;
          break;
        }
        CompressionRun& b = best[zstd];
        b.puts_per_second = std::max(b.puts_per_second, run->puts_per_second);
        b.gets_per_second = std::max(b.gets_per_second, run->gets_per_second);
        b.disk_bytes = run->disk_bytes;
        b.values_compressed = run->values_compressed;
        b.compress_cpu_us_per_put = run->compress_cpu_us_per_put;
        b.decompress_cpu_us_per_get = run->decompress_cpu_us_per_get;
      }
    }
    if (!ok) break;
    const CompressionRun& none = best[0];
    const CompressionRun& zstd = best[1];
    std::printf("%-7s %7zu %5u | %12s %12s %9s | %12s %12s %9s | %6.2f %6.2f %6.2f | %6.1fus %6.1fus\n",
                c.kind, c.value_bytes, c.min_bytes, WithThousands(none.puts_per_second).c_str(),
                WithThousands(none.gets_per_second).c_str(), MiB(none.disk_bytes).c_str(),
                WithThousands(zstd.puts_per_second).c_str(),
                WithThousands(zstd.gets_per_second).c_str(), MiB(zstd.disk_bytes).c_str(),
                zstd.puts_per_second / none.puts_per_second,
                zstd.gets_per_second / none.gets_per_second,
                static_cast<double>(zstd.disk_bytes) / static_cast<double>(none.disk_bytes),
                zstd.compress_cpu_us_per_put, zstd.decompress_cpu_us_per_get);
    std::fflush(stdout);
  }
  std::printf("\nput x, get x: zstd's rate / none's; disk x: zstd's segment bytes / none's; cpu/put, "
              "cpu/get: zstd's CPU time compressing per put and decompressing per get.\n");
  return ok;
}

void PrintUsage() {
  std::printf(
      "engine_bench [--keys=N] [--seed=N] [benchmark flags]\n"
      "engine_bench --compression [--compression_mib=N] [--compression_rounds=N] [--seed=N]\n"
      "  --compression  compare logkv with value compression off and on (zstd) instead\n"
      "  --compression_mib=N  MiB of values per store (default 64)\n"
      "  --compression_rounds=N  rounds per case, the best counting (default 3)\n"
      "  --keys=N  keys per store (default $LOGKV_BENCH_KEYS, else %" PRIu64
      ")\n"
      "  --seed=N  seed of the fill order and the random keys (default %" PRIu64
      ")\n"
      "  For machine-readable results use --benchmark_out=FILE --benchmark_out_format=json;\n"
      "  the console always shows the table.\n\n",
      kDefaultKeyCount, kDefaultSeed);
  benchmark::PrintDefaultHelp();
}

bool ParseNumber(absl::string_view text, uint64_t* number) {
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, *number);
  return !text.empty() && error == std::errc() && stop == end;
}

// Takes --keys and --seed out of argv, leaving the rest to benchmark::Initialize, which rejects
// flags it does not know. Returns an error message, empty on success.
std::string ParseFlags(int* argc, char** argv, Flags* flags) {
  if (const char* keys = std::getenv("LOGKV_BENCH_KEYS"); keys != nullptr && *keys != '\0') {
    if (!ParseNumber(keys, &flags->key_count)) {
      return std::string("LOGKV_BENCH_KEYS is not a number: ") + keys;
    }
  }
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const absl::string_view arg = argv[i];
    if (absl::StartsWith(arg, "--keys=")) {
      if (!ParseNumber(arg.substr(7), &flags->key_count)) return "bad " + std::string(arg);
    } else if (absl::StartsWith(arg, "--seed=")) {
      if (!ParseNumber(arg.substr(7), &flags->seed)) return "bad " + std::string(arg);
    } else if (arg == "--compression") {
      flags->compression = true;
    } else if (absl::StartsWith(arg, "--compression_mib=")) {
      if (!ParseNumber(arg.substr(18), &flags->compression_mib) || flags->compression_mib == 0) {
        return "bad " + std::string(arg);
      }
    } else if (absl::StartsWith(arg, "--compression_rounds=")) {
      if (!ParseNumber(arg.substr(21), &flags->compression_rounds) ||
          flags->compression_rounds == 0) {
        return "bad " + std::string(arg);
      }
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  argv[kept] = nullptr;
  // Two threads need a key each; the fill order holds key numbers in 32 bits.
  if (flags->key_count < 2 || flags->key_count > UINT32_MAX) {
    return "--keys must be between 2 and " + std::to_string(UINT32_MAX);
  }
  return "";
}

absl::StatusOr<std::filesystem::path> MakeTempRoot() {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp") + "/logkv-bench-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError("mkdtemp " + pattern + ": " + std::strerror(errno));
  }
  return std::filesystem::path(pattern);
}

// Closes what the benchmarks left open; false if a store failed to close.
bool CloseStores() {
  bool ok = true;
  for (EngineKind kind : kEngineKinds) {
    EngineSlot& slot = SlotOf(kind);
    for (std::unique_ptr<Store>* store : {&slot.fill_store, &slot.prefilled_store}) {
      if (*store == nullptr) continue;
      absl::Status status = (*store)->Close();
      if (!status.ok()) {
        std::fprintf(stderr, "engine_bench: closing %s: %s\n", EngineName(kind),
                     status.ToString().c_str());
        ok = false;
      }
      store->reset();
    }
  }
  return ok;
}

// Exits 0 when every benchmark and measurement ran without error. Missed targets do not change
// the exit status: throughput depends on the machine, and CI runs a smoke version.
int Main(int argc, char** argv) {
  // Debian's Abseil is built without NDEBUG, so absl::Mutex checks every
  // acquisition for lock-order cycles under a global lock. Production binaries
  // (logkvd, the tools) turn that off, and so does the benchmark; the tests
  // keep it on. See docs/performance.md for what it costs.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Flags flags;
  if (const std::string error = ParseFlags(&argc, argv, &flags); !error.empty()) {
    std::fprintf(stderr, "engine_bench: %s\n\n", error.c_str());
    PrintUsage();
    return 2;
  }
  benchmark::Initialize(&argc, argv, &PrintUsage);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;

  absl::StatusOr<std::filesystem::path> root = MakeTempRoot();
  if (!root.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", root.status().ToString().c_str());
    return 1;
  }
  g_root = *root;
  if (flags.compression) {
    const bool compared = RunCompressionComparison(flags);
    std::error_code error;
    std::filesystem::remove_all(g_root, error);
    benchmark::Shutdown();
    return compared ? 0 : 1;
  }
  const Dataset dataset(flags.key_count, flags.seed);
  g_dataset = &dataset;

  std::string engines;
  for (const EngineHooks& engine : BuiltEngines()) {
    engines += engines.empty() ? "" : ", ";
    engines += EngineName(engine.kind);
  }
  std::printf("engine_bench: %" PRIu64 " keys, seed %" PRIu64 ", engines %s, stores under %s\n",
              flags.key_count, flags.seed, engines.c_str(), g_root.c_str());
  std::fflush(stdout);

  RegisterBenchmarks(flags.key_count);
  RecordingReporter reporter(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_Color
                                                   : benchmark::ConsoleReporter::OO_None);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  bool ok = !reporter.AnyError() && !g_hook_failed;

  // Only worth the extra minute when logkv was among the engines asked for.
  std::optional<LogkvFigures> logkv_figures;
  if (reporter.RanEngine(EngineKind::kLogkv)) {
    absl::StatusOr<LogkvFigures> figures = MeasureLogkvFigures();
    if (figures.ok()) {
      logkv_figures = *figures;
    } else {
      std::fprintf(stderr, "engine_bench: measuring logkv's index and reopen: %s\n",
                   figures.status().ToString().c_str());
      ok = false;
    }
  }
  ok = CloseStores() && ok;

  // --benchmark_list_tests and filters matching nothing leave nothing to compare.
  if (!reporter.empty()) PrintSummary(reporter, logkv_figures);

  std::error_code error;
  std::filesystem::remove_all(g_root, error);
  if (error) {
    std::fprintf(stderr, "engine_bench: removing %s: %s\n", g_root.c_str(),
                 error.message().c_str());
  }
  benchmark::Shutdown();
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace logkv::bench

int main(int argc, char** argv) { return logkv::bench::Main(argc, argv); }
