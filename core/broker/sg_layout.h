// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_SG_LAYOUT_H_
#define IOMMU_CORE_BROKER_SG_LAYOUT_H_

// Planning of a scatter-gather mapping (dma_map_sg): where each physical
// segment lands in one IOVA allocation, which granule-aligned ranges must be
// mapped, and the DMA segments the device is handed. Pure arithmetic on
// 64-bit, overflow-checked lengths; the broker allocates the IOVA and maps.
//
// Three modes (docs/design.md#map-sg, from the 2015 dma-iommu thread):
//  kDmaApi     The original iommu_dma_map_sg: one IOVA allocation; each
//              segment is padded out to whole granules (its offset within
//              the first granule kept); a segment that would cross the
//              device's segment boundary is moved up to the boundary
//              (padding the previous segment); no merging: one DMA segment
//              per input segment.
//  kMerge      Linux today (__finalise_sg): the kDmaApi layout, then a segment
//              that starts on a granule, follows a segment that ended on one,
//              does not start at a segment boundary and keeps the DMA segment
//              within max_segment_size is concatenated with the previous one.
//  kContiguous The iommu_map_sg guarantee for devices without scatter-gather:
//              exactly one IOVA-contiguous DMA segment, or FAILED_PRECONDITION
//              naming the segment that prevents it (an interior segment that
//              does not start or end on a granule). The device's
//              max_segment_size and segment_boundary_mask describe how a
//              scatter-gather engine splits its segments; they do not apply
//              to a buffer the device consumes as one.
//
// Relative layout is exact because the broker allocates the IOVA size-aligned
// (a power of two >= iova_size_bytes): if that size reaches the boundary, the
// base sits on a boundary; if not, the allocation lies inside one boundary
// window. Either way `offset & segment_boundary_mask` behaves as the absolute
// address would.
//
// Lengths are uint64_t throughout and every sum is checked: the 2019 merge
// overflow (a 32-bit DMA length wrapping past 4 GiB) and the boundary-padding
// wrap cannot happen; impossible inputs are INVALID_ARGUMENT / OUT_OF_RANGE.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/base/types.h"

namespace iommu::core {

enum class SgMode { kDmaApi, kMerge, kContiguous };

// Name of the mode as the API spells it: "DMA_API", "MERGE", "CONTIGUOUS".
const char* SgModeName(SgMode mode);

struct PhysSegment {
  PhysAddr phys;
  uint64_t length_bytes = 0;
};

// The device's dma_parms.
struct SgDeviceLimits {
  uint64_t max_segment_size_bytes = 65536;         // Linux's default
  uint64_t segment_boundary_mask = 0xFFFFFFFFull;  // 2^k - 1
};

// A granule-aligned physical range to map at `iova_offset` from the IOVA base.
struct SgMapRange {
  PhysAddr phys;             // granule-aligned
  uint64_t iova_offset = 0;  // granule-aligned, relative to the allocation
  uint64_t size_bytes = 0;   // whole granules
};

// A DMA segment handed to the device, relative to the IOVA base.
struct SgDmaSegment {
  uint64_t iova_offset = 0;
  uint64_t length_bytes = 0;
};

struct SgLayout {
  uint64_t iova_size_bytes = 0;        // whole granules, padding included
  std::vector<SgMapRange> map_ranges;  // one per input segment, ascending
  std::vector<SgDmaSegment> dma_segments;
};

// Plans the mapping of `segments` for a device with `limits` in a domain whose
// IOVA granule is `granule_bytes` (a power of two).
// Errors: INVALID_ARGUMENT for an empty list, a zero-length segment, a segment
// whose end passes 2^64, a malformed boundary mask, or (kDmaApi, kMerge) a
// segment longer than max_segment_size or its boundary window; OUT_OF_RANGE
// when the layout would pass 2^64 bytes; FAILED_PRECONDITION (kContiguous)
// naming the first segment that cannot be laid contiguously.
absl::StatusOr<SgLayout> PlanMapSg(absl::Span<const PhysSegment> segments, uint64_t granule_bytes,
                                   const SgDeviceLimits& limits, SgMode mode);

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_SG_LAYOUT_H_
