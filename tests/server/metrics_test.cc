// Tests of server/metrics: exact totals under concurrent updates, histogram
// bucket placement, and the Prometheus text format byte for byte.
#include "server/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace logkv::server {
namespace {

// More threads than shards, so some threads share a shard's cells.
constexpr int kThreads = static_cast<int>(kMetricShards) + 4;

void RunThreads(int threads, const std::function<void(int)>& body) {
  std::vector<std::thread> running;
  running.reserve(threads);
  for (int i = 0; i < threads; ++i) running.emplace_back(body, i);
  for (std::thread& thread : running) thread.join();
}

TEST(CounterTest, ExactTotalFromManyThreads) {
  Counter counter;
  constexpr int kIncrementsPerThread = 200'000;
  RunThreads(kThreads, [&](int thread) {
    for (int i = 0; i < kIncrementsPerThread; ++i) counter.Inc();
    counter.Inc(static_cast<uint64_t>(thread));
  });
  uint64_t expected = uint64_t{kThreads} * kIncrementsPerThread;
  for (int thread = 0; thread < kThreads; ++thread) expected += thread;
  EXPECT_EQ(counter.Value(), expected);
}

TEST(CounterTest, LabelledChildrenCountSeparately) {
  MetricsRegistry registry;
  CounterFamily* family = registry.AddCounterFamily("test_total", "Help.", {"route", "status"});
  Counter* ok = family->WithLabelValues({"/a", "200"});
  Counter* missing = family->WithLabelValues({"/a", "404"});
  ASSERT_NE(ok, missing);
  EXPECT_EQ(family->WithLabelValues({"/a", "200"}), ok);  // one child per label values
  RunThreads(kThreads, [&](int) {
    for (int i = 0; i < 10'000; ++i) {
      ok->Inc();
      if (i % 10 == 0) missing->Inc();
    }
  });
  EXPECT_EQ(ok->Value(), uint64_t{kThreads} * 10'000);
  EXPECT_EQ(missing->Value(), uint64_t{kThreads} * 1'000);
}

TEST(CounterTest, PaddedToCacheLines) {
  EXPECT_EQ(alignof(Counter), kCacheLineBytes);
  EXPECT_EQ(alignof(Gauge), kCacheLineBytes);
  // Two counters allocated side by side never share a line.
  std::vector<Counter> counters(2);
  const auto first = reinterpret_cast<uintptr_t>(&counters[0]);
  const auto second = reinterpret_cast<uintptr_t>(&counters[1]);
  EXPECT_GE(second - first, kCacheLineBytes);
  EXPECT_EQ(first % kCacheLineBytes, 0u);
}

TEST(GaugeTest, SetAddAndNegative) {
  Gauge gauge;
  EXPECT_EQ(gauge.Value(), 0.0);
  gauge.Set(3.5);
  gauge.Add(-5);
  EXPECT_EQ(gauge.Value(), -1.5);
  gauge.Inc();
  gauge.Dec();
  gauge.Dec();
  EXPECT_EQ(gauge.Value(), -2.5);
}

TEST(GaugeTest, ExactFromManyThreads) {
  Gauge gauge;
  RunThreads(kThreads, [&](int thread) {
    for (int i = 0; i < 10'000; ++i) {
      gauge.Inc();
      if (thread % 2 == 0) gauge.Dec();
    }
  });
  // Odd threads leave their increments: integers are exact in a double.
  EXPECT_EQ(gauge.Value(), (kThreads / 2) * 10'000.0);
}

TEST(GaugeTest, CallbackAnswersAtRenderTimeAndCanBeCleared) {
  MetricsRegistry registry;
  Gauge* gauge = registry.AddGauge("test_keys", "Keys.");
  Counter* counter = registry.AddCounter("test_compactions_total", "Compactions.");
  gauge->Set(5);
  counter->Inc(2);
  int calls = 0;
  double keys = 42;
  gauge->SetCallback([&] {
    ++calls;
    return keys;
  });
  counter->SetCallback([] { return uint64_t{7}; });
  EXPECT_EQ(gauge->Value(), 42.0);
  EXPECT_EQ(counter->Value(), 7u);
  keys = 43;
  const std::string text = registry.RenderPrometheus();
  EXPECT_NE(text.find("\ntest_keys 43\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\ntest_compactions_total 7\n"), std::string::npos) << text;
  EXPECT_EQ(calls, 2);

  gauge->SetCallback(nullptr);
  counter->SetCallback(nullptr);
  EXPECT_EQ(gauge->Value(), 5.0);
  EXPECT_EQ(counter->Value(), 2u);
  EXPECT_EQ(calls, 2);
}

TEST(HistogramTest, BucketPlacementIsLessOrEqual) {
  const std::vector<double> bounds = {0.1, 0.5, 1};
  Histogram histogram(&bounds);
  histogram.Observe(0.05);  // le 0.1
  histogram.Observe(0.1);   // le 0.1: a value on a bound belongs to that bound's bucket
  histogram.Observe(0.3);   // le 0.5
  histogram.Observe(1);     // le 1
  histogram.Observe(1.5);   // +Inf
  histogram.Observe(-1);    // le 0.1: below everything
  histogram.Observe(std::numeric_limits<double>::quiet_NaN());  // +Inf, like Prometheus' Go client
  const Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.bucket_counts, (std::vector<uint64_t>{3, 1, 1, 2}));
  EXPECT_EQ(snapshot.count, 7u);
  EXPECT_TRUE(std::isnan(snapshot.sum));
}

TEST(HistogramTest, NoBoundsCountsEverythingInInf) {
  const std::vector<double> bounds;
  Histogram histogram(&bounds);
  histogram.Observe(1);
  histogram.Observe(2);
  const Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.bucket_counts, (std::vector<uint64_t>{2}));
  EXPECT_EQ(snapshot.sum, 3.0);
}

TEST(HistogramTest, ExactCountsAndSumFromManyThreads) {
  // More buckets than fit in one cache line, so a shard spans several lines.
  const std::vector<double> bounds = ExponentialBuckets(0.001, 2, 20);
  Histogram histogram(&bounds);
  constexpr int kObservationsPerThread = 100'000;
  RunThreads(kThreads, [&](int thread) {
    for (int i = 0; i < kObservationsPerThread; ++i) histogram.Observe(thread % 2 ? 0.5 : 2048.0);
  });
  const Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.count, uint64_t{kThreads} * kObservationsPerThread);
  const uint64_t odd_threads = kThreads / 2;
  const uint64_t even_threads = kThreads - odd_threads;
  // Halves and powers of two add exactly.
  EXPECT_EQ(snapshot.sum, odd_threads * kObservationsPerThread * 0.5 +
                              even_threads * kObservationsPerThread * 2048.0);
  // 0.5 lies in (0.256, 0.512]: bucket 9. 2048 is above the last bound, 524.288.
  EXPECT_EQ(snapshot.bucket_counts[9], odd_threads * kObservationsPerThread);
  EXPECT_EQ(snapshot.bucket_counts.back(), even_threads * kObservationsPerThread);
}

TEST(HistogramTest, RenderingIsCumulative) {
  MetricsRegistry registry;
  Histogram* histogram = registry.AddHistogram("test_seconds", "Test.", {1, 2, 3});
  for (double value : {0.5, 1.5, 1.5, 2.5, 2.5, 2.5, 9.0}) histogram->Observe(value);
  const std::string text = registry.RenderPrometheus();
  EXPECT_NE(text.find("test_seconds_bucket{le=\"1\"} 1\n"
                      "test_seconds_bucket{le=\"2\"} 3\n"
                      "test_seconds_bucket{le=\"3\"} 6\n"
                      "test_seconds_bucket{le=\"+Inf\"} 7\n"
                      "test_seconds_sum 20\n"
                      "test_seconds_count 7\n"),
            std::string::npos)
      << text;
}

TEST(HistogramTest, BoundsAreWrittenShortest) {
  MetricsRegistry registry;
  registry.AddHistogram("test_seconds", "Test.", {1e-05, 0.005, 0.1, 2.5, 10});
  const std::string text = registry.RenderPrometheus();
  for (const char* le : {"1e-05", "0.005", "0.1", "2.5", "10"}) {
    EXPECT_NE(text.find(std::string("{le=\"") + le + "\"} 0\n"), std::string::npos) << le;
  }
}

TEST(RenderTest, EscapesLabelValuesAndHelp) {
  MetricsRegistry registry;
  CounterFamily* family =
      registry.AddCounterFamily("test_total", "Back\\slash, \"quotes\"\nand a newline.", {"v"});
  family->WithLabelValues({"a\\b\"c\nd"})->Inc();
  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP test_total Back\\\\slash, \"quotes\"\\nand a newline.\n"
            "# TYPE test_total counter\n"
            "test_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
}

TEST(RenderTest, GoldenSmallRegistry) {
  MetricsRegistry registry;
  CounterFamily* requests =
      registry.AddCounterFamily("test_requests_total", "Requests by route.", {"route", "status"});
  // Created out of order: the rendering sorts children by their label values.
  requests->WithLabelValues({"/b", "200"})->Inc(3);
  requests->WithLabelValues({"/a", "404"})->Inc();
  requests->WithLabelValues({"/a", "200"});
  registry.AddGauge("test_temperature_celsius", "A gauge.")->Set(-2.5);
  Histogram* latency = registry.AddHistogram("test_latency_seconds", "Latency.", {0.1, 0.25, 1});
  for (double value : {0.0625, 0.125, 0.25, 0.5, 8.0}) latency->Observe(value);
  HistogramFamily* by_op =
      registry.AddHistogramFamily("test_op_seconds", "By operation.", {"op"}, {0.5});
  by_op->WithLabelValues({"get"})->Observe(0.25);
  registry.AddGaugeFamily("test_empty", "No children yet.", {"x"});

  const std::string expected =
      "# HELP test_requests_total Requests by route.\n"
      "# TYPE test_requests_total counter\n"
      "test_requests_total{route=\"/a\",status=\"200\"} 0\n"
      "test_requests_total{route=\"/a\",status=\"404\"} 1\n"
      "test_requests_total{route=\"/b\",status=\"200\"} 3\n"
      "# HELP test_temperature_celsius A gauge.\n"
      "# TYPE test_temperature_celsius gauge\n"
      "test_temperature_celsius -2.5\n"
      "# HELP test_latency_seconds Latency.\n"
      "# TYPE test_latency_seconds histogram\n"
      "test_latency_seconds_bucket{le=\"0.1\"} 1\n"
      "test_latency_seconds_bucket{le=\"0.25\"} 3\n"
      "test_latency_seconds_bucket{le=\"1\"} 4\n"
      "test_latency_seconds_bucket{le=\"+Inf\"} 5\n"
      "test_latency_seconds_sum 8.9375\n"
      "test_latency_seconds_count 5\n"
      "# HELP test_op_seconds By operation.\n"
      "# TYPE test_op_seconds histogram\n"
      "test_op_seconds_bucket{op=\"get\",le=\"0.5\"} 1\n"
      "test_op_seconds_bucket{op=\"get\",le=\"+Inf\"} 1\n"
      "test_op_seconds_sum{op=\"get\"} 0.25\n"
      "test_op_seconds_count{op=\"get\"} 1\n"
      "# HELP test_empty No children yet.\n"
      "# TYPE test_empty gauge\n";
  EXPECT_EQ(registry.RenderPrometheus(), expected);
  // Rendering twice gives the same text.
  EXPECT_EQ(registry.RenderPrometheus(), expected);
}

TEST(RenderTest, SpecialGaugeValues) {
  MetricsRegistry registry;
  GaugeFamily* family = registry.AddGaugeFamily("test_value", "Values.", {"case"});
  family->WithLabelValues({"a"})->Set(std::numeric_limits<double>::infinity());
  family->WithLabelValues({"b"})->Set(-std::numeric_limits<double>::infinity());
  family->WithLabelValues({"c"})->Set(std::numeric_limits<double>::quiet_NaN());
  family->WithLabelValues({"d"})->Set(1e21);
  family->WithLabelValues({"e"})->Set(123456789);
  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP test_value Values.\n"
            "# TYPE test_value gauge\n"
            "test_value{case=\"a\"} +Inf\n"
            "test_value{case=\"b\"} -Inf\n"
            "test_value{case=\"c\"} NaN\n"
            "test_value{case=\"d\"} 1e+21\n"
            "test_value{case=\"e\"} 123456789\n");
}

TEST(RegistryTest, SameRegistrationReturnsTheSameFamily) {
  MetricsRegistry registry;
  CounterFamily* first = registry.AddCounterFamily("test_total", "Help.", {"a"});
  EXPECT_EQ(registry.AddCounterFamily("test_total", "Help.", {"a"}), first);
  EXPECT_EQ(registry.Find("test_total"), first);
  EXPECT_EQ(registry.Find("test_other"), nullptr);
  Histogram* histogram = registry.AddHistogram("test_seconds", "Help.", {1, 2});
  EXPECT_EQ(registry.AddHistogram("test_seconds", "Help.", {1, 2}), histogram);
}

TEST(RegistryDeathTest, ProgrammingErrorsAbortWithTheReason) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MetricsRegistry registry;
  registry.AddCounterFamily("test_total", "Help.", {"a"});
  EXPECT_DEATH(registry.AddGaugeFamily("test_total", "Help.", {"a"}), "registered twice");
  EXPECT_DEATH(registry.AddCounterFamily("test_total", "Help.", {"b"}), "registered twice");
  EXPECT_DEATH(registry.AddCounter("9starts_with_digit", "Help."), "invalid metric name");
  EXPECT_DEATH(registry.AddCounterFamily("test_labels", "Help.", {"a-b"}), "invalid label");
  EXPECT_DEATH(registry.AddCounterFamily("test_labels", "Help.", {"__reserved"}), "invalid label");
  EXPECT_DEATH(registry.AddCounterFamily("test_labels", "Help.", {"a", "a"}), "named twice");
  EXPECT_DEATH(registry.AddHistogramFamily("test_h", "Help.", {"le"}, {1}), "named le");
  EXPECT_DEATH(registry.AddHistogram("test_h", "Help.", {2, 1}), "must increase");
  EXPECT_DEATH(registry.AddHistogram("test_h", "Help.", {1, 1}), "must increase");
  EXPECT_DEATH(registry.AddHistogram("test_h", "Help.", {std::numeric_limits<double>::infinity()}),
               "not finite");
  CounterFamily* family = registry.AddCounterFamily("test_total", "Help.", {"a"});
  EXPECT_DEATH(family->WithLabelValues({"x", "y"}), "given 2 values");
}

TEST(BucketsTest, Exponential) {
  EXPECT_EQ(ExponentialBuckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_TRUE(ExponentialBuckets(1, 2, 0).empty());
  for (const std::vector<double>& bounds : {LatencyBucketsSeconds(), FsyncBucketsSeconds()}) {
    EXPECT_TRUE(std::is_sorted(bounds.begin(), bounds.end()));
  }
}

TEST(ServerMetricsTest, ReplicatorFiguresArePresentAtZero) {
  ServerMetrics metrics;
  const ReplicatorFigures figures = ReadReplicatorFigures(metrics);
  EXPECT_EQ(figures.total_replications, 0u);
  EXPECT_EQ(figures.successful_replicas, 0u);
  EXPECT_EQ(figures.failed_replicas, 0u);
  EXPECT_EQ(figures.queue_size, 0u);
  EXPECT_EQ(figures.average_ack_time_ms, 0.0);
  EXPECT_EQ(figures.max_replication_lag_ms, 0.0);
  EXPECT_EQ(figures.retries_in_progress, 0u);
  const std::string text = metrics.RenderPrometheus();
  for (const char* line : {
           "\nlogkv_replications_total 0\n",
           "\nlogkv_replica_acks_total{result=\"failed\"} 0\n",
           "\nlogkv_replica_acks_total{result=\"ok\"} 0\n",
           "\nlogkv_replication_queue_size 0\n",
           "\nlogkv_replication_ack_seconds_count 0\n",
           "\nlogkv_replication_lag_max_seconds 0\n",
           "\nlogkv_replication_retries_in_progress 0\n",
           "\nlogkv_connections{protocol=\"binary\"} 0\n",
           "\nlogkv_connections{protocol=\"http\"} 0\n",
           "\nlogkv_fsync_duration_seconds_count 0\n",
           "\nlogkv_compactions_total 0\n",
           "\nlogkv_keys 0\n",
           "\nlogkv_log_bytes 0\n",
           "\nlogkv_dead_bytes 0\n",
           "\nlogkv_value_bytes_in_total 0\n",
           "\nlogkv_value_bytes_stored_total 0\n",
           "\nlogkv_values_compressed_total 0\n",
           "# TYPE logkv_value_compression_ratio gauge\n",
           "logkv_value_compression_cpu_seconds{operation=\"compress\"} 0\n",
           "logkv_value_compression_cpu_seconds{operation=\"decompress\"} 0\n",
           "\nlogkv_rate_limited_requests_total 0\n",
           "\nlogkv_auth_failures_total 0\n",
           "# TYPE logkv_http_requests_total counter\n",
           "# TYPE logkv_http_request_duration_seconds histogram\n",
           "# TYPE logkv_protocol_requests_total counter\n",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
  }
}

TEST(ServerMetricsTest, ReplicatorFiguresInRestUnits) {
  ServerMetrics metrics;
  metrics.replications()->Inc(3);
  metrics.replica_acks_ok()->Inc(2);
  metrics.replica_acks_failed()->Inc();
  metrics.replication_queue_size()->Set(4);
  metrics.replication_ack_seconds()->Observe(0.25);
  metrics.replication_ack_seconds()->Observe(0.75);
  metrics.replication_lag_max_seconds()->Set(1.5);
  metrics.replication_retries_in_progress()->Set(2);
  const ReplicatorFigures figures = ReadReplicatorFigures(metrics);
  EXPECT_EQ(figures.total_replications, 3u);
  EXPECT_EQ(figures.successful_replicas, 2u);
  EXPECT_EQ(figures.failed_replicas, 1u);
  EXPECT_EQ(figures.queue_size, 4u);
  EXPECT_DOUBLE_EQ(figures.average_ack_time_ms, 500.0);
  EXPECT_DOUBLE_EQ(figures.max_replication_lag_ms, 1500.0);
  EXPECT_EQ(figures.retries_in_progress, 2u);
}

TEST(ServerMetricsTest, HttpRouteCountsByStatusWithoutLookups) {
  ServerMetrics metrics;
  HttpRouteMetrics* get = metrics.HttpRoute("/v1/kv/{key}", "GET");
  EXPECT_EQ(metrics.HttpRoute("/v1/kv/{key}", "GET"), get);
  HttpRouteMetrics* put = metrics.HttpRoute("/v1/kv/{key}", "PUT");
  EXPECT_NE(put, get);
  EXPECT_EQ(put->duration(), get->duration());  // the histogram is by route only
  EXPECT_EQ(get->RequestCounter(200), get->RequestCounter(200));

  RunThreads(4, [&](int) {
    for (int i = 0; i < 1000; ++i) get->Record(i % 4 == 0 ? 404 : 200, 0.002);
  });
  put->Record(204, 0.004);
  put->Record(999, 0.004);  // outside 100..599: still counted, by the slow path
  EXPECT_EQ(get->RequestCounter(200)->Value(), 3000u);
  EXPECT_EQ(get->RequestCounter(404)->Value(), 1000u);

  const std::string text = metrics.RenderPrometheus();
  for (const char* line : {
           "logkv_http_requests_total{route=\"/v1/kv/{key}\",method=\"GET\",status=\"200\"} 3000\n",
           "logkv_http_requests_total{route=\"/v1/kv/{key}\",method=\"GET\",status=\"404\"} 1000\n",
           "logkv_http_requests_total{route=\"/v1/kv/{key}\",method=\"PUT\",status=\"204\"} 1\n",
           "logkv_http_requests_total{route=\"/v1/kv/{key}\",method=\"PUT\",status=\"999\"} 1\n",
           "logkv_http_request_duration_seconds_bucket{route=\"/v1/kv/{key}\",le=\"0.0025\"} "
           "4000\n",
           "logkv_http_request_duration_seconds_bucket{route=\"/v1/kv/{key}\",le=\"+Inf\"} 4002\n",
           "logkv_http_request_duration_seconds_count{route=\"/v1/kv/{key}\"} 4002\n",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
  }
}

TEST(ServerMetricsTest, ProtocolRequestsByOperationAndStatusWithoutLookups) {
  ServerMetrics metrics;
  ProtocolOperationMetrics* get = metrics.ProtocolOperation("Get");
  EXPECT_EQ(metrics.ProtocolOperation("Get"), get);
  ProtocolOperationMetrics* put = metrics.ProtocolOperation("Put");
  EXPECT_NE(put, get);
  EXPECT_EQ(get->RequestCounter(0), get->RequestCounter(0));
  // The histogram exists (at zero) before the first request.
  EXPECT_NE(metrics.RenderPrometheus().find(
                "\nlogkv_protocol_request_duration_seconds_count{operation=\"Put\"} 0\n"),
            std::string::npos);

  RunThreads(4, [&](int) {
    for (int i = 0; i < 1000; ++i) {
      get->Record(static_cast<int>(i % 4 == 0 ? absl::StatusCode::kNotFound : absl::StatusCode::kOk),
                  0.0002);
    }
  });
  put->Record(static_cast<int>(absl::StatusCode::kResourceExhausted), 0.02);
  put->Record(99, 0.02);  // not an absl code: still counted, by the slow path
  EXPECT_EQ(get->RequestCounter(0)->Value(), 3000u);

  const std::string text = metrics.RenderPrometheus();
  for (const char* line : {
           "\nlogkv_protocol_requests_total{operation=\"Get\",status=\"ok\"} 3000\n",
           "\nlogkv_protocol_requests_total{operation=\"Get\",status=\"not_found\"} 1000\n",
           "\nlogkv_protocol_requests_total{operation=\"Put\",status=\"resource_exhausted\"} 1\n",
           "\nlogkv_protocol_request_duration_seconds_bucket{operation=\"Get\",le=\"0.00025\"} "
           "4000\n",
           "\nlogkv_protocol_request_duration_seconds_count{operation=\"Put\"} 2\n",
           "# TYPE logkv_protocol_request_duration_seconds histogram\n",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
  }
}

TEST(CollectedFamilyTest, SamplesComeFromTheCollectorWhenRendered) {
  MetricsRegistry registry;
  CollectedFamily* family =
      registry.AddCollectedFamily("test_backlog", "Backlog per peer.", MetricType::kGauge, {"peer"});
  EXPECT_EQ(registry.AddCollectedFamily("test_backlog", "Backlog per peer.", MetricType::kGauge,
                                        {"peer"}),
            family);
  // Without a collector: the HELP and TYPE lines alone.
  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP test_backlog Backlog per peer.\n# TYPE test_backlog gauge\n");
  std::vector<CollectedSample> samples = {{{"n1"}, 3}, {{"n\"2"}, 0.5}};
  family->SetCollector([&samples] { return samples; });
  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP test_backlog Backlog per peer.\n# TYPE test_backlog gauge\n"
            "test_backlog{peer=\"n1\"} 3\ntest_backlog{peer=\"n\\\"2\"} 0.5\n");
  // Label values come and go with the collector's answer.
  samples = {{{"n3"}, 1}};
  EXPECT_EQ(family->Collect().size(), 1u);
  EXPECT_NE(registry.RenderPrometheus().find("test_backlog{peer=\"n3\"} 1\n"), std::string::npos);
  family->SetCollector(nullptr);
  EXPECT_TRUE(family->Collect().empty());

  CollectedFamily* cpu =
      registry.AddCollectedFamily("test_seconds_total", "Seconds.", MetricType::kCounter, {});
  cpu->SetCollector([] { return std::vector<CollectedSample>{{{}, 1.25}}; });
  EXPECT_NE(registry.RenderPrometheus().find("# TYPE test_seconds_total counter\n"
                                             "test_seconds_total 1.25\n"),
            std::string::npos);
}

TEST(CollectedFamilyDeathTest, ClashesWithOtherKindsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MetricsRegistry registry;
  registry.AddGaugeFamily("test_gauge", "Help.", {"a"});
  EXPECT_DEATH(registry.AddCollectedFamily("test_gauge", "Help.", MetricType::kGauge, {"a"}),
               "registered twice");
  EXPECT_DEATH(registry.AddCollectedFamily("test_h", "Help.", MetricType::kHistogram, {}),
               "counter or a gauge");
}

// The process_* metrics of the Prometheus client libraries, read from /proc.
TEST(ProcessMetricsTest, PresentWithPlausibleValues) {
  ServerMetrics metrics;
  auto value = [&metrics](const char* name) {
    const auto* family = dynamic_cast<const CollectedFamily*>(metrics.registry()->Find(name));
    EXPECT_NE(family, nullptr) << name;
    if (family == nullptr) return -1.0;
    const std::vector<CollectedSample> samples = family->Collect();
    EXPECT_EQ(samples.size(), 1u) << name;
    return samples.empty() ? -1.0 : samples[0].value;
  };
  EXPECT_GE(value("process_cpu_seconds_total"), 0.0);
  EXPECT_GT(value("process_resident_memory_bytes"), 0.0);
  EXPECT_GE(value("process_virtual_memory_bytes"), value("process_resident_memory_bytes"));
  const double open_fds = value("process_open_fds");
  EXPECT_GE(open_fds, 3.0);  // stdin, stdout and stderr at least
  EXPECT_GE(value("process_max_fds"), open_fds);
  // Started before now, and after the machine booted.
  const double start = value("process_start_time_seconds");
  EXPECT_GT(start, 0.0);
  EXPECT_LE(start, absl::ToUnixSeconds(absl::Now()) + 1.0);
  // A new file descriptor shows.
  FILE* file = std::fopen("/proc/self/stat", "r");
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(value("process_open_fds"), open_fds + 1);
  std::fclose(file);
  const std::string text = metrics.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("\nprocess_resident_memory_bytes "), std::string::npos);
}

}  // namespace
}  // namespace logkv::server
