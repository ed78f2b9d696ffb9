#include "server/http/backup_routes.h"

#include <string>
#include <utility>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/http/route_support.h"

namespace logkv::server::http {

using nlohmann::json;

namespace {

json TimeOrNull(absl::Time time) {
  if (time == absl::InfiniteFuture() || time == absl::InfinitePast()) return nullptr;
  return Rfc3339(absl::ToUnixMillis(time));
}

json StatusJson(const backup::BackupStatus& status) {
  json body = {
      {"enabled", status.enabled},
      {"dir", status.dir},
      {"schedule", status.schedule.empty() ? json(nullptr) : json(status.schedule)},
      {"retention", status.retention},
      {"rate_limit_bytes_per_second", status.bytes_per_second},
      {"format", backup::BackupFormatName(status.format)},
      {"running", status.running},
      {"current", nullptr},
      {"last_success", nullptr},
      {"successes", status.successes},
      {"failures", status.failures},
      {"consecutive_failures", status.consecutive_failures},
      {"last_failure", nullptr},
      {"next_run", TimeOrNull(status.next_run)},
  };
  if (status.running) {
    body["current"] = {{"name", status.running_name},
                       {"started_at", TimeOrNull(status.running_since)},
                       {"bytes_done", status.progress_bytes},
                       {"bytes_total", status.progress_total_bytes}};
  }
  if (status.last_success.has_value()) {
    const backup::BackupStatus::Success& success = *status.last_success;
    body["last_success"] = {{"name", success.name},
                            {"path", success.path},
                            {"finished_at", TimeOrNull(success.finished)},
                            {"duration_ms", absl::ToInt64Milliseconds(success.duration)},
                            {"bytes", success.bytes},
                            {"stored_bytes", success.stored_bytes},
                            {"files", success.files}};
  }
  if (status.failures > 0) {
    body["last_failure"] = {{"at", TimeOrNull(status.last_failure)},
                            {"error", status.last_error}};
  }
  return body;
}

}  // namespace

BackupRoutes::BackupRoutes(BackupRoutesDependencies dependencies)
    : deps_(std::move(dependencies)) {}

void BackupRoutes::Create(HttpRequest& request, Responder responder) {
  if (HttpResponse refusal; !deps_.authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<std::string> name = deps_.manager->RequestBackup();
  if (!name.ok()) {
    const absl::Status& status = name.status();
    const int code = absl::IsAlreadyExists(status) ? 409 : 503;
    HttpResponse answer = HttpResponse::Error(code, status.message());
    if (absl::IsUnavailable(status)) answer.headers.emplace_back("Retry-After", "5");
    return responder.Send(std::move(answer));
  }
  if (deps_.on_requested) deps_.on_requested(request, *name);
  json body = {{"started", true}, {"name", *name}, {"status", "/api/backup/status"}};
  responder.Send(HttpResponse::Json(202, Dump(body)));
}

void BackupRoutes::Status(HttpRequest& request, Responder responder) {
  if (HttpResponse refusal; !deps_.authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  responder.Send(HttpResponse::Json(200, Dump(StatusJson(deps_.manager->Status()))));
}

void BackupRoutes::AddTo(Router* router) {
  // Not a write of client data: a read-only node may still be backed up.
  router->Add(Method::kPost, "/api/backup", [this](HttpRequest& request, Responder responder) {
    Create(request, std::move(responder));
  });
  router->Add(Method::kGet, "/api/backup/status",
              [this](HttpRequest& request, Responder responder) {
                Status(request, std::move(responder));
              });
}

}  // namespace logkv::server::http
