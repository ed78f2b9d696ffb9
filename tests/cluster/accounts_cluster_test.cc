// Accounts across a cluster of real logkvd processes with --auth=on
// (docs/control-plane.md, "Accounts"): the Quick Start's account routes on
// one node and data routes on others, two users' keys isolated through
// every node, a revocation seen by every node, accounts kept through a
// SIGTERM and restart, and a node of the other auth mode refused.
//
// A change made on one node is applied by the others within a heartbeat:
// reads on another node right after it are polled (bounded), as a client
// retrying a 401 would.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cluster/cluster_process.h"
#include "tests/engine/test_util.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

using Json = nlohmann::json;

constexpr absl::Duration kPropagation = absl::Seconds(10);

ClusterOptions AuthClusterOptions(int nodes) {
  ClusterOptions options;
  options.logkvd_binary = LOGKVD_PATH;
  options.nodes = nodes;
  options.replicas = nodes;
  options.extra_flags = {"--auth=on"};
  return options;
}

class AccountsClusterTest : public ::testing::Test {
 protected:
  void StartCluster(int nodes = 3) {
    cluster_ = std::make_unique<ClusterProcess>(AuthClusterOptions(nodes));
    ASSERT_TRUE(cluster_->Start().ok()) << cluster_->Describe();
  }

  absl::StatusOr<HttpAnswer> Call(int node, absl::string_view method, absl::string_view target,
                                  HttpHeaders headers = {}, const Json& body = nullptr) const {
    std::string text;
    if (!body.is_null()) {
      headers.emplace_back("Content-Type", "application/json");
      // A string is sent as it is (a value stored byte for byte).
      text = body.is_string() ? body.get<std::string>() : body.dump();
    }
    return HttpExchange(cluster_->http_port(node), method, target, headers, text,
                        absl::Seconds(15));
  }

  // Polls until the call answers `status` (bounded); the last answer.
  HttpAnswer CallUntil(int status, int node, absl::string_view method, absl::string_view target,
                       HttpHeaders headers = {}, const Json& body = nullptr) const {
    const absl::Time deadline = absl::Now() + kPropagation;
    HttpAnswer last;
    while (true) {
      absl::StatusOr<HttpAnswer> answer = Call(node, method, target, headers, body);
      if (answer.ok()) last = *answer;
      if (last.status == status || absl::Now() >= deadline) return last;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  // Signs up on `signup_node`, logs in on `login_node`; the access token.
  std::string SignUpAndLogin(int signup_node, int login_node, const std::string& name) {
    const Json signup = {{"email", name + "@example.com"},
                         {"username", name},
                         {"password", "securepass123"}};
    HttpAnswer created = CallUntil(201, signup_node, "POST", "/signup", {}, signup);
    EXPECT_EQ(created.status, 201) << created.body << cluster_->Describe();
    HttpAnswer login = CallUntil(200, login_node, "POST", "/login", {},
                                 {{"email", name + "@example.com"}, {"password", "securepass123"}});
    EXPECT_EQ(login.status, 200) << login.body;
    return login.Json().value("access_token", "");
  }

  // Creates an API key on `node`: (id, key).
  std::pair<uint64_t, std::string> CreateKey(int node, const std::string& token) {
    HttpAnswer key = CallUntil(201, node, "POST", "/apikeys", {{"Authorization", "Bearer " + token}},
                               {{"name", "My Application Key"},
                                {"scopes", {"read", "write"}},
                                {"expires_in_days", 90}});
    EXPECT_EQ(key.status, 201) << key.body;
    const Json body = key.Json();
    return {body.value("id", uint64_t{0}), body.value("key", "")};
  }

  std::unique_ptr<ClusterProcess> cluster_;
};

// The Quick Start, with its account routes on node 0 and node 1 and its
// data routes on node 2 and node 1.
TEST_F(AccountsClusterTest, QuickStartAcrossNodes) {
  StartCluster();
  const std::string token = SignUpAndLogin(0, 1, "user");
  ASSERT_FALSE(token.empty());
  // A token node 1 signed is good on node 0: one secret for the cluster.
  const auto [key_id, api_key] = CreateKey(0, token);
  ASSERT_TRUE(absl::StartsWith(api_key, "ydht_")) << api_key;
  const HttpHeaders with_key = {{"X-API-Key", api_key}};

  HttpAnswer put = CallUntil(200, 2, "PUT", "/v1/kv/user:123", with_key,
                             Json(R"({"name":"John Doe","email":"john@example.com"})"));
  ASSERT_EQ(put.status, 200) << put.body;
  HttpHeaders strong = with_key;
  strong.emplace_back("X-Consistency", "strong");
  HttpAnswer put_strong =
      CallUntil(200, 1, "PUT", "/v1/kv/config:app", strong, Json(R"({"theme":"dark","language":"en"})"));
  ASSERT_EQ(put_strong.status, 200) << put_strong.body;
  for (int node = 0; node < 3; ++node) {
    HttpAnswer got = CallUntil(200, node, "GET", "/v1/kv/config:app", strong);
    EXPECT_EQ(got.status, 200) << node << got.body;
    EXPECT_EQ(got.body, R"({"theme":"dark","language":"en"})") << node;
  }
  HttpAnswer got = CallUntil(200, 2, "GET", "/v1/kv/user:123", with_key);
  EXPECT_EQ(got.body, R"({"name":"John Doe","email":"john@example.com"})");
  HttpAnswer deleted = CallUntil(200, 2, "DELETE", "/v1/kv/user:123", with_key);
  EXPECT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_EQ(CallUntil(404, 2, "GET", "/v1/kv/user:123", with_key).status, 404);
  // The same sign-up on another node: the email is the cluster's.
  absl::StatusOr<HttpAnswer> again =
      Call(2, "POST", "/signup", {},
           {{"email", "USER@example.com"}, {"username", "other"}, {"password", "securepass123"}});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->status, 409) << again->body;
  // Without a key: 401 everywhere.
  EXPECT_EQ(Call(1, "GET", "/v1/kv/config:app")->status, 401);
}

// Two users write the same key name through different nodes; each reads
// only their own value, through every node.
TEST_F(AccountsClusterTest, TwoUsersKeysAreIsolatedThroughEveryNode) {
  StartCluster();
  const std::string alice_key = CreateKey(1, SignUpAndLogin(0, 1, "alice")).second;
  const std::string bob_key = CreateKey(2, SignUpAndLogin(2, 0, "bob")).second;
  HttpHeaders alice = {{"X-API-Key", alice_key}, {"X-Consistency", "strong"}};
  HttpHeaders bob = {{"X-API-Key", bob_key}, {"X-Consistency", "strong"}};
  ASSERT_EQ(CallUntil(200, 0, "PUT", "/v1/kv/shared", alice, {{"owner", "alice"}}).status, 200);
  ASSERT_EQ(CallUntil(200, 1, "PUT", "/v1/kv/shared", bob, {{"owner", "bob"}}).status, 200);
  ASSERT_EQ(CallUntil(200, 2, "PUT", "/v1/kv/only-alice", alice, {{"x", 1}}).status, 200);
  for (int node = 0; node < 3; ++node) {
    SCOPED_TRACE(node);
    EXPECT_EQ(CallUntil(200, node, "GET", "/v1/kv/shared", alice).body, R"({"owner":"alice"})");
    EXPECT_EQ(CallUntil(200, node, "GET", "/v1/kv/shared", bob).body, R"({"owner":"bob"})");
    EXPECT_EQ(CallUntil(200, node, "GET", "/v1/kv/only-alice", alice).status, 200);
    EXPECT_EQ(Call(node, "GET", "/v1/kv/only-alice", bob)->status, 404);
  }
}

// Compare-and-set on consensus keys with accounts on: each tenant's keys
// under the cluster's consensus prefix are its own, versioned through the
// control plane, and If-Match / If-None-Match hold through every node; a
// request without credentials is refused before any condition is read.
TEST_F(AccountsClusterTest, ConsensusKeysAreCompareAndSetPerTenantThroughEveryNode) {
  ClusterOptions options = AuthClusterOptions(3);
  options.extra_flags.push_back("--consensus-prefix=lock:");
  cluster_ = std::make_unique<ClusterProcess>(options);
  ASSERT_TRUE(cluster_->Start().ok()) << cluster_->Describe();
  const std::string alice_key = CreateKey(1, SignUpAndLogin(0, 1, "alice")).second;
  const std::string bob_key = CreateKey(2, SignUpAndLogin(2, 0, "bob")).second;
  auto with = [](const std::string& key, HttpHeaders more = {}) {
    more.emplace_back("X-API-Key", key);
    return more;
  };
  // Both create "lock:a" in their own namespace: neither sees the other's.
  HttpAnswer alice_created =
      CallUntil(200, 0, "PUT", "/v1/kv/lock:a", with(alice_key, {{"If-None-Match", "*"}}), "alice-1");
  ASSERT_EQ(alice_created.status, 200) << alice_created.body << cluster_->Describe();
  EXPECT_EQ(alice_created.Header("etag").value_or(""), "\"1\"");
  HttpAnswer bob_created =
      CallUntil(200, 1, "PUT", "/v1/kv/lock:a", with(bob_key, {{"If-None-Match", "*"}}), "bob-1");
  ASSERT_EQ(bob_created.status, 200) << bob_created.body;
  EXPECT_EQ(bob_created.Header("etag").value_or(""), "\"1\"");
  // Alice's compare-and-set through node 2 wins; the same version again
  // through node 1 is refused, as is an If-None-Match on a key she holds.
  HttpAnswer swapped =
      CallUntil(200, 2, "PUT", "/v1/kv/lock:a", with(alice_key, {{"If-Match", "\"1\""}}), "alice-2");
  ASSERT_EQ(swapped.status, 200) << swapped.body;
  EXPECT_EQ(swapped.Header("etag").value_or(""), "\"2\"");
  EXPECT_EQ(Call(1, "PUT", "/v1/kv/lock:a", with(alice_key, {{"If-Match", "\"1\""}}), "lost")->status,
            412);
  EXPECT_EQ(Call(0, "PUT", "/v1/kv/lock:a", with(alice_key, {{"If-None-Match", "*"}}), "lost")->status,
            412);
  for (int node = 0; node < 3; ++node) {
    SCOPED_TRACE(node);
    absl::StatusOr<HttpAnswer> alice = Call(node, "GET", "/v1/kv/lock:a", with(alice_key));
    ASSERT_TRUE(alice.ok());
    EXPECT_EQ(alice->body, "alice-2");
    EXPECT_EQ(alice->Header("etag").value_or(""), "\"2\"");
    absl::StatusOr<HttpAnswer> bob = Call(node, "GET", "/v1/kv/lock:a", with(bob_key));
    ASSERT_TRUE(bob.ok());
    EXPECT_EQ(bob->body, "bob-1");
    EXPECT_EQ(bob->Header("etag").value_or(""), "\"1\"");
    // Without credentials: 401, whatever the condition says.
    EXPECT_EQ(Call(node, "PUT", "/v1/kv/lock:a", {{"If-Match", "\"2\""}}, "anonymous")->status, 401);
    EXPECT_EQ(Call(node, "GET", "/v1/kv/lock:a")->status, 401);
  }
  // Bob deletes his at his version; Alice's stays.
  EXPECT_EQ(Call(2, "DELETE", "/v1/kv/lock:a", with(bob_key, {{"If-Match", "\"1\""}}))->status, 200);
  EXPECT_EQ(Call(0, "GET", "/v1/kv/lock:a", with(bob_key))->status, 404);
  EXPECT_EQ(Call(1, "GET", "/v1/kv/lock:a", with(alice_key))->body, "alice-2");
  // Outside the prefix a replicated key has no compare-and-set: 501.
  EXPECT_EQ(Call(0, "PUT", "/v1/kv/plain", with(alice_key, {{"If-None-Match", "*"}}), "x")->status,
            501);
}

// A key revoked on node 0 is refused by every node; the time until node 2
// refuses it is printed (no threshold: it depends on the machine).
TEST_F(AccountsClusterTest, RevocationIsSeenOnEveryNode) {
  StartCluster();
  const std::string token = SignUpAndLogin(0, 0, "revoker");
  const auto [key_id, api_key] = CreateKey(0, token);
  const HttpHeaders with_key = {{"X-API-Key", api_key}};
  ASSERT_EQ(CallUntil(200, 0, "PUT", "/v1/kv/k", with_key, {{"v", 1}}).status, 200);
  for (int node = 0; node < 3; ++node) {
    ASSERT_EQ(CallUntil(200, node, "GET", "/v1/kv/k", with_key).status, 200) << node;
  }
  const auto started = std::chrono::steady_clock::now();
  absl::StatusOr<HttpAnswer> revoked =
      Call(0, "DELETE", absl::StrCat("/apikeys/", key_id), {{"Authorization", "Bearer " + token}});
  ASSERT_TRUE(revoked.ok());
  ASSERT_EQ(revoked->status, 200) << revoked->body;
  HttpAnswer refused = CallUntil(401, 2, "GET", "/v1/kv/k", with_key);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                               started)
                        .count();
  EXPECT_EQ(refused.status, 401) << refused.body;
  std::printf("revocation on node 0 (answered) to refusal on node 2: %.1f ms\n", ms);
  for (int node = 0; node < 3; ++node) {
    HttpAnswer answer = CallUntil(401, node, "GET", "/v1/kv/k", with_key);
    EXPECT_EQ(answer.status, 401) << node;
    EXPECT_TRUE(absl::StrContains(answer.body, "revoked")) << answer.body;
  }
}

// An administrator's key reset on one node ends the user's sessions on
// every node: the access and refresh tokens issued before are refused
// everywhere, also by a node killed with SIGKILL and started again; a new
// login works.
TEST_F(AccountsClusterTest, EndedSessionsAreEndedOnEveryNode) {
  StartCluster();
  const std::string admin_token = SignUpAndLogin(0, 0, "admin");  // the first: the administrator
  const std::string admin_key = CreateKey(0, admin_token).second;
  const Json signup = {{"email", "ended@example.com"},
                       {"username", "ended"},
                       {"password", "securepass123"}};
  HttpAnswer created = CallUntil(201, 1, "POST", "/signup", {}, signup);
  ASSERT_EQ(created.status, 201) << created.body;
  const uint64_t user_id = created.Json().value("id", uint64_t{0});
  HttpAnswer login = CallUntil(200, 2, "POST", "/login", {},
                               {{"email", "ended@example.com"}, {"password", "securepass123"}});
  ASSERT_EQ(login.status, 200) << login.body;
  const HttpHeaders bearer = {{"Authorization", "Bearer " + login.Json().value("access_token", "")}};
  const std::string refresh = login.Json().value("refresh_token", "");
  for (int node = 0; node < 3; ++node) {
    ASSERT_EQ(CallUntil(200, node, "GET", "/apikeys", bearer).status, 200) << node;
  }
  HttpAnswer reset = CallUntil(200, 0, "PUT", absl::StrCat("/api/users/", user_id),
                               {{"X-API-Key", admin_key}}, {{"reset_keys", true}});
  ASSERT_EQ(reset.status, 200) << reset.body;
  for (int node = 0; node < 3; ++node) {
    HttpAnswer refused = CallUntil(401, node, "GET", "/apikeys", bearer);
    EXPECT_EQ(refused.status, 401) << node << " " << refused.body;
    EXPECT_TRUE(absl::StrContains(refused.body, "session was ended")) << refused.body;
  }
  cluster_->Kill(1);
  ASSERT_TRUE(cluster_->RestartAsStarted(1).ok()) << cluster_->Describe();
  HttpAnswer after_restart = CallUntil(401, 1, "GET", "/apikeys", bearer);
  EXPECT_EQ(after_restart.status, 401) << after_restart.body << cluster_->Describe();
  EXPECT_TRUE(absl::StrContains(after_restart.body, "session was ended")) << after_restart.body;
  HttpAnswer refresh_refused =
      CallUntil(401, 1, "POST", "/refresh", {}, {{"refresh_token", refresh}});
  EXPECT_EQ(refresh_refused.status, 401) << refresh_refused.body;
  HttpAnswer again = CallUntil(200, 1, "POST", "/login", {},
                               {{"email", "ended@example.com"}, {"password", "securepass123"}});
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(CallUntil(200, 2, "GET", "/apikeys",
                      {{"Authorization", "Bearer " + again.Json().value("access_token", "")}})
                .status,
            200);
}

// Accounts are the cluster's committed state: a node stopped and started
// again (and the first node too) knows every account and key.
TEST_F(AccountsClusterTest, RestartedNodesKeepAccounts) {
  StartCluster();
  const std::string token = SignUpAndLogin(0, 1, "keeper");
  const std::string api_key = CreateKey(1, token).second;
  const HttpHeaders with_key = {{"X-API-Key", api_key}, {"X-Consistency", "strong"}};
  ASSERT_EQ(CallUntil(200, 2, "PUT", "/v1/kv/kept", with_key, {{"v", 1}}).status, 200);
  for (int node : {1, 0}) {
    SCOPED_TRACE(node);
    EXPECT_EQ(cluster_->Stop(node), 0) << cluster_->Describe();
    ASSERT_TRUE(cluster_->RestartAsStarted(node).ok()) << cluster_->Describe();
    EXPECT_EQ(CallUntil(200, node, "GET", "/v1/kv/kept", with_key).status, 200)
        << cluster_->Describe();
    EXPECT_EQ(CallUntil(200, node, "POST", "/login", {},
                        {{"email", "keeper@example.com"}, {"password", "securepass123"}})
                  .status,
              200);
    // Tokens signed before the restart still verify: the secret is committed.
    EXPECT_EQ(CallUntil(200, node, "GET", "/apikeys", {{"Authorization", "Bearer " + token}}).status,
              200);
  }
}

// A cluster commits its auth mode when it is bootstrapped: a node of the
// other mode cannot join it, either way, and says why.
TEST_F(AccountsClusterTest, NodeOfTheOtherAuthModeIsRefused) {
  for (bool cluster_auth : {true, false}) {
    SCOPED_TRACE(cluster_auth);
    ClusterOptions options = AuthClusterOptions(1);
    if (!cluster_auth) options.extra_flags.clear();
    cluster_ = std::make_unique<ClusterProcess>(options);
    ASSERT_TRUE(cluster_->Start().ok()) << cluster_->Describe();
    // The first node commits its mode just after it is ready.
    absl::SleepFor(absl::Milliseconds(500));
    ScopedTempDir dir;
    LogkvdProcess joiner(LOGKVD_PATH,
                         {absl::StrCat("--data-dir=", dir.Subdir("data")), "--listen=127.0.0.1:0",
                          "--http=127.0.0.1:0", "--node-id=odd",
                          "--cluster-secret=cluster-test-secret",
                          absl::StrCat("--seeds=", cluster_->address(0)),
                          cluster_auth ? "--auth=off" : "--auth=on", "--join-timeout-ms=20000"});
    absl::Status started = joiner.Start(absl::Seconds(30));
    EXPECT_FALSE(started.ok()) << joiner.Output();
    joiner.WaitExit(absl::Seconds(30));
    const std::string output = joiner.Output();
    // Refused at the peers' handshake (ClusterHello) or, past it, by the
    // committed mode (AddMember); either way the message names the mode.
    EXPECT_TRUE(absl::StrContains(output, "all have auth on or all off") ||
                absl::StrContains(output, cluster_auth ? "runs with accounts on"
                                                       : "runs with accounts off"))
        << output;
    EXPECT_TRUE(absl::StrContains(output, "--auth=")) << output;
    cluster_.reset();
  }
}

}  // namespace
}  // namespace logkv::test
