// An OpenSSL BIO for TLS driven by an event loop, used in place of a pair of
// memory BIOs by logkvd's listeners (server/net/tls.cc), the control plane's
// Raft transport and logkv-bench. Two memory BIOs cost a copy each way (the
// socket's bytes into the input BIO, the output BIO's bytes into the buffer
// handed to the socket) and a zero-fill of that buffer; this one reads the
// ciphertext straight from the buffer the socket read into, and appends what
// OpenSSL writes straight to the string the socket is written from.
//
// Use: TlsBioBuffers lives as long as the SSL (next to it); Attach gives the
// SSL one BIO as both its read and write BIO. Per socket read: Feed the
// bytes, run SSL_read / SSL_do_handshake until they want more, then
// KeepUnread before the read buffer is reused (what OpenSSL has not read yet
// is copied, which only happens when the caller stopped early). Written
// ciphertext accumulates in `out`.
//
// Header-only: its users link OpenSSL themselves. Thread-safety: one
// TlsBioBuffers per connection, used by one thread at a time.
#ifndef LOGKV_PROTOCOL_TLS_BIO_H_
#define LOGKV_PROTOCOL_TLS_BIO_H_

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"

namespace logkv::protocol {

struct TlsBioBuffers {
  // Ciphertext OpenSSL wrote, for the socket.
  std::string out;

  // Ciphertext just read, borrowed until KeepUnread.
  void Feed(const char* data, size_t size) {
    KeepUnread();  // a caller that did not: nothing borrowed may outlive its read
    borrowed = absl::string_view(data, size);
  }
  // Copies what OpenSSL has not read of the borrowed bytes.
  void KeepUnread() {
    if (borrowed.empty()) return;
    if (kept_at == kept.size()) {
      kept.clear();
      kept_at = 0;
    }
    kept.append(borrowed.data(), borrowed.size());
    borrowed = {};
  }
  // Ciphertext fed and not yet read by OpenSSL.
  size_t unread() const { return kept.size() - kept_at + borrowed.size(); }

  // Reads up to size bytes for OpenSSL: 0 when nothing is waiting.
  size_t Take(char* into, size_t size) {
    size_t taken = 0;
    if (kept_at < kept.size()) {
      taken = std::min(size, kept.size() - kept_at);
      std::memcpy(into, kept.data() + kept_at, taken);
      kept_at += taken;
      if (kept_at == kept.size()) {
        kept.clear();
        kept_at = 0;
      }
    }
    if (taken < size && !borrowed.empty()) {
      const size_t more = std::min(size - taken, borrowed.size());
      std::memcpy(into + taken, borrowed.data(), more);
      borrowed.remove_prefix(more);
      taken += more;
    }
    return taken;
  }

  absl::string_view borrowed;
  std::string kept;
  size_t kept_at = 0;
};

namespace tls_bio_internal {

inline int Write(BIO* bio, const char* data, size_t size, size_t* written) {
  BIO_clear_retry_flags(bio);
  static_cast<TlsBioBuffers*>(BIO_get_data(bio))->out.append(data, size);
  *written = size;
  return 1;
}

inline int Read(BIO* bio, char* into, size_t size, size_t* read) {
  BIO_clear_retry_flags(bio);
  const size_t taken = static_cast<TlsBioBuffers*>(BIO_get_data(bio))->Take(into, size);
  if (taken == 0) {
    BIO_set_retry_read(bio);  // more is to come: not the end of the stream
    *read = 0;
    return 0;
  }
  *read = taken;
  return 1;
}

inline long Ctrl(BIO* bio, int command, long /*number*/, void* /*pointer*/) {
  const auto* buffers = static_cast<const TlsBioBuffers*>(BIO_get_data(bio));
  switch (command) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING:
      return static_cast<long>(buffers->unread());
    case BIO_CTRL_WPENDING:
      return static_cast<long>(buffers->out.size());
    case BIO_CTRL_GET_CLOSE:
      return BIO_get_shutdown(bio);
    case BIO_CTRL_SET_CLOSE:
      return 1;
    default:
      return 0;
  }
}

inline int Create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

inline const BIO_METHOD* Method() {
  static const BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "logkv loop");
    BIO_meth_set_write_ex(m, &Write);
    BIO_meth_set_read_ex(m, &Read);
    BIO_meth_set_ctrl(m, &Ctrl);
    BIO_meth_set_create(m, &Create);
    return m;
  }();
  return method;
}

}  // namespace tls_bio_internal

// Gives ssl one BIO over buffers as both its read and its write BIO (the SSL
// owns it). false when OpenSSL could not make it.
inline bool AttachTlsBio(SSL* ssl, TlsBioBuffers* buffers) {
  BIO* bio = BIO_new(tls_bio_internal::Method());
  if (bio == nullptr) return false;
  BIO_set_data(bio, buffers);
  SSL_set_bio(ssl, bio, bio);  // one reference, for both directions
  return true;
}

}  // namespace logkv::protocol

#endif  // LOGKV_PROTOCOL_TLS_BIO_H_
