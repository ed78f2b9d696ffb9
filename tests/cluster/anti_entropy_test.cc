// Anti-entropy and the purger between real engines in one process: a fake
// transport hands each request to the other side's handlers directly, so the
// tests exercise the Merkle descent, the key comparison, the pushes and
// pulls, the byte accounting and what the purger may drop without a network.
#include "server/cluster/anti_entropy.h"
#include "server/cluster/purger.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "protocol/frame.h"
#include "server/cluster/replica.h"
#include "server/cluster/ring.h"
#include "server/metrics.h"

namespace logkv::server::cluster {
namespace {

namespace fs = std::filesystem;

struct Node {
  std::string id;
  std::string address;
  std::string dir;
  std::unique_ptr<engine::Engine> engine;
};

std::unique_ptr<Node> OpenNode(const std::string& id, uint32_t partitions = 64,
                               uint32_t leaves = 1024) {
  auto node = std::make_unique<Node>();
  node->id = id;
  node->address = id + ":7070";
  char pattern[] = "/tmp/anti_entropy_test.XXXXXX";
  const char* dir = mkdtemp(pattern);
  EXPECT_NE(dir, nullptr);
  node->dir = dir;
  engine::Options options;
  options.data_dir = node->dir;
  options.shard_count = 4;
  options.fsync = engine::FsyncPolicy::kNever;
  options.merkle_partitions = partitions;
  options.merkle_leaves = leaves;
  options.background_threads = false;
  options.segment_bytes = 16u << 20;
  options.log = [](engine::LogLevel, absl::string_view) {};
  auto opened = engine::Engine::Open(options);
  EXPECT_TRUE(opened.ok()) << opened.status();
  node->engine = *std::move(opened);
  return node;
}

void CloseNode(Node* node) {
  if (node->engine != nullptr) {
    EXPECT_TRUE(node->engine->Close().ok());
    node->engine.reset();
  }
  std::error_code ignored;
  fs::remove_all(node->dir, ignored);
}

// Hands a request frame to the handlers of the node at its address, as a
// peer connection would, and answers with the response frame.
class FakeNetwork {
 public:
  void Add(Node* node) { nodes_[node->address] = node; }
  // The byte budget the MerkleLeaf handler answers within (half of it).
  void set_leaf_frame_bytes(uint32_t bytes) { leaf_frame_bytes_ = bytes; }
  uint64_t requests(protocol::Operation operation) const {
    absl::MutexLock lock(&mu_);
    auto it = requests_.find(operation);
    return it == requests_.end() ? 0 : it->second;
  }

  PeerSendFunction Sender() {
    return [this](const std::string& address, std::string frame, absl::Duration,
                  PeerTransport::Callback done) { Deliver(address, frame, std::move(done)); };
  }

 private:
  void Deliver(const std::string& address, const std::string& frame, PeerTransport::Callback done) {
    auto it = nodes_.find(address);
    if (it == nodes_.end()) return done(absl::UnavailableError("no node at " + address));
    engine::Engine* engine = it->second->engine.get();
    absl::StatusOr<const protocol::Request*> request =
        protocol::VerifyRequest(frame, protocol::Limits{});
    if (!request.ok()) return done(request.status());
    const protocol::Request& r = **request;
    {
      absl::MutexLock lock(&mu_);
      ++requests_[r.operation_type()];
    }
    flatbuffers::FlatBufferBuilder builder(1024);
    switch (r.operation_type()) {
      case protocol::Operation::MerkleHashes:
        HandleMerkleHashes(engine, r, &builder);
        break;
      case protocol::Operation::MerkleLeaf:
        HandleMerkleLeaf(engine, r, leaf_frame_bytes_, &builder);
        break;
      case protocol::Operation::Replicate: {
        const Outcome outcome = HandleReplicate(engine, r, &builder, []() -> Completion {
          ADD_FAILURE() << "Replicate deferred without fsync=always";
          return [](std::string) {};
        });
        EXPECT_EQ(outcome, Outcome::kAnswered);
        break;
      }
      case protocol::Operation::ReadRecords:
        HandleReadRecords(engine, r, &builder);
        break;
      default:
        return done(absl::InvalidArgumentError("the fake network answers cluster operations only"));
    }
    done(std::string(protocol::FrameOf(builder)));
  }

  std::map<std::string, Node*> nodes_;
  uint32_t leaf_frame_bytes_ = 64u << 20;
  mutable absl::Mutex mu_;
  std::map<protocol::Operation, uint64_t> requests_ ABSL_GUARDED_BY(mu_);
};

AntiEntropyOptions TestOptions() {
  AntiEntropyOptions options;
  options.bytes_per_second = 0;  // the rate limit has its own test
  options.interval = absl::Hours(1);
  options.initial_delay = absl::Hours(1);
  return options;
}

class AntiEntropyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = OpenNode("a");
    b_ = OpenNode("b");
    network_.Add(a_.get());
    network_.Add(b_.get());
  }
  void TearDown() override {
    ae_a_.reset();
    ae_b_.reset();
    CloseNode(a_.get());
    CloseNode(b_.get());
  }

  std::vector<Member> Members() const {
    std::vector<Member> members;
    for (const Node* node : {a_.get(), b_.get()}) {
      Member member;
      member.node_id = node->id;
      member.address = node->address;
      members.push_back(member);
    }
    return members;
  }

  // Anti-entropy of node with the given ring (null: every key co-owned).
  std::unique_ptr<AntiEntropy> Make(Node* node, const AntiEntropyOptions& options,
                                    std::shared_ptr<const Ring> ring = nullptr,
                                    ServerMetrics* metrics = nullptr) {
    return std::make_unique<AntiEntropy>(
        node->engine.get(), network_.Sender(), [ring] { return ring; },
        [this] { return Members(); }, node->id, metrics, options);
  }

  AntiEntropy* AeA() {
    if (ae_a_ == nullptr) ae_a_ = Make(a_.get(), TestOptions());
    return ae_a_.get();
  }
  AntiEntropy* AeB() {
    if (ae_b_ == nullptr) ae_b_ = Make(b_.get(), TestOptions());
    return ae_b_.get();
  }

  static AntiEntropyFigures Run(AntiEntropy* ae, const std::string& peer) {
    absl::StatusOr<AntiEntropyFigures> figures = ae->RunOnce(peer);
    EXPECT_TRUE(figures.ok()) << figures.status();
    return figures.ok() ? *figures : AntiEntropyFigures{};
  }

  static void Put(Node* node, const std::string& key, const std::string& value,
                  uint64_t timestamp = 0, int64_t expiry_unix_ms = 0) {
    engine::WriteOptions options;
    options.timestamp = timestamp;
    options.expiry_unix_ms = expiry_unix_ms;
    ASSERT_TRUE(node->engine->Put(key, value, options).ok()) << key;
  }
  static void Delete(Node* node, const std::string& key, uint64_t timestamp) {
    engine::WriteOptions options;
    options.timestamp = timestamp;
    ASSERT_TRUE(node->engine->Delete(key, options).ok()) << key;
  }
  static engine::KeyRecord Record(Node* node, const std::string& key) {
    absl::StatusOr<engine::KeyRecord> record = node->engine->GetRecord(key, true);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? *record : engine::KeyRecord{};
  }
  // Copies key's record from one node to another with its timestamp.
  static void Copy(Node* from, Node* to, const std::string& key) {
    const engine::KeyRecord record = Record(from, key);
    ASSERT_TRUE(record.found);
    if (record.tombstone) {
      Delete(to, key, record.timestamp);
    } else {
      Put(to, key, record.value, record.timestamp, record.expiry_unix_ms);
    }
  }

  // Every key of either node has the same record on both.
  void ExpectSame(const std::vector<std::string>& keys) {
    for (const std::string& key : keys) {
      const engine::KeyRecord on_a = Record(a_.get(), key);
      const engine::KeyRecord on_b = Record(b_.get(), key);
      ASSERT_EQ(on_a.found, on_b.found) << key;
      ASSERT_EQ(on_a.tombstone, on_b.tombstone) << key;
      ASSERT_EQ(on_a.timestamp, on_b.timestamp) << key;
      ASSERT_EQ(on_a.value, on_b.value) << key;
      ASSERT_EQ(on_a.expiry_unix_ms, on_b.expiry_unix_ms) << key;
    }
  }
  void ExpectRootsEqual() {
    for (uint32_t p = 0; p < a_->engine->MerklePartitionCount(); ++p) {
      ASSERT_EQ(a_->engine->MerkleNodeHash(p, 1), b_->engine->MerkleNodeHash(p, 1)) << p;
    }
  }

  static std::string Key(int i) { return absl::StrFormat("key-%06d", i); }
  static std::string Value(int i) {
    return absl::StrCat("value of key ", i, " ", std::string(40, 'v'));
  }

  FakeNetwork network_;
  std::unique_ptr<Node> a_;
  std::unique_ptr<Node> b_;
  std::unique_ptr<AntiEntropy> ae_a_;
  std::unique_ptr<AntiEntropy> ae_b_;
};

TEST_F(AntiEntropyTest, HandlersAnswerHashesAndLeafKeys) {
  Put(a_.get(), "x", "1");
  flatbuffers::FlatBufferBuilder request_builder;
  std::vector<uint32_t> nodes = {1, 1, 2};
  std::vector<uint32_t> partitions = {0, 63, a_->engine->MerklePartitionOf("x")};
  auto ask = protocol::CreateMerkleHashes(request_builder, 0, request_builder.CreateVector(nodes),
                                          request_builder.CreateVector(partitions));
  request_builder.ForceDefaults(true);
  protocol::RequestBuilder request(request_builder);
  request.add_request_id(7);
  request.add_operation_type(protocol::Operation::MerkleHashes);
  request.add_operation(ask.Union());
  request_builder.FinishSizePrefixed(request.Finish());
  const auto* parsed =
      flatbuffers::GetSizePrefixedRoot<protocol::Request>(request_builder.GetBufferPointer());

  flatbuffers::FlatBufferBuilder builder;
  HandleMerkleHashes(a_->engine.get(), *parsed, &builder);
  const auto* response =
      flatbuffers::GetSizePrefixedRoot<protocol::Response>(builder.GetBufferPointer());
  ASSERT_EQ(response->status(), protocol::StatusCode::Ok);
  ASSERT_EQ(response->request_id(), 7u);
  const auto* result = response->result_as_MerkleHashesResult();
  ASSERT_NE(result, nullptr);
  ASSERT_EQ(result->hashes()->size(), 3u);
  EXPECT_EQ(result->leaf_count(), 1024u);
  EXPECT_EQ(result->partition_count(), 64u);
  EXPECT_EQ(result->hashes()->Get(0), a_->engine->MerkleNodeHash(0, 1));
  EXPECT_EQ(result->hashes()->Get(2),
            a_->engine->MerkleNodeHash(a_->engine->MerklePartitionOf("x"), 2));

  // A node out of range is refused, naming it.
  flatbuffers::FlatBufferBuilder bad_builder;
  std::vector<uint32_t> bad_nodes = {2048};
  auto bad = protocol::CreateMerkleHashes(bad_builder, 0, bad_builder.CreateVector(bad_nodes));
  bad_builder.FinishSizePrefixed(
      protocol::CreateRequest(bad_builder, 8, protocol::Operation::MerkleHashes, bad.Union()));
  flatbuffers::FlatBufferBuilder answer;
  HandleMerkleHashes(
      a_->engine.get(),
      *flatbuffers::GetSizePrefixedRoot<protocol::Request>(bad_builder.GetBufferPointer()),
      &answer);
  const auto* refused =
      flatbuffers::GetSizePrefixedRoot<protocol::Response>(answer.GetBufferPointer());
  EXPECT_EQ(refused->status(), protocol::StatusCode::InvalidArgument);
  EXPECT_NE(protocol::View(refused->message()).find("2048"), absl::string_view::npos);
}

TEST_F(AntiEntropyTest, PushFillsAnEmptyPeer) {
  constexpr int kKeys = 10'000;
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), Value(i));
  }
  const AntiEntropyFigures round = Run(AeA(), "b");
  EXPECT_EQ(round.keys_pushed, static_cast<uint64_t>(kKeys));
  EXPECT_EQ(round.keys_pulled, 0u);
  EXPECT_EQ(round.partitions_differing, 64u);
  EXPECT_EQ(b_->engine->GetStats().keys, static_cast<uint64_t>(kKeys));
  ExpectSame(keys);
  ExpectRootsEqual();
  std::printf("full push of %d keys: %llu requests, %llu bytes sent, %llu received, %.3f s\n",
              kKeys, static_cast<unsigned long long>(round.requests),
              static_cast<unsigned long long>(round.bytes_sent),
              static_cast<unsigned long long>(round.bytes_received), round.last_round_seconds);

  // Converged: the next round compares roots only.
  const AntiEntropyFigures again = Run(AeA(), "b");
  EXPECT_EQ(again.partitions_differing, 0u);
  EXPECT_EQ(again.keys_pushed + again.keys_pulled, 0u);
}

// How far a peer's copy had drifted at the last finished round, per peer.
TEST_F(AntiEntropyTest, DivergencePerPeerIsInThePrometheusOutput) {
  ServerMetrics metrics;
  ae_a_ = Make(a_.get(), TestOptions(), nullptr, &metrics);
  EXPECT_TRUE(ae_a_->PeerRounds().empty());
  for (int i = 0; i < 10; ++i) Put(a_.get(), Key(i), Value(i));
  Run(ae_a_.get(), "b");
  std::map<std::string, AntiEntropy::PeerRound> rounds = ae_a_->PeerRounds();
  ASSERT_EQ(rounds.size(), 1u);
  EXPECT_EQ(rounds["b"].keys_repaired, 10u);
  EXPECT_GT(rounds["b"].leaves_differing, 0u);
  EXPECT_GT(rounds["b"].finished_unix_ms, 0);
  std::string text = metrics.RenderPrometheus();
  EXPECT_TRUE(absl::StrContains(text, "logkv_anti_entropy_peer_keys_repaired{peer=\"b\"} 10\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "logkv_anti_entropy_peer_last_round_timestamp_seconds{peer=\"b\"} "))
      << text;

  // Converged: the next round finds nothing apart.
  Run(ae_a_.get(), "b");
  text = metrics.RenderPrometheus();
  EXPECT_TRUE(absl::StrContains(text, "logkv_anti_entropy_peer_keys_repaired{peer=\"b\"} 0\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "logkv_anti_entropy_peer_differing_leaves{peer=\"b\"} 0\n"))
      << text;
  ae_a_.reset();
  EXPECT_FALSE(absl::StrContains(metrics.RenderPrometheus(), "{peer=\"b\"}"));
}

TEST_F(AntiEntropyTest, PullFillsAWipedNode) {
  constexpr int kKeys = 10'000;
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
  }
  for (int i = 0; i < kKeys; i += 7)
    Delete(a_.get(), Key(i), Record(a_.get(), Key(i)).timestamp + 1);
  // b loses its data directory and restarts empty; it starts the exchange
  // itself, as its background thread does soon after start-up.
  CloseNode(b_.get());
  b_ = OpenNode("b");
  network_.Add(b_.get());
  ASSERT_EQ(b_->engine->GetStats().keys, 0u);
  const AntiEntropyFigures round = Run(AeB(), "a");
  EXPECT_EQ(round.keys_pulled, static_cast<uint64_t>(kKeys));
  EXPECT_EQ(round.keys_pushed, 0u);
  ExpectSame(keys);
  ExpectRootsEqual();
  const AntiEntropyFigures totals = AeB()->Figures();
  EXPECT_EQ(totals.rounds, 1u);
  EXPECT_EQ(totals.keys_pulled, static_cast<uint64_t>(kKeys));
  EXPECT_GT(totals.repair_keys_per_second, 0);
}

// A fill (a joining node's) keeps to its deadline: no request waits past it
// (each is given the time left, not the request timeout), none is sent once
// it has passed.
TEST_F(AntiEntropyTest, AFillAsksNothingPastItsDeadline) {
  for (int i = 0; i < 100; ++i) Put(a_.get(), Key(i), Value(i));
  absl::Mutex mu;
  std::vector<absl::Duration> timeouts;
  PeerSendFunction sender = network_.Sender();
  PeerSendFunction recording = [&](const std::string& address, std::string frame,
                                   absl::Duration timeout, PeerTransport::Callback done) {
    {
      absl::MutexLock lock(&mu);
      timeouts.push_back(timeout);
    }
    sender(address, std::move(frame), timeout, std::move(done));
  };
  AntiEntropyOptions options = TestOptions();
  options.request_timeout = absl::Hours(1);
  AntiEntropy filling(b_->engine.get(), recording, [] { return std::shared_ptr<const Ring>(); },
                      [this] { return Members(); }, "b", nullptr, options);
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  const absl::Status filled = filling.Fill(nullptr, {"a"}, deadline);
  ASSERT_TRUE(filled.ok()) << filled;
  EXPECT_EQ(b_->engine->GetStats().keys, 100u);
  {
    absl::MutexLock lock(&mu);
    ASSERT_FALSE(timeouts.empty());
    for (const absl::Duration timeout : timeouts) {
      EXPECT_LE(timeout, absl::Minutes(1));
      EXPECT_GT(timeout, absl::ZeroDuration());
    }
    timeouts.clear();
  }
  const absl::Status late = filling.Fill(nullptr, {"a"}, absl::Now() - absl::Seconds(1));
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(timeouts.empty());
}

// A fill waits for a round in progress no longer than its deadline: here a
// round whose peer does not answer holds the rounds' turn, and the fill
// gives up at its deadline (it would otherwise wait for that round, and
// then succeed).
TEST_F(AntiEntropyTest, AFillWaitsForARoundInProgressNoLongerThanItsDeadline) {
  for (int i = 0; i < 10; ++i) Put(a_.get(), Key(i), Value(i));
  absl::Notification answering;
  absl::Notification held;
  PeerSendFunction sender = network_.Sender();
  PeerSendFunction stalling = [&](const std::string& address, std::string frame,
                                  absl::Duration timeout, PeerTransport::Callback done) {
    if (!held.HasBeenNotified()) {  // the round's first request
      held.Notify();
      answering.WaitForNotificationWithTimeout(absl::Seconds(60));  // bounded
    }
    sender(address, std::move(frame), timeout, std::move(done));
  };
  AntiEntropy ae(b_->engine.get(), stalling, [] { return std::shared_ptr<const Ring>(); },
                 [this] { return Members(); }, "b", nullptr, TestOptions());
  std::thread round([&] { (void)ae.RunOnce("a"); });
  held.WaitForNotification();  // the round holds the turn, its first request unanswered
  const absl::Status filled = ae.Fill(nullptr, {"a"}, absl::Now() + absl::Milliseconds(200));
  answering.Notify();
  round.join();
  EXPECT_EQ(filled.code(), absl::StatusCode::kDeadlineExceeded) << filled;
  // Given up waiting for the turn, not after it (a round of its own cut
  // short at its first request).
  EXPECT_TRUE(absl::StrContains(filled.message(), "did not reach every owner in time"))
      << filled;
}

TEST_F(AntiEntropyTest, LargeValuesArePulledAcrossSeveralAnswers) {
  // 200 values of 100 KB: 20 MB, far over what one ReadRecords answer
  // carries (a few MiB); the rest come from further requests in the round.
  constexpr int kKeys = 200;
  const std::string big(100 * 1000, 'b');
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), big + std::to_string(i));
  }
  const AntiEntropyFigures round = Run(AeB(), "a");
  EXPECT_EQ(round.keys_pulled, static_cast<uint64_t>(kKeys));
  ExpectSame(keys);
  ExpectRootsEqual();
}

TEST_F(AntiEntropyTest, BytesAreProportionalToWhatIsMissing) {
  constexpr int kKeys = 10'000;
  constexpr int kMissing = 100;
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), Value(i));
  }
  // b has all but every 100th key.
  for (int i = 0; i < kKeys; ++i) {
    if (i % (kKeys / kMissing) != 0) Copy(a_.get(), b_.get(), Key(i));
  }
  const AntiEntropyFigures few = Run(AeA(), "b");
  EXPECT_EQ(few.keys_pushed, static_cast<uint64_t>(kMissing));
  ExpectSame(keys);

  // The same store against an empty peer.
  std::unique_ptr<Node> empty = OpenNode("c");
  network_.Add(empty.get());
  auto ae = std::make_unique<AntiEntropy>(
      a_->engine.get(), network_.Sender(), [] { return std::shared_ptr<const Ring>(); },
      [&] {
        std::vector<Member> members = Members();
        members.push_back(Member{"c", empty->address, "", MemberState::kAlive, 0, 0, 0});
        return members;
      },
      "a", nullptr, TestOptions());
  const AntiEntropyFigures all = Run(ae.get(), "c");
  EXPECT_EQ(all.keys_pushed, static_cast<uint64_t>(kKeys));
  ae.reset();
  CloseNode(empty.get());

  const uint64_t few_bytes = few.bytes_sent + few.bytes_received;
  const uint64_t all_bytes = all.bytes_sent + all.bytes_received;
  std::printf("bytes exchanged: %llu for %d missing keys (%llu per key), %llu for %d\n",
              static_cast<unsigned long long>(few_bytes), kMissing,
              static_cast<unsigned long long>(few_bytes / kMissing),
              static_cast<unsigned long long>(all_bytes), kKeys);
  // Proportional to what is missing, not to the data set: 1% missing costs a
  // few percent of a full copy (the Merkle descent costs ~20 hashes per key).
  EXPECT_LT(few_bytes * 20, all_bytes);
  EXPECT_LT(few_bytes, uint64_t{kMissing} * 1024 + 4096);
}

TEST_F(AntiEntropyTest, IdenticalStoresExchangeOnlyRootHashes) {
  std::vector<std::string> keys;
  for (int i = 0; i < 2000; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
  }
  const AntiEntropyFigures round = Run(AeA(), "b");
  std::printf("identical stores: %llu request, %llu bytes\n",
              static_cast<unsigned long long>(round.requests),
              static_cast<unsigned long long>(round.bytes_sent + round.bytes_received));
  EXPECT_EQ(round.requests, 1u);
  EXPECT_EQ(round.partitions_compared, 64u);
  EXPECT_EQ(round.partitions_differing, 0u);
  EXPECT_EQ(round.keys_compared, 0u);
  // 64 (partition, node) pairs asked, 64 hashes answered.
  EXPECT_LT(round.bytes_sent + round.bytes_received, 2048u);
  EXPECT_EQ(network_.requests(protocol::Operation::MerkleLeaf), 0u);
}

TEST_F(AntiEntropyTest, DivergentUpdatesConvergeWithLastWriteWins) {
  std::vector<std::string> keys;
  for (int i = 0; i < 1000; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), "base", 1000);
    Put(b_.get(), Key(i), "base", 1000);
  }
  for (int i = 0; i < 100; ++i) Put(a_.get(), Key(i), "newer on a", 2000);    // a wins
  for (int i = 100; i < 200; ++i) Put(b_.get(), Key(i), "newer on b", 2000);  // b wins
  for (int i = 200; i < 300; ++i) {
    Put(a_.get(), Key(i), "older on a", 3000);
    Put(b_.get(), Key(i), "newest on b", 3001);  // b wins
  }
  for (int i = 300; i < 400; ++i) {
    Put(a_.get(), Key(i), "newest on a", 3002);  // a wins
    Put(b_.get(), Key(i), "older on b", 3001);
  }
  const AntiEntropyFigures round = Run(AeA(), "b");
  EXPECT_EQ(round.keys_pushed, 200u);
  EXPECT_EQ(round.keys_pulled, 200u);
  ExpectSame(keys);
  ExpectRootsEqual();
  for (int i = 0; i < 400; ++i) {
    const engine::KeyRecord record = Record(a_.get(), Key(i));
    const char* expected = i < 100   ? "newer on a"
                           : i < 200 ? "newer on b"
                           : i < 300 ? "newest on b"
                                     : "newest on a";
    EXPECT_EQ(record.value, expected) << Key(i);
  }
}

TEST_F(AntiEntropyTest, TombstonesPropagateAndWinWhenNewer) {
  Put(a_.get(), "deleted-on-a", "v", 100);
  Put(b_.get(), "deleted-on-a", "v", 100);
  Delete(a_.get(), "deleted-on-a", 200);  // newer than b's value: wins

  Put(a_.get(), "put-after-delete", "v", 100);
  Delete(a_.get(), "put-after-delete", 200);
  Put(b_.get(), "put-after-delete", "revived", 300);  // newer than a's tombstone: wins

  Put(a_.get(), "stale-delete", "v", 100);
  Delete(b_.get(), "stale-delete", 50);  // b never saw the value; its delete is older

  Put(a_.get(), "only-a-deleted", "v", 10);
  Delete(a_.get(), "only-a-deleted", 20);  // b knows nothing: it learns the tombstone

  Run(AeA(), "b");
  const std::vector<std::string> keys = {"deleted-on-a", "put-after-delete", "stale-delete",
                                         "only-a-deleted"};
  ExpectSame(keys);
  ExpectRootsEqual();
  EXPECT_TRUE(Record(b_.get(), "deleted-on-a").tombstone);
  EXPECT_EQ(Record(b_.get(), "deleted-on-a").timestamp, 200u);
  EXPECT_FALSE(Record(a_.get(), "put-after-delete").tombstone);
  EXPECT_EQ(Record(a_.get(), "put-after-delete").value, "revived");
  EXPECT_FALSE(Record(b_.get(), "stale-delete").tombstone);
  EXPECT_EQ(Record(b_.get(), "stale-delete").value, "v");
  EXPECT_TRUE(Record(b_.get(), "only-a-deleted").found);
  EXPECT_TRUE(Record(b_.get(), "only-a-deleted").tombstone);
}

TEST_F(AntiEntropyTest, ExpiredValuesMoveAsValuesSoTreesConverge) {
  const int64_t past = absl::ToUnixMillis(absl::Now()) - 60'000;
  Put(a_.get(), "expired", "gone", 500, past);
  Put(a_.get(), "live", "here", 501);
  Run(AeA(), "b");
  ExpectRootsEqual();
  EXPECT_TRUE(Record(b_.get(), "expired").tombstone);  // reads as deleted
  EXPECT_EQ(Record(b_.get(), "expired").expiry_unix_ms, past);
  EXPECT_EQ(Run(AeA(), "b").partitions_differing, 0u);
  // And the other way: pulled by a wiped node.
  std::unique_ptr<Node> fresh = OpenNode("c");
  network_.Add(fresh.get());
  auto ae = std::make_unique<AntiEntropy>(
      fresh->engine.get(), network_.Sender(), [] { return std::shared_ptr<const Ring>(); },
      [&] { return Members(); }, "c", nullptr, TestOptions());
  EXPECT_EQ(Run(ae.get(), "a").keys_pulled, 2u);
  EXPECT_EQ(Run(ae.get(), "a").partitions_differing, 0u);
  ae.reset();
  CloseNode(fresh.get());
}

TEST_F(AntiEntropyTest, RandomWritesOnBothSidesConverge) {
  uint64_t seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  if (const char* text = std::getenv("LOGKV_TEST_SEED"); text != nullptr) {
    seed = std::strtoull(text, nullptr, 10);
  }
  std::printf("seed %llu (LOGKV_TEST_SEED=%llu replays)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 random(seed);
  constexpr int kKeySpace = 3000;
  // The oracle: per key, the write with the highest timestamp. Timestamps are
  // distinct across nodes (even on a, odd on b), as the coordinators' node
  // tags make them in a cluster.
  struct Latest {
    uint64_t timestamp = 0;
    bool tombstone = false;
    std::string value;
  };
  std::map<std::string, Latest> oracle;
  uint64_t clock = 1000;
  for (int op = 0; op < 8000; ++op) {
    Node* node = (random() % 2 == 0) ? a_.get() : b_.get();
    const std::string key = Key(static_cast<int>(random() % kKeySpace));
    clock += 1 + random() % 3;
    // Writes arrive out of order: some are stamped in the past.
    uint64_t timestamp = (clock - random() % 50) * 2 + (node == b_.get() ? 1 : 0);
    const bool tombstone = random() % 5 == 0;
    const std::string value = absl::StrCat("v", op, "-", std::string(random() % 64, 'x'));
    if (tombstone) {
      Delete(node, key, timestamp);
    } else {
      Put(node, key, value, timestamp);
    }
    Latest& latest = oracle[key];
    if (timestamp > latest.timestamp) latest = Latest{timestamp, tombstone, tombstone ? "" : value};
  }
  // Half the rounds started by each side.
  const AntiEntropyFigures round = (seed % 2 == 0) ? Run(AeA(), "b") : Run(AeB(), "a");
  std::printf("random: %llu pushed, %llu pulled, %llu bytes\n",
              static_cast<unsigned long long>(round.keys_pushed),
              static_cast<unsigned long long>(round.keys_pulled),
              static_cast<unsigned long long>(round.bytes_sent + round.bytes_received));
  std::vector<std::string> keys;
  for (const auto& [key, latest] : oracle) keys.push_back(key);
  ExpectSame(keys);
  ExpectRootsEqual();
  for (const auto& [key, latest] : oracle) {
    const engine::KeyRecord record = Record(a_.get(), key);
    ASSERT_EQ(record.timestamp, latest.timestamp) << key;
    ASSERT_EQ(record.tombstone, latest.tombstone) << key;
    ASSERT_EQ(record.value, latest.value) << key;
  }
  EXPECT_EQ(Run(AeA(), "b").partitions_differing, 0u);
}

TEST_F(AntiEntropyTest, LongLeafListsArePaged) {
  // One partition of one leaf: every key is in the same leaf, and the leaf
  // lists come in pages of about 1 KiB.
  TearDown();
  a_ = OpenNode("a", 1, 1);
  b_ = OpenNode("b", 1, 1);
  network_.Add(a_.get());
  network_.Add(b_.get());
  network_.set_leaf_frame_bytes(2048);
  std::vector<std::string> keys;
  for (int i = 0; i < 600; ++i) {
    keys.push_back(Key(i));
    if (i % 3 != 0) Put(a_.get(), Key(i), Value(i), 10 + i * 2);
    if (i % 2 != 0) Put(b_.get(), Key(i), "b's", 11 + i * 2);
  }
  const AntiEntropyFigures round = Run(AeA(), "b");
  EXPECT_GT(network_.requests(protocol::Operation::MerkleLeaf), 10u);
  // i % 6: 0 on neither side; 2, 4 only on a (push); 1, 3, 5 newer on b (pull).
  EXPECT_EQ(round.keys_pushed + round.keys_pulled, 500u);
  ExpectSame(keys);
  ExpectRootsEqual();
}

TEST_F(AntiEntropyTest, OnlyKeysTheRingPlacesOnTheReceiverMove) {
  // Four members, N = 2: a and b share only some keys. a pushes what b owns
  // (whether a owns it or not: a handoff), b pulls nothing it does not own.
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b", "c", "d"});
  AntiEntropyOptions options = TestOptions();
  options.replicas = 2;
  ae_a_ = Make(a_.get(), options, ring);
  constexpr int kKeys = 4000;
  uint64_t owned_by_b = 0;
  for (int i = 0; i < kKeys; ++i) {
    Put(a_.get(), Key(i), Value(i));
    const std::vector<std::string> owners = ring->PreferenceList(Key(i), 2);
    if (std::find(owners.begin(), owners.end(), "b") != owners.end()) ++owned_by_b;
  }
  const AntiEntropyFigures round = Run(AeA(), "b");
  EXPECT_EQ(round.keys_pushed, owned_by_b);
  EXPECT_EQ(round.keys_not_owned, kKeys - owned_by_b);
  for (int i = 0; i < kKeys; ++i) {
    const std::vector<std::string> owners = ring->PreferenceList(Key(i), 2);
    const bool b_owns = std::find(owners.begin(), owners.end(), "b") != owners.end();
    ASSERT_EQ(Record(b_.get(), Key(i)).found, b_owns) << Key(i);
  }
  // The cost of trees that span owner sets: the leaves holding keys b does
  // not own differ for ever, and every round lists them again.
  const AntiEntropyFigures again = Run(AeA(), "b");
  EXPECT_EQ(again.keys_pushed, 0u);
  EXPECT_EQ(again.keys_not_owned, kKeys - owned_by_b);
  std::printf(
      "4 members, N=2, %d keys on a (%llu owned by b): a settled round still costs "
      "%llu bytes and lists %llu keys\n",
      kKeys, static_cast<unsigned long long>(owned_by_b),
      static_cast<unsigned long long>(again.bytes_sent + again.bytes_received),
      static_cast<unsigned long long>(again.keys_compared));
}

TEST_F(AntiEntropyTest, HandOffPushesWhatThePeerWillOwnOnceThisNodeIsGone) {
  // Two members, N = 1: a holds keys only it owns. Pull-only rounds never
  // move them; before a leaves, HandOff pushes them to b, which owns
  // everything once a is gone.
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  AntiEntropyOptions options = TestOptions();
  options.replicas = 1;
  options.push = false;
  ae_a_ = Make(a_.get(), options, ring);
  constexpr int kKeys = 1000;
  uint64_t only_on_a = 0;
  for (int i = 0; i < kKeys; ++i) {
    Put(a_.get(), Key(i), Value(i));
    if (ring->PreferenceList(Key(i), 1).front() == "a") ++only_on_a;
  }
  ASSERT_GT(only_on_a, 0u);
  const AntiEntropyFigures pull_only = Run(AeA(), "b");
  EXPECT_EQ(pull_only.keys_pushed, 0u) << "a pull-only round pushes nothing";
  const absl::Status handed = AeA()->HandOff(absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(handed.ok()) << handed;
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_TRUE(Record(b_.get(), Key(i)).found) << Key(i) << " was not handed off";
  }
}

// ---- The purger ---------------------------------------------------------------

PurgerOptions PurgeOptions(size_t replicas) {
  PurgerOptions options;
  options.interval = absl::Hours(1);
  options.ring_stable_for = absl::ZeroDuration();
  options.tombstone_grace = absl::Hours(1);
  options.replicas = replicas;
  options.page_keys = 100;  // several pages and several requests per sweep
  options.keys_per_request = 64;
  return options;
}

class PurgerTest : public AntiEntropyTest {
 protected:
  std::unique_ptr<Purger> MakePurger(Node* node, std::shared_ptr<const Ring> ring,
                                     const PurgerOptions& options,
                                     ServerMetrics* metrics = nullptr) {
    return std::make_unique<Purger>(node->engine.get(), network_.Sender(),
                                    [ring] { return ring; }, [this] { return Members(); },
                                    node->id, metrics, options);
  }
  static PurgerFigures Sweep(Purger* purger) {
    absl::StatusOr<PurgerFigures> figures = purger->RunOnce();
    EXPECT_TRUE(figures.ok()) << figures.status();
    return figures.ok() ? *figures : PurgerFigures{};
  }
  static bool Owns(const Ring& ring, const std::string& node, const std::string& key,
                   size_t replicas) {
    const std::vector<std::string> owners = ring.PreferenceList(key, replicas);
    return std::find(owners.begin(), owners.end(), node) != owners.end();
  }
  // A hybrid-logical-clock timestamp this long ago.
  static uint64_t Ago(absl::Duration age) {
    return engine::TimestampAtUnixMs(absl::ToUnixMillis(absl::Now() - age));
  }
};

TEST_F(PurgerTest, KeysThisNodeNoLongerOwnsGoOnceTheOwnerHasThem) {
  // a held every key; b joined and owns about half (N = 1). b has pulled
  // only some of them yet: a drops exactly those, keeps what b lacks, and
  // drops the rest once b's anti-entropy pulled them.
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  constexpr int kKeys = 1000;
  std::vector<std::string> keys;
  int owned_by_b = 0;
  int copied = 0;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back(Key(i));
    Put(a_.get(), Key(i), Value(i));
    if (!Owns(*ring, "b", Key(i), 1)) continue;
    ++owned_by_b;
    if (i % 3 == 0) continue;  // not there yet
    Copy(a_.get(), b_.get(), Key(i));
    ++copied;
  }
  // One key b holds in an older version: a's newer one must stay.
  int stale = -1;
  for (int i = 1; i < kKeys && stale < 0; ++i) {
    if (Owns(*ring, "b", Key(i), 1) && i % 3 != 0) stale = i;
  }
  ASSERT_GE(stale, 0);
  const uint64_t newer = Ago(absl::ZeroDuration()) + 1000;
  Put(a_.get(), Key(stale), "newer on a", newer);
  --copied;

  auto purger = MakePurger(a_.get(), ring, PurgeOptions(1));
  const PurgerFigures first = Sweep(purger.get());
  EXPECT_EQ(first.sweeps, 1u);
  EXPECT_EQ(first.keys_listed, static_cast<uint64_t>(kKeys));
  EXPECT_EQ(first.candidates, static_cast<uint64_t>(owned_by_b));
  EXPECT_EQ(first.forgotten_not_owned, static_cast<uint64_t>(copied));
  EXPECT_EQ(first.waiting, static_cast<uint64_t>(owned_by_b - copied));
  EXPECT_GT(first.requests, 1u);
  for (int i = 0; i < kKeys; ++i) {
    const bool b_owns = Owns(*ring, "b", Key(i), 1);
    const bool b_has_it = b_owns && i % 3 != 0 && i != stale;
    ASSERT_EQ(Record(a_.get(), Key(i)).found, !b_has_it) << Key(i);
    if (b_owns) {
      ASSERT_EQ(Record(b_.get(), Key(i)).found, i % 3 != 0) << Key(i);
    }
  }
  EXPECT_EQ(Record(a_.get(), Key(stale)).value, "newer on a");

  // b's own rounds pull what it lacks from a; the next sweep drops it on a.
  AntiEntropyOptions pull_only = TestOptions();
  pull_only.replicas = 1;
  pull_only.push = false;
  ae_b_ = Make(b_.get(), pull_only, ring);
  Run(AeB(), "a");
  const PurgerFigures second = Sweep(purger.get());
  EXPECT_EQ(second.forgotten_not_owned, static_cast<uint64_t>(owned_by_b - copied));
  EXPECT_EQ(second.waiting, 0u);
  for (int i = 0; i < kKeys; ++i) {
    const bool b_owns = Owns(*ring, "b", Key(i), 1);
    ASSERT_EQ(Record(a_.get(), Key(i)).found, !b_owns) << Key(i);
    ASSERT_EQ(Record(b_.get(), Key(i)).found, b_owns) << Key(i);
  }
  EXPECT_EQ(Record(b_.get(), Key(stale)).value, "newer on a");
  // Nothing is left to move: trees of the owned keys agree, rounds copy nothing.
  EXPECT_EQ(Run(AeB(), "a").keys_pulled, 0u);
  EXPECT_EQ(Sweep(purger.get()).candidates, 0u);
}

TEST_F(PurgerTest, TombstonesAreCollectedOnceEveryOwnerHasThemAndTheGraceHasPassed) {
  // Both own everything (N = 2).
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  const uint64_t old_put = Ago(absl::Hours(3));
  const uint64_t old_delete = Ago(absl::Hours(2));
  const uint64_t recent_delete = Ago(absl::Minutes(1));
  for (Node* node : {a_.get(), b_.get()}) {
    Put(node, "both-old", "v", old_put);
    Delete(node, "both-old", old_delete);
    Put(node, "both-recent", "v", old_put);
    Delete(node, "both-recent", recent_delete);
    Put(node, "live", "v", old_put);
    Put(node, "only-a-deleted", "v", old_put);
  }
  Delete(a_.get(), "only-a-deleted", old_delete);  // b still holds the value

  auto purge_a = MakePurger(a_.get(), ring, PurgeOptions(2));
  auto purge_b = MakePurger(b_.get(), ring, PurgeOptions(2));
  const PurgerFigures first = Sweep(purge_a.get());
  EXPECT_EQ(first.candidates, 2u) << "tombstones past their grace: both-old, only-a-deleted";
  EXPECT_EQ(first.tombstones_collected, 1u);
  EXPECT_EQ(first.waiting, 1u);
  EXPECT_FALSE(Record(a_.get(), "both-old").found);
  EXPECT_TRUE(Record(a_.get(), "both-recent").tombstone) << "within its grace";
  EXPECT_TRUE(Record(a_.get(), "only-a-deleted").tombstone) << "b does not have it yet";
  EXPECT_TRUE(Record(a_.get(), "live").found);

  // b holds the old tombstone; a holds nothing any more: b may collect too.
  EXPECT_EQ(Sweep(purge_b.get()).tombstones_collected, 1u);
  EXPECT_FALSE(Record(b_.get(), "both-old").found);

  // Once b has the delete, both collect it, and nothing comes back.
  Copy(a_.get(), b_.get(), "only-a-deleted");
  EXPECT_EQ(Sweep(purge_a.get()).tombstones_collected, 1u);
  EXPECT_EQ(Sweep(purge_b.get()).tombstones_collected, 1u);
  for (Node* node : {a_.get(), b_.get()}) {
    EXPECT_FALSE(Record(node, "only-a-deleted").found) << node->id;
    EXPECT_TRUE(Record(node, "both-recent").found) << node->id;
    EXPECT_EQ(Record(node, "live").value, "v") << node->id;
  }
  ae_a_ = Make(a_.get(), TestOptions(), ring);
  EXPECT_EQ(Run(AeA(), "b").keys_pulled, 0u);
  ExpectRootsEqual();
}

TEST_F(PurgerTest, AnOwnerThatCannotBeAskedConfirmsNothing) {
  // c owns keys with b (N = 2) but is not a live member: a keeps its copies.
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b", "c"});
  int kept = 0;
  for (int i = 0; i < 300; ++i) {
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
    if (Owns(*ring, "a", Key(i), 2)) continue;
    ++kept;  // owned by b and c
  }
  ASSERT_GT(kept, 0);
  auto purger = MakePurger(a_.get(), ring, PurgeOptions(2));
  const PurgerFigures sweep = Sweep(purger.get());
  EXPECT_EQ(sweep.forgotten_not_owned, 0u);
  EXPECT_EQ(sweep.waiting, static_cast<uint64_t>(kept));
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(Record(a_.get(), Key(i)).found) << Key(i);
}

TEST_F(PurgerTest, SweepsWaitUntilTheRingHasSettled) {
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  for (int i = 0; i < 100; ++i) {
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
  }
  PurgerOptions options = PurgeOptions(1);
  options.ring_stable_for = absl::Milliseconds(300);
  ServerMetrics metrics;
  auto purger = MakePurger(a_.get(), ring, options, &metrics);
  EXPECT_EQ(Sweep(purger.get()).sweeps_skipped, 1u) << "the ring has only just been seen";
  absl::SleepFor(absl::Milliseconds(350));
  purger->NotifyRingChanged();
  EXPECT_EQ(Sweep(purger.get()).sweeps_skipped, 1u) << "it changed again";
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(Record(a_.get(), Key(i)).found);
  absl::SleepFor(absl::Milliseconds(350));
  const PurgerFigures settled = Sweep(purger.get());
  EXPECT_EQ(settled.sweeps, 1u);
  EXPECT_GT(settled.forgotten_not_owned, 0u);
  const std::string text = metrics.RenderPrometheus();
  EXPECT_NE(text.find(absl::StrCat("logkv_purge_keys_forgotten_total{reason=\"not_owned\"} ",
                                   settled.forgotten_not_owned)),
            std::string::npos)
      << text;
  EXPECT_EQ(purger->Figures().sweeps_skipped, 2u);
}

// The ring changes while a sweep asks the owners (here b leaves after
// handing off, and a owns everything again): what the old ring's owners
// confirmed no longer says who must hold a key, so nothing is forgotten.
TEST_F(PurgerTest, ASweepDuringWhichTheRingChangesForgetsNothing) {
  auto two = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  auto one = std::make_shared<const Ring>(std::vector<std::string>{"a"});
  int owned_by_b = 0;
  for (int i = 0; i < 300; ++i) {
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
    owned_by_b += Owns(*two, "b", Key(i), 1);
  }
  ASSERT_GT(owned_by_b, 0);
  absl::Mutex mu;
  std::shared_ptr<const Ring> current = two;
  Purger* purger_ptr = nullptr;
  PeerSendFunction sender = network_.Sender();
  // The first request of the sweep changes the ring under it.
  PeerSendFunction changing = [&](const std::string& address, std::string frame,
                                  absl::Duration timeout, PeerTransport::Callback done) {
    {
      absl::MutexLock lock(&mu);
      if (current != one) {
        current = one;
        purger_ptr->NotifyRingChanged();
      }
    }
    sender(address, std::move(frame), timeout, std::move(done));
  };
  Purger purger(a_->engine.get(), changing,
                [&] {
                  absl::MutexLock lock(&mu);
                  return current;
                },
                [this] { return Members(); }, "a", nullptr, PurgeOptions(1));
  purger_ptr = &purger;
  const PurgerFigures sweep = Sweep(&purger);
  EXPECT_EQ(sweep.sweeps_cut_short, 1u);
  EXPECT_EQ(sweep.sweeps, 0u);
  EXPECT_EQ(sweep.forgotten_not_owned, 0u);
  EXPECT_GT(sweep.waiting, 0u);
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(Record(a_.get(), Key(i)).found) << Key(i);
  // With a alone, it owns every key: nothing is a candidate.
  const PurgerFigures after = Sweep(&purger);
  EXPECT_EQ(after.sweeps, 1u);
  EXPECT_EQ(after.candidates, 0u);
  EXPECT_EQ(purger.Figures().sweeps_cut_short, 1u);
}

// The same when the members stay but a change was notified during the sweep
// (a member's state moved): nothing is forgotten in that sweep, and the next
// one, with the ring settled, drops what b owns.
TEST_F(PurgerTest, AChangeNotifiedDuringASweepAlsoCutsItShort) {
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  for (int i = 0; i < 300; ++i) {
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
  }
  std::atomic<bool> notify{true};
  Purger* purger_ptr = nullptr;
  PeerSendFunction sender = network_.Sender();
  PeerSendFunction notifying = [&](const std::string& address, std::string frame,
                                   absl::Duration timeout, PeerTransport::Callback done) {
    if (notify.exchange(false)) purger_ptr->NotifyRingChanged();
    sender(address, std::move(frame), timeout, std::move(done));
  };
  Purger purger(a_->engine.get(), notifying, [ring] { return ring; },
                [this] { return Members(); }, "a", nullptr, PurgeOptions(1));
  purger_ptr = &purger;
  const PurgerFigures sweep = Sweep(&purger);
  EXPECT_EQ(sweep.sweeps_cut_short, 1u);
  EXPECT_EQ(sweep.forgotten_not_owned, 0u);
  EXPECT_EQ(a_->engine->GetStats().keys, 300u);
  const PurgerFigures next = Sweep(&purger);
  EXPECT_EQ(next.sweeps, 1u);
  EXPECT_GT(next.forgotten_not_owned, 0u);
}

// A node started to join a cluster that has not seen a peer yet has nobody
// to confirm its tombstones with, so it does not sweep; one that runs alone
// by design (no seeds) collects them.
TEST_F(PurgerTest, ANodeWaitingForItsClusterCollectsNoTombstones) {
  auto alone = std::make_shared<const Ring>(std::vector<std::string>{"a"});
  Put(a_.get(), "k", "v", Ago(absl::Hours(3)));
  Delete(a_.get(), "k", Ago(absl::Hours(2)));
  PurgerOptions options = PurgeOptions(3);
  options.peers_expected = true;
  auto waiting = MakePurger(a_.get(), alone, options);
  EXPECT_EQ(Sweep(waiting.get()).sweeps_skipped, 1u);
  EXPECT_TRUE(Record(a_.get(), "k").tombstone);
  auto single = MakePurger(a_.get(), alone, PurgeOptions(3));
  EXPECT_EQ(Sweep(single.get()).tombstones_collected, 1u);
  EXPECT_FALSE(Record(a_.get(), "k").found);
  // Once it has seen a peer, a seeded node sweeps, and when every other
  // member has left it collects alone.
  Put(a_.get(), "k2", "v", Ago(absl::Hours(3)));
  Delete(a_.get(), "k2", Ago(absl::Hours(2)));
  Put(b_.get(), "k2", "v", Ago(absl::Hours(3)));
  Delete(b_.get(), "k2", Ago(absl::Hours(2)));
  std::shared_ptr<const Ring> current =
      std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  Purger joined(a_->engine.get(), network_.Sender(), [&current] { return current; },
                [this] { return Members(); }, "a", nullptr, options);
  EXPECT_EQ(Sweep(&joined).tombstones_collected, 1u) << "b holds the tombstone";
  Put(a_.get(), "k3", "v", Ago(absl::Hours(3)));
  Delete(a_.get(), "k3", Ago(absl::Hours(2)));
  current = alone;
  EXPECT_EQ(Sweep(&joined).tombstones_collected, 1u);
  EXPECT_FALSE(Record(a_.get(), "k3").found);
}

// The purger's thread sweeps when the ring has settled after a change, not
// only every interval (an hour here), and restarts after a stop.
TEST_F(PurgerTest, ARingChangeWakesTheSweeperOnceTheRingHasSettled) {
  auto ring = std::make_shared<const Ring>(std::vector<std::string>{"a", "b"});
  for (int i = 0; i < 100; ++i) {
    Put(a_.get(), Key(i), Value(i));
    Copy(a_.get(), b_.get(), Key(i));
  }
  PurgerOptions options = PurgeOptions(1);
  options.ring_stable_for = absl::Milliseconds(20);
  auto purger = MakePurger(a_.get(), ring, options);
  auto swept = [&purger](uint64_t sweeps) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline && purger->Figures().sweeps < sweeps) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return purger->Figures().sweeps >= sweeps;
  };
  ASSERT_TRUE(purger->Start().ok());
  EXPECT_EQ(purger->Start().code(), absl::StatusCode::kFailedPrecondition);
  purger->NotifyRingChanged();
  ASSERT_TRUE(swept(1));
  EXPECT_GT(purger->Figures().forgotten_not_owned, 0u);
  purger->Stop();
  purger->Stop();
  ASSERT_TRUE(purger->Start().ok());
  purger->NotifyRingChanged();
  EXPECT_TRUE(swept(2));
  purger->Stop();
}

TEST_F(AntiEntropyTest, RateLimitPacesTheBytes) {
  for (int i = 0; i < 2000; ++i) Put(a_.get(), Key(i), Value(i));
  AntiEntropyOptions options = TestOptions();
  options.bytes_per_second = 1u << 20;
  ae_a_ = Make(a_.get(), options);
  const absl::Time start = absl::Now();
  const AntiEntropyFigures round = Run(AeA(), "b");
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const double bytes = static_cast<double>(round.bytes_sent + round.bytes_received);
  std::printf("%.0f bytes at 1 MiB/s took %.3f s\n", bytes, seconds);
  // The bucket lends 0.25 s of bytes up front.
  EXPECT_GE(seconds, (bytes / (1 << 20) - 0.25) * 0.9);
  EXPECT_EQ(round.keys_pushed, 2000u);
}

TEST_F(AntiEntropyTest, BackgroundRoundsRepairAndReportMetrics) {
  ServerMetrics metrics;
  AntiEntropyOptions options = TestOptions();
  options.interval = absl::Milliseconds(50);
  options.initial_delay = absl::Milliseconds(10);
  ae_a_ = Make(a_.get(), options, nullptr, &metrics);
  for (int i = 0; i < 500; ++i) Put(a_.get(), Key(i), Value(i));
  EXPECT_FALSE(ae_a_->caught_up());
  ASSERT_TRUE(ae_a_->Start().ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline && (b_->engine->GetStats().keys < 500 || !ae_a_->caught_up())) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(b_->engine->GetStats().keys, 500u);
  EXPECT_TRUE(ae_a_->caught_up());
  ae_a_->NotifyRingChanged();
  EXPECT_FALSE(ae_a_->caught_up());
  while (absl::Now() < deadline && !ae_a_->caught_up()) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(ae_a_->caught_up());
  ae_a_->Stop();
  const AntiEntropyFigures totals = ae_a_->Figures();
  EXPECT_GE(totals.rounds, 2u);
  EXPECT_EQ(totals.keys_pushed, 500u);
  const std::string text = metrics.RenderPrometheus();
  EXPECT_NE(text.find("logkv_anti_entropy_keys_repaired_total{direction=\"push\"} 500"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(absl::StrCat("logkv_anti_entropy_bytes_total{direction=\"sent\"} ",
                                   totals.bytes_sent)),
            std::string::npos);
  EXPECT_NE(text.find("logkv_anti_entropy_rounds_total"), std::string::npos);
}

// With an interval of an hour only a wake can start the passes after the
// first: a ring change must really wake the thread. Start and Stop follow
// the same rules as every background task (server/core/periodic_worker.h).
TEST_F(AntiEntropyTest, ARingChangeWakesTheBackgroundThread) {
  AntiEntropyOptions options = TestOptions();
  options.initial_delay = absl::Milliseconds(10);
  ae_a_ = Make(a_.get(), options);
  for (int i = 0; i < 100; ++i) Put(a_.get(), Key(i), Value(i));
  ASSERT_TRUE(ae_a_->Start().ok());
  EXPECT_EQ(ae_a_->Start().code(), absl::StatusCode::kFailedPrecondition);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline && !ae_a_->caught_up()) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_TRUE(ae_a_->caught_up());
  ASSERT_EQ(b_->engine->GetStats().keys, 100u);
  for (int i = 100; i < 200; ++i) Put(a_.get(), Key(i), Value(i));
  ae_a_->NotifyRingChanged();
  while (absl::Now() < deadline && !ae_a_->caught_up()) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_TRUE(ae_a_->caught_up());
  EXPECT_EQ(b_->engine->GetStats().keys, 200u);
  EXPECT_EQ(ae_a_->Figures().rounds, 2u);
  ae_a_->Stop();
  ae_a_->Stop();
  // A stopped exchange refuses rounds until it starts again.
  EXPECT_EQ(ae_a_->RunOnce("b").status().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(ae_a_->Start().ok());
  EXPECT_TRUE(ae_a_->RunOnce("b").ok());
  ae_a_->Stop();
}

TEST_F(AntiEntropyTest, AnUnknownPeerIsNotFound) {
  EXPECT_EQ(AeA()->RunOnce("nobody").status().code(), absl::StatusCode::kNotFound);
}

// The benchmark of the issue: the repair rate for a node that missed 100k
// writes, unlimited and at the default 8 MiB/s (LOGKV_AE_BENCH_LIMITED=1).
TEST_F(AntiEntropyTest, RepairRateForANodeThatMissed100kWrites) {
  constexpr int kKeys = 100'000;
  for (int i = 0; i < kKeys; ++i) Put(a_.get(), Key(i), Value(i));
  AntiEntropyOptions options = TestOptions();
  if (std::getenv("LOGKV_AE_BENCH_LIMITED") != nullptr) options.bytes_per_second = 8u << 20;
  ae_b_ = Make(b_.get(), options);
  const AntiEntropyFigures round = Run(AeB(), "a");
  EXPECT_EQ(round.keys_pulled, static_cast<uint64_t>(kKeys));
  std::printf(
      "repair of %d missed writes (%zu-byte values, rate limit %s): %.3f s, %.0f keys/s, "
      "%llu requests, %llu bytes sent, %llu received (%.1f bytes per key)\n",
      kKeys, Value(0).size(), options.bytes_per_second == 0 ? "none" : "8 MiB/s",
      round.last_round_seconds, round.repair_keys_per_second,
      static_cast<unsigned long long>(round.requests),
      static_cast<unsigned long long>(round.bytes_sent),
      static_cast<unsigned long long>(round.bytes_received),
      static_cast<double>(round.bytes_sent + round.bytes_received) / kKeys);
  ExpectRootsEqual();
}

}  // namespace
}  // namespace logkv::server::cluster
