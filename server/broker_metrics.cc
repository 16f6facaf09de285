// SPDX-License-Identifier: Apache-2.0
#include "server/broker_metrics.h"

#include <limits>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"

namespace iommu::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

// Families by name, in first-use order, so each is emitted once.
class FamilySet {
 public:
  void Gauge(const char* name, const char* help, Labels labels, double value) {
    Add(name, help, MetricType::Gauge, std::move(labels), value);
  }
  void Counter(const char* name, const char* help, Labels labels, double value) {
    Add(name, help, MetricType::Counter, std::move(labels), value);
  }
  void Histogram(const char* name, const char* help, Labels labels, ClientMetric::Histogram h) {
    Add(name, help, MetricType::Histogram, std::move(labels), 0);
    families_[index_[name]].metric.back().histogram = std::move(h);
  }
  std::vector<MetricFamily> Take() { return std::move(families_); }

 private:
  void Add(const char* name, const char* help, MetricType type, Labels labels, double value) {
    auto [it, inserted] = index_.emplace(name, families_.size());
    if (inserted) {
      MetricFamily family;
      family.name = name;
      family.help = help;
      family.type = type;
      families_.push_back(std::move(family));
    }
    ClientMetric metric;
    metric.label = std::move(labels);
    if (type == MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
    families_[it->second].metric.push_back(std::move(metric));
  }

  std::map<std::string, size_t> index_;
  std::vector<MetricFamily> families_;
};

Labels With(Labels labels, const char* name, std::string value) {
  labels.push_back({name, std::move(value)});
  return labels;
}

void CollectDomain(const core::DomainStats& d, FamilySet& f) {
  const Labels labels = {{"domain", absl::StrCat(d.domain_id)}, {"smmu", d.smmu}};
  if (d.iova) {
    const core::IovaStats& s = *d.iova;
    const double g = static_cast<double>(s.granule_bytes);
    f.Gauge("iommu_iova_space_bytes", "Size of the domain's IOVA space.", labels,
            s.space_pages * g);
    f.Gauge("iommu_iova_allocated_bytes", "IOVA space held by live allocations.", labels,
            s.allocated_pages * g);
    f.Gauge("iommu_iova_cached_bytes", "IOVA space parked in the magazine caches.", labels,
            s.cached_pages * g);
    f.Gauge("iommu_iova_free_bytes", "Free IOVA space.", labels, s.free_pages * g);
    f.Gauge("iommu_iova_reserved_bytes", "Reserved IOVA space (MSI windows, holes).", labels,
            s.reserved_pages * g);
    f.Gauge("iommu_iova_largest_free_bytes", "Largest free IOVA range.", labels,
            s.largest_free_pages * g);
    f.Gauge("iommu_iova_free_ranges", "Number of free IOVA ranges.", labels,
            static_cast<double>(s.free_ranges));
    f.Gauge("iommu_iova_fragmentation_ratio", "1 - largest_free / free (0 when nothing is free).",
            labels, s.fragmentation_ratio);
    f.Gauge("iommu_iova_live_allocations", "Live IOVA allocations.", labels,
            static_cast<double>(s.live_allocations));
    static constexpr const char* kReasons[] = {"no_space", "fragmented", "beyond_limit"};
    for (int r = 0; r < core::kIovaFailureReasonCount; ++r) {
      f.Counter("iommu_iova_alloc_failures_total", "Failed IOVA allocations by reason.",
                With(labels, "reason", kReasons[r]), static_cast<double>(s.failures[r]));
    }
    f.Counter("iommu_iova_cache_hits_total", "IOVA allocations served by the magazine caches.",
              labels, static_cast<double>(s.cache_hits));
    f.Counter("iommu_iova_cache_misses_total", "IOVA allocations that missed the caches.", labels,
              static_cast<double>(s.cache_misses));
    // Bucket k of the allocator's histogram counts free ranges of
    // [2^k, 2^(k+1)) granules, i.e. of at most (2^(k+1) - 1) granules: a true
    // histogram of free-range sizes whose sum is the free space.
    ClientMetric::Histogram h;
    uint64_t cumulative = 0;
    for (int k = 0; k < int(std::size(s.free_range_histogram)) - 1; ++k) {
      if ((uint64_t{1} << k) > s.space_pages) break;
      cumulative += s.free_range_histogram[k];
      h.bucket.push_back({cumulative, double(((uint64_t{1} << (k + 1)) - 1) * s.granule_bytes)});
    }
    h.bucket.push_back({s.free_ranges, std::numeric_limits<double>::infinity()});
    h.sample_count = s.free_ranges;
    h.sample_sum = s.free_pages * g;
    f.Histogram("iommu_iova_free_range_size_bytes", "Sizes of the free IOVA ranges.", labels,
                std::move(h));
  }
  f.Gauge("iommu_pagetable_pages", "Page-table pages (tables) of the domain.", labels,
          static_cast<double>(d.pgtable.table_count));
  f.Gauge("iommu_pagetable_bytes", "Descriptor memory of the domain's page tables.", labels,
          static_cast<double>(d.pgtable.table_bytes));
  f.Gauge("iommu_mappings", "Live mappings in the domain.", labels,
          static_cast<double>(d.mappings));
  f.Gauge("iommu_mapped_bytes", "Bytes mapped in the domain.", labels,
          static_cast<double>(d.mapped_bytes));
  if (d.flush_queue) {
    f.Gauge("iommu_flush_queue_depth", "Invalidations pending in the lazy flush queue.", labels,
            static_cast<double>(d.flush_queue->depth));
    const std::pair<const char*, uint64_t> reasons[] = {
        {"full", d.flush_queue->flushes_full},
        {"timeout", d.flush_queue->flushes_timeout},
        {"explicit", d.flush_queue->flushes_explicit}};
    for (const auto& [reason, count] : reasons) {
      f.Counter("iommu_flush_queue_flushes_total", "Flush-queue flushes by trigger.",
                With(labels, "reason", reason), static_cast<double>(count));
    }
  }
}

void CollectSmmu(const core::SmmuStats& s, FamilySet& f) {
  const Labels labels = {{"smmu", s.name}};
  const core::IotlbStats& t = s.iotlb;
  f.Counter("iommu_iotlb_lookups_total", "IOTLB lookups.", labels, double(t.lookups));
  f.Counter("iommu_iotlb_hits_total", "IOTLB hits (stale hits included).", labels, double(t.hits));
  f.Counter("iommu_iotlb_misses_total", "IOTLB misses.", labels, double(t.misses));
  f.Counter("iommu_iotlb_evictions_total", "Valid IOTLB entries displaced by a fill.", labels,
            double(t.evictions));
  f.Counter("iommu_iotlb_stale_hits_total",
            "Translations served from stale IOTLB entries (lazy-invalidation exposure).", labels,
            double(t.stale_hits));
  const std::pair<const char*, uint64_t> scopes[] = {{"all", t.invalidations_all},
                                                     {"asid", t.invalidations_asid},
                                                     {"vmid", t.invalidations_vmid},
                                                     {"va", t.invalidations_va},
                                                     {"va_leaf", t.invalidations_va_leaf}};
  for (const auto& [scope, count] : scopes) {
    f.Counter("iommu_iotlb_invalidations_total", "IOTLB invalidation commands by scope.",
              With(labels, "scope", scope), double(count));
  }
  f.Gauge("iommu_iotlb_entries", "Valid IOTLB entries.", labels, double(t.occupancy));
  f.Gauge("iommu_iotlb_capacity", "IOTLB entries (sets x ways).", labels, double(s.iotlb_capacity));
  f.Counter("iommu_translations_total", "Device accesses translated, by result.",
            With(labels, "result", "ok"), double(s.translations_ok));
  f.Counter("iommu_translations_total", "", With(labels, "result", "fault"),
            double(s.translations_fault));
  f.Gauge("iommu_smmu_contexts", "Translation contexts of the SMMU.", labels,
          double(s.contexts_total));
  f.Gauge("iommu_smmu_contexts_used", "Translation contexts in use.", labels,
          double(s.contexts_used));
}

}  // namespace

std::vector<MetricFamily> BrokerCollector::Collect() const {
  const core::BrokerStats stats = *broker_->GetStats(core::Caller::Admin());
  FamilySet f;
  for (const core::DomainStats& d : stats.domains) CollectDomain(d, f);
  for (const core::SmmuStats& s : stats.smmus) CollectSmmu(s, f);
  // Faults by the device that raised them and type; a fault of an unknown
  // stream id names no device, so its series has no device label. Summed by
  // type, the series are the fault ring's counts.
  constexpr char kFaultsHelp[] = "Faults recorded, by device and type.";
  constexpr auto kUnknownStream = static_cast<size_t>(core::FaultType::kUnknownStream);
  const auto type_label = [](size_t type) -> ClientMetric::Label {
    return {"type", std::string(core::FaultTypeName(static_cast<core::FaultType>(type)))};
  };
  for (const core::DeviceFaultStats& d : stats.device_faults) {
    for (size_t t = 0; t < core::kNumFaultTypes; ++t) {
      if (t == kUnknownStream) continue;
      f.Counter("iommu_faults_total", kFaultsHelp, {{"device", d.device}, type_label(t)},
                double(d.by_type[t]));
    }
  }
  f.Counter("iommu_faults_total", kFaultsHelp, {type_label(kUnknownStream)},
            double(stats.faults.pushed_by_type[kUnknownStream]));
  f.Counter("iommu_fault_records_dropped_total",
            "Fault records overwritten in the ring, read by a watcher or not.", {},
            double(stats.faults.dropped_total));
  f.Gauge("iommu_fault_ring_capacity", "Fault ring capacity in records.", {},
          double(stats.faults.capacity));
  for (const core::PoolStats& p : stats.pools) {
    const Labels labels = {{"pool", p.name}};
    f.Gauge("iommu_pool_total_bytes", "Physical page pool size.", labels,
            double(p.total_pages * p.page_size_bytes));
    f.Gauge("iommu_pool_free_bytes", "Free bytes in the page pool.", labels,
            double(p.free_pages * p.page_size_bytes));
    f.Gauge("iommu_pool_largest_free_block_bytes", "Largest free buddy block of the pool.", labels,
            double(p.largest_free_block_bytes));
    f.Counter("iommu_pool_allocations_total", "Allocations served by the pool.", labels,
              double(p.allocations_total));
    f.Counter("iommu_pool_failures_total", "Allocations that found the pool exhausted.", labels,
              double(p.failures_total));
  }
  f.Gauge("iommu_request_ids_remembered",
          "Replies of calls made under request ids, kept for their retries.", {},
          double(broker_->request_log().size()));
  f.Counter("iommu_request_replays_total",
            "Calls answered with the recorded reply of an earlier attempt (retries).", {},
            double(broker_->request_log().replays()));
  return f.Take();
}

}  // namespace iommu::server

namespace iommu::server {

std::vector<prometheus::MetricFamily> StoreCollector::Collect() const {
  FamilySet f;
  const store::StoreStats s = store_->Stats();
  ClientMetric::Histogram h;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < store::kCommitLatencyBounds.size(); ++i) {
    cumulative += s.latency_buckets[i];
    h.bucket.push_back({cumulative, store::kCommitLatencyBounds[i]});
  }
  cumulative += s.latency_buckets.back();
  h.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
  h.sample_count = cumulative;
  h.sample_sum = s.latency_sum_seconds;
  f.Histogram("iommu_store_commit_duration_seconds",
              "Time to write one commit of the broker to the state store.", {}, std::move(h));
  f.Counter("iommu_store_commits_total", "Commits written to the state store.", {},
            double(s.commits));
  f.Counter("iommu_store_writes_total", "Records put or deleted in the state store.", {},
            double(s.writes));
  f.Gauge("iommu_store_size_bytes", "Bytes the state store occupies on disk.", {},
          double(s.size_bytes));
  f.Gauge("iommu_store_recovery_duration_seconds",
          "Time the daemon took at start to read the store and restore the state.", {},
          recovery_.seconds);
  f.Gauge("iommu_store_recovered_records", "Records read from the store at start.", {},
          double(recovery_.records));
  f.Gauge("iommu_store_recovered_mappings", "Mappings restored at start.", {},
          double(recovery_.mappings));
  f.Gauge("iommu_store_recovery_repairs",
          "Operations a crash had cut short that the restore completed.", {},
          double(recovery_.completed));
  return f.Take();
}

}  // namespace iommu::server
