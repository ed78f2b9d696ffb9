#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/core/peer_handler.h"
#include "server/log.h"
#include "server/namespaces.h"

namespace logkv::server {

namespace p = ::logkv::protocol;

// The HTTP side of a connection: parser, unparsed input and the answers owed
// in request order (HTTP/1.1 answers pipelined requests in order).
struct HttpSession {
  explicit HttpSession(const http::HttpLimits& limits) : parser(limits) {}

  http::HttpParser parser;
  std::string remote_address;  // the client's IP address as text
  // Received bytes [begin, end) not yet given to the parser.
  std::unique_ptr<char[]> input;
  size_t capacity = 0, begin = 0, end = 0;
  bool stop_parsing = false;  // after a request that ends the connection, or an error
  int64_t request_began_ms = -1;  // loop time the unfinished request began, -1: none

  struct Owed {
    uint64_t sequence;
    bool ready = false;
    bool keep_alive = true;
    bool head = false;
    const http::Route* route = nullptr;  // null: refused before routing
    int64_t start_ns = 0;
    std::string bytes;  // the serialised answer, once ready
  };
  std::deque<Owed> owed;  // answers not yet in the output, oldest first
  uint64_t next_sequence = 0;

  char* WritableSpace(size_t min_bytes, size_t* available) {
    if (begin == end) begin = end = 0;
    if (capacity - end < min_bytes) {
      if (begin > 0) {
        std::memmove(input.get(), input.get() + begin, end - begin);
        end -= begin;
        begin = 0;
      }
      if (capacity - end < min_bytes) {
        const size_t grown = std::max(capacity * 2, end + min_bytes);
        auto bigger = std::make_unique<char[]>(grown);
        if (end > 0) std::memcpy(bigger.get(), input.get(), end);
        input = std::move(bigger);
        capacity = grown;
      }
    }
    *available = capacity - end;
    return input.get() + end;
  }
};

// One client connection, owned by its loop; freed in the close callback.
struct Server::Connection {
  uv_tcp_t handle;  // handle.data points back here
  Loop* loop = nullptr;
  uint64_t id = 0;
  std::unique_ptr<HttpSession> http;  // set for HTTP connections
  Session session;                    // whose keys this connection sees
  bool authenticated = false;         // binary protocol with auth on: Hello done
  bool is_peer = false;               // a cluster peer (ClusterHello accepted)
  // The peer handshake's nonces, once the first ClusterHello was answered.
  std::string peer_nonce_theirs;
  std::string peer_nonce_own;
  p::FrameDecoder decoder;
  flatbuffers::FlatBufferBuilder builder{1024};
  std::string out;             // answers not yet handed to libuv
  size_t in_flight_bytes = 0;  // handed to uv_write, not yet written
  bool reading = false;
  bool closing = false;        // close once everything owed is written
  bool eof = false;            // the client half-closed: nothing more will arrive
  bool closed = false;         // uv_close called
  int pending = 0;             // deferred answers still to come
  int64_t last_read_ms = 0;    // loop time of the last bytes received
  // Binary: loop time the frame now arriving began, -1: none.
  int64_t frame_began_ms = -1;
  // Of ServerCounters::buffered_request_bytes, what the request now arriving holds.
  size_t reserved_bytes = 0;
  struct Watch {
    uint64_t user_id;             // whose per-user watch count it is in (0: none)
    std::string prefix;
    std::vector<uint64_t> after;  // per shard: last sequence sent
  };
  // By the Watch request's id: adding, finding and removing one is O(1).
  absl::flat_hash_map<uint64_t, Watch> watches;

  explicit Connection(uint32_t max_frame_bytes) : decoder(max_frame_bytes) {}
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle); }
  size_t owed_bytes() const { return out.size() + in_flight_bytes; }
  size_t buffered_input() const {
    return http ? http->end - http->begin : decoder.buffered_bytes();
  }
};

class Server::Loop : public http::ResponseSink {
 public:
  Loop(Server* server, int index) : server_(server), index_(index) {}
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // On the owner's thread, before Run. http_addresses: one listener each.
  absl::Status Init(const sockaddr_in& address, const std::vector<sockaddr_in>& http_addresses);
  void Run();

  // The port a listener is bound to: -1 the binary one, else that HTTP one.
  int BoundPort(int http_index = -1) {
    uv_tcp_t* listener = http_index < 0 ? &listener_ : &http_listeners_[http_index]->handle;
    sockaddr_in bound;
    int length = sizeof(bound);
    std::memset(&bound, 0, sizeof(bound));
    uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &length);
    return ntohs(bound.sin_port);
  }

  // http::ResponseSink: any thread.
  void Deliver(uint64_t connection_id, uint64_t sequence, http::HttpResponse response) override;

  // Any thread: run task on this loop's thread.
  void Post(std::function<void(Loop&)> task);
  // Any thread: there may be news for this loop's watchers.
  void WakeWatchers() {
    if (watch_count_.load(std::memory_order_relaxed) == 0) return;
    absl::MutexLock lock(&tasks_mu_);
    if (!handles_closing_) uv_async_send(&events_async_);
  }

 private:
  static Loop& Of(uv_handle_t* handle) { return *static_cast<Loop*>(handle->data); }
  static Connection& ConnectionOf(uv_handle_t* handle) {
    return *static_cast<Connection*>(handle->data);
  }

  void OnConnection(uv_stream_t* listener, int status, bool is_http);
  void OnRead(Connection& c, ssize_t nread);
  void ProcessInput(Connection& c) {
    if (c.http) {
      ProcessHttp(c);
    } else {
      ProcessFrames(c);
    }
  }
  void ProcessFrames(Connection& c);
  // Limits on the frame whose prefix has arrived, before its bytes are
  // buffered: false when it was refused (the connection then closes).
  bool AdmitFrame(Connection& c);
  // The same for the body of the HTTP request being parsed.
  bool AdmitHttpBody(Connection& c);
  // Reserves server-wide buffer space so that c's request now arriving
  // holds total_bytes; false when that would pass max_buffered_bytes.
  bool ReserveInput(Connection& c, size_t total_bytes);
  void ReleaseInput(Connection& c);
  // Answers status with request id 0 and closes c: its stream is unusable.
  void RefuseFrame(Connection& c, const absl::Status& status);
  bool HandleHello(Connection& c, const p::Request& request);
  // Whether c's session still holds (ServerConfig::check_session). When not,
  // the session ends: every watch and request_id (0: none, the connection
  // itself) are answered with the failure, and the connection closes.
  bool SessionHolds(Connection& c, uint64_t request_id);
  // Cluster-internal operations: ClusterHello, and the rest on peer connections.
  // As DispatchOperation, for ClusterHello and the peers' operations.
  bool DispatchPeer(Connection& c, const p::Request& request, int64_t start_ns);
  // The peer handshake (protocol/logkv.fbs, ClusterHello), both of its steps.
  void HandleClusterHello(Connection& c, const p::Request& request);
  // The completion of an answer deferred on c (Service::Handle's
  // contract); the answer is observed as operation's, begun at start_ns.
  Service::Completion DeferOn(Connection& c, p::Operation operation, int64_t start_ns);

  // HTTP.
  void ProcessHttp(Connection& c);
  void DispatchHttp(Connection& c, http::HttpRequest& request);
  // Serialises response into *out (HEAD: without the body).
  void SerializeHttp(const http::HttpResponse& response, bool keep_alive, bool head,
                     std::string* out);
  // The answer for sequence is ready: emit every ready answer in order.
  void CompleteHttp(Connection& c, uint64_t sequence, std::string bytes);
  void EmitReadyHttp(Connection& c);
  // retry_after_s > 0 adds Retry-After.
  void RefuseHttp(Connection& c, int status, absl::string_view message, int retry_after_s = 0);
  // Answers request; observes it (ServerConfig::protocol_observer) once answered.
  void Dispatch(Connection& c, const p::Request& request);
  // True when the answer was built in c.builder and appended to the output
  // (false: deferred, completed through DeferOn).
  bool DispatchOperation(Connection& c, const p::Request& request, int64_t start_ns);
  // Reports an answer to the protocol observer, if there is one.
  void ObserveAnswer(p::Operation operation, absl::string_view frame, int64_t start_ns);
  void Append(Connection& c, absl::string_view frame) { c.out.append(frame.data(), frame.size()); }
  void AppendStatus(Connection& c, uint64_t request_id, const absl::Status& status);
  void Flush(Connection& c);
  void OnWritten(Connection& c, int status);
  void ApplyBackpressure(Connection& c);
  void StartReading(Connection& c);
  void StopReading(Connection& c);
  void FinishIfDone(Connection& c);
  // After a half-close: closing once no complete request waits in the input
  // any more (only the output limits can hold one back).
  void CloseAfterEofIfDone(Connection& c) {
    if (!c.eof || c.closing) return;
    const bool held_back =
        c.owed_bytes() > server_->config_.max_output_bytes ||
        (c.http && c.http->owed.size() >= server_->config_.max_pipelined_requests);
    if (!held_back) c.closing = true;
  }
  void Close(Connection& c);

  void AddWatch(Connection& c, uint64_t request_id, const p::Watch& watch);
  void RemoveWatch(Connection& c, uint64_t watch_request_id, const absl::Status& final_status);
  void PumpWatches();

  void DrainTasks();
  void MaybeFinishShutdown();

 public:
  void BeginShutdown();
  // SessionHolds for every authenticated connection of this loop.
  void RecheckSessions();

 private:

  Server* const server_;
  const int index_;
  uv_loop_t loop_;
  uv_tcp_t listener_;
  struct HttpListener {
    uv_tcp_t handle;
    Loop* loop;
  };
  std::vector<std::unique_ptr<HttpListener>> http_listeners_;
  std::thread::id thread_id_;
  // While a handler runs on this loop: where an answer given at once goes.
  struct InlineAnswer {
    uint64_t connection_id = 0;
    uint64_t sequence = 0;
    bool answered = false;
    http::HttpResponse response;
  };
  InlineAnswer* inline_answer_ = nullptr;
  uv_async_t tasks_async_;
  uv_async_t events_async_;
  uv_timer_t shutdown_timer_;
  uv_timer_t idle_timer_;  // closes idle and slow connections
  // Run ServerConfig::loop_turn before the loop blocks and after I/O.
  uv_prepare_t turn_prepare_;
  uv_check_t turn_check_;
  void CloseIdleConnections();

  absl::Mutex tasks_mu_;
  std::vector<std::function<void(Loop&)>> tasks_ ABSL_GUARDED_BY(tasks_mu_);
  bool handles_closing_ ABSL_GUARDED_BY(tasks_mu_) = false;

  // Loop-thread state.
  absl::flat_hash_map<uint64_t, Connection*> connections_;
  uint64_t next_connection_id_ = 1;
  bool stopping_ = false;
  bool handles_closed_ = false;
  // Connections with at least one watch: what PumpWatches visits.
  absl::flat_hash_set<Connection*> watchers_;
  std::atomic<int> watch_count_{0};
};

namespace {

std::string UvError(int code) { return absl::StrCat(uv_err_name(code), ": ", uv_strerror(code)); }

// A socket bound with SO_REUSEPORT so every loop can listen on the same port.
absl::StatusOr<int> BindReusePort(const sockaddr_in& address) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // libuv 1.44 has no flag for SO_REUSEPORT: set it on the fd before bind.
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
      ::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    ::close(fd);
    char host[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &address.sin_addr, host, sizeof(host));
    return absl::UnavailableError(absl::StrCat("cannot bind ", host, ":",
                                               ntohs(address.sin_port), ": ",
                                               std::strerror(error)));
  }
  return fd;
}

// Sockets with SO_REUSEPORT share a port with any other such socket of the
// same user, so a second logkvd would silently split the traffic. A plain
// bind first proves the port is free.
absl::Status CheckPortFree(const sockaddr_in& address) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
  const int error = errno;
  ::close(fd);
  if (rc != 0) {
    char host[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &address.sin_addr, host, sizeof(host));
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":",
                                               ntohs(address.sin_port), ": ",
                                               std::strerror(error),
                                               error == EADDRINUSE ? " (port in use)" : ""));
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

absl::Status Listen(uv_loop_t* loop, uv_tcp_t* listener, const sockaddr_in& address,
                    uv_connection_cb on_connection) {
  auto fd = BindReusePort(address);
  if (!fd.ok()) return fd.status();
  uv_tcp_init(loop, listener);
  if (int rc = uv_tcp_open(listener, *fd); rc != 0) {
    ::close(*fd);
    return absl::InternalError(absl::StrCat("uv_tcp_open: ", UvError(rc)));
  }
  if (int rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), 1024, on_connection);
      rc != 0) {
    return absl::UnavailableError(absl::StrCat("listen: ", UvError(rc)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Server::Loop::Init(const sockaddr_in& address,
                                const std::vector<sockaddr_in>& http_addresses) {
  if (int rc = uv_loop_init(&loop_); rc != 0) return absl::InternalError(UvError(rc));
  listener_.data = this;
  if (absl::Status status =
          Listen(&loop_, &listener_, address,
                 [](uv_stream_t* server, int status) {
                   Of(reinterpret_cast<uv_handle_t*>(server)).OnConnection(server, status, false);
                 });
      !status.ok()) {
    return status;
  }
  listener_.data = this;
  for (const sockaddr_in& http_address : http_addresses) {
    auto listener = std::make_unique<HttpListener>();
    listener->loop = this;
    if (absl::Status status = Listen(&loop_, &listener->handle, http_address,
                                     [](uv_stream_t* server, int status) {
                                       auto* l = static_cast<HttpListener*>(server->data);
                                       l->loop->OnConnection(server, status, true);
                                     });
        !status.ok()) {
      return status;
    }
    listener->handle.data = listener.get();
    http_listeners_.push_back(std::move(listener));
  }
  uv_async_init(&loop_, &tasks_async_,
                [](uv_async_t* async) { Of(reinterpret_cast<uv_handle_t*>(async)).DrainTasks(); });
  tasks_async_.data = this;
  uv_async_init(&loop_, &events_async_, [](uv_async_t* async) {
    Of(reinterpret_cast<uv_handle_t*>(async)).PumpWatches();
  });
  events_async_.data = this;
  uv_timer_init(&loop_, &shutdown_timer_);
  shutdown_timer_.data = this;
  uv_timer_init(&loop_, &idle_timer_);
  idle_timer_.data = this;
  uv_prepare_init(&loop_, &turn_prepare_);
  turn_prepare_.data = this;
  uv_check_init(&loop_, &turn_check_);
  turn_check_.data = this;
  if (server_->config_.loop_turn) {
    uv_prepare_start(&turn_prepare_, [](uv_prepare_t* prepare) {
      Of(reinterpret_cast<uv_handle_t*>(prepare)).server_->config_.loop_turn();
    });
    uv_check_start(&turn_check_, [](uv_check_t* check) {
      Of(reinterpret_cast<uv_handle_t*>(check)).server_->config_.loop_turn();
    });
  }
  {
    // A connection is closed between one and one and a quarter timeouts late.
    const absl::Duration shortest =
        http_addresses.empty()
            ? server_->config_.binary_idle_timeout
            : std::min(server_->config_.binary_idle_timeout, server_->config_.http_idle_timeout);
    const uint64_t period_ms =
        static_cast<uint64_t>(std::max<int64_t>(100, absl::ToInt64Milliseconds(shortest) / 4));
    uv_timer_start(
        &idle_timer_,
        [](uv_timer_t* timer) { Of(reinterpret_cast<uv_handle_t*>(timer)).CloseIdleConnections(); },
        period_ms, period_ms);
  }
  return absl::OkStatus();
}

void Server::Loop::Run() {
  thread_id_ = std::this_thread::get_id();
  if (server_->config_.loop_started) server_->config_.loop_started();
  uv_run(&loop_, UV_RUN_DEFAULT);
  // Every handle is closed by now; let their close callbacks run, then free.
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop_) != 0) Log(Level::kWarning, "loop %d closed with handles open", index_);
}

void Server::Loop::Post(std::function<void(Loop&)> task) {
  absl::MutexLock lock(&tasks_mu_);
  // After shutdown nobody is left to answer: late completions are dropped.
  if (handles_closing_) return;
  tasks_.push_back(std::move(task));
  uv_async_send(&tasks_async_);
}

void Server::Loop::DrainTasks() {
  std::vector<std::function<void(Loop&)>> tasks;
  {
    absl::MutexLock lock(&tasks_mu_);
    tasks.swap(tasks_);
  }
  for (auto& task : tasks) task(*this);
}

void Server::Loop::OnConnection(uv_stream_t* listener, int status, bool is_http) {
  if (status < 0) {
    Log(Level::kWarning, "accept failed: %s", UvError(status));
    return;
  }
  auto* c = new Connection(server_->service_->config().limits.max_frame_bytes);
  c->loop = this;
  c->id = next_connection_id_++;
  c->last_read_ms = static_cast<int64_t>(uv_now(&loop_));
  if (is_http) c->http = std::make_unique<HttpSession>(server_->config_.http_limits);
  uv_tcp_init(&loop_, &c->handle);
  c->handle.data = c;
  if (uv_accept(listener, c->stream()) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->handle),
             [](uv_handle_t* handle) { delete &ConnectionOf(handle); });
    return;
  }
  uv_tcp_nodelay(&c->handle, 1);
  if (is_http) {
    sockaddr_storage peer;
    int length = sizeof(peer);
    char text[INET6_ADDRSTRLEN] = "";
    if (uv_tcp_getpeername(&c->handle, reinterpret_cast<sockaddr*>(&peer), &length) == 0) {
      if (peer.ss_family == AF_INET) {
        uv_ip4_name(reinterpret_cast<const sockaddr_in*>(&peer), text, sizeof(text));
      } else if (peer.ss_family == AF_INET6) {
        uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(&peer), text, sizeof(text));
      }
    }
    c->http->remote_address = text;
  }
  connections_[c->id] = c;
  server_->counters()->connections.fetch_add(1, std::memory_order_relaxed);
  if (is_http) server_->counters()->http_connections.fetch_add(1, std::memory_order_relaxed);
  StartReading(*c);
}

void Server::Loop::StartReading(Connection& c) {
  if (c.reading || c.closing) return;
  c.reading = true;
  uv_read_start(
      c.stream(),
      [](uv_handle_t* handle, size_t suggested, uv_buf_t* buf) {
        Connection& conn = ConnectionOf(handle);
        size_t available;
        const size_t chunk = std::max(suggested, conn.loop->server_->config_.read_chunk_bytes);
        char* space = conn.http ? conn.http->WritableSpace(chunk, &available)
                                : conn.decoder.WritableSpace(chunk, &available);
        *buf = uv_buf_init(space, static_cast<unsigned int>(available));
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
        Connection& conn = ConnectionOf(reinterpret_cast<uv_handle_t*>(stream));
        conn.loop->OnRead(conn, nread);
      });
}

void Server::Loop::StopReading(Connection& c) {
  if (!c.reading) return;
  c.reading = false;
  uv_read_stop(c.stream());
}

void Server::Loop::OnRead(Connection& c, ssize_t nread) {
  if (nread == 0) return;  // EAGAIN: nothing to do
  if (nread < 0) {
    StopReading(c);
    if (nread != UV_EOF) {
      // The client is gone: nothing owed to it can be delivered.
      Log(Level::kDebug, "connection %d: read error %s", c.id, UvError(static_cast<int>(nread)));
      c.out.clear();
      c.closing = true;
      FinishIfDone(c);
      return;
    }
    // A half-close: requests already received are still answered (those
    // held back by the output limits too), then the connection closes.
    c.eof = true;
    ProcessInput(c);
    Flush(c);
    CloseAfterEofIfDone(c);
    FinishIfDone(c);
    return;
  }
  c.last_read_ms = static_cast<int64_t>(uv_now(&loop_));
  if (c.http) {
    c.http->end += static_cast<size_t>(nread);
  } else {
    c.decoder.Commit(static_cast<size_t>(nread));
  }
  ProcessInput(c);
  Flush(c);
  ApplyBackpressure(c);
  FinishIfDone(c);
}

void Server::Loop::AppendStatus(Connection& c, uint64_t request_id, const absl::Status& status) {
  p::BuildStatusResponse(&c.builder, request_id, status);
  Append(c, p::FrameOf(c.builder));
}

void Server::Loop::ProcessFrames(Connection& c) {
  const p::Limits& limits = server_->service_->config().limits;
  // Stop answering once the answers owed pass the limit: the rest of the
  // frames wait in the decoder until the client reads (ApplyBackpressure).
  while (!c.closing && c.owed_bytes() <= server_->config_.max_output_bytes) {
    if (!AdmitFrame(c)) return;
    absl::StatusOr<std::optional<absl::string_view>> frame = c.decoder.Next();
    if (!frame.ok()) {
      // The stream cannot be resynchronised: answer, then close.
      RefuseFrame(c, frame.status());
      return;
    }
    if (!frame->has_value()) {
      // The clock of a slow frame starts when its first bytes are here.
      if (c.decoder.buffered_bytes() > 0 && c.frame_began_ms < 0) {
        c.frame_began_ms = static_cast<int64_t>(uv_now(&loop_));
      }
      return;
    }
    c.frame_began_ms = -1;
    ReleaseInput(c);
    absl::StatusOr<const p::Request*> request = p::VerifyRequest(**frame, limits);
    if (!request.ok()) {
      RefuseFrame(c, request.status());
      return;
    }
    if (absl::Status status = p::CheckRequest(**request, limits); !status.ok()) {
      const int64_t start_ns = server_->config_.protocol_observer ? absl::GetCurrentTimeNanos() : 0;
      AppendStatus(c, (*request)->request_id(), status);
      ObserveAnswer((*request)->operation_type(), p::FrameOf(c.builder), start_ns);
      continue;
    }
    Dispatch(c, **request);
  }
}

void Server::Loop::RefuseFrame(Connection& c, const absl::Status& status) {
  Log(Level::kWarning, "connection %d: %s; closing it", c.id, status.message());
  AppendStatus(c, 0, status);
  StopReading(c);
  c.closing = true;
}

bool Server::Loop::AdmitFrame(Connection& c) {
  const std::optional<uint32_t> announced = c.decoder.NextFrameBytes();
  if (!announced.has_value()) return true;
  const ServerConfig& config = server_->config_;
  // Beyond max_frame_bytes: the decoder's own refusal.
  if (*announced > server_->service_->config().limits.max_frame_bytes) return true;
  if (config.authenticate && !c.authenticated && !c.is_peer &&
      *announced > config.max_unauthenticated_frame_bytes) {
    RefuseFrame(c, absl::ResourceExhaustedError(absl::StrCat(
                       "frame of ", *announced, " bytes before a successful Hello: until it "
                       "authenticates a connection may send frames of at most ",
                       config.max_unauthenticated_frame_bytes, " bytes")));
    return false;
  }
  const bool incomplete = c.decoder.buffered_bytes() < p::kFrameLengthBytes + *announced;
  if (incomplete && *announced > kUnreservedRequestBytes && !ReserveInput(c, *announced)) {
    RefuseFrame(c, absl::ResourceExhaustedError(absl::StrCat(
                       "the server holds too many bytes of requests still arriving "
                       "(--max-buffered-bytes=", config.max_buffered_bytes, "): frame of ",
                       *announced, " bytes refused; retry later")));
    return false;
  }
  return true;
}

bool Server::Loop::ReserveInput(Connection& c, size_t total_bytes) {
  if (total_bytes <= c.reserved_bytes) return true;
  const size_t more = total_bytes - c.reserved_bytes;
  const size_t limit = server_->config_.max_buffered_bytes;
  std::atomic<uint64_t>& buffered = server_->counters()->buffered_request_bytes;
  uint64_t now = buffered.load(std::memory_order_relaxed);
  do {
    if (limit != 0 && now + more > limit) return false;
  } while (!buffered.compare_exchange_weak(now, now + more, std::memory_order_relaxed));
  c.reserved_bytes = total_bytes;
  return true;
}

void Server::Loop::ReleaseInput(Connection& c) {
  if (c.reserved_bytes == 0) return;
  server_->counters()->buffered_request_bytes.fetch_sub(c.reserved_bytes,
                                                        std::memory_order_relaxed);
  c.reserved_bytes = 0;
}

// With auth on, Hello's auth_token (an API key) decides whose keys the
// connection sees; a Hello whose key fails leaves the connection
// unauthenticated, whatever an earlier Hello proved. Until a Hello succeeds
// only Hello and Ping are served (Stats too shows only the caller's own
// figures). Returns true when the request was answered here.
bool Server::Loop::HandleHello(Connection& c, const p::Request& request) {
  const auto& authenticate = server_->config_.authenticate;
  if (!authenticate) return false;
  const p::Operation operation = request.operation_type();
  if (operation == p::Operation::Hello) {
    const absl::string_view token = p::View(request.operation_as_Hello()->auth_token());
    if (token.empty()) return false;  // a plain Hello: answered by the service
    absl::StatusOr<Session> session = authenticate(token);
    if (!session.ok()) {
      c.session = Session();
      c.authenticated = false;
      // Watches opened under the earlier key end too: they would go on
      // showing that tenant's keys.
      std::vector<uint64_t> watches;
      for (const auto& [watch_id, watch] : c.watches) watches.push_back(watch_id);
      for (uint64_t watch : watches) {
        RemoveWatch(c, watch,
                    absl::UnauthenticatedError("watch ended: a later Hello's API key failed"));
      }
      AppendStatus(c, request.request_id(), session.status());
      return true;
    }
    c.session = *std::move(session);
    c.authenticated = true;
    return false;
  }
  if (c.authenticated || operation == p::Operation::Ping) return false;
  AppendStatus(c, request.request_id(),
               absl::UnauthenticatedError(
                   "this node requires authentication: send Hello with an API key first"));
  return true;
}

bool Server::Loop::SessionHolds(Connection& c, uint64_t request_id) {
  const auto& check = server_->config_.check_session;
  if (!c.authenticated || !check || c.closing) return true;
  const absl::Status status = check(&c.session);
  if (status.ok()) return true;
  Log(Level::kInfo, "connection %d: %s; ending its session", c.id, status.message());
  std::vector<uint64_t> watch_ids;
  for (const auto& [watch_id, w] : c.watches) watch_ids.push_back(watch_id);
  for (uint64_t watch_id : watch_ids) RemoveWatch(c, watch_id, status);
  // With no request to answer, the reason goes out with request id 0.
  AppendStatus(c, request_id, status);
  c.authenticated = false;
  c.session = Session();
  StopReading(c);
  c.closing = true;
  return false;
}

void Server::Loop::RecheckSessions() {
  std::vector<Connection*> sessions;
  for (auto& [id, c] : connections_) {
    if (c->authenticated && !c->closing) sessions.push_back(c);
  }
  for (Connection* c : sessions) {
    if (SessionHolds(*c, 0)) continue;
    Flush(*c);
    FinishIfDone(*c);
  }
}

namespace {

bool IsClusterOperation(p::Operation operation) {
  switch (operation) {
    case p::Operation::ClusterHello:
    case p::Operation::Gossip:
    case p::Operation::Replicate:
    case p::Operation::ReadRecords:
    case p::Operation::MerkleHashes:
    case p::Operation::MerkleLeaf:
      return true;
    default:
      return false;
  }
}

}  // namespace

void Server::Loop::ObserveAnswer(p::Operation operation, absl::string_view frame,
                                 int64_t start_ns) {
  const auto& observer = server_->config_.protocol_observer;
  if (!observer) return;
  const p::Response* response = flatbuffers::GetSizePrefixedRoot<p::Response>(frame.data());
  observer(operation, p::FromWire(response->status()), absl::GetCurrentTimeNanos() - start_ns);
}

Service::Completion Server::Loop::DeferOn(Connection& c, p::Operation operation,
                                          int64_t start_ns) {
  ++c.pending;
  Loop* loop = this;
  const uint64_t connection_id = c.id;
  return [loop, connection_id, operation, start_ns](std::string frame) {
    loop->Post([connection_id, operation, start_ns, frame = std::move(frame)](Loop& l) {
      l.ObserveAnswer(operation, frame, start_ns);
      auto it = l.connections_.find(connection_id);
      if (it == l.connections_.end()) return;  // the client is gone
      Connection& conn = *it->second;
      --conn.pending;
      l.Append(conn, frame);
      l.Flush(conn);
      l.ApplyBackpressure(conn);
      l.FinishIfDone(conn);
    });
  };
}

void Server::Loop::HandleClusterHello(Connection& c, const p::Request& request) {
  PeerHandler* handler = server_->config_.peer_handler;
  const p::ClusterHello* hello = request.operation_as_ClusterHello();
  const uint64_t id = request.request_id();
  // Nothing more is read from a peer that cannot prove it belongs.
  auto refuse = [&](const absl::Status& status) {
    AppendStatus(c, id, status);
    StopReading(c);
    c.closing = true;
  };
  if (handler == nullptr) {
    return refuse(absl::PermissionDeniedError("this node does not accept cluster peers"));
  }
  if (c.is_peer) return refuse(absl::FailedPreconditionError("ClusterHello sent twice"));
  const absl::string_view node_id = p::View(hello->node_id());
  if (c.peer_nonce_own.empty()) {
    // Step 1: challenge the connecting node, proving this node's secret.
    absl::StatusOr<PeerHandler::Challenge> challenge =
        handler->ChallengePeer(node_id, p::View(hello->nonce()), hello->auth());
    if (!challenge.ok()) return refuse(challenge.status());
    c.peer_nonce_theirs = std::string(p::View(hello->nonce()));
    c.peer_nonce_own = challenge->nonce;
    flatbuffers::FlatBufferBuilder& b = c.builder;
    b.Clear();
    auto nonce = b.CreateVector(reinterpret_cast<const uint8_t*>(challenge->nonce.data()),
                                challenge->nonce.size());
    auto proof = b.CreateVector(reinterpret_cast<const uint8_t*>(challenge->proof.data()),
                                challenge->proof.size());
    auto result = p::CreateClusterChallenge(b, nonce, proof, challenge->auth);
    p::FinishResponse(&b, id, p::Result::ClusterChallenge, result.Union());
    Append(c, p::FrameOf(b));
    return;
  }
  // Step 3: the connecting node's proof.
  if (!handler->AcceptPeer(node_id, c.peer_nonce_theirs, c.peer_nonce_own,
                           p::View(hello->proof()))) {
    return refuse(absl::UnauthenticatedError("ClusterHello refused: wrong cluster secret"));
  }
  c.is_peer = true;
  AppendStatus(c, id, absl::OkStatus());
}

void Server::Loop::Dispatch(Connection& c, const p::Request& request) {
  const int64_t start_ns = server_->config_.protocol_observer ? absl::GetCurrentTimeNanos() : 0;
  if (DispatchOperation(c, request, start_ns)) {
    ObserveAnswer(request.operation_type(), p::FrameOf(c.builder), start_ns);
  }
}

bool Server::Loop::DispatchPeer(Connection& c, const p::Request& request, int64_t start_ns) {
  PeerHandler* handler = server_->config_.peer_handler;
  const p::Operation operation = request.operation_type();
  if (operation == p::Operation::ClusterHello) {
    HandleClusterHello(c, request);
    return true;
  }
  if (!c.is_peer || handler == nullptr) {
    AppendStatus(c, request.request_id(),
                 absl::PermissionDeniedError(absl::StrCat(
                     "operation ", p::EnumNameOperation(operation),
                     " is cluster-internal: only peers that sent ClusterHello may use it")));
    return true;
  }
  Service::Outcome outcome =
      handler->HandlePeer(request, &c.builder, [&]() -> Service::Completion {
        return DeferOn(c, operation, start_ns);
      });
  if (outcome != Service::Outcome::kAnswered) return false;
  Append(c, p::FrameOf(c.builder));
  return true;
}

bool Server::Loop::DispatchOperation(Connection& c, const p::Request& request,
                                     int64_t start_ns) {
  const p::Operation operation = request.operation_type();
  if (IsClusterOperation(operation)) return DispatchPeer(c, request, start_ns);
  // Peers are authenticated by the cluster secret, not by an API key.
  if (!c.is_peer && HandleHello(c, request)) return true;
  if (c.authenticated && operation != p::Operation::Hello) {
    if (!SessionHolds(c, request.request_id())) return true;
    const auto& admit = server_->config_.admit_request;
    if (admit && operation != p::Operation::Ping && operation != p::Operation::Unwatch) {
      if (absl::Status status = admit(c.session); !status.ok()) {
        AppendStatus(c, request.request_id(), status);
        return true;
      }
    }
  }
  switch (operation) {
    case p::Operation::Watch:
      AddWatch(c, request.request_id(), *request.operation_as_Watch());
      return true;
    case p::Operation::Unwatch:
      RemoveWatch(c, request.operation_as_Unwatch()->watch_request_id(), absl::OkStatus());
      AppendStatus(c, request.request_id(), absl::OkStatus());
      return true;
    default:
      break;
  }
  Service::Outcome outcome = server_->service_->Handle(
      c.session.context, request, &c.builder,
      [&]() -> Service::Completion { return DeferOn(c, operation, start_ns); });
  if (outcome != Service::Outcome::kAnswered) return false;
  Append(c, p::FrameOf(c.builder));
  return true;
}

void Server::Loop::Flush(Connection& c) {
  if (c.closed || c.in_flight_bytes > 0 || c.out.empty()) return;
  uv_buf_t buf = uv_buf_init(c.out.data(), static_cast<unsigned int>(c.out.size()));
  const int written = uv_try_write(c.stream(), &buf, 1);
  if (written < 0 && written != UV_EAGAIN) {
    Log(Level::kDebug, "connection %d: write error %s", c.id, UvError(written));
    c.out.clear();
    c.closing = true;
    FinishIfDone(c);
    return;
  }
  if (written > 0) c.out.erase(0, static_cast<size_t>(written));
  if (c.out.empty()) return;
  // The socket is full: hand the rest to libuv, which owns it until written.
  struct WriteRequest {
    uv_write_t request;
    std::string data;
  };
  auto* write = new WriteRequest;
  write->data.swap(c.out);
  write->request.data = &c;
  c.in_flight_bytes = write->data.size();
  uv_buf_t rest = uv_buf_init(write->data.data(), static_cast<unsigned int>(write->data.size()));
  const int rc =
      uv_write(&write->request, c.stream(), &rest, 1, [](uv_write_t* request, int status) {
        auto* write = reinterpret_cast<WriteRequest*>(request);
        Connection& conn = *static_cast<Connection*>(request->data);
        delete write;
        conn.loop->OnWritten(conn, status);
      });
  if (rc != 0) {
    // No callback will come: release the buffer and give the connection up.
    delete write;
    c.in_flight_bytes = 0;
    c.closing = true;
    FinishIfDone(c);
  }
}

void Server::Loop::OnWritten(Connection& c, int status) {
  c.in_flight_bytes = 0;
  if (status < 0) {
    c.out.clear();
    c.closing = true;
  } else {
    Flush(c);
  }
  ApplyBackpressure(c);
  FinishIfDone(c);
}

void Server::Loop::ApplyBackpressure(Connection& c) {
  const size_t limit = server_->config_.max_output_bytes;
  if (c.reading && c.owed_bytes() > limit) {
    StopReading(c);
  } else if (!c.closing && c.owed_bytes() <= limit / 2) {
    // Frames held back by the limit are answered first, for as long as the
    // socket takes the answers at once and whole frames are waiting.
    while (!c.closing && c.owed_bytes() <= limit / 2) {
      const size_t buffered = c.buffered_input();
      if (buffered == 0 || (!c.http && buffered < p::kFrameLengthBytes)) break;
      ProcessInput(c);
      Flush(c);
      if (c.buffered_input() == buffered) break;  // only part of a request is here
    }
    const bool http_may_read =
        !c.http || (!c.http->stop_parsing &&
                    c.http->owed.size() < server_->config_.max_pipelined_requests);
    if (!c.reading && !c.closing && !c.eof && c.owed_bytes() <= limit && http_may_read) {
      StartReading(c);
    }
    CloseAfterEofIfDone(c);
  }
}

void Server::Loop::FinishIfDone(Connection& c) {
  if (!c.closing || c.closed) return;
  if (c.pending > 0 || c.in_flight_bytes > 0) return;
  if (!c.out.empty()) {
    Flush(c);
    if (!c.out.empty() || c.in_flight_bytes > 0) return;
  }
  Close(c);
}

void Server::Loop::Close(Connection& c) {
  if (c.closed) return;
  c.closed = true;
  StopReading(c);
  for (const auto& [watch_id, w] : c.watches) server_->ReleaseUserWatch(w.user_id);
  watch_count_.fetch_sub(static_cast<int>(c.watches.size()), std::memory_order_relaxed);
  c.watches.clear();
  watchers_.erase(&c);
  ReleaseInput(c);
  connections_.erase(c.id);
  server_->counters()->connections.fetch_sub(1, std::memory_order_relaxed);
  if (c.http) server_->counters()->http_connections.fetch_sub(1, std::memory_order_relaxed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.handle), [](uv_handle_t* handle) {
    Connection* conn = &ConnectionOf(handle);
    Loop* loop = conn->loop;
    delete conn;
    loop->MaybeFinishShutdown();
  });
}

// ---- HTTP ---------------------------------------------------------------------

void Server::Loop::ProcessHttp(Connection& c) {
  HttpSession& h = *c.http;
  while (!c.closing && !h.stop_parsing && c.owed_bytes() <= server_->config_.max_output_bytes) {
    if (h.owed.size() >= server_->config_.max_pipelined_requests) {
      // Answers owed pile up: read no more until they go out.
      StopReading(c);
      return;
    }
    size_t consumed = 0;
    const http::HttpParser::Result result =
        h.parser.Parse(absl::string_view(h.input.get() + h.begin, h.end - h.begin), &consumed);
    h.begin += consumed;
    const int64_t now_ms = static_cast<int64_t>(uv_now(&loop_));
    if (result == http::HttpParser::Result::kRequest) {
      h.request_began_ms = -1;
    } else if (h.parser.in_request() && h.request_began_ms < 0) {
      h.request_began_ms = now_ms;
    }
    switch (result) {
      case http::HttpParser::Result::kNeedMore:
        if (!AdmitHttpBody(c)) return;
        if (h.parser.expects_continue() && h.owed.empty()) {
          // The client waits for leave to send its body (Expect: 100-continue).
          c.out.append("HTTP/1.1 100 Continue\r\n\r\n");
          h.parser.set_continue_sent();
        }
        return;
      case http::HttpParser::Result::kError:
        RefuseHttp(c, h.parser.error_status(), h.parser.error_message());
        return;
      case http::HttpParser::Result::kRequest:
        DispatchHttp(c, h.parser.request());
        // The handler has copied what it keeps of the body.
        ReleaseInput(c);
        h.parser.TrimStorage();
        break;
    }
  }
}

bool Server::Loop::AdmitHttpBody(Connection& c) {
  const size_t body_bytes = c.http->parser.body_bytes_expected();
  if (body_bytes <= kUnreservedRequestBytes) return true;
  if (const auto& authenticate = server_->config_.authenticate; authenticate) {
    // With auth on, a large body is read only for a caller whose API key
    // holds, checked from the headers before any of it: nobody unknown can
    // make the server hold bytes for it (or wait for them).
    std::optional<absl::string_view> key = c.http->parser.request().Header("x-api-key");
    if (!key || key->empty() || !authenticate(*key).ok()) {
      RefuseHttp(c, 401,
                 absl::StrCat("a body of ", body_bytes, " bytes needs a valid X-API-Key (bodies "
                              "over ", kUnreservedRequestBytes, " bytes are read only for "
                              "authenticated callers)"));
      return false;
    }
  }
  if (ReserveInput(c, body_bytes)) return true;
  RefuseHttp(c, 503,
             absl::StrCat("the server holds too many bytes of requests still arriving "
                          "(--max-buffered-bytes=",
                          server_->config_.max_buffered_bytes, "): body of ", body_bytes,
                          " bytes refused; retry later"),
             /*retry_after_s=*/1);
  return false;
}

void Server::Loop::CloseIdleConnections() {
  // Expiry is noticed here for sessions that make no requests (watchers).
  RecheckSessions();
  const int64_t now_ms = static_cast<int64_t>(uv_now(&loop_));
  const int64_t http_timeout_ms = absl::ToInt64Milliseconds(server_->config_.http_idle_timeout);
  const int64_t binary_timeout_ms =
      absl::ToInt64Milliseconds(server_->config_.binary_idle_timeout);
  std::vector<Connection*> idle;
  std::vector<Connection*> slow_frames;
  for (auto& [id, c] : connections_) {
    if (c->closing) continue;
    if (!c->http) {
      // A frame begun is the client's to finish (unless we stopped reading it).
      if (c->reading && c->frame_began_ms >= 0 && now_ms - c->frame_began_ms > binary_timeout_ms) {
        slow_frames.push_back(c);
      } else if (!c->is_peer && c->watches.empty() && c->pending == 0 && c->owed_bytes() == 0 &&
                 c->frame_began_ms < 0 && now_ms - c->last_read_ms > binary_timeout_ms) {
        idle.push_back(c);
      }
      continue;
    }
    if (c->pending > 0 || c->owed_bytes() > 0) continue;
    const HttpSession& h = *c->http;
    const bool slow_request =
        h.request_began_ms >= 0 && now_ms - h.request_began_ms > http_timeout_ms;
    const bool idle_too_long = now_ms - c->last_read_ms > http_timeout_ms;
    if (slow_request || idle_too_long) idle.push_back(c);
  }
  for (Connection* c : slow_frames) {
    RefuseFrame(*c, absl::DeadlineExceededError(absl::StrCat(
                        "a frame did not arrive within ", binary_timeout_ms,
                        " ms (--binary-idle-timeout-ms)")));
    Flush(*c);
    FinishIfDone(*c);
  }
  for (Connection* c : idle) {
    if (c->http && c->http->request_began_ms >= 0) {
      RefuseHttp(*c, 408, "the request did not arrive in time");
      Flush(*c);
      FinishIfDone(*c);
    } else {
      Close(*c);
    }
  }
}

// A request that cannot be parsed ends the connection: its answer goes out
// after the answers owed before it, then the connection closes.
void Server::Loop::RefuseHttp(Connection& c, int status, absl::string_view message,
                              int retry_after_s) {
  HttpSession& h = *c.http;
  Log(Level::kDebug, "connection %d: HTTP %d: %s; closing it", c.id, status, message);
  h.stop_parsing = true;
  StopReading(c);
  HttpSession::Owed owed;
  owed.sequence = h.next_sequence++;
  owed.keep_alive = false;
  owed.start_ns = absl::GetCurrentTimeNanos();
  h.owed.push_back(std::move(owed));
  http::HttpResponse response = http::HttpResponse::Error(status, message);
  if (retry_after_s > 0) response.headers.emplace_back("Retry-After", absl::StrCat(retry_after_s));
  SerializeHttp(response, false, false, &h.owed.back().bytes);
  h.owed.back().ready = true;
  EmitReadyHttp(c);
}

void Server::Loop::DispatchHttp(Connection& c, http::HttpRequest& request) {
  HttpSession& h = *c.http;
  const uint64_t sequence = h.next_sequence++;
  const int64_t start_ns = absl::GetCurrentTimeNanos();
  const bool keep_alive = request.keep_alive && !stopping_;
  const bool head = request.method == http::Method::kHead;
  if (!keep_alive) {
    // Requests after one that closes the connection are not read.
    h.stop_parsing = true;
    StopReading(c);
  }
  request.remote_address = h.remote_address;
  const http::Router::Match match =
      server_->config_.router->Find(request.method, request.path, &request.params);
  InlineAnswer answer;
  answer.connection_id = c.id;
  answer.sequence = sequence;
  if (match.route == nullptr) {
    answer.answered = true;
    if (match.status == 405) {
      answer.response = http::HttpResponse::Error(
          405, absl::StrCat("method ", request.method_name, " is not allowed here; use ",
                            match.allow));
      answer.response.headers.emplace_back("Allow", match.allow);
    } else if (match.status == 400) {
      answer.response = http::HttpResponse::Error(400, "malformed percent-encoding in the path");
    } else {
      answer.response = http::HttpResponse::Error(
          404, absl::StrCat("no route for ", request.method_name, " ", request.path));
    }
  } else if (match.route->is_write && server_->service_->config().read_only) {
    // Account routes write the engine directly, not through the Service,
    // so --read-only is enforced for every writing route here.
    answer.answered = true;
    answer.response = http::HttpResponse::Error(403, "this node is read-only");
  } else {
    inline_answer_ = &answer;
    match.route->handler(request, http::Responder(this, c.id, sequence));
    inline_answer_ = nullptr;
  }
  if (answer.answered) {
    if (server_->config_.http_observer) {
      server_->config_.http_observer(match.route, answer.response.status,
                                     absl::GetCurrentTimeNanos() - start_ns);
    }
    if (h.owed.empty()) {
      // The common case: nothing is owed before it, so it goes straight out.
      SerializeHttp(answer.response, keep_alive, head, &c.out);
      if (!keep_alive) c.closing = true;
      return;
    }
    HttpSession::Owed owed;
    owed.sequence = sequence;
    owed.ready = true;
    owed.keep_alive = keep_alive;
    SerializeHttp(answer.response, keep_alive, head, &owed.bytes);
    h.owed.push_back(std::move(owed));
    return;
  }
  // Answered later, from another thread (fsync waits, password hashing).
  HttpSession::Owed owed;
  owed.sequence = sequence;
  owed.keep_alive = keep_alive;
  owed.head = head;
  owed.route = match.route;
  owed.start_ns = start_ns;
  h.owed.push_back(std::move(owed));
  ++c.pending;
}

void Server::Loop::Deliver(uint64_t connection_id, uint64_t sequence,
                           http::HttpResponse response) {
  if (inline_answer_ != nullptr && inline_answer_->connection_id == connection_id &&
      inline_answer_->sequence == sequence && std::this_thread::get_id() == thread_id_) {
    inline_answer_->answered = true;
    inline_answer_->response = std::move(response);
    return;
  }
  Post([connection_id, sequence, response = std::move(response)](Loop& l) {
    auto it = l.connections_.find(connection_id);
    if (it == l.connections_.end()) return;  // the client is gone
    Connection& c = *it->second;
    if (!c.http) return;
    for (HttpSession::Owed& owed : c.http->owed) {
      if (owed.sequence != sequence || owed.ready) continue;
      if (l.server_->config_.http_observer) {
        l.server_->config_.http_observer(owed.route, response.status,
                                         absl::GetCurrentTimeNanos() - owed.start_ns);
      }
      l.SerializeHttp(response, owed.keep_alive, owed.head, &owed.bytes);
      owed.ready = true;
      --c.pending;
      break;
    }
    l.EmitReadyHttp(c);
    l.Flush(c);
    l.ApplyBackpressure(c);
    l.FinishIfDone(c);
  });
}

void Server::Loop::EmitReadyHttp(Connection& c) {
  HttpSession& h = *c.http;
  while (!h.owed.empty() && h.owed.front().ready) {
    HttpSession::Owed& owed = h.owed.front();
    c.out.append(owed.bytes);
    const bool close = !owed.keep_alive;
    h.owed.pop_front();
    if (close) {
      c.closing = true;
      // Nothing after it is sent; answers still owed were for requests the
      // client sent after asking to close.
      break;
    }
  }
}

void Server::Loop::SerializeHttp(const http::HttpResponse& response, bool keep_alive, bool head,
                                 std::string* out) {
  absl::StrAppend(out, "HTTP/1.1 ", response.status, " ", http::ReasonPhrase(response.status),
                  "\r\nContent-Type: ", response.content_type, "\r\nContent-Length: ",
                  response.body.size(), "\r\n");
  for (const auto& [name, value] : response.headers) {
    absl::StrAppend(out, name, ": ", value, "\r\n");
  }
  if (!keep_alive) out->append("Connection: close\r\n");
  out->append("\r\n");
  if (!head) out->append(response.body);
}

// ---- Watches ------------------------------------------------------------------

void Server::Loop::AddWatch(Connection& c, uint64_t request_id, const p::Watch& watch) {
  engine::Engine* engine = server_->service_->engine();
  const uint32_t shards = engine->ShardCount();
  if (!c.session.context.may_read) {
    AppendStatus(c, request_id,
                 absl::PermissionDeniedError("this API key may not read (missing scope)"));
    return;
  }
  if (c.watches.contains(request_id)) {
    AppendStatus(c, request_id, absl::InvalidArgumentError("request_id already watching"));
    return;
  }
  const size_t per_connection = server_->config_.max_watches_per_connection;
  if (per_connection != 0 && c.watches.size() >= per_connection) {
    AppendStatus(c, request_id,
                 absl::ResourceExhaustedError(absl::StrCat(
                     "this connection already has ", c.watches.size(),
                     " watches (--max-watches-per-connection); unwatch one first")));
    return;
  }
  Connection::Watch w;
  // The watch sees the connection's namespace only; keys go out without it.
  w.prefix = absl::StrCat(c.session.context.key_prefix, p::View(watch.prefix()));
  if (watch.after_sequences() != nullptr && watch.after_sequences()->size() > 0) {
    if (watch.after_sequences()->size() != shards) {
      AppendStatus(c, request_id,
                   absl::InvalidArgumentError(absl::StrCat(
                       "after_sequences has ", watch.after_sequences()->size(),
                       " entries; this node has ", shards, " shards")));
      return;
    }
    w.after.assign(watch.after_sequences()->begin(), watch.after_sequences()->end());
  } else {
    for (uint32_t shard = 0; shard < shards; ++shard) w.after.push_back(engine->LastSequence(shard));
  }
  w.user_id = c.authenticated ? c.session.user_id : 0;
  if (!server_->AcquireUserWatch(w.user_id)) {
    AppendStatus(c, request_id,
                 absl::ResourceExhaustedError(absl::StrCat(
                     "this user already has ", server_->config_.max_watches_per_user,
                     " watches (--max-watches-per-user); unwatch one first")));
    return;
  }
  // Acknowledge with an empty batch, so the client knows events from now on
  // will reach it; then catch up from the resume points.
  c.builder.Clear();
  auto events = c.builder.CreateVector(std::vector<flatbuffers::Offset<p::Event>>{});
  auto batch = p::CreateWatchEvents(c.builder, events);
  p::ResponseBuilder response(c.builder);
  response.add_request_id(request_id);
  response.add_result_type(p::Result::WatchEvents);
  response.add_result(batch.Union());
  c.builder.FinishSizePrefixed(response.Finish());
  Append(c, p::FrameOf(c.builder));
  c.watches.emplace(request_id, std::move(w));
  watchers_.insert(&c);
  watch_count_.fetch_add(1, std::memory_order_relaxed);
  uv_async_send(&events_async_);
}

void Server::Loop::RemoveWatch(Connection& c, uint64_t watch_request_id,
                               const absl::Status& final_status) {
  auto it = c.watches.find(watch_request_id);
  if (it == c.watches.end()) return;
  server_->ReleaseUserWatch(it->second.user_id);
  c.watches.erase(it);
  if (c.watches.empty()) watchers_.erase(&c);
  watch_count_.fetch_sub(1, std::memory_order_relaxed);
  AppendStatus(c, watch_request_id, final_status);
}

void Server::Loop::PumpWatches() {
  engine::Engine* engine = server_->service_->engine();
  const uint32_t batch_events = server_->config_.watch_batch_events;
  bool more = false;
  // Read once per pass, not once per watch.
  std::vector<uint64_t> last_sequences(engine->ShardCount());
  for (uint32_t shard = 0; shard < last_sequences.size(); ++shard) {
    last_sequences[shard] = engine->LastSequence(shard);
  }
  std::vector<Connection*> connections;
  for (Connection* c : watchers_) {
    if (!c->closing) connections.push_back(c);
  }
  for (Connection* c : connections) {
    if (!SessionHolds(*c, 0)) {
      Flush(*c);
      FinishIfDone(*c);
      continue;
    }
    std::vector<std::pair<uint64_t, absl::Status>> ended;
    for (auto& [watch_id, w] : c->watches) {
      if (c->owed_bytes() > server_->config_.max_output_bytes) {
        // A watcher that does not read is dropped, not buffered without end.
        ended.emplace_back(watch_id,
                           absl::AbortedError(absl::StrCat(
                               "watch dropped: the client fell more than ",
                               server_->config_.max_output_bytes,
                               " bytes behind; resume from the last sequences it saw")));
        continue;
      }
      for (uint32_t shard = 0; shard < w.after.size(); ++shard) {
        if (last_sequences[shard] <= w.after[shard]) continue;
        // Half a frame of keys and values leaves room for the envelope, so
        // one batch always fits in one frame.
        absl::StatusOr<std::vector<engine::Event>> events = engine->ReadEvents(
            shard, w.after[shard], batch_events, server_->service_->config().limits.max_frame_bytes / 2);
        if (!events.ok()) {
          ended.emplace_back(watch_id, events.status());
          break;
        }
        if (events->empty()) continue;
        w.after[shard] = events->back().sequence;
        if (engine->LastSequence(shard) > w.after[shard]) more = true;
        c->builder.Clear();
        std::vector<flatbuffers::Offset<p::Event>> matching;
        const size_t namespace_bytes = c->session.context.key_prefix.size();
        for (const engine::Event& event : *events) {
          if (!absl::StartsWith(event.key, w.prefix)) continue;
          if (namespace_bytes == 0 && IsReservedKey(event.key)) continue;
          auto key = c->builder.CreateVector(
              reinterpret_cast<const uint8_t*>(event.key.data()) + namespace_bytes,
              event.key.size() - namespace_bytes);
          auto value = c->builder.CreateVector(
              reinterpret_cast<const uint8_t*>(event.value.data()), event.value.size());
          matching.push_back(p::CreateEvent(
              c->builder, shard, event.sequence,
              event.type == engine::EventType::kPut ? p::EventType::Put : p::EventType::Delete,
              key, value, event.meta.version, event.meta.timestamp));
        }
        if (matching.empty()) continue;
        auto vector = c->builder.CreateVector(matching);
        auto batch = p::CreateWatchEvents(c->builder, vector);
        p::ResponseBuilder response(c->builder);
        response.add_request_id(watch_id);
        response.add_result_type(p::Result::WatchEvents);
        response.add_result(batch.Union());
        c->builder.FinishSizePrefixed(response.Finish());
        Append(*c, p::FrameOf(c->builder));
      }
    }
    for (const auto& [request_id, status] : ended) RemoveWatch(*c, request_id, status);
    Flush(*c);
    ApplyBackpressure(*c);
  }
  // Yield to other work between batches; come back for the rest.
  if (more) uv_async_send(&events_async_);
}

// ---- Shutdown -------------------------------------------------------------------

void Server::Loop::BeginShutdown() {
  if (stopping_) return;
  stopping_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
  for (auto& listener : http_listeners_) {
    uv_close(reinterpret_cast<uv_handle_t*>(&listener->handle), nullptr);
  }
  std::vector<Connection*> connections;
  for (auto& [id, c] : connections_) connections.push_back(c);
  for (Connection* c : connections) {
    // Requests already read are answered; nothing new is read.
    StopReading(*c);
    c->closing = true;
    FinishIfDone(*c);
  }
  const uint64_t grace_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(server_->config_.shutdown_grace));
  uv_timer_start(
      &shutdown_timer_,
      [](uv_timer_t* timer) {
        Loop& loop = Of(reinterpret_cast<uv_handle_t*>(timer));
        std::vector<Connection*> left;
        for (auto& [id, c] : loop.connections_) left.push_back(c);
        if (!left.empty()) {
          Log(Level::kWarning, "closing %d connections that did not finish in time",
              static_cast<int>(left.size()));
        }
        for (Connection* c : left) {
          c->pending = 0;
          c->out.clear();
          loop.Close(*c);
        }
        loop.MaybeFinishShutdown();
      },
      grace_ms, 0);
  MaybeFinishShutdown();
}

void Server::Loop::MaybeFinishShutdown() {
  if (!stopping_ || handles_closed_ || !connections_.empty()) return;
  handles_closed_ = true;
  {
    absl::MutexLock lock(&tasks_mu_);
    handles_closing_ = true;
  }
  if (server_->config_.loop_ending) server_->config_.loop_ending();
  uv_close(reinterpret_cast<uv_handle_t*>(&tasks_async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&events_async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&shutdown_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&idle_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_prepare_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_check_), nullptr);
}

// ---- Server ---------------------------------------------------------------------

Server::Server(Service* service, const ServerConfig& config)
    : service_(service), config_(config) {}

Server::~Server() {
  RequestShutdown();
  Wait();
}

absl::Status Server::Start() {
  sockaddr_in address;
  if (int rc = uv_ip4_addr(config_.host.c_str(), config_.port, &address); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot listen on '", config_.host, "': not an IPv4 address"));
  }
  if (config_.port != 0) {
    if (absl::Status status = CheckPortFree(address); !status.ok()) return status;
  }
  if (!config_.http_addresses.empty() && config_.router == nullptr) {
    return absl::InvalidArgumentError("HTTP addresses given without a route table");
  }
  std::vector<sockaddr_in> http_addresses;
  for (const HttpAddress& http : config_.http_addresses) {
    sockaddr_in http_address;
    if (int rc = uv_ip4_addr(http.host.c_str(), http.port, &http_address); rc != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot serve HTTP on '", http.host, "': not an IPv4 address"));
    }
    if (http.port != 0) {
      if (absl::Status status = CheckPortFree(http_address); !status.ok()) return status;
    }
    http_addresses.push_back(http_address);
  }
  for (int i = 0; i < std::max(1, config_.threads); ++i) {
    auto loop = std::make_unique<Loop>(this, i);
    if (absl::Status status = loop->Init(address, http_addresses); !status.ok()) return status;
    if (i == 0) {
      // Every other loop joins the ports the kernel picked for the first.
      if (config_.port == 0) address.sin_port = htons(static_cast<uint16_t>(loop->BoundPort()));
      for (size_t j = 0; j < http_addresses.size(); ++j) {
        if (config_.http_addresses[j].port == 0) {
          http_addresses[j].sin_port =
              htons(static_cast<uint16_t>(loop->BoundPort(static_cast<int>(j))));
        }
      }
    }
    loops_.push_back(std::move(loop));
  }
  port_ = ntohs(address.sin_port);
  for (const sockaddr_in& http_address : http_addresses) {
    http_ports_.push_back(ntohs(http_address.sin_port));
  }
  for (auto& loop : loops_) {
    threads_.emplace_back([loop = loop.get()] { loop->Run(); });
  }
  return absl::OkStatus();
}

void Server::RequestShutdown() {
  if (shutdown_requested_.exchange(true)) return;
  for (auto& loop : loops_) loop->Post([](Loop& l) { l.BeginShutdown(); });
}

void Server::Wait() {
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void Server::NotifyEvents() {
  for (auto& loop : loops_) loop->WakeWatchers();
}

bool Server::AcquireUserWatch(uint64_t user_id) {
  if (user_id == 0) return true;
  absl::MutexLock lock(&watches_mu_);
  size_t& count = watches_by_user_[user_id];
  if (config_.max_watches_per_user != 0 && count >= config_.max_watches_per_user) {
    if (count == 0) watches_by_user_.erase(user_id);
    return false;
  }
  ++count;
  return true;
}

void Server::ReleaseUserWatch(uint64_t user_id) {
  if (user_id == 0) return;
  absl::MutexLock lock(&watches_mu_);
  auto it = watches_by_user_.find(user_id);
  if (it == watches_by_user_.end()) return;
  if (--it->second == 0) watches_by_user_.erase(it);
}

void Server::RecheckSessions() {
  for (auto& loop : loops_) loop->Post([](Loop& l) { l.RecheckSessions(); });
}

}  // namespace logkv::server
