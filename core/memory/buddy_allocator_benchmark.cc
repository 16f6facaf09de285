// SPDX-License-Identifier: Apache-2.0
// Buddy allocator costs: an order-0 alloc+free pair on a warm allocator (the
// split/coalesce chain is short), a churn of mixed orders over a fragmented
// range, and the worst case of splitting a max-order block down to one page
// and coalescing it back.

#include <cstdint>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/base/xorshift.h"
#include "core/memory/buddy_allocator.h"

namespace iommu::core {
namespace {

BuddyAllocator MakeOrDie(uint64_t size_bytes) {
  return *BuddyAllocator::Create(PhysAddr(uint64_t{1} << 32), size_bytes);
}

// Order-0 alloc+free with one page already out, so the pair does not split or
// merge past order 0: the fast path.
void BM_AllocFreeOrder0Warm(benchmark::State& state) {
  BuddyAllocator b = MakeOrDie(uint64_t{1} << 30);
  PhysAddr keep = *b.Allocate(0);
  for (auto _ : state) {
    PhysAddr a = *b.Allocate(0);
    benchmark::DoNotOptimize(a);
    (void)b.Free(a, 0);
  }
  (void)b.Free(keep, 0);
}
BENCHMARK(BM_AllocFreeOrder0Warm);

// Split a 1 GiB block down to one page and coalesce it back: 18 levels.
void BM_AllocFreeOrder0FullSplit(benchmark::State& state) {
  BuddyAllocator b = MakeOrDie(uint64_t{1} << 30);
  for (auto _ : state) {
    PhysAddr a = *b.Allocate(0);
    benchmark::DoNotOptimize(a);
    (void)b.Free(a, 0);
  }
}
BENCHMARK(BM_AllocFreeOrder0FullSplit);

// Mixed-order churn over 4 GiB with 16,384 live blocks of orders 0..6 (about
// 1/3 of the pages live): each step frees a random live block and allocates
// one of a random order. The loop includes the xorshift PRNG.
void BM_MixedChurn(benchmark::State& state) {
  BuddyAllocator b = MakeOrDie(uint64_t{4} << 30);
  struct Live {
    PhysAddr addr;
    unsigned order;
    bool valid;
  };
  std::vector<Live> live(16384);
  core::Xorshift64 rng;
  auto refill = [&](Live& l) {
    l.order = unsigned(rng() % 7);
    absl::StatusOr<PhysAddr> a = b.Allocate(l.order);
    l.valid = a.ok();
    if (a.ok()) l.addr = *a;
  };
  for (Live& l : live) refill(l);
  for (auto _ : state) {
    Live& l = live[rng() % live.size()];
    if (l.valid) (void)b.Free(l.addr, l.order);
    refill(l);
  }
  state.counters["free_pages"] = double(b.free_pages());
}
BENCHMARK(BM_MixedChurn);

}  // namespace
}  // namespace iommu::core
