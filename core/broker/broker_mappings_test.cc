// SPDX-License-Identifier: Apache-2.0
#include "core/broker/broker_mappings.h"

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

using ::testing::ElementsAre;

constexpr uint64_t kGranule = 4096;

MappingRecord Record(uint64_t iova, uint64_t size_bytes, uint64_t id) {
  MappingRecord r{.mapping_id = id,
                  .device = absl::StrCat("device-with-a-long-name-", id),
                  .iova = Iova(iova),
                  .iova_size_bytes = size_bytes,
                  .mapped_bytes = size_bytes};
  r.pt_ranges.push_back({Iova(iova), {PhysAddr(id << 12), size_bytes}});
  r.pieces.push_back({Iova(iova), PhysAddr(id << 12), size_bytes});
  r.buffer_refs.push_back({.id = id});
  return r;
}

// The semantics the table replaces: the record with the greatest start at or
// below addr, if its range contains addr.
const MappingRecord* ModelFind(const std::map<uint64_t, MappingRecord>& model, uint64_t addr) {
  auto it = model.upper_bound(addr);
  if (it == model.begin()) return nullptr;
  --it;
  if (addr - it->first >= it->second.iova_size_bytes) return nullptr;
  return &it->second;
}

uint64_t IdAt(MappingTable& t, uint64_t addr) {
  const MappingRecord* m = t.Find(addr);
  return m == nullptr ? 0 : m->mapping_id;
}

TEST(MappingTableTest, ContainmentAtStartsInteriorsAndEdges) {
  for (const bool index_all : {false, true}) {
    SCOPED_TRACE(index_all);
    MappingTable t(kGranule, index_all);
    t.Insert(Record(0x10000, kGranule, 1));       // one granule
    t.Insert(Record(0x11000, 3 * kGranule, 2));   // three granules, adjacent
    t.Insert(Record(0x20000, kGranule, 3));       // alone
    t.Insert(Record(0x30000, 16 * kGranule, 4));  // long
    ASSERT_TRUE(t.CheckInvariants().ok());
    EXPECT_EQ(t.size(), 4u);
    EXPECT_EQ(IdAt(t, 0x0), 0u);
    EXPECT_EQ(IdAt(t, 0xffff), 0u);
    EXPECT_EQ(IdAt(t, 0x10000), 1u);
    EXPECT_EQ(IdAt(t, 0x10abc), 1u);
    EXPECT_EQ(IdAt(t, 0x10fff), 1u);
    EXPECT_EQ(IdAt(t, 0x11000), 2u);
    EXPECT_EQ(IdAt(t, 0x12345), 2u);  // second granule of a long record
    EXPECT_EQ(IdAt(t, 0x13fff), 2u);
    EXPECT_EQ(IdAt(t, 0x14000), 0u);
    EXPECT_EQ(IdAt(t, 0x1ffff), 0u);
    EXPECT_EQ(IdAt(t, 0x20000), 3u);
    EXPECT_EQ(IdAt(t, 0x21000), 0u);
    EXPECT_EQ(IdAt(t, 0x3f001), 4u);
    EXPECT_EQ(IdAt(t, 0x40000), 0u);
    EXPECT_EQ(IdAt(t, ~uint64_t{0}), 0u);
    ASSERT_NE(t.FindStart(0x11000), nullptr);
    EXPECT_EQ(t.FindStart(0x12000), nullptr);  // interior: not a start
    EXPECT_THAT(t.StartsInOrder(), ElementsAre(0x10000, 0x11000, 0x20000, 0x30000));

    ASSERT_NE(t.FindStart(0x11000), nullptr);
    EXPECT_EQ(t.FindStart(0x11000)->mapping_id, 2u);
    EXPECT_EQ(t.FindStart(0x11000)->device, "device-with-a-long-name-2");
    t.Erase(0x11000);
    EXPECT_EQ(IdAt(t, 0x12345), 0u);
    EXPECT_EQ(IdAt(t, 0x10fff), 1u);
    ASSERT_TRUE(t.CheckInvariants().ok());
    // A short record in the freed space is found from its only granule.
    t.Insert(Record(0x12000, kGranule, 5));
    EXPECT_EQ(IdAt(t, 0x12fff), 5u);
    EXPECT_EQ(IdAt(t, 0x11fff), 0u);
    ASSERT_TRUE(t.CheckInvariants().ok());
  }
}

// Records that do not start on the granule, or are smaller than it, are
// still found from every address they contain (and only from those).
TEST(MappingTableTest, UnalignedAndSubGranuleRecords) {
  MappingTable t(kGranule, /*index_all=*/false);
  t.Insert(Record(0x10800, 0x1000, 1));  // straddles two granules
  t.Insert(Record(0x20000, 0x200, 2));   // smaller than a granule, aligned
  t.Insert(Record(0x20400, 0x200, 3));   // in the same granule, unaligned
  ASSERT_TRUE(t.CheckInvariants().ok());
  EXPECT_EQ(IdAt(t, 0x107ff), 0u);
  EXPECT_EQ(IdAt(t, 0x10800), 1u);
  EXPECT_EQ(IdAt(t, 0x11000), 1u);
  EXPECT_EQ(IdAt(t, 0x117ff), 1u);
  EXPECT_EQ(IdAt(t, 0x11800), 0u);
  EXPECT_EQ(IdAt(t, 0x201ff), 2u);
  EXPECT_EQ(IdAt(t, 0x20200), 0u);  // the granule's record does not contain it
  EXPECT_EQ(IdAt(t, 0x20400), 3u);
  EXPECT_EQ(IdAt(t, 0x205ff), 3u);
  EXPECT_EQ(IdAt(t, 0x20600), 0u);
  t.Erase(0x20000);
  EXPECT_EQ(IdAt(t, 0x20450), 3u);
  ASSERT_TRUE(t.CheckInvariants().ok());
}

TEST(MappingTableTest, OverlappingScanInOrder) {
  MappingTable t(kGranule, /*index_all=*/true);
  t.Insert(Record(0x30000, kGranule, 3));
  t.Insert(Record(0x10000, 2 * kGranule, 1));
  t.Insert(Record(0x20000, kGranule, 2));
  auto scan = [&](uint64_t first, uint64_t last) {
    std::vector<uint64_t> ids;
    t.ForEachOverlapping(first, last, [&](const MappingRecord& m) {
      ids.push_back(m.mapping_id);
      return true;
    });
    return ids;
  };
  EXPECT_THAT(scan(0, ~uint64_t{0}), ElementsAre(1, 2, 3));
  EXPECT_THAT(scan(0x11fff, 0x20000), ElementsAre(1, 2));  // the ends of both
  EXPECT_THAT(scan(0x12000, 0x1ffff), ElementsAre());
  EXPECT_THAT(scan(0x20001, 0x30000), ElementsAre(2, 3));
  std::vector<uint64_t> first_only;
  t.ForEachOverlapping(0, ~uint64_t{0}, [&](const MappingRecord& m) {
    first_only.push_back(m.mapping_id);
    return false;  // stops the scan
  });
  EXPECT_THAT(first_only, ElementsAre(1));
}

// Many inserts and removals (the table grows, erases and rehashes): every
// lookup matches the ordered-map model and every record keeps its contents.
TEST(MappingTableTest, RandomSequencesMatchModel) {
  for (const bool index_all : {false, true}) {
    SCOPED_TRACE(index_all);
    std::mt19937_64 rng(index_all ? 7 : 11);
    MappingTable t(kGranule, index_all);
    std::map<uint64_t, MappingRecord> model;
    uint64_t next_id = 1;
    constexpr uint64_t kSpacePages = 4096;
    for (int step = 0; step < 20000; ++step) {
      if (rng() % 100 < 55 || model.empty()) {
        // Mostly single granules; some longer, some off the granule.
        const uint64_t page = rng() % kSpacePages;
        const uint64_t pages = rng() % 4 == 0 ? 1 + rng() % 8 : 1;
        const uint64_t offset = rng() % 8 == 0 ? 0x800 : 0;
        const uint64_t start = page * kGranule + offset;
        const uint64_t size = pages * kGranule;
        if (ModelFind(model, start) != nullptr || ModelFind(model, start + size - 1) != nullptr) {
          continue;
        }
        auto next = model.upper_bound(start);
        if (next != model.end() && next->first < start + size) continue;
        if (next_id % 2 == 0) {
          t.Insert(Record(start, size, next_id));
        } else {  // built in place
          MappingRecord& r = t.Emplace(Iova(start), size);
          EXPECT_EQ(r.mapping_id, 0u);
          EXPECT_TRUE(r.device.empty());
          const MappingRecord filled = Record(start, size, next_id);
          r.mapping_id = filled.mapping_id;
          r.device = filled.device;
          r.mapped_bytes = filled.mapped_bytes;
          r.pt_ranges = filled.pt_ranges;
          r.pieces = filled.pieces;
          r.buffer_refs = filled.buffer_refs;
        }
        model.emplace(start, Record(start, size, next_id));
        ++next_id;
      } else {
        auto it = model.begin();
        std::advance(it, rng() % model.size());
        ASSERT_NE(t.FindStart(it->first), nullptr);
        const MappingRecord r = *t.FindStart(it->first);
        t.Erase(it->first);
        EXPECT_EQ(r.mapping_id, it->second.mapping_id);
        EXPECT_EQ(r.device, it->second.device);
        EXPECT_EQ(r.iova_size_bytes, it->second.iova_size_bytes);
        ASSERT_EQ(r.pieces.size(), 1u);
        EXPECT_EQ(r.pieces[0].phys, it->second.pieces[0].phys);
        ASSERT_EQ(r.buffer_refs.size(), 1u);
        EXPECT_EQ(r.buffer_refs[0].id, it->second.buffer_refs[0].id);
        model.erase(it);
      }
      ASSERT_EQ(t.size(), model.size());
      for (int probe = 0; probe < 8; ++probe) {
        const uint64_t addr = rng() % ((kSpacePages + 8) * kGranule);
        const MappingRecord* want = ModelFind(model, addr);
        const MappingRecord* got = t.Find(addr);
        ASSERT_EQ(got == nullptr, want == nullptr) << std::hex << addr;
        if (got != nullptr) {
          EXPECT_EQ(got->mapping_id, want->mapping_id) << std::hex << addr;
          EXPECT_EQ(got->device, want->device);
        }
      }
      if (step % 500 == 0) {
        ASSERT_TRUE(t.CheckInvariants().ok()) << step;
      }
    }
    ASSERT_TRUE(t.CheckInvariants().ok());
    std::vector<uint64_t> starts;
    for (const auto& [start, r] : model) starts.push_back(start);
    EXPECT_EQ(t.StartsInOrder(), starts);
    if (index_all) {
      std::vector<uint64_t> scanned;
      t.ForEachOverlapping(0x100000, 0x200000, [&](const MappingRecord& m) {
        scanned.push_back(m.iova.value());
        return true;
      });
      std::vector<uint64_t> want;
      for (const auto& [start, r] : model) {
        if (start <= 0x200000 && start + r.iova_size_bytes > 0x100000) want.push_back(start);
      }
      EXPECT_EQ(scanned, want);
    }
  }
}

}  // namespace
}  // namespace iommu::core::internal
