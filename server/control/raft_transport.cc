#include "server/control/raft_transport.h"

#include <endian.h>
#include <sodium.h>

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace logkv::server::control {

namespace {

constexpr char kMagic[8] = {'L', 'K', 'V', 'R', 'A', 'F', 'T', '1'};
constexpr size_t kNonceBytes = 32;
constexpr size_t kMacBytes = crypto_auth_hmacsha256_BYTES;
static_assert(kMacBytes == 32);
// magic, nonce, id, address length.
constexpr size_t kHelloFixedBytes = sizeof(kMagic) + kNonceBytes + 8 + 1;
constexpr size_t kMaxAddressBytes = 255;
constexpr int kListenBacklog = 128;

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
  // From raft_malloc: libraft frees it with raft_free once it owns it.
  uv_tcp_t* tcp = nullptr;
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

  uint8_t hello[kHelloFixedBytes + kMaxAddressBytes + 1] = {};  // +1: the address's NUL
  size_t hello_bytes = 0;
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

  static uv_stream_t* Stream(Handshake* h) { return reinterpret_cast<uv_stream_t*>(h->tcp); }

  static void Release(Handshake* h) {
    if (--h->pending > 0) return;
    AuthenticatedTransport* t = h->transport;
    t->handshakes_.erase(h);
    if (h->req != nullptr && !h->handed_off) {
      h->connect_cb(h->req, nullptr, t->closing_ ? RAFT_CANCELED : RAFT_NOCONNECTION);
    }
    if (!h->handed_off) raft_free(h->tcp);
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
    uv_close(reinterpret_cast<uv_handle_t*>(h->tcp), &OnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&h->timer), &OnHandleClosed);
  }

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
      const char* address = reinterpret_cast<const char*>(h->hello + kHelloFixedBytes);
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
        if (std::memcmp(h->hello, kMagic, sizeof(kMagic)) != 0) {
          Fail(h, true);
          return;
        }
        size_t address_bytes = h->hello[kHelloFixedBytes - 1];
        if (address_bytes == 0) {
          Fail(h, true);
          return;
        }
        h->phase = Phase::kHelloAddress;
        ReadExactly(h, h->hello + kHelloFixedBytes, address_bytes);
        return;
      }
      case Phase::kHelloAddress: {  // listener
        h->hello_bytes = kHelloFixedBytes + h->hello[kHelloFixedBytes - 1];
        h->hello[h->hello_bytes] = 0;  // the address as a C string, outside the MAC
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

  // A handshake with its TCP handle and deadline timer initialised.
  static Handshake* New(AuthenticatedTransport* t, bool connector) {
    auto* h = new Handshake;
    h->transport = t;
    h->connector = connector;
    h->tcp = static_cast<uv_tcp_t*>(raft_malloc(sizeof(uv_tcp_t)));
    if (h->tcp == nullptr) {
      delete h;
      return nullptr;
    }
    uv_tcp_init(t->loop_, h->tcp);
    h->tcp->data = h;
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
    Handshake* h = New(t, /*connector=*/false);
    if (h == nullptr) return;
    if (uv_accept(server, Stream(h)) != 0) {
      Fail(h, false);
      return;
    }
    h->phase = Phase::kHelloFixed;
    ReadExactly(h, h->hello, kHelloFixedBytes);
  }

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
      std::memcpy(h->hello + kHelloFixedBytes, t->address_.data(), t->address_.size());
      h->hello_bytes = kHelloFixedBytes + t->address_.size();
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

AuthenticatedTransport::AuthenticatedTransport(uv_loop_t* loop, TransportOptions options)
    : loop_(loop), options_(std::move(options)) {
  if (sodium_init() < 0) abort();  // libsodium unusable: nothing here can be safe
  transport_.data = nullptr;
  transport_.impl = this;
  transport_.init = &AuthenticatedTransport::Init;
  transport_.listen = &AuthenticatedTransport::Listen;
  transport_.connect = &AuthenticatedTransport::Connect;
  transport_.close = &AuthenticatedTransport::Close;
}

int AuthenticatedTransport::Init(struct raft_uv_transport* transport, raft_id id,
                                 const char* address) {
  auto* t = static_cast<AuthenticatedTransport*>(transport->impl);
  if (t->options_.cluster_secret.empty()) {
    absl::SNPrintF(transport->errmsg, sizeof(transport->errmsg), "no cluster secret");
    return RAFT_INVALID;
  }
  struct sockaddr_in parsed;
  size_t length = std::strlen(address);
  if (length == 0 || length > kMaxAddressBytes || !ParseAddress(address, &parsed)) {
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
  AuthenticatedTransport::Handshake* h = HandshakeOps::New(t, /*connector=*/true);
  if (h == nullptr) return RAFT_NOMEM;
  h->connect.data = h;
  int rv = uv_tcp_connect(&h->connect, h->tcp, reinterpret_cast<const struct sockaddr*>(&peer),
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
  t->MaybeFinishClose();
}

void AuthenticatedTransport::MaybeFinishClose() {
  if (!closing_ || listener_ != nullptr || !handshakes_.empty() || close_cb_ == nullptr) return;
  raft_uv_transport_close_cb cb = std::exchange(close_cb_, nullptr);
  cb(&transport_);
}

}  // namespace logkv::server::control
