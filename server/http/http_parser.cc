#include "server/http/http_parser.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace logkv::server::http {

namespace {

Method MethodOf(uint8_t method) {
  switch (method) {
    case HTTP_GET: return Method::kGet;
    case HTTP_HEAD: return Method::kHead;
    case HTTP_PUT: return Method::kPut;
    case HTTP_POST: return Method::kPost;
    case HTTP_DELETE: return Method::kDelete;
    case HTTP_OPTIONS: return Method::kOptions;
    case HTTP_PATCH: return Method::kPatch;
    default: return Method::kOther;
  }
}

}  // namespace

HttpParser::HttpParser(const HttpLimits& limits) : limits_(limits) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &HttpParser::OnMessageBegin;
  settings_.on_url = &HttpParser::OnUrl;
  settings_.on_header_field = &HttpParser::OnHeaderField;
  settings_.on_header_value = &HttpParser::OnHeaderValue;
  settings_.on_headers_complete = &HttpParser::OnHeadersComplete;
  settings_.on_chunk_header = &HttpParser::OnChunkHeader;
  settings_.on_body = &HttpParser::OnBody;
  settings_.on_message_complete = &HttpParser::OnMessageComplete;
  llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  parser_.data = this;
}

int HttpParser::Fail(int status, std::string message) {
  error_status_ = status;
  error_message_ = std::move(message);
  return -1;
}

int HttpParser::OnMessageBegin(llhttp_t* parser) {
  HttpParser& self = Of(parser);
  self.target_.clear();
  self.header_bytes_.clear();
  self.header_spans_.clear();
  self.in_header_value_ = false;
  self.headers_complete_ = false;
  self.trailer_bytes_ = 0;
  self.announced_body_bytes_ = 0;
  self.body_.clear();
  self.in_request_ = true;
  self.expects_continue_ = false;
  self.continue_sent_ = false;
  return 0;
}

int HttpParser::OnUrl(llhttp_t* parser, const char* at, size_t length) {
  HttpParser& self = Of(parser);
  if (self.target_.size() + length > self.limits_.max_target_bytes) {
    return self.Fail(414, absl::StrCat("request target longer than ",
                                       self.limits_.max_target_bytes, " bytes"));
  }
  self.target_.append(at, length);
  return 0;
}

int HttpParser::OnHeaderField(llhttp_t* parser, const char* at, size_t length) {
  HttpParser& self = Of(parser);
  if (self.headers_complete_) return self.SkipTrailer(length);
  if (self.header_bytes_.size() + length > self.limits_.max_header_bytes) {
    return self.Fail(431, absl::StrCat("request headers larger than ",
                                       self.limits_.max_header_bytes, " bytes"));
  }
  if (self.header_spans_.empty() || self.in_header_value_) {
    // A new header begins.
    if (self.header_spans_.size() >= self.limits_.max_headers) {
      return self.Fail(431, absl::StrCat("more than ", self.limits_.max_headers, " headers"));
    }
    const size_t begin = self.header_bytes_.size();
    self.header_spans_.push_back({begin, begin, begin, begin});
    self.in_header_value_ = false;
  }
  self.header_bytes_.append(at, length);
  HeaderSpan& span = self.header_spans_.back();
  span.name_end = span.value_begin = span.value_end = self.header_bytes_.size();
  return 0;
}

int HttpParser::OnHeaderValue(llhttp_t* parser, const char* at, size_t length) {
  HttpParser& self = Of(parser);
  if (self.headers_complete_) return self.SkipTrailer(length);
  if (self.header_bytes_.size() + length > self.limits_.max_header_bytes) {
    return self.Fail(431, absl::StrCat("request headers larger than ",
                                       self.limits_.max_header_bytes, " bytes"));
  }
  self.in_header_value_ = true;
  self.header_bytes_.append(at, length);
  self.header_spans_.back().value_end = self.header_bytes_.size();
  return 0;
}

int HttpParser::OnHeadersComplete(llhttp_t* parser) {
  HttpParser& self = Of(parser);
  const bool has_length = (parser->flags & F_CONTENT_LENGTH) != 0;
  if (has_length && parser->content_length > self.limits_.max_body_bytes) {
    return self.Fail(413, absl::StrCat("request body of ", parser->content_length,
                                       " bytes is larger than the limit of ",
                                       self.limits_.max_body_bytes, " bytes"));
  }
  // Neither Content-Length nor Transfer-Encoding: the body is empty, whatever
  // the method (RFC 9112 6.3), and llhttp completes the request here. Framing
  // that is wrong rather than absent (both headers, a bad length, a transfer
  // coding other than chunked last) is llhttp's 400.
  self.BuildRequest();
  self.headers_complete_ = true;
  if (std::optional<absl::string_view> expect = self.request_.Header("expect")) {
    if (absl::EqualsIgnoreCase(*expect, "100-continue")) {
      self.expects_continue_ = true;
    } else {
      return self.Fail(417, absl::StrCat("unsupported expectation '", *expect, "'"));
    }
  }
  if (has_length) {
    self.announced_body_bytes_ = static_cast<size_t>(parser->content_length);
    self.body_.reserve(self.announced_body_bytes_);
  }
  // Upgrade is not supported, so it is ignored (RFC 9110 7.8): the request
  // is an ordinary one and the connection goes on speaking HTTP/1.1, instead
  // of llhttp handing the bytes after it to another protocol. CONNECT too.
  parser->upgrade = 0;
  return 0;
}

int HttpParser::SkipTrailer(size_t length) {
  trailer_bytes_ += length;
  if (header_bytes_.size() + trailer_bytes_ > limits_.max_header_bytes) {
    return Fail(431, absl::StrCat("request headers and trailers larger than ",
                                  limits_.max_header_bytes, " bytes"));
  }
  return 0;
}

int HttpParser::OnChunkHeader(llhttp_t* parser) {
  HttpParser& self = Of(parser);
  // llhttp holds the size of the chunk about to be read in content_length
  // (up to 2^64 - 1): a chunk that would carry the body past the limit is
  // refused now, not after the limit's worth of it has been read.
  const uint64_t chunk_bytes = parser->content_length;
  if (chunk_bytes > self.limits_.max_body_bytes - self.body_.size()) {
    return self.Fail(413, absl::StrCat("request body chunk of ", chunk_bytes,
                                       " bytes would take the body past the limit of ",
                                       self.limits_.max_body_bytes, " bytes"));
  }
  return 0;
}

int HttpParser::OnBody(llhttp_t* parser, const char* at, size_t length) {
  HttpParser& self = Of(parser);
  if (self.body_.size() + length > self.limits_.max_body_bytes) {
    return self.Fail(413, absl::StrCat("request body larger than the limit of ",
                                       self.limits_.max_body_bytes, " bytes"));
  }
  // The body is on its way: a "100 Continue" would come too late.
  if (length > 0) self.expects_continue_ = false;
  self.body_.append(at, length);
  return 0;
}

int HttpParser::OnMessageComplete(llhttp_t* parser) {
  HttpParser& self = Of(parser);
  self.complete_ = true;
  self.in_request_ = false;
  self.expects_continue_ = false;
  // Stop after this request: the caller answers it before the next is read.
  return HPE_PAUSED;
}

void HttpParser::TrimStorage() {
  if (in_request_) return;
  if (body_.capacity() > kRetainedBodyBytes) std::string().swap(body_);
}

void HttpParser::BuildRequest() {
  HttpRequest& r = request_;
  r.method = MethodOf(parser_.method);
  r.method_name = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
  r.target = target_;
  const size_t question = r.target.find('?');
  r.path = r.target.substr(0, question);
  r.query = question == absl::string_view::npos ? absl::string_view()
                                                : r.target.substr(question + 1);
  r.headers.clear();
  const absl::string_view bytes = header_bytes_;
  for (const HeaderSpan& span : header_spans_) {
    r.headers.push_back(
        {bytes.substr(span.name_begin, span.name_end - span.name_begin),
         absl::StripAsciiWhitespace(
             bytes.substr(span.value_begin, span.value_end - span.value_begin))});
  }
  r.params.clear();
  r.body = absl::string_view();
}

HttpParser::Result HttpParser::Parse(absl::string_view data, size_t* consumed) {
  *consumed = 0;
  complete_ = false;
  if (data.empty()) return Result::kNeedMore;
  const llhttp_errno_t error = llhttp_execute(&parser_, data.data(), data.size());
  if (error == HPE_OK) {
    *consumed = data.size();
    return Result::kNeedMore;
  }
  if (error == HPE_PAUSED && complete_) {
    *consumed = static_cast<size_t>(llhttp_get_error_pos(&parser_) - data.data());
    llhttp_resume(&parser_);
    request_.body = body_;
    request_.keep_alive = llhttp_should_keep_alive(&parser_) != 0;
    return Result::kRequest;
  }
  if (error_status_ == 0) {
    error_status_ = 400;
    error_message_ = absl::StrCat("malformed HTTP request: ", llhttp_get_error_reason(&parser_));
  }
  if (error == HPE_PAUSED_UPGRADE) {
    error_status_ = 400;
    error_message_ = "protocol upgrades are not supported";
  }
  return Result::kError;
}

}  // namespace logkv::server::http
