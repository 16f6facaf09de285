// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_TOPOLOGY_H_
#define IOMMU_CORE_BROKER_TOPOLOGY_H_

// The host the broker models: SMMU instances, physical memory and devices.
// Plain structs (the server parses a textproto into its proto form and
// converts); ValidateTopology checks everything the model relies on, and
// DefaultTopology is the realistic built-in host `iommud` runs with no flags.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/base/types.h"
#include "core/memory/phys_memory.h"

namespace iommu::core {

enum class Stage { kStage1, kStage2 };

// Translation granules an SMMU implements (SMMU_IDR5.GRAN4K/16K/64K).
inline constexpr uint64_t kGranule4K = uint64_t{4} << 10;
inline constexpr uint64_t kGranule16K = uint64_t{16} << 10;
inline constexpr uint64_t kGranule64K = uint64_t{64} << 10;

// Page sizes (leaf and block) an LPAE table of `granule_bytes` can map, as
// Linux's pgsize_bitmap: 4K: 4K|2M|1G, 16K: 16K|32M, 64K: 64K|512M.
uint64_t PgsizeBitmapForGranule(uint64_t granule_bytes);

struct SmmuConfig {
  std::string name;
  Stage stage = Stage::kStage1;
  unsigned ias_bits = 48;          // input (IOVA or IPA) address size
  unsigned oas_bits = 48;          // output address size
  uint64_t granules = kGranule4K;  // bit set of kGranule* values
  unsigned num_contexts = 64;      // translation contexts (context banks / ASIDs)
  unsigned iotlb_sets = 256;       // IOTLB geometry: a power of two
  unsigned iotlb_ways = 4;
};

// Per-device limits. A field of 0 is "not set": a device's topology entry
// overrides the broker's defaults field by field, and what is still 0 gets
// the fair share computed from the topology, so that the defaults leave room
// for every device: buffer bytes = the pools' RAM / the number of devices;
// domains = the contexts of the device's SMMU left after every device's
// default domain, split evenly between its devices (at least 1).
struct Quotas {
  // Every field 0: what a device's topology entry starts from.
  static constexpr Quotas Unset() { return Quotas{0, 0, 0, 0, 0, 0, 0}; }

  uint64_t max_mapped_bytes = uint64_t{64} << 30;
  uint64_t max_mappings = 1u << 20;
  uint64_t max_buffers = 1u << 16;
  uint64_t max_buffer_bytes = 0;  // 0: fair share of the pools
  uint64_t max_domains = 0;       // 0: fair share of the SMMU's contexts
  uint64_t max_sessions = 64;
  uint64_t max_exports = 4096;  // live export tokens of its memory
};

struct DeviceConfig {
  std::string name;
  std::string smmu;
  uint32_t stream_id = 0;
  unsigned dma_mask_bits = 64;                     // the device can address [0, 2^bits)
  bool coherent = true;                            // I/O coherent: mappings may be cacheable
  uint64_t max_segment_size_bytes = 65536;         // dma_parms, Linux's default
  uint64_t segment_boundary_mask = 0xFFFFFFFFull;  // 2^k - 1, Linux's default
  bool trusted = true;                             // untrusted (external) devices are always strict
  bool scatter_gather = true;                      // false: needs IOVA-contiguous buffers
  bool pci = false;                                // PCI devices get 32-bit IOVAs first, as Linux
  std::string msi_doorbell;          // MMIO region holding its MSI doorbell ("" if none)
  uint64_t msi_doorbell_offset = 0;  // doorbell register offset within that region
  Quotas quotas = Quotas::Unset();   // per-device overrides; 0 fields inherit
};

struct Topology {
  std::vector<SmmuConfig> smmus;
  PhysMemoryConfig memory;  // RAM and MMIO regions, page pools
  std::vector<DeviceConfig> devices;
};

// Checks names unique, non-empty and valid UTF-8, SMMU parameters in the architecture's
// range (ias/oas 32..48, granules non-empty, contexts >= 1, IOTLB sets a
// power of two), the memory as PhysMemory::Create checks it (regions
// page-aligned and disjoint, pools inside RAM and disjoint; fields prefixed
// "memory."; this builds the memory model once), devices on an existing
// SMMU with unique stream ids per SMMU, every SMMU with a context for the
// default domain of each device behind it, dma_mask_bits 12..64, max segment
// size non-zero, boundary mask 2^k-1 of at least a page, doorbells inside an
// MMIO region. INVALID_ARGUMENT or ALREADY_EXISTS, naming the field and
// value.
absl::Status ValidateTopology(const Topology& topology);

// The built-in host: an SMMUv3-like 48-bit SMMU (4K/16K/64K), a 32-bit 4K-only
// MSM-like SMMU with four contexts, and a stage-2 SMMU for a passthrough
// function; on-chip SRAM and two DRAM banks (below and above 4 GiB), a GIC ITS
// doorbell; and devices that exercise every path: a scatter-gather NIC, an
// NVMe-like device with a 4 GiB segment boundary, a GPU, a 32-bit PCI SATA
// controller, a camera without scatter-gather on the 32-bit SMMU, a DSP
// sharing that SMMU, an untrusted external Thunderbolt device and a VFIO
// function behind the stage-2 SMMU.
Topology DefaultTopology();

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_TOPOLOGY_H_
