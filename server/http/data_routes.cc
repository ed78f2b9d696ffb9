#include "server/http/data_routes.h"

#include <sodium.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "server/auth/status_http.h"
#include "server/cluster/cluster_node.h"
#include "server/core/coordinator.h"
#include "server/http/http_fetch.h"
#include "server/namespaces.h"

namespace logkv::server::http {

namespace p = ::logkv::protocol;
using nlohmann::json;

namespace {

constexpr absl::string_view kOctetStream = "application/octet-stream";
constexpr absl::string_view kJsonType = "application/json";

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder* b,
                                                        absl::string_view bytes) {
  return b->CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

// Requests are built in a builder reused by the loop thread.
flatbuffers::FlatBufferBuilder& RequestBuilder() {
  thread_local flatbuffers::FlatBufferBuilder builder(1024);
  builder.Clear();
  return builder;
}

template <typename Operation>
void FinishRequest(flatbuffers::FlatBufferBuilder* b, p::Operation type,
                   flatbuffers::Offset<Operation> operation) {
  p::RequestBuilder request(*b);
  request.add_request_id(0);
  request.add_operation_type(type);
  request.add_operation(operation.Union());
  b->FinishSizePrefixed(request.Finish());
}

void BuildGet(flatbuffers::FlatBufferBuilder* b, absl::string_view key,
              p::Consistency consistency = p::Consistency::Default) {
  auto k = Bytes(b, key);
  FinishRequest(b, p::Operation::Get, p::CreateGet(*b, k, consistency));
}

void BuildPut(flatbuffers::FlatBufferBuilder* b, absl::string_view key, absl::string_view value,
              int64_t ttl_ms, p::Consistency consistency) {
  auto k = Bytes(b, key);
  auto v = Bytes(b, value);
  FinishRequest(b, p::Operation::Put,
                p::CreatePut(*b, k, v, ttl_ms, false, 0, consistency));
}

void BuildDelete(flatbuffers::FlatBufferBuilder* b, absl::string_view key,
                 p::Consistency consistency) {
  auto k = Bytes(b, key);
  FinishRequest(b, p::Operation::Delete, p::CreateDelete(*b, k, false, 0, consistency));
}

// The HTTP status of a data operation's failure. Limits on keys and values
// are 413 here (the accounts' ResourceExhausted is a rate limit); a write
// refused because the disk is full is 507.
int DataStatusOf(const absl::Status& status) {
  if (p::IsInsufficientStorage(status)) return 507;
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted: return 413;
    case absl::StatusCode::kFailedPrecondition: return 409;
    default: return auth::HttpStatusOf(status);
  }
}

HttpResponse ErrorFromStatus(const absl::Status& status) {
  HttpResponse response = HttpResponse::Error(DataStatusOf(status), status.message());
  if (response.status == 503) response.headers.emplace_back("Retry-After", "1");
  return response;
}

// The wall-clock milliseconds of an engine timestamp (hybrid logical clock).
int64_t TimestampMs(uint64_t timestamp) { return engine::TimestampUnixMs(timestamp); }

std::string Rfc3339(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

// request.QueryParam(name), except that a parameter present with malformed
// percent-encoding is an error rather than absent: a TTL or version the
// client sent must not be dropped silently.
absl::StatusOr<std::optional<std::string>> StrictQueryParam(const HttpRequest& request,
                                                            absl::string_view name) {
  std::optional<std::string> value = request.QueryParam(name);
  if (value) return value;
  for (absl::string_view pair : absl::StrSplit(request.query, '&')) {
    if (pair.substr(0, pair.find('=')) == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("query parameter '", name, "' is not valid percent-encoding"));
    }
  }
  return std::nullopt;
}

// ?ttl=: a Go-style duration (1h, 30m, 1h30m, 500ms) or bare seconds.
absl::StatusOr<int64_t> ParseTtlMs(const HttpRequest& request) {
  absl::StatusOr<std::optional<std::string>> parameter = StrictQueryParam(request, "ttl");
  if (!parameter.ok()) return parameter.status();
  const std::optional<std::string>& ttl = *parameter;
  if (!ttl || ttl->empty()) return 0;
  int64_t seconds = 0;
  absl::Duration duration;
  if (absl::SimpleAtoi(*ttl, &seconds)) {
    duration = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(*ttl, &duration)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid ttl '", *ttl, "': use a duration such as 30s, 1h30m or 500ms, or seconds"));
  }
  if (duration <= absl::ZeroDuration() || duration == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("ttl '", *ttl, "' must be positive"));
  }
  const int64_t ms = absl::ToInt64Milliseconds(duration);
  if (ms <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("ttl '", *ttl, "' is under a millisecond"));
  }
  if (ms > p::kMaxTtlMs) return absl::InvalidArgumentError("ttl is longer than 100 years");
  return ms;
}

absl::StatusOr<p::Consistency> ParseConsistency(const HttpRequest& request) {
  std::optional<absl::string_view> header = request.Header("x-consistency");
  if (!header || header->empty()) return p::Consistency::Default;
  if (absl::EqualsIgnoreCase(*header, "eventual")) return p::Consistency::Eventual;
  if (absl::EqualsIgnoreCase(*header, "strong")) return p::Consistency::Strong;
  return absl::InvalidArgumentError(
      absl::StrCat("X-Consistency must be eventual or strong, not '", *header, "'"));
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

std::string EncodeBase64(absl::string_view bytes) {
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

std::string RandomUuid() {
  unsigned char bytes[16];
  randombytes_buf(bytes, sizeof(bytes));
  bytes[6] = static_cast<unsigned char>((bytes[6] & 0x0f) | 0x40);  // version 4
  bytes[8] = static_cast<unsigned char>((bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return absl::StrFormat("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                         bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6],
                         bytes[7], bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13],
                         bytes[14], bytes[15]);
}

// The key of the single-key operations the routes build, else null.
const flatbuffers::Vector<uint8_t>* KeyOf(const p::Request& request) {
  switch (request.operation_type()) {
    case p::Operation::Get: return request.operation_as_Get()->key();
    case p::Operation::GetVersion: return request.operation_as_GetVersion()->key();
    case p::Operation::Put: return request.operation_as_Put()->key();
    case p::Operation::Delete: return request.operation_as_Delete()->key();
    default: return nullptr;
  }
}

// Runs the request finished in request_builder through the service and
// answers with convert(response). Answers at once, or later from the thread
// that completes a deferred write (then convert is copied along).
template <typename Convert>
void Run(Service* service, const RequestContext& context,
         flatbuffers::FlatBufferBuilder* request_builder, Responder& responder,
         Convert convert) {
  const p::Request* request =
      flatbuffers::GetSizePrefixedRoot<p::Request>(request_builder->GetBufferPointer());
  const p::Limits& limits = service->config().limits;
  if (absl::Status status = p::CheckRequest(*request, limits); !status.ok()) {
    // The protocol calls an over-limit key or value InvalidArgument; HTTP's
    // word is 413. The key measured is the client's, before any namespace.
    const p::Put* put = request->operation_as_Put();
    const bool value_too_large =
        put != nullptr && put->value() != nullptr && put->value()->size() > limits.max_value_bytes;
    const flatbuffers::Vector<uint8_t>* key = KeyOf(*request);
    const bool key_too_large = key != nullptr && key->size() > limits.max_key_bytes;
    responder.Send(value_too_large || key_too_large ? HttpResponse::Error(413, status.message())
                                                    : ErrorFromStatus(status));
    return;
  }
  thread_local flatbuffers::FlatBufferBuilder response_builder(1024);
  const Service::Outcome outcome = service->Handle(
      context, *request, &response_builder, [&]() -> Service::Completion {
        auto shared = std::make_shared<Responder>(std::move(responder));
        return [shared, convert](std::string frame) {
          const p::Response* response = flatbuffers::GetSizePrefixedRoot<p::Response>(
              reinterpret_cast<const uint8_t*>(frame.data()));
          shared->Send(convert(*response));
        };
      });
  if (outcome == Service::Outcome::kAnswered) {
    responder.Send(convert(
        *flatbuffers::GetSizePrefixedRoot<p::Response>(response_builder.GetBufferPointer())));
  }
}

absl::Status StatusOf(const p::Response& response) { return p::StatusFromResponse(response); }

// The answer of a Get: the value's bytes as content_type, or 404 with
// not_found (content_type must be a literal: HttpResponse keeps a view).
HttpResponse ValueAnswer(const p::Response& response, absl::string_view content_type,
                         absl::string_view not_found) {
  absl::Status status = StatusOf(response);
  if (status.code() == absl::StatusCode::kNotFound) return HttpResponse::Error(404, not_found);
  if (!status.ok()) return ErrorFromStatus(status);
  HttpResponse answer;
  answer.content_type = content_type;
  answer.body = std::string(p::View(response.result_as_ValueResult()->value()));
  return answer;
}

// The answer of seed 000's writes: {"success","key","primary_node","replicas"}.
std::string WriteAnswer(absl::string_view key, absl::string_view primary_node, size_t replicas) {
  json body = {{"success", true},
               {"key", std::string(key)},
               {"primary_node", std::string(primary_node)},
               {"replicas", replicas}};
  return Dump(body);
}

// Where a write of key went: its primary owner (an HTTP address when the
// member advertises one, else its node id) and the number of other owners.
// A single node, or a cluster of one, is its own primary without replicas.
struct Placement {
  std::string primary_node;
  size_t replicas = 0;
};
Placement WritePlacement(const DataRoutesDependencies& deps, std::string node_url,
                         const RequestContext& context, absl::string_view key) {
  if (deps.coordinator == nullptr || !deps.coordinator->Active()) return {std::move(node_url), 0};
  std::string scratch;
  absl::StatusOr<absl::string_view> engine_key = EngineKey(context, key, &scratch);
  if (!engine_key.ok()) return {std::move(node_url), 0};
  std::vector<std::string> owners = deps.coordinator->Owners(*engine_key);
  if (owners.empty()) return {std::move(node_url), 0};
  Placement placement{owners.front(), owners.size() - 1};
  cluster::Membership* membership =
      deps.cluster != nullptr ? deps.cluster->membership() : nullptr;
  cluster::Member member;
  if (membership != nullptr && membership->Find(owners.front(), &member) &&
      !member.http_address.empty()) {
    placement.primary_node = absl::StrCat("http://", member.http_address);
  }
  return placement;
}

}  // namespace

DataRoutes::DataRoutes(const DataRoutesConfig& config, const DataRoutesDependencies& dependencies)
    : config_(config),
      deps_(dependencies),
      joined_unix_ms_(absl::ToUnixMillis(absl::Now())),
      node_url_(config.node_url) {
  if (sodium_init() < 0) std::abort();
}

void DataRoutes::SetNodeUrl(std::string node_url) {
  absl::MutexLock lock(&node_url_mu_);
  node_url_ = std::move(node_url);
}

std::string DataRoutes::NodeId() const {
  // The cluster's id is final once it runs (with --listen port 0 it names
  // the bound port, which the configured id could not).
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    return deps_.cluster->node_id();
  }
  return config_.node_id;
}

std::string DataRoutes::NodeUrl() const {
  absl::ReaderMutexLock lock(&node_url_mu_);
  return node_url_;
}

absl::StatusOr<RequestContext> DataRoutes::Authorize(const HttpRequest& request,
                                                     HttpResponse* refusal) {
  RequestContext context;
  if (deps_.auth_store == nullptr) return context;
  std::optional<absl::string_view> key = request.Header("x-api-key");
  if (!key || key->empty()) {
    deps_.metrics->auth_failures()->Inc();
    *refusal = HttpResponse::Error(401, "missing X-API-Key header");
    return absl::UnauthenticatedError("missing X-API-Key header");
  }
  absl::StatusOr<auth::Principal> principal = deps_.auth_store->AuthenticateApiKey(*key);
  if (!principal.ok()) {
    deps_.metrics->auth_failures()->Inc();
    *refusal = HttpResponse::Error(401, principal.status().message());
    return principal.status();
  }
  if (deps_.rate_limiter != nullptr) {
    int64_t retry_after_ms = 0;
    if (!deps_.rate_limiter->Allow(principal->user_id, absl::ToUnixMillis(absl::Now()),
                                   &retry_after_ms)) {
      deps_.metrics->rate_limited()->Inc();
      *refusal = HttpResponse::Error(429, "rate limit exceeded");
      refusal->headers.emplace_back("Retry-After",
                                    absl::StrCat(std::max<int64_t>(1, (retry_after_ms + 999) / 1000)));
      return absl::ResourceExhaustedError("rate limit exceeded");
    }
  }
  context.key_prefix = TenantPrefix(principal->user_id);
  context.may_read = principal->can_read;
  context.may_write = principal->can_write;
  return context;
}

bool DataRoutes::AuthorizeAdmin(const HttpRequest& request, HttpResponse* refusal) {
  std::optional<absl::string_view> secret = request.Header("x-cluster-secret");
  std::optional<absl::string_view> key = request.Header("x-api-key");
  const std::string& expected = config_.cluster_secret;
  if (secret && !secret->empty()) {
    // Constant time in the secret's contents; the length is not a secret.
    if (!expected.empty() && secret->size() == expected.size() &&
        sodium_memcmp(secret->data(), expected.data(), expected.size()) == 0) {
      return true;
    }
    deps_.metrics->auth_failures()->Inc();
    *refusal = HttpResponse::Error(403, "X-Cluster-Secret does not match this node's cluster secret");
    return false;
  }
  if (deps_.auth_store == nullptr) {
    if (expected.empty()) return true;
    *refusal = HttpResponse::Error(
        401, "changing the membership needs the cluster secret (X-Cluster-Secret header)");
    return false;
  }
  if (!key || key->empty()) {
    *refusal = HttpResponse::Error(
        401, "changing the membership needs the administrator's X-API-Key or the cluster "
             "secret (X-Cluster-Secret)");
    return false;
  }
  absl::StatusOr<auth::Principal> principal = deps_.auth_store->AuthenticateApiKey(*key);
  if (!principal.ok()) {
    deps_.metrics->auth_failures()->Inc();
    *refusal = HttpResponse::Error(401, principal.status().message());
    return false;
  }
  if (principal->user_id != auth::kAdministratorUserId || !principal->can_write) {
    *refusal = HttpResponse::Error(
        403, "only the administrator (the first account) may change the membership");
    return false;
  }
  return true;
}

#define LOGKV_AUTHORIZE(context, request, responder)                 \
  HttpResponse refusal_;                                             \
  absl::StatusOr<RequestContext> context = Authorize(request, &refusal_); \
  if (!context.ok()) {                                               \
    responder.Send(std::move(refusal_));                             \
    return;                                                          \
  }

// As LOGKV_AUTHORIZE, and a key without the write scope is refused here,
// before its query or body is looked at (the Service checks again; this only
// spares parsing for a request that cannot succeed).
#define LOGKV_AUTHORIZE_WRITE(context, request, responder)                              \
  LOGKV_AUTHORIZE(context, request, responder);                                         \
  if (!context->may_write) {                                                            \
    responder.Send(HttpResponse::Error(403, "this API key may not write (missing scope)")); \
    return;                                                                             \
  }

// ---- Seed 000: /v1/kv/{key} --------------------------------------------------------

void DataRoutes::PutKv(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  const std::string& key = request.params[0];
  absl::StatusOr<int64_t> ttl_ms = ParseTtlMs(request);
  if (!ttl_ms.ok()) return responder.Send(HttpResponse::Error(400, ttl_ms.status().message()));
  absl::StatusOr<p::Consistency> consistency = ParseConsistency(request);
  if (!consistency.ok()) {
    return responder.Send(HttpResponse::Error(400, consistency.status().message()));
  }
  auto& b = RequestBuilder();
  BuildPut(&b, key, request.body, *ttl_ms, *consistency);
  Run(deps_.service, *context, &b, responder,
      [key, placement = WritePlacement(deps_, NodeUrl(), *context, key)](
          const p::Response& response) {
        absl::Status status = StatusOf(response);
        if (!status.ok()) return ErrorFromStatus(status);
        return HttpResponse::Json(
            200, WriteAnswer(key, placement.primary_node, placement.replicas));
      });
}

void DataRoutes::GetKv(HttpRequest& request, Responder responder, bool local_only) {
  LOGKV_AUTHORIZE(context, request, responder);
  const std::string& key = request.params[0];
  absl::StatusOr<p::Consistency> consistency = ParseConsistency(request);
  if (!consistency.ok()) {
    return responder.Send(HttpResponse::Error(400, consistency.status().message()));
  }
  // /store/{key} reads this node's engine only, even in a cluster.
  context->local_only = local_only;
  auto& b = RequestBuilder();
  BuildGet(&b, key, *consistency);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    return ValueAnswer(response, kOctetStream, "Key not found");
  });
}

void DataRoutes::DeleteKv(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  const std::string& key = request.params[0];
  absl::StatusOr<p::Consistency> consistency = ParseConsistency(request);
  if (!consistency.ok()) {
    return responder.Send(HttpResponse::Error(400, consistency.status().message()));
  }
  auto& b = RequestBuilder();
  BuildDelete(&b, key, *consistency);
  Run(deps_.service, *context, &b, responder,
      [key, placement = WritePlacement(deps_, NodeUrl(), *context, key)](
          const p::Response& response) {
        absl::Status status = StatusOf(response);
        // Deleting what is not there succeeds: the key is gone either way.
        if (!status.ok() && status.code() != absl::StatusCode::kNotFound) {
          return ErrorFromStatus(status);
        }
        return HttpResponse::Json(
            200, WriteAnswer(key, placement.primary_node, placement.replicas));
      });
}

// ---- Seed 001: /kv?key=K ---------------------------------------------------------------

namespace {

std::optional<std::string> QueryKey(const HttpRequest& request, Responder& responder) {
  std::optional<std::string> key = request.QueryParam("key");
  if (!key || key->empty()) {
    responder.Send(HttpResponse::Error(400, "missing query parameter 'key'"));
    return std::nullopt;
  }
  return key;
}

}  // namespace

void DataRoutes::PutQuery(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  std::optional<std::string> key = QueryKey(request, responder);
  if (!key) return;
  absl::StatusOr<int64_t> ttl_ms = ParseTtlMs(request);
  if (!ttl_ms.ok()) return responder.Send(HttpResponse::Error(400, ttl_ms.status().message()));
  auto& b = RequestBuilder();
  BuildPut(&b, *key, request.body, *ttl_ms, p::Consistency::Default);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    absl::Status status = StatusOf(response);
    if (!status.ok()) return ErrorFromStatus(status);
    const p::WriteResult* written = response.result_as_WriteResult();
    return HttpResponse::Json(200, Dump({{"success", true}, {"version", written->version()}}));
  });
}

void DataRoutes::GetQuery(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE(context, request, responder);
  std::optional<std::string> key = QueryKey(request, responder);
  if (!key) return;
  auto& b = RequestBuilder();
  BuildGet(&b, *key);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    return ValueAnswer(response, kOctetStream, "Key not found");
  });
}

void DataRoutes::DeleteQuery(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  std::optional<std::string> key = QueryKey(request, responder);
  if (!key) return;
  auto& b = RequestBuilder();
  BuildDelete(&b, *key, p::Consistency::Default);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    absl::Status status = StatusOf(response);
    if (!status.ok() && status.code() != absl::StatusCode::kNotFound) {
      return ErrorFromStatus(status);
    }
    return HttpResponse::Json(200, Dump({{"success", true}}));
  });
}

// ---- Seed 002: /v0/kv (base64) -----------------------------------------------------

void DataRoutes::PostBase64(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  absl::StatusOr<int64_t> ttl_ms = ParseTtlMs(request);
  if (!ttl_ms.ok()) return responder.Send(HttpResponse::Error(400, ttl_ms.status().message()));
  absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
  if (!body.ok()) {
    return responder.Send(HttpResponse::Error(
        400, absl::StrCat("body must be a JSON object {\"key\",\"value\"}: ",
                          body.status().message())));
  }
  if (!body->is_object()) {
    return responder.Send(HttpResponse::Error(400, "body must be a JSON object {\"key\",\"value\"}"));
  }
  auto key_field = body->find("key");
  auto value_field = body->find("value");
  if (key_field == body->end() || !key_field->is_string() || value_field == body->end() ||
      !value_field->is_string()) {
    return responder.Send(
        HttpResponse::Error(400, "\"key\" and \"value\" must be base64 strings"));
  }
  std::optional<std::string> key = DecodeBase64(key_field->get_ref<const std::string&>());
  std::optional<std::string> value = DecodeBase64(value_field->get_ref<const std::string&>());
  if (!key || !value) return responder.Send(HttpResponse::Error(400, "invalid base64"));
  auto& b = RequestBuilder();
  BuildPut(&b, *key, *value, *ttl_ms, p::Consistency::Default);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    absl::Status status = StatusOf(response);
    if (!status.ok()) return ErrorFromStatus(status);
    return HttpResponse::Json(200, "{}");
  });
}

void DataRoutes::GetBase64(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE(context, request, responder);
  std::optional<std::string> key = DecodeBase64(request.params[0]);
  if (!key) return responder.Send(HttpResponse::Error(400, "invalid base64 key"));
  auto& b = RequestBuilder();
  BuildGet(&b, *key);
  Run(deps_.service, *context, &b, responder,
      [encoded = request.params[0]](const p::Response& response) {
        absl::Status status = StatusOf(response);
        if (status.code() == absl::StatusCode::kNotFound) {
          return HttpResponse::Error(404, "key not found");
        }
        if (!status.ok()) return ErrorFromStatus(status);
        const absl::string_view value = p::View(response.result_as_ValueResult()->value());
        return HttpResponse::Json(200, Dump({{"key", encoded}, {"value", EncodeBase64(value)}}));
      });
}

// ---- Seed 003: /put/{key}, /get/{key}?version=N ----------------------------------------

namespace {

// {"key","value","version","timestamp"}, and "encoding" when the value is
// base64. PUT /put stores the JSON text of the value, which comes back as
// that JSON. Bytes written by another dialect come back losslessly: as JSON
// when they are JSON nested at most max_json_depth deep, else as a string
// when they are UTF-8, else as base64 with "encoding": "base64" (a JSON
// string cannot carry them). Deeper JSON is text here: it is never built
// into a tree, since serialising one recurses once per level.
json VersionedAnswer(absl::string_view key, absl::string_view stored, uint64_t version,
                     uint64_t timestamp, size_t max_json_depth) {
  json answer = {{"key", std::string(key)},
                 {"version", version},
                 {"timestamp", Rfc3339(TimestampMs(timestamp))}};
  if (absl::StatusOr<json> value = ParseJson(stored, max_json_depth); value.ok()) {
    answer["value"] = *std::move(value);
  } else if (IsValidUtf8(stored)) {
    answer["value"] = std::string(stored);
  } else {
    answer["value"] = EncodeBase64(stored);
    answer["encoding"] = "base64";
  }
  return answer;
}

}  // namespace

void DataRoutes::PutVersioned(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  const std::string& key = request.params[0];
  absl::StatusOr<int64_t> ttl_ms = ParseTtlMs(request);
  if (!ttl_ms.ok()) return responder.Send(HttpResponse::Error(400, ttl_ms.status().message()));
  absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
  if (!body.ok()) {
    return responder.Send(HttpResponse::Error(
        400, absl::StrCat("body must be JSON {\"value\": ...}: ", body.status().message())));
  }
  if (!body->is_object() || !body->contains("value")) {
    return responder.Send(HttpResponse::Error(400, "body must be JSON {\"value\": ...}"));
  }
  std::string stored = Dump((*body)["value"]);
  auto& b = RequestBuilder();
  BuildPut(&b, key, stored, *ttl_ms, p::Consistency::Default);
  Run(deps_.service, *context, &b, responder,
      [key, stored = std::move(stored),
       max_json_depth = config_.max_json_depth](const p::Response& response) {
        absl::Status status = StatusOf(response);
        if (!status.ok()) return ErrorFromStatus(status);
        const p::WriteResult* written = response.result_as_WriteResult();
        return HttpResponse::Json(200, Dump(VersionedAnswer(key, stored, written->version(),
                                                            written->timestamp(),
                                                            max_json_depth)));
      });
}

void DataRoutes::GetVersioned(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE(context, request, responder);
  const std::string& key = request.params[0];
  absl::StatusOr<std::optional<std::string>> version_parameter =
      StrictQueryParam(request, "version");
  if (!version_parameter.ok()) {
    return responder.Send(HttpResponse::Error(400, version_parameter.status().message()));
  }
  auto& b = RequestBuilder();
  if (const std::optional<std::string>& version_text = *version_parameter) {
    uint64_t version = 0;
    if (!absl::SimpleAtoi(*version_text, &version) || version == 0) {
      return responder.Send(HttpResponse::Error(
          400, absl::StrCat("version must be a positive integer, not '", *version_text, "'")));
    }
    auto k = Bytes(&b, key);
    FinishRequest(&b, p::Operation::GetVersion, p::CreateGetVersion(b, k, version));
  } else {
    BuildGet(&b, key);
  }
  Run(deps_.service, *context, &b, responder,
      [key, max_json_depth = config_.max_json_depth](const p::Response& response) {
        absl::Status status = StatusOf(response);
        if (status.code() == absl::StatusCode::kNotFound) {
          return HttpResponse::Error(404, absl::StrCat("Key '", key, "' not found"));
        }
        if (!status.ok()) return ErrorFromStatus(status);
        const p::ValueResult* value = response.result_as_ValueResult();
        return HttpResponse::Json(
            200, Dump(VersionedAnswer(key, p::View(value->value()), value->version(),
                                      value->timestamp(), max_json_depth)));
      });
}

// ---- Seed 004: /kv/{path} JSON documents -----------------------------------------------

void DataRoutes::PutDocument(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  const std::string& path = request.params[0];
  if (request.body.size() > config_.max_document_bytes) {
    return responder.Send(HttpResponse::Error(
        413, absl::StrCat("document of ", request.body.size(), " bytes is larger than the limit of ",
                          config_.max_document_bytes, " bytes")));
  }
  absl::StatusOr<int64_t> ttl_ms = ParseTtlMs(request);
  if (!ttl_ms.ok()) return responder.Send(HttpResponse::Error(400, ttl_ms.status().message()));
  // Validated without building a tree: the document is stored as sent.
  if (absl::Status status = CheckJson(request.body, config_.max_json_depth); !status.ok()) {
    return responder.Send(HttpResponse::Error(
        400, absl::StrCat("body must be a JSON document: ", status.message())));
  }
  auto& b = RequestBuilder();
  BuildPut(&b, path, request.body, *ttl_ms, p::Consistency::Default);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    absl::Status status = StatusOf(response);
    if (!status.ok()) return ErrorFromStatus(status);
    const p::WriteResult* written = response.result_as_WriteResult();
    return HttpResponse::Json(
        200, Dump({{"uuid", RandomUuid()}, {"timestamp", TimestampMs(written->timestamp())}}));
  });
}

void DataRoutes::GetDocument(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE(context, request, responder);
  const std::string& path = request.params[0];
  auto& b = RequestBuilder();
  BuildGet(&b, path);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    return ValueAnswer(response, kJsonType, "not found");
  });
}

void DataRoutes::DeleteDocument(HttpRequest& request, Responder responder) {
  LOGKV_AUTHORIZE_WRITE(context, request, responder);
  const std::string& path = request.params[0];
  auto& b = RequestBuilder();
  BuildDelete(&b, path, p::Consistency::Default);
  Run(deps_.service, *context, &b, responder, [](const p::Response& response) {
    absl::Status status = StatusOf(response);
    if (!status.ok() && status.code() != absl::StatusCode::kNotFound) {
      return ErrorFromStatus(status);
    }
    HttpResponse answer;
    answer.status = 204;
    return answer;
  });
}

#undef LOGKV_AUTHORIZE_WRITE
#undef LOGKV_AUTHORIZE

// ---- Node routes -------------------------------------------------------------------------

void DataRoutes::Health(HttpRequest&, Responder responder) {
  std::string mode = config_.mode;
  {
    absl::MutexLock lock(&hand_off_mu_);
    if (mode == "normal" && syncing_ && syncing_()) mode = "syncing";
  }
  // Degraded: this node serves reads but refuses writes (its disk is full,
  // or a failed sync); the reason says which. Still 200, since reads work.
  const absl::Status writes = deps_.service->engine()->WriteHealth();
  json body = {{"status", writes.ok() ? "healthy" : "degraded"},
               {"node_id", NodeId()},
               {"mode", mode},
               {"member_count", deps_.cluster == nullptr
                                    ? size_t{1}
                                    : deps_.cluster->LiveMemberCount()},
               {"uptime_ms", absl::ToUnixMillis(absl::Now()) -
                                 deps_.service->counters()->start_unix_ms}};
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    // Whether a majority of the members confirmed this node's view: until
    // then it refuses strong operations (docs/cluster.md, "Restarts").
    body["view_confirmed"] = deps_.cluster->membership()->ViewConfirmed();
  }
  if (!writes.ok()) {
    // Public: the reason in words, without the server's paths (the log has
    // the engine's message with its file).
    body["reason"] = engine::IsNoSpace(writes)
                         ? "disk full (No space left on device): writes are refused until "
                           "space is freed"
                         : "writes are refused after a failed sync, until the node restarts "
                           "(the server log has the details)";
  }
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

absl::StatusOr<DataRoutes::StatsCaller> DataRoutes::AuthorizeStats(const HttpRequest& request,
                                                                   HttpResponse* refusal) {
  if (deps_.auth_store == nullptr) return StatsCaller{};
  if (std::optional<absl::string_view> authorization = request.Header("authorization")) {
    absl::string_view token = absl::StripAsciiWhitespace(*authorization);
    constexpr absl::string_view kScheme = "Bearer ";
    const bool bearer = token.size() > kScheme.size() &&
                        absl::EqualsIgnoreCase(token.substr(0, kScheme.size()), kScheme);
    token = absl::StripAsciiWhitespace(token.substr(bearer ? kScheme.size() : 0));
    const std::string& secret = config_.operator_secret;
    // Constant time in the secret's contents; its length is not a secret.
    if (bearer && !secret.empty() && token.size() == secret.size() &&
        sodium_memcmp(token.data(), secret.data(), secret.size()) == 0) {
      return StatsCaller{};
    }
    if (!request.Header("x-api-key")) {
      deps_.metrics->auth_failures()->Inc();
      *refusal = HttpResponse::Error(401, "invalid operator credential");
      return absl::UnauthenticatedError("invalid operator credential");
    }
  }
  if (!request.Header("x-api-key")) {
    deps_.metrics->auth_failures()->Inc();
    constexpr absl::string_view kWhy =
        "statistics need credentials on this node: X-API-Key for your own figures, or "
        "Authorization: Bearer <cluster secret> for the node's";
    *refusal = HttpResponse::Error(401, kWhy);
    return absl::UnauthenticatedError(kWhy);
  }
  absl::StatusOr<RequestContext> context = Authorize(request, refusal);
  if (!context.ok()) return context.status();
  StatsCaller caller;
  caller.node_wide = false;
  caller.key_prefix = std::move(context->key_prefix);
  return caller;
}

void DataRoutes::MetricsRoute(HttpRequest& request, Responder responder) {
  HttpResponse refusal;
  absl::StatusOr<StatsCaller> caller = AuthorizeStats(request, &refusal);
  if (!caller.ok()) return responder.Send(std::move(refusal));
  if (!caller->node_wide) {
    // Every figure here is the node's; a tenant's own are in /db/stats.
    return responder.Send(HttpResponse::Error(
        403, "node metrics need the operator credential (Authorization: Bearer <cluster "
             "secret>); an API key sees its own figures in /db/stats and /cache/stats"));
  }
  std::optional<absl::string_view> accept = request.Header("accept");
  std::optional<std::string> format = request.QueryParam("format");
  const bool prometheus = (format && *format == "prometheus") ||
                          (accept && absl::StrContains(*accept, "text/plain"));
  if (prometheus) {
    HttpResponse answer;
    answer.content_type = kPrometheusContentType;
    answer.body = deps_.metrics->RenderPrometheus();
    return responder.Send(std::move(answer));
  }
  const engine::Stats stats = deps_.service->engine()->GetStats();
  const ReplicatorFigures replicator = ReadReplicatorFigures(*deps_.metrics);
  ServerCounters* counters = deps_.service->counters();
  json body = {
      {"node_id", NodeId()},
      // The clients' keys: the server's own records (accounts, hints) are not counted.
      {"key_count", stats.client_keys},
      {"wal_size", stats.log_bytes},
      {"timestamp", absl::ToUnixMillis(absl::Now())},
      {"total_replications", replicator.total_replications},
      {"successful_replicas", replicator.successful_replicas},
      {"failed_replicas", replicator.failed_replicas},
      {"queue_size", replicator.queue_size},
      {"average_ack_time_ms", replicator.average_ack_time_ms},
      {"max_replication_lag_ms", replicator.max_replication_lag_ms},
      {"retries_in_progress", replicator.retries_in_progress},
      {"tombstones", stats.tombstones},
      {"segments", stats.segments},
      {"dead_bytes", stats.dead_bytes},
      {"index_bytes", stats.index_bytes + stats.key_bytes},
      {"puts", stats.puts},
      {"deletes", stats.deletes},
      {"gets", stats.gets},
      {"fsyncs", stats.fsyncs},
      {"compactions", stats.compactions},
      {"expired_swept", stats.expired_swept},
      {"unreadable_records_skipped", stats.unreadable_records_skipped},
      {"shards_refusing_writes", stats.shards_refusing_writes},
      {"connections", counters->connections.load()},
      {"requests", counters->requests.load()},
      {"uptime_ms", absl::ToUnixMillis(absl::Now()) - counters->start_unix_ms},
  };
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

namespace {

// A server's name as ?server= may give it, compared without the scheme of a
// URL, a trailing '/', ASCII case and with localhost as 127.0.0.1:
// "http://127.0.0.1:8080/" and "127.0.0.1:8080" name the same server.
std::string ServerName(absl::string_view name) {
  name = absl::StripAsciiWhitespace(name);
  for (absl::string_view scheme : {"http://", "https://"}) {
    if (name.size() > scheme.size() && absl::EqualsIgnoreCase(name.substr(0, scheme.size()), scheme)) {
      name.remove_prefix(scheme.size());
      break;
    }
  }
  while (absl::ConsumeSuffix(&name, "/")) {
  }
  std::string normal = absl::AsciiStrToLower(name);
  if (absl::StartsWith(normal, "localhost:")) normal.replace(0, 9, "127.0.0.1");
  return normal;
}

std::vector<cluster::Member> MembersOf(cluster::ClusterNode* node) {
  const cluster::Membership* membership = node->membership();
  return membership == nullptr ? std::vector<cluster::Member>{} : membership->Members();
}

// Members other than node that own keys (not Left).
size_t OtherOwners(cluster::ClusterNode* node) {
  size_t others = 0;
  for (const cluster::Member& member : MembersOf(node)) {
    if (member.node_id != node->node_id() && member.state != cluster::MemberState::kLeft) {
      ++others;
    }
  }
  return others;
}

}  // namespace

// Seed 003's ?server= names the node whose figures are wanted, by any name
// /servers, /nodes or /members/ give it: a URL, an HTTP or binary host:port,
// or a node id. Another member's figures are its own to give: the answer is
// a redirect to the same route on that member.
std::optional<HttpResponse> DataRoutes::OtherServer(const HttpRequest& request) const {
  std::optional<std::string> server = request.QueryParam("server");
  if (!server || server->empty()) return std::nullopt;
  const std::string self_id = NodeId();
  const std::string name = ServerName(*server);
  if (*server == self_id || name == ServerName(NodeUrl())) return std::nullopt;
  std::vector<std::string> known = {NodeUrl(), self_id};
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    for (const cluster::Member& member : MembersOf(deps_.cluster)) {
      const bool named = *server == member.node_id || name == ServerName(member.address) ||
                         (!member.http_address.empty() && name == ServerName(member.http_address));
      if (named) {
        if (member.node_id == self_id) return std::nullopt;
        if (member.http_address.empty()) {
          return HttpResponse::Error(
              421, absl::StrCat("member '", member.node_id,
                                "' serves no HTTP address; ask it over the binary protocol at ",
                                member.address));
        }
        const std::string location =
            absl::StrCat("http://", member.http_address, request.path, "?", request.query);
        HttpResponse redirect = HttpResponse::Json(
            307, Dump({{"node_id", member.node_id}, {"location", location}}));
        redirect.headers.emplace_back("Location", location);
        return redirect;
      }
      if (!member.http_address.empty()) known.push_back(absl::StrCat("http://", member.http_address));
    }
  }
  return HttpResponse::Error(
      404, absl::StrCat("unknown server '", *server, "': name a member as /servers, /nodes or "
                        "/members/ list it (URL, host:port or node id), e.g. ",
                        absl::StrJoin(known, ", ")));
}

std::optional<DataRoutes::StatsCaller> DataRoutes::StatsRouteCaller(const HttpRequest& request,
                                                                    Responder& responder) {
  if (std::optional<HttpResponse> other = OtherServer(request)) {
    responder.Send(*std::move(other));
    return std::nullopt;
  }
  HttpResponse refusal;
  absl::StatusOr<StatsCaller> caller = AuthorizeStats(request, &refusal);
  if (!caller.ok()) {
    responder.Send(std::move(refusal));
    return std::nullopt;
  }
  return *std::move(caller);
}

void DataRoutes::CacheStats(HttpRequest& request, Responder responder) {
  std::optional<StatsCaller> caller = StatsRouteCaller(request, responder);
  if (!caller) return;
  // Values are read straight from the mapped log (the page cache is the
  // cache): there is no separate value cache to fill, so it is never full.
  engine::Engine* engine = deps_.service->engine();
  const uint64_t keys = caller->node_wide ? engine->GetStats().client_keys
                                          : engine->CountPrefix(caller->key_prefix).keys;
  json body = {{"size", keys}, {"max_size", 0}, {"is_full", false}};
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

void DataRoutes::DbStats(HttpRequest& request, Responder responder) {
  std::optional<StatsCaller> caller = StatsRouteCaller(request, responder);
  if (!caller) return;
  engine::Engine* engine = deps_.service->engine();
  json body;
  if (caller->node_wide) {
    // Counted from what the engine holds (so right after a restart), the
    // server's own records left out.
    const engine::Stats stats = engine->GetStats();
    body = {{"total_keys", stats.client_keys},
            {"total_versions", stats.client_versions},
            {"file_size", stats.log_bytes}};
  } else {
    // A tenant's share: its keys, their versions and the bytes of their records.
    const engine::Engine::PrefixStats own = engine->CountPrefix(caller->key_prefix);
    body = {{"total_keys", own.keys},
            {"total_versions", own.versions},
            {"file_size", own.record_bytes}};
  }
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

namespace {

// The members of a cluster as /nodes and POST /join list them.
json NodesJson(const std::vector<cluster::Member>& members, const std::string& self_id) {
  json nodes = json::array();
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  for (const cluster::Member& member : members) {
    const int64_t last_seen = member.node_id == self_id ? now_ms : member.last_seen_unix_ms;
    nodes.push_back({{"id", member.node_id},
                     {"address", member.address},
                     {"http_address", member.http_address},
                     {"alive", member.state == cluster::MemberState::kAlive},
                     {"state", cluster::MemberStateName(member.state)},
                     {"incarnation", member.incarnation},
                     {"last_seen", last_seen > 0 ? json(Rfc3339(last_seen)) : json(nullptr)}});
  }
  return nodes;
}

// A join target from a request body: host:port of a member's binary
// protocol, or the URL of its HTTP API (http://host:port, seed 001's form).
// Quotes and whitespace around it are ignored.
struct JoinTarget {
  std::string address;  // host:port
  bool http = false;    // a URL: address is the member's HTTP address
};

absl::StatusOr<JoinTarget> ParseJoinTarget(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
    text = absl::StripAsciiWhitespace(text.substr(1, text.size() - 2));
  }
  JoinTarget target;
  if (absl::StartsWith(text, "https://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "': this node does not speak HTTPS to its peers; name a member's "
        "http:// URL or its binary-protocol address, host:port"));
  }
  if (absl::ConsumePrefix(&text, "http://")) {
    target.http = true;
    text = text.substr(0, text.find('/'));
  }
  const size_t colon = text.rfind(':');
  int port = 0;
  if (text.empty() || colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(text.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not host:port: name a member's binary-protocol address "
        "(its --listen / --advertise address, e.g. 127.0.0.1:7070) or its HTTP URL "
        "(http://127.0.0.1:8080)"));
  }
  std::string host(text.substr(0, colon));
  if (host == "localhost") host = "127.0.0.1";
  target.address = absl::StrCat(host, ":", port);
  return target;
}

// The binary-protocol address of the member whose HTTP API is at
// http_address, asked of that member (GET /nodes). Blocks.
absl::StatusOr<std::string> BinaryAddressOf(const std::string& http_address) {
  const size_t colon = http_address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(http_address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("'", http_address, "' is not host:port"));
  }
  absl::StatusOr<FetchedResponse> answer =
      HttpGet(http_address.substr(0, colon), port, "/nodes", absl::Seconds(3));
  if (!answer.ok()) return answer.status();
  const json nodes = json::parse(answer->body, nullptr, false);
  if (answer->status != 200 || !nodes.is_array()) {
    return absl::UnavailableError(absl::StrCat(
        "http://", http_address, "/nodes answered ", answer->status,
        " without a member list: is it a logkv node?"));
  }
  std::string any;
  for (const json& node : nodes) {
    if (!node.is_object() || !node.contains("address") || !node["address"].is_string()) continue;
    const std::string address = node["address"].get<std::string>();
    if (node.value("http_address", "") == http_address) return address;
    if (any.empty() && node.value("alive", false)) any = address;
  }
  // The member answered for others only (it names itself by another host):
  // any live member of its cluster will do.
  if (!any.empty()) return any;
  return absl::UnavailableError(absl::StrCat("http://", http_address,
                                             "/nodes names no live member to join through"));
}

}  // namespace

void DataRoutes::Nodes(HttpRequest&, Responder responder) {
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    return responder.Send(HttpResponse::Json(
        200, Dump(NodesJson(MembersOf(deps_.cluster), deps_.cluster->node_id()))));
  }
  json node = {{"id", NodeId()},
               {"address", NodeUrl()},
               {"alive", true},
               {"last_seen", Rfc3339(absl::ToUnixMillis(absl::Now()))}};
  responder.Send(HttpResponse::Json(200, Dump(json::array({node}))));
}

void DataRoutes::Servers(HttpRequest&, Responder responder) {
  if (deps_.cluster == nullptr || deps_.cluster->membership() == nullptr) {
    return responder.Send(HttpResponse::Json(200, Dump(json::array({NodeUrl()}))));
  }
  // The members that serve: Alive or Suspect, with an HTTP address.
  json servers = json::array();
  for (const cluster::Member& member : MembersOf(deps_.cluster)) {
    if (member.http_address.empty()) continue;
    if (member.state != cluster::MemberState::kAlive &&
        member.state != cluster::MemberState::kSuspect) {
      continue;
    }
    servers.push_back(absl::StrCat("http://", member.http_address));
  }
  responder.Send(HttpResponse::Json(200, Dump(servers)));
}

// Seed 004's clients reach a member at its "address" over HTTP, so that is
// the HTTP host:port (null for a member without one); the binary protocol's
// is "binary_address".
void DataRoutes::Members(HttpRequest&, Responder responder) {
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    json members = json::array();
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    for (const cluster::Member& member : MembersOf(deps_.cluster)) {
      if (member.state == cluster::MemberState::kLeft) continue;
      members.push_back(
          {{"id", member.node_id},
           {"address",
            member.http_address.empty() ? json(nullptr) : json(member.http_address)},
           {"binary_address", member.address},
           {"http_address", member.http_address},
           {"state", cluster::MemberStateName(member.state)},
           {"last_seen",
            member.node_id == deps_.cluster->node_id() ? now_ms : member.last_seen_unix_ms},
           {"joined_timestamp", member.joined_unix_ms}});
    }
    return responder.Send(HttpResponse::Json(200, Dump(members)));
  }
  const std::string node_url = NodeUrl();
  json member = {{"id", NodeId()},
                 {"address", std::string(absl::StripPrefix(node_url, "http://"))},
                 {"last_seen", absl::ToUnixMillis(absl::Now())},
                 {"joined_timestamp", joined_unix_ms_}};
  responder.Send(HttpResponse::Json(200, Dump(json::array({member}))));
}

void DataRoutes::Join(HttpRequest& request, Responder responder, bool json_body) {
  if (HttpResponse refusal; !AuthorizeAdmin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  if (deps_.auth_store != nullptr) {
    // Accounts are per node: a cluster of nodes with --auth=on would give
    // two users the same namespace (docs/cluster.md).
    return responder.Send(HttpResponse::Error(
        409, "joining a cluster with --auth=on is not supported yet: accounts are not "
             "replicated"));
  }
  if (deps_.cluster == nullptr || deps_.cluster->membership() == nullptr) {
    return responder.Send(
        HttpResponse::Error(501, "cluster membership is not running on this node"));
  }
  std::string text(request.body);
  if (json_body) {
    // {"address": "host:port"}
    absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
    if (!body.ok() || !body->is_object() || !body->contains("address") ||
        !(*body)["address"].is_string()) {
      return responder.Send(HttpResponse::Error(
          400, "body must be {\"address\": \"host:port\"} naming a member's binary-protocol "
               "address"));
    }
    text = (*body)["address"].get<std::string>();
  }
  absl::StatusOr<JoinTarget> target = ParseJoinTarget(text);
  if (!target.ok()) return responder.Send(HttpResponse::Error(400, target.status().message()));
  auto shared = std::make_shared<Responder>(std::move(responder));
  if (!target->http) return JoinThrough(target->address, std::move(shared));
  BackgroundFunction background;
  {
    absl::MutexLock lock(&hand_off_mu_);
    background = background_;
  }
  if (!background) {
    return shared->Send(HttpResponse::Error(503, "this node is stopping"));
  }
  // Ask the member for its binary-protocol address, off the loop.
  background([this, shared, http_address = target->address] {
    absl::StatusOr<std::string> address = BinaryAddressOf(http_address);
    if (!address.ok()) {
      HttpResponse answer = HttpResponse::Error(
          503, absl::StrCat("cannot join through http://", http_address, ": ",
                            address.status().message()));
      answer.headers.emplace_back("Retry-After", "1");
      return shared->Send(std::move(answer));
    }
    JoinThrough(*address, shared);
  });
}

void DataRoutes::JoinThrough(const std::string& address, std::shared_ptr<Responder> responder) {
  cluster::ClusterNode* node = deps_.cluster;
  node->membership()->JoinThroughAsync(
      address, absl::Seconds(3),
      [responder, node, address](absl::Status status) {
        if (!status.ok()) {
          const bool wrong_address = status.code() == absl::StatusCode::kInvalidArgument ||
                                     status.code() == absl::StatusCode::kFailedPrecondition;
          const int code = wrong_address ? 400 : 503;
          HttpResponse answer = HttpResponse::Error(
              code, absl::StrCat("cannot join through ", address, ": ", status.message()));
          if (code == 503) answer.headers.emplace_back("Retry-After", "1");
          return responder->Send(std::move(answer));
        }
        json body = {{"members", NodesJson(MembersOf(node), node->node_id())}};
        responder->Send(HttpResponse::Json(200, Dump(body)));
      });
}

void DataRoutes::Leave(HttpRequest& request, Responder responder) {
  if (HttpResponse refusal; !AuthorizeAdmin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  if (deps_.cluster == nullptr || deps_.cluster->membership() == nullptr) {
    return responder.Send(
        HttpResponse::Error(501, "cluster membership is not running on this node"));
  }
  cluster::ClusterNode* node = deps_.cluster;
  if (node->membership()->HasLeft()) {
    return responder.Send(HttpResponse::Error(409, "this node has already left the cluster"));
  }
  if (OtherOwners(node) == 0) {
    // Its keys would have no owner left, and would be dropped as not owned.
    return responder.Send(HttpResponse::Error(
        409, "this node is the only member of its cluster: leaving would leave nobody to own "
             "its keys"));
  }
  auto shared = std::make_shared<Responder>(std::move(responder));
  // The node stays up (serving its local data) but owns nothing in the
  // cluster any more; POST /members/join brings it back. It leaves only
  // once its keys were handed to the owners that remain.
  auto leave = [shared, node](absl::Status handed_off) {
    if (!handed_off.ok()) {
      HttpResponse refused = HttpResponse::Error(
          handed_off.code() == absl::StatusCode::kFailedPrecondition ? 409 : 503,
          absl::StrCat("not leaving: this node's keys could not be handed off (",
                       handed_off.message(), ")"));
      if (refused.status == 503) refused.headers.emplace_back("Retry-After", "5");
      return shared->Send(std::move(refused));
    }
    // Asked again after the hand-off: another member may have left meanwhile.
    if (OtherOwners(node) == 0) {
      return shared->Send(HttpResponse::Error(
          409, "not leaving: no other member is left in the cluster to own this node's keys"));
    }
    node->membership()->LeaveAsync([shared, node] {
      json body = {{"left", true}, {"node_id", node->node_id()}};
      shared->Send(HttpResponse::Json(200, Dump(body)));
    });
  };
  HandOffFunction hand_off;
  {
    absl::MutexLock lock(&hand_off_mu_);
    hand_off = hand_off_;
  }
  if (hand_off) return hand_off(std::move(leave));
  leave(absl::OkStatus());
}

void DataRoutes::SetBackground(BackgroundFunction background) {
  absl::MutexLock lock(&hand_off_mu_);
  background_ = std::move(background);
}

void DataRoutes::SetSyncing(std::function<bool()> syncing) {
  absl::MutexLock lock(&hand_off_mu_);
  syncing_ = std::move(syncing);
}

void DataRoutes::SetHandOff(HandOffFunction hand_off) {
  absl::MutexLock lock(&hand_off_mu_);
  hand_off_ = std::move(hand_off);
}

void DataRoutes::Fault(HttpRequest& request, Responder responder) {
  absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
  if (!body.ok() || !body->is_object() || !body->contains("drop") ||
      !(*body)["drop"].is_array()) {
    return responder.Send(HttpResponse::Error(
        400, "body must be {\"drop\": [\"host:port\", ...]} (an empty list heals)"));
  }
  std::vector<std::string> dropped;
  for (const json& item : (*body)["drop"]) {
    if (!item.is_string()) {
      return responder.Send(HttpResponse::Error(400, "\"drop\" must list host:port strings"));
    }
    dropped.push_back(item.get<std::string>());
  }
  if (absl::Status status = deps_.cluster->SetDropped(dropped); !status.ok()) {
    return responder.Send(HttpResponse::Error(403, status.message()));
  }
  responder.Send(HttpResponse::Json(200, Dump(json{{"dropped", dropped}})));
}

void DataRoutes::AddTo(Router* router) {
  using M = Method;
  // The busiest routes first: the table is searched in order.
  router->Add(M::kGet, "/v1/kv/{key...}",
              [this](HttpRequest& r, Responder s) { GetKv(r, std::move(s), false); });
  router->Add(M::kPut, "/v1/kv/{key...}",
              [this](HttpRequest& r, Responder s) { PutKv(r, std::move(s)); }, true);
  router->Add(M::kDelete, "/v1/kv/{key...}",
              [this](HttpRequest& r, Responder s) { DeleteKv(r, std::move(s)); }, true);
  router->Add(M::kGet, "/store/{key...}",
              [this](HttpRequest& r, Responder s) { GetKv(r, std::move(s), true); });
  router->Add(M::kGet, "/kv", [this](HttpRequest& r, Responder s) { GetQuery(r, std::move(s)); });
  router->Add(M::kPut, "/kv", [this](HttpRequest& r, Responder s) { PutQuery(r, std::move(s)); },
              true);
  router->Add(M::kDelete, "/kv",
              [this](HttpRequest& r, Responder s) { DeleteQuery(r, std::move(s)); }, true);
  router->Add(M::kPost, "/v0/kv",
              [this](HttpRequest& r, Responder s) { PostBase64(r, std::move(s)); }, true);
  router->Add(M::kGet, "/v0/kv/key/{key...}",
              [this](HttpRequest& r, Responder s) { GetBase64(r, std::move(s)); });
  router->Add(M::kPut, "/put/{key...}",
              [this](HttpRequest& r, Responder s) { PutVersioned(r, std::move(s)); }, true);
  router->Add(M::kPost, "/put/{key...}",
              [this](HttpRequest& r, Responder s) { PutVersioned(r, std::move(s)); }, true);
  router->Add(M::kGet, "/get/{key...}",
              [this](HttpRequest& r, Responder s) { GetVersioned(r, std::move(s)); });
  router->Add(M::kPut, "/kv/{path...}",
              [this](HttpRequest& r, Responder s) { PutDocument(r, std::move(s)); }, true);
  router->Add(M::kGet, "/kv/{path...}",
              [this](HttpRequest& r, Responder s) { GetDocument(r, std::move(s)); });
  router->Add(M::kDelete, "/kv/{path...}",
              [this](HttpRequest& r, Responder s) { DeleteDocument(r, std::move(s)); }, true);
  router->Add(M::kGet, "/health", [this](HttpRequest& r, Responder s) { Health(r, std::move(s)); });
  router->Add(M::kGet, "/metrics",
              [this](HttpRequest& r, Responder s) { MetricsRoute(r, std::move(s)); });
  router->Add(M::kGet, "/cache/stats",
              [this](HttpRequest& r, Responder s) { CacheStats(r, std::move(s)); });
  router->Add(M::kGet, "/db/stats", [this](HttpRequest& r, Responder s) { DbStats(r, std::move(s)); });
  router->Add(M::kGet, "/nodes", [this](HttpRequest& r, Responder s) { Nodes(r, std::move(s)); });
  router->Add(M::kGet, "/servers",
              [this](HttpRequest& r, Responder s) { Servers(r, std::move(s)); });
  router->Add(M::kGet, "/members/",
              [this](HttpRequest& r, Responder s) { Members(r, std::move(s)); });
  router->Add(M::kGet, "/internal/ping", [](HttpRequest&, Responder s) {
    s.Send(HttpResponse::Json(200, R"({"status":"ok"})"));
  });
  router->Add(M::kPost, "/join",
              [this](HttpRequest& r, Responder s) { Join(r, std::move(s), false); });
  router->Add(M::kPost, "/members/join",
              [this](HttpRequest& r, Responder s) { Join(r, std::move(s), true); });
  router->Add(M::kPost, "/members/leave",
              [this](HttpRequest& r, Responder s) { Leave(r, std::move(s)); });
  if (deps_.cluster != nullptr && deps_.cluster->fault_injection_enabled()) {
    // Tests only (a LOGKV_FAULT_INJECTION build run with --fault-injection).
    router->Add(M::kPost, "/internal/fault",
                [this](HttpRequest& r, Responder s) { Fault(r, std::move(s)); });
  }
}

}  // namespace logkv::server::http
