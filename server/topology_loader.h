// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_TOPOLOGY_LOADER_H_
#define IOMMU_SERVER_TOPOLOGY_LOADER_H_

// `iommud --topology=FILE`: an iommu.v1.Topology in protobuf text format,
// converted to the core's Topology. An empty path means the built-in
// core::DefaultTopology(). Validation proper is core::ValidateTopology's
// (run by Broker::Create).

#include <string>

#include "absl/status/statusor.h"
#include "core/broker/topology.h"

namespace iommu::server {

// NOT_FOUND naming `topology` when the file cannot be read; INVALID_ARGUMENT
// with the parser's line:column message for bad text format; the conversion
// errors of proto_convert.h.
absl::StatusOr<core::Topology> LoadTopology(const std::string& path);

// The same from text already in memory (tests).
absl::StatusOr<core::Topology> ParseTopology(const std::string& textproto);

}  // namespace iommu::server

#endif  // IOMMU_SERVER_TOPOLOGY_LOADER_H_
