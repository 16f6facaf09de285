// SPDX-License-Identifier: Apache-2.0
#include "core/memory/phys_memory.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "core/base/bits.h"
#include "core/base/xorshift.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = uint64_t{1} << 20;

constexpr uint64_t kSramBase = 0x0800'0000;
constexpr uint64_t kSramBytes = 256 * 1024;  // 64 pages
constexpr uint64_t kMsiBase = 0x0900'0000;
constexpr uint64_t kDramBase = 0x8000'0000;
constexpr uint64_t kDramBytes = 64 * kMiB;
// The second dram range starts unaligned (pfn ...003) to exercise carving.
constexpr uint64_t kDram1Base = 0x8200'3000;
constexpr uint64_t kDram1Bytes = 0x0100'0000 - 0x3000;

PhysMemoryConfig TestConfig() {
  PhysMemoryConfig c;
  c.regions = {
      {"dram0", PhysAddr(kDramBase), kDramBytes, RegionKind::kRam},
      {"sram0", PhysAddr(kSramBase), kSramBytes, RegionKind::kRam},
      {"msi", PhysAddr(kMsiBase), kPage, RegionKind::kMmio},
  };
  c.pools = {
      {"dram", 10, {{PhysAddr(kDramBase), 32 * kMiB}, {PhysAddr(kDram1Base), kDram1Bytes}}},
      {"sram", 0, {{PhysAddr(kSramBase), kSramBytes}}},
  };
  return c;
}

std::unique_ptr<PhysMemory> MakeOrDie(const PhysMemoryConfig& c = TestConfig()) {
  absl::StatusOr<std::unique_ptr<PhysMemory>> m = PhysMemory::Create(c);
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

#define EXPECT_INVARIANTS(m) EXPECT_TRUE((m).CheckInvariants().ok()) << (m).CheckInvariants()

const PoolStats& StatsOf(const std::vector<PoolStats>& all, absl::string_view name) {
  for (const PoolStats& s : all) {
    if (s.name == name) return s;
  }
  ADD_FAILURE() << "no pool " << name;
  return all.front();
}

TEST(PhysMemoryTest, CreateRejectsBadConfigs) {
  struct Case {
    const char* what;
    void (*mutate)(PhysMemoryConfig&);
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"page size", [](PhysMemoryConfig& c) { c.page_size_bytes = 1024; },
       absl::StatusCode::kInvalidArgument,
       "page_size_bytes=0x400: must be a power of two in [4 KiB, 2 MiB]"},
      {"empty region name", [](PhysMemoryConfig& c) { c.regions[1].name = ""; },
       absl::StatusCode::kInvalidArgument, "regions[1].name=\"\": must be non-empty"},
      {"bad kind", [](PhysMemoryConfig& c) { c.regions[2].kind = RegionKind(7); },
       absl::StatusCode::kInvalidArgument, "regions[2].kind=0x7: not a region kind"},
      {"misaligned region", [](PhysMemoryConfig& c) { c.regions[2].base = PhysAddr(kMsiBase + 8); },
       absl::StatusCode::kInvalidArgument, "regions[2].base=0x9000008: must be page-aligned"},
      {"zero region", [](PhysMemoryConfig& c) { c.regions[2].size_bytes = 0; },
       absl::StatusCode::kInvalidArgument, "regions[2].size_bytes=0: must be non-zero"},
      {"wrapping region",
       [](PhysMemoryConfig& c) {
         c.regions[2].base = PhysAddr(0xffff'ffff'ffff'f000);
         c.regions[2].size_bytes = 2 * kPage;
       },
       absl::StatusCode::kInvalidArgument, "regions[2].size_bytes=0x2000: range passes 2^64"},
      {"duplicate region", [](PhysMemoryConfig& c) { c.regions[2].name = "dram0"; },
       absl::StatusCode::kAlreadyExists, "regions[2].name=\"dram0\": duplicate region name"},
      {"overlapping regions",
       [](PhysMemoryConfig& c) { c.regions[2].base = PhysAddr(kDramBase + kDramBytes - kPage); },
       absl::StatusCode::kInvalidArgument,
       "regions[2].base=0x83fff000: region \"msi\" of 0x1000 bytes overlaps region \"dram0\" "
       "[0x80000000, +0x4000000)"},
      {"empty pool name", [](PhysMemoryConfig& c) { c.pools[0].name = ""; },
       absl::StatusCode::kInvalidArgument, "pools[0].name=\"\": must be non-empty"},
      {"duplicate pool", [](PhysMemoryConfig& c) { c.pools[1].name = "dram"; },
       absl::StatusCode::kAlreadyExists, "pools[1].name=\"dram\": duplicate pool name"},
      {"pool without ranges", [](PhysMemoryConfig& c) { c.pools[1].ranges.clear(); },
       absl::StatusCode::kInvalidArgument, "pools[1].name=\"sram\": pool has no ranges"},
      {"misaligned range", [](PhysMemoryConfig& c) { c.pools[1].ranges[0].size_bytes = 100; },
       absl::StatusCode::kInvalidArgument,
       "pools[1].ranges[0].size_bytes=0x64: must be a multiple of the page size"},
      {"range past its region",
       [](PhysMemoryConfig& c) { c.pools[1].ranges[0].size_bytes = kSramBytes + kPage; },
       absl::StatusCode::kInvalidArgument,
       "pools[1].ranges[0].base=0x8000000: range of 0x41000 bytes is not inside one RAM region"},
      {"range outside RAM",
       [](PhysMemoryConfig& c) { c.pools[1].ranges[0].base = PhysAddr(0x1000); },
       absl::StatusCode::kInvalidArgument,
       "pools[1].ranges[0].base=0x1000: range of 0x40000 bytes is not inside one RAM region"},
      {"range in MMIO",
       [](PhysMemoryConfig& c) {
         c.pools[1].ranges[0] = {PhysAddr(kMsiBase), kPage};
       },
       absl::StatusCode::kInvalidArgument,
       "pools[1].ranges[0].base=0x9000000: range lies in mmio region \"msi\", not RAM"},
      {"overlapping ranges",
       [](PhysMemoryConfig& c) {
         c.pools[1].ranges[0] = {PhysAddr(kDramBase + 31 * kMiB), 2 * kMiB};
       },
       absl::StatusCode::kInvalidArgument,
       "pools[1].ranges[0].base=0x81f00000: range of 0x200000 bytes overlaps pools[0].ranges[0]"},
  };
  for (const Case& c : cases) {
    PhysMemoryConfig config = TestConfig();
    c.mutate(config);
    absl::StatusOr<std::unique_ptr<PhysMemory>> m = PhysMemory::Create(config);
    EXPECT_EQ(m.status().code(), c.code) << c.what;
    EXPECT_EQ(m.status().message(), c.message) << c.what;
  }
}

TEST(PhysMemoryTest, RegionQueries) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  EXPECT_TRUE(m->IsMmio(PhysAddr(kMsiBase), kPage));
  EXPECT_TRUE(m->IsMmio(PhysAddr(kMsiBase + 0x40), 4));
  EXPECT_FALSE(m->IsMmio(PhysAddr(kMsiBase), kPage + 1));
  EXPECT_FALSE(m->IsMmio(PhysAddr(kMsiBase), 0));
  EXPECT_FALSE(m->IsRam(PhysAddr(kMsiBase), kPage));
  EXPECT_TRUE(m->IsRam(PhysAddr(kDramBase), kDramBytes));
  EXPECT_FALSE(m->IsRam(PhysAddr(kDramBase), kDramBytes + 1));
  EXPECT_FALSE(m->IsRam(PhysAddr(kDramBase - 1), 2));
  EXPECT_FALSE(m->IsRam(PhysAddr(~uint64_t{0}), 2));  // wraps
  ASSERT_NE(m->RegionAt(PhysAddr(kSramBase + 5)), nullptr);
  EXPECT_EQ(m->RegionAt(PhysAddr(kSramBase + 5))->name, "sram0");
  EXPECT_EQ(m->RegionAt(PhysAddr(kSramBase + kSramBytes)), nullptr);
  EXPECT_EQ(m->RegionAt(PhysAddr(0)), nullptr);
  // Sorted by base.
  ASSERT_EQ(m->regions().size(), 3u);
  EXPECT_EQ(m->regions()[0].name, "sram0");
  EXPECT_EQ(m->regions()[2].name, "dram0");
}

TEST(PhysMemoryTest, PoolsInPriorityOrder) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  const std::vector<PoolStats> stats = m->Stats();
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].name, "sram");
  EXPECT_EQ(stats[0].total_pages, 64u);
  EXPECT_EQ(stats[0].free_pages, 64u);
  EXPECT_EQ(stats[0].largest_free_block_bytes, kSramBytes);
  EXPECT_EQ(stats[1].name, "dram");
  EXPECT_EQ(stats[1].total_pages, (32 * kMiB + kDram1Bytes) / kPage);
}

TEST(PhysMemoryTest, ScatteredPagesAreNeverFollowedByTheirSuccessor) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  for (uint64_t pages : {1, 2, 3, 7, 16, 33}) {
    absl::StatusOr<PhysAllocation> a =
        m->AllocPages(pages, pages * kPage - 1, Placement::kScattered);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_INVARIANTS(*m);
    EXPECT_EQ(a->size_bytes, pages * kPage);  // rounded up to whole pages
    ASSERT_EQ(a->runs.size(), pages);
    for (size_t i = 0; i < a->runs.size(); ++i) {
      EXPECT_EQ(a->runs[i].size_bytes, kPage);
      EXPECT_EQ(m->Owner(a->runs[i].start), pages);
      if (i > 0) {
        EXPECT_NE(a->runs[i].start, a->runs[i - 1].start + kPage) << "run " << i;
      }
    }
  }
  // 1+2+3+7+16+33 = 62 pages came from sram; the next 3 spill into dram.
  absl::StatusOr<PhysAllocation> a = m->AllocPages(99, 3 * kPage, Placement::kScattered);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->pool, "dram");
  EXPECT_INVARIANTS(*m);
}

TEST(PhysMemoryTest, ScatteredIsDeterministic) {
  std::unique_ptr<PhysMemory> m1 = MakeOrDie();
  std::unique_ptr<PhysMemory> m2 = MakeOrDie();
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<PhysAllocation> a = m1->AllocPages(1, 37 * kPage, Placement::kScattered, "dram");
    absl::StatusOr<PhysAllocation> b = m2->AllocPages(1, 37 * kPage, Placement::kScattered, "dram");
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->runs, b->runs);
  }
}

TEST(PhysMemoryTest, ContiguousGivesBackTheTail) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  absl::StatusOr<PhysAllocation> a = m->AllocPages(7, 5 * kPage, Placement::kContiguous);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->pool, "sram");
  ASSERT_EQ(a->runs.size(), 1u);
  EXPECT_EQ(a->runs[0], (PhysRun{PhysAddr(kSramBase), 5 * kPage}));
  EXPECT_EQ(m->Stats()[0].free_pages, 59u);  // 8 taken, 3 given back
  EXPECT_EQ(m->Owner(PhysAddr(kSramBase + 4 * kPage)), 7u);
  EXPECT_EQ(m->Owner(PhysAddr(kSramBase + 5 * kPage)), std::nullopt);
  EXPECT_INVARIANTS(*m);
  // 64 pages no longer fit in sram, so a 64-page request falls back to dram.
  absl::StatusOr<PhysAllocation> b = m->AllocPages(7, 64 * kPage, Placement::kContiguous);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->pool, "dram");
  EXPECT_TRUE(IsAligned(b->runs[0].start.value(), 64 * kPage));
  ASSERT_TRUE(m->FreeAllocation(a->id).ok());
  EXPECT_EQ(m->Stats()[0].largest_free_block_bytes, kSramBytes);  // coalesced back
  EXPECT_INVARIANTS(*m);
}

TEST(PhysMemoryTest, HugeRunsAreTwoMibAligned) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  absl::StatusOr<PhysAllocation> a = m->AllocPages(3, 3 * kMiB, Placement::kHuge);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->pool, "dram");  // sram is smaller than 2 MiB
  EXPECT_EQ(a->size_bytes, 4 * kMiB);
  ASSERT_EQ(a->runs.size(), 2u);
  for (const PhysRun& r : a->runs) {
    EXPECT_EQ(r.size_bytes, kHugePageBytes);
    EXPECT_TRUE(IsAligned(r.start.value(), kHugePageBytes));
  }
  EXPECT_TRUE(m->CheckOwned(3, a->runs[1].start, kHugePageBytes).ok());
  EXPECT_INVARIANTS(*m);
  absl::StatusOr<PhysAllocation> s = m->AllocPages(3, kPage, Placement::kHuge, "sram");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(PhysMemoryTest, RequestErrors) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  absl::StatusOr<PhysAllocation> a = m->AllocPages(1, 0, Placement::kScattered);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.status().message(), "size_bytes=0: must be non-zero");
  a = m->AllocPages(1, ~uint64_t{0}, Placement::kScattered);
  EXPECT_EQ(a.status().message(),
            "size_bytes=0xffffffffffffffff: passes 2^64 when rounded up to pages");
  a = m->AllocPages(1, kPage, Placement(9));
  EXPECT_EQ(a.status().message(), "placement=0x9: not a placement");
  a = m->AllocPages(1, kPage, Placement::kScattered, "hbm");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a.status().message(), "pool=\"hbm\": no such pool");
  a = m->AllocPages(1, 65 * kPage, Placement::kContiguous, "sram");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.status().message(),
            "size_bytes=0x41000: contiguous placement of 0x41 pages fits in no pool: \"sram\" "
            "(0x40 pages free, largest free block 0x40000 bytes)");
  a = m->AllocPages(1, uint64_t{1} << 40, Placement::kScattered);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(a.status().message(), HasSubstr("fits in no pool: \"sram\" (0x40 pages free"));
  EXPECT_THAT(a.status().message(), HasSubstr(", \"dram\" ("));
  const std::vector<PoolStats> stats = m->Stats();
  EXPECT_EQ(StatsOf(stats, "sram").failures_total, 2u);
  EXPECT_EQ(StatsOf(stats, "dram").failures_total, 1u);
  EXPECT_EQ(StatsOf(stats, "sram").free_pages, 64u);  // no trace
  EXPECT_EQ(StatsOf(stats, "dram").allocations_total, 0u);
  EXPECT_INVARIANTS(*m);
}

TEST(PhysMemoryTest, FailedAllocationLeavesNoTrace) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  ASSERT_TRUE(m->AllocPages(1, 10 * kPage, Placement::kScattered, "sram").ok());
  ASSERT_TRUE(m->AllocPages(2, 8 * kPage, Placement::kContiguous, "sram").ok());
  const PoolStats before = m->Stats()[0];
  // 46 pages are free but 47 are asked: fails before taking any page.
  EXPECT_EQ(m->AllocPages(3, 47 * kPage, Placement::kScattered, "sram").status().code(),
            absl::StatusCode::kResourceExhausted);
  const PoolStats after = m->Stats()[0];
  EXPECT_EQ(after.free_pages, before.free_pages);
  EXPECT_EQ(after.free_blocks_by_order, before.free_blocks_by_order);
  EXPECT_EQ(after.failures_total, before.failures_total + 1);
  EXPECT_EQ(m->FreeOwner(3).status().code(), absl::StatusCode::kNotFound);
  EXPECT_INVARIANTS(*m);
}

TEST(PhysMemoryTest, OwnershipChecks) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  absl::StatusOr<PhysAllocation> a = m->AllocPages(10, 4 * kPage, Placement::kContiguous, "sram");
  absl::StatusOr<PhysAllocation> b = m->AllocPages(10, 4 * kPage, Placement::kContiguous, "sram");
  absl::StatusOr<PhysAllocation> c = m->AllocPages(11, 4 * kPage, Placement::kContiguous, "sram");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const PhysAddr base = a->runs[0].start;
  ASSERT_EQ(b->runs[0].start, base + 4 * kPage);
  ASSERT_EQ(c->runs[0].start, base + 8 * kPage);
  EXPECT_EQ(m->Owner(base + 0x123), 10u);
  EXPECT_EQ(m->Owner(base + 9 * kPage), 11u);
  EXPECT_EQ(m->Owner(base + 12 * kPage), std::nullopt);
  // Two adjacent allocations of one owner check as one range.
  EXPECT_TRUE(m->CheckOwned(10, base + 0x10, 8 * kPage - 0x20).ok());
  absl::Status s = m->CheckOwned(10, base + 0x10, 8 * kPage);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "phys_addr=0x8008000: page not owned by owner 0xa");
  s = m->CheckOwned(11, base + 10 * kPage, 3 * kPage);
  EXPECT_EQ(s.message(), "phys_addr=0x800c000: page not owned by owner 0xb");
  s = m->CheckOwned(11, PhysAddr(kMsiBase), 4);
  EXPECT_EQ(s.message(), "phys_addr=0x9000000: page not owned by owner 0xb");
  EXPECT_EQ(m->CheckOwned(10, base, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->CheckOwned(10, PhysAddr(~uint64_t{0}), 2).message(),
            "size_bytes=0x2: range at 0xffffffffffffffff passes 2^64");
  // Freeing by owner frees both of owner 10's allocations.
  absl::StatusOr<uint64_t> freed = m->FreeOwner(10);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, 8u);
  EXPECT_EQ(m->Owner(base), std::nullopt);
  EXPECT_EQ(m->FreeAllocation(a->id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->FreeAllocation(a->id).message(),
            absl::StrFormat("allocation_id=%#x: no live allocation (already freed?)", a->id));
  EXPECT_EQ(m->FreeOwner(10).status().message(), "owner_id=0xa: owns no pages");
  ASSERT_TRUE(m->FreeAllocation(c->id).ok());
  EXPECT_EQ(m->FreeAllocation(c->id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Stats()[0].largest_free_block_bytes, kSramBytes);
  EXPECT_EQ(m->Stats()[0].live_allocations, 0u);
  EXPECT_EQ(m->Stats()[0].allocations_total, 3u);
  EXPECT_INVARIANTS(*m);
}

// Random operations against a page -> owner reference map.
TEST(PhysMemoryTest, RandomOpsMatchOwnershipModel) {
  PhysMemoryConfig config = TestConfig();
  config.pools[0].ranges[0].size_bytes = 4 * kMiB;  // small enough to run out
  config.pools[0].ranges[1].size_bytes = 2 * kMiB + kPage * 5;
  std::unique_ptr<PhysMemory> m = MakeOrDie(config);
  std::map<uint64_t, uint64_t> model;  // page -> owner
  std::vector<PhysAllocation> live;
  Xorshift64 rng;
  int ok = 0, exhausted = 0, huge = 0, contiguous = 0;
  for (int op = 0; op < 12000; ++op) {
    const uint64_t r = rng() % 100;
    if (r < 45) {
      const Placement placement = Placement(rng() % 3);
      const uint64_t owner = 1 + rng() % 16;
      const uint64_t size =
          placement == Placement::kHuge ? 1 + rng() % (3 * kMiB) : 1 + rng() % (200 * kPage);
      const absl::string_view pool = rng() % 4 == 0 ? "sram" : "";
      const std::vector<PoolStats> before = m->Stats();
      absl::StatusOr<PhysAllocation> a = m->AllocPages(owner, size, placement, pool);
      if (!a.ok()) {
        ASSERT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted) << a.status();
        ++exhausted;
        // It really did not fit, and nothing changed.
        const std::vector<PoolStats> after = m->Stats();
        for (size_t p = 0; p < after.size(); ++p) {
          ASSERT_EQ(after[p].free_blocks_by_order, before[p].free_blocks_by_order);
          if (placement == Placement::kScattered && (pool.empty() || after[p].name == pool)) {
            ASSERT_LT(after[p].free_pages * kPage, size);
          }
          if (placement == Placement::kContiguous && (pool.empty() || after[p].name == pool)) {
            ASSERT_LT(after[p].largest_free_block_bytes, size);
          }
        }
      } else {
        ++ok;
        huge += placement == Placement::kHuge;
        contiguous += placement == Placement::kContiguous;
        uint64_t total = 0;
        for (const PhysRun& run : a->runs) {
          ASSERT_TRUE(IsAligned(run.start.value(), kPage));
          if (placement == Placement::kHuge) {
            ASSERT_TRUE(IsAligned(run.start.value(), kHugePageBytes));
          }
          for (uint64_t p = run.start.value(); p < run.start.value() + run.size_bytes; p += kPage) {
            ASSERT_TRUE(model.emplace(p, owner).second) << "page handed out twice";
          }
          total += run.size_bytes;
        }
        ASSERT_EQ(total, a->size_bytes);
        ASSERT_GE(a->size_bytes, size);
        if (placement == Placement::kContiguous) {
          ASSERT_EQ(a->runs.size(), 1u);
        }
        // Priority: a scattered request lands in sram whenever it fits there.
        if (placement == Placement::kScattered && pool.empty()) {
          ASSERT_EQ(a->pool == "sram", before[0].free_pages * kPage >= a->size_bytes);
        }
        live.push_back(*std::move(a));
      }
    } else if (r < 80 && !live.empty()) {
      const size_t i = rng() % live.size();
      ASSERT_TRUE(m->FreeAllocation(live[i].id).ok());
      for (const PhysRun& run : live[i].runs) {
        for (uint64_t p = run.start.value(); p < run.start.value() + run.size_bytes; p += kPage) {
          model.erase(p);
        }
      }
      ASSERT_EQ(m->FreeAllocation(live[i].id).code(), absl::StatusCode::kNotFound);
      live[i] = std::move(live.back());
      live.pop_back();
    } else if (r < 83) {
      const uint64_t owner = 1 + rng() % 16;
      uint64_t expected = 0;
      for (auto it = model.begin(); it != model.end();) {
        if (it->second == owner) {
          it = model.erase(it);
          ++expected;
        } else {
          ++it;
        }
      }
      absl::StatusOr<uint64_t> freed = m->FreeOwner(owner);
      if (expected == 0) {
        ASSERT_EQ(freed.status().code(), absl::StatusCode::kNotFound);
      } else {
        ASSERT_TRUE(freed.ok());
        ASSERT_EQ(*freed, expected);
      }
      std::erase_if(live, [owner](const PhysAllocation& a) { return a.owner_id == owner; });
    } else {
      // Queries: a random page of a random pool range, and a short range.
      const uint64_t bases[] = {kSramBase, kDramBase, kDram1Base};
      const uint64_t page = bases[rng() % 3] + (rng() % 1024) * kPage;
      auto it = model.find(page);
      const std::optional<uint64_t> want =
          it == model.end() ? std::nullopt : std::optional<uint64_t>(it->second);
      ASSERT_EQ(m->Owner(PhysAddr(page + rng() % kPage)), want);
      const uint64_t owner = want.value_or(1 + rng() % 16);
      const uint64_t pages = 1 + rng() % 4;
      bool all = true;
      uint64_t first_bad = 0;
      for (uint64_t i = 0; i < pages && all; ++i) {
        auto o = model.find(page + i * kPage);
        if (o == model.end() || o->second != owner) {
          all = false;
          first_bad = page + i * kPage;
        }
      }
      absl::Status s = m->CheckOwned(owner, PhysAddr(page), pages * kPage);
      ASSERT_EQ(s.ok(), all);
      if (!all) {
        ASSERT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
        ASSERT_THAT(s.message(), HasSubstr(absl::StrFormat("phys_addr=%#x:", first_bad)));
      }
    }
    ASSERT_TRUE(m->CheckInvariants().ok()) << "op " << op << ": " << m->CheckInvariants();
  }
  EXPECT_GT(ok, 2000);
  EXPECT_GT(exhausted, 50);
  EXPECT_GT(huge, 100);
  EXPECT_GT(contiguous, 500);
  for (const PhysAllocation& a : live) ASSERT_TRUE(m->FreeAllocation(a.id).ok());
  for (const PoolStats& s : m->Stats()) EXPECT_EQ(s.free_pages, s.total_pages);
  EXPECT_INVARIANTS(*m);
}

// --- ClaimPages ---------------------------------------------------------------

// The pools' observable state, all but the lifetime totals (allocations_total,
// failures_total), which a restored PhysMemory does not share.
void ExpectSamePools(const PhysMemory& a, const PhysMemory& b) {
  const std::vector<PoolStats> sa = a.Stats();
  const std::vector<PoolStats> sb = b.Stats();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t p = 0; p < sa.size(); ++p) {
    SCOPED_TRACE(sa[p].name);
    EXPECT_EQ(sa[p].name, sb[p].name);
    EXPECT_EQ(sa[p].total_pages, sb[p].total_pages);
    EXPECT_EQ(sa[p].free_pages, sb[p].free_pages);
    EXPECT_EQ(sa[p].allocated_pages, sb[p].allocated_pages);
    EXPECT_EQ(sa[p].largest_free_block_bytes, sb[p].largest_free_block_bytes);
    EXPECT_EQ(sa[p].free_blocks_by_order, sb[p].free_blocks_by_order);
    EXPECT_EQ(sa[p].live_allocations, sb[p].live_allocations);
  }
}

TEST(PhysMemoryTest, ClaimPagesErrorsNameTheRunAndChangeNothing) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  // Owner 5 holds sram pages 0-3 (allocation 1), owner 6 pages 8-9
  // (allocation 2).
  absl::StatusOr<PhysAllocation> a = m->AllocPages(5, 4 * kPage, Placement::kContiguous, "sram");
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->runs, (std::vector<PhysRun>{PhysRun{PhysAddr(kSramBase), 4 * kPage}}));
  const PhysRun six{PhysAddr(kSramBase + 8 * kPage), 2 * kPage};
  absl::StatusOr<PhysAllocation> b = m->ClaimPages(6, "sram", Placement::kContiguous, {six});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_INVARIANTS(*m);
  const uint64_t s = kSramBase;
  struct Case {
    const char* pool;
    Placement placement;
    std::vector<PhysRun> runs;
    absl::StatusCode code;
    std::string message;
  };
  const Case cases[] = {
      {"sram",
       Placement(9),
       {{PhysAddr(s + 0x10000), kPage}},
       absl::StatusCode::kInvalidArgument,
       "placement=0x9: not a placement"},
      {"sram",
       Placement::kScattered,
       {},
       absl::StatusCode::kInvalidArgument,
       "runs=0: must hold at least one run"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage}, {PhysAddr(s + 0x20000), 0}},
       absl::StatusCode::kInvalidArgument,
       "runs[1].size_bytes=0: must be non-zero"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10800), kPage}},
       absl::StatusCode::kInvalidArgument,
       "runs[0].start=0x8010800: must be page-aligned"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), 0x1800}},
       absl::StatusCode::kInvalidArgument,
       "runs[0].size_bytes=0x1800: must be a multiple of the page size"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(0xffff'ffff'ffff'f000), 2 * kPage}},
       absl::StatusCode::kInvalidArgument,
       "runs[0].size_bytes=0x2000: run at 0xfffffffffffff000 passes 2^64"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), 2 * kPage},
        {PhysAddr(s + 0x20000), kPage},
        {PhysAddr(s + 0x11000), kPage}},
       absl::StatusCode::kInvalidArgument,
       "runs[2].start=0x8011000: overlaps runs[0] [0x8010000, +0x2000)"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x11000), kPage}, {PhysAddr(s + 0x10000), 2 * kPage}},
       absl::StatusCode::kInvalidArgument,
       "runs[1].start=0x8010000: overlaps runs[0] [0x8011000, +0x1000)"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage}, {PhysAddr(s + 0x10000), kPage}},
       absl::StatusCode::kInvalidArgument,
       "runs[1].start=0x8010000: overlaps runs[0] [0x8010000, +0x1000)"},
      {"hbm",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage}},
       absl::StatusCode::kNotFound,
       "pool=\"hbm\": no such pool"},
      {"",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage}},
       absl::StatusCode::kNotFound,
       "pool=\"\": no such pool"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage}, {PhysAddr(kDramBase), kPage}},
       absl::StatusCode::kOutOfRange,
       "runs[1].start=0x80000000: run of 0x1000 bytes not inside one range of pool \"sram\""},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + kSramBytes - kPage), 2 * kPage}},
       absl::StatusCode::kOutOfRange,
       "runs[0].start=0x803f000: run of 0x2000 bytes not inside one range of pool \"sram\""},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(kMsiBase), kPage}},
       absl::StatusCode::kOutOfRange,
       "runs[0].start=0x9000000: run of 0x1000 bytes not inside one range of pool \"sram\""},
      // Across the gap between dram's two ranges.
      {"dram",
       Placement::kContiguous,
       {{PhysAddr(kDramBase + 32 * kMiB - kPage), 4 * kPage}},
       absl::StatusCode::kOutOfRange,
       "runs[0].start=0x81fff000: run of 0x4000 bytes not inside one range of pool \"dram\""},
      // The first run is claimed, then given back when the second fails.
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage}, {PhysAddr(s + 2 * kPage), 4 * kPage}},
       absl::StatusCode::kFailedPrecondition,
       "runs[1].page=0x8002000: already allocated (owner 0x5, allocation 0x1)"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 0x10000), kPage},
        {PhysAddr(s + 0x20000), 4 * kPage},
        {PhysAddr(s + 6 * kPage), 4 * kPage}},
       absl::StatusCode::kFailedPrecondition,
       "runs[2].page=0x8008000: already allocated (owner 0x6, allocation 0x2)"},
      {"sram",
       Placement::kScattered,
       {{PhysAddr(s + 9 * kPage), kPage}},
       absl::StatusCode::kFailedPrecondition,
       "runs[0].page=0x8009000: already allocated (owner 0x6, allocation 0x2)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    const std::vector<PoolStats> before = m->Stats();
    absl::StatusOr<PhysAllocation> r = m->ClaimPages(7, c.pool, c.placement, c.runs);
    EXPECT_EQ(r.status().code(), c.code);
    EXPECT_EQ(r.status().message(), c.message);
    const std::vector<PoolStats> after = m->Stats();
    for (size_t p = 0; p < after.size(); ++p) {
      EXPECT_EQ(after[p].free_pages, before[p].free_pages);
      EXPECT_EQ(after[p].free_blocks_by_order, before[p].free_blocks_by_order);
      EXPECT_EQ(after[p].allocated_pages, before[p].allocated_pages);
      EXPECT_EQ(after[p].live_allocations, before[p].live_allocations);
      EXPECT_EQ(after[p].allocations_total, before[p].allocations_total);
      EXPECT_EQ(after[p].failures_total, before[p].failures_total);
    }
    EXPECT_EQ(m->Owner(PhysAddr(s + 0x10000)), std::nullopt);
    EXPECT_EQ(m->FreeOwner(7).status().code(), absl::StatusCode::kNotFound);
    EXPECT_INVARIANTS(*m);
  }
  // No failure used up an allocation id.
  absl::StatusOr<PhysAllocation> next =
      m->ClaimPages(7, "sram", Placement::kScattered, {{PhysAddr(s + 0x10000), kPage}});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->id, 3u);
  EXPECT_INVARIANTS(*m);
}

TEST(PhysMemoryTest, ClaimPagesIsAccountedLikeAllocPages) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  // Scattered pages in the owner's order (not address order), two of them
  // physically adjacent in reverse order, and one run in each dram range.
  const std::vector<PhysRun> runs = {
      {PhysAddr(kSramBase + 9 * kPage), kPage},
      {PhysAddr(kSramBase + 3 * kPage), kPage},
      {PhysAddr(kSramBase + 8 * kPage), kPage},
      {PhysAddr(kSramBase + 20 * kPage), 5 * kPage},
  };
  absl::StatusOr<PhysAllocation> a = m->ClaimPages(42, "sram", Placement::kScattered, runs);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_INVARIANTS(*m);
  EXPECT_EQ(a->id, 1u);
  EXPECT_EQ(a->owner_id, 42u);
  EXPECT_EQ(a->pool, "sram");
  EXPECT_EQ(a->placement, Placement::kScattered);
  EXPECT_EQ(a->size_bytes, 8 * kPage);
  EXPECT_EQ(a->runs, runs);
  const std::vector<PhysRun> dram_runs = {
      {PhysAddr(kDram1Base + 5 * kPage), 3 * kPage},
      {PhysAddr(kDramBase + 2 * kHugePageBytes), kHugePageBytes},
  };
  absl::StatusOr<PhysAllocation> d = m->ClaimPages(43, "dram", Placement::kHuge, dram_runs);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->id, 2u);
  EXPECT_EQ(d->size_bytes, kHugePageBytes + 3 * kPage);
  EXPECT_INVARIANTS(*m);
  // Ownership.
  for (const PhysRun& r : runs) {
    EXPECT_EQ(m->Owner(r.start + (r.size_bytes - 1)), 42u);
    EXPECT_TRUE(m->CheckOwned(42, r.start, r.size_bytes).ok());
  }
  EXPECT_TRUE(m->CheckOwned(42, PhysAddr(kSramBase + 8 * kPage), 2 * kPage).ok());
  EXPECT_EQ(m->Owner(PhysAddr(kSramBase + 7 * kPage)), std::nullopt);
  EXPECT_EQ(m->CheckOwned(42, PhysAddr(kSramBase + 3 * kPage), 2 * kPage).code(),
            absl::StatusCode::kPermissionDenied);
  for (const PhysRun& r : dram_runs) EXPECT_TRUE(m->CheckOwned(43, r.start, r.size_bytes).ok());
  // Pool counters.
  std::vector<PoolStats> stats = m->Stats();
  EXPECT_EQ(StatsOf(stats, "sram").allocated_pages, 8u);
  EXPECT_EQ(StatsOf(stats, "sram").free_pages, 56u);
  EXPECT_EQ(StatsOf(stats, "sram").live_allocations, 1u);
  EXPECT_EQ(StatsOf(stats, "sram").allocations_total, 1u);
  EXPECT_EQ(StatsOf(stats, "dram").allocated_pages, kHugePageBytes / kPage + 3);
  EXPECT_EQ(StatsOf(stats, "dram").live_allocations, 1u);
  // Normal allocations never hand out a claimed page: take all of sram.
  absl::StatusOr<PhysAllocation> rest =
      m->AllocPages(44, 56 * kPage, Placement::kScattered, "sram");
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_INVARIANTS(*m);
  for (const PhysRun& r : rest->runs) {
    for (const PhysRun& c : runs) {
      EXPECT_TRUE(r.start + r.size_bytes <= c.start || c.start + c.size_bytes <= r.start)
          << r.start << " overlaps claimed " << c.start;
    }
  }
  EXPECT_EQ(m->AllocPages(44, kPage, Placement::kScattered, "sram").status().code(),
            absl::StatusCode::kResourceExhausted);
  // Freed like any allocation: by id and by owner.
  ASSERT_TRUE(m->FreeAllocation(a->id).ok());
  EXPECT_EQ(m->FreeAllocation(a->id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Owner(runs[0].start), std::nullopt);
  EXPECT_INVARIANTS(*m);
  absl::StatusOr<uint64_t> freed = m->FreeOwner(43);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, kHugePageBytes / kPage + 3);
  ASSERT_TRUE(m->FreeOwner(44).ok());
  EXPECT_INVARIANTS(*m);
  ExpectSamePools(*m, *MakeOrDie());
  stats = m->Stats();
  EXPECT_EQ(StatsOf(stats, "sram").allocations_total, 2u);
  EXPECT_EQ(StatsOf(stats, "dram").allocations_total, 1u);
}

// Allocate a random mix with AllocPages, record it, claim every recorded
// allocation into a fresh PhysMemory, and compare.
TEST(PhysMemoryTest, ClaimPagesRestoresRecordedAllocations) {
  PhysMemoryConfig config = TestConfig();
  config.pools[0].ranges[0].size_bytes = 8 * kMiB;
  config.pools[0].ranges[1].size_bytes = 4 * kMiB + 5 * kPage;
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    SCOPED_TRACE(seed);
    std::unique_ptr<PhysMemory> original = MakeOrDie(config);
    Xorshift64 rng(seed);
    std::vector<PhysAllocation> live;
    for (int op = 0; op < 1500; ++op) {
      if (rng() % 3 != 0 || live.empty()) {
        const Placement placement = Placement(rng() % 3);
        const uint64_t size =
            placement == Placement::kHuge ? 1 + rng() % (3 * kMiB) : 1 + rng() % (40 * kPage);
        absl::StatusOr<PhysAllocation> a =
            original->AllocPages(1 + rng() % 8, size, placement, rng() % 4 == 0 ? "sram" : "");
        if (a.ok()) live.push_back(*std::move(a));
      } else {
        const size_t i = rng() % live.size();
        ASSERT_TRUE(original->FreeAllocation(live[i].id).ok());
        live[i] = std::move(live.back());
        live.pop_back();
      }
    }
    ASSERT_TRUE(original->CheckInvariants().ok()) << original->CheckInvariants();
    ASSERT_GT(live.size(), 50u);
    // Restore in a random order.
    std::unique_ptr<PhysMemory> restored = MakeOrDie(config);
    std::vector<size_t> order(live.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
    std::vector<PhysAllocation> claimed(live.size());
    for (size_t i : order) {
      const PhysAllocation& a = live[i];
      absl::StatusOr<PhysAllocation> c =
          restored->ClaimPages(a.owner_id, a.pool, a.placement, a.runs);
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_EQ(c->runs, a.runs);
      EXPECT_EQ(c->size_bytes, a.size_bytes);
      EXPECT_EQ(c->pool, a.pool);
      claimed[i] = *std::move(c);
      ASSERT_TRUE(restored->CheckInvariants().ok()) << restored->CheckInvariants();
    }
    ExpectSamePools(*restored, *original);
    for (const PhysAllocation& a : live) {
      for (const PhysRun& r : a.runs) {
        ASSERT_TRUE(restored->CheckOwned(a.owner_id, r.start, r.size_bytes).ok());
        ASSERT_EQ(restored->Owner(r.start), a.owner_id);
      }
      // Claiming it a second time fails and changes nothing.
      ASSERT_EQ(restored->ClaimPages(a.owner_id, a.pool, a.placement, a.runs).status().code(),
                absl::StatusCode::kFailedPrecondition);
    }
    ExpectSamePools(*restored, *original);
    // The same further requests succeed or fail alike on both (their free
    // blocks are alike), and none hands out a claimed page (the ownership
    // map would overlap: CheckInvariants; and the claims still check owned).
    std::vector<PhysAllocation> extra_o, extra_r;
    for (int i = 0; i < 200; ++i) {
      const Placement placement = Placement(rng() % 3);
      const uint64_t size =
          placement == Placement::kHuge ? 1 + rng() % (3 * kMiB) : 1 + rng() % (40 * kPage);
      const uint64_t owner = 100 + rng() % 4;
      absl::StatusOr<PhysAllocation> o = original->AllocPages(owner, size, placement);
      absl::StatusOr<PhysAllocation> r = restored->AllocPages(owner, size, placement);
      ASSERT_EQ(o.ok(), r.ok());
      if (!r.ok()) continue;
      ASSERT_EQ(r->runs.size(), o->runs.size());
      ASSERT_TRUE(restored->CheckInvariants().ok()) << restored->CheckInvariants();
      extra_o.push_back(*std::move(o));
      extra_r.push_back(*std::move(r));
    }
    ExpectSamePools(*restored, *original);
    for (const PhysAllocation& a : live) {
      for (const PhysRun& r : a.runs) {
        ASSERT_TRUE(restored->CheckOwned(a.owner_id, r.start, r.size_bytes).ok());
      }
    }
    // Freeing everything returns both to the initial state.
    for (const PhysAllocation& a : extra_o) ASSERT_TRUE(original->FreeAllocation(a.id).ok());
    for (const PhysAllocation& a : extra_r) ASSERT_TRUE(restored->FreeAllocation(a.id).ok());
    for (const PhysAllocation& a : live) ASSERT_TRUE(original->FreeAllocation(a.id).ok());
    for (const PhysAllocation& a : claimed) {
      ASSERT_TRUE(restored->FreeAllocation(a.id).ok());
      ASSERT_TRUE(restored->CheckInvariants().ok()) << restored->CheckInvariants();
    }
    const std::unique_ptr<PhysMemory> fresh = MakeOrDie(config);
    ExpectSamePools(*original, *fresh);
    ExpectSamePools(*restored, *fresh);
    EXPECT_INVARIANTS(*original);
  }
}

TEST(PhysMemoryTest, ConcurrentOwnersNeverShareAPage) {
  std::unique_ptr<PhysMemory> m = MakeOrDie();
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<int> violations(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&m, &violations, t] {
      const uint64_t owner = 100 + t;
      for (int i = 0; i < 500; ++i) {
        absl::StatusOr<PhysAllocation> a =
            m->AllocPages(owner, (1 + i % 9) * kPage, Placement(i % 2));
        if (!a.ok()) {
          ++violations[t];
          continue;
        }
        for (const PhysRun& r : a->runs) {
          if (!m->CheckOwned(owner, r.start, r.size_bytes).ok()) ++violations[t];
        }
        if (!m->FreeAllocation(a->id).ok()) ++violations[t];
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(violations, ElementsAre(0, 0, 0, 0));
  for (const PoolStats& s : m->Stats()) {
    EXPECT_EQ(s.free_pages, s.total_pages);
    EXPECT_EQ(s.live_allocations, 0u);
  }
  EXPECT_EQ(m->Stats()[0].allocations_total + m->Stats()[1].allocations_total, 2000u);
  EXPECT_INVARIANTS(*m);
}

}  // namespace
}  // namespace iommu::core
