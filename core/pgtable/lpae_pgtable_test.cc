// SPDX-License-Identifier: Apache-2.0
// LpaePgtable behaviour: configuration and argument errors (exact codes and
// messages), all-or-nothing maps, unmap semantics (holes, partial blocks,
// splits with break-before-make), flush-op calls, table freeing, and a random
// operation sequence against a reference model.

#include "core/pgtable/lpae_pgtable.h"

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <vector>

#include "core/base/fail_nth.h"
#include "core/pgtable/io_pgtable.h"
#include "core/pgtable/lpae_format.h"
#include "core/workloads/workload.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

constexpr uint64_t kSz4K = uint64_t{1} << 12;
constexpr uint64_t kSz2M = uint64_t{1} << 21;
constexpr uint64_t kSz1G = uint64_t{1} << 30;
constexpr Prot kRW = Prot::kRead | Prot::kWrite;

// Records every flush call; optionally runs a probe at TlbFlushWalk time.
class RecordingFlush final : public FlushOps {
 public:
  struct Call {
    enum Kind { kAll, kWalk, kAddPage, kAddPages } kind;
    uint64_t iova = 0;
    uint64_t size_bytes = 0;
    uint64_t granule_bytes = 0;
    uint64_t count = 1;  // leaves of a kAddPages
  };
  void TlbFlushAll() override { calls.push_back({Call::kAll}); }
  void TlbFlushWalk(Iova iova, uint64_t size_bytes, uint64_t granule_bytes) override {
    calls.push_back({Call::kWalk, iova.value(), size_bytes, granule_bytes});
    if (on_walk) on_walk(iova.value(), size_bytes);
  }
  void TlbAddPage(IotlbGather* gather, Iova iova, uint64_t granule_bytes) override {
    calls.push_back({Call::kAddPage, iova.value(), granule_bytes, granule_bytes});
    gather->AddRange(iova, granule_bytes);
  }
  void TlbAddPages(IotlbGather* gather, Iova iova, uint64_t granule_bytes,
                   uint64_t count) override {
    calls.push_back({Call::kAddPages, iova.value(), granule_bytes * count, granule_bytes, count});
    gather->AddRange(iova, granule_bytes * count);
  }
  size_t Count(Call::Kind kind) const {
    return std::count_if(calls.begin(), calls.end(), [&](const Call& c) { return c.kind == kind; });
  }
  // Every leaf reported by TlbAddPage or TlbAddPages, as (iova, leaf size),
  // in call order.
  std::vector<std::pair<uint64_t, uint64_t>> GatheredLeaves() const {
    std::vector<std::pair<uint64_t, uint64_t>> leaves;
    for (const Call& c : calls) {
      if (c.kind != Call::kAddPage && c.kind != Call::kAddPages) continue;
      for (uint64_t i = 0; i < c.count; ++i) {
        leaves.push_back({c.iova + i * c.granule_bytes, c.granule_bytes});
      }
    }
    return leaves;
  }

  std::vector<Call> calls;
  std::function<void(uint64_t, uint64_t)> on_walk;
};

IoPgtableCfg Cfg4K() {
  IoPgtableCfg cfg;
  cfg.format = IoPgtableFormat::kArm64LpaeS1;
  cfg.pgsize_bitmap = kSz4K | kSz2M | kSz1G;
  cfg.ias = 48;
  cfg.oas = 40;
  return cfg;
}

class LpaePgtableTest : public testing::Test {
 protected:
  void SetUp() override {
    auto t = LpaePgtable::Create(Cfg4K(), &flush_);
    ASSERT_TRUE(t.ok()) << t.status();
    pt_ = *std::move(t);
  }
  void Check() { ASSERT_TRUE(pt_->CheckInvariants().ok()) << pt_->CheckInvariants(); }
  uint64_t Phys(uint64_t iova) {
    auto pa = pt_->IovaToPhys(Iova(iova));
    return pa ? pa->value() : 0;
  }
  absl::Status Map(uint64_t iova, uint64_t pa, uint64_t pgsize, uint64_t count = 1,
                   Prot prot = kRW) {
    absl::Status s = pt_->MapPages(Iova(iova), PhysAddr(pa), pgsize, count, prot);
    Check();
    return s;
  }
  absl::StatusOr<uint64_t> Unmap(uint64_t iova, uint64_t pgsize, uint64_t count = 1,
                                 UnmapFlags flags = UnmapFlags::kNone) {
    auto r = pt_->UnmapPages(Iova(iova), pgsize, count, &gather_, flags);
    Check();
    return r;
  }

  RecordingFlush flush_;
  IotlbGather gather_;
  std::unique_ptr<LpaePgtable> pt_;
};

// --- Table memory running out (docs/design.md#failure-injection) -------------

TEST(LpaePgtableCreateTest, NoMemoryForTheRootIsResourceExhausted) {
  RecordingFlush flush;
  fail_nth::ScopedArm arm(1, FailPoint::kPgtableTable);
  auto t = LpaePgtable::Create(Cfg4K(), &flush);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t.status().message(),
            "ias=0x30: no memory for a page-table table (walk to level 0) (injected failure at "
            "pgtable.table)");
}

// A map whose n-th table cannot be allocated, for every n: the tables its
// walk added are freed, the chunks it mapped (a 2 MiB block before 4K pages
// in IoPgtableOps::Map) unmapped, and nothing is reported to a gather.
TEST_F(LpaePgtableTest, MapWithoutMemoryForATableLeavesNoTrace) {
  ASSERT_TRUE(Map(0x40005000, 0x5000, kSz4K).ok());
  const PgtableStats before = pt_->Stats();
  const uint64_t iova = 0xbfc00000;  // a fresh 1 GiB region: needs its L2 and an L3 table
  uint64_t n = 1;
  for (;; ++n) {
    ASSERT_LT(n, 16u);
    absl::Status s;
    {
      fail_nth::ScopedArm arm(n, FailPoint::kPgtableTable);
      s = pt_->Map(Iova(iova), PhysAddr(0x200000), kSz2M + 16 * kSz4K, kRW);
      if (!fail_nth::Get().failed) break;
    }
    Check();
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << n;
    EXPECT_EQ(pt_->Stats().table_count, before.table_count) << n;
    EXPECT_EQ(pt_->Stats().mapped_bytes, before.mapped_bytes) << n;
    EXPECT_EQ(Phys(iova), 0u) << n;
    EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage) +
                  flush_.Count(RecordingFlush::Call::kAddPages),
              0u)
        << n;
  }
  EXPECT_EQ(n, 3u) << "the L2 table for the block, then the L3 table for the pages";
  Check();
  EXPECT_EQ(Phys(iova + kSz2M + 0x123), 0x400123u);
}

// --- Configuration -----------------------------------------------------------

TEST(LpaePgtableCreateTest, RejectsBadConfigs) {
  RecordingFlush flush;
  auto code = [&](IoPgtableCfg cfg, FlushOps* f = nullptr) {
    return AllocIoPgtableOps(cfg, f ? f : &flush).status();
  };
  IoPgtableCfg cfg = Cfg4K();
  EXPECT_TRUE(code(cfg).ok());
  EXPECT_EQ(AllocIoPgtableOps(cfg, nullptr).status().message(), "flush_ops=0: must be non-null");
  cfg.format = IoPgtableFormat::kUnspecified;
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kInvalidArgument);
  cfg = Cfg4K();
  cfg.ias = 49;
  EXPECT_EQ(code(cfg).message(), "ias=0x31: must be 32..48");
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kOutOfRange);
  cfg.ias = 31;
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kOutOfRange);
  cfg = Cfg4K();
  cfg.oas = 52;
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kOutOfRange);
  cfg = Cfg4K();
  cfg.pgsize_bitmap = 0;
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kInvalidArgument);
  cfg.pgsize_bitmap = 0x2000;  // 8K: no granule
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kInvalidArgument);
  cfg.pgsize_bitmap = kSz4K | (uint64_t{1} << 25);  // 32M is a 16K-granule size
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(code(cfg).message().find("pgsize_bitmap=0x2001000"), absl::string_view::npos);
  cfg = Cfg4K();
  cfg.quirks = 1u << 7;
  EXPECT_EQ(code(cfg).message(), "quirks=0x80: unsupported quirk bits");
  cfg = Cfg4K();
  cfg.format = IoPgtableFormat::kArm64LpaeS2;
  cfg.quirks = kQuirkArmNs;
  EXPECT_EQ(code(cfg).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LpaePgtableCreateTest, GeometryAndRootSize) {
  RecordingFlush flush;
  IoPgtableCfg cfg = Cfg4K();
  cfg.format = IoPgtableFormat::kArm64LpaeS2;
  cfg.ias = 40;
  auto t = LpaePgtable::Create(cfg, &flush);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->geometry().start_level, 1);
  EXPECT_EQ((*t)->geometry().concat_tables, 2u);
  EXPECT_EQ((*t)->Stats().table_bytes, 8192u) << "two concatenated 4K tables";
  EXPECT_EQ((*t)->Stats().table_count, 1u);
}

// --- Map ---------------------------------------------------------------------

TEST_F(LpaePgtableTest, MapArgumentErrorsNameFieldAndValue) {
  struct Case {
    uint64_t iova, pa, pgsize, count;
    Prot prot;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {0, 0, 0x3000, 1, kRW, absl::StatusCode::kInvalidArgument,
       "pgsize_bytes=0x3000: not in pgsize_bitmap 0x40201000"},
      {0, 0, 0x10000, 1, kRW, absl::StatusCode::kInvalidArgument,
       "pgsize_bytes=0x10000: not in pgsize_bitmap 0x40201000"},
      {0, 0, kSz4K, 0, kRW, absl::StatusCode::kInvalidArgument, "pgcount=0: must be non-zero"},
      {0, 0, kSz4K, 1, Prot::kNone, absl::StatusCode::kInvalidArgument,
       "prot=0: needs READ or WRITE and no unknown bits"},
      {0, 0, kSz4K, 1, kRW | Prot(1u << 9), absl::StatusCode::kInvalidArgument,
       "prot=0x203: needs READ or WRITE and no unknown bits"},
      {0x1800, 0, kSz4K, 1, kRW, absl::StatusCode::kInvalidArgument,
       "iova=0x1800: not aligned to pgsize 0x1000"},
      {kSz2M, 0x1000, kSz2M, 1, kRW, absl::StatusCode::kInvalidArgument,
       "paddr=0x1000: not aligned to pgsize 0x200000"},
      {0, 0, kSz1G, uint64_t{1} << 40, kRW, absl::StatusCode::kInvalidArgument,
       "pgcount=0x10000000000: pgsize_bytes * pgcount passes 2^64"},
      {~uint64_t{0} & ~(kSz4K - 1), 0, kSz4K, 2, kRW, absl::StatusCode::kInvalidArgument,
       "iova=0xfffffffffffff000: range of 0x2000 bytes passes 2^64"},
      {uint64_t{1} << 48, 0, kSz4K, 1, kRW, absl::StatusCode::kOutOfRange,
       "iova=0x1000000000000: range of 0x1000 bytes ends beyond ias 48"},
      {(uint64_t{1} << 48) - kSz4K, 0, kSz4K, 2, kRW, absl::StatusCode::kOutOfRange,
       "iova=0xfffffffff000: range of 0x2000 bytes ends beyond ias 48"},
      {0, uint64_t{1} << 40, kSz4K, 1, kRW, absl::StatusCode::kOutOfRange,
       "paddr=0x10000000000: range of 0x1000 bytes ends beyond oas 40"},
      {0, ~uint64_t{0} & ~(kSz4K - 1), kSz4K, 2, kRW, absl::StatusCode::kInvalidArgument,
       "paddr=0xfffffffffffff000: range of 0x2000 bytes passes 2^64"},
  };
  for (const Case& c : cases) {
    const absl::Status s = Map(c.iova, c.pa, c.pgsize, c.count, c.prot);
    EXPECT_EQ(s.code(), c.code) << c.message;
    EXPECT_EQ(s.message(), c.message);
  }
  EXPECT_EQ(pt_->Stats().table_count, 1u) << "a rejected map allocates nothing";
  EXPECT_TRUE(flush_.calls.empty());
}

TEST_F(LpaePgtableTest, OverlapFailsWithoutTrace) {
  ASSERT_TRUE(Map(0x40005000, 0x5000, kSz4K).ok());
  const PgtableStats before = pt_->Stats();
  // A 16-page batch crossing into a fresh L3 table, hitting the page at 0x40005000.
  absl::Status s = Map(0x40000000 - 8 * kSz4K, 0x100000, kSz4K, 16);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(s.message(), "iova=0x40005000: already mapped (or inside a mapped block)");
  EXPECT_EQ(Phys(0x40000000 - 8 * kSz4K), 0u) << "the pages written before the conflict are gone";
  EXPECT_EQ(Phys(0x40000000), 0u);
  EXPECT_EQ(pt_->Stats().table_count, before.table_count) << "tables made for it are freed";
  EXPECT_EQ(pt_->Stats().mapped_bytes, before.mapped_bytes);
  EXPECT_TRUE(flush_.calls.empty()) << "a failed map makes no flush call";
  // A block over the table holding that page, and a page inside a block.
  EXPECT_EQ(Map(0x40000000, 0, kSz2M).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Map(kSz1G, 0, kSz1G).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(Map(0x80000000, 0, kSz2M).ok());
  EXPECT_EQ(Map(0x80001000, 0, kSz4K).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Phys(0x80001234), 0x1234u);
}

TEST_F(LpaePgtableTest, BatchesCrossTableBoundaries) {
  ASSERT_TRUE(Map(kSz1G - 3 * kSz4K, 0x7000'0000, kSz4K, 1030).ok());
  for (uint64_t i = 0; i < 1030; ++i) {
    ASSERT_EQ(Phys(kSz1G - 3 * kSz4K + i * kSz4K + 7), 0x7000'0000 + i * kSz4K + 7);
  }
  EXPECT_EQ(pt_->Stats().leaves[0].count, 1030u);
  auto r = Unmap(kSz1G - 3 * kSz4K, kSz4K, 1030);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 1030 * kSz4K);
  EXPECT_EQ(pt_->Stats().table_count, 1u);
}

// --- Unmap -------------------------------------------------------------------

TEST_F(LpaePgtableTest, UnmapReportsLeavesAndFreesEmptyTables) {
  ASSERT_TRUE(Map(0x1'0000'0000, 0x8000'0000, kSz4K, 3).ok());
  EXPECT_EQ(pt_->Stats().table_count, 4u);  // root, L1, L2, L3
  auto r = Unmap(0x1'0000'1000, kSz4K);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage), 1u);
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kWalk), 0u);
  EXPECT_EQ(gather_.start, 0x1'0000'1000u);
  EXPECT_EQ(gather_.end, 0x1'0000'1fffu);
  flush_.calls.clear();
  r = Unmap(0x1'0000'0000, kSz4K);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(Phys(0x1'0000'2000), 0x8000'2000u);
  r = Unmap(0x1'0000'2000, kSz4K);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pt_->Stats().table_count, 1u);
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage), 2u);
  // Three tables freed, each after a walk flush over its range.
  ASSERT_EQ(flush_.Count(RecordingFlush::Call::kWalk), 3u);
  const auto& last3 = flush_.calls;
  EXPECT_EQ(last3[2].size_bytes, kSz2M);              // the L3 table's range
  EXPECT_EQ(last3[3].size_bytes, kSz1G);              // the L2 table's
  EXPECT_EQ(last3[4].size_bytes, uint64_t{1} << 39);  // the L1 table's
  EXPECT_EQ(last3[2].iova, 0x1'0000'0000u);
}

TEST_F(LpaePgtableTest, FreedTablesAreCachedAccountedAndReused) {
  ASSERT_TRUE(Map(0x1'0000'0000, 0x8000'0000, kSz4K).ok());
  PgtableStats st = pt_->Stats();
  EXPECT_EQ(st.table_count, 4u);
  EXPECT_EQ(st.table_bytes, 4 * kSz4K);
  EXPECT_EQ(st.cached_table_count, 0u);
  ASSERT_TRUE(Unmap(0x1'0000'0000, kSz4K).ok());
  st = pt_->Stats();
  EXPECT_EQ(st.table_count, 1u) << "freed from the tree";
  EXPECT_EQ(st.table_bytes, kSz4K);
  EXPECT_EQ(st.cached_table_count, 3u) << "kept for reuse, counted apart";
  EXPECT_EQ(st.cached_table_bytes, 3 * kSz4K);
  // A map elsewhere takes its tables from the cache, and they are empty.
  ASSERT_TRUE(Map(0x7f'0000'0000, 0x1000, kSz4K, 2).ok());
  st = pt_->Stats();
  EXPECT_EQ(st.table_count, 4u);
  EXPECT_EQ(st.cached_table_count, 0u);
  EXPECT_EQ(Phys(0x7f'0000'1000), 0x2000u);
  EXPECT_EQ(Phys(0x1'0000'0000), 0u);
  // The cache is bounded: freeing many tables keeps at most 8.
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(Map(i * kSz2M, 0, kSz4K).ok());
  EXPECT_EQ(pt_->Stats().table_count, 4u + 1 + 20) << "the L1 table is shared; one L2, 20 L3";
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(Unmap(i * kSz2M, kSz4K).ok());
  st = pt_->Stats();
  EXPECT_EQ(st.table_count, 4u);
  EXPECT_EQ(st.cached_table_count, 8u);
  EXPECT_EQ(st.cached_table_bytes, 8 * kSz4K);
}

// The live-entry count of a full 64K-granule table (8192) needs the high
// count bits [58:55] of its table descriptor; a 16K table's 2048 needs one.
TEST(LpaeTableCountTest, FullLargeGranuleTables) {
  for (unsigned granule_shift : {14u, 16u}) {
    SCOPED_TRACE(granule_shift);
    RecordingFlush flush;
    IoPgtableCfg cfg;
    cfg.format = IoPgtableFormat::kArm64LpaeS1;
    cfg.pgsize_bitmap = lpae::PgsizeBitmapForGranule(granule_shift);
    cfg.ias = 48;
    cfg.oas = 48;
    auto t = LpaePgtable::Create(cfg, &flush);
    ASSERT_TRUE(t.ok());
    LpaePgtable& pt = **t;
    const uint64_t page = uint64_t{1} << granule_shift;
    const uint64_t entries = page / 8;
    const uint64_t base = entries * page * 3;  // the start of a leaf table's range
    ASSERT_TRUE(pt.MapPages(Iova(base), PhysAddr(0), page, entries, kRW).ok());
    ASSERT_TRUE(pt.CheckInvariants().ok()) << pt.CheckInvariants();
    // One page at a time, the count walks down through every value.
    IotlbGather gather;
    for (uint64_t i = 0; i < entries; ++i) {
      ASSERT_TRUE(pt.UnmapPages(Iova(base + i * page), page, 1, &gather).ok());
      if (i % 509 == 0 || i + 2 >= entries) {
        ASSERT_TRUE(pt.CheckInvariants().ok()) << pt.CheckInvariants() << " i " << i;
      }
    }
    EXPECT_EQ(pt.Stats().table_count, 1u);
    EXPECT_EQ(flush.GatheredLeaves().size(), entries);
    // And up again page by page.
    for (uint64_t i = 0; i < entries; ++i) {
      ASSERT_TRUE(pt.MapPages(Iova(base + i * page), PhysAddr(i * page), page, 1, kRW).ok());
    }
    ASSERT_TRUE(pt.CheckInvariants().ok()) << pt.CheckInvariants();
    EXPECT_EQ(pt.Stats().leaves[0].count, entries);
  }
}

TEST_F(LpaePgtableTest, QueuedGatherSkipsAddPage) {
  ASSERT_TRUE(Map(0x1000, 0x1000, kSz4K, 2).ok());
  gather_.queued = true;
  ASSERT_TRUE(Unmap(0x1000, kSz4K, 2).ok());
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage), 0u);
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPages), 0u);
  EXPECT_TRUE(gather_.empty());
}

TEST_F(LpaePgtableTest, UnmapHolesAreNotFoundAndChangeNothing) {
  auto r = Unmap(0x1000, kSz4K);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), "iova=0x1000: not mapped");
  ASSERT_TRUE(Map(0x1000, 0x1000, kSz4K, 2).ok());
  ASSERT_TRUE(Map(0x4000, 0x4000, kSz4K).ok());
  r = Unmap(0x1000, kSz4K, 4);  // 0x3000 is a hole
  EXPECT_EQ(r.status().message(), "iova=0x3000: not mapped");
  EXPECT_EQ(Phys(0x1000), 0x1000u);
  EXPECT_EQ(Phys(0x2000), 0x2000u);
  EXPECT_TRUE(flush_.calls.empty());
  EXPECT_EQ(Unmap(0x0, kSz2M).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Unmap(0x1001, kSz4K).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Unmap(uint64_t{1} << 48, kSz4K).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Unmap(0x1000, kSz4K, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LpaePgtableTest, UnmapWholeBlocksAndMixedLeaves) {
  ASSERT_TRUE(Map(0, 0x4000'0000, kSz2M).ok());
  ASSERT_TRUE(Map(kSz2M, 0x1000, kSz4K, 512).ok());
  // One 4M range over a block and a full L3 table of pages, in 4K units.
  auto r = Unmap(0, kSz4K, 1024);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 2 * kSz2M);
  // The block alone, then the 512 pages of one table as one run.
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage), 1u);
  ASSERT_EQ(flush_.Count(RecordingFlush::Call::kAddPages), 1u);
  const auto leaves = flush_.GatheredLeaves();
  ASSERT_EQ(leaves.size(), 513u);
  EXPECT_EQ(leaves[0], std::make_pair(uint64_t{0}, kSz2M));
  for (uint64_t i = 0; i < 512; ++i) {
    ASSERT_EQ(leaves[1 + i], std::make_pair(kSz2M + i * kSz4K, kSz4K));
  }
  EXPECT_EQ(gather_.start, 0u);
  EXPECT_EQ(gather_.end, 2 * kSz2M - 1);
  EXPECT_EQ(pt_->Stats().table_count, 1u);
}

TEST_F(LpaePgtableTest, BatchUnmapGathersOneRunPerTable) {
  // 1030 pages from 3 pages before a 1G boundary: runs of 3 | 512 | 512 | 3
  // pages in four L3 tables (under two L2 tables).
  const uint64_t base = kSz1G - 3 * kSz4K;
  ASSERT_TRUE(Map(base, 0x7000'0000, kSz4K, 1030).ok());
  flush_.calls.clear();
  ASSERT_TRUE(Unmap(base, kSz4K, 1030).ok());
  std::vector<uint64_t> runs;
  for (const auto& c : flush_.calls) {
    if (c.kind == RecordingFlush::Call::kAddPages) runs.push_back(c.count);
  }
  EXPECT_EQ(runs, (std::vector<uint64_t>{3, 512, 512, 3}));
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage), 0u);
  const auto leaves = flush_.GatheredLeaves();
  ASSERT_EQ(leaves.size(), 1030u);
  for (uint64_t i = 0; i < 1030; ++i) {
    ASSERT_EQ(leaves[i], std::make_pair(base + i * kSz4K, kSz4K));
  }
  // A batch inside one table (the fast path) is one run too.
  ASSERT_TRUE(Map(0x1000, 0x1000, kSz4K, 64).ok());
  flush_.calls.clear();
  ASSERT_TRUE(Unmap(0x1000, kSz4K, 64).ok());
  ASSERT_EQ(flush_.calls.size(), 4u);  // the run, then three freed tables
  EXPECT_EQ(flush_.calls[0].kind, RecordingFlush::Call::kAddPages);
  EXPECT_EQ(flush_.calls[0].iova, 0x1000u);
  EXPECT_EQ(flush_.calls[0].count, 64u);
  EXPECT_EQ(flush_.calls[0].granule_bytes, kSz4K);
}

// A FlushOps that implements only TlbAddPage still sees every page: the
// default TlbAddPages reports a run page by page.
TEST(LpaeFlushOpsTest, DefaultTlbAddPagesCallsTlbAddPagePerPage) {
  class PerPageFlush final : public FlushOps {
   public:
    void TlbFlushAll() override {}
    void TlbFlushWalk(Iova, uint64_t, uint64_t) override {}
    void TlbAddPage(IotlbGather* gather, Iova iova, uint64_t granule_bytes) override {
      pages.push_back(iova.value());
      gather->AddRange(iova, granule_bytes);
    }
    std::vector<uint64_t> pages;
  } flush;
  auto pt = LpaePgtable::Create(Cfg4K(), &flush);
  ASSERT_TRUE(pt.ok());
  ASSERT_TRUE((*pt)->MapPages(Iova(0x10000), PhysAddr(0), kSz4K, 100, kRW).ok());
  IotlbGather gather;
  ASSERT_TRUE((*pt)->UnmapPages(Iova(0x10000), kSz4K, 100, &gather).ok());
  ASSERT_EQ(flush.pages.size(), 100u);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(flush.pages[i], 0x10000 + i * kSz4K);
  EXPECT_EQ(gather.start, 0x10000u);
  EXPECT_EQ(gather.end, 0x10000 + 100 * kSz4K - 1);
  ASSERT_TRUE((*pt)->CheckInvariants().ok());
}

TEST_F(LpaePgtableTest, PartialBlockUnmapNeedsSplit) {
  ASSERT_TRUE(Map(kSz1G, 0x4000'0000, kSz1G).ok());
  const PgtableStats before = pt_->Stats();
  auto r = Unmap(kSz1G + kSz2M, kSz4K);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(),
            "iova=0x40000000: the 0x40000000-byte block mapped here lies only partly inside the "
            "unmap range [0x40200000, 0x40200fff]; it would split");
  EXPECT_EQ(pt_->Stats().table_count, before.table_count);
  EXPECT_EQ(Phys(kSz1G + kSz2M), 0x4020'0000u);
  EXPECT_TRUE(flush_.calls.empty());
}

TEST_F(LpaePgtableTest, SplitIsBreakBeforeMake) {
  ASSERT_TRUE(Map(kSz1G, 0x4000'0000, kSz1G, 1, kRW | Prot::kCache).ok());
  const uint64_t block_descriptor = pt_->Walk(Iova(kSz1G))->descriptor;
  bool probed = false;
  flush_.on_walk = [&](uint64_t iova, uint64_t size) {
    if (size != kSz1G) return;
    probed = true;
    // At flush time the block is gone and no table is installed yet.
    EXPECT_EQ(iova, kSz1G);
    EXPECT_EQ(pt_->Walk(Iova(kSz1G)).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(pt_->Walk(Iova(2 * kSz1G - 1)).status().code(), absl::StatusCode::kNotFound);
  };
  auto r = Unmap(kSz1G + 3 * kSz2M + 5 * kSz4K, kSz4K, 2, UnmapFlags::kAllowSplit);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 2 * kSz4K);
  EXPECT_TRUE(probed);
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kWalk), 1u);
  EXPECT_EQ(flush_.Count(RecordingFlush::Call::kAddPage), 0u) << "the walk flush covered it";
  // What remains: 511 2M blocks, 510 4K pages, same attributes.
  EXPECT_EQ(Phys(kSz1G + 3 * kSz2M + 5 * kSz4K), 0u);
  EXPECT_EQ(Phys(kSz1G + 3 * kSz2M + 6 * kSz4K), 0u);
  EXPECT_EQ(Phys(kSz1G + 3 * kSz2M + 7 * kSz4K + 9), 0x4060'7009u);
  EXPECT_EQ(Phys(kSz1G + 3 * kSz2M + 4 * kSz4K), 0x4060'4000u);
  EXPECT_EQ(Phys(2 * kSz1G - 1), 0x7fff'ffffu);
  auto w = pt_->Walk(Iova(kSz1G));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->leaf_size_bytes, kSz2M);
  EXPECT_EQ(w->descriptor & ~lpae::kPteAddrMask, block_descriptor & ~lpae::kPteAddrMask);
  EXPECT_EQ(pt_->Walk(Iova(kSz1G + 3 * kSz2M))->leaf_size_bytes, kSz4K);
  const PgtableStats st = pt_->Stats();
  EXPECT_EQ(st.leaves[0].count, 510u);
  EXPECT_EQ(st.leaves[1].count, 511u);
  EXPECT_EQ(st.leaves[2].count, 0u);
  EXPECT_EQ(st.mapped_bytes, kSz1G - 2 * kSz4K);
}

TEST_F(LpaePgtableTest, DestructionFlushesAll) {
  ASSERT_TRUE(Map(0, 0, kSz4K).ok());
  pt_.reset();
  ASSERT_EQ(flush_.calls.size(), 1u);
  EXPECT_EQ(flush_.calls[0].kind, RecordingFlush::Call::kAll);
}

TEST_F(LpaePgtableTest, MapHelperUsesLargestPagesAllOrNothing) {
  // 1G-aligned iova and pa: 4K + 2M-aligned pieces around a 1G block.
  const uint64_t iova = kSz1G - kSz2M - kSz4K;
  const uint64_t pa = 2 * kSz1G - kSz2M - kSz4K;
  const uint64_t size = kSz4K + kSz2M + kSz1G + kSz2M + kSz4K;
  ASSERT_TRUE(pt_->Map(Iova(iova), PhysAddr(pa), size, kRW).ok());
  Check();
  const PgtableStats st = pt_->Stats();
  EXPECT_EQ(st.leaves[0].count, 2u);
  EXPECT_EQ(st.leaves[1].count, 2u);
  EXPECT_EQ(st.leaves[2].count, 1u);
  EXPECT_EQ(Phys(kSz1G + 5), 2 * kSz1G + 5);
  // Overlapping Map fails without trace; so does one whose paddr leaves oas.
  const absl::Status s = pt_->Map(Iova(iova + size - kSz4K), PhysAddr(0), 2 * kSz4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(pt_->Map(Iova(4 * kSz1G), PhysAddr((uint64_t{1} << 40) - kSz4K), 2 * kSz4K, kRW).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(pt_->Stats().mapped_bytes, size);
  auto r = pt_->Unmap(Iova(iova), size, &gather_);
  ASSERT_TRUE(r.ok()) << r.status();
  Check();
  EXPECT_EQ(pt_->Stats().table_count, 1u);
}

TEST_F(LpaePgtableTest, ForEachMappingListsLeavesInOrder) {
  ASSERT_TRUE(Map(kSz1G, 0x4000'0000, kSz2M, 1, Prot::kRead).ok());
  ASSERT_TRUE(Map(0x5000, 0x9000, kSz4K).ok());
  std::vector<PgtableMapping> seen;
  pt_->ForEachMapping([&](const PgtableMapping& m) { seen.push_back(m); });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].iova, Iova(0x5000));
  EXPECT_EQ(seen[0].phys, PhysAddr(0x9000));
  EXPECT_EQ(seen[0].size_bytes, kSz4K);
  EXPECT_EQ(uint32_t(seen[0].prot), uint32_t(kRW));
  EXPECT_EQ(seen[1].iova, Iova(kSz1G));
  EXPECT_EQ(seen[1].size_bytes, kSz2M);
  EXPECT_EQ(uint32_t(seen[1].prot), uint32_t(Prot::kRead));
}

// --- Random sequence against a reference model ---------------------------------

// Reference: leaf start -> (size, pa). Splits decompose a block into the
// largest aligned leaves that avoid the removed range, as the engine does.

struct RandomCase {
  IoPgtableFormat format;
  unsigned granule_shift;
};

class LpaeRandomTest : public testing::TestWithParam<RandomCase> {};

TEST_P(LpaeRandomTest, MatchesReferenceModel) {
  RecordingFlush flush;
  IoPgtableCfg cfg;
  cfg.format = GetParam().format;
  cfg.pgsize_bitmap = lpae::PgsizeBitmapForGranule(GetParam().granule_shift);
  cfg.ias = 48;
  cfg.oas = 48;
  auto created = LpaePgtable::Create(cfg, &flush);
  ASSERT_TRUE(created.ok());
  LpaePgtable& pt = **created;
  std::vector<uint64_t> sizes;
  for (uint64_t b = cfg.pgsize_bitmap; b; b &= b - 1) sizes.push_back(b & (~b + 1));
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> model;  // leaf iova -> (size, pa)
  workloads::Rng rng(7);
  const size_t nsizes = sizes.size();
  // A random iova aligned to sizes[k], in a small window so operations collide.
  // Smaller pages land in a part of the window only, so that larger blocks
  // also find free room: units of the largest size 0..3 for itself, 0..1 for
  // smaller ones; a middle size 0..7 for itself, 0..3 below; 64 small pages.
  auto random_iova = [&](size_t k) {
    uint64_t iova = 0;
    for (size_t j = k; j < nsizes; ++j) {
      const uint64_t limit = j == 0 ? 64 : j == nsizes - 1 ? (j == k ? 4 : 2) : (j == k ? 8 : 4);
      iova += (rng.Next() % limit) * sizes[j];
    }
    return iova;
  };
  auto model_find =
      [&](uint64_t iova) -> std::map<uint64_t, std::pair<uint64_t, uint64_t>>::iterator {
    auto it = model.upper_bound(iova);
    if (it == model.begin()) return model.end();
    --it;
    return it->first + it->second.first - 1 >= iova ? it : model.end();
  };
  // Remove [rf, rl] from a block as the engine's split does: the block
  // becomes next-level entries (bits_per_level = granule_shift - 3 down),
  // partly removed ones recursively.
  std::function<void(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t)> split =
      [&](uint64_t block_iova, uint64_t block_pa, uint64_t block_size, uint64_t rf, uint64_t rl) {
        const uint64_t step = block_size >> (GetParam().granule_shift - 3);
        for (uint64_t off = 0; off < block_size; off += step) {
          const uint64_t f = block_iova + off, l = f + step - 1;
          if (f >= rf && l <= rl) continue;
          if (l < rf || f > rl) {
            model[f] = {step, block_pa + off};
          } else {
            split(f, block_pa + off, step, rf, rl);
          }
        }
      };
  int maps_ok = 0, unmaps_ok = 0, splits = 0;
  for (int op = 0; op < 12000; ++op) {
    const uint64_t r = rng.Next() % 10;
    // Mostly small pages; the largest size (which collides with everything) rarely.
    const uint64_t pick = rng.Next() % 20;
    size_t k = pick < 10 ? 0 : pick < 19 ? nsizes - 2 : nsizes - 1;
    uint64_t size = sizes[k];
    if (r < 5) {  // map 1..4 pages of sizes[k]
      const uint64_t count = 1 + rng.Next() % 4;
      const uint64_t iova = random_iova(k);
      const uint64_t pa = (rng.Next() % 64) * sizes.back() + (iova & (sizes.back() - 1));
      const uint64_t last = iova + size * count - 1;
      // Leaves are disjoint: the range is free iff the last leaf starting at
      // or below `last` ends before `iova`.
      auto after = model.upper_bound(last);
      const bool free = after == model.begin() ||
                        std::prev(after)->first + std::prev(after)->second.first - 1 < iova;
      const absl::Status s = pt.MapPages(Iova(iova), PhysAddr(pa), size, count, Prot::kRead);
      ASSERT_EQ(s.ok(), free) << s << " op " << op;
      if (!free) {
        ASSERT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
      } else {
        ++maps_ok;
        for (uint64_t i = 0; i < count; ++i) model[iova + i * size] = {size, pa + i * size};
      }
    } else if (r < 8) {  // unmap 1..8 pages of sizes[k], maybe allowing splits
      const uint64_t count = 1 + rng.Next() % (k == 0 ? 8 : 2);
      uint64_t iova = random_iova(k);
      if (!model.empty() && rng.Next() % 2) {
        // Aim inside an existing leaf (whole, or a part of it: a split).
        std::vector<std::map<uint64_t, std::pair<uint64_t, uint64_t>>::iterator> blocks;
        for (auto b = model.begin(); b != model.end(); ++b) {
          if (b->second.first > sizes[0]) blocks.push_back(b);
        }
        auto it = model.begin();
        if (!blocks.empty() && rng.Next() % 4 != 0) {
          it = blocks[rng.Next() % blocks.size()];
        } else {
          std::advance(it, rng.Next() % model.size());
        }
        if (rng.Next() % 2) {
          k = std::find(sizes.begin(), sizes.end(), it->second.first) - sizes.begin();
        }
        while (k > 0 && sizes[k] > it->second.first) --k;
        size = sizes[k];
        iova = it->first + (rng.Next() % (it->second.first / size)) * size;
      }
      const uint64_t last = iova + size * count - 1;
      const bool allow_split = rng.Next() % 2;
      absl::StatusCode want = absl::StatusCode::kOk;
      for (uint64_t a = iova; a <= last;) {
        auto it = model_find(a);
        if (it == model.end()) {
          want = absl::StatusCode::kNotFound;
          break;
        }
        const uint64_t lf = it->first, ll = lf + it->second.first - 1;
        if ((lf < iova || ll > last) && !allow_split) {
          want = absl::StatusCode::kFailedPrecondition;
          break;
        }
        a = ll + 1;
      }
      IotlbGather gather;
      flush.calls.clear();
      auto res = pt.UnmapPages(Iova(iova), size, count, &gather,
                               allow_split ? UnmapFlags::kAllowSplit : UnmapFlags::kNone);
      ASSERT_EQ(res.status().code(), want) << res.status() << " op " << op;
      if (!res.ok()) {
        ASSERT_TRUE(flush.calls.empty()) << "a failed unmap makes no flush call";
      }
      if (res.ok()) {
        ++unmaps_ok;
        ASSERT_EQ(*res, size * count);
        // Each leaf removed whole is gathered exactly once, at its size; a
        // split block is covered by a walk flush over the whole block.
        std::vector<std::pair<uint64_t, uint64_t>> whole;
        for (uint64_t a = iova; a <= last;) {
          auto it = model_find(a);
          const uint64_t lf = it->first, lsize = it->second.first, lpa = it->second.second;
          model.erase(it);
          if (lf < iova || lf + lsize - 1 > last) {
            ++splits;
            const bool flushed = std::any_of(
                flush.calls.begin(), flush.calls.end(), [&](const RecordingFlush::Call& c) {
                  return c.kind == RecordingFlush::Call::kWalk && c.iova <= lf &&
                         c.iova + c.size_bytes >= lf + lsize;
                });
            ASSERT_TRUE(flushed) << "split block at " << lf << " op " << op;
            split(lf, lpa, lsize, std::max(iova, lf), std::min(last, lf + lsize - 1));
          } else {
            whole.push_back({lf, lsize});
          }
          a = lf + lsize;
        }
        ASSERT_EQ(flush.GatheredLeaves(), whole) << " op " << op;
      }
    } else {  // translate a few addresses
      for (int i = 0; i < 4; ++i) {
        const uint64_t iova = random_iova(0) + (rng.Next() % sizes[0]);
        auto it = model_find(iova);
        auto pa = pt.IovaToPhys(Iova(iova));
        if (it == model.end()) {
          ASSERT_FALSE(pa.has_value()) << iova;
        } else {
          ASSERT_TRUE(pa.has_value()) << iova;
          ASSERT_EQ(pa->value(), it->second.second + (iova - it->first));
          ASSERT_EQ(pt.Walk(Iova(iova))->leaf_size_bytes, it->second.first);
        }
      }
    }
    ASSERT_TRUE(pt.CheckInvariants().ok()) << pt.CheckInvariants() << " op " << op;
    if (op % 1000 == 0) {
      using Listing = std::vector<std::pair<uint64_t, std::pair<uint64_t, uint64_t>>>;
      Listing listed;
      pt.ForEachMapping([&](const PgtableMapping& m) {
        listed.push_back({m.iova.value(), {m.size_bytes, m.phys.value()}});
      });
      const Listing want(model.begin(), model.end());
      ASSERT_EQ(listed, want);
    }
  }
  EXPECT_GT(maps_ok, 400);
  EXPECT_GT(unmaps_ok, 400);
  EXPECT_GE(splits, 3);
  // Unmap everything: only the root remains.
  while (!model.empty()) {
    auto it = model.begin();
    IotlbGather gather;
    ASSERT_TRUE(pt.UnmapPages(Iova(it->first), it->second.first, 1, &gather).ok());
    model.erase(it);
  }
  ASSERT_TRUE(pt.CheckInvariants().ok());
  EXPECT_EQ(pt.Stats().table_count, 1u);
  EXPECT_EQ(pt.Stats().mapped_bytes, 0u);
}

INSTANTIATE_TEST_SUITE_P(Formats, LpaeRandomTest,
                         testing::Values(RandomCase{IoPgtableFormat::kArm64LpaeS1, 12},
                                         RandomCase{IoPgtableFormat::kArm64LpaeS2, 14},
                                         RandomCase{IoPgtableFormat::kArm64LpaeS1, 16}));

}  // namespace
}  // namespace iommu::core
