#include "core/base/errors.h"

#include "gtest/gtest.h"

namespace iommu::core {
namespace {

TEST(ErrorsTest, NamesFieldAndValue) {
  absl::Status s = InvalidField("size_bytes", 0, "must be non-zero");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "size_bytes=0: must be non-zero");
  s = OutOfRangeField("iova", 0x1000000000000, "beyond ias 48");
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s.message(), "iova=0x1000000000000: beyond ias 48");
  s = FieldError(absl::StatusCode::kNotFound, "device", "nic0", "no such device");
  EXPECT_EQ(s.message(), "device=\"nic0\": no such device");
}

}  // namespace
}  // namespace iommu::core
