// SPDX-License-Identifier: Apache-2.0
#include "core/base/run_sort.h"

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using Range = std::pair<uint64_t, uint64_t>;

void ExpectSortsLikeStdSort(std::vector<Range> v) {
  std::vector<Range> want = v;
  std::sort(want.begin(), want.end());
  SortByRuns(&v);
  EXPECT_EQ(v, want);
}

TEST(SortByRunsTest, EmptyOneAndMonotoneInputs) {
  ExpectSortsLikeStdSort({});
  ExpectSortsLikeStdSort({{5, 6}});
  std::vector<Range> up, down;
  for (uint64_t i = 0; i < 1000; ++i) {
    up.push_back({i * 4096, i * 4096 + 4095});
    down.push_back({(999 - i) * 4096, (999 - i) * 4096 + 4095});
  }
  ExpectSortsLikeStdSort(up);
  ExpectSortsLikeStdSort(down);
}

// Blocks of descending and ascending stretches (LIFO caches), equal keys
// (pairs that differ in second only), and random data beyond kMaxRuns runs.
TEST(SortByRunsTest, RunsDuplicatesAndRandomMatchStdSort) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<Range> v;
    const int runs = 1 + static_cast<int>(rng() % 100);
    for (int r = 0; r < runs; ++r) {
      const uint64_t base = rng() % 100000;
      const int len = 1 + static_cast<int>(rng() % 40);
      const bool descending = rng() % 2 == 0;
      for (int i = 0; i < len; ++i) {
        const uint64_t k = descending ? base + uint64_t(len - i) : base + uint64_t(i);
        v.push_back({k, rng() % 3});
      }
    }
    if (trial % 5 == 0) {
      for (Range& x : v) x = {rng() % 50, rng() % 50};  // random, many ties
    }
    ExpectSortsLikeStdSort(v);
  }
}

}  // namespace
}  // namespace iommu::core
