// Per-user token buckets (REST.md: default 100 requests a minute, burst 10).
// A bucket holds up to `burst` tokens and refills continuously at
// requests_per_minute / 60000 tokens a millisecond; a request takes one token
// or is refused with the time until one will be there. Arithmetic is in
// integers (a token is 60000 units; a millisecond adds requests_per_minute
// units), so refill and retry times are exact.
//
// Memory is bounded: once max_tracked_users buckets exist, buckets that have
// refilled completely are dropped (a full bucket is the same as no bucket);
// if that frees too little, the buckets idle longest go too, which at worst
// gives those users a fresh burst.
//
// The rates may change at run time (Reconfigure, on logkvd's SIGHUP):
// buckets keep their tokens, cut to the new burst.
//
// Thread-safety: Allow and Reconfigure may be called from any thread at once. Time comes from
// the caller, so tests need no clock and loops can reuse the time they have.
#ifndef LOGKV_SERVER_AUTH_RATE_LIMITER_H_
#define LOGKV_SERVER_AUTH_RATE_LIMITER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace logkv::server::auth {

struct RateLimitConfig {
  int64_t requests_per_minute = 100;   // <= 0 turns the limiter off: Allow always says yes
  int64_t burst = 10;                  // bucket capacity in requests; at least 1 is used
  size_t max_tracked_users = 100'000;  // buckets kept before eviction starts (>= 4 is used)
};

// Beyond these the unit arithmetic could overflow; larger values are clamped.
inline constexpr int64_t kMaxRequestsPerMinute = 1'000'000'000;
inline constexpr int64_t kMaxBurst = 1'000'000'000;

class RateLimiter {
 public:
  explicit RateLimiter(const RateLimitConfig& config);
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Whether user_id may make a request at now_ms (any monotonic-enough
  // millisecond clock; a step back is treated as no time passing). When not,
  // *retry_after_ms (if not null) is set to how long until a token is there,
  // at least 1; when yes it is set to 0.
  bool Allow(uint64_t user_id, int64_t now_ms, int64_t* retry_after_ms);

  // New rates from now on (max_tracked_users is kept as constructed).
  void Reconfigure(int64_t requests_per_minute, int64_t burst);
  // The rate in force, 0 when off.
  int64_t requests_per_minute() const;

  // Buckets held now (for metrics and tests).
  size_t TrackedUsers() const;

 private:
  // One token in bucket units: a minute in milliseconds, so that a
  // millisecond refills requests_per_minute units.
  static constexpr int64_t kUnitsPerToken = 60'000;

  struct Bucket {
    int64_t units = 0;  // tokens * kUnitsPerToken, in [0, capacity_units_]
    int64_t updated_ms = 0;
  };

  struct Rates {
    int64_t units_per_ms = 0;  // requests_per_minute; 0 when the limiter is off
    int64_t capacity_units = 0;
  };
  static Rates RatesFor(int64_t requests_per_minute, int64_t burst);

  // Units of bucket after refilling it up to now_ms.
  static int64_t Refilled(const Rates& rates, const Bucket& bucket, int64_t now_ms);
  void EvictLocked(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_tracked_users_;
  // rates_.units_per_ms, read without the lock so that a limiter that is off
  // costs no lock per request.
  std::atomic<int64_t> units_per_ms_;

  mutable absl::Mutex mu_;
  Rates rates_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

}  // namespace logkv::server::auth

#endif  // LOGKV_SERVER_AUTH_RATE_LIMITER_H_
