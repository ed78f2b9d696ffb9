#include "server/cluster/anti_entropy.h"

#include <algorithm>
#include <cassert>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "server/cluster/replica.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/namespaces.h"

namespace logkv::server::cluster {

namespace {

using protocol::View;

// Hashes asked for per MerkleHashes request: 128 KiB of answer.
constexpr size_t kHashesPerRequest = 16384;
// Keys waiting to be pushed before their records are read and sent.
constexpr size_t kPushKeysPerFlush = 1024;
// What a listed key costs in a LeafKeysResult beyond its bytes: the LeafKey
// table (vtable offset, three fields, padding), the vector's length and the
// offset to it.
constexpr size_t kLeafKeyOverheadBytes = 40;
// Extra wait for an answer beyond the request timeout, in case the sender
// The token bucket lends this much time's worth of bytes after idleness.
constexpr double kBurstSeconds = 0.25;

}  // namespace

// ---- Handlers ---------------------------------------------------------------

void HandleMerkleHashes(engine::Engine* engine, const protocol::Request& request,
                        flatbuffers::FlatBufferBuilder* builder) {
  const uint64_t id = request.request_id();
  const protocol::MerkleHashes* ask = request.operation_as_MerkleHashes();
  if (ask == nullptr) {
    protocol::BuildStatusResponse(builder, id,
                                  absl::InvalidArgumentError("request is not MerkleHashes"));
    return;
  }
  const uint32_t partitions = engine->MerklePartitionCount();
  const uint32_t leaves = engine->MerkleLeafCount();
  const auto* nodes = ask->nodes();
  const auto* node_partitions = ask->node_partitions();
  const size_t count = nodes == nullptr ? 0 : nodes->size();
  if (count > kMaxMerkleNodesPerRequest) {
    protocol::BuildStatusResponse(
        builder, id,
        absl::ResourceExhaustedError(absl::StrCat(
            "MerkleHashes asks for ", count, " nodes; the limit is ", kMaxMerkleNodesPerRequest)));
    return;
  }
  if (node_partitions != nullptr && node_partitions->size() != count) {
    protocol::BuildStatusResponse(
        builder, id,
        absl::InvalidArgumentError(absl::StrCat("MerkleHashes has ", count, " nodes but ",
                                                node_partitions->size(), " node_partitions")));
    return;
  }
  std::vector<uint64_t> hashes(count);
  for (size_t i = 0; i < count; ++i) {
    const uint32_t partition = node_partitions != nullptr
                                   ? node_partitions->Get(static_cast<flatbuffers::uoffset_t>(i))
                                   : ask->partition();
    const uint32_t node = nodes->Get(static_cast<flatbuffers::uoffset_t>(i));
    if (partition >= partitions || node == 0 || node >= 2 * leaves) {
      protocol::BuildStatusResponse(builder, id,
                                    absl::InvalidArgumentError(absl::StrCat(
                                        "no Merkle node ", node, " in partition ", partition, " (",
                                        partitions, " partitions of ", leaves, " leaves)")));
      return;
    }
    hashes[i] = engine->MerkleNodeHash(partition, node);
  }
  builder->Clear();
  const auto hash_vector = builder->CreateVector(hashes);
  protocol::MerkleHashesResultBuilder result(*builder);
  result.add_hashes(hash_vector);
  result.add_leaf_count(leaves);
  result.add_partition_count(partitions);
  protocol::FinishResponse(builder, id, protocol::Result::MerkleHashesResult, result.Finish().Union());
}

void HandleMerkleLeaf(engine::Engine* engine, const protocol::Request& request,
                      uint32_t max_frame_bytes, flatbuffers::FlatBufferBuilder* builder) {
  const uint64_t id = request.request_id();
  const protocol::MerkleLeaf* ask = request.operation_as_MerkleLeaf();
  if (ask == nullptr) {
    protocol::BuildStatusResponse(builder, id,
                                  absl::InvalidArgumentError("request is not MerkleLeaf"));
    return;
  }
  std::vector<uint32_t> leaf_nodes;
  if (ask->leaf_nodes() != nullptr && ask->leaf_nodes()->size() > 0) {
    if (ask->leaf_nodes()->size() > engine->MerkleLeafCount()) {
      protocol::BuildStatusResponse(builder, id,
                                    absl::InvalidArgumentError(absl::StrCat(
                                        "MerkleLeaf asks for ", ask->leaf_nodes()->size(),
                                        " leaves; a partition has ", engine->MerkleLeafCount())));
      return;
    }
    leaf_nodes.assign(ask->leaf_nodes()->begin(), ask->leaf_nodes()->end());
  } else {
    leaf_nodes.push_back(ask->leaf_node());
  }
  absl::StatusOr<std::vector<engine::Engine::LeafKey>> keys =
      engine->MerkleLeafKeys(ask->partition(), leaf_nodes);
  if (!keys.ok()) {
    protocol::BuildStatusResponse(builder, id, keys.status());
    return;
  }
  const absl::string_view after_key = View(ask->after_key());
  // Keys come sorted: the first one after the cursor starts the page.
  auto first = keys->begin();
  if (!after_key.empty()) {
    first = std::upper_bound(keys->begin(), keys->end(), after_key,
                             [](absl::string_view cursor, const engine::Engine::LeafKey& key) {
                               return cursor < absl::string_view(key.key);
                             });
  }
  const size_t budget_bytes = max_frame_bytes / 2;
  builder->Clear();
  std::vector<flatbuffers::Offset<protocol::LeafKey>> items;
  size_t used_bytes = 0;
  bool truncated = false;
  for (auto it = first; it != keys->end(); ++it) {
    const size_t cost = it->key.size() + kLeafKeyOverheadBytes;
    if (!items.empty() && used_bytes + cost > budget_bytes) {
      truncated = true;
      break;
    }
    used_bytes += cost;
    const auto key_bytes =
        builder->CreateVector(reinterpret_cast<const uint8_t*>(it->key.data()), it->key.size());
    items.push_back(protocol::CreateLeafKey(*builder, key_bytes, it->timestamp, it->tombstone));
  }
  const auto item_vector = builder->CreateVector(items);
  protocol::LeafKeysResultBuilder result(*builder);
  result.add_keys(item_vector);
  result.add_truncated(truncated);
  protocol::FinishResponse(builder, id, protocol::Result::LeafKeysResult, result.Finish().Union());
}

// ---- Figures ----------------------------------------------------------------

void AntiEntropyFigures::Add(const AntiEntropyFigures& round) {
  rounds += round.rounds;
  failed_rounds += round.failed_rounds;
  requests += round.requests;
  partitions_compared += round.partitions_compared;
  partitions_differing += round.partitions_differing;
  leaves_differing += round.leaves_differing;
  keys_compared += round.keys_compared;
  keys_not_owned += round.keys_not_owned;
  keys_pushed += round.keys_pushed;
  keys_pulled += round.keys_pulled;
  bytes_sent += round.bytes_sent;
  bytes_received += round.bytes_received;
  last_round_seconds = round.last_round_seconds;
  if (round.keys_pushed + round.keys_pulled > 0) {
    repair_keys_per_second = round.repair_keys_per_second;
  }
}

// ---- Rounds -----------------------------------------------------------------

// One exchange with one peer. Owned by the thread running it.
struct AntiEntropy::Round {
  std::string peer_id;
  std::string address;
  std::shared_ptr<const Ring> ring;  // null: every key is owned by both sides
  bool hand_off = false;  // pushes only (this node is leaving; ring is without it)
  // A fill's: no request is sent after it, and none waits past it.
  absl::Time deadline = absl::InfiniteFuture();
  // The background pass's: it ends at its next request while a fill runs.
  bool yields_to_fills = false;
  uint32_t partitions = 0;
  uint32_t leaves = 0;
  AntiEntropyFigures figures;
  std::vector<std::string> push_keys;  // newer here, owned by the peer
  std::vector<std::string> pull_keys;  // newer there, owned here
};

AntiEntropy::AntiEntropy(engine::Engine* engine, PeerSendFunction send, RingFunction ring,
                         MembersFunction live_members, std::string self_node_id,
                         ServerMetrics* metrics, const AntiEntropyOptions& options)
    : engine_(engine),
      send_(std::move(send)),
      ring_(std::move(ring)),
      live_members_(std::move(live_members)),
      self_(std::move(self_node_id)),
      options_(options),
      replicas_(options.replicas),
      worker_("anti-entropy", [this] { PassTask(); },
              PeriodicWorkerOptions{.interval = options.interval,
                                    .initial_delay = options.initial_delay,
                                    .interval_from_start = true}) {
  if (metrics == nullptr) return;
  MetricsRegistry* registry = metrics->registry();
  rounds_counter_ =
      registry->AddCounter("logkv_anti_entropy_rounds_total",
                           "Anti-entropy exchanges with one peer, finished or failed.");
  failed_rounds_counter_ = registry->AddCounter("logkv_anti_entropy_failed_rounds_total",
                                                "Anti-entropy exchanges that failed.");
  CounterFamily* repaired = registry->AddCounterFamily(
      "logkv_anti_entropy_keys_repaired_total",
      "Records copied by anti-entropy: push = to a peer, pull = from a peer.", {"direction"});
  pushed_counter_ = repaired->WithLabelValues({"push"});
  pulled_counter_ = repaired->WithLabelValues({"pull"});
  CounterFamily* bytes = registry->AddCounterFamily(
      "logkv_anti_entropy_bytes_total", "Frame bytes of anti-entropy requests and answers.",
      {"direction"});
  sent_counter_ = bytes->WithLabelValues({"sent"});
  received_counter_ = bytes->WithLabelValues({"received"});
  not_owned_counter_ = registry->AddCounter(
      "logkv_anti_entropy_keys_not_owned_total",
      "Keys of differing Merkle leaves that the ring does not place on the other side.");
  last_round_gauge_ = registry->AddGauge("logkv_anti_entropy_last_round_seconds",
                                         "Duration of the last anti-entropy exchange.");
  repair_rate_gauge_ = registry->AddGauge(
      "logkv_anti_entropy_repair_keys_per_second",
      "Records copied per second by the last anti-entropy exchange that copied any.");
  using Field = std::function<double(const PeerRound&)>;
  const std::pair<CollectedFamily*, Field> peer_families[] = {
      {registry->AddCollectedFamily(
           "logkv_anti_entropy_peer_differing_leaves",
           "Merkle leaves that differed from a peer's at the last finished exchange, by peer.",
           MetricType::kGauge, {"peer"}),
       [](const PeerRound& r) { return static_cast<double>(r.leaves_differing); }},
      {registry->AddCollectedFamily(
           "logkv_anti_entropy_peer_keys_repaired",
           "Records copied either way at the last finished exchange with a peer, by peer.",
           MetricType::kGauge, {"peer"}),
       [](const PeerRound& r) { return static_cast<double>(r.keys_repaired); }},
      {registry->AddCollectedFamily(
           "logkv_anti_entropy_peer_last_round_timestamp_seconds",
           "Unix time the last finished anti-entropy exchange with a peer ended, by peer.",
           MetricType::kGauge, {"peer"}),
       [](const PeerRound& r) { return static_cast<double>(r.finished_unix_ms) / 1e3; }},
  };
  for (const auto& [family, field] : peer_families) {
    family->SetCollector([box = std::weak_ptr<PeerRoundsBox>(peer_rounds_), field = field] {
      std::vector<CollectedSample> samples;
      const std::shared_ptr<PeerRoundsBox> rounds = box.lock();
      if (rounds == nullptr) return samples;  // this AntiEntropy is gone
      absl::MutexLock lock(&rounds->mu);
      for (const auto& [peer, round] : rounds->rounds) {
        samples.push_back(CollectedSample{{peer}, field(round)});
      }
      return samples;
    });
  }
}

AntiEntropy::~AntiEntropy() { Stop(); }

std::map<std::string, AntiEntropy::PeerRound> AntiEntropy::PeerRounds() const {
  absl::MutexLock lock(&peer_rounds_->mu);
  return peer_rounds_->rounds;
}

absl::Status AntiEntropy::Start() { return worker_.Start(); }

void AntiEntropy::Stop() { worker_.Stop(); }

void AntiEntropy::SetReplicas(size_t replicas) {
  if (replicas_.exchange(replicas, std::memory_order_relaxed) != replicas) NotifyRingChanged();
}

void AntiEntropy::NotifyRingChanged() {
  {
    absl::MutexLock lock(&mu_);
    caught_up_.store(false, std::memory_order_release);
    ring_changed_ = true;
  }
  worker_.WakeAfter(options_.initial_delay);
}

void AntiEntropy::PassTask() {
  {
    absl::MutexLock lock(&mu_);
    ring_changed_ = false;
  }
  const bool all_ok = Pass();
  absl::Duration retry = absl::ZeroDuration();
  {
    absl::MutexLock lock(&mu_);
    // A ring change during the pass calls for another one before catching
    // up (the worker runs it: the change woke it).
    if (all_ok && !ring_changed_) caught_up_.store(true, std::memory_order_release);
    if (all_ok) {
      retry_delay_ = absl::ZeroDuration();
    } else {
      // Not caught up means reads of this node's keys ask its peers first:
      // try again soon rather than a whole interval later.
      retry_delay_ =
          std::min(std::max(retry_delay_ * 2, options_.initial_delay), options_.interval);
      retry = retry_delay_;
    }
  }
  if (retry > absl::ZeroDuration()) worker_.WakeAfter(retry);
}

bool AntiEntropy::Pass() {
  bool all_ok = true;
  for (const Member& member : live_members_()) {
    if (member.node_id == self_ || member.state != MemberState::kAlive) continue;
    if (worker_.stopping()) return false;
    if (fills_running_.load(std::memory_order_relaxed) > 0) return false;  // the next pass
    absl::StatusOr<AntiEntropyFigures> round;
    {
      absl::MutexLock lock(&round_mu_);
      round = RunRound(member.node_id, member.address, /*ring=*/nullptr, /*hand_off=*/false,
                       absl::InfiniteFuture(), /*yields_to_fills=*/true);
    }
    if (!round.ok()) {
      all_ok = false;
      Log(Level::kWarning, "anti-entropy with %s (%s) failed: %s", member.node_id, member.address,
          round.status().ToString());
    } else if (round->keys_pushed + round->keys_pulled > 0) {
      Log(Level::kInfo,
          "anti-entropy with %s: %d partitions differ, %d keys pushed, %d pulled, %d bytes "
          "sent, %d received in %.3f s",
          member.node_id, round->partitions_differing, round->keys_pushed, round->keys_pulled,
          round->bytes_sent, round->bytes_received, round->last_round_seconds);
    }
  }
  return all_ok;
}

absl::StatusOr<AntiEntropyFigures> AntiEntropy::RunOnce(const std::string& peer_node_id) {
  if (peer_node_id == self_) {
    return absl::InvalidArgumentError("anti-entropy with oneself: " + peer_node_id);
  }
  for (const Member& member : live_members_()) {
    if (member.node_id != peer_node_id) continue;
    absl::MutexLock lock(&round_mu_);
    return RunRound(member.node_id, member.address);
  }
  return absl::NotFoundError(absl::StrCat("no live member ", peer_node_id));
}

AntiEntropyFigures AntiEntropy::Figures() const {
  absl::MutexLock lock(&mu_);
  return totals_;
}

absl::Status AntiEntropy::HandOff(absl::Time deadline, std::shared_ptr<const Ring> after) {
  if (after == nullptr) {
    std::shared_ptr<const Ring> ring = ring_ ? ring_() : nullptr;
    std::vector<std::string> remaining;
    if (ring != nullptr) {
      for (const std::string& member : ring->members()) {
        if (member != self_) remaining.push_back(member);
      }
    }
    if (!remaining.empty()) after = std::make_shared<const Ring>(remaining);
  }
  if (after == nullptr || after->size() == 0) {
    return absl::FailedPreconditionError(
        "this node is the only member: there is no other member to hand its keys to");
  }
  // Ownership as it will be once this node is gone. Every member of that
  // ring must be handed what it will own: one that is not alive fails the
  // hand-off (a member the list of live ones lacks would be skipped unseen).
  absl::Status all = absl::OkStatus();
  int reached = 0;
  const std::vector<Member> live = live_members_();
  for (const std::string& owner : after->members()) {
    if (owner == self_) continue;
    if (std::none_of(live.begin(), live.end(),
                     [&owner](const Member& member) { return member.node_id == owner; })) {
      all.Update(absl::UnavailableError(
          absl::StrCat("cannot hand keys off to ", owner, ": it is not alive")));
    }
  }
  for (const Member& member : live) {
    if (member.node_id == self_) continue;
    ++reached;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("hand-off did not reach every peer in time");
    }
    absl::MutexLock lock(&round_mu_);
    absl::StatusOr<AntiEntropyFigures> figures =
        RunRound(member.node_id, member.address, after, /*hand_off=*/true);
    if (!figures.ok()) {
      all.Update(figures.status());
    } else {
      Log(Level::kInfo, "hand-off to %s: %d keys pushed", member.node_id,
          figures->keys_pushed);
    }
  }
  if (reached == 0) {
    return absl::FailedPreconditionError(
        "no other member is alive: there is nobody to hand this node's keys to");
  }
  return all;
}

absl::Status AntiEntropy::Fill(std::shared_ptr<const Ring> ring,
                               const std::vector<std::string>& peers, absl::Time deadline) {
  std::map<std::string, std::string> live;  // node id -> address
  for (const Member& member : live_members_()) live[member.node_id] = member.address;
  fills_running_.fetch_add(1, std::memory_order_relaxed);
  absl::Cleanup done = [this] { fills_running_.fetch_sub(1, std::memory_order_relaxed); };
  uint64_t pulled = 0;
  for (const std::string& peer : peers) {
    if (peer == self_) continue;
    auto it = live.find(peer);
    if (it == live.end()) {
      return absl::UnavailableError(absl::StrCat("cannot fill from ", peer, ": it is not alive"));
    }
    // A background round runs to its end: the fill waits for it no longer
    // than its deadline.
    if (!LockRoundsBefore(deadline)) {
      return absl::DeadlineExceededError("the fill did not reach every owner in time");
    }
    absl::StatusOr<AntiEntropyFigures> figures =
        RunRound(peer, it->second, ring, /*hand_off=*/false, deadline);
    round_mu_.Unlock();
    if (!figures.ok()) return figures.status();
    pulled += figures->keys_pulled;
  }
  Log(Level::kInfo, "filled from %d members: %d keys pulled", static_cast<int64_t>(peers.size()),
      static_cast<int64_t>(pulled));
  return absl::OkStatus();
}

bool AntiEntropy::LockRoundsBefore(absl::Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  while (!round_mu_.TryLock()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (absl::Now() < deadline) return true;
  round_mu_.Unlock();
  return false;
}

absl::StatusOr<AntiEntropyFigures> AntiEntropy::RunRound(const std::string& peer_id,
                                                         const std::string& address,
                                                         std::shared_ptr<const Ring> ring,
                                                         bool hand_off, absl::Time deadline,
                                                         bool yields_to_fills) {
  round_mu_.AssertHeld();  // rounds take turns
  assert(peer_id != self_);
  Round round;
  round.peer_id = peer_id;
  round.address = address;
  round.ring = ring != nullptr ? std::move(ring) : (ring_ ? ring_() : nullptr);
  round.hand_off = hand_off;
  round.deadline = deadline;
  round.yields_to_fills = yields_to_fills;
  round.partitions = engine_->MerklePartitionCount();
  round.leaves = engine_->MerkleLeafCount();
  const absl::Time start = absl::Now();
  absl::Status status = CompareTrees(&round);
  if (status.ok()) status = FlushPushes(&round);
  if (status.ok()) status = FlushPulls(&round);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  round.figures.rounds = 1;
  round.figures.failed_rounds = status.ok() ? 0 : 1;
  round.figures.last_round_seconds = seconds;
  const uint64_t repaired = round.figures.keys_pushed + round.figures.keys_pulled;
  round.figures.repair_keys_per_second = seconds > 0 ? static_cast<double>(repaired) / seconds : 0;
  Account(round.figures);
  if (status.ok() && !hand_off) {
    absl::MutexLock lock(&peer_rounds_->mu);
    peer_rounds_->rounds[peer_id] = PeerRound{round.figures.leaves_differing, repaired,
                                      absl::ToUnixMillis(absl::Now())};
  }
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("anti-entropy with ", peer_id, " at ", address,
                                                    ": ", status.message()));
  }
  return round.figures;
}

void AntiEntropy::Account(const AntiEntropyFigures& round) {
  {
    absl::MutexLock lock(&mu_);
    totals_.Add(round);
  }
  if (rounds_counter_ == nullptr) return;
  rounds_counter_->Inc(round.rounds);
  failed_rounds_counter_->Inc(round.failed_rounds);
  pushed_counter_->Inc(round.keys_pushed);
  pulled_counter_->Inc(round.keys_pulled);
  sent_counter_->Inc(round.bytes_sent);
  received_counter_->Inc(round.bytes_received);
  not_owned_counter_->Inc(round.keys_not_owned);
  last_round_gauge_->Set(round.last_round_seconds);
  if (round.keys_pushed + round.keys_pulled > 0) {
    repair_rate_gauge_->Set(round.repair_keys_per_second);
  }
}

absl::StatusOr<std::string> AntiEntropy::Call(Round* round, std::string request_frame) {
  if (worker_.stopping()) return absl::CancelledError("anti-entropy is stopping");
  if (round->yields_to_fills && fills_running_.load(std::memory_order_relaxed) > 0) {
    return absl::AbortedError("a fill (a joining node's) goes first");
  }
  const absl::Duration left = round->deadline - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError("the round ran out of time");
  }
  const uint64_t sent_bytes = request_frame.size();
  round->figures.requests += 1;
  round->figures.bytes_sent += sent_bytes;
  absl::StatusOr<std::string> answer = SendAndWait(send_, round->address, std::move(request_frame),
                                                   std::min(options_.request_timeout, left));
  if (!answer.ok()) {
    Throttle(sent_bytes);
    return answer.status();
  }
  std::string frame = *std::move(answer);
  round->figures.bytes_received += frame.size();
  if (!Throttle(sent_bytes + frame.size())) return absl::CancelledError("anti-entropy is stopping");
  absl::StatusOr<const protocol::Response*> response =
      protocol::VerifyResponse(frame, options_.max_frame_bytes);
  if (!response.ok()) return response.status();
  if (absl::Status status = protocol::StatusFromResponse(**response); !status.ok()) return status;
  return frame;
}

bool AntiEntropy::Throttle(uint64_t bytes) {
  if (options_.bytes_per_second == 0) return !worker_.stopping();
  absl::Time paid_until;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    const absl::Duration cost = absl::Seconds(static_cast<double>(bytes) /
                                              static_cast<double>(options_.bytes_per_second));
    bucket_paid_until_ = std::max(bucket_paid_until_, now - absl::Seconds(kBurstSeconds)) + cost;
    paid_until = bucket_paid_until_;
  }
  // Stop ends the wait (a Stop from any thread, for RunOnce's rounds too).
  return worker_.SleepUntil(paid_until);
}

absl::Status AntiEntropy::CompareTrees(Round* round) {
  // The frontier: nodes of one depth, every partition's at once, that differ.
  struct Node {
    uint32_t partition;
    uint32_t node;
  };
  std::vector<Node> frontier;
  frontier.reserve(round->partitions);
  for (uint32_t partition = 0; partition < round->partitions; ++partition) {
    frontier.push_back(Node{partition, 1});
  }
  round->figures.partitions_compared = round->partitions;
  bool roots = true;
  for (;;) {
    std::vector<Node> differing;
    for (size_t begin = 0; begin < frontier.size(); begin += kHashesPerRequest) {
      const size_t end = std::min(frontier.size(), begin + kHashesPerRequest);
      flatbuffers::FlatBufferBuilder builder(64 + (end - begin) * 8);
      std::vector<uint32_t> nodes;
      std::vector<uint32_t> partitions;
      nodes.reserve(end - begin);
      partitions.reserve(end - begin);
      for (size_t i = begin; i < end; ++i) {
        nodes.push_back(frontier[i].node);
        partitions.push_back(frontier[i].partition);
      }
      const auto node_vector = builder.CreateVector(nodes);
      const auto partition_vector = builder.CreateVector(partitions);
      protocol::MerkleHashesBuilder ask(builder);
      ask.add_nodes(node_vector);
      ask.add_node_partitions(partition_vector);
      const auto offset = ask.Finish().Union();
      absl::StatusOr<std::string> frame =
          Call(round, FinishPeerRequest(&builder, protocol::Operation::MerkleHashes, offset));
      if (!frame.ok()) return frame.status();
      const auto* result = flatbuffers::GetSizePrefixedRoot<protocol::Response>(frame->data())
                               ->result_as_MerkleHashesResult();
      if (result == nullptr || result->hashes() == nullptr ||
          result->hashes()->size() != end - begin) {
        return absl::InvalidArgumentError(
            "MerkleHashes answer is not MerkleHashesResult "
            "with one hash per node asked for");
      }
      if (result->leaf_count() != round->leaves || result->partition_count() != round->partitions) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Merkle forests differ in shape: here ", round->partitions, " partitions of ",
            round->leaves, " leaves, there ", result->partition_count(), " of ",
            result->leaf_count(), " (engine options merkle_partitions, merkle_leaves)"));
      }
      for (size_t i = begin; i < end; ++i) {
        // Nodes of a Merkle tree are numbered 1 (the root) to 2 * leaves - 1.
        assert(frontier[i].node >= 1 && frontier[i].node < 2 * round->leaves);
        const uint64_t theirs =
            result->hashes()->Get(static_cast<flatbuffers::uoffset_t>(i - begin));
        if (engine_->MerkleNodeHash(frontier[i].partition, frontier[i].node) != theirs) {
          differing.push_back(frontier[i]);
        }
      }
    }
    if (roots) {
      round->figures.partitions_differing = differing.size();
      roots = false;
    }
    if (differing.empty()) return absl::OkStatus();
    if (differing.front().node >= round->leaves) {
      // Leaves: compare their keys, partition by partition (the frontier
      // stays in partition order).
      round->figures.leaves_differing = differing.size();
      size_t begin = 0;
      while (begin < differing.size()) {
        const uint32_t partition = differing[begin].partition;
        // Partition order: each partition's leaves are compared in one go.
        assert(begin == 0 || differing[begin - 1].partition < partition);
        std::vector<uint32_t> leaves;
        size_t end = begin;
        for (; end < differing.size() && differing[end].partition == partition; ++end) {
          // The frontier is one depth of the trees: all leaves once one is.
          assert(differing[end].node >= round->leaves);
          leaves.push_back(differing[end].node);
        }
        if (absl::Status status = ComparePartition(round, partition, leaves); !status.ok()) {
          return status;
        }
        begin = end;
      }
      return absl::OkStatus();
    }
    frontier.clear();
    frontier.reserve(differing.size() * 2);
    for (const Node& node : differing) {
      frontier.push_back(Node{node.partition, node.node * 2});
      frontier.push_back(Node{node.partition, node.node * 2 + 1});
    }
  }
}

absl::Status AntiEntropy::ComparePartition(Round* round, uint32_t partition,
                                           const std::vector<uint32_t>& leaves) {
  absl::StatusOr<std::vector<engine::Engine::LeafKey>> local =
      engine_->MerkleLeafKeys(partition, leaves);
  if (!local.ok()) return local.status();
  // The merge below walks both sides in key order.
  assert(std::is_sorted(local->begin(), local->end(),
                        [](const engine::Engine::LeafKey& a, const engine::Engine::LeafKey& b) {
                          return a.key < b.key;
                        }));

  // Decides one key present on either side (null: absent there).
  auto decide = [&](absl::string_view key, const engine::Engine::LeafKey* mine,
                    const protocol::LeafKey* theirs) {
    // Hints and accounts are this node's own business.
    if (IsNodeLocalKey(key)) return;
    round->figures.keys_compared += 1;
    const bool newer_here =
        mine != nullptr && (theirs == nullptr || mine->timestamp > theirs->timestamp());
    const bool newer_there =
        theirs != nullptr && (mine == nullptr || theirs->timestamp() > mine->timestamp);
    assert(!(newer_here && newer_there));
    if (!newer_here && !newer_there) return;
    bool peer_owns = true;
    bool self_owns = true;
    if (round->ring != nullptr) {
      const std::vector<std::string> owners =
          round->ring->PreferenceList(key, replicas_.load(std::memory_order_relaxed));
      peer_owns = std::find(owners.begin(), owners.end(), round->peer_id) != owners.end();
      self_owns = std::find(owners.begin(), owners.end(), self_) != owners.end();
    }
    if (newer_here) {
      if (!peer_owns) {
        round->figures.keys_not_owned += 1;
      } else if (options_.push || round->hand_off) {
        round->push_keys.emplace_back(key);
      }
    } else if (self_owns) {
      round->pull_keys.emplace_back(key);
    } else {
      round->figures.keys_not_owned += 1;
    }
  };

  size_t mine = 0;  // next local key to compare
  std::string after_key;
  for (;;) {
    flatbuffers::FlatBufferBuilder builder(128 + leaves.size() * 4 + after_key.size());
    const auto leaf_vector = builder.CreateVector(leaves);
    const auto after_vector =
        builder.CreateVector(reinterpret_cast<const uint8_t*>(after_key.data()), after_key.size());
    protocol::MerkleLeafBuilder ask(builder);
    ask.add_partition(partition);
    ask.add_leaf_node(leaves.front());
    ask.add_leaf_nodes(leaf_vector);
    ask.add_after_key(after_vector);
    const auto offset = ask.Finish().Union();
    absl::StatusOr<std::string> frame =
        Call(round, FinishPeerRequest(&builder, protocol::Operation::MerkleLeaf, offset));
    if (!frame.ok()) return frame.status();
    const auto* result = flatbuffers::GetSizePrefixedRoot<protocol::Response>(frame->data())
                             ->result_as_LeafKeysResult();
    if (result == nullptr)
      return absl::InvalidArgumentError("MerkleLeaf answer is not LeafKeysResult");
    const auto* theirs = result->keys();
    const size_t count = theirs == nullptr ? 0 : theirs->size();
    const bool truncated = result->truncated() && count > 0;
    // A truncated page speaks only for keys up to its last one.
    const absl::string_view page_end =
        truncated ? View(theirs->Get(static_cast<flatbuffers::uoffset_t>(count - 1))->key())
                  : absl::string_view();
    absl::string_view previous;
    for (size_t i = 0; i < count; ++i) {
      const protocol::LeafKey* item = theirs->Get(static_cast<flatbuffers::uoffset_t>(i));
      const absl::string_view key = View(item->key());
      if ((i > 0 && key <= previous) || (!after_key.empty() && key <= after_key)) {
        return absl::InvalidArgumentError("MerkleLeaf answer is not in key order");
      }
      previous = key;
      while (mine < local->size() && absl::string_view((*local)[mine].key) < key) {
        decide((*local)[mine].key, &(*local)[mine], nullptr);
        ++mine;
      }
      if (mine < local->size() && absl::string_view((*local)[mine].key) == key) {
        decide(key, &(*local)[mine], item);
        ++mine;
      } else {
        decide(key, nullptr, item);
      }
      if (round->push_keys.size() >= kPushKeysPerFlush) {
        if (absl::Status status = FlushPushes(round); !status.ok()) return status;
      }
      if (round->pull_keys.size() >= options_.pull_batch_keys) {
        if (absl::Status status = FlushPulls(round); !status.ok()) return status;
      }
    }
    if (!truncated) break;
    after_key.assign(page_end.data(), page_end.size());
  }
  for (; mine < local->size(); ++mine) decide((*local)[mine].key, &(*local)[mine], nullptr);
  if (round->push_keys.size() >= kPushKeysPerFlush) return FlushPushes(round);
  return absl::OkStatus();
}

absl::Status AntiEntropy::FlushPushes(Round* round) {
  std::vector<std::string> keys;
  keys.swap(round->push_keys);
  const size_t budget_bytes = std::max<size_t>(
      1, std::min<size_t>(options_.push_batch_bytes, options_.max_frame_bytes / 2));
  std::vector<VersionedRecord> batch;
  size_t batch_bytes = 0;
  auto send = [&]() -> absl::Status {
    if (batch.empty()) return absl::OkStatus();
    absl::StatusOr<std::string> frame = Call(round, ReplicateRequestFrame(batch, false));
    if (!frame.ok()) return frame.status();
    absl::StatusOr<std::vector<bool>> applied = ParseReplicateResult(*frame, batch.size());
    if (!applied.ok()) return applied.status();
    for (const bool ok : *applied) round->figures.keys_pushed += ok ? 1 : 0;
    batch.clear();
    batch_bytes = 0;
    return absl::OkStatus();
  };
  for (const std::string& key : keys) {
    absl::StatusOr<engine::KeyRecord> record = engine_->GetRecord(key, /*with_value=*/true);
    if (!record.ok()) return record.status();
    if (!record->found) continue;  // a tombstone compaction dropped meanwhile
    VersionedRecord item = FromKeyRecord(key, *std::move(record));
    KeepExpiredAsValue(&item);
    const size_t cost = item.key.size() + item.value.size() + 64;
    if (!batch.empty() && batch_bytes + cost > budget_bytes) {
      if (absl::Status status = send(); !status.ok()) return status;
    }
    batch_bytes += cost;
    batch.push_back(std::move(item));
  }
  return send();
}

absl::Status AntiEntropy::FlushPulls(Round* round) {
  std::vector<std::string> keys;
  keys.swap(round->pull_keys);
  for (size_t begin = 0; begin < keys.size(); begin += options_.pull_batch_keys) {
    const size_t end = std::min(keys.size(), begin + options_.pull_batch_keys);
    const absl::Span<const std::string> some(keys.data() + begin, end - begin);
    absl::Status status = Pull(round, some);
    if (status.code() == absl::StatusCode::kResourceExhausted && some.size() > 1) {
      // The values did not fit in one answer: one key per request.
      for (size_t i = 0; i < some.size() && status.code() != absl::StatusCode::kCancelled; ++i) {
        status = Pull(round, some.subspan(i, 1));
        if (!status.ok()) return status;
      }
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status AntiEntropy::Pull(Round* round, absl::Span<const std::string> keys) {
  absl::StatusOr<std::string> frame = Call(round, ReadRecordsRequestFrame(keys, false));
  if (!frame.ok()) return frame.status();
  absl::StatusOr<std::vector<VersionedRecord>> records = ParseRecordsResult(*frame, keys);
  if (!records.ok()) return records.status();
  assert(records->size() == keys.size());  // one record per key asked, in order
  struct Pending {
    absl::Mutex mu;
    size_t remaining ABSL_GUARDED_BY(mu) = 0;
    size_t applied ABSL_GUARDED_BY(mu) = 0;
    absl::Status error ABSL_GUARDED_BY(mu);
  };
  auto pending = std::make_shared<Pending>();
  {
    absl::MutexLock lock(&pending->mu);
    pending->remaining = records->size();
  }
  for (VersionedRecord& record : *records) {
    KeepExpiredAsValue(&record);
    const bool counts = record.found;  // gone there meanwhile: nothing to apply
    // Inline, or on the engine's group-commit thread under fsync=always.
    ApplyLocally(engine_, record, [pending, counts](absl::StatusOr<engine::WriteResult> written) {
      const absl::Status& status = written.status();
      absl::MutexLock lock(&pending->mu);
      assert(pending->remaining > 0);  // each write calls back once
      if (!status.ok() && pending->error.ok()) pending->error = status;
      if (status.ok() && counts) pending->applied += 1;
      pending->remaining -= 1;
    });
  }
  {
    absl::MutexLock lock(&pending->mu);
    // Await evaluates the condition with pending->mu held, possibly on the
    // thread that releases it: the analysis cannot see that lock.
    pending->mu.Await(absl::Condition(
        +[](Pending* p) ABSL_NO_THREAD_SAFETY_ANALYSIS { return p->remaining == 0; },
        pending.get()));
    round->figures.keys_pulled += pending->applied;
    if (!pending->error.ok()) return pending->error;
  }
  // The peer answers at most a few MiB of values and the rest as unknown
  // (the first key is always answered): ask again for the keys after the
  // last one it knew. (Keys really gone are asked once more, then answered.)
  size_t answered = 0;
  for (size_t i = 0; i < records->size(); ++i) {
    if ((*records)[i].found) answered = i + 1;
  }
  if (answered > 0 && answered < keys.size()) return Pull(round, keys.subspan(answered));
  return absl::OkStatus();
}

}  // namespace logkv::server::cluster
