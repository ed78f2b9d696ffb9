#include "server/control/audit_chain.h"

#include <sodium.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace logkv::server::audit {

namespace {

constexpr char kEntryTag[] = "LKVA1 entry";
constexpr char kAnchorTag[] = "LKVA1 anchor";
constexpr char kHeadTag[] = "LKVA1 head";
constexpr char kKeyLabel[] = "logkv audit key v1";

void EnsureSodium() {
  // sodium_init is safe to repeat and from several threads.
  static const int result = sodium_init();
  (void)result;
}

void AppendU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void AppendBytes(std::string* out, absl::string_view bytes) {
  const uint32_t size = static_cast<uint32_t>(bytes.size());
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((size >> (8 * i)) & 0xff));
  out->append(bytes.data(), bytes.size());
}

std::string Tagged(const char* tag, uint64_t seq, absl::string_view hash) {
  std::string out;
  AppendBytes(&out, tag);
  AppendU64(&out, seq);
  AppendBytes(&out, hash);
  return out;
}

const unsigned char* U(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

VerifyResult Bad(VerifyResult result, uint64_t seq, std::string problem) {
  result.ok = false;
  result.bad_seq = seq;
  result.problem = std::move(problem);
  return result;
}

}  // namespace

std::string Hex(absl::string_view raw) { return absl::BytesToHexString(raw); }

absl::StatusOr<std::string> Unhex(absl::string_view hex, size_t bytes) {
  if (hex.size() != 2 * bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", 2 * bytes, " hex digits, got ", hex.size()));
  }
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError("not hex");
    }
  }
  return absl::HexStringToBytes(hex);
}

std::string CanonicalBytes(const Entry& entry) {
  std::string out;
  out.reserve(128 + entry.kind.size() + entry.actor.size() + entry.detail.size());
  AppendBytes(&out, kEntryTag);
  AppendU64(&out, entry.seq);
  AppendU64(&out, static_cast<uint64_t>(entry.at_ms));
  AppendBytes(&out, entry.kind);
  AppendBytes(&out, entry.actor);
  AppendBytes(&out, entry.detail);
  AppendU64(&out, static_cast<uint64_t>(static_cast<int64_t>(entry.code)));
  AppendU64(&out, entry.value);
  AppendBytes(&out, entry.command_hash);
  AppendBytes(&out, entry.prev_hash);
  return out;
}

std::string HashBytes(absl::string_view bytes) {
  EnsureSodium();
  std::string hash(kHashBytes, '\0');
  crypto_generichash(reinterpret_cast<unsigned char*>(hash.data()), hash.size(), U(bytes),
                     bytes.size(), nullptr, 0);
  return hash;
}

std::string ZeroHash() { return std::string(kHashBytes, '\0'); }

std::string Bounded(absl::string_view text, size_t max) {
  if (text.size() <= max) return std::string(text);
  size_t cut = max >= 3 ? max - 3 : 0;
  // Back off continuation bytes so a character is never split.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) --cut;
  return absl::StrCat(text.substr(0, cut), "...");
}

Signer Signer::FromSeed(absl::string_view seed32) {
  EnsureSodium();
  Signer signer;
  signer.public_key_.assign(crypto_sign_PUBLICKEYBYTES, '\0');
  signer.secret_key_.assign(crypto_sign_SECRETKEYBYTES, '\0');
  unsigned char seed[crypto_sign_SEEDBYTES] = {};
  std::memcpy(seed, seed32.data(), std::min<size_t>(seed32.size(), sizeof(seed)));
  crypto_sign_seed_keypair(reinterpret_cast<unsigned char*>(signer.public_key_.data()),
                           reinterpret_cast<unsigned char*>(signer.secret_key_.data()), seed);
  sodium_memzero(seed, sizeof(seed));
  return signer;
}

Signer Signer::FromClusterSecret(absl::string_view cluster_secret) {
  std::string input;
  AppendBytes(&input, kKeyLabel);
  AppendBytes(&input, cluster_secret);
  std::string seed = HashBytes(input);
  Signer signer = FromSeed(seed);
  sodium_memzero(seed.data(), seed.size());
  sodium_memzero(input.data(), input.size());
  return signer;
}

std::string Signer::Sign(absl::string_view message) const {
  std::string signature(crypto_sign_BYTES, '\0');
  crypto_sign_detached(reinterpret_cast<unsigned char*>(signature.data()), nullptr, U(message),
                       message.size(), U(secret_key_));
  return signature;
}

void Signer::Seal(Entry* entry, absl::string_view prev_hash) const {
  entry->kind = Bounded(entry->kind, kMaxKindBytes);
  entry->actor = Bounded(entry->actor, kMaxActorBytes);
  entry->detail = Bounded(entry->detail, kMaxDetailBytes);
  entry->prev_hash = std::string(prev_hash);
  entry->hash = HashBytes(CanonicalBytes(*entry));
  entry->signature = Sign(entry->hash);
}

ChainPoint Signer::Anchor(uint64_t seq, absl::string_view hash) const {
  return ChainPoint{seq, std::string(hash), Sign(AnchorMessage(seq, hash))};
}

ChainPoint Signer::Head(uint64_t seq, absl::string_view hash) const {
  return ChainPoint{seq, std::string(hash), Sign(HeadMessage(seq, hash))};
}

std::string AnchorMessage(uint64_t seq, absl::string_view hash) {
  return Tagged(kAnchorTag, seq, hash);
}
std::string HeadMessage(uint64_t seq, absl::string_view hash) {
  return Tagged(kHeadTag, seq, hash);
}

bool VerifySignature(absl::string_view public_key, absl::string_view message,
                     absl::string_view signature) {
  EnsureSodium();
  if (public_key.size() != crypto_sign_PUBLICKEYBYTES || signature.size() != crypto_sign_BYTES) {
    return false;
  }
  return crypto_sign_verify_detached(U(signature), U(message), message.size(), U(public_key)) ==
         0;
}

std::string EntryToJson(const Entry& e) {
  nlohmann::ordered_json j;
  j["seq"] = e.seq;
  j["at_ms"] = e.at_ms;
  j["kind"] = e.kind;
  j["actor"] = e.actor;
  j["detail"] = e.detail;
  j["code"] = e.code;
  j["value"] = e.value;
  j["command_hash"] = Hex(e.command_hash);
  j["prev"] = Hex(e.prev_hash);
  j["hash"] = Hex(e.hash);
  j["sig"] = Hex(e.signature);
  // Invalid UTF-8 (a key's raw bytes) is replaced, never refused: the
  // entry's hash covers the bytes as written here, so they must round-trip.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<Entry> EntryFromJson(absl::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  Entry e;
  try {
    e.seq = j.at("seq").get<uint64_t>();
    e.at_ms = j.at("at_ms").get<int64_t>();
    e.kind = j.at("kind").get<std::string>();
    e.actor = j.at("actor").get<std::string>();
    e.detail = j.at("detail").get<std::string>();
    e.code = j.at("code").get<int32_t>();
    e.value = j.at("value").get<uint64_t>();
    for (auto [name, field, bytes] :
         {std::tuple{"command_hash", &e.command_hash, kHashBytes},
          std::tuple{"prev", &e.prev_hash, kHashBytes}, std::tuple{"hash", &e.hash, kHashBytes},
          std::tuple{"sig", &e.signature, kSignatureBytes}}) {
      absl::StatusOr<std::string> raw = Unhex(j.at(name).get<std::string>(), bytes);
      if (!raw.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": ", raw.status().message()));
      }
      *field = *std::move(raw);
    }
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("a field is missing or of the wrong type (",
                                                   error.what(), ")"));
  }
  return e;
}

namespace {

nlohmann::ordered_json PointJson(const ChainPoint& p) {
  nlohmann::ordered_json j;
  j["seq"] = p.seq;
  j["hash"] = Hex(p.hash);
  j["sig"] = Hex(p.signature);
  return j;
}

absl::StatusOr<ChainPoint> PointOf(const nlohmann::json& j) {
  ChainPoint p;
  try {
    p.seq = j.at("seq").get<uint64_t>();
    absl::StatusOr<std::string> hash = Unhex(j.at("hash").get<std::string>(), kHashBytes);
    absl::StatusOr<std::string> sig = Unhex(j.at("sig").get<std::string>(), kSignatureBytes);
    if (!hash.ok() || !sig.ok()) return absl::InvalidArgumentError("bad hash or signature");
    p.hash = *std::move(hash);
    p.signature = *std::move(sig);
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(error.what());
  }
  return p;
}

}  // namespace

std::string PointToJson(const ChainPoint& point) { return PointJson(point).dump(); }

absl::StatusOr<ChainPoint> PointFromJson(absl::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  return PointOf(j);
}

std::string HeadFileToJson(const HeadFile& head) {
  nlohmann::ordered_json j;
  j["public_key"] = Hex(head.public_key);
  j["anchor"] = head.anchor.has_value() ? PointJson(*head.anchor) : nlohmann::ordered_json();
  j["head"] = head.head.has_value() ? PointJson(*head.head) : nlohmann::ordered_json();
  return j.dump() + "\n";
}

absl::StatusOr<HeadFile> HeadFileFromJson(absl::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  HeadFile head;
  try {
    absl::StatusOr<std::string> key =
        Unhex(j.at("public_key").get<std::string>(), kPublicKeyBytes);
    if (!key.ok()) return absl::InvalidArgumentError("public_key is not 32 bytes of hex");
    head.public_key = *std::move(key);
    for (auto [name, field] : {std::pair{"anchor", &head.anchor}, std::pair{"head", &head.head}}) {
      if (!j.contains(name) || j.at(name).is_null()) continue;
      absl::StatusOr<ChainPoint> point = PointOf(j.at(name));
      if (!point.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": ", point.status().message()));
      }
      *field = *std::move(point);
    }
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(error.what());
  }
  return head;
}

VerifyResult VerifyLines(const std::vector<std::string>& lines,
                         const std::optional<ChainPoint>& anchor,
                         const std::optional<ChainPoint>& head, absl::string_view public_key) {
  VerifyResult result;
  uint64_t expected = 1;
  std::string prev = ZeroHash();
  if (anchor.has_value()) {
    if (!VerifySignature(public_key, AnchorMessage(anchor->seq, anchor->hash),
                         anchor->signature)) {
      return Bad(result, anchor->seq + 1,
                 absl::StrCat("the anchor (entry ", anchor->seq,
                              ", the last one dropped) has a bad signature"));
    }
    expected = anchor->seq + 1;
    prev = anchor->hash;
  }
  result.last_seq = expected - 1;
  result.last_hash = prev;
  std::optional<std::string> hash_at_head;
  if (head.has_value() && head->seq == result.last_seq) hash_at_head = prev;
  size_t line_number = 0;
  for (const std::string& line : lines) {
    ++line_number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    absl::StatusOr<Entry> entry = EntryFromJson(line);
    if (!entry.ok()) {
      return Bad(result, expected,
                 absl::StrCat("line ", line_number, " is not an entry (", entry.status().message(),
                              "): changed or cut"));
    }
    if (anchor.has_value() && entry->seq <= anchor->seq) continue;  // dropped, file not yet cut
    if (entry->seq != expected) {
      if (entry->seq > expected) {
        return Bad(result, expected,
                   absl::StrCat("entry ", expected, " is missing: line ", line_number,
                                " holds entry ", entry->seq, " after entry ", expected - 1));
      }
      return Bad(result, expected,
                 absl::StrCat("line ", line_number, " holds entry ", entry->seq, " where entry ",
                              expected, " belongs (reordered, duplicated or changed)"));
    }
    if (HashBytes(CanonicalBytes(*entry)) != entry->hash) {
      return Bad(result, expected,
                 absl::StrCat("entry ", expected, " (line ", line_number,
                              ") does not match its hash: it was changed"));
    }
    if (entry->prev_hash != prev) {
      return Bad(result, expected,
                 absl::StrCat("entry ", expected, " (line ", line_number,
                              ") does not follow entry ", expected - 1,
                              ": its previous hash differs (an entry was removed or replaced)"));
    }
    if (!VerifySignature(public_key, entry->hash, entry->signature)) {
      return Bad(result, expected,
                 absl::StrCat("entry ", expected, " (line ", line_number,
                              ") has a bad signature (changed, or signed with another key)"));
    }
    if (result.entries == 0) result.first_seq = entry->seq;
    ++result.entries;
    prev = entry->hash;
    result.last_seq = entry->seq;
    result.last_hash = entry->hash;
    if (head.has_value() && head->seq == entry->seq) hash_at_head = entry->hash;
    ++expected;
  }
  if (head.has_value()) {
    if (!VerifySignature(public_key, HeadMessage(head->seq, head->hash), head->signature)) {
      return Bad(result, head->seq, absl::StrCat("the head (entry ", head->seq,
                                                 ") has a bad signature"));
    }
    if (result.last_seq < head->seq) {
      return Bad(result, result.last_seq + 1,
                 absl::StrCat("the log ends at entry ", result.last_seq, " but its head is entry ",
                              head->seq, ": entries ", result.last_seq + 1, " to ", head->seq,
                              " were removed (truncated)"));
    }
    if (!hash_at_head.has_value() || *hash_at_head != head->hash) {
      return Bad(result, head->seq,
                 absl::StrCat("entry ", head->seq, " is not the one the head names"));
    }
  }
  return result;
}

absl::StatusOr<VerifyResult> VerifyDirectory(const std::string& dir,
                                             absl::string_view public_key) {
  const std::string head_path = absl::StrCat(dir, "/", kHeadFileName);
  std::ifstream head_in(head_path, std::ios::binary);
  if (!head_in) {
    return absl::NotFoundError(absl::StrCat(head_path, " is missing: not an audit directory, or "
                                            "its head was removed"));
  }
  std::stringstream head_text;
  head_text << head_in.rdbuf();
  absl::StatusOr<HeadFile> head = HeadFileFromJson(head_text.str());
  if (!head.ok()) {
    return absl::DataLossError(absl::StrCat(head_path, ": ", head.status().message()));
  }
  std::string key(public_key);
  if (key.empty()) key = head->public_key;
  std::vector<std::string> lines;
  std::ifstream log_in(absl::StrCat(dir, "/", kLogFileName), std::ios::binary);
  std::string line;
  while (std::getline(log_in, line)) lines.push_back(line);
  return VerifyLines(lines, head->anchor, head->head, key);
}

}  // namespace logkv::server::audit
