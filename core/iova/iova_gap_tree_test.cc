// SPDX-License-Identifier: Apache-2.0
// IovaGapTree on its own: random carves and releases against a brute-force
// model of the free set, deep enough for several internal levels, splits,
// merges, borrows and root collapses, with every summary recounted.

#include "core/iova/iova_gap_tree.h"

#include <bit>
#include <cstdint>
#include <iterator>
#include <map>
#include <utility>
#include <vector>

#include "core/base/bits.h"
#include "core/base/xorshift.h"
#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

using Rng = Xorshift64;

// The free set as a sorted map lo -> hi, searched linearly.
class Model {
 public:
  void Free(uint64_t lo, uint64_t hi) {
    free_[lo] = hi;
    Coalesce(lo);
  }
  // Linux placement: the highest aligned fit ending at or below the limit.
  uint64_t HighestFit(uint64_t n, int order, uint64_t limit, bool* found) const {
    for (auto it = free_.upper_bound(limit); it != free_.begin();) {
      --it;
      const uint64_t hi = std::min(it->second, limit);
      if (hi - it->first + 1 >= n) {
        const uint64_t pfn = AlignDown(hi - n + 1, uint64_t{1} << order);
        if (pfn >= it->first) {
          *found = true;
          return pfn;
        }
      }
    }
    *found = false;
    return 0;
  }
  void Occupy(uint64_t lo, uint64_t hi) {
    auto it = std::prev(free_.upper_bound(lo));
    const uint64_t flo = it->first;
    const uint64_t fhi = it->second;
    ASSERT_TRUE(flo <= lo && hi <= fhi);
    free_.erase(it);
    if (flo < lo) free_[flo] = lo - 1;
    if (hi < fhi) free_[hi + 1] = fhi;
  }
  const std::map<uint64_t, uint64_t>& ranges() const { return free_; }

 private:
  void Coalesce(uint64_t lo) {
    auto it = free_.find(lo);
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->second + 1 == it->first) {
        prev->second = it->second;
        free_.erase(it);
        it = prev;
      }
    }
    auto next = std::next(it);
    if (next != free_.end() && it->second + 1 == next->first) {
      it->second = next->second;
      free_.erase(next);
    }
  }
  std::map<uint64_t, uint64_t> free_;
};

void ExpectSameRanges(const IovaGapTree& t, const Model& m) {
  std::vector<std::pair<uint64_t, uint64_t>> got;
  t.ForEach([&](IovaGapTree::Range r) { got.emplace_back(r.lo, r.hi); });
  const std::vector<std::pair<uint64_t, uint64_t>> want(m.ranges().begin(), m.ranges().end());
  EXPECT_EQ(got, want);
}

// Random carves (random sizes and limits) and releases, every fit compared
// with the model; the tree grows past 4096 ranges (at least 256 leaves, so
// two internal levels or more) and is then released back to one range.
TEST(IovaGapTreeTest, DeepRandomChurnMatchesModel) {
  constexpr uint64_t kStart = 1;
  constexpr uint64_t kEnd = (uint64_t{1} << 20) - 1;
  IovaGapTree t(21);
  Model m;
  t.Release(kStart, kEnd);
  m.Free(kStart, kEnd);
  Rng rng{0x9e3779b97f4a7c15};
  std::vector<std::pair<uint64_t, uint64_t>> live;
  uint64_t peak_ranges = 0;
  for (int op = 0; op < 40000; ++op) {
    if (rng.Below(3) != 0 || live.empty()) {
      const uint64_t n = rng.Below(16) == 0 ? rng.Below(300) + 1 : rng.Below(8) + 1;
      const int order = std::bit_width(n - 1);
      const uint64_t limit = rng.Below(kEnd + 1);
      bool found = false;
      const uint64_t want = m.HighestFit(n, order, limit, &found);
      const IovaGapTree::Fit fit = t.FindHighestFit(n, order, limit);
      ASSERT_EQ(fit.node != 0, found) << "op " << op;
      bool any = false;
      m.HighestFit(n, order, kEnd, &any);
      ASSERT_EQ(t.AnyFit(n, order), any) << "op " << op;
      if (fit.node == 0) continue;
      ASSERT_EQ(fit.pfn, want) << "op " << op << " n=" << n << " limit=" << limit;
      t.Carve(fit, n);
      m.Occupy(want, want + n - 1);
      live.emplace_back(want, n);
    } else {
      const size_t j = rng.Below(live.size());
      const IovaGapTree::Range r = t.Release(live[j].first, live[j].first + live[j].second - 1);
      m.Free(live[j].first, live[j].first + live[j].second - 1);
      const auto it = std::prev(m.ranges().upper_bound(live[j].first));
      ASSERT_EQ(r.lo, it->first);
      ASSERT_EQ(r.hi, it->second);
      live[j] = live.back();
      live.pop_back();
    }
    peak_ranges = std::max(peak_ranges, t.range_count());
    if (op % 509 == 0) {
      ASSERT_TRUE(t.CheckInvariants().ok()) << "op " << op << ": " << t.CheckInvariants();
    }
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  ExpectSameRanges(t, m);
  EXPECT_GE(peak_ranges, 4096u);
  // Release in random order: leaves and internal nodes merge and borrow, and
  // the root collapses level by level.
  int op = 0;
  while (!live.empty()) {
    const size_t j = rng.Below(live.size());
    t.Release(live[j].first, live[j].first + live[j].second - 1);
    m.Free(live[j].first, live[j].first + live[j].second - 1);
    live[j] = live.back();
    live.pop_back();
    if (++op % 211 == 0 || live.size() < 600) {
      ASSERT_TRUE(t.CheckInvariants().ok()) << "release " << op << ": " << t.CheckInvariants();
    }
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  EXPECT_EQ(t.range_count(), 1u);
  EXPECT_EQ(t.largest_pages(), kEnd - kStart + 1);
  ExpectSameRanges(t, m);
}

// Runs of neighbouring inserts, as top-down (or bottom-up) carving makes
// them, leave the nodes behind the run nearly full: an insert into a full
// leaf first moves an edge entry to a sibling with room, and a split keeps
// kMinFill entries on the side the run grows. Then isolated releases insert
// into full leaves all over the tree, and every fit still matches the model.
TEST(IovaGapTreeTest, RunsOfInsertsFillNodes) {
  for (const bool descending : {true, false}) {
    SCOPED_TRACE(descending ? "descending" : "ascending");
    constexpr uint64_t kEnd = (uint64_t{1} << 20) - 1;
    constexpr uint64_t kTakes = 12000;
    IovaGapTree t(21);
    Model m;
    t.Release(1, kEnd);
    m.Free(1, kEnd);
    // Take [p, p + 2] for p = 1, 5, 9, ... (or from the top down): one free
    // page is left between neighbouring takes.
    std::vector<uint64_t> taken;
    for (uint64_t i = 0; i < kTakes; ++i) {
      const uint64_t p = descending ? kEnd - 3 - 4 * i : 1 + 4 * i;
      t.Take(p, p + 2);
      m.Occupy(p, p + 2);
      taken.push_back(p);
      if (i % 97 == 0) {
        ASSERT_TRUE(t.CheckInvariants().ok()) << i << ": " << t.CheckInvariants();
      }
    }
    ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
    ExpectSameRanges(t, m);
    // Halving every full node would leave about 8 ranges per leaf here.
    EXPECT_GE(t.range_count(), 13 * t.node_count())
        << t.range_count() << " ranges in " << t.node_count() << " nodes";
    // Free the middle page of every take, in random order: each is an isolated
    // range inserted into a (mostly full) leaf.
    Rng rng{descending ? 7u : 11u};
    for (size_t n = taken.size(); n > 0; --n) {
      const size_t j = rng.Below(n);
      const uint64_t mid = taken[j] + 1;
      std::swap(taken[j], taken[n - 1]);
      const IovaGapTree::Range r = t.Release(mid, mid);
      m.Free(mid, mid);
      ASSERT_EQ(r.lo, mid);
      ASSERT_EQ(r.hi, mid);
      if (n % 97 == 0) {
        ASSERT_TRUE(t.CheckInvariants().ok()) << n << ": " << t.CheckInvariants();
      }
    }
    ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
    ExpectSameRanges(t, m);
    for (int q = 0; q < 2000; ++q) {
      const uint64_t n = rng.Below(4) + 1;
      const int order = std::bit_width(n - 1);
      const uint64_t limit = rng.Below(kEnd + 1);
      bool found = false;
      const uint64_t want = m.HighestFit(n, order, limit, &found);
      const IovaGapTree::Fit fit = t.FindHighestFit(n, order, limit);
      ASSERT_EQ(fit.node != 0, found) << "n=" << n << " limit=" << limit;
      if (found) {
        ASSERT_EQ(fit.pfn, want) << "n=" << n << " limit=" << limit;
      }
    }
  }
}

// Releases that each lie below every free range go to slot 0 of the leftmost
// leaf: full leaves there split at their left edge with the insert on the
// left, so the new lowest key must reach every ancestor on the leftmost path
// (which Locate and every later release depend on). Each range is also longer
// than every earlier one, so each insert raises every row up to the root.
TEST(IovaGapTreeTest, ReleasesBelowEveryRangeKeepTheLeftmostKeysAndRows) {
  constexpr uint64_t kRanges = 12000;
  IovaGapTree t(28);
  Model m;
  std::vector<IovaGapTree::Range> released;
  uint64_t top = uint64_t{1} << 30;  // each range ends 2 below the last one's lo
  for (uint64_t len = 1; len <= kRanges; ++len) {
    const uint64_t hi = top - 2;
    const uint64_t lo = hi - len + 1;
    top = lo;
    const IovaGapTree::Range r = t.Release(lo, hi);
    m.Free(lo, hi);
    released.push_back({lo, hi});
    ASSERT_EQ(r.lo, lo);
    ASSERT_EQ(r.hi, hi);
    ASSERT_EQ(t.largest_pages(), len);
    if (len % 61 == 0) {
      ASSERT_TRUE(t.CheckInvariants().ok()) << len << ": " << t.CheckInvariants();
    }
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  ExpectSameRanges(t, m);
  for (const IovaGapTree::Range& want : released) {
    IovaGapTree::Range r;
    ASSERT_TRUE(t.FindContaining(want.lo, &r)) << want.lo;
    ASSERT_EQ(r.hi, want.hi);
    ASSERT_FALSE(t.FindContaining(want.hi + 1, &r)) << want.hi + 1;
  }
}

// A tree past 4088 nodes takes slab chunks of 2 MiB and more (aligned and
// advised for huge pages): nodes there behave like any other. 90,000 isolated
// ranges released in random order, then every third one carved by a search.
TEST(IovaGapTreeTest, LargeTreeSpansHugePageChunks) {
  constexpr uint64_t kRanges = 90000;
  IovaGapTree t(21);
  Model m;
  std::vector<uint64_t> order(kRanges);
  for (uint64_t i = 0; i < kRanges; ++i) order[i] = i;
  Rng rng{5};
  for (uint64_t n = kRanges; n > 1; --n) std::swap(order[n - 1], order[rng.Below(n)]);
  for (const uint64_t i : order) {
    const uint64_t lo = 4 * i + 4;
    t.Release(lo, lo + 1);
    m.Free(lo, lo + 1);
  }
  ASSERT_GT(t.node_count(), 4088u);
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  for (uint64_t i = 0; i < kRanges; i += 3) {
    const uint64_t limit = 4 * i + 5;
    bool found = false;
    const uint64_t want = m.HighestFit(2, 1, limit, &found);
    const IovaGapTree::Fit fit = t.FindHighestFit(2, 1, limit);
    ASSERT_TRUE(found);
    ASSERT_NE(fit.node, 0u);
    ASSERT_EQ(fit.pfn, want) << limit;
    t.Carve(fit, 2);
    m.Occupy(want, want + 1);
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  ExpectSameRanges(t, m);
}

// Take, FreePagesIn and FindContaining across leaf boundaries.
TEST(IovaGapTreeTest, TakeAndQueriesAcrossLeaves) {
  IovaGapTree t(17);
  Model m;
  // 200 one-page holes every 4 pages: many leaves.
  for (uint64_t i = 0; i < 200; ++i) {
    t.Release(4 * i + 1, 4 * i + 2);
    m.Free(4 * i + 1, 4 * i + 2);
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  EXPECT_EQ(t.range_count(), 200u);
  EXPECT_EQ(t.FreePagesIn(0, 799), 400u);
  EXPECT_EQ(t.FreePagesIn(2, 9), 4u);  // pages 2, 5, 6, 9
  IovaGapTree::Range r;
  ASSERT_TRUE(t.FindContaining(402, &r));
  EXPECT_EQ(r.lo, 401u);
  EXPECT_EQ(r.hi, 402u);
  EXPECT_FALSE(t.FindContaining(403, &r));
  // Remove every third hole through Take (from the front, so keys change).
  for (uint64_t i = 0; i < 200; i += 3) {
    t.Take(4 * i + 1, 4 * i + 2);
    m.Occupy(4 * i + 1, 4 * i + 2);
    ASSERT_TRUE(t.CheckInvariants().ok()) << "take " << i << ": " << t.CheckInvariants();
  }
  ExpectSameRanges(t, m);
  EXPECT_EQ(t.free_pages(), 2 * t.range_count());
  // TakeIfFree: refused (nothing changes) unless inside one free range.
  const uint64_t ranges = t.range_count();
  EXPECT_FALSE(t.TakeIfFree(1, 2));      // taken above
  EXPECT_FALSE(t.TakeIfFree(5, 7));      // runs past the range [5, 6]
  EXPECT_FALSE(t.TakeIfFree(4, 5));      // starts before it
  EXPECT_FALSE(t.TakeIfFree(0, 0));      // below every range
  EXPECT_FALSE(t.TakeIfFree(900, 900));  // above every range
  EXPECT_EQ(t.range_count(), ranges);
  ExpectSameRanges(t, m);
  ASSERT_TRUE(t.TakeIfFree(6, 6));  // [5, 6] -> [5, 5]
  m.Occupy(6, 6);
  ASSERT_TRUE(t.TakeIfFree(5, 5));
  m.Occupy(5, 5);
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  ExpectSameRanges(t, m);
  t.Release(5, 6);
  m.Free(5, 6);
  // Fill the gaps: everything merges into one range.
  for (uint64_t i = 0; i < 200; ++i) {
    if (i % 3 == 0) {
      t.Release(4 * i + 1, 4 * i + 2);
      m.Free(4 * i + 1, 4 * i + 2);
    }
    t.Release(4 * i + 3, 4 * i + 4);
    m.Free(4 * i + 3, 4 * i + 4);
    ASSERT_TRUE(t.CheckInvariants().ok()) << "fill " << i << ": " << t.CheckInvariants();
  }
  ExpectSameRanges(t, m);
  EXPECT_EQ(t.range_count(), 1u);
}

// Random Carve/Release in [1, end] against the model: two of three ops
// allocate a request of next_size() pages at the model's highest fit below a
// random limit, the rest free a random live range; invariants after each.
template <typename SizeFn>
void RandomFitsMatchModel(uint64_t end, int num_orders, uint64_t seed, int ops, SizeFn next_size) {
  IovaGapTree t(num_orders);
  Model m;
  t.Release(1, end);
  m.Free(1, end);
  Rng rng{seed};
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int op = 0; op < ops; ++op) {
    if (rng.Below(3) != 0 || live.empty()) {
      const uint64_t n = next_size(rng);
      const int order = std::bit_width(n - 1);
      const uint64_t limit = rng.Below(end) + 1;
      bool found = false;
      const uint64_t want = m.HighestFit(n, order, limit, &found);
      const IovaGapTree::Fit fit = t.FindHighestFit(n, order, limit);
      ASSERT_EQ(fit.node != 0, found) << "op " << op;
      if (fit.node == 0) continue;
      ASSERT_EQ(fit.pfn, want) << "op " << op << " n=" << n;
      t.Carve(fit, n);
      m.Occupy(want, want + n - 1);
      live.emplace_back(want, n);
    } else {
      const size_t j = rng.Below(live.size());
      t.Release(live[j].first, live[j].first + live[j].second - 1);
      m.Free(live[j].first, live[j].first + live[j].second - 1);
      live[j] = live.back();
      live.pop_back();
    }
    ASSERT_TRUE(t.CheckInvariants().ok()) << "op " << op << ": " << t.CheckInvariants();
  }
  ExpectSameRanges(t, m);
}

// Ranges of 2^32 pages and more take the scalar leaf path and saturated words;
// requests above kRoomCap pages check candidates in 64 bits.
TEST(IovaGapTreeTest, HugeRangesMatchModel) {
  RandomFitsMatchModel((uint64_t{1} << 40) - 1, 41, 12345, 3000, [](Rng& rng) {
    return (uint64_t{1} << rng.Below(38)) + rng.Below(1000) + 1;
  });
}

// A search whose limit path claims a fit that lies above the limit must come
// back up and resume below that path, in the leaf's parent and above: 2000
// one-page holes (several leaves under several internal nodes), one 3-page
// hole among them holding the only aligned 2-page fit above the bottom hole.
TEST(IovaGapTreeTest, SearchResumesBelowTheLimitPath) {
  IovaGapTree t(17);
  Model m;
  t.Release(1, 64);
  m.Free(1, 64);
  for (uint64_t i = 0; i < 2000; ++i) {
    const uint64_t lo = 100 + 4 * i;
    const uint64_t hi = i == 1500 ? lo + 2 : lo;
    t.Release(lo, hi);
    m.Free(lo, hi);
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  // [6100, 6102]: its aligned pair [6100, 6101] ends above every limit < 6101.
  for (uint64_t limit = 6080; limit <= 6110; ++limit) {
    bool found = false;
    const uint64_t want = m.HighestFit(2, 1, limit, &found);
    const IovaGapTree::Fit fit = t.FindHighestFit(2, 1, limit);
    ASSERT_TRUE(found);
    ASSERT_NE(fit.node, 0u) << "limit " << limit;
    EXPECT_EQ(fit.pfn, want) << "limit " << limit;
    EXPECT_EQ(fit.pfn, limit >= 6101 ? 6100u : 62u) << "limit " << limit;
  }
  // Nothing below the bottom hole's first aligned pair; 32 aligned pages only
  // in the bottom hole, whatever the limit above it.
  EXPECT_EQ(t.FindHighestFit(2, 1, 2).node, 0u);
  EXPECT_EQ(t.FindHighestFit(32, 5, 6101).pfn, 32u);
  EXPECT_EQ(t.FindHighestFit(64, 6, 9000).node, 0u);
}

// Leaves whose ranges are all shorter than 2^30 pages take the 32-bit vector
// lanes, those with a longer range the scalar 64-bit code: random carves and
// releases with lengths on both sides of 2^30 (and of 2^32), every summary
// recounted after every operation.
TEST(IovaGapTreeTest, LeafKernelWidthsMatchModel) {
  RandomFitsMatchModel((uint64_t{1} << 36) - 1, 37, 777, 4000, [](Rng& rng) {
    const uint64_t kWidths[] = {uint64_t{1} << 30, uint64_t{1} << 32};
    uint64_t n;
    switch (rng.Below(4)) {
      case 0:
        n = rng.Below(64) + 1;
        break;
      case 1:
      case 2: {
        const uint64_t w = kWidths[rng.Below(2)];
        n = rng.Below(2) == 0 ? w - rng.Below(8) : w + rng.Below(8);
        break;
      }
      default:
        n = rng.Below(uint64_t{1} << 20) + 1;
    }
    return n;
  });
}

// A leaf's entries move by one slot (an insert opening a slot, a removal or a
// merge closing one) at every slot of every fill, the root leaf's unused slots
// keeping kNoKey (CheckInvariants): range i is [20 (i + 1), 20 (i + 1) + 9].
TEST(IovaGapTreeTest, LeafShiftsAtEverySlotAndCount) {
  const auto range_lo = [](int i) { return uint64_t{20} * (i + 1); };
  for (int count = 0; count <= IovaGapTree::kFanout; ++count) {
    for (int slot = 0; slot <= count; ++slot) {
      for (int op = 0; op < 5; ++op) {
        IovaGapTree t(8);
        Model m;
        for (int i = 0; i < count; ++i) {
          t.Release(range_lo(i), range_lo(i) + 9);
          m.Free(range_lo(i), range_lo(i) + 9);
        }
        ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
        const uint64_t lo = range_lo(slot);
        switch (op) {
          case 0:  // an isolated range before range `slot` (or after the last)
            t.Release(lo - 8, lo - 5);
            m.Free(lo - 8, lo - 5);
            break;
          case 1:  // range `slot` goes (closes its slot)
            if (slot == count) continue;
            t.Take(lo, lo + 9);
            m.Occupy(lo, lo + 9);
            break;
          case 2:  // range `slot` splits in two (opens the next slot)
            if (slot == count) continue;
            t.Take(lo + 3, lo + 5);
            m.Occupy(lo + 3, lo + 5);
            break;
          case 3:  // ranges `slot` and `slot + 1` merge (closes slot + 1)
            if (slot + 1 >= count) continue;
            t.Release(lo + 10, lo + 19);
            m.Free(lo + 10, lo + 19);
            break;
          default:  // range `slot` shrinks at both ends in turn
            if (slot == count) continue;
            t.Take(lo, lo + 1);
            m.Occupy(lo, lo + 1);
            t.Take(lo + 8, lo + 9);
            m.Occupy(lo + 8, lo + 9);
            break;
        }
        ASSERT_TRUE(t.CheckInvariants().ok())
            << "count " << count << " slot " << slot << " op " << op << ": " << t.CheckInvariants();
        ExpectSameRanges(t, m);
        bool found = false;
        const uint64_t want = m.HighestFit(2, 1, ~uint64_t{0}, &found);
        const IovaGapTree::Fit fit = t.FindHighestFit(2, 1, ~uint64_t{0});
        ASSERT_EQ(fit.node != 0, found);
        if (found) {
          EXPECT_EQ(fit.pfn, want);
        }
      }
    }
  }
}

// The search returns the model's fit after every carve or release of a
// random churn whose sizes span 1 page to 2^37 (leaves and internal entries
// on both sides of 2^30 and 2^32, capped row words, requests above kRoomCap
// pages checked in 64 bits), with limits anywhere (inside ranges, below
// every range, around the last carve and release, the whole space) and nodes
// at every fill (their unused slots hold kNoKey).
TEST(IovaGapTreeTest, SearchMatchesModelEverywhere) {
  constexpr uint64_t kEnd = (uint64_t{1} << 40) - 1;
  IovaGapTree t(41);
  Model m;
  t.Release(1, kEnd);
  m.Free(1, kEnd);
  Rng rng{4242};
  const auto size = [&rng]() -> uint64_t {
    switch (rng.Below(4)) {
      case 0:
        return rng.Below(16) + 1;
      case 1:
        return rng.Below(5000) + 1;
      case 2:
        return (uint64_t{1} << rng.Below(38)) + rng.Below(3);
      default:
        return rng.Below(uint64_t{1} << 34) + 1;
    }
  };
  std::vector<std::pair<uint64_t, uint64_t>> live;
  // Where the last carve and the last release happened: next-fit's limits lie
  // just below and around them.
  uint64_t last_carve = 1;
  uint64_t last_release = kEnd;
  for (int op = 0; op < 6000; ++op) {
    // Probes: random requests under random limits, each answered as by the
    // model.
    for (int probe = 0; probe < 10; ++probe) {
      const uint64_t n = size();
      const int order = std::bit_width(n - 1);
      uint64_t limit;
      if (probe == 0) {
        limit = ~uint64_t{0};
      } else if (probe == 8) {
        limit = last_carve + rng.Below(64) - 33;
      } else if (probe == 9) {
        limit = last_release + rng.Below(64) - 32;
      } else if (probe < 4 && !live.empty()) {
        // Just around a live range's ends: limits inside or beside free ranges.
        const auto& r = live[rng.Below(live.size())];
        limit = r.first + r.second - 1 + rng.Below(64) - 32;
      } else {
        limit = rng.Below(kEnd + 1);
      }
      bool found = false;
      const uint64_t want = m.HighestFit(n, order, limit, &found);
      const IovaGapTree::Fit fit = t.FindHighestFit(n, order, limit);
      ASSERT_EQ(fit.node != 0, found) << "op " << op << " n=" << n << " limit=" << limit;
      if (found) {
        ASSERT_EQ(fit.pfn, want) << "op " << op << " n=" << n << " limit=" << limit;
      }
    }
    if (rng.Below(3) != 0 || live.empty()) {
      const uint64_t n = size();
      const int order = std::bit_width(n - 1);
      const IovaGapTree::Fit fit = t.FindHighestFit(n, order, rng.Below(kEnd + 1));
      if (fit.node == 0) continue;
      t.Carve(fit, n);
      m.Occupy(fit.pfn, fit.pfn + n - 1);
      live.emplace_back(fit.pfn, n);
      last_carve = fit.pfn;
    } else {
      const size_t j = rng.Below(live.size());
      last_release = t.Release(live[j].first, live[j].first + live[j].second - 1).hi;
      m.Free(live[j].first, live[j].first + live[j].second - 1);
      live[j] = live.back();
      live.pop_back();
    }
  }
  ASSERT_TRUE(t.CheckInvariants().ok()) << t.CheckInvariants();
  ExpectSameRanges(t, m);
  EXPECT_GE(t.range_count(), 300u);  // internal levels: several node visits per search
}

}  // namespace
}  // namespace iommu::core::internal
