// The console's data browser across a cluster (docs/console.md): the keys
// of a user are spread over the members by the ring, so one node's engine
// holds only some of them. GET /v1/kv asks every live member for a page
// (the ReadKeys peer operation, docs/protocol.md) and merges the pages;
// GET /v1/watch reads the other members' engine events (ReadEvents) beside
// its own.
//
// Everything here speaks of engine keys: a tenant's namespace is part of
// the prefix asked and is stripped by the caller. The server's own reserved
// keys (accounts, hints, membership) are never listed or sent.
//
// Thread-safety: ListKeys may be called from any thread; its done runs on
// the caller's thread (nothing to ask) or the peer transport's. RemoteEvents
// is shared between the loop that owns a watch stream (Ready, Take, Close)
// and the transport's thread (its polls); its state is under its mutex.
#ifndef LOGKV_SERVER_HTTP_CLUSTER_BROWSE_H_
#define LOGKV_SERVER_HTTP_CLUSTER_BROWSE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/service.h"

namespace logkv::server::cluster {
class ClusterNode;
}  // namespace logkv::server::cluster

namespace logkv::server::http {

// ---- Listing --------------------------------------------------------------------------

struct ListedKey {
  std::string key;  // the engine key
  uint64_t version = 0;
  uint64_t timestamp = 0;  // hybrid logical clock
  int64_t expiry_unix_ms = 0;
  uint64_t size = 0;  // of the value
};

// One member's answer to a Scan: its keys in key order, and whether it
// holds more after the last one (its page ended on the limit or on bytes).
struct MemberPage {
  std::vector<ListedKey> keys;
  bool more = false;
};

// The merged page: keys in order, each once.
struct ListPage {
  std::vector<ListedKey> keys;
  bool more = false;  // the listing goes on after keys.back() (the next cursor)
  std::vector<std::string> unreachable;  // members that did not answer
};

// Merges the members' pages into at most limit keys. A key held by several
// members (its replicas) comes once, as the copy with the newest timestamp.
// The page ends at the first place a member's page ended while that member
// had more: every key up to it was in some member's page, so paging on from
// the last key loses none and repeats none.
ListPage MergePages(std::vector<MemberPage> pages, uint32_t limit);

// A page of the engine keys beginning with prefix, after the key after (""
// from the start), at most limit, from this node's engine and every other
// live member (ReadKeys over the peer transport, 3 s each); a member that
// does not answer is named in unreachable. cluster may be null (a single
// node).
using ListDone = std::function<void(ListPage page)>;
void ListKeys(Service* service, cluster::ClusterNode* cluster, const std::string& prefix,
              const std::string& after, uint32_t limit, ListDone done);

// ---- Watching -------------------------------------------------------------------------

// Registers the peer operations ReadKeys (a page of this node's engine
// keys) and ReadEvents (its engine events after a cursor) on cluster.
// REQUIRES: before cluster starts.
void AddBrowseHandlers(cluster::ClusterNode* cluster, Service* service);

// Where a watch stream stands on each member: node id -> the last event
// sequence it was sent, per shard. The SSE id of the stream's events, as
// compact JSON ({"n1":[42,17],"n2":[40,9]}), so a client that reconnects
// with Last-Event-ID resumes where it was, on any node.
using ClusterCursor = absl::flat_hash_map<std::string, std::vector<uint64_t>>;
std::string EncodeClusterCursor(const ClusterCursor& cursor);
absl::StatusOr<ClusterCursor> DecodeClusterCursor(absl::string_view text);

// One event of another member, as ReadEvents sent it.
struct RemoteEvent {
  uint32_t shard = 0;
  uint64_t sequence = 0;
  bool put = true;
  std::string key;  // the engine key
  std::string value;
  uint64_t version = 0;
  uint64_t timestamp = 0;
};

// The other members' events for one watch stream: each live member (and
// one that joins later, from when it is seen) is asked for its events after
// the stream's cursor on it every poll interval, or at once while it has
// more. What comes is queued for the stream's loop, which wake() tells.
class RemoteEvents : public std::enable_shared_from_this<RemoteEvents> {
 public:
  struct Options {
    std::string prefix;  // engine keys
    absl::Duration poll_interval = absl::Milliseconds(200);
    // While this much is queued and not taken, members are not asked.
    size_t max_queued_bytes = 4u << 20;
    uint32_t max_events = 512;
    std::function<void()> wake;  // any thread; required
  };

  // One member's events in its order. reset: this member's cursor could not
  // be followed (why); the events between are lost and after is where the
  // stream goes on from on it.
  struct Batch {
    std::string member;
    std::vector<RemoteEvent> events;
    std::vector<uint64_t> after;
    std::string reset;
  };

  // Starts polling the members other than this node. resume: where a
  // resumed stream was on each member (absent: from now, and a member that
  // is live but missing from a resumed cursor gets a reset batch); null when
  // the stream is new.
  static std::shared_ptr<RemoteEvents> Start(cluster::ClusterNode* cluster, Options options,
                                             const ClusterCursor* resume);
  RemoteEvents(cluster::ClusterNode* cluster, Options options);
  ~RemoteEvents();

  // Whether every member seen at the start has a cursor (it answered once,
  // failed once, or was given one): events written from then on reach the
  // stream. Also true a few seconds after the start whatever happened.
  bool Ready() const ABSL_LOCKS_EXCLUDED(mu_);
  // The members seen at the start that had not answered yet when Ready
  // first held, for the ready event.
  std::vector<std::string> Unreachable() const ABSL_LOCKS_EXCLUDED(mu_);
  // What arrived since the last call, in order of arrival.
  std::vector<Batch> Take() ABSL_LOCKS_EXCLUDED(mu_);
  // The stream ended: polls stop at their next turn.
  void Close() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Member {
    std::string address;
    std::vector<uint64_t> after;  // empty: to be opened at the member's newest events
    bool answered = false;        // a first answer, or a failure
    std::string reset;            // to report once the member's new cursor is known
  };

  void Track(const std::string& id, const std::string& address, std::vector<uint64_t> after,
             std::string reset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Poll(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  void OnAnswer(const std::string& id, absl::StatusOr<std::string> frame)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Again(const std::string& id, absl::Duration delay);
  // Every second: members that joined since are watched from now.
  void Discover() ABSL_LOCKS_EXCLUDED(mu_);

  cluster::ClusterNode* const cluster_;
  const Options options_;
  const absl::Time started_ = absl::Now();
  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> initial_ ABSL_GUARDED_BY(mu_);
  std::deque<Batch> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// The newest timestamp a watch stream sent per key, for the last few
// thousand keys: the same change read from several replicas goes out once,
// and a change older than one already sent for its key is not sent.
class RecentChanges {
 public:
  explicit RecentChanges(size_t capacity = 4096) : capacity_(capacity) {}
  // Whether a change of key at timestamp is news (and remembers it).
  bool Admit(const std::string& key, uint64_t timestamp);

 private:
  const size_t capacity_;
  absl::flat_hash_map<std::string, uint64_t> newest_;
  std::deque<std::string> order_;  // oldest first, for eviction
};

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_CLUSTER_BROWSE_H_
