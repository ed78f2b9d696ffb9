#include "server/http/data_routes.h"

#include <sodium.h>

#include <algorithm>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "server/cluster/cluster_node.h"
#include "server/core/coordinator.h"
#include "server/http/cluster_browse.h"
#include "server/http/status_http.h"
#include "server/namespaces.h"

namespace logkv::server::http {

namespace p = ::logkv::protocol;
using nlohmann::json;

namespace {

// GET /v1/kv's page sizes.
constexpr uint32_t kDefaultScanLimit = 100;
constexpr uint32_t kMaxScanLimit = 1000;
// Events read per shard per pass of a watch stream.
constexpr uint32_t kWatchBatchEvents = 256;

constexpr absl::string_view kOctetStream = "application/octet-stream";
constexpr absl::string_view kJsonType = "application/json";

// ---- What a route is ------------------------------------------------------------------

// What a route asks of the engine.
enum class Operation {
  kGet,
  kGetVersion,  // the newest version, or the one ?version=N names (while --versions keeps it)
  kPut,
  kDelete,
};

// Writes need the key's write scope, and are refused under --read-only.
bool Writes(Operation operation) {
  return operation == Operation::kPut || operation == Operation::kDelete;
}

// Where a route finds the key.
enum class KeyFrom {
  kPath,        // the {key...} capture, as it is
  kPathBase64,  // the {key...} capture, in base64 (seed 002)
  kQuery,       // ?key= (seed 001)
  kBody,        // the route's body decoder finds it (seed 002's POST)
};

// Where a write of key went: its primary owner (an HTTP address when the
// member advertises one, else its node id) and the number of other owners.
// A single node, or a cluster of one, is its own primary without replicas.
struct Placement {
  std::string primary_node;
  size_t replicas = 0;
};

// What an answer may need besides the engine's response. Owned: a deferred
// answer is encoded on another thread, after the request is gone.
struct AnswerInput {
  std::string key;       // the client's key, before any namespace
  std::string sent_key;  // KeyFrom::kPathBase64: the key as the path spelled it
  std::string stored;    // a value decoded from the body (seeds 002 and 003), else empty
  Placement placement;   // DataRoute::reports_placement
  size_t max_json_depth = 0;
  bool conditional = false;  // If-Match / If-None-Match sent: a mismatch is 412
};

// One request as the generic handler decodes it.
struct DataCall {
  AnswerInput answer;
  absl::string_view value;  // kPut: the body itself, or answer.stored
  int64_t ttl_ms = 0;       // kPut: 0 never expires
  p::Consistency consistency = p::Consistency::Default;
  uint64_t version = 0;  // kGetVersion: 0 for the newest
  std::optional<uint64_t> if_version;  // kPut, kDelete: compare-and-set
};

// Refuses a body as a whole before the query is looked at
// (ResourceExhausted: 413).
using BodyCheck = absl::Status (*)(absl::string_view body, const DataRoutesConfig& config);
// Turns a put's body into call->value (and, for KeyFrom::kBody, into
// call->answer.key); InvalidArgument (400) says what is wrong.
using BodyDecoder = absl::Status (*)(absl::string_view body, const DataRoutesConfig& config,
                                     DataCall* call);
// The answer to an operation that succeeded (a delete of an absent key
// included).
using AnswerEncoder = HttpResponse (*)(const AnswerInput& input, const p::Response& response);

// One route of a dialect, in the order its request is handled: credentials
// (and the write scope of a write), the key, check_body, ?ttl= (puts), the
// dialect's X-Consistency, decode_body, ?version= (kGetVersion); then the
// operation, and encode_answer for its success.
struct DataRoute {
  Method method;
  const char* pattern;
  Operation operation;
  KeyFrom key;
  BodyCheck check_body = nullptr;
  BodyDecoder decode_body = nullptr;  // required for kPut
  AnswerEncoder encode_answer = nullptr;
  bool local_only = false;         // read this node's engine only, even in a cluster
  bool reports_placement = false;  // the answer names primary_node and replicas
};

struct Dialect {
  std::span<const DataRoute> routes;
  bool honors_consistency = false;  // X-Consistency: eventual | strong
  // A read of an absent key: 404 with this message; "{key}" stands for the key.
  absl::string_view not_found;
};

// ---- Decoding requests ------------------------------------------------------------------

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
  if (!ttl) return 0;
  if (ttl->empty()) {
    // Most likely a client's empty variable: a value kept forever would not
    // be what it meant.
    return absl::InvalidArgumentError(
        "ttl is empty: give a duration, or leave ttl out for a value that does not expire");
  }
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

// ?version=N: a positive integer; absent, 0 (the newest).
absl::StatusOr<uint64_t> ParseVersion(const HttpRequest& request) {
  absl::StatusOr<std::optional<std::string>> parameter = StrictQueryParam(request, "version");
  if (!parameter.ok()) return parameter.status();
  const std::optional<std::string>& text = *parameter;
  if (!text) return 0;
  uint64_t version = 0;
  if (!absl::SimpleAtoi(*text, &version) || version == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version must be a positive integer, not '", *text, "'"));
  }
  return version;
}

// A write's condition (compare-and-set on the key's version, which reads
// answer as their ETag): If-Match: "N" (or N) writes only if the key is at
// version N; If-None-Match: * only if it is absent. Other forms are 400:
// a condition the server cannot check must not be dropped.
absl::StatusOr<std::optional<uint64_t>> ParseCondition(const HttpRequest& request) {
  const std::optional<absl::string_view> match = request.Header("if-match");
  const std::optional<absl::string_view> none_match = request.Header("if-none-match");
  if (match.has_value() && none_match.has_value()) {
    return absl::InvalidArgumentError("give If-Match or If-None-Match, not both");
  }
  if (match.has_value() || none_match.has_value()) {
    // Header() answers the first of several: a second condition would be
    // dropped.
    const absl::string_view name = match.has_value() ? "if-match" : "if-none-match";
    const auto count = std::count_if(request.headers.begin(), request.headers.end(),
                                     [name](const HttpHeader& header) {
                                       return absl::EqualsIgnoreCase(header.name, name);
                                     });
    if (count > 1) {
      return absl::InvalidArgumentError(absl::StrCat("give one ", match.has_value() ? "If-Match" : "If-None-Match", " header, not ", count));
    }
  }
  if (none_match.has_value()) {
    if (absl::StripAsciiWhitespace(*none_match) != "*") {
      return absl::InvalidArgumentError(
          "If-None-Match on a write must be * (write only if the key is absent)");
    }
    return std::optional<uint64_t>(0);
  }
  if (!match.has_value()) return std::optional<uint64_t>();
  absl::string_view tag = absl::StripAsciiWhitespace(*match);
  if (tag.size() >= 2 && tag.front() == '"' && tag.back() == '"') {
    tag = tag.substr(1, tag.size() - 2);
  }
  uint64_t version = 0;
  if (!absl::SimpleAtoi(tag, &version) || version == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "If-Match must be a version the key is at, as its ETag shows (\"3\"), not '", *match,
        "'"));
  }
  return std::optional<uint64_t>(version);
}

// The key, from where the route takes it (a kPath capture is moved out of
// request.params).
absl::Status TakeKey(KeyFrom from, HttpRequest& request, AnswerInput* input) {
  switch (from) {
    case KeyFrom::kPath:
      input->key = std::move(request.params[0]);
      return absl::OkStatus();
    case KeyFrom::kPathBase64: {
      std::optional<std::string> key = DecodeBase64(request.params[0]);
      if (!key) return absl::InvalidArgumentError("invalid base64 key");
      input->key = *std::move(key);
      input->sent_key = std::move(request.params[0]);
      return absl::OkStatus();
    }
    case KeyFrom::kQuery: {
      std::optional<std::string> key = request.QueryParam("key");
      if (!key || key->empty()) return absl::InvalidArgumentError("missing query parameter 'key'");
      input->key = *std::move(key);
      return absl::OkStatus();
    }
    case KeyFrom::kBody:
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

// Everything route needs from request, in the order DataRoute states; the
// first thing wrong is the error (its status maps to HTTP as
// ErrorFromStatus does: InvalidArgument 400, ResourceExhausted 413).
absl::Status Decode(const DataRoutesConfig& config, const Dialect& dialect,
                    const DataRoute& route, HttpRequest& request, DataCall* call) {
  if (absl::Status status = TakeKey(route.key, request, &call->answer); !status.ok()) {
    return status;
  }
  if (route.check_body != nullptr) {
    if (absl::Status status = route.check_body(request.body, config); !status.ok()) return status;
  }
  if (Writes(route.operation)) {
    absl::StatusOr<std::optional<uint64_t>> condition = ParseCondition(request);
    if (!condition.ok()) return condition.status();
    call->if_version = *condition;
    call->answer.conditional = condition->has_value();
  }
  if (route.operation == Operation::kPut) {
    absl::StatusOr<int64_t> ttl_ms = ParseTtlMs(request);
    if (!ttl_ms.ok()) return ttl_ms.status();
    call->ttl_ms = *ttl_ms;
  }
  if (dialect.honors_consistency) {
    absl::StatusOr<p::Consistency> consistency = ParseConsistency(request);
    if (!consistency.ok()) return consistency.status();
    call->consistency = *consistency;
  }
  if (route.decode_body != nullptr) {
    if (absl::Status status = route.decode_body(request.body, config, call); !status.ok()) {
      return status;
    }
  }
  if (route.operation == Operation::kGetVersion) {
    absl::StatusOr<uint64_t> version = ParseVersion(request);
    if (!version.ok()) return version.status();
    call->version = *version;
  }
  call->answer.max_json_depth = config.max_json_depth;
  return absl::OkStatus();
}

// ---- Bodies -------------------------------------------------------------------------------

// Seeds 000 and 001: the body is the value.
absl::Status RawBody(absl::string_view body, const DataRoutesConfig&, DataCall* call) {
  call->value = body;
  return absl::OkStatus();
}

// Seed 002: {"key","value"}, both base64.
absl::Status Base64KeyAndValue(absl::string_view body, const DataRoutesConfig& config,
                               DataCall* call) {
  absl::StatusOr<json> object = ParseJson(body, config.max_json_depth);
  if (!object.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "body must be a JSON object {\"key\",\"value\"}: ", object.status().message()));
  }
  if (!object->is_object()) {
    return absl::InvalidArgumentError("body must be a JSON object {\"key\",\"value\"}");
  }
  auto key_field = object->find("key");
  auto value_field = object->find("value");
  if (key_field == object->end() || !key_field->is_string() || value_field == object->end() ||
      !value_field->is_string()) {
    return absl::InvalidArgumentError("\"key\" and \"value\" must be base64 strings");
  }
  std::optional<std::string> key = DecodeBase64(key_field->get_ref<const std::string&>());
  std::optional<std::string> value = DecodeBase64(value_field->get_ref<const std::string&>());
  if (!key || !value) return absl::InvalidArgumentError("invalid base64");
  call->answer.key = *std::move(key);
  call->answer.stored = *std::move(value);
  call->value = call->answer.stored;
  return absl::OkStatus();
}

// Seed 003: {"value": <any JSON>}; the value's JSON text is stored (and
// echoed by the answer).
absl::Status JsonValueField(absl::string_view body, const DataRoutesConfig& config,
                            DataCall* call) {
  absl::StatusOr<json> object = ParseJson(body, config.max_json_depth);
  if (!object.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("body must be JSON {\"value\": ...}: ", object.status().message()));
  }
  if (!object->is_object() || !object->contains("value")) {
    return absl::InvalidArgumentError("body must be JSON {\"value\": ...}");
  }
  call->answer.stored = Dump((*object)["value"]);
  call->value = call->answer.stored;
  return absl::OkStatus();
}

// Seed 004: a document is refused by its size before anything else in it.
absl::Status DocumentWithinLimit(absl::string_view body, const DataRoutesConfig& config) {
  if (body.size() <= config.max_document_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("document of ", body.size(), " bytes is larger than the limit of ",
                   config.max_document_bytes, " bytes"));
}

// Seed 004: a JSON document, validated without building a tree and stored
// as sent.
absl::Status JsonDocument(absl::string_view body, const DataRoutesConfig& config,
                          DataCall* call) {
  if (absl::Status status = CheckJson(body, config.max_json_depth); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("body must be a JSON document: ", status.message()));
  }
  call->value = body;
  return absl::OkStatus();
}

// ---- Running the operation ------------------------------------------------------------

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

template <typename Table>
void FinishRequest(flatbuffers::FlatBufferBuilder* b, p::Operation type,
                   flatbuffers::Offset<Table> operation) {
  p::RequestBuilder request(*b);
  request.add_request_id(0);
  request.add_operation_type(type);
  request.add_operation(operation.Union());
  b->FinishSizePrefixed(request.Finish());
}

// The binary protocol's request for call, finished in b.
void BuildRequest(Operation operation, const DataCall& call, flatbuffers::FlatBufferBuilder* b) {
  auto key = Bytes(b, call.answer.key);
  switch (operation) {
    case Operation::kGetVersion:
      if (call.version != 0) {
        FinishRequest(b, p::Operation::GetVersion, p::CreateGetVersion(*b, key, call.version));
        return;
      }
      [[fallthrough]];
    case Operation::kGet:
      FinishRequest(b, p::Operation::Get, p::CreateGet(*b, key, call.consistency));
      return;
    case Operation::kPut: {
      auto value = Bytes(b, call.value);
      FinishRequest(b, p::Operation::Put,
                    p::CreatePut(*b, key, value, call.ttl_ms, call.if_version.has_value(),
                                 call.if_version.value_or(0), call.consistency));
      return;
    }
    case Operation::kDelete:
      FinishRequest(b, p::Operation::Delete,
                    p::CreateDelete(*b, key, call.if_version.has_value(),
                                    call.if_version.value_or(0), call.consistency));
      return;
  }
}

// The HTTP status of a data operation's failure. Limits on keys and values
// are 413 here (the accounts' ResourceExhausted is a rate limit); a write
// refused because the disk is full is 507.
int DataStatusOf(const absl::Status& status) {
  if (p::IsInsufficientStorage(status)) return 507;
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted: return 413;
    case absl::StatusCode::kFailedPrecondition: return 409;
    // Compare-and-set on a key that is not a consensus key, in a cluster.
    case absl::StatusCode::kUnimplemented: return 501;
    default: return http::HttpStatusOf(status);
  }
}

HttpResponse ErrorFromStatus(const absl::Status& status) {
  HttpResponse response = HttpResponse::Error(DataStatusOf(status), status.message());
  if (response.status == 503) response.headers.emplace_back("Retry-After", "1");
  return response;
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

Placement WritePlacement(const DataRoutesDependencies& deps, const RequestContext& context,
                         absl::string_view key) {
  if (deps.coordinator == nullptr || !deps.coordinator->Active()) {
    return {deps.node_url->Get(), 0};
  }
  std::string scratch;
  absl::StatusOr<absl::string_view> engine_key = EngineKey(context, key, &scratch);
  if (!engine_key.ok()) return {deps.node_url->Get(), 0};
  std::vector<std::string> owners = deps.coordinator->Owners(*engine_key);
  if (owners.empty()) return {deps.node_url->Get(), 0};
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

// ---- Answers --------------------------------------------------------------------------

// The answer to the operation route ran: a failure's error, a read of an
// absent key the dialect's 404, else the route's own answer.
HttpResponse Answer(const Dialect& dialect, const DataRoute& route, const AnswerInput& input,
                    const p::Response& response) {
  const absl::Status status = p::StatusFromResponse(response);
  if (absl::IsNotFound(status)) {
    // Deleting what is not there succeeds: the key is gone either way.
    if (route.operation == Operation::kDelete) return route.encode_answer(input, response);
    if (!Writes(route.operation)) {
      return HttpResponse::Error(404,
                                 absl::StrReplaceAll(dialect.not_found, {{"{key}", input.key}}));
    }
  }
  // A condition that does not hold (the key is at another version).
  if (input.conditional && absl::IsFailedPrecondition(status)) {
    return HttpResponse::Error(412, status.message());
  }
  if (!status.ok()) return ErrorFromStatus(status);
  HttpResponse answer = route.encode_answer(input, response);
  // The version, as a tag If-Match takes back.
  uint64_t version = 0;
  if (const p::ValueResult* value = response.result_as_ValueResult(); value != nullptr) {
    version = value->version();
  } else if (const p::WriteResult* written = response.result_as_WriteResult(); written != nullptr) {
    version = written->version();
  }
  if (version != 0 && answer.status == 200) {
    answer.headers.emplace_back("ETag", absl::StrCat("\"", version, "\""));
  }
  return answer;
}

// A value's bytes as they are (content_type must be a literal: HttpResponse
// keeps a view).
HttpResponse RawValue(const p::Response& response, absl::string_view content_type) {
  HttpResponse answer;
  answer.content_type = content_type;
  answer.body = std::string(p::View(response.result_as_ValueResult()->value()));
  return answer;
}

// The wall-clock milliseconds of an engine timestamp (hybrid logical clock).
int64_t TimestampMs(uint64_t timestamp) { return engine::TimestampUnixMs(timestamp); }

// Seeds 000 and 001: the value's bytes.
HttpResponse OctetStreamValue(const AnswerInput&, const p::Response& response) {
  return RawValue(response, kOctetStream);
}

// Seed 000's writes: {"success","key","primary_node","replicas"}.
HttpResponse PlacedWrite(const AnswerInput& input, const p::Response&) {
  return HttpResponse::Json(200, Dump({{"success", true},
                                       {"key", input.key},
                                       {"primary_node", input.placement.primary_node},
                                       {"replicas", input.placement.replicas}}));
}

// Seed 001's PUT: {"success","version"}.
HttpResponse SuccessWithVersion(const AnswerInput&, const p::Response& response) {
  const p::WriteResult* written = response.result_as_WriteResult();
  return HttpResponse::Json(200, Dump({{"success", true}, {"version", written->version()}}));
}

// Seed 001's DELETE: {"success"}.
HttpResponse Success(const AnswerInput&, const p::Response&) {
  return HttpResponse::Json(200, Dump({{"success", true}}));
}

// Seed 002's POST: {}.
HttpResponse EmptyObject(const AnswerInput&, const p::Response&) {
  return HttpResponse::Json(200, "{}");
}

// Seed 002's GET: {"key","value"}, both base64 (the key as the path sent it).
HttpResponse Base64KeyAndValueAnswer(const AnswerInput& input, const p::Response& response) {
  const absl::string_view value = p::View(response.result_as_ValueResult()->value());
  return HttpResponse::Json(200,
                            Dump({{"key", input.sent_key}, {"value", EncodeBase64(value)}}));
}

// Seed 003: {"key","value","version","timestamp"}, and "encoding" when the
// value is base64. PUT /put stores the JSON text of the value, which comes
// back as that JSON. Bytes written by another dialect come back losslessly:
// as JSON when they are JSON nested at most max_json_depth deep, else as a
// string when they are UTF-8, else as base64 with "encoding": "base64" (a
// JSON string cannot carry them). Deeper JSON is text here. JSON is checked
// without building a tree and goes into the answer as it is stored: a tree
// would cost many times the value's size (JsonBodyTest) and round numbers
// beyond a double's precision.
HttpResponse VersionedAnswer(absl::string_view key, absl::string_view stored, uint64_t version,
                             uint64_t timestamp, size_t max_json_depth) {
  json answer = {{"key", std::string(key)},
                 {"version", version},
                 {"timestamp", Rfc3339(TimestampMs(timestamp))}};
  // The JSON reader skips a leading UTF-8 byte order mark, which JSON text
  // inside another may not hold: it is left out.
  absl::string_view json_text = stored;
  absl::ConsumePrefix(&json_text, "\xEF\xBB\xBF");
  if (CheckJson(stored, max_json_depth).ok()) {
    std::string body = Dump(answer);
    body.pop_back();  // the closing brace
    absl::StrAppend(&body, ",\"value\":", json_text, "}");
    return HttpResponse::Json(200, std::move(body));
  }
  if (IsValidUtf8(stored)) {
    answer["value"] = std::string(stored);
  } else {
    answer["value"] = EncodeBase64(stored);
    answer["encoding"] = "base64";
  }
  return HttpResponse::Json(200, Dump(answer));
}

// Seed 003's PUT|POST /put: the version just written.
HttpResponse VersionWritten(const AnswerInput& input, const p::Response& response) {
  const p::WriteResult* written = response.result_as_WriteResult();
  return VersionedAnswer(input.key, input.stored, written->version(), written->timestamp(),
                         input.max_json_depth);
}

// Seed 003's GET /get: the version read.
HttpResponse VersionRead(const AnswerInput& input, const p::Response& response) {
  const p::ValueResult* value = response.result_as_ValueResult();
  return VersionedAnswer(input.key, p::View(value->value()), value->version(),
                         value->timestamp(), input.max_json_depth);
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

// Seed 004's PUT: {"uuid","timestamp"} (Unix ms).
HttpResponse DocumentWritten(const AnswerInput&, const p::Response& response) {
  const p::WriteResult* written = response.result_as_WriteResult();
  return HttpResponse::Json(
      200, Dump({{"uuid", RandomUuid()}, {"timestamp", TimestampMs(written->timestamp())}}));
}

// Seed 004's GET: the document as stored.
HttpResponse JsonDocumentValue(const AnswerInput&, const p::Response& response) {
  return RawValue(response, kJsonType);
}

// Seed 004's DELETE: 204 without a body.
HttpResponse NoContent(const AnswerInput&, const p::Response&) {
  HttpResponse answer;
  answer.status = 204;
  return answer;
}

// ---- The dialects (REST.md sections 1-5) ------------------------------------------------
// Within the router's one table, the busiest routes come first: it is
// searched in order. Seed 001's /kv must come before seed 004's /kv/{path...}.

using M = Method;
using O = Operation;

// Seed 000: /v1/kv/{key}, raw bytes; /store/{key} reads this node's copy.
constexpr DataRoute kSeed000Routes[] = {
    {.method = M::kGet, .pattern = "/v1/kv/{key...}", .operation = O::kGet,
     .key = KeyFrom::kPath, .encode_answer = OctetStreamValue},
    {.method = M::kPut, .pattern = "/v1/kv/{key...}", .operation = O::kPut,
     .key = KeyFrom::kPath, .decode_body = RawBody, .encode_answer = PlacedWrite,
     .reports_placement = true},
    {.method = M::kDelete, .pattern = "/v1/kv/{key...}", .operation = O::kDelete,
     .key = KeyFrom::kPath, .encode_answer = PlacedWrite, .reports_placement = true},
    {.method = M::kGet, .pattern = "/store/{key...}", .operation = O::kGet,
     .key = KeyFrom::kPath, .encode_answer = OctetStreamValue, .local_only = true},
};

// Seed 001: /kv?key=K, raw bytes.
constexpr DataRoute kSeed001Routes[] = {
    {.method = M::kGet, .pattern = "/kv", .operation = O::kGet, .key = KeyFrom::kQuery,
     .encode_answer = OctetStreamValue},
    {.method = M::kPut, .pattern = "/kv", .operation = O::kPut, .key = KeyFrom::kQuery,
     .decode_body = RawBody, .encode_answer = SuccessWithVersion},
    {.method = M::kDelete, .pattern = "/kv", .operation = O::kDelete, .key = KeyFrom::kQuery,
     .encode_answer = Success},
};

// Seed 002: /v0/kv, keys and values in base64.
constexpr DataRoute kSeed002Routes[] = {
    {.method = M::kPost, .pattern = "/v0/kv", .operation = O::kPut, .key = KeyFrom::kBody,
     .decode_body = Base64KeyAndValue, .encode_answer = EmptyObject},
    {.method = M::kGet, .pattern = "/v0/kv/key/{key...}", .operation = O::kGet,
     .key = KeyFrom::kPathBase64, .encode_answer = Base64KeyAndValueAnswer},
};

// Seed 003: /put/{key} with a JSON value, /get/{key}?version=N.
constexpr DataRoute kSeed003Routes[] = {
    {.method = M::kPut, .pattern = "/put/{key...}", .operation = O::kPut,
     .key = KeyFrom::kPath, .decode_body = JsonValueField, .encode_answer = VersionWritten},
    {.method = M::kPost, .pattern = "/put/{key...}", .operation = O::kPut,
     .key = KeyFrom::kPath, .decode_body = JsonValueField, .encode_answer = VersionWritten},
    {.method = M::kGet, .pattern = "/get/{key...}", .operation = O::kGetVersion,
     .key = KeyFrom::kPath, .encode_answer = VersionRead},
};

// Seed 004: /kv/{path}, JSON documents.
constexpr DataRoute kSeed004Routes[] = {
    {.method = M::kPut, .pattern = "/kv/{path...}", .operation = O::kPut,
     .key = KeyFrom::kPath, .check_body = DocumentWithinLimit, .decode_body = JsonDocument,
     .encode_answer = DocumentWritten},
    {.method = M::kGet, .pattern = "/kv/{path...}", .operation = O::kGet,
     .key = KeyFrom::kPath, .encode_answer = JsonDocumentValue},
    {.method = M::kDelete, .pattern = "/kv/{path...}", .operation = O::kDelete,
     .key = KeyFrom::kPath, .encode_answer = NoContent},
};

constexpr Dialect kDialects[] = {
    {.routes = kSeed000Routes, .honors_consistency = true, .not_found = "Key not found"},
    {.routes = kSeed001Routes, .not_found = "Key not found"},
    {.routes = kSeed002Routes, .not_found = "key not found"},
    {.routes = kSeed003Routes, .not_found = "Key '{key}' not found"},
    {.routes = kSeed004Routes, .not_found = "not found"},
};

// Every route encodes its answer; a route decodes a body exactly when it
// puts, and so does a route whose key is in the body.
constexpr bool Complete(const Dialect& dialect) {
  for (const DataRoute& route : dialect.routes) {
    if (route.encode_answer == nullptr) return false;
    if ((route.operation == Operation::kPut) != (route.decode_body != nullptr)) return false;
    if (route.key == KeyFrom::kBody && route.decode_body == nullptr) return false;
  }
  return true;
}
static_assert(std::all_of(std::begin(kDialects), std::end(kDialects), Complete));

// The one handler of every data route.
void Serve(const DataRoutesConfig& config, const DataRoutesDependencies& deps,
           const Dialect& dialect, const DataRoute& route, HttpRequest& request,
           Responder responder) {
  HttpResponse refusal;
  absl::StatusOr<RequestContext> context =
      Authorize(deps.auth, request, &refusal, /*namespaces=*/true);
  if (!context.ok()) return responder.Send(std::move(refusal));
  if (Writes(route.operation) && !context->may_write) {
    // Refused before the query or body is looked at (the Service checks
    // again; this only spares parsing a request that cannot succeed).
    return responder.Send(HttpResponse::Error(403, "this API key may not write (missing scope)"));
  }
  DataCall call;
  if (absl::Status status = Decode(config, dialect, route, request, &call); !status.ok()) {
    return responder.Send(ErrorFromStatus(status));
  }
  context->local_only = route.local_only;
  if (route.reports_placement) {
    call.answer.placement = WritePlacement(deps, *context, call.answer.key);
  }
  flatbuffers::FlatBufferBuilder& builder = RequestBuilder();
  BuildRequest(route.operation, call, &builder);
  Run(deps.service, *context, &builder, responder,
      [dialect = &dialect, route = &route,
       input = std::move(call.answer)](const p::Response& response) {
        return Answer(*dialect, *route, input, response);
      });
}

// ---- Listing and watching keys (the console's data browser) ------------------------

// A key or value as JSON: the text when it is UTF-8, else base64 beside
// "<field>_encoding": "base64" (a JSON string cannot carry other bytes).
void PutBytes(json* object, const char* field, absl::string_view bytes) {
  if (IsValidUtf8(bytes)) {
    (*object)[field] = std::string(bytes);
  } else {
    (*object)[field] = EncodeBase64(bytes);
    (*object)[absl::StrCat(field, "_encoding")] = "base64";
  }
}

// One GET /v1/kv listing. Unfiltered, it is one ListKeys page. When the
// ACLs decide key by key (filter), it goes on past the keys the caller may
// not read, page after page, until it holds limit keys or the keys end: its
// cursor is then the last key it returns, never one the caller may not read
// (kMaxFilteredScanKeys bounds the keys it passes).
struct FilteredListing {
  Service* service = nullptr;
  cluster::ClusterNode* cluster = nullptr;
  std::string engine_prefix;
  uint32_t limit = 0;
  bool filter = false;
  RequestContext context;
  std::shared_ptr<Responder> responder;
  json keys = json::array();
  std::string last_returned;  // engine key
  size_t scanned = 0;
  std::vector<std::string> unreachable;
};

void Answer(const FilteredListing& scan, const std::string& cursor) {
  const size_t namespace_bytes = scan.context.key_prefix.size();
  json answer = {{"keys", scan.keys},
                 {"count", scan.keys.size()},
                 {"next_cursor", cursor.empty() ? json(nullptr)
                                                : json(EncodeBase64(absl::string_view(cursor).substr(
                                                      std::min(namespace_bytes, cursor.size()))))}};
  // Members that did not answer: their keys held nowhere else are missing.
  if (!scan.unreachable.empty()) answer["unreachable"] = scan.unreachable;
  scan.responder->Send(HttpResponse::Json(200, Dump(answer)));
}

void ListPageOf(std::shared_ptr<FilteredListing> scan, const std::string& after) {
  const uint32_t want = scan->limit - static_cast<uint32_t>(scan->keys.size());
  const uint32_t page_limit =
      scan->filter ? std::min(kMaxScanLimit, std::max(kFilteredScanRound, want)) : want;
  ListKeys(scan->service, scan->cluster, scan->engine_prefix, after, page_limit,
           [scan](ListPage page) {
             const size_t namespace_bytes = scan->context.key_prefix.size();
             for (std::string& node : page.unreachable) {
               if (std::find(scan->unreachable.begin(), scan->unreachable.end(), node) ==
                   scan->unreachable.end()) {
                 scan->unreachable.push_back(std::move(node));
               }
             }
             bool full = false;
             for (const ListedKey& item : page.keys) {
               ++scan->scanned;
               if (scan->filter && !Permits(scan->context, item.key, kAccessRead)) continue;
               if (scan->keys.size() == scan->limit) {
                 full = true;
                 break;
               }
               json entry = {{"version", item.version},
                             {"timestamp", Rfc3339(TimestampMs(item.timestamp))},
                             {"size", item.size}};
               PutBytes(&entry, "key",
                        absl::string_view(item.key).substr(
                            std::min(namespace_bytes, item.key.size())));
               entry["expires_at"] = item.expiry_unix_ms > 0 ? json(Rfc3339(item.expiry_unix_ms))
                                                              : json(nullptr);
               scan->keys.push_back(std::move(entry));
               scan->last_returned = item.key;
             }
             if (!scan->filter) {
               return Answer(*scan, page.more ? page.keys.back().key : std::string());
             }
             if (full || (page.more && scan->keys.size() == scan->limit)) {
               return Answer(*scan, scan->last_returned);
             }
             if (!page.more) return Answer(*scan, "");
             if (scan->scanned >= kMaxFilteredScanKeys) {
               if (scan->keys.empty()) {
                 return scan->responder->Send(ErrorFromStatus(FilteredScanExhausted()));
               }
               return Answer(*scan, scan->last_returned);
             }
             ListPageOf(scan, page.keys.back().key);
           });
}

// GET /v1/kv?prefix=&cursor=&limit=: a page of the caller's keys under
// prefix, in key order, with next_cursor (null at the end) for the next page.
// Every live member is asked (cluster_browse.h): the keys of the cluster.
void ServeScan(const DataRoutesDependencies& deps, HttpRequest& request, Responder responder) {
  HttpResponse refusal;
  absl::StatusOr<RequestContext> context =
      Authorize(deps.auth, request, &refusal, /*namespaces=*/true);
  if (!context.ok()) return responder.Send(std::move(refusal));
  if (!context->may_read) {
    return responder.Send(HttpResponse::Error(403, "this API key may not read (missing scope)"));
  }
  std::string prefix, after;
  uint32_t limit = kDefaultScanLimit;
  for (const char* name : {"prefix", "cursor", "limit"}) {
    absl::StatusOr<std::optional<std::string>> value = StrictQueryParam(request, name);
    if (!value.ok()) return responder.Send(ErrorFromStatus(value.status()));
    if (!value->has_value()) continue;
    if (absl::string_view(name) == "prefix") {
      prefix = **value;
    } else if (absl::string_view(name) == "cursor") {
      std::optional<std::string> decoded = DecodeBase64(**value);
      if (!decoded) {
        return responder.Send(HttpResponse::Error(400, "cursor must be a next_cursor from an "
                                                       "earlier page (base64)"));
      }
      after = *std::move(decoded);
    } else if (!absl::SimpleAtoi(**value, &limit) || limit == 0 || limit > kMaxScanLimit) {
      return responder.Send(HttpResponse::Error(
          400, absl::StrCat("limit must be an integer from 1 to ", kMaxScanLimit)));
    }
  }
  // Engine keys: the caller's namespace first.
  const std::string& ns = context->key_prefix;
  const std::string engine_prefix = absl::StrCat(ns, prefix);
  // The ACLs as a scan applies them: refused when no key under the prefix
  // may be read, else the keys the caller may not read are left out.
  bool filter = false;
  if (absl::Status admitted = AdmitRead(*context, engine_prefix, &filter); !admitted.ok()) {
    return responder.Send(ErrorFromStatus(admitted));
  }
  auto scan = std::make_shared<FilteredListing>();
  scan->service = deps.service;
  scan->cluster = deps.cluster;
  scan->engine_prefix = engine_prefix;
  scan->limit = limit;
  scan->filter = filter;
  scan->context = *context;
  scan->responder = std::make_shared<Responder>(std::move(responder));
  ListPageOf(std::move(scan), after.empty() ? std::string() : absl::StrCat(ns, after));
}

// An SSE event: its type and JSON data.
void AppendEvent(std::string* out, absl::string_view type, const json& data) {
  absl::StrAppend(out, "event: ", type, "\ndata: ", Dump(data), "\n\n");
}

// One open GET /v1/watch: the engine's events under the caller's prefix as
// Server-Sent Events, this node's and (in a cluster) the other members'
// (RemoteEvents). Holds its place in WatchStreams until the connection
// closes.
class WatchStream final : public EventStream {
 public:
  // session: the API key's (auth on), rechecked while the stream is open;
  // nullopt with auth off. remote: the other members' events (null: a
  // single node). notes: reset events to send after ready (a resumed
  // cursor this node could not follow).
  WatchStream(Service* service, RequestContext context, Service::WatchCursor cursor,
              std::string node_id, std::shared_ptr<RemoteEvents> remote, ClusterCursor delivered,
              bool resumed, std::vector<std::string> notes, const auth::Admission* admission,
              std::optional<Session> session, std::function<void()> release)
      : service_(service),
        context_(std::move(context)),
        cursor_(std::move(cursor)),
        node_id_(std::move(node_id)),
        remote_(std::move(remote)),
        delivered_(std::move(delivered)),
        resumed_(resumed),
        notes_(std::move(notes)),
        admission_(admission),
        session_(std::move(session)),
        release_(std::move(release)) {}
  ~WatchStream() override {
    if (remote_ != nullptr) remote_->Close();
    release_();
  }

  // A revoked or expired key ends the stream, as it ends a binary-protocol
  // session and its watches.
  bool CredentialsHold(std::string* out) override {
    if (admission_ == nullptr || !session_) return true;
    const absl::Status status = admission_->Recheck(&*session_);
    if (status.ok()) return true;
    AppendEvent(out, "error", json{{"error", absl::StrCat("watch ended: ", status.message())}});
    return false;
  }

  bool Poll(const std::vector<uint64_t>& last_sequences, std::string* out, bool* more) override {
    if (!opened_) {
      // Every member's cursor must be known first: a change made after
      // ready then reaches the stream, wherever it was written.
      if (remote_ != nullptr && !remote_->Ready()) return true;
      opened_ = true;
      json ready = {{"resumed", resumed_}};
      if (remote_ != nullptr) {
        if (std::vector<std::string> missing = remote_->Unreachable(); !missing.empty()) {
          ready["unreachable"] = missing;
        }
      }
      out->append("retry: 2000\n");
      AppendEvent(out, "ready", ready);
      for (const std::string& note : notes_) {
        AppendEvent(out, "reset", json{{"error", note}});
        changed_ = true;
      }
      notes_.clear();
    }
    const size_t namespace_bytes = context_.key_prefix.size();
    for (uint32_t shard = 0; shard < cursor_.after.size() && shard < last_sequences.size();
         ++shard) {
      if (last_sequences[shard] <= cursor_.after[shard]) continue;
      builder_.Clear();
      absl::StatusOr<std::vector<flatbuffers::Offset<p::Event>>> events =
          service_->ReadWatchEvents(context_, shard, kWatchBatchEvents, &cursor_, &builder_, more);
      if (!events.ok() && events.status().code() == absl::StatusCode::kOutOfRange) {
        // A resumed cursor older than the log holds: say what is lost and
        // go on from the newest events.
        AppendEvent(out, "reset",
                    json{{"error", absl::StrCat("node ", node_id_, ": ", events.status().message())}});
        cursor_.after[shard] = last_sequences[shard];
        delivered_[node_id_] = cursor_.after;
        changed_ = true;
        continue;
      }
      if (!events.ok()) {
        AppendEvent(out, "error", json{{"error", std::string(events.status().message())}});
        return false;
      }
      delivered_[node_id_] = cursor_.after;
      if (events->empty()) continue;
      builder_.Finish(p::CreateWatchEvents(builder_, builder_.CreateVector(*events)));
      const p::WatchEvents* batch = flatbuffers::GetRoot<p::WatchEvents>(builder_.GetBufferPointer());
      for (const p::Event* event : *batch->events()) {
        Emit(event->type() == p::EventType::Put, p::View(event->key()), p::View(event->value()),
             event->version(), event->timestamp(), out);
      }
    }
    if (remote_ != nullptr) {
      for (RemoteEvents::Batch& batch : remote_->Take()) {
        if (!batch.reset.empty()) {
          AppendEvent(out, "reset", json{{"error", batch.reset}});
          changed_ = true;
        }
        for (const RemoteEvent& event : batch.events) {
          // Each key is checked here as this node's own are (the member
          // that sent it does not know the caller); without a namespace,
          // the server's own keys are left out.
          if (namespace_bytes == 0 && IsReservedKey(event.key)) continue;
          if (!Permits(context_, event.key, kAccessRead)) continue;
          // Engine keys: the caller's namespace is left out (ReadEvents
          // sent only keys under it).
          const absl::string_view key =
              absl::string_view(event.key).substr(std::min(namespace_bytes, event.key.size()));
          Emit(event.put, key, event.value, event.version, event.timestamp, out);
        }
        delivered_[batch.member] = std::move(batch.after);
      }
    }
    if (changed_ && absl::EndsWith(*out, "\n\n")) {
      // The id of the pass's last event: where every member's part of the
      // stream stands, so a client that reconnects with Last-Event-ID
      // resumes after it (on any node).
      out->pop_back();
      absl::StrAppend(out, "id: ", EncodeClusterCursor(delivered_), "\n\n");
      changed_ = false;
    }
    return true;
  }

 private:
  // One change, unless the same one came from another replica already (or
  // a newer one of its key did).
  void Emit(bool put, absl::string_view key, absl::string_view value, uint64_t version,
            uint64_t timestamp, std::string* out) {
    changed_ = true;
    if (!recent_.Admit(std::string(key), timestamp)) return;
    json data = {{"type", put ? "put" : "delete"},
                 {"version", version},
                 {"timestamp", Rfc3339(TimestampMs(timestamp))}};
    PutBytes(&data, "key", key);
    if (put) PutBytes(&data, "value", value);
    AppendEvent(out, put ? "put" : "delete", data);
  }

  Service* const service_;
  const RequestContext context_;
  Service::WatchCursor cursor_;
  const std::string node_id_;
  const std::shared_ptr<RemoteEvents> remote_;
  ClusterCursor delivered_;  // what the next id says
  const bool resumed_;
  std::vector<std::string> notes_;
  const auth::Admission* const admission_;
  std::optional<Session> session_;
  std::function<void()> release_;
  flatbuffers::FlatBufferBuilder builder_{1024};
  RecentChanges recent_;
  bool opened_ = false;
  bool changed_ = false;  // events or resets went out since the last id
};

}  // namespace

bool WatchStreams::Acquire(uint64_t user_id) {
  absl::MutexLock lock(&mu_);
  if (max_total_ != 0 && total_ >= max_total_) return false;
  size_t& count = by_user_[user_id];
  // User 0 is everyone with auth off: only the node's limit applies.
  if (user_id != 0 && max_per_user_ != 0 && count >= max_per_user_) {
    if (count == 0) by_user_.erase(user_id);
    return false;
  }
  ++count;
  ++total_;
  return true;
}

void WatchStreams::Release(uint64_t user_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_user_.find(user_id);
  if (it == by_user_.end()) return;
  --total_;
  if (--it->second == 0) by_user_.erase(it);
}

size_t WatchStreams::open() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

void DataRoutes::ServeWatch(HttpRequest& request, Responder responder) {
  HttpResponse refusal;
  absl::StatusOr<RequestContext> context =
      Authorize(deps_.auth, request, &refusal, /*namespaces=*/true);
  if (!context.ok()) return responder.Send(std::move(refusal));
  absl::StatusOr<std::optional<std::string>> prefix = StrictQueryParam(request, "prefix");
  if (!prefix.ok()) return responder.Send(ErrorFromStatus(prefix.status()));
  // A reconnecting client (EventSource does it by itself) resumes after
  // the last event it had.
  std::optional<ClusterCursor> resume;
  if (std::optional<absl::string_view> last = request.Header("Last-Event-ID");
      last.has_value() && !last->empty()) {
    absl::StatusOr<ClusterCursor> decoded = DecodeClusterCursor(*last);
    if (!decoded.ok()) return responder.Send(ErrorFromStatus(decoded.status()));
    resume = *std::move(decoded);
  }
  // The user whose streams are counted: the API key's (auth on), else one
  // shared count.
  uint64_t user_id = 0;
  std::optional<Session> session;
  if (deps_.auth.on()) {
    absl::StatusOr<Session> authenticated = AuthenticateKey(deps_.auth, request);
    if (!authenticated.ok()) {
      return responder.Send(HttpResponse::Error(401, authenticated.status().message()));
    }
    user_id = authenticated->user_id;
    session = *std::move(authenticated);
  }
  const std::string node_id =
      deps_.cluster != nullptr ? deps_.cluster->node_id() : deps_.service->NodeId();
  std::vector<std::string> notes;
  flatbuffers::FlatBufferBuilder builder(256);
  std::vector<uint64_t> local_after;
  if (resume) {
    if (auto it = resume->find(node_id); it == resume->end()) {
      notes.push_back(absl::StrCat("node ", node_id,
                                   " was not in the stream resumed: its changes until now are lost"));
    } else if (it->second.size() != deps_.service->engine()->ShardCount()) {
      notes.push_back(absl::StrCat("node ", node_id, " has ",
                                   deps_.service->engine()->ShardCount(),
                                   " shards, not the resumed cursor's ", it->second.size(),
                                   ": its changes until now are lost"));
    } else {
      local_after = it->second;
      for (uint32_t shard = 0; shard < local_after.size(); ++shard) {
        const uint64_t last = deps_.service->engine()->LastSequence(shard);
        if (local_after[shard] > last) {
          notes.push_back(absl::StrCat("node ", node_id, ": shard ", shard, " is at sequence ",
                                       last, ", before the resumed ", local_after[shard],
                                       ": its log began again; its changes until now are lost"));
          local_after[shard] = last;
        }
      }
    }
  }
  builder.Finish(p::CreateWatch(builder, Bytes(&builder, prefix->value_or("")),
                                local_after.empty() ? 0 : builder.CreateVector(local_after)));
  absl::StatusOr<Service::WatchCursor> cursor = deps_.service->OpenWatch(
      *context, *flatbuffers::GetRoot<p::Watch>(builder.GetBufferPointer()));
  if (!cursor.ok()) return responder.Send(ErrorFromStatus(cursor.status()));
  if (!streams_.Acquire(user_id)) {
    HttpResponse busy = HttpResponse::Error(
        429, absl::StrCat("too many open watch streams (at most ", config_.max_watch_streams,
                          " on this node, ", config_.max_watch_streams_per_user,
                          " per user); close one first"));
    busy.headers.emplace_back("Retry-After", "5");
    return responder.Send(std::move(busy));
  }
  ClusterCursor delivered;
  delivered[node_id] = cursor->after;
  std::shared_ptr<RemoteEvents> remote;
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr && deps_.wake_streams) {
    RemoteEvents::Options options;
    options.prefix = cursor->prefix;  // the caller's namespace included
    options.wake = deps_.wake_streams;
    remote = RemoteEvents::Start(deps_.cluster, std::move(options), resume ? &*resume : nullptr);
    if (resume) {
      for (const auto& [member, after] : *resume) {
        if (member != node_id) delivered[member] = after;
      }
    }
  }
  HttpResponse answer;
  answer.content_type = "text/event-stream; charset=utf-8";
  answer.stream = std::make_shared<WatchStream>(
      deps_.service, *std::move(context), *std::move(cursor), node_id, std::move(remote),
      std::move(delivered), resume.has_value(), std::move(notes), deps_.auth.admission,
      std::move(session), [streams = &streams_, user_id] { streams->Release(user_id); });
  responder.Send(std::move(answer));
}

DataRoutes::DataRoutes(const DataRoutesConfig& config, const DataRoutesDependencies& dependencies)
    : config_(config),
      deps_(dependencies),
      streams_(config.max_watch_streams, config.max_watch_streams_per_user) {
  if (sodium_init() < 0) std::abort();
  // Listings and watches of other members read this node's keys and events.
  if (deps_.cluster != nullptr) AddBrowseHandlers(deps_.cluster, deps_.service);
}

void DataRoutes::AddTo(Router* router) {
  for (const Dialect& dialect : kDialects) {
    for (const DataRoute& route : dialect.routes) {
      router->Add(
          route.method, route.pattern,
          [this, dialect = &dialect, route = &route](HttpRequest& request, Responder responder) {
            Serve(config_, deps_, *dialect, *route, request, std::move(responder));
          },
          Writes(route.operation));
    }
  }
}

void DataRoutes::AddBrowseRoutesTo(Router* router) {
  router->Add(Method::kGet, "/v1/kv", [this](HttpRequest& request, Responder responder) {
    // Seed 000 has no GET /v1/kv: without a query it stays unknown (404);
    // a listing names its prefix, cursor or limit.
    if (request.query.empty()) {
      return responder.Send(HttpResponse::Error(
          404, "no route for GET /v1/kv; list keys with GET /v1/kv?prefix=&limit="));
    }
    ServeScan(deps_, request, std::move(responder));
  });
  router->Add(Method::kGet, "/v1/watch", [this](HttpRequest& request, Responder responder) {
    ServeWatch(request, std::move(responder));
  });
}

}  // namespace logkv::server::http
