// A blocking HTTP/1.1 exchange, for the rare control-plane call that needs
// one (POST /join naming a member by its HTTP URL asks that member for its
// binary-protocol address; the CLI's nodes and leave), over HTTPS when asked
// (FetchRequest::tls, OpenSSL 3 on the socket). The answer is parsed by
// llhttp in response mode; its size and the whole exchange are bounded.
//
// Thread-safety: none needed (no shared state). Blocks the calling thread:
// never call it on a network loop.
#ifndef LOGKV_SERVER_HTTP_HTTP_FETCH_H_
#define LOGKV_SERVER_HTTP_HTTP_FETCH_H_

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace logkv::server::http {

struct FetchedResponse {
  int status = 0;
  std::string body;
  // The answer's headers, names lowercased, in order.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct FetchRequest {
  std::string method = "GET";
  std::string target = "/";
  std::vector<std::pair<std::string, std::string>> headers;  // besides Host, Content-Length
  std::string body;
  absl::Duration timeout = absl::Seconds(5);  // the whole exchange
  size_t max_bytes = 1u << 20;               // of the answer's body
  // HTTPS: the node's certificate must chain to tls_ca_file (empty: the
  // system's CAs) and name tls_server_name (empty: the host dialled); a
  // client certificate and its key for a node that asks for one.
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
};

// The request to http://host:port (https:// with request.tls). Unavailable
// when the host cannot be reached, TLS fails (the message says why: the CA,
// the name, a client certificate wanted) or the answer is not HTTP; DeadlineExceeded past the timeout;
// ResourceExhausted when the answer passes max_bytes.
absl::StatusOr<FetchedResponse> HttpFetch(const std::string& host, int port,
                                          const FetchRequest& request);

// GET http://host:port/target.
absl::StatusOr<FetchedResponse> HttpGet(const std::string& host, int port,
                                        absl::string_view target, absl::Duration timeout,
                                        size_t max_bytes = 1u << 20);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_HTTP_FETCH_H_
