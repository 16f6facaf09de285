// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_BROKER_METRICS_H_
#define IOMMU_SERVER_BROKER_METRICS_H_

// The broker families of docs/design.md#metrics, read from Broker::GetStats
// at scrape time (a prometheus::Collectable), so the RPC hot path pays
// nothing for them.
//
// Per domain {smmu, domain}: iommu_iova_space_bytes, _allocated_bytes,
//   _free_bytes, _largest_free_bytes, _reserved_bytes, _cached_bytes,
//   _free_ranges, _fragmentation_ratio, _live_allocations,
//   iommu_iova_alloc_failures_total{reason}, iommu_iova_cache_hits_total,
//   iommu_iova_cache_misses_total, iommu_iova_free_range_size_bytes (a histogram
//   of free-range sizes: count = free ranges, sum = free bytes), iommu_pagetable_pages,
//   iommu_pagetable_bytes, iommu_mappings, iommu_mapped_bytes,
//   iommu_flush_queue_depth, iommu_flush_queue_flushes_total{reason}.
// Per SMMU {smmu}: iommu_iotlb_{hits,misses,evictions,stale_hits,lookups}_total,
//   iommu_iotlb_invalidations_total{scope}, iommu_iotlb_entries,
//   iommu_iotlb_capacity, iommu_translations_total{result},
//   iommu_smmu_contexts, iommu_smmu_contexts_used.
// Per device {device, type}: iommu_faults_total (faults of an unknown stream
//   id: {type="unknown_stream"} alone, as they name no device).
// Global: iommu_fault_records_dropped_total,
//   iommu_fault_ring_capacity; per pool {pool}: iommu_pool_{total,free,
//   largest_free_block}_bytes, iommu_pool_allocations_total,
//   iommu_pool_failures_total.
//
// Thread-safe (the broker is).

#include <vector>

#include "core/broker/broker.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "store/state_store.h"

namespace iommu::server {

class BrokerCollector final : public prometheus::Collectable {
 public:
  explicit BrokerCollector(const core::Broker* broker) : broker_(broker) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const core::Broker* const broker_;
};

// The state store's families (docs/design.md#metrics):
// iommu_store_commit_duration_seconds (histogram), iommu_store_commits_total,
// iommu_store_writes_total (records put or deleted), iommu_store_size_bytes,
// iommu_store_recovery_duration_seconds, iommu_store_recovered_records,
// iommu_store_recovered_mappings, iommu_store_recovery_repairs (operations a
// crash had cut short that recovery completed). A store write that fails
// stops the daemon (fail-stop), so there is no error counter to watch: the
// log names the failure and the restart serves the last state written.
class StoreCollector final : public prometheus::Collectable {
 public:
  struct Recovery {
    double seconds = 0;
    uint64_t records = 0;
    uint64_t mappings = 0;
    uint64_t completed = 0;
  };
  StoreCollector(const store::StateStore* store, Recovery recovery)
      : store_(store), recovery_(recovery) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const store::StateStore* const store_;
  const Recovery recovery_;
};

// iommu_build_info{version, build_type, grpc_version, protobuf_version} 1, and
// the process families of the Prometheus client conventions, read from
// /proc/self: process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds,
// process_start_time_seconds. Thread-safe.
class ProcessCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_BROKER_METRICS_H_
