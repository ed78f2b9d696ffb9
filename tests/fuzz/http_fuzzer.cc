// libFuzzer target for the bytes an HTTP client sends: HttpParser with small
// limits, then every parsed request through a Router shaped like the server's
// (server/http/data_routes.cc and account_routes.cc) and the request's header
// and query accessors. Built with -DLOGKV_FUZZ=ON and clang; tools/test.sh
// --fuzz runs it for a bounded number of inputs from tests/fuzz/http_corpus/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/http/http_message.h"
#include "server/http/http_parser.h"
#include "server/http/router.h"

namespace {

using logkv::server::http::HttpLimits;
using logkv::server::http::HttpParser;
using logkv::server::http::HttpRequest;
using logkv::server::http::Method;
using logkv::server::http::Responder;
using logkv::server::http::Router;

void Check(bool condition) {
  if (!condition) std::abort();
}

const Router& TheRouter() {
  static const Router* const router = [] {
    auto* r = new Router;
    auto none = [](HttpRequest&, Responder responder) { responder.Send({}); };
    r->Add(Method::kGet, "/v1/kv/{key...}", none);
    r->Add(Method::kPut, "/v1/kv/{key...}", none, /*is_write=*/true);
    r->Add(Method::kDelete, "/v1/kv/{key...}", none, /*is_write=*/true);
    r->Add(Method::kGet, "/kv", none);
    r->Add(Method::kPut, "/kv", none, /*is_write=*/true);
    r->Add(Method::kGet, "/kv/{path...}", none);
    r->Add(Method::kPut, "/kv/{path...}", none, /*is_write=*/true);
    r->Add(Method::kPost, "/v0/kv", none, /*is_write=*/true);
    r->Add(Method::kGet, "/v0/kv/key/{key...}", none);
    r->Add(Method::kGet, "/health", none);
    r->Add(Method::kGet, "/members/", none);
    r->Add(Method::kPost, "/members/join", none);
    r->Add(Method::kGet, "/apikeys", none);
    r->Add(Method::kDelete, "/apikeys/{id}", none, /*is_write=*/true);
    return r;
  }();
  return *router;
}

// Reads every byte a view shows, in instrumented code, so a view that
// outlived its storage is reported here (absl's string functions are not
// instrumented, so Header() alone would read freed memory unnoticed).
size_t Touch(absl::string_view text) {
  size_t sum = 0;
  for (char c : text) sum += static_cast<unsigned char>(c);
  return sum;
}

// What a handler does with a request: routing, headers, query parameters.
void Serve(HttpRequest& request) {
  size_t sum = Touch(request.method_name) + Touch(request.target) + Touch(request.path) +
               Touch(request.query) + Touch(request.body);
  for (const auto& header : request.headers) sum += Touch(header.name) + Touch(header.value);
  Check(request.path.size() <= request.target.size());
  const Router::Match match = TheRouter().Find(request.method, request.path, &request.params);
  if (match.route != nullptr) {
    Check(match.status == 200);
    match.route->handler(request, Responder([](logkv::server::http::HttpResponse) {}));
  } else {
    Check(match.status == 400 || match.status == 404 || match.status == 405);
    Check(request.params.empty());
    Check((match.status == 405) == !match.allow.empty());
  }
  for (const char* name : {"host", "Content-Type", "x-api-key", "AUTHORIZATION", "expect"}) {
    (void)request.Header(name);
  }
  for (const auto& header : request.headers) {
    const auto value = request.Header(header.name);
    Check(value.has_value());
  }
  for (const char* name : {"key", "value", "ttl_ms", "prefix", "limit", ""}) {
    if (const auto value = request.QueryParam(name)) sum += Touch(*value);
  }
  for (const std::string& param : request.params) sum += Touch(param);
  // Keeps the sums from being optimised away.
  static volatile size_t sink;
  sink = sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  HttpLimits limits;
  limits.max_target_bytes = 256;
  limits.max_header_bytes = 512;
  limits.max_headers = 8;
  limits.max_body_bytes = 1024;
  HttpParser parser(limits);
  // The first byte picks where the input splits into two reads, so requests
  // are also parsed across a read boundary.
  const size_t split = size == 0 ? 0 : data[0] % (size + 1);
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::string pending;
  for (const absl::string_view read : {input.substr(0, split), input.substr(split)}) {
    pending.append(read.data(), read.size());
    while (true) {
      size_t consumed = 0;
      const HttpParser::Result result = parser.Parse(pending, &consumed);
      Check(consumed <= pending.size());
      if (result == HttpParser::Result::kError) {
        Check(parser.error_status() >= 400 && parser.error_status() < 500);
        Check(!parser.error_message().empty());
        return 0;
      }
      if (result == HttpParser::Result::kNeedMore) {
        Check(consumed == pending.size());
        pending.clear();
        break;
      }
      Check(consumed > 0);                // else the caller would loop forever
      Check(!parser.expects_continue());  // no "100 Continue" after the request
      HttpRequest& request = parser.request();
      Check(request.body.size() <= limits.max_body_bytes);
      Check(request.target.size() <= limits.max_target_bytes);
      Check(request.headers.size() <= limits.max_headers);
      Serve(request);
      pending.erase(0, consumed);
      if (!request.keep_alive) return 0;  // the server reads no further
    }
  }
  return 0;
}
