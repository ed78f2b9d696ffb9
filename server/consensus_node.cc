#include "server/consensus_node.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/control/control_plane.h"
#include "server/control/kv_state.h"

namespace logkv::server {

namespace {

absl::Status NotRunning() {
  return absl::UnavailableError("this node's control plane is not running yet: try again");
}

}  // namespace

void SharedReadSyncs::Await(Propose propose, Done done) {
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_) {
      next_.push_back(std::move(done));
      return;
    }
    in_flight_ = true;
  }
  std::vector<Done> group;
  group.push_back(std::move(done));
  Start(std::move(propose), std::move(group));
}

void SharedReadSyncs::Start(Propose propose, std::vector<Done> group) {
  Propose again = propose;
  propose([self = shared_from_this(), again = std::move(again),
           group = std::move(group)](absl::StatusOr<uint64_t> revision) mutable {
    std::vector<Done> next;
    {
      absl::MutexLock lock(&self->mu_);
      next.swap(self->next_);
      // A failure (no leader within the wait, the control plane stopping)
      // ends the next group's reads too: a new proposal would likely wait
      // as long again, and an error tells nothing stale.
      if (next.empty() || !revision.ok()) self->in_flight_ = false;
    }
    if (!revision.ok()) {
      for (Done& done : next) done(revision.status());
    } else if (!next.empty()) {
      // Proposed after every read of the next group arrived.
      self->Start(std::move(again), std::move(next));
    }
    for (Done& done : group) done(revision);
  });
}

ControlConsensusKeys::ControlConsensusKeys(std::function<control::ControlPlane*()> control,
                                           std::vector<std::string> flag_prefixes,
                                           absl::Duration read_wait)
    : control_(std::move(control)),
      flag_prefixes_(std::move(flag_prefixes)),
      read_wait_(read_wait),
      syncs_(std::make_shared<SharedReadSyncs>()) {}

bool ControlConsensusKeys::Covers(absl::string_view engine_key) const {
  control::ControlPlane* const control = control_();
  if (control != nullptr) {
    if (control->kv()->committed()) return control->kv()->Covers(engine_key);
    // Applied before the last stop, and not replayed yet: they never change.
    if (const std::vector<std::string>* saved = control->saved_consensus_prefixes();
        saved != nullptr) {
      return control::UnderConsensusPrefix(*saved, engine_key);
    }
  }
  return control::UnderConsensusPrefix(flag_prefixes_, engine_key);
}

void ControlConsensusKeys::Get(
    std::string key, std::function<void(absl::StatusOr<Coordinator::ReadResult>)> done) {
  control::ControlPlane* const control = control_();
  if (control == nullptr) return done(NotRunning());
  control::KvState* const kv = control->kv();
  const absl::Duration wait = read_wait_;
  // The control plane is asked for again at each proposal (a chain of
  // groups proposes for reads that came later); it outlives the callbacks of
  // its proposals.
  syncs_->Await(
      [find = control_](SharedReadSyncs::Done answer) {
        control::ControlPlane* const now = find();
        if (now == nullptr) return answer(NotRunning());
        now->Submit(control::EncodeKvSync(), std::move(answer));
      },
      [kv, wait, key = std::move(key), done = std::move(done)](
          absl::StatusOr<uint64_t> revision) mutable {
        if (!revision.ok()) return done(revision.status());
        // The read is answered from this node's copy once it holds every
        // write committed before the KvSync.
        kv->WhenAt(*revision, absl::Now() + wait,
                   [kv, key = std::move(key), done = std::move(done)](absl::Status reached) {
                     if (!reached.ok()) return done(reached);
                     Coordinator::ReadResult read;
                     absl::StatusOr<control::KvEntry> entry = kv->Get(key);
                     if (entry.ok()) {
                       read.found = true;
                       read.value = std::move(entry->value);
                       read.version = entry->version;
                       read.timestamp = engine::TimestampAtUnixMs(entry->updated_at_ms);
                     } else if (!absl::IsNotFound(entry.status())) {
                       return done(entry.status());
                     }
                     done(std::move(read));
                   });
      });
}

void ControlConsensusKeys::Write(std::string key, std::optional<std::string> value,
                                 std::optional<uint64_t> if_version,
                                 std::function<void(absl::StatusOr<engine::WriteResult>)> done) {
  // Refused here rather than by the log: a command is small.
  const absl::string_view bytes = value.has_value() ? absl::string_view(*value) : "";
  if (absl::Status status = control::CheckConsensusWrite(key, value.has_value() ? &bytes : nullptr);
      !status.ok()) {
    return done(status);
  }
  control::ControlPlane* const control = control_();
  if (control == nullptr) return done(NotRunning());
  const int64_t at_ms = absl::ToUnixMillis(absl::Now());
  control->Submit(control::EncodeKvWrite(key, value, if_version),
                   [at_ms, done = std::move(done)](absl::StatusOr<uint64_t> version) {
                     if (!version.ok()) return done(version.status());
                     engine::WriteResult written;
                     written.version = *version;
                     written.timestamp = engine::TimestampAtUnixMs(at_ms);
                     done(written);
                   });
}

}  // namespace logkv::server
