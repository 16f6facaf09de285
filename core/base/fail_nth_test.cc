// SPDX-License-Identifier: Apache-2.0
#include "core/base/fail_nth.h"

#include <thread>

#include "gtest/gtest.h"

namespace iommu::core {
namespace {

TEST(FailNthTest, DisarmedPointsNeverFailNorCount) {
  fail_nth::Disarm();
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kPgtableTable));
}

TEST(FailNthTest, FailsExactlyTheNthHitOfAnyPoint) {
  fail_nth::ScopedArm arm(3);
  EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kMemoryPages));
  EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kPgtableTable));
  EXPECT_TRUE(fail_nth::ShouldFail(FailPoint::kIovaRange));
  EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kIovaRange));
  const fail_nth::Result r = fail_nth::Get();
  EXPECT_EQ(r.hits, 4u);
  ASSERT_TRUE(r.failed.has_value());
  EXPECT_EQ(*r.failed, FailPoint::kIovaRange);
  EXPECT_EQ(r.hits_by_point[int(FailPoint::kIovaRange)], 2u);
  EXPECT_EQ(r.hits_by_point[int(FailPoint::kMemoryPages)], 1u);
}

TEST(FailNthTest, OnePointCountsOnlyItsOwnHits) {
  fail_nth::ScopedArm arm(2, FailPoint::kSessionRecord);
  EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kSessionRecord));
  EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kMappingRecord));
  EXPECT_TRUE(fail_nth::ShouldFail(FailPoint::kSessionRecord));
  const fail_nth::Result r = fail_nth::Get();
  EXPECT_EQ(r.hits, 2u);
  EXPECT_EQ(r.hits_by_point[int(FailPoint::kMappingRecord)], 1u);
  EXPECT_EQ(r.failed, FailPoint::kSessionRecord);
}

TEST(FailNthTest, NoFailureWhenFewerHitsThanN) {
  {
    fail_nth::ScopedArm arm(5);
    EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kBufferRecord));
    EXPECT_FALSE(fail_nth::Get().failed.has_value());
    EXPECT_EQ(fail_nth::Get().hits, 1u);
  }
  // Disarmed at scope end: nothing counts any more.
  EXPECT_FALSE(fail_nth::ShouldFail(FailPoint::kBufferRecord));
  EXPECT_EQ(fail_nth::Get().hits, 1u);
}

TEST(FailNthTest, ArmingIsPerThread) {
  fail_nth::ScopedArm arm(1);
  bool other = true;
  std::thread([&] { other = fail_nth::ShouldFail(FailPoint::kExportRecord); }).join();
  EXPECT_FALSE(other);
  EXPECT_EQ(fail_nth::Get().hits, 0u);
}

TEST(FailNthTest, ExhaustedNamesFieldValueAndPoint) {
  const absl::Status s =
      fail_nth::Exhausted(FailPoint::kImportRecord, "export_id", 7, "no room for an import");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "export_id=0x7: no room for an import (injected failure at import.record)");
  EXPECT_EQ(FailPointName(FailPoint::kSmmuContext), "smmu.context");
}

}  // namespace
}  // namespace iommu::core
