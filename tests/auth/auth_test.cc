// Tests of server/auth: argon2id passwords, HS256 JWTs, the rate limiter, the
// worker pool, the AuthStore (validation, conflicts, tokens, API keys, what
// reaches the disk, persistence) and the account routes over a Router.
// Time is a ManualClock throughout; no assertion depends on the wall clock.
#include <sodium.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/auth/auth_store.h"
#include "server/auth/jwt.h"
#include "server/auth/login_throttle.h"
#include "server/auth/password.h"
#include "server/auth/rate_limiter.h"
#include "server/auth/worker_pool.h"
#include "server/control/acl_state.h"
#include "server/control/control_state.h"
#include "server/http/account_routes.h"
#include "server/http/router.h"
#include "server/http/status_http.h"
#include "server/namespaces.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::server::auth {
namespace {

using Json = nlohmann::json;
using ::logkv::test::ManualClock;
using ::logkv::test::ScopedTempDir;

constexpr int64_t kStartMs = ManualClock::kDefaultStartUnixMs;  // 2023-11-14T22:13:20Z
constexpr int64_t kStartS = kStartMs / 1000;

// ---- Passwords ---------------------------------------------------------------------

TEST(PasswordTest, HashAndVerify) {
  ASSERT_OK_AND_ASSIGN(std::string hash,
                       HashPassword("correct horse", PasswordHashLimits::Minimum()));
  EXPECT_TRUE(absl::StartsWith(hash, "$argon2id$")) << hash;
  EXPECT_TRUE(VerifyPassword(hash, "correct horse"));
  EXPECT_FALSE(VerifyPassword(hash, "correct horsf"));
  EXPECT_FALSE(VerifyPassword(hash, ""));
  // Salted: the same password hashes differently each time.
  ASSERT_OK_AND_ASSIGN(std::string again,
                       HashPassword("correct horse", PasswordHashLimits::Minimum()));
  EXPECT_NE(hash, again);
  EXPECT_TRUE(VerifyPassword(again, "correct horse"));
}

TEST(PasswordTest, MalformedHashMatchesNothing) {
  EXPECT_FALSE(VerifyPassword("", "password"));
  EXPECT_FALSE(VerifyPassword("$argon2id$garbage", "password"));
  EXPECT_FALSE(VerifyPassword(std::string("$argon2id\0$", 11), "password"));
  EXPECT_FALSE(VerifyPassword(std::string(500, 'a'), "password"));
}

TEST(PasswordTest, LimitsOutOfRangeAreRefused) {
  PasswordHashLimits limits = PasswordHashLimits::Minimum();
  limits.memory_limit_bytes = 1;
  EXPECT_STATUS_CODE(HashPassword("password", limits), absl::StatusCode::kInvalidArgument);
}

// ---- JWT -------------------------------------------------------------------------

constexpr absl::string_view kSecret = "a test secret that is long enough!!";

JwtClaims Claims(TokenType type = TokenType::kAccess) {
  JwtClaims claims;
  claims.user_id = 42;
  claims.type = type;
  claims.issued_at_s = kStartS;
  claims.expires_at_s = kStartS + 3600;
  claims.jti = NewJwtId();
  return claims;
}

// A token with the given header and claims JSON, signed with HS256 under secret.
std::string ForgeToken(absl::string_view secret, const Json& header, const Json& claims) {
  std::string signing_input =
      absl::StrCat(Base64UrlEncode(header.dump()), ".", Base64UrlEncode(claims.dump()));
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, reinterpret_cast<const unsigned char*>(secret.data()),
                              secret.size());
  crypto_auth_hmacsha256_update(
      &state, reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size());
  crypto_auth_hmacsha256_final(&state, mac);
  return absl::StrCat(
      signing_input, ".",
      Base64UrlEncode(absl::string_view(reinterpret_cast<char*>(mac), sizeof(mac))));
}

Json ClaimsJson(const JwtClaims& claims) {
  return Json{{"sub", std::to_string(claims.user_id)},
              {"typ", std::string(TokenTypeName(claims.type))},
              {"iat", claims.issued_at_s},
              {"exp", claims.expires_at_s},
              {"jti", claims.jti},
              {"gen", claims.session_generation}};
}

TEST(JwtTest, RoundTrip) {
  const JwtClaims claims = Claims();
  const std::string token = SignJwt(kSecret, claims);
  EXPECT_EQ(std::count(token.begin(), token.end(), '.'), 2);
  ASSERT_OK_AND_ASSIGN(JwtClaims verified, VerifyJwt(kSecret, token, TokenType::kAccess, kStartS));
  EXPECT_EQ(verified.user_id, claims.user_id);
  EXPECT_EQ(verified.type, TokenType::kAccess);
  EXPECT_EQ(verified.issued_at_s, claims.issued_at_s);
  EXPECT_EQ(verified.expires_at_s, claims.expires_at_s);
  EXPECT_EQ(verified.jti, claims.jti);
  EXPECT_EQ(verified.session_generation, 0u);
  JwtClaims later = claims;
  later.session_generation = 7;
  ASSERT_OK_AND_ASSIGN(verified,
                       VerifyJwt(kSecret, SignJwt(kSecret, later), TokenType::kAccess, kStartS));
  EXPECT_EQ(verified.session_generation, 7u);
}

// The session generation: a token without one (issued before it existed)
// has generation 0; one that is not a non-negative integer is refused.
TEST(JwtTest, SessionGenerationClaim) {
  Json claims = ClaimsJson(Claims());
  claims.erase("gen");
  const Json header = {{"alg", "HS256"}, {"typ", "JWT"}};
  ASSERT_OK_AND_ASSIGN(JwtClaims verified, VerifyJwt(kSecret, ForgeToken(kSecret, header, claims),
                                                     TokenType::kAccess, kStartS));
  EXPECT_EQ(verified.session_generation, 0u);
  for (const Json& bad : {Json(-1), Json("3"), Json(1.5), Json(nullptr), Json::array()}) {
    claims["gen"] = bad;
    absl::StatusOr<JwtClaims> refused =
        VerifyJwt(kSecret, ForgeToken(kSecret, header, claims), TokenType::kAccess, kStartS);
    EXPECT_EQ(refused.status().message(), "token has no valid gen claim") << bad.dump();
  }
}

TEST(JwtTest, MatchesIndependentHs256) {
  // jwt.io's HS256 example: a signature made by another implementation passes
  // (the first complaint is about the claims, which come after the signature).
  const std::string example =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
      "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
      "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
  absl::StatusOr<JwtClaims> result =
      VerifyJwt("your-256-bit-secret", example, TokenType::kAccess, kStartS);
  EXPECT_EQ(result.status().message(), "token has no valid typ claim");
  EXPECT_EQ(
      VerifyJwt("your-256-bit-secreT", example, TokenType::kAccess, kStartS).status().message(),
      "invalid token signature");
  // And ours is the same computation: HMAC-SHA-256 over "header.payload".
  const JwtClaims claims = Claims();
  EXPECT_EQ(SignJwt(kSecret, claims),
            ForgeToken(kSecret, Json{{"alg", "HS256"}, {"typ", "JWT"}}, ClaimsJson(claims)));
}

TEST(JwtTest, TamperedTokensAreRefused) {
  const std::string token = SignJwt(kSecret, Claims());
  // One character of the signature changed.
  std::string bad_signature = token;
  char& last = bad_signature[bad_signature.size() - 2];
  last = last == 'A' ? 'B' : 'A';
  absl::StatusOr<JwtClaims> result = VerifyJwt(kSecret, bad_signature, TokenType::kAccess, kStartS);
  EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(result.status().message(), "invalid token signature");

  // Claims changed (a different user) under the old signature.
  JwtClaims other = Claims();
  other.user_id = 1;
  const std::string other_token = SignJwt(kSecret, other);
  const std::string spliced =
      absl::StrCat(token.substr(0, token.find('.')), ".",
                   other_token.substr(other_token.find('.') + 1,
                                      other_token.rfind('.') - other_token.find('.') - 1),
                   token.substr(token.rfind('.')));
  result = VerifyJwt(kSecret, spliced, TokenType::kAccess, kStartS);
  EXPECT_EQ(result.status().message(), "invalid token signature");

  // Signed with another secret.
  result = VerifyJwt("another secret", token, TokenType::kAccess, kStartS);
  EXPECT_EQ(result.status().message(), "invalid token signature");
}

TEST(JwtTest, OtherAlgorithmsAreRefused) {
  const Json claims = ClaimsJson(Claims());
  for (const char* alg : {"none", "HS512", "RS256", "hs256"}) {
    SCOPED_TRACE(alg);
    // Correctly MACed, so only the alg check can refuse it.
    const std::string token = ForgeToken(kSecret, Json{{"alg", alg}, {"typ", "JWT"}}, claims);
    absl::StatusOr<JwtClaims> result = VerifyJwt(kSecret, token, TokenType::kAccess, kStartS);
    EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
    EXPECT_TRUE(absl::StrContains(result.status().message(), "unsupported token algorithm"))
        << result.status();
  }
  // The classic: alg none with an empty signature.
  const std::string unsigned_token = absl::StrCat(Base64UrlEncode(Json{{"alg", "none"}}.dump()),
                                                  ".", Base64UrlEncode(claims.dump()), ".");
  EXPECT_STATUS_CODE(VerifyJwt(kSecret, unsigned_token, TokenType::kAccess, kStartS),
                     absl::StatusCode::kUnauthenticated);
  // No alg at all.
  EXPECT_STATUS_CODE(VerifyJwt(kSecret, ForgeToken(kSecret, Json{{"typ", "JWT"}}, claims),
                               TokenType::kAccess, kStartS),
                     absl::StatusCode::kUnauthenticated);
}

TEST(JwtTest, ExpiresAtExp) {
  const JwtClaims claims = Claims();
  const std::string token = SignJwt(kSecret, claims);
  EXPECT_OK(VerifyJwt(kSecret, token, TokenType::kAccess, claims.expires_at_s - 1));
  absl::StatusOr<JwtClaims> result =
      VerifyJwt(kSecret, token, TokenType::kAccess, claims.expires_at_s);
  EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(result.status().message(), "token expired");
}

TEST(JwtTest, TypeMustMatch) {
  const std::string refresh = SignJwt(kSecret, Claims(TokenType::kRefresh));
  EXPECT_OK(VerifyJwt(kSecret, refresh, TokenType::kRefresh, kStartS));
  absl::StatusOr<JwtClaims> result = VerifyJwt(kSecret, refresh, TokenType::kAccess, kStartS);
  EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(result.status().message(), "wrong token type")) << result.status();
}

TEST(JwtTest, MalformedTokensAreRefused) {
  const Json header = {{"alg", "HS256"}, {"typ", "JWT"}};
  Json no_sub = ClaimsJson(Claims());
  no_sub.erase("sub");
  Json numeric_sub = ClaimsJson(Claims());
  numeric_sub["sub"] = 42;
  Json float_exp = ClaimsJson(Claims());
  float_exp["exp"] = 1.5e12;
  Json no_jti = ClaimsJson(Claims());
  no_jti.erase("jti");
  Json long_jti = ClaimsJson(Claims());
  long_jti["jti"] = std::string(kMaxJwtIdBytes + 1, 'j');
  Json bad_typ = ClaimsJson(Claims());
  bad_typ["typ"] = "admin";
  const std::vector<std::string> tokens = {
      "",
      "abc",
      "a.b",
      "a.b.c.d",
      "!!!.???.***",
      std::string(kMaxJwtBytes + 1, 'a'),
      ForgeToken(kSecret, header, no_sub),
      ForgeToken(kSecret, header, numeric_sub),
      ForgeToken(kSecret, header, float_exp),
      ForgeToken(kSecret, header, no_jti),
      ForgeToken(kSecret, header, long_jti),
      ForgeToken(kSecret, header, bad_typ),
      ForgeToken(kSecret, header, Json::array({1, 2})),
      ForgeToken(kSecret, Json::array(), ClaimsJson(Claims())),
  };
  for (const std::string& token : tokens) {
    SCOPED_TRACE(token.substr(0, 80));
    EXPECT_STATUS_CODE(VerifyJwt(kSecret, token, TokenType::kAccess, kStartS),
                       absl::StatusCode::kUnauthenticated);
  }
}

TEST(Base64UrlTest, RoundTripAndStrictness) {
  for (size_t length = 0; length < 40; ++length) {
    std::string bytes;
    for (size_t i = 0; i < length; ++i) bytes.push_back(static_cast<char>(i * 37 + 250));
    const std::string text = Base64UrlEncode(bytes);
    EXPECT_EQ(text.find_first_of("+/="), std::string::npos) << text;
    EXPECT_EQ(Base64UrlDecode(text), bytes);
  }
  EXPECT_EQ(Base64UrlDecode("_-8"), std::string("\xff\xef", 2));
  EXPECT_EQ(Base64UrlDecode("AA"), std::string(1, '\0'));
  EXPECT_FALSE(Base64UrlDecode("AA==").has_value());  // padding
  EXPECT_FALSE(Base64UrlDecode("a+b/").has_value());  // the other alphabet
  EXPECT_FALSE(Base64UrlDecode("ab c").has_value());
  EXPECT_FALSE(Base64UrlDecode("A").has_value());   // not a whole byte
  EXPECT_FALSE(Base64UrlDecode("AB").has_value());  // non-zero trailing bits
}

// ---- Status mapping ----------------------------------------------------------------

TEST(StatusHttpTest, Mapping) {
  EXPECT_EQ(http::HttpStatusOf(absl::OkStatus()), 200);
  EXPECT_EQ(http::HttpStatusOf(absl::InvalidArgumentError("")), 400);
  EXPECT_EQ(http::HttpStatusOf(absl::UnauthenticatedError("")), 401);
  EXPECT_EQ(http::HttpStatusOf(absl::PermissionDeniedError("")), 403);
  EXPECT_EQ(http::HttpStatusOf(absl::NotFoundError("")), 404);
  EXPECT_EQ(http::HttpStatusOf(absl::AlreadyExistsError("")), 409);
  EXPECT_EQ(http::HttpStatusOf(absl::ResourceExhaustedError("")), 429);
  EXPECT_EQ(http::HttpStatusOf(absl::UnavailableError("")), 503);
  EXPECT_EQ(http::HttpStatusOf(absl::InternalError("")), 500);
  EXPECT_EQ(http::HttpStatusOf(absl::DataLossError("")), 500);
}

// ---- Rate limiter ------------------------------------------------------------------

TEST(RateLimiterTest, BurstThenRefill) {
  RateLimiter limiter({/*requests_per_minute=*/60, /*burst=*/3, /*max_tracked_users=*/100});
  int64_t retry_after_ms = -1;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limiter.Allow(7, kStartMs, &retry_after_ms)) << i;
    EXPECT_EQ(retry_after_ms, 0);
  }
  // One token a second: the fourth request must wait a whole second.
  EXPECT_FALSE(limiter.Allow(7, kStartMs, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 1000);
  EXPECT_FALSE(limiter.Allow(7, kStartMs + 999, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 1);
  EXPECT_TRUE(limiter.Allow(7, kStartMs + 1000, &retry_after_ms));
  EXPECT_FALSE(limiter.Allow(7, kStartMs + 1000, &retry_after_ms));
  // Another user has a bucket of their own.
  EXPECT_TRUE(limiter.Allow(8, kStartMs + 1000, &retry_after_ms));
  // A long idle time refills only up to the burst.
  const int64_t later = kStartMs + 3'600'000;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Allow(7, later, nullptr)) << i;
  EXPECT_FALSE(limiter.Allow(7, later, nullptr));
}

TEST(RateLimiterTest, ClockSteppingBackDoesNotRefill) {
  RateLimiter limiter({/*requests_per_minute=*/60, /*burst=*/1, /*max_tracked_users=*/100});
  EXPECT_TRUE(limiter.Allow(1, kStartMs + 5000, nullptr));
  EXPECT_FALSE(limiter.Allow(1, kStartMs, nullptr));
  EXPECT_FALSE(limiter.Allow(1, kStartMs + 5000, nullptr));
  EXPECT_TRUE(limiter.Allow(1, kStartMs + 6000, nullptr));
}

TEST(RateLimiterTest, DisabledAllowsEverything) {
  RateLimiter limiter({/*requests_per_minute=*/0, /*burst=*/1, /*max_tracked_users=*/100});
  int64_t retry_after_ms = -1;
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(limiter.Allow(1, kStartMs, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 0);
  EXPECT_EQ(limiter.TrackedUsers(), 0u);
}

TEST(RateLimiterTest, ReconfigureChangesRatesAndKeepsTokens) {
  // Off at first (logkvd --rate-limit=0), turned on by a reload.
  RateLimiter limiter({/*requests_per_minute=*/0, /*burst=*/1, /*max_tracked_users=*/100});
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(limiter.Allow(1, kStartMs, nullptr));
  limiter.Reconfigure(/*requests_per_minute=*/60, /*burst=*/3);
  EXPECT_EQ(limiter.requests_per_minute(), 60);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Allow(1, kStartMs, nullptr)) << i;
  int64_t retry_after_ms = 0;
  EXPECT_FALSE(limiter.Allow(1, kStartMs, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 1000);
  // A smaller burst cuts full buckets down to it.
  EXPECT_TRUE(limiter.Allow(2, kStartMs, nullptr));  // user 2 now holds 2 tokens
  limiter.Reconfigure(/*requests_per_minute=*/60, /*burst=*/1);
  EXPECT_TRUE(limiter.Allow(2, kStartMs, nullptr));
  EXPECT_FALSE(limiter.Allow(2, kStartMs, nullptr));
  // A faster rate refills faster: 600 a minute is one token in 100 ms.
  limiter.Reconfigure(/*requests_per_minute=*/600, /*burst=*/1);
  EXPECT_FALSE(limiter.Allow(2, kStartMs + 99, nullptr));
  EXPECT_TRUE(limiter.Allow(2, kStartMs + 200, nullptr));
  // Off again: everything passes.
  limiter.Reconfigure(/*requests_per_minute=*/0, /*burst=*/1);
  EXPECT_EQ(limiter.requests_per_minute(), 0);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(limiter.Allow(2, kStartMs + 200, nullptr));
}

TEST(RateLimiterTest, MemoryIsBounded) {
  constexpr size_t kMax = 64;
  RateLimiter limiter({/*requests_per_minute=*/60, /*burst=*/2, /*max_tracked_users=*/kMax});
  for (uint64_t user = 1; user <= 10'000; ++user) {
    // All at one instant: no bucket has refilled, so eviction must fall back
    // to the idlest buckets.
    ASSERT_TRUE(limiter.Allow(user, kStartMs, nullptr));
    ASSERT_LE(limiter.TrackedUsers(), kMax);
  }
}

TEST(RateLimiterTest, EvictsFullBucketsFirst) {
  constexpr size_t kMax = 8;
  RateLimiter limiter({/*requests_per_minute=*/60, /*burst=*/1, /*max_tracked_users=*/kMax});
  // User 1 is drained at a late time; users 2..8 were drained long before and
  // have refilled by then, so they are the ones evicted.
  for (uint64_t user = 2; user <= kMax; ++user) ASSERT_TRUE(limiter.Allow(user, kStartMs, nullptr));
  ASSERT_TRUE(limiter.Allow(1, kStartMs + 60'000, nullptr));
  ASSERT_EQ(limiter.TrackedUsers(), kMax);
  ASSERT_TRUE(limiter.Allow(100, kStartMs + 60'000, nullptr));  // triggers eviction
  EXPECT_EQ(limiter.TrackedUsers(), 2u);
  // User 1's empty bucket survived: still limited.
  EXPECT_FALSE(limiter.Allow(1, kStartMs + 60'000, nullptr));
}

// ---- Login throttle ----------------------------------------------------------------

TEST(LoginThrottleTest, FreeFailuresThenDoublingDelays) {
  LoginThrottleConfig config;
  config.free_failures_per_account = 3;
  config.free_failures_per_address = 100;
  config.first_delay_ms = 1000;
  config.max_delay_ms = 4000;
  LoginThrottle throttle(config);
  int64_t retry_after_ms = -1;
  int64_t now = kStartMs;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(throttle.Allow("User@Example.com", "10.0.0.1", now, &retry_after_ms)) << i;
    EXPECT_EQ(retry_after_ms, 0);
    throttle.RecordFailure("user@example.com", "10.0.0.1", now);
  }
  // Three free failures; the fourth attempt is heard, the fifth waits 1 s.
  EXPECT_TRUE(throttle.Allow("user@example.com", "10.0.0.2", now, nullptr));
  throttle.RecordFailure("user@example.com", "10.0.0.2", now);
  EXPECT_FALSE(throttle.Allow("USER@example.com", "10.0.0.3", now, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 1000);
  now += 1000;
  EXPECT_TRUE(throttle.Allow("user@example.com", "10.0.0.3", now, nullptr));
  throttle.RecordFailure("user@example.com", "10.0.0.3", now);
  EXPECT_FALSE(throttle.Allow("user@example.com", "10.0.0.3", now + 1999, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 1);
  // Doubling stops at the cap.
  for (int i = 0; i < 10; ++i) throttle.RecordFailure("user@example.com", "", now);
  EXPECT_FALSE(throttle.Allow("user@example.com", "", now, &retry_after_ms));
  EXPECT_EQ(retry_after_ms, 4000);
  // Other accounts are not held back by this one.
  EXPECT_TRUE(throttle.Allow("other@example.com", "10.0.0.9", now, nullptr));
  // A success forgets the account's failures.
  throttle.RecordSuccess("user@example.com");
  EXPECT_TRUE(throttle.Allow("user@example.com", "", now, nullptr));
}

TEST(LoginThrottleTest, AddressesAreCountedAcrossAccounts) {
  LoginThrottleConfig config;
  config.free_failures_per_account = 100;
  config.free_failures_per_address = 5;
  config.forget_after_ms = 60'000;
  LoginThrottle throttle(config);
  int64_t now = kStartMs;
  for (int i = 0; i < 6; ++i) {
    const std::string account = absl::StrCat("guess", i, "@example.com");
    ASSERT_TRUE(throttle.Allow(account, "10.0.0.1", now, nullptr)) << i;
    throttle.RecordFailure(account, "10.0.0.1", now);
  }
  int64_t retry_after_ms = 0;
  EXPECT_FALSE(throttle.Allow("new@example.com", "10.0.0.1", now, &retry_after_ms));
  EXPECT_GT(retry_after_ms, 0);
  // Another address is not, and a success does not reset the address.
  EXPECT_TRUE(throttle.Allow("new@example.com", "10.0.0.2", now, nullptr));
  throttle.RecordSuccess("guess5@example.com");
  EXPECT_FALSE(throttle.Allow("new@example.com", "10.0.0.1", now, nullptr));
  // After a quiet period everything is forgotten.
  now += 60'000;
  EXPECT_TRUE(throttle.Allow("new@example.com", "10.0.0.1", now, nullptr));
}

TEST(LoginThrottleTest, MemoryIsBounded) {
  LoginThrottleConfig config;
  config.max_tracked = 64;
  LoginThrottle throttle(config);
  for (int i = 0; i < 10'000; ++i) {
    throttle.RecordFailure(absl::StrCat("a", i), absl::StrCat("10.0.", i / 256, ".", i % 256),
                           kStartMs + i);
    ASSERT_LE(throttle.Tracked(), 64u);
  }
}

// ---- Worker pool -------------------------------------------------------------------

TEST(WorkerPoolTest, RunsTasksAndRefusesWhenFull) {
  absl::Notification release;
  absl::Notification started;
  std::atomic<int> ran{0};
  {
    WorkerPool pool(/*thread_count=*/1, /*max_queued_tasks=*/2);
    ASSERT_TRUE(pool.Submit([&] {
      started.Notify();
      release.WaitForNotification();
      ++ran;
    }));
    started.WaitForNotification();  // the only thread is now busy
    ASSERT_TRUE(pool.Submit([&] { ++ran; }));
    ASSERT_TRUE(pool.Submit([&] { ++ran; }));
    EXPECT_EQ(pool.QueuedTasks(), 2u);
    EXPECT_FALSE(pool.Submit([&] { ran += 100; }));
    release.Notify();
    // The destructor runs what was accepted before joining.
  }
  EXPECT_EQ(ran.load(), 3);
}

TEST(WorkerPoolTest, ManyTasksOnManyThreads) {
  std::atomic<int> ran{0};
  int accepted = 0;
  {
    WorkerPool pool(/*thread_count=*/3, /*max_queued_tasks=*/10'000);
    for (int i = 0; i < 1000; ++i) accepted += pool.Submit([&] { ++ran; }) ? 1 : 0;
  }
  EXPECT_EQ(accepted, 1000);
  EXPECT_EQ(ran.load(), 1000);
}

// ---- AuthStore ---------------------------------------------------------------------

class AuthStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = std::make_unique<control::ControlState>();
    ASSERT_OK(OpenEngine());
    ASSERT_OK(OpenStore());
  }

  void TearDown() override {
    store_.reset();
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  absl::Status OpenEngine() {
    absl::StatusOr<std::unique_ptr<engine::Engine>> engine =
        engine::Engine::Open(test::TestOptions(dir_.Subdir("db"), &clock_));
    if (!engine.ok()) return engine.status();
    engine_ = std::move(engine).value();
    return absl::OkStatus();
  }

  AuthConfig Config() {
    AuthConfig config;
    config.jwt_secret = jwt_secret_;
    config.password_limits = PasswordHashLimits::Minimum();
    config.clock = &clock_;
    config.log = [this](absl::string_view line) {
      absl::MutexLock lock(&log_mu_);
      log_.emplace_back(line);
    };
    config.on_revoked = on_revoked_;
    // The cluster's state machine, applied at once (one node leading itself).
    config.accounts = &state_->accounts();
    config.restored_state_file = restored_state_file_;
    config.restored_starts_cluster = restored_starts_cluster_;
    config.propose = [this](std::string command) {
      proposals_.fetch_add(1);
      return state_->Apply(command);
    };
    return config;
  }

  // The control plane's state now, as a backup's
  // control/configuration-at-backup holds it; its path.
  std::string WriteBackupState() {
    std::filesystem::create_directories(dir_.Subdir("restored"));
    const std::string path = dir_.Subdir("restored") + "/configuration-at-backup";
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << state_->Snapshot();
    return path;
  }

  absl::Status OpenStore() {
    store_ = std::make_unique<AuthStore>(engine_.get(), Config());
    // Administrators, groups and ACLs, as the node gives them (without
    // them, as a node of an older version did).
    if (use_access_) store_->UseAccess(&state_->access());
    return store_->Load();
  }

  // Closes the store and the engine cleanly and opens both again; the
  // accounts come back from a snapshot of the control plane's state.
  absl::Status Restart() {
    store_.reset();
    const std::string snapshot = state_->Snapshot();
    state_ = std::make_unique<control::ControlState>();
    if (absl::Status status = state_->Restore(snapshot); !status.ok()) return status;
    if (absl::Status status = engine_->Close(); !status.ok()) return status;
    engine_.reset();
    if (absl::Status status = OpenEngine(); !status.ok()) return status;
    return OpenStore();
  }

  // Every record of the reserved namespace.
  std::vector<engine::ScanItem> AuthRecords() {
    engine::ScanOptions options;
    options.prefix = std::string(kAuthPrefix);
    absl::StatusOr<std::vector<engine::ScanItem>> items = test::ScanAll(engine_.get(), options);
    EXPECT_OK(items);
    return items.ok() ? *items : std::vector<engine::ScanItem>{};
  }

  User MustSignUp(absl::string_view email, absl::string_view username) {
    absl::StatusOr<User> user = store_->SignUp(email, username, "password123");
    EXPECT_OK(user);
    return user.ok() ? *user : User{};
  }

  CreatedApiKey MustCreateKey(uint64_t user_id, std::vector<std::string> scopes = {"read", "write"},
                              int64_t expires_in_days = 0) {
    absl::StatusOr<CreatedApiKey> created =
        store_->CreateApiKey(user_id, "key", scopes, expires_in_days);
    EXPECT_OK(created);
    return created.ok() ? *created : CreatedApiKey{};
  }

  // How many lines the store logged that contain every one of `parts`; the
  // log, for a failure's message.
  int LogLines(std::initializer_list<absl::string_view> parts, std::string* log = nullptr) {
    absl::MutexLock lock(&log_mu_);
    if (log != nullptr) *log = absl::StrJoin(log_, "\n");
    return static_cast<int>(std::count_if(log_.begin(), log_.end(), [&](const std::string& line) {
      return std::all_of(parts.begin(), parts.end(),
                         [&](absl::string_view part) { return absl::StrContains(line, part); });
    }));
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  std::string jwt_secret_;  // empty: generated and persisted
  std::function<void()> on_revoked_;
  absl::Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
  std::atomic<int> proposals_{0};
  std::string restored_state_file_;
  bool use_access_ = true;  // OpenStore gives the store the access table
  bool restored_starts_cluster_ = true;  // no --seeds
  std::unique_ptr<control::ControlState> state_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<AuthStore> store_;  // declared last: destroyed before the engine
};

TEST_F(AuthStoreTest, SignUpValidation) {
  struct Case {
    std::string email, username, password, message;
  };
  const std::vector<Case> cases = {
      {"", "u", "password123", "email is required"},
      {"no-at.example.com", "u", "password123", "exactly one '@'"},
      {"two@@example.com", "u", "password123", "exactly one '@'"},
      {"a@b@example.com", "u", "password123", "exactly one '@'"},
      {"@example.com", "u", "password123", "nothing before '@'"},
      {"user@", "u", "password123", "needs a dot"},
      {"user@localhost", "u", "password123", "needs a dot"},
      {"user@.com", "u", "password123", "needs a dot"},
      {"user@example.", "u", "password123", "needs a dot"},
      {"us er@example.com", "u", "password123", "invalid characters"},
      {"user\n@example.com", "u", "password123", "invalid characters"},
      {"user\xff@example.com", "u", "password123", "invalid characters"},
      {std::string(250, 'a') + "@b.co", "u", "password123", "at most 254"},
      {"user@example.com", "", "password123", "username is required"},
      {"user@example.com", std::string(65, 'u'), "password123", "longer than 64"},
      {"user@example.com", "bad\tname", "password123", "invalid characters"},
      {"user@example.com", "u", "", "at least 8"},
      {"user@example.com", "u", "1234567", "at least 8"},
      {"user@example.com", "u", std::string(1025, 'p'), "longer than 1024"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::CHexEscape(c.email) + " / " + c.username + " / " + c.password);
    absl::StatusOr<User> user = store_->SignUp(c.email, c.username, c.password);
    ASSERT_STATUS_CODE(user, absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(user.status().message(), c.message)) << user.status();
  }
  EXPECT_EQ(store_->UserCount(), 0u);
  // Limits are inclusive, and characters are code points, not bytes.
  EXPECT_OK(store_->SignUp(std::string(248, 'a') + "@b.co", std::string(64, 'u'), "12345678"));
  EXPECT_OK(store_->SignUp("jose@example.com", "jos\xc3\xa9",
                           "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                           "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"));
  EXPECT_STATUS_CODE(store_->SignUp("ana@example.com", "ana", "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"),
                     absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthStoreTest, SignUpAssignsIdsAndRefusesDuplicates) {
  clock_.SetUnixMs(kStartMs + 123);
  ASSERT_OK_AND_ASSIGN(User first, store_->SignUp("User@Example.com", "alice", "password123"));
  EXPECT_EQ(first.id, 1u);
  EXPECT_EQ(first.email, "User@Example.com");
  EXPECT_EQ(first.username, "alice");
  EXPECT_TRUE(first.is_active);
  EXPECT_EQ(first.created_at_ms, kStartMs + 123);

  absl::StatusOr<User> same_email = store_->SignUp("user@EXAMPLE.com", "bob", "password123");
  EXPECT_STATUS_CODE(same_email, absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(same_email.status().message(), "email is already registered");
  absl::StatusOr<User> same_name = store_->SignUp("bob@example.com", "alice", "password123");
  EXPECT_STATUS_CODE(same_name, absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(same_name.status().message(), "username is already taken");

  // Refused sign-ups use no id.
  EXPECT_EQ(MustSignUp("bob@example.com", "bob").id, 2u);
  EXPECT_EQ(MustSignUp("carol@example.com", "carol").id, 3u);
  EXPECT_EQ(store_->UserCount(), 3u);
}

// Emails and usernames are one name whatever their case, in any script,
// and whatever compatibility form they take (NFKC_Casefold).
TEST_F(AuthStoreTest, NamesAreUniqueAfterNfkcCasefold) {
  ASSERT_OK(store_->SignUp("\xc3\xa9lise@example.com", "\xc3\x89lise", "password123"));  // élise, Élise
  struct Case {
    std::string email, username, message;
  };
  const std::vector<Case> cases = {
      // ÉLISE@example.com: the email in capitals, non-ASCII letter included.
      {"\xc3\x89LISE@example.com", "other1", "email is already registered"},
      // e + combining acute: the same email once composed.
      {"e\xcc\x81lise@example.com", "other2", "email is already registered"},
      // élise and ÉLISE as usernames.
      {"other4@example.com", "\xc3\xa9lise", "username is already taken"},
      {"other5@example.com", "\xc3\x89LISE", "username is already taken"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::CHexEscape(c.email) + " / " + absl::CHexEscape(c.username));
    absl::StatusOr<User> user = store_->SignUp(c.email, c.username, "password123");
    EXPECT_STATUS_CODE(user, absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(user.status().message(), c.message);
  }
  // Fullwidth ｂｏｂ is bob once NFKC makes it ASCII.
  ASSERT_OK(store_->SignUp("bob@example.com", "bob", "password123"));
  EXPECT_STATUS_CODE(
      store_->SignUp("\xef\xbd\x82\xef\xbd\x8f\xef\xbd\x82@example.com", "bob2", "password123"),
      absl::StatusCode::kAlreadyExists);
  EXPECT_STATUS_CODE(
      store_->SignUp("bob3@example.com", "\xef\xbc\xa2\xef\xbd\x8f\xef\xbd\x82", "password123"),
      absl::StatusCode::kAlreadyExists);
  // ß folds to ss: STRASSE and straße are one name.
  ASSERT_OK(store_->SignUp("stra\xc3\x9f" "e@example.com", "strasse", "password123"));
  EXPECT_STATUS_CODE(store_->SignUp("STRASSE@example.com", "x", "password123"),
                     absl::StatusCode::kAlreadyExists);
  // Sign-in takes any of the email's forms; the account keeps the form it was given.
  ASSERT_OK_AND_ASSIGN(Tokens tokens, store_->Login("\xc3\x89LISE@EXAMPLE.COM", "password123"));
  EXPECT_EQ(tokens.user.email, "\xc3\xa9lise@example.com");
  // The index is rebuilt the same way after a restart.
  ASSERT_OK(Restart());
  EXPECT_STATUS_CODE(store_->SignUp("\xc3\x89LISE@example.com", "other6", "password123"),
                     absl::StatusCode::kAlreadyExists);
  EXPECT_OK(store_->Login("e\xcc\x81lise@example.com", "password123"));
  EXPECT_EQ(store_->UserCount(), 3u);
}

TEST_F(AuthStoreTest, InvisibleAndControlCharactersAreRefused) {
  struct Case {
    std::string email, username, password, message;
  };
  const std::vector<Case> cases = {
      {"zw@example.com", "ali\xe2\x80\x8b" "ce", "password123", "username contains invalid"},  // U+200B
      {"zj@example.com", "ali\xe2\x80\x8d" "ce", "password123", "username contains invalid"},  // U+200D
      {"ro@example.com", "\xe2\x80\xae" "ecila", "password123", "username contains invalid"},  // U+202E
      {"ri@example.com", "\xe2\x81\xa6" "alice", "password123", "username contains invalid"},  // U+2066
      {"bom@example.com", "\xef\xbb\xbf" "alice", "password123", "username contains invalid"},  // U+FEFF
      {"c1@example.com", "ali\xc2\x85" "ce", "password123", "username contains invalid"},  // U+0085
      {"ali\xe2\x80\x8b" "ce@example.com", "alice", "password123", "email contains invalid"},
      {"alice@exa\xe2\x80\xaemple.com", "alice", "password123", "email contains invalid"},
      {"nul@example.com", "nul", std::string(8, '\0'), "without control characters"},
      {"nul2@example.com", "nul2", std::string("pass\0word123", 12), "without control characters"},
      {"tab@example.com", "tab", "pass\tword123", "without control characters"},
      {"del@example.com", "del", "password\x7f", "without control characters"},
      {"bad@example.com", "bad", "password\xff\xfe", "without control characters"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::CHexEscape(c.email) + " / " + absl::CHexEscape(c.username) + " / " +
                 absl::CHexEscape(c.password));
    absl::StatusOr<User> user = store_->SignUp(c.email, c.username, c.password);
    ASSERT_STATUS_CODE(user, absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(user.status().message(), c.message)) << user.status();
  }
  EXPECT_EQ(store_->UserCount(), 0u);
  // Visible non-ASCII stays welcome, in names and passwords.
  EXPECT_OK(store_->SignUp("\xe5\xb1\xb1\xe7\x94\xb0@example.jp", "\xe5\xb1\xb1\xe7\x94\xb0",
                           "p\xc3\xa4ssw\xc3\xb6rd!"));
}

TEST_F(AuthStoreTest, ConcurrentSignUpsOfOneEmailMakeOneUser) {
  constexpr int kThreads = 8;
  std::atomic<int> created{0};
  std::atomic<int> conflicts{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<User> user =
          store_->SignUp("same@example.com", absl::StrCat("user", i), "password123");
      if (user.ok()) ++created;
      if (absl::IsAlreadyExists(user.status())) ++conflicts;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(created.load(), 1);
  EXPECT_EQ(conflicts.load(), kThreads - 1);
  EXPECT_EQ(store_->UserCount(), 1u);
}

TEST_F(AuthStoreTest, LoginIssuesTokensForTheRightPassword) {
  const User user = MustSignUp("user@example.com", "user");
  ASSERT_OK_AND_ASSIGN(Tokens tokens, store_->Login("USER@example.com", "password123"));
  EXPECT_EQ(tokens.expires_in_seconds, 3600);
  EXPECT_EQ(tokens.user.id, user.id);
  EXPECT_NE(tokens.access_token, tokens.refresh_token);

  ASSERT_OK_AND_ASSIGN(User bearer, store_->AuthenticateBearer("Bearer " + tokens.access_token));
  EXPECT_EQ(bearer.id, user.id);
  EXPECT_EQ(bearer.email, "user@example.com");
  EXPECT_OK(store_->AuthenticateBearer("bearer  " + tokens.access_token + " "));

  // Unknown email and wrong password look the same.
  absl::StatusOr<Tokens> wrong = store_->Login("user@example.com", "password124");
  absl::StatusOr<Tokens> unknown = store_->Login("nobody@example.com", "password123");
  EXPECT_STATUS_CODE(wrong, absl::StatusCode::kUnauthenticated);
  EXPECT_STATUS_CODE(unknown, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong.status().message(), unknown.status().message());
  EXPECT_EQ(wrong.status().message(), "invalid email or password");
  EXPECT_STATUS_CODE(store_->Login(std::string(300, 'a'), "password123"),
                     absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthStoreTest, BearerNeedsAValidAccessToken) {
  MustSignUp("user@example.com", "user");
  ASSERT_OK_AND_ASSIGN(Tokens tokens, store_->Login("user@example.com", "password123"));
  for (const std::string& header :
       {std::string(""), std::string("Bearer"), std::string("Bearer "),
        std::string("Basic dXNlcjpwYXNz"), tokens.access_token, "Bearer " + tokens.refresh_token,
        "Bearer " + tokens.access_token + "x"}) {
    SCOPED_TRACE(header);
    EXPECT_STATUS_CODE(store_->AuthenticateBearer(header), absl::StatusCode::kUnauthenticated);
  }
  // Access tokens live access_token_ttl_s.
  clock_.AdvanceMs(3600 * 1000 - 1000);
  EXPECT_OK(store_->AuthenticateBearer("Bearer " + tokens.access_token));
  clock_.AdvanceMs(1000);
  absl::StatusOr<User> expired = store_->AuthenticateBearer("Bearer " + tokens.access_token);
  EXPECT_STATUS_CODE(expired, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(expired.status().message(), "token expired");
}

TEST_F(AuthStoreTest, RefreshRotatesTokens) {
  const User user = MustSignUp("user@example.com", "user");
  ASSERT_OK_AND_ASSIGN(Tokens first, store_->Login("user@example.com", "password123"));
  clock_.AdvanceMs(10'000);
  ASSERT_OK_AND_ASSIGN(Tokens second, store_->Refresh(first.refresh_token));
  EXPECT_EQ(second.user.id, user.id);
  EXPECT_NE(second.refresh_token, first.refresh_token);
  EXPECT_OK(store_->AuthenticateBearer("Bearer " + second.access_token));

  // Each refresh token works once.
  absl::StatusOr<Tokens> reused = store_->Refresh(first.refresh_token);
  EXPECT_STATUS_CODE(reused, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(reused.status().message(), "refresh token already used or revoked");
  ASSERT_OK_AND_ASSIGN(Tokens third, store_->Refresh(second.refresh_token));
  // An access token is not a refresh token.
  EXPECT_STATUS_CODE(store_->Refresh(third.access_token), absl::StatusCode::kUnauthenticated);
  EXPECT_STATUS_CODE(store_->Refresh("garbage"), absl::StatusCode::kUnauthenticated);

  // Refresh tokens expire after refresh_token_ttl_s.
  clock_.AdvanceMs(7ll * 24 * 3600 * 1000);
  absl::StatusOr<Tokens> expired = store_->Refresh(third.refresh_token);
  EXPECT_EQ(expired.status().message(), "token expired");
}

TEST_F(AuthStoreTest, TokensAndRevocationsSurviveRestart) {
  MustSignUp("user@example.com", "user");
  ASSERT_OK_AND_ASSIGN(Tokens first, store_->Login("user@example.com", "password123"));
  ASSERT_OK_AND_ASSIGN(Tokens second, store_->Refresh(first.refresh_token));
  ASSERT_OK(Restart());
  // The generated secret was persisted: old tokens still verify.
  EXPECT_OK(store_->AuthenticateBearer("Bearer " + second.access_token));
  EXPECT_STATUS_CODE(store_->Refresh(first.refresh_token), absl::StatusCode::kUnauthenticated);
  EXPECT_OK(store_->Refresh(second.refresh_token));
  EXPECT_EQ(LogLines({"generated one"}), 1);
}

TEST_F(AuthStoreTest, ConfiguredSecretSignsTokens) {
  jwt_secret_ = "short";
  ASSERT_OK(Restart());
  {
    absl::MutexLock lock(&log_mu_);
    ASSERT_FALSE(log_.empty());
    EXPECT_TRUE(absl::StrContains(log_.back(), "5 bytes")) << log_.back();
  }
  const User user = MustSignUp("user@example.com", "user");
  ASSERT_OK_AND_ASSIGN(Tokens tokens, store_->Login("user@example.com", "password123"));
  ASSERT_OK_AND_ASSIGN(JwtClaims claims,
                       VerifyJwt("short", tokens.access_token, TokenType::kAccess, kStartS));
  EXPECT_EQ(claims.user_id, user.id);
  // Another secret on restart: every token becomes invalid.
  jwt_secret_ = "another secret";
  ASSERT_OK(Restart());
  EXPECT_STATUS_CODE(store_->AuthenticateBearer("Bearer " + tokens.access_token),
                     absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthStoreTest, ApiKeyCreateAndAuthenticate) {
  const User user = MustSignUp("user@example.com", "user");
  clock_.SetUnixMs(kStartMs + 5000);
  ASSERT_OK_AND_ASSIGN(CreatedApiKey created,
                       store_->CreateApiKey(user.id, "My Application Key", {"write", "read"}, 90));
  EXPECT_EQ(created.key.size(), 45u);
  EXPECT_TRUE(absl::StartsWith(created.key, "ydht_"));
  EXPECT_EQ(created.key.find_first_not_of(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 5),
            std::string::npos);
  EXPECT_EQ(created.info.key_prefix, created.key.substr(0, 8));
  EXPECT_EQ(created.info.id, 1u);
  EXPECT_EQ(created.info.name, "My Application Key");
  EXPECT_EQ(created.info.scopes, (std::vector<std::string>{"read", "write"}));
  EXPECT_TRUE(created.info.is_active);
  EXPECT_EQ(created.info.created_at_ms, kStartMs + 5000);
  EXPECT_EQ(created.info.expires_at_ms, kStartMs + 5000 + 90ll * 24 * 3600 * 1000);

  ASSERT_OK_AND_ASSIGN(Principal principal, store_->AuthenticateApiKey(created.key));
  EXPECT_EQ(principal.user_id, user.id);
  EXPECT_EQ(principal.api_key_id, created.info.id);
  EXPECT_TRUE(principal.can_read);
  EXPECT_TRUE(principal.can_write);

  // Scopes are enforced by the caller from the principal.
  CreatedApiKey read_only = MustCreateKey(user.id, {"read"});
  EXPECT_EQ(read_only.info.id, 2u);
  ASSERT_OK_AND_ASSIGN(principal, store_->AuthenticateApiKey(read_only.key));
  EXPECT_TRUE(principal.can_read);
  EXPECT_FALSE(principal.can_write);
  ASSERT_OK_AND_ASSIGN(principal,
                       store_->AuthenticateApiKey(MustCreateKey(user.id, {"write"}).key));
  EXPECT_FALSE(principal.can_read);
  EXPECT_TRUE(principal.can_write);

  std::string altered = created.key;
  altered[20] = altered[20] == 'a' ? 'b' : 'a';
  for (const std::string& key :
       {altered, std::string(""), std::string("ydht_"), created.key.substr(0, 44),
        created.key + "A", "Bearer " + created.key}) {
    SCOPED_TRACE(key);
    absl::StatusOr<Principal> result = store_->AuthenticateApiKey(key);
    EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(result.status().message(), "invalid API key");
  }
}

TEST_F(AuthStoreTest, ApiKeyValidation) {
  const User user = MustSignUp("user@example.com", "user");
  using Scopes = std::vector<std::string>;
  const std::vector<std::tuple<std::string, Scopes, int64_t>> bad = {
      {"", {"read"}, 0},          {std::string(257, 'n'), {"read"}, 0},
      {"bad\nname", {"read"}, 0}, {"k", {}, 0},
      {"k", {"admin"}, 0},        {"k", {"read", "delete"}, 0},
      {"k", {"READ"}, 0},         {"k", {"read"}, -1},
      {"k", {"read"}, 3651},
  };
  for (const auto& [name, scopes, days] : bad) {
    SCOPED_TRACE(absl::StrCat(name.substr(0, 20), " ", scopes.size(), " ", days));
    EXPECT_STATUS_CODE(store_->CreateApiKey(user.id, name, scopes, days),
                       absl::StatusCode::kInvalidArgument);
  }
  EXPECT_OK(store_->CreateApiKey(user.id, std::string(256, 'n'), {"read", "read"}, 3650));
  EXPECT_STATUS_CODE(store_->CreateApiKey(999, "k", {"read"}, 0), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->ListApiKeys(999).empty());
}

TEST_F(AuthStoreTest, ActiveKeysPerUserAreLimited) {
  const User user = MustSignUp("user@example.com", "user");
  for (size_t i = 0; i < kMaxActiveApiKeysPerUser; ++i) MustCreateKey(user.id);
  EXPECT_STATUS_CODE(store_->CreateApiKey(user.id, "k", {"read"}, 0),
                     absl::StatusCode::kResourceExhausted);
  ASSERT_OK(store_->RevokeApiKey(user.id, 1));
  EXPECT_OK(store_->CreateApiKey(user.id, "k", {"read"}, 0));
}

TEST_F(AuthStoreTest, ApiKeyExpiry) {
  const User user = MustSignUp("user@example.com", "user");
  const CreatedApiKey expiring = MustCreateKey(user.id, {"read"}, /*expires_in_days=*/1);
  const CreatedApiKey forever = MustCreateKey(user.id, {"read"}, /*expires_in_days=*/0);
  EXPECT_EQ(forever.info.expires_at_ms, 0);
  clock_.AdvanceMs(24ll * 3600 * 1000 - 1);
  EXPECT_OK(store_->AuthenticateApiKey(expiring.key));
  clock_.AdvanceMs(1);
  absl::StatusOr<Principal> result = store_->AuthenticateApiKey(expiring.key);
  EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(result.status().message(), "API key expired");
  clock_.AdvanceMs(3650ll * 24 * 3600 * 1000);
  EXPECT_OK(store_->AuthenticateApiKey(forever.key));
}

TEST_F(AuthStoreTest, ApiKeyRevocation) {
  const User alice = MustSignUp("alice@example.com", "alice");
  const User bob = MustSignUp("bob@example.com", "bob");
  const CreatedApiKey key = MustCreateKey(alice.id);
  // Another user's key, or a key that does not exist, is not found.
  EXPECT_STATUS_CODE(store_->RevokeApiKey(bob.id, key.info.id), absl::StatusCode::kNotFound);
  EXPECT_STATUS_CODE(store_->RevokeApiKey(alice.id, 99), absl::StatusCode::kNotFound);
  EXPECT_OK(store_->AuthenticateApiKey(key.key));

  ASSERT_OK(store_->RevokeApiKey(alice.id, key.info.id));
  absl::StatusOr<Principal> result = store_->AuthenticateApiKey(key.key);
  EXPECT_STATUS_CODE(result, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(result.status().message(), "API key revoked");
  EXPECT_OK(store_->RevokeApiKey(alice.id, key.info.id));  // idempotent

  const std::vector<ApiKeyInfo> listed = store_->ListApiKeys(alice.id);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_FALSE(listed[0].is_active);
  EXPECT_TRUE(store_->ListApiKeys(bob.id).empty());
}

// Sessions authenticate once and recheck their principal per request: a
// revocation or an expiry since then ends them.
TEST_F(AuthStoreTest, RecheckSeesRevocationAndExpiry) {
  std::atomic<int> revocations{0};
  on_revoked_ = [&revocations] { revocations.fetch_add(1); };
  ASSERT_OK(Restart());
  const User user = MustSignUp("user@example.com", "user");
  const CreatedApiKey kept = MustCreateKey(user.id, {"read"}, /*expires_in_days=*/1);
  const CreatedApiKey revoked = MustCreateKey(user.id);
  const CreatedApiKey other = MustCreateKey(user.id);
  ASSERT_OK_AND_ASSIGN(Principal kept_principal, store_->AuthenticateApiKey(kept.key));
  ASSERT_OK_AND_ASSIGN(Principal revoked_principal, store_->AuthenticateApiKey(revoked.key));
  EXPECT_EQ(kept_principal.expires_at_ms, kept.info.expires_at_ms);
  EXPECT_OK(store_->RecheckApiKey(&kept_principal));
  EXPECT_OK(store_->RecheckApiKey(&revoked_principal));

  const uint64_t before = store_->credentials_generation();
  ASSERT_OK(store_->RevokeApiKey(user.id, other.info.id));
  EXPECT_NE(store_->credentials_generation(), before);
  EXPECT_EQ(revocations.load(), 1);
  // Another key's revocation leaves these valid, and their generation current.
  EXPECT_OK(store_->RecheckApiKey(&kept_principal));
  EXPECT_EQ(kept_principal.generation, store_->credentials_generation());

  ASSERT_OK(store_->RevokeApiKey(user.id, revoked.info.id));
  EXPECT_EQ(revocations.load(), 2);
  absl::Status status = store_->RecheckApiKey(&revoked_principal);
  EXPECT_STATUS_CODE(status, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(status.message(), "API key revoked");
  EXPECT_OK(store_->RecheckApiKey(&kept_principal));

  clock_.AdvanceMs(24ll * 3600 * 1000);
  status = store_->RecheckApiKey(&kept_principal);
  EXPECT_STATUS_CODE(status, absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(status.message(), "API key expired");
}

TEST_F(AuthStoreTest, SecretsAreStoredOnlyAsHashes) {
  const User user = MustSignUp("user@example.com", "user");
  std::vector<std::string> keys;
  for (int i = 0; i < 5; ++i) keys.push_back(MustCreateKey(user.id).key);
  ASSERT_OK(store_->RevokeApiKey(user.id, 2));
  ASSERT_OK(store_->AuthenticateApiKey(keys[0]));
  ASSERT_OK_AND_ASSIGN(size_t flushed, store_->FlushLastUsed());
  EXPECT_EQ(flushed, 1u);

  // Everything the cluster keeps of the accounts: the control plane's state
  // (its snapshot) and whatever is in the engine.
  std::string everything = state_->Snapshot();
  for (const engine::ScanItem& item : AuthRecords()) absl::StrAppend(&everything, item.key, item.value);
  EXPECT_FALSE(absl::StrContains(everything, "password123"));
  for (const std::string& key : keys) {
    // Neither the key nor its random part, in any record's key or value...
    EXPECT_FALSE(absl::StrContains(everything, key.substr(5))) << key;
    // ...but its BLAKE2b-256 hash is there.
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof(hash), reinterpret_cast<const unsigned char*>(key.data()),
                       key.size(), nullptr, 0);
    EXPECT_TRUE(absl::StrContains(
        everything, absl::string_view(reinterpret_cast<char*>(hash), sizeof(hash))))
        << key;
  }
}

TEST_F(AuthStoreTest, EverythingSurvivesRestart) {
  const User alice = MustSignUp("alice@example.com", "alice");
  const User bob = MustSignUp("bob@example.com", "bob");
  const CreatedApiKey kept = MustCreateKey(alice.id, {"read"}, 30);
  const CreatedApiKey revoked = MustCreateKey(alice.id);
  const CreatedApiKey bobs = MustCreateKey(bob.id, {"write"});
  ASSERT_OK(store_->RevokeApiKey(alice.id, revoked.info.id));
  clock_.AdvanceMs(1000);
  ASSERT_OK(store_->AuthenticateApiKey(kept.key));
  ASSERT_OK(store_->FlushLastUsed());
  const std::vector<ApiKeyInfo> before = store_->ListApiKeys(alice.id);

  ASSERT_OK(Restart());
  EXPECT_EQ(store_->UserCount(), 2u);
  EXPECT_OK(store_->Login("alice@example.com", "password123"));
  EXPECT_STATUS_CODE(store_->SignUp("ALICE@example.com", "x", "password123"),
                     absl::StatusCode::kAlreadyExists);
  EXPECT_STATUS_CODE(store_->SignUp("x@example.com", "bob", "password123"),
                     absl::StatusCode::kAlreadyExists);
  ASSERT_OK_AND_ASSIGN(Principal principal, store_->AuthenticateApiKey(kept.key));
  EXPECT_EQ(principal.user_id, alice.id);
  EXPECT_FALSE(principal.can_write);
  EXPECT_EQ(store_->AuthenticateApiKey(revoked.key).status().message(), "API key revoked");
  ASSERT_OK_AND_ASSIGN(principal, store_->AuthenticateApiKey(bobs.key));
  EXPECT_EQ(principal.user_id, bob.id);

  const std::vector<ApiKeyInfo> after = store_->ListApiKeys(alice.id);
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].id, before[i].id);
    EXPECT_EQ(after[i].name, before[i].name);
    EXPECT_EQ(after[i].key_prefix, before[i].key_prefix);
    EXPECT_EQ(after[i].scopes, before[i].scopes);
    EXPECT_EQ(after[i].is_active, before[i].is_active);
    EXPECT_EQ(after[i].created_at_ms, before[i].created_at_ms);
    EXPECT_EQ(after[i].expires_at_ms, before[i].expires_at_ms);
    EXPECT_EQ(after[i].last_used_at_ms, before[i].last_used_at_ms);
  }
  EXPECT_EQ(after[0].last_used_at_ms, kStartMs + 1000);

  // Counters continue where they were.
  EXPECT_EQ(MustSignUp("carol@example.com", "carol").id, 3u);
  EXPECT_EQ(MustCreateKey(bob.id).info.id, 4u);
}

TEST_F(AuthStoreTest, CorruptRecordStopsLoad) {
  MustSignUp("alice@example.com", "alice");
  ASSERT_OK(engine_->Put(absl::StrCat(kAuthPrefix, "user/00000000000000000002"), "{not json"));
  absl::Status status = Restart();
  EXPECT_STATUS_CODE(status, absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(status.message(), "user/00000000000000000002")) << status;
}

TEST_F(AuthStoreTest, LastUsedIsWrittenInBatches) {
  const User user = MustSignUp("user@example.com", "user");
  const CreatedApiKey first = MustCreateKey(user.id);
  const CreatedApiKey second = MustCreateKey(user.id);
  EXPECT_EQ(store_->ListApiKeys(user.id)[0].last_used_at_ms, 0);

  const int proposals_before = proposals_.load();
  for (int i = 0; i < 100; ++i) {
    clock_.AdvanceMs(10);
    ASSERT_OK(store_->AuthenticateApiKey(first.key));
  }
  // Authentication never writes (proposes nothing to the cluster).
  EXPECT_EQ(proposals_.load(), proposals_before);
  // In memory at once, committed at the flush: one command for a hundred uses.
  EXPECT_EQ(store_->ListApiKeys(user.id)[0].last_used_at_ms, clock_.NowUnixMs());
  ASSERT_OK_AND_ASSIGN(size_t flushed, store_->FlushLastUsed());
  EXPECT_EQ(flushed, 1u);
  EXPECT_EQ(proposals_.load(), proposals_before + 1);
  ASSERT_OK_AND_ASSIGN(flushed, store_->FlushLastUsed());
  EXPECT_EQ(flushed, 0u);

  clock_.AdvanceMs(10);
  ASSERT_OK(store_->AuthenticateApiKey(first.key));
  ASSERT_OK(store_->AuthenticateApiKey(second.key));
  ASSERT_OK(store_->AuthenticateApiKey(second.key));
  ASSERT_OK_AND_ASSIGN(flushed, store_->FlushLastUsed());
  EXPECT_EQ(flushed, 2u);
  // Two keys, one command.
  EXPECT_EQ(proposals_.load(), proposals_before + 2);
  const std::vector<ApiKeyInfo> keys = store_->ListApiKeys(user.id);
  EXPECT_EQ(keys[0].last_used_at_ms, clock_.NowUnixMs());
  EXPECT_EQ(keys[1].last_used_at_ms, clock_.NowUnixMs());
}

TEST_F(AuthStoreTest, ConcurrentAuthenticationAndFlushes) {
  const User user = MustSignUp("user@example.com", "user");
  std::vector<std::string> keys;
  for (int i = 0; i < 4; ++i) keys.push_back(MustCreateKey(user.id).key);
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        clock_.AdvanceMs(1);
        ASSERT_OK(store_->AuthenticateApiKey(keys[(i + t) % keys.size()]));
      }
    });
  }
  std::thread flusher([&] {
    while (!stop.load()) ASSERT_OK(store_->FlushLastUsed());
  });
  for (std::thread& reader : readers) reader.join();
  stop.store(true);
  flusher.join();
  ASSERT_OK(store_->FlushLastUsed());
  // After the last flush, what is on disk is what is in memory.
  const std::vector<ApiKeyInfo> in_memory = store_->ListApiKeys(user.id);
  ASSERT_OK(Restart());
  const std::vector<ApiKeyInfo> on_disk = store_->ListApiKeys(user.id);
  ASSERT_EQ(on_disk.size(), in_memory.size());
  for (size_t i = 0; i < on_disk.size(); ++i) {
    EXPECT_GT(in_memory[i].last_used_at_ms, 0);
    EXPECT_EQ(on_disk[i].last_used_at_ms, in_memory[i].last_used_at_ms) << i;
  }
}

// A data directory an older version wrote: its accounts are records in the
// engine. The first Load moves them into the control plane's state (ids,
// hashes, scopes, revocations, the secret and the counters kept), notes the
// move, and later Loads do not read the records again.
TEST_F(AuthStoreTest, LegacyEngineAccountsAreMovedOnce) {
  store_.reset();
  state_ = std::make_unique<control::ControlState>();
  ASSERT_OK_AND_ASSIGN(std::string hash, HashPassword("password123", PasswordHashLimits::Minimum()));
  const std::string secret(32, 'S');
  const std::string key = "ydht_" + std::string(40, 'k');
  unsigned char key_hash[crypto_generichash_BYTES];
  crypto_generichash(key_hash, sizeof(key_hash), reinterpret_cast<const unsigned char*>(key.data()),
                     key.size(), nullptr, 0);
  auto put = [&](absl::string_view name, const Json& record) {
    ASSERT_OK(engine_->Put(absl::StrCat(kAuthPrefix, name), record.dump()));
  };
  put("secret", Json{{"v", 1}, {"hs256_key", Base64UrlEncode(secret)}});
  ASSERT_OK(engine_->Put(absl::StrCat(kAuthPrefix, "next/user"), "8"));
  ASSERT_OK(engine_->Put(absl::StrCat(kAuthPrefix, "next/apikey"), "12"));
  put("user/00000000000000000003",
      Json{{"v", 1}, {"id", 3}, {"email", "old@example.com"}, {"username", "old"},
           {"password_hash", hash}, {"is_active", true}, {"created_at_ms", kStartMs - 5000}});
  put("user/00000000000000000005",
      Json{{"v", 1}, {"id", 5}, {"email", "off@example.com"}, {"username", "off"},
           {"password_hash", hash}, {"is_active", false}, {"created_at_ms", kStartMs - 4000}});
  put("apikey/00000000000000000011",
      Json{{"v", 1}, {"id", 11}, {"user_id", 3}, {"name", "legacy"}, {"key_prefix", key.substr(0, 8)},
           {"key_hash", absl::BytesToHexString(absl::string_view(
                            reinterpret_cast<const char*>(key_hash), sizeof(key_hash)))},
           {"scopes", Json::array({"read"})}, {"is_active", true},
           {"created_at_ms", kStartMs - 3000}, {"expires_at_ms", 0},
           {"last_used_at_ms", kStartMs - 1000}});
  put("revoked/used-jti", Json{{"v", 1}, {"user_id", 3}, {"exp", kStartS + 3600}});
  ASSERT_OK(OpenStore());

  const control::Accounts moved = state_->accounts().Current();
  EXPECT_EQ(moved.users.size(), 2u);
  EXPECT_EQ(moved.next_user_id, 8u);
  EXPECT_EQ(moved.next_api_key_id, 12u);
  EXPECT_EQ(moved.jwt_secret, secret);
  EXPECT_TRUE(moved.import_done);
  EXPECT_TRUE(moved.revoked_tokens.contains("used-jti"));
  ASSERT_OK_AND_ASSIGN(Tokens tokens, store_->Login("OLD@example.com", "password123"));
  EXPECT_EQ(tokens.user.id, 3u);
  ASSERT_OK_AND_ASSIGN(JwtClaims claims,
                       VerifyJwt(secret, tokens.access_token, TokenType::kAccess, kStartS));
  EXPECT_EQ(claims.user_id, 3u);
  EXPECT_EQ(store_->Login("off@example.com", "password123").status().message(),
            "account is disabled");
  ASSERT_OK_AND_ASSIGN(Principal principal, store_->AuthenticateApiKey(key));
  EXPECT_EQ(principal.user_id, 3u);
  EXPECT_TRUE(principal.can_read);
  EXPECT_FALSE(principal.can_write);
  EXPECT_EQ(store_->ListApiKeys(3)[0].last_used_at_ms, kStartMs);  // just used
  // Ids continue after the old counters; names stay unique.
  EXPECT_EQ(MustSignUp("new@example.com", "new").id, 8u);
  EXPECT_STATUS_CODE(store_->SignUp("old@example.com", "x", "password123"),
                     absl::StatusCode::kAlreadyExists);
  ASSERT_OK(engine_->Get(absl::StrCat(kAuthPrefix, "moved")));

  // The records are no longer authoritative: a change to them is not read,
  // and the move is not made again.
  const int proposals = proposals_.load();
  put("user/00000000000000000003",
      Json{{"v", 1}, {"id", 3}, {"email", "changed@example.com"}, {"username", "old"},
           {"password_hash", hash}, {"is_active", true}, {"created_at_ms", kStartMs}});
  ASSERT_OK(Restart());
  EXPECT_EQ(store_->UserCount(), 3u);
  EXPECT_OK(store_->Login("old@example.com", "password123"));
  EXPECT_STATUS_CODE(store_->Login("changed@example.com", "password123"),
                     absl::StatusCode::kUnauthenticated);
  EXPECT_LE(proposals_.load() - proposals, 3);  // mode, secret, rate limit: no import
}

// A cluster that has accounts of its own refuses another directory's.
TEST_F(AuthStoreTest, LegacyAccountsAreNotMergedIntoAnotherClustersAccounts) {
  MustSignUp("cluster@example.com", "cluster");
  store_.reset();
  ASSERT_OK_AND_ASSIGN(std::string hash, HashPassword("password123", PasswordHashLimits::Minimum()));
  ASSERT_OK(engine_->Put(
      absl::StrCat(kAuthPrefix, "user/00000000000000000001"),
      Json{{"v", 1}, {"id", 1}, {"email", "old@example.com"}, {"username", "old"},
           {"password_hash", hash}, {"is_active", true}, {"created_at_ms", kStartMs}}
          .dump()));
  store_ = std::make_unique<AuthStore>(engine_.get(), Config());
  absl::Status status = store_->Load();
  EXPECT_STATUS_CODE(status, absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "cannot be merged")) << status;
}

TEST_F(AuthStoreTest, DisabledUserIsRefusedEverywhere) {
  std::atomic<int> revocations{0};
  on_revoked_ = [&revocations] { revocations.fetch_add(1); };
  ASSERT_OK(Restart());
  const User user = MustSignUp("user@example.com", "user");
  const CreatedApiKey key = MustCreateKey(user.id);
  ASSERT_OK_AND_ASSIGN(Tokens tokens, store_->Login("user@example.com", "password123"));
  ASSERT_OK_AND_ASSIGN(Principal principal, store_->AuthenticateApiKey(key.key));
  ASSERT_OK(store_->SetUserActive(user.id, false));
  EXPECT_EQ(revocations.load(), 1);
  EXPECT_STATUS_CODE(store_->RecheckApiKey(&principal), absl::StatusCode::kUnauthenticated);
  EXPECT_STATUS_CODE(store_->AuthenticateApiKey(key.key), absl::StatusCode::kUnauthenticated);
  EXPECT_STATUS_CODE(store_->AuthenticateBearer("Bearer " + tokens.access_token),
                     absl::StatusCode::kUnauthenticated);
  EXPECT_STATUS_CODE(store_->Refresh(tokens.refresh_token), absl::StatusCode::kUnauthenticated);
  EXPECT_STATUS_CODE(store_->SetUserActive(99, false), absl::StatusCode::kNotFound);
  ASSERT_OK(store_->SetUserActive(user.id, true));
  EXPECT_OK(store_->AuthenticateApiKey(key.key));
}

// A valid key shown before the node's accounts are loaded (at its start) is
// told to try again, not that it is invalid.
TEST_F(AuthStoreTest, AKeyBeforeTheAccountsAreLoadedIsToldToTryAgain) {
  const User alice = MustSignUp("alice@example.com", "alice");
  const CreatedApiKey key = MustCreateKey(alice.id);
  store_ = std::make_unique<AuthStore>(engine_.get(), Config());
  absl::StatusOr<Principal> early = store_->AuthenticateApiKey(key.key);
  EXPECT_TRUE(absl::IsUnavailable(early.status())) << early.status();
  ASSERT_OK(store_->Load());
  ASSERT_OK_AND_ASSIGN(Principal principal, store_->AuthenticateApiKey(key.key));
  EXPECT_EQ(principal.user_id, alice.id);
}

// A data directory restored from a backup holds the control-plane state of
// the backup's time; a node that starts a new cluster from it takes the
// accounts back (ids kept, so each tenant finds its data).
TEST_F(AuthStoreTest, AccountsOfARestoredBackupAreTakenBack) {
  const User alice = MustSignUp("alice@example.com", "alice");
  const CreatedApiKey key = MustCreateKey(alice.id);
  const User bob = MustSignUp("bob@example.com", "bob");
  // The access table: a group, an administrator besides the first user, an
  // ACL entry (audited) naming the group.
  ASSERT_OK_AND_ASSIGN(const uint64_t group,
                       state_->Apply(control::EncodeCreateGroup("room", kStartMs)));
  ASSERT_TRUE(state_->Apply(control::EncodeSetGroupMember(group, bob.id, true)).ok());
  ASSERT_TRUE(state_->Apply(control::EncodeSetAdmin(bob.id, true)).ok());
  control::AclEntry entry;
  entry.owner = alice.id;
  entry.group_id = group;
  entry.mode = 0xf30;
  entry.audit = true;
  const std::string ledger = TenantPrefix(alice.id) + "ledger/";
  ASSERT_TRUE(state_->Apply(control::EncodeSetAcl(ledger, entry)).ok());
  const control::Access at_backup = state_->access().Current();
  const std::string path = WriteBackupState();
  store_.reset();
  state_ = std::make_unique<control::ControlState>();  // a new cluster
  restored_state_file_ = path;
  ASSERT_OK(OpenStore());
  ASSERT_OK_AND_ASSIGN(Principal principal, store_->AuthenticateApiKey(key.key));
  EXPECT_EQ(principal.user_id, alice.id);
  EXPECT_OK(store_->Login("alice@example.com", "password123"));
  EXPECT_EQ(MustSignUp("carol@example.com", "carol").id, bob.id + 1);
  // The access table too, ids kept, once.
  control::Access taken = state_->access().Current();
  EXPECT_EQ(taken.import_source, "backup");
  taken.import_source.clear();
  EXPECT_EQ(taken, at_backup);
  EXPECT_TRUE(state_->access().IsAdmin(bob.id));
  EXPECT_TRUE(state_->access().AuditsKey(ledger + "x"));
  std::string log;
  EXPECT_EQ(LogLines({"took back 1 administrator grant(s), 1 group(s) and 1 ACL"}, &log), 1) << log;
  // What the cluster changes since is its own: emptied, the table is not
  // taken back again at a restart.
  ASSERT_TRUE(state_->Apply(control::EncodeRemoveAcl(ledger)).ok());
  ASSERT_TRUE(state_->Apply(control::EncodeSetAdmin(bob.id, false)).ok());
  ASSERT_TRUE(state_->Apply(control::EncodeDeleteGroup(group)).ok());
  ASSERT_OK(Restart());
  EXPECT_EQ(store_->UserCount(), 3u);
  const control::Access after = state_->access().Current();
  EXPECT_TRUE(after.admins.empty() && after.groups.empty() && after.acls.empty());
  EXPECT_EQ(after.import_source, "backup");
}

// A node whose cluster has accounts of its own (one that joined it with
// --seeds, or a cluster made since) takes nothing of a restored backup.
TEST_F(AuthStoreTest, AClusterWithAccountsOfItsOwnTakesNothingBack) {
  MustSignUp("alice@example.com", "alice");
  ASSERT_TRUE(state_->Apply(control::EncodeCreateGroup("room", kStartMs)).ok());
  const std::string path = WriteBackupState();
  store_.reset();
  state_ = std::make_unique<control::ControlState>();
  ASSERT_OK(OpenStore());
  MustSignUp("zoe@example.com", "zoe");  // the cluster's own account
  restored_state_file_ = path;
  ASSERT_OK(Restart());
  EXPECT_EQ(store_->UserCount(), 1u);
  const control::Access access = state_->access().Current();
  EXPECT_TRUE(access.groups.empty());
  EXPECT_EQ(access.import_source, "");
}

// A restored node that joins a cluster (--seeds) takes nothing back, even
// from a cluster with no accounts; and a backup's accounts taken back in
// part (a start stopped during the import) leave the table be, said.
TEST_F(AuthStoreTest, AJoiningNodeOrAPartialImportTakesNoTableBack) {
  MustSignUp("alice@example.com", "alice");
  MustSignUp("bob@example.com", "bob");
  ASSERT_TRUE(state_->Apply(control::EncodeCreateGroup("room", kStartMs)).ok());
  const control::Accounts backup = state_->accounts().Current();
  const std::string path = WriteBackupState();
  store_.reset();
  state_ = std::make_unique<control::ControlState>();
  restored_state_file_ = path;
  restored_starts_cluster_ = false;
  ASSERT_OK(OpenStore());
  EXPECT_EQ(store_->UserCount(), 0u);
  EXPECT_TRUE(state_->access().Current().groups.empty());

  // The first of two chunks of the backup's accounts, as a start that
  // stopped after it left them.
  store_.reset();
  state_ = std::make_unique<control::ControlState>();
  std::vector<control::AccountUser> first = {backup.users.begin()->second};
  ASSERT_TRUE(state_->Apply(control::EncodeImportAccounts("backup", first, {}, {}, "", 0, 0,
                                                          /*last=*/false))
                  .ok());
  restored_starts_cluster_ = true;
  ASSERT_OK(OpenStore());
  EXPECT_EQ(store_->UserCount(), 1u);
  EXPECT_TRUE(state_->access().Current().groups.empty());
  std::string log;
  EXPECT_GE(LogLines({"taken back only in part"}, &log), 1) << log;
}

// A start that took the accounts back but not the access table (it stopped
// between, or was of a version that did not take tables back) takes the
// table back at the next start; one whose cluster made a table of its own
// meanwhile keeps that.
TEST_F(AuthStoreTest, ARestoredAccessTableIsTakenBackAtTheNextStart) {
  MustSignUp("alice@example.com", "alice");
  ASSERT_TRUE(state_->Apply(control::EncodeCreateGroup("room", kStartMs)).ok());
  const std::string path = WriteBackupState();
  store_.reset();
  state_ = std::make_unique<control::ControlState>();
  restored_state_file_ = path;
  use_access_ = false;
  ASSERT_OK(OpenStore());
  EXPECT_EQ(store_->UserCount(), 1u);
  EXPECT_TRUE(state_->access().Current().groups.empty());
  use_access_ = true;
  ASSERT_OK(Restart());
  EXPECT_EQ(store_->UserCount(), 1u);
  control::Access taken = state_->access().Current();
  ASSERT_EQ(taken.groups.size(), 1u);
  EXPECT_EQ(taken.groups.begin()->second.name, "room");

  // Another new cluster from the same backup, whose table is made before
  // the start that would take it back: its own is kept.
  store_.reset();
  state_ = std::make_unique<control::ControlState>();
  use_access_ = false;
  ASSERT_OK(OpenStore());
  ASSERT_TRUE(state_->Apply(control::EncodeCreateGroup("ours", kStartMs)).ok());
  use_access_ = true;
  ASSERT_OK(Restart());
  taken = state_->access().Current();
  ASSERT_EQ(taken.groups.size(), 1u);
  EXPECT_EQ(taken.groups.begin()->second.name, "ours");
  EXPECT_EQ(taken.import_source, "backup, not taken back");
  std::string log;
  EXPECT_GE(LogLines({"not taken back", "access table of its own"}, &log), 1) << log;
}

TEST(RenderTest, RestShapes) {
  EXPECT_EQ(FormatRfc3339(kStartMs), "2023-11-14T22:13:20Z");
  EXPECT_EQ(FormatRfc3339(kStartMs + 999), "2023-11-14T22:13:20Z");
  User user{7, "a@b.co", "name", true, kStartMs};
  EXPECT_EQ(SerializeJson(UserJson(user)),
            R"({"created_at":"2023-11-14T22:13:20Z","email":"a@b.co","id":7,)"
            R"("is_active":true,"username":"name"})");

  CreatedApiKey created;
  created.key = "ydht_abcdefgh";
  created.info = {3, 7, "n", "ydht_abc", {"read"}, true, kStartMs, 0, 0};
  Json json = CreatedApiKeyJson(created);
  EXPECT_EQ(json["key"], "ydht_abcdefgh");
  EXPECT_TRUE(json["expires_at"].is_null());
  EXPECT_EQ(json.size(), 8u);
  for (const char* field :
       {"id", "name", "key_prefix", "key", "scopes", "is_active", "expires_at", "created_at"}) {
    EXPECT_TRUE(json.contains(field)) << field;
  }

  created.info.expires_at_ms = kStartMs + 86'400'000;
  created.info.last_used_at_ms = kStartMs + 1000;
  json = ApiKeyJson(created.info);
  EXPECT_FALSE(json.contains("key"));
  EXPECT_EQ(json.size(), 8u);
  EXPECT_EQ(json["expires_at"], "2023-11-15T22:13:20Z");
  EXPECT_EQ(json["last_used_at"], "2023-11-14T22:13:21Z");
  EXPECT_EQ(json["scopes"], Json::array({"read"}));

  Tokens tokens{"access", "refresh", 3600, user};
  json = TokensJson(tokens);
  EXPECT_EQ(json["token_type"], "Bearer");
  EXPECT_EQ(json["expires_in"], 3600);
  EXPECT_EQ(json["user"]["id"], 7);
  // Invalid UTF-8 never makes serialisation throw.
  user.username = "\xff";
  EXPECT_NO_THROW(SerializeJson(UserJson(user)));
}

// ---- Account routes ----------------------------------------------------------------

class AccountRoutesTest : public AuthStoreTest {
 protected:
  void SetUp() override {
    AuthStoreTest::SetUp();
    pool_ = std::make_unique<WorkerPool>(/*thread_count=*/2, /*max_queued_tasks=*/16);
    LoginThrottleConfig throttle_config;
    throttle_config.free_failures_per_account = 3;
    throttle_ = std::make_unique<LoginThrottle>(throttle_config);
    http::AccountRoutesOptions options;
    options.login_throttle = throttle_.get();
    options.on_auth_failure = [this] { auth_failures_.fetch_add(1); };
    options.on_throttled = [this] { throttled_.fetch_add(1); };
    options.now_ms = [this] { return clock_.NowUnixMs(); };
    http::AddAccountRoutes(&router_, store_.get(), pool_.get(), std::move(options));
  }
  void TearDown() override {
    pool_.reset();
    AuthStoreTest::TearDown();
  }

  struct Answer {
    int status = 0;
    Json body;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string Header(absl::string_view name) const {
      for (const auto& [key, value] : headers) {
        if (absl::EqualsIgnoreCase(key, name)) return value;
      }
      return "";
    }
  };

  // Runs one request through the router and waits for its answer.
  Answer Call(http::Method method, const std::string& path, const std::string& body = "",
              const std::string& bearer = "") {
    http::HttpRequest request;
    request.method = method;
    request.target = path;
    request.path = path;
    request.body = body;
    const std::string authorization = "Bearer " + bearer;
    if (!bearer.empty()) request.headers.push_back({"Authorization", authorization});
    http::Router::Match match = router_.Find(method, path, &request.params);
    if (match.route == nullptr) return Answer{match.status, Json(), {}};
    // Shared, so the pool thread may finish sending after this returns.
    auto promise = std::make_shared<std::promise<http::HttpResponse>>();
    std::future<http::HttpResponse> future = promise->get_future();
    match.route->handler(request, http::Responder([promise](http::HttpResponse response) {
                           promise->set_value(std::move(response));
                         }));
    http::HttpResponse response = future.get();
    Answer answer;
    answer.status = response.status;
    answer.body = Json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(answer.body.is_discarded()) << response.body;
    answer.headers = response.headers;
    return answer;
  }

  std::string SignUpAndLogin(const std::string& email, const std::string& username) {
    Answer signup =
        Call(http::Method::kPost, "/signup",
             Json{{"email", email}, {"username", username}, {"password", "password123"}}.dump());
    EXPECT_EQ(signup.status, 201) << signup.body;
    Answer login = Call(http::Method::kPost, "/login",
                        Json{{"email", email}, {"password", "password123"}}.dump());
    EXPECT_EQ(login.status, 200) << login.body;
    return login.body.value("access_token", "");
  }

  http::Router router_;
  std::unique_ptr<LoginThrottle> throttle_;
  std::atomic<int> auth_failures_{0};
  std::atomic<int> throttled_{0};
  std::unique_ptr<WorkerPool> pool_;  // last: its threads stop before the rest goes
};

// Wrong passwords are counted, and after the free ones the account is held
// back with 429 and Retry-After, before any hashing; bad tokens are counted.
TEST_F(AccountRoutesTest, FailedLoginsAreCountedAndThrottled) {
  SignUpAndLogin("user@example.com", "user");
  const std::string wrong = R"({"email":"user@example.com","password":"password124"})";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Call(http::Method::kPost, "/login", wrong).status, 401);
  EXPECT_EQ(auth_failures_.load(), 3);
  Answer held = Call(http::Method::kPost, "/login", wrong);
  // The fourth is heard (three are free); the fifth must wait.
  EXPECT_EQ(held.status, 401);
  held = Call(http::Method::kPost, "/login",
              R"({"email":"USER@example.com","password":"password123"})");
  EXPECT_EQ(held.status, 429) << held.body;
  EXPECT_EQ(held.Header("Retry-After"), "1");
  EXPECT_EQ(throttled_.load(), 1);
  EXPECT_EQ(auth_failures_.load(), 4);
  // Once the delay is over the right password works and clears the count.
  clock_.AdvanceMs(1000);
  EXPECT_EQ(Call(http::Method::kPost, "/login",
                 R"({"email":"user@example.com","password":"password123"})")
                .status,
            200);
  EXPECT_EQ(Call(http::Method::kPost, "/login", wrong).status, 401);

  const int before = auth_failures_.load();
  EXPECT_EQ(Call(http::Method::kGet, "/apikeys", "", "garbage").status, 401);
  EXPECT_EQ(Call(http::Method::kGet, "/apikeys").status, 401);
  EXPECT_EQ(Call(http::Method::kPost, "/refresh", R"({"refresh_token":"garbage"})").status, 401);
  EXPECT_EQ(auth_failures_.load(), before + 3);
}

TEST_F(AccountRoutesTest, SignUp) {
  Answer answer =
      Call(http::Method::kPost, "/signup",
           R"({"email":"user@example.com","username":"testuser","password":"securepass123"})");
  ASSERT_EQ(answer.status, 201) << answer.body;
  EXPECT_EQ(answer.body, (Json{{"id", 1},
                               {"email", "user@example.com"},
                               {"username", "testuser"},
                               {"is_active", true},
                               {"created_at", "2023-11-14T22:13:20Z"}}));

  answer = Call(http::Method::kPost, "/signup",
                R"({"email":"user@example.com","username":"other","password":"securepass123"})");
  EXPECT_EQ(answer.status, 409);
  EXPECT_EQ(answer.body["error"], "email is already registered");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "request body is not valid JSON (syntax error near byte 1)"},
      {"{", "request body is not valid JSON (syntax error near byte 2)"},
      {"[]", "request body must be a JSON object"},
      {absl::StrCat(R"({"email":)", std::string(64, '['), std::string(64, ']'), "}"),
       "request body is JSON nested deeper than the limit of 64 levels (--max-json-depth)"},
      {R"({"email":"a@b.co","username":"u"})", "missing field \"password\""},
      {R"({"email":"a@b.co","username":"u","password":12345678})",
       "field \"password\" must be a string"},
      {R"({"email":"a@b.co","username":null,"password":"12345678"})", "missing field \"username\""},
      {R"({"email":"not-an-email","username":"u","password":"12345678"})",
       "invalid email: expected exactly one '@'"},
      {R"({"email":"a@b.co","username":"u","password":"short"})",
       "password must be at least 8 characters"},
  };
  for (const auto& [body, error] : bad) {
    SCOPED_TRACE(body);
    answer = Call(http::Method::kPost, "/signup", body);
    EXPECT_EQ(answer.status, 400);
    EXPECT_EQ(answer.body["error"], error);
  }
  answer = Call(http::Method::kPost, "/signup", std::string(http::kMaxAccountBodyBytes + 1, ' '));
  EXPECT_EQ(answer.status, 413);
}

TEST_F(AccountRoutesTest, LoginAndRefresh) {
  Call(http::Method::kPost, "/signup",
       R"({"email":"user@example.com","username":"u","password":"password123"})");
  Answer login = Call(http::Method::kPost, "/login",
                      R"({"email":"user@example.com","password":"password123"})");
  ASSERT_EQ(login.status, 200) << login.body;
  EXPECT_EQ(login.body["token_type"], "Bearer");
  EXPECT_EQ(login.body["expires_in"], 3600);
  EXPECT_TRUE(login.body["access_token"].is_string());
  EXPECT_TRUE(login.body["refresh_token"].is_string());
  EXPECT_EQ(login.body["user"]["id"], 1);
  EXPECT_EQ(login.body["user"]["username"], "u");

  Answer wrong = Call(http::Method::kPost, "/login",
                      R"({"email":"user@example.com","password":"password124"})");
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(wrong.body["error"], "invalid email or password");
  EXPECT_EQ(wrong.Header("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(Call(http::Method::kPost, "/login", R"({"email":"user@example.com"})").status, 400);

  const std::string refresh_body = Json{{"refresh_token", login.body["refresh_token"]}}.dump();
  Answer refreshed = Call(http::Method::kPost, "/refresh", refresh_body);
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  EXPECT_EQ(refreshed.body["token_type"], "Bearer");
  EXPECT_EQ(refreshed.body["user"]["email"], "user@example.com");
  EXPECT_EQ(Call(http::Method::kPost, "/refresh", refresh_body).status, 401);
  EXPECT_EQ(Call(http::Method::kPost, "/refresh", "{}").status, 400);
}

TEST_F(AccountRoutesTest, ApiKeys) {
  const std::string token = SignUpAndLogin("user@example.com", "user");
  const std::string other_token = SignUpAndLogin("other@example.com", "other");
  ASSERT_FALSE(token.empty());
  const std::string create_body =
      R"({"name":"My Application Key","scopes":["read","write"],"expires_in_days":90})";

  Answer answer = Call(http::Method::kPost, "/apikeys", create_body);
  EXPECT_EQ(answer.status, 401);
  EXPECT_EQ(answer.Header("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(Call(http::Method::kPost, "/apikeys", create_body, "not-a-token").status, 401);
  EXPECT_EQ(Call(http::Method::kGet, "/apikeys").status, 401);

  answer = Call(http::Method::kPost, "/apikeys", create_body, token);
  ASSERT_EQ(answer.status, 201) << answer.body;
  const std::string key = answer.body["key"].get<std::string>();
  EXPECT_EQ(answer.body["id"], 1);
  EXPECT_EQ(answer.body["name"], "My Application Key");
  EXPECT_EQ(answer.body["key_prefix"], key.substr(0, 8));
  EXPECT_EQ(answer.body["scopes"], Json::array({"read", "write"}));
  EXPECT_EQ(answer.body["is_active"], true);
  EXPECT_EQ(answer.body["expires_at"], "2024-02-12T22:13:20Z");
  EXPECT_EQ(answer.body["created_at"], "2023-11-14T22:13:20Z");
  EXPECT_OK(store_->AuthenticateApiKey(key));

  // expires_in_days may be left out: the key never expires.
  answer = Call(http::Method::kPost, "/apikeys", R"({"name":"ci","scopes":["read"]})", token);
  ASSERT_EQ(answer.status, 201) << answer.body;
  EXPECT_TRUE(answer.body["expires_at"].is_null());

  for (const char* body :
       {R"({"name":"k","scopes":"read"})", R"({"name":"k","scopes":[1]})",
        R"({"name":"k","scopes":["admin"]})", R"({"name":"k","scopes":[]})",
        R"({"name":"k","scopes":["read"],"expires_in_days":1.5})",
        R"({"name":"k","scopes":["read"],"expires_in_days":"90"})",
        R"({"name":"k","scopes":["read"],"expires_in_days":-1})",
        R"({"name":"k","scopes":["read"],"expires_in_days":18446744073709551615})",
        R"({"scopes":["read"]})", "nonsense"}) {
    SCOPED_TRACE(body);
    answer = Call(http::Method::kPost, "/apikeys", body, token);
    EXPECT_EQ(answer.status, 400) << answer.body;
    EXPECT_TRUE(answer.body["error"].is_string());
  }

  answer = Call(http::Method::kGet, "/apikeys", "", token);
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.body["count"], 2);
  ASSERT_EQ(answer.body["api_keys"].size(), 2u);
  const Json& listed = answer.body["api_keys"][0];
  EXPECT_FALSE(listed.contains("key"));
  EXPECT_EQ(listed["id"], 1);
  EXPECT_EQ(listed["last_used_at"], "2023-11-14T22:13:20Z");  // the check just above
  EXPECT_TRUE(answer.body["api_keys"][1]["last_used_at"].is_null());
  EXPECT_EQ(listed["key_prefix"], key.substr(0, 8));
  answer = Call(http::Method::kGet, "/apikeys", "", other_token);
  EXPECT_EQ(answer.body, (Json{{"api_keys", Json::array()}, {"count", 0}}));

  EXPECT_EQ(Call(http::Method::kDelete, "/apikeys/1", "", other_token).status, 404);
  EXPECT_EQ(Call(http::Method::kDelete, "/apikeys/99", "", token).status, 404);
  EXPECT_EQ(Call(http::Method::kDelete, "/apikeys/abc", "", token).status, 400);
  EXPECT_EQ(Call(http::Method::kDelete, "/apikeys/0", "", token).status, 400);
  EXPECT_EQ(Call(http::Method::kDelete, "/apikeys/1").status, 401);
  answer = Call(http::Method::kDelete, "/apikeys/1", "", token);
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.body, (Json{{"success", true}, {"id", 1}}));
  EXPECT_EQ(store_->AuthenticateApiKey(key).status().message(), "API key revoked");
  answer = Call(http::Method::kGet, "/apikeys", "", token);
  EXPECT_EQ(answer.body["api_keys"][0]["is_active"], false);
}

TEST_F(AccountRoutesTest, WriteRoutesAreMarked) {
  for (const auto& route : router_.routes()) {
    SCOPED_TRACE(route->pattern);
    EXPECT_EQ(route->is_write, route->pattern != "/login" && route->method != http::Method::kGet);
  }
  EXPECT_EQ(router_.routes().size(), 6u);
}

TEST_F(AccountRoutesTest, FullPoolAnswers503) {
  // A pool whose only thread is held and whose one-task queue is full.
  WorkerPool busy_pool(/*thread_count=*/1, /*max_queued_tasks=*/1);
  absl::Notification release;
  absl::Notification started;
  ASSERT_TRUE(busy_pool.Submit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  ASSERT_TRUE(busy_pool.Submit([] {}));
  http::Router router;
  http::AddAccountRoutes(&router, store_.get(), &busy_pool);
  http::HttpRequest request;
  request.method = http::Method::kPost;
  request.path = "/login";
  request.body = R"({"email":"user@example.com","password":"password123"})";
  http::Router::Match match = router.Find(request.method, request.path, &request.params);
  ASSERT_NE(match.route, nullptr);
  http::HttpResponse response;
  match.route->handler(
      request, http::Responder([&](http::HttpResponse answer) { response = std::move(answer); }));
  // Answered at once, on this thread.
  EXPECT_EQ(response.status, 503);
  bool has_retry_after = false;
  for (const auto& [name, value] : response.headers) {
    if (name == "Retry-After" && value == "1") has_retry_after = true;
  }
  EXPECT_TRUE(has_retry_after);
  release.Notify();
}

}  // namespace
}  // namespace logkv::server::auth
