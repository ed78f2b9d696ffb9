// Node-to-node requests over the binary protocol. One libuv loop on its own
// thread owns a pipelined connection to each peer; a server loop may own
// connections of its own (AttachLoopOnThisThread), so that what it sends,
// and the answers, never leave its thread. Every connection starts with
// ClusterHello (carrying --cluster-secret). Requests may be sent from any
// thread; answers (or failures) come back through callbacks.
//
// Thread-safety: Send, SetDropped, ReloadTls and Stop may be called from any
// thread.
// Callbacks run on the thread of the loop that sent the request: the
// transport's own, or for SendFromThisLoop an attached server loop's. They
// must not block (hand work elsewhere, or finish quickly).
#ifndef LOGKV_SERVER_CLUSTER_PEER_TRANSPORT_H_
#define LOGKV_SERVER_CLUSTER_PEER_TRANSPORT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "protocol/frame.h"

struct uv_loop_s;  // libuv's uv_loop_t

namespace logkv::server::cluster {

struct PeerTransportOptions {
  std::string node_id;         // sent in ClusterHello
  // Proves this node to its peers, and them to it, in the ClusterHello
  // handshake (never sent; "" = none).
  std::string cluster_secret;
  bool auth_on = false;        // this node's --auth, checked by both ends
  // This node's cluster id, sent in the ClusterHello ("" = none yet); unset: none.
  std::function<std::string()> cluster_id;
  absl::Duration connect_timeout = absl::Seconds(1);
  // Bytes queued for one peer before Send fails at once with Unavailable
  // (a dead peer cannot make us buffer without end).
  size_t max_queued_bytes_per_peer = 64u << 20;
  uint32_t max_frame_bytes = 64u << 20;
  // Test builds only (LOGKV_FAULT_INJECTION): honour SetDropped.
  bool allow_fault_injection = false;
  // TLS to the peers' binary ports (they run with --tls-cert): the peer's
  // certificate must chain to tls_ca_file and name the host of its address;
  // tls_cert_file and tls_key_file are this node's (--peer-tls-cert,
  // --peer-tls-key), shown to peers that ask for one; tls_crl_file the
  // CRLs of the CA (--peer-tls-crl), "" for none. A file that does not read
  // fails every connection with the reason (until ReloadTls reads it).
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_crl_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // The TLS 1.3 suites offered (--tls-ciphersuites); "" OpenSSL's default.
  std::string tls_ciphersuites;
};

class PeerTransport {
 public:
  explicit PeerTransport(const PeerTransportOptions& options);
  PeerTransport(const PeerTransport&) = delete;
  PeerTransport& operator=(const PeerTransport&) = delete;
  // Stops the thread; callbacks still pending get Unavailable first.
  ~PeerTransport();

  absl::Status Start();
  void Stop();

  // The answer to a request: the verified Response frame (length prefix
  // included; read it with flatbuffers::GetSizePrefixedRoot<Response>), or
  // Unavailable (cannot connect, connection lost, dropped by fault
  // injection), DeadlineExceeded (no answer within timeout).
  using Callback = std::function<void(absl::StatusOr<std::string> response_frame)>;

  // Sends a finished size-prefixed Request frame (its request_id is
  // rewritten) to the peer at address (host:port). done is called exactly
  // once. REQUIRES: the frame's request_id field is present (a nonzero id,
  // or a builder with ForceDefaults(true)): FinishPeerRequest builds such
  // frames. A frame without it fails with InvalidArgument.
  void Send(const std::string& address, std::string request_frame, absl::Duration timeout,
            Callback done);
  // Send, but on a server loop attached to this transport
  // (AttachLoopOnThisThread) through the loop's own connections: done then
  // runs on this thread, so the caller must never block waiting for it.
  // Elsewhere the same as Send.
  void SendFromThisLoop(const std::string& address, std::string request_frame,
                        absl::Duration timeout, Callback done);

  // Runs task once on the transport's thread after delay, or at its stop
  // when it stops first (sends made by the task then fail with
  // Unavailable). False, and task is not run, when the transport is not
  // running (not started, stopping or stopped).
  bool RunAfter(absl::Duration delay, std::function<void()> task);

  // Batching for a thread that runs an event loop of its own (a server
  // loop): once it holds, Send from that thread only queues, and
  // FlushHeldSends hands everything queued to the transport's thread at once
  // (one wake-up per loop turn instead of one per request). Such a thread
  // must flush before it blocks; StopHoldingOnThisThread flushes and returns
  // the thread to immediate sends.
  void HoldSendsOnThisThread();
  // Sends what this thread holds (above) or its lane queued (below).
  // Returns whether a callback ran meanwhile (a request that failed at
  // once): it may have held more requests elsewhere (a ReplicaBatcher), so
  // the loop flushes those and calls this again.
  bool FlushHeldSends();
  void StopHoldingOnThisThread();

  // A server loop's own connections to the peers (its lane): from now on
  // SendFromThisLoop on this thread (the one running loop) queues the
  // request (Send still goes through the transport's thread), and
  // FlushHeldSends, at the end of each loop turn, writes the turn's
  // requests on this loop's connections; their answers and timeouts are
  // handled, and callbacks run, on this thread. No other thread is woken
  // for a request. The loop must call FlushHeldSends before
  // it blocks, and DetachLoopOnThisThread while it still runs, before it
  // ends (the lane's handles keep it running): requests queued then go
  // through the transport's thread, those in flight fail with Unavailable.
  // A stop of the transport fails what the lane holds, on its thread.
  // REQUIRES: every loop detached before the transport is destroyed.
  void AttachLoopOnThisThread(uv_loop_s* loop);
  void DetachLoopOnThisThread();

  // Hooks run on the transport's own thread: loop_started once before its
  // loop runs, loop_turn before the loop waits for I/O and after it handled
  // what came (callbacks included), loop_ending once after the loop ended.
  // Callbacks that send to peers can so batch what they send per turn
  // (ReplicaBatcher). REQUIRES: before Start.
  struct LoopHooks {
    std::function<void()> loop_started;
    std::function<void()> loop_turn;
    std::function<void()> loop_ending;
  };
  void SetLoopHooks(LoopHooks hooks);

  // The node id sent in ClusterHello, when it was not known when the
  // transport was made (a node listening on port 0 learns it once the port
  // is bound). REQUIRES: before Start.
  void SetNodeId(const std::string& node_id);

  // Reads the TLS files of the options again (SIGHUP): connections made
  // from then on use them, those open keep theirs (nothing is dropped). On
  // a failure the files in use are kept and the reason returned. OK and
  // nothing done without TLS. Any thread.
  absl::Status ReloadTls();

  // The epoch of this node's committed configuration, written into every
  // request sent from now on (Request.epoch); peers fence data operations
  // by it. 0 = none.
  // Only ever raises it: callers that learn of a configuration at different
  // moments (the control plane's hook, the placement) may race.
  void SetEpoch(uint64_t epoch) {
    uint64_t held = epoch_.load(std::memory_order_acquire);
    while (held < epoch && !epoch_.compare_exchange_weak(held, epoch, std::memory_order_acq_rel)) {
    }
  }
  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }

  // Fault injection (tests): messages to these addresses are dropped (done
  // gets Unavailable at once), as if the network between us were cut.
  // Ignored unless options.allow_fault_injection.
  void SetDropped(std::vector<std::string> addresses);
  bool IsDropped(const std::string& address) const;

  // Requests sent and failed since start (metrics, tests).
  uint64_t requests_sent() const;
  uint64_t requests_failed() const;

 private:
  class Impl;
  std::atomic<uint64_t> epoch_{0};  // before impl_, which reads it
  std::unique_ptr<Impl> impl_;
};

// Sends a finished Request frame to a peer (an address, or whatever names
// the target for the function); done is called exactly once (the
// PeerTransport::Send contract). Fakes stand in for the transport in tests.
using PeerSendFunction = std::function<void(const std::string& address, std::string request_frame,
                                            absl::Duration timeout, PeerTransport::Callback done)>;

// The PeerTransport as a PeerSendFunction. transport must outlive its users.
inline PeerSendFunction SendThrough(PeerTransport* transport) {
  return [transport](const std::string& address, std::string request_frame, absl::Duration timeout,
                     PeerTransport::Callback done) {
    transport->Send(address, std::move(request_frame), timeout, std::move(done));
  };
}

// The same, with PeerTransport::SendFromThisLoop: for senders that never
// block for an answer (the coordinator), whose requests made on a server
// loop so stay on that loop.
inline PeerSendFunction SendFromLoops(PeerTransport* transport) {
  return [transport](const std::string& address, std::string request_frame, absl::Duration timeout,
                     PeerTransport::Callback done) {
    transport->SendFromThisLoop(address, std::move(request_frame), timeout, std::move(done));
  };
}

// Sends request_frame through send and blocks until the answer: the
// response frame, or why there is none. A sender that never calls back is
// given up on a few seconds after timeout (DeadlineExceeded). Not for I/O
// loops: for background threads (anti-entropy, the purger, hinted handoff).
absl::StatusOr<std::string> SendAndWait(const PeerSendFunction& send, const std::string& address,
                                        std::string request_frame, absl::Duration timeout);

// A request's epoch (Request.epoch) that PeerTransport fills in with the
// sender's when it sends the request.
inline constexpr uint64_t kSenderEpoch = ~uint64_t{0};

// Finishes a size-prefixed Request frame around an operation built in
// builder, with a request_id field Send can rewrite; returns its bytes.
// epoch: the epoch of the configuration the operation was placed under, for
// an operation that must not reach replicas holding a newer one (a strong
// operation: replicas refuse older epochs); kSenderEpoch: the sender's
// epoch when it sends.
std::string FinishPeerRequest(flatbuffers::FlatBufferBuilder* builder, protocol::Operation type,
                              flatbuffers::Offset<void> operation,
                              uint64_t epoch = kSenderEpoch);

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_PEER_TRANSPORT_H_
