#include "server/web/web_routes.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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

// The q-value the Accept-Encoding header gives coding ("gzip", "br"):
// named, or through "*"; 0 when refused or absent (RFC 9110 section 12.5.3).
double AcceptedQuality(absl::string_view header, absl::string_view coding) {
  double named = -1, wildcard = -1;
  for (absl::string_view item : absl::StrSplit(header, ',')) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ';');
    const absl::string_view name = absl::StripAsciiWhitespace(parts[0]);
    double quality = 1;
    for (size_t i = 1; i < parts.size(); ++i) {
      absl::string_view parameter = absl::StripAsciiWhitespace(parts[i]);
      if (absl::ConsumePrefix(&parameter, "q=") || absl::ConsumePrefix(&parameter, "Q=")) {
        if (!absl::SimpleAtod(parameter, &quality)) quality = 0;
      }
    }
    if (absl::EqualsIgnoreCase(name, coding)) named = quality;
    if (name == "*") wildcard = quality;
  }
  return named >= 0 ? named : std::max(wildcard, 0.0);
}

// The representation of asset the request's Accept-Encoding asks for:
// brotli, else gzip, else the bytes as they are; each with its own ETag.
struct Representation {
  std::string_view bytes;
  std::string_view encoding;  // "" = identity
  std::string etag;
};

Representation Choose(const HttpRequest& request, const Asset& asset) {
  const std::string_view etag = asset.etag;
  Representation identity{asset.bytes, "", std::string(etag)};
  std::optional<absl::string_view> header = request.Header("Accept-Encoding");
  if (!header) return identity;
  // A compressed representation's validator differs from the file's
  // ("<hash>-br"): caches must not take one for the other.
  auto tagged = [etag](absl::string_view suffix) {
    return absl::StrCat(absl::string_view(etag.data(), etag.size() - 1), "-", suffix, "\"");
  };
  const double br = asset.br.empty() ? 0 : AcceptedQuality(*header, "br");
  const double gzip = asset.gzip.empty() ? 0 : AcceptedQuality(*header, "gzip");
  if (br > 0 && br >= gzip) return {asset.br, "br", tagged("br")};
  if (gzip > 0) return {asset.gzip, "gzip", tagged("gzip")};
  return identity;
}

// The asset, with its validator; 304 when the client holds it already. The
// files are not named by their hashes, so clients revalidate every use
// (no-cache): a new logkvd's console is never mixed with an old one's.
// Compressed when the client accepts it (Vary tells caches the answer
// depends on Accept-Encoding).
HttpResponse Serve(const HttpRequest& request, const Asset& asset) {
  HttpResponse response;
  // Debian's Abseil has a string_view of its own.
  response.content_type = absl::string_view(asset.content_type.data(), asset.content_type.size());
  Representation chosen = Choose(request, asset);
  response.headers.emplace_back("ETag", chosen.etag);
  response.headers.emplace_back("Cache-Control", "no-cache");
  response.headers.emplace_back("Vary", "Accept-Encoding");
  if (!chosen.encoding.empty()) {
    response.headers.emplace_back("Content-Encoding", std::string(chosen.encoding));
  }
  AddSecurityHeaders(&response);
  if (NoneMatchHolds(request, chosen.etag)) {
    response.status = 304;
    return response;
  }
  response.body = std::string(chosen.bytes);
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
