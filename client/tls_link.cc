#include "tls_link.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "protocol/openssl_errors.h"

namespace logkv::client_internal {

namespace {

using ::logkv::protocol::TakeOpenSslErrors;

// What a TLS failure means for the user, from OpenSSL's reason text.
std::string Explain(const std::string& reason) {
  if (absl::StrContains(reason, "certificate required")) {
    return absl::StrCat(reason, ": the node requires a client certificate (--cert and --key)");
  }
  if (absl::StrContains(reason, "unknown ca") || absl::StrContains(reason, "bad certificate")) {
    return absl::StrCat(reason, ": the node does not trust the client certificate (--cert): "
                                "use one signed by the CA of its --tls-ca");
  }
  if (absl::StrContains(reason, "certificate revoked")) {
    return absl::StrCat(reason, ": the node refused the client certificate (--cert): it has "
                                "been revoked, use another");
  }
  if (absl::StrContains(reason, "certificate expired")) {
    return absl::StrCat(reason, ": the node refused the client certificate (--cert): it has "
                                "expired, renew it");
  }
  if (absl::StrContains(reason, "wrong version number") ||
      absl::StrContains(reason, "packet length too long") ||
      absl::StrContains(reason, "record layer failure")) {
    return absl::StrCat(reason, ": the node did not answer in TLS: is that port plaintext "
                                "(connect without --tls)?");
  }
  if (absl::StrContains(reason, "no application protocol")) {
    return absl::StrCat(reason, ": that port does not speak logkv's binary protocol (an HTTPS "
                                "port?)");
  }
  return reason;
}

std::string ErrnoText(int error) { return std::strerror(error); }

int RemainingMs(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 3600 * 1000));
}

absl::Status SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t sent = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return absl::UnavailableError("send timed out (request_timeout)");
      }
      return absl::UnavailableError(absl::StrCat("send failed: ", ErrnoText(errno)));
    }
    data.remove_prefix(static_cast<size_t>(sent));
  }
  return absl::OkStatus();
}

// Moves the ciphertext OpenSSL wrote into out.
void Drain(SSL* ssl, std::string* out) {
  BIO* bio = SSL_get_wbio(ssl);
  const size_t pending = BIO_ctrl_pending(bio);
  if (pending == 0) return;
  const size_t at = out->size();
  out->resize(at + pending);
  const int read = BIO_read(bio, out->data() + at, static_cast<int>(pending));
  out->resize(at + static_cast<size_t>(read > 0 ? read : 0));
}

bool IsIpAddress(const std::string& host) {
  unsigned char buffer[16];
  return ::inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

// The handshake's failure, with what to do about it.
absl::Status HandshakeError(SSL* ssl, const std::string& name, const TlsSettings& settings) {
  const std::string errors = TakeOpenSslErrors();
  const long verify = SSL_get_verify_result(ssl);
  const std::string ca =
      settings.ca_file.empty() ? std::string("the system's CAs")
                               : absl::StrCat("--cacert ", settings.ca_file);
  switch (verify) {
    case X509_V_OK:
      break;
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return absl::UnavailableError(
          "TLS: the node's certificate has expired: the node must be given a renewed one");
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return absl::UnavailableError(
          "TLS: the node's certificate is not valid yet (check the clocks)");
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return absl::UnavailableError(absl::StrCat(
          "TLS: the node's certificate does not name '", name,
          "': connect by a name or address in its certificate, or check it as another "
          "name (--tls-server-name)"));
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      return absl::UnavailableError(
          absl::StrCat("TLS: the node's certificate is not signed by a CA of ", ca,
                       " (", X509_verify_cert_error_string(verify),
                       "): give the CA that signed it"));
    default:
      return absl::UnavailableError(absl::StrCat("TLS: the node's certificate: ",
                                                 X509_verify_cert_error_string(verify)));
  }
  return absl::UnavailableError(
      absl::StrCat("TLS handshake failed: ",
                   Explain(errors.empty() ? std::string("the node closed the connection")
                                          : errors)));
}

}  // namespace

absl::StatusOr<std::shared_ptr<TlsConfig>> TlsConfig::Create(const TlsSettings& settings) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("TLS: ", TakeOpenSslErrors()));
  std::shared_ptr<TlsConfig> config(new TlsConfig(settings, ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (settings.ca_file.empty()) {
    SSL_CTX_set_default_verify_paths(ctx);
  } else if (SSL_CTX_load_verify_locations(ctx, settings.ca_file.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS: cannot read the CA file ", settings.ca_file, ": ", TakeOpenSslErrors()));
  }
  if (settings.cert_file.empty() != settings.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS: a client certificate needs its key: give both (--cert and --key)");
  }
  if (!settings.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, settings.cert_file.c_str()) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: cannot read the client certificate ",
                                                     settings.cert_file, ": ",
                                                     TakeOpenSslErrors()));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, settings.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: cannot read the client key ",
                                                     settings.key_file, ": ", TakeOpenSslErrors()));
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: ", settings.key_file,
                                                     " is not the key of ", settings.cert_file));
    }
  }
  return config;
}

TlsConfig::~TlsConfig() { SSL_CTX_free(ctx_); }

absl::StatusOr<std::shared_ptr<TlsLink>> TlsLink::Handshake(const TlsConfig& config, int fd,
                                                            const std::string& host,
                                                            absl::Time deadline) {
  ERR_clear_error();
  SSL* ssl = SSL_new(config.ctx());
  if (ssl == nullptr) return absl::InternalError(absl::StrCat("TLS: ", TakeOpenSslErrors()));
  std::shared_ptr<TlsLink> link(new TlsLink(ssl));
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);
  BIO_set_mem_eof_return(out, -1);
  SSL_set_bio(ssl, in, out);
  SSL_set_connect_state(ssl);
  static const unsigned char kAlpn[] = "\x05logkv";
  SSL_set_alpn_protos(ssl, kAlpn, sizeof(kAlpn) - 1);
  const std::string& name =
      config.settings().server_name.empty() ? host : config.settings().server_name;
  if (IsIpAddress(name)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, name.c_str());
    SSL_set1_host(ssl, name.c_str());
  }
  std::string wire;
  char buffer[16 << 10];
  while (true) {
    ERR_clear_error();
    const int rc = SSL_do_handshake(ssl);
    wire.clear();
    Drain(ssl, &wire);
    if (!wire.empty()) {
      if (absl::Status sent = SendAll(fd, wire); !sent.ok()) {
        return absl::UnavailableError(absl::StrCat("TLS handshake: ", sent.message()));
      }
    }
    if (rc == 1) break;
    const int error = SSL_get_error(ssl, rc);
    if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
      return HandshakeError(ssl, name, config.settings());
    }
    pollfd poll_fd{fd, POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, RemainingMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return absl::UnavailableError(absl::StrCat("poll: ", ErrnoText(errno)));
    if (ready == 0) {
      return absl::DeadlineExceededError(
          "TLS handshake not finished in time (connect_timeout): is that port plaintext "
          "(connect without --tls)?");
    }
    const ssize_t received = ::recv(fd, buffer, sizeof(buffer), 0);
    if (received == 0) {
      return absl::UnavailableError(
          "the node closed the connection during the TLS handshake (is its port TLS?)");
    }
    if (received < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(absl::StrCat("recv: ", ErrnoText(errno)));
    }
    // Plaintext logkvd answers a TLS ClientHello with a frame, not a record.
    if (!SSL_is_init_finished(ssl) && BIO_ctrl_pending(in) == 0 &&
        static_cast<unsigned char>(buffer[0]) != 0x16 &&
        static_cast<unsigned char>(buffer[0]) != 0x15) {
      return absl::UnavailableError(
          "TLS: the node answered in plaintext: that port does not speak TLS (connect "
          "without --tls)");
    }
    BIO_write(in, buffer, static_cast<int>(received));
  }
  return link;
}

TlsLink::~TlsLink() { SSL_free(ssl_); }

absl::Status TlsLink::Send(int fd, absl::string_view plaintext) {
  thread_local std::string wire;
  wire.clear();
  {
    absl::MutexLock lock(&mu_);
    ERR_clear_error();
    while (!plaintext.empty()) {
      const int chunk = static_cast<int>(std::min<size_t>(plaintext.size(), 1u << 30));
      const int rc = SSL_write(ssl_, plaintext.data(), chunk);
      if (rc <= 0) return absl::UnavailableError(absl::StrCat("TLS: ", TakeOpenSslErrors()));
      plaintext.remove_prefix(static_cast<size_t>(rc));
    }
    Drain(ssl_, &wire);
  }
  absl::Status sent = SendAll(fd, wire);
  // A large frame's buffer is not kept for ever.
  if (wire.capacity() > (1u << 20)) std::string().swap(wire);
  return sent;
}

absl::Status TlsLink::Receive(absl::string_view ciphertext, protocol::FrameDecoder& decoder) {
  absl::MutexLock lock(&mu_);
  BIO* in = SSL_get_rbio(ssl_);
  BIO_write(in, ciphertext.data(), static_cast<int>(ciphertext.size()));
  // Once per batch of records: a successful SSL_read queues no error.
  ERR_clear_error();
  while (true) {
    size_t available = 0;
    char* space = decoder.WritableSpace(16 << 10, &available);
    const int rc =
        SSL_read(ssl_, space, static_cast<int>(std::min<size_t>(available, 1u << 30)));
    if (rc > 0) {
      decoder.Commit(static_cast<size_t>(rc));
      // Another SSL_read would only say it wants more bytes (a pass through
      // OpenSSL's record layer and SSL_get_error): skip it when nothing is left.
      if (SSL_has_pending(ssl_) == 0 && BIO_ctrl_pending(in) == 0) return absl::OkStatus();
      continue;
    }
    const int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return absl::OkStatus();
    if (error == SSL_ERROR_ZERO_RETURN) {
      return absl::UnavailableError("the node closed the connection");
    }
    const std::string errors = TakeOpenSslErrors();
    return absl::UnavailableError(
        absl::StrCat("TLS: ", Explain(errors.empty() ? std::string("connection failed")
                                                     : errors)));
  }
}

}  // namespace logkv::client_internal
