// SPDX-License-Identifier: Apache-2.0
#include "core/broker/sg_layout.h"

#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t K = 1024;
constexpr uint64_t G = K * K * K;

struct Expect {
  uint64_t iova_offset;
  uint64_t length_bytes;
};

void ExpectSegments(const SgLayout& l, std::vector<Expect> want) {
  ASSERT_EQ(l.dma_segments.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(l.dma_segments[i].iova_offset, want[i].iova_offset) << "segment " << i;
    EXPECT_EQ(l.dma_segments[i].length_bytes, want[i].length_bytes) << "segment " << i;
  }
}

// Checks what every layout must satisfy: map ranges ascending, disjoint,
// granule-aligned, inside the allocation; each input byte is reachable at the
// IOVA its map range gives; DMA segments cover the input bytes in order; and
// (padded modes) no DMA segment is longer than max_segment_size or crosses a
// boundary.
void CheckLayout(const std::vector<PhysSegment>& in, uint64_t granule, const SgDeviceLimits& lim,
                 SgMode mode, const SgLayout& l) {
  ASSERT_EQ(l.map_ranges.size(), in.size());
  uint64_t prev_end = 0;
  uint64_t input_total = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const SgMapRange& r = l.map_ranges[i];
    EXPECT_EQ(r.iova_offset % granule, 0u);
    EXPECT_EQ(r.phys.value() % granule, 0u);
    EXPECT_EQ(r.size_bytes % granule, 0u);
    EXPECT_GE(r.iova_offset, prev_end);
    prev_end = r.iova_offset + r.size_bytes;
    EXPECT_LE(prev_end, l.iova_size_bytes);
    EXPECT_EQ(r.phys, PhysAddr(in[i].phys.value() & ~(granule - 1)));
    EXPECT_GE(r.size_bytes, (in[i].phys & (granule - 1)) + in[i].length_bytes);
    input_total += in[i].length_bytes;
  }
  // Walk the DMA segments byte-range by byte-range against the inputs.
  uint64_t dma_total = 0;
  size_t seg = 0;
  uint64_t consumed_in_seg = 0;
  for (const SgDmaSegment& d : l.dma_segments) {
    uint64_t pos = d.iova_offset;
    uint64_t left = d.length_bytes;
    while (left > 0) {
      ASSERT_LT(seg, in.size());
      const uint64_t expect_iova =
          l.map_ranges[seg].iova_offset + (in[seg].phys & (granule - 1)) + consumed_in_seg;
      EXPECT_EQ(pos, expect_iova) << "input segment " << seg;
      const uint64_t take = std::min(left, in[seg].length_bytes - consumed_in_seg);
      pos += take;
      left -= take;
      consumed_in_seg += take;
      if (consumed_in_seg == in[seg].length_bytes) {
        ++seg;
        consumed_in_seg = 0;
      }
    }
    dma_total += d.length_bytes;
    if (mode != SgMode::kContiguous) {
      EXPECT_LE(d.length_bytes, lim.max_segment_size_bytes);
      const uint64_t mask = lim.segment_boundary_mask;
      EXPECT_EQ(d.iova_offset & ~mask, (d.iova_offset + d.length_bytes - 1) & ~mask)
          << "DMA segment crosses a boundary";
    }
  }
  EXPECT_EQ(seg, in.size());
  EXPECT_EQ(dma_total, input_total);
  if (mode == SgMode::kContiguous) {
    EXPECT_EQ(l.dma_segments.size(), 1u);
  }
  if (mode == SgMode::kDmaApi) {
    EXPECT_EQ(l.dma_segments.size(), in.size());
  }
}

// 2015 thread: page-aligned {64K, 16K, 64K} for a device with a 64 KiB
// segment boundary. The original map_sg pads the second segment out to the
// boundary, so the third starts at 128K and leaves a gap; CONTIGUOUS gives one.
TEST(SgLayoutTest, DmaApiLeavesGapBeforeThirdSegmentContiguousDoesNot) {
  const std::vector<PhysSegment> in = {{PhysAddr(0x8040'0000), 64 * K},
                                       {PhysAddr(0x8123'0000), 16 * K},
                                       {PhysAddr(0x8077'0000), 64 * K}};
  const SgDeviceLimits lim{.max_segment_size_bytes = 64 * K, .segment_boundary_mask = 0xFFFF};
  auto dma_api = PlanMapSg(in, 4 * K, lim, SgMode::kDmaApi);
  ASSERT_TRUE(dma_api.ok()) << dma_api.status();
  ExpectSegments(*dma_api, {{0, 64 * K}, {64 * K, 16 * K}, {128 * K, 64 * K}});
  EXPECT_EQ(dma_api->iova_size_bytes, 192 * K);
  CheckLayout(in, 4 * K, lim, SgMode::kDmaApi, *dma_api);

  auto contig = PlanMapSg(in, 4 * K, lim, SgMode::kContiguous);
  ASSERT_TRUE(contig.ok()) << contig.status();
  ExpectSegments(*contig, {{0, 144 * K}});
  EXPECT_EQ(contig->iova_size_bytes, 144 * K);
  CheckLayout(in, 4 * K, lim, SgMode::kContiguous, *contig);
}

TEST(SgLayoutTest, ContiguousNamesTheUnalignedInteriorSegment) {
  const std::vector<PhysSegment> in = {{PhysAddr(0x9000'0000), 8 * K},
                                       {PhysAddr(0x9100'0000), 8 * K},
                                       {PhysAddr(0x9200'0800), 4 * K}};
  auto r = PlanMapSg(in, 4 * K, {}, SgMode::kContiguous);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("segments[2].phys_addr=0x92000800"));

  const std::vector<PhysSegment> short_middle = {{PhysAddr(0x9000'0000), 8 * K},
                                                 {PhysAddr(0x9100'0000), 6 * K},
                                                 {PhysAddr(0x9200'0000), 4 * K}};
  r = PlanMapSg(short_middle, 4 * K, {}, SgMode::kContiguous);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("segments[1].length_bytes=0x1800"));
}

TEST(SgLayoutTest, ContiguousKeepsFirstOffsetAndUnalignedTail) {
  const std::vector<PhysSegment> in = {{PhysAddr(0x9000'0234), 4 * K - 0x234},
                                       {PhysAddr(0x9100'0000), 100}};
  auto r = PlanMapSg(in, 4 * K, {}, SgMode::kContiguous);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectSegments(*r, {{0x234, 4 * K - 0x234 + 100}});
  EXPECT_EQ(r->iova_size_bytes, 8 * K);
  CheckLayout(in, 4 * K, {}, SgMode::kContiguous, *r);
}

// A segment that would cross a 64 KiB boundary is padded up to it (DMA_API)
// and never merged across it (MERGE).
TEST(SgLayoutTest, BoundaryPaddingAndNoMergeAcrossBoundary) {
  const std::vector<PhysSegment> in = {{PhysAddr(0xA000'0000), 48 * K},
                                       {PhysAddr(0xA100'0000), 32 * K}};
  const SgDeviceLimits lim{.max_segment_size_bytes = 1 << 20, .segment_boundary_mask = 0xFFFF};
  for (SgMode mode : {SgMode::kDmaApi, SgMode::kMerge}) {
    auto r = PlanMapSg(in, 4 * K, lim, mode);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectSegments(*r, {{0, 48 * K}, {64 * K, 32 * K}});
    CheckLayout(in, 4 * K, lim, mode, *r);
  }
  // Within one window the same two segments merge.
  const std::vector<PhysSegment> fits = {{PhysAddr(0xA000'0000), 16 * K},
                                         {PhysAddr(0xA100'0000), 32 * K}};
  auto merged = PlanMapSg(fits, 4 * K, lim, SgMode::kMerge);
  ASSERT_TRUE(merged.ok());
  ExpectSegments(*merged, {{0, 48 * K}});
}

// 2019: merging 8 x 1 GiB with max_segment_size 0xFFFFFFFF overflowed a 32-bit
// length. Here no DMA segment exceeds the limit and the bytes add up.
TEST(SgLayoutTest, MergeOfGiantSegmentsNeverExceedsMaxSegmentSize) {
  std::vector<PhysSegment> in;
  for (uint64_t i = 0; i < 8; ++i) in.push_back({PhysAddr((16 + 3 * i) * G), G});
  const SgDeviceLimits lim{.max_segment_size_bytes = 0xFFFFFFFF,
                           .segment_boundary_mask = 0xFFFFFFFF};
  auto r = PlanMapSg(in, 4 * K, lim, SgMode::kMerge);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectSegments(*r, {{0, 3 * G}, {3 * G, G}, {4 * G, 3 * G}, {7 * G, G}});
  EXPECT_EQ(r->iova_size_bytes, 8 * G);
  CheckLayout(in, 4 * K, lim, SgMode::kMerge, *r);
}

// 2026: one huge segment with boundary padding must not wrap the layout.
TEST(SgLayoutTest, HugeSegmentsCannotWrap) {
  const SgDeviceLimits all{.max_segment_size_bytes = ~uint64_t{0},
                           .segment_boundary_mask = (uint64_t{1} << 63) - 1};
  // 2^63, then 4 KiB, then 2^63 again: the padding before the third would
  // reach 2^64.
  const std::vector<PhysSegment> wrap = {{PhysAddr(0), uint64_t{1} << 63},
                                         {PhysAddr(0x1000), 4 * K},
                                         {PhysAddr(0), uint64_t{1} << 63}};
  auto r = PlanMapSg(wrap, 4 * K, all, SgMode::kDmaApi);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(r.status().message(), HasSubstr("segments[2].length_bytes=0x8000000000000000"));

  // A segment longer than the boundary window is refused, not wrapped.
  const SgDeviceLimits small{.max_segment_size_bytes = ~uint64_t{0},
                             .segment_boundary_mask = 0xFFFF};
  r = PlanMapSg({{PhysAddr(0x1000), uint64_t{1} << 63}}, 4 * K, small, SgMode::kDmaApi);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("segments[0].length_bytes"));

  // Rounding the last granule up would pass 2^64.
  r = PlanMapSg({{PhysAddr(0x10), ~uint64_t{0} - 0x10}}, 4 * K, all, SgMode::kMerge);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = PlanMapSg({{PhysAddr(0x10), ~uint64_t{0} - 0x10}}, 4 * K, all, SgMode::kContiguous);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
}

TEST(SgLayoutTest, MergeRespectsMaxSegmentSizeAndPartialGranules) {
  std::vector<PhysSegment> pages;
  for (uint64_t i = 0; i < 20; ++i) pages.push_back({PhysAddr(0xB000'0000 + i * 3 * 4 * K), 4 * K});
  const SgDeviceLimits lim{.max_segment_size_bytes = 16 * K, .segment_boundary_mask = 0xFFFFFFFF};
  auto r = PlanMapSg(pages, 4 * K, lim, SgMode::kMerge);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->dma_segments.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(r->dma_segments[i].iova_offset, i * 16 * K);
    EXPECT_EQ(r->dma_segments[i].length_bytes, 16 * K);
  }
  CheckLayout(pages, 4 * K, lim, SgMode::kMerge, *r);

  // A segment that ends mid-granule closes its DMA segment; one that starts
  // mid-granule cannot extend the previous.
  const std::vector<PhysSegment> partial = {{PhysAddr(0xC000'0000), 4 * K - 8},
                                            {PhysAddr(0xC100'0000), 4 * K},
                                            {PhysAddr(0xC200'0100), 4 * K - 0x100},
                                            {PhysAddr(0xC300'0000), 4 * K}};
  r = PlanMapSg(partial, 4 * K, lim, SgMode::kMerge);
  ASSERT_TRUE(r.ok());
  ExpectSegments(*r, {{0, 4 * K - 8}, {4 * K, 4 * K}, {8 * K + 0x100, 8 * K - 0x100}});
  CheckLayout(partial, 4 * K, lim, SgMode::kMerge, *r);
}

TEST(SgLayoutTest, GranuleLargerThanCpuPagePadsSegments) {
  // 64 KiB granule: each 4 KiB page takes a whole granule of IOVA.
  const std::vector<PhysSegment> in = {{PhysAddr(0xD000'1000), 4 * K},
                                       {PhysAddr(0xD100'0000), 4 * K}};
  auto r = PlanMapSg(in, 64 * K, {}, SgMode::kDmaApi);
  ASSERT_TRUE(r.ok());
  ExpectSegments(*r, {{0x1000, 4 * K}, {64 * K, 4 * K}});
  EXPECT_EQ(r->iova_size_bytes, 128 * K);
  EXPECT_EQ(r->map_ranges[0].phys, PhysAddr(0xD000'0000));
}

TEST(SgLayoutTest, BadInputNamesTheField) {
  struct Case {
    std::vector<PhysSegment> in;
    SgDeviceLimits lim;
    SgMode mode;
    absl::StatusCode code;
    const char* text;
  };
  const std::vector<Case> cases = {
      {{}, {}, SgMode::kMerge, absl::StatusCode::kInvalidArgument, "segments=0"},
      {{{PhysAddr(0x1000), 0}},
       {},
       SgMode::kMerge,
       absl::StatusCode::kInvalidArgument,
       "segments[0].length_bytes=0"},
      {{{PhysAddr(0x1000), 4096}, {PhysAddr(~uint64_t{0} - 10), 4096}},
       {},
       SgMode::kDmaApi,
       absl::StatusCode::kInvalidArgument,
       "segments[1].length_bytes=0x1000"},
      {{{PhysAddr(0x1000), 4096}},
       {.max_segment_size_bytes = 4096, .segment_boundary_mask = 0x1234},
       SgMode::kMerge,
       absl::StatusCode::kInvalidArgument,
       "segment_boundary_mask=0x1234"},
      {{{PhysAddr(0x1000), 8192}},
       {.max_segment_size_bytes = 4096},
       SgMode::kDmaApi,
       absl::StatusCode::kInvalidArgument,
       "segments[0].length_bytes=0x2000"},
      {{{PhysAddr(0x1000), 8192}},
       {.max_segment_size_bytes = 0},
       SgMode::kDmaApi,
       absl::StatusCode::kInvalidArgument,
       "max_segment_size=0"},
  };
  for (const Case& c : cases) {
    auto r = PlanMapSg(c.in, 4 * K, c.lim, c.mode);
    EXPECT_EQ(r.status().code(), c.code) << c.text;
    EXPECT_THAT(r.status().message(), HasSubstr(c.text));
  }
}

TEST(SgLayoutTest, RandomListsSatisfyLayoutInvariants) {
  std::mt19937_64 rng(7);
  int ok = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const uint64_t granule = uint64_t{4096} << (2 * (rng() % 3));  // 4K, 16K, 64K
    const uint64_t boundary_bits = 16 + rng() % 20;
    const SgDeviceLimits lim{.max_segment_size_bytes = (1 + rng() % 64) * 4096 + rng() % 3,
                             .segment_boundary_mask = (uint64_t{1} << boundary_bits) - 1};
    std::vector<PhysSegment> in(1 + rng() % 16);
    for (auto& s : in) {
      const uint64_t page = 0x80000 + rng() % 0x100000;
      const bool aligned = rng() % 3 != 0;
      s.phys = PhysAddr(page * 4096 + (aligned ? 0 : rng() % 4096));
      s.length_bytes = aligned ? (1 + rng() % 8) * 4096 : 1 + rng() % 20000;
    }
    for (SgMode mode : {SgMode::kDmaApi, SgMode::kMerge, SgMode::kContiguous}) {
      auto r = PlanMapSg(in, granule, lim, mode);
      if (!r.ok()) continue;
      ++ok;
      CheckLayout(in, granule, lim, mode, *r);
      if (HasFailure()) return;
    }
  }
  EXPECT_GT(ok, 3000);  // most random lists are valid in some mode
}

}  // namespace
}  // namespace iommu::core
