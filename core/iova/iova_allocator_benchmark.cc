// IovaAllocator benchmarks (Google Benchmark).
//
//   BM_CacheHitAllocFree        AllocPfnsFast + FreePfnsFast served by the magazines
//   BM_TreeChurn/<live>         W1-like churn on the tree path (free a random live
//                               range, allocate 1..32 pages) with 10^4..10^6 live
//   BM_TreeAllocLatency/<live>  the same, timing each tree allocation alone and
//                               reporting p50/p99/p99.9 in ns (bar:
//                               docs/performance.md#engine-bars)
//   BM_CachedAllocLatency/<live>
//                               the same churn through the range caches
//                               (AllocPfnsFast / FreePfnsFast, the broker's
//                               path), timing each allocation: hits and the
//                               misses that reach the tree

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
    const uint64_t pfn = a.AllocPfnsFastOrZero(n, ~uint64_t{0});
    if (!a.FreePfnsFast(pfn, n).ok()) std::abort();
  }
  const uint64_t warm_misses = a.GetStats().cache_misses;
  for (auto _ : state) {
    const uint64_t pfn = a.AllocPfnsFastOrZero(4, 0xFFFFF);
    benchmark::DoNotOptimize(pfn);
    if (!a.FreePfnsFast(pfn, 4).ok()) std::abort();
  }
  if (a.GetStats().cache_misses != warm_misses) state.SkipWithError("cache missed");
}
BENCHMARK(BM_CacheHitAllocFree);

// A tree-path allocator holding `live` ranges of 1..32 pages, spread by
// random frees so the free tree holds about as many ranges as are live.
struct Churn {
  explicit Churn(uint64_t live)
      : a(MakeAllocator((uint64_t{1} << 32) - 1, /*cache=*/false)), pfns(live) {
    for (uint64_t& p : pfns) p = a.AllocPfnsOrZero(rng.Next() % 32 + 1, ~uint64_t{0});
    for (uint64_t i = 0; i < live; ++i) Step();
  }
  // Frees a random live range and allocates a new one in its slot.
  void Step() {
    const uint64_t j = rng.Next() % pfns.size();
    if (!a.FreePfns(pfns[j]).ok()) std::abort();
    pfns[j] = a.AllocPfnsOrZero(rng.Next() % 32 + 1, ~uint64_t{0});
    if (pfns[j] == 0) std::abort();
  }
  IovaAllocator a;
  Xorshift rng;
  std::vector<uint64_t> pfns;
};

void BM_TreeChurn(benchmark::State& state) {
  Churn c(state.range(0));
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
  Churn c(state.range(0));
  std::vector<double> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) {
    const uint64_t j = c.rng.Next() % c.pfns.size();
    if (!c.a.FreePfns(c.pfns[j]).ok()) std::abort();
    const uint64_t n = c.rng.Next() % 32 + 1;
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t pfn = c.a.AllocPfnsOrZero(n, ~uint64_t{0});
    const auto t1 = std::chrono::steady_clock::now();
    c.pfns[j] = pfn;
    ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
  ReportLatency(state, ns);
}
BENCHMARK(BM_TreeAllocLatency)->Arg(1'000'000)->Iterations(1'000'000);

void BM_CachedAllocLatency(benchmark::State& state) {
  IovaAllocator a = MakeAllocator((uint64_t{1} << 32) - 1, /*cache=*/true);
  Xorshift rng;
  struct Live {
    uint64_t pfn;
    uint64_t pages;
  };
  std::vector<Live> live(state.range(0));
  auto alloc = [&](Live& l) {
    l.pages = rng.Next() % 32 + 1;
    l.pfn = a.AllocPfnsFastOrZero(l.pages, ~uint64_t{0});
    if (l.pfn == 0) std::abort();
  };
  auto free = [&](const Live& l) {
    if (!a.FreePfnsFast(l.pfn, l.pages).ok()) std::abort();
  };
  for (Live& l : live) alloc(l);
  for (size_t i = 0; i < live.size(); ++i) {
    Live& l = live[rng.Next() % live.size()];
    free(l);
    alloc(l);
  }
  const IovaStats before = a.GetStats();
  std::vector<double> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) {
    Live& l = live[rng.Next() % live.size()];
    free(l);
    l.pages = rng.Next() % 32 + 1;
    const auto t0 = std::chrono::steady_clock::now();
    l.pfn = a.AllocPfnsFastOrZero(l.pages, ~uint64_t{0});
    const auto t1 = std::chrono::steady_clock::now();
    if (l.pfn == 0) std::abort();
    ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
  const IovaStats after = a.GetStats();
  ReportLatency(state, ns);
  state.counters["miss_ratio"] = static_cast<double>(after.cache_misses - before.cache_misses) /
                                 static_cast<double>(ns.size());
}
BENCHMARK(BM_CachedAllocLatency)->Arg(1'000'000)->Iterations(1'000'000);

}  // namespace
}  // namespace iommu::core
