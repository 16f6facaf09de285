// SPDX-License-Identifier: Apache-2.0
// IOTLB and flush-queue hot paths (bars: docs/performance.md#engine-bars;
// figures: docs/performance.md#iotlb).
//
//   build/core/iotlb_benchmark --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true   (one command line)
//
// Geometry: the default IotlbConfig (256 sets x 4 ways, leaf sizes 4K, 2M,
// 1G probed in that order) unless a benchmark says otherwise.

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "core/iotlb/flush_queue.h"
#include "core/iotlb/iotlb.h"
#include "core/workloads/workload.h"

namespace iommu::core {
namespace {

constexpr uint64_t kPage = 4096;
constexpr TlbTag kTag{1, 0};
const Grant kRw(Grant::kReadUnpriv | Grant::kWriteUnpriv);

Iotlb MakeIotlb(IotlbConfig config = {}) { return *Iotlb::Create(config); }

// Fills every way of every set: tags 1..16 (ASIDs) x pages, until occupancy
// reaches capacity.
void FillCompletely(Iotlb& tlb) {
  for (uint64_t i = 0; tlb.stats().occupancy < tlb.capacity(); ++i) {
    const TlbTag tag{uint16_t(1 + i % 16), 0};
    (void)tlb.Insert(tag, Iova(0x4000'0000 + (i / 16) * kPage), 12,
                     PhysAddr(0x8000'0000 + i * kPage), kRw);
  }
}

// Hit: a working set of 512 resident 4 KiB pages (half the default
// capacity, every one cached), visited in a fixed pseudo-random order.
void BM_IotlbHit(benchmark::State& state) {
  Iotlb tlb = MakeIotlb();
  constexpr int kWorkingSet = 512;
  std::vector<Iova> iovas;
  for (int i = 0; i < kWorkingSet; ++i) {
    const Iova iova(0x4000'0000 + uint64_t(i) * kPage);
    (void)tlb.Insert(kTag, iova, 12, PhysAddr(0x8000'0000 + uint64_t(i) * kPage), kRw);
  }
  workloads::Rng rng;
  for (int i = 0; i < 4096; ++i) {
    iovas.push_back(Iova(0x4000'0000 + (rng.Next() % kWorkingSet) * kPage + 0x40));
  }
  size_t i = 0;
  uint64_t sum = 0;
  for (auto _ : state) {
    const std::optional<IotlbHit> hit = tlb.Lookup(kTag, iovas[i]);
    sum += hit->phys.value();
    i = (i + 1) & 4095;
  }
  benchmark::DoNotOptimize(sum);
  if (tlb.stats().misses != 0) state.SkipWithError("working set did not stay resident");
}
BENCHMARK(BM_IotlbHit);

// Hit on a 2 MiB block entry: the 4 KiB probe misses first (probe order).
void BM_IotlbHitBlockSecondProbe(benchmark::State& state) {
  Iotlb tlb = MakeIotlb();
  for (uint64_t b = 0; b < 64; ++b) {
    (void)tlb.Insert(kTag, Iova(0x4000'0000 + (b << 21)), 21, PhysAddr(0x8000'0000 + (b << 21)),
                     kRw);
  }
  workloads::Rng rng;
  std::vector<Iova> iovas;
  for (int i = 0; i < 4096; ++i) iovas.push_back(Iova(0x4000'0000 + rng.Next() % (64 << 21)));
  size_t i = 0;
  uint64_t sum = 0;
  for (auto _ : state) {
    sum += tlb.Lookup(kTag, iovas[i])->phys.value();
    i = (i + 1) & 4095;
  }
  benchmark::DoNotOptimize(sum);
}
BENCHMARK(BM_IotlbHitBlockSecondProbe);

// Miss + fill: streaming new pages through a full IOTLB; every lookup misses
// (all three leaf sizes probed) and every fill evicts.
void BM_IotlbMissFill(benchmark::State& state) {
  Iotlb tlb = MakeIotlb();
  FillCompletely(tlb);
  uint64_t page = 0;
  for (auto _ : state) {
    const Iova iova(0x10'0000'0000 + page * kPage);
    if (!tlb.Lookup(kTag, iova).has_value()) {
      (void)tlb.Insert(kTag, iova, 12, PhysAddr(page * kPage), kRw);
    }
    ++page;
  }
  state.counters["evictions"] = double(tlb.stats().evictions);
}
BENCHMARK(BM_IotlbMissFill);

// Range invalidation of N pages on a full IOTLB (other entries everywhere):
// the probe of N sets (N < sets) or a scan (N >= sets). The range's own pages
// are not cached, so every iteration does the same work.
void BM_IotlbInvalidateRange(benchmark::State& state) {
  const uint64_t pages = uint64_t(state.range(0));
  Iotlb tlb = MakeIotlb();
  FillCompletely(tlb);
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        *tlb.InvalidateVa(kTag, Iova(0x20'0000'0000), pages * kPage, VaLevels::kLeafOnly));
  }
}
BENCHMARK(BM_IotlbInvalidateRange)->Arg(1)->Arg(64)->Arg(4096);

// Strict unmap of N cached pages: refill the N pages, then invalidate them
// (fill cost included; it dominates for small N).
void BM_IotlbFillThenInvalidateRange(benchmark::State& state) {
  const uint64_t pages = uint64_t(state.range(0));
  Iotlb tlb = MakeIotlb();
  FillCompletely(tlb);
  const uint64_t base = 0x20'0000'0000;
  for (auto _ : state) {
    for (uint64_t p = 0; p < pages; ++p) {
      (void)tlb.Insert(kTag, Iova(base + p * kPage), 12, PhysAddr(p * kPage), kRw);
    }
    benchmark::DoNotOptimize(
        *tlb.InvalidateVa(kTag, Iova(base), pages * kPage, VaLevels::kLeafOnly));
  }
  state.counters["pages"] = double(pages);
}
BENCHMARK(BM_IotlbFillThenInvalidateRange)->Arg(1)->Arg(64)->Arg(4096);

// Invalidate by ASID on a full IOTLB (1/16 of the entries are the ASID's),
// refilled outside the timed region each iteration.
void BM_IotlbInvalidateAsidFull(benchmark::State& state) {
  Iotlb tlb = MakeIotlb();
  FillCompletely(tlb);
  for (auto _ : state) {
    benchmark::DoNotOptimize(tlb.InvalidateAsid(3, 0));
    state.PauseTiming();
    FillCompletely(tlb);
    state.ResumeTiming();
  }
  state.counters["entries"] = double(tlb.capacity());
}
BENCHMARK(BM_IotlbInvalidateAsidFull);

// Flush queue: enqueue with the flush amortised over `capacity` entries
// (one invalidation callback per flush, one release per entry; both trivial
// here). The clock is a counter, as Linux's fq reads jiffies; the second
// variant reads absl::Now on every Enqueue.
void BM_FlushQueueEnqueueAmortised(benchmark::State& state) {
  const bool wall_clock = state.range(1) != 0;
  uint64_t invalidations = 0, released = 0;
  int64_t ticks = 0;
  FlushQueueCallbacks cb;
  cb.invalidate = [&] { ++invalidations; };
  cb.release = [&](const FlushQueueEntry& e) { released += e.payload[1]; };
  if (!wall_clock) cb.now = [&] { return absl::FromUnixNanos(++ticks); };
  FlushQueue q =
      *FlushQueue::Create({uint32_t(state.range(0)), absl::Seconds(3600)}, std::move(cb));
  FlushQueueEntry e;
  e.tag = kTag;
  e.size_bytes = kPage;
  e.payload[1] = 1;
  uint64_t page = 0;
  for (auto _ : state) {
    e.iova = Iova(0x4000'0000 + (page++ & 0xffff) * kPage);
    (void)q.Enqueue(e);
  }
  benchmark::DoNotOptimize(released);
  state.counters["flushes"] = double(invalidations);
}
BENCHMARK(BM_FlushQueueEnqueueAmortised)->Args({256, 0})->Args({256, 1});

}  // namespace
}  // namespace iommu::core
