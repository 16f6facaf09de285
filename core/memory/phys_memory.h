// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_MEMORY_PHYS_MEMORY_H_
#define IOMMU_CORE_MEMORY_PHYS_MEMORY_H_

// The daemon's simulated physical memory: RAM and MMIO regions, named page
// pools carved from RAM, and the owner of every allocated page.
//
// Layout. Regions (RAM or MMIO) are disjoint and immutable after Create; a
// pool is one or more ranges inside RAM regions, each range managed by its own
// BuddyAllocator (see buddy_allocator.h for its cost and invariants). Pools
// are tried in priority order (lower number first, e.g. on-chip `sram` before
// `dram`; ties in configuration order) unless the caller names one. One
// allocation always comes from a single pool.
//
// Placement policy (AllocPages):
//   kScattered  — order-0 pages, deliberately not physically contiguous, as a
//                 process's pinned user pages: the pages taken are ordered so
//                 that no run is followed by the page physically after it
//                 (deterministic: the upper half of the sorted pages
//                 interleaved with the lower half). One run per page.
//   kContiguous — one physically contiguous run: the covering power-of-two
//                 block is allocated and its tail pages given back, as
//                 alloc_pages_exact; limited to the largest buddy block.
//   kHuge       — size rounded up to 2 MiB; runs of 2 MiB, each 2 MiB-aligned.
// Sizes are rounded up to whole pages (kHuge: to 2 MiB); the allocation
// reports the rounded size. A request is checked to fit before any page is
// taken, so a failed call changes nothing.
//
// Ownership. Every allocated page records its owner (an opaque id; the broker
// uses a buffer id) in an interval map of physically contiguous owned chunks,
// so Owner() is O(log n) and CheckOwned() O(log n + chunks in the range).
//
// Files: configuration validation and Create in phys_memory_config.cc, the
// allocation and ownership logic in phys_memory.cc.
//
// Thread-safe. One mutex, mu_, serialises the pools, the allocation table and
// the ownership map (no other lock is taken under it); the region table is
// immutable and read without it.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/base/types.h"
#include "core/memory/buddy_allocator.h"

namespace iommu::core {

enum class RegionKind : uint8_t { kRam, kMmio };
// "ram", "mmio".
absl::string_view RegionKindName(RegionKind kind);

struct MemoryRegionConfig {
  std::string name;
  PhysAddr base;            // page-aligned
  uint64_t size_bytes = 0;  // non-zero, a multiple of the page size
  RegionKind kind = RegionKind::kRam;
};

struct PoolRangeConfig {
  PhysAddr base;            // page-aligned, inside one RAM region
  uint64_t size_bytes = 0;  // non-zero, a multiple of the page size
};

struct PoolConfig {
  std::string name;
  int priority = 0;  // lower is preferred
  std::vector<PoolRangeConfig> ranges;
};

struct PhysMemoryConfig {
  uint64_t page_size_bytes = 4096;  // CPU page size: a power of two in [4 KiB, 2 MiB]
  std::vector<MemoryRegionConfig> regions;
  std::vector<PoolConfig> pools;
};

enum class Placement : uint8_t { kScattered, kContiguous, kHuge };
// "scattered", "contiguous", "huge".
absl::string_view PlacementName(Placement placement);

inline constexpr uint64_t kHugePageBytes = uint64_t{2} << 20;

// A physically contiguous piece of an allocation: a whole number of pages.
struct PhysRun {
  PhysAddr start;
  uint64_t size_bytes = 0;
  friend bool operator==(const PhysRun&, const PhysRun&) = default;
};

struct PhysAllocation {
  uint64_t id = 0;  // unique for the PhysMemory's lifetime, never 0
  uint64_t owner_id = 0;
  std::string pool;
  Placement placement = Placement::kScattered;
  uint64_t size_bytes = 0;    // as rounded up; the sum of the runs
  std::vector<PhysRun> runs;  // in the order the owner sees its pages
};

struct PoolStats {
  std::string name;
  int priority = 0;
  uint64_t page_size_bytes = 0;
  uint64_t total_pages = 0;
  uint64_t free_pages = 0;
  uint64_t allocated_pages = 0;
  uint64_t largest_free_block_bytes = 0;
  // Free blocks per buddy order, summed over the pool's ranges.
  std::vector<uint64_t> free_blocks_by_order;
  uint64_t live_allocations = 0;
  uint64_t allocations_total = 0;
  // Requests that ended RESOURCE_EXHAUSTED after trying this pool.
  uint64_t failures_total = 0;
};

class PhysMemory {
 public:
  // Errors name the offending field by path, e.g. "regions[1].base=0x...":
  // INVALID_ARGUMENT for a bad page size, kind, empty name, zero or misaligned
  // size or base, a range passing 2^64, overlapping regions or pool ranges, a
  // pool range not inside one RAM region, a pool without ranges;
  // ALREADY_EXISTS for a duplicate region or pool name.
  static absl::StatusOr<std::unique_ptr<PhysMemory>> Create(const PhysMemoryConfig& config);

  PhysMemory(const PhysMemory&) = delete;
  PhysMemory& operator=(const PhysMemory&) = delete;

  // Allocates size_bytes (rounded up, see the placement policy above) for
  // owner_id from `pool`, or from the first pool in priority order that fits
  // when `pool` is empty.
  // INVALID_ARGUMENT: size_bytes zero or overflowing when rounded; a bad
  // placement. NOT_FOUND: no pool of that name. RESOURCE_EXHAUSTED: nothing
  // fits (the message names the pool(s), the rounded request, free pages and
  // the largest free block).
  absl::StatusOr<PhysAllocation> AllocPages(uint64_t owner_id, uint64_t size_bytes,
                                            Placement placement, absl::string_view pool = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  // Restores an allocation of exactly `runs`, in that order (the order the
  // owner sees its pages), from the pool named `pool`: after a restart every
  // recorded allocation is claimed at its recorded addresses instead of being
  // replayed through the placement policy. The pages are taken out of their
  // buddy ranges (BuddyAllocator::ClaimRange) and the allocation is
  // accounted as AllocPages accounts one: a fresh allocation id, the pool's
  // allocated pages, live allocations and allocations total, the owner index
  // and the ownership map; so FreeAllocation, FreeOwner, Owner, CheckOwned,
  // Stats and CheckInvariants treat it as an AllocPages allocation.
  // `placement` is recorded as given (the runs' shape is not checked against
  // it); size_bytes is the sum of the runs.
  // Errors, checked in this order, changing nothing (runs already claimed
  // when a later one fails are given back):
  //   INVALID_ARGUMENT  a bad placement; runs empty; runs[i] of 0 bytes, not
  //                     page-aligned (start or size_bytes) or passing 2^64;
  //                     runs[i] overlapping runs[j] (named "runs[i].start",
  //                     i the later of the two in address order);
  //   NOT_FOUND         no pool of that name;
  //   OUT_OF_RANGE      runs[i] not inside one range of that pool;
  //   FAILED_PRECONDITION  runs[i] holds an allocated page: "runs[i].page=",
  //                     the lowest such page, and its owner.
  // Cost: O(r log r) for r runs, plus per run the buddy's ClaimRange
  // (O(blocks x log), see buddy_allocator.h) and O(log n) in the ownership
  // map.
  absl::StatusOr<PhysAllocation> ClaimPages(uint64_t owner_id, absl::string_view pool,
                                            Placement placement, absl::Span<const PhysRun> runs)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Returns every page of the allocation to its buddy allocator.
  // NOT_FOUND: no live allocation of that id (e.g. a double free).
  absl::Status FreeAllocation(uint64_t allocation_id) ABSL_LOCKS_EXCLUDED(mu_);
  // Frees every allocation of owner_id; returns the number of pages freed.
  // NOT_FOUND: the owner holds nothing.
  absl::StatusOr<uint64_t> FreeOwner(uint64_t owner_id) ABSL_LOCKS_EXCLUDED(mu_);

  // The owner of the page containing `addr`, nullopt when it is not allocated.
  std::optional<uint64_t> Owner(PhysAddr addr) const ABSL_LOCKS_EXCLUDED(mu_);
  // OK when every page touched by [start, start + size_bytes) is owned by
  // owner_id. INVALID_ARGUMENT: size_bytes zero or the range passing 2^64.
  // PERMISSION_DENIED: names the first page not owned by owner_id.
  absl::Status CheckOwned(uint64_t owner_id, PhysAddr start, uint64_t size_bytes) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Region queries; lock-free (regions are immutable). A range counts only
  // when it lies entirely inside one region of that kind; a zero or wrapping
  // range never does.
  bool IsRam(PhysAddr start, uint64_t size_bytes) const;
  bool IsMmio(PhysAddr start, uint64_t size_bytes) const;
  // The region containing `addr`, or nullptr; valid for this object's life.
  const MemoryRegionConfig* RegionAt(PhysAddr addr) const;
  // Regions sorted by base.
  const std::vector<MemoryRegionConfig>& regions() const { return regions_; }
  uint64_t page_size_bytes() const { return page_size_bytes_; }

  // Per pool, in priority order.
  std::vector<PoolStats> Stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // OK, or INTERNAL naming the first broken invariant (a bug): each buddy's
  // invariants; owned chunks disjoint, page-aligned, inside their range and
  // never overlapping a free block; the allocation table, the owner index and
  // the ownership map describe the same pages; per-pool counters recount.
  absl::Status CheckInvariants() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Pool {
    std::string name;
    int priority = 0;
    std::vector<BuddyAllocator> ranges;
    uint64_t allocated_pages = 0;
    uint64_t live_allocations = 0;
    uint64_t allocations_total = 0;
    uint64_t failures_total = 0;
  };
  // A physically contiguous owned chunk inside one buddy range.
  struct Chunk {
    PhysAddr start;
    uint64_t size_bytes = 0;
    size_t range_index = 0;
  };
  struct AllocationRecord {
    uint64_t owner_id = 0;
    size_t pool_index = 0;
    std::vector<Chunk> chunks;  // address order
  };
  struct OwnedChunk {
    uint64_t end = 0;  // exclusive end address
    uint64_t owner_id = 0;
    uint64_t allocation_id = 0;
  };

  PhysMemory(uint64_t page_size_bytes, std::vector<MemoryRegionConfig> regions,
             std::vector<Pool> pools);

  // Takes the pages for a request that is known to fit (FitsLocked); never
  // fails. Returns the owner-visible runs and fills `chunks`.
  std::vector<PhysRun> TakeLocked(Pool& pool, uint64_t num_pages, Placement placement,
                                  std::vector<Chunk>* chunks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool FitsLocked(const Pool& pool, uint64_t num_pages, Placement placement) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t FreeLocked(uint64_t allocation_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const MemoryRegionConfig* RegionContaining(PhysAddr start, uint64_t size_bytes) const;

  const uint64_t page_size_bytes_;
  const unsigned huge_order_;                      // buddy order of a 2 MiB block
  const std::vector<MemoryRegionConfig> regions_;  // sorted by base, disjoint

  mutable absl::Mutex mu_;
  std::vector<Pool> pools_ ABSL_GUARDED_BY(mu_);  // priority order
  absl::flat_hash_map<uint64_t, AllocationRecord> allocations_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<uint64_t, uint64_t>> by_owner_ ABSL_GUARDED_BY(mu_);  // (owner, allocation)
  // Start address -> owned chunk; chunks are disjoint.
  std::map<uint64_t, OwnedChunk> owned_ ABSL_GUARDED_BY(mu_);
  uint64_t next_allocation_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_MEMORY_PHYS_MEMORY_H_
