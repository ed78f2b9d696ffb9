#include "server/net/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <time.h>

#include <algorithm>
#include <string>
#include <vector>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "protocol/openssl_crl.h"
#include "protocol/openssl_errors.h"

namespace logkv::server::net {

namespace {

using ::logkv::protocol::TakeOpenSslErrors;

// ALPN: the listener's protocol (SSL app data: non-null for HTTP) if the
// client offered it; no_application_protocol if it offered only others.
int SelectAlpn(SSL* ssl, const unsigned char** out, unsigned char* out_length,
               const unsigned char* offered, unsigned int offered_length, void* /*arg*/) {
  static const unsigned char kBinary[] = "\x05logkv";
  static const unsigned char kHttp[] = "\x08http/1.1";
  const bool http = SSL_get_app_data(ssl) != nullptr;
  const unsigned char* ours = http ? kHttp : kBinary;
  const unsigned int ours_length = http ? sizeof(kHttp) - 1 : sizeof(kBinary) - 1;
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(&chosen, out_length, ours, ours_length, offered, offered_length) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

// A certificate's time as Unix seconds; 0 when there is none.
int64_t UnixSeconds(const ASN1_TIME* time) {
  struct tm tm {};
  if (time == nullptr || ASN1_TIME_to_tm(time, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

std::string Utc(int64_t unix_seconds) {
  return absl::FormatTime(absl::FromUnixSeconds(unix_seconds), absl::UTCTimeZone());
}

}  // namespace

absl::StatusOr<ClientAuth> ParseClientAuth(absl::string_view text) {
  if (text == "none") return ClientAuth::kNone;
  if (text == "optional") return ClientAuth::kOptional;
  if (text == "require") return ClientAuth::kRequire;
  return absl::InvalidArgumentError(
      absl::StrCat("--tls-client-auth must be none, optional or require, not '", text, "'"));
}

absl::Status TlsOptions::Validate() const {
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both (the certificate and its private key)");
  }
  if (cert_file.empty() && (!ca_file.empty() || client_auth != ClientAuth::kNone)) {
    return absl::InvalidArgumentError(
        "--tls-ca and --tls-client-auth need TLS on: give --tls-cert and --tls-key too");
  }
  if (!crl_file.empty() && ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-crl needs --tls-ca: the revocation lists are of the CAs client certificates "
        "chain to");
  }
  if (client_auth != ClientAuth::kNone && ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-auth=optional|require needs --tls-ca: the CA client certificates must "
        "chain to");
  }
  return ValidateCiphersuites(ciphersuites);
}

absl::Status ValidateCiphersuites(absl::string_view list) {
  const std::vector<absl::string_view> known = absl::StrSplit(kDefaultCiphersuites, ':');
  const std::string known_text = absl::StrJoin(known, ", ");
  if (list.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-ciphersuites is empty: name at least one of ", known_text));
  }
  std::vector<absl::string_view> seen;
  for (absl::string_view name : absl::StrSplit(list, ':')) {
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls-ciphersuites '", list, "': an empty name (a ':' at an end, or two in a row)"));
    }
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls-ciphersuites '", list, "': '", name, "' is not one of the TLS 1.3 suites ",
          known_text, " (names separated by ':', in the server's order of preference)"));
    }
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ciphersuites '", list, "': '", name, "' is named twice"));
    }
    seen.push_back(name);
  }
  return absl::OkStatus();
}

namespace {

// With --tls-crl the handshake asks for a revocation list of the CA of
// every client certificate: each CA of the cluster CA file (--peer-tls-ca)
// must have one in store (from --tls-crl or --peer-tls-crl).
absl::Status CheckCrlsCover(X509_STORE* store, const std::string& peer_ca_file) {
  BIO* bio = BIO_new_file(peer_ca_file.c_str(), "r");
  if (bio == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--peer-tls-ca ", peer_ca_file, ": ", TakeOpenSslErrors("cannot read it")));
  }
  absl::Status status;
  while (X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    bool found = false;
    STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(store);
    for (int i = 0; i < sk_X509_OBJECT_num(objects) && !found; ++i) {
      const X509_OBJECT* object = sk_X509_OBJECT_value(objects, i);
      if (X509_OBJECT_get_type(object) != X509_LU_CRL) continue;
      // Issued by this CA: its name, and signed with its key (two CAs may
      // share a name).
      X509_CRL* crl = X509_OBJECT_get0_X509_CRL(object);
      found = X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) == 0 &&
              X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1;
    }
    if (!found && status.ok()) {
      char name[256];
      X509_NAME_oneline(X509_get_subject_name(ca), name, sizeof(name));
      status = absl::InvalidArgumentError(absl::StrCat(
          "--tls-crl: no revocation list of the cluster CA ", name, " (--peer-tls-ca ",
          peer_ca_file, "): with revocation lists the handshake asks for one of every client "
          "certificate's CA, so no peer could connect; give --peer-tls-crl (a list that revokes "
          "nothing will do: tools/make-certs.sh DIR revoke, with no name, writes DIR/crl.pem)"));
    }
    X509_free(ca);
  }
  ERR_clear_error();  // the end of the file reads as an error
  BIO_free(bio);
  return status;
}

}  // namespace

void TlsContext::CtxFree::operator()(ssl_ctx_st* ctx) const { SSL_CTX_free(ctx); }

TlsContext::~TlsContext() = default;

absl::StatusOr<std::unique_ptr<TlsContext>> TlsContext::Create(const TlsOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  std::unique_ptr<TlsContext> context(new TlsContext(options));
  if (absl::Status status = context->Reload(); !status.ok()) return status;
  return context;
}

absl::StatusOr<TlsContext::CtxPtr> TlsContext::Build(Validity* validity) const {
  ERR_clear_error();
  CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) return absl::InternalError(TakeOpenSslErrors("SSL_CTX_new failed"));
  SSL_CTX_set_min_proto_version(ctx.get(),
                                options_.allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // The list was checked by Validate (ValidateCiphersuites).
  if (SSL_CTX_set_ciphersuites(ctx.get(), options_.ciphersuites.c_str()) != 1) {
    return absl::InternalError(TakeOpenSslErrors("SSL_CTX_set_ciphersuites failed"));
  }
  // TLS 1.2 (--tls-min-version=1.2): forward-secret AEAD suites only, the
  // same ciphers as 1.3's default; not OpenSSL's default list, which keeps
  // CBC suites with SHA-1 MACs.
  if (SSL_CTX_set_cipher_list(ctx.get(), "ECDHE+AESGCM:ECDHE+CHACHA20") != 1) {
    return absl::InternalError(TakeOpenSslErrors("SSL_CTX_set_cipher_list failed"));
  }
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), options_.cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-cert ", options_.cert_file, ": ", TakeOpenSslErrors("cannot read the certificate")));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), options_.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", options_.key_file, ": ", TakeOpenSslErrors("cannot read the private key")));
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", options_.key_file, " is not the key of --tls-cert ",
                     options_.cert_file, ": ", TakeOpenSslErrors("they do not match")));
  }
  if (!options_.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), options_.ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ca ", options_.ca_file, ": ",
                       TakeOpenSslErrors("cannot read the CA certificates")));
    }
    if (!options_.crl_file.empty()) {
      // Client certificates are checked against the lists (the leaf's
      // issuer must have one); reread with the rest on SIGHUP.
      if (!protocol::LoadCrlFile(SSL_CTX_get_cert_store(ctx.get()), options_.crl_file)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls-crl ", options_.crl_file, ": ",
                         TakeOpenSslErrors("cannot read the revocation list")));
      }
    }
    // The CA names the server asks client certificates of.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options_.ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ctx.get(), names);
    }
  }
  if (!options_.peer_ca_file.empty()) {
    // Peers' certificates verify too (and are asked for, below).
    if (SSL_CTX_load_verify_locations(ctx.get(), options_.peer_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("--peer-tls-ca ", options_.peer_ca_file,
                                                     ": ", TakeOpenSslErrors("cannot read it")));
    }
    STACK_OF(X509_NAME)* names = SSL_CTX_get_client_CA_list(ctx.get());
    if (names == nullptr) {
      names = sk_X509_NAME_new_null();
      SSL_CTX_set_client_CA_list(ctx.get(), names);
    }
    SSL_add_file_cert_subjects_to_stack(names, options_.peer_ca_file.c_str());
    // With --tls-crl the handshake checks every client certificate's
    // issuer for a list: the cluster CA's must be there too. (Without it,
    // --peer-tls-crl is checked at the ClusterHello, VerifyPeer.)
    if (!options_.crl_file.empty() && !options_.peer_crl_file.empty() &&
        !protocol::LoadCrlFile(SSL_CTX_get_cert_store(ctx.get()), options_.peer_crl_file)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--peer-tls-crl ", options_.peer_crl_file, ": ",
                       TakeOpenSslErrors("cannot read the revocation list")));
    }
    // Without a list of a cluster CA no peer could connect, and only the
    // peers would say why.
    if (!options_.crl_file.empty()) {
      if (absl::Status covered =
              CheckCrlsCover(SSL_CTX_get_cert_store(ctx.get()), options_.peer_ca_file);
          !covered.ok()) {
        return covered;
      }
    }
  }
  int mode = SSL_VERIFY_NONE;
  if (options_.client_auth == ClientAuth::kOptional || !options_.peer_ca_file.empty()) {
    mode = SSL_VERIFY_PEER;
  }
  if (options_.client_auth == ClientAuth::kRequire) {
    mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  }
  SSL_CTX_set_verify(ctx.get(), mode, nullptr);
  // Resumed sessions of verified clients need a context to be resumable in.
  static const unsigned char kSessionContext[] = "logkv";
  SSL_CTX_set_session_id_context(ctx.get(), kSessionContext, sizeof(kSessionContext) - 1);
  SSL_CTX_set_alpn_select_cb(ctx.get(), SelectAlpn, nullptr);
  // SSL_write takes the whole buffer at once into the memory BIO; answers are
  // appended to a std::string that may move between calls.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Read-ahead: OpenSSL takes what a socket read brought into its record
  // buffer in one BIO call, not a header and then a body per record; the
  // records it holds still undecrypted count in has_more().
  SSL_CTX_set_read_ahead(ctx.get(), 1);
  *validity = Validity{};
  if (X509* certificate = SSL_CTX_get0_certificate(ctx.get()); certificate != nullptr) {
    validity->not_before = UnixSeconds(X509_get0_notBefore(certificate));
    validity->not_after = UnixSeconds(X509_get0_notAfter(certificate));
  }
  return ctx;
}

void TlsContext::StoreFree::operator()(x509_store_st* store) const { X509_STORE_free(store); }

absl::StatusOr<TlsContext::StorePtr> TlsContext::BuildPeerStore() const {
  if (options_.peer_ca_file.empty()) return StorePtr();
  ERR_clear_error();
  StorePtr store(X509_STORE_new());
  if (store == nullptr) return absl::InternalError(TakeOpenSslErrors("X509_STORE_new failed"));
  if (X509_STORE_load_file(store.get(), options_.peer_ca_file.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--peer-tls-ca ", options_.peer_ca_file, ": ", TakeOpenSslErrors("cannot read it")));
  }
  if (!options_.peer_crl_file.empty() &&
      !protocol::LoadCrlFile(store.get(), options_.peer_crl_file)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-tls-crl ", options_.peer_crl_file, ": ",
                     TakeOpenSslErrors("cannot read the revocation list")));
  }
  return store;
}

absl::Status TlsContext::Reload() {
  Validity validity;
  absl::StatusOr<CtxPtr> ctx = Build(&validity);
  if (!ctx.ok()) return ctx.status();
  // A certificate that has expired, or is not valid yet, does not replace
  // one valid now: every client would refuse it. (At the start there is
  // none to keep: the node starts, and says so.)
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const int64_t in_use_from = not_before_.load(std::memory_order_relaxed);
  const int64_t in_use_until = not_after_.load(std::memory_order_relaxed);
  if ((validity.not_after < now || validity.not_before > now) && in_use_from <= now &&
      in_use_until >= now) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the certificate in ", options_.cert_file,
        validity.not_after < now ? " expired at " : " is not valid before ",
        Utc(validity.not_after < now ? validity.not_after : validity.not_before),
        " and clients would refuse it; the one in use is valid until ", Utc(in_use_until)));
  }
  absl::StatusOr<StorePtr> peer_store = BuildPeerStore();
  if (!peer_store.ok()) return peer_store.status();
  {
    absl::MutexLock lock(&mu_);
    ctx_ = *std::move(ctx);
    peer_store_ = *std::move(peer_store);
  }
  not_before_.store(validity.not_before, std::memory_order_relaxed);
  not_after_.store(validity.not_after, std::memory_order_relaxed);
  return absl::OkStatus();
}

bool TlsContext::VerifyPeer(TlsStream* stream) const {
  X509_STORE* store = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (peer_store_ != nullptr && X509_STORE_up_ref(peer_store_.get()) == 1) {
      store = peer_store_.get();
    }
  }
  // Verified outside the lock: a reload meanwhile frees its reference only.
  const bool verified = stream->PeerVerified(store);
  X509_STORE_free(store);
  return verified;
}

ssl_st* TlsContext::NewSsl(bool http) const {
  SSL* ssl;
  {
    absl::MutexLock lock(&mu_);
    ssl = SSL_new(ctx_.get());  // holds a reference to the context it was made from
  }
  if (ssl == nullptr) {
    ERR_clear_error();  // nothing may stay queued on a loop thread (TlsStream::Read)
    return nullptr;
  }
  SSL_set_app_data(ssl, http ? reinterpret_cast<void*>(1) : nullptr);
  SSL_set_accept_state(ssl);
  return ssl;
}

// ---- TlsStream ----------------------------------------------------------------

TlsStream::TlsStream(ssl_st* ssl) : ssl_(ssl) {
  if (!protocol::AttachTlsBio(ssl_, &buffers_)) Abandon("cannot make a BIO");
}

TlsStream::~TlsStream() { SSL_free(ssl_); }

bool TlsStream::LooksLikeTls(const char* data, size_t size) {
  // A handshake record (22) of a TLS 1.x record version (3, x).
  if (size == 0 || static_cast<unsigned char>(data[0]) != 0x16) return false;
  return size < 2 || static_cast<unsigned char>(data[1]) == 0x03;
}

void TlsStream::Feed(const char* data, size_t size) {
  started_ = true;
  buffers_.Feed(data, size);
}

bool TlsStream::has_more() const {
  // SSL_has_pending, not SSL_pending: with read-ahead, records taken into
  // OpenSSL's buffer and not yet decrypted are as good as unread ones.
  return SSL_has_pending(ssl_) == 1 || buffers_.unread() > 0;
}

void TlsStream::Fail() {
  failed_ = true;
  std::string reason = TakeOpenSslErrors("");
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    reason = absl::StrCat("client certificate: ", X509_verify_cert_error_string(verify),
                          reason.empty() ? "" : " (", reason, reason.empty() ? "" : ")");
  }
  error_ = reason.empty() ? "connection closed in the middle of a TLS record" : reason;
}

int TlsStream::Handshake() {
  if (handshake_done_) return 1;
  if (failed_) return -1;
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    return 1;
  }
  const int error = SSL_get_error(ssl_, rc);
  if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return 0;
  Fail();
  return -1;
}

// Read and Write do not clear the thread's OpenSSL error queue first (as
// SSL_get_error wants it empty): that costs as much as a small record's
// cipher, and every OpenSSL call on the loops that can queue an error takes
// it off again (Fail, PeerVerified, NewSsl, the handshake's ERR_clear_error).
ssize_t TlsStream::Read(char* buffer, size_t size) {
  if (failed_) return kFailed;
  const int rc = SSL_read(ssl_, buffer, static_cast<int>(std::min<size_t>(size, 1u << 30)));
  if (rc > 0) return rc;
  const int error = SSL_get_error(ssl_, rc);
  if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return 0;
  if (error == SSL_ERROR_ZERO_RETURN) return kPeerClosed;
  Fail();
  return kFailed;
}

bool TlsStream::Write(absl::string_view plaintext) {
  if (failed_) return false;
  while (!plaintext.empty()) {
    const int chunk = static_cast<int>(std::min<size_t>(plaintext.size(), 1u << 30));
    const int rc = SSL_write(ssl_, plaintext.data(), chunk);
    if (rc <= 0) {
      Fail();
      return false;
    }
    plaintext.remove_prefix(static_cast<size_t>(rc));
  }
  return true;
}

void TlsStream::Shutdown() {
  if (!handshake_done_ || failed_) return;
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

void TlsStream::DrainTo(std::string* out) {
  if (buffers_.out.empty()) return;
  if (out->empty()) {
    // No copy: the buffers trade places (and each keeps its capacity).
    out->swap(buffers_.out);
  } else {
    out->append(buffers_.out);
    buffers_.out.clear();
  }
}

bool TlsStream::PeerVerified(x509_store_st* store) {
  if (store == nullptr) {
    error_ = "no cluster CA (--peer-tls-ca)";
    return false;
  }
  X509* certificate = SSL_get1_peer_certificate(ssl_);
  if (certificate == nullptr) {
    error_ = "no client certificate (--peer-tls-cert)";
    return false;
  }
  X509_STORE_CTX* context = X509_STORE_CTX_new();
  bool verified = false;
  if (context != nullptr &&
      X509_STORE_CTX_init(context, store, certificate, SSL_get_peer_cert_chain(ssl_)) == 1) {
    verified = X509_verify_cert(context) == 1;
    if (!verified) {
      const int error = X509_STORE_CTX_get_error(context);
      error_ = error == X509_V_ERR_CERT_REVOKED
                   ? std::string("its certificate is revoked (--peer-tls-crl)")
                   : absl::StrCat("its certificate does not chain to --peer-tls-ca: ",
                                  X509_verify_cert_error_string(error));
    }
  } else {
    error_ = "cannot verify its certificate";
  }
  X509_STORE_CTX_free(context);
  X509_free(certificate);
  ERR_clear_error();
  return verified;
}

bool TlsStream::PeerNames(const std::string& host) const {
  X509* certificate = SSL_get1_peer_certificate(ssl_);
  if (certificate == nullptr) return false;
  const bool named = X509_check_ip_asc(certificate, host.c_str(), 0) == 1 ||
                     X509_check_host(certificate, host.data(), host.size(), 0, nullptr) == 1;
  X509_free(certificate);
  return named;
}

std::string TlsStream::alpn() const {
  const unsigned char* name = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl_, &name, &length);
  return std::string(reinterpret_cast<const char*>(name), length);
}

}  // namespace logkv::server::net
