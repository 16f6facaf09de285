// SPDX-License-Identifier: Apache-2.0
// The broker model: domains, ownership, the DMA API and translation, with
// the cases from the kernel's history that docs/design.md#better-than-linux
// promises to get right.

#include "core/broker/broker.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;
using namespace ::iommu::core::testing;  // NOLINT

class BrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    opts_.now = clock_.Fn();
    // Room for the giant-buffer tests (the fair share would be ~0.9 GiB).
    opts_.default_quotas.max_buffer_bytes = 16 * GiB;
    broker_ = MakeBroker(opts_);
    ASSERT_NE(broker_, nullptr);
  }
  void TearDown() override {
    if (broker_) broker_->CheckInvariants();
  }

  Caller Dev(const std::string& name) { return Caller::Device(name); }

  BufferInfo Buffer(const std::string& dev, uint64_t size, Placement p = Placement::kScattered) {
    auto b = broker_->AllocBuffer(Dev(dev), dev, size, p);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : BufferInfo{};
  }

  TranslateResult Tr(const std::string& dev, Iova iova, uint64_t len, Access a) {
    auto r = broker_->Translate(Dev(dev),
                                {.device = dev, .iova = iova, .length_bytes = len, .access = a});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : TranslateResult{};
  }

  // Stats and a full page-table walk of a domain, for "no trace" checks.
  std::string Snapshot() {
    std::string out;
    BrokerStats s = broker_->GetStats(Caller::Admin()).value();
    for (const DomainStats& d : s.domains) {
      absl::StrAppend(&out, "d", d.domain_id, " maps=", d.mappings, " bytes=", d.mapped_bytes,
                      " pt=", d.pgtable.mapped_bytes, "/", d.pgtable.table_count);
      if (d.iova) {
        absl::StrAppend(&out, " iova=", d.iova->allocated_pages, "/", d.iova->free_pages, "/",
                        d.iova->free_ranges, "/", d.iova->largest_free_pages);
      }
      absl::StrAppend(&out, "\n");
    }
    for (const SmmuStats& m : s.smmus) {
      absl::StrAppend(&out, m.name, " tlb=", m.iotlb.occupancy, " ctx=", m.contexts_used, "\n");
    }
    for (const PoolStats& p : s.pools) {
      absl::StrAppend(&out, p.name, " free=", p.free_pages, "\n");
    }
    for (const DeviceInfo& d : testing::Value(broker_->ListDevices(Caller::Admin()))) {
      absl::StrAppend(&out, d.config.name, " q=", d.mappings, "/", d.mapped_bytes, "/", d.buffers,
                      "\n");
    }
    // A full walk of every page table.
    for (const DomainStats& d : s.domains) {
      auto walk = broker_->WalkDomain(Caller::Admin(), d.domain_id);
      EXPECT_TRUE(walk.ok()) << walk.status();
      for (const PgtableMapping& m : *walk) {
        absl::StrAppend(&out, "  d", d.domain_id, " ", m.iova.Hex(), "->", m.phys.Hex(), "+",
                        m.size_bytes, " g", m.grant.bits(), "\n");
      }
    }
    return out;
  }

  FakeClock clock_;
  BrokerOptions opts_;
  std::unique_ptr<Broker> broker_;
};

TEST_F(BrokerTest, EveryDeviceStartsInItsOwnDefaultDmaDomain) {
  std::set<uint64_t> ids;
  for (const DeviceInfo& d : testing::Value(broker_->ListDevices(Caller::Admin()))) {
    EXPECT_EQ(d.current_domain_id, d.default_domain_id) << d.config.name;
    ids.insert(d.current_domain_id);
    auto info = broker_->GetDomain(Caller::Admin(), d.current_domain_id);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->type, DomainType::kDma);
    EXPECT_TRUE(info->is_default);
    EXPECT_THAT(info->devices, ::testing::ElementsAre(d.config.name));
  }
  EXPECT_EQ(ids.size(), broker_->ListDevices(Caller::Admin()).value().size());
  // A device sees only itself.
  auto mine = broker_->ListDevices(Dev("nic0")).value();
  ASSERT_EQ(mine.size(), 1u);
  EXPECT_EQ(mine[0].config.name, "nic0");
}

TEST_F(BrokerTest, MapKeepsTheOffsetAndTranslatesUntilUnmapped) {
  BufferInfo buf = Buffer("nic0", 16 * KiB);
  ASSERT_EQ(buf.runs.size(), 4u);  // scattered: no two pages adjacent
  auto m = broker_->Map(
      Dev("nic0"), "nic0",
      {.mem = {.buffer_id = buf.buffer_id, .offset_bytes = 0x100, .length_bytes = 0x200}});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->dma_addr & 0xfff, 0x100u);
  EXPECT_EQ(m->iova_size_bytes, 4 * KiB);
  TranslateResult t = Tr("nic0", m->dma_addr, 0x200, Read());
  ASSERT_FALSE(t.faulted);
  ASSERT_EQ(t.pages.size(), 1u);
  EXPECT_EQ(t.pages[0].phys_addr, buf.runs[0].start + 0x100);
  EXPECT_FALSE(t.pages[0].iotlb_hit);
  // Second access hits the IOTLB.
  t = Tr("nic0", m->dma_addr + 8, 4, Write());
  ASSERT_FALSE(t.faulted);
  EXPECT_TRUE(t.pages[0].iotlb_hit);
  broker_->CheckInvariants();
  // The buffer cannot be freed while mapped.
  EXPECT_EQ(broker_->FreeBuffer(Dev("nic0"), buf.buffer_id).code(),
            absl::StatusCode::kFailedPrecondition);
  // Unmap by any address inside the allocation.
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {m->dma_addr + 0x1ff}).ok());
  t = Tr("nic0", m->dma_addr, 4, Read());
  EXPECT_TRUE(t.faulted);
  EXPECT_EQ(t.fault_type, FaultType::kTranslation);
  EXPECT_EQ(broker_->Unmap(Dev("nic0"), "nic0", {m->dma_addr}).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(broker_->FreeBuffer(Dev("nic0"), buf.buffer_id).ok());
}

// Unmap and GetSgTable find a mapping from any address inside its IOVA
// allocation: its first granule, later granules of a long mapping, and the
// second granule of a short range that straddles a granule edge; addresses
// between and just past mappings find nothing.
TEST_F(BrokerTest, MappingsAreFoundFromEveryAddressInside) {
  BufferInfo buf = Buffer("nic0", 64 * KiB, Placement::kContiguous);
  auto map = [&](uint64_t off, uint64_t len) {
    auto m = broker_->Map(
        Dev("nic0"), "nic0",
        {.mem = {.buffer_id = buf.buffer_id, .offset_bytes = off, .length_bytes = len}});
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : MapResult{};
  };
  const MapResult one = map(0, 4 * KiB);            // one granule
  const MapResult longer = map(4 * KiB, 16 * KiB);  // four granules
  const MapResult straddle = map(0x5f00, 0x200);    // two granules
  ASSERT_EQ(longer.iova_size_bytes, 16 * KiB);
  ASSERT_EQ(straddle.iova_size_bytes, 8 * KiB);
  broker_->CheckInvariants();
  auto sg_start = [&](Iova dma_addr) -> uint64_t {
    auto t = broker_->GetSgTable(Dev("nic0"), "nic0", dma_addr);
    return t.ok() ? t->chunks.front().start.value() : 0;
  };
  EXPECT_EQ(sg_start(longer.dma_addr + 0x2abc), buf.runs[0].start.value() + 4 * KiB);
  EXPECT_EQ(sg_start(longer.dma_addr + 16 * KiB - 1), buf.runs[0].start.value() + 4 * KiB);
  EXPECT_EQ(sg_start(straddle.dma_addr + 0x1ff), buf.runs[0].start.value() + 0x5f00);
  EXPECT_EQ(sg_start(one.dma_addr + 0xfff), buf.runs[0].start.value());
  for (const MapResult& m : {one, longer, straddle}) {
    const Iova past = m.dma_addr - (m.dma_addr & 0xfff) + m.iova_size_bytes;
    if (past != one.dma_addr && past != longer.dma_addr && past != straddle.dma_addr) {
      EXPECT_EQ(broker_->GetSgTable(Dev("nic0"), "nic0", past).status().code(),
                absl::StatusCode::kNotFound);
    }
  }
  // Unmap from the last granule of the long mapping and the second granule
  // of the straddling one; then neither is there any more.
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {longer.dma_addr + 0x3800}).ok());
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {straddle.dma_addr + 0x180}).ok());
  broker_->CheckInvariants();
  EXPECT_EQ(broker_->Unmap(Dev("nic0"), "nic0", {longer.dma_addr}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->Unmap(Dev("nic0"), "nic0", {straddle.dma_addr}).code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {one.dma_addr + 0x800}).ok());
  EXPECT_EQ(broker_->GetDomain(Caller::Admin(), one.domain_id)->mappings, 0u);
}

// Linux tries 32-bit IOVAs first for PCI devices (single-address-cycle
// addressing) and only then the full mask; other devices go top-down from
// their mask.
TEST_F(BrokerTest, PciDevicesGetThirtyTwoBitIovasFirst) {
  for (const auto& [dev, pci] : {std::pair<std::string, bool>{"nic0", true}, {"sg64k", false}}) {
    BufferInfo buf = Buffer(dev, 4 * KiB, Placement::kContiguous);
    auto m =
        broker_->Map(Dev(dev), dev, {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 4 * KiB}});
    ASSERT_TRUE(m.ok()) << m.status();
    if (pci) {
      EXPECT_EQ(m->dma_addr, Iova(0xFFFFF000u)) << dev;
    } else {
      EXPECT_EQ(m->dma_addr, Iova((uint64_t{1} << 48) - 4 * KiB)) << dev;
    }
  }
}

TEST_F(BrokerTest, ScatteredBufferRangeMapsIovaContiguously) {
  BufferInfo buf = Buffer("gpu0", 64 * KiB);
  auto m = broker_->Map(Dev("gpu0"), "gpu0",
                        {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 64 * KiB}});
  ASSERT_TRUE(m.ok()) << m.status();
  // The page table holds exactly the 16 scattered pages, in IOVA order.
  auto walk = broker_->WalkDomain(Dev("gpu0"), m->domain_id);
  ASSERT_TRUE(walk.ok()) << walk.status();
  ASSERT_EQ(walk->size(), 16u);
  for (size_t i = 0; i < 16; ++i) {
    EXPECT_EQ((*walk)[i].iova, m->dma_addr + i * 4 * KiB);
    EXPECT_EQ((*walk)[i].phys, buf.runs[i].start);
  }
  EXPECT_EQ(broker_->WalkDomain(Dev("nic0"), m->domain_id).status().code(),
            absl::StatusCode::kNotFound);
  // Paged: from inside the 6th page, 4 leaves; past the last leaf, none.
  auto page = broker_->WalkDomain(Dev("gpu0"), m->domain_id, m->dma_addr + 5 * 4 * KiB + 123, 4);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ((*page)[i].iova, (*walk)[5 + i].iova);
  auto past = broker_->WalkDomain(Dev("gpu0"), m->domain_id, m->dma_addr + 64 * KiB);
  ASSERT_TRUE(past.ok());
  EXPECT_TRUE(past->empty());
  TranslateResult t = Tr("gpu0", m->dma_addr, 64 * KiB, Read());
  ASSERT_FALSE(t.faulted);
  ASSERT_EQ(t.pages.size(), 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(t.pages[i].phys_addr, buf.runs[i].start);
}

TEST_F(BrokerTest, ThirtyTwoBitDeviceNeverGetsIovaAbove4GiBAndExhaustionNamesLargestRange) {
  BufferInfo buf = Buffer("sata0", 2 * MiB, Placement::kContiguous);
  std::vector<Iova> addrs;
  absl::Status last;
  for (int i = 0; i < 2100; ++i) {
    auto m = broker_->Map(Dev("sata0"), "sata0",
                          {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 2 * MiB}});
    if (!m.ok()) {
      last = m.status();
      break;
    }
    EXPECT_LT((m->dma_addr + 2 * MiB - 1).value(), uint64_t{1} << 32);
    addrs.push_back(m->dma_addr);
  }
  // IOVA page 0 is never handed out, so the 2048th 2 MiB block cannot fit.
  EXPECT_EQ(addrs.size(), 2047u);
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(last.message(), HasSubstr("largest free"));
  broker_->CheckInvariants();
  for (Iova a : addrs) ASSERT_TRUE(broker_->Unmap(Dev("sata0"), "sata0", {a}).ok());
}

// 2015 thread: page-aligned {64K, 16K, 64K} on a device with a 64 KiB
// segment boundary.
TEST_F(BrokerTest, MapSgModesThroughTheBroker) {
  BufferInfo a = Buffer("sg64k", 64 * KiB, Placement::kContiguous);
  BufferInfo b = Buffer("sg64k", 16 * KiB, Placement::kContiguous);
  BufferInfo c = Buffer("sg64k", 64 * KiB, Placement::kContiguous);
  MapSgRequest req{.segments = {{.buffer_id = a.buffer_id, .length_bytes = 64 * KiB},
                                {.buffer_id = b.buffer_id, .length_bytes = 16 * KiB},
                                {.buffer_id = c.buffer_id, .length_bytes = 64 * KiB}},
                   .mode = SgMode::kDmaApi};
  auto dma_api = broker_->MapSg(Dev("sg64k"), "sg64k", req);
  ASSERT_TRUE(dma_api.ok()) << dma_api.status();
  ASSERT_EQ(dma_api->segments.size(), 3u);
  EXPECT_EQ(dma_api->segments[1].dma_addr, dma_api->segments[0].dma_addr + 64 * KiB);
  // The gap: the third segment starts at the next boundary, not right after.
  EXPECT_EQ(dma_api->segments[2].dma_addr, dma_api->segments[0].dma_addr + 128 * KiB);
  TranslateResult gap = Tr("sg64k", dma_api->segments[0].dma_addr + 80 * KiB, 4, Read());
  EXPECT_TRUE(gap.faulted);  // the padding is not mapped

  req.mode = SgMode::kContiguous;
  auto contig = broker_->MapSg(Dev("sg64k"), "sg64k", req);
  ASSERT_TRUE(contig.ok()) << contig.status();
  ASSERT_EQ(contig->segments.size(), 1u);
  EXPECT_EQ(contig->segments[0].length_bytes, 144 * KiB);
  TranslateResult t = Tr("sg64k", contig->segments[0].dma_addr + 64 * KiB, 16 * KiB, Read());
  ASSERT_FALSE(t.faulted);
  EXPECT_EQ(t.pages[0].phys_addr, b.runs[0].start);

  // CONTIGUOUS names the interior segment that cannot be laid contiguously.
  req.segments[1].length_bytes = 12 * KiB + 100;
  auto bad = broker_->MapSg(Dev("sg64k"), "sg64k", req);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("segments[1]"));

  // UnmapSg, not Unmap, releases a MapSg mapping.
  EXPECT_EQ(broker_->Unmap(Dev("sg64k"), "sg64k", {contig->iova}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(broker_->UnmapSg(Dev("sg64k"), "sg64k", contig->iova).ok());
  EXPECT_TRUE(broker_->UnmapSg(Dev("sg64k"), "sg64k", dma_api->iova).ok());
}

// 2019: MERGE of 8 x 1 GiB physically scattered segments on a device with
// max_segment_size 0xFFFFFFFF.
TEST_F(BrokerTest, MergeOfEightGiantSegmentsNeverExceedsMaxSegmentSize) {
  MapSgRequest req{.mode = SgMode::kMerge};
  for (int i = 0; i < 8; ++i) {
    BufferInfo b = Buffer("nvme0", 1 * GiB, Placement::kContiguous);
    req.segments.push_back({.buffer_id = b.buffer_id, .length_bytes = 1 * GiB});
  }
  auto r = broker_->MapSg(Dev("nvme0"), "nvme0", req);
  ASSERT_TRUE(r.ok()) << r.status();
  uint64_t total = 0;
  for (const DmaSegment& s : r->segments) {
    EXPECT_LE(s.length_bytes, 0xFFFFFFFFu);
    // Never across the 4 GiB boundary.
    EXPECT_EQ(s.dma_addr.value() >> 32, (s.dma_addr + s.length_bytes - 1).value() >> 32);
    total += s.length_bytes;
  }
  EXPECT_EQ(total, 8 * GiB);
  EXPECT_EQ(r->segments.size(), 4u);
  broker_->CheckInvariants();
  ASSERT_TRUE(broker_->UnmapSg(Dev("nvme0"), "nvme0", r->iova).ok());
}

TEST_F(BrokerTest, CameraWithoutScatterGatherNeedsContiguous) {
  BufferInfo a = Buffer("cam0", 8 * KiB, Placement::kContiguous);
  BufferInfo b = Buffer("cam0", 8 * KiB, Placement::kContiguous);
  MapSgRequest req{.segments = {{.buffer_id = a.buffer_id, .length_bytes = 8 * KiB},
                                {.buffer_id = b.buffer_id, .length_bytes = 8 * KiB}},
                   .mode = SgMode::kMerge};
  auto merged = broker_->MapSg(Dev("cam0"), "cam0", req);
  if (merged.ok()) {
    // MERGE may already give one segment; then the device can use it.
    EXPECT_EQ(merged->segments.size(), 1u);
    ASSERT_TRUE(broker_->UnmapSg(Dev("cam0"), "cam0", merged->iova).ok());
  } else {
    EXPECT_EQ(merged.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  req.segments[0].length_bytes = 6 * KiB;  // leaves a hole: two DMA segments
  req.mode = SgMode::kDmaApi;
  auto split = broker_->MapSg(Dev("cam0"), "cam0", req);
  EXPECT_EQ(split.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(split.status().message(), HasSubstr("cannot do scatter-gather"));
}

TEST_F(BrokerTest, FailedCallsLeaveNoTrace) {
  // Alloc whose mapping charge fails after its pages were taken.
  opts_.default_quotas.max_mapped_bytes = 1 * MiB;
  broker_ = MakeBroker(opts_);
  const std::string before = Snapshot();
  auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 2 * MiB});
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Snapshot(), before);

  // MapAt that overlaps an existing mapping part way through its runs.
  auto dom = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kUnmanaged});
  ASSERT_TRUE(dom.ok()) << dom.status();
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", dom->domain_id).ok());
  BufferInfo small = Buffer("nic0", 4 * KiB);
  BufferInfo big = Buffer("nic0", 64 * KiB);
  ASSERT_TRUE(broker_
                  ->MapAt(Dev("nic0"), "nic0",
                          {.iova = Iova(0x10'0000 + 32 * KiB),
                           .mem = {.buffer_id = small.buffer_id, .length_bytes = 4 * KiB},
                           .direction = DmaDirection::kBidirectional})
                  .ok());
  const std::string before_mapat = Snapshot();
  auto overlap = broker_->MapAt(Dev("nic0"), "nic0",
                                {.iova = Iova(0x10'0000),
                                 .mem = {.buffer_id = big.buffer_id, .length_bytes = 64 * KiB},
                                 .direction = DmaDirection::kBidirectional});
  EXPECT_EQ(overlap.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Snapshot(), before_mapat);
  EXPECT_TRUE(Tr("nic0", Iova(0x10'0000), 4, Read()).faulted);  // rolled back
  EXPECT_EQ(broker_->GetBuffer(Dev("nic0"), big.buffer_id)->map_count, 0u);
}

TEST_F(BrokerTest, FailedMapSgOnIovaExhaustionLeavesNoTrace) {
  // Fill a 32-bit device's IOVA space, then a MapSg must fail cleanly.
  BufferInfo huge = Buffer("sata0", 2 * MiB, Placement::kContiguous);
  std::vector<Iova> addrs;
  for (uint64_t len : {2 * MiB, 64 * KiB}) {
    while (true) {
      auto m = broker_->Map(Caller::Admin(), "sata0",
                            {.mem = {.phys = huge.runs[0].start, .length_bytes = len}});
      if (!m.ok()) break;
      addrs.push_back(m->dma_addr);
    }
  }
  const std::string before_sg = Snapshot();
  auto sg = broker_->MapSg(Dev("sata0"), "sata0",
                           {.segments = {{.buffer_id = huge.buffer_id, .length_bytes = 64 * KiB}},
                            .mode = SgMode::kMerge});
  EXPECT_EQ(sg.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Snapshot(), before_sg);
  EXPECT_EQ(broker_->GetBuffer(Dev("sata0"), huge.buffer_id)->map_count, 0u);
  for (Iova a : addrs) ASSERT_TRUE(broker_->Unmap(Caller::Admin(), "sata0", {a}).ok());
}

// Every reply describing a buffer lists its runs, so a buffer that could have
// more than max_buffer_runs of them is refused before any page is taken:
// AllocBuffer by its placement, Alloc when its single-page fallback could.
TEST_F(BrokerTest, BufferRunsAreBoundedBeforeAnyPageIsTaken) {
  opts_.max_buffer_runs = 8;
  broker_ = MakeBroker(opts_);
  const std::string before = Snapshot();
  auto scattered =
      broker_->AllocBuffer(Dev("nic0"), "nic0", 8 * 4 * KiB + 1, Placement::kScattered);
  EXPECT_EQ(scattered.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(scattered.status().message(),
              HasSubstr("up to 9 physical runs, more than --max_buffer_runs=8"));
  auto huge = broker_->AllocBuffer(Dev("gpu0"), "gpu0", 9 * 2 * MiB, Placement::kHuge);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  auto single = broker_->Alloc(Dev("gpu0"), "gpu0",
                               {.size_bytes = 64 * KiB, .attrs = {.alloc_single_pages = true}});
  EXPECT_EQ(single.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(single.status().message(), HasSubstr("--max_buffer_runs=8"));
  EXPECT_EQ(Snapshot(), before);  // no page, quota charge or mapping left behind
  // At the bound, and placements with fewer runs, are accepted.
  EXPECT_EQ(Buffer("nic0", 8 * 4 * KiB).runs.size(), 8u);
  EXPECT_EQ(Buffer("nic0", 1 * MiB, Placement::kContiguous).runs.size(), 1u);
  auto block = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 4 * MiB});
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->runs.size(), 1u);
}

TEST_F(BrokerTest, AllocUsesBlockDescriptorsAndFreeReleasesEverything) {
  const std::string before = Snapshot();
  auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 4 * MiB});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->runs.size(), 1u);  // largest pages first: one contiguous block
  EXPECT_EQ(a->page_sizes_used, std::vector<uint64_t>{2 * MiB});
  TranslateResult t = Tr("gpu0", a->dma_addr + 3 * MiB, 8, Write());
  ASSERT_FALSE(t.faulted);
  EXPECT_EQ(t.pages[0].phys_addr, a->runs[0].start + 3 * MiB);
  // The backing buffer belongs to the device but is released by Free only.
  EXPECT_EQ(broker_->FreeBuffer(Dev("gpu0"), a->buffer_id).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(broker_->Unmap(Dev("gpu0"), "gpu0", {a->dma_addr}).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(broker_->Free(Dev("gpu0"), "gpu0", a->dma_addr).ok());
  EXPECT_EQ(broker_->GetBuffer(Dev("gpu0"), a->buffer_id).status().code(),
            absl::StatusCode::kNotFound);
  // Single pages on request.
  auto s = broker_->Alloc(Dev("gpu0"), "gpu0",
                          {.size_bytes = 64 * KiB, .attrs = {.alloc_single_pages = true}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->runs.size(), 16u);
  EXPECT_EQ(s->page_sizes_used, std::vector<uint64_t>{4 * KiB});
  ASSERT_TRUE(broker_->Free(Dev("gpu0"), "gpu0", s->dma_addr).ok());
  clock_.now += absl::Seconds(1);
  EXPECT_EQ(Snapshot().find("tlb="), before.find("tlb="));
}

// Linux BUG_ONs get_sgtable when the IOMMU granule is larger than the CPU
// page; here the table is exact.
TEST_F(BrokerTest, GetSgTableIsExactOnA16KGranuleDomain) {
  auto dom = broker_->CreateDomain(
      Dev("gpu0"), {.smmu = "smmu0", .type = DomainType::kDma, .granule_bytes = 16 * KiB});
  ASSERT_TRUE(dom.ok()) << dom.status();
  EXPECT_EQ(dom->granule_bytes, 16 * KiB);
  ASSERT_TRUE(broker_->AttachDevice(Dev("gpu0"), "gpu0", dom->domain_id).ok());
  BufferInfo buf = Buffer("gpu0", 12 * KiB);  // three scattered 4 KiB pages
  MapSgRequest req{.mode = SgMode::kDmaApi};
  for (int i = 0; i < 3; ++i) {
    req.segments.push_back({.buffer_id = buf.buffer_id,
                            .offset_bytes = uint64_t(i) * 4 * KiB,
                            .length_bytes = 4 * KiB});
  }
  auto m = broker_->MapSg(Dev("gpu0"), "gpu0", req);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->iova_size_bytes, 48 * KiB);  // each page padded to a granule
  auto table = broker_->GetSgTable(Dev("gpu0"), "gpu0", m->segments[1].dma_addr);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->chunks.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(table->chunks[i].start, buf.runs[i].start);
    EXPECT_EQ(table->chunks[i].size_bytes, 4 * KiB);
  }
  EXPECT_EQ(table->size_bytes, 12 * KiB);
  // A physically contiguous Alloc comes back as one chunk of its exact size.
  auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 48 * KiB});
  ASSERT_TRUE(a.ok()) << a.status();
  table = broker_->GetSgTable(Dev("gpu0"), "gpu0", a->dma_addr);
  ASSERT_TRUE(table.ok());
  ASSERT_EQ(table->chunks.size(), 1u);
  EXPECT_EQ(table->chunks[0].size_bytes, 48 * KiB);
}

TEST_F(BrokerTest, ExportAndContiguousImportIntoAnotherDevice) {
  auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 256 * KiB});
  ASSERT_TRUE(a.ok()) << a.status();
  auto table = broker_->GetSgTable(Dev("gpu0"), "gpu0", a->dma_addr, ExportGrant{.writable = true});
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_FALSE(table->export_token.empty());
  auto imp = broker_->MapSg(Dev("nic0"), "nic0", {.import_token = table->export_token});
  ASSERT_TRUE(imp.ok()) << imp.status();
  ASSERT_EQ(imp->segments.size(), 1u);
  EXPECT_EQ(imp->segments[0].length_bytes, 256 * KiB);
  // Both devices reach the same memory.
  TranslateResult g = Tr("gpu0", a->dma_addr + 100 * KiB, 4, Read());
  TranslateResult n = Tr("nic0", imp->segments[0].dma_addr + 100 * KiB, 4, Read());
  ASSERT_FALSE(g.faulted || n.faulted);
  EXPECT_EQ(g.pages[0].phys_addr, n.pages[0].phys_addr);
  // The exporter's Free revokes the export: the importer's mapping goes
  // first, then the pages.
  ASSERT_TRUE(broker_->Free(Dev("gpu0"), "gpu0", a->dma_addr).ok());
  EXPECT_TRUE(Tr("gpu0", a->dma_addr, 4, Read()).faulted);
  EXPECT_TRUE(Tr("nic0", imp->segments[0].dma_addr + 100 * KiB, 4, Read()).faulted);
  EXPECT_EQ(broker_->UnmapSg(Dev("nic0"), "nic0", imp->iova).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->GetBuffer(Dev("gpu0"), a->buffer_id).status().code(),
            absl::StatusCode::kNotFound);
  broker_->CheckInvariants();

  // Scattered 4 KiB pages cannot be one block in a 16 KiB-granule importer.
  BufferInfo buf = Buffer("sg64k", 16 * KiB);
  auto m = broker_->Map(Dev("sg64k"), "sg64k",
                        {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 16 * KiB}});
  ASSERT_TRUE(m.ok());
  auto t2 = broker_->GetSgTable(Dev("sg64k"), "sg64k", m->dma_addr, ExportGrant{.writable = true});
  ASSERT_TRUE(t2.ok());
  auto dom = broker_->CreateDomain(Dev("gpu0"), {.smmu = "smmu0", .granule_bytes = 16 * KiB});
  ASSERT_TRUE(dom.ok());
  ASSERT_TRUE(broker_->AttachDevice(Dev("gpu0"), "gpu0", dom->domain_id).ok());
  auto bad = broker_->MapSg(Dev("gpu0"), "gpu0", {.import_token = t2->export_token});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("not aligned to 0x4000"));
  EXPECT_EQ(broker_->MapSg(Dev("gpu0"), "gpu0", {.import_token = "exp-nope"}).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace iommu::core
