// Whole logkv nodes in the test's own process (server/node.h): one node
// through the C++ client and HTTP, restarted on its data; the checks of
// NodeOptions::Validate; a cluster of three nodes formed through seeds,
// with a node stopped and started again; accounts on. Ports are chosen by
// the kernel (port 0) and reused for a restart; every wait is bounded; every
// node is stopped by its destructor.
#include "server/node.h"

#include <sodium.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "logkv/client.h"
#include "nlohmann/json.hpp"
#include "protocol/version.h"
#include "server/auth/password.h"
#include "server/namespaces.h"
#include "server/cluster/cluster_node.h"
#include "server/control/control_plane.h"
#include "server/log.h"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"

namespace logkv::server {
namespace {

using ::logkv::Client;
using ::logkv::ClientOptions;
using ::logkv::Consistency;
using ::logkv::PutOptions;
using ::logkv::Value;
using ::logkv::WriteResult;
using ::logkv::test::Fetch;
using ::logkv::test::HttpAnswer;
using ::logkv::test::ScopedTempDir;

// Small and quiet: one loop, two shards, no fsync, fast gossip.
NodeOptions TestOptions(const std::string& data_dir) {
  NodeOptions options;
  options.data_dir = data_dir;
  options.listen = HostPort{"127.0.0.1", 0};
  options.http = {HostPort{"127.0.0.1", 0}};
  options.threads = 1;
  options.shards = 2;
  options.fsync = engine::FsyncPolicy::kNever;
  options.gossip_interval = absl::Milliseconds(100);
  options.dead_after = absl::Seconds(2);
  return options;
}

std::unique_ptr<Client> Connect(int port) {
  ClientOptions options;
  options.nodes = {absl::StrCat("127.0.0.1:", port)};
  // Each test chooses the node that coordinates.
  options.route_to_owners = false;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

class NodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogLevel(Level::kWarning); }

  // Starts nodes n0, n1... (the others seeded through n0) with --replicas
  // replicas(i), and waits until each confirmed its view of all of them.
  // options_ keeps each one's options with the ports it got: a restart
  // comes back on them, and peers know it by them.
  void StartCluster(int count, const std::function<int(int)>& replicas) {
    for (int i = 0; i < count; ++i) {
      NodeOptions node_options = TestOptions(dir_.Subdir(absl::StrCat("n", i)));
      node_options.node_id = absl::StrCat("n", i);
      node_options.cluster_secret = "node-test-secret";
      node_options.replicas = replicas(i);
      if (i > 0) node_options.seeds = {absl::StrCat("127.0.0.1:", nodes_[0]->port())};
      auto node = std::make_unique<Node>(node_options);
      ASSERT_TRUE(node->Start().ok()) << "node " << i;
      node_options.listen.port = node->port();
      node_options.http = {HostPort{"127.0.0.1", node->http_ports().front()}};
      options_.push_back(node_options);
      nodes_.push_back(std::move(node));
    }
    WaitViewsConfirmed();
  }

  void WaitViewsConfirmed() {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (const auto& node : nodes_) {
      ASSERT_TRUE(node->WaitViewConfirmed(deadline, nodes_.size()).ok())
          << node->WaitViewConfirmed(deadline, nodes_.size());
    }
  }

  // Starts node i again, stopped before (not a leave), in a new Node.
  void StartAgain(int i) {
    absl::Status started;
    for (const absl::Time give_up = absl::Now() + absl::Seconds(10);;) {
      nodes_[i] = std::make_unique<Node>(options_[i]);
      started = nodes_[i]->Start();
      // The port may still be held for a moment after the close.
      if (started.ok() || !absl::IsUnavailable(started) || absl::Now() >= give_up) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(started.ok()) << started;
  }

  ScopedTempDir dir_;
  std::vector<NodeOptions> options_;
  std::vector<std::unique_ptr<Node>> nodes_;
};

TEST_F(NodeTest, ServesClientAndHttpAndKeepsDataAcrossRestart) {
  const NodeOptions options = TestOptions(dir_.Subdir("data"));
  {
    Node node(options);
    ASSERT_TRUE(node.Start().ok());
    EXPECT_TRUE(node.running());
    ASSERT_NE(node.port(), 0);
    ASSERT_EQ(node.http_ports().size(), 1u);
    EXPECT_EQ(node.node_id(), absl::StrCat("127.0.0.1:", node.port()));

    std::unique_ptr<Client> client = Connect(node.port());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Put("from-client", "one").ok());
    absl::StatusOr<Value> got = client->Get("from-client");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->value, "one");

    const int http_port = node.http_ports().front();
    absl::StatusOr<HttpAnswer> answer = Fetch(http_port, "GET", "/health");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 200) << answer->body;
    EXPECT_EQ(answer->Json().value("node_id", ""), node.node_id()) << answer->body;
    EXPECT_TRUE(answer->Json().value("view_confirmed", false)) << answer->body;
    EXPECT_EQ(answer->Json().value("version", ""), BuildVersion()) << answer->body;
    answer = Fetch(http_port, "GET", "/metrics?format=prometheus");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_TRUE(absl::StrContains(
        answer->body, absl::StrCat("logkv_build_info{version=\"", BuildVersion(),
                                   "\",build_type=\"", BuildType(), "\"} 1")))
        << answer->body;
    answer = Fetch(http_port, "GET", "/v1/kv/from-client");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 200) << answer->body;
    EXPECT_EQ(answer->body, "one");
    answer = Fetch(http_port, "PUT", "/v1/kv/from-http", {}, "two");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 200) << answer->body;
    got = client->Get("from-http");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->value, "two");
    EXPECT_EQ(node.engine()->GetStats().client_keys, 2u);

    client.reset();
    EXPECT_TRUE(node.Stop().ok());
    EXPECT_FALSE(node.running());
    EXPECT_TRUE(node.Stop().ok());  // idempotent
    EXPECT_EQ(node.Start().code(), absl::StatusCode::kFailedPrecondition);
  }
  // The same data directory, in a new Node.
  Node again(options);
  ASSERT_TRUE(again.Start().ok());
  std::unique_ptr<Client> client = Connect(again.port());
  ASSERT_NE(client, nullptr);
  for (const auto& [key, value] : {std::pair{"from-client", "one"}, {"from-http", "two"}}) {
    absl::StatusOr<Value> got = client->Get(key);
    ASSERT_TRUE(got.ok()) << key << ": " << got.status();
    EXPECT_EQ(got->value, value);
  }
  absl::StatusOr<HttpAnswer> answer =
      Fetch(again.http_ports().front(), "GET", "/v1/kv/from-client");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->body, "one");
}

// Text that compresses well, as JSON documents do.
std::string Document(size_t bytes) {
  std::string out;
  for (int i = 0; out.size() < bytes; ++i) {
    absl::StrAppend(&out, "{\"id\":", i, ",\"name\":\"user-", i % 13, "\",\"ok\":true},");
  }
  out.resize(bytes);
  return out;
}

// --compression=zstd: clients read what they wrote, through either protocol
// and after a restart with compression off, and /metrics shows the ratio.
TEST_F(NodeTest, CompressedValuesReadBackAndShowInMetrics) {
  NodeOptions options = TestOptions(dir_.Subdir("data"));
  options.compression = engine::Compression::kZstd;
  options.compression_level = 5;
  options.compression_min_bytes = 64;
  const std::string document = Document(20'000);
  {
    Node node(options);
    ASSERT_TRUE(node.Start().ok());
    std::unique_ptr<Client> client = Connect(node.port());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Put("doc", document).ok());
    ASSERT_TRUE(client->Put("small", "tiny").ok());
    absl::StatusOr<Value> got = client->Get("doc");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->value, document);
    absl::StatusOr<HttpAnswer> answer = Fetch(node.http_ports().front(), "GET", "/v1/kv/doc");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->body, document);

    const engine::Stats stats = node.engine()->GetStats();
    EXPECT_EQ(stats.values_compressed, 1u);
    EXPECT_LT(stats.value_bytes_stored * 4, stats.value_bytes_in);
    answer = Fetch(node.http_ports().front(), "GET", "/metrics?format=prometheus");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_TRUE(absl::StrContains(answer->body, "\nlogkv_values_compressed_total 1\n"))
        << answer->body;
    EXPECT_TRUE(absl::StrContains(
        answer->body, absl::StrCat("\nlogkv_value_bytes_in_total ", stats.value_bytes_in, "\n")))
        << answer->body;
    EXPECT_FALSE(absl::StrContains(answer->body, "\nlogkv_value_compression_ratio 1\n"))
        << answer->body;
    client.reset();
    ASSERT_TRUE(node.Stop().ok());
  }
  options.compression = engine::Compression::kNone;
  Node again(options);
  ASSERT_TRUE(again.Start().ok());
  std::unique_ptr<Client> client = Connect(again.port());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<Value> got = client->Get("doc");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->value, document);
}

// Replicas get plain values and compress by their own setting: a
// compressing and a plain node hold the same data and the same Merkle
// summary, which hashes keys and timestamps, never stored bytes.
TEST_F(NodeTest, ReplicasWithDifferentCompressionAgree) {
  std::vector<std::unique_ptr<Node>> nodes;
  for (int i = 0; i < 2; ++i) {
    NodeOptions node_options = TestOptions(dir_.Subdir(absl::StrCat("n", i)));
    node_options.node_id = absl::StrCat("n", i);
    node_options.cluster_secret = "node-test-secret";
    node_options.replicas = 2;
    node_options.compression = i == 0 ? engine::Compression::kZstd : engine::Compression::kNone;
    if (i > 0) node_options.seeds = {absl::StrCat("127.0.0.1:", nodes[0]->port())};
    auto node = std::make_unique<Node>(node_options);
    ASSERT_TRUE(node->Start().ok()) << "node " << i;
    nodes.push_back(std::move(node));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (const auto& node : nodes) {
    ASSERT_TRUE(node->WaitViewConfirmed(deadline, 2).ok()) << node->WaitViewConfirmed(deadline, 2);
  }
  PutOptions strong_write;
  strong_write.consistency = Consistency::kStrong;
  const std::string document = Document(30'000);
  for (int i = 0; i < 2; ++i) {
    std::unique_ptr<Client> writer = Connect(nodes[i]->port());
    ASSERT_NE(writer, nullptr);
    absl::StatusOr<WriteResult> written =
        writer->Put(absl::StrCat("doc-", i), document, strong_write);
    ASSERT_TRUE(written.ok()) << written.status();
  }
  for (int i = 0; i < 2; ++i) {
    std::unique_ptr<Client> reader = Connect(nodes[i]->port());
    ASSERT_NE(reader, nullptr);
    for (int key = 0; key < 2; ++key) {
      absl::StatusOr<Value> read = reader->Get(absl::StrCat("doc-", key), Consistency::kStrong);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_EQ(read->value, document);
    }
  }
  const engine::Stats zstd = nodes[0]->engine()->GetStats();
  const engine::Stats plain = nodes[1]->engine()->GetStats();
  EXPECT_EQ(zstd.values_compressed, 2u) << "its own write and the replicated one";
  EXPECT_EQ(plain.values_compressed, 0u);
  EXPECT_GE(plain.value_bytes_stored, 2 * document.size()) << "plain values reached it";
  engine::Engine* a = nodes[0]->engine();
  engine::Engine* b = nodes[1]->engine();
  for (uint32_t partition = 0; partition < a->MerklePartitionCount(); ++partition) {
    EXPECT_EQ(a->MerkleNodeHash(partition, 1), b->MerkleNodeHash(partition, 1)) << partition;
  }
}

// A start that fails (the port is taken) undoes what it did: the data
// directory is closed again, so another node can open it.
TEST_F(NodeTest, FailedStartReleasesWhatItOpened) {
  Node first(TestOptions(dir_.Subdir("first")));
  ASSERT_TRUE(first.Start().ok());

  NodeOptions clash = TestOptions(dir_.Subdir("second"));
  clash.listen.port = first.port();
  Node second(clash);
  const absl::Status status = second.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "port in use")) << status;
  EXPECT_FALSE(second.running());
  EXPECT_TRUE(second.Stop().ok());

  Node third(TestOptions(dir_.Subdir("second")));
  EXPECT_TRUE(third.Start().ok());
}

TEST(NodeOptionsTest, ValidateRefusesWithLogkvdsMessages) {
  struct Case {
    std::string name;
    std::function<void(NodeOptions*)> change;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"replicas", [](NodeOptions* o) { o->replicas = 0; }, absl::StatusCode::kInvalidArgument,
       "--replicas must be at least 1"},
      {"quorums", [](NodeOptions* o) { o->read_quorum = -1; },
       absl::StatusCode::kInvalidArgument, "--w and --r must be 0 (by consistency) or more"},
      {"gossip", [](NodeOptions* o) { o->gossip_interval = absl::Milliseconds(5); },
       absl::StatusCode::kInvalidArgument, "--gossip_interval_ms must be at least 10"},
      {"wildcard without auth", [](NodeOptions* o) { o->listen.host = "0.0.0.0"; },
       absl::StatusCode::kFailedPrecondition, "refusing to listen on 0.0.0.0 with --auth=off"},
      {"http wildcard without auth", [](NodeOptions* o) { o->http = {HostPort{"10.0.0.1", 80}}; },
       absl::StatusCode::kFailedPrecondition, "refusing to listen on 10.0.0.1"},
      {"json depth", [](NodeOptions* o) { o->max_json_depth = 0; },
       absl::StatusCode::kInvalidArgument, "--max_json_depth must be between 1 and"},
      {"jwt expiration", [](NodeOptions* o) { o->jwt_expiration = absl::Milliseconds(10); },
       absl::StatusCode::kInvalidArgument, "is not a duration of at least one second"},
      {"seed", [](NodeOptions* o) { o->seeds = {"127.0.0.1:0"}; },
       absl::StatusCode::kInvalidArgument,
       "--seeds: '127.0.0.1:0' is not host:port (the binary-protocol address)"},
      {"advertise", [](NodeOptions* o) { o->advertise = "nowhere"; },
       absl::StatusCode::kInvalidArgument, "--advertise: 'nowhere' is not host:port"},
      {"key size", [](NodeOptions* o) { o->max_key_bytes = 0; },
       absl::StatusCode::kInvalidArgument, "--max_key_bytes must be in [1, "},
      {"compression level 0", [](NodeOptions* o) { o->compression_level = 0; },
       absl::StatusCode::kInvalidArgument,
       "--compression_level must be between 1 and 19 (zstd levels), not 0"},
      {"compression level 20", [](NodeOptions* o) { o->compression_level = 20; },
       absl::StatusCode::kInvalidArgument,
       "--compression_level must be between 1 and 19 (zstd levels), not 20"},
      {"account rate", [](NodeOptions* o) { o->account_rate_limit = -1; },
       absl::StatusCode::kInvalidArgument, "--account_rate_limit must be between 0 (off) and"},
      {"account burst", [](NodeOptions* o) { o->account_rate_limit_burst = 0; },
       absl::StatusCode::kInvalidArgument, "--account_rate_limit_burst must be between 1 and"},
      {"sign-up rate", [](NodeOptions* o) { o->signup_rate_limit = -1; },
       absl::StatusCode::kInvalidArgument, "--signup_rate_limit must be between 0 (off) and"},
      {"sign-up burst", [](NodeOptions* o) { o->signup_rate_limit_burst = 0; },
       absl::StatusCode::kInvalidArgument, "--signup_rate_limit_burst must be between 1 and"},
      {"maintenance nice -1", [](NodeOptions* o) { o->maintenance_nice = -1; },
       absl::StatusCode::kInvalidArgument, "--maintenance_nice must be between 0 and 19, not -1"},
      {"maintenance nice 20", [](NodeOptions* o) { o->maintenance_nice = 20; },
       absl::StatusCode::kInvalidArgument, "--maintenance_nice must be between 0 and 19, not 20"},
      {"compression threshold",
       [](NodeOptions* o) { o->compression_min_bytes = o->max_value_bytes + 1; },
       absl::StatusCode::kInvalidArgument, "--compression_min_bytes must be at most"},
      {"frame size", [](NodeOptions* o) { o->max_frame_bytes = o->max_value_bytes; },
       absl::StatusCode::kInvalidArgument,
       "--max_frame_bytes must exceed --max_value_bytes by at least 4096 bytes"},
      {"backups in the data directory",
       [](NodeOptions* o) {
         o->data_dir = "/var/lib/logkv-test-data";
         o->backup_dir = "/var/lib/logkv-test-data/";
       },
       absl::StatusCode::kInvalidArgument, "is inside --data_dir"},
      {"backups under the data directory",
       [](NodeOptions* o) {
         o->data_dir = "/var/lib/logkv-test-data";
         o->backup_dir = "/var/lib/logkv-test-data/../logkv-test-data/shard-000/b";
       },
       absl::StatusCode::kInvalidArgument, "is inside --data_dir"},
      {"a schedule that never runs",
       [](NodeOptions* o) {
         o->backup_dir = "/var/lib/logkv-test-backups";
         o->backup_schedule = "* * 31 2 *";
       },
       absl::StatusCode::kInvalidArgument, "matches no time"},
  };
  EXPECT_TRUE(NodeOptions().Validate().ok()) << NodeOptions().Validate();
  for (const Case& c : cases) {
    NodeOptions options;
    c.change(&options);
    const absl::Status status = options.Validate();
    EXPECT_EQ(status.code(), c.code) << c.name << ": " << status;
    EXPECT_TRUE(absl::StrContains(status.message(), c.message)) << c.name << ": " << status;
  }
  // Backups beside the data directory, whose name starts alike, are fine.
  NodeOptions beside;
  beside.data_dir = "/var/lib/logkv-test-data";
  beside.backup_dir = "/var/lib/logkv-test-data-backups";
  EXPECT_TRUE(beside.Validate().ok()) << beside.Validate();
  // With --insecure, a wildcard address is the operator's choice.
  NodeOptions insecure;
  insecure.listen.host = "0.0.0.0";
  insecure.insecure = true;
  EXPECT_TRUE(insecure.Validate().ok());
}

// A non-loopback listener needs TLS as well as authenticated clients (API
// keys, or client certificates of --tls-ca), unless --insecure.
TEST(NodeOptionsTest, NonLoopbackNeedsTlsAndAuthenticatedClients) {
  NodeOptions auth_without_tls;
  auth_without_tls.listen.host = "0.0.0.0";
  auth_without_tls.auth = AuthMode::kOn;
  absl::Status status = auth_without_tls.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "refusing to listen on 0.0.0.0 without TLS"))
      << status;
  auth_without_tls.insecure = true;
  EXPECT_TRUE(auth_without_tls.Validate().ok());

  NodeOptions tls_and_auth;
  tls_and_auth.http = {HostPort{"10.0.0.1", 443}};
  tls_and_auth.auth = AuthMode::kOn;
  tls_and_auth.tls.cert_file = "node.pem";
  tls_and_auth.tls.key_file = "node.key";
  EXPECT_TRUE(tls_and_auth.Validate().ok()) << tls_and_auth.Validate();

  // Client certificates authenticate clients without accounts; TLS without
  // them, and without accounts, does not.
  NodeOptions mtls = tls_and_auth;
  mtls.auth = AuthMode::kOff;
  status = mtls.Validate();
  EXPECT_TRUE(absl::StrContains(status.message(), "with --auth=off")) << status;
  mtls.tls.ca_file = "ca.pem";
  mtls.tls.client_auth = net::ClientAuth::kRequire;
  EXPECT_TRUE(mtls.Validate().ok()) << mtls.Validate();

  NodeOptions loopback;  // the default stays as it was: loopback, plaintext, no auth
  EXPECT_TRUE(loopback.Validate().ok());
}

// The peer links obey the same rule. The control plane's Raft transport
// listens on the --listen host: off loopback it needs mutual TLS between
// nodes (--peer-tls-ca), unless --insecure. The data plane's peers dial the
// binary port, so without TLS it is refused as the client ports are.
TEST(NodeOptionsTest, NonLoopbackPeerLinksNeedTls) {
  NodeOptions control;
  control.listen.host = "10.0.0.1";
  control.auth = AuthMode::kOn;
  control.tls.cert_file = "node.pem";
  control.tls.key_file = "node.key";
  absl::Status status = control.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  for (const char* text : {"refusing to run the control plane's Raft transport (--control-port) "
                           "on 10.0.0.1 without TLS",
                           "--peer-tls-ca", "--insecure"}) {
    EXPECT_TRUE(absl::StrContains(status.message(), text)) << text << ": " << status;
  }
  NodeOptions mutual = control;
  mutual.peer_tls_ca = "ca.pem";
  EXPECT_TRUE(mutual.Validate().ok()) << mutual.Validate();
  NodeOptions insecure = control;
  insecure.insecure = true;
  EXPECT_TRUE(insecure.Validate().ok()) << insecure.Validate();
  NodeOptions wildcard = mutual;
  wildcard.listen.host = "0.0.0.0";
  wildcard.peer_tls_ca.clear();
  EXPECT_TRUE(absl::StrContains(wildcard.Validate().message(), "Raft transport")) << wildcard.Validate();

  NodeOptions plaintext_peers;  // accounts on, no TLS: peers would dial in clear
  plaintext_peers.listen.host = "10.0.0.1";
  plaintext_peers.auth = AuthMode::kOn;
  plaintext_peers.cluster_secret = "secret";
  status = plaintext_peers.Validate();
  EXPECT_TRUE(absl::StrContains(status.message(), "refusing to listen on 10.0.0.1 without TLS"))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "--insecure")) << status;

  NodeOptions crl_without_ca = mutual;
  crl_without_ca.peer_tls_crl = "crl.pem";
  EXPECT_TRUE(crl_without_ca.Validate().ok()) << crl_without_ca.Validate();
  crl_without_ca.peer_tls_ca.clear();
  crl_without_ca.insecure = true;
  EXPECT_TRUE(absl::StrContains(crl_without_ca.Validate().message(),
                                "--peer-tls-crl needs --peer-tls-ca"))
      << crl_without_ca.Validate();
}

TEST(NodeOptionsTest, ChecksTlsFlagsTogether) {
  NodeOptions cert_only;
  cert_only.tls.cert_file = "node.pem";
  EXPECT_EQ(cert_only.Validate().code(), absl::StatusCode::kInvalidArgument);
  NodeOptions client_auth_without_ca;
  client_auth_without_ca.tls.cert_file = "node.pem";
  client_auth_without_ca.tls.key_file = "node.key";
  client_auth_without_ca.tls.client_auth = net::ClientAuth::kOptional;
  EXPECT_TRUE(absl::StrContains(client_auth_without_ca.Validate().message(), "needs --tls-ca"));
  // The files are read when the node starts, with a message naming the file.
  NodeOptions missing;
  missing.tls.cert_file = "/nonexistent/node.pem";
  missing.tls.key_file = "/nonexistent/node.key";
  absl::StatusOr<std::unique_ptr<net::TlsContext>> context = net::TlsContext::Create(missing.tls);
  ASSERT_FALSE(context.ok());
  EXPECT_TRUE(absl::StrContains(context.status().message(), "--tls-cert /nonexistent/node.pem"))
      << context.status();
}

TEST(NodeOptionsTest, ParsesSettingsAsLogkvdSpellsThem) {
  absl::StatusOr<HostPort> address = ParseHostPort("localhost:7070");
  ASSERT_TRUE(address.ok());
  EXPECT_EQ(address->host, "127.0.0.1");
  EXPECT_EQ(address->port, 7070);
  address = ParseHostPort(":0");
  ASSERT_TRUE(address.ok());
  EXPECT_EQ(address->ToString(), "0.0.0.0:0");
  EXPECT_EQ(ParseHostPort("nowhere").status().message(), "'nowhere' is not host:port");
  EXPECT_EQ(ParseHostPort("h:65536").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseFsyncPolicy("always").value(), engine::FsyncPolicy::kAlways);
  EXPECT_EQ(ParseFsyncPolicy("sometimes").status().message(),
            "--fsync must be never, interval or always");
  EXPECT_EQ(ParseCompression("zstd").value(), engine::Compression::kZstd);
  EXPECT_EQ(ParseCompression("none").value(), engine::Compression::kNone);
  EXPECT_EQ(ParseCompression("lz4").status().message(),
            "--compression must be none or zstd, not 'lz4'");
  EXPECT_EQ(ParseAuthMode("on").value(), AuthMode::kOn);
  EXPECT_EQ(ParseAuthMode("yes").status().message(), "--auth must be off or on");
}

TEST_F(NodeTest, StartRefusesInvalidOptionsBeforeOpeningAnything) {
  NodeOptions options = TestOptions(dir_.Subdir("never"));
  options.replicas = 0;
  Node node(options);
  const absl::Status status = node.Start();
  EXPECT_EQ(status.message(), "--replicas must be at least 1");
  EXPECT_FALSE(std::filesystem::exists(dir_.Subdir("never")));
  EXPECT_EQ(node.engine(), nullptr);
}

// Three nodes in one process: a cluster through seeds, strong writes and
// reads through different nodes, and a node stopped and started again on
// its ports and data.
TEST_F(NodeTest, ThreeNodesFormAClusterAndOneRestarts) {
  constexpr int kNodes = 3;
  StartCluster(kNodes, [](int) { return 3; });
  std::vector<std::unique_ptr<Node>>& nodes = nodes_;
  for (const auto& node : nodes) {
    EXPECT_EQ(node->cluster()->MemberCount(), static_cast<size_t>(kNodes));
  }
  EXPECT_EQ(nodes[2]->node_id(), "n2");

  PutOptions strong_write;
  strong_write.consistency = Consistency::kStrong;
  {
    std::unique_ptr<Client> writer = Connect(nodes[0]->port());
    ASSERT_NE(writer, nullptr);
    absl::StatusOr<WriteResult> written = writer->Put("clustered", "v1", strong_write);
    ASSERT_TRUE(written.ok()) << written.status();
    std::unique_ptr<Client> reader = Connect(nodes[1]->port());
    ASSERT_NE(reader, nullptr);
    absl::StatusOr<Value> read = reader->Get("clustered", Consistency::kStrong);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->value, "v1");
  }

  // Node 2 stops (a restart, not a leave) and comes back in a new Node.
  ASSERT_TRUE(nodes[2]->Stop().ok());
  nodes[2].reset();
  {
    // With two of three owners the cluster still takes strong writes.
    std::unique_ptr<Client> writer = Connect(nodes[1]->port());
    ASSERT_NE(writer, nullptr);
    absl::StatusOr<WriteResult> written = writer->Put("clustered", "v2", strong_write);
    ASSERT_TRUE(written.ok()) << written.status();
  }
  StartAgain(2);
  EXPECT_EQ(nodes[2]->node_id(), "n2");
  WaitViewsConfirmed();
  std::unique_ptr<Client> restarted = Connect(nodes[2]->port());
  ASSERT_NE(restarted, nullptr);
  absl::StatusOr<Value> read = restarted->Get("clustered", Consistency::kStrong);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value, "v2");
  absl::StatusOr<WriteResult> written = restarted->Put("clustered", "v3", strong_write);
  ASSERT_TRUE(written.ok()) << written.status();
  std::unique_ptr<Client> first = Connect(nodes[0]->port());
  ASSERT_NE(first, nullptr);
  read = first->Get("clustered", Consistency::kStrong);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value, "v3");
}

// N is the cluster's, not each node's: the first node commits its
// --replicas when it creates the cluster; nodes started with another value
// (joining, or restarted) place keys by the committed one.
TEST_F(NodeTest, TheFirstNodeCommitsTheReplicationFactorForEveryNode) {
  constexpr int kNodes = 3;
  StartCluster(kNodes, [](int i) { return i == 0 ? 2 : 3; });
  std::vector<std::unique_ptr<Node>>& nodes = nodes_;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (const auto& node : nodes) {
    while (node->control_plane()->config()->replicas == 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_EQ(node->control_plane()->config()->replicas, 2u) << node->node_id();
  }
  // A strong write waits for a majority of its owners: both, with N = 2.
  // Written through every node, each key is on exactly two of the three.
  PutOptions strong_write;
  strong_write.consistency = Consistency::kStrong;
  auto write_and_count = [&](const std::string& prefix) {
    for (int i = 0; i < kNodes; ++i) {
      std::unique_ptr<Client> writer = Connect(nodes[i]->port());
      ASSERT_NE(writer, nullptr);
      for (int k = 0; k < 10; ++k) {
        const std::string key = absl::StrCat(prefix, i, "-", k);
        absl::StatusOr<WriteResult> written = writer->Put(key, "v", strong_write);
        ASSERT_TRUE(written.ok()) << key << ": " << written.status();
        int holders = 0;
        for (const auto& node : nodes) holders += node->engine()->Get(key).ok() ? 1 : 0;
        EXPECT_EQ(holders, 2) << key << " through " << nodes[i]->node_id();
      }
    }
  };
  write_and_count("before-");

  // The first node restarted with another --replicas keeps the committed N.
  ASSERT_TRUE(nodes[0]->Stop().ok());
  nodes[0].reset();
  options_[0].replicas = 3;
  StartAgain(0);
  WaitViewsConfirmed();
  EXPECT_EQ(nodes[0]->control_plane()->config()->replicas, 2u);
  write_and_count("after-");
}

TEST_F(NodeTest, WithAuthOnUnauthenticatedRequestsAreRefused) {
  NodeOptions options = TestOptions(dir_.Subdir("auth"));
  options.auth = AuthMode::kOn;
  Node node(options);
  ASSERT_TRUE(node.Start().ok());

  absl::StatusOr<HttpAnswer> answer =
      Fetch(node.http_ports().front(), "PUT", "/v1/kv/secret", {}, "value");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 401) << answer->body;
  answer = Fetch(node.http_ports().front(), "GET", "/v1/kv/secret");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->status, 401) << answer->body;

  // The binary protocol without an API key: no data operation is served.
  ClientOptions client_options;
  client_options.nodes = {absl::StrCat("127.0.0.1:", node.port())};
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options);
  if (client.ok()) {
    absl::StatusOr<WriteResult> written = (*client)->Put("secret", "value");
    EXPECT_FALSE(written.ok());
    EXPECT_FALSE((*client)->Get("secret").ok());
  }
  EXPECT_EQ(node.engine()->GetStats().client_keys, 0u);
}

// A data directory an older version wrote with --auth=on: its accounts are
// records in the engine (written here as that version wrote them). The
// first start moves them into the control plane, keeping ids (the tenant's
// data is found), and notes the move; later starts do not read them again.
TEST_F(NodeTest, LegacyAccountsAreMovedIntoTheControlPlaneAtTheFirstStart) {
  const std::string data = dir_.Subdir("legacy");
  const std::string key = "ydht_" + std::string(40, 'k');
  {
    Node node(TestOptions(data));
    ASSERT_TRUE(node.Start().ok());
    absl::StatusOr<std::string> hash =
        auth::HashPassword("securepass123", auth::PasswordHashLimits::Minimum());
    ASSERT_TRUE(hash.ok());
    unsigned char key_hash[crypto_generichash_BYTES];
    crypto_generichash(key_hash, sizeof(key_hash),
                       reinterpret_cast<const unsigned char*>(key.data()), key.size(), nullptr, 0);
    using Json = nlohmann::json;
    auto put = [&](absl::string_view name, const std::string& value) {
      ASSERT_TRUE(node.engine()->Put(absl::StrCat(kAuthPrefix, name), value).ok());
    };
    put("next/user", "4");
    put("next/apikey", "2");
    put("user/00000000000000000003",
        Json{{"v", 1}, {"id", 3}, {"email", "old@example.com"}, {"username", "old"},
             {"password_hash", *hash}, {"is_active", true}, {"created_at_ms", 1700000000000}}
            .dump());
    put("apikey/00000000000000000001",
        Json{{"v", 1}, {"id", 1}, {"user_id", 3}, {"name", "k"}, {"key_prefix", key.substr(0, 8)},
             {"key_hash", absl::BytesToHexString(absl::string_view(
                              reinterpret_cast<const char*>(key_hash), sizeof(key_hash)))},
             {"scopes", Json::array({"read", "write"})}, {"is_active", true},
             {"created_at_ms", 1700000000000}, {"expires_at_ms", 0}, {"last_used_at_ms", 0}}
            .dump());
    ASSERT_TRUE(node.engine()->Put(TenantPrefix(3) + "greeting", "hello").ok());
    ASSERT_TRUE(node.Stop().ok());
  }
  NodeOptions options = TestOptions(data);
  options.auth = AuthMode::kOn;
  for (int start = 0; start < 2; ++start) {
    SCOPED_TRACE(start);
    Node node(options);
    ASSERT_TRUE(node.Start().ok());
    const int port = node.http_ports().front();
    absl::StatusOr<HttpAnswer> answer =
        Fetch(port, "GET", "/v1/kv/greeting", {{"X-API-Key", key}});
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 200) << answer->body;
    EXPECT_EQ(answer->body, "hello");
    answer = Fetch(port, "POST", "/login", {{"Content-Type", "application/json"}},
                   R"({"email":"old@example.com","password":"securepass123"})");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 200) << answer->body;
    EXPECT_TRUE(node.engine()->Get(absl::StrCat(kAuthPrefix, "moved")).ok());
    // Ids continue after the old counter.
    answer = Fetch(port, "POST", "/signup", {{"Content-Type", "application/json"}},
                   absl::StrCat(R"({"email":"new)", start,
                                R"(@example.com","username":"new)", start,
                                R"(","password":"securepass123"})"));
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->status, 201) << answer->body;
    EXPECT_EQ(nlohmann::json::parse(answer->body, nullptr, false).value("id", 0), 4 + start);
    ASSERT_TRUE(node.Stop().ok());
  }
}

// A request whose headers arrive while an earlier answer is still owed
// (pipelined behind a write that waits for its fdatasync) gets its
// "100 Continue" once that answer is out, not a 408 after the idle timeout.
TEST_F(NodeTest, ContinueComesOnceEarlierAnswersAreOut) {
  NodeOptions options = TestOptions(dir_.Subdir("data"));
  options.fsync = engine::FsyncPolicy::kAlways;
  options.http_idle_timeout = absl::Seconds(30);
  Node node(options);
  ASSERT_TRUE(node.Start().ok());
  absl::StatusOr<test::HttpConnection> connection =
      test::HttpConnection::Connect(node.http_ports()[0]);
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_TRUE(connection
                  ->Send("PUT /v1/kv/first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nA"
                         "PUT /v1/kv/second HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                         "Content-Length: 5\r\n\r\n")
                  .ok());
  absl::StatusOr<HttpAnswer> first = connection->Read();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status, 200) << first->body;
  absl::StatusOr<HttpAnswer> go_on = connection->Read();
  ASSERT_TRUE(go_on.ok()) << go_on.status();
  EXPECT_EQ(go_on->status, 100);
  ASSERT_TRUE(connection->Send("hello").ok());
  absl::StatusOr<HttpAnswer> second = connection->Read();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->status, 200) << second->body;
  absl::StatusOr<HttpAnswer> read =
      Fetch(node.http_ports()[0], "GET", "/v1/kv/second", {}, "");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->body, "hello");
}

}  // namespace
}  // namespace logkv::server
