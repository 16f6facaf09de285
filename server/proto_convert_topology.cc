// SPDX-License-Identifier: Apache-2.0
// Topology conversions of proto_convert.h: iommu.v1.Topology <-> core::Topology.
#include "absl/strings/str_cat.h"
#include "core/base/errors.h"
#include "server/proto_convert.h"

namespace iommu::server {
namespace {

std::string Indexed(const char* list, int i, const char* field) {
  return absl::StrCat(list, "[", i, "].", field);
}

}  // namespace

absl::StatusOr<core::Topology> FromProto(const v1::Topology& topology) {
  core::Topology out;
  for (int i = 0; i < topology.smmus_size(); ++i) {
    const v1::SmmuConfig& s = topology.smmus(i);
    core::SmmuConfig smmu{.name = s.name(),
                          .ias_bits = s.ias_bits(),
                          .oas_bits = s.oas_bits(),
                          .granules = 0,
                          .num_contexts = s.num_contexts(),
                          .iotlb_sets = s.iotlb_sets(),
                          .iotlb_ways = s.iotlb_ways()};
    switch (s.stage()) {
      case v1::STAGE_1:
        smmu.stage = core::Stage::kStage1;
        break;
      case v1::STAGE_2:
        smmu.stage = core::Stage::kStage2;
        break;
      default:
        return core::InvalidField(Indexed("smmus", i, "stage"), uint64_t(s.stage()),
                                  "must be STAGE_1 or STAGE_2");
    }
    for (uint64_t g : s.granules_bytes()) {
      if (g != core::kGranule4K && g != core::kGranule16K && g != core::kGranule64K) {
        return core::InvalidField(Indexed("smmus", i, "granules_bytes"), g,
                                  "must be 4096, 16384 or 65536");
      }
      smmu.granules |= g;
    }
    out.smmus.push_back(std::move(smmu));
  }
  for (int i = 0; i < topology.regions_size(); ++i) {
    const v1::MemoryRegion& r = topology.regions(i);
    core::MemoryRegionConfig region{
        .name = r.name(), .base = core::PhysAddr(r.base_phys_addr()), .size_bytes = r.size_bytes()};
    switch (r.kind()) {
      case v1::REGION_KIND_RAM:
        region.kind = core::RegionKind::kRam;
        break;
      case v1::REGION_KIND_MMIO:
        region.kind = core::RegionKind::kMmio;
        break;
      default:
        return core::InvalidField(Indexed("regions", i, "kind"), uint64_t(r.kind()),
                                  "must be RAM or MMIO");
    }
    out.memory.regions.push_back(std::move(region));
  }
  for (const v1::Pool& p : topology.pools()) {
    core::PoolConfig pool{.name = p.name(), .priority = p.priority()};
    for (const v1::PoolRange& r : p.ranges()) {
      pool.ranges.push_back(
          {.base = core::PhysAddr(r.base_phys_addr()), .size_bytes = r.size_bytes()});
    }
    out.memory.pools.push_back(std::move(pool));
  }
  for (const v1::DeviceConfig& d : topology.devices()) {
    core::DeviceConfig device{.name = d.name(),
                              .smmu = d.smmu(),
                              .stream_id = d.stream_id(),
                              .dma_mask_bits = d.dma_mask_bits(),
                              .coherent = d.coherent(),
                              .trusted = !d.untrusted(),
                              .scatter_gather = !d.no_scatter_gather(),
                              .pci = d.pci(),
                              .msi_doorbell = d.msi_doorbell_region(),
                              .msi_doorbell_offset = d.msi_doorbell_offset()};
    if (d.max_segment_size_bytes() != 0) device.max_segment_size_bytes = d.max_segment_size_bytes();
    if (d.segment_boundary_mask() != 0) device.segment_boundary_mask = d.segment_boundary_mask();
    const v1::DeviceQuotas& q = d.quotas();
    device.quotas = {.max_mapped_bytes = q.max_mapped_bytes(),
                     .max_mappings = q.max_mappings(),
                     .max_buffers = q.max_buffers(),
                     .max_buffer_bytes = q.max_buffer_bytes(),
                     .max_domains = q.max_domains(),
                     .max_sessions = q.max_sessions(),
                     .max_exports = q.max_exports()};
    out.devices.push_back(std::move(device));
  }
  return out;
}

void ToProto(const core::SmmuConfig& smmu, v1::SmmuConfig* out) {
  out->set_name(smmu.name);
  out->set_stage(smmu.stage == core::Stage::kStage1 ? v1::STAGE_1 : v1::STAGE_2);
  out->set_ias_bits(smmu.ias_bits);
  out->set_oas_bits(smmu.oas_bits);
  for (uint64_t g : {core::kGranule4K, core::kGranule16K, core::kGranule64K}) {
    if (smmu.granules & g) out->add_granules_bytes(g);
  }
  out->set_num_contexts(smmu.num_contexts);
  out->set_iotlb_sets(smmu.iotlb_sets);
  out->set_iotlb_ways(smmu.iotlb_ways);
}

void ToProto(const core::DeviceConfig& d, v1::DeviceConfig* out) {
  out->set_name(d.name);
  out->set_smmu(d.smmu);
  out->set_stream_id(d.stream_id);
  out->set_dma_mask_bits(d.dma_mask_bits);
  out->set_coherent(d.coherent);
  out->set_max_segment_size_bytes(d.max_segment_size_bytes);
  out->set_segment_boundary_mask(d.segment_boundary_mask);
  out->set_untrusted(!d.trusted);
  out->set_no_scatter_gather(!d.scatter_gather);
  out->set_pci(d.pci);
  out->set_msi_doorbell_region(d.msi_doorbell);
  out->set_msi_doorbell_offset(d.msi_doorbell_offset);
  v1::DeviceQuotas* q = out->mutable_quotas();
  q->set_max_mapped_bytes(d.quotas.max_mapped_bytes);
  q->set_max_mappings(d.quotas.max_mappings);
  q->set_max_buffers(d.quotas.max_buffers);
  q->set_max_buffer_bytes(d.quotas.max_buffer_bytes);
  q->set_max_domains(d.quotas.max_domains);
  q->set_max_sessions(d.quotas.max_sessions);
  q->set_max_exports(d.quotas.max_exports);
}

void ToProto(const core::Topology& topology, v1::Topology* out) {
  for (const core::SmmuConfig& s : topology.smmus) ToProto(s, out->add_smmus());
  for (const core::MemoryRegionConfig& r : topology.memory.regions) {
    v1::MemoryRegion* p = out->add_regions();
    p->set_name(r.name);
    p->set_kind(r.kind == core::RegionKind::kRam ? v1::REGION_KIND_RAM : v1::REGION_KIND_MMIO);
    p->set_base_phys_addr(r.base.value());
    p->set_size_bytes(r.size_bytes);
  }
  for (const core::PoolConfig& pool : topology.memory.pools) {
    v1::Pool* p = out->add_pools();
    p->set_name(pool.name);
    p->set_priority(pool.priority);
    for (const core::PoolRangeConfig& r : pool.ranges) {
      v1::PoolRange* pr = p->add_ranges();
      pr->set_base_phys_addr(r.base.value());
      pr->set_size_bytes(r.size_bytes);
    }
  }
  for (const core::DeviceConfig& d : topology.devices) ToProto(d, out->add_devices());
}

}  // namespace iommu::server
