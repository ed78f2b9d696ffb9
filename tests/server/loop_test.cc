// net::Loop on its own thread with a real loopback socket: answers that
// tasks of one wake-up complete (a batch of replies, a group commit) leave
// in one write per connection, in order, also when the socket cannot take
// them at once; a connection the same wake-up closed is skipped; one closing
// after a half-close closes once its last answer is written.
#include "server/net/loop.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/net/binary_session.h"
#include "server/net/connection.h"
#include "server/server.h"
#include "server/service.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::server::net {
namespace {

class LoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = engine::Engine::Open(test::TestOptions(dir_.Subdir("db"), &clock_));
    ASSERT_OK(engine);
    engine_ = *std::move(engine);
    service_ = std::make_unique<Service>(engine_.get(), ServiceConfig{}, &counters_);
    config_.port = 0;
    loop_ = std::make_unique<Loop>(config_, service_.get(), &quota_, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_OK(loop_->Init(address, {}));
    ASSERT_OK(loop_->Listen());
    thread_ = std::thread([this] { loop_->Run(); });
  }

  void TearDown() override {
    if (client_ >= 0) ::close(client_);
    if (thread_.joinable()) {
      loop_->Post([](Loop& l) { l.BeginShutdown(); });
      thread_.join();
    }
    loop_.reset();
    service_.reset();
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  // Connects a client and waits until the loop has accepted it; returns the
  // connection's id on the loop.
  uint64_t Connect() {
    client_ = ::socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_GE(client_, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<uint16_t>(loop_->BoundPort()));
    EXPECT_EQ(::connect(client_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    // The first connection a loop accepts is its connection 1.
    if (WaitOnLoop([](Loop& l) { return l.Find(1) != nullptr; })) return 1;
    ADD_FAILURE() << "the loop did not accept the connection";
    return 0;
  }

  // Runs check on the loop's thread, after whatever the loop was doing, and
  // returns its result.
  template <typename Check>
  auto OnLoop(Check check) {
    decltype(check(*loop_)) result{};
    absl::Notification done;
    loop_->Post([&](Loop& l) {
      result = check(l);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  // Whether check held on the loop's thread within 5 s (asked every 5 ms).
  template <typename Check>
  bool WaitOnLoop(Check check) {
    for (int attempt = 0; attempt < 1000; ++attempt) {
      if (OnLoop(check)) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  // Holds the loop thread inside a task until the returned notification is
  // notified: what is posted meanwhile runs in one later wake-up.
  std::unique_ptr<absl::Notification> HoldLoop() {
    auto release = std::make_unique<absl::Notification>();
    absl::Notification held;
    loop_->Post([&held, release = release.get()](Loop&) {
      held.Notify();
      release->WaitForNotification();
    });
    held.WaitForNotification();
    return release;
  }

  // Reads exactly bytes bytes from the client socket ("" on EOF or after
  // 10 s without data).
  std::string Read(size_t bytes) {
    std::string data;
    while (data.size() < bytes) {
      pollfd ready{client_, POLLIN, 0};
      if (::poll(&ready, 1, 10'000) != 1) return "";
      char buffer[4096];
      const ssize_t n = ::recv(client_, buffer, sizeof(buffer), 0);
      if (n <= 0) return "";
      data.append(buffer, static_cast<size_t>(n));
    }
    return data;
  }

  // True when the server closed the connection within 10 s.
  bool ClosedByServer() {
    pollfd ready{client_, POLLIN, 0};
    if (::poll(&ready, 1, 10'000) != 1) return false;
    char byte;
    return ::recv(client_, &byte, 1, 0) == 0;
  }

  // Read on the loop's thread, after whatever it was doing: the count of a
  // write is added once the write returned, possibly after the client read it.
  uint64_t socket_writes() {
    return OnLoop([this](Loop&) { return counters_.socket_writes.load(); });
  }

  test::ScopedTempDir dir_;
  test::ManualClock clock_;
  std::unique_ptr<engine::Engine> engine_;
  ServerCounters counters_;
  std::unique_ptr<Service> service_;
  ServerConfig config_;
  WatchQuota quota_{0};
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
  int client_ = -1;
};

// What a deferred answer's task does (BinarySession::DeferOn).
void Answer(Loop& l, uint64_t id, const std::string& answer) {
  Connection* c = l.Find(id);
  ASSERT_NE(c, nullptr);
  c->out.append(answer);
  l.Answered(*c);
}

TEST_F(LoopTest, AnswersCompletedInOneWakeUpLeaveInOneWrite) {
  const uint64_t id = Connect();
  ASSERT_NE(id, 0u);
  std::unique_ptr<absl::Notification> release = HoldLoop();
  std::string expected;
  for (int i = 0; i < 16; ++i) {
    const std::string answer = absl::StrCat("answer ", i, ";");
    expected += answer;
    loop_->Post([id, answer](Loop& l) { Answer(l, id, answer); });
  }
  const uint64_t writes_before = counters_.socket_writes.load();  // the loop is held
  release->Notify();
  EXPECT_EQ(Read(expected.size()), expected);
  EXPECT_EQ(socket_writes() - writes_before, 1u);

  // A lone answer in a later wake-up: a write of its own.
  loop_->Post([id](Loop& l) { Answer(l, id, "alone"); });
  EXPECT_EQ(Read(5), "alone");
  EXPECT_EQ(socket_writes() - writes_before, 2u);
}

TEST_F(LoopTest, AnswersLargerThanTheSocketTakesArriveWhole) {
  const uint64_t id = Connect();
  ASSERT_NE(id, 0u);
  // 16 answers of 1 MiB, more than the loopback socket takes at once: the
  // rest goes to libuv, reading stops past max_output_bytes, and everything
  // arrives in order once the client reads.
  std::unique_ptr<absl::Notification> release = HoldLoop();
  std::string expected;
  for (int i = 0; i < 16; ++i) {
    const std::string answer(1u << 20, static_cast<char>('a' + i));
    expected += answer;
    loop_->Post([id, answer](Loop& l) { Answer(l, id, answer); });
  }
  release->Notify();
  // The socket is full before the client reads anything.
  ASSERT_TRUE(WaitOnLoop([id](Loop& l) {
    Connection* c = l.Find(id);
    return c != nullptr && c->in_flight_bytes > 0;
  }));
  EXPECT_EQ(Read(expected.size()), expected);
  EXPECT_TRUE(WaitOnLoop([id](Loop& l) {
    Connection* c = l.Find(id);
    return c != nullptr && c->owed_bytes() == 0 && c->reading;
  }));
}

TEST_F(LoopTest, AnAnswerAndTheShutdownInOneWakeUp) {
  const uint64_t id = Connect();
  ASSERT_NE(id, 0u);
  std::unique_ptr<absl::Notification> release = HoldLoop();
  loop_->Post([id](Loop& l) { Answer(l, id, "last"); });
  // The shutdown writes what is owed and closes the connection before the
  // wake-up's answers go out; they find it gone.
  loop_->Post([](Loop& l) { l.BeginShutdown(); });
  release->Notify();
  EXPECT_EQ(Read(4), "last");
  EXPECT_TRUE(ClosedByServer());
}

TEST_F(LoopTest, AHalfClosedConnectionClosesOnceItsLastAnswerIsWritten) {
  const uint64_t id = Connect();
  ASSERT_NE(id, 0u);
  // An answer is owed (BinarySession::DeferOn counts it) when the client
  // half-closes: the connection stays open for it.
  ASSERT_TRUE(OnLoop([id](Loop& l) {
    Connection* c = l.Find(id);
    if (c != nullptr) ++c->pending;
    return c != nullptr;
  }));
  ASSERT_EQ(::shutdown(client_, SHUT_WR), 0);
  ASSERT_TRUE(WaitOnLoop([id](Loop& l) {
    Connection* c = l.Find(id);
    return c != nullptr && c->eof && c->closing;
  }));
  loop_->Post([id](Loop& l) {
    Connection* c = l.Find(id);
    ASSERT_NE(c, nullptr);
    --c->pending;
    c->out.append("owed");
    l.Answered(*c);
  });
  EXPECT_EQ(Read(4), "owed");
  EXPECT_TRUE(ClosedByServer());
}

}  // namespace
}  // namespace logkv::server::net
