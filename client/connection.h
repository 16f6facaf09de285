// SPDX-License-Identifier: Apache-2.0
// Internal: the channel and stubs one Client and its copies share.
// Thread-safe: immutable after Connect; gRPC channels and stubs are thread-safe.
#ifndef IOMMU_CLIENT_CONNECTION_H_
#define IOMMU_CLIENT_CONNECTION_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "client/options.h"
#include "grpcpp/channel.h"
#include "iommu/v1/device.grpc.pb.h"
#include "iommu/v1/dma.grpc.pb.h"
#include "iommu/v1/domain.grpc.pb.h"
#include "iommu/v1/memory.grpc.pb.h"
#include "iommu/v1/session.grpc.pb.h"
#include "iommu/v1/stats.grpc.pb.h"

namespace iommu::client::internal {

struct Connection {
  Options options;
  std::string authorization;  // "Bearer <token>" or empty
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<iommu::v1::Dma::Stub> dma;
  std::unique_ptr<iommu::v1::Memory::Stub> memory;
  std::unique_ptr<iommu::v1::Domains::Stub> domains;
  std::unique_ptr<iommu::v1::Devices::Stub> devices;
  std::unique_ptr<iommu::v1::Sessions::Stub> sessions;
  std::unique_ptr<iommu::v1::Stats::Stub> stats;
};

// The metadata key carrying a call's session id.
inline constexpr char kSessionMetadataKey[] = "iommu-session-id";

// RESOURCE_EXHAUSTED naming limits.max_message_bytes when a request of
// `request_bytes` could not be sent (the daemon would refuse it unread).
absl::Status CheckRequestBytes(const Options& options, size_t request_bytes);

}  // namespace iommu::client::internal

#endif  // IOMMU_CLIENT_CONNECTION_H_
