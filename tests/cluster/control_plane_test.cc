// The control plane in real logkvd processes (server/control/, docs/
// control-plane.md): the committed configuration is the one authority on
// who the members are. A SIGTERM or a crash changes nothing in it; a leave
// is a committed change that hands the node's keys over first; a node that
// lost its data takes its place again; the control plane keeps working
// when its leader is killed. Waits are bounded; nothing is asserted about
// durations.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "tests/cluster/cluster_process.h"
#include "tests/engine/test_util.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

using nlohmann::json;

constexpr absl::Duration kPatience = absl::Seconds(30);

#define ASSERT_OK(expression)                           \
  do {                                                  \
    const absl::Status status_ = (expression);          \
    ASSERT_TRUE(status_.ok()) << status_;               \
  } while (false)

// A node's view of the control plane (/health's "control").
json ControlOf(const ClusterProcess& cluster, int node) {
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(cluster.http_port(node), "GET", "/health", {}, "", absl::Seconds(5));
  if (!answer.ok() || answer->status != 200) return json();
  json body = json::parse(answer->body, nullptr, false);
  return body.is_object() && body.contains("control") ? body["control"] : json();
}

// Each member's committed state and Raft role, as /members/ on node shows
// them: id -> {"member_state", "role", "raft_id"}.
std::map<std::string, json> CommittedMembers(const ClusterProcess& cluster, int node) {
  std::map<std::string, json> members;
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(cluster.http_port(node), "GET", "/members/", {}, "", absl::Seconds(5));
  if (!answer.ok() || answer->status != 200) return members;
  json list = json::parse(answer->body, nullptr, false);
  if (!list.is_array()) return members;
  for (const json& member : list) {
    if (member.contains("member_state")) members[member.value("id", "")] = member;
  }
  return members;
}

class ControlPlaneTest : public ::testing::Test {
 protected:
  absl::Status StartCluster(int nodes) {
    ClusterOptions options;
    options.logkvd_binary = LOGKVD_PATH;
    options.nodes = nodes;
    options.replicas = 3;
    cluster_ = std::make_unique<ClusterProcess>(options);
    if (absl::Status status = cluster_->Start(); !status.ok()) return status;
    return WaitAllActive(cluster_->RunningNodes(), nodes);
  }

  // Until every observer holds `members` active members, all at the same
  // epoch, and knows a leader.
  absl::Status WaitAllActive(const std::vector<int>& observers, size_t members) {
    const absl::Time deadline = absl::Now() + kPatience;
    std::string last;
    while (absl::Now() < deadline) {
      bool all = true;
      std::optional<uint64_t> epoch;
      for (int node : observers) {
        size_t active = 0;
        for (const auto& [id, member] : CommittedMembers(*cluster_, node)) {
          if (member.value("member_state", "") == "active") ++active;
        }
        const json control = ControlOf(*cluster_, node);
        const uint64_t node_epoch = control.is_object() ? control.value("epoch", uint64_t{0}) : 0;
        if (active != members || !control.is_object() || control.value("leader", "").empty() ||
            (epoch.has_value() && *epoch != node_epoch)) {
          all = false;
          last = absl::StrCat(cluster_->node_id(node), ": ", active, " active, ",
                              control.dump());
        }
        epoch = node_epoch;
      }
      if (all) return absl::OkStatus();
      absl::SleepFor(absl::Milliseconds(50));
    }
    return absl::DeadlineExceededError(absl::StrCat("members not all active: ", last));
  }

  uint64_t Epoch(int node) {
    const json control = ControlOf(*cluster_, node);
    return control.is_object() ? control.value("epoch", uint64_t{0}) : 0;
  }

  std::unique_ptr<ClusterProcess> cluster_;
};

// SIGTERM and SIGKILL of each node in turn, each restarted on its data: the
// committed configuration is the same epoch with the same members
// throughout; stops and crashes are not membership changes.
TEST_F(ControlPlaneTest, StopsAndCrashesDoNotChangeTheRing) {
  ASSERT_OK(StartCluster(3));
  const uint64_t epoch = Epoch(0);
  ASSERT_GT(epoch, 0u);
  std::map<std::string, json> before = CommittedMembers(*cluster_, 0);
  ASSERT_EQ(before.size(), 3u);
  for (int node = 0; node < 3; ++node) {
    for (bool crash : {false, true}) {
      SCOPED_TRACE(absl::StrCat(cluster_->node_id(node), crash ? " killed" : " stopped"));
      if (crash) {
        cluster_->Kill(node);
      } else {
        ASSERT_EQ(cluster_->Stop(node), 0);
      }
      // The others still hold all three members, at the same epoch.
      for (int other : cluster_->RunningNodes()) {
        EXPECT_EQ(Epoch(other), epoch);
        EXPECT_EQ(CommittedMembers(*cluster_, other).size(), 3u);
      }
      ASSERT_OK(cluster_->RestartAsStarted(node));
      ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
      EXPECT_EQ(Epoch(node), epoch);
      // The same members with the same Raft ids: nobody was replaced.
      std::map<std::string, json> after = CommittedMembers(*cluster_, node);
      for (const auto& [id, member] : before) {
        ASSERT_EQ(after.count(id), 1u) << id;
        EXPECT_EQ(after[id].value("raft_id", ""), member.value("raft_id", "")) << id;
      }
    }
  }
  // The Raft log's open segments, which every start reads whole, are
  // prepared at 4 MiB, not libraft's default of 8 MiB (libraft prepares
  // them in the background: looked at until there are some, bounded).
  for (int node = 0; node < 3; ++node) {
    std::vector<std::filesystem::path> open_segments;
    for (int attempt = 0; attempt < 200 && open_segments.empty(); ++attempt) {
      if (attempt > 0) absl::SleepFor(absl::Milliseconds(50));
      for (const auto& file :
           std::filesystem::directory_iterator(cluster_->data_dir(node) + "/control/raft")) {
        if (absl::StartsWith(file.path().filename().string(), "open-")) {
          open_segments.push_back(file.path());
        }
      }
    }
    ASSERT_FALSE(open_segments.empty()) << cluster_->node_id(node);
    for (const std::filesystem::path& path : open_segments) {
      std::error_code error;
      const uintmax_t bytes = std::filesystem::file_size(path, error);
      if (!error) {  // (unless libraft removed it since)
        EXPECT_LE(bytes, 4u << 20) << path;
      }
    }
  }
}

// A decommission: the node's keys are handed over before the committed
// configuration drops it, and no acknowledged key is lost; the node that
// left no longer owns anything.
TEST_F(ControlPlaneTest, DecommissionHandsDataOffAndLosesNoKey) {
  ASSERT_OK(StartCluster(4));
  constexpr int kKeys = 300;
  for (int i = 0; i < kKeys; ++i) {
    absl::StatusOr<HttpAnswer> put = cluster_->Put(i % 4, absl::StrCat("d-", i),
                                                   absl::StrCat("v", i), Consistency::kStrong);
    ASSERT_TRUE(put.ok() && put->status == 200) << i;
  }
  const uint64_t before = Epoch(0);
  const int leaving = 3;
  absl::StatusOr<HttpAnswer> left =
      HttpExchange(cluster_->http_port(leaving), "POST", "/members/leave",
                   {{"X-Cluster-Secret", "cluster-test-secret"}}, "{}", absl::Seconds(60));
  ASSERT_TRUE(left.ok()) << left.status();
  ASSERT_EQ(left->status, 200) << left->body;
  ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
  // Two committed changes: leaving, then removed.
  EXPECT_EQ(Epoch(0), before + 2);
  for (int node = 0; node < 3; ++node) {
    EXPECT_EQ(CommittedMembers(*cluster_, node).count(cluster_->node_id(leaving)), 0u);
  }
  // Every key, read with a quorum through every node that stays.
  for (int i = 0; i < kKeys; ++i) {
    absl::StatusOr<HttpAnswer> got =
        cluster_->Get(i % 3, absl::StrCat("d-", i), Consistency::kStrong);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->status, 200) << "d-" << i << ": " << got->body;
    EXPECT_EQ(got->body, absl::StrCat("v", i));
  }
}

// A node whose data directory was wiped starts under its node id again: it
// takes its member's place (a new Raft id, the same ring position) and
// serves; the others' configuration names it with its new Raft id.
TEST_F(ControlPlaneTest, AWipedNodeTakesItsPlaceAgain) {
  ASSERT_OK(StartCluster(3));
  const int wiped = 2;
  const std::string id = cluster_->node_id(wiped);
  const std::string old_raft_id = CommittedMembers(*cluster_, 0)[id].value("raft_id", "");
  ASSERT_FALSE(old_raft_id.empty());
  ASSERT_EQ(cluster_->Stop(wiped), 0);
  ASSERT_OK(cluster_->Wipe(wiped));
  ASSERT_OK(cluster_->Restart(wiped));
  ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
  for (int node = 0; node < 3; ++node) {
    const std::string raft_id = CommittedMembers(*cluster_, node)[id].value("raft_id", "");
    EXPECT_NE(raft_id, old_raft_id) << cluster_->node_id(node);
    EXPECT_FALSE(raft_id.empty());
  }
  ASSERT_OK(cluster_->WaitViewsConfirmed(absl::Seconds(30)));
  absl::StatusOr<HttpAnswer> put = cluster_->Put(wiped, "after-wipe", "v", Consistency::kStrong);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->status, 200) << put->body;
}

// The first node (started without --seeds) loses its data and is started
// as it was first: it starts a cluster of its own, under a new cluster id.
// The old cluster refuses it on both transports, so it never counts in the
// old cluster's quorums without the data; started with --seeds (and
// --replace) it takes its place in the old cluster again.
TEST_F(ControlPlaneTest, AWipedFirstNodeIsFencedOffFromItsOldCluster) {
  ASSERT_OK(StartCluster(3));
  const std::string old_cluster = ControlOf(*cluster_, 1).value("cluster_id", "");
  ASSERT_EQ(old_cluster.size(), 32u) << ControlOf(*cluster_, 1).dump();
  for (int node = 0; node < 3; ++node) {
    EXPECT_EQ(ControlOf(*cluster_, node).value("cluster_id", ""), old_cluster) << node;
  }
  cluster_->Kill(0);
  ASSERT_OK(cluster_->Wipe(0));
  ASSERT_OK(cluster_->RestartAsStarted(0));
  std::string new_cluster;
  for (const absl::Time deadline = absl::Now() + kPatience;
       new_cluster.empty() && absl::Now() < deadline;) {
    new_cluster = ControlOf(*cluster_, 0).value("cluster_id", "");
    if (new_cluster.empty()) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_FALSE(new_cluster.empty()) << cluster_->Describe();
  EXPECT_NE(new_cluster, old_cluster);

  // The old cluster goes on with its two other nodes. A strong write
  // through node 1 needs two of its three owners: nodes 1 and 2, never the
  // empty node 0.
  absl::StatusOr<HttpAnswer> put;
  for (int i = 0; i < 10; ++i) {
    const std::string key = absl::StrCat("after-wipe-", i);
    for (const absl::Time deadline = absl::Now() + kPatience; absl::Now() < deadline;) {
      put = cluster_->Put(1, key, "v", Consistency::kStrong);
      if (put.ok() && put->status == 200) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(put.ok() && put->status == 200)
        << (put.ok() ? put->body : put.status().ToString()) << cluster_->Describe();
    absl::StatusOr<std::optional<std::string>> held = cluster_->StoreValue(0, key);
    ASSERT_TRUE(held.ok()) << held.status();
    EXPECT_FALSE(held->has_value()) << key << " reached the node of the other cluster";
  }
  // It says why. (It knows nothing of the old cluster, so only the old
  // cluster's nodes knock; its Raft port is a new one, chosen again at its
  // first start: raft_transport_test refuses another cluster's Raft hello.)
  bool refused = false;
  for (const absl::Time deadline = absl::Now() + kPatience; !refused && absl::Now() < deadline;) {
    refused = absl::StrContains(
        cluster_->Output(0),
        absl::StrCat("it belongs to cluster ", old_cluster, ", this node to ", new_cluster));
    if (!refused) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(refused) << cluster_->Describe(20);

  // Started to rejoin, it takes its place again, under the old cluster id.
  ASSERT_EQ(cluster_->Stop(0), 0);
  ASSERT_OK(cluster_->Wipe(0));
  ASSERT_OK(cluster_->Restart(0));
  ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
  EXPECT_EQ(ControlOf(*cluster_, 0).value("cluster_id", ""), old_cluster);
}

// A node that lost its data and takes its place again (--replace) counts in
// no quorum until it has pulled its keys from every other owner: a strong
// write acknowledged by it and one other owner before the loss is then on
// that owner alone. Node 1 writes while node 0 does not hear it (acked by 1
// and 2); node 2 is wiped and replaced while node 1 is cut off from the
// others; a strong read through node 0 must not count node 2's empty engine.
TEST_F(ControlPlaneTest, AReplacedNodeCountsInNoQuorumUntilRefilled) {
  ASSERT_OK(StartCluster(3));
  ASSERT_OK(cluster_->WaitViewsConfirmed(absl::Seconds(30)));
  ASSERT_OK(cluster_->SetDropped(1, {0}));
  absl::StatusOr<HttpAnswer> put = cluster_->Put(1, "acked-by-1-and-2", "v", Consistency::kStrong);
  ASSERT_TRUE(put.ok() && put->status == 200)
      << (put.ok() ? put->body : put.status().ToString()) << cluster_->Describe();
  // Node 1 is cut off from both others on the data plane (the control
  // plane still works: the replacement is committed).
  ASSERT_OK(cluster_->SetDropped(1, {0, 2}));
  ASSERT_OK(cluster_->SetDropped(0, {1}));
  ASSERT_EQ(cluster_->Stop(2), 0);
  ASSERT_OK(cluster_->Wipe(2));
  ASSERT_OK(cluster_->Restart(2));  // --replace
  ASSERT_OK(cluster_->SetDropped(2, {1}));
  ASSERT_OK(WaitAllActive({0, 2}, 3));

  // Nodes 0 and 2 are two of the key's three owners, but node 2 has not
  // refilled: no quorum. Never "not found" for an acknowledged write.
  for (int node : {0, 2}) {
    absl::StatusOr<HttpAnswer> read =
        cluster_->Get(node, "acked-by-1-and-2", Consistency::kStrong, absl::Seconds(10));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_NE(read->status, 404) << "node " << node << ": the acknowledged write was lost\n"
                                 << cluster_->Describe();
    EXPECT_EQ(read->status, 503) << node << ": " << read->body;
  }
  EXPECT_TRUE(absl::StrContains(cluster_->Output(2), "lost its data")) << cluster_->Describe();

  // Healed, node 2 pulls from both others and counts again.
  ASSERT_OK(cluster_->Heal());
  HttpAnswer read;
  for (const absl::Time deadline = absl::Now() + kPatience; absl::Now() < deadline;) {
    absl::StatusOr<HttpAnswer> answer =
        cluster_->Get(0, "acked-by-1-and-2", Consistency::kStrong, absl::Seconds(10));
    if (answer.ok()) read = *answer;
    if (read.status == 200) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(read.status, 200) << read.body << cluster_->Describe();
  EXPECT_EQ(read.body, "v");
  for (const absl::Time deadline = absl::Now() + kPatience;
       !absl::StrContains(cluster_->Output(2), "refilled from every other owner") &&
       absl::Now() < deadline;) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(absl::StrContains(cluster_->Output(2), "refilled from every other owner"))
      << cluster_->Describe();
  absl::StatusOr<std::optional<std::string>> held = cluster_->StoreValue(2, "acked-by-1-and-2");
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->value_or(""), "v");
}

// A follower whose disk fills up while the leader appends to the control
// plane's log (each consensus-key write is an entry; needs the right to
// mount a tmpfs, skipped elsewhere): the cluster goes on writing through
// the two others, the follower lives (lagging: libraft refuses the entries
// it cannot store and the leader sends them again), starts again after a
// SIGKILL with its disk still full (it serves nothing of the control plane
// until space is freed), and once space is freed holds the whole log and
// reads every write.
TEST_F(ControlPlaneTest, AFollowerWithAFullDiskLivesAndCatchesUpOnceFreed) {
  ScopedTempDir dir;
  ScopedTmpfs tmpfs(dir.path() + "/tmpfs", "96m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  ClusterOptions options;
  options.logkvd_binary = LOGKVD_PATH;
  options.nodes = 3;
  options.extra_flags = {"--consensus-prefix=c:", "--shards=1", "--segment_bytes=1048576"};
  options.node_data_dirs = {"", "", dir.path() + "/tmpfs/n2"};
  cluster_ = std::make_unique<ClusterProcess>(options);
  ASSERT_OK(cluster_->Start());
  ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
  const std::string leader = ControlOf(*cluster_, 0).value("leader", "");
  if (leader == cluster_->node_id(2)) GTEST_SKIP() << "node 2 leads: this test wants it to follow";
  const int writer = leader == cluster_->node_id(0) ? 0 : 1;

  // Leaves 20 MiB free on node 2's disk: the writes below (48 MB, in fewer
  // entries than make a snapshot, which would free the log) fill it.
  const std::string filler = dir.path() + "/tmpfs/filler";
  {
    const std::filesystem::space_info space = std::filesystem::space(dir.path() + "/tmpfs");
    ASSERT_GT(space.available, 48u << 20);
    WriteFileBytes(filler, std::string(space.available - (20u << 20), 'f'));
  }
  const std::string value(60'000, 'v');
  std::atomic<int> ok{0};
  std::atomic<int> refused{0};
  std::string last_refusal;
  absl::Mutex mu;
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        absl::StatusOr<HttpAnswer> answer = HttpExchange(
            cluster_->http_port(writer), "PUT", absl::StrCat("/v1/kv/c:", t, "-", i % 4), {},
            absl::StrCat(value, i), absl::Seconds(10));
        if (answer.ok() && answer->status == 200) {
          ++ok;
        } else {
          ++refused;
          absl::MutexLock lock(&mu);
          last_refusal = answer.ok() ? absl::StrCat(answer->status, " ", answer->body)
                                     : answer.status().ToString();
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  // 800 writes of 60 KB: more than node 2's disk holds. The other two are a
  // majority: nothing is refused.
  EXPECT_EQ(ok.load(), 800) << refused.load() << " refused, the last: " << last_refusal
                            << cluster_->Describe();
  ASSERT_TRUE(cluster_->running(2)) << cluster_->Describe();
  // Node 2 could not store the last entries: it is behind.
  absl::SleepFor(absl::Milliseconds(500));
  const uint64_t committed = ControlOf(*cluster_, writer).value("commit_index", uint64_t{0});
  const uint64_t held = ControlOf(*cluster_, 2).value("applied_index", uint64_t{0});
  EXPECT_LT(held, committed) << "node 2 kept up: its disk never filled, the test tests nothing";
  // The disk is full, near enough: libraft could not prepare its next
  // segment (4 MiB), so less than that is left (checked with a margin).
  EXPECT_LT(std::filesystem::space(dir.path() + "/tmpfs").available, 8u << 20);
  // Killed and restarted while its disk is still full: it starts (and
  // serves what it can) rather than stopping for want of space.
  cluster_->Kill(2);
  ASSERT_OK(cluster_->RestartAsStarted(2));

  ASSERT_EQ(::unlink(filler.c_str()), 0);
  // Node 2 applies the whole log again and reads the last writes.
  uint64_t leader_commit = 0;
  uint64_t applied = 0;
  for (const absl::Time deadline = absl::Now() + kPatience; absl::Now() < deadline;) {
    leader_commit = ControlOf(*cluster_, writer).value("commit_index", uint64_t{0});
    applied = ControlOf(*cluster_, 2).value("applied_index", uint64_t{0});
    if (applied >= leader_commit && leader_commit > 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GE(applied, leader_commit) << cluster_->Describe();
  ASSERT_TRUE(cluster_->running(2)) << cluster_->Describe();
  for (int t = 0; t < 8; ++t) {
    absl::StatusOr<HttpAnswer> read = HttpExchange(
        cluster_->http_port(2), "GET", absl::StrCat("/v1/kv/c:", t, "-3"), {}, "",
        absl::Seconds(10));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->status, 200) << read->body;
    EXPECT_EQ(read->body, absl::StrCat(value, 99)) << t;
  }
  // A restart replays what it kept: the log on its disk is whole.
  ASSERT_EQ(cluster_->Stop(2), 0) << cluster_->Output(2);
  ASSERT_OK(cluster_->RestartAsStarted(2));
  ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
  absl::StatusOr<HttpAnswer> read = HttpExchange(cluster_->http_port(2), "GET", "/v1/kv/c:0-3",
                                                 {}, "", absl::Seconds(10));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->body, absl::StrCat(value, 99));
}

// A second process under a live member's node id (a duplicated --node-id)
// does not start: without --replace it may not take the member's place, and
// the member keeps its Raft id.
TEST_F(ControlPlaneTest, ADuplicateNodeIdDoesNotEvictAMember) {
  ASSERT_OK(StartCluster(3));
  const std::string id = cluster_->node_id(1);
  const std::string raft_id = CommittedMembers(*cluster_, 0)[id].value("raft_id", "");
  ScopedTempDir dir;
  LogkvdProcess duplicate(LOGKVD_PATH,
                          {absl::StrCat("--data_dir=", dir.path(), "/dup"),
                           absl::StrCat("--node_id=", id), "--threads=1", "--shards=1",
                           "--listen=127.0.0.1:0", "--http=127.0.0.1:0",
                           "--cluster_secret=cluster-test-secret", "--join_timeout_ms=5000",
                           absl::StrCat("--seeds=", cluster_->address(0))});
  EXPECT_FALSE(duplicate.Start().ok()) << duplicate.Output();
  EXPECT_NE(duplicate.Output().find("--replace"), std::string::npos) << duplicate.Output();
  duplicate.Stop();
  for (int node = 0; node < 3; ++node) {
    EXPECT_EQ(CommittedMembers(*cluster_, node)[id].value("raft_id", ""), raft_id);
  }
  absl::StatusOr<HttpAnswer> put = cluster_->Put(1, "still-a-member", "v", Consistency::kStrong);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->status, 200) << put->body;
}

// A client connection (no ClusterHello with the cluster secret) that sends
// a control-plane command is refused and nothing changes: ControlPropose and
// EpochBarrier are cluster-internal operations.
TEST_F(ControlPlaneTest, AClientCannotProposeControlCommands) {
  ASSERT_OK(StartCluster(3));
  const uint64_t epoch = Epoch(0);
  absl::StatusOr<RawConnection> connection = RawConnection::Connect(cluster_->port(0));
  ASSERT_TRUE(connection.ok()) << connection.status();
  // Sends one cluster-internal operation; the status it is answered with.
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
  // The command's bytes do not matter: the refusal comes before they are
  // read (the control plane's schema is not a client's to see).
  const std::string command(64, 'x');
  for (bool forwarded : {false, true}) {
    flatbuffers::FlatBufferBuilder builder(256);
    auto bytes = builder.CreateVector(reinterpret_cast<const uint8_t*>(command.data()),
                                      command.size());
    auto propose = protocol::CreateControlPropose(builder, bytes, forwarded);
    EXPECT_EQ(status_of(builder, protocol::Operation::ControlPropose, propose.Union()),
              protocol::StatusCode::PermissionDenied);
  }
  // Nor may it ask a member about the epoch barrier of a membership change.
  flatbuffers::FlatBufferBuilder builder(128);
  auto barrier = protocol::CreateEpochBarrier(builder, epoch);
  EXPECT_EQ(status_of(builder, protocol::Operation::EpochBarrier, barrier.Union()),
            protocol::StatusCode::PermissionDenied);
  EXPECT_EQ(Epoch(0), epoch);
  EXPECT_EQ(CommittedMembers(*cluster_, 0).size(), 3u);
}

// The control plane's leader is killed: the others elect another, and the
// cluster still takes membership changes (a new node joins through a
// survivor); the old leader comes back as a follower.
TEST_F(ControlPlaneTest, KillingTheLeaderKeepsTheControlPlaneWorking) {
  ASSERT_OK(StartCluster(3));
  const std::string leader_id = ControlOf(*cluster_, 0).value("leader", "");
  int leader = -1;
  for (int node = 0; node < 3; ++node) {
    if (cluster_->node_id(node) == leader_id) leader = node;
  }
  ASSERT_GE(leader, 0) << leader_id;
  cluster_->Kill(leader);
  std::vector<int> survivors;
  for (int node = 0; node < 3; ++node) {
    if (node != leader) survivors.push_back(node);
  }
  // A new leader among the survivors.
  std::string new_leader;
  for (const absl::Time deadline = absl::Now() + kPatience; absl::Now() < deadline;) {
    new_leader = ControlOf(*cluster_, survivors[0]).value("leader", "");
    if (!new_leader.empty() && new_leader != leader_id) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_FALSE(new_leader.empty());
  ASSERT_NE(new_leader, leader_id);
  // A join is a committed change: it needs the new leader.
  absl::StatusOr<int> added = cluster_->AddNode();
  ASSERT_TRUE(added.ok()) << added.status() << "\n" << cluster_->Describe();
  ASSERT_OK(cluster_->RestartAsStarted(leader));
  ASSERT_OK(WaitAllActive({0, 1, 2, *added}, 4));
  // Three voters at most; the fourth member is a standby that receives the
  // log. The restarted node shows the roles once it has heard from the
  // leader (bounded wait).
  json control;
  std::map<std::string, int> roles;
  for (int attempt = 0; attempt < 100; ++attempt) {
    control = ControlOf(*cluster_, leader);
    roles.clear();
    for (const auto& [id, member] : CommittedMembers(*cluster_, leader)) {
      ++roles[member.value("role", "")];
    }
    if (roles["voter"] == 3 && roles["standby"] == 1 && control.value("leader", "") != "") break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(control.value("leader", ""), "");
  EXPECT_EQ(roles["voter"], 3) << control.dump();
  EXPECT_EQ(roles["standby"], 1) << control.dump();
}

// A node keeps its control port for life (the Raft configuration names it
// by it). The first start draws it from above the kernel's ephemeral
// range, where no bind(0) or outgoing connection on the machine can take it
// while the node is down; a restart that finds it taken anyway fails naming
// the port, and starts once it is free.
TEST_F(ControlPlaneTest, TheControlPortAvoidsTheEphemeralRangeAndATakenOneIsNamed) {
  ASSERT_OK(StartCluster(3));
  int low = 32768;
  int high = 60999;
  {
    std::vector<std::string> range =
        absl::StrSplit(ReadFileBytes("/proc/sys/net/ipv4/ip_local_port_range"),
                       absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
    ASSERT_EQ(range.size(), 2u);
    ASSERT_TRUE(absl::SimpleAtoi(range[0], &low) && absl::SimpleAtoi(range[1], &high));
  }
  std::vector<int> ports;
  for (int node = 0; node < 3; ++node) {
    const std::string identity = ReadFileBytes(cluster_->data_dir(node) + "/control/identity");
    int port = 0;
    for (absl::string_view line : absl::StrSplit(identity, '\n')) {
      if (absl::ConsumePrefix(&line, "port ")) {
        ASSERT_TRUE(absl::SimpleAtoi(line, &port)) << line;
      }
    }
    ASSERT_GT(port, 0) << identity;
    // Above the range (where there is room above it), not among the fixed
    // services below it.
    if (high < 65535) {
      EXPECT_GT(port, high) << "the range is " << low << "-" << high;
    }
    ports.push_back(port);
  }

  // Node 2's port, taken while it is down.
  cluster_->Kill(2);
  const int squatter = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(squatter, 0);
  const int reuse = 1;  // the killed node's connections linger in TIME_WAIT
  ASSERT_EQ(::setsockopt(squatter, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse)), 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(ports[2]));
  ASSERT_EQ(inet_pton(AF_INET, "127.0.0.1", &address.sin_addr), 1);
  ASSERT_EQ(::bind(squatter, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
      << strerror(errno);
  ASSERT_EQ(::listen(squatter, 1), 0);
  EXPECT_FALSE(cluster_->RestartAsStarted(2).ok());
  const std::string output = cluster_->Output(2);
  EXPECT_TRUE(absl::StrContains(output, absl::StrCat("listen on 127.0.0.1:", ports[2])) &&
              absl::StrContains(output, "in use"))
      << output;
  ::close(squatter);
  ASSERT_OK(cluster_->RestartAsStarted(2));
  ASSERT_OK(WaitAllActive({0, 1, 2}, 3));
}

}  // namespace
}  // namespace logkv::test
