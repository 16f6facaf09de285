// SPDX-License-Identifier: Apache-2.0
#include "client/health.h"

#include <string>

#include "gtest/gtest.h"

namespace iommu::client {
namespace {

using internal::DecodeHealthCheckResponse;
using internal::EncodeHealthCheckRequest;

TEST(HealthWireTest, RequestEncodesTheServiceAsField1) {
  EXPECT_EQ(EncodeHealthCheckRequest(""), "");
  EXPECT_EQ(EncodeHealthCheckRequest("iommu.v1.Dma"), std::string("\x0a\x0c", 2) + "iommu.v1.Dma");
  // A name of 200 bytes needs a two-byte length varint (0xc8 0x01).
  const std::string long_name(200, 'x');
  EXPECT_EQ(EncodeHealthCheckRequest(long_name), std::string("\x0a\xc8\x01", 3) + long_name);
}

TEST(HealthWireTest, ResponseDecodesEveryStatus) {
  EXPECT_EQ(*DecodeHealthCheckResponse(""), HealthStatus::kUnknown);  // proto3 default
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x08\x01", 2)), HealthStatus::kServing);
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x08\x02", 2)), HealthStatus::kNotServing);
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x08\x03", 2)), HealthStatus::kServiceUnknown);
  // Unknown fields are skipped, as any proto parser would.
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x12\x02hi\x08\x01\x18\x05", 8)),
            HealthStatus::kServing);
  EXPECT_EQ(HealthStatusName(HealthStatus::kNotServing), "NOT_SERVING");
}

TEST(HealthWireTest, MalformedResponsesAreErrors) {
  EXPECT_EQ(DecodeHealthCheckResponse(std::string("\x08", 1)).status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(DecodeHealthCheckResponse(std::string("\x12\x05hi", 4)).status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(DecodeHealthCheckResponse(std::string("\x08\x09", 2)).status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(DecodeHealthCheckResponse(std::string("\x0d\x00\x00\x00\x00", 5)).status().code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace iommu::client
