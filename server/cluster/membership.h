// Cluster membership by gossip (SWIM-like). Every interval the node pings a
// random live peer with a Gossip carrying its whole member list; the peer
// answers with its own; both merge (higher incarnation wins; at equal
// incarnation Dead > Suspect > Alive, Left is final). A peer that misses
// suspect_after_missed pings in a row becomes Suspect, and Dead after
// dead_after without an answer; a member that hears it is suspected bumps
// its incarnation and gossips Alive (refutation). A node joins by gossiping
// with any seed; it leaves by gossiping Left.
//
// The member list is kept (MembershipOptions::load_state / save_state: in
// logkvd, a node-local key of the engine, beside the node's data), written
// whenever it changes and read at Start, so a restarted node knows its
// cluster before anyone answers it. Its view is *confirmed* once, since Start, a majority
// of the members it knows (itself included, at least one other) have
// answered or gossiped to it directly; a node that expects no peers (no
// seeds, no remembered members) is confirmed at once. Until then the
// coordinator refuses operations that need a quorum (docs/cluster.md,
// "Restarts").
//
// Thread-safety: every public method may be called from any thread.
#ifndef LOGKV_SERVER_CLUSTER_MEMBERSHIP_H_
#define LOGKV_SERVER_CLUSTER_MEMBERSHIP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "protocol/frame.h"
#include "server/cluster/ring.h"

namespace logkv::server::cluster {

class PeerTransport;

enum class MemberState { kAlive = 0, kSuspect = 1, kDead = 2, kLeft = 3 };

struct Member {
  std::string node_id;
  std::string address;       // advertised binary-protocol host:port
  std::string http_address;  // advertised HTTP host:port, "" = none
  MemberState state = MemberState::kAlive;
  uint64_t incarnation = 0;
  int64_t joined_unix_ms = 0;
  int64_t last_seen_unix_ms = 0;  // last direct answer or gossip about it being alive
};

const char* MemberStateName(MemberState state);  // "alive", "suspect", "dead", "left"

// The merge rules, pure so they can be tested alone. Whether news about a
// member (same node id) replaces what is known: the higher incarnation wins;
// at equal incarnation the later state in Alive < Suspect < Dead < Left
// wins, so Left is final for that incarnation.
bool Supersedes(const Member& news, const Member& known);
// What this node must do when it hears about itself: the incarnation to
// take to refute a rumour that it is Suspect, Dead or Left (news'
// incarnation + 1), or 0 when there is nothing to refute (the news is Alive,
// or older than the node's own incarnation). leaving: the node is leaving,
// so a Left rumour is true and not refuted.
uint64_t RefutingIncarnation(const Member& self, const Member& news, bool leaving);

struct MembershipOptions {
  Member self;                       // this node (state Alive)
  std::vector<std::string> seeds;    // host:port of peers to join through
  absl::Duration gossip_interval = absl::Milliseconds(500);
  int suspect_after_missed = 3;      // pings without answer before Suspect
  absl::Duration dead_after = absl::Seconds(10);  // Suspect this long -> Dead
  absl::Duration ping_timeout = absl::Milliseconds(500);
  // Where the member list is kept: load_state at Start (NotFound: never
  // kept), save_state on every change (from the membership thread). Unset:
  // not kept (tests).
  std::function<absl::StatusOr<std::string>()> load_state;
  std::function<absl::Status(const std::string&)> save_state;

  // For a deterministic simulation (bench/cluster_sim.cc); unset in logkvd.
  // now_unix_ms: the clock (unset: the system's). send: how gossip goes out
  // (unset: through the PeerTransport; set: the transport may be null).
  // random_seed: the seed of the peer choices (0: random). manual_ticks:
  // Start runs no thread; the caller calls Tick once per gossip interval.
  std::function<int64_t()> now_unix_ms;
  std::function<void(const std::string& address, std::string request_frame,
                     absl::Duration timeout,
                     std::function<void(absl::StatusOr<std::string> response_frame)> done)>
      send;
  uint64_t random_seed = 0;
  bool manual_ticks = false;
};

class Membership {
 public:
  // transport must outlive the Membership (null with options.send).
  Membership(const MembershipOptions& options, PeerTransport* transport);
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;
  ~Membership();

  // Starts gossiping (and joining through the seeds) on a thread of its own.
  absl::Status Start();
  void Stop();

  // Every member known, this node included, sorted by node id.
  std::vector<Member> Members() const;
  // Members that own data: Alive or Suspect (not Dead, not Left).
  std::vector<Member> LiveMembers() const;
  // The ring of members that own data (Alive, Suspect and Dead ones: a
  // dead member keeps its place so its keys wait in hinted handoff rather
  // than move; Left members are removed). Rebuilt on every change.
  std::shared_ptr<const Ring> ring() const;
  // A member by node id; false when unknown.
  bool Find(const std::string& node_id, Member* member) const;
  // The same, only its addresses and state (what a coordinator asks of
  // every owner of every request, without a copy of the rest).
  bool FindAddresses(const std::string& node_id, std::string* address,
                     std::string* http_address, MemberState* state) const;
  bool IsAlive(const std::string& node_id) const;
  // A number that moves whenever what Find or FindAddresses answers may
  // have (it moves on every change of the member list, and more often),
  // read without a lock; no two Memberships of a process share one. An
  // answer read after the version was read is at least as new as it.
  uint64_t version() const;
  // This node as configured (its id, addresses and join time never change;
  // for its current state and incarnation use Find(self().node_id)).
  const Member& self() const;

  // Handles a peer's Gossip request: merges, and builds the GossipResult.
  void HandleGossip(const protocol::Gossip& gossip, flatbuffers::FlatBufferBuilder* builder,
                    uint64_t request_id);
  // Joins through address now (POST /join, /members/join); waits (bounded)
  // for the answer.
  absl::Status JoinThrough(const std::string& address, absl::Duration timeout);
  // The same without waiting: done is called once (on the transport's
  // thread, or at once on a usage error). A node that had left rejoins
  // with a higher incarnation.
  void JoinThroughAsync(const std::string& address, absl::Duration timeout,
                        std::function<void(absl::Status)> done);
  // Leave without stopping: this node becomes Left and gossips it to every
  // live peer; done is called once all of them answered or failed (each
  // bounded by ping_timeout). Gossip then pauses until a join.
  void LeaveAsync(std::function<void()> done);
  // True once this node has left (and not joined again).
  bool HasLeft() const;
  // Whether this node's view of the membership has been confirmed by a
  // majority of the members it knows since it started (see above).
  bool ViewConfirmed() const;

  // Called (from the membership thread) after every change of membership.
  void OnChange(std::function<void()> callback);

  // With MembershipOptions::manual_ticks: one turn of the membership
  // thread (the OnChange callbacks owed, then one gossip interval's work).
  void Tick();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_MEMBERSHIP_H_
