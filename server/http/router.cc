#include "server/http/router.h"

#include <cassert>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace logkv::server::http {

const char* MethodName(Method method) {
  switch (method) {
    case Method::kGet: return "GET";
    case Method::kHead: return "HEAD";
    case Method::kPut: return "PUT";
    case Method::kPost: return "POST";
    case Method::kDelete: return "DELETE";
    case Method::kOptions: return "OPTIONS";
    case Method::kPatch: return "PATCH";
    case Method::kOther: return "OTHER";
  }
  return "OTHER";
}

void Router::Add(Method method, absl::string_view pattern, Handler handler, bool is_write) {
  assert(absl::StartsWith(pattern, "/"));
  Pattern parsed;
  absl::string_view rest = pattern.substr(1);
  if (absl::EndsWith(rest, "/")) {
    parsed.trailing_slash = true;
    rest.remove_suffix(1);
  }
  if (!rest.empty()) {
    for (absl::string_view part : absl::StrSplit(rest, '/')) {
      Segment segment;
      if (absl::StartsWith(part, "{") && absl::EndsWith(part, "...}")) {
        segment.capture = true;
        segment.rest = true;
      } else if (absl::StartsWith(part, "{") && absl::EndsWith(part, "}")) {
        segment.capture = true;
      } else {
        segment.literal = std::string(part);
      }
      parsed.segments.push_back(std::move(segment));
    }
  }
  auto route = std::make_unique<Route>();
  route->method = method;
  route->pattern = std::string(pattern);
  route->handler = std::move(handler);
  route->is_write = is_write;
  route->metrics_index = routes_.size();
  routes_.push_back(std::move(route));
  patterns_.push_back(std::move(parsed));
}

bool Router::Matches(const Pattern& pattern, absl::string_view path,
                     std::vector<std::string>* params, bool* bad_escape) const {
  params->clear();
  if (!absl::ConsumePrefix(&path, "/")) return false;
  if (pattern.segments.empty()) return path.empty() || (pattern.trailing_slash && path.empty());
  for (size_t i = 0; i < pattern.segments.size(); ++i) {
    const Segment& segment = pattern.segments[i];
    const bool last = i + 1 == pattern.segments.size();
    if (segment.rest) {
      // An empty rest matches too: the handler answers 400 "empty key",
      // which says more than a 404 would.
      std::optional<std::string> decoded = PercentDecode(path, /*plus_is_space=*/false);
      if (!decoded) {
        *bad_escape = true;
        return false;
      }
      params->push_back(std::move(*decoded));
      return true;
    }
    const size_t slash = path.find('/');
    const absl::string_view part = path.substr(0, slash);
    if (segment.capture) {
      if (part.empty()) return false;
      std::optional<std::string> decoded = PercentDecode(part, /*plus_is_space=*/false);
      if (!decoded) {
        *bad_escape = true;
        return false;
      }
      params->push_back(std::move(*decoded));
    } else if (part != segment.literal) {
      return false;
    }
    if (slash == absl::string_view::npos) {
      // The path ended: it matches when the pattern did too, and a pattern
      // with a trailing slash wants one.
      return last && !pattern.trailing_slash;
    }
    path.remove_prefix(slash + 1);
    if (last) return pattern.trailing_slash && path.empty();
  }
  return false;
}

Router::Match Router::Find(Method method, absl::string_view path,
                           std::vector<std::string>* params) const {
  Match match;
  std::vector<std::string> allowed;
  bool bad_escape = false;
  for (size_t i = 0; i < routes_.size(); ++i) {
    if (!Matches(patterns_[i], path, params, &bad_escape)) continue;
    const Route& route = *routes_[i];
    if (route.method == method || (method == Method::kHead && route.method == Method::kGet)) {
      match.route = &route;
      return match;
    }
    const char* name = MethodName(route.method);
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      allowed.push_back(name);
    }
  }
  params->clear();
  if (!allowed.empty()) {
    match.status = 405;
    match.allow = absl::StrJoin(allowed, ", ");
  } else {
    match.status = bad_escape ? 400 : 404;
  }
  return match;
}

}  // namespace logkv::server::http
