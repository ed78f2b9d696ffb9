// The binary protocol's side of a connection (protocol/logkv.fbs): frames
// decoded from the input and checked against the limits before they are
// buffered, Hello and the session's credentials (ServerConfig::authenticate,
// check_session, admit_request), requests handed to the Service, the
// cluster's operations handed to the PeerHandler once a ClusterHello
// handshake made the connection a peer's, and the connection's watches,
// streamed from the engine when the Loop wakes it for new events.
//
// Thread-safety: loop thread only, but WatchQuota (any loop).
#ifndef LOGKV_SERVER_NET_BINARY_SESSION_H_
#define LOGKV_SERVER_NET_BINARY_SESSION_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "protocol/frame.h"
#include "server/net/connection.h"
#include "server/net/loop.h"
#include "server/server.h"
#include "server/service.h"

namespace logkv::server::net {

// Watches per user over every loop of a server
// (ServerConfig::max_watches_per_user; 0: no limit).
class WatchQuota {
 public:
  explicit WatchQuota(size_t max_per_user) : max_per_user_(max_per_user) {}
  // A watch of user_id (0: no user, always allowed) is opened; false when it
  // would pass the limit.
  bool Acquire(uint64_t user_id) ABSL_LOCKS_EXCLUDED(mu_);
  void Release(uint64_t user_id) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const size_t max_per_user_;
  absl::Mutex mu_;  // taken only to open and close watches
  absl::flat_hash_map<uint64_t, size_t> by_user_ ABSL_GUARDED_BY(mu_);
};

class BinarySession final : public ProtocolSession {
 public:
  // watch_quota must outlive the session.
  BinarySession(Connection& connection, WatchQuota* watch_quota);

  char* ReadSpace(size_t min_bytes, size_t* available) override {
    return decoder_.WritableSpace(min_bytes, available);
  }
  void Received(size_t bytes) override {
    decoder_.Commit(bytes);
    ProcessInput();
  }
  void ProcessInput() override;
  size_t buffered_input() const override { return decoder_.buffered_bytes(); }
  // A frame begun and not finished within binary_idle_timeout times out;
  // a connection that sends nothing for as long, owed nothing and with no
  // watch, is idle. Peers are never idle.
  Expiry CheckExpiry(int64_t now_ms) const override;
  void Expire() override;
  bool CredentialsHold() override { return SessionHolds(0); }
  bool OnEvents(EventsPass& pass) override;
  void OnClose() override;

 private:
  struct Watch {
    uint64_t user_id;             // whose per-user watch count it is in (0: none)
    Service::WatchCursor cursor;  // its keys, and per shard the last sequence sent
  };

  Loop& loop() { return *connection().loop; }
  const ServerConfig& config() const { return connection().loop->config(); }
  // Asks the engine to start loading the index memory of the keys of the
  // single-key requests among the next `frames` frames buffered (a
  // pipelined batch), before they are served one by one: their cache
  // misses then overlap. Returns how many frames it looked at.
  size_t PrefetchBufferedKeys(size_t frames);
  // Limits on the frame whose prefix has arrived, before its bytes are
  // buffered: false when it was refused (the connection then closes).
  bool AdmitFrame();
  // Answers status with request id 0 and closes: the stream is unusable.
  void RefuseFrame(const absl::Status& status);
  bool HandleHello(const protocol::Request& request);
  // Whether the session still holds (ServerConfig::check_session). When not,
  // the session ends: every watch and request_id (0: none, the connection
  // itself) are answered with the failure, and the connection closes.
  bool SessionHolds(uint64_t request_id);
  // Answers request; observes it (ServerConfig::protocol_observer) once answered.
  void Dispatch(const protocol::Request& request);
  // True when the answer was built in builder_ and appended to the output
  // (false: deferred, completed through DeferOn).
  bool DispatchOperation(const protocol::Request& request, int64_t start_ns);
  // As DispatchOperation, for ClusterHello and the peers' operations.
  bool DispatchPeer(const protocol::Request& request, int64_t start_ns);
  // The peer handshake (protocol/logkv.fbs, ClusterHello), both of its steps.
  void HandleClusterHello(const protocol::Request& request);
  // The completion of an answer deferred on this connection (Service::Handle's
  // contract); the answer is observed as operation's, begun at start_ns,
  // with subject (copied).
  Service::Completion DeferOn(protocol::Operation operation, int64_t start_ns,
                              absl::string_view subject);
  void Append(absl::string_view frame) { connection().out.append(frame.data(), frame.size()); }
  void AppendStatus(uint64_t request_id, const absl::Status& status);

  // context: the session's, or addressed to another namespace.
  void AddWatch(uint64_t request_id, const protocol::Watch& watch, const RequestContext& context);
  // Finishes in builder_ the WatchEvents answer of watch_id around events
  // (built in builder_ since its Clear), and appends it.
  void AppendWatchEvents(
      uint64_t watch_id,
      flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<protocol::Event>>> events);
  void RemoveWatch(uint64_t watch_request_id, const absl::Status& final_status);
  // Every watch ends with final_status.
  void RemoveAllWatches(const absl::Status& final_status);

  WatchQuota* const watch_quota_;
  protocol::FrameDecoder decoder_;
  flatbuffers::FlatBufferBuilder builder_{1024};
  Session session_;             // whose keys this connection sees
  bool authenticated_ = false;  // with auth on: a Hello with an API key succeeded
  bool is_peer_ = false;        // a cluster peer (ClusterHello accepted)
  // The peer handshake's nonces, once the first ClusterHello was answered.
  std::string peer_nonce_theirs_;
  std::string peer_nonce_own_;
  // Loop time the frame now arriving began, -1: none.
  int64_t frame_began_ms_ = -1;
  bool framed_ = false;  // a frame of this connection was taken
  // Frames at the decoder's front that PrefetchBufferedKeys looked at.
  size_t looked_ahead_ = 0;
  // By the Watch request's id: adding, finding and removing one is O(1).
  absl::flat_hash_map<uint64_t, Watch> watches_;
};

}  // namespace logkv::server::net

#endif  // LOGKV_SERVER_NET_BINARY_SESSION_H_
