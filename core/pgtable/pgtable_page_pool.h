// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_PGTABLE_PGTABLE_PAGE_POOL_H_
#define IOMMU_CORE_PGTABLE_PGTABLE_PAGE_POOL_H_

// PgtablePagePool: a bounded cache of zeroed page-table pages — one
// translation granule (4K, 16K or 64K) each, aligned to its size — shared by
// the page tables of a process, as the kernel's page allocator keeps freed
// pages hot for the next io-pgtable.
//
// Why. Page-table memory comes and goes with mappings (tables are freed when
// empty; domains come and go). Straight from the C++ allocator, a
// granule-aligned page drags a chunk header into the page before it, freed
// memory is trimmed back to the kernel, and every fresh page then costs a
// page fault plus kernel zeroing (docs/performance.md#page-table). Pages
// come back here all zero (a table is freed when it has no valid entry, or
// zeroed by its owner), so they are handed out again without a fault or a
// memset.
//
// Policy and cost. One LIFO free list per page size, linked through each
// page's first word (zeroed again on the way out). Alloc and Free are O(1)
// under one mutex — callers keep their own small lock-free cache in front
// (LpaePgtable keeps 8 tables). The pool holds at most max_bytes (default
// 4 MiB, 1024 4K pages); a page freed beyond that goes back to the allocator.
// Pages handed out are their page table's to account
// (PgtableStats::table_bytes); Stats() reports what the pool holds.
//
// Thread-safe.

#include <array>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace iommu::core {

class PgtablePagePool {
 public:
  static constexpr uint64_t kDefaultMaxBytes = uint64_t{4} << 20;

  explicit PgtablePagePool(uint64_t max_bytes = kDefaultMaxBytes) : max_bytes_(max_bytes) {}
  // Returns every pooled page to the allocator.
  ~PgtablePagePool();
  PgtablePagePool(const PgtablePagePool&) = delete;
  PgtablePagePool& operator=(const PgtablePagePool&) = delete;

  // The pool every LpaePgtable draws from; never destroyed.
  static PgtablePagePool& Default();

  // Whether page_bytes is a size the pool serves (4K, 16K, 64K).
  static bool IsPageSize(uint64_t page_bytes);

  // A page of page_bytes aligned to page_bytes, every byte zero; nullptr when
  // the pool is empty and the allocator has no memory.
  // REQUIRES: IsPageSize(page_bytes).
  void* Alloc(uint64_t page_bytes);
  // Gives back a page Alloc(page_bytes) returned. REQUIRES: every byte zero.
  void Free(void* page, uint64_t page_bytes);

  struct Stats {
    uint64_t pooled_pages = 0;
    uint64_t pooled_bytes = 0;
    uint64_t hits = 0;      // Alloc served from the pool
    uint64_t misses = 0;    // Alloc served by the allocator
    uint64_t releases = 0;  // Free beyond max_bytes, given to the allocator
  };
  Stats GetStats() const;

  // Test oracle: every pooled page is aligned and zero but for its link, the
  // lists agree with the counts, and the pool is within max_bytes. OK or
  // INTERNAL naming the first violation.
  absl::Status CheckInvariants() const;

 private:
  static constexpr int kSizes = 3;
  static int SizeIndex(uint64_t page_bytes);
  static void* AllocFresh(uint64_t page_bytes);
  static void Release(void* page, uint64_t page_bytes);

  const uint64_t max_bytes_;
  mutable absl::Mutex mu_;
  // Free lists by SizeIndex, linked through word 0 of each page.
  std::array<void*, kSizes> free_ ABSL_GUARDED_BY(mu_){};
  std::array<uint64_t, kSizes> count_ ABSL_GUARDED_BY(mu_){};
  uint64_t pooled_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t releases_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_PGTABLE_PGTABLE_PAGE_POOL_H_
