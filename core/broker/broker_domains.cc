// SPDX-License-Identifier: Apache-2.0
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

absl::StatusOr<std::shared_ptr<Domain>> BrokerImpl::NewDomain(Smmu* smmu,
                                                              internal::DomainParams params) {
  params.id = next_domain_id_;
  params.iova_cache_max_pages = options_.iova_cache_max_pages;
  params.flush_queue_capacity = options_.flush_queue_capacity;
  params.flush_queue_timeout = options_.flush_queue_timeout;
  params.now = options_.now;
  params.journal = journal_;
  params.sessions = &session_index_;
  params.flush_timer = &flush_timer_;
  ASSIGN_OR_RETURN(std::shared_ptr<Domain> d, Domain::Create(smmu, std::move(params)));
  ++next_domain_id_;
  domains_[d->id()] = d;
  if (d->session_id() != 0) session_domains_[d->session_id()].push_back(d->id());
  return d;
}

std::vector<std::string> BrokerImpl::AttachedTo(const Domain& d) const {
  std::vector<std::string> names;
  for (const DeviceConfig& cfg : topology_.devices) {
    if (devices_.at(cfg.name)->current.get() == &d) names.push_back(cfg.name);
  }
  return names;
}

DomainInfo BrokerImpl::Describe(const Domain& d) const {
  const SmmuConfig& smmu = d.smmu().config;
  DomainInfo info{.domain_id = d.id(),
                  .smmu = smmu.name,
                  .type = d.type(),
                  .owner = d.owner(),
                  .is_default = d.is_default(),
                  .granted_devices = d.granted(),
                  .granule_bytes = d.granule_bytes(),
                  .pgsize_bitmap = d.pgsize_bitmap(),
                  .ias_bits = smmu.ias_bits,
                  .oas_bits = smmu.oas_bits,
                  .stage = smmu.stage,
                  .aperture_start = d.aperture_start(),
                  .aperture_end = d.aperture_end(),
                  .asid = d.tag().asid,
                  .vmid = d.tag().vmid,
                  .strict = d.strict(),
                  .devices = AttachedTo(d)};
  Domain::Reader r(d);
  info.mappings = r.mappings().size();
  info.mapped_bytes = r.mapped_bytes();
  if (const auto* w = std::get_if<internal::MsiWindowCookie>(&r.cookie())) {
    info.msi_window = w->window;
  }
  return info;
}

absl::StatusOr<DomainInfo> Broker::CreateDomain(const Caller& caller,
                                                const CreateDomainRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
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
  auto d = impl_->NewDomain(smmu->second, {.type = request.type,
                                           .granule_bytes = request.granule_bytes,
                                           .owner = caller.admin ? "" : caller.device,
                                           .granted = request.granted_devices,
                                           .session_id = caller.session_id});
  if (!d.ok()) {
    if (owner != nullptr) owner->domains.fetch_sub(1);
    return d.status();
  }
  DomainInfo info = durable.Reply(impl_->Describe(**d));
  if (impl_->journal_ != nullptr) {
    StateChanges c;
    c.domain_puts.push_back((*d)->State());
    c.counters.push_back({StateCounter::kDomainId, impl_->next_domain_id_});
    impl_->Commit(c);
  }
  return info;
}

absl::Status Broker::DestroyDomain(const Caller& caller, uint64_t domain_id) {
  BrokerImpl::DurableReply durable(*impl_);
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
    if (!caller.admin && d->owner() != caller.device) {
      return FieldError(absl::StatusCode::kPermissionDenied, "domain_id", domain_id,
                        "only the domain's owner or an admin may destroy it");
    }
    if (d->is_default()) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
                        "a device's default domain cannot be destroyed");
    }
    if (const std::vector<std::string> attached = AttachedTo(*d); !attached.empty()) {
      return FieldError(
          absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
          absl::StrFormat("devices still attached: %s", absl::StrJoin(attached, ", ")));
    }
    domains_.erase(domain_id);
    if (const uint64_t session_id = d->session_id(); session_id != 0) {
      auto it = session_domains_.find(session_id);
      assert(it != session_domains_.end());
      std::erase(it->second, domain_id);
      if (it->second.empty()) session_domains_.erase(it);
    }
  }
  // Unreachable now: tear it down outside the registry lock.
  {
    Buffers::Refs refs(*buffers_);
    Domain::Transaction txn(*d, refs);
    for (uint64_t start : txn.mappings().StartsInOrder()) txn.Remove(start);
    txn.FlushQueue();
    // Its mappings and its record leave the journal in one commit.
    txn.changes().domain_deletes.push_back(domain_id);
    internal::CaptureOk();
  }
  d->ReleaseContext();
  if (!d->owner().empty()) devices_.at(d->owner())->domains.fetch_sub(1);
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
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  absl::MutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(auto d, impl_->FindDomain(domain_id));
  RETURN_IF_ERROR(impl_->CheckAttach(caller, *dev, *d));
  dev->SetCurrent(d);  // idempotent
  internal::CaptureOk();
  impl_->JournalAttachment(*dev);
  return absl::OkStatus();
}

absl::Status Broker::DetachDevice(const Caller& caller, const std::string& device) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  absl::MutexLock l(&impl_->registry_mu_);
  dev->SetCurrent(dev->default_domain);
  internal::CaptureOk();
  impl_->JournalAttachment(*dev);
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
  Domain::Reader r(*d);
  if (r.pgtable() != nullptr) {
    r.pgtable()->ForEachMapping([&](const PgtableMapping& m) {
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
  IovaRangesResult out{.domain_id = d->id()};
  const Iova limit = impl_->DeviceLimit(*d, *dev);
  std::vector<ReservedRegion> reserved;
  {
    Domain::Reader r(*d);
    const uint64_t g = d->granule_bytes();
    std::visit(internal::Overloaded{
                   [&](const internal::NoCookie&) {},
                   [&](const internal::IovaCookie& c) {
                     // IOVA page 0 is never handed out.
                     reserved.push_back({Iova(0), Iova(g - 1), ReservedKind::kReserved});
                     c.iovad->ForEachReserved([&](uint64_t lo, uint64_t hi) {
                       reserved.push_back({Iova(lo << Log2(g)), Iova(((hi + 1) << Log2(g)) - 1),
                                           ReservedKind::kReserved});
                     });
                   },
                   [&](const internal::MsiWindowCookie& w) {
                     reserved.push_back({w.window.base, w.window.base + (w.window.size_bytes - 1),
                                         ReservedKind::kMsi});
                   },
               },
               r.cookie());
  }
  std::sort(reserved.begin(), reserved.end(),
            [](const ReservedRegion& a, const ReservedRegion& b) { return a.start < b.start; });
  if (d->type() == DomainType::kBlocked) {
    out.reserved = std::move(reserved);
    return out;  // nothing is usable
  }
  Iova cursor = d->aperture_start();
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
