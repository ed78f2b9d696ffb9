// What the data routes (data_routes.h) and the node routes
// (cluster_routes.h) share: authorizing a caller by its X-API-Key, this
// node's URL, and the encodings of their answers (JSON text, RFC 3339 times,
// base64); and what the account and access routes (account_routes.h,
// access_routes.h) share: handlers whose work runs on the worker pool, their
// JSON bodies and answers.
//
// Thread-safety: every function may be called from any thread; NodeUrl is
// internally synchronized.
#ifndef LOGKV_SERVER_HTTP_ROUTE_SUPPORT_H_
#define LOGKV_SERVER_HTTP_ROUTE_SUPPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "server/auth/admission.h"
#include "server/auth/auth_store.h"
#include "server/auth/worker_pool.h"
#include "server/control/command_options.h"
#include "server/http/http_message.h"
#include "server/http/router.h"
#include "server/metrics.h"
#include "server/service.h"

namespace logkv::server::http {

// What decides who a caller is from its X-API-Key. The pointers are not
// owned and must outlive the routes that hold them.
struct ApiKeyAuth {
  // The admission path both protocols share; null: auth is off and every
  // caller may do anything.
  const auth::Admission* admission = nullptr;
  ServerMetrics* metrics = nullptr;  // required
  bool on() const { return admission != nullptr; }
};

// The caller's namespace and scopes (auth on: from X-API-Key, through the
// Admission), or the answer refusing the request in *refusal: 401 without a
// valid key, 429 with Retry-After when the key's user is over its rate.
// Failures are counted in metrics. With namespaces (the data routes), an
// `X-Namespace: <user id>` header addresses that user's namespace, where
// the ACLs decide (docs/security.md); 400 for one that is not a user id.
absl::StatusOr<RequestContext> Authorize(const ApiKeyAuth& auth, const HttpRequest& request,
                                         HttpResponse* refusal, bool namespaces = false);
// The session of the request's X-API-Key, without taking from its rate
// (administrator checks); Unauthenticated for a missing or invalid key.
absl::StatusOr<Session> AuthenticateKey(const ApiKeyAuth& auth, const HttpRequest& request);

// Who a request speaks for, for the audit log (control::Actor): the
// cluster secret when it carries a non-empty X-Cluster-Secret (one the
// caller's authorization already checked), else the user of its X-API-Key
// (kUnknown for neither); node is this node's id.
control::Actor RequestActor(const ApiKeyAuth& auth, const HttpRequest& request,
                            absl::string_view node);

// ---- Routes that answer from the worker pool ---------------------------------

// Account and access request bodies are a few small fields; anything bigger
// is refused with 413.
inline constexpr size_t kMaxAccountBodyBytes = 64 << 10;
// What a client is told to wait when the pool is full or the store unavailable.
inline constexpr int kRetryAfterSeconds = 1;

// A handler whose exceptions (bad_alloc, a nlohmann bug) become a 500 rather
// than escaping into the loop.
Handler Guarded(std::function<void(HttpRequest&, Responder&)> handler);

// Runs work on pool and sends what it returns (a 500 for an exception); a
// 503 with Retry-After saying busy when the pool's queue is full. The
// request is gone by then: work must own copies of everything it reads.
void RunOnPool(auth::WorkerPool* pool, Responder responder, std::function<HttpResponse()> work,
               absl::string_view busy = "too many requests in progress; retry shortly");

// The request's body as a JSON object: OutOfRange past kMaxAccountBodyBytes,
// InvalidArgument for anything but an object (an empty body is {} when
// empty_is_object, else refused).
absl::StatusOr<nlohmann::json> ReadJsonObject(const HttpRequest& request, size_t max_json_depth,
                                              bool empty_is_object);
// ReadJsonObject's refusal: 413 for OutOfRange, else StatusResponse.
HttpResponse BodyError(const absl::Status& status);
// json as the answer, with status.
HttpResponse JsonAnswer(int status, const nlohmann::json& json);

// {"error": status.message()} with http::HttpStatusOf(status); 401s carry
// WWW-Authenticate: Bearer and 503s Retry-After. REQUIRES: !status.ok().
HttpResponse StatusResponse(const absl::Status& status);

// This node's "http://host:port": configured, then replaced once the server
// has bound its first HTTP address (configured with port 0). Any thread.
class NodeUrl {
 public:
  explicit NodeUrl(std::string url) : url_(std::move(url)) {}
  NodeUrl(const NodeUrl&) = delete;
  NodeUrl& operator=(const NodeUrl&) = delete;

  void Set(std::string url) ABSL_LOCKS_EXCLUDED(mu_);
  std::string Get() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::string url_ ABSL_GUARDED_BY(mu_);
};

// JSON text without spaces; invalid UTF-8 in strings is replaced, never thrown on.
std::string Dump(const nlohmann::json& value);

// "2024-01-02T03:04:05.678Z".
std::string Rfc3339(int64_t unix_ms);

// RFC 4648 base64 with padding (libsodium's codec). DecodeBase64 answers
// nullopt for anything else, trailing garbage included.
std::string EncodeBase64(absl::string_view bytes);
std::optional<std::string> DecodeBase64(absl::string_view text);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_ROUTE_SUPPORT_H_
