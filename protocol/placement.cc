#include "protocol/placement.h"

#include <xxhash.h>

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"

namespace logkv::placement {

std::string PlacementKey(absl::string_view tenant_prefix, absl::string_view key) {
  std::string out;
  AppendPlacementKey(tenant_prefix, key, &out);
  return out;
}

void AppendPlacementKey(absl::string_view tenant_prefix, absl::string_view key, std::string* out) {
  out->reserve(out->size() + tenant_prefix.size() + key.size());
  out->append(tenant_prefix.data(), tenant_prefix.size());
  out->append(key.data(), key.size());
}

std::string TenantPrefix(uint64_t user_id) {
  std::string prefix("\0t", 2);
  for (int shift = 56; shift >= 0; shift -= 8) {
    prefix.push_back(static_cast<char>((user_id >> shift) & 0xff));
  }
  return prefix;
}

Ring::Ring(std::vector<std::string> members, int virtual_nodes) : members_(std::move(members)) {
  assert(virtual_nodes > 0);
  std::sort(members_.begin(), members_.end());
  members_.erase(std::unique(members_.begin(), members_.end()), members_.end());
  points_.reserve(members_.size() * static_cast<size_t>(virtual_nodes));
  for (uint32_t member = 0; member < members_.size(); ++member) {
    for (int i = 0; i < virtual_nodes; ++i) {
      const std::string name = absl::StrCat(members_[member], "#", i);
      points_.push_back(Point{XXH3_64bits(name.data(), name.size()), member});
    }
  }
  // Ties between positions (astronomically rare) are broken by member, so
  // every node builds the same ring from the same members.
  std::sort(points_.begin(), points_.end(), [](const Point& a, const Point& b) {
    return a.position != b.position ? a.position < b.position : a.member < b.member;
  });
}

std::vector<std::string> Ring::PreferenceList(absl::string_view key, size_t n) const {
  return PreferenceListOfHash(XXH3_64bits(key.data(), key.size()), n);
}

std::vector<std::string> Ring::PreferenceListOfHash(uint64_t key_hash, size_t n) const {
  if (points_.empty()) return {};
  return PreferenceListAt(PointOf(key_hash), n);
}

size_t Ring::PointOf(uint64_t key_hash) const {
  assert(!points_.empty());
  auto start =
      std::lower_bound(points_.begin(), points_.end(), key_hash,
                       [](const Point& point, uint64_t hash) { return point.position < hash; });
  // Past the last point: the first one, around the ring.
  return start == points_.end() ? 0 : static_cast<size_t>(start - points_.begin());
}

std::vector<std::string> Ring::PreferenceListAt(size_t point, size_t n) const {
  std::vector<std::string> owners;
  const size_t wanted = std::min(n, members_.size());
  if (wanted == 0 || points_.empty()) return owners;
  assert(point < points_.size());
  owners.reserve(wanted);
  std::vector<bool> taken(members_.size(), false);
  for (size_t step = 0; step < points_.size() && owners.size() < wanted; ++step) {
    const Point& at = points_[(point + step) % points_.size()];
    if (taken[at.member]) continue;
    taken[at.member] = true;
    owners.push_back(members_[at.member]);
  }
  return owners;
}

}  // namespace logkv::placement
