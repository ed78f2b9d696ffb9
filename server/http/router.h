// The HTTP adapter's route table: (method, pattern) -> handler, one table for
// every dialect of REST.md. Patterns are literal segments plus captures:
// "{name}" takes one non-empty segment, "{name...}" the rest of the path,
// slashes included (possibly empty). Captures are percent-decoded into request.params.
//
// Thread-safety: built before the server starts, then only read (Find may be
// called from every loop at once).
#ifndef LOGKV_SERVER_HTTP_ROUTER_H_
#define LOGKV_SERVER_HTTP_ROUTER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/http/http_message.h"

namespace logkv::server::http {

// request lives until the handler returns; responder may be kept and
// answered later from any thread.
using Handler = std::function<void(HttpRequest& request, Responder responder)>;

struct Route {
  Method method;
  std::string pattern;  // as registered; also the route's label in metrics
  Handler handler;
  bool is_write = false;  // refused with 403 under --read-only
  size_t metrics_index = 0;  // position in the table
};

class Router {
 public:
  Router() = default;
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // REQUIRES: pattern starts with '/'; a "{name...}" capture is the last segment.
  void Add(Method method, absl::string_view pattern, Handler handler, bool is_write = false);

  struct Match {
    const Route* route = nullptr;  // null: see status
    int status = 200;              // 404 no such path, 405 path known but not the method,
                                   // 400 a capture is not valid percent-encoding
    std::string allow;             // for 405: the methods the path takes
  };
  // path is percent-encoded; params receives the decoded captures.
  Match Find(Method method, absl::string_view path, std::vector<std::string>* params) const;

  const std::vector<std::unique_ptr<Route>>& routes() const { return routes_; }

 private:
  struct Segment {
    std::string literal;
    bool capture = false;
    bool rest = false;
  };
  struct Pattern {
    std::vector<Segment> segments;
    bool trailing_slash = false;  // "/members/" matches only with the slash
  };
  bool Matches(const Pattern& pattern, absl::string_view path,
               std::vector<std::string>* params, bool* bad_escape) const;

  std::vector<std::unique_ptr<Route>> routes_;
  std::vector<Pattern> patterns_;  // parallel to routes_
};

const char* MethodName(Method method);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_ROUTER_H_
