#include "engine/engine.h"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>
#include <thread>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/file_system.h"
#include "engine/hlc.h"
#include "engine/log_format.h"
#include "engine/log_record.h"
#include "engine/manifest.h"
#include "engine/merkle.h"
#include "engine/segment.h"
#include "engine/shard.h"

namespace logkv::engine {

namespace {

// A compaction run is one small step (Shard::Compact); this many back to
// back at most per shard before the next check, so a shard whose writers
// keep making garbage cannot hold the maintenance thread forever.
constexpr int kMaxCompactionRuns = 64;

class RealClock final : public Clock {
 public:
  int64_t NowUnixMs() override { return absl::ToUnixMillis(absl::Now()); }
};

// What ps -L, top -H and perf show for the thread (at most 15 bytes).
void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

void LogToStderr(LogLevel level, absl::string_view message) {
  static constexpr const char* kNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  const std::string line =
      absl::StrFormat("%s %s engine: %s\n", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                                            absl::UTCTimeZone()),
                      kNames[static_cast<int>(level)], message);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

absl::Status ValidateOptions(const Options& o) {
  auto bad = [](absl::string_view what) { return absl::InvalidArgumentError(what); };
  if (o.data_dir.empty()) return bad("data_dir is empty");
  if (o.shard_count == 0 || o.shard_count > 4096) return bad("shard_count must be in [1, 4096]");
  if (o.segment_bytes < (64u << 10) || o.segment_bytes > (1ull << 30)) {
    return bad("segment_bytes must be in [64 KiB, 1 GiB]");
  }
  if (o.max_key_bytes == 0 || o.max_key_bytes > format::kMaxKeyBytes) {
    return bad(absl::StrCat("max_key_bytes must be in [1, ", format::kMaxKeyBytes, "]"));
  }
  if (o.max_value_bytes > format::kHardMaxValueBytes) {
    return bad(absl::StrCat("max_value_bytes must be at most ", format::kHardMaxValueBytes));
  }
  if (o.compression != Compression::kNone && o.compression != Compression::kZstd) {
    return bad("compression must be none or zstd");
  }
  if (o.compression_level < kMinCompressionLevel || o.compression_level > kMaxCompressionLevel) {
    return bad(absl::StrCat("compression_level must be in [", kMinCompressionLevel, ", ",
                            kMaxCompressionLevel, "], not ", o.compression_level));
  }
  if (o.compression_min_bytes > format::kHardMaxValueBytes) {
    return bad(absl::StrCat("compression_min_bytes must be at most ", format::kHardMaxValueBytes));
  }
  if (o.fsync_interval_ms <= 0) return bad("fsync_interval_ms must be positive");
  if (o.versions_kept == 0 || o.versions_kept > 1000) {
    return bad("versions_kept must be in [1, 1000]");
  }
  if (!(o.compaction_dead_fraction > 0 && o.compaction_dead_fraction <= 1)) {
    return bad("compaction_dead_fraction must be in (0, 1]");
  }
  if (!(o.compaction_space_amp == 0 || o.compaction_space_amp > 1)) {
    return bad("compaction_space_amp must be 0 (off) or above 1");
  }
  if (!(o.compaction_min_dead_fraction > 0 && o.compaction_min_dead_fraction <= 1)) {
    return bad("compaction_min_dead_fraction must be in (0, 1]");
  }
  if (o.ttl_sweep_interval_ms <= 0 || o.compaction_check_interval_ms <= 0) {
    return bad("sweep and compaction check intervals must be positive");
  }
  if (o.tombstone_grace_ms < 0) return bad("tombstone_grace_ms must not be negative");
  for (const std::string& prefix : o.ordered_prefixes) {
    if (prefix.empty()) return bad("ordered_prefixes must not hold an empty prefix");
  }
  if (!(o.checkpoint_ratio >= 0 && o.checkpoint_ratio <= 1e6)) {
    return bad("checkpoint_ratio must be in [0, 1e6] (0: no checkpoints)");
  }
  if (o.checkpoint_stale_interval_ms < 0) {
    return bad("checkpoint_stale_interval_ms must not be negative (0: none)");
  }
  if (o.checkpoint_batch_entries == 0 || o.checkpoint_batch_entries > (1u << 20)) {
    return bad("checkpoint_batch_entries must be in [1, 2^20]");
  }
  if (o.maintenance_nice < 0 || o.maintenance_nice > 19) {
    return bad(absl::StrCat("maintenance_nice must be in [0, 19], not ", o.maintenance_nice));
  }
  if (!std::has_single_bit(o.merkle_partitions) || !std::has_single_bit(o.merkle_leaves) ||
      std::countr_zero(o.merkle_partitions) + std::countr_zero(o.merkle_leaves) > 24) {
    return bad("merkle_partitions and merkle_leaves must be powers of two, product <= 2^24");
  }
  // A batch's records are numbered by 32-bit indexes.
  if (o.recovery_sort_batch_records == 0 || o.recovery_sort_batch_records > (1ull << 30) ||
      o.recovery_sort_batch_key_bytes == 0 || o.recovery_sort_batch_key_bytes > (1ull << 36)) {
    return bad(
        "recovery_sort_batch_records must be in [1, 2^30], recovery_sort_batch_key_bytes "
        "in [1, 2^36]");
  }
  return absl::OkStatus();
}

absl::Status CreateDirs(FileSystem* fs, const std::string& path) {
  // Every prefix ending at a '/' and then the whole path.
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    if (absl::Status status = fs->CreateDir(path.substr(0, slash)); !status.ok()) return status;
  }
  return fs->CreateDir(path);
}

std::string ShardDirectory(const std::string& data_dir, uint32_t shard) {
  return absl::StrFormat("%s/shard-%03u", data_dir, shard);
}

}  // namespace

Clock* SystemClock() {
  static RealClock* clock = new RealClock();
  return clock;
}

void ShardContext::Log(LogLevel level, absl::string_view message) const {
  if (options->log) {
    options->log(level, message);
  } else {
    LogToStderr(level, message);
  }
}

struct Engine::State {
  Options options;
  FileSystem* fs = nullptr;
  Clock* clock = nullptr;
  std::unique_ptr<HybridClock> hlc;
  std::unique_ptr<MerkleForest> merkle;
  std::unique_ptr<FileSystem::Lock> lock;
  std::vector<std::unique_ptr<Shard>> shards;
  uint64_t recovery_ms = 0;
  std::atomic<bool> closed{false};
  std::atomic<uint64_t> unreadable_records_skipped{0};  // by Scan

  absl::Mutex mu;
  bool stop ABSL_GUARDED_BY(mu) = false;
  absl::CondVar maintenance_cv;  // wakes the maintenance thread (only to stop)
  std::unique_ptr<GroupCommit> group_commit;  // kAlways only
  std::vector<std::thread> sync_threads;      // one per shard, without a group commit
  std::thread maintenance_thread;

  Shard& ShardFor(uint64_t key_hash) { return *shards[key_hash % shards.size()]; }
};

Engine::Engine(const Options& options) : state_(std::make_unique<State>()) {
  state_->options = options;
  state_->fs = options.file_system != nullptr ? options.file_system : DefaultFileSystem();
  state_->clock = options.clock != nullptr ? options.clock : SystemClock();
  state_->hlc = std::make_unique<HybridClock>(state_->clock);
  state_->merkle = std::make_unique<MerkleForest>(options.merkle_partitions, options.merkle_leaves);
}

namespace {

// Runs work for every shard, one thread per core pulling the next shard;
// the first failure in shard order, or OK.
absl::Status ForEachShardInParallel(const std::vector<std::unique_ptr<Shard>>& shards,
                                    const std::function<absl::Status(Shard*)>& work) {
  if (shards.empty()) return absl::OkStatus();
  std::atomic<uint32_t> next{0};
  std::vector<absl::Status> results(shards.size());
  auto pull = [&] {
    for (uint32_t i = next++; i < shards.size(); i = next++) results[i] = work(shards[i].get());
  };
  const uint32_t workers = std::clamp<uint32_t>(std::thread::hardware_concurrency(), 1,
                                                static_cast<uint32_t>(shards.size()));
  std::vector<std::thread> threads;
  for (uint32_t i = 1; i < workers; ++i) threads.emplace_back(pull);
  pull();
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : results) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(const Options& options) {
  if (absl::Status status = ValidateOptions(options); !status.ok()) return status;
  std::unique_ptr<Engine> engine(new Engine(options));
  if (absl::Status status = engine->OpenFiles(); !status.ok()) {
    engine->state_->closed.store(true);  // nothing to flush: it never opened
    return status;
  }
  return engine;
}

absl::Status Engine::OpenFiles() {
  State& s = *state_;
  const int64_t start_ns = absl::GetCurrentTimeNanos();
  const std::string& dir = s.options.data_dir;
  if (absl::Status status = CreateDirs(s.fs, dir); !status.ok()) return status;
  auto lock = s.fs->LockFile(absl::StrCat(dir, "/", format::kLockName));
  if (!lock.ok()) return lock.status();
  s.lock = std::move(*lock);
  if (s.options.on_locked) {
    if (absl::Status status = s.options.on_locked(); !status.ok()) return status;
  }

  Manifest manifest;
  if (s.fs->FileExists(absl::StrCat(dir, "/", format::kManifestName))) {
    auto read = ReadManifest(s.fs, dir);
    if (!read.ok()) return read.status();
    manifest = *read;
  } else {
    if (s.fs->FileExists(ShardDirectory(dir, 0))) {
      return absl::DataLossError(absl::StrCat(dir, " has shard directories but no ",
                                              format::kManifestName));
    }
    manifest.format_version = format::kFormatVersion;
    manifest.shard_count = s.options.shard_count;
    for (uint32_t i = 0; i < manifest.shard_count; ++i) {
      if (absl::Status status = s.fs->CreateDir(ShardDirectory(dir, i)); !status.ok()) {
        return status;
      }
    }
    if (absl::Status status = WriteManifest(s.fs, dir, manifest); !status.ok()) return status;
  }

  ShardContext context;
  context.options = &s.options;
  context.fs = s.fs;
  context.clock = s.clock;
  context.hlc = s.hlc.get();
  context.merkle = s.merkle.get();
  if (s.options.fsync == FsyncPolicy::kAlways) {
    s.group_commit = std::make_unique<GroupCommit>(manifest.shard_count, [&s](size_t part) {
      // A failure is recorded by the shard (it then refuses writes) and
      // reported to its waiting writers.
      (void)s.shards[part]->SyncNow();
    });
    context.group_commit = s.group_commit.get();
  }
  for (uint32_t i = 0; i < manifest.shard_count; ++i) {
    s.shards.push_back(std::make_unique<Shard>(context, i, ShardDirectory(dir, i)));
  }

  // Shards recover independently.
  if (absl::Status status = ForEachShardInParallel(s.shards, [](Shard* shard) {
        return shard->Open();
      });
      !status.ok()) {
    return status;
  }
#if defined(__GLIBC__)
  // Recovery's scratch (each record's sequence, every older put, the index
  // tables sized before the key count was known) was freed by the threads
  // above, into their malloc arenas, which keep freed pages mapped below the
  // top of a heap. Give them back, or the process pins them for good.
  malloc_trim(0);
#endif
  s.recovery_ms = static_cast<uint64_t>((absl::GetCurrentTimeNanos() - start_ns) / 1'000'000);

  if (s.options.repair) {
    // Rewrite the segments recovery salvaged, so the next open is clean.
    for (auto& shard : s.shards) {
      if (absl::Status status = shard->Compact(/*force=*/false); !status.ok()) return status;
    }
    // Each skip was logged with its file and offset; this is the total.
    const Stats stats = GetStats();
    ShardContext context{&s.options, s.fs, s.clock, nullptr, nullptr};
    context.Log(stats.repaired_bytes_skipped + stats.repaired_segments_set_aside > 0
                    ? LogLevel::kWarning
                    : LogLevel::kInfo,
                absl::StrCat("repair done: ", stats.repaired_bytes_skipped,
                             " unreadable bytes dropped from ", stats.repaired_segments,
                             " segment(s), rewritten without them; ",
                             stats.repaired_segments_set_aside,
                             " segment(s) with a damaged header set aside as *.damaged; ",
                             stats.keys, " keys salvaged"));
  }
  // kAlways writers wait for the group commit, so it runs even when tests
  // turn the other background work off.
  if (s.group_commit != nullptr) {
    s.group_commit->Start();
  } else if (s.options.background_threads && s.options.fsync == FsyncPolicy::kInterval) {
    for (auto& shard : s.shards) {
      s.sync_threads.emplace_back([shard = shard.get()] {
        NameThisThread(absl::StrCat("sync-", shard->id()));
        shard->SyncLoop();
      });
    }
  }
  if (s.options.background_threads) {
    s.maintenance_thread = std::thread([this] { MaintenanceLoop(); });
  }
  return absl::OkStatus();
}

void Engine::MaintenanceLoop() {
  State& s = *state_;
  if (s.options.maintenance_nice > 0) {
    // Linux keeps a nice value per thread: PRIO_PROCESS with a thread's id
    // sets that thread's alone. Raising it needs no privilege.
    const auto tid = static_cast<id_t>(syscall(SYS_gettid));
    errno = 0;
    const int current = getpriority(PRIO_PROCESS, tid);
    if ((current == -1 && errno != 0) ||
        setpriority(PRIO_PROCESS, tid, std::min(19, current + s.options.maintenance_nice)) != 0) {
      ShardContext context{&s.options, nullptr, nullptr, nullptr, nullptr};
      context.Log(LogLevel::kWarning,
                  absl::StrCat("cannot lower the maintenance thread's priority: ",
                               std::strerror(errno), " (it runs at the process's)"));
    }
  }
  // Named once its priority is set: whoever finds the name finds that too.
  NameThisThread("maintenance");
  absl::Time next_sweep = absl::Now() + absl::Milliseconds(s.options.ttl_sweep_interval_ms);
  absl::Time next_compaction =
      absl::Now() + absl::Milliseconds(s.options.compaction_check_interval_ms);
  std::vector<bool> hint_failure_logged(s.shards.size(), false);
  while (true) {
    {
      absl::MutexLock lock(&s.mu);
      const absl::Time deadline = std::min(next_sweep, next_compaction);
      while (!s.stop && absl::Now() < deadline) s.maintenance_cv.WaitWithDeadline(&s.mu, deadline);
      if (s.stop) return;
    }
    const absl::Time now = absl::Now();
    bool checkpoints_due = false;
    if (now >= next_sweep) {
      for (auto& shard : s.shards) {
        shard->SweepExpired();
        // A segment sealed since the last tick gets its hint file now, not
        // only at Close: after a kill -9 only the active segments are scanned.
        // A failure (a full disk) is logged once until a round succeeds.
        absl::Status status = shard->WriteMissingHints();
        const bool logged = hint_failure_logged[shard->id()];
        hint_failure_logged[shard->id()] = !status.ok();
        if (!status.ok() && !logged) {
          ShardContext context{&s.options, nullptr, nullptr, nullptr, nullptr};
          context.Log(LogLevel::kWarning,
                      absl::StrCat("shard ", shard->id(), ": writing a hint file failed (the "
                                   "segment is scanned at the next start instead): ",
                                   status.message()));
        }
      }
      checkpoints_due = true;
      next_sweep = absl::Now() + absl::Milliseconds(s.options.ttl_sweep_interval_ms);
    }
    if (now >= next_compaction) {
      // Runs back to back while a shard has work, each a small step
      // (Shard::Compact), checking for Close between them.
      for (auto& shard : s.shards) {
        for (int run = 0; run < kMaxCompactionRuns && shard->NeedsCompaction(); ++run) {
          if (!shard->Compact(/*force=*/false).ok()) break;  // logged
          absl::MutexLock lock(&s.mu);
          if (s.stop) return;
        }
        absl::MutexLock lock(&s.mu);
        if (s.stop) return;
      }
      next_compaction = absl::Now() + absl::Milliseconds(s.options.compaction_check_interval_ms);
    }
    // Then, on the sweep's tick, the checkpoints due (Shard::NeedsCheckpoint),
    // which serve a restart after a crash as the hint files do: looked for as
    // often, and after this round's compactions (one that rewrote a segment
    // a new checkpoint describes would make it stale at once).
    if (checkpoints_due) {
      for (auto& shard : s.shards) {
        if (!shard->NeedsCheckpoint()) continue;
        absl::Status status = shard->WriteCheckpoint([&s] { return s.closed.load(); });
        if (!status.ok() && !absl::IsCancelled(status)) {
          ShardContext context{&s.options, nullptr, nullptr, nullptr, nullptr};
          context.Log(LogLevel::kWarning,
                      absl::StrCat("shard ", shard->id(), ": writing a checkpoint failed (an "
                                   "open after a crash uses the last index snapshot if it still "
                                   "fits the segments, else the hint files): ",
                                   status.message()));
        }
        absl::MutexLock lock(&s.mu);
        if (s.stop) return;
      }
    }
  }
}

Engine::~Engine() {
  if (state_->closed.load()) return;
  if (absl::Status status = Close(); !status.ok()) {
    ShardContext context{&state_->options, nullptr, nullptr, nullptr, nullptr};
    context.Log(LogLevel::kError, absl::StrCat("close failed: ", status.message()));
  }
}

absl::Status Engine::Close() {
  State& s = *state_;
  if (s.closed.exchange(true)) return absl::OkStatus();
  {
    absl::MutexLock lock(&s.mu);
    s.stop = true;
    s.maintenance_cv.SignalAll();
  }
  if (s.group_commit != nullptr) s.group_commit->Stop();
  for (auto& shard : s.shards) shard->StopSyncLoop();
  for (std::thread& thread : s.sync_threads) thread.join();
  if (s.maintenance_thread.joinable()) s.maintenance_thread.join();
  // Side by side: a shard's close writes its hint files and index snapshot.
  absl::Status result = ForEachShardInParallel(s.shards, [](Shard* shard) {
    // A last sync completes every kAlways writer still waiting, so no
    // callback is left hanging.
    absl::Status status = shard->SyncNow();
    absl::Status closed = shard->Close();
    return status.ok() ? closed : status;
  });
  s.lock.reset();
  return result;
}

namespace {

absl::Status CheckKey(absl::string_view key, const Options& options) {
  if (key.empty()) return absl::InvalidArgumentError("key is empty");
  if (key.size() > options.max_key_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("key of ", key.size(),
                                                   " bytes exceeds max_key_bytes (",
                                                   options.max_key_bytes, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckValue(absl::string_view value, const Options& options) {
  if (value.size() > options.max_value_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("value of ", value.size(),
                                                   " bytes exceeds max_value_bytes (",
                                                   options.max_value_bytes, ")"));
  }
  return absl::OkStatus();
}

absl::Status Closed() { return absl::FailedPreconditionError("the engine is closed"); }

}  // namespace

absl::Status Engine::Get(absl::string_view key, std::string* value_out, ValueMeta* meta) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return status;
  const KeyRef ref{key, HashKey(key)};
  return state_->ShardFor(ref.hash).Get(ref, value_out, meta);
}

absl::StatusOr<KeyRecord> Engine::GetRecord(absl::string_view key, bool with_value) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return status;
  const KeyRef ref{key, HashKey(key)};
  return state_->ShardFor(ref.hash).GetRecord(ref, with_value);
}

void Engine::Prefetch(absl::Span<const absl::string_view> keys) {
  if (state_->closed.load(std::memory_order_relaxed)) return;
  // A pipelined batch: a few dozen keys at most are worth it (the first
  // ones' memory must still be cached when their requests are served).
  constexpr size_t kMaxKeys = 64;
  absl::InlinedVector<KeyRef, kMaxKeys> refs;
  for (absl::string_view key : keys.subspan(0, std::min(keys.size(), kMaxKeys))) {
    if (CheckKey(key, state_->options).ok()) refs.push_back(KeyRef{key, HashKey(key)});
  }
  const size_t shards = state_->shards.size();
  if (shards == 1) return state_->shards.front()->Prefetch(refs);
  absl::InlinedVector<KeyRef, kMaxKeys> of_shard;
  for (size_t shard = 0; shard < shards; ++shard) {
    of_shard.clear();
    for (const KeyRef& ref : refs) {
      if (ref.hash % shards == shard) of_shard.push_back(ref);
    }
    if (!of_shard.empty()) state_->shards[shard]->Prefetch(of_shard);
  }
}

absl::StatusOr<Record> Engine::Get(absl::string_view key) {
  Record record;
  if (absl::Status status = Get(key, &record.value, &record.meta); !status.ok()) return status;
  return record;
}

absl::StatusOr<Record> Engine::GetVersion(absl::string_view key, uint64_t version) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return status;
  const KeyRef ref{key, HashKey(key)};
  return state_->ShardFor(ref.hash).GetVersion(ref, version);
}

namespace {

// Announces an applied write to the change feed, or under kAlways waits
// until it is durable (the group commit's round announces it then).
absl::StatusOr<WriteResult> FinishSync(Shard& shard, const Options& options,
                                       absl::StatusOr<WriteResult> result) {
  if (!result.ok() || !result->applied) return result;
  if (options.fsync != FsyncPolicy::kAlways) {
    if (options.on_event) options.on_event(result->shard, result->sequence);
    return result;
  }
  if (absl::Status status = shard.WaitDurable(result->sequence); !status.ok()) return status;
  return result;
}

}  // namespace

absl::StatusOr<WriteResult> Engine::Put(absl::string_view key, absl::string_view value,
                                        const WriteOptions& options) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return status;
  if (absl::Status status = CheckValue(value, state_->options); !status.ok()) return status;
  // 100 years at most: now + ttl_ms must not overflow.
  if (options.ttl_ms < 0 || options.ttl_ms > int64_t{100} * 365 * 24 * 3600 * 1000) {
    return absl::InvalidArgumentError("ttl_ms must be in [0, 100 years]");
  }
  const KeyRef ref{key, HashKey(key)};
  Shard& shard = state_->ShardFor(ref.hash);
  auto result = shard.Write(format::RecordType::kPut, ref, value, options);
  return FinishSync(shard, state_->options, std::move(result));
}

absl::StatusOr<WriteResult> Engine::Delete(absl::string_view key, const WriteOptions& options) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return status;
  const KeyRef ref{key, HashKey(key)};
  Shard& shard = state_->ShardFor(ref.hash);
  auto result = shard.Write(format::RecordType::kDelete, ref, {}, options);
  return FinishSync(shard, state_->options, std::move(result));
}

namespace {

void FinishAsync(Shard& shard, const Options& options, absl::StatusOr<WriteResult> result,
                 Engine::WriteCallback done) {
  // Under kAlways the event is announced once it is durable (Shard's sync).
  if (result.ok() && result->applied && options.on_event && options.fsync != FsyncPolicy::kAlways) {
    options.on_event(result->shard, result->sequence);
  }
  if (!result.ok() || !result->applied || options.fsync != FsyncPolicy::kAlways) {
    done(std::move(result));
    return;
  }
  const uint64_t sequence = result->sequence;
  shard.NotifyWhenDurable(sequence, [result = *result, done = std::move(done)](absl::Status s) {
    if (s.ok()) {
      done(result);
    } else {
      done(s);
    }
  });
}

}  // namespace

void Engine::PutAsync(absl::string_view key, absl::string_view value, const WriteOptions& options,
                      WriteCallback done) {
  if (state_->closed.load(std::memory_order_relaxed)) return done(Closed());
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return done(status);
  if (absl::Status status = CheckValue(value, state_->options); !status.ok()) return done(status);
  const KeyRef ref{key, HashKey(key)};
  Shard& shard = state_->ShardFor(ref.hash);
  FinishAsync(shard, state_->options,
              shard.Write(format::RecordType::kPut, ref, value, options), std::move(done));
}

void Engine::DeleteAsync(absl::string_view key, const WriteOptions& options, WriteCallback done) {
  if (state_->closed.load(std::memory_order_relaxed)) return done(Closed());
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return done(status);
  const KeyRef ref{key, HashKey(key)};
  Shard& shard = state_->ShardFor(ref.hash);
  FinishAsync(shard, state_->options,
              shard.Write(format::RecordType::kDelete, ref, {}, options), std::move(done));
}

absl::StatusOr<ScanResult> Engine::Scan(const ScanOptions& options) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (options.limit == 0 || options.limit > kMaxScanLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("scan limit must be in [1, ", kMaxScanLimit, "], got ", options.limit));
  }
  // The index is a hash table: a page is the `limit` smallest matching keys
  // after the cursor, found in one pass over every shard with a bounded heap.
  // One more than the page tells whether anything follows.
  std::priority_queue<std::string> heap;
  for (auto& shard : state_->shards) shard->CollectScanKeys(options, options.limit + 1, &heap);
  std::vector<std::string> keys;
  keys.reserve(heap.size());
  while (!heap.empty()) {
    keys.push_back(heap.top());
    heap.pop();
  }
  std::reverse(keys.begin(), keys.end());
  ScanResult result;
  const bool more = keys.size() > options.limit;
  if (more) {
    keys.resize(options.limit);
    result.next_cursor = keys.back();
  }
  uint64_t page_bytes = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    ScanItem item;
    if (!options.keys_only) {
      absl::Status status = Get(keys[i], &item.value, &item.meta);
      if (absl::IsNotFound(status)) continue;  // deleted since the pass
      if (absl::IsDataLoss(status)) {
        // One damaged record must not make every scan over it fail: it is
        // left out and counted (a Get of its key still answers DataLoss).
        state_->unreadable_records_skipped.fetch_add(1, std::memory_order_relaxed);
        ShardContext context{&state_->options, nullptr, nullptr, nullptr, nullptr};
        context.Log(LogLevel::kWarning,
                    absl::StrCat("scan skipped an unreadable record: ", status.message()));
        continue;
      }
      if (!status.ok()) return status;
    }
    page_bytes += keys[i].size() + item.value.size();
    if (options.max_bytes > 0 && page_bytes > options.max_bytes && !result.items.empty()) {
      // Over the byte budget: the page ends before this item, which the
      // next page starts with.
      result.next_cursor = result.items.back().key;
      break;
    }
    item.key = std::move(keys[i]);
    result.items.push_back(std::move(item));
  }
  return result;
}

absl::StatusOr<std::vector<Event>> Engine::ReadEvents(uint32_t shard, uint64_t after_sequence,
                                                      uint32_t limit, uint64_t max_bytes,
                                                      uint64_t* read_through) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (shard >= state_->shards.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard ", shard, " does not exist (", state_->shards.size(), " shards)"));
  }
  if (limit == 0 || limit > kMaxScanLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("event limit must be in [1, ", kMaxScanLimit, "], got ", limit));
  }
  uint64_t through = after_sequence;
  absl::StatusOr<std::vector<Event>> events =
      state_->shards[shard]->ReadEvents(after_sequence, limit, max_bytes, &through);
  if (read_through != nullptr) *read_through = through;
  return events;
}

uint64_t Engine::LastSequence(uint32_t shard) {
  return shard < state_->shards.size() ? state_->shards[shard]->LastSequence() : 0;
}

bool Engine::WritesFinishInline() const { return state_->options.fsync != FsyncPolicy::kAlways; }

uint32_t Engine::ShardCount() const { return static_cast<uint32_t>(state_->shards.size()); }

uint32_t Engine::ShardOf(absl::string_view key) const {
  return static_cast<uint32_t>(HashKey(key) % state_->shards.size());
}

uint32_t Engine::MerklePartitionCount() const { return state_->merkle->partitions(); }
uint32_t Engine::MerkleLeafCount() const { return state_->merkle->leaves(); }
uint32_t Engine::MerklePartitionOf(absl::string_view key) const {
  return state_->merkle->PartitionOf(HashKey(key));
}

uint64_t Engine::MerkleNodeHash(uint32_t partition, uint32_t node) const {
  const MerkleForest& merkle = *state_->merkle;
  if (partition >= merkle.partitions() || node == 0 || node >= 2 * merkle.leaves()) return 0;
  return merkle.NodeHash(partition, node);
}

absl::StatusOr<bool> Engine::Forget(absl::string_view key, uint64_t timestamp) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  if (absl::Status status = CheckKey(key, state_->options); !status.ok()) return status;
  const KeyRef ref{key, HashKey(key)};
  return state_->ShardFor(ref.hash).Forget(ref, timestamp);
}

absl::StatusOr<std::vector<Engine::LeafKey>> Engine::ListKeys(KeyCursor* cursor, uint32_t limit) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  std::vector<LeafKey> keys;
  limit = std::max<uint32_t>(limit, 1);
  while (!cursor->done && keys.size() < limit) {
    if (cursor->shard >= state_->shards.size()) {
      cursor->done = true;
      break;
    }
    const uint32_t next = state_->shards[cursor->shard]->ListKeys(cursor->entry,
                                                                  limit - keys.size(), &keys);
    if (next == KeyIndex::kNoEntry) {
      ++cursor->shard;
      cursor->entry = 0;
    } else {
      cursor->entry = next;
    }
  }
  return keys;
}

absl::StatusOr<std::vector<Engine::LeafKey>> Engine::MerkleLeafKeys(uint32_t partition,
                                                                    uint32_t leaf_node) {
  return MerkleLeafKeys(partition, absl::Span<const uint32_t>(&leaf_node, 1));
}

absl::StatusOr<std::vector<Engine::LeafKey>> Engine::MerkleLeafKeys(
    uint32_t partition, absl::Span<const uint32_t> leaf_nodes) {
  const MerkleForest& merkle = *state_->merkle;
  if (partition >= merkle.partitions()) {
    return absl::InvalidArgumentError(absl::StrCat("no Merkle partition ", partition));
  }
  // wanted[leaf_node - leaves]: whether that leaf was asked for.
  std::vector<bool> wanted(merkle.leaves(), false);
  for (const uint32_t leaf_node : leaf_nodes) {
    if (leaf_node < merkle.leaves() || leaf_node >= 2 * merkle.leaves()) {
      return absl::InvalidArgumentError(absl::StrCat("no leaf node ", leaf_node,
                                                     " in partition ", partition));
    }
    wanted[leaf_node - merkle.leaves()] = true;
  }
  std::vector<LeafKey> keys;
  if (leaf_nodes.empty()) return keys;
  for (auto& shard : state_->shards) shard->CollectLeafKeys(partition, wanted, &keys);
  std::sort(keys.begin(), keys.end(),
            [](const LeafKey& a, const LeafKey& b) { return a.key < b.key; });
  return keys;
}

Engine::PrefixStats Engine::CountPrefix(absl::string_view prefix) {
  PrefixStats stats;
  for (auto& shard : state_->shards) shard->AddPrefixStats(prefix, &stats);
  return stats;
}

Stats Engine::GetStats() {
  Stats stats;
  stats.shard_count = static_cast<uint32_t>(state_->shards.size());
  stats.recovery_ms = state_->recovery_ms;
  if (state_->group_commit != nullptr) {
    const GroupCommit::Counts counts = state_->group_commit->counts();
    stats.sync_rounds = counts.rounds;
    stats.sync_round_writers = counts.writers;
    stats.sync_round_waits = counts.waits;
    stats.sync_round_waits_cut_short = counts.waits_cut_short;
  }
  for (auto& shard : state_->shards) {
    shard->AddStats(&stats);
    const ShardCounters& c = shard->counters();
    stats.puts += c.puts.load();
    stats.deletes += c.deletes.load();
    stats.gets += c.gets.load();
    stats.fsyncs += c.fsyncs.load();
    stats.fsync_total_us += c.fsync_total_us.load();
    stats.compactions += c.compactions.load();
    stats.compaction_bytes_read += c.compaction_bytes_read.load();
    stats.compaction_bytes_written += c.compaction_bytes_written.load();
    stats.compaction_bytes_reclaimed += c.compaction_bytes_reclaimed.load();
    if (c.compaction_running.load()) {
      stats.compaction_running = true;
      stats.compaction_progress_bytes += c.compaction_progress_bytes.load();
      stats.compaction_total_bytes += c.compaction_total_bytes.load();
    }
    stats.expired_swept += c.expired_swept.load();
    stats.tombstones_dropped += c.tombstones_dropped.load();
    stats.forgotten += c.forgotten.load();
    stats.recovered_from_hints += c.recovered_from_hints.load();
    stats.recovered_from_snapshot += c.recovered_from_snapshot.load();
    stats.checkpoints_written += c.checkpoints_written.load();
    stats.recovered_by_scan += c.recovered_by_scan.load();
    stats.recovery_reserved_entries += c.recovery_reserved_entries.load();
    stats.torn_bytes_truncated += c.torn_bytes_truncated.load();
    stats.torn_segments_removed += c.torn_segments_removed.load();
    stats.repaired_bytes_skipped += c.repaired_bytes_skipped.load();
    stats.repaired_segments += c.repaired_segments.load();
    stats.repaired_segments_set_aside += c.repaired_segments_set_aside.load();
    stats.value_bytes_in += c.value_bytes_in.load();
    stats.value_bytes_stored += c.value_bytes_stored.load();
    stats.values_compressed += c.values_compressed.load();
    stats.values_compression_skipped += c.values_compression_skipped.load();
    stats.values_decompressed += c.values_decompressed.load();
    stats.compress_cpu_ns += c.compress_cpu_ns.load();
    stats.decompress_cpu_ns += c.decompress_cpu_ns.load();
    stats.feed_records_decoded += c.feed_records_decoded.load();
    if (!shard->WriteHealth().ok()) ++stats.shards_refusing_writes;
  }
  stats.unreadable_records_skipped = state_->unreadable_records_skipped.load();
  stats.index_bytes += state_->merkle->memory_bytes();
  return stats;
}

absl::Status Engine::WriteHealth() {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  for (auto& shard : state_->shards) {
    if (absl::Status status = shard->WriteHealth(); !status.ok()) return status;
  }
  return absl::OkStatus();
}

namespace {

// Holds every shard's lock shared while the cut is taken. A loop over
// locks is beyond the thread-safety analysis; CutForBackup's own
// annotation still says what it needs.
absl::Status TakeBackupCut(std::vector<std::unique_ptr<Shard>>& shards,
                           std::vector<std::vector<Shard::BackupSegment>>* segments,
                           std::vector<uint64_t>* sequences) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  for (auto& shard : shards) shard->LockForBackup();
  absl::Status result;
  for (size_t i = 0; i < shards.size() && result.ok(); ++i) {
    result = shards[i]->CutForBackup(&(*segments)[i], &(*sequences)[i]);
  }
  for (auto& shard : shards) shard->UnlockForBackup();
  return result;
}

// Paces a copy to a rate: sleeps off any lead over it, in steps short
// enough to notice a cancellation.
class BackupPacer {
 public:
  BackupPacer(const BackupOptions& options, uint64_t total)
      : options_(options), total_(total), start_ns_(absl::GetCurrentTimeNanos()) {}

  absl::Status Copied(uint64_t bytes) {
    done_ += bytes;
    if (options_.progress) options_.progress(done_, total_);
    while (true) {
      if (options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed)) {
        return absl::CancelledError("the backup was cancelled");
      }
      if (options_.bytes_per_second == 0) return absl::OkStatus();
      const int64_t due_ns = static_cast<int64_t>(static_cast<double>(done_) * 1e9 /
                                                  static_cast<double>(options_.bytes_per_second));
      const int64_t lead_ns = due_ns - (absl::GetCurrentTimeNanos() - start_ns_);
      if (lead_ns <= 0) return absl::OkStatus();
      absl::SleepFor(absl::Nanoseconds(std::min<int64_t>(lead_ns, 50'000'000)));
    }
  }

 private:
  const BackupOptions& options_;
  const uint64_t total_;
  const int64_t start_ns_;
  uint64_t done_ = 0;
};

constexpr size_t kBackupChunkBytes = 256 << 10;

}  // namespace

absl::StatusOr<BackupCut> Engine::Backup(BackupSink* sink, const BackupOptions& options) {
  State& s = *state_;
  if (s.closed.load(std::memory_order_relaxed)) return Closed();
  const std::string& dir = s.options.data_dir;
  auto manifest = s.fs->ReadFile(absl::StrCat(dir, "/", format::kManifestName));
  if (!manifest.ok()) return manifest.status();

  BackupCut cut;
  std::vector<std::vector<Shard::BackupSegment>> segments(s.shards.size());
  cut.shard_sequences.resize(s.shards.size());
  cut.unix_ms = s.clock->NowUnixMs();
  if (absl::Status status = TakeBackupCut(s.shards, &segments, &cut.shard_sequences);
      !status.ok()) {
    return status;
  }

  // Hint files are opened (and so kept, should compaction remove them) now;
  // one that is gone already is left out, and a restore scans its segment.
  struct Hint {
    std::string relative_path;
    std::unique_ptr<ReadableFile> file;
  };
  std::vector<std::vector<Hint>> hints(s.shards.size());
  uint64_t total = manifest->size();
  for (size_t i = 0; i < segments.size(); ++i) {
    for (const Shard::BackupSegment& segment : segments[i]) {
      total += segment.bytes;
      if (segment.hint_path.empty()) continue;
      auto file = s.fs->NewReadableFile(segment.hint_path);
      if (!file.ok()) continue;
      total += (*file)->Size();
      hints[i].push_back(Hint{absl::StrFormat("shard-%03u/%s", i,
                                              HintFileName(segment.segment->id())),
                              *std::move(file)});
    }
  }

  BackupPacer pacer(options, total);
  auto copy_whole = [&](const std::string& path, absl::string_view bytes) -> absl::Status {
    if (absl::Status status = sink->BeginFile(path, bytes.size()); !status.ok()) return status;
    if (absl::Status status = sink->Write(bytes); !status.ok()) return status;
    if (absl::Status status = sink->EndFile(); !status.ok()) return status;
    ++cut.files;
    cut.bytes += bytes.size();
    return pacer.Copied(bytes.size());
  };
  if (absl::Status status = copy_whole(format::kManifestName, *manifest); !status.ok()) {
    return status;
  }
  std::string chunk;
  for (size_t i = 0; i < segments.size(); ++i) {
    for (const Shard::BackupSegment& segment : segments[i]) {
      const std::string path =
          absl::StrFormat("shard-%03u/%s", i, SegmentFileName(segment.segment->id()));
      absl::Status begun = segment.sealed_path.empty()
                               ? sink->BeginFile(path, segment.bytes)
                               : sink->BeginSealedFile(path, segment.bytes, segment.sealed_path);
      if (!begun.ok()) return begun;
      for (uint64_t offset = 0; offset < segment.bytes;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kBackupChunkBytes,
                                                                segment.bytes - offset));
        if (absl::Status status = segment.segment->CopyOut(offset, n, &chunk); !status.ok()) {
          return status;
        }
        if (absl::Status status = sink->Write(chunk); !status.ok()) return status;
        offset += n;
        if (absl::Status status = pacer.Copied(n); !status.ok()) return status;
      }
      if (absl::Status status = sink->EndFile(); !status.ok()) return status;
      ++cut.files;
      cut.bytes += segment.bytes;
    }
    for (const Hint& hint : hints[i]) {
      const uint64_t size = hint.file->Size();
      if (absl::Status status = sink->BeginFile(hint.relative_path, size); !status.ok()) {
        return status;
      }
      chunk.resize(kBackupChunkBytes);
      for (uint64_t offset = 0; offset < size;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kBackupChunkBytes, size - offset));
        auto bytes = hint.file->Read(offset, n, chunk.data());
        if (!bytes.ok()) return bytes.status();
        if (absl::Status status = sink->Write(*bytes); !status.ok()) return status;
        offset += n;
        if (absl::Status status = pacer.Copied(n); !status.ok()) return status;
      }
      if (absl::Status status = sink->EndFile(); !status.ok()) return status;
      ++cut.files;
      cut.bytes += size;
    }
  }
  return cut;
}

absl::Status Engine::Sync() {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  absl::Status result;
  for (auto& shard : state_->shards) {
    absl::Status status = shard->SyncNow();
    if (result.ok() && !status.ok()) result = status;
  }
  return result;
}

absl::Status Engine::CompactNow(bool force) {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  for (auto& shard : state_->shards) {
    if (force) {
      if (absl::Status status = shard->Compact(force); !status.ok()) return status;
      continue;
    }
    for (int run = 0; run < kMaxCompactionRuns && shard->NeedsCompaction(); ++run) {
      if (absl::Status status = shard->Compact(force); !status.ok()) return status;
    }
  }
  return absl::OkStatus();
}

uint64_t Engine::SweepExpiredNow() {
  if (state_->closed.load(std::memory_order_relaxed)) return 0;
  uint64_t swept = 0;
  for (auto& shard : state_->shards) swept += shard->SweepExpired();
  return swept;
}

absl::Status Engine::CheckpointNow() {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  absl::Status result;  // the first failure; every shard is tried
  for (auto& shard : state_->shards) {
    absl::Status status = shard->WriteCheckpoint([this] { return state_->closed.load(); });
    if (result.ok() && !status.ok()) result = status;
  }
  return result;
}

absl::Status Engine::WriteHintsNow() {
  if (state_->closed.load(std::memory_order_relaxed)) return Closed();
  for (auto& shard : state_->shards) {
    if (absl::Status status = shard->WriteMissingHints(); !status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace logkv::engine
