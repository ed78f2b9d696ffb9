// Hybrid logical clock timestamps: (unix milliseconds << 16) | logical counter.
// They follow wall-clock time but never go backwards and never repeat, and a
// node that observes a timestamp from elsewhere stamps later ones above it.
//
// Thread-safety: all methods are safe from any thread (one atomic word).
#ifndef LOGKV_ENGINE_HLC_H_
#define LOGKV_ENGINE_HLC_H_

#include <atomic>
#include <cstdint>

#include "engine/engine.h"

namespace logkv::engine {

class HybridClock {
 public:
  static constexpr int kLogicalBits = kTimestampLogicalBits;

  // clock must outlive this HybridClock.
  explicit HybridClock(Clock* clock) : clock_(clock) {}

  // A timestamp greater than every one returned or observed before.
  uint64_t Now();
  // Moves the clock past a timestamp seen elsewhere (a replica's, a record's).
  void Observe(uint64_t timestamp);

  static int64_t PhysicalMs(uint64_t timestamp) { return TimestampUnixMs(timestamp); }
  static uint64_t FromPhysicalMs(int64_t unix_ms) { return TimestampAtUnixMs(unix_ms); }

 private:
  Clock* const clock_;
  std::atomic<uint64_t> last_{0};
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_HLC_H_
