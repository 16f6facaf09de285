// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOVA_IOVA_MAGAZINE_H_
#define IOMMU_CORE_IOVA_IOVA_MAGAZINE_H_

// IovaMagazineCache: Linux's IOVA range caches (iova.c "rcache") for one CPU.
//
// Layout. One size class per order 0..num_classes-1 (class k caches ranges of
// exactly 2^k pages). Each class owns 2 + depot_size magazines of `depth` pfns
// carved out of one array allocated at construction, so pushes and pops never
// allocate:
//
//   magazine = [pfn_0, ..., pfn_{depth-1}]        (its count is kept apart)
//   class    = the loaded magazine and its count (loaded_[cls] and
//              loaded_count_[cls]: the cache-hit paths touch nothing else) and
//              {prev, prev_count, mags, depot_count} (32 bytes); all arrays
//              indexed by class inside the object
//   mags     = the class's other depot_size magazines: mags[0, depot_count)
//              is the depot (full magazines, a stack), the rest are spares
//              (empty magazines not in use)
//
// Only `loaded` and `prev` can be partly filled, so only they carry a count;
// a depot magazine holds exactly depth pfns and a spare none. A cache hit
// loads the loaded magazine's pointer and its count independently (two
// words of the object at cls * 8) and then one word of the magazine, with
// no chained load through a count word in the magazine.
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
// totals are recounted from the class counts, O(size classes).
//
// Thread-compatible: one instance per allocator ("one CPU"); the owning
// IovaAllocator serialises all calls.

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace iommu::core::internal {

class IovaMagazineCache {
 public:
  // Size classes 0..20: cached requests of up to 2^20 pages.
  static constexpr int kMaxClasses = 21;

  IovaMagazineCache() = default;
  // REQUIRES: 0 <= num_classes <= kMaxClasses, depth >= 1.
  IovaMagazineCache(int num_classes, uint32_t depth, uint32_t depot_size);

  IovaMagazineCache(IovaMagazineCache&&) = default;
  IovaMagazineCache& operator=(IovaMagazineCache&&) = default;

  int num_classes() const { return num_classes_; }
  // Number of cached ranges and the pages they cover. O(size classes).
  uint64_t cached_ranges() const;
  uint64_t cached_pages() const;

  // Pop's common case: the top of the loaded magazine when it is <= max_pfn,
  // removed from the cache; 0 otherwise (nothing changed; Pop may still find
  // one).
  uint64_t TryPopLoaded(int cls, uint64_t max_pfn) {
    const uint64_t n = loaded_count_[cls];
    if (n == 0) return 0;
    const uint64_t pfn = loaded_[cls][n - 1];
    if (pfn > max_pfn) return 0;
    loaded_count_[cls] = n - 1;
    return pfn;
  }

  // A cached pfn of class `cls` that is <= max_pfn, removed from the cache;
  // 0 when there is none (pfn 0 is never cached).
  uint64_t Pop(int cls, uint64_t max_pfn) {
    Class& c = classes_[cls];
    if (loaded_count_[cls] == 0) {
      if (c.prev_count != 0) {
        SwapLoadedAndPrev(cls, c);
      } else if (c.depot_count != 0) {
        // The empty loaded magazine becomes the spare the depot's top leaves.
        --c.depot_count;
        std::swap(loaded_[cls], c.mags[c.depot_count]);
        loaded_count_[cls] = depth_;
      } else {
        return 0;
      }
    }
    const uint64_t n = loaded_count_[cls];
    uint64_t pfn = loaded_[cls][n - 1];
    if (pfn > max_pfn) [[unlikely]] {
      pfn = PopBelow(loaded_[cls], n, max_pfn);
      if (pfn == 0) return 0;
    }
    loaded_count_[cls] = n - 1;
    return pfn;
  }

  // Caches `pfn` if the loaded magazine has room (the common case); false
  // otherwise, with nothing changed.
  bool TryPushLoaded(int cls, uint64_t pfn) {
    const uint64_t n = loaded_count_[cls];
    if (n == depth_) return false;
    loaded_[cls][n] = pfn;
    loaded_count_[cls] = n + 1;
    return true;
  }

  // Caches `pfn` in class `cls`. When every magazine of the class is full,
  // calls release(pfn, cls) for each pfn of one spilled magazine first.
  template <typename ReleaseFn>
  void Push(int cls, uint64_t pfn, ReleaseFn&& release) {
    Class& c = classes_[cls];
    if (loaded_count_[cls] == depth_) [[unlikely]] {
      if (c.prev_count != depth_) {
        SwapLoadedAndPrev(cls, c);
      } else if (c.depot_count < depot_size_) {
        // The full loaded magazine goes on the depot; the spare above the
        // depot's top becomes the loaded one.
        std::swap(loaded_[cls], c.mags[c.depot_count]);
        ++c.depot_count;
        loaded_count_[cls] = 0;
      } else {
        Spill(cls, loaded_[cls], loaded_count_[cls], release);
        loaded_count_[cls] = 0;
      }
    }
    loaded_[cls][loaded_count_[cls]++] = pfn;
  }

  // Empties every magazine, calling release(pfn, cls) for each cached pfn.
  template <typename ReleaseFn>
  void Flush(ReleaseFn&& release) {
    for (int cls = 0; cls < num_classes_; ++cls) {
      Class& c = classes_[cls];
      Spill(cls, loaded_[cls], loaded_count_[cls], release);
      loaded_count_[cls] = 0;
      Spill(cls, c.prev, c.prev_count, release);
      c.prev_count = 0;
      for (uint64_t i = 0; i < c.depot_count; ++i) Spill(cls, c.mags[i], depth_, release);
      c.depot_count = 0;  // the depot's magazines are spares now
    }
  }

  // Visits every cached (pfn, cls).
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (int cls = 0; cls < num_classes_; ++cls) {
      const Class& c = classes_[cls];
      auto visit = [&](const uint64_t* mag, uint64_t n) {
        for (uint64_t i = 0; i < n; ++i) fn(mag[i], cls);
      };
      visit(loaded_[cls], loaded_count_[cls]);
      visit(c.prev, c.prev_count);
      for (uint64_t i = 0; i < c.depot_count; ++i) visit(c.mags[i], depth_);
    }
  }

  // Structural self-check: counts within depth and the depot's size, every
  // magazine of a class (loaded, prev, depot, spares) one of its own, each
  // exactly once.
  bool StructureOk() const;

 private:
  // The rest of a class.
  struct Class {
    uint64_t* prev = nullptr;  // pfns prev[0, prev_count)
    uint64_t prev_count = 0;
    // depot_size_ magazines: [0, depot_count) the depot (full), the rest
    // spares (empty). Points into mag_slots_.
    uint64_t** mags = nullptr;
    uint64_t depot_count = 0;
  };

  void SwapLoadedAndPrev(int cls, Class& c) {
    std::swap(loaded_[cls], c.prev);
    std::swap(loaded_count_[cls], c.prev_count);
  }

  // Removes and returns the highest-index pfn <= max_pfn among mag[0, n - 1)
  // (the top, mag[n - 1], was checked), moving the top into its place (order
  // is irrelevant); 0 if none. The caller drops the top from the count.
  static uint64_t PopBelow(uint64_t* mag, uint64_t n, uint64_t max_pfn);

  template <typename ReleaseFn>
  static void Spill(int cls, const uint64_t* mag, uint64_t n, ReleaseFn& release) {
    for (uint64_t i = 0; i < n; ++i) release(mag[i], cls);
  }

  int num_classes_ = 0;
  uint64_t depth_ = 0;
  uint64_t depot_size_ = 0;
  // Indexed by size class. The cache-hit paths touch only the loaded
  // magazine and its count, each in an array of words (indexed by scaled
  // addressing, no multiply).
  std::array<uint64_t*, kMaxClasses> loaded_{};       // loaded magazines
  std::array<uint64_t, kMaxClasses> loaded_count_{};  // pfns loaded_[c][0, loaded_count_[c])
  std::array<Class, kMaxClasses> classes_;
  // All magazines and the classes' mags arrays; never reallocated after
  // construction (the pointers above point into them; heap blocks, stable
  // across moves).
  std::vector<uint64_t> storage_;
  std::vector<uint64_t*> mag_slots_;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_IOVA_MAGAZINE_H_
