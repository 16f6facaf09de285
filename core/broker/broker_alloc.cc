// SPDX-License-Identifier: Apache-2.0
// dma_alloc_attrs / dma_free_attrs and dma_get_sgtable (with export tokens).

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

// --- Alloc / Free -------------------------------------------------------------------

absl::StatusOr<AllocResult> Broker::Alloc(const Caller& caller, const std::string& device,
                                          const AllocRequest& request) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  if (!d->has_iova_cookie()) return d->NeedsIovaCookie("Alloc");
  if (request.size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const uint64_t g = d->granule_bytes();
  const auto size = AlignUp(request.size_bytes, std::max<uint64_t>(g, 4096));
  if (!size) return InvalidField("size_bytes", request.size_bytes, "too large");
  if (request.attrs.force_contiguous && request.attrs.alloc_single_pages) {
    return InvalidField("attrs", 0, "FORCE_CONTIGUOUS and ALLOC_SINGLE_PAGES exclude each other");
  }
  // Largest pages first (one physically contiguous block, naturally aligned,
  // so the page table can use block descriptors), falling back to single
  // pages unless contiguity was forced. Single CPU pages cannot back a
  // granule larger than a CPU page.
  std::vector<Placement> tries;
  if (!request.attrs.alloc_single_pages) tries.push_back(Placement::kContiguous);
  if (!request.attrs.force_contiguous && g == 4096) tries.push_back(Placement::kScattered);
  if (tries.empty()) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "attrs", "ALLOC_SINGLE_PAGES",
                      absl::StrFormat("single 4 KiB pages cannot back the domain's %#x-byte "
                                      "granule",
                                      g));
  }
  // The buffer backs the mapping alone (no client can free or map it as a
  // buffer of its own before the mapping exists: FreeBuffer refuses it).
  absl::StatusOr<BufferInfo> buffer;
  std::vector<PhysRun> runs;  // as allocated, in buffer order
  for (Placement p : tries) {
    buffer = impl_->buffers_->Create(*dev, caller.session_id, *size, p, request.pool,
                                     /*backs_alloc=*/true, &runs);
    if (buffer.ok() || buffer.status().code() != absl::StatusCode::kResourceExhausted) break;
  }
  if (!buffer.ok()) return buffer.status();
  const uint64_t buffer_id = buffer->buffer_id;
  auto free_buffer = [&](absl::Status s) {
    impl_->buffers_->FreeUnreferenced(buffer_id);
    return s;
  };
  if (absl::Status s = dev->ChargeMapping(*size); !s.ok()) return free_buffer(s);
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  if (absl::Status s = txn.ReserveRecord(); !s.ok()) {
    dev->RefundMapping(*size);
    return free_buffer(s);
  }
  auto iova = txn.AllocIova(*size, impl_->DeviceLimit(*d, *dev), "IOVA allocation");
  if (!iova.ok()) {
    dev->RefundMapping(*size);
    return free_buffer(iova.status());
  }
  // One page-table range per run.
  std::vector<std::pair<Iova, PhysRun>> ranges;
  Iova at = *iova;
  for (const PhysRun& r : runs) {
    ranges.push_back({at, r});
    at += r.size_bytes;
  }
  const Prot prot = impl_->ProtFor(*dev, request.direction, request.attrs);
  if (absl::Status s = txn.MapRanges(ranges, prot); !s.ok()) {
    txn.FreeIova(*iova, *size);
    dev->RefundMapping(*size);
    return free_buffer(s);
  }
  AllocResult out{.dma_addr = *iova,
                  .domain_id = d->id(),
                  .buffer_id = buffer_id,
                  .size_bytes = *size,
                  .runs = buffer->runs};
  // Which page sizes the table used: walk the leaves of the range.
  for (uint64_t off = 0; off < *size;) {
    auto w = txn.pgtable()->Walk(*iova + off);
    assert(w.ok());
    if (std::find(out.page_sizes_used.begin(), out.page_sizes_used.end(), w->leaf_size_bytes) ==
        out.page_sizes_used.end()) {
      out.page_sizes_used.push_back(w->leaf_size_bytes);
    }
    off = w->leaf_iova.value() + w->leaf_size_bytes - iova->value();
  }
  std::sort(out.page_sizes_used.rbegin(), out.page_sizes_used.rend());
  // The mapping holds the buffer through owned_buffer_id, not a reference.
  MappingRecord& rec = txn.Insert(*iova, *size, *size, caller.session_id);
  rec.kind = MappingKind::kAlloc;
  rec.device = device;
  rec.owner = dev;
  rec.iova_from_allocator = true;
  rec.prot = prot;
  rec.owned_buffer_id = buffer_id;
  for (const auto& [pt_iova, r] : ranges) {
    rec.pt_ranges.push_back({pt_iova, r});
    rec.pieces.push_back({pt_iova, r.start, r.size_bytes});
  }
  out.mapping_id = rec.mapping_id;
  return durable.Reply(out);
}

absl::Status Broker::Free(const Caller& caller, const std::string& device, Iova dma_addr) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  uint64_t buffer_id;
  {
    BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
    Domain::Transaction txn(*d, refs);
    ASSIGN_OR_RETURN(MappingRecord * m,
                     BrokerImpl::OwnMapping(txn, caller, device, dma_addr.value(),
                                            {MappingKind::kAlloc}, "Free"));
    buffer_id = m->owned_buffer_id;
  }
  // The exporter can always free: its exports are revoked and their imports
  // unmapped first (outside this domain's lock: an import may live here).
  impl_->RevokeExports(impl_->buffers_->ExportsOf(buffer_id));
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  ASSIGN_OR_RETURN(MappingRecord * m, BrokerImpl::OwnMapping(txn, caller, device, dma_addr.value(),
                                                             {MappingKind::kAlloc}, "Free"));
  txn.Remove(m->iova.value());
  return durable.Reply(absl::OkStatus());
}

// --- GetSgTable ---------------------------------------------------------------------

absl::StatusOr<SgTableResult> Broker::GetSgTable(const Caller& caller, const std::string& device,
                                                 Iova dma_addr, std::optional<ExportGrant> grant) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  if (grant.has_value()) {
    RETURN_IF_ERROR(impl_->CheckDeviceList("export_importers", grant->importers));
  }
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  ASSIGN_OR_RETURN(
      MappingRecord * m,
      BrokerImpl::OwnMapping(txn, caller, device, dma_addr.value(),
                             {MappingKind::kMap, MappingKind::kMapSg, MappingKind::kAlloc,
                              MappingKind::kMapAt, MappingKind::kImport},
                             "GetSgTable"));
  // The memory behind the handle, exactly: the pieces as mapped (never the
  // granule padding), merged into maximal physically contiguous chunks.
  SgTableResult out;
  for (const internal::MappedPiece& p : m->pieces) {
    if (!out.chunks.empty() && out.chunks.back().start + out.chunks.back().size_bytes == p.phys) {
      out.chunks.back().size_bytes += p.size_bytes;
    } else {
      out.chunks.push_back({p.phys, p.size_bytes});
    }
    out.size_bytes += p.size_bytes;
  }
  if (grant.has_value()) {
    if (m->kind == MappingKind::kImport) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "dma_addr", dma_addr.value(),
                        "an imported buffer cannot be exported again; its exporter can export "
                        "it to more devices");
    }
    std::vector<uint64_t> ids;
    for (const internal::BufferRef& b : m->buffer_refs) ids.push_back(b.id);
    if (m->owned_buffer_id != 0) ids.push_back(m->owned_buffer_id);
    if (ids.empty()) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "dma_addr", dma_addr.value(),
                        "only buffer-backed mappings can be exported");
    }
    // The reply joins the export's commit.
    RETURN_IF_ERROR(impl_->buffers_
                        ->CreateExport(*dev, d->granule_bytes(), out.chunks, std::move(ids), *grant,
                                       [&](const std::string& token) {
                                         out.export_token = token;
                                         internal::CaptureReply(out);
                                       })
                        .status());
    return out;
  }
  return durable.Reply(out);
}

absl::StatusOr<uint64_t> Broker::RevokeExport(const Caller& caller,
                                              const std::string& export_token) {
  BrokerImpl::DurableReply durable(*impl_);
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  const std::optional<uint64_t> export_id =
      impl_->buffers_->FindExport(export_token, caller.admin ? "" : caller.device);
  if (!export_id.has_value()) {
    return FieldError(absl::StatusCode::kNotFound, "export_token", export_token,
                      "no such export (never made, revoked, or its buffer was freed)");
  }
  return durable.Reply(impl_->RevokeExports({*export_id}));
}

// --- export revocation ------------------------------------------------------------

uint64_t BrokerImpl::RevokeExports(absl::Span<const uint64_t> export_ids) {
  std::vector<internal::ExportRecord::Import> imports;
  for (uint64_t id : export_ids) {
    std::vector<internal::ExportRecord::Import> more = buffers_->EraseExport(id);
    imports.insert(imports.end(), std::make_move_iterator(more.begin()),
                   std::make_move_iterator(more.end()));
  }
  // The exports are gone, so no new import can start; unmap the live ones.
  uint64_t unmapped = 0;
  for (const auto& i : imports) {
    std::shared_ptr<Domain> d = i.domain.lock();
    if (d == nullptr) continue;  // destroyed: its mappings went with it
    Buffers::Refs refs(*buffers_);
    Domain::Transaction txn(*d, refs);
    MappingRecord* m = txn.FindStart(i.iova);
    if (m == nullptr || m->mapping_id != i.mapping_id) continue;  // already unmapped
    txn.Remove(i.iova);
    // A lazy domain completes the invalidation now: revocation ends access.
    txn.FlushQueue();
    ++unmapped;
  }
  return unmapped;
}

}  // namespace iommu::core
