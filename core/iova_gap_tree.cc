#include "core/iova_gap_tree.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/bits.h"

namespace iommu::core::internal {
namespace {

// For the orders a 32-bit lane computes directly: kPadMask[k] = 2^k - 1
// ((-lo) & kPadMask[k] is the distance from lo up to its next 2^k boundary),
// kPow[k] = 2^k (the cap of a word), kHalf[k] = 2^(k-1) (0 for k = 0): a
// range of at most kHalf[k] pages has word 0.
constexpr int kFastLanes = 32;
constexpr std::array<uint32_t, kFastLanes> kPadMask = [] {
  std::array<uint32_t, kFastLanes> m{};
  for (int k = 0; k < kFastLanes; ++k) m[k] = (uint32_t{1} << k) - 1;
  return m;
}();
static_assert(kFastLanes % IovaGapTree::kLaneBlock == 0);
constexpr std::array<uint32_t, kFastLanes> kPow = [] {
  std::array<uint32_t, kFastLanes> m{};
  for (int k = 0; k < kFastLanes; ++k) m[k] = uint32_t{1} << k;
  return m;
}();
constexpr std::array<uint32_t, kFastLanes> kHalf = [] {
  std::array<uint32_t, kFastLanes> m{};
  for (int k = 1; k < kFastLanes; ++k) m[k] = uint32_t{1} << (k - 1);
  return m;
}();

// One block of row lanes as a GCC/Clang vector: one ymm register in the AVX2
// kernels, two xmm in the SSE2 ones. Loads and stores go through memcpy (rows
// are only 4-byte aligned as far as the type system knows).
// The helpers are always inlined (also at -O0), so the note that passing a
// 32-byte vector by value without AVX changes the ABI does not apply to them;
// nothing that may be a real call takes or returns a Block.
using Block = uint32_t __attribute__((vector_size(4 * IovaGapTree::kLaneBlock)));
static_assert(sizeof(Block) == 32);
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

[[gnu::always_inline]] inline Block LoadBlock(const uint32_t* p) {
  Block v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
[[gnu::always_inline]] inline void StoreBlock(uint32_t* p, Block v) {
  std::memcpy(p, &v, sizeof(v));
}
[[gnu::always_inline]] inline Block Splat(uint32_t x) {
  // Lane 0 shuffled into every lane: one broadcast instruction.
#if defined(__clang__)
  const Block v{x};
  return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
#else
  return __builtin_shuffle(Block{x}, Block{});
#endif
}
[[gnu::always_inline]] inline Block Max(Block a, Block b) { return a > b ? a : b; }
[[gnu::always_inline]] inline Block Min(Block a, Block b) { return a < b ? a : b; }

// Word(r, k) for the block of orders k0..k0+7 (k0 + 7 < kFastLanes) of a range
// of len < kRoomCap pages: len_v and neg_lo_v hold len and -lo in every lane.
[[gnu::always_inline]] inline Block OwnWords(Block len_v, Block neg_lo_v, int k0) {
  const Block pad = neg_lo_v & LoadBlock(&kPadMask[k0]);
  const Block room = Min(Max(len_v, pad) - pad, LoadBlock(&kPow[k0]));
  return len_v > LoadBlock(&kHalf[k0]) ? room : Block{};
}

}  // namespace

IovaGapTree::IovaGapTree(int num_orders)
    : num_orders_(num_orders),
      lanes_((num_orders + kLaneBlock - 1) / kLaneBlock * kLaneBlock),
      kernels_(PickKernels(lanes_)) {
  assert(num_orders >= 1 && num_orders <= 64);
  nodes_.push_back(Node{0, 0, 0, kNil, kNil, kNil, 0, 0});
  aug0_.assign(kLaneBlock, 0);
  augn_.assign(lanes_ - kLaneBlock, 0);
}

uint32_t IovaGapTree::NewNode(uint64_t lo, uint64_t hi) {
  uint32_t x;
  if (!free_nodes_.empty()) {
    x = free_nodes_.back();
    free_nodes_.pop_back();
  } else {
    x = static_cast<uint32_t>(nodes_.size());
    assert(x != 0 && nodes_.size() < UINT32_MAX);
    nodes_.push_back(Node{});
    aug0_.resize(aug0_.size() + kLaneBlock);
    augn_.resize(augn_.size() + (lanes_ - kLaneBlock));
  }
  nodes_[x] = Node{lo, hi, 0, kNil, kNil, kNil, 1, 0};
  Pull(x);  // overwrites every word of a recycled row
  return x;
}

void IovaGapTree::FreeNode(uint32_t x) {
  // A free slot's row is all zeros, so NewNode's Pull (which starts from
  // max_len 0, i.e. no active block) leaves a fully current row.
  for (int b = 0; b < nodes_[x].blocks; ++b) {
    std::memset(RowBlock(x, b), 0, sizeof(uint32_t) * kLaneBlock);
  }
  SetMaxLen(nodes_[x], 0);
  free_nodes_.push_back(x);
}

template <int kLanes>
[[gnu::always_inline]] inline bool IovaGapTree::PullBody(uint32_t x) {
  Node& n = nodes_[x];
  const Node& l = nodes_[n.left];
  const Node& r = nodes_[n.right];
  const uint64_t len = n.hi - n.lo + 1;
  const uint64_t max_len = std::max(len, std::max(l.max_len, r.max_len));
  // Only the blocks below a row's ActiveBlocks can be non-zero, so x's row is
  // computed up to its new count and cleared from there to its old one. A
  // child's blocks past its own count read as zeros, and so do the own words
  // past ActiveBlocks(len) (the formula gives 0 there), so neither needs a
  // test in the loop.
  const int old_blocks = n.blocks;
  const int blocks = ActiveBlocks(max_len);
  constexpr size_t kRest = kLanes - kLaneBlock;  // words per node in augn_
  uint32_t* const aug0 = aug0_.data();
  uint32_t* const augn = augn_.data();
  // room_k = len - ((-lo) mod 2^k), saturating at 0: exact in 32 bits for
  // k < 32 when len fits; then capped at 2^k and zero unless len > 2^(k-1).
  const bool narrow = len < kRoomCap;
  const Block len_v = Splat(static_cast<uint32_t>(len));
  const Block neg_lo_v = Splat(static_cast<uint32_t>(0 - n.lo));
  // Word(r, k) lane by lane in 64 bits (orders >= kFastLanes, or len >=
  // kRoomCap). It fills memory rather than returning a Block: a lambda may be
  // a real call (at -O0), compiled without the caller's AVX2 target, and a
  // vector passed by value would then cross two different ABIs.
  const auto own_slow = [&n](int k0, uint32_t* words) {
    for (int i = 0; i < kLaneBlock; ++i) words[i] = RoomWord(n.lo, n.hi, k0 + i);
  };
  alignas(32) uint32_t slow_words[kLaneBlock];
  // Block 0 (every node has one: blocks >= 1), in aug0.
  Block v0;
  if (narrow) [[likely]] {
    v0 = OwnWords(len_v, neg_lo_v, 0);
  } else {
    own_slow(0, slow_words);
    v0 = LoadBlock(slow_words);
  }
  v0 = Max(v0, Max(LoadBlock(aug0 + size_t{n.left} * kLaneBlock),
                   LoadBlock(aug0 + size_t{n.right} * kLaneBlock)));
  uint32_t* const row0 = aug0 + size_t{x} * kLaneBlock;
  Block diff = v0 ^ LoadBlock(row0);
  StoreBlock(row0, v0);
  if (blocks > 1 || old_blocks > 1) [[unlikely]] {
    // Blocks 1.. in augn, kRest words per node.
    const uint32_t* const ln = augn + size_t{n.left} * kRest;
    const uint32_t* const rn = augn + size_t{n.right} * kRest;
    uint32_t* const xn = augn + size_t{x} * kRest;
    // A fixed trip count the compiler unrolls, so whether a block is one of
    // the 32-bit fast orders is known per block at compile time. Blocks past
    // the new count (up to the old one) are cleared.
#pragma GCC unroll 8
    for (int b = 1; b < kLanes / kLaneBlock; ++b) {
      if (b >= blocks && b >= old_blocks) break;
      const int k0 = b * kLaneBlock;
      const int off = k0 - kLaneBlock;
      Block v = Block{};
      if (b < blocks) {
        if (narrow && k0 < kFastLanes) {
          v = OwnWords(len_v, neg_lo_v, k0);
        } else {
          own_slow(k0, slow_words);
          v = LoadBlock(slow_words);
        }
        v = Max(v, Max(LoadBlock(ln + off), LoadBlock(rn + off)));
      }
      diff |= v ^ LoadBlock(xn + off);
      StoreBlock(xn + off, v);
    }
  }
  uint64_t diff_words[sizeof(Block) / sizeof(uint64_t)];
  std::memcpy(diff_words, &diff, sizeof(diff));
  const bool changed = ((diff_words[0] | diff_words[1] | diff_words[2] | diff_words[3]) != 0) |
                       (max_len != n.max_len);
  n.max_len = max_len;
  n.blocks = static_cast<uint16_t>(blocks);
  n.height = static_cast<int16_t>(1 + std::max(l.height, r.height));
  return changed;
}

template <int kLanes>
[[gnu::always_inline]] inline void IovaGapTree::FixUpwardBody(uint32_t x,
                                                             uint32_t must_reach) {
  while (x != kNil) {
    const int old_height = nodes_[x].height;
    // Children are current (processed below, or off the path), so x's row,
    // max_len and height are current after this and rotations at x may copy
    // them.
    const bool changed = PullBody<kLanes>(x);
    if (x == must_reach) must_reach = kNil;
    const Node& n = nodes_[x];
    const int balance = nodes_[n.left].height - nodes_[n.right].height;
    uint32_t subtree = x;
    if (balance > 1) {
      const uint32_t l = n.left;
      if (nodes_[nodes_[l].left].height < nodes_[nodes_[l].right].height) RotateLeft(l);
      subtree = RotateRight(x);
    } else if (balance < -1) {
      const uint32_t r = n.right;
      if (nodes_[nodes_[r].right].height < nodes_[nodes_[r].left].height) RotateRight(r);
      subtree = RotateLeft(x);
    }
    // Rotations keep the subtree's row; if neither it nor the height moved
    // (and no changed range lies above), no ancestor can change.
    if (!changed && must_reach == kNil && nodes_[subtree].height == old_height) return;
    x = nodes_[subtree].parent;
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IOMMU_IOVA_AVX2_DISPATCH 1
#endif

template <int kLanes>
bool IovaGapTree::PullLanes(uint32_t x) {
  return PullBody<kLanes>(x);
}

template <int kLanes>
void IovaGapTree::FixUpwardLanes(uint32_t x, uint32_t must_reach) {
  FixUpwardBody<kLanes>(x, must_reach);
}

#ifdef IOMMU_IOVA_AVX2_DISPATCH
template <int kLanes>
__attribute__((target("avx2"))) bool IovaGapTree::PullLanesAvx2(uint32_t x) {
  return PullBody<kLanes>(x);
}

template <int kLanes>
__attribute__((target("avx2"))) void IovaGapTree::FixUpwardLanesAvx2(uint32_t x,
                                                                     uint32_t must_reach) {
  FixUpwardBody<kLanes>(x, must_reach);
}
#endif

template <int kLanes>
IovaGapTree::Kernels IovaGapTree::PickKernels() {
#ifdef IOMMU_IOVA_AVX2_DISPATCH
  if (__builtin_cpu_supports("avx2")) {
    return Kernels{&IovaGapTree::PullLanesAvx2<kLanes>, &IovaGapTree::FixUpwardLanesAvx2<kLanes>};
  }
#endif
  return Kernels{&IovaGapTree::PullLanes<kLanes>, &IovaGapTree::FixUpwardLanes<kLanes>};
}

IovaGapTree::Kernels IovaGapTree::PickKernels(int lanes) {
  switch (lanes) {
    case 8: return PickKernels<8>();
    case 16: return PickKernels<16>();
    case 24: return PickKernels<24>();
    case 32: return PickKernels<32>();
    case 40: return PickKernels<40>();
    case 48: return PickKernels<48>();
    case 56: return PickKernels<56>();
    case 64: return PickKernels<64>();
  }
  assert(false && "lanes is a multiple of 8 in [8, 64]");
  return Kernels{};
}

void IovaGapTree::UpdateHeight(uint32_t x) {
  Node& n = nodes_[x];
  n.height = static_cast<int16_t>(1 + std::max(nodes_[n.left].height, nodes_[n.right].height));
}

void IovaGapTree::ReplaceChild(uint32_t parent, uint32_t old_child, uint32_t new_child) {
  if (parent == kNil) {
    root_ = new_child;
  } else if (nodes_[parent].left == old_child) {
    nodes_[parent].left = new_child;
  } else {
    assert(nodes_[parent].right == old_child);
    nodes_[parent].right = new_child;
  }
  if (new_child != kNil) nodes_[new_child].parent = parent;
}

uint32_t IovaGapTree::RotateLeft(uint32_t x) {
  const uint32_t y = nodes_[x].right;
  const uint32_t b = nodes_[y].left;
  // y takes over x's subtree, hence x's row and max_len. y's row, a
  // subtree's of x, has no more active blocks than x's.
  for (int b = 0; b < nodes_[x].blocks; ++b) {
    std::memcpy(RowBlock(y, b), RowBlock(x, b), sizeof(uint32_t) * kLaneBlock);
  }
  SetMaxLen(nodes_[y], nodes_[x].max_len);
  ReplaceChild(nodes_[x].parent, x, y);
  nodes_[x].right = b;
  if (b != kNil) nodes_[b].parent = x;
  nodes_[y].left = x;
  nodes_[x].parent = y;
  UpdateHeight(x);
  UpdateHeight(y);
  Pull(x);
  return y;
}

uint32_t IovaGapTree::RotateRight(uint32_t x) {
  const uint32_t y = nodes_[x].left;
  const uint32_t b = nodes_[y].right;
  for (int b = 0; b < nodes_[x].blocks; ++b) {
    std::memcpy(RowBlock(y, b), RowBlock(x, b), sizeof(uint32_t) * kLaneBlock);
  }
  SetMaxLen(nodes_[y], nodes_[x].max_len);
  ReplaceChild(nodes_[x].parent, x, y);
  nodes_[x].left = b;
  if (b != kNil) nodes_[b].parent = x;
  nodes_[y].right = x;
  nodes_[x].parent = y;
  UpdateHeight(x);
  UpdateHeight(y);
  Pull(x);
  return y;
}

uint32_t IovaGapTree::Splice(uint32_t x) {
  const Node& n = nodes_[x];
  assert(n.left == kNil || n.right == kNil);
  const uint32_t child = n.left != kNil ? n.left : n.right;
  const uint32_t p = n.parent;
  ReplaceChild(p, x, child);
  return p;
}

uint32_t IovaGapTree::LinkAfter(uint32_t x, uint64_t lo, uint64_t hi) {
  const uint32_t y = NewNode(lo, hi);  // may move nodes_: no references above
  uint32_t parent;
  bool as_left;
  if (x == kNil) {
    if (root_ == kNil) {
      root_ = y;
      return y;
    }
    parent = Leftmost(root_);
    as_left = true;
  } else if (nodes_[x].right == kNil) {
    parent = x;
    as_left = false;
  } else {
    parent = Leftmost(nodes_[x].right);
    as_left = true;
  }
  (as_left ? nodes_[parent].left : nodes_[parent].right) = y;
  nodes_[y].parent = parent;
  return y;
}

void IovaGapTree::CountIn(uint64_t num_pages) {
  ++range_count_;
  free_pages_ += num_pages;
  ++histogram_[std::bit_width(num_pages) - 1];
}

void IovaGapTree::CountOut(uint64_t num_pages) {
  --range_count_;
  free_pages_ -= num_pages;
  --histogram_[std::bit_width(num_pages) - 1];
}

void IovaGapTree::SetRange(uint32_t x, uint64_t lo, uint64_t hi) {
  Node& n = nodes_[x];
  CountOut(n.hi - n.lo + 1);
  n.lo = lo;
  n.hi = hi;
  CountIn(hi - lo + 1);
  FixUpward(x, kNil);
}

void IovaGapTree::Erase(uint32_t x) {
  Node& n = nodes_[x];
  CountOut(n.hi - n.lo + 1);
  if (n.left != kNil && n.right != kNil) {
    // x takes its in-order successor's range; the successor (no left child,
    // below x) is unlinked, and one pass from its parent passes x.
    const uint32_t s = Leftmost(n.right);
    n.lo = nodes_[s].lo;
    n.hi = nodes_[s].hi;
    const uint32_t p = Splice(s);
    FreeNode(s);
    FixUpward(p, x);
    return;
  }
  const uint32_t p = Splice(x);
  FreeNode(x);
  FixUpward(p, kNil);
}

uint32_t IovaGapTree::Leftmost(uint32_t x) const {
  if (x == kNil) return kNil;
  while (nodes_[x].left != kNil) x = nodes_[x].left;
  return x;
}

uint32_t IovaGapTree::Next(uint32_t x) const {
  if (nodes_[x].right != kNil) return Leftmost(nodes_[x].right);
  uint32_t p = nodes_[x].parent;
  while (p != kNil && nodes_[p].right == x) {
    x = p;
    p = nodes_[p].parent;
  }
  return p;
}

uint32_t IovaGapTree::Floor(uint64_t pfn) const {
  uint32_t best = kNil;
  uint32_t x = root_;
  while (x != kNil) {
    if (nodes_[x].lo <= pfn) {
      best = x;
      x = nodes_[x].right;
    } else {
      x = nodes_[x].left;
    }
  }
  return best;
}

IovaGapTree::Fit IovaGapTree::DescendHighest(uint32_t x, uint64_t num_pages,
                                             int order) const {
  const uint64_t align = uint64_t{1} << order;
  for (;;) {
    assert(x != kNil && Aug(x, order) >= num_pages);
    const Node& n = nodes_[x];
    if (Aug(n.right, order) >= num_pages) {
      x = n.right;
    } else if (Room(n.lo, n.hi, order) >= num_pages) {
      return Fit{x, AlignDown(n.hi - num_pages + 1, align)};
    } else {
      x = n.left;
    }
  }
}

IovaGapTree::Fit IovaGapTree::HugeFit(uint32_t x, uint64_t num_pages, int order,
                                      uint64_t limit_pfn) const {
  while (x != kNil && nodes_[x].max_len >= num_pages && Aug(x, order) == kRoomCap) {
    const Node& n = nodes_[x];
    if (n.lo <= limit_pfn) {
      if (const Fit f = HugeFit(n.right, num_pages, order, limit_pfn); f.node != kNil) return f;
      const uint64_t hi = std::min(n.hi, limit_pfn);
      if (hi - n.lo + 1 >= num_pages) {
        const uint64_t pfn = AlignDown(hi - num_pages + 1, uint64_t{1} << order);
        if (pfn >= n.lo) return Fit{x, pfn};
      }
    }
    x = n.left;
  }
  return Fit{};
}

IovaGapTree::Fit IovaGapTree::FindHighestFit(uint64_t num_pages, int order,
                                             uint64_t limit_pfn) const {
  assert(num_pages >= 1 && order < num_orders_ && static_cast<int>(std::bit_width(num_pages - 1)) == order);
  if (num_pages > kRoomCap) [[unlikely]] return HugeFit(root_, num_pages, order, limit_pfn);
  if (Aug(root_, order) < num_pages) return Fit{};
  // Nodes on limit_pfn's search path at which the search went right, i.e.
  // with lo <= limit_pfn. Deeper ones lie higher; each one's left subtree lies
  // between it and the previous one, entirely below the limit.
  uint32_t path[128];
  int depth = 0;
  for (uint32_t x = root_; x != kNil;) {
    if (nodes_[x].lo <= limit_pfn) {
      assert(depth < 128);
      path[depth++] = x;
      x = nodes_[x].right;
    } else {
      x = nodes_[x].left;
    }
  }
  const uint64_t align = uint64_t{1} << order;
  while (depth > 0) {
    const uint32_t x = path[--depth];
    const Node& n = nodes_[x];
    const uint64_t hi = std::min(n.hi, limit_pfn);
    if (hi - n.lo + 1 >= num_pages) {
      const uint64_t pfn = AlignDown(hi - num_pages + 1, align);
      if (pfn >= n.lo) return Fit{x, pfn};
    }
    if (Aug(n.left, order) >= num_pages) return DescendHighest(n.left, num_pages, order);
  }
  return Fit{};
}

void IovaGapTree::Carve(const Fit& fit, uint64_t num_pages) {
  const uint32_t x = fit.node;
  const uint64_t lo = nodes_[x].lo;
  const uint64_t hi = nodes_[x].hi;
  const uint64_t last = fit.pfn + num_pages - 1;
  assert(fit.pfn >= lo && last <= hi && last >= fit.pfn);
  if (fit.pfn == lo && last == hi) {
    Erase(x);
  } else if (fit.pfn == lo) {
    SetRange(x, last + 1, hi);
  } else if (last == hi) {
    SetRange(x, lo, fit.pfn - 1);
  } else {
    // Split: x keeps the low part, the high part becomes x's in-order
    // successor, linked below x; one pass from there passes x.
    CountOut(hi - lo + 1);
    CountIn(fit.pfn - lo);
    CountIn(hi - last);
    nodes_[x].hi = fit.pfn - 1;
    const uint32_t y = LinkAfter(x, last + 1, hi);
    FixUpward(nodes_[y].parent, x);
  }
}

IovaGapTree::Range IovaGapTree::Release(uint64_t lo, uint64_t hi) {
  assert(lo <= hi);
  const uint32_t pred = Floor(lo);
  assert(pred == kNil || nodes_[pred].hi < lo);
  const uint32_t succ = pred != kNil ? Next(pred) : Leftmost(root_);
  assert(succ == kNil || nodes_[succ].lo > hi);
  const bool merge_pred = pred != kNil && nodes_[pred].hi + 1 == lo;
  const bool merge_succ = succ != kNil && hi != UINT64_MAX && nodes_[succ].lo == hi + 1;
  if (merge_pred && merge_succ) {
    // Adjacent in order, so one is the other's ancestor: the ancestor takes the
    // merged range, the descendant (at most one child) is unlinked, and one
    // pass from its parent passes the ancestor.
    const Range merged{nodes_[pred].lo, nodes_[succ].hi};
    CountOut(nodes_[pred].hi - nodes_[pred].lo + 1);
    CountOut(nodes_[succ].hi - nodes_[succ].lo + 1);
    CountIn(merged.num_pages());
    const bool pred_above = nodes_[pred].right != kNil;  // then succ is in it
    const uint32_t keep = pred_above ? pred : succ;
    const uint32_t gone = pred_above ? succ : pred;
    nodes_[keep].lo = merged.lo;
    nodes_[keep].hi = merged.hi;
    const uint32_t p = Splice(gone);
    FreeNode(gone);
    FixUpward(p, keep);
    return merged;
  }
  if (merge_pred) {
    const Range merged{nodes_[pred].lo, hi};
    SetRange(pred, merged.lo, merged.hi);
    return merged;
  }
  if (merge_succ) {
    const Range merged{lo, nodes_[succ].hi};
    SetRange(succ, merged.lo, merged.hi);
    return merged;
  }
  CountIn(hi - lo + 1);
  const uint32_t y = LinkAfter(pred, lo, hi);
  FixUpward(nodes_[y].parent, kNil);
  return Range{lo, hi};
}

void IovaGapTree::Take(uint64_t lo, uint64_t hi) {
  const uint32_t x = Floor(lo);
  assert(x != kNil && nodes_[x].hi >= hi);
  Carve(Fit{x, lo}, hi - lo + 1);
}

uint64_t IovaGapTree::FreePagesIn(uint64_t lo, uint64_t hi) const {
  uint64_t pages = 0;
  uint32_t x = Floor(lo);
  if (x == kNil) x = Leftmost(root_);
  for (; x != kNil && nodes_[x].lo <= hi; x = Next(x)) {
    const uint64_t a = std::max(lo, nodes_[x].lo);
    const uint64_t b = std::min(hi, nodes_[x].hi);
    if (a <= b) pages += b - a + 1;
  }
  return pages;
}

bool IovaGapTree::FindContaining(uint64_t pfn, Range* out) const {
  const uint32_t x = Floor(pfn);
  if (x == kNil || nodes_[x].hi < pfn) return false;
  *out = Range{nodes_[x].lo, nodes_[x].hi};
  return true;
}

absl::Status IovaGapTree::CheckSubtree(uint32_t x, uint32_t parent, int* height,
                                       std::vector<uint32_t>* row_out,
                                       uint64_t* max_len_out) const {
  row_out->assign(lanes_, 0);
  *max_len_out = 0;
  if (x == kNil) {
    *height = 0;
    return absl::OkStatus();
  }
  const Node& n = nodes_[x];
  if (n.parent != parent) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: parent link %u, want %u",
                                               x, n.parent, parent));
  }
  if (n.lo > n.hi) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: empty range", x));
  }
  int hl = 0;
  int hr = 0;
  std::vector<uint32_t> rl;
  std::vector<uint32_t> rr;
  uint64_t ml = 0;
  uint64_t mr = 0;
  if (absl::Status s = CheckSubtree(n.left, x, &hl, &rl, &ml); !s.ok()) return s;
  if (absl::Status s = CheckSubtree(n.right, x, &hr, &rr, &mr); !s.ok()) return s;
  if (hl - hr > 1 || hr - hl > 1 || n.height != 1 + std::max(hl, hr)) {
    return absl::InternalError(absl::StrFormat(
        "gap tree node %u: height %d with children %d/%d", x, n.height, hl, hr));
  }
  *height = n.height;
  *max_len_out = std::max(n.hi - n.lo + 1, std::max(ml, mr));
  if (n.blocks != ActiveBlocks(n.max_len)) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: %d active blocks for max_len %#x",
                                               x, n.blocks, n.max_len));
  }
  if (n.max_len != *max_len_out) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: max_len %#x, recount %#x", x,
                                               n.max_len, *max_len_out));
  }
  for (int k = 0; k < lanes_; ++k) {
    (*row_out)[k] = std::max(RoomWord(n.lo, n.hi, k), std::max(rl[k], rr[k]));
    if ((*row_out)[k] != Aug(x, k)) {
      return absl::InternalError(absl::StrFormat(
          "gap tree node %u [%#x, %#x]: aug[%d]=%#x, recount %#x", x, n.lo, n.hi, k,
          Aug(x, k), (*row_out)[k]));
    }
  }
  return absl::OkStatus();
}

absl::Status IovaGapTree::CheckInvariants() const {
  for (int k = 0; k < lanes_; ++k) {
    if (Aug(kNil, k) != 0) return absl::InternalError("gap tree: nil row not zero");
  }
  const Node& nil = nodes_[kNil];
  if (nil.height != 0 || nil.max_len != 0 || nil.blocks != 0 || nil.left != kNil ||
      nil.right != kNil) {
    return absl::InternalError("gap tree: nil sentinel modified");
  }
  if (aug0_.size() != nodes_.size() * size_t{kLaneBlock} ||
      augn_.size() != nodes_.size() * size_t(lanes_ - kLaneBlock)) {
    return absl::InternalError("gap tree: row storage does not match the slab");
  }
  int height = 0;
  std::vector<uint32_t> row;
  uint64_t max_len = 0;
  if (absl::Status s = CheckSubtree(root_, kNil, &height, &row, &max_len); !s.ok()) return s;
  uint64_t count = 0;
  uint64_t pages = 0;
  uint64_t hist[kHistogramBuckets] = {};
  bool have_prev = false;
  uint64_t prev_hi = 0;
  for (uint32_t x = Leftmost(root_); x != kNil; x = Next(x)) {
    const Node& n = nodes_[x];
    if (have_prev && n.lo <= prev_hi + 1) {
      return absl::InternalError(absl::StrFormat(
          "gap tree: range [%#x, %#x] overlaps or touches previous ending %#x", n.lo, n.hi,
          prev_hi));
    }
    have_prev = true;
    prev_hi = n.hi;
    ++count;
    pages += n.hi - n.lo + 1;
    ++hist[std::bit_width(n.hi - n.lo + 1) - 1];
  }
  if (count != range_count_ || pages != free_pages_) {
    return absl::InternalError(absl::StrFormat(
        "gap tree: counted %u ranges/%#x pages, tracked %u/%#x", count, pages,
        range_count_, free_pages_));
  }
  for (int b = 0; b < kHistogramBuckets; ++b) {
    if (hist[b] != histogram_[b]) {
      return absl::InternalError(absl::StrFormat(
          "gap tree: histogram bucket %d counts %u, tracked %u", b, hist[b], histogram_[b]));
    }
  }
  for (const uint32_t x : free_nodes_) {
    for (int k = 0; k < lanes_; ++k) {
      if (Aug(x, k) != 0 || nodes_[x].blocks != 0) {
        return absl::InternalError(absl::StrFormat("gap tree: free slot %u has a non-zero row", x));
      }
    }
  }
  if (count + 1 + free_nodes_.size() != nodes_.size()) {
    return absl::InternalError("gap tree: slab leaks nodes");
  }
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
