// OpenSSL's queued errors as text, for the servers' TLS (server/net/tls.cc,
// the peer transport) and the client's (client/tls_link.cc): the reasons only
// ("certificate verify failed" of "error:0A000086:SSL routines::certificate
// verify failed"), joined by "; ", with the queue emptied. Header-only: its
// users link OpenSSL themselves.
#ifndef LOGKV_PROTOCOL_OPENSSL_ERRORS_H_
#define LOGKV_PROTOCOL_OPENSSL_ERRORS_H_

#include <openssl/err.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace logkv::protocol {

// fallback when no error was queued.
inline std::string TakeOpenSslErrors(absl::string_view fallback = "") {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    absl::string_view line = buffer;
    if (size_t colon = line.rfind(':'); colon != absl::string_view::npos) {
      line.remove_prefix(colon + 1);
    }
    if (!text.empty()) absl::StrAppend(&text, "; ");
    absl::StrAppend(&text, line);
  }
  return text.empty() ? std::string(fallback) : text;
}

}  // namespace logkv::protocol

#endif  // LOGKV_PROTOCOL_OPENSSL_ERRORS_H_
