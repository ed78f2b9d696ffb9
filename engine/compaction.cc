// Compaction (rewrite immutable segments without their dead records), hint
// files, and the TTL sweeper.
//
// Compaction copies live records in batches under the shard's exclusive lock,
// so the liveness check, the copy and the index update are one step that no
// writer can interleave; between batches readers and writers run freely and
// the copy is paced to compaction_bytes_per_second. Crash safety: outputs are
// written as *.compacting, synced, renamed to *.log and given hint files
// before any old segment is removed; a crash at any point leaves either the
// old segments or both (recovery keeps one copy of each event).
#include <algorithm>
#include <cassert>
#include <cstring>
#include <optional>
#include <thread>

#include <xxhash.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/hint_file.h"
#include "engine/shard.h"

namespace logkv::engine {

using format::RecordType;

namespace {

constexpr size_t kCompactionBatchRecords = 256;
constexpr uint64_t kCompactionBatchBytes = 1 << 20;
constexpr uint64_t kCompactionWritebackBytes = 4 << 20;

bool IsVictim(const Segment& segment, const Options& options, bool force) {
  const uint64_t data = segment.size() - format::kSegmentHeaderBytes;
  if (force || segment.damaged || data == 0) return true;
  return segment.dead_bytes >= options.compaction_dead_bytes ||
         static_cast<double>(segment.dead_bytes) >=
             options.compaction_dead_fraction * static_cast<double>(data);
}

}  // namespace

absl::Status Shard::WriteHint(const std::shared_ptr<Segment>& segment) {
  HintWriter writer(segment->id(), segment->size());
  uint64_t offset = format::kSegmentHeaderBytes;
  while (offset < segment->size()) {
    auto bytes = segment->ReadToEnd(offset);
    if (!bytes.ok()) return bytes.status();
    DecodeResult decoded = DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
    if (decoded.outcome != DecodeOutcome::kRecord) {
      return absl::DataLossError(
          absl::StrCat(segment->path(), " at offset ", offset, ": ", decoded.error));
    }
    writer.Add(decoded.record, static_cast<uint32_t>(offset),
               static_cast<uint32_t>(decoded.record_bytes));
    offset += decoded.record_bytes;
  }
  if (absl::Status status = writer.Finish(context_.fs, PathOf(HintFileName(segment->id())),
                                          segment->size(), IndexEntries());
      !status.ok()) {
    return status;
  }
  absl::MutexLock lock(&mu_);
  segment->has_hint = true;
  return absl::OkStatus();
}

absl::Status Shard::WriteMissingHints() {
  // Under compaction_mu_, so a compaction never removes a segment (and its
  // hint) while its hint is being written here.
  absl::MutexLock compaction_lock(&compaction_mu_);
  std::vector<std::shared_ptr<Segment>> need_hints;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    for (const auto& [id, segment] : segments_) {
      // Sealed: immutable, its size final, so the hint stays valid.
      if (segment == active_ || segment->writable() || segment->has_hint || segment->damaged) {
        continue;
      }
      need_hints.push_back(segment);
    }
  }
  std::sort(need_hints.begin(), need_hints.end(),
            [](const auto& a, const auto& b) { return a->id() < b->id(); });
  for (const std::shared_ptr<Segment>& segment : need_hints) {
    if (absl::Status status = WriteHint(segment); !status.ok()) return status;
  }
  return absl::OkStatus();
}

std::vector<std::shared_ptr<Segment>> Shard::PickCompactionVictims(bool force) {
  struct Candidate {
    std::shared_ptr<Segment> segment;
    double dead_fraction;
    bool urgent;  // damaged or empty: goes first
  };
  std::vector<Candidate> candidates;  // past a per-segment trigger
  std::vector<Candidate> garbage;     // dead enough to help the space bound
  std::vector<std::shared_ptr<Segment>> small;
  uint64_t log_bytes = 0;
  uint64_t dead_bytes = 0;
  for (const auto& [id, segment] : segments_) {
    log_bytes += segment->size();
    dead_bytes += segment->dead_bytes;
    if (segment == active_ || segment->writable()) continue;
    const uint64_t data = segment->size() - format::kSegmentHeaderBytes;
    const double dead_fraction =
        data == 0 ? 1.0 : static_cast<double>(segment->dead_bytes) / static_cast<double>(data);
    if (IsVictim(*segment, options_, force)) {
      candidates.push_back({segment, dead_fraction, segment->damaged || data == 0});
    } else if (segment->size() < options_.segment_bytes / 4) {
      small.push_back(segment);
    } else if (dead_fraction >= options_.compaction_min_dead_fraction) {
      garbage.push_back({segment, dead_fraction, false});
    }
  }
  // The space bound: while the log is over compaction_space_amp times its
  // live bytes, the segments with the most garbage join until rewriting them
  // would bring it back under (dead bytes of the active segment count, but
  // only a roll makes them reclaimable).
  const uint64_t live_bytes = log_bytes - std::min(log_bytes, dead_bytes);
  if (!force && options_.compaction_space_amp > 0 &&
      static_cast<double>(log_bytes) >
          options_.compaction_space_amp * static_cast<double>(live_bytes)) {
    std::sort(garbage.begin(), garbage.end(), [](const Candidate& a, const Candidate& b) {
      return a.dead_fraction > b.dead_fraction;
    });
    double excess = static_cast<double>(log_bytes) -
                    options_.compaction_space_amp * static_cast<double>(live_bytes);
    for (const Candidate& candidate : candidates) {
      excess -= static_cast<double>(candidate.segment->dead_bytes);
    }
    for (Candidate& candidate : garbage) {
      if (excess <= 0) break;
      excess -= static_cast<double>(candidate.segment->dead_bytes);
      candidates.push_back(std::move(candidate));
    }
  }

  std::vector<std::shared_ptr<Segment>> victims;
  if (force) {
    for (Candidate& candidate : candidates) victims.push_back(std::move(candidate.segment));
  } else {
    // Small steps: one run copies about one segment of live data, so its
    // victims go (and their space with them) before the next run starts,
    // and the disk never holds much more than one run's output twice.
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) {
                       if (a.urgent != b.urgent) return a.urgent;
                       return a.dead_fraction > b.dead_fraction;
                     });
    uint64_t live_to_copy = 0;
    for (Candidate& candidate : candidates) {
      if (!victims.empty() && !candidate.urgent && live_to_copy >= options_.segment_bytes) break;
      live_to_copy +=
          candidate.segment->size() - std::min(candidate.segment->size(), candidate.segment->dead_bytes);
      victims.push_back(std::move(candidate.segment));
    }
  }
  if (small.size() >= std::max<uint32_t>(2, options_.compaction_small_segments)) {
    victims.insert(victims.end(), small.begin(), small.end());
  }
  std::sort(victims.begin(), victims.end(),
            [](const auto& a, const auto& b) { return a->id() < b->id(); });
  return victims;
}

bool Shard::NeedsCompaction() {
  absl::ReaderMutexLock lock(&mu_);
  return !PickCompactionVictims(false).empty();
}

absl::Status Shard::Compact(bool force) {
  absl::MutexLock compaction_lock(&compaction_mu_);
  CompactionRun run;
  absl::Status status = RunCompaction(force, &run);
  if (!status.ok() && !run.victims_dropped && !run.outputs.empty()) AbandonOutputs(run);
  return status;
}

absl::Status Shard::RunCompaction(bool force, CompactionRun* run) {
  std::vector<std::shared_ptr<Segment>>& victims = run->victims;
  // A tombstone (or expired record) may be dropped only if no older record
  // of its key can exist outside the segments being compacted: every record
  // of a segment outside the set has a sequence >= that segment's minimum.
  uint64_t min_sequence_outside;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    victims = PickCompactionVictims(force);
    if (victims.empty()) return absl::OkStatus();
    min_sequence_outside = next_sequence_;
    for (const auto& [id, segment] : segments_) {
      if (std::find(victims.begin(), victims.end(), segment) == victims.end()) {
        min_sequence_outside = std::min(min_sequence_outside, segment->min_sequence);
      }
    }
  }

  uint64_t total_bytes = 0;
  for (const auto& victim : victims) total_bytes += victim->size();
  counters_.compaction_running.store(true);
  counters_.compaction_total_bytes.store(total_bytes);
  counters_.compaction_progress_bytes.store(0);
  const int64_t start_ns = absl::GetCurrentTimeNanos();
  const int64_t now = context_.clock->NowUnixMs();
  const bool keep_history = options_.versions_kept > 1;

  std::vector<std::shared_ptr<Segment>>& outputs = run->outputs;
  std::vector<HintWriter> hints;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t dropped = 0;
  // Entries whose tombstone (or expired record) the run leaves behind, and
  // where it was: removed from the index when the victims go.
  std::vector<std::pair<uint32_t, RecordLocation>> drops;
  std::string rewritten;

  auto fail = [&](absl::Status status) {
    counters_.compaction_running.store(false);
    context_.Log(LogLevel::kError, absl::StrCat("compaction of shard ", shard_id_,
                                                " stopped: ", status.message()));
    return status;
  };

  // Copies a record into the current output segment (a new one when it is
  // full).
  auto append_output = [&](absl::string_view raw, const LogRecord& copy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::StatusOr<RecordLocation> {
    if (outputs.empty() || outputs.back()->remaining() < raw.size()) {
      const uint32_t output_id = next_segment_id_;
      const uint64_t capacity =
          std::max<uint64_t>(options_.segment_bytes, raw.size() + format::kSegmentHeaderBytes);
      auto output = NewSegment(format::kSegmentFlagCompacted, capacity,
                               PathOf(SegmentFileName(output_id) + ".compacting"));
      if (!output.ok()) return output.status();
      outputs.push_back(*output);
      // Room for the output's entries at once: grown by doubling, the
      // buffer's copies (10 ms for a 64 MiB output's) came under the lock.
      hints.emplace_back(output_id, capacity);
    }
    Segment& output = *outputs.back();
    auto new_offset = output.Append(raw);
    if (!new_offset.ok()) return new_offset.status();
    output.min_sequence = std::min(output.min_sequence, copy.sequence);
    output.max_sequence = std::max(output.max_sequence, copy.sequence);
    hints.back().Add(copy, *new_offset, static_cast<uint32_t>(raw.size()));
    bytes_written += raw.size();
    return RecordLocation{output.id(), *new_offset, static_cast<uint32_t>(raw.size())};
  };

  // A batch's records, decoded before the lock is taken: a victim is sealed
  // (immutable) and compaction_mu_ keeps it from being removed, so reading
  // and verifying it needs no lock; the exclusive section is left with the
  // index look-ups, the copies and the index updates.
  struct Decoded {
    LogRecord record;
    absl::string_view raw;
    uint32_t offset;
    uint64_t key_hash;
  };
  std::vector<Decoded> batch;
  batch.reserve(kCompactionBatchRecords);
  uint64_t written_since_writeback = 0;
  // The longest the run held the shard's mutex at a stretch, and where: what
  // every reader and writer of the shard may have waited (in the log line).
  int64_t longest_hold_ns = 0;
  const char* longest_hold_in = "nothing";
  auto held = [&](int64_t since_ns, const char* where) {
    const int64_t held_ns = absl::GetCurrentTimeNanos() - since_ns;
    if (held_ns > longest_hold_ns) {
      longest_hold_ns = held_ns;
      longest_hold_in = where;
    }
  };

  for (const std::shared_ptr<Segment>& victim : victims) {
    uint64_t offset = format::kSegmentHeaderBytes;
    while (offset < victim->size()) {
      const uint64_t batch_start = offset;
      batch.clear();
      while (offset < victim->size() && batch.size() < kCompactionBatchRecords &&
             offset - batch_start < kCompactionBatchBytes) {
        auto bytes = victim->ReadToEnd(offset);
        if (!bytes.ok()) return fail(bytes.status());
        DecodeResult decoded =
            DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
        if (decoded.outcome != DecodeOutcome::kRecord) {
          if (!victim->damaged) {
            return fail(absl::DataLossError(
                absl::StrCat(victim->path(), " at offset ", offset, ": ", decoded.error)));
          }
          // Repair: skip to the next record that verifies (8-byte steps).
          offset += format::kRecordAlignment;
          continue;
        }
        batch.push_back({decoded.record, bytes->substr(0, decoded.record_bytes),
                         static_cast<uint32_t>(offset), HashKey(decoded.record.key)});
        offset += decoded.record_bytes;
      }
      // The output's blocks and pages for the batch, before the lock: a page
      // fault or a block allocation under it (a file system journal's wait
      // among them) would hold every reader and writer of the shard.
      if (!outputs.empty()) {
        uint64_t batch_bytes = 0;
        for (const Decoded& item : batch) batch_bytes += item.raw.size();
        outputs.back()->Prepare(batch_bytes);
      }
      {
        absl::MutexLock lock(&mu_);
        const int64_t locked_ns = absl::GetCurrentTimeNanos();
        const size_t outputs_before = outputs.size();
        for (const Decoded& item : batch) {
          const LogRecord& record = item.record;
          const RecordLocation old_location{victim->id(), item.offset,
                                            static_cast<uint32_t>(item.raw.size())};
          absl::string_view raw = item.raw;

          const uint32_t id = index_.Find(KeyRef{record.key, item.key_hash});
          if (record.is_forget()) {
            // A Forget is kept while an older record of its key may remain
            // outside the victims (it would revive the key at start-up);
            // once the key was written again it has no work left.
            if (id != KeyIndex::kNoEntry || record.sequence < min_sequence_outside) continue;
            auto location = append_output(raw, record);
            if (!location.ok()) return fail(location.status());
            continue;
          }
          if (id == KeyIndex::kNoEntry) continue;
          IndexEntry& entry = index_.at(id);
          const bool is_current = entry.location() == old_location;
          uint32_t history_node = VersionChains::kNone;
          if (!is_current && keep_history) {
            history_.ForEach(id, [&](uint32_t node) {
              mu_.AssertHeld();
              if (history_.location(node) == old_location) history_node = node;
            });
          }
          if (!is_current && history_node == VersionChains::kNone) continue;  // dead

          LogRecord copy = record;
          if (is_current && !entry.present()) {
            const bool tombstone = (entry.flags & kEntryTombstone) != 0;
            const int64_t gone_since_ms = tombstone ? HybridClock::PhysicalMs(entry.timestamp)
                                                    : index_.expiry(id);
            if (record.sequence < min_sequence_outside &&
                (!tombstone || options_.collect_tombstones || !Summarised(record.key)) &&
                now - gone_since_ms >= options_.tombstone_grace_ms) {
              // Dropped once the run has finished (below): a run that stops
              // before then leaves the entry, and its record in the victim,
              // as they were.
              drops.push_back({id, old_location});
              continue;
            }
            if (!tombstone && !record.value.empty()) {
              // Keep an expired record only as a shadow of older ones: same
              // event, no value.
              copy.value = {};
              copy.flags = 0;
              rewritten.clear();
              EncodeRecord(copy, &rewritten);
              raw = rewritten;
            }
          }

          auto new_location = append_output(raw, copy);
          if (!new_location.ok()) return fail(new_location.status());
          written_since_writeback += raw.size();
          if (is_current) {
            entry.set_location(*new_location);
            entry.flags &= static_cast<uint8_t>(~kEntryShadowCounted);
          } else {
            history_.location(history_node) = *new_location;
          }
        }
        held(locked_ns,
             outputs.size() != outputs_before ? "a batch that began an output" : "a batch");
      }
      bytes_read += offset - batch_start;
      // Start the write-back of the output as it grows, so the sync at the
      // end does not write a whole segment in one burst that the
      // foreground's syncs queue behind.
      if (written_since_writeback >= kCompactionWritebackBytes && !outputs.empty()) {
        outputs.back()->StartWriteback();
        written_since_writeback = 0;
      }
      counters_.compaction_progress_bytes.store(bytes_read);
      // Pace the copy: sleep off any lead over the configured rate.
      if (options_.compaction_bytes_per_second > 0) {
        const int64_t due_ns = static_cast<int64_t>(
            static_cast<double>(bytes_read) * 1e9 /
            static_cast<double>(options_.compaction_bytes_per_second));
        const int64_t lead_ns = due_ns - (absl::GetCurrentTimeNanos() - start_ns);
        if (lead_ns > 0) absl::SleepFor(absl::Nanoseconds(std::min<int64_t>(lead_ns, 100'000'000)));
      }
    }
  }

  // Make the outputs durable and final before any old segment goes.
  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::shared_ptr<Segment>& output = outputs[i];
    if (absl::Status status = output->Sync(); !status.ok()) return fail(status);
    {
      absl::MutexLock lock(&mu_);
      const int64_t locked_ns = absl::GetCurrentTimeNanos();
      if (absl::Status status = output->Seal(context_.fs); !status.ok()) return fail(status);
      if (absl::Status status =
              output->Rename(context_.fs, PathOf(SegmentFileName(output->id())));
          !status.ok()) {
        return fail(status);
      }
      held(locked_ns, "sealing an output");
    }
    if (absl::Status status = hints[i].Finish(context_.fs, PathOf(HintFileName(output->id())),
                                              output->size(), IndexEntries());
        !status.ok()) {
      return fail(status);
    }
    absl::MutexLock lock(&mu_);
    output->has_hint = true;
  }
  if (absl::Status status = context_.fs->SyncDir(directory_); !status.ok()) return fail(status);
  // A record compaction left behind is dead because a newer one superseded
  // it, and that newer one may still be unsynced in the active segment (under
  // kNever or kInterval). Sync it before the old one is deleted, or a machine
  // crash would lose both.
  if (absl::Status status = SyncNow(); !status.ok()) return fail(status);
  // The victims' ids go to the list start-up completes before the first of
  // them leaves segments_: from here on they go all or none. A list that
  // cannot be written stops the run, which is then undone.
  std::vector<uint32_t> removals;
  for (const std::shared_ptr<Segment>& victim : victims) removals.push_back(victim->id());
  if (absl::Status status = ListRemovals(&removals); !status.ok()) return fail(status);

  // The entries left behind go, in batches as the copy went: the victims
  // are still the shard's, so until an entry goes it still reads its
  // tombstone there. An entry a writer changed since keeps its new record.
  for (size_t first = 0; first < drops.size(); first += kCompactionBatchRecords) {
    absl::MutexLock lock(&mu_);
    const int64_t locked_ns = absl::GetCurrentTimeNanos();
    const size_t end = std::min(drops.size(), first + kCompactionBatchRecords);
    for (size_t i = first; i < end; ++i) {
      const auto& [id, location] = drops[i];
      if (index_.contains_id(id) && index_.at(id).location() == location) {
        RemoveEntry(id);
        ++dropped;
      }
    }
    held(locked_ns, "dropping tombstones");
  }

  uint64_t reclaimed = 0;
  {
    absl::MutexLock lock(&mu_);
    const int64_t locked_ns = absl::GetCurrentTimeNanos();
    run->victims_dropped = true;
    for (const std::shared_ptr<Segment>& victim : victims) {
      reclaimed += victim->size();
      // The index snapshot on disk describes it: the next open refuses
      // that snapshot (NeedsCheckpoint then asks for another sooner).
      if (victim->id() < snapshot_tail_id_) snapshot_stale_ = true;
      segments_.erase(victim->id());
      auto it = std::find(original_ids_.begin(), original_ids_.end(), victim->id());
      if (it != original_ids_.end()) {
        original_ids_.erase(it);
        const uint64_t last = victim->max_sequence > 0 ? victim->max_sequence
                                                       : victim->header().base_sequence - 1;
        compacted_through_sequence_ = std::max(compacted_through_sequence_, last);
      }
    }
    for (const auto& output : outputs) reclaimed -= std::min(reclaimed, output->size());
    held(locked_ns, "dropping the victims");
  }
  if (absl::Status status = RemoveListed(removals); !status.ok()) return fail(status);

  counters_.compactions.fetch_add(1);
  counters_.compaction_bytes_read.fetch_add(bytes_read);
  counters_.compaction_bytes_written.fetch_add(bytes_written);
  counters_.compaction_bytes_reclaimed.fetch_add(reclaimed);
  counters_.tombstones_dropped.fetch_add(dropped);
  counters_.compaction_running.store(false);
  context_.Log(LogLevel::kInfo,
               absl::StrCat("compacted shard ", shard_id_, ": ", victims.size(), " segments, ",
                            bytes_read, " bytes read, ", bytes_written, " written, ", dropped,
                            " tombstones dropped, in ",
                            (absl::GetCurrentTimeNanos() - start_ns) / 1'000'000,
                            " ms; the shard's lock held at most ",
                            absl::StrFormat("%.2f", static_cast<double>(longest_hold_ns) / 1e6),
                            " ms at a stretch (", longest_hold_in, ")"));
  return absl::OkStatus();
}

void Shard::AbandonOutputs(const CompactionRun& run) {
  const bool keep_history = options_.versions_kept > 1;
  std::vector<uint32_t> output_ids;
  for (const std::shared_ptr<Segment>& output : run.outputs) output_ids.push_back(output->id());
  auto in_outputs = [&](const RecordLocation& location) {
    return std::find(output_ids.begin(), output_ids.end(), location.segment_id) !=
           output_ids.end();
  };
  // A record's header, read without its checksum: the copies in the outputs
  // are this run's own writes, and the sequence number is all that is asked.
  auto header_at = [](const Segment& segment, uint64_t offset) {
    std::optional<format::RecordHeader> header;
    if (offset + format::kRecordHeaderBytes > segment.size()) return header;
    auto bytes = segment.Read(offset, format::kRecordHeaderBytes);
    if (!bytes.ok() || bytes->size() < format::kRecordHeaderBytes) return header;
    header.emplace();
    std::memcpy(&*header, bytes->data(), format::kRecordHeaderBytes);
    return header;
  };
  // The events the run copied, by sequence number, and whether the copy of
  // each is an expired record's shadow (written without its value): the
  // outputs are read once, front to back, before anything changes.
  // If any of it cannot be read, or a victim cannot be read again below,
  // some entry may still point into an output: then the outputs stay.
  bool complete = true;
  absl::flat_hash_map<uint64_t, bool> moved;
  for (const std::shared_ptr<Segment>& output : run.outputs) {
    uint64_t offset = format::kSegmentHeaderBytes;
    while (offset < output->size()) {
      std::optional<format::RecordHeader> header = header_at(*output, offset);
      if (!header.has_value() || header->type == 0) {
        complete = false;
        break;
      }
      moved[header->sequence] = header->type == static_cast<uint8_t>(RecordType::kPut) &&
                                header->value_size == 0;
      offset += format::RecordBytes(header->key_size, header->value_size);
    }
  }
  auto sequence_at = [&](const RecordLocation& location) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    auto it = segments_.find(location.segment_id);
    if (it == segments_.end()) return uint64_t{0};
    std::optional<format::RecordHeader> header = header_at(*it->second, location.offset);
    return header.has_value() ? header->sequence : uint64_t{0};
  };

  // Every record the run moved came from a victim, read in the order the run
  // read them: each victim's records are read again, and an entry or older
  // version that points into an output at the same event goes back to the
  // victim's copy. Whatever a writer changed since points elsewhere and is
  // left alone. In batches, as the run copied.
  struct Item {
    std::string key;
    uint64_t key_hash;
    uint64_t sequence;
    size_t value_size;
    RecordType type;
    RecordLocation location;
  };
  std::vector<Item> batch;
  uint64_t restored = 0;
  uint64_t charged_back = 0;
  for (const std::shared_ptr<Segment>& victim : run.victims) {
    uint64_t offset = format::kSegmentHeaderBytes;
    bool readable = true;
    while (readable && offset < victim->size()) {
      batch.clear();
      const uint64_t batch_start = offset;
      while (offset < victim->size() && batch.size() < kCompactionBatchRecords &&
             offset - batch_start < kCompactionBatchBytes) {
        auto bytes = victim->ReadToEnd(offset);
        if (!bytes.ok()) {
          readable = false;
          complete = false;
          break;
        }
        const DecodeResult decoded =
            DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
        if (decoded.outcome != DecodeOutcome::kRecord) {
          // The run stopped where this victim stopped verifying (or, in
          // repair mode, skipped ahead as here): it copied nothing past it.
          if (!victim->damaged) {
            readable = false;
            break;
          }
          offset += format::kRecordAlignment;
          continue;
        }
        batch.push_back({std::string(decoded.record.key), HashKey(decoded.record.key),
                         decoded.record.sequence, decoded.record.value.size(),
                         decoded.record.type,
                         RecordLocation{victim->id(), static_cast<uint32_t>(offset),
                                        static_cast<uint32_t>(decoded.record_bytes)}});
        offset += decoded.record_bytes;
      }
      absl::MutexLock lock(&mu_);
      for (const Item& item : batch) {
        const auto copy = moved.find(item.sequence);
        if (copy == moved.end()) continue;  // not copied: as it was before the run
        // The copy of a record expired before the run is its shadow, and the
        // sweeper counted the victim's record dead then. (A put whose value
        // is empty cannot be told apart: taken for expired since.) A Forget
        // is never counted dead while it is kept.
        const bool counted_before =
            (copy->second && item.value_size > 0) || item.type == RecordType::kForget;
        // One copy an event: a second record of it in the victims (a copy
        // an interrupted compaction left, counted dead when it was loaded)
        // is as it was before the run.
        moved.erase(copy);
        const uint32_t id = index_.Find(KeyRef{item.key, item.key_hash});
        bool referenced = false;
        if (id != KeyIndex::kNoEntry) {
          IndexEntry& entry = index_.at(id);
          if (in_outputs(entry.location()) && sequence_at(entry.location()) == item.sequence) {
            entry.set_location(item.location);
            ++restored;
          }
          if (entry.location() == item.location) {
            referenced = true;
            if ((entry.flags & kEntryExpired) != 0) {
              // Expired before the copy, the copy is its shadow and the
              // victim's record is counted dead already; expired since, the
              // sweeper counted the copy, and the victim's record is
              // counted now.
              if (!counted_before) {
                MarkDead(item.location);
                charged_back += item.location.record_bytes;
              }
              entry.flags |= kEntryShadowCounted;
            }
          } else if (keep_history) {
            history_.ForEach(id, [&](uint32_t node) {
              mu_.AssertHeld();  // ForEach calls back before it returns
              RecordLocation& location = history_.location(node);
              if (in_outputs(location) && sequence_at(location) == item.sequence) {
                location = item.location;
                ++restored;
              }
              referenced = referenced || location == item.location;
            });
          }
        }
        // Copied, then superseded, expired or dropped from the history while
        // the run went on: what that counted dead was the copy's bytes.
        if (!referenced && !counted_before) {
          MarkDead(item.location);
          charged_back += item.location.record_bytes;
        }
      }
    }
  }
  // Nothing points into the outputs now. An output still named *.compacting
  // goes whatever happens (start-up removes one left behind). One already
  // renamed must not stay on disk unknown to segments_: a later run would
  // not count its records as outside, and could drop a tombstone whose older
  // put it holds. So it leaves segments_ only once its file is gone, and
  // otherwise stays, every byte of it dead, for a later run to take.
  if (!complete) {
    // Entries may still point into the outputs: they stay, as segments the
    // shard reads (a *.compacting one, unsynced, goes at the next start,
    // when the victims it copied are read again).
    context_.Log(LogLevel::kError,
                 absl::StrCat("compaction of shard ", shard_id_, " undone only in part (",
                              restored, " records point at their segments again): a segment "
                              "could not be read back, and its ", run.outputs.size(),
                              " outputs stay"));
    return;
  }
  std::vector<uint32_t> kept;
  for (const std::shared_ptr<Segment>& output : run.outputs) {
    const bool renamed = !absl::EndsWith(output->path(), ".compacting");
    bool gone = true;
    for (const std::string& path : {output->path(), PathOf(HintFileName(output->id()))}) {
      if (!context_.fs->FileExists(path)) continue;
      if (absl::Status status = context_.fs->RemoveFile(path); !status.ok()) {
        context_.Log(LogLevel::kWarning, absl::StrCat("could not remove ", path, ": ",
                                                      status.message()));
        if (path == output->path()) gone = false;
      }
    }
    if (renamed && !gone) kept.push_back(output->id());
  }
  (void)context_.fs->SyncDir(directory_);
  {
    absl::MutexLock lock(&mu_);
    for (const std::shared_ptr<Segment>& output : run.outputs) {
      if (std::find(kept.begin(), kept.end(), output->id()) != kept.end()) {
        output->dead_bytes = output->size() - format::kSegmentHeaderBytes;
      } else {
        segments_.erase(output->id());
      }
    }
  }
  context_.Log(LogLevel::kWarning,
               absl::StrCat("compaction of shard ", shard_id_, " undone: ", restored,
                            " records point at their segments again (", charged_back,
                            " bytes of them counted dead), ", run.outputs.size() - kept.size(),
                            " unfinished outputs dropped",
                            kept.empty() ? std::string()
                                         : absl::StrCat(", ", kept.size(),
                                                        " kept whole (their files would not go)")));
}

namespace {

std::string RemovalsBody(const std::vector<uint32_t>& ids) {
  return absl::StrCat("logkv-removing\n", absl::StrJoin(ids, " "), "\n");
}

}  // namespace

absl::Status Shard::ReadRemovals(std::vector<uint32_t>* ids) {
  const std::string list = PathOf(format::kRemovalsName);
  if (!context_.fs->FileExists(list)) return absl::OkStatus();
  auto text = context_.fs->ReadFile(list);
  if (!text.ok()) return text.status();
  // Written under a temporary name and renamed once synced: a list that
  // does not verify was not written by this code.
  const size_t checksum_at = text->rfind("checksum ");
  uint64_t checksum = 0;
  bool valid = checksum_at != std::string::npos &&
               absl::StartsWith(*text, "logkv-removing\n") &&
               absl::SimpleHexAtoi(absl::StripAsciiWhitespace(
                                       absl::string_view(*text).substr(checksum_at + 9)),
                                   &checksum) &&
               XXH3_64bits(text->data(), checksum_at) == checksum;
  std::vector<uint32_t> read;
  if (valid) {
    const absl::string_view body = absl::string_view(*text).substr(0, checksum_at);
    std::vector<absl::string_view> lines = absl::StrSplit(body, '\n', absl::SkipEmpty());
    valid = lines.size() <= 2;
    if (valid && lines.size() == 2) {
      for (absl::string_view word : absl::StrSplit(lines[1], ' ', absl::SkipEmpty())) {
        uint32_t id;
        if (!absl::SimpleAtoi(word, &id)) valid = false;
        read.push_back(id);
      }
    }
  }
  if (!valid) {
    return absl::DataLossError(absl::StrCat(
        list, " does not verify: it names segments a compaction replaced, and without it "
              "some of them could revive deleted keys; --repair sets it aside"));
  }
  ids->insert(ids->end(), read.begin(), read.end());
  return absl::OkStatus();
}

absl::Status Shard::ListRemovals(std::vector<uint32_t>* ids) {
  // A list an earlier run left (its unlinks failed) is taken in, not
  // replaced: what it names must still go.
  if (absl::Status status = ReadRemovals(ids); !status.ok()) return status;
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
  const std::string list = PathOf(format::kRemovalsName);
  const std::string body = RemovalsBody(*ids);
  const std::string text =
      absl::StrCat(body, "checksum ", absl::Hex(XXH3_64bits(body.data(), body.size()),
                                                absl::kZeroPad16),
                   "\n");
  const std::string temporary = list + ".tmp";
  if (absl::Status status = context_.fs->WriteFile(temporary, text, /*sync=*/true); !status.ok()) {
    return status;
  }
  if (absl::Status status = context_.fs->RenameFile(temporary, list); !status.ok()) return status;
  // Renamed, the list is what a start would read: the run can no longer be
  // undone (its outputs hold what the list's segments held), so it goes on,
  // and the sync of the unlinks that follows is tried again.
  if (absl::Status status = context_.fs->SyncDir(directory_); !status.ok()) {
    context_.Log(LogLevel::kWarning, absl::StrCat("syncing ", directory_, " after writing ",
                                                  list, ": ", status.message()));
  }
  return absl::OkStatus();
}

absl::Status Shard::RemoveListed(const std::vector<uint32_t>& ids) {
  // The list's entry must be durable before the first unlink is.
  if (absl::Status status = context_.fs->SyncDir(directory_); !status.ok()) return status;
  for (const uint32_t id : ids) {
    for (const std::string& path : {PathOf(SegmentFileName(id)), PathOf(HintFileName(id))}) {
      if (!context_.fs->FileExists(path)) continue;
      if (absl::Status status = context_.fs->RemoveFile(path); !status.ok()) return status;
    }
  }
  if (absl::Status status = context_.fs->SyncDir(directory_); !status.ok()) return status;
  // Once the unlinks are durable the list has done its work; should its
  // own removal be lost, start-up finds nothing left to remove.
  return context_.fs->RemoveFile(PathOf(format::kRemovalsName));
}

absl::Status Shard::FinishRemovals() {
  const std::string list = PathOf(format::kRemovalsName);
  if (context_.fs->FileExists(list + ".tmp")) {
    // A list whose writing a crash cut short: nothing was removed after it.
    if (absl::Status status = context_.fs->RemoveFile(list + ".tmp"); !status.ok()) return status;
  }
  if (!context_.fs->FileExists(list)) return absl::OkStatus();
  std::vector<uint32_t> ids;
  if (absl::Status status = ReadRemovals(&ids); !status.ok()) {
    if (!options_.repair || !absl::IsDataLoss(status)) return status;
    context_.Log(LogLevel::kWarning,
                 absl::StrCat("repair: setting aside ", list, ", which does not verify"));
    return context_.fs->RenameFile(list, list + ".damaged");
  }
  for (const uint32_t id : ids) {
    for (const std::string& path : {PathOf(SegmentFileName(id)), PathOf(HintFileName(id))}) {
      if (!context_.fs->FileExists(path)) continue;
      context_.Log(LogLevel::kInfo,
                   absl::StrCat("removing ", path, ", replaced by a compaction that a crash "
                                                 "interrupted"));
    }
  }
  return RemoveListed(ids);
}

uint64_t Shard::SweepExpired() {
  const int64_t now = context_.clock->NowUnixMs();
  uint64_t swept = 0;
  absl::MutexLock lock(&mu_);
  // Only items whose time has come are touched: O(expired), not O(keys).
  while (!ttl_heap_.empty() && ttl_heap_.top().expiry_unix_ms <= now) {
    const TtlItem item = ttl_heap_.top();
    ttl_heap_.pop();
    if (!index_.contains_id(item.entry_id)) continue;
    IndexEntry& entry = index_.at(item.entry_id);
    // Stale item: the key was overwritten, deleted or removed since.
    if (!entry.present() || index_.expiry(item.entry_id) != item.expiry_unix_ms) continue;
    entry.flags |= kEntryExpired | kEntryShadowCounted;
    MarkDead(entry.location());
    DropHistory(item.entry_id);
    --CountsOf(entry.key()).live_keys;
    ++swept;
  }
  counters_.expired_swept.fetch_add(swept, std::memory_order_relaxed);
  return swept;
}

}  // namespace logkv::engine
