#include "server/cluster/membership.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/cluster/peer_transport.h"
#include "server/log.h"

namespace logkv::server::cluster {

namespace p = ::logkv::protocol;

const char* MemberStateName(MemberState state) {
  switch (state) {
    case MemberState::kAlive:
      return "alive";
    case MemberState::kSuspect:
      return "suspect";
    case MemberState::kDead:
      return "dead";
    case MemberState::kLeft:
      return "left";
  }
  return "unknown";
}

bool Supersedes(const Member& news, const Member& known) {
  if (news.incarnation != known.incarnation) return news.incarnation > known.incarnation;
  return static_cast<int>(news.state) > static_cast<int>(known.state);
}

uint64_t RefutingIncarnation(const Member& self, const Member& news, bool leaving) {
  if (leaving) return 0;
  const bool newer = news.incarnation > self.incarnation;
  const bool rumour = news.incarnation == self.incarnation && news.state != MemberState::kAlive;
  return newer || rumour ? news.incarnation + 1 : 0;
}

namespace {

MemberState FromWire(p::MemberState state) {
  switch (state) {
    case p::MemberState::Alive:
      return MemberState::kAlive;
    case p::MemberState::Suspect:
      return MemberState::kSuspect;
    case p::MemberState::Dead:
      return MemberState::kDead;
    case p::MemberState::Left:
      return MemberState::kLeft;
  }
  return MemberState::kDead;
}

p::MemberState ToWire(MemberState state) {
  switch (state) {
    case MemberState::kAlive:
      return p::MemberState::Alive;
    case MemberState::kSuspect:
      return p::MemberState::Suspect;
    case MemberState::kDead:
      return p::MemberState::Dead;
    case MemberState::kLeft:
      return p::MemberState::Left;
  }
  return p::MemberState::Dead;
}

flatbuffers::Offset<p::MemberInfo> BuildMemberInfo(flatbuffers::FlatBufferBuilder* b,
                                                   const Member& member) {
  auto node_id = b->CreateString(member.node_id);
  auto address = b->CreateString(member.address);
  auto http_address = b->CreateString(member.http_address);
  return p::CreateMemberInfo(*b, node_id, address, http_address, ToWire(member.state),
                             member.incarnation, member.joined_unix_ms);
}

// Every member a gossip carries; unknown states (a newer peer) read as Dead.
bool ReadMemberInfo(const p::MemberInfo* info, Member* member) {
  if (info == nullptr || info->node_id() == nullptr || info->node_id()->size() == 0 ||
      info->address() == nullptr || info->address()->size() == 0) {
    return false;
  }
  member->node_id = std::string(p::View(info->node_id()));
  member->address = std::string(p::View(info->address()));
  member->http_address = std::string(p::View(info->http_address()));
  member->state = static_cast<uint8_t>(info->state()) <= static_cast<uint8_t>(p::MemberState::MAX)
                      ? FromWire(info->state())
                      : MemberState::kDead;
  member->incarnation = info->incarnation();
  member->joined_unix_ms = info->joined_unix_ms();
  return true;
}

}  // namespace

// Thread-safety: members_ and everything about them is guarded by mu_;
// gossip answers are merged on the transport's thread, peers' gossip on the
// server's loops, and the membership thread detects failures and runs the
// OnChange callbacks (outside mu_).
class Membership::Impl {
 public:
  Impl(const MembershipOptions& options, PeerTransport* transport)
      : options_(options),
        transport_(transport),
        random_(options.random_seed != 0 ? options.random_seed : absl::BitGen()()) {}

  absl::Status Start();
  void Stop();
  void LeaveAsync(std::function<void()> done);
  void JoinThroughAsync(const std::string& address, absl::Duration timeout,
                        std::function<void(absl::Status)> done);
  void HandleGossip(const p::Gossip& gossip, flatbuffers::FlatBufferBuilder* builder,
                    uint64_t request_id);

  std::vector<Member> Members() const;
  std::vector<Member> LiveMembers() const;
  std::shared_ptr<const Ring> ring() const;
  bool Find(const std::string& node_id, Member* member) const;
  bool FindAddresses(const std::string& node_id, std::string* address,
                     std::string* http_address, MemberState* state) const;
  bool HasLeft() const;
  bool ViewConfirmed() const;
  void OnChange(std::function<void()> callback);
  uint64_t version() const { return version_.load(std::memory_order_acquire); }
  const Member& self() const { return options_.self; }
  // One turn of Run's loop (MembershipOptions::manual_ticks).
  void ManualTick();

 private:
  struct Entry {
    Member member;
    int missed_pings = 0;
    int64_t suspect_since_ms = 0;
  };

  int64_t NowMs() const {
    return options_.now_unix_ms ? options_.now_unix_ms() : absl::ToUnixMillis(absl::Now());
  }
  void Run();
  // The OnChange callbacks owed, and keeping the member list; from Run.
  void RunCallbacks() ABSL_LOCKS_EXCLUDED(mu_);
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);
  // Merges news about one member; true when anything changed.
  bool MergeLocked(const Member& news) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Merges a GossipResult answer; target: the node asked ("" for a seed).
  absl::Status MergeAnswer(const absl::StatusOr<std::string>& answer, const std::string& target,
                           const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);
  void SetState(Entry& entry, MemberState state, int64_t now_ms)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ChangedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the kept member list into members_ (at Start).
  void LoadStateLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The member list as kept on disk.
  std::string StateLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the member list when it changed since it was last written.
  void PersistState() ABSL_LOCKS_EXCLUDED(mu_);
  // A member was heard from directly; may confirm the view.
  void NoteHeardLocked(const std::string& node_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateConfirmedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string GossipFrameLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every member as MemberInfo, for Gossip and its answer.
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<p::MemberInfo>>> MemberListLocked(
      flatbuffers::FlatBufferBuilder* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Entry& SelfLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return members_[options_.self.node_id]; }
  // Sends a gossip frame; done gets the merge's outcome. Counted, so Stop
  // waits for every answer before the Impl goes away.
  void SendGossip(const std::string& address, std::string frame, const std::string& target,
                  absl::Duration timeout, std::function<void(absl::Status)> done);

  const MembershipOptions options_;
  PeerTransport* const transport_;

  // mu_ taken where the members may change (every non-const method takes
  // it this way): the version moves before it is released, so a copy of an
  // answer kept under the version it was read with (version()) is never
  // kept past a change.
  class ABSL_SCOPED_LOCKABLE ChangeLock {
   public:
    explicit ChangeLock(Impl* impl) ABSL_EXCLUSIVE_LOCK_FUNCTION(impl->mu_) : impl_(impl) {
      impl_->mu_.Lock();
    }
    ~ChangeLock() ABSL_UNLOCK_FUNCTION() {
      impl_->version_.store(next_version.fetch_add(1, std::memory_order_relaxed),
                            std::memory_order_release);
      impl_->mu_.Unlock();
    }
    ChangeLock(const ChangeLock&) = delete;
    ChangeLock& operator=(const ChangeLock&) = delete;

   private:
    Impl* const impl_;
  };
  // One count for every Membership of the process, so no two of them (or
  // one made where another was) ever show the same version.
  static inline std::atomic<uint64_t> next_version{1};

  mutable absl::Mutex mu_;
  std::atomic<uint64_t> version_{next_version.fetch_add(1, std::memory_order_relaxed)};
  absl::CondVar wake_;
  std::map<std::string, Entry> members_ ABSL_GUARDED_BY(mu_);  // by node id, self included
  std::shared_ptr<const Ring> ring_ ABSL_GUARDED_BY(mu_);
  bool changed_ ABSL_GUARDED_BY(mu_) = false;  // OnChange callbacks owed
  bool left_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Members heard from directly since Start, and whether they confirmed
  // the view (a majority of the members known, itself included).
  std::set<std::string> heard_ ABSL_GUARDED_BY(mu_);
  bool confirmed_ ABSL_GUARDED_BY(mu_) = false;
  // Seeds were given or members were remembered: alone is not confirmed.
  bool expect_peers_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
  std::string persisted_;  // membership thread only: the state last written
  std::thread thread_;
  uint64_t ticks_ = 0;  // membership thread only
  std::mt19937_64 random_;  // membership thread only
};

absl::Status Membership::Impl::Start() {
  if (options_.self.node_id.empty() || options_.self.address.empty()) {
    return absl::InvalidArgumentError("membership needs this node's id and advertised address");
  }
  {
    ChangeLock lock(this);
    if (started_) return absl::FailedPreconditionError("membership already started");
    started_ = true;
    Entry& self = SelfLocked();
    self.member = options_.self;
    self.member.state = MemberState::kAlive;
    // A restarted node outranks what the cluster remembers of its previous
    // life (an older incarnation, maybe Dead) without a refutation round.
    if (self.member.incarnation == 0) self.member.incarnation = static_cast<uint64_t>(NowMs());
    if (self.member.joined_unix_ms == 0) self.member.joined_unix_ms = NowMs();
    self.member.last_seen_unix_ms = NowMs();
    expect_peers_ = !options_.seeds.empty();
    LoadStateLocked();
    ChangedLocked();
    UpdateConfirmedLocked();
  }
  if (!options_.manual_ticks) thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void Membership::Impl::Stop() {
  {
    ChangeLock lock(this);
    stop_ = true;
    wake_.SignalAll();
  }
  if (thread_.joinable() || options_.manual_ticks) {
    if (thread_.joinable()) thread_.join();
    PersistState();  // what changed after the thread's last turn
  }
  // Answers still to come name this object: wait for them (each is bounded
  // by its request's timeout).
  ChangeLock lock(this);
  mu_.Await(absl::Condition(
      +[](int* in_flight) { return *in_flight == 0; }, &in_flight_));
}

void Membership::Impl::Run() {
  absl::Time next_tick = absl::Now();
  while (true) {
    std::vector<std::function<void()>> callbacks;
    bool changed = false;
    {
      ChangeLock lock(this);
      while (!stop_ && !changed_ && absl::Now() < next_tick) {
        wake_.WaitWithDeadline(&mu_, next_tick);
      }
      if (stop_) return;
      if (changed_) {
        changed_ = false;
        changed = true;
        callbacks = callbacks_;
      }
    }
    if (changed) PersistState();
    for (auto& callback : callbacks) callback();
    if (absl::Now() >= next_tick) {
      Tick();
      next_tick = absl::Now() + options_.gossip_interval;
    }
  }
}

void Membership::Impl::RunCallbacks() {
  std::vector<std::function<void()>> callbacks;
  {
    ChangeLock lock(this);
    if (!changed_) return;
    changed_ = false;
    callbacks = callbacks_;
  }
  PersistState();
  for (auto& callback : callbacks) callback();
}

void Membership::Impl::ManualTick() {
  RunCallbacks();
  Tick();
  RunCallbacks();
}

void Membership::Impl::SetState(Entry& entry, MemberState state, int64_t now_ms) {
  mu_.AssertHeld();
  // For the other members: this node's own state moves only by refutation,
  // leave and join, never by what it suspects.
  assert(entry.member.node_id != options_.self.node_id);
  if (entry.member.state == state) return;
  Log(Level::kInfo, "member %s (%s) is now %s (incarnation %d)", entry.member.node_id,
      entry.member.address, MemberStateName(state), entry.member.incarnation);
  entry.member.state = state;
  if (state == MemberState::kSuspect) entry.suspect_since_ms = now_ms;
  if (state == MemberState::kAlive) entry.missed_pings = 0;
}

void Membership::Impl::ChangedLocked() {
  mu_.AssertHeld();
  std::vector<std::string> owners;
  for (const auto& [id, entry] : members_) {
    if (entry.member.state != MemberState::kLeft) owners.push_back(id);
  }
  ring_ = std::make_shared<const Ring>(std::move(owners));
  changed_ = true;
  wake_.SignalAll();
}

void Membership::Impl::LoadStateLocked() {
  if (!options_.load_state) return;
  absl::StatusOr<std::string> text = options_.load_state();
  if (!text.ok()) {
    if (!absl::IsNotFound(text.status())) {
      Log(Level::kWarning, "cannot read the member list (%s): waiting for peers before serving "
          "quorum operations", text.status().message());
      expect_peers_ = true;
    }
    return;
  }
  const nlohmann::json state = nlohmann::json::parse(*text, nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("members") ||
      !state["members"].is_array()) {
    // Alone is never assumed from a list that cannot be read.
    Log(Level::kWarning, "the member list kept is damaged: waiting for peers before serving "
        "quorum operations");
    expect_peers_ = true;
    return;
  }
  if (state.value("left", false)) {
    left_ = true;
    SelfLocked().member.state = MemberState::kLeft;
    Log(Level::kInfo, "this node had left the cluster: it owns nothing until it joins again");
  }
  int loaded = 0;
  for (const nlohmann::json& item : state["members"]) {
    if (!item.is_object()) continue;
    Member member;
    member.node_id = item.value("node_id", "");
    member.address = item.value("address", "");
    member.http_address = item.value("http_address", "");
    if (member.node_id.empty() || member.address.empty()) continue;
    if (member.node_id == options_.self.node_id || member.address == options_.self.address) {
      continue;
    }
    // Incarnation 0: whatever the cluster says of it now outranks this.
    member.state = MemberState::kAlive;
    member.incarnation = 0;
    members_[member.node_id].member = std::move(member);
    ++loaded;
  }
  if (loaded > 0) expect_peers_ = true;
  Log(Level::kInfo, "remembered %d other member(s)", loaded);
}

std::string Membership::Impl::StateLocked() const {
  nlohmann::json members = nlohmann::json::array();
  for (const auto& [id, entry] : members_) {
    if (id == options_.self.node_id || entry.member.state == MemberState::kLeft) continue;
    members.push_back({{"node_id", entry.member.node_id},
                       {"address", entry.member.address},
                       {"http_address", entry.member.http_address}});
  }
  return nlohmann::json{{"left", left_}, {"members", std::move(members)}}.dump();
}

void Membership::Impl::PersistState() {
  if (!options_.save_state) return;
  std::string state;
  {
    ChangeLock lock(this);
    state = StateLocked();
  }
  if (state == persisted_) return;
  if (absl::Status status = options_.save_state(state); !status.ok()) {
    Log(Level::kWarning, "keeping the member list: %s", status.message());
    return;
  }
  persisted_ = std::move(state);
}

void Membership::Impl::NoteHeardLocked(const std::string& node_id) {
  if (node_id == options_.self.node_id) return;
  if (!heard_.insert(node_id).second) return;
  UpdateConfirmedLocked();
}

void Membership::Impl::UpdateConfirmedLocked() {
  if (confirmed_) return;
  size_t known = 0;
  size_t heard = 0;
  for (const auto& [id, entry] : members_) {
    if (id == options_.self.node_id) continue;
    if (entry.member.state == MemberState::kLeft) continue;
    ++known;
    if (heard_.contains(id)) ++heard;
  }
  if (known == 0 && (!expect_peers_ || !heard_.empty())) {
    // Nobody else expected; or the members it heard from (a seed, say) are
    // all gone from the cluster (Left), whose view then holds this node alone.
    confirmed_ = true;
    Log(Level::kInfo, "membership view confirmed: no other member %s",
        heard_.empty() ? "is known or expected" : "is left in the cluster it heard from");
    return;
  }
  // A majority of the members known (this node counts as one) answered.
  if (heard >= 1 && 2 * (heard + 1) > known + 1) {
    confirmed_ = true;
    Log(Level::kInfo, "membership view confirmed by %d of %d other member(s)",
        static_cast<int>(heard), static_cast<int>(known));
  }
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<p::MemberInfo>>>
Membership::Impl::MemberListLocked(flatbuffers::FlatBufferBuilder* b) {
  std::vector<flatbuffers::Offset<p::MemberInfo>> infos;
  infos.reserve(members_.size());
  for (const auto& [id, entry] : members_) infos.push_back(BuildMemberInfo(b, entry.member));
  return b->CreateVector(infos);
}

std::string Membership::Impl::GossipFrameLocked() {
  flatbuffers::FlatBufferBuilder b(1024);
  auto members = MemberListLocked(&b);
  auto from = BuildMemberInfo(&b, SelfLocked().member);
  auto gossip = p::CreateGossip(b, from, members);
  return FinishPeerRequest(&b, p::Operation::Gossip, gossip.Union());
}

bool Membership::Impl::MergeLocked(const Member& news) {
  mu_.AssertHeld();
  const int64_t now_ms = NowMs();
  if (news.node_id == options_.self.node_id) {
    Entry& self = SelfLocked();
    const uint64_t incarnation = RefutingIncarnation(self.member, news, left_);
    if (incarnation == 0) return false;
    // A refutation outranks both the rumour and what this node said before.
    assert(incarnation > news.incarnation && incarnation > self.member.incarnation);
    Log(Level::kInfo, "refuting '%s' about this node (incarnation %d): now alive at %d",
        MemberStateName(news.state), news.incarnation, incarnation);
    self.member.incarnation = incarnation;
    self.member.state = MemberState::kAlive;
    return true;
  }
  auto it = members_.find(news.node_id);
  if (it == members_.end()) {
    Entry& entry = members_[news.node_id];
    entry.member = news;
    entry.member.last_seen_unix_ms = news.state == MemberState::kAlive ? now_ms : 0;
    if (news.state == MemberState::kSuspect) entry.suspect_since_ms = now_ms;
    Log(Level::kInfo, "member %s (%s) joined the view as %s", news.node_id, news.address,
        MemberStateName(news.state));
    return true;
  }
  Entry& entry = it->second;
  if (!Supersedes(news, entry.member)) return false;
  const bool refuted = news.incarnation > entry.member.incarnation;
  entry.member.incarnation = news.incarnation;
  entry.member.address = news.address;
  entry.member.http_address = news.http_address;
  if (news.joined_unix_ms != 0) entry.member.joined_unix_ms = news.joined_unix_ms;
  if (refuted && news.state == MemberState::kAlive) entry.member.last_seen_unix_ms = now_ms;
  SetState(entry, news.state, now_ms);
  if (news.state == MemberState::kAlive) entry.missed_pings = 0;
  // What superseded is now what is known.
  assert(entry.member.incarnation == news.incarnation && entry.member.state == news.state);
  return true;
}

void Membership::Impl::HandleGossip(const p::Gossip& gossip,
                                    flatbuffers::FlatBufferBuilder* builder,
                                    uint64_t request_id) {
  ChangeLock lock(this);
  bool changed = false;
  Member from;
  const bool has_from = ReadMemberInfo(gossip.from(), &from);
  if (has_from) changed |= MergeLocked(from);
  if (gossip.members() != nullptr) {
    for (const p::MemberInfo* info : *gossip.members()) {
      Member news;
      if (ReadMemberInfo(info, &news)) changed |= MergeLocked(news);
    }
  }
  if (has_from && from.node_id != options_.self.node_id) {
    // Heard directly: the sender is up.
    auto it = members_.find(from.node_id);
    if (it != members_.end()) {
      it->second.member.last_seen_unix_ms = NowMs();
      it->second.missed_pings = 0;
    }
    NoteHeardLocked(from.node_id);
  }
  if (changed) ChangedLocked();
  UpdateConfirmedLocked();
  builder->Clear();
  auto result = p::CreateGossipResult(*builder, MemberListLocked(builder));
  p::FinishResponse(builder, request_id, p::Result::GossipResult, result.Union());
}

absl::Status Membership::Impl::MergeAnswer(const absl::StatusOr<std::string>& answer,
                                           const std::string& target,
                                           const std::string& address) {
  absl::Status status = answer.status();
  const p::GossipResult* result = nullptr;
  if (status.ok()) {
    const auto* response = flatbuffers::GetSizePrefixedRoot<p::Response>(answer->data());
    status = p::StatusFromResponse(*response);
    if (status.ok()) {
      result = response->result_as_GossipResult();
      if (result == nullptr) {
        status = absl::InternalError(absl::StrCat("peer ", address, " answered Gossip without a GossipResult"));
      }
    }
  }
  ChangeLock lock(this);
  if (!status.ok()) {
    auto it = members_.find(target);
    if (it != members_.end() && it->second.member.address == address) ++it->second.missed_pings;
    return status;
  }
  bool changed = false;
  if (result->members() != nullptr) {
    for (const p::MemberInfo* info : *result->members()) {
      Member news;
      if (ReadMemberInfo(info, &news)) changed |= MergeLocked(news);
    }
  }
  // The node that answered is up.
  std::vector<std::string> answered;
  for (auto& [id, entry] : members_) {
    if (id == options_.self.node_id) continue;
    if (id == target || (target.empty() && entry.member.address == address)) {
      entry.member.last_seen_unix_ms = NowMs();
      entry.missed_pings = 0;
      answered.push_back(id);
    }
  }
  if (changed) ChangedLocked();
  for (const std::string& id : answered) NoteHeardLocked(id);
  UpdateConfirmedLocked();
  return absl::OkStatus();
}

void Membership::Impl::SendGossip(const std::string& address, std::string frame,
                                  const std::string& target, absl::Duration timeout,
                                  std::function<void(absl::Status)> done) {
  {
    ChangeLock lock(this);
    ++in_flight_;
  }
  auto merge = [this, address, target, done = std::move(done)](
                   absl::StatusOr<std::string> answer) {
    absl::Status status = MergeAnswer(answer, target, address);
    if (done) done(status);
    ChangeLock lock(this);
    assert(in_flight_ > 0);  // the transport calls back once per send
    --in_flight_;
  };
  if (options_.send) {
    options_.send(address, std::move(frame), timeout, std::move(merge));
  } else {
    transport_->Send(address, std::move(frame), timeout, std::move(merge));
  }
}

void Membership::Impl::Tick() {
  struct Target {
    std::string node_id;  // "" for a seed
    std::string address;
  };
  std::vector<Target> targets;
  std::string frame;
  {
    ChangeLock lock(this);
    if (left_ || stop_) return;
    ++ticks_;
    const int64_t now_ms = NowMs();
    const int64_t dead_after_ms = absl::ToInt64Milliseconds(options_.dead_after);
    bool changed = false;
    std::vector<const Entry*> live;
    std::vector<const Entry*> dead;
    for (auto& [id, entry] : members_) {
      if (id == options_.self.node_id) continue;
      // Failure detection moves a member one step: Alive -> Suspect -> Dead.
      if (entry.member.state == MemberState::kAlive &&
          entry.missed_pings >= options_.suspect_after_missed) {
        SetState(entry, MemberState::kSuspect, now_ms);
        changed = true;
      } else if (entry.member.state == MemberState::kSuspect &&
                 now_ms - entry.suspect_since_ms >= dead_after_ms) {
        SetState(entry, MemberState::kDead, now_ms);
        changed = true;
      }
      if (entry.member.address == options_.self.address) continue;
      if (entry.member.state == MemberState::kAlive || entry.member.state == MemberState::kSuspect) {
        live.push_back(&entry);
      } else if (entry.member.state == MemberState::kDead ||
                 entry.member.state == MemberState::kLeft) {
        // A member that left may join again (POST /members/join): it is
        // probed like a dead one, and its new incarnation outranks the Left
        // remembered here.
        dead.push_back(&entry);
      }
    }
    if (changed) ChangedLocked();
    if (!confirmed_) {
      // Until a majority confirmed this node's view, every live member is
      // asked each interval, so confirmation takes one round trip.
      for (const Entry* entry : live) targets.push_back({entry->member.node_id, entry->member.address});
    } else if (!live.empty()) {
      const Entry* chosen = live[absl::Uniform<size_t>(random_, 0, live.size())];
      targets.push_back({chosen->member.node_id, chosen->member.address});
    }
    // Dead members are tried now and then, so a healed partition or a
    // restarted node is found again even when nobody else gossips with it.
    if (!dead.empty() && (live.empty() || ticks_ % 5 == 0)) {
      const Entry* chosen = dead[absl::Uniform<size_t>(random_, 0, dead.size())];
      targets.push_back({chosen->member.node_id, chosen->member.address});
    }
    if (live.empty()) {
      for (const std::string& seed : options_.seeds) {
        if (seed != options_.self.address) targets.push_back({"", seed});
      }
    }
    if (targets.empty()) return;
    frame = GossipFrameLocked();
  }
  for (const Target& target : targets) {
    SendGossip(target.address, frame, target.node_id, options_.ping_timeout, nullptr);
  }
}

void Membership::Impl::LeaveAsync(std::function<void()> done) {
  std::vector<std::string> addresses;
  std::string frame;
  {
    ChangeLock lock(this);
    if (!started_ || left_) {
      left_ = true;
    } else {
      left_ = true;
      Entry& self = SelfLocked();
      self.member.state = MemberState::kLeft;
      Log(Level::kInfo, "leaving the cluster (incarnation %d)", self.member.incarnation);
      for (const auto& [id, entry] : members_) {
        if (id == options_.self.node_id) continue;
        if (entry.member.state == MemberState::kAlive || entry.member.state == MemberState::kSuspect) {
          addresses.push_back(entry.member.address);
        }
      }
      ChangedLocked();
      frame = GossipFrameLocked();
    }
  }
  if (addresses.empty()) {
    if (done) done();
    return;
  }
  auto remaining = std::make_shared<std::atomic<int>>(static_cast<int>(addresses.size()));
  auto shared_done = std::make_shared<std::function<void()>>(std::move(done));
  for (const std::string& address : addresses) {
    SendGossip(address, frame, "", options_.ping_timeout, [remaining, shared_done](absl::Status) {
      if (remaining->fetch_sub(1) == 1 && *shared_done) (*shared_done)();
    });
  }
}

void Membership::Impl::JoinThroughAsync(const std::string& address, absl::Duration timeout,
                                        std::function<void(absl::Status)> done) {
  if (address == options_.self.address) {
    done(absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is this node's own address; name another member")));
    return;
  }
  std::string frame;
  bool running;
  {
    ChangeLock lock(this);
    running = started_ && !stop_;
  }
  // Outside the lock: done may call back into the membership.
  if (!running) return done(absl::UnavailableError("membership is not running on this node"));
  {
    ChangeLock lock(this);
    if (left_) {
      // Rejoining after a leave: a new incarnation outranks our Left.
      left_ = false;
      Entry& self = SelfLocked();
      self.member.incarnation = std::max(self.member.incarnation + 1, static_cast<uint64_t>(NowMs()));
      self.member.state = MemberState::kAlive;
      Log(Level::kInfo, "rejoining the cluster through %s (incarnation %d)", address,
          self.member.incarnation);
      ChangedLocked();
    }
    frame = GossipFrameLocked();
  }
  SendGossip(address, std::move(frame), "", timeout, std::move(done));
}

std::vector<Member> Membership::Impl::Members() const {
  absl::MutexLock lock(&mu_);
  std::vector<Member> members;
  members.reserve(members_.size());
  for (const auto& [id, entry] : members_) members.push_back(entry.member);
  return members;
}

std::vector<Member> Membership::Impl::LiveMembers() const {
  absl::MutexLock lock(&mu_);
  std::vector<Member> members;
  for (const auto& [id, entry] : members_) {
    if (entry.member.state == MemberState::kAlive || entry.member.state == MemberState::kSuspect) {
      members.push_back(entry.member);
    }
  }
  return members;
}

std::shared_ptr<const Ring> Membership::Impl::ring() const {
  absl::MutexLock lock(&mu_);
  if (ring_ == nullptr) return std::make_shared<const Ring>(std::vector<std::string>{options_.self.node_id});
  return ring_;
}

bool Membership::Impl::Find(const std::string& node_id, Member* member) const {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(node_id);
  if (it == members_.end()) return false;
  *member = it->second.member;
  return true;
}

bool Membership::Impl::FindAddresses(const std::string& node_id, std::string* address,
                                      std::string* http_address, MemberState* state) const {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(node_id);
  if (it == members_.end()) return false;
  const Member& member = it->second.member;
  *address = member.address;
  *http_address = member.http_address;
  *state = member.state;
  return true;
}

bool Membership::Impl::HasLeft() const {
  absl::MutexLock lock(&mu_);
  return left_;
}

bool Membership::Impl::ViewConfirmed() const {
  absl::MutexLock lock(&mu_);
  return confirmed_;
}

void Membership::Impl::OnChange(std::function<void()> callback) {
  ChangeLock lock(this);
  callbacks_.push_back(std::move(callback));
}

// ---- Membership ------------------------------------------------------------------

Membership::Membership(const MembershipOptions& options, PeerTransport* transport)
    : impl_(std::make_unique<Impl>(options, transport)) {}
Membership::~Membership() { impl_->Stop(); }
absl::Status Membership::Start() { return impl_->Start(); }
void Membership::Stop() { impl_->Stop(); }

void Membership::LeaveAsync(std::function<void()> done) { impl_->LeaveAsync(std::move(done)); }
bool Membership::HasLeft() const { return impl_->HasLeft(); }
bool Membership::ViewConfirmed() const { return impl_->ViewConfirmed(); }
std::vector<Member> Membership::Members() const { return impl_->Members(); }
std::vector<Member> Membership::LiveMembers() const { return impl_->LiveMembers(); }
std::shared_ptr<const Ring> Membership::ring() const { return impl_->ring(); }
bool Membership::Find(const std::string& node_id, Member* member) const {
  return impl_->Find(node_id, member);
}
bool Membership::FindAddresses(const std::string& node_id, std::string* address,
                               std::string* http_address, MemberState* state) const {
  return impl_->FindAddresses(node_id, address, http_address, state);
}
uint64_t Membership::version() const { return impl_->version(); }
bool Membership::IsAlive(const std::string& node_id) const {
  Member member;
  return impl_->Find(node_id, &member) && member.state == MemberState::kAlive;
}
const Member& Membership::self() const { return impl_->self(); }

void Membership::HandleGossip(const p::Gossip& gossip, flatbuffers::FlatBufferBuilder* builder,
                              uint64_t request_id) {
  impl_->HandleGossip(gossip, builder, request_id);
}

absl::Status Membership::JoinThrough(const std::string& address, absl::Duration timeout) {
  struct Outcome {
    absl::Notification done;
    absl::Status status;
  };
  auto outcome = std::make_shared<Outcome>();
  impl_->JoinThroughAsync(address, timeout, [outcome](absl::Status status) {
    outcome->status = std::move(status);
    outcome->done.Notify();
  });
  // The transport's timeout bounds the wait; the margin covers its thread.
  if (!outcome->done.WaitForNotificationWithTimeout(timeout + absl::Seconds(1))) {
    return absl::DeadlineExceededError(absl::StrCat("no answer from ", address, " to join"));
  }
  return outcome->status;
}

void Membership::JoinThroughAsync(const std::string& address, absl::Duration timeout,
                                  std::function<void(absl::Status)> done) {
  impl_->JoinThroughAsync(address, timeout, std::move(done));
}

void Membership::OnChange(std::function<void()> callback) {
  impl_->OnChange(std::move(callback));
}

void Membership::Tick() { impl_->ManualTick(); }

}  // namespace logkv::server::cluster
