// SPDX-License-Identifier: Apache-2.0
// Test support: looking up what a prometheus-cpp registry collected.
#ifndef IOMMU_SERVER_METRICS_TEST_UTIL_H_
#define IOMMU_SERVER_METRICS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "prometheus/metric_family.h"

namespace iommu::server::testing {

// The family called `name`; a test failure and an empty family if there is
// none.
inline const prometheus::MetricFamily& FamilyNamed(const std::vector<prometheus::MetricFamily>& all,
                                                   const std::string& name) {
  for (const auto& f : all) {
    if (f.name == name) return f;
  }
  ADD_FAILURE() << "no family " << name;
  static const prometheus::MetricFamily empty;
  return empty;
}

}  // namespace iommu::server::testing

#endif  // IOMMU_SERVER_METRICS_TEST_UTIL_H_
