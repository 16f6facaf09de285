// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BROKER_TEST_UTIL_H_
#define IOMMU_CORE_BROKER_BROKER_TEST_UTIL_H_

// Helpers shared by the broker tests.

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/broker/broker.h"
#include "gtest/gtest.h"

namespace iommu::core::testing {

inline constexpr uint64_t KiB = 1024, MiB = KiB * KiB, GiB = MiB * KiB;

// A settable clock for leases and flush-queue timeouts.
struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  std::function<absl::Time()> Fn() {
    return [this] { return now; };
  }
};

// The default host plus a test device with a 64 KiB segment boundary.
inline Topology TestTopology() {
  Topology t = DefaultTopology();
  t.devices.push_back({.name = "sg64k",
                       .smmu = "smmu0",
                       .stream_id = 0x600,
                       .dma_mask_bits = 48,
                       .max_segment_size_bytes = 1 * MiB,
                       .segment_boundary_mask = 0xFFFF});
  return t;
}

inline std::unique_ptr<Broker> MakeBroker(BrokerOptions options = {},
                                          Topology topology = TestTopology()) {
  auto b = Broker::Create(topology, options);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

// The value of a StatusOr by value (a range-for over `f().value()` would
// iterate a destroyed temporary); fails the test when it holds an error.
template <typename T>
T Value(absl::StatusOr<T> s) {
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : T{};
}

inline Access Read() { return {AccessKind::kRead, false}; }
inline Access Write() { return {AccessKind::kWrite, false}; }

}  // namespace iommu::core::testing

#endif  // IOMMU_CORE_BROKER_BROKER_TEST_UTIL_H_
