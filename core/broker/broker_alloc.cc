// dma_alloc_attrs / dma_free_attrs and dma_get_sgtable (with export tokens).

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/secure_random.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::MappingKind;
using internal::MappingRecord;

// --- Alloc / Free -------------------------------------------------------------------

absl::StatusOr<AllocResult> Broker::Alloc(const Caller& caller, const AllocRequest& request) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, request.device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  if (d->type != DomainType::kDma && d->type != DomainType::kDmaFq) {
    return BrokerImpl::NeedsIovaCookie(*d, "Alloc");
  }
  if (request.size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const uint64_t g = d->granule_bytes;
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
  internal::Buffer* buffer = nullptr;
  {
    absl::MutexLock bl(&impl_->buffers_mu_);
    absl::Status last;
    for (Placement p : tries) {
      auto b = impl_->NewBufferLocked(*dev, caller.session_id, *size, p, request.pool);
      if (b.ok()) {
        buffer = *b;
        break;
      }
      last = b.status();
      if (last.code() != absl::StatusCode::kResourceExhausted) break;
    }
    if (buffer == nullptr) return last;
    buffer->backs_alloc = true;
    buffer->map_refs = 1;  // held by the mapping below
  }
  const uint64_t buffer_id = buffer->buffer_id;
  const std::vector<PhysRun> runs = buffer->alloc.runs;  // immutable after creation
  auto free_buffer = [&](absl::Status s) {
    absl::MutexLock bl(&impl_->buffers_mu_);
    impl_->buffers_.at(buffer_id).map_refs = 0;
    const absl::Status fs = impl_->FreeBufferLocked(buffer_id);
    assert(fs.ok());
    (void)fs;
    return s;
  };
  if (absl::Status s = impl_->ChargeMapping(*dev, *size); !s.ok()) return free_buffer(s);
  absl::MutexLock l(&d->mu);
  auto iova = impl_->AllocIovaLocked(*d, *dev, *size);
  if (!iova.ok()) {
    impl_->RefundMapping(*dev, *size);
    return free_buffer(iova.status());
  }
  MappingRecord rec{.kind = MappingKind::kAlloc,
                    .device = request.device,
                    .session_id = caller.session_id,
                    .iova = *iova,
                    .iova_size_bytes = *size,
                    .iova_from_allocator = true,
                    .prot = impl_->ProtFor(*dev, request.direction, request.attrs),
                    .owned_buffer_id = buffer_id,
                    .mapped_bytes = *size};
  std::vector<std::pair<Iova, PhysRun>> ranges;
  Iova at = *iova;
  for (const PhysRun& r : runs) {
    ranges.push_back({at, r});
    rec.pt_ranges.push_back({at, r.size_bytes});
    rec.pieces.push_back({at, r.start, r.size_bytes});
    at += r.size_bytes;
  }
  if (absl::Status s = impl_->MapPiecesLocked(*d, ranges, rec.prot); !s.ok()) {
    impl_->FreeIovaLocked(*d, *iova, *size);
    impl_->RefundMapping(*dev, *size);
    return free_buffer(s);
  }
  AllocResult out{
      .dma_addr = iova->value(), .domain_id = d->id, .buffer_id = buffer_id, .size_bytes = *size};
  for (const PhysRun& r : runs) {
    if (!out.runs.empty() && out.runs.back().start + out.runs.back().size_bytes == r.start) {
      out.runs.back().size_bytes += r.size_bytes;
    } else {
      out.runs.push_back(r);
    }
  }
  // Which page sizes the table used: walk the leaves of the range.
  for (uint64_t off = 0; off < *size;) {
    auto w = d->pgtable->Walk(*iova + off);
    assert(w.ok());
    if (std::find(out.page_sizes_used.begin(), out.page_sizes_used.end(), w->leaf_size_bytes) ==
        out.page_sizes_used.end()) {
      out.page_sizes_used.push_back(w->leaf_size_bytes);
    }
    off = w->leaf_iova.value() + w->leaf_size_bytes - iova->value();
  }
  std::sort(out.page_sizes_used.rbegin(), out.page_sizes_used.rend());
  // The mapping holds the buffer through owned_buffer_id, not a reference.
  {
    absl::MutexLock bl(&impl_->buffers_mu_);
    impl_->buffers_.at(buffer_id).map_refs = 0;
  }
  out.mapping_id = impl_->CommitMappingLocked(*d, std::move(rec));
  return out;
}

absl::Status Broker::Free(const Caller& caller, const std::string& device, uint64_t dma_addr) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  uint64_t buffer_id;
  {
    absl::MutexLock l(&d->mu);
    ASSIGN_OR_RETURN(MappingRecord * m, BrokerImpl::OwnMapping(*d, caller, device, dma_addr,
                                                               {MappingKind::kAlloc}, "Free"));
    buffer_id = m->owned_buffer_id;
  }
  // The exporter can always free: its exports are revoked and their imports
  // unmapped first (outside this domain's lock: an import may live here).
  impl_->RevokeExports(impl_->ExportsOf(buffer_id));
  absl::MutexLock l(&d->mu);
  ASSIGN_OR_RETURN(MappingRecord * m, BrokerImpl::OwnMapping(*d, caller, device, dma_addr,
                                                             {MappingKind::kAlloc}, "Free"));
  impl_->RemoveMappingLocked(*d, m->iova.value());
  return absl::OkStatus();
}

// --- GetSgTable ---------------------------------------------------------------------

absl::StatusOr<SgTableResult> Broker::GetSgTable(const Caller& caller, const std::string& device,
                                                 uint64_t dma_addr,
                                                 std::optional<ExportGrant> grant) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  if (grant.has_value()) {
    RETURN_IF_ERROR(impl_->CheckDeviceList("export_importers", grant->importers));
  }
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  absl::MutexLock l(&d->mu);
  ASSIGN_OR_RETURN(
      MappingRecord * m,
      BrokerImpl::OwnMapping(*d, caller, device, dma_addr,
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
      return FieldError(absl::StatusCode::kFailedPrecondition, "dma_addr", dma_addr,
                        "an imported buffer cannot be exported again; its exporter can export "
                        "it to more devices");
    }
    std::vector<uint64_t> ids(m->buffer_refs.begin(), m->buffer_refs.end());
    if (m->owned_buffer_id != 0) ids.push_back(m->owned_buffer_id);
    if (ids.empty()) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "dma_addr", dma_addr,
                        "only buffer-backed mappings can be exported");
    }
    absl::MutexLock bl(&impl_->buffers_mu_);
    if (dev->exports >= dev->quotas.max_exports) {
      return FieldError(absl::StatusCode::kResourceExhausted, "device", device,
                        absl::StrFormat("export quota of %d live export tokens reached; revoke "
                                        "some first",
                                        dev->quotas.max_exports));
    }
    ++dev->exports;
    const uint64_t export_id = impl_->next_export_id_++;
    do {
      out.export_token = SecureToken("iexp_", 16);
    } while (impl_->exports_.contains(out.export_token));
    impl_->export_tokens_[export_id] = out.export_token;
    for (uint64_t b : ids) impl_->buffers_.at(b).exports.push_back(export_id);
    impl_->exports_[out.export_token] =
        internal::ExportRecord{.export_id = export_id,
                               .exporter = device,
                               .exporter_granule = d->granule_bytes,
                               .chunks = out.chunks,
                               .buffer_ids = std::move(ids),
                               .importers_allowed = std::move(grant->importers),
                               .writable = grant->writable};
  }
  return out;
}

absl::StatusOr<uint64_t> Broker::RevokeExport(const Caller& caller,
                                              const std::string& export_token) {
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  uint64_t export_id;
  {
    absl::MutexLock bl(&impl_->buffers_mu_);
    auto it = impl_->exports_.find(export_token);
    if (it == impl_->exports_.end() || (!caller.admin && it->second.exporter != caller.device)) {
      return FieldError(absl::StatusCode::kNotFound, "export_token", export_token,
                        "no such export (never made, revoked, or its buffer was freed)");
    }
    export_id = it->second.export_id;
  }
  return impl_->RevokeExports({export_id});
}

// --- export revocation ------------------------------------------------------------

uint64_t BrokerImpl::RevokeExports(absl::Span<const uint64_t> export_ids) {
  std::vector<internal::ExportRecord::Import> imports;
  {
    absl::MutexLock bl(&buffers_mu_);
    for (uint64_t id : export_ids) {
      std::vector<internal::ExportRecord::Import> more = EraseExportLocked(id);
      imports.insert(imports.end(), std::make_move_iterator(more.begin()),
                     std::make_move_iterator(more.end()));
    }
  }
  // The exports are gone, so no new import can start; unmap the live ones.
  uint64_t unmapped = 0;
  for (const auto& i : imports) {
    std::shared_ptr<Domain> d = i.domain.lock();
    if (d == nullptr) continue;  // destroyed: its mappings went with it
    absl::MutexLock l(&d->mu);
    MappingRecord* m = d->mappings.FindStart(i.iova);
    if (m == nullptr || m->mapping_id != i.mapping_id) continue;  // already unmapped
    RemoveMappingLocked(*d, i.iova);
    // A lazy domain completes the invalidation now: revocation ends access.
    if (auto* c = std::get_if<internal::IovaCookie>(&d->cookie); c && c->fq) c->fq->Flush();
    ++unmapped;
  }
  return unmapped;
}

std::vector<uint64_t> BrokerImpl::ExportsOf(uint64_t buffer_id) {
  absl::MutexLock bl(&buffers_mu_);
  auto it = buffers_.find(buffer_id);
  return it == buffers_.end() ? std::vector<uint64_t>{} : it->second.exports;
}

std::vector<internal::ExportRecord::Import> BrokerImpl::EraseExportLocked(uint64_t export_id) {
  auto token = export_tokens_.find(export_id);
  if (token == export_tokens_.end()) return {};  // already revoked
  auto e = exports_.find(token->second);
  std::vector<internal::ExportRecord::Import> imports = std::move(e->second.imports);
  for (uint64_t b : e->second.buffer_ids) {
    auto& ids = buffers_.at(b).exports;
    ids.erase(std::remove(ids.begin(), ids.end(), export_id), ids.end());
  }
  --devices_.at(e->second.exporter)->exports;
  exports_.erase(e);
  export_tokens_.erase(token);
  return imports;
}

void BrokerImpl::ForgetImportLocked(const MappingRecord& m) {
  auto token = export_tokens_.find(m.export_id);
  if (token == export_tokens_.end()) return;  // revoked
  auto& imports = exports_.at(token->second).imports;
  imports.erase(std::remove_if(imports.begin(), imports.end(),
                               [&](const internal::ExportRecord::Import& i) {
                                 return i.mapping_id == m.mapping_id;
                               }),
                imports.end());
}

}  // namespace iommu::core
