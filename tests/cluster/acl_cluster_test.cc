// Users, groups and ACLs across a cluster of three real logkvd processes
// with --auth=on (docs/security.md): the administrator's routes refuse
// others; every data route of every dialect and every data operation of the
// binary protocol refuse and allow as the ACL table says, through every
// node; a user removed from a group loses access on every node.
//
// Changes are made on one node and applied by the others within a
// heartbeat: checks on other nodes poll (bounded), as a client would retry.
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "tests/cluster/cluster_process.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

namespace p = ::logkv::protocol;
using Json = nlohmann::json;

constexpr absl::Duration kPropagation = absl::Seconds(15);
constexpr int kNodes = 3;

struct User {
  uint64_t id = 0;
  std::string key;  // API key
};

enum class Op { kRead, kWrite, kDelete };
const char* OpName(Op op) {
  return op == Op::kRead ? "read" : op == Op::kWrite ? "write" : "delete";
}

class AclClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterOptions options;
    options.logkvd_binary = LOGKVD_PATH;
    options.nodes = kNodes;
    options.replicas = kNodes;
    options.extra_flags = {"--auth=on", "--rate-limit=0"};
    Customize(&options);
    cluster_ = std::make_unique<ClusterProcess>(options);
    ASSERT_TRUE(cluster_->Start().ok()) << cluster_->Describe();
    admin_ = NewUser(0, "admin");
    owner_ = NewUser(1, "owner");
    member_ = NewUser(2, "member");
    other_ = NewUser(0, "other");
    ASSERT_EQ(admin_.id, 1u);
    // Every node knows every key before the tests begin.
    for (int node = 0; node < kNodes; ++node) {
      for (const User* user : {&admin_, &owner_, &member_, &other_}) {
        ASSERT_EQ(CallUntil(200, node, "GET", "/api/acl/check", As(*user)).status, 200) << node;
      }
    }
  }

  // Changes the cluster's options before it starts.
  virtual void Customize(ClusterOptions*) {}

  HttpAnswer Call(int node, absl::string_view method, absl::string_view target,
                  HttpHeaders headers = {}, absl::string_view body = "") const {
    if (!body.empty()) headers.emplace_back("Content-Type", "application/json");
    absl::StatusOr<HttpAnswer> answer = HttpExchange(cluster_->http_port(node), method, target,
                                                     headers, body, absl::Seconds(15));
    if (!answer.ok()) {
      HttpAnswer failed;
      failed.status = 0;
      failed.body = answer.status().ToString();
      return failed;
    }
    return *answer;
  }

  // Polls until pred(answer) holds (bounded); the last answer.
  HttpAnswer CallUntil(const std::function<bool(const HttpAnswer&)>& pred, int node,
                       absl::string_view method, absl::string_view target,
                       HttpHeaders headers = {}, absl::string_view body = "") const {
    const absl::Time deadline = absl::Now() + kPropagation;
    while (true) {
      HttpAnswer answer = Call(node, method, target, headers, body);
      if (pred(answer) || absl::Now() >= deadline) return answer;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  HttpAnswer CallUntil(int status, int node, absl::string_view method, absl::string_view target,
                       HttpHeaders headers = {}, absl::string_view body = "") const {
    return CallUntil([status](const HttpAnswer& a) { return a.status == status; }, node, method,
                     target, std::move(headers), body);
  }

  User NewUser(int node, const std::string& name) {
    const Json signup = {{"email", name + "@example.com"},
                         {"username", name},
                         {"password", "securepass123"}};
    HttpAnswer created = CallUntil(201, node, "POST", "/signup", {}, signup.dump());
    EXPECT_EQ(created.status, 201) << created.body;
    return User{created.Json().value("id", uint64_t{0}),
                KeyOf(node, name, R"({"name":"k","scopes":["read","write"]})")};
  }

  // A second key of user `name` (made by NewUser) holding the read scope only.
  User ReadOnlyKey(int node, const User& user, const std::string& name) {
    return User{user.id, KeyOf(node, name, R"({"name":"read","scopes":["read"]})")};
  }

  // A new API key of user `name` (POST /apikeys with `request`), signed in on node.
  std::string KeyOf(int node, const std::string& name, absl::string_view request) {
    HttpAnswer login = CallUntil(200, node, "POST", "/login", {},
                                 Json{{"email", name + "@example.com"},
                                      {"password", "securepass123"}}
                                     .dump());
    EXPECT_EQ(login.status, 200) << login.body;
    const std::string token = login.Json().value("access_token", "");
    HttpAnswer key = CallUntil(201, node, "POST", "/apikeys", {{"Authorization", "Bearer " + token}},
                               request);
    EXPECT_EQ(key.status, 201) << key.body;
    return key.Json().value("key", "");
  }

  static HttpHeaders As(const User& user, uint64_t ns = 0) {
    HttpHeaders headers = {{"X-API-Key", user.key}};
    if (ns != 0) headers.emplace_back("X-Namespace", absl::StrCat(ns));
    return headers;
  }

  // Waits until `node` reports `permissions` for user at prefix of ns.
  void AwaitPermissions(int node, const User& user, uint64_t ns, const std::string& prefix,
                        const std::string& permissions) {
    const std::string target = absl::StrCat("/api/acl/check?namespace=", ns, "&prefix=", prefix);
    HttpAnswer answer = CallUntil(
        [&](const HttpAnswer& a) {
          return a.status == 200 && a.Json().value("permissions", "") == permissions;
        },
        node, "GET", target, As(user));
    ASSERT_EQ(answer.Json().value("permissions", ""), permissions)
        << "node " << node << " " << target << ": " << answer.body;
  }

  // ---- Every HTTP dialect --------------------------------------------------------

  // One operation on key (in ns) through every dialect on node; the HTTP
  // statuses, each tagged with its route.
  std::vector<std::pair<std::string, int>> HttpStatuses(int node, const User& as, uint64_t ns,
                                                        const std::string& key, Op op) {
    const HttpHeaders h = As(as, ns);
    std::vector<std::pair<std::string, int>> out;
    auto add = [&](std::string route, const HttpAnswer& answer) {
      out.emplace_back(absl::StrCat(route, " -> ", answer.body.substr(0, 120)), answer.status);
    };
    const std::string b64 = absl::Base64Escape(key);
    switch (op) {
      case Op::kRead:
        add("GET /v1/kv/" + key, Call(node, "GET", "/v1/kv/" + key, h));
        add("GET /store/" + key, Call(node, "GET", "/store/" + key, h));
        add("GET /kv?key=" + key, Call(node, "GET", "/kv?key=" + key, h));
        add("GET /v0/kv/key/" + b64, Call(node, "GET", "/v0/kv/key/" + b64, h));
        add("GET /get/" + key, Call(node, "GET", "/get/" + key, h));
        add("GET /kv/" + key, Call(node, "GET", "/kv/" + key, h));
        add("GET /v1/kv?prefix=" + key, Call(node, "GET", "/v1/kv?prefix=" + key, h));
        break;
      case Op::kWrite:
        add("PUT /v1/kv/" + key, Call(node, "PUT", "/v1/kv/" + key, h, R"("v")"));
        add("PUT /kv?key=" + key, Call(node, "PUT", "/kv?key=" + key, h, R"("v")"));
        add("POST /v0/kv", Call(node, "POST", "/v0/kv", h,
                                Json{{"key", b64}, {"value", absl::Base64Escape("v")}}.dump()));
        add("PUT /put/" + key, Call(node, "PUT", "/put/" + key, h, R"({"value":1})"));
        add("PUT /kv/" + key, Call(node, "PUT", "/kv/" + key, h, R"({"d":1})"));
        break;
      case Op::kDelete:
        add("DELETE /v1/kv/" + key, Call(node, "DELETE", "/v1/kv/" + key, h));
        add("DELETE /kv?key=" + key, Call(node, "DELETE", "/kv?key=" + key, h));
        add("DELETE /kv/" + key, Call(node, "DELETE", "/kv/" + key, h));
        break;
    }
    return out;
  }

  // ---- The binary protocol -------------------------------------------------------

  static std::string Frame(flatbuffers::FlatBufferBuilder& b, uint64_t id, p::Operation type,
                           flatbuffers::Offset<void> operation, uint64_t ns) {
    p::RequestBuilder request(b);
    request.add_request_id(id);
    request.add_operation_type(type);
    request.add_operation(operation);
    request.add_namespace_user(ns);
    b.FinishSizePrefixed(request.Finish());
    return std::string(p::FrameOf(b));
  }

  // The statuses of every data operation of op's kind on key in ns.
  std::vector<std::pair<std::string, p::StatusCode>> BinaryStatuses(int node, const User& as,
                                                                     uint64_t ns,
                                                                     const std::string& key,
                                                                     Op op) {
    std::vector<std::pair<std::string, p::StatusCode>> out;
    absl::StatusOr<RawConnection> c = RawConnection::Connect(cluster_->port(node));
    if (!c.ok()) {
      ADD_FAILURE() << c.status();
      return out;
    }
    uint64_t id = 1;
    auto call = [&](const std::string& name, const std::string& frame) {
      const p::Response* response = nullptr;
      std::string answer;
      if (c->SendBytes(frame).ok()) {
        absl::StatusOr<std::string> read = c->ReadFrame();
        if (read.ok()) {
          answer = *std::move(read);
          response = AsResponse(answer);
        }
      }
      if (response == nullptr) {
        out.emplace_back(name, p::StatusCode::Internal);
        return;
      }
      p::StatusCode status = response->status();
      if (status == p::StatusCode::Ok && response->result_type() == p::Result::BatchResult) {
        status = response->result_as_BatchResult()->items()->Get(0)->status();
      }
      out.emplace_back(name, status);
    };
    {
      flatbuffers::FlatBufferBuilder b;
      auto token = b.CreateString(as.key);
      auto name = b.CreateString("acl_cluster_test");
      call("Hello", Frame(b, id++, p::Operation::Hello,
                          p::CreateHello(b, p::kProtocolVersion, token, name).Union(), 0));
    }
    auto k = [&](flatbuffers::FlatBufferBuilder& b) { return Bytes(b, key); };
    switch (op) {
      case Op::kRead: {
        flatbuffers::FlatBufferBuilder b1, b2, b3, b4;
        call("Get", Frame(b1, id++, p::Operation::Get, p::CreateGet(b1, k(b1)).Union(), ns));
        call("GetVersion", Frame(b2, id++, p::Operation::GetVersion,
                                 p::CreateGetVersion(b2, k(b2), 1).Union(), ns));
        call("Scan", Frame(b3, id++, p::Operation::Scan, p::CreateScan(b3, k(b3)).Union(), ns));
        call("Watch", Frame(b4, id++, p::Operation::Watch, p::CreateWatch(b4, k(b4)).Union(), ns));
        break;
      }
      case Op::kWrite: {
        flatbuffers::FlatBufferBuilder b1, b2;
        auto v1 = Bytes(b1, "bin");
        auto key1 = k(b1);
        p::PutBuilder put(b1);
        put.add_key(key1);
        put.add_value(v1);
        call("Put", Frame(b1, id++, p::Operation::Put, put.Finish().Union(), ns));
        auto v2 = Bytes(b2, "batch");
        std::vector<flatbuffers::Offset<p::BatchItem>> items = {
            p::CreateBatchItem(b2, /*delete_=*/false, k(b2), v2)};
        call("Batch(put)", Frame(b2, id++, p::Operation::Batch,
                                 p::CreateBatch(b2, b2.CreateVector(items)).Union(), ns));
        break;
      }
      case Op::kDelete: {
        flatbuffers::FlatBufferBuilder b1, b2;
        call("Delete",
             Frame(b1, id++, p::Operation::Delete, p::CreateDelete(b1, k(b1)).Union(), ns));
        std::vector<flatbuffers::Offset<p::BatchItem>> items = {
            p::CreateBatchItem(b2, /*delete_=*/true, k(b2))};
        call("Batch(delete)", Frame(b2, id++, p::Operation::Batch,
                                    p::CreateBatch(b2, b2.CreateVector(items)).Union(), ns));
        break;
      }
    }
    return out;
  }

  // Every route and operation of op's kind allows (or refuses) as expected.
  void Expect(int node, const User& as, uint64_t ns, const std::string& key, Op op, bool allowed,
              const std::string& why) {
    for (const auto& [route, status] : HttpStatuses(node, as, ns, key, op)) {
      if (allowed) {
        EXPECT_TRUE(status == 200 || status == 201 || status == 204 || status == 404)
            << why << ": node " << node << " " << OpName(op) << " " << route << " (" << status
            << ")";
      } else {
        EXPECT_EQ(status, 403) << why << ": node " << node << " " << OpName(op) << " " << route;
      }
    }
    for (const auto& [operation, status] : BinaryStatuses(node, as, ns, key, op)) {
      if (operation == "Hello") {
        EXPECT_EQ(status, p::StatusCode::Ok);
        continue;
      }
      if (allowed) {
        EXPECT_TRUE(status == p::StatusCode::Ok || status == p::StatusCode::NotFound)
            << why << ": node " << node << " binary " << operation << " "
            << p::EnumNameStatusCode(status);
      } else {
        EXPECT_EQ(status, p::StatusCode::PermissionDenied)
            << why << ": node " << node << " binary " << operation << " "
            << p::EnumNameStatusCode(status);
      }
    }
  }

  void SetAcl(int node, const User& as, const std::string& prefix, const Json& body) {
    HttpAnswer set = Call(node, "PUT", "/api/acl?prefix=" + prefix, As(as), body.dump());
    ASSERT_EQ(set.status, 200) << set.body;
  }

  std::unique_ptr<ClusterProcess> cluster_;
  User admin_, owner_, member_, other_;
};

TEST_F(AclClusterTest, AdministratorRoutesRefuseOthers) {
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"GET", "/api/users"},          {"POST", "/api/users"},   {"GET", "/api/users/2"},
      {"PUT", "/api/users/2"},        {"DELETE", "/api/users/2"}, {"GET", "/api/groups"},
      {"POST", "/api/groups"},        {"GET", "/api/groups/1"}, {"PUT", "/api/groups/1"},
      {"DELETE", "/api/groups/1"},    {"POST", "/api/groups/1/members"},
      {"DELETE", "/api/groups/1/members/2"}};
  for (int node = 0; node < kNodes; ++node) {
    for (const auto& [method, target] : routes) {
      EXPECT_EQ(Call(node, method, target).status, 401) << method << " " << target;
      EXPECT_EQ(Call(node, method, target, As(owner_), "{}").status, 403)
          << method << " " << target;
    }
    EXPECT_EQ(Call(node, "GET", "/api/acl?prefix=x").status, 401);
    EXPECT_EQ(Call(node, "PUT", "/api/acl?prefix=x", {}, R"({"mode":"f00"})").status, 401);
    EXPECT_EQ(Call(node, "DELETE", "/api/acl?prefix=x").status, 401);
    EXPECT_EQ(Call(node, "GET", "/api/acl/check?prefix=x").status, 401);
    // Another user's namespace: its user's or an administrator's.
    EXPECT_EQ(Call(node, "GET", absl::StrCat("/api/acl?namespace=", owner_.id), As(other_)).status,
              403);
    EXPECT_EQ(Call(node, "GET", "/v1/kv/x", {{"X-Namespace", "2"}}).status, 401);
  }
  // The namespace's user with a key of the read scope: sees its ACLs, changes none.
  const User reader = ReadOnlyKey(0, owner_, "owner");
  const std::string own = absl::StrCat("/api/acl?prefix=x&namespace=", owner_.id);
  for (int node = 0; node < kNodes; ++node) {
    EXPECT_EQ(CallUntil(200, node, "GET", own, As(reader)).status, 200) << node;
    for (const char* method : {"PUT", "DELETE"}) {
      HttpAnswer refused = Call(node, method, own, As(reader), R"({"mode":"cdwr--------"})");
      EXPECT_EQ(refused.status, 403) << method << " " << refused.body;
      EXPECT_NE(refused.body.find("missing scope"), std::string::npos) << refused.body;
    }
  }
  // The administrator's, on any node: users, then a group and a member.
  HttpAnswer users = CallUntil(
      [](const HttpAnswer& a) { return a.status == 200 && a.Json()["users"].size() == 4; }, 2,
      "GET", "/api/users", As(admin_));
  ASSERT_EQ(users.status, 200) << users.body;
  EXPECT_EQ(users.Json()["users"].size(), 4u) << users.body;
  EXPECT_TRUE(users.Json()["users"][0].value("is_admin", false));
  HttpAnswer group = Call(1, "POST", "/api/groups", As(admin_), R"({"name":"ops"})");
  ASSERT_EQ(group.status, 201) << group.body;
  const uint64_t group_id = group.Json().value("id", uint64_t{0});
  HttpAnswer added = Call(2, "POST", absl::StrCat("/api/groups/", group_id, "/members"),
                          As(admin_), absl::StrCat(R"({"user_id":)", other_.id, "}"));
  ASSERT_EQ(added.status, 200) << added.body;
  HttpAnswer seen = CallUntil(
      [&](const HttpAnswer& a) { return a.status == 200 && a.Json()["members"].size() == 1; }, 0,
      "GET", absl::StrCat("/api/groups/", group_id), As(admin_));
  EXPECT_EQ(seen.Json()["members"], Json::array({other_.id})) << seen.body;
  // Made an administrator by one: the routes are its too, on every node.
  ASSERT_EQ(Call(0, "PUT", absl::StrCat("/api/users/", owner_.id), As(admin_),
                 R"({"is_admin":true})")
                .status,
            200);
  for (int node = 0; node < kNodes; ++node) {
    EXPECT_EQ(CallUntil(200, node, "GET", "/api/groups", As(owner_)).status, 200) << node;
  }
  // A deactivated user's key stops working everywhere; keys reset.
  HttpAnswer removed = Call(1, "DELETE", absl::StrCat("/api/users/", member_.id), As(admin_));
  ASSERT_EQ(removed.status, 200) << removed.body;
  EXPECT_FALSE(removed.Json().value("is_active", true));
  for (int node = 0; node < kNodes; ++node) {
    EXPECT_EQ(CallUntil(401, node, "GET", "/v1/kv/x", As(member_)).status, 401) << node;
  }
  EXPECT_EQ(Call(0, "DELETE", "/api/users/1", As(admin_)).status, 409);
}

// The table: (who, where, what) -> allowed, through every dialect and the
// binary protocol, on every node.
TEST_F(AclClusterTest, EveryRouteAndOperationFollowsTheTable) {
  HttpAnswer group = Call(0, "POST", "/api/groups", As(admin_),
                          absl::StrCat(R"({"name":"room","members":[)", member_.id, "]}"));
  ASSERT_EQ(group.status, 201) << group.body;
  // room/: owner and group everything, others nothing; room/private/: the
  // owner alone; pub/: others may read.
  SetAcl(1, owner_, "room/", {{"mode", "cdwrcdwr----"}, {"group", "room"}});
  SetAcl(1, owner_, "room/private/", {{"mode", "cdwr--------"}, {"group", "room"}});
  SetAcl(1, owner_, "pub/", {{"mode", "cdwr-------r"}, {"group", "room"}});
  for (int node = 0; node < kNodes; ++node) {
    AwaitPermissions(node, member_, owner_.id, "room/private/", "----");
    AwaitPermissions(node, other_, owner_.id, "pub/", "---r");
  }
  const uint64_t ns = owner_.id;
  struct Row {
    const char* who;
    const User* user;
    const char* key;
    bool read, write, remove;
  };
  const Row rows[] = {
      {"owner", &owner_, "room/k", true, true, true},
      {"member", &member_, "room/k", true, true, true},
      {"other", &other_, "room/k", false, false, false},
      {"admin", &admin_, "room/k", false, false, false},
      {"owner", &owner_, "room/private/k", true, true, true},
      {"member", &member_, "room/private/k", false, false, false},
      {"other", &other_, "pub/k", true, false, false},
      {"member", &member_, "pub/k", false, false, false},  // group bits: none
      {"member", &member_, "secret", false, false, false},  // no ACL: private
      {"other", &other_, "secret", false, false, false},
  };
  int node = 0;
  for (const Row& row : rows) {
    const std::string why = absl::StrCat(row.who, " on ", row.key);
    for (Op op : {Op::kRead, Op::kWrite, Op::kDelete}) {
      const bool allowed = op == Op::kRead ? row.read : op == Op::kWrite ? row.write : row.remove;
      Expect(node, *row.user, ns, row.key, op, allowed, why);
      node = (node + 1) % kNodes;
    }
  }
  // A user's own namespace is untouched by others' ACLs: the default holds.
  Expect(2, member_, 0, "mine", Op::kWrite, true, "member in its own namespace");
  Expect(1, member_, member_.id, "mine", Op::kRead, true, "member naming its own namespace");
}

TEST_F(AclClusterTest, RemovedFromTheGroupLosesAccessOnEveryNode) {
  HttpAnswer group = Call(0, "POST", "/api/groups", As(admin_),
                          absl::StrCat(R"({"name":"room","members":[)", member_.id, "]}"));
  ASSERT_EQ(group.status, 201) << group.body;
  const uint64_t group_id = group.Json().value("id", uint64_t{0});
  SetAcl(2, owner_, "room/", {{"mode", "cdwrcdwr----"}, {"group", group_id}});
  ASSERT_EQ(Call(0, "PUT", "/v1/kv/room/doc", As(owner_), "hello").status, 200);
  for (int node = 0; node < kNodes; ++node) {
    HttpAnswer read = CallUntil(200, node, "GET", "/v1/kv/room/doc", As(member_, owner_.id));
    ASSERT_EQ(read.status, 200) << "node " << node << ": " << read.body;
  }
  ASSERT_EQ(Call(1, "DELETE", absl::StrCat("/api/groups/", group_id, "/members/", member_.id),
                 As(admin_))
                .status,
            200);
  // Refused on every node; polled, since each applies the change on its own.
  for (int node = 0; node < kNodes; ++node) {
    HttpAnswer read = CallUntil(403, node, "GET", "/v1/kv/room/doc", As(member_, owner_.id));
    EXPECT_EQ(read.status, 403) << "node " << node << ": " << read.body;
    EXPECT_EQ(Call(node, "PUT", "/v1/kv/room/doc", As(member_, owner_.id), "x").status, 403);
    for (const auto& [operation, status] :
         BinaryStatuses(node, member_, owner_.id, "room/doc", Op::kRead)) {
      if (operation == "Hello") continue;
      EXPECT_EQ(status, p::StatusCode::PermissionDenied) << "node " << node << " " << operation;
    }
  }
}

// An ACL entry's audit flag: writes under its prefix are recorded in the
// audit log (docs/security.md), others are not; read back through another
// node with the administrator's key.
TEST_F(AclClusterTest, AnEntrysAuditFlagRecordsItsWrites) {
  // The flag is an administrator's: the namespace's user may neither set
  // it, nor clear it, nor remove an entry that has it (its writes share the
  // audit log's retention with the control plane's entries).
  const std::string ledger = absl::StrCat("/api/acl?prefix=ledger/&namespace=", owner_.id);
  const Json audited = {{"mode", "cdwr--------"}, {"audit", true}};
  HttpAnswer refused = Call(0, "PUT", ledger, As(owner_), audited.dump());
  EXPECT_EQ(refused.status, 403) << refused.body;
  EXPECT_NE(refused.body.find("only an administrator"), std::string::npos) << refused.body;
  ASSERT_EQ(Call(1, "PUT", ledger, As(admin_), audited.dump()).status, 200);
  // Without "audit" the owner's change keeps the flag, on any node.
  HttpAnswer kept =
      CallUntil(200, 2, "PUT", ledger, As(owner_), Json{{"mode", "cdwrcdwr----"}}.dump());
  ASSERT_EQ(kept.status, 200) << kept.body;
  EXPECT_EQ(kept.Json()["audit"], true) << kept.body;
  for (int node = 0; node < kNodes; ++node) {
    EXPECT_EQ(Call(node, "PUT", ledger, As(owner_),
                   Json{{"mode", "cdwr--------"}, {"audit", false}}.dump())
                  .status,
              403)
        << "node " << node;
    EXPECT_EQ(Call(node, "DELETE", ledger, As(owner_)).status, 403) << "node " << node;
  }
  // Nor unaudit its keys by an entry under it: the longest entry decides.
  const std::string under = absl::StrCat("/api/acl?prefix=ledger/a&namespace=", owner_.id);
  HttpAnswer longer = Call(0, "PUT", under, As(owner_),
                           Json{{"mode", "cdwr--------"}, {"audit", false}}.dump());
  EXPECT_EQ(longer.status, 403) << longer.body;
  HttpAnswer inherited = Call(0, "PUT", under, As(owner_), Json{{"mode", "cdwr--------"}}.dump());
  ASSERT_EQ(inherited.status, 200) << inherited.body;
  EXPECT_EQ(inherited.Json()["audit"], true) << inherited.body;
  // Removed, it changes no key's audit (the entry above is audited too).
  EXPECT_EQ(Call(0, "DELETE", under, As(owner_)).status, 200);
  for (int node = 0; node < kNodes; ++node) {
    ASSERT_EQ(CallUntil(200, node, "PUT", "/v1/kv/ledger/entry", As(owner_), "v").status, 200)
        << "node " << node;
  }
  ASSERT_EQ(Call(1, "PUT", "/v1/kv/notes/plain", As(owner_), "x").status, 200);
  bool seen = false;
  std::string entries;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!seen && absl::Now() < deadline) {
    HttpAnswer audit = Call(2, "GET", "/api/audit?since=0&limit=1000", As(admin_));
    ASSERT_EQ(audit.status, 200) << audit.body;
    entries.clear();
    for (const Json& entry : audit.Json().value("entries", Json::array())) {
      const std::string detail = entry.value("detail", "");
      EXPECT_EQ(detail.find("notes/plain"), std::string::npos) << entry.dump();
      if (entry.value("kind", "") == "data.put" && detail.find("ledger/entry") != std::string::npos) {
        seen = true;
      }
      absl::StrAppend(&entries, entry.value("kind", ""), " ");
    }
    if (!seen) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(seen) << "no data.put of ledger/entry in the audit log: " << entries;
}

// Each control change's audit entry names who asked and through which node
// (docs/security.md, "Audit log"): a sign-up as anonymous, a user by id and
// username, the cluster secret; read through a third node.
TEST_F(AclClusterTest, AuditEntriesNameTheActorAndTheNode) {
  ASSERT_EQ(Call(1, "POST", "/api/groups", As(admin_), R"({"name":"by-admin"})").status, 201);
  ASSERT_EQ(Call(2, "POST", "/api/groups", {{"X-Cluster-Secret", "cluster-test-secret"}},
                 R"({"name":"by-secret"})")
                .status,
            201);
  SetAcl(0, owner_, "shared/", {{"mode", "cdwr---r---r"}});
  auto quoted = [](const std::string& text) { return absl::StrCat("\"", text, "\""); };
  const std::vector<std::pair<std::string, std::string>> wanted = {
      // SetUp: "owner" signed up and made its key through node 1.
      {"SignUp", absl::StrCat("by=anonymous node=", quoted(cluster_->node_id(1)))},
      {"IssueApiKey", absl::StrCat("by=user user=", owner_.id, " username=\"owner\" node=",
                                   quoted(cluster_->node_id(1)))},
      {"NewGroup", absl::StrCat("by=user user=1 username=\"admin\" node=",
                                quoted(cluster_->node_id(1)))},
      {"NewGroup", absl::StrCat("by=cluster_secret node=", quoted(cluster_->node_id(2)))},
      {"SetAcl", absl::StrCat("by=user user=", owner_.id, " username=\"owner\" node=",
                              quoted(cluster_->node_id(0)))},
      {"AddMember", absl::StrCat("by=node node=", quoted(cluster_->node_id(2)))},
  };
  std::vector<std::string> missing;
  std::string seen;
  const absl::Time deadline = absl::Now() + kPropagation;
  do {
    HttpAnswer audit = Call(0, "GET", "/api/audit?since=0&limit=1000", As(admin_));
    ASSERT_EQ(audit.status, 200) << audit.body;
    seen.clear();
    for (const Json& entry : audit.Json().value("entries", Json::array())) {
      absl::StrAppend(&seen, entry.value("kind", ""), " [", entry.value("actor", ""), "]\n");
    }
    missing.clear();
    for (const auto& [kind, actor] : wanted) {
      if (seen.find(absl::StrCat(kind, " [", actor, "]\n")) == std::string::npos) {
        missing.push_back(absl::StrCat(kind, " [", actor, "]"));
      }
    }
    if (!missing.empty()) absl::SleepFor(absl::Milliseconds(100));
  } while (!missing.empty() && absl::Now() < deadline);
  EXPECT_TRUE(missing.empty()) << "missing: " << absl::StrJoin(missing, ", ") << "\nlog:\n"
                               << seen;
}

// A scan through another user's namespace leaves out the keys the ACLs
// keep from the caller, and pages so that every cursor is the last key the
// page returned: never a key the caller may not read (docs/security.md),
// over REST and the binary protocol, with pages of one key.
TEST_F(AclClusterTest, ScanCursorsNeverNameAKeyTheCallerMayNotRead) {
  SetAcl(0, owner_, "s/", {{"mode", "cdwr-------r"}});
  const std::vector<std::string> hidden = {"a/hidden1", "a/hidden2", "t/hidden"};
  const std::vector<std::string> shared = {"s/1", "s/2", "s/3"};
  for (const std::vector<std::string>* keys : {&hidden, &shared}) {
    for (const std::string& key : *keys) {
      ASSERT_EQ(Call(0, "PUT", "/v1/kv/" + key, As(owner_), "v").status, 200) << key;
    }
  }
  AwaitPermissions(1, other_, owner_.id, "s/", "---r");
  for (int node = 0; node < kNodes; ++node) {
    // REST: GET /v1/kv with cursors.
    std::vector<std::string> listed;
    std::string cursor;
    for (int pages = 0; pages < 10; ++pages) {
      std::string target = "/v1/kv?limit=1";
      if (!cursor.empty()) absl::StrAppend(&target, "&cursor=", absl::Base64Escape(cursor));
      HttpAnswer page = Call(node, "GET", target, As(other_, owner_.id));
      ASSERT_EQ(page.status, 200) << page.body;
      const Json json = page.Json();
      std::string last;
      for (const Json& key : json["keys"]) {
        last = key.value("key", "");
        listed.push_back(last);
      }
      if (json["next_cursor"].is_null()) break;
      std::string decoded;
      ASSERT_TRUE(absl::Base64Unescape(json["next_cursor"].get<std::string>(), &decoded));
      EXPECT_EQ(decoded, last) << "node " << node << ": the cursor is not the last key returned";
      cursor = decoded;
    }
    EXPECT_EQ(listed, shared) << "node " << node << " REST";

    // Binary: Scan with after_key.
    absl::StatusOr<RawConnection> c = RawConnection::Connect(cluster_->port(node));
    ASSERT_TRUE(c.ok()) << c.status();
    {
      flatbuffers::FlatBufferBuilder b;
      auto token = b.CreateString(other_.key);
      auto name = b.CreateString("acl_cluster_test");
      ASSERT_TRUE(c->SendBytes(Frame(b, 1, p::Operation::Hello,
                                     p::CreateHello(b, p::kProtocolVersion, token, name).Union(),
                                     0))
                      .ok());
      ASSERT_TRUE(c->ReadFrame().ok());
    }
    listed.clear();
    cursor.clear();
    for (uint64_t id = 2; id < 12; ++id) {
      flatbuffers::FlatBufferBuilder b;
      auto after = Bytes(b, cursor);
      p::ScanBuilder scan(b);
      scan.add_after_key(after);
      scan.add_limit(1);
      auto body = scan.Finish();
      ASSERT_TRUE(c->SendBytes(Frame(b, id, p::Operation::Scan, body.Union(), owner_.id)).ok());
      absl::StatusOr<std::string> answer = c->ReadFrame();
      ASSERT_TRUE(answer.ok()) << answer.status();
      const p::Response* response = AsResponse(*answer);
      ASSERT_NE(response, nullptr);
      ASSERT_EQ(response->status(), p::StatusCode::Ok) << p::EnumNameStatusCode(response->status());
      const p::ScanResult* result = response->result_as_ScanResult();
      ASSERT_NE(result, nullptr);
      std::string last;
      for (const p::ScanItem* item : *result->items()) {
        last = std::string(p::View(item->key()));
        listed.push_back(last);
      }
      cursor = std::string(p::View(result->next_cursor()));
      if (cursor.empty()) break;
      EXPECT_EQ(cursor, last) << "node " << node << ": the cursor is not the last key returned";
    }
    EXPECT_EQ(listed, shared) << "node " << node << " binary";
  }
}

// --admins (docs/security.md, "Roles"): nodes with different flags each
// grant the users theirs names, through the control plane, so the
// administrators are the union of the flags, on every node; a name not
// signed up yet is granted when it signs up (through a node without the
// flag), and compared as sign-up compares usernames.
class AdminsFlagTest : public AclClusterTest {
 protected:
  void Customize(ClusterOptions* options) override {
    options->node_flags = {{}, {"--admins=owner"}, {"--admins= MEMBER ,carol"}};
  }
};

TEST_F(AdminsFlagTest, EveryNodesFlagGrantsThroughTheControlPlane) {
  // "owner" by node 1's flag, "member" by node 2's; "other" by none.
  for (int node = 0; node < kNodes; ++node) {
    for (const User* user : {&owner_, &member_}) {
      HttpAnswer users = CallUntil(200, node, "GET", "/api/users", As(*user));
      EXPECT_EQ(users.status, 200) << "node " << node << " user " << user->id << ": " << users.body;
    }
    EXPECT_EQ(Call(node, "GET", "/api/users", As(other_)).status, 403) << "node " << node;
  }
  // Signed up after the nodes started, through a node without the flag.
  const User carol = NewUser(0, "carol");
  for (int node = 0; node < kNodes; ++node) {
    HttpAnswer users = CallUntil(200, node, "GET", "/api/users", As(carol));
    EXPECT_EQ(users.status, 200) << "node " << node << ": " << users.body;
  }
  // The grants are the nodes' own, in the audit log.
  HttpAnswer audit = CallUntil(
      [&](const HttpAnswer& a) {
        return a.status == 200 && a.body.find(absl::StrCat("user_id=", carol.id, " admin=true")) !=
                                      std::string::npos;
      },
      0, "GET", "/api/audit?since=0&limit=1000", As(admin_));
  std::vector<std::string> grants;
  for (const Json& entry : audit.Json().value("entries", Json::array())) {
    if (entry.value("kind", "") != "SetAdmin") continue;
    grants.push_back(absl::StrCat(entry.value("detail", ""), " ", entry.value("actor", "")));
  }
  auto by = [&](const User& user, int node) {
    return absl::StrCat("user_id=", user.id, " admin=true by=node node=\"", cluster_->node_id(node),
                        "\"");
  };
  // In whatever order the nodes' workers came to them.
  std::vector<std::string> wanted = {by(owner_, 1), by(member_, 2), by(carol, 2)};
  std::sort(grants.begin(), grants.end());
  std::sort(wanted.begin(), wanted.end());
  EXPECT_EQ(grants, wanted) << audit.body;
}

}  // namespace
}  // namespace logkv::test
