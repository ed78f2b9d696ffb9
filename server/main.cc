// logkvd: the logkv server. A setting comes from, lowest first: the flag's
// default, the config file (--config=FILE, TOML, server/config_file.h), a
// LOGKV_<NAME> environment variable, the command line. Dashed spellings such
// as --data-dir are accepted for every flag. The node itself is a Node
// (server/node.h); what is the process's, not the node's, stays here:
// settings, the log level, the mutex deadlock mode, the signals (SIGHUP
// reloads the config file) and systemd's notifications.
#include <mimalloc.h>
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "protocol/version.h"
#include "server/backup/backup_manager.h"
#include "server/config_file.h"
#include "server/http/json_body.h"
#include "server/log.h"
#include "server/node.h"
#include "server/sigpipe.h"

ABSL_FLAG(std::string, data_dir, "./data", "Data directory (created if missing).");
ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "Binary protocol address, host:port.");
ABSL_FLAG(std::string, node_id, "",
          "This node's id (default: the --listen address as given; with --advertise, or a "
          "--listen port of 0, the id the data directory keeps, else the advertised address). "
          "A data directory keeps the id of its first start and refuses another.");
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
ABSL_FLAG(std::string, compression, "none",
          "none | zstd. zstd stores each value of at least --compression_min_bytes "
          "compressed when that saves at least an eighth of it; reads always return the plain "
          "value, so the setting may change between runs. Off by default: logkvd releases "
          "without compression cannot read compressed records (docs/format.md).");
ABSL_FLAG(int, compression_level, 3, "zstd level for --compression=zstd, 1 (fastest) to 19.");
ABSL_FLAG(uint32_t, compression_min_bytes, 128,
          "Values shorter than this are never compressed (--compression=zstd).");
ABSL_FLAG(int, maintenance_nice, 10,
          "Added to the nice value of the engine's maintenance thread (compaction, the TTL "
          "sweep, hint files), 0 to 19: with every core busy, the threads that answer requests "
          "get the larger share and shorter waits. 0 runs it at logkvd's priority.");
ABSL_FLAG(uint32_t, max_key_bytes, 4096, "Largest key accepted.");
ABSL_FLAG(uint32_t, max_value_bytes, 16u << 20, "Largest value accepted.");
ABSL_FLAG(uint32_t, max_frame_bytes, 64u << 20, "Largest protocol frame accepted.");
ABSL_FLAG(uint32_t, max_batch_items, 10000, "Most operations in one Batch.");
ABSL_FLAG(std::string, http, "127.0.0.1:8080",
          "HTTP (REST) addresses, comma-separated host:port list; empty: no HTTP.");
ABSL_FLAG(std::string, http_allowed_hosts, "",
          "Host names HTTP requests may give beside addresses, localhost and the node's own "
          "(--http, --advertise, --http_advertise), comma-separated, without ports; their pages "
          "may also write (Origin). When set, other names are refused (403). Unset: other names "
          "are refused on a node without authenticated clients (a site made to resolve to this "
          "machine cannot read it through a browser), served otherwise.");
ABSL_FLAG(uint32_t, versions, 3,
          "Versions of each key kept readable (GET /get/{key}?version=N, GetVersion).");
ABSL_FLAG(uint64_t, index_snapshot_min_entries, 100000,
          "A clean stop, and a running shard's checkpoint, write the shard's index to its "
          "directory when it holds at least this many entries, and a start loads it instead of "
          "reading the hint files of the segments before it; 0: always; 18446744073709551615: "
          "never.");
ABSL_FLAG(double, checkpoint_ratio, 0.5,
          "A running shard writes its index to its directory (a checkpoint, while writes go on) "
          "once the writes since the last one reach this fraction of its index entries "
          "(tombstones included), and it holds at least --index_snapshot_min_entries: a start "
          "after a crash loads it and reads only the segments written since. 0: never.");
ABSL_FLAG(int64_t, checkpoint_stale_interval_ms, 60000,
          "When a compaction rewrote a segment the last checkpoint describes (a start would "
          "refuse it), the next comes once this long has passed since the last and an eighth "
          "of --checkpoint_ratio's writes have come. 0: only by --checkpoint_ratio.");
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
          "Requests per minute per user with --auth=on (token bucket); 0 turns it off. SIGHUP "
          "applies a new value from the config file.");
ABSL_FLAG(int64_t, rate_limit_burst, 10,
          "Token bucket size of --rate_limit. SIGHUP applies a new value from the config file.");
ABSL_FLAG(int64_t, account_rate_limit, 20,
          "Token refreshes (POST /refresh) and key creations (POST /apikeys) per minute per "
          "user with --auth=on (token bucket, on each node, apart from --rate_limit's); 0 "
          "turns it off.");
ABSL_FLAG(int64_t, account_rate_limit_burst, 20, "Token bucket size of --account_rate_limit.");
ABSL_FLAG(int64_t, signup_rate_limit, 1,
          "Sign-ups (POST /signup) per minute per client address with --auth=on (token "
          "bucket, on each node); 0 turns it off.");
ABSL_FLAG(int64_t, signup_rate_limit_burst, 20, "Token bucket size of --signup_rate_limit.");
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
          "Allow listening on a non-loopback address without TLS (--tls-cert) or without "
          "authenticated clients (--auth=on or --tls-client-auth=require).");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate (then its chain) for TLS on the binary port and HTTPS on every --http "
          "address; empty: plaintext. SIGHUP reads it (and --tls-key, --tls-ca, --tls-crl) "
          "again.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA certificates that client certificates must chain to (--tls-client-auth).");
ABSL_FLAG(std::string, tls_crl, "",
          "PEM certificate revocation lists of --tls-ca's CAs: a client certificate they revoke "
          "is refused (tools/make-certs.sh DIR revoke NAME makes one).");
ABSL_FLAG(std::string, tls_client_auth, "none",
          "none | optional | require: whether clients must show a certificate of --tls-ca. "
          "optional checks one that is shown.");
ABSL_FLAG(std::string, tls_min_version, "1.3", "1.3 | 1.2: the oldest TLS version accepted.");
ABSL_FLAG(std::string, tls_ciphersuites,
          std::string(logkv::server::net::kDefaultCiphersuites),
          "TLS 1.3 suites in the server's order of preference, OpenSSL's names separated by "
          "':' (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256).");
ABSL_FLAG(std::string, peer_tls_cert, "",
          "PEM certificate this node shows to its peers (node-to-node mutual TLS); default: "
          "--tls-cert. Its subjectAltName must carry the host of --advertise.");
ABSL_FLAG(std::string, peer_tls_key, "", "PEM private key of --peer-tls-cert.");
ABSL_FLAG(std::string, peer_tls_ca, "",
          "PEM cluster CA: peers' certificates must chain to it, both ways (a ClusterHello "
          "without one is refused); default for dialling: --tls-ca.");
ABSL_FLAG(std::string, peer_tls_crl, "",
          "PEM certificate revocation lists of --peer-tls-ca: a peer certificate they revoke is "
          "refused on every node-to-node link (the data plane's and the control plane's). "
          "SIGHUP reads it again, with the other --peer-tls-* files.");
ABSL_FLAG(std::string, log_level, "info",
          "debug | info | warning | error. SIGHUP applies a new value from the config file.");
ABSL_FLAG(std::string, log_format, "text",
          "text | json. json: one JSON object per line (ts, level, logger, msg and the line's "
          "fields), for log collectors.");
ABSL_FLAG(absl::Duration, slow_request_threshold, absl::ZeroDuration(),
          "Log every request answered after at least this long (such as 100ms), with its "
          "operation, key or path, duration and status, as a warning; 0 = off.");
ABSL_FLAG(std::string, config, "",
          "TOML file of settings: its keys are these flags' names (data-dir = \"/var/lib/logkv\"), "
          "and the environment and the command line override it. SIGHUP reads it again and "
          "applies what can change at run time (--log-level, --rate-limit, --rate-limit-burst).");
ABSL_FLAG(bool, print_config, false,
          "Print the settings in effect (defaults, config file, environment, flags) as a config "
          "file, each with where it came from, check them as a start does before it opens "
          "anything, and exit (1 with the error when those checks refuse them).");
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
ABSL_FLAG(int32_t, control_port, 0,
          "Port of the control plane's Raft transport (on the --listen host). 0: chosen at the "
          "node's first start and kept in the data directory (the cluster knows the node by it)");
ABSL_FLAG(int32_t, control_voters, 3,
          "Members that vote in the control plane (1, 3 or 5); the others receive its log as "
          "standbys");
ABSL_FLAG(bool, replace, false,
          "This node lost its data and takes the place of the member of its --node-id (the "
          "same ring position; anti-entropy refills it). Without it, a node that finds its "
          "node id taken does not start.");
ABSL_FLAG(int64_t, join_timeout_ms, 60'000,
          "How long a new node tries to join through --seeds before it gives up and exits");
ABSL_FLAG(std::string, backup_dir, "",
          "Directory for backups (POST /api/backup, --backup-schedule); empty: backups off.");
ABSL_FLAG(std::string, backup_schedule, "",
          "When to take backups, in cron syntax (5 fields: minute hour day-of-month month "
          "day-of-week, UTC), e.g. \"0 3 * * *\"; empty: only on request.");
ABSL_FLAG(uint64_t, backup_retention, 0,
          "How many of the newest backups to keep in --backup-dir; 0 = all.");
ABSL_FLAG(uint64_t, backup_rate_limit, 32ull << 20,
          "Bytes per second a backup reads and writes at most, so that requests keep their "
          "latency; 0 = unlimited.");
ABSL_FLAG(std::string, backup_format, "archive",
          "archive (NAME.tar.zst) | directory (NAME/, the files as they are).");
ABSL_FLAG(bool, backup_hard_links, false,
          "With --backup-format=directory: hard-link sealed log segments into the backup "
          "instead of copying them (same file system only; the backup then shares their "
          "blocks with the data).");
ABSL_FLAG(uint64_t, audit_retention, 100000,
          "Audit log entries this node keeps in its file (the oldest are dropped, the chain "
          "anchored at the last one dropped); 0 = all.");
ABSL_FLAG(int64_t, audit_retention_hours, 0,
          "Audit log entries older than this (before the newest entry) are dropped; 0 = no "
          "limit by age.");
ABSL_FLAG(std::string, audit_prefix, "",
          "Data writes to keys with one of these prefixes (comma-separated, as stored in the "
          "engine: with --auth=on a tenant's keys are \\0t<user id>/...) are recorded in the "
          "audit log.");
ABSL_FLAG(std::string, consensus_prefix, "",
          "Keys whose name (a tenant's key, after its namespace) starts with one of these "
          "prefixes (comma-separated, C escapes allowed) are consensus keys: every operation "
          "on them goes through the control plane's Raft log, so compare-and-set (If-Match, "
          "if_version) on them is linearizable with --replicas > 1. Committed by a new "
          "cluster's first node; fixed for the cluster's life.");
ABSL_FLAG(std::string, admins, "",
          "Usernames (comma-separated) this node makes administrators, through the control "
          "plane, once each exists (at start, or when it signs up); needs --auth=on. Only "
          "grants: the administrators are the union over every node's flag.");
ABSL_FLAG(bool, fault_injection, false,
          "Tests only: enables POST /internal/fault to drop traffic to chosen peers. Refused "
          "unless logkvd was built with -DLOGKV_FAULT_INJECTION=ON.");

namespace logkv::server {
namespace {

// logkvd --help: its own flags, grouped, each with its default and meaning
// (Abseil's --help would list Abseil's own flags, or none). --helpfull still
// lists everything.
struct FlagGroup {
  const char* title;
  std::vector<const char*> names;
};
const std::vector<FlagGroup>& FlagGroups() {
  static const auto* groups = new std::vector<FlagGroup>{
      {"Storage",
       {"data_dir", "fsync", "fsync_interval_ms", "shards", "segment_bytes", "versions",
        "tombstone_grace_ms", "repair", "compression", "compression_level",
        "compression_min_bytes", "maintenance_nice", "index_snapshot_min_entries",
        "checkpoint_ratio", "checkpoint_stale_interval_ms"}},
      {"Network",
       {"listen", "http", "http_allowed_hosts", "threads", "advertise", "http_advertise",
        "insecure",
        "http_idle_timeout_ms", "binary_idle_timeout_ms"}},
      {"TLS",
       {"tls_cert", "tls_key", "tls_ca", "tls_crl", "tls_client_auth", "tls_min_version",
        "tls_ciphersuites", "peer_tls_cert", "peer_tls_key", "peer_tls_ca", "peer_tls_crl"}},
      {"Limits",
       {"max_key_bytes", "max_value_bytes", "max_frame_bytes", "max_batch_items",
        "max_document_bytes", "max_json_depth", "http_max_header_bytes", "max_buffered_bytes",
        "max_watches_per_connection", "max_watches_per_user"}},
      {"Accounts and access",
       {"auth", "jwt_secret", "jwt_expiration", "rate_limit", "rate_limit_burst",
        "account_rate_limit", "account_rate_limit_burst", "signup_rate_limit",
        "signup_rate_limit_burst", "read_only",
        "admins", "audit_retention", "audit_retention_hours", "audit_prefix"}},
      {"Cluster",
       {"node_id", "seeds", "cluster_secret", "replicas", "w", "r", "write_wait_ms",
        "gossip_interval_ms", "dead_after_ms", "anti_entropy_interval_ms",
        "anti_entropy_bytes_per_second", "purge_interval_ms", "purge_ring_stable_ms",
        "control_port", "control_voters", "join_timeout_ms", "replace", "consensus_prefix"}},
      {"Backups",
       {"backup_dir", "backup_schedule", "backup_retention", "backup_rate_limit",
        "backup_format", "backup_hard_links"}},
      {"Operation",
       {"config", "print_config", "log_level", "log_format", "slow_request_threshold",
        "fault_injection"}},
  };
  return *groups;
}

void PrintHelp() {
  std::string out =
      "usage: logkvd [flags]\n"
      "\n"
      "Each setting comes from, lowest first: its default, the config file (--config=FILE,\n"
      "TOML, keys named as the flags: data-dir = \"/var/lib/logkv\"), a LOGKV_<NAME>\n"
      "environment variable (LOGKV_DATA_DIR), the command line (--data-dir or --data_dir).\n"
      "SIGHUP reads the config file again and applies --log-level, --rate-limit and\n"
      "--rate-limit-burst; other changes are logged as needing a restart. It also reads\n"
      "the TLS certificate, key, CA and CRL files again, the peer links' (--peer-tls-*)\n"
      "too (new connections use them, open ones are kept).\n";
  std::vector<std::string> listed;
  auto print = [&out, &listed](const char* name) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) return;
    listed.emplace_back(name);
    std::string dashed(name);
    std::replace(dashed.begin(), dashed.end(), '_', '-');
    absl::StrAppend(&out, "  --", dashed, "  (default: ",
                    flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue(), ")\n      ",
                    flag->Help(), "\n");
  };
  for (const FlagGroup& group : FlagGroups()) {
    absl::StrAppend(&out, "\n", group.title, ":\n");
    for (const char* name : group.names) print(name);
  }
  // A flag of logkvd's in no group still shows (and the help test fails).
  bool other = false;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!absl::EndsWith(flag->Filename(), "server/main.cc")) continue;
    if (std::find(listed.begin(), listed.end(), name) != listed.end()) continue;
    if (!other) absl::StrAppend(&out, "\nOther:\n");
    other = true;
    print(flag->Name().data());
  }
  absl::StrAppend(&out, "\n  --version  print the version and exit\n");
  std::fputs(out.c_str(), stdout);
}

// Where the value of a setting in effect came from.
enum class Source { kDefault, kFile, kEnvironment, kCommandLine };

const char* SourceName(Source source) {
  switch (source) {
    case Source::kDefault:
      return "default";
    case Source::kFile:
      return "config file";
    case Source::kEnvironment:
      return "environment";
    case Source::kCommandLine:
      return "command line";
  }
  return "?";
}

std::string Dashed(absl::string_view name) {
  std::string dashed(name);
  std::replace(dashed.begin(), dashed.end(), '_', '-');
  return dashed;
}

// The arguments for Abseil's parser, and where each setting given came from.
struct Arguments {
  std::vector<std::string> args;
  absl::flat_hash_map<std::string, Source> sources;  // flags given by environment or command line
};

// Rewrites --data-dir=x to --data_dir=x, and puts LOGKV_* values of flags not
// on the command line in front of it (so the command line wins).
Arguments NormalizeArguments(int argc, char** argv) {
  Arguments result;
  std::vector<std::string>& args = result.args;
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
  // Every flag --help lists may also come from LOGKV_<NAME>, but for
  // --print-config: a variable left in a service's environment would make
  // every start print and exit.
  for (const FlagGroup& group : FlagGroups()) {
    for (const char* name : group.names) {
      if (std::find(given.begin(), given.end(), name) != given.end()) {
        result.sources[name] = Source::kCommandLine;
        continue;
      }
      if (std::string(name) == "print_config") continue;
      const std::string variable = absl::StrCat("LOGKV_", absl::AsciiStrToUpper(name));
      const char* value = std::getenv(variable.c_str());
      // The seed's own variables for the session tokens.
      if (value == nullptr && std::string(name) == "jwt_secret") value = std::getenv("JWT_SECRET");
      if (value == nullptr && std::string(name) == "jwt_expiration") {
        value = std::getenv("JWT_EXPIRATION");
      }
      if (value == nullptr) continue;
      result.sources[name] = Source::kEnvironment;
      args.push_back(absl::StrCat("--", name, "=", value));
    }
  }
  args.insert(args.end(), rest.begin(), rest.end());
  return result;
}

// What a config file may set: every flag --help lists but --config and
// --print-config, with the type of its value.
std::optional<SettingType> FlagSettingType(absl::string_view name) {
  if (name == "config" || name == "print_config") return std::nullopt;
  bool listed = false;
  for (const FlagGroup& group : FlagGroups()) {
    for (const char* listed_name : group.names) listed = listed || name == listed_name;
  }
  if (!listed) return std::nullopt;
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr) return std::nullopt;
  if (flag->IsOfType<std::string>()) {
    return name == "http" || name == "seeds" ? SettingType::kList : SettingType::kString;
  }
  if (flag->IsOfType<bool>()) return SettingType::kBool;
  if (flag->IsOfType<int>()) return SettingType::kInt32;
  if (flag->IsOfType<int64_t>()) return SettingType::kInt64;
  if (flag->IsOfType<uint32_t>()) return SettingType::kUint32;
  if (flag->IsOfType<uint64_t>()) return SettingType::kUint64;
  if (flag->IsOfType<double>()) return SettingType::kDouble;
  return std::nullopt;
}

// Settings whose value a reload (SIGHUP) applies to the running node.
bool Reloadable(absl::string_view name) {
  return name == "log_level" || name == "rate_limit" || name == "rate_limit_burst" ||
         name == "backup_schedule" || name == "backup_retention" || name == "backup_rate_limit";
}

bool Secret(absl::string_view name) { return name == "jwt_secret" || name == "cluster_secret"; }

// The process's settings: the config file's path, where each setting came
// from and the value in effect (as flag text), for --print-config and reloads.
struct Settings {
  std::string config_path;
  absl::flat_hash_map<std::string, Source> sources;
  absl::flat_hash_map<std::string, std::string> in_effect;

  Source SourceOf(const std::string& name) const {
    auto it = sources.find(name);
    return it == sources.end() ? Source::kDefault : it->second;
  }
};

// Applies the config file to the flags not set by the environment or the
// command line (those were parsed already, and win).
absl::Status ApplyConfigFile(Settings* settings) {
  absl::StatusOr<std::vector<ConfigSetting>> file =
      ReadConfigFile(settings->config_path, FlagSettingType);
  if (!file.ok()) return file.status();
  for (const ConfigSetting& setting : *file) {
    if (settings->SourceOf(setting.name) != Source::kDefault) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(setting.name);
    std::string error;
    if (flag == nullptr || !flag->ParseFrom(setting.value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(settings->config_path, ":", setting.line,
                                                     ": ", Dashed(setting.name), ": ", error));
    }
    settings->sources[setting.name] = Source::kFile;
  }
  return absl::OkStatus();
}

// Every setting a file may hold, in --help's order.
std::vector<std::string> SettingNames() {
  std::vector<std::string> names;
  for (const FlagGroup& group : FlagGroups()) {
    for (const char* name : group.names) {
      if (FlagSettingType(name).has_value()) names.emplace_back(name);
    }
  }
  return names;
}

// --print-config: a config file of the settings in effect. Secrets are not
// printed, only whether they are set.
void PrintConfig(const Settings& settings) {
  std::string out = "# logkvd settings in effect; after each, where it came from.\n";
  for (const FlagGroup& group : FlagGroups()) {
    absl::StrAppend(&out, "\n# ", group.title, "\n");
    for (const char* name : group.names) {
      std::optional<SettingType> type = FlagSettingType(name);
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      if (!type.has_value() || flag == nullptr) continue;
      const char* source = SourceName(settings.SourceOf(name));
      const std::string value = flag->CurrentValue();
      if (Secret(name) && !value.empty()) {
        absl::StrAppend(&out, "# ", Dashed(name), " = (hidden)  # ", source, "\n");
        continue;
      }
      absl::StrAppend(&out, Dashed(name), " = ", TomlValue(*type, value), "  # ", source, "\n");
    }
  }
  std::fputs(out.c_str(), stdout);
}

// SIGHUP: reads the config file again, applies the changes that can be made
// at run time and logs those that need a restart. A file that does not read
// or check changes nothing.
void Reload(Settings* settings, Node* node) {
  if (settings->config_path.empty()) {
    LogLine(Level::kInfo, "SIGHUP: no --config file: nothing to reload");
    return;
  }
  absl::StatusOr<std::vector<ConfigSetting>> file =
      ReadConfigFile(settings->config_path, FlagSettingType);
  if (!file.ok()) {
    Log(Level::kError, "SIGHUP: %s; the settings in effect are kept", file.status().message());
    return;
  }
  absl::flat_hash_map<std::string, std::string> from_file;
  for (const ConfigSetting& setting : *file) from_file[setting.name] = setting.value;

  std::vector<std::pair<std::string, std::string>> reloads;  // name, new value
  std::vector<std::string> restart;
  std::vector<std::string> overridden;
  for (const std::string& name : SettingNames()) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    const std::string& current = settings->in_effect[name];
    auto in_file = from_file.find(name);
    const Source source = settings->SourceOf(name);
    if (source == Source::kEnvironment || source == Source::kCommandLine) {
      if (in_file != from_file.end() && in_file->second != current) {
        overridden.push_back(absl::StrCat(Dashed(name), " (", SourceName(source), ")"));
      }
      continue;
    }
    const std::string wanted = in_file != from_file.end() ? in_file->second : flag->DefaultValue();
    if (wanted == current) continue;
    if (Reloadable(name)) {
      reloads.emplace_back(name, wanted);
    } else {
      restart.push_back(Secret(name) ? Dashed(name)
                                     : absl::StrCat(Dashed(name), " (", current, " -> ", wanted,
                                                    ")"));
    }
  }

  // The new values, checked together before any is applied.
  std::string log_level = settings->in_effect["log_level"];
  int64_t rate_limit = 0;
  int64_t rate_limit_burst = 0;
  std::string rate_limit_text = settings->in_effect["rate_limit"];
  std::string rate_limit_burst_text = settings->in_effect["rate_limit_burst"];
  for (const auto& [name, value] : reloads) {
    if (name == "log_level") log_level = value;
    if (name == "rate_limit") rate_limit_text = value;
    if (name == "rate_limit_burst") rate_limit_burst_text = value;
  }
  std::string backup_schedule = settings->in_effect["backup_schedule"];
  std::string backup_retention_text = settings->in_effect["backup_retention"];
  std::string backup_rate_text = settings->in_effect["backup_rate_limit"];
  bool backup_changed = false;
  for (const auto& [name, value] : reloads) {
    if (name == "backup_schedule") backup_schedule = value;
    if (name == "backup_retention") backup_retention_text = value;
    if (name == "backup_rate_limit") backup_rate_text = value;
    backup_changed = backup_changed || absl::StartsWith(name, "backup_");
  }
  uint64_t backup_retention = 0;
  uint64_t backup_rate = 0;
  if (!absl::SimpleAtoi(backup_retention_text, &backup_retention) ||
      !absl::SimpleAtoi(backup_rate_text, &backup_rate)) {
    Log(Level::kError,
        "SIGHUP: %s: backup-retention and backup-rate-limit must be integers; the settings in "
        "effect are kept",
        settings->config_path);
    return;
  }
  Level level;
  if (!ParseLogLevel(log_level, &level)) {
    Log(Level::kError,
        "SIGHUP: %s: log-level must be debug, info, warning or error, not '%s'; the settings in "
        "effect are kept",
        settings->config_path, log_level);
    return;
  }
  if (!absl::SimpleAtoi(rate_limit_text, &rate_limit) ||
      !absl::SimpleAtoi(rate_limit_burst_text, &rate_limit_burst)) {
    Log(Level::kError, "SIGHUP: %s: rate-limit and rate-limit-burst must be integers",
        settings->config_path);
    return;
  }

  // The backup settings first: a schedule that does not parse changes
  // nothing at all.
  if (backup_changed) {
    backup::BackupManager* backups = node->backup_manager();
    absl::Status status =
        backups == nullptr
            ? absl::FailedPreconditionError("backups are not running")
            : backups->Reconfigure(backup_schedule, static_cast<size_t>(backup_retention),
                                   backup_rate);
    if (!status.ok()) {
      Log(Level::kError, "SIGHUP: %s: %s; the settings in effect are kept",
          settings->config_path, status.message());
      return;
    }
  }
  std::vector<std::string> applied;
  bool rate_changed = false;
  for (const auto& [name, value] : reloads) {
    applied.push_back(
        absl::StrCat(Dashed(name), " ", settings->in_effect[name], " -> ", value));
    rate_changed = rate_changed || absl::StartsWith(name, "rate_limit");
    settings->in_effect[name] = value;
    settings->sources[name] = from_file.contains(name) ? Source::kFile : Source::kDefault;
    std::string error;
    absl::FindCommandLineFlag(name)->ParseFrom(value, &error);
  }
  SetLogLevel(level);
  std::string rate_note;
  if (rate_changed) {
    if (absl::Status status = node->SetRateLimit(rate_limit, rate_limit_burst); !status.ok()) {
      rate_note = absl::StrCat(" (not in force: ", status.message(), ")");
    }
  }
  // Written whatever the log level, as the one record of what changed.
  LogLine(Level::kInfo,
          absl::StrCat("SIGHUP: reloaded ", settings->config_path, ": ",
                       applied.empty() ? "nothing that can change at run time changed"
                                       : absl::StrJoin(applied, ", "),
                       rate_note));
  if (!restart.empty()) {
    LogLine(Level::kWarning, absl::StrCat("SIGHUP: changed in ", settings->config_path,
                                          " but applied only by a restart: ",
                                          absl::StrJoin(restart, ", ")));
  }
  if (!overridden.empty()) {
    LogLine(Level::kInfo,
            absl::StrCat("SIGHUP: the file's value is not used, the setting being given "
                         "elsewhere: ",
                         absl::StrJoin(overridden, ", ")));
  }
}

int Fail(const absl::Status& status) {
  Log(Level::kError, "%s", status.message());
  return 1;
}

// The flags as a node's options. Only what cannot be held in a typed
// setting is checked here (addresses, names, durations that do not parse);
// NodeOptions::Validate checks the rest.
absl::StatusOr<NodeOptions> OptionsFromFlags() {
  NodeOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  const std::string listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<HostPort> listen_address = ParseHostPort(listen);
  if (!listen_address.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen: ", listen_address.status().message()));
  }
  options.listen = *std::move(listen_address);
  absl::StatusOr<AuthMode> auth = ParseAuthMode(absl::GetFlag(FLAGS_auth));
  if (!auth.ok()) return auth.status();
  options.auth = *auth;
  options.http.clear();
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_http), ',', absl::SkipWhitespace())) {
    absl::StatusOr<HostPort> address = ParseHostPort(absl::StripAsciiWhitespace(part));
    if (!address.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--http: ", address.status().message()));
    }
    options.http.push_back(*std::move(address));
  }
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_http_allowed_hosts), ',',
                                               absl::SkipWhitespace())) {
    name = absl::StripAsciiWhitespace(name);
    // A name as Host gives it, without its port: "kv.example.com".
    if (name.find_first_of(":/[] ") != absl::string_view::npos || absl::EndsWith(name, ".")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--http_allowed_hosts: '", name, "' is not a host name (give names such as "
          "kv.example.com, without a port, a scheme or a trailing dot; addresses need no "
          "listing)"));
    }
    options.http_allowed_hosts.push_back(absl::AsciiStrToLower(name));
  }
  const std::string jwt_expiration = absl::GetFlag(FLAGS_jwt_expiration);
  if (!absl::ParseDuration(jwt_expiration, &options.jwt_expiration) ||
      options.jwt_expiration < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--jwt_expiration '", jwt_expiration,
                     "' is not a duration of at least one second (such as 1h or 30m)"));
  }
  absl::StatusOr<engine::FsyncPolicy> fsync = ParseFsyncPolicy(absl::GetFlag(FLAGS_fsync));
  if (!fsync.ok()) return fsync.status();
  options.fsync = *fsync;
  absl::StatusOr<engine::Compression> compression =
      ParseCompression(absl::GetFlag(FLAGS_compression));
  if (!compression.ok()) return compression.status();
  options.compression = *compression;
  options.compression_level = absl::GetFlag(FLAGS_compression_level);
  options.compression_min_bytes = absl::GetFlag(FLAGS_compression_min_bytes);
  options.maintenance_nice = absl::GetFlag(FLAGS_maintenance_nice);

  options.node_id = absl::GetFlag(FLAGS_node_id);
  options.advertise = absl::GetFlag(FLAGS_advertise);
  if (options.node_id.empty() && options.advertise.empty() && options.listen.port != 0) {
    // The default id is --listen as spelled ("localhost:7070" stays so),
    // not the address it was parsed into.
    options.node_id = listen;
  }
  options.http_advertise = absl::GetFlag(FLAGS_http_advertise);
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_seeds), ',', absl::SkipWhitespace())) {
    options.seeds.emplace_back(absl::StripAsciiWhitespace(part));
  }
  options.cluster_secret = absl::GetFlag(FLAGS_cluster_secret);
  options.fsync_interval = absl::Milliseconds(absl::GetFlag(FLAGS_fsync_interval_ms));
  options.threads = absl::GetFlag(FLAGS_threads);
  options.shards = absl::GetFlag(FLAGS_shards);
  options.segment_bytes = absl::GetFlag(FLAGS_segment_bytes);
  options.versions = absl::GetFlag(FLAGS_versions);
  options.repair = absl::GetFlag(FLAGS_repair);
  options.index_snapshot_min_entries = absl::GetFlag(FLAGS_index_snapshot_min_entries);
  options.checkpoint_ratio = absl::GetFlag(FLAGS_checkpoint_ratio);
  options.checkpoint_stale_interval = absl::Milliseconds(
      absl::GetFlag(FLAGS_checkpoint_stale_interval_ms));
  options.tombstone_grace = absl::Milliseconds(absl::GetFlag(FLAGS_tombstone_grace_ms));
  options.max_key_bytes = absl::GetFlag(FLAGS_max_key_bytes);
  options.max_value_bytes = absl::GetFlag(FLAGS_max_value_bytes);
  options.max_frame_bytes = absl::GetFlag(FLAGS_max_frame_bytes);
  options.max_batch_items = absl::GetFlag(FLAGS_max_batch_items);
  options.max_document_bytes = absl::GetFlag(FLAGS_max_document_bytes);
  options.max_json_depth = absl::GetFlag(FLAGS_max_json_depth);
  options.http_max_header_bytes = absl::GetFlag(FLAGS_http_max_header_bytes);
  options.max_buffered_bytes = absl::GetFlag(FLAGS_max_buffered_bytes);
  options.max_watches_per_connection = absl::GetFlag(FLAGS_max_watches_per_connection);
  options.max_watches_per_user = absl::GetFlag(FLAGS_max_watches_per_user);
  options.http_idle_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_http_idle_timeout_ms));
  options.binary_idle_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_binary_idle_timeout_ms));
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.tls.crl_file = absl::GetFlag(FLAGS_tls_crl);
  absl::StatusOr<net::ClientAuth> client_auth =
      net::ParseClientAuth(absl::GetFlag(FLAGS_tls_client_auth));
  if (!client_auth.ok()) return client_auth.status();
  options.tls.client_auth = *client_auth;
  const std::string tls_min_version = absl::GetFlag(FLAGS_tls_min_version);
  if (tls_min_version != "1.3" && tls_min_version != "1.2") {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-min-version must be 1.3 or 1.2, not '", tls_min_version, "'"));
  }
  options.tls.allow_tls12 = tls_min_version == "1.2";
  options.tls.ciphersuites = absl::GetFlag(FLAGS_tls_ciphersuites);
  options.peer_tls_cert = absl::GetFlag(FLAGS_peer_tls_cert);
  options.peer_tls_key = absl::GetFlag(FLAGS_peer_tls_key);
  options.peer_tls_ca = absl::GetFlag(FLAGS_peer_tls_ca);
  options.peer_tls_crl = absl::GetFlag(FLAGS_peer_tls_crl);
  options.read_only = absl::GetFlag(FLAGS_read_only);
  options.jwt_secret = absl::GetFlag(FLAGS_jwt_secret);
  options.rate_limit = absl::GetFlag(FLAGS_rate_limit);
  options.rate_limit_burst = absl::GetFlag(FLAGS_rate_limit_burst);
  options.account_rate_limit = absl::GetFlag(FLAGS_account_rate_limit);
  options.account_rate_limit_burst = absl::GetFlag(FLAGS_account_rate_limit_burst);
  options.signup_rate_limit = absl::GetFlag(FLAGS_signup_rate_limit);
  options.signup_rate_limit_burst = absl::GetFlag(FLAGS_signup_rate_limit_burst);
  options.replicas = absl::GetFlag(FLAGS_replicas);
  options.write_quorum = absl::GetFlag(FLAGS_w);
  options.read_quorum = absl::GetFlag(FLAGS_r);
  options.write_wait = absl::Milliseconds(absl::GetFlag(FLAGS_write_wait_ms));
  options.gossip_interval = absl::Milliseconds(absl::GetFlag(FLAGS_gossip_interval_ms));
  options.dead_after = absl::Milliseconds(absl::GetFlag(FLAGS_dead_after_ms));
  options.anti_entropy_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_anti_entropy_interval_ms));
  options.anti_entropy_bytes_per_second = absl::GetFlag(FLAGS_anti_entropy_bytes_per_second);
  options.purge_interval = absl::Milliseconds(absl::GetFlag(FLAGS_purge_interval_ms));
  options.purge_ring_stable = absl::Milliseconds(absl::GetFlag(FLAGS_purge_ring_stable_ms));
  options.fault_injection = absl::GetFlag(FLAGS_fault_injection);
  options.control_port = absl::GetFlag(FLAGS_control_port);
  options.control_voters = absl::GetFlag(FLAGS_control_voters);
  options.join_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_join_timeout_ms));
  options.replace = absl::GetFlag(FLAGS_replace);
  options.slow_request_threshold = absl::GetFlag(FLAGS_slow_request_threshold);
  if (options.slow_request_threshold < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--slow_request_threshold must not be negative");
  }
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_admins), ',', absl::SkipWhitespace())) {
    options.admins.emplace_back(absl::StripAsciiWhitespace(name));
  }
  options.audit_retention = static_cast<size_t>(absl::GetFlag(FLAGS_audit_retention));
  options.audit_retention_age = absl::Hours(absl::GetFlag(FLAGS_audit_retention_hours));
  for (absl::string_view prefix :
       absl::StrSplit(absl::GetFlag(FLAGS_audit_prefix), ',', absl::SkipEmpty())) {
    // C escapes allowed: --audit-prefix='\0t1/' names user 1's keys.
    std::string unescaped;
    if (!absl::CUnescape(prefix, &unescaped)) unescaped = std::string(prefix);
    options.audit_prefixes.push_back(std::move(unescaped));
  }
  for (absl::string_view prefix :
       absl::StrSplit(absl::GetFlag(FLAGS_consensus_prefix), ',', absl::SkipEmpty())) {
    std::string unescaped;
    if (!absl::CUnescape(prefix, &unescaped)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--consensus_prefix: \"", prefix, "\" is not a valid C-escaped string"));
    }
    options.consensus_prefixes.push_back(std::move(unescaped));
  }
  options.backup_dir = absl::GetFlag(FLAGS_backup_dir);
  options.backup_schedule = absl::GetFlag(FLAGS_backup_schedule);
  options.backup_retention = absl::GetFlag(FLAGS_backup_retention);
  options.backup_rate_limit = absl::GetFlag(FLAGS_backup_rate_limit);
  options.backup_format = absl::GetFlag(FLAGS_backup_format);
  options.backup_hard_links = absl::GetFlag(FLAGS_backup_hard_links);
  return options;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("logkvd --data_dir=DIR --listen=127.0.0.1:7070 [flags]");
  // --version names this build (Abseil's default would call every build a
  // debug one: Debian builds Abseil without NDEBUG).
  absl::FlagsUsageConfig usage;
  usage.version_string = [] {
    return absl::StrCat("logkvd ", BuildVersion(), " (", BuildType(), " build)\n");
  };
  absl::SetFlagsUsageConfig(usage);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "-help") {
      PrintHelp();
      return 0;
    }
  }
  Arguments arguments = NormalizeArguments(argc, argv);
  std::vector<char*> pointers;
  for (std::string& arg : arguments.args) pointers.push_back(arg.data());
  absl::ParseCommandLine(static_cast<int>(pointers.size()), pointers.data());

  // The config file fills in what the environment and the command line did not set.
  Settings settings;
  settings.sources = std::move(arguments.sources);
  settings.config_path = absl::GetFlag(FLAGS_config);
  if (!settings.config_path.empty()) {
    if (absl::Status status = ApplyConfigFile(&settings); !status.ok()) {
      // One line per problem, so each names its file, line and key.
      for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
        Log(Level::kError, "%s", line);
      }
      return 1;
    }
  }
  for (const std::string& name : SettingNames()) {
    settings.in_effect[name] = absl::FindCommandLineFlag(name)->CurrentValue();
  }
  // --print-config prints the settings, then checks them as a start does
  // before it opens anything (exit 1 with the error when those checks
  // refuse them).
  const bool print_config = absl::GetFlag(FLAGS_print_config);
  if (print_config) {
    PrintConfig(settings);
    std::fflush(stdout);  // before any error, which goes to stderr unbuffered
  }

  // Debian's Abseil is built without NDEBUG, which leaves per-acquisition
  // deadlock detection on (a global lock): a server cannot pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  Level level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    return Fail(absl::InvalidArgumentError("--log_level must be debug, info, warning or error"));
  }
  SetLogLevel(level);
  LogFormat format;
  if (!ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    return Fail(absl::InvalidArgumentError("--log_format must be text or json"));
  }
  SetLogFormat(format);

  absl::StatusOr<NodeOptions> options = OptionsFromFlags();
  if (!options.ok()) return Fail(options.status());
  if (absl::Status status = options->Validate(); !status.ok()) return Fail(status);
  if (print_config) return 0;

  // Signals are taken by this thread with sigwait (no handler runs, so
  // nothing needs to be async-signal-safe); every other thread (engine,
  // loops) inherits the blocked mask. SIGPIPE is ignored: a closed socket is
  // an error return, not a death.
  IgnoreSigpipeUnlessHandled();
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Log(Level::kInfo, "logkvd with mimalloc %d", mi_version());
  if (!settings.config_path.empty()) Log(Level::kInfo, "config file %s", settings.config_path);
  Node node(*std::move(options));
  // Start and Stop log their failures themselves.
  if (!node.Start().ok()) return 1;

  // systemd (Type=notify): ready once the ports are bound. Without
  // NOTIFY_SOCKET in the environment sd_notify does nothing.
  sd_notifyf(0, "READY=1\nSTATUS=serving, protocol port %d", node.port());
  // With WatchdogSec= in the unit, logkvd says it is alive every half
  // period, when every network loop has answered within a quarter of it;
  // a process stuck past the period is restarted.
  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0;
  int signal_number = 0;
  while (true) {
    if (watchdog) {
      const uint64_t half = watchdog_usec / 2;
      const timespec period = {static_cast<time_t>(half / 1'000'000),
                               static_cast<long>(half % 1'000'000 * 1000)};
      signal_number = sigtimedwait(&signals, nullptr, &period);
      if (signal_number < 0) {
        if (errno != EAGAIN) continue;
        if (node.Responsive(absl::Microseconds(half / 2))) {
          sd_notify(0, "WATCHDOG=1");
        } else {
          Log(Level::kWarning, "watchdog: a network loop did not answer within %s",
              absl::FormatDuration(absl::Microseconds(half / 2)));
        }
        continue;
      }
    } else if (sigwait(&signals, &signal_number) != 0) {
      continue;
    }
    if (signal_number != SIGHUP) break;
    sd_notify(0, "RELOADING=1");
    // The certificates first, with or without a config file: renewed files
    // take effect for new connections; open ones keep theirs.
    if (absl::Status tls = node.ReloadTls(); !tls.ok()) {
      Log(Level::kError, "SIGHUP: TLS: %s; the certificate in use is kept", tls.message());
    } else if (node.options().tls.enabled()) {
      const NodeOptions& o = node.options();
      std::string peers;
      if (!o.peer_tls_ca.empty()) {
        peers = absl::StrCat(
            "; peer links from ", o.peer_tls_cert.empty() ? o.tls.cert_file : o.peer_tls_cert,
            ", CA ", o.peer_tls_ca, o.peer_tls_crl.empty() ? "" : ", CRL ", o.peer_tls_crl);
      }
      LogLine(Level::kInfo,
              absl::StrCat("SIGHUP: TLS certificate reloaded from ", o.tls.cert_file, peers));
    }
    Reload(&settings, &node);
    sd_notify(0, "READY=1");
  }
  sd_notify(0, "STOPPING=1");
  Log(Level::kInfo, "%s: finishing requests in flight, then stopping",
      signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  return node.Stop().ok() ? 0 : 1;
}

}  // namespace
}  // namespace logkv::server

int main(int argc, char** argv) { return logkv::server::Main(argc, argv); }
