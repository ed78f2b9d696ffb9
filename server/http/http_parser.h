// Incremental HTTP/1.1 request parsing on top of llhttp. The parser copies
// what a request needs (target, headers, de-chunked body) into storage it
// reuses, so bytes may arrive in any split and the receive buffer can be
// recycled at once. Limits are enforced while parsing: a header section or
// body over its limit stops the parse before it is buffered, and a body
// announced over its limit (Content-Length, or a chunk's size line) stops it
// before any of the body is read.
//
// Thread-safety: none; one parser per connection.
#ifndef LOGKV_SERVER_HTTP_HTTP_PARSER_H_
#define LOGKV_SERVER_HTTP_HTTP_PARSER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "llhttp.h"
#include "server/http/http_message.h"

namespace logkv::server::http {

struct HttpLimits {
  size_t max_target_bytes = 8u << 10;   // request line's target: 414 beyond
  size_t max_header_bytes = 16u << 10;  // all header names and values: 431 beyond
  size_t max_headers = 100;             // 431 beyond
  size_t max_body_bytes = 24u << 20;    // 413 beyond
};

class HttpParser {
 public:
  explicit HttpParser(const HttpLimits& limits);
  HttpParser(const HttpParser&) = delete;
  HttpParser& operator=(const HttpParser&) = delete;

  enum class Result {
    kNeedMore,  // every byte was taken; the request is not complete yet
    kRequest,   // request() is complete; *consumed bytes were taken
    kError,     // error_status()/error_message(); the connection must close
  };
  // Parses from data, stopping after one complete request.
  Result Parse(absl::string_view data, size_t* consumed);

  // Valid after kRequest until the next Parse.
  HttpRequest& request() { return request_; }
  // The client sent "Expect: 100-continue" and waits for leave to send the
  // body; the flag stays set until the body begins to arrive or the request
  // completes. The caller answers "100 Continue" once (continue_sent).
  bool expects_continue() const { return expects_continue_ && !continue_sent_; }
  void set_continue_sent() { continue_sent_ = true; }
  // True between the first byte of a request and its completion.
  bool in_request() const { return in_request_; }
  // While a request's body arrives: its Content-Length, or for a chunked
  // body the bytes received so far; 0 before the headers are complete and
  // between requests. What the caller counts against its memory limits.
  size_t body_bytes_expected() const {
    if (!in_request_ || !headers_complete_) return 0;
    return std::max(announced_body_bytes_, body_.size());
  }
  // Between requests: frees storage a large request grew, so that an idle
  // connection does not keep it.
  void TrimStorage();
  static constexpr size_t kRetainedBodyBytes = 64u << 10;

  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }

 private:
  static int OnMessageBegin(llhttp_t* parser);
  static int OnUrl(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderField(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderValue(llhttp_t* parser, const char* at, size_t length);
  static int OnHeadersComplete(llhttp_t* parser);
  static int OnChunkHeader(llhttp_t* parser);
  static int OnBody(llhttp_t* parser, const char* at, size_t length);
  static int OnMessageComplete(llhttp_t* parser);
  static HttpParser& Of(llhttp_t* parser) { return *static_cast<HttpParser*>(parser->data); }
  int Fail(int status, std::string message);
  int SkipTrailer(size_t length);
  void BuildRequest();

  const HttpLimits limits_;
  llhttp_settings_t settings_;
  llhttp_t parser_;

  // Storage of the request being parsed, reused from request to request.
  std::string target_;
  std::string header_bytes_;  // names and values back to back
  struct HeaderSpan {
    size_t name_begin, name_end, value_begin, value_end;
  };
  std::vector<HeaderSpan> header_spans_;
  bool in_header_value_ = false;
  // Set once request_ is built: its headers point into header_bytes_, which
  // must not grow after that. Trailer fields are only counted.
  bool headers_complete_ = false;
  size_t trailer_bytes_ = 0;
  size_t announced_body_bytes_ = 0;  // Content-Length, 0 when chunked or absent
  std::string body_;

  HttpRequest request_;
  bool in_request_ = false;
  bool complete_ = false;
  bool expects_continue_ = false;
  bool continue_sent_ = false;
  int error_status_ = 0;
  std::string error_message_;
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_HTTP_PARSER_H_
