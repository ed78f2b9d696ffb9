#include "server/control/raft_transport.h"

#include <arpa/inet.h>
#include <endian.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "protocol/openssl_crl.h"
#include "protocol/openssl_errors.h"
#include "protocol/tls_bio.h"
#include "server/control/control_state.h"
#include "server/sigpipe.h"

namespace logkv::server::control {

namespace {

// Version 2: the fixed part is followed by the connector's cluster id (all
// zero: it has none yet), then its address. Version 1 (older nodes) has
// no cluster id.
constexpr char kMagic[8] = {'L', 'K', 'V', 'R', 'A', 'F', 'T', '2'};
constexpr char kMagicV1[8] = {'L', 'K', 'V', 'R', 'A', 'F', 'T', '1'};
constexpr size_t kNonceBytes = 32;
constexpr size_t kMacBytes = crypto_auth_hmacsha256_BYTES;
static_assert(kMacBytes == 32);
// magic, nonce, id, address length.
constexpr size_t kHelloFixedBytes = sizeof(kMagic) + kNonceBytes + 8 + 1;
constexpr size_t kMaxHelloAddressBytes = 255;
constexpr int kListenBacklog = 128;
// A tunnel stops reading one side while more than this waits to be written
// to the other (a snapshot being sent), and reads again below a quarter.
constexpr size_t kTunnelHighWaterBytes = 1u << 20;
constexpr size_t kTunnelReadBytes = 64u << 10;

// The host of "host:port".
std::string HostOf(absl::string_view address) {
  const size_t colon = address.rfind(':');
  return std::string(colon == absl::string_view::npos ? address : address.substr(0, colon));
}

// Whether certificate names host (an IP address or a DNS name) in its
// subjectAltName.
bool CertificateNames(X509* certificate, const std::string& host) {
  if (certificate == nullptr) return false;
  return X509_check_ip_asc(certificate, host.c_str(), 0) == 1 ||
         X509_check_host(certificate, host.data(), host.size(), 0, nullptr) == 1;
}

// "host:port" with an IPv4 host.
bool ParseAddress(absl::string_view address, struct sockaddr_in* out) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return false;
  std::string host(address.substr(0, colon));
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return false;
  }
  return uv_ip4_addr(host.c_str(), port, out) == 0;
}

void Mac(const std::string& secret, absl::string_view label, const uint8_t* hello,
         size_t hello_bytes, const uint8_t* listener_nonce, uint8_t out[kMacBytes]) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, reinterpret_cast<const unsigned char*>(secret.data()),
                              secret.size());
  // The label with its terminating NUL, so no label is a prefix of input.
  crypto_auth_hmacsha256_update(&state, reinterpret_cast<const unsigned char*>(label.data()),
                                label.size());
  const unsigned char zero = 0;
  crypto_auth_hmacsha256_update(&state, &zero, 1);
  crypto_auth_hmacsha256_update(&state, hello, hello_bytes);
  crypto_auth_hmacsha256_update(&state, listener_nonce, kNonceBytes);
  crypto_auth_hmacsha256_final(&state, out);
}

}  // namespace

struct AuthenticatedTransport::Handshake {
  enum class Phase { kConnecting, kHelloFixed, kHelloAddress, kChallenge, kProof, kDone };

  AuthenticatedTransport* transport = nullptr;
  bool connector = false;
  Phase phase = Phase::kConnecting;
  // From raft_malloc: libraft frees it with raft_free once it owns it. A
  // uv_tcp_t, or with TLS a uv_pipe_t (one end of the tunnel's socketpair).
  uv_stream_t* stream = nullptr;
  // With TLS: the tunnel, while both are open (each clears the other's
  // pointer as it goes), and the certificate the peer showed (listener).
  Tunnel* tunnel = nullptr;
  X509* peer_certificate = nullptr;
  uv_timer_t timer{};
  uv_connect_t connect{};
  uv_write_t write{};
  bool handoff_after_write = false;
  // Handles open, and requests (connect, write) whose callbacks are still
  // due: the handshake is freed when this reaches 0.
  int pending = 0;
  bool failed = false;
  bool handed_off = false;

  // The connector's request, set once Connect has returned 0 (its callback
  // is then due exactly once).
  struct raft_uv_connect* req = nullptr;
  raft_uv_connect_cb connect_cb = nullptr;

  // +1: the address's NUL.
  uint8_t hello[kHelloFixedBytes + kClusterIdBytes + kMaxHelloAddressBytes + 1] = {};
  size_t hello_bytes = 0;
  size_t address_at = kHelloFixedBytes;  // where the address starts (version 2: after the id)
  uint8_t challenge[kNonceBytes + kMacBytes] = {};
  uint8_t proof[kMacBytes] = {};

  uint8_t* read_into = nullptr;
  size_t read_want = 0;
  size_t read_got = 0;
};

// The handshake's steps, as functions with access to the transport.
struct HandshakeOps {
  using Handshake = AuthenticatedTransport::Handshake;
  using Phase = Handshake::Phase;

  static uv_stream_t* Stream(Handshake* h) { return h->stream; }

  static void Release(Handshake* h) {
    if (--h->pending > 0) return;
    AuthenticatedTransport* t = h->transport;
    t->handshakes_.erase(h);
    if (h->req != nullptr && !h->handed_off) {
      h->connect_cb(h->req, nullptr, t->closing_ ? RAFT_CANCELED : RAFT_NOCONNECTION);
    }
    if (!h->handed_off) raft_free(h->stream);
    if (h->tunnel != nullptr) DetachTunnel(h);
    X509_free(h->peer_certificate);
    delete h;
    t->MaybeFinishClose();
  }

  static void OnHandleClosed(uv_handle_t* handle) { Release(static_cast<Handshake*>(handle->data)); }

  // Ends a handshake that did not make it. refused: the peer did not prove
  // the secret (or broke the protocol), as opposed to a network error or
  // the transport closing.
  static void Fail(Handshake* h, bool refused) {
    if (h->failed || h->handed_off) return;
    h->failed = true;
    if (refused) ++h->transport->refused_;
    uv_close(reinterpret_cast<uv_handle_t*>(h->stream), &OnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), &OnHandleClosed);
    // Its TLS connection goes too (a stuck TLS handshake included).
    if (h->tunnel != nullptr) CloseTunnel(h);
  }

  // Defined after TunnelOps.
  static void DetachTunnel(Handshake* h);
  static void CloseTunnel(Handshake* h);

  static void HandOff(Handshake* h) {
    AuthenticatedTransport* t = h->transport;
    if (t->closing_) {
      Fail(h, false);
      return;
    }
    h->handed_off = true;
    h->phase = Phase::kDone;
    uv_timer_stop(&h->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), &OnHandleClosed);
    --h->pending;  // the stream is libraft's now; Release will not close it
    if (h->connector) {
      ++t->connected_;
      h->connect_cb(h->req, Stream(h), 0);
    } else {
      ++t->accepted_;
      uint64_t id;
      std::memcpy(&id, h->hello + sizeof(kMagic) + kNonceBytes, sizeof(id));
      id = le64toh(id);
      const char* address = reinterpret_cast<const char*>(h->hello + h->address_at);
      t->accept_cb_(&t->transport_, id, address, Stream(h));
    }
  }

  static void OnAlloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* h = static_cast<Handshake*>(handle->data);
    // Exactly what the handshake still expects: never a byte of what
    // follows it, which is libraft's to read.
    buf->base = reinterpret_cast<char*>(h->read_into + h->read_got);
    buf->len = h->read_want - h->read_got;
  }

  static void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
    auto* h = static_cast<Handshake*>(stream->data);
    if (h->failed) return;
    if (nread == 0) return;
    if (nread < 0) {
      Fail(h, /*refused=*/true);  // closed or reset mid-handshake
      return;
    }
    h->read_got += static_cast<size_t>(nread);
    if (h->read_got < h->read_want) return;
    uv_read_stop(stream);
    OnPhaseRead(h);
  }

  static void ReadExactly(Handshake* h, uint8_t* into, size_t bytes) {
    h->read_into = into;
    h->read_want = bytes;
    h->read_got = 0;
    if (uv_read_start(Stream(h), &OnAlloc, &OnRead) != 0) Fail(h, false);
  }

  static void OnWritten(uv_write_t* req, int status) {
    auto* h = static_cast<Handshake*>(req->data);
    bool handoff = h->handoff_after_write;
    h->handoff_after_write = false;
    if (status == 0 && handoff && !h->failed) HandOff(h);
    if (status != 0) Fail(h, false);
    Release(h);
  }

  static void Write(Handshake* h, const uint8_t* data, size_t bytes, bool handoff_after) {
    uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(const_cast<uint8_t*>(data)),
                               static_cast<unsigned>(bytes));
    h->write.data = h;
    h->handoff_after_write = handoff_after;
    if (uv_write(&h->write, Stream(h), &buf, 1, &OnWritten) != 0) {
      Fail(h, false);
      return;
    }
    ++h->pending;
  }

  static void OnPhaseRead(Handshake* h) {
    const std::string& secret = h->transport->options_.cluster_secret;
    switch (h->phase) {
      case Phase::kHelloFixed: {  // listener
        if (std::memcmp(h->hello, kMagic, sizeof(kMagic)) == 0) {
          h->address_at = kHelloFixedBytes + kClusterIdBytes;
        } else if (std::memcmp(h->hello, kMagicV1, sizeof(kMagicV1)) != 0) {
          Fail(h, true);
          return;
        }
        size_t address_bytes = h->hello[kHelloFixedBytes - 1];
        if (address_bytes == 0) {
          Fail(h, true);
          return;
        }
        h->phase = Phase::kHelloAddress;
        ReadExactly(h, h->hello + kHelloFixedBytes,
                    h->address_at - kHelloFixedBytes + address_bytes);
        return;
      }
      case Phase::kHelloAddress: {  // listener
        h->hello_bytes = h->address_at + h->hello[kHelloFixedBytes - 1];
        h->hello[h->hello_bytes] = 0;  // the address as a C string, outside the MAC
        const char* address = reinterpret_cast<const char*>(h->hello + h->address_at);
        if (h->address_at > kHelloFixedBytes) {
          // A peer of another cluster: this node is a wiped one that started
          // a new cluster, or the peer is (docs/control-plane.md).
          const std::string theirs(reinterpret_cast<const char*>(h->hello + kHelloFixedBytes),
                                   kClusterIdBytes);
          const std::string mine = h->transport->cluster_id();
          if (!mine.empty() && theirs != std::string(kClusterIdBytes, '\0') && theirs != mine) {
            h->transport->Refused(absl::StrCat(
                "control-plane peer claiming ", address, " belongs to cluster ",
                absl::BytesToHexString(theirs), ", not this node's ",
                absl::BytesToHexString(mine),
                " (a node whose data was wiped rejoins with --seeds and --replace)"));
            Fail(h, true);
            return;
          }
        }
        if (h->transport->tls()) {
          // The connector is who its certificate names: the host of the
          // address it is known by in the Raft configuration.
          const std::string host = HostOf(address);
          if (!CertificateNames(h->peer_certificate, host)) {
            h->transport->Refused(absl::StrCat(
                "control-plane peer claiming ", address,
                ": its certificate does not name ", host, " (--peer-tls-cert must name the "
                "host the node advertises)"));
            Fail(h, true);
            return;
          }
        }
        randombytes_buf(h->challenge, kNonceBytes);
        Mac(secret, "listener", h->hello, h->hello_bytes, h->challenge, h->challenge + kNonceBytes);
        h->phase = Phase::kProof;
        Write(h, h->challenge, sizeof(h->challenge), false);
        if (!h->failed) ReadExactly(h, h->proof, sizeof(h->proof));
        return;
      }
      case Phase::kProof: {  // listener
        uint8_t expected[kMacBytes];
        Mac(secret, "connector", h->hello, h->hello_bytes, h->challenge, expected);
        if (sodium_memcmp(expected, h->proof, kMacBytes) != 0) {
          h->transport->Refused(absl::StrCat(
              "control-plane peer claiming ",
              reinterpret_cast<const char*>(h->hello + h->address_at),
              ": wrong proof of the cluster secret"));
          Fail(h, true);
          return;
        }
        HandOff(h);
        return;
      }
      case Phase::kChallenge: {  // connector
        uint8_t expected[kMacBytes];
        Mac(secret, "listener", h->hello, h->hello_bytes, h->challenge, expected);
        if (sodium_memcmp(expected, h->challenge + kNonceBytes, kMacBytes) != 0) {
          Fail(h, true);
          return;
        }
        Mac(secret, "connector", h->hello, h->hello_bytes, h->challenge, h->proof);
        h->phase = Phase::kDone;
        Write(h, h->proof, sizeof(h->proof), /*handoff_after=*/true);
        return;
      }
      case Phase::kConnecting:
      case Phase::kDone:
        return;
    }
  }

  static void OnTimeout(uv_timer_t* timer) {
    Fail(static_cast<Handshake*>(timer->data), /*refused=*/true);
  }

  // A handshake with its stream and deadline timer initialised: a TCP
  // handle, or (pipe_fd >= 0) a pipe on that end of a socketpair.
  static Handshake* New(AuthenticatedTransport* t, bool connector, int pipe_fd = -1) {
    auto* h = new Handshake;
    h->transport = t;
    h->connector = connector;
    h->stream = static_cast<uv_stream_t*>(raft_malloc(std::max(sizeof(uv_tcp_t), sizeof(uv_pipe_t))));
    if (h->stream == nullptr) {
      delete h;
      if (pipe_fd >= 0) ::close(pipe_fd);
      return nullptr;
    }
    if (pipe_fd >= 0) {
      uv_pipe_init(t->loop_, reinterpret_cast<uv_pipe_t*>(h->stream), 0);
      if (uv_pipe_open(reinterpret_cast<uv_pipe_t*>(h->stream), pipe_fd) != 0) ::close(pipe_fd);
    } else {
      uv_tcp_init(t->loop_, reinterpret_cast<uv_tcp_t*>(h->stream));
    }
    h->stream->data = h;
    uv_timer_init(t->loop_, &h->timer);
    h->timer.data = h;
    h->pending = 2;
    uv_timer_start(&h->timer, &OnTimeout, t->options_.handshake_deadline_ms, 0);
    t->handshakes_.insert(h);
    return h;
  }

  static void OnConnection(uv_stream_t* server, int status) {
    auto* t = static_cast<AuthenticatedTransport*>(server->data);
    if (status < 0 || t->closing_) return;
    if (t->tls()) {
      OnTlsConnection(t, server);
      return;
    }
    Handshake* h = New(t, /*connector=*/false);
    if (h == nullptr) return;
    if (uv_accept(server, Stream(h)) != 0) {
      Fail(h, false);
      return;
    }
    h->phase = Phase::kHelloFixed;
    ReadExactly(h, h->hello, kHelloFixedBytes);
  }

  static void OnTlsConnection(AuthenticatedTransport* t, uv_stream_t* server);

  static void OnConnected(uv_connect_t* req, int status) {
    auto* h = static_cast<Handshake*>(req->data);
    if (status != 0) Fail(h, false);
    if (!h->failed) {
      AuthenticatedTransport* t = h->transport;
      std::memcpy(h->hello, kMagic, sizeof(kMagic));
      randombytes_buf(h->hello + sizeof(kMagic), kNonceBytes);
      uint64_t id = htole64(t->id_);
      std::memcpy(h->hello + sizeof(kMagic) + kNonceBytes, &id, sizeof(id));
      h->hello[kHelloFixedBytes - 1] = static_cast<uint8_t>(t->address_.size());
      if (const std::string mine = t->cluster_id(); mine.size() == kClusterIdBytes) {
        std::memcpy(h->hello + kHelloFixedBytes, mine.data(), kClusterIdBytes);
      }  // else zero: none yet
      h->address_at = kHelloFixedBytes + kClusterIdBytes;
      std::memcpy(h->hello + h->address_at, t->address_.data(), t->address_.size());
      h->hello_bytes = h->address_at + t->address_.size();
      h->phase = Phase::kChallenge;
      Write(h, h->hello, h->hello_bytes, false);
      if (!h->failed) ReadExactly(h, h->challenge, sizeof(h->challenge));
    }
    Release(h);  // the connect request
  }

  static void OnListenerClosed(uv_handle_t* handle) {
    auto* t = static_cast<AuthenticatedTransport*>(handle->data);
    delete reinterpret_cast<uv_tcp_t*>(handle);
    t->listener_ = nullptr;
    t->MaybeFinishClose();
  }
};

// ---- TLS: the tunnels ---------------------------------------------------------

struct AuthenticatedTransport::TlsContexts {
  SSL_CTX* server = nullptr;  // for connections accepted
  SSL_CTX* client = nullptr;  // for connections made
  std::string error;          // why they could not be made
  ~TlsContexts() {
    SSL_CTX_free(server);
    SSL_CTX_free(client);
  }
};

// One TLS connection and the pipe libraft reads and writes in its place.
struct AuthenticatedTransport::Tunnel {
  AuthenticatedTransport* transport = nullptr;
  Handshake* handshake = nullptr;  // until one of the two ends
  bool connector = false;
  std::string peer;  // the address dialled, or the one the connection came from
  uv_tcp_t tcp{};
  uv_pipe_t pipe{};
  uv_connect_t connect{};
  uv_shutdown_t shutdown{};
  SSL* ssl = nullptr;
  protocol::TlsBioBuffers buffers;
  bool tls_done = false;
  bool reported = false;  // connector: the handshake was told how TLS went
  bool ending = false;    // one side ended: the other is written out, then closed
  bool closing = false;
  bool tcp_paused = false;   // while the pipe has too much to write
  bool pipe_paused = false;  // while the TCP connection has
  int open_handles = 2;
  std::unique_ptr<char[]> tcp_in = std::make_unique<char[]>(kTunnelReadBytes);
  std::unique_ptr<char[]> pipe_in = std::make_unique<char[]>(kTunnelReadBytes);
  ~Tunnel() { SSL_free(ssl); }
};

struct TunnelOps {
  using Tunnel = AuthenticatedTransport::Tunnel;
  using Handshake = AuthenticatedTransport::Handshake;
  using TlsContexts = AuthenticatedTransport::TlsContexts;

  static uv_stream_t* Tcp(Tunnel* u) { return reinterpret_cast<uv_stream_t*>(&u->tcp); }
  static uv_stream_t* Pipe(Tunnel* u) { return reinterpret_cast<uv_stream_t*>(&u->pipe); }

  // The contexts, or why not: every file is read when the transport is made.
  static std::string BuildContext(const TransportOptions& o, bool server, SSL_CTX** out) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == nullptr) return protocol::TakeOpenSslErrors("SSL_CTX_new failed");
    *out = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (!o.tls_ciphersuites.empty()) {
      if (SSL_CTX_set_ciphersuites(ctx, o.tls_ciphersuites.c_str()) != 1) {
        return absl::StrCat("--tls-ciphersuites ", o.tls_ciphersuites, ": ",
                            protocol::TakeOpenSslErrors("refused"));
      }
      // The suites in this node's order, as on its binary port.
      if (server) SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    }
    if (o.tls_cert_file.empty() || o.tls_key_file.empty()) {
      return "--peer-tls-ca needs this node's certificate and key (--peer-tls-cert and "
             "--peer-tls-key, or --tls-cert and --tls-key)";
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, o.tls_cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, o.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      return absl::StrCat("cannot use the certificate ", o.tls_cert_file, " and key ",
                          o.tls_key_file, ": ", protocol::TakeOpenSslErrors("they do not match"));
    }
    if (SSL_CTX_load_verify_locations(ctx, o.tls_ca_file.c_str(), nullptr) != 1) {
      return absl::StrCat("cannot read the cluster CA ", o.tls_ca_file, ": ",
                          protocol::TakeOpenSslErrors(""));
    }
    if (!o.tls_crl_file.empty() && !protocol::LoadCrlFile(SSL_CTX_get_cert_store(ctx),
                                                          o.tls_crl_file)) {
      return absl::StrCat("cannot read the revocation list ", o.tls_crl_file, ": ",
                          protocol::TakeOpenSslErrors(""));
    }
    if (server) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
      if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.tls_ca_file.c_str())) {
        SSL_CTX_set_client_CA_list(ctx, names);
      }
      SSL_CTX_set_num_tickets(ctx, 0);  // a connection lasts; nothing to resume
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    }
    ERR_clear_error();
    return "";
  }

  // Both contexts from the files (error set when they do not read).
  static std::shared_ptr<const TlsContexts> BuildContexts(const TransportOptions& o) {
    auto contexts = std::make_shared<TlsContexts>();
    contexts->error = BuildContext(o, /*server=*/true, &contexts->server);
    if (contexts->error.empty()) {
      contexts->error = BuildContext(o, /*server=*/false, &contexts->client);
    }
    return contexts;
  }

  static Tunnel* New(AuthenticatedTransport* t, bool connector) {
    SSL* ssl = nullptr;
    {
      // The contexts in use (ReloadTls may swap them from another thread);
      // the SSL keeps a reference to its own.
      absl::MutexLock lock(&t->tls_mu_);
      ssl = SSL_new(connector ? t->tls_contexts_->client : t->tls_contexts_->server);
    }
    if (ssl == nullptr) {
      ERR_clear_error();
      return nullptr;
    }
    auto* u = new Tunnel;
    u->transport = t;
    u->connector = connector;
    u->ssl = ssl;
    if (!protocol::AttachTlsBio(ssl, &u->buffers)) {
      delete u;
      return nullptr;
    }
    if (connector) {
      SSL_set_connect_state(ssl);
    } else {
      SSL_set_accept_state(ssl);
    }
    uv_tcp_init(t->loop_, &u->tcp);
    u->tcp.data = u;
    uv_pipe_init(t->loop_, &u->pipe, 0);
    u->pipe.data = u;
    u->connect.data = u;
    t->tunnels_.insert(u);
    return u;
  }

  // A socketpair: fds[0] for the handshake (then libraft), fds[1] the
  // tunnel's pipe. false when none could be made.
  static bool Pair(Tunnel* u, int fds[2]) {
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
      return false;
    }
    if (uv_pipe_open(&u->pipe, fds[1]) != 0) {
      ::close(fds[0]);
      ::close(fds[1]);
      return false;
    }
    return true;
  }

  static void Link(Tunnel* u, Handshake* h) {
    u->handshake = h;
    h->tunnel = u;
  }

  static void OnClosed(uv_handle_t* handle) {
    auto* u = static_cast<Tunnel*>(handle->data);
    if (--u->open_handles > 0) return;
    AuthenticatedTransport* t = u->transport;
    t->tunnels_.erase(u);
    delete u;
    t->MaybeFinishClose();
  }

  // Ends the tunnel: libraft (or the handshake) sees its pipe close.
  static void Close(Tunnel* u) {
    if (u->closing) return;
    u->closing = true;
    if (Handshake* h = u->handshake; h != nullptr) {
      u->handshake = nullptr;
      h->tunnel = nullptr;
      if (u->connector && !u->reported && h->req != nullptr) {
        u->reported = true;
        HandshakeOps::OnConnected(&h->connect, UV_ECONNREFUSED);
      }
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&u->tcp), &OnClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&u->pipe), &OnClosed);
  }

  // The TLS handshake failed, or the peer's certificate is not who it
  // should be: logged, counted as a refusal, the alert sent if it can be.
  static void Refuse(Tunnel* u, const std::string& why) {
    u->transport->Refused(why);
    if (!u->buffers.out.empty()) {
      uv_buf_t buf = uv_buf_init(u->buffers.out.data(), static_cast<unsigned>(u->buffers.out.size()));
      uv_try_write(Tcp(u), &buf, 1);
      u->buffers.out.clear();
    }
    if (Handshake* h = u->handshake; h != nullptr) HandshakeOps::Fail(h, /*refused=*/true);
    Close(u);
  }

  struct Write {
    uv_write_t request;
    std::string data;
    Tunnel* tunnel;
  };

  static void OnWritten(uv_write_t* request, int status) {
    auto* w = reinterpret_cast<Write*>(request);
    Tunnel* u = w->tunnel;
    uv_stream_t* stream = request->handle;
    delete w;
    if (u->closing) return;
    if (status < 0) {
      Close(u);
      return;
    }
    if (u->ending) return;
    if (uv_stream_get_write_queue_size(stream) > kTunnelHighWaterBytes / 4) return;
    if (stream == Pipe(u) && u->tcp_paused) {
      u->tcp_paused = false;
      StartTcpReading(u);
    } else if (stream == Tcp(u) && u->pipe_paused) {
      u->pipe_paused = false;
      StartPipeReading(u);
    }
  }

  static void WriteTo(Tunnel* u, uv_stream_t* stream, std::string data) {
    auto* w = new Write{{}, std::move(data), u};
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    if (uv_write(&w->request, stream, &buf, 1, &OnWritten) != 0) {
      delete w;
      Close(u);
      return;
    }
    if (uv_stream_get_write_queue_size(stream) <= kTunnelHighWaterBytes) return;
    // The other side waits until this one has drained.
    if (stream == Pipe(u)) {
      u->tcp_paused = true;
      uv_read_stop(Tcp(u));
    } else {
      u->pipe_paused = true;
      uv_read_stop(Pipe(u));
    }
  }

  // One side ended: what is still owed to stream is written, then the
  // tunnel closes (closing at once would drop it: a peer's last message
  // often comes with its close_notify).
  static void EndAfterWrites(Tunnel* u, uv_stream_t* stream) {
    if (u->closing || u->ending) return;
    u->ending = true;
    uv_read_stop(Tcp(u));
    uv_read_stop(Pipe(u));
    u->shutdown.data = u;
    if (uv_shutdown(&u->shutdown, stream, [](uv_shutdown_t* request, int) {
          Close(static_cast<Tunnel*>(request->data));
        }) != 0) {
      Close(u);
    }
  }

  static void FlushTcp(Tunnel* u) {
    if (u->buffers.out.empty() || u->closing) return;
    std::string data;
    data.swap(u->buffers.out);
    WriteTo(u, Tcp(u), std::move(data));
  }

  static void StartTcpReading(Tunnel* u) {
    uv_read_start(
        Tcp(u),
        [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
          auto* u = static_cast<Tunnel*>(handle->data);
          *buf = uv_buf_init(u->tcp_in.get(), kTunnelReadBytes);
        },
        &OnTcpRead);
  }

  static void StartPipeReading(Tunnel* u) {
    uv_read_start(
        Pipe(u),
        [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
          auto* u = static_cast<Tunnel*>(handle->data);
          *buf = uv_buf_init(u->pipe_in.get(), kTunnelReadBytes);
        },
        &OnPipeRead);
  }

  // TLS is up: the peer's certificate goes to the handshake (the listener
  // checks it names the address the hello claims), and plaintext flows.
  static void OnTlsReady(Tunnel* u) {
    u->tls_done = true;
    Handshake* h = u->handshake;
    if (h == nullptr) {
      Close(u);
      return;
    }
    if (!u->connector) h->peer_certificate = SSL_get1_peer_certificate(u->ssl);
    StartPipeReading(u);
    if (u->connector && h->req != nullptr && !u->reported) {
      u->reported = true;
      HandshakeOps::OnConnected(&h->connect, 0);  // the hello goes out through the pipe
    }
  }

  // Advances the TLS handshake; false while it is not done (or failed).
  static bool ContinueHandshake(Tunnel* u) {
    ERR_clear_error();
    const int rc = SSL_do_handshake(u->ssl);
    if (rc == 1) {
      FlushTcp(u);
      OnTlsReady(u);
      return !u->closing;
    }
    const int error = SSL_get_error(u->ssl, rc);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      FlushTcp(u);
      return false;
    }
    std::string reason = protocol::TakeOpenSslErrors("the connection closed");
    const long verify = SSL_get_verify_result(u->ssl);
    if (verify != X509_V_OK) {
      reason = absl::StrCat(X509_verify_cert_error_string(verify), " (", reason, ")");
    }
    Refuse(u, absl::StrCat("control-plane TLS ", u->connector ? "to " : "from ", u->peer,
                           " refused: ", reason));
    return false;
  }

  static void OnTcpConnected(uv_connect_t* request, int status) {
    auto* u = static_cast<Tunnel*>(request->data);
    if (u->closing) return;
    if (status != 0) {
      Close(u);  // not a refusal: nobody answered
      return;
    }
    uv_tcp_nodelay(&u->tcp, 1);
    StartTcpReading(u);
    ContinueHandshake(u);  // the ClientHello
  }

  static void OnTcpRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
    auto* u = static_cast<Tunnel*>(stream->data);
    if (u->closing || u->ending || nread == 0) return;
    if (nread < 0) {
      // Closed before TLS was up: the listener cannot tell a refusal by the
      // other end from a dropped connection, and counts neither here.
      Close(u);
      return;
    }
    u->buffers.Feed(u->tcp_in.get(), static_cast<size_t>(nread));
    if (!u->tls_done && !ContinueHandshake(u)) {
      u->buffers.KeepUnread();
      return;
    }
    std::string plain;
    bool ended = false;
    while (!u->closing) {
      constexpr size_t kChunk = 16u << 10;
      const size_t at = plain.size();
      plain.resize(at + kChunk);
      ERR_clear_error();
      const int rc = SSL_read(u->ssl, plain.data() + at, static_cast<int>(kChunk));
      if (rc > 0) {
        plain.resize(at + static_cast<size_t>(rc));
        continue;
      }
      plain.resize(at);
      const int error = SSL_get_error(u->ssl, rc);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) break;
      // close_notify, or a record that does not decrypt: the connection
      // ends once libraft has what came before.
      ERR_clear_error();
      ended = true;
      break;
    }
    u->buffers.KeepUnread();
    if (u->closing) return;
    FlushTcp(u);
    if (!plain.empty()) WriteTo(u, Pipe(u), std::move(plain));
    if (ended) EndAfterWrites(u, Pipe(u));
  }

  static void OnPipeRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
    auto* u = static_cast<Tunnel*>(stream->data);
    if (u->closing || u->ending || nread == 0) return;
    if (nread < 0) {
      // libraft (or the handshake) closed its end: what it wrote before,
      // then close_notify, then the connection closes.
      ERR_clear_error();
      if (u->tls_done) SSL_shutdown(u->ssl);
      ERR_clear_error();
      FlushTcp(u);
      EndAfterWrites(u, Tcp(u));
      return;
    }
    ERR_clear_error();
    if (SSL_write(u->ssl, u->pipe_in.get(), static_cast<int>(nread)) <= 0) {
      ERR_clear_error();
      Close(u);
      return;
    }
    FlushTcp(u);
  }

  static int Connect(AuthenticatedTransport* t, struct raft_uv_connect* req,
                     const char* address, const struct sockaddr_in& peer,
                     raft_uv_connect_cb cb) {
    Tunnel* u = New(t, /*connector=*/true);
    if (u == nullptr) return RAFT_NOMEM;
    u->peer = address;
    int fds[2];
    if (!Pair(u, fds)) {
      Close(u);
      return RAFT_NOCONNECTION;
    }
    Handshake* h = HandshakeOps::New(t, /*connector=*/true, fds[0]);
    if (h == nullptr) {
      Close(u);
      return RAFT_NOMEM;
    }
    Link(u, h);
    h->connect.data = h;
    // The listener must be who the connector dialled.
    const std::string host = HostOf(address);
    unsigned char ip[16];
    if (::inet_pton(AF_INET, host.c_str(), ip) == 1 || ::inet_pton(AF_INET6, host.c_str(), ip) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(u->ssl), host.c_str());
    } else {
      SSL_set_tlsext_host_name(u->ssl, host.c_str());
      SSL_set1_host(u->ssl, host.c_str());
    }
    if (uv_tcp_connect(&u->connect, &u->tcp, reinterpret_cast<const struct sockaddr*>(&peer),
                       &OnTcpConnected) != 0) {
      HandshakeOps::Fail(h, false);  // no callback: req stays unset (and closes the tunnel)
      return RAFT_NOCONNECTION;
    }
    // Once TLS is up (or failed), the tunnel calls OnConnected, as a TCP
    // connect would.
    ++h->pending;
    h->req = req;
    h->connect_cb = cb;
    return 0;
  }

  static void OnConnection(AuthenticatedTransport* t, uv_stream_t* server) {
    Tunnel* u = New(t, /*connector=*/false);
    if (u == nullptr) return;
    if (uv_accept(server, Tcp(u)) != 0) {
      Close(u);
      return;
    }
    sockaddr_storage from;
    int length = sizeof(from);
    char text[INET6_ADDRSTRLEN] = "?";
    if (uv_tcp_getpeername(&u->tcp, reinterpret_cast<sockaddr*>(&from), &length) == 0 &&
        from.ss_family == AF_INET) {
      uv_ip4_name(reinterpret_cast<const sockaddr_in*>(&from), text, sizeof(text));
    }
    u->peer = text;
    int fds[2];
    if (!Pair(u, fds)) {
      Close(u);
      return;
    }
    Handshake* h = HandshakeOps::New(t, /*connector=*/false, fds[0]);
    if (h == nullptr) {
      Close(u);
      return;
    }
    Link(u, h);
    uv_tcp_nodelay(&u->tcp, 1);
    h->phase = Handshake::Phase::kHelloFixed;
    HandshakeOps::ReadExactly(h, h->hello, kHelloFixedBytes);
    StartTcpReading(u);
  }
};

void HandshakeOps::DetachTunnel(Handshake* h) {
  h->tunnel->handshake = nullptr;
  h->tunnel = nullptr;
}

void HandshakeOps::CloseTunnel(Handshake* h) { TunnelOps::Close(h->tunnel); }

void HandshakeOps::OnTlsConnection(AuthenticatedTransport* t, uv_stream_t* server) {
  TunnelOps::OnConnection(t, server);
}


AuthenticatedTransport::AuthenticatedTransport(uv_loop_t* loop, TransportOptions options)
    : loop_(loop), options_(std::move(options)) {
  if (sodium_init() < 0) abort();  // libsodium unusable: nothing here can be safe
  // A write to a peer or to the TLS tunnel's pipe that closed fails with EPIPE
  // instead of ending the process (server/sigpipe.h), also when the transport
  // runs without a Node: its tests drive it alone.
  IgnoreSigpipeUnlessHandled();
  transport_.data = nullptr;
  transport_.impl = this;
  transport_.init = &AuthenticatedTransport::Init;
  transport_.listen = &AuthenticatedTransport::Listen;
  transport_.connect = &AuthenticatedTransport::Connect;
  transport_.close = &AuthenticatedTransport::Close;
  if (tls()) {
    std::shared_ptr<const TlsContexts> contexts = TunnelOps::BuildContexts(options_);
    absl::MutexLock lock(&tls_mu_);
    tls_contexts_ = std::move(contexts);
  }
}

AuthenticatedTransport::~AuthenticatedTransport() = default;

absl::Status AuthenticatedTransport::ReloadTls() {
  if (!tls()) return absl::OkStatus();
  std::shared_ptr<const TlsContexts> contexts = TunnelOps::BuildContexts(options_);
  ERR_clear_error();
  if (!contexts->error.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("control-plane TLS: ", contexts->error));
  }
  // The old contexts live on in the SSLs of the tunnels made with them.
  absl::MutexLock lock(&tls_mu_);
  tls_contexts_ = std::move(contexts);
  return absl::OkStatus();
}

void AuthenticatedTransport::Refused(const std::string& why) {
  if (options_.on_refused) options_.on_refused(why);
}

int AuthenticatedTransport::Init(struct raft_uv_transport* transport, raft_id id,
                                 const char* address) {
  auto* t = static_cast<AuthenticatedTransport*>(transport->impl);
  if (t->options_.cluster_secret.empty()) {
    absl::SNPrintF(transport->errmsg, sizeof(transport->errmsg), "no cluster secret");
    return RAFT_INVALID;
  }
  std::string tls_error;
  {
    absl::MutexLock lock(&t->tls_mu_);
    if (t->tls_contexts_ != nullptr) tls_error = t->tls_contexts_->error;
  }
  if (!tls_error.empty()) {
    absl::SNPrintF(transport->errmsg, sizeof(transport->errmsg), "peer TLS: %s", tls_error);
    return RAFT_INVALID;
  }
  struct sockaddr_in parsed;
  size_t length = std::strlen(address);
  if (length == 0 || length > kMaxHelloAddressBytes || !ParseAddress(address, &parsed)) {
    absl::SNPrintF(transport->errmsg, sizeof(transport->errmsg),
                   "address %s is not IPv4 host:port", address);
    return RAFT_INVALID;
  }
  t->id_ = id;
  t->address_ = address;
  return 0;
}

int AuthenticatedTransport::Listen(struct raft_uv_transport* transport, raft_uv_accept_cb cb) {
  auto* t = static_cast<AuthenticatedTransport*>(transport->impl);
  struct sockaddr_in address;
  if (!ParseAddress(t->address_, &address)) return RAFT_INVALID;
  t->accept_cb_ = cb;
  t->listener_ = new uv_tcp_t;
  uv_tcp_init(t->loop_, t->listener_);
  t->listener_->data = t;
  int rv = uv_tcp_bind(t->listener_, reinterpret_cast<const struct sockaddr*>(&address), 0);
  if (rv == 0) {
    rv = uv_listen(reinterpret_cast<uv_stream_t*>(t->listener_), kListenBacklog,
                   &HandshakeOps::OnConnection);
  }
  if (rv != 0) {
    absl::SNPrintF(transport->errmsg, sizeof(transport->errmsg), "listen on %s: %s", t->address_,
                   uv_strerror(rv));
    uv_close(reinterpret_cast<uv_handle_t*>(t->listener_), &HandshakeOps::OnListenerClosed);
    return RAFT_IOERR;
  }
  return 0;
}

int AuthenticatedTransport::Connect(struct raft_uv_transport* transport,
                                    struct raft_uv_connect* req, raft_id, const char* address,
                                    raft_uv_connect_cb cb) {
  auto* t = static_cast<AuthenticatedTransport*>(transport->impl);
  if (t->closing_) return RAFT_CANCELED;
  struct sockaddr_in peer;
  if (!ParseAddress(address, &peer)) return RAFT_NOCONNECTION;
  if (t->tls()) return TunnelOps::Connect(t, req, address, peer, cb);
  AuthenticatedTransport::Handshake* h = HandshakeOps::New(t, /*connector=*/true);
  if (h == nullptr) return RAFT_NOMEM;
  h->connect.data = h;
  int rv = uv_tcp_connect(&h->connect, reinterpret_cast<uv_tcp_t*>(h->stream),
                          reinterpret_cast<const struct sockaddr*>(&peer),
                          &HandshakeOps::OnConnected);
  if (rv != 0) {
    HandshakeOps::Fail(h, false);  // no callback: req stays unset
    return RAFT_NOCONNECTION;
  }
  ++h->pending;
  h->req = req;
  h->connect_cb = cb;
  return 0;
}

void AuthenticatedTransport::Close(struct raft_uv_transport* transport,
                                   raft_uv_transport_close_cb cb) {
  auto* t = static_cast<AuthenticatedTransport*>(transport->impl);
  t->closing_ = true;
  t->close_cb_ = cb;
  if (t->listener_ != nullptr && !uv_is_closing(reinterpret_cast<uv_handle_t*>(t->listener_))) {
    uv_close(reinterpret_cast<uv_handle_t*>(t->listener_), &HandshakeOps::OnListenerClosed);
  }
  std::vector<Handshake*> open(t->handshakes_.begin(), t->handshakes_.end());
  for (Handshake* h : open) HandshakeOps::Fail(h, false);
  // Tunnels already handed to libraft: it sees their pipes close.
  std::vector<Tunnel*> tunnels(t->tunnels_.begin(), t->tunnels_.end());
  for (Tunnel* u : tunnels) TunnelOps::Close(u);
  t->MaybeFinishClose();
}

void AuthenticatedTransport::MaybeFinishClose() {
  if (!closing_ || listener_ != nullptr || !handshakes_.empty() || !tunnels_.empty() ||
      close_cb_ == nullptr) {
    return;
  }
  raft_uv_transport_close_cb cb = std::exchange(close_cb_, nullptr);
  cb(&transport_);
}

}  // namespace logkv::server::control
