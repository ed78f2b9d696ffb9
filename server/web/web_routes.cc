#include "server/web/web_routes.h"

#include <memory>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "server/web/web_assets.h"

namespace logkv::server::web {

// 'self' only: no inline script or style (a page that an injected string
// reached still cannot run it), no eval, no plugins, no framing by other
// sites (clickjacking), forms post only here. Images may be data: URLs
// (swagger-ui's icons).
const char kContentSecurityPolicy[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'";

namespace {

using http::HttpRequest;
using http::HttpResponse;
using http::Responder;

void AddSecurityHeaders(HttpResponse* response) {
  response->headers.emplace_back("Content-Security-Policy", kContentSecurityPolicy);
  response->headers.emplace_back("X-Content-Type-Options", "nosniff");
  response->headers.emplace_back("Referrer-Policy", "no-referrer");
  response->headers.emplace_back("X-Frame-Options", "DENY");
  response->headers.emplace_back("Cross-Origin-Opener-Policy", "same-origin");
}

// Whether an If-None-Match header names etag ("*" and lists included).
bool NoneMatchHolds(const HttpRequest& request, std::string_view etag) {
  std::optional<absl::string_view> header = request.Header("If-None-Match");
  if (!header) return false;
  for (absl::string_view candidate : absl::StrSplit(*header, ',')) {
    candidate = absl::StripAsciiWhitespace(candidate);
    absl::ConsumePrefix(&candidate, "W/");
    if (candidate == "*" || candidate == absl::string_view(etag.data(), etag.size())) return true;
  }
  return false;
}

// The asset, with its validator; 304 when the client holds it already. The
// files are not named by their hashes, so clients revalidate every use
// (no-cache): a new logkvd's console is never mixed with an old one's.
HttpResponse Serve(const HttpRequest& request, const Asset& asset) {
  HttpResponse response;
  // Debian's Abseil has a string_view of its own.
  response.content_type = absl::string_view(asset.content_type.data(), asset.content_type.size());
  response.headers.emplace_back("ETag", std::string(asset.etag));
  response.headers.emplace_back("Cache-Control", "no-cache");
  AddSecurityHeaders(&response);
  if (NoneMatchHolds(request, asset.etag)) {
    response.status = 304;
    return response;
  }
  response.body = std::string(asset.bytes);
  return response;
}

HttpResponse NotFound(std::string_view what) {
  HttpResponse response =
      HttpResponse::Error(404, std::string("no console file ") + std::string(what));
  AddSecurityHeaders(&response);
  return response;
}

}  // namespace

void AddWebRoutes(http::Router* router, const WebRoutesConfig& config) {
  auto by_path = std::make_shared<absl::flat_hash_map<std::string_view, const Asset*>>();
  for (const Asset& asset : Assets()) by_path->emplace(asset.path, &asset);
  const auto find = [by_path](std::string_view path) -> const Asset* {
    auto it = by_path->find(path);
    return it == by_path->end() ? nullptr : it->second;
  };
  // Every page is the same document; its script reads the path.
  for (const char* page : kPagePaths) {
    router->Add(http::Method::kGet, page, [find](HttpRequest& request, Responder responder) {
      const Asset* index = find("/assets/index.html");
      responder.Send(index != nullptr ? Serve(request, *index) : NotFound("index.html"));
    });
  }
  router->Add(http::Method::kGet, "/docs", [find](HttpRequest& request, Responder responder) {
    const Asset* docs = find("/assets/docs.html");
    responder.Send(docs != nullptr ? Serve(request, *docs) : NotFound("docs.html"));
  });
  router->Add(http::Method::kGet, "/openapi.json",
              [find](HttpRequest& request, Responder responder) {
                const Asset* spec = find("/openapi.json");
                responder.Send(spec != nullptr ? Serve(request, *spec)
                                               : NotFound("openapi.json"));
              });
  router->Add(http::Method::kGet, "/assets/{file...}",
              [find](HttpRequest& request, Responder responder) {
                const std::string path = "/assets/" + request.params[0];
                const Asset* asset = find(path);
                responder.Send(asset != nullptr ? Serve(request, *asset) : NotFound(path));
              });
  const std::string info =
      nlohmann::json{{"auth", config.auth}, {"version", config.version}}.dump();
  router->Add(http::Method::kGet, "/console/info",
              [info](HttpRequest&, Responder responder) {
                HttpResponse response = HttpResponse::Json(200, info);
                response.headers.emplace_back("Cache-Control", "no-store");
                AddSecurityHeaders(&response);
                responder.Send(std::move(response));
              });
}

}  // namespace logkv::server::web
