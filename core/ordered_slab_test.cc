#include "core/ordered_slab.h"

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

std::vector<std::pair<uint64_t, std::string>> Contents(const OrderedSlab<std::string>& s) {
  std::vector<std::pair<uint64_t, std::string>> out;
  for (const auto& [k, v] : s) out.emplace_back(k, v);
  return out;
}

TEST(OrderedSlabTest, IteratesInKeyOrderAndFindsExactKeys) {
  OrderedSlab<std::string> s;
  EXPECT_TRUE(s.empty());
  s.Insert(30, "c");
  s.Insert(10, "a");
  s.Insert(20, "b");
  EXPECT_EQ(s.size(), 3u);
  EXPECT_THAT(Contents(s), ElementsAre(Pair(10, "a"), Pair(20, "b"), Pair(30, "c")));
  ASSERT_NE(s.Find(20), nullptr);
  EXPECT_EQ(*s.Find(20), "b");
  EXPECT_EQ(s.Find(15), nullptr);
  EXPECT_EQ(s.Find(0), nullptr);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(OrderedSlabTest, UpperBoundGivesTheFirstKeyAbove) {
  OrderedSlab<std::string> s;
  s.Insert(10, "a");
  s.Insert(20, "b");
  EXPECT_EQ(s.UpperBound(0).key(), 10u);
  EXPECT_EQ(s.UpperBound(10).key(), 20u);
  EXPECT_EQ(s.UpperBound(19).Value(), "b");
  EXPECT_TRUE(s.UpperBound(20) == s.end());
  auto it = s.UpperBound(15);
  --it;
  EXPECT_EQ(it.key(), 10u);
  EXPECT_EQ((*it).second, "a");
  EXPECT_TRUE(s.UpperBound(5) == s.begin());
}

TEST(OrderedSlabTest, TakeReturnsTheValueAndReusesItsSlot) {
  OrderedSlab<std::string> s;
  std::string* a = &s.Insert(1, "one");
  std::string* b = &s.Insert(2, "two");
  EXPECT_EQ(s.Take(1), "one");
  EXPECT_EQ(s.Find(1), nullptr);
  EXPECT_EQ(s.size(), 1u);
  EXPECT_TRUE(s.CheckInvariants().ok());
  // The freed slot is reused; the live value did not move.
  std::string* c = &s.Insert(3, "three");
  EXPECT_EQ(c, a);
  EXPECT_EQ(s.Find(2), b);
  EXPECT_EQ(*b, "two");
  EXPECT_THAT(Contents(s), ElementsAre(Pair(2, "two"), Pair(3, "three")));
  // Keys may come back after being taken.
  s.Insert(1, "uno");
  EXPECT_THAT(Contents(s), ElementsAre(Pair(1, "uno"), Pair(2, "two"), Pair(3, "three")));
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(OrderedSlabTest, ValuesAreMutableThroughFindAndIteration) {
  OrderedSlab<std::string> s;
  s.Insert(5, "x");
  *s.Find(5) += "y";
  for (const auto& [k, v] : s) v += "z";
  EXPECT_EQ(*s.Find(5), "xyz");
}

TEST(OrderedSlabTest, MatchesStdMapUnderRandomInsertsAndTakes) {
  OrderedSlab<std::string> s;
  std::map<uint64_t, std::string> model;
  std::mt19937_64 rng(7);
  for (int step = 0; step < 20000; ++step) {
    const uint64_t key = rng() % 512 * 4096;
    if (model.count(key)) {
      EXPECT_EQ(s.Take(key), model[key]);
      model.erase(key);
    } else {
      const std::string v = std::to_string(step);
      EXPECT_EQ(s.Insert(key, v), v);
      model.emplace(key, v);
    }
    if (step % 997 == 0) {
      ASSERT_TRUE(s.CheckInvariants().ok());
      std::vector<std::pair<uint64_t, std::string>> want(model.begin(), model.end());
      ASSERT_EQ(Contents(s), want);
      const uint64_t probe = rng() % (512 * 4096);
      auto mi = model.upper_bound(probe);
      auto si = s.UpperBound(probe);
      ASSERT_EQ(mi == model.end(), si == s.end());
      if (mi != model.end()) {
        ASSERT_EQ(si.key(), mi->first);
      }
    }
  }
  EXPECT_EQ(s.size(), model.size());
  // Drain in order, as domain teardown does.
  while (!s.empty()) {
    const uint64_t k = s.begin().key();
    EXPECT_EQ(s.Take(k), model.begin()->second);
    model.erase(model.begin());
  }
  EXPECT_TRUE(s.CheckInvariants().ok());
}

}  // namespace
}  // namespace iommu::core::internal
