// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_magazine.h"

#include <cassert>
#include <set>

namespace iommu::core::internal {

IovaMagazineCache::IovaMagazineCache(int num_classes, uint32_t depth, uint32_t depot_size)
    : num_classes_(num_classes), depth_(depth), depot_size_(depot_size) {
  assert(num_classes >= 0 && num_classes <= kMaxClasses && depth >= 1);
  const size_t mags_per_class = 2 + size_t{depot_size};
  storage_.assign(size_t{depth} * mags_per_class * num_classes, 0);
  mag_slots_.assign(size_t{depot_size} * num_classes, nullptr);
  uint64_t* next = storage_.data();
  for (int cls = 0; cls < num_classes; ++cls) {
    Class& c = classes_[cls];
    loaded_[cls] = next;
    next += depth;
    c.prev = next;
    next += depth;
    c.mags = mag_slots_.data() + size_t{depot_size} * cls;
    for (uint32_t i = 0; i < depot_size; ++i) {
      c.mags[i] = next;
      next += depth;
    }
  }
}

uint64_t IovaMagazineCache::PopBelow(uint64_t* mag, uint64_t n, uint64_t max_pfn) {
  for (uint64_t i = n - 1; i-- > 0;) {
    if (mag[i] <= max_pfn) {
      const uint64_t pfn = mag[i];
      mag[i] = mag[n - 1];
      return pfn;
    }
  }
  return 0;
}

uint64_t IovaMagazineCache::cached_ranges() const {
  uint64_t n = 0;
  for (int cls = 0; cls < num_classes_; ++cls) {
    const Class& c = classes_[cls];
    n += loaded_count_[cls] + c.prev_count + c.depot_count * depth_;
  }
  return n;
}

uint64_t IovaMagazineCache::cached_pages() const {
  uint64_t pages = 0;
  for (int cls = 0; cls < num_classes_; ++cls) {
    const Class& c = classes_[cls];
    pages += (loaded_count_[cls] + c.prev_count + c.depot_count * depth_) << cls;
  }
  return pages;
}

bool IovaMagazineCache::StructureOk() const {
  const size_t mags_per_class = 2 + depot_size_;
  for (int cls = 0; cls < num_classes_; ++cls) {
    const Class& c = classes_[cls];
    const uint64_t* first = storage_.data() + depth_ * mags_per_class * cls;
    std::set<const uint64_t*> seen;
    auto own = [&](const uint64_t* mag) {
      const bool inside =
          mag >= first && mag < first + depth_ * mags_per_class && (mag - first) % depth_ == 0;
      return inside && seen.insert(mag).second;
    };
    if (loaded_count_[cls] > depth_ || c.prev_count > depth_ || c.depot_count > depot_size_) {
      return false;
    }
    if (c.mags != mag_slots_.data() + depot_size_ * cls) return false;
    if (!own(loaded_[cls]) || !own(c.prev)) return false;
    for (uint64_t i = 0; i < depot_size_; ++i) {
      if (!own(c.mags[i])) return false;
    }
    if (seen.size() != mags_per_class) return false;
  }
  return true;
}

}  // namespace iommu::core::internal
