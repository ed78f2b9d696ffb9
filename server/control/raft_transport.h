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
// Thread-safety: like everything of libraft's, used on its loop thread only.
#ifndef LOGKV_SERVER_CONTROL_RAFT_TRANSPORT_H_
#define LOGKV_SERVER_CONTROL_RAFT_TRANSPORT_H_

extern "C" {
#include <raft.h>
#include <raft/uv.h>
}

#include <cstdint>
#include <set>
#include <string>

#include "absl/strings/string_view.h"

namespace logkv::server::control {

struct TransportOptions {
  std::string cluster_secret;         // shared by every member; must not be empty
  uint64_t handshake_deadline_ms = 5000;
};

class AuthenticatedTransport {
 public:
  // loop: the loop libraft runs on. Pass transport() to raft_uv_init; libraft
  // closes it (through raft_uv's close), after which this object may be
  // destroyed.
  AuthenticatedTransport(uv_loop_t* loop, TransportOptions options);
  AuthenticatedTransport(const AuthenticatedTransport&) = delete;
  AuthenticatedTransport& operator=(const AuthenticatedTransport&) = delete;

  struct raft_uv_transport* transport() { return &transport_; }

  // Handshakes that ended with a stream handed to libraft, and ones refused
  // (a wrong proof, a malformed hello, a peer that closed or was too slow).
  uint64_t accepted() const { return accepted_; }
  uint64_t connected() const { return connected_; }
  uint64_t refused() const { return refused_; }

  struct Handshake;  // one connection being authenticated (raft_transport.cc)

 private:
  static int Init(struct raft_uv_transport* t, raft_id id, const char* address);
  static int Listen(struct raft_uv_transport* t, raft_uv_accept_cb cb);
  static int Connect(struct raft_uv_transport* t, struct raft_uv_connect* req, raft_id id,
                     const char* address, raft_uv_connect_cb cb);
  static void Close(struct raft_uv_transport* t, raft_uv_transport_close_cb cb);

  friend struct HandshakeOps;
  void MaybeFinishClose();

  uv_loop_t* loop_;
  TransportOptions options_;
  struct raft_uv_transport transport_ {};
  raft_id id_ = 0;
  std::string address_;
  uv_tcp_t* listener_ = nullptr;  // from new; deleted in its close callback
  raft_uv_accept_cb accept_cb_ = nullptr;
  std::set<Handshake*> handshakes_;
  bool closing_ = false;
  raft_uv_transport_close_cb close_cb_ = nullptr;
  uint64_t accepted_ = 0;
  uint64_t connected_ = 0;
  uint64_t refused_ = 0;
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_RAFT_TRANSPORT_H_
