// TlsStream (server/net/tls.h) against an OpenSSL client in memory, with
// certificates made at test time by tools/make-certs.sh: the suite the server
// negotiates, and plaintext delivered whole however the ciphertext is cut
// into socket reads (several records in one read, one record spread over
// many), read the way Loop::OnTlsRead reads it.
#include "server/net/tls.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace logkv::server::net {
namespace {

class TlsStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string certs = dir_.Subdir("certs");
    for (const char* what : {" ca", " server node localhost"}) {
      const std::string command = absl::StrCat(MAKE_CERTS_PATH, " ", certs, what, " >/dev/null 2>&1");
      ASSERT_EQ(std::system(command.c_str()), 0) << command;
    }
    TlsOptions options;
    options.cert_file = certs + "/node.pem";
    options.key_file = certs + "/node.key";
    absl::StatusOr<std::unique_ptr<TlsContext>> context = TlsContext::Create(options);
    ASSERT_TRUE(context.ok()) << context.status();
    context_ = *std::move(context);
    client_ctx_ = SSL_CTX_new(TLS_client_method());
    ASSERT_NE(client_ctx_, nullptr);
    ASSERT_EQ(SSL_CTX_load_verify_locations(client_ctx_, (certs + "/ca.pem").c_str(), nullptr), 1);
    SSL_CTX_set_verify(client_ctx_, SSL_VERIFY_PEER, nullptr);
  }

  void TearDown() override {
    server_.reset();
    SSL_free(client_);
    SSL_CTX_free(client_ctx_);
  }

  // A client (memory BIOs, offering suites, or OpenSSL's default list, which
  // puts TLS_AES_256_GCM_SHA384 first) and the server's stream, handshake done.
  void Connect(const char* suites = nullptr) {
    server_.reset();
    SSL_free(client_);
    client_ = SSL_new(client_ctx_);
    ASSERT_NE(client_, nullptr);
    if (suites != nullptr) {
      ASSERT_EQ(SSL_set_ciphersuites(client_, suites), 1);
    }
    SSL_set_bio(client_, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    SSL_set_connect_state(client_);
    SSL_set_tlsext_host_name(client_, "localhost");
    ASSERT_EQ(SSL_set1_host(client_, "localhost"), 1);
    server_ = std::make_unique<TlsStream>(context_->NewSsl(/*http=*/false));
    for (int round = 0; round < 10; ++round) {
      const int rc = SSL_do_handshake(client_);
      const std::string hello = ClientOutput();
      if (!hello.empty()) {
        server_->Feed(hello.data(), hello.size());
        ASSERT_GE(server_->Handshake(), 0) << server_->error();
        server_->KeepUnread();
      }
      std::string answer;
      server_->DrainTo(&answer);
      BIO_write(SSL_get_rbio(client_), answer.data(), static_cast<int>(answer.size()));
      if (rc == 1 && server_->handshake_done()) return;
    }
    FAIL() << "the handshake did not finish in 10 rounds";
  }

  // Encrypts each message as one SSL_write (one record up to 16 KiB) and
  // returns the ciphertext, in order.
  std::string ClientWrites(std::initializer_list<std::string> messages) {
    for (const std::string& message : messages) {
      EXPECT_EQ(SSL_write(client_, message.data(), static_cast<int>(message.size())),
                static_cast<int>(message.size()));
    }
    return ClientOutput();
  }

  std::string ClientOutput() {
    BIO* out = SSL_get_wbio(client_);
    std::string bytes(BIO_ctrl_pending(out), '\0');
    if (!bytes.empty()) BIO_read(out, bytes.data(), static_cast<int>(bytes.size()));
    return bytes;
  }

  // One socket read of ciphertext, then the plaintext decrypted from it as
  // Loop::OnTlsRead decrypts it (16 KiB of room per Read, no further Read
  // once has_more() says nothing is left). The read buffer is then
  // overwritten, as the loop's next read overwrites it.
  std::string ServerRead(std::string ciphertext) {
    server_->Feed(ciphertext.data(), ciphertext.size());
    std::string plaintext;
    std::string space(16u << 10, '\0');
    for (int reads = 0; reads < 10000; ++reads) {
      const ssize_t got = server_->Read(space.data(), space.size());
      if (got <= 0) {
        EXPECT_EQ(got, 0) << server_->error();
        break;
      }
      plaintext.append(space.data(), static_cast<size_t>(got));
      if (!server_->has_more()) break;
    }
    server_->KeepUnread();
    ciphertext.assign(ciphertext.size(), 'x');
    return plaintext;
  }

  std::string CipherName() const { return SSL_CIPHER_get_name(SSL_get_current_cipher(client_)); }

  ::logkv::test::ScopedTempDir dir_;
  std::unique_ptr<TlsContext> context_;
  SSL_CTX* client_ctx_ = nullptr;
  SSL* client_ = nullptr;
  std::unique_ptr<TlsStream> server_;
};

// docs/tls.md: the server picks by its own order (AES-128-GCM, AES-256-GCM,
// ChaCha20-Poly1305) among the suites the client offers, whatever the
// client's order.
TEST_F(TlsStreamTest, PrefersAes128GcmOverTheClientsOrder) {
  Connect();  // OpenSSL's default order: AES-256-GCM, ChaCha20, AES-128-GCM
  EXPECT_EQ(CipherName(), "TLS_AES_128_GCM_SHA256");
}

TEST_F(TlsStreamTest, PicksInItsOwnOrderAmongTheClientsSuites) {
  Connect("TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384");
  EXPECT_EQ(CipherName(), "TLS_AES_256_GCM_SHA384");
  Connect("TLS_CHACHA20_POLY1305_SHA256");
  EXPECT_EQ(CipherName(), "TLS_CHACHA20_POLY1305_SHA256");
}

// A client's records that arrive in one socket read are all decrypted at
// once: one left in OpenSSL's buffer would wait for a read that may never
// come (the client waits for its answer).
TEST_F(TlsStreamTest, RecordsArrivingTogetherAreAllRead) {
  Connect();
  std::string expected;
  std::string ciphertext;
  for (int i = 0; i < 40; ++i) {
    const std::string message = absl::StrCat("request ", i, std::string(i * 7, 'v'));
    expected += message;
    ciphertext += ClientWrites({message});
  }
  // A full record, then small ones behind it.
  const std::string large(20000, 'L');
  ciphertext += ClientWrites({large, "a", "bc"});
  expected += large + "abc";
  EXPECT_EQ(ServerRead(std::move(ciphertext)), expected);
}

// Records cut anywhere by the socket: every byte is delivered once the rest
// arrives, whatever the cut.
TEST_F(TlsStreamTest, RecordsSpreadOverReadsAreReadWhole) {
  std::string expected;
  for (int i = 0; i < 3000; ++i) absl::StrAppend(&expected, i, ",");
  expected += std::string(40000, 'p');  // three records
  for (const size_t piece : {size_t{1}, size_t{5}, size_t{7}, size_t{1000}, size_t{16389}}) {
    SCOPED_TRACE(absl::StrCat("reads of ", piece, " bytes"));
    Connect();
    const std::string sent = ClientWrites({expected.substr(0, 100), expected.substr(100)});
    std::string received;
    for (size_t at = 0; at < sent.size(); at += piece) received += ServerRead(sent.substr(at, piece));
    EXPECT_EQ(received, expected);
  }
}

// Answers handed to one Write leave as one record (up to 16 KiB of
// plaintext): 5 bytes of header, the content type and a 16-byte tag more.
TEST_F(TlsStreamTest, OneWriteOfABatchIsOneRecord) {
  Connect();
  std::string answers;
  for (int i = 0; i < 16; ++i) answers += std::string(40, static_cast<char>('a' + i));
  ASSERT_TRUE(server_->Write(answers));
  std::string wire;
  server_->DrainTo(&wire);
  EXPECT_EQ(wire.size(), answers.size() + 5 + 1 + 16);
}

}  // namespace
}  // namespace logkv::server::net
