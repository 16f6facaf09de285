// SPDX-License-Identifier: Apache-2.0
#include "server/heap_trimmer.h"

#include <malloc.h>

namespace iommu::server {

void HeapTrimmer::ConfigureAllocator() {
  mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMmapBytes));
  mallopt(M_TRIM_THRESHOLD, static_cast<int>(kTopBytes));
}

void HeapTrimmer::Finished(size_t bytes, absl::Time now) {
  if (bytes < kLargeBytes) return;
  const int64_t ns = absl::ToUnixNanos(now);
  int64_t expected = 0;
  first_ns_.compare_exchange_strong(expected, ns, std::memory_order_relaxed);
  last_ns_.store(ns, std::memory_order_relaxed);
}

bool HeapTrimmer::MaybeTrim(absl::Time now) {
  const int64_t first = first_ns_.load(std::memory_order_relaxed);
  if (first == 0) return false;
  const int64_t ns = absl::ToUnixNanos(now);
  const int64_t last = last_ns_.load(std::memory_order_relaxed);
  if (ns - last < absl::ToInt64Nanoseconds(kSettle) &&
      ns - first < absl::ToInt64Nanoseconds(kMaxDelay)) {
    return false;
  }
  // A call noted from here on asks for the next trim.
  first_ns_.store(0, std::memory_order_relaxed);
  malloc_trim(0);
  trims_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace iommu::server
