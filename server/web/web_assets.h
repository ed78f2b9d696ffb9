// The web console's files, embedded in logkvd at build time: server/web/
// build.mjs compiles the TypeScript and writes a C++ source holding every
// built file (never committed), so logkvd serves its console and API
// reference with nothing beside it (an air-gapped machine included). Each
// file is there as it is and compressed at build time (gzip, brotli).
//
// Thread-safety: immutable after the first call.
#ifndef LOGKV_SERVER_WEB_WEB_ASSETS_H_
#define LOGKV_SERVER_WEB_WEB_ASSETS_H_

#include <string_view>
#include <vector>

namespace logkv::server::web {

struct Asset {
  std::string_view path;          // the URL path it is served at: "/assets/app.js"
  std::string_view content_type;  // "text/javascript; charset=utf-8"
  std::string_view etag;          // quoted strong validator: a hash of the bytes
  std::string_view bytes;
  // The bytes compressed (Content-Encoding gzip and br), when that makes
  // them smaller; empty otherwise. Served by the request's Accept-Encoding.
  std::string_view gzip;
  std::string_view br;
};

// Every embedded file. Without the console built (LOGKV_WEB=OFF) a single
// page that says so.
const std::vector<Asset>& Assets();

}  // namespace logkv::server::web

#endif  // LOGKV_SERVER_WEB_WEB_ASSETS_H_
