#include "engine/hlc.h"

#include <algorithm>

#include "engine/engine.h"

namespace logkv::engine {

uint64_t HybridClock::Now() {
  const uint64_t physical = FromPhysicalMs(clock_->NowUnixMs());
  uint64_t last = last_.load(std::memory_order_relaxed);
  while (true) {
    const uint64_t next = std::max(physical, last + 1);
    if (last_.compare_exchange_weak(last, next, std::memory_order_relaxed)) return next;
  }
}

void HybridClock::Observe(uint64_t timestamp) {
  uint64_t last = last_.load(std::memory_order_relaxed);
  while (timestamp > last &&
         !last_.compare_exchange_weak(last, timestamp, std::memory_order_relaxed)) {
  }
}

}  // namespace logkv::engine
