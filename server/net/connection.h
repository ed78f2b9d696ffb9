// One client connection of a net::Loop, in two parts: the transport's state
// (the socket, the answers not yet written, reading on or off, the
// lifecycle), which the Loop alone manages, and the ProtocolSession made by
// the listener that accepted it, which holds the state of that connection's
// protocol only (net/binary_session.h, net/http_session.h).
//
// The Loop calls the session when bytes arrive, when backpressure lets held
// input through, on its idle timer, on engine events and at close; the
// session parses, answers into Connection::out and asks the Loop to send,
// stop reading or close. Per read that is a few virtual calls, never one per
// byte; per request the session calls nothing virtual of the Loop.
//
// Thread-safety: loop thread only.
#ifndef LOGKV_SERVER_NET_CONNECTION_H_
#define LOGKV_SERVER_NET_CONNECTION_H_

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace logkv::server::net {

class Loop;
class ProtocolSession;
class TlsStream;

struct Connection {
  uv_tcp_t handle;  // handle.data points back here
  Loop* loop = nullptr;
  uint64_t id = 0;
  bool http = false;  // accepted by an HTTP listener (session is an HttpSession)
  std::unique_ptr<ProtocolSession> session;  // set once accepted
  std::string out;             // answers not yet handed to libuv (plaintext)
  // Accepted by a TLS listener: the connection's TLS, which turns out into
  // wire_out (ciphertext) as it is flushed. Null for plaintext, whose
  // answers go from out to the socket as they are.
  std::unique_ptr<TlsStream> tls;
  std::string wire_out;
  size_t in_flight_bytes = 0;  // handed to uv_write, not yet written
  bool reading = false;
  bool closing = false;        // close once everything owed is written
  bool eof = false;            // the client half-closed: nothing more will arrive
  bool closed = false;         // uv_close called
  int pending = 0;             // deferred answers still to come
  bool answered = false;       // in Loop's list of connections to send answers to
  int64_t last_read_ms = 0;    // loop time of the last bytes received
  int64_t opened_ms = 0;       // loop time of the accept
  // TLS: loop time since which ciphertext of a record has waited for the
  // rest of the record (-1: none waits). A TLS handshake or record must
  // arrive whole within the session's timeout, as a frame or a request
  // must: bytes that trickle in keep the connection from being idle, not
  // from timing out.
  int64_t tls_partial_since_ms = -1;
  // Of ServerCounters::buffered_request_bytes, what the request now arriving holds.
  size_t reserved_bytes = 0;

  ~Connection();  // net/loop.cc, where TlsStream is complete

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle); }
  size_t owed_bytes() const { return out.size() + wire_out.size() + in_flight_bytes; }
  bool unsent() const { return !out.empty() || !wire_out.empty(); }
};

// What one wake-up for engine events (Server::NotifyEvents) shares between
// the connections subscribed to them.
struct EventsPass {
  std::vector<uint64_t> last_sequences;  // per shard, read once per pass
  bool more = false;  // a subscriber left events unread: wake again
};

class ProtocolSession {
 public:
  // A request cannot be complete with fewer buffered bytes than
  // min_request_bytes (at least 1; the backpressure loop stops short of it).
  ProtocolSession(Connection& connection, size_t min_request_bytes)
      : connection_(connection), min_request_bytes_(min_request_bytes) {}
  ProtocolSession(const ProtocolSession&) = delete;
  ProtocolSession& operator=(const ProtocolSession&) = delete;
  virtual ~ProtocolSession() = default;

  // Where the next read goes: at least min_bytes, *available in all.
  virtual char* ReadSpace(size_t min_bytes, size_t* available) = 0;
  // bytes arrived in the space ReadSpace gave: take them, then ProcessInput.
  virtual void Received(size_t bytes) = 0;
  // Answers the complete requests buffered, into connection().out, for as
  // long as the connection is open and its unsent answers stay within
  // ServerConfig::max_output_bytes (the rest waits for ApplyBackpressure).
  virtual void ProcessInput() = 0;
  // Bytes received and not yet taken as requests.
  virtual size_t buffered_input() const = 0;
  size_t min_request_bytes() const { return min_request_bytes_; }
  // Whether reading may resume once the output drained (false: the session
  // holds itself back, or will read nothing more).
  virtual bool WantsInput() const { return true; }
  // Whether the session's own limit, not the output's, holds back complete
  // requests in the input (after a half-close they are still answered).
  virtual bool HoldsBackInput() const { return false; }

  // The idle timer's verdict on an open connection. kTimedOut: a request
  // began and did not arrive in time, Expire answers it (the connection
  // then closes once that is written). kIdle: close it now.
  enum class Expiry { kNone, kTimedOut, kIdle };
  virtual Expiry CheckExpiry(int64_t now_ms) const = 0;
  virtual void Expire() = 0;

  // Whether the connection's credentials still hold; when not, the session
  // has ended: its answers say why and the connection is closing.
  virtual bool CredentialsHold() { return true; }
  // Engine events were appended (only for connections the session
  // subscribed with Loop::Subscribe); false as CredentialsHold.
  virtual bool OnEvents(EventsPass& /*pass*/) { return true; }
  // The connection closes: give back what the session holds beyond it.
  virtual void OnClose() {}

 protected:
  Connection& connection() { return connection_; }
  const Connection& connection() const { return connection_; }

 private:
  Connection& connection_;
  const size_t min_request_bytes_;
};

}  // namespace logkv::server::net

#endif  // LOGKV_SERVER_NET_CONNECTION_H_
