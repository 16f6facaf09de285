// SPDX-License-Identifier: Apache-2.0
// The DMA API: Map/Unmap, MapSg/UnmapSg (and buffer import), Alloc/Free,
// GetSgTable, MapAt/UnmapRange, Sync.

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

Iova BrokerImpl::DeviceLimit(const Domain& d, const DeviceState& dev) const {
  return std::min(d.aperture_end(), Iova(LowMask(dev.config.dma_mask_bits)));
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

// Looks up the caller's mapping containing dma_addr in the device's current
// domain and checks it was made by `call_kinds`.
absl::StatusOr<MappingRecord*> BrokerImpl::OwnMapping(Domain::Transaction& txn,
                                                      const Caller& caller,
                                                      const std::string& device, uint64_t dma_addr,
                                                      std::initializer_list<MappingKind> kinds,
                                                      const char* call) {
  MappingRecord* m = txn.Find(dma_addr);
  if (m == nullptr || (m->device != device && !(caller.admin && !m->device.empty()))) {
    return FieldError(
        absl::StatusCode::kNotFound, "dma_addr", dma_addr,
        absl::StrFormat("no mapping of device %s there in domain %d", device, txn.domain().id()));
  }
  if (std::find(kinds.begin(), kinds.end(), m->kind) == kinds.end()) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "dma_addr", dma_addr,
                      absl::StrFormat("mapping was made by %s; %s cannot release it",
                                      MappingKindName(m->kind), call));
  }
  return m;
}

// --- Map / Unmap -----------------------------------------------------------------

absl::StatusOr<MapResult> Broker::Map(const Caller& caller, const std::string& device,
                                      const MapRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  return durable.Reply(
      impl_->MapOne(txn, refs, *dev, caller, request.mem, request.direction, request.attrs));
}

absl::StatusOr<MapResult> BrokerImpl::MapOne(Domain::Transaction& txn, Buffers::Refs& refs,
                                             DeviceState& dev, const Caller& caller,
                                             const MemRef& mem_ref, DmaDirection direction,
                                             const DmaAttrs& attrs) {
  Domain& d = txn.domain();
  if (!d.has_iova_cookie()) return d.NeedsIovaCookie("Map");
  internal::ResolvedMem mem;
  RETURN_IF_ERROR(refs.Resolve(caller, dev, mem_ref, "mem", &mem));
  auto fail = [&](absl::Status s) {
    refs.Drop(mem.buffers);
    return s;
  };
  const uint64_t g = d.granule_bytes();
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
  if (absl::Status s = dev.ChargeMapping(mem_ref.length_bytes); !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = txn.ReserveRecord(); !s.ok()) {
    dev.RefundMapping(mem_ref.length_bytes);
    return fail(s);
  }
  auto iova = txn.AllocIova(*iova_size, DeviceLimit(d, dev), "IOVA allocation");
  if (!iova.ok()) {
    dev.RefundMapping(mem_ref.length_bytes);
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
  if (absl::Status s = txn.MapRanges(ranges, prot); !s.ok()) {
    txn.FreeIova(*iova, *iova_size);
    dev.RefundMapping(mem_ref.length_bytes);
    return fail(s);
  }
  // The record is built in place (no moves of it).
  MappingRecord& rec = txn.Insert(*iova, *iova_size, mem_ref.length_bytes, caller.session_id);
  rec.kind = MappingKind::kMap;
  rec.device = dev.config.name;
  rec.owner = &dev;
  rec.iova_from_allocator = true;
  rec.dma_offset = first_off;
  rec.prot = prot;
  rec.buffer_refs = mem.buffers;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& [pt_iova, pt_run] = ranges[i];
    const PhysRun& r = mem.runs[i];
    rec.pt_ranges.push_back({pt_iova, pt_run});
    rec.pieces.push_back({pt_iova + (r.start - pt_run.start), r.start, r.size_bytes});
  }
  return MapResult{.dma_addr = *iova + first_off,
                   .mapping_id = rec.mapping_id,
                   .domain_id = d.id(),
                   .iova_size_bytes = *iova_size};
}

absl::Status Broker::Unmap(const Caller& caller, const std::string& device,
                           const UnmapRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  return durable.Reply(impl_->UnmapOne(txn, *dev, caller, request.dma_addr.value()));
}

absl::Status BrokerImpl::UnmapOne(Domain::Transaction& txn, const DeviceState& dev,
                                  const Caller& caller, uint64_t dma_addr) {
  ASSIGN_OR_RETURN(MappingRecord * m, OwnMapping(txn, caller, dev.config.name, dma_addr,
                                                 {MappingKind::kMap}, "Unmap"));
  txn.Remove(m->iova.value());
  return absl::OkStatus();
}

// --- MapSg ------------------------------------------------------------------------

absl::StatusOr<MapSgResult> Broker::MapSg(const Caller& caller, const std::string& device,
                                          const MapSgRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  if (!d->has_iova_cookie()) return d->NeedsIovaCookie("MapSg");
  const uint64_t g = d->granule_bytes();
  std::vector<PhysSegment> segs;
  std::vector<internal::BufferRef> held;  // buffer references taken for the mapping
  MappingKind kind = MappingKind::kMapSg;
  SgMode mode = request.mode;
  uint64_t export_id = 0;  // an import
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  auto fail = [&](absl::Status s) {
    refs.Drop(held);
    return s;
  };
  if (!request.import_token.empty()) {
    if (!request.segments.empty()) {
      return InvalidField("segments", request.segments.size(),
                          "give either segments or import_token, not both");
    }
    internal::ImportedExport e;
    RETURN_IF_ERROR(impl_->buffers_->Import(
        request.import_token,
        [&](const internal::ExportRecord& r) {
          return impl_->CheckImport(*dev, r, request.import_token, request.direction);
        },
        &e));
    held = e.buffers;
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
        return fail(FieldError(
            absl::StatusCode::kFailedPrecondition, "import_token", request.import_token,
            absl::StrFormat("chunk %d at %#x+%#x is not aligned to %#x (the larger "
                            "of the exporter's %#x and the importer's %#x "
                            "granules), so it cannot be one contiguous IOVA block",
                            i, c.start.value(), c.size_bytes, big, e.exporter_granule, g)));
      }
      segs.push_back({c.start, c.size_bytes});
    }
    kind = MappingKind::kImport;
    mode = SgMode::kContiguous;
  } else {
    for (size_t i = 0; i < request.segments.size(); ++i) {
      const std::string field = absl::StrFormat("segments[%d]", i);
      internal::ResolvedMem mem;
      if (absl::Status s = refs.Resolve(caller, *dev, request.segments[i], field, &mem); !s.ok()) {
        return fail(s);
      }
      held.insert(held.end(), mem.buffers.begin(), mem.buffers.end());
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
                                           device, layout->dma_segments.size())));
  }
  uint64_t total = 0;
  for (const PhysSegment& s : segs) total += s.length_bytes;  // each checked; sum < iova size
  if (absl::Status s = dev->ChargeMapping(total); !s.ok()) return fail(s);
  Domain::Transaction txn(*d, refs);
  if (absl::Status s = txn.ReserveRecord(); !s.ok()) {
    dev->RefundMapping(total);
    return fail(s);
  }
  auto iova =
      txn.AllocIova(layout->iova_size_bytes, impl_->DeviceLimit(*d, *dev), "IOVA allocation");
  if (!iova.ok()) {
    dev->RefundMapping(total);
    return fail(iova.status());
  }
  std::vector<std::pair<Iova, PhysRun>> ranges;
  for (size_t i = 0; i < layout->map_ranges.size(); ++i) {
    const SgMapRange& r = layout->map_ranges[i];
    ranges.push_back({*iova + r.iova_offset, {r.phys, r.size_bytes}});
  }
  const Prot prot = impl_->ProtFor(*dev, request.direction, request.attrs);
  if (absl::Status s = txn.MapRanges(ranges, prot); !s.ok()) {
    txn.FreeIova(*iova, layout->iova_size_bytes);
    dev->RefundMapping(total);
    return fail(s);
  }
  MapSgResult out{.domain_id = d->id(), .iova = *iova, .iova_size_bytes = layout->iova_size_bytes};
  for (const SgDmaSegment& s : layout->dma_segments) {
    out.segments.push_back({*iova + s.iova_offset, s.length_bytes});
  }
  MappingRecord& rec = txn.Insert(*iova, layout->iova_size_bytes, total, caller.session_id);
  rec.kind = kind;
  rec.device = device;
  rec.owner = dev;
  rec.iova_from_allocator = true;
  rec.dma_offset = layout->dma_segments.front().iova_offset;
  rec.prot = prot;
  rec.buffer_refs = {held.begin(), held.end()};
  for (size_t i = 0; i < layout->map_ranges.size(); ++i) {
    const SgMapRange& r = layout->map_ranges[i];
    rec.pt_ranges.push_back({*iova + r.iova_offset, {r.phys, r.size_bytes}});
    rec.pieces.push_back(
        {*iova + r.iova_offset + (segs[i].phys & (g - 1)), segs[i].phys, segs[i].length_bytes});
  }
  rec.segments = out.segments;
  rec.export_id = export_id;
  out.mapping_id = rec.mapping_id;
  // An import is registered with its export, so that revocation finds it; an
  // export revoked since Import (or no room for the import's entry) takes
  // the import back at once.
  if (export_id != 0) {
    absl::Status s = impl_->buffers_->RecordImport(
        export_id, {.domain = d, .iova = out.iova.value(), .mapping_id = out.mapping_id});
    if (!s.ok()) {
      txn.Withdraw(out.iova.value());
      if (s.code() != absl::StatusCode::kNotFound) return s;
      return FieldError(absl::StatusCode::kNotFound, "import_token", request.import_token,
                        "no such export (never made, revoked, or its buffer was freed)");
    }
  }
  return durable.Reply(out);
}

absl::Status Broker::UnmapSg(const Caller& caller, const std::string& device, Iova dma_addr) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  ASSIGN_OR_RETURN(MappingRecord * m,
                   BrokerImpl::OwnMapping(txn, caller, device, dma_addr.value(),
                                          {MappingKind::kMapSg, MappingKind::kImport}, "UnmapSg"));
  txn.Remove(m->iova.value());
  return durable.Reply(absl::OkStatus());
}

absl::Status Broker::Sync(const Caller& caller, const std::string& device) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  txn.FlushQueue();
  return absl::OkStatus();
}

}  // namespace iommu::core
