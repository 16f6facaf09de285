// SPDX-License-Identifier: Apache-2.0
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

// A string is the client's to choose: what an error echoes of it is bounded,
// cut at a character boundary and marked with the whole length.
TEST(ErrorsTest, EchoedStringsAreBoundedAndMarked) {
  const std::string huge(10 << 20, 'a');
  const absl::Status s = FieldError(absl::StatusCode::kNotFound, "device", huge, "no such device");
  EXPECT_EQ(s.message(), "device=\"" + std::string(kMaxEchoedBytes, 'a') +
                             "\"...(10485760 bytes): no such device");
  // Exactly the bound is echoed whole.
  EXPECT_EQ(EchoString(std::string(kMaxEchoedBytes, 'b')),
            "\"" + std::string(kMaxEchoedBytes, 'b') + "\"");
  // A two-byte character straddling the bound is left out whole.
  std::string accented(kMaxEchoedBytes - 1, 'c');
  accented += "\xc3\xa9tail";
  EXPECT_EQ(EchoString(accented), "\"" + std::string(kMaxEchoedBytes - 1, 'c') + "\"...(" +
                                      std::to_string(accented.size()) + " bytes)");
  EXPECT_EQ(Utf8Prefix("\xc3\xa9", 1), "");
  EXPECT_EQ(Utf8Prefix("ab", 5), "ab");
}

}  // namespace
}  // namespace iommu::core
