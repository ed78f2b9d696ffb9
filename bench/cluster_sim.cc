// cluster_sim: a deterministic in-process simulation of a large logkv cluster (docs/scale.md).
//
//   cluster_sim [--nodes=100,1000] [--seed=1] [--keys=1000000] [--ae_peers=20] [--seeded_max=200]
//
// What is real and what is modelled:
// - Membership: every node runs logkv's own Membership (server/cluster/membership.cc) with
//   MembershipOptions::manual_ticks, a simulated clock (now_unix_ms) and a simulated transport
//   (send): a gossip frame is handed to the target's Membership::HandleGossip after a one-way
//   delay, and its answer back after another, both as the real FlatBuffers frames, whose
//   bytes are counted. One event queue, one thread, seeded randomness: a run is repeatable.
//   Each node ticks every gossip interval (500 ms, logkvd's default) from a random phase.
// - Ring: logkv's placement (protocol/placement.h, 150 virtual nodes a member), the function
//   logkvd and the clients use; keys are uniform 64-bit hashes, N = 3 owners.
// - Anti-entropy: the real AntiEntropy round (server/cluster/anti_entropy.cc) between real
//   engines, each holding the keys the ring gives its node out of --keys keys (identical
//   records where two nodes share a key: the cluster is settled), for node 0 and a sample
//   of --ae_peers peers; a pass (a round with every live peer, what logkvd does every 30 s)
//   is extrapolated from the sample's mean.
// Not modelled: packet loss other than a stopped node, network partitions, CPU and queueing
// delays (a message takes 1-3 ms one way whatever the load), the control plane's Raft
// group (membership changes in logkvd are committed through it; docs/control-plane.md),
// and the data path (no client load runs).
//
// Prints Markdown tables: membership (bootstrap, steady state, failure, join), ring balance
// and a join's moved data, anti-entropy bytes per settled round and per pass.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "protocol/frame.h"
#include "server/cluster/anti_entropy.h"
#include "server/cluster/membership.h"
#include "server/cluster/replica.h"
#include "server/cluster/ring.h"
#include "server/log.h"

namespace logkv::bench {
namespace {

namespace fs = std::filesystem;
using server::cluster::AntiEntropy;
using server::cluster::AntiEntropyFigures;
using server::cluster::AntiEntropyOptions;
using server::cluster::Member;
using server::cluster::Membership;
using server::cluster::MembershipOptions;
using server::cluster::MemberState;
using server::cluster::PeerTransport;
using server::cluster::Ring;

constexpr int64_t kGossipIntervalMs = 500;
constexpr int64_t kStartUnixMs = 1'800'000'000'000;

std::string NodeId(size_t i) { return absl::StrFormat("node-%04d", i); }
std::string AddressOf(size_t i) { return absl::StrFormat("10.%d.%d.%d:7070", i / 65536, (i / 256) % 256, i % 256); }

// ---- Membership -------------------------------------------------------------------------

class Simulation {
 public:
  explicit Simulation(uint64_t seed) : random_(seed), seed_(seed) {}

  ~Simulation() {
    // Every answer still queued is delivered (ticks no longer rearm), so that
    // each Membership's Stop finds nothing in flight.
    stopping_ = true;
    RunUntil(INT64_MAX);
    for (auto& node : nodes_) node->membership->Stop();
  }

  int64_t now_ms() const { return now_ms_; }
  uint64_t messages() const { return messages_; }
  uint64_t bytes() const { return bytes_; }
  size_t size() const { return nodes_.size(); }

  // Adds and starts node i, joining through the seeds (none: it is alone);
  // with join_through, it starts alone and, at its first tick, joins
  // through that address (POST /members/join).
  void AddNode(std::vector<std::string> seeds, std::string join_through = "") {
    auto node = std::make_unique<Node>();
    const size_t index = nodes_.size();
    node->index = index;
    MembershipOptions options;
    options.self.node_id = NodeId(index);
    options.self.address = AddressOf(index);
    options.seeds = std::move(seeds);
    options.gossip_interval = absl::Milliseconds(kGossipIntervalMs);
    options.now_unix_ms = [this] { return kStartUnixMs + now_ms_; };
    options.send = [this](const std::string& address, std::string frame, absl::Duration timeout,
                          PeerTransport::Callback done) {
      Send(address, std::move(frame), timeout, std::move(done));
    };
    options.random_seed = seed_ * 1'000'003 + index + 1;
    options.manual_ticks = true;
    node->membership = std::make_unique<Membership>(options, nullptr);
    Node* raw = node.get();
    by_address_[options.self.address] = raw;
    nodes_.push_back(std::move(node));
    if (absl::Status status = raw->membership->Start(); !status.ok()) {
      std::fprintf(stderr, "cluster_sim: start: %s\n", status.ToString().c_str());
      std::exit(1);
    }
    const int64_t phase = static_cast<int64_t>(random_() % kGossipIntervalMs);
    if (!join_through.empty()) {
      At(now_ms_ + phase, [raw, join_through] {
        raw->membership->JoinThroughAsync(join_through, absl::Milliseconds(500),
                                          [](absl::Status) {});
      });
    }
    At(now_ms_ + phase, [this, raw] { TickNode(raw); });
  }

  // The node stops answering and ticking (a crash; its peers see only silence).
  void StopNode(size_t i) { nodes_[i]->up = false; }
  bool up(size_t i) const { return nodes_[i]->up; }
  Membership& membership(size_t i) { return *nodes_[i]->membership; }

  void RunUntil(int64_t t) {
    while (!queue_.empty() && queue_.top().at <= t) {
      Event event = queue_.top();
      queue_.pop();
      now_ms_ = event.at;
      event.run();
    }
    if (t != INT64_MAX) now_ms_ = t;
  }

 private:
  struct Node {
    size_t index = 0;
    bool up = true;
    std::unique_ptr<Membership> membership;
  };
  struct Event {
    int64_t at;
    uint64_t order;
    std::function<void()> run;
    bool operator>(const Event& other) const {
      return at != other.at ? at > other.at : order > other.order;
    }
  };

  void At(int64_t at, std::function<void()> run) {
    queue_.push(Event{at, next_order_++, std::move(run)});
  }

  void TickNode(Node* node) {
    if (stopping_ || !node->up) return;
    node->membership->Tick();
    At(now_ms_ + kGossipIntervalMs, [this, node] { TickNode(node); });
  }

  int64_t OneWayMs() { return 1 + static_cast<int64_t>(random_() % 3); }

  void Send(const std::string& address, std::string frame, absl::Duration timeout,
            PeerTransport::Callback done) {
    ++messages_;
    bytes_ += frame.size();
    auto it = by_address_.find(address);
    Node* target = it == by_address_.end() ? nullptr : it->second;
    const int64_t timeout_ms = absl::ToInt64Milliseconds(timeout);
    auto fail = [done] { done(absl::DeadlineExceededError("no answer (simulated)")); };
    if (target == nullptr || !target->up) {
      At(now_ms_ + timeout_ms, fail);
      return;
    }
    const int64_t sent = now_ms_;
    At(now_ms_ + OneWayMs(), [this, target, frame = std::move(frame), done, fail, sent,
                              timeout_ms] {
      if (!target->up) {
        At(sent + timeout_ms, fail);
        return;
      }
      absl::StatusOr<const protocol::Request*> request =
          protocol::VerifyRequest(frame, protocol::Limits{});
      if (!request.ok() || (*request)->operation_as_Gossip() == nullptr) {
        std::fprintf(stderr, "cluster_sim: not a gossip frame\n");
        std::exit(1);
      }
      flatbuffers::FlatBufferBuilder builder(1024);
      target->membership->HandleGossip(*(*request)->operation_as_Gossip(), &builder,
                                       (*request)->request_id());
      std::string answer(protocol::FrameOf(builder));
      bytes_ += answer.size();
      At(now_ms_ + OneWayMs(), [done, answer = std::move(answer)] { done(answer); });
    });
  }

  std::mt19937_64 random_;
  const uint64_t seed_;
  int64_t now_ms_ = 0;
  uint64_t next_order_ = 0;
  bool stopping_ = false;
  uint64_t messages_ = 0;
  uint64_t bytes_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> queue_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::map<std::string, Node*> by_address_;
};

// Whether every up node holds node `about` in `state` (and, for kAlive, knows all n).
bool AllSee(Simulation& sim, size_t about, MemberState state) {
  for (size_t i = 0; i < sim.size(); ++i) {
    if (!sim.up(i) || i == about) continue;
    Member member;
    if (!sim.membership(i).Find(NodeId(about), &member) || member.state != state) return false;
  }
  return true;
}

bool AnySees(Simulation& sim, size_t about, MemberState state) {
  for (size_t i = 0; i < sim.size(); ++i) {
    if (!sim.up(i) || i == about) continue;
    Member member;
    if (sim.membership(i).Find(NodeId(about), &member) && member.state == state) return true;
  }
  return false;
}

// Every up node knows every node as Alive.
bool Converged(Simulation& sim) {
  for (size_t i = 0; i < sim.size(); ++i) {
    if (!sim.up(i)) continue;
    const std::vector<Member> members = sim.membership(i).Members();
    if (members.size() != sim.size()) return false;
    for (const Member& member : members) {
      if (member.state != MemberState::kAlive) return false;
    }
  }
  return true;
}

struct MembershipFigures {
  double bootstrap_s = -1;
  uint64_t bootstrap_messages = 0;
  double bootstrap_mb = 0;
  double steady_msgs_per_node_s = 0;
  double steady_kb_per_node_s = 0;
  double first_suspect_s = -1;
  double all_dead_s = -1;
  double join_s = -1;
  double join_mb = 0;
};

// Waits (in simulated time) until done(), checking every check_ms, at most limit_ms;
// the time it took in seconds, or -1.
double WaitFor(Simulation& sim, int64_t check_ms, int64_t limit_ms,
               const std::function<bool()>& done) {
  const int64_t start = sim.now_ms();
  while (sim.now_ms() - start <= limit_ms) {
    if (done()) return static_cast<double>(sim.now_ms() - start) / 1000.0;
    sim.RunUntil(sim.now_ms() + check_ms);
  }
  return -1;
}

MembershipFigures RunMembership(size_t n, uint64_t seed, bool seeded) {
  MembershipFigures figures;
  Simulation sim(seed);
  // Bootstrap: node 0 alone, every other node started at the same moment,
  // either with node 0 as its seed (seeded) or alone, joining through node 0
  // at its first tick.
  sim.AddNode({});
  for (size_t i = 1; i < n; ++i) {
    if (seeded) {
      sim.AddNode({AddressOf(0)});
    } else {
      sim.AddNode({}, AddressOf(0));
    }
  }
  figures.bootstrap_s = WaitFor(sim, 250, 600'000, [&] { return Converged(sim); });
  figures.bootstrap_messages = sim.messages();
  figures.bootstrap_mb = static_cast<double>(sim.bytes()) / 1e6;
  std::fprintf(stderr, "cluster_sim: %zu nodes (%s) converged at %.1f s (simulated)\n", n,
               seeded ? "seeds" : "join", figures.bootstrap_s);

  // Steady state: 20 s of gossip once settled (after 10 s more).
  sim.RunUntil(sim.now_ms() + 10'000);
  const uint64_t messages = sim.messages();
  const uint64_t bytes = sim.bytes();
  sim.RunUntil(sim.now_ms() + 20'000);
  figures.steady_msgs_per_node_s =
      static_cast<double>(sim.messages() - messages) / static_cast<double>(n) / 20.0;
  figures.steady_kb_per_node_s =
      static_cast<double>(sim.bytes() - bytes) / 1e3 / static_cast<double>(n) / 20.0;

  // Failure: the last node stops; how long until one node suspects it and
  // until every live node holds it Dead.
  const size_t victim = n - 1;
  sim.StopNode(victim);
  const int64_t stopped = sim.now_ms();
  figures.first_suspect_s = WaitFor(sim, 100, 3'600'000, [&] {
    return AnySees(sim, victim, MemberState::kSuspect) || AnySees(sim, victim, MemberState::kDead);
  });
  if (figures.first_suspect_s >= 0) {
    WaitFor(sim, 100, 3'600'000, [&] { return AllSee(sim, victim, MemberState::kDead); });
    figures.all_dead_s = static_cast<double>(sim.now_ms() - stopped) / 1000.0;
  }
  std::fprintf(stderr, "cluster_sim: %zu nodes: failure seen dead by all at %.1f s\n", n,
               figures.all_dead_s);

  // Join: a new node through node 0; until every live node holds it Alive.
  const uint64_t join_bytes = sim.bytes();
  sim.AddNode({AddressOf(0)});
  const size_t joined = sim.size() - 1;
  figures.join_s = WaitFor(sim, 100, 600'000,
                           [&] { return AllSee(sim, joined, MemberState::kAlive); });
  figures.join_mb = static_cast<double>(sim.bytes() - join_bytes) / 1e6;
  return figures;
}

// ---- Ring -----------------------------------------------------------------------------

struct RingFigures {
  double primary_max_mean = 0, primary_min_mean = 0;
  double replica_max_mean = 0, replica_min_mean = 0;
  double sample_noise = 0;  // one standard deviation of a node's replica count, over its mean
  double join_new_owner_fraction = 0;  // keys that gain the new node as an owner
  double join_moved_fraction = 0;      // (key, owner) pairs that changed, over keys x 3
  double join_ideal_fraction = 0;      // 3 / (n + 1): what the new node must hold
  bool join_moves_only_to_new = true;  // every changed owner set gained the new node
};

RingFigures RunRing(size_t n, uint64_t seed, uint64_t samples) {
  RingFigures figures;
  std::vector<std::string> members;
  for (size_t i = 0; i < n; ++i) members.push_back(NodeId(i));
  const Ring ring(members);
  std::vector<std::string> grown_members = members;
  grown_members.push_back(NodeId(n));
  const Ring grown(grown_members);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i <= n; ++i) index[NodeId(i)] = i;
  std::vector<uint64_t> primary(n, 0), replica(n, 0);
  uint64_t new_owner = 0, moved = 0;
  std::mt19937_64 random(seed);
  for (uint64_t k = 0; k < samples; ++k) {
    const uint64_t hash = random();
    const std::vector<std::string> owners = ring.PreferenceListOfHash(hash, 3);
    ++primary[index[owners[0]]];
    for (const std::string& owner : owners) ++replica[index[owner]];
    const std::vector<std::string> after = grown.PreferenceListOfHash(hash, 3);
    size_t changed = 0;
    bool gained_new = false;
    for (const std::string& owner : after) {
      if (std::find(owners.begin(), owners.end(), owner) == owners.end()) {
        ++changed;
        if (owner == NodeId(n)) gained_new = true;
      }
    }
    if (gained_new) ++new_owner;
    if (changed > 0 && !gained_new) figures.join_moves_only_to_new = false;
    moved += changed;
  }
  auto spread = [n](const std::vector<uint64_t>& counts, double* max_mean, double* min_mean) {
    uint64_t total = 0, most = 0, least = UINT64_MAX;
    for (const uint64_t c : counts) {
      total += c;
      most = std::max(most, c);
      least = std::min(least, c);
    }
    const double mean = static_cast<double>(total) / static_cast<double>(n);
    *max_mean = static_cast<double>(most) / mean;
    *min_mean = static_cast<double>(least) / mean;
    return mean;
  };
  spread(primary, &figures.primary_max_mean, &figures.primary_min_mean);
  const double mean = spread(replica, &figures.replica_max_mean, &figures.replica_min_mean);
  figures.sample_noise = 1.0 / std::sqrt(mean);
  figures.join_new_owner_fraction = static_cast<double>(new_owner) / static_cast<double>(samples);
  figures.join_moved_fraction = static_cast<double>(moved) / static_cast<double>(samples * 3);
  figures.join_ideal_fraction = 3.0 / static_cast<double>(n + 1);
  return figures;
}

// ---- Anti-entropy ---------------------------------------------------------------------

struct Store {
  std::string dir;
  std::unique_ptr<engine::Engine> engine;
  std::string address;
};

std::unique_ptr<Store> OpenStore(const std::string& name) {
  auto store = std::make_unique<Store>();
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrFormat("%s/cluster_sim.%s.XXXXXX", tmp ? tmp : "/tmp", name);
  if (mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "cluster_sim: mkdtemp failed\n");
    std::exit(1);
  }
  store->dir = pattern;
  engine::Options options;
  options.data_dir = store->dir;
  options.shard_count = 1;
  options.fsync = engine::FsyncPolicy::kNever;
  options.background_threads = false;
  options.segment_bytes = 8u << 20;
  options.log = [](engine::LogLevel, absl::string_view) {};
  auto opened = engine::Engine::Open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "cluster_sim: open: %s\n", opened.status().ToString().c_str());
    std::exit(1);
  }
  store->engine = *std::move(opened);
  return store;
}

void CloseStore(Store* store) {
  (void)store->engine->Close();
  store->engine.reset();
  std::error_code ignored;
  fs::remove_all(store->dir, ignored);
}

struct AntiEntropyFiguresOut {
  double keys_per_node = 0;
  double sharing_peers = 0;      // of the sample, the fraction that shares a key with node 0
  double bytes_sharing = 0;      // mean bytes of a settled round with a peer sharing keys
  double bytes_disjoint = 0;     // ... with a peer sharing none
  double bytes_per_pass = 0;     // node 0's rounds with every peer, extrapolated
  double identical_bytes = 0;    // a settled round between two nodes holding the same keys
  double keys_listed_per_round = 0;  // mean keys compared (both sides merged) per round
};

AntiEntropyFiguresOut RunAntiEntropy(size_t n, uint64_t keys, size_t sample, uint64_t seed) {
  AntiEntropyFiguresOut out;
  std::vector<std::string> members;
  for (size_t i = 0; i < n; ++i) members.push_back(NodeId(i));
  auto ring = std::make_shared<const Ring>(members);
  std::mt19937_64 random(seed);
  std::vector<size_t> peers;  // a sample of node 0's peers
  for (size_t i = 1; i < n; ++i) peers.push_back(i);
  std::shuffle(peers.begin(), peers.end(), random);
  if (peers.size() > sample) peers.resize(sample);
  std::map<std::string, std::unique_ptr<Store>> stores;  // by node id: node 0 and the sample
  stores[NodeId(0)] = OpenStore("n0");
  for (const size_t peer : peers) stores[NodeId(peer)] = OpenStore(NodeId(peer));
  for (auto& [id, store] : stores) store->address = id + ":7070";
  // Every key on each of its owners in the sample, with one timestamp: settled.
  const std::string value(100, 'v');
  uint64_t node0_keys = 0;
  for (uint64_t k = 0; k < keys; ++k) {
    const std::string key = absl::StrFormat("key-%012d", k);
    for (const std::string& owner : ring->PreferenceList(key, 3)) {
      auto it = stores.find(owner);
      if (it == stores.end()) continue;
      engine::WriteOptions options;
      options.timestamp = (k + 1) << 16;
      if (!it->second->engine->Put(key, value, options).ok()) std::exit(1);
      if (owner == NodeId(0)) ++node0_keys;
    }
  }
  out.keys_per_node = static_cast<double>(node0_keys);

  // Requests go to the named node's handlers in-process.
  std::map<std::string, engine::Engine*> by_address;
  for (auto& [id, store] : stores) by_address[store->address] = store->engine.get();
  server::cluster::PeerSendFunction send = [&](const std::string& address, std::string frame,
                                               absl::Duration, PeerTransport::Callback done) {
    engine::Engine* engine = by_address.at(address);
    absl::StatusOr<const protocol::Request*> request =
        protocol::VerifyRequest(frame, protocol::Limits{});
    if (!request.ok()) return done(request.status());
    flatbuffers::FlatBufferBuilder builder(1024);
    switch ((*request)->operation_type()) {
      case protocol::Operation::MerkleHashes:
        server::cluster::HandleMerkleHashes(engine, **request, &builder);
        break;
      case protocol::Operation::MerkleLeaf:
        server::cluster::HandleMerkleLeaf(engine, **request, 64u << 20, &builder);
        break;
      case protocol::Operation::ReadRecords:
        server::cluster::HandleReadRecords(engine, **request, &builder);
        break;
      default:
        return done(absl::InvalidArgumentError("not simulated"));
    }
    done(std::string(protocol::FrameOf(builder)));
  };
  std::vector<Member> live;
  for (auto& [id, store] : stores) {
    Member member;
    member.node_id = id;
    member.address = store->address;
    live.push_back(member);
  }
  AntiEntropyOptions options;
  options.bytes_per_second = 0;
  options.interval = absl::Hours(1);
  options.initial_delay = absl::Hours(1);
  options.push = false;  // as logkvd runs it
  AntiEntropy ae(
      stores[NodeId(0)]->engine.get(), send, [ring] { return ring; }, [live] { return live; },
      NodeId(0), nullptr, options);
  double sharing_bytes = 0, disjoint_bytes = 0, listed = 0;
  size_t sharing = 0, disjoint = 0;
  for (const size_t peer : peers) {
    absl::StatusOr<AntiEntropyFigures> round = ae.RunOnce(NodeId(peer));
    if (!round.ok()) {
      std::fprintf(stderr, "cluster_sim: round: %s\n", round.status().ToString().c_str());
      std::exit(1);
    }
    if (round->keys_pulled != 0) {
      std::fprintf(stderr, "cluster_sim: a settled round pulled %" PRIu64 " keys\n",
                   round->keys_pulled);
      std::exit(1);
    }
    const double bytes = static_cast<double>(round->bytes_sent + round->bytes_received);
    listed += static_cast<double>(round->keys_compared);
    // Whether node 0 and this peer co-own any key: from the ring, over the sample's keys.
    bool shares = false;
    for (uint64_t k = 0; k < keys && !shares; k += 7) {
      const std::vector<std::string> owners =
          ring->PreferenceList(absl::StrFormat("key-%012d", k), 3);
      shares = std::find(owners.begin(), owners.end(), NodeId(0)) != owners.end() &&
               std::find(owners.begin(), owners.end(), NodeId(peer)) != owners.end();
    }
    if (shares) {
      sharing_bytes += bytes;
      ++sharing;
    } else {
      disjoint_bytes += bytes;
      ++disjoint;
    }
  }
  out.sharing_peers = static_cast<double>(sharing) / static_cast<double>(peers.size());
  out.bytes_sharing = sharing > 0 ? sharing_bytes / static_cast<double>(sharing) : 0;
  out.bytes_disjoint = disjoint > 0 ? disjoint_bytes / static_cast<double>(disjoint) : 0;
  out.keys_listed_per_round = listed / static_cast<double>(peers.size());
  out.bytes_per_pass = (sharing_bytes + disjoint_bytes) / static_cast<double>(peers.size()) *
                       static_cast<double>(n - 1);

  // The reference: two nodes holding the same keys (what every pair is in a cluster of
  // N = 3 nodes): a settled round exchanges the partitions' roots and stops.
  {
    auto a = OpenStore("same-a");
    auto b = OpenStore("same-b");
    a->address = "same-a:7070";
    b->address = "same-b:7070";
    for (uint64_t k = 0; k < node0_keys; ++k) {
      engine::WriteOptions write;
      write.timestamp = (k + 1) << 16;
      const std::string key = absl::StrFormat("key-%012d", k);
      if (!a->engine->Put(key, value, write).ok() || !b->engine->Put(key, value, write).ok()) {
        std::exit(1);
      }
    }
    by_address[b->address] = b->engine.get();
    Member peer;
    peer.node_id = "same-b";
    peer.address = b->address;
    AntiEntropy same(
        a->engine.get(), send, [] { return nullptr; }, [peer] { return std::vector<Member>{peer}; },
        "same-a", nullptr, options);
    absl::StatusOr<AntiEntropyFigures> round = same.RunOnce("same-b");
    if (!round.ok()) std::exit(1);
    out.identical_bytes = static_cast<double>(round->bytes_sent + round->bytes_received);
    CloseStore(a.get());
    CloseStore(b.get());
  }
  for (auto& [id, store] : stores) CloseStore(store.get());
  return out;
}

int Main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  server::SetLogLevel(server::Level::kError);
  std::vector<size_t> sizes = {100, 1000};
  uint64_t seed = 1;
  uint64_t keys = 1'000'000;
  size_t ae_peers = 20;
  bool skip_membership = false;
  size_t seeded_max = 200;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--nodes=", 0) == 0) {
      sizes.clear();
      for (absl::string_view part : absl::StrSplit(arg.substr(8), ',')) {
        size_t size;
        if (!absl::SimpleAtoi(part, &size) || size < 4) {
          std::fprintf(stderr, "cluster_sim: bad node count '%s' (at least 4)\n",
                       std::string(part).c_str());
          return 2;
        }
        sizes.push_back(size);
      }
    } else if (arg.rfind("--seed=", 0) == 0 && absl::SimpleAtoi(arg.substr(7), &seed)) {
    } else if (arg.rfind("--keys=", 0) == 0 && absl::SimpleAtoi(arg.substr(7), &keys)) {
    } else if (arg.rfind("--ae_peers=", 0) == 0 && absl::SimpleAtoi(arg.substr(11), &ae_peers)) {
    } else if (arg.rfind("--seeded_max=", 0) == 0 &&
               absl::SimpleAtoi(arg.substr(13), &seeded_max)) {
    } else if (arg == "--skip_membership") {
      skip_membership = true;
    } else {
      std::fprintf(stderr,
                   "usage: cluster_sim [--nodes=N,N] [--seed=N] [--keys=N] [--ae_peers=N] "
                   "[--seeded_max=N] [--skip_membership]\n");
      return 2;
    }
  }

  if (!skip_membership) {
    std::printf("Membership (gossip every %" PRId64 " ms, logkvd's defaults otherwise; seed %" PRIu64
                "):\n\n",
                kGossipIntervalMs, seed);
    std::printf("| nodes | start | bootstrap converged s | bootstrap messages | bootstrap MB | "
                "steady msgs/node/s | steady KB/node/s | first suspect s | all see dead s | "
                "join seen by all s | join MB |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const size_t n : sizes) {
      // A start with seeds makes every node that learns many members before a
      // majority of them answered it ask all of them (the view's confirmation,
      // docs/cluster.md): about n^2 gossips of n members, too many to simulate
      // beyond --seeded_max nodes.
      for (const bool seeded : {false, true}) {
        if (seeded && n > seeded_max) continue;
        const MembershipFigures f = RunMembership(n, seed, seeded);
        std::printf("| %zu | %s | %.1f | %" PRIu64
                    " | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
                    n, seeded ? "seeds" : "join", f.bootstrap_s, f.bootstrap_messages,
                    f.bootstrap_mb, f.steady_msgs_per_node_s, f.steady_kb_per_node_s,
                    f.first_suspect_s, f.all_dead_s, f.join_s, f.join_mb);
        std::fflush(stdout);
      }
    }
  }

  std::printf("\nRing (%d virtual nodes a member, N = 3, 3,000,000 sampled keys):\n\n",
              server::cluster::kVirtualNodesPerMember);
  std::printf("| nodes | primary max/mean | primary min/mean | replicas max/mean | "
              "replicas min/mean | sampling noise (1 sd) | join: keys gaining the new node | "
              "join: owner slots moved | ideal 3/(n+1) | moves only to the new node |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const size_t n : sizes) {
    const RingFigures f = RunRing(n, seed, 3'000'000);
    std::printf("| %zu | %.3f | %.3f | %.3f | %.3f | %.3f | %.4f | %.4f | %.4f | %s |\n", n,
                f.primary_max_mean, f.primary_min_mean, f.replica_max_mean, f.replica_min_mean,
                f.sample_noise, f.join_new_owner_fraction, f.join_moved_fraction,
                f.join_ideal_fraction, f.join_moves_only_to_new ? "yes" : "no");
    std::fflush(stdout);
  }

  std::printf("\nAnti-entropy, settled cluster of %" PRIu64
              " keys (N = 3), node 0 against %zu sampled peers:\n\n",
              keys, ae_peers);
  std::printf("| nodes | keys on node 0 | peers sharing keys | bytes/round, sharing | "
              "bytes/round, disjoint | keys listed/round | bytes/pass (all peers) | "
              "bytes/round, identical copies |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const size_t n : sizes) {
    const AntiEntropyFiguresOut f = RunAntiEntropy(n, keys, ae_peers, seed);
    std::printf("| %zu | %.0f | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", n, f.keys_per_node,
                f.sharing_peers, f.bytes_sharing, f.bytes_disjoint, f.keys_listed_per_round,
                f.bytes_per_pass, f.identical_bytes);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace logkv::bench

int main(int argc, char** argv) { return logkv::bench::Main(argc, argv); }
