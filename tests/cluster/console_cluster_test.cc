// The console's data browser across a cluster of real logkvd processes
// (docs/console.md): with --auth=on and two replicas of each key on three
// nodes, keys written through node 0 are listed, a page at a time, through
// node 2 (all of them, once each, only the caller's); a watch open on node 1
// sees the changes written through node 0, once each, though node 1 holds
// only some of the keys; and a stream resumed on node 2 with the last id
// node 1's stream sent carries on without loss and without starting over.
//
// Ports are chosen at run time on loopback; every wait is bounded.
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "tests/cluster/cluster_process.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

using Json = nlohmann::json;

constexpr absl::Duration kWait = absl::Seconds(15);

class ConsoleClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterOptions options;
    options.logkvd_binary = LOGKVD_PATH;
    options.nodes = 3;
    options.replicas = 2;
    // Many requests of one user in a short while: no per-user rate limit.
    options.extra_flags = {AuthOn() ? "--auth=on" : "--auth=off", "--rate-limit=0"};
    cluster_ = std::make_unique<ClusterProcess>(options);
    ASSERT_TRUE(cluster_->Start().ok()) << cluster_->Describe();
    ASSERT_TRUE(cluster_->WaitAllAlive().ok()) << cluster_->Describe();
  }

  virtual bool AuthOn() const { return true; }

  absl::StatusOr<HttpAnswer> Call(int node, absl::string_view method, absl::string_view target,
                                  HttpHeaders headers = {}, absl::string_view body = "") const {
    return HttpExchange(cluster_->http_port(node), method, target, headers, body,
                        absl::Seconds(15));
  }

  // Polls until the call answers status (bounded); the last answer.
  HttpAnswer CallUntil(int status, int node, absl::string_view method, absl::string_view target,
                       const HttpHeaders& headers = {}, absl::string_view body = "") const {
    const absl::Time deadline = absl::Now() + kWait;
    HttpAnswer last;
    while (true) {
      absl::StatusOr<HttpAnswer> answer = Call(node, method, target, headers, body);
      if (answer.ok()) last = *answer;
      if (last.status == status || absl::Now() >= deadline) return last;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  // A user signed up through node 0 and an API key of theirs (read, write);
  // *id the user's id.
  std::string ApiKey(const std::string& name, uint64_t* id = nullptr) {
    const HttpHeaders json_type = {{"Content-Type", "application/json"}};
    const Json signup = {{"email", name + "@example.com"},
                         {"username", name},
                         {"password", "securepass123"}};
    HttpAnswer created = CallUntil(201, 0, "POST", "/signup", json_type, signup.dump());
    EXPECT_EQ(created.status, 201) << created.body;
    if (id != nullptr) *id = created.Json().value("id", uint64_t{0});
    HttpAnswer login =
        CallUntil(200, 0, "POST", "/login", json_type,
                  Json{{"email", name + "@example.com"}, {"password", "securepass123"}}.dump());
    EXPECT_EQ(login.status, 200) << login.body;
    HttpAnswer key = CallUntil(
        201, 0, "POST", "/apikeys",
        {{"Authorization", "Bearer " + login.Json().value("access_token", "")}, json_type[0]},
        Json{{"name", "console"}, {"scopes", {"read", "write"}}}.dump());
    EXPECT_EQ(key.status, 201) << key.body;
    return key.Json().value("key", "");
  }

  // PUT through node (a new key may need a moment to be known everywhere).
  void Put(int node, const std::string& api_key, const std::string& key) {
    HttpHeaders headers;
    if (!api_key.empty()) headers.emplace_back("X-API-Key", api_key);
    HttpAnswer answer = CallUntil(200, node, "PUT", "/v1/kv/" + key, headers, "value of " + key);
    ASSERT_EQ(answer.status, 200) << key << ": " << answer.body;
  }

  // Whether node's engine holds key (GET /store reads the node's own copy).
  bool Holds(int node, const std::string& api_key, const std::string& key) {
    absl::StatusOr<HttpAnswer> answer = Call(node, "GET", "/store/" + key, {{"X-API-Key", api_key}});
    return answer.ok() && answer->status == 200;
  }

  std::unique_ptr<ClusterProcess> cluster_;
};

// Reads the stream until it holds text, within a bounded wait.
bool StreamHolds(HttpConnection& stream, absl::string_view text) {
  const absl::Time deadline = absl::Now() + kWait;
  while (!absl::StrContains(stream.buffered(), text)) {
    if (absl::Now() > deadline) return false;
    if (stream.WaitClosed(absl::Milliseconds(50))) return absl::StrContains(stream.buffered(), text);
  }
  return true;
}

size_t Count(absl::string_view text, absl::string_view what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != absl::string_view::npos;
       at = text.find(what, at + what.size())) {
    ++count;
  }
  return count;
}

std::string LastEventId(const std::string& stream) {
  const size_t at = stream.rfind("\nid: ");
  if (at == std::string::npos) return "";
  const size_t begin = at + 5;
  return stream.substr(begin, stream.find('\n', begin) - begin);
}

std::string KeyEvent(const std::string& key) { return absl::StrCat("\"key\":\"", key, "\""); }

TEST_F(ConsoleClusterTest, ListsEveryKeyOfTheClusterPageByPageThroughAnyNode) {
  const std::string alice = ApiKey("alice");
  const std::string bob = ApiKey("bob");
  std::vector<std::string> written;
  for (int i = 0; i < 90; ++i) {
    written.push_back(absl::StrFormat("list/%03d", i));
    Put(0, alice, written.back());
  }
  Put(0, alice, "other/1");
  Put(0, bob, "list/000");  // another user's key of the same name
  Put(0, bob, "list/500");

  // Node 2 holds only some of them (two replicas of three nodes): the
  // listing must ask the others.
  int elsewhere = 0;
  for (const std::string& key : written) elsewhere += Holds(2, alice, key) ? 0 : 1;
  EXPECT_GT(elsewhere, 0);

  std::vector<std::string> listed;
  std::string cursor;
  for (int page = 0; page < 40; ++page) {
    std::string target = "/v1/kv?prefix=list%2F&limit=7";
    if (!cursor.empty()) {
      target += "&cursor=" + absl::StrReplaceAll(cursor, {{"+", "%2B"}, {"/", "%2F"}, {"=", "%3D"}});
    }
    absl::StatusOr<HttpAnswer> answer = Call(2, "GET", target, {{"X-API-Key", alice}});
    ASSERT_TRUE(answer.ok()) << answer.status();
    ASSERT_EQ(answer->status, 200) << answer->body;
    const Json body = answer->Json();
    EXPECT_LE(body["keys"].size(), 7u) << body;
    EXPECT_FALSE(body.contains("unreachable")) << body;
    for (const Json& item : body["keys"]) {
      listed.push_back(item.value("key", ""));
      EXPECT_EQ(item.value("size", 0), static_cast<int>(("value of " + listed.back()).size()));
    }
    if (body["next_cursor"].is_null()) break;
    cursor = body["next_cursor"];
  }
  // All of them, in order, once each; none of the other user's.
  EXPECT_EQ(listed, written);
}

TEST_F(ConsoleClusterTest, WatchOnOneNodeSeesWritesThroughAnotherAndResumesOnAThird) {
  const std::string alice = ApiKey("alice");
  const std::string bob = ApiKey("bob");
  // A key written before the stream opens, on both its replicas before the
  // answer (strong), so no replica applies it after the stream opened.
  HttpAnswer before = CallUntil(200, 0, "PUT", "/v1/kv/w/before",
                                {{"X-API-Key", alice}, {"X-Consistency", "strong"}}, "before");
  ASSERT_EQ(before.status, 200) << before.body;

  absl::StatusOr<HttpConnection> stream = HttpConnection::Connect(cluster_->http_port(1));
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(
      stream->Send(BuildRequest("GET", "/v1/watch?prefix=w%2F", {{"X-API-Key", alice}})).ok());
  ASSERT_TRUE(StreamHolds(*stream, "event: ready")) << stream->buffered();

  std::vector<std::string> keys;
  for (int i = 0; i < 10; ++i) {
    keys.push_back(absl::StrCat("w/", i));
    Put(0, alice, keys.back());
  }
  Put(0, bob, "w/bob");
  for (const std::string& key : keys) {
    ASSERT_TRUE(StreamHolds(*stream, KeyEvent(key))) << key << "\n" << stream->buffered();
  }
  // Node 1 holds only some of them: the others' changes came from the
  // members that hold them.
  int elsewhere = 0;
  for (const std::string& key : keys) elsewhere += Holds(1, alice, key) ? 0 : 1;
  EXPECT_GT(elsewhere, 0);
  // Each once, though two replicas wrote each: a later put shows that
  // everything before it was read from every member.
  Put(0, alice, "w/last");
  ASSERT_TRUE(StreamHolds(*stream, KeyEvent("w/last"))) << stream->buffered();
  absl::SleepFor(absl::Milliseconds(600));  // a few polls more, for any duplicate
  ASSERT_TRUE(StreamHolds(*stream, "\nid: ")) << stream->buffered();
  const std::string events = stream->buffered();
  for (const std::string& key : keys) EXPECT_EQ(Count(events, KeyEvent(key)), 1u) << key;
  EXPECT_FALSE(absl::StrContains(events, "w/bob")) << events;
  EXPECT_FALSE(absl::StrContains(events, "w/before")) << events;
  EXPECT_FALSE(absl::StrContains(events, "event: reset")) << events;
  const std::string id = LastEventId(events);
  const Json cursor = Json::parse(id, nullptr, false);
  ASSERT_TRUE(cursor.is_object()) << id;
  EXPECT_EQ(cursor.size(), 3u) << id;  // every member's place
  stream->Close();

  // Written while no stream is open; resumed on another node with the id.
  std::vector<std::string> later;
  for (int i = 10; i < 15; ++i) {
    later.push_back(absl::StrCat("w/", i));
    Put(0, alice, later.back());
  }
  absl::StatusOr<HttpConnection> resumed = HttpConnection::Connect(cluster_->http_port(2));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE(resumed->Send(BuildRequest("GET", "/v1/watch?prefix=w%2F",
                                         {{"X-API-Key", alice}, {"Last-Event-ID", id}}))
                  .ok());
  for (const std::string& key : later) {
    ASSERT_TRUE(StreamHolds(*resumed, KeyEvent(key))) << key << "\n" << resumed->buffered();
  }
  Put(0, alice, "w/after");
  ASSERT_TRUE(StreamHolds(*resumed, KeyEvent("w/after"))) << resumed->buffered();
  const std::string resumed_events = resumed->buffered();
  EXPECT_TRUE(absl::StrContains(resumed_events, "\"resumed\":true")) << resumed_events;
  EXPECT_FALSE(absl::StrContains(resumed_events, "event: reset")) << resumed_events;
  // Not from the beginning: what came before the first stream opened is
  // not sent, and what it sent comes again at most once (a replica's copy
  // the first stream had not read yet when it sent its last id).
  EXPECT_FALSE(absl::StrContains(resumed_events, "w/before")) << resumed_events;
  for (const std::string& key : keys) EXPECT_LE(Count(resumed_events, KeyEvent(key)), 1u) << key;
  for (const std::string& key : later) EXPECT_EQ(Count(resumed_events, KeyEvent(key)), 1u) << key;
}

// A watch of a namespace another user shares in part: the events of every
// member are checked against the ACLs on the node the stream is open on, so
// keys the caller may not read never reach it, however many members hold them.
TEST_F(ConsoleClusterTest, AWatchOfASharedNamespaceCarriesOnlyWhatTheCallerMayRead) {
  uint64_t alice_id = 0;
  const std::string alice = ApiKey("alice", &alice_id);
  const std::string bob = ApiKey("bob");
  const HttpHeaders as_alice = {{"X-API-Key", alice}, {"Content-Type", "application/json"}};
  ASSERT_EQ(CallUntil(200, 0, "PUT", "/api/acl?prefix=public/", as_alice,
                      R"({"mode":"cdwr-------r"})")
                .status,
            200);
  absl::StatusOr<HttpConnection> stream = HttpConnection::Connect(cluster_->http_port(1));
  ASSERT_TRUE(stream.ok()) << stream.status();
  // Opened once node 1 knows the entry (until then the watch is refused).
  const std::string check = absl::StrCat("/api/acl/check?prefix=public/&namespace=", alice_id);
  const absl::Time deadline = absl::Now() + kWait;
  HttpAnswer permissions;
  do {
    permissions = CallUntil(200, 1, "GET", check, {{"X-API-Key", bob}});
    if (permissions.Json().value("permissions", "") == "---r") break;
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  ASSERT_EQ(permissions.Json().value("permissions", ""), "---r") << permissions.body;
  ASSERT_TRUE(stream
                  ->Send(BuildRequest("GET", "/v1/watch",
                                      {{"X-API-Key", bob}, {"X-Namespace", absl::StrCat(alice_id)}}))
                  .ok());
  ASSERT_TRUE(StreamHolds(*stream, "event: ready")) << stream->buffered();
  std::vector<std::string> shared;
  for (int i = 0; i < 12; ++i) {
    Put(0, alice, absl::StrCat("private/", i));
    shared.push_back(absl::StrCat("public/", i));
    Put(0, alice, shared.back());
  }
  for (const std::string& key : shared) {
    ASSERT_TRUE(StreamHolds(*stream, KeyEvent(key))) << key << "\n" << stream->buffered();
  }
  int elsewhere = 0;  // private keys node 1 does not hold: only a member's events name them
  for (int i = 0; i < 12; ++i) {
    elsewhere += Holds(1, alice, absl::StrCat("private/", i)) ? 0 : 1;
  }
  EXPECT_GT(elsewhere, 0);
  Put(0, alice, "public/last");
  ASSERT_TRUE(StreamHolds(*stream, KeyEvent("public/last"))) << stream->buffered();
  absl::SleepFor(absl::Milliseconds(600));  // a few polls more
  EXPECT_FALSE(absl::StrContains(stream->buffered(), "private/")) << stream->buffered();
  EXPECT_FALSE(absl::StrContains(stream->buffered(), "value of private")) << stream->buffered();
}

// Without auth, a watch of every key carries no key of the server's own
// (hints, membership) from any member, as none from the node it is open on.
class ConsoleClusterAuthOffTest : public ConsoleClusterTest {
 protected:
  bool AuthOn() const override { return false; }
};

TEST_F(ConsoleClusterAuthOffTest, AWatchOfEveryKeyCarriesNoServerKeysOfAnyMember) {
  absl::StatusOr<HttpConnection> stream = HttpConnection::Connect(cluster_->http_port(1));
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(stream->Send(BuildRequest("GET", "/v1/watch", {})).ok());
  ASSERT_TRUE(StreamHolds(*stream, "event: ready")) << stream->buffered();
  // Node 2 down: writes through node 0 to keys node 2 holds leave hints
  // (server keys) on node 0.
  cluster_->Kill(2);
  std::vector<std::string> keys;
  for (int i = 0; i < 12; ++i) {
    keys.push_back(absl::StrCat("k/", i));
    Put(0, "", keys.back());
  }
  for (const std::string& key : keys) {
    ASSERT_TRUE(StreamHolds(*stream, KeyEvent(key))) << key << "\n" << stream->buffered();
  }
  // Some of them wait as hints on a member the stream reads from.
  absl::StatusOr<std::string> metrics = cluster_->MetricsText(0);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  bool hinted = false;
  for (absl::string_view line : absl::StrSplit(*metrics, '\n')) {
    hinted |= absl::StartsWith(line, "logkv_hinted_handoff_hints{") && !absl::EndsWith(line, " 0");
  }
  EXPECT_TRUE(hinted) << *metrics;
  absl::SleepFor(absl::Milliseconds(600));  // a few polls more
  const std::string events = stream->buffered();
  EXPECT_FALSE(absl::StrContains(events, "\\u0000")) << events;
  EXPECT_FALSE(absl::StrContains(events, "hint/")) << events;
}

// ReadKeys and ReadEvents read every tenant's keys, ReadFigures the node's
// figures: a client connection (no ClusterHello with the cluster secret) is
// refused them.
TEST_F(ConsoleClusterTest, AClientCannotReadKeysOrEventsAsAPeer) {
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(cluster_->port(0));
  ASSERT_TRUE(connection.ok()) << connection.status();
  auto status_of = [&connection](flatbuffers::FlatBufferBuilder& builder,
                                 protocol::Operation type, flatbuffers::Offset<void> operation) {
    protocol::RequestBuilder request(builder);
    request.add_request_id(7);
    request.add_operation_type(type);
    request.add_operation(operation);
    builder.FinishSizePrefixed(request.Finish());
    EXPECT_TRUE(connection->SendBytes(protocol::FrameOf(builder)).ok());
    absl::StatusOr<std::string> answer = connection->ReadFrame();
    EXPECT_TRUE(answer.ok()) << answer.status();
    if (!answer.ok()) return protocol::StatusCode::Ok;
    return flatbuffers::GetSizePrefixedRoot<protocol::Response>(answer->data())->status();
  };
  flatbuffers::FlatBufferBuilder keys(128);
  EXPECT_EQ(status_of(keys, protocol::Operation::ReadKeys,
                      protocol::CreateReadKeys(keys, 0, 0, 10).Union()),
            protocol::StatusCode::PermissionDenied);
  flatbuffers::FlatBufferBuilder events(128);
  EXPECT_EQ(status_of(events, protocol::Operation::ReadEvents,
                      protocol::CreateReadEvents(events, 0, 0, 10).Union()),
            protocol::StatusCode::PermissionDenied);
  flatbuffers::FlatBufferBuilder figures(64);
  EXPECT_EQ(status_of(figures, protocol::Operation::ReadFigures,
                      protocol::CreateReadFigures(figures).Union()),
            protocol::StatusCode::PermissionDenied);
}

}  // namespace
}  // namespace logkv::test
