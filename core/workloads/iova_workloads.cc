// SPDX-License-Identifier: Apache-2.0
// The W1 (steady-state churn) and W2 (fragmentation) workloads of
// docs/performance.md#w1 and #w2 on iommu::core::IovaAllocator, through the
// calls the broker makes: AllocIova and FreeIova, with the range caches
// (W1_iova_fast) or without (W1_iova_rbtree, W2_frag: every call goes to the
// tree).
//
// The timed loops are the specification's loop bodies: rng, slot access,
// free, rng, alloc. Our calls do more than Linux's in the same place: every
// mutation updates the statistics (histogram, totals, failure reasons), and
// free checks that a live allocation of exactly that size starts at the pfn
// (Linux's free_iova_fast trusts the caller). The op-sequence checksum of W1
// is computed in an untimed replay of the same PRNG sequence (W1's (j, s)
// sequence does not depend on the allocator), so the hash is not timed.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/iova/iova_allocator.h"
#include "core/workloads/workload.h"

namespace iommu::workloads {
namespace {

using core::Iova;
using core::IovaAllocator;
using core::IovaAllocatorOptions;

constexpr uint64_t kGranule = 4096;
constexpr int kGranuleShift = 12;

constexpr uint64_t kW1Sizes[6] = {1, 2, 4, 8, 16, 32};
constexpr int kW1Slots = 10000;
constexpr int kW1Steps = 2'000'000;
constexpr uint64_t kW1Limit = (uint64_t{1} << 32) / 4096 - 1;  // 0xFFFFF
// The inclusive byte limit whose last granule is kW1Limit.
constexpr Iova kW1LimitIova((kW1Limit << kGranuleShift) | (kGranule - 1));

IovaAllocator MakeAllocator(uint64_t end_pfn, bool cache) {
  IovaAllocatorOptions o;
  o.granule_bytes = kGranule;
  o.start_pfn = 1;
  o.end_pfn = end_pfn;
  // Default placement (kLinuxNextFit) and cache geometry (32 pages, 127 pfns
  // per magazine, depot of 32 per size class).
  o.cache.enabled = cache;
  absl::StatusOr<IovaAllocator> a = IovaAllocator::Create(o);
  if (!a.ok()) {
    std::fprintf(stderr, "IovaAllocator::Create: %s\n", a.status().ToString().c_str());
    std::abort();
  }
  return std::move(a).value();
}

[[noreturn]] void Die(const absl::Status& s) {
  std::fprintf(stderr, "iova workload: %s\n", s.ToString().c_str());
  std::abort();
}

uint64_t W1OpSequenceHash() {
  Rng rng(42);
  for (int i = 0; i < kW1Slots; ++i) rng.Next();
  uint64_t h = kHashInit;
  for (int t = 0; t < kW1Steps; ++t) {
    const uint64_t j = rng.Next() % kW1Slots;
    const uint64_t s = kW1Sizes[rng.Next() % 6];
    h = HashStep(HashStep(h, j), s);
  }
  return h;
}

Line RunW1(int repetitions, bool fast) {
  std::vector<double> ns;
  uint64_t fails = 0;
  uint64_t final_live_pages = 0;
  uint64_t misses_in_steps = 0;
  // slot[] of the specification: one allocation and its size per entry
  // (bytes == 0: empty), one cache line per step's access.
  struct Slot {
    Iova iova;
    uint64_t bytes;
  };
  std::vector<Slot> slot(kW1Slots);
  // Allocates s pages into *slot; counts a failure.
  auto alloc = [&fails](IovaAllocator& a, uint64_t s, Slot* slot) {
    const absl::StatusOr<Iova> v = a.AllocIova(s << kGranuleShift, kW1LimitIova);
    if (v.ok()) [[likely]] {
      *slot = {*v, s << kGranuleShift};
    } else {
      *slot = {Iova(0), 0};
      ++fails;
    }
  };
  for (int rep = 0; rep < repetitions; ++rep) {
    IovaAllocator a = MakeAllocator(kW1Limit, fast);
    Rng rng(42);
    fails = 0;
    for (int i = 0; i < kW1Slots; ++i) alloc(a, kW1Sizes[rng.Next() % 6], &slot[i]);
    const uint64_t misses_before = a.GetStats().cache_misses;
    const uint64_t t0 = MonotonicNs();
    for (int t = 0; t < kW1Steps; ++t) {
      const uint64_t j = rng.Next() % kW1Slots;
      if (slot[j].bytes != 0) {
        if (absl::Status st = a.FreeIova(slot[j].iova, slot[j].bytes); !st.ok()) Die(st);
      }
      alloc(a, kW1Sizes[rng.Next() % 6], &slot[j]);
    }
    const uint64_t t1 = MonotonicNs();
    ns.push_back(double(t1 - t0) / kW1Steps);
    misses_in_steps = a.GetStats().cache_misses - misses_before;
    final_live_pages = 0;
    for (int i = 0; i < kW1Slots; ++i) final_live_pages += slot[i].bytes >> kGranuleShift;
    if (absl::Status st = a.CheckInvariants(); !st.ok()) Die(st);
  }
  Line line;
  line.name = fast ? "W1_iova_fast" : "W1_iova_rbtree";
  line.ns_per_op = Median(ns);
  line.Add("opseq", absl::StrFormat("%016x", W1OpSequenceHash()));
  line.Add("fails", absl::StrCat(fails));
  line.Add("final_live_pages", absl::StrCat(final_live_pages));
  if (fast) line.Add("rbtree_allocs_in_steps", absl::StrCat(misses_in_steps));
  return line;
}

constexpr uint64_t kW2LimitPfn = 65536;
constexpr Iova kW2LimitIova((kW2LimitPfn << kGranuleShift) | (kGranule - 1));
constexpr int kW2Steps = 200'000;

Line RunW2(int repetitions) {
  std::vector<double> ns;
  Line line;
  line.name = "W2_frag";
  for (int rep = 0; rep < repetitions; ++rep) {
    IovaAllocator a = MakeAllocator(kW2LimitPfn, /*cache=*/false);
    Rng rng(42);
    // L[] of the specification: an allocation and its size in one word, the
    // IOVA with pages - 1 (s <= 256) in its low 12 bits, as small as an
    // array of pfns (the step's data then stays in L1).
    std::vector<uint64_t> live(kW2LimitPfn + 1);
    const auto iova_of = [](uint64_t l) { return Iova(l & ~(kGranule - 1)); };
    const auto bytes_of = [](uint64_t l) { return ((l & (kGranule - 1)) + 1) << kGranuleShift; };
    uint64_t n = 0;
    for (;;) {
      const uint64_t s = rng.Next() % 256 + 1;
      const absl::StatusOr<Iova> v = a.AllocIova(s << kGranuleShift, kW2LimitIova);
      if (!v.ok()) break;
      live[n++] = v->value() | (s - 1);
    }
    const uint64_t fill_allocs = n;
    uint64_t failures = 0;
    const uint64_t t0 = MonotonicNs();
    for (int t = 0; t < kW2Steps; ++t) {
      if (n > 0) {
        const uint64_t j = rng.Next() % n;
        if (absl::Status st = a.FreeIova(iova_of(live[j]), bytes_of(live[j])); !st.ok()) Die(st);
        live[j] = live[n - 1];
        --n;
      }
      const uint64_t s = rng.Next() % 256 + 1;
      const absl::StatusOr<Iova> v = a.AllocIova(s << kGranuleShift, kW2LimitIova);
      if (v.ok()) {
        live[n++] = v->value() | (s - 1);
      } else {
        ++failures;
      }
    }
    const uint64_t t1 = MonotonicNs();
    ns.push_back(double(t1 - t0) / kW2Steps);
    if (absl::Status st = a.CheckInvariants(); !st.ok()) Die(st);

    uint64_t live_pages = 0;
    for (uint64_t i = 0; i < n; ++i)
      live_pages += *a.AllocationSizeBytes(iova_of(live[i])) >> kGranuleShift;
    uint64_t holes = 0;
    uint64_t largest = 0;
    uint64_t free_pages = 0;
    a.ForEachFreeRange([&](uint64_t lo, uint64_t hi) {
      ++holes;
      free_pages += hi - lo + 1;
      largest = std::max(largest, hi - lo + 1);
    });
    line.extras.clear();
    line.Add("fill_allocs", absl::StrCat(fill_allocs));
    line.Add("failures", absl::StrCat(failures));
    line.Add("live_end", absl::StrCat(n));
    line.Add("live_pages_end", absl::StrCat(live_pages));
    line.Add("free_pages", absl::StrCat(free_pages));
    line.Add("free_holes", absl::StrCat(holes));
    line.Add("largest_hole_pages", absl::StrCat(largest));
  }
  line.ns_per_op = Median(ns);
  return line;
}

const bool kRegisteredW1Fast =
    RegisterWorkload("W1_iova_fast", [](int reps) { return RunW1(reps, /*fast=*/true); });
const bool kRegisteredW1Rbtree =
    RegisterWorkload("W1_iova_rbtree", [](int reps) { return RunW1(reps, /*fast=*/false); });
const bool kRegisteredW2 = RegisterWorkload("W2_frag", RunW2);

}  // namespace
}  // namespace iommu::workloads
