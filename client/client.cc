// logkv::Client over the binary protocol (docs/protocol.md).
//
// One TCP connection at a time. Callers build their request frame on their
// own thread, register a Pending entry under a fresh request_id and send the
// whole frame under write_mu_; one reader thread, living as long as the
// Client, reads answers with a FrameDecoder, verifies them and completes the
// Pending entry with the same request_id. When the connection breaks, the
// reader is the only one that tears it down: it closes the socket, fails
// every Pending entry and waits for the next caller to reconnect.
//
// Lock order: connect_mu_ -> write_mu_ -> mu_. mu_ is never held across a
// blocking system call, so the reader can always complete calls even while a
// writer is blocked in send() (the server stops reading a connection whose
// answers are not read; holding mu_ there would deadlock us with it).

#include "logkv/client.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "protocol/frame.h"
#include "protocol/placement.h"
#include "tls_link.h"

namespace logkv {

namespace p = ::logkv::protocol;

namespace {

// Bytes asked of the decoder per recv(): large enough that a busy pipelined
// connection needs few system calls.
constexpr size_t kReadChunkBytes = 64 << 10;
// The reader wakes at least this often to fail calls past their deadline,
// so async calls time out even when the node never answers.
constexpr int kSweepIntervalMs = 100;
// A thread's request builder keeps its buffer between calls unless one
// request made it grow past this, so one large value does not pin memory.
constexpr size_t kKeepBuilderBytes = 1 << 20;
// Keys in error messages are escaped and cut to this length.
constexpr size_t kMaxKeyInMessageBytes = 64;

std::string Quoted(absl::string_view bytes) {
  const bool cut = bytes.size() > kMaxKeyInMessageBytes;
  if (cut) bytes = bytes.substr(0, kMaxKeyInMessageBytes);
  return absl::StrCat("\"", absl::CHexEscape(bytes), cut ? "...\"" : "\"");
}

std::string ErrnoText(int error) { return std::string(std::strerror(error)); }

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder& builder,
                                                        absl::string_view bytes) {
  return builder.CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

p::Consistency ToWire(Consistency consistency) {
  switch (consistency) {
    case Consistency::kEventual:
      return p::Consistency::Eventual;
    case Consistency::kStrong:
      return p::Consistency::Strong;
    case Consistency::kDefault:
      break;
  }
  return p::Consistency::Default;
}

flatbuffers::FlatBufferBuilder& ThreadBuilder() {
  thread_local flatbuffers::FlatBufferBuilder builder(1024);
  return builder;
}

// Splits "host:port" or "[v6-address]:port".
absl::Status ParseNode(absl::string_view node, std::string* host, std::string* port) {
  const size_t colon = node.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || colon + 1 == node.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("node \"", node, "\" is not host:port (ClientOptions::nodes)"));
  }
  absl::string_view host_part = node.substr(0, colon);
  if (host_part.size() >= 2 && host_part.front() == '[' && host_part.back() == ']') {
    host_part = host_part.substr(1, host_part.size() - 2);
  }
  uint32_t port_number = 0;
  if (!absl::SimpleAtoi(node.substr(colon + 1), &port_number) || port_number == 0 ||
      port_number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("node \"", node, "\" has no valid port (1-65535)"));
  }
  host->assign(host_part.data(), host_part.size());
  *port = absl::StrCat(port_number);
  return absl::OkStatus();
}

int RemainingMs(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  if (left >= absl::Seconds(3600)) return 3600 * 1000;
  // Rounds up so a sub-millisecond remainder still waits instead of spinning.
  return static_cast<int>(
      absl::ToInt64Milliseconds(left + absl::Milliseconds(1) - absl::Nanoseconds(1)));
}

// Sends all of data on a blocking socket. A send timeout (SO_SNDTIMEO) or any
// error leaves the stream in an unknown state: the caller drops the connection.
absl::Status SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t sent = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return absl::UnavailableError("send timed out (request_timeout)");
      }
      return absl::UnavailableError(absl::StrCat("send failed: ", ErrnoText(errno)));
    }
    data.remove_prefix(static_cast<size_t>(sent));
  }
  return absl::OkStatus();
}

// Connects to one address with a deadline: a non-blocking connect, then poll.
absl::StatusOr<int> ConnectAddress(const addrinfo& address, absl::Time deadline) {
  const int fd = ::socket(address.ai_family, address.ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                          address.ai_protocol);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", ErrnoText(errno)));
  if (::connect(fd, address.ai_addr, address.ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      const int error = errno;
      ::close(fd);
      return absl::UnavailableError(ErrnoText(error));
    }
    pollfd poll_fd{fd, POLLOUT, 0};
    int ready;
    do {
      ready = ::poll(&poll_fd, 1, RemainingMs(deadline));
    } while (ready < 0 && errno == EINTR);
    if (ready <= 0) {
      ::close(fd);
      return absl::DeadlineExceededError("connect timed out (connect_timeout)");
    }
    int error = 0;
    socklen_t length = sizeof(error);
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
    if (error != 0) {
      ::close(fd);
      return absl::UnavailableError(ErrnoText(error));
    }
  }
  // Back to blocking: sends block (bounded by SO_SNDTIMEO), reads go through poll.
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("fcntl: ", ErrnoText(error)));
  }
  return fd;
}

struct Empty {};

absl::StatusOr<Empty> ToEmpty(const p::Response&) { return Empty{}; }

absl::StatusOr<Value> ToValue(const p::Response& response) {
  const p::ValueResult* result = response.result_as_ValueResult();
  if (result == nullptr) return absl::InternalError("answer carries no ValueResult");
  Value value;
  const absl::string_view bytes = p::View(result->value());
  value.value.assign(bytes.data(), bytes.size());
  value.version = result->version();
  value.timestamp = result->timestamp();
  value.expiry_unix_ms = result->expiry_unix_ms();
  return value;
}

absl::StatusOr<WriteResult> ToWriteResult(const p::Response& response) {
  const p::WriteResult* result = response.result_as_WriteResult();
  if (result == nullptr) return absl::InternalError("answer carries no WriteResult");
  WriteResult written;
  written.version = result->version();
  written.timestamp = result->timestamp();
  written.sequence = result->sequence();
  written.shard = result->shard();
  return written;
}

absl::StatusOr<std::vector<absl::Status>> ToBatchStatuses(const p::Response& response) {
  const p::BatchResult* result = response.result_as_BatchResult();
  if (result == nullptr) return absl::InternalError("answer carries no BatchResult");
  std::vector<absl::Status> statuses;
  if (result->items() == nullptr) return statuses;
  statuses.reserve(result->items()->size());
  for (const p::BatchItemResult* item : *result->items()) {
    if (item->status() == p::StatusCode::Ok) {
      statuses.push_back(absl::OkStatus());
    } else {
      statuses.emplace_back(p::FromWire(item->status()), p::View(item->message()));
    }
  }
  return statuses;
}

absl::StatusOr<ScanPage> ToScanPage(const p::Response& response) {
  const p::ScanResult* result = response.result_as_ScanResult();
  if (result == nullptr) return absl::InternalError("answer carries no ScanResult");
  ScanPage page;
  if (result->items() != nullptr) {
    page.items.reserve(result->items()->size());
    for (const p::ScanItem* item : *result->items()) {
      ScanItem& out = page.items.emplace_back();
      const absl::string_view key = p::View(item->key());
      const absl::string_view value = p::View(item->value());
      out.key.assign(key.data(), key.size());
      out.value.value.assign(value.data(), value.size());
      out.value.version = item->version();
      out.value.timestamp = item->timestamp();
      out.value.expiry_unix_ms = item->expiry_unix_ms();
    }
  }
  const absl::string_view cursor = p::View(result->next_cursor());
  page.next_cursor.assign(cursor.data(), cursor.size());
  return page;
}

absl::StatusOr<ServerStats> ToStats(const p::Response& response) {
  const p::StatsResult* result = response.result_as_StatsResult();
  if (result == nullptr) return absl::InternalError("answer carries no StatsResult");
  ServerStats stats;
  stats.keys = result->keys();
  stats.tombstones = result->tombstones();
  stats.segments = result->segments();
  stats.log_bytes = result->log_bytes();
  stats.dead_bytes = result->dead_bytes();
  stats.index_bytes = result->index_bytes();
  stats.puts = result->puts();
  stats.deletes = result->deletes();
  stats.gets = result->gets();
  stats.fsyncs = result->fsyncs();
  stats.compactions = result->compactions();
  stats.expired_swept = result->expired_swept();
  stats.connections = result->connections();
  stats.requests = result->requests();
  stats.uptime_ms = result->uptime_ms();
  stats.shard_count = result->shard_count();
  if (result->last_sequences() != nullptr) {
    stats.last_sequences.assign(result->last_sequences()->begin(), result->last_sequences()->end());
  }
  return stats;
}

Event ToEvent(const p::Event& event) {
  Event out;
  out.type = event.type() == p::EventType::Delete ? Event::Type::kDelete : Event::Type::kPut;
  out.shard = event.shard();
  out.sequence = event.sequence();
  const absl::string_view key = p::View(event.key());
  const absl::string_view value = p::View(event.value());
  out.key.assign(key.data(), key.size());
  out.value.assign(value.data(), value.size());
  out.version = event.version();
  out.timestamp = event.timestamp();
  return out;
}

// How a call ends, as seen by the reader: an answer, or a failure (the
// connection broke, the deadline passed, the client is going away).
struct Reply {
  const p::Response* response;  // null when the call failed without an answer
  absl::Status failure;         // set when response is null; names the node
  absl::string_view node;       // the node the request went to
};
// Returns true when the call is finished. Only streaming calls (Watch) may
// return false, to stay registered for more answers.
using Handler = std::function<bool(const Reply&)>;
using BuildFn = absl::FunctionRef<void(flatbuffers::FlatBufferBuilder&, uint64_t request_id)>;
template <typename T>
using Converter = absl::StatusOr<T> (*)(const p::Response&);

// Completes a call from its reply: the value, the node's error, or the
// transport failure, each prefixed with what was asked.
template <typename T>
absl::StatusOr<T> Complete(const Reply& reply, absl::string_view what, Converter<T> convert) {
  if (reply.response == nullptr) {
    return absl::Status(reply.failure.code(), absl::StrCat(what, ": ", reply.failure.message()));
  }
  absl::Status status = p::StatusFromResponse(*reply.response);
  if (status.ok()) {
    absl::StatusOr<T> value = convert(*reply.response);
    if (value.ok()) return value;
    status = value.status();
  }
  return absl::Status(status.code(),
                      absl::StrCat(what, " on ", reply.node, ": ", status.message()));
}

}  // namespace

using client_internal::TlsConfig;
using client_internal::TlsLink;

// Sends data on fd, through tls when it is set.
absl::Status SendOn(int fd, TlsLink* tls, absl::string_view data) {
  return tls != nullptr ? tls->Send(fd, data) : SendAll(fd, data);
}

// One recv() from fd into decoder (decrypted when tls is set): OK with
// *closed set when the node closed the connection, OK with nothing read on
// EINTR / EAGAIN.
absl::Status ReceiveOn(int fd, TlsLink* tls, p::FrameDecoder& decoder, bool* closed) {
  *closed = false;
  if (tls == nullptr) {
    size_t available = 0;
    char* space = decoder.WritableSpace(kReadChunkBytes, &available);
    const ssize_t received = ::recv(fd, space, available, 0);
    if (received == 0) *closed = true;
    if (received < 0) {
      if (errno == EINTR || errno == EAGAIN) return absl::OkStatus();
      return absl::UnavailableError(ErrnoText(errno));
    }
    if (received > 0) decoder.Commit(static_cast<size_t>(received));
    return absl::OkStatus();
  }
  thread_local std::unique_ptr<char[]> buffer(new char[kReadChunkBytes]);
  const ssize_t received = ::recv(fd, buffer.get(), kReadChunkBytes, 0);
  if (received == 0) *closed = true;
  if (received < 0) {
    if (errno == EINTR || errno == EAGAIN) return absl::OkStatus();
    return absl::UnavailableError(ErrnoText(errno));
  }
  if (received == 0) return absl::OkStatus();
  return tls->Receive(absl::string_view(buffer.get(), static_cast<size_t>(received)), decoder);
}

class Client::Impl {
 public:
  explicit Impl(const ClientOptions& options)
      : options_(options), reader_([this] { ReaderMain(); }) {
    if (options_.tls) {
      absl::StatusOr<std::shared_ptr<TlsConfig>> config = TlsConfig::Create(
          {options_.tls_ca_file, options_.tls_cert_file, options_.tls_key_file,
           options_.tls_server_name});
      if (config.ok()) {
        tls_config_ = *std::move(config);
      } else {
        tls_config_status_ = config.status();
      }
    }
  }

  ~Impl() {
    {
      absl::MutexLock lock(&mu_);
      shutting_down_ = true;
      // Wakes the reader out of poll(); it then fails the calls in flight.
      if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    }
    reader_.join();
  }

  // Connects (trying options_.nodes in order) unless a connection is up.
  absl::Status EnsureConnected() ABSL_LOCKS_EXCLUDED(mu_, connect_mu_, write_mu_);

  // Builds a request with a fresh id, registers handler under it and sends
  // it. On success the handler will be called exactly once by the reader
  // (or repeatedly, for a streaming call, until it returns true). On failure
  // nothing was registered and the handler is never called.
  absl::StatusOr<uint64_t> Send(absl::string_view what, BuildFn build, Handler handler,
                                bool streaming, bool connect);

  template <typename T>
  absl::StatusOr<T> CallSync(const std::string& what, BuildFn build, Converter<T> convert);
  template <typename T>
  void CallAsync(std::string what, BuildFn build, Converter<T> convert,
                 std::function<void(absl::StatusOr<T>)> done);
  // Reads are retried after transport failures when options_.retries > 0.
  template <typename T>
  absl::StatusOr<T> CallSyncRead(const std::string& what, BuildFn build, Converter<T> convert);

  absl::Status Watch(absl::string_view prefix, const std::vector<uint64_t>& after_sequences,
                     const std::function<bool(const Event&)>& on_event);

  std::string connected_node() const {
    absl::MutexLock lock(&mu_);
    return connected_ ? options_.nodes[node_index_] : std::string();
  }

  // Cluster-aware routing: the connection to use for key, a connection to its
  // first owner when the cluster's members are known (from Hello) and that
  // owner can be reached, else this one. Connections to owners are made on
  // first use and kept; the ring is rebuilt from every new Hello.
  Impl* RouteFor(absl::string_view key) ABSL_LOCKS_EXCLUDED(route_mu_);

 private:
  struct Pending {
    Handler handler;
    absl::Time deadline;  // InfiniteFuture for streaming calls
    bool streaming;
  };

  // A connection that said Hello successfully, ready to hand to the reader.
  struct Handshake {
    int fd;
    std::shared_ptr<TlsLink> tls;  // null: plaintext
    std::unique_ptr<p::FrameDecoder> decoder;  // holds any bytes read past the Hello answer
    uint32_t max_frame_bytes;
    // The cluster's members as the node listed them (node id, address).
    std::vector<std::pair<std::string, std::string>> members;
    // What the node puts before this session's keys (the tenant's prefix).
    std::string key_prefix;
  };

  absl::StatusOr<Handshake> Dial(size_t node_index);
  absl::StatusOr<Handshake> SayHello(int fd, std::shared_ptr<TlsLink> tls, absl::Time deadline);

  void ReaderMain();
  absl::Status ReadConnection(int fd, TlsLink* tls, const std::string& node,
                              p::FrameDecoder& decoder);
  void Dispatch(const p::Response& response, absl::string_view node) ABSL_LOCKS_EXCLUDED(mu_);
  void FailExpired(absl::string_view node) ABSL_LOCKS_EXCLUDED(mu_);
  void Teardown(int fd, const absl::Status& reason, const std::string& node);

  // Constant after construction.
  const ClientOptions options_;
  // With options_.tls: the CAs and the client certificate, or why they
  // could not be read (reported by the first connect).
  std::shared_ptr<TlsConfig> tls_config_;
  absl::Status tls_config_status_;

  // Serialises connection attempts, so concurrent callers make one.
  absl::Mutex connect_mu_;
  // Held while a frame is sent, so frames never interleave and fd_ is not
  // closed under a sender.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  void SetMembers(std::vector<std::pair<std::string, std::string>> members,
                  std::string key_prefix) ABSL_LOCKS_EXCLUDED(route_mu_);

  // Routing state (see RouteFor). Lock order: route_mu_ before an owner
  // Impl's own locks; never taken under mu_.
  mutable absl::Mutex route_mu_;
  std::unique_ptr<const placement::Ring> ring_ ABSL_GUARDED_BY(route_mu_);
  // Keys are routed as the servers place them: placement::PlacementKey.
  std::string key_prefix_ ABSL_GUARDED_BY(route_mu_);
  absl::flat_hash_map<std::string, std::string> member_address_ ABSL_GUARDED_BY(route_mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<Impl>> owners_ ABSL_GUARDED_BY(route_mu_);
  bool is_owner_connection_ = false;  // constant: an Impl made by RouteFor does not route

  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;             // -1: no socket (the reader has torn it down)
  std::shared_ptr<TlsLink> tls_ ABSL_GUARDED_BY(mu_);  // fd_'s TLS; null: plaintext
  bool connected_ ABSL_GUARDED_BY(mu_) = false;  // fd_ works and the reader reads it
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  size_t node_index_ ABSL_GUARDED_BY(mu_) = 0;   // of the connected node
  size_t start_index_ ABSL_GUARDED_BY(mu_) = 0;  // first node the next connect tries
  uint32_t server_max_frame_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<p::FrameDecoder> handover_decoder_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);

  std::atomic<uint64_t> next_request_id_{1};
  // Last: starts after every field above is initialised.
  std::thread reader_;
};

absl::StatusOr<Client::Impl::Handshake> Client::Impl::SayHello(int fd,
                                                               std::shared_ptr<TlsLink> tls,
                                                               absl::Time deadline) {
  const uint64_t request_id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
  flatbuffers::FlatBufferBuilder builder(256);
  auto token = options_.auth_token.empty() ? 0 : builder.CreateString(options_.auth_token);
  auto name = builder.CreateString(options_.client_name);
  p::HelloBuilder hello(builder);
  hello.add_protocol_version(p::kProtocolVersion);
  if (!options_.auth_token.empty()) hello.add_auth_token(token);
  hello.add_client_name(name);
  auto operation = hello.Finish();
  builder.FinishSizePrefixed(
      p::CreateRequest(builder, request_id, p::Operation::Hello, operation.Union()));
  if (absl::Status sent = SendOn(fd, tls.get(), p::FrameOf(builder)); !sent.ok()) {
    return absl::UnavailableError(absl::StrCat("Hello: ", sent.message()));
  }

  auto decoder = std::make_unique<p::FrameDecoder>(options_.max_frame_bytes);
  while (true) {
    absl::StatusOr<std::optional<absl::string_view>> frame = decoder->Next();
    if (!frame.ok()) {
      return absl::UnavailableError(absl::StrCat("answer to Hello: ", frame.status().message()));
    }
    if (frame->has_value()) {
      absl::StatusOr<const p::Response*> response =
          p::VerifyResponse(**frame, options_.max_frame_bytes);
      if (!response.ok()) {
        return absl::UnavailableError(
            absl::StrCat("answer to Hello: ", response.status().message()));
      }
      if ((*response)->request_id() == 0) {
        // The node refused the connection itself (a TLS port, a frame too large).
        absl::Status status = p::StatusFromResponse(**response);
        if (!status.ok()) {
          return absl::Status(status.code(),
                              absl::StrCat("the node refused the connection: ", status.message()));
        }
      }
      if ((*response)->request_id() != request_id) {
        return absl::UnavailableError(absl::StrCat("answer to Hello carries request_id ",
                                                   (*response)->request_id(), ", expected ",
                                                   request_id));
      }
      if (absl::Status status = p::StatusFromResponse(**response); !status.ok()) {
        return absl::Status(status.code(), absl::StrCat("Hello refused: ", status.message()));
      }
      const p::HelloResult* result = (*response)->result_as_HelloResult();
      if (result == nullptr) return absl::UnavailableError("answer to Hello has no HelloResult");
      if (result->protocol_version() != p::kProtocolVersion) {
        return absl::FailedPreconditionError(
            absl::StrCat("node speaks protocol version ", result->protocol_version(),
                         ", this client speaks ", p::kProtocolVersion));
      }
      Handshake handshake{fd, std::move(tls), std::move(decoder), result->max_frame_bytes(), {}, {}};
      if (result->key_prefix() != nullptr) {
        handshake.key_prefix.assign(reinterpret_cast<const char*>(result->key_prefix()->data()),
                                    result->key_prefix()->size());
      }
      if (result->members() != nullptr) {
        for (const p::MemberInfo* member : *result->members()) {
          if (member->node_id() == nullptr || member->address() == nullptr) continue;
          handshake.members.emplace_back(member->node_id()->str(), member->address()->str());
        }
      }
      return handshake;
    }
    pollfd poll_fd{fd, POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, RemainingMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return absl::UnavailableError(absl::StrCat("poll: ", ErrnoText(errno)));
    if (ready == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("no answer to Hello within ", absl::FormatDuration(options_.connect_timeout),
                       " (connect_timeout)"));
    }
    bool closed = false;
    if (absl::Status received = ReceiveOn(fd, tls.get(), *decoder, &closed); !received.ok()) {
      return absl::UnavailableError(absl::StrCat("answer to Hello: ", received.message()));
    }
    if (closed) return absl::UnavailableError("closed the connection during Hello");
  }
}

absl::StatusOr<Client::Impl::Handshake> Client::Impl::Dial(size_t node_index) {
  const std::string& node = options_.nodes[node_index];
  std::string host, port;
  if (absl::Status parsed = ParseNode(node, &host, &port); !parsed.ok()) return parsed;
  const absl::Time deadline = absl::Now() + options_.connect_timeout;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addresses = nullptr;
  if (const int error = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &addresses); error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", host, ": ", ::gai_strerror(error)));
  }
  absl::Status last = absl::UnavailableError("no address");
  int fd = -1;
  for (const addrinfo* address = addresses; address != nullptr; address = address->ai_next) {
    absl::StatusOr<int> connected = ConnectAddress(*address, deadline);
    if (connected.ok()) {
      fd = *connected;
      break;
    }
    last = connected.status();
  }
  ::freeaddrinfo(addresses);
  if (fd < 0) return last;

  // Requests are small and latency-bound: do not let Nagle hold them back.
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  // Data the node never acknowledges fails the connection after the request
  // timeout rather than after TCP's retransmission limit (~15 minutes).
  if (options_.request_timeout < absl::InfiniteDuration()) {
    const unsigned int user_timeout_ms = static_cast<unsigned int>(std::min<int64_t>(
        absl::ToInt64Milliseconds(options_.request_timeout), int64_t{1} << 30));
    ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
  }
  // A node that stops reading must not block a sender forever.
  if (options_.request_timeout < absl::InfiniteDuration()) {
    const timeval timeout =
        absl::ToTimeval(std::max(options_.request_timeout, absl::Milliseconds(1)));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  }
  std::shared_ptr<TlsLink> tls;
  if (options_.tls) {
    if (!tls_config_status_.ok()) {
      ::close(fd);
      return tls_config_status_;
    }
    absl::StatusOr<std::shared_ptr<TlsLink>> link =
        TlsLink::Handshake(*tls_config_, fd, host, deadline);
    if (!link.ok()) {
      ::close(fd);
      return link.status();
    }
    tls = *std::move(link);
  }
  absl::StatusOr<Handshake> handshake = SayHello(fd, std::move(tls), deadline);
  if (!handshake.ok()) ::close(fd);
  return handshake;
}

absl::Status Client::Impl::EnsureConnected() {
  {
    absl::MutexLock lock(&mu_);
    if (connected_) return absl::OkStatus();
  }
  absl::MutexLock connect_lock(&connect_mu_);
  size_t start;
  {
    absl::MutexLock lock(&mu_);
    if (connected_) return absl::OkStatus();  // another caller connected meanwhile
    // The reader closes a broken socket promptly; wait for it so it is free
    // to read the new one.
    auto torn_down = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return fd_ < 0 || shutting_down_; };
    mu_.Await(absl::Condition(&torn_down));
    if (shutting_down_) return absl::CancelledError("the client is being destroyed");
    start = start_index_;
  }
  std::vector<std::string> failures;
  const size_t count = options_.nodes.size();
  for (size_t i = 0; i < count; ++i) {
    const size_t index = (start + i) % count;
    absl::StatusOr<Handshake> handshake = Dial(index);
    if (handshake.ok()) {
      absl::MutexLock lock(&mu_);
      if (shutting_down_) {
        // The reader has gone: nobody would ever read or close this socket.
        ::close(handshake->fd);
        return absl::CancelledError("the client is being destroyed");
      }
      fd_ = handshake->fd;
      tls_ = std::move(handshake->tls);
      connected_ = true;
      node_index_ = index;
      server_max_frame_bytes_ = handshake->max_frame_bytes;
      handover_decoder_ = std::move(handshake->decoder);
      SetMembers(std::move(handshake->members), std::move(handshake->key_prefix));
      return absl::OkStatus();
    }
    const absl::Status& status = handshake.status();
    failures.push_back(absl::StrCat(options_.nodes[index], ": ", status.message()));
    // A node that answered and refused (bad token, other protocol version)
    // would be refused the same way by the others: say so at once.
    const bool transport_failure = status.code() == absl::StatusCode::kUnavailable ||
                                   status.code() == absl::StatusCode::kDeadlineExceeded;
    if (!transport_failure) {
      return absl::Status(status.code(),
                          absl::StrCat("node ", options_.nodes[index], ": ", status.message()));
    }
  }
  return absl::UnavailableError(
      absl::StrCat("no node reachable (", absl::StrJoin(failures, "; "), ")"));
}

absl::StatusOr<uint64_t> Client::Impl::Send(absl::string_view what, BuildFn build, Handler handler,
                                            bool streaming, bool connect) {
  // Two attempts: the connection may break between connecting and registering.
  for (int attempt = 0;; ++attempt) {
    if (connect) {
      if (absl::Status connected = EnsureConnected(); !connected.ok()) {
        return absl::Status(connected.code(), absl::StrCat(what, ": ", connected.message()));
      }
    }
    const uint64_t request_id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
    flatbuffers::FlatBufferBuilder& builder = ThreadBuilder();
    builder.Clear();
    build(builder, request_id);
    const absl::string_view frame = p::FrameOf(builder);

    absl::MutexLock write_lock(&write_mu_);
    int fd;
    std::shared_ptr<TlsLink> tls;
    {
      absl::MutexLock lock(&mu_);
      if (!connected_) {
        if (!connect || attempt > 0) {
          return absl::UnavailableError(absl::StrCat(what, ": not connected to any node"));
        }
        continue;
      }
      uint32_t limit = options_.max_frame_bytes;
      if (server_max_frame_bytes_ != 0) limit = std::min(limit, server_max_frame_bytes_);
      if (frame.size() - p::kFrameLengthBytes > limit) {
        const size_t frame_bytes = frame.size();
        if (builder.GetSize() > kKeepBuilderBytes) builder.Reset();
        return absl::ResourceExhaustedError(absl::StrCat(what, ": request frame of ", frame_bytes,
                                                         " bytes exceeds max_frame_bytes (", limit,
                                                         ")"));
      }
      const absl::Time deadline =
          streaming ? absl::InfiniteFuture() : absl::Now() + options_.request_timeout;
      pending_.insert_or_assign(request_id, Pending{std::move(handler), deadline, streaming});
      fd = fd_;
      tls = tls_;
    }
    if (absl::Status sent = SendOn(fd, tls.get(), frame); !sent.ok()) {
      // The stream may hold half a frame now: drop the connection. The reader
      // notices, and fails this call with the others in flight.
      ::shutdown(fd, SHUT_RDWR);
    }
    if (builder.GetSize() > kKeepBuilderBytes) builder.Reset();
    return request_id;
  }
}

template <typename T>
absl::StatusOr<T> Client::Impl::CallSync(const std::string& what, BuildFn build,
                                         Converter<T> convert) {
  struct State {
    absl::Notification done;
    absl::StatusOr<T> result;
  };
  State state;
  absl::StatusOr<uint64_t> request_id = Send(
      what, build,
      [&state, &what, convert](const Reply& reply) {
        state.result = Complete<T>(reply, what, convert);
        state.done.Notify();
        return true;
      },
      /*streaming=*/false, /*connect=*/true);
  if (!request_id.ok()) return request_id.status();
  if (!state.done.WaitForNotificationWithTimeout(options_.request_timeout)) {
    std::string node;
    bool removed;
    {
      absl::MutexLock lock(&mu_);
      removed = pending_.erase(*request_id) > 0;
      if (connected_) node = options_.nodes[node_index_];
      // As in FailExpired: a node silent this long is given up.
      if (removed && fd_ >= 0 && connected_) ::shutdown(fd_, SHUT_RDWR);
    }
    if (removed) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": no answer from ", node.empty() ? "the node" : node, " within ",
                       absl::FormatDuration(options_.request_timeout), " (request_timeout)"));
    }
    // The reader took the entry and is completing it now.
    state.done.WaitForNotification();
  }
  return std::move(state.result);
}

template <typename T>
absl::StatusOr<T> Client::Impl::CallSyncRead(const std::string& what, BuildFn build,
                                             Converter<T> convert) {
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<T> result = CallSync<T>(what, build, convert);
    if (result.ok() || result.status().code() != absl::StatusCode::kUnavailable ||
        attempt >= options_.retries) {
      return result;
    }
  }
}

template <typename T>
void Client::Impl::CallAsync(std::string what, BuildFn build, Converter<T> convert,
                             std::function<void(absl::StatusOr<T>)> done) {
  // The handler owns copies of what and done: the caller's may be gone when
  // the answer comes.
  auto shared_done = std::make_shared<std::function<void(absl::StatusOr<T>)>>(std::move(done));
  absl::StatusOr<uint64_t> request_id = Send(
      what, build,
      [what, shared_done, convert](const Reply& reply) {
        (*shared_done)(Complete<T>(reply, what, convert));
        return true;
      },
      /*streaming=*/false, /*connect=*/true);
  if (!request_id.ok()) (*shared_done)(request_id.status());
}

absl::Status Client::Impl::Watch(absl::string_view prefix,
                                 const std::vector<uint64_t>& after_sequences,
                                 const std::function<bool(const Event&)>& on_event) {
  const std::string what = absl::StrCat("watch of prefix ", Quoted(prefix));
  struct State {
    absl::Notification done;
    absl::Status status;
    bool stopped_by_caller = false;
  };
  State state;
  auto build = [&](flatbuffers::FlatBufferBuilder& builder, uint64_t request_id) {
    auto prefix_bytes = Bytes(builder, prefix);
    auto after = builder.CreateVector(after_sequences);
    auto watch = p::CreateWatch(builder, prefix_bytes, after);
    builder.FinishSizePrefixed(
        p::CreateRequest(builder, request_id, p::Operation::Watch, watch.Union()));
  };
  // Runs on the reader thread, never after it returned true (the entry is
  // gone then), so the references to this frame stay valid.
  auto handler = [&state, &what, &on_event](const Reply& reply) {
    if (reply.response == nullptr) {
      state.status =
          absl::Status(reply.failure.code(), absl::StrCat(what, ": ", reply.failure.message()));
      state.done.Notify();
      return true;
    }
    if (absl::Status status = p::StatusFromResponse(*reply.response); !status.ok()) {
      state.status = absl::Status(status.code(),
                                  absl::StrCat(what, " on ", reply.node, ": ", status.message()));
      state.done.Notify();
      return true;
    }
    const p::WatchEvents* events = reply.response->result_as_WatchEvents();
    if (events == nullptr || events->events() == nullptr) return false;  // e.g. the start ack
    for (const p::Event* event : *events->events()) {
      if (!on_event(ToEvent(*event))) {
        state.stopped_by_caller = true;
        state.done.Notify();
        return true;
      }
    }
    return false;
  };
  absl::StatusOr<uint64_t> request_id =
      Send(what, build, handler, /*streaming=*/true, /*connect=*/true);
  if (!request_id.ok()) return request_id.status();
  state.done.WaitForNotification();
  if (state.stopped_by_caller) {
    // Tells the node to stop streaming; its answer (and any events already
    // on the way) carry ids nobody waits for any more and are dropped.
    const uint64_t watch_id = *request_id;
    auto unwatch = [watch_id](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
      auto operation = p::CreateUnwatch(builder, watch_id);
      builder.FinishSizePrefixed(
          p::CreateRequest(builder, id, p::Operation::Unwatch, operation.Union()));
    };
    absl::StatusOr<uint64_t> sent = Send(
        "unwatch", unwatch, [](const Reply&) { return true; }, /*streaming=*/false,
        /*connect=*/false);
    (void)sent;  // Not connected any more means there is nothing to stop.
    return absl::OkStatus();
  }
  return state.status;
}

void Client::Impl::ReaderMain() {
  while (true) {
    int fd;
    std::shared_ptr<TlsLink> tls;
    std::string node;
    std::unique_ptr<p::FrameDecoder> decoder;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return connected_ || shutting_down_; };
      mu_.Await(absl::Condition(&ready));
      if (!connected_) return;  // shutting down, nothing left to tear down
      fd = fd_;
      tls = tls_;
      node = options_.nodes[node_index_];
      decoder = std::move(handover_decoder_);
    }
    if (decoder == nullptr) decoder = std::make_unique<p::FrameDecoder>(options_.max_frame_bytes);
    const absl::Status reason = ReadConnection(fd, tls.get(), node, *decoder);
    Teardown(fd, reason, node);
  }
}

absl::Status Client::Impl::ReadConnection(int fd, TlsLink* tls, const std::string& node,
                                          p::FrameDecoder& decoder) {
  absl::Time last_sweep = absl::Now();
  while (true) {
    while (true) {
      absl::StatusOr<std::optional<absl::string_view>> frame = decoder.Next();
      if (!frame.ok()) return frame.status();
      if (!frame->has_value()) break;
      absl::StatusOr<const p::Response*> response =
          p::VerifyResponse(**frame, options_.max_frame_bytes);
      if (!response.ok()) return response.status();
      Dispatch(**response, node);
    }
    pollfd poll_fd{fd, POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, kSweepIntervalMs);
    if (ready < 0 && errno != EINTR) return absl::UnavailableError(ErrnoText(errno));
    const absl::Time now = absl::Now();
    if (now - last_sweep >= absl::Milliseconds(kSweepIntervalMs)) {
      FailExpired(node);
      last_sweep = now;
    }
    if (ready <= 0) continue;
    bool closed = false;
    if (absl::Status received = ReceiveOn(fd, tls, decoder, &closed); !received.ok()) {
      return received;
    }
    if (closed) return absl::UnavailableError("the node closed the connection");
  }
}

void Client::Impl::Dispatch(const p::Response& response, absl::string_view node) {
  const uint64_t request_id = response.request_id();
  Handler handler;
  bool streaming;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(request_id);
    if (it == pending_.end()) return;  // timed out, or a watch already stopped
    streaming = it->second.streaming;
    if (streaming) {
      // A copy: the map may rehash while the handler runs without the lock.
      handler = it->second.handler;
    } else {
      handler = std::move(it->second.handler);
      pending_.erase(it);
    }
  }
  const bool finished = handler(Reply{&response, absl::OkStatus(), node});
  if (streaming && finished) {
    absl::MutexLock lock(&mu_);
    pending_.erase(request_id);
  }
}

void Client::Impl::FailExpired(absl::string_view node) {
  std::vector<Handler> expired;
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (!it->second.streaming && it->second.deadline <= now) {
        expired.push_back(std::move(it->second.handler));
        pending_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  if (expired.empty()) return;
  const absl::Status failure = absl::DeadlineExceededError(
      absl::StrCat("no answer from ", node, " within ",
                   absl::FormatDuration(options_.request_timeout), " (request_timeout)"));
  for (Handler& handler : expired) handler(Reply{nullptr, failure, node});
  // A node that does not answer in time may be gone without a word (a
  // crashed machine, a cut cable): give the connection up, so the next call
  // connects again, to the next node when this one stays silent, instead of
  // waiting on TCP for minutes.
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0 && connected_) ::shutdown(fd_, SHUT_RDWR);
}

void Client::Impl::Teardown(int fd, const absl::Status& reason, const std::string& node) {
  // Unblocks a sender stuck in send() so write_mu_ comes free.
  ::shutdown(fd, SHUT_RDWR);
  absl::flat_hash_map<uint64_t, Pending> failed;
  bool shutting_down;
  {
    absl::MutexLock write_lock(&write_mu_);
    absl::MutexLock lock(&mu_);
    ::close(fd);
    fd_ = -1;
    tls_.reset();
    connected_ = false;
    failed.swap(pending_);
    shutting_down = shutting_down_;
    // The lost node is probably still down: the next connect starts after it.
    start_index_ = (node_index_ + 1) % options_.nodes.size();
  }
  const absl::Status failure =
      shutting_down ? absl::CancelledError(absl::StrCat(
                          "the client was destroyed with the call to ", node, " in flight"))
                    : absl::UnavailableError(
                          absl::StrCat("connection to ", node, " lost: ", reason.message()));
  for (auto& [request_id, pending] : failed) pending.handler(Reply{nullptr, failure, node});
}

// ---- Client ----------------------------------------------------------------

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

void Client::Impl::SetMembers(std::vector<std::pair<std::string, std::string>> members,
                              std::string key_prefix) {
  if (is_owner_connection_) return;
  absl::MutexLock lock(&route_mu_);
  key_prefix_ = std::move(key_prefix);
  if (members.size() < 2 || !options_.route_to_owners) {
    ring_.reset();
    return;
  }
  std::vector<std::string> ids;
  member_address_.clear();
  for (auto& [id, address] : members) {
    ids.push_back(id);
    member_address_[id] = std::move(address);
  }
  ring_ = std::make_unique<const placement::Ring>(std::move(ids));
}

Client::Impl* Client::Impl::RouteFor(absl::string_view key) {
  std::string address;
  {
    absl::MutexLock lock(&route_mu_);
    if (ring_ == nullptr) return this;
    const std::vector<std::string> owners =
        ring_->PreferenceList(placement::PlacementKey(key_prefix_, key), 1);
    if (owners.empty()) return this;
    auto it = member_address_.find(owners.front());
    if (it == member_address_.end()) return this;
    address = it->second;
  }
  if (address == connected_node()) return this;
  Impl* owner;
  {
    absl::MutexLock lock(&route_mu_);
    std::unique_ptr<Impl>& slot = owners_[address];
    if (slot == nullptr) {
      ClientOptions options = options_;
      options.nodes = {address};
      options.retries = 0;
      slot = std::make_unique<Impl>(options);
      slot->is_owner_connection_ = true;
    }
    owner = slot.get();
  }
  // An owner that cannot be reached now: this connection coordinates.
  if (!owner->EnsureConnected().ok()) return this;
  return owner;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.nodes.empty()) {
    return absl::InvalidArgumentError("ClientOptions::nodes is empty: give at least one host:port");
  }
  for (const std::string& node : options.nodes) {
    std::string host, port;
    if (absl::Status parsed = ParseNode(node, &host, &port); !parsed.ok()) return parsed;
  }
  if (options.max_frame_bytes < 64) {
    return absl::InvalidArgumentError(absl::StrCat("ClientOptions::max_frame_bytes (",
                                                   options.max_frame_bytes,
                                                   ") is too small for any answer"));
  }
  if (options.request_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "ClientOptions::request_timeout and connect_timeout must be positive");
  }
  auto impl = std::make_unique<Impl>(options);
  if (absl::Status connected = impl->EnsureConnected(); !connected.ok()) {
    return absl::Status(connected.code(), absl::StrCat("connect: ", connected.message()));
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

absl::Status Client::Ping() {
  auto build = [](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto ping = p::CreatePing(builder);
    builder.FinishSizePrefixed(p::CreateRequest(builder, id, p::Operation::Ping, ping.Union()));
  };
  return impl_->CallSyncRead<Empty>("ping", build, &ToEmpty).status();
}

namespace {

auto GetBuilder(absl::string_view key, Consistency consistency) {
  return [key, consistency](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto key_bytes = Bytes(builder, key);
    auto get = p::CreateGet(builder, key_bytes, ToWire(consistency));
    builder.FinishSizePrefixed(p::CreateRequest(builder, id, p::Operation::Get, get.Union()));
  };
}

auto PutBuilder(absl::string_view key, absl::string_view value, const PutOptions& options) {
  return [key, value, &options](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto key_bytes = Bytes(builder, key);
    auto value_bytes = Bytes(builder, value);
    auto put = p::CreatePut(builder, key_bytes, value_bytes, options.ttl_ms,
                            options.if_version.has_value(), options.if_version.value_or(0),
                            ToWire(options.consistency));
    builder.FinishSizePrefixed(p::CreateRequest(builder, id, p::Operation::Put, put.Union()));
  };
}

auto DeleteBuilder(absl::string_view key, const DeleteOptions& options) {
  return [key, &options](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto key_bytes = Bytes(builder, key);
    auto operation = p::CreateDelete(builder, key_bytes, options.if_version.has_value(),
                                     options.if_version.value_or(0), ToWire(options.consistency));
    builder.FinishSizePrefixed(
        p::CreateRequest(builder, id, p::Operation::Delete, operation.Union()));
  };
}

}  // namespace

absl::StatusOr<Value> Client::Get(absl::string_view key, Consistency consistency) {
  return impl_->RouteFor(key)->CallSyncRead<Value>(absl::StrCat("get ", Quoted(key)),
                                                   GetBuilder(key, consistency), &ToValue);
}

absl::StatusOr<Value> Client::GetVersion(absl::string_view key, uint64_t version) {
  auto build = [key, version](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto key_bytes = Bytes(builder, key);
    auto operation = p::CreateGetVersion(builder, key_bytes, version);
    builder.FinishSizePrefixed(
        p::CreateRequest(builder, id, p::Operation::GetVersion, operation.Union()));
  };
  return impl_->CallSyncRead<Value>(absl::StrCat("get ", Quoted(key), " version ", version), build,
                                    &ToValue);
}

absl::StatusOr<WriteResult> Client::Put(absl::string_view key, absl::string_view value,
                                        const PutOptions& options) {
  return impl_->RouteFor(key)->CallSync<WriteResult>(
      absl::StrCat("put ", Quoted(key)), PutBuilder(key, value, options), &ToWriteResult);
}

absl::StatusOr<WriteResult> Client::Delete(absl::string_view key, const DeleteOptions& options) {
  return impl_->RouteFor(key)->CallSync<WriteResult>(
      absl::StrCat("delete ", Quoted(key)), DeleteBuilder(key, options), &ToWriteResult);
}

absl::StatusOr<std::vector<absl::Status>> Client::Batch(
    const std::vector<BatchOperation>& operations, Consistency consistency) {
  auto build = [&operations, consistency](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    std::vector<flatbuffers::Offset<p::BatchItem>> items;
    items.reserve(operations.size());
    for (const BatchOperation& operation : operations) {
      auto key = Bytes(builder, operation.key);
      auto value = operation.is_delete ? 0 : Bytes(builder, operation.value);
      items.push_back(
          p::CreateBatchItem(builder, operation.is_delete, key, value, operation.ttl_ms));
    }
    auto item_vector = builder.CreateVector(items);
    auto batch = p::CreateBatch(builder, item_vector, ToWire(consistency));
    builder.FinishSizePrefixed(p::CreateRequest(builder, id, p::Operation::Batch, batch.Union()));
  };
  absl::StatusOr<std::vector<absl::Status>> statuses = impl_->CallSync<std::vector<absl::Status>>(
      absl::StrCat("batch of ", operations.size(), " operations"), build, &ToBatchStatuses);
  if (statuses.ok() && statuses->size() != operations.size()) {
    return absl::InternalError(absl::StrCat("batch of ", operations.size(),
                                            " operations: the node answered ", statuses->size(),
                                            " statuses"));
  }
  return statuses;
}

absl::StatusOr<ScanPage> Client::Scan(const ScanOptions& options) {
  auto build = [&options](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto prefix = Bytes(builder, options.prefix);
    auto start = Bytes(builder, options.start_key);
    auto end = Bytes(builder, options.end_key);
    auto after = Bytes(builder, options.after_key);
    auto scan = p::CreateScan(builder, prefix, start, end, after, options.limit, options.keys_only);
    builder.FinishSizePrefixed(p::CreateRequest(builder, id, p::Operation::Scan, scan.Union()));
  };
  return impl_->CallSyncRead<ScanPage>(absl::StrCat("scan of prefix ", Quoted(options.prefix)),
                                       build, &ToScanPage);
}

absl::StatusOr<ServerStats> Client::Stats() {
  auto build = [](flatbuffers::FlatBufferBuilder& builder, uint64_t id) {
    auto stats = p::CreateStats(builder);
    builder.FinishSizePrefixed(p::CreateRequest(builder, id, p::Operation::Stats, stats.Union()));
  };
  return impl_->CallSyncRead<ServerStats>("stats", build, &ToStats);
}

absl::Status Client::Watch(absl::string_view prefix, const std::vector<uint64_t>& after_sequences,
                           const std::function<bool(const Event&)>& on_event) {
  return impl_->Watch(prefix, after_sequences, on_event);
}

void Client::GetAsync(absl::string_view key, std::function<void(absl::StatusOr<Value>)> done) {
  impl_->RouteFor(key)->CallAsync<Value>(absl::StrCat("get ", Quoted(key)),
                                         GetBuilder(key, Consistency::kDefault),
                          &ToValue, std::move(done));
}

void Client::PutAsync(absl::string_view key, absl::string_view value, const PutOptions& options,
                      std::function<void(absl::StatusOr<WriteResult>)> done) {
  impl_->RouteFor(key)->CallAsync<WriteResult>(absl::StrCat("put ", Quoted(key)),
                                               PutBuilder(key, value, options),
                                &ToWriteResult, std::move(done));
}

void Client::DeleteAsync(absl::string_view key, const DeleteOptions& options,
                         std::function<void(absl::StatusOr<WriteResult>)> done) {
  impl_->RouteFor(key)->CallAsync<WriteResult>(absl::StrCat("delete ", Quoted(key)),
                                               DeleteBuilder(key, options),
                                &ToWriteResult, std::move(done));
}

std::string Client::connected_node() const { return impl_->connected_node(); }

}  // namespace logkv
