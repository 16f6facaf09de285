// SPDX-License-Identifier: Apache-2.0
// LPAE page-table micro-benchmarks (bars: docs/performance.md#engine-bars).
// Stage 1, 4K granule, ias = oas = 48, no-op flush ops, non-queued gather
// (TlbAddPage per single-page unmap, one TlbAddPages per run of pages in one
// table); calls go through the generic IoPgtableOps interface.

#include <cstdint>
#include <memory>

#include "benchmark/benchmark.h"
#include "core/base/xorshift.h"
#include "core/pgtable/io_pgtable.h"

namespace iommu::core {
namespace {

constexpr uint64_t kSz4K = uint64_t{1} << 12;
constexpr uint64_t kIovaBase = 0x1'0000'0000;
constexpr uint64_t kPaBase = 0x8000'0000;

class NoopFlushOps final : public FlushOps {
 public:
  void TlbFlushAll() override {}
  void TlbFlushWalk(Iova, uint64_t, uint64_t) override {}
  void TlbAddPage(IotlbGather*, Iova, uint64_t) override {}
  void TlbAddPages(IotlbGather*, Iova, uint64_t, uint64_t) override {}
};

std::unique_ptr<IoPgtableOps> NewTable(FlushOps* flush) {
  IoPgtableCfg cfg;
  cfg.format = IoPgtableFormat::kArm64LpaeS1;
  cfg.pgsize_bitmap = kSz4K | (uint64_t{1} << 21) | (uint64_t{1} << 30);
  cfg.ias = 48;
  cfg.oas = 48;
  return *AllocIoPgtableOps(cfg, flush);
}

// Map then unmap one 4K page, cycling over 511 pages of one leaf table whose
// last page stays mapped, so tables stay allocated (a busy domain's steady
// state).
void BM_Map4kUnmap(benchmark::State& state) {
  NoopFlushOps flush;
  auto ops = NewTable(&flush);
  IotlbGather gather;
  const Prot prot = Prot::kRead | Prot::kWrite;
  (void)ops->MapPages(Iova(kIovaBase + 511 * kSz4K), PhysAddr(kPaBase), kSz4K, 1, prot);
  uint64_t i = 0;
  for (auto _ : state) {
    const Iova iova(kIovaBase + (i % 511) * kSz4K);
    benchmark::DoNotOptimize(ops->MapPages(iova, PhysAddr(kPaBase + i * kSz4K), kSz4K, 1, prot));
    benchmark::DoNotOptimize(ops->UnmapPages(iova, kSz4K, 1, &gather));
    ++i;
  }
}
BENCHMARK(BM_Map4kUnmap);

// Same, but the page is the only one in its tables: every unmap frees the
// three intermediate tables and every map allocates them again.
void BM_Map4kUnmapFreesTables(benchmark::State& state) {
  NoopFlushOps flush;
  auto ops = NewTable(&flush);
  IotlbGather gather;
  const Prot prot = Prot::kRead | Prot::kWrite;
  for (auto _ : state) {
    benchmark::DoNotOptimize(ops->MapPages(Iova(kIovaBase), PhysAddr(kPaBase), kSz4K, 1, prot));
    benchmark::DoNotOptimize(ops->UnmapPages(Iova(kIovaBase), kSz4K, 1, &gather));
  }
}
BENCHMARK(BM_Map4kUnmapFreesTables);

// pgcount pages per MapPages and per UnmapPages call; reported per page. The
// batch starts 64 pages into a leaf table whose first page stays mapped (512
// pages then span two leaf tables; the second is allocated and freed per
// iteration, part of the cost).
void BM_MapUnmapBatch(benchmark::State& state) {
  NoopFlushOps flush;
  auto ops = NewTable(&flush);
  IotlbGather gather;
  gather.queued = state.range(1) != 0;  // lazy mode: no TlbAddPage per page
  const uint64_t pgcount = uint64_t(state.range(0));
  const Prot prot = Prot::kRead | Prot::kWrite;
  (void)ops->MapPages(Iova(kIovaBase), PhysAddr(kPaBase), kSz4K, 1, prot);
  const Iova iova(kIovaBase + 64 * kSz4K);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ops->MapPages(iova, PhysAddr(kPaBase), kSz4K, pgcount, prot));
    benchmark::DoNotOptimize(ops->UnmapPages(iova, kSz4K, pgcount, &gather));
  }
  state.SetItemsProcessed(int64_t(state.iterations() * pgcount));
  state.counters["ns_per_page"] =
      benchmark::Counter(double(state.iterations() * pgcount),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_MapUnmapBatch)->ArgNames({"pages", "queued"})->ArgsProduct({{64, 512}, {0, 1}});

// iova_to_phys over 1 GiB of 4K pages, random pages (W3's access pattern).
void BM_IovaToPhys(benchmark::State& state) {
  NoopFlushOps flush;
  auto ops = NewTable(&flush);
  constexpr uint64_t kPages = 262144;
  (void)ops->MapPages(Iova(kIovaBase), PhysAddr(kPaBase), kSz4K, kPages,
                      Prot::kRead | Prot::kWrite);
  core::Xorshift64 rng;
  for (auto _ : state) {
    benchmark::DoNotOptimize(ops->IovaToPhys(Iova(kIovaBase + rng.Below(kPages) * kSz4K)));
  }
}
BENCHMARK(BM_IovaToPhys);

}  // namespace
}  // namespace iommu::core
