#include "server/node.h"

#include <algorithm>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <functional>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "protocol/version.h"
#include "server/auth/admission.h"
#include "server/auth/auth_store.h"
#include "server/auth/login_throttle.h"
#include "server/auth/rate_limiter.h"
#include "server/auth/worker_pool.h"
#include "server/backup/backup_manager.h"
#include "server/cluster/anti_entropy.h"
#include "server/cluster/cluster_node.h"
#include "server/cluster/hinted_handoff.h"
#include "server/cluster/purger.h"
#include "server/cluster/replica.h"
#include "server/cluster/replica_coordinator.h"
#include "server/control/control_plane.h"
#include "server/core/periodic_worker.h"
#include "server/engine_metrics.h"
#include "server/http/access_routes.h"
#include "server/http/account_routes.h"
#include "server/http/audit_routes.h"
#include "server/http/backup_routes.h"
#include "server/http/cluster_routes.h"
#include "server/http/data_routes.h"
#include "server/http/route_support.h"
#include "server/http/router.h"
#include "server/log.h"
#include "server/namespaces.h"
#include "server/server.h"
#include "server/sigpipe.h"
#include "server/web/web_routes.h"

namespace logkv::server {
namespace {

namespace p = ::logkv::protocol;

// engine::Options::max_key_bytes' ceiling.
constexpr uint32_t kEngineMaxKeyBytes = 65535;

bool IsLoopback(const std::string& host) {
  return host == "localhost" || absl::StartsWith(host, "127.") || host == "::1";
}

// Absolute, so that the Service can recognise the engine's messages that
// name its files and keep them from clients (ServiceConfig::data_dir).
absl::StatusOr<std::string> AbsoluteDataDir(const std::string& data_dir) {
  std::error_code error;
  const std::filesystem::path path =
      std::filesystem::absolute(data_dir, error).lexically_normal();
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("--data-dir '", data_dir, "': ", error.message()));
  }
  std::string absolute = path.string();
  while (absolute.size() > 1 && absolute.back() == '/') absolute.pop_back();
  return absolute;
}

int OnePerCore(int configured) {
  return configured > 0 ? configured
                        : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// A wildcard host is advertised (and linked to) as loopback.
std::string Reachable(const std::string& host, int port) {
  return absl::StrCat(host == "0.0.0.0" ? "127.0.0.1" : host, ":", port);
}

// The id the node answers Hello with until the cluster member has its own:
// --node_id, else --advertise, else --listen.
std::string ConfiguredNodeId(const NodeOptions& o) {
  return !o.node_id.empty() ? o.node_id : !o.advertise.empty() ? o.advertise : o.listen.ToString();
}

// ---- The control plane over the peer connections ------------------------------

// A ControlPropose request frame carrying a control-plane command.
std::string ControlProposeFrame(absl::string_view command, bool forwarded) {
  flatbuffers::FlatBufferBuilder builder(command.size() + 128);
  auto bytes = builder.CreateVector(reinterpret_cast<const uint8_t*>(command.data()),
                                    command.size());
  auto propose = p::CreateControlPropose(builder, bytes, forwarded);
  return cluster::FinishPeerRequest(&builder, p::Operation::ControlPropose, propose.Union());
}

// The epoch a ControlPropose was answered with, or why not.
absl::StatusOr<uint64_t> ControlProposeAnswer(absl::StatusOr<std::string> answer) {
  if (!answer.ok()) return answer.status();
  absl::StatusOr<const p::Response*> response = p::VerifyResponse(*answer, 1u << 20);
  if (!response.ok()) return response.status();
  if (absl::Status status = p::StatusFromResponse(**response); !status.ok()) return status;
  const p::ControlResult* result = (*response)->result_as_ControlResult();
  if (result == nullptr) return absl::InternalError("a ControlPropose answered without a result");
  return result->epoch();
}

// Sends a control-plane command to the node at address (its binary
// protocol): it proposes it (forwarded: it must lead) or passes it to its
// leader. done with the epoch after the command, or why not.
void SendControlCommand(cluster::PeerTransport* transport, const std::string& address,
                        absl::string_view command, bool forwarded, absl::Duration timeout,
                        std::function<void(absl::StatusOr<uint64_t>)> done) {
  transport->Send(address, ControlProposeFrame(command, forwarded), timeout,
                  [done = std::move(done)](absl::StatusOr<std::string> answer) {
                    done(ControlProposeAnswer(std::move(answer)));
                  });
}

absl::StatusOr<uint64_t> SendControlCommandAndWait(cluster::PeerTransport* transport,
                                                   const std::string& address,
                                                   absl::string_view command,
                                                   absl::Duration timeout) {
  return ControlProposeAnswer(cluster::SendAndWait(cluster::SendThrough(transport), address,
                                                   ControlProposeFrame(command, false), timeout));
}

// Answers a ControlPropose: proposed here when forwarded (this node should
// lead), else submitted to whoever leads.
Outcome HandleControlPropose(control::ControlPlane* control, const p::Request& request,
                             flatbuffers::FlatBufferBuilder* builder,
                             absl::FunctionRef<Completion()> defer) {
  const uint64_t id = request.request_id();
  const p::ControlPropose* propose = request.operation_as_ControlPropose();
  if (propose == nullptr || propose->command() == nullptr) {
    p::BuildStatusResponse(builder, id, absl::InvalidArgumentError("a ControlPropose names no command"));
    return Outcome::kAnswered;
  }
  if (control == nullptr) {
    p::BuildStatusResponse(builder, id,
                           absl::UnavailableError("this node's control plane is not running"));
    return Outcome::kAnswered;
  }
  std::string command(p::View(propose->command()));
  // Shared: the control plane's callbacks are copyable, a completion is not.
  auto completion = std::make_shared<Completion>(defer());
  auto answer = [id, completion](absl::StatusOr<uint64_t> result) {
    flatbuffers::FlatBufferBuilder out(128);
    if (result.ok()) {
      p::FinishResponse(&out, id, p::Result::ControlResult,
                        p::CreateControlResult(out, *result).Union());
    } else {
      p::BuildStatusResponse(&out, id, result.status());
    }
    (*completion)(std::string(p::FrameOf(out)));
  };
  if (propose->forwarded()) {
    control->ProposeLocal(std::move(command), std::move(answer));
  } else {
    control->Submit(std::move(command), std::move(answer));
  }
  return Outcome::kDeferred;
}

// Submits a command until the leader answers (bounded): a change of leader
// or a leader not yet known is asked again. The answer, or the last error.
absl::StatusOr<uint64_t> SubmitUntilAnswered(control::ControlPlane* control,
                                             const std::string& command, absl::Time deadline) {
  while (true) {
    absl::StatusOr<uint64_t> epoch = control->SubmitAndWait(command, absl::Seconds(10));
    if (epoch.ok() || (!absl::IsUnavailable(epoch.status()) &&
                       !absl::IsDeadlineExceeded(epoch.status())) ||
        absl::Now() >= deadline) {
      return epoch;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

// ---- Each component's options, derived from the node's ---------------------
// The one place where a NodeOptions setting becomes a component's option:
// settings several components share (N, W, R, the write wait, the frame
// limit) are read here and nowhere else.

engine::Options EngineOptionsFor(const NodeOptions& o, const std::string& data_dir) {
  engine::Options options;
  options.data_dir = data_dir;
  options.shard_count = static_cast<uint32_t>(OnePerCore(o.shards));
  options.segment_bytes = o.segment_bytes;
  // Clients' keys are held to max_key_bytes (protocol::Limits, which
  // measures the key the client sent); the engine's limit leaves room for
  // the tenant prefix the Service puts before it with auth on.
  options.max_key_bytes = o.max_key_bytes + kTenantPrefixBytes;
  options.max_value_bytes = o.max_value_bytes;
  options.versions_kept = o.versions;
  options.repair = o.repair;
  options.index_snapshot_min_entries = o.index_snapshot_min_entries;
  options.checkpoint_ratio = o.checkpoint_ratio;
  options.checkpoint_stale_interval_ms = absl::ToInt64Milliseconds(o.checkpoint_stale_interval);
  options.fsync = o.fsync;
  options.fsync_interval_ms = absl::ToInt64Milliseconds(o.fsync_interval);
  options.compression = o.compression;
  options.compression_level = o.compression_level;
  options.compression_min_bytes = o.compression_min_bytes;
  options.maintenance_nice = o.maintenance_nice;
  // Hints, accounts and the member list are this node's own: they stay out
  // of the Merkle summary that replicas compare.
  options.merkle_excluded_prefixes = {std::string(kAuthPrefix), std::string(kHintPrefix),
                                      std::string(kClusterPrefix)};
  // The node's own namespaces are read in pages at every start (the hints
  // waiting for other owners, the legacy accounts): in key order from the
  // start, so that reading them never walks the clients' keys.
  options.ordered_prefixes = options.merkle_excluded_prefixes;
  // Tombstones are collected by the purger once every owner holds them (a
  // single node's ring has no other owner to ask), never by compaction alone.
  options.tombstone_grace_ms =
      std::max<int64_t>(0, absl::ToInt64Milliseconds(o.tombstone_grace));
  options.collect_tombstones = false;
  return options;
}

ServiceConfig ServiceConfigFor(const NodeOptions& o, const std::string& data_dir) {
  ServiceConfig config;
  config.node_id = ConfiguredNodeId(o);
  config.server_version = BuildVersion();
  config.read_only = o.read_only;
  config.fsync_always = o.fsync == engine::FsyncPolicy::kAlways;
  config.data_dir = data_dir;
  config.limits.max_frame_bytes = o.max_frame_bytes;
  config.limits.max_key_bytes = o.max_key_bytes;
  config.limits.max_value_bytes = o.max_value_bytes;
  config.limits.max_batch_items = o.max_batch_items;
  return config;
}

auth::AuthConfig AuthConfigFor(const NodeOptions& o) {
  auth::AuthConfig config;
  config.jwt_secret = o.jwt_secret;
  config.access_token_ttl_s = absl::ToInt64Seconds(o.jwt_expiration);
  config.log = [](absl::string_view message) { Log(Level::kWarning, "%s", message); };
  return config;
}

cluster::ClusterNodeOptions ClusterOptionsFor(const NodeOptions& o) {
  cluster::ClusterNodeOptions options;
  // With a listen port of 0 and no node id or advertised address, the id is
  // the advertised address with the port the kernel chose (SetAdvertise).
  const bool node_id_from_bound_port =
      o.node_id.empty() && o.advertise.empty() && o.listen.port == 0;
  options.node_id = node_id_from_bound_port ? "" : ConfiguredNodeId(o);
  for (const std::string& seed : o.seeds) {
    // Validate checked every seed.
    absl::StatusOr<HostPort> parsed = ParseHostPort(seed);
    if (parsed.ok()) options.seeds.push_back(parsed->ToString());
  }
  options.cluster_secret = o.cluster_secret;
  options.replicas = o.replicas;
  options.gossip_interval = o.gossip_interval;
  options.dead_after = o.dead_after;
  // A ping waits at most one interval (and at least 100 ms) for its answer.
  options.ping_timeout = std::max(absl::Milliseconds(100), o.gossip_interval);
  options.allow_fault_injection = o.fault_injection;
  const bool auth_on = o.auth == AuthMode::kOn;
  options.require_secret = auth_on || !IsLoopback(o.listen.host);
  options.auth_on = auth_on;
  options.max_frame_bytes = o.max_frame_bytes;
  // Peers dial each other's binary port: TLS when it speaks TLS.
  options.tls = o.tls.enabled();
  options.tls_ca_file = o.peer_tls_ca.empty() ? o.tls.ca_file : o.peer_tls_ca;
  options.tls_cert_file = o.peer_tls_cert.empty() ? o.tls.cert_file : o.peer_tls_cert;
  options.tls_key_file = o.peer_tls_key.empty() ? o.tls.key_file : o.peer_tls_key;
  options.tls_crl_file = o.peer_tls_crl;
  options.tls_ciphersuites = o.tls.ciphersuites;
  return options;
}

cluster::ReplicaCoordinatorOptions CoordinatorOptionsFor(const NodeOptions& o) {
  cluster::ReplicaCoordinatorOptions options;
  options.replicas = static_cast<size_t>(std::max(1, o.replicas));
  options.write_acks = static_cast<size_t>(std::max(0, o.write_quorum));
  options.read_acks = static_cast<size_t>(std::max(0, o.read_quorum));
  options.write_wait = o.write_wait;
  options.max_frame_bytes = o.max_frame_bytes;
  return options;
}

cluster::AntiEntropyOptions AntiEntropyOptionsFor(const NodeOptions& o) {
  cluster::AntiEntropyOptions options;
  options.replicas = static_cast<size_t>(std::max(1, o.replicas));
  options.max_frame_bytes = o.max_frame_bytes;
  options.interval = std::max(absl::Milliseconds(100), o.anti_entropy_interval);
  options.bytes_per_second = o.anti_entropy_bytes_per_second;
  // Every node runs rounds, so each pulls what it lacks; pushing as well
  // would send a wiped node its data once per peer.
  options.push = false;
  return options;
}

cluster::PurgerOptions PurgerOptionsFor(const NodeOptions& o) {
  cluster::PurgerOptions options;
  options.replicas = static_cast<size_t>(std::max(1, o.replicas));
  options.interval = std::max(absl::Milliseconds(100), o.purge_interval);
  options.ring_stable_for = std::max(absl::ZeroDuration(), o.purge_ring_stable);
  options.tombstone_grace = std::max(absl::ZeroDuration(), o.tombstone_grace);
  options.peers_expected = !o.seeds.empty();
  return options;
}

// "http://host:port" of the first --http address (as configured; the bound
// port replaces a 0 once the server runs).
std::string FirstHttpUrl(const NodeOptions& o) {
  if (o.http.empty()) return "";
  return absl::StrCat("http://", Reachable(o.http.front().host, o.http.front().port));
}

http::DataRoutesConfig DataRoutesConfigFor(const NodeOptions& o) {
  return {.max_document_bytes = o.max_document_bytes, .max_json_depth = o.max_json_depth};
}

http::ClusterRoutesConfig ClusterRoutesConfigFor(const NodeOptions& o) {
  http::ClusterRoutesConfig config;
  config.node_id = ConfiguredNodeId(o);
  config.mode = o.read_only ? "read-only" : "normal";
  // The cluster secret both authorizes membership changes and, with auth
  // on, reading node-wide statistics.
  config.cluster_secret = o.cluster_secret;
  config.operator_secret = o.cluster_secret;
  config.max_json_depth = o.max_json_depth;
  // POST /join through an https:// URL: the member is checked, and this
  // node shown, as on the peer links.
  config.join_https = o.tls.enabled();
  config.join_tls_ca_file = o.peer_tls_ca.empty() ? o.tls.ca_file : o.peer_tls_ca;
  config.join_tls_cert_file = o.peer_tls_cert.empty() ? o.tls.cert_file : o.peer_tls_cert;
  config.join_tls_key_file = o.peer_tls_key.empty() ? o.tls.key_file : o.peer_tls_key;
  return config;
}

ServerConfig ServerConfigFor(const NodeOptions& o) {
  ServerConfig config;
  config.host = o.listen.host;
  config.port = o.listen.port;
  config.threads = OnePerCore(o.threads);
  for (const HostPort& address : o.http) {
    config.http_addresses.push_back(HttpAddress{address.host, address.port});
  }
  config.http_limits.max_header_bytes = o.http_max_header_bytes;
  // A body carries a value, base64 or JSON around it: room for base64's 4/3.
  config.http_limits.max_body_bytes =
      static_cast<size_t>(o.max_value_bytes) / 3 * 4 + (64u << 10);
  config.http_idle_timeout = std::max(absl::Milliseconds(100), o.http_idle_timeout);
  config.binary_idle_timeout = std::max(absl::Milliseconds(100), o.binary_idle_timeout);
  config.max_buffered_bytes = static_cast<size_t>(o.max_buffered_bytes);
  config.max_watches_per_connection = static_cast<size_t>(o.max_watches_per_connection);
  config.max_watches_per_user = static_cast<size_t>(o.max_watches_per_user);
  // A node that serves everything to whoever reaches it answers addresses,
  // localhost and the names it is given or goes by: a browser cannot be
  // made to read it through a site whose name points at it
  // (docs/security.md, "Browsers").
  const bool clients_authenticated =
      o.auth != AuthMode::kOff ||
      (o.tls.enabled() && o.tls.client_auth == net::ClientAuth::kRequire);
  config.http_check_host = !o.http_allowed_hosts.empty() || !clients_authenticated;
  config.http_allowed_hosts = o.http_allowed_hosts;
  std::vector<std::string> own;
  for (const HostPort& address : o.http) own.push_back(address.host);
  for (const std::string& advertised : {o.advertise, o.http_advertise}) {
    absl::string_view host = advertised;
    absl::ConsumePrefix(&host, "http://") || absl::ConsumePrefix(&host, "https://");
    if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
      host = host.substr(0, colon);
    }
    absl::ConsumePrefix(&host, "[") && absl::ConsumeSuffix(&host, "]");
    if (!host.empty()) own.emplace_back(host);
  }
  for (std::string& host : own) {
    host = absl::AsciiStrToLower(host);
    if (!absl::c_linear_search(config.http_own_hosts, host)) {
      config.http_own_hosts.push_back(std::move(host));
    }
  }
  return config;
}

void LogLastUseFailure(const absl::StatusOr<size_t>& flushed) {
  if (!flushed.ok()) {
    Log(Level::kWarning, "writing API key last-use times: %s", flushed.status().message());
  }
}

}  // namespace

// ---- Options -----------------------------------------------------------------

std::string HostPort::ToString() const { return absl::StrCat(host, ":", port); }

absl::StatusOr<HostPort> ParseHostPort(absl::string_view text) {
  HostPort address;
  const size_t colon = text.rfind(':');
  if (colon == absl::string_view::npos ||
      !absl::SimpleAtoi(text.substr(colon + 1), &address.port) || address.port < 0 ||
      address.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not host:port"));
  }
  address.host = std::string(text.substr(0, colon));
  if (address.host.empty()) address.host = "0.0.0.0";
  if (address.host == "localhost") address.host = "127.0.0.1";
  return address;
}

absl::StatusOr<AuthMode> ParseAuthMode(absl::string_view text) {
  if (text == "off") return AuthMode::kOff;
  if (text == "on") return AuthMode::kOn;
  return absl::InvalidArgumentError("--auth must be off or on");
}

absl::StatusOr<engine::FsyncPolicy> ParseFsyncPolicy(absl::string_view text) {
  if (text == "never") return engine::FsyncPolicy::kNever;
  if (text == "interval") return engine::FsyncPolicy::kInterval;
  if (text == "always") return engine::FsyncPolicy::kAlways;
  return absl::InvalidArgumentError("--fsync must be never, interval or always");
}

absl::StatusOr<engine::Compression> ParseCompression(absl::string_view text) {
  if (text == "none") return engine::Compression::kNone;
  if (text == "zstd") return engine::Compression::kZstd;
  return absl::InvalidArgumentError(
      absl::StrCat("--compression must be none or zstd, not '", text, "'"));
}

const char* CompressionName(engine::Compression compression) {
  return compression == engine::Compression::kZstd ? "zstd" : "none";
}

const char* FsyncPolicyName(engine::FsyncPolicy policy) {
  switch (policy) {
    case engine::FsyncPolicy::kNever:
      return "never";
    case engine::FsyncPolicy::kInterval:
      return "interval";
    case engine::FsyncPolicy::kAlways:
      return "always";
  }
  return "?";
}

namespace {

// The backup manager's options; the format was checked by Validate.
backup::BackupManagerOptions BackupOptionsFor(const NodeOptions& options) {
  backup::BackupManagerOptions out;
  out.dir = options.backup_dir;
  out.schedule = options.backup_schedule;
  out.retention = options.backup_retention;
  out.bytes_per_second = options.backup_rate_limit;
  out.format = backup::ParseBackupFormat(options.backup_format).value_or(
      backup::BackupFormat::kArchive);
  out.hard_links = options.backup_hard_links;
  out.node_id = options.node_id;
  // out.control_plane_snapshot is set by the Node, which runs the control
  // plane.
  return out;
}

}  // namespace

absl::Status NodeOptions::Validate() const {
  if (absl::Status status = backup::ValidateBackupOptions(BackupOptionsFor(*this)); !status.ok()) {
    return status;
  }
  // Backups kept inside the store they copy go with it, and a restore of
  // the data directory would hold them.
  if (!backup_dir.empty()) {
    std::error_code error;
    auto normal = [&error](const std::string& path) {
      std::string text = std::filesystem::weakly_canonical(path, error).string();
      while (text.size() > 1 && text.back() == '/') text.pop_back();
      return text;
    };
    const std::string backups = normal(backup_dir);
    const std::string data = normal(data_dir);
    if (!error) {
      if (backups == data || absl::StartsWith(backups, data == "/" ? data : data + "/")) {
        return absl::InvalidArgumentError(
            absl::StrCat("--backup_dir ", backup_dir, " is inside --data_dir ", data_dir,
                         ": keep backups outside the store they copy"));
      }
    }
  }
  // The id is kept in the data directory as a line, read back without the
  // whitespace around it: an id with some (an environment file's carriage
  // return, say) could not be read back as itself.
  if (node_id != absl::StripAsciiWhitespace(node_id) ||
      std::any_of(node_id.begin(), node_id.end(),
                  [](char c) { return absl::ascii_iscntrl(static_cast<unsigned char>(c)); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("--node_id ", absl::CHexEscape(node_id),
                     " must not begin or end with whitespace nor hold control characters"));
  }
  if (checkpoint_stale_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--checkpoint_stale_interval_ms must be 0 or more");
  }
  if (!(checkpoint_ratio >= 0 && checkpoint_ratio <= 1e6)) {  // refuses NaN too
    return absl::InvalidArgumentError(
        absl::StrCat("--checkpoint_ratio must be between 0 (no checkpoints) and 1000000, not ",
                     checkpoint_ratio));
  }
  // Addresses built by hand rather than by ParseHostPort.
  if (listen.port < 0 || listen.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen: '", listen.ToString(), "' is not host:port"));
  }
  for (const HostPort& address : http) {
    if (address.port < 0 || address.port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--http: '", address.ToString(), "' is not host:port"));
    }
  }
  if (absl::Status status = tls.Validate(); !status.ok()) return status;
  if (consensus_prefixes.size() > control::kMaxConsensusPrefixes) {
    return absl::InvalidArgumentError(absl::StrCat("--consensus_prefix: at most ",
                                                   control::kMaxConsensusPrefixes, " prefixes"));
  }
  for (const std::string& prefix : consensus_prefixes) {
    if (prefix.empty() || prefix.size() > control::kMaxConsensusPrefixBytes || prefix[0] == '\0') {
      return absl::InvalidArgumentError(absl::StrCat(
          "--consensus_prefix: a prefix has 1 to ", control::kMaxConsensusPrefixBytes,
          " bytes and does not begin with byte 0x00"));
    }
  }
  if ((!peer_tls_cert.empty() || !peer_tls_key.empty() || !peer_tls_ca.empty()) &&
      !tls.enabled()) {
    return absl::InvalidArgumentError(
        "--peer-tls-* need --tls-cert and --tls-key: peers reach each other on the binary port");
  }
  if (peer_tls_cert.empty() != peer_tls_key.empty()) {
    return absl::InvalidArgumentError("--peer-tls-cert and --peer-tls-key go together");
  }
  if (!peer_tls_crl.empty() && peer_tls_ca.empty()) {
    return absl::InvalidArgumentError(
        "--peer-tls-crl needs --peer-tls-ca: the revocation lists are of the cluster CA");
  }
  // Clients that must show a certificate of the CA are authenticated by it.
  const bool clients_authenticated =
      auth != AuthMode::kOff || (tls.enabled() && tls.client_auth == net::ClientAuth::kRequire);
  if (!insecure) {
    std::vector<std::string> hosts = {listen.host};
    for (const HostPort& address : http) hosts.push_back(address.host);
    for (const std::string& bound : hosts) {
      if (IsLoopback(bound)) continue;
      if (!clients_authenticated) {
        return absl::FailedPreconditionError(absl::StrCat(
            "refusing to listen on ", bound, " with --auth=off: anyone who can reach it could "
            "read and write everything. Bind a loopback address, use --auth=on (or "
            "--tls-client-auth=require), or pass --insecure to accept that."));
      }
      if (!tls.enabled()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "refusing to listen on ", bound, " without TLS: API keys, passwords and data "
            "would cross the network in clear. Give --tls-cert and --tls-key (docs/tls.md), "
            "bind a loopback address, or pass --insecure to accept that."));
      }
    }
    // The peer links: the data plane's peers dial the binary port, checked
    // above; the control plane's Raft transport listens on the --listen
    // host too, and speaks TLS only with the cluster CA.
    if (!IsLoopback(listen.host) && peer_tls_ca.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to run the control plane's Raft transport (--control-port) on ", listen.host,
          " without TLS: the cluster's membership, accounts and their changes would cross the "
          "network in clear. Give --peer-tls-ca (mutual TLS between nodes, with --tls-cert or "
          "--peer-tls-cert; docs/tls.md), bind a loopback address, or pass --insecure to "
          "accept that."));
    }
  }
  if (!admins.empty() && auth != AuthMode::kOn) {
    return absl::InvalidArgumentError("--admins names accounts: it needs --auth=on");
  }
  if (absl::StatusOr<backup::BackupFormat> format = backup::ParseBackupFormat(backup_format);
      !format.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--backup_format: ", format.status().message()));
  }
  if (max_json_depth < 1 || max_json_depth > http::kMaxJsonDepthCeiling) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_json_depth must be between 1 and ", http::kMaxJsonDepthCeiling,
                     " (nested objects and arrays), not ", max_json_depth));
  }
  if (compression_level < engine::kMinCompressionLevel ||
      compression_level > engine::kMaxCompressionLevel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--compression_level must be between ", engine::kMinCompressionLevel, " and ",
        engine::kMaxCompressionLevel, " (zstd levels), not ", compression_level));
  }
  if (compression_min_bytes > max_value_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--compression_min_bytes must be at most --max_value_bytes (",
                     max_value_bytes, "), not ", compression_min_bytes));
  }
  // A token bucket's flags: the rate (0 turns it off) and the bucket's size.
  auto check_bucket = [](absl::string_view flag, absl::string_view what, int64_t rate,
                         int64_t burst) {
    if (rate < 0 || rate > auth::kMaxRequestsPerMinute) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be between 0 (off) and ",
                                                     auth::kMaxRequestsPerMinute, " ", what,
                                                     " a minute, not ", rate));
    }
    if (burst < 1 || burst > auth::kMaxBurst) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, "_burst must be between 1 and ",
                                                     auth::kMaxBurst, ", not ", burst));
    }
    return absl::OkStatus();
  };
  if (absl::Status status = check_bucket("account_rate_limit", "requests", account_rate_limit,
                                         account_rate_limit_burst);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = check_bucket("signup_rate_limit", "sign-ups", signup_rate_limit,
                                         signup_rate_limit_burst);
      !status.ok()) {
    return status;
  }
  if (maintenance_nice < 0 || maintenance_nice > 19) {
    return absl::InvalidArgumentError(
        absl::StrCat("--maintenance_nice must be between 0 and 19, not ", maintenance_nice));
  }
  if (jwt_expiration < absl::Seconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--jwt_expiration '", absl::FormatDuration(jwt_expiration),
        "' is not a duration of at least one second (such as 1h or 30m)"));
  }
  // Cluster settings. A node always runs as a cluster member: alone it is a
  // cluster of one, and joins others through seeds or POST /join.
#ifndef LOGKV_FAULT_INJECTION
  if (fault_injection) {
    return absl::FailedPreconditionError(
        "--fault-injection is for tests: this logkvd was built without it (configure with "
        "-DLOGKV_FAULT_INJECTION=ON, the default when tests are built)");
  }
#endif
  if (replicas < 1) return absl::InvalidArgumentError("--replicas must be at least 1");
  if (control_voters != 1 && control_voters != 3 && control_voters != 5) {
    return absl::InvalidArgumentError("--control_voters must be 1, 3 or 5");
  }
  if (control_port < 0 || control_port > 65535) {
    return absl::InvalidArgumentError("--control_port must be in [0, 65535]");
  }
  if (join_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--join_timeout_ms must be positive");
  }
  if (write_quorum < 0 || read_quorum < 0) {
    return absl::InvalidArgumentError("--w and --r must be 0 (by consistency) or more");
  }
  if (gossip_interval < absl::Milliseconds(10) || dead_after <= absl::ZeroDuration() ||
      write_wait <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--gossip_interval_ms must be at least 10; --dead_after_ms and --write_wait_ms positive");
  }
  for (const std::string& seed : seeds) {
    absl::StatusOr<HostPort> parsed = ParseHostPort(seed);
    if (!parsed.ok() || parsed->port == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--seeds: '", seed, "' is not host:port (the binary-protocol address)"));
    }
  }
  if (!advertise.empty()) {
    absl::StatusOr<HostPort> parsed = ParseHostPort(advertise);
    if (!parsed.ok() || parsed->port == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--advertise: '", advertise, "' is not host:port"));
    }
  }
  if (absl::StatusOr<std::string> absolute = AbsoluteDataDir(data_dir); !absolute.ok()) {
    return absolute.status();
  }
  if (max_key_bytes == 0 || max_key_bytes > kEngineMaxKeyBytes - kTenantPrefixBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_key_bytes must be in [1, ", kEngineMaxKeyBytes - kTenantPrefixBytes, "]"));
  }
  if (static_cast<uint64_t>(max_frame_bytes) < static_cast<uint64_t>(max_value_bytes) + 4096) {
    return absl::InvalidArgumentError(
        "--max_frame_bytes must exceed --max_value_bytes by at least 4096 bytes (a frame "
        "carries the value plus its key and envelope)");
  }
  return absl::OkStatus();
}

// ---- Node --------------------------------------------------------------------

Node::Node(NodeOptions options) : options_(std::move(options)) {}

// Stop logs a failure to close the engine; a destructor can do no more.
Node::~Node() { (void)Stop(); }

absl::Status Node::ReloadTls() {
  if (tls_ == nullptr) return absl::OkStatus();
  // Each part keeps what it has when its files do not read; the others
  // reload regardless (they read mostly the same files, so an error is
  // usually everyone's, and is reported once per part).
  std::vector<std::string> errors;
  if (absl::Status status = tls_->Reload(); !status.ok()) {
    errors.push_back(std::string(status.message()));
  }
  // The peer links: the data plane's transport dials with --peer-tls-*,
  // the control plane's Raft transport both dials and accepts with them.
  if (cluster_ != nullptr) {
    if (absl::Status status = cluster_->ReloadTls(); !status.ok()) {
      errors.push_back(std::string(status.message()));
    }
  }
  if (control::ControlPlane* control = control_plane(); control != nullptr) {
    if (absl::Status status = control->ReloadTls(); !status.ok()) {
      errors.push_back(std::string(status.message()));
    }
  }
  if (!errors.empty()) return absl::FailedPreconditionError(absl::StrJoin(errors, "; "));
  return absl::OkStatus();
}

absl::Status Node::SetRateLimit(int64_t requests_per_minute, int64_t burst) {
  if (!running()) return absl::FailedPreconditionError("the node is not running");
  if (rate_limiter_ == nullptr) {
    return absl::FailedPreconditionError("the rate limit applies only with --auth=on");
  }
  // The cluster's setting: committed, then put in force on every node by
  // the account state's listener (StartAuth).
  control::ControlPlane* control = control_plane();
  if (control == nullptr) return absl::FailedPreconditionError("the control plane is not running");
  return SubmitUntilAnswered(
             control, control::EncodeSetRateLimit(requests_per_minute, burst, false,
                                               control::Actor::Node(node_id())),
             absl::Now() + absl::Seconds(10))
      .status();
}

bool Node::Responsive(absl::Duration timeout) const {
  return running() && server_ != nullptr && server_->LoopsRespond(timeout);
}

int Node::port() const { return server_->port(); }

const std::vector<int>& Node::http_ports() const { return server_->http_ports(); }

std::string Node::node_id() const {
  return cluster_ != nullptr ? cluster_->node_id() : ConfiguredNodeId(options_);
}

absl::Status Node::WaitViewConfirmed(absl::Time deadline, size_t min_live_members) const {
  while (true) {
    const cluster::Membership* membership = cluster_ != nullptr ? cluster_->membership() : nullptr;
    if (membership != nullptr && membership->ViewConfirmed() &&
        control_caught_up_.load(std::memory_order_acquire) &&
        cluster_->LiveMemberCount() >= min_live_members) {
      return absl::OkStatus();
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "node ", node_id(), ": view not confirmed with ", min_live_members,
          " live member(s) in time (", cluster_ != nullptr ? cluster_->LiveMemberCount() : 0,
          " live)"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::Status Node::Start() {
  if (started_.exchange(true)) {
    return absl::FailedPreconditionError("a Node starts once: make a new one to restart");
  }
  // A write to a closed socket fails with EPIPE instead of ending the process
  // (server/sigpipe.h), for a node run inside another program (tests, tools)
  // as in logkvd.
  IgnoreSigpipeUnlessHandled();
  absl::Status status = options_.Validate();
  if (status.ok()) status = StartEngine();
  if (status.ok()) status = StartAuth();
  if (status.ok()) status = BuildCluster();
  if (status.ok()) {
    AddRoutes();
    status = StartServer();
  }
  if (status.ok()) status = StartClusterMember();
  if (status.ok()) status = LoadAccounts();
  if (status.ok()) status = StartBackgroundWork();
  if (status.ok()) {
    RunInBackground([this] { CatchUpWithControlPlane(); });
    RunInBackground([this] { CommitClusterSettings(); });
    if (refilling_.load()) RunInBackground([this] { Refill(); });
    // A node that joins (or was joining when it stopped) owns keys once it
    // is filled with them and active.
    if (options_.seeds.empty() && control_->config()->Find(cluster_->node_id()) == nullptr) {
      // A new cluster's first node: ready once it is a member (joining: it
      // activates itself below; the reconciler may do so first), or after
      // a bounded wait if its control plane cannot write (it then accepts
      // connections, and answers that it owns no keys until it is a member).
      if (absl::Status added = control_->WaitForSelf(
              {control::MemberState::kJoining, control::MemberState::kActive},
              absl::Now() + std::min(options_.join_timeout, absl::Seconds(5)));
          !added.ok()) {
        Log(Level::kWarning, "the control plane has not made this node a member yet: %s",
            added.message());
      }
    }
    const std::shared_ptr<const control::ClusterConfig> config = control_->config();
    const control::Member* held = config->Find(cluster_->node_id());
    if (status.ok() && held != nullptr && held->state == control::MemberState::kJoining) {
      // Joining a cluster whose keys others own, it takes the writes of the
      // keys it is taking on while it fills, and serves its clients as a
      // gateway: it accepts now. (Where no other member owns keys, as for a
      // new cluster's first node, it would only refuse them until active.)
      const bool others = std::any_of(
          config->members.begin(), config->members.end(), [this](const auto& entry) {
            return entry.first != cluster_->node_id() &&
                   (entry.second.state == control::MemberState::kActive ||
                    entry.second.state == control::MemberState::kLeaving);
          });
      if (others) status = AcceptConnections();
      if (status.ok()) status = FinishJoin(absl::Now() + options_.join_timeout);
      if (status.ok()) {
        Log(Level::kInfo, "active in the cluster at epoch %d",
            static_cast<int64_t>(control_->config()->epoch));
      }
    }
    if (status.ok()) status = AcceptConnections();
  }
  if (status.ok()) status = StartFlusher();
  if (status.ok()) {
    LogListening();
    running_.store(true, std::memory_order_release);
    return absl::OkStatus();
  }
  Log(Level::kError, "%s", status.message());
  if (engine_ == nullptr && absl::IsDataLoss(status) && !options_.repair) {
    Log(Level::kError,
        "the data directory is damaged: start with --repair (or LOGKV_REPAIR=1) to salvage "
        "what verifies, with what is dropped logged");
  }
  // Undone the way Stop undoes a running node; the engine's Close status is
  // not this failure's.
  (void)Stop();
  return status;
}

std::filesystem::path Node::NodeIdFile() const {
  return std::filesystem::path(data_dir_) / "control" / "node_id";
}

absl::StatusOr<std::string> Node::KeptNodeId() const {
  const std::filesystem::path node_id_file = NodeIdFile();
  std::string line;
  {
    std::ifstream in(node_id_file);
    if (in) std::getline(in, line);
  }
  // The file is written as the id and a newline; one edited by hand may end
  // in a carriage return or spaces, which no id the node was started with
  // had.
  std::string kept_node_id(absl::StripAsciiWhitespace(line));
  if (!kept_node_id.empty() && !options_.node_id.empty() && options_.node_id != kept_node_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this node's id is ", absl::CHexEscape(options_.node_id),
        " (--node_id; by default the --listen address), but this data directory is node ",
        absl::CHexEscape(kept_node_id), "'s (", node_id_file.string(),
        "): start it with --node_id=", absl::CHexEscape(kept_node_id),
        ", or use another data directory for a new node"));
  }
  return kept_node_id;
}

absl::Status Node::StartEngine() {
  absl::StatusOr<std::string> data_dir = AbsoluteDataDir(options_.data_dir);
  if (!data_dir.ok()) return data_dir.status();
  data_dir_ = *std::move(data_dir);
  engine::Options options = EngineOptionsFor(options_, data_dir_);
  // A node id other than the one the directory keeps is refused before the
  // open's work (at millions of keys, seconds), once the directory is this
  // process's (another logkvd's own directory says "locked").
  options.on_locked = [this] { return KeptNodeId().status(); };
  options.log = [](engine::LogLevel engine_level, absl::string_view message) {
    const Level mapped = engine_level == engine::LogLevel::kError     ? Level::kError
                         : engine_level == engine::LogLevel::kWarning ? Level::kWarning
                         : engine_level == engine::LogLevel::kInfo    ? Level::kInfo
                                                                      : Level::kDebug;
    if (LogEnabled(mapped)) LogLine(mapped, message);
  };
  options.on_fsync = [histogram = metrics_.fsync_duration()](int64_t duration_ns) {
    histogram->Observe(static_cast<double>(duration_ns) * 1e-9);
  };
  options.on_event = [this](uint32_t, uint64_t) {
    if (Server* server = server_for_events_.load(std::memory_order_acquire)) {
      server->NotifyEvents();
    }
  };

  Log(Level::kInfo, "opening %s (fsync=%s, compression=%s)", data_dir_,
      FsyncPolicyName(options_.fsync), CompressionName(options_.compression));
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine = engine::Engine::Open(options);
  if (!engine.ok()) return engine.status();
  engine_ = *std::move(engine);
  // Before anything is served: whether this node starts on an empty store
  // (a new cluster's first node commits its consensus prefixes only then).
  store_was_empty_ = engine_->GetStats().client_keys == 0;
  {
    // A node that lost its data refills before any quorum counts it; the
    // mark outlives a crash during the refill.
    const std::string mark = (std::filesystem::path(data_dir_) / "refilling").string();
    if (options_.replace) {
      if (absl::Status s = control::WriteFileAtomically(mark, "refilling after --replace\n");
          !s.ok()) {
        return s;
      }
    }
    refilling_.store(options_.replace || std::filesystem::exists(mark), std::memory_order_release);
  }
  const engine::Stats stats = engine_->GetStats();
  Log(Level::kInfo, "opened %s: %d keys in %d segments, recovered in %d ms", data_dir_,
      stats.keys, stats.segments, stats.recovery_ms);
  if (absl::Status writes = engine_->WriteHealth(); !writes.ok()) {
    Log(Level::kWarning, "serving reads only until writes succeed again: %s", writes.message());
  }

  // Which build answers, as Prometheus' *_build_info convention has it: a
  // gauge of 1 whose labels carry the facts.
  metrics_.registry()
      ->AddGaugeFamily("logkv_build_info", "The build of this logkvd (always 1).",
                       {"version", "build_type"})
      ->WithLabelValues({BuildVersion(), BuildType()})
      ->Set(1);
  engine::Engine* const engine_ptr = engine_.get();
  metrics_.keys()->SetCallback(
      [engine_ptr] { return static_cast<double>(engine_ptr->GetStats().client_keys); });
  metrics_.log_bytes()->SetCallback(
      [engine_ptr] { return static_cast<double>(engine_ptr->GetStats().log_bytes); });
  metrics_.dead_bytes()->SetCallback(
      [engine_ptr] { return static_cast<double>(engine_ptr->GetStats().dead_bytes); });
  metrics_.compactions()->SetCallback([engine_ptr] { return engine_ptr->GetStats().compactions; });
  AddEngineMetrics(engine_ptr, data_dir_, &metrics_);
  metrics_.value_bytes_in()->SetCallback(
      [engine_ptr] { return engine_ptr->GetStats().value_bytes_in; });
  metrics_.value_bytes_stored()->SetCallback(
      [engine_ptr] { return engine_ptr->GetStats().value_bytes_stored; });
  metrics_.value_compression_ratio()->SetCallback([engine_ptr] {
    const engine::Stats stats = engine_ptr->GetStats();
    return stats.value_bytes_stored == 0 ? 1.0
                                         : static_cast<double>(stats.value_bytes_in) /
                                               static_cast<double>(stats.value_bytes_stored);
  });
  metrics_.values_compressed()->SetCallback(
      [engine_ptr] { return engine_ptr->GetStats().values_compressed; });
  metrics_.values_compression_skipped()->SetCallback(
      [engine_ptr] { return engine_ptr->GetStats().values_compression_skipped; });
  metrics_.values_decompressed()->SetCallback(
      [engine_ptr] { return engine_ptr->GetStats().values_decompressed; });
  metrics_.compress_cpu_seconds()->SetCallback([engine_ptr] {
    return static_cast<double>(engine_ptr->GetStats().compress_cpu_ns) / 1e9;
  });
  metrics_.decompress_cpu_seconds()->SetCallback([engine_ptr] {
    return static_cast<double>(engine_ptr->GetStats().decompress_cpu_ns) / 1e9;
  });
  ServerCounters* const counters = &counters_;
  metrics_.http_connections()->SetCallback(
      [counters] { return static_cast<double>(counters->http_connections.load()); });
  metrics_.buffered_request_bytes()->SetCallback([counters] {
    return static_cast<double>(counters->buffered_request_bytes.load(std::memory_order_relaxed));
  });
  metrics_.socket_writes()->SetCallback(
      [counters] { return counters->socket_writes.load(std::memory_order_relaxed); });
  metrics_.binary_connections()->SetCallback([counters] {
    return static_cast<double>(counters->connections.load() - counters->http_connections.load());
  });

  counters_.start_unix_ms = absl::ToUnixMillis(absl::Now());
  service_ = std::make_unique<Service>(engine_ptr, ServiceConfigFor(options_, data_dir_),
                                       &counters_);
  // Before the server serves anything: a consensus key must never reach the
  // data engines, even before the control plane runs (until then its
  // operations are refused as Unavailable).
  consensus_ = std::make_unique<ControlConsensusKeys>([this] { return control_plane(); },
                                                      options_.consensus_prefixes);
  service_->set_consensus(consensus_.get());
  backup::BackupManagerOptions backup_options = BackupOptionsFor(options_);
  // The committed configuration this node held when the backup was taken
  // (ControlState's snapshot encoding): who the members were, with their
  // Raft ids and addresses, for restoring a cluster. A restored node does
  // not read it: it starts without control-plane state and joins (or takes
  // its member's place) through --seeds, or starts a new cluster.
  backup_options.on_finished = [this](const std::string& name, const absl::Status& result,
                                      uint64_t stored_bytes) {
    RecordAuditEvent(result.ok() ? "backup.done" : "backup.failed", "",
                     result.ok() ? absl::StrCat("name=\"", name, "\" stored_bytes=", stored_bytes)
                                 : absl::StrCat("name=\"", name, "\" error=\"",
                                                absl::CHexEscape(result.message()), "\""));
  };
  backup_options.control_plane_snapshot = [this]() -> absl::StatusOr<backup::ExtraFile> {
    control::ControlPlane* control = control_plane();
    if (control == nullptr) {
      return absl::UnavailableError("the control plane is not running yet");
    }
    // With the accounts: a node restored from it with no cluster to join
    // takes them back (AuthStore's restored_state_file).
    return backup::ExtraFile{"control/configuration-at-backup", control->StateSnapshot()};
  };
  backup_manager_ = std::make_unique<backup::BackupManager>(engine_ptr, std::move(backup_options));
  // Backups in the Prometheus output, to alert on failures or on a last
  // success that is too old (GET /api/backup/status has the details).
  backup::BackupManager* const backups = backup_manager_.get();
  MetricsRegistry* const registry = metrics_.registry();
  registry->AddCounter("logkv_backup_successes_total", "Backups finished since start.")
      ->SetCallback([backups] { return backups->Status().successes; });
  registry->AddCounter("logkv_backup_failures_total", "Backups failed since start.")
      ->SetCallback([backups] { return backups->Status().failures; });
  registry->AddGauge("logkv_backup_running", "1 while a backup is being written.")
      ->SetCallback([backups] { return backups->Status().running ? 1.0 : 0.0; });
  registry
      ->AddGauge("logkv_backup_last_success_timestamp_seconds",
                 "When the last successful backup finished (Unix time; 0: none yet).")
      ->SetCallback([backups] {
        const backup::BackupStatus status = backups->Status();
        return status.last_success ? absl::ToDoubleSeconds(status.last_success->finished -
                                                           absl::UnixEpoch())
                                   : 0.0;
      });
  registry->AddGauge("logkv_backup_last_duration_seconds", "How long the last successful backup took.")
      ->SetCallback([backups] {
        const backup::BackupStatus status = backups->Status();
        return status.last_success ? absl::ToDoubleSeconds(status.last_success->duration) : 0.0;
      });
  registry->AddGauge("logkv_backup_last_size_bytes", "What the last successful backup takes on disk.")
      ->SetCallback([backups] {
        const backup::BackupStatus status = backups->Status();
        return status.last_success ? static_cast<double>(status.last_success->stored_bytes) : 0.0;
      });
  return absl::OkStatus();
}

absl::Status Node::StartAuth() {
  if (options_.auth != AuthMode::kOn) return absl::OkStatus();
  auth::AuthConfig config = AuthConfigFor(options_);
  // Binary sessions opened with a revoked key end at once, watches included.
  // Binary sessions opened with a key revoked on any node end at once.
  config.on_revoked = [this] {
    if (Server* server = server_for_events_.load(std::memory_order_acquire)) {
      server->RecheckSessions();
    }
  };
  // The rate limit is the cluster's (committed; the flags of the node that
  // commits it first, then SetRateLimit).
  config.on_rate_limit = [this](int64_t requests_per_minute, int64_t burst) {
    rate_limiter_->Reconfigure(requests_per_minute, burst);
  };
  // The accounts live in the control plane, which starts later
  // (LoadAccounts); the store answers Unavailable until then.
  config.import_source = ConfiguredNodeId(options_);
  // Named as the proposing node in audit entries.
  config.node_id = [this] { return node_id(); };
  config.restored_state_file =
      (std::filesystem::path(data_dir_) / "control" / "configuration-at-backup").string();
  // A restored node that joins a cluster (--seeds) takes neither the backup's
  // accounts nor its access table.
  config.restored_starts_cluster = options_.seeds.empty();
  auth_store_ = std::make_unique<auth::AuthStore>(engine_.get(), std::move(config));
  // The limiter exists even when --rate-limit is 0 (then it admits
  // everything without a lock), so a reload can turn it on (SetRateLimit).
  auth::RateLimitConfig limit;
  limit.requests_per_minute = options_.rate_limit;
  limit.burst = options_.rate_limit_burst;
  rate_limiter_ = std::make_unique<auth::RateLimiter>(limit);
  admission_ =
      std::make_unique<auth::Admission>(auth_store_.get(), rate_limiter_.get(), &metrics_);
  // Password hashing (argon2id) takes tens of milliseconds and 64 MiB: it
  // runs here, never on a network loop, a few at a time.
  password_workers_ = std::make_unique<auth::WorkerPool>(2, 256);
  // Failed logins per account and client address (POST /login).
  login_throttle_ = std::make_unique<auth::LoginThrottle>();
  auth::RateLimitConfig account_commands;
  account_commands.requests_per_minute = options_.account_rate_limit;
  account_commands.burst = options_.account_rate_limit_burst;
  account_limiter_ = std::make_unique<auth::RateLimiter>(account_commands);
  auth::RateLimitConfig signups;
  signups.requests_per_minute = options_.signup_rate_limit;
  signups.burst = options_.signup_rate_limit_burst;
  signup_limiter_ = std::make_unique<auth::RateLimiter>(signups);
  return absl::OkStatus();
}

absl::Status Node::LoadAccounts() {
  control::ControlPlane* const control = control_plane();
  if (control == nullptr) return absl::FailedPreconditionError("the control plane is not running");
  const bool auth_on = options_.auth == AuthMode::kOn;
  if (!auth_on) {
    // The first node commits "off", so that no node with accounts joins;
    // a node with accounts off restarted into a cluster with them stops (a
    // lone node may switch: it commits "off" below).
    const std::shared_ptr<const control::ClusterConfig> config = control->config();
    const size_t live = config->members.size() -
                        config->CountInState(control::MemberState::kRemoved);
    if (live > 1 && control->accounts()->Read([](const control::Accounts& a) {
          return a.auth_mode == control::AuthModeCommitted::kOn;
        })) {
      return absl::FailedPreconditionError(
          "the cluster runs with accounts on (--auth=on, committed when it was bootstrapped); "
          "this node has --auth=off and cannot be part of it");
    }
    if (options_.seeds.empty()) {
      control->Submit(control::EncodeSetAuthMode(false, control::Actor::Node(node_id())),
                      [](absl::StatusOr<uint64_t> result) {
        if (!result.ok()) {
          Log(Level::kError, "committing the auth mode: %s", result.status().message());
        }
      });
    }
    return absl::OkStatus();
  }
  const std::atomic<bool>* const stopping = &accounts_stopping_;
  auth_store_->UseControlPlane(
      control->accounts(), [control, stopping](std::string command) -> absl::StatusOr<uint64_t> {
        // At shutdown (the last last-use flush) one short try: the cluster
        // may be stopping too.
        if (stopping->load(std::memory_order_acquire)) {
          return control->SubmitAndWait(std::move(command), absl::Seconds(1));
        }
        return SubmitUntilAnswered(control, command, absl::Now() + absl::Seconds(15));
      });
  // Administrators, groups and ACLs: admission reads them on every request.
  auth_store_->UseAccess(control->access());
  admission_->UseAccess(control->access());
  const absl::Time started = absl::Now();
  absl::Status status = auth_store_->Load(options_.rate_limit, options_.rate_limit_burst);
  if (status.ok()) {
    Log(Level::kInfo, "accounts loaded from the control plane (%d users) in %s",
        static_cast<int64_t>(auth_store_->UserCount()),
        absl::FormatDuration(absl::Now() - started));
  }
  return status;
}

absl::Status Node::BuildCluster() {
  engine::Engine* const engine = engine_.get();
  cluster::ClusterNodeOptions cluster_options = ClusterOptionsFor(options_);
  // The member list is kept in the engine itself, under a node-local key,
  // so a restart knows its cluster (docs/cluster.md, "Restarts") and the
  // list goes wherever the data goes.
  cluster_options.load_membership = [engine]() -> absl::StatusOr<std::string> {
    absl::StatusOr<engine::Record> kept = engine->Get(kClusterMembersKey);
    if (!kept.ok()) return kept.status();
    return std::move(kept->value);
  };
  cluster_options.save_membership = [engine](const std::string& state) {
    return engine->Put(kClusterMembersKey, state).status();
  };
  // Peers are told this node's cluster id, and refused when they name
  // another; until the control plane runs (it knows the id) they wait.
  cluster_options.cluster_id = [this]() -> absl::StatusOr<std::string> {
    control::ControlPlane* control = control_plane();
    if (control == nullptr) {
      return absl::UnavailableError("this node is starting (its control plane is not running)");
    }
    return control->cluster_id();
  };
  cluster_ = std::make_unique<cluster::ClusterNode>(cluster_options);

  // Peers' operations on this node's engine.
  cluster_->AddPeerOperationHandler(
      p::Operation::Replicate,
      [engine](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
               absl::FunctionRef<Completion()> defer) {
        return cluster::HandleReplicate(engine, request, builder, defer);
      });
  cluster_->AddPeerOperationHandler(
      p::Operation::ReadRecords,
      [this, engine](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
                     absl::FunctionRef<Completion()>) {
        if (refilling_.load(std::memory_order_acquire)) {
          // What it holds may lack writes it acknowledged before it lost
          // its data: the coordinator asks another owner.
          p::BuildStatusResponse(
              builder, request.request_id(),
              absl::UnavailableError("this node lost its data and is being refilled from the "
                                     "other owners: it answers no read until then"));
          return Outcome::kAnswered;
        }
        return cluster::HandleReadRecords(engine, request, builder);
      });
  cluster_->AddPeerOperationHandler(
      p::Operation::MerkleHashes,
      [engine](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
               absl::FunctionRef<Completion()>) {
        cluster::HandleMerkleHashes(engine, request, builder);
        return Outcome::kAnswered;
      });
  cluster_->AddPeerOperationHandler(
      p::Operation::MerkleLeaf,
      [engine, max_frame_bytes = options_.max_frame_bytes](
          const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
          absl::FunctionRef<Completion()>) {
        // Leaf key lists go out in pages of at most 1 MiB (half the frame
        // size given): gossip and replication share the peer connection and
        // must not queue behind one huge answer.
        cluster::HandleMerkleLeaf(engine, request, std::min<uint32_t>(max_frame_bytes, 2u << 20),
                                  builder);
        return Outcome::kAnswered;
      });

  // Writes for owners that cannot be reached wait here, in the engine's log.
  handoff_ = std::make_unique<cluster::HintedHandoff>(engine, cluster::HintedHandoffOptions{},
                                                      &metrics_);
  if (absl::Status status = handoff_->Load(); !status.ok()) return status;

  // Commands for the control plane's leader, from members that do not lead
  // and from nodes joining.
  cluster_->AddPeerOperationHandler(
      p::Operation::ControlPropose,
      [this](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
             absl::FunctionRef<Completion()> defer) {
        return HandleControlPropose(control_plane(), request, builder, defer);
      });
  // A member changing the membership asks each member whether it holds the
  // change's epoch (and runs nothing placed under an older one).
  cluster_->AddPeerOperationHandler(
      p::Operation::EpochBarrier,
      [this](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
             absl::FunctionRef<Completion()>) {
        const p::EpochBarrier* barrier = request.operation_as_EpochBarrier();
        absl::Status status = barrier == nullptr
                                  ? absl::InvalidArgumentError("an EpochBarrier names no epoch")
                                  : LocalEpochBarrier(barrier->epoch());
        if (status.ok()) {
          p::FinishResponse(builder, request.request_id(), p::Result::ControlResult,
                            p::CreateControlResult(*builder, control_plane()->config()->epoch)
                                .Union());
        } else {
          p::BuildStatusResponse(builder, request.request_id(), status);
        }
        return Outcome::kAnswered;
      });

  cluster::ClusterNode* const member = cluster_.get();
  // Owners come from the committed configuration; addresses and liveness
  // from gossip (fresher: a restarted member may come back on another
  // port), else from the configuration.
  auto ring_of = [this]() -> std::shared_ptr<const cluster::Ring> { return CommittedRing(); };
  auto lookup = [this, member](const std::string& node_id, cluster::PeerInfo* info) {
    cluster::MemberState state;
    if (member->membership() != nullptr &&
        member->membership()->FindAddresses(node_id, &info->address, &info->http_address,
                                            &state)) {
      info->alive = state == cluster::MemberState::kAlive ||
                    state == cluster::MemberState::kSuspect;
      return true;
    }
    control::ControlPlane* control = control_plane();
    if (control == nullptr) return false;
    std::shared_ptr<const control::ClusterConfig> config = control->config();
    const control::Member* committed = config->Find(node_id);
    if (committed == nullptr) return false;
    info->address = committed->binary_address;
    info->http_address = committed->http_address;
    info->alive = true;  // not heard of yet: the transport tells
    return true;
  };
  cluster::ReplicaCoordinatorOptions coordinator_options = CoordinatorOptionsFor(options_);
  // Seed 001's write wait: an owner that is down (maybe restarting) is asked
  // again until the write has its acknowledgements or the write wait ends.
  coordinator_options.run_after = [transport = member->transport()](
                                      absl::Duration delay, std::function<void()> task) {
    return transport->RunAfter(delay, std::move(task));
  };
  coordinator_ = std::make_unique<cluster::ReplicaCoordinator>(
      engine, member->transport(), ring_of, lookup, cluster_options.node_id, &metrics_,
      handoff_.get(), coordinator_options);
  coordinator_->SetRefilling(refilling_.load());
  service_->set_coordinator(coordinator_.get());
  // Quorum operations wait for both views: gossip's (a majority of the
  // members answered since the start) and the control plane's (this node
  // holds a committed configuration with itself as a member). Until then
  // the ring may be a view of one.
  // The placement changes only with the committed configuration's epoch:
  // each thread keeps its copy until the epoch moves (0: no control plane
  // yet, and no placement either).
  coordinator_->set_placement([this] { return CommittedPlacement(); },
                              [this]() -> uint64_t {
                                const control::ControlPlane* control = control_plane();
                                return control == nullptr ? 0 : control->epoch() + 1;
                              });
  // The lookup's answers move with gossip (Membership::version) and, for
  // members gossip has not heard of, with the committed configuration (the
  // generation above).
  coordinator_->set_peer_version([member]() -> uint64_t {
    const cluster::Membership* membership = member->membership();
    return membership == nullptr ? 0 : membership->version();
  });
  coordinator_->set_view_confirmed([this, member] {
    const cluster::Membership* membership = member->membership();
    return membership != nullptr && membership->ViewConfirmed() &&
           control_caught_up_.load(std::memory_order_acquire) && CommittedRing() != nullptr;
  });
  return absl::OkStatus();
}

void Node::AddRoutes() {
  router_ = std::make_unique<http::Router>();
  node_url_ = std::make_unique<http::NodeUrl>(FirstHttpUrl(options_));
  const http::ApiKeyAuth api_key_auth{.admission = admission_.get(), .metrics = &metrics_};
  data_routes_ = std::make_unique<http::DataRoutes>(
      DataRoutesConfigFor(options_),
      http::DataRoutesDependencies{.service = service_.get(),
                                   .auth = api_key_auth,
                                   .cluster = cluster_.get(),
                                   .coordinator = coordinator_.get(),
                                   .node_url = node_url_.get(),
                                   .wake_streams = [this] {
                                     Server* server =
                                         server_for_events_.load(std::memory_order_acquire);
                                     if (server != nullptr) server->NotifyEvents();
                                   }});
  data_routes_->AddTo(router_.get());
  cluster_routes_ = std::make_unique<http::ClusterRoutes>(
      ClusterRoutesConfigFor(options_),
      http::ClusterRoutesDependencies{.service = service_.get(),
                                      .auth = api_key_auth,
                                      .cluster = cluster_.get(),
                                      .node_url = node_url_.get()});
  cluster_routes_->AddTo(router_.get());
  http::ClusterRoutes* const admin = cluster_routes_.get();
  backup_routes_ = std::make_unique<http::BackupRoutes>(http::BackupRoutesDependencies{
      .manager = backup_manager_.get(),
      .authorize_admin = [admin](const http::HttpRequest& request, http::HttpResponse* refusal) {
        return admin->AuthorizeAdmin(request, refusal, "taking or inspecting backups",
                                     "take or inspect backups");
      },
      .on_requested =
          [this, api_key_auth](const http::HttpRequest& request, const std::string& name) {
            RecordAuditEvent(
                "backup.requested",
                control::DescribeActor(http::RequestActor(api_key_auth, request, node_id())),
                absl::StrCat("name=\"", absl::CHexEscape(name), "\""));
          }});
  backup_routes_->AddTo(router_.get());
  audit_routes_ = std::make_unique<http::AuditRoutes>(http::AuditRoutesDependencies{
      .read = [this](uint64_t since, size_t limit) -> absl::StatusOr<std::string> {
        control::ControlPlane* control = control_plane();
        if (control == nullptr || control->audit_log() == nullptr) {
          return absl::UnavailableError("the control plane is not running yet");
        }
        return control->audit_log()->ReadJson(since, limit);
      },
      .authorize_admin = [admin](const http::HttpRequest& request, http::HttpResponse* refusal) {
        return admin->AuthorizeAdmin(request, refusal, "reading the audit log",
                                     "read the audit log");
      }});
  audit_routes_->AddTo(router_.get());
  if (auth_store_ != nullptr) {
    http::AccountRoutesOptions account_options;
    account_options.login_throttle = login_throttle_.get();
    account_options.on_auth_failure = [this] { metrics_.auth_failures()->Inc(); };
    account_options.on_throttled = [this] {
      metrics_.rate_limited()->Inc();
      // Login failures past the throttle's free ones: counted here, recorded
      // in the audit log as one entry a minute at most (FlushAuditEvents).
      logins_throttled_.fetch_add(1, std::memory_order_relaxed);
    };
    account_options.max_json_depth = options_.max_json_depth;
    account_options.admit = [this](uint64_t user_id) -> absl::Status {
      int64_t retry_after_ms = 0;
      if (account_limiter_->Allow(user_id, absl::ToUnixMillis(absl::Now()), &retry_after_ms)) {
        return absl::OkStatus();
      }
      metrics_.rate_limited()->Inc();
      return protocol::WithRetryAfter(
          absl::ResourceExhaustedError(absl::StrCat(
              "too many token refreshes and key creations for this user (",
              options_.account_rate_limit, " a minute after ", options_.account_rate_limit_burst,
              ", --account-rate-limit); retry after ", retry_after_ms, " ms")),
          retry_after_ms);
    };
    account_options.admit_signup = [this](absl::string_view address) -> absl::Status {
      int64_t retry_after_ms = 0;
      if (signup_limiter_->Allow(absl::HashOf(address), absl::ToUnixMillis(absl::Now()),
                                 &retry_after_ms)) {
        return absl::OkStatus();
      }
      metrics_.rate_limited()->Inc();
      return protocol::WithRetryAfter(
          absl::ResourceExhaustedError(absl::StrCat(
              "too many sign-ups from this address (", options_.signup_rate_limit,
              " a minute after ", options_.signup_rate_limit_burst,
              ", --signup-rate-limit); retry after ", retry_after_ms, " ms")),
          retry_after_ms);
    };
    account_options.node_id = [this] { return node_id(); };
    http::AddAccountRoutes(router_.get(), auth_store_.get(), password_workers_.get(),
                           std::move(account_options));
    // Users, groups and ACLs (docs/security.md).
    http::AddAccessRoutes(
        router_.get(),
        http::AccessRoutesDependencies{
            .store = auth_store_.get(),
            .pool = password_workers_.get(),
            .auth = api_key_auth,
            .authorize_admin =
                [admin](const http::HttpRequest& request, http::HttpResponse* refusal) {
                  return admin->AuthorizeAdmin(request, refusal, "managing users and groups",
                                               "manage users and groups");
                },
            .max_json_depth = options_.max_json_depth,
            .node_id = [this] { return node_id(); }});
  } else {
    http::AddAccessRoutesOff(router_.get());
    auto accounts_off = [](http::HttpRequest&, http::Responder responder) {
      responder.Send(http::HttpResponse::Error(
          404, "accounts are off on this node: start logkvd with --auth=on"));
    };
    for (const char* pattern : {"/signup", "/login", "/refresh", "/apikeys"}) {
      router_->Add(http::Method::kPost, pattern, accounts_off);
    }
    router_->Add(http::Method::kGet, "/apikeys", accounts_off);
    router_->Add(http::Method::kDelete, "/apikeys/{id}", accounts_off);
  }
  // The web console and API reference (docs/console.md), and the routes
  // behind its pages.
  data_routes_->AddBrowseRoutesTo(router_.get());
  cluster_routes_->AddConsoleRoutesTo(router_.get());
  web::AddWebRoutes(router_.get(), web::WebRoutesConfig{.auth = auth_store_ != nullptr,
                                                        .version = BuildVersion()});
  // One metrics handle per route, found by the route's index at answer time.
  for (const auto& route : router_->routes()) {
    route_metrics_.push_back(metrics_.HttpRoute(route->pattern, http::MethodName(route->method)));
  }
  unrouted_metrics_ = metrics_.HttpRoute("unmatched", "ANY");
  // One metrics handle per binary-protocol operation, found by its enum
  // value at answer time: no lock and no look-up per request.
  operation_metrics_.assign(static_cast<size_t>(p::Operation::MAX) + 1, nullptr);
  for (p::Operation operation : p::EnumValuesOperation()) {
    operation_metrics_[static_cast<size_t>(operation)] =
        metrics_.ProtocolOperation(p::EnumNameOperation(operation));
  }
}

namespace {

// One line of the slow-request log (--slow_request_threshold), a warning:
// "slow request operation=Get key=user/42 duration_ms=12.5 status=ok".
// subject_name is "key" (binary protocol) or "path" (HTTP).
void LogSlowRequest(absl::string_view operation, absl::string_view subject_name,
                    absl::string_view subject, int64_t duration_ns, std::string status) {
  if (!LogEnabled(Level::kWarning)) return;
  LogLine(Level::kWarning, "slow request",
          {{"operation", std::string(operation)},
           {subject_name, PrintableBytes(subject)},
           {"duration_ms", static_cast<double>(duration_ns) / 1e6},
           {"status", std::move(status)}});
}

}  // namespace

absl::Status Node::StartServer() {
  ServerConfig config = ServerConfigFor(options_);
  if (options_.tls.enabled()) {
    net::TlsOptions tls_options = options_.tls;
    tls_options.peer_ca_file = options_.peer_tls_ca;
    tls_options.peer_crl_file = options_.peer_tls_crl;
    absl::StatusOr<std::unique_ptr<net::TlsContext>> tls = net::TlsContext::Create(tls_options);
    if (!tls.ok()) return tls.status();
    tls_ = *std::move(tls);
    config.tls = tls_.get();
    net::TlsContext* const context = tls_.get();
    MetricsRegistry* const registry = metrics_.registry();
    registry
        ->AddGauge("logkv_tls_cert_expiry_seconds",
                   "Seconds until the listeners' TLS certificate expires (negative: expired).")
        ->SetCallback([context] {
          return static_cast<double>(context->not_after_unix_seconds()) -
                 absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
        });
    registry
        ->AddCounter("logkv_tls_handshake_failures_total",
                     "TLS handshakes that failed, and plaintext clients refused, since start.")
        ->SetCallback([context] { return context->handshake_failures(); });
    registry
        ->AddCounter("logkv_tls_peer_refusals_total",
                     "Cluster peers refused for their certificate (--peer-tls-ca): none, not of "
                     "the cluster CA, or not naming the node they claim to be.")
        ->SetCallback([context] { return context->peer_refusals(); });
    const double days_left =
        (static_cast<double>(context->not_after_unix_seconds()) -
         absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch())) / 86400;
    if (days_left < 0) {
      Log(Level::kWarning, "TLS: the certificate %s has expired: clients will refuse it",
          options_.tls.cert_file);
    } else if (context->not_before_unix_seconds() > absl::ToUnixSeconds(absl::Now())) {
      Log(Level::kWarning, "TLS: the certificate %s is not valid yet: clients will refuse it",
          options_.tls.cert_file);
    } else if (days_left < 14) {
      Log(Level::kWarning, "TLS: the certificate %s expires in %.1f days",
          options_.tls.cert_file, days_left);
    }
  }
  config.router = router_.get();
  // Zero turns the slow-request log off (and with it the copies of keys it needs).
  const int64_t slow_ns = absl::ToInt64Nanoseconds(options_.slow_request_threshold);
  config.observe_subjects = slow_ns > 0;
  config.http_observer = [this, slow_ns](const http::Route* route, int status,
                                         int64_t duration_ns, absl::string_view path) {
    HttpRouteMetrics* handle =
        route == nullptr ? unrouted_metrics_ : route_metrics_[route->metrics_index];
    handle->Record(status, static_cast<double>(duration_ns) * 1e-9);
    if (slow_ns > 0 && duration_ns >= slow_ns) {
      LogSlowRequest(route == nullptr
                         ? std::string("HTTP unmatched")
                         : absl::StrCat("HTTP ", http::MethodName(route->method), " ",
                                        route->pattern),
                     "path", path, duration_ns, absl::StrCat(status));
    }
  };
  config.protocol_observer = [this, slow_ns](p::Operation operation, absl::StatusCode status,
                                             int64_t duration_ns, absl::string_view key) {
    const auto index = static_cast<size_t>(operation);
    if (index >= operation_metrics_.size() || operation_metrics_[index] == nullptr) return;
    operation_metrics_[index]->Record(static_cast<int>(status),
                                      static_cast<double>(duration_ns) * 1e-9);
    if (slow_ns > 0 && duration_ns >= slow_ns) {
      LogSlowRequest(p::EnumNameOperation(operation), "key", key, duration_ns,
                     absl::AsciiStrToLower(absl::StatusCodeToString(status)));
    }
  };
  // Both protocols admit requests through the same Admission (API key to
  // session, recheck, the per-user rate limit).
  if (admission_ != nullptr) {
    config.authenticate = [this](absl::string_view token) {
      return admission_->Authenticate(token);
    };
    config.check_session = [this](Session* session) { return admission_->Recheck(session); };
    config.admit_request = [this](const Session& session) {
      return admission_->Admit(session.user_id);
    };
  }
  config.peer_handler = cluster_.get();
  // Peer requests made while a loop handles a turn go out together: the
  // coordinator's Replicate and ReadRecords of a turn as one request per
  // peer and kind, written at the end of the turn on the loop's own
  // connections to the peers, whose answers come back on the same thread
  // (no other thread is woken for a request). The transport's own loop
  // batches what its callbacks send.
  cluster::ReplicaBatcher* batcher = coordinator_->batcher();
  cluster::PeerTransport* transport = cluster_->transport();
  config.loop_started = [transport, batcher](uv_loop_s* loop) {
    batcher->HoldOnThisThread();
    transport->AttachLoopOnThisThread(loop);
  };
  config.loop_turn = [transport, batcher] {
    // A request that failed at once may have held more in the batcher.
    do {
      batcher->Flush();
    } while (transport->FlushHeldSends());
  };
  config.loop_ending = [transport, batcher] {
    batcher->StopHoldingOnThisThread();
    transport->DetachLoopOnThisThread();
  };
  transport->SetLoopHooks({[batcher] { batcher->HoldOnThisThread(); },
                           [batcher] { batcher->Flush(); },
                           [batcher] { batcher->StopHoldingOnThisThread(); }});
  // Until the control plane has started and has the cluster's members (a
  // node joining for the first time: until it has joined the control
  // plane), and on a new cluster's first node until it has made the node an
  // active member, the node owns no keys: its clients' first requests would
  // be refused ("no member owns keys"). Its connections wait in the kernel's
  // queue until then (Start, AcceptConnections).
  config.accept_at_start = false;
  server_ = std::make_unique<Server>(service_.get(), config);
  if (absl::Status status = server_->Start(); !status.ok()) return status;
  server_started_ = true;
  server_for_events_.store(server_.get(), std::memory_order_release);
  if (!options_.http.empty() && options_.http.front().port == 0) {
    // The kernel chose the port: the node's URL (/servers, primary_node) names it.
    node_url_->Set(
        absl::StrCat("http://", Reachable(options_.http.front().host, server_->http_ports().front())));
  }
  return absl::OkStatus();
}

absl::Status Node::AcceptConnections() {
  if (accepting_) return absl::OkStatus();
  accepting_ = true;
  return server_->StartAccepting();
}

absl::Status Node::StartClusterMember() {
  // The advertised addresses: the options, else the bound ones (a wildcard
  // host is advertised as loopback; peers elsewhere need --advertise).
  std::string advertise = options_.advertise;
  if (advertise.empty()) {
    if (options_.listen.host == "0.0.0.0") {
      Log(Level::kWarning,
          "listening on 0.0.0.0 without --advertise: advertising 127.0.0.1, which only "
          "peers on this machine can reach");
    }
    advertise = Reachable(options_.listen.host, server_->port());
  }
  std::string http_advertise = options_.http_advertise;
  if (http_advertise.empty() && !options_.http.empty()) {
    http_advertise = Reachable(options_.http.front().host, server_->http_ports().front());
  }
  // The node id is kept with the data: a node restarted on other ports
  // (its id defaulting to its address) is still the member it was.
  const std::filesystem::path node_id_file = NodeIdFile();
  absl::StatusOr<std::string> kept = KeptNodeId();
  if (!kept.ok()) return kept.status();
  const std::string kept_node_id = *std::move(kept);
  if (!kept_node_id.empty()) cluster_->SetNodeId(kept_node_id);
  cluster_->SetAdvertise(advertise, http_advertise);
  if (kept_node_id.empty()) {
    std::error_code error;
    std::filesystem::create_directories(node_id_file.parent_path(), error);
    if (error) {
      return absl::InternalError(absl::StrCat("creating ", node_id_file.parent_path().string(),
                                              ": ", error.message()));
    }
    if (absl::Status status = control::WriteFileAtomically(node_id_file.string(),
                                                           cluster_->node_id() + "\n");
        !status.ok()) {
      return status;
    }
  }
  coordinator_->set_self_node_id(cluster_->node_id());
  service_->SetNodeId(cluster_->node_id());
  if (absl::Status status = cluster_->Start(); !status.ok()) return status;
  cluster_started_ = true;
  if (absl::Status status = StartControlPlane(); !status.ok()) return status;
  if (!options_.seeds.empty()) {
    // Until the first gossip answer this node's ring holds only itself, and
    // it would serve alone what belongs to the cluster: wait (bounded) for
    // the cluster before announcing the node ready.
    const absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (cluster_->membership()->Members().size() < 2 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (cluster_->membership()->Members().size() < 2) {
      Log(Level::kWarning, "no seed answered within 5 s: serving alone until one does");
    }
  }
  cluster::ClusterNode* const member = cluster_.get();
  absl::Status handoff_started = handoff_->Start(
      [member](const std::string& target, std::string frame, absl::Duration timeout,
               std::function<void(absl::StatusOr<std::string>)> done) {
        cluster::Member found;
        if (!member->membership()->Find(target, &found)) {
          done(absl::UnavailableError(absl::StrCat("unknown member ", target)));
          return;
        }
        member->transport()->Send(found.address, std::move(frame), timeout, std::move(done));
      },
      [this, member](const std::string& target) {
        // A member the committed configuration removed owns no key: its
        // hints go. (Gossip says Left only of a member that left by itself;
        // one removed while it was down, a joiner that died, never does.)
        if (const control::ControlPlane* control = control_plane(); control != nullptr) {
          const std::shared_ptr<const control::ClusterConfig> config = control->config();
          const control::Member* held = config->Find(target);
          if (held != nullptr && held->state == control::MemberState::kRemoved) {
            return cluster::TargetState::kGone;
          }
        }
        cluster::Member found;
        if (!member->membership()->Find(target, &found)) {
          return cluster::TargetState::kUnreachable;
        }
        if (found.state == cluster::MemberState::kLeft) return cluster::TargetState::kGone;
        return found.state == cluster::MemberState::kAlive ? cluster::TargetState::kAlive
                                                           : cluster::TargetState::kUnreachable;
      });
  if (!handoff_started.ok()) return handoff_started;
  handoff_started_ = true;
  return absl::OkStatus();
}

absl::Status Node::StartControlPlane() {
  control::ControlPlaneOptions options;
  options.dir = (std::filesystem::path(data_dir_) / "control").string();
  const std::string listen_host = options_.listen.host == "0.0.0.0" ? "0.0.0.0" : options_.listen.host;
  options.listen_host = listen_host == "localhost" ? "127.0.0.1" : listen_host;
  options.port = options_.control_port;
  {
    absl::StatusOr<HostPort> advertised = ParseHostPort(cluster_->options().advertise);
    options.advertise_host = advertised.ok() ? advertised->host : "";
    if (options.advertise_host == "0.0.0.0") options.advertise_host = "127.0.0.1";
  }
  if (options.listen_host == "0.0.0.0" && options.advertise_host.empty()) {
    options.advertise_host = "127.0.0.1";
  }
  options.cluster_secret = options_.cluster_secret;
  // Node-to-node mutual TLS covers the Raft transport too.
  if (!options_.peer_tls_ca.empty()) {
    options.peer_tls_cert =
        options_.peer_tls_cert.empty() ? options_.tls.cert_file : options_.peer_tls_cert;
    options.peer_tls_key =
        options_.peer_tls_key.empty() ? options_.tls.key_file : options_.peer_tls_key;
    options.peer_tls_ca = options_.peer_tls_ca;
    options.peer_tls_crl = options_.peer_tls_crl;
    options.peer_tls_ciphersuites = options_.tls.ciphersuites;
  }
  Counter* const transport_refusals = metrics_.registry()->AddCounter(
      "logkv_control_transport_refusals_total",
      "Connections to the control plane's Raft transport refused: a failed TLS handshake, a "
      "certificate that does not name the peer, a wrong proof of the cluster secret.");
  options.on_transport_refused = [transport_refusals](const std::string& why) {
    transport_refusals->Inc();
    Log(Level::kWarning, "%s", why);
  };
  Counter* const audit_write_failures = metrics_.registry()->AddCounter(
      "logkv_audit_write_failures_total",
      "Times this node's audit file started failing its writes (a full disk, say); the "
      "entries wait in memory for the next write.");
  options.on_audit_problem = [audit_write_failures](const std::string& why, size_t waiting) {
    if (why.empty()) {
      Log(Level::kWarning, "audit log: written again, nothing waits");
      return;
    }
    audit_write_failures->Inc();
    Log(Level::kError, "audit log: %s; %zu entries wait for the next write", why, waiting);
  };
  options.self.node_id = cluster_->node_id();
  options.self.binary_address = cluster_->options().advertise;
  options.self.http_address = cluster_->options().http_advertise;
  options.bootstrap = options_.seeds.empty();
  options.max_voters = options_.control_voters;
  options.audit_retention_entries = options_.audit_retention;
  options.audit_retention_age = options_.audit_retention_age;
  cluster::ClusterNode* const member = cluster_.get();
  options.is_alive = [member](const std::string& node_id) {
    return member->membership() != nullptr && member->membership()->IsAlive(node_id);
  };
  options.forward = [this, member](const std::string& address, std::string command,
                                   std::function<void(absl::StatusOr<uint64_t>)> done) {
    // The configuration has the address the leader joined with; gossip has
    // the one it runs on now (a restarted node may listen on another port).
    std::string to = address;
    if (control::ControlPlane* control = control_plane(); control != nullptr) {
      for (const auto& [id, committed] : control->config()->members) {
        cluster::Member found;
        if (committed.binary_address == address && member->membership() != nullptr &&
            member->membership()->Find(id, &found) && !found.address.empty()) {
          to = found.address;
        }
      }
    }
    SendControlCommand(member->transport(), to, command, /*forwarded=*/true, absl::Seconds(5),
                       std::move(done));
  };
  options.on_change = [this] {
    control::ControlPlane* control = control_plane();
    if (control != nullptr) cluster_->transport()->SetEpoch(control->config()->epoch);
    std::function<void()> listener;
    {
      absl::MutexLock lock(&control_listener_mu_);
      listener = control_listener_;
    }
    if (listener) listener();
  };
  // Proposal to applied, on this node as leader: its distribution.
  Histogram* const apply_seconds = metrics_.registry()->AddHistogram(
      "logkv_control_apply_seconds",
      "Seconds from a command's proposal on this leader to its application here.",
      {0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
       2.048});
  options.on_applied = [apply_seconds](double seconds) { apply_seconds->Observe(seconds); };
  control_ = std::make_unique<control::ControlPlane>(std::move(options));
  if (absl::Status status = control_->Start(); !status.ok()) return status;
  control_ptr_.store(control_.get(), std::memory_order_release);
  cluster_->transport()->SetEpoch(control_->config()->epoch);
  AddControlMetrics();
  return JoinControlPlane();
}

void Node::AddControlMetrics() {
  MetricsRegistry* registry = metrics_.registry();
  control::ControlPlane* const control = control_.get();
  auto status_gauge = [registry, control](const char* name, const char* help, auto read) {
    registry->AddGauge(name, help)->SetCallback(
        [control, read] { return static_cast<double>(read(control->Status())); });
  };
  auto status_counter = [registry, control](const char* name, const char* help, auto read) {
    registry->AddCounter(name, help)->SetCallback(
        [control, read] { return static_cast<double>(read(control->Status())); });
  };
  using S = control::ControlStatus;
  status_gauge("logkv_control_epoch", "Epoch of the committed configuration this node holds.",
               [](const S& s) { return s.epoch; });
  status_gauge("logkv_control_leader", "1 while this node leads the control plane's Raft group.",
               [](const S& s) { return s.raft_state == "leader" ? 1 : 0; });
  status_gauge("logkv_control_term", "The control plane's Raft term as this node knows it.",
               [](const S& s) { return s.term; });
  status_gauge("logkv_control_commit_index", "Highest Raft log index known committed.",
               [](const S& s) { return s.commit_index; });
  status_gauge("logkv_control_applied_index", "Highest Raft log index applied here.",
               [](const S& s) { return s.applied_index; });
  status_gauge("logkv_control_log_last_index",
               "Last index of this node's Raft log (log size since the last snapshot, with "
               "logkv_control_snapshots_total).",
               [](const S& s) { return s.last_index; });
  status_gauge("logkv_control_voters", "Voters in the Raft configuration.",
               [](const S& s) { return s.voters; });
  status_counter("logkv_control_leader_changes_total", "New leaders this node has seen.",
                 [](const S& s) { return s.leader_changes; });
  status_counter("logkv_control_commands_applied_total",
                 "Control-plane commands applied to the state machine here.",
                 [](const S& s) { return s.commands_applied; });
  status_counter("logkv_control_snapshots_total",
                 "Snapshots of the state machine taken here (log compaction).",
                 [](const S& s) { return s.snapshots_taken; });
  status_counter("logkv_control_proposals_total", "Commands proposed on this node as leader.",
                 [](const S& s) { return s.proposals; });
  status_counter("logkv_control_proposals_failed_total",
                 "Proposals that failed (leadership lost, stopping) on this node as leader.",
                 [](const S& s) { return s.proposals_failed; });
  cluster::ClusterNode* const member = cluster_.get();
  registry->AddCounter("logkv_fenced_requests_total",
                       "Peers' data operations refused because the peer's committed "
                       "configuration was older than this node's.")
      ->SetCallback([member] { return static_cast<double>(member->fenced()); });
}

absl::Status Node::JoinControlPlane() {
  const control::Member self = control_->self();
  {
    const std::shared_ptr<const control::ClusterConfig> config = control_->config();
    const control::Member* held = config->Find(self.node_id);
    // A restart: the node holds its configuration. Not with --replace: a
    // node restored from a copy holds an old one, in which its member may
    // still have the raft id it had then; it takes its place again.
    if (held != nullptr && held->raft_id == self.raft_id &&
        held->state != control::MemberState::kRemoved && !options_.replace) {
      return absl::OkStatus();
    }
  }
  if (options_.seeds.empty()) return absl::OkStatus();  // the first node: it adds itself
  const absl::Time deadline = absl::Now() + options_.join_timeout;
  absl::Status last = absl::UnavailableError("no seed answered");
  // The cluster refuses a node of the other auth mode (docs/control-plane.md).
  control::CommandOptions join_options;
  join_options.requires_auth_on = options_.auth == AuthMode::kOn;
  join_options.actor = control::Actor::Node(self.node_id);
  std::string command = control::EncodeAddMember(self, join_options);
  bool replacing = false;
  while (absl::Now() < deadline) {
    for (const std::string& seed : options_.seeds) {
      absl::StatusOr<uint64_t> epoch =
          SendControlCommandAndWait(cluster_->transport(), seed, command, absl::Seconds(5));
      if (epoch.ok()) {
        last = absl::OkStatus();
        break;
      }
      last = epoch.status();
      if (absl::IsAlreadyExists(last) && absl::StrContains(last.message(), "already has raft id")) {
        last = absl::OkStatus();  // an earlier attempt got through
        break;
      }
      if (absl::IsAlreadyExists(last) && !replacing &&
          absl::StrContains(last.message(), "node id")) {
        if (!options_.replace) {
          return absl::FailedPreconditionError(absl::StrCat(
              "node id ", self.node_id, " is already a member of the cluster (", last.message(),
              "). If this node is that member and lost its data, start it with --replace to "
              "take its place; otherwise give it another --node_id"));
        }
        // --replace: this node lost its data and takes that member's place.
        Log(Level::kWarning,
            "--replace: taking the place of member %s (its data is refilled by anti-entropy)",
            self.node_id);
        command = control::EncodeReplaceMember(self, join_options);
        replacing = true;
        last = absl::UnavailableError("replacing");
        break;
      }
      if (absl::IsPermissionDenied(last) || absl::IsUnauthenticated(last) ||
          absl::IsInvalidArgument(last) ||
          (absl::IsFailedPrecondition(last) && absl::StrContains(last.message(), "--auth="))) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot join the cluster through ", seed, ": ", last.message()));
      }
    }
    if (last.ok()) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  if (!last.ok()) {
    return absl::UnavailableError(
        absl::StrCat("could not join the cluster through --seeds within ",
                     absl::FormatDuration(options_.join_timeout), ": ", last.message()));
  }
  // Added: wait until this node has applied its own addition (the leader
  // adds it to Raft first, which sends it the log). It becomes active once
  // it is filled with its keys (FinishJoin, when the node runs).
  absl::Status added = control_->WaitForSelf(
      {control::MemberState::kJoining, control::MemberState::kActive}, deadline);
  if (!added.ok()) {
    return absl::UnavailableError(absl::StrCat("joined, but the configuration did not arrive "
                                               "within ",
                                               absl::FormatDuration(options_.join_timeout),
                                               ": ", added.message()));
  }
  Log(Level::kInfo, "joined the cluster's control plane at epoch %d",
      static_cast<int64_t>(control_->config()->epoch));
  return absl::OkStatus();
}

size_t Node::ReplicasOf(const control::ClusterConfig& config) const {
  return config.replicas != 0 ? config.replicas : static_cast<size_t>(std::max(1, options_.replicas));
}

cluster::Placement Node::CommittedPlacement() {
  // No ring (the coordinator refuses what needs owners) until the control
  // plane runs: a ring made up meanwhile would be a view of one.
  control::ControlPlane* control = control_plane();
  if (control == nullptr) return {};
  std::shared_ptr<const control::ClusterConfig> config = control->config();
  absl::MutexLock lock(&ring_mu_);
  // A thread that read the configuration before another built a newer
  // placement gets the newer one: placements never go back.
  if (ring_epoch_ != ~uint64_t{0} && ring_epoch_ >= config->epoch) return placement_;
  // Owners before a membership change (active and leaving members) and
  // after it (active and joining ones).
  std::vector<std::string> before;
  std::vector<std::string> after;
  for (const auto& [id, member] : config->members) {
    if (member.state == control::MemberState::kActive ||
        member.state == control::MemberState::kLeaving) {
      before.push_back(id);
    }
    if (member.state == control::MemberState::kActive ||
        member.state == control::MemberState::kJoining) {
      after.push_back(id);
    }
  }
  // A new cluster's first node, before its own activation is applied (its
  // cluster id and N may be committed before it adds itself): it is alone.
  // A node joining has no ring until its configuration arrives.
  const control::Member* self = config->Find(cluster_->node_id());
  const bool only_self_joining =
      config->members.empty() ||
      (config->members.size() == 1 && self != nullptr &&
       self->state == control::MemberState::kJoining);
  if (before.empty() && only_self_joining && options_.seeds.empty()) {
    before.push_back(cluster_->node_id());
    after = before;
  }
  const int vnodes = static_cast<int>(config->vnodes_per_member);
  placement_.epoch = config->epoch;
  placement_.replicas = ReplicasOf(*config);
  placement_.ring =
      before.empty() ? nullptr : std::make_shared<const cluster::Ring>(before, vnodes);
  placement_.next = nullptr;
  if (before != after && !before.empty() && !after.empty()) {
    placement_.next = std::make_shared<const cluster::Ring>(std::move(after), vnodes);
  }
  ring_epoch_ = config->epoch;
  // Requests placed under this configuration carry its epoch (the control
  // plane's hook may not have run yet).
  cluster_->transport()->SetEpoch(config->epoch);
  return placement_;
}

absl::Status Node::StartBackgroundWork() {
  cluster::ClusterNode* const member = cluster_.get();
  auto ring_of = [this]() -> std::shared_ptr<const cluster::Ring> { return CommittedRing(); };
  auto live_members = [member] { return member->membership()->LiveMembers(); };
  anti_entropy_ = std::make_unique<cluster::AntiEntropy>(
      engine_.get(), cluster::SendThrough(member->transport()), ring_of, live_members,
      member->node_id(), &metrics_, AntiEntropyOptionsFor(options_));
  // The purger keeps everything while the membership changes: a key owned
  // under either ring is kept (a joining member owns nothing under the
  // first, yet is being filled).
  auto settled_ring = [this]() -> std::shared_ptr<const cluster::Ring> {
    cluster::Placement placement = CommittedPlacement();
    return placement.next != nullptr ? nullptr : placement.ring;
  };
  purger_ = std::make_unique<cluster::Purger>(
      engine_.get(), cluster::SendThrough(member->transport()), settled_ring, live_members,
      member->node_id(), &metrics_, PurgerOptionsFor(options_));
  cluster::AntiEntropy* const anti_entropy = anti_entropy_.get();
  cluster::Purger* const purger = purger_.get();
  cluster::HintedHandoff* const handoff = handoff_.get();
  // A member that comes back gets its hints at once, not at the next pass.
  member->membership()->OnChange([anti_entropy, purger, handoff] {
    anti_entropy->NotifyRingChanged();
    purger->NotifyRingChanged();
    handoff->Notify();
  });
  {
    // A committed change of the ring, the same.
    absl::MutexLock lock(&control_listener_mu_);
    control_listener_ = [this, anti_entropy, purger, handoff] {
      const size_t replicas = ReplicasOf(*control_plane()->config());
      anti_entropy->SetReplicas(replicas);
      purger->SetReplicas(replicas);
      anti_entropy->NotifyRingChanged();
      purger->NotifyRingChanged();
      handoff->Notify();
    };
  }
  // The committed N may have been applied before the listener was set.
  if (control_ != nullptr) {
    anti_entropy_->SetReplicas(ReplicasOf(*control_->config()));
    purger_->SetReplicas(ReplicasOf(*control_->config()));
  }
  coordinator_->set_caught_up([anti_entropy] { return anti_entropy->caught_up(); });
  // Clients route to the committed ring's members that answer: a node
  // still joining (not active) owns nothing yet.
  service_->SetMembersSource([member, control = control_.get()] {
    std::vector<std::pair<std::string, std::string>> members;
    const std::shared_ptr<const control::ClusterConfig> config = control->config();
    for (const auto& [id, committed] : config->members) {
      if (committed.state != control::MemberState::kActive) continue;
      cluster::Member found;
      if (member->membership()->Find(id, &found)) {
        if (found.state != cluster::MemberState::kAlive &&
            found.state != cluster::MemberState::kSuspect) {
          continue;
        }
        members.emplace_back(id, found.address);
      } else {
        members.emplace_back(id, committed.binary_address);
      }
    }
    if (members.size() < 2) members.clear();  // a single node: nothing to route
    return members;
  });
  cluster_routes_->SetSyncing([anti_entropy, member] {
    return member->LiveMemberCount() > 1 && !anti_entropy->caught_up();
  });
  cluster_routes_->SetControlStatus([this, control = control_.get()] {
    const control::ControlStatus status = control->Status();
    const std::shared_ptr<const control::ClusterConfig> config = control->config();
    nlohmann::json members = nlohmann::json::object();
    for (const auto& [id, member] : config->members) {
      std::string role = "none";
      for (const auto& [raft_id, raft_role] : status.roles) {
        if (raft_id == member.raft_id) role = raft_role;
      }
      members[id] = {{"role", role},
                     {"state", control::MemberStateName(member.state)},
                     // A string: 64-bit ids do not fit a JSON number's exact range.
                     {"raft_id", std::to_string(member.raft_id)}};
    }
    return nlohmann::json{{"raft_state", status.raft_state},
                          {"role", status.role},
                          {"term", status.term},
                          {"commit_index", status.commit_index},
                          {"applied_index", status.applied_index},
                          {"epoch", status.epoch},
                          {"cluster_id", absl::BytesToHexString(control->cluster_id())},
                          // 0: not committed yet (each node uses its --replicas).
                          {"replicas", config->replicas},
                          {"vnodes_per_member", config->vnodes_per_member},
                          {"leader", status.leader_node_id},
                          {"voters", status.voters},
                          {"leader_changes", status.leader_changes},
                          {"caught_up", control_caught_up_.load()},
                          // "lagging": this node's audit file lags the chain
                          // (its last write failed, a full disk); the entries
                          // wait in memory and in the control plane's log.
                          {"audit_log", control->audit_log()->healthy() ? "ok" : "lagging"},
                          {"members", std::move(members)}};
  });
  cluster_routes_->SetBackground([this](std::function<void()> work) {
    RunInBackground(std::move(work));
  });
  // A graceful leave (Leave, bounded) commits the change in the control
  // plane before gossip says so.
  cluster_routes_->SetHandOff([this](std::function<void(absl::Status)> then) {
    if (leaving_.exchange(true)) {
      // The leave already runs (asked before, or resumed after a restart).
      return then(absl::UnavailableError("this node is already leaving"));
    }
    RunInBackground([this, then = std::move(then)] {
      absl::Status status = Leave(absl::Now() + absl::Seconds(40));
      if (!status.ok()) Log(Level::kWarning, "leaving: %s", status.message());
      // then() gossips Left (HasLeft, which the rejoin worker also waits
      // for) or refuses the leave: either way the leave is over when it
      // returns, and a node that did not leave stays (or becomes again) a
      // member.
      then(std::move(status));
      leaving_.store(false);
    });
  });
  cluster_routes_->SetRemoveMember(
      [this](std::string node_id, std::function<void(absl::Status)> then) {
        RunInBackground([this, node_id = std::move(node_id), then = std::move(then)] {
          then(RemoveJoiningMember(node_id, absl::Now() + absl::Seconds(20)));
        });
      });
  if (absl::Status status = anti_entropy_->Start(); !status.ok()) return status;
  if (absl::Status status = purger_->Start(); !status.ok()) return status;
  return backup_manager_->Start(member->node_id());
}

absl::Status Node::LocalEpochBarrier(uint64_t epoch) {
  control::ControlPlane* control = control_plane();
  if (control == nullptr) return absl::UnavailableError("the control plane is not running");
  if (const uint64_t held = control->config()->epoch; held < epoch) {
    return absl::UnavailableError(
        absl::StrCat("this node holds epoch ", held, ", not yet ", epoch));
  }
  if (const size_t running = coordinator_->InFlightBefore(epoch); running > 0) {
    return absl::UnavailableError(absl::StrCat(
        running, " strong operation(s) placed under an epoch before ", epoch, " still run"));
  }
  return absl::OkStatus();
}

absl::Status Node::AwaitEpochBarrier(uint64_t epoch, absl::Time deadline) {
  control::ControlPlane* control = control_plane();
  cluster::Membership* membership = cluster_->membership();
  const std::string self = cluster_->node_id();
  // Every member of the configuration that is alive. One that is down
  // coordinates nothing, and when it comes back it first catches up with
  // the control plane (CatchUpWithControlPlane); replicas holding a later
  // epoch refuse what it sends meanwhile (fencing).
  std::vector<std::string> waiting;
  for (const auto& [id, member] : control->config()->members) {
    if (member.state != control::MemberState::kRemoved) waiting.push_back(id);
  }
  absl::Status last = absl::OkStatus();
  while (!waiting.empty()) {
    std::vector<std::string> still;
    for (const std::string& id : waiting) {
      absl::Status status;
      cluster::Member found;
      if (id == self) {
        status = LocalEpochBarrier(epoch);
      } else if (membership == nullptr || !membership->Find(id, &found) ||
                 !membership->IsAlive(id)) {
        continue;  // down: see above
      } else {
        flatbuffers::FlatBufferBuilder builder(64);
        auto barrier = p::CreateEpochBarrier(builder, epoch);
        std::string frame =
            cluster::FinishPeerRequest(&builder, p::Operation::EpochBarrier, barrier.Union());
        status = ControlProposeAnswer(cluster::SendAndWait(
                                          cluster::SendThrough(cluster_->transport()),
                                          found.address, std::move(frame), absl::Seconds(2)))
                     .status();
      }
      if (!status.ok()) {
        last = absl::Status(status.code(), absl::StrCat(id, ": ", status.message()));
        still.push_back(id);
      }
    }
    waiting = std::move(still);
    if (waiting.empty()) break;
    if (absl::Now() >= deadline || stopping_.load()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "members did not reach epoch ", epoch, " in time: ", last.message()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::OkStatus();
}

absl::Status Node::FinishJoin(absl::Time deadline) {
  control::ControlPlane* control = control_plane();
  const control::Member self = control->self();
  absl::Status last = absl::OkStatus();
  std::string last_said;
  while (true) {
    const std::shared_ptr<const control::ClusterConfig> config = control->config();
    const control::Member* held = config->Find(self.node_id);
    if (held == nullptr || held->raft_id != self.raft_id ||
        held->state == control::MemberState::kRemoved) {
      return absl::FailedPreconditionError("this node is not a member of the cluster");
    }
    if (held->state != control::MemberState::kJoining) return absl::OkStatus();
    if (absl::Now() >= deadline || stopping_.load()) {
      return absl::DeadlineExceededError(
          absl::StrCat("the join did not finish in time: ", last.message()));
    }
    const uint64_t epoch = config->epoch;
    // 1. From here on no member runs a strong operation placed under a
    //    configuration without this node; replicas refuse older epochs.
    last = AwaitEpochBarrier(epoch, deadline);
    // 2. The keys this node owns after the change, from every owner before
    //    it: it then holds what any quorum of them held.
    const cluster::Placement placement = CommittedPlacement();
    if (last.ok() && placement.epoch == epoch && placement.ring != nullptr) {
      // A member that is down is skipped while every key keeps a majority
      // of its owners to fill from: at most (N - 1) / 2 of them.
      std::vector<std::string> owners;
      std::vector<std::string> down;
      cluster::Membership* membership = cluster_->membership();
      for (const std::string& member : placement.ring->members()) {
        if (member == self.node_id) continue;
        if (membership != nullptr && membership->IsAlive(member)) {
          owners.push_back(member);
        } else {
          down.push_back(member);
        }
      }
      const size_t n = std::max<size_t>(1, std::min(placement.replicas, placement.ring->size()));
      if (down.size() > (n - 1) / 2) {
        last = absl::UnavailableError(absl::StrCat(
            "cannot fill from a majority of every key's owners: ", absl::StrJoin(down, ", "),
            " down"));
      } else {
        last = anti_entropy_->Fill(placement.next != nullptr ? placement.next : placement.ring,
                                   owners, deadline);
      }
    }
    // 3. Active, if nothing changed meanwhile (else again, at the new epoch).
    if (last.ok()) {
      control::CommandOptions at;
      at.if_epoch = epoch;
      at.actor = control::Actor::Node(self.node_id);
      absl::StatusOr<uint64_t> activated = SubmitUntilAnswered(
          control, control::EncodeActivateMember(self.node_id, at), deadline);
      if (activated.ok()) {
        return control->WaitForSelf({control::MemberState::kActive}, deadline);
      }
      last = activated.status();
    }
    if (std::string said(last.message()); said != last_said) {  // once per reason
      Log(Level::kInfo, "joining: %s; trying again", said);
      last_said = std::move(said);
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::Status Node::Leave(absl::Time deadline) {
  control::ControlPlane* control = control_plane();
  const control::Member self = control->self();
  cluster::Membership* membership = cluster_->membership();
  left_.store(false);  // a new leave: until it removes this node
  {
    const std::shared_ptr<const control::ClusterConfig> config = control->config();
    const control::Member* held = config->Find(self.node_id);
    if (held == nullptr || held->raft_id != self.raft_id ||
        held->state == control::MemberState::kRemoved) {
      return absl::OkStatus();
    }
    if (held->state != control::MemberState::kLeaving) {
      bool other = false;
      for (const auto& [id, member] : config->members) {
        if (id != self.node_id && member.state == control::MemberState::kActive &&
            membership != nullptr && membership->IsAlive(id)) {
          other = true;
        }
      }
      if (!other) {
        return absl::FailedPreconditionError(
            "no other active member is alive: there is nobody to hand this node's keys to");
      }
      const control::CommandOptions by_self =
          control::CommandOptions::By(control::Actor::Node(self.node_id));
      absl::StatusOr<uint64_t> begun = SubmitUntilAnswered(
          control, control::EncodeBeginLeave(self.node_id, by_self), deadline);
      if (!begun.ok() && !absl::StrContains(begun.status().message(), "it is leaving")) {
        return absl::Status(begun.status().code(),
                            absl::StrCat("the control plane refused the leave: ",
                                         begun.status().message()));
      }
      if (absl::Status seen = control->WaitForSelf(
              {control::MemberState::kLeaving, control::MemberState::kRemoved}, deadline);
          !seen.ok()) {
        return seen;
      }
    }
  }
  absl::Status last = absl::OkStatus();
  std::string last_said;
  while (true) {
    const std::shared_ptr<const control::ClusterConfig> config = control->config();
    const control::Member* held = config->Find(self.node_id);
    if (held == nullptr || held->state == control::MemberState::kRemoved) {
      return absl::OkStatus();
    }
    if (absl::Now() >= deadline || stopping_.load()) {
      return absl::DeadlineExceededError(
          absl::StrCat("the leave did not finish in time: ", last.message()));
    }
    const uint64_t epoch = config->epoch;
    // 1. No member runs a strong operation placed under a configuration
    //    where this node is not leaving.
    last = AwaitEpochBarrier(epoch, deadline);
    // 2. Every owner after the change gets this node's keys it owns then
    //    (each must be alive: one that missed them would miss writes).
    const cluster::Placement placement = CommittedPlacement();
    if (last.ok() && (placement.epoch != epoch || placement.next == nullptr)) {
      last = absl::UnavailableError("the configuration changed during the leave");
    }
    if (last.ok()) {
      for (const std::string& member : placement.next->members()) {
        if (membership == nullptr || !membership->IsAlive(member)) {
          last = absl::UnavailableError(
              absl::StrCat("cannot hand keys off to ", member, ": it is not alive"));
        }
      }
    }
    if (last.ok()) last = anti_entropy_->HandOff(deadline, placement.next);
    // 3. Removed, if nothing changed meanwhile.
    if (last.ok()) {
      control::CommandOptions at;
      at.if_epoch = epoch;
      at.actor = control::Actor::Node(self.node_id);
      absl::StatusOr<uint64_t> removed =
          SubmitUntilAnswered(control, control::EncodeRemoveMember(self.node_id, at), deadline);
      if (removed.ok() || absl::StrContains(removed.status().message(), "it is removed")) {
        // This node keeps coordinating as a gateway: under the configuration
        // without it (its removal reaches it before Raft lets it go).
        left_.store(true);
        if (absl::Status seen = control->WaitForSelf({control::MemberState::kRemoved},
                                                     absl::Now() + absl::Seconds(5));
            !seen.ok()) {
          Log(Level::kWarning, "left, but the removal has not reached this node yet: %s",
              seen.message());
        }
        return absl::OkStatus();
      }
      last = removed.status();
    }
    if (std::string said(last.message()); said != last_said) {  // once per reason
      Log(Level::kInfo, "leaving: %s; trying again", said);
      last_said = std::move(said);
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

void Node::CatchUpWithControlPlane() {
  control::ControlPlane* control = control_plane();
  {
    // Alone in its configuration (a single node): nobody holds a newer one.
    bool others = false;
    for (const auto& [id, member] : control->config()->members) {
      if (id != cluster_->node_id() && member.state != control::MemberState::kRemoved) {
        others = true;
      }
    }
    if (!others && options_.seeds.empty()) {
      control_caught_up_.store(true, std::memory_order_release);
      return;
    }
  }
  while (!stopping_.load()) {
    absl::StatusOr<uint64_t> committed =
        control->SubmitAndWait(control::EncodeBarrier(), absl::Seconds(1));
    if (committed.ok()) {
      const absl::Time give_up = absl::Now() + absl::Seconds(5);
      while (control->config()->epoch < *committed && absl::Now() < give_up &&
             !stopping_.load()) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      if (control->config()->epoch >= *committed) {
        control_caught_up_.store(true, std::memory_order_release);
        Log(Level::kInfo, "caught up with the control plane at epoch %d",
            static_cast<int64_t>(*committed));
        return;
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

void Node::CommitClusterSettings() {
  control::ControlPlane* const control = control_plane();
  control::KvState* const kv = control->kv();
  // After the auth mode, which a new cluster's first node commits at the
  // same time: one proposal at a time while nothing is committed yet. (A
  // leader whose Raft log cannot be written, a full disk, crashes inside
  // libraft 0.15 when two of its appends fail together.)
  const absl::Time auth_wait = absl::Now() + absl::Seconds(5);
  while (!stopping_.load() && absl::Now() < auth_wait &&
         control->accounts()->Read([](const control::Accounts& a) {
           return a.auth_mode == control::AuthModeCommitted::kUnset;
         })) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  // The first node (started without --seeds) proposes; the others wait to
  // learn what was committed. A proposal is retried while the log cannot
  // take it (no leader yet); a refusal means another value is committed.
  auto commit = [this, control](const std::string& command, auto committed) {
    while (!stopping_.load() && !committed()) {
      if (!options_.seeds.empty()) {
        absl::SleepFor(absl::Milliseconds(100));
        continue;
      }
      absl::StatusOr<uint64_t> result = control->SubmitAndWait(command, absl::Seconds(2));
      if (result.ok() || absl::IsFailedPrecondition(result.status())) break;
      if (!absl::IsUnavailable(result.status()) && !absl::IsDeadlineExceeded(result.status())) {
        return result.status();
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
    // Applied by the proposal's answer on the leader; here, soon after.
    const absl::Time applied_wait = absl::Now() + absl::Seconds(10);
    while (!stopping_.load() && !committed() && absl::Now() < applied_wait) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    return committed() ? absl::OkStatus()
                       : absl::UnavailableError("not committed yet");
  };

  // The cluster's id: the one the first node drew at its first start (a
  // cluster whose nodes ran before ids were committed gets a new one).
  if (control->config()->cluster_id.empty() && options_.seeds.empty()) {
    std::string id = control->cluster_id();
    if (id.empty()) id = control::NewClusterId();
    absl::Status committed = commit(control::EncodeSetClusterId(id),
                                    [control] { return !control->config()->cluster_id.empty(); });
    if (!committed.ok() && !absl::IsUnavailable(committed)) {
      Log(Level::kError, "committing the cluster id: %s", committed.message());
    }
  }

  // N: this node's --replicas, for a cluster that has none committed (a new
  // one, or one whose nodes ran before N was committed: the flag is what
  // they used). It never changes afterwards.
  const uint32_t wanted_replicas = static_cast<uint32_t>(std::max(1, options_.replicas));
  absl::Status replicas = commit(control::EncodeSetReplicas(wanted_replicas),
                                 [control] { return control->config()->replicas != 0; });
  if (!replicas.ok() && !absl::IsUnavailable(replicas)) {
    Log(Level::kError, "committing the replication factor: %s", replicas.message());
  }
  if (const uint32_t held = control->config()->replicas; held != 0 && held != wanted_replicas) {
    Log(Level::kWarning,
        "--replicas is %d but the cluster committed %d when it was created: the committed "
        "replication factor applies",
        static_cast<int>(wanted_replicas), static_cast<int>(held));
  }

  // The consensus prefixes. The first node's flag counts only for a new
  // cluster: alone in the configuration, on a store that was empty. A
  // cluster that already holds data commits none, so no key it holds moves
  // out of the data engines. Until they are committed every node routes by
  // its own flag, and the log refuses consensus writes as Unavailable.
  std::vector<std::string> wanted = options_.consensus_prefixes;
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  const std::shared_ptr<const control::ClusterConfig> config = control->config();
  const bool alone =
      config->members.size() - config->CountInState(control::MemberState::kRemoved) <= 1;
  const std::vector<std::string> proposed =
      alone && store_was_empty_ ? wanted : std::vector<std::string>();
  absl::Status prefixes = commit(control::EncodeSetConsensusPrefixes(proposed),
                                 [kv] { return kv->committed(); });
  if (!prefixes.ok()) {
    if (!absl::IsUnavailable(prefixes)) {
      Log(Level::kError, "committing the consensus prefixes: %s", prefixes.message());
    }
    return;
  }
  if (const std::vector<std::string> held = kv->prefixes(); held != wanted) {
    Log(Level::kWarning,
        "--consensus_prefix names %s but the cluster committed %s when it was created: the "
        "committed prefixes apply",
        wanted.empty() ? "none" : absl::StrJoin(wanted, ","),
        held.empty() ? "none" : absl::StrJoin(held, ","));
  }
}

void Node::Refill() {
  Log(Level::kWarning,
      "this node lost its data: it answers no quorum read until it has pulled its keys from "
      "every other owner");
  std::string last_said;
  while (!stopping_.load() && refilling_.load()) {
    // Every other owner, not a majority: a write acknowledged by a quorum
    // that included this node before it lost its data may now be on one
    // of them alone.
    // Under the configuration the cluster holds now: a node restored from
    // an old copy would be refused at its stale epoch, a round for nothing.
    if (!control_caught_up_.load(std::memory_order_acquire)) {
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    const cluster::Placement placement = CommittedPlacement();
    const std::shared_ptr<const cluster::Ring> ring =
        placement.next != nullptr ? placement.next : placement.ring;
    absl::Status status = absl::UnavailableError("no committed ring yet");
    if (ring != nullptr) {
      std::vector<std::string> others;
      std::string down;
      cluster::Membership* membership = cluster_->membership();
      for (const std::string& member : ring->members()) {
        if (member == node_id()) continue;
        others.push_back(member);
        if (membership == nullptr || !membership->IsAlive(member)) down = member;
      }
      status = !down.empty() ? absl::UnavailableError(absl::StrCat(down, " is down"))
                             : anti_entropy_->Fill(ring, others, absl::Now() + absl::Seconds(60));
    }
    if (status.ok()) {
      std::error_code ignored;
      std::filesystem::remove(std::filesystem::path(data_dir_) / "refilling", ignored);
      refilling_.store(false, std::memory_order_release);
      coordinator_->SetRefilling(false);
      Log(Level::kInfo, "refilled from every other owner: this node counts in quorums again");
      return;
    }
    if (std::string said(status.message()); said != last_said) {  // once per reason
      Log(Level::kInfo, "refilling: %s; trying again", said);
      last_said = std::move(said);
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

void Node::RunInBackground(std::function<void()> work) {
  std::vector<BackgroundThread> finished;
  {
    absl::MutexLock lock(&background_mu_);
    auto ended = std::partition(background_threads_.begin(), background_threads_.end(),
                                [](const BackgroundThread& running) {
                                  return !running.done->load(std::memory_order_acquire);
                                });
    std::move(ended, background_threads_.end(), std::back_inserter(finished));
    background_threads_.erase(ended, background_threads_.end());
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::thread thread([work = std::move(work), done]() mutable {
      work();
      work = nullptr;  // what the work held goes before the thread counts as done
      done->store(true, std::memory_order_release);
    });
    background_threads_.push_back(BackgroundThread{std::move(done), std::move(thread)});
  }
  // Joined outside the lock: each has ended its work, so this waits for no more than its exit.
  for (BackgroundThread& ended : finished) ended.thread.join();
}

void Node::LogListening() const {
  // Always printed, whatever the log level: scripts and tests wait for it.
  LogLine(Level::kInfo,
          absl::StrFormat("listening on %s:%d (binary protocol, %d threads%s)",
                          options_.listen.host, server_->port(), OnePerCore(options_.threads),
                          tls_ != nullptr ? ", TLS" : ""));
  for (size_t i = 0; i < options_.http.size(); ++i) {
    LogLine(Level::kInfo,
            absl::StrFormat("listening on %s:%d (HTTP%s, auth %s)", options_.http[i].host,
                            server_->http_ports()[i], tls_ != nullptr ? "S" : "",
                            options_.auth == AuthMode::kOn ? "on" : "off"));
  }
}

void Node::RejoinIfLeft() {
  control::ControlPlane* control = control_plane();
  cluster::Membership* membership = cluster_->membership();
  if (control == nullptr || membership == nullptr) return;
  if (membership->HasLeft() || leaving_.load()) return;
  const control::Member self = control->self();
  const std::shared_ptr<const control::ClusterConfig> config = control->config();
  const control::Member* held = config->Find(self.node_id);
  if (held != nullptr && held->raft_id == self.raft_id &&
      held->state == control::MemberState::kJoining) {
    // Added again (below, at an earlier turn): filled, then active.
    if (absl::Status joined = FinishJoin(absl::Now() + absl::Seconds(30)); !joined.ok()) {
      Log(Level::kWarning, "joining the cluster again: %s", joined.message());
    }
    return;
  }
  if (held != nullptr && held->raft_id == self.raft_id &&
      held->state == control::MemberState::kLeaving && !left_.load()) {
    // Leaving, and not (or no longer) being asked to by POST /members/leave:
    // killed or restarted during a decommission, or the leave gave up at its
    // deadline. A leave is committed: a crash does not cancel it, and the
    // cluster must not stay in its joint configuration, so it goes on here
    // until this node is removed (once it caught up with the control plane,
    // so that it acts on what is committed).
    if (control_caught_up_.load()) ResumeLeave();
    return;
  }
  // Removed, or leaving as far as this node applied after it left: a removed
  // node may not hear of its own removal (the leader stops sending it the
  // log).
  if (held == nullptr || held->raft_id != self.raft_id ||
      (held->state != control::MemberState::kRemoved &&
       held->state != control::MemberState::kLeaving)) {
    return;
  }
  // Through any live member: it passes the command to its leader.
  for (const cluster::Member& member : membership->LiveMembers()) {
    if (member.node_id == self.node_id) continue;
    absl::StatusOr<uint64_t> epoch = SendControlCommandAndWait(
        cluster_->transport(), member.address,
        control::EncodeAddMember(self,
                                 control::CommandOptions::By(control::Actor::Node(self.node_id))),
        absl::Seconds(5));
    if (epoch.ok()) {
      Log(Level::kInfo, "joined the control plane again through %s", member.node_id);
      return;
    }
    if (absl::IsAlreadyExists(epoch.status())) return;  // not removed yet: next time
    Log(Level::kWarning, "joining the control plane again through %s: %s", member.node_id,
        epoch.status().message());
  }
}

absl::Status Node::RemoveJoiningMember(const std::string& node_id, absl::Time deadline) {
  control::ControlPlane* control = control_plane();
  if (control == nullptr) return absl::UnavailableError("the control plane is not running");
  const std::shared_ptr<const control::ClusterConfig> config = control->config();
  const control::Member* held = config->Find(node_id);
  if (held == nullptr || held->state == control::MemberState::kRemoved) {
    return absl::NotFoundError(
        absl::StrCat("no member ", node_id, " in the cluster's committed configuration"));
  }
  if (held->state != control::MemberState::kJoining) {
    return absl::FailedPreconditionError(absl::StrCat(
        "member ", node_id, " is ", control::MemberStateName(held->state),
        ": only a member still joining is removed this way (an active member leaves with POST "
        "/members/leave on itself; one that lost its data takes its place with --replace)"));
  }
  cluster::Membership* membership = cluster_->membership();
  if (membership != nullptr && membership->IsAlive(node_id)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "member ", node_id,
        " is alive: it is still joining (being filled); stop it first, or let it finish"));
  }
  // A member that left (or is leaving) since this one began joining may have
  // handed keys to it that the owners without both no longer all hold.
  for (const auto& [id, member] : config->members) {
    if (id != node_id && member.since_epoch > held->since_epoch &&
        (member.state == control::MemberState::kLeaving ||
         member.state == control::MemberState::kRemoved)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "member ", id, " left (or is leaving) since ", node_id,
          " began joining, and may have handed keys to it: start ", node_id,
          " again so that it finishes its join (or, if it lost its data, with --replace)"));
    }
  }
  // Otherwise a joining member was never an owner alone: the owners before
  // the change hold every key, and a quorum of the joint configuration is a
  // quorum of theirs, so dropping it moves no data and needs no barrier.
  control::CommandOptions at;
  at.if_epoch = config->epoch;
  at.actor = control::Actor::Node(this->node_id());
  absl::StatusOr<uint64_t> removed =
      SubmitUntilAnswered(control, control::EncodeRemoveMember(node_id, at), deadline);
  if (!removed.ok()) {
    return absl::Status(removed.status().code(),
                        absl::StrCat("the control plane did not remove ", node_id, ": ",
                                     removed.status().message()));
  }
  Log(Level::kWarning, "member %s, joining and down, removed from the cluster at epoch %d",
      node_id, static_cast<int64_t>(*removed));
  return absl::OkStatus();
}

void Node::ResumeLeave() {
  cluster::Membership* membership = cluster_->membership();
  if (leaving_.exchange(true)) return;  // POST /members/leave runs it
  Log(Level::kInfo, "leaving: this node was leaving the cluster; the leave goes on");
  const absl::Status left = Leave(absl::Now() + absl::Seconds(40));
  if (left.ok()) {
    // As a leave asked for over HTTP ends: gossip says so.
    membership->LeaveAsync([] {});
    Log(Level::kInfo, "leaving: done, this node is no longer a member");
  } else {
    Log(Level::kWarning, "leaving: %s; trying again", left.message());
  }
  leaving_.store(false);
}

absl::Status Node::StartFlusher() {
  {
    PeriodicWorkerOptions every_second;
    every_second.interval = absl::Seconds(1);
    every_second.initial_delay = absl::Seconds(1);
    rejoin_worker_ =
        std::make_unique<PeriodicWorker>("control-rejoin", [this] { RejoinIfLeft(); }, every_second);
    if (absl::Status status = rejoin_worker_->Start(); !status.ok()) return status;
  }
  if (!options_.audit_prefixes.empty() || auth_store_ != nullptr ||
      !options_.backup_dir.empty()) {
    PeriodicWorkerOptions every_100ms;
    every_100ms.interval = absl::Milliseconds(100);
    every_100ms.initial_delay = absl::Milliseconds(100);
    audit_flusher_ = std::make_unique<PeriodicWorker>("audit-flush", [this] { FlushAuditEvents(); },
                                                      every_100ms);
    if (absl::Status status = audit_flusher_->Start(); !status.ok()) return status;
  }
  // With accounts, an ACL's audit flag (docs/security.md) can ask for it.
  control::AclState* access =
      auth_store_ != nullptr && control_ != nullptr ? control_->access() : nullptr;
  if (!options_.audit_prefixes.empty() || access != nullptr) {
    // Audited data writes: offered by the service, buffered here, proposed
    // in batches: those under an --audit-prefix, and those an ACL entry
    // with its audit flag decides for.
    std::vector<std::string> prefixes = options_.audit_prefixes;
    service_->SetWriteAudit(Service::WriteAudit{
        .audited =
            [prefixes, access](absl::string_view engine_key) {
              for (const std::string& prefix : prefixes) {
                if (absl::StartsWith(engine_key, prefix)) return true;
              }
              return access != nullptr && access->AuditsKey(engine_key);
            },
        .record =
            [this](absl::string_view engine_key, bool is_put) {
              RecordAuditEvent(is_put ? "data.put" : "data.delete", "",
                               absl::StrCat("key=\"", absl::CHexEscape(engine_key.substr(0, 256)),
                                            engine_key.size() > 256 ? "...\"" : "\""));
            }});
  }
  if (auth_store_ == nullptr) return absl::OkStatus();
  // Last-use times of API keys are noted in memory and written in batches.
  PeriodicWorkerOptions every_5s;
  every_5s.interval = absl::Seconds(5);
  every_5s.initial_delay = absl::Seconds(5);
  flusher_ = std::make_unique<PeriodicWorker>(
      "key-last-use", [this] { LogLastUseFailure(auth_store_->FlushLastUsed()); }, every_5s);
  if (absl::Status status = flusher_->Start(); !status.ok()) return status;
  if (options_.admins.empty()) return absl::OkStatus();
  // --admins: each named user that exists is made an administrator once
  // (this process); one not signed up yet, when it is (docs/security.md).
  PeriodicWorkerOptions every_second;
  every_second.interval = absl::Seconds(1);
  admins_worker_ = std::make_unique<PeriodicWorker>(
      "admins",
      [this, granted = absl::flat_hash_set<uint64_t>(), failing = false]() mutable {
        absl::Status status = auth_store_->GrantAdmins(options_.admins, &granted);
        // Logged when it starts failing, not every second.
        if (!status.ok() && !failing) {
          Log(Level::kWarning, "--admins: %s (trying again)", status.message());
        }
        failing = !status.ok();
      },
      every_second);
  return admins_worker_->Start();
}

void Node::RecordAuditEvent(std::string kind, std::string actor, std::string detail) {
  // Bounded: past this many pending events (the control plane cannot keep
  // up), they are counted and the count is recorded instead.
  constexpr size_t kMaxPendingAuditEvents = 20000;
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  absl::MutexLock lock(&audit_mu_);
  if (audit_events_.size() >= kMaxPendingAuditEvents) {
    ++audit_dropped_;
    return;
  }
  audit_events_.push_back(
      PendingAuditEvent{now_ms, std::move(kind), std::move(actor), std::move(detail)});
}

void Node::FlushAuditEvents() {
  control::ControlPlane* control = control_plane();
  if (control == nullptr) return;
  // Commands of at most 1000 events (each at most ~1.3 KiB: under the
  // command limit), and at most two in flight: the control plane is not
  // handed more than it applies (the rest wait here, within their bound).
  constexpr size_t kEventsPerCommand = 1000;
  constexpr int kMaxInFlight = 2;
  const bool last = stopping_.load();
  int room = kMaxInFlight - audit_in_flight_.load(std::memory_order_acquire);
  if (room <= 0 && !last) return;
  room = std::max(room, 1);  // the last flush sends one command whatever is in flight
  std::vector<PendingAuditEvent> events;
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&audit_mu_);
    const size_t take = std::min(audit_events_.size(), room * kEventsPerCommand);
    events.assign(std::make_move_iterator(audit_events_.begin()),
                  std::make_move_iterator(audit_events_.begin() + take));
    audit_events_.erase(audit_events_.begin(), audit_events_.begin() + take);
    std::swap(dropped, audit_dropped_);
    // The last flush: what cannot be sent now is counted, not lost unsaid.
    if (last) {
      dropped += audit_events_.size();
      audit_events_.clear();
    }
  }
  // Throttled logins: one entry a minute at most (and at the last flush),
  // so that guessing passwords cannot flood the log.
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  if (logins_throttled_.load(std::memory_order_relaxed) > 0 &&
      (now_ms - last_throttle_entry_ms_ >= 60'000 || stopping_.load())) {
    const uint64_t throttled = logins_throttled_.exchange(0, std::memory_order_relaxed);
    last_throttle_entry_ms_ = now_ms;
    events.push_back(PendingAuditEvent{
        now_ms, "login.throttled", "",
        absl::StrCat(throttled, " login attempts refused by the throttle (failures past the "
                                "free ones) on this node since the last such entry")});
  }
  if (dropped > 0) {
    events.push_back(PendingAuditEvent{
        absl::ToUnixMillis(absl::Now()), "audit.dropped", "",
        absl::StrCat(dropped, " audited events were not recorded (over the pending bound, or "
                              "pending when the node stopped)")});
  }
  for (size_t start = 0; start < events.size(); start += kEventsPerCommand) {
    std::vector<control::AuditEventRecord> batch;
    for (size_t i = start; i < std::min(events.size(), start + kEventsPerCommand); ++i) {
      batch.push_back(control::AuditEventRecord{events[i].at_ms, std::move(events[i].kind),
                                                std::move(events[i].actor),
                                                std::move(events[i].detail)});
    }
    audit_in_flight_.fetch_add(1, std::memory_order_acq_rel);
    control->Submit(control::EncodeRecordAudit(
                        batch, control::CommandOptions::By(control::Actor::Node(node_id()))),
                    [this](absl::StatusOr<uint64_t> result) {
      audit_in_flight_.fetch_sub(1, std::memory_order_acq_rel);
      if (!result.ok()) {
        Log(Level::kWarning, "audit: recording events failed: %s", result.status().message());
      }
    });
  }
}

absl::Status Node::Stop() {
  if (!started_.load(std::memory_order_acquire)) return absl::OkStatus();  // nothing to stop
  if (stopped_) return stop_status_;
  stopped_ = true;
  stopping_.store(true);
  const bool was_running = running_.exchange(false, std::memory_order_acq_rel);

  // The server first: every part is reached through it, so once it no
  // longer accepts and its requests in flight are finished (bounded by its
  // shutdown grace), nothing new comes in while the rest stops. A stop is a
  // restart, not a leave: the node keeps its place in the ring (its peers
  // hold hints for it meanwhile); leaving is asked for explicitly (POST
  // /members/leave).
  if (server_ != nullptr) {
    server_->RequestShutdown();
    server_->Wait();
  }
  // Then the rest in the reverse order of the member list.
  if (admins_worker_ != nullptr) admins_worker_->Stop();
  if (flusher_ != nullptr) flusher_->Stop();
  // Last-use times go to the control plane while it still runs.
  accounts_stopping_.store(true, std::memory_order_release);
  if (auth_store_ != nullptr && control_ != nullptr) {
    LogLastUseFailure(auth_store_->FlushLastUsed());
  }
  if (rejoin_worker_ != nullptr) rejoin_worker_->Stop();
  if (audit_flusher_ != nullptr) {
    audit_flusher_->Stop();
    FlushAuditEvents();  // while the control plane still runs
    // And wait (bounded) for their answers: libraft 0.15 was seen to crash
    // in raft_close when proposals of tens of KiB were still in flight.
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (audit_in_flight_.load(std::memory_order_acquire) > 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  // The hooks earlier parts hold into later ones (anti-entropy, the
  // background threads), then the background threads.
  if (coordinator_ != nullptr) {
    coordinator_->set_caught_up(nullptr);
    coordinator_->set_view_confirmed(nullptr);
  }
  if (cluster_routes_ != nullptr) {
    cluster_routes_->SetControlStatus(nullptr);
    cluster_routes_->SetHandOff(nullptr);
    cluster_routes_->SetRemoveMember(nullptr);
    cluster_routes_->SetBackground(nullptr);
    cluster_routes_->SetSyncing(nullptr);
  }
  if (service_ != nullptr) service_->SetMembersSource(nullptr);
  {
    absl::MutexLock lock(&background_mu_);
    for (BackgroundThread& background : background_threads_) background.thread.join();
    background_threads_.clear();
  }
  {
    absl::MutexLock lock(&control_listener_mu_);
    control_listener_ = nullptr;
  }
  // A backup in progress is cancelled (it leaves nothing behind).
  if (backup_manager_ != nullptr) backup_manager_->Stop();
  if (purger_ != nullptr) purger_->Stop();
  if (anti_entropy_ != nullptr) anti_entropy_->Stop();
  // Before the transport it forwards through.
  if (control_ != nullptr) control_->Stop();
  server_for_events_.store(nullptr, std::memory_order_release);
  if (handoff_started_) handoff_->Stop();
  if (cluster_started_) cluster_->Stop();
  password_workers_.reset();
  if (engine_ != nullptr) stop_status_ = engine_->Close();

  if (was_running) {
    if (stop_status_.ok()) {
      Log(Level::kInfo, "stopped cleanly");
    } else {
      Log(Level::kError, "%s", stop_status_.message());
    }
  }
  return stop_status_;
}

}  // namespace logkv::server
