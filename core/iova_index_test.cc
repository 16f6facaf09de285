#include "core/iova_index.h"

#include <cstdint>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

struct TestRng {
  uint64_t x = 42;
  uint64_t Next() {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  }
};

#define ASSERT_INDEX_OK(idx) ASSERT_TRUE((idx).CheckInvariants().ok()) << (idx).CheckInvariants()

// Every key of the model is found with its entry, and the sizes agree.
void ExpectSame(const IovaIndex& idx, const std::map<uint64_t, uint64_t>& model) {
  ASSERT_EQ(idx.size(), model.size());
  for (const auto& [pfn, entry] : model) {
    const uint64_t* e = idx.Find(pfn);
    ASSERT_NE(e, nullptr) << pfn;
    EXPECT_EQ(*e, entry) << pfn;
  }
  std::map<uint64_t, uint64_t> seen;
  idx.ForEach([&](uint64_t pfn, uint64_t entry) { EXPECT_TRUE(seen.emplace(pfn, entry).second); });
  EXPECT_EQ(seen, model);
}

TEST(IovaIndex, EmptyFindsNothing) {
  IovaIndex idx;
  EXPECT_EQ(idx.size(), 0u);
  EXPECT_EQ(idx.Find(1), nullptr);
  EXPECT_EQ(idx.Find(~uint64_t{0}), nullptr);
  EXPECT_FALSE(idx.Erase(uint64_t{7}));
  ASSERT_INDEX_OK(idx);
}

TEST(IovaIndex, InsertFindUpdateErase) {
  IovaIndex idx;
  idx.Insert(0x100, 4);
  idx.Insert(0x200, 8);
  ASSERT_NE(idx.Find(0x100), nullptr);
  EXPECT_EQ(*idx.Find(0x100), 4u);
  *idx.Find(0x200) |= uint64_t{1} << 63;
  EXPECT_EQ(*idx.Find(0x200), (uint64_t{1} << 63) | 8);
  EXPECT_EQ(idx.Find(0x300), nullptr);
  EXPECT_TRUE(idx.Erase(uint64_t{0x100}));
  EXPECT_EQ(idx.Find(0x100), nullptr);
  EXPECT_EQ(idx.size(), 1u);
  idx.Erase(idx.Find(0x200));
  EXPECT_EQ(idx.size(), 0u);
  ASSERT_INDEX_OK(idx);
}

TEST(IovaIndex, GrowsKeepingEveryKeyAndLoadAtMostThreeQuarters) {
  IovaIndex idx;
  std::map<uint64_t, uint64_t> model;
  for (uint64_t i = 1; i <= 5000; ++i) {
    idx.Insert(i * 32, i);  // size-aligned keys share their low bits
    model[i * 32] = i;
    EXPECT_LE(idx.size() * 4, idx.capacity() * 3);
  }
  ASSERT_INDEX_OK(idx);
  ExpectSame(idx, model);
  const size_t capacity = idx.capacity();
  // Churn at a steady size never rehashes.
  for (uint64_t i = 1; i <= 5000; ++i) {
    ASSERT_TRUE(idx.Erase(i * 32));
    idx.Insert(i * 32 + 1, i);
  }
  EXPECT_EQ(idx.capacity(), capacity);
  ASSERT_INDEX_OK(idx);
}

// Random inserts and erases against std::map, with keys drawn from a small
// space so clusters form, wrap around the table's end and get erased from
// their middle (the backward shift must keep every key reachable).
TEST(IovaIndex, RandomOpsMatchMap) {
  for (const uint64_t key_space : {40u, 300u, 5000u}) {
    IovaIndex idx;
    std::map<uint64_t, uint64_t> model;
    TestRng rng;
    for (int step = 0; step < 20000; ++step) {
      const uint64_t pfn = rng.Next() % key_space + 1;
      const bool present = model.count(pfn) != 0;
      if (rng.Next() % 3 != 0) {
        if (present) {
          *idx.Find(pfn) += 1;
          ++model[pfn];
        } else {
          idx.Insert(pfn, pfn * 3);
          model[pfn] = pfn * 3;
        }
      } else {
        EXPECT_EQ(idx.Erase(pfn), present);
        model.erase(pfn);
      }
      if (step % 997 == 0) {
        ASSERT_INDEX_OK(idx);
        ExpectSame(idx, model);
      }
    }
    ASSERT_INDEX_OK(idx);
    ExpectSame(idx, model);
    // Drain.
    for (const auto& [pfn, entry] : model) ASSERT_TRUE(idx.Erase(pfn));
    EXPECT_EQ(idx.size(), 0u);
    ASSERT_INDEX_OK(idx);
  }
}

TEST(IovaIndex, MovedFromKeepsContent) {
  IovaIndex a;
  for (uint64_t i = 1; i <= 100; ++i) a.Insert(i << 20, i);
  IovaIndex b = std::move(a);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_EQ(*b.Find(uint64_t{7} << 20), 7u);
  ASSERT_INDEX_OK(b);
}

}  // namespace
}  // namespace iommu::core::internal
