// Who may do what with whose data, as part of the control plane's state
// machine (docs/security.md): the administrators, the groups and their
// members, and the access control lists (ACLs) on key prefixes.
//
// A resource is a prefix of engine keys inside one user's namespace:
// TenantPrefix(namespace user) + a prefix of that user's own keys (a path
// such as "/home/room/" in the /kv/{path} dialect, or any bytes). Each ACL
// entry has an owner (a user), a group (or none) and 12 permission bits:
// owner, group and others, each create, delete, write and read. The entry
// with the longest prefix of a key decides for that key; a key no entry
// covers follows the default, which is today's behaviour: the namespace's
// user may do everything, nobody else anything.
//
// Like the accounts it is a pure function of the commands applied: every
// server holds the same ACLs and answers each command alike. Reads are local
// and cheap (a reader lock, a longest-prefix match in an ordered map: a few
// O(log n) look-ups however many entries there are, and a hash look-up for a
// group), so admission asks it on every request without a round trip.
//
// Thread-safety: every method may be called from any thread. Applies come
// from one thread (Raft's); readers take the reader lock.
#ifndef LOGKV_SERVER_CONTROL_ACL_STATE_H_
#define LOGKV_SERVER_CONTROL_ACL_STATE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/control/command_options.h"

namespace flatbuffers {
template <typename T>
struct Offset;
class FlatBufferBuilder;
}  // namespace flatbuffers

namespace logkv::server::control {

namespace fb {
struct Access;
struct SetAdmin;
struct NewGroup;
struct RenameGroup;
struct DeleteGroup;
struct SetGroupMember;
struct SetAcl;
struct ImportAccess;
}  // namespace fb

// The four permissions of one class, as bits (a class's nibble of a mode).
inline constexpr uint32_t kPermRead = 1;
inline constexpr uint32_t kPermWrite = 2;
inline constexpr uint32_t kPermDelete = 4;
inline constexpr uint32_t kPermCreate = 8;
inline constexpr uint32_t kPermAll = 0xf;
// Where each class's nibble sits in a 12-bit mode.
inline constexpr int kOwnerShift = 8;
inline constexpr int kGroupShift = 4;
inline constexpr int kOthersShift = 0;
inline constexpr uint32_t kMaxMode = 0xfff;

// Bounds, the same on every server.
inline constexpr size_t kMaxGroups = 10000;
inline constexpr size_t kMaxGroupMemberships = 200000;  // over all groups
inline constexpr size_t kMaxAclEntries = 100000;
inline constexpr size_t kMaxGroupNameBytes = 64;
inline constexpr size_t kMaxAclPrefixBytes = 1024;  // the user's part
inline constexpr size_t kMaxAdmins = 1000;
// The first account: always an administrator.
inline constexpr uint64_t kFirstUserId = 1;
// "\0t" + 8 bytes: the namespace part of an ACL prefix (server/namespaces.h).
inline constexpr size_t kAclNamespaceBytes = 10;

struct Group {
  uint64_t id = 0;
  std::string name;
  int64_t created_at_ms = 0;
  absl::flat_hash_set<uint64_t> members;

  bool operator==(const Group&) const = default;
};

struct AclEntry {
  uint64_t owner = 0;
  uint64_t group_id = 0;  // 0: none
  uint32_t mode = 0;      // 12 bits
  bool audit = false;

  bool operator==(const AclEntry&) const = default;
};

// The whole access state, as a value.
struct Access {
  absl::flat_hash_set<uint64_t> admins;  // besides kFirstUserId
  std::map<uint64_t, Group> groups;
  // By prefix (namespace included). btree_map: ordered, for the
  // longest-prefix match; heterogeneous look-ups by string_view.
  absl::btree_map<std::string, AclEntry> acls;
  uint64_t next_group_id = 1;
  // Where the table was taken back from (ImportAccess), once; "" if never.
  std::string import_source;
  // Derived (rebuilt on restore).
  absl::flat_hash_map<std::string, uint64_t> group_by_name;
  size_t memberships = 0;
  // (user, group) of every membership: InGroup in one hash probe, on the
  // path of every request a group's bits decide.
  absl::flat_hash_set<std::pair<uint64_t, uint64_t>> member_of;

  bool operator==(const Access&) const = default;

  bool IsAdmin(uint64_t user_id) const {
    return user_id == kFirstUserId || admins.contains(user_id);
  }
  bool InGroup(uint64_t user_id, uint64_t group_id) const;
  // The entry whose prefix is the longest prefix of key, or null; *prefix
  // (when given) gets its prefix.
  const AclEntry* Longest(absl::string_view key, absl::string_view* prefix = nullptr) const;
  // Whether an entry's prefix starts with prefix and is longer than it.
  bool AnyUnder(absl::string_view prefix) const;
  // The permission bits (kPerm*) user_id holds on engine key `key`.
  uint32_t Allowed(uint64_t user_id, absl::string_view key) const;
};

// The user whose namespace an engine key or an ACL prefix is in; 0 when it
// is not in a tenant's namespace.
uint64_t NamespaceUserOf(absl::string_view key);
// The permission bits of class `shift` in mode.
inline uint32_t ClassBits(uint32_t mode, int shift) { return (mode >> shift) & kPermAll; }
// "cdwr" per class, '-' for a bit not set: "cdwr--wr---r" for 0xf31.
std::string ModeString(uint32_t mode);
// ModeString's form, or three hex digits ("f31"); InvalidArgument otherwise.
absl::StatusOr<uint32_t> ParseMode(absl::string_view text);

// The encoders of the access commands (the bytes to hand to Raft).
std::string EncodeSetAdmin(uint64_t user_id, bool admin, const Actor& actor = {});
std::string EncodeCreateGroup(absl::string_view name, int64_t created_at_ms,
                              const Actor& actor = {});
std::string EncodeRenameGroup(uint64_t group_id, absl::string_view name, const Actor& actor = {});
std::string EncodeDeleteGroup(uint64_t group_id, const Actor& actor = {});
std::string EncodeSetGroupMember(uint64_t group_id, uint64_t user_id, bool member,
                                 const Actor& actor = {});
// prefix: the whole engine prefix, namespace included.
// keep_audit: the entry takes the flag that decides for prefix as the
// command applies, not entry.audit.
std::string EncodeSetAcl(absl::string_view prefix, const AclEntry& entry, const Actor& actor = {},
                         bool keep_audit = false);
// The refusal of an audit flag's change by a user who is not an
// administrator (PermissionDenied), from the route and from the command.
absl::Status AuditFlagIsAdministrators();
// Whether the keys at engine_prefix are audited: the audit flag of the
// longest entry whose prefix is a prefix of it (its own, or one above).
bool AuditedAt(const Access& access, absl::string_view engine_prefix);
// The same for the entries strictly above engine_prefix: what its keys
// would be if its own entry were removed.
bool AuditedAbove(const Access& access, absl::string_view engine_prefix);
// ImportAccess's value when the cluster kept a table of its own.
inline constexpr uint64_t kAccessKept = 1;
std::string EncodeRemoveAcl(absl::string_view prefix, const Actor& actor = {});
// A restored backup's access table, taken back whole (ids kept).
std::string EncodeImportAccess(absl::string_view source, const Access& access,
                               const Actor& actor = {});

class AclState {
 public:
  AclState() = default;
  AclState(const AclState&) = delete;
  AclState& operator=(const AclState&) = delete;

  // Runs f(const Access&) under the reader lock and returns what it
  // returns. f must not call back into this object.
  template <typename F>
  auto Read(F&& f) const {
    absl::ReaderMutexLock lock(&mu_);
    return f(access_);
  }
  Access Current() const;  // a copy (tests, tools)
  // Waits (bounded) until pred(access) holds; false on the deadline.
  bool Await(const std::function<bool(const Access&)>& pred, absl::Time deadline) const;

  // The hot path, for admission: the permission bits (kPerm*) user_id holds
  // on an engine key (Access::Allowed), under the reader lock.
  uint32_t Allowed(uint64_t user_id, absl::string_view engine_key) const;
  // For a scan or a watch over engine_prefix: true when no entry lies under
  // it, so every key under it is decided as the prefix itself, whose bits
  // go in *bits; false when keys under it must be checked one by one.
  bool Uniform(uint64_t user_id, absl::string_view engine_prefix, uint32_t* bits) const;
  bool IsAdmin(uint64_t user_id) const;

  // For the audit log: whether data writes to engine_key are to be audited,
  // that is whether the ACL entry deciding for it (the longest prefix) has
  // its audit flag set. False for a key no entry covers. Cheap (as Allowed).
  bool AuditsKey(absl::string_view engine_key) const;

  // ---- For ControlState ----
  // Each applies one command, or refuses it leaving the state as it was.
  // user_exists tells whether a user id is one of the accounts'. The value
  // is the id assigned or named (the group's, the user's), 0 when none.
  using UserExists = absl::FunctionRef<bool(uint64_t)>;
  absl::StatusOr<uint64_t> Apply(const fb::SetAdmin& cmd, UserExists user_exists);
  absl::StatusOr<uint64_t> Apply(const fb::NewGroup& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::RenameGroup& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::DeleteGroup& cmd);
  absl::StatusOr<uint64_t> Apply(const fb::SetGroupMember& cmd, UserExists user_exists);
  // actor_user: the user who asked (0 when no user did: a node, the cluster
  // secret); one who is not an administrator may not change audit flags.
  absl::StatusOr<uint64_t> Apply(const fb::SetAcl& cmd, UserExists user_exists,
                                 uint64_t actor_user);
  // Once: AlreadyExists after a table was taken back or kept. While this
  // one holds administrators, groups or entries it is kept (kAccessKept),
  // and that is recorded as final too.
  absl::StatusOr<uint64_t> Apply(const fb::ImportAccess& cmd);

  // The state as the snapshot's Access table (a null offset when it holds
  // nothing, so snapshots of clusters that never used it are unchanged),
  // and back. Decode checks everything and builds the indexes.
  flatbuffers::Offset<fb::Access> Encode(flatbuffers::FlatBufferBuilder& builder) const;
  static flatbuffers::Offset<fb::Access> Encode(flatbuffers::FlatBufferBuilder& builder,
                                                const Access& access);
  static absl::StatusOr<Access> Decode(const fb::Access* in);  // null: empty state
  void Replace(Access access);

 private:
  mutable absl::Mutex mu_;
  Access access_ ABSL_GUARDED_BY(mu_);
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_ACL_STATE_H_
