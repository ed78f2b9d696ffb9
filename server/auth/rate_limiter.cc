#include "server/auth/rate_limiter.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace logkv::server::auth {

// Refilled never computes more than a full bucket plus one millisecond of refill.
static_assert(kMaxBurst <= (INT64_MAX - kMaxRequestsPerMinute) / 60'000,
              "the largest bucket and a millisecond of refill must fit in int64_t units");

RateLimiter::RateLimiter(const RateLimitConfig& config)
    : units_per_ms_(std::clamp<int64_t>(config.requests_per_minute, 0, kMaxRequestsPerMinute)),
      capacity_units_(std::clamp<int64_t>(config.burst, 1, kMaxBurst) * kUnitsPerToken),
      max_tracked_users_(std::max<size_t>(4, config.max_tracked_users)) {}

int64_t RateLimiter::Refilled(const Bucket& bucket, int64_t now_ms) const {
  const int64_t elapsed_ms = now_ms - bucket.updated_ms;
  if (elapsed_ms <= 0) return bucket.units;
  // Compared by division first, so elapsed_ms * units_per_ms_ cannot overflow.
  const int64_t missing_units = capacity_units_ - bucket.units;
  if (elapsed_ms >= (missing_units + units_per_ms_ - 1) / units_per_ms_) return capacity_units_;
  return bucket.units + elapsed_ms * units_per_ms_;
}

bool RateLimiter::Allow(uint64_t user_id, int64_t now_ms, int64_t* retry_after_ms) {
  if (retry_after_ms != nullptr) *retry_after_ms = 0;
  if (units_per_ms_ == 0) return true;
  absl::MutexLock lock(&mu_);
  auto it = buckets_.find(user_id);
  if (it == buckets_.end()) {
    if (buckets_.size() >= max_tracked_users_) EvictLocked(now_ms);
    it = buckets_.emplace(user_id, Bucket{capacity_units_, now_ms}).first;
  }
  Bucket& bucket = it->second;
  bucket.units = Refilled(bucket, now_ms);
  // Never move a bucket's time backwards, or a clock step back would refill it twice.
  bucket.updated_ms = std::max(bucket.updated_ms, now_ms);
  if (bucket.units >= kUnitsPerToken) {
    bucket.units -= kUnitsPerToken;
    return true;
  }
  if (retry_after_ms != nullptr) {
    *retry_after_ms = (kUnitsPerToken - bucket.units + units_per_ms_ - 1) / units_per_ms_;
  }
  return false;
}

void RateLimiter::EvictLocked(int64_t now_ms) {
  // Evicting down to three quarters of the limit makes the O(n) pass happen
  // at most once per max_tracked_users / 4 new users: O(1) amortised.
  const size_t target = max_tracked_users_ / 4 * 3;
  absl::erase_if(buckets_, [&](const auto& entry) {
    return Refilled(entry.second, now_ms) == capacity_units_;
  });
  if (buckets_.size() <= target) return;
  std::vector<std::pair<int64_t, uint64_t>> by_age;  // (updated_ms, user_id)
  by_age.reserve(buckets_.size());
  for (const auto& [user_id, bucket] : buckets_) by_age.emplace_back(bucket.updated_ms, user_id);
  const size_t excess = buckets_.size() - target;
  std::nth_element(by_age.begin(), by_age.begin() + static_cast<std::ptrdiff_t>(excess),
                   by_age.end());
  for (size_t i = 0; i < excess; ++i) buckets_.erase(by_age[i].second);
}

size_t RateLimiter::TrackedUsers() const {
  absl::MutexLock lock(&mu_);
  return buckets_.size();
}

}  // namespace logkv::server::auth
