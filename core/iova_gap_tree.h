#ifndef IOMMU_CORE_IOVA_GAP_TREE_H_
#define IOMMU_CORE_IOVA_GAP_TREE_H_

// IovaGapTree: the FREE pfn ranges of one IOVA space, in an AVL tree keyed by
// first pfn and augmented so that the highest size-aligned fit below a limit
// is found exactly in O(log n).
//
// Layout. Nodes live in one slab (`nodes_`, 40 bytes each, linked by uint32
// indices, index 0 is the nil sentinel) with a free list, so a warm tree never
// calls malloc. Each node has a row of `lanes_` uint32 words (num_orders
// rounded up to a multiple of 8: 24 for a 4 GiB space of 4K pages) in blocks
// of 8 lanes: block 0 of every row in the dense array `aug0_` (32 bytes per
// node), blocks 1.. in `augn_`. Recomputing a block is an elementwise
// max(own, left, right) on one GCC/Clang vector: SSE2 (the x86-64 baseline)
// everywhere, one ymm word with AVX2 when cpuid reports it:
//
//   aug(x)[k] = max over the ranges r in x's subtree of Word(r, k)
//   Word(r, k) = min(kRoomCap, 2^k, Room(r, k)) if len(r) > 2^(k-1), else 0
//   Room([lo, hi], k) = hi + 1 - AlignUp(lo, 2^k), or 0 when that is <= 0
//                     = len - ((-lo) mod 2^k), saturating at 0
//
// A search at order k is for 2^(k-1) < num_pages <= 2^k pages (the order of
// its alignment), so neither the cap at 2^k nor zeroing ranges too short to
// hold such a request changes an answer: aug(x)[k] >= num_pages iff some range
// in x's subtree has Room >= num_pages. What they buy: a row is zero above
// order bit_width(max_len - 1), so only its first ActiveBlocks(max_len) blocks
// of 8 lanes are ever computed, read or compared (one block for subtrees
// whose ranges are all <= 128 pages: most of a fragmented tree), and a change
// to a long range leaves the capped low orders alone, so the bottom-up pass
// stops earlier. `max_len` keeps the exact 64-bit longest range of the
// subtree. The sentinel's row is all zeros, and so is a free slot's.
//
// Room(r, k) is the room left in r after its first 2^k-aligned pfn. A request
// of num_pages with alignment 2^k (k = order of RoundUpPowerOfTwo(num_pages))
// fits somewhere in r iff Room(r, k) >= num_pages: this is the EXACT condition
// (no approximate len >= size + align - 1 threshold), so a fit is never missed.
// For num_pages <= kRoomCap the saturated words decide exactly. A request above
// kRoomCap pages (16 TiB at 4K; only in spaces that large) treats a capped word
// as "maybe" and checks each candidate node with 64-bit arithmetic.
//
// Policy. FindHighestFit returns the highest pfn p, a multiple of 2^k, with
// [p, p + num_pages) free and p + num_pages - 1 <= limit_pfn: Linux
// alloc_iova(size_aligned=true) placement, without its O(n) walk.
//
// Cost (n = number of free ranges, L = lanes / 8 blocks per row):
//   FindHighestFit   O(log n) node visits, one aug word each; a request above
//                    kRoomCap pages: O(log n + ranges of >= kRoomCap pages)
//   Carve / Release  ONE bottom-up pass per call, O(L log n) worst case (O(log n)
//                    block operations while ranges stay <= 128 pages): a
//                    split links the new range as the carved node's in-order
//                    successor and a double merge unlinks whichever neighbour
//                    is the other's descendant, so the one changed range is
//                    always on the pass's path. The pass stops climbing once
//                    it has passed that node and a subtree's height and row
//                    are unchanged.
//   Stats            O(1): count, pages, largest, histogram kept incrementally
//
// Invariants (checked by CheckInvariants):
//   (1) ranges are non-empty, disjoint, and maximal: no two are adjacent;
//   (2) in-order traversal is sorted by pfn; parent links are consistent;
//   (3) AVL: |height(left) - height(right)| <= 1, heights exact;
//   (4) every row word and max_len equals a recomputation (so words past a
//       row's active blocks are zero), `blocks` equals ActiveBlocks(max_len),
//       free slots have zero rows; the histogram and totals equal a recount;
//       the slab accounts for every node.
//
// Thread-compatible: the owning IovaAllocator serialises all calls.

#include <algorithm>
#include <bit>
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
  // Row lanes come in blocks of this many words (one AVX2 vector).
  static constexpr int kLaneBlock = 8;
  // Row words saturate here.
  static constexpr uint32_t kRoomCap = UINT32_MAX;

  // `num_orders`: alignment orders 0..num_orders-1 are searchable, so requests
  // up to 2^(num_orders-1) pages. REQUIRES: 1 <= num_orders <= 64.
  explicit IovaGapTree(int num_orders);

  IovaGapTree(IovaGapTree&&) = default;
  IovaGapTree& operator=(IovaGapTree&&) = default;

  int num_orders() const { return num_orders_; }

  // The highest fit of `num_pages` aligned to 2^order ending at or below
  // `limit_pfn`. REQUIRES: order == ceil(log2(num_pages)) (i.e. 2^(order-1) <
  // num_pages <= 2^order), order < num_orders().
  Fit FindHighestFit(uint64_t num_pages, int order, uint64_t limit_pfn) const;

  // True iff some free range can hold `num_pages` aligned to 2^order (limit
  // ignored). O(1) for num_pages <= kRoomCap. REQUIRES as FindHighestFit.
  bool AnyFit(uint64_t num_pages, int order) const {
    if (num_pages <= kRoomCap) return Aug(root_, order) >= num_pages;
    return FindHighestFit(num_pages, order, ~uint64_t{0}).node != kNil;
  }

  // Removes [pfn, pfn + num_pages) from the free range of `fit.node`.
  // REQUIRES: that range lies inside the node's range (as FindHighestFit gives).
  void Carve(const Fit& fit, uint64_t num_pages);

  // Adds [lo, hi] back as free, merging with adjacent free ranges, and returns
  // the free range now holding it. REQUIRES: [lo, hi] overlaps no free range.
  Range Release(uint64_t lo, uint64_t hi);

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
  uint64_t largest_pages() const { return nodes_[root_].max_len; }
  const uint64_t* histogram() const { return histogram_; }

  // Walks the whole tree; returns INTERNAL naming the first broken invariant.
  absl::Status CheckInvariants() const;

 private:
  static constexpr uint32_t kNil = 0;

  struct Node {
    uint64_t lo;
    uint64_t hi;
    uint64_t max_len;  // longest range in the subtree, exact; 0 for nil
    uint32_t left;
    uint32_t right;
    uint32_t parent;
    int16_t height;   // 0 for nil, 1 for a leaf
    uint16_t blocks;  // ActiveBlocks(max_len)
  };
  static_assert(sizeof(Node) == 40);

  // Exact 64-bit room, and the saturated word a row stores.
  static uint64_t Room(uint64_t lo, uint64_t hi, int order) {
    const uint64_t pad = (0 - lo) & ((uint64_t{1} << order) - 1);
    const uint64_t len = hi - lo + 1;
    return len > pad ? len - pad : 0;
  }
  // Word(r, k) of the layout comment.
  static uint32_t RoomWord(uint64_t lo, uint64_t hi, int order) {
    const uint64_t len = hi - lo + 1;
    if (order > 0 && len <= (uint64_t{1} << (order - 1))) return 0;
    const uint64_t room = std::min(Room(lo, hi, order), uint64_t{1} << order);
    return room < kRoomCap ? static_cast<uint32_t>(room) : kRoomCap;
  }
  // Blocks of a row that may be non-zero for a subtree whose longest range
  // has max_len pages: orders 0..bit_width(max_len - 1).
  static int ActiveBlocks(uint64_t max_len) {
    return max_len == 0 ? 0 : std::bit_width(max_len - 1) / kLaneBlock + 1;
  }

  // Block b (lanes 8b..8b+7) of x's row: block 0 in aug0_, the rest in augn_.
  uint32_t* RowBlock(uint32_t x, int b) {
    return b == 0 ? &aug0_[size_t{x} * kLaneBlock]
                  : &augn_[size_t{x} * (lanes_ - kLaneBlock) + (b - 1) * kLaneBlock];
  }
  const uint32_t* RowBlock(uint32_t x, int b) const {
    return const_cast<IovaGapTree*>(this)->RowBlock(x, b);
  }
  uint32_t Aug(uint32_t x, int order) const {
    return order < kLaneBlock
               ? aug0_[size_t{x} * kLaneBlock + order]
               : augn_[size_t{x} * (lanes_ - kLaneBlock) + (order - kLaneBlock)];
  }

  uint32_t NewNode(uint64_t lo, uint64_t hi);
  void FreeNode(uint32_t x);

  // Recomputes x's row and max_len from its range and children. Returns true
  // if either changed.
  bool Pull(uint32_t x) { return (this->*kernels_.pull)(x); }
  template <int kLanes>
  bool PullBody(uint32_t x);

  // The per-level kernels, instantiated per row width and compiled for the
  // x86-64 baseline (SSE2) and, on x86-64, for AVX2 (picked only when cpuid
  // reports it); chosen once at construction.
  using PullFn = bool (IovaGapTree::*)(uint32_t);
  using FixFn = void (IovaGapTree::*)(uint32_t, uint32_t);
  struct Kernels {
    PullFn pull;
    FixFn fix;
  };
  template <int kLanes>
  bool PullLanes(uint32_t x);
  template <int kLanes>
  bool PullLanesAvx2(uint32_t x);
  template <int kLanes>
  void FixUpwardBody(uint32_t x, uint32_t must_reach);
  template <int kLanes>
  void FixUpwardLanes(uint32_t x, uint32_t must_reach);
  template <int kLanes>
  void FixUpwardLanesAvx2(uint32_t x, uint32_t must_reach);
  template <int kLanes>
  static Kernels PickKernels();
  static Kernels PickKernels(int lanes);

  void UpdateHeight(uint32_t x);
  void SetMaxLen(Node& n, uint64_t max_len) {
    n.max_len = max_len;
    n.blocks = static_cast<uint16_t>(ActiveBlocks(max_len));
  }
  // Rotations keep subtree membership, so the new subtree root takes the old
  // root's row; the demoted node is recomputed. REQUIRES: x's row is current.
  uint32_t RotateLeft(uint32_t x);
  uint32_t RotateRight(uint32_t x);
  void ReplaceChild(uint32_t parent, uint32_t old_child, uint32_t new_child);
  // Restores heights, balance, rows and max_len from x up to the root, in one
  // pass. Every node from x up to `must_reach` (an ancestor of x whose own
  // range changed, or nil) is recomputed; above it the pass stops as soon as a
  // subtree's height and row are unchanged.
  void FixUpward(uint32_t x, uint32_t must_reach) { (this->*kernels_.fix)(x, must_reach); }
  // Unlinks x, which has at most one child; returns its former parent. Does not
  // free x or fix anything.
  uint32_t Splice(uint32_t x);
  // Links a new node [lo, hi] as the in-order successor of x (nil: as the
  // leftmost node) and returns it. Does not fix anything.
  uint32_t LinkAfter(uint32_t x, uint64_t lo, uint64_t hi);

  void SetRange(uint32_t x, uint64_t lo, uint64_t hi);  // keeps stats, then FixUpward
  void Erase(uint32_t x);

  void CountIn(uint64_t num_pages);
  void CountOut(uint64_t num_pages);

  uint32_t Leftmost(uint32_t x) const;
  uint32_t Next(uint32_t x) const;
  // The node with the largest lo <= pfn, or nil.
  uint32_t Floor(uint64_t pfn) const;
  // Highest fit inside the subtree x (entire subtree below the limit).
  // REQUIRES: num_pages <= kRoomCap and Aug(x, order) >= num_pages.
  Fit DescendHighest(uint32_t x, uint64_t num_pages, int order) const;
  // FindHighestFit for num_pages > kRoomCap: a reverse in-order walk of the
  // nodes at or below the limit, skipping subtrees whose max_len or capped
  // word rule a fit out.
  Fit HugeFit(uint32_t x, uint64_t num_pages, int order, uint64_t limit_pfn) const;

  absl::Status CheckSubtree(uint32_t x, uint32_t parent, int* height,
                            std::vector<uint32_t>* row_out, uint64_t* max_len_out) const;

  int num_orders_;
  int lanes_;                    // num_orders_ rounded up to a multiple of 8
  Kernels kernels_;              // for lanes_ and this CPU
  std::vector<Node> nodes_;      // [0] is the nil sentinel
  // Rows, split so that a search or pass over subtrees of short ranges (one
  // active block) touches 32 dense bytes per node: block 0 of every row in
  // aug0_ (kLaneBlock words per node), blocks 1.. in augn_ (lanes_ - kLaneBlock
  // words per node). Row 0 (nil) is all zeros.
  std::vector<uint32_t> aug0_;
  std::vector<uint32_t> augn_;
  std::vector<uint32_t> free_nodes_;
  uint32_t root_ = kNil;

  uint64_t range_count_ = 0;
  uint64_t free_pages_ = 0;
  uint64_t histogram_[kHistogramBuckets] = {};
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_GAP_TREE_H_
