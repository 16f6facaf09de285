// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_PGTABLE_IO_PGTABLE_H_
#define IOMMU_CORE_PGTABLE_IO_PGTABLE_H_

// The generic, format-independent page-table interface, as Linux's
// include/linux/io-pgtable.h: a config (IoPgtableCfg) goes in, an ops object
// (IoPgtableOps: map, unmap, iova_to_phys, walk) comes out, and TLB
// maintenance is injected (FlushOps, as iommu_flush_ops). A format never
// knows how the IOTLB model works: it only calls the flush ops, and unmapped
// leaves are reported into an IotlbGather the caller syncs.

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/base/prot.h"
#include "core/base/types.h"

namespace iommu::core {

enum class IoPgtableFormat : uint8_t {
  kUnspecified = 0,
  kArm64LpaeS1,  // ARM_64_LPAE_S1
  kArm64LpaeS2,  // ARM_64_LPAE_S2
};

// Quirks (IO_PGTABLE_QUIRK_*), a bit set.
inline constexpr uint32_t kQuirkArmNs = 1u << 0;  // stage 1: NS in leaves, NSTable in tables
inline constexpr uint32_t kSupportedQuirks = kQuirkArmNs;

struct IoPgtableCfg {
  IoPgtableFormat format = IoPgtableFormat::kUnspecified;
  // Page sizes callers may pass to MapPages/UnmapPages. The smallest must be
  // a granule (4K, 16K or 64K) and every size must be a leaf size of that
  // granule (lpae::PgsizeBitmapForGranule).
  uint64_t pgsize_bitmap = 0;
  unsigned ias = 0;  // input (IOVA) address bits, 32..48
  unsigned oas = 0;  // output (physical) address bits, 32..48
  // The walker snoops CPU caches: no cache maintenance on descriptor writes.
  // Descriptors live in host memory here, so this only selects shareability
  // of table walks; recorded for the context (TCR) set-up.
  bool coherent_walk = true;
  uint32_t quirks = 0;
};

// Collects the IOVA range of unmapped leaves until the caller syncs the
// IOTLB (Linux's struct iommu_iotlb_gather). Thread-compatible.
struct IotlbGather {
  uint64_t start = ~uint64_t{0};  // first byte gathered
  uint64_t end = 0;               // last byte gathered (inclusive)
  uint64_t pgsize = 0;            // leaf size of the gathered pages, 0 when mixed/empty
  // Lazy (flush-queue) invalidation: the caller invalidates by other means,
  // so formats do not report pages (iommu_iotlb_gather_queued()).
  bool queued = false;

  bool empty() const { return start > end; }
  // Extends the gathered range to cover [iova, iova + size_bytes).
  void AddRange(Iova iova, uint64_t size_bytes) {
    const uint64_t last = iova.value() + size_bytes - 1;
    if (start > iova.value()) start = iova.value();
    if (end < last) end = last;
  }
  void Reset() { *this = IotlbGather{.queued = queued}; }
};

// TLB maintenance the format calls (iommu_flush_ops). Implemented by the
// IOTLB model. Called synchronously from inside MapPages/UnmapPages, on the
// caller's thread.
class FlushOps {
 public:
  virtual ~FlushOps() = default;
  // Invalidate every translation of this table's context.
  virtual void TlbFlushAll() = 0;
  // Synchronously invalidate leaf and intermediate (walk cache) entries for
  // [iova, iova + size_bytes), whose leaves are granule_bytes in size. Called
  // before a freed table's memory is released and between the two writes of
  // a break-before-make block split.
  virtual void TlbFlushWalk(Iova iova, uint64_t size_bytes, uint64_t granule_bytes) = 0;
  // A leaf of granule_bytes at iova was cleared; add it to the gather (or
  // invalidate it) before the caller's sync. Not called for queued gathers.
  virtual void TlbAddPage(IotlbGather* gather, Iova iova, uint64_t granule_bytes) = 0;
  // count consecutive leaves of granule_bytes each, from iova, were cleared
  // (one run within one table); same contract as count TlbAddPage calls, which
  // is what the default does. Formats call this once per run of more than one
  // leaf; override it to gather a run in one step. Not called for queued
  // gathers. REQUIRES: count >= 1, the run does not pass 2^64.
  virtual void TlbAddPages(IotlbGather* gather, Iova iova, uint64_t granule_bytes, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i) {
      TlbAddPage(gather, Iova(iova.value() + i * granule_bytes), granule_bytes);
    }
  }
};

// Memory attributes of a leaf, decoded.
enum class MemType : uint8_t { kDevice, kNormalNonCacheable, kNormalCacheable };
enum class Shareability : uint8_t { kNonShareable, kOuter, kInner };
struct LeafAttrs {
  MemType mem_type = MemType::kNormalNonCacheable;
  Shareability shareability = Shareability::kOuter;
  bool not_global = false;   // stage 1 nG (ASID-tagged)
  bool access_flag = false;  // AF
  bool non_secure = false;   // stage 1 NS
};

// A full walk of one IOVA.
struct PgtableWalk {
  PhysAddr phys;       // translation of the IOVA itself (offset included)
  Iova leaf_iova;      // first IOVA of the leaf
  PhysAddr leaf_phys;  // first physical address of the leaf
  int level = 0;       // level of the leaf descriptor
  uint64_t leaf_size_bytes = 0;
  Grant grant;              // what the leaf permits
  Prot prot = Prot::kNone;  // canonical prot that writes this descriptor
  LeafAttrs attrs;
  uint64_t descriptor = 0;  // the raw leaf descriptor
};

// One leaf, as ForEachMapping reports it.
struct PgtableMapping {
  Iova iova;
  PhysAddr phys;
  uint64_t size_bytes = 0;
  Grant grant;
  Prot prot = Prot::kNone;
};

struct PgtableStats {
  uint64_t table_count = 0;  // tables, the root (even concatenated) counting as one
  uint64_t table_bytes = 0;  // descriptor memory of those tables
  // Freed (empty) tables the format keeps for reuse instead of returning them
  // to the allocator; not in table_count. Page-table memory held is
  // table_bytes + cached_table_bytes.
  uint64_t cached_table_count = 0;
  uint64_t cached_table_bytes = 0;
  uint64_t mapped_bytes = 0;
  struct LeafCount {
    uint64_t size_bytes = 0;
    uint64_t count = 0;
  };
  // One entry per leaf size the format supports, ascending.
  absl::InlinedVector<LeafCount, 3> leaves;
};

enum class UnmapFlags : uint32_t {
  kNone = 0,
  // Unmapping part of a block splits it (break-before-make) instead of
  // failing with FAILED_PRECONDITION.
  kAllowSplit = 1u << 0,
};

// The page-table operations of one table (Linux's io_pgtable_ops).
//
// Thread-compatible: the owning domain serialises every call, mutating or
// not (walks read the tables without synchronisation).
//
// Error contract (every message names the field and value, core/base/errors.h):
//   INVALID_ARGUMENT  pgsize_bytes not in pgsize_bitmap, pgcount 0, iova or
//                     paddr not aligned to pgsize_bytes, a range passing 2^64,
//                     prot without READ/WRITE or with unknown bits
//   OUT_OF_RANGE      iova range beyond ias, paddr range beyond oas
//   ALREADY_EXISTS    MapPages over any existing leaf or table entry
//   NOT_FOUND         UnmapPages over a range with any unmapped byte
//   FAILED_PRECONDITION UnmapPages covering part of a block without kAllowSplit
//   RESOURCE_EXHAUSTED MapPages (or creating the table) when a table could not
//                     be allocated (out of memory, or the pgtable.table
//                     injection point: docs/design.md#failure-injection)
// A failed call changes nothing and makes no flush call.
class IoPgtableOps {
 public:
  virtual ~IoPgtableOps() = default;

  const IoPgtableCfg& cfg() const { return cfg_; }
  // The smallest page size (the granule).
  uint64_t granule_bytes() const { return cfg_.pgsize_bitmap & (~cfg_.pgsize_bitmap + 1); }

  // Maps pgcount pages of pgsize_bytes at iova -> paddr (map_pages). Each page
  // is one leaf at the level whose entry size is pgsize_bytes. On success all
  // pgsize_bytes * pgcount bytes are mapped; on failure none.
  virtual absl::Status MapPages(Iova iova, PhysAddr paddr, uint64_t pgsize_bytes, uint64_t pgcount,
                                Prot prot) = 0;

  // Unmaps [iova, iova + pgsize_bytes * pgcount) (unmap_pages) and returns the
  // bytes unmapped, always that whole size. The range may be covered by leaves
  // of any size, but every byte of it must be mapped (else NOT_FOUND naming
  // the first hole, nothing changed). A leaf reaching outside the range is a
  // split: FAILED_PRECONDITION unless flags has kAllowSplit. Each cleared leaf
  // is reported to the gather unless gather->queued — by TlbAddPage, or by one
  // TlbAddPages per run of consecutive leaves in one table; tables left empty
  // are freed after a TlbFlushWalk over their range.
  // REQUIRES: gather != nullptr.
  virtual absl::StatusOr<uint64_t> UnmapPages(Iova iova, uint64_t pgsize_bytes, uint64_t pgcount,
                                              IotlbGather* gather,
                                              UnmapFlags flags = UnmapFlags::kNone) = 0;

  // The physical address iova translates to, or nullopt when unmapped or
  // beyond ias (iova_to_phys).
  virtual std::optional<PhysAddr> IovaToPhys(Iova iova) const = 0;

  // The leaf translating iova, decoded. NOT_FOUND when unmapped, OUT_OF_RANGE
  // beyond ias.
  virtual absl::StatusOr<PgtableWalk> Walk(Iova iova) const = 0;

  // OK when no byte of [iova, iova + size_bytes) is mapped, else
  // ALREADY_EXISTS naming the first mapped IOVA. Validates like MapPages.
  virtual absl::Status CheckUnmapped(Iova iova, uint64_t size_bytes) const = 0;

  // Calls fn for every leaf, in ascending IOVA order. fn must not mutate
  // the table.
  virtual void ForEachMapping(absl::FunctionRef<void(const PgtableMapping&)> fn) const = 0;

  virtual PgtableStats Stats() const = 0;

  // Test and debug oracle: walks the whole tree and checks every structural
  // invariant against the accounting. OK, or INTERNAL describing the first
  // violation.
  virtual absl::Status CheckInvariants() const = 0;

  // iommu_map(): maps size_bytes using the largest page sizes that size and
  // alignment of iova and paddr allow (block descriptors wherever possible),
  // all or nothing: when a table cannot be allocated part way, what was
  // mapped is unmapped again (its leaves not reported; the tables freed may
  // get TlbFlushWalk calls) and the RESOURCE_EXHAUSTED returned. size_bytes,
  // iova and paddr must be granule-aligned.
  absl::Status Map(Iova iova, PhysAddr paddr, uint64_t size_bytes, Prot prot);
  // iommu_unmap(): UnmapPages over [iova, iova + size_bytes) in granules.
  absl::StatusOr<uint64_t> Unmap(Iova iova, uint64_t size_bytes, IotlbGather* gather,
                                 UnmapFlags flags = UnmapFlags::kNone);

 protected:
  IoPgtableOps(const IoPgtableCfg& cfg, FlushOps* flush_ops) : cfg_(cfg), flush_ops_(flush_ops) {}

  const IoPgtableCfg cfg_;
  FlushOps* const flush_ops_;
};

// Validates cfg and builds the table for its format (alloc_io_pgtable_ops).
// flush_ops must be non-null and outlive the table. INVALID_ARGUMENT for an
// unknown format, unsupported quirks, a null flush_ops, a pgsize_bitmap whose
// smallest size is no granule or that holds sizes the granule cannot map;
// OUT_OF_RANGE for ias or oas outside 32..48.
absl::StatusOr<std::unique_ptr<IoPgtableOps>> AllocIoPgtableOps(const IoPgtableCfg& cfg,
                                                                FlushOps* flush_ops);

}  // namespace iommu::core

#endif  // IOMMU_CORE_PGTABLE_IO_PGTABLE_H_
