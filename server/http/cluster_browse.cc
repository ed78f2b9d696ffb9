#include "server/http/cluster_browse.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "server/cluster/cluster_node.h"
#include "server/cluster/membership.h"
#include "server/cluster/peer_transport.h"
#include "server/namespaces.h"

namespace logkv::server::http {

namespace p = ::logkv::protocol;

namespace {

// A member's answer to a listing or an event read.
constexpr absl::Duration kPeerTimeout = absl::Seconds(3);
// How long a watch stream waits for every member's first answer before it
// says it is ready anyway (naming those that did not answer).
constexpr absl::Duration kReadyWithin = absl::Seconds(3);
// A member that failed is asked again after this long.
constexpr absl::Duration kRetryFailed = absl::Seconds(1);
constexpr absl::Duration kDiscoverEvery = absl::Seconds(1);
constexpr uint32_t kDefaultReadEvents = 512;

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder* b,
                                                        absl::string_view bytes) {
  return b->CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

const p::Response& ResponseOf(const std::string& frame) {
  return *flatbuffers::GetSizePrefixedRoot<p::Response>(
      reinterpret_cast<const uint8_t*>(frame.data()));
}

// The other members that hold data (Alive or Suspect): id and address.
std::vector<cluster::Member> OtherLiveMembers(cluster::ClusterNode* cluster) {
  std::vector<cluster::Member> members;
  if (cluster == nullptr) return members;
  const cluster::Membership* membership = cluster->membership();
  if (membership == nullptr) return members;
  for (cluster::Member& member : membership->LiveMembers()) {
    if (member.node_id != cluster->node_id() && !member.address.empty()) {
      members.push_back(std::move(member));
    }
  }
  return members;
}

// Whether the keys under prefix may be browsed: never the server's own
// reserved keys (accounts, hints, membership), but a tenant's, which are
// reserved keys too ("\0t" and the user id).
bool Browsable(absl::string_view prefix) {
  return !IsReservedKey(prefix) ||
         (prefix.size() >= kTenantPrefixBytes && absl::StartsWith(prefix, kTenantPrefix));
}

// A page of engine's keys under prefix after after: what ReadKeys answers.
absl::StatusOr<engine::ScanResult> ScanEngine(engine::Engine* engine, absl::string_view prefix,
                                              absl::string_view after, uint32_t limit,
                                              uint64_t max_bytes) {
  if (!Browsable(prefix)) return engine::ScanResult{};
  engine::ScanOptions options;
  options.prefix = std::string(prefix);
  // Without a prefix, after the reserved namespace (byte 0x00 sorts first).
  if (prefix.empty()) options.start_key.assign(1, '\x01');
  options.after_key = std::string(after);
  options.limit = std::min(limit == 0 ? 1000 : limit, engine::kMaxScanLimit);
  options.max_bytes = max_bytes;
  return engine->Scan(options);
}

MemberPage PageOf(const engine::ScanResult& result) {
  MemberPage page;
  page.keys.reserve(result.items.size());
  for (const engine::ScanItem& item : result.items) {
    page.keys.push_back(ListedKey{.key = item.key,
                                  .version = item.meta.version,
                                  .timestamp = item.meta.timestamp,
                                  .expiry_unix_ms = item.meta.expiry_unix_ms,
                                  .size = item.value.size()});
  }
  page.more = !result.next_cursor.empty();
  return page;
}

absl::StatusOr<MemberPage> PageOf(const p::Response& response) {
  if (absl::Status status = p::StatusFromResponse(response); !status.ok()) return status;
  const p::ScanResult* result = response.result_as_ScanResult();
  if (result == nullptr) return absl::InternalError("ReadKeys answered without a ScanResult");
  MemberPage page;
  if (result->items() != nullptr) {
    page.keys.reserve(result->items()->size());
    for (const p::ScanItem* item : *result->items()) {
      page.keys.push_back(ListedKey{
          .key = std::string(p::View(item->key())),
          .version = item->version(),
          .timestamp = item->timestamp(),
          .expiry_unix_ms = item->expiry_unix_ms(),
          .size = item->value() != nullptr ? item->value()->size() : 0});
    }
  }
  page.more = !p::View(result->next_cursor()).empty();
  return page;
}

// What ListKeys waits for: one answer per member asked.
struct ListGather {
  explicit ListGather(uint32_t limit, size_t waiting, ListDone done)
      : limit(limit), waiting(waiting), done(std::move(done)) {}
  const uint32_t limit;
  absl::Mutex mu;
  size_t waiting ABSL_GUARDED_BY(mu);
  std::vector<MemberPage> pages ABSL_GUARDED_BY(mu);
  std::vector<std::string> unreachable ABSL_GUARDED_BY(mu);
  ListDone done;

  // One answer (or its absence); the last one merges and answers.
  void Add(const std::string& member, absl::StatusOr<MemberPage> page) {
    std::vector<MemberPage> all;
    std::vector<std::string> missing;
    {
      absl::MutexLock lock(&mu);
      if (page.ok()) {
        pages.push_back(*std::move(page));
      } else {
        unreachable.push_back(member);
      }
      if (--waiting > 0) return;
      all = std::move(pages);
      missing = std::move(unreachable);
    }
    ListPage merged = MergePages(std::move(all), limit);
    std::sort(missing.begin(), missing.end());
    merged.unreachable = std::move(missing);
    done(std::move(merged));
  }
};

}  // namespace

// ---- Listing --------------------------------------------------------------------------

ListPage MergePages(std::vector<MemberPage> pages, uint32_t limit) {
  // The first key a member may hold past its page: nothing beyond its last
  // key is known, so the merged page stops there.
  std::optional<std::string> cutoff;
  size_t total = 0;
  for (const MemberPage& page : pages) {
    total += page.keys.size();
    if (page.more && !page.keys.empty() && (!cutoff || page.keys.back().key < *cutoff)) {
      cutoff = page.keys.back().key;
    }
  }
  std::vector<ListedKey> all;
  all.reserve(total);
  for (MemberPage& page : pages) {
    for (ListedKey& key : page.keys) all.push_back(std::move(key));
  }
  // By key, the newest copy first.
  std::sort(all.begin(), all.end(), [](const ListedKey& a, const ListedKey& b) {
    return a.key != b.key ? a.key < b.key : a.timestamp > b.timestamp;
  });
  ListPage merged;
  bool any_more = cutoff.has_value();
  for (ListedKey& key : all) {
    if (!merged.keys.empty() && merged.keys.back().key == key.key) continue;  // a replica's copy
    if (cutoff && key.key > *cutoff) break;
    if (merged.keys.size() == limit) {
      any_more = true;
      break;
    }
    merged.keys.push_back(std::move(key));
  }
  merged.more = any_more && !merged.keys.empty();
  return merged;
}

void ListKeys(Service* service, cluster::ClusterNode* cluster, const std::string& prefix,
              const std::string& after, uint32_t limit, ListDone done) {
  const std::vector<cluster::Member> members = OtherLiveMembers(cluster);
  auto gather = std::make_shared<ListGather>(limit, members.size() + 1, std::move(done));
  if (!members.empty()) {
    flatbuffers::FlatBufferBuilder builder(256);
    const std::string frame = cluster::FinishPeerRequest(
        &builder, p::Operation::ReadKeys,
        p::CreateReadKeys(builder, Bytes(&builder, prefix), Bytes(&builder, after), limit).Union());
    for (const cluster::Member& member : members) {
      cluster->transport()->Send(
          member.address, frame, kPeerTimeout,
          [gather, id = member.node_id](absl::StatusOr<std::string> answer) {
            gather->Add(id, answer.ok() ? PageOf(ResponseOf(*answer))
                                        : absl::StatusOr<MemberPage>(answer.status()));
          });
    }
  }
  // This node's engine, as a member's ReadKeys reads it. Its page bytes are
  // bounded as a member's are (the answer of each must fit in a frame).
  absl::StatusOr<engine::ScanResult> local = ScanEngine(
      service->engine(), prefix, after, limit, service->config().limits.max_frame_bytes / 2);
  gather->Add(cluster != nullptr ? cluster->node_id() : service->NodeId(),
              local.ok() ? absl::StatusOr<MemberPage>(PageOf(*local))
                         : absl::StatusOr<MemberPage>(local.status()));
}

// ---- The peer operations ----------------------------------------------------

void AddBrowseHandlers(cluster::ClusterNode* cluster, Service* service) {
  cluster->AddPeerOperationHandler(
      p::Operation::ReadKeys,
      [service](const p::Request& request, flatbuffers::FlatBufferBuilder* b,
                absl::FunctionRef<Completion()>) {
        const uint64_t id = request.request_id();
        const p::ReadKeys* read = request.operation_as_ReadKeys();
        absl::StatusOr<engine::ScanResult> page =
            ScanEngine(service->engine(), p::View(read->prefix()), p::View(read->after_key()),
                       read->limit(), service->config().limits.max_frame_bytes / 2);
        if (!page.ok()) {
          p::BuildStatusResponse(b, id, page.status());
          return Outcome::kAnswered;
        }
        b->Clear();
        std::vector<flatbuffers::Offset<p::ScanItem>> items;
        items.reserve(page->items.size());
        for (const engine::ScanItem& item : page->items) {
          auto key = Bytes(b, item.key);
          auto value = Bytes(b, item.value);
          items.push_back(p::CreateScanItem(*b, key, value, item.meta.version,
                                            item.meta.timestamp, item.meta.expiry_unix_ms));
        }
        auto vector = b->CreateVector(items);
        auto cursor = Bytes(b, page->next_cursor);
        p::FinishResponse(b, id, p::Result::ScanResult,
                          p::CreateScanResult(*b, vector, cursor).Union());
        return Outcome::kAnswered;
      });
  cluster->AddPeerOperationHandler(
      p::Operation::ReadEvents,
      [service](const p::Request& request, flatbuffers::FlatBufferBuilder* b,
                absl::FunctionRef<Completion()>) {
        const uint64_t id = request.request_id();
        const p::ReadEvents* read = request.operation_as_ReadEvents();
        engine::Engine* engine = service->engine();
        const uint32_t shards = engine->ShardCount();
        const absl::string_view prefix = p::View(read->prefix());
        std::vector<uint64_t> after;
        if (read->after_sequences() == nullptr || read->after_sequences()->size() == 0) {
          // Opened at the newest events: nothing to send yet.
          for (uint32_t shard = 0; shard < shards; ++shard) {
            after.push_back(engine->LastSequence(shard));
          }
          b->Clear();
          auto result = p::CreateEventsResult(
              *b, b->CreateVector(std::vector<flatbuffers::Offset<p::Event>>{}),
              b->CreateVector(after), false);
          p::FinishResponse(b, id, p::Result::EventsResult, result.Union());
          return Outcome::kAnswered;
        }
        if (read->after_sequences()->size() != shards) {
          p::BuildStatusResponse(
              b, id,
              absl::InvalidArgumentError(absl::StrCat(
                  "after_sequences has ", read->after_sequences()->size(), " entries; node ",
                  service->NodeId(), " has ", shards, " shards")));
          return Outcome::kAnswered;
        }
        after.assign(read->after_sequences()->begin(), read->after_sequences()->end());
        for (uint32_t shard = 0; shard < shards; ++shard) {
          if (after[shard] > engine->LastSequence(shard)) {
            // Its log began again (the node was wiped): the cursor means nothing here.
            p::BuildStatusResponse(
                b, id,
                absl::OutOfRangeError(absl::StrCat(
                    "shard ", shard, " of node ", service->NodeId(), " is at sequence ",
                    engine->LastSequence(shard), ", before the cursor's ", after[shard],
                    ": its log began again")));
            return Outcome::kAnswered;
          }
        }
        uint32_t events_left = read->max_events() == 0 ? kDefaultReadEvents : read->max_events();
        // Half a frame of keys and values leaves room for the envelope.
        uint64_t bytes_left = service->config().limits.max_frame_bytes / 2;
        b->Clear();
        std::vector<flatbuffers::Offset<p::Event>> matching;
        bool more = false;
        for (uint32_t shard = 0; shard < shards; ++shard) {
          if (engine->LastSequence(shard) <= after[shard]) continue;
          if (events_left == 0 || bytes_left == 0) {
            more = true;
            break;
          }
          uint64_t read_through = after[shard];
          absl::StatusOr<std::vector<engine::Event>> events =
              engine->ReadEvents(shard, after[shard], events_left, bytes_left, &read_through);
          if (!events.ok()) {
            p::BuildStatusResponse(b, id, events.status());
            return Outcome::kAnswered;
          }
          for (const engine::Event& event : *events) {
            after[shard] = event.sequence;
            events_left = events_left > 0 ? events_left - 1 : 0;
            const uint64_t bytes = event.key.size() + event.value.size();
            bytes_left = bytes_left > bytes ? bytes_left - bytes : 0;
            // The server's own keys only under a tenant's prefix (an empty
            // one holds them too, as in ScanEngine).
            if (!absl::StartsWith(event.key, prefix) ||
                (IsReservedKey(event.key) && (prefix.empty() || !Browsable(prefix)))) {
              continue;
            }
            matching.push_back(p::CreateEvent(
                *b, shard, event.sequence,
                event.type == engine::EventType::kPut ? p::EventType::Put : p::EventType::Delete,
                Bytes(b, event.key), Bytes(b, event.value), event.meta.version,
                event.meta.timestamp));
          }
          // Past the records that are no events (Forgets: delivered hints,
          // purged tombstones): a shard whose newest records are those has
          // nothing more to give, where the cursor left before them made the
          // peer ask again at once, and again.
          after[shard] = std::max(after[shard], read_through);
          if (engine->LastSequence(shard) > after[shard]) more = true;
        }
        auto events = b->CreateVector(matching);
        auto cursor = b->CreateVector(after);
        p::FinishResponse(b, id, p::Result::EventsResult,
                          p::CreateEventsResult(*b, events, cursor, more).Union());
        return Outcome::kAnswered;
      });
}

// ---- Cursors --------------------------------------------------------------------------

std::string EncodeClusterCursor(const ClusterCursor& cursor) {
  // Sorted by node id (json objects are), so equal cursors read the same.
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [node, sequences] : cursor) object[node] = sequences;
  return object.dump();
}

absl::StatusOr<ClusterCursor> DecodeClusterCursor(absl::string_view text) {
  const nlohmann::json object = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const absl::Status bad = absl::InvalidArgumentError(
      "Last-Event-ID must be the id of an event of GET /v1/watch: a JSON object of node ids "
      "to lists of sequence numbers");
  if (!object.is_object()) return bad;
  ClusterCursor cursor;
  for (const auto& [node, sequences] : object.items()) {
    if (!sequences.is_array()) return bad;
    std::vector<uint64_t>& out = cursor[node];
    for (const nlohmann::json& sequence : sequences) {
      if (!sequence.is_number_unsigned() && !(sequence.is_number_integer() && sequence >= 0)) {
        return bad;
      }
      out.push_back(sequence.get<uint64_t>());
    }
  }
  return cursor;
}

// ---- RemoteEvents ---------------------------------------------------------------------

RemoteEvents::RemoteEvents(cluster::ClusterNode* cluster, Options options)
    : cluster_(cluster), options_(std::move(options)) {}

RemoteEvents::~RemoteEvents() = default;

std::shared_ptr<RemoteEvents> RemoteEvents::Start(cluster::ClusterNode* cluster, Options options,
                                                  const ClusterCursor* resume) {
  auto self = std::make_shared<RemoteEvents>(cluster, std::move(options));
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&self->mu_);
    for (const cluster::Member& member : OtherLiveMembers(cluster)) {
      std::vector<uint64_t> after;
      std::string reset;
      if (resume != nullptr) {
        if (auto it = resume->find(member.node_id); it != resume->end()) {
          after = it->second;
        } else {
          reset = absl::StrCat("member ", member.node_id,
                               " was not in the stream resumed: its changes until now are lost");
        }
      }
      self->Track(member.node_id, member.address, std::move(after), std::move(reset));
      self->initial_.push_back(member.node_id);
      ids.push_back(member.node_id);
    }
  }
  for (const std::string& id : ids) self->Poll(id);
  std::weak_ptr<RemoteEvents> weak = self;
  cluster->transport()->RunAfter(kDiscoverEvery, [weak] {
    if (std::shared_ptr<RemoteEvents> alive = weak.lock()) alive->Discover();
  });
  return self;
}

void RemoteEvents::Track(const std::string& id, const std::string& address,
                         std::vector<uint64_t> after, std::string reset) {
  Member& member = members_[id];
  member.address = address;
  member.answered = !after.empty();
  member.after = std::move(after);
  member.reset = std::move(reset);
}

bool RemoteEvents::Ready() const {
  if (absl::Now() - started_ > kReadyWithin) return true;
  absl::MutexLock lock(&mu_);
  for (const std::string& id : initial_) {
    auto it = members_.find(id);
    if (it != members_.end() && !it->second.answered) return false;
  }
  return true;
}

std::vector<std::string> RemoteEvents::Unreachable() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (const std::string& id : initial_) {
    auto it = members_.find(id);
    if (it != members_.end() && !it->second.answered) ids.push_back(id);
  }
  return ids;
}

std::vector<RemoteEvents::Batch> RemoteEvents::Take() {
  absl::MutexLock lock(&mu_);
  std::vector<Batch> batches(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.end()));
  queue_.clear();
  queued_bytes_ = 0;
  return batches;
}

void RemoteEvents::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  queue_.clear();
  queued_bytes_ = 0;
}

void RemoteEvents::Again(const std::string& id, absl::Duration delay) {
  // False when the transport stops: the chain ends.
  cluster_->transport()->RunAfter(delay, [self = shared_from_this(), id] { self->Poll(id); });
}

void RemoteEvents::Poll(const std::string& id) {
  std::string frame;
  std::string address;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    auto it = members_.find(id);
    if (it == members_.end()) return;
    if (queued_bytes_ > options_.max_queued_bytes) {
      // The stream's client has not taken what came: ask later.
      frame.clear();
    } else {
      flatbuffers::FlatBufferBuilder builder(256);
      frame = cluster::FinishPeerRequest(
          &builder, p::Operation::ReadEvents,
          p::CreateReadEvents(builder, Bytes(&builder, options_.prefix),
                              builder.CreateVector(it->second.after), options_.max_events)
              .Union());
      address = it->second.address;
    }
  }
  if (frame.empty()) {
    Again(id, options_.poll_interval);
    return;
  }
  cluster_->transport()->Send(address, std::move(frame), kPeerTimeout,
                              [self = shared_from_this(), id](absl::StatusOr<std::string> answer) {
                                self->OnAnswer(id, std::move(answer));
                              });
}

void RemoteEvents::OnAnswer(const std::string& id, absl::StatusOr<std::string> frame) {
  bool wake = false;
  absl::Duration next = options_.poll_interval;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    auto it = members_.find(id);
    if (it == members_.end()) return;
    Member& member = it->second;
    absl::Status status = frame.status();
    const p::EventsResult* result = nullptr;
    if (status.ok()) {
      status = p::StatusFromResponse(ResponseOf(*frame));
      if (status.ok()) {
        result = ResponseOf(*frame).result_as_EventsResult();
        if (result == nullptr || result->after_sequences() == nullptr) {
          status = absl::InternalError("ReadEvents answered without an EventsResult");
        }
      }
    }
    if (!status.ok()) {
      if (!member.after.empty() && (status.code() == absl::StatusCode::kOutOfRange ||
                                    status.code() == absl::StatusCode::kInvalidArgument)) {
        // The cursor cannot be followed there (compacted, or the member's
        // log began again): open it again at the newest events, and say so.
        member.reset = absl::StrCat("member ", id, ": ", status.message());
        member.after.clear();
        next = absl::ZeroDuration();
      } else {
        // Unreachable for now (or a member that does not know ReadEvents).
        wake = !member.answered;
        member.answered = true;
        next = kRetryFailed;
      }
    } else if (member.after.empty()) {
      member.after.assign(result->after_sequences()->begin(), result->after_sequences()->end());
      wake = !member.answered;
      member.answered = true;
      if (!member.reset.empty()) {
        Batch& batch = queue_.emplace_back();
        batch.member = id;
        batch.after = member.after;
        batch.reset = std::move(member.reset);
        member.reset.clear();
        wake = true;
      }
    } else {
      Batch batch;
      batch.member = id;
      if (result->events() != nullptr) {
        for (const p::Event* event : *result->events()) {
          RemoteEvent& out = batch.events.emplace_back();
          out.shard = event->shard();
          out.sequence = event->sequence();
          out.put = event->type() == p::EventType::Put;
          out.key = std::string(p::View(event->key()));
          out.value = std::string(p::View(event->value()));
          out.version = event->version();
          out.timestamp = event->timestamp();
          queued_bytes_ += out.key.size() + out.value.size();
        }
      }
      member.after.assign(result->after_sequences()->begin(), result->after_sequences()->end());
      if (!batch.events.empty()) {
        batch.after = member.after;
        queue_.push_back(std::move(batch));
        wake = true;
      }
      if (result->more()) next = absl::ZeroDuration();
    }
  }
  if (wake) options_.wake();
  Again(id, next);
}

void RemoteEvents::Discover() {
  std::vector<std::string> added;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    for (const cluster::Member& member : OtherLiveMembers(cluster_)) {
      if (members_.contains(member.node_id)) {
        members_[member.node_id].address = member.address;
        continue;
      }
      // A member that joined since the stream opened: from now on.
      Track(member.node_id, member.address, {}, "");
      added.push_back(member.node_id);
    }
  }
  for (const std::string& id : added) Poll(id);
  std::weak_ptr<RemoteEvents> weak = shared_from_this();
  cluster_->transport()->RunAfter(kDiscoverEvery, [weak] {
    if (std::shared_ptr<RemoteEvents> alive = weak.lock()) alive->Discover();
  });
}

// ---- RecentChanges --------------------------------------------------------------------

bool RecentChanges::Admit(const std::string& key, uint64_t timestamp) {
  auto [it, inserted] = newest_.try_emplace(key, timestamp);
  if (!inserted) {
    if (it->second >= timestamp) return false;
    it->second = timestamp;
    return true;
  }
  order_.push_back(key);
  if (order_.size() > capacity_) {
    newest_.erase(order_.front());
    order_.pop_front();
  }
  return true;
}

}  // namespace logkv::server::http
