// Three real logkvd processes on loopback: they find each other through a
// seed, detect a killed member (suspect, then dead), take it back when it
// restarts, and handle graceful leave and join over HTTP (GET /nodes,
// POST /members/leave, POST /join). Every wait is a bounded poll.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

using nlohmann::json;

// Polls for this long at most; well above what gossip needs on a loaded machine.
constexpr absl::Duration kPatience = absl::Seconds(60);

// The nodes' --cluster-secret, which authorizes membership changes.
constexpr absl::string_view kSecret = "smoke";

absl::StatusOr<HttpAnswer> Call(int http_port, absl::string_view method, absl::string_view target,
                                absl::string_view body = "", absl::string_view secret = kSecret) {
  absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(http_port);
  if (!connection.ok()) return connection.status();
  HttpHeaders headers;
  if (!body.empty()) headers.emplace_back("Content-Type", "application/json");
  if (!secret.empty()) headers.emplace_back("X-Cluster-Secret", std::string(secret));
  if (absl::Status sent = connection->Send(BuildRequest(method, target, headers, body));
      !sent.ok()) {
    return sent;
  }
  return connection->Read();
}

// node id -> state, as GET /nodes on that node says; empty when it does not answer.
std::map<std::string, std::string> States(int http_port) {
  std::map<std::string, std::string> states;
  absl::StatusOr<HttpAnswer> answer = Call(http_port, "GET", "/nodes");
  if (!answer.ok() || answer->status != 200) return states;
  json nodes = answer->Json();
  if (!nodes.is_array()) return states;
  for (const json& node : nodes) {
    states[node.value("id", "")] = node.value("state", "");
  }
  return states;
}

// Each member's state in the committed configuration (the control plane),
// as /members/ on the node at http_port shows it: "active", "leaving", ...
std::map<std::string, std::string> CommittedStates(int http_port) {
  std::map<std::string, std::string> states;
  absl::StatusOr<HttpAnswer> answer = Call(http_port, "GET", "/members/");
  if (!answer.ok() || answer->status != 200) return states;
  json members = answer->Json();
  if (!members.is_array()) return states;
  for (const json& member : members) {
    states[member.value("id", "")] = member.value("member_state", "");
  }
  return states;
}

class MembershipSmokeTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& node : nodes_) {
      if (node != nullptr && node->running()) node->Stop();
    }
  }

  // Starts node index (n1, n2, ...) seeded through seed_port (0: no seeds).
  void StartNode(size_t index, int seed_port) {
    std::vector<std::string> args = {
        absl::StrCat("--data_dir=", dir_.path(), "/n", index + 1),
        absl::StrCat("--node_id=n", index + 1),
        "--threads=1",
        "--shards=1",
        "--gossip_interval_ms=200",
        "--dead_after_ms=2000",
        "--cluster_secret=smoke",
    };
    if (seed_port != 0) args.push_back(absl::StrCat("--seeds=127.0.0.1:", seed_port));
    if (nodes_.size() <= index) nodes_.resize(index + 1);
    nodes_[index] = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
    absl::Status started = nodes_[index]->Start();
    ASSERT_TRUE(started.ok()) << started << "\n" << nodes_[index]->Output();
  }

  // Waits until every node in `on` reports `who` in `state`. Returns
  // whether it happened; with seen_on_the_way, also whether that state was
  // observed at some poll before (to see Suspect before Dead).
  bool WaitForState(const std::vector<size_t>& on, const std::string& who,
                    const std::string& state,
                    std::map<size_t, bool>* seen_suspect = nullptr) {
    const absl::Time deadline = absl::Now() + kPatience;
    while (absl::Now() < deadline) {
      bool all = true;
      for (size_t node : on) {
        const auto states = States(nodes_[node]->http_port());
        auto it = states.find(who);
        const std::string now = it == states.end() ? "" : it->second;
        if (seen_suspect != nullptr && now == "suspect") (*seen_suspect)[node] = true;
        if (now != state) all = false;
      }
      if (all) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  bool WaitForAllAlive(const std::vector<size_t>& on, size_t members) {
    const absl::Time deadline = absl::Now() + kPatience;
    while (absl::Now() < deadline) {
      bool all = true;
      for (size_t node : on) {
        const auto states = States(nodes_[node]->http_port());
        size_t alive = 0;
        for (const auto& [id, state] : states) alive += state == "alive";
        if (alive != members || states.size() != members) all = false;
      }
      if (all) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  // Waits until every node in `on` shows `who` in the committed `state`.
  bool WaitForCommitted(const std::vector<size_t>& on, const std::string& who,
                        const std::string& state) {
    const absl::Time deadline = absl::Now() + kPatience;
    while (absl::Now() < deadline) {
      bool all = true;
      for (size_t node : on) {
        if (CommittedStates(nodes_[node]->http_port())[who] != state) all = false;
      }
      if (all) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  std::string Dump() {
    std::string out;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (nodes_[i] == nullptr || !nodes_[i]->running()) continue;
      absl::StrAppend(&out, "n", i + 1, ": ");
      for (const auto& [id, state] : States(nodes_[i]->http_port())) {
        absl::StrAppend(&out, id, "=", state, " ");
      }
      absl::StrAppend(&out, "\n");
      absl::StatusOr<HttpAnswer> health = Call(nodes_[i]->http_port(), "GET", "/health");
      if (health.ok()) absl::StrAppend(&out, "  ", health->body, "\n");
    }
    return out;
  }

  ScopedTempDir dir_;
  std::vector<std::unique_ptr<LogkvdProcess>> nodes_;
};

TEST_F(MembershipSmokeTest, JoinDetectFailureRejoinLeave) {
  StartNode(0, 0);
  const int seed = nodes_[0]->port();
  StartNode(1, seed);
  StartNode(2, seed);
  ASSERT_TRUE(WaitForAllAlive({0, 1, 2}, 3)) << Dump();
  // Each is an active member of the committed configuration, on every node.
  for (const char* who : {"n1", "n2", "n3"}) {
    ASSERT_TRUE(WaitForCommitted({0, 1, 2}, who, "active")) << who << "\n" << Dump();
  }

  absl::StatusOr<HttpAnswer> health = Call(nodes_[1]->http_port(), "GET", "/health");
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->Json()["member_count"], 3) << health->body;
  absl::StatusOr<HttpAnswer> servers = Call(nodes_[1]->http_port(), "GET", "/servers");
  ASSERT_TRUE(servers.ok());
  EXPECT_EQ(servers->Json().size(), 3u) << servers->body;
  absl::StatusOr<HttpAnswer> members = Call(nodes_[2]->http_port(), "GET", "/members/");
  ASSERT_TRUE(members.ok());
  ASSERT_EQ(members->Json().size(), 3u) << members->body;
  for (const json& member : members->Json()) {
    EXPECT_TRUE(member["joined_timestamp"].is_number_integer()) << member.dump();
    EXPECT_TRUE(member["last_seen"].is_number_integer()) << member.dump();
    // Seed 004's "address" is where its clients reach the member: HTTP.
    EXPECT_EQ(member["address"], member["http_address"]) << member.dump();
    EXPECT_TRUE(member["binary_address"].is_string()) << member.dump();
    EXPECT_NE(member["binary_address"], member["address"]) << member.dump();
  }

  // A crash: the others suspect n3, then declare it dead.
  nodes_[2]->Kill();
  std::map<size_t, bool> seen_suspect;
  ASSERT_TRUE(WaitForState({0, 1}, "n3", "dead", &seen_suspect)) << Dump();
  EXPECT_TRUE(seen_suspect[0] || seen_suspect[1]) << "n3 went dead without being suspected";

  // Restarted (same id and data, a new port), it is taken back as alive.
  StartNode(2, seed);
  ASSERT_TRUE(WaitForAllAlive({0, 1, 2}, 3)) << Dump();

  // Changing the membership needs the cluster secret: refused without it
  // (401) or with a wrong one (403), and nothing changes.
  for (const char* target : {"/members/leave", "/join", "/members/join"}) {
    absl::StatusOr<HttpAnswer> anonymous =
        Call(nodes_[2]->http_port(), "POST", target, "{}", /*secret=*/"");
    ASSERT_TRUE(anonymous.ok());
    EXPECT_EQ(anonymous->status, 401) << target << ": " << anonymous->body;
    absl::StatusOr<HttpAnswer> wrong =
        Call(nodes_[2]->http_port(), "POST", target, "{}", /*secret=*/"not-the-secret");
    ASSERT_TRUE(wrong.ok());
    EXPECT_EQ(wrong->status, 403) << target << ": " << wrong->body;
  }
  EXPECT_EQ(States(nodes_[0]->http_port())["n3"], "alive") << Dump();

  // Graceful leave: the others learn at once, with no suspicion.
  absl::StatusOr<HttpAnswer> left = Call(nodes_[2]->http_port(), "POST", "/members/leave", "{}");
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->status, 200) << left->body << "\n" << Dump() << nodes_[2]->Output();
  ASSERT_TRUE(WaitForState({0, 1}, "n3", "left")) << Dump();

  // And joins again through n1 (POST /join, seed 001's form).
  absl::StatusOr<HttpAnswer> joined =
      Call(nodes_[2]->http_port(), "POST", "/join", absl::StrCat("127.0.0.1:", seed));
  ASSERT_TRUE(joined.ok());
  ASSERT_EQ(joined->status, 200) << joined->body;
  EXPECT_GE(joined->Json()["members"].size(), 3u) << joined->body;
  ASSERT_TRUE(WaitForAllAlive({0, 1, 2}, 3)) << Dump();
  // And is a member of the committed configuration again.
  ASSERT_TRUE(WaitForCommitted({0, 1, 2}, "n3", "active")) << Dump();

  // Leaves again, and joins through n1's HTTP URL (seed 001's other form):
  // the node asks n1 for its binary-protocol address.
  left = Call(nodes_[2]->http_port(), "POST", "/members/leave", "{}");
  ASSERT_TRUE(left.ok());
  ASSERT_EQ(left->status, 200) << left->body;
  ASSERT_TRUE(WaitForState({0, 1}, "n3", "left")) << Dump();
  absl::StatusOr<HttpAnswer> url = Call(nodes_[2]->http_port(), "POST", "/join",
                                        absl::StrCat("http://127.0.0.1:", nodes_[0]->http_port()));
  ASSERT_TRUE(url.ok());
  ASSERT_EQ(url->status, 200) << url->body;
  ASSERT_TRUE(WaitForAllAlive({0, 1, 2}, 3)) << Dump();
  // An HTTP port named as host:port answers in HTTP: a clear 400 saying so
  // (not a frame-size error).
  absl::StatusOr<HttpAnswer> http_port = Call(
      nodes_[2]->http_port(), "POST", "/join", absl::StrCat("127.0.0.1:", nodes_[0]->http_port()));
  ASSERT_TRUE(http_port.ok());
  EXPECT_EQ(http_port->status, 400) << http_port->body;
  EXPECT_TRUE(absl::StrContains(http_port->body, "answered in HTTP")) << http_port->body;
  absl::StatusOr<HttpAnswer> bad = Call(nodes_[2]->http_port(), "POST", "/members/join", "{}");
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 400);

  // SIGTERM is a restart, not a leave: the node keeps its place (suspected,
  // then dead, never left) and comes back as itself.
  EXPECT_EQ(nodes_[1]->Stop(), 0);
  ASSERT_TRUE(WaitForState({0, 2}, "n2", "dead")) << Dump();
  StartNode(1, 0);  // no seeds: it remembers its cluster
  ASSERT_TRUE(WaitForAllAlive({0, 1, 2}, 3)) << Dump();
  for (const char* who : {"n1", "n2", "n3"}) {
    ASSERT_TRUE(WaitForCommitted({0, 1, 2}, who, "active"))
        << who << "\n" << Dump() << nodes_[2]->Output();
  }
}

// Once the other member left: the node that left writes nothing as if it
// were alone (it coordinates for the owner that stayed), and the one that
// stayed, restarted with its first command line (seeded through the node
// that left), confirms its view from that node's answer and serves strong
// operations; it may not leave.
TEST_F(MembershipSmokeTest, TheMemberThatStaysServesAfterARestart) {
  StartNode(0, 0);
  const int seed = nodes_[0]->port();
  StartNode(1, seed);
  ASSERT_TRUE(WaitForAllAlive({0, 1}, 2)) << Dump();
  absl::StatusOr<HttpAnswer> left = Call(nodes_[0]->http_port(), "POST", "/members/leave");
  ASSERT_TRUE(left.ok());
  ASSERT_EQ(left->status, 200) << left->body;
  ASSERT_TRUE(WaitForState({1}, "n1", "left")) << Dump();
  std::string body;  // of the last answer
  auto put = [this, &body](size_t node, absl::string_view consistency) {
    absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(nodes_[node]->http_port());
    EXPECT_TRUE(connection.ok()) << connection.status();
    if (!connection.ok()) return 0;
    HttpHeaders headers = {{"X-Consistency", std::string(consistency)}};
    if (!connection->Send(BuildRequest("PUT", "/v1/kv/after-leave", headers, "v")).ok()) return 0;
    absl::StatusOr<HttpAnswer> answer = connection->Read();
    body = answer.ok() ? answer->body : "";
    return answer.ok() ? answer->status : 0;
  };
  EXPECT_EQ(put(0, "strong"), 200) << body << "\n" << Dump();
  absl::StatusOr<HttpAnswer> owner = Call(nodes_[1]->http_port(), "GET", "/store/after-leave");
  ASSERT_TRUE(owner.ok());
  EXPECT_EQ(owner->status, 200) << "not written to the owner: " << owner->body;
  absl::StatusOr<HttpAnswer> gateway = Call(nodes_[0]->http_port(), "GET", "/store/after-leave");
  ASSERT_TRUE(gateway.ok());
  EXPECT_EQ(gateway->status, 404) << "the node that left kept a copy: " << gateway->body;

  ASSERT_EQ(nodes_[1]->Stop(), 0);
  StartNode(1, seed);
  int status = 0;
  for (const absl::Time give_up = absl::Now() + kPatience; absl::Now() < give_up;) {
    status = put(1, "strong");
    if (status == 200) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(status, 200) << body << "\n" << Dump();
  absl::StatusOr<HttpAnswer> last = Call(nodes_[1]->http_port(), "POST", "/members/leave");
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->status, 409) << last->body;
}

TEST_F(MembershipSmokeTest, TheOnlyMemberRefusesToLeave) {
  StartNode(0, 0);
  absl::StatusOr<HttpAnswer> left = Call(nodes_[0]->http_port(), "POST", "/members/leave");
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->status, 409) << left->body;
  EXPECT_EQ(States(nodes_[0]->http_port())["n1"], "alive");
}

TEST_F(MembershipSmokeTest, WrongClusterSecretKeepsANodeOut) {
  StartNode(0, 0);
  std::vector<std::string> args = {absl::StrCat("--data_dir=", dir_.path(), "/intruder"),
                                   "--node_id=intruder", "--threads=1", "--shards=1",
                                   "--gossip_interval_ms=200", "--cluster_secret=wrong",
                                   "--join_timeout_ms=3000",
                                   absl::StrCat("--seeds=127.0.0.1:", nodes_[0]->port())};
  // Its seed refuses it, so it cannot join the control plane: it does not
  // start (rather than serve alone what belongs to a cluster), and says why.
  LogkvdProcess intruder(LOGKVD_PATH, args);
  const absl::Status started = intruder.Start();
  EXPECT_FALSE(started.ok()) << intruder.Output();
  EXPECT_TRUE(absl::StrContains(intruder.Output(), "join")) << intruder.Output();
  // Nobody let it in.
  EXPECT_EQ(States(nodes_[0]->http_port()).count("intruder"), 0u) << Dump();
  EXPECT_EQ(CommittedStates(nodes_[0]->http_port()).count("intruder"), 0u) << Dump();
  intruder.Stop();
}

TEST_F(MembershipSmokeTest, FaultInjectionRouteOnlyWithTheFlag) {
  StartNode(0, 0);
  absl::StatusOr<HttpAnswer> off =
      Call(nodes_[0]->http_port(), "POST", "/internal/fault", R"({"drop":[]})");
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off->status, 404);
#ifdef LOGKV_FAULT_INJECTION
  LogkvdProcess faulty(LOGKVD_PATH, {absl::StrCat("--data_dir=", dir_.path(), "/faulty"),
                                     "--node_id=faulty", "--threads=1", "--shards=1",
                                     "--fault_injection"});
  ASSERT_TRUE(faulty.Start().ok()) << faulty.Output();
  absl::StatusOr<HttpAnswer> on =
      Call(faulty.http_port(), "POST", "/internal/fault", R"({"drop":["127.0.0.1:1"]})");
  ASSERT_TRUE(on.ok());
  EXPECT_EQ(on->status, 200) << on->body;
  faulty.Stop();
#endif
}

}  // namespace
}  // namespace logkv::test
