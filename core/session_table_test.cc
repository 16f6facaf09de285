#include "core/session_table.h"

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
  EXPECT_EQ(*a, 1u);
  EXPECT_EQ(*b, 2u);
  EXPECT_TRUE(t.Expire(t0 + absl::Seconds(9)).empty());
  ASSERT_TRUE(t.KeepAlive(*a, t0 + absl::Seconds(9)).ok());   // now due at 19s
  EXPECT_TRUE(t.Expire(t0 + absl::Seconds(18)).empty());
  EXPECT_THAT(t.Expire(t0 + absl::Seconds(30)), ElementsAre(*a, *b));
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.KeepAlive(*a, t0 + absl::Seconds(31)).code(), absl::StatusCode::kNotFound);
}

TEST(SessionTableTest, KeepAliveAfterDeadlineIsRefused) {
  SessionTable t;
  uint64_t id = *t.Open("nic0", absl::Seconds(5), t0);
  // The lease ran out even though the reaper has not run yet.
  absl::Status s = t.KeepAlive(id, t0 + absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("session_id=0x1"));
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
  EXPECT_EQ(*t.Open("nic0", absl::Seconds(1), t0), 2u);
}

}  // namespace
}  // namespace iommu::core
