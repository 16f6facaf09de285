// Domains: creation with their typed cookies, attach/detach (context
// switches), destruction, and the IOVA ranges a device may use.

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::Smmu;
using DeviceState = BrokerImpl::DeviceState;

// --- domains --------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<Domain>> BrokerImpl::NewDomain(Smmu* smmu, DomainType type,
                                                              uint64_t granule_bytes,
                                                              const std::string& owner,
                                                              bool is_default, uint64_t session_id,
                                                              bool try_32bit_first) {
  const SmmuConfig& cfg = smmu->config;
  if (granule_bytes == 0) granule_bytes = cfg.granules & -cfg.granules;  // smallest
  if (!IsPowerOfTwo(granule_bytes) || (cfg.granules & granule_bytes) == 0) {
    return InvalidField("granule_bytes", granule_bytes,
                        absl::StrFormat("SMMU %s supports granules %#x", cfg.name, cfg.granules));
  }
  auto d = std::make_shared<Domain>();
  d->type = type;
  d->smmu = smmu;
  d->owner = owner;
  d->is_default = is_default;
  d->session_id = session_id;
  d->granule_bytes = granule_bytes;
  d->pgsize_bitmap = PgsizeBitmapForGranule(granule_bytes);
  d->aperture_start = 0;
  d->aperture_end = LowMask(cfg.ias_bits);
  d->strict = type != DomainType::kDmaFq;

  const bool translates = type != DomainType::kIdentity && type != DomainType::kBlocked;
  if (translates) {
    absl::MutexLock l(&smmu->mu);
    auto free_ctx = std::find(smmu->context_in_use.begin(), smmu->context_in_use.end(), false);
    if (free_ctx == smmu->context_in_use.end()) {
      return FieldError(
          absl::StatusCode::kResourceExhausted, "smmu", cfg.name,
          absl::StrFormat("all %d translation contexts are in use", cfg.num_contexts));
    }
    *free_ctx = true;
    d->context = uint32_t(free_ctx - smmu->context_in_use.begin());
  }
  d->tag = cfg.stage == Stage::kStage1 ? TlbTag{.asid = uint16_t(d->context), .vmid = 0}
                                       : TlbTag{.asid = 0, .vmid = uint16_t(d->context)};
  absl::MutexLock dl(&d->mu);
  d->mappings = internal::MappingTable(granule_bytes, type == DomainType::kUnmanaged);
  if (translates) {
    d->flush_ops = std::make_unique<internal::DomainFlushOps>(smmu, d->tag, d->strict);
    IoPgtableCfg pcfg{.format = cfg.stage == Stage::kStage1 ? IoPgtableFormat::kArm64LpaeS1
                                                            : IoPgtableFormat::kArm64LpaeS2,
                      .pgsize_bitmap = d->pgsize_bitmap,
                      .ias = cfg.ias_bits,
                      .oas = cfg.oas_bits,
                      .coherent_walk = true};
    auto pgtable = AllocIoPgtableOps(pcfg, d->flush_ops.get());
    if (!pgtable.ok()) {
      ReleaseContext(*d);
      return pgtable.status();
    }
    d->pgtable = *std::move(pgtable);
  }
  if (type == DomainType::kDma || type == DomainType::kDmaFq) {
    const uint64_t shift = Log2(granule_bytes);
    auto iovad = IovaAllocator::Create({.granule_bytes = granule_bytes,
                                        .start_pfn = 1,
                                        .end_pfn = d->aperture_end >> shift,
                                        .cache = {.max_pages = options_.iova_cache_max_pages},
                                        .try_32bit_first = try_32bit_first});
    if (!iovad.ok()) {
      ReleaseContext(*d);
      return iovad.status();
    }
    internal::IovaCookie cookie;
    cookie.iovad = std::make_unique<IovaAllocator>(*std::move(iovad));
    if (type == DomainType::kDmaFq) {
      Domain* raw = d.get();
      auto fq = FlushQueue::Create(
          {.capacity = options_.flush_queue_capacity, .timeout = options_.flush_queue_timeout},
          FlushQueueCallbacks{
              .invalidate = [raw]() { raw->flush_ops->TlbFlushAll(); },
              // Runs under raw->mu (every Enqueue/Flush/Poll is called with it held).
              .release =
                  [raw](const FlushQueueEntry& e) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                    auto* c = std::get_if<internal::IovaCookie>(&raw->cookie);
                    assert(c != nullptr);
                    if (e.payload[1] == 0) return;  // nothing to release (not allocator IOVA)
                    const absl::Status s = c->iovad->FreeIova(Iova(e.payload[0]), e.payload[1]);
                    assert(s.ok());
                    (void)s;
                  },
              .now = options_.now});
      if (!fq.ok()) {
        ReleaseContext(*d);
        return fq.status();
      }
      cookie.fq = std::make_unique<FlushQueue>(*std::move(fq));
    }
    d->cookie = std::move(cookie);
  }
  d->id = next_domain_id_++;
  domains_[d->id] = d;
  return d;
}

void BrokerImpl::ReleaseContext(Domain& d) {
  if (d.type == DomainType::kIdentity || d.type == DomainType::kBlocked) return;
  absl::MutexLock l(&d.smmu->mu);
  d.smmu->iotlb->InvalidateAsid(d.tag.asid, d.tag.vmid);
  d.smmu->context_in_use[d.context] = false;
}

DomainInfo BrokerImpl::Describe(const Domain& d) const {
  DomainInfo info{.domain_id = d.id,
                  .smmu = d.smmu->config.name,
                  .type = d.type,
                  .owner = d.owner,
                  .is_default = d.is_default,
                  .granted_devices = d.granted,
                  .granule_bytes = d.granule_bytes,
                  .pgsize_bitmap = d.pgsize_bitmap,
                  .ias_bits = d.smmu->config.ias_bits,
                  .oas_bits = d.smmu->config.oas_bits,
                  .stage = d.smmu->config.stage,
                  .aperture_start = d.aperture_start,
                  .aperture_end = d.aperture_end,
                  .asid = d.tag.asid,
                  .vmid = d.tag.vmid,
                  .strict = d.strict,
                  .devices = d.attached};
  absl::ReaderMutexLock l(&d.mu);
  info.mappings = d.mappings.size();
  info.mapped_bytes = d.mapped_bytes;
  if (const auto* w = std::get_if<internal::MsiWindowCookie>(&d.cookie)) {
    info.msi_window = std::make_pair(w->base, w->size_bytes);
  }
  return info;
}

absl::StatusOr<DomainInfo> Broker::CreateDomain(const Caller& caller,
                                                const CreateDomainRequest& request) {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  auto smmu = impl_->smmu_by_name_.find(request.smmu);
  if (smmu == impl_->smmu_by_name_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "smmu", request.smmu, "no such SMMU");
  }
  RETURN_IF_ERROR(impl_->CheckCreateDomain(caller, *smmu->second, request));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  DeviceState* owner = caller.admin ? nullptr : impl_->devices_.at(caller.device).get();
  if (owner != nullptr) {
    uint64_t cur = owner->domains.load();
    do {
      if (cur >= owner->quotas.max_domains) {
        return FieldError(
            absl::StatusCode::kResourceExhausted, "device", caller.device,
            absl::StrFormat("domain quota of %d domains reached", owner->quotas.max_domains));
      }
    } while (!owner->domains.compare_exchange_weak(cur, cur + 1));
  }
  absl::MutexLock l(&impl_->registry_mu_);
  auto d = impl_->NewDomain(smmu->second, request.type, request.granule_bytes,
                            caller.admin ? "" : caller.device, false, caller.session_id);
  if (!d.ok()) {
    if (owner != nullptr) owner->domains.fetch_sub(1);
    return d.status();
  }
  (*d)->granted = request.granted_devices;
  return impl_->Describe(**d);
}

absl::Status Broker::DestroyDomain(const Caller& caller, uint64_t domain_id) {
  return impl_->DestroyDomain(caller, domain_id);
}

absl::Status BrokerImpl::DestroyDomain(const Caller& caller, uint64_t domain_id) {
  RETURN_IF_ERROR(CheckCaller(caller));
  std::shared_ptr<Domain> d;
  {
    absl::MutexLock l(&registry_mu_);
    ASSIGN_OR_RETURN(d, FindDomain(domain_id));
    if (!MaySee(caller, *d)) {
      return FieldError(absl::StatusCode::kNotFound, "domain_id", domain_id, "no such domain");
    }
    if (!caller.admin && d->owner != caller.device) {
      return FieldError(absl::StatusCode::kPermissionDenied, "domain_id", domain_id,
                        "only the domain's owner or an admin may destroy it");
    }
    if (d->is_default) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
                        "a device's default domain cannot be destroyed");
    }
    if (!d->attached.empty()) {
      return FieldError(
          absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
          absl::StrFormat("devices still attached: %s", absl::StrJoin(d->attached, ", ")));
    }
    domains_.erase(domain_id);
  }
  // Unreachable now: tear it down outside the registry lock.
  {
    absl::MutexLock dl(&d->mu);
    for (uint64_t start : d->mappings.StartsInOrder()) RemoveMappingLocked(*d, start);
    if (auto* c = std::get_if<internal::IovaCookie>(&d->cookie); c && c->fq) c->fq->Flush();
  }
  ReleaseContext(*d);
  if (!d->owner.empty()) devices_.at(d->owner)->domains.fetch_sub(1);
  return absl::OkStatus();
}

absl::StatusOr<DomainInfo> Broker::GetDomain(const Caller& caller, uint64_t domain_id) const {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  absl::ReaderMutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(auto d, impl_->FindDomain(domain_id));
  if (!impl_->MaySee(caller, *d)) {
    return FieldError(absl::StatusCode::kNotFound, "domain_id", domain_id, "no such domain");
  }
  return impl_->Describe(*d);
}

absl::StatusOr<std::vector<DomainInfo>> Broker::ListDomains(const Caller& caller) const {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  absl::ReaderMutexLock l(&impl_->registry_mu_);
  std::vector<DomainInfo> out;
  for (const auto& [id, d] : impl_->domains_) {
    if (impl_->MaySee(caller, *d)) out.push_back(impl_->Describe(*d));
  }
  return out;
}

absl::Status Broker::AttachDevice(const Caller& caller, const std::string& device,
                                  uint64_t domain_id) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  absl::MutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(auto d, impl_->FindDomain(domain_id));
  RETURN_IF_ERROR(impl_->CheckAttach(caller, *dev, *d));
  if (dev->current == d) return absl::OkStatus();  // idempotent
  auto& old = dev->current->attached;
  old.erase(std::remove(old.begin(), old.end(), device), old.end());
  d->attached.push_back(device);
  dev->current = d;
  return absl::OkStatus();
}

absl::Status Broker::DetachDevice(const Caller& caller, const std::string& device) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  absl::MutexLock l(&impl_->registry_mu_);
  if (dev->current == dev->default_domain) return absl::OkStatus();
  auto& old = dev->current->attached;
  old.erase(std::remove(old.begin(), old.end(), device), old.end());
  dev->current = dev->default_domain;
  dev->current->attached.push_back(device);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PgtableMapping>> Broker::WalkDomain(const Caller& caller,
                                                               uint64_t domain_id, Iova start,
                                                               size_t max_leaves) const {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  std::shared_ptr<Domain> d;
  {
    absl::ReaderMutexLock l(&impl_->registry_mu_);
    ASSIGN_OR_RETURN(d, impl_->FindDomain(domain_id));
    if (!impl_->MaySee(caller, *d)) {
      return FieldError(absl::StatusCode::kNotFound, "domain_id", domain_id, "no such domain");
    }
  }
  std::vector<PgtableMapping> out;
  absl::ReaderMutexLock l(&d->mu);
  if (d->pgtable) {
    d->pgtable->ForEachMapping([&](const PgtableMapping& m) {
      if (out.size() < max_leaves && m.iova.value() + (m.size_bytes - 1) >= start.value())
        out.push_back(m);
    });
  }
  return out;
}

absl::StatusOr<IovaRangesResult> Broker::GetIovaRanges(const Caller& caller,
                                                       const std::string& device) const {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  IovaRangesResult out{.domain_id = d->id};
  const uint64_t limit = impl_->DeviceLimit(*d, *dev);
  std::vector<ReservedRegion> reserved;
  {
    absl::ReaderMutexLock l(&d->mu);
    std::visit(internal::Overloaded{
                   [&](const internal::NoCookie&) {},
                   [&](const internal::IovaCookie& c) {
                     // IOVA page 0 is never handed out.
                     reserved.push_back({0, d->granule_bytes - 1, ReservedKind::kReserved});
                     c.iovad->ForEachReserved([&](uint64_t lo, uint64_t hi) {
                       reserved.push_back({lo << Log2(d->granule_bytes),
                                           ((hi + 1) << Log2(d->granule_bytes)) - 1,
                                           ReservedKind::kReserved});
                     });
                   },
                   [&](const internal::MsiWindowCookie& w) {
                     reserved.push_back({w.base, w.base + w.size_bytes - 1, ReservedKind::kMsi});
                   },
               },
               d->cookie);
  }
  std::sort(reserved.begin(), reserved.end(),
            [](const ReservedRegion& a, const ReservedRegion& b) { return a.start < b.start; });
  if (d->type == DomainType::kBlocked) {
    out.reserved = std::move(reserved);
    return out;  // nothing is usable
  }
  uint64_t cursor = d->aperture_start;
  bool done = false;
  for (const ReservedRegion& r : reserved) {
    if (r.start > limit) break;
    if (r.start > cursor) out.usable.push_back({cursor, r.start - 1});
    if (r.end >= limit) {
      done = true;
      break;
    }
    cursor = std::max(cursor, r.end + 1);
  }
  if (!done && cursor <= limit) out.usable.push_back({cursor, limit});
  out.reserved = std::move(reserved);
  return out;
}

}  // namespace iommu::core
