#include "server/auth/rate_limiter.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "server/auth/bounded_map.h"

namespace logkv::server::auth {

// Refilled never computes more than a full bucket plus one millisecond of refill.
static_assert(kMaxBurst <= (INT64_MAX - kMaxRequestsPerMinute) / 60'000,
              "the largest bucket and a millisecond of refill must fit in int64_t units");

RateLimiter::Rates RateLimiter::RatesFor(int64_t requests_per_minute, int64_t burst) {
  return Rates{std::clamp<int64_t>(requests_per_minute, 0, kMaxRequestsPerMinute),
               std::clamp<int64_t>(burst, 1, kMaxBurst) * kUnitsPerToken};
}

RateLimiter::RateLimiter(const RateLimitConfig& config)
    : max_tracked_users_(std::max<size_t>(4, config.max_tracked_users)),
      units_per_ms_(RatesFor(config.requests_per_minute, config.burst).units_per_ms),
      rates_(RatesFor(config.requests_per_minute, config.burst)) {}

int64_t RateLimiter::Refilled(const Rates& rates, const Bucket& bucket, int64_t now_ms) {
  const int64_t elapsed_ms = now_ms - bucket.updated_ms;
  if (elapsed_ms <= 0) return bucket.units;
  // Compared by division first, so elapsed_ms * units_per_ms cannot overflow.
  const int64_t missing_units = rates.capacity_units - bucket.units;
  if (elapsed_ms >= (missing_units + rates.units_per_ms - 1) / rates.units_per_ms) {
    return rates.capacity_units;
  }
  return bucket.units + elapsed_ms * rates.units_per_ms;
}

void RateLimiter::Reconfigure(int64_t requests_per_minute, int64_t burst) {
  absl::MutexLock lock(&mu_);
  rates_ = RatesFor(requests_per_minute, burst);
  units_per_ms_.store(rates_.units_per_ms, std::memory_order_relaxed);
  for (auto& [user, bucket] : buckets_) {
    bucket.units = std::min(bucket.units, rates_.capacity_units);
  }
}

int64_t RateLimiter::requests_per_minute() const {
  return units_per_ms_.load(std::memory_order_relaxed);
}

bool RateLimiter::Allow(uint64_t user_id, int64_t now_ms, int64_t* retry_after_ms) {
  if (retry_after_ms != nullptr) *retry_after_ms = 0;
  if (units_per_ms_.load(std::memory_order_relaxed) == 0) return true;
  absl::MutexLock lock(&mu_);
  // Turned off since the look above.
  if (rates_.units_per_ms == 0) return true;
  auto it = buckets_.find(user_id);
  if (it == buckets_.end()) {
    if (buckets_.size() >= max_tracked_users_) EvictLocked(now_ms);
    it = buckets_.emplace(user_id, Bucket{rates_.capacity_units, now_ms}).first;
  }
  Bucket& bucket = it->second;
  bucket.units = Refilled(rates_, bucket, now_ms);
  // Never move a bucket's time backwards, or a clock step back would refill it twice.
  bucket.updated_ms = std::max(bucket.updated_ms, now_ms);
  if (bucket.units >= kUnitsPerToken) {
    bucket.units -= kUnitsPerToken;
    return true;
  }
  if (retry_after_ms != nullptr) {
    *retry_after_ms =
        (kUnitsPerToken - bucket.units + rates_.units_per_ms - 1) / rates_.units_per_ms;
  }
  return false;
}

void RateLimiter::EvictLocked(int64_t now_ms) {
  // A full bucket is the same as none.
  const Rates rates = rates_;
  EvictDownToThreeQuarters(
      buckets_, max_tracked_users_,
      [&](const Bucket& bucket) { return Refilled(rates, bucket, now_ms) == rates.capacity_units; },
      [](const Bucket& bucket) { return bucket.updated_ms; });
}

size_t RateLimiter::TrackedUsers() const {
  absl::MutexLock lock(&mu_);
  return buckets_.size();
}

}  // namespace logkv::server::auth
