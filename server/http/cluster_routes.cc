#include "server/http/cluster_routes.h"

#include <sodium.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "protocol/frame.h"
#include "protocol/version.h"
#include "server/cluster/cluster_node.h"
#include "server/cluster/peer_transport.h"
#include "server/cluster/ring.h"
#include "server/http/http_fetch.h"

namespace logkv::server::http {

using nlohmann::json;
namespace p = ::logkv::protocol;

namespace {

// A server's name as ?server= may give it, compared without the scheme of a
// URL, a trailing '/', ASCII case and with localhost as 127.0.0.1:
// "http://127.0.0.1:8080/" and "127.0.0.1:8080" name the same server.
std::string ServerName(absl::string_view name) {
  name = absl::StripAsciiWhitespace(name);
  for (absl::string_view scheme : {"http://", "https://"}) {
    if (name.size() > scheme.size() && absl::EqualsIgnoreCase(name.substr(0, scheme.size()), scheme)) {
      name.remove_prefix(scheme.size());
      break;
    }
  }
  while (absl::ConsumeSuffix(&name, "/")) {
  }
  std::string normal = absl::AsciiStrToLower(name);
  if (absl::StartsWith(normal, "localhost:")) normal.replace(0, 9, "127.0.0.1");
  return normal;
}

std::vector<cluster::Member> MembersOf(cluster::ClusterNode* node) {
  const cluster::Membership* membership = node->membership();
  return membership == nullptr ? std::vector<cluster::Member>{} : membership->Members();
}

// Members other than node that own keys (not Left).
size_t OtherOwners(cluster::ClusterNode* node) {
  size_t others = 0;
  for (const cluster::Member& member : MembersOf(node)) {
    if (member.node_id != node->node_id() && member.state != cluster::MemberState::kLeft) {
      ++others;
    }
  }
  return others;
}

// The members of a cluster as /nodes and POST /join list them.
json NodesJson(const std::vector<cluster::Member>& members, const std::string& self_id) {
  json nodes = json::array();
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  for (const cluster::Member& member : members) {
    const int64_t last_seen = member.node_id == self_id ? now_ms : member.last_seen_unix_ms;
    nodes.push_back({{"id", member.node_id},
                     {"address", member.address},
                     {"http_address", member.http_address},
                     {"alive", member.state == cluster::MemberState::kAlive},
                     {"state", cluster::MemberStateName(member.state)},
                     {"incarnation", member.incarnation},
                     {"last_seen", last_seen > 0 ? json(Rfc3339(last_seen)) : json(nullptr)}});
  }
  return nodes;
}

// A join target from a request body: host:port of a member's binary
// protocol, or the URL of its HTTP API (http://host:port, seed 001's form,
// or https://host:port). Quotes and whitespace around it are ignored.
struct JoinTarget {
  std::string address;  // host:port
  bool http = false;    // a URL: address is the member's HTTP address
  bool https = false;   // an https:// URL
};

absl::StatusOr<JoinTarget> ParseJoinTarget(absl::string_view text, bool https_allowed) {
  text = absl::StripAsciiWhitespace(text);
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
    text = absl::StripAsciiWhitespace(text.substr(1, text.size() - 2));
  }
  JoinTarget target;
  if (!https_allowed && absl::StartsWith(text, "https://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "': this node runs without TLS (--tls-cert), so it cannot reach the members "
        "of a cluster that serves HTTPS; name a member's http:// URL or its binary-protocol "
        "address, host:port"));
  }
  if (absl::ConsumePrefix(&text, "https://")) {
    target.http = true;
    target.https = true;
    text = text.substr(0, text.find('/'));
  } else if (absl::ConsumePrefix(&text, "http://")) {
    target.http = true;
    text = text.substr(0, text.find('/'));
  }
  const size_t colon = text.rfind(':');
  int port = 0;
  if (text.empty() || colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(text.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not host:port: name a member's binary-protocol address "
        "(its --listen / --advertise address, e.g. 127.0.0.1:7070) or its HTTP URL "
        "(http://127.0.0.1:8080, or https://)"));
  }
  std::string host(text.substr(0, colon));
  if (host == "localhost") host = "127.0.0.1";
  target.address = absl::StrCat(host, ":", port);
  return target;
}

// The binary-protocol address of the member whose HTTP API is at
// http_address, asked of that member (GET /nodes; over HTTPS with
// fetch.tls). Blocks.
absl::StatusOr<std::string> BinaryAddressOf(const std::string& http_address,
                                            FetchRequest fetch) {
  const size_t colon = http_address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(http_address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("'", http_address, "' is not host:port"));
  }
  fetch.target = "/nodes";
  fetch.headers.emplace_back("Accept", "application/json");
  fetch.timeout = absl::Seconds(3);
  absl::StatusOr<FetchedResponse> answer = HttpFetch(http_address.substr(0, colon), port, fetch);
  if (!answer.ok()) return answer.status();
  const json nodes = json::parse(answer->body, nullptr, false);
  if (answer->status != 200 || !nodes.is_array()) {
    const bool https_port = absl::StrContains(answer->body, "speaks HTTPS");
    return absl::UnavailableError(absl::StrCat(
        fetch.tls ? "https://" : "http://", http_address, "/nodes answered ", answer->status,
        https_port ? ": the port speaks HTTPS, name it by an https:// URL"
                   : " without a member list: is it a logkv node?"));
  }
  std::string any;
  for (const json& node : nodes) {
    if (!node.is_object() || !node.contains("address") || !node["address"].is_string()) continue;
    const std::string address = node["address"].get<std::string>();
    if (node.value("http_address", "") == http_address) return address;
    if (any.empty() && node.value("alive", false)) any = address;
  }
  // The member answered for others only (it names itself by another host):
  // any live member of its cluster will do.
  if (!any.empty()) return any;
  return absl::UnavailableError(absl::StrCat(fetch.tls ? "https://" : "http://", http_address,
                                             "/nodes names no live member to join through"));
}

}  // namespace

ClusterRoutes::ClusterRoutes(const ClusterRoutesConfig& config,
                             const ClusterRoutesDependencies& dependencies)
    : config_(config), deps_(dependencies), joined_unix_ms_(absl::ToUnixMillis(absl::Now())) {
  if (sodium_init() < 0) std::abort();
}

std::string ClusterRoutes::NodeId() const {
  // The cluster's id is final once it runs (with --listen port 0 it names
  // the bound port, which the configured id could not).
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    return deps_.cluster->node_id();
  }
  return config_.node_id;
}

bool ClusterRoutes::AuthorizeAdmin(const HttpRequest& request, HttpResponse* refusal,
                                   absl::string_view asked, absl::string_view may) {
  std::optional<absl::string_view> secret = request.Header("x-cluster-secret");
  std::optional<absl::string_view> key = request.Header("x-api-key");
  const std::string& expected = config_.cluster_secret;
  if (secret && !secret->empty()) {
    // Constant time in the secret's contents; the length is not a secret.
    if (!expected.empty() && secret->size() == expected.size() &&
        sodium_memcmp(secret->data(), expected.data(), expected.size()) == 0) {
      return true;
    }
    deps_.auth.metrics->auth_failures()->Inc();
    *refusal = HttpResponse::Error(403, "X-Cluster-Secret does not match this node's cluster secret");
    return false;
  }
  if (!deps_.auth.on()) {
    if (expected.empty()) return true;
    *refusal = HttpResponse::Error(
        401, absl::StrCat(asked, " needs the cluster secret (X-Cluster-Secret header)"));
    return false;
  }
  if (!key || key->empty()) {
    *refusal = HttpResponse::Error(
        401, absl::StrCat(asked, " needs the administrator's X-API-Key or the cluster secret "
                                 "(X-Cluster-Secret)"));
    return false;
  }
  absl::StatusOr<Session> session = AuthenticateKey(deps_.auth, request);
  if (!session.ok()) {
    *refusal = HttpResponse::Error(401, session.status().message());
    return false;
  }
  if (!deps_.auth.admission->IsAdmin(session->user_id) || !session->context.may_write) {
    *refusal = HttpResponse::Error(
        403, absl::StrCat("only an administrator (the first account, or one made so) may ", may));
    return false;
  }
  return true;
}

void ClusterRoutes::SetBackground(BackgroundFunction background) {
  absl::MutexLock lock(&hooks_mu_);
  background_ = std::move(background);
}

void ClusterRoutes::SetSyncing(std::function<bool()> syncing) {
  absl::MutexLock lock(&hooks_mu_);
  syncing_ = std::move(syncing);
}

void ClusterRoutes::SetHandOff(HandOffFunction hand_off) {
  absl::MutexLock lock(&hooks_mu_);
  hand_off_ = std::move(hand_off);
}

void ClusterRoutes::SetRemoveMember(RemoveMemberFunction remove) {
  absl::MutexLock lock(&hooks_mu_);
  remove_member_ = std::move(remove);
}

// ---- Health and statistics -----------------------------------------------------------

void ClusterRoutes::SetControlStatus(std::function<json()> status) {
  absl::MutexLock lock(&hooks_mu_);
  control_status_ = std::move(status);
}

json ClusterRoutes::ControlStatus() {
  std::function<json()> status;
  {
    absl::MutexLock lock(&hooks_mu_);
    status = control_status_;
  }
  return status ? status() : json(nullptr);
}

void ClusterRoutes::Health(HttpRequest&, Responder responder) {
  if (deps_.cluster != nullptr) {
    bool started;
    {
      absl::MutexLock lock(&hooks_mu_);
      started = static_cast<bool>(control_status_);
    }
    if (!started) {
      // Ports are open before the node is a member of its cluster (a node
      // joining waits for its activation): not ready yet.
      HttpResponse starting = HttpResponse::Json(
          503, Dump(json{{"status", "starting"}, {"version", BuildVersion()}, {"node_id", NodeId()}}));
      starting.headers.emplace_back("Retry-After", "1");
      return responder.Send(std::move(starting));
    }
  }
  std::string mode = config_.mode;
  {
    absl::MutexLock lock(&hooks_mu_);
    if (mode == "normal" && syncing_ && syncing_()) mode = "syncing";
  }
  // Degraded: this node serves reads but refuses writes (its disk is full,
  // or a failed sync); the reason says which. Still 200, since reads work.
  const absl::Status writes = deps_.service->engine()->WriteHealth();
  json body = {{"status", writes.ok() ? "healthy" : "degraded"},
               {"version", BuildVersion()},
               {"node_id", NodeId()},
               {"mode", mode},
               {"member_count", deps_.cluster == nullptr
                                    ? size_t{1}
                                    : deps_.cluster->LiveMemberCount()},
               {"uptime_ms", absl::ToUnixMillis(absl::Now()) -
                                 deps_.service->counters()->start_unix_ms}};
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    // Whether a majority of the members confirmed this node's view: until
    // then it refuses strong operations (docs/cluster.md, "Restarts").
    body["view_confirmed"] = deps_.cluster->membership()->ViewConfirmed();
  }
  if (json control = ControlStatus(); control.is_object()) {
    control.erase("members");
    // Until it caught up with the control plane a node refuses strong
    // operations too (it may hold a stale configuration).
    if (control.value("caught_up", true) == false) body["view_confirmed"] = false;
    body["control"] = std::move(control);
  }
  if (!writes.ok()) {
    // Public: the reason in words, without the server's paths (the log has
    // the engine's message with its file).
    body["reason"] = engine::IsNoSpace(writes)
                         ? "disk full (No space left on device): writes are refused until "
                           "space is freed"
                         : "writes are refused after a failed sync, until the node restarts "
                           "(the server log has the details)";
  }
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

absl::StatusOr<ClusterRoutes::StatsCaller> ClusterRoutes::AuthorizeStats(
    const HttpRequest& request, HttpResponse* refusal) {
  if (!deps_.auth.on()) return StatsCaller{};
  if (std::optional<absl::string_view> authorization = request.Header("authorization")) {
    absl::string_view token = absl::StripAsciiWhitespace(*authorization);
    constexpr absl::string_view kScheme = "Bearer ";
    const bool bearer = token.size() > kScheme.size() &&
                        absl::EqualsIgnoreCase(token.substr(0, kScheme.size()), kScheme);
    token = absl::StripAsciiWhitespace(token.substr(bearer ? kScheme.size() : 0));
    const std::string& secret = config_.operator_secret;
    // Constant time in the secret's contents; its length is not a secret.
    if (bearer && !secret.empty() && token.size() == secret.size() &&
        sodium_memcmp(token.data(), secret.data(), secret.size()) == 0) {
      return StatsCaller{};
    }
    if (!request.Header("x-api-key")) {
      deps_.auth.metrics->auth_failures()->Inc();
      *refusal = HttpResponse::Error(401, "invalid operator credential");
      return absl::UnauthenticatedError("invalid operator credential");
    }
  }
  if (!request.Header("x-api-key")) {
    deps_.auth.metrics->auth_failures()->Inc();
    constexpr absl::string_view kWhy =
        "statistics need credentials on this node: X-API-Key for your own figures, or "
        "Authorization: Bearer <cluster secret> for the node's";
    *refusal = HttpResponse::Error(401, kWhy);
    return absl::UnauthenticatedError(kWhy);
  }
  absl::StatusOr<RequestContext> context = Authorize(deps_.auth, request, refusal);
  if (!context.ok()) return context.status();
  StatsCaller caller;
  caller.node_wide = false;
  caller.key_prefix = std::move(context->key_prefix);
  return caller;
}

void ClusterRoutes::MetricsRoute(HttpRequest& request, Responder responder) {
  HttpResponse refusal;
  absl::StatusOr<StatsCaller> caller = AuthorizeStats(request, &refusal);
  if (!caller.ok()) return responder.Send(std::move(refusal));
  if (!caller->node_wide) {
    // Every figure here is the node's; a tenant's own are in /db/stats.
    return responder.Send(HttpResponse::Error(
        403, "node metrics need the operator credential (Authorization: Bearer <cluster "
             "secret>); an API key sees its own figures in /db/stats and /cache/stats"));
  }
  std::optional<absl::string_view> accept = request.Header("accept");
  std::optional<std::string> format = request.QueryParam("format");
  const bool prometheus = (format && *format == "prometheus") ||
                          (accept && absl::StrContains(*accept, "text/plain"));
  if (prometheus) {
    HttpResponse answer;
    answer.content_type = kPrometheusContentType;
    answer.body = deps_.auth.metrics->RenderPrometheus();
    return responder.Send(std::move(answer));
  }
  responder.Send(HttpResponse::Json(200, Dump(NodeFigures())));
}

nlohmann::json ClusterRoutes::NodeFigures() const {
  const engine::Stats stats = deps_.service->engine()->GetStats();
  const ReplicatorFigures replicator = ReadReplicatorFigures(*deps_.auth.metrics);
  ServerCounters* counters = deps_.service->counters();
  return json{
      {"node_id", NodeId()},
      // The clients' keys: the server's own records (accounts, hints) are not counted.
      {"key_count", stats.client_keys},
      {"wal_size", stats.log_bytes},
      {"timestamp", absl::ToUnixMillis(absl::Now())},
      {"total_replications", replicator.total_replications},
      {"successful_replicas", replicator.successful_replicas},
      {"failed_replicas", replicator.failed_replicas},
      {"queue_size", replicator.queue_size},
      {"average_ack_time_ms", replicator.average_ack_time_ms},
      {"max_replication_lag_ms", replicator.max_replication_lag_ms},
      {"retries_in_progress", replicator.retries_in_progress},
      {"tombstones", stats.tombstones},
      {"segments", stats.segments},
      {"dead_bytes", stats.dead_bytes},
      {"index_bytes", stats.index_bytes + stats.key_bytes},
      {"puts", stats.puts},
      {"deletes", stats.deletes},
      {"gets", stats.gets},
      {"fsyncs", stats.fsyncs},
      {"compactions", stats.compactions},
      {"expired_swept", stats.expired_swept},
      {"unreadable_records_skipped", stats.unreadable_records_skipped},
      {"shards_refusing_writes", stats.shards_refusing_writes},
      {"connections", counters->connections.load()},
      {"requests", counters->requests.load()},
      {"uptime_ms", absl::ToUnixMillis(absl::Now()) - counters->start_unix_ms},
  };
}

// Seed 003's ?server= names the node whose figures are wanted, by any name
// /servers, /nodes or /members/ give it: a URL, an HTTP or binary host:port,
// or a node id. Another member's figures are its own to give: the answer is
// a redirect to the same route on that member.
std::optional<HttpResponse> ClusterRoutes::OtherServer(const HttpRequest& request) const {
  std::optional<std::string> server = request.QueryParam("server");
  if (!server || server->empty()) return std::nullopt;
  const std::string self_id = NodeId();
  const std::string node_url = deps_.node_url->Get();
  const std::string name = ServerName(*server);
  if (*server == self_id || name == ServerName(node_url)) return std::nullopt;
  std::vector<std::string> known = {node_url, self_id};
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    for (const cluster::Member& member : MembersOf(deps_.cluster)) {
      const bool named = *server == member.node_id || name == ServerName(member.address) ||
                         (!member.http_address.empty() && name == ServerName(member.http_address));
      if (named) {
        if (member.node_id == self_id) return std::nullopt;
        if (member.http_address.empty()) {
          return HttpResponse::Error(
              421, absl::StrCat("member '", member.node_id,
                                "' serves no HTTP address; ask it over the binary protocol at ",
                                member.address));
        }
        const std::string location =
            absl::StrCat("http://", member.http_address, request.path, "?", request.query);
        HttpResponse redirect = HttpResponse::Json(
            307, Dump({{"node_id", member.node_id}, {"location", location}}));
        redirect.headers.emplace_back("Location", location);
        return redirect;
      }
      if (!member.http_address.empty()) known.push_back(absl::StrCat("http://", member.http_address));
    }
  }
  return HttpResponse::Error(
      404, absl::StrCat("unknown server '", *server, "': name a member as /servers, /nodes or "
                        "/members/ list it (URL, host:port or node id), e.g. ",
                        absl::StrJoin(known, ", ")));
}

std::optional<ClusterRoutes::StatsCaller> ClusterRoutes::StatsRouteCaller(
    const HttpRequest& request, Responder& responder) {
  if (std::optional<HttpResponse> other = OtherServer(request)) {
    responder.Send(*std::move(other));
    return std::nullopt;
  }
  HttpResponse refusal;
  absl::StatusOr<StatsCaller> caller = AuthorizeStats(request, &refusal);
  if (!caller.ok()) {
    responder.Send(std::move(refusal));
    return std::nullopt;
  }
  return *std::move(caller);
}

void ClusterRoutes::CacheStats(HttpRequest& request, Responder responder) {
  std::optional<StatsCaller> caller = StatsRouteCaller(request, responder);
  if (!caller) return;
  // Values are read straight from the mapped log (the page cache is the
  // cache): there is no separate value cache to fill, so it is never full.
  engine::Engine* engine = deps_.service->engine();
  const uint64_t keys = caller->node_wide ? engine->GetStats().client_keys
                                          : engine->CountPrefix(caller->key_prefix).keys;
  json body = {{"size", keys}, {"max_size", 0}, {"is_full", false}};
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

void ClusterRoutes::DbStats(HttpRequest& request, Responder responder) {
  std::optional<StatsCaller> caller = StatsRouteCaller(request, responder);
  if (!caller) return;
  engine::Engine* engine = deps_.service->engine();
  json body;
  if (caller->node_wide) {
    // Counted from what the engine holds (so right after a restart), the
    // server's own records left out.
    const engine::Stats stats = engine->GetStats();
    body = {{"total_keys", stats.client_keys},
            {"total_versions", stats.client_versions},
            {"file_size", stats.log_bytes}};
  } else {
    // A tenant's share: its keys, their versions and the bytes of their records.
    const engine::Engine::PrefixStats own = engine->CountPrefix(caller->key_prefix);
    body = {{"total_keys", own.keys},
            {"total_versions", own.versions},
            {"file_size", own.record_bytes}};
  }
  responder.Send(HttpResponse::Json(200, Dump(body)));
}

// ---- The membership ------------------------------------------------------------------

void ClusterRoutes::Ping(HttpRequest&, Responder responder) {
  responder.Send(HttpResponse::Json(200, R"({"status":"ok"})"));
}

void ClusterRoutes::Nodes(HttpRequest&, Responder responder) {
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    json nodes = NodesJson(MembersOf(deps_.cluster), deps_.cluster->node_id());
    // With the committed view: each member's Raft role and committed state,
    // the leader, and this node's term, commit index and epoch.
    const json control = ControlStatus();
    if (control.is_object() && control.contains("members")) {
      for (json& node : nodes) {
        const std::string id = node.value("id", "");
        if (!control["members"].contains(id)) continue;
        const json& committed = control["members"][id];
        node["role"] = committed.value("role", "none");
        node["member_state"] = committed.value("state", "");
        node["leader"] = control.value("leader", "") == id;
        if (id == deps_.cluster->node_id()) {
          node["raft_term"] = control.value("term", uint64_t{0});
          node["commit_index"] = control.value("commit_index", uint64_t{0});
          node["applied_epoch"] = control.value("epoch", uint64_t{0});
        }
      }
    }
    return responder.Send(HttpResponse::Json(200, Dump(nodes)));
  }
  json node = {{"id", NodeId()},
               {"address", deps_.node_url->Get()},
               {"alive", true},
               {"last_seen", Rfc3339(absl::ToUnixMillis(absl::Now()))}};
  responder.Send(HttpResponse::Json(200, Dump(json::array({node}))));
}

void ClusterRoutes::Servers(HttpRequest&, Responder responder) {
  if (deps_.cluster == nullptr || deps_.cluster->membership() == nullptr) {
    return responder.Send(HttpResponse::Json(200, Dump(json::array({deps_.node_url->Get()}))));
  }
  // The members that serve: Alive or Suspect, with an HTTP address.
  json servers = json::array();
  for (const cluster::Member& member : MembersOf(deps_.cluster)) {
    if (member.http_address.empty()) continue;
    if (member.state != cluster::MemberState::kAlive &&
        member.state != cluster::MemberState::kSuspect) {
      continue;
    }
    servers.push_back(absl::StrCat("http://", member.http_address));
  }
  responder.Send(HttpResponse::Json(200, Dump(servers)));
}

// Seed 004's clients reach a member at its "address" over HTTP, so that is
// the HTTP host:port (null for a member without one); the binary protocol's
// is "binary_address".
void ClusterRoutes::Members(HttpRequest&, Responder responder) {
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    json members = json::array();
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    const json control = ControlStatus();
    for (const cluster::Member& member : MembersOf(deps_.cluster)) {
      if (member.state == cluster::MemberState::kLeft) continue;
      json entry = {
          {"id", member.node_id},
          {"address", member.http_address.empty() ? json(nullptr) : json(member.http_address)},
          {"binary_address", member.address},
          {"http_address", member.http_address},
          {"state", cluster::MemberStateName(member.state)},
          {"last_seen",
           member.node_id == deps_.cluster->node_id() ? now_ms : member.last_seen_unix_ms},
          {"joined_timestamp", member.joined_unix_ms}};
      // The committed view: its role in Raft and its state in the
      // configuration (joining, active, leaving, removed).
      if (control.is_object() && control.contains("members") &&
          control["members"].contains(member.node_id)) {
        const json& committed = control["members"][member.node_id];
        entry["role"] = committed.value("role", "none");
        entry["member_state"] = committed.value("state", "");
        entry["raft_id"] = committed.value("raft_id", "");
        entry["leader"] = control.value("leader", "") == member.node_id;
      }
      if (member.node_id == deps_.cluster->node_id() && control.is_object()) {
        entry["raft_term"] = control.value("term", uint64_t{0});
        entry["commit_index"] = control.value("commit_index", uint64_t{0});
        entry["applied_epoch"] = control.value("epoch", uint64_t{0});
      }
      members.push_back(std::move(entry));
    }
    return responder.Send(HttpResponse::Json(200, Dump(members)));
  }
  const std::string node_url = deps_.node_url->Get();
  json member = {{"id", NodeId()},
                 {"address", std::string(absl::StripPrefix(node_url, "http://"))},
                 {"last_seen", absl::ToUnixMillis(absl::Now())},
                 {"joined_timestamp", joined_unix_ms_}};
  responder.Send(HttpResponse::Json(200, Dump(json::array({member}))));
}

void ClusterRoutes::JoinByText(HttpRequest& request, Responder responder) {
  Join(request, std::move(responder), /*json_body=*/false);
}

void ClusterRoutes::JoinByJson(HttpRequest& request, Responder responder) {
  Join(request, std::move(responder), /*json_body=*/true);
}

void ClusterRoutes::Join(HttpRequest& request, Responder responder, bool json_body) {
  if (HttpResponse refusal; !AuthorizeAdmin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  if (deps_.auth.on()) {
    // A running node with accounts already belongs to a cluster with its
    // own accounts (its control plane), which cannot be merged into another
    // cluster's (docs/control-plane.md, "Accounts").
    return responder.Send(HttpResponse::Error(
        409, "a running node with --auth=on cannot be asked to join another cluster: its "
             "cluster's accounts cannot be merged into another's; start it on a new data "
             "directory with --seeds instead"));
  }
  if (deps_.cluster == nullptr || deps_.cluster->membership() == nullptr) {
    return responder.Send(
        HttpResponse::Error(501, "cluster membership is not running on this node"));
  }
  std::string text(request.body);
  if (json_body) {
    // {"address": "host:port"}
    absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
    if (!body.ok() || !body->is_object() || !body->contains("address") ||
        !(*body)["address"].is_string()) {
      return responder.Send(HttpResponse::Error(
          400, "body must be {\"address\": \"host:port\"} naming a member's binary-protocol "
               "address"));
    }
    text = (*body)["address"].get<std::string>();
  }
  absl::StatusOr<JoinTarget> target = ParseJoinTarget(text, config_.join_https);
  if (!target.ok()) return responder.Send(HttpResponse::Error(400, target.status().message()));
  auto shared = std::make_shared<Responder>(std::move(responder));
  if (!target->http) return JoinThrough(target->address, std::move(shared));
  BackgroundFunction background;
  {
    absl::MutexLock lock(&hooks_mu_);
    background = background_;
  }
  if (!background) {
    return shared->Send(HttpResponse::Error(503, "this node is stopping"));
  }
  FetchRequest fetch = MemberFetch(target->https);
  // Ask the member for its binary-protocol address, off the loop.
  background([this, shared, http_address = target->address, fetch = std::move(fetch)] {
    absl::StatusOr<std::string> address = BinaryAddressOf(http_address, fetch);
    if (!address.ok()) {
      HttpResponse answer = HttpResponse::Error(
          503, absl::StrCat("cannot join through ", fetch.tls ? "https://" : "http://",
                            http_address, ": ", address.status().message()));
      answer.headers.emplace_back("Retry-After", "1");
      return shared->Send(std::move(answer));
    }
    JoinThrough(*address, shared);
  });
}

void ClusterRoutes::JoinThrough(const std::string& address, std::shared_ptr<Responder> responder) {
  cluster::ClusterNode* node = deps_.cluster;
  node->membership()->JoinThroughAsync(
      address, absl::Seconds(3),
      [responder, node, address](absl::Status status) {
        if (!status.ok()) {
          const bool wrong_address = status.code() == absl::StatusCode::kInvalidArgument ||
                                     status.code() == absl::StatusCode::kFailedPrecondition;
          const int code = wrong_address ? 400 : 503;
          HttpResponse answer = HttpResponse::Error(
              code, absl::StrCat("cannot join through ", address, ": ", status.message()));
          if (code == 503) answer.headers.emplace_back("Retry-After", "1");
          return responder->Send(std::move(answer));
        }
        json body = {{"members", NodesJson(MembersOf(node), node->node_id())}};
        responder->Send(HttpResponse::Json(200, Dump(body)));
      });
}

void ClusterRoutes::Leave(HttpRequest& request, Responder responder) {
  if (HttpResponse refusal; !AuthorizeAdmin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  if (deps_.cluster == nullptr || deps_.cluster->membership() == nullptr) {
    return responder.Send(
        HttpResponse::Error(501, "cluster membership is not running on this node"));
  }
  cluster::ClusterNode* node = deps_.cluster;
  if (node->membership()->HasLeft()) {
    return responder.Send(HttpResponse::Error(409, "this node has already left the cluster"));
  }
  if (OtherOwners(node) == 0) {
    // Its keys would have no owner left, and would be dropped as not owned.
    return responder.Send(HttpResponse::Error(
        409, "this node is the only member of its cluster: leaving would leave nobody to own "
             "its keys"));
  }
  auto shared = std::make_shared<Responder>(std::move(responder));
  // The node stays up (serving its local data) but owns nothing in the
  // cluster any more; POST /members/join brings it back. It leaves only
  // once its keys were handed to the owners that remain.
  auto leave = [shared, node](absl::Status handed_off) {
    if (!handed_off.ok()) {
      HttpResponse refused = HttpResponse::Error(
          handed_off.code() == absl::StatusCode::kFailedPrecondition ? 409 : 503,
          absl::StrCat("not left yet: this node's keys could not be handed off (",
                       handed_off.message(),
                       "); a leave the control plane committed goes on in the background "
                       "until this node is removed (GET /members/ shows its state)"));
      if (refused.status == 503) refused.headers.emplace_back("Retry-After", "5");
      return shared->Send(std::move(refused));
    }
    // Asked again after the hand-off: another member may have left meanwhile.
    if (OtherOwners(node) == 0) {
      return shared->Send(HttpResponse::Error(
          409, "not leaving: no other member is left in the cluster to own this node's keys"));
    }
    node->membership()->LeaveAsync([shared, node] {
      json body = {{"left", true}, {"node_id", node->node_id()}};
      shared->Send(HttpResponse::Json(200, Dump(body)));
    });
  };
  HandOffFunction hand_off;
  {
    absl::MutexLock lock(&hooks_mu_);
    hand_off = hand_off_;
  }
  if (hand_off) return hand_off(std::move(leave));
  leave(absl::OkStatus());
}

// POST /members/remove {"node_id": ID}: a member that died while it was
// joining stays an owner after the change it began (writes go to it, and
// hints pile up for it); this removes it from the committed configuration.
void ClusterRoutes::RemoveMember(HttpRequest& request, Responder responder) {
  if (HttpResponse refusal; !AuthorizeAdmin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
  if (!body.ok() || !body->is_object() || !body->contains("node_id") ||
      !(*body)["node_id"].is_string() || (*body)["node_id"].get<std::string>().empty()) {
    return responder.Send(
        HttpResponse::Error(400, "body must be {\"node_id\": \"the member's node id\"}"));
  }
  RemoveMemberFunction remove;
  {
    absl::MutexLock lock(&hooks_mu_);
    remove = remove_member_;
  }
  if (!remove) {
    return responder.Send(
        HttpResponse::Error(501, "the control plane is not running on this node"));
  }
  auto shared = std::make_shared<Responder>(std::move(responder));
  std::string node_id = (*body)["node_id"].get<std::string>();
  remove(node_id, [shared, node_id](absl::Status removed) {
    if (!removed.ok()) {
      const int status = absl::IsNotFound(removed)             ? 404
                         : absl::IsFailedPrecondition(removed) ? 409
                                                               : 503;
      return shared->Send(HttpResponse::Error(status, removed.message()));
    }
    shared->Send(HttpResponse::Json(200, Dump(json{{"removed", true}, {"node_id", node_id}})));
  });
}

void ClusterRoutes::Fault(HttpRequest& request, Responder responder) {
  absl::StatusOr<json> body = ParseJson(request.body, config_.max_json_depth);
  if (!body.ok() || !body->is_object() || !body->contains("drop") ||
      !(*body)["drop"].is_array()) {
    return responder.Send(HttpResponse::Error(
        400, "body must be {\"drop\": [\"host:port\", ...]} (an empty list heals)"));
  }
  std::vector<std::string> dropped;
  for (const json& item : (*body)["drop"]) {
    if (!item.is_string()) {
      return responder.Send(HttpResponse::Error(400, "\"drop\" must list host:port strings"));
    }
    dropped.push_back(item.get<std::string>());
  }
  if (absl::Status status = deps_.cluster->SetDropped(dropped); !status.ok()) {
    return responder.Send(HttpResponse::Error(403, status.message()));
  }
  responder.Send(HttpResponse::Json(200, Dump(json{{"dropped", dropped}})));
}

namespace {

// The share of the hash space each member owns first, measured by placing
// kOwnershipSamples evenly spaced hashes (within half a percent).
constexpr uint64_t kOwnershipSamples = 4096;

// How long a member has to send its figures for the cluster page.
constexpr absl::Duration kFiguresTimeout = absl::Seconds(2);

// GET /console/cluster's answer: the members' entries, each other member's
// figures added as its ReadFigures answer comes (on the peer transport's
// thread); the last answer sends it.
class FiguresGather {
 public:
  FiguresGather(std::string self_id, json members, size_t waiting, Responder responder)
      : self_id_(std::move(self_id)),
        members_(std::move(members)),
        waiting_(waiting),
        responder_(std::move(responder)) {}

  void Add(size_t index, absl::StatusOr<std::string> answer) {
    json figures;
    std::string error;
    if (!answer.ok()) {
      error = std::string(answer.status().message());
    } else {
      const p::Response& response =
          *flatbuffers::GetSizePrefixedRoot<p::Response>(answer->data());
      const p::FiguresResult* result = response.result_as_FiguresResult();
      if (absl::Status status = p::StatusFromResponse(response); !status.ok()) {
        error = std::string(status.message());
      } else if (result == nullptr || result->json() == nullptr) {
        error = "the member sent no figures";
      } else {
        figures = json::parse(result->json()->string_view(), nullptr, /*allow_exceptions=*/false);
        if (!figures.is_object()) error = "the member's figures are not a JSON object";
      }
    }
    {
      absl::MutexLock lock(&mu_);
      json& entry = members_[index];
      if (error.empty()) {
        entry["figures"] = std::move(figures);
      } else {
        entry["error"] = std::move(error);
      }
      if (--waiting_ > 0) return;
    }
    Finish();
  }

  // Sends the answer (every member's figures are in, or none was asked).
  void Finish() {
    json members;
    {
      absl::MutexLock lock(&mu_);
      members = std::move(members_);
    }
    responder_.Send(HttpResponse::Json(
        200, Dump(json{{"node_id", self_id_}, {"members", std::move(members)}})));
  }

 private:
  const std::string self_id_;
  absl::Mutex mu_;
  json members_ ABSL_GUARDED_BY(mu_);
  size_t waiting_ ABSL_GUARDED_BY(mu_);
  Responder responder_;
};

}  // namespace

// GET /console/cluster: every member with its state, its share of the ring
// and its figures (those of GET /metrics, asked of each member over the peer
// links), for the console's cluster page.
void ClusterRoutes::ClusterSummary(HttpRequest& request, Responder responder) {
  HttpResponse refusal;
  absl::StatusOr<StatsCaller> caller = AuthorizeStats(request, &refusal);
  if (!caller.ok()) return responder.Send(std::move(refusal));
  if (!caller->node_wide) {
    return responder.Send(HttpResponse::Error(
        403, "the cluster's figures need the operator credential (Authorization: Bearer "
             "<cluster secret>)"));
  }
  const std::string self_id = NodeId();
  json members = json::array();
  std::vector<std::string> ring_members;
  if (deps_.cluster != nullptr && deps_.cluster->membership() != nullptr) {
    const json control = ControlStatus();
    for (const cluster::Member& member : MembersOf(deps_.cluster)) {
      if (member.state == cluster::MemberState::kLeft) continue;
      json entry = {{"id", member.node_id},
                    {"http_address", member.http_address},
                    {"binary_address", member.address},
                    {"state", cluster::MemberStateName(member.state)},
                    {"self", member.node_id == self_id}};
      if (control.is_object() && control.contains("members") &&
          control["members"].contains(member.node_id)) {
        entry["role"] = control["members"][member.node_id].value("role", "none");
        entry["leader"] = control.value("leader", "") == member.node_id;
      }
      if (member.state == cluster::MemberState::kAlive ||
          member.state == cluster::MemberState::kSuspect) {
        ring_members.push_back(member.node_id);
      }
      members.push_back(std::move(entry));
    }
  } else {
    members.push_back({{"id", self_id},
                       {"http_address", std::string(absl::StripPrefix(deps_.node_url->Get(),
                                                                      "http://"))},
                       {"state", "alive"},
                       {"self", true}});
    ring_members.push_back(self_id);
  }
  std::map<std::string, uint64_t> owned;
  if (!ring_members.empty()) {
    const cluster::Ring ring(ring_members);
    const uint64_t step = ~uint64_t{0} / kOwnershipSamples;
    for (uint64_t i = 0; i < kOwnershipSamples; ++i) {
      std::vector<std::string> first = ring.PreferenceListOfHash(i * step + step / 2, 1);
      if (!first.empty()) ++owned[first.front()];
    }
  }
  for (json& entry : members) {
    const std::string id = entry["id"];
    entry["ownership"] = static_cast<double>(owned[id]) / kOwnershipSamples;
    if (entry["self"]) entry["figures"] = NodeFigures();
  }
  // The others' figures, asked over the peer links (ReadFigures): the
  // links prove the cluster secret by challenge, so no credential is sent
  // for them, and the answers come on the transport's thread.
  std::vector<std::pair<size_t, std::string>> asked;  // entry, binary address
  if (deps_.cluster != nullptr) {
    for (size_t i = 0; i < members.size(); ++i) {
      const json& entry = members[i];
      if (entry["self"] || entry["state"] == "dead") continue;
      asked.emplace_back(i, entry.value("binary_address", ""));
    }
  }
  auto gather = std::make_shared<FiguresGather>(self_id, std::move(members), asked.size(),
                                                std::move(responder));
  if (asked.empty()) return gather->Finish();
  flatbuffers::FlatBufferBuilder builder(64);
  const std::string frame = cluster::FinishPeerRequest(
      &builder, p::Operation::ReadFigures, p::CreateReadFigures(builder).Union());
  for (const auto& [index, address] : asked) {
    deps_.cluster->transport()->Send(
        address, frame, kFiguresTimeout,
        [gather, index = index](absl::StatusOr<std::string> answer) {
          gather->Add(index, std::move(answer));
        });
  }
}

void ClusterRoutes::AddPeerHandlers() {
  if (deps_.cluster == nullptr) return;
  deps_.cluster->AddPeerOperationHandler(
      p::Operation::ReadFigures,
      [this](const p::Request& request, flatbuffers::FlatBufferBuilder* b,
             absl::FunctionRef<Completion()>) {
        const std::string figures = Dump(NodeFigures());
        b->Clear();
        p::FinishResponse(b, request.request_id(), p::Result::FiguresResult,
                          p::CreateFiguresResult(*b, b->CreateString(figures)).Union());
        return Outcome::kAnswered;
      });
}

FetchRequest ClusterRoutes::MemberFetch(bool https) const {
  FetchRequest fetch;
  if (https) {
    fetch.tls = true;
    fetch.tls_ca_file = config_.join_tls_ca_file;
    fetch.tls_cert_file = config_.join_tls_cert_file;
    fetch.tls_key_file = config_.join_tls_key_file;
  }
  return fetch;
}

void ClusterRoutes::AddConsoleRoutesTo(Router* router) {
  router->Add(Method::kGet, "/console/cluster", [this](HttpRequest& request, Responder responder) {
    ClusterSummary(request, std::move(responder));
  });
}

void ClusterRoutes::AddTo(Router* router) {
  using M = Method;
  struct NodeRoute {
    Method method;
    const char* pattern;
    void (ClusterRoutes::*handle)(HttpRequest&, Responder);
    // Tests only: served by a LOGKV_FAULT_INJECTION build run with --fault-injection.
    bool fault_injection = false;
  };
  static constexpr NodeRoute kRoutes[] = {
      {M::kGet, "/health", &ClusterRoutes::Health},
      {M::kGet, "/metrics", &ClusterRoutes::MetricsRoute},
      {M::kGet, "/cache/stats", &ClusterRoutes::CacheStats},
      {M::kGet, "/db/stats", &ClusterRoutes::DbStats},
      {M::kGet, "/nodes", &ClusterRoutes::Nodes},
      {M::kGet, "/servers", &ClusterRoutes::Servers},
      {M::kGet, "/members/", &ClusterRoutes::Members},
      {M::kGet, "/internal/ping", &ClusterRoutes::Ping},
      {M::kPost, "/join", &ClusterRoutes::JoinByText},
      {M::kPost, "/members/join", &ClusterRoutes::JoinByJson},
      {M::kPost, "/members/leave", &ClusterRoutes::Leave},
      {M::kPost, "/members/remove", &ClusterRoutes::RemoveMember},
      {M::kPost, "/internal/fault", &ClusterRoutes::Fault, /*fault_injection=*/true},
  };
  AddPeerHandlers();
  for (const NodeRoute& route : kRoutes) {
    if (route.fault_injection &&
        (deps_.cluster == nullptr || !deps_.cluster->fault_injection_enabled())) {
      continue;
    }
    router->Add(route.method, route.pattern,
                [this, handle = route.handle](HttpRequest& request, Responder responder) {
                  (this->*handle)(request, std::move(responder));
                });
  }
}

}  // namespace logkv::server::http
