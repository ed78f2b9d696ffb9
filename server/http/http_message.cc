#include "server/http/http_message.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace logkv::server::http {

std::optional<absl::string_view> HttpRequest::Header(absl::string_view name) const {
  for (const HttpHeader& header : headers) {
    // Lengths first: most names differ in length, and this runs for every
    // header a request names (several lookups a request).
    if (header.name.size() == name.size() && absl::EqualsIgnoreCase(header.name, name)) {
      return header.value;
    }
  }
  return std::nullopt;
}

std::optional<std::string> HttpRequest::QueryParam(absl::string_view name) const {
  if (query.empty()) return std::nullopt;
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    const size_t equals = pair.find('=');
    const absl::string_view key = pair.substr(0, equals);
    if (key != name) continue;
    const absl::string_view value =
        equals == absl::string_view::npos ? absl::string_view() : pair.substr(equals + 1);
    return PercentDecode(value, /*plus_is_space=*/true);
  }
  return std::nullopt;
}

HttpResponse HttpResponse::Error(int status, absl::string_view message) {
  HttpResponse response;
  response.status = status;
  nlohmann::json body = {{"error", std::string(message)}};
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

HttpResponse HttpResponse::Json(int status, std::string json) {
  HttpResponse response;
  response.status = status;
  response.body = std::move(json);
  return response;
}

Responder& Responder::operator=(Responder&& other) noexcept {
  if (this == &other) return *this;
  sink_ = std::exchange(other.sink_, nullptr);
  connection_id_ = other.connection_id_;
  sequence_ = other.sequence_;
  send_ = std::move(other.send_);
  other.send_ = nullptr;
  return *this;
}

Responder::~Responder() {
  if (!answered()) Send(HttpResponse::Error(500, "the request was dropped without an answer"));
}

void Responder::Send(HttpResponse response) {
  if (ResponseSink* sink = std::exchange(sink_, nullptr)) {
    sink->Deliver(connection_id_, sequence_, std::move(response));
    return;
  }
  if (send_) {
    SendFunction send = std::move(send_);
    send_ = nullptr;
    send(std::move(response));
  }
}

std::optional<std::string> PercentDecode(absl::string_view text, bool plus_is_space) {
  std::string decoded;
  decoded.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%') {
      if (text.size() - i < 3) return std::nullopt;
      const char high = text[i + 1];
      const char low = text[i + 2];
      if (!absl::ascii_isxdigit(static_cast<unsigned char>(high)) ||
          !absl::ascii_isxdigit(static_cast<unsigned char>(low))) {
        return std::nullopt;
      }
      auto value = [](char digit) {
        return absl::ascii_isdigit(static_cast<unsigned char>(digit))
                   ? digit - '0'
                   : absl::ascii_tolower(static_cast<unsigned char>(digit)) - 'a' + 10;
      };
      decoded.push_back(static_cast<char>(value(high) * 16 + value(low)));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      decoded.push_back(' ');
    } else {
      decoded.push_back(c);
    }
  }
  return decoded;
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace logkv::server::http
