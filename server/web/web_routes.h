// The web console's routes: the pages (one document, "/" "/signup" "/login"
// "/keys" "/data" "/watch" "/cluster", whose script draws the page the path
// names), their scripts and styles under "/assets/", the API reference
// ("/docs", rendered by swagger-ui from "/openapi.json") and "/console/info",
// what the pages need to know of this node. All are public and read-only:
// they hold no data, and the pages call the JSON routes with credentials in
// headers (Authorization, X-API-Key), never in URLs or cookies.
//
// Every answer carries a strict Content-Security-Policy (scripts, styles and
// connections from this origin only, nothing inline, no framing), nosniff,
// no-referrer and a strong ETag answered with 304 on If-None-Match.
//
// Thread-safety: handlers may run on every loop at once; they read only
// immutable data.
#ifndef LOGKV_SERVER_WEB_WEB_ROUTES_H_
#define LOGKV_SERVER_WEB_WEB_ROUTES_H_

#include <string>

#include "server/http/router.h"

namespace logkv::server::web {

struct WebRoutesConfig {
  bool auth = false;  // --auth=on: accounts and API keys exist
  std::string version;  // the build's, as logkvd --version prints it
};

// The page paths, each served the console's document.
inline constexpr const char* kPagePaths[] = {"/",      "/signup", "/login",  "/keys",
                                             "/data",  "/watch",  "/cluster"};

// The value of every answer's Content-Security-Policy.
extern const char kContentSecurityPolicy[];

void AddWebRoutes(http::Router* router, const WebRoutesConfig& config);

}  // namespace logkv::server::web

#endif  // LOGKV_SERVER_WEB_WEB_ROUTES_H_
