// Integration tests of logkvd over the binary protocol: the real binary runs
// as a child process on a kernel-chosen loopback port, with its data in a
// temporary directory, and is always stopped at the end.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "protocol/version.h"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

namespace p = ::logkv::protocol;

class ServerTest : public ::testing::Test {
 protected:
  std::unique_ptr<LogkvdProcess> StartServer(std::vector<std::string> extra = {},
                                             const std::string& data_dir = "") {
    std::vector<std::string> args = {"--data_dir=" + (data_dir.empty() ? DataDir() : data_dir),
                                     "--threads=2", "--shards=4", "--log_level=warning"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto server = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
    absl::Status status = server->Start();
    EXPECT_TRUE(status.ok()) << status;
    return server;
  }
  std::string DataDir() { return dir_.path() + "/data"; }

  RawConnection Connect(int port) {
    absl::StatusOr<RawConnection> connection = RawConnection::Connect(port);
    EXPECT_TRUE(connection.ok()) << connection.status();
    return std::move(*connection);
  }

  // Sends one request frame and returns its response, checking the id.
  std::string Call(RawConnection& c, const std::string& frame, uint64_t id) {
    EXPECT_TRUE(c.SendBytes(frame).ok());
    absl::StatusOr<std::string> response = c.ReadFrame();
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return "";
    const p::Response* r = AsResponse(*response);
    EXPECT_NE(r, nullptr);
    if (r != nullptr) {
      EXPECT_EQ(r->request_id(), id);
    }
    return *response;
  }

  static p::StatusCode CodeOf(const std::string& frame) {
    const p::Response* r = AsResponse(frame);
    return r == nullptr ? p::StatusCode::Internal : r->status();
  }
  static std::string ValueOf(const std::string& frame) {
    const p::Response* r = AsResponse(frame);
    if (r == nullptr || r->status() != p::StatusCode::Ok) return "<error>";
    return std::string(p::View(r->result_as_ValueResult()->value()));
  }
  // The value of key, or "NOT_FOUND".
  std::string GetValue(RawConnection& c, absl::string_view key, uint64_t id) {
    const std::string frame = Call(c, GetFrame(id, key), id);
    if (CodeOf(frame) == p::StatusCode::NotFound) return "NOT_FOUND";
    return ValueOf(frame);
  }

  static std::string Build(uint64_t id, p::Operation type,
                           const std::function<flatbuffers::Offset<void>(
                               flatbuffers::FlatBufferBuilder&)>& make) {
    flatbuffers::FlatBufferBuilder b;
    auto operation = make(b);
    return FinishRequest(b, id, type, operation);
  }

  ScopedTempDir dir_;
};

TEST_F(ServerTest, EveryOperation) {
  auto server = StartServer({"--versions=3"});
  RawConnection c = Connect(server->port());

  std::string hello = Call(c, Build(1, p::Operation::Hello, [](auto& b) {
                             auto name = b.CreateString("test");
                             return p::CreateHello(b, p::kProtocolVersion, 0, name).Union();
                           }), 1);
  ASSERT_EQ(CodeOf(hello), p::StatusCode::Ok);
  EXPECT_EQ(AsResponse(hello)->result_as_HelloResult()->shard_count(), 4u);
  const flatbuffers::String* server_version =
      AsResponse(hello)->result_as_HelloResult()->server_version();
  ASSERT_NE(server_version, nullptr);
  EXPECT_EQ(server_version->str(), BuildVersion());  // logkvd was built with this test

  std::string ping = Call(c, Build(2, p::Operation::Ping, [](auto& b) {
                            return p::CreatePing(b, Bytes(b, "echo")).Union();
                          }), 2);
  EXPECT_EQ(p::View(AsResponse(ping)->result_as_PingResult()->payload()), "echo");

  std::string put = Call(c, PutFrame(3, "user/1", "ada"), 3);
  ASSERT_EQ(CodeOf(put), p::StatusCode::Ok);
  EXPECT_EQ(AsResponse(put)->result_as_WriteResult()->version(), 1u);
  ASSERT_EQ(CodeOf(Call(c, PutFrame(4, "user/1", "grace"), 4)), p::StatusCode::Ok);
  EXPECT_EQ(GetValue(c, "user/1", 5), "grace");

  std::string old = Call(c, Build(6, p::Operation::GetVersion, [](auto& b) {
                           return p::CreateGetVersion(b, Bytes(b, "user/1"), 1).Union();
                         }), 6);
  EXPECT_EQ(ValueOf(old), "ada");

  // Compare-and-set: a stale version is refused.
  std::string cas = Call(c, Build(7, p::Operation::Put, [](auto& b) {
                           auto k = Bytes(b, "user/1");
                           auto v = Bytes(b, "stale");
                           return p::CreatePut(b, k, v, 0, true, 1).Union();
                         }), 7);
  EXPECT_EQ(CodeOf(cas), p::StatusCode::FailedPrecondition);

  std::string batch = Call(c, Build(8, p::Operation::Batch, [](auto& b) {
                             std::vector<flatbuffers::Offset<p::BatchItem>> items = {
                                 p::CreateBatchItem(b, false, Bytes(b, "user/2"), Bytes(b, "b")),
                                 p::CreateBatchItem(b, false, Bytes(b, "user/3"), Bytes(b, "c")),
                                 p::CreateBatchItem(b, true, Bytes(b, "missing")),
                             };
                             return p::CreateBatch(b, b.CreateVector(items)).Union();
                           }), 8);
  ASSERT_EQ(CodeOf(batch), p::StatusCode::Ok);
  const auto* results = AsResponse(batch)->result_as_BatchResult()->items();
  ASSERT_EQ(results->size(), 3u);
  EXPECT_EQ(results->Get(0)->status(), p::StatusCode::Ok);
  EXPECT_EQ(results->Get(1)->status(), p::StatusCode::Ok);
  EXPECT_EQ(results->Get(2)->status(), p::StatusCode::NotFound);

  std::string scan = Call(c, Build(9, p::Operation::Scan, [](auto& b) {
                            return p::CreateScan(b, Bytes(b, "user/"), 0, 0, 0, 2).Union();
                          }), 9);
  const p::ScanResult* page = AsResponse(scan)->result_as_ScanResult();
  ASSERT_NE(page, nullptr);
  ASSERT_EQ(page->items()->size(), 2u);
  EXPECT_EQ(p::View(page->items()->Get(0)->key()), "user/1");
  EXPECT_EQ(p::View(page->items()->Get(1)->key()), "user/2");
  EXPECT_EQ(p::View(page->next_cursor()), "user/2");

  ASSERT_EQ(CodeOf(Call(c, DeleteFrame(10, "user/1"), 10)), p::StatusCode::Ok);
  EXPECT_EQ(GetValue(c, "user/1", 11), "NOT_FOUND");
  EXPECT_EQ(CodeOf(Call(c, DeleteFrame(12, "user/1"), 12)), p::StatusCode::NotFound);

  std::string stats = Call(c, Build(13, p::Operation::Stats, [](auto& b) {
                             return p::CreateStats(b).Union();
                           }), 13);
  const p::StatsResult* s = AsResponse(stats)->result_as_StatsResult();
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->keys(), 2u);
  EXPECT_GE(s->puts(), 4u);
  EXPECT_EQ(s->connections(), 1u);
  EXPECT_EQ(s->last_sequences()->size(), 4u);

  // Limits are checked per request: the answer names the limit, and the
  // connection goes on.
  std::string big_key = Call(c, PutFrame(14, std::string(5000, 'k'), "v"), 14);
  EXPECT_EQ(CodeOf(big_key), p::StatusCode::InvalidArgument);
  EXPECT_NE(p::View(AsResponse(big_key)->message()).find("max_key_bytes"), absl::string_view::npos);
  EXPECT_EQ(GetValue(c, "user/2", 15), "b");
}

TEST_F(ServerTest, PipelinedRequestsAreAllAnswered) {
  auto server = StartServer();
  RawConnection c = Connect(server->port());
  constexpr int kRequests = 3000;
  std::string frames;
  for (int i = 0; i < kRequests; ++i) {
    frames += PutFrame(i + 1, absl::StrCat("pipe/", i), absl::StrCat("value-", i));
  }
  ASSERT_TRUE(c.SendBytes(frames).ok());
  std::set<uint64_t> answered;
  for (int i = 0; i < kRequests; ++i) {
    absl::StatusOr<std::string> frame = c.ReadFrame();
    ASSERT_TRUE(frame.ok()) << frame.status() << " after " << i << " answers";
    const p::Response* r = AsResponse(*frame);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->status(), p::StatusCode::Ok);
    EXPECT_TRUE(answered.insert(r->request_id()).second) << "answered twice: " << r->request_id();
  }
  EXPECT_EQ(answered.size(), static_cast<size_t>(kRequests));
  frames.clear();
  for (int i = 0; i < kRequests; ++i) frames += GetFrame(100000 + i, absl::StrCat("pipe/", i));
  ASSERT_TRUE(c.SendBytes(frames).ok());
  for (int i = 0; i < kRequests; ++i) {
    absl::StatusOr<std::string> frame = c.ReadFrame();
    ASSERT_TRUE(frame.ok()) << frame.status();
    const p::Response* r = AsResponse(*frame);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(ValueOf(*frame), absl::StrCat("value-", r->request_id() - 100000));
  }
}

// 200 pipelined reads of a 1 MiB value owe far more than the 8 MiB output
// limit: the server holds the rest of the frames until the client reads, and
// then answers every one of them.
TEST_F(ServerTest, PipelinedLargeAnswersAreThrottledNotLost) {
  auto server = StartServer();
  RawConnection c = Connect(server->port());
  const std::string value(1 << 20, 'L');
  ASSERT_EQ(CodeOf(Call(c, PutFrame(1, "large", value), 1)), p::StatusCode::Ok);
  std::string frames;
  for (int i = 0; i < 200; ++i) frames += GetFrame(100 + i, "large");
  ASSERT_TRUE(c.SendBytes(frames).ok());
  absl::SleepFor(absl::Milliseconds(300));  // let the server fill its limit
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<std::string> frame = c.ReadFrame(absl::Seconds(30));
    ASSERT_TRUE(frame.ok()) << frame.status() << " after " << i;
    EXPECT_EQ(AsResponse(*frame)->request_id(), static_cast<uint64_t>(100 + i));
    EXPECT_EQ(ValueOf(*frame).size(), value.size());
  }
}

TEST_F(ServerTest, HundredConcurrentClients) {
  auto server = StartServer();
  const int port = server->port();
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 100; ++t) {
    clients.emplace_back([&, t] {
      absl::StatusOr<RawConnection> c = RawConnection::Connect(port);
      if (!c.ok()) {
        ++failures;
        return;
      }
      for (int i = 0; i < 30; ++i) {
        const std::string key = absl::StrCat("c", t, "/", i);
        const std::string value = absl::StrCat("v", t, ".", i);
        if (!c->SendBytes(PutFrame(2 * i + 1, key, value)).ok()) ++failures;
        absl::StatusOr<std::string> put = c->ReadFrame();
        if (!put.ok() || CodeOf(*put) != p::StatusCode::Ok) ++failures;
        if (!c->SendBytes(GetFrame(2 * i + 2, key)).ok()) ++failures;
        absl::StatusOr<std::string> get = c->ReadFrame();
        if (!get.ok() || ValueOf(*get) != value) ++failures;
      }
    });
  }
  for (std::thread& client : clients) client.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(ServerTest, WatchStreamsMatchingEvents) {
  auto server = StartServer();
  RawConnection watcher = Connect(server->port());
  RawConnection writer = Connect(server->port());
  std::string ack = Call(watcher, Build(1, p::Operation::Watch, [](auto& b) {
                           return p::CreateWatch(b, Bytes(b, "w/")).Union();
                         }), 1);
  ASSERT_EQ(CodeOf(ack), p::StatusCode::Ok);
  ASSERT_EQ(CodeOf(Call(writer, PutFrame(1, "w/a", "1"), 1)), p::StatusCode::Ok);
  ASSERT_EQ(CodeOf(Call(writer, PutFrame(2, "x/a", "ignored"), 2)), p::StatusCode::Ok);
  ASSERT_EQ(CodeOf(Call(writer, DeleteFrame(3, "w/a"), 3)), p::StatusCode::Ok);

  std::vector<std::pair<p::EventType, std::string>> seen;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (seen.size() < 2 && absl::Now() < deadline) {
    absl::StatusOr<std::string> frame = watcher.ReadFrame(absl::Seconds(5));
    ASSERT_TRUE(frame.ok()) << frame.status();
    const p::Response* r = AsResponse(*frame);
    ASSERT_EQ(r->request_id(), 1u);
    ASSERT_EQ(r->status(), p::StatusCode::Ok);
    for (const p::Event* event : *r->result_as_WatchEvents()->events()) {
      seen.emplace_back(event->type(), std::string(p::View(event->key())));
    }
  }
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], std::make_pair(p::EventType::Put, std::string("w/a")));
  EXPECT_EQ(seen[1], std::make_pair(p::EventType::Delete, std::string("w/a")));

  // Unwatch ends the stream with a final status for the watch.
  ASSERT_TRUE(watcher.SendBytes(Build(2, p::Operation::Unwatch, [](auto& b) {
                                  return p::CreateUnwatch(b, 1).Union();
                                })).ok());
  std::set<uint64_t> ids;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::string> frame = watcher.ReadFrame();
    ASSERT_TRUE(frame.ok());
    ids.insert(AsResponse(*frame)->request_id());
  }
  EXPECT_EQ(ids, (std::set<uint64_t>{1, 2}));
}

// A watcher that never reads is dropped with Aborted once it owes more than
// the output limit, instead of growing the server's memory.
TEST_F(ServerTest, SlowWatcherIsDropped) {
  auto server = StartServer();
  RawConnection watcher = Connect(server->port());
  RawConnection writer = Connect(server->port());
  ASSERT_EQ(CodeOf(Call(watcher, Build(1, p::Operation::Watch, [](auto& b) {
                          return p::CreateWatch(b, Bytes(b, "")).Union();
                        }), 1)),
            p::StatusCode::Ok);
  // 40 MiB of events while the watcher reads nothing.
  const std::string value(64 << 10, 'x');
  constexpr int kPuts = 640;
  std::string frames;
  for (int i = 0; i < kPuts; ++i) frames += PutFrame(i + 1, absl::StrCat("big/", i % 50), value);
  ASSERT_TRUE(writer.SendBytes(frames).ok());
  for (int i = 0; i < kPuts; ++i) ASSERT_TRUE(writer.ReadFrame().ok());
  // Now read what the watcher was sent: events, then the verdict.
  absl::StatusOr<std::string> frame;
  p::StatusCode last = p::StatusCode::Ok;
  int frames_read = 0;
  while ((frame = watcher.ReadFrame(absl::Seconds(5))).ok()) {
    ++frames_read;
    last = CodeOf(*frame);
    if (last != p::StatusCode::Ok) break;
  }
  EXPECT_EQ(last, p::StatusCode::Aborted) << "after " << frames_read << " frames";
  // The server is fine and the connection still answers.
  EXPECT_EQ(GetValue(watcher, "big/1", 99), value);
}

TEST_F(ServerTest, TtlExpiryIsSeenByClients) {
  auto server = StartServer();
  RawConnection c = Connect(server->port());
  ASSERT_EQ(CodeOf(Call(c, PutFrame(1, "session", "token", /*ttl_ms=*/300), 1)),
            p::StatusCode::Ok);
  EXPECT_EQ(GetValue(c, "session", 2), "token");
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  uint64_t id = 3;
  while (GetValue(c, "session", id) != "NOT_FOUND" && absl::Now() < deadline) {
    ++id;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(GetValue(c, "session", id + 1), "NOT_FOUND");
}

TEST_F(ServerTest, RestartKeepsData) {
  {
    auto server = StartServer({"--log_level=info"});
    RawConnection c = Connect(server->port());
    for (int i = 0; i < 200; ++i) {
      ASSERT_EQ(CodeOf(Call(c, PutFrame(i + 1, absl::StrCat("k", i), absl::StrCat("v", i)), i + 1)),
                p::StatusCode::Ok);
    }
    EXPECT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
    EXPECT_NE(server->Output().find("stopped cleanly"), std::string::npos) << server->Output();
  }
  auto server = StartServer();
  RawConnection c = Connect(server->port());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(GetValue(c, absl::StrCat("k", i), i + 1), absl::StrCat("v", i));
  }
}

// The index each shard leaves at a clean stop serves the next start, and
// the starts after kills (it is kept, and the segments written after it are
// read); a running shard writes one too (a checkpoint), which a start after
// a kill loads with nothing else on disk to help.
TEST_F(ServerTest, ARestartLoadsTheIndexACleanStopOrACheckpointLeft) {
  const std::vector<std::string> flags = {"--log_level=info", "--index_snapshot_min_entries=0",
                                          "--checkpoint_ratio=0.5"};
  uint64_t id = 0;
  auto put_all = [&](RawConnection& c, const std::string& round, int step) {
    for (int i = 0; i < 300; i += step) {
      ++id;
      ASSERT_EQ(CodeOf(Call(c, PutFrame(id, absl::StrCat("k", i), absl::StrCat(round, i)), id)),
                p::StatusCode::Ok);
    }
  };
  auto snapshots = [&] {
    int found = 0;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(DataDir())) {
      if (entry.path().filename() == "index.snapshot") ++found;
    }
    return found;
  };
  auto loaded = [](const std::string& output) {
    int count = 0;
    for (size_t at = output.find("index loaded from"); at != std::string::npos;
         at = output.find("index loaded from", at + 1)) {
      ++count;
    }
    return count;
  };
  // The shards a run compacted (logkvd looks every 10 s): a compaction may
  // have rewritten a segment their snapshot describes, which the next start
  // then refuses (and reads the hint files instead).
  auto compacted = [](const std::string& output) {
    int count = 0;
    for (int shard = 0; shard < 4; ++shard) {
      if (output.find(absl::StrCat("compacted shard ", shard, ":")) != std::string::npos) ++count;
    }
    return count;
  };
  std::string previous;
  {
    auto server = StartServer(flags);
    RawConnection c = Connect(server->port());
    ASSERT_NO_FATAL_FAILURE(put_all(c, "a", 1));
    ASSERT_NO_FATAL_FAILURE(put_all(c, "b", 2));
    EXPECT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
  }
  EXPECT_EQ(snapshots(), 4);  // one a shard
  {
    auto server = StartServer(flags);
    EXPECT_EQ(loaded(server->Output()), 4) << server->Output();
    RawConnection c = Connect(server->port());
    for (int i = 0; i < 300; ++i) {
      ASSERT_EQ(GetValue(c, absl::StrCat("k", i), ++id), absl::StrCat(i % 2 == 0 ? "b" : "a", i));
    }
    ASSERT_NO_FATAL_FAILURE(put_all(c, "c", 3));
    previous = server->Output();
    server->Kill();
  }
  EXPECT_EQ(snapshots(), 4) << "kept for the starts after";
  {
    auto server = StartServer(flags);
    EXPECT_EQ(loaded(server->Output()), 4 - compacted(previous)) << server->Output();
    RawConnection c = Connect(server->port());
    for (int i = 0; i < 300; ++i) {
      const char* round = i % 3 == 0 ? "c" : i % 2 == 0 ? "b" : "a";
      ASSERT_EQ(GetValue(c, absl::StrCat("k", i), ++id), absl::StrCat(round, i));
    }
    // Only what the running shards write from now on.
    for (const auto& entry : std::filesystem::recursive_directory_iterator(DataDir())) {
      if (entry.path().filename() == "index.snapshot") std::filesystem::remove(entry.path());
    }
    ASSERT_NO_FATAL_FAILURE(put_all(c, "d", 1));
    // Each shard's writes since its open now exceed half its keys: its
    // checkpoint comes within a maintenance round (bounded wait).
    for (int wait = 0; wait < 1500 && snapshots() < 4; ++wait) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_EQ(snapshots(), 4) << server->Output();
    EXPECT_NE(server->Output().find("checkpoint of"), std::string::npos) << server->Output();
    ASSERT_NO_FATAL_FAILURE(put_all(c, "e", 5));
    previous = server->Output();
    server->Kill();
  }
  auto server = StartServer(flags);
  EXPECT_GE(loaded(server->Output()), 4 - compacted(previous)) << server->Output();
  RawConnection c = Connect(server->port());
  for (int i = 0; i < 300; ++i) {
    ASSERT_EQ(GetValue(c, absl::StrCat("k", i), ++id), absl::StrCat(i % 5 == 0 ? "e" : "d", i));
  }
}

// Writers on several connections; the server is killed with SIGKILL while
// writes are in flight. After a restart every acknowledged write is there:
// a key holds its last acknowledged value, or a later one that was sent but
// not yet acknowledged when the server died. Run per fsync policy, and with
// value compression on (the values, runs of 'x', compress).
struct KillSettings {
  const char* fsync;
  const char* compression;
};
class KillTest : public ServerTest, public ::testing::WithParamInterface<KillSettings> {
 protected:
  std::vector<std::string> Flags() const {
    return {absl::StrCat("--fsync=", GetParam().fsync),
            absl::StrCat("--compression=", GetParam().compression),
            "--compression_min_bytes=64"};
  }
};

TEST_P(KillTest, KillNineLosesNoAcknowledgedWrite) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  auto server = StartServer(Flags());
  const int port = server->port();
  constexpr int kWriters = 4;
  constexpr int kKeysPerWriter = 40;
  struct KeyState {
    std::string acknowledged;      // empty: none yet
    std::vector<std::string> sent_after;  // sent, not acknowledged
  };
  std::vector<std::map<std::string, KeyState>> states(kWriters);
  std::atomic<bool> stop{false};
  std::atomic<int> acknowledged{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      std::mt19937_64 random(seed + w);
      absl::StatusOr<RawConnection> c = RawConnection::Connect(port);
      if (!c.ok()) return;
      for (uint64_t i = 1; !stop.load() && i < 1'000'000; ++i) {
        const std::string key = absl::StrCat("w", w, "/", random() % kKeysPerWriter);
        const std::string value = absl::StrCat(key, "=", i, ":", std::string(random() % 300, 'x'));
        KeyState& state = states[w][key];
        state.sent_after.push_back(value);
        if (!c->SendBytes(PutFrame(i, key, value)).ok()) return;
        absl::StatusOr<std::string> answer = c->ReadFrame(absl::Seconds(10));
        if (!answer.ok()) return;  // the server died
        if (CodeOf(*answer) != p::StatusCode::Ok) return;
        state.acknowledged = value;
        state.sent_after.clear();
        ++acknowledged;
      }
    });
  }
  // Let the load run, then kill the server in the middle of it.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (acknowledged.load() < 3000 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  server->Kill();
  stop = true;
  for (std::thread& writer : writers) writer.join();
  ASSERT_GT(acknowledged.load(), 100) << "the load never got going";

  auto restarted = StartServer(Flags());
  RawConnection c = Connect(restarted->port());
  uint64_t id = 1;
  int checked = 0;
  for (int w = 0; w < kWriters; ++w) {
    for (const auto& [key, state] : states[w]) {
      const std::string value = GetValue(c, key, id++);
      std::set<std::string> allowed(state.sent_after.begin(), state.sent_after.end());
      if (!state.acknowledged.empty()) allowed.insert(state.acknowledged);
      if (state.acknowledged.empty()) allowed.insert("NOT_FOUND");
      EXPECT_EQ(allowed.count(value), 1u)
          << key << " holds " << value.substr(0, 40) << ", acknowledged was "
          << state.acknowledged.substr(0, 40);
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

INSTANTIATE_TEST_SUITE_P(FsyncPolicies, KillTest,
                         ::testing::Values(KillSettings{"always", "none"},
                                           KillSettings{"interval", "none"},
                                           KillSettings{"always", "zstd"}),
                         [](const ::testing::TestParamInfo<KillSettings>& info) {
                           return absl::StrCat(info.param.fsync, "_", info.param.compression);
                         });

TEST_F(ServerTest, BadInputLeavesTheServerServingOthers) {
  auto server = StartServer();
  const int port = server->port();
  RawConnection good = Connect(port);
  uint64_t id = 1;
  auto still_serving = [&] {
    const std::string key = absl::StrCat("alive/", id);
    EXPECT_EQ(CodeOf(Call(good, PutFrame(id, key, "yes"), id)), p::StatusCode::Ok);
    ++id;
    EXPECT_EQ(GetValue(good, key, id), "yes");
    ++id;
  };

  {  // A length beyond max_frame_bytes: error answer, then close.
    RawConnection bad = Connect(port);
    const uint32_t huge = 1u << 30;
    ASSERT_TRUE(bad.SendBytes(absl::string_view(reinterpret_cast<const char*>(&huge), 4)).ok());
    absl::StatusOr<std::string> answer = bad.ReadFrame();
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(CodeOf(*answer), p::StatusCode::ResourceExhausted);
    EXPECT_TRUE(bad.WaitClosed(absl::Seconds(5)));
  }
  still_serving();
  {  // Random bytes.
    RawConnection bad = Connect(port);
    std::mt19937 random(7);
    std::string garbage(4096, '\0');
    for (char& ch : garbage) ch = static_cast<char>(random());
    ASSERT_TRUE(bad.SendBytes(garbage).ok());
    EXPECT_TRUE(bad.WaitClosed(absl::Seconds(5)));
  }
  still_serving();
  {  // A well-framed message that is not a Request.
    RawConnection bad = Connect(port);
    std::string frame = std::string("\x10\x00\x00\x00", 4) + std::string(16, '\x7f');
    ASSERT_TRUE(bad.SendBytes(frame).ok());
    absl::StatusOr<std::string> answer = bad.ReadFrame();
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(CodeOf(*answer), p::StatusCode::InvalidArgument);
    EXPECT_TRUE(bad.WaitClosed(absl::Seconds(5)));
  }
  still_serving();
  {  // Half a frame, then the client disconnects.
    RawConnection bad = Connect(port);
    const std::string frame = PutFrame(1, "half", std::string(1000, 'h'));
    ASSERT_TRUE(bad.SendBytes(frame.substr(0, frame.size() / 2)).ok());
    bad.Close();
  }
  still_serving();
  {  // A Put without its body (the verifier lets an absent union value through).
    RawConnection bad = Connect(port);
    flatbuffers::FlatBufferBuilder b;
    p::RequestBuilder request(b);
    request.add_request_id(55);
    request.add_operation_type(p::Operation::Put);
    b.FinishSizePrefixed(request.Finish());
    std::string answer = Call(bad, std::string(p::FrameOf(b)), 55);
    EXPECT_EQ(CodeOf(answer), p::StatusCode::InvalidArgument);
  }
  still_serving();
  {  // An operation this build does not know: answered, the connection lives.
    RawConnection newer = Connect(port);
    std::string frame = Build(77, static_cast<p::Operation>(200), [](auto& b) {
      return p::CreatePing(b).Union();
    });
    std::string answer = Call(newer, frame, 77);
    EXPECT_EQ(CodeOf(answer), p::StatusCode::Unimplemented);
    EXPECT_EQ(GetValue(newer, "alive/1", 78), "yes");
  }
  still_serving();
}

// With auth on, a connection that has not said Hello may announce only small
// frames: a large length is refused at once instead of being buffered.
TEST_F(ServerTest, UnauthenticatedConnectionsMaySendOnlySmallFrames) {
  auto server = StartServer({"--auth=on"});
  RawConnection c = Connect(server->port());
  const uint32_t announced = 64u << 20;
  std::string bytes(reinterpret_cast<const char*>(&announced), sizeof(announced));
  bytes += std::string(1000, 'x');
  ASSERT_TRUE(c.SendBytes(bytes).ok());
  absl::StatusOr<std::string> answer = c.ReadFrame();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(CodeOf(*answer), p::StatusCode::ResourceExhausted);
  EXPECT_NE(std::string(p::View(AsResponse(*answer)->message())).find("Hello"), std::string::npos);
  EXPECT_TRUE(c.WaitClosed(absl::Seconds(10)));

  // Small frames before Hello are served as before.
  RawConnection other = Connect(server->port());
  EXPECT_EQ(CodeOf(Call(other, Build(1, p::Operation::Ping, [](auto& b) {
                          return p::CreatePing(b).Union();
                        }), 1)),
            p::StatusCode::Ok);
  EXPECT_EQ(CodeOf(Call(other, GetFrame(2, "k"), 2)), p::StatusCode::Unauthenticated);
}

// A frame that does not finish arriving within --binary-idle-timeout-ms ends
// its connection, and so does silence; a watcher is left alone.
TEST_F(ServerTest, SlowFramesAndIdleConnectionsAreClosed) {
  auto server = StartServer({"--binary-idle-timeout-ms=300"});
  RawConnection watcher = Connect(server->port());
  ASSERT_EQ(CodeOf(Call(watcher, Build(1, p::Operation::Watch, [](auto& b) {
                          return p::CreateWatch(b, Bytes(b, "w/")).Union();
                        }), 1)),
            p::StatusCode::Ok);
  RawConnection slow = Connect(server->port());
  RawConnection idle = Connect(server->port());
  const std::string frame = PutFrame(1, "slow", std::string(1000, 's'));
  ASSERT_TRUE(slow.SendBytes(frame.substr(0, frame.size() / 2)).ok());

  absl::StatusOr<std::string> answer = slow.ReadFrame(absl::Seconds(20));
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(CodeOf(*answer), p::StatusCode::DeadlineExceeded);
  EXPECT_TRUE(slow.WaitClosed(absl::Seconds(10)));
  EXPECT_TRUE(idle.WaitClosed(absl::Seconds(10)));
  // The watcher has been silent longer than either, and is still served.
  EXPECT_EQ(GetValue(watcher, "k", 2), "NOT_FOUND");
}

// Watches per connection are limited (--max-watches-per-connection): the one
// past the limit is refused, an Unwatch makes room, and every watch open
// still streams.
TEST_F(ServerTest, WatchesPerConnectionAreLimited) {
  constexpr int kLimit = 2000;
  auto server = StartServer({absl::StrCat("--max-watches-per-connection=", kLimit)});
  RawConnection watcher = Connect(server->port());
  auto watch_frame = [](uint64_t id) {
    return Build(id, p::Operation::Watch, [id](auto& b) {
      return p::CreateWatch(b, Bytes(b, absl::StrCat("w", id % 7, "/"))).Union();
    });
  };
  std::string frames;
  for (uint64_t id = 1; id <= kLimit + 1; ++id) frames += watch_frame(id);
  ASSERT_TRUE(watcher.SendBytes(frames).ok());
  std::map<uint64_t, p::StatusCode> answers;
  for (int i = 0; i < kLimit + 1; ++i) {
    absl::StatusOr<std::string> frame = watcher.ReadFrame();
    ASSERT_TRUE(frame.ok()) << frame.status() << " after " << i << " answers";
    answers.emplace(AsResponse(*frame)->request_id(), CodeOf(*frame));
  }
  ASSERT_EQ(answers.size(), static_cast<size_t>(kLimit + 1));
  for (uint64_t id = 1; id <= kLimit; ++id) ASSERT_EQ(answers[id], p::StatusCode::Ok) << id;
  EXPECT_EQ(answers[kLimit + 1], p::StatusCode::ResourceExhausted);
  // The same id twice is refused as before.
  EXPECT_EQ(CodeOf(Call(watcher, watch_frame(5), 5)), p::StatusCode::InvalidArgument);

  // Unwatch frees a place.
  ASSERT_TRUE(watcher.SendBytes(Build(kLimit + 2, p::Operation::Unwatch, [](auto& b) {
                                  return p::CreateUnwatch(b, 3).Union();
                                })).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(watcher.ReadFrame().ok());
  EXPECT_EQ(CodeOf(Call(watcher, watch_frame(kLimit + 3), kLimit + 3)), p::StatusCode::Ok);

  // A write reaches every watch of its prefix: w1/ is watched by ids = 1 mod 7.
  RawConnection writer = Connect(server->port());
  ASSERT_EQ(CodeOf(Call(writer, PutFrame(1, "w1/k", "v"), 1)), p::StatusCode::Ok);
  std::set<uint64_t> notified;
  std::set<uint64_t> expected;
  for (uint64_t id = 1; id <= kLimit; ++id) {
    if (id % 7 == 1) expected.insert(id);
  }
  if ((kLimit + 3) % 7 == 1) expected.insert(kLimit + 3);
  while (notified.size() < expected.size()) {
    absl::StatusOr<std::string> frame = watcher.ReadFrame();
    ASSERT_TRUE(frame.ok()) << frame.status() << " with " << notified.size() << " notified";
    ASSERT_EQ(CodeOf(*frame), p::StatusCode::Ok);
    notified.insert(AsResponse(*frame)->request_id());
  }
  EXPECT_EQ(notified, expected);
}

TEST_F(ServerTest, ReadOnlyRefusesWrites) {
  auto server = StartServer({"--read_only"});
  RawConnection c = Connect(server->port());
  EXPECT_EQ(CodeOf(Call(c, PutFrame(1, "k", "v"), 1)), p::StatusCode::PermissionDenied);
  EXPECT_EQ(CodeOf(Call(c, GetFrame(2, "k"), 2)), p::StatusCode::NotFound);
}

TEST_F(ServerTest, StartupErrorsAreClear) {
  auto server = StartServer();
  {  // The port is taken.
    LogkvdProcess second(LOGKVD_PATH, {"--data_dir=" + dir_.path() + "/other",
                                       absl::StrCat("--listen=127.0.0.1:", server->port())});
    EXPECT_FALSE(second.Start().ok());
    EXPECT_NE(second.Output().find("port in use"), std::string::npos) << second.Output();
  }
  {  // Another logkvd is starting on the port: it holds the port's lock
     // (an abstract Unix socket), its socket not yet bound.
    const int port = PickFreePort();
    const int lock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(lock, 0);
    sockaddr_un name{};
    name.sun_family = AF_UNIX;
    const std::string lock_name = absl::StrCat("logkv-listen-port-", port);
    std::memcpy(name.sun_path + 1, lock_name.data(), lock_name.size());
    ASSERT_EQ(::bind(lock, reinterpret_cast<const sockaddr*>(&name),
                     static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 +
                                            lock_name.size())),
              0)
        << std::strerror(errno);
    LogkvdProcess second(LOGKVD_PATH, {"--data_dir=" + dir_.path() + "/racing",
                                       absl::StrCat("--listen=127.0.0.1:", port)});
    EXPECT_FALSE(second.Start().ok());
    ::close(lock);
    EXPECT_NE(second.Output().find("port in use by another logkvd"), std::string::npos)
        << second.Output();
  }
  {  // The data directory belongs to the running server.
    LogkvdProcess second(LOGKVD_PATH, {"--data_dir=" + DataDir()});
    EXPECT_FALSE(second.Start().ok());
    EXPECT_NE(second.Output().find("locked"), std::string::npos) << second.Output();
  }
  {  // A directory of another node id (the default id is the listen
     // address, and the port changed): refused before the store is opened.
    const std::string dir = dir_.path() + "/kept-id";
    const int first_port = PickFreePort();
    {
      LogkvdProcess first(LOGKVD_PATH,
                          {"--data_dir=" + dir, absl::StrCat("--listen=127.0.0.1:", first_port)});
      const absl::Status started = first.Start();
      ASSERT_TRUE(started.ok()) << started << first.Output();
      ASSERT_EQ(WEXITSTATUS(first.Stop()), 0) << first.Output();
    }
    int other_port = PickFreePort();
    for (int i = 0; i < 100 && other_port == first_port; ++i) other_port = PickFreePort();
    ASSERT_NE(other_port, first_port);
    LogkvdProcess second(LOGKVD_PATH,
                         {"--data_dir=" + dir, absl::StrCat("--listen=127.0.0.1:", other_port)});
    EXPECT_FALSE(second.Start().ok());
    EXPECT_NE(second.Output().find(absl::StrCat("this data directory is node 127.0.0.1:",
                                                first_port)),
              std::string::npos)
        << second.Output();
    EXPECT_EQ(second.Output().find("opened "), std::string::npos) << second.Output();
    // As that node, it starts.
    LogkvdProcess third(LOGKVD_PATH,
                        {"--data_dir=" + dir, absl::StrCat("--listen=127.0.0.1:", other_port),
                         absl::StrCat("--node_id=127.0.0.1:", first_port)});
    const absl::Status started = third.Start();
    ASSERT_TRUE(started.ok()) << started << third.Output();
    EXPECT_EQ(WEXITSTATUS(third.Stop()), 0) << third.Output();
    // The id file edited by hand, ending in a carriage return and spaces:
    // the id is still the node's.
    {
      std::ofstream edited(dir + "/control/node_id", std::ios::trunc);
      edited << "127.0.0.1:" << first_port << " \r\n";
    }
    LogkvdProcess fourth(LOGKVD_PATH,
                         {"--data_dir=" + dir, absl::StrCat("--listen=127.0.0.1:", first_port)});
    const absl::Status restarted = fourth.Start();
    EXPECT_TRUE(restarted.ok()) << restarted << fourth.Output();
    EXPECT_EQ(WEXITSTATUS(fourth.Stop()), 0) << fourth.Output();
    // An id that could not be read back as itself is refused.
    LogkvdProcess spaced(LOGKVD_PATH, {"--data_dir=" + dir_.path() + "/spaced-id",
                                       "--node_id=n1\r"});
    EXPECT_FALSE(spaced.Start().ok());
    EXPECT_NE(spaced.Output().find("must not begin or end with whitespace"), std::string::npos)
        << spaced.Output();
  }
  {  // A public address with auth off is refused.
    LogkvdProcess second(LOGKVD_PATH,
                         {"--data_dir=" + dir_.path() + "/third", "--listen=0.0.0.0:0"});
    EXPECT_FALSE(second.Start().ok());
    EXPECT_NE(second.Output().find("--insecure"), std::string::npos) << second.Output();
  }
  {  // Flags also come from the environment.
    ::setenv("LOGKV_FSYNC", "sometimes", 1);
    LogkvdProcess second(LOGKVD_PATH, {"--data_dir=" + dir_.path() + "/fourth"});
    EXPECT_FALSE(second.Start().ok());
    ::unsetenv("LOGKV_FSYNC");
    EXPECT_NE(second.Output().find("--fsync must be"), std::string::npos) << second.Output();
  }
  {  // Compression settings out of range, spelled either way.
    LogkvdProcess second(LOGKVD_PATH, {"--data_dir=" + dir_.path() + "/fifth",
                                       "--compression=zstd", "--compression-level=20"});
    EXPECT_FALSE(second.Start().ok());
    EXPECT_NE(second.Output().find("--compression_level must be between 1 and 19"),
              std::string::npos)
        << second.Output();
  }
  {
    LogkvdProcess second(LOGKVD_PATH, {"--data_dir=" + dir_.path() + "/sixth",
                                       "--compression=lz4"});
    EXPECT_FALSE(second.Start().ok());
    EXPECT_NE(second.Output().find("--compression must be none or zstd"), std::string::npos)
        << second.Output();
  }
}

// A node accepts connections once it can serve them: the first request on
// the first connection its port accepts is answered, on a new cluster's
// first node (a member only moments after it bound its ports) and after a
// restart, with a client that connects as soon as the port takes it.
TEST_F(ServerTest, TheFirstConnectionAcceptedIsServed) {
  const int port = PickFreePort();
  for (int start = 0; start < 2; ++start) {
    SCOPED_TRACE(start == 0 ? "new data directory" : "restart");
    LogkvdProcess server(LOGKVD_PATH,
                         {"--data_dir=" + DataDir(), "--threads=2", "--shards=4",
                          "--log_level=info", absl::StrCat("--listen=127.0.0.1:", port)});
    ASSERT_TRUE(server.Launch().ok());
    absl::StatusOr<RawConnection> c = RawConnection::Connect(port, absl::Seconds(20));
    ASSERT_TRUE(c.ok()) << c.status() << server.Output();
    const std::string key = absl::StrCat("first-", start);
    const std::string answer = Call(*c, PutFrame(1, key, "write"), 1);
    EXPECT_EQ(CodeOf(answer), p::StatusCode::Ok)
        << (AsResponse(answer) != nullptr && AsResponse(answer)->message() != nullptr
                ? AsResponse(answer)->message()->str()
                : "")
        << server.Output();
    EXPECT_EQ(GetValue(*c, key, 2), "write");
    EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.Output();
  }
}

// The same on a node joining a cluster for the first time: it owns no keys
// (and knows no owner) until it has joined the cluster's control plane.
TEST_F(ServerTest, TheFirstConnectionAJoiningNodeAcceptsIsServed) {
  auto first = StartServer();
  const int port = PickFreePort();
  LogkvdProcess joining(LOGKVD_PATH,
                        {"--data_dir=" + dir_.path() + "/joining", "--threads=2", "--shards=4",
                         "--log_level=info", absl::StrCat("--listen=127.0.0.1:", port),
                         absl::StrCat("--seeds=127.0.0.1:", first->port())});
  ASSERT_TRUE(joining.Launch().ok());
  absl::StatusOr<RawConnection> c = RawConnection::Connect(port, absl::Seconds(20));
  ASSERT_TRUE(c.ok()) << c.status() << joining.Output();
  // Answered once the node has joined the control plane (Raft's log sent
  // to it): more than Call's 10 s on a loaded machine.
  ASSERT_TRUE(c->SendBytes(PutFrame(1, "joined", "write")).ok());
  absl::StatusOr<std::string> read = c->ReadFrame(absl::Seconds(60));
  ASSERT_TRUE(read.ok()) << read.status() << joining.Output();
  // (An operation the joiner coordinates under the epoch its own activation
  // replaces, refused by the other owner as stale, is run again by the
  // coordinator once it holds the newer one: the answer is the first.)
  const std::string answer = *read;
  EXPECT_EQ(CodeOf(answer), p::StatusCode::Ok)
      << (AsResponse(answer) != nullptr && AsResponse(answer)->message() != nullptr
              ? AsResponse(answer)->message()->str()
              : "")
      << joining.Output();
  EXPECT_EQ(GetValue(*c, "joined", 2), "write");
  EXPECT_EQ(WEXITSTATUS(joining.Stop()), 0) << joining.Output();
}

TEST_F(ServerTest, ShutdownAnswersRequestsAlreadyRead) {
  auto server = StartServer({"--fsync=always"});
  RawConnection c = Connect(server->port());
  std::string frames;
  for (int i = 0; i < 500; ++i) frames += PutFrame(i + 1, absl::StrCat("s/", i), "v");
  ASSERT_TRUE(c.SendBytes(frames).ok());
  // Wait for the first answer so the server is surely mid-batch, then stop it.
  absl::StatusOr<std::string> first = c.ReadFrame();
  ASSERT_TRUE(first.ok());
  std::set<uint64_t> acknowledged = {AsResponse(*first)->request_id()};
  ::kill(server->pid(), SIGTERM);
  while (true) {
    absl::StatusOr<std::string> frame = c.ReadFrame(absl::Seconds(15));
    if (!frame.ok()) break;
    const p::Response* r = AsResponse(*frame);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->status(), p::StatusCode::Ok);
    acknowledged.insert(r->request_id());
  }
  EXPECT_EQ(WEXITSTATUS(server->WaitExit(absl::Seconds(20))), 0) << server->Output();
  auto restarted = StartServer();
  RawConnection check = Connect(restarted->port());
  uint64_t id = 1000;
  for (uint64_t request : acknowledged) {
    EXPECT_EQ(GetValue(check, absl::StrCat("s/", request - 1), id++), "v") << request;
  }
}

// Consensus keys (docs/cluster.md, "Compare-and-set") on one node: they
// live in the control plane's state, not the engine; a node restarted
// without the flag still routes them there (the committed prefixes are kept
// beside its control-plane state); and a store that already held data
// commits no prefixes, so no key it holds is hidden.
TEST_F(ServerTest, ConsensusPrefixesAreKeptAcrossRestartsAndNeverHideExistingKeys) {
  auto get = [](const LogkvdProcess& server, const std::string& key) {
    absl::StatusOr<HttpAnswer> answer = Fetch(server.http_port(), "GET", "/v1/kv/" + key);
    return answer.ok() ? absl::StrCat(answer->status, " ", answer->body) : answer.status().ToString();
  };
  {
    auto server = StartServer({"--consensus-prefix=cfg/"});
    ASSERT_TRUE(server->running());
    // The first node commits its flag in the background: a write waits
    // (bounded) for it.
    absl::StatusOr<HttpAnswer> put;
    for (int i = 0; i < 100; ++i) {
      put = Fetch(server->http_port(), "PUT", "/v1/kv/cfg/a", {{"If-None-Match", "*"}}, "one");
      if (put.ok() && put->status != 503) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->status, 200) << put->body;
    EXPECT_EQ(get(*server, "cfg/a"), "200 one");
    EXPECT_EQ(server->Stop(), 0);
  }
  std::string saved = ReadFileBytes(DataDir() + "/control/consensus_prefixes");
  EXPECT_EQ(saved, "cfg/\n");
  {
    // Without the flag: still a consensus key, and a warning says so.
    auto server = StartServer();
    ASSERT_TRUE(server->running());
    EXPECT_EQ(get(*server, "cfg/a"), "200 one");
    absl::StatusOr<HttpAnswer> put =
        Fetch(server->http_port(), "PUT", "/v1/kv/cfg/a", {{"If-Match", "\"1\""}}, "two");
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->status, 200) << put->body;
    EXPECT_EQ(get(*server, "cfg/a"), "200 two");
    server->Stop();
    EXPECT_TRUE(absl::StrContains(server->Output(), "the committed prefixes apply"))
        << server->Output();
  }
  // A store with data whose control-plane state is gone (a new cluster on
  // old data): no prefixes are committed, and its keys stay readable.
  const std::string other = dir_.path() + "/other";
  {
    auto server = StartServer({}, other);
    ASSERT_TRUE(server->running());
    absl::StatusOr<HttpAnswer> put = Fetch(server->http_port(), "PUT", "/v1/kv/cfg/old", {}, "kept");
    ASSERT_TRUE(put.ok() && put->status == 200);
    EXPECT_EQ(server->Stop(), 0);
  }
  std::filesystem::remove_all(other + "/control");
  {
    auto server = StartServer({"--consensus-prefix=cfg/"}, other);
    ASSERT_TRUE(server->running());
    EXPECT_EQ(get(*server, "cfg/old"), "200 kept");
    // Once nothing is committed as consensus, the key stays the engine's.
    bool warned = false;
    for (int i = 0; i < 100 && !warned; ++i) {
      absl::SleepFor(absl::Milliseconds(50));
      warned = absl::StrContains(server->Output(), "the committed prefixes apply");
    }
    EXPECT_TRUE(warned) << server->Output();
    EXPECT_EQ(get(*server, "cfg/old"), "200 kept");
    EXPECT_EQ(ReadFileBytes(other + "/control/consensus_prefixes"), "");
  }
}

// Concurrent reads of a consensus key share their KvSync log entries: each
// read still waits for one proposed after it arrived, but the reads that
// arrive while one is in flight wait together for the next. Counted by the
// proposals of the node (alone, so its control plane's leader).
TEST_F(ServerTest, ConcurrentConsensusReadsShareTheirLogEntries) {
  auto server = StartServer({"--consensus-prefix=c:"});
  ASSERT_TRUE(server->running());
  absl::StatusOr<HttpAnswer> put;
  for (int i = 0; i < 100; ++i) {  // the first node commits its flag in the background
    put = Fetch(server->http_port(), "PUT", "/v1/kv/c:k", {}, "shared");
    if (put.ok() && put->status != 503) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_EQ(put->status, 200) << put->body;
  auto proposals = [&]() -> int64_t {
    absl::StatusOr<HttpAnswer> metrics =
        Fetch(server->http_port(), "GET", "/metrics", {{"Accept", "text/plain"}});
    if (!metrics.ok()) return -1;
    const std::string name = "\nlogkv_control_proposals_total ";
    const size_t at = metrics->body.find(name);
    if (at == std::string::npos) return -1;
    return std::stoll(metrics->body.substr(at + name.size()));
  };
  const int64_t before = proposals();
  ASSERT_GE(before, 1);

  constexpr int kClients = 16;
  constexpr int kReadsEach = 8;
  std::atomic<int> read{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kClients; ++t) {
    clients.emplace_back([&] {
      for (int i = 0; i < kReadsEach; ++i) {
        absl::StatusOr<HttpAnswer> answer = Fetch(server->http_port(), "GET", "/v1/kv/c:k");
        if (answer.ok() && answer->status == 200 && answer->body == "shared") ++read;
      }
    });
  }
  for (std::thread& client : clients) client.join();
  EXPECT_EQ(read.load(), kClients * kReadsEach);
  // The figure is refreshed by the control plane's tick (100 ms): taken once
  // two readings a few ticks apart agree.
  int64_t after = proposals();
  for (int i = 0; i < 40; ++i) {
    absl::SleepFor(absl::Milliseconds(300));
    const int64_t again = proposals();
    if (again == after && after > before) break;
    after = again;
  }
  const int64_t entries = after - before;
  // Without sharing every read is an entry of its own (131 entries for the
  // 128 reads, measured); with it, reads that overlap share one. How many
  // overlap depends on the machine's speed (81 entries under the
  // sanitizers in one run), so the bound is the one sharing must beat.
  EXPECT_LT(entries, kClients * kReadsEach)
      << entries << " log entries for " << kClients * kReadsEach << " reads";
  EXPECT_GT(entries, 0);
  EXPECT_EQ(server->Stop(), 0) << server->Output();
}

// A data directory on a small tmpfs that fills up (needs the right to
// mount; skipped elsewhere): writes are refused as 507 over HTTP and
// InsufficientStorage over the protocol, /health says degraded and why, and
// all of it clears once space is freed.
TEST_F(ServerTest, AFullDiskIsInsufficientStorageAndHealthSaysWhy) {
  ScopedTmpfs tmpfs(dir_.path() + "/tmpfs", "1m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  const std::string filler = dir_.path() + "/tmpfs/filler";
  WriteFileBytes(filler, std::string(256 << 10, 'f'));
  auto server = StartServer({"--shards=1", "--segment_bytes=65536"}, dir_.path() + "/tmpfs/data");
  ASSERT_TRUE(server->running());

  const std::string value(4000, 'v');
  HttpAnswer refused;
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<HttpAnswer> answer =
        Fetch(server->http_port(), "PUT", absl::StrCat("/v1/kv/key-", i), {}, value);
    ASSERT_TRUE(answer.ok()) << answer.status();
    if (answer->status != 200) {
      refused = *answer;
      break;
    }
  }
  EXPECT_EQ(refused.status, 507) << refused.status_line << " " << refused.body;
  EXPECT_NE(refused.body.find("No space left on device"), std::string::npos) << refused.body;
  RawConnection c = Connect(server->port());
  const std::string put = Call(c, PutFrame(1, "binary", value), 1);
  EXPECT_EQ(CodeOf(put), p::StatusCode::InsufficientStorage);
  EXPECT_EQ(p::StatusFromResponse(*AsResponse(put)).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ValueOf(Call(c, GetFrame(2, "key-0"), 2)), value) << "reads go on";

  absl::StatusOr<HttpAnswer> health = Fetch(server->http_port(), "GET", "/health");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->Json().value("status", ""), "degraded") << health->body;
  EXPECT_NE(health->Json().value("reason", "").find("disk full"), std::string::npos)
      << health->body;
  // /health is public: it names no file of the server.
  EXPECT_EQ(health->body.find(".log"), std::string::npos) << health->body;
  EXPECT_EQ(health->body.find("shard-"), std::string::npos) << health->body;

  ASSERT_EQ(::unlink(filler.c_str()), 0);
  EXPECT_EQ(CodeOf(Call(c, PutFrame(3, "binary", value), 3)), p::StatusCode::Ok);
  health = Fetch(server->http_port(), "GET", "/health");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->Json().value("status", ""), "healthy") << health->body;
  EXPECT_FALSE(health->Json().contains("reason")) << health->body;
  absl::StatusOr<HttpAnswer> metrics = Fetch(server->http_port(), "GET", "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->Json().value("shards_refusing_writes", -1), 0) << metrics->body;
  EXPECT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
}

// The control plane's Raft log on a disk that fills up, written by several
// clients at once (each consensus-key write is a log entry): the writes are
// refused with a clear error and the node keeps running (libraft must never
// see several appends fail together); once space is freed they are taken
// again. Needs the right to mount; skipped elsewhere.
TEST_F(ServerTest, AFullDiskUnderTheControlPlaneRefusesItsWritesAndTheNodeLives) {
  ScopedTmpfs tmpfs(dir_.path() + "/tmpfs", "96m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  auto server = StartServer({"--shards=1", "--segment_bytes=1048576", "--consensus-prefix=c:"},
                            dir_.path() + "/tmpfs/data");
  ASSERT_TRUE(server->running());
  // Leaves about 44 MiB free: the writes fill that (the control plane keeps
  // the last 32 MiB for its log; without that, until the disk is full).
  const std::string filler = dir_.path() + "/tmpfs/filler";
  {
    const std::filesystem::space_info space = std::filesystem::space(dir_.path() + "/tmpfs");
    ASSERT_GT(space.available, 48u << 20);
    WriteFileBytes(filler, std::string(space.available - (44u << 20), 'f'));
  }
  const std::string value(60'000, 'v');
  std::atomic<int> ok{0};
  std::atomic<int> refused{0};
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::string last_refusal;
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < 1000 && !stop.load(); ++i) {
        absl::StatusOr<HttpAnswer> answer = Fetch(
            server->http_port(), "PUT", absl::StrCat("/v1/kv/c:", t, "-", i % 4), {}, value);
        if (!answer.ok()) return;  // the node is gone: checked below
        if (answer->status == 200) {
          ++ok;
        } else {
          absl::MutexLock lock(&mu);
          last_refusal = absl::StrCat(answer->status, " ", answer->body);
          if (++refused > 64) stop = true;
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  int status = 0;
  ASSERT_EQ(::waitpid(server->pid(), &status, WNOHANG), 0)
      << "logkvd exited (" << status << ") after " << ok.load() << " writes:\n"
      << server->Output();
  EXPECT_GT(ok.load(), 0) << last_refusal;
  EXPECT_GT(refused.load(), 0) << ok.load() << " writes all taken: the disk never filled";
  EXPECT_TRUE(absl::StrContains(last_refusal, "507") ||
              absl::StrContains(last_refusal, "disk") ||
              absl::StrContains(last_refusal, "space"))
      << last_refusal;

  ASSERT_EQ(::unlink(filler.c_str()), 0);
  HttpAnswer after;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30); absl::Now() < deadline;) {
    absl::StatusOr<HttpAnswer> answer =
        Fetch(server->http_port(), "PUT", "/v1/kv/c:after", {}, "room again");
    ASSERT_TRUE(answer.ok()) << answer.status() << server->Output();
    after = *answer;
    if (after.status == 200) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(Fetch(server->http_port(), "GET", "/v1/kv/c:after")->body, "room again");
  EXPECT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
}

// A damaged record stops start-up with a pointer to --repair; --repair (here
// from LOGKV_REPAIR) salvages the rest, logs what it dropped, and serves.
TEST_F(ServerTest, RepairSalvagesADamagedDataDirectory) {
  auto ValueFor = [](int i) { return absl::StrCat("value-", i, "-", std::string(40, 'a' + i)); };
  {
    auto server = StartServer({"--shards=1"});
    RawConnection c = Connect(server->port());
    for (int i = 0; i < 20; ++i) {
      ASSERT_EQ(CodeOf(Call(c, PutFrame(i + 1, absl::StrCat("k", i), ValueFor(i)), i + 1)),
                p::StatusCode::Ok);
    }
    ASSERT_EQ(WEXITSTATUS(server->Stop()), 0) << server->Output();
  }
  // Damage k5's value; without hint files start-up reads every record.
  RemoveAllHintFiles(DataDir());
  bool damaged = false;
  for (const std::string& segment : ListSegmentFiles(DataDir(), 0)) {
    std::string bytes = ReadFileBytes(segment);
    const size_t at = bytes.find(ValueFor(5));
    if (at == std::string::npos) continue;
    bytes[at + 10] ^= 0x01;
    WriteFileBytes(segment, bytes);
    damaged = true;
  }
  ASSERT_TRUE(damaged);

  {
    LogkvdProcess plain(LOGKVD_PATH, {"--data_dir=" + DataDir()});
    EXPECT_FALSE(plain.Start().ok());
    EXPECT_NE(plain.Output().find("--repair"), std::string::npos) << plain.Output();
  }
  ::setenv("LOGKV_REPAIR", "true", 1);
  auto server = StartServer();
  ::unsetenv("LOGKV_REPAIR");
  ASSERT_TRUE(server->running());
  const std::string log = server->Output();
  EXPECT_NE(log.find("repair: skipped"), std::string::npos) << log;
  EXPECT_NE(log.find("repair done"), std::string::npos) << log;
  RawConnection c = Connect(server->port());
  uint64_t id = 100;
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(GetValue(c, absl::StrCat("k", i), id++), i == 5 ? "NOT_FOUND" : ValueFor(i)) << i;
  }
  EXPECT_EQ(CodeOf(Call(c, PutFrame(id, "after", "repair"), id)), p::StatusCode::Ok);
}

}  // namespace
}  // namespace logkv::test
