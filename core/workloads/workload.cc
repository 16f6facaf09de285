// SPDX-License-Identifier: Apache-2.0
#include "core/workloads/workload.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iommu::workloads {
namespace {

std::vector<Workload>& Registry() {
  static auto* registry = new std::vector<Workload>();
  return *registry;
}

}  // namespace

double Median(std::vector<double> samples) {
  assert(!samples.empty());
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

std::string Line::Format() const {
  std::string out = absl::StrFormat("%s ns_per_op=%.2f", name, ns_per_op);
  for (const auto& [key, value] : extras) absl::StrAppend(&out, " ", key, "=", value);
  return out;
}

bool RegisterWorkload(std::string name, WorkloadFn fn) {
  Registry().push_back({std::move(name), std::move(fn)});
  return true;
}

std::vector<Workload> RegisteredWorkloads() {
  std::vector<Workload> all = Registry();
  std::sort(all.begin(), all.end(),
            [](const Workload& a, const Workload& b) { return a.name < b.name; });
  return all;
}

}  // namespace iommu::workloads
