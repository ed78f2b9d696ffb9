// Consistent-hash placement, shared by servers and clients (a client routes
// each key to the owners the servers place it on): every member owns 150
// virtual nodes on a ring of
// XXH3-64 positions (of "node_id#i"); a key (XXH3-64 of its bytes) belongs to
// the first N distinct members clockwise from its position, its preference
// list. Rings are immutable: membership changes build a new one.
//
// Thread-safety: a Ring is immutable; share it with std::shared_ptr<const Ring>.
#ifndef LOGKV_PROTOCOL_PLACEMENT_H_
#define LOGKV_PROTOCOL_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace logkv::placement {

inline constexpr int kVirtualNodesPerMember = 150;

// The key a key is placed by: the key as the servers store it, which with
// accounts on is the tenant's prefix followed by the client's key. Servers
// place with it (the coordinator's owners) and clients route with it, so
// both pick the same owners. tenant_prefix: TenantPrefix(user id), or empty
// (accounts off); a client learns its own from the answer to Hello.
std::string PlacementKey(absl::string_view tenant_prefix, absl::string_view key);
void AppendPlacementKey(absl::string_view tenant_prefix, absl::string_view key, std::string* out);
// "\0t" and the user id, 8 bytes big-endian (server/namespaces.h's tenant
// namespace).
std::string TenantPrefix(uint64_t user_id);

class Ring {
 public:
  // members: node ids (order does not matter; duplicates are ignored).
  explicit Ring(std::vector<std::string> members, int virtual_nodes = kVirtualNodesPerMember);

  // The first min(n, member count) distinct members clockwise from the key.
  std::vector<std::string> PreferenceList(absl::string_view key, size_t n) const;
  // The same from a key hash already computed (XXH3-64 of the key).
  std::vector<std::string> PreferenceListOfHash(uint64_t key_hash, size_t n) const;
  // The point a key hash falls on (the first at or after it, wrapping
  // around): every key on one point has the same preference list, so a
  // caller may keep the lists it built by point. REQUIRES: point_count() > 0
  // (a ring with a member).
  size_t PointOf(uint64_t key_hash) const;
  // The preference list of the keys on a point (PointOf).
  std::vector<std::string> PreferenceListAt(size_t point, size_t n) const;

  const std::vector<std::string>& members() const { return members_; }
  size_t size() const { return members_.size(); }
  size_t point_count() const { return points_.size(); }

 private:
  std::vector<std::string> members_;  // sorted, distinct
  struct Point {
    uint64_t position;
    uint32_t member;  // index into members_
  };
  std::vector<Point> points_;  // sorted by position
};

}  // namespace logkv::placement

#endif  // LOGKV_PROTOCOL_PLACEMENT_H_
