#include "server/cluster/cluster_node.h"

#include <sodium.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/cluster/peer_auth.h"
#include "server/log.h"

namespace logkv::server::cluster {

namespace p = ::logkv::protocol;

namespace {

PeerTransportOptions TransportOptions(const ClusterNodeOptions& options) {
  PeerTransportOptions transport;
  // Start sets the id again once it is known (a node listening on port 0
  // learns its address, the default id, when the port is bound).
  transport.node_id = options.node_id.empty() ? options.advertise : options.node_id;
  transport.cluster_secret = options.cluster_secret;
  transport.auth_on = options.auth_on;
  if (options.cluster_id) {
    transport.cluster_id = [source = options.cluster_id]() -> std::string {
      absl::StatusOr<std::string> id = source();
      return id.ok() ? *std::move(id) : "";
    };
  }
  transport.connect_timeout = std::max(options.ping_timeout, absl::Milliseconds(100));
  transport.max_frame_bytes = options.max_frame_bytes;
  transport.allow_fault_injection = options.allow_fault_injection;
  transport.tls = options.tls;
  transport.tls_ca_file = options.tls_ca_file;
  transport.tls_crl_file = options.tls_crl_file;
  transport.tls_cert_file = options.tls_cert_file;
  transport.tls_key_file = options.tls_key_file;
  transport.tls_ciphersuites = options.tls_ciphersuites;
  return transport;
}

}  // namespace

ClusterNode::ClusterNode(const ClusterNodeOptions& options)
    : options_(options), transport_(TransportOptions(options)) {}

ClusterNode::~ClusterNode() { Stop(); }

void ClusterNode::SetAdvertise(const std::string& advertise, const std::string& http_advertise) {
  if (started_.load()) return;
  if (!advertise.empty()) options_.advertise = advertise;
  if (!http_advertise.empty()) options_.http_advertise = http_advertise;
  // The id defaults to the advertised address, known from here on (the
  // coordinator takes it before Start).
  if (options_.node_id.empty()) options_.node_id = options_.advertise;
}

void ClusterNode::SetNodeId(const std::string& node_id) {
  if (started_.load()) return;
  options_.node_id = node_id;
}

absl::Status ClusterNode::Start() {
  if (started_.exchange(true)) return absl::FailedPreconditionError("cluster node already started");
  if (options_.advertise.empty()) {
    return absl::InvalidArgumentError("the cluster node needs an advertised address (--advertise)");
  }
  if (options_.node_id.empty()) options_.node_id = options_.advertise;
  // The first ClusterHello claims the id: a peer checks a certificate
  // against it (--peer-tls-ca).
  transport_.SetNodeId(options_.node_id);
  if (options_.replicas < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replicas must be at least 1 (got ", options_.replicas, ")"));
  }
  if (absl::Status status = transport_.Start(); !status.ok()) return status;
  MembershipOptions membership;
  membership.self.node_id = options_.node_id;
  membership.self.address = options_.advertise;
  membership.self.http_address = options_.http_advertise;
  for (const std::string& seed : options_.seeds) {
    if (seed != options_.advertise) membership.seeds.push_back(seed);
  }
  membership.gossip_interval = options_.gossip_interval;
  membership.suspect_after_missed = options_.suspect_after_missed;
  membership.dead_after = options_.dead_after;
  membership.ping_timeout = options_.ping_timeout;
  membership.load_state = options_.load_membership;
  membership.save_state = options_.save_membership;
  owned_membership_ = std::make_unique<Membership>(membership, &transport_);
  if (absl::Status status = owned_membership_->Start(); !status.ok()) {
    transport_.Stop();
    return status;
  }
  membership_.store(owned_membership_.get(), std::memory_order_release);
  Log(Level::kInfo, "cluster node %s advertising %s (HTTP %s), %d seed(s), replicas %d",
      options_.node_id, options_.advertise,
      options_.http_advertise.empty() ? "none" : options_.http_advertise,
      static_cast<int>(membership.seeds.size()), options_.replicas);
  return absl::OkStatus();
}

void ClusterNode::Stop() {
  if (Membership* membership = this->membership(); membership != nullptr) membership->Stop();
  // Answers still pending get Unavailable; membership is kept (stopped) for
  // readers such as the HTTP routes until the node is destroyed.
  transport_.Stop();
}

void ClusterNode::AddPeerOperationHandler(p::Operation operation, PeerOperationHandler handler) {
  absl::MutexLock lock(&handlers_mu_);
  handlers_[static_cast<uint8_t>(operation)] = std::move(handler);
}

std::string ClusterNode::MemberAddress(absl::string_view node_id) const {
  const Membership* members = membership();
  Member member;
  if (members == nullptr || !members->Find(std::string(node_id), &member)) return "";
  return member.address;
}

absl::StatusOr<PeerHandler::Challenge> ClusterNode::ChallengePeer(
    absl::string_view node_id, absl::string_view their_nonce, bool their_auth,
    absl::string_view their_cluster_id) {
  if (options_.cluster_secret.empty() && options_.require_secret) {
    Log(Level::kWarning,
        "refused a peer connection from node '%s': this node accepts peers only with "
        "--cluster-secret (it runs with --auth=on or on a non-loopback address)",
        std::string(node_id));
    return absl::PermissionDeniedError(
        "this node accepts peers only with --cluster-secret (it runs with --auth=on or on a "
        "non-loopback address)");
  }
  if (their_auth != options_.auth_on) {
    Log(Level::kWarning, "refused a peer connection from node '%s': it runs with --auth=%s, this "
        "node with --auth=%s", std::string(node_id), their_auth ? "on" : "off",
        options_.auth_on ? "on" : "off");
    return absl::FailedPreconditionError(absl::StrCat(
        "this node runs with --auth=", options_.auth_on ? "on" : "off",
        ": a cluster's nodes must all have auth on or all off"));
  }
  if (their_nonce.size() != kPeerNonceBytes) {
    return absl::InvalidArgumentError("ClusterHello without a nonce of 32 bytes");
  }
  absl::StatusOr<std::string> mine =
      options_.cluster_id ? options_.cluster_id() : absl::StatusOr<std::string>("");
  if (!mine.ok()) return mine.status();
  if (!mine->empty() && !their_cluster_id.empty() && their_cluster_id != *mine) {
    // One of the two is a wiped node that started a new cluster: its
    // answers would count in the other cluster's quorums without its data.
    Log(Level::kWarning,
        "refused a peer connection from node '%s': it belongs to cluster %s, this node to %s "
        "(a node whose data was wiped rejoins with --seeds and --replace)",
        std::string(node_id), absl::BytesToHexString(their_cluster_id),
        absl::BytesToHexString(*mine));
    return absl::FailedPreconditionError(absl::StrCat(
        "this node belongs to cluster ", absl::BytesToHexString(*mine), ", not ",
        absl::BytesToHexString(their_cluster_id),
        ": a node whose data was wiped rejoins with --seeds and --replace"));
  }
  Challenge challenge;
  challenge.nonce = NewPeerNonce();
  challenge.proof =
      PeerProof(options_.cluster_secret, PeerRole::kAccepting, their_nonce, challenge.nonce);
  challenge.auth = options_.auth_on;
  return challenge;
}

bool ClusterNode::AcceptPeer(absl::string_view node_id, absl::string_view their_nonce,
                             absl::string_view own_nonce, absl::string_view proof) {
  const bool accepted = PeerProofMatches(
      PeerProof(options_.cluster_secret, PeerRole::kConnecting, own_nonce, their_nonce), proof);
  if (!accepted) {
    Log(Level::kWarning, "refused a peer connection from node '%s': wrong cluster secret",
        std::string(node_id));
  }
  return accepted;
}

Outcome ClusterNode::HandlePeer(const p::Request& request,
                                         flatbuffers::FlatBufferBuilder* builder,
                                         absl::FunctionRef<Completion()> defer) {
  const uint64_t id = request.request_id();
  if (request.operation_type() == p::Operation::Gossip) {
    Membership* membership = this->membership();
    if (membership == nullptr) {
      p::BuildStatusResponse(builder, id,
                             absl::UnavailableError("this node's membership is not running yet"));
      return Outcome::kAnswered;
    }
    const p::Gossip* gossip = request.operation_as_Gossip();
    if (options_.allow_fault_injection && gossip->from() != nullptr &&
        transport_.IsDropped(std::string(p::View(gossip->from()->address())))) {
      // A cut link drops traffic both ways: the sender hears nothing back.
      p::BuildStatusResponse(builder, id,
                             absl::UnavailableError("dropped by fault injection"));
      return Outcome::kAnswered;
    }
    membership->HandleGossip(*gossip, builder, id);
    return Outcome::kAnswered;
  }
  // Fencing: a peer whose committed configuration is older than this
  // node's places keys on a stale ring, and a strong operation placed under
  // an older configuration than this node's may have missed its epoch
  // barrier; their data operations are refused (the coordinator runs the
  // operation again once it applied the newer one). Hinted writes are data
  // held for this node whatever the ring, and pass.
  if (const uint64_t local = transport_.epoch(); local != 0 && request.epoch() != 0 &&
                                                 request.epoch() < local) {
    const bool hinted = request.operation_type() == p::Operation::Replicate &&
                        request.operation_as_Replicate()->hinted();
    if (!hinted && (request.operation_type() == p::Operation::Replicate ||
                    request.operation_type() == p::Operation::ReadRecords)) {
      fenced_.fetch_add(1, std::memory_order_relaxed);
      // Aborted: sent again under the same epoch it is refused again.
      p::BuildStatusResponse(
          builder, id,
          absl::AbortedError(absl::StrCat("stale configuration: the request is for epoch ",
                                          request.epoch(), ", this node holds epoch ", local)));
      return Outcome::kAnswered;
    }
  }
  {
    absl::ReaderMutexLock lock(&handlers_mu_);
    auto it = handlers_.find(static_cast<uint8_t>(request.operation_type()));
    if (it != handlers_.end()) return it->second(request, builder, defer);
  }
  p::BuildStatusResponse(builder, id,
                         absl::UnimplementedError(absl::StrCat(
                             "cluster operation ", p::EnumNameOperation(request.operation_type()),
                             " is not handled by this node")));
  return Outcome::kAnswered;
}

size_t ClusterNode::MemberCount() const {
  const Membership* membership = this->membership();
  return membership == nullptr ? 1 : membership->Members().size();
}

size_t ClusterNode::LiveMemberCount() const {
  const Membership* membership = this->membership();
  return membership == nullptr ? 1 : membership->LiveMembers().size();
}

absl::Status ClusterNode::SetDropped(std::vector<std::string> addresses) {
  if (!options_.allow_fault_injection) {
    return absl::FailedPreconditionError(
        "fault injection is off: start a test build of logkvd with --fault-injection");
  }
  Log(Level::kWarning, "fault injection: dropping traffic to %d address(es)",
      static_cast<int>(addresses.size()));
  transport_.SetDropped(std::move(addresses));
  return absl::OkStatus();
}

}  // namespace logkv::server::cluster
