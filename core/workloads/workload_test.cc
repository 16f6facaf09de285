// SPDX-License-Identifier: Apache-2.0
#include "core/workloads/workload.h"

#include "gtest/gtest.h"

namespace iommu::workloads {
namespace {

TEST(RngTest, MatchesTheSpecifiedSequence) {
  Rng rng(42);
  EXPECT_EQ(rng.Next(), 45454805674ull);
  EXPECT_EQ(rng.Next(), 11532217803599905471ull);
  EXPECT_EQ(rng.Next(), 10021416941527320954ull);
  EXPECT_EQ(rng.Next(), 2899061411254629736ull);
  EXPECT_EQ(rng.Next(), 5661411637479084162ull);
}

TEST(RngTest, FirstSizesOfEachWorkload) {
  static constexpr uint64_t kW1Sizes[6] = {1, 2, 4, 8, 16, 32};
  Rng w1(42);
  for (uint64_t want : {16, 2, 1, 16, 1, 8, 2, 1}) EXPECT_EQ(kW1Sizes[w1.Next() % 6], want);
  Rng w2(42);
  for (uint64_t want : {171, 192, 123, 105, 131, 36, 212, 51}) EXPECT_EQ(w2.Next() % 256 + 1, want);
  Rng w3(42);
  for (uint64_t want : {84650, 131775, 84346, 259432, 4226, 6179, 168147, 237874})
    EXPECT_EQ(w3.Next() % 262144, want);
}

TEST(MedianTest, OddAndEven) {
  EXPECT_EQ(Median({5, 1, 3}), 3);
  EXPECT_EQ(Median({4, 1, 3, 2}), 2.5);
}

TEST(LineTest, FormatsNameMedianAndExtrasInOrder) {
  Line line{"W9_demo", 12.345, {}};
  line.Add("opseq", "8dc430fa99eaf855");
  line.Add("failures", "0");
  EXPECT_EQ(line.Format(), "W9_demo ns_per_op=12.35 opseq=8dc430fa99eaf855 failures=0");
}

}  // namespace
}  // namespace iommu::workloads
