// Router: literal routes, "{name}" and "{name...}" captures, trailing-slash
// patterns, 404/405/400, HEAD on GET routes and percent-decoded captures,
// over a table shaped like the server's (server/http/data_routes.cc AddTo).
#include "server/http/router.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/http/http_message.h"

namespace logkv::server::http {
namespace {

class RouterTest : public ::testing::Test {
 protected:
  RouterTest() {
    auto none = [](HttpRequest&, Responder) {};
    router_.Add(Method::kGet, "/v1/kv/{key...}", none);
    router_.Add(Method::kPut, "/v1/kv/{key...}", none, /*is_write=*/true);
    router_.Add(Method::kDelete, "/v1/kv/{key...}", none, /*is_write=*/true);
    router_.Add(Method::kGet, "/kv", none);
    router_.Add(Method::kPut, "/kv", none, /*is_write=*/true);
    router_.Add(Method::kGet, "/kv/{path...}", none);
    router_.Add(Method::kPost, "/v0/kv", none, /*is_write=*/true);
    router_.Add(Method::kGet, "/v0/kv/key/{key...}", none);
    router_.Add(Method::kGet, "/health", none);
    router_.Add(Method::kGet, "/members/", none);
    router_.Add(Method::kPost, "/members/join", none);
    router_.Add(Method::kGet, "/apikeys", none);
    router_.Add(Method::kPost, "/apikeys", none);
    router_.Add(Method::kDelete, "/apikeys/{id}", none);
    router_.Add(Method::kGet, "/tenants/{tenant}/keys/{key}", none);
  }

  // The pattern the request reaches, or "<status>" when it reaches none.
  std::string Route(Method method, absl::string_view path) {
    params_ = {"stale"};
    const Router::Match match = router_.Find(method, path, &params_);
    if (match.route == nullptr) {
      EXPECT_NE(match.status, 200);
      EXPECT_TRUE(params_.empty()) << "captures of a failed match are cleared";
      allow_ = match.allow;
      // StrCat rather than operator+ on std::string: g++ 12 at -O3 warns
      // falsely (-Wrestrict) on the inlined concatenation.
      return absl::StrCat("<", match.status, ">");
    }
    EXPECT_EQ(match.status, 200);
    EXPECT_TRUE(match.allow.empty());
    return match.route->pattern;
  }

  Router router_;
  std::vector<std::string> params_;
  std::string allow_;
};

using Params = std::vector<std::string>;

TEST_F(RouterTest, LiteralRoutes) {
  EXPECT_EQ(Route(Method::kGet, "/health"), "/health");
  EXPECT_TRUE(params_.empty());
  EXPECT_EQ(Route(Method::kGet, "/kv"), "/kv");
  EXPECT_EQ(Route(Method::kPut, "/kv"), "/kv");
  EXPECT_EQ(Route(Method::kPost, "/v0/kv"), "/v0/kv");
  EXPECT_EQ(Route(Method::kPost, "/members/join"), "/members/join");
  EXPECT_EQ(Route(Method::kGet, "/healthz"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/health/"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/health/x"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/Health"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "//health"), "<404>");
}

TEST_F(RouterTest, NoSuchPathIs404) {
  EXPECT_EQ(Route(Method::kGet, "/nope"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/"), "<404>");
  EXPECT_EQ(Route(Method::kGet, ""), "<404>");
  EXPECT_EQ(Route(Method::kGet, "health"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "*"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/v1"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/v1/kv"), "<404>");  // a rest capture needs its slash
  EXPECT_TRUE(allow_.empty());
}

TEST_F(RouterTest, SingleSegmentCapture) {
  EXPECT_EQ(Route(Method::kDelete, "/apikeys/k-123"), "/apikeys/{id}");
  EXPECT_EQ(params_, Params{"k-123"});
  EXPECT_EQ(Route(Method::kGet, "/tenants/acme/keys/k1"), "/tenants/{tenant}/keys/{key}");
  EXPECT_EQ(params_, (Params{"acme", "k1"}));
  // One segment, not empty, no more.
  EXPECT_EQ(Route(Method::kDelete, "/apikeys/"), "<404>");
  EXPECT_EQ(Route(Method::kDelete, "/apikeys/a/b"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/tenants//keys/k1"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/tenants/acme/keys/"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/tenants/acme/keys/k1/"), "<404>");
}

TEST_F(RouterTest, RestCaptureTakesSlashesAndMayBeEmpty) {
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/a"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"a"});
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/a/b/c"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"a/b/c"});
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/a/"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"a/"});
  EXPECT_EQ(Route(Method::kGet, "/v1/kv//x"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"/x"});
  // An empty rest matches: the handler answers "empty key".
  EXPECT_EQ(Route(Method::kPut, "/v1/kv/"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{""});
  EXPECT_EQ(Route(Method::kGet, "/v0/kv/key/x/y"), "/v0/kv/key/{key...}");
  EXPECT_EQ(params_, Params{"x/y"});
  // "/kv" is its own route; "/kv/..." the rest route.
  EXPECT_EQ(Route(Method::kGet, "/kv/"), "/kv/{path...}");
  EXPECT_EQ(params_, Params{""});
  EXPECT_EQ(Route(Method::kGet, "/kv/users/42"), "/kv/{path...}");
  EXPECT_EQ(params_, Params{"users/42"});
}

TEST_F(RouterTest, TrailingSlashPatternWantsTheSlash) {
  EXPECT_EQ(Route(Method::kGet, "/members/"), "/members/");
  EXPECT_TRUE(params_.empty());
  EXPECT_EQ(Route(Method::kGet, "/members"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/members//"), "<404>");
  EXPECT_EQ(Route(Method::kGet, "/members/x"), "<404>");
}

TEST_F(RouterTest, RootPattern) {
  Router router;
  router.Add(Method::kGet, "/", [](HttpRequest&, Responder) {});
  std::vector<std::string> params;
  EXPECT_NE(router.Find(Method::kGet, "/", &params).route, nullptr);
  EXPECT_EQ(router.Find(Method::kGet, "/x", &params).status, 404);
  EXPECT_EQ(router.Find(Method::kGet, "//", &params).status, 404);
}

TEST_F(RouterTest, WrongMethodIs405WithAllow) {
  EXPECT_EQ(Route(Method::kPost, "/v1/kv/a"), "<405>");
  EXPECT_EQ(allow_, "GET, PUT, DELETE");
  EXPECT_EQ(Route(Method::kDelete, "/kv"), "<405>");
  EXPECT_EQ(allow_, "GET, PUT");
  EXPECT_EQ(Route(Method::kPut, "/members/"), "<405>");
  EXPECT_EQ(allow_, "GET");
  EXPECT_EQ(Route(Method::kGet, "/members/join"), "<405>");
  EXPECT_EQ(allow_, "POST");
  EXPECT_EQ(Route(Method::kPatch, "/apikeys"), "<405>");
  EXPECT_EQ(allow_, "GET, POST");
  EXPECT_EQ(Route(Method::kOther, "/health"), "<405>");
  EXPECT_EQ(allow_, "GET");
  EXPECT_EQ(Route(Method::kPut, "/kv/x"), "<405>");
  EXPECT_EQ(allow_, "GET");
}

TEST_F(RouterTest, HeadMatchesGetRoutes) {
  EXPECT_EQ(Route(Method::kHead, "/health"), "/health");
  EXPECT_EQ(Route(Method::kHead, "/v1/kv/a%20b"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"a b"});
  EXPECT_EQ(Route(Method::kHead, "/members/join"), "<405>");
  EXPECT_EQ(allow_, "POST");
  // Only HEAD borrows: GET does not take a HEAD-only route.
  Router router;
  router.Add(Method::kHead, "/ping", [](HttpRequest&, Responder) {});
  std::vector<std::string> params;
  const Router::Match match = router.Find(Method::kGet, "/ping", &params);
  EXPECT_EQ(match.status, 405);
  EXPECT_EQ(match.allow, "HEAD");
}

TEST_F(RouterTest, CapturesArePercentDecoded) {
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/a%2Fb%20c%25"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"a/b c%"});
  // '+' is a plus in a path.
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/a+b"), "/v1/kv/{key...}");
  EXPECT_EQ(params_, Params{"a+b"});
  // An encoded slash stays inside one segment.
  EXPECT_EQ(Route(Method::kDelete, "/apikeys/a%2Fb"), "/apikeys/{id}");
  EXPECT_EQ(params_, Params{"a/b"});
  EXPECT_EQ(Route(Method::kGet, "/tenants/%61cme/keys/%00"), "/tenants/{tenant}/keys/{key}");
  EXPECT_EQ(params_, (Params{"acme", std::string(1, '\0')}));
}

TEST_F(RouterTest, BadEscapeIs400) {
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/%zz"), "<400>");
  EXPECT_EQ(Route(Method::kGet, "/v1/kv/a/b%2"), "<400>");
  EXPECT_EQ(Route(Method::kDelete, "/apikeys/%g0"), "<400>");
  EXPECT_EQ(Route(Method::kGet, "/tenants/%/keys/k"), "<400>");
  EXPECT_EQ(Route(Method::kGet, "/kv/%"), "<400>");
  // A bad escape in a path no route knows is still 404.
  EXPECT_EQ(Route(Method::kGet, "/nope/%zz"), "<404>");
}

TEST_F(RouterTest, RoutesKeepTheirOrderAndFlags) {
  const auto& routes = router_.routes();
  ASSERT_EQ(routes.size(), 15u);
  for (size_t i = 0; i < routes.size(); ++i) EXPECT_EQ(routes[i]->metrics_index, i);
  EXPECT_EQ(routes[0]->pattern, "/v1/kv/{key...}");
  EXPECT_FALSE(routes[0]->is_write);
  EXPECT_TRUE(routes[1]->is_write);
  EXPECT_EQ(routes[1]->method, Method::kPut);
}

TEST(MethodNameTest, NamesEveryMethod) {
  EXPECT_STREQ(MethodName(Method::kGet), "GET");
  EXPECT_STREQ(MethodName(Method::kHead), "HEAD");
  EXPECT_STREQ(MethodName(Method::kPut), "PUT");
  EXPECT_STREQ(MethodName(Method::kPost), "POST");
  EXPECT_STREQ(MethodName(Method::kDelete), "DELETE");
  EXPECT_STREQ(MethodName(Method::kOptions), "OPTIONS");
  EXPECT_STREQ(MethodName(Method::kPatch), "PATCH");
  EXPECT_STREQ(MethodName(Method::kOther), "OTHER");
}

}  // namespace
}  // namespace logkv::server::http
