// The one mapping from absl::Status codes to HTTP status codes, shared by
// every REST route (accounts and data), so that the same failure always
// reaches a client as the same answer (REST.md "General rules").
#ifndef LOGKV_SERVER_HTTP_STATUS_HTTP_H_
#define LOGKV_SERVER_HTTP_STATUS_HTTP_H_

#include "absl/status/status.h"

namespace logkv::server::http {

// InvalidArgument 400, Unauthenticated 401, PermissionDenied 403, NotFound 404,
// AlreadyExists 409, ResourceExhausted 429, Unavailable 503; OK is 200 and
// anything else 500 (a bug or a failing disk, never bad input).
int HttpStatusOf(const absl::Status& status);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_STATUS_HTTP_H_
