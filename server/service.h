// Turns verified protocol requests into engine operations and builds the
// responses. It is the single place where the data logic of a request lives;
// the network layers (the binary protocol and HTTP) only adapt to it.
// On a single node it is also the coordinator. In a cluster (a Coordinator
// set and active) single-key operations go through the coordinator instead:
//
//   Get, Put, Delete  the coordinator (owners, consistency, repair); the
//                     answer is deferred unless the local engine alone
//                     answered at once. Consistency Default means the
//                     node's configured W and R (eventual unless --w/--r).
//   Put/Delete with if_version
//                     FailedPrecondition: compare-and-set needs consensus
//                     once there are replicas, so it is refused outside
//                     the consensus keys (below).
//   Any operation on a consensus key (ConsensusKeys::Covers)
//                     the consensus keys: the control plane's Raft log,
//                     linearizable, compare-and-set included.
//   Batch             each item through the coordinator with the batch's
//                     consistency, one status per item (not atomic, as on
//                     one node).
//   Scan, Watch, GetVersion, Stats
//                     this node's engine only: a scan sees the keys this
//                     node owns or holds, not the cluster's.
//
// RequestContext::local_only keeps a request on this node's engine (GET
// /store/{key}). With no coordinator, or an inactive one, the single-node
// path runs exactly as before (no allocation added).
//
// Thread-safety: Handle may be called from every I/O loop at once.
#ifndef LOGKV_SERVER_SERVICE_H_
#define LOGKV_SERVER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "protocol/frame.h"
#include "server/core/consensus_keys.h"
#include "server/core/coordinator.h"
#include "server/core/outcome.h"
#include "server/core/request_context.h"

namespace logkv::server {

// Counters the service reports in Stats; owned by the server.
struct ServerCounters {
  std::atomic<uint64_t> connections{0};       // open now, both protocols
  std::atomic<uint64_t> http_connections{0};  // of which HTTP
  std::atomic<uint64_t> requests{0};     // handled since start
  // Reserved now by requests still arriving (ServerConfig::max_buffered_bytes).
  std::atomic<uint64_t> buffered_request_bytes{0};
  // Writes to the loops' connections (the binary and HTTP ports'): a
  // uv_try_write that took bytes, or the rest handed to libuv when the
  // socket was full.
  std::atomic<uint64_t> socket_writes{0};
  int64_t start_unix_ms = 0;
};

struct ServiceConfig {
  std::string node_id;
  std::string server_version;  // what Hello answers as the server's build; empty: none
  bool read_only = false;
  bool fsync_always = false;  // writes answer only after the group commit's fdatasync
  // The engine's data directory, absolute. Errors whose messages name it
  // (the engine names its files) reach clients with their code and a
  // reference into the server log, where the message goes instead: a
  // server's paths are not its clients' business. Empty: not checked.
  std::string data_dir;
  protocol::Limits limits;
};

class Service {
 public:
  // engine and counters must outlive the Service.
  Service(engine::Engine* engine, const ServiceConfig& config, ServerCounters* counters);
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Outcome and Completion are every layer's (server/core/outcome.h).
  using Outcome = server::Outcome;
  using Completion = server::Completion;

  // Handles every operation except Watch and Unwatch (the connection owns
  // those). defer is called only when the answer must wait (a write under
  // --fsync=always), so the common path allocates nothing.
  Outcome Handle(const RequestContext& context, const protocol::Request& request,
                 flatbuffers::FlatBufferBuilder* builder, absl::FunctionRef<Completion()> defer);
  // Calls a deferred answer's completion with its frame, as every deferred
  // answer of Handle is given: its messages scrubbed of the data
  // directory's paths (ClientStatus) when the node has one.
  void Deliver(Completion& done, std::string frame) const;

  // The Service's verdicts for what the network layers handle themselves,
  // with the status to answer when refused.
  // Writes at all: PermissionDenied on a read-only node (--read-only). HTTP
  // asks it for every writing route, the account routes included (they
  // write the engine without going through Handle); Handle asks it for
  // Put, Delete and Batch.
  absl::Status AdmitWrite() const;
  // A Watch by context (it streams the values of the keys it matches):
  // PermissionDenied when context may not read.
  absl::Status AdmitWatch(const RequestContext& context) const;

  // Where a watch stands: the engine keys it sees (the caller's namespace
  // included) and, per shard, the last event sequence it was sent.
  struct WatchCursor {
    std::string prefix;
    std::vector<uint64_t> after;
  };
  // A watch by context from now on, or from the Watch's after_sequences (one
  // per shard: InvalidArgument otherwise). AdmitWatch's refusal first.
  absl::StatusOr<WatchCursor> OpenWatch(const RequestContext& context,
                                        const protocol::Watch& watch) const;
  // The next events of shard after cursor->after[shard], at most max_events
  // and half a frame of keys and values, built in *builder as the watch's
  // caller sees them: only keys under its prefix, without its namespace, and
  // never the reserved ones. Advances the cursor past every event read
  // (matching or not); *more is set when the shard holds events beyond.
  absl::StatusOr<std::vector<flatbuffers::Offset<protocol::Event>>> ReadWatchEvents(
      const RequestContext& context, uint32_t shard, uint32_t max_events, WatchCursor* cursor,
      flatbuffers::FlatBufferBuilder* builder, bool* more) const;

  // The cluster's coordinator (null: a single node). It must outlive the
  // Service's use of it; set it before the first request or between them.
  void set_coordinator(Coordinator* coordinator) {
    coordinator_.store(coordinator, std::memory_order_release);
  }
  Coordinator* coordinator() const {
    return coordinator_.load(std::memory_order_acquire);
  }

  // The cluster's consensus keys (null: none). Every single-key operation
  // and batch item on a key it covers goes there, on every route, whatever
  // the consistency asked for and whether or not the coordinator is active.
  // It must outlive the Service's use of it; set it before the first request.
  void set_consensus(ConsensusKeys* consensus) {
    consensus_.store(consensus, std::memory_order_release);
  }

  // This node's id as Hello answers it: config.node_id until set (the
  // cluster member's id is known only once the port is bound).
  void SetNodeId(std::string node_id) ABSL_LOCKS_EXCLUDED(node_id_mu_);
  // The members Hello lists (node id, binary-protocol address) for clients
  // that route keys to owners. Null: none (a single node).
  using MembersFunction = std::function<std::vector<std::pair<std::string, std::string>>()>;
  void SetMembersSource(MembersFunction members) ABSL_LOCKS_EXCLUDED(node_id_mu_);
  std::string NodeId() const ABSL_LOCKS_EXCLUDED(node_id_mu_);

  // Data-write auditing (docs/security.md, "Audit log"): each write the
  // service accepts (a Put, a Delete, each item of a Batch; on every route,
  // dialect and the binary protocol, which all come here), once its engine
  // key is known and before its outcome, is offered to audited(engine_key),
  // and recorded with record() when it says so. The predicate is the
  // policy (today --audit-prefix; an ACL's audit flag later); it runs on
  // the I/O loops, so it must be cheap and thread-safe. Set it once,
  // before the first request; unset, a write pays one atomic load.
  struct WriteAudit {
    std::function<bool(absl::string_view engine_key)> audited;
    std::function<void(absl::string_view engine_key, bool is_put)> record;
  };
  void SetWriteAudit(WriteAudit audit);

  engine::Engine* engine() const { return engine_; }
  ServerCounters* counters() const { return counters_; }
  const ServiceConfig& config() const { return config_; }

 private:
  Outcome HandleGet(const RequestContext& context, uint64_t id, const protocol::Get& get,
                    flatbuffers::FlatBufferBuilder* b, absl::FunctionRef<Completion()> defer);
  Outcome HandleWrite(const RequestContext& context, uint64_t id,
                      const protocol::Request& request, flatbuffers::FlatBufferBuilder* b,
                      absl::FunctionRef<Completion()> defer);
  Outcome HandleBatch(const RequestContext& context, uint64_t id, const protocol::Batch& batch,
                      flatbuffers::FlatBufferBuilder* b, absl::FunctionRef<Completion()> defer);
  Outcome HandleScan(const RequestContext& context, uint64_t id, const protocol::Scan& scan,
                     flatbuffers::FlatBufferBuilder* b);
  // The node's figures, or with a tenant's key_prefix only its own.
  void BuildStats(const RequestContext& context, uint64_t id, flatbuffers::FlatBufferBuilder* b);
  Outcome HandleOperation(const RequestContext& context, const protocol::Request& request,
                          flatbuffers::FlatBufferBuilder* b,
                          absl::FunctionRef<Completion()> defer);
  // status, or when its message names the data directory, the same code
  // with a message that points to the log line holding the original.
  absl::Status ClientStatus(const absl::Status& status) const;
  // Applies ClientStatus to the messages of the finished response in frame
  // (the status's and a BatchResult's items'); false when none needed it.
  // Otherwise *out holds the response rebuilt (frame must not point into it).
  bool ScrubResponse(absl::string_view frame, flatbuffers::FlatBufferBuilder* out) const;
  // False when ScrubResponse would surely leave the answer alone (OK, not a
  // batch's): a check that costs no thread_local builder.
  static bool MayNameFiles(absl::string_view frame);
  // Whether the ACLs (context.access) let context's caller put engine key
  // `key`: create for a key that does not exist, write for one that does
  // (with both, nothing is looked up). PermissionDenied otherwise. When the
  // key's existence decided, *must_exist is what was found: the write is to
  // be made on that condition (WriteOptions::if_present), so that a key
  // created or deleted meanwhile by another writer fails the write instead
  // of letting it do what the ACL does not.
  absl::Status CheckPut(const RequestContext& context, absl::string_view key,
                        std::optional<uint64_t> if_version,
                        std::optional<bool>* must_exist) const;
  // CheckPut for a put item, the delete permission for a delete item.
  absl::Status BatchItemAccess(const RequestContext& context, absl::string_view key,
                               const protocol::BatchItem& item,
                               std::optional<bool>* must_exist) const;
  // The coordinator when the request goes through the cluster, else null.
  Coordinator* ClusterFor(const RequestContext& context) const;
  // The consensus keys when engine_key is one of them, else null.
  ConsensusKeys* ConsensusFor(absl::string_view engine_key) const;
  // GetVersion of a consensus key: its current version only.
  Outcome ConsensusGetVersion(ConsensusKeys* consensus, uint64_t id, std::string key,
                              uint64_t version, flatbuffers::FlatBufferBuilder* b,
                              absl::FunctionRef<Completion()> defer);
  // A batch item by item: consensus keys to the consensus keys, others to
  // the coordinator when there is one, else to this node's engine.
  Outcome ClusterBatch(Coordinator* coordinator, const RequestContext& context,
                       uint64_t id, const protocol::Batch& batch,
                       flatbuffers::FlatBufferBuilder* b, absl::FunctionRef<Completion()> defer);

  engine::Engine* const engine_;
  const ServiceConfig config_;
  ServerCounters* const counters_;
  const bool always_sync_;
  mutable absl::Mutex node_id_mu_;
  std::string node_id_ ABSL_GUARDED_BY(node_id_mu_);
  MembersFunction members_ ABSL_GUARDED_BY(node_id_mu_);
  std::atomic<Coordinator*> coordinator_{nullptr};
  std::atomic<ConsensusKeys*> consensus_{nullptr};
  // Offers a write to the audit hook, if any.
  void AuditWrite(absl::string_view engine_key, bool is_put) const;
  std::unique_ptr<WriteAudit> owned_write_audit_;
  std::atomic<const WriteAudit*> write_audit_{nullptr};
};

// Whether the ACLs (none: yes) let context's caller do all of need (the
// kAccess* bits) on engine_key.
bool Permits(const RequestContext& context, absl::string_view engine_key, uint32_t need);
// For a scan, listing or watch over engine_prefix: PermissionDenied when no
// key under it may be read; *filter when keys must be checked one by one
// (Permits).
absl::Status AdmitRead(const RequestContext& context, absl::string_view engine_prefix,
                       bool* filter);

// A scan or listing whose keys are checked one by one (AdmitRead's filter)
// goes on past the keys the caller may not read within one request, so that
// a page ends on a key it returns and its cursor never names a key the
// caller may not read (docs/security.md). It passes at most this many keys
// looking for readable ones; a page that found none by then is refused
// (FilteredScanExhausted).
inline constexpr size_t kMaxFilteredScanKeys = 10'000;
// Each round of such a scan reads at least this many keys (more than the
// page asks for: fewer round trips through unreadable runs).
inline constexpr uint32_t kFilteredScanRound = 256;
absl::Status FilteredScanExhausted();

// The engine key of a client's key in context's namespace, built in *scratch
// when a prefix applies. InvalidArgument for a key in the reserved namespace.
absl::StatusOr<absl::string_view> EngineKey(const RequestContext& context, absl::string_view key,
                                            std::string* scratch);

// A finished response frame for a write result (used on the sync thread too).
void BuildWriteResponse(flatbuffers::FlatBufferBuilder* builder, uint64_t request_id,
                        const absl::StatusOr<engine::WriteResult>& result);

}  // namespace logkv::server

#endif  // LOGKV_SERVER_SERVICE_H_
