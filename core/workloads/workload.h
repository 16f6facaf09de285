// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_WORKLOADS_WORKLOAD_H_
#define IOMMU_CORE_WORKLOADS_WORKLOAD_H_

// The workload runner's common parts: the PRNG, clock, median and the output
// line of docs/performance.md#output, and a registry so each workload lives
// in its own file.
//
// Each workload prints exactly one line:
//   NAME ns_per_op=<median of the repetitions> key=value ...
// with the extra keys docs/performance.md#workloads lists, so a reader can
// check that the same operation sequence ran as in the Linux reference
// harness.

#include <cstdint>
#include <ctime>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/base/xorshift.h"

namespace iommu::workloads {

// xorshift64 with shifts 13, 7, 17: the generator every workload replays.
using Rng = core::Xorshift64;

// CLOCK_MONOTONIC in nanoseconds, read right before and after a timed loop.
inline uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
}

// FNV-1a style op-sequence hash step of docs/performance.md#w1.
inline uint64_t HashStep(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ull; }
inline constexpr uint64_t kHashInit = 0xcbf29ce484222325ull;

// Median of a non-empty sample (mean of the middle two for even counts).
double Median(std::vector<double> samples);

// One workload's printed result.
struct Line {
  std::string name;
  double ns_per_op = 0;
  std::vector<std::pair<std::string, std::string>> extras;  // in print order

  void Add(std::string key, std::string value) {
    extras.emplace_back(std::move(key), std::move(value));
  }
  std::string Format() const;
};

// A workload runs `repetitions` repetitions, each from fresh state, and
// returns its line.
using WorkloadFn = std::function<Line(int repetitions)>;

struct Workload {
  std::string name;
  WorkloadFn run;
};

// Workloads register themselves at static-initialisation time:
//   static const bool kRegistered = RegisterWorkload("W1_iova_fast", RunW1Fast);
bool RegisterWorkload(std::string name, WorkloadFn fn);
// All registered workloads, sorted by name.
std::vector<Workload> RegisteredWorkloads();

}  // namespace iommu::workloads

#endif  // IOMMU_CORE_WORKLOADS_WORKLOAD_H_
