// SPDX-License-Identifier: Apache-2.0
#include "core/memory/buddy_allocator.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/xorshift.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;

BuddyAllocator Make(uint64_t base, uint64_t size_bytes, BuddyOptions options = {}) {
  absl::StatusOr<BuddyAllocator> b = BuddyAllocator::Create(PhysAddr(base), size_bytes, options);
  EXPECT_TRUE(b.ok()) << b.status();
  return *std::move(b);
}

#define EXPECT_INVARIANTS(b) EXPECT_TRUE((b).CheckInvariants().ok()) << (b).CheckInvariants()

TEST(BuddyAllocatorTest, CreateRejectsBadGeometry) {
  struct Case {
    uint64_t base, size_bytes, page;
    std::optional<unsigned> max_order;
    const char* message;
  };
  const Case cases[] = {
      {0x1000, 0x1000, 3000, {}, "page_size_bytes=0xbb8: must be a power of two >= 64"},
      {0x1000, 0x1000, 32, {}, "page_size_bytes=0x20: must be a power of two >= 64"},
      {0x1800, 0x1000, 4096, {}, "base=0x1800: must be page-aligned"},
      {0x1000, 0, 4096, {}, "size_bytes=0: must be non-zero"},
      {0x1000, 0x1800, 4096, {}, "size_bytes=0x1800: must be a multiple of the page size"},
      {0xfffffffffffff000, 0x2000, 4096, {}, "size_bytes=0x2000: range passes 2^64"},
      {0, uint64_t{1} << 44, 4096, {}, "size_bytes=0x100000000000: more than 2^32 - 1 pages"},
      {0, 0x1000, 4096, 32, "max_order=0x20: above the largest supported order 31"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<BuddyAllocator> b =
        BuddyAllocator::Create(PhysAddr(c.base), c.size_bytes, {c.page, c.max_order});
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(b.status().message(), c.message);
  }
}

TEST(BuddyAllocatorTest, DefaultMaxOrderIsOneGibOrTheRange) {
  EXPECT_EQ(Make(0, 8 * kPage).max_order(), 3u);
  EXPECT_EQ(Make(0, 9 * kPage).max_order(), 3u);
  EXPECT_EQ(Make(0, uint64_t{4} << 30).max_order(), 18u);  // 1 GiB of 4 KiB pages
  EXPECT_EQ(Make(0, uint64_t{4} << 30, {65536, {}}).max_order(), 14u);
}

TEST(BuddyAllocatorTest, UnalignedRangeIsCarvedIntoMaximalAlignedBlocks) {
  // pfns [3, 21): blocks 3(o0) 4(o2) 8(o3) 16(o2) 20(o0).
  BuddyAllocator b = Make(3 * kPage, 18 * kPage);
  EXPECT_INVARIANTS(b);
  EXPECT_THAT(b.FreeBlocks(),
              ElementsAre(BuddyBlock{PhysAddr(3 * kPage), 0}, BuddyBlock{PhysAddr(4 * kPage), 2},
                          BuddyBlock{PhysAddr(8 * kPage), 3}, BuddyBlock{PhysAddr(16 * kPage), 2},
                          BuddyBlock{PhysAddr(20 * kPage), 0}));
  EXPECT_EQ(b.free_pages(), 18u);
  EXPECT_EQ(*b.LargestFreeOrder(), 3u);
  EXPECT_EQ(b.AvailableBlocks(2), 4u);  // 4, 8, 12, 16
}

TEST(BuddyAllocatorTest, SplitsAndCoalesces) {
  BuddyAllocator b = Make(0x100000, 16 * kPage);
  absl::StatusOr<PhysAddr> a = b.Allocate(0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, PhysAddr(0x100000));
  EXPECT_INVARIANTS(b);
  // Split 16 -> 8 + 4 + 2 + 1 + [1 allocated].
  EXPECT_THAT(b.Stats().free_blocks_by_order, ElementsAre(1, 1, 1, 1, 0));
  absl::StatusOr<PhysAddr> c = b.Allocate(0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, PhysAddr(0x101000));  // the buddy page
  absl::StatusOr<PhysAddr> d = b.Allocate(2);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, PhysAddr(0x104000));
  EXPECT_TRUE(IsAligned(d->value(), 4 * kPage));
  EXPECT_INVARIANTS(b);
  ASSERT_TRUE(b.Free(*a, 0).ok());
  EXPECT_INVARIANTS(b);
  ASSERT_TRUE(b.Free(*c, 0).ok());
  EXPECT_INVARIANTS(b);
  ASSERT_TRUE(b.Free(*d, 2).ok());
  EXPECT_INVARIANTS(b);
  EXPECT_THAT(b.FreeBlocks(), ElementsAre(BuddyBlock{PhysAddr(0x100000), 4}));
  EXPECT_EQ(b.free_pages(), 16u);
}

TEST(BuddyAllocatorTest, MaxOrderBlocksDoNotCoalesce) {
  BuddyAllocator b = Make(0, 16 * kPage, {kPage, 2});
  EXPECT_EQ(b.Stats().free_blocks_by_order[2], 4u);
  EXPECT_INVARIANTS(b);
  absl::StatusOr<PhysAddr> a = b.Allocate(3);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.status().message(), "order=0x3: above the allocator's max_order 2");
}

TEST(BuddyAllocatorTest, ExhaustionNamesOrderAndLargestFree) {
  BuddyAllocator b = Make(0, 8 * kPage);
  ASSERT_TRUE(b.Allocate(2).ok());
  ASSERT_TRUE(b.Allocate(1).ok());
  absl::StatusOr<PhysAddr> a = b.Allocate(2);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.status().message(),
            "order=0x2: no free block of 0x4 pages; largest free block is 0x2 pages");
  EXPECT_INVARIANTS(b);
  EXPECT_EQ(b.free_pages(), 2u);
}

TEST(BuddyAllocatorTest, FreeRejectsBadBlocksAndDoubleFree) {
  BuddyAllocator b = Make(0x10000, 16 * kPage);
  absl::StatusOr<PhysAddr> a = b.Allocate(2);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(b.Free(*a + kPage, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.Free(*a + kPage, 2).message(), "block=0x11000: not aligned to its size 0x4000");
  EXPECT_EQ(b.Free(PhysAddr(0x8000), 0).message(),
            "block=0x8000: block of 0x1000 bytes outside the range [0x10000, +0x10000)");
  EXPECT_EQ(b.Free(*a, 5).code(), absl::StatusCode::kInvalidArgument);
  // Freeing a page of the still-free remainder is a double free.
  absl::Status s = b.Free(PhysAddr(0x18000), 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "block=0x18000: not allocated (already free)");
  EXPECT_TRUE(b.Free(*a, 2).ok());
  EXPECT_EQ(b.Free(*a, 2).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b.Free(*a + kPage, 0).code(), absl::StatusCode::kNotFound);
  EXPECT_INVARIANTS(b);
  EXPECT_EQ(b.free_pages(), 16u);
}

TEST(BuddyAllocatorTest, FreeRangeGivesBackTheTailLikeAllocPagesExact) {
  BuddyAllocator b = Make(0, 16 * kPage);
  absl::StatusOr<PhysAddr> a = b.Allocate(3);  // 8 pages for a 5-page request
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.FreeRange(*a + 5 * kPage, 3).ok());
  EXPECT_INVARIANTS(b);
  EXPECT_EQ(b.free_pages(), 11u);
  EXPECT_THAT(b.FreeBlocks(),
              ElementsAre(BuddyBlock{PhysAddr(5 * kPage), 0}, BuddyBlock{PhysAddr(6 * kPage), 1},
                          BuddyBlock{PhysAddr(8 * kPage), 3}));
  // A range one of whose blocks starts on a free page fails and frees nothing:
  // [0, 7) is blocks 0(o2) 4(o1) 6(o0), and block 6 starts on a free page.
  EXPECT_EQ(b.FreeRange(*a, 7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b.FreeRange(*a, 7).message(), "block=0x6000: not allocated (already free)");
  EXPECT_EQ(b.free_pages(), 11u);
  EXPECT_INVARIANTS(b);
  EXPECT_EQ(b.FreeRange(*a, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.FreeRange(*a, 17).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(b.FreeRange(*a, 5).ok());
  EXPECT_INVARIANTS(b);
  EXPECT_THAT(b.FreeBlocks(), ElementsAre(BuddyBlock{PhysAddr(0), 4}));
}

// Reference model: one bool per page. Because coalescing is complete, an
// order-k allocation succeeds exactly when some naturally aligned window of
// 2^k pages inside the range is entirely free.
class Model {
 public:
  Model(uint64_t base_pfn, uint64_t num_pages, unsigned max_order)
      : base_pfn_(base_pfn), free_(num_pages, true), max_order_(max_order) {}

  bool WindowFree(uint64_t pfn, unsigned order) const {
    if (pfn < base_pfn_ || pfn + (uint64_t{1} << order) > base_pfn_ + free_.size()) return false;
    for (uint64_t i = 0; i < (uint64_t{1} << order); ++i) {
      if (!free_[pfn - base_pfn_ + i]) return false;
    }
    return true;
  }
  bool CanAllocate(unsigned order) const {
    const uint64_t step = uint64_t{1} << order;
    for (uint64_t pfn = AlignUp(base_pfn_, step).value(); pfn + step <= base_pfn_ + free_.size();
         pfn += step) {
      if (WindowFree(pfn, order)) return true;
    }
    return false;
  }
  std::optional<unsigned> LargestFreeOrder() const {
    for (unsigned k = max_order_ + 1; k-- > 0;) {
      if (CanAllocate(k)) return k;
    }
    return std::nullopt;
  }
  void Set(uint64_t pfn, uint64_t count, bool is_free) {
    for (uint64_t i = 0; i < count; ++i) free_[pfn - base_pfn_ + i] = is_free;
  }
  uint64_t FreePages() const { return std::count(free_.begin(), free_.end(), true); }

 private:
  uint64_t base_pfn_;
  std::vector<bool> free_;
  unsigned max_order_;
};

void RandomOps(uint64_t base_pfn, uint64_t num_pages, std::optional<unsigned> max_order_opt,
               uint64_t seed) {
  BuddyAllocator b = Make(base_pfn * kPage, num_pages * kPage, {kPage, max_order_opt});
  const unsigned max_order = b.max_order();
  Model model(base_pfn, num_pages, max_order);
  struct Live {
    uint64_t pfn, count;
  };
  std::vector<Live> live;
  Xorshift64 rng(seed);
  int allocs = 0, failures = 0, partial_frees = 0;
  for (int op = 0; op < 12000; ++op) {
    const uint64_t r = rng() % 100;
    if (r < 55 || live.empty()) {
      // Small orders dominate, as for real page allocations.
      const unsigned order = unsigned(rng() % 3 == 0 ? rng() % (max_order + 2) : rng() % 3);
      absl::StatusOr<PhysAddr> a = b.Allocate(order);
      if (order > max_order) {
        ASSERT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
        continue;
      }
      ASSERT_EQ(a.ok(), model.CanAllocate(order)) << "op " << op << " order " << order;
      if (!a.ok()) {
        ASSERT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
        ++failures;
      } else {
        const uint64_t pfn = a->value() / kPage;
        ASSERT_TRUE(IsAligned(pfn, uint64_t{1} << order));
        ASSERT_TRUE(model.WindowFree(pfn, order)) << "handed out a non-free block";
        model.Set(pfn, uint64_t{1} << order, false);
        live.push_back({pfn, uint64_t{1} << order});
        ++allocs;
      }
    } else if (r < 95) {
      const size_t i = rng() % live.size();
      const Live l = live[i];
      if (l.count > 1 && rng() % 2 == 0) {
        // Give back a tail, keep the head live (alloc_pages_exact style).
        const uint64_t keep = 1 + rng() % (l.count - 1);
        ASSERT_TRUE(b.FreeRange(PhysAddr((l.pfn + keep) * kPage), l.count - keep).ok());
        model.Set(l.pfn + keep, l.count - keep, true);
        live[i].count = keep;
        ++partial_frees;
      } else {
        ASSERT_TRUE(b.FreeRange(PhysAddr(l.pfn * kPage), l.count).ok());
        model.Set(l.pfn, l.count, true);
        live[i] = live.back();
        live.pop_back();
      }
    } else {
      // Double free of a page that is free in the model must fail cleanly.
      const uint64_t pfn = base_pfn + rng() % num_pages;
      if (model.WindowFree(pfn, 0)) {
        ASSERT_EQ(b.Free(PhysAddr(pfn * kPage), 0).code(), absl::StatusCode::kNotFound);
      }
    }
    ASSERT_TRUE(b.CheckInvariants().ok()) << "op " << op << ": " << b.CheckInvariants();
    ASSERT_EQ(b.free_pages(), model.FreePages());
    ASSERT_EQ(b.LargestFreeOrder(), model.LargestFreeOrder());
  }
  // Both outcomes and the partial path were exercised.
  EXPECT_GT(allocs, 1000);
  EXPECT_GT(failures, 10);
  EXPECT_GT(partial_frees, 100);
  for (const Live& l : live) ASSERT_TRUE(b.FreeRange(PhysAddr(l.pfn * kPage), l.count).ok());
  EXPECT_INVARIANTS(b);
  EXPECT_EQ(b.free_pages(), num_pages);
}

// --- ClaimRange ---------------------------------------------------------------

// The observable state: free blocks, and the stats.
void ExpectSameState(const BuddyAllocator& a, const BuddyAllocator& b) {
  EXPECT_EQ(a.FreeBlocks(), b.FreeBlocks());
  const BuddyStats sa = a.Stats();
  const BuddyStats sb = b.Stats();
  EXPECT_EQ(sa.total_pages, sb.total_pages);
  EXPECT_EQ(sa.free_pages, sb.free_pages);
  EXPECT_EQ(sa.free_blocks_by_order, sb.free_blocks_by_order);
  EXPECT_EQ(sa.largest_free_block_pages, sb.largest_free_block_pages);
}

TEST(BuddyAllocatorTest, ClaimRangeErrorsNameTheFieldAndChangeNothing) {
  // pfns [0x10, 0x30): one allocated page at pfn 0x14 and an allocated
  // order-2 block at 0x18.
  BuddyAllocator b = Make(0x10 * kPage, 0x20 * kPage);
  ASSERT_TRUE(b.ClaimRange(PhysAddr(0x14 * kPage), 1).ok());
  ASSERT_TRUE(b.ClaimRange(PhysAddr(0x18 * kPage), 4).ok());
  EXPECT_INVARIANTS(b);
  const BuddyAllocator before = Make(0x10 * kPage, 0x20 * kPage);
  struct Case {
    uint64_t start, num_pages;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {0x10000, 0, absl::StatusCode::kInvalidArgument, "num_pages=0: must be non-zero"},
      {0x10800, 1, absl::StatusCode::kInvalidArgument, "start=0x10800: must be page-aligned"},
      {0xfffffffffffff000, 2, absl::StatusCode::kInvalidArgument,
       "num_pages=0x2: range at 0xfffffffffffff000 passes 2^64"},
      {0x10000, uint64_t{1} << 52, absl::StatusCode::kInvalidArgument,
       "num_pages=0x10000000000000: range at 0x10000 passes 2^64"},
      {0xf000, 1, absl::StatusCode::kOutOfRange,
       "start=0xf000: 0x1 pages outside the range [0x10000, +0x20000)"},
      {0xf000, 2, absl::StatusCode::kOutOfRange,
       "start=0xf000: 0x2 pages outside the range [0x10000, +0x20000)"},
      {0x2f000, 2, absl::StatusCode::kOutOfRange,
       "start=0x2f000: 0x2 pages outside the range [0x10000, +0x20000)"},
      {0x30000, 1, absl::StatusCode::kOutOfRange,
       "start=0x30000: 0x1 pages outside the range [0x10000, +0x20000)"},
      {0x10000, 0x21, absl::StatusCode::kOutOfRange,
       "start=0x10000: 0x21 pages outside the range [0x10000, +0x20000)"},
      {0x14000, 1, absl::StatusCode::kFailedPrecondition, "page=0x14000: not free"},
      {0x10000, 0x20, absl::StatusCode::kFailedPrecondition, "page=0x14000: not free"},
      {0x15000, 0x10, absl::StatusCode::kFailedPrecondition, "page=0x18000: not free"},
      {0x1b000, 2, absl::StatusCode::kFailedPrecondition, "page=0x1b000: not free"},
  };
  for (const Case& c : cases) {
    const std::vector<BuddyBlock> blocks = b.FreeBlocks();
    const BuddyStats stats = b.Stats();
    const absl::Status s = b.ClaimRange(PhysAddr(c.start), c.num_pages);
    EXPECT_EQ(s.code(), c.code) << c.message;
    EXPECT_EQ(s.message(), c.message);
    EXPECT_EQ(b.FreeBlocks(), blocks) << c.message;
    EXPECT_EQ(b.Stats().free_blocks_by_order, stats.free_blocks_by_order);
    EXPECT_EQ(b.free_pages(), stats.free_pages);
    EXPECT_INVARIANTS(b);
  }
  ASSERT_TRUE(b.FreeRange(PhysAddr(0x14 * kPage), 1).ok());
  ASSERT_TRUE(b.FreeRange(PhysAddr(0x18 * kPage), 4).ok());
  ExpectSameState(b, before);
}

TEST(BuddyAllocatorTest, ClaimRangeSplitsAroundTheRangeAndFreeRangeMergesBack) {
  BuddyAllocator b = Make(0, 16 * kPage);
  // Pages [5, 11): the order-4 block splits into 0(o2) 4(o0) [5..10] 11(o0)
  // 12(o2).
  ASSERT_TRUE(b.ClaimRange(PhysAddr(5 * kPage), 6).ok());
  EXPECT_INVARIANTS(b);
  EXPECT_THAT(
      b.FreeBlocks(),
      ElementsAre(BuddyBlock{PhysAddr(0), 2}, BuddyBlock{PhysAddr(4 * kPage), 0},
                  BuddyBlock{PhysAddr(11 * kPage), 0}, BuddyBlock{PhysAddr(12 * kPage), 2}));
  EXPECT_EQ(b.free_pages(), 10u);
  // Claimed pages are allocated: claiming them again fails, and the
  // allocator never hands them out.
  EXPECT_EQ(b.ClaimRange(PhysAddr(4 * kPage), 2).message(), "page=0x5000: not free");
  std::vector<PhysAddr> got;
  for (absl::StatusOr<PhysAddr> a = b.Allocate(0); a.ok(); a = b.Allocate(0)) got.push_back(*a);
  EXPECT_EQ(got.size(), 10u);
  for (PhysAddr a : got) EXPECT_TRUE(a < PhysAddr(5 * kPage) || a >= PhysAddr(11 * kPage)) << a;
  for (PhysAddr a : got) ASSERT_TRUE(b.Free(a, 0).ok());
  EXPECT_INVARIANTS(b);
  // Freed the way PhysMemory frees (one FreeRange), the block is whole again.
  ASSERT_TRUE(b.FreeRange(PhysAddr(5 * kPage), 6).ok());
  EXPECT_INVARIANTS(b);
  EXPECT_THAT(b.FreeBlocks(), ElementsAre(BuddyBlock{PhysAddr(0), 4}));
  // Freed page by page, too.
  ASSERT_TRUE(b.ClaimRange(PhysAddr(5 * kPage), 6).ok());
  for (uint64_t p = 5; p < 11; ++p) {
    ASSERT_TRUE(b.Free(PhysAddr(p * kPage), 0).ok());
    EXPECT_INVARIANTS(b);
  }
  EXPECT_THAT(b.FreeBlocks(), ElementsAre(BuddyBlock{PhysAddr(0), 4}));
}

TEST(BuddyAllocatorTest, ClaimRangeAcrossSeveralFreeBlocksAndMaxOrder) {
  // pfns [3, 21) carve into 3(o0) 4(o2) 8(o3) 16(o2) 20(o0); with max_order 2
  // the order-3 block is two order-2 blocks.
  BuddyAllocator b = Make(3 * kPage, 18 * kPage, {kPage, 2});
  const BuddyAllocator fresh = Make(3 * kPage, 18 * kPage, {kPage, 2});
  ASSERT_TRUE(b.ClaimRange(PhysAddr(3 * kPage), 18).ok());  // everything
  EXPECT_INVARIANTS(b);
  EXPECT_TRUE(b.FreeBlocks().empty());
  EXPECT_EQ(b.free_pages(), 0u);
  ASSERT_TRUE(b.FreeRange(PhysAddr(3 * kPage), 18).ok());
  ExpectSameState(b, fresh);
  ASSERT_TRUE(b.ClaimRange(PhysAddr(6 * kPage), 11).ok());  // [6, 17)
  EXPECT_INVARIANTS(b);
  EXPECT_THAT(b.FreeBlocks(),
              ElementsAre(BuddyBlock{PhysAddr(3 * kPage), 0}, BuddyBlock{PhysAddr(4 * kPage), 1},
                          BuddyBlock{PhysAddr(17 * kPage), 0}, BuddyBlock{PhysAddr(18 * kPage), 1},
                          BuddyBlock{PhysAddr(20 * kPage), 0}));
  ASSERT_TRUE(b.FreeRange(PhysAddr(6 * kPage), 11).ok());
  EXPECT_INVARIANTS(b);
  ExpectSameState(b, fresh);
}

// A recorded allocation: its first pfn and pages.
struct Pages {
  uint64_t pfn, count;
};

// Random allocations (orders and alloc_pages_exact tails) on `b`, recorded.
std::vector<Pages> AllocateRandomMix(BuddyAllocator& b, Xorshift64& rng, int ops) {
  std::vector<Pages> live;
  for (int op = 0; op < ops; ++op) {
    if (rng() % 4 != 0 || live.empty()) {
      const unsigned order = unsigned(rng() % 3 == 0 ? rng() % (b.max_order() + 1) : rng() % 3);
      absl::StatusOr<PhysAddr> a = b.Allocate(order);
      if (!a.ok()) continue;
      Pages r{a->value() / kPage, uint64_t{1} << order};
      if (r.count > 1 && rng() % 2 == 0) {
        const uint64_t keep = 1 + rng() % (r.count - 1);
        EXPECT_TRUE(b.FreeRange(PhysAddr((r.pfn + keep) * kPage), r.count - keep).ok());
        r.count = keep;
      }
      live.push_back(r);
    } else {
      const size_t i = rng() % live.size();
      EXPECT_TRUE(b.FreeRange(PhysAddr(live[i].pfn * kPage), live[i].count).ok());
      live[i] = live.back();
      live.pop_back();
    }
    EXPECT_INVARIANTS(b);
  }
  return live;
}

void ClaimRoundTrip(uint64_t base_pfn, uint64_t num_pages, std::optional<unsigned> max_order,
                    uint64_t seed) {
  SCOPED_TRACE(seed);
  BuddyAllocator original = Make(base_pfn * kPage, num_pages * kPage, {kPage, max_order});
  const BuddyAllocator fresh = Make(base_pfn * kPage, num_pages * kPage, {kPage, max_order});
  Xorshift64 rng(seed);
  std::vector<Pages> live = AllocateRandomMix(original, rng, 3000);
  ASSERT_GT(live.size(), 10u);
  // Restore into a fresh allocator, in a random order.
  BuddyAllocator restored = Make(base_pfn * kPage, num_pages * kPage, {kPage, max_order});
  std::vector<Pages> order = live;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  for (const Pages& r : order) {
    ASSERT_TRUE(restored.ClaimRange(PhysAddr(r.pfn * kPage), r.count).ok());
    ASSERT_TRUE(restored.CheckInvariants().ok()) << restored.CheckInvariants();
  }
  ExpectSameState(restored, original);
  // Claiming any of them again fails on its first page.
  EXPECT_EQ(restored.ClaimRange(PhysAddr(live[0].pfn * kPage), live[0].count).code(),
            absl::StatusCode::kFailedPrecondition);
  // Normal allocations on top never hand out a claimed page: both sides give
  // the same free space, so fill both to exhaustion and compare the sets.
  Model model(base_pfn, num_pages, restored.max_order());
  for (const Pages& r : live) model.Set(r.pfn, r.count, false);
  std::vector<Pages> extra;
  for (unsigned k = restored.max_order() + 1; k-- > 0;) {
    for (absl::StatusOr<PhysAddr> a = restored.Allocate(k); a.ok(); a = restored.Allocate(k)) {
      const uint64_t pfn = a->value() / kPage;
      ASSERT_TRUE(model.WindowFree(pfn, k)) << "handed out a claimed page at " << *a;
      model.Set(pfn, uint64_t{1} << k, false);
      extra.push_back({pfn, uint64_t{1} << k});
    }
  }
  EXPECT_INVARIANTS(restored);
  EXPECT_EQ(restored.free_pages(), 0u);
  for (const Pages& r : extra)
    ASSERT_TRUE(restored.FreeRange(PhysAddr(r.pfn * kPage), r.count).ok());
  ExpectSameState(restored, original);
  // Freeing everything returns both to the initial state.
  for (const Pages& r : live) {
    ASSERT_TRUE(original.FreeRange(PhysAddr(r.pfn * kPage), r.count).ok());
    ASSERT_TRUE(restored.FreeRange(PhysAddr(r.pfn * kPage), r.count).ok());
    ASSERT_TRUE(restored.CheckInvariants().ok()) << restored.CheckInvariants();
  }
  EXPECT_INVARIANTS(original);
  ExpectSameState(original, fresh);
  ExpectSameState(restored, fresh);
}

TEST(BuddyAllocatorTest, ClaimRoundTripUnalignedRange) { ClaimRoundTrip(3, 1000, {}, 1); }
TEST(BuddyAllocatorTest, ClaimRoundTripSmallMaxOrder) { ClaimRoundTrip(64, 512, 3, 2); }
TEST(BuddyAllocatorTest, ClaimRoundTripAlignedRange) { ClaimRoundTrip(1024, 2048, {}, 3); }

// Random claims of random ranges against the bitmap model: a claim succeeds
// exactly when every page is free, and otherwise names the lowest allocated
// page and changes nothing.
TEST(BuddyAllocatorTest, RandomClaimsMatchBitmapModel) {
  constexpr uint64_t kBase = 5, kPages = 700;
  BuddyAllocator b = Make(kBase * kPage, kPages * kPage);
  Model model(kBase, kPages, b.max_order());
  Xorshift64 rng(77);
  std::vector<Pages> live;
  int claims = 0, refused = 0;
  for (int op = 0; op < 6000; ++op) {
    if (rng() % 3 != 0 || live.empty()) {
      const uint64_t count = rng() % 4 == 0 ? 1 + rng() % 64 : 1 + rng() % 4;
      const uint64_t pfn = kBase + rng() % (kPages - count + 1);
      const std::vector<BuddyBlock> before = b.FreeBlocks();
      const absl::Status s = b.ClaimRange(PhysAddr(pfn * kPage), count);
      uint64_t first_taken = 0;
      for (uint64_t p = pfn; p < pfn + count && first_taken == 0; ++p) {
        if (!model.WindowFree(p, 0)) first_taken = p;
      }
      if (first_taken == 0) {
        ASSERT_TRUE(s.ok()) << s;
        model.Set(pfn, count, false);
        live.push_back({pfn, count});
        ++claims;
      } else {
        ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
        ASSERT_EQ(s.message(), absl::StrFormat("page=%#x: not free", first_taken * kPage));
        ASSERT_EQ(b.FreeBlocks(), before);
        ++refused;
      }
    } else {
      const size_t i = rng() % live.size();
      ASSERT_TRUE(b.FreeRange(PhysAddr(live[i].pfn * kPage), live[i].count).ok());
      model.Set(live[i].pfn, live[i].count, true);
      live[i] = live.back();
      live.pop_back();
    }
    ASSERT_TRUE(b.CheckInvariants().ok()) << "op " << op << ": " << b.CheckInvariants();
    ASSERT_EQ(b.free_pages(), model.FreePages());
    ASSERT_EQ(b.LargestFreeOrder(), model.LargestFreeOrder());
  }
  EXPECT_GT(claims, 500);
  EXPECT_GT(refused, 500);
  for (const Pages& r : live) ASSERT_TRUE(b.FreeRange(PhysAddr(r.pfn * kPage), r.count).ok());
  ExpectSameState(b, Make(kBase * kPage, kPages * kPage));
}

TEST(BuddyAllocatorTest, RandomOpsMatchBitmapModelUnalignedRange) { RandomOps(3, 1000, {}, 42); }
TEST(BuddyAllocatorTest, RandomOpsMatchBitmapModelSmallMaxOrder) { RandomOps(64, 512, 4, 7); }
TEST(BuddyAllocatorTest, RandomOpsMatchBitmapModelAlignedRange) { RandomOps(1024, 256, {}, 99); }

}  // namespace
}  // namespace iommu::core
