// SPDX-License-Identifier: Apache-2.0
// The one place the SDK turns gRPC statuses back into absl::Status (absl
// codes equal gRPC codes), and its own error constructors, which use the
// project's format "<field>=<value>: <why>" (numbers in hex, strings quoted).
#ifndef IOMMU_CLIENT_STATUS_H_
#define IOMMU_CLIENT_STATUS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"
#include "iommu/v1/dma.pb.h"

namespace iommu::client {

// Same code, the server's message unchanged. Codes outside 0..16 become
// UNKNOWN with the original number in the message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// The status of one operation of a Batch response.
absl::Status BatchResultStatus(const iommu::v1::BatchResult& result);

absl::Status FieldStatus(absl::StatusCode code, absl::string_view field, uint64_t value,
                         absl::string_view why);
absl::Status FieldStatus(absl::StatusCode code, absl::string_view field, absl::string_view value,
                         absl::string_view why);
inline absl::Status InvalidField(absl::string_view field, uint64_t value, absl::string_view why) {
  return FieldStatus(absl::StatusCode::kInvalidArgument, field, value, why);
}
inline absl::Status InvalidField(absl::string_view field, absl::string_view value,
                                 absl::string_view why) {
  return FieldStatus(absl::StatusCode::kInvalidArgument, field, value, why);
}
inline absl::Status InvalidField(absl::string_view field, const char* value,
                                 absl::string_view why) {
  return FieldStatus(absl::StatusCode::kInvalidArgument, field, absl::string_view(value), why);
}

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_STATUS_H_
