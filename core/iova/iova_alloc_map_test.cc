// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_alloc_map.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/base/xorshift.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

using Group = IovaAllocMap::Group;

using TestRng = Xorshift64;

std::vector<std::pair<uint64_t, uint64_t>> Contents(const IovaAllocMap& m) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  m.ForEach([&](uint64_t pfn, uint64_t pages) { out.emplace_back(pfn, pages); });
  return out;
}

TEST(IovaAllocMap, DepthFollowsTheSpan) {
  // 2^20 pfns: 32 chunks, one level.
  EXPECT_EQ(IovaAllocMap(1, (uint64_t{1} << 20) - 1).depth(), 1);
  EXPECT_EQ(IovaAllocMap(1, (uint64_t{1} << 27) - 1).depth(), 1);
  EXPECT_EQ(IovaAllocMap(1, uint64_t{1} << 27).depth(), 2);
  EXPECT_EQ(IovaAllocMap(1, (uint64_t{1} << 36) - 1).depth(), 2);
  EXPECT_EQ(IovaAllocMap(1, uint64_t{1} << 36).depth(), 3);
  EXPECT_EQ(IovaAllocMap(1, (uint64_t{1} << 45) - 1).depth(), 3);
  EXPECT_EQ(IovaAllocMap(1, uint64_t{1} << 45).depth(), 4);
  EXPECT_EQ(IovaAllocMap(1, (uint64_t{1} << 52) - 1).depth(), 4);
  // A span not starting at 0 counts from its own first group.
  EXPECT_EQ(IovaAllocMap(uint64_t{1} << 40, (uint64_t{1} << 40) + (uint64_t{1} << 20)).depth(), 1);
}

TEST(IovaAllocMap, UnwrittenAndOutsidePfnsHaveNoGroup) {
  IovaAllocMap m(100, (uint64_t{1} << 36) - 1);
  EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(100)));
  EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(5)));  // below start_pfn, in an unwritten chunk
  EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(uint64_t{1} << 36)));
  EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(~uint64_t{0})));
  EXPECT_EQ(m.chunk_count(), 0u);
  m.Insert(128, 4);
  ASSERT_FALSE(IovaAllocMap::Unwritten(m.Find(128)));
  EXPECT_EQ(m.Find(128), m.Find(191));  // same group
  EXPECT_NE(m.Find(128), m.Find(192));  // next group, same chunk
  // The next chunk was never written.
  EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find((uint64_t{1} << 15) + 200)));
  EXPECT_EQ(m.chunk_count(), 1u);
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(128), 128), 4u);
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(129), 129), 0u);  // interior pfn
  EXPECT_TRUE(m.CheckStructure().ok());
}

TEST(IovaAllocMap, ExactSizeNeedsStartAndTheFirstEndAbove) {
  Group g;
  // [0, 3] of 4 pages, [4, 5] and [6, 7] of 2, [8] of 1, [32, 63] of 32.
  IovaAllocMap::Set(g, 0, 4);
  IovaAllocMap::Set(g, 4, 2);
  IovaAllocMap::Set(g, 6, 2);
  IovaAllocMap::Set(g, 8, 1);
  IovaAllocMap::Set(g, 32, 32);
  EXPECT_TRUE(IovaAllocMap::StartsExactly(g, 0, 4));
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 0, 2));  // 2 at a pfn holding 4
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 0, 8));
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 4, 4));  // 4 at two adjacent 2s
  EXPECT_TRUE(IovaAllocMap::StartsExactly(g, 4, 2));
  EXPECT_TRUE(IovaAllocMap::StartsExactly(g, 6, 2));
  EXPECT_TRUE(IovaAllocMap::StartsExactly(g, 8, 1));
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 8, 2));
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 1, 3));  // interior start
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 7, 1));  // an end, not a start
  EXPECT_TRUE(IovaAllocMap::StartsExactly(g, 32, 32));
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 32, 64));  // runs past the group
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 32, 16));
  EXPECT_EQ(IovaAllocMap::PagesAt(g, 0), 4u);
  EXPECT_EQ(IovaAllocMap::PagesAt(g, 4), 2u);
  EXPECT_EQ(IovaAllocMap::PagesAt(g, 8), 1u);
  EXPECT_EQ(IovaAllocMap::PagesAt(g, 32), 32u);
  EXPECT_EQ(IovaAllocMap::PagesAt(g, 9), 0u);
  IovaAllocMap::Clear(g, 4, 2);
  EXPECT_FALSE(IovaAllocMap::StartsExactly(g, 4, 2));
  EXPECT_TRUE(IovaAllocMap::StartsExactly(g, 6, 2));
  Group full;
  IovaAllocMap::Set(full, 64, 64);
  EXPECT_TRUE(IovaAllocMap::StartsExactly(full, 64, 64));
  EXPECT_EQ(IovaAllocMap::PagesAt(full, 128), 64u);  // offsets only
}

// Find and Existing on one-level maps (the flat lookup: one compare for the
// bounds and the depth) and deeper ones (the level walk), at the first and
// last chunk of the span, just outside it and far outside.
TEST(IovaAllocMap, FindAndExistingAgreeAtEveryDepth) {
  struct Span {
    uint64_t start;
    uint64_t end;
    int depth;
  };
  const Span spans[] = {
      {1, (uint64_t{1} << 20) - 1, 1},
      {1, (uint64_t{1} << 27) - 1, 1},  // the largest one-level span
      {uint64_t{1} << 40, (uint64_t{1} << 40) + (uint64_t{1} << 20) + 5, 1},  // base chunk
      {1, uint64_t{1} << 27, 2},
      {100, (uint64_t{1} << 36) - 1, 2},
      {(uint64_t{1} << 41) + 7, (uint64_t{1} << 41) + (uint64_t{1} << 40), 3},
  };
  constexpr uint64_t kChunkPfns = uint64_t{1} << IovaAllocMap::kChunkPfnShift;
  for (const Span& span : spans) {
    SCOPED_TRACE(testing::Message() << std::hex << span.start << ".." << span.end);
    IovaAllocMap m(span.start, span.end);
    ASSERT_EQ(m.depth(), span.depth);
    const uint64_t first_chunk_pfn = span.start & ~(kChunkPfns - 1);
    const uint64_t last_chunk_pfn = span.end & ~(kChunkPfns - 1);
    // Nothing written: no group anywhere, inside or out.
    for (uint64_t p : {span.start, span.end, first_chunk_pfn, last_chunk_pfn + kChunkPfns,
                       first_chunk_pfn - 1, ~uint64_t{0}, uint64_t{0}}) {
      const Group* g = m.Find(p);
      EXPECT_TRUE(IovaAllocMap::Unwritten(g)) << std::hex << p;
      EXPECT_EQ(g->start_bits | g->end_bits, 0u) << std::hex << p;
      EXPECT_EQ(IovaAllocMap::PagesAt(*g, p), 0u) << std::hex << p;
      EXPECT_FALSE(IovaAllocMap::StartsExactly(*g, p, 1)) << std::hex << p;
    }
    // Allocations of 1 and 64 pages at the span's ends and in its middle.
    const uint64_t last64 = (span.end + 1) / 64 * 64 - 64;
    const uint64_t first64 = (span.start + 63) / 64 * 64;
    const uint64_t mid = (span.start / 2 + span.end / 2) & ~uint64_t{63};
    const std::pair<uint64_t, uint64_t> allocs[] = {
        {span.start, 1}, {span.end, 1}, {first64 + 64, 64}, {last64 - 64, 64}, {mid, 64}};
    for (const auto& [pfn, pages] : allocs) m.Insert(pfn, pages);
    for (const auto& [pfn, pages] : allocs) {
      Group* g = m.Find(pfn);
      ASSERT_FALSE(IovaAllocMap::Unwritten(g)) << std::hex << pfn;
      EXPECT_EQ(g, &m.Existing(pfn));
      EXPECT_EQ(g, &m.Existing(pfn + pages - 1));  // same group
      EXPECT_EQ(IovaAllocMap::PagesAt(*g, pfn), pages);
      EXPECT_TRUE(IovaAllocMap::StartsExactly(*g, pfn, pages));
    }
    // Out of the span's chunks: still nothing; a chunk next to a written
    // one inside the span: nothing.
    EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(first_chunk_pfn - 1)));
    EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(last_chunk_pfn + kChunkPfns)));
    EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(~uint64_t{0})));
    if (mid + 2 * kChunkPfns < last_chunk_pfn) {
      EXPECT_TRUE(IovaAllocMap::Unwritten(m.Find(mid + 2 * kChunkPfns)));
    }
    // Existing reaches a group written through Find's pointer.
    for (const auto& [pfn, pages] : allocs) {
      IovaAllocMap::Clear(*m.Find(pfn), pfn, pages);
      EXPECT_EQ(IovaAllocMap::PagesAt(m.Existing(pfn), pfn), 0u);
    }
    EXPECT_TRUE(Contents(m).empty());
    EXPECT_TRUE(m.CheckStructure().ok());
  }
}

TEST(IovaAllocMap, CheckStructureFindsUnpairedBits) {
  IovaAllocMap m(1, 1 << 20);
  m.Insert(64, 2);
  ASSERT_TRUE(m.CheckStructure().ok());
  Group& g = m.FindOrCreate(64);
  g.end_bits |= uint64_t{1} << 10;  // an end with no start
  EXPECT_FALSE(m.CheckStructure().ok());
  g.end_bits &= ~(uint64_t{1} << 10);
  g.start_bits |= uint64_t{1} << 1;  // a start inside [64, 65]
  g.end_bits |= uint64_t{1} << 20;   // (counts equal)
  EXPECT_FALSE(m.CheckStructure().ok());
  g.start_bits &= ~(uint64_t{1} << 1);
  g.end_bits &= ~(uint64_t{1} << 20);
  g.start_bits |= uint64_t{1} << 30;  // a start with no end above it
  g.end_bits |= uint64_t{1} << 29;
  EXPECT_FALSE(m.CheckStructure().ok());
}

// Random size-aligned disjoint allocations of 1..4096 pages over chunk and
// directory boundaries of a 2^36-pfn space, against a std::map.
TEST(IovaAllocMap, RandomAgainstReferenceAcrossChunksAndLevels) {
  const uint64_t start = 3;
  const uint64_t end = (uint64_t{1} << 36) - 1;
  IovaAllocMap m(start, end);
  ASSERT_EQ(m.depth(), 2);
  std::map<uint64_t, uint64_t> ref;  // pfn -> pages
  TestRng rng;
  // Hot spots: near start, near the end, around chunk (2^15 pfns) and
  // lower-directory-node (2^24 pfns) boundaries.
  const uint64_t spots[] = {64, (uint64_t{1} << 15) - 64, (uint64_t{1} << 27) - 128,
                            (uint64_t{1} << 36) - 256,
                            (uint64_t{1} << 30) + (uint64_t{1} << 15) - 64};
  auto overlaps = [&](uint64_t lo, uint64_t hi) {
    auto it = ref.upper_bound(hi);
    if (it == ref.begin()) return false;
    --it;
    return it->first + it->second - 1 >= lo;
  };
  for (int step = 0; step < 20000; ++step) {
    // One in eight runs over several groups (65..4096 pages).
    const bool span = rng.Below(8) == 0;
    const uint64_t pages = span ? rng.Below(IovaAllocMap::kMaxPages - 64) + 65 : rng.Below(64) + 1;
    const uint64_t align = std::bit_ceil(pages);
    const uint64_t spot = spots[rng.Below(std::size(spots))];
    const uint64_t pfn = (spot + rng.Below(span ? 8192 : 512)) & ~(align - 1);
    if (pfn < start || pfn + pages - 1 > end) continue;
    if (rng.Below(3) != 0) {
      if (overlaps(pfn, pfn + pages - 1)) {
        continue;
      }
      m.Insert(pfn, pages);
      ref[pfn] = pages;
    } else if (auto it = ref.lower_bound(pfn); it != ref.end()) {
      Group* g = m.Find(it->first);
      ASSERT_FALSE(IovaAllocMap::Unwritten(g));
      ASSERT_EQ(IovaAllocMap::PagesAt(*g, it->first), it->second) << it->first;
      if (it->second <= IovaAllocMap::kGroupPages) {
        ASSERT_TRUE(IovaAllocMap::StartsExactly(*g, it->first, it->second));
      }
      IovaAllocMap::Clear(*g, it->first, it->second);
      ref.erase(it);
    }
    // Probe a few pfns: PagesAt and StartsExactly agree with the reference.
    for (int k = 0; k < 4; ++k) {
      const uint64_t p = spots[rng.Below(std::size(spots))] + rng.Below(512);
      const Group* g = m.Find(p);
      const auto it = ref.find(p);
      const uint64_t want = it == ref.end() ? 0 : it->second;
      ASSERT_EQ(IovaAllocMap::PagesAt(*g, p), want) << p;
      for (uint64_t n = 1; n <= 64; n *= 2) {
        ASSERT_EQ(IovaAllocMap::StartsExactly(*g, p, n), want == n) << p;
      }
    }
  }
  ASSERT_TRUE(m.CheckStructure().ok()) << m.CheckStructure();
  const std::vector<std::pair<uint64_t, uint64_t>> want(ref.begin(), ref.end());
  EXPECT_EQ(Contents(m), want);
  EXPECT_GE(m.chunk_count(), 5u);
  // The top level (2^12 pointers), at least one lower level, the chunks.
  EXPECT_GE(m.memory_bytes(), 4096 * sizeof(void*) + 512 * sizeof(void*) + m.chunk_count() * 8192);
}

// Allocations of 65..4096 pages start one group and end in a later one of
// the same chunk: PagesAt finds the end past empty groups, the one-group
// exact-size check refuses them, and CheckStructure sees spans broken each
// way.
TEST(IovaAllocMap, SpansOverGroupsPairAcrossThem) {
  IovaAllocMap m(1, (uint64_t{1} << 20) - 1);
  const uint64_t chunk = uint64_t{1} << 15;
  m.Insert(chunk, 65);             // [0x8000, 0x8040]: ends one group on
  m.Insert(chunk + 4096, 4096);    // the longest: ends 63 groups on
  m.Insert(2 * chunk - 256, 256);  // ends at the chunk's last pfn
  m.Insert(chunk + 128, 1);        // a one-page allocation between
  ASSERT_TRUE(m.CheckStructure().ok()) << m.CheckStructure();
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(chunk), chunk), 65u);
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(chunk + 4096), chunk + 4096), 4096u);
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(2 * chunk - 256), 2 * chunk - 256), 256u);
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(chunk + 128), chunk + 128), 1u);
  EXPECT_EQ(IovaAllocMap::PagesAt(*m.Find(chunk + 64), chunk + 64), 0u);  // interior
  for (uint64_t n = 1; n <= 64; n *= 2) {
    EXPECT_FALSE(IovaAllocMap::StartsExactly(*m.Find(chunk), chunk, n)) << n;
  }
  const std::vector<std::pair<uint64_t, uint64_t>> want = {
      {chunk, 65}, {chunk + 128, 1}, {chunk + 4096, 4096}, {2 * chunk - 256, 256}};
  EXPECT_EQ(Contents(m), want);

  // The 4096-page allocation's end bit gone: it is still open at the next
  // start (the 256-page one's).
  Group& last = m.FindOrCreate(chunk + 8191);
  last.end_bits ^= uint64_t{1} << 63;
  EXPECT_FALSE(m.CheckStructure().ok());
  last.end_bits ^= uint64_t{1} << 63;
  ASSERT_TRUE(m.CheckStructure().ok());
  // The chunk's last allocation without its end: no end in the chunk at all.
  Group& chunk_end = m.FindOrCreate(2 * chunk - 1);
  chunk_end.end_bits ^= uint64_t{1} << 63;
  EXPECT_THAT(std::string(m.CheckStructure().message()), testing::HasSubstr("no end"));
  chunk_end.end_bits ^= uint64_t{1} << 63;
  // An end 4097 pages after its start.
  IovaAllocMap n(1, (uint64_t{1} << 20) - 1);
  n.FindOrCreate(chunk).start_bits |= 1;
  n.FindOrCreate(chunk + 4096).end_bits |= 1;
  EXPECT_THAT(std::string(n.CheckStructure().message()), testing::HasSubstr("longer"));
  // Clearing leaves nothing behind.
  for (const auto& [pfn, pages] : want) IovaAllocMap::Clear(*m.Find(pfn), pfn, pages);
  EXPECT_TRUE(Contents(m).empty());
  EXPECT_TRUE(m.CheckStructure().ok());
}

// Chunk memory comes in blocks that double up to 2 MiB (then on huge pages):
// 600 chunks take blocks of 1, 1, 2, 4, ... 128 chunks, one of 256 (2 MiB)
// and one of 88, what the space has left. Every chunk keeps its own
// contents, written in a scattered order and read back after all of them.
TEST(IovaAllocMap, ChunksAcrossDoublingAndHugeBlocks) {
  constexpr uint64_t kChunks = 600;
  constexpr uint64_t kChunkPfns = uint64_t{1} << 15;
  IovaAllocMap m(1, kChunks * kChunkPfns - 1);
  ASSERT_EQ(m.depth(), 1);
  EXPECT_EQ(m.memory_bytes(), kChunks * sizeof(void*));  // the top level only
  std::vector<std::pair<uint64_t, uint64_t>> want;
  for (uint64_t i = 0; i < kChunks; ++i) {
    const uint64_t c = (i * 7) % kChunks;  // 7 is prime to 600: every chunk once
    const uint64_t pages = uint64_t{1} << (c % 7);
    const uint64_t pfn = c * kChunkPfns + 64 * (c % 512) + 64 - pages;
    m.Insert(pfn, pages);
    want.emplace_back(pfn, pages);
  }
  std::sort(want.begin(), want.end());
  EXPECT_EQ(m.chunk_count(), kChunks);
  ASSERT_TRUE(m.CheckStructure().ok()) << m.CheckStructure();
  EXPECT_EQ(Contents(m), want);
  for (const auto& [pfn, pages] : want) {
    ASSERT_EQ(IovaAllocMap::PagesAt(*m.Find(pfn), pfn), pages) << pfn;
  }
  // The blocks hold exactly the 600 chunks (8 KiB each): none is left over.
  EXPECT_EQ(m.memory_bytes(), kChunks * sizeof(void*) + kChunks * 512 * sizeof(Group));
}

TEST(IovaAllocMap, MovedMapKeepsItsContents) {
  IovaAllocMap m(1, (uint64_t{1} << 20) - 1);
  m.Insert(1024, 16);
  IovaAllocMap moved = std::move(m);
  ASSERT_FALSE(IovaAllocMap::Unwritten(moved.Find(1024)));
  EXPECT_EQ(IovaAllocMap::PagesAt(*moved.Find(1024), 1024), 16u);
}

}  // namespace
}  // namespace iommu::core::internal
