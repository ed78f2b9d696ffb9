#include "server/control/audit_state.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "flatbuffers/flatbuffers.h"
#include "protocol/frame.h"
#include "server/control/command_encoding.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

namespace {

using protocol::View;

// Text from a command, quoted and C-escaped: entries are ASCII whatever the
// command holds, so their JSON form round-trips byte for byte.
std::string Q(absl::string_view text) { return absl::StrCat("\"", absl::CHexEscape(text), "\""); }
std::string Q(const flatbuffers::String* text) { return Q(View(text)); }

// An event's text as given when it is printable ASCII (a node escapes what
// it reports), else C-escaped whole: entries stay ASCII, so their JSON form
// round-trips byte for byte.
std::string Ascii(absl::string_view text) {
  for (char c : text) {
    if (c < 0x20 || c > 0x7e) return absl::CHexEscape(text);
  }
  return std::string(text);
}

// What an entry says of a command: its fields that matter to an auditor,
// never a secret (the JWT secret, a password hash, a key's hash). A command
// type not named here is still recorded, with its name and result.
std::string Describe(const fb::Command& command) {
  switch (command.body_type()) {
    case fb::CommandBody::AddMember: {
      const fb::AddMember& c = *command.body_as_AddMember();
      return absl::StrCat("node_id=", Q(c.node_id()), " raft_id=", c.raft_id(),
                          " binary=", Q(c.binary_address()), " http=", Q(c.http_address()),
                          " role=", fb::EnumNameRole(c.role()));
    }
    case fb::CommandBody::ReplaceMember: {
      const fb::AddMember* c = command.body_as_ReplaceMember()->member();
      if (c == nullptr) return "";
      return absl::StrCat("node_id=", Q(c->node_id()), " raft_id=", c->raft_id(),
                          " binary=", Q(c->binary_address()));
    }
    case fb::CommandBody::ActivateMember:
      return absl::StrCat("node_id=", Q(command.body_as_ActivateMember()->node_id()));
    case fb::CommandBody::BeginLeave:
      return absl::StrCat("node_id=", Q(command.body_as_BeginLeave()->node_id()));
    case fb::CommandBody::RemoveMember:
      return absl::StrCat("node_id=", Q(command.body_as_RemoveMember()->node_id()));
    case fb::CommandBody::SetReplicas:
      return absl::StrCat("replicas=", command.body_as_SetReplicas()->replicas());
    case fb::CommandBody::SetVnodes:
      return absl::StrCat("vnodes_per_member=", command.body_as_SetVnodes()->vnodes_per_member());
    case fb::CommandBody::SetAuthMode:
      return absl::StrCat("auth=", command.body_as_SetAuthMode()->on() ? "on" : "off");
    case fb::CommandBody::SetJwtSecret:
      return absl::StrCat("replace=", command.body_as_SetJwtSecret()->replace() ? "true" : "false",
                          " (the secret is not recorded)");
    case fb::CommandBody::SetRateLimit: {
      const fb::SetRateLimit& c = *command.body_as_SetRateLimit();
      return absl::StrCat("requests_per_minute=", c.requests_per_minute(), " burst=", c.burst(),
                          c.only_if_unset() ? " only_if_unset" : "");
    }
    case fb::CommandBody::SignUp:
      return absl::StrCat("username=", Q(command.body_as_SignUp()->username()));
    case fb::CommandBody::IssueApiKey: {
      const fb::IssueApiKey& c = *command.body_as_IssueApiKey();
      return absl::StrCat("user_id=", c.user_id(), " name=", Q(c.name()),
                          " prefix=", Q(c.key_prefix()), " scopes=", c.scopes(),
                          " expires_at_ms=", c.expires_at_ms());
    }
    case fb::CommandBody::RevokeApiKey: {
      const fb::RevokeApiKey& c = *command.body_as_RevokeApiKey();
      return absl::StrCat("user_id=", c.user_id(), " key_id=", c.key_id());
    }
    case fb::CommandBody::SetUserActive: {
      const fb::SetUserActive& c = *command.body_as_SetUserActive();
      return absl::StrCat("user_id=", c.user_id(), " active=", c.active() ? "true" : "false");
    }
    case fb::CommandBody::EndSessions:
      return absl::StrCat("user_id=", command.body_as_EndSessions()->user_id());
    case fb::CommandBody::ImportAccounts: {
      const fb::ImportAccounts& c = *command.body_as_ImportAccounts();
      return absl::StrCat("source=", Q(c.source()),
                          " users=", c.users() == nullptr ? 0 : c.users()->size(),
                          " api_keys=", c.api_keys() == nullptr ? 0 : c.api_keys()->size(),
                          " last=", c.last() ? "true" : "false");
    }
    case fb::CommandBody::SetClusterId: {
      const auto* id = command.body_as_SetClusterId()->id();
      if (id == nullptr) return std::string("cluster_id=");
      return absl::StrCat("cluster_id=", absl::BytesToHexString(absl::string_view(
                                             reinterpret_cast<const char*>(id->data()), id->size())));
    }
    case fb::CommandBody::SetConsensusPrefixes: {
      std::string out = "prefixes=";
      const auto* prefixes = command.body_as_SetConsensusPrefixes()->prefixes();
      if (prefixes != nullptr) {
        for (const flatbuffers::String* prefix : *prefixes) {
          absl::StrAppend(&out, out.back() == '=' ? "" : ",", Q(prefix));
        }
      }
      return out;
    }
    case fb::CommandBody::SetAdmin: {
      const fb::SetAdmin& c = *command.body_as_SetAdmin();
      return absl::StrCat("user_id=", c.user_id(), " admin=", c.admin() ? "true" : "false");
    }
    case fb::CommandBody::NewGroup:
      return absl::StrCat("name=", Q(command.body_as_NewGroup()->name()));
    case fb::CommandBody::RenameGroup: {
      const fb::RenameGroup& c = *command.body_as_RenameGroup();
      return absl::StrCat("group_id=", c.group_id(), " name=", Q(c.name()));
    }
    case fb::CommandBody::DeleteGroup:
      return absl::StrCat("group_id=", command.body_as_DeleteGroup()->group_id());
    case fb::CommandBody::SetGroupMember: {
      const fb::SetGroupMember& c = *command.body_as_SetGroupMember();
      return absl::StrCat("group_id=", c.group_id(), " user_id=", c.user_id(),
                          " member=", c.member() ? "true" : "false");
    }
    case fb::CommandBody::ImportAccess: {
      const fb::ImportAccess& c = *command.body_as_ImportAccess();
      const fb::Access* a = c.access();
      auto count = [](const auto* v) { return v == nullptr ? size_t{0} : size_t{v->size()}; };
      return absl::StrCat("source=", Q(c.source()), " admins=", a ? count(a->admins()) : 0,
                          " groups=", a ? count(a->groups()) : 0,
                          " acls=", a ? count(a->acls()) : 0);
    }
    case fb::CommandBody::SetAcl: {
      const fb::SetAcl& c = *command.body_as_SetAcl();
      if (c.remove()) return absl::StrCat("prefix=", Q(View(c.prefix())), " remove=true");
      return absl::StrCat("prefix=", Q(View(c.prefix())), " owner=", c.owner(),
                          " group_id=", c.group_id(), " mode=", c.mode(),
                          " audit=", c.audit() ? "true" : "false");
    }
    default:
      return "";
  }
}

}  // namespace

bool IsAuditedCommand(int body_type) {
  // Routine commands, which change nothing an auditor asks about (a read
  // barrier, last-use times, a refresh token spent) or would flood the log.
  // Every other command type, present or future, is recorded.
  switch (static_cast<fb::CommandBody>(body_type)) {
    case fb::CommandBody::NONE:
    case fb::CommandBody::Barrier:
    case fb::CommandBody::TouchApiKeys:
    case fb::CommandBody::RevokeToken:
    // Consensus keys' reads and writes are data, audited as data writes are
    // (per prefix, by the service), not as control-plane changes.
    case fb::CommandBody::KvWrite:
    case fb::CommandBody::KvSync:
      return false;
    default:
      return true;
  }
}

AuditState::AuditState() : signer_(audit::Signer::FromClusterSecret("")) {}

void AuditState::SetSigner(audit::Signer signer) {
  absl::MutexLock lock(&mu_);
  signer_ = std::move(signer);
}

std::string AuditState::public_key() const {
  absl::MutexLock lock(&mu_);
  return signer_.public_key();
}

void AuditState::SetListener(Listener listener) {
  absl::MutexLock lock(&mu_);
  listener_ = std::move(listener);
}

void AuditState::Append(audit::Entry entry, std::vector<audit::Entry>* sealed) {
  entry.seq = state_.head_seq + 1;
  signer_.Seal(&entry, state_.head_hash);
  state_.head_seq = entry.seq;
  state_.head_hash = entry.hash;
  state_.window.push_back(entry);
  while (state_.window.size() > kAuditWindow) state_.window.pop_front();
  sealed->push_back(std::move(entry));
}

void AuditState::RecordCommand(const fb::Command& command, absl::string_view bytes, int32_t code,
                               uint64_t value, absl::string_view actor) {
  if (!IsAuditedCommand(static_cast<int>(command.body_type()))) return;
  const int64_t at_ms = command.at_ms();
  const std::string command_hash = audit::HashBytes(bytes);
  std::vector<audit::Entry> sealed;
  Listener listener;
  {
    absl::MutexLock lock(&mu_);
    if (command.body_type() == fb::CommandBody::RecordAudit) {
      const auto* events = command.body_as_RecordAudit()->events();
      if (events == nullptr) return;
      for (const fb::AuditEvent* event : *events) {
        audit::Entry entry;
        entry.at_ms = event->at_ms();
        entry.kind = Ascii(View(event->kind()));
        const absl::string_view event_actor = View(event->actor());
        entry.actor = event_actor.empty() ? std::string(actor) : Ascii(event_actor);
        entry.detail = Ascii(View(event->detail()));
        entry.code = code;
        entry.value = value;
        entry.command_hash = command_hash;
        Append(std::move(entry), &sealed);
      }
    } else {
      audit::Entry entry;
      entry.at_ms = at_ms;
      entry.kind = fb::EnumNameCommandBody(command.body_type());
      entry.actor = std::string(actor);
      entry.detail = Describe(command);
      entry.code = code;
      entry.value = value;
      entry.command_hash = command_hash;
      Append(std::move(entry), &sealed);
    }
    listener = listener_;
  }
  if (listener.on_entries && !sealed.empty()) listener.on_entries(sealed);
}

AuditChainState AuditState::Current() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

uint64_t AuditState::head_seq() const {
  absl::MutexLock lock(&mu_);
  return state_.head_seq;
}

std::vector<audit::Entry> AuditState::Since(uint64_t since, size_t limit) const {
  absl::MutexLock lock(&mu_);
  std::vector<audit::Entry> out;
  for (const audit::Entry& entry : state_.window) {
    if (out.size() >= limit) break;
    if (entry.seq > since) out.push_back(entry);
  }
  return out;
}

flatbuffers::Offset<fb::AuditChain> AuditState::Encode(
    flatbuffers::FlatBufferBuilder& builder) const {
  absl::MutexLock lock(&mu_);
  std::vector<flatbuffers::Offset<fb::AuditRecord>> records;
  records.reserve(state_.window.size());
  for (const audit::Entry& e : state_.window) {
    records.push_back(fb::CreateAuditRecord(
        builder, e.seq, e.at_ms, builder.CreateString(e.kind), builder.CreateString(e.actor),
        builder.CreateString(e.detail), e.code, e.value, ByteVector(builder, e.command_hash),
        ByteVector(builder, e.prev_hash), ByteVector(builder, e.hash),
        ByteVector(builder, e.signature)));
  }
  auto entries = builder.CreateVector(records);
  return fb::CreateAuditChain(builder, state_.head_seq, ByteVector(builder, state_.head_hash),
                              entries);
}

absl::StatusOr<AuditChainState> AuditState::Decode(const fb::AuditChain* chain) {
  AuditChainState state;
  if (chain == nullptr) return state;
  state.head_seq = chain->head_seq();
  state.head_hash = std::string(View(chain->head_hash()));
  if (state.head_hash.size() != audit::kHashBytes) {
    return absl::InvalidArgumentError("audit head hash is not 32 bytes");
  }
  if (state.head_seq == 0 && state.head_hash != audit::ZeroHash()) {
    return absl::InvalidArgumentError("audit chain without entries has a head hash");
  }
  const auto* entries = chain->entries();
  const size_t count = entries == nullptr ? 0 : entries->size();
  if (count > kAuditWindow || count > state.head_seq) {
    return absl::InvalidArgumentError(absl::StrCat("audit chain holds ", count, " entries"));
  }
  for (size_t i = 0; i < count; ++i) {
    const fb::AuditRecord* r = entries->Get(static_cast<flatbuffers::uoffset_t>(i));
    audit::Entry e;
    e.seq = r->seq();
    e.at_ms = r->at_ms();
    e.kind = std::string(View(r->kind()));
    e.actor = std::string(View(r->actor()));
    e.detail = std::string(View(r->detail()));
    e.code = r->code();
    e.value = r->value();
    e.command_hash = std::string(View(r->command_hash()));
    e.prev_hash = std::string(View(r->prev_hash()));
    e.hash = std::string(View(r->hash()));
    e.signature = std::string(View(r->signature()));
    if (e.seq != state.head_seq - count + 1 + i) {
      return absl::InvalidArgumentError("audit entries are not consecutive up to the head");
    }
    if (e.kind.size() > audit::kMaxKindBytes || e.actor.size() > audit::kMaxActorBytes ||
        e.detail.size() > audit::kMaxDetailBytes || e.command_hash.size() != audit::kHashBytes ||
        e.prev_hash.size() != audit::kHashBytes || e.signature.size() != audit::kSignatureBytes ||
        audit::HashBytes(audit::CanonicalBytes(e)) != e.hash) {
      return absl::InvalidArgumentError(absl::StrCat("audit entry ", e.seq, " is malformed"));
    }
    if (!state.window.empty() && state.window.back().hash != e.prev_hash) {
      return absl::InvalidArgumentError(
          absl::StrCat("audit entry ", e.seq, " does not follow the one before"));
    }
    state.window.push_back(std::move(e));
  }
  if (!state.window.empty() && state.window.back().hash != state.head_hash) {
    return absl::InvalidArgumentError("the last audit entry is not the head");
  }
  return state;
}

void AuditState::Replace(AuditChainState state) {
  Listener listener;
  {
    absl::MutexLock lock(&mu_);
    state_ = state;
    listener = listener_;
  }
  if (listener.on_restore) listener.on_restore(state);
}

}  // namespace logkv::server::control
