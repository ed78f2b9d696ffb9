// How logkvd divides the engine's single key space. Every key that begins
// with byte 0x00 is reserved for the server itself: clients of every protocol
// are refused such keys, so nothing they send can reach these namespaces.
//
//   "\0auth/..."               accounts as an older version kept them, per node;
//                              read once to move them into the control plane
//                              (server/auth/auth_store.h), then a marker
//   "\0t" + 8-byte user id     a tenant's keys when --auth=on: the client's key
//                              follows the big-endian user id
//   "\0hint/" + node id + "/"  hinted handoff: writes waiting for an unreachable
//     + 8-byte sequence        owner (server/cluster/hinted_handoff.h); local to a
//                              node, never replicated
//   "\0cluster/members"        the cluster's members as this node last knew them
//                              (server/cluster/membership.h); local to a node
//
// These prefixes are persisted in data directories: they never change.
#ifndef LOGKV_SERVER_NAMESPACES_H_
#define LOGKV_SERVER_NAMESPACES_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace logkv::server {

inline constexpr char kReservedByte = '\0';
inline constexpr absl::string_view kAuthPrefix{"\0auth/", 6};
inline constexpr absl::string_view kTenantPrefix{"\0t", 2};
inline constexpr absl::string_view kHintPrefix{"\0hint/", 6};
inline constexpr absl::string_view kClusterPrefix{"\0cluster/", 9};
inline constexpr absl::string_view kClusterMembersKey{"\0cluster/members", 16};
inline constexpr size_t kTenantPrefixBytes = 2 + 8;

inline bool IsReservedKey(absl::string_view key) {
  return !key.empty() && key.front() == kReservedByte;
}

// Keys that belong to this node alone and never replicate: hints (addressed
// to one owner), its view of the cluster and the legacy account records
// (the accounts themselves are the control plane's).
inline bool IsNodeLocalKey(absl::string_view key) {
  return key.substr(0, kAuthPrefix.size()) == kAuthPrefix ||
         key.substr(0, kHintPrefix.size()) == kHintPrefix ||
         key.substr(0, kClusterPrefix.size()) == kClusterPrefix;
}

// Writes TenantPrefix(user_id) into *prefix, reusing its storage (the
// hot path of a request addressing another user's namespace).
inline void SetTenantPrefix(uint64_t user_id, std::string* prefix) {
  char bytes[2 + sizeof(user_id)] = {kTenantPrefix[0], kTenantPrefix[1]};
  for (int i = 0; i < 8; ++i) bytes[2 + i] = static_cast<char>((user_id >> (56 - 8 * i)) & 0xff);
  prefix->assign(bytes, sizeof(bytes));
}

// The prefix under which user_id's keys live.
inline std::string TenantPrefix(uint64_t user_id) {
  std::string prefix;
  SetTenantPrefix(user_id, &prefix);
  return prefix;
}

// The user whose tenant namespace key (or a prefix) is in; 0 when it is
// not in one.
inline uint64_t TenantOf(absl::string_view key) {
  if (key.size() < kTenantPrefixBytes || key.substr(0, kTenantPrefix.size()) != kTenantPrefix) {
    return 0;
  }
  uint64_t user_id = 0;
  for (size_t i = kTenantPrefix.size(); i < kTenantPrefixBytes; ++i) {
    user_id = (user_id << 8) | static_cast<uint8_t>(key[i]);
  }
  return user_id;
}

}  // namespace logkv::server

#endif  // LOGKV_SERVER_NAMESPACES_H_
