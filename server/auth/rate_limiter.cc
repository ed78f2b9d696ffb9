#include "server/auth/rate_limiter.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "server/auth/bounded_map.h"

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
  // A full bucket is the same as none.
  EvictDownToThreeQuarters(
      buckets_, max_tracked_users_,
      [&](const Bucket& bucket) { return Refilled(bucket, now_ms) == capacity_units_; },
      [](const Bucket& bucket) { return bucket.updated_ms; });
}

size_t RateLimiter::TrackedUsers() const {
  absl::MutexLock lock(&mu_);
  return buckets_.size();
}

}  // namespace logkv::server::auth
