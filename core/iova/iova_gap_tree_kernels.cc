// IovaGapTree's vectorised kernels: the maximum over a node's entries of the
// three summary numbers, on 32- or 64-bit lanes, and the search whose node
// visits are one vector pass each (the mask of the entries that fit), with an
// AVX2 build picked at run time by cpuid and an SSE2/generic one otherwise.
// The tree calls them through the function pointers chosen at construction
// (PickLeafSummary / PickInternalSummary / PickSearch); the scalar fallbacks
// and the reference search live with the tree in iova_gap_tree.cc.

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstdint>
#include <cstring>

#include "core/base/bits.h"
#include "core/iova/iova_gap_tree.h"

namespace iommu::core::internal {

namespace {

// Four 64-bit lanes as a GCC/Clang vector: one ymm register in the AVX2
// kernel, two xmm in the SSE2 one. The helpers are always inlined (also at
// -O0), so no vector crosses a real call (whose ABI would differ between the
// two); for the same reason vectors are reinterpreted with __builtin_bit_cast,
// never std::bit_cast (a real call at -O0: clang 14's Debug build returned
// garbage lanes from it inside the AVX2 kernels).
using Lanes = int64_t __attribute__((vector_size(32)));
using ULanes = uint64_t __attribute__((vector_size(32)));  // for wrapping arithmetic
constexpr int kLanes = 4;
static_assert(IovaGapTree::kFanout % kLanes == 0);
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

[[gnu::always_inline]] inline Lanes LoadLanes(const void* p) {  // bit copy
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
[[gnu::always_inline]] inline ULanes LoadULanes(const uint64_t* p) {
  ULanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
constexpr std::array<int64_t, IovaGapTree::kFanout> kSlotIndex = [] {
  std::array<int64_t, IovaGapTree::kFanout> a{};
  for (int i = 0; i < IovaGapTree::kFanout; ++i) a[i] = i;
  return a;
}();
[[gnu::always_inline]] inline Lanes SplatLanes(int64_t x) { return Lanes{x, x, x, x}; }
[[gnu::always_inline]] inline Lanes MaxLanes(Lanes a, Lanes b) { return a > b ? a : b; }
[[gnu::always_inline]] inline int64_t HorizontalMax(Lanes v) {
  return std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
}

// max over the lanes of Word(r, j) = min(2^j, len - pad) if len > max(pad,
// 2^(j-1)), else 0, where pad = (-lo) mod 2^j. Lanes are signed: REQUIRES
// every len < 2^32 and j < 32.
[[gnu::always_inline]] inline uint32_t WordMax(const Lanes* len, const Lanes* neg_lo, int j) {
  const Lanes mask = SplatLanes((int64_t{1} << j) - 1);
  const Lanes cap = SplatLanes(int64_t{1} << j);
  const Lanes half = SplatLanes(j > 0 ? int64_t{1} << (j - 1) : 0);
  Lanes w = Lanes{};
#pragma GCC unroll 4
  for (int v = 0; v < IovaGapTree::kFanout / kLanes; ++v) {
    const Lanes pad = neg_lo[v] & mask;
    Lanes room = len[v] - pad;  // > cap or < 0 only where it does not count
    room = room < cap ? room : cap;
    w = MaxLanes(w, len[v] > half ? room : Lanes{});
  }
  return static_cast<uint32_t>(HorizontalMax(w));
}

// Eight 32-bit lanes, for leaves whose ranges are all shorter than
// 2^kNarrowBits pages: every word, pad and length then fits a signed 32-bit
// lane, and a kernel pass is over two vectors instead of four.
using Lanes32 = int32_t __attribute__((vector_size(32)));
constexpr int kNarrowBits = 30;
[[gnu::always_inline]] inline Lanes32 SplatLanes32(int32_t x) {
  return Lanes32{x, x, x, x, x, x, x, x};
}
[[gnu::always_inline]] inline Lanes32 MaxLanes32(Lanes32 a, Lanes32 b) { return a > b ? a : b; }
// The low halves of a's and b's lanes (little-endian: the even 32-bit lanes).
[[gnu::always_inline]] inline Lanes32 Narrow(Lanes a, Lanes b) {
  return __builtin_shufflevector(__builtin_bit_cast(Lanes32, a), __builtin_bit_cast(Lanes32, b), 0,
                                 2, 4, 6, 8, 10, 12, 14);
}
[[gnu::always_inline]] inline int32_t HorizontalMax32(Lanes32 v) {
  v = MaxLanes32(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
  v = MaxLanes32(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = MaxLanes32(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
  return v[0];
}
// The low 32 bits of each of a node's kFanout 64-bit lanes (NarrowAll), and
// the maximum of the narrowed lanes (MaxAll32).
constexpr int kVectors32 = IovaGapTree::kFanout / 8;
[[gnu::always_inline]] inline void NarrowAll(const Lanes* wide, Lanes32* narrow) {
#pragma GCC unroll 2
  for (int v = 0; v < kVectors32; ++v) narrow[v] = Narrow(wide[2 * v], wide[2 * v + 1]);
}
[[gnu::always_inline]] inline int32_t MaxAll32(const Lanes32* narrow) {
  Lanes32 m = narrow[0];
#pragma GCC unroll 2
  for (int v = 1; v < kVectors32; ++v) m = MaxLanes32(m, narrow[v]);
  return HorizontalMax32(m);
}
// The maxima of a's lanes and of b's lanes, in one reduction: the halves are
// paired first, so three shuffle/max steps serve both.
[[gnu::always_inline]] inline void HorizontalMax32Pair(Lanes32 a, Lanes32 b, int32_t* max_a,
                                                       int32_t* max_b) {
  Lanes32 v = MaxLanes32(__builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11),
                         __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15));
  v = MaxLanes32(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = MaxLanes32(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
  *max_a = v[0];
  *max_b = v[4];
}
// WordMax on 32-bit lanes before its reduction (the lanewise maxima).
// REQUIRES every len < 2^kNarrowBits, j <= kNarrowBits.
[[gnu::always_inline]] inline Lanes32 WordLanes32(const Lanes32* len, const Lanes32* neg_lo,
                                                  int j) {
  const Lanes32 mask = SplatLanes32(static_cast<int32_t>((int64_t{1} << j) - 1));
  const Lanes32 cap = SplatLanes32(static_cast<int32_t>(int64_t{1} << j));
  const Lanes32 half = SplatLanes32(j > 0 ? int32_t{1} << (j - 1) : 0);
  Lanes32 w = Lanes32{};
#pragma GCC unroll 2
  for (int v = 0; v < IovaGapTree::kFanout / 8; ++v) {
    const Lanes32 pad = neg_lo[v] & mask;
    Lanes32 room = len[v] - pad;  // > cap or < 0 only where it does not count
    room = room < cap ? room : cap;
    w = MaxLanes32(w, len[v] > half ? room : Lanes32{});
  }
  return w;
}
// The leaf summary for count <= kFanout ranges held in lo/hi, lanes past
// `count` ignored; returns false (and leaves *out alone) if some range has
// 2^32 pages or more, which the scalar code handles.
[[gnu::always_inline]] inline bool LeafLanesBody(const uint64_t* lo, const uint64_t* hi, int count,
                                                 uint64_t* max_len, uint32_t* below,
                                                 uint32_t* top) {
  constexpr int kVectors = IovaGapTree::kFanout / kLanes;
  Lanes len[kVectors];
  Lanes neg_lo[kVectors];
  Lanes m = Lanes{};
  Lanes any = Lanes{};
  const Lanes cnt = SplatLanes(count);
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) {
    const Lanes index = LoadLanes(&kSlotIndex[kLanes * v]);
    // Unsigned (wrapping) until every len is known to be < 2^32.
    const ULanes l = LoadULanes(hi + kLanes * v) - LoadULanes(lo + kLanes * v) + 1;
    len[v] = index < cnt ? __builtin_bit_cast(Lanes, l) : Lanes{};  // unused: empty
    const ULanes neg = ULanes{} - LoadULanes(lo + kLanes * v);
    neg_lo[v] = __builtin_bit_cast(Lanes, neg);
    any |= len[v];
  }
  const int64_t any_len = any[0] | any[1] | any[2] | any[3];
  if ((any_len >> kNarrowBits) == 0) {
    Lanes32 len32[kVectors32];
    Lanes32 neg_lo32[kVectors32];  // (-lo) mod 2^32: pads only need its low bits
    NarrowAll(len, len32);
    NarrowAll(neg_lo, neg_lo32);
    *max_len = static_cast<uint64_t>(MaxAll32(len32));
    if (*max_len == 0) {
      *below = *top = 0;
      return true;
    }
    const int k = std::bit_width(*max_len - 1);  // <= kNarrowBits
    // Both words in one reduction (order k - 1 read as 0 when k = 0).
    int32_t top32, below32;
    HorizontalMax32Pair(WordLanes32(len32, neg_lo32, k),
                        WordLanes32(len32, neg_lo32, k > 0 ? k - 1 : 0), &top32, &below32);
    *top = static_cast<uint32_t>(top32);
    *below = k > 0 ? static_cast<uint32_t>(below32) : 0;
    return true;
  }
  if ((any_len >> 32) != 0) return false;
  if (count == 0) {
    *max_len = 0;
    *below = *top = 0;
    return true;
  }
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) m = MaxLanes(m, len[v]);
  *max_len = static_cast<uint64_t>(HorizontalMax(m));
  const int k = std::bit_width(*max_len - 1);
  // Word(r, j) for j = k - 1 and k (every value < 2^32 here).
  *top = WordMax(len, neg_lo, k);
  *below = k > 0 ? WordMax(len, neg_lo, k - 1) : 0;
  return true;
}

[[gnu::always_inline]] inline Lanes32 LoadLanes32(const uint32_t* p) {  // bit copy
  Lanes32 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

using ULanes32 = uint32_t __attribute__((vector_size(32)));
[[gnu::always_inline]] inline ULanes SplatULanes(uint64_t x) { return ULanes{x, x, x, x}; }
[[gnu::always_inline]] inline ULanes32 SplatULanes32(uint32_t x) {
  return ULanes32{x, x, x, x, x, x, x, x};
}
[[gnu::always_inline]] inline ULanes32 LoadULanes32(const uint32_t* p) {
  ULanes32 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
[[gnu::always_inline]] inline ULanes MaxULanes(ULanes a, ULanes b) { return a > b ? a : b; }
[[gnu::always_inline]] inline ULanes32 MaxULanes32(ULanes32 a, ULanes32 b) { return a > b ? a : b; }
// HorizontalMax32Pair on unsigned lanes.
[[gnu::always_inline]] inline void HorizontalMaxU32Pair(ULanes32 a, ULanes32 b, uint32_t* max_a,
                                                        uint32_t* max_b) {
  ULanes32 v = MaxULanes32(__builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11),
                           __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15));
  v = MaxULanes32(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = MaxULanes32(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
  *max_a = v[0];
  *max_b = v[4];
}

// InternalSummary's body for any max_len (the entries' hi, empty past count,
// in h): the length tests on 4 x 64-bit unsigned lanes, the words on 8 x
// 32-bit unsigned lanes (words up to kRoomCap). For nodes above a range of
// 2^30 pages or more (the tail of a large space is one such range).
[[gnu::always_inline]] inline void InternalWideBody(const Lanes* h, const uint32_t* below,
                                                    const uint32_t* top, uint64_t* max_len,
                                                    uint32_t* below_out, uint32_t* top_out) {
  constexpr int kVectors = IovaGapTree::kFanout / kLanes;
  ULanes m = __builtin_bit_cast(ULanes, h[0]);
#pragma GCC unroll 4
  for (int v = 1; v < kVectors; ++v) m = MaxULanes(m, __builtin_bit_cast(ULanes, h[v]));
  m = MaxULanes(m, __builtin_shufflevector(m, m, 2, 3, 0, 1));
  m = MaxULanes(m, __builtin_shufflevector(m, m, 1, 0, 3, 2));
  *max_len = m[0];
  if (*max_len == 0) {
    *below_out = *top_out = 0;
    return;
  }
  // As InternalLanesBody, the thresholds in 64 bits.
  const int k = std::bit_width(*max_len - 1);
  const ULanes half = SplatULanes(k >= 1 ? uint64_t{1} << (k - 1) : 0);
  const ULanes quarter = SplatULanes(k >= 2 ? uint64_t{1} << (k - 2) : 0);
  ULanes32 t_max = ULanes32{};
  ULanes32 b_max = ULanes32{};
#pragma GCC unroll 2
  for (int v = 0; v < IovaGapTree::kFanout / 8; ++v) {
    const ULanes h0 = __builtin_bit_cast(ULanes, h[2 * v]);
    const ULanes h1 = __builtin_bit_cast(ULanes, h[2 * v + 1]);
    const ULanes32 at_k = __builtin_bit_cast(ULanes32, Narrow(h0 > half, h1 > half));
    const ULanes32 at_k1 = __builtin_bit_cast(ULanes32, Narrow(h0 > quarter, h1 > quarter));
    const ULanes32 t = LoadULanes32(top + 8 * v);
    const ULanes32 b = LoadULanes32(below + 8 * v);
    t_max = MaxULanes32(t_max, t & at_k);
    b_max = MaxULanes32(b_max, (b & at_k) | (t & at_k1 & ~at_k));
  }
  uint32_t top_word, below_word;
  HorizontalMaxU32Pair(t_max, b_max, &top_word, &below_word);
  *top_out = top_word;
  *below_out = k > 0 ? below_word : 0;
}

// InternalSummary's body for count <= kFanout entries: on 8 x 32-bit lanes
// when their max_len (hi) are all shorter than 2^kNarrowBits (so every word,
// too), else InternalWideBody. Always true (every max_len is handled).
[[gnu::always_inline]] inline bool InternalLanesBody(const uint64_t* hi, const uint32_t* below,
                                                     const uint32_t* top, int count,
                                                     uint64_t* max_len, uint32_t* below_out,
                                                     uint32_t* top_out) {
  constexpr int kVectors = IovaGapTree::kFanout / kLanes;
  Lanes h[kVectors];
  Lanes any = Lanes{};
  const Lanes cnt = SplatLanes(count);
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) {
    const Lanes index = LoadLanes(&kSlotIndex[kLanes * v]);
    h[v] = index < cnt ? LoadLanes(hi + kLanes * v) : Lanes{};  // unused: empty
    any |= h[v];
  }
  // Unsigned: a max_len of 2^63 or more reads negative but is caught here.
  if ((static_cast<uint64_t>(any[0] | any[1] | any[2] | any[3]) >> kNarrowBits) != 0) {
    InternalWideBody(h, below, top, max_len, below_out, top_out);
    return true;
  }
  Lanes32 h32[kVectors32];
  NarrowAll(h, h32);
  *max_len = static_cast<uint64_t>(MaxAll32(h32));
  if (*max_len == 0) {
    *below_out = *top_out = 0;
    return true;
  }
  // As InternalSummary: an entry reaches order k (its row[k] is its top,
  // row[k - 1] its below) iff hi > 2^(k-1), order k - 1 only (its top is
  // row[k - 1]) iff 2^(k-2) < hi <= 2^(k-1).
  const int k = std::bit_width(*max_len - 1);  // <= kNarrowBits
  const Lanes32 half = SplatLanes32(k >= 1 ? int32_t{1} << (k - 1) : 0);
  const Lanes32 quarter = SplatLanes32(k >= 2 ? int32_t{1} << (k - 2) : 0);
  Lanes32 t_max = Lanes32{};
  Lanes32 b_max = Lanes32{};
#pragma GCC unroll 2
  for (int v = 0; v < kVectors32; ++v) {
    const Lanes32 t = LoadLanes32(top + 8 * v);  // words < 2^kNarrowBits: signed is fine
    const Lanes32 b = LoadLanes32(below + 8 * v);
    const Lanes32 at_k = h32[v] > half;
    const Lanes32 at_k1 = h32[v] > quarter;
    t_max = MaxLanes32(t_max, t & at_k);
    b_max = MaxLanes32(b_max, (b & at_k) | (t & at_k1 & ~at_k));
  }
  int32_t top32, below32;
  HorizontalMax32Pair(t_max, b_max, &top32, &below32);
  *top_out = static_cast<uint32_t>(top32);
  *below_out = k > 0 ? static_cast<uint32_t>(below32) : 0;
  return true;
}

// --- search ------------------------------------------------------------------

// Slot s's bit, 1 << s, in its 64- and 32-bit lane.
constexpr std::array<int64_t, IovaGapTree::kFanout> kSlotBit64 = [] {
  std::array<int64_t, IovaGapTree::kFanout> a{};
  for (int i = 0; i < IovaGapTree::kFanout; ++i) a[i] = int64_t{1} << i;
  return a;
}();
constexpr std::array<int32_t, IovaGapTree::kFanout> kSlotBit32 = [] {
  std::array<int32_t, IovaGapTree::kFanout> a{};
  for (int i = 0; i < IovaGapTree::kFanout; ++i) a[i] = int32_t{1} << i;
  return a;
}();
[[gnu::always_inline]] inline uint32_t OrLanes(Lanes v) {
  return static_cast<uint32_t>(v[0] | v[1] | v[2] | v[3]);
}
[[gnu::always_inline]] inline uint32_t OrLanes32(Lanes32 v) {
  v |= __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
  v |= __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
  v |= __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
  return static_cast<uint32_t>(v[0]);
}

// A search's request as vectors, built once per search: the thresholds of
// LeafFitBits and InternalFitBits.
struct LaneQuery {
  ULanes num_pages;
  ULanes back;  // num_pages - 1
  ULanes keep;  // ~(align - 1)
  ULanes one;   // 2^order
  ULanes two;   // 2^(order+1), saturated
  ULanes32 need;
};

// Bit s set iff leaf range s holds num_pages aligned to `align` ending at or
// below `limit`: the scalar test, exact in 64 bits (wrapping where the scalar
// code wraps), on every slot; the caller masks off the slots it may not take
// (those past count hold kNoKey and stale hi).
[[gnu::always_inline]] inline uint32_t LeafFitBits(const uint64_t* lo, const uint64_t* hi,
                                                   const LaneQuery& q, const ULanes& lim) {
  Lanes bits = Lanes{};
#pragma GCC unroll 4
  for (int v = 0; v < IovaGapTree::kFanout / kLanes; ++v) {
    const ULanes l = LoadULanes(lo + kLanes * v);
    ULanes h = LoadULanes(hi + kLanes * v);
    h = h < lim ? h : lim;
    const ULanes len = h - l + 1;
    const ULanes pfn = (h - q.back) & q.keep;  // AlignDown(h - num_pages + 1, align)
    const Lanes fits = (len >= q.num_pages) & (pfn >= l);
    bits |= fits & LoadLanes(&kSlotBit64[kLanes * v]);
  }
  return OrLanes(bits);
}

// Bit s set iff internal entry s's row word at the search's order is >= need
// and its max_len >= num_pages (SearchScalar's test): with max_len (hi) past
// `two` the word is capped (a fit), past `one` it is `below`, at or past
// num_pages (so past 2^(order-1)) it is `top`, else 0 (hi < num_pages). The
// band (how many of these thresholds hi passes, nested) is counted in 64-bit
// lanes and narrowed once. Unused slots as in LeafFitBits.
[[gnu::always_inline]] inline uint32_t InternalFitBits(const uint64_t* hi, const uint32_t* below,
                                                       const uint32_t* top, const LaneQuery& q) {
  constexpr int kVectors = IovaGapTree::kFanout / kLanes;
  Lanes band[kVectors];  // 0, -1, -2 or -3
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) {
    const ULanes h = LoadULanes(hi + kLanes * v);
    band[v] = (h > q.back) + (h > q.one) + (h > q.two);
  }
  Lanes32 bits = Lanes32{};
#pragma GCC unroll 2
  for (int v = 0; v < IovaGapTree::kFanout / 8; ++v) {
    const Lanes32 b32 = Narrow(band[2 * v], band[2 * v + 1]);
    const Lanes32 capped = b32 == SplatLanes32(-3);
    const Lanes32 at_one = b32 == SplatLanes32(-2);
    const Lanes32 at_n = b32 == SplatLanes32(-1);
    const Lanes32 below_ok = LoadULanes32(below + 8 * v) >= q.need;
    const Lanes32 top_ok = LoadULanes32(top + 8 * v) >= q.need;
    const Lanes32 fits = capped | (at_one & below_ok) | (at_n & top_ok);
    bits |= fits & LoadLanes32(reinterpret_cast<const uint32_t*>(&kSlotBit32[8 * v]));
  }
  return OrLanes32(bits);
}

}  // namespace

// SearchScalar's walk with each node's entry loop replaced by one mask of the
// entries that fit, cut to the slots at or below s, of which the highest is
// taken: no branch per entry.
IovaGapTree::Fit IovaGapTree::SearchLanesBody(uint32_t start, uint64_t num_pages, int order,
                                              uint64_t limit_pfn) const {
  const uint64_t align = uint64_t{1} << order;
  const uint32_t need = num_pages < kRoomCap ? static_cast<uint32_t>(num_pages) : kRoomCap;
  const LaneQuery q{SplatULanes(num_pages),
                    SplatULanes(num_pages - 1),
                    SplatULanes(~(align - 1)),
                    SplatULanes(align),
                    SplatULanes(order < 63 ? align << 1 : ~uint64_t{0}),
                    SplatULanes32(need)};
  Walk w(*this, start, limit_pfn);
  for (;;) {
    const Node* n = w.n;
    const uint32_t upto = (uint32_t{1} << (w.s + 1)) - 1;  // slots 0..s, s >= -1
    if (n->leaf) {
      const uint32_t bits = LeafFitBits(n->lo, n->hi, q, SplatULanes(w.limit)) & upto;
      if (bits != 0) {
        const int f = 31 - std::countl_zero(bits);
        return Fit{w.x * kFanout + f,
                   AlignDown(std::min(n->hi[f], w.limit) - num_pages + 1, align)};
      }
    } else {
      const uint32_t bits = InternalFitBits(n->hi, n->below, n->top, q) & upto;
      if (bits != 0) {
        w.Descend(31 - std::countl_zero(bits));
        continue;
      }
    }
    if (!w.Resume()) return Fit{};
  }
}

IovaGapTree::Fit IovaGapTree::SearchLanes(const IovaGapTree& t, uint32_t start, uint64_t num_pages,
                                          int order, uint64_t limit_pfn) {
  return t.SearchLanesBody(start, num_pages, order, limit_pfn);
}

IovaGapTree::Summary IovaGapTree::InternalSummaryLanes(const Node& n) {
  Summary sum;
  if (!InternalLanesBody(n.hi, n.below, n.top, n.count, &sum.max_len, &sum.below, &sum.top)) {
    return InternalSummary(n);
  }
  return sum;
}

IovaGapTree::Summary IovaGapTree::LeafSummaryLanes(const Node& n) {
  Summary sum;
  if (!LeafLanesBody(n.lo, n.hi, n.count, &sum.max_len, &sum.below, &sum.top)) {
    return LeafSummaryScalar(n);
  }
  return sum;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) IovaGapTree::Summary IovaGapTree::LeafSummaryLanesAvx2(
    const Node& n) {
  Summary sum;
  if (!LeafLanesBody(n.lo, n.hi, n.count, &sum.max_len, &sum.below, &sum.top)) {
    return LeafSummaryScalar(n);
  }
  return sum;
}

__attribute__((target("avx2"))) IovaGapTree::Summary IovaGapTree::InternalSummaryLanesAvx2(
    const Node& n) {
  Summary sum;
  if (!InternalLanesBody(n.hi, n.below, n.top, n.count, &sum.max_len, &sum.below, &sum.top)) {
    return InternalSummary(n);
  }
  return sum;
}

__attribute__((target("avx2"))) IovaGapTree::Fit IovaGapTree::SearchLanesAvx2(
    const IovaGapTree& t, uint32_t start, uint64_t num_pages, int order, uint64_t limit_pfn) {
  return t.SearchLanesBody(start, num_pages, order, limit_pfn);
}

bool IovaGapTree::HasAvx2() { return __builtin_cpu_supports("avx2"); }

IovaGapTree::SearchFn IovaGapTree::PickSearch() {
  return HasAvx2() ? &SearchLanesAvx2 : &SearchLanes;
}

IovaGapTree::LeafSummaryFn IovaGapTree::PickLeafSummary() {
  return __builtin_cpu_supports("avx2") ? &LeafSummaryLanesAvx2 : &LeafSummaryLanes;
}

IovaGapTree::LeafSummaryFn IovaGapTree::PickInternalSummary() {
  return __builtin_cpu_supports("avx2") ? &InternalSummaryLanesAvx2 : &InternalSummaryLanes;
}
#else
IovaGapTree::Summary IovaGapTree::LeafSummaryLanesAvx2(const Node& n) {
  return LeafSummaryLanes(n);
}

IovaGapTree::Summary IovaGapTree::InternalSummaryLanesAvx2(const Node& n) {
  return InternalSummaryLanes(n);
}

IovaGapTree::Fit IovaGapTree::SearchLanesAvx2(const IovaGapTree& t, uint32_t start,
                                              uint64_t num_pages, int order, uint64_t limit_pfn) {
  return SearchLanes(t, start, num_pages, order, limit_pfn);
}

bool IovaGapTree::HasAvx2() { return false; }

IovaGapTree::SearchFn IovaGapTree::PickSearch() { return &SearchLanes; }

IovaGapTree::LeafSummaryFn IovaGapTree::PickLeafSummary() { return &LeafSummaryLanes; }

IovaGapTree::LeafSummaryFn IovaGapTree::PickInternalSummary() { return &InternalSummaryLanes; }
#endif

}  // namespace iommu::core::internal
