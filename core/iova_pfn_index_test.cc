#include "core/iova_pfn_index.h"

#include <cstdint>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

#define ASSERT_INDEX_OK(idx) ASSERT_TRUE((idx).CheckInvariants().ok()) << (idx).CheckInvariants()

struct Rng {
  uint64_t x = 42;
  uint64_t Next() {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  }
  uint64_t Below(uint64_t n) { return Next() % n; }
};

TEST(IovaPfnIndex, FindInsertErase) {
  IovaPfnIndex idx;
  EXPECT_EQ(idx.Find(7), nullptr);
  idx.Insert(7, 70);
  idx.Insert(8, 80);
  ASSERT_INDEX_OK(idx);
  ASSERT_NE(idx.Find(7), nullptr);
  EXPECT_EQ(*idx.Find(7), 70u);
  *idx.Find(8) |= uint64_t{1} << 63;
  EXPECT_EQ(*idx.Find(8), 80u | (uint64_t{1} << 63));
  idx.Erase(7);
  ASSERT_INDEX_OK(idx);
  EXPECT_EQ(idx.Find(7), nullptr);
  EXPECT_EQ(idx.size(), 1u);
}

// Size-aligned pfns (multiples of a power of two, as the allocator produces),
// random insert / erase / update against std::map, with growth, probe-run
// wrap-around and backward-shift erase all exercised.
TEST(IovaPfnIndex, RandomOpsMatchMap) {
  IovaPfnIndex idx;
  std::map<uint64_t, uint64_t> ref;
  std::vector<uint64_t> keys;
  Rng rng;
  for (int op = 0; op < 40000; ++op) {
    const uint64_t kind = rng.Below(100);
    if (kind < 50 || keys.empty()) {
      const uint64_t pfn = (rng.Below(1 << 14) + 1) << rng.Below(6);
      if (ref.count(pfn)) {
        ASSERT_NE(idx.Find(pfn), nullptr);
        continue;
      }
      ASSERT_EQ(idx.Find(pfn), nullptr) << pfn;
      const uint64_t entry = rng.Next();
      idx.Insert(pfn, entry);
      ref[pfn] = entry;
      keys.push_back(pfn);
    } else if (kind < 90) {
      const size_t j = rng.Below(keys.size());
      idx.Erase(keys[j]);
      ref.erase(keys[j]);
      ASSERT_EQ(idx.Find(keys[j]), nullptr);
      keys[j] = keys.back();
      keys.pop_back();
    } else {
      const uint64_t pfn = keys[rng.Below(keys.size())];
      uint64_t* e = idx.Find(pfn);
      ASSERT_NE(e, nullptr);
      *e = ref[pfn] = rng.Next();
    }
    ASSERT_INDEX_OK(idx);
    ASSERT_EQ(idx.size(), ref.size());
    if (op % 1000 == 0) {
      std::map<uint64_t, uint64_t> seen;
      idx.ForEach([&](uint64_t pfn, uint64_t entry) { seen[pfn] = entry; });
      ASSERT_EQ(seen, ref);
    }
  }
  for (const auto& [pfn, entry] : ref) {
    const uint64_t* e = idx.Find(pfn);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(*e, entry);
  }
}

}  // namespace
}  // namespace iommu::core::internal
