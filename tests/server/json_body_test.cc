// CheckJson and ParseJson: the nesting limit at its boundary, for objects,
// arrays and both mixed; bodies far past it refused early; syntax errors;
// and IsValidUtf8 case by case.
#include "server/http/json_body.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace logkv::server::http {
namespace {

using nlohmann::json;

std::string NestedArrays(size_t depth) {
  return absl::StrCat(std::string(depth, '['), std::string(depth, ']'));
}

// {"a":{"a":...{"a":1}...}} with depth objects.
std::string NestedObjects(size_t depth) {
  std::string text;
  for (size_t i = 0; i < depth; ++i) text += R"({"a":)";
  text += "1";
  text += std::string(depth, '}');
  return text;
}

TEST(JsonBodyTest, DepthCountsContainers) {
  EXPECT_TRUE(CheckJson("1", 0).ok());
  EXPECT_TRUE(CheckJson(R"("text")", 0).ok());
  EXPECT_FALSE(CheckJson("[]", 0).ok());
  EXPECT_TRUE(CheckJson("[]", 1).ok());
  EXPECT_TRUE(CheckJson(R"({"a":1,"b":[2]})", 2).ok());
  EXPECT_FALSE(CheckJson(R"({"a":1,"b":[2]})", 1).ok());
  // Siblings do not add up: only nesting counts.
  EXPECT_TRUE(CheckJson("[[],[],[[]]]", 3).ok());
  EXPECT_FALSE(CheckJson("[[],[],[[[]]]]", 3).ok());
}

TEST(JsonBodyTest, TheLimitIsTakenAndOneMoreIsRefused) {
  for (size_t limit : {size_t{1}, size_t{2}, kDefaultMaxJsonDepth, size_t{1000}}) {
    SCOPED_TRACE(limit);
    for (const std::string& text : {NestedArrays(limit), NestedObjects(limit)}) {
      EXPECT_TRUE(CheckJson(text, limit).ok());
      absl::StatusOr<json> parsed = ParseJson(text, limit);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->dump(), text);
    }
    for (const std::string& text : {NestedArrays(limit + 1), NestedObjects(limit + 1)}) {
      const absl::Status checked = CheckJson(text, limit);
      EXPECT_EQ(checked.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(checked.message(), absl::StrCat("JSON nested deeper than the limit of ", limit,
                                                " levels (--max-json-depth)"));
      EXPECT_EQ(ParseJson(text, limit).status(), checked);
    }
  }
}

TEST(JsonBodyTest, ValuesAreCountedAtEveryDepth) {
  // Scalars and containers count, keys do not: {"a":[1,{}]} holds 4.
  EXPECT_TRUE(CheckJson(R"({"a":[1,{}]})", 8, 4).ok());
  EXPECT_EQ(CheckJson(R"({"a":[1,{}]})", 8, 3),
            absl::InvalidArgumentError("JSON holds more values than the limit of 3"));
  EXPECT_TRUE(CheckJson("7", 8, 1).ok());
  EXPECT_TRUE(CheckJson(std::string(10'000'000, ' ') + "[]", 8).ok());  // checked: no limit
  // A tree is built only within kMaxJsonTreeValues.
  std::string many(2 * kMaxJsonTreeValues + 1, ',');
  for (size_t i = 1; i < many.size(); i += 2) many[i] = '0';
  many.front() = '[';
  many.back() = ']';  // an array of kMaxJsonTreeValues zeros: one value too many
  EXPECT_EQ(ParseJson(many, 8).status(),
            absl::InvalidArgumentError(
                absl::StrCat("JSON holds more values than the limit of ", kMaxJsonTreeValues)));
  EXPECT_TRUE(CheckJson(many, 8).ok());
}

TEST(JsonBodyTest, MixedNestingCountsEveryLevel) {
  // [{"a":[{"a":...}]}]: arrays and objects alternate.
  std::string text;
  for (int i = 0; i < 32; ++i) text += R"([{"a":)";
  text += "null";
  for (int i = 0; i < 32; ++i) text += "}]";
  EXPECT_TRUE(ParseJson(text, 64).ok());
  EXPECT_FALSE(ParseJson(text, 63).ok());
}

TEST(JsonBodyTest, DeepBodiesAreRefusedWithoutBuildingThem) {
  // A million levels, unbalanced and balanced: refused at level 65, so
  // neither the check nor the parse holds a million of anything.
  const std::string open(1'000'000, '[');
  EXPECT_TRUE(absl::StrContains(CheckJson(open, kDefaultMaxJsonDepth).message(), "deeper"));
  EXPECT_TRUE(absl::StrContains(
      ParseJson(NestedArrays(1'000'000), kDefaultMaxJsonDepth).status().message(), "deeper"));
}

TEST(JsonBodyTest, TheCeilingSerialisesSafely) {
  // The deepest tree --max-json-depth allows is parsed, serialised and
  // copied (all recursive in nlohmann) on this thread's stack.
  const std::string text = NestedArrays(kMaxJsonDepthCeiling);
  absl::StatusOr<json> parsed = ParseJson(text, kMaxJsonDepthCeiling);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const json copy = *parsed;
  EXPECT_EQ(copy.dump(), text);
}

TEST(JsonBodyTest, ANulByteIsNotTheEndOfTheText) {
  // The parser would stop at the NUL and take {"a":1} for the whole value.
  const std::string text("{\"a\":1}\0{\"b\":2}", 15);
  EXPECT_EQ(CheckJson(text, kDefaultMaxJsonDepth).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParseJson(text, kDefaultMaxJsonDepth).ok());
}

TEST(JsonBodyTest, SyntaxErrorsNameTheirPosition) {
  for (const char* text :
       {"", "not json", "{", R"({"a":})", "[1,]", "1 2", R"({"a":1}x)", "\"\xff\""}) {
    SCOPED_TRACE(text);
    const absl::Status checked = CheckJson(text, kDefaultMaxJsonDepth);
    EXPECT_EQ(checked.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(checked.message(), "not valid JSON (syntax error near byte "))
        << checked.message();
    EXPECT_EQ(ParseJson(text, kDefaultMaxJsonDepth).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(JsonBodyTest, ParsesOrdinaryDocuments) {
  absl::StatusOr<json> parsed =
      ParseJson(R"({"value": {"n": 3, "list": [1, 2], "s": "\u00e9"}})", kDefaultMaxJsonDepth);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["value"]["list"], json({1, 2}));
  EXPECT_EQ((*parsed)["value"]["s"], "\xc3\xa9");
}

TEST(Utf8Test, Valid) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9"));               // U+00E9
  EXPECT_TRUE(IsValidUtf8("\xe2\x82\xac"));           // U+20AC
  EXPECT_TRUE(IsValidUtf8("\xf0\x9f\x98\x80"));       // U+1F600
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));       // U+10FFFF
  EXPECT_TRUE(IsValidUtf8(std::string("a\0b", 3)));  // NUL is a character
}

TEST(Utf8Test, Invalid) {
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\x80"));              // a lone continuation byte
  EXPECT_FALSE(IsValidUtf8("\xc3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));          // truncated
  EXPECT_FALSE(IsValidUtf8("\xc3\x28"));          // bad continuation
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\xaf"));      // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // beyond U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xf8\x88\x80\x80\x80"));
}

}  // namespace
}  // namespace logkv::server::http
