// What an operator watches, on the real logkvd binary (a child process on
// kernel-chosen loopback ports, data in a temporary directory): the
// Prometheus output of GET /metrics moving with the operations, the JSON log
// format, and the slow-request log (docs/operations.md, "Metrics and logs").
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

namespace p = ::logkv::protocol;

class ObservabilityTest : public ::testing::Test {
 protected:
  std::unique_ptr<LogkvdProcess> StartServer(std::vector<std::string> extra,
                                             const std::string& data = "data") {
    std::vector<std::string> args = {"--data_dir=" + dir_.Subdir(data), "--threads=2",
                                     "--listen=127.0.0.1:0", "--http=127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto server = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
    absl::Status status = server->Start();
    EXPECT_TRUE(status.ok()) << status;
    return server;
  }

  // Every sample of GET /metrics?format=prometheus: series (name and
  // labels as rendered) to value. Comment lines are left out, and the
  // names of the families they describe (# TYPE) kept in *families.
  std::map<std::string, double> Scrape(int http_port, std::vector<std::string>* families = nullptr) {
    std::map<std::string, double> samples;
    absl::StatusOr<HttpAnswer> answer = Fetch(http_port, "GET", "/metrics?format=prometheus");
    EXPECT_TRUE(answer.ok()) << answer.status();
    if (!answer.ok()) return samples;
    EXPECT_EQ(answer->status, 200) << answer->body;
    for (absl::string_view line : absl::StrSplit(answer->body, '\n', absl::SkipEmpty())) {
      if (absl::ConsumePrefix(&line, "# TYPE ")) {
        if (families != nullptr) families->emplace_back(line.substr(0, line.find(' ')));
        continue;
      }
      if (absl::StartsWith(line, "#")) continue;
      const size_t space = line.rfind(' ');
      double value = 0;
      EXPECT_TRUE(space != absl::string_view::npos &&
                  absl::SimpleAtod(line.substr(space + 1), &value))
          << line;
      samples[std::string(line.substr(0, space))] = value;
    }
    return samples;
  }

  static void Call(RawConnection& c, const std::string& frame) {
    ASSERT_TRUE(c.SendBytes(frame).ok());
    absl::StatusOr<std::string> response = c.ReadFrame();
    ASSERT_TRUE(response.ok()) << response.status();
  }

  ScopedTempDir dir_;
};

TEST_F(ObservabilityTest, MetricsArePresentAndMoveWithOperations) {
  // One shard and the smallest segments, so the writes below roll segments;
  // fsync=always, so every write is synced before it is answered.
  auto server = StartServer({"--shards=1", "--segment_bytes=65536", "--fsync=always"});
  std::vector<std::string> families;
  std::map<std::string, double> before = Scrape(server->http_port(), &families);
  for (const char* name :
       {"logkv_engine_puts_total", "logkv_engine_gets_total", "logkv_engine_deletes_total",
        "logkv_engine_fsyncs_total", "logkv_engine_sync_rounds_total",
        "logkv_engine_sync_round_writers_total", "logkv_engine_sync_round_waits_total",
        "logkv_engine_sync_round_waits_cut_short_total", "logkv_engine_segments",
        "logkv_engine_tombstones",
        "logkv_engine_keys", "logkv_compactions_total", "logkv_compaction_running",
        "logkv_compaction_progress_bytes", "logkv_compaction_total_bytes",
        "logkv_compaction_bytes_read_total", "logkv_compaction_bytes_written_total",
        "logkv_compaction_bytes_reclaimed_total", "logkv_tombstones_dropped_total",
        "logkv_expired_swept_total", "logkv_engine_checkpoints_written_total",
        "logkv_engine_shards_opened_from_snapshot", "logkv_log_bytes", "logkv_dead_bytes", "logkv_live_bytes",
        "logkv_disk_allocated_bytes", "logkv_disk_reserved_bytes", "logkv_disk_available_bytes",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
        "process_max_fds", "process_start_time_seconds"}) {
    EXPECT_TRUE(before.contains(name)) << name;
  }
  // Per peer: families without samples on a node alone.
  for (const char* name : {"logkv_hinted_handoff_hints", "logkv_hinted_handoff_bytes",
                           "logkv_replication_lag_seconds",
                           "logkv_anti_entropy_peer_differing_leaves",
                           "logkv_anti_entropy_peer_keys_repaired",
                           "logkv_anti_entropy_peer_last_round_timestamp_seconds"}) {
    EXPECT_NE(std::find(families.begin(), families.end(), name), families.end()) << name;
  }

  constexpr int kPuts = 100;
  absl::StatusOr<RawConnection> c = RawConnection::Connect(server->port());
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string value(3000, 'v');
  uint64_t id = 1;
  for (int i = 0; i < kPuts; ++i) Call(*c, PutFrame(id++, absl::StrCat("key-", i), value));
  for (int i = 0; i < 7; ++i) Call(*c, GetFrame(id++, absl::StrCat("key-", i)));
  for (int i = 0; i < 5; ++i) Call(*c, DeleteFrame(id++, absl::StrCat("key-", i)));

  std::map<std::string, double> after = Scrape(server->http_port());
  auto moved = [&](const char* name) { return after[name] - before[name]; };
  EXPECT_GE(moved("logkv_engine_puts_total"), kPuts);
  EXPECT_GE(moved("logkv_engine_gets_total"), 7);
  EXPECT_EQ(moved("logkv_engine_deletes_total"), 5);
  EXPECT_GE(moved("logkv_engine_fsyncs_total"), 1);
  // One client, one write at a time: a group-commit round for each write.
  EXPECT_GE(moved("logkv_engine_sync_rounds_total"), kPuts + 5);
  EXPECT_GE(moved("logkv_engine_sync_round_writers_total"), kPuts + 5);
  EXPECT_GE(moved("logkv_engine_tombstones"), 5);
  EXPECT_GE(moved("logkv_engine_segments"), 3) << "300 KB in 64 KiB segments";
  EXPECT_GE(moved("logkv_engine_keys"), kPuts - 5);
  EXPECT_GE(moved("logkv_live_bytes"), (kPuts - 5) * 3000.0);
  EXPECT_GT(moved("logkv_disk_allocated_bytes"), 0);
  EXPECT_GE(after["logkv_disk_allocated_bytes"], after["logkv_live_bytes"]);
  // The active segment's blocks beyond its data: part of the allocated disk.
  EXPECT_LE(after["logkv_disk_reserved_bytes"], after["logkv_disk_allocated_bytes"]);
  EXPECT_GT(after["logkv_disk_available_bytes"], 0);
  EXPECT_GE(moved("process_cpu_seconds_total"), 0);
  EXPECT_GT(after["process_resident_memory_bytes"], 0);
  EXPECT_GT(after["process_open_fds"], 0);
  EXPECT_EQ(after["process_start_time_seconds"], before["process_start_time_seconds"]);
  // The request counters saw the same operations.
  EXPECT_GE(after["logkv_protocol_requests_total{operation=\"Put\",status=\"ok\"}"], kPuts);
  EXPECT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
}

// --log-format=json: every line is one JSON object with ts, level, logger
// and msg; the slow-request log's fields are members of it.
TEST_F(ObservabilityTest, JsonLogLinesParseAndCarryTheSlowRequestFields) {
  auto server = StartServer({"--log-format=json", "--slow-request-threshold=1ns"});
  absl::StatusOr<RawConnection> c = RawConnection::Connect(server->port());
  ASSERT_TRUE(c.ok()) << c.status();
  Call(*c, PutFrame(1, "slow\nkey", "v"));
  Call(*c, GetFrame(2, "missing"));
  absl::StatusOr<HttpAnswer> http = Fetch(server->http_port(), "GET", "/v1/kv/slow-http");
  ASSERT_TRUE(http.ok()) << http.status();
  ASSERT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();

  int lines = 0;
  std::vector<nlohmann::json> slow;
  for (absl::string_view line : absl::StrSplit(server->Output(), '\n', absl::SkipEmpty())) {
    ++lines;
    nlohmann::json object = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(object.is_object()) << line;
    EXPECT_TRUE(object["ts"].is_string()) << line;
    EXPECT_TRUE(object["level"].is_string()) << line;
    EXPECT_EQ(object["logger"], "logkvd") << line;
    EXPECT_TRUE(object["msg"].is_string()) << line;
    if (object["msg"] == "slow request") slow.push_back(object);
  }
  EXPECT_GE(lines, 3);  // start-up, listening, stopping
  auto find = [&slow](const std::string& operation) -> nlohmann::json {
    for (const nlohmann::json& object : slow) {
      if (object["operation"] == operation) return object;
    }
    return nlohmann::json();
  };
  const nlohmann::json put = find("Put");
  ASSERT_TRUE(put.is_object()) << server->Output();
  EXPECT_EQ(put["level"], "warning");
  EXPECT_EQ(put["key"], "slow\\nkey") << "printable: the newline escaped";
  EXPECT_EQ(put["status"], "ok");
  EXPECT_TRUE(put["duration_ms"].is_number());
  const nlohmann::json get = find("Get");
  ASSERT_TRUE(get.is_object()) << server->Output();
  EXPECT_EQ(get["status"], "not_found");
  const nlohmann::json rest = find("HTTP GET /v1/kv/{key...}");
  ASSERT_TRUE(rest.is_object()) << server->Output();
  EXPECT_EQ(rest["path"], "/v1/kv/slow-http");
  EXPECT_EQ(rest["status"], "404");
}

// The default text format, a threshold every request passes, and a long key
// cut; then the threshold 0 (the default): no slow-request lines at all.
TEST_F(ObservabilityTest, SlowRequestLogFiresOverTheThresholdAndNotWhenOff) {
  {
    auto server = StartServer({"--slow_request_threshold=1ns"});
    absl::StatusOr<RawConnection> c = RawConnection::Connect(server->port());
    ASSERT_TRUE(c.ok()) << c.status();
    Call(*c, PutFrame(1, std::string(1000, 'k'), "v"));
    ASSERT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
    const std::string output = server->Output();
    const size_t at = output.find("WARN logkvd: slow request operation=Put key=kkkk");
    ASSERT_NE(at, std::string::npos) << output;
    const std::string line = output.substr(at, output.find('\n', at) - at);
    EXPECT_TRUE(absl::StrContains(line, "... duration_ms=")) << line;
    EXPECT_TRUE(absl::StrContains(line, " status=ok")) << line;
    EXPECT_LT(line.size(), 200u) << "the key is cut: " << line;
  }
  for (const char* off : {"--slow_request_threshold=0", "--log_level=info"}) {
    auto server = StartServer({off}, std::string("data-") + off[2]);
    absl::StatusOr<RawConnection> c = RawConnection::Connect(server->port());
    ASSERT_TRUE(c.ok()) << c.status();
    for (int i = 0; i < 20; ++i) Call(*c, PutFrame(i + 1, absl::StrCat("k", i), "v"));
    ASSERT_TRUE(Fetch(server->http_port(), "GET", "/health").ok());
    ASSERT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
    EXPECT_FALSE(absl::StrContains(server->Output(), "slow request")) << off << server->Output();
  }
}

}  // namespace
}  // namespace logkv::test
