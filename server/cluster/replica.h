// The replica side of replication: how a node applies the records peers send
// it (Replicate) and answers what it holds of some keys (ReadRecords), and
// the helpers that build those requests and read their answers for the
// coordinator, the hinted-handoff queue and anti-entropy.
//
// A record is applied with last write wins on its hybrid-logical-clock
// timestamp (engine::WriteOptions::timestamp): a replica keeps whichever
// version of a key has the highest timestamp, so applying records is
// idempotent and the order of delivery does not matter. A tombstone is a
// record like any other: a delete newer than a value hides it, an older one
// is ignored.
//
// Thread-safety: the functions are stateless; HandleReplicate and
// HandleReadRecords may be called from every I/O loop at once.
#ifndef LOGKV_SERVER_CLUSTER_REPLICA_H_
#define LOGKV_SERVER_CLUSTER_REPLICA_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "protocol/frame.h"
#include "server/cluster/peer_transport.h"
#include "server/core/outcome.h"

namespace logkv::server::cluster {

// One key's record as replication moves it: the ReplicaRecord of the wire.
struct VersionedRecord {
  std::string key;
  std::string value;  // empty for tombstones and meta-only reads
  uint64_t timestamp = 0;
  int64_t expiry_unix_ms = 0;
  bool tombstone = false;
  bool found = false;  // false: the replica knows nothing of the key (timestamp 0)
  // The local engine's version counter of the key; not on the wire (versions
  // are per replica), 0 when unknown.
  uint64_t version = 0;
};

// An expired value reads as deleted (engine::KeyRecord), but its Merkle leaf
// hash is a value's: moving it as a tombstone would leave two replicas'
// leaves different for ever. It moves as what it is, a value whose absolute
// expiry has passed (invisible at once on arrival).
inline void KeepExpiredAsValue(VersionedRecord* record) {
  if (record->found && record->tombstone && record->expiry_unix_ms != 0) {
    record->tombstone = false;
    record->value.clear();
  }
}


// Whether a holds a newer version of the key than b. A record that was not
// found is older than every record that was.
inline bool NewerThan(const VersionedRecord& a, const VersionedRecord& b) {
  if (a.found != b.found) return a.found;
  return a.timestamp > b.timestamp;
}

// key's record as the engine's GetRecord reports it.
VersionedRecord FromKeyRecord(absl::string_view key, engine::KeyRecord record);

// Applies record to the local engine with last write wins (a Put with its
// timestamp and absolute expiry, or a Delete for a tombstone). done runs
// once the write is durable per the engine's fsync policy (on the engine's
// group commit's thread under --fsync=always, inline otherwise) with the engine's
// result, whose timestamp is what the engine now holds for the key: the
// record's own when it was applied (or was already there), a newer one when
// the engine holds a newer write (applied false). A record that was not
// found is nothing to apply: an empty result (timestamp 0) at once.
void ApplyLocally(engine::Engine* engine, const VersionedRecord& record,
                  std::function<void(absl::StatusOr<engine::WriteResult>)> done);
// ApplyLocally's write and result, made before returning, without a
// callback. REQUIRES: engine->WritesFinishInline() (not --fsync=always).
absl::StatusOr<engine::WriteResult> ApplyLocallyNow(engine::Engine* engine,
                                                    const VersionedRecord& record);

// ---- The replica's handlers (registered for peer connections) -----------

// A ReadRecords answer stops adding keys and values once they pass this
// many bytes and answers the remaining keys as unknown (the asker reads them
// again): far below the 64 MiB frame, because gossip and replication share
// the peer connection and must not queue behind one huge answer. A single
// record is always answered, whatever its size.
inline constexpr uint64_t kMaxRecordsAnswerBytes = 4ull << 20;

// Replicate: applies every record (as ApplyLocally does, from the request's
// bytes) and answers ReplicateResult with one flag per record, true when the
// engine holds that version or a newer one. When the engine's writes finish
// inline (Engine::WritesFinishInline) it answers at once; otherwise
// (--fsync=always) the answer waits, through defer, for the group commit's
// fdatasync (the contract of Service::Handle). engine must outlive every
// deferred completion.
Outcome HandleReplicate(engine::Engine* engine, const protocol::Request& request,
                        flatbuffers::FlatBufferBuilder* builder,
                        absl::FunctionRef<Completion()> defer);

// ReadRecords: the engine's record of every key (tombstones included; no
// values when meta_only) as a RecordsResult, in the order of the keys.
// Always answered at once.
Outcome HandleReadRecords(engine::Engine* engine, const protocol::Request& request,
                                   flatbuffers::FlatBufferBuilder* builder);

// ---- Requests to peers, and their answers ---------------------------------
// Frames are size-prefixed Request FlatBuffers with request_id 0 (the
// PeerTransport numbers them).

// epoch: as FinishPeerRequest's (the configuration a strong operation was
// placed under, or the sender's).
std::string ReplicateRequestFrame(absl::Span<const VersionedRecord> records, bool hinted);
std::string ReplicateRequestFrame(absl::Span<const VersionedRecord* const> records, bool hinted,
                                  uint64_t epoch = kSenderEpoch);
std::string ReadRecordsRequestFrame(absl::Span<const absl::string_view> keys, bool meta_only,
                                    uint64_t epoch = kSenderEpoch);
std::string ReadRecordsRequestFrame(absl::Span<const std::string> keys, bool meta_only,
                                    uint64_t epoch = kSenderEpoch);

// A Replicate answer: per record, whether the replica holds that version or
// a newer one, and the timestamp it holds (0: nothing, or not told).
struct ReplicateAnswer {
  std::vector<bool> applied;
  std::vector<uint64_t> held_timestamps;
};
// The answer to a Replicate request (a verified Response frame, length
// prefix included). The status of the answer when it is not Ok;
// InvalidArgument when its result is not a ReplicateResult of expected_count
// flags and timestamps.
absl::StatusOr<ReplicateAnswer> ParseReplicateAnswer(absl::string_view response_frame,
                                                     size_t expected_count);
// Its applied flags alone.
absl::StatusOr<std::vector<bool>> ParseReplicateResult(absl::string_view response_frame,
                                                       size_t expected_count);
// The records of a ReadRecords answer to a request for keys, in their order;
// likewise InvalidArgument unless it holds one record per key, each of the
// key asked for. with_keys false: the records' keys are left empty (the
// caller has them: keys), which saves a copy of each.
absl::StatusOr<std::vector<VersionedRecord>> ParseRecordsResult(
    absl::string_view response_frame, absl::Span<const absl::string_view> keys,
    bool with_keys = true);
absl::StatusOr<std::vector<VersionedRecord>> ParseRecordsResult(
    absl::string_view response_frame, absl::Span<const std::string> keys);

// ---- A record as bytes (the hinted-handoff queue's values) ----------------
// The encoding is a FlatBuffer whose root is a protocol ReplicaRecord (not
// size-prefixed): the wire's own grammar, so docs/protocol.md describes it.
std::string EncodeRecord(const VersionedRecord& record);
// DataLoss when bytes do not verify as a ReplicaRecord.
absl::StatusOr<VersionedRecord> DecodeRecord(absl::string_view bytes);

// Before item `first` of a batch of count served in order: every
// kPrefetchWindow items, calls prefetch with the next window's keys
// (key_at(i): item i's key), so that their lookups overlap their cache
// misses (engine::Engine::Prefetch).
inline constexpr size_t kPrefetchWindow = 32;
template <typename KeyAt, typename Prefetch>
void PrefetchWindow(size_t first, size_t count, KeyAt key_at, Prefetch prefetch) {
  if (first % kPrefetchWindow != 0 || count - first < 2) return;
  absl::InlinedVector<absl::string_view, kPrefetchWindow> keys;
  for (size_t i = first; i < count && keys.size() < kPrefetchWindow; ++i) {
    keys.push_back(key_at(i));
  }
  prefetch(absl::Span<const absl::string_view>(keys));
}

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_REPLICA_H_
