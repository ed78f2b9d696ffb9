#include "server/cluster/replica_coordinator.h"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <iterator>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/log.h"

namespace logkv::server::cluster {

namespace p = ::logkv::protocol;

namespace {

// The shortest timeout handed to the transport: an operation whose write
// wait is spent still gets one quick chance rather than none.
constexpr absl::Duration kMinSendTimeout = absl::Milliseconds(1);

absl::Duration Remaining(absl::Time deadline, absl::Time now) {
  return std::max(deadline - now, kMinSendTimeout);
}

// A key for messages: printable, and short even when the key is not.
std::string KeyForMessage(absl::string_view key) {
  constexpr size_t kMaxShown = 64;
  std::string shown = absl::CHexEscape(key.substr(0, kMaxShown));
  if (key.size() > kMaxShown) absl::StrAppend(&shown, "...");
  return absl::StrCat("'", shown, "'");
}

size_t Majority(size_t n) { return n / 2 + 1; }

// Whether no node appears twice (owner lists are a few entries long).
[[maybe_unused]] bool Distinct(absl::Span<const std::string> nodes) {
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (size_t j = i + 1; j < nodes.size(); ++j) {
      if (nodes[i] == nodes[j]) return false;
    }
  }
  return true;
}

// Coordinators' instance numbers (ReplicaCoordinator::instance_).
std::atomic<uint64_t> next_instance{1};

// A thread's placement (ReplicaCoordinator::CachedPlacement), of the
// coordinator numbered instance, read under generation.
struct ThreadPlacement {
  uint64_t instance = 0;
  uint64_t generation = 0;
  Placement placement;
};
thread_local ThreadPlacement thread_placement;

// The rings a thread last checked the node tag against (RefreshTag). They
// are held, so a ring made later never has the address of one seen here.
struct ThreadTagged {
  uint64_t instance = 0;
  std::shared_ptr<const Ring> ring;
  std::shared_ptr<const Ring> next;
};
thread_local ThreadTagged thread_tagged;

ReplicaBatcher::Limits BatchLimits(const ReplicaCoordinatorOptions& options) {
  ReplicaBatcher::Limits limits;
  limits.max_bytes = std::min<uint64_t>(limits.max_bytes, options.max_frame_bytes / 2);
  return limits;
}

}  // namespace

// ---- Cluster timestamps --------------------------------------------------------

uint8_t HashNodeTag(absl::string_view node_id) {
  return static_cast<uint8_t>(XXH3_64bits(node_id.data(), node_id.size()) & kNodeTagMask);
}

uint8_t AssignNodeTag(absl::string_view self, absl::Span<const std::string> members) {
  constexpr size_t kTags = size_t{1} << kNodeTagBits;
  std::vector<std::pair<uint8_t, absl::string_view>> order;
  order.reserve(members.size());
  for (const std::string& member : members) order.emplace_back(HashNodeTag(member), member);
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  if (order.size() > kTags) return HashNodeTag(self);  // more members than tags
  std::array<bool, kTags> used{};
  for (const auto& [hash, member] : order) {
    size_t tag = hash;
    while (used[tag]) tag = (tag + 1) % kTags;
    used[tag] = true;
    if (member == self) return static_cast<uint8_t>(tag);
  }
  // Not a member (a gateway that left, say): a tag no member has.
  if (order.size() == kTags) return HashNodeTag(self);
  size_t tag = HashNodeTag(self);
  while (used[tag]) tag = (tag + 1) % kTags;
  return static_cast<uint8_t>(tag);
}

uint64_t ClusterClock::Now() {
  const uint64_t physical = engine::TimestampAtUnixMs(clock_->NowUnixMs());
  const uint64_t tag = tag_.load(std::memory_order_relaxed);
  uint64_t last = last_.load(std::memory_order_relaxed);
  while (true) {
    // The next logical step above everything seen, or now if that is later;
    // either has zero low bits, which the tag fills.
    const uint64_t base = std::max(physical, (last & ~kNodeTagMask) + (kNodeTagMask + 1));
    const uint64_t next = base | tag;
    // The low bits carry the tag alone: two coordinators never collide.
    assert((next & kNodeTagMask) == tag);
    if (last_.compare_exchange_weak(last, next, std::memory_order_relaxed)) return next;
  }
}

void ClusterClock::Observe(uint64_t timestamp) {
  uint64_t last = last_.load(std::memory_order_relaxed);
  while (timestamp > last &&
         !last_.compare_exchange_weak(last, timestamp, std::memory_order_relaxed)) {
  }
}

// ---- Operation states ------------------------------------------------------------

struct ReplicaCoordinator::ReadState {
  // An ask of a candidate. A peer's answer callback holds a pointer to its
  // ask that shares the state's ownership (aliasing), which fits in the
  // callback without an allocation of its own.
  struct Ask {
    ReadState* state = nullptr;
    size_t candidate = 0;  // index in candidates
  };
  ReplicaCoordinator* coordinator = nullptr;
  std::shared_ptr<const std::string> key;
  bool with_value = false;
  uint64_t epoch = kSenderEpoch;
  Need need;
  absl::Time deadline;
  RepliesDone done;

  absl::Mutex mu;
  // In the order to ask them; fixed once ReadQuorum set them, as are asks.
  NodeList candidates ABSL_GUARDED_BY(mu);
  absl::InlinedVector<Ask, 3> asks ABSL_GUARDED_BY(mu);  // one per candidate
  // Their binary addresses, as ReadQuorum looked them up ("" for this node).
  NodeList addresses ABSL_GUARDED_BY(mu);
  size_t next ABSL_GUARDED_BY(mu) = 0;  // the next candidate to ask
  size_t in_flight ABSL_GUARDED_BY(mu) = 0;
  NodeList asked ABSL_GUARDED_BY(mu);  // in flight
  Replies replies ABSL_GUARDED_BY(mu);
  NodeList failures ABSL_GUARDED_BY(mu);
  bool stale ABSL_GUARDED_BY(mu) = false;  // an owner refused it as placed under an older epoch
  bool finished ABSL_GUARDED_BY(mu) = false;
};

namespace {

// Answers a client operation once: its ticket is released first, as the
// operation is over.
template <typename Ticket, typename Done, typename Result>
void AnswerOnce(Ticket* ticket, Done* done, Result result) {
  ticket->Release();
  Done answer = std::move(*done);
  answer(std::move(result));
}

}  // namespace

// A client write: its record, its owners and what it needs of them, and
// whom to answer. The sends share the record through this object (one
// allocation for both), and the callbacks hold only it, so they need no
// allocation of their own.
struct ReplicaCoordinator::WriteOp {
  ReplicaCoordinator* coordinator = nullptr;
  p::Consistency consistency = p::Consistency::Default;
  VersionedRecord record;  // timestamp 0 until stamped
  Names owners;
  Need need;
  absl::Time deadline;
  uint64_t epoch = kSenderEpoch;  // what its requests carry
  uint64_t placed_epoch = 0;      // of the placement it was last placed under
  bool placed = false;            // once: counted in the replications
  // This node's own write of the record: the first that applied it (placed
  // again, the record is already here).
  std::optional<engine::WriteResult> local;
  // The owners that refused its last send as stale: hinted if it gives up.
  std::vector<std::string> stale_peers;
  Ticket ticket;  // a quorum write: counted until it answers
  WriteDone done;

  void Answer(absl::StatusOr<WriteOutcome> outcome) {
    AnswerOnce(&ticket, &done, std::move(outcome));
  }
};

// A client read that asks owners: its key (shared with the requests), and
// what it needs to be asked again under a newer configuration.
struct ReplicaCoordinator::ReadOp {
  ReplicaCoordinator* coordinator = nullptr;
  std::string key;
  p::Consistency consistency = p::Consistency::Default;
  absl::Time deadline;
  Ticket ticket;  // a quorum read: counted until it answers
  ReadDone done;

  void Answer(absl::StatusOr<ReadResult> result) { AnswerOnce(&ticket, &done, std::move(result)); }
};

struct ReplicaCoordinator::SendState {
  // A target of the send. A peer's answer callback holds a pointer to its
  // target that shares the state's ownership (aliasing), which fits in the
  // callback without an allocation of its own.
  struct Target {
    SendState* state = nullptr;
    std::string node;
    absl::Time sent;  // of the last send to a peer (each waits for its answer)
  };
  ReplicaCoordinator* coordinator = nullptr;
  absl::InlinedVector<Target, 3> targets;  // fixed once the first is sent to
  std::shared_ptr<const VersionedRecord> record;
  uint64_t epoch = kSenderEpoch;
  Need need;
  size_t total = 0;
  bool hint = false;  // a client write: failed owners get hints (and are retried)
  absl::Time deadline;
  SendDone done;

  absl::Mutex mu;
  size_t answered ABSL_GUARDED_BY(mu) = 0;
  SendOutcome outcome ABSL_GUARDED_BY(mu);
  bool finished ABSL_GUARDED_BY(mu) = false;
};

// ---- Quorums over one or two owner sets -----------------------------------------------

ReplicaCoordinator::Need ReplicaCoordinator::Need::Of(Names members, size_t count,
                                                      const Names& drawn_from) {
  Need need;
  need.whole = members == drawn_from;
  need.groups.push_back(Group{std::move(members), count});
  return need;
}

namespace {

// Whether at least count of nodes (each named once, by name(node)) are members.
template <typename Node, typename NameOf>
bool CountReached(const std::vector<std::string>& members, size_t count,
                  absl::Span<const Node> nodes, NameOf name) {
  if (count == 0) return true;
  size_t in_group = 0;
  for (const auto& node : nodes) {
    if (std::find(members.begin(), members.end(), name(node)) != members.end() &&
        ++in_group >= count) {
      return true;
    }
  }
  return false;
}

// Whether each group's count of nodes are its members; whole: one group,
// of which every node is a member (counting them is enough).
template <typename Groups, typename Node, typename NameOf>
bool MetByNodes(const Groups& groups, bool whole, absl::Span<const Node> nodes, NameOf name) {
  if (whole && groups.size() == 1) {
    assert(CountReached(*groups.front().members, nodes.size(), nodes, name));
    return nodes.size() >= groups.front().count;
  }
  for (const auto& group : groups) {
    if (!CountReached(*group.members, group.count, nodes, name)) return false;
  }
  return true;
}

}  // namespace

bool ReplicaCoordinator::Need::MetBy(absl::Span<const std::string> nodes) const {
  return MetByNodes(groups, whole, nodes,
                    [](const std::string& node) -> const std::string& { return node; });
}

bool ReplicaCoordinator::Need::MetBy(absl::Span<const Reply> replies) const {
  return MetByNodes(groups, whole, replies,
                    [](const Reply& reply) -> const std::string& { return reply.node_id; });
}

std::string ReplicaCoordinator::Need::Describe() const {
  std::vector<std::string> parts;
  for (const Group& group : groups) {
    parts.push_back(
        absl::StrCat(group.count, " of [", absl::StrJoin(*group.members, ", "), "]"));
  }
  return absl::StrJoin(parts, " and ");
}

ReplicaCoordinator::Need ReplicaCoordinator::Majorities(const KeyOwners& owners) {
  Need need;
  for (const Names& group : owners.groups) {
    need.groups.push_back(Need::Group{group, Majority(group->size())});
  }
  need.whole = need.groups.size() == 1 && need.groups.front().members == owners.all;
  return need;
}

// ---- The coordinator -----------------------------------------------------------------

ReplicaCoordinator::ReplicaCoordinator(engine::Engine* local, SendFunction send,
                                       RingFunction ring, PeerLookup lookup,
                                       std::string self_node_id, ServerMetrics* metrics,
                                       HintedHandoff* handoff,
                                       const ReplicaCoordinatorOptions& options)
    : local_(local),
      batcher_(std::move(send), BatchLimits(options)),
      ring_(std::move(ring)),
      lookup_(std::move(lookup)),
      self_(std::move(self_node_id)),
      metrics_(metrics),
      handoff_(handoff),
      options_(options),
      instance_(next_instance.fetch_add(1, std::memory_order_relaxed)),
      clock_(options.clock != nullptr ? options.clock : engine::SystemClock(),
             HashNodeTag(self_)) {
  if (metrics_ != nullptr) {
    batcher_.set_counters(metrics_->peer_batched_requests(), metrics_->peer_batched_items());
  }
  // A strong write's second phase writes here the keys its first phase's
  // answers bring, a batch at a time.
  if (local_ != nullptr) {
    batcher_.set_prefetch(
        [local = local_](absl::Span<const absl::string_view> keys) { local->Prefetch(keys); });
  }
}

void ReplicaCoordinator::set_placement(PlacementFunction placement,
                                       GenerationFunction generation) {
  placement_ = std::move(placement);
  generation_ = placement_ ? std::move(generation) : nullptr;
}

void ReplicaCoordinator::set_peer_version(GenerationFunction version) {
  peer_version_ = std::move(version);
}

bool ReplicaCoordinator::Lookup(const std::string& node_id, std::string* address,
                                bool* alive) const {
  PeerInfo info;
  if (!peer_version_) {
    if (!lookup_(node_id, &info)) return false;
    *address = std::move(info.address);
    *alive = info.alive;
    return true;
  }
  // Members looked up by this thread, by node id (unknown ones are not
  // kept); at most one entry per member of the cluster.
  struct Peer {
    std::string address;
    bool alive = false;
  };
  struct Cache {
    uint64_t instance = 0;
    uint64_t version = 0;
    uint64_t generation = 0;
    absl::flat_hash_map<std::string, Peer> peers;
  };
  thread_local Cache cache;
  // Both numbers before the lookup: what it answers is at least as new.
  const uint64_t version = peer_version_();
  const uint64_t generation = generation_ ? generation_() : 0;
  if (cache.instance != instance_ || cache.version != version ||
      cache.generation != generation) {
    cache.peers.clear();
    cache.instance = instance_;
    cache.version = version;
    cache.generation = generation;
  }
  auto it = cache.peers.find(node_id);
  if (it == cache.peers.end()) {
    if (!lookup_(node_id, &info)) return false;
    it = cache.peers.emplace(node_id, Peer{std::move(info.address), info.alive}).first;
  }
  *address = it->second.address;
  *alive = it->second.alive;
  return true;
}

const Placement& ReplicaCoordinator::CachedPlacement() const {
  assert(generation_);
  ThreadPlacement& cached = thread_placement;
  // The generation first: a placement read after it is at least as new, so
  // the copy kept under it is never older than the generation says.
  const uint64_t generation = generation_();
  if (cached.instance != instance_ || cached.generation != generation) {
    cached.placement = placement_();
    cached.instance = instance_;
    cached.generation = generation;
  }
  return cached.placement;
}

Placement ReplicaCoordinator::CurrentPlacement() const {
  if (generation_) return CachedPlacement();
  if (placement_) return placement_();
  Placement placement;
  placement.ring = ring_();
  return placement;
}

size_t ReplicaCoordinator::InFlightBefore(uint64_t epoch) const {
  absl::MutexLock lock(&in_flight_mu_);
  size_t count = 0;
  for (auto it = in_flight_.begin(); it != in_flight_.end() && it->first < epoch; ++it) {
    count += it->second;
  }
  return count;
}

ReplicaCoordinator::Ticket& ReplicaCoordinator::Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    Release();
    coordinator_ = std::exchange(other.coordinator_, nullptr);
    epoch_ = other.epoch_;
  }
  return *this;
}

void ReplicaCoordinator::Ticket::Release() {
  if (coordinator_ == nullptr) return;
  absl::MutexLock lock(&coordinator_->in_flight_mu_);
  auto it = coordinator_->in_flight_.find(epoch_);
  assert(it != coordinator_->in_flight_.end() && it->second > 0);
  --it->second;
  coordinator_ = nullptr;
}

ReplicaCoordinator::Ticket ReplicaCoordinator::Track(uint64_t epoch) {
  {
    absl::MutexLock lock(&in_flight_mu_);
    auto [it, added] = in_flight_.try_emplace(epoch, 0);
    ++it->second;
    // Counts that reached zero stay (no node made and freed per operation)
    // until a newer epoch arrives; then those of older epochs go.
    if (added) {
      for (auto old = in_flight_.begin(); old != it;) {
        old = old->second == 0 ? in_flight_.erase(old) : std::next(old);
      }
    }
  }
  // Released when the operation answers (the callback that holds it runs or
  // is destroyed).
  return Ticket(this, epoch);
}

void ReplicaCoordinator::set_caught_up(std::function<bool()> caught_up) {
  absl::MutexLock lock(&caught_up_mu_);
  caught_up_ = std::move(caught_up);
}

void ReplicaCoordinator::set_self_node_id(std::string node_id) {
  self_ = std::move(node_id);
  clock_.set_tag(HashNodeTag(self_));
}

void ReplicaCoordinator::set_view_confirmed(std::function<bool()> confirmed) {
  absl::MutexLock lock(&caught_up_mu_);
  view_confirmed_ = std::move(confirmed);
  view_confirmed_seen_.store(false, std::memory_order_relaxed);
}

bool ReplicaCoordinator::ViewConfirmed() const {
  if (view_confirmed_seen_.load(std::memory_order_relaxed)) return true;
  absl::ReaderMutexLock lock(&caught_up_mu_);
  const bool confirmed = !view_confirmed_ || view_confirmed_();
  if (confirmed) view_confirmed_seen_.store(true, std::memory_order_relaxed);
  return confirmed;
}

bool ReplicaCoordinator::LocalCopyComplete() const {
  absl::ReaderMutexLock lock(&caught_up_mu_);
  return !caught_up_ || caught_up_();
}

bool ReplicaCoordinator::NeedsQuorum(p::Consistency consistency, bool write) const {
  switch (consistency) {
    case p::Consistency::Strong: return true;
    case p::Consistency::Eventual: return false;
    default: return (write ? options_.write_acks : options_.read_acks) > 1;
  }
}

bool ReplicaCoordinator::Active() const {
  // An unconfirmed view may be a view of one that is not the cluster's: it
  // still goes through the coordinator, which refuses quorum operations.
  if (!ViewConfirmed()) return true;
  // Served locally only by a ring of this node alone. A node that left
  // coordinates for the owners that remain (a gateway), and an empty ring
  // (every member left) is refused by the coordinator: nothing is served as
  // if alone by a node that owns nothing.
  auto clustered = [this](const Ring* ring) {
    return ring != nullptr && (ring->size() != 1 || ring->members().front() != self_);
  };
  // The placement's ring is the ring function's (set_placement).
  if (generation_) return clustered(CachedPlacement().ring.get());
  return clustered(ring_().get());
}

namespace {

absl::Status NoOwnersError() {
  return absl::UnavailableError(
      "no member of this node's cluster owns keys (this node left the cluster, or has not "
      "joined one yet): ask a member, or join this node again (POST /members/join)");
}

absl::Status NotConfirmedError() {
  return absl::UnavailableError(
      "this node has not yet confirmed the cluster's membership with a majority of its "
      "members, or caught up with its control plane (it started moments ago, or cannot reach "
      "them): retry, or ask another node");
}

}  // namespace

ReplicaCoordinator::KeyOwners ReplicaCoordinator::OwnersAt(const Placement& placement,
                                                           size_t replicas, size_t point,
                                                           std::optional<size_t> next_point) {
  auto list = [replicas](const Ring& ring, size_t at) {
    const size_t n = std::min(std::max<size_t>(replicas, 1), ring.size());
    std::vector<std::string> owners = ring.PreferenceListAt(at, n);
    // A preference list holds N distinct members (fewer only in a smaller ring).
    assert(owners.size() == n);
    assert(Distinct(owners));
    return owners;
  };
  KeyOwners owners;
  auto current = std::make_shared<const std::vector<std::string>>(list(*placement.ring, point));
  owners.all = current;
  owners.groups.push_back(current);
  if (next_point.has_value()) {
    std::vector<std::string> next = list(*placement.next, *next_point);
    if (next != *current) {
      std::vector<std::string> all = *current;
      for (const std::string& node : next) {
        if (std::find(all.begin(), all.end(), node) == all.end()) all.push_back(node);
      }
      owners.all = std::make_shared<const std::vector<std::string>>(std::move(all));
      owners.groups.push_back(std::make_shared<const std::vector<std::string>>(std::move(next)));
    }
  }
  return owners;
}

ReplicaCoordinator::KeyOwners ReplicaCoordinator::OwnersOf(const Placement& placement,
                                                           absl::string_view key) const {
  assert(placement.ring != nullptr && placement.ring->size() > 0);
  // The cluster's committed N, or (a placement without one) this node's own.
  const size_t replicas = placement.replicas != 0 ? placement.replicas : options_.replicas;
  const uint64_t hash = XXH3_64bits(key.data(), key.size());
  const size_t point = placement.ring->PointOf(hash);
  std::optional<size_t> next_point;
  if (placement.next != nullptr && placement.next->size() > 0) {
    next_point = placement.next->PointOf(hash);
  }
  // Every key on one point (of each ring) has the same owners, so each
  // thread keeps the lists it built for the placement it last met, in a
  // table of a slot per point, up to kMaxSlots (for N = 3 about 1 MiB a
  // thread at most, more during a change): once a point's list is built, an operation on it finds
  // its owners without building them (no allocation). A ring of up to 4,096 points (27 members of
  // 150 virtual nodes) fits whole; more points share slots, and a slot another point took is built
  // again.
  constexpr size_t kMaxSlots = 4096;
  // During a change a key's pair of points picks the slot: any odd stride
  // spreads the pairs (at most the two rings' points together: each point
  // of either ring starts one), which may still collide.
  constexpr size_t kNextPointStride = 7919;
  struct Slot {
    bool used = false;
    size_t point = 0;
    std::optional<size_t> next_point;
    KeyOwners owners;
  };
  struct Cache {
    uint64_t instance = 0;
    // Held: a ring made later never has the address of one seen here.
    std::shared_ptr<const Ring> ring;
    std::shared_ptr<const Ring> next;
    size_t replicas = 0;
    std::vector<Slot> slots;
  };
  thread_local Cache cache;
  if (cache.instance != instance_ || cache.ring != placement.ring || cache.next != placement.next ||
      cache.replicas != replicas) {
    cache.instance = instance_;
    cache.ring = placement.ring;
    cache.next = placement.next;
    cache.replicas = replicas;
    const size_t points = placement.ring->point_count() +
                          (next_point.has_value() ? placement.next->point_count() : 0);
    cache.slots.clear();
    cache.slots.resize(std::min(points, kMaxSlots));
  }
  Slot& slot =
      cache.slots[(point + next_point.value_or(0) * kNextPointStride) % cache.slots.size()];
  if (!slot.used || slot.point != point || slot.next_point != next_point) {
    slot.owners = OwnersAt(placement, replicas, point, next_point);
    slot.used = true;
    slot.point = point;
    slot.next_point = next_point;
  }
  return slot.owners;
}

std::vector<std::string> ReplicaCoordinator::Owners(absl::string_view key) const {
  const Placement placement = CurrentPlacement();
  if (placement.ring == nullptr || placement.ring->size() == 0) return {self_};
  return *OwnersOf(placement, key).groups.front();
}

std::string ReplicaCoordinator::HttpAddressOf(const std::string& node_id) const {
  PeerInfo info;
  if (lookup_(node_id, &info) && !info.http_address.empty()) return info.http_address;
  return node_id;
}

void ReplicaCoordinator::RefreshTag(const Placement& placement) {
  // Each thread looks at the tag once per placement it meets, not per write.
  ThreadTagged& seen = thread_tagged;
  if (seen.instance == instance_ && seen.ring == placement.ring && seen.next == placement.next) {
    return;
  }
  seen.instance = instance_;
  seen.ring = placement.ring;
  seen.next = placement.next;
  absl::MutexLock lock(&tag_mu_);
  if (placement.ring == tagged_ring_ && placement.next == tagged_next_) return;
  // A thread that meets an older placement after a newer one was tagged
  // (it read it just before the change) leaves the newer members' tag.
  if (placement.epoch < tagged_epoch_) return;
  tagged_epoch_ = placement.epoch;
  tagged_ring_ = placement.ring;
  tagged_next_ = placement.next;
  // Every member either ring names: a joining member coordinates too.
  std::vector<std::string> members = placement.ring->members();
  if (placement.next != nullptr) {
    for (const std::string& member : placement.next->members()) {
      if (std::find(members.begin(), members.end(), member) == members.end()) {
        members.push_back(member);
      }
    }
  }
  const uint8_t tag = AssignNodeTag(self_, members);
  if (tag != clock_.tag()) {
    Log(Level::kInfo, "cluster: node %s stamps writes with tag %d (hash tag %d)", self_, tag,
        HashNodeTag(self_));
  }
  clock_.set_tag(tag);
}

size_t ReplicaCoordinator::WriteAcks(p::Consistency consistency, size_t owners) const {
  switch (consistency) {
    case p::Consistency::Strong: return Majority(owners);
    case p::Consistency::Eventual: return 1;
    default: return std::clamp<size_t>(options_.write_acks, 1, owners);
  }
}

size_t ReplicaCoordinator::ReadAcks(p::Consistency consistency, size_t owners) const {
  switch (consistency) {
    case p::Consistency::Strong: return Majority(owners);
    case p::Consistency::Eventual: return 1;
    default: return std::clamp<size_t>(options_.read_acks, 1, owners);
  }
}

// ---- Writes -----------------------------------------------------------------------------

Placement ReplicaCoordinator::TrackedPlacement(Ticket* ticket) {
  // Counted before the placement is final: an epoch barrier reads this
  // node's epoch, then counts what runs under older ones (InFlightBefore);
  // both sides take in_flight_mu_, so either it counts this operation or
  // this operation, reading the placement again, sees the newer epoch.
  Placement placement = CurrentPlacement();
  *ticket = Track(placement.epoch);
  while (true) {
    Placement again = CurrentPlacement();
    if (again.epoch == placement.epoch) return placement;
    placement = std::move(again);
    *ticket = Track(placement.epoch);
  }
}

void ReplicaCoordinator::Write(std::string key, std::optional<std::string> value, int64_t ttl_ms,
                               p::Consistency consistency, WriteDone done) {
  auto op = std::make_shared<WriteOp>();
  op->coordinator = this;
  op->consistency = consistency;
  op->done = std::move(done);
  op->deadline = absl::Now() + options_.write_wait;
  VersionedRecord& record = op->record;
  record.found = true;
  record.tombstone = !value.has_value();
  if (value.has_value()) record.value = *std::move(value);
  if (!record.tombstone && ttl_ms > 0) {
    engine::Clock* clock = options_.clock != nullptr ? options_.clock : engine::SystemClock();
    record.expiry_unix_ms = clock->NowUnixMs() + ttl_ms;
  }
  record.key = std::move(key);
  PlaceWrite(std::move(op));
}

void ReplicaCoordinator::PlaceWrite(std::shared_ptr<WriteOp> op) {
  const bool quorum = NeedsQuorum(op->consistency, /*write=*/true);
  const Placement placement = quorum ? TrackedPlacement(&op->ticket) : CurrentPlacement();
  if (placement.ring == nullptr || placement.ring->size() == 0) {
    return op->Answer(NoOwnersError());
  }
  if (quorum && !ViewConfirmed()) {
    return op->Answer(NotConfirmedError());
  }
  RefreshTag(placement);
  KeyOwners key_owners = OwnersOf(placement, op->record.key);
  // Every owner, before and after a membership change, is sent the write;
  // strong writes need a majority of each set, the others W of the current.
  op->need = op->consistency == p::Consistency::Strong
                 ? Majorities(key_owners)
                 : Need::Of(key_owners.groups.front(),
                            WriteAcks(op->consistency, key_owners.groups.front()->size()),
                            key_owners.all);
  op->owners = std::move(key_owners.all);
  // W is within [1, N]: a write waits for an owner at least, never for more than exist.
  assert(!op->owners->empty() && op->need.groups.front().count >= 1 &&
         op->need.groups.front().count <= op->need.groups.front().members->size());
  // A quorum write goes out under the epoch it was placed with: replicas
  // that hold a newer configuration refuse it (a coordinator that missed an
  // epoch barrier, stalled, cannot complete it on the old owners).
  op->epoch = quorum ? placement.epoch : kSenderEpoch;
  op->placed_epoch = placement.epoch;
  if (!op->placed) {
    op->placed = true;
    if (metrics_ != nullptr && op->owners->size() > 1) metrics_->replications()->Inc();
  }
  if (op->record.timestamp != 0) {
    // Stamped under an older configuration and refused there as stale: sent
    // with the same timestamp. A strong write's is above every write that
    // completed before it began (its first phase read a majority that held
    // no newer configuration, and so had seen every write completed under
    // one); stamped again, a write already applied on some owners and read
    // there could be read again after a newer write (docs/cluster.md).
    return WriteStamped(std::move(op));
  }
  VersionedRecord& record = op->record;
  if (op->consistency != p::Consistency::Strong) {
    // Stamp above what this node holds for the key (a write replicated here
    // from another coordinator may be ahead of our clock), so a write that
    // follows it is not lost to last-write-wins.
    if (std::find(op->owners->begin(), op->owners->end(), self_) != op->owners->end()) {
      absl::StatusOr<engine::KeyRecord> local = local_->GetRecord(record.key, false);
      if (local.ok() && local->found) clock_.Observe(local->timestamp);
    }
    record.timestamp = clock_.Now();
    return WriteStamped(std::move(op));
  }
  // ABD, phase 1: learn the key's highest timestamp from a majority, so the
  // write is stamped above every write that completed before it began
  // (docs/cluster.md, "Strong writes", has why one round trip is not enough).
  // (What the call reads of op is taken before op moves into the callback.)
  const Names owners = op->owners;
  std::shared_ptr<const std::string> read_key(op, &op->record.key);
  Need read_need = op->need;
  const absl::Time deadline = op->deadline;
  const uint64_t epoch = op->epoch;
  ReadQuorum(*owners, std::move(read_key), /*with_value=*/false, std::move(read_need), deadline,
             epoch, [op = std::move(op)](absl::StatusOr<Replies> replies) mutable {
               if (!replies.ok()) {
                 std::string why = absl::StrCat(
                     "strong write of key ", KeyForMessage(op->record.key),
                     " not attempted: a majority of its owners could not be read (",
                     replies.status().message(), ")");
                 if (absl::IsAborted(replies.status())) {
                   return op->coordinator->PlaceWriteAgain(std::move(op), std::move(why));
                 }
                 return op->Answer(absl::UnavailableError(why));
               }
               // Phase 1 heard from a majority of each owner set.
               assert(replies->size() <= op->owners->size());
               ClusterClock& clock = op->coordinator->clock_;
               for (const Reply& reply : *replies) clock.Observe(reply.record.timestamp);
               op->record.timestamp = clock.Now();
               op->coordinator->WriteStamped(std::move(op));
             });
}

void ReplicaCoordinator::PlaceWriteAgain(std::shared_ptr<WriteOp> op, std::string why) {
  // Over under the configuration it was placed with: an epoch barrier here
  // no longer waits for it.
  op->ticket.Release();
  const uint64_t placed_epoch = op->placed_epoch;
  const absl::Time deadline = op->deadline;
  AwaitNewerEpoch(placed_epoch, deadline,
                  [op = std::move(op), why = std::move(why)](bool newer) mutable {
                    ReplicaCoordinator* self = op->coordinator;
                    if (!newer) {
                      for (const std::string& node : op->stale_peers) self->Hint(node, op->record);
                      return op->Answer(absl::UnavailableError(why));
                    }
                    if (self->metrics_ != nullptr) self->metrics_->stale_retries()->Inc();
                    self->PlaceWrite(std::move(op));
                  });
}

void ReplicaCoordinator::AwaitNewerEpoch(uint64_t epoch, absl::Time deadline,
                                         std::function<void(bool)> then) {
  // Less than a look's time left: not run again (its requests would have
  // next to no time).
  if (deadline - absl::Now() <= options_.epoch_poll) return then(false);
  const Placement placement = CurrentPlacement();
  if (placement.epoch > epoch) return then(true);
  // A node the configuration no longer names (it left, and coordinates as a
  // gateway) is sent no newer one: it does not wait for one.
  auto names_self = [this](const std::shared_ptr<const Ring>& ring) {
    return ring != nullptr &&
           std::binary_search(ring->members().begin(), ring->members().end(), self_);
  };
  if (!options_.run_after || !(names_self(placement.ring) || names_self(placement.next))) {
    return then(false);
  }
  bool start;
  {
    absl::MutexLock lock(&waiters_mu_);
    waiters_.push_back(EpochWaiter{epoch, deadline, std::move(then)});
    start = !std::exchange(polling_, true);
  }
  if (start) SchedulePoll();
}

void ReplicaCoordinator::SchedulePoll() {
  if (options_.run_after(options_.epoch_poll, [this] { PollEpoch(); })) return;
  // Nothing runs later (the transport stops): each waiter is answered now.
  std::vector<EpochWaiter> waiting;
  {
    absl::MutexLock lock(&waiters_mu_);
    waiting.swap(waiters_);
    polling_ = false;
  }
  for (EpochWaiter& waiter : waiting) waiter.then(false);
}

void ReplicaCoordinator::PollEpoch() {
  const uint64_t held = CurrentPlacement().epoch;
  const absl::Time now = absl::Now();
  std::vector<std::pair<std::function<void(bool)>, bool>> over;  // then, and whether newer
  bool more;
  {
    absl::MutexLock lock(&waiters_mu_);
    auto waiting = std::partition(waiters_.begin(), waiters_.end(), [&](const EpochWaiter& w) {
      return held <= w.epoch && w.deadline - now > options_.epoch_poll;
    });
    for (auto it = waiting; it != waiters_.end(); ++it) {
      over.emplace_back(std::move(it->then), it->deadline - now > options_.epoch_poll);
    }
    waiters_.erase(waiting, waiters_.end());
    more = !waiters_.empty();
    polling_ = more;
  }
  for (auto& [then, newer] : over) then(newer);
  if (more) SchedulePoll();
}

void ReplicaCoordinator::WriteStamped(std::shared_ptr<WriteOp> op) {
  assert(op->record.timestamp != 0);  // stamped by the cluster clock before it is sent
  // (What the call reads of op is taken before op moves into the callback.)
  const Names owners = op->owners;
  std::shared_ptr<const VersionedRecord> record(op, &op->record);
  Need need = std::move(op->need);
  const absl::Time deadline = op->deadline;
  const uint64_t epoch = op->epoch;
  SendToOwners(
      *owners, std::move(record), std::move(need), deadline, /*hint=*/true, epoch,
      [op = std::move(op)](SendOutcome sent) mutable {
        const size_t owner_count = op->owners->size();
        // Acknowledgements come from distinct owners, at most one each.
        assert(sent.applied.size() <= owner_count);
        if (sent.local.has_value() && (sent.local->applied || !op->local.has_value())) {
          op->local = sent.local;
        }
        op->stale_peers.assign(std::make_move_iterator(sent.stale_peers.begin()),
                               std::make_move_iterator(sent.stale_peers.end()));
        if (!sent.reached) {
          std::string why = absl::StrCat(
              "write of key ", KeyForMessage(op->record.key), " reached ", sent.applied.size(),
              " of ", owner_count, " owners, ", sent.needed, " needed, within ",
              absl::FormatDuration(op->coordinator->options_.write_wait), "; applied on [",
              absl::StrJoin(sent.applied, ", "), "] (kept there, not rolled back)", "; not on [",
              absl::StrJoin(sent.failures, "; "), "] (queued for hinted handoff)");
          if (sent.stale) return op->coordinator->PlaceWriteAgain(std::move(op), std::move(why));
          return op->Answer(absl::UnavailableError(why));
        }
        for (const std::string& node : op->stale_peers) op->coordinator->Hint(node, op->record);
        WriteOutcome outcome;
        if (op->local.has_value()) outcome.result = *op->local;
        outcome.result.timestamp = op->record.timestamp;
        outcome.result.applied = true;
        outcome.owners = op->owners;
        outcome.acknowledged = sent.applied.size();
        op->Answer(std::move(outcome));
      });
}

absl::Status ReplicaCoordinator::CheckEpoch(uint64_t epoch) const {
  if (epoch == kSenderEpoch) return absl::OkStatus();
  const uint64_t held = generation_ ? CachedPlacement().epoch : CurrentPlacement().epoch;
  if (held > epoch) {
    return absl::AbortedError(absl::StrCat("stale configuration: the operation is for epoch ",
                                           epoch, ", this node holds epoch ", held));
  }
  return absl::OkStatus();
}

void ReplicaCoordinator::SendToOwners(absl::Span<const std::string> targets,
                                      std::shared_ptr<const VersionedRecord> record, Need need,
                                      absl::Time deadline, bool hint, uint64_t epoch,
                                      SendDone done) {
  // Each target is sent to once.
  assert(Distinct(targets));
  auto state = std::make_shared<SendState>();
  state->coordinator = this;
  state->targets.reserve(targets.size());
  for (const std::string& node : targets) {
    state->targets.push_back(SendState::Target{state.get(), node, absl::InfinitePast()});
  }
  state->record = std::move(record);
  state->epoch = epoch;
  state->need = std::move(need);
  state->total = targets.size();
  state->hint = hint;
  state->deadline = deadline;
  state->done = std::move(done);
  if (targets.empty()) {
    SendOutcome outcome;
    outcome.reached = state->need.MetBy(absl::Span<const std::string>());
    if (!outcome.reached) outcome.needed = state->need.Describe();
    state->done(std::move(outcome));
    return;
  }
  // This node's own write first: a peer that is down is then hinted at once
  // when this write alone meets the need, and no peer meets it before this
  // write began. The peers' sends share one clock reading, taken after it,
  // so their time does not include it, and the peers of one write get the
  // same items (whose frames the batcher builds once).
  if (auto self = std::find(targets.begin(), targets.end(), self_); self != targets.end()) {
    SendToOwner(state, self - targets.begin(), /*now=*/absl::InfinitePast());  // peers only
  }
  const absl::Time now = absl::Now();
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i] != self_) SendToOwner(state, i, now);
  }
}

void ReplicaCoordinator::SendToOwner(const std::shared_ptr<SendState>& state, size_t target,
                                     absl::Time now) {
  SendState::Target& to = state->targets[target];
  const std::string& node = to.node;
  if (node == self_) {
    if (absl::Status current = CheckEpoch(state->epoch); !current.ok()) {
      return OnSent(state, node, current, std::nullopt, 0);
    }
    // No callback to allocate when the result is here as the write returns.
    if (local_->WritesFinishInline()) {
      return OnWrittenHere(state, ApplyLocallyNow(local_, *state->record));
    }
    ApplyLocally(local_, *state->record,
                 [this, state](absl::StatusOr<engine::WriteResult> result) {
                   OnWrittenHere(state, result);
                 });
    return;
  }
  std::string address;
  bool alive = false;
  if (!Lookup(node, &address, &alive)) {
    OnSent(state, node, absl::UnavailableError("not a known member"), std::nullopt, 0);
    return;
  }
  if (!alive) {
    // Known dead: not sent; retried while the write waits, then hinted.
    OnSent(state, node, absl::UnavailableError("down"), std::nullopt, 0);
    return;
  }
  to.sent = now;
  batcher_.Replicate(
      address, state->record, Remaining(state->deadline, now),
      [to = std::shared_ptr<const SendState::Target>(state, &to)](
          absl::StatusOr<ReplicaBatcher::Applied> applied) {
        ReplicaCoordinator* self = to->state->coordinator;
        ServerMetrics* metrics = self->metrics_;
        absl::Status status = applied.status();
        uint64_t held = 0;
        if (status.ok() && !applied->applied) {
          status = absl::UnavailableError("the replica could not apply it");
        } else if (status.ok()) {
          held = applied->held_timestamp;
        }
        if (status.ok() && metrics != nullptr) {
          metrics->replica_acks_ok()->Inc();
          metrics->replication_ack_seconds()->Observe(
              absl::ToDoubleSeconds(absl::Now() - to->sent));
        }
        self->OnSent(std::shared_ptr<SendState>(to, to->state), to->node, status, std::nullopt,
                     held);
      },
      state->epoch);
}

namespace {

// The index of node among a send's targets. REQUIRES: it is one.
template <typename State>
size_t TargetOf(const State& state, const std::string& node) {
  for (size_t i = 0; i < state.targets.size(); ++i) {
    if (state.targets[i].node == node) return i;
  }
  assert(false && "not a target of this send");
  return 0;
}

}  // namespace

void ReplicaCoordinator::OnWrittenHere(const std::shared_ptr<SendState>& state,
                                       const absl::StatusOr<engine::WriteResult>& result) {
  if (!result.ok()) return OnSent(state, self_, result.status(), std::nullopt, 0);
  OnSent(state, self_, absl::OkStatus(), *result, result->timestamp);
}

void ReplicaCoordinator::OnSent(const std::shared_ptr<SendState>& state, const std::string& node,
                                const absl::Status& status,
                                std::optional<engine::WriteResult> local,
                                uint64_t held_timestamp) {
  // An owner that holds a newer write counts (the record is superseded
  // there, as last-write-wins orders it); its timestamp moves this node's
  // clock so the next write it coordinates is stamped above.
  if (held_timestamp > state->record->timestamp) clock_.Observe(held_timestamp);
  // A refusal for a stale configuration is not sent again here (it would
  // be refused again): the whole write is placed again once this node
  // holds a newer configuration (PlaceWriteAgain).
  if (!status.ok() && !absl::IsAborted(status) && node != self_ && state->hint &&
      options_.run_after) {
    // The write still waits for acknowledgements, and has time: the owner
    // may be restarting, so it is asked again before it is given up.
    bool waiting;
    {
      absl::MutexLock lock(&state->mu);
      waiting = !state->finished && !state->need.MetBy(state->outcome.applied);
    }
    if (waiting && state->deadline - absl::Now() > options_.owner_retry_delay &&
        options_.run_after(options_.owner_retry_delay,
                           [this, state, target = TargetOf(*state, node)] {
                             SendToOwner(state, target, absl::Now());
                           })) {
      if (metrics_ != nullptr) metrics_->replica_retries()->Inc();
      return;
    }
  }
  // A peer's refusal as stale of a client write: hinted by the write once
  // it is over (a write placed again reaches the owners of the newer
  // configuration itself), or here when the send is over already.
  const bool stale_peer = absl::IsAborted(status) && node != self_ && state->hint;
  if (!status.ok() && node != self_) {
    if (!state->hint || handoff_ == nullptr) {
      if (metrics_ != nullptr) metrics_->replica_acks_failed()->Inc();
    } else if (!stale_peer) {
      Hint(node, *state->record);
    }
  } else if (!status.ok() && !absl::IsAborted(status)) {
    // A full disk fails every write: a line a second says so. (Refused as
    // stale, the write is placed again.)
    static LogLimiter limiter(absl::Seconds(1));
    if (int64_t held_back = 0; limiter.Allow(&held_back)) {
      Log(Level::kWarning, "cluster: local write of key %s failed: %s%s",
          KeyForMessage(state->record->key), status.ToString(),
          held_back > 0 ? absl::StrCat(" (", held_back, " more failed since the last line)")
                        : "");
    }
  }
  std::optional<SendOutcome> finished;
  bool hint_now = false;
  {
    absl::MutexLock lock(&state->mu);
    SendOutcome& outcome = state->outcome;
    // Every target answers once (a retried send counts only its last answer).
    assert(state->answered < state->total);
    ++state->answered;
    // Nothing reads the outcome once finished (later answers are only
    // counted): an eventual write's replicas answer after it did.
    if (!state->finished) {
      if (status.ok()) {
        outcome.applied.push_back(node);
      } else {
        outcome.failures.push_back(absl::StrCat(node, ": ", status.message()));
        if (absl::IsAborted(status)) outcome.stale = true;
        if (stale_peer) outcome.stale_peers.push_back(node);
      }
      if (local.has_value()) outcome.local = local;
      if (state->need.MetBy(outcome.applied)) {
        outcome.reached = true;
        state->finished = true;
      } else if (state->answered == state->total) {
        state->finished = true;
        outcome.needed = state->need.Describe();
      }
      if (state->finished) finished = std::move(outcome);
    } else {
      hint_now = stale_peer;
    }
    // Once every target answered the send is finished: done was called.
    assert(state->answered < state->total || state->finished);
  }
  if (hint_now) Hint(node, *state->record);
  if (finished.has_value()) state->done(*std::move(finished));
}

void ReplicaCoordinator::Hint(const std::string& node, const VersionedRecord& record) {
  if (handoff_ == nullptr) return;
  if (absl::Status queued = handoff_->Enqueue(node, record); !queued.ok()) {
    Log(Level::kWarning, "cluster: %s", queued.ToString());
  }
}

// ---- Reads ------------------------------------------------------------------------------

void ReplicaCoordinator::Get(std::string key, p::Consistency consistency, ReadDone done) {
  GetBy(std::move(key), consistency, absl::Now() + options_.write_wait, std::move(done));
}

void ReplicaCoordinator::GetBy(std::string key, p::Consistency consistency, absl::Time deadline,
                               ReadDone done) {
  const bool quorum = NeedsQuorum(consistency, /*write=*/false);
  Ticket ticket;
  const Placement placement = quorum ? TrackedPlacement(&ticket) : CurrentPlacement();
  if (placement.ring == nullptr || placement.ring->size() == 0) {
    return done(NoOwnersError());
  }
  if (quorum && !ViewConfirmed()) {
    return done(NotConfirmedError());
  }
  const bool strong = consistency == p::Consistency::Strong;
  KeyOwners owners = OwnersOf(placement, key);
  if (!strong) {
    // Only strong reads need both owner sets of a membership change.
    owners.groups.resize(1);
    owners.all = owners.groups.front();
  }
  Need need = strong ? Majorities(owners)
                     : Need::Of(owners.all, ReadAcks(consistency, owners.all->size()), owners.all);
  const uint64_t epoch = quorum ? placement.epoch : kSenderEpoch;
  if (!quorum && need.groups.size() == 1 && need.groups.front().count == 1 &&
      std::find(owners.all->begin(), owners.all->end(), self_) != owners.all->end() &&
      LocalCopyComplete()) {
    // One answer, and this node's complete copy is the one ReadQuorum would
    // ask first: it is read here, without the state of a read that may ask
    // others. Should the engine fail, the read goes the usual way (this
    // node is asked again, then the others). (No owner is asked, so none
    // refuses it as stale, and a background repair's answer is not waited for.)
    absl::StatusOr<engine::KeyRecord> record = local_->GetRecord(key, /*with_value=*/true);
    if (record.ok()) {
      Replies replies;
      replies.push_back(Reply{self_, FromKeyRecord(absl::string_view(), *std::move(record))});
      return FinishRead(std::move(owners), key, std::move(replies), strong, deadline, epoch,
                        std::move(done));
    }
  }
  auto op = std::make_shared<ReadOp>();
  op->coordinator = this;
  op->key = std::move(key);
  op->consistency = consistency;
  op->deadline = deadline;
  op->ticket = std::move(ticket);
  op->done = std::move(done);
  const Names asked = owners.all;
  std::shared_ptr<const std::string> shared_key(op, &op->key);
  ReadQuorum(*asked, std::move(shared_key), /*with_value=*/true, std::move(need), deadline, epoch,
             [this, owners = std::move(owners), strong, deadline, epoch, op,
              placed_epoch = placement.epoch](absl::StatusOr<Replies> replies) mutable {
               if (!replies.ok()) {
                 return AnswerRead(
                     op, placed_epoch,
                     absl::Status(replies.status().code() == absl::StatusCode::kAborted
                                      ? absl::StatusCode::kAborted
                                      : absl::StatusCode::kUnavailable,
                                  absl::StrCat("read of key ", KeyForMessage(op->key),
                                               " failed: ", replies.status().message())));
               }
               FinishRead(std::move(owners), op->key, *std::move(replies), strong, deadline,
                          epoch, [this, op, placed_epoch](absl::StatusOr<ReadResult> result) {
                            AnswerRead(op, placed_epoch, std::move(result));
                          });
             });
}

void ReplicaCoordinator::AnswerRead(const std::shared_ptr<ReadOp>& op, uint64_t placed_epoch,
                                    absl::StatusOr<ReadResult> result) {
  if (result.ok() || !absl::IsAborted(result.status())) return op->Answer(std::move(result));
  // An owner refused it as stale: over under the configuration it was
  // placed with (an epoch barrier here no longer waits for it), and read
  // again from the start under a newer one, with what is left of its wait.
  op->ticket.Release();
  AwaitNewerEpoch(placed_epoch, op->deadline,
                  [op, why = std::string(result.status().message())](bool newer) {
                    if (!newer) return op->Answer(absl::UnavailableError(why));
                    ReplicaCoordinator* self = op->coordinator;
                    if (self->metrics_ != nullptr) self->metrics_->stale_retries()->Inc();
                    // (The key is copied: requests of the first read may still hold it.)
                    ReadDone done = std::move(op->done);
                    self->GetBy(op->key, op->consistency, op->deadline, std::move(done));
                  });
}

void ReplicaCoordinator::FinishRead(KeyOwners owners, absl::string_view key, Replies replies,
                                    bool strong, absl::Time deadline, uint64_t epoch,
                                    ReadDone done) {
  // A read finishes with at least one reply, at most one per owner.
  assert(!replies.empty() && replies.size() <= owners.all->size());
  size_t newest_index = 0;
  for (size_t i = 1; i < replies.size(); ++i) {
    if (NewerThan(replies[i].record, replies[newest_index].record)) newest_index = i;
  }
  auto newest = std::make_shared<VersionedRecord>(replies[newest_index].record);
  newest->key = std::string(key);
  clock_.Observe(newest->timestamp);
  ReadResult result;
  result.found = newest->found && !newest->tombstone;
  // Repairs move an expired value as a value, as anti-entropy does.
  KeepExpiredAsValue(newest.get());
  if (result.found) {
    result.value = newest->value;
    result.timestamp = newest->timestamp;
    result.expiry_unix_ms = newest->expiry_unix_ms;
    // Versions are per replica: the local one when it holds the newest.
    for (const Reply& reply : replies) {
      if (reply.node_id == self_ && reply.record.timestamp == newest->timestamp) {
        result.version = reply.record.version;
      }
    }
  }
  // Owners asked that hold something older, and (strong) how many hold the newest.
  std::vector<std::string> stale;
  size_t holders = 0;
  for (const Reply& reply : replies) {
    if (NewerThan(*newest, reply.record)) {
      stale.push_back(reply.node_id);
    } else {
      ++holders;
    }
  }
  // The newest record's replica holds it: every reply is a holder or stale.
  assert(holders >= 1 && holders + stale.size() == replies.size());
  if (!newest->found) return done(std::move(result));  // nobody knows the key: nothing to repair

  if (!strong) {
    if (!stale.empty()) {
      // Background repair: the answer does not wait for it.
      const size_t count = stale.size();
      auto targets = std::make_shared<const std::vector<std::string>>(std::move(stale));
      SendToOwners(*targets, newest, Need::Of(targets, count, targets), deadline, /*hint=*/false,
                   kSenderEpoch, [](SendOutcome) {});
    }
    return done(std::move(result));
  }
  // ABD, the read's write-back: answer only once a majority (of each owner
  // set, during a membership change) holds the newest record, so no later
  // read can return anything older.
  NodeList holding;
  NodeList targets;
  for (const std::string& owner : *owners.all) {
    bool holds = false;
    for (const Reply& reply : replies) {
      if (reply.node_id == owner && !NewerThan(*newest, reply.record)) holds = true;
    }
    (holds ? holding : targets).push_back(owner);
  }
  const Need needed = Majorities(owners);
  if (needed.MetBy(holding)) return done(std::move(result));
  Need need = needed;
  for (Need::Group& group : need.groups) {
    size_t held = 0;
    for (const std::string& node : holding) {
      if (std::find(group.members->begin(), group.members->end(), node) !=
          group.members->end()) {
        ++held;
      }
    }
    group.count -= std::min(group.count, held);
  }
  SendToOwners(targets, newest, std::move(need), deadline, /*hint=*/false, epoch,
               [result = std::move(result), key = newest->key, needed, holders,
                done = std::move(done)](SendOutcome sent) mutable {
                 if (!sent.reached) {
                   return done(absl::Status(
                       sent.stale ? absl::StatusCode::kAborted : absl::StatusCode::kUnavailable,
                       absl::StrCat("strong read of key ", KeyForMessage(key),
                                    ": the newest record is on ", holders + sent.applied.size(),
                                    " owners, ", needed.Describe(),
                                    " needed, within the write wait; not on [",
                                    absl::StrJoin(sent.failures, "; "), "]")));
                 }
                 done(std::move(result));
               });
}

void ReplicaCoordinator::ReadQuorum(const std::vector<std::string>& owners,
                                    std::shared_ptr<const std::string> key, bool with_value,
                                    Need need, absl::Time deadline, uint64_t epoch,
                                    RepliesDone done) {
  // R (or phase 1's majority) is within [1, N].
  assert(need.groups.front().count >= 1 && need.groups.front().count <= owners.size());
  // One owner set: R owners are asked, the next one when one fails. Two
  // (a membership change): every owner at once.
  const size_t first_asks = need.groups.size() == 1 ? need.groups.front().count : owners.size();
  auto state = std::make_shared<ReadState>();
  state->coordinator = this;
  state->key = std::move(key);
  state->with_value = with_value;
  state->epoch = epoch;
  state->need = std::move(need);
  state->deadline = deadline;
  state->done = std::move(done);
  // The local engine first (no network), then live owners in preference
  // order; owners known dead are not asked. (The membership is asked
  // before taking the state's lock: no foreign lock is taken under it.)
  const bool complete = LocalCopyComplete();
  NodeList candidates;
  NodeList addresses;
  NodeList failures;
  // A node refilling after it lost its data is no owner a quorum may count.
  const bool self_owns = std::find(owners.begin(), owners.end(), self_) != owners.end() &&
                         !refilling_.load(std::memory_order_acquire);
  if (self_owns && complete) {
    candidates.push_back(self_);
    addresses.emplace_back();
  }
  for (const std::string& owner : owners) {
    std::string address;
    bool alive = false;
    if (owner != self_ && Lookup(owner, &address, &alive) && alive) {
      candidates.push_back(owner);
      addresses.push_back(std::move(address));
    } else if (owner != self_) {
      failures.push_back(absl::StrCat(owner, ": down"));
    }
  }
  // Still filling up: asked last, when the others are not enough.
  if (self_owns && !complete) {
    candidates.push_back(self_);
    addresses.emplace_back();
  }
  // Each owner is asked at most once.
  assert(Distinct(candidates) && candidates.size() <= owners.size());
  assert(addresses.size() == candidates.size());
  std::optional<std::string> unreachable;
  {
    absl::MutexLock lock(&state->mu);
    state->candidates = std::move(candidates);
    for (size_t i = 0; i < state->candidates.size(); ++i) {
      state->asks.push_back(ReadState::Ask{state.get(), i});
    }
    state->addresses = std::move(addresses);
    // One allocation for the replies, however many come.
    state->replies.reserve(state->candidates.size());
    state->failures = std::move(failures);
    if (!state->need.MetBy(state->candidates)) {
      state->finished = true;
      unreachable = absl::StrCat(state->need.Describe(), " owners needed, ",
                                 state->candidates.size(), " reachable; [",
                                 absl::StrJoin(state->failures, "; "), "]");
    }
  }
  if (unreachable.has_value()) return state->done(absl::UnavailableError(*unreachable));
  for (size_t i = 0; i < first_asks; ++i) ReadNext(state, /*looked_up=*/true);
}

void ReplicaCoordinator::ReadNext(const std::shared_ptr<ReadState>& state, bool looked_up) {
  std::string node;
  std::string address;
  const ReadState::Ask* ask;
  bool spare;  // another owner could be asked if this one fails
  {
    absl::MutexLock lock(&state->mu);
    if (state->finished || state->next >= state->candidates.size()) return;
    assert(state->addresses.size() == state->candidates.size());
    // Each candidate is asked once: its address is not needed again.
    if (looked_up) address = std::move(state->addresses[state->next]);
    ask = &state->asks[state->next];
    node = state->candidates[state->next++];
    ++state->in_flight;
    state->asked.push_back(node);
    spare = state->next < state->candidates.size();
  }
  if (node == self_) {
    if (absl::Status current = CheckEpoch(state->epoch); !current.ok()) {
      return OnRead(state, node, current);
    }
    absl::StatusOr<engine::KeyRecord> record = local_->GetRecord(*state->key, state->with_value);
    if (!record.ok()) return OnRead(state, node, record.status());
    return OnRead(state, node, FromKeyRecord(absl::string_view(), *std::move(record)));
  }
  if (!looked_up) {
    // Asked after another failed, perhaps a while later: looked up again (a
    // member that restarted may be on another port, which the membership's
    // version then says).
    bool alive = false;
    if (!Lookup(node, &address, &alive)) {
      return OnRead(state, node, absl::UnavailableError("not a known member"));
    }
  }
  // An owner that is alive but does not answer must not use up the whole
  // wait while another could still be asked: it gets half of what is left
  // (a strong write's second phase has the same deadline).
  const absl::Duration remaining = Remaining(state->deadline, absl::Now());
  batcher_.Read(
      address, state->key, !state->with_value,
      spare ? std::max(remaining / 2, kMinSendTimeout) : remaining,
      [ask = std::shared_ptr<const ReadState::Ask>(state, ask)](
          absl::StatusOr<VersionedRecord> record) {
        if (record.ok()) record->version = 0;  // a peer's counter means nothing here
        ReadState* read = ask->state;
        // Candidates are fixed once set (before any ask): read without the lock.
        const std::string& node = ABSL_TS_UNCHECKED_READ(read->candidates)[ask->candidate];
        read->coordinator->OnRead(std::shared_ptr<ReadState>(ask, read), node, std::move(record));
      },
      state->epoch);
}

ReplicaCoordinator::NodeList ReplicaCoordinator::NodesOf(absl::Span<const Reply> replies) {
  NodeList nodes;
  for (const Reply& reply : replies) nodes.push_back(reply.node_id);
  return nodes;
}

void ReplicaCoordinator::OnRead(const std::shared_ptr<ReadState>& state, const std::string& node,
                                absl::StatusOr<VersionedRecord> record) {
  bool ask_next = false;
  std::optional<absl::StatusOr<Replies>> finish;
  {
    absl::MutexLock lock(&state->mu);
    assert(state->in_flight > 0);  // one answer per request sent
    --state->in_flight;
    if (auto it = std::find(state->asked.begin(), state->asked.end(), node);
        it != state->asked.end()) {
      state->asked.erase(it);
    }
    if (state->finished) return;
    // Unfinished: no candidate asked twice.
    assert(state->next <= state->candidates.size());
    if (record.ok()) {
      state->replies.push_back(Reply{node, *std::move(record)});
      if (state->need.MetBy(state->replies)) {
        state->finished = true;
        finish = std::move(state->replies);
      }
    } else {
      state->failures.push_back(absl::StrCat(node, ": ", record.status().message()));
      if (absl::IsAborted(record.status())) state->stale = true;
      // Whether the replies, the owners still asked and those not asked yet
      // could still make the quorum.
      NodeList possible = NodesOf(state->replies);
      possible.insert(possible.end(), state->asked.begin(), state->asked.end());
      possible.insert(possible.end(), state->candidates.begin() + state->next,
                      state->candidates.end());
      if (!state->need.MetBy(possible)) {
        state->finished = true;
        // Aborted when an owner refused it as stale: asked again under a
        // newer configuration it may succeed.
        finish = absl::Status(
            state->stale ? absl::StatusCode::kAborted : absl::StatusCode::kUnavailable,
            absl::StrCat(state->replies.size(), " owners answered, ", state->need.Describe(),
                         " needed, within the write wait; [",
                         absl::StrJoin(state->failures, "; "), "]"));
      } else {
        ask_next = true;
      }
    }
  }
  if (finish.has_value()) return state->done(*std::move(finish));
  if (ask_next) ReadNext(state, /*looked_up=*/false);
}

}  // namespace logkv::server::cluster
