#include "server/http/account_routes.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/http/status_http.h"

namespace logkv::server::http {
namespace {

using Json = nlohmann::json;

// ---- Request bodies --------------------------------------------------------------
// Every reader answers InvalidArgument naming the field, never an exception:
// nlohmann's throwing accessors are avoided, and the parse does not throw.

absl::Status RequiredString(const Json& body, const char* name, std::string* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat("missing field \"", name, "\""));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" must be a string"));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// Absent or null leaves *out as it is.
absl::Status OptionalInteger(const Json& body, const char* name, int64_t* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" must be an integer"));
  }
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" is out of range"));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status RequiredStringArray(const Json& body, const char* name,
                                 std::vector<std::string>* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat("missing field \"", name, "\""));
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("field \"", name, "\" must be an array of strings"));
  }
  for (const Json& element : *it) {
    if (!element.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("field \"", name, "\" must be an array of strings"));
    }
    out->push_back(element.get<std::string>());
  }
  return absl::OkStatus();
}

using Options = std::shared_ptr<const AccountRoutesOptions>;

// An account request's body: a JSON object, never empty.
absl::StatusOr<Json> Body(const HttpRequest& request, size_t max_json_depth) {
  return ReadJsonObject(request, max_json_depth, /*empty_is_object=*/false);
}

// Runs work on the pool (route_support.h), naming the accounts when busy.
void OnPool(auth::WorkerPool* pool, Responder responder, std::function<HttpResponse()> work) {
  RunOnPool(pool, std::move(responder), std::move(work),
            "too many account requests in progress; retry shortly");
}

// Who asks, for the audit log: a user of this node.
control::Actor UserActor(const Options& options, uint64_t user_id) {
  return control::Actor::User(user_id, options->node_id ? options->node_id() : "");
}

// The per-user rate limit's answer for one request of user_id.
absl::Status Admit(const Options& options, uint64_t user_id) {
  return options->admit ? options->admit(user_id) : absl::OkStatus();
}

void NoteAuthFailure(const Options& options) {
  if (options->on_auth_failure) options->on_auth_failure();
}

// The user behind the request's bearer token, or the 401 to send.
absl::StatusOr<auth::User> Authenticate(auth::AuthStore* store, const Options& options,
                                        const HttpRequest& request) {
  std::optional<absl::string_view> authorization = request.Header("Authorization");
  absl::StatusOr<auth::User> user =
      authorization.has_value()
          ? store->AuthenticateBearer(*authorization)
          : absl::UnauthenticatedError("missing Authorization header (Bearer <token>)");
  if (!user.ok()) NoteAuthFailure(options);
  return user;
}

// ---- Routes --------------------------------------------------------------------

void SignUp(auth::AuthStore* store, auth::WorkerPool* pool, const Options& options,
            HttpRequest& request, Responder& responder) {
  absl::StatusOr<Json> body = Body(request, options->max_json_depth);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  std::string email, username, password;
  for (auto [name, out] : {std::pair{"email", &email}, std::pair{"username", &username},
                           std::pair{"password", &password}}) {
    if (absl::Status status = RequiredString(*body, name, out); !status.ok()) {
      return responder.Send(StatusResponse(status));
    }
  }
  // Each sign-up costs a password hash and a command of the control plane,
  // and the cluster holds a bounded number of accounts.
  if (options->admit_signup) {
    if (absl::Status admitted = options->admit_signup(request.remote_address); !admitted.ok()) {
      return responder.Send(StatusResponse(admitted));
    }
  }
  OnPool(pool, std::move(responder),
         [store, email = std::move(email), username = std::move(username),
          password = std::move(password),
          actor = control::Actor::Anonymous(options->node_id ? options->node_id() : "")]() {
           absl::StatusOr<auth::User> user = store->SignUp(email, username, password, actor);
           if (!user.ok()) return StatusResponse(user.status());
           return JsonAnswer(201, auth::UserJson(*user));
         });
}

void Login(auth::AuthStore* store, auth::WorkerPool* pool, const Options& options,
           HttpRequest& request, Responder& responder) {
  absl::StatusOr<Json> body = Body(request, options->max_json_depth);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  std::string email, password;
  for (auto [name, out] : {std::pair{"email", &email}, std::pair{"password", &password}}) {
    if (absl::Status status = RequiredString(*body, name, out); !status.ok()) {
      return responder.Send(StatusResponse(status));
    }
  }
  auth::LoginThrottle* throttle = options->login_throttle;
  // Counted under the name Login looks up, not as spelled: another spelling
  // of one account is the same account.
  std::string account = store->LoginName(email);
  if (throttle != nullptr) {
    // Held back before any hashing: guessing costs the server nothing.
    int64_t retry_after_ms = 0;
    if (!throttle->Allow(account, request.remote_address, options->now_ms(), &retry_after_ms)) {
      if (options->on_throttled) options->on_throttled();
      HttpResponse refused = HttpResponse::Error(
          429, "too many failed logins for this account or address; retry later");
      refused.headers.emplace_back(
          "Retry-After", absl::StrCat(std::max<int64_t>(1, (retry_after_ms + 999) / 1000)));
      return responder.Send(std::move(refused));
    }
  }
  OnPool(pool, std::move(responder),
         [store, options, email = std::move(email), password = std::move(password),
          account = std::move(account), address = std::string(request.remote_address)]() {
           absl::StatusOr<auth::Tokens> tokens = store->Login(email, password);
           auth::LoginThrottle* throttle = options->login_throttle;
           if (!tokens.ok()) {
             if (absl::IsUnauthenticated(tokens.status())) {
               NoteAuthFailure(options);
               if (throttle != nullptr)
                 throttle->RecordFailure(account, address, options->now_ms());
             }
             return StatusResponse(tokens.status());
           }
           if (throttle != nullptr) throttle->RecordSuccess(account);
           return JsonAnswer(200, auth::TokensJson(*tokens));
         });
}

void Refresh(auth::AuthStore* store, auth::WorkerPool* pool, const Options& options,
             HttpRequest& request, Responder& responder) {
  absl::StatusOr<Json> body = Body(request, options->max_json_depth);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  std::string refresh_token;
  if (absl::Status status = RequiredString(*body, "refresh_token", &refresh_token); !status.ok()) {
    return responder.Send(StatusResponse(status));
  }
  OnPool(pool, std::move(responder),
         [store, options, refresh_token = std::move(refresh_token)]() {
           absl::StatusOr<auth::Tokens> tokens = store->Refresh(
               refresh_token, [&options](uint64_t user_id) { return Admit(options, user_id); });
           if (!tokens.ok()) {
             if (absl::IsUnauthenticated(tokens.status())) NoteAuthFailure(options);
             return StatusResponse(tokens.status());
           }
           return JsonAnswer(200, auth::TokensJson(*tokens));
         });
}

void CreateApiKey(auth::AuthStore* store, auth::WorkerPool* pool, const Options& options,
                  HttpRequest& request, Responder& responder) {
  absl::StatusOr<auth::User> user = Authenticate(store, options, request);
  if (!user.ok()) return responder.Send(StatusResponse(user.status()));
  if (absl::Status admitted = Admit(options, user->id); !admitted.ok()) {
    return responder.Send(StatusResponse(admitted));
  }
  absl::StatusOr<Json> body = Body(request, options->max_json_depth);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  std::string name;
  std::vector<std::string> scopes;
  int64_t expires_in_days = 0;
  absl::Status status = RequiredString(*body, "name", &name);
  if (status.ok()) status = RequiredStringArray(*body, "scopes", &scopes);
  if (status.ok()) status = OptionalInteger(*body, "expires_in_days", &expires_in_days);
  if (!status.ok()) return responder.Send(StatusResponse(status));
  OnPool(pool, std::move(responder),
         [store, user_id = user->id, name = std::move(name), scopes = std::move(scopes),
          expires_in_days, actor = UserActor(options, user->id)]() {
           absl::StatusOr<auth::CreatedApiKey> created =
               store->CreateApiKey(user_id, name, scopes, expires_in_days, actor);
           if (!created.ok()) return StatusResponse(created.status());
           return JsonAnswer(201, auth::CreatedApiKeyJson(*created));
         });
}

void ListApiKeys(auth::AuthStore* store, const Options& options, HttpRequest& request,
                 Responder& responder) {
  absl::StatusOr<auth::User> user = Authenticate(store, options, request);
  if (!user.ok()) return responder.Send(StatusResponse(user.status()));
  const std::vector<auth::ApiKeyInfo> keys = store->ListApiKeys(user->id);
  Json list = Json::array();
  for (const auth::ApiKeyInfo& key : keys) list.push_back(auth::ApiKeyJson(key));
  responder.Send(JsonAnswer(200, Json{{"api_keys", std::move(list)}, {"count", keys.size()}}));
}

void RevokeApiKey(auth::AuthStore* store, auth::WorkerPool* pool, const Options& options,
                  HttpRequest& request, Responder& responder) {
  absl::StatusOr<auth::User> user = Authenticate(store, options, request);
  if (!user.ok()) return responder.Send(StatusResponse(user.status()));
  // Not rate limited: whoever else holds the user's keys must not be able to
  // keep the user from revoking them.
  uint64_t key_id = 0;
  if (request.params.size() != 1 || !absl::SimpleAtoi(request.params[0], &key_id) || key_id == 0) {
    return responder.Send(HttpResponse::Error(400, "API key id must be a positive integer"));
  }
  OnPool(pool, std::move(responder),
         [store, user_id = user->id, key_id, actor = UserActor(options, user->id)]() {
           if (absl::Status status = store->RevokeApiKey(user_id, key_id, actor); !status.ok()) {
             return StatusResponse(status);
           }
           return JsonAnswer(200, Json{{"success", true}, {"id", key_id}});
         });
}

}  // namespace

void AddAccountRoutes(Router* router, auth::AuthStore* store, auth::WorkerPool* pool,
                      AccountRoutesOptions account_options) {
  if (!account_options.now_ms) {
    account_options.now_ms = [] { return absl::ToUnixMillis(absl::Now()); };
  }
  auto options = std::make_shared<const AccountRoutesOptions>(std::move(account_options));
  // Routes that write the engine are refused under --read-only; login only reads.
  router->Add(Method::kPost, "/signup",
              Guarded([store, pool, options](HttpRequest& request, Responder& responder) {
                SignUp(store, pool, options, request, responder);
              }),
              /*is_write=*/true);
  router->Add(Method::kPost, "/login",
              Guarded([store, pool, options](HttpRequest& request, Responder& responder) {
                Login(store, pool, options, request, responder);
              }));
  router->Add(Method::kPost, "/refresh",
              Guarded([store, pool, options](HttpRequest& request, Responder& responder) {
                Refresh(store, pool, options, request, responder);
              }),
              /*is_write=*/true);
  router->Add(Method::kPost, "/apikeys",
              Guarded([store, pool, options](HttpRequest& request, Responder& responder) {
                CreateApiKey(store, pool, options, request, responder);
              }),
              /*is_write=*/true);
  router->Add(Method::kGet, "/apikeys",
              Guarded([store, options](HttpRequest& request, Responder& responder) {
                ListApiKeys(store, options, request, responder);
              }));
  router->Add(Method::kDelete, "/apikeys/{id}",
              Guarded([store, pool, options](HttpRequest& request, Responder& responder) {
                RevokeApiKey(store, pool, options, request, responder);
              }),
              /*is_write=*/true);
}

}  // namespace logkv::server::http
