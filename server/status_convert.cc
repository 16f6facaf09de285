// SPDX-License-Identifier: Apache-2.0
#include "server/status_convert.h"

#include <string>

#include "server/limits.h"

namespace iommu::server {

static_assert(int(absl::StatusCode::kUnauthenticated) == int(grpc::StatusCode::UNAUTHENTICATED));
static_assert(int(absl::StatusCode::kDataLoss) == int(grpc::StatusCode::DATA_LOSS));
static_assert(int(absl::StatusCode::kResourceExhausted) ==
              int(grpc::StatusCode::RESOURCE_EXHAUSTED));

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      BoundedMessage(status.message(), kMaxStatusMessageBytes));
}

}  // namespace iommu::server
