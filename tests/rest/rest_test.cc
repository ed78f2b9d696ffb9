// Integration tests of the HTTP contract (docs: /work/shared/REST.md, every
// table row) against real logkvd processes. Each suite shares one server
// started in SetUpTestSuite, with its data in a temporary directory; tests
// use their own keys (or their own accounts when auth is on). Waiting is
// always a bounded poll, never an assertion about how long something took.
//
// Suites:
//   RestTest          auth off, --max-value-bytes=1024, --max-document-bytes=512:
//                     every dialect, node routes, methods, HTTP mechanics
//   RestReadOnlyTest  data written, then the node restarted with --read-only
//   RestBufferLimitTest  --max-buffered-bytes=1048576: bodies and frames still arriving
//   RestAuthTest      --auth=on --rate-limit=0 --max-watches-per-user=4: accounts,
//                     keys, scopes, tenancy, binary sessions
//   RestRateLimitTest --auth=on --rate-limit=60 --rate-limit-burst=3
//   RestJwtExpiryTest --auth=on --jwt-expiration=1s
//   RestReadOnlyAuthTest  accounts made, then the node restarted with --read-only
// The Quick Start of seed 000 is run with curl by quickstart.sh.
#include <sys/socket.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

namespace p = ::logkv::protocol;
using nlohmann::json;

// Long enough for anything a healthy server does; short enough that a hang
// fails the test well inside the suite's timeout.
constexpr absl::Duration kPollLimit = absl::Seconds(15);
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

std::unique_ptr<LogkvdProcess> StartLogkvd(const std::string& data_dir,
                                           const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"--data-dir=" + data_dir, "--threads=2", "--shards=2",
                                   "--log-level=warning"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto process = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
  if (absl::Status status = process->Start(); !status.ok()) {
    ADD_FAILURE() << "logkvd did not start: " << status;
    return nullptr;
  }
  return process;
}

// A server shared by the tests of one suite.
struct SharedServer {
  explicit SharedServer(const std::vector<std::string>& flags)
      : process(StartLogkvd(dir.path() + "/data", flags)) {}
  ScopedTempDir dir;
  std::unique_ptr<LogkvdProcess> process;
};

std::string TestName() { return ::testing::UnitTest::GetInstance()->current_test_info()->name(); }

// Checks the shape of every error answer: {"error": "<message>"} as JSON.
void ExpectError(const HttpAnswer& answer, int status, absl::string_view context = "") {
  EXPECT_EQ(answer.status, status) << context << ": " << answer.status_line << " " << answer.body;
  EXPECT_EQ(answer.Header("content-type").value_or(""), "application/json") << context;
  const json body = answer.Json();
  ASSERT_TRUE(body.is_object()) << context << ": " << answer.body;
  ASSERT_TRUE(body.contains("error")) << context << ": " << answer.body;
  EXPECT_TRUE(body["error"].is_string()) << context;
  EXPECT_FALSE(body["error"].get<std::string>().empty()) << context;
}

// The base of every suite: requests against port().
class RestTestBase : public ::testing::Test {
 protected:
  virtual LogkvdProcess* server() const = 0;
  int port() const { return server()->http_port(); }

  void SetUp() override { ASSERT_NE(server(), nullptr) << "the suite's logkvd did not start"; }

  // One request on a fresh connection; status 0 (and a failure) if it got no answer.
  HttpAnswer Call(absl::string_view method, absl::string_view target,
                  const HttpHeaders& headers = {}, absl::string_view body = "") {
    absl::StatusOr<HttpAnswer> answer = Fetch(port(), method, target, headers, body);
    if (!answer.ok()) {
      ADD_FAILURE() << method << " " << target << ": " << answer.status();
      return HttpAnswer();
    }
    return *std::move(answer);
  }

  HttpConnection Connect() {
    absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(port());
    EXPECT_TRUE(connection.ok()) << connection.status();
    return std::move(*connection);
  }

  // Polls GET target until it answers status (bounded); true if it did.
  bool PollUntilStatus(absl::string_view target, int status, const HttpHeaders& headers = {}) {
    const absl::Time deadline = absl::Now() + kPollLimit;
    while (absl::Now() < deadline) {
      if (Call("GET", target, headers).status == status) return true;
      absl::SleepFor(kPollInterval);
    }
    return false;
  }

  // The node still answers on a new connection.
  void ExpectServing() {
    const HttpAnswer health = Call("GET", "/health");
    EXPECT_EQ(health.status, 200) << health.body;
  }
};

// ==== Auth off ====================================================================

class RestTest : public RestTestBase {
 protected:
  static void SetUpTestSuite() {
    shared_ = new SharedServer({"--max-value-bytes=1024", "--max-document-bytes=512"});
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }

  // Sends bytes that the server must refuse with status and then close the
  // connection; then checks the node goes on serving.
  void ExpectRefused(absl::string_view bytes, int status) {
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection.Send(bytes).ok());
    absl::StatusOr<HttpAnswer> answer = connection.Read();
    ASSERT_TRUE(answer.ok()) << answer.status();
    ExpectError(*answer, status, absl::StrCat("refusing ", bytes.substr(0, 60)));
    EXPECT_EQ(answer->Header("connection").value_or(""), "close");
    EXPECT_TRUE(connection.WaitClosed()) << "the connection stayed open after " << status;
    ExpectServing();
  }

  static SharedServer* shared_;
};

SharedServer* RestTest::shared_ = nullptr;

// ---- Seed 000: /v1/kv/{key} ---------------------------------------------------

void ExpectWriteAnswer(const HttpAnswer& answer, absl::string_view key) {
  EXPECT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.Header("content-type").value_or(""), "application/json");
  const json body = answer.Json();
  ASSERT_TRUE(body.is_object()) << answer.body;
  ASSERT_TRUE(body["success"].is_boolean()) << answer.body;
  EXPECT_TRUE(body["success"].get<bool>());
  ASSERT_TRUE(body["key"].is_string()) << answer.body;
  EXPECT_EQ(body["key"].get<std::string>(), key);
  ASSERT_TRUE(body["primary_node"].is_string()) << answer.body;
  EXPECT_TRUE(absl::StartsWith(body["primary_node"].get<std::string>(), "http://")) << answer.body;
  ASSERT_TRUE(body["replicas"].is_number_integer()) << answer.body;
  EXPECT_EQ(body["replicas"].get<int>(), 0);  // one node: no other owners
}

TEST_F(RestTest, V1KvPutGetDelete) {
  const std::string key = TestName();
  const std::string target = "/v1/kv/" + key;
  ExpectWriteAnswer(Call("PUT", target, {{"Content-Type", "text/plain"}}, "hello"), key);

  const HttpAnswer get = Call("GET", target);
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.body, "hello");
  EXPECT_EQ(get.Header("content-type").value_or(""), "application/octet-stream");
  EXPECT_EQ(get.Header("content-length").value_or(""), "5");

  ExpectWriteAnswer(Call("PUT", target, {}, "again"), key);
  EXPECT_EQ(Call("GET", target).body, "again");

  // DELETE is idempotent: the key is gone either way.
  ExpectWriteAnswer(Call("DELETE", target), key);
  ExpectWriteAnswer(Call("DELETE", target), key);

  const HttpAnswer missing = Call("GET", target);
  ExpectError(missing, 404);
  EXPECT_EQ(missing.Json(), json({{"error", "Key not found"}}));
  ExpectError(Call("GET", "/v1/kv/" + key + "-never-written"), 404);
}

TEST_F(RestTest, V1KvBinaryValuesAndEmptyValue) {
  std::string value;
  for (int i = 0; i < 256; ++i) value.push_back(static_cast<char>(i));
  value += std::string("\0\0tail\0", 7);
  const std::string target = "/v1/kv/" + TestName();
  ExpectWriteAnswer(Call("PUT", target, {}, value), TestName());
  const HttpAnswer get = Call("GET", target);
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.body, value);

  ExpectWriteAnswer(Call("PUT", target + "-empty", {}, ""), TestName() + "-empty");
  const HttpAnswer empty = Call("GET", target + "-empty");
  EXPECT_EQ(empty.status, 200);
  EXPECT_EQ(empty.body, "");
}

TEST_F(RestTest, V1KvPercentEncodedAndSlashedKeys) {
  const std::string name = TestName();
  // a%2Fb%20c is the key "a/b c", the same key as the path a/b%20c.
  ExpectWriteAnswer(Call("PUT", "/v1/kv/" + name + "-a%2Fb%20c", {}, "one"), name + "-a/b c");
  EXPECT_EQ(Call("GET", "/v1/kv/" + name + "-a/b%20c").body, "one");
  EXPECT_EQ(Call("GET", "/store/" + name + "-a%2Fb%20c").body, "one");

  // Slashes in the path belong to the key.
  ExpectWriteAnswer(Call("PUT", "/v1/kv/" + name + "/users/1/profile", {}, "two"),
                    name + "/users/1/profile");
  EXPECT_EQ(Call("GET", "/v1/kv/" + name + "%2Fusers%2F1%2Fprofile").body, "two");
  ExpectError(Call("GET", "/v1/kv/" + name + "/users/1"), 404);

  // Any bytes, UTF-8 included.
  ExpectWriteAnswer(Call("PUT", "/v1/kv/" + name + "-%C3%A9t%C3%A9%3F%26%23", {}, "three"),
                    name + "-\xC3\xA9t\xC3\xA9?&#");
  EXPECT_EQ(Call("GET", "/v1/kv/" + name + "-%c3%a9t%c3%a9%3f%26%23").body, "three");

  // Bad input is a 400, never a 500: a broken escape, a reserved first byte.
  ExpectError(Call("GET", "/v1/kv/" + name + "%zz"), 400);
  ExpectError(Call("PUT", "/v1/kv/" + name + "%4", {}, "x"), 400);
  ExpectError(Call("PUT", "/v1/kv/%00" + name, {}, "x"), 400);
  ExpectError(Call("GET", "/v1/kv/%00" + name), 400);
}

TEST_F(RestTest, V1KvEmptyKeyIsBadRequest) {
  ExpectError(Call("PUT", "/v1/kv/", {}, "x"), 400);
  ExpectError(Call("GET", "/v1/kv/"), 400);
  ExpectError(Call("DELETE", "/v1/kv/"), 400);
  ExpectError(Call("GET", "/store/"), 400);
}

TEST_F(RestTest, V1KvTtlExpires) {
  for (const std::string ttl : {"1", "500ms"}) {
    const std::string target = "/v1/kv/" + TestName() + "-" + ttl;
    ExpectWriteAnswer(Call("PUT", target + "?ttl=" + ttl, {}, "short-lived"),
                      TestName() + "-" + ttl);
    EXPECT_TRUE(PollUntilStatus(target, 404)) << "a value with ttl=" << ttl << " never expired";
    ExpectError(Call("GET", target), 404);
  }
}

TEST_F(RestTest, V1KvTtlFormats) {
  const std::string base = "/v1/kv/" + TestName();
  for (const std::string ttl : {"1h30m", "1h", "30m", "24h", "3600"}) {
    const std::string target = base + "-" + ttl;
    ExpectWriteAnswer(Call("PUT", target + "?ttl=" + ttl, {}, "kept"), TestName() + "-" + ttl);
    const HttpAnswer get = Call("GET", target);
    EXPECT_EQ(get.status, 200) << "ttl=" << ttl;
    EXPECT_EQ(get.body, "kept");
  }
  for (const std::string ttl :
       {"abc", "-5s", "0", "0s", "-1", "5x", "1.5.5h", "999999999h", "%zz", "1h%", ""}) {
    const std::string target = base + "-bad";
    ExpectError(Call("PUT", target + "?ttl=" + ttl, {}, "never"), 400, "ttl=" + ttl);
  }
  ExpectError(Call("PUT", base + "-bad?ttl", {}, "never"), 400, "ttl without a value");
  ExpectError(Call("GET", base + "-bad"), 404);
}

// ?ttl= on every dialect's write route: target and body of the write (the
// parameter is added to target), and the GET that reads the value back.
struct TtlWrite {
  std::string method;
  std::string target;
  std::string body;
  std::string read;
};

std::vector<TtlWrite> TtlWrites(const std::string& key) {
  const std::string v0_key = Base64Encode(key + "-v0");
  return {
      {"PUT", "/v1/kv/" + key + "-v1", "x", "/v1/kv/" + key + "-v1"},
      {"PUT", "/kv?key=" + key + "-query", "x", "/kv?key=" + key + "-query"},
      {"POST", "/v0/kv", json({{"key", v0_key}, {"value", Base64Encode("x")}}).dump(),
       "/v0/kv/key/" + v0_key},
      {"PUT", "/put/" + key + "-put", R"({"value":"x"})", "/get/" + key + "-put"},
      {"POST", "/put/" + key + "-post", R"({"value":"x"})", "/get/" + key + "-post"},
      {"PUT", "/kv/" + key + "/doc", R"({"a":1})", "/kv/" + key + "/doc"},
  };
}

std::string WithTtl(const std::string& target, absl::string_view ttl) {
  return absl::StrCat(target, absl::StrContains(target, '?') ? "&" : "?", "ttl=", ttl);
}

TEST_F(RestTest, TtlOnEveryWriteRoute) {
  const std::vector<TtlWrite> writes = TtlWrites(TestName());
  for (const TtlWrite& write : writes) {
    const HttpAnswer answer = Call(write.method, WithTtl(write.target, "1s"), {}, write.body);
    EXPECT_EQ(answer.status, 200) << write.method << " " << write.target << ": " << answer.body;
    EXPECT_EQ(Call("GET", write.read).status, 200) << write.read;
  }
  for (const TtlWrite& write : writes) {
    EXPECT_TRUE(PollUntilStatus(write.read, 404))
        << write.method << " " << write.target << " with ttl=1s never expired";
  }
  // Bare seconds are seconds; a long TTL keeps the value.
  for (const TtlWrite& write : writes) {
    EXPECT_EQ(Call(write.method, WithTtl(write.target, "3600"), {}, write.body).status, 200);
    EXPECT_EQ(Call("GET", write.read).status, 200) << write.read;
  }
}

TEST_F(RestTest, BadTtlIs400OnEveryWriteRoute) {
  const std::vector<TtlWrite> writes = TtlWrites(TestName());
  for (const TtlWrite& write : writes) {
    for (const char* ttl : {"abc", "0", "-1s", "5x", "inf", "%zz"}) {
      ExpectError(Call(write.method, WithTtl(write.target, ttl), {}, write.body), 400,
                  absl::StrCat(write.method, " ", write.target, " ttl=", ttl));
    }
    ExpectError(Call("GET", write.read), 404, "after refused writes: " + write.read);
  }
}

// Compare-and-set over HTTP on one node: If-Match with the version a read's
// ETag gave, If-None-Match: * for a key that must be absent; a condition
// that does not hold is 412 and writes nothing, a malformed one 400.
TEST_F(RestTest, IfMatchAndIfNoneMatchAreCompareAndSetOnEveryWriteRoute) {
  const std::string key = TestName();
  const std::string target = "/v1/kv/" + key;
  const HttpAnswer created = Call("PUT", target, {{"If-None-Match", "*"}}, "one");
  EXPECT_EQ(created.status, 200) << created.body;
  EXPECT_EQ(created.Header("etag").value_or(""), "\"1\"");
  ExpectError(Call("PUT", target, {{"If-None-Match", "*"}}, "again"), 412);
  const HttpAnswer read = Call("GET", target);
  EXPECT_EQ(read.body, "one");
  EXPECT_EQ(read.Header("etag").value_or(""), "\"1\"");
  // The tag as the ETag spells it, or bare.
  EXPECT_EQ(Call("PUT", target, {{"If-Match", "\"1\""}}, "two").status, 200);
  EXPECT_EQ(Call("PUT", target, {{"If-Match", "2"}}, "three").status, 200);
  const HttpAnswer stale = Call("PUT", target, {{"If-Match", "\"1\""}}, "lost");
  ExpectError(stale, 412);
  EXPECT_TRUE(absl::StrContains(stale.body, "is at version 3")) << stale.body;
  EXPECT_EQ(Call("GET", target).body, "three");
  // Conditions that cannot be checked are refused, not dropped.
  for (const HttpHeaders& bad : std::vector<HttpHeaders>{{{"If-Match", "*"}},
                                                         {{"If-Match", "W/\"3\""}},
                                                         {{"If-Match", "0"}},
                                                         {{"If-Match", "x"}},
                                                         {{"If-None-Match", "\"3\""}},
                                                         {{"If-Match", "3"}, {"If-None-Match", "*"}},
                                                         {{"If-Match", "3"}, {"If-Match", "2"}}}) {
    ExpectError(Call("PUT", target, bad, "bad"), 400, bad.front().first + ": " + bad.front().second);
  }
  ExpectError(Call("DELETE", target, {{"If-Match", "2"}}), 412);
  EXPECT_EQ(Call("DELETE", target, {{"If-Match", "3"}}).status, 200);
  ExpectError(Call("GET", target), 404);
  // The other dialects' writes take the same headers.
  const HttpAnswer seed001 = Call("PUT", "/kv?key=" + key + "-001", {{"If-None-Match", "*"}}, "v");
  EXPECT_EQ(seed001.status, 200) << seed001.body;
  ExpectError(Call("PUT", "/kv?key=" + key + "-001", {{"If-Match", "\"7\""}}, "v"), 412);
}

TEST_F(RestTest, V1KvConsistencyHeader) {
  const std::string target = "/v1/kv/" + TestName();
  for (const std::string level : {"strong", "eventual", "STRONG", "Eventual"}) {
    const HttpHeaders headers = {{"X-Consistency", level}};
    ExpectWriteAnswer(Call("PUT", target, headers, level), TestName());
    const HttpAnswer get = Call("GET", target, headers);
    EXPECT_EQ(get.status, 200) << level;
    EXPECT_EQ(get.body, level);
  }
  ExpectWriteAnswer(Call("DELETE", target, {{"X-Consistency", "strong"}}), TestName());
  const HttpHeaders bogus = {{"X-Consistency", "bogus"}};
  ExpectError(Call("PUT", target, bogus, "x"), 400);
  ExpectError(Call("GET", target, bogus), 400);
  ExpectError(Call("DELETE", target, bogus), 400);
  ExpectError(Call("GET", target), 404);  // the refused PUT wrote nothing
}

TEST_F(RestTest, V1KvValueOverLimitIs413) {
  const std::string target = "/v1/kv/" + TestName();
  ExpectWriteAnswer(Call("PUT", target, {}, std::string(1024, 'v')), TestName());
  ExpectError(Call("PUT", target, {}, std::string(1025, 'w')), 413);
  ExpectError(Call("PUT", "/kv?key=" + TestName(), {}, std::string(4000, 'w')), 413);
  EXPECT_EQ(Call("GET", target).body, std::string(1024, 'v'));
}

// ---- Node routes ------------------------------------------------------------------

TEST_F(RestTest, StoreIsTheLocalCopy) {
  const std::string key = TestName();
  ExpectWriteAnswer(Call("PUT", "/v1/kv/" + key, {}, std::string("lo\0cal", 6)), key);
  const HttpAnswer local = Call("GET", "/store/" + key);
  EXPECT_EQ(local.status, 200);
  EXPECT_EQ(local.body, std::string("lo\0cal", 6));
  EXPECT_EQ(local.Header("content-type").value_or(""), "application/octet-stream");
  ExpectError(Call("GET", "/store/" + key + "-missing"), 404);
}

TEST_F(RestTest, Health) {
  const HttpAnswer health = Call("GET", "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.Header("content-type").value_or(""), "application/json");
  const json body = health.Json();
  ASSERT_TRUE(body.is_object()) << health.body;
  EXPECT_EQ(body.value("status", ""), "healthy");
  ASSERT_TRUE(body["node_id"].is_string());
  EXPECT_FALSE(body["node_id"].get<std::string>().empty());
  EXPECT_EQ(body.value("mode", ""), "normal");
  ASSERT_TRUE(body["member_count"].is_number_integer());
  EXPECT_GE(body["member_count"].get<int>(), 1);
}

TEST_F(RestTest, MetricsJson) {
  ExpectWriteAnswer(Call("PUT", "/v1/kv/" + TestName(), {}, "counted"), TestName());
  const HttpAnswer metrics = Call("GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.Header("content-type").value_or(""), "application/json");
  const json body = metrics.Json();
  ASSERT_TRUE(body.is_object()) << metrics.body;
  ASSERT_TRUE(body["node_id"].is_string()) << metrics.body;
  for (const char* field :
       {"key_count", "wal_size", "timestamp", "total_replications", "successful_replicas",
        "failed_replicas", "queue_size", "retries_in_progress"}) {
    ASSERT_TRUE(body.contains(field)) << field << " missing: " << metrics.body;
    EXPECT_TRUE(body[field].is_number_integer()) << field << ": " << body[field];
  }
  for (const char* field : {"average_ack_time_ms", "max_replication_lag_ms"}) {
    ASSERT_TRUE(body.contains(field)) << field << " missing: " << metrics.body;
    EXPECT_TRUE(body[field].is_number()) << field << ": " << body[field];
  }
  EXPECT_GE(body["key_count"].get<int64_t>(), 1);
  EXPECT_GT(body["wal_size"].get<int64_t>(), 0);
  EXPECT_GT(body["timestamp"].get<int64_t>(), 1'000'000'000'000);  // Unix ms, not seconds
}

TEST_F(RestTest, MetricsPrometheus) {
  ASSERT_EQ(Call("GET", "/health").status, 200);  // so /health has a request counted
  for (const auto& [target, headers] : std::vector<std::pair<std::string, HttpHeaders>>{
           {"/metrics?format=prometheus", {}},
           {"/metrics", {{"Accept", "text/plain"}}},
           {"/metrics", {{"Accept", "text/plain;version=0.0.4;q=0.9, */*;q=0.1"}}}}) {
    const HttpAnswer metrics = Call("GET", target, headers);
    EXPECT_EQ(metrics.status, 200);
    EXPECT_TRUE(
        absl::StartsWith(metrics.Header("content-type").value_or(""), "text/plain; version=0.0.4"))
        << metrics.Header("content-type").value_or("<none>");
    for (const char* needle : {"logkv_http_requests_total{", "route=\"/health\"",
                               "logkv_http_request_duration_seconds_bucket", "logkv_keys",
                               "logkv_log_bytes", "logkv_fsync_duration_seconds",
                               "logkv_connections", "# TYPE logkv_http_requests_total counter"}) {
      EXPECT_TRUE(absl::StrContains(metrics.body, needle)) << needle << " missing";
    }
  }
}

TEST_F(RestTest, ClusterRoutes) {
  const HttpAnswer nodes = Call("GET", "/nodes");
  EXPECT_EQ(nodes.status, 200);
  json body = nodes.Json();
  ASSERT_TRUE(body.is_array()) << nodes.body;
  ASSERT_EQ(body.size(), 1u);
  EXPECT_TRUE(body[0]["address"].is_string());
  EXPECT_TRUE(body[0]["alive"].is_boolean());
  EXPECT_TRUE(body[0].contains("last_seen"));

  const HttpAnswer servers = Call("GET", "/servers");
  EXPECT_EQ(servers.status, 200);
  body = servers.Json();
  ASSERT_TRUE(body.is_array()) << servers.body;
  ASSERT_EQ(body.size(), 1u);
  ASSERT_TRUE(body[0].is_string());
  EXPECT_EQ(body[0].get<std::string>(), absl::StrCat("http://127.0.0.1:", port()));

  const HttpAnswer members = Call("GET", "/members/");
  EXPECT_EQ(members.status, 200);
  body = members.Json();
  ASSERT_TRUE(body.is_array()) << members.body;
  ASSERT_EQ(body.size(), 1u);
  for (const char* field : {"id", "address"}) EXPECT_TRUE(body[0][field].is_string()) << field;
  for (const char* field : {"last_seen", "joined_timestamp"}) {
    EXPECT_TRUE(body[0][field].is_number_integer()) << field;
  }
  // Seed 004's clients use "address" to reach the member's HTTP API.
  EXPECT_EQ(body[0]["address"], absl::StrCat("127.0.0.1:", port())) << members.body;
  EXPECT_EQ(body[0]["binary_address"], absl::StrCat("127.0.0.1:", server()->port()))
      << members.body;

  EXPECT_EQ(Call("GET", "/internal/ping").status, 200);
  // Joining through an address where nobody listens, by host:port or by
  // URL: 503; a malformed target or an HTTPS URL: 400.
  ExpectError(Call("POST", "/join", {}, absl::StrCat("127.0.0.1:", PickFreePort())), 503);
  ExpectError(Call("POST", "/join", {}, absl::StrCat("http://127.0.0.1:", PickFreePort())), 503);
  ExpectError(Call("POST", "/join", {}, "https://127.0.0.1:8080"), 400);
  ExpectError(Call("POST", "/join", {}, "not an address"), 400);
  ExpectError(Call("POST", "/members/join", {}, "{}"), 400);
  // (POST /members/leave is covered by tests/cluster: this node stays a member.)
}

// ---- Seed 001: /kv?key=K ----------------------------------------------------------

TEST_F(RestTest, Seed001QueryKeys) {
  const std::string key = TestName();
  const HttpAnswer put = Call("PUT", "/kv?key=" + key, {}, std::string("q\0v", 3));
  EXPECT_EQ(put.status, 200) << put.body;
  EXPECT_TRUE(put.Json().is_object()) << put.body;
  const HttpAnswer get = Call("GET", "/kv?key=" + key);
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.body, std::string("q\0v", 3));
  EXPECT_EQ(get.Header("content-type").value_or(""), "application/octet-stream");
  // The same engine key as every other dialect's.
  EXPECT_EQ(Call("GET", "/v1/kv/" + key).body, std::string("q\0v", 3));

  // Query values are percent-decoded, '+' as a space.
  EXPECT_EQ(Call("PUT", "/kv?key=" + key + "+a%2Fb&other=1", {}, "spaced").status, 200);
  EXPECT_EQ(Call("GET", "/v1/kv/" + key + "%20a%2Fb").body, "spaced");
  EXPECT_EQ(Call("GET", "/kv?other=1&key=" + key + "%20a/b").body, "spaced");

  ExpectError(Call("GET", "/kv?key=" + key + "-missing"), 404);
  ExpectError(Call("GET", "/kv"), 400);
  ExpectError(Call("GET", "/kv?key="), 400);
  ExpectError(Call("GET", "/kv?name=" + key), 400);
  ExpectError(Call("PUT", "/kv", {}, "x"), 400);
  ExpectError(Call("PUT", "/kv?key=", {}, "x"), 400);
  ExpectError(Call("GET", "/kv?key=%zz"), 400);

  EXPECT_EQ(Call("DELETE", "/kv?key=" + key).status, 200);
  ExpectError(Call("GET", "/kv?key=" + key), 404);
}

// ---- Seed 002: /v0/kv base64 --------------------------------------------------------

TEST_F(RestTest, Seed002Base64) {
  // A key whose base64 holds '+' and '/', and a binary value.
  const std::string key = TestName() + std::string("\xfb\xff\x00\xfe", 4);
  const std::string value = std::string("\x00\x01\xff binary", 10);
  const std::string key64 = Base64Encode(key);
  ASSERT_TRUE(absl::StrContains(key64, "+") || absl::StrContains(key64, "/")) << key64;
  const HttpAnswer post = Call("POST", "/v0/kv", {{"Content-Type", "application/json"}},
                               json({{"key", key64}, {"value", Base64Encode(value)}}).dump());
  EXPECT_EQ(post.status, 200) << post.body;
  EXPECT_EQ(post.Json(), json::object());

  for (const std::string& path : {key64, std::string(absl::StrReplaceAll(
                                             key64, {{"+", "%2B"}, {"/", "%2F"}, {"=", "%3D"}}))}) {
    const HttpAnswer get = Call("GET", "/v0/kv/key/" + path);
    EXPECT_EQ(get.status, 200) << path << ": " << get.body;
    const json body = get.Json();
    ASSERT_TRUE(body.is_object()) << get.body;
    ASSERT_TRUE(body["key"].is_string());
    ASSERT_TRUE(body["value"].is_string());
    EXPECT_EQ(body["key"].get<std::string>(), key64);
    EXPECT_EQ(body["value"].get<std::string>(), Base64Encode(value));
  }
  // The same key through seed 000's dialect.
  EXPECT_EQ(Call("GET", "/v1/kv/" + TestName() + "%FB%FF%00%FE").body, value);

  ExpectError(Call("GET", "/v0/kv/key/" + Base64Encode(TestName() + "-missing")), 404);
  ExpectError(Call("GET", "/v0/kv/key/!!!notbase64"), 400);
  ExpectError(Call("GET", "/v0/kv/key/"), 400);
  ExpectError(Call("POST", "/v0/kv", {}, R"({"key":"***","value":"aGk="})"), 400);
  ExpectError(Call("POST", "/v0/kv", {}, json({{"key", key64}, {"value", "@@"}}).dump()), 400);
  ExpectError(Call("POST", "/v0/kv", {}, "{not json"), 400);
  ExpectError(Call("POST", "/v0/kv", {}, "[1,2]"), 400);
  ExpectError(Call("POST", "/v0/kv", {}, R"({"key":"aGk="})"), 400);
  ExpectError(Call("POST", "/v0/kv", {}, R"({"key":42,"value":"aGk="})"), 400);
  ExpectError(Call("POST", "/v0/kv", {}, R"({"key":"","value":"aGk="})"), 400);
}

// ---- Seed 003: /put, /get, versions -------------------------------------------------

void ExpectVersioned(const HttpAnswer& answer, absl::string_view key, const json& value,
                     uint64_t version) {
  EXPECT_EQ(answer.status, 200) << answer.body;
  const json body = answer.Json();
  ASSERT_TRUE(body.is_object()) << answer.body;
  EXPECT_EQ(body.value("key", ""), key);
  EXPECT_EQ(body["value"], value) << answer.body;
  ASSERT_TRUE(body["version"].is_number_unsigned()) << answer.body;
  EXPECT_EQ(body["version"].get<uint64_t>(), version);
  ASSERT_TRUE(body["timestamp"].is_string()) << answer.body;
  // RFC 3339 UTC.
  EXPECT_TRUE(std::regex_match(body["timestamp"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z)")))
      << body["timestamp"];
}

TEST_F(RestTest, Seed003Versions) {
  const std::string key = TestName();
  ExpectVersioned(Call("PUT", "/put/" + key, {}, R"({"value":"v1"})"), key, "v1", 1);
  ExpectVersioned(Call("POST", "/put/" + key, {}, R"({"value":"v2"})"), key, "v2", 2);
  ExpectVersioned(Call("PUT", "/put/" + key, {}, R"({"value":{"n":3,"list":[1,2]}})"), key,
                  json({{"n", 3}, {"list", {1, 2}}}), 3);

  ExpectVersioned(Call("GET", "/get/" + key), key, json({{"n", 3}, {"list", {1, 2}}}), 3);
  ExpectVersioned(Call("GET", "/get/" + key + "?version=1"), key, "v1", 1);
  ExpectVersioned(Call("GET", "/get/" + key + "?version=2"), key, "v2", 2);
  ExpectVersioned(Call("GET", "/get/" + key + "?version=3"), key,
                  json({{"n", 3}, {"list", {1, 2}}}), 3);

  ExpectError(Call("GET", "/get/" + key + "?version=4"), 404);
  ExpectError(Call("GET", "/get/" + key + "?version=abc"), 400);
  ExpectError(Call("GET", "/get/" + key + "?version=0"), 400);
  ExpectError(Call("GET", "/get/" + key + "?version=-1"), 400);
  ExpectError(Call("GET", "/get/" + key + "?version=%zz"), 400);
  ExpectError(Call("GET", "/get/" + key + "-missing"), 404);
  ExpectError(Call("GET", "/get/"), 400);

  ExpectError(Call("PUT", "/put/" + key, {}, "not json"), 400);
  ExpectError(Call("PUT", "/put/" + key, {}, R"({"other":1})"), 400);
  ExpectError(Call("PUT", "/put/" + key, {}, R"(["value"])"), 400);
  ExpectError(Call("PUT", "/put/", {}, R"({"value":1})"), 400);
  // Refused writes made no versions.
  ExpectVersioned(Call("GET", "/get/" + key), key, json({{"n", 3}, {"list", {1, 2}}}), 3);

  // A value written by another dialect reads back as a string when it is not JSON.
  ASSERT_EQ(Call("PUT", "/v1/kv/" + key + "-raw", {}, "plain text").status, 200);
  ExpectVersioned(Call("GET", "/get/" + key + "-raw"), key + "-raw", "plain text", 1);
}

TEST_F(RestTest, Seed003ReadsOtherDialectsBytesLosslessly) {
  const std::string key = TestName();
  // Not UTF-8: base64, marked as such, for the newest and a numbered version.
  const std::string bytes("\xff\xfe\x00 caf\xc3\xa9", 9);
  ASSERT_EQ(Call("PUT", "/v1/kv/" + key, {}, bytes).status, 200);
  for (const std::string& target : {"/get/" + key, "/get/" + key + "?version=1"}) {
    const HttpAnswer got = Call("GET", target);
    ASSERT_EQ(got.status, 200) << target;
    const json body = got.Json();
    EXPECT_EQ(body["value"], Base64Encode(bytes)) << target << ": " << got.body;
    EXPECT_EQ(body["encoding"], "base64") << target << ": " << got.body;
    EXPECT_EQ(body["version"], 1) << target;
  }
  // Written as base64 through seed 002, read back the same way.
  ASSERT_EQ(Call("POST", "/v0/kv", {},
                 json({{"key", Base64Encode(key + "-v0")}, {"value", Base64Encode("\x80")}}).dump())
                .status,
            200);
  const json v0 = Call("GET", "/get/" + key + "-v0").Json();
  EXPECT_EQ(v0["value"], Base64Encode("\x80")) << v0.dump();
  EXPECT_EQ(v0["encoding"], "base64") << v0.dump();
  // UTF-8 text that is not JSON stays a string; JSON stays JSON; neither is marked.
  const std::string text = "caf\xc3\xa9 \xf0\x9f\x98\x80";
  ASSERT_EQ(Call("PUT", "/v1/kv/" + key + "-text", {}, text).status, 200);
  const json text_body = Call("GET", "/get/" + key + "-text").Json();
  EXPECT_EQ(text_body["value"], text) << text_body.dump();
  EXPECT_FALSE(text_body.contains("encoding")) << text_body.dump();
  const json put = Call("PUT", "/put/" + key + "-put", {}, R"({"value":"\u00ff"})").Json();
  EXPECT_EQ(put["value"], "\xc3\xbf") << put.dump();
  EXPECT_FALSE(put.contains("encoding")) << put.dump();
}

TEST_F(RestTest, Seed003OldVersionsAreNotRetainedForever) {
  const std::string key = TestName();
  for (int i = 1; i <= 5; ++i) {
    ExpectVersioned(Call("PUT", "/put/" + key, {}, json({{"value", i}}).dump()), key, i, i);
  }
  // --versions=3 (the default) keeps the newest three.
  ExpectError(Call("GET", "/get/" + key + "?version=1"), 404);
  for (int i = 3; i <= 5; ++i) {
    ExpectVersioned(Call("GET", absl::StrCat("/get/", key, "?version=", i)), key, i, i);
  }
}

TEST_F(RestTest, Seed003Stats) {
  const std::string node_id = Call("GET", "/health").Json().value("node_id", "");
  ASSERT_FALSE(node_id.empty());
  for (const std::string& query : {std::string(), "?server=" + node_id}) {
    const HttpAnswer cache = Call("GET", "/cache/stats" + query);
    EXPECT_EQ(cache.status, 200);
    json body = cache.Json();
    ASSERT_TRUE(body.is_object()) << cache.body;
    EXPECT_TRUE(body["size"].is_number_integer()) << cache.body;
    EXPECT_TRUE(body["max_size"].is_number_integer()) << cache.body;
    EXPECT_TRUE(body["is_full"].is_boolean()) << cache.body;

    const HttpAnswer db = Call("GET", "/db/stats" + query);
    EXPECT_EQ(db.status, 200);
    body = db.Json();
    ASSERT_TRUE(body.is_object()) << db.body;
    for (const char* field : {"total_keys", "total_versions", "file_size"}) {
      EXPECT_TRUE(body[field].is_number_integer()) << field << ": " << db.body;
    }
  }
  ExpectError(Call("GET", "/cache/stats?server=unknown:1"), 404);
  ExpectError(Call("GET", "/db/stats?server=unknown:1"), 404);
}

// ?server= takes every name /servers, /nodes and /members/ give this node.
TEST_F(RestTest, StatsAnswerForEveryNameOfThisNode) {
  std::vector<std::string> names;
  const json servers = Call("GET", "/servers").Json();
  ASSERT_TRUE(servers.is_array() && !servers.empty()) << servers;
  const std::string url = servers[0].get<std::string>();
  names.push_back(url);
  names.push_back(url + "/");
  names.push_back(url.substr(std::string("http://").size()));  // host:port
  names.push_back(absl::StrCat("localhost:", port()));
  for (const char* route : {"/nodes", "/members/"}) {
    const json members = Call("GET", route).Json();
    ASSERT_TRUE(members.is_array() && members.size() == 1) << route << ": " << members;
    for (const char* field : {"id", "address", "http_address"}) {
      if (members[0].contains(field) && members[0][field].is_string() &&
          !members[0][field].get<std::string>().empty()) {
        names.push_back(members[0][field].get<std::string>());
      }
    }
  }
  for (const std::string& name : names) {
    for (const char* route : {"/cache/stats", "/db/stats"}) {
      const HttpAnswer answer = Call("GET", absl::StrCat(route, "?server=", name));
      EXPECT_EQ(answer.status, 200) << route << "?server=" << name << ": " << answer.body;
    }
  }
  const HttpAnswer unknown = Call("GET", "/db/stats?server=http://127.0.0.1:1");
  ExpectError(unknown, 404);
  EXPECT_TRUE(absl::StrContains(unknown.body, url)) << "the refusal names the known servers: "
                                                    << unknown.body;
}

// Every binary-protocol request is counted by operation and status, with
// its latency, in the Prometheus text.
TEST_F(RestTest, ProtocolRequestsAreCountedByOperationAndStatus) {
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  const std::string key = TestName();
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(connection->SendBytes(PutFrame(id, key, "v")).ok());
    ASSERT_TRUE(connection->ReadFrame().ok());
  }
  ASSERT_TRUE(connection->SendBytes(GetFrame(4, key + "-missing")).ok());
  ASSERT_TRUE(connection->ReadFrame().ok());
  const std::string text = Call("GET", "/metrics?format=prometheus").body;
  auto count_of = [&](const std::string& series) -> int64_t {
    const size_t at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    const size_t begin = at + 1 + series.size() + 1;
    int64_t value = -1;
    EXPECT_TRUE(absl::SimpleAtoi(text.substr(begin, text.find('\n', begin) - begin), &value));
    return value;
  };
  EXPECT_GE(count_of(R"(logkv_protocol_requests_total{operation="Put",status="ok"})"), 3) << text;
  EXPECT_GE(count_of(R"(logkv_protocol_requests_total{operation="Get",status="not_found"})"), 1)
      << text;
  EXPECT_GE(count_of(R"(logkv_protocol_request_duration_seconds_count{operation="Put"})"), 3)
      << text;
  EXPECT_GE(count_of(R"(logkv_protocol_request_duration_seconds_bucket{operation="Get",le="+Inf"})"),
            1)
      << text;
}

// ---- Seed 004: /kv/{path} JSON documents ----------------------------------------------

TEST_F(RestTest, Seed004Documents) {
  const std::string path = "/kv/" + TestName() + "/a/b/c";
  const std::string document = R"({"name": "logkv",  "tags": ["a", "b"], "n": 1.5})";
  const HttpAnswer put = Call("PUT", path, {{"Content-Type", "application/json"}}, document);
  EXPECT_EQ(put.status, 200) << put.body;
  const json body = put.Json();
  ASSERT_TRUE(body.is_object()) << put.body;
  ASSERT_TRUE(body["uuid"].is_string());
  EXPECT_TRUE(
      std::regex_match(body["uuid"].get<std::string>(),
                       std::regex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")))
      << body["uuid"];
  EXPECT_EQ(body["uuid"].get<std::string>().size(), 36u);
  ASSERT_TRUE(body["timestamp"].is_number_integer());
  EXPECT_GT(body["timestamp"].get<int64_t>(), 1'000'000'000'000);  // Unix ms, not seconds

  const HttpAnswer get = Call("GET", path);
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.body, document);  // as stored, byte for byte
  EXPECT_EQ(get.Header("content-type").value_or(""), "application/json");
  // A second PUT gets a new uuid.
  const HttpAnswer again = Call("PUT", path, {}, "[1,2,3]");
  EXPECT_EQ(again.status, 200);
  EXPECT_NE(again.Json().value("uuid", ""), body["uuid"].get<std::string>());
  EXPECT_EQ(Call("GET", path).body, "[1,2,3]");

  const HttpAnswer deleted = Call("DELETE", path);
  EXPECT_EQ(deleted.status, 204);
  EXPECT_EQ(deleted.body, "");
  ExpectError(Call("GET", path), 404);
  EXPECT_EQ(Call("DELETE", path).status, 204);

  ExpectError(Call("PUT", path, {}, "not json"), 400);
  ExpectError(Call("PUT", path, {}, R"({"open": )"), 400);
  ExpectError(Call("PUT", path, {}, ""), 400);
  ExpectError(Call("PUT", "/kv/", {}, "{}"), 400);
  // Over --max-document-bytes=512 (but under the value limit: the document limit answers).
  ExpectError(Call("PUT", path, {}, json({{"big", std::string(600, 'x')}}).dump()), 413);
  ExpectError(Call("GET", path), 404);
}

// ---- Methods and unknown routes ------------------------------------------------------

TEST_F(RestTest, WrongMethodIs405WithAllow) {
  struct Case {
    const char* method;
    std::string target;
    std::vector<std::string> allowed;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/kv/" + TestName(), {"GET", "PUT", "DELETE"}},
      {"PATCH", "/v1/kv/" + TestName(), {"GET", "PUT", "DELETE"}},
      {"DELETE", "/health", {"GET"}},
      {"PUT", "/metrics", {"GET"}},
      {"GET", "/v0/kv", {"POST"}},
      {"DELETE", "/put/" + TestName(), {"PUT", "POST"}},
      {"POST", "/get/" + TestName(), {"GET"}},
      {"POST", "/kv/" + TestName() + "/doc", {"PUT", "GET", "DELETE"}},
      {"GET", "/join", {"POST"}},
  };
  for (const Case& c : cases) {
    const HttpAnswer answer = Call(c.method, c.target);
    const std::string context = absl::StrCat(c.method, " ", c.target);
    ExpectError(answer, 405, context);
    const std::string allow = answer.Header("allow").value_or("");
    for (const std::string& method : c.allowed) {
      EXPECT_TRUE(absl::StrContains(allow, method)) << context << ": Allow: " << allow;
    }
    EXPECT_FALSE(absl::StrContains(allow, c.method)) << context << ": Allow: " << allow;
  }
}

TEST_F(RestTest, UnknownRouteIs404Json) {
  for (const char* target : {"/nope", "/v2/kv/x", "/v1", "/v1/kv", "/healthz", "/members"}) {
    ExpectError(Call("GET", target), 404, target);
  }
  ExpectError(Call("PUT", "/nope/deeper", {}, "x"), 404);
}

// ---- HTTP mechanics over raw sockets ------------------------------------------------

TEST_F(RestTest, KeepAliveServesManyRequestsOnOneConnection) {
  HttpConnection connection = Connect();
  const std::string target = "/v1/kv/" + TestName();
  for (int i = 0; i < 5; ++i) {
    const std::string value = absl::StrCat("value-", i);
    ASSERT_TRUE(connection.Send(BuildRequest("PUT", target, {}, value)).ok());
    absl::StatusOr<HttpAnswer> put = connection.Read();
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->status, 200);
    EXPECT_FALSE(put->Header("connection").has_value());
    ASSERT_TRUE(connection.Send(BuildRequest("GET", target)).ok());
    absl::StatusOr<HttpAnswer> get = connection.Read();
    ASSERT_TRUE(get.ok()) << get.status();
    EXPECT_EQ(get->body, value);
  }
  // Errors answered by a route do not end the connection either.
  ASSERT_TRUE(connection.Send(BuildRequest("GET", target + "-missing")).ok());
  absl::StatusOr<HttpAnswer> missing = connection.Read();
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);
  ASSERT_TRUE(connection.Send(BuildRequest("GET", "/health")).ok());
  absl::StatusOr<HttpAnswer> health = connection.Read();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
}

TEST_F(RestTest, PipelinedRequestsAreAnsweredInOrder) {
  const std::string target = "/v1/kv/" + TestName() + "-";
  std::string batch;
  for (int i = 0; i < 10; ++i) {
    batch += BuildRequest("PUT", absl::StrCat(target, i), {}, absl::StrCat("pipelined-", i));
  }
  for (int i = 0; i < 10; ++i) batch += BuildRequest("GET", absl::StrCat(target, i));
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection.Send(batch).ok());  // all 20 in one write
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<HttpAnswer> put = connection.Read();
    ASSERT_TRUE(put.ok()) << "answer " << i << ": " << put.status();
    ExpectWriteAnswer(*put, absl::StrCat(TestName(), "-", i));
  }
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<HttpAnswer> get = connection.Read();
    ASSERT_TRUE(get.ok()) << "answer " << 10 + i << ": " << get.status();
    EXPECT_EQ(get->status, 200);
    EXPECT_EQ(get->body, absl::StrCat("pipelined-", i));
  }
  EXPECT_TRUE(connection.buffered().empty());
}

// Answers held back by the output limit (8 MiB owed) are still given after
// the client half-closes: 10,000 pipelined GETs of a 1000-byte value (about
// 11 MB of answers), then EOF.
TEST_F(RestTest, HalfCloseStillAnswersRequestsHeldBackByTheOutputLimit) {
  const std::string target = "/v1/kv/" + TestName();
  const std::string value(1000, 'h');
  {
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection.Send(BuildRequest("PUT", target, {}, value)).ok());
    absl::StatusOr<HttpAnswer> put = connection.Read();
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_EQ(put->status, 200);
  }
  constexpr int kGets = 10'000;
  std::string batch;
  for (int i = 0; i < kGets; ++i) batch += BuildRequest("GET", target);
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection.Send(batch).ok());
  connection.ShutdownWrite();
  for (int i = 0; i < kGets; ++i) {
    absl::StatusOr<HttpAnswer> get = connection.Read();
    ASSERT_TRUE(get.ok()) << "answer " << i << ": " << get.status();
    EXPECT_EQ(get->status, 200);
    EXPECT_EQ(get->body.size(), value.size()) << "answer " << i;
  }
  EXPECT_TRUE(connection.WaitClosed()) << "the server closes once everything is answered";
}

TEST_F(RestTest, ChunkedRequestBody) {
  const std::string target = "/v1/kv/" + TestName();
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection
                  .Send("PUT " + target +
                        " HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n"
                        "7;ext=1\r\n, world\r\n" +
                        std::string("3\r\n\0\0!\r\n", 8) + "0\r\n\r\n")
                  .ok());
  absl::StatusOr<HttpAnswer> put = connection.Read();
  ASSERT_TRUE(put.ok()) << put.status();
  ExpectWriteAnswer(*put, TestName());
  // Chunks sent in separate writes, on the same connection.
  ASSERT_TRUE(connection
                  .Send("PUT " + target +
                        "-split HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab")
                  .ok());
  ASSERT_TRUE(connection.Send("cd\r\n2\r\nef\r\n0").ok());
  ASSERT_TRUE(connection.Send("\r\n\r\n").ok());
  absl::StatusOr<HttpAnswer> split = connection.Read();
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->status, 200);

  EXPECT_EQ(Call("GET", target).body, std::string("hello, world\0\0!", 15));
  EXPECT_EQ(Call("GET", target + "-split").body, "abcdef");
}

TEST_F(RestTest, ExpectContinue) {
  const std::string target = "/v1/kv/" + TestName();
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection
                  .Send("PUT " + target +
                        " HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
                  .ok());
  absl::StatusOr<HttpAnswer> go_on = connection.Read();
  ASSERT_TRUE(go_on.ok()) << go_on.status();
  EXPECT_EQ(go_on->status, 100);
  EXPECT_EQ(go_on->status_line, "HTTP/1.1 100 Continue");
  ASSERT_TRUE(connection.Send("continued").ok());
  absl::StatusOr<HttpAnswer> put = connection.Read();
  ASSERT_TRUE(put.ok()) << put.status();
  ExpectWriteAnswer(*put, TestName());
  EXPECT_EQ(Call("GET", target).body, "continued");

  // A client that sends the body anyway, at once, still gets its answer.
  ASSERT_TRUE(
      connection
          .Send("PUT " + target +
                " HTTP/1.1\r\nHost: localhost\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nnow")
          .ok());
  absl::StatusOr<HttpAnswer> answer = connection.Read();
  ASSERT_TRUE(answer.ok()) << answer.status();
  if (answer->status == 100) answer = connection.Read();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 200);
  EXPECT_EQ(Call("GET", target).body, "now");
}

TEST_F(RestTest, HeadOnGetRoutes) {
  const std::string target = "/v1/kv/" + TestName();
  ASSERT_EQ(Call("PUT", target, {}, "twelve bytes").status, 200);
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection.Send(BuildRequest("HEAD", target)).ok());
  absl::StatusOr<HttpAnswer> head = connection.Read(/*head=*/true);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("content-length").value_or(""), "12");
  EXPECT_EQ(head->Header("content-type").value_or(""), "application/octet-stream");
  // No body followed: the next answer on the connection starts right away.
  ASSERT_TRUE(connection.Send(BuildRequest("HEAD", "/health")).ok());
  absl::StatusOr<HttpAnswer> health = connection.Read(/*head=*/true);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
  EXPECT_NE(health->Header("content-length").value_or("0"), "0");
  ASSERT_TRUE(connection.Send(BuildRequest("HEAD", target + "-missing")).ok());
  absl::StatusOr<HttpAnswer> missing = connection.Read(/*head=*/true);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);
  ASSERT_TRUE(connection.Send(BuildRequest("GET", target)).ok());
  absl::StatusOr<HttpAnswer> get = connection.Read();
  ASSERT_TRUE(get.ok()) << get.status();
  EXPECT_EQ(get->body, "twelve bytes");
  EXPECT_TRUE(connection.buffered().empty());
}

TEST_F(RestTest, ConnectionCloseIsHonoured) {
  HttpConnection connection = Connect();
  // The request after the one asking to close is never answered.
  ASSERT_TRUE(connection
                  .Send(BuildRequest("GET", "/health", {{"Connection", "close"}}) +
                        BuildRequest("GET", "/health"))
                  .ok());
  absl::StatusOr<HttpAnswer> answer = connection.Read();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 200);
  EXPECT_EQ(answer->Header("connection").value_or(""), "close");
  EXPECT_TRUE(connection.WaitClosed());
  EXPECT_TRUE(connection.buffered().empty()) << connection.buffered();
}

TEST_F(RestTest, Http10Request) {
  const std::string target = "/v1/kv/" + TestName();
  ASSERT_EQ(Call("PUT", target, {}, "old client").status, 200);
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection.Send("GET " + target + " HTTP/1.0\r\n\r\n").ok());
  absl::StatusOr<HttpAnswer> answer = connection.Read();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 200);
  EXPECT_EQ(answer->body, "old client");
  // HTTP/1.0 without keep-alive: the server closes after answering.
  EXPECT_TRUE(connection.WaitClosed());

  // An HTTP/1.0 PUT with a Content-Length works too.
  HttpConnection writer = Connect();
  ASSERT_TRUE(writer.Send("PUT " + target + " HTTP/1.0\r\nContent-Length: 3\r\n\r\nv10").ok());
  absl::StatusOr<HttpAnswer> put = writer.Read();
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->status, 200);
  EXPECT_EQ(Call("GET", target).body, "v10");
}

TEST_F(RestTest, MalformedRequestsAre400AndClose) {
  ExpectRefused("NOT A REQUEST\r\n\r\n", 400);
  ExpectRefused("GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n", 400);
  ExpectRefused("GET /health HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400);
  ExpectRefused("PUT /v1/kv/x HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400);
  ExpectRefused(
      "PUT /v1/kv/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400);
  // Both framings at once (request smuggling) are refused.
  ExpectRefused(
      "PUT /v1/kv/x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n",
      400);
  // An answer owed before the bad request still goes out first, in order.
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection.Send(BuildRequest("GET", "/health") + "BROKEN\r\n\r\n").ok());
  absl::StatusOr<HttpAnswer> first = connection.Read();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status, 200);
  absl::StatusOr<HttpAnswer> second = connection.Read();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->status, 400);
  EXPECT_TRUE(connection.WaitClosed());
  ExpectServing();
}

TEST_F(RestTest, OversizedHeadersAre431) {
  ExpectRefused("GET /health HTTP/1.1\r\nX-Big: " + std::string(17 << 10, 'h') + "\r\n\r\n", 431);
  std::string many = "GET /health HTTP/1.1\r\n";
  for (int i = 0; i < 101; ++i) absl::StrAppend(&many, "X-H", i, ": v\r\n");
  ExpectRefused(many + "\r\n", 431);
  // Just under the limits is fine.
  HttpHeaders fine = {{"X-Big", std::string(15 << 10, 'h')}};
  EXPECT_EQ(Call("GET", "/health", fine).status, 200);
}

TEST_F(RestTest, LongTargetIs414) {
  ExpectRefused("GET /v1/kv/" + std::string(9 << 10, 'k') + " HTTP/1.1\r\n\r\n", 414);
  ExpectRefused("GET /health?" + std::string(9 << 10, 'q') + " HTTP/1.1\r\n\r\n", 414);
}

TEST_F(RestTest, BodyOverTheLimitIs413BeforeItIsSent) {
  // Only the headers are sent: the answer must not wait for the body.
  ExpectRefused("PUT /v1/kv/" + TestName() + " HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n", 413);
  ExpectRefused("POST /v0/kv HTTP/1.1\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n",
                413);
  // A chunked body has no length up front: it is refused at the size line of
  // the chunk that would pass the limit (--max-value-bytes=1024 makes that
  // 1024 / 3 * 4 + 64 KiB = 66900 bytes).
  const std::string chunk(70000, 'c');
  ExpectRefused(
      absl::StrCat("PUT /v1/kv/", TestName(), " HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                   absl::Hex(chunk.size()), "\r\n", chunk, "\r\n0\r\n\r\n"),
      413);
  // Only the size lines are sent: the answer must not wait for the data.
  for (const char* size : {"ffffffffffffffff", "10555"}) {
    ExpectRefused(absl::StrCat("PUT /v1/kv/", TestName(),
                               " HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", size, "\r\n"),
                  413);
  }
  const std::string data(0x8000, 'c');
  ExpectRefused(absl::StrCat("POST /v0/kv HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                             "8000\r\n", data, "\r\n8000\r\n", data, "\r\n8000\r\n"),
                413);
  ExpectError(Call("GET", "/v1/kv/" + TestName()), 404);
}

TEST_F(RestTest, NoLengthIsAnEmptyBody) {
  // RFC 9112 6.3: without Content-Length or Transfer-Encoding the body is
  // empty; the request is answered on its merits and the connection stays.
  const std::string target = "/v1/kv/" + TestName();
  HttpConnection connection = Connect();
  ASSERT_TRUE(connection.Send("PUT " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n").ok());
  absl::StatusOr<HttpAnswer> put = connection.Read();
  ASSERT_TRUE(put.ok()) << put.status();
  ExpectWriteAnswer(*put, TestName());
  ASSERT_TRUE(connection.Send("POST /v0/kv HTTP/1.1\r\nHost: localhost\r\n\r\n").ok());
  absl::StatusOr<HttpAnswer> post = connection.Read();
  ASSERT_TRUE(post.ok()) << post.status();
  ExpectError(*post, 400, "POST /v0/kv without a body");
  EXPECT_NE(post->Header("connection").value_or(""), "close");
  ASSERT_TRUE(connection.Send(BuildRequest("GET", target)).ok());
  absl::StatusOr<HttpAnswer> get = connection.Read();
  ASSERT_TRUE(get.ok()) << get.status();
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->body, "");
  // Framing that is wrong, not absent, still ends the connection.
  ExpectRefused("PUT " + target + " HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
}

TEST_F(RestTest, LeaveWithoutABody) {
  // curl -X POST .../members/leave sends no Content-Length: the request is
  // read with an empty body (not 411) and answered; a node alone refuses to
  // leave (its keys would have no owner), and the connection stays open.
  ScopedTempDir dir;
  std::unique_ptr<LogkvdProcess> node = StartLogkvd(dir.path() + "/data", {});
  ASSERT_NE(node, nullptr);
  absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(node->http_port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_TRUE(connection->Send("POST /members/leave HTTP/1.1\r\nHost: localhost\r\n\r\n").ok());
  absl::StatusOr<HttpAnswer> left = connection->Read(false, absl::Seconds(40));
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_EQ(left->status, 409) << left->body;
  EXPECT_NE(left->body.find("only member"), std::string::npos) << left->body;
  ASSERT_TRUE(connection->Send(BuildRequest("GET", "/health")).ok());
  absl::StatusOr<HttpAnswer> health = connection->Read();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
}

TEST_F(RestTest, UnknownExpectationIs417) {
  ExpectRefused("PUT /v1/kv/" + TestName() +
                    " HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\nx",
                417);
  ExpectError(Call("GET", "/v1/kv/" + TestName()), 404);
}

TEST_F(RestTest, ClientsThatVanishDoNotHurtTheServer) {
  const std::string target = "/v1/kv/" + TestName();
  {  // Half a request line.
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection.Send("GET /hea").ok());
  }
  {  // Headers done, half the body.
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection
                    .Send("PUT " + target +
                          " HTTP/1.1\r\nContent-Length: 100\r\n\r\n"
                          "only part")
                    .ok());
  }
  {  // Headers only, with end of stream from the client.
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection.Send("PUT " + target + " HTTP/1.1\r\nContent-Length: 10\r\n\r\n").ok());
    connection.ShutdownWrite();
    EXPECT_TRUE(connection.WaitClosed());
  }
  {  // Many requests, and gone before reading a single answer.
    std::string burst;
    for (int i = 0; i < 200; ++i) {
      burst += BuildRequest("PUT", absl::StrCat(target, "-", i), {}, std::string(512, 'b'));
    }
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection.Send(burst).ok());
  }
  {  // A reset instead of a close, with answers owed and half a request read.
    HttpConnection connection = Connect();
    ASSERT_TRUE(connection.Send(BuildRequest("GET", "/metrics") + "GET /heal").ok());
    connection.Reset();
  }
  ExpectServing();
  ExpectError(Call("GET", target), 404);  // the half-sent PUTs wrote nothing
  ASSERT_EQ(Call("PUT", target, {}, "alive").status, 200);
  EXPECT_EQ(Call("GET", target).body, "alive");
}

// ==== JSON nesting (--max-json-depth) ================================================

// [[...[1]...]] with depth arrays.
std::string NestedArrays(size_t depth) {
  return absl::StrCat(std::string(depth, '['), "1", std::string(depth, ']'));
}

// Default limits (16 MiB values, 1 MiB documents, depth 64), so that bodies
// nested 100,000 deep reach the JSON routes instead of the size limits.
class RestJsonDepthTest : public RestTestBase {
 protected:
  static void SetUpTestSuite() { shared_ = new SharedServer({}); }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }

  // Refused with 400 naming the limit of depth levels.
  void ExpectTooDeep(const HttpAnswer& answer, size_t depth, absl::string_view context) {
    ExpectError(answer, 400, context);
    EXPECT_TRUE(absl::StrContains(answer.body, absl::StrCat("limit of ", depth, " levels")))
        << context << ": " << answer.body;
  }

  static SharedServer* shared_;
};

SharedServer* RestJsonDepthTest::shared_ = nullptr;

TEST_F(RestJsonDepthTest, DeepBodiesAre400NamingTheLimit) {
  const std::string key = TestName();
  const std::string deep = NestedArrays(100'000);  // 200 KB
  ExpectTooDeep(Call("PUT", "/put/" + key, {}, absl::StrCat(R"({"value":)", deep, "}")), 64,
                "PUT /put");
  ExpectTooDeep(Call("POST", "/put/" + key, {}, absl::StrCat(R"({"value":)", deep, "}")), 64,
                "POST /put");
  ExpectTooDeep(Call("PUT", "/kv/" + key + "/doc", {}, deep), 64, "PUT /kv/{path}");
  ExpectTooDeep(Call("POST", "/v0/kv", {},
                     absl::StrCat(R"({"key":"a2V5","value":"dg==","x":)", deep, "}")),
                64, "POST /v0/kv");
  ExpectServing();
  ExpectError(Call("GET", "/get/" + key), 404);
  ExpectError(Call("GET", "/kv/" + key + "/doc"), 404);

  // At the limit: the body's object is one level, its value 63 more.
  const HttpAnswer at_limit =
      Call("PUT", "/put/" + key, {}, absl::StrCat(R"({"value":)", NestedArrays(63), "}"));
  EXPECT_EQ(at_limit.status, 200) << at_limit.body;
  EXPECT_EQ(Call("GET", "/get/" + key).Json()["value"], json::parse(NestedArrays(63)));
  ExpectTooDeep(
      Call("PUT", "/put/" + key, {}, absl::StrCat(R"({"value":)", NestedArrays(64), "}")), 64,
      "one level past the limit");
  EXPECT_EQ(Call("PUT", "/kv/" + key + "/doc", {}, NestedArrays(64)).status, 200);
  ExpectTooDeep(Call("PUT", "/kv/" + key + "/doc", {}, NestedArrays(65)), 64, "document");
}

TEST_F(RestJsonDepthTest, DeepStoredValuesReadBackAsStrings) {
  // Bytes written raw are not checked (any bytes are a value); seed 003's
  // GET returns JSON deeper than the limit as the string it is.
  const std::string key = TestName();
  const std::string deep = NestedArrays(100'000);
  ASSERT_EQ(Call("PUT", "/v1/kv/" + key, {}, deep).status, 200);
  for (int i = 0; i < 2; ++i) {
    const HttpAnswer got = Call("GET", "/get/" + key);
    ASSERT_EQ(got.status, 200) << got.body.substr(0, 200);
    const json body = got.Json();
    ASSERT_TRUE(body.is_object());
    ASSERT_TRUE(body["value"].is_string());
    EXPECT_EQ(body["value"].get<std::string>(), deep);
  }
  // At the limit it is JSON.
  ASSERT_EQ(Call("PUT", "/v1/kv/" + key + "-64", {}, NestedArrays(64)).status, 200);
  EXPECT_EQ(Call("GET", "/get/" + key + "-64").Json()["value"], json::parse(NestedArrays(64)));
  ASSERT_EQ(Call("PUT", "/v1/kv/" + key + "-65", {}, NestedArrays(65)).status, 200);
  EXPECT_EQ(Call("GET", "/get/" + key + "-65").Json()["value"], NestedArrays(65));
  // The other dialects return the bytes as stored.
  EXPECT_EQ(Call("GET", "/v1/kv/" + key).body, deep);
  EXPECT_EQ(Call("GET", "/kv/" + key).body, deep);
  ExpectServing();
}

TEST_F(RestJsonDepthTest, TheLimitIsAFlagAndAnEnvironmentVariable) {
  ScopedTempDir dir;
  {  // --max-json-depth=3: {"value":[[1]]} is 3 deep.
    std::unique_ptr<LogkvdProcess> node =
        StartLogkvd(dir.path() + "/flag", {"--max-json-depth=3"});
    ASSERT_NE(node, nullptr);
    absl::StatusOr<HttpAnswer> ok =
        Fetch(node->http_port(), "PUT", "/put/k", {}, R"({"value":[[1]]})");
    ASSERT_TRUE(ok.ok());
    EXPECT_EQ(ok->status, 200) << ok->body;
    absl::StatusOr<HttpAnswer> deep =
        Fetch(node->http_port(), "PUT", "/put/k", {}, R"({"value":[[[1]]]})");
    ASSERT_TRUE(deep.ok());
    ExpectTooDeep(*deep, 3, "--max-json-depth=3");
  }
  {  // LOGKV_MAX_JSON_DEPTH=2
    ASSERT_EQ(setenv("LOGKV_MAX_JSON_DEPTH", "2", 1), 0);
    std::unique_ptr<LogkvdProcess> node = StartLogkvd(dir.path() + "/env", {});
    ASSERT_EQ(unsetenv("LOGKV_MAX_JSON_DEPTH"), 0);
    ASSERT_NE(node, nullptr);
    absl::StatusOr<HttpAnswer> deep =
        Fetch(node->http_port(), "PUT", "/put/k", {}, R"({"value":[[1]]})");
    ASSERT_TRUE(deep.ok());
    ExpectTooDeep(*deep, 2, "LOGKV_MAX_JSON_DEPTH=2");
  }
  {  // Out of range: logkvd does not start.
    LogkvdProcess node(LOGKVD_PATH, {"--data-dir=" + dir.path() + "/zero", "--max-json-depth=0"});
    EXPECT_FALSE(node.Start(absl::Seconds(10)).ok());
    EXPECT_TRUE(absl::StrContains(node.Output(), "--max_json_depth must be between 1 and"))
        << node.Output();
  }
}

// ==== --read-only ====================================================================

class RestReadOnlyTest : public RestTestBase {
 protected:
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {}  // each test starts its own node

  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

TEST_F(RestReadOnlyTest, WritesAre403ReadsWork) {
  const std::string data = dir_.path() + "/data";
  process_ = StartLogkvd(data, {});
  ASSERT_NE(process_, nullptr);
  ASSERT_EQ(Call("PUT", "/v1/kv/k000", {}, "v000").status, 200);
  ASSERT_EQ(Call("PUT", "/kv?key=k001", {}, "v001").status, 200);
  ASSERT_EQ(Call("POST", "/v0/kv", {},
                 json({{"key", Base64Encode("k002")}, {"value", Base64Encode("v002")}}).dump())
                .status,
            200);
  ASSERT_EQ(Call("PUT", "/put/k003", {}, R"({"value":"v003"})").status, 200);
  ASSERT_EQ(Call("PUT", "/kv/k004/doc", {}, R"({"v":"004"})").status, 200);
  ASSERT_EQ(process_->Stop(), 0);

  process_ = StartLogkvd(data, {"--read-only"});
  ASSERT_NE(process_, nullptr);
  const HttpAnswer health = Call("GET", "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.Json().value("mode", ""), "read-only");

  // Reads work in every dialect.
  EXPECT_EQ(Call("GET", "/v1/kv/k000").body, "v000");
  EXPECT_EQ(Call("GET", "/store/k000").body, "v000");
  EXPECT_EQ(Call("GET", "/kv?key=k001").body, "v001");
  EXPECT_EQ(Call("GET", "/v0/kv/key/" + Base64Encode("k002")).Json().value("value", ""),
            Base64Encode("v002"));
  EXPECT_EQ(Call("GET", "/get/k003").Json().value("value", ""), "v003");
  EXPECT_EQ(Call("GET", "/get/k003?version=1").Json().value("value", ""), "v003");
  EXPECT_EQ(Call("GET", "/kv/k004/doc").body, R"({"v":"004"})");
  EXPECT_EQ(Call("GET", "/metrics").status, 200);

  // Writes are refused in every dialect, to existing and new keys alike.
  ExpectError(Call("PUT", "/v1/kv/k000", {}, "x"), 403, "PUT /v1/kv");
  ExpectError(Call("PUT", "/v1/kv/new?ttl=1h", {}, "x"), 403, "PUT /v1/kv new");
  ExpectError(Call("DELETE", "/v1/kv/k000"), 403, "DELETE /v1/kv");
  ExpectError(Call("PUT", "/kv?key=k001", {}, "x"), 403, "PUT /kv?key");
  ExpectError(Call("DELETE", "/kv?key=k001"), 403, "DELETE /kv?key");
  ExpectError(Call("POST", "/v0/kv", {},
                   json({{"key", Base64Encode("k002")}, {"value", Base64Encode("x")}}).dump()),
              403, "POST /v0/kv");
  ExpectError(Call("PUT", "/put/k003", {}, R"({"value":"x"})"), 403, "PUT /put");
  ExpectError(Call("POST", "/put/k003", {}, R"({"value":"x"})"), 403, "POST /put");
  ExpectError(Call("PUT", "/kv/k004/doc", {}, R"({"v":"x"})"), 403, "PUT /kv/path");
  ExpectError(Call("DELETE", "/kv/k004/doc"), 403, "DELETE /kv/path");

  // Nothing changed.
  EXPECT_EQ(Call("GET", "/v1/kv/k000").body, "v000");
  EXPECT_EQ(Call("GET", "/kv?key=k001").body, "v001");
  EXPECT_EQ(Call("GET", "/get/k003").Json().value("version", 0), 1);
  EXPECT_EQ(Call("GET", "/kv/k004/doc").body, R"({"v":"004"})");
  ExpectError(Call("GET", "/v1/kv/new"), 404);
}

// ==== Restarts and damaged data =================================================
class RestRestartTest : public RestTestBase {
 protected:
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {}  // each test starts its own node

  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

// total_versions is what the engine holds (current versions and the older
// ones kept), not a count of writes since the node started.
TEST_F(RestRestartTest, DbStatsCountVersionsAfterARestart) {
  const std::string data = dir_.path() + "/data";
  process_ = StartLogkvd(data, {"--versions=3"});
  ASSERT_NE(process_, nullptr);
  for (int v = 1; v <= 4; ++v) {  // three versions kept
    ASSERT_EQ(Call("PUT", "/put/four", {}, json({{"value", v}}).dump()).status, 200);
  }
  ASSERT_EQ(Call("PUT", "/put/one", {}, R"({"value":1})").status, 200);
  ASSERT_EQ(Call("PUT", "/put/gone", {}, R"({"value":1})").status, 200);
  ASSERT_EQ(Call("DELETE", "/v1/kv/gone").status, 200);
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    const json stats = Call("GET", "/db/stats").Json();
    EXPECT_EQ(stats.value("total_keys", -1), 2) << stats;
    EXPECT_EQ(stats.value("total_versions", -1), 3 + 1) << stats;
    EXPECT_EQ(Call("GET", "/get/four?version=2").Json().value("value", 0), 2);
  };
  check("before the restart");
  ASSERT_EQ(process_->Stop(), 0);
  process_ = StartLogkvd(data, {"--versions=3"});
  ASSERT_NE(process_, nullptr);
  check("after the restart");
}

// A failure inside the engine names its files; the answer must not.
TEST_F(RestRestartTest, StorageErrorsDoNotShowServerPaths) {
  const std::string data = dir_.path() + "/data";
  process_ = StartLogkvd(data, {"--shards=1"});
  ASSERT_NE(process_, nullptr);
  const std::string value = "a value that will be damaged on disk";
  ASSERT_EQ(Call("PUT", "/v1/kv/damaged", {}, value).status, 200);
  // Flip a byte of the value in the log: the record's checksum fails on read.
  // In place: the server maps the file.
  bool damaged = false;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data)) {
    const std::string file = entry.path().string();
    if (!absl::EndsWith(file, ".log")) continue;
    const std::string bytes = ReadFileBytes(file);
    const size_t at = bytes.find(value);
    if (at == std::string::npos) continue;
    std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
    stream.seekp(static_cast<std::streamoff>(at));
    stream.put(static_cast<char>(bytes[at] ^ 0x20));
    ASSERT_TRUE(stream.good()) << file;
    damaged = true;
  }
  ASSERT_TRUE(damaged) << "the value was not found in any segment";
  const HttpAnswer answer = Call("GET", "/v1/kv/damaged");
  ExpectError(answer, 500);
  EXPECT_FALSE(absl::StrContains(answer.body, dir_.path())) << answer.body;
  EXPECT_FALSE(absl::StrContains(answer.body, ".log")) << answer.body;
  EXPECT_TRUE(absl::StrContains(answer.body, "server log")) << answer.body;
  // The binary protocol is answered the same way.
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(process_->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_TRUE(connection->SendBytes(GetFrame(1, "damaged")).ok());
  absl::StatusOr<std::string> frame = connection->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  const p::Response* response = AsResponse(*frame);
  ASSERT_NE(response, nullptr);
  EXPECT_EQ(response->status(), p::StatusCode::DataLoss);
  ASSERT_NE(response->message(), nullptr);
  EXPECT_FALSE(absl::StrContains(response->message()->str(), dir_.path()))
      << response->message()->str();
  // The log has the whole message.
  const absl::Time give_up = absl::Now() + kPollLimit;
  while (!absl::StrContains(process_->Output(), dir_.path()) && absl::Now() < give_up) {
    absl::SleepFor(kPollInterval);
  }
  EXPECT_TRUE(absl::StrContains(process_->Output(), dir_.path())) << process_->Output();
}

// ==== The memory held for requests still arriving ======================================

class RestBufferLimitTest : public RestTestBase {
 protected:
  static void SetUpTestSuite() { shared_ = new SharedServer({"--max-buffered-bytes=1048576"}); }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }

  // logkv_buffered_request_bytes as /metrics reports it; -1 if absent.
  int64_t BufferedBytes() {
    const HttpAnswer metrics = Call("GET", "/metrics?format=prometheus");
    std::smatch match;
    static const std::regex kLine(R"((^|\n)logkv_buffered_request_bytes (\S+))");
    double value = -1;  // the exposition may spell 800000 as 8e+05
    if (std::regex_search(metrics.body, match, kLine)) {
      (void)absl::SimpleAtod(match[2].str(), &value);
    }
    return static_cast<int64_t>(value);
  }
  bool PollUntilBuffered(int64_t bytes) {
    const absl::Time deadline = absl::Now() + kPollLimit;
    while (absl::Now() < deadline) {
      if (BufferedBytes() == bytes) return true;
      absl::SleepFor(kPollInterval);
    }
    return false;
  }

  static SharedServer* shared_;
};

SharedServer* RestBufferLimitTest::shared_ = nullptr;

// Bodies and frames still arriving share one budget (--max-buffered-bytes):
// past it, new ones are refused and their connections closed, while those
// admitted finish.
TEST_F(RestBufferLimitTest, RequestsStillArrivingShareOneBudget) {
  constexpr size_t kBodyBytes = 800'000;
  constexpr size_t kSentFirst = 100'000;
  ASSERT_TRUE(PollUntilBuffered(0));
  const std::string body(kBodyBytes, 'a');
  const std::string request = BuildRequest("PUT", "/v1/kv/big-a", {}, body);
  const size_t head_bytes = request.size() - body.size();
  HttpConnection admitted = Connect();
  ASSERT_TRUE(admitted.Send(request.substr(0, head_bytes + kSentFirst)).ok());
  ASSERT_TRUE(PollUntilBuffered(kBodyBytes)) << "now " << BufferedBytes();

  {  // Another such body does not fit: 503, Retry-After, closed.
    HttpConnection refused = Connect();
    const std::string other = BuildRequest("PUT", "/v1/kv/big-b", {}, body);
    ASSERT_TRUE(refused.Send(other.substr(0, head_bytes + 1000)).ok());
    absl::StatusOr<HttpAnswer> answer = refused.Read();
    ASSERT_TRUE(answer.ok()) << answer.status();
    ExpectError(*answer, 503);
    EXPECT_TRUE(answer->Header("retry-after").has_value());
    EXPECT_TRUE(refused.WaitClosed());
  }
  {  // Nor does a frame of that size on the binary port.
    absl::StatusOr<RawConnection> binary = RawConnection::Connect(server()->port());
    ASSERT_TRUE(binary.ok()) << binary.status();
    const std::string frame = PutFrame(1, "big-c", body);
    ASSERT_TRUE(binary->SendBytes(frame.substr(0, 1000)).ok());
    absl::StatusOr<std::string> answer = binary->ReadFrame();
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(AsResponse(*answer)->status(), p::StatusCode::ResourceExhausted);
    EXPECT_TRUE(binary->WaitClosed(absl::Seconds(10)));
  }
  // Small requests are not held back.
  EXPECT_EQ(Call("PUT", "/v1/kv/small", {}, "v").status, 200);

  // The admitted body finishes, and its reservation is given back.
  ASSERT_TRUE(admitted.Send(request.substr(head_bytes + kSentFirst)).ok());
  absl::StatusOr<HttpAnswer> stored = admitted.Read();
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->status, 200) << stored->body;
  EXPECT_TRUE(PollUntilBuffered(0)) << "now " << BufferedBytes();
  // Now a large frame fits again.
  absl::StatusOr<RawConnection> binary = RawConnection::Connect(server()->port());
  ASSERT_TRUE(binary.ok()) << binary.status();
  ASSERT_TRUE(binary->SendBytes(PutFrame(2, "big-d", body)).ok());
  absl::StatusOr<std::string> answer = binary->ReadFrame();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(AsResponse(*answer)->status(), p::StatusCode::Ok);
  EXPECT_EQ(Call("GET", "/v1/kv/big-a").body.size(), kBodyBytes);
}

// ==== Accounts, API keys, scopes and tenants ===========================================

struct Account {
  uint64_t id = 0;
  std::string email;
  std::string username;
  std::string password;
  std::string access_token;
  std::string refresh_token;
  std::string api_key;
  uint64_t api_key_id = 0;
};

class RestAccountsBase : public RestTestBase {
 protected:
  HttpHeaders Bearer(const std::string& token) { return {{"Authorization", "Bearer " + token}}; }
  static HttpHeaders KeyHeader(const std::string& key) { return {{"X-API-Key", key}}; }

  HttpAnswer SignUp(const std::string& email, const std::string& username,
                    const std::string& password) {
    return Call("POST", "/signup", {{"Content-Type", "application/json"}},
                json({{"email", email}, {"username", username}, {"password", password}}).dump());
  }
  HttpAnswer Login(const std::string& email, const std::string& password) {
    return Call("POST", "/login", {{"Content-Type", "application/json"}},
                json({{"email", email}, {"password", password}}).dump());
  }
  HttpAnswer CreateKey(const std::string& token, const json& scopes,
                       const std::string& name = "test key") {
    return Call("POST", "/apikeys", Bearer(token),
                json({{"name", name}, {"scopes", scopes}, {"expires_in_days", 90}}).dump());
  }

  // A new user, logged in, with one API key of those scopes. Names are unique per test.
  Account NewAccount(const std::string& tag, const json& scopes = json::array({"read", "write"})) {
    Account account;
    const std::string name = TestName() + "-" + tag;
    account.email = name + "@example.com";
    account.username = name;
    account.password = "securepass123";
    const HttpAnswer signup = SignUp(account.email, account.username, account.password);
    EXPECT_EQ(signup.status, 201) << signup.body;
    account.id = signup.Json().value("id", uint64_t{0});
    const HttpAnswer login = Login(account.email, account.password);
    EXPECT_EQ(login.status, 200) << login.body;
    account.access_token = login.Json().value("access_token", "");
    account.refresh_token = login.Json().value("refresh_token", "");
    const HttpAnswer key = CreateKey(account.access_token, scopes);
    EXPECT_EQ(key.status, 201) << key.body;
    account.api_key = key.Json().value("key", "");
    account.api_key_id = key.Json().value("id", uint64_t{0});
    return account;
  }
};

class RestAuthTest : public RestAccountsBase {
 protected:
  static void SetUpTestSuite() {
    shared_ = new SharedServer({"--auth=on", "--rate-limit=0", "--max-watches-per-user=4",
                                absl::StrCat("--cluster-secret=", kOperatorSecret)});
  }
  // The node-wide statistics' credential (/metrics with auth on).
  static constexpr absl::string_view kOperatorSecret = "operator-secret-for-the-auth-tests";
  static HttpHeaders Operator() {
    return {{"Authorization", absl::StrCat("Bearer ", kOperatorSecret)}};
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }
  static SharedServer* shared_;
};

SharedServer* RestAuthTest::shared_ = nullptr;

bool IsRfc3339(const json& value) {
  return value.is_string() &&
         std::regex_match(value.get<std::string>(),
                          std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z)"));
}

TEST_F(RestAuthTest, SignUpLoginAndApiKeys) {
  const std::string email = TestName() + "@example.com";
  const std::string username = TestName();
  const HttpAnswer signup = SignUp(email, username, "securepass123");
  EXPECT_EQ(signup.status, 201) << signup.body;
  EXPECT_EQ(signup.Header("content-type").value_or(""), "application/json");
  json user = signup.Json();
  ASSERT_TRUE(user.is_object()) << signup.body;
  EXPECT_TRUE(user["id"].is_number_integer());
  EXPECT_EQ(user.value("email", ""), email);
  EXPECT_EQ(user.value("username", ""), username);
  ASSERT_TRUE(user["is_active"].is_boolean());
  EXPECT_TRUE(user["is_active"].get<bool>());
  EXPECT_TRUE(IsRfc3339(user["created_at"])) << user["created_at"];
  EXPECT_FALSE(user.contains("password"));
  EXPECT_FALSE(user.contains("password_hash"));

  // Taken names, and bad input.
  ExpectError(SignUp(email, username + "-other", "securepass123"), 409, "same email");
  ExpectError(SignUp(absl::AsciiStrToUpper(email), username + "-x", "securepass123"), 409,
              "same email in capitals");
  ExpectError(SignUp(username + "-y@example.com", username, "securepass123"), 409, "same username");
  ExpectError(SignUp("not-an-email", username + "-z", "securepass123"), 400, "invalid email");
  ExpectError(SignUp(username + "-s@example.com", username + "-s", "short"), 400, "short password");
  ExpectError(Call("POST", "/signup", {}, "{not json"), 400, "bad JSON");
  ExpectError(Call("POST", "/signup", {}, R"({"email":"a@example.com"})"), 400, "missing fields");
  ExpectError(Call("POST", "/signup", {}, R"({"email":1,"username":"u","password":"p"})"), 400,
              "wrong types");

  const HttpAnswer login = Login(email, "securepass123");
  EXPECT_EQ(login.status, 200) << login.body;
  const json tokens = login.Json();
  ASSERT_TRUE(tokens.is_object()) << login.body;
  ASSERT_TRUE(tokens["access_token"].is_string());
  ASSERT_TRUE(tokens["refresh_token"].is_string());
  EXPECT_NE(tokens["access_token"], tokens["refresh_token"]);
  EXPECT_EQ(tokens.value("token_type", ""), "Bearer");
  ASSERT_TRUE(tokens["expires_in"].is_number_integer());
  EXPECT_EQ(tokens["expires_in"].get<int>(), 3600);
  ASSERT_TRUE(tokens["user"].is_object());
  EXPECT_EQ(tokens["user"].value("email", ""), email);
  EXPECT_EQ(tokens["user"].value("username", ""), username);
  EXPECT_EQ(tokens["user"]["id"], user["id"]);
  const std::string access = tokens["access_token"].get<std::string>();

  ExpectError(Login(email, "wrongpassword"), 401, "bad password");
  ExpectError(Login("nobody-" + email, "securepass123"), 401, "unknown email");
  ExpectError(Call("POST", "/login", {}, "nope"), 400, "bad JSON");

  const HttpAnswer created =
      CreateKey(access, json::array({"read", "write"}), "My Application Key");
  EXPECT_EQ(created.status, 201) << created.body;
  const json key = created.Json();
  ASSERT_TRUE(key.is_object()) << created.body;
  ASSERT_TRUE(key["id"].is_number_integer());
  EXPECT_EQ(key.value("name", ""), "My Application Key");
  ASSERT_TRUE(key["key"].is_string());
  const std::string api_key = key["key"].get<std::string>();
  EXPECT_TRUE(absl::StartsWith(api_key, "ydht_")) << api_key;
  EXPECT_EQ(api_key.size(), 45u);
  EXPECT_EQ(key.value("key_prefix", ""), api_key.substr(0, 8));
  EXPECT_EQ(key["scopes"], json::array({"read", "write"}));
  EXPECT_EQ(key.value("is_active", false), true);
  EXPECT_TRUE(IsRfc3339(key["expires_at"])) << key["expires_at"];
  EXPECT_TRUE(IsRfc3339(key["created_at"])) << key["created_at"];

  // A second key, that never expires.
  const HttpAnswer second =
      Call("POST", "/apikeys", Bearer(access), R"({"name":"forever","scopes":["read"]})");
  EXPECT_EQ(second.status, 201) << second.body;
  EXPECT_TRUE(second.Json()["expires_at"].is_null()) << second.body;
  ExpectError(Call("POST", "/apikeys", Bearer(access), "{bad"), 400, "apikeys bad JSON");
  ExpectError(CreateKey(access, json::array({"admin"})), 400, "unknown scope");
  ExpectError(CreateKey(access, json::array()), 400, "no scope");

  const HttpAnswer list = Call("GET", "/apikeys", Bearer(access));
  EXPECT_EQ(list.status, 200) << list.body;
  const json listed = list.Json();
  ASSERT_TRUE(listed.is_object()) << list.body;
  ASSERT_TRUE(listed["api_keys"].is_array());
  ASSERT_TRUE(listed["count"].is_number_integer());
  EXPECT_EQ(listed["count"].get<int>(), 2);
  ASSERT_EQ(listed["api_keys"].size(), 2u);
  const json& first = listed["api_keys"][0];
  EXPECT_EQ(first["id"], key["id"]);
  EXPECT_EQ(first.value("key_prefix", ""), api_key.substr(0, 8));
  EXPECT_FALSE(first.contains("key")) << "a listing shows the full key: " << list.body;
  EXPECT_FALSE(absl::StrContains(list.body, api_key)) << list.body;
  for (const char* field :
       {"name", "scopes", "is_active", "last_used_at", "expires_at", "created_at"}) {
    EXPECT_TRUE(first.contains(field)) << field << ": " << list.body;
  }

  // The key works on the data routes.
  ExpectWriteAnswer(Call("PUT", "/v1/kv/user:123", KeyHeader(api_key), R"({"name":"John"})"),
                    "user:123");
  const HttpAnswer get = Call("GET", "/v1/kv/user:123", KeyHeader(api_key));
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.body, R"({"name":"John"})");
}

TEST_F(RestAuthTest, RevokedKeysAre401) {
  Account a = NewAccount("a");
  Account b = NewAccount("b");
  ASSERT_EQ(Call("PUT", "/v1/kv/k", KeyHeader(a.api_key), "v").status, 200);

  // Another user cannot revoke a's key; a bad id is 400; an unknown one 404.
  ExpectError(Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id), Bearer(b.access_token)), 404);
  ExpectError(Call("DELETE", "/apikeys/abc", Bearer(a.access_token)), 400);
  ExpectError(Call("DELETE", "/apikeys/99999999", Bearer(a.access_token)), 404);
  ExpectError(Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id)), 401);
  EXPECT_EQ(Call("GET", "/v1/kv/k", KeyHeader(a.api_key)).status, 200);

  const HttpAnswer revoked =
      Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id), Bearer(a.access_token));
  EXPECT_EQ(revoked.status, 200) << revoked.body;
  for (const auto& [method, target] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/v1/kv/k"}, {"PUT", "/v1/kv/k"}, {"DELETE", "/v1/kv/k"}}) {
    ExpectError(Call(method, target, KeyHeader(a.api_key), method == "PUT" ? "x" : ""), 401,
                method + " with a revoked key");
  }
  const json listed = Call("GET", "/apikeys", Bearer(a.access_token)).Json();
  ASSERT_TRUE(listed["api_keys"].is_array());
  ASSERT_EQ(listed["api_keys"].size(), 1u);
  EXPECT_EQ(listed["api_keys"][0].value("is_active", true), false);
  // Revoking twice is fine.
  EXPECT_EQ(Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id), Bearer(a.access_token)).status,
            200);
  // b's key is untouched.
  EXPECT_EQ(Call("GET", "/v1/kv/k", KeyHeader(b.api_key)).status, 404);
}

TEST_F(RestAuthTest, MissingOrInvalidCredentialsAre401) {
  Account a = NewAccount("a");
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"GET", "/v1/kv/k"},   {"PUT", "/v1/kv/k"},        {"DELETE", "/v1/kv/k"},
      {"GET", "/store/k"},   {"GET", "/kv?key=k"},       {"PUT", "/kv?key=k"},
      {"POST", "/v0/kv"},    {"GET", "/v0/kv/key/aGk="}, {"PUT", "/put/k"},
      {"GET", "/get/k"},     {"PUT", "/kv/a/b"},         {"GET", "/kv/a/b"},
      {"DELETE", "/kv/a/b"},
  };
  const std::string fake_key = "ydht_" + std::string(40, 'A');
  for (const auto& [method, target] : routes) {
    const std::string body = method == "GET" || method == "DELETE" ? "" : "{}";
    const std::string context = method + " " + target;
    ExpectError(Call(method, target, {}, body), 401, context + " without a key");
    ExpectError(Call(method, target, KeyHeader("bogus"), body), 401, context + " bogus key");
    ExpectError(Call(method, target, KeyHeader(fake_key), body), 401, context + " fake key");
    // A session token is not an API key.
    ExpectError(Call(method, target, KeyHeader(a.access_token), body), 401, context + " jwt");
  }
  // /health needs no key; statistics do (RestStatsAuthTest).
  EXPECT_EQ(Call("GET", "/health").status, 200);
  ExpectError(Call("GET", "/metrics"), 401, "/metrics without a key");

  // Bearer routes.
  ExpectError(Call("GET", "/apikeys"), 401, "no Authorization");
  EXPECT_TRUE(Call("GET", "/apikeys").Header("www-authenticate").has_value());
  ExpectError(Call("GET", "/apikeys", Bearer("garbage")), 401, "garbage bearer");
  ExpectError(Call("GET", "/apikeys", {{"Authorization", "Basic dXNlcjpwYXNz"}}), 401, "basic");
  ExpectError(Call("GET", "/apikeys", {{"Authorization", "Bearer"}}), 401, "empty bearer");
  ExpectError(Call("GET", "/apikeys", Bearer(a.refresh_token)), 401, "refresh as access");
  ExpectError(Call("GET", "/apikeys", Bearer(a.api_key)), 401, "API key as bearer");
  std::string tampered = a.access_token;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  ExpectError(Call("GET", "/apikeys", Bearer(tampered)), 401, "tampered signature");
  ExpectError(CreateKey("garbage", json::array({"read"})), 401, "create with a garbage bearer");
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(a.access_token)).status, 200);
}

TEST_F(RestAuthTest, RefreshRotatesTokens) {
  Account a = NewAccount("a");
  const HttpAnswer refreshed =
      Call("POST", "/refresh", {}, json({{"refresh_token", a.refresh_token}}).dump());
  EXPECT_EQ(refreshed.status, 200) << refreshed.body;
  const json tokens = refreshed.Json();
  ASSERT_TRUE(tokens["access_token"].is_string()) << refreshed.body;
  ASSERT_TRUE(tokens["refresh_token"].is_string()) << refreshed.body;
  EXPECT_EQ(tokens.value("token_type", ""), "Bearer");
  EXPECT_EQ(tokens.value("expires_in", 0), 3600);
  const std::string new_refresh = tokens["refresh_token"].get<std::string>();
  EXPECT_NE(new_refresh, a.refresh_token);
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(tokens["access_token"].get<std::string>())).status, 200);

  // The old refresh token worked once.
  ExpectError(Call("POST", "/refresh", {}, json({{"refresh_token", a.refresh_token}}).dump()), 401);
  // An access token is not a refresh token.
  ExpectError(Call("POST", "/refresh", {}, json({{"refresh_token", a.access_token}}).dump()), 401);
  ExpectError(Call("POST", "/refresh", {}, "{bad"), 400);
  ExpectError(Call("POST", "/refresh", {}, "{}"), 400);
  // The new one works, once.
  EXPECT_EQ(Call("POST", "/refresh", {}, json({{"refresh_token", new_refresh}}).dump()).status,
            200);
  ExpectError(Call("POST", "/refresh", {}, json({{"refresh_token", new_refresh}}).dump()), 401);
}

TEST_F(RestAuthTest, ScopesLimitWhatAKeyMayDo) {
  Account owner = NewAccount("owner");
  const HttpAnswer read_key = CreateKey(owner.access_token, json::array({"read"}), "reader");
  const HttpAnswer write_key = CreateKey(owner.access_token, json::array({"write"}), "writer");
  ASSERT_EQ(read_key.status, 201);
  ASSERT_EQ(write_key.status, 201);
  const HttpHeaders reader = KeyHeader(read_key.Json().value("key", ""));
  const HttpHeaders writer = KeyHeader(write_key.Json().value("key", ""));
  EXPECT_EQ(read_key.Json()["scopes"], json::array({"read"}));
  EXPECT_EQ(write_key.Json()["scopes"], json::array({"write"}));

  ExpectError(Call("PUT", "/v1/kv/scoped", reader, "r"), 403, "reader PUT");
  ExpectError(Call("DELETE", "/v1/kv/scoped", reader), 403, "reader DELETE");
  ExpectError(Call("PUT", "/put/scoped", reader, R"({"value":1})"), 403, "reader /put");
  ExpectError(Call("PUT", "/kv/scoped/doc", reader, "{}"), 403, "reader /kv/path");
  ExpectWriteAnswer(Call("PUT", "/v1/kv/scoped", writer, "w"), "scoped");
  ExpectError(Call("GET", "/v1/kv/scoped", writer), 403, "writer GET");
  ExpectError(Call("GET", "/kv?key=scoped", writer), 403, "writer GET /kv?key");
  ExpectError(Call("GET", "/get/scoped", writer), 403, "writer /get");
  ExpectError(Call("GET", "/store/scoped", writer), 403, "writer /store");

  const HttpAnswer got = Call("GET", "/v1/kv/scoped", reader);
  EXPECT_EQ(got.status, 200);
  EXPECT_EQ(got.body, "w");
  ExpectWriteAnswer(Call("DELETE", "/v1/kv/scoped", writer), "scoped");
  ExpectError(Call("GET", "/v1/kv/scoped", reader), 404, "reader after delete");
}

// An ACL that gives others create without write, or write without create,
// on a single node: whether the key exists decides, and the write is made on
// condition that it still does as found (docs/security.md).
TEST_F(RestAuthTest, CreateOnlyAndWriteOnlyEntriesTellNewKeysFromOld) {
  Account owner = NewAccount("owner");
  Account other = NewAccount("other");
  const HttpHeaders as_owner = {{"X-API-Key", owner.api_key}, {"Content-Type", "application/json"}};
  ASSERT_EQ(Call("PUT", "/api/acl?prefix=drop/", as_owner, R"({"mode":"cdwr----c---"})").status,
            200);
  ASSERT_EQ(Call("PUT", "/api/acl?prefix=edit/", as_owner, R"({"mode":"cdwr------w-"})").status,
            200);
  const HttpHeaders as_other = {{"X-API-Key", other.api_key},
                                {"X-Namespace", absl::StrCat(owner.id)}};
  ExpectWriteAnswer(Call("PUT", "/v1/kv/drop/a", as_other, "first"), "drop/a");
  ExpectError(Call("PUT", "/v1/kv/drop/a", as_other, "again"), 403, "create-only overwrite");
  ExpectWriteAnswer(Call("PUT", "/v1/kv/edit/b", KeyHeader(owner.api_key), "owner's"), "edit/b");
  ExpectWriteAnswer(Call("PUT", "/v1/kv/edit/b", as_other, "changed"), "edit/b");
  ExpectError(Call("PUT", "/v1/kv/edit/new", as_other, "made"), 403, "write-only create");
  const HttpAnswer kept = Call("GET", "/v1/kv/drop/a", KeyHeader(owner.api_key));
  EXPECT_EQ(kept.body, "first");
  const HttpAnswer changed = Call("GET", "/v1/kv/edit/b", KeyHeader(owner.api_key));
  EXPECT_EQ(changed.body, "changed");
}

TEST_F(RestAuthTest, ScopeIsCheckedBeforeTheRequestIsParsed) {
  Account owner = NewAccount("owner");
  const HttpAnswer read_key = CreateKey(owner.access_token, json::array({"read"}), "reader");
  ASSERT_EQ(read_key.status, 201);
  const HttpHeaders reader = KeyHeader(read_key.Json().value("key", ""));
  const HttpHeaders writer = KeyHeader(owner.api_key);
  const std::string deep = absl::StrCat(R"({"value":)", NestedArrays(1000), "}");
  // Bad input a writer is told about (400) is not even looked at for a key
  // that may not write (403).
  const std::vector<std::tuple<std::string, std::string, std::string>> writes = {
      {"PUT", "/put/scoped", "not json"},
      {"PUT", "/put/scoped", deep},
      {"POST", "/put/scoped", deep},
      {"PUT", "/kv/scoped/doc", "not json"},
      {"PUT", "/kv/scoped/doc", NestedArrays(1000)},
      {"POST", "/v0/kv", "not json"},
      {"PUT", "/v1/kv/scoped?ttl=abc", "x"},
      {"PUT", "/kv?key=scoped&ttl=abc", "x"},
  };
  for (const auto& [method, target, body] : writes) {
    const std::string context = absl::StrCat(method, " ", target, " ", body.substr(0, 12));
    ExpectError(Call(method, target, reader, body), 403, "reader " + context);
    ExpectError(Call(method, target, writer, body), 400, "writer " + context);
  }
  // Account bodies have the same depth limit; credentials come first there too.
  const HttpAnswer signup = Call("POST", "/signup", {}, deep);
  ExpectError(signup, 400, "deep /signup");
  EXPECT_TRUE(absl::StrContains(signup.body, "limit of 64 levels")) << signup.body;
  ExpectError(Call("POST", "/apikeys", Bearer(owner.access_token), deep), 400, "deep /apikeys");
  ExpectError(Call("POST", "/apikeys", {}, deep), 401, "deep /apikeys without a token");
  ExpectServing();
}

// Raw binary-protocol helpers for the tenancy test.
std::string HelloFrame(uint64_t id, absl::string_view token) {
  flatbuffers::FlatBufferBuilder b;
  auto auth = token.empty() ? flatbuffers::Offset<flatbuffers::String>()
                            : b.CreateString(token.data(), token.size());
  auto name = b.CreateString("rest_test");
  return FinishRequest(b, id, p::Operation::Hello,
                       p::CreateHello(b, p::kProtocolVersion, auth, name).Union());
}

p::StatusCode CallFrame(RawConnection& connection, const std::string& frame,
                        std::string* value = nullptr) {
  if (!connection.SendBytes(frame).ok()) return p::StatusCode::Internal;
  absl::StatusOr<std::string> answer = connection.ReadFrame();
  if (!answer.ok()) {
    ADD_FAILURE() << answer.status();
    return p::StatusCode::Internal;
  }
  const p::Response* response = AsResponse(*answer);
  if (response == nullptr) return p::StatusCode::Internal;
  if (value != nullptr && response->status() == p::StatusCode::Ok &&
      response->result_type() == p::Result::ValueResult) {
    *value = std::string(p::View(response->result_as_ValueResult()->value()));
  }
  return response->status();
}

TEST_F(RestAuthTest, TenantsNeverSeeEachOthersKeys) {
  Account a = NewAccount("a");
  Account b = NewAccount("b");
  const HttpHeaders as_a = KeyHeader(a.api_key);
  const HttpHeaders as_b = KeyHeader(b.api_key);

  {  // Seed 000.
    ASSERT_EQ(Call("PUT", "/v1/kv/shared", as_a, "a-value").status, 200);
    ExpectError(Call("GET", "/v1/kv/shared", as_b), 404, "B reads A's key");
    ExpectError(Call("GET", "/store/shared", as_b), 404, "B reads A's local copy");
    ASSERT_EQ(Call("PUT", "/v1/kv/shared", as_b, "b-value").status, 200);
    EXPECT_EQ(Call("GET", "/v1/kv/shared", as_a).body, "a-value");
    EXPECT_EQ(Call("GET", "/store/shared", as_a).body, "a-value");
    EXPECT_EQ(Call("GET", "/v1/kv/shared", as_b).body, "b-value");
    ASSERT_EQ(Call("DELETE", "/v1/kv/shared", as_b).status, 200);
    EXPECT_EQ(Call("GET", "/v1/kv/shared", as_a).body, "a-value");
    ExpectError(Call("GET", "/v1/kv/shared", as_b), 404, "B after its delete");
  }
  {  // Seed 001.
    ASSERT_EQ(Call("PUT", "/kv?key=shared-q", as_a, "a-q").status, 200);
    ExpectError(Call("GET", "/kv?key=shared-q", as_b), 404, "seed 001");
    ASSERT_EQ(Call("PUT", "/kv?key=shared-q", as_b, "b-q").status, 200);
    EXPECT_EQ(Call("GET", "/kv?key=shared-q", as_a).body, "a-q");
    ASSERT_EQ(Call("DELETE", "/kv?key=shared-q", as_b).status, 200);
    EXPECT_EQ(Call("GET", "/kv?key=shared-q", as_a).body, "a-q");
  }
  {  // Seed 002.
    const std::string key64 = Base64Encode("shared-b64");
    ASSERT_EQ(Call("POST", "/v0/kv", as_a,
                   json({{"key", key64}, {"value", Base64Encode("a-b64")}}).dump())
                  .status,
              200);
    ExpectError(Call("GET", "/v0/kv/key/" + key64, as_b), 404, "seed 002");
    ASSERT_EQ(Call("POST", "/v0/kv", as_b,
                   json({{"key", key64}, {"value", Base64Encode("b-b64")}}).dump())
                  .status,
              200);
    EXPECT_EQ(Call("GET", "/v0/kv/key/" + key64, as_a).Json().value("value", ""),
              Base64Encode("a-b64"));
    EXPECT_EQ(Call("GET", "/v0/kv/key/" + key64, as_b).Json().value("value", ""),
              Base64Encode("b-b64"));
  }
  {  // Seed 003: versions count per tenant.
    EXPECT_EQ(Call("PUT", "/put/shared-v", as_a, R"({"value":"a1"})").Json().value("version", 0),
              1);
    EXPECT_EQ(Call("PUT", "/put/shared-v", as_a, R"({"value":"a2"})").Json().value("version", 0),
              2);
    ExpectError(Call("GET", "/get/shared-v", as_b), 404, "seed 003");
    ExpectError(Call("GET", "/get/shared-v?version=1", as_b), 404, "seed 003 version");
    EXPECT_EQ(Call("PUT", "/put/shared-v", as_b, R"({"value":"b1"})").Json().value("version", 0),
              1);
    const json a_latest = Call("GET", "/get/shared-v", as_a).Json();
    EXPECT_EQ(a_latest.value("value", ""), "a2");
    EXPECT_EQ(a_latest.value("version", 0), 2);
  }
  {  // Seed 004.
    ASSERT_EQ(Call("PUT", "/kv/shared/doc", as_a, R"({"owner":"a"})").status, 200);
    ExpectError(Call("GET", "/kv/shared/doc", as_b), 404, "seed 004");
    ASSERT_EQ(Call("PUT", "/kv/shared/doc", as_b, R"({"owner":"b"})").status, 200);
    EXPECT_EQ(Call("DELETE", "/kv/shared/doc", as_b).status, 204);
    EXPECT_EQ(Call("GET", "/kv/shared/doc", as_a).body, R"({"owner":"a"})");
    ExpectError(Call("GET", "/kv/shared/doc", as_b), 404, "seed 004 after delete");
  }
  {  // The binary protocol: Hello's auth_token picks the namespace.
    absl::StatusOr<RawConnection> anonymous = RawConnection::Connect(server()->port());
    ASSERT_TRUE(anonymous.ok()) << anonymous.status();
    EXPECT_EQ(CallFrame(*anonymous, GetFrame(1, "shared")), p::StatusCode::Unauthenticated);
    EXPECT_EQ(CallFrame(*anonymous, PutFrame(2, "shared", "anonymous")),
              p::StatusCode::Unauthenticated);
    EXPECT_EQ(CallFrame(*anonymous, HelloFrame(3, "ydht_bogus")), p::StatusCode::Unauthenticated);
    EXPECT_EQ(CallFrame(*anonymous, GetFrame(4, "shared")), p::StatusCode::Unauthenticated);

    absl::StatusOr<RawConnection> as_a_binary = RawConnection::Connect(server()->port());
    ASSERT_TRUE(as_a_binary.ok()) << as_a_binary.status();
    ASSERT_EQ(CallFrame(*as_a_binary, HelloFrame(1, a.api_key)), p::StatusCode::Ok);
    std::string value;
    ASSERT_EQ(CallFrame(*as_a_binary, GetFrame(2, "shared"), &value), p::StatusCode::Ok);
    EXPECT_EQ(value, "a-value");
    ASSERT_EQ(CallFrame(*as_a_binary, PutFrame(3, "from-binary", "a-bin")), p::StatusCode::Ok);
    EXPECT_EQ(Call("GET", "/v1/kv/from-binary", as_a).body, "a-bin");
    ExpectError(Call("GET", "/v1/kv/from-binary", as_b), 404, "binary write seen by B");

    absl::StatusOr<RawConnection> as_b_binary = RawConnection::Connect(server()->port());
    ASSERT_TRUE(as_b_binary.ok()) << as_b_binary.status();
    ASSERT_EQ(CallFrame(*as_b_binary, HelloFrame(1, b.api_key)), p::StatusCode::Ok);
    EXPECT_EQ(CallFrame(*as_b_binary, GetFrame(2, "shared")), p::StatusCode::NotFound);
    EXPECT_EQ(CallFrame(*as_b_binary, GetFrame(3, "from-binary")), p::StatusCode::NotFound);
    // Nothing in the reserved namespaces is reachable either.
    EXPECT_EQ(CallFrame(*as_b_binary, GetFrame(4, std::string("\0auth/secret", 12))),
              p::StatusCode::InvalidArgument);
  }
}

// Limits count the key the client sent, not the tenant prefix the server
// puts before it, and say so in the client's figures.
TEST_F(RestAuthTest, KeyLimitCountsTheClientsKey) {
  Account a = NewAccount("a");
  const std::string longest(4096, 'k');
  ExpectWriteAnswer(Call("PUT", "/v1/kv/" + longest, KeyHeader(a.api_key), "v"), longest);
  EXPECT_EQ(Call("GET", "/v1/kv/" + longest, KeyHeader(a.api_key)).body, "v");
  const HttpAnswer too_long = Call("PUT", "/v1/kv/" + longest + "k", KeyHeader(a.api_key), "v");
  ExpectError(too_long, 413);
  EXPECT_TRUE(absl::StrContains(too_long.body, "4097")) << too_long.body;
  EXPECT_TRUE(absl::StrContains(too_long.body, "4096")) << too_long.body;
  EXPECT_FALSE(absl::StrContains(too_long.body, "4107")) << too_long.body;
  // The binary protocol too.
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_EQ(CallFrame(*connection, HelloFrame(1, a.api_key)), p::StatusCode::Ok);
  EXPECT_EQ(CallFrame(*connection, PutFrame(2, longest, "binary")), p::StatusCode::Ok);
  EXPECT_EQ(CallFrame(*connection, PutFrame(3, longest + "k", "binary")),
            p::StatusCode::InvalidArgument);
}

// A Hello whose key fails ends what an earlier Hello proved.
TEST_F(RestAuthTest, FailedHelloDropsAnEarlierLogin) {
  Account a = NewAccount("a");
  ASSERT_EQ(Call("PUT", "/v1/kv/mine", KeyHeader(a.api_key), "a").status, 200);
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_EQ(CallFrame(*connection, HelloFrame(1, a.api_key)), p::StatusCode::Ok);
  std::string value;
  ASSERT_EQ(CallFrame(*connection, GetFrame(2, "mine"), &value), p::StatusCode::Ok);
  EXPECT_EQ(value, "a");
  EXPECT_EQ(CallFrame(*connection, HelloFrame(3, "ydht_" + std::string(40, 'x'))),
            p::StatusCode::Unauthenticated);
  EXPECT_EQ(CallFrame(*connection, GetFrame(4, "mine")), p::StatusCode::Unauthenticated);
  EXPECT_EQ(CallFrame(*connection, PutFrame(5, "mine", "x")), p::StatusCode::Unauthenticated);
  // A good key again works again.
  ASSERT_EQ(CallFrame(*connection, HelloFrame(6, a.api_key)), p::StatusCode::Ok);
  ASSERT_EQ(CallFrame(*connection, GetFrame(7, "mine"), &value), p::StatusCode::Ok);
  EXPECT_EQ(value, "a");
}

// ==== Membership routes with auth on =================================================

// Changing the membership needs the administrator's key (the first account)
// with the write scope, or the cluster secret; everyone else is refused
// before anything changes.
class RestMembershipAuthTest : public RestAccountsBase {
 protected:
  static constexpr absl::string_view kSecret = "membership-secret-for-the-test";
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {
    process_ = StartLogkvd(dir_.path() + "/data", {"--auth=on", "--rate-limit=0",
                                                   absl::StrCat("--cluster-secret=", kSecret)});
    ASSERT_NE(process_, nullptr);
  }
  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

TEST_F(RestMembershipAuthTest, OnlyTheAdministratorOrTheSecretMayChangeTheMembership) {
  Account admin = NewAccount("admin");
  ASSERT_EQ(admin.id, 1u) << "the administrator is the first account";
  Account bob = NewAccount("bob");
  const HttpAnswer read_only = CreateKey(admin.access_token, json::array({"read"}));
  ASSERT_EQ(read_only.status, 201) << read_only.body;
  const std::string admin_read_only_key = read_only.Json().value("key", "");
  struct Caller {
    const char* who;
    HttpHeaders headers;
    int status;
  };
  const std::vector<Caller> refused = {
      {"nobody", {}, 401},
      {"another user's key", KeyHeader(bob.api_key), 403},
      {"the administrator's read-only key", KeyHeader(admin_read_only_key), 403},
      {"the administrator's session token",
       {{"Authorization", absl::StrCat("Bearer ", admin.access_token)}}, 401},
      {"a wrong secret", {{"X-Cluster-Secret", "not-the-secret"}}, 403},
      {"a revoked key", KeyHeader("ydht_" + std::string(40, 'x')), 401},
  };
  for (const char* route : {"/members/leave", "/join", "/members/join", "/members/remove"}) {
    for (const Caller& caller : refused) {
      SCOPED_TRACE(absl::StrCat(route, " by ", caller.who));
      const HttpAnswer answer = Call("POST", route, caller.headers, "{}");
      ExpectError(answer, caller.status);
    }
  }
  // The administrator and the secret get through to the route itself, which
  // refuses to leave a cluster of one (409) and keeps every tenant's keys.
  ASSERT_EQ(Call("PUT", "/v1/kv/kept", KeyHeader(bob.api_key), "v").status, 200);
  ExpectError(Call("POST", "/members/leave", KeyHeader(admin.api_key), ""), 409);
  ExpectError(Call("POST", "/members/leave", {{"X-Cluster-Secret", std::string(kSecret)}}, ""),
              409);
  EXPECT_EQ(Call("GET", "/v1/kv/kept", KeyHeader(bob.api_key)).body, "v");
}

// ==== Statistics with auth on =====================================================
class RestStatsAuthTest : public RestAccountsBase {
 protected:
  static constexpr absl::string_view kOperatorSecret = "operator-secret-for-the-stats-test";
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {
    process_ = StartLogkvd(dir_.path() + "/data",
                           {"--auth=on", "--rate-limit=0",
                            absl::StrCat("--cluster-secret=", kOperatorSecret)});
    ASSERT_NE(process_, nullptr);
  }
  HttpHeaders Operator() {
    return {{"Authorization", absl::StrCat("Bearer ", kOperatorSecret)}};
  }

  // Stats over the binary protocol on connection: its keys, or -1.
  static int64_t BinaryStatsKeys(RawConnection& connection, uint64_t id,
                                 p::StatusCode* status = nullptr) {
    flatbuffers::FlatBufferBuilder b;
    const std::string frame =
        FinishRequest(b, id, p::Operation::Stats, p::CreateStats(b).Union());
    if (!connection.SendBytes(frame).ok()) return -1;
    absl::StatusOr<std::string> answer = connection.ReadFrame();
    if (!answer.ok()) return -1;
    const p::Response* response = AsResponse(*answer);
    if (status != nullptr) *status = response->status();
    if (response->status() != p::StatusCode::Ok) return -1;
    return static_cast<int64_t>(response->result_as_StatsResult()->keys());
  }

  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

TEST_F(RestStatsAuthTest, StatisticsNeedCredentialsAndShowEachCallerItsOwn) {
  Account a = NewAccount("a");
  Account b = NewAccount("b");
  for (int v = 1; v <= 2; ++v) {
    ASSERT_EQ(Call("PUT", "/put/a1", KeyHeader(a.api_key), json({{"value", v}}).dump()).status,
              200);
  }
  ASSERT_EQ(Call("PUT", "/v1/kv/a2", KeyHeader(a.api_key), "x").status, 200);
  ASSERT_EQ(Call("PUT", "/v1/kv/b1", KeyHeader(b.api_key), "y").status, 200);

  // Without credentials, or with bad ones: 401. /health stays public.
  for (const char* target :
       {"/metrics", "/metrics?format=prometheus", "/db/stats", "/cache/stats"}) {
    ExpectError(Call("GET", target), 401, std::string(target) + " without credentials");
    ExpectError(Call("GET", target, {{"Authorization", "Bearer wrong"}}), 401,
                std::string(target) + " with a wrong secret");
    ExpectError(Call("GET", target, KeyHeader("ydht_" + std::string(40, 'x'))), 401,
                std::string(target) + " with a bad key");
  }
  EXPECT_EQ(Call("GET", "/health").status, 200);

  // The operator sees the node: the tenants' keys, not the accounts' records.
  const json node = Call("GET", "/db/stats", Operator()).Json();
  EXPECT_EQ(node.value("total_keys", -1), 3) << node;
  EXPECT_EQ(node.value("total_versions", -1), 4) << node;
  EXPECT_EQ(Call("GET", "/cache/stats", Operator()).Json().value("size", -1), 3);
  const HttpAnswer metrics = Call("GET", "/metrics", Operator());
  EXPECT_EQ(metrics.status, 200) << metrics.body;
  EXPECT_EQ(metrics.Json().value("key_count", -1), 3) << metrics.body;
  const HttpAnswer prometheus = Call("GET", "/metrics?format=prometheus", Operator());
  EXPECT_EQ(prometheus.status, 200);
  EXPECT_TRUE(absl::StrContains(prometheus.body, "\nlogkv_keys 3\n")) << prometheus.body;

  // A tenant sees its own figures only; node-wide metrics are not its.
  const json own_a = Call("GET", "/db/stats", KeyHeader(a.api_key)).Json();
  EXPECT_EQ(own_a.value("total_keys", -1), 2) << own_a;
  EXPECT_EQ(own_a.value("total_versions", -1), 3) << own_a;
  EXPECT_GT(own_a.value("file_size", 0), 0) << own_a;
  const json own_b = Call("GET", "/db/stats", KeyHeader(b.api_key)).Json();
  EXPECT_EQ(own_b.value("total_keys", -1), 1) << own_b;
  EXPECT_EQ(own_b.value("total_versions", -1), 1) << own_b;
  EXPECT_EQ(Call("GET", "/cache/stats", KeyHeader(b.api_key)).Json().value("size", -1), 1);
  ExpectError(Call("GET", "/metrics", KeyHeader(a.api_key)), 403, "/metrics with a tenant's key");

  // The binary protocol's Stats: Unauthenticated before Hello, then the tenant's own.
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  p::StatusCode status = p::StatusCode::Ok;
  EXPECT_EQ(BinaryStatsKeys(*connection, 1, &status), -1);
  EXPECT_EQ(status, p::StatusCode::Unauthenticated);
  ASSERT_EQ(CallFrame(*connection, HelloFrame(2, b.api_key)), p::StatusCode::Ok);
  EXPECT_EQ(BinaryStatsKeys(*connection, 3), 1);
}

// A key revoked over HTTP ends the binary sessions opened with it before: an
// open watch ends with Unauthenticated without waiting for a request, and
// every such connection closes.
// With auth on, a body over 64 KiB is read only for a valid API key, checked
// from the headers: a caller without one is refused before it sends the
// body (no 100 Continue), so nobody unknown holds the server's memory.
TEST_F(RestAuthTest, LargeBodiesNeedAValidKeyBeforeTheyAreRead) {
  Account a = NewAccount("a");
  const std::string head_only = "PUT /v1/kv/large HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20000000\r\n";
  for (const std::string& credentials :
       {std::string(""), std::string("X-API-Key: ydht_not-a-key\r\n")}) {
    for (const char* expect : {"", "Expect: 100-continue\r\n"}) {
      SCOPED_TRACE(credentials + expect);
      absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(server()->http_port());
      ASSERT_TRUE(connection.ok()) << connection.status();
      ASSERT_TRUE(connection->Send(absl::StrCat(head_only, credentials, expect, "\r\nabc")).ok());
      absl::StatusOr<HttpAnswer> answer = connection->Read();
      ASSERT_TRUE(answer.ok()) << answer.status();
      ExpectError(*answer, 401);
      EXPECT_TRUE(connection->WaitClosed());
    }
  }
  // With the key, the same body is read and stored.
  const std::string body(200'000, 'b');
  EXPECT_EQ(Call("PUT", "/v1/kv/large", KeyHeader(a.api_key), body).status, 200);
  EXPECT_EQ(Call("GET", "/v1/kv/large", KeyHeader(a.api_key)).body.size(), body.size());
}

TEST_F(RestAuthTest, RevokingAKeyEndsItsBinarySessions) {
  Account a = NewAccount("a");
  Account b = NewAccount("b");
  auto open_session = [&](const std::string& key) {
    absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
    EXPECT_TRUE(connection.ok()) << connection.status();
    EXPECT_EQ(CallFrame(*connection, HelloFrame(1, key)), p::StatusCode::Ok);
    return std::move(*connection);
  };
  RawConnection client = open_session(a.api_key);
  RawConnection watcher = open_session(a.api_key);
  RawConnection other_user = open_session(b.api_key);
  // Once authenticated, frames may be as large as values allow.
  EXPECT_EQ(CallFrame(client, PutFrame(2, "big", std::string(200'000, 'v'))), p::StatusCode::Ok);
  std::string value;
  EXPECT_EQ(CallFrame(client, GetFrame(3, "big"), &value), p::StatusCode::Ok);
  EXPECT_EQ(value.size(), 200'000u);
  flatbuffers::FlatBufferBuilder b_watch;
  const std::string watch = FinishRequest(b_watch, 7, p::Operation::Watch,
                                          p::CreateWatch(b_watch, Bytes(b_watch, "w/")).Union());
  ASSERT_EQ(CallFrame(watcher, watch), p::StatusCode::Ok);

  ASSERT_EQ(Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id), Bearer(a.access_token)).status,
            200);
  // The watch ends with the reason, and the connection closes.
  absl::StatusOr<std::string> ended = watcher.ReadFrame();
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(AsResponse(*ended)->request_id(), 7u);
  EXPECT_EQ(AsResponse(*ended)->status(), p::StatusCode::Unauthenticated);
  EXPECT_EQ(p::View(AsResponse(*ended)->message()), "API key revoked");
  EXPECT_TRUE(watcher.WaitClosed(absl::Seconds(10)));
  // The other connection is told too (request id 0: no request of its own
  // was refused), and closes.
  absl::StatusOr<std::string> refused = client.ReadFrame();
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(AsResponse(*refused)->request_id(), 0u);
  EXPECT_EQ(AsResponse(*refused)->status(), p::StatusCode::Unauthenticated);
  EXPECT_TRUE(client.WaitClosed(absl::Seconds(10)));
  // A new Hello with the key is refused; another user's session goes on.
  absl::StatusOr<RawConnection> again = RawConnection::Connect(server()->port());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(CallFrame(*again, HelloFrame(1, a.api_key)), p::StatusCode::Unauthenticated);
  EXPECT_EQ(CallFrame(other_user, GetFrame(2, "big")), p::StatusCode::NotFound);
}

// A user's watches over all connections are limited (--max-watches-per-user);
// closing a connection gives its watches back.
TEST_F(RestAuthTest, WatchesPerUserAreLimited) {
  Account a = NewAccount("a");
  Account b = NewAccount("b");
  auto open_session = [&](const std::string& key) {
    absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
    EXPECT_TRUE(connection.ok()) << connection.status();
    EXPECT_EQ(CallFrame(*connection, HelloFrame(1, key)), p::StatusCode::Ok);
    return std::move(*connection);
  };
  auto watch = [](uint64_t id) {
    flatbuffers::FlatBufferBuilder b;
    return FinishRequest(b, id, p::Operation::Watch, p::CreateWatch(b, Bytes(b, "w/")).Union());
  };
  RawConnection first = open_session(a.api_key);
  RawConnection second = open_session(a.api_key);
  for (uint64_t id = 10; id < 13; ++id) EXPECT_EQ(CallFrame(first, watch(id)), p::StatusCode::Ok);
  EXPECT_EQ(CallFrame(second, watch(20)), p::StatusCode::Ok);
  EXPECT_EQ(CallFrame(second, watch(21)), p::StatusCode::ResourceExhausted);
  // Another user has a count of their own.
  RawConnection other = open_session(b.api_key);
  for (uint64_t id = 10; id < 14; ++id) EXPECT_EQ(CallFrame(other, watch(id)), p::StatusCode::Ok);

  first.Close();
  // Once the server has seen the close, its three watches are free again.
  int opened = 0;
  uint64_t id = 30;
  const absl::Time deadline = absl::Now() + kPollLimit;
  while (opened < 3 && absl::Now() < deadline) {
    if (CallFrame(second, watch(id)) == p::StatusCode::Ok) {
      ++opened;
      ++id;
    } else {
      absl::SleepFor(kPollInterval);
    }
  }
  EXPECT_EQ(opened, 3);
  EXPECT_EQ(CallFrame(second, watch(id)), p::StatusCode::ResourceExhausted);
}

// Watching streams the values of the keys it matches: a binary session whose
// key may not read is refused (PermissionDenied, the Service's verdict), and
// the connection goes on; a key that may read watches.
TEST_F(RestAuthTest, AKeyThatMayNotReadMayNotWatch) {
  Account owner = NewAccount("watch-scope");
  const HttpAnswer write_key = CreateKey(owner.access_token, json::array({"write"}), "writer");
  ASSERT_EQ(write_key.status, 201);
  auto open_session = [&](const std::string& key) {
    absl::StatusOr<RawConnection> connection = RawConnection::Connect(server()->port());
    EXPECT_TRUE(connection.ok()) << connection.status();
    EXPECT_EQ(CallFrame(*connection, HelloFrame(1, key)), p::StatusCode::Ok);
    return std::move(*connection);
  };
  flatbuffers::FlatBufferBuilder b;
  const std::string watch =
      FinishRequest(b, 5, p::Operation::Watch, p::CreateWatch(b, Bytes(b, "w/")).Union());

  RawConnection writer = open_session(write_key.Json().value("key", ""));
  ASSERT_TRUE(writer.SendBytes(watch).ok());
  absl::StatusOr<std::string> refused = writer.ReadFrame();
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(AsResponse(*refused)->request_id(), 5u);
  EXPECT_EQ(AsResponse(*refused)->status(), p::StatusCode::PermissionDenied);
  EXPECT_EQ(p::View(AsResponse(*refused)->message()), "this API key may not read (missing scope)");
  EXPECT_EQ(CallFrame(writer, PutFrame(6, "w/k", "v")), p::StatusCode::Ok);

  RawConnection reader = open_session(owner.api_key);
  EXPECT_EQ(CallFrame(reader, watch), p::StatusCode::Ok);
}

// A Hello with another API key ends the watches opened under the earlier
// one (they show its namespace, and its revocation would no longer be
// checked); a Hello with the same key keeps them.
TEST_F(RestAuthTest, AHelloWithAnotherKeyEndsTheEarlierKeysWatches) {
  Account a = NewAccount("hello-a");
  Account b = NewAccount("hello-b");
  flatbuffers::FlatBufferBuilder builder;
  const std::string watch = FinishRequest(builder, 5, p::Operation::Watch,
                                          p::CreateWatch(builder, Bytes(builder, "w/")).Union());

  absl::StatusOr<RawConnection> switched = RawConnection::Connect(server()->port());
  ASSERT_TRUE(switched.ok()) << switched.status();
  ASSERT_EQ(CallFrame(*switched, HelloFrame(1, a.api_key)), p::StatusCode::Ok);
  ASSERT_EQ(CallFrame(*switched, watch), p::StatusCode::Ok);
  ASSERT_TRUE(switched->SendBytes(HelloFrame(6, b.api_key)).ok());
  absl::StatusOr<std::string> ended = switched->ReadFrame();
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(AsResponse(*ended)->request_id(), 5u);
  EXPECT_EQ(AsResponse(*ended)->status(), p::StatusCode::Unauthenticated);
  EXPECT_EQ(p::View(AsResponse(*ended)->message()),
            "watch ended: a later Hello changed the connection's API key");
  absl::StatusOr<std::string> hello = switched->ReadFrame();
  ASSERT_TRUE(hello.ok()) << hello.status();
  EXPECT_EQ(AsResponse(*hello)->request_id(), 6u);
  EXPECT_EQ(AsResponse(*hello)->status(), p::StatusCode::Ok);

  absl::StatusOr<RawConnection> same = RawConnection::Connect(server()->port());
  ASSERT_TRUE(same.ok()) << same.status();
  ASSERT_EQ(CallFrame(*same, HelloFrame(1, a.api_key)), p::StatusCode::Ok);
  ASSERT_EQ(CallFrame(*same, watch), p::StatusCode::Ok);
  ASSERT_EQ(CallFrame(*same, HelloFrame(6, a.api_key)), p::StatusCode::Ok);
  ASSERT_EQ(Call("PUT", "/v1/kv/w/still", KeyHeader(a.api_key), "v").status, 200);
  absl::StatusOr<std::string> event = same->ReadFrame();
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(AsResponse(*event)->request_id(), 5u);
  EXPECT_EQ(AsResponse(*event)->result_type(), p::Result::WatchEvents);
}

// Wrong passwords for one account are held back after a few (429 with
// Retry-After), and every refused credential is counted.
TEST_F(RestAuthTest, FailedLoginsAreThrottledAndCounted) {
  Account a = NewAccount("a");
  auto failures = [&] {
    const HttpAnswer metrics = Call("GET", "/metrics?format=prometheus", Operator());
    std::smatch match;
    static const std::regex kLine(R"((^|\n)logkv_auth_failures_total (\S+))");
    double value = -1;
    if (std::regex_search(metrics.body, match, kLine)) {
      (void)absl::SimpleAtod(match[2].str(), &value);
    }
    return static_cast<int64_t>(value);
  };
  const int64_t before = failures();
  ASSERT_GE(before, 0);
  HttpAnswer answer;
  int wrong = 0;
  // Five are free; doubling delays make the refusal come within a few more.
  for (; wrong < 20 && answer.status != 429; ++wrong) answer = Login(a.email, "wrongpassword");
  ExpectError(answer, 429);
  int seconds = 0;
  ASSERT_TRUE(absl::SimpleAtoi(answer.Header("retry-after").value_or(""), &seconds));
  EXPECT_GE(seconds, 1);
  EXPECT_GE(wrong, 6);
  // Held back means held back: the right password is refused too, for now.
  EXPECT_EQ(Login(a.email, a.password).status, 429);
  // And so is every other spelling under which login finds the account (one
  // counter each would give an attacker as many guesses as spellings): a
  // fullwidth first letter, an ignorable soft hyphen (U+00AD) after it.
  const char first = a.email[0];
  ASSERT_TRUE(absl::ascii_isalpha(first)) << a.email;
  const std::string fullwidth =
      absl::ascii_isupper(first)
          ? absl::StrCat("\xEF\xBC", std::string(1, static_cast<char>(0xA1 + (first - 'A'))))
          : absl::StrCat("\xEF\xBD", std::string(1, static_cast<char>(0x81 + (first - 'a'))));
  ExpectError(Login(fullwidth + a.email.substr(1), "wrongpassword"), 429);
  ExpectError(Login(absl::StrCat(a.email.substr(0, 1), "\xC2\xAD", a.email.substr(1)),
                    "wrongpassword"),
              429);
  // Another account is not affected.
  Account b = NewAccount("b");
  EXPECT_EQ(Login(b.email, b.password).status, 200);

  // Every wrong password, bad key and bad token was counted.
  ExpectError(Call("GET", "/v1/kv/k", KeyHeader("ydht_" + std::string(40, 'B'))), 401);
  ExpectError(Call("GET", "/v1/kv/k"), 401);
  ExpectError(Call("GET", "/apikeys", Bearer("garbage")), 401);
  absl::StatusOr<RawConnection> binary = RawConnection::Connect(server()->port());
  ASSERT_TRUE(binary.ok());
  EXPECT_EQ(CallFrame(*binary, HelloFrame(1, "ydht_bogus")), p::StatusCode::Unauthenticated);
  EXPECT_GE(failures() - before, (wrong - 1) + 4);
}

// ==== Rate limiting ===================================================================

class RestRateLimitTest : public RestAccountsBase {
 protected:
  static void SetUpTestSuite() {
    shared_ = new SharedServer({"--auth=on", "--rate-limit=60", "--rate-limit-burst=3"});
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }
  static SharedServer* shared_;
};

SharedServer* RestRateLimitTest::shared_ = nullptr;

TEST_F(RestRateLimitTest, BurstThen429WithRetryAfter) {
  Account a = NewAccount("a");
  Account b = NewAccount("b");
  // The bucket starts full: the burst of 3 always passes.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Call("GET", "/v1/kv/limited", KeyHeader(a.api_key)).status, 404) << "request " << i;
  }
  // The 4th is refused unless a second went by meanwhile (60/minute refills
  // one a second): keep asking, bounded, until the refusal comes.
  HttpAnswer refused;
  for (int i = 0; i < 20 && refused.status != 429; ++i) {
    refused = Call("GET", "/v1/kv/limited", KeyHeader(a.api_key));
  }
  ExpectError(refused, 429);
  const std::string retry_after = refused.Header("retry-after").value_or("");
  int seconds = 0;
  ASSERT_TRUE(absl::SimpleAtoi(retry_after, &seconds)) << "Retry-After: '" << retry_after << "'";
  EXPECT_GE(seconds, 1);

  // Other users have buckets of their own.
  EXPECT_EQ(Call("GET", "/v1/kv/limited", KeyHeader(b.api_key)).status, 404);
  EXPECT_EQ(Call("PUT", "/v1/kv/limited", KeyHeader(b.api_key), "b").status, 200);
  // Node routes are not limited.
  EXPECT_EQ(Call("GET", "/health").status, 200);
  // And a's bucket refills (bounded wait).
  EXPECT_TRUE(PollUntilStatus("/v1/kv/limited", 404, KeyHeader(a.api_key)));
}

// Refreshing tokens and creating keys are commands of the control plane,
// held back by a bucket of their own (--account-rate-limit): data requests
// at their limit do not keep a user from refreshing, and revoking a key is
// never held back (whoever else holds the key cannot stop its revocation).
class RestAccountRateLimitTest : public RestAccountsBase {
 protected:
  static void SetUpTestSuite() {
    shared_ = new SharedServer({"--auth=on", "--rate-limit=60", "--rate-limit-burst=3",
                                "--account-rate-limit=60", "--account-rate-limit-burst=3"});
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }
  HttpAnswer Refresh(const std::string& token) {
    return Call("POST", "/refresh", {{"Content-Type", "application/json"}},
                json({{"refresh_token", token}}).dump());
  }
  static SharedServer* shared_;
};

SharedServer* RestAccountRateLimitTest::shared_ = nullptr;

TEST_F(RestAccountRateLimitTest, RefreshesAndKeyCreationsHaveABucketOfTheirOwn) {
  Account a = NewAccount("a");  // its key's creation took one of the 3
  // The data bucket drained (bounded: refills are one a second)...
  HttpAnswer data;
  for (int i = 0; i < 20 && data.status != 429; ++i) {
    data = Call("GET", "/v1/kv/limited", KeyHeader(a.api_key));
  }
  ASSERT_EQ(data.status, 429);
  // ...leaves refreshing alone.
  HttpAnswer refreshed = Refresh(a.refresh_token);
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  std::string refresh = refreshed.Json().value("refresh_token", "");
  // Its own bucket drains in turn.
  HttpAnswer refused;
  for (int i = 0; i < 20 && refused.status != 429; ++i) {
    refused = Refresh(refresh);
    if (refused.status == 200) refresh = refused.Json().value("refresh_token", "");
  }
  ExpectError(refused, 429);
  EXPECT_NE(refused.body.find("--account-rate-limit"), std::string::npos) << refused.body;
  int seconds = 0;
  ASSERT_TRUE(absl::SimpleAtoi(refused.Header("retry-after").value_or(""), &seconds));
  EXPECT_GE(seconds, 1);
  // The refused refresh token was not spent: it works once the bucket refills.
  bool again = false;
  const absl::Time deadline = absl::Now() + kPollLimit;
  while (!again && absl::Now() < deadline) {
    const HttpAnswer answer = Refresh(refresh);
    again = answer.status == 200;
    if (!again) {
      ASSERT_EQ(answer.status, 429) << answer.body;
      absl::SleepFor(kPollInterval);
    }
  }
  EXPECT_TRUE(again);
  // Creating keys takes from it too (bounded, as above).
  HttpAnswer create;
  for (int i = 0; i < 20 && create.status != 429; ++i) {
    create = CreateKey(a.access_token, json::array({"read"}));
    ASSERT_TRUE(create.status == 201 || create.status == 429) << create.body;
  }
  ExpectError(create, 429);
  // Revoking is never held back, with both buckets empty.
  EXPECT_EQ(Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id), Bearer(a.access_token)).status,
            200);
  ExpectError(Call("GET", "/v1/kv/limited", KeyHeader(a.api_key)), 401);
}

// Binary requests take tokens from the same per-user bucket: once HTTP has
// used the burst, binary requests are refused with ResourceExhausted and a
// retry hint, and the connection goes on.
TEST_F(RestRateLimitTest, BinaryRequestsShareTheUsersBucket) {
  Account a = NewAccount("a");
  absl::StatusOr<RawConnection> binary = RawConnection::Connect(server()->port());
  ASSERT_TRUE(binary.ok()) << binary.status();
  ASSERT_EQ(CallFrame(*binary, HelloFrame(1, a.api_key)), p::StatusCode::Ok);
  // Drain the bucket over HTTP (bounded: refills are one a second).
  HttpAnswer refused;
  for (int i = 0; i < 20 && refused.status != 429; ++i) {
    refused = Call("GET", "/v1/kv/limited", KeyHeader(a.api_key));
  }
  ASSERT_EQ(refused.status, 429);
  // Now binary requests are refused too, with a hint (bounded, as above).
  const p::Response* response = nullptr;
  std::string frame;
  for (uint64_t id = 2; id < 22; ++id) {
    ASSERT_TRUE(binary->SendBytes(GetFrame(id, "limited")).ok());
    absl::StatusOr<std::string> answer = binary->ReadFrame();
    ASSERT_TRUE(answer.ok()) << answer.status();
    frame = *answer;
    response = AsResponse(frame);
    if (response->status() == p::StatusCode::ResourceExhausted) break;
    EXPECT_EQ(response->status(), p::StatusCode::NotFound);
  }
  ASSERT_EQ(response->status(), p::StatusCode::ResourceExhausted);
  EXPECT_GT(response->retry_after_ms(), 0);
  EXPECT_NE(p::View(response->message()).find("rate limit"), absl::string_view::npos);
  // The connection goes on: Ping is not limited, and the bucket refills.
  flatbuffers::FlatBufferBuilder b;
  EXPECT_EQ(CallFrame(*binary, FinishRequest(b, 50, p::Operation::Ping, p::CreatePing(b).Union())),
            p::StatusCode::Ok);
  bool served = false;
  const absl::Time deadline = absl::Now() + kPollLimit;
  for (uint64_t id = 100; !served && absl::Now() < deadline; ++id) {
    served = CallFrame(*binary, GetFrame(id, "limited")) == p::StatusCode::NotFound;
    if (!served) absl::SleepFor(kPollInterval);
  }
  EXPECT_TRUE(served);
}

// ==== Sign-ups per client address ======================================================

// Each sign-up costs a password hash and a command of the control plane, and
// the accounts the cluster holds are bounded: one address gets the burst,
// then one a minute; refused before anything is hashed or proposed.
class RestSignUpLimitTest : public RestAccountsBase {
 protected:
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {
    process_ = StartLogkvd(dir_.path() + "/data", {"--auth=on", "--signup-rate-limit=1",
                                                   "--signup-rate-limit-burst=2"});
    ASSERT_NE(process_, nullptr);
  }
  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

TEST_F(RestSignUpLimitTest, AnAddressGetsItsBurstThenWaits) {
  for (int i = 0; i < 2; ++i) {
    const std::string name = absl::StrCat(TestName(), "-", i);
    const HttpAnswer signup = SignUp(name + "@example.com", name, "securepass123");
    ASSERT_EQ(signup.status, 201) << signup.body;
  }
  // The third within the minute (bounded: a token comes back a minute later).
  const std::string name = TestName() + "-refused";
  const HttpAnswer refused = SignUp(name + "@example.com", name, "securepass123");
  ExpectError(refused, 429);
  EXPECT_NE(refused.body.find("too many sign-ups from this address"), std::string::npos)
      << refused.body;
  int seconds = 0;
  ASSERT_TRUE(absl::SimpleAtoi(refused.Header("retry-after").value_or(""), &seconds));
  EXPECT_GE(seconds, 1);
  EXPECT_LE(seconds, 60);
  // Nothing was made: the name is free, and logging in with it fails.
  EXPECT_EQ(Login(name + "@example.com", "securepass123").status, 401);
  // A malformed request is answered as such, not counted as a sign-up.
  ExpectError(Call("POST", "/signup", {{"Content-Type", "application/json"}}, "{}"), 400);
}

// ==== Sessions ending ================================================================

// An administrator's reset of a user's keys, and a deactivation, end the
// user's sessions too: the access and refresh tokens issued before are
// refused (a stolen refresh token would otherwise mint new keys), and so
// they stay after a reactivation. Logging in again starts a new one.
class RestSessionsTest : public RestAccountsBase {
 protected:
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {
    process_ = StartLogkvd(dir_.path() + "/data",
                           {"--auth=on", "--rate-limit=0", "--account-rate-limit=0"});
    ASSERT_NE(process_, nullptr);
  }
  HttpAnswer Refresh(const std::string& token) {
    return Call("POST", "/refresh", {{"Content-Type", "application/json"}},
                json({{"refresh_token", token}}).dump());
  }
  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

TEST_F(RestSessionsTest, AResetOrADeactivationEndsTheUsersSessions) {
  Account admin = NewAccount("admin");
  ASSERT_EQ(admin.id, 1u) << "the administrator is the first account";
  Account user = NewAccount("user");
  const std::string user_path = absl::StrCat("/api/users/", user.id);
  auto ended = [](const HttpAnswer& answer) {
    EXPECT_EQ(answer.status, 401) << answer.body;
    EXPECT_NE(answer.body.find("session was ended"), std::string::npos) << answer.body;
  };
  // A refreshed pair works, as the first did.
  const HttpAnswer refreshed = Refresh(user.refresh_token);
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  const std::string access = refreshed.Json().value("access_token", "");
  const std::string refresh = refreshed.Json().value("refresh_token", "");
  ASSERT_EQ(Call("GET", "/apikeys", Bearer(access)).status, 200);

  const HttpAnswer reset = Call("PUT", user_path, KeyHeader(admin.api_key), R"({"reset_keys":true})");
  ASSERT_EQ(reset.status, 200) << reset.body;
  EXPECT_EQ(reset.Json().value("api_keys_revoked", 0), 1);
  ExpectError(Call("GET", "/v1/kv/k", KeyHeader(user.api_key)), 401);
  ended(Call("GET", "/apikeys", Bearer(access)));
  ExpectError(Call("POST", "/apikeys", Bearer(access),
                   json({{"name", "again"}, {"scopes", {"read"}}}).dump()),
              401);
  ended(Refresh(refresh));
  // The administrator's own session is untouched.
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(admin.access_token)).status, 200);

  // A new login is a new session.
  HttpAnswer login = Login(user.email, user.password);
  ASSERT_EQ(login.status, 200) << login.body;
  const std::string second = login.Json().value("access_token", "");
  const std::string second_refresh = login.Json().value("refresh_token", "");
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(second)).status, 200);

  // Disabled and enabled again: the tokens from before stay refused.
  ASSERT_EQ(Call("PUT", user_path, KeyHeader(admin.api_key), R"({"is_active":false})").status,
            200);
  ExpectError(Call("GET", "/apikeys", Bearer(second)), 401);
  ASSERT_EQ(Call("PUT", user_path, KeyHeader(admin.api_key), R"({"is_active":true})").status,
            200);
  ended(Call("GET", "/apikeys", Bearer(second)));
  ended(Refresh(second_refresh));
  login = Login(user.email, user.password);
  ASSERT_EQ(login.status, 200) << login.body;
  const std::string third = login.Json().value("access_token", "");
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(third)).status, 200);
  // And a restart after SIGKILL keeps what ended ended (the generation is in
  // the control plane's state).
  process_->Kill();
  ASSERT_TRUE(process_->Start().ok());
  ended(Call("GET", "/apikeys", Bearer(second)));
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(third)).status, 200);
}

// Creating and revoking keys in a loop leaves at most a bounded number of
// revoked keys listed, the newest; the active ones all stay.
TEST_F(RestSessionsTest, RevokedKeysAreKeptUpToALimitNewestFirst) {
  Account user = NewAccount("user");
  constexpr int kChurn = 120;
  uint64_t last_revoked = 0;
  for (int i = 0; i < kChurn; ++i) {
    const HttpAnswer created = CreateKey(user.access_token, json::array({"read"}));
    ASSERT_EQ(created.status, 201) << i << " " << created.body;
    last_revoked = created.Json().value("id", uint64_t{0});
    ASSERT_EQ(Call("DELETE", absl::StrCat("/apikeys/", last_revoked), Bearer(user.access_token))
                  .status,
              200);
  }
  const HttpAnswer listed = Call("GET", "/apikeys", Bearer(user.access_token));
  ASSERT_EQ(listed.status, 200) << listed.body;
  const json body = listed.Json();
  const json& keys = body["api_keys"];
  size_t revoked = 0;
  bool newest_listed = false;
  bool own_listed = false;
  for (const json& key : keys) {
    if (!key.value("is_active", true)) ++revoked;
    newest_listed |= key.value("id", uint64_t{0}) == last_revoked;
    own_listed |= key.value("id", uint64_t{0}) == user.api_key_id;
  }
  EXPECT_LE(revoked, 100u) << listed.body;
  EXPECT_GE(revoked, 90u) << listed.body;
  EXPECT_TRUE(newest_listed);
  EXPECT_TRUE(own_listed) << "an active key never goes";
  EXPECT_EQ(Call("GET", "/v1/kv/k", KeyHeader(user.api_key)).status, 404);
}

// ==== Session token expiry ============================================================

class RestJwtExpiryTest : public RestAccountsBase {
 protected:
  static void SetUpTestSuite() {
    shared_ = new SharedServer({"--auth=on", "--rate-limit=0", "--jwt-expiration=1s"});
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  LogkvdProcess* server() const override { return shared_->process.get(); }
  static SharedServer* shared_;
};

SharedServer* RestJwtExpiryTest::shared_ = nullptr;

TEST_F(RestJwtExpiryTest, ExpiredAccessTokensAre401) {
  const std::string email = TestName() + "@example.com";
  ASSERT_EQ(SignUp(email, TestName(), "securepass123").status, 201);
  const HttpAnswer login = Login(email, "securepass123");
  ASSERT_EQ(login.status, 200) << login.body;
  EXPECT_EQ(login.Json().value("expires_in", 0), 1);
  const std::string access = login.Json().value("access_token", "");
  const std::string refresh = login.Json().value("refresh_token", "");

  bool expired = false;
  const absl::Time deadline = absl::Now() + kPollLimit;
  while (!expired && absl::Now() < deadline) {
    const HttpAnswer list = Call("GET", "/apikeys", Bearer(access));
    if (list.status == 401) {
      ExpectError(list, 401);
      expired = true;
    } else {
      EXPECT_EQ(list.status, 200) << list.body;
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  EXPECT_TRUE(expired) << "the 1s access token was never refused";
  ExpectError(CreateKey(access, json::array({"read"})), 401, "create a key with an expired token");

  // The refresh token outlives it and gives a fresh access token.
  const HttpAnswer refreshed =
      Call("POST", "/refresh", {}, json({{"refresh_token", refresh}}).dump());
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  EXPECT_EQ(refreshed.Json().value("expires_in", 0), 1);
}

// ==== --read-only with accounts =========================================================

class RestReadOnlyAuthTest : public RestAccountsBase {
 protected:
  LogkvdProcess* server() const override { return process_.get(); }
  void SetUp() override {}

  ScopedTempDir dir_;
  std::unique_ptr<LogkvdProcess> process_;
};

TEST_F(RestReadOnlyAuthTest, AccountWritesAre403) {
  const std::string data = dir_.path() + "/data";
  process_ = StartLogkvd(data, {"--auth=on", "--rate-limit=0"});
  ASSERT_NE(process_, nullptr);
  Account a = NewAccount("a");
  ASSERT_EQ(Call("PUT", "/v1/kv/k", KeyHeader(a.api_key), "v").status, 200);
  ASSERT_EQ(process_->Stop(), 0);

  process_ = StartLogkvd(data, {"--auth=on", "--rate-limit=0", "--read-only"});
  ASSERT_NE(process_, nullptr);
  // Accounts, keys and data survived the restart; reads work.
  EXPECT_EQ(Call("GET", "/v1/kv/k", KeyHeader(a.api_key)).body, "v");
  const HttpAnswer login = Login(a.email, a.password);
  ASSERT_EQ(login.status, 200) << login.body;
  const std::string access = login.Json().value("access_token", "");
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(access)).status, 200);

  ExpectError(Call("PUT", "/v1/kv/k", KeyHeader(a.api_key), "x"), 403, "data write");
  ExpectError(SignUp("new-" + a.email, "new-" + a.username, "securepass123"), 403, "signup");
  ExpectError(CreateKey(access, json::array({"read"})), 403, "create key");
  ExpectError(Call("DELETE", absl::StrCat("/apikeys/", a.api_key_id), Bearer(access)), 403,
              "revoke key");
  ExpectError(Call("POST", "/refresh", {}, json({{"refresh_token", a.refresh_token}}).dump()), 403,
              "refresh");
  // Nothing was revoked or created.
  EXPECT_EQ(Call("GET", "/v1/kv/k", KeyHeader(a.api_key)).status, 200);
  EXPECT_EQ(Call("GET", "/apikeys", Bearer(access)).Json().value("count", 0), 1);
}

}  // namespace
}  // namespace logkv::test
