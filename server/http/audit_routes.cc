#include "server/http/audit_routes.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "server/http/status_http.h"

namespace logkv::server::http {

AuditRoutes::AuditRoutes(AuditRoutesDependencies dependencies)
    : deps_(std::move(dependencies)) {}

void AuditRoutes::Get(HttpRequest& request, Responder responder) {
  if (HttpResponse refusal; !deps_.authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  uint64_t since = 0;
  if (std::optional<std::string> text = request.QueryParam("since");
      text.has_value() && !absl::SimpleAtoi(*text, &since)) {
    return responder.Send(HttpResponse::Error(400, "since must be an entry's seq (a number)"));
  }
  uint64_t limit = kDefaultAuditPageEntries;
  if (std::optional<std::string> text = request.QueryParam("limit");
      text.has_value() && (!absl::SimpleAtoi(*text, &limit) || limit == 0)) {
    return responder.Send(HttpResponse::Error(400, "limit must be a positive number"));
  }
  limit = std::min<uint64_t>(limit, kMaxAuditPageEntries);
  absl::StatusOr<std::string> body = deps_.read(since, static_cast<size_t>(limit));
  if (!body.ok()) {
    return responder.Send(HttpResponse::Error(HttpStatusOf(body.status()), body.status().message()));
  }
  responder.Send(HttpResponse::Json(200, *std::move(body)));
}

void AuditRoutes::AddTo(Router* router) {
  router->Add(Method::kGet, "/api/audit", [this](HttpRequest& request, Responder responder) {
    Get(request, std::move(responder));
  });
}

}  // namespace logkv::server::http
