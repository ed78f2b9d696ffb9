#include "server/cluster/peer_auth.h"

#include <sodium.h>

namespace logkv::server::cluster {

std::string NewPeerNonce() {
  std::string nonce(kPeerNonceBytes, '\0');
  randombytes_buf(nonce.data(), nonce.size());
  return nonce;
}

std::string PeerProof(absl::string_view secret, PeerRole role, absl::string_view their_nonce,
                      absl::string_view own_nonce) {
  static_assert(crypto_auth_hmacsha256_BYTES == kPeerProofBytes);
  const absl::string_view label =
      role == PeerRole::kAccepting ? "logkv-peer-accept" : "logkv-peer-connect";
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, reinterpret_cast<const unsigned char*>(secret.data()),
                              secret.size());
  for (absl::string_view part : {label, their_nonce, own_nonce}) {
    crypto_auth_hmacsha256_update(&state, reinterpret_cast<const unsigned char*>(part.data()),
                                  part.size());
  }
  std::string proof(kPeerProofBytes, '\0');
  crypto_auth_hmacsha256_final(&state, reinterpret_cast<unsigned char*>(proof.data()));
  return proof;
}

bool PeerProofMatches(absl::string_view expected, absl::string_view received) {
  return expected.size() == kPeerProofBytes && received.size() == kPeerProofBytes &&
         sodium_memcmp(expected.data(), received.data(), kPeerProofBytes) == 0;
}

}  // namespace logkv::server::cluster
