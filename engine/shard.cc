#include "engine/shard.h"

#include <algorithm>
#include <bit>
#include <cassert>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/value_codec.h"

namespace logkv::engine {

using format::RecordType;

namespace {

// Keys may be binary and long: quote a printable, bounded form in messages.
std::string KeyForMessage(absl::string_view key) {
  constexpr size_t kMaxShown = 64;
  std::string shown = absl::CHexEscape(key.substr(0, kMaxShown));
  if (key.size() > kMaxShown) absl::StrAppend(&shown, "...");
  return absl::StrCat("\"", shown, "\"");
}

}  // namespace

Shard::Shard(const ShardContext& context, uint32_t shard_id, std::string directory)
    : context_(context),
      options_(*context.options),
      shard_id_(shard_id),
      directory_(std::move(directory)),
      index_(std::countr_zero(context.merkle->partitions()), context.options->ordered_prefixes) {
  recent_events_.assign(std::max<uint32_t>(1, options_.feed_recent_events), FeedMark{0, 0, 0});
  for (const std::string& prefix : options_.merkle_excluded_prefixes) {
    if (prefix.empty()) {
      excluded_first_bytes_.fill(true);
      break;
    }
    excluded_first_bytes_[static_cast<uint8_t>(prefix[0])] = true;
  }
}

Shard::~Shard() = default;

absl::Status Shard::health() {
  if (!failed_flag_.load(std::memory_order_acquire)) return absl::OkStatus();
  absl::MutexLock lock(&sync_mu_);
  return failed_;
}

absl::Status Shard::WriteHealth() {
  if (absl::Status status = health(); !status.ok()) return status;
  absl::ReaderMutexLock lock(&mu_);
  return out_of_space_;
}

void Shard::SetFailed(const absl::Status& status) {
  std::deque<DurableWaiter> waiters;
  absl::Status failed;
  {
    absl::MutexLock lock(&sync_mu_);
    if (failed_.ok()) {
      failed_ = absl::Status(status.code(),
                             absl::StrCat("shard ", shard_id_,
                                          " refuses writes after a failed sync (restart to "
                                          "recover from the log): ",
                                          status.message()));
    }
    failed_flag_.store(true, std::memory_order_release);
    failed = failed_;
    waiters.swap(durable_waiters_);
    durable_cv_.SignalAll();
  }
  context_.Log(LogLevel::kError, failed.message());
  for (DurableWaiter& waiter : waiters) waiter.done(failed);
}

absl::StatusOr<LogRecord> Shard::ReadRecord(const RecordLocation& location,
                                            absl::string_view key) const {
  auto it = segments_.find(location.segment_id);
  if (it == segments_.end()) {
    return absl::DataLossError(absl::StrCat("shard ", shard_id_, ": index points at segment ",
                                            location.segment_id, ", which does not exist"));
  }
  const Segment& segment = *it->second;
  const uint64_t available = segment.size() > location.offset ? segment.size() - location.offset : 0;
  auto bytes = segment.Read(location.offset, std::min<uint64_t>(location.record_bytes, available));
  if (!bytes.ok()) return bytes.status();
  DecodeResult decoded = DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
  if (decoded.outcome != DecodeOutcome::kRecord) {
    return absl::DataLossError(absl::StrCat(segment.path(), " at offset ", location.offset, ": ",
                                            decoded.outcome == DecodeOutcome::kEnd
                                                ? "no record where the index points"
                                                : decoded.error));
  }
  if (decoded.record.key != key) {
    return absl::DataLossError(absl::StrCat(segment.path(), " at offset ", location.offset,
                                            ": record holds key ",
                                            KeyForMessage(decoded.record.key), ", index expected ",
                                            KeyForMessage(key)));
  }
  return decoded.record;
}

absl::Status Shard::ValueOf(const LogRecord& record, std::string* out) {
  if (!record.compressed()) {
    out->assign(record.value.data(), record.value.size());
    return absl::OkStatus();
  }
  const int64_t start_ns = ThreadCpuNanos();
  absl::Status status = DecodeValue(record, format::kHardMaxValueBytes, out);
  counters_.decompress_cpu_ns.fetch_add(static_cast<uint64_t>(ThreadCpuNanos() - start_ns),
                                        std::memory_order_relaxed);
  if (!status.ok()) {
    return absl::DataLossError(absl::StrCat("shard ", shard_id_, ", key ",
                                            KeyForMessage(record.key), ", sequence ",
                                            record.sequence, ": ", status.message()));
  }
  counters_.values_decompressed.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status Shard::Get(const KeyRef& key, std::string* value_out, ValueMeta* meta) {
  counters_.gets.fetch_add(1, std::memory_order_relaxed);
  absl::ReaderMutexLock lock(&mu_);
  const uint32_t id = index_.Find(key);
  if (id == KeyIndex::kNoEntry) return absl::NotFoundError("key not found");
  const IndexEntry& entry = index_.at(id);
  if (!entry.present()) return absl::NotFoundError("key not found");
  const int64_t expiry = index_.expiry(id);
  if (expiry != 0 && expiry <= context_.clock->NowUnixMs()) {
    return absl::NotFoundError("key not found (expired)");
  }
  auto record = ReadRecord(entry.location(), key.key);
  if (!record.ok()) return record.status();
  if (absl::Status status = ValueOf(*record, value_out); !status.ok()) return status;
  if (meta != nullptr) {
    meta->version = entry.version;
    meta->timestamp = entry.timestamp;
    meta->expiry_unix_ms = expiry;
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyRecord> Shard::GetRecord(const KeyRef& key, bool with_value) {
  counters_.gets.fetch_add(1, std::memory_order_relaxed);
  KeyRecord out;
  absl::ReaderMutexLock lock(&mu_);
  const uint32_t id = index_.Find(key);
  if (id == KeyIndex::kNoEntry) return out;
  const IndexEntry& entry = index_.at(id);
  out.found = true;
  out.timestamp = entry.timestamp;
  out.version = entry.version;
  out.expiry_unix_ms = index_.expiry(id);
  out.tombstone = !entry.present() || Expired(id, context_.clock->NowUnixMs());
  if (out.tombstone || !with_value) return out;
  auto record = ReadRecord(entry.location(), key.key);
  if (!record.ok()) return record.status();
  if (absl::Status status = ValueOf(*record, &out.value); !status.ok()) return status;
  return out;
}

void Shard::Prefetch(absl::Span<const KeyRef> keys) {
  // Three passes over the batch, each loading what the next one reads: the
  // keys' table groups (control bytes and slots), then the index entries
  // those slots name, then the key bytes the lookups compare. Prefetches
  // only: no lookup's answer depends on them.
  absl::ReaderMutexLock lock(&mu_);
  for (const KeyRef& key : keys) index_.Prefetch(key);
  for (const KeyRef& key : keys) {
    index_.ForEachCandidate(key, [&](uint32_t id) {
      mu_.AssertReaderHeld();  // ForEachCandidate calls back before it returns
      __builtin_prefetch(&index_.at(id));
    });
  }
  for (const KeyRef& key : keys) {
    index_.ForEachCandidate(key, [&](uint32_t id) {
      mu_.AssertReaderHeld();
      __builtin_prefetch(index_.at(id).key_data);
    });
  }
}

absl::StatusOr<Record> Shard::GetVersion(const KeyRef& key, uint64_t version) {
  counters_.gets.fetch_add(1, std::memory_order_relaxed);
  absl::ReaderMutexLock lock(&mu_);
  const uint32_t id = index_.Find(key);
  const int64_t now = context_.clock->NowUnixMs();
  if (id == KeyIndex::kNoEntry) return absl::NotFoundError("key not found");
  const IndexEntry& entry = index_.at(id);
  if (!entry.present() || Expired(id, now)) return absl::NotFoundError("key not found");
  RecordLocation location;
  ValueMeta meta{version, 0, index_.expiry(id)};
  if (entry.version == version) {
    location = entry.location();
  } else {
    // The k-th older version (from 0) is version entry.version - 1 - k.
    uint32_t node = version != 0 && version < entry.version ? history_.head(id)
                                                            : VersionChains::kNone;
    for (uint64_t v = entry.version - 1; node != VersionChains::kNone && v > version; --v) {
      node = history_.next(node);
    }
    if (node != VersionChains::kNone) location = history_.location(node);
    if (node == VersionChains::kNone) {
      return absl::NotFoundError(absl::StrCat("version ", version, " of key ",
                                              KeyForMessage(key.key), " is not kept (current ",
                                              entry.version, ", versions_kept ",
                                              options_.versions_kept, ")"));
    }
  }
  auto record = ReadRecord(location, key.key);
  if (!record.ok()) return record.status();
  if (record->version != version) {
    return absl::InternalError(absl::StrCat("version ", version, " of key ", KeyForMessage(key.key),
                                            " points at a record of version ", record->version));
  }
  // An older version expires as it would have had it stayed the newest.
  if (record->expiry_unix_ms != 0 && record->expiry_unix_ms <= now) {
    return absl::NotFoundError(absl::StrCat("version ", version, " of key ",
                                            KeyForMessage(key.key), " has expired"));
  }
  meta.timestamp = record->timestamp;
  meta.expiry_unix_ms = record->expiry_unix_ms;
  Record out{std::string(), meta};
  if (absl::Status status = ValueOf(*record, &out.value); !status.ok()) return status;
  return out;
}

void Shard::MarkDead(const RecordLocation& location) {
  auto it = segments_.find(location.segment_id);
  assert(it != segments_.end());
  if (it != segments_.end()) it->second->dead_bytes += location.record_bytes;
}

void Shard::DropHistory(uint32_t entry_id) {
  if (options_.versions_kept <= 1) return;
  const size_t dropped = history_.Truncate(
      entry_id, 0, [&](const RecordLocation& location) {
        mu_.AssertHeld();  // Truncate calls back before it returns
        MarkDead(location);
      });
  CountsOf(index_.at(entry_id).key()).kept_versions -= dropped;
}

void Shard::PushTtl(int64_t expiry_unix_ms, uint32_t entry_id) {
  ttl_heap_.push(TtlItem{expiry_unix_ms, entry_id});
  // Overwritten keys leave stale heap items behind until their time comes.
  // Rebuild from the index when they dominate, so the heap tracks the keys
  // that have an expiry, not every TTL write ever made.
  if (ttl_heap_.size() > 2 * index_.with_expiry() + 1024) {
    std::vector<TtlItem> items;
    items.reserve(index_.with_expiry());
    index_.ForEach([&](uint32_t id, const IndexEntry& entry) {
      mu_.AssertHeld();  // ForEach calls back before it returns
      const int64_t expiry = index_.expiry(id);
      if (expiry != 0 && entry.present()) items.push_back(TtlItem{expiry, id});
    });
    ttl_heap_ = decltype(ttl_heap_)(std::greater<TtlItem>(), std::move(items));
  }
}

void Shard::ReleaseCurrentRecord(const IndexEntry& entry) {
  if ((entry.flags & kEntryShadowCounted) == 0) MarkDead(entry.location());
}

void Shard::RemoveEntry(uint32_t entry_id) {
  IndexEntry& entry = index_.at(entry_id);
  if (entry.present()) --CountsOf(entry.key()).live_keys;
  if (Summarised(entry.key())) context_.merkle->Update(HashKey(entry.key()), LeafHashOf(entry));
  ReleaseCurrentRecord(entry);
  DropHistory(entry_id);
  index_.Remove(entry_id);
}

absl::StatusOr<std::shared_ptr<Segment>> Shard::NewSegment(uint32_t flags,
                                                           uint64_t capacity_bytes,
                                                           const std::string& path) {
  // The id is taken only once the file exists, so a creation refused again
  // and again (a full disk) neither leaves files nor skips ids.
  const uint32_t id = next_segment_id_;
  const format::SegmentHeader header =
      MakeSegmentHeader(shard_id_, id, flags, next_sequence_, context_.clock->NowUnixMs());
  auto segment = Segment::Create(context_.fs, path.empty() ? PathOf(SegmentFileName(id)) : path,
                                 header, capacity_bytes);
  if (!segment.ok()) return segment.status();
  ++next_segment_id_;
  std::shared_ptr<Segment> shared = std::move(*segment);
  segments_[id] = shared;
  return shared;
}

void Shard::DiscardNewSegment(std::shared_ptr<Segment> segment) {
  assert(segment->size() == format::kSegmentHeaderBytes);
  const std::string path = segment->path();
  segments_.erase(segment->id());
  if (segment->id() + 1 == next_segment_id_) --next_segment_id_;
  segment.reset();  // unmaps and closes the file
  if (absl::Status status = context_.fs->RemoveFile(path); !status.ok()) {
    // Harmless: start-up removes a header-only newest segment's leftovers.
    context_.Log(LogLevel::kWarning, absl::StrCat("could not remove the unused segment ", path,
                                                  ": ", status.message()));
  }
}

absl::Status Shard::DropEmptyActive() {
  assert(active_ != nullptr && active_->size() == format::kSegmentHeaderBytes);
  const std::string path = active_->path();
  const uint32_t id = active_->id();
  segments_.erase(id);
  original_ids_.erase(std::remove(original_ids_.begin(), original_ids_.end(), id),
                      original_ids_.end());
  SetActive(nullptr);
  return context_.fs->RemoveFile(path);
}

absl::Status Shard::RollActive(uint64_t needed_bytes) {
  // Sealing syncs the old segment before the new one takes writes, so only
  // the newest segment can ever hold a torn tail after a crash; recovery
  // relies on that to tell a torn tail from corruption. A sealed segment
  // stays active_ until a new one exists: a roll that fails (a full disk) is
  // simply tried again by the next write.
  if (active_ != nullptr) {
    if (absl::Status status = active_->Seal(context_.fs); !status.ok()) {
      SetFailed(status);
      return status;
    }
  }
  const uint64_t capacity =
      std::max<uint64_t>(options_.segment_bytes, needed_bytes + format::kSegmentHeaderBytes);
  auto segment = NewSegment(/*flags=*/0, capacity, "");
  if (!segment.ok()) {
    return WithContext(absl::StrCat("shard ", shard_id_, " cannot start a new segment: "),
                       segment.status());
  }
  // The header is synced before the directory entry: a segment whose entry
  // survives a power cut without its header is zeros, which start-up can
  // take for a torn creation only when it is the newest file (a compaction's
  // output made later has a higher id), and otherwise refuses to open.
  absl::Status status = (*segment)->Sync();
  if (status.ok()) status = context_.fs->SyncDir(directory_);
  if (!status.ok()) {
    // Its directory entry might not survive a crash: do not write into it.
    DiscardNewSegment(*std::move(segment));
    return WithContext(absl::StrCat("shard ", shard_id_, " cannot start a new segment: "),
                       status);
  }
  SetActive(*segment);
  original_ids_.push_back(active_->id());
  return absl::OkStatus();
}

absl::StatusOr<WriteResult> Shard::Write(RecordType type, const KeyRef& key,
                                         absl::string_view value, const WriteOptions& options) {
  if (absl::Status status = health(); !status.ok()) return status;
  // Compress before taking the lock: writers of a shard serialise on it, and
  // compression is the costliest step of a write.
  // A view of this thread's compression buffer, used until the append.
  absl::string_view compressed;
  const bool compress = type == RecordType::kPut &&
                        options_.compression == Compression::kZstd &&
                        value.size() >= options_.compression_min_bytes;
  if (compress) {
    const int64_t start_ns = ThreadCpuNanos();
    compressed = CompressValue(value, options_.compression_level);
    counters_.compress_cpu_ns.fetch_add(static_cast<uint64_t>(ThreadCpuNanos() - start_ns),
                                        std::memory_order_relaxed);
    (compressed.empty() ? counters_.values_compression_skipped : counters_.values_compressed)
        .fetch_add(1, std::memory_order_relaxed);
  }
  const bool stored_compressed = !compressed.empty();
  // Whatever the outcome, a large buffer goes once the record is written.
  absl::Cleanup release_buffer = [stored_compressed] {
    if (stored_compressed) ReleaseCompressionBuffer();
  };
  const int64_t now = context_.clock->NowUnixMs();
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::FailedPreconditionError("the engine is closed");
  uint32_t id = index_.Find(key);
  IndexEntry* entry = id == KeyIndex::kNoEntry ? nullptr : &index_.at(id);
  const bool was_present = entry != nullptr && entry->present();
  const bool visible = was_present && !Expired(id, now);
  const uint64_t current_version = visible ? entry->version : 0;
  if (options.if_version.has_value() && *options.if_version != current_version) {
    return absl::FailedPreconditionError(absl::StrCat("key ", KeyForMessage(key.key),
                                                      " is at version ", current_version,
                                                      ", not ", *options.if_version));
  }
  if (options.if_present.has_value() && *options.if_present != visible) {
    return absl::FailedPreconditionError(absl::StrCat(
        "key ", KeyForMessage(key.key), visible ? " exists" : " does not exist",
        " now (it changed since this write's access check)"));
  }

  uint64_t timestamp;
  if (options.timestamp != 0) {
    // A replicated write: last write wins, and replays are harmless.
    if (entry != nullptr && entry->timestamp >= options.timestamp) {
      WriteResult ignored;
      ignored.version = entry->version;
      ignored.timestamp = entry->timestamp;
      ignored.shard = shard_id_;
      ignored.applied = false;
      return ignored;
    }
    timestamp = options.timestamp;
    context_.hlc->Observe(timestamp);
  } else {
    if (type == RecordType::kDelete && !visible) {
      return absl::NotFoundError("key not found");
    }
    timestamp = context_.hlc->Now();
    if (entry != nullptr && timestamp <= entry->timestamp) {
      // A replica stamped this key ahead of our clock; stay monotonic per key.
      timestamp = entry->timestamp + 1;
      context_.hlc->Observe(timestamp);
    }
  }

  int64_t expiry = 0;
  if (type == RecordType::kPut) {
    if (options.expiry_unix_ms != 0) {
      expiry = options.expiry_unix_ms;
    } else if (options.ttl_ms > 0) {
      expiry = now + options.ttl_ms;
    }
  }
  // Every mutation bumps the version; a delete ends the key's life, so the
  // next put after it starts again at 1.
  const uint64_t version = current_version + 1;

  LogRecord record;
  record.type = type;
  record.timestamp = timestamp;
  record.expiry_unix_ms = expiry;
  record.version = version;
  record.key = key.key;
  record.value = stored_compressed ? compressed : value;
  record.flags = stored_compressed ? format::kRecordFlagZstd : 0;
  absl::StatusOr<RecordLocation> appended = AppendLocked(&record);
  if (!appended.ok()) return appended.status();
  const RecordLocation location = *appended;
  const uint64_t sequence = record.sequence;
  const bool summarised = Summarised(key.key);

  if (entry != nullptr) {
    // XOR the old state out.
    if (summarised) context_.merkle->Update(key.hash, LeafHashOf(*entry));
    if (options_.versions_kept > 1 && type == RecordType::kPut && visible) {
      history_.PushFront(id, entry->location());
      const size_t dropped = history_.Truncate(
          id, options_.versions_kept - 1,
          [&](const RecordLocation& location) {
            mu_.AssertHeld();  // Truncate calls back before it returns
            MarkDead(location);
          });
      CountsOf(summarised).kept_versions += 1;
      CountsOf(summarised).kept_versions -= dropped;
    } else {
      ReleaseCurrentRecord(*entry);
      DropHistory(id);
    }
  } else {
    id = index_.Insert(key);
    entry = &index_.at(id);
  }
  entry->set_location(location);
  entry->set_record_flags(type == RecordType::kDelete ? kEntryTombstone : uint8_t{0});
  entry->timestamp = timestamp;
  entry->version = version;
  index_.set_expiry(id, expiry);
  if (summarised) context_.merkle->Update(key.hash, LeafHashOf(*entry));
  if (type == RecordType::kPut && !was_present) ++CountsOf(summarised).live_keys;
  if (type == RecordType::kDelete && was_present) --CountsOf(summarised).live_keys;
  if (expiry != 0) PushTtl(expiry, id);
  (type == RecordType::kPut ? counters_.puts : counters_.deletes)
      .fetch_add(1, std::memory_order_relaxed);
  if (type == RecordType::kPut) {
    counters_.value_bytes_in.fetch_add(value.size(), std::memory_order_relaxed);
    counters_.value_bytes_stored.fetch_add(record.value.size(), std::memory_order_relaxed);
  }

  WriteResult result;
  result.version = version;
  result.timestamp = timestamp;
  result.sequence = sequence;
  result.shard = shard_id_;
  return result;
}

absl::StatusOr<RecordLocation> Shard::AppendLocked(LogRecord* record) {
  record->sequence = next_sequence_;
  encode_buffer_.clear();
  EncodeRecord(*record, &encode_buffer_);
  const uint64_t record_bytes = encode_buffer_.size();
  if (active_ == nullptr || record_bytes > active_->remaining()) {
    if (absl::Status status = RollActive(record_bytes); !status.ok()) {
      if (IsNoSpace(status) && out_of_space_.ok()) {
        context_.Log(LogLevel::kWarning, absl::StrCat(status.message(), "; shard ", shard_id_,
                                                      " refuses writes until space is freed"));
      }
      out_of_space_ = IsNoSpace(status) ? status : absl::OkStatus();
      return status;
    }
  }
  auto offset = active_->Append(encode_buffer_);
  if (!offset.ok()) {
    // Blocks are reserved as the segment fills, so a full disk can refuse
    // an append too; the shard refuses writes until one succeeds.
    if (IsNoSpace(offset.status())) {
      if (out_of_space_.ok()) {
        context_.Log(LogLevel::kWarning, absl::StrCat(offset.status().message(), "; shard ",
                                                      shard_id_,
                                                      " refuses writes until space is freed"));
      }
      out_of_space_ = offset.status();
    }
    return offset.status();
  }
  if (!out_of_space_.ok()) {
    context_.Log(LogLevel::kInfo, absl::StrCat("shard ", shard_id_, " takes writes again"));
    out_of_space_ = absl::OkStatus();
  }
  ++next_sequence_;
  active_->min_sequence = std::min(active_->min_sequence, record->sequence);
  active_->max_sequence = record->sequence;
  const RecordLocation location{active_->id(), *offset, static_cast<uint32_t>(record_bytes)};
  recent_events_[record->sequence % recent_events_.size()] =
      FeedMark{record->sequence, location.segment_id, location.offset};
  appended_sequence_.store(record->sequence, std::memory_order_release);
  if (options_.fsync == FsyncPolicy::kInterval &&
      active_->size() >= writeback_requested_at_ + kWritebackBytes) {
    writeback_requested_at_ = active_->size();
    absl::MutexLock lock(&sync_request_mu_);
    writeback_requested_ = true;
    sync_request_cv_.Signal();
  }
  return location;
}

absl::StatusOr<bool> Shard::Forget(const KeyRef& key, uint64_t timestamp) {
  if (absl::Status status = health(); !status.ok()) return status;
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::FailedPreconditionError("the engine is closed");
  const uint32_t id = index_.Find(key);
  if (id == KeyIndex::kNoEntry) return false;
  IndexEntry& entry = index_.at(id);
  if (entry.timestamp != timestamp) return false;  // written again since it was checked

  LogRecord record;
  record.type = RecordType::kForget;
  record.timestamp = entry.timestamp;
  record.version = entry.version;
  record.key = key.key;
  if (absl::StatusOr<RecordLocation> appended = AppendLocked(&record); !appended.ok()) {
    return appended.status();
  }

  // The Forget record itself is never counted dead: compaction keeps it
  // while an older record of the key may remain outside its segments.
  RemoveEntry(id);
  counters_.forgotten.fetch_add(1, std::memory_order_relaxed);
  return true;
}

uint32_t Shard::ListKeys(uint32_t from_id, size_t limit, std::vector<Engine::LeafKey>* out) {
  absl::ReaderMutexLock lock(&mu_);
  const uint32_t end = index_.id_limit();
  uint32_t id = from_id;
  for (size_t listed = 0; id < end && listed < limit; ++id) {
    if (!index_.contains_id(id)) continue;
    const IndexEntry& entry = index_.at(id);
    if (!Summarised(entry.key())) continue;
    out->push_back(Engine::LeafKey{std::string(entry.key()), entry.timestamp,
                                   (entry.flags & kEntryTombstone) != 0});
    ++listed;
  }
  return id < end ? id : KeyIndex::kNoEntry;
}

absl::Status Shard::WaitDurable(uint64_t sequence) {
  absl::MutexLock lock(&sync_mu_);
  if (durable_sequence_ >= sequence || !failed_.ok()) return failed_;
  RequestSync();
  while (durable_sequence_ < sequence && failed_.ok()) durable_cv_.Wait(&sync_mu_);
  return failed_;
}

void Shard::NotifyWhenDurable(uint64_t sequence, std::function<void(absl::Status)> done) {
  absl::Status status;
  {
    absl::MutexLock lock(&sync_mu_);
    if (durable_sequence_ < sequence && failed_.ok()) {
      durable_waiters_.push_back(DurableWaiter{sequence, std::move(done)});
      RequestSync();
      return;
    }
    status = failed_;
  }
  done(status);
}

absl::Status Shard::SyncNow() {
  // Without mu_: the order of these two loads is what makes it safe (see
  // appended_sequence_).
  const uint64_t target = appended_sequence_.load(std::memory_order_acquire);
  const std::shared_ptr<Segment> segment = active_for_sync_.load(std::memory_order_acquire);
  {
    absl::MutexLock lock(&sync_mu_);
    if (!failed_.ok()) return failed_;
    if (target <= durable_sequence_) return absl::OkStatus();
  }
  // Writers keep appending while we sync: whoever arrives now is served by
  // the next round, and everyone already waiting shares this fdatasync.
  const int64_t start_ns = absl::GetCurrentTimeNanos();
  absl::Status status = segment != nullptr ? segment->Sync() : absl::OkStatus();
  const int64_t duration_ns = absl::GetCurrentTimeNanos() - start_ns;
  counters_.fsyncs.fetch_add(1, std::memory_order_relaxed);
  counters_.fsync_total_us.fetch_add(static_cast<uint64_t>(duration_ns / 1000),
                                     std::memory_order_relaxed);
  if (options_.on_fsync) options_.on_fsync(duration_ns);
  if (!status.ok()) {
    SetFailed(status);
    return status;
  }
  std::vector<DurableWaiter> ready;
  uint64_t durable;
  bool advanced;
  {
    absl::MutexLock lock(&sync_mu_);
    advanced = target > durable_sequence_;
    durable_sequence_ = std::max(durable_sequence_, target);
    durable = durable_sequence_;
    while (!durable_waiters_.empty() && durable_waiters_.front().sequence <= durable_sequence_) {
      ready.push_back(std::move(durable_waiters_.front()));
      durable_waiters_.pop_front();
    }
    durable_cv_.SignalAll();
  }
  for (DurableWaiter& waiter : ready) waiter.done(absl::OkStatus());
  // Under kAlways watchers learn of events only once they are durable, so a
  // sequence number they saw is never reused after a machine crash.
  if (advanced && options_.fsync == FsyncPolicy::kAlways && options_.on_event) {
    options_.on_event(shard_id_, durable);
  }
  return absl::OkStatus();
}

void Shard::RequestSync() {
  // Writers wait for durability only under kAlways, which has a group commit.
  assert(context_.group_commit != nullptr);
  context_.group_commit->Request(shard_id_);
}

void Shard::SyncLoop() {
  const absl::Duration interval = absl::Milliseconds(options_.fsync_interval_ms);
  absl::Time next_sync = absl::Now() + interval;
  while (true) {
    bool writeback = false;
    {
      absl::MutexLock lock(&sync_request_mu_);
      while (!sync_stop_ && !writeback_requested_) {
        if (sync_request_cv_.WaitWithDeadline(&sync_request_mu_, next_sync)) break;
      }
      if (sync_stop_) return;
      writeback = writeback_requested_;
      writeback_requested_ = false;
    }
    if (absl::Now() >= next_sync) {
      // A failure is recorded (the shard then refuses writes) and reported
      // to the writers waiting; the loop goes on for Close.
      (void)SyncNow();
      next_sync = absl::Now() + interval;
    } else if (writeback) {
      StartWriteback();
    }
  }
}

void Shard::StopSyncLoop() {
  absl::MutexLock lock(&sync_request_mu_);
  sync_stop_ = true;
  sync_request_cv_.Signal();
}

void Shard::StartWriteback() {
  // Without mu_, which the writers hold.
  const std::shared_ptr<Segment> segment = active_for_sync_.load(std::memory_order_acquire);
  if (segment != nullptr) segment->StartWriteback();
}

void Shard::CollectScanKeys(const ScanOptions& options, size_t keep,
                            std::priority_queue<std::string>* heap) {
  const int64_t now = context_.clock->NowUnixMs();
  // The page starts at the largest of the bounds: the prefix, start_key,
  // and just after the cursor.
  absl::string_view from = options.prefix;
  bool after = false;
  if (options.start_key > from) from = options.start_key;
  if (!options.after_key.empty() && options.after_key >= from) {
    from = options.after_key;
    after = true;
  }
  // Keeps the matching keys of an order (the whole key order, or the
  // ordered prefixes' own) from `from` on.
  auto collect_in_order = [&](KeyIndex::OrderedIterator it, KeyIndex::OrderedIterator end) {
    mu_.AssertReaderHeld();  // called with the lock held
    for (; it != end; ++it) {
      const IndexEntry& entry = index_.at(*it);
      const absl::string_view key = entry.key();
      // Keys with the prefix are one run in key order: past it, nothing else matches.
      if (!absl::StartsWith(key, options.prefix)) break;
      if (!options.end_key.empty() && key >= options.end_key) break;
      // Keys come in order: once the heap is full, a key not below its top
      // would not be kept, and neither would any after it.
      if (heap->size() >= keep && key >= heap->top()) break;
      if (!entry.present() || Expired(*it, now)) continue;
      if (heap->size() >= keep) heap->pop();
      heap->emplace(key);
    }
  };
  bool ordered;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (index_.UnderOrderedPrefix(options.prefix)) {
      // Every key the scan can match is in the ordered prefixes' order.
      collect_in_order(index_.PrefixOrderedFrom(from, after), index_.PrefixOrderedEnd());
      return;
    }
    ordered = index_.ordered();
  }
  if (!ordered && !options.build_key_order) {
    // A one-off scan (a start-up load) leaves the order unbuilt: one pass
    // over every key, keeping the `keep` smallest that match.
    absl::ReaderMutexLock lock(&mu_);
    if (!index_.ordered()) {
      index_.ForEach([&](uint32_t id, const IndexEntry& entry) {
        mu_.AssertReaderHeld();  // ForEach calls back before it returns
        const absl::string_view key = entry.key();
        if (!absl::StartsWith(key, options.prefix)) return;
        if (after ? key <= from : key < from) return;
        if (!options.end_key.empty() && key >= options.end_key) return;
        if (heap->size() >= keep && key >= heap->top()) return;
        if (!entry.present() || Expired(id, now)) return;
        if (heap->size() >= keep) heap->pop();
        heap->emplace(key);
      });
      return;
    }
    ordered = true;  // another scan built it meanwhile
  }
  if (!ordered) {
    // The first scan builds the key order (O(keys), once); inserts and
    // removals keep it from then on. A store never scanned never pays for
    // it (docs/engine.md, "Index memory").
    absl::MutexLock lock(&mu_);
    index_.BuildOrder();
  }
  absl::ReaderMutexLock lock(&mu_);
  collect_in_order(index_.OrderedFrom(from, after), index_.OrderedEnd());
}

uint64_t Shard::IndexEntries() const {
  absl::ReaderMutexLock lock(&mu_);
  return index_.size();
}

uint64_t Shard::LastSequence() {
  const uint64_t readable = ReadableThrough();
  absl::ReaderMutexLock lock(&mu_);
  return std::min(next_sequence_ - 1, readable);
}

uint64_t Shard::ReadableThrough() {
  if (options_.fsync != FsyncPolicy::kAlways) return UINT64_MAX;
  absl::MutexLock lock(&sync_mu_);
  return durable_sequence_;
}

absl::StatusOr<std::vector<Event>> Shard::ReadEvents(uint64_t after_sequence, uint32_t limit,
                                                     uint64_t max_bytes, uint64_t* read_through) {
  std::vector<Event> events;
  // Up to where the read went: past every record examined when it reaches
  // the end, the last event's when a limit stops it.
  *read_through = after_sequence;
  uint64_t read_bytes = 0;
  // Under kAlways only durable events are readable (see LastSequence).
  const uint64_t readable = ReadableThrough();
  absl::ReaderMutexLock lock(&mu_);
  if (after_sequence < compacted_through_sequence_) {
    return absl::OutOfRangeError(absl::StrCat(
        "compacted: events of shard ", shard_id_, " up to sequence ", compacted_through_sequence_,
        " are gone; the oldest readable start is after_sequence=", compacted_through_sequence_));
  }
  if (after_sequence + 1 >= next_sequence_ || limit == 0) return events;
  const uint64_t first = after_sequence + 1;

  // Where to start: the recent-events ring knows the exact record; otherwise
  // the original segment whose range holds `first`, from its beginning.
  size_t segment_index = 0;
  uint64_t offset = format::kSegmentHeaderBytes;
  FeedMark mark = recent_events_[first % recent_events_.size()];
  if (mark.sequence != first) {
    absl::MutexLock resume_lock(&resume_mu_);
    mark = resume_marks_[first % kResumeMarks];
  }
  bool located = false;
  if (mark.sequence == first) {
    for (size_t i = 0; i < original_ids_.size(); ++i) {
      if (original_ids_[i] == mark.segment_id) {
        segment_index = i;
        offset = mark.offset;
        located = true;
        break;
      }
    }
  }
  // Where the record after the last event returned begins: the read that
  // goes on from that event (first = its sequence + 1) starts there.
  size_t resume_segment = 0;
  uint64_t resume_offset = 0;
  const auto remember = [&] {
    mu_.AssertReaderHeld();  // called from the loop below, under the lock
    const uint64_t next = events.back().sequence + 1;
    absl::MutexLock resume_lock(&resume_mu_);
    resume_marks_[next % kResumeMarks] =
        FeedMark{next, original_ids_[resume_segment], static_cast<uint32_t>(resume_offset)};
  };
  if (!located) {
    for (size_t i = 0; i < original_ids_.size(); ++i) {
      if (segments_.at(original_ids_[i])->header().base_sequence <= first) segment_index = i;
    }
  }

  for (; segment_index < original_ids_.size(); ++segment_index) {
    const Segment& segment = *segments_.at(original_ids_[segment_index]);
    while (offset < segment.size()) {
      auto bytes = segment.ReadToEnd(offset);
      if (!bytes.ok()) return bytes.status();
      DecodeResult decoded = DecodeRecord(*bytes, format::kMaxKeyBytes, format::kHardMaxValueBytes);
      counters_.feed_records_decoded.fetch_add(1, std::memory_order_relaxed);
      if (decoded.outcome == DecodeOutcome::kEnd) break;
      if (decoded.outcome != DecodeOutcome::kRecord) {
        return absl::DataLossError(
            absl::StrCat(segment.path(), " at offset ", offset, ": ", decoded.error));
      }
      const LogRecord& record = decoded.record;
      if (record.sequence > readable) return events;
      if (record.sequence >= first) *read_through = std::max(*read_through, record.sequence);
      if (record.sequence >= first && !record.is_forget()) {  // a forget is no client event
        read_bytes += record.key.size() + PlainValueSize(record);
        // Over the byte budget: stop before this event (never before the first).
        if (max_bytes > 0 && read_bytes > max_bytes && !events.empty()) {
          remember();
          *read_through = events.back().sequence;
          return events;
        }
        Event event;
        event.sequence = record.sequence;
        event.type = record.is_tombstone() ? EventType::kDelete : EventType::kPut;
        event.key.assign(record.key.data(), record.key.size());
        if (absl::Status status = ValueOf(record, &event.value); !status.ok()) {
          return WithContext(absl::StrCat(segment.path(), " at offset ", offset, ": "), status);
        }
        event.meta = ValueMeta{record.version, record.timestamp, record.expiry_unix_ms};
        events.push_back(std::move(event));
        resume_segment = segment_index;
        resume_offset = offset + decoded.record_bytes;
        if (events.size() >= limit) {
          remember();
          *read_through = events.back().sequence;
          return events;
        }
      }
      offset += decoded.record_bytes;
    }
    offset = format::kSegmentHeaderBytes;
  }
  return events;
}

void Shard::CollectLeafKeys(uint32_t partition, const std::vector<bool>& wanted,
                            std::vector<Engine::LeafKey>* out) {
  const MerkleForest& merkle = *context_.merkle;
  const uint32_t leaves = merkle.leaves();
  // The index groups keys by the top bits of their hash, the partition's
  // bits (or the first kMaxGroupBits of them): only the partition's group
  // is walked.
  const int partition_bits = std::countr_zero(merkle.partitions());
  absl::ReaderMutexLock lock(&mu_);
  const uint32_t group = partition >> (partition_bits - index_.group_bits());
  index_.ForEachInGroup(group, [&](uint32_t, const IndexEntry& entry) {
    if (!Summarised(entry.key())) return;
    const uint64_t hash = HashKey(entry.key());
    if (merkle.PartitionOf(hash) != partition || !wanted[merkle.LeafNodeOf(hash) - leaves]) {
      return;
    }
    out->push_back(Engine::LeafKey{std::string(entry.key()), entry.timestamp,
                                   (entry.flags & kEntryTombstone) != 0});
  });
}

absl::Status Shard::CutForBackup(std::vector<BackupSegment>* segments,
                                 uint64_t* last_sequence) {
  if (closed_) return absl::FailedPreconditionError("the engine is closed");
  for (const auto& [id, segment] : segments_) {
    // Writable and not active: a compaction output still being written
    // (*.compacting); recovery would remove it, and its victims are here.
    if (segment != active_ && segment->writable()) continue;
    BackupSegment cut;
    cut.segment = segment;
    cut.bytes = segment->size();
    if (segment->has_hint && segment != active_) cut.hint_path = PathOf(HintFileName(id));
    if (segment != active_) cut.sealed_path = segment->path();
    segments->push_back(std::move(cut));
  }
  std::sort(segments->begin(), segments->end(),
            [](const BackupSegment& a, const BackupSegment& b) {
              return a.segment->id() < b.segment->id();
            });
  *last_sequence = next_sequence_ - 1;
  return absl::OkStatus();
}

void Shard::AddStats(Stats* stats) {
  absl::ReaderMutexLock lock(&mu_);
  const uint64_t live_keys = client_counts_.live_keys + own_counts_.live_keys;
  stats->keys += live_keys;
  stats->tombstones += index_.size() - live_keys;
  stats->versions += live_keys + client_counts_.kept_versions + own_counts_.kept_versions;
  stats->client_keys += client_counts_.live_keys;
  stats->client_versions += client_counts_.live_keys + client_counts_.kept_versions;
  stats->segments += segments_.size();
  for (const auto& [id, segment] : segments_) {
    stats->log_bytes += segment->size();
    stats->dead_bytes += segment->dead_bytes;
    stats->reserved_bytes += segment->reserved_ahead();
  }
  stats->key_bytes += index_.key_bytes();
  stats->index_bytes += index_.overhead_bytes() + history_.bytes() +
                        ttl_heap_.size() * sizeof(TtlItem) +
                        recent_events_.size() * sizeof(FeedMark);
}

void Shard::AddPrefixStats(absl::string_view prefix, Engine::PrefixStats* stats) {
  absl::ReaderMutexLock lock(&mu_);
  index_.ForEach([&](uint32_t id, const IndexEntry& entry) {
    mu_.AssertReaderHeld();  // ForEach calls back before it returns
    if (!entry.present() || entry.key().substr(0, prefix.size()) != prefix) return;
    ++stats->keys;
    ++stats->versions;
    stats->record_bytes += entry.record_bytes;
    history_.ForEach(id, [&](uint32_t node) {
      mu_.AssertReaderHeld();
      ++stats->versions;
      stats->record_bytes += history_.location(node).record_bytes;
    });
  });
}

}  // namespace logkv::engine
