// logkvd: the logkv server. Flags are also read from LOGKV_<NAME> environment
// variables (a flag on the command line wins); dashed spellings such as
// --data-dir are accepted for every flag.
#include <mimalloc.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/auth/admission.h"
#include "server/auth/auth_store.h"
#include "server/auth/login_throttle.h"
#include "server/auth/rate_limiter.h"
#include "server/auth/worker_pool.h"
#include "server/cluster/anti_entropy.h"
#include "server/cluster/purger.h"
#include "server/cluster/cluster_node.h"
#include "server/cluster/hinted_handoff.h"
#include "server/cluster/replica.h"
#include "server/cluster/replica_coordinator.h"
#include "server/http/account_routes.h"
#include "server/http/data_routes.h"
#include "server/http/router.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/namespaces.h"
#include "server/server.h"
#include "server/service.h"

ABSL_FLAG(std::string, data_dir, "./data", "Data directory (created if missing).");
ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "Binary protocol address, host:port.");
ABSL_FLAG(std::string, node_id, "", "This node's id (default: the listen address).");
ABSL_FLAG(std::string, fsync, "interval",
          "never | interval | always. always answers writes only after fdatasync "
          "(group commit); interval syncs every --fsync_interval_ms.");
ABSL_FLAG(int64_t, fsync_interval_ms, 1000, "Sync period for --fsync=interval.");
ABSL_FLAG(int, threads, 0, "I/O loop threads (0 = one per core).");
ABSL_FLAG(int, shards, 0,
          "Engine shards, used only when the data directory is created (0 = one per core). "
          "Each shard syncs its own file, so under --fsync=always more shards mean more "
          "fdatasyncs per group commit.");
ABSL_FLAG(uint64_t, segment_bytes, 64ull << 20, "Log segment size.");
ABSL_FLAG(uint32_t, max_key_bytes, 4096, "Largest key accepted.");
ABSL_FLAG(uint32_t, max_value_bytes, 16u << 20, "Largest value accepted.");
ABSL_FLAG(uint32_t, max_frame_bytes, 64u << 20, "Largest protocol frame accepted.");
ABSL_FLAG(uint32_t, max_batch_items, 10000, "Most operations in one Batch.");
ABSL_FLAG(std::string, http, "127.0.0.1:8080",
          "HTTP (REST) addresses, comma-separated host:port list; empty: no HTTP.");
ABSL_FLAG(uint32_t, versions, 3,
          "Versions of each key kept readable (GET /get/{key}?version=N, GetVersion).");
ABSL_FLAG(bool, read_only, false, "Refuse every client write (403 / PermissionDenied).");
ABSL_FLAG(bool, repair, false,
          "Open a damaged data directory by salvaging what verifies: unreadable records are "
          "skipped, segments with a damaged header set aside as *.damaged, and what was dropped "
          "is logged (files, offsets, totals); then serve as usual.");
ABSL_FLAG(std::string, auth, "off",
          "off | on. on: accounts, API keys (X-API-Key, Hello auth_token) and one key "
          "namespace per user.");
ABSL_FLAG(std::string, jwt_secret, "",
          "HS256 secret for session tokens (also JWT_SECRET). Empty: generated once and kept "
          "in the data directory.");
ABSL_FLAG(std::string, jwt_expiration, "1h",
          "Lifetime of access tokens (also JWT_EXPIRATION), a duration such as 1h or 30m.");
ABSL_FLAG(int64_t, rate_limit, 100,
          "Requests per minute per user with --auth=on (token bucket); 0 turns it off.");
ABSL_FLAG(int64_t, rate_limit_burst, 10, "Token bucket size of --rate_limit.");
ABSL_FLAG(uint32_t, max_document_bytes, 1u << 20, "Largest JSON document on PUT /kv/{path}.");
ABSL_FLAG(uint32_t, max_json_depth, logkv::server::http::kDefaultMaxJsonDepth,
          "Deepest nesting of objects and arrays in any JSON body (400 beyond), and in a "
          "stored value GET /get/{key} returns as JSON (deeper ones come back as a string).");
ABSL_FLAG(uint32_t, http_max_header_bytes, 16u << 10,
          "Largest HTTP header section (431 beyond).");
ABSL_FLAG(int64_t, http_idle_timeout_ms, 60'000,
          "Close an HTTP connection idle this long, or whose request takes longer to arrive.");
ABSL_FLAG(int64_t, binary_idle_timeout_ms, 60'000,
          "Close a binary-protocol connection whose frame takes longer than this to arrive, or "
          "that sends nothing this long while nothing is owed to it and it has no watch.");
ABSL_FLAG(uint64_t, max_buffered_bytes, 256ull << 20,
          "Bytes all connections together may hold for requests still arriving (frames and HTTP "
          "bodies over 64 KiB); one that would pass it is refused (ResourceExhausted / 503) and "
          "its connection closed. 0 = no limit.");
ABSL_FLAG(uint64_t, max_watches_per_connection, 1024,
          "Watches one binary connection may have open (ResourceExhausted beyond); 0 = no limit.");
ABSL_FLAG(uint64_t, max_watches_per_user, 10'000,
          "Watches one user may have open over all connections with --auth=on; 0 = no limit.");
ABSL_FLAG(bool, insecure, false,
          "Allow listening on a non-loopback address with --auth=off.");
ABSL_FLAG(std::string, log_level, "info", "debug | info | warning | error");
ABSL_FLAG(std::string, advertise, "",
          "Binary-protocol host:port peers reach this node at (default: the --listen address, "
          "with the bound port when it is 0).");
ABSL_FLAG(std::string, http_advertise, "",
          "HTTP host:port advertised to the cluster (default: the first --http address).");
ABSL_FLAG(std::string, seeds, "",
          "Comma-separated host:port (binary protocol) of cluster members to join through.");
ABSL_FLAG(std::string, cluster_secret, "",
          "Shared secret every peer sends in ClusterHello (also LOGKV_CLUSTER_SECRET); empty: "
          "peers are not authenticated.");
ABSL_FLAG(int64_t, anti_entropy_interval_ms, 30'000,
          "Time between anti-entropy passes over every live peer (Merkle comparison).");
ABSL_FLAG(uint64_t, anti_entropy_bytes_per_second, 8u << 20,
          "Bytes per second anti-entropy may send and receive (0 = unlimited).");
ABSL_FLAG(int64_t, purge_interval_ms, 60'000,
          "Time between purger sweeps: records this node no longer owns, and tombstones past "
          "--tombstone-grace-ms, are dropped once every owner confirms them.");
ABSL_FLAG(int64_t, purge_ring_stable_ms, 60'000,
          "The purger drops nothing until the ring has not changed for this long.");
ABSL_FLAG(int64_t, tombstone_grace_ms, 24ll * 3600 * 1000,
          "Age before a tombstone may be collected (once every owner holds it) and an expired "
          "record may be dropped. A replica away longer than this may bring deleted keys back.");
ABSL_FLAG(int, replicas, 3, "Copies of each key (N), capped at the cluster's size.");
ABSL_FLAG(int, w, 0, "Write acknowledgements awaited (W); 0 = by consistency level.");
ABSL_FLAG(int, r, 0, "Replicas read (R); 0 = by consistency level.");
ABSL_FLAG(int64_t, write_wait_ms, 3000,
          "How long a write waits for W acknowledgements before 503 / Unavailable.");
ABSL_FLAG(int64_t, gossip_interval_ms, 500, "Gossip period: one random peer pinged per period.");
ABSL_FLAG(int64_t, dead_after_ms, 10000,
          "A member suspected (3 missed pings) this long is declared dead.");
ABSL_FLAG(bool, fault_injection, false,
          "Tests only: enables POST /internal/fault to drop traffic to chosen peers. Refused "
          "unless logkvd was built with -DLOGKV_FAULT_INJECTION=ON.");

namespace logkv::server {
namespace {

// Flags named here are also read from LOGKV_<NAME>.
constexpr const char* kFlagNames[] = {
    "data_dir",      "listen",        "node_id",         "fsync",     "fsync_interval_ms",
    "threads",       "shards",        "segment_bytes",   "max_key_bytes", "max_value_bytes",
    "max_frame_bytes", "max_batch_items", "versions",    "read_only", "auth",
    "insecure",      "log_level",     "http",            "jwt_secret", "jwt_expiration",
    "rate_limit",    "rate_limit_burst", "max_document_bytes", "max_json_depth",
    "http_max_header_bytes", "http_idle_timeout_ms", "binary_idle_timeout_ms",
    "max_buffered_bytes", "max_watches_per_connection", "max_watches_per_user", "advertise",
    "http_advertise", "seeds", "cluster_secret",
    "anti_entropy_interval_ms", "anti_entropy_bytes_per_second", "purge_interval_ms",
    "purge_ring_stable_ms", "tombstone_grace_ms",
    "replicas",      "w",             "r",               "write_wait_ms", "gossip_interval_ms",
    "dead_after_ms", "fault_injection", "repair",
};

// Rewrites --data-dir=x to --data_dir=x, and puts LOGKV_* values of flags not
// on the command line in front of it (so the command line wins).
std::vector<std::string> NormalizeArguments(int argc, char** argv) {
  std::vector<std::string> args;
  args.emplace_back(argv[0]);
  std::vector<std::string> given;
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      const size_t end = std::min(arg.find('='), arg.size());
      for (size_t j = 2; j < end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
      std::string name = arg.substr(2, end - 2);
      if (absl::StartsWith(name, "no")) given.push_back(name.substr(2));
      given.push_back(std::move(name));
    }
    rest.push_back(std::move(arg));
  }
  for (const char* name : kFlagNames) {
    const std::string variable = absl::StrCat("LOGKV_", absl::AsciiStrToUpper(name));
    const char* value = std::getenv(variable.c_str());
    // The seed's own variables for the session tokens.
    if (value == nullptr && std::string(name) == "jwt_secret") value = std::getenv("JWT_SECRET");
    if (value == nullptr && std::string(name) == "jwt_expiration") {
      value = std::getenv("JWT_EXPIRATION");
    }
    if (value == nullptr) continue;
    if (std::find(given.begin(), given.end(), name) != given.end()) continue;
    args.push_back(absl::StrCat("--", name, "=", value));
  }
  args.insert(args.end(), rest.begin(), rest.end());
  return args;
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || absl::StartsWith(host, "127.") || host == "::1";
}

absl::Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port"));
  }
  *host = address.substr(0, colon);
  if (host->empty()) *host = "0.0.0.0";
  if (*host == "localhost") *host = "127.0.0.1";
  return absl::OkStatus();
}

int Fail(const absl::Status& status) {
  Log(Level::kError, "%s", status.message());
  return 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("logkvd --data_dir=DIR --listen=127.0.0.1:7070 [flags]");
  std::vector<std::string> normalized = NormalizeArguments(argc, argv);
  std::vector<char*> pointers;
  for (std::string& arg : normalized) pointers.push_back(arg.data());
  absl::ParseCommandLine(static_cast<int>(pointers.size()), pointers.data());

  // Debian's Abseil is built without NDEBUG, which leaves per-acquisition
  // deadlock detection on (a global lock): a server cannot pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  Level level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    return Fail(absl::InvalidArgumentError("--log_level must be debug, info, warning or error"));
  }
  SetLogLevel(level);

  std::string host;
  int port = 0;
  if (absl::Status status = SplitHostPort(absl::GetFlag(FLAGS_listen), &host, &port);
      !status.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--listen: ", status.message())));
  }
  const std::string auth = absl::GetFlag(FLAGS_auth);
  if (auth != "off" && auth != "on") {
    return Fail(absl::InvalidArgumentError("--auth must be off or on"));
  }
  const bool auth_on = auth == "on";
  std::vector<HttpAddress> http_addresses;
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_http), ',', absl::SkipWhitespace())) {
    HttpAddress address;
    if (absl::Status status = SplitHostPort(std::string(absl::StripAsciiWhitespace(part)),
                                            &address.host, &address.port);
        !status.ok()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("--http: ", status.message())));
    }
    http_addresses.push_back(std::move(address));
  }
  if (!auth_on && !absl::GetFlag(FLAGS_insecure)) {
    std::vector<std::string> hosts = {host};
    for (const HttpAddress& address : http_addresses) hosts.push_back(address.host);
    for (const std::string& bound : hosts) {
      if (IsLoopback(bound)) continue;
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          "refusing to listen on ", bound, " with --auth=off: anyone who can reach it could "
          "read and write everything. Bind a loopback address, use --auth=on, or pass "
          "--insecure to accept that.")));
    }
  }
  const size_t max_json_depth = absl::GetFlag(FLAGS_max_json_depth);
  if (max_json_depth < 1 || max_json_depth > http::kMaxJsonDepthCeiling) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--max_json_depth must be between 1 and ", http::kMaxJsonDepthCeiling,
                     " (nested objects and arrays), not ", max_json_depth)));
  }
  absl::Duration jwt_expiration;
  if (!absl::ParseDuration(absl::GetFlag(FLAGS_jwt_expiration), &jwt_expiration) ||
      jwt_expiration < absl::Seconds(1)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--jwt_expiration '", absl::GetFlag(FLAGS_jwt_expiration),
        "' is not a duration of at least one second (such as 1h or 30m)")));
  }

  // Cluster flags. A node always runs as a cluster member: alone it is a
  // cluster of one, and joins others through --seeds or POST /join.
#ifndef LOGKV_FAULT_INJECTION
  if (absl::GetFlag(FLAGS_fault_injection)) {
    return Fail(absl::FailedPreconditionError(
        "--fault-injection is for tests: this logkvd was built without it (configure with "
        "-DLOGKV_FAULT_INJECTION=ON, the default when tests are built)"));
  }
#endif
  if (absl::GetFlag(FLAGS_replicas) < 1) {
    return Fail(absl::InvalidArgumentError("--replicas must be at least 1"));
  }
  if (absl::GetFlag(FLAGS_w) < 0 || absl::GetFlag(FLAGS_r) < 0) {
    return Fail(absl::InvalidArgumentError("--w and --r must be 0 (by consistency) or more"));
  }
  if (absl::GetFlag(FLAGS_gossip_interval_ms) < 10 || absl::GetFlag(FLAGS_dead_after_ms) < 1 ||
      absl::GetFlag(FLAGS_write_wait_ms) < 1) {
    return Fail(absl::InvalidArgumentError(
        "--gossip_interval_ms must be at least 10; --dead_after_ms and --write_wait_ms positive"));
  }
  std::vector<std::string> seeds;
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_seeds), ',', absl::SkipWhitespace())) {
    std::string seed(absl::StripAsciiWhitespace(part));
    std::string seed_host;
    int seed_port = 0;
    if (absl::Status status = SplitHostPort(seed, &seed_host, &seed_port);
        !status.ok() || seed_port == 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--seeds: '", seed, "' is not host:port (the binary-protocol address)")));
    }
    seeds.push_back(absl::StrCat(seed_host, ":", seed_port));
  }
  if (auth_on && !seeds.empty()) {
    // Accounts are kept per node and tenant namespaces are built from user
    // ids, which two nodes would hand out twice (docs/cluster.md).
    return Fail(absl::FailedPreconditionError(
        "--auth=on with --seeds is not supported yet: accounts are not replicated, so two "
        "nodes would give different users the same namespace"));
  }
  const std::string advertise_flag = absl::GetFlag(FLAGS_advertise);
  if (!advertise_flag.empty()) {
    std::string advertise_host;
    int advertise_port = 0;
    if (absl::Status status = SplitHostPort(advertise_flag, &advertise_host, &advertise_port);
        !status.ok() || advertise_port == 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--advertise: '", advertise_flag, "' is not host:port")));
    }
  }

  // Declared before the engine, so it outlives every engine callback.
  ServerMetrics metrics;
  engine::Options options;
  // Absolute, so that the Service can recognise the engine's messages that
  // name its files and keep them from clients (ServiceConfig::data_dir).
  {
    std::error_code error;
    const std::filesystem::path data_dir =
        std::filesystem::absolute(absl::GetFlag(FLAGS_data_dir), error).lexically_normal();
    if (error) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--data-dir '", absl::GetFlag(FLAGS_data_dir), "': ", error.message())));
    }
    options.data_dir = data_dir.string();
    while (options.data_dir.size() > 1 && options.data_dir.back() == '/') {
      options.data_dir.pop_back();
    }
  }
  const int shards = absl::GetFlag(FLAGS_shards);
  options.shard_count = static_cast<uint32_t>(
      shards > 0 ? shards : std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  options.segment_bytes = absl::GetFlag(FLAGS_segment_bytes);
  // Clients' keys are held to --max-key-bytes (protocol::Limits, which
  // measures the key the client sent); the engine's limit leaves room for
  // the tenant prefix the Service puts before it with auth on.
  const uint32_t max_key_bytes = absl::GetFlag(FLAGS_max_key_bytes);
  constexpr uint32_t kEngineMaxKeyBytes = 65535;  // engine::Options::max_key_bytes' ceiling
  if (max_key_bytes == 0 || max_key_bytes > kEngineMaxKeyBytes - kTenantPrefixBytes) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--max_key_bytes must be in [1, ", kEngineMaxKeyBytes - kTenantPrefixBytes, "]")));
  }
  options.max_key_bytes = max_key_bytes + kTenantPrefixBytes;
  options.max_value_bytes = absl::GetFlag(FLAGS_max_value_bytes);
  options.versions_kept = absl::GetFlag(FLAGS_versions);
  options.repair = absl::GetFlag(FLAGS_repair);
  options.fsync_interval_ms = absl::GetFlag(FLAGS_fsync_interval_ms);
  const std::string fsync = absl::GetFlag(FLAGS_fsync);
  if (fsync == "never") {
    options.fsync = engine::FsyncPolicy::kNever;
  } else if (fsync == "interval") {
    options.fsync = engine::FsyncPolicy::kInterval;
  } else if (fsync == "always") {
    options.fsync = engine::FsyncPolicy::kAlways;
  } else {
    return Fail(absl::InvalidArgumentError("--fsync must be never, interval or always"));
  }
  options.log = [](engine::LogLevel engine_level, absl::string_view message) {
    const Level mapped = engine_level == engine::LogLevel::kError     ? Level::kError
                         : engine_level == engine::LogLevel::kWarning ? Level::kWarning
                         : engine_level == engine::LogLevel::kInfo    ? Level::kInfo
                                                                      : Level::kDebug;
    if (LogEnabled(mapped)) LogLine(mapped, message);
  };
  // Hints, accounts and the member list are this node's own: they stay out
  // of the Merkle summary that replicas compare.
  options.merkle_excluded_prefixes = {std::string(kAuthPrefix), std::string(kHintPrefix),
                                      std::string(kClusterPrefix)};
  // Tombstones are collected by the purger once every owner holds them (a
  // single node's ring has no other owner to ask), never by compaction alone.
  options.tombstone_grace_ms = std::max<int64_t>(0, absl::GetFlag(FLAGS_tombstone_grace_ms));
  options.collect_tombstones = false;
  options.on_fsync = [histogram = metrics.fsync_duration()](int64_t duration_ns) {
    histogram->Observe(static_cast<double>(duration_ns) * 1e-9);
  };
  std::atomic<Server*> server_for_events{nullptr};
  options.on_event = [&server_for_events](uint32_t, uint64_t) {
    if (Server* server = server_for_events.load(std::memory_order_acquire)) server->NotifyEvents();
  };

  // Signals are taken by this thread with sigwait; every other thread
  // (engine, loops) inherits the blocked mask. SIGPIPE is ignored: a closed
  // socket is an error return, not a death.
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Log(Level::kInfo, "opening %s (fsync=%s, mimalloc %d)", options.data_dir, fsync, mi_version());
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine = engine::Engine::Open(options);
  if (!engine.ok()) {
    const int failed = Fail(engine.status());
    if (absl::IsDataLoss(engine.status()) && !options.repair) {
      Log(Level::kError,
          "the data directory is damaged: start with --repair (or LOGKV_REPAIR=1) to salvage "
          "what verifies, with what is dropped logged");
    }
    return failed;
  }
  const engine::Stats stats = (*engine)->GetStats();
  Log(Level::kInfo, "opened %s: %d keys in %d segments, recovered in %d ms", options.data_dir,
      stats.keys, stats.segments, stats.recovery_ms);
  if (absl::Status writes = (*engine)->WriteHealth(); !writes.ok()) {
    Log(Level::kWarning, "serving reads only until writes succeed again: %s", writes.message());
  }

  ServerCounters counters;
  counters.start_unix_ms = absl::ToUnixMillis(absl::Now());
  ServiceConfig service_config;
  service_config.node_id = !absl::GetFlag(FLAGS_node_id).empty() ? absl::GetFlag(FLAGS_node_id)
                           : !advertise_flag.empty()              ? advertise_flag
                                                                  : absl::GetFlag(FLAGS_listen);
  service_config.read_only = absl::GetFlag(FLAGS_read_only);
  service_config.fsync_always = options.fsync == engine::FsyncPolicy::kAlways;
  service_config.limits.max_frame_bytes = absl::GetFlag(FLAGS_max_frame_bytes);
  service_config.limits.max_key_bytes = max_key_bytes;
  service_config.data_dir = options.data_dir;
  service_config.limits.max_value_bytes = options.max_value_bytes;
  service_config.limits.max_batch_items = absl::GetFlag(FLAGS_max_batch_items);
  if (service_config.limits.max_frame_bytes < service_config.limits.max_value_bytes + 4096) {
    return Fail(absl::InvalidArgumentError(
        "--max_frame_bytes must exceed --max_value_bytes by at least 4096 bytes (a frame "
        "carries the value plus its key and envelope)"));
  }
  Service service(engine->get(), service_config, &counters);

  // Accounts and API keys live in the engine itself (server/namespaces.h).
  std::unique_ptr<auth::AuthStore> auth_store;
  std::unique_ptr<auth::RateLimiter> rate_limiter;
  std::unique_ptr<auth::WorkerPool> password_workers;
  std::unique_ptr<auth::Admission> admission;
  if (auth_on) {
    auth::AuthConfig auth_config;
    auth_config.jwt_secret = absl::GetFlag(FLAGS_jwt_secret);
    auth_config.access_token_ttl_s = absl::ToInt64Seconds(jwt_expiration);
    auth_config.log = [](absl::string_view message) { Log(Level::kWarning, "%s", message); };
    // Binary sessions opened with a revoked key end at once, watches included.
    auth_config.on_revoked = [&server_for_events] {
      if (Server* server = server_for_events.load(std::memory_order_acquire)) {
        server->RecheckSessions();
      }
    };
    auth_store = std::make_unique<auth::AuthStore>(engine->get(), auth_config);
    if (absl::Status status = auth_store->Load(); !status.ok()) {
      (void)(*engine)->Close();
      return Fail(status);
    }
    if (absl::GetFlag(FLAGS_rate_limit) > 0) {
      auth::RateLimitConfig limit;
      limit.requests_per_minute = absl::GetFlag(FLAGS_rate_limit);
      limit.burst = absl::GetFlag(FLAGS_rate_limit_burst);
      rate_limiter = std::make_unique<auth::RateLimiter>(limit);
    }
    admission = std::make_unique<auth::Admission>(
        auth_store.get(), rate_limiter.get(), absl::GetFlag(FLAGS_rate_limit), &metrics);
    // Password hashing (argon2id) takes tens of milliseconds and 64 MiB:
    // it runs here, never on a network loop, a few at a time.
    password_workers = std::make_unique<auth::WorkerPool>(2, 256);
  }

  metrics.keys()->SetCallback([&engine] {
    return static_cast<double>((*engine)->GetStats().client_keys);
  });
  metrics.log_bytes()->SetCallback([&engine] {
    return static_cast<double>((*engine)->GetStats().log_bytes);
  });
  metrics.dead_bytes()->SetCallback([&engine] {
    return static_cast<double>((*engine)->GetStats().dead_bytes);
  });
  metrics.compactions()->SetCallback([&engine] { return (*engine)->GetStats().compactions; });

  metrics.http_connections()->SetCallback(
      [&counters] { return static_cast<double>(counters.http_connections.load()); });
  metrics.buffered_request_bytes()->SetCallback([&counters] {
    return static_cast<double>(counters.buffered_request_bytes.load(std::memory_order_relaxed));
  });
  metrics.binary_connections()->SetCallback([&counters] {
    return static_cast<double>(counters.connections.load() - counters.http_connections.load());
  });

  // The cluster member. Declared before the server, which hands it peer
  // connections, so it outlives the server. Its advertised addresses are
  // completed once the server has bound its ports.
  cluster::ClusterNodeOptions cluster_options;
  // With --listen port 0 and no --node-id, the id is the advertised address
  // with the port the kernel chose (set in SetAdvertise below).
  const bool node_id_from_bound_port = absl::GetFlag(FLAGS_node_id).empty() &&
                                       advertise_flag.empty() && port == 0;
  cluster_options.node_id = node_id_from_bound_port ? "" : service_config.node_id;
  cluster_options.seeds = seeds;
  cluster_options.cluster_secret = absl::GetFlag(FLAGS_cluster_secret);
  cluster_options.replicas = absl::GetFlag(FLAGS_replicas);
  cluster_options.write_quorum = absl::GetFlag(FLAGS_w);
  cluster_options.read_quorum = absl::GetFlag(FLAGS_r);
  cluster_options.write_wait = absl::Milliseconds(absl::GetFlag(FLAGS_write_wait_ms));
  cluster_options.gossip_interval = absl::Milliseconds(absl::GetFlag(FLAGS_gossip_interval_ms));
  cluster_options.dead_after = absl::Milliseconds(absl::GetFlag(FLAGS_dead_after_ms));
  // A ping waits at most one interval (and at least 100 ms) for its answer.
  cluster_options.ping_timeout =
      std::max(absl::Milliseconds(100), cluster_options.gossip_interval);
  cluster_options.allow_fault_injection = absl::GetFlag(FLAGS_fault_injection);
  cluster_options.require_secret = auth_on || !IsLoopback(host);
  cluster_options.auth_on = auth_on;
  cluster_options.max_frame_bytes = service_config.limits.max_frame_bytes;
  // The member list is kept in the engine itself, under a node-local key,
  // so a restart knows its cluster (docs/cluster.md, "Restarts") and the
  // list goes wherever the data goes.
  cluster_options.load_membership = [engine_ptr = engine->get()]() -> absl::StatusOr<std::string> {
    absl::StatusOr<engine::Record> kept = engine_ptr->Get(kClusterMembersKey);
    if (!kept.ok()) return kept.status();
    return std::move(kept->value);
  };
  cluster_options.save_membership = [engine_ptr = engine->get()](const std::string& state) {
    return engine_ptr->Put(kClusterMembersKey, state).status();
  };
  cluster::ClusterNode cluster_node(cluster_options);
  engine::Engine* const engine_ptr = engine->get();
  namespace p = ::logkv::protocol;
  // Peers' operations on this node's engine.
  cluster_node.AddPeerOperationHandler(
      p::Operation::Replicate,
      [engine_ptr, fsync_always = service_config.fsync_always](
          const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
          absl::FunctionRef<Service::Completion()> defer) {
        return cluster::HandleReplicate(engine_ptr, fsync_always, request, builder, defer);
      });
  cluster_node.AddPeerOperationHandler(
      p::Operation::ReadRecords,
      [engine_ptr](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
                   absl::FunctionRef<Service::Completion()>) {
        return cluster::HandleReadRecords(engine_ptr, request, builder);
      });
  cluster_node.AddPeerOperationHandler(
      p::Operation::MerkleHashes,
      [engine_ptr](const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
                   absl::FunctionRef<Service::Completion()>) {
        cluster::HandleMerkleHashes(engine_ptr, request, builder);
        return Service::Outcome::kAnswered;
      });
  cluster_node.AddPeerOperationHandler(
      p::Operation::MerkleLeaf,
      [engine_ptr, max_frame_bytes = service_config.limits.max_frame_bytes](
          const p::Request& request, flatbuffers::FlatBufferBuilder* builder,
          absl::FunctionRef<Service::Completion()>) {
        // Leaf key lists go out in pages of at most 1 MiB (half the frame
        // size given): gossip and replication share the peer connection and
        // must not queue behind one huge answer.
        cluster::HandleMerkleLeaf(engine_ptr, request, std::min<uint32_t>(max_frame_bytes, 2u << 20),
                                  builder);
        return Service::Outcome::kAnswered;
      });

  // Writes for owners that cannot be reached wait here, in the engine's log.
  cluster::HintedHandoff handoff(engine_ptr, {}, &metrics);
  if (absl::Status status = handoff.Load(); !status.ok()) {
    (void)(*engine)->Close();
    return Fail(status);
  }
  auto ring_of = [&cluster_node]() -> std::shared_ptr<const cluster::Ring> {
    return cluster_node.membership() != nullptr ? cluster_node.membership()->ring() : nullptr;
  };
  auto lookup = [&cluster_node](const std::string& node_id, cluster::PeerInfo* info) {
    cluster::Member member;
    if (cluster_node.membership() == nullptr ||
        !cluster_node.membership()->Find(node_id, &member)) {
      return false;
    }
    info->address = member.address;
    info->http_address = member.http_address;
    info->alive = member.state == cluster::MemberState::kAlive ||
                  member.state == cluster::MemberState::kSuspect;
    return true;
  };
  cluster::ReplicaCoordinatorOptions coordinator_options;
  coordinator_options.replicas = static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_replicas)));
  coordinator_options.write_acks = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_w)));
  coordinator_options.read_acks = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_r)));
  coordinator_options.write_wait = cluster_options.write_wait;
  coordinator_options.max_frame_bytes = service_config.limits.max_frame_bytes;
  // Seed 001's write wait: an owner that is down (maybe restarting) is asked
  // again until the write has its acknowledgements or --write-wait-ms ends.
  coordinator_options.run_after = [transport = cluster_node.transport()](
                                      absl::Duration delay, std::function<void()> task) {
    return transport->RunAfter(delay, std::move(task));
  };
  cluster::ReplicaCoordinator coordinator(engine_ptr, cluster_node.transport(), ring_of, lookup,
                                          cluster_options.node_id, &metrics, &handoff,
                                          coordinator_options);
  service.set_coordinator(&coordinator);
  coordinator.set_view_confirmed([&cluster_node] {
    const cluster::Membership* membership = cluster_node.membership();
    return membership != nullptr && membership->ViewConfirmed();
  });

  // Failed logins per account and client address (POST /login).
  auth::LoginThrottle login_throttle;
  http::Router router;
  http::DataRoutesConfig routes_config;
  routes_config.node_id = service_config.node_id;
  if (!http_addresses.empty()) {
    const HttpAddress& first = http_addresses.front();
    routes_config.node_url = absl::StrCat(
        "http://", first.host == "0.0.0.0" ? "127.0.0.1" : first.host, ":", first.port);
  }
  routes_config.mode = service_config.read_only ? "read-only" : "normal";
  routes_config.max_document_bytes = absl::GetFlag(FLAGS_max_document_bytes);
  routes_config.cluster_secret = cluster_options.cluster_secret;
  routes_config.operator_secret = absl::GetFlag(FLAGS_cluster_secret);
  routes_config.max_json_depth = max_json_depth;
  http::DataRoutesDependencies routes_dependencies;
  routes_dependencies.service = &service;
  routes_dependencies.auth_store = auth_store.get();
  routes_dependencies.rate_limiter = rate_limiter.get();
  routes_dependencies.metrics = &metrics;
  routes_dependencies.cluster = &cluster_node;
  routes_dependencies.coordinator = &coordinator;
  http::DataRoutes data_routes(routes_config, routes_dependencies);
  data_routes.AddTo(&router);
  if (auth_on) {
    http::AccountRoutesOptions account_options;
    account_options.login_throttle = &login_throttle;
    account_options.on_auth_failure = [&metrics] { metrics.auth_failures()->Inc(); };
    account_options.on_throttled = [&metrics] { metrics.rate_limited()->Inc(); };
    account_options.max_json_depth = max_json_depth;
    http::AddAccountRoutes(&router, auth_store.get(), password_workers.get(),
                           std::move(account_options));
  } else {
    auto accounts_off = [](http::HttpRequest&, http::Responder responder) {
      responder.Send(http::HttpResponse::Error(
          404, "accounts are off on this node: start logkvd with --auth=on"));
    };
    for (const char* pattern : {"/signup", "/login", "/refresh", "/apikeys"}) {
      router.Add(http::Method::kPost, pattern, accounts_off);
    }
    router.Add(http::Method::kGet, "/apikeys", accounts_off);
  }
  // One metrics handle per route, found by the route's index at answer time.
  std::vector<HttpRouteMetrics*> route_metrics;
  for (const auto& route : router.routes()) {
    route_metrics.push_back(metrics.HttpRoute(route->pattern, http::MethodName(route->method)));
  }
  HttpRouteMetrics* unrouted_metrics = metrics.HttpRoute("unmatched", "ANY");

  ServerConfig server_config;
  server_config.host = host;
  server_config.port = port;
  const int threads = absl::GetFlag(FLAGS_threads);
  server_config.threads =
      threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  server_config.http_addresses = http_addresses;
  server_config.router = &router;
  server_config.http_limits.max_header_bytes = absl::GetFlag(FLAGS_http_max_header_bytes);
  server_config.http_idle_timeout =
      absl::Milliseconds(std::max<int64_t>(100, absl::GetFlag(FLAGS_http_idle_timeout_ms)));
  server_config.binary_idle_timeout =
      absl::Milliseconds(std::max<int64_t>(100, absl::GetFlag(FLAGS_binary_idle_timeout_ms)));
  server_config.max_buffered_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_buffered_bytes));
  server_config.max_watches_per_connection =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_watches_per_connection));
  server_config.max_watches_per_user =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_watches_per_user));
  // A body carries a value, base64 or JSON around it: room for base64's 4/3.
  server_config.http_limits.max_body_bytes =
      static_cast<size_t>(options.max_value_bytes) / 3 * 4 + (64u << 10);
  server_config.http_observer = [&route_metrics, unrouted_metrics](
                                    const http::Route* route, int status, int64_t duration_ns) {
    HttpRouteMetrics* handle =
        route == nullptr ? unrouted_metrics : route_metrics[route->metrics_index];
    handle->Record(status, static_cast<double>(duration_ns) * 1e-9);
  };
  // One metrics handle per binary-protocol operation, found by its enum
  // value at answer time: no lock and no look-up per request.
  std::vector<ProtocolOperationMetrics*> operation_metrics(
      static_cast<size_t>(p::Operation::MAX) + 1);
  for (p::Operation operation : p::EnumValuesOperation()) {
    operation_metrics[static_cast<size_t>(operation)] =
        metrics.ProtocolOperation(p::EnumNameOperation(operation));
  }
  server_config.protocol_observer = [&operation_metrics](p::Operation operation,
                                                         absl::StatusCode status,
                                                         int64_t duration_ns) {
    const auto index = static_cast<size_t>(operation);
    if (index >= operation_metrics.size() || operation_metrics[index] == nullptr) return;
    operation_metrics[index]->Record(static_cast<int>(status),
                                     static_cast<double>(duration_ns) * 1e-9);
  };
  // Both protocols admit requests through the same Admission (API key to
  // session, recheck, the per-user rate limit).
  if (admission) {
    server_config.authenticate = [admission = admission.get()](absl::string_view token) {
      return admission->Authenticate(token);
    };
    server_config.check_session = [admission = admission.get()](Session* session) {
      return admission->Recheck(session);
    };
    if (rate_limiter) {
      server_config.admit_request = [admission = admission.get()](const Session& session) {
        return admission->Admit(session.user_id);
      };
    }
  }
  server_config.peer_handler = &cluster_node;
  // Peer requests made while a loop handles a turn go out together: the
  // coordinator's Replicate and ReadRecords of a turn as one request per
  // peer and kind, and all of them to the transport with one wake-up of its
  // thread. The transport's own loop batches what its callbacks send.
  cluster::ReplicaBatcher* batcher = coordinator.batcher();
  server_config.loop_started = [&cluster_node, batcher] {
    batcher->HoldOnThisThread();
    cluster_node.transport()->HoldSendsOnThisThread();
  };
  server_config.loop_turn = [&cluster_node, batcher] {
    batcher->Flush();
    cluster_node.transport()->FlushHeldSends();
  };
  server_config.loop_ending = [&cluster_node, batcher] {
    batcher->StopHoldingOnThisThread();
    cluster_node.transport()->StopHoldingOnThisThread();
  };
  cluster_node.transport()->SetLoopHooks({[batcher] { batcher->HoldOnThisThread(); },
                                          [batcher] { batcher->Flush(); },
                                          [batcher] { batcher->StopHoldingOnThisThread(); }});
  Server server(&service, server_config);
  if (absl::Status status = server.Start(); !status.ok()) {
    (void)(*engine)->Close();
    return Fail(status);
  }
  server_for_events.store(&server, std::memory_order_release);
  if (!http_addresses.empty() && http_addresses.front().port == 0) {
    // The kernel chose the port: the node's URL (/servers, primary_node) names it.
    const HttpAddress& first = http_addresses.front();
    data_routes.SetNodeUrl(absl::StrCat("http://",
                                        first.host == "0.0.0.0" ? "127.0.0.1" : first.host, ":",
                                        server.http_ports().front()));
  }
  {
    // The advertised addresses: the flags, else the bound ones (a wildcard
    // host is advertised as loopback; peers elsewhere need --advertise).
    std::string advertise = advertise_flag;
    if (advertise.empty()) {
      if (host == "0.0.0.0") {
        Log(Level::kWarning,
            "listening on 0.0.0.0 without --advertise: advertising 127.0.0.1, which only "
            "peers on this machine can reach");
      }
      advertise = absl::StrCat(host == "0.0.0.0" ? "127.0.0.1" : host, ":", server.port());
    }
    std::string http_advertise = absl::GetFlag(FLAGS_http_advertise);
    if (http_advertise.empty() && !http_addresses.empty()) {
      const HttpAddress& first = http_addresses.front();
      http_advertise = absl::StrCat(first.host == "0.0.0.0" ? "127.0.0.1" : first.host, ":",
                                    server.http_ports().front());
    }
    cluster_node.SetAdvertise(advertise, http_advertise);
    coordinator.set_self_node_id(cluster_node.node_id());
    service.SetNodeId(cluster_node.node_id());
    if (absl::Status status = cluster_node.Start(); !status.ok()) {
      server.RequestShutdown();
      server.Wait();
      (void)(*engine)->Close();
      return Fail(status);
    }
  }
  if (!seeds.empty()) {
    // Until the first gossip answer this node's ring holds only itself, and
    // it would serve alone what belongs to the cluster: wait (bounded) for
    // the cluster before announcing the node ready.
    const absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (cluster_node.membership()->Members().size() < 2 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (cluster_node.membership()->Members().size() < 2) {
      Log(Level::kWarning, "no seed answered within 5 s: serving alone until one does");
    }
  }
  handoff.Start(
      [&cluster_node](const std::string& target, std::string frame, absl::Duration timeout,
                      std::function<void(absl::StatusOr<std::string>)> done) {
        cluster::Member member;
        if (!cluster_node.membership()->Find(target, &member)) {
          done(absl::UnavailableError(absl::StrCat("unknown member ", target)));
          return;
        }
        cluster_node.transport()->Send(member.address, std::move(frame), timeout,
                                       std::move(done));
      },
      [&cluster_node](const std::string& target) {
        cluster::Member member;
        if (!cluster_node.membership()->Find(target, &member)) {
          return cluster::TargetState::kUnreachable;
        }
        if (member.state == cluster::MemberState::kLeft) return cluster::TargetState::kGone;
        return member.state == cluster::MemberState::kAlive ? cluster::TargetState::kAlive
                                                            : cluster::TargetState::kUnreachable;
      });
  auto live_members = [&cluster_node] { return cluster_node.membership()->LiveMembers(); };
  cluster::AntiEntropyOptions anti_entropy_options;
  anti_entropy_options.replicas = coordinator_options.replicas;
  anti_entropy_options.max_frame_bytes = service_config.limits.max_frame_bytes;
  anti_entropy_options.interval =
      absl::Milliseconds(std::max<int64_t>(100, absl::GetFlag(FLAGS_anti_entropy_interval_ms)));
  anti_entropy_options.bytes_per_second = absl::GetFlag(FLAGS_anti_entropy_bytes_per_second);
  // Every node runs rounds, so each pulls what it lacks; pushing as well
  // would send a wiped node its data once per peer.
  anti_entropy_options.push = false;
  cluster::AntiEntropy anti_entropy(
      engine_ptr, cluster::SendThrough(cluster_node.transport()), ring_of,
      live_members,
      cluster_node.node_id(), &metrics, anti_entropy_options);
  cluster::PurgerOptions purger_options;
  purger_options.replicas = coordinator_options.replicas;
  purger_options.interval =
      absl::Milliseconds(std::max<int64_t>(100, absl::GetFlag(FLAGS_purge_interval_ms)));
  purger_options.ring_stable_for =
      absl::Milliseconds(std::max<int64_t>(0, absl::GetFlag(FLAGS_purge_ring_stable_ms)));
  purger_options.tombstone_grace = absl::Milliseconds(options.tombstone_grace_ms);
  purger_options.peers_expected = !cluster_options.seeds.empty();
  cluster::Purger purger(engine_ptr, cluster::SendThrough(cluster_node.transport()), ring_of,
                         live_members,
                         cluster_node.node_id(), &metrics, purger_options);
  cluster_node.membership()->OnChange([&anti_entropy, &purger] {
    anti_entropy.NotifyRingChanged();
    purger.NotifyRingChanged();
  });
  coordinator.set_caught_up([&anti_entropy] { return anti_entropy.caught_up(); });
  service.SetMembersSource([&cluster_node] {
    std::vector<std::pair<std::string, std::string>> members;
    if (cluster_node.LiveMemberCount() < 2) return members;  // a single node: nothing to route
    for (const cluster::Member& member : cluster_node.membership()->LiveMembers()) {
      members.emplace_back(member.node_id, member.address);
    }
    return members;
  });
  data_routes.SetSyncing([&anti_entropy, &cluster_node] {
    return cluster_node.LiveMemberCount() > 1 && !anti_entropy.caught_up();
  });
  // Blocking work asked for over HTTP (a leave's hand-off, the lookup of a
  // join target named by its URL) runs on threads of its own, never on a
  // loop; they are joined at shutdown.
  absl::Mutex background_mu;
  std::vector<std::thread> background_threads;
  auto run_in_background = [&background_mu, &background_threads](std::function<void()> work) {
    absl::MutexLock lock(&background_mu);
    background_threads.emplace_back(std::move(work));
  };
  data_routes.SetBackground(run_in_background);
  // A graceful leave first pushes what only this node may hold to the
  // owners that remain (bounded).
  data_routes.SetHandOff([&](std::function<void(absl::Status)> then) {
    run_in_background([&anti_entropy, then = std::move(then)] {
      absl::Status status = anti_entropy.HandOff(absl::Now() + absl::Seconds(30));
      if (!status.ok()) Log(Level::kWarning, "hand-off before leaving: %s", status.message());
      then(std::move(status));
    });
  });
  if (absl::Status status = anti_entropy.Start(); !status.ok()) {
    Log(Level::kError, "anti-entropy did not start: %s", status.message());
  }
  if (absl::Status status = purger.Start(); !status.ok()) {
    Log(Level::kError, "the purger did not start: %s", status.message());
  }
  // Always printed, whatever --log_level: scripts and tests wait for it.
  LogLine(Level::kInfo, absl::StrFormat("listening on %s:%d (binary protocol, %d threads)", host,
                                        server.port(), server_config.threads));
  for (size_t i = 0; i < http_addresses.size(); ++i) {
    LogLine(Level::kInfo, absl::StrFormat("listening on %s:%d (HTTP, auth %s)",
                                          http_addresses[i].host, server.http_ports()[i], auth));
  }

  // Last-use times of API keys are noted in memory and written in batches.
  absl::Notification stop_flusher;
  std::thread flusher;
  if (auth_store) {
    flusher = std::thread([&stop_flusher, store = auth_store.get()] {
      while (!stop_flusher.WaitForNotificationWithTimeout(absl::Seconds(5))) {
        if (absl::StatusOr<size_t> flushed = store->FlushLastUsed(); !flushed.ok()) {
          Log(Level::kWarning, "writing API key last-use times: %s", flushed.status().message());
        }
      }
    });
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  // A stop is a restart, not a leave: the node keeps its place in the ring
  // (its peers hold hints for it meanwhile). Leaving is asked for
  // explicitly (POST /members/leave).
  Log(Level::kInfo, "%s: finishing requests in flight, then stopping",
      signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  server.RequestShutdown();
  server.Wait();
  coordinator.set_caught_up(nullptr);
  coordinator.set_view_confirmed(nullptr);
  data_routes.SetHandOff(nullptr);
  data_routes.SetBackground(nullptr);
  data_routes.SetSyncing(nullptr);
  service.SetMembersSource(nullptr);
  {
    absl::MutexLock lock(&background_mu);
    for (std::thread& thread : background_threads) thread.join();
  }
  purger.Stop();
  anti_entropy.Stop();
  handoff.Stop();
  cluster_node.Stop();
  server_for_events.store(nullptr, std::memory_order_release);
  password_workers.reset();
  if (flusher.joinable()) {
    stop_flusher.Notify();
    flusher.join();
  }
  if (auth_store) {
    if (absl::StatusOr<size_t> flushed = auth_store->FlushLastUsed(); !flushed.ok()) {
      Log(Level::kWarning, "writing API key last-use times: %s", flushed.status().message());
    }
  }
  if (absl::Status status = (*engine)->Close(); !status.ok()) return Fail(status);
  Log(Level::kInfo, "stopped cleanly");
  return 0;
}

}  // namespace
}  // namespace logkv::server

int main(int argc, char** argv) { return logkv::server::Main(argc, argv); }
