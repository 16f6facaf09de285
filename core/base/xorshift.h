// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_XORSHIFT_H_
#define IOMMU_CORE_BASE_XORSHIFT_H_

// xorshift64 with shifts (13, 7, 17): the PRNG of the workloads
// (docs/performance.md#prng). One definition for the workload runner, the
// benchmarks and the randomized tests, so "seed 42" means the same sequence
// everywhere. Not for anything that needs unpredictability.

#include <cstdint>

namespace iommu::core {

class Xorshift64 {
 public:
  // seed != 0 (zero is the generator's fixed point).
  explicit Xorshift64(uint64_t seed = 42) : x_(seed) {}

  uint64_t Next() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 7;
    x_ ^= x_ << 17;
    return x_;
  }
  uint64_t operator()() { return Next(); }
  // Next() % n, the specification's reduction. REQUIRES: n > 0.
  uint64_t Below(uint64_t n) { return Next() % n; }

 private:
  uint64_t x_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_XORSHIFT_H_
