#include "server/http/route_support.h"

#include <sodium.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "protocol/frame.h"
#include "server/http/json_body.h"
#include "server/http/status_http.h"
#include "server/namespaces.h"

namespace logkv::server::http {

namespace {

HttpResponse InternalError(const std::exception& error) {
  return HttpResponse::Error(500, absl::StrCat("internal error: ", error.what()));
}

}  // namespace

control::Actor RequestActor(const ApiKeyAuth& auth, const HttpRequest& request,
                            absl::string_view node) {
  if (std::optional<absl::string_view> secret = request.Header("x-cluster-secret");
      secret.has_value() && !secret->empty()) {
    return control::Actor::ClusterSecret(node);
  }
  if (auth.on()) {
    if (absl::StatusOr<Session> session = AuthenticateKey(auth, request); session.ok()) {
      return control::Actor::User(session->user_id, node);
    }
  }
  control::Actor actor;
  actor.node = std::string(node);
  return actor;
}

Handler Guarded(std::function<void(HttpRequest&, Responder&)> handler) {
  return [handler = std::move(handler)](HttpRequest& request, Responder responder) {
    try {
      handler(request, responder);
    } catch (const std::exception& error) {
      if (!responder.answered()) responder.Send(InternalError(error));
    }
  };
}

void RunOnPool(auth::WorkerPool* pool, Responder responder, std::function<HttpResponse()> work,
               absl::string_view busy) {
  // A Responder is move-only and a pool task must be copyable.
  auto shared = std::make_shared<Responder>(std::move(responder));
  const bool queued = pool->Submit([shared, work = std::move(work)]() {
    HttpResponse response;
    try {
      response = work();
    } catch (const std::exception& error) {
      response = InternalError(error);
    }
    shared->Send(std::move(response));
  });
  if (!queued) {
    HttpResponse refused = HttpResponse::Error(503, busy);
    refused.headers.emplace_back("Retry-After", absl::StrCat(kRetryAfterSeconds));
    shared->Send(std::move(refused));
  }
}

absl::StatusOr<nlohmann::json> ReadJsonObject(const HttpRequest& request, size_t max_json_depth,
                                              bool empty_is_object) {
  if (request.body.size() > kMaxAccountBodyBytes) {
    return absl::OutOfRangeError(
        absl::StrCat("request body exceeds ", kMaxAccountBodyBytes, " bytes"));
  }
  if (request.body.empty() && empty_is_object) return nlohmann::json::object();
  absl::StatusOr<nlohmann::json> json = ParseJson(request.body, max_json_depth);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("request body is ", json.status().message()));
  }
  if (!json->is_object()) return absl::InvalidArgumentError("request body must be a JSON object");
  return json;
}

HttpResponse BodyError(const absl::Status& status) {
  if (absl::IsOutOfRange(status)) return HttpResponse::Error(413, status.message());
  return StatusResponse(status);
}

HttpResponse JsonAnswer(int status, const nlohmann::json& json) {
  return HttpResponse::Json(status, auth::SerializeJson(json));
}

HttpResponse StatusResponse(const absl::Status& status) {
  const int http_status = HttpStatusOf(status);
  HttpResponse response = HttpResponse::Error(http_status, status.message());
  if (http_status == 401) response.headers.emplace_back("WWW-Authenticate", "Bearer");
  if (http_status == 503) {
    response.headers.emplace_back("Retry-After", absl::StrCat(kRetryAfterSeconds));
  }
  if (const int64_t retry_after_ms = protocol::RetryAfterMs(status);
      http_status == 429 && retry_after_ms > 0) {
    response.headers.emplace_back("Retry-After",
                                  absl::StrCat(std::max<int64_t>(1, (retry_after_ms + 999) / 1000)));
  }
  return response;
}

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
