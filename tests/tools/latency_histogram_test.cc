// The load tool's histogram: bucket boundaries, precision, percentiles, merge.
#include "tools/latency_histogram.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace logkv::tools {
namespace {

TEST(LatencyHistogramTest, BucketsTileTheValueRangeWithoutGaps) {
  // Every bucket starts one past the previous one's end, up to 2^64 - 1.
  uint64_t next = 0;
  for (size_t bucket = 0; bucket < LatencyHistogram::kBucketCount; ++bucket) {
    ASSERT_EQ(LatencyHistogram::LowestInBucket(bucket), next) << bucket;
    ASSERT_LE(LatencyHistogram::LowestInBucket(bucket), LatencyHistogram::HighestInBucket(bucket));
    next = LatencyHistogram::HighestInBucket(bucket) + 1;
  }
  EXPECT_EQ(next, 0u) << "the last bucket ends at 2^64 - 1";
}

TEST(LatencyHistogramTest, EveryValueFallsInsideItsBucketWithinPrecision) {
  std::mt19937_64 random(11);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t value = random() >> (random() % 64);
    const size_t bucket = LatencyHistogram::BucketOf(value);
    ASSERT_LT(bucket, LatencyHistogram::kBucketCount);
    const uint64_t low = LatencyHistogram::LowestInBucket(bucket);
    const uint64_t high = LatencyHistogram::HighestInBucket(bucket);
    ASSERT_LE(low, value);
    ASSERT_LE(value, high);
    // Width never beyond 1/128 of the bucket's start (exact below 256).
    if (low >= LatencyHistogram::kSubBucketCount) {
      ASSERT_LE(high - low, low / 128);
    }
  }
}

TEST(LatencyHistogramTest, PercentilesOfAKnownDistribution) {
  LatencyHistogram histogram;
  for (uint64_t value = 1; value <= 100000; ++value) histogram.Record(value);
  EXPECT_EQ(histogram.count(), 100000u);
  EXPECT_EQ(histogram.min(), 1u);
  EXPECT_EQ(histogram.max(), 100000u);
  EXPECT_DOUBLE_EQ(histogram.mean(), 50000.5);
  for (double percentile : {50.0, 90.0, 99.0, 99.9}) {
    const double exact = percentile * 1000.0;
    const double reported = static_cast<double>(histogram.ValueAtPercentile(percentile));
    EXPECT_GE(reported, exact) << "never understated, p" << percentile;
    EXPECT_LE(reported, exact * 1.008) << "within a bucket's width, p" << percentile;
  }
  EXPECT_EQ(histogram.ValueAtPercentile(0), 1u);
  EXPECT_EQ(histogram.ValueAtPercentile(100), 100000u);
}

TEST(LatencyHistogramTest, MergeEqualsRecordingEverythingInOne) {
  LatencyHistogram a, b, all;
  std::mt19937_64 random(5);
  for (int i = 0; i < 20000; ++i) {
    const uint64_t value = random() % 5'000'000;
    (i % 2 == 0 ? a : b).Record(value);
    all.Record(value);
  }
  a.Merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.min(), all.min());
  EXPECT_EQ(a.max(), all.max());
  for (double percentile : {1.0, 50.0, 95.0, 99.0, 99.9}) {
    EXPECT_EQ(a.ValueAtPercentile(percentile), all.ValueAtPercentile(percentile));
  }
}

TEST(LatencyHistogramTest, EmptyHistogramAnswersZero) {
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.ValueAtPercentile(99), 0u);
  EXPECT_EQ(histogram.min(), 0u);
}

}  // namespace
}  // namespace logkv::tools
