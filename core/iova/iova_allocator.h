// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOVA_IOVA_ALLOCATOR_H_
#define IOMMU_CORE_IOVA_IOVA_ALLOCATOR_H_

// IovaAllocator: the IOVA space of one domain, in pfn units of the domain's
// granule (its smallest page size), with Linux DMA-API semantics (iova.c,
// dma-iommu.c) and no O(n) search. Callers speak bytes: AllocIova /
// FreeIova, as alloc_iova_fast / free_iova_fast.
//
// Policy.
//   * Size-aligned, top-down: an allocation of n pages starts at a multiple
//     of RoundUpPowerOfTwo(n) in ABSOLUTE pfn terms, ends at or below the
//     caller's inclusive limit, and is placed as Linux's
//     alloc_iova(..., size_aligned=true) places it: the highest fit below the
//     last allocation, else the highest fit (kLinuxNextFit, default), or
//     always the highest fit (kHighestFit).
//   * pfn 0 is never handed out (start_pfn >= 1).
//   * Reserved ranges (Reserve, as reserve_iova) are never handed out and are
//     counted apart.
//   * Range caches (Linux's rcache): a request of up to cache.max_pages
//     pages is rounded up to a power of two, its size class; a free of such
//     an allocation goes to its class's magazines, and the next allocation
//     of that class is served from them (the range freed last first), never
//     with a range ending above the caller's limit. A miss goes to the tree;
//     if the tree fails, every cache is flushed back to the tree and the
//     tree is tried once more (flush_rcache). Larger requests, and all of
//     them with the cache off, take exactly their pages from the tree and
//     return them to it.
//   * Optional 32-bit-first (iommu_dma_alloc_iova for PCI devices): a limit
//     above 4 GiB is first tried at the 4 GiB limit, then at the full limit.
//
// Layout and cost (n = live allocations + free ranges):
//   free ranges   IovaGapTree (iova_gap_tree.h): a B+-tree of the free
//                 ranges augmented per alignment order; exact top-down fit
//                 in O(log n), and O(log n) per free or tree allocation.
//   allocations   live ones only (cached ranges are not live). Those of up
//                 to 4096 pages in IovaAllocMap (iova_alloc_map.h): a start
//                 and an end bit per pfn, so lookup, exact-size check and
//                 size are one 16-byte group for up to 64 pages, a scan of
//                 at most 63 end words for 65..4096, never a hash; memory
//                 proportional to the span ever allocated from (16 bytes per
//                 64 pfns), kept until the allocator goes. Larger
//                 allocations: a hash map pfn -> pages (probed only when the
//                 bitmap has no start at the pfn, and only if non-empty).
//                 ForEachAllocated walks the chunks touched, O(span / 64).
//   caches        IovaMagazineCache (iova_magazine.h): O(1) push/pop, no
//                 allocation. AllocIova and FreeIova are always inlined into
//                 their callers up to the cache: a hit of the loaded magazine
//                 (alloc) or a push into it (free) is a few loads, stores and
//                 shifts plus one group of the allocation map; everything
//                 else (other magazines, misses, uncached sizes,
//                 32-bit-first, errors) goes out of line. Telling "in a
//                 cache" from "never allocated" for NOT_FOUND's message scans
//                 the magazines: O(cached ranges), on the error path only.
//   statistics    kept incrementally, O(1) per mutation (cached totals are
//                 recounted over the size classes); GetStats never walks.
// Nothing on a success path formats a string; messages are built on failure.
//
// Invariants (CheckInvariants walks and verifies all of them):
//   (1) free ranges, live allocations, cached allocations and reserved ranges
//       are disjoint and tile [start_pfn, end_pfn] exactly;
//   (2) every allocation is size-aligned and inside [start_pfn, end_pfn];
//   (3) free ranges are maximal (never adjacent); the gap tree's summaries,
//       structure and histogram equal a recomputation;
//   (4) cached pfns are ranges of exactly their class size, size-aligned,
//       not live, each cached once; every counter equals a recount;
//   (5) the allocation map's bits pair up (every start bit has its end bit
//       in its chunk, before the next start bit, at most 4096 pages on); the
//       large map holds only allocations of more than 4096 pages;
//   (6) the next-fit cursors are outside the free ranges.
//
// Thread-compatible: one allocator per domain, serialised by its owner (the
// domain's lock in the broker). No method is safe to call concurrently with a
// mutating one; const methods may run concurrently with each other.

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/base/bits.h"
#include "core/base/types.h"
#include "core/iova/iova_alloc_map.h"
#include "core/iova/iova_gap_tree.h"
#include "core/iova/iova_magazine.h"

namespace iommu::core {
namespace internal {
class IovaAllocatorTestPeer;
}  // namespace internal

namespace internal {
// The size class (ceil(log2(n))) of a request of n = 1..64 pages (the sizes
// IovaAllocMap records in one group) and its last page's offset (2^class -
// 1), indexed by n - 1: the inline cache paths' class with one load instead
// of a bit scan.
struct IovaSmallClasses {
  uint8_t cls[IovaAllocMap::kGroupPages];
  uint8_t last[IovaAllocMap::kGroupPages];
};
inline constexpr IovaSmallClasses kIovaSmallClasses = [] {
  IovaSmallClasses t{};
  for (uint64_t n = 1; n <= IovaAllocMap::kGroupPages; ++n) {
    t.cls[n - 1] = static_cast<uint8_t>(std::bit_width(n - 1));
    t.last[n - 1] = static_cast<uint8_t>(std::bit_ceil(n) - 1);
  }
  return t;
}();
static_assert(kIovaSmallClasses.cls[0] == 0 && kIovaSmallClasses.last[0] == 0);
static_assert(kIovaSmallClasses.cls[2] == 2 && kIovaSmallClasses.last[2] == 3);
static_assert(kIovaSmallClasses.cls[63] == 6 && kIovaSmallClasses.last[63] == 63);
}  // namespace internal

struct IovaCacheOptions {
  bool enabled = true;
  // Largest cached request in pages; a power of two (Linux: 32).
  uint64_t max_pages = 32;
  // pfns per magazine (Linux: 127) and full magazines kept in the depot per
  // size class (Linux <= 6.6: 32).
  uint32_t magazine_depth = 127;
  uint32_t depot_magazines = 32;
};

// Where among the fitting positions an allocation goes. Both are size-aligned
// and top-down below the limit, both O(log n).
enum class IovaPlacement : int {
  // The highest fitting position below the limit (alloc_iova as documented).
  kHighestFit = 0,
  // What Linux's iova.c actually does: the search starts below the "cached
  // node" (the last allocation, moved up past frees at or above it), and only
  // when nothing fits there restarts from the limit: a downward next-fit.
  // Spreads reuse over the space; on the W2 workload it fails less than
  // kHighestFit and reproduces Linux's failures, holes and largest hole
  // exactly (docs/performance.md#w2, #iova-allocator). The default.
  kLinuxNextFit = 1,
};

struct IovaAllocatorOptions {
  // The domain's smallest page size: 4096, 16384 or 65536.
  uint64_t granule_bytes = 4096;
  // Lowest and highest allocatable pfn, inclusive. start_pfn >= 1.
  uint64_t start_pfn = 1;
  uint64_t end_pfn = (uint64_t{1} << 20) - 1;
  IovaCacheOptions cache;
  IovaPlacement placement = IovaPlacement::kLinuxNextFit;
  // Try below 4 GiB first, then up to the caller's limit (PCI SAC addresses).
  bool try_32bit_first = false;
};

// Why an allocation failed (one count per failed call).
enum class IovaFailureReason : int {
  // Fewer free pages than requested (in the whole space).
  kNoSpace = 0,
  // Enough free pages, but no free range holds an aligned fit.
  kFragmented = 1,
  // An aligned fit exists, but only above the caller's limit.
  kBeyondLimit = 2,
};
inline constexpr int kIovaFailureReasonCount = 3;

struct IovaStats {
  uint64_t granule_bytes = 0;
  // space_pages = allocated_pages + cached_pages + free_pages + reserved_pages.
  uint64_t space_pages = 0;
  uint64_t allocated_pages = 0;  // held by callers
  uint64_t cached_pages = 0;     // in magazines: allocated from the tree's view
  uint64_t free_pages = 0;       // in the free tree
  uint64_t reserved_pages = 0;
  uint64_t largest_free_pages = 0;
  uint64_t free_ranges = 0;
  // Bucket k counts free ranges of [2^k, 2^(k+1)) pages.
  uint64_t free_range_histogram[internal::IovaGapTree::kHistogramBuckets] = {};
  // 1 - largest_free / free; 0 when nothing is free.
  double fragmentation_ratio = 0;
  // Indexed by IovaFailureReason.
  uint64_t failures[kIovaFailureReasonCount] = {};
  uint64_t cache_hits = 0;
  uint64_t cache_misses = 0;
  uint64_t live_allocations = 0;  // held by callers, not cached
};

class IovaAllocator {
 public:
  // INVALID_ARGUMENT naming the field for: granule_bytes not 4K/16K/64K,
  // start_pfn == 0, end_pfn < start_pfn, end_pfn whose byte address overflows,
  // cache.max_pages not a power of two in [1, 2^20], magazine_depth not in
  // [1, 4096], depot_magazines > 4096.
  static absl::StatusOr<IovaAllocator> Create(const IovaAllocatorOptions& options);

  IovaAllocator(IovaAllocator&&) = default;
  IovaAllocator& operator=(IovaAllocator&&) = default;

  // ceil(size_bytes / granule) pages (see Policy: rounded up to their size
  // class when cacheable) at or below the inclusive byte limit (e.g. a
  // device's DMA mask; a limit above the space is clipped to it). Errors:
  // INVALID_ARGUMENT size_bytes == 0; OUT_OF_RANGE size_bytes larger than
  // the space, or limit below the first allocatable IOVA; RESOURCE_EXHAUSTED
  // naming size_bytes, the pages and alignment needed, why (no space,
  // fragmented, only above the limit) and the largest free range.
  [[gnu::always_inline]] absl::StatusOr<Iova> AllocIova(uint64_t size_bytes, Iova limit) {
    // Inline: the top of the class's loaded magazine fits below the limit.
    // (size_bytes - 1) >> shift is num_pages - 1, and huge for size_bytes 0.
    const uint64_t index = (size_bytes - 1) >> granule_shift_;
    if (index < inline_max_pages_) [[likely]] {
      const int cls = internal::kIovaSmallClasses.cls[index];
      const uint64_t last = internal::kIovaSmallClasses.last[index];  // size - 1
      // A cached range lies inside [start_pfn, end_pfn], so it fits below
      // the limit iff it ends at or below limit_pfn: no clip to end_pfn.
      // With try_32bit_first the first try is below 4 GiB, as in the slow
      // path (whose first pop, from the same magazine top, this is).
      const uint64_t limit_pfn = std::min(limit.value() >> granule_shift_, first_try_max_pfn_);
      if (limit_pfn >= last) [[likely]] {
        const uint64_t pfn = cache_.TryPopLoaded(cls, limit_pfn - last);
        if (pfn != 0) [[likely]] {
          ++cache_hits_;
          // The range was recorded live before it was cached: its chunk
          // exists.
          internal::IovaAllocMap::Set(small_.Existing(pfn),
                                      internal::IovaAllocMap::BitsAt(pfn, last));
          return Iova(pfn << granule_shift_);
        }
      }
    }
    return AllocIovaSlow(size_bytes, limit);
  }

  // Frees what AllocIova returned, given the same size_bytes: a cacheable
  // allocation goes to its size class's magazines (a full class spills one
  // magazine to the tree), anything else to the tree. Errors:
  // INVALID_ARGUMENT iova not granule-aligned, size_bytes == 0, or a size
  // that does not match the allocation (after the same rounding, naming
  // num_pages and the allocation's pages); NOT_FOUND no live allocation
  // starts at iova (never allocated, already freed, or sitting in a cache).
  [[gnu::always_inline]] absl::Status FreeIova(Iova iova, uint64_t size_bytes) {
    // Inline: a live allocation of exactly its class size into a loaded
    // magazine with room.
    const uint64_t index = (size_bytes - 1) >> granule_shift_;  // as in AllocIova
    if (index < inline_max_pages_ && (iova.value() & granule_mask_) == 0) [[likely]] {
      const uint64_t pfn = iova.value() >> granule_shift_;
      const int cls = internal::kIovaSmallClasses.cls[index];
      const uint64_t last = internal::kIovaSmallClasses.last[index];  // size - 1
      internal::IovaAllocMap::Group* const g = small_.Find(pfn);
      const internal::IovaAllocMap::Bits bits = internal::IovaAllocMap::BitsAt(pfn, last);
      if (internal::IovaAllocMap::Holds(*g, bits) && cache_.TryPushLoaded(cls, pfn)) [[likely]] {
        internal::IovaAllocMap::Clear(*g, bits);
        return absl::OkStatus();
      }
    }
    return FreeIovaSlow(iova, size_bytes);
  }

  // Size in bytes of the live allocation starting at iova's granule, if any
  // (how the broker unmaps by address). Cached ranges are not live.
  std::optional<uint64_t> AllocationSizeBytes(Iova iova) const;

  // Never hands out [pfn_lo, pfn_hi] (reserve_iova). The part outside
  // [start_pfn, end_pfn] is ignored (it is never allocatable anyway); reserving
  // already reserved pages is a no-op. Flushes the caches first. Errors:
  // INVALID_ARGUMENT pfn_hi < pfn_lo; FAILED_PRECONDITION when the range
  // overlaps a live allocation (nothing is reserved then).
  absl::Status Reserve(uint64_t pfn_lo, uint64_t pfn_hi);

  // Makes live exactly the allocation that AllocIova(size_bytes, limit) would
  // have made had it returned iova: ceil(size_bytes / granule) pages, rounded
  // up to their size class when cacheable (see Policy), starting at iova. So
  // FreeIova(iova, size_bytes) frees it, AllocationSizeBytes(iova) reports
  // it, GetStats counts it as live (allocated_pages, live_allocations), and
  // no later AllocIova hands out its pages. For rebuilding a domain after a
  // restart at the recorded addresses, never through the placement policy:
  // the cache hit/miss counters and the kLinuxNextFit cursors are left as
  // they are (a claim is not a placement decision). When the range overlaps
  // cached ranges (freed, sitting in the magazines) the caches are first
  // flushed to the tree, as Reserve does, so that the claim needs only the
  // tree; a fresh allocator has nothing cached and flushes nothing.
  // Errors, checked in this order, changing nothing:
  //   INVALID_ARGUMENT  size_bytes == 0; iova not granule-aligned;
  //   OUT_OF_RANGE      size_bytes larger than the space;
  //   INVALID_ARGUMENT  iova not aligned to RoundUpPowerOfTwo(pages), where
  //                     AllocIova never places such an allocation;
  //   OUT_OF_RANGE      the pages not inside [start_pfn, end_pfn];
  //   FAILED_PRECONDITION  the pages overlap a live allocation or a reserved
  //                     range: the lowest one, by its pfns and size.
  // Cost: O(log n) (two descents of the gap tree and one of the allocation
  // map; a chunk of the map on first use). The error path and the flush are
  // O(pieces of the range x log n + cached ranges + allocations of more than
  // 4096 pages).
  absl::Status ClaimIova(Iova iova, uint64_t size_bytes);

  // Returns every cached range to the tree (free_cpu_cached_iovas).
  // O(cached ranges x log n).
  void FlushCaches();

  // fn(lo_pfn, hi_pfn) for each free range, ascending. O(free ranges).
  template <typename Fn>
  void ForEachFreeRange(Fn&& fn) const {
    tree_.ForEach([&](internal::IovaGapTree::Range r) { fn(r.lo, r.hi); });
  }
  // fn(pfn, num_pages) for each live allocation, ascending (walks the chunks
  // touched, O(span touched / 64), and sorts a copy when large ones exist).
  void ForEachAllocated(const std::function<void(uint64_t, uint64_t)>& fn) const;
  // fn(lo_pfn, hi_pfn) for each reserved range, ascending.
  template <typename Fn>
  void ForEachReserved(Fn&& fn) const {
    for (const auto& [lo, hi] : reserved_) fn(lo, hi);
  }

  IovaStats GetStats() const;
  const IovaAllocatorOptions& options() const { return options_; }
  uint64_t granule_shift() const { return granule_shift_; }

  // Walks everything (see Invariants above); INTERNAL naming the first break.
  absl::Status CheckInvariants() const;

 private:
  friend class internal::IovaAllocatorTestPeer;  // reaches AllocIovaSlow
  IovaAllocator(const IovaAllocatorOptions& options, int num_orders);

  // ceil(size_bytes / granule), without overflow.
  uint64_t PagesOf(uint64_t size_bytes) const {
    return (size_bytes >> granule_shift_) + ((size_bytes & granule_mask_) != 0);
  }
  absl::StatusOr<Iova> AllocIovaSlow(uint64_t size_bytes, Iova limit);
  absl::Status FreeIovaSlow(Iova iova, uint64_t size_bytes);
  // Pages a request really takes: rounded up to its class when cacheable.
  uint64_t ClassPages(uint64_t num_pages) const {
    return num_pages - 1 < cache_max_pages_ ? RoundUpPowerOfTwo(num_pages) : num_pages;
  }
  // A cached range of num_pages (a class size) ending at or below
  // limit_pfn, made live; 0 if none.
  uint64_t PopCached(uint64_t num_pages, uint64_t limit_pfn);
  // One tree attempt; 0 on failure.
  uint64_t AllocFromTree(uint64_t num_pages, uint64_t limit_pfn);
  void ReleaseToTree(uint64_t pfn, uint64_t num_pages);
  // Counts the failure of a num_pages request and returns its reason.
  IovaFailureReason CountFailure(uint64_t num_pages);
  // The errors of AllocIova and FreeIova, built out of the way of the paths
  // that succeed. ExhaustedError counts the failure of a num_pages request.
  // FreeError's NOT_FOUND says whether the pfn sits in a cache (a scan of
  // the magazines).
  [[gnu::cold]] absl::Status RequestError(uint64_t size_bytes, Iova limit) const;
  [[gnu::cold]] absl::Status ExhaustedError(uint64_t size_bytes, uint64_t num_pages,
                                            uint64_t limit_pfn);
  [[gnu::cold]] absl::Status FreeError(Iova iova, uint64_t size_bytes) const;
  // ClaimIova's check of [pfn, last] once it is not inside one free range:
  // FAILED_PRECONDITION for the lowest live allocation or reserved range it
  // overlaps, OK when it is all free or cached (then a flush frees it).
  [[gnu::cold]] absl::Status ClaimConflict(Iova iova, uint64_t pfn, uint64_t last) const;
  // The live allocation holding pfn: its first pfn and pages; false if none.
  bool LiveContaining(uint64_t pfn, uint64_t* first, uint64_t* pages) const;
  // The live-allocation index: small_ or large_ by size.
  void RecordLive(uint64_t pfn, uint64_t num_pages);
  // Pages of the live allocation starting at pfn, 0 if none.
  uint64_t LivePages(uint64_t pfn) const;
  uint64_t ReservedPagesIn(uint64_t lo, uint64_t hi) const;
  // limit_pfn clipped to end_pfn_.
  uint64_t ClipLimit(uint64_t limit_pfn) const {
    return limit_pfn < end_pfn_ ? limit_pfn : end_pfn_;
  }

  IovaAllocatorOptions options_;
  uint64_t granule_shift_ = 0;
  uint64_t granule_mask_ = 0;  // granule_bytes - 1
  uint64_t start_pfn_ = 0;
  uint64_t end_pfn_ = 0;
  uint64_t space_pages_ = 0;
  uint64_t pfn_32bit_ = 0;        // last pfn below 4 GiB
  uint64_t cache_max_pages_ = 0;  // 0 when caching is off
  // min(cache_max_pages_, 64): the classes small_ records in one group, which
  // AllocIova and FreeIova serve inline.
  uint64_t inline_max_pages_ = 0;
  // The highest pfn an allocation's first try may end at: pfn_32bit_ with
  // try_32bit_first (when the space reaches below 4 GiB), else no bound.
  uint64_t first_try_max_pfn_ = ~uint64_t{0};
  // kLinuxNextFit: first pfn of the cached nodes (cached32_node for
  // allocations ending below 4 GiB, cached_node above), kNoCursor for the
  // anchor. Each is kNoCursor or a non-free pfn.
  static constexpr uint64_t kNoCursor = ~uint64_t{0};
  uint64_t cursor32_ = kNoCursor;
  uint64_t cursor_ = kNoCursor;

  internal::IovaGapTree tree_;
  internal::IovaMagazineCache cache_;
  // Live allocations: small_ those of <= 4096 pages, large_ (first pfn ->
  // pages) the rest. Cached ranges are in neither.
  internal::IovaAllocMap small_;
  absl::flat_hash_map<uint64_t, uint64_t> large_;
  std::map<uint64_t, uint64_t> reserved_;  // lo -> hi, disjoint, non-adjacent

  uint64_t allocated_pages_ = 0;  // live + cached
  // Live + cached allocations (changed by the tree paths only: a cache push
  // or pop moves one between the two); live = allocations_ - cached ranges.
  uint64_t allocations_ = 0;
  uint64_t reserved_pages_ = 0;
  uint64_t failures_[kIovaFailureReasonCount] = {};
  uint64_t cache_hits_ = 0;
  uint64_t cache_misses_ = 0;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_IOVA_IOVA_ALLOCATOR_H_
