// SPDX-License-Identifier: Apache-2.0
// W3 (docs/performance.md#w3): the ARM LPAE stage-1 page table, run exactly
// as the Linux reference harness (io-pgtable-arm.c in userspace): 4K granule,
// pgsize_bitmap 4K|2M|1G, ias = oas = 48, coherent walk, no-op flush ops with
// a non-queued gather (TlbAddPage once per unmapped page), prot READ|WRITE,
// IOVA base 0x1_0000_0000, PA base 0x8000_0000, one call per page ascending.
//
// Calls go through the generic IoPgtableOps interface (one virtual call per
// operation, as Linux's ops->map_pages). Our unmap also frees tables that
// become empty (Linux keeps them): that is inside our unmap_ns, and the line
// says frees_empty_tables=1. Table pages come from the process's
// PgtablePagePool (bounded, 4 MiB), as the kernel's io-pgtable draws from its
// page allocator: the first repetition faults fresh pages in, the later ones
// (each a fresh page table) reuse the zeroed pages the previous one freed.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/pgtable/io_pgtable.h"
#include "core/workloads/workload.h"

namespace iommu::workloads {
namespace {

using core::FlushOps;
using core::IoPgtableOps;
using core::IotlbGather;
using core::Iova;
using core::PhysAddr;
using core::Prot;

constexpr uint64_t kIovaBase = 0x1'0000'0000;
constexpr uint64_t kPaBase = 0x8000'0000;
constexpr uint64_t kSz4K = uint64_t{1} << 12;
constexpr uint64_t kSz2M = uint64_t{1} << 21;
constexpr uint64_t kSz1G = uint64_t{1} << 30;
constexpr Prot kProt = Prot::kRead | Prot::kWrite;

class NoopFlushOps final : public FlushOps {
 public:
  void TlbFlushAll() override {}
  void TlbFlushWalk(Iova, uint64_t, uint64_t) override {}
  void TlbAddPage(IotlbGather*, Iova, uint64_t) override {}
  void TlbAddPages(IotlbGather*, Iova, uint64_t, uint64_t) override {}
};

std::unique_ptr<IoPgtableOps> NewTable(FlushOps* flush) {
  core::IoPgtableCfg cfg;
  cfg.format = core::IoPgtableFormat::kArm64LpaeS1;
  cfg.pgsize_bitmap = kSz4K | kSz2M | kSz1G;
  cfg.ias = 48;
  cfg.oas = 48;
  cfg.coherent_walk = true;
  auto ops = core::AllocIoPgtableOps(cfg, flush);
  if (!ops.ok()) {
    std::fprintf(stderr, "W3: %s\n", ops.status().ToString().c_str());
    std::abort();
  }
  return *std::move(ops);
}

[[noreturn]] void Fail(const char* what, uint64_t i) {
  std::fprintf(stderr, "W3: %s at i=%llu\n", what, static_cast<unsigned long long>(i));
  std::abort();
}

Line RunMapUnmap(const char* name, uint64_t pgsize, uint64_t pages, int repetitions) {
  NoopFlushOps flush;
  std::vector<double> map_ns, unmap_ns, total_ns;
  uint64_t pgtable_pages = 0;
  for (int rep = 0; rep < repetitions; ++rep) {
    std::unique_ptr<IoPgtableOps> ops = NewTable(&flush);
    IotlbGather gather;  // not queued: TlbAddPage per unmapped page
    uint64_t t0 = MonotonicNs();
    for (uint64_t i = 0; i < pages; ++i) {
      if (!ops->MapPages(Iova(kIovaBase + i * pgsize), PhysAddr(kPaBase + i * pgsize), pgsize, 1,
                         kProt)
               .ok()) {
        Fail("map_pages failed", i);
      }
    }
    uint64_t t1 = MonotonicNs();
    pgtable_pages = ops->Stats().table_count;
    const uint64_t t2 = MonotonicNs();
    for (uint64_t i = 0; i < pages; ++i) {
      auto unmapped = ops->UnmapPages(Iova(kIovaBase + i * pgsize), pgsize, 1, &gather);
      if (!unmapped.ok() || *unmapped != pgsize) Fail("unmap_pages did not return pgsize", i);
    }
    const uint64_t t3 = MonotonicNs();
    const double m = double(t1 - t0) / double(pages);
    const double u = double(t3 - t2) / double(pages);
    map_ns.push_back(m);
    unmap_ns.push_back(u);
    total_ns.push_back(m + u);
    (void)t0;
  }
  Line line;
  line.name = name;
  line.ns_per_op = Median(total_ns);
  line.Add("map_ns", absl::StrFormat("%.2f", Median(map_ns)));
  line.Add("unmap_ns", absl::StrFormat("%.2f", Median(unmap_ns)));
  line.Add("pgtable_pages", absl::StrCat(pgtable_pages));
  line.Add("frees_empty_tables", "1");
  return line;
}

Line RunMap4k(int repetitions) {
  return RunMapUnmap("W3_pgtable_map4k", kSz4K, 262144, repetitions);
}
Line RunMap2m(int repetitions) { return RunMapUnmap("W3_pgtable_map2m", kSz2M, 2048, repetitions); }

Line RunIovaToPhys(int repetitions) {
  NoopFlushOps flush;
  constexpr uint64_t kPages = 262144;
  constexpr uint64_t kLookups = 5'000'000;
  std::vector<double> ns;
  uint64_t phys_sum = 0;
  uint64_t mismatches = 0;
  for (int rep = 0; rep < repetitions; ++rep) {
    std::unique_ptr<IoPgtableOps> ops = NewTable(&flush);
    for (uint64_t i = 0; i < kPages; ++i) {
      if (!ops->MapPages(Iova(kIovaBase + i * kSz4K), PhysAddr(kPaBase + i * kSz4K), kSz4K, 1,
                         kProt)
               .ok()) {
        Fail("map_pages failed", i);
      }
    }
    Rng rng(42);
    uint64_t sum = 0;
    uint64_t bad = 0;
    const uint64_t t0 = MonotonicNs();
    for (uint64_t n = 0; n < kLookups; ++n) {
      const uint64_t idx = rng.Next() % kPages;
      const auto pa = ops->IovaToPhys(Iova(kIovaBase + idx * kSz4K));
      const uint64_t v = pa ? pa->value() : 0;
      if (v != kPaBase + idx * kSz4K) ++bad;
      sum += v;
    }
    const uint64_t t1 = MonotonicNs();
    ns.push_back(double(t1 - t0) / double(kLookups));
    phys_sum = sum;
    mismatches += bad;
  }
  Line line;
  line.name = "W3_pgtable_iova_to_phys";
  line.ns_per_op = Median(ns);
  line.Add("phys_sum", absl::StrFormat("%016x", phys_sum));
  line.Add("mismatches", absl::StrCat(mismatches));
  return line;
}

const bool kRegisteredMap4k = RegisterWorkload("W3_pgtable_map4k", RunMap4k);
const bool kRegisteredMap2m = RegisterWorkload("W3_pgtable_map2m", RunMap2m);
const bool kRegisteredIovaToPhys = RegisterWorkload("W3_pgtable_iova_to_phys", RunIovaToPhys);

}  // namespace
}  // namespace iommu::workloads
