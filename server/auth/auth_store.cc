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
// The engine refuses TTLs beyond 100 years (engine.cc); refresh TTLs are capped below.
constexpr int64_t kMaxEngineTtlMs = 100ll * 365 * 24 * 3600 * 1000;
constexpr int64_t kMillisPerDay = 24ll * 3600 * 1000;

// Sub-namespaces of kAuthPrefix (see the layout in auth_store.h).
constexpr absl::string_view kSecretName = "secret";
constexpr absl::string_view kNextUserName = "next/user";
constexpr absl::string_view kNextApiKeyName = "next/apikey";
constexpr absl::string_view kUserDir = "user/";
constexpr absl::string_view kApiKeyDir = "apikey/";
constexpr absl::string_view kRevokedDir = "revoked/";

std::string AuthKey(absl::string_view name) { return absl::StrCat(kAuthPrefix, name); }
std::string IdKey(absl::string_view dir, uint64_t id) {
  return absl::StrCat(kAuthPrefix, dir, absl::StrFormat("%020u", id));
}
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

// The engine's failure while writing an account record, as the status a
// client should see: a full or read-only disk is worth retrying (503);
// anything else is the server's fault (500), never the request's. The
// engine's message names files of the server: it is logged, not answered.
absl::Status WriteError(const absl::Status& status, absl::string_view key,
                        const std::function<void(absl::string_view)>& log) {
  log(absl::StrCat("storing account record ", Printable(key), " failed: ", status.ToString()));
  const std::string message = absl::StrCat(
      "storing the account record failed (", absl::StatusCodeToString(status.code()),
      "); the server log has the details");
  if (absl::IsUnavailable(status) || absl::IsResourceExhausted(status)) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
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

AuthStore::AuthStore(engine::Engine* engine, AuthConfig config)
    : engine_(engine),
      config_(std::move(config)),
      clock_(config_.clock != nullptr ? config_.clock : engine::SystemClock()) {
  assert(engine_ != nullptr);
}

AuthStore::~AuthStore() = default;

int64_t AuthStore::NowMs() const { return clock_->NowUnixMs(); }

void AuthStore::LogLine(absl::string_view message) const {
  if (config_.log) {
    config_.log(message);
  } else {
    std::fprintf(stderr, "logkvd auth: %.*s\n", static_cast<int>(message.size()), message.data());
  }
}

absl::Status AuthStore::Write(absl::string_view key, absl::string_view value, int64_t ttl_ms) {
  engine::WriteOptions options;
  options.ttl_ms = ttl_ms;
  absl::StatusOr<engine::WriteResult> result = engine_->Put(key, value, options);
  if (!result.ok()) {
    return WriteError(result.status(), key, [this](absl::string_view line) { LogLine(line); });
  }
  return absl::OkStatus();
}

absl::Status AuthStore::LoadSecret() {
  if (!config_.jwt_secret.empty()) {
    jwt_secret_ = config_.jwt_secret;
    if (jwt_secret_.size() < kMinRecommendedSecretBytes) {
      LogLine(absl::StrCat("warning: the JWT secret is ", jwt_secret_.size(),
                           " bytes; use at least ", kMinRecommendedSecretBytes,
                           " random bytes, or leave it unset to have one generated"));
    }
    return absl::OkStatus();
  }
  const std::string key = AuthKey(kSecretName);
  absl::StatusOr<engine::Record> stored = engine_->Get(key);
  if (stored.ok()) {
    std::optional<Json> record = ParseRecord(stored->value);
    std::string encoded;
    if (!record.has_value() || !ReadString(*record, "hs256_key", &encoded)) {
      return Corrupt(key, "expected {\"v\":1,\"hs256_key\":...}");
    }
    std::optional<std::string> secret = Base64UrlDecode(encoded);
    if (!secret.has_value() || secret->size() != kGeneratedSecretBytes) {
      return Corrupt(key, "hs256_key is not 32 bytes of base64url");
    }
    jwt_secret_ = std::move(*secret);
    return absl::OkStatus();
  }
  if (!absl::IsNotFound(stored.status())) return stored.status();
  // Generated rather than fixed, and persisted so that restarts do not log
  // everyone out. Whoever can read the data directory can forge tokens with
  // it, but such a reader already has every key and value.
  std::string secret(kGeneratedSecretBytes, '\0');
  randombytes_buf(secret.data(), secret.size());
  const Json record = {{"v", kRecordVersion}, {"hs256_key", Base64UrlEncode(secret)}};
  if (absl::Status status = Write(key, SerializeJson(record)); !status.ok()) return status;
  jwt_secret_ = std::move(secret);
  LogLine("no JWT secret configured: generated one and stored it in the data directory");
  return absl::OkStatus();
}

absl::Status AuthStore::Load() {
  if (absl::Status status = InitSodium(); !status.ok()) return status;
  if (NfkcCasefold() == nullptr) {
    return absl::InternalError("ICU's NFKC_Casefold normaliser is unavailable (ICU data missing?)");
  }
  if (config_.access_token_ttl_s <= 0 || config_.refresh_token_ttl_s <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("token lifetimes must be positive: access ",
                                                   config_.access_token_ttl_s, " s, refresh ",
                                                   config_.refresh_token_ttl_s, " s"));
  }
  if (absl::Status status = LoadSecret(); !status.ok()) return status;
  // An unknown email is checked against this hash so that it costs as much as
  // a known one: response time must not tell which emails have accounts.
  {
    std::string random_password(32, '\0');
    randombytes_buf(random_password.data(), random_password.size());
    absl::StatusOr<std::string> dummy = HashPassword(random_password, config_.password_limits);
    if (!dummy.ok()) return dummy.status();
    dummy_password_hash_ = std::move(*dummy);
  }

  absl::MutexLock write_lock(&write_mu_);
  absl::MutexLock lock(&mu_);
  assert(!loaded_);
  loaded_ = true;
  engine::ScanOptions options;
  options.prefix = std::string(kAuthPrefix);
  options.limit = engine::kMaxScanLimit;
  for (;;) {
    absl::StatusOr<engine::ScanResult> page = engine_->Scan(options);
    if (!page.ok()) return page.status();
    for (const engine::ScanItem& item : page->items) {
      if (absl::Status status = LoadRecord(item.key, item.value); !status.ok()) return status;
    }
    if (page->next_cursor.empty()) break;
    options.after_key = std::move(page->next_cursor);
  }
  return absl::OkStatus();
}

absl::Status AuthStore::LoadRecord(absl::string_view key, absl::string_view value) {
  absl::string_view name = key.substr(kAuthPrefix.size());
  if (name == kSecretName) return absl::OkStatus();  // LoadSecret's

  if (name == kNextUserName || name == kNextApiKeyName) {
    uint64_t next = 0;
    if (!absl::SimpleAtoi(value, &next) || next == 0) return Corrupt(key, "not a positive number");
    uint64_t& counter = name == kNextUserName ? next_user_id_ : next_api_key_id_;
    counter = std::max(counter, next);
    return absl::OkStatus();
  }

  std::optional<Json> record = ParseRecord(value);
  if (absl::ConsumePrefix(&name, kUserDir)) {
    uint64_t id = 0;
    if (!ParseId(name, &id)) return Corrupt(key, "bad user id in the key");
    UserEntry entry;
    if (!record.has_value() || !ReadUnsigned(*record, "id", &entry.user.id) ||
        entry.user.id != id || !ReadString(*record, "email", &entry.user.email) ||
        !ReadString(*record, "username", &entry.user.username) ||
        !ReadString(*record, "password_hash", &entry.password_hash) ||
        !ReadBool(*record, "is_active", &entry.user.is_active) ||
        !ReadInteger(*record, "created_at_ms", &entry.user.created_at_ms)) {
      return Corrupt(key, "not a user record");
    }
    // What any version's sign-up guaranteed. Later versions refuse more
    // (format characters, control characters in passwords): accounts made
    // before still load.
    if (entry.user.email.empty() || !IsValidUtf8(entry.user.email) ||
        entry.user.username.empty() || !IsValidUtf8(entry.user.username)) {
      return Corrupt(key, "invalid email or username");
    }
    // Names that only NFKC_Casefold makes equal (an earlier version compared
    // ASCII case only) were two accounts: both stay, and the older keeps the
    // name for sign-in.
    if (!user_by_email_.emplace(IdentityKey(entry.user.email), id).second) {
      LogLine(absl::StrCat("user ", id, "'s email is another user's once normalised: signing in "
                           "with it reaches the older account"));
    }
    if (!user_by_username_.emplace(IdentityKey(entry.user.username), id).second) {
      LogLine(absl::StrCat("user ", id, "'s username is another user's once normalised"));
    }
    next_user_id_ = std::max(next_user_id_, id + 1);
    users_.emplace(id, std::move(entry));
    return absl::OkStatus();
  }

  if (absl::ConsumePrefix(&name, kApiKeyDir)) {
    uint64_t id = 0;
    if (!ParseId(name, &id)) return Corrupt(key, "bad API key id in the key");
    auto entry = std::make_unique<ApiKeyEntry>();
    ApiKeyInfo& info = entry->info;
    std::string key_hash_hex;
    std::vector<std::string> scopes;
    int64_t last_used_at_ms = 0;
    if (!record.has_value() || !ReadUnsigned(*record, "id", &info.id) || info.id != id ||
        !ReadUnsigned(*record, "user_id", &info.user_id) ||
        !ReadString(*record, "name", &info.name) ||
        !ReadString(*record, "key_prefix", &info.key_prefix) ||
        !ReadString(*record, "key_hash", &key_hash_hex) ||
        !ReadBool(*record, "is_active", &info.is_active) ||
        !ReadInteger(*record, "created_at_ms", &info.created_at_ms) ||
        !ReadInteger(*record, "expires_at_ms", &info.expires_at_ms) ||
        !ReadInteger(*record, "last_used_at_ms", &last_used_at_ms)) {
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
    info.scopes = std::move(*canonical);
    if (key_hash_hex.size() != 2 * kKeyHashBytes ||
        !std::all_of(key_hash_hex.begin(), key_hash_hex.end(), absl::ascii_isxdigit)) {
      return Corrupt(key, "key_hash is not 64 hex digits");
    }
    entry->key_hash = absl::HexStringToBytes(key_hash_hex);
    entry->last_used_at_ms.store(last_used_at_ms, std::memory_order_relaxed);
    if (api_key_by_hash_.contains(entry->key_hash)) {
      return Corrupt(key, "the same key hash belongs to another API key");
    }
    next_api_key_id_ = std::max(next_api_key_id_, id + 1);
    InsertApiKeyLocked(std::move(entry));
    return absl::OkStatus();
  }

  if (absl::ConsumePrefix(&name, kRevokedDir)) {
    int64_t expires_at_s = 0;
    if (!record.has_value() || !ReadInteger(*record, "exp", &expires_at_s)) {
      return Corrupt(key, "not a revoked-token record");
    }
    // The engine's TTL normally removes these first; one it has not swept yet
    // is simply not needed any more.
    if (expires_at_s * 1000 > NowMs()) revoked_jtis_.emplace(std::string(name), expires_at_s);
    return absl::OkStatus();
  }

  // A record a newer version wrote: leave it alone rather than refuse to start.
  LogLine(absl::StrCat("ignoring unknown account record ", Printable(key)));
  return absl::OkStatus();
}

void AuthStore::InsertApiKeyLocked(std::unique_ptr<ApiKeyEntry> entry) {
  ApiKeyEntry* raw = entry.get();
  api_key_by_hash_.emplace(raw->key_hash, raw);
  api_keys_by_user_[raw->info.user_id].push_back(raw->info.id);
  // Load meets ids in increasing order and later ids are always larger, so
  // each user's list stays oldest first.
  api_keys_.emplace(raw->info.id, std::move(entry));
}

std::string AuthStore::UserRecord(const UserEntry& entry) const {
  const Json record = {{"v", kRecordVersion},
                       {"id", entry.user.id},
                       {"email", entry.user.email},
                       {"username", entry.user.username},
                       {"password_hash", entry.password_hash},
                       {"is_active", entry.user.is_active},
                       {"created_at_ms", entry.user.created_at_ms}};
  return SerializeJson(record);
}

std::string AuthStore::ApiKeyRecord(const ApiKeyInfo& info, absl::string_view key_hash) const {
  const Json record = {{"v", kRecordVersion},
                       {"id", info.id},
                       {"user_id", info.user_id},
                       {"name", info.name},
                       {"key_prefix", info.key_prefix},
                       {"key_hash", absl::BytesToHexString(key_hash)},
                       {"scopes", info.scopes},
                       {"is_active", info.is_active},
                       {"created_at_ms", info.created_at_ms},
                       {"expires_at_ms", info.expires_at_ms},
                       {"last_used_at_ms", info.last_used_at_ms}};
  return SerializeJson(record);
}

ApiKeyInfo AuthStore::SnapshotLocked(const ApiKeyEntry& entry) const {
  ApiKeyInfo info = entry.info;
  info.last_used_at_ms = entry.last_used_at_ms.load(std::memory_order_acquire);
  return info;
}

// ---- Users and tokens ----------------------------------------------------------

absl::StatusOr<User> AuthStore::SignUp(absl::string_view email, absl::string_view username,
                                       absl::string_view password) {
  if (absl::Status status = ValidateEmail(email); !status.ok()) return status;
  if (absl::Status status = ValidateUsername(username); !status.ok()) return status;
  if (absl::Status status = ValidatePassword(password); !status.ok()) return status;
  const std::string email_key = IdentityKey(email);
  const std::string username_key = IdentityKey(username);
  auto taken = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) -> absl::Status {
    if (user_by_email_.contains(email_key)) {
      return absl::AlreadyExistsError("email is already registered");
    }
    if (user_by_username_.contains(username_key)) {
      return absl::AlreadyExistsError("username is already taken");
    }
    return absl::OkStatus();
  };
  // A quick answer for the common duplicate before paying for a hash; the
  // check that counts is repeated under write_mu_ below.
  {
    absl::ReaderMutexLock lock(&mu_);
    if (absl::Status status = taken(); !status.ok()) return status;
  }
  // Hashing happens outside every lock: sign-ups must not queue behind one
  // another's argon2 work.
  absl::StatusOr<std::string> hash = HashPassword(password, config_.password_limits);
  if (!hash.ok()) return hash.status();

  absl::MutexLock write_lock(&write_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    if (absl::Status status = taken(); !status.ok()) return status;
  }
  UserEntry entry;
  entry.user.id = next_user_id_++;
  entry.user.email = std::string(email);
  entry.user.username = std::string(username);
  entry.user.is_active = true;
  entry.user.created_at_ms = NowMs();
  entry.password_hash = std::move(*hash);
  // The counter first: if the record write then fails, the id is skipped,
  // never handed out twice.
  if (absl::Status status = Write(AuthKey(kNextUserName), absl::StrCat(next_user_id_));
      !status.ok()) {
    return status;
  }
  if (absl::Status status = Write(IdKey(kUserDir, entry.user.id), UserRecord(entry));
      !status.ok()) {
    return status;
  }
  User user = entry.user;
  absl::MutexLock lock(&mu_);
  user_by_email_.emplace(email_key, user.id);
  user_by_username_.emplace(username_key, user.id);
  users_.emplace(user.id, std::move(entry));
  return user;
}

Tokens AuthStore::IssueTokens(const User& user) const {
  const int64_t now_s = NowMs() / 1000;
  JwtClaims claims;
  claims.user_id = user.id;
  claims.issued_at_s = now_s;
  claims.type = TokenType::kAccess;
  claims.expires_at_s = now_s + config_.access_token_ttl_s;
  claims.jti = NewJwtId();
  Tokens tokens;
  tokens.access_token = SignJwt(jwt_secret_, claims);
  claims.type = TokenType::kRefresh;
  claims.expires_at_s = now_s + config_.refresh_token_ttl_s;
  claims.jti = NewJwtId();
  tokens.refresh_token = SignJwt(jwt_secret_, claims);
  tokens.expires_in_seconds = config_.access_token_ttl_s;
  tokens.user = user;
  return tokens;
}

absl::StatusOr<Tokens> AuthStore::Login(absl::string_view email, absl::string_view password) {
  const absl::Status invalid = absl::UnauthenticatedError("invalid email or password");
  std::optional<User> user;
  std::string hash;
  if (email.size() <= kMaxEmailBytes && password.size() <= kMaxPasswordBytes) {
    absl::ReaderMutexLock lock(&mu_);
    auto id = IsValidUtf8(email) ? user_by_email_.find(IdentityKey(email)) : user_by_email_.end();
    if (id != user_by_email_.end()) {
      const UserEntry& entry = users_.at(id->second);
      user = entry.user;
      hash = entry.password_hash;
    }
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

absl::StatusOr<Tokens> AuthStore::Refresh(absl::string_view refresh_token) {
  const int64_t now_ms = NowMs();
  absl::StatusOr<JwtClaims> claims =
      VerifyJwt(jwt_secret_, refresh_token, TokenType::kRefresh, now_ms / 1000);
  if (!claims.ok()) return claims.status();

  absl::MutexLock write_lock(&write_mu_);
  User user;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (revoked_jtis_.contains(claims->jti)) {
      return absl::UnauthenticatedError("refresh token already used or revoked");
    }
    auto it = users_.find(claims->user_id);
    if (it == users_.end() || !it->second.user.is_active) {
      return absl::UnauthenticatedError("the token's user no longer exists or is disabled");
    }
    user = it->second.user;
  }
  // Persisted before new tokens exist, so a crash cannot make the old token
  // usable again; the engine drops the record once the token would have expired anyway.
  const int64_t ttl_ms =
      std::clamp<int64_t>(claims->expires_at_s * 1000 - now_ms, 1, kMaxEngineTtlMs);
  const Json record = {{"v", kRecordVersion}, {"user_id", user.id}, {"exp", claims->expires_at_s}};
  if (absl::Status status =
          Write(absl::StrCat(kAuthPrefix, kRevokedDir, claims->jti), SerializeJson(record), ttl_ms);
      !status.ok()) {
    return status;
  }
  {
    absl::MutexLock lock(&mu_);
    revoked_jtis_.emplace(claims->jti, claims->expires_at_s);
    if (revoked_jtis_.size() >= revoked_prune_size_) {
      const int64_t now_s = now_ms / 1000;
      absl::erase_if(revoked_jtis_, [now_s](const auto& entry) { return entry.second <= now_s; });
      // Doubling the threshold keeps pruning amortised O(1) per refresh.
      revoked_prune_size_ = std::max<size_t>(1024, 2 * revoked_jtis_.size());
    }
  }
  return IssueTokens(user);
}

absl::StatusOr<User> AuthStore::AuthenticateBearer(absl::string_view authorization) {
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
  absl::StatusOr<JwtClaims> claims =
      VerifyJwt(jwt_secret_, token, TokenType::kAccess, NowMs() / 1000);
  if (!claims.ok()) return claims.status();
  absl::ReaderMutexLock lock(&mu_);
  auto it = users_.find(claims->user_id);
  if (it == users_.end() || !it->second.user.is_active) {
    return absl::UnauthenticatedError("the token's user no longer exists or is disabled");
  }
  return it->second.user;
}

size_t AuthStore::UserCount() const {
  absl::ReaderMutexLock lock(&mu_);
  return users_.size();
}

// ---- API keys ------------------------------------------------------------------

absl::StatusOr<CreatedApiKey> AuthStore::CreateApiKey(uint64_t user_id, absl::string_view name,
                                                      const std::vector<std::string>& scopes,
                                                      int64_t expires_in_days) {
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
  auto entry = std::make_unique<ApiKeyEntry>();
  entry->key_hash = HashApiKey(created.key);
  ApiKeyInfo& info = entry->info;
  info.user_id = user_id;
  info.name = std::string(name);
  info.key_prefix = created.key.substr(0, kApiKeyPrefixCharacters);
  info.scopes = std::move(*canonical);
  info.is_active = true;
  info.created_at_ms = NowMs();
  info.expires_at_ms =
      expires_in_days == 0 ? 0 : info.created_at_ms + expires_in_days * kMillisPerDay;

  absl::MutexLock write_lock(&write_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto user = users_.find(user_id);
    if (user == users_.end() || !user->second.user.is_active) {
      return absl::NotFoundError(absl::StrCat("user ", user_id, " does not exist or is disabled"));
    }
    size_t active = 0;
    if (auto ids = api_keys_by_user_.find(user_id); ids != api_keys_by_user_.end()) {
      for (uint64_t id : ids->second) {
        const ApiKeyInfo& other = api_keys_.at(id)->info;
        if (other.is_active &&
            (other.expires_at_ms == 0 || other.expires_at_ms > info.created_at_ms)) {
          ++active;
        }
      }
    }
    if (active >= kMaxActiveApiKeysPerUser) {
      return absl::ResourceExhaustedError(absl::StrCat("user ", user_id, " already has ", active,
                                                       " active API keys; revoke one first"));
    }
    // 2^-256 odds, but a collision would let one key stand for another.
    if (api_key_by_hash_.contains(entry->key_hash)) {
      return absl::InternalError("generated an API key that already exists");
    }
  }
  info.id = next_api_key_id_++;
  if (absl::Status status = Write(AuthKey(kNextApiKeyName), absl::StrCat(next_api_key_id_));
      !status.ok()) {
    return status;
  }
  if (absl::Status status = Write(IdKey(kApiKeyDir, info.id), ApiKeyRecord(info, entry->key_hash));
      !status.ok()) {
    return status;
  }
  created.info = info;
  absl::MutexLock lock(&mu_);
  InsertApiKeyLocked(std::move(entry));
  return created;
}

std::vector<ApiKeyInfo> AuthStore::ListApiKeys(uint64_t user_id) {
  std::vector<ApiKeyInfo> keys;
  absl::ReaderMutexLock lock(&mu_);
  auto ids = api_keys_by_user_.find(user_id);
  if (ids == api_keys_by_user_.end()) return keys;
  keys.reserve(ids->second.size());
  for (uint64_t id : ids->second) keys.push_back(SnapshotLocked(*api_keys_.at(id)));
  return keys;
}

absl::Status AuthStore::RevokeApiKey(uint64_t user_id, uint64_t key_id) {
  absl::MutexLock write_lock(&write_mu_);
  ApiKeyInfo info;
  std::string key_hash;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = api_keys_.find(key_id);
    // Someone else's key is "not found" too: ids must not reveal other users' keys.
    if (it == api_keys_.end() || it->second->info.user_id != user_id) {
      return absl::NotFoundError(absl::StrCat("API key ", key_id, " not found"));
    }
    if (!it->second->info.is_active) return absl::OkStatus();
    info = SnapshotLocked(*it->second);
    key_hash = it->second->key_hash;
  }
  info.is_active = false;
  if (absl::Status status = Write(IdKey(kApiKeyDir, key_id), ApiKeyRecord(info, key_hash));
      !status.ok()) {
    return status;
  }
  {
    absl::MutexLock lock(&mu_);
    api_keys_.at(key_id)->info.is_active = false;
  }
  // After the key is inactive: a session that sees the new generation finds it so.
  credentials_generation_.fetch_add(1, std::memory_order_acq_rel);
  if (config_.on_revoked) config_.on_revoked();
  return absl::OkStatus();
}

absl::Status AuthStore::RecheckApiKey(Principal* principal) {
  if (principal->expires_at_ms != 0 && NowMs() >= principal->expires_at_ms) {
    return absl::UnauthenticatedError("API key expired");
  }
  const uint64_t generation = credentials_generation();
  if (generation == principal->generation) return absl::OkStatus();
  absl::ReaderMutexLock lock(&mu_);
  auto it = api_keys_.find(principal->api_key_id);
  if (it == api_keys_.end()) return absl::UnauthenticatedError("invalid API key");
  if (!it->second->info.is_active) return absl::UnauthenticatedError("API key revoked");
  auto user = users_.find(it->second->info.user_id);
  if (user == users_.end() || !user->second.user.is_active) {
    return absl::UnauthenticatedError("the API key's user is disabled");
  }
  principal->generation = generation;
  return absl::OkStatus();
}

absl::StatusOr<Principal> AuthStore::AuthenticateApiKey(absl::string_view key) {
  // Made only when needed: a Status with a message allocates.
  auto invalid = [] { return absl::UnauthenticatedError("invalid API key"); };
  // Only the shape of our keys is worth a hash; anything else cannot match.
  if (key.size() != kApiKeyBytes || !absl::StartsWith(key, kApiKeyMarker)) return invalid();
  unsigned char hash[kKeyHashBytes];
  crypto_generichash(hash, sizeof(hash), reinterpret_cast<const unsigned char*>(key.data()),
                     key.size(), /*key=*/nullptr, 0);
  const absl::string_view hash_view(reinterpret_cast<const char*>(hash), sizeof(hash));
  const int64_t now_ms = NowMs();
  bool newly_dirty = false;
  Principal principal;
  // Read before the key is: a revocation after this point changes it, so
  // RecheckApiKey looks again.
  principal.generation = credentials_generation();
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = api_key_by_hash_.find(hash_view);
    if (it == api_key_by_hash_.end()) return invalid();
    ApiKeyEntry& entry = *it->second;
    // The table lookup already matched, but the comparison the decision rests
    // on is the constant-time one.
    if (sodium_memcmp(entry.key_hash.data(), hash, sizeof(hash)) != 0) return invalid();
    if (!entry.info.is_active) return absl::UnauthenticatedError("API key revoked");
    if (entry.info.expires_at_ms != 0 && now_ms >= entry.info.expires_at_ms) {
      return absl::UnauthenticatedError("API key expired");
    }
    auto user = users_.find(entry.info.user_id);
    if (user == users_.end() || !user->second.user.is_active) {
      return absl::UnauthenticatedError("the API key's user is disabled");
    }
    principal.user_id = entry.info.user_id;
    principal.api_key_id = entry.info.id;
    principal.expires_at_ms = entry.info.expires_at_ms;
    for (const std::string& scope : entry.info.scopes) {
      if (scope == "read") principal.can_read = true;
      if (scope == "write") principal.can_write = true;
    }
    // A maximum, so racing readers cannot move the time backwards. The dirty
    // flag is set after the time: a flush that clears it reads this time or a later one.
    int64_t seen = entry.last_used_at_ms.load(std::memory_order_relaxed);
    while (seen < now_ms &&
           !entry.last_used_at_ms.compare_exchange_weak(seen, now_ms, std::memory_order_release,
                                                        std::memory_order_relaxed)) {
    }
    if (seen < now_ms) {
      newly_dirty = !entry.last_used_dirty.exchange(true, std::memory_order_acq_rel);
    }
    if (newly_dirty) {
      absl::MutexLock dirty_lock(&dirty_mu_);
      dirty_api_keys_.push_back(entry.info.id);
    }
  }
  return principal;
}

absl::StatusOr<size_t> AuthStore::FlushLastUsed() {
  absl::MutexLock write_lock(&write_mu_);
  std::vector<uint64_t> ids;
  {
    absl::MutexLock dirty_lock(&dirty_mu_);
    ids.swap(dirty_api_keys_);
  }
  std::vector<std::pair<uint64_t, std::string>> records;  // (id, record)
  records.reserve(ids.size());
  {
    absl::ReaderMutexLock lock(&mu_);
    for (uint64_t id : ids) {
      ApiKeyEntry& entry = *api_keys_.at(id);
      // Cleared before the time is read: a use after this point marks the
      // key again and is written by the next flush.
      if (!entry.last_used_dirty.exchange(false, std::memory_order_acq_rel)) continue;
      records.emplace_back(id, ApiKeyRecord(SnapshotLocked(entry), entry.key_hash));
    }
  }
  for (size_t i = 0; i < records.size(); ++i) {
    absl::Status status = Write(IdKey(kApiKeyDir, records[i].first), records[i].second);
    if (status.ok()) continue;
    // Whatever was not written is marked again for the next flush.
    absl::ReaderMutexLock lock(&mu_);
    for (size_t k = i; k < records.size(); ++k) {
      ApiKeyEntry& entry = *api_keys_.at(records[k].first);
      if (!entry.last_used_dirty.exchange(true, std::memory_order_acq_rel)) {
        absl::MutexLock dirty_lock(&dirty_mu_);
        dirty_api_keys_.push_back(records[k].first);
      }
    }
    return status;
  }
  return records.size();
}

}  // namespace logkv::server::auth
