#include "server/cluster/replica.h"

#include <cassert>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/cluster/peer_transport.h"
#include "server/namespaces.h"

namespace logkv::server::cluster {

namespace p = ::logkv::protocol;

namespace {

// Answers reach us already verified by the PeerTransport; they are verified
// again (cheap next to a network round trip) so that helpers are safe on any
// bytes, fakes' included. Their size is bounded by the transport's limit.
constexpr uint32_t kMaxAnswerBytes = std::numeric_limits<int32_t>::max();

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder* b,
                                                        absl::string_view bytes) {
  return b->CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

std::vector<absl::string_view> ViewsOf(absl::Span<const std::string> keys) {
  return std::vector<absl::string_view>(keys.begin(), keys.end());
}

flatbuffers::Offset<p::ReplicaRecord> BuildRecord(flatbuffers::FlatBufferBuilder* b,
                                                  const VersionedRecord& record) {
  auto key = Bytes(b, record.key);
  auto value = record.tombstone || !record.found ? 0 : Bytes(b, record.value);
  return p::CreateReplicaRecord(*b, key, value, record.timestamp, record.expiry_unix_ms,
                                record.tombstone, record.found);
}

// A replicated record's fields as ApplyLocally writes them, viewed where
// they are (a VersionedRecord, or a Replicate request's frame).
struct RecordView {
  absl::string_view key;
  absl::string_view value;
  uint64_t timestamp = 0;
  int64_t expiry_unix_ms = 0;
  bool tombstone = false;
  bool found = false;
};

RecordView ViewOf(const VersionedRecord& record) {
  return RecordView{record.key,       record.value, record.timestamp, record.expiry_unix_ms,
                    record.tombstone, record.found};
}

RecordView ViewOf(const p::ReplicaRecord& record) {
  return RecordView{p::View(record.key()),   p::View(record.value()), record.timestamp(),
                    record.expiry_unix_ms(), record.tombstone(),      record.found()};
}

VersionedRecord RecordOf(const p::ReplicaRecord& record, bool with_key = true) {
  const RecordView view = ViewOf(record);
  VersionedRecord out;
  if (with_key) out.key = std::string(view.key);
  out.value = std::string(view.value);
  out.timestamp = view.timestamp;
  out.expiry_unix_ms = view.expiry_unix_ms;
  out.tombstone = view.tombstone;
  out.found = view.found;
  return out;
}

// The answer a record gets without a write: none (nullopt) when it is to be
// written, with Options(record).
std::optional<absl::StatusOr<engine::WriteResult>> AnswerWithoutWrite(const RecordView& record) {
  if (!record.found) return engine::WriteResult{};
  if (record.timestamp == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("replicated record of a ", record.key.size(),
                     "-byte key has timestamp 0 (replicated writes must carry one)"));
  }
  return std::nullopt;
}

engine::WriteOptions Options(const RecordView& record) {
  engine::WriteOptions options;
  options.timestamp = record.timestamp;
  // A replicated expiry is absolute, so every replica expires the key at
  // the same moment; an expired record still beats older versions.
  options.expiry_unix_ms = record.tombstone ? 0 : record.expiry_unix_ms;
  return options;
}

// ApplyLocally's write, made before returning. REQUIRES: the engine's
// writes finish inline (else this waits for the disk).
absl::StatusOr<engine::WriteResult> ApplyNow(engine::Engine* engine, const RecordView& record) {
  if (auto answer = AnswerWithoutWrite(record)) return *std::move(answer);
  return record.tombstone ? engine->Delete(record.key, Options(record))
                          : engine->Put(record.key, record.value, Options(record));
}

// ApplyLocally on the record's bytes, which need to live only until this
// returns (the engine copies them into its log before it does).
void ApplyAsync(engine::Engine* engine, const RecordView& record,
                std::function<void(absl::StatusOr<engine::WriteResult>)> done) {
  if (auto answer = AnswerWithoutWrite(record)) return done(*std::move(answer));
  // applied == false in the result means the engine already holds
  // something at least as new, whose timestamp the result carries.
  if (record.tombstone) {
    engine->DeleteAsync(record.key, Options(record), std::move(done));
  } else {
    engine->PutAsync(record.key, record.value, Options(record), std::move(done));
  }
}

// Vectors of bool are vectors of bytes on the wire: applied holds 0 or 1.
void BuildReplicateResult(flatbuffers::FlatBufferBuilder* b, uint64_t id,
                          const std::vector<uint64_t>& held_timestamps,
                          const std::vector<uint8_t>& applied) {
  b->Clear();
  const auto flag_vector = b->CreateVector(applied);
  const auto held_vector = b->CreateVector(held_timestamps);
  auto result = p::CreateReplicateResult(*b, flag_vector, held_vector);
  p::FinishResponse(b, id, p::Result::ReplicateResult, result.Union());
}

// The Response of a verified frame, or why there is none.
absl::StatusOr<const p::Response*> AnswerOf(absl::string_view frame, p::Result expected) {
  absl::StatusOr<const p::Response*> response = p::VerifyResponse(frame, kMaxAnswerBytes);
  if (!response.ok()) return response.status();
  if (absl::Status status = p::StatusFromResponse(**response); !status.ok()) return status;
  if ((*response)->result_type() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer answered ", p::EnumNameResult((*response)->result_type()),
                     " where ", p::EnumNameResult(expected), " was expected"));
  }
  return response;
}

}  // namespace

VersionedRecord FromKeyRecord(absl::string_view key, engine::KeyRecord record) {
  VersionedRecord out;
  out.key = std::string(key);
  out.found = record.found;
  out.tombstone = record.tombstone;
  out.timestamp = record.timestamp;
  out.expiry_unix_ms = record.expiry_unix_ms;
  out.version = record.version;
  if (!record.tombstone) out.value = std::move(record.value);
  return out;
}

void ApplyLocally(engine::Engine* engine, const VersionedRecord& record,
                  std::function<void(absl::StatusOr<engine::WriteResult>)> done) {
  ApplyAsync(engine, ViewOf(record), std::move(done));
}

absl::StatusOr<engine::WriteResult> ApplyLocallyNow(engine::Engine* engine,
                                                    const VersionedRecord& record) {
  assert(engine->WritesFinishInline());
  return ApplyNow(engine, ViewOf(record));
}


Outcome HandleReplicate(engine::Engine* engine, const p::Request& request,
                        flatbuffers::FlatBufferBuilder* b, absl::FunctionRef<Completion()> defer) {
  const uint64_t id = request.request_id();
  const p::Replicate* replicate = request.operation_as_Replicate();
  if (replicate == nullptr) {
    p::BuildStatusResponse(b, id, absl::InvalidArgumentError("not a Replicate request"));
    return Outcome::kAnswered;
  }
  const size_t count = replicate->records() == nullptr ? 0 : replicate->records()->size();
  auto key_at = [replicate](size_t i) { return p::View(replicate->records()->Get(i)->key()); };
  if (engine->WritesFinishInline()) {
    // The writes finish inline: each record is written from the request's
    // bytes, and the flags are ready once the loop ends.
    std::vector<uint8_t> applied(count, 0);
    std::vector<uint64_t> held(count, 0);
    for (size_t i = 0; i < count; ++i) {
      PrefetchWindow(i, count, key_at, [engine](auto keys) { engine->Prefetch(keys); });
      const RecordView record = ViewOf(*replicate->records()->Get(i));
      // Hints and accounts are each node's own: a peer may not write them.
      if (IsNodeLocalKey(record.key)) continue;
      absl::StatusOr<engine::WriteResult> written = ApplyNow(engine, record);
      applied[i] = written.ok();
      held[i] = written.ok() ? written->timestamp : 0;
    }
    BuildReplicateResult(b, id, held, applied);
    return Outcome::kAnswered;
  }
  // Under --fsync=always a write that is made finishes on the group
  // commit's thread (one refused or not made answers inline): flags are
  // gathered here, and whoever records the last one answers.
  struct Gather {
    absl::Mutex mu;
    std::vector<uint8_t> applied ABSL_GUARDED_BY(mu);
    std::vector<uint64_t> held ABSL_GUARDED_BY(mu);
    size_t remaining ABSL_GUARDED_BY(mu) = 0;
    Completion done;  // set before the first write
  };
  if (count == 0) {
    BuildReplicateResult(b, id, {}, {});
    return Outcome::kAnswered;
  }
  auto gather = std::make_shared<Gather>();
  {
    absl::MutexLock lock(&gather->mu);
    gather->applied.assign(count, 0);
    gather->held.assign(count, 0);
    gather->remaining = count;
  }
  gather->done = defer();
  for (size_t i = 0; i < count; ++i) {
    PrefetchWindow(i, count, key_at, [engine](auto keys) { engine->Prefetch(keys); });
    const RecordView record = ViewOf(*replicate->records()->Get(i));
    // Records one flag; whoever records the last one answers.
    auto record_flag = [gather, i, id](bool applied_here, uint64_t held) {
      bool last;
      {
        absl::MutexLock lock(&gather->mu);
        gather->applied[i] = applied_here;
        gather->held[i] = held;
        assert(gather->remaining > 0);  // every record's write calls back once
        last = --gather->remaining == 0;
      }
      if (last) {
        flatbuffers::FlatBufferBuilder builder(256);
        {
          absl::MutexLock lock(&gather->mu);
          BuildReplicateResult(&builder, id, gather->held, gather->applied);
        }
        gather->done(std::string(p::FrameOf(builder)));
      }
    };
    if (IsNodeLocalKey(record.key)) {
      record_flag(false, 0);
      continue;
    }
    ApplyAsync(engine, record, [record_flag](absl::StatusOr<engine::WriteResult> written) {
      record_flag(written.ok(), written.ok() ? written->timestamp : 0);
    });
  }
  return Outcome::kDeferred;
}

Outcome HandleReadRecords(engine::Engine* engine, const p::Request& request,
                                   flatbuffers::FlatBufferBuilder* b) {
  const uint64_t id = request.request_id();
  const p::ReadRecords* read = request.operation_as_ReadRecords();
  if (read == nullptr) {
    p::BuildStatusResponse(b, id, absl::InvalidArgumentError("not a ReadRecords request"));
    return Outcome::kAnswered;
  }
  const size_t count = read->keys() == nullptr ? 0 : read->keys()->size();
  std::vector<VersionedRecord> records;
  records.reserve(count);
  // Once the values pass the budget, the remaining keys are answered as
  // unknown (the asker reads them again).
  const uint64_t budget_bytes = kMaxRecordsAnswerBytes;
  uint64_t answer_bytes = 0;
  for (size_t i = 0; i < count; ++i) {
    PrefetchWindow(
        i, count, [read](size_t at) { return p::View(read->keys()->Get(at)->key()); },
        [engine](auto keys) { engine->Prefetch(keys); });
    const absl::string_view key = p::View(read->keys()->Get(i)->key());
    if (IsNodeLocalKey(key) || (answer_bytes > budget_bytes && !records.empty())) {
      VersionedRecord unknown;
      unknown.key = std::string(key);
      records.push_back(std::move(unknown));
      continue;
    }
    absl::StatusOr<engine::KeyRecord> record = engine->GetRecord(key, !read->meta_only());
    if (record.ok()) answer_bytes += key.size() + record->value.size();
    if (!record.ok()) {
      // One unreadable key fails the whole answer: a reader must not take a
      // damaged record for a missing one and "repair" it with an older one.
      p::BuildStatusResponse(b, id, record.status());
      return Outcome::kAnswered;
    }
    records.push_back(FromKeyRecord(key, *std::move(record)));
  }
  assert(records.size() == count);  // one record per key asked, in order
  b->Clear();
  std::vector<flatbuffers::Offset<p::ReplicaRecord>> offsets;
  offsets.reserve(records.size());
  for (const VersionedRecord& record : records) offsets.push_back(BuildRecord(b, record));
  auto vector = b->CreateVector(offsets);
  auto result = p::CreateRecordsResult(*b, vector);
  p::FinishResponse(b, id, p::Result::RecordsResult, result.Union());
  return Outcome::kAnswered;
}

std::string ReplicateRequestFrame(absl::Span<const VersionedRecord* const> records,
                                  bool hinted, uint64_t epoch) {
  size_t bytes = 256;
  for (const VersionedRecord* record : records) {
    bytes += record->key.size() + record->value.size() + 64;
  }
  flatbuffers::FlatBufferBuilder b(bytes);
  std::vector<flatbuffers::Offset<p::ReplicaRecord>> offsets;
  offsets.reserve(records.size());
  for (const VersionedRecord* record : records) offsets.push_back(BuildRecord(&b, *record));
  auto vector = b.CreateVector(offsets);
  return FinishPeerRequest(&b, p::Operation::Replicate,
                           p::CreateReplicate(b, vector, hinted).Union(), epoch);
}

std::string ReplicateRequestFrame(absl::Span<const VersionedRecord> records, bool hinted) {
  std::vector<const VersionedRecord*> pointers;
  pointers.reserve(records.size());
  for (const VersionedRecord& record : records) pointers.push_back(&record);
  return ReplicateRequestFrame(absl::MakeConstSpan(pointers), hinted);
}

std::string ReadRecordsRequestFrame(absl::Span<const absl::string_view> keys, bool meta_only,
                                    uint64_t epoch) {
  size_t bytes = 256;
  for (absl::string_view key : keys) bytes += key.size() + 32;
  flatbuffers::FlatBufferBuilder b(bytes);
  std::vector<flatbuffers::Offset<p::KeyItem>> items;
  items.reserve(keys.size());
  for (absl::string_view key : keys) items.push_back(p::CreateKeyItem(b, Bytes(&b, key)));
  auto vector = b.CreateVector(items);
  return FinishPeerRequest(&b, p::Operation::ReadRecords,
                           p::CreateReadRecords(b, vector, meta_only).Union(), epoch);
}

std::string ReadRecordsRequestFrame(absl::Span<const std::string> keys, bool meta_only,
                                    uint64_t epoch) {
  return ReadRecordsRequestFrame(ViewsOf(keys), meta_only, epoch);
}

absl::StatusOr<ReplicateAnswer> ParseReplicateAnswer(absl::string_view frame,
                                                     size_t expected_count) {
  absl::StatusOr<const p::Response*> response = AnswerOf(frame, p::Result::ReplicateResult);
  if (!response.ok()) return response.status();
  const auto* flags = (*response)->result_as_ReplicateResult()->applied();
  const auto* held = (*response)->result_as_ReplicateResult()->held_timestamps();
  const size_t count = flags == nullptr ? 0 : flags->size();
  const size_t held_count = held == nullptr ? 0 : held->size();
  // held_timestamps came later than applied: an answer without them reads
  // as 0 ("not told"), which moves no clock.
  if (count != expected_count || (held_count != expected_count && held_count != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReplicateResult has ", count, " flags and ", held_count,
                     " held timestamps for ", expected_count, " records"));
  }
  ReplicateAnswer answer;
  answer.applied.resize(count);
  answer.held_timestamps.resize(count);
  for (size_t i = 0; i < count; ++i) {
    answer.applied[i] = flags->Get(i);
    answer.held_timestamps[i] = held_count == 0 ? 0 : held->Get(i);
  }
  return answer;
}

absl::StatusOr<std::vector<bool>> ParseReplicateResult(absl::string_view frame,
                                                       size_t expected_count) {
  absl::StatusOr<ReplicateAnswer> answer = ParseReplicateAnswer(frame, expected_count);
  if (!answer.ok()) return answer.status();
  return std::move(answer->applied);
}

absl::StatusOr<std::vector<VersionedRecord>> ParseRecordsResult(
    absl::string_view frame, absl::Span<const std::string> keys) {
  return ParseRecordsResult(frame, ViewsOf(keys));
}

absl::StatusOr<std::vector<VersionedRecord>> ParseRecordsResult(
    absl::string_view frame, absl::Span<const absl::string_view> keys, bool with_keys) {
  absl::StatusOr<const p::Response*> response = AnswerOf(frame, p::Result::RecordsResult);
  if (!response.ok()) return response.status();
  const auto* records = (*response)->result_as_RecordsResult()->records();
  const size_t count = records == nullptr ? 0 : records->size();
  if (count != keys.size()) {
    return absl::InvalidArgumentError(absl::StrCat("RecordsResult has ", count,
                                                   " records for ", keys.size(), " keys"));
  }
  std::vector<VersionedRecord> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const p::ReplicaRecord& record = *records->Get(i);
    if (p::View(record.key()) != keys[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "RecordsResult answered record ", i, " with another key than the one asked for"));
    }
    out.push_back(RecordOf(record, with_keys));
  }
  return out;
}

std::string EncodeRecord(const VersionedRecord& record) {
  flatbuffers::FlatBufferBuilder b(record.key.size() + record.value.size() + 96);
  b.Finish(BuildRecord(&b, record));
  return std::string(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
}

absl::StatusOr<VersionedRecord> DecodeRecord(absl::string_view bytes) {
  // The verifier insists on aligned tables: copy into 8-byte aligned storage.
  std::vector<uint64_t> aligned((bytes.size() + 7) / 8);
  if (!bytes.empty()) memcpy(aligned.data(), bytes.data(), bytes.size());
  const auto* data = reinterpret_cast<const uint8_t*>(aligned.data());
  flatbuffers::Verifier verifier(data, bytes.size());
  if (!verifier.VerifyBuffer<p::ReplicaRecord>(nullptr)) {
    return absl::DataLossError(
        absl::StrCat("a ", bytes.size(), "-byte hint does not verify as a ReplicaRecord"));
  }
  return RecordOf(*flatbuffers::GetRoot<p::ReplicaRecord>(data));
}

}  // namespace logkv::server::cluster
