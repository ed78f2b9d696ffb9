// Tests of logkv::Client and the logkv CLI against the real logkvd, run as a
// child process on a loopback port with its data in a temporary directory
// and always stopped at the end (tests/server/logkvd_process.h). A small
// in-process fake node covers what a well-behaved logkvd never does (never
// answering, speaking another protocol version).
//
// Every wait is bounded; no test asserts on wall-clock speed.

#include "logkv/client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "tests/engine/test_util.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

namespace p = ::logkv::protocol;

std::string Address(int port) { return absl::StrCat("127.0.0.1:", port); }

class ClientTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // Clients first, so they do not watch their nodes go away.
    clients_.clear();
    for (auto& server : servers_) server->Stop(absl::Seconds(10));
    servers_.clear();
  }

  // Starts logkvd on data directory dir_/name; port 0 lets the kernel choose
  // (no race with other processes), a given port is reused for restarts.
  LogkvdProcess* StartServer(const std::string& name, int port = 0,
                             const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--data_dir=" + dir_.Subdir(name), "--threads=2",
                                     "--fsync=never", "--log_level=warning"};
    args.insert(args.end(), extra.begin(), extra.end());
    if (port != 0) args.push_back("--listen=" + Address(port));
    auto server = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
    absl::Status started = server->Start();
    // A fixed port can be taken for a moment after a stop (the kernel frees it
    // lazily): try again a few times.
    for (int attempt = 0; !started.ok() && port != 0 && attempt < 20; ++attempt) {
      absl::SleepFor(absl::Milliseconds(100));
      server = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
      started = server->Start();
    }
    EXPECT_TRUE(started.ok()) << started;
    servers_.push_back(std::move(server));
    return servers_.back().get();
  }

  static ClientOptions OptionsFor(std::vector<std::string> nodes) {
    ClientOptions options;
    options.nodes = std::move(nodes);
    options.connect_timeout = absl::Seconds(5);
    options.request_timeout = absl::Seconds(20);
    return options;
  }

  Client* Connect(const ClientOptions& options) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) return nullptr;
    clients_.push_back(std::move(*client));
    return clients_.back().get();
  }
  Client* Connect(int port) { return Connect(OptionsFor({Address(port)})); }

  ScopedTempDir dir_;
  std::vector<std::unique_ptr<LogkvdProcess>> servers_;
  std::vector<std::unique_ptr<Client>> clients_;
};

// Waits (bounded) until count reaches target; the count is guarded by mu.
bool AwaitCount(absl::Mutex& mu, const int& count, int target, absl::Duration timeout) {
  absl::MutexLock lock(&mu);
  auto reached = [&count, target]() { return count >= target; };
  return mu.AwaitWithTimeout(absl::Condition(&reached), timeout);
}

TEST_F(ClientTest, EveryOperation) {
  LogkvdProcess* server = StartServer("node");
  Client* client = Connect(server->port());
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->connected_node(), Address(server->port()));
  ASSERT_TRUE(client->Ping().ok());

  absl::StatusOr<WriteResult> first = client->Put("fruit/apple", "red");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->version, 1u);
  absl::StatusOr<WriteResult> second = client->Put("fruit/apple", "green");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->version, 2u);

  absl::StatusOr<Value> value = client->Get("fruit/apple");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->value, "green");
  EXPECT_EQ(value->version, 2u);
  EXPECT_EQ(value->expiry_unix_ms, 0);
  absl::StatusOr<Value> strong = client->Get("fruit/apple", Consistency::kStrong);
  ASSERT_TRUE(strong.ok()) << strong.status();
  EXPECT_EQ(strong->value, "green");

  absl::StatusOr<Value> current = client->GetVersion("fruit/apple", 2);
  ASSERT_TRUE(current.ok()) << current.status();
  EXPECT_EQ(current->value, "green");

  // Binary keys and values travel unchanged.
  const std::string binary_key("bin\0key\xff", 8);
  const std::string binary_value("\0\x01\x02\xfe\xff", 5);
  ASSERT_TRUE(client->Put(binary_key, binary_value).ok());
  absl::StatusOr<Value> binary = client->Get(binary_key);
  ASSERT_TRUE(binary.ok()) << binary.status();
  EXPECT_EQ(binary->value, binary_value);

  // Compare-and-set, on a put and on a delete.
  PutOptions stale;
  stale.if_version = 1;
  absl::StatusOr<WriteResult> refused = client->Put("fruit/apple", "blue", stale);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "fruit/apple")) << refused.status();
  PutOptions must_be_absent;
  must_be_absent.if_version = 0;
  EXPECT_TRUE(absl::IsFailedPrecondition(client->Put("fruit/apple", "x", must_be_absent).status()));
  ASSERT_TRUE(client->Put("fruit/cherry", "dark", must_be_absent).ok());
  PutOptions matching;
  matching.if_version = 2;
  absl::StatusOr<WriteResult> swapped = client->Put("fruit/apple", "yellow", matching);
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  EXPECT_EQ(swapped->version, 3u);
  DeleteOptions stale_delete;
  stale_delete.if_version = 1;
  EXPECT_TRUE(absl::IsFailedPrecondition(client->Delete("fruit/apple", stale_delete).status()));

  // Delete, then the key is gone and the error names it.
  ASSERT_TRUE(client->Delete("fruit/cherry").ok());
  absl::StatusOr<Value> gone = client->Get("fruit/cherry");
  EXPECT_TRUE(absl::IsNotFound(gone.status())) << gone.status();
  EXPECT_TRUE(absl::StrContains(gone.status().message(), "fruit/cherry")) << gone.status();
  EXPECT_TRUE(absl::StrContains(gone.status().message(), Address(server->port()))) << gone.status();

  // Batch: one status per operation, in order.
  absl::StatusOr<std::vector<absl::Status>> batch = client->Batch({
      {false, "fruit/banana", "yellow", 0},
      {false, "fruit/kiwi", "brown", 0},
      {true, "fruit/kiwi", "", 0},
      {false, "veg/leek", "white", 0},
  });
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->size(), 4u);
  for (const absl::Status& status : *batch) EXPECT_TRUE(status.ok()) << status;

  // Scan by prefix, keys only, and page by page with the cursor.
  ScanOptions scan;
  scan.prefix = "fruit/";
  absl::StatusOr<ScanPage> page = client->Scan(scan);
  ASSERT_TRUE(page.ok()) << page.status();
  std::vector<std::string> keys;
  for (const ScanItem& item : page->items) keys.push_back(item.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"fruit/apple", "fruit/banana"}));
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].value.value, "yellow");
  EXPECT_TRUE(page->next_cursor.empty());
  scan.keys_only = true;
  page = client->Scan(scan);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_TRUE(page->items[0].value.value.empty());

  ScanOptions paged;
  paged.limit = 1;
  std::vector<std::string> all_keys;
  for (int round = 0; round < 20; ++round) {
    absl::StatusOr<ScanPage> one = client->Scan(paged);
    ASSERT_TRUE(one.ok()) << one.status();
    for (const ScanItem& item : one->items) all_keys.push_back(item.key);
    if (one->next_cursor.empty()) break;
    paged.after_key = one->next_cursor;
  }
  EXPECT_EQ(all_keys,
            (std::vector<std::string>{binary_key, "fruit/apple", "fruit/banana", "veg/leek"}));

  absl::StatusOr<ServerStats> stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->keys, 4u);
  EXPECT_GT(stats->shard_count, 0u);
  EXPECT_EQ(stats->last_sequences.size(), stats->shard_count);
  EXPECT_GE(stats->puts, 7u);
  EXPECT_GE(stats->connections, 1u);

  // The asynchronous calls.
  absl::Notification put_done, get_done, delete_done;
  absl::StatusOr<WriteResult> async_put, async_delete;
  absl::StatusOr<Value> async_get;
  client->PutAsync("async", "value", {}, [&](absl::StatusOr<WriteResult> result) {
    async_put = std::move(result);
    put_done.Notify();
  });
  ASSERT_TRUE(put_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(async_put.ok()) << async_put.status();
  client->GetAsync("async", [&](absl::StatusOr<Value> result) {
    async_get = std::move(result);
    get_done.Notify();
  });
  ASSERT_TRUE(get_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(async_get.ok()) << async_get.status();
  EXPECT_EQ(async_get->value, "value");
  client->DeleteAsync("async", {}, [&](absl::StatusOr<WriteResult> result) {
    async_delete = std::move(result);
    delete_done.Notify();
  });
  ASSERT_TRUE(delete_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(async_delete.ok()) << async_delete.status();
  EXPECT_TRUE(absl::IsNotFound(client->Get("async").status()));
}

TEST_F(ClientTest, ServerLimitErrorsNameTheLimit) {
  LogkvdProcess* server = StartServer("node");
  Client* client = Connect(server->port());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<WriteResult> empty_key = client->Put("", "v");
  EXPECT_TRUE(absl::IsInvalidArgument(empty_key.status())) << empty_key.status();
  absl::StatusOr<WriteResult> long_key = client->Put(std::string(5000, 'k'), "v");
  EXPECT_TRUE(absl::IsInvalidArgument(long_key.status())) << long_key.status();
  EXPECT_TRUE(absl::StrContains(long_key.status().message(), "max_key_bytes")) << long_key.status();
  // The connection survives refused requests.
  EXPECT_TRUE(client->Put("k", "v").ok());

  // A request larger than the client's own frame limit is refused before
  // it is sent.
  ClientOptions small = OptionsFor({Address(server->port())});
  small.max_frame_bytes = 1024;
  Client* limited = Connect(small);
  ASSERT_NE(limited, nullptr);
  absl::StatusOr<WriteResult> too_big = limited->Put("big", std::string(2000, 'v'));
  EXPECT_TRUE(absl::IsResourceExhausted(too_big.status())) << too_big.status();
  EXPECT_TRUE(absl::StrContains(too_big.status().message(), "max_frame_bytes (1024)"))
      << too_big.status();
  EXPECT_TRUE(limited->Put("small", "v").ok());
}

TEST_F(ClientTest, PipelinedAsyncPutsAllComplete) {
  LogkvdProcess* server = StartServer("node");
  Client* client = Connect(server->port());
  ASSERT_NE(client, nullptr);
  constexpr int kPuts = 10'000;
  absl::Mutex mu;
  int completed = 0;
  int failed = 0;
  std::string first_failure;
  for (int i = 0; i < kPuts; ++i) {
    client->PutAsync(absl::StrCat("pipelined/", i), absl::StrCat("value-", i), {},
                     [&](absl::StatusOr<WriteResult> result) {
                       absl::MutexLock lock(&mu);
                       if (!result.ok() && failed++ == 0) {
                         first_failure = result.status().ToString();
                       }
                       ++completed;
                     });
  }
  ASSERT_TRUE(AwaitCount(mu, completed, kPuts, absl::Seconds(120)));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(failed, 0) << first_failure;
  }
  for (int i : {0, 1, 4999, kPuts - 1}) {
    absl::StatusOr<Value> value = client->Get(absl::StrCat("pipelined/", i));
    ASSERT_TRUE(value.ok()) << value.status();
    EXPECT_EQ(value->value, absl::StrCat("value-", i));
  }
  absl::StatusOr<ServerStats> stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->keys, static_cast<uint64_t>(kPuts));
}

TEST_F(ClientTest, HundredConcurrentClients) {
  LogkvdProcess* server = StartServer("node");
  constexpr int kClients = 100;
  constexpr int kKeysPerClient = 20;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      absl::StatusOr<std::unique_ptr<Client>> client =
          Client::Connect(OptionsFor({Address(server->port())}));
      if (!client.ok()) {
        ADD_FAILURE() << client.status();
        errors.fetch_add(1);
        return;
      }
      for (int k = 0; k < kKeysPerClient; ++k) {
        const std::string key = absl::StrCat("client", c, "/key", k);
        if (absl::Status put = (*client)->Put(key, key).status(); !put.ok()) {
          ADD_FAILURE() << put;
          errors.fetch_add(1);
          continue;
        }
        absl::StatusOr<Value> value = (*client)->Get(key);
        if (!value.ok() || value->value != key) {
          ADD_FAILURE() << key << ": " << value.status();
          errors.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  Client* checker = Connect(server->port());
  ASSERT_NE(checker, nullptr);
  absl::StatusOr<ServerStats> stats = checker->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->keys, static_cast<uint64_t>(kClients * kKeysPerClient));
}

TEST_F(ClientTest, OneClientSharedByManyThreads) {
  LogkvdProcess* server = StartServer("node");
  Client* client = Connect(server->port());
  ASSERT_NE(client, nullptr);
  constexpr int kThreads = 16;
  constexpr int kOperations = 200;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOperations; ++i) {
        const std::string key = absl::StrCat("thread", t, "/", i % 10);
        const std::string value = absl::StrCat(i);
        if (!client->Put(key, value).ok()) errors.fetch_add(1);
        absl::StatusOr<Value> read = client->Get(key);
        // Only this thread writes its keys, so it reads its own last write.
        if (!read.ok() || read->value != value) errors.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
}

// Runs a Watch on its own thread and collects events until `wanted` arrived.
class WatchRecorder {
 public:
  WatchRecorder(Client* client, std::string prefix, std::vector<uint64_t> after, size_t wanted)
      : client_(client), wanted_(wanted) {
    thread_ = std::thread([this, prefix = std::move(prefix), after = std::move(after)] {
      absl::Status status = client_->Watch(prefix, after, [this](const Event& event) {
        absl::MutexLock lock(&mu_);
        events_.push_back(event);
        return events_.size() < wanted_;
      });
      absl::MutexLock lock(&mu_);
      status_ = status;
      finished_ = true;
    });
  }
  ~WatchRecorder() { thread_.join(); }

  // True when the watch ended within timeout.
  bool AwaitFinished(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&finished_), timeout);
  }
  size_t EventCount() {
    absl::MutexLock lock(&mu_);
    return events_.size();
  }
  std::vector<Event> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  absl::Status status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  Client* const client_;
  const size_t wanted_;
  absl::Mutex mu_;
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

TEST_F(ClientTest, WatchSeesPutsAndDeletesOfAnotherClient) {
  LogkvdProcess* server = StartServer("node");
  Client* watcher = Connect(server->port());
  Client* writer = Connect(server->port());
  ASSERT_NE(watcher, nullptr);
  ASSERT_NE(writer, nullptr);
  // Resuming from the current sequences makes the watch see exactly the
  // writes below, however late it starts.
  absl::StatusOr<ServerStats> stats = writer->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();

  {
    WatchRecorder recorder(watcher, "watched/", stats->last_sequences, 3);
    ASSERT_TRUE(writer->Put("watched/a", "1").ok());
    ASSERT_TRUE(writer->Put("other/b", "2").ok());
    ASSERT_TRUE(writer->Delete("watched/a").ok());
    ASSERT_TRUE(writer->Put("watched/c", "3").ok());
    if (!recorder.AwaitFinished(absl::Seconds(30))) {
      // Destroying the watching client ends the watch, so the thread joins.
      ADD_FAILURE() << "watch saw " << recorder.EventCount() << " events, wanted 3";
      clients_.erase(clients_.begin());
      ASSERT_TRUE(recorder.AwaitFinished(absl::Seconds(30)));
      return;
    }
    EXPECT_TRUE(recorder.status().ok()) << recorder.status();
    std::vector<Event> events = recorder.events();
    ASSERT_EQ(events.size(), 3u);
    // Shards stream independently: order holds per key (one key, one shard),
    // not across keys.
    std::vector<Event> of_a, of_c;
    for (const Event& event : events) {
      EXPECT_NE(event.key, "other/b");
      (event.key == "watched/a" ? of_a : of_c).push_back(event);
    }
    ASSERT_EQ(of_a.size(), 2u);
    EXPECT_EQ(of_a[0].type, Event::Type::kPut);
    EXPECT_EQ(of_a[0].value, "1");
    EXPECT_EQ(of_a[1].type, Event::Type::kDelete);
    EXPECT_GT(of_a[1].sequence, of_a[0].sequence);
    ASSERT_EQ(of_c.size(), 1u);
    EXPECT_EQ(of_c[0].key, "watched/c");
    EXPECT_EQ(of_c[0].type, Event::Type::kPut);
    EXPECT_EQ(of_c[0].value, "3");
  }
  // The watching client stopped its watch and goes on serving calls.
  ASSERT_TRUE(watcher->Put("after-watch", "ok").ok());
  absl::StatusOr<Value> value = watcher->Get("after-watch");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->value, "ok");
}

TEST_F(ClientTest, WatchFromNowSeesLaterWrites) {
  LogkvdProcess* server = StartServer("node");
  Client* watcher = Connect(server->port());
  Client* writer = Connect(server->port());
  ASSERT_NE(watcher, nullptr);
  ASSERT_NE(writer, nullptr);
  WatchRecorder recorder(watcher, "now/", {}, 1);
  // The watch starts at some moment after this: keep writing until it sees one.
  for (int i = 0; i < 300 && !recorder.AwaitFinished(absl::Milliseconds(100)); ++i) {
    ASSERT_TRUE(writer->Put(absl::StrCat("now/", i), "v").ok());
  }
  ASSERT_TRUE(recorder.AwaitFinished(absl::Seconds(10)));
  EXPECT_TRUE(recorder.status().ok()) << recorder.status();
  ASSERT_EQ(recorder.events().size(), 1u);
  EXPECT_TRUE(absl::StartsWith(recorder.events()[0].key, "now/"));
}

TEST_F(ClientTest, TtlExpirySeenByClients) {
  LogkvdProcess* server = StartServer("node");
  Client* client = Connect(server->port());
  ASSERT_NE(client, nullptr);
  PutOptions options;
  options.ttl_ms = 200;
  ASSERT_TRUE(client->Put("short-lived", "v", options).ok());
  ASSERT_TRUE(client->Put("long-lived", "v").ok());
  absl::StatusOr<Value> fresh = client->Get("short-lived");
  if (fresh.ok()) {
    EXPECT_GT(fresh->expiry_unix_ms, 0);
  } else {
    // A very slow machine may already be past 200 ms.
    EXPECT_TRUE(absl::IsNotFound(fresh.status())) << fresh.status();
  }
  bool expired = false;
  for (int i = 0; i < 200 && !expired; ++i) {
    absl::StatusOr<Value> value = client->Get("short-lived");
    if (absl::IsNotFound(value.status())) {
      expired = true;
    } else {
      ASSERT_TRUE(value.ok()) << value.status();
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  EXPECT_TRUE(expired);
  EXPECT_TRUE(client->Get("long-lived").ok());
}

TEST_F(ClientTest, RestartKeepsDataAndClientReconnects) {
  LogkvdProcess* server = StartServer("node");
  const int port = server->port();
  Client* client = Connect(port);
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(client->Put(absl::StrCat("durable/", i), absl::StrCat(i)).ok());
  }
  ASSERT_NE(server->Stop(absl::Seconds(20)), -1);

  // With the node down a call fails as Unavailable, naming the node.
  absl::StatusOr<Value> down = client->Get("durable/0");
  EXPECT_TRUE(absl::IsUnavailable(down.status())) << down.status();
  EXPECT_TRUE(absl::StrContains(down.status().message(), Address(port))) << down.status();
  EXPECT_EQ(client->connected_node(), "");

  StartServer("node", port);
  absl::StatusOr<Value> back = client->Get("durable/0");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(client->connected_node(), Address(port));
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Value> value = client->Get(absl::StrCat("durable/", i));
    ASSERT_TRUE(value.ok()) << i << ": " << value.status();
    EXPECT_EQ(value->value, absl::StrCat(i));
  }
}

TEST_F(ClientTest, FailsOverToTheNextNode) {
  LogkvdProcess* first = StartServer("first");
  LogkvdProcess* second = StartServer("second");
  const std::string first_address = Address(first->port());
  const std::string second_address = Address(second->port());
  Client* client = Connect(OptionsFor({first_address, second_address}));
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->connected_node(), first_address);
  ASSERT_TRUE(client->Put("k", "on-first").ok());

  first->Kill();
  // The call in flight when the node died may fail; the next one fails over.
  absl::Status put;
  for (int attempt = 0; attempt < 3; ++attempt) {
    put = client->Put("k", "on-second").status();
    if (put.ok()) break;
    EXPECT_TRUE(absl::IsUnavailable(put)) << put;
  }
  ASSERT_TRUE(put.ok()) << put;
  EXPECT_EQ(client->connected_node(), second_address);
  absl::StatusOr<Value> value = client->Get("k");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->value, "on-second");
}

// A node that goes silent (stopped, not dead: its socket stays open) is
// given up after a request times out, and the next call fails over.
TEST_F(ClientTest, ATimeoutGivesUpASilentNodeAndTheNextCallFailsOver) {
  LogkvdProcess* first = StartServer("first");
  LogkvdProcess* second = StartServer("second");
  const std::string second_address = Address(second->port());
  ClientOptions options = OptionsFor({Address(first->port()), second_address});
  options.request_timeout = absl::Milliseconds(300);
  Client* client = Connect(options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Put("k", "on-first").ok());
  ASSERT_EQ(::kill(first->pid(), SIGSTOP), 0);
  // Bounded wait until the kernel shows the process stopped ("T" in /proc).
  for (int i = 0; i < 500; ++i) {
    std::ifstream stat(absl::StrCat("/proc/", first->pid(), "/stat"));
    std::string pid_field, name, state;
    stat >> pid_field >> name >> state;
    if (state == "T") break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::Status put = client->Put("k", "while-silent").status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(put) || absl::IsUnavailable(put)) << put;
  // Bounded: the first calls may still meet the old connection.
  for (int attempt = 0; attempt < 5 && client->connected_node() != second_address; ++attempt) {
    put = client->Put("k", "on-second").status();
  }
  EXPECT_TRUE(put.ok()) << put;
  EXPECT_EQ(client->connected_node(), second_address);
  ASSERT_EQ(::kill(first->pid(), SIGCONT), 0);
}

TEST_F(ClientTest, ReadsAreRetriedAfterTransportFailureWhenAsked) {
  LogkvdProcess* first = StartServer("first");
  LogkvdProcess* second = StartServer("second");
  ClientOptions options = OptionsFor({Address(first->port()), Address(second->port())});
  options.retries = 2;
  Client* client = Connect(options);
  ASSERT_NE(client, nullptr);
  first->Kill();
  // Whether or not the first attempt meets the dead connection, the read
  // ends on the second node.
  absl::StatusOr<Value> value = client->Get("missing");
  EXPECT_TRUE(absl::IsNotFound(value.status())) << value.status();
  EXPECT_EQ(client->connected_node(), Address(second->port()));
}

TEST_F(ClientTest, BadNodeListsGiveClearErrors) {
  absl::StatusOr<std::unique_ptr<Client>> none = Client::Connect(OptionsFor({}));
  EXPECT_TRUE(absl::IsInvalidArgument(none.status())) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "nodes")) << none.status();

  absl::StatusOr<std::unique_ptr<Client>> no_port = Client::Connect(OptionsFor({"localhost"}));
  EXPECT_TRUE(absl::IsInvalidArgument(no_port.status())) << no_port.status();
  EXPECT_TRUE(absl::StrContains(no_port.status().message(), "localhost")) << no_port.status();

  absl::StatusOr<std::unique_ptr<Client>> bad_port =
      Client::Connect(OptionsFor({"127.0.0.1:99999"}));
  EXPECT_TRUE(absl::IsInvalidArgument(bad_port.status())) << bad_port.status();
  EXPECT_TRUE(absl::StrContains(bad_port.status().message(), "99999")) << bad_port.status();

  // Nobody listens on these: every node is named with its reason.
  const std::string a = Address(PickFreePort());
  const std::string b = Address(PickFreePort());
  absl::StatusOr<std::unique_ptr<Client>> refused = Client::Connect(OptionsFor({a, b}));
  EXPECT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), a)) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), b)) << refused.status();

  absl::StatusOr<std::unique_ptr<Client>> unresolvable =
      Client::Connect(OptionsFor({"no-such-host.invalid:7070"}));
  EXPECT_TRUE(absl::IsUnavailable(unresolvable.status())) << unresolvable.status();
  EXPECT_TRUE(absl::StrContains(unresolvable.status().message(), "no-such-host.invalid"))
      << unresolvable.status();
}

// A node that answers Hello (with the protocol version given) and then reads
// and ignores every request: it stands for a node that hangs.
class FakeNode {
 public:
  explicit FakeNode(uint32_t protocol_version, bool answer_hello = true)
      : protocol_version_(protocol_version), answer_hello_(answer_hello) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t length = sizeof(address);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeNode() {
    stop_.store(true);
    thread_.join();
    ::close(listen_fd_);
  }
  int port() const { return port_; }

 private:
  void Serve() {
    int connection = -1;
    auto decoder = std::make_unique<p::FrameDecoder>(1u << 20);
    bool greeted = false;
    while (!stop_.load()) {
      if (connection < 0) {
        pollfd listening{listen_fd_, POLLIN, 0};
        if (::poll(&listening, 1, 20) > 0) connection = ::accept(listen_fd_, nullptr, nullptr);
        continue;
      }
      pollfd readable{connection, POLLIN, 0};
      if (::poll(&readable, 1, 20) <= 0) continue;
      size_t available;
      char* space = decoder->WritableSpace(4096, &available);
      const ssize_t received = ::recv(connection, space, available, 0);
      if (received <= 0) {
        // The client gave the connection up: serve the next one the same way.
        ::close(connection);
        connection = -1;
        decoder = std::make_unique<p::FrameDecoder>(1u << 20);
        greeted = false;
        continue;
      }
      decoder->Commit(static_cast<size_t>(received));
      absl::StatusOr<std::optional<absl::string_view>> frame = decoder->Next();
      if (!frame.ok() || !frame->has_value() || greeted || !answer_hello_) continue;
      absl::StatusOr<const p::Request*> request = p::VerifyRequest(**frame, p::Limits());
      if (!request.ok()) break;
      flatbuffers::FlatBufferBuilder builder;
      auto node_id = builder.CreateString("fake");
      auto hello = p::CreateHelloResult(builder, protocol_version_, node_id, 1, 1u << 20);
      p::ResponseBuilder response(builder);
      response.add_request_id((*request)->request_id());
      response.add_result_type(p::Result::HelloResult);
      response.add_result(hello.Union());
      builder.FinishSizePrefixed(response.Finish());
      const absl::string_view bytes = p::FrameOf(builder);
      if (::send(connection, bytes.data(), bytes.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(bytes.size())) {
        break;
      }
      greeted = true;
    }
    if (connection >= 0) ::close(connection);
  }

  const uint32_t protocol_version_;
  const bool answer_hello_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST_F(ClientTest, UnansweredCallsTimeOut) {
  FakeNode node(p::kProtocolVersion);
  ClientOptions options = OptionsFor({Address(node.port())});
  options.request_timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  absl::StatusOr<WriteResult> put = (*client)->Put("k", "v");
  EXPECT_TRUE(absl::IsDeadlineExceeded(put.status())) << put.status();
  EXPECT_TRUE(absl::StrContains(put.status().message(), "request_timeout")) << put.status();
  EXPECT_TRUE(absl::StrContains(put.status().message(), "\"k\"")) << put.status();

  // Async calls time out too, through the reader's sweep, on a new
  // connection: the timeout above gave the silent one up, and a call sent
  // while it was being torn down fails as unavailable (bounded retries).
  absl::Status async_status;
  for (int attempt = 0; attempt < 3; ++attempt) {
    absl::Notification done;
    (*client)->GetAsync("k", [&](absl::StatusOr<Value> value) {
      async_status = value.status();
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    if (!absl::IsUnavailable(async_status)) break;
  }
  EXPECT_TRUE(absl::IsDeadlineExceeded(async_status)) << async_status;
}

TEST_F(ClientTest, SilentNodeFailsTheHelloWithinConnectTimeout) {
  FakeNode node(p::kProtocolVersion, /*answer_hello=*/false);
  ClientOptions options = OptionsFor({Address(node.port())});
  options.connect_timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_TRUE(absl::IsUnavailable(client.status())) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "connect_timeout")) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), Address(node.port())))
      << client.status();
}

TEST_F(ClientTest, OtherProtocolVersionIsRefused) {
  FakeNode node(p::kProtocolVersion + 1);
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(OptionsFor({Address(node.port())}));
  EXPECT_TRUE(absl::IsFailedPrecondition(client.status())) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "protocol version")) << client.status();
}

// ---- The CLI ---------------------------------------------------------------

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ShellQuote(absl::string_view arg) {
  std::string quoted = "'";
  for (char c : arg) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

class CliTest : public ClientTest {
 protected:
  CliResult Run(const std::vector<std::string>& args) { return RunWithInput(args, ""); }

  // As Run, with input as the CLI's standard input.
  CliResult RunWithInput(const std::vector<std::string>& args, absl::string_view input) {
    const std::string in_path = dir_.Subdir("cli.stdin");
    {
      std::FILE* in = std::fopen(in_path.c_str(), "wb");
      if (in == nullptr) {
        ADD_FAILURE() << "cannot write " << in_path;
        return CliResult();
      }
      std::fwrite(input.data(), 1, input.size(), in);
      std::fclose(in);
    }
    const std::string err_path = dir_.Subdir("cli.stderr");
    // timeout(1) bounds a CLI that would otherwise wait forever (a watch).
    std::string command = absl::StrCat("timeout -s KILL 60 ", ShellQuote(LOGKV_CLI_PATH));
    for (const std::string& arg : args) absl::StrAppend(&command, " ", ShellQuote(arg));
    absl::StrAppend(&command, " 2>", ShellQuote(err_path), " <", ShellQuote(in_path));
    CliResult result;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) {
      ADD_FAILURE() << "popen failed: " << command;
      return result;
    }
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
    const int status = ::pclose(pipe);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    result.err = ReadFileBytes(err_path);
    return result;
  }
};

TEST_F(CliTest, CommandsOutputAndExitCodes) {
  LogkvdProcess* server = StartServer("node");
  const std::string target = "--target=" + Address(server->port());

  CliResult put = Run({target, "put", "greeting", "hello world"});
  EXPECT_EQ(put.exit_code, 0) << put.err;
  EXPECT_EQ(put.out, "OK version=1\n");

  CliResult get = Run({target, "get", "greeting"});
  EXPECT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(get.out, "hello world\n");

  // The seed's form, with flags after the command and a separate flag value.
  CliResult seed_put =
      Run({"put", "--key=foo", "--value=bar", "--target", Address(server->port())});
  EXPECT_EQ(seed_put.exit_code, 0) << seed_put.err;
  CliResult seed_get = Run({"get", "--key=foo", target});
  EXPECT_EQ(seed_get.exit_code, 0) << seed_get.err;
  EXPECT_EQ(seed_get.out, "bar\n");

  CliResult missing = Run({target, "get", "no-such-key"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_TRUE(absl::StrContains(missing.err, "no-such-key")) << missing.err;

  CliResult json = Run({"get", "greeting", "--json", target});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  nlohmann::json object = nlohmann::json::parse(json.out);
  EXPECT_EQ(object["key"], "greeting");
  EXPECT_EQ(object["value"], "hello world");
  EXPECT_EQ(object["version"], 1);

  CliResult ttl = Run({target, "put", "brief", "x", "--ttl=100ms"});
  EXPECT_EQ(ttl.exit_code, 0) << ttl.err;
  CliResult cas = Run({target, "put", "greeting", "again", "--if-version=7"});
  EXPECT_EQ(cas.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(cas.err, "FAILED_PRECONDITION")) << cas.err;

  CliResult scan = Run({target, "scan", "--keys-only", "--prefix=g"});
  EXPECT_EQ(scan.exit_code, 0) << scan.err;
  EXPECT_EQ(scan.out, "greeting\n");
  CliResult scan_values = Run({target, "scan", "f"});
  EXPECT_EQ(scan_values.exit_code, 0) << scan_values.err;
  EXPECT_EQ(scan_values.out, "foo\tbar\n");

  CliResult stats = Run({target, "stats", "--json"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  nlohmann::json counters = nlohmann::json::parse(stats.out);
  EXPECT_GE(counters["puts"].get<uint64_t>(), 2u);
  EXPECT_EQ(counters["node"], Address(server->port()));

  // Membership is read over HTTP (GET /nodes): a table with this node.
  CliResult nodes = Run({"nodes", "--http_target=" + Address(server->http_port())});
  EXPECT_EQ(nodes.exit_code, 0) << nodes.err;
  EXPECT_TRUE(absl::StrContains(nodes.out, Address(server->port()))) << nodes.out;
  EXPECT_TRUE(absl::StrContains(nodes.out, "alive")) << nodes.out;
  CliResult nodes_json = Run({"nodes", "--json", "--http_target=" + Address(server->http_port())});
  ASSERT_EQ(nodes_json.exit_code, 0) << nodes_json.err;
  EXPECT_EQ(nlohmann::json::parse(nodes_json.out)["nodes"].size(), 1u) << nodes_json.out;

  CliResult del = Run({target, "del", "greeting"});
  EXPECT_EQ(del.exit_code, 0) << del.err;
  EXPECT_EQ(Run({target, "get", "greeting"}).exit_code, 1);
  CliResult seed_del = Run({"del", "--key=foo", target});
  EXPECT_EQ(seed_del.exit_code, 0) << seed_del.err;
}

// Binary keys and values in --json come as base64 with an encoding field
// (as etcdctl's JSON), text as it is; "put KEY -" reads the value from
// standard input, every byte of it.
TEST_F(CliTest, JsonEncodingsAndValuesFromStandardInput) {
  LogkvdProcess* server = StartServer("node");
  const std::string target = "--target=" + Address(server->port());
  const std::string binary("\x00\xff\x01\n\x80", 5);
  CliResult put = RunWithInput({target, "put", "bin", "-"}, binary);
  ASSERT_EQ(put.exit_code, 0) << put.err;
  CliResult text_put = RunWithInput({target, "put", "text", "-", "--json"}, "line 1\nline 2\n");
  ASSERT_EQ(text_put.exit_code, 0) << text_put.err;
  nlohmann::json written = nlohmann::json::parse(text_put.out);
  EXPECT_EQ(written["key"], "text");
  EXPECT_EQ(written["key_encoding"], "utf-8");
  // --value=- is a dash, not standard input.
  ASSERT_EQ(RunWithInput({target, "put", "--key=dash", "--value=-"}, "ignored").exit_code, 0);
  EXPECT_EQ(Run({target, "get", "dash"}).out, "-\n");

  CliResult get = Run({target, "get", "bin", "--json"});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  nlohmann::json object = nlohmann::json::parse(get.out);
  EXPECT_EQ(object["found"], true);
  EXPECT_EQ(object["value_encoding"], "base64");
  std::string decoded;
  ASSERT_TRUE(absl::Base64Unescape(object["value"].get<std::string>(), &decoded)) << get.out;
  EXPECT_EQ(decoded, binary);
  EXPECT_EQ(object["key"], "bin");
  EXPECT_EQ(object["key_encoding"], "utf-8");
  // The raw form prints the bytes as stored.
  EXPECT_EQ(Run({target, "get", "bin"}).out, binary + "\n");

  nlohmann::json text = nlohmann::json::parse(Run({target, "get", "text", "--json"}).out);
  EXPECT_EQ(text["value"], "line 1\nline 2\n");
  EXPECT_EQ(text["value_encoding"], "utf-8");

  CliResult scan = Run({target, "scan", "--json"});
  ASSERT_EQ(scan.exit_code, 0) << scan.err;
  nlohmann::json items = nlohmann::json::parse(scan.out)["items"];
  ASSERT_EQ(items.size(), 3u) << scan.out;
  EXPECT_EQ(items[0]["key"], "bin");
  EXPECT_EQ(items[0]["value_encoding"], "base64");
  EXPECT_EQ(items[2]["value_encoding"], "utf-8");
}

// get --json of a missing key: a JSON answer on standard output, exit 1.
TEST_F(CliTest, GetJsonOfAMissingKeyIsJson) {
  LogkvdProcess* server = StartServer("node");
  CliResult missing = Run({"--target=" + Address(server->port()), "get", "nope", "--json"});
  EXPECT_EQ(missing.exit_code, 1);
  nlohmann::json object = nlohmann::json::parse(missing.out, nullptr, false);
  ASSERT_TRUE(object.is_object()) << missing.out;
  EXPECT_EQ(object["key"], "nope");
  EXPECT_EQ(object["found"], false);
  EXPECT_TRUE(object["error"].is_string());
  EXPECT_TRUE(absl::StrContains(missing.err, "NOT_FOUND")) << missing.err;
}

// Keys and values that would break scan's lines (a newline, a tab, bytes
// that are not text, a leading quote) are quoted and C-escaped; plain ones
// are printed as they are. One item, one line.
TEST_F(CliTest, ScanKeepsOneItemPerLine) {
  LogkvdProcess* server = StartServer("node");
  const std::string target = "--target=" + Address(server->port());
  ASSERT_EQ(Run({target, "put", "a-plain", "just text"}).exit_code, 0);
  ASSERT_EQ(RunWithInput({target, "put", "b-lines", "-"}, "one\ntwo\tthree").exit_code, 0);
  ASSERT_EQ(Run({target, "put", "c-key\nwith-newline", "v"}).exit_code, 0);
  ASSERT_EQ(RunWithInput({target, "put", "d-binary", "-"}, std::string("\x00\xfe", 2)).exit_code,
            0);
  ASSERT_EQ(Run({target, "put", "e-quote", "\"quoted\""}).exit_code, 0);
  ASSERT_EQ(Run({target, "put", "f-utf8", "caf\xc3\xa9"}).exit_code, 0);
  CliResult scan = Run({target, "scan"});
  ASSERT_EQ(scan.exit_code, 0) << scan.err;
  EXPECT_EQ(scan.out,
            "a-plain\tjust text\n"
            "b-lines\t\"one\\ntwo\\tthree\"\n"
            "\"c-key\\nwith-newline\"\tv\n"
            "d-binary\t\"\\x00\\xfe\"\n"
            "e-quote\t\"\\\"quoted\\\"\"\n"
            "f-utf8\tcaf\xc3\xa9\n");
  // What is printed quoted reads back with C unescaping.
  std::string value;
  ASSERT_TRUE(absl::CUnescape("one\\ntwo\\tthree", &value));
  EXPECT_EQ(value, "one\ntwo\tthree");
  CliResult keys = Run({target, "scan", "--keys_only", "c-"});
  EXPECT_EQ(keys.out, "\"c-key\\nwith-newline\"\n");
}

// logkv leave sends the cluster secret (--cluster_secret or
// $LOGKV_CLUSTER_SECRET): refused without it, and a node alone refuses to
// leave with it (its keys would have no owner).
TEST_F(CliTest, LeaveSendsTheClusterSecret) {
  LogkvdProcess* server = StartServer("node", 0, {"--cluster_secret=cli-secret"});
  const std::string http = "--http_target=" + Address(server->http_port());
  CliResult anonymous = Run({"leave", http});
  EXPECT_EQ(anonymous.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(anonymous.err, "HTTP 401")) << anonymous.err;
  CliResult wrong = Run({"leave", http, "--cluster_secret=not-it"});
  EXPECT_TRUE(absl::StrContains(wrong.err, "HTTP 403")) << wrong.err;
  CliResult alone = Run({"leave", http, "--cluster_secret=cli-secret"});
  EXPECT_EQ(alone.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(alone.err, "HTTP 409")) << alone.err;
  EXPECT_TRUE(absl::StrContains(alone.err, "only member")) << alone.err;
}

TEST_F(CliTest, NodesFlagPicksTheFirstLiveNode) {
  LogkvdProcess* server = StartServer("node");
  const std::string dead = Address(PickFreePort());
  CliResult put = Run({"--nodes=" + dead + "," + Address(server->port()), "put", "k", "v"});
  EXPECT_EQ(put.exit_code, 0) << put.err;
  CliResult get = Run({"get", "k", "--nodes", dead + "," + Address(server->port())});
  EXPECT_EQ(get.out, "v\n");
}

TEST_F(CliTest, WatchPrintsEvents) {
  LogkvdProcess* server = StartServer("node");
  const std::string target = "--target=" + Address(server->port());
  Client* writer = Connect(server->port());
  ASSERT_NE(writer, nullptr);
  CliResult watch;
  std::atomic<bool> finished{false};
  std::thread watcher([&] {
    watch = Run({target, "watch", "w/", "--count=1"});
    finished.store(true);
  });
  // The CLI's watch starts from "now", at a moment unknown here: keep writing
  // (bounded) until it has printed one event and exited.
  for (int i = 0; i < 300 && !finished.load(); ++i) {
    ASSERT_TRUE(writer->Put("w/key", absl::StrCat(i)).ok());
    absl::SleepFor(absl::Milliseconds(100));
  }
  watcher.join();
  EXPECT_EQ(watch.exit_code, 0) << watch.err;
  EXPECT_TRUE(absl::StartsWith(watch.out, "PUT w/key ")) << watch.out;
}

TEST_F(CliTest, ErrorsExitWithTwo) {
  CliResult unreachable = Run({"--target=" + Address(PickFreePort()), "get", "k"});
  EXPECT_EQ(unreachable.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(unreachable.err, "UNAVAILABLE")) << unreachable.err;

  CliResult unknown_flag = Run({"--target=" + Address(PickFreePort()), "get", "k", "--frobnicate"});
  EXPECT_EQ(unknown_flag.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(unknown_flag.err, "frobnicate")) << unknown_flag.err;

  CliResult unknown_command = Run({"--target=" + Address(PickFreePort()), "frobnicate"});
  EXPECT_EQ(unknown_command.exit_code, 2);

  CliResult bad_ttl = Run({"--target=" + Address(PickFreePort()), "put", "k", "v", "--ttl=soon"});
  EXPECT_EQ(bad_ttl.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(bad_ttl.err, "ttl")) << bad_ttl.err;

  // Usage errors are found before connecting (the target is never tried).
  CliResult no_key = Run({"--target=" + Address(PickFreePort()), "get"});
  EXPECT_EQ(no_key.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(no_key.err, "needs a key")) << no_key.err;

  CliResult help = Run({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(help.out, "usage")) << help.out;
}

}  // namespace
}  // namespace logkv::test
