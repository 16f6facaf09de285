// SPDX-License-Identifier: Apache-2.0
#include "server/proto_convert.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"

namespace iommu::server {
namespace {

absl::Status BadEnum(const char* field, int value, const char* allowed) {
  return core::InvalidField(field, static_cast<uint64_t>(static_cast<uint32_t>(value)),
                            absl::StrCat("must be one of ", allowed));
}

void ToProto(const core::PhysRun& run, v1::PhysRun* out) {
  out->set_phys_addr(run.start.value());
  out->set_size_bytes(run.size_bytes);
}

v1::DomainType DomainTypeToProto(core::DomainType type) {
  switch (type) {
    case core::DomainType::kDma:
      return v1::DOMAIN_TYPE_DMA;
    case core::DomainType::kDmaFq:
      return v1::DOMAIN_TYPE_DMA_FQ;
    case core::DomainType::kUnmanaged:
      return v1::DOMAIN_TYPE_UNMANAGED;
    case core::DomainType::kIdentity:
      return v1::DOMAIN_TYPE_IDENTITY;
    case core::DomainType::kBlocked:
      return v1::DOMAIN_TYPE_BLOCKED;
  }
  return v1::DOMAIN_TYPE_UNSPECIFIED;
}

v1::Placement PlacementToProto(core::Placement placement) {
  switch (placement) {
    case core::Placement::kScattered:
      return v1::PLACEMENT_SCATTERED;
    case core::Placement::kContiguous:
      return v1::PLACEMENT_CONTIGUOUS;
    case core::Placement::kHuge:
      return v1::PLACEMENT_HUGE;
  }
  return v1::PLACEMENT_UNSPECIFIED;
}

v1::AccessKind AccessToProto(core::AccessKind kind) {
  switch (kind) {
    case core::AccessKind::kRead:
      return v1::ACCESS_KIND_READ;
    case core::AccessKind::kWrite:
      return v1::ACCESS_KIND_WRITE;
    case core::AccessKind::kExec:
      return v1::ACCESS_KIND_EXEC;
  }
  return v1::ACCESS_KIND_UNSPECIFIED;
}

}  // namespace

// --- requests -------------------------------------------------------------------------

absl::StatusOr<core::DmaDirection> FromProto(v1::DmaDirection direction) {
  switch (direction) {
    case v1::DMA_DIRECTION_BIDIRECTIONAL:
      return core::DmaDirection::kBidirectional;
    case v1::DMA_DIRECTION_TO_DEVICE:
      return core::DmaDirection::kToDevice;
    case v1::DMA_DIRECTION_FROM_DEVICE:
      return core::DmaDirection::kFromDevice;
    default:
      return BadEnum("direction", direction, "BIDIRECTIONAL, TO_DEVICE, FROM_DEVICE");
  }
}

absl::StatusOr<core::Placement> FromProto(v1::Placement placement) {
  switch (placement) {
    case v1::PLACEMENT_SCATTERED:
      return core::Placement::kScattered;
    case v1::PLACEMENT_CONTIGUOUS:
      return core::Placement::kContiguous;
    case v1::PLACEMENT_HUGE:
      return core::Placement::kHuge;
    default:
      return BadEnum("placement", placement, "SCATTERED, CONTIGUOUS, HUGE");
  }
}

absl::StatusOr<core::DomainType> FromProto(v1::DomainType type) {
  switch (type) {
    case v1::DOMAIN_TYPE_DMA:
      return core::DomainType::kDma;
    case v1::DOMAIN_TYPE_DMA_FQ:
      return core::DomainType::kDmaFq;
    case v1::DOMAIN_TYPE_UNMANAGED:
      return core::DomainType::kUnmanaged;
    case v1::DOMAIN_TYPE_IDENTITY:
      return core::DomainType::kIdentity;
    case v1::DOMAIN_TYPE_BLOCKED:
      return core::DomainType::kBlocked;
    default:
      return BadEnum("type", type, "DMA, DMA_FQ, UNMANAGED, IDENTITY, BLOCKED");
  }
}

absl::StatusOr<core::SgMode> FromProto(v1::SgMode mode) {
  switch (mode) {
    case v1::SG_MODE_DMA_API:
      return core::SgMode::kDmaApi;
    case v1::SG_MODE_MERGE:
      return core::SgMode::kMerge;
    case v1::SG_MODE_CONTIGUOUS:
      return core::SgMode::kContiguous;
    default:
      return BadEnum("mode", mode, "DMA_API, MERGE, CONTIGUOUS");
  }
}

absl::StatusOr<core::AccessKind> FromProto(v1::AccessKind access) {
  switch (access) {
    case v1::ACCESS_KIND_READ:
      return core::AccessKind::kRead;
    case v1::ACCESS_KIND_WRITE:
      return core::AccessKind::kWrite;
    case v1::ACCESS_KIND_EXEC:
      return core::AccessKind::kExec;
    default:
      return BadEnum("access", access, "READ, WRITE, EXEC");
  }
}

core::DmaAttrs FromProto(const v1::DmaAttrs& attrs) {
  return core::DmaAttrs{.privileged = attrs.privileged(),
                        .no_kernel_mapping = attrs.no_kernel_mapping(),
                        .force_contiguous = attrs.force_contiguous(),
                        .alloc_single_pages = attrs.alloc_single_pages()};
}

absl::StatusOr<core::MemRef> FromProto(const v1::MemRef& mem, absl::string_view field) {
  core::MemRef out{.offset_bytes = mem.offset_bytes(), .length_bytes = mem.length_bytes()};
  switch (mem.memory_case()) {
    case v1::MemRef::kBufferId:
      if (mem.buffer_id() == 0) {
        return core::FieldError(absl::StatusCode::kNotFound, absl::StrCat(field, ".buffer_id"), 0,
                                "no such buffer");
      }
      out.buffer_id = mem.buffer_id();
      return out;
    case v1::MemRef::kPhysAddr:
      out.phys = core::PhysAddr(mem.phys_addr());
      return out;
    case v1::MemRef::MEMORY_NOT_SET:
      break;
  }
  return core::FieldError(absl::StatusCode::kInvalidArgument, field, "",
                          "must set buffer_id or phys_addr");
}

absl::StatusOr<core::MapRequest> FromProto(const v1::MapRequest& request) {
  absl::StatusOr<core::MemRef> mem = FromProto(request.mem(), "mem");
  if (!mem.ok()) return mem.status();
  absl::StatusOr<core::DmaDirection> direction = FromProto(request.direction());
  if (!direction.ok()) return direction.status();
  return core::MapRequest{
      .mem = *mem, .direction = *direction, .attrs = FromProto(request.attrs())};
}

core::UnmapRequest FromProto(const v1::UnmapRequest& request) {
  return core::UnmapRequest{.dma_addr = core::Iova(request.dma_addr())};
}

absl::StatusOr<core::MapAtRequest> FromProto(const v1::MapAtRequest& request) {
  ASSIGN_OR_RETURN(core::MemRef mem, FromProto(request.mem(), "mem"));
  ASSIGN_OR_RETURN(core::DmaDirection direction, FromProto(request.direction()));
  return core::MapAtRequest{.iova = core::Iova(request.iova()),
                            .mem = mem,
                            .direction = direction,
                            .attrs = FromProto(request.attrs())};
}

absl::StatusOr<core::MapSgRequest> FromProto(const v1::MapSgRequest& request) {
  core::MapSgRequest out{.import_token = request.import_token(),
                         .attrs = FromProto(request.attrs())};
  out.segments.reserve(request.segments_size());
  for (int i = 0; i < request.segments_size(); ++i) {
    auto mem = FromProto(request.segments(i), absl::StrCat("segments[", i, "]"));
    if (!mem.ok()) return mem.status();
    out.segments.push_back(*mem);
  }
  auto mode = FromProto(request.mode());
  if (!mode.ok()) return mode.status();
  out.mode = *mode;
  auto direction = FromProto(request.direction());
  if (!direction.ok()) return direction.status();
  out.direction = *direction;
  return out;
}

absl::StatusOr<core::AllocRequest> FromProto(const v1::AllocRequest& request) {
  core::AllocRequest out{.size_bytes = request.size_bytes(),
                         .attrs = FromProto(request.attrs()),
                         .pool = request.pool()};
  auto direction = FromProto(request.direction());
  if (!direction.ok()) return direction.status();
  out.direction = *direction;
  return out;
}

core::MsiCookieRequest FromProto(const v1::MsiCookieRequest& request) {
  core::MsiCookieRequest out{.window = {.base = core::Iova(request.window_base()),
                                        .size_bytes = request.window_size_bytes()}};
  if (request.domain_id() != 0) out.domain_id = request.domain_id();
  return out;
}

absl::StatusOr<core::CreateDomainRequest> FromProto(const v1::CreateDomainRequest& request) {
  auto type = FromProto(request.type());
  if (!type.ok()) return type.status();
  return core::CreateDomainRequest{
      .smmu = request.smmu(),
      .type = *type,
      .granule_bytes = request.granule_bytes(),
      .granted_devices = {request.granted_devices().begin(), request.granted_devices().end()}};
}

absl::StatusOr<core::TranslateRequest> FromProto(const v1::TranslateRequest& request,
                                                 const std::string& device) {
  auto kind = FromProto(request.access());
  if (!kind.ok()) return kind.status();
  core::TranslateRequest out{.device = device,
                             .smmu = request.smmu(),
                             .iova = core::Iova(request.iova()),
                             .length_bytes = request.length_bytes(),
                             .access = {.kind = *kind, .privileged = request.privileged()}};
  if (request.has_stream_id()) out.stream_id = request.stream_id();
  return out;
}

absl::StatusOr<core::TranslateRequest> FromProto(const v1::TranslateOp& request,
                                                 const std::string& device) {
  auto kind = FromProto(request.access());
  if (!kind.ok()) return kind.status();
  return core::TranslateRequest{.device = device,
                                .iova = core::Iova(request.iova()),
                                .length_bytes = request.length_bytes(),
                                .access = {.kind = *kind, .privileged = request.privileged()}};
}

// --- results -------------------------------------------------------------------------

void ToProto(const core::MapResult& result, v1::MapResponse* out) {
  out->set_dma_addr(result.dma_addr.value());
  out->set_mapping_id(result.mapping_id);
  out->set_domain_id(result.domain_id);
  out->set_iova_size_bytes(result.iova_size_bytes);
}

void ToProto(const core::MapSgResult& result, v1::MapSgResponse* out) {
  out->set_mapping_id(result.mapping_id);
  out->set_domain_id(result.domain_id);
  out->set_iova(result.iova.value());
  out->set_iova_size_bytes(result.iova_size_bytes);
  out->mutable_segments()->Reserve(static_cast<int>(result.segments.size()));
  for (const core::DmaSegment& s : result.segments) {
    v1::DmaSegment* seg = out->add_segments();
    seg->set_dma_addr(s.dma_addr.value());
    seg->set_length_bytes(s.length_bytes);
  }
  out->set_segment_count(static_cast<uint32_t>(result.segments.size()));
}

void ToProto(const core::AllocResult& result, v1::AllocResponse* out) {
  out->set_dma_addr(result.dma_addr.value());
  out->set_mapping_id(result.mapping_id);
  out->set_domain_id(result.domain_id);
  out->set_buffer_id(result.buffer_id);
  out->set_size_bytes(result.size_bytes);
  for (const core::PhysRun& run : result.runs) ToProto(run, out->add_runs());
  for (uint64_t size : result.page_sizes_used) out->add_page_sizes_bytes(size);
}

void ToProto(const core::SgTableResult& result, v1::GetSgTableResponse* out) {
  for (const core::PhysRun& run : result.chunks) ToProto(run, out->add_chunks());
  out->set_size_bytes(result.size_bytes);
  out->set_export_token(result.export_token);
}

void ToProto(const core::MsiCookieResult& result, v1::MsiCookieResponse* out) {
  out->set_msi_addr(result.msi_addr.value());
  out->set_domain_id(result.domain_id);
  out->set_newly_mapped(result.newly_mapped);
}

void ToProto(const core::BufferInfo& buffer, v1::Buffer* out) {
  out->set_buffer_id(buffer.buffer_id);
  out->set_device(buffer.device);
  out->set_size_bytes(buffer.size_bytes);
  out->set_pool(buffer.pool);
  out->set_placement(PlacementToProto(buffer.placement));
  for (const core::PhysRun& run : buffer.runs) ToProto(run, out->add_runs());
  out->set_map_count(buffer.map_count);
}

void ToProto(const core::DomainInfo& d, v1::Domain* out) {
  out->set_domain_id(d.domain_id);
  out->set_smmu(d.smmu);
  out->set_type(DomainTypeToProto(d.type));
  out->set_owner(d.owner);
  out->set_is_default(d.is_default);
  out->set_granule_bytes(d.granule_bytes);
  out->set_pgsize_bitmap(d.pgsize_bitmap);
  out->set_ias_bits(d.ias_bits);
  out->set_oas_bits(d.oas_bits);
  out->set_stage(d.stage == core::Stage::kStage1 ? v1::STAGE_1 : v1::STAGE_2);
  out->set_aperture_start(d.aperture_start.value());
  out->set_aperture_end(d.aperture_end.value());
  out->set_asid(d.asid);
  out->set_vmid(d.vmid);
  out->set_strict(d.strict);
  for (const std::string& dev : d.devices) out->add_devices(dev);
  for (const std::string& dev : d.granted_devices) out->add_granted_devices(dev);
  out->set_mappings(d.mappings);
  out->set_mapped_bytes(d.mapped_bytes);
  if (d.msi_window) {
    out->set_msi_window_base(d.msi_window->base.value());
    out->set_msi_window_size_bytes(d.msi_window->size_bytes);
  }
}

void ToProto(const core::IovaRangesResult& ranges, v1::GetIovaRangesResponse* out) {
  out->set_domain_id(ranges.domain_id);
  for (const core::IovaRange& r : ranges.usable) {
    v1::IovaRange* p = out->add_usable();
    p->set_start(r.start.value());
    p->set_end(r.end.value());
  }
  for (const core::ReservedRegion& r : ranges.reserved) {
    v1::ReservedRegion* p = out->add_reserved();
    p->set_start(r.start.value());
    p->set_end(r.end.value());
    p->set_kind(r.kind == core::ReservedKind::kMsi ? v1::RESERVED_KIND_MSI
                                                   : v1::RESERVED_KIND_RESERVED);
  }
}

void ToProto(const core::PgtableMapping& leaf, v1::PageTableLeaf* out) {
  out->set_iova(leaf.iova.value());
  out->set_phys_addr(leaf.phys.value());
  out->set_size_bytes(leaf.size_bytes);
  const uint8_t g = leaf.grant.bits();
  out->set_read(g & core::Grant::kReadUnpriv);
  out->set_write(g & core::Grant::kWriteUnpriv);
  out->set_exec(g & core::Grant::kExecUnpriv);
  out->set_privileged_read(g & core::Grant::kReadPriv);
  out->set_privileged_write(g & core::Grant::kWritePriv);
  out->set_privileged_exec(g & core::Grant::kExecPriv);
  out->set_mmio(core::Has(leaf.prot, core::Prot::kMmio));
  out->set_cacheable(core::Has(leaf.prot, core::Prot::kCache));
}

v1::FaultType FaultTypeToProto(core::FaultType type) {
  switch (type) {
    case core::FaultType::kTranslation:
      return v1::FAULT_TYPE_TRANSLATION;
    case core::FaultType::kPermission:
      return v1::FAULT_TYPE_PERMISSION;
    case core::FaultType::kAddressSize:
      return v1::FAULT_TYPE_ADDRESS_SIZE;
    case core::FaultType::kAccessBlocked:
      return v1::FAULT_TYPE_BLOCKED;
    case core::FaultType::kUnknownStream:
      return v1::FAULT_TYPE_UNKNOWN_STREAM;
  }
  return v1::FAULT_TYPE_UNSPECIFIED;
}

void ToProto(const core::TranslateResult& result, v1::TranslateResponse* out) {
  out->mutable_pages()->Reserve(static_cast<int>(result.pages.size()));
  for (const core::TranslatedPage& p : result.pages) {
    v1::TranslatedPage* page = out->add_pages();
    page->set_iova(p.iova.value());
    page->set_phys_addr(p.phys_addr.value());
    page->set_length_bytes(p.length_bytes);
    page->set_iotlb_hit(p.iotlb_hit);
    page->set_stale(p.stale);
  }
  out->set_faulted(result.faulted);
  if (result.faulted) {
    out->set_fault_type(FaultTypeToProto(result.fault_type));
    out->set_fault_iova(result.fault_iova.value());
    out->set_fault_seq(result.fault_seq);
  }
}

void ToProto(const core::TranslateResult& result, v1::TranslateOpResult* out) {
  if (!result.pages.empty()) out->set_phys_addr(result.pages.front().phys_addr.value());
  out->set_faulted(result.faulted);
  if (result.faulted) out->set_fault_type(FaultTypeToProto(result.fault_type));
}

void ToProto(const core::DeviceInfo& device, v1::DeviceInfo* out) {
  ToProto(device.config, out->mutable_config());
  // The quotas in force (topology overrides, flags, fair shares resolved),
  // not the topology's overrides alone.
  v1::DeviceQuotas* q = out->mutable_config()->mutable_quotas();
  q->set_max_mapped_bytes(device.quotas.max_mapped_bytes);
  q->set_max_mappings(device.quotas.max_mappings);
  q->set_max_buffers(device.quotas.max_buffers);
  q->set_max_buffer_bytes(device.quotas.max_buffer_bytes);
  q->set_max_domains(device.quotas.max_domains);
  q->set_max_sessions(device.quotas.max_sessions);
  q->set_max_exports(device.quotas.max_exports);
  out->set_current_domain_id(device.current_domain_id);
  out->set_default_domain_id(device.default_domain_id);
  out->set_mapped_bytes(device.mapped_bytes);
  out->set_mappings(device.mappings);
  out->set_buffers(device.buffers);
}

void ToProto(const core::FaultRecord& record, v1::FaultRecord* out) {
  out->set_seq(record.seq);
  out->set_type(FaultTypeToProto(record.type));
  out->set_smmu(record.smmu);
  out->set_stream_id(record.stream_id);
  out->set_device(record.device);
  out->set_domain_id(record.domain_id);
  out->set_iova(record.iova.value());
  out->set_access(AccessToProto(record.access.kind));
  out->set_privileged(record.access.privileged);
  out->set_timestamp_unix_nanos(absl::ToUnixNanos(record.timestamp));
}

void ToProto(const core::BrokerStats& stats, v1::GetStatsResponse* out) {
  for (const core::SmmuStats& s : stats.smmus) {
    v1::SmmuStats* p = out->add_smmus();
    p->set_name(s.name);
    v1::IotlbStats* t = p->mutable_iotlb();
    t->set_lookups(s.iotlb.lookups);
    t->set_hits(s.iotlb.hits);
    t->set_misses(s.iotlb.misses);
    t->set_stale_hits(s.iotlb.stale_hits);
    t->set_fills(s.iotlb.fills);
    t->set_evictions(s.iotlb.evictions);
    t->set_invalidations_all(s.iotlb.invalidations_all);
    t->set_invalidations_asid(s.iotlb.invalidations_asid);
    t->set_invalidations_vmid(s.iotlb.invalidations_vmid);
    t->set_invalidations_va(s.iotlb.invalidations_va);
    t->set_invalidations_va_leaf(s.iotlb.invalidations_va_leaf);
    t->set_entries(s.iotlb.occupancy);
    t->set_capacity(s.iotlb_capacity);
    p->set_contexts_total(s.contexts_total);
    p->set_contexts_used(s.contexts_used);
    p->set_translations_ok(s.translations_ok);
    p->set_translations_fault(s.translations_fault);
  }
  for (const core::DomainStats& d : stats.domains) {
    v1::DomainStats* p = out->add_domains();
    p->set_domain_id(d.domain_id);
    p->set_smmu(d.smmu);
    p->set_type(DomainTypeToProto(d.type));
    p->set_strict(d.strict);
    if (d.iova) {
      const core::IovaStats& s = *d.iova;
      const uint64_t g = s.granule_bytes;
      v1::IovaStats* i = p->mutable_iova();
      i->set_granule_bytes(g);
      i->set_space_bytes(s.space_pages * g);
      i->set_allocated_bytes(s.allocated_pages * g);
      i->set_cached_bytes(s.cached_pages * g);
      i->set_free_bytes(s.free_pages * g);
      i->set_reserved_bytes(s.reserved_pages * g);
      i->set_largest_free_bytes(s.largest_free_pages * g);
      i->set_free_ranges(s.free_ranges);
      int last = -1;
      for (int k = 0; k < int(std::size(s.free_range_histogram)); ++k) {
        if (s.free_range_histogram[k] != 0) last = k;
      }
      for (int k = 0; k <= last; ++k) i->add_free_range_histogram(s.free_range_histogram[k]);
      i->set_fragmentation_ratio(s.fragmentation_ratio);
      i->set_failures_no_space(s.failures[int(core::IovaFailureReason::kNoSpace)]);
      i->set_failures_fragmented(s.failures[int(core::IovaFailureReason::kFragmented)]);
      i->set_failures_beyond_limit(s.failures[int(core::IovaFailureReason::kBeyondLimit)]);
      i->set_cache_hits(s.cache_hits);
      i->set_cache_misses(s.cache_misses);
      i->set_live_allocations(s.live_allocations);
    }
    v1::PagetableStats* pt = p->mutable_pagetable();
    pt->set_tables(d.pgtable.table_count);
    pt->set_table_bytes(d.pgtable.table_bytes);
    pt->set_mapped_bytes(d.pgtable.mapped_bytes);
    for (const auto& leaf : d.pgtable.leaves) {
      (*pt->mutable_leaves_by_size_bytes())[leaf.size_bytes] = leaf.count;
    }
    p->set_mappings(d.mappings);
    p->set_mapped_bytes(d.mapped_bytes);
    if (d.flush_queue) {
      v1::FlushQueueStats* fq = p->mutable_flush_queue();
      fq->set_enqueued(d.flush_queue->enqueued);
      fq->set_flushes_full(d.flush_queue->flushes_full);
      fq->set_flushes_timeout(d.flush_queue->flushes_timeout);
      fq->set_flushes_explicit(d.flush_queue->flushes_explicit);
      fq->set_entries_released(d.flush_queue->entries_released);
      fq->set_depth(d.flush_queue->depth);
    }
  }
  for (const core::PoolStats& s : stats.pools) {
    v1::PoolStats* p = out->add_pools();
    p->set_name(s.name);
    p->set_priority(s.priority);
    p->set_total_bytes(s.total_pages * s.page_size_bytes);
    p->set_free_bytes(s.free_pages * s.page_size_bytes);
    p->set_largest_free_block_bytes(s.largest_free_block_bytes);
    p->set_allocations(s.allocations_total);
    p->set_failures(s.failures_total);
  }
  v1::FaultStats* f = out->mutable_faults();
  f->set_capacity(stats.faults.capacity);
  f->set_recorded(stats.faults.pushed_total);
  f->set_dropped(stats.faults.dropped_total);
  for (size_t i = 0; i < core::kNumFaultTypes; ++i) {
    (*f->mutable_by_type())[std::string(core::FaultTypeName(static_cast<core::FaultType>(i)))] =
        stats.faults.pushed_by_type[i];
  }
}

}  // namespace iommu::server
