#include "server/auth/jwt.h"

#include <sodium.h>

#include <limits>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "server/auth/password.h"

namespace logkv::server::auth {
namespace {

using Json = nlohmann::json;

constexpr int kBase64Variant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
constexpr size_t kMacBytes = crypto_auth_hmacsha256_BYTES;
static_assert(kMacBytes == 32, "HS256 signatures are 32 bytes; crypto_verify_32 compares them");

absl::Status Unauthenticated(absl::string_view message) {
  return absl::UnauthenticatedError(message);
}

// HMAC-SHA-256 with a key of any length: the streaming API hashes keys longer
// than a block as RFC 2104 says, which the one-shot crypto_auth_hmacsha256
// (fixed 32-byte keys) cannot do for an operator's JWT_SECRET.
void Mac(absl::string_view secret, absl::string_view message, unsigned char out[kMacBytes]) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, reinterpret_cast<const unsigned char*>(secret.data()),
                              secret.size());
  crypto_auth_hmacsha256_update(&state, reinterpret_cast<const unsigned char*>(message.data()),
                                message.size());
  crypto_auth_hmacsha256_final(&state, out);
  sodium_memzero(&state, sizeof(state));
}

// A JSON object from a base64url segment, or nullopt.
std::optional<Json> DecodeObject(absl::string_view segment) {
  std::optional<std::string> bytes = Base64UrlDecode(segment);
  if (!bytes.has_value()) return std::nullopt;
  Json json = Json::parse(*bytes, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return std::nullopt;
  return json;
}

std::optional<std::string> StringField(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::optional<int64_t> IntegerField(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const uint64_t value = it->get<uint64_t>();
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(value);
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  return std::nullopt;
}

}  // namespace

absl::string_view TokenTypeName(TokenType type) {
  return type == TokenType::kAccess ? "access" : "refresh";
}

std::string Base64UrlEncode(absl::string_view bytes) {
  (void)InitSodium();
  std::string text(sodium_base64_encoded_len(bytes.size(), kBase64Variant), '\0');
  sodium_bin2base64(text.data(), text.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), kBase64Variant);
  text.resize(text.size() - 1);  // the encoded length counts the terminating NUL
  return text;
}

std::optional<std::string> Base64UrlDecode(absl::string_view text) {
  (void)InitSodium();
  std::string bytes(text.size() / 4 * 3 + 3, '\0');
  size_t length = 0;
  // No ignored characters and no end pointer: libsodium then refuses any
  // character outside the alphabet and non-canonical trailing bits.
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(bytes.data()), bytes.size(), text.data(),
                        text.size(), /*ignore=*/nullptr, &length, /*b64_end=*/nullptr,
                        kBase64Variant) != 0) {
    return std::nullopt;
  }
  bytes.resize(length);
  return bytes;
}

std::string NewJwtId() {
  (void)InitSodium();
  unsigned char bytes[16];
  randombytes_buf(bytes, sizeof(bytes));
  return Base64UrlEncode(absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

std::string SignJwt(absl::string_view secret, const JwtClaims& claims) {
  const Json header = {{"alg", "HS256"}, {"typ", "JWT"}};
  const Json payload = {{"sub", std::to_string(claims.user_id)},
                        {"typ", std::string(TokenTypeName(claims.type))},
                        {"iat", claims.issued_at_s},
                        {"exp", claims.expires_at_s},
                        {"jti", claims.jti},
                        {"gen", claims.session_generation}};
  // Every string here is ASCII, so dump cannot meet invalid UTF-8 and throw.
  std::string token =
      absl::StrCat(Base64UrlEncode(header.dump()), ".", Base64UrlEncode(payload.dump()));
  unsigned char mac[kMacBytes];
  Mac(secret, token, mac);
  absl::StrAppend(
      &token, ".",
      Base64UrlEncode(absl::string_view(reinterpret_cast<const char*>(mac), kMacBytes)));
  return token;
}

absl::StatusOr<JwtClaims> VerifyJwt(absl::string_view secret, absl::string_view token,
                                    TokenType expected_type, int64_t now_s) {
  if (token.size() > kMaxJwtBytes) {
    return Unauthenticated(absl::StrCat("token longer than ", kMaxJwtBytes, " bytes"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3)
    return Unauthenticated("malformed token: expected three dot-separated parts");

  std::optional<Json> header = DecodeObject(parts[0]);
  if (!header.has_value()) return Unauthenticated("malformed token header");
  // The algorithm is fixed, not taken from the token: anything but HS256
  // (notably "none") is refused before the signature is looked at.
  std::optional<std::string> alg = StringField(*header, "alg");
  if (!alg.has_value() || *alg != "HS256") {
    return Unauthenticated(absl::StrCat("unsupported token algorithm \"", alg.value_or("(missing)"),
                                        "\": only HS256 is accepted"));
  }
  if (header->contains("typ")) {
    std::optional<std::string> typ = StringField(*header, "typ");
    if (!typ.has_value() || *typ != "JWT") return Unauthenticated("token header typ is not JWT");
  }

  std::optional<std::string> signature = Base64UrlDecode(parts[2]);
  if (!signature.has_value() || signature->size() != kMacBytes) {
    return Unauthenticated("invalid token signature");
  }
  unsigned char expected_mac[kMacBytes];
  const size_t signed_bytes = parts[0].size() + 1 + parts[1].size();
  Mac(secret, token.substr(0, signed_bytes), expected_mac);
  if (crypto_verify_32(expected_mac, reinterpret_cast<const unsigned char*>(signature->data())) !=
      0) {
    return Unauthenticated("invalid token signature");
  }

  // From here on the claims are ours (we signed them), but they are still
  // checked field by field: a secret shared with another issuer may sign others.
  std::optional<Json> payload = DecodeObject(parts[1]);
  if (!payload.has_value()) return Unauthenticated("malformed token claims");
  JwtClaims claims;
  std::optional<std::string> subject = StringField(*payload, "sub");
  if (!subject.has_value() || !absl::SimpleAtoi(*subject, &claims.user_id) || claims.user_id == 0) {
    return Unauthenticated("token has no valid sub claim");
  }
  std::optional<std::string> type = StringField(*payload, "typ");
  if (!type.has_value() || (*type != "access" && *type != "refresh")) {
    return Unauthenticated("token has no valid typ claim");
  }
  claims.type = *type == "access" ? TokenType::kAccess : TokenType::kRefresh;
  std::optional<int64_t> issued_at = IntegerField(*payload, "iat");
  std::optional<int64_t> expires_at = IntegerField(*payload, "exp");
  if (!issued_at.has_value() || !expires_at.has_value()) {
    return Unauthenticated("token has no valid iat and exp claims");
  }
  claims.issued_at_s = *issued_at;
  claims.expires_at_s = *expires_at;
  std::optional<std::string> jti = StringField(*payload, "jti");
  if (!jti.has_value() || jti->empty() || jti->size() > kMaxJwtIdBytes) {
    return Unauthenticated("token has no valid jti claim");
  }
  claims.jti = std::move(*jti);
  if (payload->contains("gen")) {
    std::optional<int64_t> generation = IntegerField(*payload, "gen");
    if (!generation.has_value() || *generation < 0) {
      return Unauthenticated("token has no valid gen claim");
    }
    claims.session_generation = static_cast<uint64_t>(*generation);
  }

  if (now_s >= claims.expires_at_s) return Unauthenticated("token expired");
  if (claims.type != expected_type) {
    return Unauthenticated(absl::StrCat("wrong token type: expected ", TokenTypeName(expected_type),
                                        " token, got ", TokenTypeName(claims.type), " token"));
  }
  return claims;
}

}  // namespace logkv::server::auth
