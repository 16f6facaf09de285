// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOVA_IOVA_GAP_TREE_H_
#define IOMMU_CORE_IOVA_IOVA_GAP_TREE_H_

// IovaGapTree: the FREE pfn ranges of one IOVA space, in a B+-tree keyed by
// first pfn and augmented so that the highest size-aligned fit below a limit
// is found exactly in O(log n).
//
// Layout. Leaves hold up to kFanout ranges sorted by pfn (lo[] and hi[]) and
// are linked in pfn order; internal nodes hold up to kFanout children, and
// next to each child pointer its key (the child's lowest lo) and its summary.
// Nodes live in a chunked slab (a chunk is never moved once allocated, so
// growth never copies the tree), indexed by uint32, with a free list: a warm
// tree never calls malloc.
//
// Fill. Allocation is top-down and next-fit, so new ranges arrive in runs of
// neighbouring pfns: halving every full node would leave the nodes behind the
// run half empty (the tree deeper, and larger than the caches sooner). So an
// insert into a full leaf first moves one edge entry to a sibling with room,
// and a split keeps kMinFill entries on the side an insert at the node's edge
// is about to grow (half on each side otherwise).
//
// Summary. For the ranges r below a node x and each alignment order k,
//   row(x)[k] = max over r of Word(r, k)
//   Word(r, k) = min(kRoomCap, 2^k, Room(r, k)) if len(r) > 2^(k-1), else 0
//   Room([lo, hi], k) = hi + 1 - AlignUp(lo, 2^k), or 0 when that is <= 0
//                     = len - ((-lo) mod 2^k), saturating at 0
// A search at order k is for 2^(k-1) < num_pages <= 2^k pages (the order of
// its alignment), so row(x)[k] >= num_pages iff some range below x has Room
// >= num_pages: the EXACT fit condition, a fit is never missed. The row is
// three numbers: with M the longest range below x (max_len) and K =
// bit_width(M - 1), so that 2^(K-1) < M <= 2^K,
//   row[k] = min(kRoomCap, 2^k)  for k <= K - 2 (M's range has Room > 2^k
//                                there, and no word exceeds the cap);
//   row[k] = 0                   for k > K (every range has len <= 2^(k-1));
// so a summary is {max_len, row[K - 1], row[K]} and a node's summary is the
// max of its ranges' (leaf) or children's (internal) words at the two orders
// K - 1 and K of its own max_len: O(F) scalar words, for any space size.
// A request above kRoomCap pages (16 TiB at 4K; only in spaces that large)
// treats a capped word as "maybe" and checks candidates with 64-bit
// arithmetic.
//
// Policy. FindHighestFit returns the highest pfn p, a multiple of 2^k, with
// [p, p + num_pages) free and p + num_pages - 1 <= limit_pfn: Linux
// alloc_iova(size_aligned=true) placement, without its O(n) walk.
//
// Cost (n = number of free ranges, F = kFanout; depth D = O(log_{F/4} n):
// every node but the root holds >= F/4 entries):
//   FindHighestFit   the limit's path down from the root, then at most one
//                    more descent (one loop, resuming by parent links):
//                    O(D F) reads; a request above kRoomCap pages also
//                    visits the capped candidates.
//   Carve / Release  O(D F) worst case, stopping as soon as an entry's key
//                    and summary are unchanged: a row that can only grow (a
//                    release) climbs in O(1) per level (Combine); one that
//                    can only drop (a carve) stops where the entry's new
//                    summary still reaches every number of its parent's that
//                    the old one reached (Covered), else recomputes one
//                    summary per level (O(F): a leaf's on 32-bit vector
//                    lanes of the baseline ISA, in scalar 64-bit code if a
//                    range has 2^30 pages or more). Splits, merges, borrows
//                    and edge moves (amortised O(1)) recompute the entries
//                    they touch.
//   Per node visit   the slot of a pfn by counting the keys <= it (F
//                    independent compares); in a search, the entries from
//                    that slot down until one fits; leaf shifts are
//                    fixed-size masked moves; a descent prefetches all 8
//                    lines of the next node at once.
//   Stats            O(1): count, pages, largest, histogram kept incrementally
//
// Invariants (checked by CheckInvariants):
//   (1) ranges are non-empty, disjoint, and maximal: no two are adjacent;
//   (2) every leaf is at the same depth; entries are sorted; an internal
//       entry's key is its child's lowest lo; parent links, slots and the
//       leaf chain are consistent; every node but the root holds
//       kMinFill..kFanout entries, an internal root at least 2; every
//       slot past a node's count holds the key kNoKey;
//   (3) every entry's summary (and the root's) equals a recount of the whole
//       row of every order from the ranges below it, and so does every
//       node's summary (for a leaf, by the vector kernel and by the scalar
//       code it falls back to);
//   (4) the histogram and totals equal a recount; the slabs account for
//       every node.
//
// Thread-compatible: the owning IovaAllocator serialises all calls.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/iova/slab_memory.h"

namespace iommu::core::internal {

class IovaGapTree {
 public:
  // A free range [lo, hi], inclusive.
  struct Range {
    uint64_t lo = 0;
    uint64_t hi = 0;
    uint64_t num_pages() const { return hi - lo + 1; }
  };

  // Result of a search: where the fit lies (opaque, 0: no fit) and the pfn.
  struct Fit {
    uint32_t node = 0;
    uint64_t pfn = 0;
  };

  static constexpr int kHistogramBuckets = 64;
  // Row words saturate here.
  static constexpr uint32_t kRoomCap = UINT32_MAX;
  // Entries per node, and the fewest a non-root node holds.
  static constexpr int kFanout = 16;
  static constexpr int kMinFill = kFanout / 4;

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
    if (num_pages <= kRoomCap) return RowWord(root_, order) >= num_pages;
    return FindHighestFit(num_pages, order, ~uint64_t{0}).node != 0;
  }

  // Removes [pfn, pfn + num_pages) from the free range the fit lies in.
  // REQUIRES: `fit` came from FindHighestFit with no mutation since.
  void Carve(const Fit& fit, uint64_t num_pages);

  // Adds [lo, hi] back as free, merging with adjacent free ranges, and returns
  // the free range now holding it. REQUIRES: [lo, hi] overlaps no free range.
  Range Release(uint64_t lo, uint64_t hi);

  // Removes [lo, hi] from the free set. REQUIRES: [lo, hi] lies inside one
  // free range (FindContaining(lo) holds hi).
  void Take(uint64_t lo, uint64_t hi);

  // Take(lo, hi) when [lo, hi] lies inside one free range, in one descent;
  // false, changing nothing, when it does not. O(log n), as Take.
  bool TakeIfFree(uint64_t lo, uint64_t hi);

  // Free pages inside [lo, hi]. O(log n + ranges inside).
  uint64_t FreePagesIn(uint64_t lo, uint64_t hi) const;

  // The free range containing `pfn`, if any.
  bool FindContaining(uint64_t pfn, Range* out) const;

  // Visits free ranges in ascending pfn order.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (uint32_t x = LeftmostLeaf(); x != kNil; x = N(x).next) {
      const Node& n = N(x);
      for (int s = 0; s < n.count; ++s) fn(Range{n.lo[s], n.hi[s]});
    }
  }

  uint64_t range_count() const { return range_count_; }
  // Nodes in use (leaves and internal), each sizeof(Node) bytes.
  uint64_t node_count() const { return node_slots_ - 1 - free_nodes_.size(); }
  uint64_t free_pages() const { return free_pages_; }
  uint64_t largest_pages() const { return root_.max_len; }
  const uint64_t* histogram() const { return histogram_; }

  // Walks the whole tree; returns INTERNAL naming the first broken invariant.
  absl::Status CheckInvariants() const;

 private:
  static constexpr uint32_t kNil = 0;
  // The key of every slot past a node's count (so that a slot search needs no
  // count test).
  static constexpr uint64_t kNoKey = ~uint64_t{0};
  // Slab chunk c holds kFirstChunk << c nodes (or row sets): slot i lives in
  // chunk bit_width(i + kFirstChunk) - 1 - log2(kFirstChunk).
  static constexpr uint32_t kFirstChunk = 8;
  static constexpr int kFirstChunkBits = 4;  // bit_width(kFirstChunk)
  static uint32_t ChunkOf(uint32_t i) { return std::bit_width(i + kFirstChunk) - kFirstChunkBits; }
  static uint32_t FirstOf(uint32_t chunk) { return (kFirstChunk << chunk) - kFirstChunk; }
  static constexpr int kMaxChunks = 25;  // ChunkOf(2^27 - 1) + 1
  static_assert(std::bit_width((uint32_t{1} << 27) - 1 + kFirstChunk) - kFirstChunkBits <
                kMaxChunks);

  // A subtree's row (see Summary above).
  struct Summary {
    uint64_t max_len = 0;
    uint32_t below = 0;  // row[K - 1] (0 when K = 0)
    uint32_t top = 0;    // row[K]
    bool operator==(const Summary&) const = default;
  };

  // A node is 8 cache lines: lo[] 0-1, hi[] 2-3, child 4, below 5, top 6, the
  // header 7.
  struct alignas(64) Node {
    // Leaf: range lo; internal: the child's lowest lo; kNoKey past count.
    uint64_t lo[kFanout];
    // Leaf: range hi. Internal: the child's max_len (exact longest range).
    uint64_t hi[kFanout];
    uint32_t child[kFanout];  // internal only, and so are below/top
    uint32_t below[kFanout];  // the child's row[K - 1]
    uint32_t top[kFanout];    // the child's row[K]
    uint32_t parent;          // kNil for the root
    uint32_t next;            // leaf chain (leaves only), kNil at the end
    int16_t count;
    int16_t slot;  // index of this node's entry in its parent
    bool leaf;
  };

  // A leaf position.
  struct Pos {
    uint32_t leaf = kNil;
    int slot = -1;
  };

  // K of the Summary comment: 2^(K-1) < max_len <= 2^K. REQUIRES max_len >= 1.
  static int OrderOf(uint64_t max_len) { return std::bit_width(max_len - 1); }

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
  static uint32_t Cap(int order) { return order >= 32 ? kRoomCap : uint32_t{1} << order; }
  // row[order] of a summary.
  static uint32_t RowWord(const Summary& sum, int order) {
    if (sum.max_len == 0) return 0;
    const int k = std::bit_width(sum.max_len - 1);
    if (order >= k - 1) return order == k ? sum.top : order == k - 1 ? sum.below : 0;
    return Cap(order);
  }
  uint32_t EntryWord(const Node& n, int s, int order) const {
    return RowWord(Summary{n.hi[s], n.below[s], n.top[s]}, order);
  }

  // Chunk c's address less the bytes of the nodes before it (node_base_),
  // so that node x is at node_base_[ChunkOf(x)] + x * sizeof(Node): a bit
  // width, one load from the tree object and a multiply-add.
  Node& N(uint32_t x) {
    return *reinterpret_cast<Node*>(node_base_[ChunkOf(x)] + uintptr_t{x} * sizeof(Node));
  }
  const Node& N(uint32_t x) const { return const_cast<IovaGapTree*>(this)->N(x); }

  uint32_t NewNode(bool leaf);
  // Sets n's count, giving the slots it drops the key kNoKey.
  static void SetCount(Node& n, int count);
  void FreeNode(uint32_t x);

  uint32_t LeftmostLeaf() const;
  // The leaf position of the range with the largest lo <= pfn; slot -1 (in the
  // leftmost leaf) if there is none.
  Pos Locate(uint64_t pfn) const;
  // Starts loading every cache line of n.
  static void PrefetchNode(const Node& n);
  // The last slot of n whose lo is <= pfn, -1 if none.
  static int LastAtOrBelow(const Node& n, uint64_t pfn);
  int SlotInParent(uint32_t x) const;

  // Recomputes x's key and summary into its parent's entry (the root's into
  // root_). Returns true if either changed.
  bool UpdateEntry(uint32_t x);
  static Summary Summarize(const Node& n) { return n.leaf ? LeafSummary(n) : InternalSummary(n); }
  // An internal node's summary from its entries: O(F) branch-free scalar
  // code.
  static Summary InternalSummary(const Node& n);
  // A leaf's summary: on 4 x 32-bit vector lanes (GCC vector extensions,
  // the baseline ISA) over all F slots when every range is shorter than 2^30
  // pages, else LeafSummaryScalar, exact in 64 bits.
  static Summary LeafSummary(const Node& n);
  static Summary LeafSummaryScalar(const Node& n);
  // The summary of one range [lo, hi].
  static Summary RangeSummary(uint64_t lo, uint64_t hi) {
    const uint64_t len = hi - lo + 1;
    const int k = OrderOf(len);
    if (k == 0) return Summary{len, 0, 1};
    if (k >= 32) [[unlikely]]
      return WideRangeSummary(lo, hi);
    // 2^(k-1) < len <= 2^k < 2^32: RoomWord without its length tests and with
    // no cap at order k.
    const uint64_t neg_lo = 0 - lo;
    const uint64_t pad = neg_lo & ((uint64_t{1} << k) - 1);
    const uint64_t pad_below = neg_lo & ((uint64_t{1} << (k - 1)) - 1);
    const uint64_t top = len > pad ? len - pad : 0;
    const uint64_t below = std::min(len - pad_below, uint64_t{1} << (k - 1));
    return Summary{len, static_cast<uint32_t>(below), static_cast<uint32_t>(top)};
  }
  static Summary WideRangeSummary(uint64_t lo, uint64_t hi);
  // A part's row words at orders k - 1 and k (as below/top; max_len kept),
  // for a part of a whole of order k, given half = HalfOf(the whole's max_len).
  static Summary WordsAt(const Summary& part, uint64_t half);
  static uint64_t HalfOf(uint64_t max_len);
  // The summary of the elementwise max of two rows.
  static Summary Combine(const Summary& a, const Summary& b);
  // True if `whole` (a node's or entry's summary) stays exact when a part of
  // what it summarises, `gone`, is replaced by `kept` (row(kept) <= row(gone)
  // <= row(whole) at every order): every number of `whole` that `gone`
  // reaches, `kept` reaches too.
  static bool Covered(const Summary& gone, const Summary& kept, const Summary& whole);
  // Incremental updates from a leaf x whose entries changed, everything else
  // current, the key aside: Raise when the leaf's row can only have grown to
  // at most max(old, row of `add`) (a range added or grown to `add`); Lower
  // when it can only have dropped, `gone` summarising what was removed or
  // shrunk. Each climbs while an entry changes, O(1) (Raise) or O(F) (Lower)
  // per level; Lower stops where the entry's new summary still reaches every
  // number of the parent's that its old one did (Covered).
  void Raise(uint32_t x, const Summary& add);
  void Lower(uint32_t x, Summary gone);
  // Propagates x's lowest lo up the keys.
  void FixKey(uint32_t x);
  // After x's entries changed (everything else current): merges or borrows
  // while a node is underfull, refreshing entries up to the root; stops at
  // the first unchanged entry when there was no merge or borrow.
  void Settle(uint32_t x);
  // Inserts a range into the full leaf x before entry `slot`, moving an entry
  // to a sibling or else splitting x. `shrunk`: empty when the insert only adds
  // a range (everything else current); after a carve, the summary of the
  // range the caller shrank in x (x's entries may have dropped).
  void InsertRange(uint32_t x, int slot, uint64_t lo, uint64_t hi, const Summary& shrunk);
  // The entries from p up, after an InsertRange below p left p's own entries
  // current: p's rows only grew by [lo, hi] (shrunk empty: Raise) or only
  // dropped by the range a carve shrank (Lower).
  void RefreshAboveInsert(uint32_t p, uint64_t lo, uint64_t hi, const Summary& shrunk);
  // InsertRange into a full leaf x without splitting it: when a sibling under
  // the same parent has room, x's edge entry on that side moves there first.
  // False (nothing changed) when neither sibling has room.
  bool InsertShifting(uint32_t x, int slot, uint64_t lo, uint64_t hi, const Summary& shrunk);
  // Removes entry `slot` of leaf x.
  void RemoveRange(uint32_t x, int slot);
  // Splits full node x, about to receive an entry at slot `at`, into x and a
  // new right sibling (splitting ancestors first as needed), leaving every
  // entry current; returns the sibling.
  uint32_t Split(uint32_t x, int at);
  // How many entries a split keeps on the left, given the slot an insertion
  // is about to take.
  static int SplitPoint(int at);
  // Entry copies and in-node shifts (moved children get their parent link).
  void CopyEntries(uint32_t from, int from_slot, uint32_t to, int to_slot, int count);
  void ShiftEntries(uint32_t x, int from_slot, int delta);
  // ShiftEntries for a leaf in hand and delta +1 or -1 (every call but the
  // internal nodes' and the borrows'): fixed-size branch-free moves over the
  // whole arrays.
  [[gnu::always_inline]] static inline void ShiftLeaf(Node& n, int from_slot, int delta);

  void CountIn(uint64_t num_pages);
  void CountOut(uint64_t num_pages);

  absl::Status CheckNode(uint32_t x, uint32_t parent, int depth, int* leaf_depth,
                         std::vector<uint32_t>* row_out, uint64_t* max_len_out,
                         std::vector<uint32_t>* leaves, uint64_t* nodes) const;
  // n's summary (for a leaf, both LeafSummary and LeafSummaryScalar) gives
  // the recount `row` / `max_len`.
  absl::Status CheckKernels(const Node& n, uint32_t x, const std::vector<uint32_t>& row,
                            uint64_t max_len) const;
  // The summary's row equals `row` (every order) and its max_len `max_len`.
  absl::Status CheckSummary(const Summary& sum, const std::vector<uint32_t>& row, uint64_t max_len,
                            uint32_t x, int slot) const;

  int num_orders_;
  // Zeroed; chunks of 2 MiB and more on huge pages (slab_memory.h).
  std::vector<SlabArray<Node>> node_chunks_;
  uintptr_t node_base_[kMaxChunks] = {};
  uint32_t node_slots_ = 1;  // [0] is never used
  std::vector<uint32_t> free_nodes_;
  uint32_t root_node_ = kNil;
  Summary root_;

  uint64_t range_count_ = 0;
  uint64_t free_pages_ = 0;
  uint64_t histogram_[kHistogramBuckets] = {};
};

// Counts the keys <= pfn over all kFanout slots, those past count holding
// kNoKey (a pfn of kNoKey counts the unused slots too: hence the min). The 16
// compares are independent (compare and add-with-borrow), so a visit waits
// for one load of the node, not for a binary search's chain of four
// dependent ones.
[[gnu::always_inline]] inline int IovaGapTree::LastAtOrBelow(const Node& n, uint64_t pfn) {
  int b = 0;
#pragma GCC unroll 16
  for (int i = 0; i < kFanout; ++i) b += static_cast<int>(n.lo[i] <= pfn);
  return std::min<int>(b, n.count) - 1;
}

[[gnu::always_inline]] inline void IovaGapTree::PrefetchNode(const Node& n) {
  // Every line of the node at once: the slot search then reads lo[] with
  // dependent loads, and the rest of the visit hi[], the child and the
  // header; one wait for the whole node instead of one per line.
  const char* p = reinterpret_cast<const char*>(&n);
  static_assert(sizeof(Node) == 8 * 64);
  __builtin_prefetch(p);
  __builtin_prefetch(p + 64);
  __builtin_prefetch(p + 2 * 64);
  __builtin_prefetch(p + 3 * 64);
  __builtin_prefetch(p + 4 * 64);
  __builtin_prefetch(p + 5 * 64);
  __builtin_prefetch(p + 6 * 64);
  __builtin_prefetch(p + 7 * 64);
}

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_IOVA_GAP_TREE_H_
