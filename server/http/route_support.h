// What the data routes (data_routes.h) and the node routes
// (cluster_routes.h) share: authorizing a caller by its X-API-Key, this
// node's URL, and the encodings of their answers (JSON text, RFC 3339 times,
// base64).
//
// Thread-safety: every function may be called from any thread; NodeUrl is
// internally synchronized.
#ifndef LOGKV_SERVER_HTTP_ROUTE_SUPPORT_H_
#define LOGKV_SERVER_HTTP_ROUTE_SUPPORT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "server/auth/admission.h"
#include "server/auth/auth_store.h"
#include "server/http/http_message.h"
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
