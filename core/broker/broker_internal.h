// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BROKER_INTERNAL_H_
#define IOMMU_CORE_BROKER_BROKER_INTERNAL_H_

// The broker's per-device state. SMMUs and domains are in domain.h, buffers
// and exports in buffer_table.h. Only the broker's sources include this.

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "core/broker/broker_mappings.h"
#include "core/broker/buffer_table.h"
#include "core/broker/domain.h"
#include "core/broker/topology.h"
#include "core/iotlb/fault_ring.h"

namespace iommu::core::internal {

// Per-device state. Quota usage is atomic (charged before a change, refunded
// on failure or release).
// Cache-line aligned: its quota counters are written by each of its maps and
// unmaps, and must not share a line with another device's.
struct alignas(64) DeviceState {
  DeviceConfig config;
  Smmu* smmu = nullptr;
  std::shared_ptr<Domain> default_domain;
  // The domain it is attached to. Set only with the broker's registry lock
  // held exclusively, through SetCurrent (which also takes current_mu), so a
  // reader holding either lock sees it whole; the hot path reads it under
  // current_mu alone, a lock no other device shares.
  std::shared_ptr<Domain> current;
  mutable absl::Mutex current_mu;
  Quotas quotas;
  std::atomic<uint64_t> mapped_bytes{0};
  std::atomic<uint64_t> mappings{0};
  std::atomic<uint64_t> buffers{0};
  std::atomic<uint64_t> buffer_bytes{0};
  std::atomic<uint64_t> domains{0};  // non-default domains it owns
  std::atomic<uint64_t> exports{0};  // live export tokens
  // Its own faults by FaultType (what a device's GetStats shows).
  std::array<std::atomic<uint64_t>, kNumFaultTypes> faults_by_type{};

  // Quota charges: RESOURCE_EXHAUSTED naming the quota, and no change, when
  // one would pass its limit; each refund undoes one charge.
  std::shared_ptr<Domain> Current() const {
    absl::ReaderMutexLock l(&current_mu);
    return current;
  }
  void SetCurrent(std::shared_ptr<Domain> d) {
    absl::MutexLock l(&current_mu);
    current = std::move(d);
  }

  absl::Status ChargeMapping(uint64_t bytes);
  void RefundMapping(uint64_t bytes);
  absl::Status ChargeBuffer(uint64_t bytes);
  void RefundBuffer(uint64_t bytes);
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_BROKER_INTERNAL_H_
