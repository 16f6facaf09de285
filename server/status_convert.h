// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_STATUS_CONVERT_H_
#define IOMMU_SERVER_STATUS_CONVERT_H_

// The one place a core absl::Status becomes a grpc::Status. absl's codes are
// gRPC's codes by value, so the code passes through unchanged and the message
// (which names the offending field and value) is kept verbatim up to
// kMaxStatusMessageBytes (server/limits.h), cut and marked beyond.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace iommu::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace iommu::server

#endif  // IOMMU_SERVER_STATUS_CONVERT_H_
