// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_PROTO_CONVERT_H_
#define IOMMU_SERVER_PROTO_CONVERT_H_

// The one conversion module between the iommu.v1 protobuf messages and the
// core's structs. Request conversions validate what only the wire can get
// wrong (an *_UNSPECIFIED or unknown enum value, a MemRef naming no memory)
// and return INVALID_ARGUMENT naming the field and value; every other check
// is the core's. A request's own `device` field is not consulted here: auth
// resolves the device a call acts as, and the DMA calls take it as a
// parameter of its own (Translate, whose device an admin may replace by
// smmu + stream_id, gets it as `device`). Each request message has exactly
// one conversion, used by the unary RPC and by Batch alike.
// Stateless functions; thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/broker/broker.h"
#include "core/broker/broker_types.h"
#include "core/broker/topology.h"
#include "iommu/v1/device.pb.h"
#include "iommu/v1/dma.pb.h"
#include "iommu/v1/domain.pb.h"
#include "iommu/v1/memory.pb.h"
#include "iommu/v1/stats.pb.h"
#include "iommu/v1/topology.pb.h"

namespace iommu::server {

// --- requests: proto -> core ----------------------------------------------------
absl::StatusOr<core::DmaDirection> FromProto(v1::DmaDirection direction);
absl::StatusOr<core::Placement> FromProto(v1::Placement placement);
absl::StatusOr<core::DomainType> FromProto(v1::DomainType type);
absl::StatusOr<core::SgMode> FromProto(v1::SgMode mode);
absl::StatusOr<core::AccessKind> FromProto(v1::AccessKind access);
core::DmaAttrs FromProto(const v1::DmaAttrs& attrs);
// `field` prefixes the error's field name ("mem", "segments[3]").
// Field names are built only for an error.
absl::StatusOr<core::MemRef> FromProto(const v1::MemRef& mem, absl::string_view field);

absl::StatusOr<core::MapRequest> FromProto(const v1::MapRequest& request);
core::UnmapRequest FromProto(const v1::UnmapRequest& request);
absl::StatusOr<core::MapAtRequest> FromProto(const v1::MapAtRequest& request);
absl::StatusOr<core::MapSgRequest> FromProto(const v1::MapSgRequest& request);
absl::StatusOr<core::AllocRequest> FromProto(const v1::AllocRequest& request);
core::MsiCookieRequest FromProto(const v1::MsiCookieRequest& request);
absl::StatusOr<core::CreateDomainRequest> FromProto(const v1::CreateDomainRequest& request);
absl::StatusOr<core::TranslateRequest> FromProto(const v1::TranslateRequest& request,
                                                 const std::string& device);
absl::StatusOr<core::TranslateRequest> FromProto(const v1::TranslateOp& request,
                                                 const std::string& device);

// --- results: core -> proto -------------------------------------------------------
void ToProto(const core::MapResult& result, v1::MapResponse* out);
void ToProto(const core::MapSgResult& result, v1::MapSgResponse* out);
void ToProto(const core::AllocResult& result, v1::AllocResponse* out);
void ToProto(const core::SgTableResult& result, v1::GetSgTableResponse* out);
void ToProto(const core::MsiCookieResult& result, v1::MsiCookieResponse* out);
void ToProto(const core::BufferInfo& buffer, v1::Buffer* out);
void ToProto(const core::DomainInfo& domain, v1::Domain* out);
void ToProto(const core::IovaRangesResult& ranges, v1::GetIovaRangesResponse* out);
void ToProto(const core::PgtableMapping& leaf, v1::PageTableLeaf* out);
void ToProto(const core::TranslateResult& result, v1::TranslateResponse* out);
void ToProto(const core::TranslateResult& result, v1::TranslateOpResult* out);
void ToProto(const core::DeviceInfo& device, v1::DeviceInfo* out);
void ToProto(const core::FaultRecord& record, v1::FaultRecord* out);
void ToProto(const core::BrokerStats& stats, v1::GetStatsResponse* out);
v1::FaultType FaultTypeToProto(core::FaultType type);

// --- topology (proto_convert_topology.cc) -------------------------------------------
// INVALID_ARGUMENT naming the field for what the proto can express but the
// core cannot (an unspecified stage or region kind, an unknown granule);
// everything else is checked by core::ValidateTopology when the broker starts.
absl::StatusOr<core::Topology> FromProto(const v1::Topology& topology);
void ToProto(const core::SmmuConfig& smmu, v1::SmmuConfig* out);
void ToProto(const core::DeviceConfig& device, v1::DeviceConfig* out);
void ToProto(const core::Topology& topology, v1::Topology* out);

}  // namespace iommu::server

#endif  // IOMMU_SERVER_PROTO_CONVERT_H_
