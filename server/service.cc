#include "server/service.h"

#include <cassert>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "protocol/placement.h"
#include "server/core/coordinator.h"
#include "server/log.h"
#include "server/namespaces.h"

namespace logkv::server {

namespace p = ::logkv::protocol;
using engine::FsyncPolicy;

namespace {

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder* b,
                                                        absl::string_view bytes) {
  return b->CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

// A deferred answer's frame, built by build(builder) in this thread's
// builder: its buffer is kept for the next answer, so the builder allocates
// nothing once warm; the string returned is the one allocation. After an
// answer larger than kKeptBytes the buffer is freed (a thread keeps at most
// about twice that).
std::string BuildFrame(absl::FunctionRef<void(flatbuffers::FlatBufferBuilder*)> build) {
  constexpr size_t kKeptBytes = 64 << 10;
  thread_local flatbuffers::FlatBufferBuilder builder(1024);
  builder.Clear();
  build(&builder);
  std::string frame(p::FrameOf(builder));
  if (builder.GetSize() > kKeptBytes) builder.Reset();
  return frame;
}

absl::Status ReservedKeyError() {
  return absl::InvalidArgumentError("keys beginning with byte 0x00 are reserved for the server");
}

// What the ACLs refuse (docs/security.md).
absl::Status AccessDenied(absl::string_view what) {
  return absl::PermissionDeniedError(
      absl::StrCat("the access control list does not let this user ", what, " this key"));
}

absl::Status NotPermitted(absl::string_view what) {
  return absl::PermissionDeniedError(
      absl::StrCat("this API key may not ", what, " (missing scope)"));
}

// Runs a cluster operation whose answer may come inline (the local engine
// alone answered) or later from another thread. start(finish) begins it;
// finish(result) is called exactly once. An inline result is built straight
// into b (kAnswered); a later one into a frame for the deferred completion.
template <typename Result, typename Build, typename Start>
Service::Outcome RunCluster(const Service& service, uint64_t id, flatbuffers::FlatBufferBuilder* b,
                            absl::FunctionRef<Service::Completion()> defer, Build build,
                            Start start) {
  // Everything finish needs is here: a finish that holds one pointer needs
  // no allocation of its own (Coordinator's callbacks are move-only).
  struct Pending {
    Pending(const Service* service, Build build, uint64_t id)
        : service(service), build(std::move(build)), id(id) {}
    const Service* const service;
    const Build build;
    const uint64_t id;
    absl::Mutex mu;
    bool returned ABSL_GUARDED_BY(mu) = false;  // Handle has returned kDeferred
    std::optional<Result> result ABSL_GUARDED_BY(mu);
    Service::Completion completion ABSL_GUARDED_BY(mu);
  };
  auto pending = std::make_shared<Pending>(&service, std::move(build), id);
  start([pending](Result result) {
    Service::Completion completion;
    {
      absl::MutexLock lock(&pending->mu);
      if (!pending->returned) {
        pending->result.emplace(std::move(result));
        return;
      }
      completion = std::move(pending->completion);
    }
    pending->service->Deliver(completion, BuildFrame([&](flatbuffers::FlatBufferBuilder* builder) {
                                pending->build(builder, pending->id, result);
                              }));
  });
  absl::MutexLock lock(&pending->mu);
  if (pending->result.has_value()) {
    pending->build(b, id, *pending->result);
    return Service::Outcome::kAnswered;
  }
  pending->completion = defer();
  pending->returned = true;
  return Service::Outcome::kDeferred;
}

// The status a write answers with: a full disk (engine::IsNoSpace) becomes
// the protocol's InsufficientStorage, so that clients and HTTP (507) can tell
// it from a limit.
absl::Status WriteStatus(const absl::Status& status) {
  return engine::IsNoSpace(status) ? p::InsufficientStorageError(status.message()) : status;
}

void BuildReadResponse(flatbuffers::FlatBufferBuilder* b, uint64_t id,
                       const absl::StatusOr<Coordinator::ReadResult>& read) {
  if (!read.ok()) return p::BuildStatusResponse(b, id, read.status());
  if (!read->found) return p::BuildStatusResponse(b, id, absl::NotFoundError("key not found"));
  b->Clear();
  auto bytes = Bytes(b, read->value);
  auto result = p::CreateValueResult(*b, bytes, read->version, read->timestamp,
                                     read->expiry_unix_ms);
  p::FinishResponse(b, id, p::Result::ValueResult, result.Union());
}

void BuildClusterWriteResponse(flatbuffers::FlatBufferBuilder* b, uint64_t id,
                               const absl::StatusOr<Coordinator::WriteOutcome>& write) {
  if (!write.ok()) return p::BuildStatusResponse(b, id, WriteStatus(write.status()));
  BuildWriteResponse(b, id, write->result);
}

// Unimplemented rather than FailedPrecondition, which is a mismatch: a
// client that re-reads and retries on a mismatch must not loop on this.
absl::Status CompareAndSetError() {
  return absl::UnimplementedError(
      "compare-and-set (if_version) is not supported with replicas > 1 outside the consensus "
      "keys (keys under the cluster's --consensus-prefix, committed when it was bootstrapped)");
}

// What a consensus key does not have.
absl::Status ConsensusTtlError() {
  return absl::InvalidArgumentError("keys under a consensus prefix do not take a TTL");
}

// The BatchResult of a Batch: one item result per write, in order.
void BuildBatchResponse(flatbuffers::FlatBufferBuilder* builder, uint64_t id,
                        const std::vector<absl::StatusOr<engine::WriteResult>>& results) {
  builder->Clear();
  std::vector<flatbuffers::Offset<p::BatchItemResult>> items;
  items.reserve(results.size());
  for (const auto& result : results) {
    auto message = result.ok() ? 0
                               : builder->CreateString(result.status().message().data(),
                                                       result.status().message().size());
    items.push_back(p::CreateBatchItemResult(*builder, p::ToWire(WriteStatus(result.status())),
                                             message, result.ok() ? result->version : 0));
  }
  auto vector = builder->CreateVector(items);
  auto result = p::CreateBatchResult(*builder, vector);
  p::FinishResponse(builder, id, p::Result::BatchResult, result.Union());
}

}  // namespace

// Whether the ACLs (none: yes) let context's caller do all of need on
// engine_key.
bool Permits(const RequestContext& context, absl::string_view engine_key, uint32_t need) {
  return context.access == nullptr ||
         (context.access->Allowed(context.user_id, engine_key) & need) == need;
}

// For a scan or watch over engine_prefix: PermissionDenied when no key under
// it may be read; *filter when keys must be checked one by one.
absl::Status AdmitRead(const RequestContext& context, absl::string_view engine_prefix,
                       bool* filter) {
  *filter = false;
  if (context.access == nullptr) return absl::OkStatus();
  uint32_t bits = 0;
  if (!context.access->Uniform(context.user_id, engine_prefix, &bits)) {
    *filter = true;
    return absl::OkStatus();
  }
  if ((bits & kAccessRead) == 0) {
    return absl::PermissionDeniedError(
        "the access control list does not let this user read keys under this prefix");
  }
  return absl::OkStatus();
}


absl::Status FilteredScanExhausted() {
  return absl::PermissionDeniedError(absl::StrCat(
      "the scan passed ", kMaxFilteredScanKeys,
      " keys this user may not read without finding one it may: scan a prefix the access "
      "control lists grant"));
}

absl::StatusOr<absl::string_view> EngineKey(const RequestContext& context, absl::string_view key,
                                            std::string* scratch) {
  if (IsReservedKey(key)) return ReservedKeyError();
  if (context.key_prefix.empty()) return key;
  // The engine key is the placement key: the coordinator places it, and
  // clients route by the same function.
  scratch->clear();
  placement::AppendPlacementKey(context.key_prefix, key, scratch);
  return absl::string_view(*scratch);
}

namespace {

// Every successful write's answer: flattened, so that FlatBuffers' small
// builder steps are not each a call.
[[gnu::flatten]] void BuildWrittenResponse(flatbuffers::FlatBufferBuilder* b, uint64_t request_id,
                                           const engine::WriteResult& result) {
  b->Clear();
  auto written =
      p::CreateWriteResult(*b, result.version, result.timestamp, result.sequence, result.shard);
  p::FinishResponse(b, request_id, p::Result::WriteResult, written.Union());
}

// A local Get's answer, flattened for the same reason.
[[gnu::flatten]] void BuildValueResponse(flatbuffers::FlatBufferBuilder* b, uint64_t request_id,
                                         absl::string_view value, const engine::ValueMeta& meta) {
  b->Clear();
  auto bytes = Bytes(b, value);
  auto result =
      p::CreateValueResult(*b, bytes, meta.version, meta.timestamp, meta.expiry_unix_ms);
  p::FinishResponse(b, request_id, p::Result::ValueResult, result.Union());
}

}  // namespace

void BuildWriteResponse(flatbuffers::FlatBufferBuilder* b, uint64_t request_id,
                        const absl::StatusOr<engine::WriteResult>& result) {
  if (!result.ok()) {
    p::BuildStatusResponse(b, request_id, WriteStatus(result.status()));
    return;
  }
  BuildWrittenResponse(b, request_id, *result);
}

Service::Service(engine::Engine* engine, const ServiceConfig& config, ServerCounters* counters)
    : engine_(engine),
      config_(config),
      counters_(counters),
      always_sync_(config.fsync_always) {}

void Service::SetNodeId(std::string node_id) {
  absl::MutexLock lock(&node_id_mu_);
  node_id_ = std::move(node_id);
}

void Service::SetMembersSource(MembersFunction members) {
  absl::MutexLock lock(&node_id_mu_);
  members_ = std::move(members);
}

std::string Service::NodeId() const {
  absl::MutexLock lock(&node_id_mu_);
  return node_id_.empty() ? config_.node_id : node_id_;
}

absl::Status Service::AdmitWrite() const {
  if (config_.read_only) return absl::PermissionDeniedError("this node is read-only");
  return absl::OkStatus();
}

absl::Status Service::AdmitWatch(const RequestContext& context) const {
  if (!context.may_read) return NotPermitted("read");
  return absl::OkStatus();
}

absl::StatusOr<Service::WatchCursor> Service::OpenWatch(const RequestContext& context,
                                                        const p::Watch& watch) const {
  if (absl::Status status = AdmitWatch(context); !status.ok()) return status;
  const uint32_t shards = engine_->ShardCount();
  WatchCursor cursor;
  // The watch sees the caller's namespace only; keys go out without it.
  cursor.prefix = absl::StrCat(context.key_prefix, p::View(watch.prefix()));
  // Refused when nothing under the prefix may be read; otherwise each event
  // is checked as it is sent (a membership lost later ends what it sees).
  bool filter = false;
  if (absl::Status status = AdmitRead(context, cursor.prefix, &filter); !status.ok()) {
    return status;
  }
  if (watch.after_sequences() != nullptr && watch.after_sequences()->size() > 0) {
    if (watch.after_sequences()->size() != shards) {
      return absl::InvalidArgumentError(absl::StrCat("after_sequences has ",
                                                     watch.after_sequences()->size(),
                                                     " entries; this node has ", shards,
                                                     " shards"));
    }
    cursor.after.assign(watch.after_sequences()->begin(), watch.after_sequences()->end());
  } else {
    for (uint32_t shard = 0; shard < shards; ++shard) {
      cursor.after.push_back(engine_->LastSequence(shard));
    }
  }
  return cursor;
}

absl::StatusOr<std::vector<flatbuffers::Offset<p::Event>>> Service::ReadWatchEvents(
    const RequestContext& context, uint32_t shard, uint32_t max_events, WatchCursor* cursor,
    flatbuffers::FlatBufferBuilder* builder, bool* more) const {
  assert(shard < cursor->after.size());
  std::vector<flatbuffers::Offset<p::Event>> matching;
  // Half a frame of keys and values leaves room for the envelope, so one
  // batch always fits in one frame.
  uint64_t read_through = cursor->after[shard];
  absl::StatusOr<std::vector<engine::Event>> events =
      engine_->ReadEvents(shard, cursor->after[shard], max_events,
                          config_.limits.max_frame_bytes / 2, &read_through);
  if (!events.ok()) return events.status();
  // Past the records that are no events too (Forgets), which the next read
  // then need not read again.
  assert(read_through >= cursor->after[shard]);  // the feed moves forward
  cursor->after[shard] = read_through;
  if (events->empty()) return matching;
  assert(events->back().sequence <= cursor->after[shard]);
  if (engine_->LastSequence(shard) > cursor->after[shard]) *more = true;
  const size_t namespace_bytes = context.key_prefix.size();
  for (const engine::Event& event : *events) {
    if (!absl::StartsWith(event.key, cursor->prefix)) continue;
    if (namespace_bytes == 0 && IsReservedKey(event.key)) continue;
    if (!Permits(context, event.key, kAccessRead)) continue;
    auto key = builder->CreateVector(
        reinterpret_cast<const uint8_t*>(event.key.data()) + namespace_bytes,
        event.key.size() - namespace_bytes);
    auto value = builder->CreateVector(reinterpret_cast<const uint8_t*>(event.value.data()),
                                       event.value.size());
    matching.push_back(p::CreateEvent(
        *builder, shard, event.sequence,
        event.type == engine::EventType::kPut ? p::EventType::Put : p::EventType::Delete, key,
        value, event.meta.version, event.meta.timestamp));
  }
  return matching;
}

Service::Outcome Service::Handle(const RequestContext& context, const p::Request& request,
                                 flatbuffers::FlatBufferBuilder* b,
                                 absl::FunctionRef<Completion()> defer) {
  // A deferred answer is scrubbed as it is delivered (Deliver): every
  // completion defer gives is called through it.
  const Outcome outcome = HandleOperation(context, request, b, defer);
  if (config_.data_dir.empty()) return outcome;
  if (outcome == Outcome::kAnswered && MayNameFiles(p::FrameOf(*b))) {
    // Rare (an error naming a file): the answer is copied out and rebuilt.
    thread_local flatbuffers::FlatBufferBuilder scrubbed(256);
    scrubbed.Clear();
    if (ScrubResponse(p::FrameOf(*b), &scrubbed)) {
      const std::string frame(p::FrameOf(scrubbed));
      b->Clear();
      b->PushFlatBuffer(reinterpret_cast<const uint8_t*>(frame.data()), frame.size());
    }
  }
  return outcome;
}

void Service::Deliver(Completion& done, std::string frame) const {
  if (!config_.data_dir.empty()) {
    // Reused per thread: no allocation for the answers that name no file.
    thread_local flatbuffers::FlatBufferBuilder scrubbed(256);
    scrubbed.Clear();
    if (ScrubResponse(frame, &scrubbed)) frame = std::string(p::FrameOf(scrubbed));
  }
  done(std::move(frame));
}

absl::Status Service::ClientStatus(const absl::Status& status) const {
  if (status.ok() || config_.data_dir.empty() ||
      !absl::StrContains(status.message(), config_.data_dir)) {
    return status;
  }
  static std::atomic<uint64_t> next_reference{1};
  const uint64_t reference = next_reference.fetch_add(1, std::memory_order_relaxed);
  Log(Level::kError, "error %d answered to a client without its message: %s", reference,
      status.ToString());
  // A full disk stays recognisable (507 / InsufficientStorage): the
  // status keeps its payloads, and says so in words.
  absl::Status scrubbed(
      status.code(),
      absl::StrCat(engine::IsNoSpace(status) || p::IsInsufficientStorage(status)
                       ? "the server's disk is full (No space left on device): "
                       : "",
                   "storage error (", absl::StatusCodeToString(status.code()),
                   "); the server log has the details as error ", reference));
  status.ForEachPayload([&scrubbed](absl::string_view type_url, const absl::Cord& payload) {
    scrubbed.SetPayload(type_url, payload);
  });
  return scrubbed;
}

bool Service::MayNameFiles(absl::string_view frame) {
  // Every answer passes here: an OK answer other than a batch's (nearly all
  // of them) carries no message, so it is not looked into further.
  const p::Response* response = flatbuffers::GetSizePrefixedRoot<p::Response>(frame.data());
  return response->status() != p::StatusCode::Ok ||
         response->result_type() == p::Result::BatchResult;
}

bool Service::ScrubResponse(absl::string_view frame, flatbuffers::FlatBufferBuilder* out) const {
  const p::Response* response = flatbuffers::GetSizePrefixedRoot<p::Response>(frame.data());
  auto names_data_dir = [this](const flatbuffers::String* message) {
    return message != nullptr &&
           absl::StrContains(absl::string_view(message->c_str(), message->size()),
                             config_.data_dir);
  };
  if (response->status() != p::StatusCode::Ok) {
    if (!names_data_dir(response->message())) return false;
    p::BuildStatusResponse(out, response->request_id(),
                           ClientStatus(p::StatusFromResponse(*response)));
    return true;
  }
  const p::BatchResult* batch = response->result_as_BatchResult();
  if (batch == nullptr || batch->items() == nullptr) return false;
  bool named = false;
  for (const p::BatchItemResult* item : *batch->items()) named = named || names_data_dir(item->message());
  if (!named) return false;
  std::vector<absl::StatusOr<engine::WriteResult>> results;
  for (const p::BatchItemResult* item : *batch->items()) {
    if (item->status() == p::StatusCode::Ok) {
      engine::WriteResult written;
      written.version = item->version();
      results.emplace_back(written);
    } else {
      results.emplace_back(ClientStatus(absl::Status(
          p::FromWire(item->status()),
          item->message() == nullptr
              ? absl::string_view()
              : absl::string_view(item->message()->c_str(), item->message()->size()))));
    }
  }
  BuildBatchResponse(out, response->request_id(), results);
  return true;
}

Service::Outcome Service::HandleOperation(const RequestContext& context, const p::Request& request,
                                          flatbuffers::FlatBufferBuilder* b,
                                          absl::FunctionRef<Completion()> defer) {
  counters_->requests.fetch_add(1, std::memory_order_relaxed);
  const uint64_t id = request.request_id();
  switch (request.operation_type()) {
    case p::Operation::Hello: {
      MembersFunction members_source;
      {
        absl::MutexLock lock(&node_id_mu_);
        members_source = members_;
      }
      b->Clear();
      std::vector<flatbuffers::Offset<p::MemberInfo>> members;
      if (members_source) {
        for (const auto& [member_id, address] : members_source()) {
          auto member_node = b->CreateString(member_id);
          auto member_address = b->CreateString(address);
          members.push_back(p::CreateMemberInfo(*b, member_node, member_address));
        }
      }
      auto member_vector = b->CreateVector(members);
      auto node = b->CreateString(NodeId());
      auto server_version =
          config_.server_version.empty() ? 0 : b->CreateString(config_.server_version);
      auto key_prefix =
          context.key_prefix.empty()
              ? 0
              : b->CreateVector(reinterpret_cast<const uint8_t*>(context.key_prefix.data()),
                                context.key_prefix.size());
      auto hello = p::CreateHelloResult(*b, p::kProtocolVersion, node, engine_->ShardCount(),
                                        config_.limits.max_frame_bytes,
                                        config_.limits.max_key_bytes,
                                        config_.limits.max_value_bytes,
                                        config_.limits.max_batch_items, member_vector,
                                        server_version, key_prefix);
      p::FinishResponse(b, id, p::Result::HelloResult, hello.Union());
      return Outcome::kAnswered;
    }
    case p::Operation::Ping: {
      const p::Ping* ping = request.operation_as_Ping();
      b->Clear();
      auto payload = Bytes(b, p::View(ping->payload()));
      auto result = p::CreatePingResult(*b, payload);
      p::FinishResponse(b, id, p::Result::PingResult, result.Union());
      return Outcome::kAnswered;
    }
    case p::Operation::Get:
      return HandleGet(context, id, *request.operation_as_Get(), b, defer);
    case p::Operation::GetVersion: {
      const p::GetVersion* get = request.operation_as_GetVersion();
      if (!context.may_read) {
        p::BuildStatusResponse(b, id, NotPermitted("read"));
        return Outcome::kAnswered;
      }
      std::string scratch;
      absl::StatusOr<absl::string_view> key = EngineKey(context, p::View(get->key()), &scratch);
      if (!key.ok()) {
        p::BuildStatusResponse(b, id, key.status());
        return Outcome::kAnswered;
      }
      if (!Permits(context, *key, kAccessRead)) {
        p::BuildStatusResponse(b, id, AccessDenied("read"));
        return Outcome::kAnswered;
      }
      if (ConsensusKeys* consensus = ConsensusFor(*key); consensus != nullptr) {
        return ConsensusGetVersion(consensus, id, std::string(*key), get->version(), b, defer);
      }
      absl::StatusOr<engine::Record> record = engine_->GetVersion(*key, get->version());
      if (!record.ok()) {
        p::BuildStatusResponse(b, id, record.status());
        return Outcome::kAnswered;
      }
      b->Clear();
      auto value = Bytes(b, record->value);
      auto result = p::CreateValueResult(*b, value, record->meta.version, record->meta.timestamp,
                                         record->meta.expiry_unix_ms);
      p::FinishResponse(b, id, p::Result::ValueResult, result.Union());
      return Outcome::kAnswered;
    }
    case p::Operation::Put:
    case p::Operation::Delete:
      return HandleWrite(context, id, request, b, defer);
    case p::Operation::Batch:
      return HandleBatch(context, id, *request.operation_as_Batch(), b, defer);
    case p::Operation::Scan:
      return HandleScan(context, id, *request.operation_as_Scan(), b);
    case p::Operation::Stats:
      BuildStats(context, id, b);
      return Outcome::kAnswered;
    default:
      p::BuildStatusResponse(
          b, id,
          absl::UnimplementedError(absl::StrCat(
              "operation ", p::EnumNameOperation(request.operation_type()),
              " is not handled here")));
      return Outcome::kAnswered;
  }
}

Service::Outcome Service::HandleScan(const RequestContext& context, uint64_t id,
                                     const p::Scan& scan, flatbuffers::FlatBufferBuilder* b) {
  if (!context.may_read) {
    p::BuildStatusResponse(b, id, NotPermitted("read"));
    return Outcome::kAnswered;
  }
  // Every bound moves into the client's namespace; without one, the scan
  // starts after the reserved namespace (byte 0x00 sorts first).
  const std::string& ns = context.key_prefix;
  auto bound = [&ns](absl::string_view key) {
    return key.empty() ? std::string() : absl::StrCat(ns, key);
  };
  engine::ScanOptions options;
  options.prefix = absl::StrCat(ns, p::View(scan.prefix()));
  options.start_key = bound(p::View(scan.start_key()));
  options.end_key = bound(p::View(scan.end_key()));
  options.after_key = bound(p::View(scan.after_key()));
  if (ns.empty() && (options.start_key.empty() || IsReservedKey(options.start_key))) {
    options.start_key.assign(1, '\x01');
  }
  options.limit = scan.limit() == 0 ? 1000 : scan.limit();
  options.keys_only = scan.keys_only();
  // The answer must fit in a frame: half of one leaves room for the envelope
  // (the vectors' length fields and each item's table).
  options.max_bytes = config_.limits.max_frame_bytes / 2;
  bool filter = false;
  if (absl::Status status = AdmitRead(context, options.prefix, &filter); !status.ok()) {
    p::BuildStatusResponse(b, id, status);
    return Outcome::kAnswered;
  }
  absl::StatusOr<engine::ScanResult> page = engine_->Scan(options);
  if (!page.ok()) {
    p::BuildStatusResponse(b, id, page.status());
    return Outcome::kAnswered;
  }
  auto strip = [&ns](absl::string_view key) { return key.substr(std::min(ns.size(), key.size())); };
  b->Clear();
  std::vector<flatbuffers::Offset<p::ScanItem>> items;
  items.reserve(page->items.size());
  auto add = [&](const engine::ScanItem& item) {
    auto key = Bytes(b, strip(item.key));
    auto value = options.keys_only ? 0 : Bytes(b, item.value);
    items.push_back(p::CreateScanItem(*b, key, value, item.meta.version, item.meta.timestamp,
                                      item.meta.expiry_unix_ms));
  };
  std::string next_cursor;  // engine key; "" at the end
  if (!filter) {
    for (const engine::ScanItem& item : page->items) add(item);
    next_cursor = std::move(page->next_cursor);
  } else {
    // Keys checked one by one: on past the unreadable ones, in rounds, until
    // the page is full (keys or bytes) or the keys end; the cursor is the
    // last key returned (kMaxFilteredScanKeys).
    const uint32_t limit = options.limit;
    const uint64_t max_bytes = options.max_bytes;
    uint64_t bytes = 0;
    size_t scanned = 0;
    std::string last_returned;
    while (true) {
      bool full = false;
      for (const engine::ScanItem& item : page->items) {
        ++scanned;
        if (!Permits(context, item.key, kAccessRead)) continue;
        const uint64_t size = item.key.size() + item.value.size();
        if (items.size() == limit || (!items.empty() && bytes + size > max_bytes)) {
          full = true;
          break;
        }
        bytes += size;
        add(item);
        last_returned = item.key;
      }
      if (full || (!page->next_cursor.empty() && items.size() == limit)) {
        next_cursor = std::move(last_returned);
        break;
      }
      if (page->next_cursor.empty()) break;  // the end
      if (scanned >= kMaxFilteredScanKeys) {
        if (items.empty()) {
          p::BuildStatusResponse(b, id, FilteredScanExhausted());
          return Outcome::kAnswered;
        }
        next_cursor = std::move(last_returned);
        break;
      }
      options.after_key = std::move(page->next_cursor);
      options.limit = std::min(engine::kMaxScanLimit,
                               std::max<uint32_t>(kFilteredScanRound,
                                                  limit - static_cast<uint32_t>(items.size())));
      options.max_bytes = max_bytes - bytes;
      page = engine_->Scan(options);
      if (!page.ok()) {
        p::BuildStatusResponse(b, id, page.status());
        return Outcome::kAnswered;
      }
    }
  }
  auto vector = b->CreateVector(items);
  auto cursor = Bytes(b, strip(next_cursor));
  auto result = p::CreateScanResult(*b, vector, cursor);
  p::FinishResponse(b, id, p::Result::ScanResult, result.Union());
  return Outcome::kAnswered;
}

ConsensusKeys* Service::ConsensusFor(absl::string_view engine_key) const {
  ConsensusKeys* consensus = consensus_.load(std::memory_order_acquire);
  return consensus != nullptr && consensus->Covers(engine_key) ? consensus : nullptr;
}

Service::Outcome Service::ConsensusGetVersion(ConsensusKeys* consensus, uint64_t id,
                                              std::string key, uint64_t version,
                                              flatbuffers::FlatBufferBuilder* b,
                                              absl::FunctionRef<Completion()> defer) {
  using Read = absl::StatusOr<Coordinator::ReadResult>;
  auto build = [version](flatbuffers::FlatBufferBuilder* out, uint64_t request_id,
                         const Read& read) {
    if (read.ok() && read->found && read->version != version) {
      return p::BuildStatusResponse(
          out, request_id,
          absl::NotFoundError(absl::StrCat("version ", version,
                                           " is not kept: a consensus key keeps its current "
                                           "version only (", read->version, ")")));
    }
    BuildReadResponse(out, request_id, read);
  };
  return RunCluster<Read>(*this, id, b, defer, build, [&](auto finish) {
    consensus->Get(std::move(key), std::move(finish));
  });
}

Coordinator* Service::ClusterFor(const RequestContext& context) const {
  Coordinator* coordinator = coordinator_.load(std::memory_order_acquire);
  if (coordinator == nullptr || context.local_only || !coordinator->Active()) return nullptr;
  return coordinator;
}

Service::Outcome Service::HandleGet(const RequestContext& context, uint64_t id, const p::Get& get,
                                    flatbuffers::FlatBufferBuilder* b,
                                    absl::FunctionRef<Completion()> defer) {
  if (!context.may_read) {
    p::BuildStatusResponse(b, id, NotPermitted("read"));
    return Outcome::kAnswered;
  }
  // The value is copied once, from the engine's mapping straight into the
  // response; the scratch strings are reused by this thread.
  thread_local std::string value;
  thread_local std::string scratch;
  absl::StatusOr<absl::string_view> key = EngineKey(context, p::View(get.key()), &scratch);
  if (!key.ok()) {
    p::BuildStatusResponse(b, id, key.status());
    return Outcome::kAnswered;
  }
  if (!Permits(context, *key, kAccessRead)) {
    p::BuildStatusResponse(b, id, AccessDenied("read"));
    return Outcome::kAnswered;
  }
  if (ConsensusKeys* consensus = ConsensusFor(*key); consensus != nullptr) {
    using Read = absl::StatusOr<Coordinator::ReadResult>;
    return RunCluster<Read>(*this, id, b, defer, BuildReadResponse,
                            [&](auto finish) {
                              consensus->Get(std::string(*key), std::move(finish));
                            });
  }
  if (Coordinator* coordinator = ClusterFor(context); coordinator != nullptr) {
    using Read = absl::StatusOr<Coordinator::ReadResult>;
    return RunCluster<Read>(*this, id, b, defer, BuildReadResponse,
                            [&](auto finish) {
                              coordinator->Get(std::string(*key), get.consistency(),
                                               std::move(finish));
                            });
  }
  engine::ValueMeta meta;
  absl::Status status = engine_->Get(*key, &value, &meta);
  if (!status.ok()) {
    p::BuildStatusResponse(b, id, status);
    return Outcome::kAnswered;
  }
  BuildValueResponse(b, id, value, meta);
  return Outcome::kAnswered;
}

void Service::SetWriteAudit(WriteAudit audit) {
  owned_write_audit_ = std::make_unique<WriteAudit>(std::move(audit));
  write_audit_.store(owned_write_audit_.get(), std::memory_order_release);
}

void Service::AuditWrite(absl::string_view engine_key, bool is_put) const {
  const WriteAudit* audit = write_audit_.load(std::memory_order_acquire);
  if (audit == nullptr || !audit->audited(engine_key)) return;
  audit->record(engine_key, is_put);
}

Service::Outcome Service::HandleWrite(const RequestContext& context, uint64_t id,
                                      const p::Request& request,
                                      flatbuffers::FlatBufferBuilder* b,
                                      absl::FunctionRef<Completion()> defer) {
  if (absl::Status status = AdmitWrite(); !status.ok()) {
    p::BuildStatusResponse(b, id, status);
    return Outcome::kAnswered;
  }
  if (!context.may_write) {
    p::BuildStatusResponse(b, id, NotPermitted("write"));
    return Outcome::kAnswered;
  }
  engine::WriteOptions options;
  absl::string_view key;
  absl::string_view value;
  p::Consistency consistency;
  const bool is_put = request.operation_type() == p::Operation::Put;
  if (is_put) {
    const p::Put* put = request.operation_as_Put();
    key = p::View(put->key());
    value = p::View(put->value());
    options.ttl_ms = put->ttl_ms();
    if (put->has_if_version()) options.if_version = put->if_version();
    consistency = put->consistency();
  } else {
    const p::Delete* del = request.operation_as_Delete();
    key = p::View(del->key());
    if (del->has_if_version()) options.if_version = del->if_version();
    consistency = del->consistency();
  }
  thread_local std::string scratch;
  absl::StatusOr<absl::string_view> engine_key = EngineKey(context, key, &scratch);
  if (!engine_key.ok()) {
    p::BuildStatusResponse(b, id, engine_key.status());
    return Outcome::kAnswered;
  }
  key = *engine_key;
  std::optional<bool> must_exist;
  if (absl::Status status = is_put ? CheckPut(context, key, options.if_version, &must_exist)
                            : Permits(context, key, kAccessDelete) ? absl::OkStatus()
                                                                   : AccessDenied("delete");
      !status.ok()) {
    p::BuildStatusResponse(b, id, status);
    return Outcome::kAnswered;
  }
  options.if_present = must_exist;  // set only where this node's engine takes the write
  AuditWrite(key, is_put);
  if (ConsensusKeys* consensus = ConsensusFor(key); consensus != nullptr) {
    if (options.ttl_ms != 0) {
      p::BuildStatusResponse(b, id, ConsensusTtlError());
      return Outcome::kAnswered;
    }
    using Written = absl::StatusOr<engine::WriteResult>;
    return RunCluster<Written>(*this, id, b, defer, BuildWriteResponse, [&](auto finish) {
          consensus->Write(std::string(key),
                           is_put ? std::optional<std::string>(std::string(value)) : std::nullopt,
                           options.if_version, std::move(finish));
        });
  }
  if (Coordinator* coordinator = ClusterFor(context); coordinator != nullptr) {
    if (options.if_version.has_value()) {
      p::BuildStatusResponse(b, id, CompareAndSetError());
      return Outcome::kAnswered;
    }
    if (options.ttl_ms < 0 || options.ttl_ms > p::kMaxTtlMs) {
      p::BuildStatusResponse(b, id, absl::InvalidArgumentError("ttl_ms must be in [0, 100 years]"));
      return Outcome::kAnswered;
    }
    using Written = absl::StatusOr<Coordinator::WriteOutcome>;
    return RunCluster<Written>(*this, id, b, defer, BuildClusterWriteResponse, [&](auto finish) {
          coordinator->Write(std::string(key),
                             is_put ? std::optional<std::string>(std::string(value))
                                    : std::nullopt,
                             options.ttl_ms, consistency, std::move(finish));
        });
  }
  if (always_sync_) {
    // The answer waits for the group commit's fdatasync, which completes on
    // the engine's group commit; the loop goes on serving others meanwhile.
    // Shared: the engine's callbacks are copyable, a completion is not.
    auto done = std::make_shared<Completion>(defer());
    auto callback = [this, id, done](absl::StatusOr<engine::WriteResult> result) {
      Deliver(*done, BuildFrame([&](flatbuffers::FlatBufferBuilder* builder) {
                BuildWriteResponse(builder, id, result);
              }));
    };
    if (is_put) {
      engine_->PutAsync(key, value, options, std::move(callback));
    } else {
      engine_->DeleteAsync(key, options, std::move(callback));
    }
    return Outcome::kDeferred;
  }
  BuildWriteResponse(b, id, is_put ? engine_->Put(key, value, options)
                                   : engine_->Delete(key, options));
  return Outcome::kAnswered;
}

absl::Status Service::CheckPut(const RequestContext& context, absl::string_view key,
                               std::optional<uint64_t> if_version,
                               std::optional<bool>* must_exist) const {
  must_exist->reset();
  if (context.access == nullptr) return absl::OkStatus();
  const uint32_t bits = context.access->Allowed(context.user_id, key);
  const bool create = (bits & kAccessCreate) != 0;
  const bool write = (bits & kAccessWrite) != 0;
  if (create && write) return absl::OkStatus();
  if (!create && !write) return AccessDenied("write");
  // One of the two: whether the key exists decides.
  if (if_version.has_value()) {
    // Compare-and-set: version 0 asks for the key to be absent.
    if (*if_version == 0 ? create : write) return absl::OkStatus();
    return AccessDenied(create ? "overwrite" : "create");
  }
  if (ClusterFor(context) != nullptr || ConsensusFor(key) != nullptr) {
    // This node may hold no copy of the key (a consensus key is never in
    // the engine): it cannot tell. Refuse rather than guess
    // (docs/security.md).
    return absl::PermissionDeniedError(absl::StrCat(
        "the access control list lets this user ", create ? "create" : "overwrite",
        " keys here but not ", create ? "overwrite" : "create",
        " them, and in a cluster a node cannot tell whether the key exists; "
        "the ACL needs both create and write"));
  }
  thread_local std::string value;
  engine::ValueMeta meta;
  const absl::Status found = engine_->Get(key, &value, &meta);
  if (found.ok()) {
    if (!write) return AccessDenied("overwrite");
    *must_exist = true;
    return absl::OkStatus();
  }
  if (!absl::IsNotFound(found)) return found;
  if (!create) return AccessDenied("create");
  *must_exist = false;
  return absl::OkStatus();
}

absl::Status Service::BatchItemAccess(const RequestContext& context, absl::string_view key,
                                      const p::BatchItem& item,
                                      std::optional<bool>* must_exist) const {
  must_exist->reset();
  if (context.access == nullptr) return absl::OkStatus();
  if (item.delete_()) {
    return Permits(context, key, kAccessDelete) ? absl::OkStatus() : AccessDenied("delete");
  }
  return CheckPut(context, key, std::nullopt, must_exist);
}

Service::Outcome Service::HandleBatch(const RequestContext& context, uint64_t id,
                                      const p::Batch& batch, flatbuffers::FlatBufferBuilder* b,
                                      absl::FunctionRef<Completion()> defer) {
  if (absl::Status status = AdmitWrite(); !status.ok()) {
    p::BuildStatusResponse(b, id, status);
    return Outcome::kAnswered;
  }
  if (!context.may_write) {
    p::BuildStatusResponse(b, id, NotPermitted("write"));
    return Outcome::kAnswered;
  }
  if (Coordinator* coordinator = ClusterFor(context); coordinator != nullptr) {
    return ClusterBatch(coordinator, context, id, batch, b, defer);
  }
  const auto& items = *batch.items();
  if (consensus_.load(std::memory_order_acquire) != nullptr) {
    std::string scratch;
    for (const p::BatchItem* item : items) {
      absl::StatusOr<absl::string_view> key = EngineKey(context, p::View(item->key()), &scratch);
      if (key.ok() && ConsensusFor(*key) != nullptr) {
        return ClusterBatch(nullptr, context, id, batch, b, defer);
      }
    }
  }
  // Results are gathered here; the answer goes out when the last write is
  // durable (at once unless --fsync=always).
  struct Gather {
    absl::Mutex mu;
    std::vector<absl::StatusOr<engine::WriteResult>> results ABSL_GUARDED_BY(mu);
    size_t remaining ABSL_GUARDED_BY(mu);
  };
  auto gather = std::make_shared<Gather>();
  {
    absl::MutexLock lock(&gather->mu);
    gather->results.assign(items.size(), absl::UnknownError("not applied"));
    gather->remaining = items.size();
  }
  const bool deferred = always_sync_;
  // Shared by the items' callbacks (copyable, as the engine's are).
  auto done = deferred ? std::make_shared<Completion>(defer()) : nullptr;
  // Whoever records the last result answers (when the answer is deferred).
  auto record = [this, gather, done, id](size_t i, absl::StatusOr<engine::WriteResult> result) {
    std::vector<absl::StatusOr<engine::WriteResult>> results;
    {
      absl::MutexLock lock(&gather->mu);
      assert(i < gather->results.size() && gather->remaining > 0);  // each item once
      gather->results[i] = std::move(result);
      if (--gather->remaining != 0 || done == nullptr) return;
      results = std::move(gather->results);
    }
    Deliver(*done, BuildFrame([&](flatbuffers::FlatBufferBuilder* builder) {
              BuildBatchResponse(builder, id, results);
            }));
  };
  for (size_t i = 0; i < items.size(); ++i) {
    const p::BatchItem* item = items.Get(i);
    engine::WriteOptions options;
    options.ttl_ms = item->ttl_ms();
    std::string scratch;
    absl::StatusOr<absl::string_view> key = EngineKey(context, p::View(item->key()), &scratch);
    if (!key.ok()) {
      record(i, key.status());  // refused before the engine
      continue;
    }
    std::optional<bool> must_exist;
    if (absl::Status status = BatchItemAccess(context, *key, *item, &must_exist); !status.ok()) {
      record(i, status);
      continue;
    }
    options.if_present = must_exist;
    AuditWrite(*key, !item->delete_());
    auto write_done = [record, i](absl::StatusOr<engine::WriteResult> result) {
      record(i, std::move(result));
    };
    if (item->delete_()) {
      engine_->DeleteAsync(*key, options, write_done);
    } else {
      engine_->PutAsync(*key, p::View(item->value()), options, write_done);
    }
  }
  if (deferred) return Outcome::kDeferred;
  // Not deferred: the engine called every write's callback before returning.
  absl::MutexLock lock(&gather->mu);
  BuildBatchResponse(b, id, gather->results);
  return Outcome::kAnswered;
}

Service::Outcome Service::ClusterBatch(Coordinator* coordinator,
                                       const RequestContext& context, uint64_t id,
                                       const p::Batch& batch, flatbuffers::FlatBufferBuilder* b,
                                       absl::FunctionRef<Completion()> defer) {
  using Results = std::vector<absl::StatusOr<engine::WriteResult>>;
  return RunCluster<Results>(*this, id, b, defer, BuildBatchResponse,
                             [&](std::function<void(Results)> finish) {
    // Each item goes through the coordinator on its own; whoever records the
    // last result finishes.
    struct Gather {
      absl::Mutex mu;
      Results results ABSL_GUARDED_BY(mu);
      size_t remaining ABSL_GUARDED_BY(mu);
      std::function<void(Results)> finish;
    };
    const auto& items = *batch.items();
    auto gather = std::make_shared<Gather>();
    {
      absl::MutexLock lock(&gather->mu);
      gather->results.assign(items.size(), absl::UnknownError("not applied"));
      gather->remaining = items.size();
    }
    gather->finish = std::move(finish);
    auto record = [gather](size_t i, absl::StatusOr<engine::WriteResult> result) {
      Results done;
      {
        absl::MutexLock lock(&gather->mu);
        gather->results[i] = std::move(result);
        assert(gather->remaining > 0);  // each item's outcome arrives once
        if (--gather->remaining != 0) return;
        done = std::move(gather->results);
      }
      gather->finish(std::move(done));
    };
    if (items.size() == 0) return gather->finish(Results());
    for (size_t i = 0; i < items.size(); ++i) {
      const p::BatchItem* item = items.Get(i);
      std::string scratch;
      absl::StatusOr<absl::string_view> key = EngineKey(context, p::View(item->key()), &scratch);
      if (!key.ok()) {
        record(i, key.status());
        continue;
      }
      std::optional<bool> must_exist;
      if (absl::Status status = BatchItemAccess(context, *key, *item, &must_exist); !status.ok()) {
        record(i, status);
        continue;
      }
      if (item->ttl_ms() < 0 || item->ttl_ms() > p::kMaxTtlMs) {
        record(i, absl::InvalidArgumentError("ttl_ms must be in [0, 100 years]"));
        continue;
      }
      ConsensusKeys* const consensus = ConsensusFor(*key);
      if (consensus != nullptr && item->ttl_ms() != 0) {
        record(i, ConsensusTtlError());
        continue;
      }
      AuditWrite(*key, !item->delete_());
      std::optional<std::string> value;
      if (!item->delete_()) value.emplace(p::View(item->value()));
      if (consensus != nullptr) {
        consensus->Write(std::string(*key), std::move(value), std::nullopt,
                         [record, i](absl::StatusOr<engine::WriteResult> written) {
                           record(i, std::move(written));
                         });
        continue;
      }
      if (coordinator == nullptr) {
        // A single node: this node's engine.
        engine::WriteOptions options;
        options.ttl_ms = item->ttl_ms();
        options.if_present = must_exist;
        auto write_done = [record, i](absl::StatusOr<engine::WriteResult> result) {
          record(i, std::move(result));
        };
        if (value.has_value()) {
          engine_->PutAsync(*key, *value, options, write_done);
        } else {
          engine_->DeleteAsync(*key, options, write_done);
        }
        continue;
      }
      coordinator->Write(std::string(*key), std::move(value), item->ttl_ms(), batch.consistency(),
                         [record, i](absl::StatusOr<Coordinator::WriteOutcome> written) {
                           if (!written.ok()) return record(i, written.status());
                           record(i, written->result);
                         });
    }
  });
}

void Service::BuildStats(const RequestContext& context, uint64_t id,
                         flatbuffers::FlatBufferBuilder* b) {
  std::vector<uint64_t> last_sequences;
  for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
    last_sequences.push_back(engine_->LastSequence(shard));
  }
  if (context.access != nullptr && TenantOf(context.key_prefix) != context.user_id) {
    // Another user's namespace: its figures are not this caller's.
    p::BuildStatusResponse(b, id, absl::PermissionDeniedError(
                                      "statistics are of the caller's own namespace only"));
    return;
  }
  if (!context.key_prefix.empty()) {
    // A tenant sees its own key count and what resuming a watch needs; the
    // node's figures (other tenants' keys among them) are not its business.
    const engine::Engine::PrefixStats own = engine_->CountPrefix(context.key_prefix);
    b->Clear();
    auto sequences = b->CreateVector(last_sequences);
    p::StatsResultBuilder result(*b);
    result.add_keys(own.keys);
    result.add_shard_count(engine_->ShardCount());
    result.add_last_sequences(sequences);
    auto offset = result.Finish();
    p::FinishResponse(b, id, p::Result::StatsResult, offset.Union());
    return;
  }
  const engine::Stats stats = engine_->GetStats();
  b->Clear();
  auto sequences = b->CreateVector(last_sequences);
  p::StatsResultBuilder result(*b);
  // The clients' keys: the server's own records (accounts, hints) are not counted.
  result.add_keys(stats.client_keys);
  result.add_tombstones(stats.tombstones);
  result.add_segments(stats.segments);
  result.add_log_bytes(stats.log_bytes);
  result.add_dead_bytes(stats.dead_bytes);
  result.add_index_bytes(stats.index_bytes);
  result.add_puts(stats.puts);
  result.add_deletes(stats.deletes);
  result.add_gets(stats.gets);
  result.add_fsyncs(stats.fsyncs);
  result.add_compactions(stats.compactions);
  result.add_expired_swept(stats.expired_swept);
  result.add_connections(counters_->connections.load());
  result.add_requests(counters_->requests.load());
  result.add_uptime_ms(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()) -
                                             counters_->start_unix_ms));
  result.add_shard_count(engine_->ShardCount());
  result.add_last_sequences(sequences);
  auto offset = result.Finish();
  p::FinishResponse(b, id, p::Result::StatsResult, offset.Union());
}

}  // namespace logkv::server
