// A latency histogram with log-linear buckets, in the manner of HdrHistogram:
// values below 2^kSubBucketBits are counted exactly; above, every power-of-two
// range is split into 2^(kSubBucketBits-1) equal buckets, so a bucket is never
// wider than 1/128 of its lower bound (0.78% relative error). Recording is a
// few shifts and one increment with no allocation, and two histograms merge by
// adding counts, so each load thread keeps its own and they are merged once at
// the end.
//
// Thread-safety: none; one histogram per thread, merged after the threads end.
#ifndef LOGKV_TOOLS_LATENCY_HISTOGRAM_H_
#define LOGKV_TOOLS_LATENCY_HISTOGRAM_H_

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>

namespace logkv::tools {

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 8;
  static constexpr uint64_t kSubBucketCount = uint64_t{1} << kSubBucketBits;  // exact range
  static constexpr uint64_t kSubBucketHalf = kSubBucketCount / 2;             // per octave
  // Values >= kSubBucketCount have their top bit at 8..63: 56 octaves above the exact range.
  static constexpr size_t kBucketCount = kSubBucketCount + (64 - kSubBucketBits) * kSubBucketHalf;
  static_assert(kSubBucketBits >= 2 && kSubBucketBits < 32);

  void Record(uint64_t value) {
    ++counts_[BucketOf(value)];
    ++count_;
    sum_ += value;
    min_ = std::min(min_, value);
    max_ = std::max(max_, value);
  }

  void Merge(const LatencyHistogram& other) {
    for (size_t i = 0; i < kBucketCount; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }

  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ == 0 ? 0 : min_; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / count_; }

  // The smallest recorded-equivalent value at or below which `percentile`
  // percent of the values lie. Like HdrHistogram it answers with the highest
  // value of the bucket, so a percentile is never understated, and clamps to
  // the exact extremes so p0 and p100 are the true min and max.
  // REQUIRES: 0 <= percentile <= 100.
  uint64_t ValueAtPercentile(double percentile) const {
    assert(percentile >= 0.0);
    assert(percentile <= 100.0);
    if (count_ == 0) return 0;
    const auto wanted = static_cast<uint64_t>(std::ceil(percentile / 100.0 * count_));
    const uint64_t target = std::clamp<uint64_t>(wanted, 1, count_);
    uint64_t seen = 0;
    for (size_t i = 0; i < kBucketCount; ++i) {
      seen += counts_[i];
      if (seen >= target) return std::clamp(HighestInBucket(i), min(), max_);
    }
    return max_;
  }

  static size_t BucketOf(uint64_t value) {
    if (value < kSubBucketCount) return static_cast<size_t>(value);
    const int top_bit = std::bit_width(value) - 1;  // >= kSubBucketBits
    const int shift = top_bit - (kSubBucketBits - 1);
    const uint64_t sub_bucket = value >> shift;  // in [kSubBucketHalf, kSubBucketCount)
    return static_cast<size_t>(kSubBucketCount + (shift - 1) * kSubBucketHalf +
                               (sub_bucket - kSubBucketHalf));
  }

  static uint64_t LowestInBucket(size_t bucket) {
    if (bucket < kSubBucketCount) return bucket;
    const size_t above = bucket - kSubBucketCount;
    const int shift = static_cast<int>(above / kSubBucketHalf) + 1;
    const uint64_t sub_bucket = kSubBucketHalf + above % kSubBucketHalf;
    return sub_bucket << shift;
  }

  static uint64_t HighestInBucket(size_t bucket) {
    if (bucket < kSubBucketCount) return bucket;
    const int shift = static_cast<int>((bucket - kSubBucketCount) / kSubBucketHalf) + 1;
    return LowestInBucket(bucket) + ((uint64_t{1} << shift) - 1);
  }

 private:
  std::array<uint64_t, kBucketCount> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t min_ = std::numeric_limits<uint64_t>::max();
  uint64_t max_ = 0;
};

}  // namespace logkv::tools

#endif  // LOGKV_TOOLS_LATENCY_HISTOGRAM_H_
