// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_RUN_SORT_H_
#define IOMMU_CORE_BASE_RUN_SORT_H_

// SortByRuns: an ascending sort for data made of a few monotone runs, such as
// the leaf ranges a batch of unmaps queues (the IOVA caches hand addresses
// out in LIFO order, so a batch's unmaps come in long ascending or descending
// stretches).
//
// Cost. Each maximal strictly descending run is reversed in place, then the
// r runs are merged pairwise, bottom-up: O(n log r) comparisons, O(n) for
// data already sorted either way. With more than kMaxRuns runs it is a plain
// std::sort.

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"

namespace iommu::core {

// Container: a random-access container of a type with operator< (a
// std::vector or an absl::InlinedVector).
template <typename Container>
void SortByRuns(Container* values) {
  constexpr size_t kMaxRuns = 64;
  Container& a = *values;
  const size_t n = a.size();
  absl::InlinedVector<size_t, kMaxRuns + 1> starts;
  for (size_t i = 0; i < n;) {
    if (starts.size() == kMaxRuns) {
      std::sort(a.begin(), a.end());
      return;
    }
    starts.push_back(i);
    size_t j = i + 1;
    if (j < n && a[j] < a[i]) {
      while (j < n && a[j] < a[j - 1]) ++j;
      std::reverse(a.begin() + i, a.begin() + j);
    } else {
      while (j < n && !(a[j] < a[j - 1])) ++j;
    }
    i = j;
  }
  while (starts.size() > 1) {
    absl::InlinedVector<size_t, kMaxRuns + 1> merged;
    for (size_t k = 0; k < starts.size(); k += 2) {
      merged.push_back(starts[k]);
      if (k + 1 == starts.size()) break;
      const size_t end = k + 2 < starts.size() ? starts[k + 2] : n;
      std::inplace_merge(a.begin() + starts[k], a.begin() + starts[k + 1], a.begin() + end);
    }
    starts = std::move(merged);
  }
}

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_RUN_SORT_H_
