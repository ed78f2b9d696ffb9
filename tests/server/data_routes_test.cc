// The data dialects' table and its one handler (server/http/data_routes.cc),
// and the node routes beside them (cluster_routes.cc), run in-process on an
// engine in a temporary directory: the route table the router gets, each
// dialect's answers, and the order in which a request's parts are checked.
// tests/rest runs the same routes through a real logkvd.
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/http/cluster_routes.h"
#include "server/http/data_routes.h"
#include "server/http/json_body.h"
#include "server/http/route_support.h"
#include "server/http/router.h"
#include "server/metrics.h"
#include "server/service.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::server::http {
namespace {

using nlohmann::json;
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr char kNodeUrl[] = "http://127.0.0.1:18080";

class DataRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine::Options options = test::TestOptions(dir_.path());
    options.versions_kept = 3;  // logkvd's default --versions
    absl::StatusOr<std::unique_ptr<engine::Engine>> engine = engine::Engine::Open(options);
    ASSERT_OK(engine);
    engine_ = *std::move(engine);
    ServiceConfig service_config;
    service_config.node_id = "node-1";
    service_ = std::make_unique<Service>(engine_.get(), service_config, &counters_);

    const ApiKeyAuth auth{.admission = nullptr, .metrics = &metrics_};
    DataRoutesConfig data_config;
    data_config.max_document_bytes = 64;
    DataRoutesDependencies data_dependencies;
    data_dependencies.service = service_.get();
    data_dependencies.auth = auth;
    data_dependencies.node_url = &node_url_;
    data_routes_ = std::make_unique<DataRoutes>(data_config, data_dependencies);
    data_routes_->AddTo(&router_);

    ClusterRoutesConfig cluster_config;
    cluster_config.node_id = "node-1";
    ClusterRoutesDependencies cluster_dependencies;
    cluster_dependencies.service = service_.get();
    cluster_dependencies.auth = auth;
    cluster_dependencies.node_url = &node_url_;
    cluster_routes_ = std::make_unique<ClusterRoutes>(cluster_config, cluster_dependencies);
    cluster_routes_->AddTo(&router_);
  }

  void TearDown() override {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  // Runs target (path and query, percent-encoded) through the router and
  // its handler, as a connection would; waits for a deferred answer.
  HttpResponse Call(Method method, const std::string& target, const std::string& body = "",
                    const Headers& headers = {}) {
    HttpRequest request;
    request.method = method;
    request.target = target;
    const size_t question = target.find('?');
    request.path = request.target.substr(0, question);
    if (question != std::string::npos) request.query = request.target.substr(question + 1);
    for (const auto& [name, value] : headers) request.headers.push_back({name, value});
    request.body = body;
    Router::Match match = router_.Find(method, request.path, &request.params);
    if (match.route == nullptr) return HttpResponse::Error(match.status, "no route");
    auto answered = std::make_shared<absl::Notification>();
    auto answer = std::make_shared<HttpResponse>();
    match.route->handler(request, Responder([answered, answer](HttpResponse response) {
                           *answer = std::move(response);
                           answered->Notify();
                         }));
    EXPECT_TRUE(answered->WaitForNotificationWithTimeout(absl::Seconds(30))) << target;
    return *answer;
  }

  static std::string ErrorOf(const HttpResponse& response) {
    const json body = json::parse(response.body, nullptr, false);
    return body.is_object() && body.contains("error") && body["error"].is_string()
               ? body["error"].get<std::string>()
               : "(no error in '" + response.body + "')";
  }

  test::ScopedTempDir dir_;
  std::unique_ptr<engine::Engine> engine_;
  ServerCounters counters_;
  ServerMetrics metrics_;
  std::unique_ptr<Service> service_;
  NodeUrl node_url_{kNodeUrl};
  Router router_;
  std::unique_ptr<DataRoutes> data_routes_;
  std::unique_ptr<ClusterRoutes> cluster_routes_;
};

// The router's table: the dialects' routes, the busiest first, then the
// node's; writes flagged (refused under --read-only). Metrics label routes
// by this table, so its order and patterns are part of the contract.
TEST_F(DataRoutesTest, RouteTable) {
  const std::vector<std::tuple<std::string, std::string, bool>> expected = {
      {"GET", "/v1/kv/{key...}", false},    {"PUT", "/v1/kv/{key...}", true},
      {"DELETE", "/v1/kv/{key...}", true},  {"GET", "/store/{key...}", false},
      {"GET", "/kv", false},                {"PUT", "/kv", true},
      {"DELETE", "/kv", true},              {"POST", "/v0/kv", true},
      {"GET", "/v0/kv/key/{key...}", false}, {"PUT", "/put/{key...}", true},
      {"POST", "/put/{key...}", true},      {"GET", "/get/{key...}", false},
      {"PUT", "/kv/{path...}", true},       {"GET", "/kv/{path...}", false},
      {"DELETE", "/kv/{path...}", true},    {"GET", "/health", false},
      {"GET", "/metrics", false},           {"GET", "/cache/stats", false},
      {"GET", "/db/stats", false},          {"GET", "/nodes", false},
      {"GET", "/servers", false},           {"GET", "/members/", false},
      {"GET", "/internal/ping", false},     {"POST", "/join", false},
      {"POST", "/members/join", false},     {"POST", "/members/leave", false},
      {"POST", "/members/remove", false},
  };
  std::vector<std::tuple<std::string, std::string, bool>> actual;
  for (const auto& route : router_.routes()) {
    actual.emplace_back(MethodName(route->method), route->pattern, route->is_write);
  }
  EXPECT_EQ(actual, expected);
}

TEST_F(DataRoutesTest, Seed000RawBytesAndPlacement) {
  HttpResponse put = Call(Method::kPut, "/v1/kv/a%2Fb?ttl=1h", std::string("v\0w", 3));
  ASSERT_EQ(put.status, 200) << put.body;
  EXPECT_EQ(json::parse(put.body),
            json({{"success", true}, {"key", "a/b"}, {"primary_node", kNodeUrl}, {"replicas", 0}}));
  HttpResponse got = Call(Method::kGet, "/v1/kv/a%2Fb");
  EXPECT_EQ(got.status, 200);
  EXPECT_EQ(got.content_type, "application/octet-stream");
  EXPECT_EQ(got.body, std::string("v\0w", 3));
  EXPECT_EQ(Call(Method::kGet, "/store/a%2Fb").body, got.body);
  EXPECT_EQ(Call(Method::kDelete, "/v1/kv/a%2Fb").status, 200);
  // Deleting what is not there succeeds, with the same answer.
  HttpResponse again = Call(Method::kDelete, "/v1/kv/a%2Fb");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(json::parse(again.body)["key"], "a/b");
  HttpResponse missing = Call(Method::kGet, "/v1/kv/a%2Fb");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(ErrorOf(missing), "Key not found");
}

TEST_F(DataRoutesTest, Seed001QueryKeys) {
  HttpResponse put = Call(Method::kPut, "/kv?key=q%20k", "raw");
  ASSERT_EQ(put.status, 200) << put.body;
  EXPECT_EQ(json::parse(put.body), json({{"success", true}, {"version", 1}}));
  EXPECT_EQ(Call(Method::kGet, "/kv?key=q+k").body, "raw");
  EXPECT_EQ(Call(Method::kDelete, "/kv?key=q%20k").body, R"({"success":true})");
  EXPECT_EQ(Call(Method::kDelete, "/kv?key=q%20k").body, R"({"success":true})");
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/kv?key=q%20k")), "Key not found");
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/kv")), "missing query parameter 'key'");
}

TEST_F(DataRoutesTest, Seed002Base64) {
  const std::string key = absl::Base64Escape("k\xff");
  const std::string value = absl::Base64Escape(std::string("\0\x01", 2));
  HttpResponse posted =
      Call(Method::kPost, "/v0/kv", json({{"key", key}, {"value", value}}).dump());
  ASSERT_EQ(posted.status, 200) << posted.body;
  EXPECT_EQ(posted.body, "{}");
  HttpResponse got = Call(Method::kGet, "/v0/kv/key/" + key);
  EXPECT_EQ(json::parse(got.body), json({{"key", key}, {"value", value}}));
  // The same bytes through another dialect.
  EXPECT_EQ(Call(Method::kGet, "/v1/kv/k%FF").body, std::string("\0\x01", 2));
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/v0/kv/key/bm9wZQ==")), "key not found");
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/v0/kv/key/!!")), "invalid base64 key");
  EXPECT_EQ(ErrorOf(Call(Method::kPost, "/v0/kv", R"({"key":"a"})")),
            "\"key\" and \"value\" must be base64 strings");
  EXPECT_EQ(ErrorOf(Call(Method::kPost, "/v0/kv", R"({"key":"!","value":"!"})")),
            "invalid base64");
  EXPECT_EQ(ErrorOf(Call(Method::kPost, "/v0/kv", "[]")),
            "body must be a JSON object {\"key\",\"value\"}");
}

TEST_F(DataRoutesTest, Seed003Versions) {
  HttpResponse first = Call(Method::kPut, "/put/v", R"({"value":{"n":1}})");
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(json::parse(first.body)["value"], json({{"n", 1}}));
  EXPECT_EQ(json::parse(first.body)["version"], 1);
  HttpResponse second = Call(Method::kPost, "/put/v", R"({"value":"two"})");
  EXPECT_EQ(json::parse(second.body)["version"], 2);
  EXPECT_EQ(json::parse(Call(Method::kGet, "/get/v").body)["value"], "two");
  EXPECT_EQ(json::parse(Call(Method::kGet, "/get/v?version=1").body)["value"], json({{"n", 1}}));
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/get/v?version=0")),
            "version must be a positive integer, not '0'");
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/get/v?version=%zz")),
            "query parameter 'version' is not valid percent-encoding");
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/get/none")), "Key 'none' not found");
  EXPECT_EQ(ErrorOf(Call(Method::kPut, "/put/v", R"({"other":1})")),
            "body must be JSON {\"value\": ...}");
}

// /get answers a stored JSON value as it is stored, never built into a tree:
// numbers beyond a double's precision come back whole, and a value of many
// small values costs its size, not many times it. A /put body is built into
// a tree, so it may hold at most kMaxJsonTreeValues values.
TEST_F(DataRoutesTest, Seed003JsonValuesAreAnsweredAsStored) {
  ASSERT_EQ(Call(Method::kPut, "/v1/kv/big", "[123456789012345678901234, 1.50]").status, 200);
  HttpResponse got = Call(Method::kGet, "/get/big");
  ASSERT_EQ(got.status, 200) << got.body;
  EXPECT_NE(got.body.find(R"("value":[123456789012345678901234, 1.50]})"), std::string::npos)
      << got.body;
  EXPECT_EQ(json::parse(got.body)["key"], "big");
  // A byte order mark before stored JSON is not put in the answer.
  ASSERT_EQ(Call(Method::kPut, "/v1/kv/marked", "\xEF\xBB\xBF{\"a\":1}").status, 200);
  got = Call(Method::kGet, "/get/marked");
  ASSERT_EQ(got.status, 200) << got.body;
  EXPECT_NE(got.body.find(R"("value":{"a":1}})"), std::string::npos) << got.body;
  EXPECT_EQ(json::parse(got.body, nullptr, false)["value"], json({{"a", 1}})) << got.body;
  std::string many = "[";
  for (size_t i = 0; i < kMaxJsonTreeValues; ++i) absl::StrAppend(&many, i == 0 ? "" : ",", "{}");
  many += "]";  // kMaxJsonTreeValues + 1 values, the array counted
  ASSERT_EQ(Call(Method::kPut, "/v1/kv/many", many).status, 200);
  got = Call(Method::kGet, "/get/many");
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(got.body.size(), many.size() + got.body.find("\"value\":") + 9) << got.body.substr(0, 200);
  HttpResponse refused = Call(Method::kPut, "/put/many", absl::StrCat(R"({"value":)", many, "}"));
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(ErrorOf(refused), absl::StrCat("body must be JSON {\"value\": ...}: JSON holds more "
                                           "values than the limit of ",
                                           kMaxJsonTreeValues));
  many.erase(many.size() - 7, 6);  // two {} fewer: the limit, with the body's object
  EXPECT_EQ(Call(Method::kPut, "/put/fewer", absl::StrCat(R"({"value":)", many, "}")).status,
            200);
}

TEST_F(DataRoutesTest, Seed004Documents) {
  HttpResponse put = Call(Method::kPut, "/kv/docs/1", R"({"a":[1,2]})");
  ASSERT_EQ(put.status, 200) << put.body;
  const json written = json::parse(put.body);
  EXPECT_TRUE(written["uuid"].is_string());
  EXPECT_TRUE(written["timestamp"].is_number_integer());
  HttpResponse got = Call(Method::kGet, "/kv/docs/1");
  EXPECT_EQ(got.content_type, "application/json");
  EXPECT_EQ(got.body, R"({"a":[1,2]})");
  HttpResponse deleted = Call(Method::kDelete, "/kv/docs/1");
  EXPECT_EQ(deleted.status, 204);
  EXPECT_EQ(deleted.body, "");
  EXPECT_EQ(Call(Method::kDelete, "/kv/docs/1").status, 204);
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/kv/docs/1")), "not found");
  EXPECT_EQ(Call(Method::kPut, "/kv/docs/2", "{").status, 400);
}

// A request wrong in several ways gets the error of the part checked first:
// the key, a body over its limit, ?ttl=, X-Consistency, the body, ?version=.
TEST_F(DataRoutesTest, ChecksRunInTheirOrder) {
  const std::string big_document(65, ' ');
  HttpResponse too_big = Call(Method::kPut, "/kv/doc?ttl=never", big_document);
  EXPECT_EQ(too_big.status, 413);
  EXPECT_EQ(ErrorOf(too_big), "document of 65 bytes is larger than the limit of 64 bytes");
  EXPECT_EQ(ErrorOf(Call(Method::kPut, "/kv?ttl=never", "x")), "missing query parameter 'key'");
  const std::string bad_ttl =
      "invalid ttl 'never': use a duration such as 30s, 1h30m or 500ms, or seconds";
  EXPECT_EQ(ErrorOf(Call(Method::kPost, "/v0/kv?ttl=never", "not json")), bad_ttl);
  EXPECT_EQ(ErrorOf(Call(Method::kPut, "/put/k?ttl=never", "not json")), bad_ttl);
  EXPECT_EQ(ErrorOf(Call(Method::kPut, "/kv/doc?ttl=never", "not json")), bad_ttl);
  const Headers bogus = {{"X-Consistency", "bogus"}};
  EXPECT_EQ(ErrorOf(Call(Method::kPut, "/v1/kv/k?ttl=never", "x", bogus)), bad_ttl);
  EXPECT_EQ(ErrorOf(Call(Method::kGet, "/v1/kv/k", "", bogus)),
            "X-Consistency must be eventual or strong, not 'bogus'");
  EXPECT_EQ(Call(Method::kGet, "/store/k", "", bogus).status, 400);
  // Only seed 000 reads X-Consistency; the other dialects never did.
  EXPECT_EQ(Call(Method::kPut, "/kv?key=k", "x", bogus).status, 200);
  EXPECT_EQ(Call(Method::kGet, "/kv?key=k", "", bogus).status, 200);
  EXPECT_EQ(Call(Method::kGet, "/v1/kv/k", "", {{"X-Consistency", "Strong"}}).status, 200);
}

TEST_F(DataRoutesTest, KeysAndValuesOverTheLimitsAre413) {
  const std::string long_key(service_->config().limits.max_key_bytes + 1, 'k');
  EXPECT_EQ(Call(Method::kPut, "/v1/kv/" + long_key, "x").status, 413);
  EXPECT_EQ(Call(Method::kGet, "/get/" + long_key).status, 413);
}

TEST_F(DataRoutesTest, NodeRoutesOfASingleNode) {
  HttpResponse health = Call(Method::kGet, "/health");
  ASSERT_EQ(health.status, 200);
  const json body = json::parse(health.body);
  EXPECT_EQ(body["status"], "healthy");
  EXPECT_EQ(body["node_id"], "node-1");
  EXPECT_EQ(body["member_count"], 1);
  EXPECT_EQ(json::parse(Call(Method::kGet, "/servers").body), json::array({kNodeUrl}));
  node_url_.Set("http://127.0.0.1:18081");
  EXPECT_EQ(json::parse(Call(Method::kGet, "/servers").body),
            json::array({"http://127.0.0.1:18081"}));
  EXPECT_EQ(json::parse(Call(Method::kPut, "/v1/kv/k", "x").body)["primary_node"],
            "http://127.0.0.1:18081");
  EXPECT_EQ(Call(Method::kGet, "/internal/ping").body, R"({"status":"ok"})");
  EXPECT_EQ(Call(Method::kPost, "/join", "127.0.0.1:1").status, 501);
  EXPECT_EQ(Call(Method::kPost, "/members/leave").status, 501);
}

}  // namespace
}  // namespace logkv::server::http
