#include "server/metrics.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <system_error>

#include <sys/resource.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace logkv::server {
namespace {

// Registration mistakes are programming errors found by the first run of any
// test, so they stop the process with the reason rather than limp on.
[[noreturn]] void Fatal(const std::string& message) {
  std::fprintf(stderr, "logkv metrics: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || (c >= '0' && c <= '9'); }

// Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(absl::string_view name) {
  if (name.empty()) return false;
  if (!IsNameStart(name[0]) && name[0] != ':') return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return IsNameChar(c) || c == ':'; });
}

// Prometheus: [a-zA-Z_][a-zA-Z0-9_]*, and names starting "__" are reserved.
bool IsValidLabelName(absl::string_view name) {
  if (name.empty() || !IsNameStart(name[0])) return false;
  if (absl::string_view(name).substr(0, 2) == "__") return false;
  return std::all_of(name.begin(), name.end(), IsNameChar);
}

// HELP text escapes backslash and newline; label values also the double quote.
void AppendEscaped(absl::string_view text, bool escape_quote, std::string* out) {
  for (char c : text) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '"':
        if (escape_quote) {
          out->append("\\\"");
        } else {
          out->push_back(c);
        }
        break;
      default:
        out->push_back(c);
    }
  }
}

// Go's strconv.ParseFloat reads the result (as Prometheus does): the shortest
// decimal that reads back as the same double, and its spellings of the specials.
void AppendDouble(double value, std::string* out) {
  if (std::isnan(value)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(value)) {
    out->append(value > 0 ? "+Inf" : "-Inf");
    return;
  }
  char buffer[32];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out->append(buffer, result.ptr);
}

absl::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

std::string RenderLabels(const std::vector<std::string>& names,
                         const std::vector<std::string>& values) {
  std::string rendered;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) rendered.push_back(',');
    absl::StrAppend(&rendered, names[i], "=\"");
    AppendEscaped(values[i], /*escape_quote=*/true, &rendered);
    rendered.push_back('"');
  }
  return rendered;
}

// "name{labels} " or "name " without labels.
void AppendSeries(absl::string_view name, absl::string_view suffix, absl::string_view labels,
                  std::string* out) {
  absl::StrAppend(out, name, suffix);
  if (!labels.empty()) absl::StrAppend(out, "{", labels, "}");
  out->push_back(' ');
}

void AppendSamples(absl::string_view name, absl::string_view labels, const Counter& counter,
                   std::string* out) {
  AppendSeries(name, "", labels, out);
  absl::StrAppend(out, counter.Value(), "\n");
}

void AppendSamples(absl::string_view name, absl::string_view labels, const Gauge& gauge,
                   std::string* out) {
  AppendSeries(name, "", labels, out);
  AppendDouble(gauge.Value(), out);
  out->push_back('\n');
}

void AppendSamples(absl::string_view name, absl::string_view labels, const Histogram& histogram,
                   std::string* out) {
  const Histogram::Snapshot snapshot = histogram.Read();
  const std::vector<double>& bounds = histogram.bucket_bounds();
  const std::string separator = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < snapshot.bucket_counts.size(); ++i) {
    cumulative += snapshot.bucket_counts[i];
    absl::StrAppend(out, name, "_bucket{", labels, separator, "le=\"");
    if (i < bounds.size()) {
      AppendDouble(bounds[i], out);
    } else {
      out->append("+Inf");
    }
    absl::StrAppend(out, "\"} ", cumulative, "\n");
  }
  AppendSeries(name, "_sum", labels, out);
  AppendDouble(snapshot.sum, out);
  out->push_back('\n');
  AppendSeries(name, "_count", labels, out);
  absl::StrAppend(out, snapshot.count, "\n");
}

template <typename Metric>
std::unique_ptr<Metric> MakeMetric(const std::vector<double>* bucket_bounds) {
  if constexpr (std::is_same_v<Metric, Histogram>) {
    return std::make_unique<Histogram>(bucket_bounds);
  } else {
    return std::make_unique<Metric>();
  }
}

template <typename Metric>
constexpr MetricType TypeOf();
template <>
constexpr MetricType TypeOf<Counter>() {
  return MetricType::kCounter;
}
template <>
constexpr MetricType TypeOf<Gauge>() {
  return MetricType::kGauge;
}
template <>
constexpr MetricType TypeOf<Histogram>() {
  return MetricType::kHistogram;
}

// Reads a gauge that counts things as a count: rounded, never negative.
uint64_t GaugeAsCount(const Gauge& gauge) {
  const double value = gauge.Value();
  if (!(value > 0)) return 0;
  return static_cast<uint64_t>(std::llround(value));
}

}  // namespace

namespace metrics_internal {
size_t NextThreadShard() {
  static std::atomic<size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace metrics_internal

uint64_t Counter::Value() const {
  uint64_t value = 0;
  if (callback_.Read(&value)) return value;
  for (const Cell& cell : cells_) value += cell.value.load(std::memory_order_relaxed);
  return value;
}

double Gauge::Value() const {
  double value = 0.0;
  if (callback_.Read(&value)) return value;
  return value_.load(std::memory_order_relaxed);
}

Histogram::Histogram(const std::vector<double>* bucket_bounds)
    : bounds_(bucket_bounds),
      // The sum, then bounds + 1 counts (the last for +Inf).
      lines_per_shard_((1 + bucket_bounds->size() + 1 + kWordsPerLine - 1) / kWordsPerLine),
      lines_(std::make_unique<Line[]>(kMetricShards * lines_per_shard_)) {}

void Histogram::Observe(double value) {
  const std::vector<double>& bounds = *bounds_;
  // The first bound >= value: Prometheus' buckets are "less than or equal".
  size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
  if (std::isnan(value)) bucket = bounds.size();
  const size_t shard = metrics_internal::ThisThreadShard();
  Word(shard, 1 + bucket).fetch_add(1, std::memory_order_relaxed);
  // The shard is this thread's, so the exchange fails only when a thread
  // sharing the shard (more threads than shards) raced it.
  std::atomic<uint64_t>& sum = Word(shard, 0);
  uint64_t old_bits = sum.load(std::memory_order_relaxed);
  while (!sum.compare_exchange_weak(
      old_bits, std::bit_cast<uint64_t>(std::bit_cast<double>(old_bits) + value),
      std::memory_order_relaxed)) {
  }
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.bucket_counts.assign(bounds_->size() + 1, 0);
  for (size_t shard = 0; shard < kMetricShards; ++shard) {
    snapshot.sum += std::bit_cast<double>(Word(shard, 0).load(std::memory_order_relaxed));
    for (size_t bucket = 0; bucket < snapshot.bucket_counts.size(); ++bucket) {
      snapshot.bucket_counts[bucket] += Word(shard, 1 + bucket).load(std::memory_order_relaxed);
    }
  }
  // Counted from the buckets so that _count always equals the +Inf bucket.
  for (uint64_t count : snapshot.bucket_counts) snapshot.count += count;
  return snapshot;
}

MetricFamily::MetricFamily(std::string name, std::string help, MetricType type,
                           std::vector<std::string> label_names, std::vector<double> bucket_bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bucket_bounds_(std::move(bucket_bounds)) {}

template <typename Metric>
Metric* Family<Metric>::WithLabelValues(absl::Span<const absl::string_view> label_values) {
  if (label_values.size() != label_names().size()) {
    Fatal(absl::StrCat(name(), " has ", label_names().size(), " labels (",
                       absl::StrJoin(label_names(), ","), "), given ", label_values.size(),
                       " values"));
  }
  std::vector<std::string> key(label_values.begin(), label_values.end());
  absl::MutexLock lock(&mu_);
  auto it = children_.find(key);
  if (it != children_.end()) return it->second.metric.get();
  Child child;
  child.rendered_labels = RenderLabels(label_names(), key);
  child.metric = MakeMetric<Metric>(&bucket_bounds());
  Metric* metric = child.metric.get();
  children_.emplace(std::move(key), std::move(child));
  return metric;
}

template <typename Metric>
void Family<Metric>::AppendPrometheus(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name(), " ");
  AppendEscaped(help(), /*escape_quote=*/false, out);
  absl::StrAppend(out, "\n# TYPE ", name(), " ", TypeName(type()), "\n");
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [values, child] : children_) {
    AppendSamples(name(), child.rendered_labels, *child.metric, out);
  }
}

std::vector<CollectedSample> CollectedFamily::Collect() const {
  std::vector<CollectedSample> samples;
  (void)collector_.Read(&samples);
  return samples;
}

void CollectedFamily::AppendPrometheus(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name(), " ");
  AppendEscaped(help(), /*escape_quote=*/false, out);
  absl::StrAppend(out, "\n# TYPE ", name(), " ", TypeName(type()), "\n");
  for (const CollectedSample& sample : Collect()) {
    if (sample.label_values.size() != label_names().size()) {
      Fatal(absl::StrCat(name(), " has ", label_names().size(), " labels, a sample ",
                         sample.label_values.size(), " values"));
    }
    AppendSeries(name(), "", RenderLabels(label_names(), sample.label_values), out);
    AppendDouble(sample.value, out);
    out->push_back('\n');
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

template <typename F>
F* MetricsRegistry::AddFamily(absl::string_view name, absl::string_view help, MetricType type,
                             std::vector<std::string> label_names,
                             std::vector<double> bucket_bounds) {
  if (!IsValidMetricName(name)) Fatal(absl::StrCat("invalid metric name '", name, "'"));
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!IsValidLabelName(label)) {
      Fatal(absl::StrCat(name, ": invalid label name '", label, "'"));
    }
    if (type == MetricType::kHistogram && label == "le") {
      Fatal(absl::StrCat(name, ": a histogram cannot have a label named le"));
    }
    if (std::find(label_names.begin(), label_names.begin() + i, label) != label_names.begin() + i) {
      Fatal(absl::StrCat(name, ": label '", label, "' named twice"));
    }
  }
  for (size_t i = 0; i < bucket_bounds.size(); ++i) {
    if (!std::isfinite(bucket_bounds[i])) {
      Fatal(absl::StrCat(name, ": bucket bound ", i, " is not finite"));
    }
    if (i > 0 && !(bucket_bounds[i - 1] < bucket_bounds[i])) {
      Fatal(absl::StrCat(name, ": bucket bounds must increase, but bound ", i, " (",
                         bucket_bounds[i], ") follows ", bucket_bounds[i - 1]));
    }
  }

  absl::MutexLock lock(&mu_);
  auto it = by_name_.find(name);
  if (it != by_name_.end()) {
    MetricFamily* existing = it->second;
    F* same_kind = dynamic_cast<F*>(existing);
    if (same_kind == nullptr || existing->type() != type ||
        existing->label_names() != label_names || existing->bucket_bounds() != bucket_bounds) {
      Fatal(absl::StrCat(name, " registered twice with a different type, labels or buckets"));
    }
    return same_kind;
  }
  // The constructor is private to the registry, so make_unique cannot call it.
  std::unique_ptr<F> family;
  if constexpr (std::is_same_v<F, CollectedFamily>) {
    family.reset(new F(std::string(name), std::string(help), type, std::move(label_names)));
  } else {
    family.reset(new F(std::string(name), std::string(help), type, std::move(label_names),
                       std::move(bucket_bounds)));
  }
  F* result = family.get();
  by_name_.emplace(std::string(name), result);
  families_.push_back(std::move(family));
  return result;
}

CounterFamily* MetricsRegistry::AddCounterFamily(absl::string_view name, absl::string_view help,
                                                 std::vector<std::string> label_names) {
  return AddFamily<CounterFamily>(name, help, TypeOf<Counter>(), std::move(label_names), {});
}

GaugeFamily* MetricsRegistry::AddGaugeFamily(absl::string_view name, absl::string_view help,
                                             std::vector<std::string> label_names) {
  return AddFamily<GaugeFamily>(name, help, TypeOf<Gauge>(), std::move(label_names), {});
}

HistogramFamily* MetricsRegistry::AddHistogramFamily(absl::string_view name, absl::string_view help,
                                                     std::vector<std::string> label_names,
                                                     std::vector<double> bucket_bounds) {
  return AddFamily<HistogramFamily>(name, help, TypeOf<Histogram>(), std::move(label_names),
                              std::move(bucket_bounds));
}

CollectedFamily* MetricsRegistry::AddCollectedFamily(absl::string_view name,
                                                     absl::string_view help, MetricType type,
                                                     std::vector<std::string> label_names) {
  if (type == MetricType::kHistogram) {
    Fatal(absl::StrCat(name, ": a collected family is a counter or a gauge"));
  }
  return AddFamily<CollectedFamily>(name, help, type, std::move(label_names), {});
}

Counter* MetricsRegistry::AddCounter(absl::string_view name, absl::string_view help) {
  return AddCounterFamily(name, help, {})->WithLabelValues({});
}

Gauge* MetricsRegistry::AddGauge(absl::string_view name, absl::string_view help) {
  return AddGaugeFamily(name, help, {})->WithLabelValues({});
}

Histogram* MetricsRegistry::AddHistogram(absl::string_view name, absl::string_view help,
                                         std::vector<double> bucket_bounds) {
  return AddHistogramFamily(name, help, {}, std::move(bucket_bounds))->WithLabelValues({});
}

const MetricFamily* MetricsRegistry::Find(absl::string_view name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::string out;
  AppendPrometheus(&out);
  return out;
}

void MetricsRegistry::AppendPrometheus(std::string* out) const {
  absl::ReaderMutexLock lock(&mu_);
  for (const std::unique_ptr<MetricFamily>& family : families_) family->AppendPrometheus(out);
}

std::vector<double> ExponentialBuckets(double start, double factor, size_t count) {
  if (!(start > 0) || !(factor > 1)) {
    Fatal(absl::StrCat("ExponentialBuckets needs start > 0 and factor > 1, not ", start, " and ",
                       factor));
  }
  std::vector<double> bounds;
  bounds.reserve(count);
  for (double bound = start; bounds.size() < count; bound *= factor) bounds.push_back(bound);
  return bounds;
}

std::vector<double> LatencyBucketsSeconds() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

std::vector<double> FsyncBucketsSeconds() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5};
}

HttpRouteMetrics::HttpRouteMetrics(CounterFamily* requests, Histogram* duration, std::string route,
                                   std::string method)
    : requests_(requests),
      duration_(duration),
      route_(std::move(route)),
      method_(std::move(method)) {}

Counter* HttpRouteMetrics::RequestCounter(int status) {
  const bool indexed = status >= kFirstStatus && status < kFirstStatus + kStatusCount;
  std::atomic<Counter*>* slot = indexed ? &by_status_[status - kFirstStatus] : nullptr;
  if (slot != nullptr) {
    if (Counter* counter = slot->load(std::memory_order_acquire)) return counter;
  }
  const std::string status_text = absl::StrCat(status);
  Counter* counter = requests_->WithLabelValues({route_, method_, status_text});
  if (slot != nullptr) slot->store(counter, std::memory_order_release);
  return counter;
}

ServerMetrics::ServerMetrics()
    : http_requests_(registry_.AddCounterFamily(
          "logkv_http_requests_total",
          "HTTP requests answered, by route pattern, method and status code.",
          {"route", "method", "status"})),
      http_request_duration_(registry_.AddHistogramFamily(
          "logkv_http_request_duration_seconds",
          "Time from an HTTP request's arrival to its response, by route pattern.", {"route"},
          LatencyBucketsSeconds())),
      protocol_requests_(registry_.AddCounterFamily(
          "logkv_protocol_requests_total",
          "Binary protocol requests answered, by operation and status.",
          {"operation", "status"})),
      protocol_request_duration_(registry_.AddHistogramFamily(
          "logkv_protocol_request_duration_seconds",
          "Time from a binary protocol request's decoding to its answer, by operation.",
          {"operation"}, LatencyBucketsSeconds())),
      fsync_duration_(registry_.AddHistogram("logkv_fsync_duration_seconds",
                                             "Duration of each fdatasync of the log.",
                                             FsyncBucketsSeconds())),
      compactions_(
          registry_.AddCounter("logkv_compactions_total", "Log segment compactions completed.")),
      keys_(registry_.AddGauge("logkv_keys", "Live keys of clients (the server's own records left out).")),
      log_bytes_(registry_.AddGauge("logkv_log_bytes", "Bytes in all log segments.")),
      dead_bytes_(registry_.AddGauge("logkv_dead_bytes",
                                     "Bytes of the log that compaction could reclaim.")),
      value_bytes_in_(registry_.AddCounter(
          "logkv_value_bytes_in_total", "Plain bytes of the values written since start.")),
      value_bytes_stored_(registry_.AddCounter(
          "logkv_value_bytes_stored_total",
          "Bytes those values take in their log records, compressed or not.")),
      value_compression_ratio_(registry_.AddGauge(
          "logkv_value_compression_ratio",
          "Value bytes written / value bytes stored since start (1 when nothing is compressed).")),
      values_compressed_(registry_.AddCounter("logkv_values_compressed_total",
                                              "Values stored zstd-compressed.")),
      values_compression_skipped_(registry_.AddCounter(
          "logkv_values_compression_skipped_total",
          "Values compressed and stored plain because compression did not save an eighth.")),
      values_decompressed_(registry_.AddCounter("logkv_values_decompressed_total",
                                                "Compressed values decompressed for a reader.")),
      compression_cpu_seconds_(registry_.AddGaugeFamily(
          "logkv_value_compression_cpu_seconds",
          "CPU time spent on value compression since start, by operation.", {"operation"})),
      compress_cpu_seconds_(compression_cpu_seconds_->WithLabelValues({"compress"})),
      decompress_cpu_seconds_(compression_cpu_seconds_->WithLabelValues({"decompress"})),
      connections_(registry_.AddGaugeFamily(
          "logkv_connections", "Client connections open now, by protocol.", {"protocol"})),
      binary_connections_(connections_->WithLabelValues({"binary"})),
      http_connections_(connections_->WithLabelValues({"http"})),
      buffered_request_bytes_(registry_.AddGauge(
          "logkv_buffered_request_bytes",
          "Bytes reserved now by requests still arriving (frames and HTTP bodies over 64 KiB).")),
      socket_writes_(registry_.AddCounter(
          "logkv_socket_writes_total",
          "Writes to the connections accepted on the binary and HTTP ports, clients' and "
          "peers' (answers, watch and SSE events, TLS records).")),
      rate_limited_(registry_.AddCounter("logkv_rate_limited_requests_total",
                                         "Requests refused by the rate limiter.")),
      auth_failures_(registry_.AddCounter("logkv_auth_failures_total",
                                          "Requests refused for missing or invalid credentials.")),
      replications_(registry_.AddCounter("logkv_replications_total",
                                         "Writes handed to the replicator for the replicas.")),
      replica_acks_(registry_.AddCounterFamily(
          "logkv_replica_acks_total",
          "Replica sends finished, by result: ok (acknowledged), failed (given up) or retried "
          "(sent again while the write waited for its acknowledgements).",
          {"result"})),
      replica_acks_ok_(replica_acks_->WithLabelValues({"ok"})),
      replica_acks_failed_(replica_acks_->WithLabelValues({"failed"})),
      replica_acks_retried_(replica_acks_->WithLabelValues({"retried"})),
      stale_retries_(registry_.AddCounter(
          "logkv_stale_retries_total",
          "Runs of client operations again under a newer configuration, after an owner "
          "refused them as placed under an older one than its own.")),
      replication_queue_size_(registry_.AddGauge("logkv_replication_queue_size",
                                                 "Writes waiting to be sent to replicas.")),
      replication_ack_seconds_(
          registry_.AddHistogram("logkv_replication_ack_seconds",
                                 "Time from sending a write to a replica to its acknowledgement.",
                                 LatencyBucketsSeconds())),
      replication_lag_max_seconds_(registry_.AddGauge("logkv_replication_lag_max_seconds",
                                                      "Replication lag of the slowest replica.")),
      replication_retries_in_progress_(registry_.AddGauge("logkv_replication_retries_in_progress",
                                                          "Replica sends being retried now.")),
      peer_batched_requests_(registry_.AddCounter(
          "logkv_peer_batched_requests_total",
          "Replicate and ReadRecords requests the coordinator sent to peers.")),
      peer_batched_items_(registry_.AddCounter(
          "logkv_peer_batched_items_total",
          "Records and keys those requests carried (one batch per peer and loop turn).")) {
  AddProcessMetrics(&registry_);
}

HttpRouteMetrics* ServerMetrics::HttpRoute(absl::string_view route, absl::string_view method) {
  std::pair<std::string, std::string> key{std::string(route), std::string(method)};
  absl::MutexLock lock(&routes_mu_);
  auto it = routes_.find(key);
  if (it != routes_.end()) return it->second.get();
  // Created now, so every route's histogram is rendered (at zero) before its first request.
  Histogram* duration = http_request_duration_->WithLabelValues({route});
  auto metrics =
      std::make_unique<HttpRouteMetrics>(http_requests_, duration, key.first, key.second);
  HttpRouteMetrics* result = metrics.get();
  routes_.emplace(std::move(key), std::move(metrics));
  return result;
}

ProtocolOperationMetrics::ProtocolOperationMetrics(CounterFamily* requests, Histogram* duration,
                                                   std::string operation)
    : requests_(requests), duration_(duration), operation_(std::move(operation)) {}

Counter* ProtocolOperationMetrics::RequestCounter(int status_code) {
  const bool indexed = status_code >= 0 && status_code < kStatusCodes;
  std::atomic<Counter*>* slot = indexed ? &by_code_[status_code] : nullptr;
  if (slot != nullptr) {
    if (Counter* counter = slot->load(std::memory_order_acquire)) return counter;
  }
  std::string status = absl::AsciiStrToLower(
      absl::StatusCodeToString(static_cast<absl::StatusCode>(status_code)));
  if (status.empty()) status = "unknown";  // not one of absl's codes
  Counter* counter = requests_->WithLabelValues({operation_, status});
  if (slot != nullptr) slot->store(counter, std::memory_order_release);
  return counter;
}

ProtocolOperationMetrics* ServerMetrics::ProtocolOperation(absl::string_view operation) {
  absl::MutexLock lock(&routes_mu_);
  auto it = operations_.find(operation);
  if (it != operations_.end()) return it->second.get();
  // Created now, so every operation's histogram is rendered (at zero) before its first request.
  Histogram* duration = protocol_request_duration_->WithLabelValues({operation});
  auto metrics = std::make_unique<ProtocolOperationMetrics>(protocol_requests_, duration,
                                                            std::string(operation));
  ProtocolOperationMetrics* result = metrics.get();
  operations_.emplace(std::string(operation), std::move(metrics));
  return result;
}

namespace {

// The whole of a small file such as /proc/self/stat; empty when unreadable.
std::string ReadSmallFile(const char* path) {
  std::ifstream file(path);
  std::ostringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

// The fields of /proc/self/stat after the command name (which may hold
// spaces and parentheses, so the split starts after the last ')'): index 0
// is field 3 of proc(5), "state".
std::vector<std::string> ProcSelfStatFields() {
  const std::string stat = ReadSmallFile("/proc/self/stat");
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  return absl::StrSplit(absl::string_view(stat).substr(close + 1), ' ', absl::SkipEmpty());
}

// proc(5)'s field number (1-based) of /proc/self/stat as a number; false when absent.
bool StatField(const std::vector<std::string>& fields, size_t number, double* value) {
  const size_t index = number - 3;
  if (number < 3 || index >= fields.size()) return false;
  return absl::SimpleAtod(fields[index], value);
}

std::vector<CollectedSample> One(double value) { return {CollectedSample{{}, value}}; }

double ClockTicksPerSecond() {
  const long ticks = ::sysconf(_SC_CLK_TCK);
  return ticks > 0 ? static_cast<double>(ticks) : 100.0;
}

// The boot time in unix seconds (/proc/stat's btime); 0 when unknown.
double BootTimeSeconds() {
  const std::string stat = ReadSmallFile("/proc/stat");
  for (absl::string_view line : absl::StrSplit(stat, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    double seconds = 0;
    if (absl::SimpleAtod(line, &seconds)) return seconds;
  }
  return 0;
}

}  // namespace

void AddProcessMetrics(MetricsRegistry* registry) {
  registry
      ->AddCollectedFamily("process_cpu_seconds_total",
                           "Total user and system CPU time spent in seconds.",
                           MetricType::kCounter, {})
      ->SetCollector([]() -> std::vector<CollectedSample> {
        const std::vector<std::string> fields = ProcSelfStatFields();
        double user = 0, system = 0;
        if (!StatField(fields, 14, &user) || !StatField(fields, 15, &system)) return {};
        return One((user + system) / ClockTicksPerSecond());
      });
  registry
      ->AddCollectedFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                           MetricType::kGauge, {})
      ->SetCollector([]() -> std::vector<CollectedSample> {
        double pages = 0;
        if (!StatField(ProcSelfStatFields(), 24, &pages)) return {};
        return One(pages * static_cast<double>(::sysconf(_SC_PAGESIZE)));
      });
  registry
      ->AddCollectedFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                           MetricType::kGauge, {})
      ->SetCollector([]() -> std::vector<CollectedSample> {
        double bytes = 0;
        if (!StatField(ProcSelfStatFields(), 23, &bytes)) return {};
        return One(bytes);
      });
  registry
      ->AddCollectedFamily("process_open_fds", "Number of open file descriptors.",
                           MetricType::kGauge, {})
      ->SetCollector([]() -> std::vector<CollectedSample> {
        std::error_code error;
        std::filesystem::directory_iterator it("/proc/self/fd", error);
        if (error) return {};
        double count = 0;
        for (; it != std::filesystem::directory_iterator(); it.increment(error)) {
          if (error) return {};
          ++count;
        }
        // The iterator's own descriptor on /proc/self/fd is one of them.
        return One(std::max(0.0, count - 1));
      });
  registry
      ->AddCollectedFamily("process_max_fds", "Maximum number of open file descriptors.",
                           MetricType::kGauge, {})
      ->SetCollector([]() -> std::vector<CollectedSample> {
        struct rlimit limit;
        if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return {};
        return One(limit.rlim_cur == RLIM_INFINITY ? std::numeric_limits<double>::infinity()
                                                   : static_cast<double>(limit.rlim_cur));
      });
  registry
      ->AddCollectedFamily("process_start_time_seconds",
                           "Start time of the process since unix epoch in seconds.",
                           MetricType::kGauge, {})
      ->SetCollector([]() -> std::vector<CollectedSample> {
        double ticks_after_boot = 0;
        const double boot = BootTimeSeconds();
        if (boot <= 0 || !StatField(ProcSelfStatFields(), 22, &ticks_after_boot)) return {};
        return One(boot + ticks_after_boot / ClockTicksPerSecond());
      });
}

ReplicatorFigures ReadReplicatorFigures(const ServerMetrics& metrics) {
  ReplicatorFigures figures;
  figures.total_replications = metrics.replications()->Value();
  figures.successful_replicas = metrics.replica_acks_ok()->Value();
  figures.failed_replicas = metrics.replica_acks_failed()->Value();
  figures.queue_size = GaugeAsCount(*metrics.replication_queue_size());
  const Histogram::Snapshot acks = metrics.replication_ack_seconds()->Read();
  figures.average_ack_time_ms =
      acks.count == 0 ? 0.0 : acks.sum / static_cast<double>(acks.count) * 1000.0;
  figures.max_replication_lag_ms = metrics.replication_lag_max_seconds()->Value() * 1000.0;
  figures.retries_in_progress = GaugeAsCount(*metrics.replication_retries_in_progress());
  return figures;
}

}  // namespace logkv::server
