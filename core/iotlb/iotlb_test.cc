// SPDX-License-Identifier: Apache-2.0
#include "core/iotlb/iotlb.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "core/workloads/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {

// Corrupts private state so the death tests can show CheckInvariants fires.
class IotlbTestPeer {
 public:
  static void BumpOccupancy(Iotlb& t) { ++t.stats_.occupancy; }
  static void DuplicateLruRank(Iotlb& t) { t.entries_[1].lru = t.entries_[0].lru; }
  static void MisalignFirstValid(Iotlb& t) {
    for (uint64_t i = 0; i < t.capacity(); ++i) {
      if (t.entries_[i].key & Iotlb::kKeyValid) {
        t.entries_[i].phys |= 0x1000;
        return;
      }
    }
  }
};

namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr unsigned k4K = 12;
constexpr unsigned k64K = 16;
constexpr unsigned k2M = 21;
constexpr uint64_t kPage = uint64_t{1} << k4K;
constexpr uint64_t kBlock = uint64_t{1} << k2M;

const Grant kRw(Grant::kReadUnpriv | Grant::kWriteUnpriv);
const Grant kRo(Grant::kReadUnpriv);

Iotlb Make(uint32_t sets, uint32_t ways, std::vector<uint8_t> leaves = {k4K, k2M}) {
  absl::StatusOr<Iotlb> t = Iotlb::Create({sets, ways, std::move(leaves)});
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

void MustInsert(Iotlb& t, TlbTag tag, uint64_t iova, unsigned leaf, uint64_t phys,
                Grant grant = kRw) {
  ASSERT_TRUE(t.Insert(tag, Iova(iova), leaf, PhysAddr(phys), grant).ok());
  t.CheckInvariants();
}

struct EntryKey {
  uint32_t tag;
  uint64_t iova;
  unsigned leaf;
  friend auto operator<=>(const EntryKey&, const EntryKey&) = default;
};
struct EntryVal {
  uint64_t phys;
  uint8_t grant;
  bool stale;
  friend bool operator==(const EntryVal&, const EntryVal&) = default;
};
using Snapshot = std::map<EntryKey, EntryVal>;

Snapshot Snap(const Iotlb& t) {
  Snapshot s;
  t.ForEachEntry([&](const IotlbEntryView& e) {
    s[{e.tag.Packed(), e.iova.value(), e.leaf_size_log2}] = {e.phys.value(), e.grant.bits(),
                                                             e.stale};
  });
  return s;
}

// --- configuration ----------------------------------------------------------

TEST(IotlbCreate, RejectsBadGeometryNamingTheField) {
  // One call per case rather than a table of IotlbConfig: GCC 12 at -O3
  // reports the cleanup of a partly built array of them as maybe-uninitialized.
  const auto expect_rejected = [](const IotlbConfig& config, const std::string& prefix) {
    absl::StatusOr<Iotlb> t = Iotlb::Create(config);
    ASSERT_FALSE(t.ok()) << prefix;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << prefix;
    EXPECT_THAT(std::string(t.status().message()), StartsWith(prefix));
  };
  expect_rejected({0, 4, {12}}, "sets=0:");
  expect_rejected({3, 4, {12}}, "sets=0x3:");
  expect_rejected({4, 0, {12}}, "ways=0:");
  expect_rejected({4, 65, {12}}, "ways=0x41:");
  expect_rejected({1u << 20, 2, {12}}, "ways=0x2: sets=0x100000 x ways = 0x200000 entries");
  expect_rejected({4, 4, {}}, "leaf_sizes_log2=0:");
  expect_rejected({4, 4, {12, 13, 14, 15, 16, 17, 18, 19, 20}}, "leaf_sizes_log2=0x9:");
  expect_rejected({4, 4, {11}}, "leaf_sizes_log2=0xb:");
  expect_rejected({4, 4, {53}}, "leaf_sizes_log2=0x35:");
  expect_rejected({4, 4, {12, 21, 12}}, "leaf_sizes_log2=0xc: listed twice");
}

TEST(IotlbCreate, AcceptsEdgeGeometries) {
  EXPECT_TRUE(Iotlb::Create({1, 1, {12}}).ok());
  EXPECT_TRUE(Iotlb::Create({1u << 14, 64, {12, 52}}).ok());
  Iotlb t = Make(8, 2);
  EXPECT_EQ(t.capacity(), 16u);
  EXPECT_EQ(t.stats().occupancy, 0u);
  t.CheckInvariants();
}

// --- hit, miss, fill --------------------------------------------------------

TEST(Iotlb, HitTranslatesWithOffsetAndMissesElsewhere) {
  Iotlb t = Make(16, 4);
  const TlbTag tag{1, 0};
  MustInsert(t, tag, 0x12345000, k4K, 0x8000'0000, kRo);
  const std::optional<IotlbHit> hit = t.Lookup(tag, Iova(0x12345abc));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->phys, PhysAddr(0x8000'0abc));
  EXPECT_EQ(hit->grant, kRo);
  EXPECT_EQ(hit->leaf_size_log2, k4K);
  EXPECT_FALSE(hit->stale);
  EXPECT_FALSE(t.Lookup(tag, Iova(0x12346000)).has_value());
  EXPECT_FALSE(t.Lookup(tag, Iova(0x12344fff)).has_value());
  EXPECT_EQ(t.stats().lookups, 3u);
  EXPECT_EQ(t.stats().hits, 1u);
  EXPECT_EQ(t.stats().misses, 2u);
  EXPECT_EQ(t.stats().fills, 1u);
  EXPECT_EQ(t.stats().occupancy, 1u);
  EXPECT_EQ(t.stats().stale_hits, 0u);
}

TEST(Iotlb, InsertAcceptsAnyAddressInsideTheLeaf) {
  Iotlb t = Make(16, 4);
  MustInsert(t, {1, 0}, 0x40123456, k2M, 0x9f123456);
  const std::optional<IotlbHit> hit = t.Lookup({1, 0}, Iova(0x40000010));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->phys, PhysAddr(0x9f000010));
  const Snapshot s = Snap(t);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s.begin()->first.iova, 0x40000000u);
  EXPECT_EQ(s.begin()->second.phys, 0x9f000000u);
}

TEST(Iotlb, InsertErrorsLeaveNoTrace) {
  Iotlb t = Make(16, 4);
  MustInsert(t, {1, 0}, 0x1000, k4K, 0x2000);
  const Snapshot before = Snap(t);
  const IotlbStats stats = t.stats();

  absl::Status s = t.Insert({1, 0}, Iova(0x200000), k64K, PhysAddr(0x200000), kRw);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("leaf_size_log2=0x10:"));
  s = t.Insert({1, 0}, Iova(0x200000), 99, PhysAddr(0x200000), kRw);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("leaf_size_log2=0x63:"));
  s = t.Insert({1, 0}, Iova(0x3010), k4K, PhysAddr(0x7020), kRw);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("phys=0x7020: offset in the leaf"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("iova=0x3010"));

  EXPECT_EQ(Snap(t), before);
  EXPECT_EQ(t.stats().fills, stats.fills);
  EXPECT_EQ(t.stats().occupancy, stats.occupancy);
  t.CheckInvariants();
}

TEST(Iotlb, RefillOfTheSameLeafReplacesInPlace) {
  Iotlb t = Make(1, 4, {k4K});
  MustInsert(t, {1, 0}, 0x1000, k4K, 0x5000, kRo);
  ASSERT_TRUE(t.MarkStale({1, 0}, Iova(0x1000), kPage).ok());
  MustInsert(t, {1, 0}, 0x1000, k4K, 0x6000, kRw);
  EXPECT_EQ(t.stats().occupancy, 1u);
  EXPECT_EQ(t.stats().evictions, 0u);
  EXPECT_EQ(t.stats().fills, 2u);
  const std::optional<IotlbHit> hit = t.Lookup({1, 0}, Iova(0x1008));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->phys, PhysAddr(0x6008));
  EXPECT_EQ(hit->grant, kRw);
  EXPECT_FALSE(hit->stale);
}

TEST(Iotlb, LruEvictsTheLeastRecentlyUsedWay) {
  Iotlb t = Make(1, 4, {k4K});
  const TlbTag tag{7, 0};
  for (uint64_t i = 0; i < 4; ++i) MustInsert(t, tag, i * kPage, k4K, 0x100000 + i * kPage);
  // Recency now (MRU first): 3 2 1 0. Touch 0 and 1: 1 0 3 2.
  ASSERT_TRUE(t.Lookup(tag, Iova(0 * kPage)).has_value());
  ASSERT_TRUE(t.Lookup(tag, Iova(1 * kPage)).has_value());
  t.CheckInvariants();
  MustInsert(t, tag, 4 * kPage, k4K, 0x200000);  // evicts 2
  EXPECT_EQ(t.stats().evictions, 1u);
  MustInsert(t, tag, 5 * kPage, k4K, 0x201000);  // evicts 3
  EXPECT_EQ(t.stats().evictions, 2u);
  Snapshot s = Snap(t);
  EXPECT_EQ(s.count({tag.Packed(), 2 * kPage, k4K}), 0u);
  EXPECT_EQ(s.count({tag.Packed(), 3 * kPage, k4K}), 0u);
  EXPECT_EQ(s.size(), 4u);
  // Recency: 5 4 1 0; next victim is 0.
  MustInsert(t, tag, 6 * kPage, k4K, 0x202000);
  s = Snap(t);
  EXPECT_EQ(s.count({tag.Packed(), 0, k4K}), 0u);
  EXPECT_EQ(s.count({tag.Packed(), 1 * kPage, k4K}), 1u);
  EXPECT_EQ(t.stats().evictions, 3u);
  EXPECT_EQ(t.stats().occupancy, 4u);
}

TEST(Iotlb, FreedWaysAreFilledBeforeEvicting) {
  Iotlb t = Make(1, 4, {k4K});
  for (uint64_t i = 0; i < 4; ++i) MustInsert(t, {1, 0}, i * kPage, k4K, i * kPage);
  ASSERT_EQ(*t.InvalidateVa({1, 0}, Iova(2 * kPage), kPage, VaLevels::kAllLevels), 1u);
  MustInsert(t, {1, 0}, 9 * kPage, k4K, 0);
  EXPECT_EQ(t.stats().evictions, 0u);
  EXPECT_EQ(Snap(t).size(), 4u);
}

TEST(Iotlb, BlockEntryCoversExactlyItsBlock) {
  Iotlb t = Make(64, 4, {k4K, k2M});
  const TlbTag tag{3, 1};
  const uint64_t base = 0x4020'0000;  // 2 MiB aligned
  MustInsert(t, tag, base, k2M, 0x1'0000'0000);
  for (uint64_t off = 0; off < kBlock; off += kPage) {
    const std::optional<IotlbHit> hit = t.Lookup(tag, Iova(base + off + 0x18));
    ASSERT_TRUE(hit.has_value()) << off;
    EXPECT_EQ(hit->phys, PhysAddr(0x1'0000'0000 + off + 0x18));
    EXPECT_EQ(hit->leaf_size_log2, k2M);
  }
  EXPECT_FALSE(t.Lookup(tag, Iova(base - 1)).has_value());
  EXPECT_FALSE(t.Lookup(tag, Iova(base + kBlock)).has_value());
  EXPECT_EQ(t.stats().hits, kBlock / kPage);
}

TEST(Iotlb, ProbeOrderDoesNotChangeResults) {
  for (const std::vector<uint8_t>& order :
       {std::vector<uint8_t>{k4K, k2M}, std::vector<uint8_t>{k2M, k4K}}) {
    Iotlb t = Make(8, 2, order);
    MustInsert(t, {1, 0}, 0x600000, k2M, 0xa00000);
    MustInsert(t, {1, 0}, 0x1000, k4K, 0x3000);
    ASSERT_TRUE(t.Lookup({1, 0}, Iova(0x7ff000)).has_value());
    EXPECT_EQ(t.Lookup({1, 0}, Iova(0x7ff000))->phys, PhysAddr(0xbff000));
    EXPECT_EQ(t.Lookup({1, 0}, Iova(0x1004))->phys, PhysAddr(0x3004));
    EXPECT_FALSE(t.Lookup({1, 0}, Iova(0x2000)).has_value());
  }
}

TEST(Iotlb, TagsIsolateAsidsAndVmids) {
  Iotlb t = Make(16, 4);
  const uint64_t iova = 0x7000;
  MustInsert(t, {1, 0}, iova, k4K, 0x10000);
  MustInsert(t, {2, 0}, iova, k4K, 0x20000);
  MustInsert(t, {1, 1}, iova, k4K, 0x30000);
  EXPECT_EQ(t.Lookup({1, 0}, Iova(iova))->phys, PhysAddr(0x10000));
  EXPECT_EQ(t.Lookup({2, 0}, Iova(iova))->phys, PhysAddr(0x20000));
  EXPECT_EQ(t.Lookup({1, 1}, Iova(iova))->phys, PhysAddr(0x30000));
  EXPECT_FALSE(t.Lookup({3, 0}, Iova(iova)).has_value());
  EXPECT_FALSE(t.Lookup({2, 1}, Iova(iova)).has_value());
  EXPECT_EQ(t.stats().occupancy, 3u);
}

// --- invalidation -----------------------------------------------------------

// Fills 4 tags x (8 pages + 2 blocks) and returns the snapshot.
Snapshot FillMixed(Iotlb& t) {
  for (const TlbTag tag : {TlbTag{1, 0}, TlbTag{2, 0}, TlbTag{1, 1}, TlbTag{2, 1}}) {
    for (uint64_t i = 0; i < 8; ++i) {
      MustInsert(t, tag, 0x100000 + i * kPage, k4K, 0x900000 + i * kPage);
    }
    MustInsert(t, tag, 0x400000, k2M, 0x2000000);
    MustInsert(t, tag, 0x600000, k2M, 0x2200000);
  }
  return Snap(t);
}

Snapshot Without(Snapshot s, bool (*pred)(const EntryKey&)) {
  std::erase_if(s, [&](const auto& kv) { return pred(kv.first); });
  return s;
}

TEST(IotlbInvalidate, EachScopeRemovesExactlyItsEntriesAndCounts) {
  Iotlb t = Make(64, 4);
  Snapshot s = FillMixed(t);
  ASSERT_EQ(s.size(), 40u);

  EXPECT_EQ(t.InvalidateAsid(1, 0), 10u);
  t.CheckInvariants();
  s = Without(s, [](const EntryKey& k) { return k.tag == TlbTag{1, 0}.Packed(); });
  EXPECT_EQ(Snap(t), s);
  EXPECT_EQ(t.stats().invalidations_asid, 1u);

  EXPECT_EQ(t.InvalidateVmid(1), 20u);
  t.CheckInvariants();
  s = Without(s, [](const EntryKey& k) { return (k.tag >> 16) == 1; });
  EXPECT_EQ(Snap(t), s);
  EXPECT_EQ(t.stats().invalidations_vmid, 1u);

  EXPECT_EQ(t.InvalidateAll(), 10u);
  t.CheckInvariants();
  EXPECT_TRUE(Snap(t).empty());
  EXPECT_EQ(t.stats().invalidations_all, 1u);
  EXPECT_EQ(t.stats().entries_invalidated, 40u);
  EXPECT_EQ(t.stats().occupancy, 0u);
  EXPECT_EQ(t.stats().invalidations_va, 0u);
}

TEST(IotlbInvalidate, VaRangeRemovesOverlappingEntriesOfItsTagOnly) {
  for (const VaLevels levels : {VaLevels::kAllLevels, VaLevels::kLeafOnly}) {
    Iotlb t = Make(64, 4);
    Snapshot s = FillMixed(t);
    // Pages 2..4 of the 4K run, and one byte of the first block.
    ASSERT_EQ(*t.InvalidateVa({2, 0}, Iova(0x102000), 3 * kPage, levels), 3u);
    ASSERT_EQ(*t.InvalidateVa({2, 0}, Iova(0x5fffff), 1, levels), 1u);
    t.CheckInvariants();
    s = Without(s, [](const EntryKey& k) {
      return k.tag == TlbTag{2, 0}.Packed() &&
             ((k.iova >= 0x102000 && k.iova < 0x105000) || k.iova == 0x400000);
    });
    EXPECT_EQ(Snap(t), s);
    const bool leaf = levels == VaLevels::kLeafOnly;
    EXPECT_EQ(t.stats().invalidations_va, leaf ? 0u : 2u);
    EXPECT_EQ(t.stats().invalidations_va_leaf, leaf ? 2u : 0u);
    EXPECT_EQ(t.stats().entries_invalidated, 4u);
    EXPECT_EQ(t.stats().occupancy, 36u);
  }
}

TEST(IotlbInvalidate, HugeRangeScansAndStaysExact) {
  // 16 sets: any range of >= 16 pages takes the scan path.
  Iotlb t = Make(16, 4);
  const TlbTag tag{5, 2};
  MustInsert(t, tag, 0x0000'1000, k4K, 0x1000);
  MustInsert(t, tag, 0x0100'0000, k2M, 0x200000);
  MustInsert(t, tag, 0x00ff'f000, k4K, 0x3000);            // just below the range
  MustInsert(t, tag, 0x100'0100'0000, k4K, 0x4000);        // just above the range
  MustInsert(t, {5, 3}, 0x0200'0000, k4K, 0x5000);         // other tag, inside
  MustInsert(t, tag, 0xffff'ffff'ffff'f000, k4K, 0x6000);  // top of the space
  const uint64_t size = uint64_t{1} << 40;
  ASSERT_EQ(*t.InvalidateVa(tag, Iova(0x0100'0000), size, VaLevels::kAllLevels), 1u);
  t.CheckInvariants();
  Snapshot s = Snap(t);
  EXPECT_EQ(s.size(), 5u);
  EXPECT_EQ(s.count({tag.Packed(), 0x0100'0000, k2M}), 0u);
  EXPECT_EQ(s.count({TlbTag{5, 3}.Packed(), 0x0200'0000, k4K}), 1u);
  // A range ending at 2^64 - 1 is legal.
  ASSERT_EQ(*t.InvalidateVa(tag, Iova(0xffff'ffff'ffff'f000), kPage, VaLevels::kLeafOnly), 1u);
  // The whole space.
  ASSERT_EQ(*t.InvalidateVa(tag, Iova(0), ~uint64_t{0}, VaLevels::kAllLevels), 3u);
  t.CheckInvariants();
  EXPECT_EQ(Snap(t).size(), 1u);
}

TEST(IotlbInvalidate, SmallRangeProbesAcrossBlockBoundaries) {
  // A 2-page range straddling two 2 MiB blocks removes both blocks.
  Iotlb t = Make(64, 4);
  MustInsert(t, {1, 0}, 0x200000, k2M, 0x200000);
  MustInsert(t, {1, 0}, 0x400000, k2M, 0x400000);
  MustInsert(t, {1, 0}, 0x600000, k2M, 0x600000);
  ASSERT_EQ(*t.InvalidateVa({1, 0}, Iova(0x3ff000), 2 * kPage, VaLevels::kAllLevels), 2u);
  t.CheckInvariants();
  EXPECT_EQ(Snap(t).size(), 1u);
  EXPECT_TRUE(t.Lookup({1, 0}, Iova(0x600000)).has_value());
}

TEST(IotlbInvalidate, RangeErrorsNameSizeAndLeaveNoTrace) {
  Iotlb t = Make(16, 4);
  MustInsert(t, {1, 0}, 0x1000, k4K, 0x1000);
  const IotlbStats before = t.stats();
  absl::StatusOr<uint64_t> r = t.InvalidateVa({1, 0}, Iova(0x1000), 0, VaLevels::kAllLevels);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), StartsWith("size_bytes=0:"));
  r = t.InvalidateVa({1, 0}, Iova(0xffff'ffff'ffff'f000), 0x2000, VaLevels::kLeafOnly);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), StartsWith("size_bytes=0x2000:"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("iova=0xfffffffffffff000"));
  r = t.MarkStale({1, 0}, Iova(0x1000), 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = t.MarkStale({1, 0}, Iova(~uint64_t{0}), 2);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.stats().invalidations_va, before.invalidations_va);
  EXPECT_EQ(t.stats().invalidations_va_leaf, before.invalidations_va_leaf);
  EXPECT_EQ(t.stats().mark_stale_calls, before.mark_stale_calls);
  EXPECT_EQ(t.stats().occupancy, 1u);
  t.CheckInvariants();
}

// --- lazy mode --------------------------------------------------------------

TEST(IotlbMarkStale, StaleEntriesKeepTranslatingAndCountEveryHit) {
  Iotlb t = Make(16, 4);
  const TlbTag tag{4, 0};
  MustInsert(t, tag, 0x10000, k4K, 0xa0000);
  MustInsert(t, tag, 0x11000, k4K, 0xb0000);
  MustInsert(t, tag, 0x200000, k2M, 0xc00000);
  MustInsert(t, {9, 0}, 0x10000, k4K, 0xd0000);
  ASSERT_EQ(*t.MarkStale(tag, Iova(0x10000), kPage), 1u);
  t.CheckInvariants();
  EXPECT_EQ(t.stats().entries_marked_stale, 1u);
  EXPECT_EQ(t.stats().occupancy, 4u);

  for (int i = 0; i < 3; ++i) {
    const std::optional<IotlbHit> hit = t.Lookup(tag, Iova(0x10040));
    ASSERT_TRUE(hit.has_value());
    EXPECT_TRUE(hit->stale);
    EXPECT_EQ(hit->phys, PhysAddr(0xa0040));
  }
  EXPECT_FALSE(t.Lookup(tag, Iova(0x11000))->stale);
  EXPECT_FALSE(t.Lookup({9, 0}, Iova(0x10000))->stale);
  EXPECT_EQ(t.stats().stale_hits, 3u);
  EXPECT_EQ(t.stats().hits, 5u);

  // Re-marking counts nothing new; a block is marked by any overlap.
  EXPECT_EQ(*t.MarkStale(tag, Iova(0x10000), 0x400000), 2u);
  EXPECT_TRUE(t.Lookup(tag, Iova(0x3fffff))->stale);
  EXPECT_EQ(t.stats().mark_stale_calls, 2u);
  EXPECT_EQ(t.stats().stale_hits, 4u);

  // The deferred invalidation removes them.
  EXPECT_EQ(t.InvalidateAsid(4, 0), 3u);
  t.CheckInvariants();
  EXPECT_FALSE(t.Lookup(tag, Iova(0x10000)).has_value());
  EXPECT_TRUE(t.Lookup({9, 0}, Iova(0x10000)).has_value());
}

// --- invariant checker ------------------------------------------------------

TEST(IotlbDeathTest, CheckInvariantsCatchesCorruption) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  {
    Iotlb t = Make(4, 4);
    MustInsert(t, {1, 0}, 0x1000, k4K, 0x1000);
    IotlbTestPeer::BumpOccupancy(t);
    EXPECT_DEATH(t.CheckInvariants(), "occupancy");
  }
  {
    Iotlb t = Make(4, 4);
    IotlbTestPeer::DuplicateLruRank(t);
    EXPECT_DEATH(t.CheckInvariants(), "LRU ranks are not a permutation");
  }
  {
    Iotlb t = Make(4, 4);
    MustInsert(t, {1, 0}, 0x200000, k2M, 0x200000);
    IotlbTestPeer::MisalignFirstValid(t);
    EXPECT_DEATH(t.CheckInvariants(), "not aligned");
  }
}

// --- random operations against a reference model ----------------------------

// The reference: per tag, the regions "architecturally mapped" (the page
// table) and the ranges unmapped lazily and not yet flushed (their IOVA may
// not be reused); and what the IOTLB may cache, kept equal to the IOTLB's
// contents (entries that vanish without an invalidation are evictions and
// must match the eviction counter).
class IotlbModelTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kSpaceBase = 0x4000'0000;
  static constexpr uint64_t kSpaceBytes = 8 * kBlock;
  static constexpr unsigned kLeaves[3] = {k4K, k64K, k2M};

  struct Region {
    unsigned leaf;
    uint64_t phys;
    uint8_t grant;
  };
  struct TagModel {
    std::map<uint64_t, Region> mapped;                       // base -> region
    std::vector<std::pair<uint64_t, uint64_t>> quarantined;  // [first, last]
  };

  IotlbModelTest() : tlb_(Make(16, 4, {k4K, k64K, k2M})) {}

  uint64_t Rand(uint64_t n) { return rng_.Next() % n; }
  TlbTag RandTag() { return TlbTag{uint16_t(1 + Rand(3)), uint16_t(Rand(2))}; }

  static bool Overlaps(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1) {
    return a0 <= b1 && b0 <= a1;
  }
  bool Free(const TagModel& m, uint64_t first, uint64_t last) const {
    for (const auto& [base, r] : m.mapped) {
      if (Overlaps(base, base + (uint64_t{1} << r.leaf) - 1, first, last)) return false;
    }
    for (const auto& [q0, q1] : m.quarantined) {
      if (Overlaps(q0, q1, first, last)) return false;
    }
    return true;
  }
  // Cached entries of `tag` overlapping [first, last].
  std::vector<EntryKey> CachedIn(TlbTag tag, uint64_t first, uint64_t last) const {
    std::vector<EntryKey> out;
    for (const auto& [k, v] : cached_) {
      if (k.tag == tag.Packed() &&
          Overlaps(k.iova, k.iova + (uint64_t{1} << k.leaf) - 1, first, last)) {
        out.push_back(k);
      }
    }
    return out;
  }
  uint64_t RemoveCachedIf(auto pred) {
    return std::erase_if(cached_, [&](const auto& kv) { return pred(kv.first); });
  }

  void OpMap() {
    const TlbTag tag = RandTag();
    const unsigned leaf = kLeaves[Rand(3)];
    const uint64_t size = uint64_t{1} << leaf;
    const uint64_t base = kSpaceBase + Rand(kSpaceBytes / size) * size;
    TagModel& m = model_[tag.Packed()];
    if (m.mapped.size() >= 12 || !Free(m, base, base + size - 1)) return;
    m.mapped[base] = Region{leaf, (1 + Rand(1 << 16)) << leaf, uint8_t(1 + Rand(63))};
  }

  // An access: most go to a mapped region (so the IOTLB fills up and
  // evicts), some to a range unmapped lazily (a device racing its own unmap:
  // the stale-hit exposure), the rest anywhere in the space.
  void OpAccess() {
    const TlbTag tag = RandTag();
    uint64_t iova = kSpaceBase + Rand(kSpaceBytes);
    const uint64_t dice = Rand(8);
    const TagModel& m = model_[tag.Packed()];
    if (dice == 0 && !m.quarantined.empty()) {
      const auto [q0, q1] = m.quarantined[Rand(m.quarantined.size())];
      iova = q0 + Rand(q1 - q0 + 1);
    } else if (dice >= 2) {
      if (!m.mapped.empty()) {
        auto it = m.mapped.begin();
        std::advance(it, Rand(m.mapped.size()));
        iova = it->first + Rand(uint64_t{1} << it->second.leaf);
      }
    }
    const std::vector<EntryKey> covering = CachedIn(tag, iova, iova);
    ASSERT_LE(covering.size(), 1u);
    const std::optional<IotlbHit> hit = tlb_.Lookup(tag, Iova(iova));
    if (hit.has_value()) {
      ++expect_hits_;
      ASSERT_EQ(covering.size(), 1u) << "hit on an entry the model does not hold";
      const EntryKey k = covering[0];
      const EntryVal& v = cached_.at(k);
      EXPECT_EQ(hit->leaf_size_log2, k.leaf);
      EXPECT_EQ(hit->phys, PhysAddr(v.phys + (iova - k.iova)));
      EXPECT_EQ(hit->grant, Grant(v.grant));
      EXPECT_EQ(hit->stale, v.stale);
      expect_stale_hits_ += v.stale;
      if (!hit->stale) {
        // Safety: a non-stale translation is exactly the live mapping.
        const auto it = m.mapped.find(k.iova);
        ASSERT_NE(it, m.mapped.end()) << "translation for an unmapped iova";
        EXPECT_EQ(it->second.leaf, k.leaf);
        EXPECT_EQ(it->second.phys, v.phys);
      }
      return;
    }
    ASSERT_TRUE(covering.empty()) << "miss on an entry the IOTLB holds";
    // The walk: fill from the page table if mapped.
    for (const auto& [base, r] : m.mapped) {
      if (iova < base || iova > base + (uint64_t{1} << r.leaf) - 1) continue;
      ASSERT_TRUE(
          tlb_.Insert(tag, Iova(iova), r.leaf, PhysAddr(r.phys + (iova - base)), Grant(r.grant))
              .ok());
      cached_[{tag.Packed(), base, r.leaf}] = {r.phys, r.grant, false};
      ++expect_fills_;
      return;
    }
  }

  // Picks a mapped region of some tag; false when none.
  bool PickMapped(TlbTag* tag, uint64_t* base, Region* region) {
    for (int tries = 0; tries < 8; ++tries) {
      *tag = RandTag();
      TagModel& m = model_[tag->Packed()];
      if (m.mapped.empty()) continue;
      auto it = m.mapped.begin();
      std::advance(it, Rand(m.mapped.size()));
      *base = it->first;
      *region = it->second;
      m.mapped.erase(it);
      return true;
    }
    return false;
  }

  void OpUnmapStrict() {
    TlbTag tag;
    uint64_t base;
    Region r;
    if (!PickMapped(&tag, &base, &r)) return;
    const uint64_t size = uint64_t{1} << r.leaf;
    const VaLevels levels = Rand(2) ? VaLevels::kLeafOnly : VaLevels::kAllLevels;
    const absl::StatusOr<uint64_t> n = tlb_.InvalidateVa(tag, Iova(base), size, levels);
    ASSERT_TRUE(n.ok());
    const uint64_t want = RemoveCachedIf([&](const EntryKey& k) {
      return k.tag == tag.Packed() &&
             Overlaps(k.iova, k.iova + (uint64_t{1} << k.leaf) - 1, base, base + size - 1);
    });
    EXPECT_EQ(*n, want);
    expect_invalidated_ += want;
    // No lookup may return a translation for the range any more.
    for (int i = 0; i < 4; ++i) {
      EXPECT_FALSE(tlb_.Lookup(tag, Iova(base + Rand(size))).has_value());
    }
  }

  void OpUnmapLazy() {
    TlbTag tag;
    uint64_t base;
    Region r;
    if (!PickMapped(&tag, &base, &r)) return;
    const uint64_t size = uint64_t{1} << r.leaf;
    const absl::StatusOr<uint64_t> n = tlb_.MarkStale(tag, Iova(base), size);
    ASSERT_TRUE(n.ok());
    uint64_t want = 0;
    for (const EntryKey& k : CachedIn(tag, base, base + size - 1)) {
      EntryVal& v = cached_.at(k);
      want += !v.stale;
      v.stale = true;
    }
    EXPECT_EQ(*n, want);
    model_[tag.Packed()].quarantined.push_back({base, base + size - 1});
  }

  // The lazy flush of one domain: invalidate the ASID, then release.
  void OpFlushLazy() {
    const TlbTag tag = RandTag();
    const uint64_t n = tlb_.InvalidateAsid(tag.asid, tag.vmid);
    const uint64_t want = RemoveCachedIf([&](const EntryKey& k) { return k.tag == tag.Packed(); });
    EXPECT_EQ(n, want);
    expect_invalidated_ += want;
    model_[tag.Packed()].quarantined.clear();
  }

  void OpInvalidateRandomRange() {
    const TlbTag tag = RandTag();
    const uint64_t first = kSpaceBase + Rand(kSpaceBytes);
    const uint64_t size = Rand(8) ? 1 + Rand(8 * kPage) : 1 + Rand(kSpaceBytes);
    const VaLevels levels = Rand(2) ? VaLevels::kLeafOnly : VaLevels::kAllLevels;
    const absl::StatusOr<uint64_t> n = tlb_.InvalidateVa(tag, Iova(first), size, levels);
    ASSERT_TRUE(n.ok());
    const uint64_t want = RemoveCachedIf([&](const EntryKey& k) {
      return k.tag == tag.Packed() &&
             Overlaps(k.iova, k.iova + (uint64_t{1} << k.leaf) - 1, first, first + size - 1);
    });
    EXPECT_EQ(*n, want);
    expect_invalidated_ += want;
  }

  void OpInvalidateVmid() {
    const uint16_t vmid = uint16_t(Rand(2));
    const uint64_t n = tlb_.InvalidateVmid(vmid);
    const uint64_t want = RemoveCachedIf([&](const EntryKey& k) { return (k.tag >> 16) == vmid; });
    EXPECT_EQ(n, want);
    expect_invalidated_ += want;
  }

  void OpInvalidateAll() {
    EXPECT_EQ(tlb_.InvalidateAll(), cached_.size());
    expect_invalidated_ += cached_.size();
    cached_.clear();
  }

  // After each op: invariants, and the model equals the IOTLB once the
  // entries evicted by this op are dropped from it.
  void Reconcile() {
    tlb_.CheckInvariants();
    const Snapshot actual = Snap(tlb_);
    for (const auto& [k, v] : actual) {
      const auto it = cached_.find(k);
      ASSERT_NE(it, cached_.end()) << "IOTLB holds an entry the model never filled";
      ASSERT_EQ(it->second, v);
    }
    expect_evictions_ += RemoveCachedIf([&](const EntryKey& k) { return !actual.contains(k); });
    const IotlbStats& s = tlb_.stats();
    ASSERT_EQ(s.evictions, expect_evictions_);
    ASSERT_EQ(s.occupancy, cached_.size());
    ASSERT_EQ(s.hits + s.misses, s.lookups);
    ASSERT_EQ(s.fills, expect_fills_);
    ASSERT_EQ(s.entries_invalidated, expect_invalidated_);
    ASSERT_EQ(s.stale_hits, expect_stale_hits_);
    ASSERT_LE(s.occupancy, tlb_.capacity());
  }

  Iotlb tlb_;
  workloads::Rng rng_{0x10715b};
  std::map<uint32_t, TagModel> model_;
  std::map<EntryKey, EntryVal> cached_;
  uint64_t expect_fills_ = 0, expect_evictions_ = 0, expect_invalidated_ = 0;
  uint64_t expect_hits_ = 0, expect_stale_hits_ = 0;
};

TEST_F(IotlbModelTest, RandomOperationsMatchTheModel) {
  constexpr int kOps = 30000;
  for (int op = 0; op < kOps; ++op) {
    const uint64_t dice = Rand(100);
    if (dice < 25) {
      OpMap();
    } else if (dice < 77) {
      OpAccess();
    } else if (dice < 83) {
      OpUnmapStrict();
    } else if (dice < 88) {
      OpUnmapLazy();
    } else if (dice < 91) {
      OpFlushLazy();
    } else if (dice < 98) {
      OpInvalidateRandomRange();
    } else if (dice < 99) {
      OpInvalidateVmid();
    } else if (Rand(4) == 0) {
      OpInvalidateAll();
    }
    ASSERT_NO_FATAL_FAILURE(Reconcile()) << "after op " << op;
    if (HasFailure()) FAIL() << "after op " << op;
  }
  // The sequence exercised every path.
  const IotlbStats& s = tlb_.stats();
  EXPECT_GT(s.evictions, 100u);
  EXPECT_GT(s.stale_hits, 10u);
  EXPECT_GT(expect_hits_, 1000u);
  EXPECT_GT(s.invalidations_va, 100u);
  EXPECT_GT(s.invalidations_va_leaf, 100u);
  EXPECT_GT(s.entries_invalidated, 1000u);
}

}  // namespace
}  // namespace iommu::core
