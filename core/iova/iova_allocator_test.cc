// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_allocator.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/xorshift.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;

using TestRng = Xorshift64;

IovaAllocatorOptions Opts(uint64_t start_pfn, uint64_t end_pfn, bool cache = false) {
  IovaAllocatorOptions o;
  o.placement = IovaPlacement::kHighestFit;  // the placement most tests spell out
  o.start_pfn = start_pfn;
  o.end_pfn = end_pfn;
  o.cache.enabled = cache;
  return o;
}

IovaAllocator Make(const IovaAllocatorOptions& o) {
  absl::StatusOr<IovaAllocator> a = IovaAllocator::Create(o);
  EXPECT_TRUE(a.ok()) << a.status();
  return std::move(a).value();
}

// The tests call the allocator as the broker does, through AllocIova and
// FreeIova, in 4 KiB pages; Alloc, Free and Pages below speak pfns for
// readability.
constexpr int kShift = 12;

// The inclusive byte limit whose last granule is limit_pfn (all of the
// address space when that overflows).
Iova LimitOf(uint64_t limit_pfn) {
  return Iova(limit_pfn > (~uint64_t{0} >> kShift) ? ~uint64_t{0}
                                                   : (limit_pfn << kShift) | ((1 << kShift) - 1));
}

absl::StatusOr<uint64_t> Alloc(IovaAllocator& a, uint64_t num_pages, uint64_t limit_pfn) {
  const absl::StatusOr<Iova> v = a.AllocIova(num_pages << kShift, LimitOf(limit_pfn));
  if (!v.ok()) return v.status();
  return v->value() >> kShift;
}

// The first pfn, or 0 on failure.
uint64_t AllocOrZero(IovaAllocator& a, uint64_t num_pages, uint64_t limit_pfn) {
  const absl::StatusOr<uint64_t> pfn = Alloc(a, num_pages, limit_pfn);
  return pfn.ok() ? *pfn : 0;
}

absl::Status Free(IovaAllocator& a, uint64_t pfn, uint64_t num_pages) {
  return a.FreeIova(Iova(pfn << kShift), num_pages << kShift);
}

// Pages of the live allocation starting at pfn.
std::optional<uint64_t> Pages(const IovaAllocator& a, uint64_t pfn) {
  const std::optional<uint64_t> bytes = a.AllocationSizeBytes(Iova(pfn << kShift));
  if (!bytes) return std::nullopt;
  return *bytes >> kShift;
}

#define EXPECT_INVARIANTS(a) EXPECT_TRUE((a).CheckInvariants().ok()) << (a).CheckInvariants()
#define ASSERT_INVARIANTS(a) ASSERT_TRUE((a).CheckInvariants().ok()) << (a).CheckInvariants()

// --- errors --------------------------------------------------------------------------

TEST(IovaAllocatorCreate, RejectsBadOptions) {
  struct Case {
    const char* name;
    IovaAllocatorOptions options;
    const char* message;  // field=value prefix
  };
  std::vector<Case> cases;
  {
    IovaAllocatorOptions o;
    o.granule_bytes = 8192;
    cases.push_back({"granule", o, "granule_bytes=0x2000: "});
  }
  {
    IovaAllocatorOptions o;
    o.start_pfn = 0;
    cases.push_back({"start zero", o, "start_pfn=0: "});
  }
  {
    IovaAllocatorOptions o;
    o.start_pfn = 10;
    o.end_pfn = 9;
    cases.push_back({"end below start", o, "end_pfn=0x9: "});
  }
  {
    IovaAllocatorOptions o;
    o.end_pfn = uint64_t{1} << 60;
    cases.push_back({"end overflows bytes", o, "end_pfn=0x1000000000000000: "});
  }
  {
    IovaAllocatorOptions o;
    o.cache.max_pages = 24;
    cases.push_back({"cache not pow2", o, "cache.max_pages=0x18: "});
  }
  {
    IovaAllocatorOptions o;
    o.cache.magazine_depth = 0;
    cases.push_back({"depth zero", o, "cache.magazine_depth=0: "});
  }
  {
    IovaAllocatorOptions o;
    o.cache.depot_magazines = 5000;
    cases.push_back({"depot too big", o, "cache.depot_magazines=0x1388: "});
  }
  for (const Case& c : cases) {
    absl::StatusOr<IovaAllocator> a = IovaAllocator::Create(c.options);
    ASSERT_FALSE(a.ok()) << c.name;
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_TRUE(absl::StartsWith(a.status().message(), c.message)) << c.name << ": " << a.status();
  }
  // Cache options are not validated when the cache is off.
  IovaAllocatorOptions o;
  o.cache.enabled = false;
  o.cache.max_pages = 24;
  EXPECT_TRUE(IovaAllocator::Create(o).ok());
}

TEST(IovaAllocator, AllocRejectsBadRequestsWithoutTrace) {
  for (bool cache : {false, true}) {
    IovaAllocator a = Make(Opts(16, 0xFFFF, cache));
    struct Case {
      uint64_t size_bytes;
      Iova limit;
      absl::StatusCode code;
      const char* message;
    };
    const Case cases[] = {
        {0, Iova(0xFFFFFFF), absl::StatusCode::kInvalidArgument, "size_bytes=0: "},
        {0xFFF1000, Iova(0xFFFFFFF), absl::StatusCode::kOutOfRange, "size_bytes=0xfff1000: "},
        {0xFFF0001, Iova(0xFFFFFFF), absl::StatusCode::kOutOfRange, "size_bytes=0xfff0001: "},
        {4096, Iova(0xFFFF), absl::StatusCode::kOutOfRange, "limit=0xffff: "},
        {1, Iova(0), absl::StatusCode::kOutOfRange, "limit=0: "},
    };
    const IovaStats before = a.GetStats();
    for (const Case& c : cases) {
      absl::StatusOr<Iova> r = a.AllocIova(c.size_bytes, c.limit);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), c.code) << r.status();
      EXPECT_TRUE(absl::StartsWith(r.status().message(), c.message)) << r.status();
    }
    const IovaStats after = a.GetStats();
    EXPECT_EQ(after.free_pages, before.free_pages);
    EXPECT_EQ(after.cache_misses, 0u);
    EXPECT_EQ(after.failures[0] + after.failures[1] + after.failures[2], 0u);
    EXPECT_INVARIANTS(a);
  }
}

TEST(IovaAllocator, FreeErrorsLeaveStateIntact) {
  IovaAllocator a = Make(Opts(1, 0xFFFF, /*cache=*/true));
  const uint64_t p = *Alloc(a, 35, 0xFFFF);  // above the cache's 32 pages: exactly 35
  const uint64_t q = *Alloc(a, 4, 0xFFFF);
  const IovaStats before = a.GetStats();

  absl::Status s = Free(a, p + 1, 35);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StartsWith(s.message(), absl::StrCat("pfn=0x", absl::Hex(p + 1), ": "))) << s;
  s = Free(a, p, 37);  // the allocation has 35 pages
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "num_pages=0x25: ")) << s;
  s = Free(a, q, 9);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = a.FreeIova(Iova((q << 12) + 1), 4096);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "iova=")) << s;
  s = a.FreeIova(Iova(q << 12), 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "size_bytes=0: ")) << s;
  EXPECT_EQ(a.Reserve(10, 9).code(), absl::StatusCode::kInvalidArgument);
  const IovaStats after = a.GetStats();
  EXPECT_EQ(after.allocated_pages, before.allocated_pages);
  EXPECT_EQ(after.live_allocations, 2u);
  EXPECT_INVARIANTS(a);

  // Double frees, of a cached and of a tree allocation, are NOT_FOUND and
  // change nothing.
  ASSERT_TRUE(Free(a, q, 4).ok());
  EXPECT_INVARIANTS(a);
  EXPECT_EQ(Free(a, q, 4).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Free(a, q, 64).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(Free(a, p, 35).ok());
  EXPECT_EQ(Free(a, p, 35).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a.GetStats().cached_pages, 4u);
  EXPECT_EQ(a.GetStats().live_allocations, 0u);
  EXPECT_INVARIANTS(a);
}

// A free finds and erases in one lookup on each index (the allocation map's
// group, with the scan of the following groups for 65..4096 pages; one probe
// of the large map): allocations of 64, 65 and 4097 pages side by side,
// interior pfns, the pfn just past each, and double frees are NOT_FOUND and
// change nothing; the frees return exactly their pages.
TEST(IovaAllocator, TreeFreeOfEveryIndexedSize) {
  IovaAllocator a = Make(Opts(1, 0xFFFF, /*cache=*/false));
  const uint64_t group = *Alloc(a, 64, 0xFFFF);
  const uint64_t span = *Alloc(a, 65, 0xFFFF);
  const uint64_t large = *Alloc(a, 4097, 0xFFFF);
  const uint64_t free_before = a.GetStats().free_pages;
  for (const uint64_t bad : {group + 1, group + 63, span + 1, span + 64, span + 128, large + 1,
                             large + 4096, large + 8192}) {
    for (const uint64_t pages : {uint64_t{1}, uint64_t{64}, uint64_t{4097}}) {
      const absl::Status s = Free(a, bad, pages);
      EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << bad;
      EXPECT_TRUE(absl::StartsWith(s.message(), absl::StrCat("pfn=0x", absl::Hex(bad), ": "))) << s;
    }
  }
  EXPECT_EQ(a.GetStats().free_pages, free_before);
  EXPECT_EQ(a.GetStats().live_allocations, 3u);
  EXPECT_EQ(Pages(a, group), 64u);
  EXPECT_EQ(Pages(a, span), 65u);
  EXPECT_EQ(Pages(a, large), 4097u);
  EXPECT_INVARIANTS(a);
  uint64_t freed = 0;
  for (const auto& [pfn, pages] :
       {std::pair<uint64_t, uint64_t>{span, 65}, {large, 4097}, {group, 64}}) {
    ASSERT_TRUE(Free(a, pfn, pages).ok()) << pfn;
    freed += pages;
    EXPECT_EQ(a.GetStats().free_pages, free_before + freed);
    EXPECT_FALSE(Pages(a, pfn).has_value());
    EXPECT_EQ(Free(a, pfn, pages).code(), absl::StatusCode::kNotFound);
    EXPECT_INVARIANTS(a);
  }
  EXPECT_EQ(a.GetStats().live_allocations, 0u);
}

// Allocations of up to 4096 pages live in the start/end bitmap (64 or fewer
// in one group), larger ones in a hash map: wrong sizes, interior pfns and
// double frees of cached ranges are refused exactly as with one index.
TEST(IovaAllocator, WrongSizesInteriorPfnsAndCachedDoubleFrees) {
  IovaAllocator a = Make(Opts(1, 0xFFFF, /*cache=*/true));
  const uint64_t p4 = *Alloc(a, 4, 0xFFFF);
  const uint64_t p2a = *Alloc(a, 2, 0xFFFF);
  const uint64_t p2b = *Alloc(a, 2, 0xFFFF);
  ASSERT_EQ(p2a, p2b + 2);  // two adjacent 2s in one aligned block of 4
  ASSERT_EQ(p2b % 4, 0u);
  const uint64_t p64 = *Alloc(a, 64, 0xFFFF);  // above the cache's 32 pages: exact
  const uint64_t p65 = *Alloc(a, 65, 0xFFFF);
  const uint64_t p8 = *Alloc(a, 7, 0xFFFF);  // rounded up to its class, 8
  ASSERT_INVARIANTS(a);
  const IovaStats before = a.GetStats();

  auto expect_invalid = [](IovaAllocator& a, uint64_t pfn, uint64_t n, uint64_t pages) {
    const absl::Status s = Free(a, pfn, n);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << pfn << " " << n << ": " << s;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr(absl::StrCat("the allocation at pfn=0x", absl::Hex(pfn), " has 0x",
                                       absl::Hex(pages), " pages")));
  };
  expect_invalid(a, p4, 2, 4);  // 2 at a pfn holding 4
  expect_invalid(a, p4, 1, 4);
  expect_invalid(a, p4, 8, 4);
  expect_invalid(a, p2b, 4, 2);  // 4 at a pfn holding two adjacent 2s
  expect_invalid(a, p2b, 3, 2);  // rounds to 4 as well
  expect_invalid(a, p64, 65, 64);
  expect_invalid(a, p64, 32, 64);
  expect_invalid(a, p65, 64, 65);
  expect_invalid(a, p65, 128, 65);
  expect_invalid(a, p8, 4, 8);
  expect_invalid(a, p8, 9, 8);  // rounds to 16
  expect_invalid(a, p8, 32, 8);
  {
    // Without the cache sizes are exact: 6 and 8 at a 7-page allocation.
    IovaAllocator b = Make(Opts(1, 0xFFFF, /*cache=*/false));
    const uint64_t p7 = *Alloc(b, 7, 0xFFFF);
    expect_invalid(b, p7, 6, 7);
    expect_invalid(b, p7, 8, 7);
    EXPECT_EQ(Pages(b, p7), 7u);
    EXPECT_TRUE(Free(b, p7, 7).ok());
    EXPECT_INVARIANTS(b);
  }

  auto expect_not_found = [&](uint64_t pfn, absl::string_view why) {
    for (const uint64_t n : {1, 4, 65}) {
      const absl::Status s = Free(a, pfn, n);
      EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << pfn << ": " << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr(why)) << pfn;
    }
    EXPECT_EQ(Pages(a, pfn), std::nullopt) << pfn;
  };
  constexpr absl::string_view kNoLive = "no live allocation starts at this pfn";
  constexpr absl::string_view kCached = "it sits in a range cache";
  for (uint64_t k = 1; k < 4; ++k) expect_not_found(p4 + k, kNoLive);
  expect_not_found(p2a + 1, kNoLive);
  expect_not_found(p2b + 1, kNoLive);
  for (uint64_t k : {1, 2, 31, 32, 63}) expect_not_found(p64 + k, kNoLive);
  for (uint64_t k : {1, 63, 64}) expect_not_found(p65 + k, kNoLive);
  expect_not_found(p8 + 6, kNoLive);
  expect_not_found(0x100, kNoLive);    // never allocated, chunk never written
  expect_not_found(0x10000, kNoLive);  // past the end
  EXPECT_EQ(Pages(a, p4), 4u);
  EXPECT_EQ(Pages(a, p2a), 2u);
  EXPECT_EQ(Pages(a, p2b), 2u);
  EXPECT_EQ(Pages(a, p64), 64u);
  EXPECT_EQ(Pages(a, p65), 65u);
  EXPECT_EQ(Pages(a, p8), 8u);
  const IovaStats after = a.GetStats();
  EXPECT_EQ(after.allocated_pages, before.allocated_pages);
  EXPECT_EQ(after.live_allocations, 6u);
  ASSERT_INVARIANTS(a);

  // Cached ranges are not live: a second free is NOT_FOUND naming the cache,
  // and so is a lookup; popping one makes it live again.
  ASSERT_TRUE(Free(a, p4, 3).ok());  // 3 rounds to the 4 it holds
  ASSERT_TRUE(Free(a, p2a, 2).ok());
  ASSERT_INVARIANTS(a);
  expect_not_found(p4, kCached);
  expect_not_found(p2a, kCached);
  EXPECT_EQ(Pages(a, p2b), 2u);  // its neighbour is untouched
  EXPECT_EQ(a.GetStats().cached_pages, 6u);
  EXPECT_EQ(a.GetStats().live_allocations, 4u);
  EXPECT_EQ(*Alloc(a, 2, 0xFFFF), p2a);
  EXPECT_EQ(Pages(a, p2a), 2u);
  ASSERT_TRUE(Free(a, p2a, 2).ok());
  // Flushed back to the tree, they are simply not allocated.
  a.FlushCaches();
  expect_not_found(p4, kNoLive);
  expect_not_found(p2a, kNoLive);
  ASSERT_TRUE(Free(a, p64, 64).ok());
  ASSERT_TRUE(Free(a, p65, 65).ok());
  ASSERT_TRUE(Free(a, p8, 5).ok());
  ASSERT_TRUE(Free(a, p2b, 2).ok());
  a.FlushCaches();
  EXPECT_EQ(a.GetStats().live_allocations, 0u);
  EXPECT_EQ(a.GetStats().free_pages, 0xFFFFu);
  ASSERT_INVARIANTS(a);
}

// --- placement ----------------------------------------------------------------------------

TEST(IovaAllocator, SizeAlignedTopDown) {
  IovaAllocator a = Make(Opts(1, 0xFFFFF));
  EXPECT_EQ(*Alloc(a, 1, 0xFFFFF), 0xFFFFFu);
  EXPECT_EQ(*Alloc(a, 2, 0xFFFFF), 0xFFFFCu);      // [0xFFFFD] cannot start a 2-aligned run
  EXPECT_EQ(*Alloc(a, 3, 0xFFFFF), 0xFFFF8u);      // aligned to 4, 3 pages
  EXPECT_EQ(*Alloc(a, 1, 0xFFFFF), 0xFFFFEu);      // fills the hole above the 2-page range
  EXPECT_EQ(*Alloc(a, 1, 0xFFFFF), 0xFFFFBu);      // the 4th page of the 3-page slot
  EXPECT_EQ(*Alloc(a, 1, 0xFFFFF), 0xFFFF7u);      // everything above is taken
  EXPECT_EQ(*Alloc(a, 5, 0xFFFFF), 0xFFFF0u);      // aligned to 8
  EXPECT_EQ(*Alloc(a, 0x300, 0xFFFFF), 0xFFC00u);  // aligned to 0x400
  EXPECT_EQ(*Alloc(a, 1, 0x10), 0x10u);
  EXPECT_EQ(*Alloc(a, 8, 0x10), 0x8u);
  EXPECT_INVARIANTS(a);
  a.ForEachAllocated(
      [](uint64_t pfn, uint64_t pages) { EXPECT_EQ(pfn % std::bit_ceil(pages), 0u) << pfn; });
}

TEST(IovaAllocator, PfnZeroIsNeverHandedOut) {
  IovaAllocator a = Make(Opts(1, 15));
  EXPECT_EQ(*Alloc(a, 8, 15), 8u);
  EXPECT_EQ(*Alloc(a, 4, 15), 4u);
  EXPECT_EQ(*Alloc(a, 2, 15), 2u);
  EXPECT_EQ(*Alloc(a, 1, 15), 1u);
  // Only pfn 0 would still be aligned; it is not in the space.
  absl::StatusOr<uint64_t> r = Alloc(a, 1, 15);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  // A two-page request in [1, 3] would only fit at pfn 0.
  ASSERT_TRUE(Free(a, 2, 2).ok());
  ASSERT_TRUE(Free(a, 1, 1).ok());
  EXPECT_EQ(*Alloc(a, 2, 15), 2u);
  EXPECT_EQ(AllocOrZero(a, 2, 15), 0u);
  EXPECT_INVARIANTS(a);
}

TEST(IovaAllocator, LimitIsHonoured) {
  IovaAllocator a = Make(Opts(1, (uint64_t{1} << 24) - 1, /*cache=*/true));
  TestRng rng;
  const uint64_t limit32 = 0xFFFFF;
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int i = 0; i < 3000; ++i) {
    const uint64_t n = rng.Below(64) + 1;
    const uint64_t pfn = *Alloc(a, n, limit32);
    const uint64_t size = n <= 32 ? std::bit_ceil(n) : n;
    EXPECT_LE(pfn + size - 1, limit32);
    live.emplace_back(pfn, n);
    if (rng.Below(3) == 0) {
      const size_t j = rng.Below(live.size());
      ASSERT_TRUE(Free(a, live[j].first, live[j].second).ok());
      live[j] = live.back();
      live.pop_back();
    }
  }
  // A limit above the space is clipped to it.
  EXPECT_EQ(*Alloc(a, 33, ~uint64_t{0}), (uint64_t{1} << 24) - 64);
  EXPECT_INVARIANTS(a);
}

TEST(IovaAllocator, CachedRangeAboveLimitIsNotReturned) {
  IovaAllocator a = Make(Opts(1, 0xFFFFF, /*cache=*/true));
  const uint64_t high = *Alloc(a, 1, 0xFFFFF);
  ASSERT_EQ(high, 0xFFFFFu);
  const uint64_t low = *Alloc(a, 1, 0xFFF);
  ASSERT_EQ(low, 0xFFFu);
  ASSERT_TRUE(Free(a, low, 1).ok());
  ASSERT_TRUE(Free(a, high, 1).ok());  // on top of the magazine
  // The top of the magazine is above the limit: the scan finds `low`.
  EXPECT_EQ(*Alloc(a, 1, 0x1000), low);
  EXPECT_EQ(a.GetStats().cache_hits, 1u);
  // Nothing cached fits below 0x800: a miss, served by the tree.
  EXPECT_EQ(*Alloc(a, 1, 0x800), 0x800u);
  EXPECT_EQ(a.GetStats().cache_misses, 3u);
  EXPECT_EQ(*Alloc(a, 1, 0xFFFFF), high);
  EXPECT_INVARIANTS(a);
}

// Linux's rcache: sizes up to cache.max_pages pages are cached per size class
// (a power of two); a freed range is reused by the next allocation of its
// class, the range freed last first; anything else goes to the tree.
TEST(IovaAllocator, FreedRangeServesTheNextAllocationOfItsClass) {
  IovaAllocator a = Make(Opts(1, 0xFFFFF, /*cache=*/true));
  for (uint64_t cls_pages = 1; cls_pages <= 32; cls_pages *= 2) {
    for (uint64_t n = cls_pages / 2 + 1; n <= cls_pages; ++n) {
      const uint64_t p = *Alloc(a, n, 0xFFFFF);
      EXPECT_EQ(Pages(a, p), cls_pages) << n;
      const IovaStats s0 = a.GetStats();
      ASSERT_TRUE(Free(a, p, n).ok());
      const IovaStats s1 = a.GetStats();
      EXPECT_EQ(s1.cached_pages, s0.cached_pages + cls_pages) << n;
      EXPECT_EQ(s1.allocated_pages, s0.allocated_pages - cls_pages) << n;
      EXPECT_EQ(s1.free_pages, s0.free_pages) << n;  // not back in the tree
      // Any request of the class takes it back, inline or not.
      const uint64_t m = n == cls_pages ? cls_pages / 2 + 1 : cls_pages;
      EXPECT_EQ(*Alloc(a, m, 0xFFFFF), p) << n;
      EXPECT_EQ(a.GetStats().cache_hits, s1.cache_hits + 1) << n;
      EXPECT_EQ(a.GetStats().cached_pages, s0.cached_pages) << n;
      ASSERT_TRUE(Free(a, p, m).ok());
    }
  }
  ASSERT_INVARIANTS(a);
  a.FlushCaches();
  // Last freed, first reused; another class does not take it.
  const uint64_t p1 = *Alloc(a, 4, 0xFFFFF);
  const uint64_t p2 = *Alloc(a, 4, 0xFFFFF);
  ASSERT_TRUE(Free(a, p1, 4).ok());
  ASSERT_TRUE(Free(a, p2, 4).ok());
  const uint64_t p8 = *Alloc(a, 8, 0xFFFFF);
  EXPECT_NE(p8, p1);
  EXPECT_NE(p8, p2);
  EXPECT_EQ(*Alloc(a, 3, 0xFFFFF), p2);
  EXPECT_EQ(*Alloc(a, 4, 0xFFFFF), p1);
  // Above max_pages: exact, and freed to the tree.
  const uint64_t free_before = a.GetStats().free_pages;
  const uint64_t p33 = *Alloc(a, 33, 0xFFFFF);
  EXPECT_EQ(Pages(a, p33), 33u);
  ASSERT_TRUE(Free(a, p33, 33).ok());
  EXPECT_EQ(a.GetStats().free_pages, free_before);
  EXPECT_INVARIANTS(a);

  // A smaller max_pages caches less; without the cache nothing is cached.
  IovaAllocatorOptions o = Opts(1, 0xFFFFF, /*cache=*/true);
  o.cache.max_pages = 8;
  for (const bool cache : {true, false}) {
    o.cache.enabled = cache;
    IovaAllocator b = Make(o);
    const uint64_t q8 = *Alloc(b, 5, 0xFFFFF);
    const uint64_t q16 = *Alloc(b, 9, 0xFFFFF);
    EXPECT_EQ(Pages(b, q8), cache ? 8u : 5u);
    EXPECT_EQ(Pages(b, q16), 9u);
    ASSERT_TRUE(Free(b, q8, 5).ok());
    ASSERT_TRUE(Free(b, q16, 9).ok());
    EXPECT_EQ(b.GetStats().cached_pages, cache ? 8u : 0u);
    EXPECT_EQ(b.GetStats().cache_hits, 0u);
    EXPECT_INVARIANTS(b);
  }
}

// --- reserved ranges ---------------------------------------------------------------------

TEST(IovaAllocator, ReservedRangesAreNeverHandedOut) {
  IovaAllocator a = Make(Opts(1, 0xFFF));
  ASSERT_TRUE(a.Reserve(0xF00, 0xFFF).ok());
  EXPECT_INVARIANTS(a);
  EXPECT_EQ(a.GetStats().reserved_pages, 0x100u);
  EXPECT_EQ(*Alloc(a, 1, 0xFFF), 0xEFFu);
  // Overlapping again (and beyond the space) is merged and clipped.
  ASSERT_TRUE(a.Reserve(0xF80, 0x10000).ok());
  EXPECT_EQ(a.GetStats().reserved_pages, 0x100u);
  ASSERT_TRUE(a.Reserve(0xE80, 0xEFE).ok());
  EXPECT_INVARIANTS(a);
  EXPECT_EQ(a.GetStats().reserved_pages, 0x17Fu);  // 0xE80..0xEFE and 0xF00..0xFFF
  int reserved_ranges = 0;
  a.ForEachReserved([&](uint64_t, uint64_t) { ++reserved_ranges; });
  EXPECT_EQ(reserved_ranges, 2);  // 0xEFF is allocated between them
  // Overlapping a live allocation: FAILED_PRECONDITION, nothing reserved.
  absl::Status s = a.Reserve(0xE00, 0xEFF);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StartsWith(s.message(), "pfn_lo=0xe00: ")) << s;
  EXPECT_EQ(a.GetStats().reserved_pages, 0x17Fu);
  EXPECT_INVARIANTS(a);
  // A reserved pfn is not an allocation.
  EXPECT_EQ(Free(a, 0xF00, 1).code(), absl::StatusCode::kNotFound);
  // Freeing 0xEFF does not merge it into the reserved ranges; it is free again.
  ASSERT_TRUE(Free(a, 0xEFF, 1).ok());
  EXPECT_EQ(*Alloc(a, 1, 0xFFF), 0xEFFu);
  // Entirely outside the space: nothing to do.
  EXPECT_TRUE(a.Reserve(0x5000, 0x6000).ok());
  EXPECT_INVARIANTS(a);

  // Cached ranges are flushed, so reserving over them works.
  IovaAllocator b = Make(Opts(1, 0xFFF, /*cache=*/true));
  const uint64_t c = *Alloc(b, 2, 0xFFF);
  ASSERT_TRUE(Free(b, c, 2).ok());
  EXPECT_EQ(b.GetStats().cached_pages, 2u);
  ASSERT_TRUE(b.Reserve(c, c + 1).ok());
  EXPECT_EQ(b.GetStats().cached_pages, 0u);
  EXPECT_INVARIANTS(b);
  const IovaStats st = b.GetStats();
  EXPECT_EQ(st.space_pages,
            st.allocated_pages + st.cached_pages + st.free_pages + st.reserved_pages);
}

// --- exhaustion, stats -------------------------------------------------------------------

TEST(IovaAllocator, ExhaustionNamesRequestAndLargestFreeRange) {
  IovaAllocator a = Make(Opts(1, 0xFFF));
  // Fill with 16-page blocks, free every other one: 16-page holes only.
  std::vector<uint64_t> blocks;
  while (uint64_t p = AllocOrZero(a, 16, 0xFFF)) blocks.push_back(p);
  ASSERT_EQ(blocks.size(), 255u);  // [0, 15] would contain pfn 0
  // blocks[254] = 0x10 stays, so pfns [1, 0xF] are a 15-page hole of their own.
  for (size_t i = 1; i < blocks.size(); i += 2) ASSERT_TRUE(Free(a, blocks[i], 16).ok());
  EXPECT_INVARIANTS(a);
  absl::StatusOr<Iova> r = a.AllocIova(0x11000, LimitOf(0xFFF));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("size_bytes=0x11000: no free IOVA range holds 0x11 pages (0x11000 bytes) "
                        "aligned to 0x20 pages at or below limit_pfn=0xfff"));
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("largest free range 0x10 pages (0x10000 bytes)"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("fragmented"));
  const IovaStats s = a.GetStats();
  EXPECT_EQ(s.failures[static_cast<int>(IovaFailureReason::kFragmented)], 1u);
  EXPECT_EQ(s.free_ranges, 128u);
  EXPECT_EQ(s.free_pages, 127u * 16 + 15);
  EXPECT_EQ(s.largest_free_pages, 16u);
  EXPECT_EQ(s.free_range_histogram[4], 127u);
  EXPECT_EQ(s.free_range_histogram[3], 1u);
  EXPECT_DOUBLE_EQ(s.fragmentation_ratio, 1.0 - 16.0 / 2047.0);
  // Beyond limit: a fit exists, but not below 0x8.
  r = a.AllocIova(16 << kShift, LimitOf(0x8));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("only above the limit"));
  EXPECT_EQ(a.GetStats().failures[static_cast<int>(IovaFailureReason::kBeyondLimit)], 1u);
  // No space: more pages than are free.
  r = a.AllocIova(0xF00 << kShift, LimitOf(0xFFF));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not enough free space"));
  // (The fill loop ended on the first one: 15 free pages for 16.)
  EXPECT_EQ(a.GetStats().failures[static_cast<int>(IovaFailureReason::kNoSpace)], 2u);
  EXPECT_INVARIANTS(a);
}

TEST(IovaAllocator, Try32BitFirst) {
  IovaAllocatorOptions o = Opts(1, (uint64_t{1} << 24) - 1, /*cache=*/true);
  o.try_32bit_first = true;
  IovaAllocator a = Make(o);
  EXPECT_EQ(*Alloc(a, 1, (uint64_t{1} << 24) - 1), 0xFFFFFu);
  EXPECT_EQ(*Alloc(a, 2, (uint64_t{1} << 24) - 1), 0xFFFFCu);
  // A cached range is taken under the 32-bit limit first too.
  ASSERT_TRUE(Free(a, 0xFFFFC, 2).ok());
  EXPECT_EQ(*Alloc(a, 2, (uint64_t{1} << 24) - 1), 0xFFFFCu);
  EXPECT_EQ(a.GetStats().cache_hits, 1u);
  // Fill below 4 GiB, then the full limit is used.
  ASSERT_TRUE(a.Reserve(1, 0xFFFF0).ok());
  while (AllocOrZero(a, 1, 0xFFFFF) != 0) {
  }
  EXPECT_EQ(*Alloc(a, 1, (uint64_t{1} << 24) - 1), (uint64_t{1} << 24) - 1);
  EXPECT_EQ(a.GetStats().failures[0] + a.GetStats().failures[1] + a.GetStats().failures[2], 1u);
  EXPECT_INVARIANTS(a);

  IovaAllocator b = Make(Opts(1, (uint64_t{1} << 24) - 1));
  EXPECT_EQ(*Alloc(b, 1, (uint64_t{1} << 24) - 1), (uint64_t{1} << 24) - 1);
}

TEST(IovaAllocator, CacheHitsMissesAndFlushRetry) {
  IovaAllocatorOptions o = Opts(1, 63, /*cache=*/true);
  o.cache.magazine_depth = 4;
  o.cache.depot_magazines = 2;
  IovaAllocator a = Make(o);
  // 3 pages round up to 4, aligned to 4.
  const uint64_t p = *Alloc(a, 3, 63);
  EXPECT_EQ(p, 60u);
  EXPECT_EQ(Pages(a, p), 4u);
  EXPECT_EQ(a.GetStats().cache_misses, 1u);
  ASSERT_TRUE(Free(a, p, 3).ok());
  EXPECT_FALSE(Pages(a, p).has_value());
  EXPECT_EQ(a.GetStats().cached_pages, 4u);
  EXPECT_EQ(a.GetStats().free_pages, 59u);
  EXPECT_EQ(*Alloc(a, 4, 63), p);
  EXPECT_EQ(a.GetStats().cache_hits, 1u);
  EXPECT_TRUE(Pages(a, p).has_value());
  ASSERT_TRUE(Free(a, p, 4).ok());
  EXPECT_INVARIANTS(a);

  // Fill the space with single pages. The tree runs dry after 59; the 60th
  // flushes the cached 4-page range back to the tree and retries.
  std::vector<uint64_t> singles;
  while (uint64_t s = AllocOrZero(a, 1, 63)) {
    singles.push_back(s);
    if (singles.size() == 59) {
      EXPECT_EQ(a.GetStats().cached_pages, 4u);
    }
  }
  EXPECT_EQ(singles.size(), 63u);
  EXPECT_EQ(a.GetStats().cached_pages, 0u);
  EXPECT_EQ(a.GetStats().failures[static_cast<int>(IovaFailureReason::kNoSpace)], 1u);
  // Cache them all: 63 pushes, more than loaded + prev + depot hold (4 * 4),
  // so full magazines spill to the tree: 16 + 11 spills of 4, 3 left loaded.
  for (uint64_t s : singles) {
    ASSERT_TRUE(Free(a, s, 1).ok());
    ASSERT_INVARIANTS(a);
  }
  EXPECT_EQ(a.GetStats().cached_pages, 15u);
  EXPECT_EQ(a.GetStats().free_pages, 48u);
  // 32 pages need [32, 63]: the tree lacks them until the caches are flushed.
  const uint64_t misses = a.GetStats().cache_misses;
  const uint64_t big = *Alloc(a, 32, 63);
  EXPECT_EQ(big, 32u);
  EXPECT_EQ(a.GetStats().cached_pages, 0u);
  EXPECT_EQ(a.GetStats().cache_misses, misses + 1);
  EXPECT_INVARIANTS(a);
  // The flushed retry succeeded: no new failure was counted.
  const IovaStats s = a.GetStats();
  EXPECT_EQ(s.failures[0] + s.failures[1] + s.failures[2], 1u);

  // Freed, the 32 pages are cached and come back from the cache.
  ASSERT_TRUE(Free(a, big, 32).ok());
  EXPECT_EQ(a.GetStats().cached_pages, 32u);
  EXPECT_EQ(*Alloc(a, 17, 63), big);
  ASSERT_TRUE(Free(a, big, 32).ok());
  a.FlushCaches();
  EXPECT_EQ(a.GetStats().cached_pages, 0u);
  EXPECT_EQ(a.GetStats().free_pages, 63u);
  EXPECT_EQ(a.GetStats().largest_free_pages, 63u);
  EXPECT_INVARIANTS(a);
}

TEST(IovaAllocator, UncacheableRequestsAreExact) {
  IovaAllocator a = Make(Opts(1, 0xFFFF, /*cache=*/true));
  const uint64_t p = *Alloc(a, 33, 0xFFFF);
  EXPECT_EQ(Pages(a, p), 33u);
  EXPECT_EQ(p % 64, 0u);
  EXPECT_EQ(a.GetStats().cache_misses, 0u);  // not cacheable: neither hit nor miss
  ASSERT_TRUE(Free(a, p, 33).ok());
  EXPECT_EQ(a.GetStats().cached_pages, 0u);
  EXPECT_EQ(a.GetStats().free_pages, 0xFFFFu);
  EXPECT_INVARIANTS(a);
}

TEST(IovaAllocator, ByteInterface) {
  IovaAllocatorOptions o = Opts(1, (uint64_t{1} << 20) - 1, /*cache=*/true);
  o.granule_bytes = 16384;
  IovaAllocator a = Make(o);
  EXPECT_EQ(a.granule_shift(), 14u);
  const Iova limit((uint64_t{1} << 32) - 1);
  absl::StatusOr<Iova> v = a.AllocIova(5 * 16384 + 1, limit);  // 6 pages -> 8
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->value() % (8 * 16384), 0u);
  EXPECT_LE(v->value() + 8 * 16384 - 1, limit.value());
  EXPECT_EQ(v->value(), (uint64_t{1} << 32) - 8 * 16384);
  EXPECT_EQ(a.AllocationSizeBytes(*v), 8u * 16384);
  EXPECT_EQ(a.AllocationSizeBytes(*v + 16384), std::nullopt);
  EXPECT_EQ(a.AllocIova(0, limit).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.AllocIova(4096, Iova(16383)).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(a.AllocIova(uint64_t{1} << 40, limit).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(a.AllocIova(~uint64_t{0}, limit).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(a.FreeIova(*v + 4096, 8 * 16384).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.FreeIova(*v, ~uint64_t{0}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(a.FreeIova(*v, 5 * 16384 + 1).ok());
  EXPECT_EQ(a.AllocationSizeBytes(*v), std::nullopt);
  // The cached range serves the next request of its class, in bytes.
  EXPECT_EQ(*a.AllocIova(7 * 16384, limit), *v);
  EXPECT_INVARIANTS(a);
}

TEST(IovaAllocator, LargeSpaceLargeRequests) {
  // 48-bit space with 4K pages: 2^36 pages, orders 0..36.
  IovaAllocator a = Make(Opts(1, (uint64_t{1} << 36) - 1));
  EXPECT_EQ(*Alloc(a, uint64_t{1} << 35, ~uint64_t{0}), uint64_t{1} << 35);
  absl::StatusOr<uint64_t> r = Alloc(a, (uint64_t{1} << 34) + 1, ~uint64_t{0});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);  // only pfn 0 is aligned
  EXPECT_EQ(a.GetStats().failures[static_cast<int>(IovaFailureReason::kFragmented)], 1u);
  EXPECT_EQ(*Alloc(a, uint64_t{1} << 34, ~uint64_t{0}), uint64_t{1} << 34);
  EXPECT_EQ(*Alloc(a, 3, ~uint64_t{0}), (uint64_t{1} << 34) - 4);
  EXPECT_INVARIANTS(a);
}

// The free tree's rows hold words only for orders up to the longest range of a
// subtree (blocks of 8 orders): carving a 2^40-page space down in halves moves
// the longest range through every block, including the orders >= 32 computed
// in 64 bits, and freeing in a scrambled order grows it back; each step is
// checked against a full recomputation (CheckInvariants) and the placement.
TEST(IovaAllocator, RowsFollowTheLongestRangeThroughEveryBlock) {
  constexpr uint64_t kEnd = (uint64_t{1} << 40) - 1;
  IovaAllocator a = Make(Opts(1, kEnd));
  std::vector<std::pair<uint64_t, uint64_t>> live;
  uint64_t below = uint64_t{1} << 40;  // every allocation sits just below the last
  for (int k = 38; k >= 0; --k) {
    const uint64_t n = uint64_t{1} << k;
    const absl::StatusOr<uint64_t> p = Alloc(a, n, kEnd);
    ASSERT_TRUE(p.ok()) << k << ": " << p.status();
    ASSERT_EQ(*p, below - n) << k;
    below = *p;
    live.emplace_back(*p, n);
    ASSERT_INVARIANTS(a);
    ASSERT_EQ(a.GetStats().largest_free_pages, below - 1) << k;
  }
  // Odd sizes leave unaligned remainders whose rooms differ per order.
  for (const uint64_t n : {uint64_t{3}, uint64_t{1000}, (uint64_t{1} << 33) + 7}) {
    const absl::StatusOr<uint64_t> p = Alloc(a, n, kEnd);
    ASSERT_TRUE(p.ok()) << n << ": " << p.status();
    ASSERT_EQ(*p % std::bit_ceil(n), 0u);
    live.emplace_back(*p, n);
    ASSERT_INVARIANTS(a);
  }
  TestRng rng;
  while (!live.empty()) {
    const size_t j = rng.Below(live.size());
    ASSERT_TRUE(Free(a, live[j].first, live[j].second).ok());
    live[j] = live.back();
    live.pop_back();
    ASSERT_INVARIANTS(a);
  }
  const IovaStats s = a.GetStats();
  EXPECT_EQ(s.free_ranges, 1u);
  EXPECT_EQ(s.largest_free_pages, kEnd);
}

// --- random sequences against a reference model ---------------------------------------

// The reference: occupied ranges (allocations and reserved) in a std::map and
// a brute-force top-down search over the gaps.
class ReferenceModel {
 public:
  ReferenceModel(uint64_t start, uint64_t end) : start_(start), end_(end) {}

  // Highest p, multiple of bit_ceil(n), with [p, p + n) free inside
  // [start, min(limit, end)]; 0 if none.
  uint64_t HighestFit(uint64_t n, uint64_t limit) const {
    const uint64_t align = std::bit_ceil(n);
    const uint64_t top = std::min(limit, end_);
    uint64_t gap_hi = end_;
    for (auto it = occupied_.rbegin();; ++it) {
      const uint64_t gap_lo = it == occupied_.rend() ? start_ : it->second + 1;
      if (gap_lo <= gap_hi) {
        const uint64_t hi = std::min(gap_hi, top);
        if (hi >= gap_lo && hi - gap_lo + 1 >= n) {
          const uint64_t p = (hi - n + 1) & ~(align - 1);
          if (p >= gap_lo) return p;
        }
      }
      if (it == occupied_.rend()) return 0;
      gap_hi = it->first - 1;
    }
  }
  bool IsFree(uint64_t lo, uint64_t hi) const {
    auto it = occupied_.upper_bound(hi);
    return it == occupied_.begin() || std::prev(it)->second < lo;
  }
  void Occupy(uint64_t lo, uint64_t hi) { occupied_[lo] = hi; }
  void Release(uint64_t lo) { occupied_.erase(lo); }

 private:
  uint64_t start_;
  uint64_t end_;
  std::map<uint64_t, uint64_t> occupied_;
};

void CheckStatsAgainstRecount(const IovaAllocator& a) {
  const IovaStats s = a.GetStats();
  uint64_t free_pages = 0, ranges = 0, largest = 0;
  uint64_t hist[64] = {};
  a.ForEachFreeRange([&](uint64_t lo, uint64_t hi) {
    free_pages += hi - lo + 1;
    ++ranges;
    largest = std::max(largest, hi - lo + 1);
    ++hist[std::bit_width(hi - lo + 1) - 1];
  });
  uint64_t live = 0, live_pages = 0;
  a.ForEachAllocated([&](uint64_t, uint64_t pages) {
    ++live;
    live_pages += pages;
  });
  uint64_t reserved = 0;
  a.ForEachReserved([&](uint64_t lo, uint64_t hi) { reserved += hi - lo + 1; });
  EXPECT_EQ(s.free_pages, free_pages);
  EXPECT_EQ(s.free_ranges, ranges);
  EXPECT_EQ(s.largest_free_pages, largest);
  for (int k = 0; k < 64; ++k) EXPECT_EQ(s.free_range_histogram[k], hist[k]) << k;
  EXPECT_EQ(s.live_allocations, live);
  EXPECT_EQ(s.allocated_pages, live_pages);
  EXPECT_EQ(s.reserved_pages, reserved);
  EXPECT_EQ(s.space_pages, s.allocated_pages + s.cached_pages + s.free_pages + s.reserved_pages);
  EXPECT_DOUBLE_EQ(s.fragmentation_ratio,
                   free_pages == 0 ? 0.0 : 1.0 - double(largest) / double(free_pages));
}

TEST(IovaAllocatorRandom, TreePathMatchesReferenceTopDownSearch) {
  constexpr uint64_t kStart = 3;
  constexpr uint64_t kEnd = 24000;
  IovaAllocator a = Make(Opts(kStart, kEnd));
  ReferenceModel ref(kStart, kEnd);
  TestRng rng;
  std::vector<std::pair<uint64_t, uint64_t>> live;
  int allocs = 0, failures = 0, reserves = 0;
  for (int op = 0; op < 12000; ++op) {
    const uint64_t kind = rng.Below(100);
    if (kind < 55) {
      const uint64_t n = rng.Below(300) + 1;
      const uint64_t limits[] = {kEnd, kEnd + 1000, 0x1FFF, 0x3FFF, rng.Below(kEnd) + kStart};
      const uint64_t limit = limits[rng.Below(5)];
      const uint64_t want = ref.HighestFit(n, limit);
      absl::StatusOr<uint64_t> got = Alloc(a, n, limit);
      if (want == 0) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted)
            << "op " << op << " n=" << n << " limit=" << limit;
        ++failures;
      } else {
        ASSERT_TRUE(got.ok()) << "op " << op << ": " << got.status();
        ASSERT_EQ(*got, want) << "op " << op << " n=" << n << " limit=" << limit;
        ref.Occupy(want, want + n - 1);
        live.emplace_back(want, n);
        ++allocs;
      }
    } else if (kind < 97) {
      if (live.empty()) continue;
      const size_t j = rng.Below(live.size());
      ASSERT_EQ(Pages(a, live[j].first), live[j].second);
      ASSERT_TRUE(Free(a, live[j].first, live[j].second).ok());
      ref.Release(live[j].first);
      live[j] = live.back();
      live.pop_back();
    } else {
      const uint64_t lo = rng.Below(kEnd + 100);
      const uint64_t hi = lo + rng.Below(40);
      const uint64_t clo = std::max(lo, kStart), chi = std::min(hi, kEnd);
      bool all_free = true;
      // Reserved pages inside count as free for the model check below: a
      // reserve over reserved pages is allowed, over allocations it is not.
      for (const auto& [p, n] : live) all_free &= p + n - 1 < clo || p > chi;
      absl::Status s = a.Reserve(lo, hi);
      if (all_free) {
        ASSERT_TRUE(s.ok()) << s;
        if (clo <= chi) {
          for (uint64_t p = clo; p <= chi; ++p) {
            if (ref.IsFree(p, p)) ref.Occupy(p, p);
          }
          ++reserves;
        }
      } else {
        ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
      }
    }
    ASSERT_INVARIANTS(a);
    if (op % 97 == 0) CheckStatsAgainstRecount(a);
  }
  CheckStatsAgainstRecount(a);
  EXPECT_GT(allocs, 3000);
  EXPECT_GT(failures, 10);
  EXPECT_GT(reserves, 50);
}

// Rows saturate at 2^32 - 1 pages: a 2^44-page space mixes requests below,
// at and above the cap (the exact 64-bit fallback) with small ones, and
// unaligned starts so rooms sit just below and above the cap.
TEST(IovaAllocatorRandom, SaturatedRoomsMatchReferenceInHugeSpace) {
  constexpr uint64_t kStart = 5;
  constexpr uint64_t kEnd = (uint64_t{1} << 44) - 3;
  constexpr uint64_t kCap = 0xFFFFFFFF;
  IovaAllocator a = Make(Opts(kStart, kEnd));
  ReferenceModel ref(kStart, kEnd);
  TestRng rng;
  std::vector<std::pair<uint64_t, uint64_t>> live;
  int allocs = 0, failures = 0, huge_allocs = 0;
  for (int op = 0; op < 12000; ++op) {
    if (rng.Below(100) < 55) {
      const uint64_t sizes[] = {rng.Below(64) + 1, kCap - rng.Below(3), kCap + 1 + rng.Below(3),
                                (uint64_t{1} << (32 + rng.Below(10))) + rng.Below(1000),
                                rng.Below(uint64_t{1} << 40) + 1};
      const uint64_t n = sizes[rng.Below(5)];
      const uint64_t limits[] = {kEnd, ~uint64_t{0}, rng.Below(kEnd) + kStart,
                                 (uint64_t{1} << 43) + rng.Below(kCap)};
      const uint64_t limit = limits[rng.Below(4)];
      const uint64_t want = ref.HighestFit(n, limit);
      absl::StatusOr<uint64_t> got = Alloc(a, n, limit);
      if (want == 0) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted)
            << "op " << op << " n=" << n << " limit=" << limit;
        ++failures;
      } else {
        ASSERT_TRUE(got.ok()) << "op " << op << ": " << got.status();
        ASSERT_EQ(*got, want) << "op " << op << " n=" << n << " limit=" << limit;
        ref.Occupy(want, want + n - 1);
        live.emplace_back(want, n);
        ++allocs;
        huge_allocs += n > kCap;
      }
    } else if (!live.empty()) {
      const size_t j = rng.Below(live.size());
      ASSERT_TRUE(Free(a, live[j].first, live[j].second).ok());
      ref.Release(live[j].first);
      live[j] = live.back();
      live.pop_back();
    }
    ASSERT_INVARIANTS(a);
    if (op % 97 == 0) CheckStatsAgainstRecount(a);
  }
  CheckStatsAgainstRecount(a);
  EXPECT_GT(allocs, 3000);
  EXPECT_GT(huge_allocs, 300);
  EXPECT_GT(failures, 100);
}

// The reference for kLinuxNextFit: iova.c's cached-node rule written over the
// model: search below the cached node's first pfn, else from the limit; after
// an allocation the node is cached (cached32 when it ends below 4 GiB); a free
// at or above a cached node (cached32: ending below 4 GiB, or the node itself)
// moves it to the next occupied pfn above the freed range.
TEST(IovaAllocatorRandom, LinuxNextFitMatchesReference) {
  constexpr uint64_t kStart = 1;
  constexpr uint64_t kEnd = 0x1FFFFF;  // crosses 4 GiB: both cached nodes in play
  constexpr uint64_t kPfn32 = 0xFFFFF;
  constexpr uint64_t kAnchor = ~uint64_t{0};
  IovaAllocatorOptions o = Opts(kStart, kEnd);
  o.placement = IovaPlacement::kLinuxNextFit;
  IovaAllocator a = Make(o);
  ReferenceModel ref(kStart, kEnd);
  std::map<uint64_t, uint64_t> occupied;  // for "next occupied pfn above"
  uint64_t cached32 = kAnchor, cached = kAnchor;
  TestRng rng;
  std::vector<std::pair<uint64_t, uint64_t>> live;
  int wrapped = 0;
  for (int op = 0; op < 12000; ++op) {
    if (live.empty() || rng.Below(100) < 54) {
      // Mostly large sizes so that the space fills and the search wraps.
      const uint64_t n = rng.Below(4) == 0 ? rng.Below(300) + 1 : rng.Below(0x8000) + 1;
      const uint64_t limits[] = {kEnd, kPfn32, 0x17FFFF, rng.Below(kEnd) + kStart};
      const uint64_t limit = limits[rng.Below(4)];
      const uint64_t cursor = limit <= kPfn32 ? cached32 : cached;
      uint64_t want = 0;
      if (cursor != kAnchor && cursor - 1 < limit) want = ref.HighestFit(n, cursor - 1);
      if (want == 0) {
        want = ref.HighestFit(n, limit);
        wrapped += want != 0 && cursor != kAnchor;
      }
      absl::StatusOr<uint64_t> got = Alloc(a, n, limit);
      if (want == 0) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << op;
      } else {
        ASSERT_TRUE(got.ok()) << op << ": " << got.status();
        ASSERT_EQ(*got, want) << "op " << op << " n=" << n << " limit=" << limit;
        ref.Occupy(want, want + n - 1);
        occupied[want] = want + n - 1;
        (want + n - 1 <= kPfn32 ? cached32 : cached) = want;
        live.emplace_back(want, n);
      }
    } else {
      const size_t j = rng.Below(live.size());
      const auto [pfn, n] = live[j];
      const uint64_t last = pfn + n - 1;
      auto next = occupied.upper_bound(pfn);
      const uint64_t next_pfn = next == occupied.end() ? kAnchor : next->first;
      if (pfn == cached32 || (last <= kPfn32 && pfn >= cached32)) cached32 = next_pfn;
      if (pfn >= cached) cached = next_pfn;
      occupied.erase(pfn);
      ref.Release(pfn);
      ASSERT_TRUE(Free(a, pfn, n).ok());
      live[j] = live.back();
      live.pop_back();
    }
    ASSERT_INVARIANTS(a);
  }
  EXPECT_GT(wrapped, 20);
  CheckStatsAgainstRecount(a);
}

// W1's churn (10^4 live ranges, sizes 1..32 in 4 GiB) on the tree path, long
// enough to exercise every rebalancing case of the gap tree with wide rows.
TEST(IovaAllocatorRandom, LongChurnKeepsInvariants) {
  for (IovaPlacement placement : {IovaPlacement::kLinuxNextFit, IovaPlacement::kHighestFit}) {
    IovaAllocatorOptions o = Opts(1, 0xFFFFF);
    o.placement = placement;
    IovaAllocator a = Make(o);
    TestRng rng;
    std::vector<std::pair<uint64_t, uint64_t>> slots(10000);
    for (auto& [pfn, n] : slots) {
      n = rng.Below(32) + 1;
      pfn = *Alloc(a, n, 0xFFFFF);
    }
    for (int step = 0; step < 300000; ++step) {
      auto& [pfn, n] = slots[rng.Below(slots.size())];
      ASSERT_TRUE(Free(a, pfn, n).ok());
      n = rng.Below(32) + 1;
      pfn = *Alloc(a, n, 0xFFFFF);
      if (step % 20000 == 0) {
        ASSERT_INVARIANTS(a);
      }
    }
    ASSERT_INVARIANTS(a);
    CheckStatsAgainstRecount(a);
  }
}

TEST(IovaAllocatorRandom, CachedPathKeepsInvariants) {
  IovaAllocatorOptions o = Opts(1, 0x3FFF, /*cache=*/true);
  o.cache.magazine_depth = 8;
  o.cache.depot_magazines = 3;
  IovaAllocator a = Make(o);
  TestRng rng;
  struct Live {
    uint64_t pfn, requested, pages;
  };
  std::vector<Live> live;
  uint64_t ok = 0, failed = 0;
  for (int op = 0; op < 12000; ++op) {
    if (live.empty() || rng.Below(100) < 52) {
      const uint64_t n = rng.Below(4) == 0 ? rng.Below(300) + 1 : rng.Below(32) + 1;
      const uint64_t limit = rng.Below(4) == 0 ? 0x1FFF : 0x3FFF;
      absl::StatusOr<uint64_t> got = Alloc(a, n, limit);
      const uint64_t pages = n <= 32 ? std::bit_ceil(n) : n;
      if (got.ok()) {
        ASSERT_EQ(*got % std::bit_ceil(pages), 0u);
        ASSERT_LE(*got + pages - 1, limit);
        ASSERT_EQ(Pages(a, *got), pages);
        live.push_back({*got, n, pages});
        ++ok;
      } else {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
        ++failed;
      }
    } else {
      const size_t j = rng.Below(live.size());
      ASSERT_TRUE(Free(a, live[j].pfn, live[j].requested).ok());
      live[j] = live.back();
      live.pop_back();
    }
    ASSERT_INVARIANTS(a);
    if (op % 101 == 0) CheckStatsAgainstRecount(a);
  }
  const IovaStats s = a.GetStats();
  EXPECT_EQ(s.live_allocations, live.size());
  EXPECT_GT(s.cache_hits, 1000u);
  EXPECT_GT(s.cache_misses, 100u);
  EXPECT_GT(ok, 5000u);
  EXPECT_GT(failed, 0u);
  a.FlushCaches();
  CheckStatsAgainstRecount(a);
  EXPECT_INVARIANTS(a);
}

}  // namespace

// Reaches the out-of-line allocation path, to compare it with the inline one.
namespace internal {
class IovaAllocatorTestPeer {
 public:
  static absl::StatusOr<Iova> AllocOutOfLine(IovaAllocator& a, uint64_t size_bytes, Iova limit) {
    return a.AllocIovaSlow(size_bytes, limit);
  }
};
}  // namespace internal

namespace {

struct InlineCase {
  const char* name;
  uint64_t start_pfn, end_pfn;
  bool try_32bit_first;
};

class InlinePathTest : public ::testing::TestWithParam<InlineCase> {};

// AllocIova serves a hit from the loaded magazine inline and sends
// everything else (an empty loaded magazine, a top pfn above the limit, a
// miss) out of line, where the whole cache is consulted: the same random
// sequence through AllocIova and through the out-of-line path alone gives the
// same pfns, hit and miss counts and state. With try_32bit_first (PCI
// devices) the inline try is under 4 GiB first, as the out-of-line one is;
// the cases cover a space below 4 GiB and one across it.
TEST_P(InlinePathTest, InlineCacheHitsMatchTheOutOfLinePath) {
  const InlineCase& c = GetParam();
  IovaAllocatorOptions o = Opts(c.start_pfn, c.end_pfn, /*cache=*/true);
  o.placement = IovaPlacement::kLinuxNextFit;
  o.cache.magazine_depth = 8;
  o.cache.depot_magazines = 3;
  o.try_32bit_first = c.try_32bit_first;
  IovaAllocator inline_path = Make(o);
  IovaAllocator out_of_line = Make(o);
  const uint64_t span = c.end_pfn - c.start_pfn;
  TestRng rng;
  std::vector<std::pair<uint64_t, uint64_t>> live;  // pfn, requested pages
  uint64_t allocated = 0, below_4g = 0;
  for (int op = 0; op < 12000; ++op) {
    if (live.empty() || rng.Below(100) < 52) {
      const uint64_t n = rng.Below(8) == 0 ? rng.Below(100) + 1 : rng.Below(32) + 1;
      const uint64_t limits[] = {c.end_pfn, c.start_pfn + span / 2,
                                 c.start_pfn + rng.Below(span) + 1, 0xFFFFFFFF};
      const uint64_t limit = limits[rng.Below(4)];
      const uint64_t got = AllocOrZero(inline_path, n, limit);
      const absl::StatusOr<Iova> want =
          internal::IovaAllocatorTestPeer::AllocOutOfLine(out_of_line, n << kShift, LimitOf(limit));
      ASSERT_EQ(got, want.ok() ? want->value() >> kShift : 0)
          << "op " << op << " n=" << n << " limit=" << limit;
      if (got != 0) live.emplace_back(got, n);
      allocated += got != 0;
      below_4g += got != 0 && got <= 0xFFFFF;
    } else {
      const size_t j = rng.Below(live.size());
      ASSERT_TRUE(Free(inline_path, live[j].first, live[j].second).ok());
      ASSERT_TRUE(Free(out_of_line, live[j].first, live[j].second).ok());
      // A second free of the same range is refused (it sits in a cache now,
      // or went back to the tree).
      EXPECT_EQ(Free(inline_path, live[j].first, live[j].second).code(),
                absl::StatusCode::kNotFound);
      live[j] = live.back();
      live.pop_back();
    }
    if (op % 97 == 0) {
      ASSERT_INVARIANTS(inline_path);
      CheckStatsAgainstRecount(inline_path);
    }
  }
  const IovaStats r = inline_path.GetStats();
  const IovaStats s = out_of_line.GetStats();
  EXPECT_EQ(r.cache_hits, s.cache_hits);
  EXPECT_EQ(r.cache_misses, s.cache_misses);
  EXPECT_EQ(r.cached_pages, s.cached_pages);
  EXPECT_EQ(r.free_pages, s.free_pages);
  EXPECT_GT(r.cache_hits, 1000u);
  EXPECT_GT(r.cache_misses, 100u);
  if (c.start_pfn <= 0xFFFFF && c.end_pfn > 0xFFFFF) {
    // Across 4 GiB both halves are used; with try_32bit_first the low one
    // serves most allocations.
    EXPECT_GT(below_4g, 0u);
    if (c.try_32bit_first) {
      EXPECT_GT(below_4g * 2, allocated);
    }
  }
  ASSERT_INVARIANTS(inline_path);
}

INSTANTIATE_TEST_SUITE_P(
    Spaces, InlinePathTest,
    ::testing::Values(InlineCase{"Below4G", 1, 0x3FFF, false},
                      InlineCase{"Below4GTry32BitFirst", 1, 0x3FFF, true},
                      InlineCase{"Across4G", 0xFE000, 0x101FFF, false},
                      InlineCase{"Across4GTry32BitFirst", 0xFE000, 0x101FFF, true}),
    [](const ::testing::TestParamInfo<InlineCase>& info) { return info.param.name; });

// A 2^36-pfn space (a two-level directory of chunks) with allocations near
// start_pfn, near the top, and on both sides of chunk (2^15 pfns) and
// directory-node (2^24 pfns) boundaries (size-aligned allocations of up to
// 2^15 pages never straddle one; larger ones do), sizes 1..64 (one group of
// the allocation map), 65..4096 (a span of groups) and above (hash map),
// against the reference model; lookups of starts and interior pfns follow the
// model, and a free with the wrong size is refused.
TEST(IovaAllocatorRandom, AllocationIndexAcrossChunksAndDirectoryLevels) {
  constexpr uint64_t kStart = 7;
  constexpr uint64_t kEnd = (uint64_t{1} << 36) - 1;
  IovaAllocator a = Make(Opts(kStart, kEnd));
  ReferenceModel ref(kStart, kEnd);
  std::map<uint64_t, uint64_t> live;  // pfn -> pages
  TestRng rng;
  const uint64_t boundaries[] = {kStart + 200,
                                 uint64_t{1} << 15,
                                 uint64_t{3} << 15,
                                 uint64_t{1} << 24,
                                 (uint64_t{5} << 24) + (uint64_t{1} << 15),
                                 uint64_t{1} << 33,
                                 kEnd};
  int small = 0, span = 0, large = 0, straddling = 0, near_boundary = 0;
  for (int op = 0; op < 6000; ++op) {
    if (live.empty() || rng.Below(100) < 55) {
      const uint64_t kind = rng.Below(20);
      const uint64_t n = kind == 0   ? (uint64_t{1} << 15) + rng.Below(uint64_t{1} << 16)
                         : kind == 1 ? rng.Below(2048) + 3072  // both sides of 4096
                         : kind < 5  ? rng.Below(200) + 65
                                     : rng.Below(64) + 1;
      // A limit just above a boundary: the highest fit lands on or across it.
      const uint64_t b = boundaries[rng.Below(std::size(boundaries))];
      const uint64_t limit = std::min(kEnd, b + rng.Below(64));
      const uint64_t want = ref.HighestFit(n, limit);
      absl::StatusOr<uint64_t> got = Alloc(a, n, limit);
      if (want == 0) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << op;
        continue;
      }
      ASSERT_TRUE(got.ok()) << op << ": " << got.status();
      ASSERT_EQ(*got, want) << "op " << op << " n=" << n << " limit=" << limit;
      ref.Occupy(want, want + n - 1);
      live[want] = n;
      (n <= 64 ? small : n <= 4096 ? span : large) += 1;
      straddling += (want >> 15) != ((want + n - 1) >> 15);
      near_boundary += n <= 64 && ((want & 0x7FFF) < 64 || (want & 0x7FFF) >= 0x8000 - 128);
    } else {
      auto it = live.begin();
      std::advance(it, rng.Below(live.size()));
      const auto [pfn, pages] = *it;
      ASSERT_TRUE(Free(a, pfn, pages).ok()) << pfn;
      ASSERT_EQ(Free(a, pfn, pages).code(), absl::StatusCode::kNotFound);
      ref.Release(pfn);
      live.erase(it);
    }
    // Probe a live allocation's start, interior and end, and its neighbours.
    if (!live.empty()) {
      auto it = live.begin();
      std::advance(it, rng.Below(live.size()));
      const auto [pfn, pages] = *it;
      ASSERT_EQ(Pages(a, pfn), pages);
      ASSERT_EQ(a.AllocationSizeBytes(Iova(pfn << 12)), pages << 12);
      for (const uint64_t q : {pfn + 1, pfn + pages / 2, pfn + pages - 1, pfn + pages}) {
        const auto at = live.find(q);
        ASSERT_EQ(Pages(a, q),
                  at == live.end() ? std::nullopt : std::optional<uint64_t>(at->second))
            << q;
      }
      if (pages > 1) {
        ASSERT_EQ(Free(a, pfn, pages - 1).code(), absl::StatusCode::kInvalidArgument);
      }
    }
    if (op % 50 == 0) {
      ASSERT_INVARIANTS(a);
      CheckStatsAgainstRecount(a);
    }
  }
  ASSERT_INVARIANTS(a);
  std::vector<std::pair<uint64_t, uint64_t>> listed;
  a.ForEachAllocated([&](uint64_t pfn, uint64_t pages) { listed.emplace_back(pfn, pages); });
  const std::vector<std::pair<uint64_t, uint64_t>> want(live.begin(), live.end());
  EXPECT_EQ(listed, want);
  EXPECT_EQ(a.GetStats().live_allocations, live.size());
  EXPECT_GT(small, 1000);
  EXPECT_GT(span, 300);
  EXPECT_GT(large, 60);
  EXPECT_GT(straddling, 20);
  EXPECT_GT(near_boundary, 200);
}

// The inline cache paths on a space whose live allocations sit on both sides
// of chunk boundaries: every pfn popped from a cache is live again, every
// pushed one is not.
TEST(IovaAllocatorRandom, CachedRangesAcrossChunkBoundaries) {
  IovaAllocatorOptions o = Opts(5, (uint64_t{1} << 36) - 1, /*cache=*/true);
  o.cache.max_pages = 64;
  o.cache.magazine_depth = 6;
  o.cache.depot_magazines = 2;
  IovaAllocator a = Make(o);
  TestRng rng;
  std::map<uint64_t, uint64_t> live;  // pfn -> requested pages
  std::vector<uint64_t> freed;        // recently freed (possibly cached) pfns
  const uint64_t limits[] = {(uint64_t{1} << 15) + 40, (uint64_t{1} << 24) + 100, 300,
                             (uint64_t{1} << 36) - 1};
  for (int op = 0; op < 8000; ++op) {
    if (live.empty() || rng.Below(100) < 52) {
      const uint64_t n = rng.Below(8) == 0 ? rng.Below(100) + 1 : rng.Below(64) + 1;
      const uint64_t limit = limits[rng.Below(std::size(limits))];
      const uint64_t pfn = AllocOrZero(a, n, limit);
      if (pfn == 0) continue;
      const uint64_t pages = n <= 64 ? std::bit_ceil(n) : n;
      ASSERT_LE(pfn + pages - 1, limit);
      ASSERT_EQ(Pages(a, pfn), pages) << pfn;
      ASSERT_TRUE(live.emplace(pfn, n).second) << pfn;
    } else {
      auto it = live.begin();
      std::advance(it, rng.Below(live.size()));
      ASSERT_TRUE(Free(a, it->first, it->second).ok());
      const absl::Status again = Free(a, it->first, it->second);
      ASSERT_EQ(again.code(), absl::StatusCode::kNotFound);
      ASSERT_EQ(Pages(a, it->first), std::nullopt);
      freed.push_back(it->first);
      live.erase(it);
    }
    if (!freed.empty() && rng.Below(4) == 0) {
      const uint64_t pfn = freed[rng.Below(freed.size())];
      const auto at = live.find(pfn);
      if (at == live.end()) {
        ASSERT_EQ(Pages(a, pfn), std::nullopt);
        ASSERT_EQ(Free(a, pfn, 1).code(), absl::StatusCode::kNotFound);
      }
    }
    if (op % 97 == 0) {
      ASSERT_INVARIANTS(a);
      CheckStatsAgainstRecount(a);
    }
  }
  const IovaStats s = a.GetStats();
  EXPECT_EQ(s.live_allocations, live.size());
  EXPECT_GT(s.cache_hits, 1000u);
  a.FlushCaches();
  ASSERT_INVARIANTS(a);
  CheckStatsAgainstRecount(a);
}

// --- ClaimIova --------------------------------------------------------------------------

// Everything a claim could change: free ranges, live allocations, reserved
// ranges and the stats.
struct Snapshot {
  std::vector<std::pair<uint64_t, uint64_t>> free, live, reserved;
  uint64_t allocated_pages, cached_pages, free_pages, reserved_pages, largest_free_pages,
      free_ranges, live_allocations, cache_hits, cache_misses, failures;
  bool operator==(const Snapshot&) const = default;
};

Snapshot Snap(const IovaAllocator& a) {
  Snapshot s;
  a.ForEachFreeRange([&](uint64_t lo, uint64_t hi) { s.free.emplace_back(lo, hi); });
  a.ForEachAllocated([&](uint64_t pfn, uint64_t pages) { s.live.emplace_back(pfn, pages); });
  a.ForEachReserved([&](uint64_t lo, uint64_t hi) { s.reserved.emplace_back(lo, hi); });
  const IovaStats st = a.GetStats();
  s.allocated_pages = st.allocated_pages;
  s.cached_pages = st.cached_pages;
  s.free_pages = st.free_pages;
  s.reserved_pages = st.reserved_pages;
  s.largest_free_pages = st.largest_free_pages;
  s.free_ranges = st.free_ranges;
  s.live_allocations = st.live_allocations;
  s.cache_hits = st.cache_hits;
  s.cache_misses = st.cache_misses;
  s.failures = st.failures[0] + st.failures[1] + st.failures[2];
  return s;
}

absl::Status Claim(IovaAllocator& a, uint64_t pfn, uint64_t num_pages) {
  return a.ClaimIova(Iova(pfn << kShift), num_pages << kShift);
}

TEST(IovaAllocatorClaim, ErrorsNameTheFieldAndChangeNothing) {
  for (bool cache : {false, true}) {
    SCOPED_TRACE(cache);
    IovaAllocator a = Make(Opts(16, 0xFFFF, cache));
    ASSERT_TRUE(a.Reserve(0x100, 0x10F).ok());
    ASSERT_EQ(*Alloc(a, 8, 0xFFFF), 0xFFF8u);  // live, highest fit
    if (cache) {
      ASSERT_EQ(*Alloc(a, 4, 0xFFFF), 0xFFF4u);
      ASSERT_TRUE(Free(a, 0xFFF4, 4).ok());  // cached
      ASSERT_EQ(a.GetStats().cached_pages, 4u);
    }
    ASSERT_TRUE(Claim(a, 0x4000, 5000).ok());  // live, in the large map
    ASSERT_INVARIANTS(a);
    struct Case {
      uint64_t iova, size_bytes;
      absl::StatusCode code;
      std::string message;
    };
    const Case cases[] = {
        {0x300000, 0, absl::StatusCode::kInvalidArgument, "size_bytes=0: must be non-zero"},
        {0x300800, 4096, absl::StatusCode::kInvalidArgument,
         "iova=0x300800: not aligned to the granule"},
        {0x300000, 0x10000000, absl::StatusCode::kOutOfRange,
         "size_bytes=0x10000000: larger than the IOVA space of 0xfff0000 bytes"},
        {0x301000, 0x2000, absl::StatusCode::kInvalidArgument,
         "iova=0x301000: not aligned to 0x2 pages, as AllocIova aligns an allocation of 0x2 "
         "pages"},
        // 3 pages are aligned to 4, and take 4 when cacheable.
        {0x302000, 0x2001, absl::StatusCode::kInvalidArgument,
         absl::StrCat("iova=0x302000: not aligned to 0x4 pages, as AllocIova aligns an "
                      "allocation of ",
                      cache ? "0x4" : "0x3", " pages")},
        {0x8000, 4096, absl::StatusCode::kOutOfRange,
         "iova=0x8000: pfns [0x8, 0x8] outside the space [0x10, 0xffff]"},
        {0x10000000, 4096, absl::StatusCode::kOutOfRange,
         "iova=0x10000000: pfns [0x10000, 0x10000] outside the space [0x10, 0xffff]"},
        {0, 0x20000, absl::StatusCode::kOutOfRange,
         "iova=0: pfns [0, 0x1f] outside the space [0x10, 0xffff]"},
        {0x108000, 4096, absl::StatusCode::kFailedPrecondition,
         "iova=0x108000: pfns [0x108, 0x108] overlap the reserved range [0x100, 0x10f]"},
        {0x100000, 0x100000, absl::StatusCode::kFailedPrecondition,
         "iova=0x100000: pfns [0x100, 0x1ff] overlap the reserved range [0x100, 0x10f]"},
        {0xfffc000, 4096, absl::StatusCode::kFailedPrecondition,
         "iova=0xfffc000: pfns [0xfffc, 0xfffc] overlap the live allocation of 0x8 pages at "
         "pfn 0xfff8"},
        // Past free pages and (with the cache) the cached range to the live one.
        {0xff00000, 0x100000, absl::StatusCode::kFailedPrecondition,
         "iova=0xff00000: pfns [0xff00, 0xffff] overlap the live allocation of 0x8 pages at "
         "pfn 0xfff8"},
        {0x5000000, 4096, absl::StatusCode::kFailedPrecondition,
         "iova=0x5000000: pfns [0x5000, 0x5000] overlap the live allocation of 0x1388 pages at "
         "pfn 0x4000"},
        {0x4000000, 0x1388000, absl::StatusCode::kFailedPrecondition,
         "iova=0x4000000: pfns [0x4000, 0x5387] overlap the live allocation of 0x1388 pages at "
         "pfn 0x4000"},
    };
    for (const Case& c : cases) {
      SCOPED_TRACE(c.message);
      const Snapshot before = Snap(a);
      const absl::Status s = a.ClaimIova(Iova(c.iova), c.size_bytes);
      EXPECT_EQ(s.code(), c.code);
      EXPECT_EQ(s.message(), c.message);
      EXPECT_TRUE(Snap(a) == before);
      EXPECT_INVARIANTS(a);
    }
  }
}

TEST(IovaAllocatorClaim, MakesTheAllocationAllocIovaWouldHaveMade) {
  for (bool cache : {false, true}) {
    SCOPED_TRACE(cache);
    IovaAllocator a = Make(Opts(1, 0xFFFFF, cache));
    struct Case {
      uint64_t pfn, size_bytes, pages;  // pages: as AllocIova takes them
      bool cached_on_free;
    };
    const Case cases[] = {
        {0x10, 1, 1, cache},
        {0x11, 4096, 1, cache},
        {0x14, 3 * 4096, cache ? 4u : 3u, cache},
        {0x20, 17 * 4096 - 5, cache ? 32u : 17u, cache},
        {0x40, 33 * 4096, 33, false},
        {0x100, 100 * 4096, 100, false},
        {0x2000, 4096 * 4096, 4096, false},
        {0x4000, 5000 * 4096, 5000, false},
    };
    uint64_t live = 0, pages = 0;
    for (const Case& c : cases) {
      SCOPED_TRACE(c.pfn);
      ASSERT_TRUE(a.ClaimIova(Iova(c.pfn << kShift), c.size_bytes).ok());
      ASSERT_INVARIANTS(a);
      EXPECT_EQ(a.AllocationSizeBytes(Iova(c.pfn << kShift)), c.pages << kShift);
      ++live;
      pages += c.pages;
      EXPECT_EQ(a.GetStats().live_allocations, live);
      EXPECT_EQ(a.GetStats().allocated_pages, pages);
      CheckStatsAgainstRecount(a);
    }
    EXPECT_EQ(a.GetStats().cache_hits + a.GetStats().cache_misses, 0u);
    // Freed with the size given to the claim, as AllocIova's.
    for (const Case& c : cases) {
      SCOPED_TRACE(c.pfn);
      if (c.pages > 1) {
        EXPECT_EQ(a.FreeIova(Iova(c.pfn << kShift), (c.pages + 1) << kShift).code(),
                  absl::StatusCode::kInvalidArgument);
      }
      const uint64_t cached = a.GetStats().cached_pages;
      ASSERT_TRUE(a.FreeIova(Iova(c.pfn << kShift), c.size_bytes).ok());
      EXPECT_EQ(a.GetStats().cached_pages, cached + (c.cached_on_free ? c.pages : 0));
      EXPECT_EQ(a.AllocationSizeBytes(Iova(c.pfn << kShift)), std::nullopt);
      EXPECT_EQ(a.FreeIova(Iova(c.pfn << kShift), c.size_bytes).code(),
                absl::StatusCode::kNotFound);
      ASSERT_INVARIANTS(a);
    }
    a.FlushCaches();
    EXPECT_EQ(a.GetStats().free_pages, 0xFFFFFu);
    EXPECT_EQ(a.GetStats().free_ranges, 1u);
  }
}

TEST(IovaAllocatorClaim, OverCachedRangesFlushesTheCaches) {
  IovaAllocator a = Make(Opts(1, 0xFFF, /*cache=*/true));
  const uint64_t c = *Alloc(a, 2, 0xFFF);  // 0xFFE
  const uint64_t d = *Alloc(a, 2, 0xFFF);  // 0xFFC
  ASSERT_TRUE(Free(a, c, 2).ok());
  ASSERT_TRUE(Free(a, d, 2).ok());
  EXPECT_EQ(a.GetStats().cached_pages, 4u);
  // A claim inside free pages only leaves the caches alone.
  ASSERT_TRUE(Claim(a, 0x100, 1).ok());
  EXPECT_EQ(a.GetStats().cached_pages, 4u);
  // A claim over a cached range and free pages flushes them.
  ASSERT_TRUE(Claim(a, 0xFF8, 8).ok());
  EXPECT_INVARIANTS(a);
  EXPECT_EQ(a.GetStats().cached_pages, 0u);
  EXPECT_EQ(Pages(a, 0xFF8), 8u);
  EXPECT_EQ(a.GetStats().live_allocations, 2u);
  CheckStatsAgainstRecount(a);
  // The next allocation comes from below the claims.
  EXPECT_EQ(*Alloc(a, 2, 0xFFF), 0xFF6u);
  ASSERT_TRUE(Free(a, 0xFF8, 8).ok());
  EXPECT_INVARIANTS(a);
}

// Allocate a random mix with AllocIova, record it, claim every recorded
// allocation into a fresh allocator, and compare; then allocate on top and
// free everything.
void ClaimRoundTrip(IovaPlacement placement, bool cache, uint64_t seed) {
  SCOPED_TRACE(
      absl::StrCat("placement ", static_cast<int>(placement), " cache ", cache, " seed ", seed));
  IovaAllocatorOptions o = Opts(3, 0x7FFF, cache);
  o.placement = placement;
  o.cache.magazine_depth = 8;
  o.cache.depot_magazines = 2;
  IovaAllocator original = Make(o);
  ASSERT_TRUE(original.Reserve(0x1000, 0x10FF).ok());
  TestRng rng(seed);
  struct Live {
    uint64_t pfn, size_bytes;
  };
  std::vector<Live> live;
  for (int op = 0; op < 3000; ++op) {
    if (live.empty() || rng.Below(100) < 60) {
      const uint64_t n = rng.Below(8) == 0 ? 1 + rng.Below(300) : 1 + rng.Below(40);
      const uint64_t bytes = (n << kShift) - rng.Below(4096);
      const uint64_t limit = rng.Below(4) == 0 ? 0x3FFF : 0x7FFF;
      absl::StatusOr<Iova> v = original.AllocIova(bytes, LimitOf(limit));
      if (v.ok()) live.push_back({v->value() >> kShift, bytes});
    } else {
      const size_t j = rng.Below(live.size());
      ASSERT_TRUE(original.FreeIova(Iova(live[j].pfn << kShift), live[j].size_bytes).ok());
      live[j] = live.back();
      live.pop_back();
    }
  }
  ASSERT_INVARIANTS(original);
  ASSERT_GT(live.size(), 100u);
  // Caches are not restored: compare with the original's flushed.
  original.FlushCaches();
  IovaAllocator restored = Make(o);
  ASSERT_TRUE(restored.Reserve(0x1000, 0x10FF).ok());
  std::vector<Live> order = live;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.Below(i)]);
  for (const Live& l : order) {
    ASSERT_TRUE(restored.ClaimIova(Iova(l.pfn << kShift), l.size_bytes).ok());
    ASSERT_INVARIANTS(restored);
  }
  Snapshot want = Snap(original);
  Snapshot got = Snap(restored);
  EXPECT_EQ(got.cache_hits + got.cache_misses + got.failures, 0u);
  want.cache_hits = want.cache_misses = want.failures = 0;
  EXPECT_TRUE(got == want);
  EXPECT_EQ(got.free, want.free);
  EXPECT_EQ(got.live, want.live);
  CheckStatsAgainstRecount(restored);
  // Every recorded allocation is live at its size; claiming it again fails.
  for (const Live& l : live) {
    ASSERT_EQ(restored.AllocationSizeBytes(Iova(l.pfn << kShift)),
              original.AllocationSizeBytes(Iova(l.pfn << kShift)));
    ASSERT_EQ(restored.ClaimIova(Iova(l.pfn << kShift), l.size_bytes).code(),
              absl::StatusCode::kFailedPrecondition);
  }
  // Normal allocations on top never hand out a claimed page.
  std::map<uint64_t, uint64_t> claimed;  // pfn -> last
  for (const Live& l : live) claimed[l.pfn] = l.pfn + *Pages(restored, l.pfn) - 1;
  std::vector<Live> extra;
  for (int i = 0; i < 2000; ++i) {
    const uint64_t bytes = (1 + rng.Below(40)) << kShift;
    absl::StatusOr<Iova> v = restored.AllocIova(bytes, LimitOf(0x7FFF));
    if (!v.ok()) continue;
    const uint64_t pfn = v->value() >> kShift;
    const uint64_t last = pfn + *Pages(restored, pfn) - 1;
    auto it = claimed.upper_bound(last);
    ASSERT_TRUE(it == claimed.begin() || std::prev(it)->second < pfn)
        << "pfn " << pfn << " overlaps a claim";
    extra.push_back({pfn, bytes});
    if (rng.Below(3) == 0) {
      ASSERT_TRUE(restored.FreeIova(*v, bytes).ok());
      extra.pop_back();
    }
  }
  ASSERT_INVARIANTS(restored);
  // Freeing everything returns both to the initial state.
  for (const Live& l : extra) {
    ASSERT_TRUE(restored.FreeIova(Iova(l.pfn << kShift), l.size_bytes).ok());
  }
  for (const Live& l : live) {
    ASSERT_TRUE(original.FreeIova(Iova(l.pfn << kShift), l.size_bytes).ok());
    ASSERT_TRUE(restored.FreeIova(Iova(l.pfn << kShift), l.size_bytes).ok());
  }
  original.FlushCaches();
  restored.FlushCaches();
  ASSERT_INVARIANTS(original);
  ASSERT_INVARIANTS(restored);
  IovaAllocator initial = Make(o);
  ASSERT_TRUE(initial.Reserve(0x1000, 0x10FF).ok());
  const Snapshot init = Snap(initial);
  for (IovaAllocator* a : {&original, &restored}) {
    const Snapshot s = Snap(*a);
    EXPECT_EQ(s.free, init.free);
    EXPECT_EQ(s.live, init.live);
    EXPECT_EQ(s.reserved, init.reserved);
    EXPECT_EQ(s.free_pages, init.free_pages);
    EXPECT_EQ(s.allocated_pages, 0u);
    EXPECT_EQ(s.live_allocations, 0u);
  }
}

TEST(IovaAllocatorClaim, RoundTripHighestFit) {
  ClaimRoundTrip(IovaPlacement::kHighestFit, false, 1);
  ClaimRoundTrip(IovaPlacement::kHighestFit, true, 2);
}
TEST(IovaAllocatorClaim, RoundTripLinuxNextFit) {
  ClaimRoundTrip(IovaPlacement::kLinuxNextFit, false, 3);
  ClaimRoundTrip(IovaPlacement::kLinuxNextFit, true, 4);
}

// Claims against the reference model: random pfns and sizes, accepted
// exactly when the (aligned, in-range) pages are all free or cached.
TEST(IovaAllocatorClaim, RandomClaimsMatchTheReference) {
  IovaAllocator a = Make(Opts(1, 0x3FFF, /*cache=*/true));
  ASSERT_TRUE(a.Reserve(0x2000, 0x201F).ok());
  ReferenceModel model(1, 0x3FFF);
  model.Occupy(0x2000, 0x201F);
  TestRng rng(9);
  struct Live {
    uint64_t pfn, size_bytes, pages;
  };
  std::vector<Live> live;
  int claimed = 0, refused = 0;
  for (int op = 0; op < 8000; ++op) {
    const uint64_t r = rng.Below(100);
    if (r < 50) {
      const uint64_t n = rng.Below(6) == 0 ? 33 + rng.Below(200) : 1 + rng.Below(32);
      const uint64_t pages = n <= 32 ? std::bit_ceil(n) : n;
      const uint64_t pfn = (1 + rng.Below(0x3FFF)) & ~(std::bit_ceil(pages) - 1);
      const Snapshot before = Snap(a);
      const absl::Status s = Claim(a, pfn, n);
      if (pfn < 1 || pfn + pages - 1 > 0x3FFF) {
        ASSERT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
      } else if (model.IsFree(pfn, pfn + pages - 1)) {
        ASSERT_TRUE(s.ok()) << s;
        model.Occupy(pfn, pfn + pages - 1);
        live.push_back({pfn, n << kShift, pages});
        ++claimed;
      } else {
        ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
        ++refused;
      }
      if (!s.ok()) {
        ASSERT_TRUE(Snap(a) == before);
      }
    } else if (r < 75 && !live.empty()) {
      const size_t j = rng.Below(live.size());
      ASSERT_TRUE(a.FreeIova(Iova(live[j].pfn << kShift), live[j].size_bytes).ok());
      model.Release(live[j].pfn);
      live[j] = live.back();
      live.pop_back();
    } else {
      const uint64_t n = 1 + rng.Below(32);
      absl::StatusOr<Iova> v = a.AllocIova(n << kShift, LimitOf(0x3FFF));
      if (v.ok()) {
        const uint64_t pfn = v->value() >> kShift;
        ASSERT_TRUE(model.IsFree(pfn, pfn + std::bit_ceil(n) - 1));
        model.Occupy(pfn, pfn + std::bit_ceil(n) - 1);
        live.push_back({pfn, n << kShift, std::bit_ceil(n)});
      }
    }
    ASSERT_INVARIANTS(a);
  }
  EXPECT_GT(claimed, 500);
  EXPECT_GT(refused, 500);
  CheckStatsAgainstRecount(a);
}

}  // namespace
}  // namespace iommu::core
