// SPDX-License-Identifier: Apache-2.0
#include "server/heap_trimmer.h"

#include <gtest/gtest.h>

namespace iommu::server {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

TEST(HeapTrimmerTest, SmallCallsNeverTrim) {
  HeapTrimmer t;
  for (int i = 0; i < 100; ++i) t.Finished(HeapTrimmer::kLargeBytes - 1, kT0);
  EXPECT_FALSE(t.MaybeTrim(kT0 + absl::Hours(1)));
  EXPECT_EQ(t.trims(), 0u);
}

TEST(HeapTrimmerTest, ALargeCallTrimsOnceItHasSettled) {
  HeapTrimmer t;
  t.Finished(HeapTrimmer::kLargeBytes, kT0);
  EXPECT_FALSE(t.MaybeTrim(kT0 + HeapTrimmer::kSettle - absl::Milliseconds(1)));
  EXPECT_TRUE(t.MaybeTrim(kT0 + HeapTrimmer::kSettle));
  EXPECT_EQ(t.trims(), 1u);
  // Once: nothing new since.
  EXPECT_FALSE(t.MaybeTrim(kT0 + absl::Hours(1)));
  EXPECT_EQ(t.trims(), 1u);
}

TEST(HeapTrimmerTest, LargeCallsThatKeepComingTrimAtLeastEveryMaxDelay) {
  HeapTrimmer t;
  const absl::Duration step = HeapTrimmer::kSettle / 2;
  int trims = 0;
  absl::Time now = kT0;
  for (; now < kT0 + 3 * HeapTrimmer::kMaxDelay; now += step) {
    t.Finished(HeapTrimmer::kLargeBytes, now);
    if (t.MaybeTrim(now + step / 2)) ++trims;
  }
  // Never settled, yet trimmed about once per kMaxDelay.
  EXPECT_GE(trims, 2);
  EXPECT_LE(trims, 3);
  EXPECT_EQ(t.trims(), static_cast<uint64_t>(trims));
}

}  // namespace
}  // namespace iommu::server
