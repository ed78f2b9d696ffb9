// The storage engine's figures in a node's Prometheus output: its counters
// (engine::Stats, relaxed atomics per shard that the engine keeps anyway, so
// exporting them costs the write path nothing) and the disk space the data
// directory takes, read when /metrics is scraped. docs/operations.md,
// "Metrics and logs", lists them.
#ifndef LOGKV_SERVER_ENGINE_METRICS_H_
#define LOGKV_SERVER_ENGINE_METRICS_H_

#include <string>

#include "engine/engine.h"
#include "server/metrics.h"

namespace logkv::server {

// Registers the engine's metrics in metrics' registry, reading engine and
// data_dir when scraped. engine must outlive every scrape of metrics (the
// node stops serving before it closes the engine).
void AddEngineMetrics(engine::Engine* engine, std::string data_dir, ServerMetrics* metrics);

// Bytes the file system allocated to the files under dir (st_blocks, so
// holes are not counted and preallocation is), recursively; 0 when dir
// cannot be read.
uint64_t AllocatedBytesUnder(const std::string& dir);

}  // namespace logkv::server

#endif  // LOGKV_SERVER_ENGINE_METRICS_H_
