#ifndef IOMMU_CORE_IOVA_MAGAZINE_H_
#define IOMMU_CORE_IOVA_MAGAZINE_H_

// IovaMagazineCache: Linux's IOVA range caches (iova.c "rcache") for one CPU.
//
// Layout. One size class per order 0..num_classes-1 (class k caches ranges of
// exactly 2^k pages). Each class owns 2 + depot_size magazines carved out of
// one array allocated at construction, so pushes and pops never allocate:
//
//   magazine = [count, pfn_1, ..., pfn_depth]   (depth + 1 words)
//   class    = loaded, prev (magazines) + depot (stack of full magazines)
//            + spares (empty magazines not in use)
//
// Policy (as __iova_rcache_insert / __iova_rcache_get):
//   Push: into `loaded`; if full, swap with `prev` when prev is not full; if
//     both are full, move `loaded` to the depot and take a spare; if the depot
//     is full too, spill `loaded` back to the tree (the caller's release
//     callback) and reuse it.
//   Pop: from `loaded`; if empty, swap with a non-empty `prev`, else take a
//     full magazine from the depot. Only pfns <= max_pfn qualify: the top one is
//     checked first, then the magazine is scanned downwards (bounded by depth,
//     O(1) in n). No qualifying pfn is a miss (0), as in Linux.
//
// Cost: Push and Pop are O(1) (a few loads and stores) unless the limit forces
// a scan of one magazine or a spill releases one magazine to the tree.
// TryPopLoaded / TryPushLoaded are the inline common cases (the loaded
// magazine serves), a handful of instructions with no counter updates: the
// totals are recounted from the magazine counts, O(size classes).
//
// Thread-compatible: one instance per allocator ("one CPU"); the owning
// IovaAllocator serialises all calls.

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace iommu::core::internal {

class IovaMagazineCache {
 public:
  IovaMagazineCache() = default;
  IovaMagazineCache(int num_classes, uint32_t depth, uint32_t depot_size);

  IovaMagazineCache(IovaMagazineCache&&) = default;
  IovaMagazineCache& operator=(IovaMagazineCache&&) = default;

  int num_classes() const { return static_cast<int>(classes_.size()); }
  // Number of cached ranges and the pages they cover. O(size classes).
  uint64_t cached_ranges() const;
  uint64_t cached_pages() const;

  // Pop's common case: the top of the loaded magazine when it is <= max_pfn,
  // removed from the cache; 0 otherwise (nothing changed; Pop may still find
  // one).
  uint64_t TryPopLoaded(int cls, uint64_t max_pfn) {
    uint64_t* mag = classes_[cls].loaded;
    const uint64_t n = mag[0];
    if (n == 0) return 0;
    const uint64_t pfn = mag[n];
    if (pfn > max_pfn) return 0;
    mag[0] = n - 1;
    return pfn;
  }

  // A cached pfn of class `cls` that is <= max_pfn, removed from the cache;
  // 0 when there is none (pfn 0 is never cached).
  uint64_t Pop(int cls, uint64_t max_pfn) {
    Class& c = classes_[cls];
    if (c.loaded[0] == 0) {
      if (c.prev[0] != 0) {
        std::swap(c.loaded, c.prev);
      } else if (!c.depot.empty()) {
        c.spares.push_back(c.loaded);
        c.loaded = c.depot.back();
        c.depot.pop_back();
      } else {
        return 0;
      }
    }
    uint64_t* mag = c.loaded;
    const uint64_t n = mag[0];
    uint64_t pfn = mag[n];
    if (pfn > max_pfn) [[unlikely]] {
      pfn = PopBelow(mag, max_pfn);
      if (pfn == 0) return 0;
    }
    mag[0] = n - 1;
    return pfn;
  }

  // Caches `pfn` if the loaded magazine has room (the common case); false
  // otherwise, with nothing changed.
  bool TryPushLoaded(int cls, uint64_t pfn) {
    uint64_t* mag = classes_[cls].loaded;
    const uint64_t n = mag[0];
    if (n == depth_) return false;
    mag[n + 1] = pfn;
    mag[0] = n + 1;
    return true;
  }

  // Caches `pfn` in class `cls`. When every magazine of the class is full,
  // calls release(pfn, cls) for each pfn of one spilled magazine first.
  template <typename ReleaseFn>
  void Push(int cls, uint64_t pfn, ReleaseFn&& release) {
    Class& c = classes_[cls];
    if (c.loaded[0] == depth_) [[unlikely]] {
      if (c.prev[0] != depth_) {
        std::swap(c.loaded, c.prev);
      } else if (c.depot.size() < depot_size_) {
        c.depot.push_back(c.loaded);
        c.loaded = c.spares.back();
        c.spares.pop_back();
        c.loaded[0] = 0;
      } else {
        Spill(cls, c.loaded, release);
      }
    }
    uint64_t* mag = c.loaded;
    mag[++mag[0]] = pfn;
  }

  // Empties every magazine, calling release(pfn, cls) for each cached pfn.
  template <typename ReleaseFn>
  void Flush(ReleaseFn&& release) {
    for (int cls = 0; cls < num_classes(); ++cls) {
      Class& c = classes_[cls];
      Spill(cls, c.loaded, release);
      Spill(cls, c.prev, release);
      for (uint64_t* mag : c.depot) {
        Spill(cls, mag, release);
        c.spares.push_back(mag);
      }
      c.depot.clear();
    }
  }

  // Visits every cached (pfn, cls).
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (int cls = 0; cls < num_classes(); ++cls) {
      const Class& c = classes_[cls];
      auto visit = [&](const uint64_t* mag) {
        for (uint64_t i = 1; i <= mag[0]; ++i) fn(mag[i], cls);
      };
      visit(c.loaded);
      visit(c.prev);
      for (const uint64_t* mag : c.depot) visit(mag);
    }
  }

  // Structural self-check: magazine counts within depth, depot full
  // magazines, every magazine accounted for exactly once.
  bool StructureOk() const;

 private:
  struct Class {
    uint64_t* loaded = nullptr;
    uint64_t* prev = nullptr;
    std::vector<uint64_t*> depot;   // full magazines; capacity depot_size_
    std::vector<uint64_t*> spares;  // empty magazines
  };

  // Removes and returns the highest-index pfn <= max_pfn of a non-empty
  // magazine, keeping the rest (order is irrelevant); 0 if none.
  static uint64_t PopBelow(uint64_t* mag, uint64_t max_pfn);

  template <typename ReleaseFn>
  void Spill(int cls, uint64_t* mag, ReleaseFn& release) {
    for (uint64_t i = 1; i <= mag[0]; ++i) release(mag[i], cls);
    mag[0] = 0;
  }

  uint64_t depth_ = 0;
  uint64_t depot_size_ = 0;
  std::vector<uint64_t> storage_;  // all magazines; never reallocated after construction
  std::vector<Class> classes_;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_MAGAZINE_H_
