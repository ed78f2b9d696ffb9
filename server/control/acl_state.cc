#include "server/control/acl_state.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "flatbuffers/flatbuffers.h"
#include "protocol/frame.h"
#include "server/control/command_encoding.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

namespace {

using protocol::View;

template <typename T>
std::string EncodeBody(flatbuffers::FlatBufferBuilder& builder, fb::CommandBody type,
                       flatbuffers::Offset<T> body, const Actor& actor = {}) {
  CommandOptions options;
  options.actor = actor;
  return FinishCommand(builder, type, body.Union(), options);
}

// Group names appear in URLs, logs and JSON: letters, digits, '.', '_', '-'.
absl::Status CheckGroupName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxGroupNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a group name has 1 to ", kMaxGroupNameBytes, " bytes"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          "a group name holds letters, digits, '.', '_' and '-' only");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAclPrefix(absl::string_view prefix) {
  if (prefix.size() < kAclNamespaceBytes || prefix[0] != '\0' || prefix[1] != 't' ||
      NamespaceUserOf(prefix) == 0) {
    return absl::InvalidArgumentError("an ACL prefix begins with a user's namespace");
  }
  if (prefix.size() - kAclNamespaceBytes > kMaxAclPrefixBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("an ACL prefix has at most ", kMaxAclPrefixBytes, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

bool AuditedAt(const Access& access, absl::string_view engine_prefix) {
  const AclEntry* deciding = access.Longest(engine_prefix);
  return deciding != nullptr && deciding->audit;
}

bool AuditedAbove(const Access& access, absl::string_view engine_prefix) {
  return !engine_prefix.empty() &&
         AuditedAt(access, engine_prefix.substr(0, engine_prefix.size() - 1));
}

absl::Status AuditFlagIsAdministrators() {
  return absl::PermissionDeniedError(
      "only an administrator may change whether keys are audited: an ACL entry set must carry "
      "the audit flag that decides for its prefix, one removed the flag of the entry above it "
      "(audited writes share the audit log's retention with the cluster's own entries)");
}

uint64_t NamespaceUserOf(absl::string_view key) {
  if (key.size() < kAclNamespaceBytes || key[0] != '\0' || key[1] != 't') return 0;
  uint64_t id = 0;
  for (size_t i = 2; i < kAclNamespaceBytes; ++i) id = (id << 8) | static_cast<uint8_t>(key[i]);
  return id;
}

std::string ModeString(uint32_t mode) {
  static constexpr char kLetters[] = {'c', 'd', 'w', 'r'};
  std::string out;
  for (int shift : {kOwnerShift, kGroupShift, kOthersShift}) {
    const uint32_t bits = ClassBits(mode, shift);
    for (int i = 0; i < 4; ++i) out.push_back((bits & (kPermCreate >> i)) ? kLetters[i] : '-');
  }
  return out;
}

absl::StatusOr<uint32_t> ParseMode(absl::string_view text) {
  if (text.size() == 12) {
    static constexpr char kLetters[] = {'c', 'd', 'w', 'r'};
    uint32_t mode = 0;
    for (size_t i = 0; i < 12; ++i) {
      const char letter = kLetters[i % 4];
      mode <<= 1;
      if (text[i] == letter) {
        mode |= 1;
      } else if (text[i] != '-') {
        return absl::InvalidArgumentError(absl::StrCat(
            "mode \"", absl::CHexEscape(text), "\": position ", i + 1, " is '", std::string(1, letter),
            "' or '-' (owner, group, others, each \"cdwr\": create, delete, write, read)"));
      }
    }
    return mode;
  }
  uint32_t mode = 0;
  if (text.size() == 3 && absl::SimpleHexAtoi(text, &mode) && mode <= kMaxMode) return mode;
  return absl::InvalidArgumentError(
      absl::StrCat("mode \"", absl::CHexEscape(text),
                   "\" is neither 12 letters such as \"cdwr--wr---r\" (owner, group, others, "
                   "each create, delete, write, read, '-' for none) nor 3 hex digits (\"f31\")"));
}

bool Access::InGroup(uint64_t user_id, uint64_t group_id) const {
  return member_of.contains(std::make_pair(user_id, group_id));
}

const AclEntry* Access::Longest(absl::string_view key, absl::string_view* prefix) const {
  // The greatest entry <= key is the answer when it is a prefix of key (a
  // longer prefix would sort between the two). Otherwise no prefix of key
  // longer than what the two share can be an entry, so look again below
  // the shared part. Each round shortens the bound: a few rounds of
  // O(log n), however many entries there are.
  absl::string_view bound = key;
  while (!acls.empty()) {
    auto it = acls.upper_bound(bound);
    if (it == acls.begin()) return nullptr;
    --it;
    const absl::string_view candidate = it->first;
    if (absl::StartsWith(bound, candidate)) {
      if (prefix != nullptr) *prefix = candidate;
      return &it->second;
    }
    size_t common = 0;
    const size_t limit = std::min(candidate.size(), bound.size());
    while (common < limit && candidate[common] == bound[common]) ++common;
    bound = bound.substr(0, common);
  }
  return nullptr;
}

bool Access::AnyUnder(absl::string_view prefix) const {
  auto it = acls.upper_bound(prefix);
  return it != acls.end() && absl::StartsWith(it->first, prefix);
}

uint32_t Access::Allowed(uint64_t user_id, absl::string_view key) const {
  const AclEntry* entry = Longest(key);
  if (entry == nullptr) {
    // The default: the namespace's user alone, as before ACLs existed.
    const uint64_t owner = NamespaceUserOf(key);
    return owner != 0 && owner == user_id ? kPermAll : 0;
  }
  if (user_id == entry->owner) return ClassBits(entry->mode, kOwnerShift);
  if (entry->group_id != 0 && InGroup(user_id, entry->group_id)) {
    return ClassBits(entry->mode, kGroupShift);
  }
  return ClassBits(entry->mode, kOthersShift);
}

std::string EncodeSetAdmin(uint64_t user_id, bool admin, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::SetAdmin, fb::CreateSetAdmin(b, user_id, admin), actor);
}

std::string EncodeCreateGroup(absl::string_view name, int64_t created_at_ms, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(128);
  auto n = b.CreateString(name.data(), name.size());
  return EncodeBody(b, fb::CommandBody::NewGroup, fb::CreateNewGroup(b, n, created_at_ms), actor);
}

std::string EncodeRenameGroup(uint64_t group_id, absl::string_view name, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(128);
  auto n = b.CreateString(name.data(), name.size());
  return EncodeBody(b, fb::CommandBody::RenameGroup, fb::CreateRenameGroup(b, group_id, n), actor);
}

std::string EncodeDeleteGroup(uint64_t group_id, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::DeleteGroup, fb::CreateDeleteGroup(b, group_id), actor);
}

std::string EncodeSetGroupMember(uint64_t group_id, uint64_t user_id, bool member, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::SetGroupMember,
                    fb::CreateSetGroupMember(b, group_id, user_id, member), actor);
}

std::string EncodeSetAcl(absl::string_view prefix, const AclEntry& entry, const Actor& actor,
                         bool keep_audit) {
  flatbuffers::FlatBufferBuilder b(128 + prefix.size());
  auto p = b.CreateVector(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
  return EncodeBody(b, fb::CommandBody::SetAcl,
                    fb::CreateSetAcl(b, p, entry.owner, entry.group_id,
                                     static_cast<uint16_t>(entry.mode), entry.audit,
                                     /*remove=*/false, /*audit_needs_admin=*/true, keep_audit),
                    actor);
}

std::string EncodeRemoveAcl(absl::string_view prefix, const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(128 + prefix.size());
  auto p = b.CreateVector(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
  return EncodeBody(b, fb::CommandBody::SetAcl,
                    fb::CreateSetAcl(b, p, 0, 0, 0, false, /*remove=*/true,
                                     /*audit_needs_admin=*/true),
                    actor);
}

std::string EncodeImportAccess(absl::string_view source, const Access& access,
                               const Actor& actor) {
  flatbuffers::FlatBufferBuilder b(1024);
  Access sent = access;
  sent.import_source.clear();  // the command's source says it
  auto table = AclState::Encode(b, sent);
  auto s = b.CreateString(source.data(), source.size());
  return EncodeBody(b, fb::CommandBody::ImportAccess, fb::CreateImportAccess(b, s, table), actor);
}

Access AclState::Current() const {
  absl::ReaderMutexLock lock(&mu_);
  return access_;
}

bool AclState::Await(const std::function<bool(const Access&)>& pred, absl::Time deadline) const {
  auto holds = [this, &pred]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pred(access_); };
  absl::ReaderMutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(&holds), deadline);
}

uint32_t AclState::Allowed(uint64_t user_id, absl::string_view engine_key) const {
  absl::ReaderMutexLock lock(&mu_);
  return access_.Allowed(user_id, engine_key);
}

bool AclState::Uniform(uint64_t user_id, absl::string_view engine_prefix, uint32_t* bits) const {
  absl::ReaderMutexLock lock(&mu_);
  *bits = access_.Allowed(user_id, engine_prefix);
  return !access_.AnyUnder(engine_prefix);
}

bool AclState::IsAdmin(uint64_t user_id) const {
  absl::ReaderMutexLock lock(&mu_);
  return access_.IsAdmin(user_id);
}

bool AclState::AuditsKey(absl::string_view engine_key) const {
  absl::ReaderMutexLock lock(&mu_);
  const AclEntry* entry = access_.Longest(engine_key);
  return entry != nullptr && entry->audit;
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::SetAdmin& cmd, UserExists user_exists) {
  const uint64_t user = cmd.user_id();
  if (!user_exists(user)) return absl::NotFoundError(absl::StrCat("user ", user, " not found"));
  if (user == kFirstUserId) {
    if (cmd.admin()) return user;
    return absl::FailedPreconditionError(
        "the first account is always an administrator");
  }
  absl::MutexLock lock(&mu_);
  if (cmd.admin()) {
    if (!access_.admins.contains(user) && access_.admins.size() >= kMaxAdmins) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the cluster has ", kMaxAdmins, " administrators, the limit"));
    }
    access_.admins.insert(user);
  } else {
    access_.admins.erase(user);
  }
  return user;
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::NewGroup& cmd) {
  const absl::string_view name = View(cmd.name());
  if (absl::Status s = CheckGroupName(name); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (access_.group_by_name.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("a group named \"", name, "\" exists"));
  }
  if (access_.groups.size() >= kMaxGroups) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the cluster has ", kMaxGroups, " groups, the limit"));
  }
  Group group;
  group.id = access_.next_group_id++;
  group.name = std::string(name);
  group.created_at_ms = cmd.created_at_ms();
  access_.group_by_name.emplace(group.name, group.id);
  const uint64_t id = group.id;
  access_.groups.emplace(id, std::move(group));
  return id;
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::RenameGroup& cmd) {
  const absl::string_view name = View(cmd.name());
  if (absl::Status s = CheckGroupName(name); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = access_.groups.find(cmd.group_id());
  if (it == access_.groups.end()) {
    return absl::NotFoundError(absl::StrCat("group ", cmd.group_id(), " not found"));
  }
  if (it->second.name == name) return it->first;
  if (access_.group_by_name.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("a group named \"", name, "\" exists"));
  }
  access_.group_by_name.erase(it->second.name);
  it->second.name = std::string(name);
  access_.group_by_name.emplace(it->second.name, it->first);
  return it->first;
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::DeleteGroup& cmd) {
  absl::MutexLock lock(&mu_);
  auto it = access_.groups.find(cmd.group_id());
  if (it == access_.groups.end()) {
    return absl::NotFoundError(absl::StrCat("group ", cmd.group_id(), " not found"));
  }
  access_.memberships -= it->second.members.size();
  for (uint64_t member : it->second.members) {
    access_.member_of.erase(std::make_pair(member, it->first));
  }
  access_.group_by_name.erase(it->second.name);
  access_.groups.erase(it);
  return cmd.group_id();
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::SetGroupMember& cmd, UserExists user_exists) {
  if (cmd.member() && !user_exists(cmd.user_id())) {
    return absl::NotFoundError(absl::StrCat("user ", cmd.user_id(), " not found"));
  }
  absl::MutexLock lock(&mu_);
  auto it = access_.groups.find(cmd.group_id());
  if (it == access_.groups.end()) {
    return absl::NotFoundError(absl::StrCat("group ", cmd.group_id(), " not found"));
  }
  Group& group = it->second;
  if (cmd.member()) {
    if (group.members.contains(cmd.user_id())) return cmd.user_id();
    if (access_.memberships >= kMaxGroupMemberships) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the cluster has ", kMaxGroupMemberships, " group memberships, the limit"));
    }
    group.members.insert(cmd.user_id());
    access_.member_of.emplace(cmd.user_id(), group.id);
    ++access_.memberships;
  } else if (group.members.erase(cmd.user_id()) > 0) {
    access_.member_of.erase(std::make_pair(cmd.user_id(), group.id));
    --access_.memberships;
  }
  return cmd.user_id();
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::SetAcl& cmd, UserExists user_exists,
                                         uint64_t actor_user) {
  const absl::string_view prefix = View(cmd.prefix());
  if (absl::Status s = CheckAclPrefix(prefix); !s.ok()) return s;
  // Audited writes share the audit log's retention with the cluster's own
  // entries: a user who could audit every write of theirs could push the
  // history of every change out of the log, and one who could drop an
  // administrator's flag could stop being audited. So the flag is an
  // administrator's, checked here as well as by the route (which reads the
  // entries before proposing: this closes the race with a change between).
  // What counts is whether any key's audit changes: the longest entry
  // decides, so a new entry under an audited one changes it unless it is
  // audited too, and removing an entry hands its keys to the one above.
  auto refuses_audit_change = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cmd.audit_needs_admin() && actor_user != 0 && !access_.IsAdmin(actor_user);
  };
  if (cmd.remove()) {
    absl::MutexLock lock(&mu_);
    auto it = access_.acls.find(prefix);
    if (it == access_.acls.end()) return absl::NotFoundError("no ACL on this prefix");
    if (it->second.audit != AuditedAbove(access_, prefix) && refuses_audit_change()) {
      return AuditFlagIsAdministrators();
    }
    access_.acls.erase(it);
    return 0;
  }
  if (cmd.mode() > kMaxMode) {
    return absl::InvalidArgumentError("a mode has 12 bits");
  }
  if (!user_exists(cmd.owner())) {
    return absl::NotFoundError(absl::StrCat("user ", cmd.owner(), " (the owner) not found"));
  }
  absl::MutexLock lock(&mu_);
  if (cmd.group_id() != 0 && !access_.groups.contains(cmd.group_id())) {
    return absl::NotFoundError(absl::StrCat("group ", cmd.group_id(), " not found"));
  }
  auto it = access_.acls.find(prefix);
  const bool decided = AuditedAt(access_, prefix);
  const bool audit = cmd.keep_audit() ? decided : cmd.audit();
  if (audit != decided && refuses_audit_change()) return AuditFlagIsAdministrators();
  if (it == access_.acls.end() && access_.acls.size() >= kMaxAclEntries) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the cluster has ", kMaxAclEntries, " ACL entries, the limit"));
  }
  AclEntry entry;
  entry.owner = cmd.owner();
  entry.group_id = cmd.group_id();
  entry.mode = cmd.mode();
  entry.audit = audit;
  if (it == access_.acls.end()) {
    access_.acls.emplace(std::string(prefix), entry);
  } else {
    it->second = entry;
  }
  return 0;
}

flatbuffers::Offset<fb::Access> AclState::Encode(flatbuffers::FlatBufferBuilder& builder) const {
  absl::ReaderMutexLock lock(&mu_);
  return Encode(builder, access_);
}

flatbuffers::Offset<fb::Access> AclState::Encode(flatbuffers::FlatBufferBuilder& builder,
                                                 const Access& access) {
  if (access.admins.empty() && access.groups.empty() && access.acls.empty() &&
      access.next_group_id == 1 && access.import_source.empty()) {
    return 0;
  }
  std::vector<uint64_t> admins(access.admins.begin(), access.admins.end());
  std::sort(admins.begin(), admins.end());
  auto admin_vector = builder.CreateVector(admins);
  std::vector<flatbuffers::Offset<fb::Group>> groups;
  groups.reserve(access.groups.size());
  for (const auto& [id, group] : access.groups) {
    std::vector<uint64_t> members(group.members.begin(), group.members.end());
    std::sort(members.begin(), members.end());
    auto name = builder.CreateString(group.name);
    auto member_vector = builder.CreateVector(members);
    groups.push_back(fb::CreateGroup(builder, id, name, group.created_at_ms, member_vector));
  }
  auto group_vector = builder.CreateVector(groups);
  std::vector<flatbuffers::Offset<fb::AclEntry>> acls;
  acls.reserve(access.acls.size());
  for (const auto& [prefix, entry] : access.acls) {
    auto p = builder.CreateVector(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
    acls.push_back(fb::CreateAclEntry(builder, p, entry.owner, entry.group_id,
                                      static_cast<uint16_t>(entry.mode), entry.audit));
  }
  auto acl_vector = builder.CreateVector(acls);
  auto import_source =
      access.import_source.empty() ? 0 : builder.CreateString(access.import_source);
  return fb::CreateAccess(builder, admin_vector, group_vector, acl_vector, access.next_group_id,
                          import_source);
}

absl::StatusOr<Access> AclState::Decode(const fb::Access* in) {
  Access access;
  if (in == nullptr) return access;
  access.next_group_id = in->next_group_id();
  if (access.next_group_id == 0) return absl::InvalidArgumentError("next group id is 0");
  access.import_source = std::string(View(in->import_source()));
  if (in->admins() != nullptr) {
    if (in->admins()->size() > kMaxAdmins) {
      return absl::InvalidArgumentError("more administrators than the limit");
    }
    uint64_t last = 0;
    for (uint64_t id : *in->admins()) {
      if (id <= last || id == kFirstUserId) {
        return absl::InvalidArgumentError("administrators are not sorted and distinct");
      }
      access.admins.insert(id);
      last = id;
    }
  }
  if (in->groups() != nullptr) {
    if (in->groups()->size() > kMaxGroups) {
      return absl::InvalidArgumentError("more groups than the limit");
    }
    for (const fb::Group* g : *in->groups()) {
      Group group;
      group.id = g->id();
      group.name = std::string(View(g->name()));
      group.created_at_ms = g->created_at_ms();
      if (absl::Status s = CheckGroupName(group.name); !s.ok()) return s;
      if (group.id == 0 || group.id >= access.next_group_id ||
          (!access.groups.empty() && access.groups.rbegin()->first >= group.id)) {
        return absl::InvalidArgumentError("group ids are not sorted, distinct and handed out");
      }
      if (!access.group_by_name.emplace(group.name, group.id).second) {
        return absl::InvalidArgumentError(absl::StrCat("group name \"", group.name, "\" twice"));
      }
      if (g->members() != nullptr) {
        uint64_t last = 0;
        for (uint64_t member : *g->members()) {
          if (member <= last) {
            return absl::InvalidArgumentError("group members are not sorted and distinct");
          }
          group.members.insert(member);
          access.member_of.emplace(member, group.id);
          last = member;
        }
      }
      access.memberships += group.members.size();
      if (access.memberships > kMaxGroupMemberships) {
        return absl::InvalidArgumentError("more group memberships than the limit");
      }
      access.groups.emplace_hint(access.groups.end(), group.id, std::move(group));
    }
  }
  if (in->acls() != nullptr) {
    if (in->acls()->size() > kMaxAclEntries) {
      return absl::InvalidArgumentError("more ACL entries than the limit");
    }
    for (const fb::AclEntry* e : *in->acls()) {
      const absl::string_view prefix = View(e->prefix());
      if (absl::Status s = CheckAclPrefix(prefix); !s.ok()) return s;
      if (!access.acls.empty() && access.acls.rbegin()->first >= prefix) {
        return absl::InvalidArgumentError("ACL prefixes are not sorted and distinct");
      }
      if (e->mode() > kMaxMode) return absl::InvalidArgumentError("an ACL mode has 12 bits");
      AclEntry entry;
      entry.owner = e->owner();
      entry.group_id = e->group_id();
      entry.mode = e->mode();
      entry.audit = e->audit();
      access.acls.emplace_hint(access.acls.end(), std::string(prefix), entry);
    }
  }
  return access;
}

absl::StatusOr<uint64_t> AclState::Apply(const fb::ImportAccess& cmd) {
  absl::StatusOr<Access> imported = Decode(cmd.access());
  if (!imported.ok()) return imported.status();
  std::string source(View(cmd.source()));
  if (source.empty()) source = "import";
  absl::MutexLock lock(&mu_);
  if (!access_.import_source.empty()) {
    return absl::AlreadyExistsError(
        absl::StrCat("the access table was taken back already (from ", access_.import_source, ")"));
  }
  if (!access_.admins.empty() || !access_.groups.empty() || !access_.acls.empty()) {
    // The cluster's own table stays, and that is final: a table emptied
    // later does not take this one.
    access_.import_source = absl::StrCat(source, ", not taken back");
    return kAccessKept;
  }
  imported->import_source = std::move(source);
  access_ = *std::move(imported);
  return 0;
}

void AclState::Replace(Access access) {
  absl::MutexLock lock(&mu_);
  access_ = std::move(access);
}

}  // namespace logkv::server::control
