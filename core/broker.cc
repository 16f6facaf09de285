#include "core/broker.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/bits.h"
#include "core/broker_impl.h"
#include "core/errors.h"
#include "core/status_macros.h"

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

namespace internal {

MappingRecord* Domain::FindMappingLocked(uint64_t addr) {
  auto it = mappings.upper_bound(addr);
  if (it == mappings.begin()) return nullptr;
  --it;
  MappingRecord& m = it->second;
  if (addr - m.iova.value() >= m.iova_size_bytes) return nullptr;
  return &m;
}

void DomainFlushOps::TlbFlushAll() {
  absl::MutexLock l(&smmu_->mu);
  smmu_->iotlb->InvalidateAsid(tag_.asid, tag_.vmid);
}

void DomainFlushOps::TlbFlushWalk(Iova iova, uint64_t size_bytes, uint64_t /*granule_bytes*/) {
  absl::MutexLock l(&smmu_->mu);
  const auto r = smmu_->iotlb->InvalidateVa(tag_, iova, size_bytes, VaLevels::kAllLevels);
  assert(r.ok());
  (void)r;
}

void DomainFlushOps::TlbAddPage(IotlbGather* gather, Iova iova, uint64_t granule_bytes) {
  gather->AddRange(iova, granule_bytes);
}

void DomainFlushOps::TlbAddPages(IotlbGather* gather, Iova iova, uint64_t granule_bytes,
                                 uint64_t count) {
  gather->AddRange(iova, granule_bytes * count);
}

}  // namespace internal

// --- construction -------------------------------------------------------------

absl::Status BrokerImpl::Init() {
  RETURN_IF_ERROR(ValidateTopology(topology_));
  ASSIGN_OR_RETURN(memory_, PhysMemory::Create(topology_.memory));
  ASSIGN_OR_RETURN(faults_, FaultRing::Create({.capacity = options_.fault_ring_capacity,
                                                .clock = options_.now}));
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
  absl::MutexLock l(&registry_mu_);
  for (const DeviceConfig& cfg : topology_.devices) {
    auto dev = std::make_unique<DeviceState>();
    dev->config = cfg;
    dev->smmu = smmu_by_name_.at(cfg.smmu);
    dev->quotas = options_.default_quotas;
    // Every device starts in its own default DMA domain. Untrusted devices
    // are always strict; the default domains of trusted ones are too (as
    // Linux's iommu.strict=1 default on Arm): DMA_FQ is chosen explicitly.
    ASSIGN_OR_RETURN(dev->default_domain,
                     NewDomain(dev->smmu, DomainType::kDma, 0, "", /*is_default=*/true, 0,
                               /*try_32bit_first=*/cfg.pci));
    dev->current = dev->default_domain;
    dev->current->attached.push_back(cfg.name);
    devices_[cfg.name] = std::move(dev);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Create(const Topology& topology,
                                                       const BrokerOptions& options) {
  auto impl = std::make_unique<BrokerImpl>(topology, options);
  RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Broker::Broker(std::unique_ptr<BrokerImpl> impl) : impl_(std::move(impl)) {}
Broker::~Broker() = default;

const Topology& Broker::topology() const { return impl_->topology_; }

// --- lookups --------------------------------------------------------------------

absl::StatusOr<BrokerImpl::DeviceState*> BrokerImpl::ActAs(const Caller& caller,
                                                           const std::string& device) const {
  auto it = devices_.find(device);
  if (!caller.admin && device != caller.device) {
    return FieldError(absl::StatusCode::kPermissionDenied, "device", device,
                      absl::StrFormat("caller is device \"%s\" and may act only as itself",
                                      caller.device));
  }
  if (it == devices_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "device", device, "no such device");
  }
  return it->second.get();
}

std::shared_ptr<Domain> BrokerImpl::CurrentDomain(const DeviceState& dev) const {
  absl::ReaderMutexLock l(&registry_mu_);
  return dev.current;
}

absl::StatusOr<std::shared_ptr<Domain>> BrokerImpl::FindDomain(uint64_t domain_id) const {
  auto it = domains_.find(domain_id);
  if (it == domains_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "domain_id", domain_id, "no such domain");
  }
  return it->second;
}

// --- domains --------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<Domain>> BrokerImpl::NewDomain(Smmu* smmu, DomainType type,
                                                              uint64_t granule_bytes,
                                                              const std::string& owner,
                                                              bool is_default,
                                                              uint64_t session_id,
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
      return FieldError(absl::StatusCode::kResourceExhausted, "smmu", cfg.name,
                        absl::StrFormat("all %d translation contexts are in use",
                                        cfg.num_contexts));
    }
    *free_ctx = true;
    d->context = uint32_t(free_ctx - smmu->context_in_use.begin());
  }
  d->tag = cfg.stage == Stage::kStage1 ? TlbTag{.asid = uint16_t(d->context), .vmid = 0}
                                       : TlbTag{.asid = 0, .vmid = uint16_t(d->context)};
  absl::MutexLock dl(&d->mu);
  if (translates) {
    d->flush_ops = std::make_unique<internal::DomainFlushOps>(smmu, d->tag);
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
  auto smmu = impl_->smmu_by_name_.find(request.smmu);
  if (smmu == impl_->smmu_by_name_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "smmu", request.smmu, "no such SMMU");
  }
  if (!caller.admin) {
    // A device may create domains only on its own SMMU.
    ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, caller.device));
    if (dev->smmu != smmu->second) {
      return FieldError(absl::StatusCode::kPermissionDenied, "smmu", request.smmu,
                        absl::StrFormat("device %s sits behind SMMU %s", caller.device,
                                        dev->smmu->config.name));
    }
  }
  absl::MutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(auto d, impl_->NewDomain(smmu->second, request.type, request.granule_bytes,
                                            caller.admin ? "" : caller.device, false,
                                            caller.session_id));
  return impl_->Describe(*d);
}

absl::Status Broker::DestroyDomain(const Caller& caller, uint64_t domain_id) {
  return impl_->DestroyDomain(caller, domain_id);
}

absl::Status BrokerImpl::DestroyDomain(const Caller& caller, uint64_t domain_id) {
  std::shared_ptr<Domain> d;
  {
    absl::MutexLock l(&registry_mu_);
    ASSIGN_OR_RETURN(d, FindDomain(domain_id));
    if (!caller.admin && d->owner != caller.device) {
      return FieldError(absl::StatusCode::kPermissionDenied, "domain_id", domain_id,
                        "only the domain's owner or an admin may destroy it");
    }
    if (d->is_default) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
                        "a device's default domain cannot be destroyed");
    }
    if (!d->attached.empty()) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
                        absl::StrFormat("devices still attached: %s",
                                        absl::StrJoin(d->attached, ", ")));
    }
    domains_.erase(domain_id);
  }
  // Unreachable now: tear it down outside the registry lock.
  {
    absl::MutexLock dl(&d->mu);
    while (!d->mappings.empty()) RemoveMappingLocked(*d, d->mappings.begin()->first);
    if (auto* c = std::get_if<internal::IovaCookie>(&d->cookie); c && c->fq) c->fq->Flush();
  }
  ReleaseContext(*d);
  return absl::OkStatus();
}

absl::StatusOr<DomainInfo> Broker::GetDomain(const Caller& caller, uint64_t domain_id) const {
  absl::ReaderMutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(auto d, impl_->FindDomain(domain_id));
  DomainInfo info = impl_->Describe(*d);
  if (!caller.admin && d->owner != caller.device &&
      std::find(d->attached.begin(), d->attached.end(), caller.device) == d->attached.end()) {
    return FieldError(absl::StatusCode::kNotFound, "domain_id", domain_id, "no such domain");
  }
  return info;
}

std::vector<DomainInfo> Broker::ListDomains(const Caller& caller) const {
  absl::ReaderMutexLock l(&impl_->registry_mu_);
  std::vector<DomainInfo> out;
  for (const auto& [id, d] : impl_->domains_) {
    if (!caller.admin && d->owner != caller.device &&
        std::find(d->attached.begin(), d->attached.end(), caller.device) == d->attached.end()) {
      continue;
    }
    out.push_back(impl_->Describe(*d));
  }
  return out;
}

absl::Status Broker::AttachDevice(const Caller& caller, const std::string& device,
                                  uint64_t domain_id) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  absl::MutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(auto d, impl_->FindDomain(domain_id));
  if (!caller.admin && !d->owner.empty() && d->owner != caller.device) {
    return FieldError(absl::StatusCode::kPermissionDenied, "domain_id", domain_id,
                      "owned by another device");
  }
  if (d->is_default && d != dev->default_domain) {
    return FieldError(absl::StatusCode::kPermissionDenied, "domain_id", domain_id,
                      "another device's default domain");
  }
  if (d->smmu != dev->smmu) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
                      absl::StrFormat("domain is on SMMU %s, device %s is behind %s",
                                      d->smmu->config.name, device, dev->smmu->config.name));
  }
  if (d->type == DomainType::kDmaFq && !dev->config.trusted) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", domain_id,
                      absl::StrFormat("untrusted device %s must use strict invalidation, "
                                      "not a DMA_FQ domain",
                                      device));
  }
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

// --- invariants -----------------------------------------------------------------

void Broker::CheckInvariants() const {
  auto check = [](const absl::Status& s, const char* what) {
    if (!s.ok()) {
      std::fprintf(stderr, "broker invariant broken (%s): %s\n", what,
                   std::string(s.message()).c_str());
      std::abort();
    }
  };
  check(impl_->memory_->CheckInvariants(), "physical memory");
  check(impl_->faults_->CheckInvariants(), "fault ring");
  for (const auto& s : impl_->smmus_) {
    absl::MutexLock l(&s->mu);
    s->iotlb->CheckInvariants();
  }
  // Recount what mappings reference and charge, and compare.
  absl::flat_hash_map<uint64_t, uint64_t> refs;            // buffer -> mapping refs
  absl::flat_hash_map<std::string, std::pair<uint64_t, uint64_t>> charged;  // device -> (maps, bytes)
  absl::ReaderMutexLock rl(&impl_->registry_mu_);
  for (const auto& [id, d] : impl_->domains_) {
    absl::ReaderMutexLock dl(&d->mu);
    if (d->pgtable) check(d->pgtable->CheckInvariants(), "page table");
    if (const auto* c = std::get_if<internal::IovaCookie>(&d->cookie)) {
      check(c->iovad->CheckInvariants(), "IOVA allocator");
    }
    uint64_t bytes = 0;
    uint64_t pt_bytes = 0;
    uint64_t prev_end = 0;
    for (const auto& [iova, m] : d->mappings) {
      if (iova != m.iova.value() || iova < prev_end) {
        check(absl::InternalError(absl::StrFormat("domain %d: mapping at %#x overlaps", id, iova)),
              "mappings");
      }
      prev_end = iova + m.iova_size_bytes;
      bytes += m.mapped_bytes;
      for (uint64_t b : m.buffer_refs) ++refs[b];
      if (!m.device.empty()) {
        auto& [n, by] = charged[m.device];
        ++n;
        by += m.mapped_bytes;
      }
      // Every piece translates to its memory.
      for (const internal::MappedPiece& p : m.pieces) {
        for (uint64_t off : {uint64_t{0}, p.size_bytes - 1}) {
          const auto pa = d->pgtable->IovaToPhys(p.iova + off);
          if (!pa || *pa != p.phys + off) {
            check(absl::InternalError(absl::StrFormat(
                      "domain %d: %#x does not translate to %#x", id, (p.iova + off).value(),
                      (p.phys + off).value())),
                  "mappings vs page table");
          }
        }
      }
      for (const auto& [pt_iova, size] : m.pt_ranges) pt_bytes += size;
    }
    if (bytes != d->mapped_bytes) {
      check(absl::InternalError(absl::StrFormat("domain %d: mapped_bytes %d != %d", id,
                                                d->mapped_bytes, bytes)),
            "domain accounting");
    }
    if (d->pgtable && d->pgtable->Stats().mapped_bytes != pt_bytes) {
      check(absl::InternalError(absl::StrFormat("domain %d: page table maps %#x, records %#x", id,
                                                d->pgtable->Stats().mapped_bytes, pt_bytes)),
            "page table vs records");
    }
  }
  for (const auto& [name, dev] : impl_->devices_) {
    const auto it = charged.find(name);
    const uint64_t n = it == charged.end() ? 0 : it->second.first;
    const uint64_t by = it == charged.end() ? 0 : it->second.second;
    if (dev->mappings.load() != n || dev->mapped_bytes.load() != by) {
      check(absl::InternalError(absl::StrFormat("device %s charged %d/%#x, holds %d/%#x", name,
                                                dev->mappings.load(), dev->mapped_bytes.load(), n,
                                                by)),
            "quota accounting");
    }
    if (std::find(dev->current->attached.begin(), dev->current->attached.end(), name) ==
        dev->current->attached.end()) {
      check(absl::InternalError("device missing from its domain's attached list"), "attach");
    }
  }
  absl::ReaderMutexLock bl(&impl_->buffers_mu_);
  for (const auto& [id, b] : impl_->buffers_) {
    const auto it = refs.find(id);
    const uint64_t want = it == refs.end() ? 0 : it->second;
    if (b.map_refs != want) {
      check(absl::InternalError(absl::StrFormat("buffer %d: map_refs %d, mappings hold %d", id,
                                                b.map_refs, want)),
            "buffer references");
    }
  }
}

// --- sessions -------------------------------------------------------------------

absl::StatusOr<uint64_t> Broker::OpenSession(const Caller& caller, absl::Duration ttl) {
  if (!caller.admin) RETURN_IF_ERROR(impl_->ActAs(caller, caller.device).status());
  absl::MutexLock l(&impl_->registry_mu_);
  return impl_->sessions_.Open(caller.device, ttl, impl_->options_.now());
}

absl::Status Broker::KeepAlive(const Caller& caller, uint64_t session_id) {
  absl::MutexLock l(&impl_->registry_mu_);
  const SessionInfo* s = impl_->sessions_.Find(session_id);
  if (s == nullptr || (!caller.admin && s->device != caller.device)) {
    return FieldError(absl::StatusCode::kNotFound, "session_id", session_id, "no such session");
  }
  return impl_->sessions_.KeepAlive(session_id, impl_->options_.now());
}

absl::Status Broker::CloseSession(const Caller& caller, uint64_t session_id) {
  {
    absl::MutexLock l(&impl_->registry_mu_);
    const SessionInfo* s = impl_->sessions_.Find(session_id);
    if (s == nullptr || (!caller.admin && s->device != caller.device)) {
      return FieldError(absl::StatusCode::kNotFound, "session_id", session_id,
                        "no such session");
    }
    RETURN_IF_ERROR(impl_->sessions_.Close(session_id));
  }
  impl_->ReleaseSession(session_id);
  return absl::OkStatus();
}

int Broker::Tick() {
  std::vector<uint64_t> expired;
  std::vector<std::shared_ptr<Domain>> domains;
  {
    absl::MutexLock l(&impl_->registry_mu_);
    expired = impl_->sessions_.Expire(impl_->options_.now());
    for (const auto& [id, d] : impl_->domains_) domains.push_back(d);
  }
  for (uint64_t id : expired) impl_->ReleaseSession(id);
  for (const auto& d : domains) {
    absl::MutexLock dl(&d->mu);
    if (auto* c = std::get_if<internal::IovaCookie>(&d->cookie); c && c->fq) c->fq->Poll();
  }
  return int(expired.size());
}

void BrokerImpl::ReleaseSession(uint64_t session_id) {
  // Mappings first (they hold buffer references), then buffers, then domains.
  std::vector<std::shared_ptr<Domain>> domains;
  {
    absl::ReaderMutexLock l(&registry_mu_);
    for (const auto& [id, d] : domains_) domains.push_back(d);
  }
  for (const auto& d : domains) {
    absl::MutexLock dl(&d->mu);
    std::vector<uint64_t> doomed;
    for (const auto& [iova, m] : d->mappings) {
      if (m.session_id == session_id) doomed.push_back(iova);
    }
    for (uint64_t iova : doomed) RemoveMappingLocked(*d, iova);
  }
  {
    absl::MutexLock bl(&buffers_mu_);
    std::vector<uint64_t> doomed;
    for (const auto& [id, b] : buffers_) {
      if (b.session_id == session_id && b.map_refs == 0) doomed.push_back(id);
    }
    for (uint64_t id : doomed) {
      const absl::Status s = FreeBufferLocked(id);
      assert(s.ok());
      (void)s;
    }
  }
  std::vector<uint64_t> session_domains;
  {
    absl::MutexLock l(&registry_mu_);
    for (const auto& [id, d] : domains_) {
      if (d->session_id != session_id) continue;
      // Devices still attached go back to their default domains.
      for (const std::string& name : d->attached) {
        DeviceState& dev = *devices_.at(name);
        dev.current = dev.default_domain;
        dev.current->attached.push_back(name);
      }
      d->attached.clear();
      session_domains.push_back(id);
    }
  }
  for (uint64_t id : session_domains) {
    const absl::Status s = DestroyDomain(Caller::Admin(), id);
    assert(s.ok());
    (void)s;
  }
}

}  // namespace iommu::core
