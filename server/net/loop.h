// The network layer's transport: one libuv loop on its own thread, with its
// listeners (SO_REUSEPORT, so every loop listens on the same ports and the
// kernel spreads connections over them) and the connections they accepted.
// It owns what is the same whatever a connection speaks: accepting, reading
// into the session's buffer, writing answers (at once when the socket takes
// them, else through libuv), backpressure on both, the server-wide budget of
// bytes for requests still arriving, the idle timer, wake-ups from other
// threads and the shutdown with its grace period. What the bytes mean is the
// business of each connection's ProtocolSession: the listener that accepted
// it decides which (net/binary_session.h, net/http_session.h).
//
// Thread-safety: Post and WakeSubscribers from any thread; Init before Run
// on the owner's thread; everything else on the loop's thread (libuv's
// rule), which crosses threads only through uv_async_send plus a
// mutex-guarded queue.
#ifndef LOGKV_SERVER_NET_LOOP_H_
#define LOGKV_SERVER_NET_LOOP_H_

#include <netinet/in.h>
#include <uv.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/net/connection.h"
#include "server/server.h"
#include "server/service.h"

namespace logkv::server::net {

class HttpAnswers;
class WatchQuota;

class Loop {
 public:
  // config, service and watch_quota must outlive the Loop.
  Loop(const ServerConfig& config, Service* service, WatchQuota* watch_quota, int index);
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  ~Loop();

  // On the owner's thread, before Run: binds the binary protocol's listener
  // at address and one HTTP listener at each of http_addresses, listening:
  // the ports are taken, and the kernel queues the connections that arrive
  // (completing their handshakes) until Listen.
  absl::Status Init(const sockaddr_in& address, const std::vector<sockaddr_in>& http_addresses);
  // Accepts connections on every listener, the queued ones first: on the
  // owner's thread before Run, or on the loop's thread (a posted task)
  // before BeginShutdown.
  absl::Status Listen();
  void Run();
  // The port a listener is bound to: -1 the binary one, else that HTTP one.
  int BoundPort(int http_index = -1);

  // Any thread: run task on this loop's thread. (Move-only: a task that
  // holds one pointer needs no allocation.)
  using Task = absl::AnyInvocable<void(Loop&)>;
  void Post(Task task);
  // Any thread: engine events were appended; wake the subscribers.
  void WakeSubscribers() {
    if (subscriber_count_.load(std::memory_order_relaxed) == 0) return;
    absl::MutexLock lock(&tasks_mu_);
    if (!handles_closing_) uv_async_send(&events_async_);
  }
  // Stops accepting, answers what was read, closes (bounded by shutdown_grace).
  void BeginShutdown();
  // Every connection's session checks its credentials now.
  void RecheckSessions();

  // ---- For the protocol sessions (loop thread) ----

  const ServerConfig& config() const { return config_; }
  Service* service() const { return service_; }
  ServerCounters* counters() const { return service_->counters(); }
  int64_t now_ms() const { return static_cast<int64_t>(uv_now(&loop_)); }
  bool stopping() const { return stopping_; }
  bool on_loop_thread() const { return std::this_thread::get_id() == thread_id_; }
  // The open connection with that id, null once it is gone.
  Connection* Find(uint64_t connection_id) {
    auto it = connections_.find(connection_id);
    return it == connections_.end() ? nullptr : it->second;
  }

  void StopReading(Connection& c);
  // Hands c's output to the socket (what it does not take, to libuv).
  void Flush(Connection& c);
  // Stops reading c while its unsent answers pass max_output_bytes; once they
  // drain below half, answers the requests held back and reads again.
  void ApplyBackpressure(Connection& c);
  // Closes c if it is closing and everything owed to it is written.
  void FinishIfDone(Connection& c);
  // Answers were appended to c's output outside a read (a deferred answer):
  // send them, then as after a read. Within the tasks of one wake-up they go
  // once those tasks have run: the answers a batch of replies completed
  // leave in one write per connection, not one each.
  void Answered(Connection& c);
  // Reserves server-wide buffer space so that c's request now arriving
  // holds total_bytes; false when that would pass max_buffered_bytes.
  bool ReserveInput(Connection& c, size_t total_bytes);
  void ReleaseInput(Connection& c);

  // c's session is woken (ProtocolSession::OnEvents) on engine events until
  // Unsubscribe or its close; a pass is scheduled at once, to catch up.
  void Subscribe(Connection& c);
  void Unsubscribe(Connection& c);

 private:
  struct Listener {
    uv_tcp_t handle;  // handle.data points here
    Loop* loop;
    bool http;
  };
  // Ciphertext is read into one buffer per loop: each read is handed to its
  // connection's TlsStream before the next one.
  static constexpr size_t kTlsReadBytes = 64u << 10;
  static Loop& Of(uv_handle_t* handle) { return *static_cast<Loop*>(handle->data); }
  static Connection& ConnectionOf(uv_handle_t* handle) {
    return *static_cast<Connection*>(handle->data);
  }

  void OnConnection(Listener& listener, int status);
  void StartReading(Connection& c);
  void OnRead(Connection& c, ssize_t nread);
  // A half-close: what was received is still answered, then c closes.
  void OnEof(Connection& c);
  // TLS: nread bytes of ciphertext are in tls_read_buffer_.
  void OnTlsRead(Connection& c, size_t nread);
  // TLS: the handshake or a record failed; the alert for the peer goes out,
  // then c closes.
  void FailTls(Connection& c);
  // TLS: a client began in plaintext; it is told, in plaintext, and closed.
  void RefusePlaintext(Connection& c);
  // TLS: encrypts c.out into c.wire_out, with any handshake message or alert.
  void SealOutput(Connection& c);
  void OnWritten(Connection& c, int status);
  // After a half-close: closing once no complete request waits in the input
  // any more (only the output limits can hold one back).
  void CloseAfterEofIfDone(Connection& c);
  void Close(Connection& c);
  void CloseIdleConnections();
  void PumpEvents();
  void DrainTasks();
  // Answered's work: c's output to the socket, then as after a read.
  void SendAnswered(Connection& c);
  // SendAnswered for every connection in answered_ (each once).
  void SendAllAnswered();
  // A write to a connection's socket took bytes, or went to libuv whole
  // (ServerCounters::socket_writes).
  void CountWrite() { counters()->socket_writes.fetch_add(1, std::memory_order_relaxed); }
  void MaybeFinishShutdown();

  const ServerConfig& config_;
  Service* const service_;
  WatchQuota* const watch_quota_;
  const int index_;
  uv_loop_t loop_;
  // The binary protocol's first, then the HTTP ones in order.
  std::vector<std::unique_ptr<Listener>> listeners_;
  // Where the HTTP connections' Responders answer; null without HTTP.
  std::unique_ptr<HttpAnswers> http_answers_;
  std::unique_ptr<char[]> tls_read_buffer_;  // with TLS on: kTlsReadBytes
  std::thread::id thread_id_;
  uv_async_t tasks_async_;
  uv_async_t events_async_;
  uv_timer_t shutdown_timer_;
  uv_timer_t idle_timer_;  // closes idle and slow connections
  // Run ServerConfig::loop_turn before the loop blocks and after I/O.
  uv_prepare_t turn_prepare_;
  uv_check_t turn_check_;
  // Sends the answers of the turn's reads once every read callback of the
  // turn has run (SendAllAnswered), as redis-server writes its replies
  // before it sleeps: the load generator then finds many connections'
  // answers at one wake-up, instead of one connection's at each.
  uv_check_t answers_check_;

  absl::Mutex tasks_mu_;
  std::vector<Task> tasks_ ABSL_GUARDED_BY(tasks_mu_);
  bool handles_closing_ ABSL_GUARDED_BY(tasks_mu_) = false;

  // Loop-thread state.
  absl::flat_hash_map<uint64_t, Connection*> connections_;
  bool draining_tasks_ = false;
  // Ids of the connections whose answers wait for the end of this turn's
  // reads (answers_check_) or of the tasks now running (DrainTasks), each once.
  std::vector<uint64_t> answered_;
  uint64_t next_connection_id_ = 1;
  bool stopping_ = false;
  bool handles_closed_ = false;
  // Connections woken on engine events (those with watches).
  absl::flat_hash_set<Connection*> subscribers_;
  std::atomic<int> subscriber_count_{0};
};

}  // namespace logkv::server::net

#endif  // LOGKV_SERVER_NET_LOOP_H_
