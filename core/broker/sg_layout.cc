// SPDX-License-Identifier: Apache-2.0
#include "core/broker/sg_layout.h"

#include <cassert>
#include <optional>
#include <string>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"

namespace iommu::core {
namespace {

std::string SegField(size_t i, const char* field) {
  return absl::StrFormat("segments[%d].%s", i, field);
}

absl::Status ValidateSegments(absl::Span<const PhysSegment> segments) {
  if (segments.empty()) {
    return InvalidField("segments", 0, "at least one segment is required");
  }
  for (size_t i = 0; i < segments.size(); ++i) {
    const PhysSegment& s = segments[i];
    if (s.length_bytes == 0) {
      return InvalidField(SegField(i, "length_bytes"), 0, "must be non-zero");
    }
    if (!LastOfRange(s.phys.value(), s.length_bytes)) {
      return InvalidField(SegField(i, "length_bytes"), s.length_bytes,
                          absl::StrFormat("phys_addr %s + length passes 2^64", s.phys.Hex()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SgLayout> PlanContiguous(absl::Span<const PhysSegment> segments, uint64_t granule) {
  SgLayout layout;
  const uint64_t first_off = segments[0].phys & (granule - 1);
  uint64_t iova = 0;   // offset of the next granule-aligned range
  uint64_t total = 0;  // DMA length
  for (size_t i = 0; i < segments.size(); ++i) {
    const PhysSegment& s = segments[i];
    const uint64_t off = s.phys & (granule - 1);
    const uint64_t end = s.phys.value() + s.length_bytes;  // validated: no wrap
    if (i > 0 && off != 0) {
      return FieldError(absl::StatusCode::kFailedPrecondition, SegField(i, "phys_addr"),
                        s.phys.value(),
                        absl::StrFormat("interior segment does not start on the %#x-byte IOVA "
                                        "granule, so the list cannot be one contiguous DMA "
                                        "segment",
                                        granule));
    }
    if (i + 1 < segments.size() && !IsAligned(end, granule)) {
      return FieldError(absl::StatusCode::kFailedPrecondition, SegField(i, "length_bytes"),
                        s.length_bytes,
                        absl::StrFormat("segment ends at %#x, not on the %#x-byte IOVA "
                                        "granule, so the list cannot be one contiguous DMA "
                                        "segment",
                                        end, granule));
    }
    const std::optional<uint64_t> span = AlignUp(s.length_bytes + off, granule);
    const std::optional<uint64_t> next_iova = span ? CheckedAdd(iova, *span) : std::nullopt;
    const std::optional<uint64_t> next_total = CheckedAdd(total, s.length_bytes);
    if (!next_iova || !next_total) {
      return OutOfRangeField(SegField(i, "length_bytes"), s.length_bytes,
                             "the mapping would pass 2^64 bytes of IOVA");
    }
    layout.map_ranges.push_back({PhysAddr(AlignDown(s.phys.value(), granule)), iova, *span});
    iova = *next_iova;
    total = *next_total;
  }
  layout.iova_size_bytes = iova;
  layout.dma_segments.push_back({first_off, total});
  return layout;
}

// The kDmaApi layout, then (kMerge) __finalise_sg's concatenation.
absl::StatusOr<SgLayout> PlanPadded(absl::Span<const PhysSegment> segments, uint64_t granule,
                                    const SgDeviceLimits& limits, bool merge) {
  const uint64_t mask = limits.segment_boundary_mask;
  SgLayout layout;
  uint64_t iova_len = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const PhysSegment& s = segments[i];
    if (s.length_bytes > limits.max_segment_size_bytes) {
      return InvalidField(SegField(i, "length_bytes"), s.length_bytes,
                          absl::StrFormat("longer than the device's max_segment_size %#x",
                                          limits.max_segment_size_bytes));
    }
    const uint64_t off = s.phys & (granule - 1);
    const std::optional<uint64_t> span = AlignUp(s.length_bytes + off, granule);
    // A segment whose padded span exceeds one boundary window would cross a
    // boundary wherever it is placed. (mask + 1 may be 2^64: mask is all ones.)
    if (!span || (mask != ~uint64_t{0} && *span > mask + 1)) {
      return InvalidField(SegField(i, "length_bytes"), s.length_bytes,
                          absl::StrFormat("with its offset %#x in the granule it spans more than "
                                          "the device's segment boundary window %#x",
                                          off, mask));
    }
    // Bytes left before the next boundary; move the segment up to the
    // boundary when it would cross it. Zero at a boundary (and for i == 0).
    const uint64_t to_boundary = (mask - (iova_len & mask) + 1) & mask;
    if (to_boundary != 0 && *span > to_boundary) {
      assert(i > 0);
      iova_len += to_boundary;  // the next multiple of mask + 1; 0 means 2^64
      if (iova_len == 0) {
        return OutOfRangeField(SegField(i, "length_bytes"), s.length_bytes,
                               "boundary padding would pass 2^64 bytes of IOVA");
      }
    }
    const std::optional<uint64_t> next = CheckedAdd(iova_len, *span);
    if (!next) {
      return OutOfRangeField(SegField(i, "length_bytes"), s.length_bytes,
                             "the mapping would pass 2^64 bytes of IOVA");
    }
    layout.map_ranges.push_back({PhysAddr(AlignDown(s.phys.value(), granule)), iova_len, *span});
    iova_len = *next;
  }
  layout.iova_size_bytes = iova_len;

  // Output segments. `open` is the DMA segment a following input segment may
  // extend: only while the last input segment ran to the end of its span.
  bool open = false;
  for (size_t i = 0; i < segments.size(); ++i) {
    const PhysSegment& s = segments[i];
    const SgMapRange& r = layout.map_ranges[i];
    const uint64_t off = s.phys & (granule - 1);
    const uint64_t dma = r.iova_offset + off;
    SgDmaSegment* cur = layout.dma_segments.empty() ? nullptr : &layout.dma_segments.back();
    // An open segment with off == 0 away from a boundary is always followed
    // directly: padding is only ever inserted up to a boundary.
    assert(!(open && off == 0 && (dma & mask) != 0) || cur->iova_offset + cur->length_bytes == dma);
    if (merge && open && off == 0 && (dma & mask) != 0 &&
        limits.max_segment_size_bytes - cur->length_bytes >= s.length_bytes) {
      cur->length_bytes += s.length_bytes;  // <= max_segment_size: no wrap
    } else {
      layout.dma_segments.push_back({dma, s.length_bytes});
    }
    open = off + s.length_bytes == r.size_bytes;
  }
  return layout;
}

}  // namespace

const char* SgModeName(SgMode mode) {
  switch (mode) {
    case SgMode::kDmaApi:
      return "DMA_API";
    case SgMode::kMerge:
      return "MERGE";
    case SgMode::kContiguous:
      return "CONTIGUOUS";
  }
  return "?";
}

absl::StatusOr<SgLayout> PlanMapSg(absl::Span<const PhysSegment> segments, uint64_t granule_bytes,
                                   const SgDeviceLimits& limits, SgMode mode) {
  assert(IsPowerOfTwo(granule_bytes));
  if (limits.max_segment_size_bytes == 0) {
    return InvalidField("max_segment_size", 0, "must be non-zero");
  }
  const uint64_t mask = limits.segment_boundary_mask;
  if (mask != ~uint64_t{0} && (!IsPowerOfTwo(mask + 1) || mask + 1 < granule_bytes)) {
    return InvalidField(
        "segment_boundary_mask", mask,
        absl::StrFormat("must be 2^k - 1 and at least the granule %#x minus one", granule_bytes));
  }
  RETURN_IF_ERROR(ValidateSegments(segments));
  switch (mode) {
    case SgMode::kContiguous:
      return PlanContiguous(segments, granule_bytes);
    case SgMode::kDmaApi:
      return PlanPadded(segments, granule_bytes, limits, /*merge=*/false);
    case SgMode::kMerge:
      return PlanPadded(segments, granule_bytes, limits, /*merge=*/true);
  }
  return InvalidField("mode", static_cast<uint64_t>(mode), "unknown scatter-gather mode");
}

}  // namespace iommu::core
