// logkvd's network layer, for the binary protocol and the HTTP adapter: one
// libuv loop per thread, each with its own SO_REUSEPORT listeners, so the
// kernel spreads connections over the loops and no lock is shared between
// them on the request path. The Server binds and runs the loops; each loop
// (net/loop.h) is the transport, and each connection it accepts speaks one
// protocol through its session: net/binary_session.h (frames, Hello and
// sessions, watches, cluster peers) or net/http_session.h (parsing,
// pipelining, routing). What a request may do is the Service's to decide.
//
// Thread-safety: Start, RequestShutdown and Wait are called by the owner
// (main); NotifyEvents and RecheckSessions from any thread. Everything else
// happens on the loop threads, each of which touches only its own loop
// (libuv's rule), and crosses threads only through uv_async_send plus a
// mutex-guarded queue.
#ifndef LOGKV_SERVER_SERVER_H_
#define LOGKV_SERVER_SERVER_H_

#include <netinet/in.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/core/peer_handler.h"
#include "server/core/request_context.h"
#include "server/http/http_parser.h"
#include "server/http/router.h"
#include "server/service.h"

struct uv_loop_s;  // libuv's uv_loop_t

namespace logkv::server {

namespace net {
class Loop;
class TlsContext;
class WatchQuota;
}  // namespace net

struct HttpAddress {
  std::string host;
  int port = 0;  // 0 = any free port (see Server::http_ports)
};

// The longest subject (key, path) given to the observers, in bytes.
inline constexpr size_t kObservedSubjectBytes = 128;

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 7070;  // 0 = any free port (see Server::port)
  int threads = 1;

  // The HTTP adapter: every address is served by every loop. router must
  // outlive the Server; no addresses, no HTTP.
  std::vector<HttpAddress> http_addresses;
  const http::Router* router = nullptr;
  http::HttpLimits http_limits;
  // Requests read ahead of their answers on one HTTP connection (pipelining).
  size_t max_pipelined_requests = 256;
  // An HTTP connection with nothing owed that reads nothing for this long is
  // closed; so is one whose request takes longer than this to arrive
  // (a client trickling bytes cannot hold a connection for ever).
  absl::Duration http_idle_timeout = absl::Seconds(60);
  // Called on the loop thread for every HTTP answer sent (metrics, the
  // slow-request log). subject: the request's path (without the query),
  // when observe_subjects.
  std::function<void(const http::Route* route, int status, int64_t duration_ns,
                     absl::string_view subject)>
      http_observer;
  // Called on the loop thread for every binary-protocol request answered
  // (metrics, the slow-request log): its operation, the answer's status and
  // the time from decoding the request to the answer. A Watch counts once,
  // when acknowledged; the events it streams later are not requests.
  // subject, when observe_subjects: the key of a Get, Put, Delete or
  // GetVersion, the first key of a Batch, the prefix of a Scan or Watch;
  // empty for other operations.
  std::function<void(protocol::Operation operation, absl::StatusCode status, int64_t duration_ns,
                     absl::string_view subject)>
      protocol_observer;
  // Whether the observers are given subjects (cut to kObservedSubjectBytes).
  // An answer given later (a replicated write, a fsync wait) then keeps a
  // copy of its subject until it is observed: off unless wanted.
  bool observe_subjects = false;

  // With auth on: maps the binary protocol's Hello auth_token (an API key) to
  // the caller's session; until a Hello succeeds only Hello and Ping are
  // served, and a failed Hello ends an earlier one's authentication. Null:
  // auth is off and every connection is global.
  std::function<absl::StatusOr<Session>(absl::string_view token)> authenticate;
  // With authenticate: whether a session's credentials still hold (a key
  // revoked or expired since its Hello does not). Asked before each request
  // of an authenticated connection, before its watches are sent events, on
  // every idle-timer pass and after RecheckSessions; it may update the
  // session's opaque fields. A failure ends the session: the request and
  // every watch of the connection are answered with it, and the connection
  // closes. Runs on the loops for every request: must be cheap (one atomic
  // load, AuthStore::RecheckApiKey). Null: sessions last as long as their connection.
  std::function<absl::Status(Session* session)> check_session;
  // With authenticate: asked before each request of an authenticated
  // connection but Hello, Ping and Unwatch (the per-user rate limit). A
  // failure (ResourceExhausted, with protocol::RetryAfterMs) is the
  // request's answer; the connection goes on. Null: no limit.
  std::function<absl::Status(const Session& session)> admit_request;
  // With authenticate set: the largest frame a connection may send before a
  // Hello with an API key succeeds (or a peer's ClusterHello): a client
  // nobody knows cannot make the server hold max_frame_bytes for it. Larger
  // frames are answered ResourceExhausted and the connection is closed.
  uint32_t max_unauthenticated_frame_bytes = 64u << 10;
  // A binary connection whose frame takes longer than this to arrive is
  // closed (DeadlineExceeded); so is one that sends nothing for this long
  // while nothing is owed to it and it has no watch. Peers are never idle-closed.
  absl::Duration binary_idle_timeout = absl::Seconds(60);
  // Bytes all connections together may hold for requests still arriving:
  // incomplete frames and HTTP bodies larger than kUnreservedRequestBytes
  // reserve their announced size when they begin. One that would pass this
  // is refused (ResourceExhausted; HTTP 503 with Retry-After) and its
  // connection closed, so requests already admitted can finish. 0: no limit
  // (still counted, in ServerCounters::buffered_request_bytes).
  size_t max_buffered_bytes = 256u << 20;
  // Requests a browser can be made to send by a page of another site
  // (docs/security.md, "Browsers"). An HTTP request whose Origin header
  // names another origin than its Host is refused (403) unless its method
  // is GET, HEAD or OPTIONS, unless that origin's host is one of
  // http_allowed_hosts: another site's form or script cannot change
  // anything here. With http_check_host, a request whose Host is neither an
  // address, "localhost" nor one of http_allowed_hosts (lower case, no
  // port) is refused too (403): a site whose name was made to point at this
  // machine (DNS rebinding) cannot read through the visitor's browser what
  // this node serves without credentials.
  bool http_check_host = false;
  std::vector<std::string> http_allowed_hosts;
  // Names the node goes by (its --http, --advertise and --http_advertise
  // hosts, lower case): Host may give them too. Their other ports are other
  // origins, so unlike http_allowed_hosts they do not admit an Origin.
  std::vector<std::string> http_own_hosts;
  // A connection whose unsent answers pass this stops being read until they
  // drain below half of it: a client that does not read cannot grow our memory.
  size_t max_output_bytes = 8u << 20;
  // Bytes written per loop turn per connection before yielding to others.
  size_t read_chunk_bytes = 64u << 10;
  // Watches one connection, and one user over all connections (auth on),
  // may have open; more are answered ResourceExhausted. 0: no limit.
  size_t max_watches_per_connection = 1024;
  size_t max_watches_per_user = 10'000;
  // Events per shard read for a watcher per wake-up, and per frame sent.
  uint32_t watch_batch_events = 512;
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Cluster-internal operations: a connection becomes a peer connection with
  // a ClusterHello the handler accepts; only then are Gossip, Replicate, ...
  // accepted on it (PermissionDenied otherwise), and it needs no API key.
  // Null: this node answers ClusterHello with PermissionDenied. Must outlive
  // the Server.
  PeerHandler* peer_handler = nullptr;
  // TLS on every listener, the binary one and the HTTP ones (net/tls.h):
  // a client that does not begin with a TLS handshake is answered in
  // plaintext that the port needs TLS, and closed. Null: plaintext. Must
  // outlive the Server.
  const net::TlsContext* tls = nullptr;
  // Hooks run on every loop's thread: loop_started once before the loop
  // runs (with the loop); loop_turn on every turn, before the loop waits
  // for I/O and after it handled what came; loop_ending when the loop
  // closes its handles (handles the hooks opened on the loop must be closed
  // then). logkvd uses them to send a turn's peer requests at once, on
  // connections of the loop's own (PeerTransport::AttachLoopOnThisThread).
  // Each may be empty.
  std::function<void(uv_loop_s* loop)> loop_started;
  // False: Start binds the ports and listens (and runs the loops), but the
  // connections wait in the kernel's queue, unread, until StartAccepting: a
  // node that cannot serve yet holds its clients' first requests instead of
  // refusing them.
  bool accept_at_start = true;
  std::function<void()> loop_turn;
  std::function<void()> loop_ending;
};

// Frames and bodies up to this size are not counted against
// max_buffered_bytes: each connection holds at most about this much (plus one
// read) for an unannounced or small request.
inline constexpr size_t kUnreservedRequestBytes = 64u << 10;

class Server {
 public:
  // service must outlive the Server.
  Server(Service* service, const ServerConfig& config);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  // Binds every loop's listener and starts the loop threads. Fails with a
  // clear message when the port is taken or the address cannot be bound.
  absl::Status Start();
  // With accept_at_start false: every loop accepts connections from now on.
  // Returns once they all do (or with the first failure). Any thread but a
  // loop's; after Start, before RequestShutdown.
  absl::Status StartAccepting();
  int port() const { return port_; }
  // The bound port of each of config.http_addresses, in order.
  const std::vector<int>& http_ports() const { return http_ports_; }

  // Stops accepting, finishes requests in flight (bounded by
  // shutdown_grace), closes connections; returns at once.
  void RequestShutdown();
  // Returns when every loop thread has finished.
  void Wait();

  // New events were appended to the engine: wake the loops that have watchers.
  void NotifyEvents();
  // Credentials were revoked: every loop rechecks its sessions now (not at
  // their next request), so that watches of a revoked key end at once. Any thread.
  void RecheckSessions();
  // Whether every loop ran a task posted to it within timeout: no when a
  // loop is stuck in a callback or its thread has ended. Any thread but a
  // loop's (logkvd's systemd watchdog asks).
  bool LoopsRespond(absl::Duration timeout);

 private:
  // Runs task on every loop's thread; true when each ran it within timeout
  // (it may still run later). Any thread but a loop's.
  bool RunOnEveryLoop(std::function<void(net::Loop&)> task, absl::Duration timeout);
  // Takes the port's lock (no other logkvd listens on it, or starts to)
  // and checks that no other program does.
  absl::Status ClaimPort(const sockaddr_in& address);

  Service* const service_;
  const ServerConfig config_;
  int port_ = 0;
  std::vector<int> http_ports_;
  std::atomic<bool> shutdown_requested_{false};
  // Shared by every loop; declared first so that it outlives them.
  const std::unique_ptr<net::WatchQuota> watch_quota_;
  std::vector<std::unique_ptr<net::Loop>> loops_;
  std::vector<std::thread> threads_;
  // The locks of the fixed ports this server listens on (LockPort in
  // server.cc), held for its life.
  std::vector<int> port_locks_;
};

}  // namespace logkv::server

#endif  // LOGKV_SERVER_SERVER_H_
