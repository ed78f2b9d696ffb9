// The node-to-node transport (server/cluster/peer_transport.h) against real
// logkvd processes and small in-test listeners: peer requests, the cluster
// secret, timeouts, connection loss, reconnection, Stop and fault injection.
// Also the server's side: cluster operations need a peer connection; and the
// id a ClusterNode's first hello claims.
#include "server/cluster/peer_transport.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <csignal>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/cluster/cluster_node.h"
#include "server/cluster/peer_auth.h"
#include "tests/engine/test_util.h"
#include "tests/server/logkvd_process.h"

namespace logkv::server::cluster {
namespace {

namespace p = ::logkv::protocol;
using ::logkv::test::LogkvdProcess;

constexpr char kSecret[] = "s3cret-for-tests";

std::string PingFrame(absl::string_view payload) {
  flatbuffers::FlatBufferBuilder b;
  auto bytes = b.CreateVector(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  auto ping = p::CreatePing(b, bytes);
  return FinishPeerRequest(&b, p::Operation::Ping, ping.Union());
}

std::string GossipFrame() {
  flatbuffers::FlatBufferBuilder b;
  // A member that is not listening: the server learns of it and finds it dead.
  auto from = p::CreateMemberInfo(b, b.CreateString("transport-test"),
                                  b.CreateString("127.0.0.1:1"), b.CreateString(""),
                                  p::MemberState::Alive, 1, 0);
  auto members = b.CreateVector(std::vector<flatbuffers::Offset<p::MemberInfo>>{from});
  auto gossip = p::CreateGossip(b, from, members);
  return FinishPeerRequest(&b, p::Operation::Gossip, gossip.Union());
}

// Sends and waits (bounded) for the callback.
absl::StatusOr<std::string> SendAndWait(PeerTransport& transport, const std::string& address,
                                        std::string frame,
                                        absl::Duration timeout = absl::Seconds(5)) {
  struct Outcome {
    absl::Notification done;
    absl::StatusOr<std::string> answer;
  };
  auto outcome = std::make_shared<Outcome>();
  transport.Send(address, std::move(frame), timeout,
                 [outcome](absl::StatusOr<std::string> answer) {
                   outcome->answer = std::move(answer);
                   outcome->done.Notify();
                 });
  if (!outcome->done.WaitForNotificationWithTimeout(timeout + absl::Seconds(10))) {
    return absl::InternalError("the transport never called back");
  }
  return outcome->answer;
}

const p::Response* Response(const std::string& frame) {
  return flatbuffers::GetSizePrefixedRoot<p::Response>(frame.data());
}

PeerTransportOptions Options(std::string secret = kSecret) {
  PeerTransportOptions options;
  options.node_id = "transport-test";
  options.cluster_secret = std::move(secret);
  options.connect_timeout = absl::Seconds(2);
  return options;
}

// A socket that listens but never accepts: connections complete (the
// kernel's backlog) and nothing is ever answered.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t length = sizeof(address);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  int fd() const { return fd_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A libuv loop on its own thread, attached to a transport as a server loop
// is (PeerTransport::AttachLoopOnThisThread): it flushes the transport at
// every turn, runs tasks posted to it, and detaches when it ends.
class AttachedLoop {
 public:
  explicit AttachedLoop(PeerTransport* transport) : transport_(transport) {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &tasks_, [](uv_async_t* async) {
      static_cast<AttachedLoop*>(async->data)->RunTasks();
    });
    tasks_.data = this;
    uv_prepare_init(&loop_, &prepare_);
    prepare_.data = this;
    uv_check_init(&loop_, &check_);
    check_.data = this;
    uv_prepare_start(&prepare_, [](uv_prepare_t* prepare) {
      static_cast<AttachedLoop*>(prepare->data)->transport_->FlushHeldSends();
    });
    uv_check_start(&check_, [](uv_check_t* check) {
      static_cast<AttachedLoop*>(check->data)->transport_->FlushHeldSends();
    });
    thread_ = std::thread([this] {
      thread_id_ = std::this_thread::get_id();
      transport_->AttachLoopOnThisThread(&loop_);
      attached_.Notify();
      uv_run(&loop_, UV_RUN_DEFAULT);
      uv_run(&loop_, UV_RUN_DEFAULT);
      uv_loop_close(&loop_);
    });
    attached_.WaitForNotification();
  }
  ~AttachedLoop() { End(); }

  // Runs task on the loop's thread.
  void Post(absl::AnyInvocable<void()> task) {
    absl::MutexLock lock(&mu_);
    tasks_queue_.push_back(std::move(task));
    uv_async_send(&tasks_);
  }
  // Detaches and closes the loop's handles, then waits for its thread.
  void End() {
    if (!thread_.joinable()) return;
    Post([this] {
      transport_->DetachLoopOnThisThread();
      absl::MutexLock lock(&mu_);
      closing_ = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&tasks_), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&prepare_), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&check_), nullptr);
    });
    thread_.join();
  }
  std::thread::id thread_id() const { return thread_id_; }

 private:
  void RunTasks() {
    std::vector<absl::AnyInvocable<void()>> tasks;
    {
      absl::MutexLock lock(&mu_);
      if (closing_) return;
      tasks.swap(tasks_queue_);
    }
    for (auto& task : tasks) task();
  }

  PeerTransport* const transport_;
  uv_loop_t loop_;
  uv_async_t tasks_;
  uv_prepare_t prepare_;
  uv_check_t check_;
  std::thread thread_;
  std::thread::id thread_id_;
  absl::Notification attached_;
  absl::Mutex mu_;
  std::vector<absl::AnyInvocable<void()>> tasks_queue_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
};

// What a send made on an attached loop came to, and the thread its
// callback ran on.
struct LoopOutcome {
  absl::Notification done;
  absl::StatusOr<std::string> answer;
  std::thread::id thread;
};

std::shared_ptr<LoopOutcome> SendFromLoop(AttachedLoop& loop, PeerTransport& transport,
                                          const std::string& address, std::string frame,
                                          absl::Duration timeout, bool from_loop = true) {
  auto outcome = std::make_shared<LoopOutcome>();
  loop.Post([&transport, address, frame = std::move(frame), timeout, from_loop,
             outcome]() mutable {
    auto done = [outcome](absl::StatusOr<std::string> answer) {
      outcome->thread = std::this_thread::get_id();
      outcome->answer = std::move(answer);
      outcome->done.Notify();
    };
    if (from_loop) {
      transport.SendFromThisLoop(address, std::move(frame), timeout, std::move(done));
    } else {
      transport.Send(address, std::move(frame), timeout, std::move(done));
    }
  });
  return outcome;
}

class PeerTransportTest : public ::testing::Test {
 protected:
  std::unique_ptr<LogkvdProcess> StartServer(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {
        absl::StrCat("--data_dir=", dir_.path(), "/node", servers_++), "--threads=1", "--shards=1",
        "--node_id=server-node", absl::StrCat("--cluster_secret=", kSecret)};
    args.insert(args.end(), extra.begin(), extra.end());
    auto process = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
    absl::Status started = process->Start();
    EXPECT_TRUE(started.ok()) << started << "\n" << process->Output();
    return process;
  }

  test::ScopedTempDir dir_;
  int servers_ = 0;
};

// A program that starts the transport without logkvd's main or a Node (as
// these tests do) is not killed by SIGPIPE when a peer closes under a write:
// the write fails with EPIPE instead.
TEST_F(PeerTransportTest, StartingLeavesSigpipeIgnored) {
  ASSERT_NE(::signal(SIGPIPE, SIG_DFL), SIG_ERR);
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
}

TEST_F(PeerTransportTest, PingAndGossipOverAPeerConnection) {
  auto server = StartServer();
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  const std::string address = absl::StrCat("127.0.0.1:", server->port());

  absl::StatusOr<std::string> pong = SendAndWait(transport, address, PingFrame("hello"));
  ASSERT_TRUE(pong.ok()) << pong.status();
  ASSERT_EQ(Response(*pong)->status(), p::StatusCode::Ok);
  ASSERT_NE(Response(*pong)->result_as_PingResult(), nullptr);
  EXPECT_EQ(p::View(Response(*pong)->result_as_PingResult()->payload()), "hello");

  absl::StatusOr<std::string> gossip = SendAndWait(transport, address, GossipFrame());
  ASSERT_TRUE(gossip.ok()) << gossip.status();
  const p::GossipResult* result = Response(*gossip)->result_as_GossipResult();
  ASSERT_NE(result, nullptr) << p::EnumNameStatusCode(Response(*gossip)->status());
  bool saw_server = false, saw_us = false;
  for (const p::MemberInfo* member : *result->members()) {
    saw_server |= p::View(member->node_id()) == "server-node";
    saw_us |= p::View(member->node_id()) == "transport-test";
  }
  EXPECT_TRUE(saw_server);
  EXPECT_TRUE(saw_us) << "the server merged the gossip before answering";

  // Pipelined: many requests in flight on the one connection.
  std::vector<std::shared_ptr<absl::Notification>> done;
  std::atomic<int> ok{0};
  for (int i = 0; i < 100; ++i) {
    auto notification = std::make_shared<absl::Notification>();
    done.push_back(notification);
    transport.Send(address, PingFrame(absl::StrCat("p", i)), absl::Seconds(10),
                   [notification, &ok, i](absl::StatusOr<std::string> answer) {
                     if (answer.ok() &&
                         p::View(Response(*answer)->result_as_PingResult()->payload()) ==
                             absl::StrCat("p", i)) {
                       ok.fetch_add(1);
                     }
                     notification->Notify();
                   });
  }
  for (auto& notification : done) {
    ASSERT_TRUE(notification->WaitForNotificationWithTimeout(absl::Seconds(20)));
  }
  EXPECT_EQ(ok.load(), 100);
  transport.Stop();
}

// Host names are looked up on libuv's thread pool: "localhost" connects
// through the lookup, and a name that does not resolve fails its requests
// (Unavailable, naming the lookup) while other peers are served meanwhile.
TEST_F(PeerTransportTest, HostNamesAreResolvedOffTheTransportLoop) {
  auto server = StartServer();
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  struct Outcome {
    absl::Notification done;
    absl::StatusOr<std::string> answer;
  };
  auto unresolved = std::make_shared<Outcome>();
  transport.Send(absl::StrCat("no-such-peer.invalid:", server->port()), PingFrame("lost"),
                 absl::Seconds(20), [unresolved](absl::StatusOr<std::string> answer) {
                   unresolved->answer = std::move(answer);
                   unresolved->done.Notify();
                 });
  absl::StatusOr<std::string> by_name =
      SendAndWait(transport, absl::StrCat("localhost:", server->port()), PingFrame("named"));
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(p::View(Response(*by_name)->result_as_PingResult()->payload()), "named");
  absl::StatusOr<std::string> by_number =
      SendAndWait(transport, absl::StrCat("127.0.0.1:", server->port()), PingFrame("numeric"));
  ASSERT_TRUE(by_number.ok()) << by_number.status();

  ASSERT_TRUE(unresolved->done.WaitForNotificationWithTimeout(absl::Seconds(40)));
  ASSERT_FALSE(unresolved->answer.ok());
  const absl::Status& status = unresolved->answer.status();
  EXPECT_TRUE(absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) << status;
  if (absl::IsUnavailable(status)) {
    EXPECT_TRUE(absl::StrContains(status.message(), "cannot resolve")) << status;
  }
  transport.Stop();
}

// A thread that holds its sends (a server loop) queues them until it
// flushes; another thread's sends go at once; stopping holds flushes.
TEST_F(PeerTransportTest, HeldSendsGoOnlyWhenTheHoldingThreadFlushes) {
  auto server = StartServer();
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  const std::string address = absl::StrCat("127.0.0.1:", server->port());
  ASSERT_TRUE(SendAndWait(transport, address, PingFrame("warm-up")).ok());

  transport.HoldSendsOnThisThread();
  std::vector<std::shared_ptr<absl::Notification>> held;
  for (int i = 0; i < 3; ++i) {
    auto answered = std::make_shared<absl::Notification>();
    held.push_back(answered);
    transport.Send(address, PingFrame(absl::StrCat("held-", i)), absl::Seconds(10),
                   [answered](absl::StatusOr<std::string> answer) {
                     EXPECT_TRUE(answer.ok()) << answer.status();
                     answered->Notify();
                   });
  }
  // Another thread is not held back.
  absl::StatusOr<std::string> other;
  std::thread([&] { other = SendAndWait(transport, address, PingFrame("other")); }).join();
  ASSERT_TRUE(other.ok()) << other.status();
  for (const auto& answered : held) {
    EXPECT_FALSE(answered->HasBeenNotified()) << "sent before the holding thread flushed";
  }
  transport.FlushHeldSends();
  for (const auto& answered : held) {
    ASSERT_TRUE(answered->WaitForNotificationWithTimeout(absl::Seconds(10)));
  }

  auto last = std::make_shared<absl::Notification>();
  transport.Send(address, PingFrame("last"), absl::Seconds(10),
                 [last](absl::StatusOr<std::string> answer) {
                   EXPECT_TRUE(answer.ok()) << answer.status();
                   last->Notify();
                 });
  transport.StopHoldingOnThisThread();  // flushes
  ASSERT_TRUE(last->WaitForNotificationWithTimeout(absl::Seconds(10)));
  // No longer held: this one goes at once.
  ASSERT_TRUE(SendAndWait(transport, address, PingFrame("direct")).ok());
  transport.Stop();
}

// The loop hooks run on the transport's own thread, the one callbacks run
// on: loop_started first, loop_turn as it goes, loop_ending after the loop
// ended (a ReplicaBatcher held there flushes what callbacks sent).
TEST_F(PeerTransportTest, LoopHooksRunOnTheTransportsThread) {
  auto server = StartServer();
  PeerTransport transport(Options());
  static thread_local bool started_here = false;
  std::atomic<int> started{0};
  std::atomic<int> turns{0};
  std::atomic<int> turns_elsewhere{0};
  std::atomic<int> ended{0};
  // What a callback queues here is sent by the next turn hook, as a
  // ReplicaBatcher held on this thread would be.
  std::vector<std::function<void()>> queued;  // the transport's thread only
  transport.SetLoopHooks({[&] {
                            started_here = true;
                            started.fetch_add(1);
                          },
                          [&] {
                            turns.fetch_add(1);
                            if (!started_here) turns_elsewhere.fetch_add(1);
                            std::vector<std::function<void()>> now;
                            now.swap(queued);
                            for (auto& send : now) send();
                          },
                          [&] { ended.fetch_add(started_here ? 1 : 100); }});
  ASSERT_TRUE(transport.Start().ok());
  const std::string address = absl::StrCat("127.0.0.1:", server->port());
  auto answered = std::make_shared<absl::Notification>();
  bool callback_on_hooked_thread = false;
  transport.Send(address, PingFrame("hooked"), absl::Seconds(10),
                 [&, answered](absl::StatusOr<std::string> answer) {
                   EXPECT_TRUE(answer.ok()) << answer.status();
                   callback_on_hooked_thread = started_here;
                   queued.push_back([&, answered] {
                     transport.Send(address, PingFrame("from the turn hook"), absl::Seconds(10),
                                    [answered](absl::StatusOr<std::string> second) {
                                      EXPECT_TRUE(second.ok()) << second.status();
                                      answered->Notify();
                                    });
                   });
                 });
  ASSERT_TRUE(answered->WaitForNotificationWithTimeout(absl::Seconds(10)))
      << "the turn hook did not run after the callback";
  EXPECT_TRUE(callback_on_hooked_thread);
  EXPECT_FALSE(started_here) << "not on the test's thread";
  transport.Stop();
  EXPECT_EQ(started.load(), 1);
  EXPECT_GT(turns.load(), 0);
  EXPECT_EQ(turns_elsewhere.load(), 0);
  EXPECT_EQ(ended.load(), 1);
}

// A loop attached to the transport sends SendFromThisLoop's requests on
// connections of its own: their callbacks run on the loop's thread, while
// Send from the same thread still goes through the transport's thread.
TEST_F(PeerTransportTest, AnAttachedLoopSendsOnItsOwnConnections) {
  auto server = StartServer();
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  const std::string address = absl::StrCat("127.0.0.1:", server->port());
  AttachedLoop loop(&transport);

  std::vector<std::shared_ptr<LoopOutcome>> outcomes;
  for (int i = 0; i < 50; ++i) {
    outcomes.push_back(SendFromLoop(loop, transport, address,
                                    PingFrame(absl::StrCat("lane-", i)), absl::Seconds(10)));
  }
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(outcomes[i]->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    ASSERT_TRUE(outcomes[i]->answer.ok()) << outcomes[i]->answer.status();
    EXPECT_EQ(p::View(Response(*outcomes[i]->answer)->result_as_PingResult()->payload()),
              absl::StrCat("lane-", i));
    EXPECT_EQ(outcomes[i]->thread, loop.thread_id()) << "called back off the loop";
  }
  std::shared_ptr<LoopOutcome> plain =
      SendFromLoop(loop, transport, address, PingFrame("plain"), absl::Seconds(10),
                   /*from_loop=*/false);
  ASSERT_TRUE(plain->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(plain->answer.ok()) << plain->answer.status();
  EXPECT_NE(plain->thread, loop.thread_id()) << "Send is the transport thread's";
  // Off an attached loop SendFromThisLoop is Send.
  absl::StatusOr<std::string> direct = SendAndWait(transport, address, PingFrame("direct"));
  ASSERT_TRUE(direct.ok()) << direct.status();
  loop.End();
  transport.Stop();
}

// A loop's requests still in flight fail when it detaches, and when the
// transport stops first; timeouts and fault injection apply to them too.
TEST_F(PeerTransportTest, AnAttachedLoopsRequestsFailWhenItDetachesOrTheTransportStops) {
  SilentListener silent;
  {
    PeerTransport transport(Options());
    ASSERT_TRUE(transport.Start().ok());
    AttachedLoop loop(&transport);
    std::shared_ptr<LoopOutcome> timed_out =
        SendFromLoop(loop, transport, silent.address(), PingFrame("x"), absl::Milliseconds(200));
    ASSERT_TRUE(timed_out->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_EQ(timed_out->answer.status().code(), absl::StatusCode::kDeadlineExceeded)
        << timed_out->answer.status();
    EXPECT_EQ(timed_out->thread, loop.thread_id());

    std::shared_ptr<LoopOutcome> detached =
        SendFromLoop(loop, transport, silent.address(), PingFrame("x"), absl::Seconds(60));
    // Sent (not only queued) before the loop ends: a ping of the loop's own
    // answers after it.
    auto server = StartServer();
    const std::string address = absl::StrCat("127.0.0.1:", server->port());
    std::shared_ptr<LoopOutcome> after =
        SendFromLoop(loop, transport, address, PingFrame("after"), absl::Seconds(10));
    ASSERT_TRUE(after->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    ASSERT_TRUE(after->answer.ok()) << after->answer.status();
    EXPECT_FALSE(detached->done.HasBeenNotified());
    loop.End();
    ASSERT_TRUE(detached->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_EQ(detached->answer.status().code(), absl::StatusCode::kUnavailable)
        << detached->answer.status();
    transport.Stop();
  }
  {
    PeerTransportOptions options = Options();
    options.allow_fault_injection = true;
    PeerTransport transport(options);
    ASSERT_TRUE(transport.Start().ok());
    AttachedLoop loop(&transport);
    auto server = StartServer();
    const std::string address = absl::StrCat("127.0.0.1:", server->port());
    std::shared_ptr<LoopOutcome> first =
        SendFromLoop(loop, transport, address, PingFrame("x"), absl::Seconds(10));
    ASSERT_TRUE(first->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    ASSERT_TRUE(first->answer.ok()) << first->answer.status();
    // In flight to a peer then cut off: lost with the link.
    std::shared_ptr<LoopOutcome> cut =
        SendFromLoop(loop, transport, silent.address(), PingFrame("x"), absl::Seconds(60));
    std::shared_ptr<LoopOutcome> sync =
        SendFromLoop(loop, transport, address, PingFrame("sync"), absl::Seconds(10));
    ASSERT_TRUE(sync->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    transport.SetDropped({silent.address(), address});
    ASSERT_TRUE(cut->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_EQ(cut->answer.status().code(), absl::StatusCode::kUnavailable) << cut->answer.status();
    std::shared_ptr<LoopOutcome> dropped =
        SendFromLoop(loop, transport, address, PingFrame("x"), absl::Seconds(10));
    ASSERT_TRUE(dropped->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_EQ(dropped->answer.status().code(), absl::StatusCode::kUnavailable)
        << dropped->answer.status();
    transport.SetDropped({});

    std::shared_ptr<LoopOutcome> pending =
        SendFromLoop(loop, transport, silent.address(), PingFrame("x"), absl::Seconds(60));
    std::shared_ptr<LoopOutcome> sync2 =
        SendFromLoop(loop, transport, address, PingFrame("sync"), absl::Seconds(10));
    ASSERT_TRUE(sync2->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    ASSERT_TRUE(sync2->answer.ok()) << sync2->answer.status();
    transport.Stop();  // the loop still runs: its lane fails what it holds
    ASSERT_TRUE(pending->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_EQ(pending->answer.status().code(), absl::StatusCode::kUnavailable)
        << pending->answer.status();
    EXPECT_EQ(pending->thread, loop.thread_id());
    std::shared_ptr<LoopOutcome> late =
        SendFromLoop(loop, transport, address, PingFrame("x"), absl::Seconds(10));
    ASSERT_TRUE(late->done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_EQ(late->answer.status().code(), absl::StatusCode::kUnavailable)
        << late->answer.status();
    loop.End();
  }
}

TEST_F(PeerTransportTest, WrongSecretIsUnauthenticated) {
  auto server = StartServer();
  PeerTransport transport(Options("not-the-secret"));
  ASSERT_TRUE(transport.Start().ok());
  absl::StatusOr<std::string> answer =
      SendAndWait(transport, absl::StrCat("127.0.0.1:", server->port()), PingFrame("x"));
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kUnauthenticated) << answer.status();
}

TEST_F(PeerTransportTest, ClusterOperationsNeedAPeerConnection) {
  auto server = StartServer();
  absl::StatusOr<test::RawConnection> connection = test::RawConnection::Connect(server->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_TRUE(connection->SendBytes(GossipFrame()).ok());
  absl::StatusOr<std::string> frame = connection->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(test::AsResponse(*frame)->status(), p::StatusCode::PermissionDenied);

  // A ClusterHello without a nonce is refused and the connection closed.
  flatbuffers::FlatBufferBuilder b;
  p::ClusterHelloBuilder bare(b);
  auto bare_hello = bare.Finish();
  ASSERT_TRUE(connection->SendBytes(FinishPeerRequest(&b, p::Operation::ClusterHello,
                                                      bare_hello.Union()))
                  .ok());
  frame = connection->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_NE(test::AsResponse(*frame)->status(), p::StatusCode::Ok);
  EXPECT_TRUE(connection->WaitClosed(absl::Seconds(10)));
}

std::string HelloFrame(absl::string_view nonce, absl::string_view proof, bool auth) {
  flatbuffers::FlatBufferBuilder b;
  auto node_id = b.CreateString("intruder");
  auto nonce_offset = b.CreateVector(reinterpret_cast<const uint8_t*>(nonce.data()), nonce.size());
  auto proof_offset = b.CreateVector(reinterpret_cast<const uint8_t*>(proof.data()), proof.size());
  p::ClusterHelloBuilder hello(b);
  hello.add_node_id(node_id);
  if (!nonce.empty()) hello.add_nonce(nonce_offset);
  if (!proof.empty()) hello.add_proof(proof_offset);
  hello.add_auth(auth);
  auto offset = hello.Finish();
  return FinishPeerRequest(&b, p::Operation::ClusterHello, offset.Union());
}

TEST_F(PeerTransportTest, TheHandshakeProvesTheSecretWithoutSendingIt) {
  auto server = StartServer();
  absl::StatusOr<test::RawConnection> connection = test::RawConnection::Connect(server->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  const std::string nonce = NewPeerNonce();
  ASSERT_TRUE(connection->SendBytes(HelloFrame(nonce, "", false)).ok());
  absl::StatusOr<std::string> frame = connection->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  const p::ClusterChallenge* challenge = test::AsResponse(*frame)->result_as_ClusterChallenge();
  ASSERT_NE(challenge, nullptr);
  EXPECT_EQ(frame->find(kSecret), std::string::npos) << "the challenge carries the secret";
  // The server's proof is the HMAC over both nonces with the secret.
  EXPECT_TRUE(PeerProofMatches(
      PeerProof(kSecret, PeerRole::kAccepting, nonce, p::View(challenge->nonce())),
      p::View(challenge->proof())));
  // A proof made with another secret is refused and the connection closed.
  const std::string wrong =
      PeerProof("not-the-secret", PeerRole::kConnecting, p::View(challenge->nonce()), nonce);
  ASSERT_TRUE(connection->SendBytes(HelloFrame("", wrong, false)).ok());
  frame = connection->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(test::AsResponse(*frame)->status(), p::StatusCode::Unauthenticated);
  EXPECT_TRUE(connection->WaitClosed(absl::Seconds(10)));

  // The accepting node's own proof, reflected back, is no connecting proof.
  absl::StatusOr<test::RawConnection> second = test::RawConnection::Connect(server->port());
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(second->SendBytes(HelloFrame(nonce, "", false)).ok());
  frame = second->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  challenge = test::AsResponse(*frame)->result_as_ClusterChallenge();
  ASSERT_NE(challenge, nullptr);
  ASSERT_TRUE(second->SendBytes(HelloFrame("", p::View(challenge->proof()), false)).ok());
  frame = second->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(test::AsResponse(*frame)->status(), p::StatusCode::Unauthenticated);
}

TEST_F(PeerTransportTest, AListenerThatCannotProveTheSecretGetsNothing) {
  // A fake node: accepts, reads what the transport sends, answers the first
  // ClusterHello with a challenge whose proof is made without the secret.
  SilentListener fake;
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  struct Outcome {
    absl::Notification done;
    absl::StatusOr<std::string> answer;
  };
  auto outcome = std::make_shared<Outcome>();
  transport.Send(fake.address(), PingFrame("a request the fake must never see"), absl::Seconds(5),
                 [outcome](absl::StatusOr<std::string> answer) {
                   outcome->answer = std::move(answer);
                   outcome->done.Notify();
                 });
  const int fd = ::accept(fake.fd(), nullptr, nullptr);
  ASSERT_GE(fd, 0);
  timeval timeout{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string received;
  char buffer[4096];
  // The first frame: the ClusterHello.
  while (received.size() < 4 ||
         received.size() < 4 + static_cast<size_t>(flatbuffers::ReadScalar<uint32_t>(received.data()))) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    received.append(buffer, static_cast<size_t>(n));
  }
  ASSERT_GE(received.size(), 4u);
  const auto* request = flatbuffers::GetSizePrefixedRoot<p::Request>(received.data());
  ASSERT_EQ(request->operation_type(), p::Operation::ClusterHello);
  const p::ClusterHello* hello = request->operation_as_ClusterHello();
  const std::string their_nonce(p::View(hello->nonce()));
  EXPECT_EQ(their_nonce.size(), kPeerNonceBytes);
  // Answer with a proof made with a guessed secret.
  flatbuffers::FlatBufferBuilder b;
  const std::string own_nonce = NewPeerNonce();
  const std::string proof = PeerProof("a guess", PeerRole::kAccepting, their_nonce, own_nonce);
  auto nonce_offset =
      b.CreateVector(reinterpret_cast<const uint8_t*>(own_nonce.data()), own_nonce.size());
  auto proof_offset = b.CreateVector(reinterpret_cast<const uint8_t*>(proof.data()), proof.size());
  auto challenge = p::CreateClusterChallenge(b, nonce_offset, proof_offset, false);
  p::FinishResponse(&b, request->request_id(), p::Result::ClusterChallenge, challenge.Union());
  const std::string answer(p::FrameOf(b));
  ASSERT_EQ(::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(answer.size()));
  // The transport gives up on the fake: the request fails, and whatever
  // else arrives before the connection closes carries neither the secret
  // nor the request.
  ASSERT_TRUE(outcome->done.WaitForNotificationWithTimeout(absl::Seconds(15)));
  ASSERT_FALSE(outcome->answer.ok());
  EXPECT_EQ(outcome->answer.status().code(), absl::StatusCode::kUnauthenticated)
      << outcome->answer.status();
  while (true) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    received.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  EXPECT_EQ(received.find(kSecret), std::string::npos) << "the secret was sent";
  EXPECT_EQ(received.find("a request the fake must never see"), std::string::npos);
}

TEST_F(PeerTransportTest, NodesWithDifferentAuthSettingsRefuseEachOther) {
  // This side has auth on, the server off: the transport refuses the
  // server's challenge (it says auth off) ...
  auto server = StartServer();
  PeerTransportOptions options = Options();
  options.auth_on = true;
  PeerTransport transport(options);
  ASSERT_TRUE(transport.Start().ok());
  absl::StatusOr<std::string> answer =
      SendAndWait(transport, absl::StrCat("127.0.0.1:", server->port()), PingFrame("x"));
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kFailedPrecondition) << answer.status();
  EXPECT_NE(answer.status().message().find("--auth"), absl::string_view::npos);
  // ... and the server refuses a hello that says auth on.
  absl::StatusOr<test::RawConnection> connection = test::RawConnection::Connect(server->port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_TRUE(connection->SendBytes(HelloFrame(NewPeerNonce(), "", true)).ok());
  absl::StatusOr<std::string> frame = connection->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(test::AsResponse(*frame)->status(), p::StatusCode::FailedPrecondition);
  EXPECT_TRUE(connection->WaitClosed(absl::Seconds(10)));

  // A node with auth on refuses a peer with auth off the same way.
  auto auth_server = StartServer({"--auth=on"});
  PeerTransport plain(Options());
  ASSERT_TRUE(plain.Start().ok());
  answer = SendAndWait(plain, absl::StrCat("127.0.0.1:", auth_server->port()), PingFrame("x"));
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kFailedPrecondition) << answer.status();
}

TEST_F(PeerTransportTest, NobodyListeningIsUnavailable) {
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  const std::string address = absl::StrCat("127.0.0.1:", test::PickFreePort());
  absl::StatusOr<std::string> first = SendAndWait(transport, address, PingFrame("x"));
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable) << first.status();
  // Within the backoff the next attempt fails at once, without connecting.
  absl::StatusOr<std::string> second = SendAndWait(transport, address, PingFrame("x"));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

TEST_F(PeerTransportTest, SilentPeerTimesOut) {
  SilentListener silent;
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  absl::StatusOr<std::string> answer =
      SendAndWait(transport, silent.address(), PingFrame("x"), absl::Milliseconds(200));
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kDeadlineExceeded) << answer.status();
}

TEST_F(PeerTransportTest, StopFailsWhatIsPending) {
  SilentListener silent;
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  struct Outcome {
    absl::Notification done;
    absl::Status status;
  };
  auto outcome = std::make_shared<Outcome>();
  transport.Send(silent.address(), PingFrame("x"), absl::Seconds(60),
                 [outcome](absl::StatusOr<std::string> answer) {
                   outcome->status = answer.status();
                   outcome->done.Notify();
                 });
  transport.Stop();
  ASSERT_TRUE(outcome->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(outcome->status.code(), absl::StatusCode::kUnavailable) << outcome->status;
  // After Stop every Send fails at once.
  absl::StatusOr<std::string> late = SendAndWait(transport, silent.address(), PingFrame("x"));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(PeerTransportTest, ConnectionLossFailsPendingAndTheNextSendReconnects) {
  // A peer that accepts, reads the first bytes and hangs up.
  SilentListener listener;
  std::thread hang_up([&listener] {
    const int fd = ::accept(listener.fd(), nullptr, nullptr);
    if (fd < 0) return;
    char buffer[64];
    (void)::read(fd, buffer, sizeof(buffer));
    ::close(fd);
  });
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  absl::StatusOr<std::string> lost =
      SendAndWait(transport, listener.address(), PingFrame("x"), absl::Seconds(30));
  hang_up.join();
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kUnavailable) << lost.status();

  // A real node that goes away and comes back on the same port.
  const int port = test::PickFreePort();
  auto server = StartServer({absl::StrCat("--listen=127.0.0.1:", port)});
  const std::string address = absl::StrCat("127.0.0.1:", port);
  ASSERT_TRUE(SendAndWait(transport, address, PingFrame("before")).ok());
  server->Kill();
  absl::StatusOr<std::string> down = SendAndWait(transport, address, PingFrame("down"));
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  server = StartServer({absl::StrCat("--listen=127.0.0.1:", port)});
  bool reconnected = false;
  for (int attempt = 0; attempt < 100 && !reconnected; ++attempt) {
    reconnected = SendAndWait(transport, address, PingFrame("after")).ok();
    if (!reconnected) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(reconnected);
}

TEST_F(PeerTransportTest, FaultInjectionDropsTrafficOnlyWhenAllowed) {
  auto server = StartServer();
  const std::string address = absl::StrCat("127.0.0.1:", server->port());

  PeerTransportOptions allowed = Options();
  allowed.allow_fault_injection = true;
  PeerTransport transport(allowed);
  ASSERT_TRUE(transport.Start().ok());
  ASSERT_TRUE(SendAndWait(transport, address, PingFrame("x")).ok());
  transport.SetDropped({address});
  EXPECT_TRUE(transport.IsDropped(address));
  absl::StatusOr<std::string> dropped = SendAndWait(transport, address, PingFrame("x"));
  EXPECT_EQ(dropped.status().code(), absl::StatusCode::kUnavailable) << dropped.status();
  transport.SetDropped({});
  EXPECT_TRUE(SendAndWait(transport, address, PingFrame("x")).ok());

  PeerTransport production(Options());
  ASSERT_TRUE(production.Start().ok());
  production.SetDropped({address});
  EXPECT_FALSE(production.IsDropped(address));
  EXPECT_TRUE(SendAndWait(production, address, PingFrame("x")).ok());
}

TEST_F(PeerTransportTest, FrameWithoutRequestIdFieldIsRefused) {
  auto server = StartServer();
  PeerTransport transport(Options());
  ASSERT_TRUE(transport.Start().ok());
  flatbuffers::FlatBufferBuilder b;
  auto ping = p::CreatePing(b);
  p::RequestBuilder request(b);
  request.add_request_id(0);  // the default: not stored, so it cannot be rewritten
  request.add_operation_type(p::Operation::Ping);
  request.add_operation(ping.Union());
  b.FinishSizePrefixed(request.Finish());
  absl::StatusOr<std::string> answer = SendAndWait(
      transport, absl::StrCat("127.0.0.1:", server->port()), std::string(p::FrameOf(b)));
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kInvalidArgument) << answer.status();
}

// A node whose id defaults to its advertised address, listening on port 0,
// learns its id only once the port is bound (ClusterNode::SetAdvertise,
// after the transport was made): its first ClusterHello must claim it all
// the same, as peers check certificates against it (--peer-tls-ca). The
// server names the node it refuses (here for a differing --auth), so its
// log shows the id the hello claimed.
TEST_F(PeerTransportTest, FirstHelloClaimsTheIdLearnedWhenThePortIsBound) {
  auto server = StartServer();
  ClusterNodeOptions options;  // no node id, no advertised address yet
  options.cluster_secret = kSecret;
  options.auth_on = true;  // the server runs with --auth=off: it refuses, naming the node
  options.seeds = {absl::StrCat("127.0.0.1:", server->port())};
  options.gossip_interval = absl::Milliseconds(50);
  options.ping_timeout = absl::Milliseconds(500);
  ClusterNode node(options);
  node.SetAdvertise("127.0.0.1:45999", "");  // the port the listener was given
  ASSERT_TRUE(node.Start().ok());
  const std::string expected = "refused a peer connection from node '127.0.0.1:45999'";
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!absl::StrContains(server->Output(), expected) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  node.Stop();
  const std::string output = server->Output();
  EXPECT_TRUE(absl::StrContains(output, expected)) << output;
  EXPECT_FALSE(absl::StrContains(output, "refused a peer connection from node ''")) << output;
}

}  // namespace
}  // namespace logkv::server::cluster
