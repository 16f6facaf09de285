// SPDX-License-Identifier: Apache-2.0
#include "core/broker/session_table.h"

#include <set>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time t0 = absl::FromUnixSeconds(1'000'000);

TEST(SessionTableTest, LeaseExpiresWithoutKeepAlive) {
  SessionTable t;
  auto a = t.Open("nic0", absl::Seconds(10), t0);
  auto b = t.Open("gpu0", absl::Seconds(30), t0);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_TRUE(t.Expire(t0 + absl::Seconds(9)).empty());
  ASSERT_TRUE(t.KeepAlive(*a, t0 + absl::Seconds(9)).ok());  // now due at 19s
  EXPECT_TRUE(t.Expire(t0 + absl::Seconds(18)).empty());
  EXPECT_THAT(t.Expire(t0 + absl::Seconds(30)), ElementsAre(*a, *b));  // by deadline
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.KeepAlive(*a, t0 + absl::Seconds(31)).code(), absl::StatusCode::kNotFound);
}

TEST(SessionTableTest, KeepAliveAfterDeadlineIsRefused) {
  SessionTable t;
  uint64_t id = *t.Open("nic0", absl::Seconds(5), t0);
  // The lease ran out even though the reaper has not run yet.
  absl::Status s = t.KeepAlive(id, t0 + absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat("session_id=%#x", id)));
}

TEST(SessionTableTest, CloseAndBadInput) {
  SessionTable t;
  uint64_t id = *t.Open("", absl::Seconds(5), t0);
  EXPECT_EQ(t.Find(id)->device, "");
  ASSERT_TRUE(t.Close(id).ok());
  EXPECT_EQ(t.Close(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.Find(id), nullptr);
  EXPECT_TRUE(t.Expire(t0 + absl::Hours(1)).empty());
  auto bad = t.Open("nic0", absl::ZeroDuration(), t0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("ttl="));
  EXPECT_EQ(t.Open("nic0", absl::Hours(25), t0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Ids are never reused.
  EXPECT_NE(*t.Open("nic0", absl::Seconds(1), t0), id);
}

TEST(SessionTableTest, IdsAreTheKeyedPermutationOfACounter) {
  // Two tables with one key issue the same ids (what a restored store
  // relies on); another key gives unrelated ones, none of them small.
  SessionTable a(IdPermutation(7, 9)), b(IdPermutation(7, 9)), c(IdPermutation(7, 10));
  std::set<uint64_t> seen;
  for (int i = 0; i < 200; ++i) {
    const uint64_t x = *a.Open("nic0", absl::Seconds(5), t0);
    EXPECT_EQ(*b.Open("nic0", absl::Seconds(5), t0), x);
    EXPECT_NE(*c.Open("nic0", absl::Seconds(5), t0), x);
    EXPECT_GT(x, uint64_t{1} << 32);  // fails with probability 2^-32 per id
    EXPECT_TRUE(seen.insert(x).second);
    ASSERT_TRUE(a.Close(x).ok());
  }
}

TEST(SessionTableTest, PerDeviceQuotaCountsLiveSessions) {
  SessionTable t;
  const uint64_t a = *t.Open("nic0", absl::Seconds(5), t0, 2);
  ASSERT_TRUE(t.Open("nic0", absl::Seconds(5), t0, 2).ok());
  const auto third = t.Open("nic0", absl::Seconds(5), t0, 2);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("device=\"nic0\""));
  EXPECT_TRUE(t.Open("gpu0", absl::Seconds(5), t0, 2).ok());  // another device's count
  EXPECT_EQ(t.CountFor("nic0"), 2u);
  ASSERT_TRUE(t.Close(a).ok());
  EXPECT_TRUE(t.Open("nic0", absl::Seconds(5), t0, 2).ok());
  EXPECT_EQ(t.Expire(t0 + absl::Seconds(5)).size(), 3u);
  EXPECT_EQ(t.CountFor("nic0"), 0u);
}

}  // namespace
}  // namespace iommu::core
