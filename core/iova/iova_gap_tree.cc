// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_gap_tree.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"

namespace iommu::core::internal {

IovaGapTree::IovaGapTree(int num_orders) : num_orders_(num_orders) {
  assert(num_orders >= 1 && num_orders <= 64);
  root_node_ = NewNode(/*leaf=*/true);
}

uint32_t IovaGapTree::NewNode(bool leaf) {
  uint32_t x;
  if (!free_nodes_.empty()) {
    x = free_nodes_.back();
    free_nodes_.pop_back();
  } else {
    x = node_slots_++;
    assert(x != 0 && x < (uint32_t{1} << 27));
    const uint32_t c = ChunkOf(x);
    if (c == node_chunks_.size()) {
      assert(c < kMaxChunks);
      // Zeroed: the leaf kernel reads (and masks off) slots past a node's
      // count.
      node_chunks_.push_back(NewSlabArray<Node>(kFirstChunk << c));
      node_base_[c] = reinterpret_cast<uintptr_t>(node_chunks_.back().get()) -
                      uintptr_t{FirstOf(c)} * sizeof(Node);
    }
  }
  Node& n = N(x);
  n.parent = kNil;
  n.next = kNil;
  n.count = 0;
  std::fill_n(n.lo, kFanout, kNoKey);
  n.slot = 0;
  n.leaf = leaf;
  return x;
}

void IovaGapTree::SetCount(Node& n, int count) {
  if (count < n.count) std::fill(n.lo + count, n.lo + n.count, kNoKey);
  n.count = static_cast<int16_t>(count);
}

void IovaGapTree::FreeNode(uint32_t x) {
  N(x).count = 0;
  free_nodes_.push_back(x);
}

uint32_t IovaGapTree::LeftmostLeaf() const {
  uint32_t x = root_node_;
  while (!N(x).leaf) x = N(x).child[0];
  return x;
}

IovaGapTree::Pos IovaGapTree::Locate(uint64_t pfn) const {
  uint32_t x = root_node_;
  const Node* n = &N(x);
  for (;;) {
    const int s = LastAtOrBelow(*n, pfn);
    if (n->leaf) return Pos{x, s};
    x = n->child[s < 0 ? 0 : s];
    n = &N(x);
    PrefetchNode(*n);
  }
}

int IovaGapTree::SlotInParent(uint32_t x) const {
  const Node& n = N(x);
  assert(N(n.parent).child[n.slot] == x);
  return n.slot;
}

// --- summaries ---------------------------------------------------------------

namespace {

// 16-byte vectors of two 64-bit or four 32-bit lanes (GCC vector extensions,
// SSE2 registers on x86-64: the baseline ISA) for the leaf kernels: the leaf
// summary, and fixed-size, branch-free moves of one slot within a node's
// 16-entry array of 64-bit words (a leaf's lo[] or hi[]), every lane either
// kept or taken from its neighbour under a mask read from a sliding window of
// kStep. No length-dependent branch (a variable-length memmove mispredicts on
// the length).
using Pair = uint64_t __attribute__((vector_size(16)));
using Quad = int32_t __attribute__((vector_size(16)));
constexpr int kPairs = IovaGapTree::kFanout / 2;
// kStep[j] is all-ones iff j >= kFanout: from kStep[kFanout - 1 - s] on, the
// slots above s are marked; from kStep[kFanout - s], those at or above s;
// from kStep[kFanout - count], those past count.
alignas(64) constexpr std::array<uint64_t, 2 * IovaGapTree::kFanout> kStep = [] {
  std::array<uint64_t, 2 * IovaGapTree::kFanout> a{};
  for (int j = IovaGapTree::kFanout; j < 2 * IovaGapTree::kFanout; ++j) a[j] = ~uint64_t{0};
  return a;
}();
static_assert(IovaGapTree::kFanout == 16);

[[gnu::always_inline]] inline Pair LoadPair(const uint64_t* p) {
  Pair v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
[[gnu::always_inline]] inline void StorePair(uint64_t* p, Pair v) { std::memcpy(p, &v, sizeof(v)); }
// The low 32 bits of a's and b's lanes (little-endian: the even 32-bit lanes).
[[gnu::always_inline]] inline Quad Low32(Pair a, Pair b) {
  return __builtin_shufflevector(__builtin_bit_cast(Quad, a), __builtin_bit_cast(Quad, b), 0, 2, 4,
                                 6);
}
[[gnu::always_inline]] inline Quad MaxQuad(Quad a, Quad b) { return a > b ? a : b; }
[[gnu::always_inline]] inline int32_t HorizontalMax(Quad v) {
  v = MaxQuad(v, __builtin_shufflevector(v, v, 2, 3, 0, 1));
  v = MaxQuad(v, __builtin_shufflevector(v, v, 1, 0, 3, 2));
  return v[0];
}

}  // namespace

IovaGapTree::Summary IovaGapTree::InternalSummary(const Node& n) {
  Summary sum;
  for (int s = 0; s < n.count; ++s) sum.max_len = std::max(sum.max_len, n.hi[s]);
  if (sum.max_len == 0) return sum;
  // Only the words at orders k - 1 and k vary (see Summary). A child with
  // K_c = bit_width(max_len_c - 1) has row_c[k] = top_c if K_c == k (else 0:
  // K_c <= k), and row_c[k - 1] = below_c if K_c == k, top_c if K_c == k - 1,
  // else 0. K_c == k iff max_len_c > 2^(k-1); K_c >= k - 1 iff > 2^(k-2).
  const int k = std::bit_width(sum.max_len - 1);
  const uint64_t half = k >= 1 ? uint64_t{1} << (k - 1) : 0;
  const uint64_t quarter = k >= 2 ? uint64_t{1} << (k - 2) : 0;
  uint32_t top = 0;
  uint32_t below = 0;
  for (int s = 0; s < n.count; ++s) {
    // All-ones masks, not branches: which orders an entry reaches is data.
    const uint32_t at_k = 0u - static_cast<uint32_t>(n.hi[s] > half);
    const uint32_t at_k1 = 0u - static_cast<uint32_t>(n.hi[s] > quarter);
    top = std::max(top, n.top[s] & at_k);
    below = std::max(below, (n.below[s] & at_k) | (n.top[s] & at_k1 & ~at_k));
  }
  sum.top = top;
  sum.below = k > 0 ? below : 0;
  return sum;
}

IovaGapTree::Summary IovaGapTree::LeafSummaryScalar(const Node& n) {
  uint64_t max_len = 0;
  for (int s = 0; s < n.count; ++s) max_len = std::max(max_len, n.hi[s] - n.lo[s] + 1);
  if (max_len == 0) return Summary{};
  // Word(r, j) at j = k and k - 1 as LeafSummary computes it, in 64 bits and
  // without a branch per range: a range counts where len > 2^(j-1), its
  // room len - ((-lo) mod 2^j) when positive, capped after the maximum.
  const int k = std::bit_width(max_len - 1);  // <= 52: end_pfn's bytes fit 64 bits
  const uint64_t cap = uint64_t{1} << k;
  const uint64_t cap_below = cap >> 1;
  uint64_t top = 0;
  uint64_t below = 0;
  for (int s = 0; s < n.count; ++s) {
    const uint64_t len = n.hi[s] - n.lo[s] + 1;
    const uint64_t neg_lo = 0 - n.lo[s];
    const uint64_t pad = neg_lo & (cap - 1);
    const uint64_t pad_below = neg_lo & (cap_below - 1);
    top = std::max(top, len > cap_below && len > pad ? len - pad : 0);
    below = std::max(below, len > (cap_below >> 1) && len > pad_below ? len - pad_below : 0);
  }
  const auto word = [](uint64_t w) {
    return static_cast<uint32_t>(std::min<uint64_t>(w, kRoomCap));
  };
  return Summary{max_len, k > 0 ? word(std::min(below, cap_below)) : 0, word(std::min(top, cap))};
}

IovaGapTree::Summary IovaGapTree::LeafSummary(const Node& n) {
  // Four slots per step: lengths in 64 bits (0 past count: kNoKey and stale
  // hi there), then their low halves and those of -lo on 32-bit lanes.
  constexpr int kQuads = kFanout / 4;
  const uint64_t* past_count = kStep.data() + kFanout - n.count;
  Quad len[kQuads];
  Quad neg_lo[kQuads];
  Pair any = {};
#pragma GCC unroll 4
  for (int v = 0; v < kQuads; ++v) {
    const Pair lo0 = LoadPair(n.lo + 4 * v);
    const Pair lo1 = LoadPair(n.lo + 4 * v + 2);
    const Pair a = (LoadPair(n.hi + 4 * v) - lo0 + 1) & ~LoadPair(past_count + 4 * v);
    const Pair b = (LoadPair(n.hi + 4 * v + 2) - lo1 + 1) & ~LoadPair(past_count + 4 * v + 2);
    any |= a | b;
    len[v] = Low32(a, b);
    neg_lo[v] = Quad{} - Low32(lo0, lo1);
  }
  // Below 2^30 every length, pad and room fits a signed 32-bit lane.
  if (((any[0] | any[1]) >> 30) != 0) [[unlikely]]
    return LeafSummaryScalar(n);
  const uint32_t max_len = static_cast<uint32_t>(
      HorizontalMax(MaxQuad(MaxQuad(len[0], len[1]), MaxQuad(len[2], len[3]))));
  if (max_len == 0) return Summary{};
  // Word(r, j) at j = k and k - 1, capped after the maximum (min and max
  // commute): a lane counts where len > 2^(j-1), its room len - ((-lo) mod
  // 2^j) (negative rooms lose to 0).
  const int k = std::bit_width(max_len - 1);
  const int32_t cap = int32_t{1} << k;
  const int32_t cap_below = cap >> 1;  // 0 when k = 0
  const Quad half = Quad{} + cap_below;
  const Quad half_below = Quad{} + (cap_below >> 1);
  const Quad pad_mask = Quad{} + (cap - 1);
  const Quad pad_mask_below = Quad{} + (cap_below - 1);
  Quad top = {};
  Quad below = {};
#pragma GCC unroll 4
  for (int v = 0; v < kQuads; ++v) {
    top = MaxQuad(top, (len[v] > half) & (len[v] - (neg_lo[v] & pad_mask)));
    below = MaxQuad(below, (len[v] > half_below) & (len[v] - (neg_lo[v] & pad_mask_below)));
  }
  return Summary{max_len, static_cast<uint32_t>(std::min(HorizontalMax(below), cap_below)),
                 static_cast<uint32_t>(std::min(HorizontalMax(top), cap))};
}

bool IovaGapTree::UpdateEntry(uint32_t x) {
  const Node& n = N(x);
  const Summary sum = Summarize(n);
  if (x == root_node_) {
    const bool changed =
        sum.max_len != root_.max_len || sum.below != root_.below || sum.top != root_.top;
    root_ = sum;
    return changed;
  }
  Node& p = N(n.parent);
  const int s = SlotInParent(x);
  const uint64_t key = n.count > 0 ? n.lo[0] : p.lo[s];
  const bool changed =
      sum.max_len != p.hi[s] || sum.below != p.below[s] || sum.top != p.top[s] || key != p.lo[s];
  p.hi[s] = sum.max_len;
  p.below[s] = sum.below;
  p.top[s] = sum.top;
  p.lo[s] = key;
  return changed;
}

IovaGapTree::Summary IovaGapTree::WideRangeSummary(uint64_t lo, uint64_t hi) {
  const int k = OrderOf(hi - lo + 1);
  return Summary{hi - lo + 1, RoomWord(lo, hi, k - 1), RoomWord(lo, hi, k)};
}

// The words of `part`'s row at orders k - 1 and k, for a part within a whole
// of order k (part.max_len <= the whole's, so part's order kp <= k): its own
// below/top if kp == k (max_len > 2^(k-1) = half), its top at k - 1 if
// kp == k - 1 (half >= max_len > half / 2), else 0 (see Combine). Masks, not
// branches: which case holds is data. An empty part (max_len 0) has zero
// words whatever the masks.
[[gnu::always_inline]] inline IovaGapTree::Summary IovaGapTree::WordsAt(const Summary& part,
                                                                        uint64_t half) {
  const uint32_t at_k = 0u - static_cast<uint32_t>(part.max_len > half);
  const uint32_t at_k1 = ~at_k & (0u - static_cast<uint32_t>(part.max_len > (half >> 1)));
  return Summary{part.max_len, (part.below & at_k) | (part.top & at_k1), part.top & at_k};
}

// 2^(K-1) for K = OrderOf(max_len) >= 1, 0 for K = 0 (max_len 1); 2^63 for
// max_len 0 (K = 64). Without a branch on a zero argument.
[[gnu::always_inline]] inline uint64_t IovaGapTree::HalfOf(uint64_t max_len) {
  const uint64_t y = max_len - 1;  // half = the highest bit of y, 0 if y == 0
  return (uint64_t{1} << (63 - std::countl_zero(y | 1))) & (0 - static_cast<uint64_t>(y != 0));
}

[[gnu::always_inline]] inline IovaGapTree::Summary IovaGapTree::Combine(const Summary& a,
                                                                        const Summary& b) {
  // With M = max(a.max_len, b.max_len) and K its order, the row of the max is
  // {M, max of both sides' words at K - 1, max at K} (the longer side's words
  // are its own).
  const uint64_t max_len = std::max(a.max_len, b.max_len);
  const uint64_t half = HalfOf(max_len);
  const Summary wa = WordsAt(a, half);
  const Summary wb = WordsAt(b, half);
  return Summary{max_len, std::max(wa.below, wb.below), std::max(wa.top, wb.top)};
}

[[gnu::always_inline]] inline bool IovaGapTree::Covered(const Summary& gone, const Summary& kept,
                                                        const Summary& whole) {
  // max_len: while it holds, so does K and every order but K - 1 and K (capped
  // below, zero above); those two words are then compared like max_len. An
  // empty whole has zero words: covered. Evaluated whole, without branches.
  const uint64_t half = HalfOf(whole.max_len);
  const Summary g = WordsAt(gone, half);
  const Summary kw = WordsAt(kept, half);
  const bool len_ok = gone.max_len < whole.max_len || kept.max_len >= whole.max_len;
  const bool below_ok = g.below < whole.below || kw.below >= whole.below;
  const bool top_ok = g.top < whole.top || kw.top >= whole.top;
  return static_cast<bool>(static_cast<int>(len_ok) & static_cast<int>(below_ok) &
                           static_cast<int>(top_ok));
}

void IovaGapTree::Raise(uint32_t x, const Summary& add) {
  // Each entry on the way up becomes Combine(entry, add); stops at the first
  // one that add leaves unchanged (its ancestors then are too). The node in
  // hand is carried up, so each level looks up only its parent.
  const Node* n = &N(x);
  while (x != root_node_) {
    const uint32_t px = n->parent;
    Node& p = N(px);
    const int s = n->slot;
    assert(p.child[s] == x);
    const Summary old{p.hi[s], p.below[s], p.top[s]};
    const Summary sum = Combine(old, add);
    if (sum == old) return;
    p.hi[s] = sum.max_len;
    p.below[s] = sum.below;
    p.top[s] = sum.top;
    x = px;
    n = &p;
  }
  root_ = Combine(root_, add);
}

void IovaGapTree::Lower(uint32_t x, Summary gone) {
  Summary kept;
  const Node* n = &N(x);
  for (;;) {
    if (x == root_node_) {
      if (!Covered(gone, kept, root_)) root_ = Summarize(*n);
      return;
    }
    const uint32_t px = n->parent;
    Node& p = N(px);
    const int s = n->slot;
    assert(p.child[s] == x);
    const Summary old{p.hi[s], p.below[s], p.top[s]};
    if (Covered(gone, kept, old)) return;
    const Summary sum = Summarize(*n);
    if (sum == old) return;
    p.hi[s] = sum.max_len;
    p.below[s] = sum.below;
    p.top[s] = sum.top;
    // One level up, x's entry went from old to sum.
    gone = old;
    kept = sum;
    x = px;
    n = &p;
  }
}

void IovaGapTree::FixKey(uint32_t x) {
  while (x != root_node_) {
    const uint32_t px = N(x).parent;
    Node& p = N(px);
    const int s = SlotInParent(x);
    if (p.lo[s] == N(x).lo[0]) return;
    p.lo[s] = N(x).lo[0];
    if (s != 0) return;
    x = px;
  }
}

// --- structure ---------------------------------------------------------------

void IovaGapTree::CopyEntries(uint32_t from, int from_slot, uint32_t to, int to_slot, int count) {
  const Node& f = N(from);
  Node& t = N(to);
  std::copy_n(f.lo + from_slot, count, t.lo + to_slot);
  std::copy_n(f.hi + from_slot, count, t.hi + to_slot);
  if (!f.leaf) {
    std::copy_n(f.child + from_slot, count, t.child + to_slot);
    std::copy_n(f.below + from_slot, count, t.below + to_slot);
    std::copy_n(f.top + from_slot, count, t.top + to_slot);
    for (int i = 0; i < count; ++i) {
      Node& c = N(t.child[to_slot + i]);
      c.parent = to;
      c.slot = static_cast<int16_t>(to_slot + i);
    }
  }
}

void IovaGapTree::ShiftEntries(uint32_t x, int from_slot, int delta) {
  Node& n = N(x);
  const int count = n.count - from_slot;
  if (count > 0) {
    std::memmove(n.lo + from_slot + delta, n.lo + from_slot, sizeof(uint64_t) * count);
    std::memmove(n.hi + from_slot + delta, n.hi + from_slot, sizeof(uint64_t) * count);
    if (!n.leaf) {
      std::memmove(n.child + from_slot + delta, n.child + from_slot, sizeof(uint32_t) * count);
      std::memmove(n.below + from_slot + delta, n.below + from_slot, sizeof(uint32_t) * count);
      std::memmove(n.top + from_slot + delta, n.top + from_slot, sizeof(uint32_t) * count);
      for (int i = from_slot + delta; i < from_slot + delta + count; ++i) {
        N(n.child[i]).slot = static_cast<int16_t>(i);
      }
    }
  }
  SetCount(n, n.count + delta);
}

namespace {

// a[s + 1 .. kFanout) takes the old a[s .. kFanout - 1) (the old last word is
// dropped); a[0 .. s] keep theirs (the caller overwrites slot s).
// REQUIRES 0 <= s < kFanout.
[[gnu::always_inline]] inline void OpenSlot(uint64_t* a, int s) {
  const uint64_t* above = kStep.data() + IovaGapTree::kFanout - 1 - s;  // all-ones at slots > s
  Pair cur[kPairs];
  Pair prev[kPairs];  // lane i holds a[i - 1] (a[0] at slot 0, never taken)
#pragma GCC unroll 8
  for (int k = 0; k < kPairs; ++k) cur[k] = LoadPair(a + 2 * k);
  prev[0] = Pair{a[0], a[0]};
#pragma GCC unroll 8
  for (int k = 1; k < kPairs; ++k) prev[k] = LoadPair(a + 2 * k - 1);
#pragma GCC unroll 8
  for (int k = 0; k < kPairs; ++k) {
    const Pair m = LoadPair(above + 2 * k);
    StorePair(a + 2 * k, (prev[k] & m) | (cur[k] & ~m));
  }
}

// a[s .. kFanout - 1) takes the old a[s + 1 .. kFanout), and a[kFanout - 1]
// the word `fill`. REQUIRES 0 <= s < kFanout.
[[gnu::always_inline]] inline void CloseSlot(uint64_t* a, int s, uint64_t fill) {
  const uint64_t* at_or_above = kStep.data() + IovaGapTree::kFanout - s;  // all-ones at slots >= s
  Pair cur[kPairs];
  Pair next[kPairs];  // lane i holds a[i + 1] (`fill` past the end)
#pragma GCC unroll 8
  for (int k = 0; k < kPairs; ++k) cur[k] = LoadPair(a + 2 * k);
#pragma GCC unroll 8
  for (int k = 0; k + 1 < kPairs; ++k) next[k] = LoadPair(a + 2 * k + 1);
  next[kPairs - 1] = Pair{a[IovaGapTree::kFanout - 1], fill};
#pragma GCC unroll 8
  for (int k = 0; k < kPairs; ++k) {
    const Pair m = LoadPair(at_or_above + 2 * k);
    StorePair(a + 2 * k, (next[k] & m) | (cur[k] & ~m));
  }
}

}  // namespace

void IovaGapTree::ShiftLeaf(Node& n, int from_slot, int delta) {
  // Slots past count hold kNoKey in lo[]: opening a slot moves one of them
  // up (or drops it), closing one brings kNoKey in at the end.
  assert(n.leaf && (delta == 1 || delta == -1) && from_slot >= (delta < 0 ? 1 : 0) &&
         from_slot <= n.count && n.count + delta <= kFanout);
  if (delta > 0) {
    OpenSlot(n.lo, from_slot);
    OpenSlot(n.hi, from_slot);
  } else {
    CloseSlot(n.lo, from_slot - 1, kNoKey);
    CloseSlot(n.hi, from_slot - 1, kNoKey);
  }
  n.count = static_cast<int16_t>(n.count + delta);
}

int IovaGapTree::SplitPoint(int at) {
  if (at <= kFanout / 4) return std::max(at, kMinFill);
  if (at >= kFanout - kFanout / 4) return std::min(at, kFanout - kMinFill);
  return kFanout / 2;
}

uint32_t IovaGapTree::Split(uint32_t x, int at) {
  assert(N(x).count == kFanout);
  if (x != root_node_ && N(N(x).parent).count == kFanout) {
    Split(N(x).parent, SlotInParent(x) + 1);
  }
  const uint32_t r = NewNode(N(x).leaf);  // may add a chunk: no references above
  const int keep = SplitPoint(at);
  CopyEntries(x, keep, r, 0, kFanout - keep);
  N(r).count = static_cast<int16_t>(kFanout - keep);
  SetCount(N(x), keep);
  if (N(x).leaf) {
    N(r).next = N(x).next;
    N(x).next = r;
  }
  uint32_t p;
  int s;
  if (x == root_node_) {
    // The new root covers the same ranges: root_ stays current.
    p = NewNode(/*leaf=*/false);
    Node& pn = N(p);
    pn.child[0] = x;
    pn.lo[0] = N(x).lo[0];
    pn.hi[0] = 0;
    pn.below[0] = 0;
    pn.top[0] = 0;
    pn.count = 1;
    N(x).parent = p;
    N(x).slot = 0;
    root_node_ = p;
    s = 0;
  } else {
    p = N(x).parent;
    s = SlotInParent(x);
  }
  ShiftEntries(p, s + 1, 1);
  Node& pn = N(p);
  pn.child[s + 1] = r;
  pn.lo[s + 1] = N(r).lo[0];
  pn.hi[s + 1] = 0;
  pn.below[s + 1] = 0;
  pn.top[s + 1] = 0;
  N(r).parent = p;
  N(r).slot = static_cast<int16_t>(s + 1);
  // p covers the same ranges as before, so only these two entries change.
  UpdateEntry(x);
  UpdateEntry(r);
  return r;
}

void IovaGapTree::Settle(uint32_t x) {
  // Stops at the first unchanged entry; after a merge or borrow it refreshes
  // every entry up to the root.
  bool may_stop = true;
  for (;;) {
    Node& n = N(x);
    if (x == root_node_) {
      if (!n.leaf && n.count == 1) {
        // Collapse: the only child becomes the root, covering the same ranges.
        const uint32_t c = n.child[0];
        FreeNode(x);
        root_node_ = c;
        N(c).parent = kNil;
        x = c;
        continue;
      }
      UpdateEntry(x);
      return;
    }
    const uint32_t p = n.parent;
    if (n.count < kMinFill) {
      const int s = SlotInParent(x);
      const int ls = s > 0 ? s - 1 : s;
      const uint32_t l = N(p).child[ls];
      const uint32_t r = N(p).child[ls + 1];
      const int cl = N(l).count;
      const int cr = N(r).count;
      if (cl + cr <= kFanout) {
        CopyEntries(r, 0, l, cl, cr);
        N(l).count = static_cast<int16_t>(cl + cr);
        if (N(l).leaf) N(l).next = N(r).next;
        N(r).count = 0;
        FreeNode(r);
        ShiftEntries(p, ls + 2, -1);
        UpdateEntry(l);
      } else if (cl < cr) {
        const int k = (cr - cl) / 2;
        CopyEntries(r, 0, l, cl, k);
        N(l).count = static_cast<int16_t>(cl + k);
        ShiftEntries(r, k, -k);
        UpdateEntry(l);
        UpdateEntry(r);
      } else {
        const int k = (cl - cr) / 2;
        ShiftEntries(r, 0, k);
        CopyEntries(l, cl - k, r, 0, k);
        SetCount(N(l), cl - k);
        UpdateEntry(l);
        UpdateEntry(r);
      }
      may_stop = false;
      x = p;
      continue;
    }
    if (!UpdateEntry(x) && may_stop) return;
    x = p;
  }
}

bool IovaGapTree::InsertShifting(uint32_t x, int slot, uint64_t lo, uint64_t hi,
                                 const Summary& shrunk) {
  if (x == root_node_) return false;
  const uint32_t px = N(x).parent;
  const int s = SlotInParent(x);
  Node& xn = N(x);
  Node& p = N(px);
  if (s + 1 < p.count && N(p.child[s + 1]).count < kFanout) {
    // x's last entry (or the new range, if it goes last) moves to the front
    // of the right sibling.
    const uint32_t r = p.child[s + 1];
    ShiftLeaf(N(r), 0, 1);
    Node& rn = N(r);
    if (slot == kFanout) {
      rn.lo[0] = lo;
      rn.hi[0] = hi;
    } else {
      rn.lo[0] = xn.lo[kFanout - 1];
      rn.hi[0] = xn.hi[kFanout - 1];
      std::memmove(xn.lo + slot + 1, xn.lo + slot, sizeof(uint64_t) * (kFanout - 1 - slot));
      std::memmove(xn.hi + slot + 1, xn.hi + slot, sizeof(uint64_t) * (kFanout - 1 - slot));
      xn.lo[slot] = lo;
      xn.hi[slot] = hi;
    }
    UpdateEntry(r);
    UpdateEntry(x);
    if (slot == 0 && s == 0) FixKey(px);
  } else if (s > 0 && N(p.child[s - 1]).count < kFanout) {
    // x's first entry (or the new range, if it goes first) moves to the end
    // of the left sibling.
    const uint32_t l = p.child[s - 1];
    Node& ln = N(l);
    const int c = ln.count;
    if (slot == 0) {
      ln.lo[c] = lo;
      ln.hi[c] = hi;
    } else {
      ln.lo[c] = xn.lo[0];
      ln.hi[c] = xn.hi[0];
      std::memmove(xn.lo, xn.lo + 1, sizeof(uint64_t) * (slot - 1));
      std::memmove(xn.hi, xn.hi + 1, sizeof(uint64_t) * (slot - 1));
      xn.lo[slot - 1] = lo;
      xn.hi[slot - 1] = hi;
    }
    ln.count = static_cast<int16_t>(c + 1);
    UpdateEntry(l);
    UpdateEntry(x);
  } else {
    return false;
  }
  // The parent covers the same ranges plus the new one (its row can only have
  // grown, by that range's) or, after a carve, subsets of the shrunk range
  // (its row can only have dropped, and only if that range attained it).
  RefreshAboveInsert(px, lo, hi, shrunk);
  return true;
}

void IovaGapTree::InsertRange(uint32_t x, int slot, uint64_t lo, uint64_t hi,
                              const Summary& shrunk) {
  assert(N(x).leaf && N(x).count == kFanout);
  if (InsertShifting(x, slot, lo, hi, shrunk)) return;
  const uint32_t r = Split(x, slot);
  const int keep = N(x).count;
  if (slot > keep) {
    x = r;
    slot -= keep;
  }
  Node& n = N(x);
  ShiftLeaf(n, slot, 1);
  n.lo[slot] = lo;
  n.hi[slot] = hi;
  // The split left the entries of x and its sibling current but for this
  // insert, and every entry above their parent as it was before the caller's
  // change (splits keep what a node covers). Refresh the one entry the insert
  // changed; from the parent up this is InsertShifting's case: the rows there
  // only grew by the new range, or (after a carve) only dropped by the shrunk
  // one, so the update climbs only while an entry changes.
  UpdateEntry(x);
  const uint32_t p = n.parent;
  FixKey(p);
  RefreshAboveInsert(p, lo, hi, shrunk);
}

void IovaGapTree::RefreshAboveInsert(uint32_t p, uint64_t lo, uint64_t hi, const Summary& shrunk) {
  if (shrunk.max_len == 0) {
    Raise(p, RangeSummary(lo, hi));
  } else {
    Lower(p, shrunk);
  }
}

void IovaGapTree::RemoveRange(uint32_t x, int slot) {
  ShiftEntries(x, slot + 1, -1);
  Settle(x);
}

namespace {

// Bucket floor(log2(num_pages)), num_pages >= 1 (written so that the
// compiler sees it in bounds).
int HistogramBucket(uint64_t num_pages) { return 63 - std::countl_zero(num_pages | 1); }

}  // namespace

void IovaGapTree::CountIn(uint64_t num_pages) {
  ++range_count_;
  free_pages_ += num_pages;
  ++histogram_[HistogramBucket(num_pages)];
}

void IovaGapTree::CountOut(uint64_t num_pages) {
  --range_count_;
  free_pages_ -= num_pages;
  --histogram_[HistogramBucket(num_pages)];
}

// --- operations --------------------------------------------------------------

IovaGapTree::Fit IovaGapTree::FindHighestFit(uint64_t num_pages, int order,
                                             uint64_t limit_pfn) const {
  assert(num_pages >= 1 && order < num_orders_ &&
         static_cast<int>(std::bit_width(num_pages - 1)) == order);
  if (num_pages <= kRoomCap && RowWord(root_, order) < num_pages) return Fit{};
  const uint64_t align = uint64_t{1} << order;
  // An internal entry of order K has row[order] >= need iff K >= order + 2 (a
  // capped word, >= need), or K == order + 1 and below >= need, or K == order
  // and top >= need (RowWord without its shifts; need <= Cap(order)).
  const uint32_t need = num_pages < kRoomCap ? static_cast<uint32_t>(num_pages) : kRoomCap;
  const uint64_t half = order > 0 ? uint64_t{1} << (order - 1) : 0;             // K >= order
  const uint64_t one = uint64_t{1} << order;                                    // K >= order + 1
  const uint64_t two = order < 63 ? uint64_t{1} << (order + 1) : ~uint64_t{0};  // K >= order + 2
  // The walk: node x in hand, the slot s to try first there, and the limit.
  // Only the first entry tried in a node (the one on the limit's path, which
  // may straddle it) is searched under `limit`; the entries below it lie
  // wholly below the limit, and (for num_pages <= kRoomCap) an entry whose
  // word is >= need there holds a sure fit, so a descent fails only along the
  // limit's path or on a capped word.
  constexpr uint64_t kNoLimit = ~uint64_t{0};
  uint64_t limit = limit_pfn;
  uint32_t x = root_node_;
  const Node* n = &N(x);
  int s = LastAtOrBelow(*n, limit);
  for (;;) {
    if (n->leaf) {
      for (int e = s; e >= 0; --e) {
        const uint64_t hi = std::min(n->hi[e], limit);
        if (hi - n->lo[e] + 1 >= num_pages) {
          const uint64_t pfn = AlignDown(hi - num_pages + 1, align);
          if (pfn >= n->lo[e]) return Fit{x * kFanout + e, pfn};
        }
      }
    } else {
      int e = s;
      for (; e >= 0; --e) {
        const uint64_t max_len = n->hi[e];
        const bool fits = max_len > two || (max_len > one ? n->below[e] >= need
                                                          : max_len > half && n->top[e] >= need);
        if (fits && max_len >= num_pages) break;
      }
      if (e >= 0) {
        if (e != s) limit = kNoLimit;
        x = n->child[e];
        n = &N(x);
        PrefetchNode(*n);
        s = limit != kNoLimit ? LastAtOrBelow(*n, limit) : n->count - 1;
        continue;
      }
    }
    // Nothing fits at or below s here: back to the parent, below this node's
    // slot, where every entry lies wholly below the limit.
    if (x == root_node_) return Fit{};
    s = n->slot - 1;
    x = n->parent;
    n = &N(x);
    limit = kNoLimit;
  }
}

void IovaGapTree::Carve(const Fit& fit, uint64_t num_pages) {
  const uint32_t x = fit.node / kFanout;
  const int s = static_cast<int>(fit.node % kFanout);
  Node& n = N(x);
  const uint64_t lo = n.lo[s];
  const uint64_t hi = n.hi[s];
  const uint64_t last = fit.pfn + num_pages - 1;
  assert(s < n.count && fit.pfn >= lo && last <= hi && last >= fit.pfn);
  // Every outcome replaces [lo, hi] by subsets of it: the leaf's row can only
  // drop, and only if [lo, hi] attained it.
  const Summary gone = RangeSummary(lo, hi);
  CountOut(hi - lo + 1);
  if (fit.pfn == lo && last == hi) {
    if (x != root_node_ && n.count <= kMinFill) {
      RemoveRange(x, s);
      return;
    }
    ShiftLeaf(n, s + 1, -1);
    Lower(x, gone);
    if (s == 0) FixKey(x);
    return;
  }
  if (fit.pfn == lo) {
    n.lo[s] = last + 1;
    CountIn(hi - last);
    Lower(x, gone);
    if (s == 0) FixKey(x);
  } else if (last == hi) {
    n.hi[s] = fit.pfn - 1;
    CountIn(fit.pfn - lo);
    Lower(x, gone);
  } else {
    n.hi[s] = fit.pfn - 1;
    CountIn(fit.pfn - lo);
    CountIn(hi - last);
    if (n.count == kFanout) {
      InsertRange(x, s + 1, last + 1, hi, gone);
      return;
    }
    ShiftLeaf(n, s + 1, 1);
    n.lo[s + 1] = last + 1;
    n.hi[s + 1] = hi;
    Lower(x, gone);
  }
}

IovaGapTree::Range IovaGapTree::Release(uint64_t lo, uint64_t hi) {
  assert(lo <= hi);
  const Pos pred = Locate(lo);
  Node& pn = N(pred.leaf);
  assert(pred.slot < 0 || pn.hi[pred.slot] < lo);
  Pos succ{pred.leaf, pred.slot + 1};
  if (succ.slot == pn.count) succ = Pos{pn.next, 0};
  const bool merge_pred = pred.slot >= 0 && pn.hi[pred.slot] + 1 == lo;
  const bool merge_succ =
      succ.leaf != kNil && hi != UINT64_MAX && N(succ.leaf).lo[succ.slot] == hi + 1;
  assert(succ.leaf == kNil || N(succ.leaf).lo[succ.slot] > hi);
  // The merged range holds every range it replaces, so rows only grow:
  // Raise, except where a leaf loses an entry (Lower, or Settle when that
  // leaves it underfull).
  if (merge_pred && merge_succ) {
    Node& sn = N(succ.leaf);
    const Range merged{pn.lo[pred.slot], sn.hi[succ.slot]};
    CountOut(pn.hi[pred.slot] - pn.lo[pred.slot] + 1);
    CountOut(sn.hi[succ.slot] - sn.lo[succ.slot] + 1);
    CountIn(merged.num_pages());
    if (succ.leaf == pred.leaf) {
      pn.hi[pred.slot] = merged.hi;
      if (pred.leaf != root_node_ && pn.count <= kMinFill) {
        RemoveRange(pred.leaf, succ.slot);  // settles the whole path
      } else {
        ShiftLeaf(pn, succ.slot + 1, -1);
        Raise(pred.leaf, RangeSummary(merged.lo, merged.hi));
      }
      return merged;
    }
    const Summary gone = RangeSummary(sn.lo[succ.slot], sn.hi[succ.slot]);
    pn.hi[pred.slot] = merged.hi;
    Raise(pred.leaf, RangeSummary(merged.lo, merged.hi));
    if (sn.count <= kMinFill) {
      RemoveRange(succ.leaf, succ.slot);
    } else {
      ShiftLeaf(sn, 1, -1);
      Lower(succ.leaf, gone);
      FixKey(succ.leaf);
    }
    return merged;
  }
  if (merge_pred) {
    const Range merged{pn.lo[pred.slot], hi};
    CountOut(pn.hi[pred.slot] - pn.lo[pred.slot] + 1);
    CountIn(merged.num_pages());
    pn.hi[pred.slot] = hi;
    Raise(pred.leaf, RangeSummary(merged.lo, merged.hi));
    return merged;
  }
  if (merge_succ) {
    Node& sn = N(succ.leaf);
    const Range merged{lo, sn.hi[succ.slot]};
    CountOut(sn.hi[succ.slot] - sn.lo[succ.slot] + 1);
    CountIn(merged.num_pages());
    sn.lo[succ.slot] = lo;
    Raise(succ.leaf, RangeSummary(merged.lo, merged.hi));
    if (succ.slot == 0) FixKey(succ.leaf);
    return merged;
  }
  CountIn(hi - lo + 1);
  const int slot = pred.slot + 1;
  if (pn.count == kFanout) {
    InsertRange(pred.leaf, slot, lo, hi, Summary{});
  } else {
    ShiftLeaf(pn, slot, 1);
    pn.lo[slot] = lo;
    pn.hi[slot] = hi;
    Raise(pred.leaf, RangeSummary(lo, hi));
    if (slot == 0) FixKey(pred.leaf);
  }
  return Range{lo, hi};
}

void IovaGapTree::Take(uint64_t lo, uint64_t hi) {
  const Pos p = Locate(lo);
  assert(p.slot >= 0 && N(p.leaf).hi[p.slot] >= hi);
  Carve(Fit{p.leaf * kFanout + p.slot, lo}, hi - lo + 1);
}

bool IovaGapTree::TakeIfFree(uint64_t lo, uint64_t hi) {
  const Pos p = Locate(lo);
  if (p.slot < 0 || N(p.leaf).hi[p.slot] < hi) return false;
  Carve(Fit{p.leaf * kFanout + p.slot, lo}, hi - lo + 1);
  return true;
}

uint64_t IovaGapTree::FreePagesIn(uint64_t lo, uint64_t hi) const {
  uint64_t pages = 0;
  Pos p = Locate(lo);
  uint32_t x = p.leaf;
  int s = std::max(p.slot, 0);
  for (; x != kNil; x = N(x).next, s = 0) {
    const Node& n = N(x);
    for (; s < n.count; ++s) {
      if (n.lo[s] > hi) return pages;
      const uint64_t a = std::max(lo, n.lo[s]);
      const uint64_t b = std::min(hi, n.hi[s]);
      if (a <= b) pages += b - a + 1;
    }
  }
  return pages;
}

bool IovaGapTree::FindContaining(uint64_t pfn, Range* out) const {
  const Pos p = Locate(pfn);
  if (p.slot < 0 || N(p.leaf).hi[p.slot] < pfn) return false;
  *out = Range{N(p.leaf).lo[p.slot], N(p.leaf).hi[p.slot]};
  return true;
}

// --- checking ----------------------------------------------------------------

}  // namespace iommu::core::internal
