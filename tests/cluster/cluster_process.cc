#include "tests/cluster/cluster_process.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>
#include <set>
#include <system_error>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/http/http_fetch.h"

namespace logkv::test {
namespace {

constexpr absl::Duration kControlTimeout = absl::Seconds(5);
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// Fresh nodes whose port was taken between the pick and the bind.
constexpr int kFreshStartAttempts = 3;
// A restarted node whose old port is still held by a stray connection.
constexpr absl::Duration kRestartRetryFor = absl::Seconds(5);

std::string LastLines(const std::string& text, int max_lines) {
  if (max_lines <= 0) return text;
  size_t position = text.size();
  for (int line = 0; line <= max_lines && position != std::string::npos && position > 0;) {
    position = text.rfind('\n', position - 1);
    if (position != std::string::npos) ++line;
  }
  return position == std::string::npos || position == 0 ? text : text.substr(position + 1);
}

bool PortTaken(const std::string& output) {
  return absl::StrContains(output, "in use") || absl::StrContains(output, "EADDRINUSE");
}

HttpHeaders ConsistencyHeaders(Consistency consistency) {
  if (consistency == Consistency::kDefault) return {};
  return {{"X-Consistency", ConsistencyName(consistency)}};
}

}  // namespace

const char* ConsistencyName(Consistency consistency) {
  switch (consistency) {
    case Consistency::kDefault:
      return "";
    case Consistency::kEventual:
      return "eventual";
    case Consistency::kStrong:
      return "strong";
  }
  return "";
}

namespace {

absl::Mutex cluster_tls_mu;
std::optional<ClusterTlsFiles> cluster_tls ABSL_GUARDED_BY(cluster_tls_mu);

// HttpExchange over HTTPS, with the cluster's client certificate.
absl::StatusOr<HttpAnswer> HttpsExchange(const ClusterTlsFiles& tls, int port,
                                         absl::string_view method, absl::string_view target,
                                         const HttpHeaders& headers, absl::string_view body,
                                         absl::Duration timeout) {
  server::http::FetchRequest request;
  request.method = std::string(method);
  request.target = std::string(target);
  request.headers = headers;
  request.body = std::string(body);
  request.timeout = timeout;
  request.max_bytes = 1u << 30;
  request.tls = true;
  request.tls_ca_file = tls.ca_file;
  request.tls_cert_file = tls.cert_file;
  request.tls_key_file = tls.key_file;
  absl::StatusOr<server::http::FetchedResponse> fetched =
      server::http::HttpFetch("127.0.0.1", port, request);
  if (!fetched.ok()) return fetched.status();
  HttpAnswer answer;
  answer.status = fetched->status;
  answer.status_line = absl::StrCat("HTTP/1.1 ", fetched->status);
  answer.headers = std::move(fetched->headers);
  answer.body = std::move(fetched->body);
  return answer;
}

}  // namespace

std::optional<ClusterTlsFiles> ClusterTls() {
  absl::MutexLock lock(&cluster_tls_mu);
  return cluster_tls;
}

absl::StatusOr<HttpAnswer> HttpExchange(int port, absl::string_view method,
                                        absl::string_view target, const HttpHeaders& headers,
                                        absl::string_view body, absl::Duration timeout) {
  if (std::optional<ClusterTlsFiles> tls = ClusterTls(); tls.has_value() && method != "HEAD") {
    return HttpsExchange(*tls, port, method, target, headers, body, timeout);
  }
  const absl::Time deadline = absl::Now() + timeout;
  // A zero timeout makes Connect try once: a node that is down is refused
  // at once on loopback, and the caller sees Unavailable without waiting.
  absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(port, absl::ZeroDuration());
  if (!connection.ok()) return connection.status();
  if (absl::Status status = connection->Send(BuildRequest(method, target, headers, body));
      !status.ok()) {
    return status;
  }
  return connection->Read(method == "HEAD", std::max(deadline - absl::Now(), absl::ZeroDuration()));
}

bool NodeEntryAlive(const nlohmann::json& entry) {
  if (!entry.is_object()) return false;
  if (auto alive = entry.find("alive"); alive != entry.end() && alive->is_boolean()) {
    return alive->get<bool>();
  }
  if (auto state = entry.find("state"); state != entry.end() && state->is_string()) {
    const std::string text = state->get<std::string>();
    return text == "alive" || text == "suspect";
  }
  return false;
}

std::string NodeEntryId(const nlohmann::json& entry) {
  if (!entry.is_object()) return "";
  for (const char* name : {"id", "node_id"}) {
    if (auto id = entry.find(name); id != entry.end() && id->is_string()) {
      return id->get<std::string>();
    }
  }
  return "";
}

uint64_t TestSeedFromEnvironment(absl::string_view test_name) {
  uint64_t seed = 0;
  const char* text = std::getenv("LOGKV_TEST_SEED");
  if (text == nullptr || !absl::SimpleAtoi(text, &seed)) seed = std::random_device{}();
  std::cout << test_name << ": LOGKV_TEST_SEED=" << seed << " (set it to replay)" << std::endl;
  return seed;
}

ClusterProcess::ClusterProcess(ClusterOptions options) : options_(std::move(options)) {
  nodes_.reserve(kMaxNodes);
  if (options_.mutual_tls) {
    // One certificate serves every node (it names 127.0.0.1 and each node
    // id, as a joining node's must) and the test's HTTPS client.
    const std::string dir = root_.Subdir("certs");
    std::string names = "127.0.0.1 localhost";
    for (int i = 0; i < kMaxNodes; ++i) absl::StrAppend(&names, " n", i);
    const std::string script = LOGKV_MAKE_CERTS;
    tls_ready_ =
        std::system(absl::StrCat(script, " ", dir, " ca >/dev/null 2>&1").c_str()) == 0 &&
        std::system(absl::StrCat(script, " ", dir, " server node ", names, " >/dev/null 2>&1")
                        .c_str()) == 0;
    tls_files_ = {dir + "/ca.pem", dir + "/node.pem", dir + "/node.key"};
    absl::MutexLock lock(&cluster_tls_mu);
    cluster_tls = tls_files_;
  }
  drainer_ = std::thread([this] {
    while (!stopping_.load()) {
      DrainOutputs();
      absl::SleepFor(absl::Milliseconds(200));
    }
  });
}

ClusterProcess::~ClusterProcess() {
  if (options_.mutual_tls) {
    absl::MutexLock lock(&cluster_tls_mu);
    cluster_tls.reset();
  }
  stopping_.store(true);
  drainer_.join();
  // Stop in reverse so that node 0, the seed, goes last; each stop is bounded.
  std::lock_guard<std::mutex> lock(process_mu_);
  for (int node = size() - 1; node >= 0; --node) {
    LogkvdProcess* process = nodes_[node]->process.get();
    if (process != nullptr && process->running()) process->Stop(absl::Seconds(10));
  }
}

void ClusterProcess::DrainOutputs() {
  std::lock_guard<std::mutex> lock(process_mu_);
  for (const std::unique_ptr<Node>& node : nodes_) {
    if (node->process != nullptr) node->process->Output();
  }
}

int ClusterProcess::PickUnusedPort() {
  // Two picks in a row may return the same port (it was closed in between);
  // ports already given to a node are never handed out again.
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int port = PickFreePort();
    if (std::find(ports_used_.begin(), ports_used_.end(), port) == ports_used_.end()) {
      ports_used_.push_back(port);
      return port;
    }
  }
  return PickFreePort();
}

std::string ClusterProcess::address(int node) const {
  return absl::StrCat("127.0.0.1:", nodes_[node]->port);
}

bool ClusterProcess::running(int node) const {
  std::lock_guard<std::mutex> lock(process_mu_);
  return node >= 0 && node < size() && nodes_[node]->process != nullptr &&
         nodes_[node]->process->running();
}

std::vector<int> ClusterProcess::RunningNodes() const {
  std::vector<int> nodes;
  for (int node = 0; node < size(); ++node) {
    if (running(node)) nodes.push_back(node);
  }
  return nodes;
}

std::vector<std::string> ClusterProcess::Flags(const Node& node,
                                               const std::vector<std::string>& seeds) const {
  std::vector<std::string> flags = {
      absl::StrCat("--data-dir=", node.data_dir),
      absl::StrCat("--listen=127.0.0.1:", node.port),
      absl::StrCat("--http=127.0.0.1:", node.http_port),
      absl::StrCat("--node-id=", node.node_id),
      absl::StrCat("--advertise=127.0.0.1:", node.port),
      absl::StrCat("--cluster-secret=", options_.cluster_secret),
      absl::StrCat("--replicas=", options_.replicas),
      absl::StrCat("--gossip-interval-ms=", options_.gossip_interval_ms),
      absl::StrCat("--dead-after-ms=", options_.dead_after_ms),
      absl::StrCat("--purge-interval-ms=", options_.purge_interval_ms),
      absl::StrCat("--purge-ring-stable-ms=", options_.purge_ring_stable_ms),
      "--fault-injection",
      "--threads=1",
      "--shards=2",
  };
  if (!seeds.empty()) flags.push_back(absl::StrCat("--seeds=", absl::StrJoin(seeds, ",")));
  if (options_.write_wait_ms > 0) {
    flags.push_back(absl::StrCat("--write-wait-ms=", options_.write_wait_ms));
  }
  // A wiped node takes its own place again (it lost its data).
  if (node.wiped) flags.push_back("--replace");
  if (options_.mutual_tls) {
    for (const char* side : {"--tls", "--peer-tls"}) {
      flags.push_back(absl::StrCat(side, "-cert=", tls_files_.cert_file));
      flags.push_back(absl::StrCat(side, "-key=", tls_files_.key_file));
      flags.push_back(absl::StrCat(side, "-ca=", tls_files_.ca_file));
    }
  }
  for (const std::string& flag : options_.extra_flags) flags.push_back(flag);
  for (size_t i = 0; i < nodes_.size() && i < options_.node_flags.size(); ++i) {
    if (nodes_[i].get() != &node) continue;
    for (const std::string& flag : options_.node_flags[i]) flags.push_back(flag);
  }
  return flags;
}

absl::Status ClusterProcess::StartNode(int index, const std::vector<std::string>& seeds,
                                       bool fresh) {
  Node& node = *nodes_[index];
  std::lock_guard<std::mutex> lock(process_mu_);
  const absl::Time retry_until = absl::Now() + kRestartRetryFor;
  for (int attempt = 0;; ++attempt) {
    if (node.process != nullptr) absl::StrAppend(&node.earlier_output, node.process->Output());
    node.process = std::make_unique<LogkvdProcess>(options_.logkvd_binary, Flags(node, seeds));
    absl::Status status = node.process->Start(options_.start_timeout);
    if (status.ok()) return status;
    const bool taken = PortTaken(node.process->Output());
    if (taken && fresh && attempt + 1 < kFreshStartAttempts) {
      node.port = PickUnusedPort();
      node.http_port = PickUnusedPort();
      continue;
    }
    if (taken && !fresh && absl::Now() < retry_until) {
      absl::SleepFor(absl::Milliseconds(250));
      continue;
    }
    return absl::Status(status.code(),
                        absl::StrCat("node ", node.node_id, " (port ", node.port, ", http ",
                                     node.http_port, "): ", status.message()));
  }
}

absl::Status ClusterProcess::Start() {
  if (options_.mutual_tls && !tls_ready_) {
    return absl::FailedPreconditionError("tools/make-certs.sh could not make the certificates");
  }
  for (int i = 0; i < options_.nodes; ++i) {
    absl::StatusOr<int> node = AddNode();
    if (!node.ok()) return node.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ClusterProcess::AddNode() {
  const int index = size();
  if (index >= kMaxNodes) {
    return absl::ResourceExhaustedError(absl::StrCat("at most ", kMaxNodes, " nodes"));
  }
  auto node = std::make_unique<Node>();
  node->node_id = absl::StrCat("n", index);
  node->port = PickUnusedPort();
  node->http_port = PickUnusedPort();
  node->data_dir = static_cast<size_t>(index) < options_.node_data_dirs.size() &&
                           !options_.node_data_dirs[index].empty()
                       ? options_.node_data_dirs[index]
                       : root_.Subdir(node->node_id);
  std::error_code error;
  std::filesystem::create_directories(node->data_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("mkdir ", node->data_dir, ": ", error.message()));
  }
  std::vector<std::string> seeds;
  for (int other : RunningNodes()) {
    seeds.push_back(address(other));
    break;  // the first running node (node 0 while it runs) is the seed
  }
  node->first_seeds = seeds;
  {
    std::lock_guard<std::mutex> lock(process_mu_);
    nodes_.push_back(std::move(node));
  }
  if (absl::Status status = StartNode(index, seeds, /*fresh=*/true); !status.ok()) return status;
  return index;
}

void ClusterProcess::Kill(int node) {
  std::lock_guard<std::mutex> lock(process_mu_);
  if (nodes_[node]->process != nullptr) nodes_[node]->process->Kill();
}

int ClusterProcess::Stop(int node) {
  std::lock_guard<std::mutex> lock(process_mu_);
  if (nodes_[node]->process == nullptr) return -1;
  return nodes_[node]->process->Stop(absl::Seconds(20));
}

absl::Status ClusterProcess::Wipe(int node) {
  if (running(node)) {
    return absl::FailedPreconditionError(absl::StrCat("wipe of running node ", node_id(node)));
  }
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(nodes_[node]->data_dir, error)) {
    std::filesystem::remove_all(entry.path(), error);
    if (error) break;
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat("wipe ", nodes_[node]->data_dir, ": ", error.message()));
  }
  nodes_[node]->wiped = true;
  return absl::OkStatus();
}

absl::Status ClusterProcess::Restart(int node) {
  if (running(node)) {
    return absl::FailedPreconditionError(absl::StrCat("restart of running node ", node_id(node)));
  }
  std::vector<std::string> seeds;
  for (int other = 0; other < size(); ++other) {
    if (other != node) seeds.push_back(address(other));
  }
  return StartNode(node, seeds, /*fresh=*/false);
}

absl::Status ClusterProcess::RestartAsStarted(int node) {
  if (running(node)) {
    return absl::FailedPreconditionError(absl::StrCat("restart of running node ", node_id(node)));
  }
  return StartNode(node, nodes_[node]->first_seeds, /*fresh=*/false);
}

absl::Status ClusterProcess::WaitViewsConfirmed(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    std::string unconfirmed;
    // And every node holds the same committed configuration: until the last
    // membership change has reached every node, coordinators may place keys
    // on two rings (strong operations are linearizable once it has).
    std::set<uint64_t> epochs;
    for (int node : RunningNodes()) {
      absl::StatusOr<HttpAnswer> health = HttpExchange(http_port(node), "GET", "/health", {}, "",
                                                       absl::Seconds(2));
      const bool confirmed = health.ok() && health->status == 200 &&
                             health->Json().value("view_confirmed", false);
      if (!confirmed) absl::StrAppend(&unconfirmed, unconfirmed.empty() ? "" : ", ", node_id(node));
      if (confirmed) {
        const nlohmann::json control = health->Json().value("control", nlohmann::json::object());
        epochs.insert(control.value("epoch", uint64_t{0}));
      }
    }
    if (unconfirmed.empty() && epochs.size() > 1) unconfirmed = "(epochs differ)";
    if (unconfirmed.empty()) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("views not confirmed on ", unconfirmed, "\n", Describe()));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

absl::Status ClusterProcess::WaitAlive(const std::vector<int>& observers,
                                       const std::vector<int>& expected, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last_problem = "not polled yet";
  while (true) {
    bool all = true;
    for (int observer : observers) {
      if (!running(observer)) {
        return absl::FailedPreconditionError(
            absl::StrCat("observer ", node_id(observer), " is not running\n", Describe()));
      }
      absl::StatusOr<nlohmann::json> nodes = Nodes(observer);
      if (!nodes.ok()) {
        last_problem = absl::StrCat(node_id(observer), ": ", nodes.status().ToString());
        all = false;
        break;
      }
      absl::flat_hash_set<std::string> alive;
      for (const nlohmann::json& entry : *nodes) {
        if (NodeEntryAlive(entry)) alive.insert(NodeEntryId(entry));
      }
      for (int node : expected) {
        if (!alive.contains(node_id(node))) {
          last_problem = absl::StrCat(node_id(observer), " does not list ", node_id(node),
                                      " alive: ", nodes->dump());
          all = false;
          break;
        }
      }
      if (!all) break;
    }
    if (all) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("membership did not converge within ",
                                                      absl::FormatDuration(timeout), ": ",
                                                      last_problem, "\n", Describe()));
    }
    absl::SleepFor(kPollInterval);
  }
}

absl::Status ClusterProcess::WaitAllAlive(absl::Duration timeout) {
  const std::vector<int> nodes = RunningNodes();
  return WaitAlive(nodes, nodes, timeout);
}

absl::Status ClusterProcess::WaitNotAlive(const std::vector<int>& observers, int node,
                                          absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last_problem;
  while (true) {
    bool none = true;
    for (int observer : observers) {
      absl::StatusOr<nlohmann::json> nodes = Nodes(observer);
      if (!nodes.ok()) {
        last_problem = absl::StrCat(node_id(observer), ": ", nodes.status().ToString());
        none = false;
        break;
      }
      for (const nlohmann::json& entry : *nodes) {
        if (NodeEntryId(entry) == node_id(node) && NodeEntryAlive(entry)) {
          last_problem = absl::StrCat(node_id(observer), " still lists ", node_id(node),
                                      " alive: ", nodes->dump());
          none = false;
        }
      }
      if (!none) break;
    }
    if (none) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          node_id(node), " still alive after ", absl::FormatDuration(timeout), ": ", last_problem));
    }
    absl::SleepFor(kPollInterval);
  }
}

absl::Status ClusterProcess::PostFault(int node, const std::vector<std::string>& dropped) {
  const nlohmann::json body = {{"drop", dropped}};
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(http_port(node), "POST", "/internal/fault",
                   {{"Content-Type", "application/json"}}, body.dump(), kControlTimeout);
  if (!answer.ok()) {
    return absl::Status(
        answer.status().code(),
        absl::StrCat("POST /internal/fault to ", node_id(node), ": ", answer.status().message()));
  }
  if (answer->status != 200) {
    return absl::FailedPreconditionError(absl::StrCat(
        "POST /internal/fault to ", node_id(node), " answered ", answer->status, " ", answer->body,
        " (is the node built with fault injection and run with --fault-injection?)"));
  }
  return absl::OkStatus();
}

absl::Status ClusterProcess::SetDropped(int from, const std::vector<int>& to) {
  std::vector<std::string> dropped;
  for (int node : to) dropped.push_back(address(node));
  return PostFault(from, dropped);
}

absl::Status ClusterProcess::Partition(const std::vector<std::vector<int>>& groups) {
  for (int node : RunningNodes()) {
    const std::vector<int>* own = nullptr;
    for (const std::vector<int>& group : groups) {
      if (std::find(group.begin(), group.end(), node) != group.end()) own = &group;
    }
    std::vector<int> others;
    for (int other = 0; other < size(); ++other) {
      const bool together =
          own != nullptr && std::find(own->begin(), own->end(), other) != own->end();
      if (other != node && !together) others.push_back(other);
    }
    if (absl::Status status = SetDropped(node, others); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ClusterProcess::Heal() {
  for (int node : RunningNodes()) {
    if (absl::Status status = PostFault(node, {}); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<HttpAnswer> ClusterProcess::Put(int node, absl::string_view key,
                                               absl::string_view value, Consistency consistency,
                                               absl::Duration timeout) const {
  HttpHeaders headers = ConsistencyHeaders(consistency);
  headers.emplace_back("Content-Type", "application/octet-stream");
  return HttpExchange(http_port(node), "PUT", absl::StrCat("/v1/kv/", key), headers, value,
                      timeout);
}

absl::StatusOr<HttpAnswer> ClusterProcess::Get(int node, absl::string_view key,
                                               Consistency consistency,
                                               absl::Duration timeout) const {
  return HttpExchange(http_port(node), "GET", absl::StrCat("/v1/kv/", key),
                      ConsistencyHeaders(consistency), "", timeout);
}

absl::StatusOr<HttpAnswer> ClusterProcess::Delete(int node, absl::string_view key,
                                                  Consistency consistency,
                                                  absl::Duration timeout) const {
  return HttpExchange(http_port(node), "DELETE", absl::StrCat("/v1/kv/", key),
                      ConsistencyHeaders(consistency), "", timeout);
}

absl::StatusOr<HttpAnswer> ClusterProcess::GetStore(int node, absl::string_view key,
                                                    absl::Duration timeout) const {
  return HttpExchange(http_port(node), "GET", absl::StrCat("/store/", key), {}, "", timeout);
}

absl::StatusOr<std::optional<std::string>> ClusterProcess::StoreValue(int node,
                                                                      absl::string_view key) const {
  absl::StatusOr<HttpAnswer> answer = GetStore(node, key);
  if (!answer.ok()) return answer.status();
  if (answer->status == 404) return std::optional<std::string>();
  if (answer->status != 200) {
    return absl::InternalError(absl::StrCat("GET /store/", key, " on ", node_id(node), " answered ",
                                            answer->status, " ", answer->body));
  }
  return std::optional<std::string>(std::move(answer->body));
}

absl::StatusOr<nlohmann::json> ClusterProcess::Nodes(int node) const {
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(http_port(node), "GET", "/nodes", {}, "", kControlTimeout);
  if (!answer.ok()) return answer.status();
  nlohmann::json body = answer->Json();
  if (answer->status != 200 || !body.is_array()) {
    return absl::InternalError(
        absl::StrCat("GET /nodes answered ", answer->status, " ", answer->body));
  }
  return body;
}

absl::StatusOr<nlohmann::json> ClusterProcess::MetricsJson(int node) const {
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(http_port(node), "GET", "/metrics", {}, "", kControlTimeout);
  if (!answer.ok()) return answer.status();
  nlohmann::json body = answer->Json();
  if (answer->status != 200 || !body.is_object()) {
    return absl::InternalError(
        absl::StrCat("GET /metrics answered ", answer->status, " ", answer->body));
  }
  return body;
}

absl::StatusOr<std::string> ClusterProcess::MetricsText(int node) const {
  absl::StatusOr<HttpAnswer> answer =
      HttpExchange(http_port(node), "GET", "/metrics?format=prometheus", {}, "", kControlTimeout);
  if (!answer.ok()) return answer.status();
  if (answer->status != 200) {
    return absl::InternalError(
        absl::StrCat("GET /metrics?format=prometheus answered ", answer->status));
  }
  return std::move(answer->body);
}

absl::StatusOr<int64_t> ClusterProcess::KeyCount(int node) const {
  absl::StatusOr<nlohmann::json> metrics = MetricsJson(node);
  if (!metrics.ok()) return metrics.status();
  auto count = metrics->find("key_count");
  if (count == metrics->end() || !count->is_number_integer()) {
    return absl::InternalError(absl::StrCat("/metrics has no key_count: ", metrics->dump()));
  }
  return count->get<int64_t>();
}

std::string ClusterProcess::Output(int node, int max_lines) {
  std::lock_guard<std::mutex> lock(process_mu_);
  std::string text = nodes_[node]->earlier_output;
  if (nodes_[node]->process != nullptr) absl::StrAppend(&text, nodes_[node]->process->Output());
  return LastLines(text, max_lines);
}

std::string ClusterProcess::Describe(int max_lines_per_node) {
  std::string text = "cluster:\n";
  for (int node = 0; node < size(); ++node) {
    absl::StrAppend(&text, "  ", node_id(node), " binary 127.0.0.1:", port(node),
                    " http 127.0.0.1:", http_port(node), running(node) ? " running" : " stopped",
                    "\n");
    const std::string output = Output(node, max_lines_per_node);
    for (absl::string_view line : absl::StrSplit(output, '\n', absl::SkipEmpty())) {
      absl::StrAppend(&text, "    | ", line, "\n");
    }
  }
  return text;
}

}  // namespace logkv::test
