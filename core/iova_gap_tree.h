#ifndef IOMMU_CORE_IOVA_GAP_TREE_H_
#define IOMMU_CORE_IOVA_GAP_TREE_H_

// IovaGapTree: the FREE pfn ranges of one IOVA space, in an AVL tree keyed by
// first pfn and augmented so that the highest size-aligned fit below a limit
// is found exactly in O(log n).
//
// Layout. Nodes live in one slab (`nodes_`, 32 bytes each, linked by uint32
// indices, index 0 is the nil sentinel) with a free list, so a warm tree never
// calls malloc. Beside each node, `aug_` holds `num_orders` words:
//
//   aug(x)[k] = max over the ranges r in x's subtree of Room(r, k)
//   Room([lo, hi], k) = hi + 1 - AlignUp(lo, 2^k), or 0 when that is <= 0
//
// Room(r, k) is the room left in r after its first 2^k-aligned pfn. A request
// of num_pages with alignment 2^k (k = order of RoundUpPowerOfTwo(num_pages))
// fits somewhere in r iff Room(r, k) >= num_pages: this is the EXACT condition
// (no approximate len >= size + align - 1 threshold), so a fit is never missed.
// The sentinel's row is all zeros, so the combine step has no branches.
//
// Policy. FindHighestFit returns the highest pfn p, a multiple of 2^k, with
// [p, p + num_pages) free and p + num_pages - 1 <= limit_pfn: Linux
// alloc_iova(size_aligned=true) placement, without its O(n) walk.
//
// Cost (n = number of free ranges, K = num_orders):
//   FindHighestFit   O(log n) node visits, one aug word each
//   Carve / Release  O(K log n) worst case; updates stop climbing as soon as a
//                    node's height and aug row are unchanged, which is the
//                    common case for ranges far from their ancestors' maxima
//   Stats            O(1): count, pages, largest, histogram kept incrementally
//
// Invariants (checked by CheckInvariants):
//   (1) ranges are non-empty, disjoint, and maximal: no two are adjacent;
//   (2) in-order traversal is sorted by pfn; parent links are consistent;
//   (3) AVL: |height(left) - height(right)| <= 1, heights exact;
//   (4) aug rows equal a recomputation; the histogram and totals equal a recount.
//
// Thread-compatible: the owning IovaAllocator serialises all calls.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace iommu::core::internal {

class IovaGapTree {
 public:
  // A free range [lo, hi], inclusive.
  struct Range {
    uint64_t lo = 0;
    uint64_t hi = 0;
    uint64_t num_pages() const { return hi - lo + 1; }
  };

  // Result of a search: the node holding the fit and the chosen pfn.
  struct Fit {
    uint32_t node = 0;  // 0: no fit
    uint64_t pfn = 0;
  };

  static constexpr int kHistogramBuckets = 64;

  // `num_orders`: alignment orders 0..num_orders-1 are searchable, so requests
  // up to 2^(num_orders-1) pages. REQUIRES: 1 <= num_orders <= 64.
  explicit IovaGapTree(int num_orders);

  IovaGapTree(IovaGapTree&&) = default;
  IovaGapTree& operator=(IovaGapTree&&) = default;

  int num_orders() const { return num_orders_; }

  // The highest fit of `num_pages` aligned to 2^order ending at or below
  // `limit_pfn`. REQUIRES: 2^order >= num_pages >= 1, order < num_orders().
  Fit FindHighestFit(uint64_t num_pages, int order, uint64_t limit_pfn) const;

  // True iff some free range can hold `num_pages` aligned to 2^order (limit
  // ignored). O(1).
  bool AnyFit(uint64_t num_pages, int order) const {
    return Aug(root_, order) >= num_pages;
  }

  // Removes [pfn, pfn + num_pages) from the free range of `fit.node`.
  // REQUIRES: that range lies inside the node's range (as FindHighestFit gives).
  void Carve(const Fit& fit, uint64_t num_pages);

  // Adds [lo, hi] back as free, merging with adjacent free ranges.
  // REQUIRES: [lo, hi] overlaps no free range.
  void Release(uint64_t lo, uint64_t hi);

  // Removes [lo, hi] from the free set. REQUIRES: [lo, hi] is entirely free
  // (FreePagesIn(lo, hi) == hi - lo + 1). O(m log n) for m ranges touched.
  void Take(uint64_t lo, uint64_t hi);

  // Free pages inside [lo, hi]. O(log n + ranges inside).
  uint64_t FreePagesIn(uint64_t lo, uint64_t hi) const;

  // The free range containing `pfn`, if any.
  bool FindContaining(uint64_t pfn, Range* out) const;

  // Visits free ranges in ascending pfn order.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (uint32_t x = Leftmost(root_); x != kNil; x = Next(x)) {
      fn(Range{nodes_[x].lo, nodes_[x].hi});
    }
  }

  uint64_t range_count() const { return range_count_; }
  uint64_t free_pages() const { return free_pages_; }
  uint64_t largest_pages() const { return Aug(root_, 0); }
  const uint64_t* histogram() const { return histogram_; }

  // Walks the whole tree; returns INTERNAL naming the first broken invariant.
  absl::Status CheckInvariants() const;

 private:
  static constexpr uint32_t kNil = 0;

  struct Node {
    uint64_t lo;
    uint64_t hi;
    uint32_t left;
    uint32_t right;
    uint32_t parent;
    int32_t height;  // 0 for nil, 1 for a leaf
  };

  static uint64_t Room(uint64_t lo, uint64_t hi, int order) {
    const uint64_t align = uint64_t{1} << order;
    const uint64_t first = (lo + align - 1) & ~(align - 1);
    return hi >= first ? hi + 1 - first : 0;
  }

  uint64_t Aug(uint32_t x, int order) const {
    return aug_[size_t{x} * num_orders_ + order];
  }
  uint64_t* AugRow(uint32_t x) { return &aug_[size_t{x} * num_orders_]; }
  const uint64_t* AugRow(uint32_t x) const { return &aug_[size_t{x} * num_orders_]; }

  uint32_t NewNode(uint64_t lo, uint64_t hi);
  void FreeNode(uint32_t x);

  // Recomputes x's aug row from its range and children. Returns true if it
  // changed.
  bool Pull(uint32_t x);
  void UpdateHeight(uint32_t x);
  // Rotations keep subtree membership, so the new subtree root's aug row
  // equals the old root's; both rotated nodes are recomputed.
  uint32_t RotateLeft(uint32_t x);
  uint32_t RotateRight(uint32_t x);
  void ReplaceChild(uint32_t parent, uint32_t old_child, uint32_t new_child);
  // Restores heights, balance and aug rows from x up to the root, stopping
  // early once a subtree's height and aug row are unchanged.
  void FixUpward(uint32_t x);

  void SetRange(uint32_t x, uint64_t lo, uint64_t hi);  // keeps stats, then FixUpward
  void Insert(uint64_t lo, uint64_t hi);
  void Erase(uint32_t x);

  void CountIn(uint64_t num_pages);
  void CountOut(uint64_t num_pages);

  uint32_t Leftmost(uint32_t x) const;
  uint32_t Next(uint32_t x) const;
  // The node with the largest lo <= pfn, or nil.
  uint32_t Floor(uint64_t pfn) const;
  // Highest fit inside the subtree x (entire subtree below the limit).
  Fit DescendHighest(uint32_t x, uint64_t num_pages, int order) const;

  absl::Status CheckSubtree(uint32_t x, uint32_t parent, int* height,
                            std::vector<uint64_t>* aug_out) const;

  int num_orders_;
  std::vector<Node> nodes_;      // [0] is the nil sentinel
  std::vector<uint64_t> aug_;    // num_orders_ words per node; row 0 all zeros
  std::vector<uint32_t> free_nodes_;
  uint32_t root_ = kNil;

  uint64_t range_count_ = 0;
  uint64_t free_pages_ = 0;
  uint64_t histogram_[kHistogramBuckets] = {};
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_GAP_TREE_H_
