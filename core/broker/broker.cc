// SPDX-License-Identifier: Apache-2.0
#include "core/broker/broker.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::Smmu;

const char* DomainTypeName(DomainType type) {
  switch (type) {
    case DomainType::kDma:
      return "DMA";
    case DomainType::kDmaFq:
      return "DMA_FQ";
    case DomainType::kUnmanaged:
      return "UNMANAGED";
    case DomainType::kIdentity:
      return "IDENTITY";
    case DomainType::kBlocked:
      return "BLOCKED";
  }
  return "?";
}

// --- construction -------------------------------------------------------------

absl::Status BrokerImpl::Init(DurableState* restored, RestoreReport* report) {
  RETURN_IF_ERROR(ValidateTopology(topology_));
  ASSIGN_OR_RETURN(memory_, PhysMemory::Create(topology_.memory));
  buffers_ =
      std::make_unique<internal::BufferTable>(memory_.get(), journal_, options_.max_buffer_runs);
  // Fault sequence numbers continue past every one a journal may have seen.
  uint64_t first_fault_seq = 1;
  if (restored != nullptr) {
    for (const auto& [counter, value] : restored->counters) {
      if (counter == StateCounter::kFaultSeq) first_fault_seq = std::max<uint64_t>(1, value);
    }
  }
  ASSIGN_OR_RETURN(faults_, FaultRing::Create({.capacity = options_.fault_ring_capacity,
                                               .clock = options_.now,
                                               .first_seq = first_fault_seq}));
  fault_seqs_reserved_ = first_fault_seq;
  for (const SmmuConfig& cfg : topology_.smmus) {
    auto smmu = std::make_unique<Smmu>();
    smmu->config = cfg;
    for (uint64_t g : {kGranule4K, kGranule16K, kGranule64K}) {
      if ((cfg.granules & g) == 0) continue;
      for (uint64_t sizes = PgsizeBitmapForGranule(g); sizes != 0; sizes &= sizes - 1) {
        const uint8_t log2 = uint8_t(Log2(sizes & -sizes));
        if (std::find(smmu->leaf_sizes_log2.begin(), smmu->leaf_sizes_log2.end(), log2) ==
            smmu->leaf_sizes_log2.end()) {
          smmu->leaf_sizes_log2.push_back(log2);
        }
      }
    }
    std::sort(smmu->leaf_sizes_log2.begin(), smmu->leaf_sizes_log2.end());
    ASSIGN_OR_RETURN(Iotlb iotlb, Iotlb::Create({.sets = cfg.iotlb_sets,
                                                 .ways = cfg.iotlb_ways,
                                                 .leaf_sizes_log2 = smmu->leaf_sizes_log2}));
    absl::MutexLock l(&smmu->mu);
    smmu->iotlb = std::make_unique<Iotlb>(std::move(iotlb));
    smmu->context_in_use.assign(cfg.num_contexts, false);
    smmu_by_name_[cfg.name] = smmu.get();
    smmus_.push_back(std::move(smmu));
  }
  // Fair shares: the pools' RAM split evenly between the devices; an SMMU's
  // contexts left after its devices' default domains split evenly between
  // them (at least one each).
  uint64_t pool_bytes = 0;
  for (const PoolStats& p : memory_->Stats()) pool_bytes += p.total_pages * p.page_size_bytes;
  const uint64_t num_devices = std::max<size_t>(1, topology_.devices.size());
  fair_buffer_bytes_ = std::max<uint64_t>(AlignDown(pool_bytes / num_devices, 4096), 4096);
  for (const auto& smmu : smmus_) {
    const uint64_t n = std::max<uint64_t>(
        1, std::count_if(topology_.devices.begin(), topology_.devices.end(),
                         [&](const DeviceConfig& d) { return d.smmu == smmu->config.name; }));
    const uint64_t contexts = smmu->config.num_contexts;
    fair_domains_[smmu.get()] = std::max<uint64_t>(1, contexts > n ? (contexts - n) / n : 0);
  }
  for (const DeviceConfig& cfg : topology_.devices) {
    auto dev = std::make_unique<DeviceState>();
    dev->config = cfg;
    dev->smmu = smmu_by_name_.at(cfg.smmu);
    dev->quotas = EffectiveQuotas(cfg);
    devices_[cfg.name] = std::move(dev);
  }
  if (restored != nullptr && !restored->empty()) {
    RETURN_IF_ERROR(RestoreState(*restored, report));
  } else {
    absl::MutexLock l(&registry_mu_);
    for (const DeviceConfig& cfg : topology_.devices) {
      DeviceState& dev = *devices_.at(cfg.name);
      ASSIGN_OR_RETURN(dev.default_domain, NewDefaultDomain(dev));
      dev.SetCurrent(dev.default_domain);
    }
  }
  if (journal_ != nullptr) {
    if (restored == nullptr || restored->empty()) {
      StateChanges initial = InitialState();
      Commit(initial);
    }
    ReserveFaultSeqs(faults_->newest_seq() + 1);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Domain>> BrokerImpl::NewDefaultDomain(const DeviceState& dev) {
  // Every device starts in its own default DMA domain. Untrusted devices
  // are always strict; the default domains of trusted ones are too (as
  // Linux's iommu.strict=1 default on Arm): DMA_FQ is chosen explicitly.
  return NewDomain(dev.smmu, {.type = DomainType::kDma,
                              .is_default = true,
                              .default_of = dev.config.name,
                              .try_32bit_first = dev.config.pci});
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Create(const Topology& topology,
                                                       const BrokerOptions& options) {
  auto impl = std::make_unique<BrokerImpl>(topology, options);
  RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Restore(const Topology& topology,
                                                        const BrokerOptions& options,
                                                        DurableState state, RestoreReport* report) {
  auto impl = std::make_unique<BrokerImpl>(topology, options);
  RETURN_IF_ERROR(impl->Init(&state, report));
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Broker::Broker(std::unique_ptr<BrokerImpl> impl) : impl_(std::move(impl)) {}
Broker::~Broker() = default;

const Topology& Broker::topology() const { return impl_->topology_; }
RequestLog& Broker::request_log() { return impl_->requests_; }
const RequestLog& Broker::request_log() const { return impl_->requests_; }

// --- lookups --------------------------------------------------------------------

std::shared_ptr<Domain> BrokerImpl::CurrentDomain(const DeviceState& dev) const {
  return dev.Current();
}

absl::StatusOr<std::shared_ptr<Domain>> BrokerImpl::FindDomain(uint64_t domain_id) const {
  auto it = domains_.find(domain_id);
  if (it == domains_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "domain_id", domain_id, "no such domain");
  }
  return it->second;
}

}  // namespace iommu::core
