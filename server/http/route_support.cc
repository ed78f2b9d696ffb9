#include "server/http/route_support.h"

#include <sodium.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "protocol/frame.h"
#include "server/namespaces.h"

namespace logkv::server::http {

absl::StatusOr<RequestContext> Authorize(const ApiKeyAuth& auth, const HttpRequest& request,
                                         HttpResponse* refusal, bool namespaces) {
  std::optional<absl::string_view> selector =
      namespaces ? request.Header("x-namespace") : std::nullopt;
  if (!auth.on()) {
    if (selector.has_value()) {
      *refusal = HttpResponse::Error(400, "X-Namespace needs accounts on (--auth=on)");
      return absl::InvalidArgumentError("X-Namespace without accounts");
    }
    return RequestContext{};
  }
  absl::StatusOr<Session> session = AuthenticateKey(auth, request);
  if (!session.ok()) {
    *refusal = HttpResponse::Error(401, session.status().message());
    return session.status();
  }
  if (absl::Status admitted = auth.admission->Admit(session->user_id); !admitted.ok()) {
    *refusal = HttpResponse::Error(429, admitted.message());
    const int64_t retry_after_ms = protocol::RetryAfterMs(admitted);
    refusal->headers.emplace_back(
        "Retry-After", absl::StrCat(std::max<int64_t>(1, (retry_after_ms + 999) / 1000)));
    return admitted;
  }
  if (selector.has_value()) {
    uint64_t namespace_user = 0;
    if (!absl::SimpleAtoi(*selector, &namespace_user) || namespace_user == 0) {
      *refusal = HttpResponse::Error(400, "X-Namespace is a user id (a positive integer)");
      return absl::InvalidArgumentError("bad X-Namespace");
    }
    if (absl::Status status = auth::Admission::Address(&session->context, namespace_user);
        !status.ok()) {
      *refusal = HttpResponse::Error(400, status.message());
      return status;
    }
  }
  return std::move(session->context);
}

absl::StatusOr<Session> AuthenticateKey(const ApiKeyAuth& auth, const HttpRequest& request) {
  std::optional<absl::string_view> key = request.Header("x-api-key");
  if (!key || key->empty()) {
    auth.metrics->auth_failures()->Inc();
    return absl::UnauthenticatedError("missing X-API-Key header");
  }
  return auth.admission->Authenticate(*key);  // counts its own failures
}

void NodeUrl::Set(std::string url) {
  absl::MutexLock lock(&mu_);
  url_ = std::move(url);
}

std::string NodeUrl::Get() const {
  absl::ReaderMutexLock lock(&mu_);
  return url_;
}

std::string Dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string Rfc3339(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

std::string EncodeBase64(absl::string_view bytes) {
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

std::optional<std::string> DecodeBase64(absl::string_view text) {
  std::string out(text.size() * 3 / 4 + 3, '\0');
  size_t length = 0;
  const char* end = nullptr;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(),
                        text.size(), nullptr, &length, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != text.data() + text.size()) {
    return std::nullopt;
  }
  out.resize(length);
  return out;
}

}  // namespace logkv::server::http
