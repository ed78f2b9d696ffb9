// The peer handshake's proofs (protocol/logkv.fbs, ClusterHello): each end
// proves it holds the cluster secret with an HMAC-SHA256 over both nonces,
// so the secret itself never crosses the network and a proof cannot be
// replayed on another connection.
//
// Thread-safety: pure functions.
#ifndef LOGKV_SERVER_CLUSTER_PEER_AUTH_H_
#define LOGKV_SERVER_CLUSTER_PEER_AUTH_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace logkv::server::cluster {

// Bytes of a nonce and of a proof.
inline constexpr size_t kPeerNonceBytes = 32;
inline constexpr size_t kPeerProofBytes = 32;

// Who proves: the accepting node answers the first ClusterHello, the
// connecting node sends its proof in the second. Distinct labels keep one
// end's proof from being reflected back as the other's.
enum class PeerRole { kAccepting, kConnecting };

// kPeerNonceBytes random bytes (libsodium).
std::string NewPeerNonce();

// HMAC-SHA256(secret, label(role) | nonce of the other end | own nonce);
// the secret may be empty (a cluster without one).
std::string PeerProof(absl::string_view secret, PeerRole role, absl::string_view their_nonce,
                      absl::string_view own_nonce);

// Constant-time comparison of a received proof with the expected one.
bool PeerProofMatches(absl::string_view expected, absl::string_view received);

}  // namespace logkv::server::cluster

#endif  // LOGKV_SERVER_CLUSTER_PEER_AUTH_H_
