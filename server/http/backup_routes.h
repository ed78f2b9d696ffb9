// The backup routes: POST /api/backup starts a backup of this node (202,
// with its name; 409 while one runs; 503 without --backup_dir) and GET
// /api/backup/status says how backups go (last success, its duration and
// size, the next scheduled run, failures, the one running). Both are the
// administrator's: the node's admin check (ClusterRoutes::AuthorizeAdmin,
// the same as for changing the membership).
//
// Thread-safety: handlers run on every loop at once; BackupRoutes holds
// only constant state and the thread-safe manager.
#ifndef LOGKV_SERVER_HTTP_BACKUP_ROUTES_H_
#define LOGKV_SERVER_HTTP_BACKUP_ROUTES_H_

#include <functional>
#include <string>

#include "server/backup/backup_manager.h"
#include "server/http/http_message.h"
#include "server/http/router.h"

namespace logkv::server::http {

struct BackupRoutesDependencies {
  backup::BackupManager* manager = nullptr;  // required; outlives the routes' use
  // Whether the caller is the node's administrator; when not, fills the
  // refusal (401 without credentials, 403 with insufficient ones).
  // Required.
  std::function<bool(const HttpRequest& request, HttpResponse* refusal)> authorize_admin;
  // Called once a backup (name) is started for request: the audit log
  // records who asked. Optional.
  std::function<void(const HttpRequest& request, const std::string& name)> on_requested;
};

class BackupRoutes {
 public:
  explicit BackupRoutes(BackupRoutesDependencies dependencies);
  BackupRoutes(const BackupRoutes&) = delete;
  BackupRoutes& operator=(const BackupRoutes&) = delete;

  void AddTo(Router* router);

 private:
  void Create(HttpRequest& request, Responder responder);
  void Status(HttpRequest& request, Responder responder);

  const BackupRoutesDependencies deps_;
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_BACKUP_ROUTES_H_
