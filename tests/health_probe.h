// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_TESTS_HEALTH_PROBE_H_
#define IOMMU_TESTS_HEALTH_PROBE_H_

// grpc.health.v1.Health/Check through a generic stub on a raw channel, with
// the SDK's wire codec (client/health.h), for tests that must see exactly
// what a probe sees (any channel, any method name).

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "client/health.h"

namespace iommu::testing {

inline grpc::ByteBuffer HealthRequest(const std::string& service) {
  grpc::Slice slice(client::internal::EncodeHealthCheckRequest(service));
  return grpc::ByteBuffer(&slice, 1);
}

// The serving status in a HealthCheckResponse (1 = SERVING, 2 = NOT_SERVING),
// or 0 when it does not decode.
inline int DecodeHealth(const grpc::ByteBuffer& response) {
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  absl::StatusOr<client::HealthStatus> decoded = client::internal::DecodeHealthCheckResponse(bytes);
  return decoded.ok() ? static_cast<int>(*decoded) : 0;
}

// One Health/Check (or any unary `method` sent the same request) with a
// 10 s deadline: the serving status, or -code when the call fails.
inline int HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                       const std::string& method = "/grpc.health.v1.Health/Check") {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&ctx, method, HealthRequest(service), &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  if (!status.ok()) return -static_cast<int>(status.error_code());
  return DecodeHealth(response);
}

}  // namespace iommu::testing

#endif  // IOMMU_TESTS_HEALTH_PROBE_H_
