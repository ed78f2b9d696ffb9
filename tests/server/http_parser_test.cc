// HttpParser: requests in every split of their bytes, pipelining, header and
// query access, chunked and sized bodies, keep-alive, Expect: 100-continue,
// and every limit with the status it answers.
//
// Randomised splits take their seed from LOGKV_TEST_SEED or draw one; the seed
// is printed on failure (SCOPED_TRACE) so `LOGKV_TEST_SEED=<seed>` replays it.
#include "server/http/http_parser.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "server/http/http_message.h"

namespace logkv::server::http {
namespace {

using Result = HttpParser::Result;

uint64_t TestSeed() {
  if (const char* text = std::getenv("LOGKV_TEST_SEED"); text != nullptr && *text != '\0') {
    return std::strtoull(text, nullptr, 0);
  }
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

// A request copied out of the parser, so it outlives the next Parse.
struct ParsedRequest {
  Method method = Method::kOther;
  std::string method_name;
  std::string target;
  std::string path;
  std::string query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = false;

  bool operator==(const ParsedRequest&) const = default;
};

ParsedRequest Copy(const HttpRequest& request) {
  ParsedRequest copy;
  copy.method = request.method;
  copy.method_name = std::string(request.method_name);
  copy.target = std::string(request.target);
  copy.path = std::string(request.path);
  copy.query = std::string(request.query);
  for (const HttpHeader& header : request.headers) {
    copy.headers.emplace_back(std::string(header.name), std::string(header.value));
  }
  copy.body = std::string(request.body);
  copy.keep_alive = request.keep_alive;
  return copy;
}

std::ostream& operator<<(std::ostream& out, const ParsedRequest& request) {
  out << request.method_name << " " << request.target << " keep_alive=" << request.keep_alive
      << " headers={";
  for (const auto& [name, value] : request.headers) out << name << ": " << value << "; ";
  return out << "} body=" << request.body.size() << " bytes '" << request.body << "'";
}

// What a connection sees after feeding some reads: the requests, in order, and
// whether the parse ended in an error.
struct Outcome {
  std::vector<ParsedRequest> requests;
  Result last = Result::kNeedMore;
  int error_status = 0;
  std::string error_message;
};

// Feeds the reads one after another the way a connection does: a kNeedMore
// takes every byte, a kRequest may leave bytes that are parsed next.
Outcome Feed(HttpParser& parser, const std::vector<std::string>& reads) {
  Outcome outcome;
  std::string pending;
  for (const std::string& read : reads) {
    pending += read;
    while (true) {
      size_t consumed = 0;
      const Result result = parser.Parse(pending, &consumed);
      EXPECT_LE(consumed, pending.size());
      outcome.last = result;
      if (result == Result::kError) {
        outcome.error_status = parser.error_status();
        outcome.error_message = parser.error_message();
        return outcome;
      }
      if (result == Result::kNeedMore) {
        EXPECT_EQ(consumed, pending.size());
        pending.clear();
        break;
      }
      outcome.requests.push_back(Copy(parser.request()));
      pending.erase(0, consumed);
    }
  }
  return outcome;
}

Outcome FeedOne(absl::string_view bytes, const HttpLimits& limits = HttpLimits()) {
  HttpParser parser(limits);
  return Feed(parser, {std::string(bytes)});
}

// Small limits so each can be crossed with a short request.
HttpLimits SmallLimits() {
  HttpLimits limits;
  limits.max_target_bytes = 32;
  limits.max_header_bytes = 64;
  limits.max_headers = 4;
  limits.max_body_bytes = 16;
  return limits;
}

// A PUT with a sized body, a chunked POST with an extension and a trailer,
// and a GET: together they cross every state of the parser.
const char kPipeline[] =
    "PUT /v1/kv/a%20b?ttl_ms=5 HTTP/1.1\r\n"
    "Host: example\r\n"
    "Content-Length: 11\r\n"
    "X-Spaced:  \t padded value \t \r\n"
    "\r\n"
    "hello world"
    "POST /v0/kv HTTP/1.1\r\n"
    "Host: example\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "4\r\nWiki\r\n"
    "5;name=value\r\npedia\r\n"
    "0\r\n"
    "Trailer-Field: ignored\r\n"
    "\r\n"
    "GET /health HTTP/1.1\r\n"
    "Host: example\r\n"
    "Connection: close\r\n"
    "\r\n";

std::vector<ParsedRequest> ExpectedPipeline() {
  ParsedRequest put;
  put.method = Method::kPut;
  put.method_name = "PUT";
  put.target = "/v1/kv/a%20b?ttl_ms=5";
  put.path = "/v1/kv/a%20b";
  put.query = "ttl_ms=5";
  put.headers = {{"Host", "example"}, {"Content-Length", "11"}, {"X-Spaced", "padded value"}};
  put.body = "hello world";
  put.keep_alive = true;

  ParsedRequest post;
  post.method = Method::kPost;
  post.method_name = "POST";
  post.target = "/v0/kv";
  post.path = "/v0/kv";
  post.headers = {{"Host", "example"}, {"Transfer-Encoding", "chunked"}};
  post.body = "Wikipedia";
  post.keep_alive = true;

  ParsedRequest get;
  get.method = Method::kGet;
  get.method_name = "GET";
  get.target = "/health";
  get.path = "/health";
  get.headers = {{"Host", "example"}, {"Connection", "close"}};
  get.keep_alive = false;
  return {put, post, get};
}

// ---- Splits and pipelining ----------------------------------------------------

TEST(HttpParserTest, ParsesTheRequestsInOneRead) {
  const Outcome outcome = FeedOne(kPipeline);
  EXPECT_EQ(outcome.last, Result::kNeedMore);
  EXPECT_EQ(outcome.requests, ExpectedPipeline());
}

TEST(HttpParserTest, EveryTwoReadSplitGivesTheSameRequests) {
  const std::string bytes = kPipeline;
  for (size_t split = 0; split <= bytes.size(); ++split) {
    SCOPED_TRACE(absl::StrCat("split at ", split));
    HttpParser parser{HttpLimits()};
    const Outcome outcome = Feed(parser, {bytes.substr(0, split), bytes.substr(split)});
    EXPECT_EQ(outcome.last, Result::kNeedMore);
    EXPECT_EQ(outcome.requests, ExpectedPipeline());
  }
}

TEST(HttpParserTest, ByteByByteGivesTheSameRequests) {
  const std::string bytes = kPipeline;
  std::vector<std::string> reads;
  for (char c : bytes) reads.emplace_back(1, c);
  HttpParser parser{HttpLimits()};
  const Outcome outcome = Feed(parser, reads);
  EXPECT_EQ(outcome.last, Result::kNeedMore);
  EXPECT_EQ(outcome.requests, ExpectedPipeline());
}

TEST(HttpParserTest, RandomSplitsGiveTheSameRequests) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun with LOGKV_TEST_SEED=", seed, ")"));
  std::mt19937_64 random(seed);
  const std::string bytes = kPipeline;
  for (int round = 0; round < 200; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    std::vector<std::string> reads;
    for (size_t begin = 0; begin < bytes.size();) {
      const size_t length = 1 + random() % 40;
      reads.push_back(bytes.substr(begin, length));
      begin += length;
    }
    HttpParser parser{HttpLimits()};
    const Outcome outcome = Feed(parser, reads);
    EXPECT_EQ(outcome.last, Result::kNeedMore);
    ASSERT_EQ(outcome.requests, ExpectedPipeline());
  }
}

TEST(HttpParserTest, PipelinedRequestsComeOutOneAtATime) {
  const std::string first = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string second = "PUT /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz";
  const std::string third_head = "GET /c HTTP/1.1\r\n";
  const std::string buffer = first + second + third_head;
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;

  ASSERT_EQ(parser.Parse(buffer, &consumed), Result::kRequest);
  EXPECT_EQ(consumed, first.size());
  EXPECT_EQ(parser.request().path, "/a");
  EXPECT_FALSE(parser.in_request());

  absl::string_view rest = absl::string_view(buffer).substr(consumed);
  ASSERT_EQ(parser.Parse(rest, &consumed), Result::kRequest);
  EXPECT_EQ(consumed, second.size());
  EXPECT_EQ(parser.request().path, "/b");
  EXPECT_EQ(parser.request().body, "xyz");
  // Headers of the request before do not linger.
  EXPECT_FALSE(parser.request().Header("host").has_value());

  rest.remove_prefix(consumed);
  ASSERT_EQ(parser.Parse(rest, &consumed), Result::kNeedMore);
  EXPECT_EQ(consumed, third_head.size());
  EXPECT_TRUE(parser.in_request());

  ASSERT_EQ(parser.Parse("\r\n", &consumed), Result::kRequest);
  EXPECT_EQ(consumed, 2u);
  EXPECT_EQ(parser.request().path, "/c");
  EXPECT_FALSE(parser.in_request());
}

TEST(HttpParserTest, EmptyReadNeedsMore) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 7;
  EXPECT_EQ(parser.Parse("", &consumed), Result::kNeedMore);
  EXPECT_EQ(consumed, 0u);
  EXPECT_FALSE(parser.in_request());
}

// ---- Methods, headers and the query ---------------------------------------------

TEST(HttpParserTest, MapsMethods) {
  const std::vector<std::pair<std::string, Method>> cases = {
      {"GET", Method::kGet},         {"HEAD", Method::kHead},   {"DELETE", Method::kDelete},
      {"OPTIONS", Method::kOptions}, {"PATCH", Method::kPatch}, {"PROPFIND", Method::kOther},
  };
  for (const auto& [name, method] : cases) {
    SCOPED_TRACE(name);
    const Outcome outcome = FeedOne(absl::StrCat(name, " /x HTTP/1.1\r\n\r\n"));
    ASSERT_EQ(outcome.requests.size(), 1u);
    EXPECT_EQ(outcome.requests[0].method, method);
    EXPECT_EQ(outcome.requests[0].method_name, name);
  }
}

TEST(HttpParserTest, HeaderLookupIgnoresCaseAndValuesAreTrimmed) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse("GET / HTTP/1.1\r\n"
                         "Content-Type:application/json\r\n"
                         "X-Token: \t  secret \t\r\n"
                         "x-dup: first\r\n"
                         "X-DUP: second\r\n"
                         "\r\n",
                         &consumed),
            Result::kRequest);
  const HttpRequest& request = parser.request();
  EXPECT_EQ(request.Header("content-type"), "application/json");
  EXPECT_EQ(request.Header("CONTENT-TYPE"), "application/json");
  EXPECT_EQ(request.Header("x-token"), "secret");
  EXPECT_EQ(request.Header("X-Dup"), "first");  // the first of that name
  EXPECT_FALSE(request.Header("x-missing").has_value());
  EXPECT_FALSE(request.Header("x-tok").has_value());
  ASSERT_EQ(request.headers.size(), 4u);
  EXPECT_EQ(request.headers[2].name, "x-dup");  // names as sent
}

TEST(HttpParserTest, EmptyHeaderValuesKeepHeadersApart) {
  // A header with no value must not swallow the name of the next one.
  const std::string bytes =
      "GET / HTTP/1.1\r\n"
      "X-Empty:\r\n"
      "X-Blank:   \r\n"
      "X-Next: yes\r\n"
      "\r\n";
  for (size_t split = 0; split <= bytes.size(); ++split) {
    SCOPED_TRACE(absl::StrCat("split at ", split));
    HttpParser parser{HttpLimits()};
    const Outcome outcome = Feed(parser, {bytes.substr(0, split), bytes.substr(split)});
    ASSERT_EQ(outcome.requests.size(), 1u);
    const std::vector<std::pair<std::string, std::string>> expected = {
        {"X-Empty", ""}, {"X-Blank", ""}, {"X-Next", "yes"}};
    EXPECT_EQ(outcome.requests[0].headers, expected);
  }
}

TEST(HttpParserTest, SplitsTargetIntoPathAndQuery) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse("GET /kv/a%2Fb?key=a%20b&value=x+y&empty=&flag&plus=%2B&bad=%zz&"
                         "short=%4&key=again HTTP/1.1\r\n\r\n",
                         &consumed),
            Result::kRequest);
  const HttpRequest& request = parser.request();
  EXPECT_EQ(request.path, "/kv/a%2Fb");           // still encoded
  EXPECT_EQ(request.QueryParam("key"), "a b");    // the first of that name
  EXPECT_EQ(request.QueryParam("value"), "x y");  // '+' is a space in a query
  EXPECT_EQ(request.QueryParam("empty"), "");
  EXPECT_EQ(request.QueryParam("flag"), "");
  EXPECT_EQ(request.QueryParam("plus"), "+");
  EXPECT_FALSE(request.QueryParam("bad").has_value());    // malformed escape
  EXPECT_FALSE(request.QueryParam("short").has_value());  // truncated escape
  EXPECT_FALSE(request.QueryParam("missing").has_value());
  EXPECT_FALSE(request.QueryParam("ke").has_value());
}

TEST(HttpParserTest, NoQuery) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse("GET /kv HTTP/1.1\r\n\r\n", &consumed), Result::kRequest);
  EXPECT_EQ(parser.request().path, "/kv");
  EXPECT_EQ(parser.request().query, "");
  EXPECT_FALSE(parser.request().QueryParam("key").has_value());

  ASSERT_EQ(parser.Parse("GET /kv? HTTP/1.1\r\n\r\n", &consumed), Result::kRequest);
  EXPECT_EQ(parser.request().path, "/kv");
  EXPECT_EQ(parser.request().query, "");
}

TEST(PercentDecodeTest, DecodesEscapes) {
  EXPECT_EQ(PercentDecode("a%20b%2fc%2F%41", false), "a b/c/A");
  EXPECT_EQ(PercentDecode("", false), "");
  EXPECT_EQ(PercentDecode("%00", false), std::string(1, '\0'));
  EXPECT_EQ(PercentDecode("%ff", false), "\xff");
}

TEST(PercentDecodeTest, PlusIsASpaceOnlyInQueries) {
  EXPECT_EQ(PercentDecode("a+b", /*plus_is_space=*/true), "a b");
  EXPECT_EQ(PercentDecode("a+b", /*plus_is_space=*/false), "a+b");
  EXPECT_EQ(PercentDecode("a%2Bb", /*plus_is_space=*/true), "a+b");
}

TEST(PercentDecodeTest, RefusesMalformedEscapes) {
  for (const char* text : {"%", "%4", "a%", "%zz", "%4g", "%g4", "abc%2", "% 1"}) {
    SCOPED_TRACE(text);
    EXPECT_FALSE(PercentDecode(text, false).has_value());
    EXPECT_FALSE(PercentDecode(text, true).has_value());
  }
}

// ---- Bodies -------------------------------------------------------------------

TEST(HttpParserTest, ContentLengthBody) {
  const Outcome outcome =
      FeedOne("POST /v0/kv HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\"}GET / HTTP/1.1\r\n\r\n");
  ASSERT_EQ(outcome.requests.size(), 2u);
  EXPECT_EQ(outcome.requests[0].body, "{\"a\"}");
  EXPECT_EQ(outcome.requests[1].body, "");
}

TEST(HttpParserTest, ZeroContentLength) {
  const Outcome outcome = FeedOne("PUT /kv/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(outcome.requests.size(), 1u);
  EXPECT_EQ(outcome.requests[0].body, "");
}

TEST(HttpParserTest, IncompleteBodyNeedsMore) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  const std::string head = "PUT /kv/a HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234";
  EXPECT_EQ(parser.Parse(head, &consumed), Result::kNeedMore);
  EXPECT_EQ(consumed, head.size());
  EXPECT_TRUE(parser.in_request());
  ASSERT_EQ(parser.Parse("56789", &consumed), Result::kRequest);
  EXPECT_EQ(consumed, 5u);
  EXPECT_EQ(parser.request().body, "0123456789");
}

TEST(HttpParserTest, ChunkedBodyIsDechunked) {
  const std::string bytes =
      "PUT /kv/a HTTP/1.1\r\n"
      "Host: h\r\n"
      "Transfer-Encoding: chunked\r\n"
      "\r\n"
      "3\r\nabc\r\n"
      "A;ext;name=\"quoted value\"\r\n0123456789\r\n"
      "1;x=y\r\n!\r\n"
      "0;last=1\r\n"
      "Trailer-One: 1\r\n"
      "Trailer-Two: a longer trailer value that makes the header storage grow\r\n"
      "\r\n";
  for (size_t split = 0; split <= bytes.size(); ++split) {
    SCOPED_TRACE(absl::StrCat("split at ", split));
    HttpParser parser{HttpLimits()};
    const Outcome outcome = Feed(parser, {bytes.substr(0, split), bytes.substr(split)});
    ASSERT_EQ(outcome.requests.size(), 1u);
    EXPECT_EQ(outcome.requests[0].body, "abc0123456789!");
    // Trailers are not headers, and reading them leaves the headers intact.
    const std::vector<std::pair<std::string, std::string>> expected = {
        {"Host", "h"}, {"Transfer-Encoding", "chunked"}};
    EXPECT_EQ(outcome.requests[0].headers, expected);
  }
}

TEST(HttpParserTest, EmptyChunkedBody) {
  const Outcome outcome =
      FeedOne("POST /v0/kv HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  ASSERT_EQ(outcome.requests.size(), 1u);
  EXPECT_EQ(outcome.requests[0].body, "");
}

// ---- Keep-alive ----------------------------------------------------------------

TEST(HttpParserTest, KeepAlive) {
  struct Case {
    const char* request;
    bool keep_alive;
  };
  const Case cases[] = {
      {"GET / HTTP/1.1\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
      {"PUT /a HTTP/1.0\r\nContent-Length: 1\r\n\r\nx", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.request);
    const Outcome outcome = FeedOne(c.request);
    ASSERT_EQ(outcome.requests.size(), 1u);
    EXPECT_EQ(outcome.requests[0].keep_alive, c.keep_alive);
  }
}

TEST(HttpParserTest, KeepAliveIsPerRequest) {
  const Outcome outcome = FeedOne(
      "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
      "GET /b HTTP/1.1\r\n\r\n"
      "GET /c HTTP/1.1\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(outcome.requests.size(), 3u);
  EXPECT_TRUE(outcome.requests[0].keep_alive);
  EXPECT_TRUE(outcome.requests[1].keep_alive);
  EXPECT_FALSE(outcome.requests[2].keep_alive);
}

// ---- Expect: 100-continue ----------------------------------------------------------

TEST(HttpParserTest, ExpectContinueLastsUntilTheBodyArrives) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  EXPECT_FALSE(parser.expects_continue());
  const std::string head =
      "PUT /kv/a HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-Continue\r\n\r\n";
  ASSERT_EQ(parser.Parse(head, &consumed), Result::kNeedMore);
  EXPECT_TRUE(parser.expects_continue());
  // A read with nothing in it does not change that.
  ASSERT_EQ(parser.Parse("", &consumed), Result::kNeedMore);
  EXPECT_TRUE(parser.expects_continue());
  ASSERT_EQ(parser.Parse("da", &consumed), Result::kNeedMore);
  EXPECT_FALSE(parser.expects_continue());  // the client sends the body already
  ASSERT_EQ(parser.Parse("ta", &consumed), Result::kRequest);
  EXPECT_EQ(parser.request().body, "data");
  EXPECT_FALSE(parser.expects_continue());
}

TEST(HttpParserTest, ExpectContinueIsAnsweredOnce) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse("PUT /kv/a HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
                         &consumed),
            Result::kNeedMore);
  ASSERT_TRUE(parser.expects_continue());
  parser.set_continue_sent();
  EXPECT_FALSE(parser.expects_continue());
  ASSERT_EQ(parser.Parse("data", &consumed), Result::kRequest);

  // The next request starts afresh.
  ASSERT_EQ(parser.Parse("PUT /kv/b HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
                         &consumed),
            Result::kNeedMore);
  EXPECT_TRUE(parser.expects_continue());
  ASSERT_EQ(parser.Parse("x", &consumed), Result::kRequest);
  ASSERT_EQ(parser.Parse("GET / HTTP/1.1\r\n", &consumed), Result::kNeedMore);
  EXPECT_FALSE(parser.expects_continue());
}

TEST(HttpParserTest, NoContinueOnceTheWholeRequestArrived) {
  // The body came with the headers: the request is complete and a later
  // empty read must not ask for a "100 Continue" after the answer.
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse("PUT /kv/a HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
                         "\r\ndata",
                         &consumed),
            Result::kRequest);
  EXPECT_FALSE(parser.expects_continue());
  ASSERT_EQ(parser.Parse("", &consumed), Result::kNeedMore);
  EXPECT_FALSE(parser.expects_continue());

  ASSERT_EQ(parser.Parse("GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", &consumed),
            Result::kRequest);
  EXPECT_FALSE(parser.expects_continue());
}

// ---- Limits and errors ------------------------------------------------------------

TEST(HttpParserTest, TargetAtTheLimitIsTaken) {
  const std::string target = "/" + std::string(31, 'a');
  const Outcome outcome = FeedOne(absl::StrCat("GET ", target, " HTTP/1.1\r\n\r\n"), SmallLimits());
  ASSERT_EQ(outcome.requests.size(), 1u);
  EXPECT_EQ(outcome.requests[0].target, target);
}

TEST(HttpParserTest, TargetOverTheLimitIs414) {
  const std::string bytes = absl::StrCat("GET /", std::string(32, 'a'), " HTTP/1.1\r\n\r\n");
  for (size_t split = 0; split <= bytes.size(); ++split) {
    SCOPED_TRACE(absl::StrCat("split at ", split));
    HttpParser parser(SmallLimits());
    const Outcome outcome = Feed(parser, {bytes.substr(0, split), bytes.substr(split)});
    EXPECT_EQ(outcome.last, Result::kError);
    EXPECT_EQ(outcome.error_status, 414);
    EXPECT_EQ(outcome.error_message, "request target longer than 32 bytes");
  }
}

TEST(HttpParserTest, HeaderBytesOverTheLimitAre431) {
  // 64 bytes of names and values are taken, 65 are not.
  const std::string at_limit = absl::StrCat("X-A: ", std::string(61, 'v'), "\r\n");
  const Outcome taken =
      FeedOne(absl::StrCat("GET / HTTP/1.1\r\n", at_limit, "\r\n"), SmallLimits());
  ASSERT_EQ(taken.requests.size(), 1u);

  const std::string bytes =
      absl::StrCat("GET / HTTP/1.1\r\nX-A: ", std::string(62, 'v'), "\r\n\r\n");
  for (size_t split = 0; split <= bytes.size(); ++split) {
    SCOPED_TRACE(absl::StrCat("split at ", split));
    HttpParser parser(SmallLimits());
    const Outcome outcome = Feed(parser, {bytes.substr(0, split), bytes.substr(split)});
    EXPECT_EQ(outcome.last, Result::kError);
    EXPECT_EQ(outcome.error_status, 431);
    EXPECT_EQ(outcome.error_message, "request headers larger than 64 bytes");
  }
}

TEST(HttpParserTest, LongHeaderNameIs431) {
  const Outcome outcome = FeedOne(
      absl::StrCat("GET / HTTP/1.1\r\n", std::string(65, 'N'), ": v\r\n\r\n"), SmallLimits());
  EXPECT_EQ(outcome.error_status, 431);
  EXPECT_EQ(outcome.error_message, "request headers larger than 64 bytes");
}

TEST(HttpParserTest, TooManyHeadersAre431) {
  const Outcome taken =
      FeedOne("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", SmallLimits());
  ASSERT_EQ(taken.requests.size(), 1u);
  EXPECT_EQ(taken.requests[0].headers.size(), 4u);

  const Outcome outcome =
      FeedOne("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", SmallLimits());
  EXPECT_EQ(outcome.last, Result::kError);
  EXPECT_EQ(outcome.error_status, 431);
  EXPECT_EQ(outcome.error_message, "more than 4 headers");
}

TEST(HttpParserTest, ContentLengthOverTheLimitIs413BeforeTheBody) {
  HttpParser parser(SmallLimits());
  size_t consumed = 0;
  // Only the headers: the parser refuses without waiting for the body.
  EXPECT_EQ(parser.Parse("PUT /kv/a HTTP/1.1\r\nContent-Length: 17\r\n\r\n", &consumed),
            Result::kError);
  EXPECT_EQ(parser.error_status(), 413);
  EXPECT_EQ(parser.error_message(),
            "request body of 17 bytes is larger than the limit of 16 bytes");

  const Outcome taken = FeedOne(
      absl::StrCat("PUT /kv/a HTTP/1.1\r\nContent-Length: 16\r\n\r\n", std::string(16, 'b')),
      SmallLimits());
  ASSERT_EQ(taken.requests.size(), 1u);
  EXPECT_EQ(taken.requests[0].body.size(), 16u);
}

TEST(HttpParserTest, HugeContentLengthIs413Or400) {
  // Past the limit: 413. Past what a 64-bit length holds: llhttp's 400.
  Outcome outcome = FeedOne("PUT /a HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n");
  EXPECT_EQ(outcome.error_status, 413);
  outcome = FeedOne("PUT /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
  EXPECT_EQ(outcome.error_status, 400);
}

TEST(HttpParserTest, ChunkedBodyOverTheLimitIs413) {
  const Outcome taken = FeedOne(
      "PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n",
      SmallLimits());
  ASSERT_EQ(taken.requests.size(), 1u);
  EXPECT_EQ(taken.requests[0].body.size(), 16u);

  const std::string bytes =
      "PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "8\r\n01234567\r\n9\r\n012345678\r\n0\r\n\r\n";
  for (size_t split = 0; split <= bytes.size(); ++split) {
    SCOPED_TRACE(absl::StrCat("split at ", split));
    HttpParser parser(SmallLimits());
    const Outcome outcome = Feed(parser, {bytes.substr(0, split), bytes.substr(split)});
    EXPECT_EQ(outcome.last, Result::kError);
    EXPECT_EQ(outcome.error_status, 413);
    EXPECT_EQ(outcome.error_message,
              "request body chunk of 9 bytes would take the body past the limit of 16 bytes");
  }
}

TEST(HttpParserTest, ChunkSizeOverTheLimitIs413BeforeItsData) {
  // Only the chunk's size line: the parser refuses without waiting for data.
  for (const char* size : {"ffffffffffffffff", "FFFFFFFFFFFFFFFF", "1800001", "10000000"}) {
    SCOPED_TRACE(size);
    HttpParser parser(HttpLimits{});  // 24 MiB bodies
    size_t consumed = 0;
    EXPECT_EQ(parser.Parse(absl::StrCat("PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                                        size, "\r\n"),
                           &consumed),
              Result::kError);
    EXPECT_EQ(parser.error_status(), 413);
    EXPECT_TRUE(absl::StrContains(parser.error_message(), "past the limit of 25165824 bytes"))
        << parser.error_message();
  }
  // A chunk that fills the body to the limit exactly is taken.
  const Outcome full = FeedOne(
      "PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
      SmallLimits());
  ASSERT_EQ(full.requests.size(), 1u);
  EXPECT_EQ(full.requests[0].body.size(), 16u);
  // One byte more, in a later chunk, is refused at that chunk's size line.
  HttpParser parser(SmallLimits());
  size_t consumed = 0;
  EXPECT_EQ(parser.Parse("PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "10\r\n0123456789abcdef\r\n1\r\n",
                         &consumed),
            Result::kError);
  EXPECT_EQ(parser.error_status(), 413);
  // A size beyond 64 bits is malformed: llhttp's 400.
  EXPECT_EQ(FeedOne("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n")
                .error_status,
            400);
}

TEST(HttpParserTest, TrailersCountAgainstTheHeaderLimit) {
  const Outcome outcome =
      FeedOne(absl::StrCat("PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
                           "T: ",
                           std::string(64, 't'), "\r\n\r\n"),
              SmallLimits());
  EXPECT_EQ(outcome.last, Result::kError);
  EXPECT_EQ(outcome.error_status, 431);
  EXPECT_EQ(outcome.error_message, "request headers and trailers larger than 64 bytes");
}

TEST(HttpParserTest, NoLengthAndNoChunkingIsAnEmptyBody) {
  // RFC 9112 6.3: a request without Content-Length or Transfer-Encoding has
  // no body, whatever its method; the next request follows at once.
  for (const char* method : {"PUT", "POST", "PATCH", "DELETE", "GET", "HEAD"}) {
    SCOPED_TRACE(method);
    const Outcome outcome = FeedOne(absl::StrCat(
        method, " /members/leave HTTP/1.1\r\nHost: h\r\n\r\nGET /health HTTP/1.1\r\n\r\n"));
    EXPECT_EQ(outcome.last, Result::kNeedMore);
    ASSERT_EQ(outcome.requests.size(), 2u);
    EXPECT_EQ(outcome.requests[0].method_name, method);
    EXPECT_EQ(outcome.requests[0].body, "");
    EXPECT_TRUE(outcome.requests[0].keep_alive);
    EXPECT_EQ(outcome.requests[1].target, "/health");
  }
}

TEST(HttpParserTest, UnknownExpectationIs417) {
  const Outcome outcome =
      FeedOne("PUT /kv/a HTTP/1.1\r\nContent-Length: 1\r\nExpect: 200-ok\r\n\r\nx");
  EXPECT_EQ(outcome.last, Result::kError);
  EXPECT_EQ(outcome.error_status, 417);
  EXPECT_EQ(outcome.error_message, "unsupported expectation '200-ok'");
}

TEST(HttpParserTest, GarbageIs400) {
  const char* const cases[] = {
      "\x01\x02\x03 hello\r\n\r\n",
      "GET\r\n\r\n",
      "GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
      "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
      "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "GET / HTTP/1.1\nHost: h\r\n\r\n\x01",
  };
  for (const char* bytes : cases) {
    SCOPED_TRACE(absl::CEscape(bytes));
    const Outcome outcome = FeedOne(bytes);
    EXPECT_EQ(outcome.last, Result::kError);
    EXPECT_EQ(outcome.error_status, 400);
    EXPECT_TRUE(absl::StartsWith(outcome.error_message, "malformed HTTP request: "))
        << outcome.error_message;
    EXPECT_GT(outcome.error_message.size(), strlen("malformed HTTP request: "));
  }
}

TEST(HttpParserTest, UpgradeIsIgnored) {
  // No other protocol is spoken here, so Upgrade is ignored (RFC 9110 7.8):
  // curl --http2 asks for h2c and then sends more HTTP/1.1 requests.
  const Outcome outcome = FeedOne(
      "GET /a HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
      "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
      "GET /b HTTP/1.1\r\n\r\n");
  EXPECT_EQ(outcome.last, Result::kNeedMore) << outcome.error_message;
  ASSERT_EQ(outcome.requests.size(), 2u);
  EXPECT_EQ(outcome.requests[0].path, "/a");
  EXPECT_EQ(outcome.requests[1].path, "/b");
}

TEST(HttpParserTest, ConnectIsAnOrdinaryRequest) {
  const Outcome outcome =
      FeedOne("CONNECT example.com:443 HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
  EXPECT_EQ(outcome.last, Result::kNeedMore) << outcome.error_message;
  ASSERT_EQ(outcome.requests.size(), 2u);
  EXPECT_EQ(outcome.requests[0].method, Method::kOther);
  EXPECT_EQ(outcome.requests[0].method_name, "CONNECT");
  EXPECT_EQ(outcome.requests[0].target, "example.com:443");
  EXPECT_EQ(outcome.requests[1].path, "/b");
}

TEST(HttpParserTest, AnErrorIsFinal) {
  HttpParser parser{HttpLimits()};
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse("\x01garbage", &consumed), Result::kError);
  const std::string message = parser.error_message();
  EXPECT_EQ(parser.Parse("GET / HTTP/1.1\r\n\r\n", &consumed), Result::kError);
  EXPECT_EQ(parser.error_status(), 400);
  EXPECT_EQ(parser.error_message(), message);
}

// What the server counts against --max-buffered-bytes: the announced body
// once the headers are in (a chunked body: what has arrived), nothing between
// requests.
TEST(HttpParserTest, BodyBytesExpected) {
  HttpParser parser(HttpLimits{});
  size_t consumed = 0;
  EXPECT_EQ(parser.body_bytes_expected(), 0u);
  EXPECT_EQ(parser.Parse("PUT /k HTTP/1.1\r\nHost: x\r\n", &consumed), Result::kNeedMore);
  EXPECT_EQ(parser.body_bytes_expected(), 0u) << "headers not complete yet";
  EXPECT_EQ(parser.Parse("Content-Length: 200000\r\n\r\nabc", &consumed), Result::kNeedMore);
  EXPECT_EQ(parser.body_bytes_expected(), 200000u);
  const std::string rest(200000 - 3, 'b');
  ASSERT_EQ(parser.Parse(rest, &consumed), Result::kRequest);
  EXPECT_EQ(parser.request().body.size(), 200000u);
  EXPECT_EQ(parser.body_bytes_expected(), 0u);
  parser.TrimStorage();

  EXPECT_EQ(parser.Parse("POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "5\r\nhello\r\n",
                         &consumed),
            Result::kNeedMore);
  EXPECT_EQ(parser.body_bytes_expected(), 5u);
  ASSERT_EQ(parser.Parse("0\r\n\r\n", &consumed), Result::kRequest);
  EXPECT_EQ(parser.request().body, "hello");
}

}  // namespace
}  // namespace logkv::server::http
