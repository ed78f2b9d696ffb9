#include "server/control/control_state.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "flatbuffers/flatbuffers.h"
#include "server/control/command_encoding.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

namespace {

constexpr uint32_t kSnapshotFormatVersion = 1;

// FlatBuffers reads scalars in place and the verifier refuses misaligned
// ones, but Raft hands over log entries and snapshots at whatever address
// they were read to: copy them into 8-byte-aligned storage first (commands
// and snapshots are small, and bounded before this).
class AlignedBytes {
 public:
  explicit AlignedBytes(absl::string_view bytes)
      : storage_((bytes.size() + sizeof(uint64_t) - 1) / sizeof(uint64_t)), size_(bytes.size()) {
    if (size_ > 0) std::memcpy(storage_.data(), bytes.data(), size_);
  }
  const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(storage_.data()); }
  size_t size() const { return size_; }

 private:
  std::vector<uint64_t> storage_;
  size_t size_;
};

flatbuffers::Verifier::Options VerifierOptions(size_t bytes) {
  flatbuffers::Verifier::Options options;
  options.max_depth = 8;
  // Bounds the verifier's work: no buffer can hold more tables than bytes / 4.
  options.max_tables = std::max<size_t>(16, bytes / 4);
  options.check_alignment = true;
  return options;
}

std::string Finish(flatbuffers::FlatBufferBuilder& builder) {
  return std::string(reinterpret_cast<const char*>(builder.GetBufferPointer()), builder.GetSize());
}

std::string Quoted(absl::string_view text) { return absl::StrCat("\"", absl::CHexEscape(text), "\""); }

absl::string_view View(const flatbuffers::String* s) {
  return s == nullptr ? absl::string_view() : absl::string_view(s->data(), s->size());
}

// Node ids and addresses are printable ASCII without spaces: they appear in
// ring positions, URLs, logs and JSON.
bool Printable(absl::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

absl::Status CheckNodeId(absl::string_view node_id) {
  if (node_id.empty()) return absl::InvalidArgumentError("node id is empty");
  if (node_id.size() > kMaxNodeIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("node id of ", node_id.size(), " bytes is over the limit of ", kMaxNodeIdBytes));
  }
  if (!Printable(node_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("node id ", Quoted(node_id), " is not printable ASCII without spaces"));
  }
  return absl::OkStatus();
}

absl::Status CheckAddress(absl::string_view what, absl::string_view address, bool may_be_empty) {
  if (address.empty()) {
    if (may_be_empty) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  }
  if (address.size() > kMaxAddressBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", address.size(),
                                                   " bytes is over the limit of ", kMaxAddressBytes));
  }
  if (!Printable(address)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", Quoted(address), " is not printable ASCII without spaces"));
  }
  return absl::OkStatus();
}

std::optional<Role> RoleOf(fb::Role role) {
  switch (role) {
    case fb::Role::Voter:
      return Role::kVoter;
    case fb::Role::Standby:
      return Role::kStandby;
    case fb::Role::Spare:
      return Role::kSpare;
  }
  return std::nullopt;
}

std::optional<MemberState> StateOf(fb::MemberState state) {
  switch (state) {
    case fb::MemberState::Joining:
      return MemberState::kJoining;
    case fb::MemberState::Active:
      return MemberState::kActive;
    case fb::MemberState::Leaving:
      return MemberState::kLeaving;
    case fb::MemberState::Removed:
      return MemberState::kRemoved;
  }
  return std::nullopt;
}

absl::Status CheckReplicasRange(uint32_t replicas) {
  if (replicas < 1 || replicas > kMaxReplicas) {
    return absl::InvalidArgumentError(
        absl::StrCat("replicas ", replicas, " is not in [1, ", kMaxReplicas, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckVnodesRange(uint32_t vnodes) {
  if (vnodes < 1 || vnodes > kMaxVnodesPerMember) {
    return absl::InvalidArgumentError(
        absl::StrCat("vnodes per member ", vnodes, " is not in [1, ", kMaxVnodesPerMember, "]"));
  }
  return absl::OkStatus();
}

// What a member asks for, checked alone (not against the others).
absl::Status CheckMemberFields(const Member& member) {
  if (member.raft_id == 0) return absl::InvalidArgumentError("raft id 0 is reserved");
  if (absl::Status s = CheckNodeId(member.node_id); !s.ok()) return s;
  if (absl::Status s = CheckAddress("binary address", member.binary_address, false); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckAddress("http address", member.http_address, true); !s.ok()) {
    return s;
  }
  return CheckAddress("control address", member.control_address, true);
}

flatbuffers::Offset<fb::AddMember> BuildAddMember(flatbuffers::FlatBufferBuilder& builder,
                                                  const Member& member) {
  auto node_id = builder.CreateString(member.node_id);
  auto binary_address = builder.CreateString(member.binary_address);
  auto http_address = builder.CreateString(member.http_address);
  auto control_address = builder.CreateString(member.control_address);
  return fb::CreateAddMember(builder, member.raft_id, node_id, binary_address, http_address,
                             static_cast<fb::Role>(member.role), control_address);
}

// The member an AddMember table describes (role not checked here).
Member MemberFrom(const fb::AddMember& add) {
  Member member;
  member.raft_id = add.raft_id();
  member.node_id = std::string(View(add.node_id()));
  member.binary_address = std::string(View(add.binary_address()));
  member.http_address = std::string(View(add.http_address()));
  member.control_address = std::string(View(add.control_address()));
  return member;
}

// AlreadyExists when one of member's addresses is another member's (a
// removed member's addresses are free again).
absl::Status CheckAddressesFree(const ClusterConfig& config, const Member& member) {
  for (const auto& [id, other] : config.members) {
    if (id == member.node_id || other.state == MemberState::kRemoved) continue;
    for (const std::string* address :
         {&member.binary_address, &member.http_address, &member.control_address}) {
      if (address->empty()) continue;
      if (*address == other.binary_address || *address == other.http_address ||
          *address == other.control_address) {
        return absl::AlreadyExistsError(
            absl::StrCat("address ", Quoted(*address), " is taken by ", Quoted(id)));
      }
    }
  }
  return absl::OkStatus();
}


std::string EncodeNodeIdCommand(absl::string_view node_id, fb::CommandBody type,
                                const CommandOptions& options) {
  flatbuffers::FlatBufferBuilder builder(128);
  auto id = builder.CreateString(node_id.data(), node_id.size());
  flatbuffers::Offset<void> body;
  switch (type) {
    case fb::CommandBody::ActivateMember:
      body = fb::CreateActivateMember(builder, id).Union();
      break;
    case fb::CommandBody::BeginLeave:
      body = fb::CreateBeginLeave(builder, id).Union();
      break;
    default:
      body = fb::CreateRemoveMember(builder, id).Union();
      break;
  }
  return FinishCommand(builder, type, body, options);
}

// The commands, on a state already locked. Each checks everything before it
// changes anything, so a refused command leaves the state as it was.

absl::StatusOr<uint64_t> ApplyAddMember(ClusterConfig& config, const fb::AddMember& add) {
  Member member = MemberFrom(add);
  std::optional<Role> role = RoleOf(add.role());
  if (!role.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown role ", static_cast<int>(add.role())));
  }
  member.role = *role;
  if (absl::Status s = CheckMemberFields(member); !s.ok()) return s;
  if (config.members.size() >= kMaxMembers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the cluster has the most members it may have (", kMaxMembers,
                     ", removed ones included)"));
  }
  for (const auto& [id, other] : config.members) {
    if (id == member.node_id) {
      // A removed member's node id may join again (a node that left comes
      // back); any other is taken.
      if (other.state == MemberState::kRemoved) continue;
      return absl::AlreadyExistsError(absl::StrCat(
          "node id ", Quoted(id), " is taken (", MemberStateName(other.state), ")"));
    }
    if (other.raft_id == member.raft_id) {
      return absl::AlreadyExistsError(absl::StrCat("raft id ", member.raft_id, " is taken by ",
                                                   Quoted(id), " (",
                                                   MemberStateName(other.state), ")"));
    }
  }
  if (absl::Status s = CheckAddressesFree(config, member); !s.ok()) return s;
  if (member.binary_address == member.http_address ||
      member.binary_address == member.control_address) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the binary address ", Quoted(member.binary_address), " is given twice"));
  }
  if (!member.http_address.empty() && member.http_address == member.control_address) {
    return absl::InvalidArgumentError(
        absl::StrCat("http and control address are both ", Quoted(member.http_address)));
  }
  member.state = MemberState::kJoining;
  member.since_epoch = ++config.epoch;
  config.members.insert_or_assign(member.node_id, std::move(member));
  return config.epoch;
}

absl::StatusOr<uint64_t> ApplyReplaceMember(ClusterConfig& config, const fb::ReplaceMember& cmd) {
  if (cmd.member() == nullptr) return absl::InvalidArgumentError("replace names no member");
  Member member = MemberFrom(*cmd.member());
  if (absl::Status s = CheckMemberFields(member); !s.ok()) return s;
  auto it = config.members.find(member.node_id);
  if (it == config.members.end()) {
    return absl::NotFoundError(absl::StrCat("no member ", Quoted(member.node_id)));
  }
  Member& current = it->second;
  if (current.state != MemberState::kJoining && current.state != MemberState::kActive) {
    return absl::FailedPreconditionError(absl::StrCat("cannot replace ", Quoted(member.node_id),
                                                      ": it is ",
                                                      MemberStateName(current.state)));
  }
  if (current.raft_id == member.raft_id) {
    return absl::AlreadyExistsError(absl::StrCat(Quoted(member.node_id), " already has raft id ",
                                                 member.raft_id));
  }
  for (const auto& [id, other] : config.members) {
    if (id != member.node_id && other.raft_id == member.raft_id) {
      return absl::AlreadyExistsError(
          absl::StrCat("raft id ", member.raft_id, " is taken by ", Quoted(id)));
    }
  }
  if (absl::Status s = CheckAddressesFree(config, member); !s.ok()) return s;
  current.raft_id = member.raft_id;
  current.binary_address = std::move(member.binary_address);
  current.http_address = std::move(member.http_address);
  current.control_address = std::move(member.control_address);
  current.since_epoch = ++config.epoch;
  return config.epoch;
}

// The member named by a command, which must be in state `from`.
absl::StatusOr<Member*> MemberIn(ClusterConfig& config, const flatbuffers::String* node_id,
                                 std::initializer_list<MemberState> from, absl::string_view verb) {
  absl::string_view id = View(node_id);
  if (absl::Status s = CheckNodeId(id); !s.ok()) return s;
  auto it = config.members.find(std::string(id));
  if (it == config.members.end()) {
    return absl::NotFoundError(absl::StrCat("no member ", Quoted(id)));
  }
  Member& member = it->second;
  if (std::find(from.begin(), from.end(), member.state) == from.end()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot ", verb, " ", Quoted(id), ": it is ",
                                                      MemberStateName(member.state)));
  }
  return &member;
}

uint64_t Transition(ClusterConfig& config, Member& member, MemberState to) {
  member.state = to;
  member.since_epoch = ++config.epoch;
  return config.epoch;
}

absl::StatusOr<uint64_t> ApplyActivate(ClusterConfig& config, const fb::ActivateMember& cmd) {
  absl::StatusOr<Member*> member =
      MemberIn(config, cmd.node_id(), {MemberState::kJoining}, "activate");
  if (!member.ok()) return member.status();
  return Transition(config, **member, MemberState::kActive);
}

absl::StatusOr<uint64_t> ApplyBeginLeave(ClusterConfig& config, const fb::BeginLeave& cmd) {
  absl::StatusOr<Member*> member =
      MemberIn(config, cmd.node_id(), {MemberState::kActive}, "begin the leave of");
  if (!member.ok()) return member.status();
  // N is capped at the ring's size: fewer members than N each hold every
  // key. The last one cannot leave: nobody would hold its keys.
  if (config.CountInState(MemberState::kActive) == 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot begin the leave of ", Quoted((*member)->node_id),
                     ": no other active member would hold its keys"));
  }
  return Transition(config, **member, MemberState::kLeaving);
}

absl::StatusOr<uint64_t> ApplyRemove(ClusterConfig& config, const fb::RemoveMember& cmd) {
  absl::StatusOr<Member*> member = MemberIn(
      config, cmd.node_id(), {MemberState::kJoining, MemberState::kLeaving}, "remove");
  if (!member.ok()) return member.status();
  return Transition(config, **member, MemberState::kRemoved);
}

absl::StatusOr<uint64_t> ApplySetReplicas(ClusterConfig& config, const fb::SetReplicas& cmd) {
  uint32_t replicas = cmd.replicas();
  if (absl::Status s = CheckReplicasRange(replicas); !s.ok()) return s;
  if (replicas == config.replicas) return config.epoch;  // no change, no new epoch
  // Committed once, by a new cluster's first node. Changing N later would
  // move keys between owner sets with no hand-off (owners missing what a
  // quorum of the old ones held): refused, like a change of vnodes.
  if (config.replicas != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the cluster's replication factor is ", config.replicas,
                     ", committed when it was created; it cannot change to ", replicas));
  }
  config.replicas = replicas;
  return ++config.epoch;
}

absl::StatusOr<uint64_t> ApplySetVnodes(ClusterConfig& config, const fb::SetVnodes& cmd) {
  uint32_t vnodes = cmd.vnodes_per_member();
  if (absl::Status s = CheckVnodesRange(vnodes); !s.ok()) return s;
  if (vnodes == config.vnodes_per_member) return config.epoch;  // no change, no new epoch
  // Changing it moves nearly every key: only before any data is placed.
  for (const auto& [id, member] : config.members) {
    if (member.state == MemberState::kActive || member.state == MemberState::kLeaving) {
      return absl::FailedPreconditionError(
          absl::StrCat("vnodes per member can only change before any member is active (",
                       Quoted(id), " is ", MemberStateName(member.state), ")"));
    }
  }
  config.vnodes_per_member = vnodes;
  return ++config.epoch;
}

absl::StatusOr<uint64_t> ApplySetClusterId(ClusterConfig& config, const fb::SetClusterId& cmd) {
  if (cmd.id() == nullptr || cmd.id()->size() != kClusterIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a cluster id is ", kClusterIdBytes, " bytes"));
  }
  const std::string id(reinterpret_cast<const char*>(cmd.id()->data()), cmd.id()->size());
  if (id == config.cluster_id) return config.epoch;  // no change, no new epoch
  if (!config.cluster_id.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the cluster's id is ", absl::BytesToHexString(config.cluster_id),
                     ", committed when it was created; it cannot change"));
  }
  config.cluster_id = id;
  return ++config.epoch;
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kVoter:
      return "voter";
    case Role::kStandby:
      return "standby";
    case Role::kSpare:
      return "spare";
  }
  return "unknown";
}

const char* MemberStateName(MemberState state) {
  switch (state) {
    case MemberState::kJoining:
      return "joining";
    case MemberState::kActive:
      return "active";
    case MemberState::kLeaving:
      return "leaving";
    case MemberState::kRemoved:
      return "removed";
  }
  return "unknown";
}

const Member* ClusterConfig::Find(absl::string_view node_id) const {
  auto it = members.find(std::string(node_id));
  return it == members.end() ? nullptr : &it->second;
}

size_t ClusterConfig::CountInState(MemberState state) const {
  return std::count_if(members.begin(), members.end(),
                       [state](const auto& entry) { return entry.second.state == state; });
}

std::string EncodeAddMember(const Member& member, CommandOptions options) {
  flatbuffers::FlatBufferBuilder builder(256);
  auto body = BuildAddMember(builder, member);
  return FinishCommand(builder, fb::CommandBody::AddMember, body.Union(), options);
}

std::string EncodeReplaceMember(const Member& member, CommandOptions options) {
  flatbuffers::FlatBufferBuilder builder(256);
  auto body = fb::CreateReplaceMember(builder, BuildAddMember(builder, member));
  return FinishCommand(builder, fb::CommandBody::ReplaceMember, body.Union(), options);
}

std::string EncodeActivateMember(absl::string_view node_id, CommandOptions options) {
  return EncodeNodeIdCommand(node_id, fb::CommandBody::ActivateMember, options);
}

std::string EncodeBeginLeave(absl::string_view node_id, CommandOptions options) {
  return EncodeNodeIdCommand(node_id, fb::CommandBody::BeginLeave, options);
}

std::string EncodeRemoveMember(absl::string_view node_id, CommandOptions options) {
  return EncodeNodeIdCommand(node_id, fb::CommandBody::RemoveMember, options);
}

std::string EncodeSetReplicas(uint32_t replicas, CommandOptions options) {
  flatbuffers::FlatBufferBuilder builder(64);
  auto body = fb::CreateSetReplicas(builder, replicas);
  return FinishCommand(builder, fb::CommandBody::SetReplicas, body.Union(), options);
}

std::string EncodeSetClusterId(absl::string_view id, CommandOptions options) {
  flatbuffers::FlatBufferBuilder builder(64);
  auto body = fb::CreateSetClusterId(builder, ByteVector(builder, id));
  return FinishCommand(builder, fb::CommandBody::SetClusterId, body.Union(), options);
}

std::string NewClusterId() {
  std::string id(kClusterIdBytes, '\0');
  randombytes_buf(id.data(), id.size());
  return id;
}

std::string EncodeSetVnodes(uint32_t vnodes_per_member, CommandOptions options) {
  flatbuffers::FlatBufferBuilder builder(64);
  auto body = fb::CreateSetVnodes(builder, vnodes_per_member);
  return FinishCommand(builder, fb::CommandBody::SetVnodes, body.Union(), options);
}

std::string EncodeBarrier() {
  flatbuffers::FlatBufferBuilder builder(64);
  fb::BarrierBuilder barrier(builder);
  return FinishCommand(builder, fb::CommandBody::Barrier, barrier.Finish().Union(), {});
}

std::string EncodeRecordAudit(const std::vector<AuditEventRecord>& events, CommandOptions options) {
  flatbuffers::FlatBufferBuilder builder(128 + 96 * events.size());
  std::vector<flatbuffers::Offset<fb::AuditEvent>> offsets;
  offsets.reserve(events.size());
  for (const AuditEventRecord& event : events) {
    offsets.push_back(fb::CreateAuditEvent(builder, event.at_ms, builder.CreateString(event.kind),
                                           builder.CreateString(event.actor),
                                           builder.CreateString(event.detail)));
  }
  auto body = fb::CreateRecordAudit(builder, builder.CreateVector(offsets));
  return FinishCommand(builder, fb::CommandBody::RecordAudit, body.Union(), options);
}

namespace {

// Who asked for a command, as its audit entry says it (DescribeActor). The
// username is the account's as applied here, so every server writes the
// same text; a kind this version does not know is recorded as unknown.
std::string ActorText(const fb::Command& command, const AccountState& accounts) {
  Actor actor;
  const auto kind = static_cast<uint8_t>(command.actor_kind());
  if (kind <= static_cast<uint8_t>(Actor::Kind::kAnonymous)) {
    actor.kind = static_cast<Actor::Kind>(kind);
  }
  actor.user_id = command.actor_user_id();
  if (command.actor_node() != nullptr) {
    actor.node.assign(command.actor_node()->data(), command.actor_node()->size());
  }
  std::string username;
  if (actor.kind == Actor::Kind::kUser) {
    accounts.Read([&](const Accounts& a) {
      if (const AccountUser* user = a.FindUser(actor.user_id); user != nullptr) {
        username = user->username;
      }
      return 0;
    });
  }
  return DescribeActor(actor, username);
}

}  // namespace

std::string FinishCommand(flatbuffers::FlatBufferBuilder& builder, fb::CommandBody type,
                          flatbuffers::Offset<void> body, const CommandOptions& options) {
  // Strings first: a table's fields are written after what they point to.
  flatbuffers::Offset<flatbuffers::String> node;
  if (!options.actor.node.empty()) node = builder.CreateString(options.actor.node);
  fb::CommandBuilder command(builder);
  command.add_body_type(type);
  command.add_body(body);
  // The proposer's clock: the time of the command's audit entry.
  command.add_at_ms(absl::ToUnixMillis(absl::Now()));
  if (options.if_epoch.has_value()) command.add_if_epoch(*options.if_epoch);
  if (options.requires_auth_on.has_value()) command.add_requires_auth_on(*options.requires_auth_on);
  if (options.actor.kind != Actor::Kind::kUnknown) {
    command.add_actor_kind(static_cast<fb::ActorKind>(options.actor.kind));
  }
  if (options.actor.user_id != 0) command.add_actor_user_id(options.actor.user_id);
  if (!node.IsNull()) command.add_actor_node(node);
  builder.Finish(command.Finish(), fb::CommandIdentifier());
  return std::string(reinterpret_cast<const char*>(builder.GetBufferPointer()), builder.GetSize());
}

absl::StatusOr<uint64_t> ControlState::Apply(absl::string_view command) {
  if (command.size() > kMaxCommandBytes) {
    return absl::InvalidArgumentError(absl::StrCat("command of ", command.size(),
                                                   " bytes is over the limit of ", kMaxCommandBytes));
  }
  AlignedBytes bytes(command);
  flatbuffers::Verifier verifier(bytes.data(), bytes.size(), VerifierOptions(bytes.size()));
  if (!fb::VerifyCommandBuffer(verifier)) {
    return absl::InvalidArgumentError("malformed command");
  }
  const fb::Command* cmd = fb::GetCommand(bytes.data());
  absl::StatusOr<uint64_t> result = ApplyVerified(*cmd);
  // Every accepted change becomes an audit entry, in the committed order.
  if (result.ok()) audit_.RecordCommand(*cmd, command, 0, *result, ActorText(*cmd, accounts_));
  return result;
}

absl::StatusOr<uint64_t> ControlState::ApplyVerified(const fb::Command& command) {
  const fb::Command* cmd = &command;
  {
    absl::MutexLock lock(&mu_);
    if (cmd->if_epoch().has_value() && *cmd->if_epoch() != config_.epoch) {
      return absl::AbortedError(absl::StrCat("the command is for epoch ", *cmd->if_epoch(),
                                             "; the epoch is ", config_.epoch));
    }
  }
  // The verifier accepts a union whose type is set and whose value is
  // absent (and unknown types, from newer writers): refuse both here.
  if (cmd->body_type() == fb::CommandBody::NONE || cmd->body() == nullptr) {
    return absl::InvalidArgumentError("command has no body");
  }
  if (cmd->requires_auth_on().has_value()) {
    const bool on = *cmd->requires_auth_on();
    const AuthModeCommitted mode =
        accounts_.Read([](const Accounts& a) { return a.auth_mode; });
    if (mode != AuthModeCommitted::kUnset && (mode == AuthModeCommitted::kOn) != on) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the cluster runs with accounts ", on ? "off" : "on",
          " (committed when it was bootstrapped); a node with --auth=", on ? "on" : "off",
          " cannot join it"));
    }
  }
  // Account commands take the accounts' lock only (their listeners run
  // without ControlState's lock held); applies come from one thread, so
  // nothing comes between the check above and them.
  switch (cmd->body_type()) {
    case fb::CommandBody::SetAuthMode: {
      bool lone = false;
      {
        absl::MutexLock lock(&mu_);
        lone = config_.members.size() - config_.CountInState(MemberState::kRemoved) <= 1;
      }
      return accounts_.Apply(*cmd->body_as_SetAuthMode(), lone);
    }
    case fb::CommandBody::SetJwtSecret:
      return accounts_.Apply(*cmd->body_as_SetJwtSecret());
    case fb::CommandBody::SetRateLimit:
      return accounts_.Apply(*cmd->body_as_SetRateLimit());
    case fb::CommandBody::SignUp:
      return accounts_.Apply(*cmd->body_as_SignUp());
    case fb::CommandBody::IssueApiKey:
      return accounts_.Apply(*cmd->body_as_IssueApiKey());
    case fb::CommandBody::RevokeApiKey:
      return accounts_.Apply(*cmd->body_as_RevokeApiKey());
    case fb::CommandBody::SetUserActive:
      return accounts_.Apply(*cmd->body_as_SetUserActive());
    case fb::CommandBody::EndSessions:
      return accounts_.Apply(*cmd->body_as_EndSessions());
    case fb::CommandBody::RevokeToken:
      return accounts_.Apply(*cmd->body_as_RevokeToken());
    case fb::CommandBody::TouchApiKeys:
      return accounts_.Apply(*cmd->body_as_TouchApiKeys());
    case fb::CommandBody::ImportAccounts:
      return accounts_.Apply(*cmd->body_as_ImportAccounts());
    default:
      break;
  }
  switch (cmd->body_type()) {
    case fb::CommandBody::SetConsensusPrefixes:
      return kv_.Apply(*cmd->body_as_SetConsensusPrefixes());
    case fb::CommandBody::KvWrite:
      return kv_.Apply(*cmd->body_as_KvWrite(), cmd->at_ms());
    case fb::CommandBody::KvSync:
      return kv_.Sync();
    default:
      break;
  }
  // Access commands name users by id: the accounts say which exist.
  auto user_exists = [this](uint64_t id) {
    return accounts_.Read([id](const Accounts& a) { return a.FindUser(id) != nullptr; });
  };
  switch (cmd->body_type()) {
    case fb::CommandBody::SetAdmin:
      return access_.Apply(*cmd->body_as_SetAdmin(), user_exists);
    case fb::CommandBody::NewGroup:
      return access_.Apply(*cmd->body_as_NewGroup());
    case fb::CommandBody::RenameGroup:
      return access_.Apply(*cmd->body_as_RenameGroup());
    case fb::CommandBody::DeleteGroup:
      return access_.Apply(*cmd->body_as_DeleteGroup());
    case fb::CommandBody::SetGroupMember:
      return access_.Apply(*cmd->body_as_SetGroupMember(), user_exists);
    case fb::CommandBody::ImportAccess:
      return access_.Apply(*cmd->body_as_ImportAccess());
    case fb::CommandBody::SetAcl:
      return access_.Apply(*cmd->body_as_SetAcl(), user_exists,
                           cmd->actor_kind() == fb::ActorKind::User ? cmd->actor_user_id() : 0);
    default:
      break;
  }
  absl::MutexLock lock(&mu_);
  switch (cmd->body_type()) {
    case fb::CommandBody::AddMember:
      return ApplyAddMember(config_, *cmd->body_as_AddMember());
    case fb::CommandBody::ActivateMember:
      return ApplyActivate(config_, *cmd->body_as_ActivateMember());
    case fb::CommandBody::BeginLeave:
      return ApplyBeginLeave(config_, *cmd->body_as_BeginLeave());
    case fb::CommandBody::RemoveMember:
      return ApplyRemove(config_, *cmd->body_as_RemoveMember());
    case fb::CommandBody::SetReplicas:
      return ApplySetReplicas(config_, *cmd->body_as_SetReplicas());
    case fb::CommandBody::SetVnodes:
      return ApplySetVnodes(config_, *cmd->body_as_SetVnodes());
    case fb::CommandBody::SetClusterId:
      return ApplySetClusterId(config_, *cmd->body_as_SetClusterId());
    case fb::CommandBody::ReplaceMember:
      return ApplyReplaceMember(config_, *cmd->body_as_ReplaceMember());
    case fb::CommandBody::Barrier:
      return config_.epoch;
    case fb::CommandBody::RecordAudit: {
      // Its entries are the audit state's (RecordCommand); the answer is
      // the number of events.
      const auto* events = cmd->body_as_RecordAudit()->events();
      return events == nullptr ? 0 : events->size();
    }
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown command type ", static_cast<int>(cmd->body_type())));
}

namespace {

std::string EncodeSnapshotWith(const ClusterConfig& config, const AccountState* accounts,
                               const AclState* access, const AuditState* audit,
                               const KvState* kv) {
  flatbuffers::FlatBufferBuilder builder(256 + 128 * config.members.size());
  std::vector<flatbuffers::Offset<fb::Member>> members;
  members.reserve(config.members.size());
  for (const auto& [id, member] : config.members) {
    members.push_back(fb::CreateMember(
        builder, member.raft_id, builder.CreateString(member.node_id),
        builder.CreateString(member.binary_address), builder.CreateString(member.http_address),
        static_cast<fb::Role>(member.role), static_cast<fb::MemberState>(member.state),
        member.since_epoch, builder.CreateString(member.control_address)));
  }
  auto vector = builder.CreateVector(members);
  flatbuffers::Offset<fb::Accounts> accounts_table;
  if (accounts != nullptr) accounts_table = accounts->Encode(builder);
  flatbuffers::Offset<fb::Access> access_table;
  if (access != nullptr) access_table = access->Encode(builder);
  flatbuffers::Offset<fb::AuditChain> audit_table;
  if (audit != nullptr) audit_table = audit->Encode(builder);
  flatbuffers::Offset<fb::ConsensusKeys> kv_table;
  if (kv != nullptr) kv_table = kv->Encode(builder);
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> cluster_id;
  if (!config.cluster_id.empty()) cluster_id = ByteVector(builder, config.cluster_id);
  auto snapshot = fb::CreateSnapshot(builder, kSnapshotFormatVersion, config.epoch,
                                     config.vnodes_per_member, vector, accounts_table,
                                     access_table, audit_table, kv_table, config.replicas,
                                     cluster_id);
  builder.Finish(snapshot, fb::CommandIdentifier());
  return Finish(builder);
}

// The snapshot's root, verified, or why not.
absl::StatusOr<const fb::Snapshot*> VerifiedSnapshot(const AlignedBytes& bytes) {
  flatbuffers::Verifier verifier(bytes.data(), bytes.size(), VerifierOptions(bytes.size()));
  if (!verifier.VerifyBuffer<fb::Snapshot>(fb::CommandIdentifier())) {
    return absl::InvalidArgumentError("malformed snapshot");
  }
  return flatbuffers::GetRoot<fb::Snapshot>(bytes.data());
}

}  // namespace

std::string ControlState::EncodeSnapshot(const ClusterConfig& config) {
  return EncodeSnapshotWith(config, nullptr, nullptr, nullptr, nullptr);
}

absl::StatusOr<ClusterConfig> ControlState::DecodeSnapshot(absl::string_view snapshot) {
  if (snapshot.size() > kMaxSnapshotBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "snapshot of ", snapshot.size(), " bytes is over the limit of ", kMaxSnapshotBytes));
  }
  AlignedBytes bytes(snapshot);
  flatbuffers::Verifier verifier(bytes.data(), bytes.size(), VerifierOptions(bytes.size()));
  if (!verifier.VerifyBuffer<fb::Snapshot>(fb::CommandIdentifier())) {
    return absl::InvalidArgumentError("malformed snapshot");
  }
  const fb::Snapshot* root = flatbuffers::GetRoot<fb::Snapshot>(bytes.data());
  if (root->format_version() != kSnapshotFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot format version ", root->format_version(), " is not ",
                     kSnapshotFormatVersion));
  }
  ClusterConfig config;
  config.epoch = root->epoch();
  config.replicas = root->replication_factor();
  if (const auto* id = root->cluster_id(); id != nullptr) {
    if (id->size() != kClusterIdBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("snapshot: a cluster id of ", id->size(), " bytes"));
    }
    config.cluster_id.assign(reinterpret_cast<const char*>(id->data()), id->size());
  }
  config.vnodes_per_member = root->vnodes_per_member();
  if (config.replicas != 0) {
    if (absl::Status s = CheckReplicasRange(config.replicas); !s.ok()) return s;
  }
  if (absl::Status s = CheckVnodesRange(config.vnodes_per_member); !s.ok()) return s;
  if (root->members() != nullptr) {
    if (root->members()->size() > kMaxMembers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "snapshot has ", root->members()->size(), " members, over the limit of ", kMaxMembers));
    }
    std::set<uint64_t> raft_ids;
    std::set<std::string> addresses;  // of members not removed
    for (const fb::Member* in : *root->members()) {
      Member member;
      member.raft_id = in->raft_id();
      member.node_id = std::string(View(in->node_id()));
      member.binary_address = std::string(View(in->binary_address()));
      member.http_address = std::string(View(in->http_address()));
      member.control_address = std::string(View(in->control_address()));
      std::optional<Role> role = RoleOf(in->role());
      std::optional<MemberState> state = StateOf(in->state());
      if (!role.has_value() || !state.has_value()) {
        return absl::InvalidArgumentError("snapshot has a member of unknown role or state");
      }
      member.role = *role;
      member.state = *state;
      member.since_epoch = in->since_epoch();
      if (absl::Status s = CheckMemberFields(member); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("snapshot: ", s.message()));
      }
      if (member.since_epoch == 0 || member.since_epoch > config.epoch) {
        return absl::InvalidArgumentError(absl::StrCat("snapshot: member ", Quoted(member.node_id),
                                                       " changed at epoch ", member.since_epoch,
                                                       ", not in [1, ", config.epoch, "]"));
      }
      if (!config.members.empty() && config.members.rbegin()->first >= member.node_id) {
        return absl::InvalidArgumentError("snapshot: members are not sorted and distinct");
      }
      if (!raft_ids.insert(member.raft_id).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("snapshot: raft id ", member.raft_id, " appears twice"));
      }
      if (member.state != MemberState::kRemoved) {
        for (const std::string* address :
             {&member.binary_address, &member.http_address, &member.control_address}) {
          if (!address->empty() && !addresses.insert(*address).second) {
            return absl::InvalidArgumentError(
                absl::StrCat("snapshot: address ", Quoted(*address), " appears twice"));
          }
        }
      }
      config.members.emplace_hint(config.members.end(), member.node_id, std::move(member));
    }
  }
  return config;
}

std::string ControlState::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return EncodeSnapshotWith(config_, &accounts_, &access_, &audit_, &kv_);
}

absl::Status ControlState::Restore(absl::string_view snapshot) {
  absl::StatusOr<ClusterConfig> config = DecodeSnapshot(snapshot);
  if (!config.ok()) return config.status();
  AlignedBytes bytes(snapshot);
  absl::StatusOr<const fb::Snapshot*> root = VerifiedSnapshot(bytes);
  if (!root.ok()) return root.status();
  absl::StatusOr<Accounts> accounts = AccountState::Decode((*root)->accounts());
  if (!accounts.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot: accounts: ", accounts.status().message()));
  }
  absl::StatusOr<Access> access = AclState::Decode((*root)->access());
  if (!access.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot: access: ", access.status().message()));
  }
  absl::StatusOr<AuditChainState> audit = AuditState::Decode((*root)->audit());
  if (!audit.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("snapshot: audit: ", audit.status().message()));
  }
  absl::StatusOr<ConsensusState> kv = KvState::Decode((*root)->consensus());
  if (!kv.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot: consensus keys: ", kv.status().message()));
  }
  {
    absl::MutexLock lock(&mu_);
    config_ = *std::move(config);
  }
  accounts_.Replace(*std::move(accounts));
  kv_.Replace(*std::move(kv));
  access_.Replace(*std::move(access));
  audit_.Replace(*std::move(audit));
  return absl::OkStatus();
}

ClusterConfig ControlState::Current() const {
  absl::MutexLock lock(&mu_);
  return config_;
}

uint64_t ControlState::epoch() const {
  absl::MutexLock lock(&mu_);
  return config_.epoch;
}

}  // namespace logkv::server::control
