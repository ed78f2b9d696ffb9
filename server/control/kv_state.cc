#include "server/control/kv_state.h"

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "flatbuffers/flatbuffers.h"
#include "protocol/frame.h"
#include "server/control/acl_state.h"
#include "server/control/command_encoding.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

namespace {

using protocol::View;

template <typename T>
std::string EncodeBody(flatbuffers::FlatBufferBuilder& builder, fb::CommandBody type,
                       flatbuffers::Offset<T> body) {
  return FinishCommand(builder, type, body.Union());
}

// The client's part of an engine key: after a tenant's namespace; nothing
// for the server's reserved keys.
std::optional<absl::string_view> ClientPart(absl::string_view engine_key) {
  if (engine_key.empty() || engine_key[0] != '\0') return engine_key;
  if (NamespaceUserOf(engine_key) == 0) return std::nullopt;
  return engine_key.substr(kAclNamespaceBytes);
}

// Sorted and distinct, each within its limits.
absl::StatusOr<std::vector<std::string>> CheckedPrefixes(
    const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* in) {
  std::vector<std::string> prefixes;
  if (in == nullptr) return prefixes;
  if (in->size() > kMaxConsensusPrefixes) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxConsensusPrefixes, " consensus prefixes"));
  }
  for (const flatbuffers::String* prefix : *in) {
    const absl::string_view bytes = View(prefix);
    if (bytes.empty() || bytes.size() > kMaxConsensusPrefixBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("a consensus prefix has 1 to ", kMaxConsensusPrefixBytes, " bytes"));
    }
    if (bytes[0] == '\0') {
      return absl::InvalidArgumentError("a consensus prefix may not begin with byte 0x00");
    }
    prefixes.emplace_back(bytes);
  }
  std::sort(prefixes.begin(), prefixes.end());
  prefixes.erase(std::unique(prefixes.begin(), prefixes.end()), prefixes.end());
  return prefixes;
}

// What an entry takes in a snapshot: its key and value, and the table
// around them.
size_t EntryBytes(absl::string_view key, absl::string_view value) {
  return key.size() + value.size() + kConsensusEntryOverheadBytes;
}

std::string Quoted(absl::string_view text) {
  return absl::StrCat("\"", absl::CHexEscape(text.substr(0, 64)), text.size() > 64 ? "..." : "",
                      "\"");
}

}  // namespace

absl::Status CheckConsensusWrite(absl::string_view key, const absl::string_view* value) {
  if (key.empty() || key.size() > kMaxConsensusKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a consensus key has 1 to ", kMaxConsensusKeyBytes, " bytes"));
  }
  if (value != nullptr && value->size() > kMaxConsensusValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a consensus key's value has at most ",
                                                   kMaxConsensusValueBytes, " bytes, not ",
                                                   value->size()));
  }
  return absl::OkStatus();
}

bool UnderConsensusPrefix(const std::vector<std::string>& prefixes, absl::string_view engine_key) {
  if (prefixes.empty()) return false;
  const std::optional<absl::string_view> client = ClientPart(engine_key);
  if (!client.has_value()) return false;
  for (const std::string& prefix : prefixes) {
    if (absl::StartsWith(*client, prefix)) return true;
  }
  return false;
}

std::string EncodeSetConsensusPrefixes(const std::vector<std::string>& prefixes) {
  flatbuffers::FlatBufferBuilder b(128);
  std::vector<flatbuffers::Offset<flatbuffers::String>> strings;
  for (const std::string& prefix : prefixes) strings.push_back(b.CreateString(prefix));
  auto vector = b.CreateVector(strings);
  return EncodeBody(b, fb::CommandBody::SetConsensusPrefixes,
                    fb::CreateSetConsensusPrefixes(b, vector));
}

std::string EncodeKvWrite(absl::string_view key, const std::optional<std::string>& value,
                          std::optional<uint64_t> if_version) {
  flatbuffers::FlatBufferBuilder b(64 + key.size() + (value.has_value() ? value->size() : 0));
  auto k = ByteVector(b, key);
  auto v = value.has_value() ? ByteVector(b, *value) : 0;
  fb::KvWriteBuilder write(b);
  write.add_key(k);
  if (value.has_value()) write.add_value(v);
  if (if_version.has_value()) write.add_if_version(*if_version);
  write.add_tenant_share(true);
  return EncodeBody(b, fb::CommandBody::KvWrite, write.Finish());
}

std::string EncodeKvSync() {
  flatbuffers::FlatBufferBuilder b(64);
  return EncodeBody(b, fb::CommandBody::KvSync, fb::CreateKvSync(b));
}

bool KvState::Covers(absl::string_view engine_key) const {
  if (!any_prefix_.load(std::memory_order_acquire)) return false;
  absl::ReaderMutexLock lock(&mu_);
  return UnderConsensusPrefix(state_.prefixes, engine_key);
}

std::vector<std::string> KvState::prefixes() const {
  absl::ReaderMutexLock lock(&mu_);
  return state_.prefixes;
}

bool KvState::prefixes_set() const {
  absl::ReaderMutexLock lock(&mu_);
  return state_.prefixes_set;
}

absl::StatusOr<KvEntry> KvState::Get(absl::string_view key) const {
  absl::ReaderMutexLock lock(&mu_);
  const auto it = state_.entries.find(key);
  if (it == state_.entries.end()) return absl::NotFoundError("key not found");
  return it->second;
}

uint64_t KvState::revision() const {
  absl::ReaderMutexLock lock(&mu_);
  return state_.revision;
}

ConsensusState KvState::Current() const {
  absl::ReaderMutexLock lock(&mu_);
  return state_;
}

void KvState::WhenAt(uint64_t revision, absl::Time deadline,
                     std::function<void(absl::Status)> done) {
  bool stopped = false;
  {
    absl::MutexLock lock(&waiters_mu_);
    stopped = stopped_;
    // Added before the revision is read: an apply in between releases it.
    if (!stopped) waiters_.emplace(revision, Waiter{deadline, std::move(done)});
  }
  if (stopped) return done(absl::UnavailableError("the control plane is stopping"));
  Release();
}

void KvState::Release() {
  const uint64_t reached = revision();
  std::vector<std::function<void(absl::Status)>> ready;
  {
    absl::MutexLock lock(&waiters_mu_);
    const auto end = waiters_.upper_bound(reached);
    for (auto it = waiters_.begin(); it != end; ++it) ready.push_back(std::move(it->second.done));
    waiters_.erase(waiters_.begin(), end);
  }
  for (auto& done : ready) done(absl::OkStatus());
}

void KvState::Expire(absl::Time now) {
  std::vector<std::function<void(absl::Status)>> late;
  {
    absl::MutexLock lock(&waiters_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.deadline <= now) {
        late.push_back(std::move(it->second.done));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& done : late) {
    done(absl::DeadlineExceededError(
        "this node has not caught up with the control plane's log in time"));
  }
}

void KvState::Stop() {
  std::multimap<uint64_t, Waiter> waiters;
  {
    absl::MutexLock lock(&waiters_mu_);
    stopped_ = true;
    waiters.swap(waiters_);
  }
  for (auto& [revision, waiter] : waiters) {
    waiter.done(absl::UnavailableError("the control plane is stopping"));
  }
}

absl::StatusOr<uint64_t> KvState::Apply(const fb::SetConsensusPrefixes& cmd) {
  absl::StatusOr<std::vector<std::string>> prefixes = CheckedPrefixes(cmd.prefixes());
  if (!prefixes.ok()) return prefixes.status();
  {
    absl::MutexLock lock(&mu_);
    if (state_.prefixes_set) {
      if (state_.prefixes == *prefixes) return prefixes->size();
      return absl::FailedPreconditionError(
          "the cluster's consensus prefixes were committed when it was bootstrapped and do not "
          "change (keys would move between the data engines and the control plane)");
    }
    state_.prefixes = *prefixes;
    state_.prefixes_set = true;
    any_prefix_.store(!state_.prefixes.empty(), std::memory_order_release);
    committed_.store(true, std::memory_order_release);
  }
  return prefixes->size();
}

absl::StatusOr<uint64_t> KvState::Apply(const fb::KvWrite& cmd, int64_t at_ms) {
  const absl::string_view key = View(cmd.key());
  const bool is_put = cmd.value() != nullptr;
  const absl::string_view value = is_put ? View(cmd.value()) : absl::string_view();
  if (absl::Status status = CheckConsensusWrite(key, is_put ? &value : nullptr); !status.ok()) {
    return status;
  }
  uint64_t version = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!state_.prefixes_set) {
      // A node routed it by its own flag before the first node committed
      // the prefixes: the client retries.
      return absl::UnavailableError("the cluster's consensus prefixes are not committed yet");
    }
    if (!UnderConsensusPrefix(state_.prefixes, key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("key ", Quoted(key), " is not under a consensus prefix"));
    }
    auto it = state_.entries.find(key);
    const uint64_t current = it == state_.entries.end() ? 0 : it->second.version;
    if (cmd.if_version().has_value() && *cmd.if_version() != current) {
      return absl::FailedPreconditionError(absl::StrCat("key ", Quoted(key), " is at version ",
                                                        current, ", not ", *cmd.if_version()));
    }
    const uint64_t tenant = NamespaceUserOf(key);
    if (!is_put) {
      if (it == state_.entries.end()) return absl::NotFoundError("key not found");
      const size_t old_bytes = EntryBytes(key, it->second.value);
      state_.bytes -= old_bytes;
      // Present: every key of a tenant is counted in tenants.
      if (auto usage = state_.tenants.find(tenant); tenant != 0 && usage != state_.tenants.end()) {
        usage->second.bytes -= old_bytes;
        if (--usage->second.keys == 0) state_.tenants.erase(usage);
      }
      state_.entries.erase(it);
      ++state_.revision;
      version = current + 1;
    } else {
      const size_t old_bytes =
          it == state_.entries.end() ? 0 : EntryBytes(key, it->second.value);
      const size_t new_bytes = EntryBytes(key, value);
      if (it == state_.entries.end() && state_.entries.size() >= kMaxConsensusEntries) {
        return absl::ResourceExhaustedError(
            absl::StrCat("the cluster holds ", kMaxConsensusEntries, " consensus keys, its limit"));
      }
      if (state_.bytes - old_bytes + new_bytes > kMaxConsensusBytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "consensus keys and values would take more than ", kMaxConsensusBytes, " bytes"));
      }
      // Only growth is refused: a tenant over its share (kept from before the
      // share) may still overwrite with a value no larger, and delete.
      const bool grows = it == state_.entries.end() || new_bytes > old_bytes;
      if (tenant != 0 && cmd.tenant_share() && grows) {
        const auto usage = state_.tenants.find(tenant);
        const ConsensusUsage held =
            usage == state_.tenants.end() ? ConsensusUsage{} : usage->second;
        if (it == state_.entries.end() && held.keys >= kMaxConsensusEntriesPerTenant) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "this tenant holds ", kMaxConsensusEntriesPerTenant, " consensus keys, its limit"));
        }
        if (held.bytes - old_bytes + new_bytes > kMaxConsensusBytesPerTenant) {
          return absl::ResourceExhaustedError(
              absl::StrCat("this tenant's consensus keys and values would take more than ",
                           kMaxConsensusBytesPerTenant, " bytes, its limit"));
        }
      }
      if (tenant != 0) {
        ConsensusUsage& updated = state_.tenants[tenant];
        if (it == state_.entries.end()) ++updated.keys;
        updated.bytes = updated.bytes - old_bytes + new_bytes;
      }
      if (it == state_.entries.end()) it = state_.entries.try_emplace(std::string(key)).first;
      it->second.value.assign(value.data(), value.size());
      it->second.version = current + 1;
      it->second.updated_at_ms = at_ms;
      state_.bytes = state_.bytes - old_bytes + new_bytes;
      ++state_.revision;
      version = current + 1;
    }
  }
  Release();
  return version;
}

flatbuffers::Offset<fb::ConsensusKeys> KvState::Encode(
    flatbuffers::FlatBufferBuilder& builder) const {
  absl::ReaderMutexLock lock(&mu_);
  // Nothing held: the snapshot stays as it was before consensus keys.
  if (!state_.prefixes_set && state_.revision == 0) return 0;
  std::vector<flatbuffers::Offset<flatbuffers::String>> prefixes;
  for (const std::string& prefix : state_.prefixes) prefixes.push_back(builder.CreateString(prefix));
  auto prefix_vector = builder.CreateVector(prefixes);
  std::vector<flatbuffers::Offset<fb::KvEntry>> entries;
  entries.reserve(state_.entries.size());
  for (const auto& [key, entry] : state_.entries) {
    entries.push_back(fb::CreateKvEntry(builder, ByteVector(builder, key),
                                        ByteVector(builder, entry.value), entry.version,
                                        entry.updated_at_ms));
  }
  auto entry_vector = builder.CreateVector(entries);
  return fb::CreateConsensusKeys(builder, prefix_vector, state_.revision, entry_vector);
}

absl::StatusOr<ConsensusState> KvState::Decode(const fb::ConsensusKeys* in) {
  ConsensusState state;
  if (in == nullptr) return state;
  absl::StatusOr<std::vector<std::string>> prefixes = CheckedPrefixes(in->prefixes());
  if (!prefixes.ok()) return prefixes.status();
  state.prefixes = *std::move(prefixes);
  state.prefixes_set = true;
  state.revision = in->revision();
  if (in->entries() != nullptr) {
    if (in->entries()->size() > kMaxConsensusEntries) {
      return absl::InvalidArgumentError("too many consensus keys");
    }
    for (const fb::KvEntry* entry : *in->entries()) {
      const absl::string_view key = View(entry->key());
      const absl::string_view value = View(entry->value());
      if (key.empty() || key.size() > kMaxConsensusKeyBytes ||
          value.size() > kMaxConsensusValueBytes || entry->version() == 0) {
        return absl::InvalidArgumentError("a consensus key out of its limits");
      }
      if (!UnderConsensusPrefix(state.prefixes, key)) {
        return absl::InvalidArgumentError("a consensus key not under a consensus prefix");
      }
      if (!state.entries.empty() && state.entries.rbegin()->first >= key) {
        return absl::InvalidArgumentError("consensus keys are not sorted and distinct");
      }
      state.entries.emplace_hint(state.entries.end(), std::string(key),
                                 KvEntry{std::string(value), entry->version(),
                                         entry->updated_at_ms()});
      state.bytes += EntryBytes(key, value);
      // A tenant over its share (kept by an older version) is taken as it
      // is: the limit refuses only growth.
      if (const uint64_t tenant = NamespaceUserOf(key); tenant != 0) {
        ConsensusUsage& usage = state.tenants[tenant];
        ++usage.keys;
        usage.bytes += EntryBytes(key, value);
      }
    }
  }
  if (state.bytes > kMaxConsensusBytes) {
    return absl::InvalidArgumentError("consensus keys over their size limit");
  }
  return state;
}

void KvState::Replace(ConsensusState state) {
  {
    absl::MutexLock lock(&mu_);
    state_ = std::move(state);
    any_prefix_.store(!state_.prefixes.empty(), std::memory_order_release);
    committed_.store(state_.prefixes_set, std::memory_order_release);
  }
  Release();
}

}  // namespace logkv::server::control
