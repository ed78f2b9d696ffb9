// TLS for logkvd's listeners (--tls-cert, --tls-key, --tls-ca,
// --tls-client-auth, --tls-min-version), with OpenSSL 3 driven through
// memory BIOs: the loops read and write the socket as for plaintext and hand
// the ciphertext to a TlsStream, so a handshake never blocks a loop and no
// connection needs a thread of its own.
//
// TlsContext holds the certificate, key and CA in an SSL_CTX, shared by every
// loop. Reload (SIGHUP) builds a new SSL_CTX from the same files and swaps it
// in: connections accepted from then on use it, those already open keep the
// one they were accepted with (OpenSSL counts its references), so nothing is
// dropped.
//
// ALPN: the binary protocol's listener speaks "logkv", the HTTP ones
// "http/1.1"; a client that offers ALPN without the listener's name is
// refused with the no_application_protocol alert, one that offers none is
// served.
//
// Thread-safety: TlsContext is thread-safe. A TlsStream belongs to one
// connection and is used on its loop's thread only.
#ifndef LOGKV_SERVER_NET_TLS_H_
#define LOGKV_SERVER_NET_TLS_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "protocol/tls_bio.h"

struct ssl_st;
struct ssl_ctx_st;
struct x509_store_st;

namespace logkv::server::net {

inline constexpr absl::string_view kBinaryAlpn = "logkv";
inline constexpr absl::string_view kHttpAlpn = "http/1.1";

// TLS 1.3 suites in logkvd's order of preference (--tls-ciphersuites): the
// three of OpenSSL's default, AES-128-GCM first (as Go and BoringSSL order
// them): fewer rounds per record than AES-256-GCM, which OpenSSL puts
// first, at a security level no attack comes near. With ChaCha20-Poly1305
// first an unpipelined GET took 20,677 instructions in logkvd against
// 16,179 (callgrind; docs/tls.md, "The cipher suite").
inline constexpr absl::string_view kDefaultCiphersuites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
// Whether `list` is a --tls-ciphersuites value: one or more of the suites
// of kDefaultCiphersuites (the ones OpenSSL's clients, and so logkv's, offer
// by default), separated by ':', none twice. OpenSSL alone would take TLS
// 1.2 suites' names too, and skip a name it does not know in a list with
// one it does.
absl::Status ValidateCiphersuites(absl::string_view list);

enum class ClientAuth { kNone, kOptional, kRequire };
// "none" | "optional" | "require".
absl::StatusOr<ClientAuth> ParseClientAuth(absl::string_view text);

struct TlsOptions {
  std::string cert_file;  // PEM: the certificate, then its chain
  std::string key_file;   // PEM private key
  std::string ca_file;    // PEM CAs that client certificates must chain to
  std::string crl_file;   // PEM CRLs of those CAs: revoked client certificates are refused
  ClientAuth client_auth = ClientAuth::kNone;
  bool allow_tls12 = false;  // --tls-min-version=1.2 (else TLS 1.3 only)
  // --tls-ciphersuites: the TLS 1.3 suites offered, in the server's order of
  // preference (ValidateCiphersuites).
  std::string ciphersuites{kDefaultCiphersuites};
  // --peer-tls-ca: the cluster's CA. Client certificates are then asked for
  // (at least optional), and a connection's ClusterHello is accepted only
  // when its certificate chains to this CA (TlsStream::PeerVerified).
  std::string peer_ca_file;
  // --peer-tls-crl: PEM CRLs of the cluster CA; a peer certificate they
  // revoke is refused at its ClusterHello.
  std::string peer_crl_file;

  bool enabled() const { return !cert_file.empty(); }
  // The flags' rules: a certificate needs its key, client authentication a CA.
  absl::Status Validate() const;
};

class TlsStream;

class TlsContext {
 public:
  // Reads the files; fails with a message naming the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<TlsContext>> Create(const TlsOptions& options);
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  ~TlsContext();

  // Reads the files again (the cluster CA and its CRLs included); on success
  // new connections use them. On failure the certificate in use is kept;
  // a certificate that has expired, or is not valid yet, fails while the
  // one in use is valid.
  // Any thread.
  absl::Status Reload() ABSL_LOCKS_EXCLUDED(mu_);

  // A server-side SSL for a connection accepted by the binary listener
  // (http false) or an HTTP one. Any thread; the caller owns it.
  ssl_st* NewSsl(bool http) const ABSL_LOCKS_EXCLUDED(mu_);

  // When the certificate in use becomes valid, and when it expires, as Unix
  // seconds.
  int64_t not_before_unix_seconds() const { return not_before_.load(std::memory_order_relaxed); }
  int64_t not_after_unix_seconds() const { return not_after_.load(std::memory_order_relaxed); }
  // Handshakes that failed, and plaintext clients refused, since the start.
  uint64_t handshake_failures() const {
    return handshake_failures_.load(std::memory_order_relaxed);
  }
  void CountHandshakeFailure() const {
    handshake_failures_.fetch_add(1, std::memory_order_relaxed);
  }
  // ClusterHellos refused for the certificate shown (--peer-tls-ca): none,
  // not of the cluster CA, or not naming the node it claims to be.
  uint64_t peer_refusals() const { return peer_refusals_.load(std::memory_order_relaxed); }
  void CountPeerRefusal() const { peer_refusals_.fetch_add(1, std::memory_order_relaxed); }
  const TlsOptions& options() const { return options_; }
  bool peers_need_certificates() const { return !options_.peer_ca_file.empty(); }
  // Whether the client of stream showed a certificate of the cluster CA
  // (--peer-tls-ca) that no CRL of --peer-tls-crl revokes, as last
  // (re)loaded; stream->error() says why not. Any thread.
  bool VerifyPeer(TlsStream* stream) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct CtxFree {
    void operator()(ssl_ctx_st* ctx) const;
  };
  using CtxPtr = std::unique_ptr<ssl_ctx_st, CtxFree>;
  struct StoreFree {
    void operator()(x509_store_st* store) const;
  };
  using StorePtr = std::unique_ptr<x509_store_st, StoreFree>;
  explicit TlsContext(const TlsOptions& options) : options_(options) {}
  // When a certificate is valid, as Unix seconds.
  struct Validity {
    int64_t not_before = 0;
    int64_t not_after = 0;
  };
  // A new SSL_CTX from the files, and when its certificate is valid.
  absl::StatusOr<CtxPtr> Build(Validity* validity) const;
  // The store VerifyPeer checks with, from --peer-tls-ca and --peer-tls-crl.
  absl::StatusOr<StorePtr> BuildPeerStore() const;

  const TlsOptions options_;
  mutable absl::Mutex mu_;
  CtxPtr ctx_ ABSL_GUARDED_BY(mu_);
  StorePtr peer_store_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> not_before_{0};
  std::atomic<int64_t> not_after_{0};
  mutable std::atomic<uint64_t> handshake_failures_{0};
  mutable std::atomic<uint64_t> peer_refusals_{0};
};

// One connection's TLS, fed the ciphertext the socket read and drained of
// the ciphertext to write. Loop thread only.
class TlsStream {
 public:
  // Takes ownership of ssl (TlsContext::NewSsl).
  explicit TlsStream(ssl_st* ssl);
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;
  ~TlsStream();

  // Whether data, the first bytes a client sent, can begin a TLS handshake
  // (a handshake record of TLS 1.x); a plaintext client's cannot.
  static bool LooksLikeTls(const char* data, size_t size);

  // Ciphertext read from the socket, read in place: call KeepUnread before
  // that buffer is reused.
  void Feed(const char* data, size_t size);
  // Copies what the stream has not read of the bytes fed (none once Read or
  // Handshake returned 0).
  void KeepUnread() { buffers_.KeepUnread(); }
  // Whether Read may return more without another Feed: plaintext of a record
  // is left, or ciphertext fed is not decrypted yet (in the BIO, or taken
  // into OpenSSL's buffer by read-ahead).
  bool has_more() const;
  // Advances the handshake: 1 done, 0 more bytes needed, -1 failed (error()
  // says why; an alert for the peer waits in the output).
  int Handshake();
  bool handshake_done() const { return handshake_done_; }
  bool failed() const { return failed_; }
  // Whether any ciphertext was fed yet.
  bool started() const { return started_; }
  // Gives the stream up (nothing more is read or written through it).
  void Abandon(absl::string_view reason) {
    failed_ = true;
    error_ = std::string(reason);
  }
  // Plaintext decrypted into buffer: > 0 bytes, 0 none until more arrives,
  // kPeerClosed after the peer's close_notify, kFailed on an error.
  static constexpr ssize_t kPeerClosed = -1;
  static constexpr ssize_t kFailed = -2;
  ssize_t Read(char* buffer, size_t size);
  // Encrypts plaintext (all of it; only once the handshake is done). false
  // on an error.
  bool Write(absl::string_view plaintext);
  // Queues close_notify.
  void Shutdown();
  // Appends the ciphertext waiting to be written (handshake messages,
  // records, alerts) to out (taking its buffer over when out is empty).
  void DrainTo(std::string* out);
  // Why the handshake or a record failed.
  const std::string& error() const { return error_; }
  // The protocol ALPN chose ("" when the client offered none).
  std::string alpn() const;
  // Whether the client showed a certificate that chains to the CAs of store
  // (the cluster CA's, --peer-tls-ca; TlsContext::VerifyPeer) and that none of
  // its CRLs revokes; error() says why not.
  bool PeerVerified(x509_store_st* store);
  // Whether the client's certificate names host (a DNS name or an IP
  // address) in its subjectAltName.
  bool PeerNames(const std::string& host) const;

 private:
  void Fail();

  ssl_st* const ssl_;
  // The SSL's BIO: ciphertext in, read in place, and out.
  protocol::TlsBioBuffers buffers_;
  bool handshake_done_ = false;
  bool failed_ = false;
  bool started_ = false;
  std::string error_;
};

}  // namespace logkv::server::net

#endif  // LOGKV_SERVER_NET_TLS_H_
