// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOVA_SLAB_MEMORY_H_
#define IOMMU_CORE_IOVA_SLAB_MEMORY_H_

// Zeroed memory blocks for the engines' slabs (the gap tree's nodes, the
// allocation map's chunks), which are visited at random once they grow past
// the caches.
//
// With 4 KiB pages such a visit nearly always misses the TLB as well as the
// caches, and under nested paging the page walk costs about as much again as
// the miss (figures: docs/performance.md#iova-allocator). So a block whose
// size is a multiple of 2 MiB is 2 MiB-aligned and advised for transparent
// huge pages; smaller blocks stay on ordinary pages, so that small trees and
// maps (most domains) cost no 2 MiB each. The advice is a hint: where
// transparent huge pages are off ("never"), nothing changes but the
// alignment.

#include <cstddef>
#include <cstdlib>
#include <memory>

namespace iommu::core::internal {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// `bytes` of zeroed memory aligned to `align` (a power of two, at most 4 KiB),
// or to kHugePageBytes and advised for huge pages when `bytes` is a multiple
// of kHugePageBytes. Throws std::bad_alloc when out of memory.
void* AllocSlabBlock(size_t bytes, size_t align);

struct SlabBlockFree {
  void operator()(void* p) const { std::free(p); }
};

// An array of trivially constructible T in one slab block.
template <typename T>
using SlabArray = std::unique_ptr<T[], SlabBlockFree>;

template <typename T>
SlabArray<T> NewSlabArray(size_t count) {
  return SlabArray<T>(static_cast<T*>(AllocSlabBlock(count * sizeof(T), alignof(T))));
}

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_SLAB_MEMORY_H_
