#include "server/cluster/purger.h"

#include <algorithm>
#include <cassert>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "protocol/frame.h"
#include "server/log.h"
#include "server/metrics.h"

namespace logkv::server::cluster {

namespace {

// Key bytes per meta-only ReadRecords: well under the answer budget, so no
// key is ever answered as unknown for want of room (an unknown answer would
// read as "this owner holds nothing", which confirms a tombstone).
constexpr uint64_t kRequestKeyBytes = kMaxRecordsAnswerBytes / 4;

}  // namespace

void PurgerFigures::Add(const PurgerFigures& sweep) {
  sweeps += sweep.sweeps;
  sweeps_skipped += sweep.sweeps_skipped;
  sweeps_cut_short += sweep.sweeps_cut_short;
  keys_listed += sweep.keys_listed;
  candidates += sweep.candidates;
  forgotten_not_owned += sweep.forgotten_not_owned;
  tombstones_collected += sweep.tombstones_collected;
  waiting = sweep.waiting;
  requests += sweep.requests;
  failed_requests += sweep.failed_requests;
  if (sweep.sweeps > 0) last_sweep_seconds = sweep.last_sweep_seconds;
}

Purger::Purger(engine::Engine* engine, PeerSendFunction send, RingFunction ring,
               MembersFunction members, std::string self_node_id, ServerMetrics* metrics,
               const PurgerOptions& options)
    : engine_(engine),
      send_(std::move(send)),
      ring_(std::move(ring)),
      members_(std::move(members)),
      self_(std::move(self_node_id)),
      options_(options),
      replicas_(options.replicas),
      ring_changed_at_(absl::Now()),
      worker_("purger", [this] { SweepTask(); },
              PeriodicWorkerOptions{.interval = options.interval,
                                    .initial_delay = options.interval,
                                    .interval_from_start = false}) {
  if (metrics == nullptr) return;
  MetricsRegistry* registry = metrics->registry();
  sweeps_counter_ = registry->AddCounter("logkv_purge_sweeps_total",
                                         "Purger sweeps over the index that ran to the end.");
  CounterFamily* forgotten = registry->AddCounterFamily(
      "logkv_purge_keys_forgotten_total",
      "Keys dropped from this node once every owner confirmed them: not_owned = the ring "
      "no longer places the key here, tombstone = a tombstone past its grace.",
      {"reason"});
  not_owned_counter_ = forgotten->WithLabelValues({"not_owned"});
  tombstones_counter_ = forgotten->WithLabelValues({"tombstone"});
  waiting_gauge_ = registry->AddGauge(
      "logkv_purge_keys_waiting",
      "Keys the last sweep would drop but some owner did not confirm (yet).");
  last_sweep_gauge_ =
      registry->AddGauge("logkv_purge_last_sweep_seconds", "Duration of the last purger sweep.");
}

Purger::~Purger() { Stop(); }

absl::Status Purger::Start() { return worker_.Start(); }

void Purger::Stop() { worker_.Stop(); }

void Purger::SetReplicas(size_t replicas) {
  if (replicas_.exchange(replicas, std::memory_order_relaxed) != replicas) NotifyRingChanged();
}

void Purger::NotifyRingChanged() {
  {
    absl::MutexLock lock(&mu_);
    ring_changed_at_ = absl::Now();
  }
  worker_.WakeAfter(options_.ring_stable_for);
}

bool Purger::stopping() const { return worker_.stopping(); }

PurgerFigures Purger::Figures() const {
  absl::MutexLock lock(&mu_);
  return totals_;
}

void Purger::SweepTask() {
  absl::StatusOr<PurgerFigures> sweep = RunOnce();
  if (!sweep.ok()) {
    Log(Level::kWarning, "purger sweep failed: %s", sweep.status().ToString());
  } else if (sweep->sweeps_skipped > 0) {
    // The ring changed too recently, maybe more than once: the next sweep
    // once it has been stable long enough (unless it changes again).
    absl::Time stable_at;
    {
      absl::MutexLock lock(&mu_);
      stable_at = ring_changed_at_ + options_.ring_stable_for;
    }
    const absl::Time now = absl::Now();
    if (stable_at > now) worker_.WakeAfter(stable_at - now);
  } else if (sweep->forgotten_not_owned + sweep->tombstones_collected > 0) {
    Log(Level::kInfo,
        "purger: %d keys this node no longer owns and %d tombstones dropped, %d waiting for "
        "their owners, in %.3f s",
        sweep->forgotten_not_owned, sweep->tombstones_collected, sweep->waiting,
        sweep->last_sweep_seconds);
  }
}

absl::StatusOr<PurgerFigures> Purger::RunOnce() {
  absl::MutexLock sweep_lock(&sweep_mu_);
  absl::StatusOr<PurgerFigures> sweep = Sweep();
  if (!sweep.ok()) return sweep;
  {
    absl::MutexLock lock(&mu_);
    totals_.Add(*sweep);
  }
  if (sweep->sweeps > 0) {
    if (sweeps_counter_ != nullptr) sweeps_counter_->Inc();
    if (not_owned_counter_ != nullptr) not_owned_counter_->Inc(sweep->forgotten_not_owned);
    if (tombstones_counter_ != nullptr) tombstones_counter_->Inc(sweep->tombstones_collected);
    if (waiting_gauge_ != nullptr) waiting_gauge_->Set(static_cast<double>(sweep->waiting));
    if (last_sweep_gauge_ != nullptr) last_sweep_gauge_->Set(sweep->last_sweep_seconds);
  }
  return sweep;
}

bool Purger::RingUnchangedSince(const std::shared_ptr<const Ring>& ring,
                                absl::Time start) const {
  // By members, not by pointer: a ring not yet published is built anew on
  // every call.
  const std::shared_ptr<const Ring> now = ring_();
  if (now == nullptr || now->members() != ring->members()) return false;
  absl::MutexLock lock(&mu_);
  return ring_changed_at_ <= start;
}

absl::StatusOr<PurgerFigures> Purger::Sweep() {
  sweep_mu_.AssertHeld();  // sweeps never overlap
  PurgerFigures figures;
  const absl::Time start = absl::Now();
  const std::shared_ptr<const Ring> ring = ring_ ? ring_() : nullptr;
  if (ring != nullptr && ring->size() > 1) saw_peers_ = true;
  if (ring != nullptr && ring->size() <= 1 && options_.peers_expected && !saw_peers_) {
    figures.sweeps_skipped = 1;  // not joined yet: nobody to confirm with
    return figures;
  }
  if (ring != nullptr && ring->size() == 0) {
    // Nobody owns anything (this node left a cluster of one): there is no
    // owner to hand a key to, so nothing may go.
    figures.sweeps_skipped = 1;
    return figures;
  }
  {
    absl::MutexLock lock(&mu_);
    if (ring == nullptr || start - ring_changed_at_ < options_.ring_stable_for) {
      figures.sweeps_skipped = 1;
      return figures;
    }
  }
  const int64_t grace_ms = absl::ToInt64Milliseconds(options_.tombstone_grace);
  const int64_t now_ms = absl::ToUnixMillis(start);

  // With no more members than replicas every member owns every key: only
  // tombstones can be candidates.
  const size_t replicas = replicas_.load(std::memory_order_relaxed);
  const bool owns_all =
      ring->size() <= replicas &&
      std::find(ring->members().begin(), ring->members().end(), self_) != ring->members().end();
  engine::Engine::KeyCursor cursor;
  std::vector<Candidate> candidates;
  while (!cursor.done) {
    if (stopping()) return absl::CancelledError("the purger is stopping");
    absl::StatusOr<std::vector<engine::Engine::LeafKey>> page =
        engine_->ListKeys(&cursor, options_.page_keys);
    if (!page.ok()) return page.status();
    figures.keys_listed += page->size();
    for (engine::Engine::LeafKey& key : *page) {
      if (owns_all && !key.tombstone) continue;
      std::vector<std::string> owners = ring->PreferenceList(key.key, replicas);
      auto self = std::find(owners.begin(), owners.end(), self_);
      const bool owned = self != owners.end();
      const bool grace_passed =
          key.tombstone &&
          now_ms - engine::TimestampUnixMs(key.timestamp) >= grace_ms;
      if (owned && !grace_passed) continue;
      // A record is only dropped for an owner that holds it: never when no
      // other member would keep it.
      if (!owned && owners.empty()) continue;
      if (owned) owners.erase(self);
      // The owners to ask are the others, at most N - 1 of them when this
      // node is one; a key this node does not own has an owner to keep it.
      assert(std::find(owners.begin(), owners.end(), self_) == owners.end());
      assert(owners.size() + (owned ? 1 : 0) <= replicas);
      assert(owned ? grace_passed : !owners.empty());
      Candidate candidate;
      candidate.key = std::move(key.key);
      candidate.timestamp = key.timestamp;
      candidate.tombstone = key.tombstone;
      candidate.owned = owned;
      candidate.grace_passed = grace_passed;
      candidate.owners = std::move(owners);
      candidates.push_back(std::move(candidate));
    }
    if (candidates.size() >= options_.page_keys || (cursor.done && !candidates.empty())) {
      figures.candidates += candidates.size();
      if (!Settle(&candidates, ring, start, &figures)) {
        figures.sweeps_cut_short = 1;
        figures.last_sweep_seconds = absl::ToDoubleSeconds(absl::Now() - start);
        return figures;
      }
      candidates.clear();
    }
  }
  figures.sweeps = 1;
  figures.last_sweep_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return figures;
}

bool Purger::Settle(std::vector<Candidate>* candidates, const std::shared_ptr<const Ring>& ring,
                    absl::Time start, PurgerFigures* figures) {
  // Who is reachable now: only Alive members are asked.
  std::map<std::string, std::string> address_of;
  for (const Member& member : members_()) {
    if (member.state == MemberState::kAlive) address_of[member.node_id] = member.address;
  }
  // The candidates each owner is asked about, by index.
  std::map<std::string, std::vector<size_t>> asked;
  for (size_t i = 0; i < candidates->size(); ++i) {
    Candidate& candidate = (*candidates)[i];
    for (const std::string& owner : candidate.owners) {
      if (!address_of.contains(owner)) {
        candidate.refused = true;  // an owner that cannot be asked confirms nothing
        continue;
      }
      asked[owner].push_back(i);
    }
  }
  for (const auto& [owner, indexes] : asked) {
    size_t begin = 0;
    while (begin < indexes.size()) {
      if (stopping()) return true;
      // A request ends at keys_per_request keys or kRequestKeyBytes of keys.
      std::vector<std::string> keys;
      uint64_t key_bytes = 0;
      size_t end = begin;
      while (end < indexes.size() && keys.size() < options_.keys_per_request) {
        const std::string& key = (*candidates)[indexes[end]].key;
        if (!keys.empty() && key_bytes + key.size() > kRequestKeyBytes) break;
        key_bytes += key.size();
        keys.push_back(key);
        ++end;
      }
      assert(end > begin);  // every request carries a key at least: the loop ends
      absl::StatusOr<std::vector<VersionedRecord>> records =
          ReadMeta(address_of[owner], keys, figures);
      assert(!records.ok() || records->size() == keys.size());  // one record per key
      for (size_t j = begin; j < end; ++j) {
        Candidate& candidate = (*candidates)[indexes[j]];
        if (!records.ok()) {
          candidate.refused = true;
          continue;
        }
        const VersionedRecord& theirs = (*records)[j - begin];
        // The owner holds this version or a newer one; or it holds nothing
        // of a tombstone past its grace (it collected the tombstone itself,
        // or never had the key).
        const bool confirms = (theirs.found && theirs.timestamp >= candidate.timestamp) ||
                              (!theirs.found && candidate.tombstone && candidate.grace_passed);
        if (confirms) {
          candidate.confirmations += 1;
        } else {
          candidate.refused = true;
        }
      }
      begin = end;
    }
  }
  for (size_t i = 0; i < candidates->size(); ++i) {
    const Candidate& candidate = (*candidates)[i];
    // Each owner confirms a candidate once at most.
    assert(candidate.confirmations <= candidate.owners.size());
    if (candidate.refused || candidate.confirmations != candidate.owners.size()) {
      figures->waiting += 1;
      continue;
    }
    // The confirmations were asked of this ring's owners: if it changed
    // meanwhile (a member joined, or one left after handing its records
    // off), who must hold a key is no longer known here.
    if (!RingUnchangedSince(ring, start)) {
      figures->waiting += candidates->size() - i;
      return false;
    }
    // Forget checks the timestamp again under the shard's lock: a write that
    // arrived since the listing keeps the key.
    absl::StatusOr<bool> forgot = engine_->Forget(candidate.key, candidate.timestamp);
    if (!forgot.ok()) {
      Log(Level::kWarning, "purger could not drop a key: %s", forgot.status().ToString());
      figures->waiting += 1;
      continue;
    }
    if (!*forgot) continue;
    if (candidate.owned) {
      figures->tombstones_collected += 1;
    } else {
      figures->forgotten_not_owned += 1;
    }
  }
  return true;
}

absl::StatusOr<std::vector<VersionedRecord>> Purger::ReadMeta(const std::string& address,
                                                              const std::vector<std::string>& keys,
                                                              PurgerFigures* figures) {
  figures->requests += 1;
  const absl::StatusOr<std::string> answer =
      SendAndWait(send_, address, ReadRecordsRequestFrame(keys, /*meta_only=*/true),
                  options_.request_timeout);
  absl::StatusOr<std::vector<VersionedRecord>> records =
      answer.ok() ? ParseRecordsResult(*answer, keys)
                  : absl::StatusOr<std::vector<VersionedRecord>>(answer.status());
  if (!records.ok()) {
    figures->failed_requests += 1;
    Log(Level::kDebug, "purger: ReadRecords to %s failed: %s", address,
        records.status().ToString());
  }
  return records;
}

}  // namespace logkv::server::cluster
