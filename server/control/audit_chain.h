// The audit log's entries, their hash chain and their signatures
// (docs/security.md, "Audit log"). Shared by the node that writes the log
// (audit_log.h, under the control plane) and by whoever checks it
// (`logkv audit verify`, over HTTP or from a data directory), so it depends
// on libsodium, nlohmann/json and Abseil only (library logkv_audit).
//
// An entry's hash is BLAKE2b-256 over its canonical bytes, which include the
// previous entry's hash: changing, removing or reordering an entry breaks
// every link after it. Its signature is Ed25519 (libsodium's
// crypto_sign_detached, deterministic) over the hash with the cluster's audit
// key, so every node that applies the same commands with the same key writes
// byte-identical entries. The first entry's previous hash is 32 zero bytes.
//
// Retention drops the oldest entries of a node's file; the anchor (the seq
// and hash of the last dropped entry, signed with its own label) says where
// the kept chain starts, and the head (the seq and hash of the last entry
// written, signed with another label, kept apart from the entries) says
// where it ends, so removing entries at either end is seen.
//
// Thread-safety: functions are pure; AuditSigner is immutable once made.
#ifndef LOGKV_SERVER_CONTROL_AUDIT_CHAIN_H_
#define LOGKV_SERVER_CONTROL_AUDIT_CHAIN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace logkv::server::audit {

inline constexpr size_t kHashBytes = 32;       // BLAKE2b-256
inline constexpr size_t kSignatureBytes = 64;  // Ed25519
inline constexpr size_t kPublicKeyBytes = 32;
// Bounds on an entry's text fields (longer text is cut, with "..." at the
// end, before the entry is sealed): entries stay small whatever a command
// carries.
inline constexpr size_t kMaxKindBytes = 64;
inline constexpr size_t kMaxActorBytes = 256;
inline constexpr size_t kMaxDetailBytes = 1024;

struct Entry {
  uint64_t seq = 0;        // 1, 2, ... in the committed order
  int64_t at_ms = 0;       // the time the proposing node carried in the command
  std::string kind;        // "SignUp", "AddMember", "data.put", ...
  std::string actor;       // who asked, when known ("" = not known)
  std::string detail;      // what, as text (never a secret)
  int32_t code = 0;        // absl::StatusCode of the command's result
  uint64_t value = 0;      // its value (an epoch, a user or key id)
  std::string command_hash;  // BLAKE2b-256 of the command's bytes (raw, 32)
  std::string prev_hash;     // raw, 32
  std::string hash;          // raw, 32: of CanonicalBytes()
  std::string signature;     // raw, 64: Ed25519 over hash

  bool operator==(const Entry&) const = default;
};

// A point of the chain: (seq, hash) signed under a label ("anchor" or
// "head"), so that a signature of one kind cannot stand for the other, nor
// for an entry.
struct ChainPoint {
  uint64_t seq = 0;
  std::string hash;       // raw, 32
  std::string signature;  // raw, 64

  bool operator==(const ChainPoint&) const = default;
};

// The bytes an entry's hash covers: a version tag, then every field but
// hash and signature, integers little-endian fixed width, strings
// length-prefixed (u32).
std::string CanonicalBytes(const Entry& entry);
std::string HashBytes(absl::string_view bytes);  // BLAKE2b-256, raw
std::string ZeroHash();

// Cuts text to at most max bytes (on a UTF-8 boundary, "..." at the end).
std::string Bounded(absl::string_view text, size_t max);

// The cluster's audit key. Derived (BLAKE2b-256 keyed by the cluster
// secret over a fixed label, as the Ed25519 seed), so every node with the
// secret holds the same key and nothing of it is written to disk.
class Signer {
 public:
  static Signer FromSeed(absl::string_view seed32);
  static Signer FromClusterSecret(absl::string_view cluster_secret);

  const std::string& public_key() const { return public_key_; }
  std::string Sign(absl::string_view message) const;

  // Fills prev_hash, hash and signature.
  void Seal(Entry* entry, absl::string_view prev_hash) const;
  ChainPoint Anchor(uint64_t seq, absl::string_view hash) const;
  ChainPoint Head(uint64_t seq, absl::string_view hash) const;

 private:
  std::string public_key_;
  std::string secret_key_;  // libsodium's 64-byte form
};

bool VerifySignature(absl::string_view public_key, absl::string_view message,
                     absl::string_view signature);
std::string AnchorMessage(uint64_t seq, absl::string_view hash);
std::string HeadMessage(uint64_t seq, absl::string_view hash);

// JSON forms (one entry per line in the log file, and in GET /api/audit):
// raw bytes as lowercase hex.
std::string EntryToJson(const Entry& entry);
absl::StatusOr<Entry> EntryFromJson(absl::string_view line);
std::string PointToJson(const ChainPoint& point);  // {"seq":..,"hash":..,"sig":..}
absl::StatusOr<ChainPoint> PointFromJson(absl::string_view text);

// What a check found. ok, or the first bad entry (by the seq it should
// have had at that place in the chain) and why.
struct VerifyResult {
  bool ok = true;
  uint64_t entries = 0;      // checked
  uint64_t first_seq = 0;    // of the first entry checked (0: none)
  uint64_t last_seq = 0;     // of the last good entry
  std::string last_hash;     // raw
  std::optional<uint64_t> bad_seq;
  std::string problem;
};

// Checks a chain given as lines (one JSON entry each; blank lines are
// skipped), from the anchor (none: from seq 1 and the zero hash) to the
// head (none: wherever it ends), against public_key. Entries at or before
// the anchor are skipped (a retention that stopped half-way). The anchor
// and head signatures are checked too.
VerifyResult VerifyLines(const std::vector<std::string>& lines,
                         const std::optional<ChainPoint>& anchor,
                         const std::optional<ChainPoint>& head, absl::string_view public_key);

// A node's audit directory, as the node writes it (audit_log.h):
//   log.jsonl   one entry per line, in seq order
//   head.json   {"public_key":hex, "anchor":point|null, "head":point|null}
inline constexpr char kLogFileName[] = "log.jsonl";
inline constexpr char kHeadFileName[] = "head.json";

struct HeadFile {
  std::string public_key;  // raw
  std::optional<ChainPoint> anchor;
  std::optional<ChainPoint> head;
};
std::string HeadFileToJson(const HeadFile& head);
absl::StatusOr<HeadFile> HeadFileFromJson(absl::string_view text);

// Reads and checks a node's audit directory. public_key "" means the one
// head.json names (which an attacker who rewrote the directory chose: give
// the key you hold to bind the check to it).
absl::StatusOr<VerifyResult> VerifyDirectory(const std::string& dir,
                                             absl::string_view public_key);

std::string Hex(absl::string_view raw);
absl::StatusOr<std::string> Unhex(absl::string_view hex, size_t bytes);

}  // namespace logkv::server::audit

#endif  // LOGKV_SERVER_CONTROL_AUDIT_CHAIN_H_
