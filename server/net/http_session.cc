#include "server/net/http_session.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/http/status_http.h"
#include "server/log.h"

namespace logkv::server::net {

namespace {

// Serialises response into *out (HEAD: without the body). Every answer
// says its Content-Type is the one to use (nosniff): a stored value served
// as application/octet-stream, or an error echoing a key, is never taken
// for a page by a browser.
void Serialize(const http::HttpResponse& response, bool keep_alive, bool head,
               std::string* out) {
  absl::StrAppend(out, "HTTP/1.1 ", response.status, " ", http::ReasonPhrase(response.status),
                  "\r\nContent-Type: ", response.content_type, "\r\nContent-Length: ",
                  response.body.size(), "\r\nX-Content-Type-Options: nosniff\r\n");
  for (const auto& [name, value] : response.headers) {
    absl::StrAppend(out, name, ": ", value, "\r\n");
  }
  if (!keep_alive) out->append("Connection: close\r\n");
  out->append("\r\n");
  if (!head) out->append(response.body);
}

}  // namespace

void HttpAnswers::Deliver(uint64_t connection_id, uint64_t sequence,
                          http::HttpResponse response) {
  if (loop_->on_loop_thread() && inline_answer_ != nullptr &&
      inline_answer_->connection_id == connection_id && inline_answer_->sequence == sequence) {
    inline_answer_->answered = true;
    inline_answer_->response = std::move(response);
    return;
  }
  loop_->Post([connection_id, sequence, response = std::move(response)](Loop& l) mutable {
    Connection* c = l.Find(connection_id);
    if (c == nullptr || !c->http) return;  // the client is gone
    static_cast<HttpSession&>(*c->session).Complete(sequence, std::move(response));
    l.Answered(*c);
  });
}

HttpSession::HttpSession(Connection& connection, HttpAnswers* answers, std::string remote_address)
    : ProtocolSession(connection, 1),
      answers_(answers),
      parser_(connection.loop->config().http_limits),
      remote_address_(std::move(remote_address)) {}

char* HttpSession::ReadSpace(size_t min_bytes, size_t* available) {
  if (begin_ == end_) begin_ = end_ = 0;
  if (capacity_ - end_ < min_bytes) {
    if (begin_ > 0) {
      std::memmove(input_.get(), input_.get() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (capacity_ - end_ < min_bytes) {
      const size_t grown = std::max(capacity_ * 2, end_ + min_bytes);
      auto bigger = std::make_unique<char[]>(grown);
      if (end_ > 0) std::memcpy(bigger.get(), input_.get(), end_);
      input_ = std::move(bigger);
      capacity_ = grown;
    }
  }
  *available = capacity_ - end_;
  return input_.get() + end_;
}

void HttpSession::ProcessInput() {
  Connection& c = connection();
  const ServerConfig& config = this->config();
  while (!c.closing && !stop_parsing_ && c.owed_bytes() <= config.max_output_bytes) {
    if (owed_.size() >= config.max_pipelined_requests) {
      // Answers owed pile up: read no more until they go out.
      loop().StopReading(c);
      return;
    }
    size_t consumed = 0;
    const http::HttpParser::Result result =
        parser_.Parse(absl::string_view(input_.get() + begin_, end_ - begin_), &consumed);
    begin_ += consumed;
    if (result == http::HttpParser::Result::kRequest) {
      request_began_ms_ = -1;
    } else if (parser_.in_request() && request_began_ms_ < 0) {
      request_began_ms_ = loop().now_ms();
    }
    switch (result) {
      case http::HttpParser::Result::kNeedMore:
        if (!AdmitBody()) return;
        SendContinueIfDue();
        return;
      case http::HttpParser::Result::kError:
        Refuse(parser_.error_status(), parser_.error_message());
        return;
      case http::HttpParser::Result::kRequest:
        Dispatch(parser_.request());
        // The handler has copied what it keeps of the body.
        loop().ReleaseInput(c);
        parser_.TrimStorage();
        break;
    }
  }
}

bool HttpSession::AdmitBody() {
  const size_t body_bytes = parser_.body_bytes_expected();
  if (body_bytes <= kUnreservedRequestBytes) return true;
  if (const auto& authenticate = config().authenticate; authenticate) {
    // With auth on, a large body is read only for a caller whose API key
    // holds, checked from the headers before any of it: nobody unknown can
    // make the server hold bytes for it (or wait for them).
    std::optional<absl::string_view> key = parser_.request().Header("x-api-key");
    if (!key || key->empty() || !authenticate(*key).ok()) {
      Refuse(401, absl::StrCat("a body of ", body_bytes, " bytes needs a valid X-API-Key (bodies "
                               "over ", kUnreservedRequestBytes, " bytes are read only for "
                               "authenticated callers)"));
      return false;
    }
  }
  if (loop().ReserveInput(connection(), body_bytes)) return true;
  Refuse(503,
         absl::StrCat("the server holds too many bytes of requests still arriving "
                      "(--max-buffered-bytes=",
                      config().max_buffered_bytes, "): body of ", body_bytes,
                      " bytes refused; retry later"),
         /*retry_after_s=*/1);
  return false;
}

ProtocolSession::Expiry HttpSession::CheckExpiry(int64_t now_ms) const {
  const Connection& c = connection();
  // An event stream is quiet while nothing changes; it ends with its client.
  if (stream_ != nullptr) return Expiry::kNone;
  if (c.pending > 0 || c.owed_bytes() > 0) return Expiry::kNone;
  const int64_t timeout_ms = absl::ToInt64Milliseconds(config().http_idle_timeout);
  const bool slow_request = request_began_ms_ >= 0 && now_ms - request_began_ms_ > timeout_ms;
  const bool idle_too_long = now_ms - c.last_read_ms > timeout_ms;
  if (!slow_request && !idle_too_long) return Expiry::kNone;
  return request_began_ms_ >= 0 ? Expiry::kTimedOut : Expiry::kIdle;
}

void HttpSession::Expire() { Refuse(408, "the request did not arrive in time"); }

// A request that cannot be parsed ends the connection: its answer goes out
// after the answers owed before it, then the connection closes.
void HttpSession::Refuse(int status, absl::string_view message, int retry_after_s) {
  Connection& c = connection();
  Log(Level::kDebug, "connection %d: HTTP %d: %s; closing it", c.id, status, message);
  stop_parsing_ = true;
  loop().StopReading(c);
  Owed owed;
  owed.sequence = next_sequence_++;
  owed.keep_alive = false;
  owed.start_ns = absl::GetCurrentTimeNanos();
  owed_.push_back(std::move(owed));
  http::HttpResponse response = http::HttpResponse::Error(status, message);
  if (retry_after_s > 0) response.headers.emplace_back("Retry-After", absl::StrCat(retry_after_s));
  Serialize(response, false, false, &owed_.back().bytes);
  owed_.back().ready = true;
  EmitReady();
}

namespace {

// host of a Host header ("name", "name:port", "[v6]:port"), lower case.
std::string HostName(absl::string_view host) {
  if (absl::StartsWith(host, "[")) {
    host = host.substr(1, host.find(']') == absl::string_view::npos ? host.size() - 1
                                                                    : host.find(']') - 1);
  } else if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos &&
                                                   host.find(':') == colon) {
    host = host.substr(0, colon);
  }
  return absl::AsciiStrToLower(host);
}

// Whether name (a Host's, lower case, no port) needs no listing: an
// address, which no other site can make a browser send (DNS rebinding needs
// a name of the attacker's), or localhost.
bool IsAddressOrLocalhost(const std::string& name) {
  if (name == "localhost") return true;
  in_addr v4;
  in6_addr v6;
  return inet_pton(AF_INET, name.c_str(), &v4) == 1 ||
         inet_pton(AF_INET6, name.c_str(), &v6) == 1;
}

bool Listed(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Why a browser's request must not be served (ServerConfig::http_check_host
// and the Origin rule), or nothing.
std::optional<http::HttpResponse> BrowserRefusal(const ServerConfig& config,
                                                 const http::HttpRequest& request) {
  const std::optional<absl::string_view> host = request.Header("host");
  if (config.http_check_host && host.has_value()) {
    const std::string name = HostName(*host);
    if (!IsAddressOrLocalhost(name) && !Listed(config.http_allowed_hosts, name) &&
        !Listed(config.http_own_hosts, name)) {
      return http::HttpResponse::Error(
          403, absl::StrCat("this node does not answer to the name '", name,
                            "': it serves addresses, localhost and the names of "
                            "--http_allowed_hosts (docs/security.md, \"Browsers\")"));
    }
  }
  const std::optional<absl::string_view> origin = request.Header("origin");
  if (!origin.has_value() || request.method == http::Method::kGet ||
      request.method == http::Method::kHead || request.method == http::Method::kOptions) {
    return std::nullopt;
  }
  absl::string_view authority = *origin;
  if (absl::ConsumePrefix(&authority, "http://") || absl::ConsumePrefix(&authority, "https://")) {
    // The node's own pages (the same authority as Host), or a listed name
    // (a proxy in front of the node may give it another Host).
    if (host.has_value() && absl::EqualsIgnoreCase(authority, *host)) return std::nullopt;
    if (Listed(config.http_allowed_hosts, HostName(authority))) return std::nullopt;
  }
  return http::HttpResponse::Error(
      403, absl::StrCat("a request from the page of another site (Origin: ", *origin,
                        ") may not change anything here"));
}

}  // namespace

void HttpSession::Dispatch(http::HttpRequest& request) {
  Connection& c = connection();
  const ServerConfig& config = this->config();
  const uint64_t sequence = next_sequence_++;
  const int64_t start_ns = absl::GetCurrentTimeNanos();
  const bool keep_alive = request.keep_alive && !loop().stopping();
  const bool head = request.method == http::Method::kHead;
  if (!keep_alive) {
    // Requests after one that closes the connection are not read.
    stop_parsing_ = true;
    loop().StopReading(c);
  }
  request.remote_address = remote_address_;
  const http::Router::Match match =
      config.router->Find(request.method, request.path, &request.params);
  HttpAnswers::InlineAnswer answer;
  answer.connection_id = c.id;
  answer.sequence = sequence;
  if (std::optional<http::HttpResponse> refusal = BrowserRefusal(config, request)) {
    answer.answered = true;
    answer.response = *std::move(refusal);
  } else if (match.route == nullptr) {
    answer.answered = true;
    if (match.status == 405) {
      answer.response = http::HttpResponse::Error(
          405, absl::StrCat("method ", request.method_name, " is not allowed here; use ",
                            match.allow));
      answer.response.headers.emplace_back("Allow", match.allow);
    } else if (match.status == 400) {
      answer.response = http::HttpResponse::Error(400, "malformed percent-encoding in the path");
    } else {
      answer.response = http::HttpResponse::Error(
          404, absl::StrCat("no route for ", request.method_name, " ", request.path));
    }
  } else if (absl::Status admitted =
                 match.route->is_write ? loop().service()->AdmitWrite() : absl::OkStatus();
             !admitted.ok()) {
    // Account routes write the engine directly, not through the Service, so
    // the Service's verdict on writes is asked here for every writing route.
    answer.answered = true;
    answer.response = http::HttpResponse::Error(http::HttpStatusOf(admitted), admitted.message());
  } else {
    answers_->set_inline_answer(&answer);
    match.route->handler(request, http::Responder(answers_, c.id, sequence));
    answers_->set_inline_answer(nullptr);
  }
  if (answer.answered && answer.response.stream != nullptr) {
    if (config.http_observer) {
      config.http_observer(match.route, answer.response.status,
                           absl::GetCurrentTimeNanos() - start_ns,
                           config.observe_subjects
                               ? request.path.substr(0, kObservedSubjectBytes)
                               : absl::string_view());
    }
    if (!owed_.empty() || head || answer.response.status != 200) {
      // A stream cannot wait behind earlier answers, nor be a HEAD's.
      answer.response.stream.reset();
      answer.response = http::HttpResponse::Error(
          400, head ? "an event stream has no HEAD" : "an event stream cannot be pipelined");
    } else {
      StartStream(std::move(answer.response));
      return;
    }
  }
  if (answer.answered) {
    if (config.http_observer) {
      config.http_observer(match.route, answer.response.status,
                           absl::GetCurrentTimeNanos() - start_ns,
                           config.observe_subjects
                               ? request.path.substr(0, kObservedSubjectBytes)
                               : absl::string_view());
    }
    if (owed_.empty()) {
      // The common case: nothing is owed before it, so it goes straight out.
      Serialize(answer.response, keep_alive, head, &c.out);
      if (!keep_alive) c.closing = true;
      return;
    }
    Owed owed;
    owed.sequence = sequence;
    owed.ready = true;
    owed.keep_alive = keep_alive;
    Serialize(answer.response, keep_alive, head, &owed.bytes);
    owed_.push_back(std::move(owed));
    return;
  }
  // Answered later, from another thread (fsync waits, password hashing).
  Owed owed;
  owed.sequence = sequence;
  owed.keep_alive = keep_alive;
  owed.head = head;
  owed.route = match.route;
  owed.start_ns = start_ns;
  if (config.observe_subjects) {
    owed.subject = std::string(request.path.substr(0, kObservedSubjectBytes));
  }
  // Answers are owed in the order their requests came (pipelining).
  assert(owed_.empty() || owed_.back().sequence < sequence);
  owed_.push_back(std::move(owed));
  ++c.pending;
}

void HttpSession::StartStream(http::HttpResponse response) {
  Connection& c = connection();
  // No Content-Length: the body ends when the connection does (RFC 9112
  // section 6.3), which every SSE client (EventSource, curl -N) reads as it
  // comes.
  absl::StrAppend(&c.out, "HTTP/1.1 200 OK\r\nContent-Type: ", response.content_type,
                  "\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\n"
                  "X-Content-Type-Options: nosniff\r\n");
  for (const auto& [name, value] : response.headers) {
    absl::StrAppend(&c.out, name, ": ", value, "\r\n");
  }
  c.out.append("Connection: close\r\n\r\n");
  stop_parsing_ = true;
  begin_ = end_ = 0;
  stream_ = std::move(response.stream);
  // Reading goes on, so a client that goes away is noticed (its EOF); what
  // it sends is dropped (Received).
  loop().Subscribe(c);
}

bool HttpSession::OnEvents(EventsPass& pass) {
  Connection& c = connection();
  if (stream_ == nullptr || c.closing) return true;
  bool ended = false;
  if (!stream_->CredentialsHold(&c.out)) {
    ended = true;
  } else if (c.owed_bytes() > config().max_output_bytes) {
    // A client that does not read is dropped, not buffered without end.
    absl::StrAppend(&c.out, "event: error\ndata: {\"error\":\"the client fell more than ",
                    config().max_output_bytes,
                    " bytes behind; watch again\"}\n\n");
    ended = true;
  } else {
    ended = !stream_->Poll(pass.last_sequences, &c.out, &pass.more);
  }
  if (ended) EndStream();
  // false: the Loop flushes what the stream said last and closes.
  return !ended;
}

bool HttpSession::CredentialsHold() {
  Connection& c = connection();
  if (stream_ == nullptr || c.closing || stream_->CredentialsHold(&c.out)) return true;
  Log(Level::kInfo, "connection %d: an event stream's credentials no longer hold; ending it",
      c.id);
  EndStream();
  return false;
}

void HttpSession::EndStream() {
  Connection& c = connection();
  loop().Unsubscribe(c);
  stream_.reset();
  loop().StopReading(c);
  c.closing = true;
}

void HttpSession::Complete(uint64_t sequence, http::HttpResponse response) {
  const ServerConfig& config = this->config();
  for (Owed& owed : owed_) {
    if (owed.sequence != sequence || owed.ready) continue;
    if (config.http_observer) {
      config.http_observer(owed.route, response.status,
                           absl::GetCurrentTimeNanos() - owed.start_ns, owed.subject);
    }
    Serialize(response, owed.keep_alive, owed.head, &owed.bytes);
    owed.ready = true;
    // Every deferred answer was counted when it was owed, and comes once.
    assert(connection().pending > 0);
    --connection().pending;
    break;
  }
  EmitReady();
}

void HttpSession::EmitReady() {
  Connection& c = connection();
  while (!owed_.empty() && owed_.front().ready) {
    Owed& owed = owed_.front();
    c.out.append(owed.bytes);
    const bool close = !owed.keep_alive;
    owed_.pop_front();
    if (close) {
      c.closing = true;
      // Nothing after it is sent; answers still owed were for requests the
      // client sent after asking to close.
      return;
    }
  }
  // A request whose headers came while earlier answers were owed waits for
  // its "100 Continue" until they are out: now, or it would wait for ever.
  SendContinueIfDue();
}

void HttpSession::SendContinueIfDue() {
  // The client waits for leave to send its body (Expect: 100-continue); it
  // goes out after every answer owed before it.
  if (!owed_.empty() || stop_parsing_ || !parser_.in_request() || !parser_.expects_continue()) {
    return;
  }
  connection().out.append("HTTP/1.1 100 Continue\r\n\r\n");
  parser_.set_continue_sent();
}

}  // namespace logkv::server::net
