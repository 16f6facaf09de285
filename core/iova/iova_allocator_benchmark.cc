// SPDX-License-Identifier: Apache-2.0
// IovaAllocator benchmarks (Google Benchmark), through the broker's calls,
// AllocIova and FreeIova, with 4 KiB pages.
//
//   BM_CacheHitAllocFree        an allocation and its free served by the magazines
//   BM_TreeChurn/<live>         W1-like churn without the caches (free a random live
//                               range, allocate 1..32 pages) with 10^4..10^6 live
//   BM_TreeAllocLatency/<live>  the same, timing each tree allocation alone and
//                               reporting p50/p99/p99.9 in ns (bar:
//                               docs/performance.md#engine-bars)
//   BM_CachedAllocLatency/<live>
//                               the same churn through the range caches, timing
//                               each allocation: hits and the misses that reach
//                               the tree
//   BM_ClaimIova/<n>            rebuilding a domain after a restart: ClaimIova of n
//                               4 KiB allocations into a fresh allocator, at
//                               ascending and at random-order addresses
//                               (counters ns_per_claim_ascending/_random);
//                               CheckInvariants after each, outside the timing

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/base/xorshift.h"
#include "core/iova/iova_allocator.h"

namespace iommu::core {
namespace {

using Xorshift = core::Xorshift64;

constexpr int kShift = 12;
constexpr Iova kNoLimit(~uint64_t{0});

IovaAllocator MakeAllocator(uint64_t end_pfn, bool cache) {
  IovaAllocatorOptions o;
  o.start_pfn = 1;
  o.end_pfn = end_pfn;
  o.cache.enabled = cache;
  absl::StatusOr<IovaAllocator> a = IovaAllocator::Create(o);
  if (!a.ok()) std::abort();
  return std::move(a).value();
}

void BM_CacheHitAllocFree(benchmark::State& state) {
  IovaAllocator a = MakeAllocator((uint64_t{1} << 20) - 1, /*cache=*/true);
  // Warm: one cached range per class.
  for (uint64_t n = 1; n <= 32; n *= 2) {
    const absl::StatusOr<Iova> v = a.AllocIova(n << kShift, kNoLimit);
    if (!v.ok() || !a.FreeIova(*v, n << kShift).ok()) std::abort();
  }
  const uint64_t warm_misses = a.GetStats().cache_misses;
  const Iova limit((uint64_t{1} << 32) - 1);
  for (auto _ : state) {
    const absl::StatusOr<Iova> v = a.AllocIova(4 << kShift, limit);
    if (!v.ok()) std::abort();
    benchmark::DoNotOptimize(v->value());
    if (!a.FreeIova(*v, 4 << kShift).ok()) std::abort();
  }
  if (a.GetStats().cache_misses != warm_misses) state.SkipWithError("cache missed");
}
BENCHMARK(BM_CacheHitAllocFree);

// A live allocation and its size in one word: the IOVA with pages - 1 in
// its low bits (as small as a pfn).
using Live = uint64_t;
Iova IovaOf(Live l) { return Iova(l & ~uint64_t{(1 << kShift) - 1}); }
uint64_t BytesOf(Live l) { return ((l & ((1 << kShift) - 1)) + 1) << kShift; }

// Allocates 1..32 random pages into *l (aborts on failure), timing the call
// alone when `ns` is given.
void AllocRandom(IovaAllocator& a, Xorshift& rng, Live* l, std::vector<double>* ns = nullptr) {
  const uint64_t bytes = (rng.Next() % 32 + 1) << kShift;
  absl::StatusOr<Iova> v;
  if (ns == nullptr) {
    v = a.AllocIova(bytes, kNoLimit);
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    v = a.AllocIova(bytes, kNoLimit);
    const auto t1 = std::chrono::steady_clock::now();
    ns->push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
  if (!v.ok()) std::abort();
  *l = v->value() | ((bytes >> kShift) - 1);
}

void Free(IovaAllocator& a, Live l) {
  if (!a.FreeIova(IovaOf(l), BytesOf(l)).ok()) std::abort();
}

// An allocator (caches on or off) holding `live` ranges of 1..32 pages,
// spread by random frees so the free tree holds about as many ranges as are
// live.
struct Churn {
  Churn(uint64_t live, bool cache) : a(MakeAllocator((uint64_t{1} << 32) - 1, cache)), slots(live) {
    for (Live& l : slots) AllocRandom(a, rng, &l);
    for (uint64_t i = 0; i < live; ++i) Step();
  }
  // Frees a random live range and allocates a new one in its slot.
  void Step(std::vector<double>* ns = nullptr) {
    Live& l = slots[rng.Next() % slots.size()];
    Free(a, l);
    AllocRandom(a, rng, &l, ns);
  }
  IovaAllocator a;
  Xorshift rng;
  std::vector<Live> slots;
};

void BM_TreeChurn(benchmark::State& state) {
  Churn c(state.range(0), /*cache=*/false);
  for (auto _ : state) c.Step();
  state.counters["free_ranges"] = static_cast<double>(c.a.GetStats().free_ranges);
}
BENCHMARK(BM_TreeChurn)->Arg(10'000)->Arg(100'000)->Arg(1'000'000);

// Sorted-sample percentiles as counters.
void ReportLatency(benchmark::State& state, std::vector<double>& ns) {
  std::sort(ns.begin(), ns.end());
  auto pct = [&](double p) { return ns[std::min(ns.size() - 1, size_t(p * ns.size()))]; };
  state.counters["p50_ns"] = pct(0.50);
  state.counters["p99_ns"] = pct(0.99);
  state.counters["p999_ns"] = pct(0.999);
  state.counters["max_ns"] = ns.back();
}

void BM_TreeAllocLatency(benchmark::State& state) {
  Churn c(state.range(0), /*cache=*/false);
  std::vector<double> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) c.Step(&ns);
  ReportLatency(state, ns);
}
BENCHMARK(BM_TreeAllocLatency)->Arg(1'000'000)->Iterations(1'000'000);

void BM_CachedAllocLatency(benchmark::State& state) {
  Churn c(state.range(0), /*cache=*/true);
  const IovaStats before = c.a.GetStats();
  std::vector<double> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) c.Step(&ns);
  const IovaStats after = c.a.GetStats();
  ReportLatency(state, ns);
  state.counters["miss_ratio"] = static_cast<double>(after.cache_misses - before.cache_misses) /
                                 static_cast<double>(ns.size());
}
BENCHMARK(BM_CachedAllocLatency)->Arg(1'000'000)->Iterations(1'000'000);

// Claims n one-page allocations at every other pfn up to the top of a 16 GiB
// space down (so the free tree ends with n single-page ranges, its largest
// size), in ascending order and in a random order, each into a fresh
// allocator; the allocators are built and checked outside the timing.
void BM_ClaimIova(benchmark::State& state) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  const uint64_t end_pfn = (uint64_t{1} << 22) - 1;
  if (2 * n > end_pfn) std::abort();
  std::vector<uint64_t> ascending(n);
  for (uint64_t i = 0; i < n; ++i) ascending[i] = end_pfn - 2 * (n - i) + 1;
  std::vector<uint64_t> shuffled = ascending;
  Xorshift rng;
  for (size_t i = shuffled.size(); i > 1; --i) std::swap(shuffled[i - 1], shuffled[rng.Next() % i]);
  double ns[2] = {0, 0};
  for (auto _ : state) {
    int k = 0;
    for (const std::vector<uint64_t>* pfns : {&ascending, &shuffled}) {
      state.PauseTiming();
      IovaAllocator a = MakeAllocator(end_pfn, /*cache=*/true);
      state.ResumeTiming();
      const auto t0 = std::chrono::steady_clock::now();
      for (const uint64_t pfn : *pfns) {
        if (!a.ClaimIova(Iova(pfn << kShift), uint64_t{1} << kShift).ok()) std::abort();
      }
      const auto t1 = std::chrono::steady_clock::now();
      ns[k++] += std::chrono::duration<double, std::nano>(t1 - t0).count();
      state.PauseTiming();
      if (!a.CheckInvariants().ok() || a.GetStats().live_allocations != n) {
        state.SkipWithError("broken after the claims");
      }
      state.ResumeTiming();
    }
  }
  const double claims = static_cast<double>(state.iterations()) * static_cast<double>(n);
  state.counters["ns_per_claim_ascending"] = ns[0] / claims;
  state.counters["ns_per_claim_random"] = ns[1] / claims;
  state.SetItemsProcessed(static_cast<int64_t>(2 * claims));
}
BENCHMARK(BM_ClaimIova)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace iommu::core
