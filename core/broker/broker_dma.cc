// The DMA API: Map/Unmap, MapSg/UnmapSg (and buffer import), Alloc/Free,
// GetSgTable, MapAt/UnmapRange, Sync.

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/run_sort.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::MappingKind;
using internal::MappingRecord;

namespace {

const char* MappingKindName(MappingKind k) {
  switch (k) {
    case MappingKind::kMap:
      return "Map";
    case MappingKind::kMapSg:
      return "MapSg";
    case MappingKind::kAlloc:
      return "Alloc";
    case MappingKind::kMapAt:
      return "MapAt";
    case MappingKind::kMsi:
      return "MsiCookie";
    case MappingKind::kImport:
      return "MapSg (import)";
  }
  return "?";
}

}  // namespace

absl::Status BrokerImpl::NeedsIovaCookie(const Domain& d, const char* call) {
  return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d.id,
                    absl::StrFormat("%s needs a DMA or DMA_FQ domain; the device's current "
                                    "domain is %s",
                                    call, DomainTypeName(d.type)));
}

uint64_t BrokerImpl::DeviceLimit(const Domain& d, const DeviceState& dev) const {
  return std::min(d.aperture_end, LowMask(dev.config.dma_mask_bits));
}

Prot BrokerImpl::ProtFor(const DeviceState& dev, DmaDirection dir, const DmaAttrs& attrs) const {
  Prot p = Prot::kNone;
  switch (dir) {
    case DmaDirection::kBidirectional:
      p = Prot::kRead | Prot::kWrite;
      break;
    case DmaDirection::kToDevice:  // the device reads memory
      p = Prot::kRead;
      break;
    case DmaDirection::kFromDevice:  // the device writes memory
      p = Prot::kWrite;
      break;
  }
  if (dev.config.coherent) p = p | Prot::kCache;
  if (attrs.privileged) p = p | Prot::kPriv;
  return p;
}

absl::StatusOr<Iova> BrokerImpl::AllocIovaLocked(Domain& d, const DeviceState& dev,
                                                 uint64_t size_bytes) {
  auto* c = std::get_if<internal::IovaCookie>(&d.cookie);
  if (c == nullptr) return BrokerImpl::NeedsIovaCookie(d, "IOVA allocation");
  return c->iovad->AllocIova(size_bytes, Iova(DeviceLimit(d, dev)));
}

void BrokerImpl::FreeIovaLocked(Domain& d, Iova iova, uint64_t size_bytes) {
  auto* c = std::get_if<internal::IovaCookie>(&d.cookie);
  assert(c != nullptr);
  const absl::Status s = c->iovad->FreeIova(iova, size_bytes);
  assert(s.ok());
  (void)s;
}

absl::Status BrokerImpl::MapPiecesLocked(Domain& d,
                                         absl::Span<const std::pair<Iova, PhysRun>> ranges,
                                         Prot prot) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& [iova, run] = ranges[i];
    absl::Status s = d.pgtable->Map(iova, run.start, run.size_bytes, prot);
    if (!s.ok()) {
      // Roll back: nothing mapped here was ever translated (translation
      // fills need this domain's lock), so no IOTLB entry can exist.
      IotlbGather gather;
      for (size_t j = 0; j < i; ++j) {
        const auto r = d.pgtable->Unmap(ranges[j].first, ranges[j].second.size_bytes, &gather);
        assert(r.ok());
        (void)r;
      }
      return s;
    }
  }
  return absl::OkStatus();
}

uint64_t BrokerImpl::CommitMappingLocked(Domain& d, MappingRecord&& record) {
  record.mapping_id = next_mapping_id_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t id = record.mapping_id;
  d.mapped_bytes += record.mapped_bytes;
  d.mappings.Insert(std::move(record));
  return id;
}

MappingRecord& BrokerImpl::NewMappingLocked(Domain& d, Iova iova, uint64_t iova_size_bytes,
                                            uint64_t mapped_bytes) {
  MappingRecord& record = d.mappings.Emplace(iova, iova_size_bytes);
  record.mapping_id = next_mapping_id_.fetch_add(1, std::memory_order_relaxed);
  record.mapped_bytes = mapped_bytes;
  d.mapped_bytes += mapped_bytes;
  return record;
}

void BrokerImpl::RemoveMappingLocked(Domain& d, uint64_t iova_start, DeferredInvalidation* deferred,
                                     DeviceState* known, BufferRun* run) {
  // Erased last: nothing below touches d.mappings.
  MappingRecord* const found = d.mappings.FindStart(iova_start);
  assert(found != nullptr);
  MappingRecord& m = *found;
  d.mapped_bytes -= m.mapped_bytes;

  IotlbGather gather;
  gather.queued = !d.strict;
  for (const auto& [iova, size] : m.pt_ranges) {
    const auto r = d.pgtable->Unmap(iova, size, &gather);
    assert(r.ok() && *r == size);
    (void)r;
  }
  // Strict invalidation of the unmapped leaves, before the call returns.
  auto invalidate_leaves = [&] {
    if (gather.empty()) return;
    absl::MutexLock l(&d.smmu->mu);
    const auto r = d.smmu->iotlb->InvalidateVa(d.tag, Iova(gather.start),
                                               gather.end - gather.start + 1, VaLevels::kLeafOnly);
    assert(r.ok());
    (void)r;
  };
  std::visit(internal::Overloaded{
                 // UNMANAGED domains are always strict.
                 [&](internal::NoCookie&) { invalidate_leaves(); },
                 [&](internal::MsiWindowCookie&) { invalidate_leaves(); },
                 // Lambdas do not inherit the caller's lock context: d.mu is held.
                 [&](internal::IovaCookie& c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                   if (c.fq == nullptr) {
                     // Strict: the IOTLB forgets the range before the IOVA is reused.
                     if (deferred != nullptr) {
                       if (!gather.empty())
                         deferred->leaf_ranges.push_back({gather.start, gather.end});
                       if (m.iova_from_allocator)
                         deferred->iova_frees.push_back({m.iova, m.iova_size_bytes});
                       return;
                     }
                     invalidate_leaves();
                     if (m.iova_from_allocator) FreeIovaLocked(d, m.iova, m.iova_size_bytes);
                     return;
                   }
                   // Lazy: entries stay usable (and are counted as stale hits) until
                   // the queued invalidation; the IOVA is released only after it.
                   {
                     absl::MutexLock l(&d.smmu->mu);
                     for (const auto& [iova, size] : m.pt_ranges) {
                       const auto r = d.smmu->iotlb->MarkStale(d.tag, iova, size);
                       assert(r.ok());
                       (void)r;
                     }
                   }
                   FlushQueueEntry e{.tag = d.tag, .iova = m.iova, .size_bytes = m.iova_size_bytes};
                   if (m.iova_from_allocator) {
                     e.payload[0] = m.iova.value();
                     e.payload[1] = m.iova_size_bytes;
                   }
                   const absl::Status s = c.fq->Enqueue(e);
                   assert(s.ok());
                   (void)s;
                 },
             },
             d.cookie);

  if (!m.buffer_refs.empty() || m.owned_buffer_id != 0) {
    if (run != nullptr) {
      buffers_mu_.AssertHeld();  // the caller's run holds it
      ReleaseMappingBuffersLocked(m, run);
    } else {
      absl::MutexLock l(&buffers_mu_);
      ReleaseMappingBuffersLocked(m, nullptr);
    }
  }
  if (!m.device.empty()) {
    DeviceState& owner =
        known != nullptr && known->config.name == m.device ? *known : *devices_.at(m.device);
    RefundMapping(owner, m.mapped_bytes);
  }
  d.mappings.Erase(iova_start);
}

void BrokerImpl::ReleaseMappingBuffersLocked(const MappingRecord& m, BufferRun* run) {
  if (m.export_id != 0) ForgetImportLocked(m);
  DropRefsLocked(m.buffer_refs, run);
  if (m.owned_buffer_id != 0) {
    internal::Buffer& b = buffers_.at(m.owned_buffer_id);
    if (b.map_refs == 0) {
      if (run != nullptr && run->id == m.owned_buffer_id) *run = {};
      const absl::Status s = FreeBufferLocked(m.owned_buffer_id);
      assert(s.ok());
      (void)s;
    } else {
      b.free_when_unreferenced = true;  // importers still map it
    }
  }
}

void BrokerImpl::CompleteInvalidationLocked(Domain& d, DeferredInvalidation* deferred) {
  auto& ranges = deferred->leaf_ranges;
  if (!ranges.empty()) {
    // Merging only ranges that overlap or touch keeps the invalidation exact:
    // an entry overlaps a merged range iff it overlaps one of its parts.
    // A run's unmaps mostly come in long stretches of IOVA order.
    SortByRuns(&ranges);
    absl::MutexLock l(&d.smmu->mu);
    uint64_t first = ranges.front().first;
    uint64_t last = ranges.front().second;
    for (size_t i = 1; i <= ranges.size(); ++i) {
      if (i < ranges.size() && last != ~uint64_t{0} && ranges[i].first <= last + 1) {
        last = std::max(last, ranges[i].second);
        continue;
      }
      const auto r =
          d.smmu->iotlb->InvalidateVa(d.tag, Iova(first), last - first + 1, VaLevels::kLeafOnly);
      assert(r.ok());
      (void)r;
      if (i < ranges.size()) {
        first = ranges[i].first;
        last = ranges[i].second;
      }
    }
    ranges.clear();
  }
  for (const auto& [iova, size_bytes] : deferred->iova_frees) FreeIovaLocked(d, iova, size_bytes);
  deferred->iova_frees.clear();
}

// Looks up the caller's mapping containing dma_addr in the device's current
// domain and checks it was made by `call_kinds`.
absl::StatusOr<MappingRecord*> BrokerImpl::OwnMapping(Domain& d, const Caller& caller,
                                                      const std::string& device, uint64_t dma_addr,
                                                      std::initializer_list<MappingKind> kinds,
                                                      const char* call) {
  MappingRecord* m = d.FindMappingLocked(dma_addr);
  if (m == nullptr || (m->device != device && !(caller.admin && !m->device.empty()))) {
    return FieldError(absl::StatusCode::kNotFound, "dma_addr", dma_addr,
                      absl::StrFormat("no mapping of device %s there in domain %d", device, d.id));
  }
  if (std::find(kinds.begin(), kinds.end(), m->kind) == kinds.end()) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "dma_addr", dma_addr,
                      absl::StrFormat("mapping was made by %s; %s cannot release it",
                                      MappingKindName(m->kind), call));
  }
  return m;
}

// --- Map / Unmap -----------------------------------------------------------------

absl::StatusOr<MapResult> Broker::Map(const Caller& caller, const MapRequest& request) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, request.device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  absl::MutexLock l(&d->mu);
  return impl_->MapLocked(*d, *dev, caller, request.device, request.mem, request.direction,
                          request.attrs);
}

absl::StatusOr<MapResult> BrokerImpl::MapLocked(Domain& d, DeviceState& dev, const Caller& caller,
                                                const std::string& device, const MemRef& mem_ref,
                                                DmaDirection direction, const DmaAttrs& attrs,
                                                BufferRun* run) {
  if (d.type != DomainType::kDma && d.type != DomainType::kDmaFq) {
    return BrokerImpl::NeedsIovaCookie(d, "Map");
  }
  BrokerImpl::ResolvedMem mem;
  RETURN_IF_ERROR(ResolveAndRefIn(run, caller, dev, mem_ref, "mem", &mem));
  auto fail = [&](absl::Status s) {
    DropRefsIn(run, mem.buffers);
    return s;
  };
  const uint64_t g = d.granule_bytes;
  // dma_map_page maps one physically contiguous range; a buffer range over
  // several runs is mapped IOVA-contiguously when every inner edge sits on
  // the granule.
  for (size_t i = 0; i + 1 < mem.runs.size(); ++i) {
    const uint64_t edge = (mem.runs[i].start + mem.runs[i].size_bytes).value();
    if (!IsAligned(edge, g) || !IsAligned(mem.runs[i + 1].start.value(), g)) {
      return fail(FieldError(
          absl::StatusCode::kFailedPrecondition, "mem.length_bytes", mem_ref.length_bytes,
          absl::StrFormat("the range crosses physically discontiguous pages at %#x that are "
                          "not aligned to the %#x-byte IOVA granule; use MapSg",
                          edge, g)));
    }
  }
  const uint64_t first_off = mem.runs.front().start & (g - 1);
  const auto iova_size = AlignUp(first_off + mem_ref.length_bytes, g);
  if (!iova_size) {
    return fail(InvalidField("mem.length_bytes", mem_ref.length_bytes, "too large"));
  }
  if (absl::Status s = ChargeMapping(dev, mem_ref.length_bytes); !s.ok()) {
    return fail(s);
  }
  auto iova = AllocIovaLocked(d, dev, *iova_size);
  if (!iova.ok()) {
    RefundMapping(dev, mem_ref.length_bytes);
    return fail(iova.status());
  }
  // Granule-aligned page-table ranges, one per physical run.
  internal::InlinedOne<std::pair<Iova, PhysRun>> ranges;
  Iova at = *iova;
  for (const PhysRun& r : mem.runs) {
    const uint64_t lo = AlignDown(r.start.value(), g);
    const uint64_t span = *AlignUp(r.start.value() + r.size_bytes, g) - lo;
    ranges.push_back({at, {PhysAddr(lo), span}});
    at += span;
  }
  const Prot prot = ProtFor(dev, direction, attrs);
  if (absl::Status s = MapPiecesLocked(d, ranges, prot); !s.ok()) {
    FreeIovaLocked(d, *iova, *iova_size);
    RefundMapping(dev, mem_ref.length_bytes);
    return fail(s);
  }
  // The record is built in place (no moves of it).
  MappingRecord& rec = NewMappingLocked(d, *iova, *iova_size, mem_ref.length_bytes);
  rec.kind = MappingKind::kMap;
  rec.device = device;
  rec.session_id = caller.session_id;
  rec.iova_from_allocator = true;
  rec.dma_offset = first_off;
  rec.prot = prot;
  rec.buffer_refs = mem.buffers;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& [pt_iova, pt_run] = ranges[i];
    const PhysRun& r = mem.runs[i];
    rec.pt_ranges.push_back({pt_iova, pt_run.size_bytes});
    rec.pieces.push_back({pt_iova + (r.start - pt_run.start), r.start, r.size_bytes});
  }
  return MapResult{.dma_addr = iova->value() + first_off,
                   .mapping_id = rec.mapping_id,
                   .domain_id = d.id,
                   .iova_size_bytes = *iova_size};
}

absl::Status Broker::Unmap(const Caller& caller, const std::string& device, uint64_t dma_addr) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  absl::MutexLock l(&d->mu);
  return impl_->UnmapLocked(*d, *dev, caller, device, dma_addr, nullptr);
}

absl::Status BrokerImpl::UnmapLocked(Domain& d, DeviceState& dev, const Caller& caller,
                                     const std::string& device, uint64_t dma_addr,
                                     DeferredInvalidation* deferred, BufferRun* run) {
  ASSIGN_OR_RETURN(MappingRecord * m,
                   OwnMapping(d, caller, device, dma_addr, {MappingKind::kMap}, "Unmap"));
  RemoveMappingLocked(d, m->iova.value(), deferred, &dev, run);
  return absl::OkStatus();
}

// --- MapSg ------------------------------------------------------------------------

absl::StatusOr<MapSgResult> Broker::MapSg(const Caller& caller, const MapSgRequest& request) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, request.device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  if (d->type != DomainType::kDma && d->type != DomainType::kDmaFq) {
    return BrokerImpl::NeedsIovaCookie(*d, "MapSg");
  }
  const uint64_t g = d->granule_bytes;
  std::vector<PhysSegment> segs;
  std::vector<uint64_t> refs;
  MappingKind kind = MappingKind::kMapSg;
  SgMode mode = request.mode;
  uint64_t export_id = 0;  // an import
  auto fail = [&](absl::Status s) {
    impl_->DropRefs(refs);
    return s;
  };
  if (!request.import_token.empty()) {
    if (!request.segments.empty()) {
      return InvalidField("segments", request.segments.size(),
                          "give either segments or import_token, not both");
    }
    absl::MutexLock bl(&impl_->buffers_mu_);
    auto it = impl_->exports_.find(request.import_token);
    if (it == impl_->exports_.end()) {
      return FieldError(absl::StatusCode::kNotFound, "import_token", request.import_token,
                        "no such export (never made, revoked, or its buffer was freed)");
    }
    const internal::ExportRecord& e = it->second;
    RETURN_IF_ERROR(impl_->CheckImport(*dev, e, request.import_token, request.direction));
    export_id = e.export_id;
    // One contiguous IOVA block in the importer is guaranteed when every
    // chunk edge sits on the larger of both granules.
    const uint64_t big = std::max(g, e.exporter_granule);
    for (size_t i = 0; i < e.chunks.size(); ++i) {
      const PhysRun& c = e.chunks[i];
      const bool start_ok = i == 0 || IsAligned(c.start.value(), big);
      const bool end_ok =
          i + 1 == e.chunks.size() || IsAligned((c.start + c.size_bytes).value(), big);
      if (!start_ok || !end_ok) {
        return FieldError(
            absl::StatusCode::kFailedPrecondition, "import_token", request.import_token,
            absl::StrFormat("chunk %d at %#x+%#x is not aligned to %#x (the larger "
                            "of the exporter's %#x and the importer's %#x "
                            "granules), so it cannot be one contiguous IOVA block",
                            i, c.start.value(), c.size_bytes, big, e.exporter_granule, g));
      }
      segs.push_back({c.start, c.size_bytes});
    }
    for (uint64_t id : e.buffer_ids) ++impl_->buffers_.at(id).map_refs;
    refs = e.buffer_ids;
    kind = MappingKind::kImport;
    mode = SgMode::kContiguous;
  } else {
    for (size_t i = 0; i < request.segments.size(); ++i) {
      const std::string field = absl::StrFormat("segments[%d]", i);
      BrokerImpl::ResolvedMem mem;
      if (absl::Status s = impl_->ResolveAndRef(caller, *dev, request.segments[i], field, &mem);
          !s.ok()) {
        return fail(s);
      }
      refs.insert(refs.end(), mem.buffers.begin(), mem.buffers.end());
      if (mem.runs.size() != 1) {
        return fail(FieldError(absl::StatusCode::kInvalidArgument, field + ".length_bytes",
                               request.segments[i].length_bytes,
                               absl::StrFormat("a scatterlist entry must be physically "
                                               "contiguous; this one spans %d runs of its buffer",
                                               mem.runs.size())));
      }
      segs.push_back({mem.runs[0].start, mem.runs[0].size_bytes});
    }
  }
  const SgDeviceLimits limits{.max_segment_size_bytes = dev->config.max_segment_size_bytes,
                              .segment_boundary_mask = dev->config.segment_boundary_mask};
  auto layout = PlanMapSg(segs, g, limits, mode);
  if (!layout.ok()) return fail(layout.status());
  if (!dev->config.scatter_gather && layout->dma_segments.size() > 1) {
    return fail(FieldError(absl::StatusCode::kFailedPrecondition, "mode", SgModeName(mode),
                           absl::StrFormat("device %s cannot do scatter-gather and the list "
                                           "maps to %d DMA segments; use CONTIGUOUS",
                                           request.device, layout->dma_segments.size())));
  }
  uint64_t total = 0;
  for (const PhysSegment& s : segs) total += s.length_bytes;  // each checked; sum < iova size
  if (absl::Status s = impl_->ChargeMapping(*dev, total); !s.ok()) return fail(s);
  absl::MutexLock l(&d->mu);
  auto iova = impl_->AllocIovaLocked(*d, *dev, layout->iova_size_bytes);
  if (!iova.ok()) {
    impl_->RefundMapping(*dev, total);
    return fail(iova.status());
  }
  MappingRecord rec{.kind = kind,
                    .device = request.device,
                    .session_id = caller.session_id,
                    .iova = *iova,
                    .iova_size_bytes = layout->iova_size_bytes,
                    .iova_from_allocator = true,
                    .dma_offset = layout->dma_segments.front().iova_offset,
                    .prot = impl_->ProtFor(*dev, request.direction, request.attrs),
                    .buffer_refs = {refs.begin(), refs.end()},
                    .mapped_bytes = total};
  std::vector<std::pair<Iova, PhysRun>> ranges;
  for (size_t i = 0; i < layout->map_ranges.size(); ++i) {
    const SgMapRange& r = layout->map_ranges[i];
    ranges.push_back({*iova + r.iova_offset, {r.phys, r.size_bytes}});
    rec.pt_ranges.push_back({*iova + r.iova_offset, r.size_bytes});
    rec.pieces.push_back(
        {*iova + r.iova_offset + (segs[i].phys & (g - 1)), segs[i].phys, segs[i].length_bytes});
  }
  if (absl::Status s = impl_->MapPiecesLocked(*d, ranges, rec.prot); !s.ok()) {
    impl_->FreeIovaLocked(*d, *iova, layout->iova_size_bytes);
    impl_->RefundMapping(*dev, total);
    return fail(s);
  }
  MapSgResult out{
      .domain_id = d->id, .iova = iova->value(), .iova_size_bytes = layout->iova_size_bytes};
  for (const SgDmaSegment& s : layout->dma_segments) {
    out.segments.push_back({iova->value() + s.iova_offset, s.length_bytes});
  }
  rec.segments = out.segments;
  rec.export_id = export_id;
  out.mapping_id = impl_->CommitMappingLocked(*d, std::move(rec));
  if (export_id != 0) {
    // Registered with its export, so that revocation finds it; an export
    // revoked since the check above takes the import back at once.
    bool revoked = false;
    {
      absl::MutexLock bl(&impl_->buffers_mu_);
      auto token = impl_->export_tokens_.find(export_id);
      if (token == impl_->export_tokens_.end()) {
        revoked = true;
      } else {
        impl_->exports_.at(token->second)
            .imports.push_back({.domain = d, .iova = out.iova, .mapping_id = out.mapping_id});
      }
    }
    if (revoked) {
      impl_->RemoveMappingLocked(*d, out.iova);
      return FieldError(absl::StatusCode::kNotFound, "import_token", request.import_token,
                        "no such export (never made, revoked, or its buffer was freed)");
    }
  }
  return out;
}

absl::Status Broker::UnmapSg(const Caller& caller, const std::string& device, uint64_t dma_addr) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  absl::MutexLock l(&d->mu);
  ASSIGN_OR_RETURN(MappingRecord * m,
                   BrokerImpl::OwnMapping(*d, caller, device, dma_addr,
                                          {MappingKind::kMapSg, MappingKind::kImport}, "UnmapSg"));
  impl_->RemoveMappingLocked(*d, m->iova.value());
  return absl::OkStatus();
}

absl::Status Broker::Sync(const Caller& caller, const std::string& device) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  absl::MutexLock l(&d->mu);
  if (auto* c = std::get_if<internal::IovaCookie>(&d->cookie); c && c->fq) c->fq->Flush();
  return absl::OkStatus();
}

}  // namespace iommu::core
