// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOVA_IOVA_ALLOC_MAP_H_
#define IOMMU_CORE_IOVA_IOVA_ALLOC_MAP_H_

// IovaAllocMap: where the IovaAllocator's live allocations of up to 4096 pages
// start and end, two bits per pfn, found without hashing.
//
// Scope. Allocations with RoundUpPowerOfTwo(num_pages) <= 4096 (kMaxPages),
// size-aligned in absolute pfn terms. One of up to 64 pages (kGroupPages)
// lies inside one aligned group of 64 pfns: the allocator's inline cache
// paths handle those with one group (the Bits forms). A larger one starts a
// group and runs on through up to 63 more of the same chunk (a chunk's 2^15
// pfns are a multiple of its alignment). The allocator keeps larger ones in
// a hash map.
//
// Layout.
//   group  {start_bits, end_bits}: 16 bytes per 64 pfns (aligned, absolute
//          pfn >> 6). An allocation [p, p + n - 1] sets bit p % 64 of
//          start_bits in p's group and bit (p + n - 1) % 64 of end_bits in
//          the last page's group.
//   chunk  512 groups = 2^15 pfns (aligned, absolute) = 8 KiB, allocated
//          zeroed on first write and never freed before the map is destroyed.
//   directory  a radix tree of pointers to the chunks spanning
//          [start_pfn, end_pfn]: a top level of up to 2^12 pointers sized to
//          the span, and below it levels of 2^9 pointers (4 KiB, allocated
//          zeroed on first use). Its depth is fixed at construction: one
//          level up to 2^27 pfns (a 32-bit space of 4K pages is 32 top
//          pointers), two up to 2^36, three up to 2^45, four up to 2^54. A
//          lookup is a bounds check and depth + 1 dependent loads; the top
//          levels stay in L1. A one-level map (the common case) is looked up
//          without the level loop: one compare serves as bounds check and
//          depth test, then the top pointer and the group; its unwritten
//          chunk pointers point at one shared, never-written all-zero chunk,
//          so that lookup has no null test either (an empty group holds
//          nothing, which is what the caller checks anyway).
//   Memory is proportional to the IOVA span ever written (16 bytes per 64
//   pfns, in 8 KiB chunks, plus 4 KiB per lower directory node), not to the
//   number of allocations; sparse small allocations far apart cost a chunk
//   (and up to depth - 1 directory nodes) each. Nothing is freed before the
//   map is destroyed. The written chunks are also kept in a list sorted by
//   address, so walks cost O(chunks written), never the directory.
//
// Why two bits suffice (given disjoint allocations, which the allocator
// guarantees): let A = [p, p + m - 1] be the allocation whose start bit is at
// p. No end bit lies in [p, p + m - 2]: an end bit at q marks an allocation
// [s, q] with s <= q; if p <= q < p + m - 1 then [s, q] and A share q, so
// they are the same allocation and q = p + m - 1, a contradiction. Hence the
// lowest end bit at or above p is exactly A's last pfn: for a one-group
// allocation the size is countr_zero(end_bits >> (p % 64)) + 1 with no scan,
// and "an allocation of exactly n <= 64 pages starts at p" is "start bit at
// p and the lowest end bit at or above p is at p + n - 1", one 16-byte load
// and a few bit operations (no check for a start bit inside (p, p + n) is
// needed). A larger allocation's size takes a scan of the end words of the
// groups after its first, up to 63 (one or two cache lines per 512 pages).
//
// Invariants (CheckStructure verifies them): in each chunk, start and end
// bits pair up in pfn order: after each start bit the next bit set (start or
// end, the end at the same pfn for one page) is an end bit, at most
// kMaxPages - 1 pfns above it, and no end bit comes without a start.
//
// Thread-compatible; owned and serialised by its IovaAllocator.

#include <bit>
#include <cassert>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/iova/slab_memory.h"

namespace iommu::core::internal {

class IovaAllocMap {
 public:
  static constexpr uint64_t kMaxPages = 4096;  // largest allocation it records
  static constexpr uint64_t kGroupPages = 64;  // largest within one group
  static constexpr int kGroupShift = 6;        // 64 pfns per group
  static constexpr int kChunkShift = 9;        // 512 groups per chunk
  static constexpr int kTopShift = 12;         // up to 4096 pointers in the top level
  static constexpr int kLevelShift = 9;        // 512 pointers per lower directory level
  static constexpr int kChunkPfnShift = kGroupShift + kChunkShift;  // 2^15 pfns per chunk
  static constexpr uint64_t kChunkMask = (uint64_t{1} << kChunkShift) - 1;
  static constexpr uint64_t kLevelMask = (uint64_t{1} << kLevelShift) - 1;

  struct Group {
    uint64_t start_bits = 0;
    uint64_t end_bits = 0;
  };

  IovaAllocMap() = default;
  // The map for pfns [start_pfn, end_pfn]. REQUIRES start_pfn <= end_pfn.
  IovaAllocMap(uint64_t start_pfn, uint64_t end_pfn);

  IovaAllocMap(IovaAllocMap&&) = default;
  IovaAllocMap& operator=(IovaAllocMap&&) = default;

  // The group holding pfn. When pfn is outside the span's chunks or its
  // chunk was never written, a group of the shared all-zero chunk
  // (Unwritten() is true of it): nothing starts or ends in it, so Holds and
  // PagesAt fail on it as on any group holding nothing, and a caller needs
  // no null test. It is never written: only a group that holds an
  // allocation is cleared, and Set goes through FindOrCreate or Existing.
  Group* Find(uint64_t pfn) {
    const uint64_t c = (pfn >> kChunkPfnShift) - base_chunk_;
    if (c < flat_chunks_) [[likely]] {
      // One level: the bounds check above was the depth check too, and an
      // unwritten chunk's pointer is the zero chunk.
      return static_cast<Group*>(top_[c]) + ((pfn >> kGroupShift) & kChunkMask);
    }
    return FindDeep(c, pfn);
  }
  // Whether g (from Find) is in the shared all-zero chunk.
  static bool Unwritten(const Group* g) {
    return g >= zero_chunk_ && g < zero_chunk_ + (uint64_t{1} << kChunkShift);
  }
  const Group* Find(uint64_t pfn) const { return const_cast<IovaAllocMap*>(this)->Find(pfn); }
  // Find without the checks. REQUIRES: pfn's chunk was written (something
  // was recorded in it once: chunks are never freed).
  Group& Existing(uint64_t pfn) {
    const uint64_t c = (pfn >> kChunkPfnShift) - base_chunk_;
    assert(c < num_chunks_);
    void* const next = c < flat_chunks_ ? top_[c] : Descend(c);
    assert(next != nullptr && next != zero_chunk_);
    return static_cast<Group*>(next)[(pfn >> kGroupShift) & kChunkMask];
  }

  // The two bits of [pfn, pfn + num_pages - 1] in its group: the start bit,
  // and the end bit, which is 0 when the range runs past the group.
  // REQUIRES 1 <= num_pages <= 64.
  struct Bits {
    uint64_t start;
    uint64_t end;
  };
  static Bits BitsOf(uint64_t pfn, uint64_t num_pages) { return BitsAt(pfn, num_pages - 1); }
  // The same for [pfn, pfn + last]. REQUIRES last <= 63.
  static Bits BitsAt(uint64_t pfn, uint64_t last) {
    const uint64_t start = uint64_t{1} << (pfn & 63);
    return {start, start << last};
  }
  // Whether an allocation of exactly those bits' pages starts at their pfn:
  // the start bit is set and, of the end bits from the start bit up to the
  // end bit, only the end bit is (see "Why two bits suffice"). With b.end ==
  // 0 the mask is every bit from the start up, and a recorded allocation
  // starting there has its end bit among them: false, as it must be.
  static bool Holds(const Group& g, Bits b) {
    return (g.start_bits & b.start) != 0 && (g.end_bits & ((b.end << 1) - b.start)) == b.end;
  }
  static bool StartsExactly(const Group& g, uint64_t pfn, uint64_t num_pages) {
    return Holds(g, BitsOf(pfn, num_pages));
  }
  // Pages of the allocation starting at pfn, 0 if none. g is pfn's group (as
  // Find or Existing returned it: a chunk's groups follow it in memory, and
  // an allocation past g's group has its end in one of them).
  static uint64_t PagesAt(const Group& g, uint64_t pfn) {
    const unsigned o = pfn & 63;
    if (((g.start_bits >> o) & 1) == 0) return 0;
    const uint64_t ends = g.end_bits >> o;
    if (ends != 0) [[likely]]
      return static_cast<uint64_t>(std::countr_zero(ends)) + 1;
    return SpanPagesAt(&g, pfn);
  }
  // Records / erases a range of one group. REQUIRES: b = BitsOf(pfn,
  // num_pages) of a size-aligned range of <= 64 pages in g's group; Set:
  // disjoint from every recorded allocation; Clear: it is recorded.
  static void Set(Group& g, Bits b) {
    // The end bit is clear (REQUIRES): adding it sets it. Two different
    // operations on purpose, as in Clear.
    g.start_bits |= b.start;
    g.end_bits += b.end;
  }
  static void Clear(Group& g, Bits b) {
    // The bits are set (REQUIRES): flipping or subtracting them clears them.
    // Two different operations on purpose: GCC would otherwise pair the two
    // words into an SSE register and back (six instructions for two, and a
    // 16-byte load of a group just written by two 8-byte stores waits for
    // them instead of taking their data).
    g.start_bits ^= b.start;
    g.end_bits -= b.end;
  }
  // The same for a size-aligned range of up to kMaxPages pages starting at
  // pfn, g being pfn's group (as for PagesAt): its end bit may lie in a later
  // group of the chunk.
  static void Set(Group& g, uint64_t pfn, uint64_t num_pages) {
    const uint64_t last = (pfn & 63) + num_pages - 1;
    assert(num_pages >= 1 && num_pages <= kMaxPages);
    assert(((pfn >> kGroupShift) & kChunkMask) + (last >> kGroupShift) <= kChunkMask);
    g.start_bits |= uint64_t{1} << (pfn & 63);
    (&g)[last >> kGroupShift].end_bits |= uint64_t{1} << (last & 63);
  }
  static void Clear(Group& g, uint64_t pfn, uint64_t num_pages) {
    const uint64_t last = (pfn & 63) + num_pages - 1;
    assert(num_pages >= 1 && num_pages <= kMaxPages);
    g.start_bits ^= uint64_t{1} << (pfn & 63);
    (&g)[last >> kGroupShift].end_bits -= uint64_t{1} << (last & 63);
  }

  // The group holding pfn, allocating its chunk (and directory nodes) on
  // first use. REQUIRES pfn in [start_pfn, end_pfn].
  Group& FindOrCreate(uint64_t pfn);
  void Insert(uint64_t pfn, uint64_t num_pages) { Set(FindOrCreate(pfn), pfn, num_pages); }

  // fn(pfn, num_pages) for each recorded allocation, ascending.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    ForEachChunk([&](uint64_t first_group, const Group* chunk) {
      for (uint64_t i = 0; i < (uint64_t{1} << kChunkShift); ++i) {
        const Group& g = chunk[i];
        const uint64_t base = (first_group + i) << kGroupShift;
        for (uint64_t s = g.start_bits; s != 0; s &= s - 1) {
          const uint64_t pfn = base + static_cast<uint64_t>(std::countr_zero(s));
          fn(pfn, PagesAt(g, pfn));
        }
      }
    });
  }

  // INTERNAL naming the first pfn whose bits do not pair up (see
  // Invariants). O(chunks written).
  absl::Status CheckStructure() const;

  // Chunks written so far and the bytes the map holds (chunk blocks, used or
  // not yet, and the directory).
  uint64_t chunk_count() const { return chunks_.size(); }
  uint64_t memory_bytes() const;
  int depth() const { return top_shift_ / kLevelShift + 1; }

 private:
  // PagesAt for an allocation that runs past its first group g: the first
  // end bit in the groups after g, up to the chunk's last; 0 if there is none
  // (a broken map: CheckStructure names it).
  static uint64_t SpanPagesAt(const Group* g, uint64_t pfn);
  // A zeroed chunk from the current block (a new block when it is used up).
  Group* NewChunk();
  // Find on a map of more than one level (or pfn outside the span).
  Group* FindDeep(uint64_t c, uint64_t pfn) {
    if (c >= num_chunks_) return zero_chunk_;
    void* next = top_[c >> top_shift_];
    for (int shift = top_shift_ - kLevelShift; shift >= 0; shift -= kLevelShift) {
      if (next == nullptr) return zero_chunk_;
      next = static_cast<void* const*>(next)[(c >> shift) & kLevelMask];
    }
    if (next == nullptr) return zero_chunk_;
    return static_cast<Group*>(next) + ((pfn >> kGroupShift) & kChunkMask);
  }
  // The chunk of chunk index c through every level, each on the way
  // written.
  void* Descend(uint64_t c) const {
    void* next = top_[c >> top_shift_];
    for (int shift = top_shift_ - kLevelShift; shift >= 0; shift -= kLevelShift) {
      next = static_cast<void* const*>(next)[(c >> shift) & kLevelMask];
    }
    return next;
  }

  // fn(first absolute group, chunk) for each written chunk, ascending.
  template <typename Fn>
  void ForEachChunk(Fn&& fn) const {
    for (const auto& [index, chunk] : chunks_) {
      fn((base_chunk_ + index) << kChunkShift, static_cast<const Group*>(chunk));
    }
  }

  // Chunks are aligned to 2^15 absolute pfns; chunk index c covers absolute
  // chunk base_chunk_ + c.
  uint64_t base_chunk_ = 0;  // start_pfn >> kChunkPfnShift
  uint64_t num_chunks_ = 0;  // chunks spanning [start_pfn, end_pfn]
  // num_chunks_ when the directory has one level (top_shift_ == 0), else 0:
  // c < flat_chunks_ is the bounds check and the depth test of a lookup in
  // one compare.
  uint64_t flat_chunks_ = 0;
  // Chunk index c goes to top_[c >> top_shift_], then one lower level per
  // kLevelShift bits of top_shift_. Absent lower levels and chunks are
  // nullptr, except the chunk pointers of a one-level top_, which point at
  // zero_chunk_ until written (so Find needs no null test there).
  int top_shift_ = 0;
  std::vector<void*> top_;
  // The chunks with their chunk index, sorted by it; they live in blocks_.
  std::vector<std::pair<uint64_t, Group*>> chunks_;
  // Owners of the chunks' memory and of the lower directory levels; the
  // pointers above point into them (heap blocks, stable across moves). Chunk
  // blocks double from one chunk up to 2 MiB, so a large map's chunks sit on
  // huge pages (slab_memory.h) and a small one's cost what they hold.
  std::vector<SlabArray<Group>> blocks_;
  Group* block_next_ = nullptr;  // the next unused chunk of blocks_.back()
  uint64_t block_left_ = 0;      // unused chunks there
  uint64_t block_bytes_ = 0;     // the blocks' bytes
  std::vector<std::unique_ptr<void*[]>> levels_;

  // The chunk every unwritten chunk reads as: all zero, shared by every map,
  // never written.
  static Group zero_chunk_[uint64_t{1} << kChunkShift];
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_IOVA_ALLOC_MAP_H_
