// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_magazine.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/base/xorshift.h"
#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

using Released = std::vector<std::pair<uint64_t, int>>;  // (pfn, cls) in call order

// Linux's per-CPU rcache policy (__iova_rcache_insert / __iova_rcache_get)
// written plainly: magazines as vectors, the depot as a vector of them.
class ModelCache {
 public:
  ModelCache(int num_classes, uint64_t depth, uint64_t depot_size)
      : depth_(depth), depot_size_(depot_size), classes_(num_classes) {}

  void Push(int cls, uint64_t pfn, Released* released) {
    Class& c = classes_[cls];
    if (c.loaded.size() == depth_) {
      if (c.prev.size() != depth_) {
        std::swap(c.loaded, c.prev);
      } else if (c.depot.size() < depot_size_) {
        c.depot.push_back(std::move(c.loaded));
        c.loaded.clear();
      } else {
        for (uint64_t p : c.loaded) released->emplace_back(p, cls);
        c.loaded.clear();
      }
    }
    c.loaded.push_back(pfn);
  }

  uint64_t Pop(int cls, uint64_t max_pfn) {
    Class& c = classes_[cls];
    if (c.loaded.empty()) {
      if (!c.prev.empty()) {
        std::swap(c.loaded, c.prev);
      } else if (!c.depot.empty()) {
        c.loaded = std::move(c.depot.back());
        c.depot.pop_back();
      } else {
        return 0;
      }
    }
    for (size_t i = c.loaded.size(); i-- > 0;) {
      if (c.loaded[i] <= max_pfn) {
        const uint64_t pfn = c.loaded[i];
        c.loaded[i] = c.loaded.back();
        c.loaded.pop_back();
        return pfn;
      }
    }
    return 0;
  }

  void Flush(Released* released) {
    for (int cls = 0; cls < static_cast<int>(classes_.size()); ++cls) {
      ForEachOf(cls, [&](uint64_t pfn) { released->emplace_back(pfn, cls); });
      Class& c = classes_[cls];
      c.loaded.clear();
      c.prev.clear();
      c.depot.clear();
    }
  }

  Released Contents() const {
    Released out;
    for (int cls = 0; cls < static_cast<int>(classes_.size()); ++cls) {
      ForEachOf(cls, [&](uint64_t pfn) { out.emplace_back(pfn, cls); });
    }
    return out;
  }

 private:
  struct Class {
    std::vector<uint64_t> loaded;
    std::vector<uint64_t> prev;
    std::vector<std::vector<uint64_t>> depot;
  };

  template <typename Fn>
  void ForEachOf(int cls, Fn&& fn) const {
    const Class& c = classes_[cls];
    for (uint64_t p : c.loaded) fn(p);
    for (uint64_t p : c.prev) fn(p);
    for (const std::vector<uint64_t>& mag : c.depot) {
      for (uint64_t p : mag) fn(p);
    }
  }

  uint64_t depth_;
  uint64_t depot_size_;
  std::vector<Class> classes_;
};

Released Contents(const IovaMagazineCache& cache) {
  Released out;
  cache.ForEach([&](uint64_t pfn, int cls) { out.emplace_back(pfn, cls); });
  return out;
}

uint64_t PagesOf(const Released& r) {
  uint64_t pages = 0;
  for (const auto& [pfn, cls] : r) pages += uint64_t{1} << cls;
  return pages;
}

// One class, depth 4, depot of 2: loaded fills, swaps with prev, goes to the
// depot twice, then spills; the counts follow the magazines through each move.
TEST(IovaMagazineCache, PushWalksLoadedPrevDepotThenSpills) {
  IovaMagazineCache cache(1, 4, 2);
  ASSERT_TRUE(cache.StructureOk());
  Released released;
  auto release = [&](uint64_t pfn, int cls) { released.emplace_back(pfn, cls); };
  for (uint64_t pfn = 1; pfn <= 16; ++pfn) {
    cache.Push(0, pfn, release);
    ASSERT_TRUE(cache.StructureOk()) << pfn;
    EXPECT_EQ(cache.cached_ranges(), pfn);
  }
  EXPECT_TRUE(released.empty());
  // Every magazine is full: the loaded one (13..16) spills back.
  EXPECT_FALSE(cache.TryPushLoaded(0, 17));
  cache.Push(0, 17, release);
  EXPECT_EQ(released, (Released{{13, 0}, {14, 0}, {15, 0}, {16, 0}}));
  EXPECT_EQ(cache.cached_ranges(), 13u);
  EXPECT_TRUE(cache.StructureOk());
  // The same pushes on the model spill the same pfns and leave the same
  // contents; popping everything follows it through prev and the depot.
  ModelCache model(1, 4, 2);
  Released model_released;
  for (uint64_t pfn = 1; pfn <= 17; ++pfn) model.Push(0, pfn, &model_released);
  EXPECT_EQ(model_released, released);
  EXPECT_EQ(Contents(cache), model.Contents());
  for (int i = 0; i < 14; ++i) {
    EXPECT_EQ(cache.Pop(0, ~uint64_t{0}), model.Pop(0, ~uint64_t{0})) << i;
    ASSERT_TRUE(cache.StructureOk()) << i;
  }
  EXPECT_EQ(cache.cached_ranges(), 0u);
  EXPECT_EQ(cache.Pop(0, ~uint64_t{0}), 0u);
}

TEST(IovaMagazineCache, TryPathsUseOnlyTheLoadedMagazine) {
  IovaMagazineCache cache(2, 2, 1);
  EXPECT_EQ(cache.TryPopLoaded(1, ~uint64_t{0}), 0u);  // empty
  EXPECT_TRUE(cache.TryPushLoaded(1, 64));
  EXPECT_TRUE(cache.TryPushLoaded(1, 32));
  EXPECT_FALSE(cache.TryPushLoaded(1, 16));  // loaded full; prev not tried
  EXPECT_EQ(cache.cached_ranges(), 2u);
  EXPECT_EQ(cache.cached_pages(), 4u);
  EXPECT_EQ(cache.TryPopLoaded(1, 31), 0u);  // top (32) above the limit: no scan
  EXPECT_EQ(cache.cached_ranges(), 2u);
  EXPECT_EQ(cache.Pop(1, 63), 32u);
  EXPECT_EQ(cache.Pop(1, 63), 0u);  // 64 is above it
  EXPECT_EQ(cache.TryPopLoaded(1, 64), 64u);
  EXPECT_EQ(cache.TryPopLoaded(1, 64), 0u);
  // Push moves the full loaded magazine to prev; TryPopLoaded sees only the
  // new loaded one, Pop swaps back when it empties.
  auto no_release = [](uint64_t, int) { FAIL(); };
  for (uint64_t pfn : {2, 4, 6}) cache.Push(0, pfn, no_release);
  EXPECT_EQ(cache.TryPopLoaded(0, ~uint64_t{0}), 6u);
  EXPECT_EQ(cache.TryPopLoaded(0, ~uint64_t{0}), 0u);
  EXPECT_EQ(cache.Pop(0, ~uint64_t{0}), 4u);
  EXPECT_EQ(cache.TryPopLoaded(0, ~uint64_t{0}), 2u);
  EXPECT_EQ(cache.cached_ranges(), 0u);
  EXPECT_TRUE(cache.StructureOk());
}

// A pop below a limit scans the loaded magazine and keeps the rest; when
// nothing qualifies it is a miss that leaves every pfn cached.
TEST(IovaMagazineCache, PopBelowScansTheLoadedMagazine) {
  IovaMagazineCache cache(1, 8, 0);
  auto no_release = [](uint64_t, int) { FAIL(); };
  for (uint64_t pfn : {50, 10, 70, 30, 90}) cache.Push(0, pfn, no_release);
  EXPECT_EQ(cache.Pop(0, 40), 30u);
  EXPECT_EQ(cache.Pop(0, 40), 10u);
  EXPECT_EQ(cache.Pop(0, 40), 0u);
  EXPECT_EQ(cache.cached_ranges(), 3u);
  Released left = Contents(cache);
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (Released{{50, 0}, {70, 0}, {90, 0}}));
  EXPECT_TRUE(cache.StructureOk());
}

// Random pushes, pops under random limits and flushes over several classes
// against the model: the same pops, the same spills in the same order, the
// same contents, counts and totals after every operation.
TEST(IovaMagazineCache, RandomAgainstModel) {
  for (const auto& [depth, depot] :
       {std::pair<uint32_t, uint32_t>{127, 32}, {3, 2}, {1, 0}, {5, 1}}) {
    SCOPED_TRACE(testing::Message() << "depth " << depth << " depot " << depot);
    constexpr int kClasses = 4;
    IovaMagazineCache cache(kClasses, depth, depot);
    ModelCache model(kClasses, depth, depot);
    Xorshift64 rng;
    uint64_t next_pfn = 1;
    // Pushes outnumber pops (so depots fill and spill), flushes are rare.
    for (int step = 0; step < 40000; ++step) {
      const int cls = static_cast<int>(rng.Below(kClasses));
      const uint64_t op = rng.Below(100);
      if (op < 55) {
        Released got;
        Released want;
        const uint64_t pfn = next_pfn++;
        if (!cache.TryPushLoaded(cls, pfn)) {
          cache.Push(cls, pfn, [&](uint64_t p, int c) { got.emplace_back(p, c); });
        }
        model.Push(cls, pfn, &want);
        ASSERT_EQ(got, want) << step;
      } else if (op < 99) {
        const uint64_t max_pfn = rng.Below(4) == 0 ? rng.Below(next_pfn) : ~uint64_t{0};
        uint64_t pfn = cache.TryPopLoaded(cls, max_pfn);
        if (pfn == 0) pfn = cache.Pop(cls, max_pfn);
        ASSERT_EQ(pfn, model.Pop(cls, max_pfn)) << step;
      } else {
        Released got;
        Released want;
        cache.Flush([&](uint64_t p, int c) { got.emplace_back(p, c); });
        model.Flush(&want);
        ASSERT_EQ(got, want) << step;
      }
      ASSERT_TRUE(cache.StructureOk()) << step;
      if (step % 64 == 0 || depth < 8) {
        const Released want = model.Contents();
        ASSERT_EQ(Contents(cache), want) << step;
        ASSERT_EQ(cache.cached_ranges(), want.size()) << step;
        ASSERT_EQ(cache.cached_pages(), PagesOf(want)) << step;
      }
    }
  }
}

TEST(IovaMagazineCache, MovedCacheKeepsItsMagazines) {
  IovaMagazineCache cache(3, 2, 1);
  auto no_release = [](uint64_t, int) { FAIL(); };
  for (uint64_t pfn = 1; pfn <= 6; ++pfn) cache.Push(2, pfn * 4, no_release);
  const Released before = Contents(cache);
  IovaMagazineCache moved = std::move(cache);
  EXPECT_TRUE(moved.StructureOk());
  EXPECT_EQ(Contents(moved), before);
  EXPECT_EQ(moved.cached_pages(), 24u);
  EXPECT_EQ(moved.Pop(2, ~uint64_t{0}), 24u);
}

TEST(IovaMagazineCache, EmptyCacheHasNoClasses) {
  IovaMagazineCache cache;
  EXPECT_EQ(cache.num_classes(), 0);
  EXPECT_EQ(cache.cached_ranges(), 0u);
  EXPECT_TRUE(cache.StructureOk());
  IovaMagazineCache widest(IovaMagazineCache::kMaxClasses, 1, 0);
  EXPECT_EQ(widest.num_classes(), IovaMagazineCache::kMaxClasses);
  auto no_release = [](uint64_t, int) { FAIL(); };
  widest.Push(IovaMagazineCache::kMaxClasses - 1, uint64_t{1} << 20, no_release);
  EXPECT_EQ(widest.cached_pages(), uint64_t{1} << 20);
  EXPECT_TRUE(widest.StructureOk());
}

}  // namespace
}  // namespace iommu::core::internal
