#include "core/iova_magazine.h"

#include <cassert>
#include <set>

namespace iommu::core::internal {

IovaMagazineCache::IovaMagazineCache(int num_classes, uint32_t depth, uint32_t depot_size)
    : depth_(depth), depot_size_(depot_size) {
  assert(num_classes >= 0 && depth >= 1);
  const size_t mag_words = size_t{depth} + 1;
  const size_t mags_per_class = 2 + size_t{depot_size};
  storage_.assign(mag_words * mags_per_class * num_classes, 0);
  classes_.resize(num_classes);
  uint64_t* next = storage_.data();
  for (Class& c : classes_) {
    c.loaded = next;
    next += mag_words;
    c.prev = next;
    next += mag_words;
    c.depot.reserve(depot_size);
    c.spares.reserve(depot_size);
    for (uint32_t i = 0; i < depot_size; ++i) {
      c.spares.push_back(next);
      next += mag_words;
    }
  }
}

uint64_t IovaMagazineCache::PopBelow(uint64_t* mag, uint64_t max_pfn) {
  const uint64_t n = mag[0];
  for (uint64_t i = n - 1; i >= 1; --i) {
    if (mag[i] <= max_pfn) {
      const uint64_t pfn = mag[i];
      mag[i] = mag[n];
      return pfn;
    }
  }
  return 0;
}

uint64_t IovaMagazineCache::cached_ranges() const {
  uint64_t n = 0;
  for (const Class& c : classes_) n += c.loaded[0] + c.prev[0] + c.depot.size() * depth_;
  return n;
}

uint64_t IovaMagazineCache::cached_pages() const {
  uint64_t pages = 0;
  for (int cls = 0; cls < num_classes(); ++cls) {
    const Class& c = classes_[cls];
    pages += (c.loaded[0] + c.prev[0] + c.depot.size() * depth_) << cls;
  }
  return pages;
}

bool IovaMagazineCache::StructureOk() const {
  const size_t mag_words = depth_ + 1;
  const size_t mags_per_class = 2 + depot_size_;
  for (int cls = 0; cls < num_classes(); ++cls) {
    const Class& c = classes_[cls];
    const uint64_t* first = storage_.data() + mag_words * mags_per_class * cls;
    std::set<const uint64_t*> seen;
    auto own = [&](const uint64_t* mag) {
      const bool inside = mag >= first && mag < first + mag_words * mags_per_class &&
                          (mag - first) % mag_words == 0;
      return inside && seen.insert(mag).second && mag[0] <= depth_;
    };
    if (!own(c.loaded) || !own(c.prev)) return false;
    for (const uint64_t* mag : c.depot) {
      if (!own(mag) || mag[0] != depth_) return false;
    }
    for (const uint64_t* mag : c.spares) {
      if (!own(mag)) return false;
    }
    if (seen.size() != mags_per_class || c.depot.size() > depot_size_) return false;
  }
  return true;
}

}  // namespace iommu::core::internal
