#include "server/cluster/hinted_handoff.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/namespaces.h"

namespace logkv::server::cluster {

namespace {

constexpr size_t kSequenceBytes = 8;
// Scan pages while loading: items and bytes.
constexpr uint32_t kLoadPageItems = 10'000;
constexpr uint64_t kLoadPageBytes = 16ull << 20;

// Removes a delivered (or dropped) hint from the engine. Forgotten, not
// deleted: a tombstone stays in the index until compaction may drop it,
// which a store's older segments can put off for good, so every hint ever
// written would keep an entry (and a place in the order the load reads); a
// Forget takes the key out of the index at once. Should it fail, the hint
// is loaded again at the next start and delivered again, which the
// timestamps make harmless.
void RemoveStored(engine::Engine* engine, const std::string& key) {
  absl::StatusOr<engine::KeyRecord> record = engine->GetRecord(key, /*with_value=*/false);
  absl::Status status = record.status();
  if (record.ok() && record->found) status = engine->Forget(key, record->timestamp).status();
  if (!status.ok() && !absl::IsNotFound(status)) {
    Log(Level::kWarning, "hinted handoff: removing a hint failed: %s", status.ToString());
  }
}

}  // namespace

std::string HintKey(absl::string_view target_node_id, uint64_t sequence) {
  std::string key = absl::StrCat(kHintPrefix, target_node_id, "/");
  for (int shift = 56; shift >= 0; shift -= 8) {
    key.push_back(static_cast<char>((sequence >> shift) & 0xff));
  }
  return key;
}

bool ParseHintKey(absl::string_view key, std::string* target_node_id, uint64_t* sequence) {
  if (key.size() < kHintPrefix.size() + 1 + kSequenceBytes) return false;
  if (key.substr(0, kHintPrefix.size()) != kHintPrefix) return false;
  const size_t slash = key.size() - kSequenceBytes - 1;
  if (key[slash] != '/') return false;
  *target_node_id = std::string(key.substr(kHintPrefix.size(), slash - kHintPrefix.size()));
  uint64_t value = 0;
  for (size_t i = slash + 1; i < key.size(); ++i) {
    value = (value << 8) | static_cast<uint8_t>(key[i]);
  }
  *sequence = value;
  return true;
}

HintedHandoff::HintedHandoff(engine::Engine* engine, const HintedHandoffOptions& options,
                             ServerMetrics* metrics)
    : engine_(engine),
      options_(options),
      metrics_(metrics),
      worker_("hinted-handoff", [this] { DeliveryTask(); },
              PeriodicWorkerOptions{.interval = options.poll_interval,
                                    .initial_delay = absl::ZeroDuration(),
                                    .interval_from_start = false}) {
  if (metrics_ != nullptr) {
    metrics_->replication_queue_size()->SetCallback(
        [this] { return static_cast<double>(GetFigures().queued); });
    metrics_->replication_retries_in_progress()->SetCallback(
        [this] { return static_cast<double>(GetFigures().targets_retrying); });
    metrics_->replication_lag_max_seconds()->SetCallback(
        [this] { return GetFigures().max_lag_seconds; });
    MetricsRegistry* registry = metrics_->registry();
    using Field = std::function<double(const TargetFigures&)>;
    const std::pair<CollectedFamily*, Field> families[] = {
        {registry->AddCollectedFamily("logkv_hinted_handoff_hints",
                                      "Writes queued for a peer that has not received them, by "
                                      "peer (node id).",
                                      MetricType::kGauge, {"peer"}),
         [](const TargetFigures& t) { return static_cast<double>(t.hints); }},
        {registry->AddCollectedFamily("logkv_hinted_handoff_bytes",
                                      "Bytes of the writes queued for a peer, by peer.",
                                      MetricType::kGauge, {"peer"}),
         [](const TargetFigures& t) { return static_cast<double>(t.bytes); }},
        {registry->AddCollectedFamily("logkv_replication_lag_seconds",
                                      "Age of the oldest write a peer has not received yet (its "
                                      "oldest queued hint), by peer.",
                                      MetricType::kGauge, {"peer"}),
         [](const TargetFigures& t) { return t.lag_seconds; }},
    };
    for (const auto& [family, field] : families) {
      family->SetCollector([this, field = field] {
        std::vector<CollectedSample> samples;
        for (const TargetFigures& target : GetTargetFigures()) {
          samples.push_back(CollectedSample{{target.target}, field(target)});
        }
        return samples;
      });
      target_families_.push_back(family);
    }
  }
}

HintedHandoff::~HintedHandoff() {
  Stop();
  if (metrics_ != nullptr) {
    // After these return no callback runs, so `this` may go.
    metrics_->replication_queue_size()->SetCallback(nullptr);
    metrics_->replication_retries_in_progress()->SetCallback(nullptr);
    metrics_->replication_lag_max_seconds()->SetCallback(nullptr);
    for (CollectedFamily* family : target_families_) family->SetCollector(nullptr);
  }
}

absl::Status HintedHandoff::Load() {
  engine::ScanOptions scan;
  scan.prefix = std::string(kHintPrefix);
  scan.limit = kLoadPageItems;
  scan.max_bytes = kLoadPageBytes;
  // A load at start-up does not build the engine's key order, which would
  // make every later insert of a new key dearer in a store clients never
  // scan (the node's hot write path). logkvd's engine keeps the hints in an
  // order of their own (Options::ordered_prefixes), so its pages read only
  // the hints; in an engine without it each page walks every key.
  scan.build_key_order = false;
  size_t loaded = 0;
  absl::MutexLock lock(&mu_);
  while (true) {
    absl::StatusOr<engine::ScanResult> page = engine_->Scan(scan);
    if (!page.ok()) return page.status();
    for (const engine::ScanItem& item : page->items) {
      std::string target;
      uint64_t sequence = 0;
      if (!ParseHintKey(item.key, &target, &sequence)) {
        Log(Level::kWarning, "hinted handoff: ignoring a malformed hint key of %d bytes",
            item.key.size());
        continue;
      }
      Target& t = targets_[target];
      // The scan visits keys in order: a target's hints come by sequence.
      assert(t.hints.empty() || t.hints.back().sequence < sequence);
      t.hints.push_back(Hint{sequence, engine::TimestampUnixMs(item.meta.timestamp),
                             static_cast<uint32_t>(item.value.size())});
      t.bytes += item.value.size();
      ++queued_;
      ++loaded;
      next_sequence_ = std::max(next_sequence_, sequence + 1);
    }
    if (page->next_cursor.empty()) break;
    scan.after_key = page->next_cursor;
  }
  // The scan visits keys in order, so each target's hints are already by
  // sequence (big-endian numbers sort as bytes do).
  if (loaded > 0) {
    Log(Level::kInfo, "hinted handoff: %d hints for %d nodes loaded", loaded, targets_.size());
  }
  return absl::OkStatus();
}

absl::Status HintedHandoff::Start(SendFunction send, StateFunction state_of) {
  // Checked first so that a second Start leaves the running thread's
  // functions alone.
  if (worker_.running()) {
    return absl::FailedPreconditionError("hinted handoff is already running");
  }
  {
    absl::MutexLock lock(&mu_);
    send_ = std::move(send);
    state_of_ = std::move(state_of);
  }
  return worker_.Start();
}

void HintedHandoff::Stop() { worker_.Stop(); }

void HintedHandoff::Notify() { worker_.Wake(); }

absl::Status HintedHandoff::Enqueue(const std::string& target_node_id,
                                    const VersionedRecord& record) {
  const std::string value = EncodeRecord(record);
  // The engine reports a refused write inline (limits, closed engine); a
  // write it accepted is in the log when PutAsync returns, whatever the
  // fsync policy, so the hint cannot be lost by a process crash.
  struct Inline {
    std::atomic<bool> called{false};
    absl::Status status;
  };
  auto result = std::make_shared<Inline>();
  absl::MutexLock lock(&mu_);
  const uint64_t sequence = next_sequence_++;
  const std::string key = HintKey(target_node_id, sequence);
  engine_->PutAsync(key, value, engine::WriteOptions{},
                    [result](absl::StatusOr<engine::WriteResult> written) {
                      result->status = written.status();
                      result->called.store(true, std::memory_order_release);
                    });
  if (result->called.load(std::memory_order_acquire) && !result->status.ok()) {
    if (metrics_ != nullptr) metrics_->replica_acks_failed()->Inc();
    return absl::Status(result->status.code(),
                        absl::StrCat("hint for node ", target_node_id,
                                     " not stored (anti-entropy will repair): ",
                                     result->status.message()));
  }
  Target& target = targets_[target_node_id];
  // Sequences only grow (Load continues after the largest stored), so a
  // target's queue stays in sequence order, as its keys are.
  assert(target.hints.empty() || target.hints.back().sequence < sequence);
  target.hints.push_back(
      Hint{sequence, absl::ToUnixMillis(absl::Now()), static_cast<uint32_t>(value.size())});
  target.bytes += value.size();
  ++queued_;
  while (target.hints.size() > 1 && (target.hints.size() > options_.max_hints_per_target ||
                                     target.bytes > options_.max_bytes_per_target)) {
    DropOldest(target_node_id, &target, /*overflow=*/true);
  }
  return absl::OkStatus();
}

void HintedHandoff::DropOldest(const std::string& target_id, Target* target, bool overflow) {
  mu_.AssertHeld();
  assert(!target->hints.empty());
  const Hint oldest = target->hints.front();
  // A target's bytes are the sum of its hints' bytes; queued_ counts every hint.
  assert(target->bytes >= oldest.bytes && queued_ > 0);
  target->hints.pop_front();
  target->bytes -= oldest.bytes;
  --queued_;
  RemoveStored(engine_, HintKey(target_id, oldest.sequence));
  if (metrics_ != nullptr) metrics_->replica_acks_failed()->Inc();
  if (overflow && target->dropped++ % 10'000 == 0) {
    Log(Level::kWarning,
        "hinted handoff: queue for node %s is full (%d hints, %d bytes; limits %d, %d): "
        "dropping its oldest hints, anti-entropy will repair them (%d dropped so far)",
        target_id, target->hints.size(), target->bytes, options_.max_hints_per_target,
        options_.max_bytes_per_target, target->dropped);
  }
}

void HintedHandoff::DropAll(const std::string& target_id) {
  absl::MutexLock lock(&mu_);
  auto it = targets_.find(target_id);
  if (it == targets_.end()) return;
  const size_t count = it->second.hints.size();
  while (!it->second.hints.empty()) DropOldest(target_id, &it->second, /*overflow=*/false);
  targets_.erase(it);
  Log(Level::kInfo, "hinted handoff: node %s left the cluster: %d hints dropped", target_id,
      count);
}

HintedHandoff::Figures HintedHandoff::GetFigures() const {
  Figures figures;
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  absl::MutexLock lock(&mu_);
  figures.queued = queued_;
  [[maybe_unused]] uint64_t hints = 0;
  for (const auto& [id, target] : targets_) {
    hints += target.hints.size();
    assert(!target.hints.empty() || target.bytes == 0);
    if (target.hints.empty()) continue;
    if (target.backoff > absl::ZeroDuration()) ++figures.targets_retrying;
    const double age = static_cast<double>(now_ms - target.hints.front().enqueued_unix_ms) / 1e3;
    figures.max_lag_seconds = std::max(figures.max_lag_seconds, age);
  }
  assert(hints == queued_);  // queued_ counts the hints of every target
  return figures;
}

std::vector<HintedHandoff::TargetFigures> HintedHandoff::GetTargetFigures() const {
  std::vector<TargetFigures> figures;
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  absl::MutexLock lock(&mu_);
  for (const auto& [id, target] : targets_) {
    if (target.hints.empty()) continue;
    figures.push_back(TargetFigures{
        id, target.hints.size(), target.bytes,
        std::max(0.0, static_cast<double>(now_ms - target.hints.front().enqueued_unix_ms) / 1e3)});
  }
  return figures;
}

size_t HintedHandoff::Pending(const std::string& target_node_id) const {
  absl::MutexLock lock(&mu_);
  auto it = targets_.find(target_node_id);
  return it == targets_.end() ? 0 : it->second.hints.size();
}

size_t HintedHandoff::DeliverOnce(const SendFunction& send, const StateFunction& state_of) {
  std::vector<std::string> due;
  {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    for (auto it = targets_.begin(); it != targets_.end();) {
      if (it->second.hints.empty()) {
        it = targets_.erase(it);
        continue;
      }
      if (it->second.next_attempt <= now) due.push_back(it->first);
      ++it;
    }
  }
  size_t delivered = 0;
  for (const std::string& target : due) {
    switch (state_of(target)) {
      case TargetState::kGone:
        DropAll(target);
        continue;
      case TargetState::kUnreachable:
        // Not an attempt: the hints wait for the member to come back.
        continue;
      case TargetState::kAlive:
        break;
    }
    for (size_t batch = 0; batch < options_.batches_per_pass; ++batch) {
      if (worker_.stopping()) return delivered;
      if (!DeliverBatch(target, send, &delivered)) break;
    }
  }
  return delivered;
}

bool HintedHandoff::DeliverBatch(const std::string& target, const SendFunction& send,
                                 size_t* delivered) {
  std::vector<uint64_t> sequences;
  {
    absl::MutexLock lock(&mu_);
    auto it = targets_.find(target);
    if (it == targets_.end() || it->second.hints.empty()) return false;
    uint64_t bytes = 0;
    for (const Hint& hint : it->second.hints) {
      if (sequences.size() >= options_.batch_records) break;
      if (!sequences.empty() && bytes + hint.bytes > options_.batch_bytes) break;
      sequences.push_back(hint.sequence);
      bytes += hint.bytes;
    }
    // A batch is the front of the queue, in sequence order.
    assert(std::is_sorted(sequences.begin(), sequences.end()));
  }
  std::vector<VersionedRecord> records;
  records.reserve(sequences.size());
  std::string value;
  for (uint64_t sequence : sequences) {
    const std::string key = HintKey(target, sequence);
    absl::Status status = engine_->Get(key, &value, nullptr);
    if (absl::IsNotFound(status)) continue;  // dropped meanwhile
    if (!status.ok()) {
      // An unreadable hint must not stop the rest of the queue: it is
      // dropped below with the batch, and anti-entropy repairs its key.
      Log(Level::kError, "hinted handoff: hint %d for node %s is unreadable, dropping it: %s",
          sequence, target, status.ToString());
      continue;
    }
    absl::StatusOr<VersionedRecord> record = DecodeRecord(value);
    if (!record.ok()) {
      // Undeliverable: removed below with the rest of the batch.
      Log(Level::kError, "hinted handoff: hint %d for node %s: %s", sequence, target,
          record.status().ToString());
      continue;
    }
    records.push_back(*std::move(record));
  }

  bool ok = true;
  if (!records.empty()) {
    const absl::Time sent = absl::Now();
    const absl::StatusOr<std::string> answer = SendAndWait(
        send, target, ReplicateRequestFrame(records, /*hinted=*/true), options_.send_timeout);
    absl::Status status;
    if (!answer.ok()) {
      status = answer.status();
    } else {
      absl::StatusOr<std::vector<bool>> applied = ParseReplicateResult(*answer, records.size());
      if (!applied.ok()) {
        status = applied.status();
      } else if (std::find(applied->begin(), applied->end(), false) != applied->end()) {
        status = absl::UnavailableError("the replica could not apply every record");
      }
    }
    if (!status.ok()) {
      ok = false;
      absl::MutexLock lock(&mu_);
      auto it = targets_.find(target);
      if (it != targets_.end()) {
        Target& t = it->second;
        t.backoff = t.backoff == absl::ZeroDuration()
                        ? options_.initial_backoff
                        : std::min(t.backoff * 2, options_.max_backoff);
        t.next_attempt = absl::Now() + t.backoff;
        Log(Level::kDebug, "hinted handoff: delivery to node %s failed (%s); retry in %s",
            target, status.ToString(), absl::FormatDuration(t.backoff));
      }
      return false;
    }
    if (metrics_ != nullptr) {
      metrics_->replica_acks_ok()->Inc(records.size());
      metrics_->replication_ack_seconds()->Observe(absl::ToDoubleSeconds(absl::Now() - sent));
    }
    *delivered += records.size();
  }

  // Delivered (or undeliverable): remove from the engine and the queue. The
  // batch was the front of the queue; drops may have taken some meanwhile.
  absl::flat_hash_set<uint64_t> done(sequences.begin(), sequences.end());
  absl::MutexLock lock(&mu_);
  auto it = targets_.find(target);
  if (it == targets_.end()) return ok;
  Target& t = it->second;
  while (!t.hints.empty() && done.contains(t.hints.front().sequence)) {
    const Hint hint = t.hints.front();
    t.hints.pop_front();
    t.bytes -= hint.bytes;
    --queued_;
    RemoveStored(engine_, HintKey(target, hint.sequence));
  }
  t.backoff = absl::ZeroDuration();
  t.next_attempt = absl::InfinitePast();
  return ok && !t.hints.empty();
}

void HintedHandoff::DeliveryTask() {
  SendFunction send;
  StateFunction state_of;
  {
    absl::MutexLock lock(&mu_);
    send = send_;
    state_of = state_of_;
  }
  DeliverOnce(send, state_of);
}

}  // namespace logkv::server::cluster
