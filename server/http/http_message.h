// The HTTP adapter's view of one request and its answer. A request's views
// point into the connection's receive buffer and stay valid only while its
// handler runs; a handler that answers later copies what it needs first.
#ifndef LOGKV_SERVER_HTTP_HTTP_MESSAGE_H_
#define LOGKV_SERVER_HTTP_HTTP_MESSAGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace logkv::server::http {

enum class Method { kGet, kHead, kPut, kPost, kDelete, kOptions, kPatch, kOther };

struct HttpHeader {
  absl::string_view name;   // as sent; compare case-insensitively
  absl::string_view value;  // surrounding whitespace trimmed
};

struct HttpRequest {
  Method method = Method::kOther;
  absl::string_view method_name;
  absl::string_view target;  // as sent: path and query, still percent-encoded
  absl::string_view path;    // target before '?', still percent-encoded
  absl::string_view query;   // after '?', without it; empty when absent
  std::vector<HttpHeader> headers;
  absl::string_view body;    // de-chunked
  bool keep_alive = true;
  // The client's IP address as text ("127.0.0.1"); empty when unknown.
  absl::string_view remote_address;
  // Path parameters captured by the route pattern, percent-decoded, in order.
  std::vector<std::string> params;

  // The first header of that name (case-insensitive), if any.
  std::optional<absl::string_view> Header(absl::string_view name) const;
  // The first query parameter of that name, percent-decoded ('+' is a space).
  std::optional<std::string> QueryParam(absl::string_view name) const;
};

// The body of an answer that does not end: Server-Sent Events
// (text/event-stream), written as the events come. The connection's loop
// calls Poll when the engine appended events, and once when the stream
// opens; the connection closes when Poll says the stream ended or the
// client goes. Released on the loop's thread when the connection closes.
class EventStream {
 public:
  virtual ~EventStream() = default;
  // Appends the events after the stream's cursor to *out, reading up to
  // last_sequences (the engine's last sequence per shard); sets *more when
  // some are left for the next call. false: the stream ended (what it
  // appended says why).
  virtual bool Poll(const std::vector<uint64_t>& last_sequences, std::string* out,
                    bool* more) = 0;
  // Whether the credentials the stream was opened with still hold (asked on
  // the loop's idle-timer passes and when credentials were revoked); false,
  // with the stream's last event appended to *out, ends it.
  virtual bool CredentialsHold(std::string* /*out*/) { return true; }
};

struct HttpResponse {
  int status = 200;
  // Must point at storage that outlives the response (a string literal).
  absl::string_view content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  // Set (with status 200): the body is this stream, not `body`; it must be
  // the request's answer given while its handler runs, and ends the
  // connection's requests (nothing after it is read).
  std::shared_ptr<EventStream> stream;

  // {"error": message} with that status.
  static HttpResponse Error(int status, absl::string_view message);
  // A JSON body (already serialised) with that status.
  static HttpResponse Json(int status, std::string json);
};

// Where answers go: the connection's loop. Deliver may be called from any
// thread; the sink hands an answer from another thread over to its loop.
class ResponseSink {
 public:
  virtual void Deliver(uint64_t connection_id, uint64_t sequence, HttpResponse response) = 0;

 protected:
  ~ResponseSink() = default;
};

// Answers one request exactly once, from the loop's thread or any other
// (an answer from another thread is handed to the loop). Dropping a Responder
// without answering answers 500, so a bug cannot hang a client.
class Responder {
 public:
  using SendFunction = std::function<void(HttpResponse)>;
  Responder() = default;
  // sink must outlive every Responder made from it.
  Responder(ResponseSink* sink, uint64_t connection_id, uint64_t sequence)
      : sink_(sink), connection_id_(connection_id), sequence_(sequence) {}
  // For tests and tools: answers go to send.
  explicit Responder(SendFunction send) : send_(std::move(send)) {}
  Responder(Responder&& other) noexcept { *this = std::move(other); }
  Responder& operator=(Responder&& other) noexcept;
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;
  ~Responder();

  void Send(HttpResponse response);
  bool answered() const { return sink_ == nullptr && !send_; }

 private:
  ResponseSink* sink_ = nullptr;
  uint64_t connection_id_ = 0;
  uint64_t sequence_ = 0;
  SendFunction send_;
};

// Percent-decoding of one URL component; nullopt on a malformed escape.
// plus_is_space: '+' decodes to ' ' (query strings).
std::optional<std::string> PercentDecode(absl::string_view text, bool plus_is_space);

const char* ReasonPhrase(int status);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_HTTP_MESSAGE_H_
