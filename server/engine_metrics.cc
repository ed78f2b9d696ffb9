#include "server/engine_metrics.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

namespace logkv::server {
namespace {

std::vector<CollectedSample> One(double value) { return {CollectedSample{{}, value}}; }

}  // namespace

uint64_t AllocatedBytesUnder(const std::string& dir) {
  std::error_code error;
  std::filesystem::recursive_directory_iterator it(dir, error);
  if (error) return 0;
  uint64_t bytes = 0;
  for (; it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (error) break;  // a file compaction removed meanwhile: what was summed stands
    struct stat st;
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    // st_blocks counts 512-byte units whatever the file system's block size.
    bytes += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return bytes;
}

void AddEngineMetrics(engine::Engine* engine, std::string data_dir, ServerMetrics* metrics) {
  MetricsRegistry* registry = metrics->registry();
  // Counters kept by the engine: one GetStats per metric read (a reader lock
  // per shard for a few additions; scrapes come seconds apart).
  auto counter = [registry, engine](const char* name, const char* help,
                                    uint64_t engine::Stats::*field) {
    registry->AddCounter(name, help)->SetCallback(
        [engine, field] { return engine->GetStats().*field; });
  };
  auto gauge = [registry, engine](const char* name, const char* help, auto field) {
    registry->AddGauge(name, help)->SetCallback(
        [engine, field] { return static_cast<double>(engine->GetStats().*field); });
  };
  counter("logkv_engine_puts_total",
          "Writes applied by the storage engine: clients', replicas' and the node's own.",
          &engine::Stats::puts);
  counter("logkv_engine_deletes_total", "Deletes (tombstones written) applied by the storage engine.",
          &engine::Stats::deletes);
  counter("logkv_engine_gets_total", "Reads of one key served by the storage engine.",
          &engine::Stats::gets);
  counter("logkv_engine_fsyncs_total", "fdatasync calls on log segments.",
          &engine::Stats::fsyncs);
  counter("logkv_engine_sync_rounds_total",
          "Group-commit rounds under --fsync=always (each syncs every shard with new writes).",
          &engine::Stats::sync_rounds);
  counter("logkv_engine_sync_round_writers_total",
          "Writes made durable by group-commit rounds; over the rounds, the group size.",
          &engine::Stats::sync_round_writers);
  counter("logkv_engine_sync_round_waits_total",
          "Group-commit rounds that waited for as many writers as a recent round served.",
          &engine::Stats::sync_round_waits);
  counter("logkv_engine_sync_round_waits_cut_short_total",
          "Of those, the rounds that started at their time bound without all of them.",
          &engine::Stats::sync_round_waits_cut_short);
  gauge("logkv_engine_keys", "Live keys, the node's own records included.",
        &engine::Stats::keys);
  gauge("logkv_engine_tombstones", "Deleted or expired keys still in the index.",
        &engine::Stats::tombstones);
  gauge("logkv_engine_segments", "Log segment files, every shard.", &engine::Stats::segments);
  gauge("logkv_disk_reserved_bytes",
        "Disk the segments being written hold ahead of their data (preallocated): in "
        "logkv_disk_allocated_bytes, not in logkv_live_bytes.",
        &engine::Stats::reserved_bytes);
  gauge("logkv_engine_index_bytes", "Memory of the in-memory index and Merkle trees.",
        &engine::Stats::index_bytes);
  gauge("logkv_engine_shards_refusing_writes",
        "Shards refusing writes now (disk full, or a failed sync until restart).",
        &engine::Stats::shards_refusing_writes);
  counter("logkv_compaction_bytes_read_total", "Bytes of old segments read by compaction.",
          &engine::Stats::compaction_bytes_read);
  counter("logkv_compaction_bytes_written_total", "Bytes compaction wrote to new segments.",
          &engine::Stats::compaction_bytes_written);
  counter("logkv_compaction_bytes_reclaimed_total",
          "Bytes of disk compaction gave back (segments removed less segments written).",
          &engine::Stats::compaction_bytes_reclaimed);
  gauge("logkv_compaction_running", "1 while a compaction runs, else 0.",
        &engine::Stats::compaction_running);
  gauge("logkv_compaction_progress_bytes", "Bytes the running compactions have read so far.",
        &engine::Stats::compaction_progress_bytes);
  gauge("logkv_compaction_total_bytes", "Bytes the running compactions will read in all.",
        &engine::Stats::compaction_total_bytes);
  counter("logkv_expired_swept_total", "Expired keys removed from the index by the TTL sweeper.",
          &engine::Stats::expired_swept);
  counter("logkv_tombstones_dropped_total", "Tombstones compaction dropped for good.",
          &engine::Stats::tombstones_dropped);
  counter("logkv_engine_checkpoints_written_total",
          "Index snapshots the running shards wrote (checkpoints: a start after a crash loads "
          "the newest and reads only the segments written after it).",
          &engine::Stats::checkpoints_written);
  gauge("logkv_engine_shards_opened_from_snapshot",
        "Shards whose last open loaded an index snapshot (a clean stop's or a checkpoint) "
        "instead of every hint file.",
        &engine::Stats::recovered_from_snapshot);

  registry
      ->AddGauge("logkv_engine_index_bytes_per_key",
                 "Memory of the in-memory index, key bytes included, per key it holds (live "
                 "keys and tombstones); the Merkle trees' fixed size is spread over them too.")
      ->SetCallback([engine] {
        const engine::Stats stats = engine->GetStats();
        const uint64_t keys = stats.keys + stats.tombstones;
        return keys == 0 ? 0.0
                         : static_cast<double>(stats.index_bytes + stats.key_bytes) /
                               static_cast<double>(keys);
      });
  registry->AddGauge("logkv_live_bytes",
                     "Bytes of the log that hold current records (log bytes less dead bytes).")
      ->SetCallback([engine] {
        const engine::Stats stats = engine->GetStats();
        return static_cast<double>(stats.log_bytes - std::min(stats.log_bytes, stats.dead_bytes));
      });
  // Walks the data directory: a few files per shard.
  registry
      ->AddCollectedFamily("logkv_disk_allocated_bytes",
                           "Disk space allocated to the files of the data directory (st_blocks).",
                           MetricType::kGauge, {})
      ->SetCollector([data_dir] {
        return One(static_cast<double>(AllocatedBytesUnder(data_dir)));
      });
  registry
      ->AddCollectedFamily("logkv_disk_available_bytes",
                           "Free space of the data directory's file system for this process.",
                           MetricType::kGauge, {})
      ->SetCollector([data_dir]() -> std::vector<CollectedSample> {
        struct statvfs fs;
        if (::statvfs(data_dir.c_str(), &fs) != 0) return {};
        return One(static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize));
      });
}

}  // namespace logkv::server
