// Consensus keys, as part of the control plane's state machine
// (docs/cluster.md, "Compare-and-set"): the keys under a committed set of
// prefixes, whose values live here rather than in the data engines, and
// every operation on which is a command of the control plane's Raft log.
//
// Why. The data plane replicates a key with last-write-wins records and
// majority quorums (ABD), which makes strong reads and writes linearizable
// but cannot make a compare-and-set atomic: two coordinators may both read
// version 3 from a majority and both write version 4. A compare-and-set
// needs the writes to one key in one order that every replica agrees on,
// that is consensus; the Raft log is that order. A key is a consensus key
// or not for the life of the cluster (the prefixes are committed once), so
// no key is ever written by both paths.
//
// Semantics are the engine's for one key: a put bumps the version (1 for a
// key that is absent), a delete removes the key (the next put starts at 1
// again), if_version compares with the current version (0: absent). Only
// the current version is kept; no TTL. The revision counts the consensus
// writes applied; a read is a KvSync command (its answer is the revision
// at its place in the log) and then a local read once this server's
// revision has reached it (WhenAt).
//
// Bounded, the same on every server (so a refusal is deterministic): keys,
// values and the whole set have limits below, which keep the control
// plane's snapshots small.
//
// Thread-safety: every method may be called from any thread. Applies come
// from one thread (Raft's); readers take the reader lock.
#ifndef LOGKV_SERVER_CONTROL_KV_STATE_H_
#define LOGKV_SERVER_CONTROL_KV_STATE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace flatbuffers {
template <typename T>
struct Offset;
class FlatBufferBuilder;
}  // namespace flatbuffers

namespace logkv::server::control {

namespace fb {
struct ConsensusKeys;
struct SetConsensusPrefixes;
struct KvWrite;
}  // namespace fb

inline constexpr size_t kMaxConsensusPrefixes = 64;
inline constexpr size_t kMaxConsensusPrefixBytes = 256;
inline constexpr size_t kMaxConsensusKeyBytes = 4096;       // the engine key
inline constexpr size_t kMaxConsensusValueBytes = 64 << 10;
inline constexpr size_t kMaxConsensusEntries = 100000;
// Keys and values together, each entry counted with the bytes a snapshot
// spends on its table: with the accounts' bound (account_state.h) the
// control plane's snapshot stays under kMaxSnapshotBytes.
inline constexpr size_t kMaxConsensusBytes = 16 << 20;
inline constexpr size_t kConsensusEntryOverheadBytes = 64;
// One tenant's share (keys in its namespace, counted alike), so that no
// tenant can fill the cluster's bound for the others. Keys outside every
// tenant's namespace (a cluster without accounts) have only the cluster's.
inline constexpr size_t kMaxConsensusEntriesPerTenant = kMaxConsensusEntries / 8;
inline constexpr size_t kMaxConsensusBytesPerTenant = kMaxConsensusBytes / 8;
static_assert(kMaxConsensusBytesPerTenant >= 16 * (kMaxConsensusValueBytes + kMaxConsensusKeyBytes),
              "a tenant holds at least 16 keys of the largest size");

struct KvEntry {
  std::string value;
  uint64_t version = 0;
  int64_t updated_at_ms = 0;

  bool operator==(const KvEntry&) const = default;
};

// What one tenant's keys take (derived from the entries).
struct ConsensusUsage {
  size_t keys = 0;
  size_t bytes = 0;  // counted as ConsensusState::bytes

  bool operator==(const ConsensusUsage&) const = default;
};

// The whole state, as a value.
struct ConsensusState {
  std::vector<std::string> prefixes;  // sorted, distinct; empty: none
  bool prefixes_set = false;          // committed (even as none)
  uint64_t revision = 0;
  absl::btree_map<std::string, KvEntry> entries;
  size_t bytes = 0;  // derived: keys, values and kConsensusEntryOverheadBytes each
  // Derived: per tenant (NamespaceUserOf the key), tenants with keys only.
  absl::flat_hash_map<uint64_t, ConsensusUsage> tenants;

  bool operator==(const ConsensusState&) const = default;
};

// Whether engine_key's client part (after a tenant's 10-byte namespace,
// "\0t" + the user id) starts with one of prefixes. Keys of the server's
// reserved namespace (a first byte 0 other than a tenant's) never do.
bool UnderConsensusPrefix(const std::vector<std::string>& prefixes, absl::string_view engine_key);

// A consensus write's key and value (null: a delete) within their limits, or
// InvalidArgument: what KvWrite's apply checks, for a proposer to check first.
absl::Status CheckConsensusWrite(absl::string_view key, const absl::string_view* value);

// The encoders of the commands (the bytes to hand to Raft).
std::string EncodeSetConsensusPrefixes(const std::vector<std::string>& prefixes);
// value nullopt: a delete.
std::string EncodeKvWrite(absl::string_view key, const std::optional<std::string>& value,
                          std::optional<uint64_t> if_version);
std::string EncodeKvSync();

class KvState {
 public:
  KvState() = default;
  KvState(const KvState&) = delete;
  KvState& operator=(const KvState&) = delete;

  // The hot path of every data operation: whether engine_key is a consensus
  // key. One atomic load while no prefix is set.
  bool Covers(absl::string_view engine_key) const;
  std::vector<std::string> prefixes() const;
  bool prefixes_set() const;
  // prefixes_set(), without a lock (the data path asks it on every request).
  bool committed() const { return committed_.load(std::memory_order_acquire); }

  // The current value of key, or NotFound.
  absl::StatusOr<KvEntry> Get(absl::string_view key) const;
  uint64_t revision() const;
  ConsensusState Current() const;  // a copy (tests, tools)

  // Calls done(OkStatus) once this server has applied revision (at once when
  // it has), or done(DeadlineExceeded) at deadline (checked by Expire), or
  // done(Unavailable) at Stop. done runs on the apply thread or the
  // caller's; it must not call back into this object under a lock.
  void WhenAt(uint64_t revision, absl::Time deadline, std::function<void(absl::Status)> done);
  // Fails the waits whose deadline has passed (the control plane's tick).
  void Expire(absl::Time now);
  // Fails every wait (the control plane stops); later waits fail at once.
  void Stop();

  // ---- For ControlState ----
  // SetConsensusPrefixes: InvalidArgument for a prefix out of its limits,
  // FailedPrecondition when other prefixes are committed already (the same
  // ones again: accepted, 0). The answer is the number of prefixes.
  absl::StatusOr<uint64_t> Apply(const fb::SetConsensusPrefixes& cmd);
  // KvWrite: the key's version after it (a delete: the version it took, the
  // old one plus one, as the engine answers), or
  //   Unavailable         no prefixes committed yet
  //   InvalidArgument     a key or value out of its limits, a key not under
  //                       a consensus prefix
  //   FailedPrecondition  if_version is not the current version
  //   NotFound            a delete of an absent key
  //   ResourceExhausted   kMaxConsensusEntries or kMaxConsensusBytes reached, or
  //                       the key's tenant's share of them
  absl::StatusOr<uint64_t> Apply(const fb::KvWrite& cmd, int64_t at_ms);
  // KvSync: the revision.
  uint64_t Sync() const { return revision(); }

  flatbuffers::Offset<fb::ConsensusKeys> Encode(flatbuffers::FlatBufferBuilder& builder) const;
  static absl::StatusOr<ConsensusState> Decode(const fb::ConsensusKeys* in);  // null: empty
  void Replace(ConsensusState state);

 private:
  struct Waiter {
    absl::Time deadline;
    std::function<void(absl::Status)> done;
  };
  // Runs the waits the revision has reached (without the lock held).
  void Release();

  mutable absl::Mutex mu_;
  ConsensusState state_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> any_prefix_{false};
  std::atomic<bool> committed_{false};
  absl::Mutex waiters_mu_;  // never held with mu_
  std::multimap<uint64_t, Waiter> waiters_ ABSL_GUARDED_BY(waiters_mu_);
  bool stopped_ ABSL_GUARDED_BY(waiters_mu_) = false;
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_KV_STATE_H_
