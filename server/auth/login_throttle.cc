#include "server/auth/login_throttle.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/auth/bounded_map.h"

namespace logkv::server::auth {
namespace {

std::string AccountKey(absl::string_view account) {
  return absl::StrCat("a", absl::AsciiStrToLower(account));
}
std::string AddressKey(absl::string_view address) { return absl::StrCat("i", address); }

}  // namespace

LoginThrottle::LoginThrottle(const LoginThrottleConfig& config)
    : config_([&] {
        LoginThrottleConfig clamped = config;
        clamped.first_delay_ms = std::max<int64_t>(1, clamped.first_delay_ms);
        clamped.max_delay_ms = std::max(clamped.first_delay_ms, clamped.max_delay_ms);
        clamped.max_tracked = std::max<size_t>(4, clamped.max_tracked);
        return clamped;
      }()) {}

int64_t LoginThrottle::AllowedFromMs(const Entry& entry, int64_t free_failures,
                                     int64_t now_ms) const {
  if (now_ms - entry.last_failure_ms >= config_.forget_after_ms) return now_ms;
  const int64_t excess = entry.failures - free_failures;
  if (excess <= 0) return now_ms;
  // first_delay * 2^(excess-1), capped; the shift is bounded so it cannot overflow.
  int64_t delay_ms = config_.first_delay_ms;
  for (int64_t i = 1; i < excess && delay_ms < config_.max_delay_ms; ++i) delay_ms *= 2;
  return entry.last_failure_ms + std::min(delay_ms, config_.max_delay_ms);
}

bool LoginThrottle::Allow(absl::string_view account, absl::string_view address, int64_t now_ms,
                          int64_t* retry_after_ms) {
  int64_t allowed_from_ms = now_ms;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(AccountKey(account)); it != entries_.end()) {
      allowed_from_ms = std::max(
          allowed_from_ms, AllowedFromMs(it->second, config_.free_failures_per_account, now_ms));
    }
    if (!address.empty()) {
      if (auto it = entries_.find(AddressKey(address)); it != entries_.end()) {
        allowed_from_ms = std::max(
            allowed_from_ms, AllowedFromMs(it->second, config_.free_failures_per_address, now_ms));
      }
    }
  }
  const int64_t wait_ms = allowed_from_ms - now_ms;
  if (retry_after_ms != nullptr) *retry_after_ms = wait_ms > 0 ? wait_ms : 0;
  return wait_ms <= 0;
}

void LoginThrottle::RecordFailure(absl::string_view account, absl::string_view address,
                                  int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  if (entries_.size() + 2 > config_.max_tracked) EvictLocked(now_ms);
  auto note = [&](std::string key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Entry& entry = entries_[std::move(key)];
    if (now_ms - entry.last_failure_ms >= config_.forget_after_ms) entry.failures = 0;
    ++entry.failures;
    entry.last_failure_ms = std::max(entry.last_failure_ms, now_ms);
  };
  note(AccountKey(account));
  if (!address.empty()) note(AddressKey(address));
}

void LoginThrottle::RecordSuccess(absl::string_view account) {
  absl::MutexLock lock(&mu_);
  entries_.erase(AccountKey(account));
}

void LoginThrottle::EvictLocked(int64_t now_ms) {
  EvictDownToThreeQuarters(
      entries_, config_.max_tracked,
      [&](const Entry& entry) { return now_ms - entry.last_failure_ms >= config_.forget_after_ms; },
      [](const Entry& entry) { return entry.last_failure_ms; });
}

size_t LoginThrottle::Tracked() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace logkv::server::auth
