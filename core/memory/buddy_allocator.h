// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_MEMORY_BUDDY_ALLOCATOR_H_
#define IOMMU_CORE_MEMORY_BUDDY_ALLOCATOR_H_

// A binary buddy allocator over one physical range of CPU pages, as Linux's
// page allocator (mm/page_alloc.c) manages a zone.
//
// Layout. The range [base, base + size_bytes) holds num_pages pages of
// page_size_bytes. A block of order k is 2^k pages starting at a page frame
// number (pfn = address / page_size_bytes) that is a multiple of 2^k in
// ABSOLUTE terms, so an order-k block is naturally aligned to
// page_size_bytes << k in physical address space. Its buddy is the block at
// pfn ^ 2^k. Per page the allocator keeps 9 bytes of metadata (an order tag
// and two uint32 free-list links, used only by the first page of a free
// block), so a 4 GiB range of 4 KiB pages costs 9 MiB; free lists are
// intrusive, doubly linked and LIFO (a block freed last is reused first).
//
// Policy. Allocate(k) takes the head of the smallest non-empty free list of
// order >= k and splits it down, returning the lower half and freeing the
// upper halves. Free(block, k) merges with its buddy while the buddy is free,
// of the same order and inside the range, up to max_order. The range need not
// be aligned: at construction it is carved into maximal aligned blocks.
//
// Cost. Allocate and Free are O(max_order) = O(log num_pages) with no heap
// allocation; Stats() is O(max_order); CheckInvariants() is O(num_pages).
//
// Invariants (checked by CheckInvariants()):
//   1. Every free block is naturally aligned, of order <= max_order, inside
//      the range, and free blocks are pairwise disjoint.
//   2. No two free buddies of order < max_order are left uncoalesced.
//   3. Per-order block counts and the free page total equal a recount.
//
// Thread-compatible: the owner serialises all calls (PhysMemory holds its
// mutex around every call).

#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/base/types.h"

namespace iommu::core {

struct BuddyOptions {
  // CPU page size; a power of two >= 64.
  uint64_t page_size_bytes = 4096;
  // Largest block order. Default: the largest order whose block is at most
  // 1 GiB and at most the range size. At most kMaxBuddyOrder.
  std::optional<unsigned> max_order;
};

inline constexpr unsigned kMaxBuddyOrder = 31;
inline constexpr uint64_t kDefaultMaxBlockBytes = uint64_t{1} << 30;

struct BuddyStats {
  uint64_t page_size_bytes = 0;
  unsigned max_order = 0;
  uint64_t total_pages = 0;
  uint64_t free_pages = 0;
  // free_blocks_by_order[k]: number of free blocks of order k (k <= max_order).
  std::vector<uint64_t> free_blocks_by_order;
  // Pages in the largest free block; 0 when nothing is free.
  uint64_t largest_free_block_pages = 0;
};

// One free block, as listed by FreeBlocks().
struct BuddyBlock {
  PhysAddr start;
  unsigned order = 0;
  friend bool operator==(const BuddyBlock&, const BuddyBlock&) = default;
};

class BuddyAllocator {
 public:
  // The whole range starts free. Errors (INVALID_ARGUMENT): page_size_bytes
  // not a power of two >= 64; base or size_bytes not page-aligned;
  // size_bytes zero, or the range passing 2^64; more than 2^32 - 1 pages;
  // max_order above kMaxBuddyOrder.
  static absl::StatusOr<BuddyAllocator> Create(PhysAddr base, uint64_t size_bytes,
                                               BuddyOptions options = {});

  BuddyAllocator(BuddyAllocator&&) = default;
  BuddyAllocator& operator=(BuddyAllocator&&) = default;

  // A naturally aligned block of 2^order pages.
  // INVALID_ARGUMENT: order > max_order. RESOURCE_EXHAUSTED: no free block of
  // that order or larger (the message gives the largest free block).
  absl::StatusOr<PhysAddr> Allocate(unsigned order);

  // Returns the block [block, block + (page_size << order)) and coalesces.
  // REQUIRES: every page of the block is allocated. The block need not be one
  // that Allocate returned: any aligned part of an allocated block may be
  // freed separately (as alloc_pages_exact gives back its tail).
  // INVALID_ARGUMENT: order > max_order, block misaligned or outside the
  // range. NOT_FOUND: the block's first page lies in a free block (a double
  // free; detected in O(max_order), a free block strictly inside the freed
  // block is not detected here — PhysMemory's ownership map prevents it).
  absl::Status Free(PhysAddr block, unsigned order);

  // Frees [start, start + num_pages pages) as maximal aligned blocks; same
  // contract and errors as Free. Validates every block before freeing any.
  absl::Status FreeRange(PhysAddr start, uint64_t num_pages);

  // Allocates exactly the pages [start, start + num_pages pages): every free
  // block overlapping the range is taken off its free list and split down,
  // the pieces outside the range going back to the free lists (what a buddy
  // allocator's "allocate this range" does). Afterwards the pages are
  // allocated as if Allocate had handed them out: FreeRange(start, num_pages),
  // or freeing them in any aligned pieces as Free allows, gives them back,
  // and coalescing restores the free blocks the allocator had before. For
  // restoring recorded allocations after a restart.
  // Errors, changing nothing: INVALID_ARGUMENT num_pages zero, start not
  // page-aligned, or the range passing 2^64; OUT_OF_RANGE the range not
  // inside the allocator's; FAILED_PRECONDITION "page=<addr>: not free",
  // naming the lowest page of the range that is allocated.
  // Cost: O(b x max_order), b = the free blocks the range overlaps; when the
  // range is free that is at most its maximal aligned blocks (coalescing is
  // complete), O(max_order + num_pages >> max_order). Never O(total pages).
  absl::Status ClaimRange(PhysAddr start, uint64_t num_pages);

  // Number of order-`order` blocks that Allocate(order) could return one after
  // another now (free blocks of higher orders count as several).
  // REQUIRES: order <= max_order().
  uint64_t AvailableBlocks(unsigned order) const;

  // Largest order with a free block, nullopt when nothing is free.
  std::optional<unsigned> LargestFreeOrder() const;

  PhysAddr base() const { return PhysAddr(base_pfn_ << page_shift_); }
  uint64_t size_bytes() const { return num_pages_ << page_shift_; }
  uint64_t page_size_bytes() const { return uint64_t{1} << page_shift_; }
  unsigned max_order() const { return max_order_; }
  uint64_t total_pages() const { return num_pages_; }
  uint64_t free_pages() const { return free_pages_; }
  bool Contains(PhysAddr addr) const;

  BuddyStats Stats() const;

  // All free blocks in address order. O(num_pages); for tests and checks.
  std::vector<BuddyBlock> FreeBlocks() const;

  // OK, or INTERNAL naming the first broken invariant (a bug).
  absl::Status CheckInvariants() const;

 private:
  using Index = uint32_t;  // page index relative to base_pfn_
  static constexpr Index kNil = std::numeric_limits<Index>::max();
  static constexpr uint8_t kNotFreeHead = 0xff;

  BuddyAllocator(uint64_t base_pfn, uint64_t num_pages, unsigned page_shift, unsigned max_order);

  void PushFree(Index idx, unsigned order);
  void RemoveFree(Index idx, unsigned order);
  // The index of the free block covering `idx` at order >= min_order, if any.
  std::optional<Index> CoveringFreeHead(Index idx, unsigned min_order) const;
  absl::Status ValidateBlock(PhysAddr block, unsigned order, Index* idx) const;
  void FreeValidated(Index idx, unsigned order);
  // Puts the parts of the block [idx, idx + 2^order) that lie outside the
  // relative page range [lo, hi) on the free lists, as aligned blocks.
  // REQUIRES: the block is off the free lists. O(order).
  void PushOutside(Index idx, unsigned order, uint64_t lo, uint64_t hi);

  uint64_t base_pfn_ = 0;
  uint64_t num_pages_ = 0;
  unsigned page_shift_ = 0;
  unsigned max_order_ = 0;
  uint64_t free_pages_ = 0;
  // Per page: the order of the free block starting here, or kNotFreeHead.
  std::vector<uint8_t> head_order_;
  // Free-list links, meaningful only where head_order_ != kNotFreeHead.
  std::vector<Index> next_;
  std::vector<Index> prev_;
  // Per order: first block of the free list (kNil when empty) and its length.
  std::vector<Index> free_head_;
  std::vector<uint64_t> free_count_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_MEMORY_BUDDY_ALLOCATOR_H_
