// SPDX-License-Identifier: Apache-2.0
// PgtablePagePool: zeroed aligned pages, LIFO reuse, the max_bytes bound, exact
// statistics, a random sequence against a reference model, and concurrent use.

#include "core/pgtable/pgtable_page_pool.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "core/workloads/workload.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

constexpr uint64_t kSizes[] = {uint64_t{4} << 10, uint64_t{16} << 10, uint64_t{64} << 10};

bool AllZero(const void* page, uint64_t bytes) {
  const auto* w = static_cast<const uint64_t*>(page);
  for (uint64_t i = 0; i < bytes / 8; ++i) {
    if (w[i] != 0) return false;
  }
  return true;
}

TEST(PgtablePagePoolTest, PageSizes) {
  for (uint64_t size : kSizes) EXPECT_TRUE(PgtablePagePool::IsPageSize(size));
  EXPECT_FALSE(PgtablePagePool::IsPageSize(0));
  EXPECT_FALSE(PgtablePagePool::IsPageSize(8192));
  EXPECT_FALSE(PgtablePagePool::IsPageSize(uint64_t{2} << 20));
}

TEST(PgtablePagePoolTest, AllocIsAlignedZeroedAndReusesFreedPagesLifo) {
  PgtablePagePool pool;
  for (uint64_t size : kSizes) {
    void* a = pool.Alloc(size);
    void* b = pool.Alloc(size);
    ASSERT_NE(a, b);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % size, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % size, 0u);
    EXPECT_TRUE(AllZero(a, size));
    EXPECT_TRUE(AllZero(b, size));
    pool.Free(a, size);
    pool.Free(b, size);
    ASSERT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
    EXPECT_EQ(pool.Alloc(size), b) << "last freed, first out";
    void* again = pool.Alloc(size);
    EXPECT_EQ(again, a);
    EXPECT_TRUE(AllZero(again, size)) << "the free-list link is cleared";
    pool.Free(again, size);
    pool.Free(b, size);
  }
  const PgtablePagePool::Stats st = pool.GetStats();
  EXPECT_EQ(st.misses, 6u);
  EXPECT_EQ(st.hits, 6u);
  EXPECT_EQ(st.pooled_pages, 6u);
  EXPECT_EQ(st.pooled_bytes, 2 * (kSizes[0] + kSizes[1] + kSizes[2]));
  EXPECT_EQ(st.releases, 0u);
}

TEST(PgtablePagePoolTest, HoldsAtMostMaxBytes) {
  PgtablePagePool pool(/*max_bytes=*/3 * 4096);
  std::vector<void*> pages;
  for (int i = 0; i < 5; ++i) pages.push_back(pool.Alloc(4096));
  for (void* p : pages) pool.Free(p, 4096);
  PgtablePagePool::Stats st = pool.GetStats();
  EXPECT_EQ(st.pooled_pages, 3u);
  EXPECT_EQ(st.pooled_bytes, 3 * 4096u);
  EXPECT_EQ(st.releases, 2u);
  // A 16K page does not fit beside them.
  void* big = pool.Alloc(16384);
  pool.Free(big, 16384);
  st = pool.GetStats();
  EXPECT_EQ(st.releases, 3u);
  EXPECT_EQ(st.pooled_bytes, 3 * 4096u);
  ASSERT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
}

TEST(PgtablePagePoolTest, CheckInvariantsFindsADirtyPooledPage) {
  PgtablePagePool pool;
  auto* page = static_cast<uint64_t*>(pool.Alloc(4096));
  pool.Free(page, 4096);
  ASSERT_TRUE(pool.CheckInvariants().ok());
  page[7] = 0xbad;  // a use after free the oracle must see
  const absl::Status s = pool.CheckInvariants();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("word 7 is 0xbad"), absl::string_view::npos) << s;
  page[7] = 0;
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

// Random Alloc/Free of the three sizes against a model of what the pool
// holds (per size, a LIFO stack) and of its counters.
TEST(PgtablePagePoolTest, RandomSequenceMatchesModel) {
  const uint64_t max_bytes = 40 * 4096;
  PgtablePagePool pool(max_bytes);
  workloads::Rng rng(11);
  std::map<uint64_t, std::vector<void*>> pooled;  // size -> LIFO stack
  std::vector<std::pair<void*, uint64_t>> held;
  uint64_t pooled_bytes = 0, hits = 0, misses = 0, releases = 0;
  for (int op = 0; op < 20000; ++op) {
    const uint64_t size = kSizes[rng.Next() % 3 == 0 ? rng.Next() % 3 : 0];
    if (held.empty() || rng.Next() % 2 == 0) {
      void* page = pool.Alloc(size);
      ASSERT_TRUE(AllZero(page, size));
      ASSERT_EQ(reinterpret_cast<uintptr_t>(page) % size, 0u);
      auto& stack = pooled[size];
      if (!stack.empty()) {
        ASSERT_EQ(page, stack.back()) << "op " << op;
        stack.pop_back();
        pooled_bytes -= size;
        ++hits;
      } else {
        ++misses;
      }
      std::memset(page, 0xa5, 64);  // the owner writes; it zeroes before Free
      held.push_back({page, size});
    } else {
      const size_t i = rng.Next() % held.size();
      auto [page, page_size] = held[i];
      held[i] = held.back();
      held.pop_back();
      std::memset(page, 0, 64);
      pool.Free(page, page_size);
      if (pooled_bytes + page_size <= max_bytes) {
        pooled[page_size].push_back(page);
        pooled_bytes += page_size;
      } else {
        ++releases;
      }
    }
    if (op % 97 == 0) {
      ASSERT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
    }
    const PgtablePagePool::Stats st = pool.GetStats();
    ASSERT_EQ(st.pooled_bytes, pooled_bytes) << "op " << op;
    ASSERT_EQ(st.hits, hits);
    ASSERT_EQ(st.misses, misses);
    ASSERT_EQ(st.releases, releases);
  }
  EXPECT_GT(hits, 1000u);
  EXPECT_GT(releases, 10u);
  for (auto [page, size] : held) {
    std::memset(page, 0, 64);
    pool.Free(page, size);
  }
  ASSERT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
}

TEST(PgtablePagePoolTest, ConcurrentAllocFree) {
  PgtablePagePool pool(64 * 4096);
  constexpr int kThreads = 4;
  constexpr int kOps = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&pool, t] {
      workloads::Rng rng(100 + t);
      std::vector<uint64_t*> mine;
      for (int op = 0; op < kOps; ++op) {
        if (mine.empty() || (mine.size() < 32 && rng.Next() % 2 == 0)) {
          auto* page = static_cast<uint64_t*>(pool.Alloc(4096));
          // No two threads hold one page: each stamps and checks its own.
          for (uint64_t i = 0; i < 512; ++i) {
            if (page[i] != 0) std::abort();
          }
          page[1] = uint64_t(t) + 1;
          mine.push_back(page);
        } else {
          uint64_t* page = mine.back();
          mine.pop_back();
          if (page[1] != uint64_t(t) + 1) std::abort();
          page[1] = 0;
          pool.Free(page, 4096);
        }
      }
      for (uint64_t* page : mine) {
        page[1] = 0;
        pool.Free(page, 4096);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
  const PgtablePagePool::Stats st = pool.GetStats();
  EXPECT_LE(st.pooled_bytes, 64 * 4096u);
  EXPECT_GT(st.hits, 0u);
}

}  // namespace
}  // namespace iommu::core
