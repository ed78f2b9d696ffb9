// Cluster tests against real logkvd processes on loopback ports, 3 to 5
// nodes started, killed, wiped and partitioned by the tests (see
// cluster_process.h). What they check, in the words of DESIGN.md's Cluster
// section:
//
//   ReplicationTest        a write is visible in every owner's local copy
//                          (/store), on the eventual and the strong paths; a
//                          5-node cluster keeps each key on exactly N owners.
//   QuorumTest             strong writes need a majority of owners (503
//                          without), eventual ones do not; what the absent
//                          owners missed reaches them when they return.
//   CrashTest              kill -9 of a node under a W=majority write load
//                          loses no acknowledged write; every key converges
//                          on every owner (hinted handoff + anti-entropy).
//   AntiEntropyTest        a wiped node, and a node rolled back to an older
//                          copy, are repaired; the bytes moved are reported
//                          and follow what was missing.
//   MembershipTest         a 4th node joins under load and takes keys; a node
//                          leaves gracefully; no acknowledged key is lost.
//   PartitionTest          under a seeded nemesis that partitions and heals,
//                          strong single-key histories are linearizable
//                          (tests/cluster/linearizability.h) and eventual
//                          writes converge after healing.
//
// Every wait is a bounded polling loop; no test asserts on wall-clock time.
// Measured times (to converge, to repair) are printed and recorded as test
// properties. Randomized schedules print their seed (LOGKV_TEST_SEED replays).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "logkv/client.h"
#include "tests/cluster/cluster_process.h"
#include "tests/cluster/linearizability.h"
#include "tests/engine/test_macros.h"

namespace logkv::test {
namespace {

namespace lin = ::logkv::test::linearizability;
using ::logkv::Client;
using ::logkv::ClientOptions;
using ::logkv::Value;

constexpr absl::Duration kRequestTimeout = absl::Seconds(3);
constexpr absl::Duration kMembershipTimeout = absl::Seconds(30);
constexpr absl::Duration kConvergeTimeout = absl::Seconds(60);
constexpr absl::Duration kStorePollInterval = absl::Milliseconds(200);
constexpr int kMaxReadFailures = 20;
constexpr size_t kMaxHistoryLines = 300;
// Pause of a load writer after each write: a few hundred keys per second in
// all, enough to overlap crashes and joins, few enough to verify key by key.
constexpr auto kWritePause = std::chrono::milliseconds(10);

int64_t MonotonicNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string Describe(const absl::StatusOr<HttpAnswer>& answer) {
  if (!answer.ok()) return answer.status().ToString();
  return absl::StrCat(answer->status, " ", answer->body.substr(0, 300));
}

bool IsOk200(const absl::StatusOr<HttpAnswer>& answer) {
  return answer.ok() && answer->status == 200;
}

// Prints a measured figure and records it with the test's results.
void Report(const std::string& name, const std::string& value) {
  std::cout << "[ MEASURED ] " << name << " = " << value << std::endl;
  ::testing::Test::RecordProperty(name, value);
}

std::string Ms(absl::Duration duration) {
  return absl::StrFormat("%.0f ms", absl::ToDoubleMilliseconds(duration));
}

// Polls GET /store on every node given until each key has its expected
// value there (nullopt: absent). The time it took, or what is still wrong.
absl::StatusOr<absl::Duration> WaitStoresMatch(
    const ClusterProcess& cluster, const std::vector<int>& nodes,
    const std::map<std::string, std::optional<std::string>>& expected,
    absl::Duration timeout = kConvergeTimeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  std::vector<std::pair<int, const std::string*>> pending;
  for (int node : nodes) {
    for (const auto& [key, value] : expected) pending.emplace_back(node, &key);
  }
  std::string example;
  while (true) {
    std::vector<std::pair<int, const std::string*>> still;
    example.clear();
    for (const auto& [node, key] : pending) {
      // A node that answers slowly must not stretch a round past the deadline.
      if (absl::Now() >= deadline) {
        still.emplace_back(node, key);
        continue;
      }
      absl::StatusOr<std::optional<std::string>> got = cluster.StoreValue(node, *key);
      const std::optional<std::string>& want = expected.at(*key);
      if (got.ok() && *got == want) continue;
      still.emplace_back(node, key);
      if (still.size() <= 5) {
        absl::StrAppend(&example, "\n  ", cluster.node_id(node), " /store/", *key, ": want ",
                        want ? absl::StrCat("\"", want->substr(0, 40), "\"") : "absent", ", got ",
                        !got.ok() ? got.status().ToString()
                        : *got    ? absl::StrCat("\"", (*got)->substr(0, 40), "\"")
                                  : "absent");
      }
    }
    pending = std::move(still);
    if (pending.empty()) return absl::Now() - start;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(pending.size(), " (node, key) pairs still differ after ",
                       absl::FormatDuration(timeout), ", e.g.:", example));
    }
    absl::SleepFor(kStorePollInterval);
  }
}

// Nodes whose local copy of key is value.
int CountHolders(const ClusterProcess& cluster, const std::string& key,
                 const std::optional<std::string>& value) {
  int holders = 0;
  for (int node : cluster.RunningNodes()) {
    absl::StatusOr<std::optional<std::string>> got = cluster.StoreValue(node, key);
    if (got.ok() && *got == value) ++holders;
  }
  return holders;
}

// Polls /metrics key_count of node until it is at least count.
absl::StatusOr<absl::Duration> WaitKeyCount(const ClusterProcess& cluster, int node, int64_t count,
                                            absl::Duration timeout = kConvergeTimeout) {
  const absl::Time start = absl::Now();
  absl::StatusOr<int64_t> last = absl::UnknownError("not polled");
  while (true) {
    last = cluster.KeyCount(node);
    if (last.ok() && *last >= count) return absl::Now() - start;
    if (absl::Now() - start >= timeout) {
      return absl::DeadlineExceededError(
          absl::StrCat(cluster.node_id(node), " key_count is ",
                       last.ok() ? absl::StrCat(*last) : last.status().ToString(), ", want ", count,
                       " after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(kStorePollInterval);
  }
}

// The value of one unlabelled Prometheus sample a node reports.
absl::StatusOr<double> MetricValue(const ClusterProcess& cluster, int node,
                                   absl::string_view name) {
  absl::StatusOr<std::string> text = cluster.MetricsText(node);
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&line, name) || !absl::ConsumePrefix(&line, " ")) continue;
    double value;
    if (absl::SimpleAtod(line, &value)) return value;
  }
  return absl::NotFoundError(absl::StrCat("no sample ", name));
}

// The sum of the anti-entropy byte counters a node reports: Prometheus
// samples (or JSON /metrics fields) whose name has both "anti_entropy" and
// "bytes" (bytes sent and received by the exchanges it started).
absl::StatusOr<double> AntiEntropyBytes(const ClusterProcess& cluster, int node) {
  double sum = 0;
  bool found = false;
  if (absl::StatusOr<std::string> text = cluster.MetricsText(node); text.ok()) {
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
      if (line.front() == '#') continue;
      const size_t name_end = line.find_first_of("{ ");
      const size_t value_start = line.rfind(' ');
      if (name_end == absl::string_view::npos || value_start == absl::string_view::npos) continue;
      const absl::string_view name = line.substr(0, name_end);
      if (name.find("anti_entropy") == absl::string_view::npos ||
          name.find("bytes") == absl::string_view::npos) {
        continue;
      }
      double value;
      if (absl::SimpleAtod(line.substr(value_start + 1), &value)) {
        sum += value;
        found = true;
      }
    }
  }
  if (!found) {
    absl::StatusOr<nlohmann::json> metrics = cluster.MetricsJson(node);
    if (!metrics.ok()) return metrics.status();
    for (const auto& [name, value] : metrics->items()) {
      if (name.find("anti_entropy") != std::string::npos &&
          name.find("bytes") != std::string::npos && value.is_number()) {
        sum += value.get<double>();
        found = true;
      }
    }
  }
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat(cluster.node_id(node),
                     " reports no anti-entropy byte counter in /metrics (a sample or "
                     "field whose name has \"anti_entropy\" and \"bytes\")"));
  }
  return sum;
}

// Writes sequential keys "<prefix>-<thread>-<i>" from a few threads until
// Stop, to nodes chosen at random among `targets`, and keeps the
// acknowledged ones. Errors are ambiguous: not counted either way.
class WriteLoad {
 public:
  WriteLoad(const ClusterProcess* cluster, std::string prefix, Consistency consistency,
            uint64_t seed, int threads = 2)
      : cluster_(cluster), prefix_(std::move(prefix)), consistency_(consistency) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, t, seed] { Run(t, seed + t); });
    }
  }
  ~WriteLoad() { Stop(); }

  void SetTargets(std::vector<int> targets) {
    std::lock_guard<std::mutex> lock(mu_);
    targets_ = std::move(targets);
  }
  void Stop() {
    stop_.store(true);
    for (std::thread& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }
  std::map<std::string, std::optional<std::string>> Acknowledged() const {
    std::lock_guard<std::mutex> lock(mu_);
    return acknowledged_;
  }
  int64_t attempts() const { return attempts_.load(); }
  int64_t errors() const { return errors_.load(); }

 private:
  void Run(int thread, uint64_t seed) {
    std::mt19937_64 random(seed);
    for (int i = 0; !stop_.load(); ++i) {
      int target;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (targets_.empty()) {
          target = -1;
        } else {
          target = targets_[std::uniform_int_distribution<size_t>(0, targets_.size() - 1)(random)];
        }
      }
      if (target < 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        continue;
      }
      const std::string key = absl::StrCat(prefix_, "-", thread, "-", i);
      const std::string value = absl::StrCat("value-", key, "-", seed);
      ++attempts_;
      absl::StatusOr<HttpAnswer> answer =
          cluster_->Put(target, key, value, consistency_, kRequestTimeout);
      if (IsOk200(answer)) {
        std::lock_guard<std::mutex> lock(mu_);
        acknowledged_[key] = value;
        std::this_thread::sleep_for(kWritePause);
      } else {
        ++errors_;
        // A node that is down refuses at once: do not spin on it.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }

  const ClusterProcess* const cluster_;
  const std::string prefix_;
  const Consistency consistency_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> attempts_{0};
  std::atomic<int64_t> errors_{0};
  mutable std::mutex mu_;
  std::vector<int> targets_;
  std::map<std::string, std::optional<std::string>> acknowledged_;
  std::vector<std::thread> threads_;
};

// Every acknowledged key reads back through the cluster (strong) with its
// value, asking the given nodes in turn.
void ExpectAllReadable(const ClusterProcess& cluster, const std::vector<int>& nodes,
                       const std::map<std::string, std::optional<std::string>>& acknowledged) {
  int lost = 0;
  size_t turn = 0;
  for (const auto& [key, value] : acknowledged) {
    const int node = nodes[turn++ % nodes.size()];
    absl::StatusOr<HttpAnswer> answer = cluster.Get(node, key, Consistency::kStrong);
    if (IsOk200(answer) && answer->body == *value) continue;
    if (++lost <= 5) {
      ADD_FAILURE() << "acknowledged write lost or unreadable: " << key << " via "
                    << cluster.node_id(node) << ": " << Describe(answer);
    }
    // Each failure may cost a request timeout: enough evidence, stop.
    if (lost >= kMaxReadFailures) {
      ADD_FAILURE() << "stopped reading after " << lost << " failures";
      break;
    }
  }
  EXPECT_EQ(lost, 0) << "of " << acknowledged.size() << " acknowledged writes";
}

// Whether a primary_node answer names this node: its id, its HTTP URL or
// address, or its binary address.
bool NamesNode(const ClusterProcess& cluster, int node, const std::string& name) {
  const std::string http = absl::StrCat("127.0.0.1:", cluster.http_port(node));
  return name == cluster.node_id(node) || name == http || name == "http://" + http ||
         name == cluster.address(node);
}

class ClusterTest : public ::testing::Test {
 protected:
  // Starts a cluster and waits until every node sees every other alive.
  absl::Status StartCluster(int nodes, int replicas,
                            const std::function<void(ClusterOptions&)>& adjust = nullptr) {
    ClusterOptions options;
    options.logkvd_binary = LOGKVD_PATH;
    options.nodes = nodes;
    options.replicas = replicas;
    options.write_wait_ms = 1000;
    options.mutual_tls = mutual_tls_;
    if (adjust) adjust(options);
    cluster_ = std::make_unique<ClusterProcess>(options);
    if (absl::Status status = cluster_->Start(); !status.ok()) return status;
    if (absl::Status status = cluster_->WaitAllAlive(kMembershipTimeout); !status.ok()) {
      return status;
    }
    return cluster_->WaitViewsConfirmed(kMembershipTimeout);
  }

  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) std::cout << cluster_->Describe(25) << std::endl;
    cluster_.reset();
  }

  std::unique_ptr<ClusterProcess> cluster_;
  bool mutual_tls_ = false;  // ClusterOptions::mutual_tls
};

// The main cluster tests (replication, strong linearizability under
// partitions, a join and a leave under load) run twice: in plaintext, and
// with all traffic over mutual TLS (clients' HTTPS, the data plane's peers,
// the control plane's Raft transport).
class ClusterTransportTest : public ClusterTest, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override { mutual_tls_ = GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Transport, ClusterTransportTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("MutualTls") : std::string("Plaintext");
                         });

// ---- Harness ----------------------------------------------------------------

TEST(ClusterHarnessTest, StartUpErrorsFailFastWithTheNodeOutput) {
  // A node that rejects its command line must fail the test at once with
  // its own words, not after a membership timeout.
  ClusterOptions options;
  options.logkvd_binary = LOGKVD_PATH;
  options.nodes = 2;
  options.extra_flags = {"--no_such_flag_for_the_harness_test=1"};
  ClusterProcess cluster(options);
  const absl::Time start = absl::Now();
  const absl::Status status = cluster.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("no_such_flag_for_the_harness_test"), absl::string_view::npos)
      << status;
  EXPECT_NE(status.message().find("nknown command line flag"), absl::string_view::npos) << status;
  Report("startup_failure_detected_after", Ms(absl::Now() - start));
}

// ---- Replication ------------------------------------------------------------

TEST_P(ClusterTransportTest, ReplicationIsVisibleOnEveryOwner) {
  ASSERT_OK(StartCluster(3, 3));
  const std::vector<int> all = {0, 1, 2};

  // /health: three members, and mode "normal" once anti-entropy caught up
  // ("syncing" before: a new node is still filling up).
  for (int node : all) {
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    nlohmann::json health;
    while (absl::Now() < give_up) {
      absl::StatusOr<HttpAnswer> answer = HttpExchange(cluster_->http_port(node), "GET",
                                                       "/health", {}, "", absl::Seconds(5));
      if (answer.ok() && answer->status == 200) {
        health = answer->Json();
        if (health.value("mode", "") == "normal" && health.value("member_count", 0) == 3) break;
        ASSERT_TRUE(health.value("mode", "") == "syncing" || health.value("mode", "") == "normal")
            << answer->body;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_EQ(health.value("mode", ""), "normal") << cluster_->node_id(node) << ": " << health;
    EXPECT_EQ(health.value("member_count", 0), 3) << cluster_->node_id(node) << ": " << health;
  }

  // Eventual: acknowledged by one owner, then on all three.
  absl::StatusOr<HttpAnswer> put = cluster_->Put(0, "eventual-key", "e1", Consistency::kEventual);
  ASSERT_TRUE(IsOk200(put)) << Describe(put);
  const nlohmann::json body = put->Json();
  EXPECT_EQ(body.value("success", false), true) << put->body;
  EXPECT_EQ(body.value("replicas", -1), 2) << put->body;
  absl::StatusOr<absl::Duration> took =
      WaitStoresMatch(*cluster_, all, {{"eventual-key", "e1"}}, absl::Seconds(20));
  ASSERT_OK(took);
  Report("eventual_replication_to_3_owners", Ms(*took));

  // Strong: a majority holds it when the answer comes, then all of them.
  put = cluster_->Put(1, "strong-key", "s1", Consistency::kStrong);
  ASSERT_TRUE(IsOk200(put)) << Describe(put);
  EXPECT_GE(CountHolders(*cluster_, "strong-key", "s1"), 2);
  took = WaitStoresMatch(*cluster_, all, {{"strong-key", "s1"}}, absl::Seconds(20));
  ASSERT_OK(took);
  Report("strong_replication_to_3_owners", Ms(*took));
  for (int node : all) {
    absl::StatusOr<HttpAnswer> get = cluster_->Get(node, "strong-key", Consistency::kStrong);
    EXPECT_TRUE(IsOk200(get) && get->body == "s1")
        << cluster_->node_id(node) << ": " << Describe(get);
    get = cluster_->Get(node, "eventual-key", Consistency::kEventual);
    EXPECT_TRUE(IsOk200(get) && get->body == "e1")
        << cluster_->node_id(node) << ": " << Describe(get);
  }

  // A strong overwrite is read by a strong read anywhere at once.
  put = cluster_->Put(2, "strong-key", "s2", Consistency::kStrong);
  ASSERT_TRUE(IsOk200(put)) << Describe(put);
  for (int node : all) {
    absl::StatusOr<HttpAnswer> get = cluster_->Get(node, "strong-key", Consistency::kStrong);
    EXPECT_TRUE(IsOk200(get) && get->body == "s2")
        << cluster_->node_id(node) << ": " << Describe(get);
  }

  // Deletes are replicated the same way.
  absl::StatusOr<HttpAnswer> removed = cluster_->Delete(2, "strong-key", Consistency::kStrong);
  ASSERT_TRUE(IsOk200(removed)) << Describe(removed);
  EXPECT_GE(CountHolders(*cluster_, "strong-key", std::nullopt), 2);
  absl::StatusOr<HttpAnswer> get = cluster_->Get(0, "strong-key", Consistency::kStrong);
  EXPECT_TRUE(get.ok() && get->status == 404) << Describe(get);
  removed = cluster_->Delete(0, "eventual-key", Consistency::kEventual);
  ASSERT_TRUE(IsOk200(removed)) << Describe(removed);
  ASSERT_OK(WaitStoresMatch(*cluster_, all,
                            {{"strong-key", std::nullopt}, {"eventual-key", std::nullopt}},
                            absl::Seconds(20)));
}

// The console's cluster page shows every member's figures, which the node
// asks of the others with the caller's credential: over HTTPS when the
// cluster serves it (the operator's credential, the cluster secret, never
// crosses in clear; a plaintext request to a TLS port would be refused).
TEST_P(ClusterTransportTest, TheConsoleClusterPageHasEveryMembersFigures) {
  ASSERT_OK(StartCluster(2, 2, [](ClusterOptions& options) {
    options.extra_flags.push_back("--auth=on");
  }));
  const HttpHeaders operator_credential = {
      {"Authorization", absl::StrCat("Bearer ", ClusterOptions().cluster_secret)}};
  absl::StatusOr<HttpAnswer> page = HttpExchange(cluster_->http_port(0), "GET",
                                                 "/console/cluster", operator_credential, "",
                                                 absl::Seconds(10));
  ASSERT_TRUE(page.ok() && page->status == 200) << Describe(page);
  const nlohmann::json members = page->Json()["members"];
  ASSERT_EQ(members.size(), 2u) << page->body;
  for (const nlohmann::json& member : members) {
    EXPECT_FALSE(member.contains("error")) << member.dump();
    ASSERT_TRUE(member.contains("figures") && member["figures"].is_object()) << member.dump();
    EXPECT_EQ(member["figures"].value("node_id", ""), member.value("id", "")) << member.dump();
  }
  // Asked over the peer links: the page costs the node no thread, however
  // often it is asked (it once started one per request and kept it until
  // shutdown: its stack stayed mapped).
  const auto mappings = [&] {
    std::ifstream maps(absl::StrCat("/proc/", cluster_->pid(0), "/maps"));
    return std::count(std::istreambuf_iterator<char>(maps), std::istreambuf_iterator<char>(),
                      '\n');
  };
  const auto before = mappings();
  for (int i = 0; i < 40; ++i) {
    page = HttpExchange(cluster_->http_port(0), "GET", "/console/cluster", operator_credential, "",
                        absl::Seconds(10));
    ASSERT_TRUE(page.ok() && page->status == 200) << Describe(page);
  }
  const auto after = mappings();
  EXPECT_LT(after, before + 20) << before << " mappings before, " << after << " after";
}

TEST_F(ClusterTest, FiveNodesKeepEachKeyOnExactlyNOwners) {
  ASSERT_OK(StartCluster(5, 3));
  constexpr int kKeys = 30;
  std::map<std::string, std::string> primaries;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = absl::StrCat("placed-", i);
    absl::StatusOr<HttpAnswer> put =
        cluster_->Put(i % 5, key, absl::StrCat("p", i), Consistency::kEventual);
    ASSERT_TRUE(IsOk200(put)) << key << ": " << Describe(put);
    const nlohmann::json body = put->Json();
    if (i == 0) {
      EXPECT_EQ(body.value("replicas", -1), 2) << put->body;
    }
    primaries[key] = body.value("primary_node", std::string());
  }
  // Every key ends up on exactly three of the five nodes, its primary among
  // them; the owner sets differ from key to key and every node owns some.
  std::map<std::string, std::set<int>> holders;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  const absl::Time start = absl::Now();
  while (true) {
    holders.clear();
    bool settled = true;
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = absl::StrCat("placed-", i);
      for (int node = 0; node < 5; ++node) {
        absl::StatusOr<std::optional<std::string>> got = cluster_->StoreValue(node, key);
        if (got.ok() && *got == absl::StrCat("p", i)) holders[key].insert(node);
      }
      if (holders[key].size() != 3) settled = false;
    }
    if (settled || absl::Now() >= deadline) break;
    absl::SleepFor(kStorePollInterval);
  }
  Report("placement_settled_after", Ms(absl::Now() - start));
  std::set<std::set<int>> owner_sets;
  std::vector<int> owned(5, 0);
  for (const auto& [key, nodes] : holders) {
    EXPECT_EQ(nodes.size(), 3u) << key << " is held by " << nodes.size() << " nodes";
    bool primary_holds = false;
    for (int node : nodes) {
      ++owned[node];
      if (NamesNode(*cluster_, node, primaries[key])) primary_holds = true;
    }
    EXPECT_TRUE(primary_holds) << key << ": primary_node \"" << primaries[key]
                               << "\" does not hold it";
    owner_sets.insert(nodes);
  }
  EXPECT_GT(owner_sets.size(), 1u);
  for (int node = 0; node < 5; ++node) EXPECT_GT(owned[node], 0) << cluster_->node_id(node);

  // A node that owns none of a key's copies still serves it, strongly.
  const std::string key = "placed-0";
  int outsider = -1;
  for (int node = 0; node < 5; ++node) {
    if (!holders[key].contains(node)) outsider = node;
  }
  ASSERT_GE(outsider, 0);
  absl::StatusOr<HttpAnswer> put =
      cluster_->Put(outsider, key, "through-outsider", Consistency::kStrong);
  ASSERT_TRUE(IsOk200(put)) << Describe(put);
  for (int node = 0; node < 5; ++node) {
    absl::StatusOr<HttpAnswer> get = cluster_->Get(node, key, Consistency::kStrong);
    EXPECT_TRUE(IsOk200(get) && get->body == "through-outsider")
        << cluster_->node_id(node) << ": " << Describe(get);
  }
}

// ---- Quorum -----------------------------------------------------------------

TEST_F(ClusterTest, StrongNeedsAMajorityEventualDoesNot) {
  ASSERT_OK(StartCluster(3, 3));
  absl::StatusOr<HttpAnswer> put = cluster_->Put(0, "before", "b", Consistency::kStrong);
  ASSERT_TRUE(IsOk200(put)) << Describe(put);

  // One owner of three down: a majority remains.
  cluster_->Kill(2);
  put = cluster_->Put(0, "minority-down", "m", Consistency::kStrong, absl::Seconds(10));
  EXPECT_TRUE(IsOk200(put)) << Describe(put);
  absl::StatusOr<HttpAnswer> get = cluster_->Get(1, "minority-down", Consistency::kStrong);
  EXPECT_TRUE(IsOk200(get) && get->body == "m") << Describe(get);

  // Two of three down: strong operations are refused with 503, eventual
  // ones still succeed on the surviving owner.
  cluster_->Kill(1);
  put = cluster_->Put(0, "majority-down", "strong", Consistency::kStrong, absl::Seconds(10));
  ASSERT_TRUE(put.ok()) << Describe(put);
  EXPECT_EQ(put->status, 503) << put->body;
  get = cluster_->Get(0, "before", Consistency::kStrong, absl::Seconds(10));
  ASSERT_TRUE(get.ok()) << Describe(get);
  EXPECT_EQ(get->status, 503) << get->body;
  put = cluster_->Put(0, "majority-down", "eventual", Consistency::kEventual, absl::Seconds(10));
  EXPECT_TRUE(IsOk200(put)) << Describe(put);
  get = cluster_->Get(0, "majority-down", Consistency::kEventual);
  EXPECT_TRUE(IsOk200(get) && get->body == "eventual") << Describe(get);

  // The owners come back and receive what they missed.
  const absl::Time restart = absl::Now();
  ASSERT_OK(cluster_->Restart(1));
  ASSERT_OK(cluster_->Restart(2));
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  absl::StatusOr<absl::Duration> took = WaitStoresMatch(
      *cluster_, {0, 1, 2}, {{"majority-down", "eventual"}, {"minority-down", "m"}});
  ASSERT_OK(took);
  Report("missed_writes_delivered_after_restart", Ms(absl::Now() - restart));
  // Restarted nodes serve strong operations once they caught up with the
  // control plane.
  ASSERT_OK(cluster_->WaitViewsConfirmed());
  get = cluster_->Get(2, "majority-down", Consistency::kStrong);
  EXPECT_TRUE(IsOk200(get) && get->body == "eventual") << Describe(get);
}

// Seed 001's write wait: with W = 2 and the other owner down, a write waits
// (up to --write-wait-ms) for it to come back instead of failing at once.
TEST_F(ClusterTest, AWriteWaitsForAnOwnerThatComesBackWithinTheWriteWait) {
  ASSERT_OK(StartCluster(2, 2, [](ClusterOptions& options) {
    options.write_wait_ms = 8000;
    options.extra_flags.push_back("--w=2");
  }));
  ASSERT_TRUE(IsOk200(cluster_->Put(0, "before", "b", Consistency::kDefault)));
  cluster_->Kill(1);
  std::atomic<bool> answered{false};
  absl::StatusOr<HttpAnswer> put;
  std::thread writer([&] {
    put = cluster_->Put(0, "while-down", "w", Consistency::kDefault, absl::Seconds(20));
    answered.store(true);
  });
  // Down for a while: the write is still waiting (it has not failed).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const bool answered_while_down = answered.load();
  ASSERT_OK(cluster_->Restart(1));
  writer.join();
  EXPECT_FALSE(answered_while_down) << "answered before the owner came back: " << Describe(put);
  EXPECT_TRUE(IsOk200(put)) << Describe(put);
  absl::StatusOr<std::optional<std::string>> copy = cluster_->StoreValue(1, "while-down");
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->value_or("<absent>"), "w");
  absl::StatusOr<std::string> metrics = cluster_->MetricsText(0);
  ASSERT_TRUE(metrics.ok());
  EXPECT_NE(metrics->find("logkv_replica_acks_total{result=\"retried\"}"), std::string::npos);

  // Down for longer than the write wait: 503 once it has passed.
  cluster_->Kill(1);
  put = cluster_->Put(0, "still-down", "s", Consistency::kDefault, absl::Seconds(20));
  ASSERT_TRUE(put.ok()) << Describe(put);
  EXPECT_EQ(put->status, 503) << put->body;
}

// ---- Crash under load -------------------------------------------------------

TEST_F(ClusterTest, KillNineUnderWriteLoadLosesNoAcknowledgedWrite) {
  const uint64_t seed = TestSeedFromEnvironment("KillNineUnderWriteLoadLosesNoAcknowledgedWrite");
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 random(seed);
  ASSERT_OK(StartCluster(3, 3));
  const int victim = static_cast<int>(random() % 3);
  const auto before_kill = std::chrono::milliseconds(500 + random() % 1000);
  std::cout << "victim " << cluster_->node_id(victim) << ", killed after " << before_kill.count()
            << " ms of load" << std::endl;

  WriteLoad load(cluster_.get(), "crash", Consistency::kStrong, seed, 3);
  load.SetTargets({0, 1, 2});
  std::this_thread::sleep_for(before_kill);
  cluster_->Kill(victim);
  std::vector<int> survivors;
  for (int node = 0; node < 3; ++node) {
    if (node != victim) survivors.push_back(node);
  }
  load.SetTargets(survivors);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  load.Stop();
  const auto acknowledged = load.Acknowledged();
  std::cout << load.attempts() << " writes, " << acknowledged.size() << " acknowledged, "
            << load.errors() << " failed (ambiguous)" << std::endl;
  ASSERT_GT(acknowledged.size(), 0u);

  // Nothing acknowledged is lost while the victim is down...
  ExpectAllReadable(*cluster_, survivors, acknowledged);
  // ...nor after it comes back; and every owner converges.
  const absl::Time restart = absl::Now();
  ASSERT_OK(cluster_->Restart(victim));
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  absl::StatusOr<absl::Duration> took = WaitStoresMatch(*cluster_, {0, 1, 2}, acknowledged);
  ASSERT_OK(took);
  Report("kill9_converged_on_all_owners_after_restart", Ms(absl::Now() - restart));
  Report("kill9_acknowledged_writes", absl::StrCat(acknowledged.size()));
  // The restarted node coordinates quorum reads once it has caught up with
  // the control plane (until then it answers 503 "retry, or ask another
  // node", which says nothing of the data).
  ASSERT_OK(cluster_->WaitViewsConfirmed(kMembershipTimeout));
  ExpectAllReadable(*cluster_, {0, 1, 2}, acknowledged);
}

// ---- Anti-entropy -----------------------------------------------------------

// Writes keys [first, first + count) with values of value_bytes, from two
// threads, through nodes 0 and 1; fails the test on any error.
void WriteKeys(const ClusterProcess& cluster, const std::string& prefix, int first, int count,
               int value_bytes) {
  std::atomic<int> failures{0};
  auto writer = [&](int parity) {
    for (int i = first + parity; i < first + count; i += 2) {
      const std::string key = absl::StrFormat("%s-%06d", prefix, i);
      std::string value = absl::StrCat(key, "-");
      value.resize(static_cast<size_t>(value_bytes), 'v');
      absl::StatusOr<HttpAnswer> put = cluster.Put(parity, key, value, Consistency::kStrong);
      if (!IsOk200(put) && failures.fetch_add(1) < 3) {
        ADD_FAILURE() << "put " << key << ": " << Describe(put);
      }
    }
  };
  std::thread even(writer, 0);
  std::thread odd(writer, 1);
  even.join();
  odd.join();
  EXPECT_EQ(failures.load(), 0);
}

struct Repair {
  absl::Duration took;
  double bytes = 0;
};

// Restarts `node` (stopped, its data directory prepared by the caller) and
// waits until its key_count reaches `keys`; the time and the anti-entropy
// bytes every node reports having moved meanwhile.
absl::StatusOr<Repair> RestartAndRepair(ClusterProcess& cluster, int node, int64_t keys) {
  std::map<int, double> before;
  for (int other : cluster.RunningNodes()) {
    absl::StatusOr<double> bytes = AntiEntropyBytes(cluster, other);
    before[other] = bytes.ok() ? *bytes : 0;
  }
  if (absl::Status status = cluster.Restart(node); !status.ok()) return status;
  absl::StatusOr<absl::Duration> took = WaitKeyCount(cluster, node, keys);
  if (!took.ok()) return took.status();
  // Counters settle once the round that repaired the keys has finished.
  absl::SleepFor(absl::Milliseconds(500));
  Repair repair;
  repair.took = *took;
  absl::Status missing = absl::OkStatus();
  bool any = false;
  for (int other : cluster.RunningNodes()) {
    absl::StatusOr<double> bytes = AntiEntropyBytes(cluster, other);
    if (!bytes.ok()) {
      missing = bytes.status();
      continue;
    }
    any = true;
    repair.bytes += *bytes - (other == node ? 0 : before[other]);
  }
  if (!any) return missing;
  return repair;
}

TEST_F(ClusterTest, WipedNodeIsRepairedByAntiEntropy) {
  ASSERT_OK(StartCluster(3, 3));
  constexpr int kKeys = 2000;
  constexpr int kValueBytes = 512;
  const int repaired = 2;

  // The first half everywhere; a copy of the node that will be repaired.
  constexpr absl::Duration kReplicated = absl::Seconds(20);
  WriteKeys(*cluster_, "ae", 0, kKeys / 2, kValueBytes);
  for (int node = 0; node < 3; ++node) {
    ASSERT_OK(WaitKeyCount(*cluster_, node, kKeys / 2, kReplicated));
  }
  ASSERT_EQ(cluster_->Stop(repaired), 0);
  ScopedTempDir snapshot;
  std::error_code error;
  std::filesystem::copy(cluster_->data_dir(repaired), snapshot.path(),
                        std::filesystem::copy_options::recursive, error);
  ASSERT_FALSE(error) << error.message();
  ASSERT_OK(cluster_->Restart(repaired));
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  // The second half everywhere.
  WriteKeys(*cluster_, "ae", kKeys / 2, kKeys / 2, kValueBytes);
  for (int node = 0; node < 3; ++node) ASSERT_OK(WaitKeyCount(*cluster_, node, kKeys, kReplicated));

  // Wiped: every key is missing.
  ASSERT_EQ(cluster_->Stop(repaired), 0);
  ASSERT_OK(cluster_->Wipe(repaired));
  absl::StatusOr<Repair> wiped = RestartAndRepair(*cluster_, repaired, kKeys);
  ASSERT_OK(wiped);
  Report("anti_entropy_wiped_node_keys", absl::StrCat(kKeys));
  Report("anti_entropy_wiped_node_repair_time", Ms(wiped->took));
  Report("anti_entropy_wiped_node_keys_per_second",
         absl::StrFormat("%.0f", kKeys / absl::ToDoubleSeconds(wiped->took)));
  Report("anti_entropy_wiped_node_bytes", absl::StrFormat("%.0f", wiped->bytes));

  // Rolled back to the copy: half of the keys are missing.
  ASSERT_EQ(cluster_->Stop(repaired), 0);
  ASSERT_OK(cluster_->Wipe(repaired));
  std::filesystem::copy(snapshot.path(), cluster_->data_dir(repaired),
                        std::filesystem::copy_options::recursive, error);
  ASSERT_FALSE(error) << error.message();
  absl::StatusOr<Repair> half = RestartAndRepair(*cluster_, repaired, kKeys);
  ASSERT_OK(half);
  Report("anti_entropy_half_missing_repair_time", Ms(half->took));
  Report("anti_entropy_half_missing_bytes", absl::StrFormat("%.0f", half->bytes));

  // Bytes follow what was missing: at least the missing values, and about
  // half as much for half the keys (tree and key-list exchanges add a part
  // that does not shrink with the difference).
  EXPECT_GE(wiped->bytes, double{kKeys} * kValueBytes);
  EXPECT_GE(half->bytes, double{kKeys / 2} * kValueBytes);
  // Pushes from the old owners and pulls by the new copy may overlap, so
  // the bounds leave room for a key moving more than once.
  EXPECT_LE(wiped->bytes, 6.0 * kKeys * kValueBytes) << "far more bytes than what was missing";
  EXPECT_GT(half->bytes, 0.2 * wiped->bytes);
  EXPECT_LT(half->bytes, 0.9 * wiped->bytes) << "as many bytes for half the keys";

  // The repaired copy is the real one, key by key.
  std::map<std::string, std::optional<std::string>> expected;
  for (int i = 0; i < kKeys; i += 37) {
    const std::string key = absl::StrFormat("ae-%06d", i);
    std::string value = absl::StrCat(key, "-");
    value.resize(kValueBytes, 'v');
    expected[key] = value;
  }
  ASSERT_OK(WaitStoresMatch(*cluster_, {repaired}, expected, absl::Seconds(5)));
}

// ---- Membership changes -----------------------------------------------------

TEST_P(ClusterTransportTest, JoinUnderLoadAndGracefulLeaveLoseNoKey) {
  const uint64_t seed = TestSeedFromEnvironment("JoinUnderLoadAndGracefulLeaveLoseNoKey");
  RecordProperty("seed", std::to_string(seed));
  ASSERT_OK(StartCluster(3, 3));
  const int leaving = 1;
  WriteLoad load(cluster_.get(), "member", Consistency::kStrong, seed, 2);
  load.SetTargets({0, 2});
  std::this_thread::sleep_for(std::chrono::milliseconds(800));

  // A fourth node joins while writes go on, and takes a share of the keys.
  const absl::Time join = absl::Now();
  absl::StatusOr<int> joined = cluster_->AddNode();
  ASSERT_OK(joined);
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  Report("join_membership_converged_after", Ms(absl::Now() - join));
  absl::StatusOr<absl::Duration> filled = WaitKeyCount(*cluster_, *joined, 1);
  ASSERT_OK(filled);
  Report("join_first_keys_on_new_node_after", Ms(absl::Now() - join));
  load.SetTargets({0, 2, *joined});
  std::this_thread::sleep_for(std::chrono::milliseconds(800));

  // Node 1 leaves gracefully: the others see it go, then it stops.
  const absl::Time leave = absl::Now();
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(cluster_->http_port(leaving), "POST", "/members/leave",
                   {{"X-Cluster-Secret", "cluster-test-secret"}}, "", absl::Seconds(10));
  ASSERT_TRUE(IsOk200(answer)) << Describe(answer);
  ASSERT_OK(cluster_->WaitNotAlive({0, 2, *joined}, leaving, kMembershipTimeout));
  Report("leave_noticed_after", Ms(absl::Now() - leave));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  load.Stop();
  EXPECT_EQ(cluster_->Stop(leaving), 0);

  const auto acknowledged = load.Acknowledged();
  std::cout << load.attempts() << " writes, " << acknowledged.size() << " acknowledged, "
            << load.errors() << " failed (ambiguous)" << std::endl;
  ASSERT_GT(acknowledged.size(), 0u);
  const std::vector<int> remaining = {0, 2, *joined};
  ExpectAllReadable(*cluster_, remaining, acknowledged);
  // Three nodes remain with N = 3: each owns every key now, the new node
  // included (ownership moved from the node that left).
  absl::StatusOr<absl::Duration> took = WaitStoresMatch(*cluster_, remaining, acknowledged);
  ASSERT_OK(took);
  Report("leave_keys_on_remaining_owners_after", Ms(absl::Now() - leave));
}

// A fourth node takes a share of the keys; the owner it displaces keeps no
// copy once the new node has it (the purger), so each key stays on N nodes.
TEST_F(ClusterTest, AJoinMovesKeysAndOldOwnersDropWhatTheyNoLongerOwn) {
  constexpr int kReplicas = 2;
  ASSERT_OK(StartCluster(3, kReplicas));
  constexpr int kKeys = 120;
  std::map<std::string, std::optional<std::string>> written;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = absl::StrCat("moving-", i);
    const std::string value = absl::StrCat("m", i);
    absl::StatusOr<HttpAnswer> put = cluster_->Put(i % 3, key, value, Consistency::kStrong);
    ASSERT_TRUE(IsOk200(put)) << key << ": " << Describe(put);
    written[key] = value;
  }
  auto placement = [&](int* on_new_node, int new_node) {
    int misplaced = 0;
    *on_new_node = 0;
    for (const auto& [key, value] : written) {
      if (CountHolders(*cluster_, key, value) != kReplicas) ++misplaced;
      if (new_node >= 0) {
        absl::StatusOr<std::optional<std::string>> got = cluster_->StoreValue(new_node, key);
        if (got.ok() && *got == value) ++*on_new_node;
      }
    }
    return misplaced;
  };
  int unused = 0;
  const absl::Time placed_deadline = absl::Now() + kConvergeTimeout;
  while (placement(&unused, -1) != 0 && absl::Now() < placed_deadline) {
    absl::SleepFor(kStorePollInterval);
  }
  ASSERT_EQ(placement(&unused, -1), 0) << "every key on exactly N nodes before the join";

  const absl::Time join = absl::Now();
  absl::StatusOr<int> joined = cluster_->AddNode();
  ASSERT_OK(joined);
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  int on_new_node = 0;
  int misplaced = 0;
  const absl::Time deadline = absl::Now() + kConvergeTimeout;
  while (true) {
    misplaced = placement(&on_new_node, *joined);
    if ((misplaced == 0 && on_new_node > 0) || absl::Now() >= deadline) break;
    absl::SleepFor(kStorePollInterval);
  }
  Report("join_keys_moved_and_dropped_after", Ms(absl::Now() - join));
  EXPECT_EQ(misplaced, 0) << "keys not on exactly " << kReplicas << " nodes";
  EXPECT_GT(on_new_node, 0) << "the new node took no keys";
  std::cout << on_new_node << " of " << kKeys << " keys moved to the new node" << std::endl;
  // Each moved key displaced one old owner, which dropped it (not as a
  // tombstone: the key is simply no longer there).
  double dropped = 0;
  for (int node = 0; node < 3; ++node) {
    absl::StatusOr<double> forgotten = MetricValue(
        *cluster_, node, "logkv_purge_keys_forgotten_total{reason=\"not_owned\"}");
    ASSERT_OK(forgotten);
    dropped += *forgotten;
  }
  EXPECT_EQ(dropped, on_new_node);
  int64_t stored = 0;
  for (int node = 0; node < 4; ++node) {
    absl::StatusOr<int64_t> keys = cluster_->KeyCount(node);
    ASSERT_OK(keys);
    stored += *keys;
  }
  EXPECT_EQ(stored, kKeys * kReplicas) << "key_count over the nodes: no copies beyond N";
  // Every node still serves every key, strongly.
  for (int node = 0; node < 4; ++node) {
    for (const auto& [key, value] : written) {
      absl::StatusOr<HttpAnswer> get = cluster_->Get(node, key, Consistency::kStrong);
      ASSERT_TRUE(IsOk200(get) && get->body == *value)
          << cluster_->node_id(node) << " " << key << ": " << Describe(get);
    }
  }
}

// ---- Partitions -------------------------------------------------------------

// One client's view of one key: the operations in the order it made them.
struct Recorded {
  std::string key;
  lin::Operation operation;
};

lin::Outcome WriteOutcome(const absl::StatusOr<HttpAnswer>& answer) {
  if (!answer.ok()) return lin::Outcome::kAmbiguous;  // timeout, reset
  if (answer->status == 200) return lin::Outcome::kOk;
  // 4xx: refused before anything was applied; 5xx (503): maybe applied.
  if (answer->status >= 400 && answer->status < 500 && answer->status != 408) {
    return lin::Outcome::kFailed;
  }
  return lin::Outcome::kAmbiguous;
}

// Client threads, each recording the operations it makes (for the
// linearizability checker) in a vector of its own, until stopped.
class RecordingClients {
 public:
  RecordingClients(const RecordingClients&) = delete;
  RecordingClients& operator=(const RecordingClients&) = delete;
  virtual ~RecordingClients() { Stop(); }

  void Stop() {
    stop_.store(true);
    for (std::thread& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

 protected:
  RecordingClients(const ClusterProcess* cluster, std::vector<std::string> keys, int clients)
      : cluster_(cluster), keys_(std::move(keys)), records_(clients) {}

  // Runs run(client) on a thread per client; derived classes call it last
  // in their constructor.
  void Start(const std::function<void(int client)>& run) {
    for (int client = 0; client < static_cast<int>(records_.size()); ++client) {
      threads_.emplace_back([run, client] { run(client); });
    }
  }

  const ClusterProcess* const cluster_;
  const std::vector<std::string> keys_;
  std::vector<std::vector<Recorded>> records_;  // one per client, its own thread's
  std::atomic<bool> stop_{false};

 private:
  std::vector<std::thread> threads_;
};

// Clients doing strong gets (40%), puts (45%) and deletes (15%) on a few
// keys through random nodes, each with its own seeded schedule, recording
// every operation for the linearizability checker. A node that is down
// answers with a refused connection, recorded as ambiguous.
class StrongClients : public RecordingClients {
 public:
  StrongClients(const ClusterProcess* cluster, uint64_t seed, std::vector<std::string> keys,
                int clients)
      : RecordingClients(cluster, std::move(keys), clients) {
    Start([this, seed](int client) { Run(seed, client); });
  }
  ~StrongClients() override { Stop(); }

  // Checks every key's history (REQUIRES: stopped); the count of completed
  // operations.
  int Check(uint64_t seed) const {
    std::map<std::string, std::vector<lin::Operation>> histories;
    int completed = 0;
    for (const std::vector<Recorded>& client_records : records_) {
      for (const Recorded& record : client_records) {
        histories[record.key].push_back(record.operation);
        if (record.operation.outcome == lin::Outcome::kOk) ++completed;
      }
    }
    for (const auto& [key, history] : histories) {
      const lin::CheckResult result = lin::Check(history);
      std::cout << key << ": " << history.size() << " operations, "
                << lin::VerdictName(result.verdict) << " (" << result.steps << " steps)"
                << std::endl;
      Report(absl::StrCat("linearizability_", key), lin::VerdictName(result.verdict));
      EXPECT_NE(result.verdict, lin::Verdict::kNotLinearizable)
          << "key " << key << " (LOGKV_TEST_SEED=" << seed << ")\n"
          << result.explanation << "history (the first " << kMaxHistoryLines
          << " operations):\n"
          << lin::FormatHistory(history, kMaxHistoryLines);
    }
    return completed;
  }

 private:
  void Run(uint64_t seed, int client) {
    std::mt19937_64 random(seed * 31 + client);
    const int nodes = cluster_->size();
    for (int n = 0; !stop_.load(); ++n) {
      Recorded record;
      record.key = keys_[random() % keys_.size()];
      const int node = static_cast<int>(random() % nodes);
      lin::Operation& operation = record.operation;
      operation.client = client;
      operation.where = cluster_->node_id(node);
      const int choice = static_cast<int>(random() % 100);
      operation.invoke_ns = MonotonicNs();
      if (choice < 45) {
        operation.kind = lin::OperationKind::kPut;
        operation.value = absl::StrCat("c", client, "-", n);
        const auto answer = cluster_->Put(node, record.key, operation.value, Consistency::kStrong,
                                          kRequestTimeout);
        operation.outcome = WriteOutcome(answer);
      } else if (choice < 85) {
        operation.kind = lin::OperationKind::kGet;
        const auto answer = cluster_->Get(node, record.key, Consistency::kStrong, kRequestTimeout);
        if (answer.ok() && (answer->status == 200 || answer->status == 404)) {
          operation.outcome = lin::Outcome::kOk;
          operation.found = answer->status == 200;
          if (operation.found) operation.value = answer->body;
        } else {
          operation.outcome = lin::Outcome::kAmbiguous;
        }
      } else {
        operation.kind = lin::OperationKind::kDelete;
        const auto answer =
            cluster_->Delete(node, record.key, Consistency::kStrong, kRequestTimeout);
        operation.outcome = WriteOutcome(answer);
      }
      operation.complete_ns = MonotonicNs();
      records_[client].push_back(std::move(record));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

};

TEST_P(ClusterTransportTest, StrongIsLinearizableAndEventualConvergesUnderPartitions) {
  const uint64_t seed =
      TestSeedFromEnvironment("StrongIsLinearizableAndEventualConvergesUnderPartitions");
  RecordProperty("seed", std::to_string(seed));
  constexpr int kNodes = 5;
  ASSERT_OK(StartCluster(kNodes, 3));
  const std::vector<std::string> eventual_keys = {"ev-a", "ev-b", "ev-c", "ev-d"};
  constexpr auto kLoadFor = std::chrono::milliseconds(6000);

  std::atomic<bool> stop{false};
  StrongClients strong(cluster_.get(), seed, {"lin-a", "lin-b", "lin-c"}, /*clients=*/4);
  // Eventual writes to other keys through every side of the partitions.
  std::atomic<int> eventual_acknowledged{0};
  std::mutex eventual_mu;
  std::set<std::string> eventual_written;  // keys with an acknowledged write
  std::thread eventual([&] {
    std::mt19937_64 random(seed * 31 + 1000);
    for (int n = 0; !stop.load(); ++n) {
      const std::string& key = eventual_keys[random() % eventual_keys.size()];
      const auto answer =
          cluster_->Put(static_cast<int>(random() % kNodes), key, absl::StrCat("e", n),
                        Consistency::kEventual, kRequestTimeout);
      if (IsOk200(answer)) {
        ++eventual_acknowledged;
        std::lock_guard<std::mutex> lock(eventual_mu);
        eventual_written.insert(key);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });

  // The nemesis: a new fault every 0.5 to 1.1 s, healing in between.
  std::mt19937_64 nemesis(seed);
  std::vector<std::string> schedule;
  const auto end = std::chrono::steady_clock::now() + kLoadFor;
  while (std::chrono::steady_clock::now() < end) {
    std::vector<int> order(kNodes);
    for (int i = 0; i < kNodes; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), nemesis);
    absl::Status status;
    std::string what;
    switch (nemesis() % 4) {
      case 0:
        what = "heal";
        status = cluster_->Heal();
        break;
      case 1:
        what = absl::StrCat("isolate n", order[0]);
        status = cluster_->Partition({{order[0]}, {order[1], order[2], order[3], order[4]}});
        break;
      case 2:
        what = absl::StrCat("split n", order[0], ",n", order[1], " | rest");
        status = cluster_->Partition({{order[0], order[1]}, {order[2], order[3], order[4]}});
        break;
      default:
        what = absl::StrCat("one-way: n", order[0], " drops to n", order[1], ",n", order[2]);
        status = cluster_->Heal();
        if (status.ok()) status = cluster_->SetDropped(order[0], {order[1], order[2]});
        break;
    }
    schedule.push_back(what);
    if (!status.ok()) {
      ADD_FAILURE() << "nemesis step '" << what << "' failed: " << status;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500 + nemesis() % 600));
  }
  EXPECT_OK(cluster_->Heal());
  schedule.push_back("heal");
  std::cout << "nemesis schedule: " << absl::StrJoin(schedule, "; ") << std::endl;
  // A little load after healing, so the histories end on a connected cluster.
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  stop.store(true);
  strong.Stop();
  eventual.join();

  const int completed = strong.Check(seed);
  std::cout << completed << " strong operations completed, " << eventual_acknowledged.load()
            << " eventual writes acknowledged" << std::endl;
  EXPECT_GT(completed, 20) << "too few strong operations completed to check anything";

// Eventual: after healing, every key's copies agree on at least N nodes,
  // and every node answers that value.
  const absl::Time healed = absl::Now();
  for (const std::string& key : eventual_written) {
    std::map<std::string, int> copies;
    while (true) {
      copies.clear();
      for (int node = 0; node < kNodes; ++node) {
        absl::StatusOr<std::optional<std::string>> got = cluster_->StoreValue(node, key);
        if (got.ok() && got->has_value()) ++copies[**got];
      }
      if (copies.size() == 1 && copies.begin()->second >= 3) break;
      if (absl::Now() - healed > kConvergeTimeout) break;
      absl::SleepFor(kStorePollInterval);
    }
    if (copies.size() != 1 || copies.begin()->second < 3) {
      std::string seen;
      for (const auto& [value, count] : copies) absl::StrAppend(&seen, " ", value, "x", count);
      ADD_FAILURE() << key << " did not converge after healing; copies:" << seen;
      continue;
    }
    for (int node = 0; node < kNodes; ++node) {
      absl::StatusOr<HttpAnswer> get = cluster_->Get(node, key, Consistency::kEventual);
      EXPECT_TRUE(IsOk200(get) && get->body == copies.begin()->first)
          << key << " via " << cluster_->node_id(node) << ": " << Describe(get);
    }
  }
  Report("eventual_converged_after_heal", Ms(absl::Now() - healed));
}

// ---- Crashes and restarts ------------------------------------------------------

// Strong operations stay linearizable while every node in turn is killed
// (SIGKILL) and restarted on its data directory, as coordinator and as
// replica: clients go through every node, the one restarting included. A
// restarted node coordinates quorum operations only once a majority of the
// members it remembers have confirmed its view (503 until then).
// LOGKV_SOAK=1 runs it for 45 seconds instead of ten.
TEST_F(ClusterTest, StrongIsLinearizableWhileNodesAreKilledAndRestarted) {
  const uint64_t seed =
      TestSeedFromEnvironment("StrongIsLinearizableWhileNodesAreKilledAndRestarted");
  RecordProperty("seed", std::to_string(seed));
  const char* soak = std::getenv("LOGKV_SOAK");
  const bool soaking = soak != nullptr && std::string(soak) == "1";
  constexpr int kNodes = 3;
  ASSERT_OK(StartCluster(kNodes, 3, [](ClusterOptions& options) {
    options.extra_flags.push_back("--fsync=always");
  }));
  const auto load_for = std::chrono::seconds(soaking ? 45 : 10);

  StrongClients strong(cluster_.get(), seed, {"crash-a", "crash-b", "crash-c"}, /*clients=*/6);
  // The nemesis: every node in turn (a seeded order per round) is killed,
  // left down for 0.1 to 0.7 s, restarted, and left up for 1 to 2 s.
  std::mt19937_64 nemesis(seed);
  std::vector<std::string> schedule;
  std::vector<int> kills(kNodes, 0);
  const int64_t nemesis_origin_ns = MonotonicNs();
  const auto end = std::chrono::steady_clock::now() + load_for;
  while (std::chrono::steady_clock::now() < end) {
    std::vector<int> order(kNodes);
    for (int i = 0; i < kNodes; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), nemesis);
    for (int node : order) {
      if (std::chrono::steady_clock::now() >= end) break;
      cluster_->Kill(node);
      ++kills[node];
      const int down_ms = 100 + static_cast<int>(nemesis() % 600);
      std::this_thread::sleep_for(std::chrono::milliseconds(down_ms));
      // Restarted as an operator would, with its first command line (node 0,
      // started without seeds, relies on what it remembers), or seeded
      // through every other node.
      const bool as_started = nemesis() % 4 != 0;
      const absl::Status restarted =
          as_started ? cluster_->RestartAsStarted(node) : cluster_->Restart(node);
      schedule.push_back(absl::StrCat("kill n", node, " at ",
                                      (MonotonicNs() - nemesis_origin_ns) / 1'000'000 - down_ms,
                                      " ms for ", down_ms, " ms",
                                      as_started ? "" : " (restarted with seeds)"));
      if (!restarted.ok()) {
        ADD_FAILURE() << "restarting " << cluster_->node_id(node) << ": " << restarted;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1000 + nemesis() % 1000));
    }
    if (HasFailure()) break;
  }
  std::cout << "nemesis schedule: " << absl::StrJoin(schedule, "; ") << std::endl;
  // A little load on a whole cluster at the end.
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  strong.Stop();
  for (int node = 0; node < kNodes; ++node) {
    EXPECT_GT(kills[node], 0) << cluster_->node_id(node) << " was never killed";
  }
  const int completed = strong.Check(seed);
  std::cout << completed << " strong operations completed" << std::endl;
  Report("strong_operations_completed", std::to_string(completed));
  EXPECT_GT(completed, 20) << "too few strong operations completed to check anything";
}

// ---- Compare-and-set on consensus keys ----------------------------------------

// Clients doing gets (30%), compare-and-set puts (40%) and deletes (10%),
// plain puts (10%) and plain deletes (10%) on consensus keys through random
// nodes. A compare-and-set expects the version the client last saw of the
// key (If-Match: "N", or If-None-Match: * when it saw none), so some match
// and some do not; every answer's version (ETag) is recorded, and the
// checker models versions.
class CasClients : public RecordingClients {
 public:
  CasClients(const ClusterProcess* cluster, uint64_t seed, std::vector<std::string> keys,
             int clients)
      : RecordingClients(cluster, std::move(keys), clients) {
    Start([this, seed](int client) { Run(seed, client); });
  }
  ~CasClients() override { Stop(); }

  // Checks every key's history (REQUIRES: stopped); *matched gets the count
  // of compare-and-sets answered as done, *mismatched as a mismatch. The
  // count of completed operations.
  int Check(uint64_t seed, int* matched, int* mismatched) const {
    std::map<std::string, std::vector<lin::Operation>> histories;
    int completed = 0;
    for (const std::vector<Recorded>& client_records : records_) {
      for (const Recorded& record : client_records) {
        histories[record.key].push_back(record.operation);
        if (record.operation.outcome != lin::Outcome::kOk) continue;
        ++completed;
        if (record.operation.kind == lin::OperationKind::kCompareAndSet) {
          ++*(record.operation.cas_matched ? matched : mismatched);
        }
      }
    }
    // With versions an ambiguous write cannot be left out even if nobody
    // read its value, so the search may need more steps than for plain
    // registers; a key it gives up on is reported, and at least two keys
    // must be decided (the tests give three).
    lin::CheckOptions options;
    options.max_steps = 60'000'000;
    int decided = 0;
    for (const auto& [key, history] : histories) {
      const lin::CheckResult result = lin::Check(history, options);
      const auto ambiguous = std::count_if(history.begin(), history.end(), [](const auto& op) {
        return op.outcome == lin::Outcome::kAmbiguous && op.kind != lin::OperationKind::kGet;
      });
      std::cout << key << ": " << history.size() << " operations (" << ambiguous
                << " ambiguous writes), " << lin::VerdictName(result.verdict) << " ("
                << result.steps << " steps)" << std::endl;
      Report(absl::StrCat("linearizability_", key), lin::VerdictName(result.verdict));
      if (result.verdict == lin::Verdict::kLinearizable) ++decided;
      EXPECT_NE(result.verdict, lin::Verdict::kNotLinearizable)
          << "key " << key << " (LOGKV_TEST_SEED=" << seed << ")\n"
          << result.explanation << "history (the first " << kMaxHistoryLines
          << " operations):\n"
          << lin::FormatHistory(history, kMaxHistoryLines);
    }
    EXPECT_GE(decided, 2) << "the checker gave up on more than one key (LOGKV_TEST_SEED=" << seed
                          << ")";
    return completed;
  }

 private:
  // The version an answer's ETag names; 0 when it has none.
  static uint64_t VersionOf(const HttpAnswer& answer) {
    std::optional<std::string> tag = answer.Header("etag");
    uint64_t version = 0;
    if (!tag || tag->size() < 3 || !absl::SimpleAtoi(tag->substr(1, tag->size() - 2), &version)) {
      return 0;
    }
    return version;
  }

  absl::StatusOr<HttpAnswer> Send(int node, absl::string_view method, const std::string& key,
                                  HttpHeaders headers, absl::string_view body) const {
    // Longer than a node waits for a leader to be known (5 s) and then for
    // the leader's answer (5 s): the node answers, rather than the client
    // giving up, and a refusal that nothing was proposed is definite.
    return HttpExchange(cluster_->http_port(node), method, absl::StrCat("/v1/kv/", key), headers,
                        body, absl::Seconds(12));
  }

  // A write's outcome, with the failures that certainly applied nothing
  // told apart: no connection made, no leader known, a leader that could
  // not be reached or that refused to propose (not leading any more).
  static lin::Outcome Outcome(const absl::StatusOr<HttpAnswer>& answer) {
    const absl::string_view error =
        !answer.ok() ? answer.status().message()
                     : (answer->status == 503 ? absl::string_view(answer->body) : "");
    for (const char* never_sent :
         {"connect to port", "has no leader at the moment", "leader is not reachable",
          "does not lead the control plane", "cannot connect to peer", "unreachable (last ",
          "control plane is not running"}) {
      if (absl::StrContains(error, never_sent)) return lin::Outcome::kFailed;
    }
    const lin::Outcome outcome = WriteOutcome(answer);
    if (outcome == lin::Outcome::kAmbiguous) {
      static std::atomic<int> shown{0};
      if (shown.fetch_add(1) < 10) {
        std::cout << "ambiguous write: "
                  << (answer.ok() ? absl::StrCat(answer->status, " ", answer->body)
                                  : answer.status().ToString())
                  << std::endl;
      }
    }
    return outcome;
  }

  void Run(uint64_t seed, int client) {
    std::mt19937_64 random(seed * 37 + client);
    const int nodes = cluster_->size();
    std::map<std::string, uint64_t> seen;  // key: the last version this client saw (0: absent)
    for (int n = 0; !stop_.load(); ++n) {
      Recorded record;
      record.key = keys_[random() % keys_.size()];
      const int node = static_cast<int>(random() % nodes);
      lin::Operation& operation = record.operation;
      operation.client = client;
      operation.where = cluster_->node_id(node);
      uint64_t& last_seen = seen[record.key];
      int choice = static_cast<int>(random() % 100);
      if (choice >= 70 && choice < 80 && last_seen == 0) choice = 0;  // nothing to delete
      operation.invoke_ns = MonotonicNs();
      if (choice < 30) {
        operation.kind = lin::OperationKind::kGet;
        const auto answer = Send(node, "GET", record.key, {}, "");
        if (answer.ok() && (answer->status == 200 || answer->status == 404)) {
          operation.outcome = lin::Outcome::kOk;
          operation.found = answer->status == 200;
          if (operation.found) {
            operation.value = answer->body;
            operation.version = VersionOf(*answer);
          }
          last_seen = operation.version;
        } else {
          operation.outcome = lin::Outcome::kAmbiguous;
        }
      } else if (choice < 80) {
        operation.kind = lin::OperationKind::kCompareAndSet;
        operation.expected_version = last_seen;
        operation.cas_delete = choice >= 70;
        HttpHeaders headers;
        if (last_seen == 0) {
          headers.emplace_back("If-None-Match", "*");
        } else {
          headers.emplace_back("If-Match", absl::StrCat("\"", last_seen, "\""));
        }
        absl::StatusOr<HttpAnswer> answer;
        if (operation.cas_delete) {
          answer = Send(node, "DELETE", record.key, headers, "");
        } else {
          operation.value = absl::StrCat("c", client, "-", n);
          answer = Send(node, "PUT", record.key, headers, operation.value);
        }
        if (answer.ok() && answer->status == 412) {
          operation.outcome = lin::Outcome::kOk;
          operation.cas_matched = false;
        } else {
          operation.outcome = Outcome(answer);
          if (operation.outcome == lin::Outcome::kOk && !operation.cas_delete) {
            operation.version = VersionOf(*answer);
          }
          if (operation.outcome == lin::Outcome::kOk) last_seen = operation.version;
        }
      } else if (choice < 90) {
        operation.kind = lin::OperationKind::kPut;
        operation.value = absl::StrCat("c", client, "-", n);
        const auto answer = Send(node, "PUT", record.key, {}, operation.value);
        operation.outcome = Outcome(answer);
        if (operation.outcome == lin::Outcome::kOk) {
          operation.version = VersionOf(*answer);
          last_seen = operation.version;
        }
      } else {
        operation.kind = lin::OperationKind::kDelete;
        const auto answer = Send(node, "DELETE", record.key, {}, "");
        operation.outcome = Outcome(answer);
        if (operation.outcome == lin::Outcome::kOk) last_seen = 0;
      }
      operation.complete_ns = MonotonicNs();
      records_[client].push_back(std::move(record));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

};

// The node that leads the control plane, as the live nodes say; -1 if none
// does (an election under way).
int ControlLeader(const ClusterProcess& cluster) {
  for (int node = 0; node < cluster.size(); ++node) {
    const auto answer =
        HttpExchange(cluster.http_port(node), "GET", "/nodes", {}, "", absl::Seconds(1));
    if (!answer.ok() || answer->status != 200) continue;
    const nlohmann::json nodes = answer->Json();
    if (!nodes.is_array()) continue;
    for (const nlohmann::json& entry : nodes) {
      if (!entry.is_object() || !entry.value("leader", false)) continue;
      const std::string id = entry.value("id", "");
      for (int i = 0; i < cluster.size(); ++i) {
        if (cluster.node_id(i) == id) return i;
      }
    }
  }
  return -1;
}

// Compare-and-set with replicas > 1 on consensus keys (--consensus-prefix):
// linearizable, versions included, from clients on every node, while the
// control plane's leader and its followers are each killed (SIGKILL) and
// restarted in turn.
TEST_F(ClusterTest, CompareAndSetOnConsensusKeysIsLinearizableWhenEachNodeIsKilledInEachRole) {
  const uint64_t seed = TestSeedFromEnvironment(
      "CompareAndSetOnConsensusKeysIsLinearizableWhenEachNodeIsKilledInEachRole");
  RecordProperty("seed", std::to_string(seed));
  constexpr int kNodes = 3;
  ASSERT_OK(StartCluster(kNodes, 3, [](ClusterOptions& options) {
    options.extra_flags.push_back("--fsync=always");
    options.extra_flags.push_back("--consensus-prefix=cas/");
  }));
  // Outside the consensus keys compare-and-set stays refused (501), and a
  // consensus key takes no TTL (400).
  {
    const auto refused = HttpExchange(cluster_->http_port(1), "PUT", "/v1/kv/plain",
                                      {{"If-Match", "\"1\""}}, "v", kRequestTimeout);
    ASSERT_OK(refused.status());
    EXPECT_EQ(refused->status, 501) << refused->body;
    const auto ttl = HttpExchange(cluster_->http_port(2), "PUT", "/v1/kv/cas/ttl?ttl=10s", {}, "v",
                                  kRequestTimeout);
    ASSERT_OK(ttl.status());
    EXPECT_EQ(ttl->status, 400) << ttl->body;
  }
  CasClients clients(cluster_.get(), seed, {"cas/a", "cas/b", "cas/c"}, /*clients=*/5);
  // The nemesis: the leader, then a follower (the one killed least), and so
  // on; each down for 0.1 to 0.7 s and up for 1 to 2 s after.
  std::mt19937_64 nemesis(seed);
  std::vector<std::string> schedule;
  std::vector<int> kills(kNodes, 0);
  int leader_kills = 0;
  int follower_kills = 0;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(14);
  for (int round = 0; std::chrono::steady_clock::now() < end || leader_kills == 0 ||
                      follower_kills == 0;
       ++round) {
    if (round > 12) break;  // bounded, whatever the elections do
    int victim = -1;
    const int leader = ControlLeader(*cluster_);
    const bool as_leader = round % 2 == 0 && leader >= 0;
    if (as_leader) {
      victim = leader;
    } else {
      for (int node = 0; node < kNodes; ++node) {
        if (node == leader) continue;
        if (victim < 0 || kills[node] < kills[victim]) victim = node;
      }
    }
    cluster_->Kill(victim);
    ++kills[victim];
    ++(as_leader ? leader_kills : follower_kills);
    const int down_ms = 100 + static_cast<int>(nemesis() % 600);
    std::this_thread::sleep_for(std::chrono::milliseconds(down_ms));
    const absl::Status restarted = cluster_->RestartAsStarted(victim);
    schedule.push_back(absl::StrCat("kill ", as_leader ? "leader " : "follower ",
                                    cluster_->node_id(victim), " for ", down_ms, " ms"));
    if (!restarted.ok()) {
      ADD_FAILURE() << "restarting " << cluster_->node_id(victim) << ": " << restarted;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1000 + nemesis() % 1000));
  }
  std::cout << "nemesis schedule: " << absl::StrJoin(schedule, "; ") << std::endl;
  ASSERT_OK(cluster_->WaitAllAlive(kMembershipTimeout));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  clients.Stop();
  EXPECT_GT(leader_kills, 0) << "the control plane's leader was never killed";
  EXPECT_GT(follower_kills, 0) << "no follower was killed";
  int matched = 0;
  int mismatched = 0;
  const int completed = clients.Check(seed, &matched, &mismatched);
  std::cout << completed << " operations completed, " << matched << " compare-and-sets done, "
            << mismatched << " refused as mismatches" << std::endl;
  Report("cas_operations_completed", std::to_string(completed));
  EXPECT_GT(matched, 20) << "too few compare-and-sets succeeded to check anything";
  EXPECT_GT(mismatched, 0) << "no compare-and-set met a concurrent write";
  // Every node answers the same value and version for each key.
  for (const std::string key : {"cas/a", "cas/b", "cas/c"}) {
    std::set<std::pair<std::string, std::string>> answers;
    for (int node = 0; node < kNodes; ++node) {
      const auto answer = HttpExchange(cluster_->http_port(node), "GET",
                                       absl::StrCat("/v1/kv/", key), {}, "", kRequestTimeout);
      ASSERT_OK(answer.status());
      answers.emplace(absl::StrCat(answer->status, " ", answer->body),
                      answer->Header("etag").value_or(""));
    }
    EXPECT_EQ(answers.size(), 1u) << key << " reads differently on different nodes";
  }
  // The binary protocol: compare-and-set through one node, read through
  // another; a batch's consensus items go through the log too.
  ClientOptions first;
  first.nodes = {absl::StrCat("127.0.0.1:", cluster_->port(1))};
  ClientOptions second;
  second.nodes = {absl::StrCat("127.0.0.1:", cluster_->port(2))};
  absl::StatusOr<std::unique_ptr<Client>> writer = Client::Connect(first);
  absl::StatusOr<std::unique_ptr<Client>> reader = Client::Connect(second);
  ASSERT_OK(writer);
  ASSERT_OK(reader);
  logkv::PutOptions create;
  create.if_version = 0;
  absl::StatusOr<logkv::WriteResult> created = (*writer)->Put("cas/binary", "one", create);
  ASSERT_OK(created);
  EXPECT_EQ(created->version, 1u);
  EXPECT_EQ((*writer)->Put("cas/binary", "again", create).status().code(),
            absl::StatusCode::kFailedPrecondition);
  logkv::PutOptions next;
  next.if_version = 1;
  ASSERT_OK((*writer)->Put("cas/binary", "two", next).status());
  absl::StatusOr<Value> read = (*reader)->Get("cas/binary");
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "two");
  EXPECT_EQ(read->version, 2u);
  EXPECT_EQ((*reader)->GetVersion("cas/binary", 2)->value, "two");
  EXPECT_TRUE(absl::IsNotFound((*reader)->GetVersion("cas/binary", 1).status()));
  absl::StatusOr<std::vector<absl::Status>> batch = (*writer)->Batch(
      {{.key = "cas/batched", .value = "b"}, {.key = "plain-batched", .value = "p"},
       {.key = "cas/ttl", .value = "t", .ttl_ms = 1000}});
  ASSERT_OK(batch);
  ASSERT_EQ(batch->size(), 3u);
  EXPECT_OK((*batch)[0]);
  EXPECT_OK((*batch)[1]);
  EXPECT_EQ((*batch)[2].code(), absl::StatusCode::kInvalidArgument) << (*batch)[2];
  absl::StatusOr<Value> batched = (*reader)->Get("cas/batched");
  ASSERT_OK(batched);
  EXPECT_EQ(batched->version, 1u);
  // Every node holds the consensus keys, whatever the ring says: "this
  // node's copy" (GET /store) reads them on each.
  for (int node = 0; node < kNodes; ++node) {
    absl::StatusOr<HttpAnswer> local = cluster_->GetStore(node, "cas/batched");
    ASSERT_OK(local.status());
    EXPECT_EQ(local->status, 200) << cluster_->node_id(node) << ": " << local->body;
    EXPECT_EQ(local->body, "b");
  }
}

// The membership changes of the two tests below, under their clients' load:
// after a second a fourth node joins; two seconds later the node pick names
// then is decommissioned (POST /members/leave); two seconds more. Answers
// the node that left.
absl::StatusOr<int> JoinThenDecommission(ClusterProcess& cluster,
                                         const std::function<int()>& pick) {
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  if (absl::StatusOr<int> joined = cluster.AddNode(); !joined.ok()) return joined.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  const int leaving = pick();
  if (leaving < 0) return absl::FailedPreconditionError("no node to decommission");
  absl::StatusOr<HttpAnswer> left =
      HttpExchange(cluster.http_port(leaving), "POST", "/members/leave",
                   {{"X-Cluster-Secret", "cluster-test-secret"}}, "{}", absl::Seconds(60));
  if (!left.ok()) return left.status();
  if (left->status != 200) {
    return absl::InternalError(absl::StrCat("the leave answered ", left->status, ": ", left->body));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  return leaving;
}

// Strong operations stay linearizable while the membership changes: a node
// joins (the ring grows from three to four members, and the new one owns
// keys it has to be filled with), then another is decommissioned (its keys
// are handed off, then the committed configuration drops it), with clients
// on the three first nodes throughout.
TEST_F(ClusterTest, StrongIsLinearizableThroughAJoinAndADecommission) {
  const uint64_t seed =
      TestSeedFromEnvironment("StrongIsLinearizableThroughAJoinAndADecommission");
  RecordProperty("seed", std::to_string(seed));
  ASSERT_OK(StartCluster(3, 3));
  StrongClients strong(cluster_.get(), seed, {"member-a", "member-b", "member-c", "member-d"},
                       /*clients=*/6);
  ASSERT_OK(JoinThenDecommission(*cluster_, [] { return 1; }).status());
  strong.Stop();
  const int completed = strong.Check(seed);
  std::cout << completed << " strong operations completed" << std::endl;
  EXPECT_GT(completed, 20) << "too few strong operations completed to check anything";
}

// Compare-and-set on consensus keys stays linearizable while the control
// plane's membership changes: a fourth node joins (a new member of the Raft
// group), then the control plane's leader is decommissioned (leadership
// moves and another member becomes a voter), with clients on the three
// first nodes throughout. Once the leader has left it no longer applies the
// log: its operations fail and count as failed or ambiguous.
TEST_F(ClusterTest, CompareAndSetOnConsensusKeysIsLinearizableThroughAJoinAndADecommission) {
  const uint64_t seed = TestSeedFromEnvironment(
      "CompareAndSetOnConsensusKeysIsLinearizableThroughAJoinAndADecommission");
  RecordProperty("seed", std::to_string(seed));
  ASSERT_OK(StartCluster(3, 3, [](ClusterOptions& options) {
    options.extra_flags.push_back("--consensus-prefix=cas/");
  }));
  CasClients clients(cluster_.get(), seed, {"cas/a", "cas/b", "cas/c"}, /*clients=*/8);
  const absl::StatusOr<int> leaving =
      JoinThenDecommission(*cluster_, [this] { return ControlLeader(*cluster_); });
  ASSERT_OK(leaving.status());
  clients.Stop();
  const int now_leading = ControlLeader(*cluster_);
  EXPECT_GE(now_leading, 0);
  EXPECT_NE(now_leading, *leaving) << "the member that left still leads";
  int matched = 0;
  int mismatched = 0;
  const int completed = clients.Check(seed, &matched, &mismatched);
  std::cout << completed << " operations completed, " << matched << " compare-and-sets done, "
            << mismatched << " refused as mismatches; " << cluster_->node_id(*leaving)
            << " (the leader) left" << std::endl;
  EXPECT_GT(matched, 20) << "too few compare-and-sets succeeded to check anything";
}

// A member's committed state as node's GET /members/ shows it ("joining",
// "active", "leaving"), or "" when node lists no such member.
std::string CommittedState(const ClusterProcess& cluster, int node, const std::string& member) {
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(cluster.http_port(node), "GET", "/members/", {}, "", absl::Seconds(5));
  if (!answer.ok() || answer->status != 200) return "?";
  const nlohmann::json list = answer->Json();
  if (!list.is_array()) return "?";
  for (const nlohmann::json& item : list) {
    if (item.is_object() && item.value("id", "") == member) return item.value("member_state", "");
  }
  return "";
}

// Polls (bounded) until node shows member in state ("" = no longer a
// member: not listed, or listed as removed).
absl::Status WaitCommittedState(const ClusterProcess& cluster, int node, const std::string& member,
                                const std::string& state, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string seen;
  while (absl::Now() < deadline) {
    seen = CommittedState(cluster, node, member);
    if (seen == state || (state.empty() && seen == "removed")) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(cluster.node_id(node), " shows ", member, " as '",
                                                  seen, "', not '", state, "'"));
}

// The same while members are killed (SIGKILL) and restarted in the middle
// of the changes: the joining node and an old owner during the join, the
// leaving node once its leave is committed, and an owner that receives its
// keys. The join finishes, the leave goes on after the leaving node's
// restart until it is removed, strong operations stay linearizable, and no
// key written before is lost.
TEST_F(ClusterTest, StrongIsLinearizableWhenMembersAreKilledDuringAJoinAndADecommission) {
  const uint64_t seed = TestSeedFromEnvironment(
      "StrongIsLinearizableWhenMembersAreKilledDuringAJoinAndADecommission");
  RecordProperty("seed", std::to_string(seed));
  ASSERT_OK(StartCluster(3, 3, [](ClusterOptions& options) {
    options.extra_flags.push_back("--fsync=always");
  }));
  constexpr int kKept = 200;
  for (int i = 0; i < kKept; ++i) {
    absl::StatusOr<HttpAnswer> put = cluster_->Put(i % 3, absl::StrCat("kept-", i),
                                                   absl::StrCat("v", i), Consistency::kStrong);
    ASSERT_TRUE(IsOk200(put)) << "kept-" << i << ": " << Describe(put);
  }
  std::mt19937_64 nemesis(seed);
  auto pause = [&nemesis](int at_least_ms, int spread_ms) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds(at_least_ms + static_cast<int>(nemesis() % spread_ms)));
  };
  std::vector<std::string> schedule;
  auto crash = [&](int node, const std::string& when) {
    cluster_->Kill(node);
    schedule.push_back(absl::StrCat("kill ", cluster_->node_id(node), " ", when));
    pause(100, 400);
    return cluster_->RestartAsStarted(node);
  };
  StrongClients strong(cluster_.get(), seed,
                       {"member-crash-a", "member-crash-b", "member-crash-c", "member-crash-d"},
                       /*clients=*/6);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  absl::StatusOr<int> joined = cluster_->AddNode();
  ASSERT_TRUE(joined.ok()) << joined.status();
  const int joiner = *joined;
  pause(0, 500);
  ASSERT_OK(crash(joiner, "(joining)"));
  pause(0, 500);
  ASSERT_OK(crash(2, "(an owner, during the join)"));
  ASSERT_OK(WaitCommittedState(*cluster_, 0, cluster_->node_id(joiner), "active",
                               absl::Seconds(90)))
      << cluster_->Describe();

  const int leaving = 1;
  const std::string leaving_id = cluster_->node_id(leaving);
  std::thread leave([&] {
    // Answered or cut off by the kill: either way the leave goes on.
    (void)HttpExchange(cluster_->http_port(leaving), "POST", "/members/leave",
                       {{"X-Cluster-Secret", "cluster-test-secret"}}, "{}", absl::Seconds(60));
  });
  const absl::Status committed =
      WaitCommittedState(*cluster_, 0, leaving_id, "leaving", absl::Seconds(30));
  if (committed.ok()) {
    pause(0, 300);
    EXPECT_OK(crash(leaving, "(leaving)"));
    pause(0, 300);
    EXPECT_OK(crash(0, "(an owner, during the leave)"));
  }
  leave.join();
  ASSERT_OK(committed);
  for (int node : {0, 2, joiner}) {
    ASSERT_OK(WaitCommittedState(*cluster_, node, leaving_id, "", absl::Seconds(90)))
        << cluster_->Describe();
  }
  // The node that left is stopped, as an operator would (it may not hear of
  // its own removal, and would stay at an older epoch than the members).
  cluster_->Stop(leaving);
  ASSERT_OK(cluster_->WaitViewsConfirmed(absl::Seconds(30)));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  strong.Stop();
  std::cout << "nemesis schedule: " << absl::StrJoin(schedule, "; ") << std::endl;
  const int completed = strong.Check(seed);
  std::cout << completed << " strong operations completed" << std::endl;
  EXPECT_GT(completed, 20) << "too few strong operations completed to check anything";
  for (int i = 0; i < kKept; ++i) {
    const int node = std::vector<int>{0, 2, joiner}[i % 3];
    absl::StatusOr<HttpAnswer> got = cluster_->Get(node, absl::StrCat("kept-", i),
                                                   Consistency::kStrong);
    EXPECT_TRUE(IsOk200(got) && got->body == absl::StrCat("v", i))
        << "kept-" << i << " via " << cluster_->node_id(node) << ": " << Describe(got);
  }
}

// A joining node whose disk fills up during its fill (its data directory is
// a small tmpfs; needs the right to mount, skipped elsewhere) gives up at
// its join timeout and exits, saying why; it stays a joining member, strong
// operations stay linearizable and served by the others meanwhile, and once
// its disk has room it is restarted, finishes the join, and every key is
// read back through it.
TEST_F(ClusterTest, AJoinThatFillsItsDiskExitsSayingWhyAndFinishesOnceThereIsRoom) {
  const uint64_t seed =
      TestSeedFromEnvironment("AJoinThatFillsItsDiskExitsSayingWhyAndFinishesOnceThereIsRoom");
  RecordProperty("seed", std::to_string(seed));
  ASSERT_OK(StartCluster(3, 3, [](ClusterOptions& options) {
    options.extra_flags.push_back("--join_timeout_ms=12000");
    // The join gives up after 12 s of trying, which on a loaded machine
    // can take the start past the usual 20 s: the start is given more.
    options.start_timeout = absl::Seconds(45);
  }));
  // The next node's data directory (ClusterProcess names it by node id).
  const std::string next_dir =
      std::filesystem::path(cluster_->data_dir(0)).parent_path() / "n3";
  // Room to start (the control plane's log, three prepared segments of 4 MiB,
  // and the shards' first blocks take about 14 MiB) but not for the keys it
  // will own (about 18 MiB: 3 of 4 owners for each of 1,500 keys of 16 KiB).
  ScopedTmpfs tmpfs(next_dir, "24m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  constexpr int kKeys = 1500;
  const std::string padding(16 << 10, 'p');
  for (int i = 0; i < kKeys; ++i) {
    absl::StatusOr<HttpAnswer> put =
        cluster_->Put(i % 3, absl::StrCat("full-", i), absl::StrCat("v", i, padding),
                      Consistency::kEventual);
    ASSERT_TRUE(IsOk200(put)) << "full-" << i << ": " << Describe(put);
  }
  StrongClients strong(cluster_.get(), seed, {"disk-a", "disk-b", "disk-c"}, /*clients=*/4);
  absl::StatusOr<int> joined = cluster_->AddNode();
  ASSERT_FALSE(joined.ok()) << "the join finished on a disk too small for its keys";
  const int joiner = 3;
  ASSERT_EQ(cluster_->size(), 4);
  ASSERT_EQ(cluster_->data_dir(joiner), next_dir);
  const std::string said(joined.status().message());
  EXPECT_NE(said.find("the join did not finish in time"), std::string::npos) << said;
  EXPECT_NE(said.find("No space left on device"), std::string::npos) << said;
  EXPECT_EQ(CommittedState(*cluster_, 0, cluster_->node_id(joiner)), "joining");
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));

  ASSERT_OK(tmpfs.Resize("512m"));
  ASSERT_OK(cluster_->RestartAsStarted(joiner));
  ASSERT_OK(WaitCommittedState(*cluster_, 0, cluster_->node_id(joiner), "active",
                               absl::Seconds(60)))
      << cluster_->Describe();
  ASSERT_OK(cluster_->WaitViewsConfirmed(absl::Seconds(30)));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  strong.Stop();
  const int completed = strong.Check(seed);
  std::cout << completed << " strong operations completed" << std::endl;
  EXPECT_GT(completed, 20) << "too few strong operations completed to check anything";
  for (int i = 0; i < kKeys; ++i) {
    absl::StatusOr<HttpAnswer> got =
        cluster_->Get(joiner, absl::StrCat("full-", i), Consistency::kStrong);
    ASSERT_TRUE(IsOk200(got) && got->body == absl::StrCat("v", i, padding))
        << "full-" << i << ": " << (got.ok() ? got->status : 0);
  }
}

// A member that dies while it is joining (here: its disk is too small for
// its keys, so its join gives up and it exits) stays an owner after the
// change it began; an operator removes it through any other node with
// POST /members/remove, which refuses what is not a joining member that is
// down, and the cluster goes on without it.
TEST_F(ClusterTest, AMemberThatDiedJoiningIsRemovedByAnOperator) {
  ASSERT_OK(StartCluster(3, 3, [](ClusterOptions& options) {
    options.extra_flags.push_back("--join_timeout_ms=12000");
  }));
  const std::string next_dir =
      std::filesystem::path(cluster_->data_dir(0)).parent_path() / "n3";
  // As in AJoinThatFillsItsDiskExitsSayingWhyAndFinishesOnceThereIsRoom.
  ScopedTmpfs tmpfs(next_dir, "24m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  const std::string padding(16 << 10, 'p');
  for (int i = 0; i < 1500; ++i) {
    ASSERT_TRUE(IsOk200(cluster_->Put(i % 3, absl::StrCat("stuck-", i), padding,
                                      Consistency::kEventual)));
  }
  ASSERT_FALSE(cluster_->AddNode().ok()) << "the join finished on a disk too small for its keys";
  const std::string stuck = cluster_->node_id(3);
  ASSERT_EQ(CommittedState(*cluster_, 0, stuck), "joining");
  // Refused while the others still think it alive (it may be filling up).
  ASSERT_OK(cluster_->WaitNotAlive({0, 1, 2}, 3));
  // Writes it owns after the change it began are hinted for it meanwhile.
  const std::string hints = absl::StrCat("logkv_hinted_handoff_hints{peer=\"", stuck, "\"}");
  // A node's hints for it (no sample: none); -1 when /metrics did not answer.
  auto hinted = [&](int node) {
    absl::StatusOr<double> value = MetricValue(*cluster_, node, hints);
    if (value.ok()) return *value;
    return absl::IsNotFound(value.status()) ? 0.0 : -1.0;
  };
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE(IsOk200(cluster_->Put(i % 3, absl::StrCat("while-down-", i), "v",
                                      Consistency::kEventual)));
  }
  double queued = 0;
  for (int attempt = 0; attempt < 100 && queued <= 0; ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Milliseconds(100));
    queued = hinted(0) + hinted(1) + hinted(2);
  }
  EXPECT_GT(queued, 0) << "no hint for the member that died";

  auto remove = [&](int through, const std::string& body, bool with_secret) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (with_secret) headers.emplace_back("X-Cluster-Secret", "cluster-test-secret");
    absl::StatusOr<HttpAnswer> answer = HttpExchange(
        cluster_->http_port(through), "POST", "/members/remove", headers, body, absl::Seconds(30));
    return answer.ok() ? answer->status : -1;
  };
  const std::string body = nlohmann::json{{"node_id", stuck}}.dump();
  EXPECT_EQ(remove(1, body, /*with_secret=*/false), 401);
  EXPECT_EQ(remove(1, nlohmann::json{{"node_id", cluster_->node_id(0)}}.dump(), true), 409)
      << "an active member is not removed this way";
  EXPECT_EQ(remove(1, nlohmann::json{{"node_id", "nobody:1"}}.dump(), true), 404);
  EXPECT_EQ(remove(1, "{}", true), 400);
  EXPECT_EQ(remove(1, body, true), 200);
  for (int node = 0; node < 3; ++node) {
    ASSERT_OK(WaitCommittedState(*cluster_, node, stuck, "", absl::Seconds(30)));
  }
  ASSERT_OK(cluster_->WaitViewsConfirmed(absl::Seconds(30)));
  // Removed, it owns nothing: its hints are dropped (it never gossips that
  // it left, being down).
  for (int node = 0; node < 3; ++node) {
    for (int attempt = 0; attempt < 300 && hinted(node) != 0; ++attempt) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(hinted(node), 0) << cluster_->node_id(node) << " keeps hints for " << stuck;
  }
  for (int node = 0; node < 3; ++node) {
    const std::string key = absl::StrCat("after-removal-", node);
    EXPECT_TRUE(IsOk200(cluster_->Put(node, key, "v", Consistency::kStrong))) << key;
    absl::StatusOr<HttpAnswer> got = cluster_->Get((node + 1) % 3, key, Consistency::kStrong);
    EXPECT_TRUE(IsOk200(got) && got->body == "v") << key << ": " << Describe(got);
  }
}

TEST_F(ClusterTest, ClientRoutesEachKeyToAnOwner) {
  ASSERT_OK(StartCluster(3, 3));
  std::vector<double> before;
  for (int node = 0; node < 3; ++node) {
    absl::StatusOr<double> value = MetricValue(*cluster_, node, "logkv_replications_total");
    ASSERT_OK(value);
    before.push_back(*value);
  }
  // Connected to node 0 only; the members come with Hello.
  ClientOptions options;
  options.nodes = {absl::StrCat("127.0.0.1:", cluster_->port(0))};
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_OK(client);
  constexpr int kKeys = 300;
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_OK((*client)->Put(absl::StrCat("routed-", i), absl::StrCat("v", i)).status());
  }
  for (int i = 0; i < kKeys; ++i) {
    absl::StatusOr<Value> value = (*client)->Get(absl::StrCat("routed-", i));
    ASSERT_OK(value);
    EXPECT_EQ(value->value, absl::StrCat("v", i));
  }
  // Each write was coordinated by its key's first owner: every node
  // coordinated some (through node 0 alone, only node 0 would have).
  for (int node = 0; node < 3; ++node) {
    absl::StatusOr<double> value = MetricValue(*cluster_, node, "logkv_replications_total");
    ASSERT_OK(value);
    EXPECT_GT(*value - before[node], 0) << cluster_->node_id(node) << " coordinated no write";
  }
}

// Seed 003's ?server= takes any name a member has (its id, its binary or
// HTTP address, its URL): this node answers for itself and sends the client
// on to another member, whose answer is its own.
TEST_F(ClusterTest, StatsRoutesAnswerForEveryMemberName) {
  ASSERT_OK(StartCluster(2, 1));
  for (int node = 0; node < 2; ++node) {
    const std::string http = absl::StrCat("127.0.0.1:", cluster_->http_port(node));
    for (const std::string& name : {cluster_->node_id(node), cluster_->address(node), http,
                                    "http://" + http}) {
      for (const char* route : {"/db/stats", "/cache/stats"}) {
        SCOPED_TRACE(absl::StrCat(route, "?server=", name));
        const std::string target = absl::StrCat(route, "?server=", name);
        absl::StatusOr<HttpAnswer> self =
            HttpExchange(cluster_->http_port(node), "GET", target, {}, "", absl::Seconds(5));
        ASSERT_OK(self);
        EXPECT_EQ(self->status, 200) << self->body;
        absl::StatusOr<HttpAnswer> other =
            HttpExchange(cluster_->http_port(1 - node), "GET", target, {}, "", absl::Seconds(5));
        ASSERT_OK(other);
        EXPECT_EQ(other->status, 307) << other->body;
        const std::string location = other->Header("location").value_or("");
        EXPECT_EQ(location, absl::StrCat("http://", http, target));
        absl::StatusOr<HttpAnswer> followed =
            HttpExchange(cluster_->http_port(node), "GET", location.substr(7 + http.size()), {},
                         "", absl::Seconds(5));
        ASSERT_OK(followed);
        EXPECT_EQ(followed->status, 200) << followed->body;
      }
    }
  }
  absl::StatusOr<HttpAnswer> unknown = HttpExchange(
      cluster_->http_port(0), "GET", "/db/stats?server=nobody", {}, "", absl::Seconds(5));
  ASSERT_OK(unknown);
  EXPECT_EQ(unknown->status, 404) << unknown->body;
}

}  // namespace
}  // namespace logkv::test
