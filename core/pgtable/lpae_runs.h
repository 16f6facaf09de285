// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_PGTABLE_LPAE_RUNS_H_
#define IOMMU_CORE_PGTABLE_LPAE_RUNS_H_

// The inner loops of LpaePgtable over runs of consecutive descriptors in one
// table: check a run is free, check it holds leaves of one type, fill it.
// Internal to the LPAE engine (lpae_pgtable*.cc).

#include <cstdint>
#include <cstring>

#include "core/pgtable/lpae_format.h"

namespace iommu::core::internal {

// Loops over runs of descriptors, on pairs of descriptors (GCC/Clang generic
// vectors: one 128-bit load or store where the target has them, two scalar
// ones where not) with two independent chains, so a run goes at load/store
// throughput (-O2 does not vectorise loops of unknown trip count).
using Pair = uint64_t __attribute__((vector_size(16)));
inline Pair LoadPair(const uint64_t* p) {
  Pair v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void StorePair(uint64_t* p, Pair v) { std::memcpy(p, &v, sizeof v); }

// OR of p[0, n).
inline uint64_t OrAll(const uint64_t* p, uint64_t n) {
  Pair a0 = {0, 0}, a1 = {0, 0};
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 |= LoadPair(p + i);
    a1 |= LoadPair(p + i + 2);
  }
  const Pair a = a0 | a1;
  uint64_t r = a[0] | a[1];
  for (; i < n; ++i) r |= p[i];
  return r;
}

// Whether every p[0, n) has descriptor type `type` (bits [1:0]): the type
// bits set in `type` are set in all of them (AND), no other is set in any of
// them (OR). REQUIRES: n >= 1.
inline bool AllOfType(const uint64_t* p, uint64_t n, uint64_t type) {
  Pair all0 = {~uint64_t{0}, ~uint64_t{0}}, all1 = all0, any0 = {0, 0}, any1 = any0;
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const Pair v0 = LoadPair(p + i), v1 = LoadPair(p + i + 2);
    all0 &= v0;
    any0 |= v0;
    all1 &= v1;
    any1 |= v1;
  }
  const Pair all = all0 & all1, any = any0 | any1;
  uint64_t all_r = all[0] & all[1], any_r = any[0] | any[1];
  for (; i < n; ++i) {
    all_r &= p[i];
    any_r |= p[i];
  }
  return (all_r & lpae::kPteTypeMask) == type && (any_r & lpae::kPteTypeMask) == type;
}

// p[i] = first_pte + i * step for i in [0, n). Leaf descriptors of
// consecutive pages differ by the page size in the address field alone (the
// address stays below 2^48, no carry reaches the upper attributes).
inline void FillLeaves(uint64_t* p, uint64_t n, uint64_t first_pte, uint64_t step) {
  Pair v0 = {first_pte, first_pte + step};
  Pair v1 = v0 + 2 * step;
  const uint64_t step4 = 4 * step;
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    StorePair(p + i, v0);
    StorePair(p + i + 2, v1);
    v0 += step4;
    v1 += step4;
  }
  uint64_t v = first_pte + i * step;
  for (; i < n; ++i, v += step) p[i] = v;
}

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_PGTABLE_LPAE_RUNS_H_
