// SPDX-License-Identifier: Apache-2.0
#include "core/pgtable/io_pgtable.h"

#include <bit>
#include <cassert>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/pgtable/lpae_pgtable.h"

namespace iommu::core {

absl::StatusOr<std::unique_ptr<IoPgtableOps>> AllocIoPgtableOps(const IoPgtableCfg& cfg,
                                                                FlushOps* flush_ops) {
  switch (cfg.format) {
    case IoPgtableFormat::kArm64LpaeS1:
    case IoPgtableFormat::kArm64LpaeS2: {
      ASSIGN_OR_RETURN(std::unique_ptr<LpaePgtable> table, LpaePgtable::Create(cfg, flush_ops));
      return std::unique_ptr<IoPgtableOps>(std::move(table));
    }
    case IoPgtableFormat::kUnspecified:
      break;
  }
  return InvalidField("format", uint64_t(cfg.format), "unknown page-table format");
}

absl::Status IoPgtableOps::Map(Iova iova, PhysAddr paddr, uint64_t size_bytes, Prot prot) {
  const uint64_t granule = granule_bytes();
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  if (!IsAligned(size_bytes, granule)) {
    return InvalidField("size_bytes", size_bytes, "not a multiple of the granule");
  }
  if (!IsAligned(paddr.value(), granule)) {
    return InvalidField("paddr", paddr.value(), "not granule-aligned");
  }
  const uint32_t prot_bits = uint32_t(prot);
  if ((prot_bits & ~kProtAllBits) != 0 || (prot_bits & uint32_t(Prot::kRead | Prot::kWrite)) == 0) {
    return InvalidField("prot", prot_bits, "needs READ or WRITE and no unknown bits");
  }
  const auto pa_last = LastOfRange(paddr.value(), size_bytes);
  if (!pa_last) return InvalidField("paddr", paddr.value(), "paddr + size_bytes passes 2^64");
  if (*pa_last >> cfg_.oas) {
    return OutOfRangeField("paddr", paddr.value(),
                           absl::StrFormat("range ends beyond oas %u", cfg_.oas));
  }
  // Validates iova (alignment, overflow, ias) and that nothing is mapped, so
  // a chunk below can fail only for want of a table (RESOURCE_EXHAUSTED);
  // the chunks mapped before it are then unmapped: all or nothing.
  RETURN_IF_ERROR(CheckUnmapped(iova, size_bytes));

  uint64_t va = iova.value();
  uint64_t pa = paddr.value();
  uint64_t remaining = size_bytes;
  while (remaining != 0) {
    // Largest page size that fits the remainder and both alignments
    // (iommu_pgsize), counted up to the next larger size's boundary.
    uint64_t sizes = cfg_.pgsize_bitmap & LowMask(Log2(std::bit_floor(remaining)) + 1);
    const uint64_t addr_merge = va | pa;
    if (addr_merge != 0) sizes &= LowMask(unsigned(std::countr_zero(addr_merge)) + 1);
    assert(sizes != 0);
    const uint64_t pgsize = std::bit_floor(sizes);
    uint64_t count = remaining / pgsize;
    const uint64_t larger = cfg_.pgsize_bitmap & ~LowMask(Log2(pgsize) + 1);
    if (larger != 0) {
      const uint64_t next = larger & (~larger + 1);
      if (((va ^ pa) & (next - 1)) == 0) {
        const uint64_t to_boundary = next - (va & (next - 1));
        if (to_boundary + next <= remaining) count = to_boundary / pgsize;
      }
    }
    if (absl::Status s = MapPages(Iova(va), PhysAddr(pa), pgsize, count, prot); !s.ok()) {
      assert(s.code() == absl::StatusCode::kResourceExhausted && "a validated chunk failed");
      if (va != iova.value()) {
        // Never translated (the caller serialises walks): nothing to gather.
        IotlbGather gather{.queued = true};
        const auto r = UnmapPages(iova, granule, (va - iova.value()) / granule, &gather);
        assert(r.ok());
        (void)r;
      }
      return s;
    }
    va += pgsize * count;
    pa += pgsize * count;
    remaining -= pgsize * count;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> IoPgtableOps::Unmap(Iova iova, uint64_t size_bytes, IotlbGather* gather,
                                             UnmapFlags flags) {
  const uint64_t granule = granule_bytes();
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  if (!IsAligned(size_bytes, granule)) {
    return InvalidField("size_bytes", size_bytes, "not a multiple of the granule");
  }
  return UnmapPages(iova, granule, size_bytes / granule, gather, flags);
}

}  // namespace iommu::core
