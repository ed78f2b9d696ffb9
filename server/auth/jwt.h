// JSON Web Tokens (RFC 7519) signed with HMAC-SHA-256 ("HS256", RFC 7518
// section 3.2), the bearer tokens of POST /login and POST /refresh.
//
// A token is base64url(header) "." base64url(claims) "." base64url(mac), all
// without padding. The header is {"alg":"HS256","typ":"JWT"}; the claims are
//   sub  the user id, a decimal string (RFC 7519 makes "sub" a string)
//   typ  "access" or "refresh": a refresh token is refused where an access
//        token is expected and the other way round
//   iat, exp  issue and expiry times, seconds since the Unix epoch
//   jti  a random id, so that a used refresh token can be revoked
//   gen  the user's session generation when the token was issued (absent:
//        0); a token is refused once the user's has moved on
// The secret is used as the HMAC key as is, whatever its length, so tokens
// interoperate with other HS256 implementations given the same JWT_SECRET.
//
// Thread-safety: every function may be called from any thread at once.
#ifndef LOGKV_SERVER_AUTH_JWT_H_
#define LOGKV_SERVER_AUTH_JWT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace logkv::server::auth {

// Longer tokens are refused before any decoding, bounding the work an
// attacker can cause per request.
inline constexpr size_t kMaxJwtBytes = 4096;
// A jti names a revocation record in the engine, so it must stay a short key.
inline constexpr size_t kMaxJwtIdBytes = 128;

enum class TokenType { kAccess, kRefresh };

// "access" or "refresh", as in the typ claim.
absl::string_view TokenTypeName(TokenType type);

struct JwtClaims {
  uint64_t user_id = 0;  // REQUIRES: > 0
  TokenType type = TokenType::kAccess;
  int64_t issued_at_s = 0;
  int64_t expires_at_s = 0;
  std::string jti;  // REQUIRES: non-empty
  uint64_t session_generation = 0;
};

// The signed token for claims. REQUIRES: secret is non-empty.
std::string SignJwt(absl::string_view secret, const JwtClaims& claims);

// The claims of token if its signature is right (constant-time comparison),
// its alg is HS256, it has not expired at now_s and its typ is expected_type.
// Otherwise Unauthenticated with a message naming the first problem found.
[[nodiscard]] absl::StatusOr<JwtClaims> VerifyJwt(absl::string_view secret, absl::string_view token,
                                                  TokenType expected_type, int64_t now_s);

// A fresh random jti: 16 bytes from the system's CSPRNG, base64url (22 characters).
std::string NewJwtId();

// base64url without padding (RFC 4648 section 5), the alphabet of JWTs and API keys.
std::string Base64UrlEncode(absl::string_view bytes);
// nullopt unless text is canonical unpadded base64url.
std::optional<std::string> Base64UrlDecode(absl::string_view text);

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_JWT_H_
