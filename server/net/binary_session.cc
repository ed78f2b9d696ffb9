#include "server/net/binary_session.h"

#include <cassert>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/core/peer_handler.h"
#include "server/log.h"
#include "server/namespaces.h"
#include "server/net/tls.h"

namespace logkv::server::net {

namespace p = ::logkv::protocol;

namespace {

bool IsClusterOperation(p::Operation operation) {
  switch (operation) {
    case p::Operation::ClusterHello:
    case p::Operation::Gossip:
    case p::Operation::Replicate:
    case p::Operation::ReadRecords:
    case p::Operation::MerkleHashes:
    case p::Operation::MerkleLeaf:
    case p::Operation::ControlPropose:
    case p::Operation::EpochBarrier:
    case p::Operation::ReadEvents:
    case p::Operation::ReadKeys:
    case p::Operation::ReadFigures:
      return true;
    default:
      return false;
  }
}

// What the observers name a request by (ServerConfig::protocol_observer):
// its key, or its prefix, cut to kObservedSubjectBytes; empty unless asked for.
absl::string_view RequestSubject(const ServerConfig& config, const p::Request& request) {
  if (!config.observe_subjects) return {};
  absl::string_view subject;
  switch (request.operation_type()) {
    case p::Operation::Get:
      subject = p::View(request.operation_as_Get()->key());
      break;
    case p::Operation::Put:
      subject = p::View(request.operation_as_Put()->key());
      break;
    case p::Operation::Delete:
      subject = p::View(request.operation_as_Delete()->key());
      break;
    case p::Operation::GetVersion:
      subject = p::View(request.operation_as_GetVersion()->key());
      break;
    case p::Operation::Batch: {
      const auto* items = request.operation_as_Batch()->items();
      if (items != nullptr && items->size() > 0) subject = p::View(items->Get(0)->key());
      break;
    }
    case p::Operation::Scan:
      subject = p::View(request.operation_as_Scan()->prefix());
      break;
    case p::Operation::Watch:
      subject = p::View(request.operation_as_Watch()->prefix());
      break;
    default:
      break;
  }
  return subject.substr(0, kObservedSubjectBytes);
}

// Reports an answer to the protocol observer, if there is one.
void ObserveAnswer(const ServerConfig& config, p::Operation operation, absl::string_view frame,
                   int64_t start_ns, absl::string_view subject) {
  const auto& observer = config.protocol_observer;
  if (!observer) return;
  const p::Response* response = flatbuffers::GetSizePrefixedRoot<p::Response>(frame.data());
  observer(operation, p::FromWire(response->status()), absl::GetCurrentTimeNanos() - start_ns,
           subject);
}

}  // namespace

// ---- WatchQuota -----------------------------------------------------------------

bool WatchQuota::Acquire(uint64_t user_id) {
  if (user_id == 0) return true;
  absl::MutexLock lock(&mu_);
  size_t& count = by_user_[user_id];
  if (max_per_user_ != 0 && count >= max_per_user_) {
    if (count == 0) by_user_.erase(user_id);
    return false;
  }
  ++count;
  return true;
}

void WatchQuota::Release(uint64_t user_id) {
  if (user_id == 0) return;
  absl::MutexLock lock(&mu_);
  auto it = by_user_.find(user_id);
  if (it == by_user_.end()) return;
  if (--it->second == 0) by_user_.erase(it);
}

// ---- Frames ---------------------------------------------------------------------

BinarySession::BinarySession(Connection& connection, WatchQuota* watch_quota)
    : ProtocolSession(connection, p::kFrameLengthBytes),
      watch_quota_(watch_quota),
      decoder_(connection.loop->service()->config().limits.max_frame_bytes) {}

void BinarySession::AppendStatus(uint64_t request_id, const absl::Status& status) {
  p::BuildStatusResponse(&builder_, request_id, status);
  Append(p::FrameOf(builder_));
}

size_t BinarySession::PrefetchBufferedKeys(size_t frames) {
  // Not for a client still to authenticate.
  if (config().authenticate && !authenticated_) return 0;
  // One request is served at once: nothing to overlap.
  size_t complete = 0;
  decoder_.ForEachBufferedFrame([&](absl::string_view) { return ++complete < 2; });
  if (complete < 2) return complete;
  Service* service = loop().service();
  const p::Limits& limits = service->config().limits;
  const RequestContext& context = session_.context;
  thread_local std::vector<absl::string_view> keys;
  thread_local std::vector<std::string> prefixed;
  if (prefixed.size() < frames) prefixed.resize(frames);
  keys.clear();
  size_t visited = 0;
  decoder_.ForEachBufferedFrame([&](absl::string_view frame) {
    // Single-key requests are small: a large frame ends the look ahead
    // (it is verified once, when served).
    if (visited == frames || frame.size() > kUnreservedRequestBytes) return false;
    absl::StatusOr<const p::Request*> request = p::VerifyRequest(frame, limits);
    if (!request.ok()) return false;
    ++visited;
    // Requests to another user's namespace are rare: not looked ahead.
    if ((*request)->namespace_user() != 0) return true;
    absl::string_view key;
    switch ((*request)->operation_type()) {
      case p::Operation::Get: key = p::View((*request)->operation_as_Get()->key()); break;
      case p::Operation::Put: key = p::View((*request)->operation_as_Put()->key()); break;
      case p::Operation::Delete: key = p::View((*request)->operation_as_Delete()->key()); break;
      default: return true;
    }
    absl::StatusOr<absl::string_view> engine_key = EngineKey(context, key, &prefixed[keys.size()]);
    if (engine_key.ok()) keys.push_back(*engine_key);
    return true;
  });
  if (keys.size() > 1) service->engine()->Prefetch(keys);
  return visited;
}

void BinarySession::ProcessInput() {
  Connection& c = connection();
  const ServerConfig& config = this->config();
  const p::Limits& limits = loop().service()->config().limits;
  // The keys of the frames buffered, a window at a time (each frame is
  // looked at once, however many times the input is processed).
  constexpr size_t kPrefetchWindow = 32;
  // Stop answering once the answers owed pass the limit: the rest of the
  // frames wait in the decoder until the client reads (ApplyBackpressure).
  while (!c.closing && c.owed_bytes() <= config.max_output_bytes) {
    if (!is_peer_ && looked_ahead_ == 0) looked_ahead_ = PrefetchBufferedKeys(kPrefetchWindow);
    if (!AdmitFrame()) return;
    absl::StatusOr<std::optional<absl::string_view>> frame = decoder_.Next();
    if (!frame.ok()) {
      // The stream cannot be resynchronised: answer, then close.
      RefuseFrame(frame.status());
      return;
    }
    if (!frame->has_value()) {
      // The clock of a slow frame starts when its first bytes are here.
      if (decoder_.buffered_bytes() > 0 && frame_began_ms_ < 0) frame_began_ms_ = loop().now_ms();
      return;
    }
    frame_began_ms_ = -1;
    framed_ = true;
    if (looked_ahead_ > 0) --looked_ahead_;
    loop().ReleaseInput(c);
    absl::StatusOr<const p::Request*> request = p::VerifyRequest(**frame, limits);
    if (!request.ok()) {
      RefuseFrame(request.status());
      return;
    }
    if (absl::Status status = p::CheckRequest(**request, limits); !status.ok()) {
      const int64_t start_ns = config.protocol_observer ? absl::GetCurrentTimeNanos() : 0;
      AppendStatus((*request)->request_id(), status);
      ObserveAnswer(config, (*request)->operation_type(), p::FrameOf(builder_), start_ns,
                    RequestSubject(config, **request));
      continue;
    }
    Dispatch(**request);
  }
}

void BinarySession::RefuseFrame(const absl::Status& status) {
  Connection& c = connection();
  Log(Level::kWarning, "connection %d: %s; closing it", c.id, status.message());
  AppendStatus(0, status);
  loop().StopReading(c);
  c.closing = true;
}

namespace {

// A TLS handshake record (TlsStream::LooksLikeTls) holding a ClientHello
// (handshake type 1).
bool LooksLikeClientHello(absl::string_view bytes) {
  return bytes.size() >= 6 && TlsStream::LooksLikeTls(bytes.data(), bytes.size()) &&
         static_cast<unsigned char>(bytes[5]) == 0x01;
}

}  // namespace

bool BinarySession::AdmitFrame() {
  const std::optional<uint32_t> announced = decoder_.NextFrameBytes();
  if (!announced.has_value()) return true;
  const ServerConfig& config = this->config();
  // A TLS client on this plaintext port: its ClientHello's record header
  // reads as the length of a large first frame (beyond max_frame_bytes for
  // a ClientHello of 1 KiB or more), whose bytes would otherwise be held
  // for (and counted against --max-buffered-bytes) until the timeout.
  if (!framed_ && *announced > kUnreservedRequestBytes && connection().tls == nullptr &&
      decoder_.buffered_bytes() < p::kFrameLengthBytes + *announced &&
      LooksLikeClientHello(decoder_.buffered())) {
    RefuseFrame(absl::FailedPreconditionError(
        "a TLS ClientHello on a port that speaks the binary protocol without TLS: connect "
        "without TLS, or to a TLS port"));
    return false;
  }
  // Beyond max_frame_bytes: the decoder's own refusal.
  if (*announced > loop().service()->config().limits.max_frame_bytes) return true;
  if (config.authenticate && !authenticated_ && !is_peer_ &&
      *announced > config.max_unauthenticated_frame_bytes) {
    RefuseFrame(absl::ResourceExhaustedError(absl::StrCat(
        "frame of ", *announced, " bytes before a successful Hello: until it "
        "authenticates a connection may send frames of at most ",
        config.max_unauthenticated_frame_bytes, " bytes")));
    return false;
  }
  const bool incomplete = decoder_.buffered_bytes() < p::kFrameLengthBytes + *announced;
  if (incomplete && *announced > kUnreservedRequestBytes &&
      !loop().ReserveInput(connection(), *announced)) {
    RefuseFrame(absl::ResourceExhaustedError(absl::StrCat(
        "the server holds too many bytes of requests still arriving "
        "(--max-buffered-bytes=", config.max_buffered_bytes, "): frame of ",
        *announced, " bytes refused; retry later")));
    return false;
  }
  return true;
}

ProtocolSession::Expiry BinarySession::CheckExpiry(int64_t now_ms) const {
  const Connection& c = connection();
  const int64_t timeout_ms = absl::ToInt64Milliseconds(config().binary_idle_timeout);
  // A frame begun is the client's to finish (unless we stopped reading it).
  if (c.reading && frame_began_ms_ >= 0 && now_ms - frame_began_ms_ > timeout_ms) {
    return Expiry::kTimedOut;
  }
  if (!is_peer_ && watches_.empty() && c.pending == 0 && c.owed_bytes() == 0 &&
      frame_began_ms_ < 0 && now_ms - c.last_read_ms > timeout_ms) {
    return Expiry::kIdle;
  }
  return Expiry::kNone;
}

void BinarySession::Expire() {
  RefuseFrame(absl::DeadlineExceededError(
      absl::StrCat("a frame did not arrive within ",
                   absl::ToInt64Milliseconds(config().binary_idle_timeout),
                   " ms (--binary-idle-timeout-ms)")));
}

// ---- Sessions -------------------------------------------------------------------

// With auth on, Hello's auth_token (an API key) decides whose keys the
// connection sees; a Hello whose key fails leaves the connection
// unauthenticated, whatever an earlier Hello proved. Until a Hello succeeds
// only Hello and Ping are served (Stats too shows only the caller's own
// figures). Returns true when the request was answered here.
bool BinarySession::HandleHello(const p::Request& request) {
  const auto& authenticate = config().authenticate;
  if (!authenticate) return false;
  const p::Operation operation = request.operation_type();
  if (operation == p::Operation::Hello) {
    const absl::string_view token = p::View(request.operation_as_Hello()->auth_token());
    if (token.empty()) return false;  // a plain Hello: answered by the service
    absl::StatusOr<Session> session = authenticate(token);
    if (!session.ok()) {
      session_ = Session();
      authenticated_ = false;
      // Watches opened under the earlier key end too: they would go on
      // showing that tenant's keys.
      RemoveAllWatches(absl::UnauthenticatedError("watch ended: a later Hello's API key failed"));
      AppendStatus(request.request_id(), session.status());
      return true;
    }
    if (authenticated_ && !watches_.empty() &&
        (session->user_id != session_.user_id ||
         session->credential_id != session_.credential_id)) {
      // Watches opened under the earlier key end: they show that key's
      // namespace, and its revocation is no longer checked on this connection.
      RemoveAllWatches(
          absl::UnauthenticatedError("watch ended: a later Hello changed the connection's API key"));
    }
    session_ = *std::move(session);
    authenticated_ = true;
    return false;
  }
  if (authenticated_ || operation == p::Operation::Ping) return false;
  AppendStatus(request.request_id(),
               absl::UnauthenticatedError(
                   "this node requires authentication: send Hello with an API key first"));
  return true;
}

bool BinarySession::SessionHolds(uint64_t request_id) {
  Connection& c = connection();
  const auto& check = config().check_session;
  if (!authenticated_ || !check || c.closing) return true;
  const absl::Status status = check(&session_);
  if (status.ok()) return true;
  Log(Level::kInfo, "connection %d: %s; ending its session", c.id, status.message());
  RemoveAllWatches(status);
  // With no request to answer, the reason goes out with request id 0.
  AppendStatus(request_id, status);
  authenticated_ = false;
  session_ = Session();
  loop().StopReading(c);
  c.closing = true;
  return false;
}

// ---- Requests -------------------------------------------------------------------

Completion BinarySession::DeferOn(p::Operation operation, int64_t start_ns,
                                  absl::string_view subject) {
  Connection& c = connection();
  ++c.pending;
  // One allocation carries the answer from the thread that completes it
  // back to this loop: the completion and the task it posts hold only it.
  struct Deferred {
    Loop* loop;
    uint64_t connection_id;
    p::Operation operation;
    int64_t start_ns;
    std::string subject;
    std::string frame;
  };
  auto deferred = std::make_unique<Deferred>(
      Deferred{c.loop, c.id, operation, start_ns, std::string(subject), std::string()});
  return [deferred = std::move(deferred)](std::string frame) mutable {
    deferred->frame = std::move(frame);
    Loop* loop = deferred->loop;
    loop->Post([deferred = std::move(deferred)](Loop& l) {
      ObserveAnswer(l.config(), deferred->operation, deferred->frame, deferred->start_ns,
                    deferred->subject);
      Connection* conn = l.Find(deferred->connection_id);
      if (conn == nullptr) return;  // the client is gone
      assert(conn->pending > 0);  // each deferred answer completes once
      --conn->pending;
      conn->out.append(deferred->frame);
      l.Answered(*conn);
    });
  };
}

void BinarySession::HandleClusterHello(const p::Request& request) {
  Connection& c = connection();
  PeerHandler* handler = config().peer_handler;
  const p::ClusterHello* hello = request.operation_as_ClusterHello();
  const uint64_t id = request.request_id();
  // Nothing more is read from a peer that cannot prove it belongs.
  auto refuse = [&](const absl::Status& status) {
    AppendStatus(id, status);
    loop().StopReading(c);
    c.closing = true;
  };
  if (handler == nullptr) {
    return refuse(absl::PermissionDeniedError("this node does not accept cluster peers"));
  }
  if (is_peer_) return refuse(absl::FailedPreconditionError("ClusterHello sent twice"));
  // Node-to-node mutual TLS: a peer shows a certificate of the cluster's CA
  // that names who it claims to be.
  if (const TlsContext* tls = config().tls; tls != nullptr && tls->peers_need_certificates()) {
    const std::string claimed(p::View(hello->node_id()));
    // Logged and counted (logkv_tls_peer_refusals_total): an operator
    // wants to know of a node knocking with the wrong certificate.
    auto refuse_peer = [&](const std::string& why) {
      tls->CountPeerRefusal();
      Log(Level::kWarning, "connection %d: refused cluster peer '%s': %s", c.id, claimed, why);
      refuse(absl::PermissionDeniedError(why));
    };
    if (c.tls == nullptr || !tls->VerifyPeer(c.tls.get())) {
      return refuse_peer(absl::StrCat("a cluster peer must show a certificate of the cluster CA: ",
                                      c.tls != nullptr ? c.tls->error() : "no TLS"));
    }
    if (claimed.empty()) {
      // Every node knows its id before its first hello (one listening on
      // port 0 once the port is bound): a hello claiming none is not a
      // logkvd's, and its certificate could not be held to a name.
      return refuse_peer("a cluster peer must claim its node id in its ClusterHello");
    }
    const std::string address = handler->MemberAddress(claimed);
    if (const size_t colon = address.rfind(':'); colon != std::string::npos) {
      // A member is who its certificate names: the host it advertises.
      const std::string host = address.substr(0, colon);
      if (!c.tls->PeerNames(host)) {
        return refuse_peer(absl::StrCat("the certificate of cluster peer '", claimed,
                                        "' does not name ", host,
                                        ", the host it advertises in the member list"));
      }
    } else if (address.empty()) {
      // Not a member (yet: a node joining). Its certificate must name the
      // identity it claims: its node id, or the host of the node id when
      // that is host:port (its advertised address, the default).
      const size_t id_colon = claimed.rfind(':');
      const std::string id_host =
          id_colon == std::string::npos ? claimed : claimed.substr(0, id_colon);
      if (!c.tls->PeerNames(claimed) && !c.tls->PeerNames(id_host)) {
        return refuse_peer(absl::StrCat(
            "node '", claimed, "' is not in the member list and its certificate does not name ",
            id_host, " (a joining node's --peer-tls-cert must name its node id or advertised host)"));
      }
    }
  }
  const absl::string_view node_id = p::View(hello->node_id());
  if (peer_nonce_own_.empty()) {
    // Step 1: challenge the connecting node, proving this node's secret.
    absl::StatusOr<PeerHandler::Challenge> challenge =
        handler->ChallengePeer(node_id, p::View(hello->nonce()), hello->auth(),
                               p::View(hello->cluster_id()));
    if (!challenge.ok()) return refuse(challenge.status());
    peer_nonce_theirs_ = std::string(p::View(hello->nonce()));
    peer_nonce_own_ = challenge->nonce;
    flatbuffers::FlatBufferBuilder& b = builder_;
    b.Clear();
    auto nonce = b.CreateVector(reinterpret_cast<const uint8_t*>(challenge->nonce.data()),
                                challenge->nonce.size());
    auto proof = b.CreateVector(reinterpret_cast<const uint8_t*>(challenge->proof.data()),
                                challenge->proof.size());
    auto result = p::CreateClusterChallenge(b, nonce, proof, challenge->auth);
    p::FinishResponse(&b, id, p::Result::ClusterChallenge, result.Union());
    Append(p::FrameOf(b));
    return;
  }
  // Step 3: the connecting node's proof.
  if (!handler->AcceptPeer(node_id, peer_nonce_theirs_, peer_nonce_own_,
                           p::View(hello->proof()))) {
    return refuse(absl::UnauthenticatedError("ClusterHello refused: wrong cluster secret"));
  }
  is_peer_ = true;
  AppendStatus(id, absl::OkStatus());
}

void BinarySession::Dispatch(const p::Request& request) {
  const int64_t start_ns = config().protocol_observer ? absl::GetCurrentTimeNanos() : 0;
  if (DispatchOperation(request, start_ns)) {
    ObserveAnswer(config(), request.operation_type(), p::FrameOf(builder_), start_ns,
                  RequestSubject(config(), request));
  }
}

bool BinarySession::DispatchPeer(const p::Request& request, int64_t start_ns) {
  PeerHandler* handler = config().peer_handler;
  const p::Operation operation = request.operation_type();
  if (operation == p::Operation::ClusterHello) {
    HandleClusterHello(request);
    return true;
  }
  if (!is_peer_ || handler == nullptr) {
    AppendStatus(request.request_id(),
                 absl::PermissionDeniedError(absl::StrCat(
                     "operation ", p::EnumNameOperation(operation),
                     " is cluster-internal: only peers that sent ClusterHello may use it")));
    return true;
  }
  Outcome outcome =
      handler->HandlePeer(request, &builder_, [&]() -> Completion {
        return DeferOn(operation, start_ns, RequestSubject(config(), request));
      });
  if (outcome != Outcome::kAnswered) return false;
  Append(p::FrameOf(builder_));
  return true;
}

bool BinarySession::DispatchOperation(const p::Request& request, int64_t start_ns) {
  const p::Operation operation = request.operation_type();
  if (IsClusterOperation(operation)) return DispatchPeer(request, start_ns);
  // Peers are authenticated by the cluster secret, not by an API key.
  if (!is_peer_ && HandleHello(request)) return true;
  if (authenticated_ && operation != p::Operation::Hello) {
    if (!SessionHolds(request.request_id())) return true;
    const auto& admit = config().admit_request;
    if (admit && operation != p::Operation::Ping && operation != p::Operation::Unwatch) {
      if (absl::Status status = admit(session_); !status.ok()) {
        AppendStatus(request.request_id(), status);
        return true;
      }
    }
  }
  // Another user's namespace (Request.namespace_user): the ACLs decide.
  // Built only for another user's namespace (rare): most requests use the
  // session's context as it is, with no string made and freed per request.
  std::optional<RequestContext> addressed;
  const RequestContext* context = &session_.context;
  if (request.namespace_user() != 0 && !is_peer_ && operation != p::Operation::Hello &&
      operation != p::Operation::Ping && operation != p::Operation::Stats) {
    if (!authenticated_) {
      AppendStatus(request.request_id(), absl::InvalidArgumentError(
                                             "namespace_user needs accounts on (--auth=on)"));
      return true;
    }
    if (request.namespace_user() != session_.user_id) {
      addressed.emplace(session_.context);
      addressed->key_prefix = TenantPrefix(request.namespace_user());
      context = &*addressed;
    }
  }
  switch (operation) {
    case p::Operation::Watch:
      AddWatch(request.request_id(), *request.operation_as_Watch(), *context);
      return true;
    case p::Operation::Unwatch:
      RemoveWatch(request.operation_as_Unwatch()->watch_request_id(), absl::OkStatus());
      AppendStatus(request.request_id(), absl::OkStatus());
      return true;
    default:
      break;
  }
  Outcome outcome = loop().service()->Handle(
      *context, request, &builder_,
      [&]() -> Completion { return DeferOn(operation, start_ns, RequestSubject(config(), request)); });
  if (outcome != Outcome::kAnswered) return false;
  Append(p::FrameOf(builder_));
  return true;
}

// ---- Watches --------------------------------------------------------------------

void BinarySession::AddWatch(uint64_t request_id, const p::Watch& watch,
                             const RequestContext& context) {
  Service* service = loop().service();
  if (absl::Status status = service->AdmitWatch(context); !status.ok()) {
    AppendStatus(request_id, status);
    return;
  }
  if (watches_.contains(request_id)) {
    AppendStatus(request_id, absl::InvalidArgumentError("request_id already watching"));
    return;
  }
  const size_t per_connection = config().max_watches_per_connection;
  if (per_connection != 0 && watches_.size() >= per_connection) {
    AppendStatus(request_id, absl::ResourceExhaustedError(absl::StrCat(
                                 "this connection already has ", watches_.size(),
                                 " watches (--max-watches-per-connection); unwatch one first")));
    return;
  }
  absl::StatusOr<Service::WatchCursor> cursor = service->OpenWatch(context, watch);
  if (!cursor.ok()) {
    AppendStatus(request_id, cursor.status());
    return;
  }
  Watch w;
  w.cursor = *std::move(cursor);
  w.user_id = authenticated_ ? session_.user_id : 0;
  if (!watch_quota_->Acquire(w.user_id)) {
    AppendStatus(request_id, absl::ResourceExhaustedError(absl::StrCat(
                                 "this user already has ", config().max_watches_per_user,
                                 " watches (--max-watches-per-user); unwatch one first")));
    return;
  }
  // Acknowledge with an empty batch, so the client knows events from now on
  // will reach it; then catch up from the resume points.
  builder_.Clear();
  AppendWatchEvents(request_id,
                    builder_.CreateVector(std::vector<flatbuffers::Offset<p::Event>>{}));
  watches_.emplace(request_id, std::move(w));
  loop().Subscribe(connection());
}

void BinarySession::AppendWatchEvents(
    uint64_t watch_id,
    flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<p::Event>>> events) {
  auto batch = p::CreateWatchEvents(builder_, events);
  p::ResponseBuilder response(builder_);
  response.add_request_id(watch_id);
  response.add_result_type(p::Result::WatchEvents);
  response.add_result(batch.Union());
  builder_.FinishSizePrefixed(response.Finish());
  Append(p::FrameOf(builder_));
}

void BinarySession::RemoveWatch(uint64_t watch_request_id, const absl::Status& final_status) {
  auto it = watches_.find(watch_request_id);
  if (it == watches_.end()) return;
  watch_quota_->Release(it->second.user_id);
  watches_.erase(it);
  if (watches_.empty()) loop().Unsubscribe(connection());
  AppendStatus(watch_request_id, final_status);
}

void BinarySession::RemoveAllWatches(const absl::Status& final_status) {
  std::vector<uint64_t> watch_ids;
  for (const auto& [watch_id, watch] : watches_) watch_ids.push_back(watch_id);
  for (uint64_t watch_id : watch_ids) RemoveWatch(watch_id, final_status);
}

bool BinarySession::OnEvents(EventsPass& pass) {
  if (!SessionHolds(0)) return false;
  Connection& c = connection();
  Service* service = loop().service();
  const uint32_t batch_events = config().watch_batch_events;
  const size_t max_output_bytes = config().max_output_bytes;
  std::vector<std::pair<uint64_t, absl::Status>> ended;
  for (auto& [watch_id, w] : watches_) {
    if (c.owed_bytes() > max_output_bytes) {
      // A watcher that does not read is dropped, not buffered without end.
      ended.emplace_back(watch_id, absl::AbortedError(absl::StrCat(
                                       "watch dropped: the client fell more than ",
                                       max_output_bytes,
                                       " bytes behind; resume from the last sequences it saw")));
      continue;
    }
    for (uint32_t shard = 0; shard < w.cursor.after.size(); ++shard) {
      if (pass.last_sequences[shard] <= w.cursor.after[shard]) continue;
      builder_.Clear();
      absl::StatusOr<std::vector<flatbuffers::Offset<p::Event>>> matching =
          service->ReadWatchEvents(session_.context, shard, batch_events, &w.cursor, &builder_,
                                   &pass.more);
      if (!matching.ok()) {
        ended.emplace_back(watch_id, matching.status());
        break;
      }
      if (matching->empty()) continue;
      AppendWatchEvents(watch_id, builder_.CreateVector(*matching));
    }
  }
  for (const auto& [request_id, status] : ended) RemoveWatch(request_id, status);
  return true;
}

void BinarySession::OnClose() {
  for (const auto& [watch_id, w] : watches_) watch_quota_->Release(w.user_id);
  watches_.clear();
}

}  // namespace logkv::server::net
