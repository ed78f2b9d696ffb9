// The control plane's state machine: the cluster's metadata, which a Raft
// group replicates (docs/control-plane.md). It is a pure, deterministic
// function of the commands applied to it: every server that applies the same
// commands in the same order holds the same state, answers each command
// with the same result, and takes byte-identical snapshots. It knows nothing
// of Raft (raft_fsm.h adapts it to libraft).
//
// What it holds: the members (node id, Raft id, addresses, requested Raft
// role, life state), the replication factor N, the virtual nodes each member
// gets on the ring, and the epoch, which grows by exactly one with every
// command that changes any of them.
//
// A member's life: AddMember (joining) -> ActivateMember (active, once its
// data has been handed to it) -> BeginLeave (leaving) -> RemoveMember
// (removed). A joining member may also be removed directly. Removed members
// stay as tombstones until a node of the same node id joins again (a node
// that left and comes back: AddMember). A node that lost its data takes the
// place of its member with ReplaceMember (a new raft id, the same ring
// position).
//
// Commands and snapshots are FlatBuffers (server/control/control.fbs); input
// from the log or from a snapshot is checked with the FlatBuffers verifier
// and then field by field, so malformed or hostile bytes are refused, never
// trusted.
//
// Thread-safety: every method may be called from any thread; Raft applies
// from its loop while readers take copies with Current().
#ifndef LOGKV_SERVER_CONTROL_CONTROL_STATE_H_
#define LOGKV_SERVER_CONTROL_CONTROL_STATE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/control/account_state.h"
#include "server/control/acl_state.h"
#include "server/control/audit_state.h"
#include "server/control/kv_state.h"
#include "server/control/command_options.h"

namespace logkv::server::control {

// Values are those of control.fbs and never change.
enum class Role : uint8_t { kVoter = 0, kStandby = 1, kSpare = 2 };
enum class MemberState : uint8_t { kJoining = 0, kActive = 1, kLeaving = 2, kRemoved = 3 };

const char* RoleName(Role role);                  // "voter", "standby", "spare"
const char* MemberStateName(MemberState state);   // "joining", "active", ...

struct Member {
  uint64_t raft_id = 0;
  std::string node_id;
  std::string binary_address;
  std::string http_address;  // "" = none
  std::string control_address;  // host:port of its Raft transport, "" = none
  Role role = Role::kVoter;
  MemberState state = MemberState::kJoining;
  uint64_t since_epoch = 0;  // the epoch its state last changed at

  bool operator==(const Member&) const = default;
};

// Limits on what a command may ask for; the same on every server, so a
// refusal is as deterministic as an acceptance.
inline constexpr size_t kMaxNodeIdBytes = 128;
inline constexpr size_t kMaxAddressBytes = 256;
inline constexpr size_t kMaxMembers = 1024;  // tombstones included
inline constexpr uint32_t kMaxReplicas = 16;
inline constexpr uint32_t kMaxVnodesPerMember = 4096;
inline constexpr size_t kClusterIdBytes = 16;
// The state before any command: what a cluster starts from. N is not
// committed (0) until the first node commits its --replicas.
inline constexpr uint32_t kInitialReplicas = 0;
inline constexpr uint32_t kInitialVnodesPerMember = 150;  // placement's default
// Bytes a command or a snapshot may have; longer input is refused before it
// is parsed. A command is small but for an import of accounts (split into
// commands of at most kMaxImportCommandBytes); a snapshot holds the accounts
// too, whose counts are bounded (account_state.h) so that it stays below.
inline constexpr size_t kMaxCommandBytes = 1 << 20;
inline constexpr size_t kMaxImportCommandBytes = 512 << 10;
inline constexpr size_t kMaxSnapshotBytes = 128 << 20;

// The whole state, as a value.
struct ClusterConfig {
  uint64_t epoch = 0;
  // N, the length of a key's preference list (capped at the ring's size);
  // fixed once committed. 0: not yet committed.
  uint32_t replicas = kInitialReplicas;
  uint32_t vnodes_per_member = kInitialVnodesPerMember;
  // kClusterIdBytes random bytes drawn by the first node; fixed once
  // committed. "": not yet committed.
  std::string cluster_id;
  std::map<std::string, Member> members;  // by node id, removed ones included

  bool operator==(const ClusterConfig&) const = default;

  const Member* Find(absl::string_view node_id) const;
  size_t CountInState(MemberState state) const;
};

// Encoders of the commands (the bytes to hand to Raft), with their
// conditions and actor (command_options.h).
std::string EncodeAddMember(const Member& member, CommandOptions options = {});  // id, addresses, role
// The member of member.node_id (joining or active) gets member's raft id and
// addresses; its state and ring position stay.
std::string EncodeReplaceMember(const Member& member, CommandOptions options = {});
std::string EncodeActivateMember(absl::string_view node_id, CommandOptions options = {});
std::string EncodeBeginLeave(absl::string_view node_id, CommandOptions options = {});
std::string EncodeRemoveMember(absl::string_view node_id, CommandOptions options = {});
std::string EncodeSetReplicas(uint32_t replicas, CommandOptions options = {});
std::string EncodeSetVnodes(uint32_t vnodes_per_member, CommandOptions options = {});
std::string EncodeSetClusterId(absl::string_view id, CommandOptions options = {});
// kClusterIdBytes random bytes: a new cluster's identity.
std::string NewClusterId();
// Changes nothing; answered with the epoch where the log applies it.
std::string EncodeBarrier();
// Events that are not commands themselves (login failures, backups, audited
// data writes): one audit entry each, in this order (audit_state.h).
struct AuditEventRecord {
  int64_t at_ms = 0;
  std::string kind;
  std::string actor;
  std::string detail;
};
// An event's actor "" stands for the command's actor (options.actor).
std::string EncodeRecordAudit(const std::vector<AuditEventRecord>& events,
                              CommandOptions options = {});

class ControlState {
 public:
  ControlState() = default;
  ControlState(const ControlState&) = delete;
  ControlState& operator=(const ControlState&) = delete;

  // Applies one command from the log. Returns the epoch after it (for an
  // account command, which never changes the epoch: the user or API key id
  // it assigned or named, else 0), or why it was refused (the state is then
  // unchanged):
  //   InvalidArgument     malformed bytes, a field out of its limits
  //   AlreadyExists       a node id, Raft id or address already taken
  //   NotFound            no such member
  //   FailedPrecondition  the member is not in a state the command applies to,
  //                       or N could not be held by the active members
  //   ResourceExhausted   kMaxMembers reached
  //   Aborted             if_epoch given and not the current epoch
  // (account commands: account_state.h)
  // The result, message included, depends only on the state and the bytes.
  absl::StatusOr<uint64_t> Apply(absl::string_view command);

  // The whole state (configuration and accounts), encoded; byte-identical on
  // servers in the same state.
  std::string Snapshot() const;
  // Replaces the state with a snapshot's. Malformed or inconsistent input is
  // refused (InvalidArgument) and leaves the state as it was.
  absl::Status Restore(absl::string_view snapshot);

  ClusterConfig Current() const;
  uint64_t epoch() const;
  // The accounts, read in place by AuthStore.
  AccountState& accounts() { return accounts_; }
  const AccountState& accounts() const { return accounts_; }
  // Administrators, groups and ACLs, read in place by admission.
  AclState& access() { return access_; }
  const AclState& access() const { return access_; }
  // The audit chain (audit_state.h): its key, listener and entries.
  AuditState& audit() { return audit_; }
  const AuditState& audit() const { return audit_; }
  // The consensus keys (kv_state.h), read in place by the data path.
  KvState& kv() { return kv_; }
  const KvState& kv() const { return kv_; }

  // Decodes a snapshot's configuration without applying it (tools, tests).
  static absl::StatusOr<ClusterConfig> DecodeSnapshot(absl::string_view snapshot);
  // The configuration alone (no accounts): `applied`, backups.
  static std::string EncodeSnapshot(const ClusterConfig& config);

 private:
  mutable absl::Mutex mu_;
  ClusterConfig config_ ABSL_GUARDED_BY(mu_);
  absl::StatusOr<uint64_t> ApplyVerified(const fb::Command& command);

  // Its own lock; applied on the same thread as the configuration.
  AccountState accounts_;
  // Its own lock too; applied on the same thread, reading accounts_.
  AclState access_;
  // Its own lock too; recorded after each command, on the apply thread.
  AuditState audit_;
  // Its own lock too; applied on the same thread.
  KvState kv_;
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_CONTROL_STATE_H_
