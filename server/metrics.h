// logkvd's metrics: counters, gauges and histograms in labelled families,
// rendered in the Prometheus text exposition format 0.0.4 for GET /metrics
// (REST.md, "Node and replication"), and readable one by one for its JSON form.
//
// Hot paths hold a pointer to a child metric (a family's member for one set of
// label values) and update it with relaxed atomic adds on a cache line owned by
// the calling thread's shard: no lock, no map look-up, no allocation. Looking a
// child up by its label values locks and may allocate, so callers do it once
// (at start-up, or on first use) and keep the pointer; children are never
// removed, so the pointer stays valid for the life of the registry.
//
// Reads sum the shards without stopping writers, so a value read while others
// add is some value the metric had during the read (counters never go back).
#ifndef LOGKV_SERVER_METRICS_H_
#define LOGKV_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace logkv::server {

// x86-64's line. Spelled out because std::hardware_destructive_interference_size
// makes g++ warn (-Winterference-size) wherever it shapes a type in a header.
inline constexpr size_t kCacheLineBytes = 64;
// Cells per counter and histogram. Threads take shards round-robin as they
// first touch a metric, so up to this many threads (the loop threads of a
// small machine plus the sync thread) never write the same line; more threads
// share, which stays correct and only costs some contention.
inline constexpr size_t kMetricShards = 8;
static_assert((kMetricShards & (kMetricShards - 1)) == 0, "kMetricShards must be a power of two");

// The Content-Type of RenderPrometheus's output.
inline constexpr absl::string_view kPrometheusContentType =
    "text/plain; version=0.0.4; charset=utf-8";

namespace metrics_internal {

// A new shard number for each thread that asks, round-robin.
size_t NextThreadShard();
inline size_t ThisThreadShard() {
  thread_local const size_t shard = NextThreadShard() & (kMetricShards - 1);
  return shard;
}

// A function that supplies a metric's value at read time, replaceable at any
// moment. Thread-safety: every method may be called from any thread.
template <typename T>
class Callback {
 public:
  // Empty clears. After Set returns, the previous function is not running and
  // will not be called again, so its captures may then be destroyed.
  void Set(std::function<T()> function) {
    absl::MutexLock lock(&mu_);
    function_ = std::move(function);
    present_.store(static_cast<bool>(function_), std::memory_order_release);
  }
  // False when no function is set; otherwise stores its answer in *value.
  bool Read(T* value) const {
    if (!present_.load(std::memory_order_acquire)) return false;
    absl::MutexLock lock(&mu_);
    if (!function_) return false;
    *value = function_();
    return true;
  }

 private:
  // Lets reads of metrics without a function skip the lock.
  std::atomic<bool> present_{false};
  mutable absl::Mutex mu_;
  std::function<T()> function_ ABSL_GUARDED_BY(mu_);
};

}  // namespace metrics_internal

// A monotonic count.
//
// Thread-safety: every method may be called from any thread at once.
class alignas(kCacheLineBytes) Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void Inc(uint64_t n = 1) {
    cells_[metrics_internal::ThisThreadShard()].value.fetch_add(n, std::memory_order_relaxed);
  }
  // The callback's answer when one is set, otherwise the sum of every Inc.
  uint64_t Value() const;
  // For a count kept elsewhere (the engine's compactions): Value and the
  // rendering ask `function` instead of summing Incs. It runs on the reading
  // thread under a lock of this counter and a reader lock of its family, so it
  // must not touch this counter nor add children or families to the registry.
  void SetCallback(std::function<uint64_t()> function) { callback_.Set(std::move(function)); }

 private:
  struct alignas(kCacheLineBytes) Cell {
    std::atomic<uint64_t> value{0};
  };
  std::array<Cell, kMetricShards> cells_;
  metrics_internal::Callback<uint64_t> callback_;
};

// A value that goes up and down, possibly negative.
//
// Thread-safety: every method may be called from any thread at once.
class alignas(kCacheLineBytes) Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  // A compare-and-swap loop: gauges change on events (a connection opens), not per request.
  void Add(double delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  void Inc() { Add(1.0); }
  void Dec() { Add(-1.0); }
  // The callback's answer when one is set, otherwise the last Set plus Adds.
  double Value() const;
  // For a figure computed when read (the engine's key count): see Counter::SetCallback.
  void SetCallback(std::function<double()> function) { callback_.Set(std::move(function)); }

 private:
  std::atomic<double> value_{0.0};
  metrics_internal::Callback<double> callback_;
};

// Counts of observations in fixed buckets, with their sum, like Prometheus'
// histogram: bucket i counts values v with bounds[i-1] < v <= bounds[i], and a
// last bucket (le="+Inf") counts values above every bound and NaN.
//
// Thread-safety: every method may be called from any thread at once.
class Histogram {
 public:
  // bucket_bounds must outlive the Histogram (its family owns them).
  // REQUIRES: strictly increasing and finite (MetricsRegistry checks).
  explicit Histogram(const std::vector<double>* bucket_bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // O(log buckets): a binary search, one relaxed add and one uncontended
  // compare-and-swap on the sum, all on this thread's shard.
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> bucket_counts;  // per bucket, not cumulative; last is +Inf
    double sum = 0.0;
    uint64_t count = 0;  // the sum of bucket_counts
  };
  Snapshot Read() const;
  const std::vector<double>& bucket_bounds() const { return *bounds_; }

 private:
  // One shard is words_per_shard_ words in whole cache lines: the sum's bits
  // (a double) at 0, then one count per bucket.
  struct alignas(kCacheLineBytes) Line {
    std::array<std::atomic<uint64_t>, kCacheLineBytes / sizeof(uint64_t)> words;
  };
  static constexpr size_t kWordsPerLine = kCacheLineBytes / sizeof(uint64_t);
  std::atomic<uint64_t>& Word(size_t shard, size_t word) const {
    Line& line = lines_[shard * lines_per_shard_ + word / kWordsPerLine];
    return line.words[word % kWordsPerLine];
  }

  const std::vector<double>* const bounds_;
  const size_t lines_per_shard_;
  const std::unique_ptr<Line[]> lines_;
};

enum class MetricType { kCounter, kGauge, kHistogram };

// A named metric with help text and label names; its children carry the label values.
//
// Thread-safety: every method may be called from any thread at once.
class MetricFamily {
 public:
  MetricFamily(const MetricFamily&) = delete;
  MetricFamily& operator=(const MetricFamily&) = delete;
  virtual ~MetricFamily() = default;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  MetricType type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  const std::vector<double>& bucket_bounds() const { return bucket_bounds_; }

  // Appends "# HELP", "# TYPE" and one line per sample, children in the order
  // of their label values.
  virtual void AppendPrometheus(std::string* out) const = 0;

 protected:
  MetricFamily(std::string name, std::string help, MetricType type,
               std::vector<std::string> label_names, std::vector<double> bucket_bounds);

 private:
  // Constant after construction.
  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bucket_bounds_;  // histograms only; children point here
};

// Metric is Counter, Gauge or Histogram.
template <typename Metric>
class Family final : public MetricFamily {
 public:
  // The child with these label values (in the order of label_names()),
  // created on first use. Locks and allocates: keep the pointer, valid as long
  // as the registry. REQUIRES: label_values.size() == label_names().size().
  Metric* WithLabelValues(absl::Span<const absl::string_view> label_values);

  void AppendPrometheus(std::string* out) const override;

 private:
  friend class MetricsRegistry;
  Family(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
         std::vector<double> bucket_bounds)
      : MetricFamily(std::move(name), std::move(help), type, std::move(label_names),
                     std::move(bucket_bounds)) {}

  struct Child {
    std::string rendered_labels;  // `a="x",b="y"`, escaped; empty without labels
    std::unique_ptr<Metric> metric;
  };
  mutable absl::Mutex mu_;
  // Ordered, so the rendering is stable.
  std::map<std::vector<std::string>, Child> children_ ABSL_GUARDED_BY(mu_);
};

// A family whose samples are computed when it is read, for figures kept
// elsewhere whose label values come and go (a backlog per peer) or that are
// not whole numbers (CPU seconds): the collector returns every sample, each
// with values for the family's labels in order. Rendered as the type given
// (a counter's collector must never go back). Without a collector the
// family renders its HELP and TYPE lines only.
//
// Thread-safety: every method may be called from any thread at once.
struct CollectedSample {
  std::vector<std::string> label_values;
  double value = 0.0;
};
class CollectedFamily final : public MetricFamily {
 public:
  using Collector = std::function<std::vector<CollectedSample>()>;
  // Empty clears. After SetCollector returns the previous collector is not
  // running and will not be called again, so its captures may be destroyed.
  // It runs on the reading thread under a lock of this family and a reader
  // lock of the registry: it must not add families.
  void SetCollector(Collector collector) { collector_.Set(std::move(collector)); }
  // The samples now, in the collector's order (none without one).
  std::vector<CollectedSample> Collect() const;

  void AppendPrometheus(std::string* out) const override;

 private:
  friend class MetricsRegistry;
  CollectedFamily(std::string name, std::string help, MetricType type,
                  std::vector<std::string> label_names)
      : MetricFamily(std::move(name), std::move(help), type, std::move(label_names), {}) {}

  metrics_internal::Callback<std::vector<CollectedSample>> collector_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;
// Defined in metrics.cc.
extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

// Owns every family; renders them in the order they were added.
//
// Thread-safety: every method may be called from any thread at once. Adding a
// family with the name of an existing one returns that family if the type,
// label names and bounds agree; otherwise the process aborts (a programming
// error, like an invalid metric or label name).
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  CounterFamily* AddCounterFamily(absl::string_view name, absl::string_view help,
                                  std::vector<std::string> label_names);
  GaugeFamily* AddGaugeFamily(absl::string_view name, absl::string_view help,
                              std::vector<std::string> label_names);
  // bucket_bounds are upper bounds in base units (seconds, bytes), strictly increasing.
  HistogramFamily* AddHistogramFamily(absl::string_view name, absl::string_view help,
                                      std::vector<std::string> label_names,
                                      std::vector<double> bucket_bounds);

  // type: kCounter or kGauge.
  CollectedFamily* AddCollectedFamily(absl::string_view name, absl::string_view help,
                                      MetricType type, std::vector<std::string> label_names);

  // Families without labels, and their one child.
  Counter* AddCounter(absl::string_view name, absl::string_view help);
  Gauge* AddGauge(absl::string_view name, absl::string_view help);
  Histogram* AddHistogram(absl::string_view name, absl::string_view help,
                          std::vector<double> bucket_bounds);

  // Null when no family has this name.
  const MetricFamily* Find(absl::string_view name) const;

  // The Prometheus text exposition format 0.0.4 (kPrometheusContentType).
  std::string RenderPrometheus() const;
  void AppendPrometheus(std::string* out) const;

 private:
  // F is Family<Metric> or CollectedFamily.
  template <typename F>
  F* AddFamily(absl::string_view name, absl::string_view help, MetricType type,
               std::vector<std::string> label_names, std::vector<double> bucket_bounds);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, MetricFamily*> by_name_ ABSL_GUARDED_BY(mu_);
};

// Upper bounds start, start*factor, ... (count of them). REQUIRES: start > 0, factor > 1.
std::vector<double> ExponentialBuckets(double start, double factor, size_t count);
// 100 us .. 10 s in 1-2.5-5 steps: request and replication latencies.
std::vector<double> LatencyBucketsSeconds();
// 50 us .. 2.5 s in 1-2.5-5 steps: fdatasync on anything from NVMe to a busy disk.
std::vector<double> FsyncBucketsSeconds();

// The Prometheus client libraries' process metrics, read from /proc/self when
// scraped: process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds and
// process_start_time_seconds. On a system without /proc they have no samples.
void AddProcessMetrics(MetricsRegistry* registry);

// The replicator's figures of REST.md's JSON /metrics, in its units.
struct ReplicatorFigures {
  uint64_t total_replications = 0;      // writes handed to the replicator
  uint64_t successful_replicas = 0;     // replica acknowledgements received
  uint64_t failed_replicas = 0;         // replica sends that failed for good
  uint64_t queue_size = 0;              // writes waiting to be sent
  double average_ack_time_ms = 0.0;     // over every acknowledgement since start
  double max_replication_lag_ms = 0.0;  // of the slowest replica now
  uint64_t retries_in_progress = 0;
};

// One request route's handles, kept by the HTTP adapter (one per route and
// method) so that recording a request costs no look-up: counters by status
// code are created on the first request with that status, then found by index.
//
// Thread-safety: Record may be called from any thread at once.
class HttpRouteMetrics {
 public:
  // requests and duration must outlive this object.
  HttpRouteMetrics(CounterFamily* requests, Histogram* duration, std::string route,
                   std::string method);
  HttpRouteMetrics(const HttpRouteMetrics&) = delete;
  HttpRouteMetrics& operator=(const HttpRouteMetrics&) = delete;

  void Record(int status, double duration_seconds) {
    RequestCounter(status)->Inc();
    duration_->Observe(duration_seconds);
  }
  // Locks only the first time a status is seen (or for statuses outside 100..599).
  Counter* RequestCounter(int status);
  Histogram* duration() const { return duration_; }

 private:
  static constexpr int kFirstStatus = 100;
  static constexpr int kStatusCount = 500;  // 100..599

  CounterFamily* const requests_;
  Histogram* const duration_;
  const std::string route_;
  const std::string method_;
  // Written once per status (the same pointer by any racing writer: the family
  // returns one child per label values).
  std::array<std::atomic<Counter*>, kStatusCount> by_status_{};
};

// One binary-protocol operation's handles, kept by the network layer (one
// per operation) like HttpRouteMetrics: counters by status are created on
// the first request with that status, then found by index.
//
// Thread-safety: Record may be called from any thread at once.
class ProtocolOperationMetrics {
 public:
  // Status codes are absl's (0..16), labelled by their names in lower case.
  static constexpr int kStatusCodes = 17;

  // requests and duration must outlive this object.
  ProtocolOperationMetrics(CounterFamily* requests, Histogram* duration, std::string operation);
  ProtocolOperationMetrics(const ProtocolOperationMetrics&) = delete;
  ProtocolOperationMetrics& operator=(const ProtocolOperationMetrics&) = delete;

  void Record(int status_code, double duration_seconds) {
    RequestCounter(status_code)->Inc();
    duration_->Observe(duration_seconds);
  }
  // Locks only the first time a code is seen (or for codes outside 0..16).
  Counter* RequestCounter(int status_code);

 private:
  CounterFamily* const requests_;
  Histogram* const duration_;
  const std::string operation_;
  std::array<std::atomic<Counter*>, kStatusCodes> by_code_{};
};

// Every metric logkvd exports, registered in a fixed order under the names
// below. On a single node the replicator's figures are zero but present.
//
// Thread-safety: every method may be called from any thread at once.
class ServerMetrics {
 public:
  ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  MetricsRegistry* registry() { return &registry_; }
  std::string RenderPrometheus() const { return registry_.RenderPrometheus(); }

  // logkv_http_requests_total{route,method,status} and
  // logkv_http_request_duration_seconds{route}. route is the router's pattern
  // ("/v1/kv/{key}"), never the raw path, so the label set stays small.
  // Locks: call once per route and method and keep the pointer.
  HttpRouteMetrics* HttpRoute(absl::string_view route, absl::string_view method);
  CounterFamily* http_requests() const { return http_requests_; }
  HistogramFamily* http_request_duration() const { return http_request_duration_; }

  // logkv_protocol_requests_total{operation,status} and
  // logkv_protocol_request_duration_seconds{operation}: binary-protocol
  // requests by operation name ("Get") and status ("ok", "not_found").
  // Locks: call once per operation and keep the pointer.
  ProtocolOperationMetrics* ProtocolOperation(absl::string_view operation);

  Histogram* fsync_duration() const { return fsync_duration_; }  // logkv_fsync_duration_seconds
  Counter* compactions() const { return compactions_; }          // logkv_compactions_total
  Gauge* keys() const { return keys_; }                          // logkv_keys
  Gauge* log_bytes() const { return log_bytes_; }                // logkv_log_bytes
  Gauge* dead_bytes() const { return dead_bytes_; }              // logkv_dead_bytes
  // Value compression (the engine's, set by callbacks): plain bytes of the
  // values written and the bytes they take stored (their ratio is
  // logkv_value_compression_ratio), values stored compressed, tried and
  // stored plain because it did not pay, and read back decompressed, and
  // logkv_value_compression_cpu_seconds{operation="compress|decompress"}.
  Counter* value_bytes_in() const { return value_bytes_in_; }  // logkv_value_bytes_in_total
  Counter* value_bytes_stored() const { return value_bytes_stored_; }
  Gauge* value_compression_ratio() const { return value_compression_ratio_; }
  Counter* values_compressed() const { return values_compressed_; }
  Counter* values_compression_skipped() const { return values_compression_skipped_; }
  Counter* values_decompressed() const { return values_decompressed_; }
  Gauge* compress_cpu_seconds() const { return compress_cpu_seconds_; }
  Gauge* decompress_cpu_seconds() const { return decompress_cpu_seconds_; }
  // logkv_connections{protocol="binary"} and {protocol="http"}.
  Gauge* binary_connections() const { return binary_connections_; }
  Gauge* http_connections() const { return http_connections_; }
  // logkv_buffered_request_bytes: held for requests still arriving.
  Gauge* buffered_request_bytes() const { return buffered_request_bytes_; }
  // logkv_socket_writes_total: writes to the connections' sockets.
  Counter* socket_writes() const { return socket_writes_; }
  Counter* rate_limited() const { return rate_limited_; }    // logkv_rate_limited_requests_total
  Counter* auth_failures() const { return auth_failures_; }  // logkv_auth_failures_total

  // The replicator's: logkv_replications_total, logkv_replica_acks_total{result="ok|failed|retried"},
  // logkv_replication_queue_size, logkv_replication_ack_seconds (a histogram:
  // its _sum / _count is the average of REST.md), logkv_replication_lag_max_seconds,
  // logkv_replication_retries_in_progress.
  Counter* replications() const { return replications_; }
  Counter* replica_acks_ok() const { return replica_acks_ok_; }
  Counter* replica_acks_failed() const { return replica_acks_failed_; }
  Counter* replica_retries() const { return replica_acks_retried_; }
  Counter* stale_retries() const { return stale_retries_; }
  Gauge* replication_queue_size() const { return replication_queue_size_; }
  Histogram* replication_ack_seconds() const { return replication_ack_seconds_; }
  Gauge* replication_lag_max_seconds() const { return replication_lag_max_seconds_; }
  Gauge* replication_retries_in_progress() const { return replication_retries_in_progress_; }
  // logkv_peer_batched_requests_total / logkv_peer_batched_items_total: the
  // coordinator's Replicate and ReadRecords requests, and the records or
  // keys they carried (items / requests = the batch size; ReplicaBatcher).
  Counter* peer_batched_requests() const { return peer_batched_requests_; }
  Counter* peer_batched_items() const { return peer_batched_items_; }

 private:
  MetricsRegistry registry_;

  // Constant after construction; they point into registry_.
  CounterFamily* const http_requests_;
  HistogramFamily* const http_request_duration_;
  CounterFamily* const protocol_requests_;
  HistogramFamily* const protocol_request_duration_;
  Histogram* const fsync_duration_;
  Counter* const compactions_;
  Gauge* const keys_;
  Gauge* const log_bytes_;
  Gauge* const dead_bytes_;
  Counter* const value_bytes_in_;
  Counter* const value_bytes_stored_;
  Gauge* const value_compression_ratio_;
  Counter* const values_compressed_;
  Counter* const values_compression_skipped_;
  Counter* const values_decompressed_;
  GaugeFamily* const compression_cpu_seconds_;
  Gauge* const compress_cpu_seconds_;
  Gauge* const decompress_cpu_seconds_;
  GaugeFamily* const connections_;
  Gauge* const binary_connections_;
  Gauge* const http_connections_;
  Gauge* const buffered_request_bytes_;
  Counter* const socket_writes_;
  Counter* const rate_limited_;
  Counter* const auth_failures_;
  Counter* const replications_;
  CounterFamily* const replica_acks_;
  Counter* const replica_acks_ok_;
  Counter* const replica_acks_failed_;
  Counter* const replica_acks_retried_;
  Counter* const stale_retries_;
  Gauge* const replication_queue_size_;
  Histogram* const replication_ack_seconds_;
  Gauge* const replication_lag_max_seconds_;
  Gauge* const replication_retries_in_progress_;
  Counter* const peer_batched_requests_;
  Counter* const peer_batched_items_;

  absl::Mutex routes_mu_;
  // Keyed by (route, method).
  absl::flat_hash_map<std::pair<std::string, std::string>, std::unique_ptr<HttpRouteMetrics>>
      routes_ ABSL_GUARDED_BY(routes_mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<ProtocolOperationMetrics>> operations_
      ABSL_GUARDED_BY(routes_mu_);
};

// The replicator's current figures in REST.md's units, for the JSON /metrics.
ReplicatorFigures ReadReplicatorFigures(const ServerMetrics& metrics);

}  // namespace logkv::server

#endif  // LOGKV_SERVER_METRICS_H_
