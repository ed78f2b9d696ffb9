// What the data and node routes share (server/http/route_support.h).
#include "server/http/route_support.h"

#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace logkv::server::http {
namespace {

TEST(RouteSupportTest, Base64RoundTripsAnyBytes) {
  for (const std::string& bytes :
       {std::string(), std::string("a"), std::string("ab"), std::string("\0\xff\x01", 3)}) {
    const std::string encoded = EncodeBase64(bytes);
    EXPECT_EQ(encoded.size() % 4, 0u) << encoded;
    EXPECT_EQ(DecodeBase64(encoded), bytes) << encoded;
  }
  EXPECT_EQ(EncodeBase64(std::string("\xff\xfe\x00", 3)), "//4A");
}

TEST(RouteSupportTest, Base64RefusesAnythingElse) {
  EXPECT_FALSE(DecodeBase64("!!"));
  EXPECT_FALSE(DecodeBase64("YQ==x"));  // trailing garbage
  EXPECT_FALSE(DecodeBase64("YQ"));     // padding is required
  EXPECT_FALSE(DecodeBase64("-_-_"));   // the URL-safe alphabet is another variant
}

TEST(RouteSupportTest, DumpIsCompactAndReplacesInvalidUtf8) {
  EXPECT_EQ(Dump(nlohmann::json({{"a", 1}})), R"({"a":1})");
  EXPECT_EQ(Dump(nlohmann::json(std::string("\xff"))), "\"\xEF\xBF\xBD\"");
}

TEST(RouteSupportTest, Rfc3339HasMilliseconds) {
  EXPECT_EQ(Rfc3339(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(Rfc3339(1'700'000'000'123), "2023-11-14T22:13:20.123Z");
}

TEST(RouteSupportTest, NodeUrlIsReplaced) {
  NodeUrl url("http://127.0.0.1:0");
  EXPECT_EQ(url.Get(), "http://127.0.0.1:0");
  url.Set("http://127.0.0.1:8080");
  EXPECT_EQ(url.Get(), "http://127.0.0.1:8080");
}

TEST(RouteSupportTest, WithAuthOffEveryCallerMayReadAndWriteTheGlobalNamespace) {
  ServerMetrics metrics;
  const ApiKeyAuth auth{.admission = nullptr, .metrics = &metrics};
  HttpRequest request;
  HttpResponse refusal;
  absl::StatusOr<RequestContext> context = Authorize(auth, request, &refusal);
  ASSERT_TRUE(context.ok()) << context.status();
  EXPECT_EQ(context->key_prefix, "");
  EXPECT_TRUE(context->may_read);
  EXPECT_TRUE(context->may_write);
}

}  // namespace
}  // namespace logkv::server::http
