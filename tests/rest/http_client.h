// A deliberately small HTTP/1.1 client over a blocking loopback socket, for
// the REST integration tests. It writes whatever bytes a test gives it (so
// malformed, pipelined and chunked requests are possible) and reads answers
// one at a time with a deadline, so a server that hangs fails the test
// instead of blocking it.
#ifndef LOGKV_TESTS_REST_HTTP_CLIENT_H_
#define LOGKV_TESTS_REST_HTTP_CLIENT_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace logkv::test {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// One answer as received.
struct HttpAnswer {
  int status = 0;           // 0: nothing was received
  std::string status_line;  // "HTTP/1.1 200 OK"
  HttpHeaders headers;      // names lowercased, values as sent
  std::string body;

  // The first header of that name (case-insensitive), if any.
  std::optional<std::string> Header(absl::string_view name) const;
  // The body as JSON; a discarded value when it is not JSON.
  nlohmann::json Json() const;
};

// The bytes of a request: the request line, "Host", the given headers, a
// Content-Length when there is a body or the method is PUT or POST, and the body.
std::string BuildRequest(absl::string_view method, absl::string_view target,
                         const HttpHeaders& headers = {}, absl::string_view body = "");

class HttpConnection {
 public:
  static absl::StatusOr<HttpConnection> Connect(int port,
                                                absl::Duration timeout = absl::Seconds(5));
  HttpConnection(HttpConnection&& other) noexcept;
  HttpConnection& operator=(HttpConnection&& other) noexcept;
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;
  ~HttpConnection();

  absl::Status Send(absl::string_view bytes);
  // The next answer (a "100 Continue" is an answer of its own). head: the
  // request was HEAD, so no body follows whatever Content-Length says.
  // DeadlineExceeded after timeout; Unavailable if the server closed first.
  absl::StatusOr<HttpAnswer> Read(bool head = false, absl::Duration timeout = absl::Seconds(10));
  // True if the server closes the connection (end of stream or reset)
  // within timeout; bytes that arrive meanwhile are kept in buffered().
  bool WaitClosed(absl::Duration timeout = absl::Seconds(10));
  // Bytes received and not yet returned by Read.
  const std::string& buffered() const { return input_; }
  // No more bytes from us (the server sees end of stream).
  void ShutdownWrite();
  void Close();
  // Closes with a reset (SO_LINGER 0) instead of an orderly end of stream.
  void Reset();

 private:
  explicit HttpConnection(int fd) : fd_(fd) {}
  // Receives more bytes into input_; Unavailable at end of stream or reset.
  absl::Status Fill(absl::Time deadline);

  int fd_ = -1;
  std::string input_;
};

// One request on a fresh connection: its answer.
absl::StatusOr<HttpAnswer> Fetch(int port, absl::string_view method, absl::string_view target,
                                 const HttpHeaders& headers = {}, absl::string_view body = "");

// Standard base64 with padding (RFC 4648 section 4), for seed 002's dialect.
std::string Base64Encode(absl::string_view bytes);

}  // namespace logkv::test

#endif  // LOGKV_TESTS_REST_HTTP_CLIENT_H_
