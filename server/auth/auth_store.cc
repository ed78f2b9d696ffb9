#include "server/auth/auth_store.h"

#include <sodium.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <cassert>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/auth/jwt.h"
#include "server/control/control_state.h"
#include "server/http/json_body.h"
#include "server/namespaces.h"

namespace logkv::server::auth {
namespace {

using Json = nlohmann::json;
using http::IsValidUtf8;

constexpr int kRecordVersion = 1;  // the "v" of every JSON record; never reuse a value
constexpr size_t kKeyHashBytes = crypto_generichash_BYTES;
static_assert(kKeyHashBytes == 32, "API keys are stored as BLAKE2b-256 hashes");
constexpr size_t kGeneratedSecretBytes = 32;
constexpr size_t kMinRecommendedSecretBytes = 32;
constexpr int64_t kMillisPerDay = 24ll * 3600 * 1000;

// Sub-namespaces of kAuthPrefix (see the layout in auth_store.h).
constexpr absl::string_view kSecretName = "secret";
constexpr absl::string_view kNextUserName = "next/user";
constexpr absl::string_view kNextApiKeyName = "next/apikey";
constexpr absl::string_view kUserDir = "user/";
constexpr absl::string_view kApiKeyDir = "apikey/";
constexpr absl::string_view kRevokedDir = "revoked/";

std::string AuthKey(absl::string_view name) { return absl::StrCat(kAuthPrefix, name); }
// A reserved key made printable for messages.
std::string Printable(absl::string_view key) { return absl::CHexEscape(key); }

bool ParseId(absl::string_view text, uint64_t* id) {
  return text.size() == 20 && absl::SimpleAtoi(text, id) && *id > 0;
}

// Code points of text, counting each byte that does not continue a sequence;
// meaningful for valid UTF-8 and harmless for anything else.
size_t CountCharacters(absl::string_view text) {
  return static_cast<size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  }));
}

bool HasControlCharacter(absl::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f;
  });
}

// Whether text holds a character of Unicode's general category Cc (NUL, the
// C0 and C1 controls) or, with format, Cf: zero-width spaces and joiners,
// bidi overrides and isolates, the byte-order mark, invisible characters
// that make two different names look the same. REQUIRES: IsValidUtf8(text).
bool HasCharacterOf(absl::string_view text, bool format) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const auto length = static_cast<int32_t>(text.size());
  for (int32_t i = 0; i < length;) {
    UChar32 c;
    U8_NEXT(bytes, i, length, c);
    if (c < 0) return true;  // not UTF-8 after all: refused too
    const int8_t type = u_charType(c);
    if (type == U_CONTROL_CHAR || (format && type == U_FORMAT_CHAR)) return true;
  }
  return false;
}

// ICU's NFKC_Casefold normaliser; null if ICU's data is missing (Load fails then).
const icu::Normalizer2* NfkcCasefold() {
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFKCCasefoldInstance(error);
  return U_SUCCESS(error) ? normalizer : nullptr;
}

// The form under which emails and usernames are unique: Unicode NFKC with
// full case folding (NFKC_Casefold), so that names differing only in case,
// in any script, or in compatibility forms (fullwidth letters, ligatures)
// are one name. REQUIRES: IsValidUtf8(text) and Load succeeded.
std::string IdentityKey(absl::string_view text) {
  std::string key;
  icu::StringByteSink<std::string> sink(&key);
  UErrorCode error = U_ZERO_ERROR;
  NfkcCasefold()->normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())),
                                sink, nullptr, error);
  assert(U_SUCCESS(error));
  return key;
}

absl::Status ValidateEmail(absl::string_view email) {
  if (email.empty()) return absl::InvalidArgumentError("email is required");
  if (email.size() > kMaxEmailBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("email is ", email.size(), " bytes; at most ", kMaxEmailBytes, " allowed"));
  }
  if (!IsValidUtf8(email) || HasCharacterOf(email, /*format=*/true) ||
      email.find(' ') != absl::string_view::npos) {
    return absl::InvalidArgumentError("email contains invalid characters");
  }
  const size_t at = email.find('@');
  if (at == absl::string_view::npos || email.find('@', at + 1) != absl::string_view::npos) {
    return absl::InvalidArgumentError("invalid email: expected exactly one '@'");
  }
  const absl::string_view local = email.substr(0, at);
  const absl::string_view domain = email.substr(at + 1);
  if (local.empty()) return absl::InvalidArgumentError("invalid email: nothing before '@'");
  const size_t dot = domain.find('.');
  if (domain.empty() || dot == absl::string_view::npos || domain.front() == '.' ||
      domain.back() == '.') {
    return absl::InvalidArgumentError("invalid email: the domain needs a dot, as in example.com");
  }
  return absl::OkStatus();
}

absl::Status ValidateUsername(absl::string_view username) {
  if (username.empty()) return absl::InvalidArgumentError("username is required");
  if (!IsValidUtf8(username) || HasCharacterOf(username, /*format=*/true)) {
    return absl::InvalidArgumentError(
        "username contains invalid characters (control, zero-width or direction-changing)");
  }
  if (CountCharacters(username) > kMaxUsernameCharacters) {
    return absl::InvalidArgumentError(
        absl::StrCat("username is longer than ", kMaxUsernameCharacters, " characters"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePassword(absl::string_view password) {
  if (CountCharacters(password) < kMinPasswordCharacters) {
    return absl::InvalidArgumentError(
        absl::StrCat("password must be at least ", kMinPasswordCharacters, " characters"));
  }
  if (password.size() > kMaxPasswordBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("password is longer than ", kMaxPasswordBytes, " bytes"));
  }
  if (!IsValidUtf8(password) || HasCharacterOf(password, /*format=*/false)) {
    return absl::InvalidArgumentError(
        "password must be UTF-8 text without control characters (NUL, tab, newline, ...)");
  }
  return absl::OkStatus();
}

std::string HashApiKey(absl::string_view key) {
  std::string hash(kKeyHashBytes, '\0');
  crypto_generichash(reinterpret_cast<unsigned char*>(hash.data()), hash.size(),
                     reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                     /*key=*/nullptr, 0);
  return hash;
}

absl::Status Corrupt(absl::string_view key, absl::string_view why) {
  return absl::DataLossError(absl::StrCat("account record ", Printable(key), " is corrupt: ", why));
}

// Typed field readers for records read back from the engine; false on a
// missing or mistyped field.
bool ReadString(const Json& json, const char* name, std::string* out) {
  auto it = json.find(name);
  if (it == json.end() || !it->is_string()) return false;
  *out = it->get<std::string>();
  return true;
}
bool ReadBool(const Json& json, const char* name, bool* out) {
  auto it = json.find(name);
  if (it == json.end() || !it->is_boolean()) return false;
  *out = it->get<bool>();
  return true;
}
bool ReadUnsigned(const Json& json, const char* name, uint64_t* out) {
  auto it = json.find(name);
  if (it == json.end() || !it->is_number_unsigned()) return false;
  *out = it->get<uint64_t>();
  return true;
}
bool ReadInteger(const Json& json, const char* name, int64_t* out) {
  auto it = json.find(name);
  if (it == json.end() || !it->is_number_integer()) return false;
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return false;
  }
  *out = it->get<int64_t>();
  return true;
}

std::optional<Json> ParseRecord(absl::string_view value) {
  Json json = Json::parse(value.begin(), value.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return std::nullopt;
  int64_t version = 0;
  if (!ReadInteger(json, "v", &version) || version != kRecordVersion) return std::nullopt;
  return json;
}

// Canonical scopes (read before write, no duplicates) or InvalidArgument.
absl::StatusOr<std::vector<std::string>> CanonicalScopes(const std::vector<std::string>& scopes) {
  bool read = false;
  bool write = false;
  for (const std::string& scope : scopes) {
    if (scope == "read") {
      read = true;
    } else if (scope == "write") {
      write = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown scope \"", absl::CHexEscape(scope),
                                                     "\": scopes are read and write"));
    }
  }
  if (!read && !write) {
    return absl::InvalidArgumentError("scopes must name at least one of read and write");
  }
  std::vector<std::string> canonical;
  if (read) canonical.emplace_back("read");
  if (write) canonical.emplace_back("write");
  return canonical;
}

Json TimeOrNull(int64_t unix_ms) {
  if (unix_ms == 0) return nullptr;
  return FormatRfc3339(unix_ms);
}

}  // namespace

// ---- Renderers -------------------------------------------------------------------

std::string FormatRfc3339(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string SerializeJson(const Json& json) {
  return json.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false,
                   Json::error_handler_t::replace);
}

Json UserJson(const User& user) {
  return Json{{"id", user.id},
              {"email", user.email},
              {"username", user.username},
              {"is_active", user.is_active},
              {"created_at", FormatRfc3339(user.created_at_ms)}};
}

Json TokensJson(const Tokens& tokens) {
  return Json{{"access_token", tokens.access_token},
              {"refresh_token", tokens.refresh_token},
              {"token_type", "Bearer"},
              {"expires_in", tokens.expires_in_seconds},
              {"user", UserJson(tokens.user)}};
}

Json CreatedApiKeyJson(const CreatedApiKey& created) {
  const ApiKeyInfo& info = created.info;
  return Json{{"id", info.id},
              {"name", info.name},
              {"key_prefix", info.key_prefix},
              {"key", created.key},
              {"scopes", info.scopes},
              {"is_active", info.is_active},
              {"expires_at", TimeOrNull(info.expires_at_ms)},
              {"created_at", FormatRfc3339(info.created_at_ms)}};
}

Json ApiKeyJson(const ApiKeyInfo& info) {
  return Json{{"id", info.id},
              {"name", info.name},
              {"key_prefix", info.key_prefix},
              {"scopes", info.scopes},
              {"is_active", info.is_active},
              {"last_used_at", TimeOrNull(info.last_used_at_ms)},
              {"expires_at", TimeOrNull(info.expires_at_ms)},
              {"created_at", FormatRfc3339(info.created_at_ms)}};
}

// ---- AuthStore -------------------------------------------------------------------

namespace {

constexpr absl::string_view kMovedName = "moved";
// Per import command: about 300 KiB each, under kMaxImportCommandBytes.
constexpr size_t kImportUsersPerCommand = 1000;
constexpr size_t kImportKeysPerCommand = 2000;
constexpr size_t kImportTokensPerCommand = 4000;
constexpr size_t kTouchesPerCommand = 20000;

uint8_t ScopeBits(const std::vector<std::string>& scopes) {
  uint8_t bits = 0;
  for (const std::string& scope : scopes) {
    if (scope == "read") bits |= control::kScopeRead;
    if (scope == "write") bits |= control::kScopeWrite;
  }
  return bits;
}

std::vector<std::string> ScopeNames(uint8_t bits) {
  std::vector<std::string> names;
  if (bits & control::kScopeRead) names.emplace_back("read");
  if (bits & control::kScopeWrite) names.emplace_back("write");
  return names;
}

User UserOf(const control::AccountUser& in) {
  User user;
  user.id = in.id;
  user.email = in.email;
  user.username = in.username;
  user.is_active = in.is_active;
  user.created_at_ms = in.created_at_ms;
  user.session_generation = in.session_generation;
  return user;
}

// The user a token's claims name, if the token still stands for a session
// of theirs.
absl::StatusOr<User> TokenUser(const control::Accounts& a, const JwtClaims& claims) {
  const control::AccountUser* user = a.FindUser(claims.user_id);
  if (user == nullptr || !user->is_active) {
    return absl::UnauthenticatedError("the token's user no longer exists or is disabled");
  }
  if (claims.session_generation != user->session_generation) {
    return absl::UnauthenticatedError(
        "the token's session was ended (keys reset, or the account disabled); log in again");
  }
  return UserOf(*user);
}

ApiKeyInfo InfoOf(const control::AccountApiKey& key) {
  ApiKeyInfo info;
  info.id = key.id;
  info.user_id = key.user_id;
  info.name = key.name;
  info.key_prefix = key.key_prefix;
  info.scopes = ScopeNames(key.scopes);
  info.is_active = key.is_active;
  info.created_at_ms = key.created_at_ms;
  info.expires_at_ms = key.expires_at_ms;
  info.last_used_at_ms =
      std::max(key.last_used_at_ms, key.local.used_at_ms.load(std::memory_order_acquire));
  return info;
}

// The accounts an older version kept in one node's engine.
struct LegacyAccounts {
  std::vector<control::AccountUser> users;  // in id order
  std::vector<control::AccountApiKey> keys;  // in id order
  std::vector<std::pair<std::string, control::RevokedTokenEntry>> revoked;
  std::string secret;
  uint64_t next_user_id = 1;
  uint64_t next_api_key_id = 1;
  bool any = false;  // any record at all
};

// Reads one legacy record into `out`; DataLoss names a record that does not
// parse (the rules of the version that wrote them).
absl::Status ReadLegacyRecord(absl::string_view key, absl::string_view value, int64_t now_ms,
                              LegacyAccounts& out,
                              const std::function<void(absl::string_view)>& log) {
  absl::string_view name = key.substr(kAuthPrefix.size());
  out.any = true;
  if (name == kSecretName) {
    std::optional<Json> record = ParseRecord(value);
    std::string encoded;
    if (!record.has_value() || !ReadString(*record, "hs256_key", &encoded)) {
      return Corrupt(key, "expected {\"v\":1,\"hs256_key\":...}");
    }
    std::optional<std::string> secret = Base64UrlDecode(encoded);
    if (!secret.has_value() || secret->size() != kGeneratedSecretBytes) {
      return Corrupt(key, "hs256_key is not 32 bytes of base64url");
    }
    out.secret = std::move(*secret);
    return absl::OkStatus();
  }
  if (name == kNextUserName || name == kNextApiKeyName) {
    uint64_t next = 0;
    if (!absl::SimpleAtoi(value, &next) || next == 0) return Corrupt(key, "not a positive number");
    uint64_t& counter = name == kNextUserName ? out.next_user_id : out.next_api_key_id;
    counter = std::max(counter, next);
    return absl::OkStatus();
  }
  std::optional<Json> record = ParseRecord(value);
  if (absl::ConsumePrefix(&name, kUserDir)) {
    uint64_t id = 0;
    if (!ParseId(name, &id)) return Corrupt(key, "bad user id in the key");
    control::AccountUser user;
    if (!record.has_value() || !ReadUnsigned(*record, "id", &user.id) || user.id != id ||
        !ReadString(*record, "email", &user.email) ||
        !ReadString(*record, "username", &user.username) ||
        !ReadString(*record, "password_hash", &user.password_hash) ||
        !ReadBool(*record, "is_active", &user.is_active) ||
        !ReadInteger(*record, "created_at_ms", &user.created_at_ms)) {
      return Corrupt(key, "not a user record");
    }
    if (user.email.empty() || !IsValidUtf8(user.email) || user.username.empty() ||
        !IsValidUtf8(user.username)) {
      return Corrupt(key, "invalid email or username");
    }
    // Names that only NFKC_Casefold makes equal (an earlier version compared
    // ASCII case only) were two accounts: both move, and the older keeps the
    // name for sign-in.
    user.email_key = IdentityKey(user.email);
    user.username_key = IdentityKey(user.username);
    out.next_user_id = std::max(out.next_user_id, id + 1);
    out.users.push_back(std::move(user));
    return absl::OkStatus();
  }
  if (absl::ConsumePrefix(&name, kApiKeyDir)) {
    uint64_t id = 0;
    if (!ParseId(name, &id)) return Corrupt(key, "bad API key id in the key");
    control::AccountApiKey info;
    std::string key_hash_hex;
    std::vector<std::string> scopes;
    if (!record.has_value() || !ReadUnsigned(*record, "id", &info.id) || info.id != id ||
        !ReadUnsigned(*record, "user_id", &info.user_id) ||
        !ReadString(*record, "name", &info.name) ||
        !ReadString(*record, "key_prefix", &info.key_prefix) ||
        !ReadString(*record, "key_hash", &key_hash_hex) ||
        !ReadBool(*record, "is_active", &info.is_active) ||
        !ReadInteger(*record, "created_at_ms", &info.created_at_ms) ||
        !ReadInteger(*record, "expires_at_ms", &info.expires_at_ms) ||
        !ReadInteger(*record, "last_used_at_ms", &info.last_used_at_ms)) {
      return Corrupt(key, "not an API key record");
    }
    auto scopes_it = record->find("scopes");
    if (scopes_it == record->end() || !scopes_it->is_array()) return Corrupt(key, "no scopes");
    for (const Json& scope : *scopes_it) {
      if (!scope.is_string()) return Corrupt(key, "a scope is not a string");
      scopes.push_back(scope.get<std::string>());
    }
    absl::StatusOr<std::vector<std::string>> canonical = CanonicalScopes(scopes);
    if (!canonical.ok()) return Corrupt(key, canonical.status().message());
    info.scopes = ScopeBits(*canonical);
    if (key_hash_hex.size() != 2 * kKeyHashBytes ||
        !std::all_of(key_hash_hex.begin(), key_hash_hex.end(), absl::ascii_isxdigit)) {
      return Corrupt(key, "key_hash is not 64 hex digits");
    }
    info.key_hash = absl::HexStringToBytes(key_hash_hex);
    out.next_api_key_id = std::max(out.next_api_key_id, id + 1);
    out.keys.push_back(std::move(info));
    return absl::OkStatus();
  }
  if (absl::ConsumePrefix(&name, kRevokedDir)) {
    int64_t expires_at_s = 0;
    uint64_t user_id = 0;
    if (!record.has_value() || !ReadInteger(*record, "exp", &expires_at_s)) {
      return Corrupt(key, "not a revoked-token record");
    }
    (void)ReadUnsigned(*record, "user_id", &user_id);
    // One that expired is simply not needed any more.
    if (expires_at_s * 1000 > now_ms && !name.empty() && name.size() <= control::kMaxJtiBytes) {
      out.revoked.emplace_back(std::string(name),
                               control::RevokedTokenEntry{user_id, expires_at_s});
    }
    return absl::OkStatus();
  }
  if (name == kMovedName) return absl::OkStatus();
  // A record a newer version wrote: leave it alone rather than refuse to start.
  log(absl::StrCat("ignoring unknown account record ", Printable(key)));
  return absl::OkStatus();
}

}  // namespace

AuthStore::AuthStore(engine::Engine* engine, AuthConfig config)
    : engine_(engine),
      config_(std::move(config)),
      clock_(config_.clock != nullptr ? config_.clock : engine::SystemClock()),
      accounts_(config_.accounts != nullptr ? config_.accounts : &empty_accounts_),
      propose_(config_.propose) {}

AuthStore::~AuthStore() = default;

void AuthStore::UseControlPlane(control::AccountState* accounts,
                                std::function<absl::StatusOr<uint64_t>(std::string command)> propose) {
  propose_ = std::move(propose);
  accounts_.store(accounts, std::memory_order_release);
}

int64_t AuthStore::NowMs() const { return clock_->NowUnixMs(); }

void AuthStore::LogLine(absl::string_view message) const {
  if (config_.log) {
    config_.log(message);
  } else {
    std::fprintf(stderr, "logkvd auth: %.*s\n", static_cast<int>(message.size()), message.data());
  }
}

absl::Status AuthStore::NotReady() const {
  return absl::UnavailableError("accounts are not loaded yet on this node; try again shortly");
}

uint64_t AuthStore::credentials_generation() const { return state()->revocation_generation(); }

absl::StatusOr<uint64_t> AuthStore::ProposeAndAwait(
    std::string command, const std::function<bool(const control::Accounts&, uint64_t)>& done) {
  if (!propose_) return absl::UnavailableError("no control plane to propose to");
  absl::StatusOr<uint64_t> result = propose_(std::move(command));
  if (!result.ok()) {
    // The state machine's refusals are the request's; anything else (no
    // leader, a timeout) is worth retrying.
    const absl::StatusCode code = result.status().code();
    if (code == absl::StatusCode::kDeadlineExceeded || code == absl::StatusCode::kUnknown ||
        code == absl::StatusCode::kInternal || code == absl::StatusCode::kCancelled) {
      return absl::UnavailableError(
          absl::StrCat("the cluster did not apply the change: ", result.status().message()));
    }
    return result.status();
  }
  const uint64_t value = *result;
  // Applied on the leader; this node applies it within a heartbeat.
  if (!state()->Await([&](const control::Accounts& a) { return done(a, value); },
                        absl::Now() + config_.apply_timeout)) {
    return absl::UnavailableError(
        "the change was committed but this node has not applied it yet; try again shortly");
  }
  return value;
}

absl::StatusOr<uint64_t> AuthStore::ProposeAccess(
    std::string command, const std::function<bool(const control::Access&, uint64_t)>& done) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  return ProposeAccessWhileLoading(std::move(command), done);
}

absl::StatusOr<uint64_t> AuthStore::ProposeAccessWhileLoading(
    std::string command, const std::function<bool(const control::Access&, uint64_t)>& done) {
  control::AclState* access = access_.load(std::memory_order_acquire);
  if (access == nullptr || !propose_) {
    return absl::UnavailableError("no control plane to propose to");
  }
  absl::StatusOr<uint64_t> result = propose_(std::move(command));
  if (!result.ok()) {
    const absl::StatusCode code = result.status().code();
    if (code == absl::StatusCode::kDeadlineExceeded || code == absl::StatusCode::kUnknown ||
        code == absl::StatusCode::kInternal || code == absl::StatusCode::kCancelled) {
      return absl::UnavailableError(
          absl::StrCat("the cluster did not apply the change: ", result.status().message()));
    }
    return result.status();
  }
  const uint64_t value = *result;
  if (!access->Await([&](const control::Access& a) { return done(a, value); },
                     absl::Now() + config_.apply_timeout)) {
    return absl::UnavailableError(
        "the change was committed but this node has not applied it yet; try again shortly");
  }
  // Carry the commit to the other nodes at once (a membership lost, an ACL
  // narrowed), as after a revocation.
  SpreadCommit();
  return value;
}

absl::Status AuthStore::Load(int64_t requests_per_minute, int64_t burst) {
  if (absl::Status status = InitSodium(); !status.ok()) return status;
  if (NfkcCasefold() == nullptr) {
    return absl::InternalError("ICU's NFKC_Casefold normaliser is unavailable (ICU data missing?)");
  }
  if (config_.access_token_ttl_s <= 0 || config_.refresh_token_ttl_s <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("token lifetimes must be positive: access ",
                                                   config_.access_token_ttl_s, " s, refresh ",
                                                   config_.refresh_token_ttl_s, " s"));
  }
  // An unknown email is checked against this hash so that it costs as much as
  // a known one: response time must not tell which emails have accounts.
  {
    std::string random_password(32, '\0');
    randombytes_buf(random_password.data(), random_password.size());
    absl::StatusOr<std::string> dummy = HashPassword(random_password, config_.password_limits);
    if (!dummy.ok()) return dummy.status();
    dummy_password_hash_ = std::move(*dummy);
  }
  state()->SetListener({.on_revoked = config_.on_revoked, .on_rate_limit = config_.on_rate_limit});
  // The mode first: a node of the other mode stops here, before it changes
  // anything. Proposed by every node that loads (accepted when equal), so
  // the first one commits it; its answer comes after everything committed
  // before it, which this node has then applied.
  absl::StatusOr<uint64_t> mode = ProposeAndAwait(
      control::EncodeSetAuthMode(true, ActorOf({})), [](const control::Accounts& a, uint64_t) {
        return a.auth_mode == control::AuthModeCommitted::kOn;
      });
  if (!mode.ok()) return mode.status();
  if (absl::Status status = MoveLegacyAccounts(); !status.ok()) return status;
  if (absl::Status status = ImportRestoredAccounts(); !status.ok()) return status;
  if (absl::Status status = SettleSecret(); !status.ok()) return status;
  absl::StatusOr<uint64_t> limit = ProposeAndAwait(
      // The node's flags, as a reload commits them: with the same flags on
      // every node (as they should be) a start changes nothing.
      control::EncodeSetRateLimit(requests_per_minute, burst, /*only_if_unset=*/false,
                                  ActorOf({})),
      [](const control::Accounts& a, uint64_t) { return a.rate_limit_set; });
  if (!limit.ok()) return limit.status();
  if (config_.on_rate_limit) {
    const auto [rpm, committed_burst] = state()->Read([](const control::Accounts& a) {
      return std::make_pair(a.requests_per_minute, a.burst);
    });
    config_.on_rate_limit(rpm, committed_burst);
  }
  ready_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

absl::Status AuthStore::SettleSecret() {
  const std::string committed = state()->Read([](const control::Accounts& a) { return a.jwt_secret; });
  const std::string& configured = config_.jwt_secret;
  if (!configured.empty()) {
    if (committed != configured) {
      // A configured secret is put in force on every node: give every node
      // the same one (a rolling restart with a new one changes it once).
      if (!committed.empty()) {
        LogLine("the configured JWT secret replaces the cluster's: tokens signed with the old "
                "one are no longer accepted on any node");
      }
      absl::StatusOr<uint64_t> set =
          ProposeAndAwait(control::EncodeSetJwtSecret(configured, /*replace=*/true, ActorOf({})),
                          [&configured](const control::Accounts& a, uint64_t) {
                            return a.jwt_secret == configured;
                          });
      if (!set.ok()) return set.status();
    }
    if (configured.size() < kMinRecommendedSecretBytes) {
      LogLine(absl::StrCat("warning: the JWT secret is ", configured.size(), " bytes; use at least ",
                           kMinRecommendedSecretBytes,
                           " random bytes, or leave it unset to have one generated"));
    }
    return absl::OkStatus();
  }
  if (!committed.empty()) return absl::OkStatus();
  // Generated rather than fixed, and committed so that restarts and other
  // nodes do not log everyone out. Whoever can read a node's control-plane
  // files can forge tokens with it, but such a reader already has the data.
  std::string secret(kGeneratedSecretBytes, '\0');
  randombytes_buf(secret.data(), secret.size());
  absl::StatusOr<uint64_t> set = ProposeAndAwait(
      control::EncodeSetJwtSecret(secret, /*replace=*/false, ActorOf({})),
      [](const control::Accounts& a, uint64_t) { return !a.jwt_secret.empty(); });
  if (set.ok()) {
    LogLine("no JWT secret configured: generated one and committed it to the cluster");
    return absl::OkStatus();
  }
  // Another node's came first: that one holds.
  return absl::IsAlreadyExists(set.status()) ? absl::OkStatus() : set.status();
}

template <typename F>
auto AuthStore::WithSecret(F&& f) const {
  return state()->Read([&f](const control::Accounts& a) { return f(a.jwt_secret); });
}

absl::Status AuthStore::MoveLegacyAccounts() {
  if (engine_ == nullptr) return absl::OkStatus();
  const std::string moved_key = AuthKey(kMovedName);
  absl::StatusOr<engine::Record> moved = engine_->Get(moved_key);
  if (moved.ok()) return absl::OkStatus();  // moved by an earlier start
  if (!absl::IsNotFound(moved.status())) return moved.status();

  LegacyAccounts legacy;
  const int64_t now_ms = NowMs();
  auto log = [this](absl::string_view line) { LogLine(line); };
  engine::ScanOptions options;
  options.prefix = std::string(kAuthPrefix);
  options.limit = engine::kMaxScanLimit;
  // Once, at the first start: no key order built for it (see HintedHandoff::Load).
  options.build_key_order = false;
  for (;;) {
    absl::StatusOr<engine::ScanResult> page = engine_->Scan(options);
    if (!page.ok()) return page.status();
    for (const engine::ScanItem& item : page->items) {
      if (absl::Status status = ReadLegacyRecord(item.key, item.value, now_ms, legacy, log);
          !status.ok()) {
        return status;
      }
    }
    if (page->next_cursor.empty()) break;
    options.after_key = std::move(page->next_cursor);
  }
  if (!legacy.any) return absl::OkStatus();  // a data directory that never had accounts
  // A configured secret is the one in force (as it was before the move).
  if (!config_.jwt_secret.empty()) legacy.secret.clear();

  const auto [already_moved, has_other_accounts] =
      state()->Read([this](const control::Accounts& a) {
        return std::make_pair(a.import_done && a.import_source == config_.import_source,
                              !a.empty() && a.import_source != config_.import_source);
      });
  if (!already_moved) {
    if (has_other_accounts) {
      if (legacy.users.empty() && legacy.keys.empty()) {
        LogLine("this data directory's legacy account records hold no accounts; the cluster's "
                "accounts are used");
      } else {
        return absl::FailedPreconditionError(absl::StrCat(
            "this data directory holds ", legacy.users.size(), " account(s) of its own (kept "
            "by an older version in the node's engine) and the cluster already has accounts: "
            "accounts cannot be merged. Start this node on a new data directory to join, or "
            "start it alone to keep its accounts"));
      }
    } else {
      if (absl::Status status =
              ImportInCommands(config_.import_source, legacy.users, legacy.keys, legacy.revoked,
                               legacy.secret, legacy.next_user_id, legacy.next_api_key_id);
          !status.ok()) {
        return absl::Status(status.code(),
                            absl::StrCat("moving this node's accounts into the cluster's control "
                                         "plane: ",
                                         status.message()));
      }
      LogLine(absl::StrCat("moved ", legacy.users.size(), " account(s) and ", legacy.keys.size(),
                           " API key(s) from this node's engine into the cluster's control "
                           "plane; the engine's records are no longer read"));
    }
  }
  const Json record = {{"v", kRecordVersion},
                       {"users", legacy.users.size()},
                       {"api_keys", legacy.keys.size()}};
  absl::StatusOr<engine::WriteResult> written = engine_->Put(moved_key, SerializeJson(record));
  if (!written.ok()) {
    // Harmless: the next start sees the import done and writes it then.
    LogLine(absl::StrCat("noting the accounts' move failed: ", written.status().ToString()));
  }
  return absl::OkStatus();
}

absl::Status AuthStore::ImportInCommands(
    const std::string& source, const std::vector<control::AccountUser>& users,
    const std::vector<control::AccountApiKey>& keys,
    const std::vector<std::pair<std::string, control::RevokedTokenEntry>>& revoked,
    const std::string& secret, uint64_t next_user_id, uint64_t next_api_key_id) {
  // In a few commands: users, then keys (which name users), then used
  // tokens; the last carries the secret and the counters.
  const size_t chunks = std::max<size_t>(
      {1, (users.size() + kImportUsersPerCommand - 1) / kImportUsersPerCommand,
       (keys.size() + kImportKeysPerCommand - 1) / kImportKeysPerCommand,
       (revoked.size() + kImportTokensPerCommand - 1) / kImportTokensPerCommand});
  for (size_t i = 0; i < chunks; ++i) {
    auto slice = [i](const auto& all, size_t per) {
      const size_t begin = std::min(all.size(), i * per);
      const size_t end = std::min(all.size(), begin + per);
      return std::vector<typename std::decay_t<decltype(all)>::value_type>(
          all.begin() + static_cast<std::ptrdiff_t>(begin),
          all.begin() + static_cast<std::ptrdiff_t>(end));
    };
    const bool last = i + 1 == chunks;
    std::string command = control::EncodeImportAccounts(
        source, slice(users, kImportUsersPerCommand), slice(keys, kImportKeysPerCommand),
        slice(revoked, kImportTokensPerCommand), last ? secret : "", last ? next_user_id : 0,
        last ? next_api_key_id : 0, last, ActorOf({}));
    absl::StatusOr<uint64_t> imported = ProposeAndAwait(
        std::move(command), [last, &source](const control::Accounts& a, uint64_t) {
          return a.import_source == source && (!last || a.import_done);
        });
    if (!imported.ok()) return imported.status();
  }
  return absl::OkStatus();
}

absl::Status AuthStore::ImportRestoredAccounts() {
  // A restored node that joins a cluster (--seeds) takes nothing back: the
  // cluster's accounts and table are the ones.
  if (config_.restored_state_file.empty() || !config_.restored_starts_cluster) {
    return absl::OkStatus();
  }
  std::ifstream in(config_.restored_state_file, std::ios::binary);
  if (!in) return absl::OkStatus();  // not a restored data directory
  struct Taken {
    bool empty = true;         // the cluster has no accounts
    bool from_backup = false;  // its accounts are a backup's, all of them
    bool unfinished = false;   // a backup's, not all of them
  };
  auto taken = [this] {
    return state()->Read([](const control::Accounts& a) {
      const bool backup = a.import_source == "backup";
      return Taken{a.empty(), backup && a.import_done, backup && !a.import_done};
    });
  };
  const Taken before = taken();
  if (before.unfinished) {
    // Its chunks cannot be sent again (ids must rise), and the access table
    // would name users still to come: said, not finished.
    LogLine(
        "warning: the accounts of the restored backup were taken back only in part (a start "
        "stopped during the import); its access table is not taken back");
    return absl::OkStatus();
  }
  // The access table goes with the accounts: only into a cluster this node
  // starts, whose accounts are the backup's, all of them (a half-finished
  // import would leave users the table names to later sign-ups), once.
  control::AclState* access = access_.load(std::memory_order_acquire);
  const bool access_wanted =
      access != nullptr &&
      access->Read([](const control::Access& a) { return a.import_source.empty(); });
  if (!before.empty && !(before.from_backup && access_wanted)) {
    return absl::OkStatus();  // the cluster's are the ones
  }
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  control::ControlState restored;
  if (absl::Status status = restored.Restore(bytes); !status.ok()) {
    return absl::DataLossError(absl::StrCat("the control-plane state restored from a backup (",
                                            config_.restored_state_file,
                                            ") does not decode: ", status.message()));
  }
  // The accounts first: the access table names their users. (A start that
  // stopped between the two takes the table at the next.)
  if (before.empty) {
    if (absl::Status status = ImportRestoredAccountsOf(restored); !status.ok()) return status;
  }
  if (!access_wanted || !taken().from_backup) return absl::OkStatus();
  return ImportRestoredAccess(restored);
}

absl::Status AuthStore::ImportRestoredAccountsOf(const control::ControlState& restored) {
  const control::Accounts accounts = restored.accounts().Current();
  if (accounts.empty()) return absl::OkStatus();
  std::vector<control::AccountUser> users;
  for (const auto& [id, user] : accounts.users) users.push_back(user);
  std::vector<control::AccountApiKey> keys;
  for (const auto& [id, key] : accounts.api_keys) keys.push_back(key);
  std::vector<std::pair<std::string, control::RevokedTokenEntry>> revoked(
      accounts.revoked_tokens.begin(), accounts.revoked_tokens.end());
  if (absl::Status status =
          ImportInCommands("backup", users, keys, revoked,
                           config_.jwt_secret.empty() ? accounts.jwt_secret : "",
                           accounts.next_user_id, accounts.next_api_key_id);
      !status.ok()) {
    return absl::Status(status.code(), absl::StrCat("taking back the accounts of a backup: ",
                                                    status.message()));
  }
  LogLine(absl::StrCat("took back ", users.size(), " account(s) and ", keys.size(),
                       " API key(s) from the restored backup's control-plane state"));
  return absl::OkStatus();
}

absl::Status AuthStore::ImportRestoredAccess(const control::ControlState& restored) {
  const control::Access access = restored.access().Current();
  if (access.admins.empty() && access.groups.empty() && access.acls.empty()) {
    return absl::OkStatus();
  }
  const std::string what =
      absl::StrCat(access.admins.size(), " administrator grant(s), ", access.groups.size(),
                   " group(s) and ", access.acls.size(), " ACL entr(ies)");
  std::string command = control::EncodeImportAccess("backup", access, ActorOf({}));
  if (command.size() > control::kMaxCommandBytes) {
    // Said, with what it held, so that an operator sets it again
    // (docs/control-plane.md, "Backups").
    LogLine(absl::StrCat("warning: the restored backup's ", what, " take ", command.size(),
                         " bytes, more than one command of the control plane holds (",
                         control::kMaxCommandBytes,
                         "): not taken back; set them again (PUT /api/users/ID, POST "
                         "/api/groups, PUT /api/acl)"));
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> imported =
      ProposeAccessWhileLoading(std::move(command), [](const control::Access& a, uint64_t) {
        return !a.import_source.empty();
      });
  if (!imported.ok()) {
    if (absl::IsAlreadyExists(imported.status())) return absl::OkStatus();
    return absl::Status(imported.status().code(),
                        absl::StrCat("taking back the access table of a backup: ",
                                     imported.status().message()));
  }
  if (*imported == control::kAccessKept) {
    LogLine(absl::StrCat("the restored backup's ", what,
                         " are not taken back: the cluster has an access table of its own"));
    return absl::OkStatus();
  }
  LogLine(absl::StrCat("took back ", what, " from the restored backup's control-plane state"));
  return absl::OkStatus();
}

Tokens AuthStore::IssueTokens(const User& user) const {
  const int64_t now_s = NowMs() / 1000;
  JwtClaims claims;
  claims.user_id = user.id;
  claims.session_generation = user.session_generation;
  claims.issued_at_s = now_s;
  claims.type = TokenType::kAccess;
  claims.expires_at_s = now_s + config_.access_token_ttl_s;
  claims.jti = NewJwtId();
  Tokens tokens;
  JwtClaims refresh = claims;
  refresh.type = TokenType::kRefresh;
  refresh.expires_at_s = now_s + config_.refresh_token_ttl_s;
  refresh.jti = NewJwtId();
  WithSecret([&](const std::string& secret) {
    tokens.access_token = SignJwt(secret, claims);
    tokens.refresh_token = SignJwt(secret, refresh);
    return 0;
  });
  tokens.expires_in_seconds = config_.access_token_ttl_s;
  tokens.user = user;
  return tokens;
}

absl::Status AuthStore::GrantAdmins(const std::vector<std::string>& usernames,
                                    absl::flat_hash_set<uint64_t>* granted) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  const control::AclState* access = this->access();
  if (access == nullptr) return absl::UnavailableError("no access state to grant in");
  absl::Status first = absl::OkStatus();
  for (const std::string& username : usernames) {
    const std::string key = IdentityKey(username);
    const uint64_t id = state()->Read([&key](const control::Accounts& a) -> uint64_t {
      auto it = a.user_by_username_key.find(key);
      return it == a.user_by_username_key.end() ? 0 : it->second;
    });
    if (id == 0 || granted->contains(id)) continue;
    if (!access->IsAdmin(id)) {
      absl::StatusOr<uint64_t> done = ProposeAccess(
          control::EncodeSetAdmin(id, true, ActorOf({})),
          [id](const control::Access& a, uint64_t) { return a.IsAdmin(id); });
      if (!done.ok()) {
        if (first.ok()) first = done.status();
        continue;
      }
      LogLine(absl::StrCat("--admins: user ", id, " (", username, ") is an administrator"));
    }
    granted->insert(id);
  }
  return first;
}

control::Actor AuthStore::ActorOf(control::Actor actor) const {
  if (actor.kind == control::Actor::Kind::kUnknown) actor.kind = control::Actor::Kind::kNode;
  if (actor.node.empty() && config_.node_id) actor.node = config_.node_id();
  return actor;
}

// ---- Users and tokens ----------------------------------------------------------

absl::StatusOr<User> AuthStore::SignUp(absl::string_view email, absl::string_view username,
                                       absl::string_view password, control::Actor actor) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  if (absl::Status status = ValidateEmail(email); !status.ok()) return status;
  if (absl::Status status = ValidateUsername(username); !status.ok()) return status;
  if (absl::Status status = ValidatePassword(password); !status.ok()) return status;
  control::AccountUser user;
  user.email = std::string(email);
  user.username = std::string(username);
  user.email_key = IdentityKey(email);
  user.username_key = IdentityKey(username);
  // A quick answer for the common duplicate before paying for a hash; the
  // check that counts is the state machine's, in log order.
  absl::Status taken = state()->Read([&](const control::Accounts& a) {
    if (a.user_by_email_key.contains(user.email_key)) {
      return absl::AlreadyExistsError("email is already registered");
    }
    if (a.user_by_username_key.contains(user.username_key)) {
      return absl::AlreadyExistsError("username is already taken");
    }
    return absl::OkStatus();
  });
  if (!taken.ok()) return taken;
  // Hashing happens before proposing, off every lock and off Raft's loop.
  absl::StatusOr<std::string> hash = HashPassword(password, config_.password_limits);
  if (!hash.ok()) return hash.status();
  user.password_hash = std::move(*hash);
  user.created_at_ms = NowMs();
  absl::StatusOr<uint64_t> id = ProposeAndAwait(
      control::EncodeSignUp(user, ActorOf(std::move(actor))),
      [](const control::Accounts& a, uint64_t id) { return a.users.contains(id); });
  if (!id.ok()) return id.status();
  return state()->Read([&](const control::Accounts& a) { return UserOf(*a.FindUser(*id)); });
}

absl::StatusOr<Tokens> AuthStore::Login(absl::string_view email, absl::string_view password) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  const absl::Status invalid = absl::UnauthenticatedError("invalid email or password");
  std::optional<User> user;
  std::string hash;
  if (email.size() <= kMaxEmailBytes && password.size() <= kMaxPasswordBytes &&
      IsValidUtf8(email)) {
    const std::string email_key = IdentityKey(email);
    state()->Read([&](const control::Accounts& a) {
      auto id = a.user_by_email_key.find(email_key);
      if (id == a.user_by_email_key.end()) return;
      const control::AccountUser& found = a.users.at(id->second);
      user = UserOf(found);
      hash = found.password_hash;
    });
  }
  if (!user.has_value()) {
    // Same work as a real check, same answer.
    (void)VerifyPassword(dummy_password_hash_, password.substr(0, kMaxPasswordBytes));
    return invalid;
  }
  if (!VerifyPassword(hash, password)) return invalid;
  if (!user->is_active) return absl::UnauthenticatedError("account is disabled");
  return IssueTokens(*user);
}

std::string AuthStore::LoginName(absl::string_view email) const {
  if (email.size() > kMaxEmailBytes || !IsValidUtf8(email) || NfkcCasefold() == nullptr) {
    return std::string(email);
  }
  return IdentityKey(email);
}

absl::StatusOr<Tokens> AuthStore::Refresh(
    absl::string_view refresh_token, const std::function<absl::Status(uint64_t user_id)>& admit) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  const int64_t now_ms = NowMs();
  absl::StatusOr<JwtClaims> claims = WithSecret([&](const std::string& secret) {
    return VerifyJwt(secret, refresh_token, TokenType::kRefresh, now_ms / 1000);
  });
  if (!claims.ok()) return claims.status();
  absl::StatusOr<User> user = state()->Read([&](const control::Accounts& a) -> absl::StatusOr<User> {
    if (a.revoked_tokens.contains(claims->jti)) {
      return absl::UnauthenticatedError("refresh token already used or revoked");
    }
    return TokenUser(a, *claims);
  });
  if (!user.ok()) return user.status();
  if (admit) {
    if (absl::Status admitted = admit(user->id); !admitted.ok()) return admitted;
  }
  // Committed before new tokens exist, and refused for a jti already used on
  // any node: each refresh token works once in the whole cluster.
  absl::StatusOr<uint64_t> revoked = ProposeAndAwait(
      control::EncodeRevokeToken(claims->jti, user->id, claims->expires_at_s, now_ms / 1000),
      [&](const control::Accounts& a, uint64_t) { return a.revoked_tokens.contains(claims->jti); });
  if (!revoked.ok()) {
    if (absl::IsAlreadyExists(revoked.status())) {
      return absl::UnauthenticatedError("refresh token already used or revoked");
    }
    return revoked.status();
  }
  // Spending it may have ended the user's sessions (one account past its
  // share of the used tokens, AccountState's kMaxUserRevokedTokens), and
  // another command may have since: tokens are issued only to a session
  // that still stands.
  user = state()->Read(
      [&](const control::Accounts& a) -> absl::StatusOr<User> { return TokenUser(a, *claims); });
  if (!user.ok()) return user.status();
  return IssueTokens(*user);
}

absl::StatusOr<User> AuthStore::AuthenticateBearer(absl::string_view authorization) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  absl::string_view value = absl::StripAsciiWhitespace(authorization);
  constexpr absl::string_view kScheme = "Bearer ";
  // The scheme is case-insensitive (RFC 7235 section 2.1).
  if (value.size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "expected an Authorization header of the form Bearer <token>");
  }
  const absl::string_view token = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  if (token.empty()) return absl::UnauthenticatedError("missing bearer token");
  const int64_t now_s = NowMs() / 1000;
  absl::StatusOr<JwtClaims> claims = WithSecret([&](const std::string& secret) {
    return VerifyJwt(secret, token, TokenType::kAccess, now_s);
  });
  if (!claims.ok()) return claims.status();
  return state()->Read(
      [&](const control::Accounts& a) -> absl::StatusOr<User> { return TokenUser(a, *claims); });
}

absl::Status AuthStore::SetUserActive(uint64_t user_id, bool active, control::Actor actor) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  absl::StatusOr<uint64_t> done = ProposeAndAwait(
      control::EncodeSetUserActive(user_id, active, ActorOf(std::move(actor))),
      [user_id, active](const control::Accounts& a, uint64_t) {
        const control::AccountUser* user = a.FindUser(user_id);
        return user != nullptr && user->is_active == active;
      });
  if (done.ok()) SpreadCommit();
  return done.status();
}

absl::Status AuthStore::EndSessions(uint64_t user_id, control::Actor actor) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  absl::StatusOr<User> user = GetUser(user_id);
  if (!user.ok()) return user.status();
  const uint64_t before = user->session_generation;
  absl::StatusOr<uint64_t> done = ProposeAndAwait(
      control::EncodeEndSessions(user_id, ActorOf(std::move(actor))),
      [user_id, before](const control::Accounts& a, uint64_t) {
        const control::AccountUser* found = a.FindUser(user_id);
        return found != nullptr && found->session_generation > before;
      });
  if (done.ok()) SpreadCommit();
  return done.status();
}

std::vector<User> AuthStore::ListUsers() const {
  return state()->Read([](const control::Accounts& a) {
    std::vector<User> users;
    users.reserve(a.users.size());
    for (const auto& [id, user] : a.users) users.push_back(UserOf(user));
    return users;
  });
}

absl::StatusOr<User> AuthStore::GetUser(uint64_t user_id) const {
  return state()->Read([user_id](const control::Accounts& a) -> absl::StatusOr<User> {
    const control::AccountUser* user = a.FindUser(user_id);
    if (user == nullptr) return absl::NotFoundError(absl::StrCat("user ", user_id, " not found"));
    return UserOf(*user);
  });
}

absl::StatusOr<size_t> AuthStore::RevokeAllApiKeys(uint64_t user_id, control::Actor actor) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  if (absl::StatusOr<User> user = GetUser(user_id); !user.ok()) return user.status();
  size_t revoked = 0;
  for (const ApiKeyInfo& key : ListApiKeys(user_id)) {
    if (!key.is_active) continue;
    if (absl::Status status = RevokeApiKey(user_id, key.id, actor); !status.ok()) return status;
    ++revoked;
  }
  return revoked;
}

size_t AuthStore::UserCount() const {
  return state()->Read([](const control::Accounts& a) { return a.users.size(); });
}

// ---- API keys ------------------------------------------------------------------

absl::StatusOr<CreatedApiKey> AuthStore::CreateApiKey(uint64_t user_id, absl::string_view name,
                                                      const std::vector<std::string>& scopes,
                                                      int64_t expires_in_days,
                                                      control::Actor actor) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  if (name.empty() || name.size() > kMaxApiKeyNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("API key name must be 1 to ", kMaxApiKeyNameBytes, " bytes"));
  }
  if (!IsValidUtf8(name) || HasControlCharacter(name)) {
    return absl::InvalidArgumentError("API key name contains invalid characters");
  }
  absl::StatusOr<std::vector<std::string>> canonical = CanonicalScopes(scopes);
  if (!canonical.ok()) return canonical.status();
  if (expires_in_days < 0 || expires_in_days > kMaxApiKeyExpiryDays) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expires_in_days must be 0 (never) to ", kMaxApiKeyExpiryDays, ", got ", expires_in_days));
  }
  unsigned char random[kApiKeyRandomBytes];
  randombytes_buf(random, sizeof(random));
  CreatedApiKey created;
  created.key = absl::StrCat(
      kApiKeyMarker,
      Base64UrlEncode(absl::string_view(reinterpret_cast<const char*>(random), sizeof(random))));
  sodium_memzero(random, sizeof(random));
  assert(created.key.size() == kApiKeyBytes);
  control::AccountApiKey key;
  key.user_id = user_id;
  key.name = std::string(name);
  key.key_prefix = created.key.substr(0, kApiKeyPrefixCharacters);
  key.key_hash = HashApiKey(created.key);
  key.scopes = ScopeBits(*canonical);
  key.created_at_ms = NowMs();
  key.expires_at_ms = expires_in_days == 0 ? 0 : key.created_at_ms + expires_in_days * kMillisPerDay;
  absl::StatusOr<uint64_t> id = ProposeAndAwait(
      control::EncodeCreateApiKey(key, ActorOf(std::move(actor))),
      [](const control::Accounts& a, uint64_t id) { return a.api_keys.contains(id); });
  if (!id.ok()) {
    if (absl::IsAlreadyExists(id.status())) {
      return absl::InternalError("generated an API key that already exists");
    }
    return id.status();
  }
  created.info = state()->Read([&](const control::Accounts& a) { return InfoOf(a.api_keys.at(*id)); });
  return created;
}

std::vector<ApiKeyInfo> AuthStore::ListApiKeys(uint64_t user_id) {
  return state()->Read([user_id](const control::Accounts& a) {
    std::vector<ApiKeyInfo> keys;
    auto ids = a.api_keys_by_user.find(user_id);
    if (ids == a.api_keys_by_user.end()) return keys;
    keys.reserve(ids->second.size());
    for (uint64_t id : ids->second) keys.push_back(InfoOf(a.api_keys.at(id)));
    return keys;
  });
}

absl::Status AuthStore::RevokeApiKey(uint64_t user_id, uint64_t key_id, control::Actor actor) {
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  absl::StatusOr<uint64_t> done = ProposeAndAwait(
      control::EncodeRevokeApiKey(user_id, key_id, ActorOf(std::move(actor))),
      [key_id](const control::Accounts& a, uint64_t) {
        auto it = a.api_keys.find(key_id);
        return it != a.api_keys.end() && !it->second.is_active;
      });
  if (done.ok()) SpreadCommit();
  return done.status();
}

void AuthStore::SpreadCommit() {
  // Followers learn that an entry is committed from the leader's next
  // message, a heartbeat (100 ms) when nothing else is proposed. An empty
  // command right behind a revocation carries its commit to every node at
  // once (in about a round trip), so it takes effect there sooner. Its own
  // answer does not matter.
  if (propose_) (void)propose_(control::EncodeTouchApiKeys({}));
}

absl::Status AuthStore::RecheckApiKey(Principal* principal) {
  if (principal->expires_at_ms != 0 && NowMs() >= principal->expires_at_ms) {
    return absl::UnauthenticatedError("API key expired");
  }
  const uint64_t generation = credentials_generation();
  if (generation == principal->generation) return absl::OkStatus();
  absl::Status status = state()->Read([principal](const control::Accounts& a) {
    auto it = a.api_keys.find(principal->api_key_id);
    if (it == a.api_keys.end()) return absl::UnauthenticatedError("invalid API key");
    if (!it->second.is_active) return absl::UnauthenticatedError("API key revoked");
    const control::AccountUser* user = a.FindUser(it->second.user_id);
    if (user == nullptr || !user->is_active) {
      return absl::UnauthenticatedError("the API key's user is disabled");
    }
    return absl::OkStatus();
  });
  if (status.ok()) principal->generation = generation;
  return status;
}

absl::StatusOr<Principal> AuthStore::AuthenticateApiKey(absl::string_view key) {
  // Before the accounts are loaded no key is known yet: "try again", not
  // "invalid", which a client would take for a bad credential.
  if (!ready_.load(std::memory_order_acquire)) return NotReady();
  // Made only when needed: a Status with a message allocates.
  auto invalid = [] { return absl::UnauthenticatedError("invalid API key"); };
  // Only the shape of our keys is worth a hash; anything else cannot match.
  if (key.size() != kApiKeyBytes || !absl::StartsWith(key, kApiKeyMarker)) return invalid();
  unsigned char hash[kKeyHashBytes];
  crypto_generichash(hash, sizeof(hash), reinterpret_cast<const unsigned char*>(key.data()),
                     key.size(), /*key=*/nullptr, 0);
  const absl::string_view hash_view(reinterpret_cast<const char*>(hash), sizeof(hash));
  const int64_t now_ms = NowMs();
  Principal principal;
  // Read before the key is: a revocation after this point changes it, so
  // RecheckApiKey looks again.
  principal.generation = credentials_generation();
  absl::Status status = state()->Read([&](const control::Accounts& a) -> absl::Status {
    const control::AccountApiKey* entry = a.FindApiKeyByHash(hash_view);
    if (entry == nullptr) return invalid();
    // The table lookup already matched, but the comparison the decision rests
    // on is the constant-time one.
    if (sodium_memcmp(entry->key_hash.data(), hash, sizeof(hash)) != 0) return invalid();
    if (!entry->is_active) return absl::UnauthenticatedError("API key revoked");
    if (entry->expires_at_ms != 0 && now_ms >= entry->expires_at_ms) {
      return absl::UnauthenticatedError("API key expired");
    }
    const control::AccountUser* user = a.FindUser(entry->user_id);
    if (user == nullptr || !user->is_active) {
      return absl::UnauthenticatedError("the API key's user is disabled");
    }
    principal.user_id = entry->user_id;
    principal.api_key_id = entry->id;
    principal.expires_at_ms = entry->expires_at_ms;
    principal.can_read = (entry->scopes & control::kScopeRead) != 0;
    principal.can_write = (entry->scopes & control::kScopeWrite) != 0;
    // A maximum, so racing readers cannot move the time backwards. The dirty
    // flag is set after the time: a flush that clears it reads this time or a later one.
    std::atomic<int64_t>& used = entry->local.used_at_ms;
    int64_t seen = used.load(std::memory_order_relaxed);
    while (seen < now_ms && !used.compare_exchange_weak(seen, now_ms, std::memory_order_release,
                                                        std::memory_order_relaxed)) {
    }
    if (seen < now_ms && !entry->local.dirty.exchange(true, std::memory_order_acq_rel)) {
      absl::MutexLock dirty_lock(&dirty_mu_);
      dirty_api_keys_.push_back(entry->id);
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return principal;
}

absl::StatusOr<size_t> AuthStore::FlushLastUsed() {
  if (!ready_.load(std::memory_order_acquire)) return 0;
  absl::MutexLock flush_lock(&flush_mu_);
  std::vector<uint64_t> ids;
  {
    absl::MutexLock dirty_lock(&dirty_mu_);
    ids.swap(dirty_api_keys_);
  }
  if (ids.empty()) return 0;
  std::vector<std::pair<uint64_t, int64_t>> uses;
  uses.reserve(ids.size());
  state()->Read([&](const control::Accounts& a) {
    for (uint64_t id : ids) {
      auto it = a.api_keys.find(id);
      if (it == a.api_keys.end()) continue;
      // Cleared before the time is read: a use after this point marks the
      // key again and goes with the next flush.
      if (!it->second.local.dirty.exchange(false, std::memory_order_acq_rel)) continue;
      uses.emplace_back(id, it->second.local.used_at_ms.load(std::memory_order_acquire));
    }
  });
  for (size_t begin = 0; begin < uses.size(); begin += kTouchesPerCommand) {
    const size_t end = std::min(uses.size(), begin + kTouchesPerCommand);
    std::vector<std::pair<uint64_t, int64_t>> batch(uses.begin() + static_cast<std::ptrdiff_t>(begin),
                                                    uses.begin() + static_cast<std::ptrdiff_t>(end));
    absl::StatusOr<uint64_t> done =
        propose_ ? propose_(control::EncodeTouchApiKeys(batch))
                        : absl::StatusOr<uint64_t>(absl::UnavailableError("no control plane"));
    if (done.ok()) continue;
    // Whatever was not carried is marked again for the next flush.
    state()->Read([&](const control::Accounts& a) {
      for (size_t k = begin; k < uses.size(); ++k) {
        auto it = a.api_keys.find(uses[k].first);
        if (it == a.api_keys.end()) continue;
        if (!it->second.local.dirty.exchange(true, std::memory_order_acq_rel)) {
          absl::MutexLock dirty_lock(&dirty_mu_);
          dirty_api_keys_.push_back(uses[k].first);
        }
      }
    });
    return done.status();
  }
  return uses.size();
}

}  // namespace logkv::server::auth
