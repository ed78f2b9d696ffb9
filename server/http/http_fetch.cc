#include "server/http/http_fetch.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "protocol/openssl_errors.h"

namespace logkv::server::http {

namespace {

// Closes the descriptor when the fetch ends, whichever way.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

struct ParseState {
  FetchedResponse response;
  bool in_value = false;  // the last header callback was for a value
  size_t max_bytes = 0;
  bool complete = false;
  bool too_large = false;
};

// Waits (bounded by deadline) until fd is ready for events.
absl::Status WaitFor(int fd, short events, absl::Time deadline, absl::string_view what) {
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) return absl::DeadlineExceededError(absl::StrCat("no answer: ", what));
    pollfd pfd{fd, events, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(left_ms));
    if (ready > 0) return absl::OkStatus();
    if (ready < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
    }
  }
}

// Keeps SIGPIPE blocked on this thread while it lives, and takes back a
// SIGPIPE a write raised meanwhile. OpenSSL's socket BIO writes with plain
// write(2), so a node that closed under a request would end the calling
// process (the CLI, a test) where the plaintext path, which sends with
// MSG_NOSIGNAL, fails with EPIPE. A library must not change the process's
// disposition; a thread's mask is its own.
class SigpipeBlockedOnThisThread {
 public:
  SigpipeBlockedOnThisThread() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t before;
    was_blocked_ =
        pthread_sigmask(SIG_BLOCK, &pipe_, &before) != 0 || sigismember(&before, SIGPIPE) == 1;
  }
  SigpipeBlockedOnThisThread(const SigpipeBlockedOnThisThread&) = delete;
  SigpipeBlockedOnThisThread& operator=(const SigpipeBlockedOnThisThread&) = delete;
  ~SigpipeBlockedOnThisThread() {
    if (was_blocked_) return;  // the caller's to handle, as before
    sigset_t pending;
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
      const timespec now{};
      while (sigtimedwait(&pipe_, nullptr, &now) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_UNBLOCK, &pipe_, nullptr);
  }

 private:
  sigset_t pipe_;
  bool was_blocked_ = false;
};

// The TLS side of a fetch: a client SSL on the socket, driven with poll.
class TlsChannel {
 public:
  ~TlsChannel() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
  }

  // The handshake with the node at host (where: host:port, for messages).
  absl::Status Start(int fd, const std::string& host, const std::string& where,
                     const FetchRequest& fetch, absl::Time deadline) {
    ERR_clear_error();
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr) return Failed("TLS", protocol::TakeOpenSslErrors("SSL_CTX_new failed"));
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    const bool loaded =
        fetch.tls_ca_file.empty()
            ? SSL_CTX_set_default_verify_paths(ctx_) == 1
            : SSL_CTX_load_verify_locations(ctx_, fetch.tls_ca_file.c_str(), nullptr) == 1;
    if (!loaded) {
      return Failed(absl::StrCat("TLS: cannot read the CA file ", fetch.tls_ca_file),
                    protocol::TakeOpenSslErrors(""));
    }
    if (!fetch.tls_cert_file.empty() &&
        (SSL_CTX_use_certificate_chain_file(ctx_, fetch.tls_cert_file.c_str()) != 1 ||
         SSL_CTX_use_PrivateKey_file(ctx_, fetch.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
         SSL_CTX_check_private_key(ctx_) != 1)) {
      return Failed(absl::StrCat("TLS: cannot use the client certificate ", fetch.tls_cert_file,
                                 " and key ", fetch.tls_key_file),
                    protocol::TakeOpenSslErrors(""));
    }
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd) != 1) {
      return Failed("TLS", protocol::TakeOpenSslErrors("SSL_new failed"));
    }
    static const unsigned char kAlpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(ssl_, kAlpn, sizeof(kAlpn) - 1);
    const std::string& name = fetch.tls_server_name.empty() ? host : fetch.tls_server_name;
    unsigned char ip[16];
    if (::inet_pton(AF_INET, name.c_str(), ip) == 1 || ::inet_pton(AF_INET6, name.c_str(), ip) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_, name.c_str());
      SSL_set1_host(ssl_, name.c_str());
    }
    while (true) {
      ERR_clear_error();
      const int rc = SSL_connect(ssl_);
      if (rc == 1) return absl::OkStatus();
      const int error = SSL_get_error(ssl_, rc);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        if (absl::Status ready = WaitFor(fd, error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                                         deadline, where);
            !ready.ok()) {
          return ready;
        }
        continue;
      }
      std::string reason = protocol::TakeOpenSslErrors("the node closed the connection");
      const long verify = SSL_get_verify_result(ssl_);
      if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        reason = absl::StrCat("its certificate does not name '", name,
                              "': use a name or address in it (or --tls-server-name)");
      } else if (verify != X509_V_OK) {
        reason = absl::StrCat("its certificate: ", X509_verify_cert_error_string(verify),
                              fetch.tls_ca_file.empty()
                                  ? std::string(" (give the CA that signed it: --cacert)")
                                  : absl::StrCat(" (--cacert ", fetch.tls_ca_file, ")"));
      } else if (reason.find("certificate required") != std::string::npos) {
        reason += ": the node requires a client certificate (--cert and --tls-key)";
      } else if (reason.find("wrong version number") != std::string::npos ||
                 reason.find("packet length too long") != std::string::npos) {
        reason += ": the node did not answer in TLS (an http:// port?)";
      }
      return absl::UnavailableError(absl::StrCat("TLS with ", where, " failed: ", reason));
    }
  }

  // Like send(2) and recv(2) on the non-blocking socket: > 0 bytes, or -1
  // with errno EAGAIN (*wants says which readiness to wait for) or another
  // error; recv 0 at the end of the stream.
  ssize_t Send(const char* data, size_t size, short* wants) {
    ERR_clear_error();
    const int rc = SSL_write(ssl_, data, static_cast<int>(size));
    return rc > 0 ? rc : Retry(rc, wants);
  }
  ssize_t Recv(char* data, size_t size, short* wants) {
    ERR_clear_error();
    const int rc = SSL_read(ssl_, data, static_cast<int>(size));
    if (rc > 0) return rc;
    if (SSL_get_error(ssl_, rc) == SSL_ERROR_ZERO_RETURN) return 0;
    return Retry(rc, wants);
  }
  // Plaintext OpenSSL holds already (no need to wait for the socket).
  bool pending() const { return SSL_pending(ssl_) > 0; }

 private:
  static absl::Status Failed(const std::string& what, const std::string& why) {
    return absl::UnavailableError(why.empty() ? what : absl::StrCat(what, ": ", why));
  }
  ssize_t Retry(int rc, short* wants) {
    const int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      *wants = error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      errno = EAGAIN;
      return -1;
    }
    ERR_clear_error();
    errno = ECONNRESET;
    return -1;
  }

  // Declared first: unblocked after the SSL is freed.
  SigpipeBlockedOnThisThread no_sigpipe_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};

}  // namespace

absl::StatusOr<FetchedResponse> HttpGet(const std::string& host, int port,
                                        absl::string_view target, absl::Duration timeout,
                                        size_t max_bytes) {
  FetchRequest request;
  request.target = std::string(target);
  request.headers.emplace_back("Accept", "application/json");
  request.timeout = timeout;
  request.max_bytes = max_bytes;
  return HttpFetch(host, port, request);
}

absl::StatusOr<FetchedResponse> HttpFetch(const std::string& host, int port,
                                          const FetchRequest& fetch) {
  const size_t max_bytes = fetch.max_bytes;
  const absl::Time deadline = absl::Now() + fetch.timeout;
  const std::string where = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  ScopedFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) {
    ::freeaddrinfo(found);
    return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  const int connected = ::connect(fd.get(), found->ai_addr, found->ai_addrlen);
  ::freeaddrinfo(found);
  if (connected != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", where, ": ",
                                               std::strerror(errno)));
  }
  if (absl::Status ready = WaitFor(fd.get(), POLLOUT, deadline, where); !ready.ok()) return ready;
  int error = 0;
  socklen_t length = sizeof(error);
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", where, ": ",
                                               std::strerror(error)));
  }
  std::unique_ptr<TlsChannel> tls;
  if (fetch.tls) {
    tls = std::make_unique<TlsChannel>();
    if (absl::Status started = tls->Start(fd.get(), host, where, fetch, deadline); !started.ok()) {
      return started;
    }
  }
  // What to wait for before the next send or recv (TLS may want the other).
  short send_wants = POLLOUT;
  short recv_wants = POLLIN;
  auto send_some = [&](const char* data, size_t size) -> ssize_t {
    send_wants = POLLOUT;
    return tls != nullptr ? tls->Send(data, size, &send_wants)
                          : ::send(fd.get(), data, size, MSG_NOSIGNAL);
  };
  auto recv_some = [&](char* data, size_t size) -> ssize_t {
    recv_wants = POLLIN;
    return tls != nullptr ? tls->Recv(data, size, &recv_wants) : ::recv(fd.get(), data, size, 0);
  };
  std::string request = absl::StrCat(fetch.method, " ", fetch.target, " HTTP/1.1\r\nHost: ", where,
                                     "\r\nConnection: close\r\nContent-Length: ",
                                     fetch.body.size(), "\r\n");
  for (const auto& [name, value] : fetch.headers) absl::StrAppend(&request, name, ": ", value, "\r\n");
  absl::StrAppend(&request, "\r\n", fetch.body);
  size_t sent = 0;
  while (sent < request.size()) {
    if (absl::Status ready = WaitFor(fd.get(), send_wants, deadline, where); !ready.ok()) {
      return ready;
    }
    const ssize_t n = send_some(request.data() + sent, request.size() - sent);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("sending to ", where, ": ", std::strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }

  ParseState state;
  state.max_bytes = max_bytes;
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_body = [](llhttp_t* parser, const char* at, size_t length) -> int {
    auto* s = static_cast<ParseState*>(parser->data);
    if (s->response.body.size() + length > s->max_bytes) {
      s->too_large = true;
      return -1;
    }
    s->response.body.append(at, length);
    return 0;
  };
  settings.on_header_field = [](llhttp_t* parser, const char* at, size_t length) -> int {
    auto* s = static_cast<ParseState*>(parser->data);
    if (s->response.headers.empty() || s->in_value) s->response.headers.emplace_back();
    s->in_value = false;
    for (size_t i = 0; i < length; ++i) {
      s->response.headers.back().first.push_back(absl::ascii_tolower(at[i]));
    }
    return 0;
  };
  settings.on_header_value = [](llhttp_t* parser, const char* at, size_t length) -> int {
    auto* s = static_cast<ParseState*>(parser->data);
    if (s->response.headers.empty()) return 0;
    s->in_value = true;
    s->response.headers.back().second.append(at, length);
    return 0;
  };
  settings.on_message_complete = [](llhttp_t* parser) -> int {
    auto* s = static_cast<ParseState*>(parser->data);
    s->response.status = parser->status_code;
    s->complete = true;
    return static_cast<int>(HPE_PAUSED);
  };
  llhttp_t parser;
  llhttp_init(&parser, HTTP_RESPONSE, &settings);
  parser.data = &state;
  char buffer[16 << 10];
  while (!state.complete) {
    if (tls == nullptr || !tls->pending()) {
      if (absl::Status ready = WaitFor(fd.get(), recv_wants, deadline, where); !ready.ok()) {
        return ready;
      }
    }
    const ssize_t n = recv_some(buffer, sizeof(buffer));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) {
      return absl::UnavailableError(absl::StrCat("reading from ", where, ": ", std::strerror(errno)));
    }
    const llhttp_errno_t rc =
        n == 0 ? llhttp_finish(&parser) : llhttp_execute(&parser, buffer, static_cast<size_t>(n));
    if (state.too_large) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the answer of ", where, " passes ", max_bytes, " bytes"));
    }
    if (rc != HPE_OK && rc != HPE_PAUSED) {
      return absl::UnavailableError(absl::StrCat(where, " did not answer in HTTP (",
                                                 llhttp_errno_name(rc), ")"));
    }
    if (n == 0 && !state.complete) {
      return absl::UnavailableError(absl::StrCat(where, " closed the connection mid-answer"));
    }
  }
  return std::move(state.response);
}

}  // namespace logkv::server::http
