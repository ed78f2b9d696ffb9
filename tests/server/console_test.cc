// The web console's server side, on whole nodes in the test's process: the
// API reference (/openapi.json) against the router, both ways, so neither
// can change without the other; the console's files and their headers
// (Content-Security-Policy, nosniff, ETag and 304); GET /v1/kv's pages of
// keys; GET /v1/watch's Server-Sent Events; the limit on open streams.
// Ports are chosen by the kernel; every wait is bounded.
#include <set>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/http/cluster_browse.h"
#include "server/http/data_routes.h"
#include "server/http/router.h"
#include "server/log.h"
#include "server/node.h"
#include "server/web/web_routes.h"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"

namespace logkv::server {
namespace {

using ::logkv::test::Fetch;
using ::logkv::test::HttpAnswer;
using ::logkv::test::HttpConnection;
using ::logkv::test::ScopedTempDir;

NodeOptions TestOptions(const std::string& data_dir) {
  NodeOptions options;
  options.data_dir = data_dir;
  options.listen = HostPort{"127.0.0.1", 0};
  options.http = {HostPort{"127.0.0.1", 0}};
  options.threads = 1;
  options.shards = 2;
  options.fsync = engine::FsyncPolicy::kNever;
  return options;
}

class ConsoleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogLevel(Level::kWarning); }

  ScopedTempDir dir_;
};

// The router's "{name...}" is OpenAPI's "{name}".
std::string OpenApiPath(const std::string& pattern) {
  return absl::StrReplaceAll(pattern, {{"...}", "}"}});
}

std::string Lower(const char* method) {
  std::string lower(method);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower;
}

void ExpectSpecMatchesRouter(const Node& node) {
  absl::StatusOr<HttpAnswer> answer = Fetch(node.http_ports().front(), "GET", "/openapi.json");
  ASSERT_TRUE(answer.ok()) << answer.status();
  ASSERT_EQ(answer->status, 200);
  EXPECT_EQ(answer->Header("content-type").value_or(""), "application/json");
  const nlohmann::json spec = answer->Json();
  ASSERT_TRUE(spec.is_object()) << answer->body.substr(0, 200);
  EXPECT_EQ(spec.value("openapi", ""), "3.1.0");

  std::set<std::pair<std::string, std::string>> routed;
  for (const auto& route : node.router()->routes()) {
    routed.emplace(Lower(http::MethodName(route->method)), OpenApiPath(route->pattern));
  }
  std::set<std::pair<std::string, std::string>> described;
  std::set<std::string> operation_ids;
  for (const auto& [path, item] : spec["paths"].items()) {
    for (const auto& [method, operation] : item.items()) {
      if (method == "parameters") continue;
      // Served only by a fault-injection build run with --fault-injection.
      const bool optional = operation.value("x-logkv-fault-injection", false);
      if (!optional || routed.contains({method, path})) described.emplace(method, path);
      EXPECT_TRUE(operation.contains("responses")) << method << " " << path;
      EXPECT_TRUE(operation_ids.insert(operation.value("operationId", "")).second)
          << "operationId of " << method << " " << path << " is not unique";
    }
  }
  for (const auto& [method, path] : routed) {
    EXPECT_TRUE(described.contains({method, path}))
        << method << " " << path << " is routed but not in server/web/openapi.mjs";
  }
  for (const auto& [method, path] : described) {
    EXPECT_TRUE(routed.contains({method, path}))
        << method << " " << path << " is in server/web/openapi.mjs but not routed";
  }
}

TEST_F(ConsoleTest, OpenApiDescribesEveryRouteAndNothingElse) {
#ifndef LOGKV_WEB_BUILT
  GTEST_SKIP() << "the console was not built (LOGKV_WEB=OFF)";
#endif
  {
    NodeOptions options = TestOptions(dir_.Subdir("on"));
    options.auth = AuthMode::kOn;
    Node node(options);
    ASSERT_TRUE(node.Start().ok());
    ExpectSpecMatchesRouter(node);
  }
  Node node(TestOptions(dir_.Subdir("off")));
  ASSERT_TRUE(node.Start().ok());
  ExpectSpecMatchesRouter(node);
}

TEST_F(ConsoleTest, ServesPagesWithStrictHeadersAndValidators) {
#ifndef LOGKV_WEB_BUILT
  GTEST_SKIP() << "the console was not built (LOGKV_WEB=OFF)";
#endif
  Node node(TestOptions(dir_.Subdir("data")));
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  for (const char* page : web::kPagePaths) {
    absl::StatusOr<HttpAnswer> answer = Fetch(port, "GET", page);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 200) << page;
    EXPECT_EQ(answer->Header("content-type").value_or(""), "text/html; charset=utf-8");
    EXPECT_EQ(answer->Header("content-security-policy").value_or(""),
              web::kContentSecurityPolicy);
    EXPECT_EQ(answer->Header("x-content-type-options").value_or(""), "nosniff");
    EXPECT_EQ(answer->Header("x-frame-options").value_or(""), "DENY");
    EXPECT_NE(answer->body.find("<html"), std::string::npos);
  }
  // No inline script or style anywhere: the policy would refuse them.
  EXPECT_EQ(std::string(web::kContentSecurityPolicy).find("unsafe"), std::string::npos);

  absl::StatusOr<HttpAnswer> script = Fetch(port, "GET", "/assets/app.js");
  ASSERT_TRUE(script.ok()) << script.status();
  EXPECT_EQ(script->status, 200);
  EXPECT_EQ(script->Header("content-type").value_or(""), "text/javascript; charset=utf-8");
  const std::string etag = script->Header("etag").value_or("");
  ASSERT_FALSE(etag.empty());
  EXPECT_EQ(script->Header("cache-control").value_or(""), "no-cache");
  absl::StatusOr<HttpAnswer> again =
      Fetch(port, "GET", "/assets/app.js", {{"If-None-Match", etag}});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->status, 304);
  EXPECT_TRUE(again->body.empty());

  absl::StatusOr<HttpAnswer> missing = Fetch(port, "GET", "/assets/nothing.js");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);
  absl::StatusOr<HttpAnswer> docs = Fetch(port, "GET", "/docs");
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_EQ(docs->status, 200);
  absl::StatusOr<HttpAnswer> info = Fetch(port, "GET", "/console/info");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->Json().value("auth", true), false);
}

TEST_F(ConsoleTest, ListsKeysByPrefixAPageAtATime) {
  Node node(TestOptions(dir_.Subdir("data")));
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  for (const char* key : {"a/1", "a/2", "a/3", "a/4", "a/5", "b/1"}) {
    const std::string ttl = absl::string_view(key) == "a/5" ? "?ttl=1h" : "";
    absl::StatusOr<HttpAnswer> put =
        Fetch(port, "PUT", absl::StrCat("/v1/kv/", key, ttl), {}, "v");
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_EQ(put->status, 200) << put->body;
  }
  std::vector<std::string> seen;
  std::string cursor;
  for (int page = 0; page < 5; ++page) {
    std::string target = "/v1/kv?prefix=a%2F&limit=2";
    if (!cursor.empty()) {
      target += "&cursor=" + absl::StrReplaceAll(cursor, {{"+", "%2B"}, {"/", "%2F"}, {"=", "%3D"}});
    }
    absl::StatusOr<HttpAnswer> answer = Fetch(port, "GET", target);
    ASSERT_TRUE(answer.ok()) << answer.status();
    ASSERT_EQ(answer->status, 200) << answer->body;
    const nlohmann::json body = answer->Json();
    EXPECT_LE(body["keys"].size(), 2u);
    for (const auto& item : body["keys"]) {
      seen.push_back(item["key"]);
      EXPECT_EQ(item.value("version", 0), 1) << item;
      EXPECT_EQ(item.value("size", 0), 1) << item;
      EXPECT_EQ(item["expires_at"].is_null(), item["key"] != "a/5") << item;
    }
    if (body["next_cursor"].is_null()) break;
    cursor = body["next_cursor"];
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"a/1", "a/2", "a/3", "a/4", "a/5"}));

  for (const char* bad : {"/v1/kv?limit=0", "/v1/kv?limit=1001", "/v1/kv?limit=x",
                          "/v1/kv?cursor=%%%", "/v1/kv?cursor=***"}) {
    absl::StatusOr<HttpAnswer> answer = Fetch(port, "GET", bad);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 400) << bad << ": " << answer->body;
  }
}

// Reads the stream until it holds text, within a bounded wait.
bool StreamHolds(HttpConnection& stream, absl::string_view text) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!absl::StrContains(stream.buffered(), text)) {
    if (absl::Now() > deadline) return false;
    if (stream.WaitClosed(absl::Milliseconds(50))) return absl::StrContains(stream.buffered(), text);
  }
  return true;
}

TEST_F(ConsoleTest, WatchStreamsChangesUnderAPrefixAsServerSentEvents) {
  Node node(TestOptions(dir_.Subdir("data")));
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  absl::StatusOr<HttpConnection> stream = HttpConnection::Connect(port);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(stream->Send(test::BuildRequest("GET", "/v1/watch?prefix=w%2F")).ok());
  ASSERT_TRUE(StreamHolds(*stream, "event: ready")) << stream->buffered();
  EXPECT_TRUE(absl::StrContains(stream->buffered(), "Content-Type: text/event-stream"))
      << stream->buffered();

  for (const auto& [method, target] : {std::pair{"PUT", "/v1/kv/other"},
                                       std::pair{"PUT", "/v1/kv/w/1"},
                                       std::pair{"DELETE", "/v1/kv/w/1"}}) {
    absl::StatusOr<HttpAnswer> answer = Fetch(port, method, target, {}, "hello");
    ASSERT_TRUE(answer.ok()) << answer.status();
    ASSERT_EQ(answer->status, 200) << answer->body;
  }
  ASSERT_TRUE(StreamHolds(*stream, "event: delete")) << stream->buffered();
  const std::string& events = stream->buffered();
  EXPECT_TRUE(absl::StrContains(events, "event: put\ndata: {")) << events;
  EXPECT_TRUE(absl::StrContains(events, "\"key\":\"w/1\"")) << events;
  EXPECT_TRUE(absl::StrContains(events, "\"value\":\"hello\"")) << events;
  EXPECT_FALSE(absl::StrContains(events, "other")) << events;

  // The node keeps serving others while the stream is open, and the stream
  // ends when its client goes.
  stream->Close();
  absl::StatusOr<HttpAnswer> health = Fetch(port, "GET", "/health");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
}

TEST_F(ConsoleTest, WatchNeedsAnApiKeyWithAuthOn) {
  NodeOptions options = TestOptions(dir_.Subdir("data"));
  options.auth = AuthMode::kOn;
  Node node(options);
  ASSERT_TRUE(node.Start().ok());
  for (const char* target : {"/v1/watch?prefix=a", "/v1/kv?prefix=a"}) {
    absl::StatusOr<HttpAnswer> answer = Fetch(node.http_ports().front(), "GET", target);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 401) << target << ": " << answer->body;
  }
  absl::StatusOr<HttpAnswer> info = Fetch(node.http_ports().front(), "GET", "/console/info");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->Json().value("auth", false), true);
}

// A browser on this machine can be made to send requests here by any site
// it visits: another site's page may change nothing (Origin), and a site
// whose name was made to resolve to 127.0.0.1 reads nothing from a node
// that serves everything on loopback without credentials (Host).
TEST_F(ConsoleTest, PagesOfOtherSitesChangeNothingAndReadNothing) {
  Node node(TestOptions(dir_.Subdir("data")));
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  const std::string self = absl::StrCat("127.0.0.1:", port);
  auto status = [&](const char* method, const std::string& target,
                    const ::logkv::test::HttpHeaders& headers, const std::string& body = "") {
    absl::StatusOr<HttpAnswer> answer = Fetch(port, method, target, headers, body);
    EXPECT_TRUE(answer.ok()) << answer.status();
    return answer.ok() ? answer->status : 0;
  };
  for (const char* origin : {"http://evil.example", "null", "http://127.0.0.1:1", "127.0.0.1"}) {
    const ::logkv::test::HttpHeaders from = {{"Host", self}, {"Origin", origin}};
    EXPECT_EQ(status("PUT", "/v1/kv/x", from, "changed"), 403) << origin;
    EXPECT_EQ(status("POST", "/put/x", from, R"({"value":"changed"})"), 403) << origin;
    EXPECT_EQ(status("DELETE", "/v1/kv/x", from), 403) << origin;
    EXPECT_EQ(status("POST", "/api/backup", from), 403) << origin;
  }
  EXPECT_EQ(status("GET", "/v1/kv/x", {{"Host", self}}), 404);  // nothing was written
  // The node's own pages (same origin), and clients that send no Origin.
  const ::logkv::test::HttpHeaders own = {{"Host", self}, {"Origin", "http://" + self}};
  EXPECT_EQ(status("PUT", "/v1/kv/x", own, "v"), 200);
  EXPECT_EQ(status("PUT", "/v1/kv/y", {}, "v"), 200);
  EXPECT_EQ(status("GET", "/v1/kv/x", {{"Host", self}, {"Origin", "http://evil.example"}}), 200);
  // Every answer, a value's and an error's, says its type is the one to use.
  for (const char* target : {"/v1/kv/x", "/v1/kv/%3Cscript%3E", "/health"}) {
    absl::StatusOr<HttpAnswer> answer = Fetch(port, "GET", target);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->Header("x-content-type-options").value_or(""), "nosniff") << target;
  }
  // Names: addresses and localhost; other names are refused.
  for (const std::string& host : {self, absl::StrCat("localhost:", port), absl::StrCat("[::1]:", port),
                                 std::string("127.0.0.1"), absl::StrCat("LOCALHOST:", port)}) {
    EXPECT_EQ(status("GET", "/v1/kv/x", {{"Host", host}}), 200) << host;
  }
  for (const std::string& host : {absl::StrCat("evil.example:", port), std::string("127.evil.example"),
                                 absl::StrCat("localhost.evil.example:", port)}) {
    EXPECT_EQ(status("GET", "/v1/kv/x", {{"Host", host}}), 403) << host;
    EXPECT_EQ(status("GET", "/v1/kv?prefix=", {{"Host", host}}), 403) << host;
  }
}

TEST_F(ConsoleTest, NamesAreCheckedWhenListedOrWhenNothingElseProtects) {
  {
    // Listed: those names and loopback ones, whatever else protects the node.
    NodeOptions options = TestOptions(dir_.Subdir("listed"));
    options.auth = AuthMode::kOn;
    options.http_allowed_hosts = {"kv.example"};
    Node node(options);
    ASSERT_TRUE(node.Start().ok());
    const int port = node.http_ports().front();
    for (const auto& [host, expected] : std::vector<std::pair<std::string, int>>{
             {absl::StrCat("kv.example:", port), 200},
             {"localhost", 200},
             {absl::StrCat("other.example:", port), 403}}) {
      absl::StatusOr<HttpAnswer> answer = Fetch(port, "GET", "/console/info", {{"Host", host}});
      ASSERT_TRUE(answer.ok()) << answer.status();
      EXPECT_EQ(answer->status, expected) << host << ": " << answer->body;
    }
  }
  {
    // Without accounts: addresses, localhost, the names the node goes by
    // (--http_advertise) and those listed; a listed name's pages may write
    // (a proxy in front of the node may give it another Host).
    NodeOptions options = TestOptions(dir_.Subdir("advertised"));
    options.http_advertise = "kvnode.test:8080";
    options.http_allowed_hosts = {"kv.example"};
    Node node(options);
    ASSERT_TRUE(node.Start().ok());
    const int port = node.http_ports().front();
    for (const auto& [host, expected] : std::vector<std::pair<std::string, int>>{
             {"kvnode.test:8080", 200},
             {"KV.example", 200},
             {"192.0.2.7:8080", 200},
             {"[2001:db8::1]:8080", 200},
             {"rebound.example:8080", 403}}) {
      absl::StatusOr<HttpAnswer> answer = Fetch(port, "GET", "/console/info", {{"Host", host}});
      ASSERT_TRUE(answer.ok()) << answer.status();
      EXPECT_EQ(answer->status, expected) << host << ": " << answer->body;
    }
    absl::StatusOr<HttpAnswer> proxied =
        Fetch(port, "PUT", "/v1/kv/p", {{"Host", "10.0.0.5:8080"}, {"Origin", "https://kv.example"}},
              "v");
    ASSERT_TRUE(proxied.ok()) << proxied.status();
    EXPECT_EQ(proxied->status, 200) << proxied->body;
  }
  // With accounts on and no list, any name: data needs credentials anyway.
  NodeOptions options = TestOptions(dir_.Subdir("auth"));
  options.auth = AuthMode::kOn;
  Node node(options);
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  absl::StatusOr<HttpAnswer> answer =
      Fetch(port, "GET", "/console/info", {{"Host", absl::StrCat("kv.example:", port)}});
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 200) << answer->body;
  // A form of another site is refused before its credentials are looked at.
  answer = Fetch(port, "POST", "/signup",
                 {{"Host", absl::StrCat("127.0.0.1:", port)}, {"Origin", "http://evil.example"}},
                 R"({"email":"a@example.com","username":"a","password":"securepass123"})");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 403) << answer->body;
}

TEST_F(ConsoleTest, RevokingTheKeyEndsItsWatchStream) {
  NodeOptions options = TestOptions(dir_.Subdir("data"));
  options.auth = AuthMode::kOn;
  Node node(options);
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  const test::HttpHeaders json_type = {{"Content-Type", "application/json"}};
  absl::StatusOr<HttpAnswer> answer = Fetch(
      port, "POST", "/signup", json_type,
      R"({"email":"w@example.com","username":"w","password":"a long password"})");
  ASSERT_TRUE(answer.ok() && answer->status == 201) << (answer.ok() ? answer->body : "");
  answer = Fetch(port, "POST", "/login", json_type,
                 R"({"email":"w@example.com","password":"a long password"})");
  ASSERT_TRUE(answer.ok() && answer->status == 200) << (answer.ok() ? answer->body : "");
  const std::string bearer = "Bearer " + answer->Json().value("access_token", "");
  answer = Fetch(port, "POST", "/apikeys", {{"Authorization", bearer}, json_type[0]},
                 R"({"name":"watch","scopes":["read","write"]})");
  ASSERT_TRUE(answer.ok() && answer->status == 201) << (answer.ok() ? answer->body : "");
  const std::string key = answer->Json().value("key", "");
  const int64_t key_id = answer->Json().value("id", 0);

  absl::StatusOr<HttpConnection> stream = HttpConnection::Connect(port);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(
      stream->Send(test::BuildRequest("GET", "/v1/watch?prefix=", {{"X-API-Key", key}})).ok());
  ASSERT_TRUE(StreamHolds(*stream, "event: ready")) << stream->buffered();
  answer = Fetch(port, "PUT", "/v1/kv/mine", {{"X-API-Key", key}}, "v");
  ASSERT_TRUE(answer.ok() && answer->status == 200);
  ASSERT_TRUE(StreamHolds(*stream, "\"key\":\"mine\"")) << stream->buffered();

  answer = Fetch(port, "DELETE", absl::StrCat("/apikeys/", key_id), {{"Authorization", bearer}});
  ASSERT_TRUE(answer.ok() && answer->status == 200) << (answer.ok() ? answer->body : "");
  ASSERT_TRUE(StreamHolds(*stream, "watch ended")) << stream->buffered();
  EXPECT_TRUE(stream->WaitClosed(absl::Seconds(10)));
}

// The id of the last event the stream holds ("id: " to the end of its line).
std::string LastEventId(const std::string& stream) {
  const size_t at = stream.rfind("\nid: ");
  if (at == std::string::npos) return "";
  const size_t begin = at + 5;
  return stream.substr(begin, stream.find('\n', begin) - begin);
}

TEST_F(ConsoleTest, WatchResumesAfterTheLastEventIdWithoutLoss) {
  Node node(TestOptions(dir_.Subdir("data")));
  ASSERT_TRUE(node.Start().ok());
  const int port = node.http_ports().front();
  auto put = [port](const std::string& key) {
    absl::StatusOr<HttpAnswer> answer = Fetch(port, "PUT", "/v1/kv/" + key, {}, "v-" + key);
    ASSERT_TRUE(answer.ok() && answer->status == 200) << (answer.ok() ? answer->body : "");
  };
  absl::StatusOr<HttpConnection> first = HttpConnection::Connect(port);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->Send(test::BuildRequest("GET", "/v1/watch?prefix=r%2F")).ok());
  ASSERT_TRUE(StreamHolds(*first, "event: ready")) << first->buffered();
  put("r/1");
  ASSERT_TRUE(StreamHolds(*first, "\"key\":\"r/1\"")) << first->buffered();
  ASSERT_TRUE(StreamHolds(*first, "\nid: ")) << first->buffered();
  const std::string id = LastEventId(first->buffered());
  // The id says where the stream stands on each node, per shard.
  const nlohmann::json cursor = nlohmann::json::parse(id, nullptr, false);
  ASSERT_TRUE(cursor.is_object() && cursor.size() == 1) << id;
  EXPECT_EQ(cursor.begin()->size(), 2u) << id;  // two shards
  first->Close();

  // Written while no stream is open: a resumed stream sends them, and not
  // what came before its id.
  put("r/2");
  put("r/3");
  absl::StatusOr<HttpConnection> second = HttpConnection::Connect(port);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(second->Send(test::BuildRequest("GET", "/v1/watch?prefix=r%2F",
                                              {{"Last-Event-ID", id}})).ok());
  ASSERT_TRUE(StreamHolds(*second, "\"key\":\"r/3\"")) << second->buffered();
  ASSERT_TRUE(StreamHolds(*second, "\"key\":\"r/2\"")) << second->buffered();
  EXPECT_TRUE(absl::StrContains(second->buffered(), "\"resumed\":true")) << second->buffered();
  EXPECT_FALSE(absl::StrContains(second->buffered(), "\"key\":\"r/1\"")) << second->buffered();
  EXPECT_FALSE(absl::StrContains(second->buffered(), "event: reset")) << second->buffered();

  // A cursor this node cannot follow (here: ahead of its log, as after the
  // data directory was wiped) is said so in a reset event; the stream goes
  // on from the newest events.
  nlohmann::json ahead = cursor;
  for (auto& sequence : ahead.begin().value()) sequence = 1'000'000'000;
  absl::StatusOr<HttpConnection> third = HttpConnection::Connect(port);
  ASSERT_TRUE(third.ok()) << third.status();
  ASSERT_TRUE(third->Send(test::BuildRequest("GET", "/v1/watch?prefix=r%2F",
                                             {{"Last-Event-ID", ahead.dump()}})).ok());
  ASSERT_TRUE(StreamHolds(*third, "event: reset")) << third->buffered();
  EXPECT_TRUE(absl::StrContains(third->buffered(), "are lost")) << third->buffered();
  put("r/4");
  ASSERT_TRUE(StreamHolds(*third, "\"key\":\"r/4\"")) << third->buffered();
  EXPECT_FALSE(absl::StrContains(third->buffered(), "\"key\":\"r/3\"")) << third->buffered();

  // An id of another node only: this node's part is unknown.
  absl::StatusOr<HttpConnection> fourth = HttpConnection::Connect(port);
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  ASSERT_TRUE(fourth->Send(test::BuildRequest("GET", "/v1/watch?prefix=r%2F",
                                              {{"Last-Event-ID", R"({"elsewhere":[1,2]})"}}))
                  .ok());
  ASSERT_TRUE(StreamHolds(*fourth, "event: reset")) << fourth->buffered();
  EXPECT_TRUE(absl::StrContains(fourth->buffered(), "was not in the stream resumed"))
      << fourth->buffered();

  for (const char* bad : {"nonsense", "[1,2]", R"({"n":[-1]})", R"({"n":"x"})"}) {
    absl::StatusOr<HttpAnswer> answer =
        Fetch(port, "GET", "/v1/watch?prefix=r%2F", {{"Last-Event-ID", bad}});
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 400) << bad << ": " << answer->body;
  }
}

http::ListedKey Listed(const std::string& key, uint64_t timestamp = 1) {
  http::ListedKey listed;
  listed.key = key;
  listed.version = timestamp;
  listed.timestamp = timestamp;
  return listed;
}

http::MemberPage Page(std::vector<http::ListedKey> keys, bool more = false) {
  http::MemberPage page;
  page.keys = std::move(keys);
  page.more = more;
  return page;
}

std::vector<std::string> KeysOf(const http::ListPage& page) {
  std::vector<std::string> keys;
  for (const http::ListedKey& key : page.keys) keys.push_back(key.key);
  return keys;
}

TEST(MergePagesTest, MergesMembersPagesInOrderOnceEach) {
  // Replicas hold the same key: it comes once, the newest copy.
  http::ListPage page = http::MergePages(
      {Page({Listed("a"), Listed("c", 5)}), Page({Listed("b"), Listed("c", 9)})}, 10);
  EXPECT_EQ(KeysOf(page), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(page.keys[2].timestamp, 9u);
  EXPECT_FALSE(page.more);

  // The limit ends the page.
  page = http::MergePages({Page({Listed("a"), Listed("c")}), Page({Listed("b")})}, 2);
  EXPECT_EQ(KeysOf(page), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(page.more);

  // A member whose page ended early (on bytes) with more after "b": nothing
  // past "b" is known of it, so the page ends at "b" and the next one goes on
  // from there.
  page = http::MergePages(
      {Page({Listed("a"), Listed("b")}, /*more=*/true), Page({Listed("a"), Listed("c"), Listed("d")})},
      10);
  EXPECT_EQ(KeysOf(page), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(page.more);

  page = http::MergePages({Page({}), Page({})}, 10);
  EXPECT_TRUE(page.keys.empty());
  EXPECT_FALSE(page.more);
}

TEST(RecentChangesTest, SendsEachChangeOnceAndNeverAnOlderOne) {
  http::RecentChanges recent(/*capacity=*/2);
  EXPECT_TRUE(recent.Admit("a", 10));
  EXPECT_FALSE(recent.Admit("a", 10));  // the same change from another replica
  EXPECT_FALSE(recent.Admit("a", 9));   // older than one sent
  EXPECT_TRUE(recent.Admit("a", 11));
  EXPECT_TRUE(recent.Admit("b", 1));
  EXPECT_TRUE(recent.Admit("c", 1));   // "a" is forgotten (capacity 2)
  EXPECT_TRUE(recent.Admit("a", 10));
}

TEST(ClusterCursorTest, EncodesAndDecodes) {
  http::ClusterCursor cursor{{"n1", {1, 2}}, {"127.0.0.1:7000", {18446744073709551615u, 0}}};
  const std::string text = http::EncodeClusterCursor(cursor);
  EXPECT_EQ(text, R"({"127.0.0.1:7000":[18446744073709551615,0],"n1":[1,2]})");
  absl::StatusOr<http::ClusterCursor> decoded = http::DecodeClusterCursor(text);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, cursor);
  EXPECT_FALSE(http::DecodeClusterCursor("{\"n\":[1.5]}").ok());
}

TEST(WatchStreamsTest, LimitsStreamsPerUserAndInAll) {
  http::WatchStreams streams(/*max_total=*/3, /*max_per_user=*/2);
  EXPECT_TRUE(streams.Acquire(7));
  EXPECT_TRUE(streams.Acquire(7));
  EXPECT_FALSE(streams.Acquire(7));  // the user's two
  EXPECT_TRUE(streams.Acquire(8));
  EXPECT_FALSE(streams.Acquire(9));  // three in all
  EXPECT_EQ(streams.open(), 3u);
  streams.Release(7);
  EXPECT_TRUE(streams.Acquire(9));
  streams.Release(9);
  streams.Release(8);
  streams.Release(7);
  EXPECT_EQ(streams.open(), 0u);
  // With auth off everyone is user 0: only the limit in all applies.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(streams.Acquire(0));
  EXPECT_FALSE(streams.Acquire(0));
}

}  // namespace
}  // namespace logkv::server
