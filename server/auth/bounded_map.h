// Keeping a map of per-client state (rate-limit buckets, failed-login
// counts) bounded: once it is full, entries that no longer matter go first,
// then the least recently touched, down to three quarters of the bound, so
// the O(n) pass is paid once per max / 4 insertions (O(1) amortised).
//
// Thread-safety: none; callers hold the lock that guards the map.
#ifndef LOGKV_SERVER_AUTH_BOUNDED_MAP_H_
#define LOGKV_SERVER_AUTH_BOUNDED_MAP_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace logkv::server::auth {

// Erases the entries for which forgettable(value) holds, then, while more
// than max * 3 / 4 remain, those with the smallest last_touched_ms(value).
template <typename Key, typename Value, typename Forgettable, typename LastTouchedMs>
void EvictDownToThreeQuarters(absl::flat_hash_map<Key, Value>& map, size_t max,
                              Forgettable forgettable, LastTouchedMs last_touched_ms) {
  const size_t target = max / 4 * 3;
  absl::erase_if(map, [&](const auto& entry) { return forgettable(entry.second); });
  if (map.size() <= target) return;
  std::vector<std::pair<int64_t, Key>> by_age;  // (last touched, key)
  by_age.reserve(map.size());
  for (const auto& [key, value] : map) by_age.emplace_back(last_touched_ms(value), key);
  const size_t excess = map.size() - target;
  std::nth_element(by_age.begin(), by_age.begin() + static_cast<std::ptrdiff_t>(excess),
                   by_age.end());
  for (size_t i = 0; i < excess; ++i) map.erase(by_age[i].second);
}

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_BOUNDED_MAP_H_
