// The audit log's part of the control plane's state machine
// (docs/security.md, "Audit log"): the head of the hash chain and its last
// entries, owned by ControlState. Every command ControlState applies with
// success (but the routine ones: Barrier, TouchApiKeys, RevokeToken) becomes
// one entry, and a RecordAudit command one entry per event it carries, in
// the committed order; the entry's time is the one carried in the command,
// so applying reads no clock and every server seals byte-identical entries
// (Ed25519 signatures are deterministic).
//
// The head and the last kWindow entries are in snapshots: a server restored
// from a snapshot (a follower far behind, a restart after log compaction)
// continues the same chain and hands the entries it missed to its file
// (audit_log.h) through the listener.
//
// Thread-safety: Record and Replace come from the apply thread; readers may
// call from any thread. Listeners run on the apply thread, without the lock.
#ifndef LOGKV_SERVER_CONTROL_AUDIT_STATE_H_
#define LOGKV_SERVER_CONTROL_AUDIT_STATE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/control/audit_chain.h"

namespace flatbuffers {
template <typename T>
struct Offset;
class FlatBufferBuilder;
}  // namespace flatbuffers

namespace logkv::server::control {

namespace fb {
struct AuditChain;
struct Command;
}  // namespace fb

// Entries a snapshot keeps (each at most ~1.5 KiB: audit_chain.h's bounds).
inline constexpr size_t kAuditWindow = 4096;

struct AuditChainState {
  uint64_t head_seq = 0;
  std::string head_hash = audit::ZeroHash();
  std::deque<audit::Entry> window;  // consecutive, ending at head_seq

  bool operator==(const AuditChainState&) const = default;
};

class AuditState {
 public:
  AuditState();
  AuditState(const AuditState&) = delete;
  AuditState& operator=(const AuditState&) = delete;

  // The cluster's audit key; the same on every server (derived from the
  // cluster secret by ControlPlane). Until set: the key of the empty secret.
  void SetSigner(audit::Signer signer) ABSL_LOCKS_EXCLUDED(mu_);
  std::string public_key() const ABSL_LOCKS_EXCLUDED(mu_);

  struct Listener {
    // The entries of one command, in order, as they are sealed.
    std::function<void(const std::vector<audit::Entry>&)> on_entries;
    // The state replaced by a snapshot's.
    std::function<void(const AuditChainState&)> on_restore;
  };
  void SetListener(Listener listener) ABSL_LOCKS_EXCLUDED(mu_);

  // The entries of one applied command (none for routine ones): called by
  // ControlState::Apply with its result and who asked for it (the text of
  // the command's actor; events of a RecordAudit that name none take it).
  void RecordCommand(const fb::Command& command, absl::string_view bytes, int32_t code,
                     uint64_t value, absl::string_view actor = "") ABSL_LOCKS_EXCLUDED(mu_);

  AuditChainState Current() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t head_seq() const ABSL_LOCKS_EXCLUDED(mu_);
  // Entries of the window with seq > since, at most limit.
  std::vector<audit::Entry> Since(uint64_t since, size_t limit) const ABSL_LOCKS_EXCLUDED(mu_);

  flatbuffers::Offset<fb::AuditChain> Encode(flatbuffers::FlatBufferBuilder& builder) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // A snapshot's chain, checked (consecutive seqs, each entry's hash over its
  // contents, each linked to the one before, the last one the head). Null:
  // the empty chain (a snapshot of an older version).
  static absl::StatusOr<AuditChainState> Decode(const fb::AuditChain* chain);
  void Replace(AuditChainState state) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Append(audit::Entry entry, std::vector<audit::Entry>* sealed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  audit::Signer signer_ ABSL_GUARDED_BY(mu_);
  AuditChainState state_ ABSL_GUARDED_BY(mu_);
  Listener listener_ ABSL_GUARDED_BY(mu_);
};

// Whether commands of this type are audited (all but the routine ones), and
// its name in entries (the schema's union member name, "SignUp").
bool IsAuditedCommand(int body_type);

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_AUDIT_STATE_H_
