// logkv's native C++ client. Talks the binary protocol (protocol/logkv.fbs,
// docs/protocol.md) to one or more logkvd nodes over TCP.
//
//   logkv::ClientOptions options;
//   options.nodes = {"127.0.0.1:7070"};
//   auto client = logkv::Client::Connect(options);
//   if (!client.ok()) ...;
//   absl::Status s = (*client)->Put("k", "v");
//   absl::StatusOr<logkv::Value> v = (*client)->Get("k");
//
// Thread-safety: a Client may be used from many threads at once. Requests
// from all threads are pipelined on one connection; a background thread reads
// the answers and completes the matching calls (sync calls wake their caller,
// async calls run their callback on that thread, so callbacks must not block).
//
// Failures: every call returns an absl::Status with the server's code and
// message, or Unavailable / DeadlineExceeded for transport trouble. When the
// connection breaks, calls in flight fail with Unavailable and the next call
// reconnects, trying the nodes in order (failover). Calls that were not
// answered are not retried automatically unless ClientOptions::retries > 0,
// and only for reads (a write may have been applied).
#ifndef LOGKV_CLIENT_LOGKV_CLIENT_H_
#define LOGKV_CLIENT_LOGKV_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace logkv {

enum class Consistency { kDefault, kEventual, kStrong };

struct ClientOptions {
  std::vector<std::string> nodes;  // "host:port"; tried in order on connect/failover
  absl::Duration connect_timeout = absl::Seconds(2);
  absl::Duration request_timeout = absl::Seconds(10);
  int retries = 0;                 // extra attempts for reads after a transport failure
  std::string auth_token;          // sent in Hello when not empty
  std::string client_name = "logkv-cpp";
  uint32_t max_frame_bytes = 64u << 20;
  // In a cluster, send each key's Get/Put/Delete to its first owner (the
  // members come with Hello), saving the coordinator a hop; a node that
  // cannot be reached falls back to the connected node, which coordinates.
  bool route_to_owners = true;

  // TLS (the node runs with --tls-cert): the node's certificate must chain to
  // a CA of tls_ca_file (empty: the system's CAs) and name the host of the
  // address dialled, or tls_server_name when that is set. tls_cert_file and
  // tls_key_file (PEM) are the client's certificate, for a node that asks for
  // one (--tls-client-auth). Connecting fails with what to change when the
  // CA, the name or a certificate's dates do not fit.
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
};

struct Value {
  std::string value;
  uint64_t version = 0;
  uint64_t timestamp = 0;
  int64_t expiry_unix_ms = 0;  // 0 = none
};

struct PutOptions {
  int64_t ttl_ms = 0;
  std::optional<uint64_t> if_version;  // compare-and-set; 0 = must be absent
  Consistency consistency = Consistency::kDefault;
};

struct DeleteOptions {
  std::optional<uint64_t> if_version;
  Consistency consistency = Consistency::kDefault;
};

struct WriteResult {
  uint64_t version = 0;
  uint64_t timestamp = 0;
  uint64_t sequence = 0;
  uint32_t shard = 0;
};

struct ScanOptions {
  std::string prefix;
  std::string start_key;  // inclusive
  std::string end_key;    // exclusive
  std::string after_key;  // cursor
  uint32_t limit = 1000;
  bool keys_only = false;
};

struct ScanItem {
  std::string key;
  Value value;
};

struct ScanPage {
  std::vector<ScanItem> items;
  std::string next_cursor;  // empty when there is nothing more
};

struct BatchOperation {
  bool is_delete = false;
  std::string key;
  std::string value;
  int64_t ttl_ms = 0;
};

struct Event {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  uint32_t shard = 0;
  uint64_t sequence = 0;
  std::string key;
  std::string value;
  uint64_t version = 0;
  uint64_t timestamp = 0;
};

struct ServerStats {
  uint64_t keys = 0, tombstones = 0, segments = 0, log_bytes = 0, dead_bytes = 0;
  uint64_t index_bytes = 0, puts = 0, deletes = 0, gets = 0, fsyncs = 0, compactions = 0;
  uint64_t expired_swept = 0, connections = 0, requests = 0, uptime_ms = 0;
  uint32_t shard_count = 0;
  std::vector<uint64_t> last_sequences;  // per shard
};

class Client {
 public:
  // Connects to the first reachable node of options.nodes and says Hello.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();  // fails calls in flight with Cancelled, joins the reader thread

  // ---- Synchronous calls ----
  absl::Status Ping();
  absl::StatusOr<Value> Get(absl::string_view key,
                            Consistency consistency = Consistency::kDefault);
  absl::StatusOr<Value> GetVersion(absl::string_view key, uint64_t version);
  absl::StatusOr<WriteResult> Put(absl::string_view key, absl::string_view value,
                                  const PutOptions& options = {});
  absl::StatusOr<WriteResult> Delete(absl::string_view key, const DeleteOptions& options = {});
  // One status per operation, in order.
  absl::StatusOr<std::vector<absl::Status>> Batch(const std::vector<BatchOperation>& operations,
                                                  Consistency consistency = Consistency::kDefault);
  absl::StatusOr<ScanPage> Scan(const ScanOptions& options);
  absl::StatusOr<ServerStats> Stats();

  // Streams events of keys with the prefix until on_event returns false, the
  // server ends the watch (the final status is returned: Aborted when the
  // watcher fell behind, Compacted when a resume point is gone), or the
  // connection breaks. after_sequences resumes per shard; empty = from now.
  // Blocks the calling thread; events are delivered on the reader thread.
  absl::Status Watch(absl::string_view prefix, const std::vector<uint64_t>& after_sequences,
                     const std::function<bool(const Event&)>& on_event);

  // ---- Asynchronous, pipelined calls: done runs on the reader thread ----
  void GetAsync(absl::string_view key, std::function<void(absl::StatusOr<Value>)> done);
  void PutAsync(absl::string_view key, absl::string_view value, const PutOptions& options,
                std::function<void(absl::StatusOr<WriteResult>)> done);
  void DeleteAsync(absl::string_view key, const DeleteOptions& options,
                   std::function<void(absl::StatusOr<WriteResult>)> done);

  // The node this client is connected to now ("host:port"), or "".
  std::string connected_node() const;

 private:
  class Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace logkv

#endif  // LOGKV_CLIENT_LOGKV_CLIENT_H_
