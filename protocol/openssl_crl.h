// Certificate revocation lists for the servers' TLS: the listeners
// (--tls-crl), the node-to-node links and the control plane's Raft transport
// (--peer-tls-crl). One helper so that every place reads a CRL file alike
// and turns the check on the same way. Header-only: its users link OpenSSL
// themselves.
#ifndef LOGKV_PROTOCOL_OPENSSL_CRL_H_
#define LOGKV_PROTOCOL_OPENSSL_CRL_H_

#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <string>

namespace logkv::protocol {

// Adds the PEM CRLs of path to store and makes the store check the leaf
// certificate it verifies against them: a certificate they revoke is
// refused, and so is one whose issuer has no CRL in the file. false when the
// file does not read (OpenSSL's error queue says why).
inline bool LoadCrlFile(X509_STORE* store, const std::string& path) {
  X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
  if (lookup == nullptr || X509_load_crl_file(lookup, path.c_str(), X509_FILETYPE_PEM) <= 0) {
    return false;
  }
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  return true;
}

}  // namespace logkv::protocol

#endif  // LOGKV_PROTOCOL_OPENSSL_CRL_H_
