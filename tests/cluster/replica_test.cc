// The replica side of replication (HandleReplicate, HandleReadRecords), the
// cluster timestamps, the hinted-handoff queue and the ReplicaCoordinator,
// each against real engines in temporary directories. The coordinator runs
// over an in-process fake transport that hands every request to the
// target node's replica handlers, so quorum, hinting and repair are tested
// without sockets; the cluster tests run the real thing.
#include "server/cluster/replica.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "protocol/frame.h"
#include "server/cluster/hinted_handoff.h"
#include "server/cluster/replica_batcher.h"
#include "server/cluster/replica_coordinator.h"
#include "server/cluster/ring.h"
#include "server/metrics.h"
#include "server/namespaces.h"
#include "server/service.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::server::cluster {
namespace {

namespace p = ::logkv::protocol;
using test::ManualClock;
using test::ScopedTempDir;

constexpr int64_t kMs = 1'700'000'000'000;

uint64_t Stamp(int64_t ms, uint64_t logical = 0) {
  return engine::TimestampAtUnixMs(ms) | logical;
}

VersionedRecord Put(std::string key, std::string value, uint64_t timestamp) {
  VersionedRecord record;
  record.key = std::move(key);
  record.value = std::move(value);
  record.timestamp = timestamp;
  record.found = true;
  return record;
}

VersionedRecord Tombstone(std::string key, uint64_t timestamp) {
  VersionedRecord record;
  record.key = std::move(key);
  record.timestamp = timestamp;
  record.tombstone = true;
  record.found = true;
  return record;
}

// Runs a request frame through a replica handler, as a peer connection
// would; returns the answer frame. The request's bytes are overwritten and
// freed once the handler returns, as a connection's buffer may be: nothing
// may read them later. Only with fsync_always may the answer be deferred.
std::string Dispatch(engine::Engine* engine, bool fsync_always, const std::string& frame) {
  auto bytes = std::make_unique<char[]>(frame.size());
  memcpy(bytes.get(), frame.data(), frame.size());
  const auto* request =
      flatbuffers::GetSizePrefixedRoot<p::Request>(reinterpret_cast<const uint8_t*>(bytes.get()));
  flatbuffers::FlatBufferBuilder builder(256);
  absl::Notification answered;
  std::string deferred;
  auto defer = [&]() -> Service::Completion {
    if (!fsync_always) ADD_FAILURE() << "answer deferred though the engine's writes finish inline";
    return [&](std::string answer) {
      deferred = std::move(answer);
      answered.Notify();
    };
  };
  Service::Outcome outcome;
  if (request->operation_type() == p::Operation::Replicate) {
    outcome = HandleReplicate(engine, *request, &builder, defer);
  } else {
    outcome = HandleReadRecords(engine, *request, &builder);
  }
  memset(bytes.get(), 0xa5, frame.size());
  bytes.reset();
  if (outcome == Service::Outcome::kAnswered) return std::string(p::FrameOf(builder));
  answered.WaitForNotification();
  return deferred;
}

class Node {
 public:
  explicit Node(const std::string& path, engine::Clock* clock,
                engine::FsyncPolicy fsync = engine::FsyncPolicy::kNever,
                engine::Compression compression = engine::Compression::kNone) {
    options_ = test::TestOptions(path, clock, &log_);
    options_.fsync = fsync;
    options_.compression = compression;
    options_.background_threads = fsync == engine::FsyncPolicy::kAlways;
    // As logkvd's engine: the hints are read at start in an order of their own.
    options_.ordered_prefixes = {std::string(kHintPrefix)};
    Open();
  }
  ~Node() {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }
  void Open() {
    auto engine = engine::Engine::Open(options_);
    ASSERT_OK(engine);
    engine_ = *std::move(engine);
  }
  void Reopen() {
    ASSERT_OK(engine_->Close());
    engine_.reset();
    Open();
  }
  engine::Engine* engine() { return engine_.get(); }

  std::vector<bool> Replicate(std::vector<VersionedRecord> records, bool fsync_always = false) {
    const std::string answer =
        Dispatch(engine(), fsync_always, ReplicateRequestFrame(records, false));
    absl::StatusOr<std::vector<bool>> applied = ParseReplicateResult(answer, records.size());
    EXPECT_OK(applied);
    return applied.ok() ? *applied : std::vector<bool>();
  }
  VersionedRecord Read(const std::string& key, bool meta_only = false) {
    const std::string keys[] = {key};
    const std::string answer = Dispatch(engine(), false, ReadRecordsRequestFrame(keys, meta_only));
    absl::StatusOr<std::vector<VersionedRecord>> records = ParseRecordsResult(answer, keys);
    EXPECT_OK(records);
    return records.ok() ? (*records)[0] : VersionedRecord();
  }

 private:
  test::LogCapture log_;
  engine::Options options_;
  std::unique_ptr<engine::Engine> engine_;
};

// ---- The replica's handlers -------------------------------------------------------

class ReplicaTest : public ::testing::Test {
 protected:
  ScopedTempDir dir_;
  ManualClock clock_{kMs};
};

TEST_F(ReplicaTest, NewerWinsOlderIsIgnoredButAcknowledged) {
  Node node(dir_.Subdir("a"), &clock_);
  EXPECT_EQ(node.Replicate({Put("k", "v2", Stamp(kMs, 2))}), std::vector<bool>{true});
  // Older: not applied, yet acknowledged (the replica is at least this new).
  EXPECT_EQ(node.Replicate({Put("k", "v1", Stamp(kMs, 1))}), std::vector<bool>{true});
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "v2");
  VersionedRecord read = node.Read("k");
  EXPECT_TRUE(read.found);
  EXPECT_FALSE(read.tombstone);
  EXPECT_EQ(read.value, "v2");
  EXPECT_EQ(read.timestamp, Stamp(kMs, 2));
  EXPECT_EQ(node.Replicate({Put("k", "v3", Stamp(kMs, 3))}), std::vector<bool>{true});
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "v3");
}

TEST_F(ReplicaTest, ReplayIsIdempotent) {
  Node node(dir_.Subdir("a"), &clock_);
  std::vector<VersionedRecord> batch = {Put("a", "1", Stamp(kMs, 1)),
                                        Put("b", "2", Stamp(kMs, 2)),
                                        Tombstone("a", Stamp(kMs, 3))};
  EXPECT_EQ(node.Replicate(batch), std::vector<bool>({true, true, true}));
  const engine::Stats before = node.engine()->GetStats();
  EXPECT_EQ(node.Replicate(batch), std::vector<bool>({true, true, true}));
  const engine::Stats after = node.engine()->GetStats();
  EXPECT_EQ(after.puts, before.puts);  // nothing written twice
  EXPECT_EQ(after.deletes, before.deletes);
  EXPECT_EQ(test::GetOrStatus(node.engine(), "a"), "NOT_FOUND");
  EXPECT_EQ(test::GetOrStatus(node.engine(), "b"), "2");
}

TEST_F(ReplicaTest, OutOfOrderDeliveryConverges) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  test::Random random(seed);
  // A history of writes to a few keys, delivered in two different orders to
  // two replicas: both end with the newest record of every key.
  std::vector<VersionedRecord> history;
  for (uint64_t i = 1; i <= 200; ++i) {
    const std::string key = absl::StrCat("key", random.Uniform(8));
    history.push_back(random.Percent(20) ? Tombstone(key, Stamp(kMs, i))
                                         : Put(key, absl::StrCat("v", i), Stamp(kMs, i)));
  }
  Node a(dir_.Subdir("a"), &clock_);
  Node b(dir_.Subdir("b"), &clock_);
  std::vector<VersionedRecord> shuffled = history;
  for (size_t i = shuffled.size(); i > 1; --i) std::swap(shuffled[i - 1], shuffled[random.Uniform(i)]);
  for (const VersionedRecord& record : history) a.Replicate({record});
  b.Replicate(shuffled);
  std::map<std::string, VersionedRecord> newest;
  for (const VersionedRecord& record : history) newest[record.key] = record;
  for (const auto& [key, record] : newest) {
    const std::string expected = record.tombstone ? "NOT_FOUND" : record.value;
    EXPECT_EQ(test::GetOrStatus(a.engine(), key), expected) << key;
    EXPECT_EQ(test::GetOrStatus(b.engine(), key), expected) << key;
    EXPECT_EQ(a.Read(key, true).timestamp, record.timestamp);
    EXPECT_EQ(b.Read(key, true).timestamp, record.timestamp);
  }
}

TEST_F(ReplicaTest, TombstonesWinOnlyWhenNewer) {
  Node node(dir_.Subdir("a"), &clock_);
  node.Replicate({Put("k", "v", Stamp(kMs, 5))});
  node.Replicate({Tombstone("k", Stamp(kMs, 4))});  // older delete: ignored
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "v");
  node.Replicate({Tombstone("k", Stamp(kMs, 6))});
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "NOT_FOUND");
  node.Replicate({Put("k", "late", Stamp(kMs, 5))});  // a put older than the delete
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "NOT_FOUND");
  VersionedRecord read = node.Read("k");
  EXPECT_TRUE(read.found);
  EXPECT_TRUE(read.tombstone);
  EXPECT_EQ(read.timestamp, Stamp(kMs, 6));
  // A delete of a key never seen still leaves a tombstone, so an older put
  // arriving later cannot resurrect it.
  node.Replicate({Tombstone("fresh", Stamp(kMs, 9))});
  node.Replicate({Put("fresh", "zombie", Stamp(kMs, 8))});
  EXPECT_EQ(test::GetOrStatus(node.engine(), "fresh"), "NOT_FOUND");
}

TEST_F(ReplicaTest, ReadRecordsOfUnknownKeysAndMetaOnly) {
  Node node(dir_.Subdir("a"), &clock_);
  VersionedRecord unknown = node.Read("nothing");
  EXPECT_FALSE(unknown.found);
  EXPECT_EQ(unknown.timestamp, 0u);
  node.Replicate({Put("k", "value", Stamp(kMs, 1))});
  VersionedRecord meta = node.Read("k", /*meta_only=*/true);
  EXPECT_TRUE(meta.found);
  EXPECT_EQ(meta.value, "");
  EXPECT_EQ(meta.timestamp, Stamp(kMs, 1));
}

TEST_F(ReplicaTest, ReplicatedExpiryIsAbsolute) {
  Node node(dir_.Subdir("a"), &clock_);
  VersionedRecord record = Put("k", "v", Stamp(kMs, 1));
  record.expiry_unix_ms = kMs + 1000;
  node.Replicate({record});
  EXPECT_EQ(node.Read("k").expiry_unix_ms, kMs + 1000);
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "v");
  clock_.AdvanceMs(1001);
  EXPECT_EQ(test::GetOrStatus(node.engine(), "k"), "NOT_FOUND");
  EXPECT_TRUE(node.Read("k").tombstone);
}

TEST_F(ReplicaTest, FsyncAlwaysAnswersAfterTheSync) {
  Node node(dir_.Subdir("a"), &clock_, engine::FsyncPolicy::kAlways);
  EXPECT_EQ(node.Replicate({Put("a", "1", Stamp(kMs, 1)), Tombstone("b", Stamp(kMs, 2))},
                           /*fsync_always=*/true),
            std::vector<bool>({true, true}));
  EXPECT_EQ(test::GetOrStatus(node.engine(), "a"), "1");
}

// Without fsync=always a Replicate is written from the request's bytes and
// answered at once; with it, each write finishes on the group commit's
// thread and the answer is gathered. Both answer every kind of record alike.
TEST_F(ReplicaTest, BothWaysOfApplyingAReplicateAnswerAlike) {
  VersionedRecord unknown;
  unknown.key = "unknown";  // found false: nothing to apply, acknowledged
  VersionedRecord unstamped = Put("unstamped", "u", 0);
  VersionedRecord expiring = Put("expiring", "e", Stamp(kMs, 4));
  expiring.expiry_unix_ms = kMs + 1000;
  const std::string large(300, 'f');  // compressed where compression is on
  const std::vector<VersionedRecord> batch = {
      Put("fresh", large, Stamp(kMs, 5)),
      Put("held", "older", Stamp(kMs, 3)),  // loses to what the node holds
      Tombstone("gone", Stamp(kMs, 6)),
      Put(absl::StrCat(kHintPrefix, "x"), "h", Stamp(kMs, 7)),  // a node's own key
      unknown,
      unstamped,
      expiring,
  };
  const std::vector<bool> applied = {true, true, true, false, true, false, true};
  const std::vector<uint64_t> held = {Stamp(kMs, 5), Stamp(kMs, 9), Stamp(kMs, 6), 0, 0, 0,
                                      Stamp(kMs, 4)};
  int round = 0;
  for (engine::FsyncPolicy fsync : {engine::FsyncPolicy::kNever, engine::FsyncPolicy::kAlways}) {
    for (engine::Compression compression :
         {engine::Compression::kNone, engine::Compression::kZstd}) {
      const bool always = fsync == engine::FsyncPolicy::kAlways;
      SCOPED_TRACE(absl::StrCat("fsync=always: ", always,
                                ", zstd: ", compression == engine::Compression::kZstd));
      Node node(dir_.Subdir(absl::StrCat("node", round++)), &clock_, fsync, compression);
      ASSERT_EQ(node.Replicate({Put("held", "newer", Stamp(kMs, 9))}, always),
                std::vector<bool>{true});
      absl::StatusOr<ReplicateAnswer> answer = ParseReplicateAnswer(
          Dispatch(node.engine(), always, ReplicateRequestFrame(batch, false)), batch.size());
      ASSERT_OK(answer);
      EXPECT_EQ(answer->applied, applied);
      EXPECT_EQ(answer->held_timestamps, held);
      EXPECT_EQ(test::GetOrStatus(node.engine(), "fresh"), large);
      EXPECT_EQ(test::GetOrStatus(node.engine(), "held"), "newer");
      EXPECT_TRUE(node.Read("gone").tombstone);
      EXPECT_EQ(test::GetOrStatus(node.engine(), absl::StrCat(kHintPrefix, "x")), "NOT_FOUND");
      EXPECT_EQ(test::GetOrStatus(node.engine(), "unstamped"), "NOT_FOUND");
      EXPECT_EQ(node.Read("expiring").expiry_unix_ms, kMs + 1000);
      node.Reopen();  // what was written reads back from the log
      EXPECT_EQ(test::GetOrStatus(node.engine(), "fresh"), large);
      EXPECT_EQ(test::GetOrStatus(node.engine(), "expiring"), "e");
    }
  }
}

TEST_F(ReplicaTest, RecordEncodingRoundTripsAndRejectsGarbage) {
  VersionedRecord record = Put(std::string("k\0ey", 4), std::string(1000, 'x'), Stamp(kMs, 7));
  record.expiry_unix_ms = 12345;
  absl::StatusOr<VersionedRecord> decoded = DecodeRecord(EncodeRecord(record));
  ASSERT_OK(decoded);
  EXPECT_EQ(decoded->key, record.key);
  EXPECT_EQ(decoded->value, record.value);
  EXPECT_EQ(decoded->timestamp, record.timestamp);
  EXPECT_EQ(decoded->expiry_unix_ms, 12345);
  EXPECT_TRUE(decoded->found);
  EXPECT_FALSE(decoded->tombstone);
  EXPECT_STATUS_CODE(DecodeRecord("not a flatbuffer"), absl::StatusCode::kDataLoss);
  EXPECT_STATUS_CODE(DecodeRecord(""), absl::StatusCode::kDataLoss);
}

TEST_F(ReplicaTest, ParseRejectsMismatchedAnswers) {
  flatbuffers::FlatBufferBuilder b;
  p::BuildStatusResponse(&b, 0, absl::UnavailableError("shutting down"));
  EXPECT_STATUS_CODE(ParseReplicateResult(std::string(p::FrameOf(b)), 1),
                     absl::StatusCode::kUnavailable);
  Node node(dir_.Subdir("a"), &clock_);
  const std::string keys[] = {"a", "b"};
  const std::string records =
      Dispatch(node.engine(), false, ReadRecordsRequestFrame(keys, false));
  const std::string one_key[] = {"a"};
  EXPECT_STATUS_CODE(ParseRecordsResult(records, one_key), absl::StatusCode::kInvalidArgument);
  const std::string other_keys[] = {"a", "c"};
  EXPECT_STATUS_CODE(ParseRecordsResult(records, other_keys), absl::StatusCode::kInvalidArgument);
  ASSERT_OK(ParseRecordsResult(records, keys));
  EXPECT_STATUS_CODE(ParseReplicateResult(records, 2), absl::StatusCode::kInvalidArgument);
}

// The held timestamps: the record's own when applied or already there, the
// newer one a replica holds otherwise; an answer without them (an older
// peer) reads as 0, "not told".
TEST_F(ReplicaTest, ReplicateAnswersTheTimestampEachReplicaHolds) {
  Node node(dir_.Subdir("a"), &clock_);
  ASSERT_EQ(node.Replicate({Put("newer", "n", Stamp(kMs, 9))}), std::vector<bool>{true});
  const std::vector<VersionedRecord> batch = {Put("fresh", "f", Stamp(kMs, 5)),
                                              Put("newer", "old", Stamp(kMs, 3))};
  const std::string answer =
      Dispatch(node.engine(), false, ReplicateRequestFrame(batch, false));
  absl::StatusOr<ReplicateAnswer> parsed = ParseReplicateAnswer(answer, 2);
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->applied, (std::vector<bool>{true, true}));
  EXPECT_EQ(parsed->held_timestamps, (std::vector<uint64_t>{Stamp(kMs, 5), Stamp(kMs, 9)}));

  flatbuffers::FlatBufferBuilder b;
  const std::vector<uint8_t> flags = {1};
  auto result = p::CreateReplicateResult(b, b.CreateVector(flags));
  p::FinishResponse(&b, 7, p::Result::ReplicateResult, result.Union());
  absl::StatusOr<ReplicateAnswer> untold = ParseReplicateAnswer(std::string(p::FrameOf(b)), 1);
  ASSERT_OK(untold);
  EXPECT_EQ(untold->held_timestamps, std::vector<uint64_t>{0});
}

// ---- Cluster timestamps -------------------------------------------------------------------

TEST(ClusterClockTest, MonotonicAndTagged) {
  ManualClock clock(kMs);
  ClusterClock stamps(&clock, 0x2a);
  uint64_t last = 0;
  for (int i = 0; i < 1000; ++i) {  // many within one millisecond: the logical part grows
    const uint64_t now = stamps.Now();
    EXPECT_GT(now, last);
    EXPECT_EQ(now & kNodeTagMask, 0x2au);
    last = now;
  }
  clock.AdvanceMs(5);
  EXPECT_EQ(engine::TimestampUnixMs(stamps.Now()), kMs + 5);
  // A timestamp observed from elsewhere, even far ahead, is passed.
  const uint64_t ahead = Stamp(kMs + 60'000, 0x1234);
  stamps.Observe(ahead);
  const uint64_t next = stamps.Now();
  EXPECT_GT(next, ahead);
  EXPECT_EQ(next & kNodeTagMask, 0x2au);
  // The clock standing still or going back never makes it go back.
  clock.SetUnixMs(kMs - 1000);
  EXPECT_GT(stamps.Now(), next);
}

TEST(ClusterClockTest, TwoCoordinatorsInOneMillisecondNeverCollide) {
  ManualClock clock(kMs);
  const std::vector<std::string> members = {"node-a", "node-b"};
  ClusterClock a(&clock, AssignNodeTag("node-a", members));
  ClusterClock b(&clock, AssignNodeTag("node-b", members));
  ASSERT_NE(a.tag(), b.tag());
  std::set<uint64_t> seen;
  for (int i = 0; i < 2000; ++i) {
    EXPECT_TRUE(seen.insert(a.Now()).second);
    EXPECT_TRUE(seen.insert(b.Now()).second);
  }
}

TEST(ClusterClockTest, TagsAreUniqueAmongMembersEvenWhenHashesCollide) {
  // Find two node ids whose hash tags collide.
  std::map<uint8_t, std::string> by_tag;
  std::vector<std::string> members;
  for (int i = 0; members.size() < 2; ++i) {
    const std::string id = absl::StrCat("n", i);
    auto [it, inserted] = by_tag.emplace(HashNodeTag(id), id);
    if (!inserted) members = {it->second, id};
  }
  ASSERT_EQ(HashNodeTag(members[0]), HashNodeTag(members[1]));
  for (int i = 0; i < 40; ++i) members.push_back(absl::StrCat("other-", i));
  std::set<uint8_t> tags;
  for (const std::string& member : members) tags.insert(AssignNodeTag(member, members));
  EXPECT_EQ(tags.size(), members.size());
  // Without collisions a node's tag is its hash tag, whatever the others.
  EXPECT_EQ(AssignNodeTag("lonely", {"lonely"}), HashNodeTag("lonely"));
  // A node that is not a member takes a tag none of them has.
  for (int i = 0; i < 64; ++i) {
    const std::string outsider = absl::StrCat("gateway-", i);
    const uint8_t tag = AssignNodeTag(outsider, members);
    for (const std::string& member : members) {
      EXPECT_NE(tag, AssignNodeTag(member, members)) << outsider << " and " << member;
    }
  }
}

// ---- Hinted handoff ---------------------------------------------------------------------

class HintedHandoffTest : public ::testing::Test {
 protected:
  HintedHandoffOptions Options() {
    HintedHandoffOptions options;
    options.initial_backoff = absl::Milliseconds(100);
    options.max_backoff = absl::Seconds(10);
    options.send_timeout = absl::Seconds(1);
    return options;
  }

  // A sender that applies requests on target's engine, unless it is down.
  HintedHandoff::SendFunction SendTo(std::map<std::string, Node*> nodes) {
    return [this, nodes](const std::string& target, std::string frame, absl::Duration,
                         std::function<void(absl::StatusOr<std::string>)> done) {
      ++sends_;
      auto it = nodes.find(target);
      if (down_.contains(target) || it == nodes.end()) {
        return done(absl::UnavailableError("connection refused"));
      }
      done(Dispatch(it->second->engine(), false, frame));
    };
  }
  HintedHandoff::StateFunction StateOf() {
    return [this](const std::string& target) {
      if (gone_.contains(target)) return TargetState::kGone;
      if (unreachable_.contains(target)) return TargetState::kUnreachable;
      return TargetState::kAlive;
    };
  }

  ScopedTempDir dir_;
  ManualClock clock_{kMs};
  std::set<std::string> down_, unreachable_, gone_;
  int sends_ = 0;
};

TEST_F(HintedHandoffTest, KeyLayout) {
  const std::string key = HintKey("node/1", 0x0102030405060708ull);
  EXPECT_TRUE(absl::StartsWith(key, kHintPrefix));
  EXPECT_TRUE(IsReservedKey(key));
  std::string target;
  uint64_t sequence = 0;
  ASSERT_TRUE(ParseHintKey(key, &target, &sequence));
  EXPECT_EQ(target, "node/1");
  EXPECT_EQ(sequence, 0x0102030405060708ull);
  EXPECT_FALSE(ParseHintKey("plain", &target, &sequence));
  EXPECT_LT(HintKey("n", 255), HintKey("n", 256));  // big-endian: keys sort by sequence
}

TEST_F(HintedHandoffTest, SurvivesReopenAndIsDeliveredWhenTheTargetIsBack) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  ServerMetrics metrics;
  {
    HintedHandoff handoff(local.engine(), Options(), &metrics);
    ASSERT_OK(handoff.Load());
    ASSERT_OK(handoff.Enqueue("remote", Put("a", "1", Stamp(kMs, 1))));
    ASSERT_OK(handoff.Enqueue("remote", Put("b", "2", Stamp(kMs, 2))));
    ASSERT_OK(handoff.Enqueue("remote", Tombstone("a", Stamp(kMs, 3))));
    ASSERT_OK(handoff.Enqueue("other", Put("c", "3", Stamp(kMs, 4))));
    EXPECT_EQ(handoff.Pending("remote"), 3u);
    EXPECT_EQ(metrics.replication_queue_size()->Value(), 4.0);
  }
  EXPECT_EQ(metrics.replication_queue_size()->Value(), 0.0);  // callback gone with the queue
  local.Reopen();

  HintedHandoff handoff(local.engine(), Options(), &metrics);
  ASSERT_OK(handoff.Load());
  EXPECT_EQ(handoff.Pending("remote"), 3u);
  EXPECT_EQ(handoff.Pending("other"), 1u);
  EXPECT_EQ(handoff.GetFigures().queued, 4u);

  unreachable_ = {"other"};
  EXPECT_EQ(handoff.DeliverOnce(SendTo({{"remote", &remote}}), StateOf()), 3u);
  EXPECT_EQ(handoff.Pending("remote"), 0u);
  EXPECT_EQ(handoff.Pending("other"), 1u);
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "a"), "NOT_FOUND");  // the tombstone won
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "b"), "2");
  EXPECT_EQ(metrics.replica_acks_ok()->Value(), 3u);
  // Delivered hints are gone from the engine too: a reload finds only "other".
  EXPECT_EQ(test::GetOrStatus(local.engine(), HintKey("remote", 1)), "NOT_FOUND");
  local.Reopen();
  HintedHandoff reloaded(local.engine(), Options(), nullptr);
  ASSERT_OK(reloaded.Load());
  EXPECT_EQ(reloaded.Pending("remote"), 0u);
  EXPECT_EQ(reloaded.Pending("other"), 1u);
  // New hints continue the sequence instead of overwriting old ones.
  ASSERT_OK(reloaded.Enqueue("other", Put("d", "4", Stamp(kMs, 5))));
  EXPECT_EQ(reloaded.Pending("other"), 2u);
}

// The backlog per peer, the replication lag docs/operations.md describes:
// one sample per target with hints, gone once they are delivered.
TEST_F(HintedHandoffTest, BacklogPerPeerIsInThePrometheusOutput) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  ServerMetrics metrics;
  {
    HintedHandoff handoff(local.engine(), Options(), &metrics);
    ASSERT_OK(handoff.Load());
    ASSERT_OK(handoff.Enqueue("remote", Put("a", "1", Stamp(kMs, 1))));
    ASSERT_OK(handoff.Enqueue("remote", Put("b", "2", Stamp(kMs, 2))));
    ASSERT_OK(handoff.Enqueue("other", Put("c", "3", Stamp(kMs, 3))));
    const std::vector<HintedHandoff::TargetFigures> targets = handoff.GetTargetFigures();
    ASSERT_EQ(targets.size(), 2u);
    EXPECT_EQ(targets[0].target, "other");
    EXPECT_EQ(targets[0].hints, 1u);
    EXPECT_EQ(targets[1].target, "remote");
    EXPECT_EQ(targets[1].hints, 2u);
    EXPECT_GT(targets[1].bytes, targets[0].bytes);
    EXPECT_GE(targets[1].lag_seconds, 0.0);
    std::string text = metrics.RenderPrometheus();
    EXPECT_TRUE(absl::StrContains(text, "logkv_hinted_handoff_hints{peer=\"remote\"} 2\n")) << text;
    EXPECT_TRUE(absl::StrContains(text, "logkv_hinted_handoff_hints{peer=\"other\"} 1\n")) << text;
    EXPECT_TRUE(absl::StrContains(text, "logkv_hinted_handoff_bytes{peer=\"remote\"} ")) << text;
    EXPECT_TRUE(absl::StrContains(text, "logkv_replication_lag_seconds{peer=\"remote\"} ")) << text;

    unreachable_ = {"other"};
    EXPECT_EQ(handoff.DeliverOnce(SendTo({{"remote", &remote}}), StateOf()), 2u);
    text = metrics.RenderPrometheus();
    EXPECT_FALSE(absl::StrContains(text, "{peer=\"remote\"}")) << text;
    EXPECT_TRUE(absl::StrContains(text, "logkv_hinted_handoff_hints{peer=\"other\"} 1\n")) << text;
  }
  // The collectors went with the queue.
  EXPECT_FALSE(absl::StrContains(metrics.RenderPrometheus(), "{peer=")) << metrics.RenderPrometheus();
}

TEST_F(HintedHandoffTest, BacksOffExponentiallyWhileTheTargetFails) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  HintedHandoff handoff(local.engine(), Options(), nullptr);
  ASSERT_OK(handoff.Load());
  ASSERT_OK(handoff.Enqueue("remote", Put("k", "v", Stamp(kMs, 1))));
  down_ = {"remote"};
  auto send = SendTo({{"remote", &remote}});
  EXPECT_EQ(handoff.DeliverOnce(send, StateOf()), 0u);
  EXPECT_EQ(sends_, 1);
  EXPECT_EQ(handoff.GetFigures().targets_retrying, 1u);
  // Within the backoff nothing is sent.
  EXPECT_EQ(handoff.DeliverOnce(send, StateOf()), 0u);
  EXPECT_EQ(sends_, 1);
  absl::SleepFor(absl::Milliseconds(120));
  EXPECT_EQ(handoff.DeliverOnce(send, StateOf()), 0u);
  EXPECT_EQ(sends_, 2);
  // The second wait is twice the first: 120 ms is not enough.
  absl::SleepFor(absl::Milliseconds(120));
  EXPECT_EQ(handoff.DeliverOnce(send, StateOf()), 0u);
  EXPECT_EQ(sends_, 2);
  down_.clear();
  absl::SleepFor(absl::Milliseconds(120));
  EXPECT_EQ(handoff.DeliverOnce(send, StateOf()), 1u);
  EXPECT_EQ(handoff.GetFigures().targets_retrying, 0u);
  EXPECT_EQ(handoff.GetFigures().queued, 0u);
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k"), "v");
}

TEST_F(HintedHandoffTest, BoundedQueueDropsTheOldest) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  ServerMetrics metrics;
  HintedHandoffOptions options = Options();
  options.max_hints_per_target = 3;
  HintedHandoff handoff(local.engine(), options, &metrics);
  ASSERT_OK(handoff.Load());
  for (uint64_t i = 1; i <= 5; ++i) {
    ASSERT_OK(handoff.Enqueue("remote", Put(absl::StrCat("k", i), "v", Stamp(kMs, i))));
  }
  EXPECT_EQ(handoff.Pending("remote"), 3u);
  EXPECT_EQ(metrics.replica_acks_failed()->Value(), 2u);
  EXPECT_EQ(handoff.DeliverOnce(SendTo({{"remote", &remote}}), StateOf()), 3u);
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k1"), "NOT_FOUND");
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k2"), "NOT_FOUND");
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k5"), "v");
}

// Hints delivered, dropped for the bounds or for a member that left leave
// nothing in the engine's index: no tombstone a hint (which compaction could
// put off for good, one for every hint ever written), and nothing for the
// next start's load to step over; the hints still waiting are all it holds.
TEST_F(HintedHandoffTest, RemovedHintsLeaveNoEntryBehind) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  HintedHandoffOptions options = Options();
  options.max_hints_per_target = 50;
  HintedHandoff handoff(local.engine(), options, nullptr);
  ASSERT_OK(handoff.Load());
  for (uint64_t i = 1; i <= 80; ++i) {  // 30 dropped for the bound
    ASSERT_OK(handoff.Enqueue("remote", Put(absl::StrCat("k", i), "v", Stamp(kMs, i))));
  }
  for (uint64_t i = 1; i <= 10; ++i) {
    ASSERT_OK(handoff.Enqueue("gone", Put(absl::StrCat("g", i), "v", Stamp(kMs, i))));
    ASSERT_OK(handoff.Enqueue("away", Put(absl::StrCat("a", i), "v", Stamp(kMs, i))));
  }
  engine::Stats stats = local.engine()->GetStats();
  EXPECT_EQ(stats.keys, 70u);
  EXPECT_EQ(stats.tombstones, 0u);
  gone_ = {"gone"};
  unreachable_ = {"away"};
  EXPECT_EQ(handoff.DeliverOnce(SendTo({{"remote", &remote}}), StateOf()), 50u);
  EXPECT_EQ(handoff.Pending("away"), 10u);
  stats = local.engine()->GetStats();
  EXPECT_EQ(stats.keys, 10u);
  EXPECT_EQ(stats.tombstones, 0u);
  // And after a restart, only the waiting hints load.
  local.Reopen();
  stats = local.engine()->GetStats();
  EXPECT_EQ(stats.keys, 10u);
  EXPECT_EQ(stats.tombstones, 0u);
  HintedHandoff reloaded(local.engine(), options, nullptr);
  ASSERT_OK(reloaded.Load());
  EXPECT_EQ(reloaded.Pending("away"), 10u);
  EXPECT_EQ(reloaded.GetFigures().queued, 10u);
}

TEST_F(HintedHandoffTest, HintsOfAMemberThatLeftAreDropped) {
  Node local(dir_.Subdir("local"), &clock_);
  HintedHandoff handoff(local.engine(), Options(), nullptr);
  ASSERT_OK(handoff.Load());
  ASSERT_OK(handoff.Enqueue("gone", Put("k", "v", Stamp(kMs, 1))));
  gone_ = {"gone"};
  EXPECT_EQ(handoff.DeliverOnce(SendTo({}), StateOf()), 0u);
  EXPECT_EQ(sends_, 0);
  EXPECT_EQ(handoff.Pending("gone"), 0u);
  EXPECT_EQ(test::GetOrStatus(local.engine(), HintKey("gone", 1)), "NOT_FOUND");
}

TEST_F(HintedHandoffTest, DeliveryThreadDeliversInBatches) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  HintedHandoffOptions options = Options();
  options.batch_records = 7;
  options.poll_interval = absl::Milliseconds(10);
  HintedHandoff handoff(local.engine(), options, nullptr);
  ASSERT_OK(handoff.Load());
  for (uint64_t i = 1; i <= 100; ++i) {
    ASSERT_OK(handoff.Enqueue("remote", Put(absl::StrCat("k", i), "v", Stamp(kMs, i))));
  }
  ASSERT_OK(handoff.Start(SendTo({{"remote", &remote}}), StateOf()));
  for (int i = 0; i < 500 && handoff.Pending("remote") > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  handoff.Stop();
  EXPECT_EQ(handoff.Pending("remote"), 0u);
  EXPECT_EQ(sends_, 15);  // ceil(100 / 7)
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k100"), "v");
}

// With a poll interval of an hour, only Notify can start the passes after
// the first; Start and Stop follow the rules of every background task.
TEST_F(HintedHandoffTest, NotifyWakesTheDeliveryThread) {
  Node local(dir_.Subdir("local"), &clock_);
  Node remote(dir_.Subdir("remote"), &clock_);
  HintedHandoffOptions options = Options();
  options.poll_interval = absl::Hours(1);
  HintedHandoff handoff(local.engine(), options, nullptr);
  ASSERT_OK(handoff.Load());
  ASSERT_OK(handoff.Enqueue("remote", Put("k1", "v", Stamp(kMs, 1))));
  std::atomic<bool> back{false};
  absl::Notification asked;  // the first pass asked after the target
  HintedHandoff::StateFunction state_of = [&](const std::string&) {
    if (!asked.HasBeenNotified()) asked.Notify();
    return back.load() ? TargetState::kAlive : TargetState::kUnreachable;
  };
  auto delivered = [&handoff] {
    for (int i = 0; i < 3000 && handoff.Pending("remote") > 0; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    return handoff.Pending("remote") == 0;
  };
  ASSERT_OK(handoff.Start(SendTo({{"remote", &remote}}), state_of));
  EXPECT_EQ(handoff.Start(SendTo({}), state_of).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(asked.WaitForNotificationWithTimeout(absl::Seconds(30)));
  back = true;
  handoff.Notify();
  EXPECT_TRUE(delivered());
  handoff.Stop();
  handoff.Stop();
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k1"), "v");
  // Restarted, it delivers at once what was queued meanwhile.
  ASSERT_OK(handoff.Enqueue("remote", Put("k2", "v", Stamp(kMs, 2))));
  ASSERT_OK(handoff.Start(SendTo({{"remote", &remote}}), state_of));
  EXPECT_TRUE(delivered());
  handoff.Stop();
  EXPECT_EQ(test::GetOrStatus(remote.engine(), "k2"), "v");
}

// ---- Batching of peer requests -----------------------------------------------------------

// Two replicas behind a fake send function that counts the requests it
// carries; "down" fails every request to it.
class ReplicaBatcherTest : public ::testing::Test {
 protected:
  ReplicaBatcherTest()
      : one_(dir_.Subdir("one"), &clock_), two_(dir_.Subdir("two"), &clock_) {}

  ReplicaBatcher::SendFunction Send() {
    return [this](const std::string& address, std::string frame, absl::Duration timeout,
                  PeerTransport::Callback done) {
      {
        absl::MutexLock lock(&mu_);
        ++requests_[address];
        timeouts_.push_back(timeout);
        frames_[address].push_back(frame);
      }
      if (address == "down") return done(absl::UnavailableError("connection refused"));
      done(Dispatch(address == "one" ? one_.engine() : two_.engine(), false, frame));
    };
  }
  int Requests(const std::string& address) {
    absl::MutexLock lock(&mu_);
    return requests_[address];
  }
  static std::string Key(int i) { return absl::StrCat("key-", i); }

  ScopedTempDir dir_;
  ManualClock clock_{kMs};
  Node one_;
  Node two_;
  absl::Mutex mu_;
  std::map<std::string, int> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> timeouts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<std::string>> frames_ ABSL_GUARDED_BY(mu_);
};

TEST_F(ReplicaBatcherTest, AHoldingThreadSendsOneRequestPerPeerAndKindPerFlush) {
  // Declared before the batcher, which flushes what is held when destroyed.
  std::vector<absl::StatusOr<ReplicaBatcher::Applied>> applied(8, absl::UnknownError("none"));
  std::vector<absl::StatusOr<VersionedRecord>> read(3, absl::UnknownError("none"));
  ReplicaBatcher batcher(Send());
  one_.Replicate({Put("held", "already", Stamp(kMs, 9))});
  batcher.HoldOnThisThread();
  for (int i = 0; i < 5; ++i) {
    batcher.Replicate("one", std::make_shared<VersionedRecord>(Put(Key(i), "v", Stamp(kMs, 1))),
                      absl::Seconds(2), [&applied, i](auto result) { applied[i] = result; });
  }
  // Older than what "one" holds: acknowledged, with the newer timestamp.
  batcher.Replicate("one", std::make_shared<VersionedRecord>(Put("held", "old", Stamp(kMs, 1))),
                    absl::Seconds(1), [&applied](auto result) { applied[5] = result; });
  for (int i = 6; i < 8; ++i) {
    batcher.Replicate("two", std::make_shared<VersionedRecord>(Put(Key(i), "v", Stamp(kMs, 1))),
                      absl::Seconds(2), [&applied, i](auto result) { applied[i] = result; });
  }
  for (int i = 0; i < 2; ++i) {
    batcher.Read("one", i == 0 ? std::string("held") : Key(99), /*meta_only=*/true,
                 absl::Seconds(2), [&read, i](auto result) { read[i] = std::move(result); });
  }
  // A read with its value goes at once, alone (its answer is budgeted by bytes).
  batcher.Read("one", "held", /*meta_only=*/false, absl::Seconds(2),
               [&read](auto result) { read[2] = std::move(result); });
  EXPECT_EQ(Requests("one"), 1);
  EXPECT_EQ(Requests("two"), 0);
  ASSERT_OK(read[2]);
  EXPECT_EQ(read[2]->value, "already");
  EXPECT_STATUS_CODE(applied[0], absl::StatusCode::kUnknown) << "held until the flush";

  batcher.Flush();
  EXPECT_EQ(Requests("one"), 3) << "the value read, one ReadRecords, one Replicate";
  EXPECT_EQ(Requests("two"), 1);
  EXPECT_EQ(batcher.requests_sent(), 4u);
  EXPECT_EQ(batcher.items_sent(), 11u);
  for (int i = 0; i < 8; ++i) {
    ASSERT_OK(applied[i]) << i;
    EXPECT_TRUE(applied[i]->applied) << i;
    EXPECT_EQ(applied[i]->held_timestamp, i == 5 ? Stamp(kMs, 9) : Stamp(kMs, 1)) << i;
  }
  EXPECT_EQ(test::GetOrStatus(one_.engine(), Key(4)), "v");
  EXPECT_EQ(test::GetOrStatus(two_.engine(), Key(7)), "v");
  ASSERT_OK(read[0]);
  EXPECT_EQ(read[0]->timestamp, Stamp(kMs, 9));
  EXPECT_TRUE(read[0]->value.empty()) << "meta-only";
  ASSERT_OK(read[1]);
  EXPECT_FALSE(read[1]->found);
  {
    absl::MutexLock lock(&mu_);
    // A batch's timeout is its shortest item's: only the Replicate to "one"
    // carried the 1 s item.
    ASSERT_EQ(timeouts_.size(), 4u);
    EXPECT_EQ(std::count(timeouts_.begin(), timeouts_.end(), absl::Seconds(1)), 1);
    EXPECT_EQ(std::count(timeouts_.begin(), timeouts_.end(), absl::Seconds(2)), 3);
  }
  batcher.StopHoldingOnThisThread();
  // Not holding: at once.
  absl::StatusOr<ReplicaBatcher::Applied> now = absl::UnknownError("none");
  batcher.Replicate("two", std::make_shared<VersionedRecord>(Put("now", "v", Stamp(kMs, 1))),
                    absl::Seconds(1), [&now](auto result) { now = result; });
  ASSERT_OK(now);
  EXPECT_EQ(Requests("two"), 2);
}

TEST_F(ReplicaBatcherTest, BatchesEndAtTheLimitsAndFailuresReachEveryItem) {
  int ok = 0;
  std::vector<absl::Status> failed;
  ReplicaBatcher::Limits limits;
  limits.max_items = 2;
  limits.max_bytes = 1000;
  ReplicaBatcher batcher(Send(), limits);
  batcher.HoldOnThisThread();
  for (int i = 0; i < 5; ++i) {
    batcher.Replicate("one", std::make_shared<VersionedRecord>(Put(Key(i), "v", Stamp(kMs, 1))),
                      absl::Seconds(1), [&ok](auto result) { ok += result.ok(); });
  }
  // Larger than max_bytes: alone.
  auto big = std::make_shared<VersionedRecord>(Put("big", std::string(5000, 'x'), Stamp(kMs, 1)));
  batcher.Replicate("two", big, absl::Seconds(1), [&ok](auto result) { ok += result.ok(); });
  batcher.Replicate("two", std::make_shared<VersionedRecord>(Put("small", "v", Stamp(kMs, 1))),
                    absl::Seconds(1), [&ok](auto result) { ok += result.ok(); });
  for (int i = 0; i < 3; ++i) {
    batcher.Read("down", Key(i), true, absl::Seconds(1),
                 [&failed](auto result) { failed.push_back(result.status()); });
  }
  batcher.Flush();
  EXPECT_EQ(ok, 7);
  EXPECT_EQ(Requests("one"), 3) << "5 records, 2 per request";
  EXPECT_EQ(Requests("two"), 2) << "the big record alone";
  EXPECT_EQ(Requests("down"), 2);
  ASSERT_EQ(failed.size(), 3u);
  for (const absl::Status& status : failed) {
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  }
  batcher.StopHoldingOnThisThread();
}

// Items placed under different epochs go in different requests, each
// carrying its items' epoch: a replica that holds a newer configuration
// refuses a request placed under an older one, which must not take with it
// an item of the newer one (or of the sender's, kSenderEpoch).
TEST_F(ReplicaBatcherTest, ItemsOfDifferentEpochsGoInDifferentRequests) {
  int ok = 0;
  ReplicaBatcher batcher(Send());
  batcher.HoldOnThisThread();
  const uint64_t epochs[] = {7, kSenderEpoch, 6, 7, kSenderEpoch, 6, 7};
  for (size_t i = 0; i < std::size(epochs); ++i) {
    batcher.Replicate("one", std::make_shared<VersionedRecord>(Put(Key(i), "v", Stamp(kMs, 1))),
                      absl::Seconds(1), [&ok](auto result) { ok += result.ok(); }, epochs[i]);
    batcher.Read("one", Key(i), /*meta_only=*/true, absl::Seconds(1),
                 [&ok](auto result) { ok += result.ok(); }, epochs[i]);
  }
  batcher.Flush();
  EXPECT_EQ(ok, 14);
  absl::MutexLock lock(&mu_);
  ASSERT_EQ(frames_["one"].size(), 6u) << "three epochs, Replicate and ReadRecords";
  std::map<std::pair<p::Operation, uint64_t>, size_t> items;  // by kind and epoch
  for (const std::string& frame : frames_["one"]) {
    const auto* request = flatbuffers::GetSizePrefixedRoot<p::Request>(frame.data());
    const size_t count = request->operation_type() == p::Operation::Replicate
                             ? request->operation_as_Replicate()->records()->size()
                             : request->operation_as_ReadRecords()->keys()->size();
    items[{request->operation_type(), request->epoch()}] += count;
  }
  const std::map<std::pair<p::Operation, uint64_t>, size_t> expected = {
      {{p::Operation::Replicate, 6}, 2},   {{p::Operation::Replicate, 7}, 3},
      {{p::Operation::Replicate, kSenderEpoch}, 2}, {{p::Operation::ReadRecords, 6}, 2},
      {{p::Operation::ReadRecords, 7}, 3}, {{p::Operation::ReadRecords, kSenderEpoch}, 2}};
  EXPECT_EQ(items, expected);
  batcher.StopHoldingOnThisThread();
}

// The owners of a key get the same items from one write: the batcher builds
// their frames once. Each peer still gets every run's frame, whole, and its
// own answers; a peer whose list differs gets frames of its own.
TEST_F(ReplicaBatcherTest, PeersWithTheSameItemsGetTheSameFramesAndTheirOwnAnswers) {
  std::map<std::string, std::vector<absl::Status>> answers;
  ReplicaBatcher::Limits limits;
  limits.max_items = 2;
  ReplicaBatcher batcher(Send(), limits);
  batcher.HoldOnThisThread();
  auto answer_to = [&answers](const std::string& address) {
    return [&answers, address](absl::StatusOr<ReplicaBatcher::Applied> result) {
      answers[address].push_back(
          result.ok() && !result->applied ? absl::InternalError("not applied") : result.status());
    };
  };
  // Three peers with the same five records (three runs each; "down" fails
  // them); then three each to "one" and "two", the last differing, and
  // reads of one key from "one" and "down" (reads go first).
  for (int i = 0; i < 5; ++i) {
    auto record = std::make_shared<VersionedRecord>(Put(Key(i), "v", Stamp(kMs, 1)));
    for (const char* address : {"one", "two", "down"}) {
      batcher.Replicate(address, record, absl::Seconds(2), answer_to(address));
    }
  }
  batcher.Flush();
  EXPECT_EQ(batcher.frames_built(), 3u) << "three runs, each built once for the three peers";
  {
    absl::MutexLock lock(&mu_);
    ASSERT_EQ(frames_["one"].size(), 3u);
    EXPECT_EQ(frames_["two"], frames_["one"]);
    EXPECT_EQ(frames_["down"], frames_["one"]);
    frames_.clear();
  }
  for (const char* address : {"one", "two", "down"}) {
    ASSERT_EQ(answers[address].size(), 5u) << address;
    for (const absl::Status& status : answers[address]) {
      EXPECT_EQ(status.code(), std::string(address) == "down" ? absl::StatusCode::kUnavailable
                                                              : absl::StatusCode::kOk)
          << address << ": " << status;
    }
  }
  answers.clear();
  // As many records to "one" and "two", the last one differing.
  for (int i = 5; i < 7; ++i) {
    auto record = std::make_shared<VersionedRecord>(Put(Key(i), "w", Stamp(kMs, 2)));
    batcher.Replicate("one", record, absl::Seconds(2), answer_to("one"));
    batcher.Replicate("two", record, absl::Seconds(2), answer_to("two"));
  }
  batcher.Replicate("one", std::make_shared<VersionedRecord>(Put("only-one", "v", Stamp(kMs, 2))),
                    absl::Seconds(2), answer_to("one"));
  batcher.Replicate("two", std::make_shared<VersionedRecord>(Put("only-two", "v", Stamp(kMs, 2))),
                    absl::Seconds(2), answer_to("two"));
  std::vector<absl::StatusOr<VersionedRecord>> read;
  for (const char* address : {"one", "down"}) {
    batcher.Read(address, Key(0), /*meta_only=*/true, absl::Seconds(2),
                 [&read](auto result) { read.push_back(std::move(result)); });
  }
  batcher.Flush();
  EXPECT_EQ(batcher.frames_built(), 3u + 5u) << "each peer's own: the lists differ";
  {
    absl::MutexLock lock(&mu_);
    ASSERT_EQ(frames_["one"].size(), 3u) << "two Replicates and a ReadRecords";
    ASSERT_EQ(frames_["two"].size(), 2u);
    EXPECT_EQ(frames_["two"][0], frames_["one"][1]) << "the first run: the same two records";
    EXPECT_NE(frames_["two"][1], frames_["one"][2]);
  }
  for (const char* address : {"one", "two"}) {
    ASSERT_EQ(answers[address].size(), 3u) << address;
    for (const absl::Status& status : answers[address]) EXPECT_OK(status) << address;
  }
  EXPECT_EQ(test::GetOrStatus(one_.engine(), "only-one"), "v");
  EXPECT_EQ(test::GetOrStatus(one_.engine(), "only-two"), "NOT_FOUND");
  EXPECT_EQ(test::GetOrStatus(two_.engine(), "only-two"), "v");
  EXPECT_EQ(test::GetOrStatus(two_.engine(), "only-one"), "NOT_FOUND");
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(test::GetOrStatus(one_.engine(), Key(i)), i < 5 ? "v" : "w") << i;
    EXPECT_EQ(test::GetOrStatus(two_.engine(), Key(i)), i < 5 ? "v" : "w") << i;
  }
  ASSERT_EQ(read.size(), 2u);
  int found = 0;
  for (const auto& result : read) found += result.ok() && result->found;
  EXPECT_EQ(found, 1) << "\"one\" has the key; \"down\" fails";
  batcher.StopHoldingOnThisThread();
}

// An item close to its deadline does not share a request with items that
// have far longer: its short timeout would fail them all.
TEST_F(ReplicaBatcherTest, ItemsWithFarShorterTimeoutsGoInABatchOfTheirOwn) {
  int ok = 0;
  ReplicaBatcher batcher(Send());
  batcher.HoldOnThisThread();
  const absl::Duration timeouts[] = {absl::Seconds(3), absl::Milliseconds(5), absl::Seconds(2),
                                     absl::Milliseconds(4)};
  for (int i = 0; i < 4; ++i) {
    batcher.Replicate("one", std::make_shared<VersionedRecord>(Put(Key(i), "v", Stamp(kMs, 1))),
                      timeouts[i], [&ok](auto result) { ok += result.ok(); });
  }
  batcher.Flush();
  EXPECT_EQ(ok, 4);
  EXPECT_EQ(Requests("one"), 2);
  absl::MutexLock lock(&mu_);
  ASSERT_EQ(timeouts_.size(), 2u);
  EXPECT_EQ(timeouts_[0], absl::Seconds(2)) << "the 3 s and 2 s items together";
  EXPECT_EQ(timeouts_[1], absl::Milliseconds(4));
}

// A callback run during a flush (a failure answered at once) that sends
// again is sent by the same flush: nothing waits while the loop blocks.
TEST_F(ReplicaBatcherTest, WhatCallbacksSendDuringAFlushGoesInTheSameFlush) {
  absl::StatusOr<VersionedRecord> second = absl::UnknownError("none");
  ReplicaBatcher batcher(Send());
  batcher.HoldOnThisThread();
  one_.Replicate({Put("k", "v", Stamp(kMs, 3))});
  batcher.Read("down", "k", true, absl::Seconds(1), [&](absl::StatusOr<VersionedRecord> first) {
    EXPECT_FALSE(first.ok());
    batcher.Read("one", "k", true, absl::Seconds(1),
                 [&second](auto result) { second = std::move(result); });
  });
  batcher.Flush();
  ASSERT_OK(second);
  EXPECT_EQ(second->timestamp, Stamp(kMs, 3));
  batcher.StopHoldingOnThisThread();
}

// ---- The coordinator over an in-process transport ---------------------------------------

// Three (or more) nodes, each an engine with a coordinator; the transport
// hands a request to the target's replica handlers on the calling thread,
// or fails it when the target is down (as the PeerTransport would).
class CoordinatorTest : public ::testing::Test {
 protected:
  struct Member {
    std::string id;
    std::unique_ptr<Node> node;
    std::unique_ptr<HintedHandoff> handoff;
    std::unique_ptr<ReplicaCoordinator> coordinator;
  };

  void Start(int count, size_t replicas = 3) {
    std::vector<std::string> ids;
    for (int i = 0; i < count; ++i) ids.push_back(absl::StrCat("node-", i));
    ring_ = std::make_shared<const Ring>(ids);
    for (const std::string& id : ids) {
      Member& member = members_[id];
      member.id = id;
      member.node = std::make_unique<Node>(dir_.Subdir(id), &clock_);
      member.handoff = std::make_unique<HintedHandoff>(member.node->engine(),
                                                       HintedHandoffOptions(), nullptr);
      ASSERT_OK(member.handoff->Load());
      ReplicaCoordinatorOptions options;
      options.replicas = replicas;
      options.write_wait = absl::Milliseconds(500);
      options.clock = &clock_;
      options.run_after = run_after_;
      member.coordinator = std::make_unique<ReplicaCoordinator>(
          member.node->engine(), Send(), [this] { return ring_; }, Lookup(), id, &metrics_,
          member.handoff.get(), options);
    }
  }

  ~CoordinatorTest() override {
    for (std::thread& thread : hung_threads_) thread.join();
  }

  ReplicaCoordinator::SendFunction Send() {
    return [this](const std::string& address, std::string frame, absl::Duration timeout,
                  PeerTransport::Callback done) {
      bool down;
      bool hung;
      std::string id;  // of the member at address ("" none)
      std::function<void(const std::string&)> on_send;
      {
        absl::MutexLock lock(&mu_);
        ++sends_;
        sent_to_.push_back(address);
        for (const auto& [member, moved_to] : moved_) {
          if (moved_to == address) id = member;
        }
        if (id.empty() && members_.contains(address) && !moved_.contains(address)) id = address;
        down = id.empty() || down_.contains(id);
        hung = hung_.contains(id);
        if (hung) hung_timeouts_.push_back(timeout);
        on_send = on_send_;
      }
      if (on_send) on_send(id);
      if (down) return done(absl::UnavailableError("connection refused"));
      if (std::optional<std::string> refusal = Fence(id, frame); refusal.has_value()) {
        return done(*std::move(refusal));
      }
      if (hung) {
        // Alive, but no answer: the request times out, as the transport's would.
        absl::MutexLock lock(&mu_);
        hung_threads_.emplace_back([timeout, done = std::move(done)] {
          absl::SleepFor(timeout);
          done(absl::DeadlineExceededError("no answer"));
        });
        return;
      }
      done(Dispatch(members_.at(id).node->engine(), false, frame));
    };
  }
  // The answer of a member that holds a newer configuration than the
  // request's epoch, as ClusterNode's fencing answers (kSenderEpoch: the
  // sender's, sender_epoch_); nothing when it serves the request. Notes
  // each record replicated.
  std::optional<std::string> Fence(const std::string& id, const std::string& frame) {
    const auto* request = flatbuffers::GetSizePrefixedRoot<p::Request>(frame.data());
    absl::MutexLock lock(&mu_);
    if (const p::Replicate* replicate = request->operation_as_Replicate();
        replicate != nullptr && replicate->records() != nullptr) {
      for (const p::ReplicaRecord* record : *replicate->records()) {
        replicated_.emplace_back(std::string(p::View(record->key())), record->timestamp());
      }
    }
    const uint64_t epoch = request->epoch() == kSenderEpoch ? sender_epoch_ : request->epoch();
    auto fence = fence_.find(id);
    if (fence == fence_.end() || epoch >= fence->second ||
        (fenced_only_.has_value() && request->operation_type() != *fenced_only_)) {
      return std::nullopt;
    }
    ++fenced_;
    flatbuffers::FlatBufferBuilder builder(256);
    p::BuildStatusResponse(
        &builder, request->request_id(),
        absl::AbortedError(absl::StrCat("stale configuration: the request is for epoch ", epoch,
                                        ", this node holds epoch ", fence->second)));
    return std::string(p::FrameOf(builder));
  }
  ReplicaCoordinator::PeerLookup Lookup() {
    return [this](const std::string& id, PeerInfo* info) {
      if (!members_.contains(id)) return false;
      absl::MutexLock lock(&mu_);
      ++lookups_;
      // The fake transport addresses nodes by id, unless one moved.
      auto moved = moved_.find(id);
      info->address = moved != moved_.end() ? moved->second : id;
      info->http_address = absl::StrCat(id, ":8080");
      info->alive = !dead_.contains(id);
      return true;
    };
  }

  absl::StatusOr<Coordinator::WriteOutcome> Write(const std::string& via, const std::string& key,
                                                  std::optional<std::string> value,
                                                  p::Consistency consistency) {
    absl::Notification done;
    absl::StatusOr<Coordinator::WriteOutcome> out = absl::UnknownError("no answer");
    members_.at(via).coordinator->Write(key, std::move(value), 0, consistency,
                                        [&](absl::StatusOr<Coordinator::WriteOutcome> result) {
                                          out = std::move(result);
                                          done.Notify();
                                        });
    done.WaitForNotification();
    return out;
  }
  absl::StatusOr<Coordinator::ReadResult> Read(const std::string& via, const std::string& key,
                                               p::Consistency consistency) {
    absl::Notification done;
    absl::StatusOr<Coordinator::ReadResult> out = absl::UnknownError("no answer");
    members_.at(via).coordinator->Get(key, consistency,
                                      [&](absl::StatusOr<Coordinator::ReadResult> result) {
                                        out = std::move(result);
                                        done.Notify();
                                      });
    done.WaitForNotification();
    return out;
  }
  std::string Local(const std::string& id, const std::string& key) {
    return test::GetOrStatus(members_.at(id).node->engine(), key);
  }
  // Marks a node down (requests to it fail) and, if dead, known dead to all.
  void Kill(const std::string& id, bool known_dead) {
    absl::MutexLock lock(&mu_);
    down_.insert(id);
    if (known_dead) dead_.insert(id);
  }
  void Revive(const std::string& id) {
    absl::MutexLock lock(&mu_);
    down_.erase(id);
    dead_.erase(id);
  }

  ScopedTempDir dir_;
  ManualClock clock_{kMs};
  ServerMetrics metrics_;
  std::shared_ptr<const Ring> ring_;
  std::map<std::string, Member> members_;
  absl::Mutex mu_;
  std::set<std::string> down_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dead_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> hung_ ABSL_GUARDED_BY(mu_);  // alive, never answering
  std::vector<absl::Duration> hung_timeouts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> hung_threads_ ABSL_GUARDED_BY(mu_);
  int sends_ ABSL_GUARDED_BY(mu_) = 0;
  int lookups_ ABSL_GUARDED_BY(mu_) = 0;  // of members that exist
  std::vector<std::string> sent_to_ ABSL_GUARDED_BY(mu_);  // the address of each send
  // Members now at another address (a restart on another port), by id.
  std::map<std::string, std::string> moved_ ABSL_GUARDED_BY(mu_);
  // Called with the target's id ("" none) as each request is sent.
  std::function<void(const std::string&)> on_send_ ABSL_GUARDED_BY(mu_);
  // The coordinators' run_after (ReplicaCoordinatorOptions), if set before Start.
  std::function<bool(absl::Duration, std::function<void()>)> run_after_;
  // Members that hold a configuration of this epoch (by id): they refuse
  // requests placed under an older one (Fence); only those of one operation
  // when fenced_only_ says so.
  std::map<std::string, uint64_t> fence_ ABSL_GUARDED_BY(mu_);
  std::optional<p::Operation> fenced_only_ ABSL_GUARDED_BY(mu_);
  uint64_t sender_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  int fenced_ ABSL_GUARDED_BY(mu_) = 0;  // requests refused so
  // Each replicated record's key and timestamp, as sent to a peer.
  std::vector<std::pair<std::string, uint64_t>> replicated_ ABSL_GUARDED_BY(mu_);
};

TEST_F(CoordinatorTest, EventualWriteReachesEveryOwner) {
  Start(3);
  auto written = Write("node-0", "k", "v", p::Consistency::Eventual);
  ASSERT_OK(written);
  EXPECT_EQ(written->owners->size(), 3u);
  EXPECT_GE(written->acknowledged, 1u);
  EXPECT_EQ(written->result.timestamp & kNodeTagMask,
            members_.at("node-0").coordinator->clock()->tag());
  for (const auto& [id, member] : members_) EXPECT_EQ(Local(id, "k"), "v") << id;
  EXPECT_TRUE(members_.at("node-1").coordinator->Active());
  EXPECT_EQ(members_.at("node-1").coordinator->Owners("k"), *written->owners);
  EXPECT_EQ(members_.at("node-1").coordinator->HttpAddressOf(written->owners->at(0)),
            absl::StrCat(written->owners->at(0), ":8080"));
  EXPECT_GE(metrics_.replica_acks_ok()->Value(), 2u);
  EXPECT_EQ(metrics_.replications()->Value(), 1u);
  for (const auto& [id, member] : members_) {
    auto read = Read(id, "k", p::Consistency::Eventual);
    ASSERT_OK(read);
    EXPECT_TRUE(read->found);
    EXPECT_EQ(read->value, "v");
  }
  ASSERT_OK(Write("node-2", "k", std::nullopt, p::Consistency::Eventual));
  auto read = Read("node-1", "k", p::Consistency::Strong);
  ASSERT_OK(read);
  EXPECT_FALSE(read->found);
}

TEST_F(CoordinatorTest, StrongWriteSucceedsWithAMajorityAndHintsTheRest) {
  Start(3);
  Kill("node-2", /*known_dead=*/false);  // fails when tried
  auto written = Write("node-0", "k", "v", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_EQ(written->acknowledged, 2u);
  EXPECT_EQ(Local("node-2", "k"), "NOT_FOUND");
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-2"), 1u);
  // The node comes back; its hint is delivered.
  Revive("node-2");
  auto send = [this](const std::string& target, std::string frame, absl::Duration timeout,
                     std::function<void(absl::StatusOr<std::string>)> done) {
    Send()(target, std::move(frame), timeout, std::move(done));
  };
  EXPECT_EQ(members_.at("node-0").handoff->DeliverOnce(
                send, [](const std::string&) { return TargetState::kAlive; }),
            1u);
  EXPECT_EQ(Local("node-2", "k"), "v");
}

// A write writes on this node first: when that alone meets W, an owner
// known to be down is hinted at once, whatever its place among the key's
// owners, not sent again after a delay.
TEST_F(CoordinatorTest, AnOwnerKnownDeadIsHintedAtOnceWhenThisNodesWriteMeetsW) {
  std::vector<std::function<void()>> retries;  // held, never run
  run_after_ = [&retries](absl::Duration, std::function<void()> task) {
    retries.push_back(std::move(task));
    return true;
  };
  Start(3);
  Kill("node-2", /*known_dead=*/true);
  constexpr int kKeys = 30;  // their owners come in several orders (the ring is fixed)
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_OK(Write("node-0", absl::StrCat("k", i), "v", p::Consistency::Eventual));
  }
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-2"), static_cast<size_t>(kKeys));
  EXPECT_TRUE(retries.empty()) << retries.size() << " sends to node-2 put off";
  EXPECT_EQ(Local("node-1", "k7"), "v");
}

TEST_F(CoordinatorTest, WithTwoOfThreeDownStrongFailsAndEventualSucceeds) {
  Start(3);
  Kill("node-1", /*known_dead=*/true);  // not even tried
  Kill("node-2", /*known_dead=*/false);
  auto strong = Write("node-0", "k", "strong", p::Consistency::Strong);
  EXPECT_STATUS_CODE(strong, absl::StatusCode::kUnavailable);
  auto eventual = Write("node-0", "k", "eventual", p::Consistency::Eventual);
  ASSERT_OK(eventual);
  EXPECT_EQ(Local("node-0", "k"), "eventual");
  // The strong write could not read a majority, so it wrote nothing; the
  // eventual one waits in hinted handoff for the others.
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-1"), 1u);
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-2"), 1u);
  EXPECT_STATUS_CODE(Read("node-0", "k", p::Consistency::Strong), absl::StatusCode::kUnavailable);
  auto read = Read("node-0", "k", p::Consistency::Eventual);
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "eventual");
}

TEST_F(CoordinatorTest, WriteThatMissesItsQuorumNamesWhoApplied) {
  Start(3);
  Kill("node-1", true);
  Kill("node-2", true);
  absl::StatusOr<Coordinator::WriteOutcome> written =
      Write("node-0", "k", "v", p::Consistency::Strong);
  // A strong write's first phase cannot read a majority: nothing is
  // written at all, and the answer says so.
  EXPECT_STATUS_CODE(written, absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(written.status().message(), "not attempted"))
      << written.status();
  EXPECT_EQ(Local("node-0", "k"), "NOT_FOUND");
  // Two of three acknowledgements asked for by default (--w=2): the local
  // apply is kept and reported.
  ReplicaCoordinatorOptions options;
  options.write_acks = 2;
  options.clock = &clock_;
  ReplicaCoordinator coordinator(members_.at("node-0").node->engine(), Send(),
                                 [this] { return ring_; }, Lookup(), "node-0", nullptr, nullptr,
                                 options);
  absl::Notification done;
  coordinator.Write("k", "v", 0, p::Consistency::Default,
                    [&](absl::StatusOr<Coordinator::WriteOutcome> result) {
                      written = std::move(result);
                      done.Notify();
                    });
  done.WaitForNotification();
  EXPECT_STATUS_CODE(written, absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(written.status().message(), "applied on [node-0]"))
      << written.status();
  EXPECT_EQ(Local("node-0", "k"), "v");
}

TEST_F(CoordinatorTest, ReadsAnswerTheNewestAndRepairStaleOwners) {
  Start(3);
  // Plant an old version on two owners and a newer one on a third, as if
  // writes had been missed.
  const std::vector<std::string> owners = members_.at("node-0").coordinator->Owners("k");
  members_.at(owners[0]).node->Replicate({Put("k", "old", Stamp(kMs, 1))});
  members_.at(owners[1]).node->Replicate({Put("k", "old", Stamp(kMs, 1))});
  members_.at(owners[2]).node->Replicate({Put("k", "new", Stamp(kMs, 2))});
  // A strong read asks a majority; it may not see the newest if that one is
  // not among them, but what it answers is then on a majority.
  auto strong = Read(owners[2], "k", p::Consistency::Strong);
  ASSERT_OK(strong);
  EXPECT_EQ(strong->value, "new");  // the local engine is asked first
  int holders = 0;
  for (const std::string& owner : owners) holders += Local(owner, "k") == "new";
  EXPECT_GE(holders, 2);  // written back to a majority before answering
  // A read with every owner (R=3) repairs the rest in the background.
  ReplicaCoordinatorOptions options;
  options.read_acks = 3;
  options.clock = &clock_;
  ReplicaCoordinator all(members_.at(owners[0]).node->engine(), Send(), [this] { return ring_; },
                         Lookup(), owners[0], nullptr, nullptr, options);
  absl::Notification done;
  all.Get("k", p::Consistency::Default, [&](absl::StatusOr<Coordinator::ReadResult> result) {
    ASSERT_OK(result);
    EXPECT_EQ(result->value, "new");
    done.Notify();
  });
  done.WaitForNotification();
  for (const std::string& owner : owners) EXPECT_EQ(Local(owner, "k"), "new") << owner;
}

TEST_F(CoordinatorTest, StrongWriteStampsAboveAFastClock) {
  Start(3);
  // A write stamped far in the future by some coordinator with a fast clock.
  const uint64_t future = Stamp(kMs + 3'600'000, 0x100);
  for (const auto& [id, member] : members_) member.node->Replicate({Put("k", "future", future)});
  // An eventual write coordinated by an owner stamps above what that owner
  // holds (the engine's rule on a single node too), so it wins...
  ASSERT_OK(Write("node-1", "k", "eventual", p::Consistency::Eventual));
  EXPECT_EQ(Local("node-1", "k"), "eventual");
  // ...and a strong one reads the highest timestamp from a majority first.
  for (const auto& [id, member] : members_) {
    member.node->Replicate({Put("k", "future", Stamp(kMs + 7'200'000, 0x100))});
  }
  auto written = Write("node-1", "k", "strong", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_GT(written->result.timestamp, Stamp(kMs + 7'200'000, 0x100));
  auto read = Read("node-2", "k", p::Consistency::Strong);
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "strong");
}

// A completed write the coordinator has not seen sits on the two other
// owners, stamped ahead of its clock: the strong write's first phase reads
// it from a majority and stamps above it, so the later write wins.
TEST_F(CoordinatorTest, AStrongWriteIsStampedAboveACompletedWriteItHadNotSeen) {
  Start(3);
  const uint64_t ahead = Stamp(kMs + 60'000, 0x100);
  for (const char* id : {"node-1", "node-2"}) {
    members_.at(id).node->Replicate({Put("k", "completed elsewhere", ahead)});
  }
  auto written = Write("node-0", "k", "later", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_GT(written->result.timestamp, ahead);
  EXPECT_GE(written->acknowledged, 2u);
  auto read = Read("node-2", "k", p::Consistency::Strong);
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "later");
  // An eventual write has no first phase: it is acknowledged, and loses to
  // the newer write where that is held. The owners' answers carry what they
  // hold, which moves the coordinator's clock above it, so its next write
  // wins.
  const uint64_t further = Stamp(kMs + 120'000, 0x100);
  for (const char* id : {"node-1", "node-2"}) {
    members_.at(id).node->Replicate({Put("k2", "newer", further)});
  }
  ASSERT_OK(Write("node-0", "k2", "eventual", p::Consistency::Eventual));
  EXPECT_EQ(Local("node-1", "k2"), "newer");
  // The two peers' answers may come after the write's (W = 1): bounded wait.
  ReplicaCoordinator* coordinator = members_.at("node-0").coordinator.get();
  for (int i = 0; i < 500 && coordinator->clock()->Now() <= further; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(coordinator->clock()->Now(), further);
}

// An owner that is alive but never answers gets half of the wait in a
// strong write's first phase, so the other owner is still asked in time and
// the write reaches its majority.
TEST_F(CoordinatorTest, AnOwnerThatHangsDoesNotUseUpAStrongWritesWait) {
  Start(3);
  const std::vector<std::string> owners = members_.at("node-0").coordinator->Owners("k");
  // The first peer node-0 asks in the first phase (owners in preference order).
  std::string first_peer;
  for (const std::string& owner : owners) {
    if (owner != "node-0") {
      first_peer = owner;
      break;
    }
  }
  {
    absl::MutexLock lock(&mu_);
    hung_.insert(first_peer);
  }
  auto written = Write("node-0", "k", "v", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_EQ(written->acknowledged, 2u);
  absl::MutexLock lock(&mu_);
  ASSERT_FALSE(hung_timeouts_.empty());
  // write_wait is 500 ms: the first-phase request had at most half.
  EXPECT_LE(hung_timeouts_.front(), absl::Milliseconds(250));
}

// A strong write counts as in flight under its epoch (what an epoch barrier
// waits for) from the start until it answers, whether it succeeds or fails,
// and a strong read likewise.
TEST_F(CoordinatorTest, AQuorumOperationCountsAsInFlightUntilItAnswers) {
  Start(3);
  ReplicaCoordinator* coordinator = members_.at("node-0").coordinator.get();
  // InFlightBefore(1) at each send to a peer, and whether the write had
  // answered then (this fake transport answers as it sends, on this thread:
  // a send after the majority answered finds the write over).
  std::vector<std::pair<size_t, bool>> counted;
  bool answered = false;
  {
    absl::MutexLock lock(&mu_);
    on_send_ = [&counted, &answered, coordinator](const std::string&) {
      counted.emplace_back(coordinator->InFlightBefore(1), answered);
    };
  }
  coordinator->Write("k", "v", 0, p::Consistency::Strong,
                     [&answered](absl::StatusOr<Coordinator::WriteOutcome> written) {
                       EXPECT_OK(written);
                       answered = true;
                     });
  ASSERT_TRUE(answered);
  {
    absl::MutexLock lock(&mu_);
    on_send_ = nullptr;
  }
  // Both phases sent to a peer before the answer: the first phase's read
  // and the second phase's write to the peer that made the majority.
  size_t before_answer = 0;
  for (const auto& [in_flight, after_answer] : counted) {
    if (!after_answer) {
      EXPECT_EQ(in_flight, 1u) << "the write, counted through both phases";
      ++before_answer;
    }
  }
  EXPECT_EQ(before_answer, 2u);
  EXPECT_EQ(coordinator->InFlightBefore(1), 0u) << "released once answered";
  ASSERT_OK(Read("node-0", "k", p::Consistency::Strong));
  EXPECT_EQ(coordinator->InFlightBefore(1), 0u);
  // Both peers down: the write fails, and is no longer counted either.
  Kill("node-1", /*known_dead=*/false);
  Kill("node-2", /*known_dead=*/false);
  EXPECT_STATUS_CODE(Write("node-0", "k", "w", p::Consistency::Strong),
                     absl::StatusCode::kUnavailable);
  EXPECT_EQ(coordinator->InFlightBefore(1), 0u);
}

// An owner that holds a newer configuration than the coordinator refuses
// what the coordinator placed under its own as stale; the coordinator
// waits, within the write wait, until it holds a newer configuration too
// and runs the operation again under it: a strong write refused in its
// first phase (stamped then) or in its second (sent with the timestamp it
// had: stamped again, a write applied on some owners could be read, lose to
// a newer write, and be read again), and a strong read. It is not counted
// as in flight while it waits (an epoch barrier on this node would wait
// for it), and with no newer configuration within the wait it is answered
// Unavailable, naming the refusal.
TEST_F(CoordinatorTest, AnOperationRefusedAsStaleRunsAgainUnderTheNewerConfiguration) {
  absl::Mutex placement_mu;
  Placement placement;
  // The coordinator's delayed tasks run on threads of their own; the newer
  // configuration arrives at the third look.
  int looks = 0;
  std::vector<size_t> in_flight_while_waiting;
  ReplicaCoordinator* coordinator = nullptr;
  uint64_t next_epoch = 0;  // what the third look brings (0: nothing)
  run_after_ = [&](absl::Duration delay, std::function<void()> task) {
    in_flight_while_waiting.push_back(coordinator->InFlightBefore(kSenderEpoch));
    if (++looks == 3 && next_epoch != 0) {
      absl::MutexLock lock(&placement_mu);
      placement.epoch = next_epoch;
      absl::MutexLock fence_lock(&mu_);
      sender_epoch_ = next_epoch;
    }
    absl::MutexLock lock(&mu_);
    hung_threads_.emplace_back([delay, task = std::move(task)] {
      absl::SleepFor(delay);
      task();
    });
    return true;
  };
  Start(3);
  coordinator = members_.at("node-0").coordinator.get();
  placement = Placement{.epoch = 1, .ring = ring_, .next = nullptr};
  coordinator->set_placement([&] {
    absl::MutexLock lock(&placement_mu);
    return placement;
  });
  // Node-1 and node-2 hold epoch `epoch`; node-0 gets it at its third look
  // (or never, with arrives false).
  auto fence = [&](uint64_t epoch, std::optional<p::Operation> only, bool arrives) {
    looks = 0;
    next_epoch = arrives ? epoch : 0;
    in_flight_while_waiting.clear();
    absl::MutexLock lock(&mu_);
    fence_ = {{"node-1", epoch}, {"node-2", epoch}};
    fenced_only_ = only;
    fenced_ = 0;
    replicated_.clear();
  };
  auto fenced = [&] {
    absl::MutexLock lock(&mu_);
    return fenced_;
  };
  const double retried_before = metrics_.stale_retries()->Value();
  // A write answers once a majority applied it: the send to the last owner
  // may still be under way on the delayed task's thread. Waits (bounded)
  // until both peers hold key's value, so that no send of one case meets
  // the next case's fence, and returns what each holds.
  auto settled = [&](const std::string& key, const std::string& value) {
    for (int i = 0; i < 1000; ++i) {
      if (Local("node-1", key) == value && Local("node-2", key) == value) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return std::make_pair(Local("node-1", key), Local("node-2", key));
  };
  const auto both = [](const std::string& value) { return std::make_pair(value, value); };

  // Refused in the first phase.
  fence(2, std::nullopt, /*arrives=*/true);
  auto written = Write("node-0", "k", "v1", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_EQ(fenced(), 2) << "both peers refused the first phase's reads";
  EXPECT_EQ(looks, 3);
  EXPECT_EQ(settled("k", "v1"), both("v1"));
  EXPECT_EQ(in_flight_while_waiting, std::vector<size_t>(3, 0u));
  EXPECT_EQ(metrics_.stale_retries()->Value(), retried_before + 1);

  // Refused in the second phase only: sent again with its timestamp.
  fence(3, p::Operation::Replicate, /*arrives=*/true);
  written = Write("node-0", "k", "v2", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_EQ(fenced(), 2);
  EXPECT_EQ(settled("k", "v2"), both("v2"));
  {
    absl::MutexLock lock(&mu_);
    ASSERT_EQ(replicated_.size(), 4u) << "sent to both peers, refused, then again";
    for (const auto& [key, timestamp] : replicated_) {
      EXPECT_EQ(key, "k");
      EXPECT_EQ(timestamp, written->result.timestamp) << "stamped once";
    }
  }
  EXPECT_EQ(members_.at("node-0").node->engine()->GetRecord("k", false)->timestamp,
            written->result.timestamp);
  EXPECT_NE(written->result.sequence, 0u) << "this node's write, from the first send";
  EXPECT_EQ(in_flight_while_waiting, std::vector<size_t>(3, 0u));
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-1"), 0u) << "placed again, not hinted";
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-2"), 0u);

  // A strong read: asked again from the start.
  fence(4, p::Operation::ReadRecords, /*arrives=*/true);
  auto read = Read("node-0", "k", p::Consistency::Strong);
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "v2");
  EXPECT_EQ(fenced(), 2);
  EXPECT_EQ(metrics_.stale_retries()->Value(), retried_before + 3);

  // No newer configuration here within the wait: the refusal is the answer.
  fence(5, std::nullopt, /*arrives=*/false);
  written = Write("node-0", "k", "v3", p::Consistency::Strong);
  EXPECT_STATUS_CODE(written, absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(written.status().message(), "stale configuration"))
      << written.status();
  read = Read("node-0", "k", p::Consistency::Strong);
  EXPECT_STATUS_CODE(read, absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(read.status().message(), "stale configuration")) << read.status();
  EXPECT_GT(looks, 3) << "looked again until the wait ended";
  EXPECT_EQ(coordinator->InFlightBefore(kSenderEpoch), 0u);
  EXPECT_EQ(metrics_.stale_retries()->Value(), retried_before + 3);
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-1"), 0u) << "nothing was sent";
  // Refused in its second phase, and given up: the owners that refused it get hints.
  fence(5, p::Operation::Replicate, /*arrives=*/false);
  written = Write("node-0", "k", "v4", p::Consistency::Strong);
  EXPECT_STATUS_CODE(written, absl::StatusCode::kUnavailable);
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-1"), 1u);
  EXPECT_EQ(members_.at("node-0").handoff->Pending("node-2"), 1u);

  // A node named by the ring after the change only (joining) waits as the others do.
  {
    absl::MutexLock lock(&placement_mu);
    placement = Placement{
        .epoch = 5,
        .ring = std::make_shared<const Ring>(std::vector<std::string>{"node-1", "node-2"}),
        .next = ring_};
  }
  fence(6, std::nullopt, /*arrives=*/true);
  ASSERT_OK(Write("node-0", "joining", "v", p::Consistency::Strong));
  EXPECT_EQ(settled("joining", "v"), both("v"));
  EXPECT_EQ(looks, 3);
  // A node the configuration no longer names (it left) is sent no newer
  // one: refused as stale, it answers at once.
  {
    absl::MutexLock lock(&placement_mu);
    placement = Placement{
        .epoch = 6,
        .ring = std::make_shared<const Ring>(std::vector<std::string>{"node-1", "node-2"}),
        .next = nullptr};
  }
  fence(7, std::nullopt, /*arrives=*/true);
  written = Write("node-0", "gone", "v", p::Consistency::Strong);
  EXPECT_STATUS_CODE(written, absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(written.status().message(), "stale configuration"))
      << written.status();
  EXPECT_EQ(looks, 0) << "did not wait";
}

// A read asks an owner at the address the membership gave moments before;
// the owner it asks after one failed is looked up again, so a member that
// came back on another address is asked there.
TEST_F(CoordinatorTest, AReadAsksAgainAtTheAddressAMemberMovedTo) {
  Start(3);
  ASSERT_OK(Write("node-0", "k", "v", p::Consistency::Strong));
  const std::vector<std::string> owners = members_.at("node-0").coordinator->Owners("k");
  // node-0 reads itself and the first peer; the second is asked once that fails.
  std::vector<std::string> peers;
  for (const std::string& owner : owners) {
    if (owner != "node-0") peers.push_back(owner);
  }
  ASSERT_EQ(peers.size(), 2u);
  {
    absl::MutexLock lock(&mu_);
    down_.insert(peers[0]);
    moved_[peers[0]] = absl::StrCat("moved/", peers[0]);
    sent_to_.clear();
    // The second peer moves while the first is being asked.
    on_send_ = [this, first = peers[0], second = peers[1]](const std::string& id) {
      absl::MutexLock lock(&mu_);
      if (id == first) moved_[second] = absl::StrCat("moved/", second);
    };
  }
  auto read = Read("node-0", "k", p::Consistency::Strong);
  ASSERT_OK(read);
  EXPECT_TRUE(read->found);
  EXPECT_EQ(read->value, "v");
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(sent_to_, (std::vector<std::string>{absl::StrCat("moved/", peers[0]),
                                                absl::StrCat("moved/", peers[1])}));
}

// With a peer version, each thread keeps what it looked up of the members
// until the version moves: a member that moved is sent to at its new address
// once the version says so, and the members are not looked up again before.
TEST_F(CoordinatorTest, MembersAreLookedUpAgainOnlyOnceTheirVersionMoves) {
  Start(3);
  std::atomic<uint64_t> version{1};
  members_.at("node-0").coordinator->set_peer_version([&version] { return version.load(); });
  auto lookups = [this] {
    absl::MutexLock lock(&mu_);
    return lookups_;
  };
  auto sent_to = [this](const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::find(sent_to_.begin(), sent_to_.end(), address) != sent_to_.end();
  };
  ASSERT_OK(Write("node-0", "k", "v1", p::Consistency::Strong));
  const int looked_up = lookups();
  EXPECT_EQ(looked_up, 2);  // each peer once, for both phases
  ASSERT_OK(Write("node-0", "k", "v2", p::Consistency::Strong));
  ASSERT_OK(Write("node-0", "k", "v3", p::Consistency::Eventual));
  EXPECT_EQ(lookups(), looked_up);
  {
    // node-1 restarts on another port; the version has not moved yet.
    absl::MutexLock lock(&mu_);
    moved_["node-1"] = "moved/node-1";
    sent_to_.clear();
  }
  ASSERT_OK(Write("node-0", "k", "v4", p::Consistency::Strong));
  {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(sent_to("node-1"));
    EXPECT_FALSE(sent_to("moved/node-1"));
    sent_to_.clear();
  }
  EXPECT_EQ(lookups(), looked_up);
  version.fetch_add(1);
  ASSERT_OK(Write("node-0", "k", "v5", p::Consistency::Strong));
  EXPECT_EQ(lookups(), looked_up + 2);
  {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(sent_to("moved/node-1"));
    EXPECT_FALSE(sent_to("node-1"));
  }
  auto read = Read("node-0", "k", p::Consistency::Strong);
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "v5");
}

// Strong writes coordinated while the thread holds (as a server loop does)
// wait for the flush, and their peer requests go in batches: per peer, one
// ReadRecords for every first phase and one Replicate for every second.
TEST_F(CoordinatorTest, StrongWritesMadeWhileHoldingGoInBatches) {
  Start(3);
  constexpr int kWrites = 10;
  std::vector<absl::StatusOr<Coordinator::WriteOutcome>> written(kWrites,
                                                                  absl::UnknownError("none"));
  ReplicaCoordinator* coordinator = members_.at("node-0").coordinator.get();
  ReplicaBatcher* batcher = coordinator->batcher();
  batcher->HoldOnThisThread();
  for (int i = 0; i < kWrites; ++i) {
    coordinator->Write(absl::StrCat("k", i), "v", 0, p::Consistency::Strong,
                       [&written, i](auto result) { written[i] = std::move(result); });
  }
  for (int i = 0; i < kWrites; ++i) {
    EXPECT_STATUS_CODE(written[i], absl::StatusCode::kUnknown) << "held until the flush";
  }
  batcher->Flush();
  for (int i = 0; i < kWrites; ++i) {
    ASSERT_OK(written[i]) << i;
    for (const char* id : {"node-0", "node-1", "node-2"}) {
      EXPECT_EQ(Local(id, absl::StrCat("k", i)), "v") << id;
    }
  }
  // First phases: the local engine and one peer each (at most two peers);
  // second phases: both peers.
  EXPECT_LE(batcher->requests_sent(), 4u);
  EXPECT_EQ(batcher->items_sent(), 3u * kWrites);
  batcher->StopHoldingOnThisThread();
}

TEST_F(CoordinatorTest, ReplicasAreCappedAtTheClusterSizeAndNotActiveAlone) {
  Start(2, /*replicas=*/5);
  auto written = Write("node-0", "k", "v", p::Consistency::Strong);
  ASSERT_OK(written);
  EXPECT_EQ(written->owners->size(), 2u);
  EXPECT_EQ(written->acknowledged, 2u);
  ring_ = std::make_shared<const Ring>(std::vector<std::string>{"node-0"});
  EXPECT_FALSE(members_.at("node-0").coordinator->Active());
}

TEST_F(CoordinatorTest, AnEventualReadThroughACompleteOwnerIsAnsweredByItsEngine) {
  Start(3);
  ASSERT_OK(Write("node-0", "k", "v", p::Consistency::Eventual));
  auto sends = [this] {
    absl::MutexLock lock(&mu_);
    return sends_;
  };
  // The others are down: this node's copy answers, and no peer is asked.
  Kill("node-1", /*known_dead=*/true);
  Kill("node-2", /*known_dead=*/true);
  const int before = sends();
  for (p::Consistency consistency : {p::Consistency::Eventual, p::Consistency::Default}) {
    auto read = Read("node-0", "k", consistency);
    ASSERT_OK(read);
    EXPECT_TRUE(read->found);
    EXPECT_EQ(read->value, "v");
    EXPECT_GE(read->version, 1u);  // this node's own version
    auto missing = Read("node-0", "absent", consistency);
    ASSERT_OK(missing);
    EXPECT_FALSE(missing->found);
  }
  EXPECT_EQ(sends(), before);
  // A copy still filling up is asked last: the others answer first.
  Revive("node-1");
  Revive("node-2");
  members_.at("node-0").coordinator->set_caught_up([] { return false; });
  auto read = Read("node-0", "k", p::Consistency::Eventual);
  ASSERT_OK(read);
  EXPECT_EQ(read->value, "v");
  EXPECT_GT(sends(), before);
}

TEST_F(CoordinatorTest, APlacementIsReadAgainOnlyOnceItsGenerationChanged) {
  Start(3);
  ReplicaCoordinator* coordinator = members_.at("node-0").coordinator.get();
  std::atomic<uint64_t> generation{1};
  std::atomic<int> reads{0};
  absl::Mutex mu;
  Placement placement{.epoch = 1, .ring = ring_, .next = nullptr};
  coordinator->set_placement(
      [&] {
        reads.fetch_add(1);
        absl::MutexLock lock(&mu);
        return placement;
      },
      [&] { return generation.load(); });
  for (int i = 0; i < 5; ++i) {
    auto written = Write("node-0", absl::StrCat("k", i), "v", p::Consistency::Eventual);
    ASSERT_OK(written);
    EXPECT_EQ(written->owners->size(), 3u);
  }
  ASSERT_OK(Write("node-0", "strong", "v", p::Consistency::Strong));
  ASSERT_OK(Read("node-0", "k0", p::Consistency::Strong));
  EXPECT_TRUE(coordinator->Active());
  EXPECT_EQ(reads.load(), 1);
  // A new placement that the generation does not announce is not read.
  {
    absl::MutexLock lock(&mu);
    placement = Placement{.epoch = 2,
                          .ring = std::make_shared<const Ring>(
                              std::vector<std::string>{"node-0", "node-1"}),
                          .next = nullptr};
  }
  auto written = Write("node-0", "k", "v", p::Consistency::Eventual);
  ASSERT_OK(written);
  EXPECT_EQ(written->owners->size(), 3u);
  EXPECT_EQ(reads.load(), 1);
  // Announced, it is read once and used from then on.
  generation.store(2);
  for (int i = 0; i < 3; ++i) {
    written = Write("node-0", "k", "v", p::Consistency::Strong);
    ASSERT_OK(written);
    EXPECT_EQ(written->owners->size(), 2u);
  }
  EXPECT_EQ(reads.load(), 2);
  // Another thread reads its own copy.
  std::thread([&] {
    auto other = Write("node-0", "k", "v", p::Consistency::Eventual);
    ASSERT_OK(other);
    EXPECT_EQ(other->owners->size(), 2u);
  }).join();
  EXPECT_EQ(reads.load(), 3);
  // What Active() reads follows too: a ring of this node alone serves locally.
  {
    absl::MutexLock lock(&mu);
    placement = Placement{.epoch = 3,
                          .ring = std::make_shared<const Ring>(std::vector<std::string>{"node-0"}),
                          .next = nullptr};
  }
  EXPECT_TRUE(coordinator->Active());
  generation.store(3);
  EXPECT_FALSE(coordinator->Active());
  // A coordinator made later (possibly at the same address) does not see
  // this one's copies.
  members_.at("node-0").coordinator.reset();
  ReplicaCoordinatorOptions options;
  options.clock = &clock_;
  auto again = std::make_unique<ReplicaCoordinator>(
      members_.at("node-0").node->engine(), Send(), [this] { return ring_; }, Lookup(), "node-0",
      &metrics_, members_.at("node-0").handoff.get(), options);
  int again_reads = 0;
  again->set_placement(
      [&] {
        ++again_reads;
        return Placement{.epoch = 3, .ring = ring_, .next = nullptr};
      },
      [&] { return generation.load(); });
  EXPECT_TRUE(again->Active());
  EXPECT_EQ(again_reads, 1);
}

// Each thread keeps a key's owners by ring point for the placement it last
// met: a change under way (two rings), the change done (a new ring) and a
// new N each give the owners that placement's rings name.
TEST_F(CoordinatorTest, OwnersFollowAChangeItsEndAndANewN) {
  Start(4, /*replicas=*/2);
  ReplicaCoordinator* coordinator = members_.at("node-0").coordinator.get();
  absl::Mutex mu;
  Placement placement{.epoch = 1, .ring = ring_, .next = nullptr, .replicas = 2};
  coordinator->set_placement([&] {
    absl::MutexLock lock(&mu);
    return placement;
  });
  auto use = [&](Placement next) {
    absl::MutexLock lock(&mu);
    placement = std::move(next);
  };
  // The owners a write goes to: the ring's list, then those only the next names.
  auto expect_owners = [&](const Ring& ring, const Ring* next, size_t n) {
    for (int i = 0; i < 300; ++i) {
      const std::string key = absl::StrCat("key-", i);
      std::vector<std::string> all = ring.PreferenceList(key, n);
      if (next != nullptr) {
        for (const std::string& node : next->PreferenceList(key, n)) {
          if (std::find(all.begin(), all.end(), node) == all.end()) all.push_back(node);
        }
      }
      auto written = Write("node-0", key, "v", p::Consistency::Eventual);
      ASSERT_OK(written);
      EXPECT_EQ(*written->owners, all) << key;
      EXPECT_EQ(coordinator->Owners(key), ring.PreferenceList(key, n)) << key;
    }
  };
  expect_owners(*ring_, nullptr, 2);
  const auto three =
      std::make_shared<const Ring>(std::vector<std::string>{"node-0", "node-1", "node-2"});
  use({.epoch = 2, .ring = ring_, .next = three, .replicas = 2});
  expect_owners(*ring_, three.get(), 2);
  use({.epoch = 3, .ring = three, .next = nullptr, .replicas = 2});
  expect_owners(*three, nullptr, 2);
  use({.epoch = 4, .ring = three, .next = nullptr, .replicas = 3});
  expect_owners(*three, nullptr, 3);
}

// ---- The Service in front of a coordinator ------------------------------------------------

// Answers from a script: inline, or later from another thread.
class FakeCoordinator final : public Coordinator {
 public:
  bool Active() const override { return active; }
  void Get(std::string key, p::Consistency consistency, ReadDone done) override {
    last_key = key;
    last_consistency = consistency;
    ReadResult result;
    result.found = key != "missing";
    result.value = "clustered";
    result.timestamp = 42;
    // Answer's function is copyable; the callback is move-only.
    auto shared = std::make_shared<ReadDone>(std::move(done));
    Answer([shared, result] { (*shared)(result); });
  }
  void Write(std::string key, std::optional<std::string> value, int64_t,
             p::Consistency consistency, WriteDone write_done) override {
    auto done = std::make_shared<WriteDone>(std::move(write_done));
    last_key = key;
    last_consistency = consistency;
    ++writes;
    WriteOutcome outcome;
    outcome.result.timestamp = 7;
    outcome.result.version = value.has_value() ? 1 : 2;
    Answer([done, outcome, unavailable = this->unavailable, why = this->unavailable_why] {
      if (unavailable) return (*done)(absl::UnavailableError(why));
      (*done)(outcome);
    });
  }
  std::vector<std::string> Owners(absl::string_view) const override { return {"a", "b"}; }
  ~FakeCoordinator() override {
    ReleaseAnswers();
    for (std::thread& thread : threads) thread.join();
  }

  // Without inline_answers, each answer comes from a thread of its own once
  // ReleaseAnswers is called (after Handle returned), so it is always late.
  void Answer(std::function<void()> answer) {
    if (inline_answers) return answer();
    auto gate = std::make_shared<absl::Notification>();
    gates.push_back(gate);
    threads.emplace_back([gate, answer = std::move(answer)] {
      gate->WaitForNotification();
      answer();
    });
  }
  void ReleaseAnswers() {
    for (const auto& gate : gates) {
      if (!gate->HasBeenNotified()) gate->Notify();
    }
  }

  bool active = true;
  bool inline_answers = true;
  bool unavailable = false;
  std::string unavailable_why = "reached 1 of 3 owners";
  std::string last_key;
  p::Consistency last_consistency = p::Consistency::Default;
  int writes = 0;
  std::vector<std::shared_ptr<absl::Notification>> gates;
  std::vector<std::thread> threads;
};

class ServiceClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    node_ = std::make_unique<Node>(dir_.Subdir("db"), &clock_);
    StartService("");
  }
  // A service (again) in front of the node and the coordinator.
  void StartService(const std::string& data_dir) {
    ServiceConfig config;
    config.node_id = "node-a";
    config.data_dir = data_dir;
    service_ = std::make_unique<Service>(node_->engine(), config, &counters_);
    service_->set_coordinator(&coordinator_);
  }

  // Runs a request; returns the answer's status and fills *response_frame.
  absl::Status Run(const std::string& request_frame, const RequestContext& context = {},
                   bool* deferred = nullptr, std::string* response_frame = nullptr) {
    const auto* request = flatbuffers::GetSizePrefixedRoot<p::Request>(
        reinterpret_cast<const uint8_t*>(request_frame.data()));
    flatbuffers::FlatBufferBuilder builder(256);
    absl::Notification answered;
    std::string later;
    Service::Outcome outcome = service_->Handle(context, *request, &builder,
                                                [&]() -> Service::Completion {
                                                  return [&](std::string frame) {
                                                    later = std::move(frame);
                                                    answered.Notify();
                                                  };
                                                });
    coordinator_.ReleaseAnswers();
    std::string frame;
    if (outcome == Service::Outcome::kAnswered) {
      frame = std::string(p::FrameOf(builder));
    } else {
      answered.WaitForNotification();
      frame = later;
    }
    if (deferred != nullptr) *deferred = outcome == Service::Outcome::kDeferred;
    if (response_frame != nullptr) *response_frame = frame;
    absl::StatusOr<const p::Response*> response = p::VerifyResponse(frame, 1u << 30);
    if (!response.ok()) return response.status();
    return p::StatusFromResponse(**response);
  }

  static std::string GetFrame(const std::string& key, p::Consistency consistency) {
    flatbuffers::FlatBufferBuilder b;
    auto get = p::CreateGet(b, b.CreateVector(reinterpret_cast<const uint8_t*>(key.data()),
                                              key.size()),
                            consistency);
    b.FinishSizePrefixed(p::CreateRequest(b, 1, p::Operation::Get, get.Union()));
    return std::string(p::FrameOf(b));
  }
  static std::string PutFrame(const std::string& key, bool conditional) {
    flatbuffers::FlatBufferBuilder b;
    auto k = b.CreateVector(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    auto v = b.CreateString("value");
    auto put = p::CreatePut(b, k, flatbuffers::Offset<flatbuffers::Vector<uint8_t>>(v.o), 0,
                            conditional, 0, p::Consistency::Strong);
    b.FinishSizePrefixed(p::CreateRequest(b, 1, p::Operation::Put, put.Union()));
    return std::string(p::FrameOf(b));
  }

  ScopedTempDir dir_;
  ManualClock clock_{kMs};
  std::unique_ptr<Node> node_;
  ServerCounters counters_;
  FakeCoordinator coordinator_;
  std::unique_ptr<Service> service_;
};

TEST_F(ServiceClusterTest, GetAndPutGoThroughTheCoordinator) {
  bool deferred = true;
  std::string frame;
  ASSERT_OK(Run(GetFrame("k", p::Consistency::Strong), {}, &deferred, &frame));
  EXPECT_FALSE(deferred);  // answered inline: built straight into the builder
  EXPECT_EQ(coordinator_.last_consistency, p::Consistency::Strong);
  const auto* response =
      flatbuffers::GetSizePrefixedRoot<p::Response>(reinterpret_cast<const uint8_t*>(frame.data()));
  EXPECT_EQ(p::View(response->result_as_ValueResult()->value()), "clustered");
  EXPECT_STATUS_CODE(Run(GetFrame("missing", p::Consistency::Default)),
                     absl::StatusCode::kNotFound);
  // Tenants' keys reach the coordinator as engine keys.
  RequestContext tenant;
  tenant.key_prefix = TenantPrefix(7);
  ASSERT_OK(Run(PutFrame("k", false), tenant));
  EXPECT_EQ(coordinator_.last_key, TenantPrefix(7) + "k");
  EXPECT_EQ(coordinator_.last_consistency, p::Consistency::Strong);
  EXPECT_EQ(test::GetOrStatus(node_->engine(), "k"), "NOT_FOUND");  // not written locally
}

TEST_F(ServiceClusterTest, AnswersFromAnotherThreadAreDeferred) {
  coordinator_.inline_answers = false;
  bool deferred = false;
  ASSERT_OK(Run(GetFrame("k", p::Consistency::Eventual), {}, &deferred));
  EXPECT_TRUE(deferred);
  ASSERT_OK(Run(PutFrame("k", false), {}, &deferred));
  EXPECT_TRUE(deferred);
  coordinator_.unavailable = true;
  EXPECT_STATUS_CODE(Run(PutFrame("k", false)), absl::StatusCode::kUnavailable);
}

// An error that names a file of the node's data directory reaches the
// client without it, whether its answer is inline or deferred (the log has
// the message, under the reference the answer gives).
TEST_F(ServiceClusterTest, ErrorsThatNameTheDataDirectoryAreScrubbedInlineAndDeferred) {
  const std::string data_dir = dir_.Subdir("data");
  StartService(data_dir);
  coordinator_.unavailable = true;
  coordinator_.unavailable_why = absl::StrCat("cannot open ", data_dir, "/shard-0/segment-7");
  for (bool inline_answers : {true, false}) {
    coordinator_.inline_answers = inline_answers;
    bool deferred = !inline_answers;
    const absl::Status status = Run(PutFrame("k", false), {}, &deferred);
    EXPECT_EQ(deferred, !inline_answers);
    EXPECT_STATUS_CODE(status, absl::StatusCode::kUnavailable);
    EXPECT_FALSE(absl::StrContains(status.message(), data_dir)) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), "the server log has the details")) << status;
  }
}

TEST_F(ServiceClusterTest, CompareAndSetIsRefusedWithReplicas) {
  absl::Status status = Run(PutFrame("k", /*conditional=*/true));
  // Not FailedPrecondition (a version mismatch): a retry cannot succeed.
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(absl::StrContains(status.message(), "not supported with replicas > 1")) << status;
  EXPECT_EQ(coordinator_.writes, 0);
}

TEST_F(ServiceClusterTest, InactiveCoordinatorAndLocalOnlyStayOnTheEngine) {
  ASSERT_OK(node_->engine()->Put("k", "local"));
  RequestContext local;
  local.local_only = true;
  std::string frame;
  ASSERT_OK(Run(GetFrame("k", p::Consistency::Default), local, nullptr, &frame));
  const auto* response =
      flatbuffers::GetSizePrefixedRoot<p::Response>(reinterpret_cast<const uint8_t*>(frame.data()));
  EXPECT_EQ(p::View(response->result_as_ValueResult()->value()), "local");
  coordinator_.active = false;
  ASSERT_OK(Run(PutFrame("j", /*conditional=*/false)));
  EXPECT_EQ(coordinator_.writes, 0);
  EXPECT_EQ(test::GetOrStatus(node_->engine(), "j"), "value");
}

TEST_F(ServiceClusterTest, BatchItemsGoThroughTheCoordinator) {
  flatbuffers::FlatBufferBuilder b;
  std::vector<flatbuffers::Offset<p::BatchItem>> items;
  for (const char* key : {"a", "b"}) {
    auto k = b.CreateVector(reinterpret_cast<const uint8_t*>(key), 1);
    items.push_back(p::CreateBatchItem(b, /*delete_=*/key[0] == 'b', k));
  }
  auto reserved = b.CreateVector(reinterpret_cast<const uint8_t*>("\0x"), 2);
  items.push_back(p::CreateBatchItem(b, false, reserved));
  auto batch = p::CreateBatch(b, b.CreateVector(items), p::Consistency::Eventual);
  b.FinishSizePrefixed(p::CreateRequest(b, 1, p::Operation::Batch, batch.Union()));
  coordinator_.inline_answers = false;
  std::string frame;
  ASSERT_OK(Run(std::string(p::FrameOf(b)), {}, nullptr, &frame));
  const auto* response =
      flatbuffers::GetSizePrefixedRoot<p::Response>(reinterpret_cast<const uint8_t*>(frame.data()));
  const auto* results = response->result_as_BatchResult()->items();
  ASSERT_EQ(results->size(), 3u);
  EXPECT_EQ(results->Get(0)->status(), p::StatusCode::Ok);
  EXPECT_EQ(results->Get(0)->version(), 1u);
  EXPECT_EQ(results->Get(1)->version(), 2u);
  EXPECT_EQ(results->Get(2)->status(), p::StatusCode::InvalidArgument);  // reserved key
  EXPECT_EQ(coordinator_.writes, 2);
}

}  // namespace
}  // namespace logkv::server::cluster
