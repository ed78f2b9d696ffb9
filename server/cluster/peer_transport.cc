#include "server/cluster/peer_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "protocol/openssl_crl.h"
#include "protocol/openssl_errors.h"
#include "server/cluster/peer_auth.h"
#include "server/sigpipe.h"

namespace logkv::server::cluster {

namespace p = ::logkv::protocol;

namespace {

using ::logkv::protocol::TakeOpenSslErrors;

std::string UvError(int code) { return absl::StrCat(uv_err_name(code), ": ", uv_strerror(code)); }


// A failed connection attempt makes the peer wait this long (doubling up to
// the maximum) before the next one; requests meanwhile fail at once.
constexpr int64_t kFirstBackoffMs = 100;
constexpr int64_t kMaxBackoffMs = 1000;
constexpr size_t kReadChunkBytes = 64u << 10;
// Request id 0 is the ClusterHello's; requests get ids from 1.
constexpr uint64_t kHelloRequestId = 0;

// A ClusterHello frame of the handshake: step 1 carries the nonce, step 3
// the proof (protocol/logkv.fbs); the other is left out.
std::string HelloFrame(absl::string_view node_id, absl::string_view nonce,
                       absl::string_view proof, bool auth_on,
                       absl::string_view cluster_id = {}) {
  flatbuffers::FlatBufferBuilder builder(256);
  auto node_id_offset = builder.CreateString(node_id.data(), node_id.size());
  auto bytes = [&builder](absl::string_view data) {
    return builder.CreateVector(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  };
  auto nonce_offset = nonce.empty() ? 0 : bytes(nonce);
  auto proof_offset = proof.empty() ? 0 : bytes(proof);
  auto cluster_id_offset = cluster_id.empty() ? 0 : bytes(cluster_id);
  p::ClusterHelloBuilder hello(builder);
  hello.add_node_id(node_id_offset);
  if (!nonce.empty()) hello.add_nonce(nonce_offset);
  if (!proof.empty()) hello.add_proof(proof_offset);
  hello.add_auth(auth_on);
  if (!cluster_id.empty()) hello.add_cluster_id(cluster_id_offset);
  auto hello_offset = hello.Finish();
  p::RequestBuilder request(builder);
  request.add_request_id(kHelloRequestId);
  request.add_operation_type(p::Operation::ClusterHello);
  request.add_operation(hello_offset.Union());
  builder.FinishSizePrefixed(request.Finish());
  return std::string(p::FrameOf(builder));
}

// Splits host:port; an empty host means loopback.
absl::Status SplitAddress(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), port) ||
      *port <= 0 || *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("peer address '", address, "' is not host:port"));
  }
  *host = address.substr(0, colon);
  if (host->empty()) *host = "127.0.0.1";
  return absl::OkStatus();
}

}  // namespace

std::string FinishPeerRequest(flatbuffers::FlatBufferBuilder* builder, p::Operation type,
                              flatbuffers::Offset<void> operation, uint64_t epoch) {
  p::RequestBuilder request(*builder);
  // Not the default, so the field is stored and PeerTransport can rewrite it.
  request.add_request_id(~uint64_t{0});
  // The same: PeerTransport writes the sender's epoch into kSenderEpoch. An
  // epoch 0 (none known yet) is stored as such only when given.
  request.add_epoch(epoch);
  request.add_operation_type(type);
  request.add_operation(operation);
  builder->FinishSizePrefixed(request.Finish());
  return std::string(p::FrameOf(*builder));
}

absl::StatusOr<std::string> SendAndWait(const PeerSendFunction& send, const std::string& address,
                                        std::string request_frame, absl::Duration timeout) {
  // Extra wait beyond the request's own timeout before giving up on a sender
  // that never calls back (it must, but a caller must not hang on it).
  constexpr absl::Duration kCallbackGrace = absl::Seconds(2);
  struct Answer {
    absl::Notification done;
    absl::StatusOr<std::string> frame;
  };
  // Shared with the callback, which may outlive this call if it gives up.
  auto answer = std::make_shared<Answer>();
  send(address, std::move(request_frame), timeout, [answer](absl::StatusOr<std::string> frame) {
    answer->frame = std::move(frame);
    answer->done.Notify();
  });
  if (!answer->done.WaitForNotificationWithTimeout(timeout + kCallbackGrace)) {
    return absl::DeadlineExceededError("no answer from the peer transport");
  }
  return std::move(answer->frame);
}

// Everything below runs on the thread of the loop it belongs to: the
// transport's own loop and its lane, or a server loop and the lane attached
// there (AttachLoopOnThisThread). Only Send, SetDropped, IsDropped, Start,
// Stop and RunAfter cross threads, through the mutex-guarded inbox (or a
// lane's wake-up) and uv_async_send.
class PeerTransport::Impl {
 public:
  Impl(const PeerTransportOptions& options, const std::atomic<uint64_t>* epoch)
      : options_(options), epoch_(epoch) {
    if (options_.tls) {
      absl::StatusOr<CtxPtr> ctx = BuildTlsContext();
      absl::MutexLock lock(&tls_mu_);
      if (ctx.ok()) {
        tls_ctx_ = *std::move(ctx);
      } else {
        tls_status_ = ctx.status();
      }
    }
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() { Stop(); }

  absl::Status Start();
  void Stop();
  bool RunAfter(absl::Duration delay, std::function<void()> task);
  // from_loop: SendFromThisLoop (a server loop's lane may take it).
  void Send(const std::string& address, std::string frame, absl::Duration timeout, Callback done,
            bool from_loop);
  void HoldSendsOnThisThread();
  bool FlushHeldSends();
  void StopHoldingOnThisThread();
  void AttachLoopOnThisThread(uv_loop_t* loop);
  void DetachLoopOnThisThread();
  void SetLoopHooks(LoopHooks hooks) { hooks_ = std::move(hooks); }
  void SetNodeId(const std::string& node_id) { options_.node_id = node_id; }
  absl::Status ReloadTls() ABSL_LOCKS_EXCLUDED(tls_mu_);
  void SetDropped(std::vector<std::string> addresses);
  bool IsDropped(const std::string& address) const;

  struct Outgoing {
    std::string address;
    std::string frame;
    absl::Duration timeout;
    Callback done;
  };

  // The requests a holding thread queued (HoldSendsOnThisThread), and the
  // transport they are for.
  struct HeldSends {
    Impl* impl = nullptr;
    std::vector<Outgoing> items;
  };
  static thread_local HeldSends held_sends;

  class Lane;
  // The lane of the loop that runs on this thread, and its transport (the
  // transport's own thread, or a server loop attached to it).
  struct ThreadLane {
    Impl* impl = nullptr;
    Lane* lane = nullptr;
  };
  static thread_local ThreadLane thread_lane;

  std::atomic<uint64_t> requests_sent{0};
  std::atomic<uint64_t> requests_failed{0};

 private:
  struct Peer;
  struct Connection;

  // A request waiting for its answer; freed in its timer's close callback.
  struct Pending {
    Lane* lane = nullptr;
    Peer* peer = nullptr;
    uint64_t id = 0;
    Callback done;
    uv_timer_t timer;
  };

  struct Peer {
    std::string address;
    Connection* connection = nullptr;  // null: none open
    // Frames not yet handed to libuv, written as they are (one writev).
    std::vector<std::string> out;
    size_t out_bytes = 0;              // their bytes
    size_t in_flight_bytes = 0;        // handed to uv_write, not yet written
    absl::flat_hash_map<uint64_t, Pending*> pending;
    int64_t next_attempt_ms = 0;       // loop time before which no connect is tried
    int64_t backoff_ms = 0;
    bool resolving = false;            // a host-name lookup runs on libuv's thread pool
    bool to_flush = false;             // listed in the lane's to_flush_
  };

  // A host-name lookup in flight (uv_getaddrinfo on libuv's thread pool, so
  // a slow resolver never stalls this loop); freed by its callback.
  struct Resolve {
    uv_getaddrinfo_t request;
    Lane* lane;
    std::string address;  // the peer's key in peers_
    int port;
  };

  // One TCP connection to a peer; freed once both its handles are closed.
  struct Connection {
    explicit Connection(uint32_t max_frame_bytes) : decoder(max_frame_bytes) {}
    ~Connection() {
      if (ssl != nullptr) SSL_free(ssl);
    }
    Lane* lane = nullptr;
    Peer* peer = nullptr;  // null once detached (closing)
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_timer_t connect_timer;
    p::FrameDecoder decoder;
    bool connected = false;
    // The handshake (protocol/logkv.fbs, ClusterHello): this end's nonce,
    // and whether the peer proved the secret. Until it has, only
    // handshake_out is written; requests wait in the peer's out.
    std::string nonce;
    std::string handshake_out;
    bool authenticated = false;
    int open_handles = 0;
    // With TLS: the connection's SSL (memory BIOs), whether its handshake
    // is done, and where the socket's ciphertext is read.
    SSL* ssl = nullptr;
    bool tls_done = false;
    std::unique_ptr<char[]> cipher_in;
  };

  struct WriteRequest {
    uv_write_t request;
    std::vector<std::string> data;
    size_t bytes = 0;  // of data
    Peer* peer;  // may have been detached from its connection; peers live with their lane
    Connection* connection;
  };

 public:
  // The connections to the peers that one libuv loop owns, and the requests
  // sent through them. Everything runs on that loop's thread. Peers (and
  // the lane) stay allocated until the transport is destroyed: write
  // callbacks of closed connections still name them.
  class Lane {
   public:
    Lane(Impl* impl, uv_loop_t* loop) : impl_(impl), loop_(loop) {}
    Lane(const Lane&) = delete;
    Lane& operator=(const Lane&) = delete;

    // Sends made on the lane's thread wait here until Drain.
    void Queue(Outgoing outgoing) { queued_.push_back(std::move(outgoing)); }
    // Sends what is queued (and what callbacks run meanwhile queue), then
    // hands every peer's new frames to libuv. Returns whether a callback
    // ran (a request failed at once): it may have held more requests
    // elsewhere (a ReplicaBatcher).
    bool Drain();
    // Takes a request: a failure is answered at once (true), else the frame
    // waits in its peer's out for FlushPeers.
    bool Dispatch(Outgoing outgoing);
    void FlushPeers();
    // Closes the connections to addresses now cut off (fault injection).
    void CloseDropped(const absl::flat_hash_set<std::string>& dropped);
    // Fails everything queued and pending and closes every connection; the
    // lane takes nothing more (Send fails at once instead).
    void Shutdown(absl::string_view why);
    bool closing() const { return closing_; }
    uv_loop_t* loop() const { return loop_; }

    // A server loop's lane wakes on its own handle when the transport
    // stops or its dropped set changes.
    uv_async_t wake;
    bool attached = false;         // Impl::mu_: wake may be signalled
    uint64_t seen_drop_generation = 0;  // the lane's thread

   private:
    friend class Impl;
    void StartConnection(Peer& peer);
    void OnResolved(Resolve* resolve, int status, addrinfo* result);
    void Connect(Peer& peer, const sockaddr_storage& address);
    void OnConnected(Connection* connection, int status);
    // The accepting node's answer to the first ClusterHello: checks its proof
    // and auth setting, then sends this node's proof and the queued requests.
    absl::Status OnChallenge(Connection* connection, const p::Response& response);
    void OnRead(Connection* connection, ssize_t nread);
    // TLS: nread bytes of ciphertext arrived; false when the connection closed.
    bool OnTlsRead(Connection* connection, ssize_t nread);
    // TLS: writes what the SSL has for the peer (handshake, records, alerts).
    void WriteCiphertext(Peer& peer, Connection* connection);
    void Flush(Peer& peer);
    // Hands data to libuv for the peer's connection.
    void Write(Peer& peer, Connection* connection, std::vector<std::string> data);
    // Closes the peer's connection; every pending request gets status.
    void CloseConnection(Peer& peer, const absl::Status& status, bool failed_attempt);
    void ReleaseConnection(Connection* connection);
    void Complete(Pending* pending, absl::StatusOr<std::string> answer);
    void FailAll(Peer& peer, const absl::Status& status);
    int64_t Now() { return static_cast<int64_t>(uv_now(loop_)); }
    bool OnLoopThread() const { return thread_lane.lane == this; }

    Impl* const impl_;
    uv_loop_t* const loop_;
    std::vector<Outgoing> queued_;
    std::vector<Peer*> to_flush_;  // peers whose out grew since FlushPeers
    absl::flat_hash_map<std::string, std::unique_ptr<Peer>> peers_;
    absl::flat_hash_set<Resolve*> resolves_;  // lookups in flight (cancelled on shutdown)
    uint64_t next_request_id_ = 1;
    bool closing_ = false;
  };

 private:
  void Run();
  // Hands requests to the transport's thread (or fails them once stopped).
  void Enqueue(std::vector<Outgoing> items);
  void DrainInbox();
  // The transport's own loop turn: its hook, then its lane, again while a
  // callback ran.
  void OnOwnTurn();
  // A server loop's lane was woken (stop, dropped set).
  void OnLaneWake(Lane* lane);
  bool stopping() const { return stopping_flag_.load(std::memory_order_acquire); }
  using CtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
  // A client context from the files of the options.
  absl::StatusOr<CtxPtr> BuildTlsContext() const;
  // A client SSL of the context in use, or why there is none.
  absl::StatusOr<SSL*> NewSsl() ABSL_LOCKS_EXCLUDED(tls_mu_);
  void ShutDownLoop();
  // A task of RunAfter waiting on its timer (loop thread); freed by the
  // timer's close callback.
  struct DelayedTask {
    uv_timer_t timer;
    Impl* impl = nullptr;
    std::function<void()> task;
  };
  void StartDelayed(absl::Duration delay, std::function<void()> task);
  void FinishDelayed(DelayedTask* delayed);

  // Set before Start (node_id by SetNodeId), read-only from then on.
  PeerTransportOptions options_;
  // With options_.tls: the client context connections are made with, or why
  // none could be made. ReloadTls swaps in a new one from any thread;
  // connections made keep theirs (an SSL holds a reference to its context).
  mutable absl::Mutex tls_mu_;
  CtxPtr tls_ctx_ ABSL_GUARDED_BY(tls_mu_){nullptr, SSL_CTX_free};
  absl::Status tls_status_ ABSL_GUARDED_BY(tls_mu_);
  const std::atomic<uint64_t>* const epoch_;  // PeerTransport's

  uv_loop_t loop_;
  uv_async_t async_;
  uv_prepare_t turn_prepare_;
  uv_check_t turn_check_;
  LoopHooks hooks_;  // set before Start
  std::thread thread_;
  Lane own_lane_{this, &loop_};  // the transport's own loop's

  mutable absl::Mutex mu_;
  std::deque<Outgoing> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<absl::Duration, std::function<void()>>> delayed_inbox_
      ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool drop_changed_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<std::string> dropped_ ABSL_GUARDED_BY(mu_);
  // Raised with every change of dropped_ (lanes compare it with theirs).
  uint64_t drop_generation_ ABSL_GUARDED_BY(mu_) = 0;
  // Every lane attached to a server loop, attached or not any more (freed
  // with the transport: their peers outlive the loop's last callbacks).
  std::vector<std::unique_ptr<Lane>> lanes_ ABSL_GUARDED_BY(mu_);
  // stopping_, for lanes to read without the mutex.
  std::atomic<bool> stopping_flag_{false};

  // Own-loop state.
  absl::flat_hash_set<DelayedTask*> delayed_;  // RunAfter tasks waiting (run on shutdown)
  bool loop_closing_ = false;
};

thread_local PeerTransport::Impl::HeldSends PeerTransport::Impl::held_sends;
thread_local PeerTransport::Impl::ThreadLane PeerTransport::Impl::thread_lane;

absl::Status PeerTransport::Impl::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return absl::FailedPreconditionError("peer transport already started");
  // A write to a peer that closed fails with EPIPE instead of ending the
  // process (server/sigpipe.h), also when the transport runs without a Node
  // or logkvd's main: its tests drive it alone.
  IgnoreSigpipeUnlessHandled();
  if (int rc = uv_loop_init(&loop_); rc != 0) {
    return absl::InternalError(absl::StrCat("peer transport loop: ", UvError(rc)));
  }
  uv_async_init(&loop_, &async_, [](uv_async_t* async) {
    static_cast<Impl*>(async->data)->DrainInbox();
  });
  async_.data = this;
  uv_prepare_init(&loop_, &turn_prepare_);
  turn_prepare_.data = this;
  uv_check_init(&loop_, &turn_check_);
  turn_check_.data = this;
  // Every turn: the hook, and what the loop's own callbacks sent.
  uv_prepare_start(&turn_prepare_, [](uv_prepare_t* prepare) {
    static_cast<Impl*>(prepare->data)->OnOwnTurn();
  });
  uv_check_start(&turn_check_, [](uv_check_t* check) {
    static_cast<Impl*>(check->data)->OnOwnTurn();
  });
  started_ = true;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void PeerTransport::Impl::Run() {
  thread_lane = ThreadLane{this, &own_lane_};
  if (hooks_.loop_started) hooks_.loop_started();
  uv_run(&loop_, UV_RUN_DEFAULT);
  // Every handle is closed by now; let their close callbacks run.
  uv_run(&loop_, UV_RUN_DEFAULT);
  // Sends from the hook fail at once now (the transport stopped).
  if (hooks_.loop_ending) hooks_.loop_ending();
  thread_lane = ThreadLane{};
  uv_loop_close(&loop_);
}

void PeerTransport::Impl::OnOwnTurn() {
  if (loop_closing_) return;
  do {
    if (hooks_.loop_turn) hooks_.loop_turn();
  } while (own_lane_.Drain());
}

void PeerTransport::Impl::Stop() {
  std::deque<Outgoing> never_started;
  bool not_started = false;
  {
    absl::MutexLock lock(&mu_);
    stopping_flag_.store(true, std::memory_order_release);
    // Server loops' lanes fail what they hold and close their connections.
    for (const std::unique_ptr<Lane>& lane : lanes_) {
      if (lane->attached) uv_async_send(&lane->wake);
    }
    if (!started_) {
      stopped_ = true;
      not_started = true;
      never_started.swap(inbox_);
    }
  }
  if (not_started) {
    // Callbacks run outside the lock: one may send again (and be refused).
    for (Outgoing& outgoing : never_started) {
      if (outgoing.done) outgoing.done(absl::UnavailableError("peer transport stopped"));
    }
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      stopping_ = true;
      uv_async_send(&async_);
    }
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void PeerTransport::Impl::Send(const std::string& address, std::string frame,
                               absl::Duration timeout, Callback done, bool from_loop) {
  requests_sent.fetch_add(1, std::memory_order_relaxed);
  // On a loop with a lane of this transport (a server loop's, for the
  // sends that asked for it; the transport's own): sent from this thread
  // at the end of the loop's turn, no other thread involved.
  if (thread_lane.impl == this && (from_loop || thread_lane.lane == &own_lane_) &&
      !thread_lane.lane->closing()) {
    thread_lane.lane->Queue(Outgoing{address, std::move(frame), timeout, std::move(done)});
    return;
  }
  if (held_sends.impl == this) {
    held_sends.items.push_back(Outgoing{address, std::move(frame), timeout, std::move(done)});
    return;
  }
  std::vector<Outgoing> one;
  one.push_back(Outgoing{address, std::move(frame), timeout, std::move(done)});
  Enqueue(std::move(one));
}

void PeerTransport::Impl::Enqueue(std::vector<Outgoing> items) {
  if (items.empty()) return;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_ && !stopped_) {
      for (Outgoing& item : items) inbox_.push_back(std::move(item));
      if (started_) uv_async_send(&async_);
      return;
    }
  }
  // Stopped: nobody is left to call back on the transport's thread.
  for (Outgoing& item : items) {
    requests_failed.fetch_add(1, std::memory_order_relaxed);
    item.done(absl::UnavailableError(
        absl::StrCat("peer transport stopped; not sent to ", item.address)));
  }
}

void PeerTransport::Impl::HoldSendsOnThisThread() {
  FlushHeldSends();
  held_sends.impl = this;
}

bool PeerTransport::Impl::FlushHeldSends() {
  if (!held_sends.items.empty()) {
    assert(held_sends.impl != nullptr);  // only a holding thread queues sends
    std::vector<Outgoing> items;
    items.swap(held_sends.items);
    held_sends.impl->Enqueue(std::move(items));
  }
  if (thread_lane.impl != this) return false;
  return thread_lane.lane->Drain();
}

void PeerTransport::Impl::StopHoldingOnThisThread() {
  if (held_sends.impl != this) return;
  FlushHeldSends();
  held_sends.impl = nullptr;
}

void PeerTransport::Impl::AttachLoopOnThisThread(uv_loop_t* loop) {
  // One lane per thread: a thread's earlier one ends first.
  if (thread_lane.lane != nullptr && thread_lane.impl != nullptr) {
    if (thread_lane.impl != this) return;  // another transport's loop thread
    DetachLoopOnThisThread();
  }
  auto lane = std::make_unique<Lane>(this, loop);
  Lane* attached = lane.get();
  uv_async_init(loop, &attached->wake, [](uv_async_t* async) {
    auto* lane = static_cast<Lane*>(async->data);
    lane->impl_->OnLaneWake(lane);
  });
  attached->wake.data = attached;
  {
    absl::MutexLock lock(&mu_);
    attached->attached = true;
    attached->seen_drop_generation = drop_generation_;
    lanes_.push_back(std::move(lane));
    // Stopped before the loop attached: the lane takes nothing.
    if (stopping_flag_.load(std::memory_order_relaxed)) uv_async_send(&attached->wake);
  }
  thread_lane = ThreadLane{this, attached};
}

void PeerTransport::Impl::DetachLoopOnThisThread() {
  if (thread_lane.impl != this || thread_lane.lane == &own_lane_) return;
  Lane* lane = thread_lane.lane;
  // What is queued goes through the transport's own thread instead; what is
  // in flight on this loop's connections fails.
  std::vector<Outgoing> queued;
  queued.swap(lane->queued_);
  {
    absl::MutexLock lock(&mu_);
    lane->attached = false;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&lane->wake), nullptr);
  // On this thread still (callbacks run here), sending elsewhere from now on.
  lane->Shutdown("the server loop that sent it stopped");
  thread_lane = ThreadLane{};
  Enqueue(std::move(queued));
}

void PeerTransport::Impl::OnLaneWake(Lane* lane) {
  if (lane->closing()) return;
  if (stopping()) {
    lane->Shutdown("peer transport stopped");
    return;
  }
  absl::flat_hash_set<std::string> dropped;
  {
    absl::MutexLock lock(&mu_);
    if (lane->seen_drop_generation == drop_generation_) return;
    lane->seen_drop_generation = drop_generation_;
    dropped = dropped_;
  }
  lane->CloseDropped(dropped);
}

void PeerTransport::Impl::SetDropped(std::vector<std::string> addresses) {
  absl::MutexLock lock(&mu_);
  if (!options_.allow_fault_injection) return;
  dropped_.clear();
  dropped_.insert(addresses.begin(), addresses.end());
  drop_changed_ = true;
  ++drop_generation_;
  if (started_ && !stopping_) uv_async_send(&async_);
  for (const std::unique_ptr<Lane>& lane : lanes_) {
    if (lane->attached) uv_async_send(&lane->wake);
  }
}

bool PeerTransport::Impl::IsDropped(const std::string& address) const {
  // Nothing is ever dropped without fault injection: no lock per request then.
  if (!options_.allow_fault_injection) return false;
  absl::MutexLock lock(&mu_);
  return dropped_.contains(address);
}

bool PeerTransport::Impl::RunAfter(absl::Duration delay, std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (!started_ || stopping_ || stopped_) return false;
  delayed_inbox_.emplace_back(delay, std::move(task));
  uv_async_send(&async_);
  return true;
}

void PeerTransport::Impl::StartDelayed(absl::Duration delay, std::function<void()> task) {
  auto* delayed = new DelayedTask;
  delayed->impl = this;
  delayed->task = std::move(task);
  delayed->timer.data = delayed;
  uv_timer_init(&loop_, &delayed->timer);
  delayed_.insert(delayed);
  uv_timer_start(
      &delayed->timer,
      [](uv_timer_t* timer) {
        auto* d = static_cast<DelayedTask*>(timer->data);
        d->impl->FinishDelayed(d);
      },
      static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(delay))), 0);
}

void PeerTransport::Impl::FinishDelayed(DelayedTask* delayed) {
  delayed_.erase(delayed);
  uv_timer_stop(&delayed->timer);
  std::function<void()> task = std::move(delayed->task);
  uv_close(reinterpret_cast<uv_handle_t*>(&delayed->timer),
           [](uv_handle_t* handle) { delete static_cast<DelayedTask*>(handle->data); });
  task();
}

void PeerTransport::Impl::DrainInbox() {
  std::deque<Outgoing> inbox;
  std::vector<std::pair<absl::Duration, std::function<void()>>> delayed;
  bool stopping;
  bool drop_changed;
  absl::flat_hash_set<std::string> dropped;
  {
    absl::MutexLock lock(&mu_);
    inbox.swap(inbox_);
    delayed.swap(delayed_inbox_);
    stopping = stopping_;
    drop_changed = drop_changed_;
    drop_changed_ = false;
    if (drop_changed) dropped = dropped_;
  }
  if (loop_closing_) return;
  if (drop_changed) own_lane_.CloseDropped(dropped);
  for (auto& [delay, task] : delayed) {
    if (stopping) {
      task();
    } else {
      StartDelayed(delay, std::move(task));
    }
  }
  for (Outgoing& outgoing : inbox) {
    if (stopping) {
      requests_failed.fetch_add(1, std::memory_order_relaxed);
      outgoing.done(absl::UnavailableError(
          absl::StrCat("peer transport stopped; not sent to ", outgoing.address)));
      continue;
    }
    own_lane_.Dispatch(std::move(outgoing));
  }
  own_lane_.FlushPeers();
  if (stopping) ShutDownLoop();
}

bool PeerTransport::Impl::Lane::Drain() {
  assert(OnLoopThread());
  bool called_back = false;
  while (!queued_.empty()) {
    std::vector<Outgoing> queued;
    queued.swap(queued_);
    for (Outgoing& outgoing : queued) {
      if (closing_ || impl_->stopping()) {
        impl_->requests_failed.fetch_add(1, std::memory_order_relaxed);
        outgoing.done(absl::UnavailableError(
            absl::StrCat("peer transport stopped; not sent to ", outgoing.address)));
        called_back = true;
        continue;
      }
      if (Dispatch(std::move(outgoing))) called_back = true;
    }
  }
  FlushPeers();
  return called_back;
}

void PeerTransport::Impl::Lane::FlushPeers() {
  // Flush may close a connection, whose callbacks may dispatch again (to
  // the queue, not here): to_flush_ is taken whole first.
  while (!to_flush_.empty()) {
    std::vector<Peer*> peers;
    peers.swap(to_flush_);
    for (Peer* peer : peers) {
      peer->to_flush = false;
      Flush(*peer);
    }
  }
}

void PeerTransport::Impl::Lane::CloseDropped(const absl::flat_hash_set<std::string>& dropped) {
  // Requests in flight to a peer now cut off are lost with the link.
  for (auto& [address, peer] : peers_) {
    if (dropped.contains(address) && (peer->connection != nullptr || !peer->pending.empty())) {
      CloseConnection(*peer,
                      absl::UnavailableError(absl::StrCat(
                          "dropped by fault injection: traffic to ", address, " is cut")),
                      false);
    }
  }
}

void PeerTransport::Impl::Lane::Shutdown(absl::string_view why) {
  if (closing_) return;
  closing_ = true;
  // Lookups in flight end with UV_ECANCELED (or finish first); either way
  // their callbacks free them before the loop ends.
  for (Resolve* resolve : resolves_) uv_cancel(reinterpret_cast<uv_req_t*>(&resolve->request));
  // Callbacks may send again: to the transport's inbox (this lane is
  // closing), where a stopped transport fails them at once.
  while (!queued_.empty()) {
    std::vector<Outgoing> queued;
    queued.swap(queued_);
    for (Outgoing& outgoing : queued) {
      impl_->requests_failed.fetch_add(1, std::memory_order_relaxed);
      outgoing.done(absl::UnavailableError(
          absl::StrCat(why, "; not sent to ", outgoing.address)));
    }
  }
  for (auto& [address, peer] : peers_) {
    CloseConnection(*peer, absl::UnavailableError(absl::StrCat(why, " before ", address,
                                                                " answered")),
                    false);
  }
}

bool PeerTransport::Impl::Lane::Dispatch(Outgoing outgoing) {
  assert(OnLoopThread());
  auto fail = [this, &outgoing](absl::Status status) {
    impl_->requests_failed.fetch_add(1, std::memory_order_relaxed);
    outgoing.done(std::move(status));
    return true;
  };
  if (impl_->IsDropped(outgoing.address)) {
    return fail(absl::UnavailableError(absl::StrCat(
        "dropped by fault injection: traffic to ", outgoing.address, " is cut")));
  }
  std::string& frame = outgoing.frame;
  if (frame.size() < p::kFrameLengthBytes + 8 ||
      reinterpret_cast<uintptr_t>(frame.data()) % alignof(uint32_t) != 0) {
    return fail(absl::InvalidArgumentError("peer request frame is too short to be a Request"));
  }
  std::unique_ptr<Peer>& slot = peers_[outgoing.address];
  if (slot == nullptr) {
    slot = std::make_unique<Peer>();
    slot->address = outgoing.address;
  }
  Peer& peer = *slot;
  if (peer.out_bytes + peer.in_flight_bytes + frame.size() >
      impl_->options_.max_queued_bytes_per_peer) {
    return fail(absl::UnavailableError(absl::StrCat(
        "queue to peer ", peer.address, " is full (", peer.out_bytes + peer.in_flight_bytes,
        " bytes; max_queued_bytes_per_peer ", impl_->options_.max_queued_bytes_per_peer, ")")));
  }
  if (peer.connection == nullptr && !peer.resolving) {
    if (Now() < peer.next_attempt_ms) {
      return fail(absl::UnavailableError(absl::StrCat(
          "peer ", peer.address, " unreachable (last connection attempt failed; retrying in ",
          peer.next_attempt_ms - Now(), " ms)")));
    }
    StartConnection(peer);
    if (peer.connection == nullptr && !peer.resolving) {
      return fail(absl::UnavailableError(
          absl::StrCat("cannot connect to peer ", peer.address)));
    }
  }
  const uint64_t id = next_request_id_++;
  // The request id is rewritten in place: the field is present (a
  // FinishPeerRequest frame), so no byte moves.
  auto* table = flatbuffers::GetMutableRoot<flatbuffers::Table>(frame.data() + p::kFrameLengthBytes);
  if (!table->SetField<uint64_t>(p::Request::VT_REQUEST_ID, id)) {
    return fail(absl::InvalidArgumentError(
        "peer request frame has no request_id field to rewrite: build it with "
        "FinishPeerRequest (or a nonzero request_id)"));
  }
  // Frames built elsewhere may lack the field: they carry no epoch. One
  // placed under a given epoch keeps it (FinishPeerRequest).
  if (table->GetField<uint64_t>(p::Request::VT_EPOCH, 0) == kSenderEpoch) {
    (void)table->SetField<uint64_t>(p::Request::VT_EPOCH,
                                    impl_->epoch_->load(std::memory_order_acquire));
  }
  auto* pending = new Pending;
  pending->lane = this;
  pending->peer = &peer;
  pending->id = id;
  pending->done = std::move(outgoing.done);
  uv_timer_init(loop_, &pending->timer);
  pending->timer.data = pending;
  const int64_t timeout_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(outgoing.timeout));
  uv_timer_start(
      &pending->timer,
      [](uv_timer_t* timer) {
        auto* pending = static_cast<Pending*>(timer->data);
        Lane* lane = pending->lane;
        // The timer runs only while its request is pending (Complete stops it).
        [[maybe_unused]] const size_t erased = pending->peer->pending.erase(pending->id);
        assert(erased == 1);
        lane->Complete(pending, absl::DeadlineExceededError(absl::StrCat(
                                    "no answer from peer ", pending->peer->address,
                                    " within the request timeout")));
      },
      static_cast<uint64_t>(timeout_ms), 0);
  [[maybe_unused]] const bool inserted = peer.pending.emplace(id, pending).second;
  assert(inserted);  // request ids are unique
  peer.out_bytes += frame.size();
  peer.out.push_back(std::move(frame));
  if (!peer.to_flush) {
    peer.to_flush = true;
    to_flush_.push_back(&peer);
  }
  return false;
}

void PeerTransport::Impl::Lane::Complete(Pending* pending, absl::StatusOr<std::string> answer) {
  assert(OnLoopThread());
  // Completed once: whoever completes a request has taken it out of pending.
  assert(!pending->peer->pending.contains(pending->id));
  if (!answer.ok()) impl_->requests_failed.fetch_add(1, std::memory_order_relaxed);
  uv_timer_stop(&pending->timer);
  Callback done = std::move(pending->done);
  uv_close(reinterpret_cast<uv_handle_t*>(&pending->timer),
           [](uv_handle_t* handle) { delete static_cast<Pending*>(handle->data); });
  if (done) done(std::move(answer));
}

void PeerTransport::Impl::Lane::FailAll(Peer& peer, const absl::Status& status) {
  absl::flat_hash_map<uint64_t, Pending*> pending;
  pending.swap(peer.pending);
  for (auto& [id, request] : pending) Complete(request, status);
  // The callbacks may send again (to the lane's queue, not to pending).
  assert(peer.pending.empty());
}

void PeerTransport::Impl::Lane::StartConnection(Peer& peer) {
  // One connection (or lookup) per peer at a time.
  assert(peer.connection == nullptr && !peer.resolving);
  std::string host;
  int port = 0;
  if (absl::Status status = SplitAddress(peer.address, &host, &port); !status.ok()) {
    peer.backoff_ms = kMaxBackoffMs;
    peer.next_attempt_ms = Now() + peer.backoff_ms;
    return;
  }
  sockaddr_storage address;
  std::memset(&address, 0, sizeof(address));
  if (uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&address)) == 0) {
    Connect(peer, address);
    return;
  }
  auto* resolve = new Resolve;
  resolve->lane = this;
  resolve->address = peer.address;
  resolve->port = port;
  resolve->request.data = resolve;
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  const int rc = uv_getaddrinfo(
      loop_, &resolve->request,
      [](uv_getaddrinfo_t* request, int status, addrinfo* result) {
        auto* r = static_cast<Resolve*>(request->data);
        r->lane->OnResolved(r, status, result);
      },
      host.c_str(), nullptr, &hints);
  if (rc != 0) {
    delete resolve;
    peer.backoff_ms = kMaxBackoffMs;
    peer.next_attempt_ms = Now() + peer.backoff_ms;
    return;
  }
  resolves_.insert(resolve);
  peer.resolving = true;
}

void PeerTransport::Impl::Lane::OnResolved(Resolve* resolve, int status, addrinfo* result) {
  std::unique_ptr<Resolve> owned(resolve);
  resolves_.erase(resolve);
  sockaddr_storage address;
  std::memset(&address, 0, sizeof(address));
  if (status == 0 && result != nullptr && result->ai_addrlen <= sizeof(address)) {
    std::memcpy(&address, result->ai_addr, result->ai_addrlen);
    reinterpret_cast<sockaddr_in*>(&address)->sin_port =
        htons(static_cast<uint16_t>(resolve->port));
  } else if (status == 0) {
    status = UV_EAI_NONAME;
  }
  uv_freeaddrinfo(result);
  auto it = peers_.find(resolve->address);
  if (it == peers_.end() || closing_) return;  // shutting down: requests failed already
  Peer& peer = *it->second;
  peer.resolving = false;
  if (status != 0) {
    // Requests queued behind the lookup fail now, and new ones at once
    // until the backoff ends.
    CloseConnection(peer,
                    absl::UnavailableError(absl::StrCat("cannot resolve peer host of ",
                                                        peer.address, ": ", UvError(status))),
                    true);
    return;
  }
  Connect(peer, address);
}

void PeerTransport::Impl::Lane::Connect(Peer& peer, const sockaddr_storage& address) {
  auto* connection = new Connection(impl_->options_.max_frame_bytes);
  connection->lane = this;
  connection->peer = &peer;
  uv_tcp_init(loop_, &connection->tcp);
  connection->tcp.data = connection;
  uv_timer_init(loop_, &connection->connect_timer);
  connection->connect_timer.data = connection;
  connection->open_handles = 2;
  connection->connect.data = connection;
  const int rc = uv_tcp_connect(&connection->connect, &connection->tcp,
                                reinterpret_cast<const sockaddr*>(&address),
                                [](uv_connect_t* request, int status) {
                                  auto* c = static_cast<Connection*>(request->data);
                                  c->lane->OnConnected(c, status);
                                });
  peer.connection = connection;
  if (rc != 0) {
    CloseConnection(peer, absl::UnavailableError(absl::StrCat(
                              "cannot connect to peer ", peer.address, ": ", UvError(rc))),
                    true);
    return;
  }
  uv_timer_start(
      &connection->connect_timer,
      [](uv_timer_t* timer) {
        auto* c = static_cast<Connection*>(timer->data);
        if (c->peer == nullptr || c->connected) return;
        c->lane->CloseConnection(*c->peer,
                                 absl::UnavailableError(absl::StrCat(
                                     "cannot connect to peer ", c->peer->address,
                                     ": no answer within the connect timeout")),
                                 true);
      },
      static_cast<uint64_t>(std::max<int64_t>(1, absl::ToInt64Milliseconds(impl_->options_.connect_timeout))),
      0);
  // The ClusterHello goes first; requests wait until the peer proved it
  // holds the secret (OnChallenge).
  connection->nonce = NewPeerNonce();
  connection->handshake_out =
      HelloFrame(impl_->options_.node_id, connection->nonce, "", impl_->options_.auth_on,
                 impl_->options_.cluster_id ? impl_->options_.cluster_id() : std::string());
}

absl::Status PeerTransport::Impl::Lane::OnChallenge(Connection* connection, const p::Response& response) {
  assert(connection->peer != nullptr && !connection->authenticated);  // one handshake
  Peer& peer = *connection->peer;
  const p::ClusterChallenge* challenge = response.result_as_ClusterChallenge();
  if (challenge == nullptr) {
    return absl::UnauthenticatedError(absl::StrCat(
        "peer ", peer.address, " answered ClusterHello without a challenge (an older logkvd?)"));
  }
  if (challenge->auth() != impl_->options_.auth_on) {
    return absl::FailedPreconditionError(absl::StrCat(
        "peer ", peer.address, " runs with --auth=", challenge->auth() ? "on" : "off",
        ", this node with --auth=", impl_->options_.auth_on ? "on" : "off",
        ": a cluster's nodes must all have auth on or all off"));
  }
  const std::string expected = PeerProof(impl_->options_.cluster_secret, PeerRole::kAccepting,
                                         connection->nonce, p::View(challenge->nonce()));
  if (!PeerProofMatches(expected, p::View(challenge->proof()))) {
    return absl::UnauthenticatedError(absl::StrCat(
        "peer ", peer.address, " could not prove it holds the cluster secret: nothing is sent "
        "to it"));
  }
  const std::string proof = PeerProof(impl_->options_.cluster_secret, PeerRole::kConnecting,
                                      p::View(challenge->nonce()), connection->nonce);
  // The proof goes first, the requests queued meanwhile right behind it.
  std::string hello = HelloFrame(impl_->options_.node_id, "", proof, impl_->options_.auth_on);
  peer.out_bytes += hello.size();
  peer.out.insert(peer.out.begin(), std::move(hello));
  connection->authenticated = true;
  Flush(peer);
  return absl::OkStatus();
}

void PeerTransport::Impl::Lane::OnConnected(Connection* connection, int status) {
  if (connection->peer == nullptr) return;  // closed meanwhile (UV_ECANCELED)
  Peer& peer = *connection->peer;
  if (status != 0) {
    CloseConnection(peer, absl::UnavailableError(absl::StrCat(
                              "cannot connect to peer ", peer.address, ": ", UvError(status))),
                    true);
    return;
  }
  connection->connected = true;
  uv_timer_stop(&connection->connect_timer);
  uv_tcp_nodelay(&connection->tcp, 1);
  if (impl_->options_.tls) {
    absl::StatusOr<SSL*> made = impl_->NewSsl();
    if (!made.ok()) {
      CloseConnection(peer, made.status(), true);
      return;
    }
    SSL* ssl = *made;
    BIO* in = BIO_new(BIO_s_mem());
    BIO* out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in, -1);
    BIO_set_mem_eof_return(out, -1);
    SSL_set_bio(ssl, in, out);
    SSL_set_connect_state(ssl);
    static const unsigned char kAlpn[] = "\x05logkv";
    SSL_set_alpn_protos(ssl, kAlpn, sizeof(kAlpn) - 1);
    // The peer's certificate must name the host of its address.
    const std::string host(absl::string_view(peer.address).substr(0, peer.address.rfind(':')));
    unsigned char ip[16];
    if (inet_pton(AF_INET, host.c_str(), ip) == 1 || inet_pton(AF_INET6, host.c_str(), ip) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, host.c_str());
      SSL_set1_host(ssl, host.c_str());
    }
    connection->ssl = ssl;
    connection->cipher_in = std::make_unique<char[]>(kReadChunkBytes);
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&connection->tcp),
      [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
        auto* c = static_cast<Connection*>(handle->data);
        if (c->ssl != nullptr) {
          *buf = uv_buf_init(c->cipher_in.get(), static_cast<unsigned int>(kReadChunkBytes));
          return;
        }
        size_t available;
        char* space = c->decoder.WritableSpace(kReadChunkBytes, &available);
        *buf = uv_buf_init(space, static_cast<unsigned int>(available));
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
        auto* c = static_cast<Connection*>(stream->data);
        c->lane->OnRead(c, nread);
      });
  Flush(peer);
}

void PeerTransport::Impl::Lane::OnRead(Connection* connection, ssize_t nread) {
  if (connection->peer == nullptr || nread == 0) return;
  Peer& peer = *connection->peer;
  if (nread < 0) {
    CloseConnection(peer,
                    absl::UnavailableError(absl::StrCat(
                        "connection to peer ", peer.address, " lost: ",
                        UvError(static_cast<int>(nread)))),
                    false);
    return;
  }
  if (connection->ssl != nullptr) {
    if (!OnTlsRead(connection, nread)) return;
  } else {
    connection->decoder.Commit(static_cast<size_t>(nread));
  }
  while (connection->peer != nullptr) {
    if (absl::StartsWith(connection->decoder.buffered(), "HTTP/")) {
      // An HTTP server answering the ClusterHello it could not parse.
      CloseConnection(peer,
                      absl::FailedPreconditionError(absl::StrCat(
                          peer.address, " answered in HTTP: it is an HTTP address, not a "
                          "member's binary-protocol address (its --listen / --advertise)")),
                      true);
      return;
    }
    absl::StatusOr<std::optional<absl::string_view>> frame = connection->decoder.Next();
    if (!frame.ok()) {
      CloseConnection(peer, absl::UnavailableError(absl::StrCat(
                                "bad frame from peer ", peer.address, ": ", frame.status().message())),
                      false);
      return;
    }
    if (!frame->has_value()) return;
    absl::StatusOr<const p::Response*> response =
        p::VerifyResponse(**frame, impl_->options_.max_frame_bytes);
    if (!response.ok()) {
      CloseConnection(peer, absl::UnavailableError(absl::StrCat(
                                "bad response from peer ", peer.address, ": ",
                                response.status().message())),
                      false);
      return;
    }
    const uint64_t id = (*response)->request_id();
    if (id == kHelloRequestId && !connection->authenticated) {
      absl::Status hello = p::StatusFromResponse(**response);
      if (hello.ok()) hello = OnChallenge(connection, **response);
      if (!hello.ok()) {
        CloseConnection(peer, absl::Status(hello.code(), absl::StrCat(
                                  "peer ", peer.address, " refused or failed the ClusterHello "
                                  "handshake: ", hello.message())),
                        true);
        return;
      }
      continue;
    }
    if (id == kHelloRequestId) {
      absl::Status hello = p::StatusFromResponse(**response);
      if (!hello.ok()) {
        // Refused (wrong secret): the peer closes; everything queued fails
        // with its reason rather than a bare "connection lost".
        CloseConnection(peer, absl::Status(hello.code(), absl::StrCat(
                                  "peer ", peer.address, " refused ClusterHello: ",
                                  hello.message())),
                        true);
        return;
      }
      peer.backoff_ms = 0;
      continue;
    }
    auto it = peer.pending.find(id);
    if (it == peer.pending.end()) continue;  // timed out already
    Pending* pending = it->second;
    peer.pending.erase(it);
    Complete(pending, std::string(**frame));
  }
}

absl::StatusOr<PeerTransport::Impl::CtxPtr> PeerTransport::Impl::BuildTlsContext() const {
  ERR_clear_error();
  CtxPtr made(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  SSL_CTX* ctx = made.get();
  if (ctx == nullptr) return absl::InternalError(TakeOpenSslErrors("SSL_CTX_new failed"));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (!options_.tls_ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(ctx, options_.tls_ciphersuites.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("peer TLS: --tls-ciphersuites ",
                                                   options_.tls_ciphersuites, ": ",
                                                   TakeOpenSslErrors("refused")));
  }
  const bool ca_read =
      options_.tls_ca_file.empty()
          ? SSL_CTX_set_default_verify_paths(ctx) == 1
          : SSL_CTX_load_verify_locations(ctx, options_.tls_ca_file.c_str(), nullptr) == 1;
  if (!ca_read) {
    return absl::FailedPreconditionError(absl::StrCat(
        "peer TLS: cannot read the CA file ", options_.tls_ca_file, ": ", TakeOpenSslErrors("")));
  }
  if (!options_.tls_crl_file.empty() &&
      !p::LoadCrlFile(SSL_CTX_get_cert_store(ctx), options_.tls_crl_file)) {
    return absl::FailedPreconditionError(
        absl::StrCat("peer TLS: cannot read the revocation list ", options_.tls_crl_file, ": ",
                     TakeOpenSslErrors("")));
  }
  if (!options_.tls_cert_file.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx, options_.tls_cert_file.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx, options_.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
       SSL_CTX_check_private_key(ctx) != 1)) {
    return absl::FailedPreconditionError(
        absl::StrCat("peer TLS: cannot use the certificate ", options_.tls_cert_file, " and key ",
                     options_.tls_key_file, ": ", TakeOpenSslErrors("")));
  }
  return made;
}

absl::Status PeerTransport::Impl::ReloadTls() {
  if (!options_.tls) return absl::OkStatus();
  // Built on the caller's thread: the loop keeps dialling with the context
  // in use meanwhile.
  absl::StatusOr<CtxPtr> ctx = BuildTlsContext();
  ERR_clear_error();
  if (!ctx.ok()) return ctx.status();
  absl::MutexLock lock(&tls_mu_);
  tls_ctx_ = *std::move(ctx);
  tls_status_ = absl::OkStatus();
  return absl::OkStatus();
}

absl::StatusOr<SSL*> PeerTransport::Impl::NewSsl() {
  absl::MutexLock lock(&tls_mu_);
  if (!tls_status_.ok()) return tls_status_;
  SSL* ssl = SSL_new(tls_ctx_.get());
  if (ssl == nullptr) {
    return absl::InternalError(absl::StrCat("peer TLS: ", TakeOpenSslErrors("SSL_new failed")));
  }
  return ssl;
}

bool PeerTransport::Impl::Lane::OnTlsRead(Connection* connection, ssize_t nread) {
  Peer& peer = *connection->peer;
  SSL* ssl = connection->ssl;
  BIO_write(SSL_get_rbio(ssl), connection->cipher_in.get(), static_cast<int>(nread));
  auto fail = [&](absl::string_view what) {
    const long verify = SSL_get_verify_result(ssl);
    std::string reason = TakeOpenSslErrors("the peer closed the connection");
    if (verify != X509_V_OK) {
      reason = absl::StrCat(X509_verify_cert_error_string(verify), " (", reason, ")");
    }
    WriteCiphertext(peer, connection);  // an alert, if any
    CloseConnection(peer,
                    absl::UnavailableError(absl::StrCat("TLS ", what, " with peer ",
                                                        peer.address, " failed: ", reason)),
                    true);
    return false;
  };
  if (!connection->tls_done) {
    ERR_clear_error();
    const int rc = SSL_do_handshake(ssl);
    if (rc != 1) {
      const int error = SSL_get_error(ssl, rc);
      if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) return fail("handshake");
      WriteCiphertext(peer, connection);
      return true;
    }
    connection->tls_done = true;
    WriteCiphertext(peer, connection);
    Flush(peer);  // the ClusterHello
    if (connection->peer == nullptr) return false;
  }
  while (true) {
    size_t available = 0;
    char* space = connection->decoder.WritableSpace(16u << 10, &available);
    ERR_clear_error();
    const int got =
        SSL_read(ssl, space, static_cast<int>(std::min<size_t>(available, 1u << 30)));
    if (got > 0) {
      connection->decoder.Commit(static_cast<size_t>(got));
      continue;
    }
    const int error = SSL_get_error(ssl, got);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) break;
    return fail("read");
  }
  WriteCiphertext(peer, connection);
  return connection->peer != nullptr;
}

void PeerTransport::Impl::Lane::WriteCiphertext(Peer& peer, Connection* connection) {
  BIO* bio = SSL_get_wbio(connection->ssl);
  const size_t pending = BIO_ctrl_pending(bio);
  if (pending == 0) return;
  std::vector<std::string> data(1, std::string(pending, '\0'));
  const int read = BIO_read(bio, data[0].data(), static_cast<int>(pending));
  data[0].resize(static_cast<size_t>(std::max(read, 0)));
  Write(peer, connection, std::move(data));
}

void PeerTransport::Impl::Lane::Flush(Peer& peer) {
  assert(OnLoopThread());
  Connection* connection = peer.connection;
  if (connection == nullptr || !connection->connected) return;
  if (connection->ssl != nullptr && !connection->tls_done) {
    // The TLS handshake first (begun here, once connected).
    if (SSL_in_before(connection->ssl)) {
      ERR_clear_error();
      SSL_do_handshake(connection->ssl);
      WriteCiphertext(peer, connection);
    }
    return;
  }
  // Until the peer proved the secret, only the handshake goes out.
  std::vector<std::string> data;
  if (connection->authenticated) {
    data.swap(peer.out);
    peer.out_bytes = 0;
  } else if (!connection->handshake_out.empty()) {
    data.push_back(std::move(connection->handshake_out));
    connection->handshake_out.clear();
  }
  if (data.empty()) return;
  if (connection->ssl != nullptr) {
    // One SSL_write for every frame (OpenSSL cuts records of 16 KiB at most).
    if (data.size() > 1) {
      std::string joined;
      for (const std::string& frame : data) joined.append(frame);
      data.resize(1);
      data[0] = std::move(joined);
    }
    ERR_clear_error();
    if (SSL_write(connection->ssl, data[0].data(), static_cast<int>(data[0].size())) <= 0) {
      CloseConnection(peer, absl::UnavailableError(absl::StrCat(
                                "TLS write to peer ", peer.address, " failed: ",
                                TakeOpenSslErrors(""))),
                      false);
      return;
    }
    WriteCiphertext(peer, connection);
    return;
  }
  Write(peer, connection, std::move(data));
}

void PeerTransport::Impl::Lane::Write(Peer& peer, Connection* connection,
                                      std::vector<std::string> data) {
  auto* write = new WriteRequest;
  write->data = std::move(data);
  write->peer = &peer;
  write->connection = connection;
  write->request.data = write;
  // uv_write copies the buffer list; the bytes stay in write->data.
  absl::InlinedVector<uv_buf_t, 4> buffers;
  buffers.reserve(write->data.size());
  for (std::string& frame : write->data) {
    buffers.push_back(uv_buf_init(frame.data(), static_cast<unsigned int>(frame.size())));
    write->bytes += frame.size();
  }
  peer.in_flight_bytes += write->bytes;
  const int rc = uv_write(&write->request, reinterpret_cast<uv_stream_t*>(&connection->tcp),
                          buffers.data(), static_cast<unsigned int>(buffers.size()),
                          [](uv_write_t* request, int status) {
                            auto* write = static_cast<WriteRequest*>(request->data);
                            Peer* peer = write->peer;
                            Connection* c = write->connection;
                            assert(peer->in_flight_bytes >= write->bytes);
                            peer->in_flight_bytes -= write->bytes;
                            delete write;
                            if (status != 0 && c->peer == peer) {
                              c->lane->CloseConnection(
                                  *peer,
                                  absl::UnavailableError(absl::StrCat(
                                      "write to peer ", peer->address, " failed: ",
                                      UvError(status))),
                                  false);
                            }
                          });
  if (rc != 0) {
    peer.in_flight_bytes -= write->bytes;
    delete write;
    CloseConnection(peer, absl::UnavailableError(absl::StrCat(
                              "write to peer ", peer.address, " failed: ", UvError(rc))),
                    false);
  }
}

void PeerTransport::Impl::Lane::CloseConnection(Peer& peer, const absl::Status& status,
                                          bool failed_attempt) {
  if (failed_attempt) {
    peer.backoff_ms =
        peer.backoff_ms == 0 ? kFirstBackoffMs : std::min(kMaxBackoffMs, peer.backoff_ms * 2);
    peer.next_attempt_ms = Now() + peer.backoff_ms;
  }
  peer.out.clear();
  peer.out_bytes = 0;
  if (Connection* connection = peer.connection; connection != nullptr) {
    assert(connection->peer == &peer);  // a peer's connection names it
    peer.connection = nullptr;
    connection->peer = nullptr;
    ReleaseConnection(connection);
  }
  FailAll(peer, status);
}

void PeerTransport::Impl::Lane::ReleaseConnection(Connection* connection) {
  assert(connection->peer == nullptr);  // detached first: nothing reaches it any more
  auto on_close = [](uv_handle_t* handle) {
    auto* c = static_cast<Connection*>(handle->data);
    assert(c->open_handles > 0);
    if (--c->open_handles == 0) delete c;
  };
  uv_timer_stop(&connection->connect_timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->connect_timer), on_close);
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp), on_close);
}

void PeerTransport::Impl::ShutDownLoop() {
  if (loop_closing_) return;
  loop_closing_ = true;
  // Tasks still waiting run now; what they send fails (stopping).
  while (!delayed_.empty()) FinishDelayed(*delayed_.begin());
  own_lane_.Shutdown("peer transport stopped");
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }
  // Write callbacks (with ECANCELED) still name their peer: peers are freed
  // with the Impl (and its lanes), after the loop has finished.
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_prepare_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_check_), nullptr);
}

PeerTransport::PeerTransport(const PeerTransportOptions& options)
    : impl_(std::make_unique<Impl>(options, &epoch_)) {}
PeerTransport::~PeerTransport() { impl_->Stop(); }
absl::Status PeerTransport::Start() { return impl_->Start(); }
void PeerTransport::Stop() { impl_->Stop(); }
void PeerTransport::Send(const std::string& address, std::string request_frame,
                         absl::Duration timeout, Callback done) {
  impl_->Send(address, std::move(request_frame), timeout, std::move(done), /*from_loop=*/false);
}
void PeerTransport::SendFromThisLoop(const std::string& address, std::string request_frame,
                                     absl::Duration timeout, Callback done) {
  impl_->Send(address, std::move(request_frame), timeout, std::move(done), /*from_loop=*/true);
}
bool PeerTransport::RunAfter(absl::Duration delay, std::function<void()> task) {
  return impl_->RunAfter(delay, std::move(task));
}
void PeerTransport::HoldSendsOnThisThread() { impl_->HoldSendsOnThisThread(); }
bool PeerTransport::FlushHeldSends() { return impl_->FlushHeldSends(); }
void PeerTransport::AttachLoopOnThisThread(uv_loop_s* loop) {
  impl_->AttachLoopOnThisThread(loop);
}
void PeerTransport::DetachLoopOnThisThread() { impl_->DetachLoopOnThisThread(); }
void PeerTransport::SetLoopHooks(LoopHooks hooks) { impl_->SetLoopHooks(std::move(hooks)); }
void PeerTransport::SetNodeId(const std::string& node_id) { impl_->SetNodeId(node_id); }
absl::Status PeerTransport::ReloadTls() { return impl_->ReloadTls(); }
void PeerTransport::StopHoldingOnThisThread() { impl_->StopHoldingOnThisThread(); }
void PeerTransport::SetDropped(std::vector<std::string> addresses) {
  impl_->SetDropped(std::move(addresses));
}
bool PeerTransport::IsDropped(const std::string& address) const {
  return impl_->IsDropped(address);
}
uint64_t PeerTransport::requests_sent() const { return impl_->requests_sent.load(); }
uint64_t PeerTransport::requests_failed() const { return impl_->requests_failed.load(); }

}  // namespace logkv::server::cluster
