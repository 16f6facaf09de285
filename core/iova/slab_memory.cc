// SPDX-License-Identifier: Apache-2.0
#include "core/iova/slab_memory.h"

#include <sys/mman.h>

#include <cassert>
#include <cstring>
#include <new>

namespace iommu::core::internal {

void* AllocSlabBlock(size_t bytes, size_t align) {
  assert(bytes > 0 && (align & (align - 1)) == 0 && align <= 4096);
  const bool huge = bytes % kHugePageBytes == 0;
  // aligned_alloc wants a size that is a multiple of the alignment.
  const size_t alignment = huge ? kHugePageBytes : align;
  const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  // Before the first touch, so that the zeroing below faults huge pages in.
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  std::memset(p, 0, bytes);
  return p;
}

}  // namespace iommu::core::internal
