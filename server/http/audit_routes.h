// GET /api/audit?since=SEQ&limit=N: this node's audit log (docs/security.md,
// "Audit log"): its public key, anchor and head, and its entries with seq
// past since (at most limit, 1000 by default, 10000 at most), as
// `logkv audit verify` checks them. The administrator's: the node's admin
// check (ClusterRoutes::AuthorizeAdmin: the cluster secret, or with
// accounts on the administrator's key; 401 without credentials).
//
// Thread-safety: handlers run on every loop at once; AuditRoutes holds only
// constant state and its thread-safe dependencies.
#ifndef LOGKV_SERVER_HTTP_AUDIT_ROUTES_H_
#define LOGKV_SERVER_HTTP_AUDIT_ROUTES_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "server/http/http_message.h"
#include "server/http/router.h"

namespace logkv::server::http {

struct AuditRoutesDependencies {
  // The page as its JSON body, or why not (Unavailable before the control
  // plane runs). Required.
  std::function<absl::StatusOr<std::string>(uint64_t since, size_t limit)> read;
  // As BackupRoutesDependencies::authorize_admin. Required.
  std::function<bool(const HttpRequest& request, HttpResponse* refusal)> authorize_admin;
};

inline constexpr size_t kDefaultAuditPageEntries = 1000;
inline constexpr size_t kMaxAuditPageEntries = 10000;

class AuditRoutes {
 public:
  explicit AuditRoutes(AuditRoutesDependencies dependencies);
  AuditRoutes(const AuditRoutes&) = delete;
  AuditRoutes& operator=(const AuditRoutes&) = delete;

  void AddTo(Router* router);

 private:
  void Get(HttpRequest& request, Responder responder);

  const AuditRoutesDependencies deps_;
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_AUDIT_ROUTES_H_
