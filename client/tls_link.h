// TLS for the C++ client's connections (ClientOptions::tls), with OpenSSL 3
// through memory BIOs: the client keeps its blocking socket, its one writer
// at a time and its reader thread, and a TlsLink turns frames into records
// and records back into frames. OpenSSL's SSL object is not safe to use
// from the writer and the reader at once, so each call takes the link's
// mutex, which is never held across a system call.
//
// Not installed: an internal part of the client library.
#ifndef LOGKV_CLIENT_TLS_LINK_H_
#define LOGKV_CLIENT_TLS_LINK_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "protocol/frame.h"

struct ssl_st;
struct ssl_ctx_st;

namespace logkv::client_internal {

struct TlsSettings {
  std::string ca_file;      // empty: the system's CAs
  std::string cert_file;    // client certificate (the node asks for one), with key_file
  std::string key_file;
  std::string server_name;  // checked instead of the host dialled when not empty
};

// The certificates of a client, shared by its connections. Thread-safe.
class TlsConfig {
 public:
  // Reads the files; the message names the one that is wrong.
  static absl::StatusOr<std::shared_ptr<TlsConfig>> Create(const TlsSettings& settings);
  ~TlsConfig();
  ssl_ctx_st* ctx() const { return ctx_; }
  const TlsSettings& settings() const { return settings_; }

 private:
  TlsConfig(const TlsSettings& settings, ssl_ctx_st* ctx) : settings_(settings), ctx_(ctx) {}
  const TlsSettings settings_;
  ssl_ctx_st* const ctx_;
};

class TlsLink {
 public:
  // Handshakes over fd (blocking, its sends bounded by SO_SNDTIMEO) with the
  // node at host by deadline, checking its certificate against the CAs and
  // host (or settings().server_name). The errors say what to change: the
  // CA, the name, an expired certificate, a plaintext port.
  static absl::StatusOr<std::shared_ptr<TlsLink>> Handshake(const TlsConfig& config, int fd,
                                                            const std::string& host,
                                                            absl::Time deadline);
  ~TlsLink();

  // Encrypts plaintext and sends it all on fd. The caller serialises sends.
  absl::Status Send(int fd, absl::string_view plaintext) ABSL_LOCKS_EXCLUDED(mu_);
  // Decrypts ciphertext just received into decoder. Errors explain a
  // refusal by the node (no client certificate, one it does not trust, ...).
  absl::Status Receive(absl::string_view ciphertext, protocol::FrameDecoder& decoder)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit TlsLink(ssl_st* ssl) : ssl_(ssl) {}

  absl::Mutex mu_;
  ssl_st* const ssl_;  // used under mu_ once the handshake is done
};

}  // namespace logkv::client_internal

#endif  // LOGKV_CLIENT_TLS_LINK_H_
