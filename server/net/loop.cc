#include "server/net/loop.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "protocol/frame.h"
#include "server/log.h"
#include "server/net/binary_session.h"
#include "server/net/http_session.h"
#include "server/net/tls.h"

namespace logkv::server::net {

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

constexpr int kBacklog = 1024;

// Bound and listening, so that the port is this process's and a client's
// connection is taken (the kernel queues it, up to kBacklog a loop) from
// now on; the loop accepts the queued ones from Loop::Listen on.
absl::Status Bind(uv_loop_t* loop, uv_tcp_t* listener, const sockaddr_in& address) {
  auto fd = BindReusePort(address);
  if (!fd.ok()) return fd.status();
  if (::listen(*fd, kBacklog) != 0) {
    const int error = errno;
    ::close(*fd);
    return absl::UnavailableError(absl::StrCat("listen: ", std::strerror(error)));
  }
  uv_tcp_init(loop, listener);
  if (int rc = uv_tcp_open(listener, *fd); rc != 0) {
    ::close(*fd);
    return absl::InternalError(absl::StrCat("uv_tcp_open: ", UvError(rc)));
  }
  return absl::OkStatus();
}

// The client's IP address as text ("" when unknown).
std::string PeerAddress(uv_tcp_t* handle) {
  sockaddr_storage peer;
  int length = sizeof(peer);
  char text[INET6_ADDRSTRLEN] = "";
  if (uv_tcp_getpeername(handle, reinterpret_cast<sockaddr*>(&peer), &length) == 0) {
    if (peer.ss_family == AF_INET) {
      uv_ip4_name(reinterpret_cast<const sockaddr_in*>(&peer), text, sizeof(text));
    } else if (peer.ss_family == AF_INET6) {
      uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(&peer), text, sizeof(text));
    }
  }
  return text;
}

}  // namespace

Connection::~Connection() = default;

Loop::Loop(const ServerConfig& config, Service* service, WatchQuota* watch_quota, int index)
    : config_(config), service_(service), watch_quota_(watch_quota), index_(index) {}

Loop::~Loop() = default;

absl::Status Loop::Init(const sockaddr_in& address,
                        const std::vector<sockaddr_in>& http_addresses) {
  if (int rc = uv_loop_init(&loop_); rc != 0) return absl::InternalError(UvError(rc));
  for (size_t i = 0; i <= http_addresses.size(); ++i) {
    auto listener = std::make_unique<Listener>();
    listener->loop = this;
    listener->http = i > 0;
    if (absl::Status status =
            Bind(&loop_, &listener->handle, i == 0 ? address : http_addresses[i - 1]);
        !status.ok()) {
      return status;
    }
    listener->handle.data = listener.get();
    listeners_.push_back(std::move(listener));
  }
  if (!http_addresses.empty()) http_answers_ = std::make_unique<HttpAnswers>(this);
  if (config_.tls != nullptr) tls_read_buffer_ = std::make_unique<char[]>(kTlsReadBytes);
  uv_async_init(&loop_, &tasks_async_,
                [](uv_async_t* async) { Of(reinterpret_cast<uv_handle_t*>(async)).DrainTasks(); });
  tasks_async_.data = this;
  uv_async_init(&loop_, &events_async_, [](uv_async_t* async) {
    Of(reinterpret_cast<uv_handle_t*>(async)).PumpEvents();
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
  // Reads happen in the turn's poll phase; check handles run right after it.
  uv_check_init(&loop_, &answers_check_);
  answers_check_.data = this;
  uv_check_start(&answers_check_, [](uv_check_t* check) {
    Of(reinterpret_cast<uv_handle_t*>(check)).SendAllAnswered();
  });
  if (config_.loop_turn) {
    uv_prepare_start(&turn_prepare_, [](uv_prepare_t* prepare) {
      Of(reinterpret_cast<uv_handle_t*>(prepare)).config_.loop_turn();
    });
    uv_check_start(&turn_check_, [](uv_check_t* check) {
      Of(reinterpret_cast<uv_handle_t*>(check)).config_.loop_turn();
    });
  }
  {
    // A connection is closed between one and one and a quarter timeouts late.
    const absl::Duration shortest =
        http_addresses.empty() ? config_.binary_idle_timeout
                               : std::min(config_.binary_idle_timeout, config_.http_idle_timeout);
    const uint64_t period_ms =
        static_cast<uint64_t>(std::max<int64_t>(100, absl::ToInt64Milliseconds(shortest) / 4));
    uv_timer_start(
        &idle_timer_,
        [](uv_timer_t* timer) { Of(reinterpret_cast<uv_handle_t*>(timer)).CloseIdleConnections(); },
        period_ms, period_ms);
  }
  return absl::OkStatus();
}

absl::Status Loop::Listen() {
  auto on_connection = [](uv_stream_t* server, int status) {
    auto* listener = static_cast<Listener*>(server->data);
    listener->loop->OnConnection(*listener, status);
  };
  for (auto& listener : listeners_) {
    if (int rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener->handle), kBacklog,
                           on_connection);
        rc != 0) {
      return absl::UnavailableError(absl::StrCat("listen: ", UvError(rc)));
    }
  }
  return absl::OkStatus();
}

int Loop::BoundPort(int http_index) {
  uv_tcp_t* listener = &listeners_[static_cast<size_t>(http_index + 1)]->handle;
  sockaddr_in bound;
  int length = sizeof(bound);
  std::memset(&bound, 0, sizeof(bound));
  uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &length);
  return ntohs(bound.sin_port);
}

void Loop::Run() {
  thread_id_ = std::this_thread::get_id();
  if (config_.loop_started) config_.loop_started(&loop_);
  uv_run(&loop_, UV_RUN_DEFAULT);
  // Every handle is closed by now; let their close callbacks run, then free.
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop_) != 0) Log(Level::kWarning, "loop %d closed with handles open", index_);
}

void Loop::Post(Task task) {
  absl::MutexLock lock(&tasks_mu_);
  // After shutdown nobody is left to answer: late completions are dropped.
  if (handles_closing_) return;
  tasks_.push_back(std::move(task));
  uv_async_send(&tasks_async_);
}

void Loop::DrainTasks() {
  std::vector<Task> tasks;
  {
    absl::MutexLock lock(&tasks_mu_);
    tasks.swap(tasks_);
  }
  draining_tasks_ = true;
  for (auto& task : tasks) task(*this);
  draining_tasks_ = false;
  SendAllAnswered();
}

void Loop::SendAllAnswered() {
  if (answered_.empty()) return;
  std::vector<uint64_t> answered;
  answered.swap(answered_);
  for (uint64_t id : answered) {
    // Closed since (a task, or a later read's error), it is not in the table.
    if (Connection* c = Find(id); c != nullptr) SendAnswered(*c);
  }
  // Keep the vector's capacity for the next turn (SendAnswered adds none).
  if (answered_.empty()) {
    answered.clear();
    answered_.swap(answered);
  }
}

void Loop::Answered(Connection& c) {
  if (!draining_tasks_) return SendAnswered(c);
  if (c.answered) return;
  c.answered = true;
  answered_.push_back(c.id);
}

void Loop::SendAnswered(Connection& c) {
  c.answered = false;
  Flush(c);
  ApplyBackpressure(c);
  FinishIfDone(c);
}

// ---- Connections ----------------------------------------------------------------

void Loop::OnConnection(Listener& listener, int status) {
  if (status < 0) {
    Log(Level::kWarning, "accept failed: %s", UvError(status));
    return;
  }
  auto* c = new Connection;
  c->loop = this;
  c->id = next_connection_id_++;
  c->http = listener.http;
  c->last_read_ms = now_ms();
  c->opened_ms = c->last_read_ms;
  uv_tcp_init(&loop_, &c->handle);
  c->handle.data = c;
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&listener.handle), c->stream()) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->handle),
             [](uv_handle_t* handle) { delete &ConnectionOf(handle); });
    return;
  }
  uv_tcp_nodelay(&c->handle, 1);
  if (config_.tls != nullptr) {
    ssl_st* ssl = config_.tls->NewSsl(c->http);
    if (ssl == nullptr) {
      Log(Level::kError, "TLS: cannot make a session for a new connection");
      uv_close(reinterpret_cast<uv_handle_t*>(&c->handle),
               [](uv_handle_t* handle) { delete &ConnectionOf(handle); });
      return;
    }
    c->tls = std::make_unique<TlsStream>(ssl);
  }
  if (c->http) {
    c->session = std::make_unique<HttpSession>(*c, http_answers_.get(), PeerAddress(&c->handle));
  } else {
    c->session = std::make_unique<BinarySession>(*c, watch_quota_);
  }
  connections_[c->id] = c;
  counters()->connections.fetch_add(1, std::memory_order_relaxed);
  if (c->http) counters()->http_connections.fetch_add(1, std::memory_order_relaxed);
  StartReading(*c);
}

void Loop::StartReading(Connection& c) {
  if (c.reading || c.closing) return;
  c.reading = true;
  // A record's clock stood while this side did not read: it goes on from now.
  if (c.tls_partial_since_ms >= 0) c.tls_partial_since_ms = now_ms();
  uv_read_start(
      c.stream(),
      [](uv_handle_t* handle, size_t suggested, uv_buf_t* buf) {
        Connection& conn = ConnectionOf(handle);
        if (conn.tls != nullptr) {
          *buf = uv_buf_init(conn.loop->tls_read_buffer_.get(), kTlsReadBytes);
          return;
        }
        size_t available;
        const size_t chunk = std::max(suggested, conn.loop->config_.read_chunk_bytes);
        char* space = conn.session->ReadSpace(chunk, &available);
        *buf = uv_buf_init(space, static_cast<unsigned int>(available));
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
        Connection& conn = ConnectionOf(reinterpret_cast<uv_handle_t*>(stream));
        conn.loop->OnRead(conn, nread);
      });
}

void Loop::StopReading(Connection& c) {
  if (!c.reading) return;
  c.reading = false;
  uv_read_stop(c.stream());
}

void Loop::OnRead(Connection& c, ssize_t nread) {
  if (nread == 0) return;  // EAGAIN: nothing to do
  if (nread < 0) {
    StopReading(c);
    if (nread != UV_EOF) {
      // The client is gone: nothing owed to it can be delivered.
      Log(Level::kDebug, "connection %d: read error %s", c.id, UvError(static_cast<int>(nread)));
      c.out.clear();
      c.wire_out.clear();
      c.closing = true;
      FinishIfDone(c);
      return;
    }
    OnEof(c);
    return;
  }
  c.last_read_ms = now_ms();
  if (c.tls != nullptr) {
    OnTlsRead(c, static_cast<size_t>(nread));
    if (c.eof) return;  // the peer's close_notify: OnEof ran
    // What the stream has to send without an answer (a handshake's next
    // message, a session ticket) waits with the answers' ciphertext, in
    // the order the stream made it: Flush sends both.
    c.tls->DrainTo(&c.wire_out);
  } else {
    c.session->Received(static_cast<size_t>(nread));
  }
  // The answers go at the end of the turn's reads (answers_check_), unless
  // the connection is closing or its output is past the limit: then as
  // before, at once, so that reading stops now (ApplyBackpressure).
  if (!c.closing && c.in_flight_bytes == 0 && c.owed_bytes() <= config_.max_output_bytes) {
    if (c.unsent() && !c.answered) {
      c.answered = true;
      answered_.push_back(c.id);
    }
    return;
  }
  Flush(c);
  ApplyBackpressure(c);
  FinishIfDone(c);
}

void Loop::OnEof(Connection& c) {
  // A half-close: requests already received are still answered (those
  // held back by the output limits too), then the connection closes.
  StopReading(c);
  c.eof = true;
  c.session->ProcessInput();
  Flush(c);
  CloseAfterEofIfDone(c);
  FinishIfDone(c);
}

// ---- TLS ------------------------------------------------------------------------

void Loop::OnTlsRead(Connection& c, size_t nread) {
  TlsStream& tls = *c.tls;
  if (tls.failed()) return;
  const char* data = tls_read_buffer_.get();
  // The stream reads the loop's buffer in place; the next read of any
  // connection reuses it.
  absl::Cleanup keep_unread = [&tls] { tls.KeepUnread(); };
  if (!tls.handshake_done()) {
    // Only the first bytes of a connection can be a plaintext client's.
    if (!tls.started() && !TlsStream::LooksLikeTls(data, nread)) {
      RefusePlaintext(c);
      return;
    }
    tls.Feed(data, nread);
    const int handshake = tls.Handshake();
    if (handshake < 0) {
      FailTls(c);
      return;
    }
    if (handshake == 0) return;  // its next message goes out with Flush
  } else {
    tls.Feed(data, nread);
  }
  // Everything the read brought is decrypted into the session at once: a
  // record held in the TLS buffers would wait for the next read, which may
  // never come. What the session does not answer yet waits in its input as
  // a plaintext read's would.
  constexpr size_t kRecordBytes = 16u << 10;  // the largest TLS record's plaintext
  bool decrypted = false;
  while (!c.closing) {
    size_t available = 0;
    char* space = c.session->ReadSpace(kRecordBytes, &available);
    const ssize_t got = tls.Read(space, available);
    if (got > 0) {
      decrypted = true;
      c.session->Received(static_cast<size_t>(got));
      // A read that could only say "more bytes needed" costs as much as one
      // that decrypts a record: skip it.
      if (!tls.has_more()) {
        c.tls_partial_since_ms = -1;
        break;
      }
      continue;
    }
    if (got == 0) {
      // Ciphertext still held is part of a record yet to come whole: its
      // clock starts now if this read completed a record, else runs on.
      if (!tls.has_more()) {
        c.tls_partial_since_ms = -1;
      } else if (decrypted || c.tls_partial_since_ms < 0) {
        c.tls_partial_since_ms = now_ms();
      }
      break;
    }
    if (got == TlsStream::kPeerClosed) {
      OnEof(c);
    } else {
      FailTls(c);
    }
    return;
  }
}

void Loop::FailTls(Connection& c) {
  config_.tls->CountHandshakeFailure();
  Log(Level::kDebug, "connection %d: TLS %s failed: %s", c.id,
      c.tls->handshake_done() ? "record" : "handshake", c.tls->error());
  StopReading(c);
  c.out.clear();  // it cannot be encrypted any more; the alert goes out
  c.tls->DrainTo(&c.wire_out);
  c.closing = true;
}

void Loop::RefusePlaintext(Connection& c) {
  config_.tls->CountHandshakeFailure();
  Log(Level::kDebug, "connection %d: a plaintext client on a TLS port; closing it", c.id);
  StopReading(c);
  c.out.clear();
  c.tls->Abandon("a plaintext client");
  if (c.http) {
    static constexpr absl::string_view kBody =
        "This port speaks HTTPS (TLS): use an https:// URL.\n";
    absl::StrAppend(&c.wire_out,
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                    "Connection: close\r\nContent-Length: ",
                    kBody.size(), "\r\n\r\n", kBody);
  } else {
    flatbuffers::FlatBufferBuilder builder(256);
    protocol::BuildStatusResponse(
        &builder, 0,
        absl::FailedPreconditionError(
            "this port speaks TLS: connect with TLS (logkv --tls, ClientOptions::tls)"));
    const absl::string_view frame = protocol::FrameOf(builder);
    c.wire_out.append(frame.data(), frame.size());
  }
  c.closing = true;
}

void Loop::SealOutput(Connection& c) {
  TlsStream& tls = *c.tls;
  if (tls.failed()) {
    c.out.clear();
    return;
  }
  if (!c.out.empty() && tls.handshake_done()) {
    if (!tls.Write(c.out)) {
      FailTls(c);
      return;
    }
    c.out.clear();
  }
  tls.DrainTo(&c.wire_out);
}

bool Loop::ReserveInput(Connection& c, size_t total_bytes) {
  if (total_bytes <= c.reserved_bytes) return true;
  const size_t more = total_bytes - c.reserved_bytes;
  const size_t limit = config_.max_buffered_bytes;
  std::atomic<uint64_t>& buffered = counters()->buffered_request_bytes;
  uint64_t now = buffered.load(std::memory_order_relaxed);
  do {
    if (limit != 0 && now + more > limit) return false;
  } while (!buffered.compare_exchange_weak(now, now + more, std::memory_order_relaxed));
  c.reserved_bytes = total_bytes;
  // A reservation grows only while the connection is open (Close releases it).
  assert(!c.closed);
  return true;
}

void Loop::ReleaseInput(Connection& c) {
  if (c.reserved_bytes == 0) return;
  // What a connection gives back was counted when it was reserved.
  assert(counters()->buffered_request_bytes.load(std::memory_order_relaxed) >= c.reserved_bytes);
  counters()->buffered_request_bytes.fetch_sub(c.reserved_bytes, std::memory_order_relaxed);
  c.reserved_bytes = 0;
}

void Loop::Flush(Connection& c) {
  if (c.closed || c.in_flight_bytes > 0) return;
  if (c.tls != nullptr) SealOutput(c);
  // What goes on the wire: the answers as they are, or their ciphertext.
  std::string& wire = c.tls != nullptr ? c.wire_out : c.out;
  if (wire.empty()) return;
  uv_buf_t buf = uv_buf_init(wire.data(), static_cast<unsigned int>(wire.size()));
  const int written = uv_try_write(c.stream(), &buf, 1);
  if (written < 0 && written != UV_EAGAIN) {
    Log(Level::kDebug, "connection %d: write error %s", c.id, UvError(written));
    c.out.clear();
    c.wire_out.clear();
    c.closing = true;
    FinishIfDone(c);
    return;
  }
  if (written > 0) {
    CountWrite();
    wire.erase(0, static_cast<size_t>(written));
  }
  if (wire.empty()) return;
  // The socket is full: hand the rest to libuv, which owns it until written.
  struct WriteRequest {
    uv_write_t request;
    std::string data;
  };
  auto* write = new WriteRequest;
  write->data.swap(wire);
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
    return;
  }
  CountWrite();
}

void Loop::OnWritten(Connection& c, int status) {
  c.in_flight_bytes = 0;
  if (status < 0) {
    c.out.clear();
    c.wire_out.clear();
    c.closing = true;
  } else {
    Flush(c);
  }
  ApplyBackpressure(c);
  FinishIfDone(c);
}

void Loop::ApplyBackpressure(Connection& c) {
  const size_t limit = config_.max_output_bytes;
  if (c.reading && c.owed_bytes() > limit) {
    StopReading(c);
  } else if (!c.closing && c.owed_bytes() <= limit / 2) {
    ProtocolSession& session = *c.session;
    // Requests held back by the limit are answered first, for as long as the
    // socket takes the answers at once and whole requests are waiting.
    while (!c.closing && c.owed_bytes() <= limit / 2) {
      const size_t buffered = session.buffered_input();
      if (buffered < session.min_request_bytes()) break;
      session.ProcessInput();
      Flush(c);
      if (session.buffered_input() == buffered) break;  // only part of a request is here
    }
    if (!c.reading && !c.closing && !c.eof && c.owed_bytes() <= limit && session.WantsInput()) {
      StartReading(c);
    }
    CloseAfterEofIfDone(c);
  }
}

void Loop::CloseAfterEofIfDone(Connection& c) {
  if (!c.eof || c.closing) return;
  const bool held_back = c.owed_bytes() > config_.max_output_bytes || c.session->HoldsBackInput();
  if (!held_back) c.closing = true;
}

void Loop::FinishIfDone(Connection& c) {
  if (!c.closing || c.closed) return;
  if (c.pending > 0 || c.in_flight_bytes > 0) return;
  if (c.unsent()) {
    Flush(c);
    if (c.unsent() || c.in_flight_bytes > 0) return;
  }
  Close(c);
}

void Loop::Close(Connection& c) {
  if (c.closed) return;
  c.closed = true;
  StopReading(c);
  if (c.tls != nullptr && c.tls->handshake_done() && !c.tls->failed() && !c.eof) {
    // close_notify, if the socket takes it at once: the peer learns the
    // stream ended here and was not cut.
    std::string notify;
    c.tls->Shutdown();
    c.tls->DrainTo(&notify);
    uv_buf_t buf = uv_buf_init(notify.data(), static_cast<unsigned int>(notify.size()));
    if (!notify.empty() && uv_try_write(c.stream(), &buf, 1) > 0) CountWrite();
  }
  c.session->OnClose();
  Unsubscribe(c);
  ReleaseInput(c);
  [[maybe_unused]] const size_t erased = connections_.erase(c.id);
  assert(erased == 1);  // every open connection is in the table, once
  assert(c.reserved_bytes == 0);
  assert(counters()->connections.load(std::memory_order_relaxed) > 0);
  counters()->connections.fetch_sub(1, std::memory_order_relaxed);
  if (c.http) counters()->http_connections.fetch_sub(1, std::memory_order_relaxed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.handle), [](uv_handle_t* handle) {
    Connection* conn = &ConnectionOf(handle);
    Loop* loop = conn->loop;
    delete conn;
    loop->MaybeFinishShutdown();
  });
}

void Loop::RecheckSessions() {
  std::vector<Connection*> open;
  for (auto& [id, c] : connections_) {
    if (!c->closing) open.push_back(c);
  }
  for (Connection* c : open) {
    if (c->session->CredentialsHold()) continue;
    Flush(*c);
    FinishIfDone(*c);
  }
}

namespace {

// A handshake is given at least this long, however short the timeouts (a
// loaded node verifying certificates and revocation lists, a slow link).
constexpr int64_t kMinHandshakeMs = 10'000;

}  // namespace

void Loop::CloseIdleConnections() {
  // Expiry is noticed here for sessions that make no requests (watchers).
  RecheckSessions();
  const int64_t now = now_ms();
  std::vector<Connection*> timed_out;
  std::vector<Connection*> idle;
  std::vector<Connection*> handshakes;
  for (auto& [id, c] : connections_) {
    if (c->closing) continue;
    if (c->tls != nullptr && !c->tls->failed()) {
      // TLS's own deadlines, with the session's timeout: a handshake must
      // finish, and a record come whole, within it.
      const int64_t timeout_ms = absl::ToInt64Milliseconds(
          c->http ? config_.http_idle_timeout : config_.binary_idle_timeout);
      // (A silent one is idle, as before, below.)
      if (!c->tls->handshake_done()) {
        if (now - c->opened_ms > std::max(timeout_ms, kMinHandshakeMs)) {
          handshakes.push_back(c);
          continue;
        }
      } else if (c->reading && c->tls_partial_since_ms >= 0 &&
                 now - c->tls_partial_since_ms > timeout_ms) {
        // (Unless this side stopped reading it: the client's answers wait.)
        timed_out.push_back(c);
        continue;
      }
    }
    switch (c->session->CheckExpiry(now)) {
      case ProtocolSession::Expiry::kNone:
        break;
      case ProtocolSession::Expiry::kTimedOut:
        timed_out.push_back(c);
        break;
      case ProtocolSession::Expiry::kIdle:
        idle.push_back(c);
        break;
    }
  }
  for (Connection* c : timed_out) {
    c->session->Expire();
    Flush(*c);
    FinishIfDone(*c);
  }
  for (Connection* c : idle) Close(*c);
  for (Connection* c : handshakes) {
    config_.tls->CountHandshakeFailure();
    Log(Level::kDebug, "connection %d: the TLS handshake did not finish in time; closing it",
        c->id);
    Close(*c);
  }
}

// ---- Engine events --------------------------------------------------------------

void Loop::Subscribe(Connection& c) {
  if (subscribers_.insert(&c).second) {
    subscriber_count_.fetch_add(1, std::memory_order_relaxed);
  }
  uv_async_send(&events_async_);
}

void Loop::Unsubscribe(Connection& c) {
  if (subscribers_.erase(&c) > 0) subscriber_count_.fetch_sub(1, std::memory_order_relaxed);
}

void Loop::PumpEvents() {
  engine::Engine* engine = service_->engine();
  EventsPass pass;
  // Read once per pass, not once per subscriber.
  pass.last_sequences.resize(engine->ShardCount());
  for (uint32_t shard = 0; shard < pass.last_sequences.size(); ++shard) {
    pass.last_sequences[shard] = engine->LastSequence(shard);
  }
  std::vector<Connection*> connections;
  for (Connection* c : subscribers_) {
    if (!c->closing) connections.push_back(c);
  }
  for (Connection* c : connections) {
    // Answers a read of this turn left for the turn's end go first: a
    // watch's limit counts what the client has not taken, not what is
    // still to be handed to the socket.
    Flush(*c);
    if (c->closing) continue;  // the write failed (Flush finished it)
    if (!c->session->OnEvents(pass)) {
      Flush(*c);
      FinishIfDone(*c);
      continue;
    }
    Flush(*c);
    ApplyBackpressure(*c);
  }
  // Yield to other work between batches; come back for the rest.
  if (pass.more) uv_async_send(&events_async_);
}

// ---- Shutdown -------------------------------------------------------------------

void Loop::BeginShutdown() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& listener : listeners_) {
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
  const uint64_t grace_ms = static_cast<uint64_t>(absl::ToInt64Milliseconds(config_.shutdown_grace));
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
          c->wire_out.clear();
          loop.Close(*c);
        }
        loop.MaybeFinishShutdown();
      },
      grace_ms, 0);
  MaybeFinishShutdown();
}

void Loop::MaybeFinishShutdown() {
  if (!stopping_ || handles_closed_ || !connections_.empty()) return;
  handles_closed_ = true;
  {
    absl::MutexLock lock(&tasks_mu_);
    handles_closing_ = true;
  }
  if (config_.loop_ending) config_.loop_ending();
  uv_close(reinterpret_cast<uv_handle_t*>(&tasks_async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&events_async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&shutdown_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&idle_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_prepare_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_check_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&answers_check_), nullptr);
}

}  // namespace logkv::server::net
