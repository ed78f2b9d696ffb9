// The control plane's state machine replicated by libraft, in libraft's
// deterministic in-memory fixture (raft/fixture.h): simulated time, network
// and disk, no threads. Every server's FSM is a RaftFsm over its own
// ControlState; the tests drive elections, partitions, kills, configuration
// changes and snapshot installs, and check that every server that should
// have applied the commands holds the same state. Every stepping loop is
// bounded in simulated milliseconds.
extern "C" {
#include <raft.h>
#include <raft/fixture.h>
}

#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/control/control_state.h"
#include "server/control/raft_fsm.h"

namespace logkv::server::control {
namespace {

// Bounds, in simulated milliseconds (the fixture's election timeout is 1000).
constexpr unsigned kElectionBoundMs = 10'000;
constexpr unsigned kCommitBoundMs = 5'000;
constexpr unsigned kCatchUpBoundMs = 30'000;

Member NewMember(uint64_t raft_id) {
  Member member;
  member.raft_id = raft_id;
  member.node_id = absl::StrCat("node-", raft_id);
  member.binary_address = absl::StrCat("10.0.0.", raft_id, ":7000");
  member.http_address = absl::StrCat("10.0.0.", raft_id, ":8000");
  return member;
}

// A command in flight: raft_apply's request and what its callback said.
struct Proposal {
  struct raft_apply req {};
  bool done = false;
  int status = -1;  // raft's: 0 = committed and applied
  absl::StatusOr<uint64_t> result = absl::UnknownError("not applied");
};

void OnApplied(struct raft_apply* req, int status, void* result) {
  auto* proposal = static_cast<Proposal*>(req->data);
  proposal->done = true;
  proposal->status = status;
  if (status == 0) proposal->result = RaftFsm::ResultOf(result);
}

// A configuration change in flight.
struct Change {
  struct raft_change req {};
  bool done = false;
  int status = -1;
};

void OnChanged(struct raft_change* req, int status) {
  auto* change = static_cast<Change*>(req->data);
  change->done = true;
  change->status = status;
}

// N servers, each a ControlState behind a RaftFsm, bootstrapped as voters
// and started.
class ControlCluster {
 public:
  explicit ControlCluster(unsigned n) {
    fixture_ = std::make_unique<raft_fixture>();
    EXPECT_EQ(raft_fixture_initialize(fixture_.get()), 0);
    for (unsigned i = 0; i < n; ++i) Grow();
    struct raft_configuration configuration;
    EXPECT_EQ(raft_fixture_configuration(fixture_.get(), n, &configuration), 0);
    EXPECT_EQ(raft_fixture_bootstrap(fixture_.get(), &configuration), 0);
    raft_configuration_close(&configuration);
    EXPECT_EQ(raft_fixture_start(fixture_.get()), 0);
  }
  ~ControlCluster() {
    // Closing fails whatever is still pending (its callbacks run now, while
    // the proposals and FSMs they touch are alive).
    raft_fixture_close(fixture_.get());
  }

  // Adds a pristine server (not in the configuration, not started).
  unsigned Grow() {
    states_.push_back(std::make_unique<ControlState>());
    fsms_.push_back(std::make_unique<RaftFsm>(states_.back().get()));
    EXPECT_EQ(raft_fixture_grow(fixture_.get(), fsms_.back()->fsm()), 0);
    return n() - 1;
  }

  raft_fixture* f() { return fixture_.get(); }
  unsigned n() { return raft_fixture_n(fixture_.get()); }
  struct raft* raft(unsigned i) { return raft_fixture_get(fixture_.get(), i); }
  ControlState& state(unsigned i) { return *states_[i]; }
  RaftFsm& fsm(unsigned i) { return *fsms_[i]; }
  // The live server in leader state with the highest term, or n(). Not the
  // fixture's own leader_index, which wants every live server that is not
  // saturated to acknowledge the leader and counts a removed server that
  // still lists itself: it never settles once the configuration has changed
  // under a dead server.
  static unsigned LeaderOf(raft_fixture* f) {
    unsigned leader = raft_fixture_n(f);
    raft_term term = 0;
    for (unsigned i = 0; i < raft_fixture_n(f); ++i) {
      struct raft* r = raft_fixture_get(f, i);
      if (raft_fixture_alive(f, i) && raft_state(r) == RAFT_LEADER && r->current_term > term) {
        leader = i;
        term = r->current_term;
      }
    }
    return leader;
  }
  unsigned leader() { return LeaderOf(fixture_.get()); }
  bool has_leader() { return leader() < n(); }

  // Steps until a server other than `old` leads (a cut-off leader stays in
  // leader state, at its old term, until it notices).
  bool StepUntilNewLeader(unsigned old) {
    struct Target {
      unsigned old;
    } target{old};
    return raft_fixture_step_until(
        fixture_.get(),
        [](raft_fixture* f, void* arg) {
          unsigned leader = LeaderOf(f);
          return leader < raft_fixture_n(f) && leader != static_cast<Target*>(arg)->old;
        },
        &target, kElectionBoundMs);
  }

  // Proposes a command on server i without waiting.
  Proposal* Propose(unsigned i, const std::string& command, int* rv = nullptr) {
    proposals_.push_back(std::make_unique<Proposal>());
    Proposal* proposal = proposals_.back().get();
    proposal->req.data = proposal;
    int code = ProposeCommand(raft(i), &proposal->req, command, &OnApplied);
    if (rv != nullptr) *rv = code;
    return proposal;
  }

  // Steps until the proposal's callback ran.
  bool StepUntilDone(Proposal* proposal, unsigned max_ms = kCommitBoundMs) {
    return raft_fixture_step_until(
        fixture_.get(), [](raft_fixture*, void* arg) { return static_cast<Proposal*>(arg)->done; },
        proposal, max_ms);
  }
  bool StepUntilDone(Change* change, unsigned max_ms = kCatchUpBoundMs) {
    return raft_fixture_step_until(
        fixture_.get(), [](raft_fixture*, void* arg) { return static_cast<Change*>(arg)->done; },
        change, max_ms);
  }

  // Proposes on the current leader and waits for the result.
  absl::StatusOr<uint64_t> Submit(const std::string& command) {
    if (!has_leader()) return absl::UnavailableError("no leader");
    int rv = 0;
    Proposal* proposal = Propose(leader(), command, &rv);
    if (rv != 0) return absl::InternalError(absl::StrCat("raft_apply: ", raft_strerror(rv)));
    if (!StepUntilDone(proposal)) return absl::DeadlineExceededError("not committed in time");
    if (proposal->status != 0) {
      return absl::AbortedError(absl::StrCat("raft: ", raft_strerror(proposal->status)));
    }
    return proposal->result;
  }

  // Steps until each of `servers` has applied at least `index`.
  bool StepUntilApplied(std::vector<unsigned> servers, raft_index index,
                        unsigned max_ms = kCatchUpBoundMs) {
    struct Target {
      ControlCluster* cluster;
      std::vector<unsigned> servers;
      raft_index index;
    } target{this, std::move(servers), index};
    return raft_fixture_step_until(
        fixture_.get(),
        [](raft_fixture*, void* arg) {
          auto* t = static_cast<Target*>(arg);
          for (unsigned i : t->servers) {
            if (raft_last_applied(t->cluster->raft(i)) < t->index) return false;
          }
          return true;
        },
        &target, max_ms);
  }

  // Steps until `servers` applied all the leader has, and checks they hold
  // the leader's state, byte for byte.
  void ExpectConverged(const std::vector<unsigned>& servers) {
    ASSERT_TRUE(has_leader());
    unsigned l = leader();
    raft_index index = raft_last_applied(raft(l));
    ASSERT_TRUE(StepUntilApplied(servers, index)) << "not applied " << index;
    const std::string expected = state(l).Snapshot();
    for (unsigned i : servers) {
      EXPECT_EQ(state(i).Snapshot(), expected) << "server " << i;
      EXPECT_EQ(state(i).epoch(), state(l).epoch()) << "server " << i;
    }
  }

  std::vector<unsigned> All() {
    std::vector<unsigned> all;
    for (unsigned i = 0; i < n(); ++i) all.push_back(i);
    return all;
  }

  // Cuts server i off from every other server, both ways.
  void Isolate(unsigned i) {
    for (unsigned j = 0; j < n(); ++j) {
      if (j == i) continue;
      raft_fixture_disconnect(fixture_.get(), i, j);
      raft_fixture_disconnect(fixture_.get(), j, i);
    }
  }
  void Heal(unsigned i) {
    for (unsigned j = 0; j < n(); ++j) {
      if (j == i) continue;
      raft_fixture_reconnect(fixture_.get(), i, j);
      raft_fixture_reconnect(fixture_.get(), j, i);
    }
  }

  Change* NewChange() {
    changes_.push_back(std::make_unique<Change>());
    changes_.back()->req.data = changes_.back().get();
    return changes_.back().get();
  }

 private:
  // Declared first, destroyed last: the fixture's servers point at them.
  std::vector<std::unique_ptr<ControlState>> states_;
  std::vector<std::unique_ptr<RaftFsm>> fsms_;
  std::deque<std::unique_ptr<Proposal>> proposals_;
  std::deque<std::unique_ptr<Change>> changes_;
  std::unique_ptr<raft_fixture> fixture_;
};

// Adds and activates members 1..n, checking each new epoch.
void FormCluster(ControlCluster& cluster, uint64_t n) {
  uint64_t epoch = cluster.state(cluster.leader()).epoch();
  for (uint64_t id = 1; id <= n; ++id) {
    absl::StatusOr<uint64_t> added = cluster.Submit(EncodeAddMember(NewMember(id)));
    ASSERT_TRUE(added.ok()) << added.status();
    EXPECT_EQ(*added, ++epoch);
    absl::StatusOr<uint64_t> activated =
        cluster.Submit(EncodeActivateMember(NewMember(id).node_id));
    ASSERT_TRUE(activated.ok()) << activated.status();
    EXPECT_EQ(*activated, ++epoch);
  }
}

TEST(ControlFixtureTest, ThreeServersApplyTheSameCommands) {
  ControlCluster cluster(3);
  raft_fixture_elect(cluster.f(), 0);
  ASSERT_EQ(cluster.leader(), 0u);

  FormCluster(cluster, 3);
  EXPECT_EQ(*cluster.Submit(EncodeSetReplicas(3)), 7u);
  // A refusal is a result too, the same on every server, and no new epoch.
  absl::StatusOr<uint64_t> duplicate = cluster.Submit(EncodeAddMember(NewMember(2)));
  EXPECT_EQ(duplicate.status().code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<uint64_t> malformed = cluster.Submit("garbage");
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument);

  cluster.ExpectConverged(cluster.All());
  for (unsigned i = 0; i < 3; ++i) {
    EXPECT_EQ(cluster.state(i).epoch(), 7u);
    EXPECT_EQ(cluster.state(i).Current().replicas, 3u);
    EXPECT_EQ(cluster.state(i).Current().CountInState(MemberState::kActive), 3u);
    EXPECT_EQ(cluster.fsm(i).commands_applied(), 9u);
  }

  // A follower does not accept proposals.
  int rv = 0;
  cluster.Propose(1, EncodeSetReplicas(1), &rv);
  EXPECT_EQ(rv, RAFT_NOTLEADER);
}

TEST(ControlFixtureTest, FiveServersSurviveALeaderPartition) {
  ControlCluster cluster(5);
  raft_fixture_elect(cluster.f(), 0);
  ASSERT_EQ(cluster.leader(), 0u);
  FormCluster(cluster, 5);
  cluster.ExpectConverged(cluster.All());
  const uint64_t epoch = cluster.state(0).epoch();

  // The old leader, cut off, accepts a proposal it can never commit.
  cluster.Isolate(0);
  int rv = 0;
  Proposal* stranded = cluster.Propose(0, EncodeAddMember(NewMember(99)), &rv);
  ASSERT_EQ(rv, 0);

  // The other four elect a leader among them and go on.
  ASSERT_TRUE(cluster.StepUntilNewLeader(0));
  const unsigned new_leader = cluster.leader();
  ASSERT_NE(new_leader, 0u);
  EXPECT_EQ(*cluster.Submit(EncodeSetReplicas(3)), epoch + 1);
  EXPECT_EQ(*cluster.Submit(EncodeAddMember(NewMember(6))), epoch + 2);
  cluster.ExpectConverged({1, 2, 3, 4});
  EXPECT_EQ(cluster.state(0).epoch(), epoch);  // it saw none of it

  // Healed, the old leader steps down, drops its stranded entry and catches
  // up: everyone holds the majority's history, without the stranded member.
  cluster.Heal(0);
  ASSERT_TRUE(cluster.StepUntilDone(stranded, kCatchUpBoundMs));
  EXPECT_NE(stranded->status, 0);
  EXPECT_EQ(*cluster.Submit(EncodeActivateMember(NewMember(6).node_id)), epoch + 3);
  cluster.ExpectConverged(cluster.All());
  for (unsigned i = 0; i < 5; ++i) {
    EXPECT_EQ(cluster.state(i).Current().Find(NewMember(99).node_id), nullptr) << i;
    EXPECT_EQ(cluster.state(i).epoch(), epoch + 3) << i;
  }
}

TEST(ControlFixtureTest, KilledFollowerCatchesUpWhenRevived) {
  ControlCluster cluster(3);
  raft_fixture_elect(cluster.f(), 0);
  FormCluster(cluster, 2);
  cluster.ExpectConverged(cluster.All());

  raft_fixture_kill(cluster.f(), 2);
  const raft_index before = raft_last_applied(cluster.raft(2));
  // Two of three are a majority: commands still commit.
  ASSERT_TRUE(cluster.Submit(EncodeAddMember(NewMember(3))).ok());
  ASSERT_TRUE(cluster.Submit(EncodeActivateMember(NewMember(3).node_id)).ok());
  ASSERT_TRUE(cluster.Submit(EncodeSetReplicas(3)).ok());
  cluster.ExpectConverged({0, 1});
  EXPECT_EQ(raft_last_applied(cluster.raft(2)), before);
  EXPECT_LT(cluster.state(2).epoch(), cluster.state(0).epoch());

  raft_fixture_revive(cluster.f(), 2);
  cluster.ExpectConverged(cluster.All());
  EXPECT_EQ(cluster.state(2).Current().replicas, 3u);

  // With the leader killed, the two others elect one and go on.
  raft_fixture_kill(cluster.f(), 0);
  ASSERT_TRUE(cluster.StepUntilNewLeader(0));
  ASSERT_NE(cluster.leader(), 0u);
  ASSERT_TRUE(cluster.Submit(EncodeAddMember(NewMember(4))).ok());
  cluster.ExpectConverged({1, 2});
  raft_fixture_revive(cluster.f(), 0);
  cluster.ExpectConverged(cluster.All());
}

// The configuration of the Raft group itself: a new server joins as a spare,
// is promoted to voter once it caught up, and another server is removed.
TEST(ControlFixtureTest, ServersAreAddedPromotedAndRemoved) {
  ControlCluster cluster(3);
  raft_fixture_elect(cluster.f(), 0);
  FormCluster(cluster, 3);

  // The node asks to join: its membership in the cluster's metadata...
  ASSERT_TRUE(cluster.Submit(EncodeAddMember(NewMember(4))).ok());
  // ...and its server in the Raft group.
  const unsigned fourth = cluster.Grow();
  struct raft* newcomer = cluster.raft(fourth);
  ASSERT_EQ(raft_start(newcomer), 0);
  Change* add = cluster.NewChange();
  ASSERT_EQ(raft_add(cluster.raft(0), &add->req, newcomer->id, newcomer->address, &OnChanged), 0);
  ASSERT_TRUE(cluster.StepUntilDone(add));
  ASSERT_EQ(add->status, 0);

  Change* promote = cluster.NewChange();
  ASSERT_EQ(raft_assign(cluster.raft(0), &promote->req, newcomer->id, RAFT_VOTER, &OnChanged), 0);
  ASSERT_TRUE(cluster.StepUntilDone(promote));
  ASSERT_EQ(promote->status, 0) << raft_errmsg(cluster.raft(0));
  bool voter = false;
  const struct raft_configuration& configuration = cluster.raft(0)->configuration;
  for (unsigned i = 0; i < configuration.n; ++i) {
    if (configuration.servers[i].id == newcomer->id) voter = configuration.servers[i].role == RAFT_VOTER;
  }
  EXPECT_TRUE(voter);

  // The newcomer applied the whole history from the log.
  ASSERT_TRUE(cluster.Submit(EncodeActivateMember(NewMember(4).node_id)).ok());
  cluster.ExpectConverged(cluster.All());
  EXPECT_EQ(cluster.state(fourth).Current().Find("node-4")->state, MemberState::kActive);

  // Server 3 (index 2) leaves: its member first, then its Raft server.
  ASSERT_TRUE(cluster.Submit(EncodeBeginLeave("node-3")).ok());
  ASSERT_TRUE(cluster.Submit(EncodeRemoveMember("node-3")).ok());
  Change* remove = cluster.NewChange();
  ASSERT_EQ(raft_remove(cluster.raft(0), &remove->req, cluster.raft(2)->id, &OnChanged), 0);
  ASSERT_TRUE(cluster.StepUntilDone(remove));
  ASSERT_EQ(remove->status, 0);
  EXPECT_EQ(cluster.raft(0)->configuration.n, 3u);
  // A removed node stops (it would otherwise stand for election, alone).
  raft_fixture_kill(cluster.f(), 2);

  // The group of three ({0, 1, 3}) goes on without it, and survives losing
  // its leader: a quorum of the new configuration is two of those three.
  const raft_index removed_at = raft_last_applied(cluster.raft(2));
  ASSERT_TRUE(cluster.Submit(EncodeSetReplicas(3)).ok());
  cluster.ExpectConverged({0, 1, fourth});
  EXPECT_EQ(raft_last_applied(cluster.raft(2)), removed_at);
  raft_fixture_kill(cluster.f(), 0);
  ASSERT_TRUE(cluster.StepUntilNewLeader(0));
  ASSERT_TRUE(cluster.leader() == 1 || cluster.leader() == fourth);
  ASSERT_TRUE(cluster.Submit(EncodeAddMember(NewMember(5))).ok());
  cluster.ExpectConverged({1, fourth});
  EXPECT_EQ(cluster.state(fourth).Current().replicas, 3u);
  EXPECT_NE(cluster.state(fourth).Current().Find(NewMember(5).node_id), nullptr);
}

TEST(ControlFixtureTest, LaggingServerIsCaughtUpBySnapshot) {
  ControlCluster cluster(3);
  for (unsigned i = 0; i < 3; ++i) {
    raft_set_snapshot_threshold(cluster.raft(i), 3);
    raft_set_snapshot_trailing(cluster.raft(i), 1);
  }
  raft_fixture_elect(cluster.f(), 0);
  // Messages between the leader and server 2 are dropped while the log
  // grows past several snapshots.
  raft_fixture_saturate(cluster.f(), 0, 2);
  raft_fixture_saturate(cluster.f(), 2, 0);
  FormCluster(cluster, 5);
  ASSERT_TRUE(cluster.Submit(EncodeSetReplicas(4)).ok());
  cluster.ExpectConverged({0, 1});
  EXPECT_GT(cluster.fsm(0).snapshots_taken(), 0u);
  EXPECT_EQ(cluster.state(2).epoch(), 0u);

  raft_fixture_desaturate(cluster.f(), 0, 2);
  raft_fixture_desaturate(cluster.f(), 2, 0);
  cluster.ExpectConverged(cluster.All());
  EXPECT_GE(raft_fixture_n_recv(cluster.f(), 2, RAFT_IO_INSTALL_SNAPSHOT), 1u);
  EXPECT_GE(cluster.fsm(2).snapshots_restored(), 1u);
  EXPECT_EQ(cluster.state(2).Current().replicas, 4u);
  EXPECT_EQ(cluster.state(2).Current().CountInState(MemberState::kActive), 5u);

  // After the install it applies new commands from the log as usual.
  ASSERT_TRUE(cluster.Submit(EncodeBeginLeave("node-5")).ok());
  cluster.ExpectConverged(cluster.All());
  EXPECT_EQ(cluster.state(2).Current().Find("node-5")->state, MemberState::kLeaving);
}

// The adapter alone, called as libraft calls it.
TEST(RaftFsmTest, FollowsLibraftOwnershipRules) {
  ControlState state;
  RaftFsm adapter(&state);
  struct raft_fsm* fsm = adapter.fsm();
  EXPECT_EQ(fsm->version, 1);

  // apply: the result lives in the adapter; a refusal is still applied (0).
  std::string command = EncodeAddMember(NewMember(1));
  struct raft_buffer buf{command.data(), command.size()};
  void* result = nullptr;
  ASSERT_EQ(fsm->apply(fsm, &buf, &result), 0);
  EXPECT_EQ(*RaftFsm::ResultOf(result), 1u);
  ASSERT_EQ(fsm->apply(fsm, &buf, &result), 0);
  EXPECT_EQ(RaftFsm::ResultOf(result).status().code(), absl::StatusCode::kAlreadyExists);

  // snapshot: one buffer, allocated with raft_malloc, which libraft frees.
  struct raft_buffer* bufs = nullptr;
  unsigned n_bufs = 0;
  ASSERT_EQ(fsm->snapshot(fsm, &bufs, &n_bufs), 0);
  ASSERT_EQ(n_bufs, 1u);
  EXPECT_EQ(std::string(static_cast<char*>(bufs[0].base), bufs[0].len), state.Snapshot());

  // restore: on success the buffer is the adapter's (it frees it).
  ControlState other;
  RaftFsm other_adapter(&other);
  ASSERT_EQ(other_adapter.fsm()->restore(other_adapter.fsm(), &bufs[0]), 0);
  raft_free(bufs);
  EXPECT_EQ(other.Current(), state.Current());

  // A malformed snapshot is refused and stays the caller's.
  struct raft_buffer garbage;
  garbage.len = 16;
  garbage.base = raft_malloc(garbage.len);
  std::memset(garbage.base, 0xab, garbage.len);
  EXPECT_EQ(other_adapter.fsm()->restore(other_adapter.fsm(), &garbage), RAFT_MALFORMED);
  raft_free(garbage.base);
  EXPECT_EQ(other.Current(), state.Current());
  EXPECT_EQ(other_adapter.snapshots_restored(), 1u);
}

}  // namespace
}  // namespace logkv::server::control
