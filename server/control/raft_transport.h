// A raft_uv_transport (libraft's libuv backend, raft/uv.h) over TCP whose
// connections are authenticated with the cluster secret before libraft sees
// them. libraft's stock TCP transport accepts anyone who can reach the port;
// this one lets a connection through only when both ends prove they know
// the secret. Every logkvd runs its control plane on it (control_plane.h).
//
// The handshake, on a fresh TCP connection (the connector is the server
// that sends Raft messages, the listener the one that receives them):
//
//   connector -> listener  hello:     "LKVRAFT1", nonce_c (32 bytes),
//                                     connector's raft id (8, little endian),
//                                     address length (1), address
//   listener -> connector  challenge: nonce_l (32),
//                                     HMAC-SHA256(secret, "listener" | hello | nonce_l)
//   connector -> listener  proof:     HMAC-SHA256(secret, "connector" | hello | nonce_l)
//
// Each side checks the other's HMAC over both nonces (fresh per
// connection, so nothing can be replayed; labelled by side, so nothing can
// be reflected). Only then does the connector hand the stream to libraft,
// and the listener hand it over with the connector's id and address (as
// libraft's accept callback wants). Every read is of exactly the bytes the
// handshake expects, so no Raft message is read here, and nothing a peer
// sends before it is authenticated makes this side allocate more than a
// fixed 300 bytes. A handshake that does not finish within the deadline is
// dropped.
//
// With mutual TLS (TransportOptions::tls_ca_file, from --peer-tls-*), every
// connection is TLS 1.3 first, both ends showing a certificate of the
// cluster CA: the connector checks that the listener's names the host it
// dialled, the listener that the connector's names the host of the address
// its hello claims (its identity in the Raft configuration). The handshake
// above then runs inside TLS. libraft wants a uv_stream_t it reads and
// writes itself, so it is given one end of a socketpair (a uv_pipe_t) and a
// Tunnel pumps the other end through the TLS connection on the same loop:
// plaintext from libraft becomes records on the TCP connection and records
// from it become plaintext for libraft. Control-plane traffic is small, so
// the extra hop costs nothing that matters.
//
// Thread-safety: like everything of libraft's, used on its loop thread only,
// except ReloadTls (any thread).
#ifndef LOGKV_SERVER_CONTROL_RAFT_TRANSPORT_H_
#define LOGKV_SERVER_CONTROL_RAFT_TRANSPORT_H_

extern "C" {
#include <raft.h>
#include <raft/uv.h>
}

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace logkv::server::control {

struct TransportOptions {
  std::string cluster_secret;         // shared by every member; must not be empty
  uint64_t handshake_deadline_ms = 5000;
  // Mutual TLS: this node's certificate (then its chain) and key, and the
  // cluster CA both ends' certificates must chain to. Off while tls_ca_file
  // is empty; with it, cert and key are needed.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;
  // PEM CRLs of the cluster CA (--peer-tls-crl): a certificate they revoke
  // is refused, both ways. "" for none.
  std::string tls_crl_file;
  // The TLS 1.3 suites, in order (--tls-ciphersuites); "" OpenSSL's default.
  std::string tls_ciphersuites;
  // Told why a connection was refused (a failed TLS handshake, a
  // certificate that does not name the peer, a wrong proof), on the loop.
  std::function<void(const std::string& why)> on_refused;
  // This node's cluster id (control_state.h, kClusterIdBytes bytes; "" when
  // it has none yet). A connector of another cluster is refused; one
  // without an id (a node joining) is not.
  std::function<std::string()> cluster_id;
};

class AuthenticatedTransport {
 public:
  // loop: the loop libraft runs on. Pass transport() to raft_uv_init; libraft
  // closes it (through raft_uv's close), after which this object may be
  // destroyed.
  // With TLS the files are read here; a file that does not read makes Init
  // fail (with errmsg saying which).
  AuthenticatedTransport(uv_loop_t* loop, TransportOptions options);
  AuthenticatedTransport(const AuthenticatedTransport&) = delete;
  AuthenticatedTransport& operator=(const AuthenticatedTransport&) = delete;
  ~AuthenticatedTransport();

  struct raft_uv_transport* transport() { return &transport_; }

  // Handshakes that ended with a stream handed to libraft, and ones refused
  // (a wrong proof, a malformed hello, a peer that closed or was too slow).
  uint64_t accepted() const { return accepted_; }
  uint64_t connected() const { return connected_; }
  uint64_t refused() const { return refused_; }
  bool tls() const { return !options_.tls_ca_file.empty(); }
  std::string cluster_id() const { return options_.cluster_id ? options_.cluster_id() : ""; }

  // Reads the TLS files again (SIGHUP): connections made or accepted from
  // then on use them, those open keep theirs. On a failure the ones in use
  // are kept and the reason returned. OK and nothing done without TLS. Any
  // thread (the one exception to the loop-thread rule).
  absl::Status ReloadTls() ABSL_LOCKS_EXCLUDED(tls_mu_);

  struct Handshake;  // one connection being authenticated (raft_transport.cc)
  struct Tunnel;     // with TLS: one connection's pump (raft_transport.cc)
  struct TlsContexts;

 private:
  static int Init(struct raft_uv_transport* t, raft_id id, const char* address);
  static int Listen(struct raft_uv_transport* t, raft_uv_accept_cb cb);
  static int Connect(struct raft_uv_transport* t, struct raft_uv_connect* req, raft_id id,
                     const char* address, raft_uv_connect_cb cb);
  static void Close(struct raft_uv_transport* t, raft_uv_transport_close_cb cb);

  friend struct HandshakeOps;
  friend struct TunnelOps;
  void MaybeFinishClose();
  void Refused(const std::string& why);

  uv_loop_t* loop_;
  TransportOptions options_;
  struct raft_uv_transport transport_ {};
  raft_id id_ = 0;
  std::string address_;
  uv_tcp_t* listener_ = nullptr;  // from new; deleted in its close callback
  raft_uv_accept_cb accept_cb_ = nullptr;
  std::set<Handshake*> handshakes_;
  std::set<Tunnel*> tunnels_;  // open until both their handles closed
  // With TLS: the contexts new connections use, swapped by ReloadTls.
  absl::Mutex tls_mu_;
  std::shared_ptr<const TlsContexts> tls_contexts_ ABSL_GUARDED_BY(tls_mu_);
  bool closing_ = false;
  raft_uv_transport_close_cb close_cb_ = nullptr;
  uint64_t accepted_ = 0;
  uint64_t connected_ = 0;
  uint64_t refused_ = 0;
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_RAFT_TRANSPORT_H_
