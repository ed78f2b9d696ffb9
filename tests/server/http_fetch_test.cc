// HttpFetch over TLS against a node that closes the connection under a
// request: the fetch fails with an error, and the process (the CLI, a test
// harness: programs that leave SIGPIPE at its default) is not killed by the
// SIGPIPE OpenSSL's socket writes raise. Certificates are made at run time
// by tools/make-certs.sh; the server is a thread on a loopback port chosen
// by the kernel.
#include "server/http/http_fetch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace logkv::server::http {
namespace {

// Accepts one connection, completes the TLS handshake, reads nothing and
// closes: a node stopping between the handshake and the request.
class ClosingTlsServer {
 public:
  ClosingTlsServer(const std::string& cert, const std::string& key) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    ok_ = ctx_ != nullptr && SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()) == 1 &&
          SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM) == 1;
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    ok_ = ok_ && listener_ >= 0 &&
          ::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
          ::listen(listener_, 4) == 0 &&
          ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) == 0;
    port_ = ntohs(address.sin_port);
    if (!ok_) return;
    thread_ = std::thread([this] {
      const int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      handshaken_ = SSL_accept(ssl) == 1;
      SSL_free(ssl);
      ::close(fd);
    });
  }
  ~ClosingTlsServer() {
    if (listener_ >= 0) ::shutdown(listener_, SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
    if (listener_ >= 0) ::close(listener_);
    SSL_CTX_free(ctx_);
  }
  bool ok() const { return ok_; }
  int port() const { return port_; }
  bool handshaken() const { return handshaken_; }

 private:
  SSL_CTX* ctx_ = nullptr;
  int listener_ = -1;
  int port_ = 0;
  bool ok_ = false;
  bool handshaken_ = false;
  std::thread thread_;
};

TEST(HttpFetchTest, ANodeClosingUnderATlsRequestFailsTheFetchNotTheProcess) {
  // What a program that never touched SIGPIPE has.
  ASSERT_NE(::signal(SIGPIPE, SIG_DFL), SIG_ERR);
  test::ScopedTempDir dir;
  const std::string script = LOGKV_MAKE_CERTS;
  ASSERT_EQ(std::system((script + " " + dir.path() + " ca >/dev/null 2>&1").c_str()), 0);
  ASSERT_EQ(
      std::system((script + " " + dir.path() + " server node 127.0.0.1 >/dev/null 2>&1").c_str()),
      0);
  for (int round = 0; round < 5; ++round) {
    ClosingTlsServer server(dir.path() + "/node.pem", dir.path() + "/node.key");
    ASSERT_TRUE(server.ok());
    FetchRequest request;
    request.method = "PUT";
    request.target = "/kv/big";
    request.body.assign(16u << 20, 'x');  // written long after the node closed
    request.tls = true;
    request.tls_ca_file = dir.path() + "/ca.pem";
    request.timeout = absl::Seconds(30);
    absl::StatusOr<FetchedResponse> answer = HttpFetch("127.0.0.1", server.port(), request);
    EXPECT_FALSE(answer.ok()) << "round " << round;
  }
  // Still blocked nowhere: the fetch restored this thread's signal mask.
  sigset_t mask;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &mask), 0);
  EXPECT_EQ(sigismember(&mask, SIGPIPE), 0);
}

}  // namespace
}  // namespace logkv::server::http
