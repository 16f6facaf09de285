// SPDX-License-Identifier: Apache-2.0
#include "client/status.h"

#include "gtest/gtest.h"

namespace iommu::client {
namespace {

TEST(FromGrpcStatusTest, EveryCanonicalCodeMapsToTheSameAbslCode) {
  for (int code = 0; code <= 16; ++code) {
    const grpc::Status in(static_cast<grpc::StatusCode>(code),
                          code == 0 ? "" : "size_bytes=0x0: must be non-zero");
    const absl::Status out = FromGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(out.code()), code);
    if (code != 0) {
      EXPECT_EQ(out.message(), "size_bytes=0x0: must be non-zero");
    }
  }
}

// 20 is inside grpc::StatusCode's value range (0..31), so constructing it is defined.
TEST(FromGrpcStatusTest, NonCanonicalCodeBecomesUnknownAndKeepsTheNumber) {
  const absl::Status out = FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "odd"));
  EXPECT_EQ(out.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(out.message(), "non-canonical status code 20: odd");
}

TEST(BatchResultStatusTest, CodeAndMessage) {
  iommu::v1::BatchResult result;
  EXPECT_TRUE(BatchResultStatus(result).ok());
  result.set_code(5);
  result.set_message("dma_addr=0x1000: no mapping");
  const absl::Status s = BatchResultStatus(result);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "dma_addr=0x1000: no mapping");
}

TEST(FieldStatusTest, NumbersInHexStringsQuoted) {
  EXPECT_EQ(InvalidField("iova", uint64_t{0x1234}, "misaligned").message(),
            "iova=0x1234: misaligned");
  EXPECT_EQ(InvalidField("target", "x", "bad").message(), "target=\"x\": bad");
  EXPECT_EQ(FieldStatus(absl::StatusCode::kNotFound, "f", uint64_t{0}, "w").code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace iommu::client
