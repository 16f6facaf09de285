// SPDX-License-Identifier: Apache-2.0
// Device accesses (Translate through the IOTLB, faults), MSI cookies, and
// the read-only views: topology, statistics, fault records.

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::MappingKind;
using internal::MappingRecord;

// --- Translate -----------------------------------------------------------------------

absl::StatusOr<TranslateResult> Broker::Translate(const Caller& caller,
                                                  const TranslateRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
  if (request.length_bytes == 0) return InvalidField("length_bytes", 0, "must be non-zero");
  const auto last = LastOfRange(request.iova.value(), request.length_bytes);
  if (!last) {
    return InvalidField("length_bytes", request.length_bytes, "iova + length passes 2^64");
  }
  // Who is accessing: a device by name, or (admin) a raw stream id.
  BrokerImpl::DeviceState* dev = nullptr;
  if (request.stream_id.has_value()) {
    if (!caller.admin) {
      return FieldError(absl::StatusCode::kPermissionDenied, "stream_id", *request.stream_id,
                        "only an admin may issue accesses by raw stream id");
    }
    auto smmu = impl_->smmu_by_name_.find(request.smmu);
    if (smmu == impl_->smmu_by_name_.end()) {
      return FieldError(absl::StatusCode::kNotFound, "smmu", request.smmu, "no such SMMU");
    }
    for (auto& [name, d] : impl_->devices_) {
      if (d->smmu == smmu->second && d->config.stream_id == *request.stream_id) dev = d.get();
    }
    if (dev == nullptr) {
      // C_BAD_STREAMID: the SMMU has no stream table entry for it.
      TranslateResult out{
          .faulted = true, .fault_type = FaultType::kUnknownStream, .fault_iova = request.iova};
      impl_->ReserveFaultSeqs(impl_->faults_->newest_seq() + 1);
      out.fault_seq = impl_->faults_->Push({.type = FaultType::kUnknownStream,
                                            .smmu = request.smmu,
                                            .stream_id = *request.stream_id,
                                            .iova = request.iova,
                                            .access = request.access});
      absl::MutexLock l(&smmu->second->mu);
      ++smmu->second->translations_fault;
      return out;
    }
  } else {
    ASSIGN_OR_RETURN(dev, impl_->ActAs(caller, request.device));
  }
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  internal::Smmu& smmu = d->smmu();
  TranslateResult out;
  auto fault = [&](FaultType type, uint64_t at) {
    out.faulted = true;
    out.fault_type = type;
    out.fault_iova = Iova(at);
    impl_->ReserveFaultSeqs(impl_->faults_->newest_seq() + 1);
    out.fault_seq = impl_->faults_->Push({.type = type,
                                          .smmu = smmu.config.name,
                                          .stream_id = dev->config.stream_id,
                                          .device = dev->config.name,
                                          .domain_id = d->id(),
                                          .iova = Iova(at),
                                          .access = request.access});
    dev->faults_by_type[size_t(type)].fetch_add(1, std::memory_order_relaxed);
    absl::MutexLock l(&smmu.mu);
    ++smmu.translations_fault;
  };
  switch (d->type()) {
    case DomainType::kBlocked:
      fault(FaultType::kAccessBlocked, request.iova.value());
      return out;
    case DomainType::kIdentity:
      // Bypass: the output address is the input address, within the oas.
      if (*last > LowMask(smmu.config.oas_bits)) {
        fault(FaultType::kAddressSize, request.iova.value());
        return out;
      }
      out.pages.push_back(
          {request.iova, PhysAddr(request.iova.value()), request.length_bytes, false, false});
      {
        absl::MutexLock l(&smmu.mu);
        ++smmu.translations_ok;
      }
      return out;
    case DomainType::kDma:
    case DomainType::kDmaFq:
    case DomainType::kUnmanaged:
      break;
  }
  uint64_t at = request.iova.value();
  while (true) {
    if (at > d->aperture_end().value()) {  // beyond the input address size
      fault(FaultType::kAddressSize, at);
      return out;
    }
    std::optional<IotlbHit> hit;
    {
      absl::MutexLock l(&smmu.mu);
      hit = smmu.iotlb->Lookup(d->tag(), Iova(at));
    }
    uint64_t leaf_end;  // last byte covered by the translation used
    PhysAddr phys;
    Grant grant;
    if (hit.has_value()) {
      phys = hit->phys;
      grant = hit->grant;
      leaf_end = at | LowMask(hit->leaf_size_log2);
    } else {
      // Walk and fill under the domain lock, so an unmap cannot slip between
      // the walk and the fill and leave a stale entry behind.
      Domain::Reader r(*d);
      auto walk = r.pgtable()->Walk(Iova(at));
      if (!walk.ok()) {
        fault(walk.status().code() == absl::StatusCode::kOutOfRange ? FaultType::kAddressSize
                                                                    : FaultType::kTranslation,
              at);
        return out;
      }
      phys = walk->phys;
      grant = walk->grant;
      leaf_end = walk->leaf_iova.value() + walk->leaf_size_bytes - 1;
      absl::MutexLock l(&smmu.mu);
      const absl::Status s = smmu.iotlb->Insert(
          d->tag(), walk->leaf_iova, Log2(walk->leaf_size_bytes), walk->leaf_phys, walk->grant);
      assert(s.ok());
      (void)s;
    }
    if (!grant.Allows(request.access)) {
      fault(FaultType::kPermission, at);
      return out;
    }
    const uint64_t piece_end = std::min(leaf_end, *last);
    out.pages.push_back(
        {Iova(at), phys, piece_end - at + 1, hit.has_value(), hit.has_value() && hit->stale});
    {
      absl::MutexLock l(&smmu.mu);
      ++smmu.translations_ok;
    }
    if (piece_end == *last) break;
    at = piece_end + 1;
  }
  return out;
}

// --- MSI -------------------------------------------------------------------------------

absl::StatusOr<MsiCookieResult> Broker::MsiCookie(const Caller& caller, const std::string& device,
                                                  const MsiCookieRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d;
  if (request.domain_id.has_value()) {
    // The owner of an UNMANAGED domain sets up its MSI window
    // (iommu_get_msi_cookie).
    {
      absl::ReaderMutexLock l(&impl_->registry_mu_);
      ASSIGN_OR_RETURN(d, impl_->FindDomain(*request.domain_id));
    }
    {
      absl::ReaderMutexLock l(&impl_->registry_mu_);
      if (!impl_->MaySee(caller, *d)) {
        return FieldError(absl::StatusCode::kNotFound, "domain_id", d->id(), "no such domain");
      }
    }
    if (!caller.admin && d->owner() != device) {
      return FieldError(absl::StatusCode::kPermissionDenied, "domain_id", d->id(),
                        "only the domain's owner may set its MSI window");
    }
    if (d->type() != DomainType::kUnmanaged) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d->id(),
                        absl::StrFormat("an MSI window belongs to UNMANAGED domains; this one "
                                        "is %s and uses its IOVA cookie",
                                        DomainTypeName(d->type())));
    }
    const uint64_t g = d->granule_bytes();
    const IovaWindow& window = request.window;
    if (window.size_bytes == 0 || !IsAligned(window.size_bytes, g)) {
      return InvalidField(
          "window_size_bytes", window.size_bytes,
          absl::StrFormat("must be a non-zero multiple of the %#x-byte granule", g));
    }
    if (!IsAligned(window.base.value(), g)) {
      return InvalidField("window_base", window.base.value(),
                          absl::StrFormat("must be aligned to the %#x-byte granule", g));
    }
    const auto wlast = LastOfRange(window.base.value(), window.size_bytes);
    if (!wlast || window.base < d->aperture_start() || *wlast > d->aperture_end().value()) {
      return OutOfRangeField(
          "window_base", window.base.value(),
          absl::StrFormat("window must lie inside the aperture [%#x, %#x]",
                          d->aperture_start().value(), d->aperture_end().value()));
    }
    const bool is_current = impl_->CurrentDomain(*dev) == d;  // before the domain (lock order)
    BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
    Domain::Transaction txn(*d, refs);
    const bool had_window = txn.MsiWindow().has_value();
    RETURN_IF_ERROR(txn.SetMsiWindow(window));
    // Without a device doorbell the call only set up the window.
    if (dev->config.msi_doorbell.empty() || !is_current) {
      return durable.Reply(
          MsiCookieResult{.msi_addr = Iova(0), .domain_id = d->id(), .newly_mapped = false});
    }
    // The doorbell is mapped through the window in the same transaction: a
    // call that fails to map it leaves no window either.
    auto p = txn.MapMsiPage(impl_->MsiDoorbellPage(*dev, *d), impl_->MsiDoorbell(*dev),
                            impl_->DeviceLimit(*d, *dev));
    if (!p.ok()) {
      if (!had_window) txn.UnsetMsiWindow();
      return p.status();
    }
    return durable.Reply(MsiCookieResult{
        .msi_addr = p->iova + (impl_->MsiDoorbell(*dev) - impl_->MsiDoorbellPage(*dev, *d)),
        .domain_id = d->id(),
        .newly_mapped = p->newly_mapped});
  } else if (request.window.size_bytes != 0 || request.window.base != Iova(0)) {
    return InvalidField("window_size_bytes", request.window.size_bytes,
                        "an MSI window needs domain_id naming the UNMANAGED domain");
  }
  if (dev->config.msi_doorbell.empty()) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "device", device,
                      "has no MSI doorbell in the topology");
  }
  // iommu_dma_prepare_msi: map the doorbell page into the device's CURRENT
  // domain (not its default one: the 2019 bug), once per (domain, page).
  d = impl_->CurrentDomain(*dev);
  const uint64_t doorbell = impl_->MsiDoorbell(*dev);
  const uint64_t page = impl_->MsiDoorbellPage(*dev, *d);
  if (d->type() == DomainType::kIdentity) {
    // Bypass: the device's address for the doorbell is its physical address.
    return durable.Reply(
        MsiCookieResult{.msi_addr = Iova(doorbell), .domain_id = d->id(), .newly_mapped = false});
  }
  if (d->type() == DomainType::kBlocked) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "device", device,
                      absl::StrFormat("its current domain %d is BLOCKED", d->id()));
  }
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  ASSIGN_OR_RETURN(Domain::Transaction::MsiPage p,
                   txn.MapMsiPage(page, doorbell, impl_->DeviceLimit(*d, *dev)));
  return durable.Reply(MsiCookieResult{.msi_addr = p.iova + (doorbell - page),
                                       .domain_id = d->id(),
                                       .newly_mapped = p.newly_mapped});
}

uint64_t BrokerImpl::MsiDoorbell(const DeviceState& dev) const {
  const MemoryRegionConfig* region = nullptr;
  for (const MemoryRegionConfig& r : topology_.memory.regions) {
    if (r.name == dev.config.msi_doorbell) region = &r;
  }
  assert(region != nullptr);  // ValidateTopology checked it
  return region->base.value() + dev.config.msi_doorbell_offset;
}

uint64_t BrokerImpl::MsiDoorbellPage(const DeviceState& dev, const Domain& d) const {
  return AlignDown(MsiDoorbell(dev), d.granule_bytes());
}

// --- Views ---------------------------------------------------------------------------------

std::vector<SmmuConfig> Broker::ListIommus() const { return impl_->topology_.smmus; }

absl::StatusOr<std::vector<DeviceInfo>> Broker::ListDevices(const Caller& caller) const {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  std::vector<DeviceInfo> out;
  absl::ReaderMutexLock l(&impl_->registry_mu_);
  for (const DeviceConfig& cfg : impl_->topology_.devices) {
    if (!caller.admin && cfg.name != caller.device) continue;
    const auto& dev = *impl_->devices_.at(cfg.name);
    out.push_back({.config = cfg,
                   .current_domain_id = dev.current->id(),
                   .default_domain_id = dev.default_domain->id(),
                   .mapped_bytes = dev.mapped_bytes.load(),
                   .mappings = dev.mappings.load(),
                   .buffers = dev.buffers.load(),
                   .quotas = dev.quotas});
  }
  return out;
}

absl::StatusOr<BrokerStats> Broker::GetStats(const Caller& caller) const {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  BrokerStats out;
  std::vector<std::shared_ptr<Domain>> domains;
  {
    absl::ReaderMutexLock l(&impl_->registry_mu_);
    for (const auto& [id, d] : impl_->domains_) {
      if (impl_->MaySee(caller, *d)) domains.push_back(d);
    }
  }
  if (!caller.admin) {
    // A device's view: its domains and its own fault counts, nothing shared.
    const auto& dev = *impl_->devices_.at(caller.device);
    out.faults.capacity = impl_->faults_->Stats().capacity;
    for (size_t t = 0; t < kNumFaultTypes; ++t) {
      out.faults.pushed_by_type[t] = dev.faults_by_type[t].load(std::memory_order_relaxed);
      out.faults.pushed_total += out.faults.pushed_by_type[t];
    }
  }
  for (const auto& s : impl_->smmus_) {
    if (!caller.admin) break;
    absl::MutexLock l(&s->mu);
    out.smmus.push_back({.name = s->config.name,
                         .iotlb = s->iotlb->stats(),
                         .iotlb_capacity = s->iotlb->capacity(),
                         .contexts_total = s->config.num_contexts,
                         .contexts_used = uint32_t(
                             std::count(s->context_in_use.begin(), s->context_in_use.end(), true)),
                         .translations_ok = s->translations_ok,
                         .translations_fault = s->translations_fault});
  }
  for (const auto& d : domains) {
    DomainStats ds{.domain_id = d->id(),
                   .smmu = d->smmu().config.name,
                   .type = d->type(),
                   .strict = d->strict()};
    Domain::Reader r(*d);
    if (r.pgtable() != nullptr) ds.pgtable = r.pgtable()->Stats();
    ds.mappings = r.mappings().size();
    ds.mapped_bytes = r.mapped_bytes();
    if (const auto* c = std::get_if<internal::IovaCookie>(&r.cookie())) {
      ds.iova = c->iovad->GetStats();
      if (c->fq) ds.flush_queue = c->fq->stats();
    }
    out.domains.push_back(std::move(ds));
  }
  if (caller.admin) {
    out.faults = impl_->faults_->Stats();
    out.pools = impl_->memory_->Stats();
    // The device set is immutable and the counts atomic: no lock.
    for (const DeviceConfig& cfg : impl_->topology_.devices) {
      const auto& dev = *impl_->devices_.at(cfg.name);
      DeviceFaultStats& d = out.device_faults.emplace_back();
      d.device = cfg.name;
      for (size_t t = 0; t < kNumFaultTypes; ++t) {
        d.by_type[t] = dev.faults_by_type[t].load(std::memory_order_relaxed);
      }
    }
  }
  return out;
}

absl::StatusOr<FaultReadResult> Broker::ReadFaults(const Caller& caller, uint64_t after_seq,
                                                   size_t max_records) const {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  ASSIGN_OR_RETURN(FaultReadResult r, impl_->faults_->ReadSince(after_seq, max_records));
  if (!caller.admin) {
    // A device sees its own faults only; the lost count stays whole.
    r.records.erase(std::remove_if(r.records.begin(), r.records.end(),
                                   [&](const FaultRecord& f) { return f.device != caller.device; }),
                    r.records.end());
  }
  return r;
}

absl::Status Broker::WaitForFaults(uint64_t after_seq, absl::Time deadline) const {
  return impl_->faults_->WaitForNewerThan(after_seq, deadline);
}

void Broker::Shutdown() { impl_->faults_->Shutdown(); }

}  // namespace iommu::core
