// SPDX-License-Identifier: Apache-2.0
// The standard gRPC health check (grpc.health.v1.Health/Check) against
// iommud, for probes (`iommuctl health`, container health checks) that must
// not depend on the broker's own services answering.
//
// Debian ships no generated health stubs, so the two one-field messages are
// encoded here: HealthCheckRequest{string service = 1},
// HealthCheckResponse{ServingStatus status = 1}.
#ifndef IOMMU_CLIENT_HEALTH_H_
#define IOMMU_CLIENT_HEALTH_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/client.h"

namespace iommu::client {

// grpc.health.v1.HealthCheckResponse.ServingStatus, same numbers.
enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

// "SERVING", "NOT_SERVING", ...
absl::string_view HealthStatusName(HealthStatus status);

// Asks the daemon for the serving status of `service` ("" is the whole
// server; otherwise a full service name such as "iommu.v1.Dma"). The call
// carries the client's credentials and default deadline. NOT_FOUND when the
// daemon does not know the service; UNAVAILABLE when it cannot be reached.
absl::StatusOr<HealthStatus> CheckHealth(const Client& client, absl::string_view service = "");

namespace internal {
// The wire forms, exposed for tests.
std::string EncodeHealthCheckRequest(absl::string_view service);
absl::StatusOr<HealthStatus> DecodeHealthCheckResponse(absl::string_view bytes);
}  // namespace internal

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_HEALTH_H_
