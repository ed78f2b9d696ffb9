#include "server/cluster/replica_batcher.h"

#include <algorithm>
#include <cassert>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace logkv::server::cluster {

namespace {

// Splits items into runs of at most limits' items and bytes (a single item
// over the byte limit is a run of its own) and calls send on each run.
// Items of one epoch go together (a replica that holds a newer
// configuration refuses a run placed under an older one, and an item must
// not be refused for another's epoch), taken longest timeout first; a run
// also ends before an item whose timeout is under half of the run's first
// (its longest).
template <typename Item, typename BytesOf, typename SendRun>
void InRuns(std::vector<Item> items, const ReplicaBatcher::Limits& limits, BytesOf bytes_of,
            SendRun send_run) {
  // Usually every item has about the whole write wait left and the same
  // epoch: no run would end for either, and the items are taken as they
  // came (moving them costs more than the rest).
  absl::Duration shortest = absl::InfiniteDuration();
  absl::Duration longest = -absl::InfiniteDuration();
  bool one_epoch = true;
  for (const Item& item : items) {
    shortest = std::min(shortest, item.timeout);
    longest = std::max(longest, item.timeout);
    one_epoch = one_epoch && item.epoch == items.front().epoch;
  }
  if (shortest * 2 < longest || !one_epoch) {
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
      return a.epoch != b.epoch ? a.epoch < b.epoch : a.timeout > b.timeout;
    });
  }
  std::vector<Item> run;
  uint64_t run_bytes = 0;
  for (Item& item : items) {
    const uint64_t bytes = bytes_of(item);
    if (!run.empty() && (run.size() >= limits.max_items || run_bytes + bytes > limits.max_bytes ||
                         item.epoch != run.front().epoch ||
                         item.timeout * 2 < run.front().timeout)) {
      send_run(std::move(run));
      run = std::vector<Item>();
      run_bytes = 0;
    }
    run_bytes += bytes;
    run.push_back(std::move(item));
    // A run keeps to the limits, except a single item larger than max_bytes.
    assert(run.size() <= limits.max_items);
    assert(run.size() == 1 || run_bytes <= limits.max_bytes);
  }
  if (!run.empty()) send_run(std::move(run));
}

// The epoch of a run's items (InRuns keeps to one): a replica that holds a
// newer one refuses the run (kSenderEpoch: the sender's, which the
// transport writes in).
template <typename Item>
uint64_t EpochOf(const std::vector<Item>& run) {
  assert(!run.empty() && std::all_of(run.begin(), run.end(), [&run](const Item& item) {
    return item.epoch == run.front().epoch;
  }));
  return run.front().epoch;
}

template <typename Item>
absl::Duration ShortestTimeout(const std::vector<Item>& items) {
  absl::Duration shortest = absl::InfiniteDuration();
  for (const Item& item : items) shortest = std::min(shortest, item.timeout);
  return shortest;
}

// Whether two peers' held items make the same runs and the same frames: the
// same records (the same shared objects) or keys, in the same order, with
// the same timeouts and epochs. Every owner of a key gets the same items
// from one write or read, so with N owners on few nodes most peers' lists
// are the same.
template <typename Item, typename Same>
bool SameItems(const std::vector<Item>& a, const std::vector<Item>& b, Same same) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].timeout != b[i].timeout || a[i].epoch != b[i].epoch || !same(a[i], b[i])) {
      return false;
    }
  }
  return true;
}

// Sends each peer's list with send(address, items, shared): a list the same
// as an earlier peer's takes the frames built for that peer's (shared is
// null when no other peer has the same list).
template <typename Frames, typename Item, typename Same, typename Send>
void SendSharing(const std::vector<std::pair<const std::string*, std::vector<Item>*>>& lists,
                 Same same, Send send) {
  if (lists.size() == 1) return send(*lists[0].first, std::move(*lists[0].second), nullptr);
  // For each list, the earlier list whose frames it takes (itself: none),
  // and how many lists take each list's frames.
  std::vector<size_t> leader(lists.size());
  std::vector<size_t> takers(lists.size(), 0);
  std::vector<size_t> leaders;
  for (size_t i = 0; i < lists.size(); ++i) {
    leader[i] = i;
    for (size_t l : leaders) {
      if (SameItems(*lists[l].second, *lists[i].second, same)) {
        leader[i] = l;
        ++takers[l];
        break;
      }
    }
    if (leader[i] == i) leaders.push_back(i);
  }
  std::vector<Frames> shared(lists.size());
  for (size_t i = 0; i < lists.size(); ++i) {
    const size_t l = leader[i];
    Frames* frames = takers[l] == 0 ? nullptr : &shared[l];
    if (frames != nullptr && l != i) {
      frames->built = true;
      frames->next = 0;
      frames->last = --takers[l] == 0;
    }
    send(*lists[i].first, std::move(*lists[i].second), frames);
  }
}

// The frame of a run: built, and kept for the peers that take it, or taken.
template <typename Frames, typename Build>
std::string FrameOf(Frames* shared, Build build) {
  if (shared != nullptr && shared->built) {
    assert(shared->next < shared->frames.size());  // the same runs
    if (shared->next < shared->frames.size()) {
      std::string& frame = shared->frames[shared->next++];
      return shared->last ? std::move(frame) : frame;
    }
  }
  std::string frame = build();
  if (shared != nullptr && !shared->built) shared->frames.push_back(frame);
  return frame;
}

}  // namespace

thread_local ReplicaBatcher::Held ReplicaBatcher::held_;

ReplicaBatcher::ReplicaBatcher(SendFunction send, Limits limits)
    : send_(std::move(send)), limits_{std::max<size_t>(limits.max_items, 1), limits.max_bytes} {}

void ReplicaBatcher::Replicate(const std::string& address,
                               std::shared_ptr<const VersionedRecord> record,
                               absl::Duration timeout, ReplicateDone done, uint64_t epoch) {
  ReplicateItem item{std::move(record), timeout, std::move(done), epoch};
  if (Holding()) {
    held_.pending[address].replicates.push_back(std::move(item));
    return;
  }
  std::vector<ReplicateItem> one;
  one.push_back(std::move(item));
  SendReplicates(address, std::move(one));
}

void ReplicaBatcher::Read(const std::string& address, std::shared_ptr<const std::string> key,
                          bool meta_only, absl::Duration timeout, ReadDone done, uint64_t epoch) {
  ReadItem item{std::move(key), timeout, std::move(done), epoch};
  if (meta_only && Holding()) {
    held_.pending[address].reads.push_back(std::move(item));
    return;
  }
  std::vector<ReadItem> one;
  one.push_back(std::move(item));
  SendReads(address, std::move(one), meta_only);
}

ReplicaBatcher::~ReplicaBatcher() { StopHoldingOnThisThread(); }

void ReplicaBatcher::HoldOnThisThread() {
  if (held_.owner != nullptr && held_.owner != this) held_.owner->StopHoldingOnThisThread();
  held_.owner = this;
}

void ReplicaBatcher::Flush() {
  if (!Holding()) return;
  // Callbacks run by a send (a failure answered at once) may queue more:
  // go round until nothing is left, so nothing waits while the loop blocks.
  while (!held_.pending.empty()) {
    PendingByAddress pending;
    pending.swap(held_.pending);
    std::vector<std::pair<const std::string*, std::vector<ReadItem>*>> reads;
    std::vector<std::pair<const std::string*, std::vector<ReplicateItem>*>> replicates;
    for (auto& [address, requests] : pending) {
      if (!requests.reads.empty()) reads.emplace_back(&address, &requests.reads);
      if (!requests.replicates.empty()) replicates.emplace_back(&address, &requests.replicates);
    }
    SendSharing<SharedFrames>(
        reads, [](const ReadItem& a, const ReadItem& b) { return *a.key == *b.key; },
        [this](const std::string& address, std::vector<ReadItem> items, SharedFrames* shared) {
          SendReads(address, std::move(items), true, shared);
        });
    SendSharing<SharedFrames>(
        replicates,
        [](const ReplicateItem& a, const ReplicateItem& b) { return a.record == b.record; },
        [this](const std::string& address, std::vector<ReplicateItem> items, SharedFrames* shared) {
          SendReplicates(address, std::move(items), shared);
        });
  }
}

void ReplicaBatcher::StopHoldingOnThisThread() {
  if (!Holding()) return;
  Flush();
  assert(held_.pending.empty());  // Flush goes round until nothing is held
  held_.owner = nullptr;
}

void ReplicaBatcher::Count(size_t items) {
  requests_sent_.fetch_add(1, std::memory_order_relaxed);
  items_sent_.fetch_add(items, std::memory_order_relaxed);
  if (requests_counter_ != nullptr) requests_counter_->Inc();
  if (items_counter_ != nullptr) items_counter_->Inc(items);
}

void ReplicaBatcher::SendReplicates(const std::string& address, std::vector<ReplicateItem> items,
                                    SharedFrames* reuse) {
  InRuns(
      std::move(items), limits_,
      [](const ReplicateItem& item) {
        return static_cast<uint64_t>(item.record->key.size() + item.record->value.size());
      },
      [this, &address, reuse](std::vector<ReplicateItem> run) {
        std::string frame = FrameOf(reuse, [this, &run] {
          frames_built_.fetch_add(1, std::memory_order_relaxed);
          std::vector<const VersionedRecord*> records;
          records.reserve(run.size());
          for (const ReplicateItem& item : run) records.push_back(item.record.get());
          return ReplicateRequestFrame(absl::MakeConstSpan(records), false, EpochOf(run));
        });
        const absl::Duration timeout = ShortestTimeout(run);
        Count(run.size());
        auto shared = std::make_shared<std::vector<ReplicateItem>>(std::move(run));
        send_(address, std::move(frame), timeout,
              [shared](absl::StatusOr<std::string> answer) {
                std::vector<ReplicateItem>& items = *shared;
                // The send function calls back once: no item is answered twice
                // (the items are cleared below).
                assert(!items.empty());
                absl::StatusOr<ReplicateAnswer> parsed =
                    answer.ok() ? ParseReplicateAnswer(*answer, items.size())
                                : absl::StatusOr<ReplicateAnswer>(answer.status());
                assert(!parsed.ok() || (parsed->applied.size() == items.size() &&
                                        parsed->held_timestamps.size() == items.size()));
                for (size_t i = 0; i < items.size(); ++i) {
                  if (!parsed.ok()) {
                    items[i].done(parsed.status());
                    continue;
                  }
                  items[i].done(Applied{parsed->applied[i], parsed->held_timestamps[i]});
                }
                items.clear();
              });
      });
}

void ReplicaBatcher::SendReads(const std::string& address, std::vector<ReadItem> items,
                               bool meta_only, SharedFrames* reuse) {
  InRuns(
      std::move(items), limits_,
      [](const ReadItem& item) { return static_cast<uint64_t>(item.key->size()); },
      [this, &address, meta_only, reuse](std::vector<ReadItem> run) {
        // Views of the items' keys, which the items keep until answered.
        std::vector<absl::string_view> keys;
        keys.reserve(run.size());
        for (const ReadItem& item : run) keys.push_back(*item.key);
        std::string frame = FrameOf(reuse, [&] {
          frames_built_.fetch_add(1, std::memory_order_relaxed);
          return ReadRecordsRequestFrame(keys, meta_only, EpochOf(run));
        });
        const absl::Duration timeout = ShortestTimeout(run);
        Count(run.size());
        auto shared = std::make_shared<std::vector<ReadItem>>(std::move(run));
        send_(address, std::move(frame), timeout,
              [shared, keys = std::move(keys),
               prefetch = prefetch_](absl::StatusOr<std::string> answer) {
                std::vector<ReadItem>& items = *shared;
                assert(!items.empty());  // called back once (cleared below)
                absl::StatusOr<std::vector<VersionedRecord>> records =
                    answer.ok() ? ParseRecordsResult(*answer, keys, /*with_keys=*/false)
                                : absl::StatusOr<std::vector<VersionedRecord>>(answer.status());
                assert(!records.ok() || records->size() == items.size());
                for (size_t i = 0; i < items.size(); ++i) {
                  if (prefetch != nullptr && records.ok()) {
                    PrefetchWindow(
                        i, items.size(), [&keys](size_t at) { return absl::string_view(keys[at]); },
                        *prefetch);
                  }
                  if (!records.ok()) {
                    items[i].done(records.status());
                  } else {
                    items[i].done(std::move((*records)[i]));
                  }
                }
                items.clear();
              });
      });
}

}  // namespace logkv::server::cluster
