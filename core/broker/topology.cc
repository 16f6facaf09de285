// SPDX-License-Identifier: Apache-2.0
#include "core/broker/topology.h"

#include <algorithm>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"

namespace iommu::core {
namespace {

constexpr uint64_t kCpuPageBytes = 4096;
constexpr uint64_t KiB = 1024, MiB = KiB * KiB, GiB = MiB * KiB;

absl::Status Duplicate(const std::string& field, const std::string& name) {
  return FieldError(absl::StatusCode::kAlreadyExists, field, name, "duplicate name");
}

// Strict UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF), as protobuf checks the string fields every name travels in.
bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = uint8_t(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= size_t(n)) return false;
    for (int k = 1; k <= n; ++k) {
      const uint8_t cc = uint8_t(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3F);
    }
    constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// A name sent back in replies (proto3 strings): valid UTF-8. The value is
// not echoed, since it is not.
absl::Status CheckUtf8(const std::string& field, absl::string_view name) {
  if (IsUtf8(name)) return absl::OkStatus();
  return FieldError(absl::StatusCode::kInvalidArgument, field, "",
                    "must be valid UTF-8 (names are sent in replies)");
}

std::string Indexed(const char* list, size_t i, const char* field) {
  return absl::StrFormat("%s[%d].%s", list, i, field);
}

absl::Status ValidateSmmus(const Topology& t) {
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < t.smmus.size(); ++i) {
    const SmmuConfig& s = t.smmus[i];
    if (s.name.empty())
      return FieldError(absl::StatusCode::kInvalidArgument, Indexed("smmus", i, "name"), "",
                        "must be non-empty");
    RETURN_IF_ERROR(CheckUtf8(Indexed("smmus", i, "name"), s.name));
    if (!names.insert(s.name).second) return Duplicate(Indexed("smmus", i, "name"), s.name);
    if (s.ias_bits < 32 || s.ias_bits > 48) {
      return InvalidField(Indexed("smmus", i, "ias_bits"), s.ias_bits, "must be 32..48");
    }
    if (s.oas_bits < 32 || s.oas_bits > 48) {
      return InvalidField(Indexed("smmus", i, "oas_bits"), s.oas_bits, "must be 32..48");
    }
    if (s.granules == 0 || (s.granules & ~(kGranule4K | kGranule16K | kGranule64K)) != 0) {
      return InvalidField(Indexed("smmus", i, "granules"), s.granules,
                          "must be a non-empty set of 4K, 16K and 64K");
    }
    if (s.num_contexts == 0 || s.num_contexts > 65536) {
      return InvalidField(Indexed("smmus", i, "num_contexts"), s.num_contexts, "must be 1..65536");
    }
    if (!IsPowerOfTwo(s.iotlb_sets) || s.iotlb_sets > 65536) {
      return InvalidField(Indexed("smmus", i, "iotlb_sets"), s.iotlb_sets,
                          "must be a power of two up to 65536");
    }
    if (s.iotlb_ways == 0 || s.iotlb_ways > 64) {
      return InvalidField(Indexed("smmus", i, "iotlb_ways"), s.iotlb_ways, "must be 1..64");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateDevices(const Topology& t) {
  absl::flat_hash_set<std::string> names;
  absl::flat_hash_set<std::string> smmus;
  for (const SmmuConfig& s : t.smmus) smmus.insert(s.name);
  std::set<std::pair<std::string, uint32_t>> streams;
  for (size_t i = 0; i < t.devices.size(); ++i) {
    const DeviceConfig& d = t.devices[i];
    if (d.name.empty())
      return FieldError(absl::StatusCode::kInvalidArgument, Indexed("devices", i, "name"), "",
                        "must be non-empty");
    RETURN_IF_ERROR(CheckUtf8(Indexed("devices", i, "name"), d.name));
    if (!names.insert(d.name).second) return Duplicate(Indexed("devices", i, "name"), d.name);
    if (!smmus.contains(d.smmu)) {
      return FieldError(absl::StatusCode::kInvalidArgument, Indexed("devices", i, "smmu"), d.smmu,
                        "no SMMU of that name");
    }
    if (!streams.insert({d.smmu, d.stream_id}).second) {
      return FieldError(absl::StatusCode::kAlreadyExists, Indexed("devices", i, "stream_id"),
                        d.stream_id, absl::StrFormat("already used on SMMU %s", d.smmu));
    }
    if (d.dma_mask_bits < 12 || d.dma_mask_bits > 64) {
      return InvalidField(Indexed("devices", i, "dma_mask_bits"), d.dma_mask_bits,
                          "must be 12..64");
    }
    if (d.max_segment_size_bytes == 0) {
      return InvalidField(Indexed("devices", i, "max_segment_size_bytes"), 0, "must be non-zero");
    }
    const uint64_t m = d.segment_boundary_mask;
    if (m != ~uint64_t{0} && (!IsPowerOfTwo(m + 1) || m + 1 < kCpuPageBytes)) {
      return InvalidField(Indexed("devices", i, "segment_boundary_mask"), m,
                          "must be 2^k - 1 with 2^k >= 4 KiB");
    }
    if (!d.msi_doorbell.empty()) {
      const auto& regions = t.memory.regions;
      const auto it =
          std::find_if(regions.begin(), regions.end(),
                       [&](const MemoryRegionConfig& r) { return r.name == d.msi_doorbell; });
      if (it == regions.end() || it->kind != RegionKind::kMmio) {
        return FieldError(absl::StatusCode::kInvalidArgument, Indexed("devices", i, "msi_doorbell"),
                          d.msi_doorbell, "must name an MMIO region");
      }
      if (d.msi_doorbell_offset + 4 > it->size_bytes) {
        return InvalidField(Indexed("devices", i, "msi_doorbell_offset"), d.msi_doorbell_offset,
                            "beyond the doorbell region");
      }
    }
  }
  // Every device starts in a default domain of its own, which takes one of
  // its SMMU's contexts: fewer contexts than devices could never start.
  for (size_t i = 0; i < t.smmus.size(); ++i) {
    const SmmuConfig& s = t.smmus[i];
    const auto devices = std::count_if(t.devices.begin(), t.devices.end(),
                                       [&](const DeviceConfig& d) { return d.smmu == s.name; });
    if (uint64_t(devices) > s.num_contexts) {
      return InvalidField(Indexed("smmus", i, "num_contexts"), s.num_contexts,
                          absl::StrFormat("fewer than the %d devices behind it, whose default "
                                          "domains take one each",
                                          devices));
    }
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t PgsizeBitmapForGranule(uint64_t granule_bytes) {
  switch (granule_bytes) {
    case kGranule4K:
      return kGranule4K | 2 * MiB | GiB;
    case kGranule16K:
      return kGranule16K | 32 * MiB;
    case kGranule64K:
      return kGranule64K | 512 * MiB;
  }
  return 0;
}

absl::Status ValidateTopology(const Topology& t) {
  if (t.smmus.empty()) return InvalidField("smmus", 0, "a topology needs at least one SMMU");
  RETURN_IF_ERROR(ValidateSmmus(t));
  for (size_t i = 0; i < t.memory.regions.size(); ++i) {
    RETURN_IF_ERROR(CheckUtf8(Indexed("memory.regions", i, "name"), t.memory.regions[i].name));
  }
  for (size_t i = 0; i < t.memory.pools.size(); ++i) {
    RETURN_IF_ERROR(CheckUtf8(Indexed("memory.pools", i, "name"), t.memory.pools[i].name));
  }
  if (absl::Status s = PhysMemory::Create(t.memory).status(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("memory.", s.message()));
  }
  return ValidateDevices(t);
}

Topology DefaultTopology() {
  Topology t;
  t.smmus = {
      {.name = "smmu0",
       .stage = Stage::kStage1,
       .ias_bits = 48,
       .oas_bits = 48,
       .granules = kGranule4K | kGranule16K | kGranule64K,
       .num_contexts = 256,
       .iotlb_sets = 512,
       .iotlb_ways = 4},
      {.name = "smmu1",
       .stage = Stage::kStage1,
       .ias_bits = 32,
       .oas_bits = 40,
       .granules = kGranule4K,
       .num_contexts = 4,
       .iotlb_sets = 32,
       .iotlb_ways = 2},
      {.name = "smmu2",
       .stage = Stage::kStage2,
       .ias_bits = 40,
       .oas_bits = 40,
       .granules = kGranule4K | kGranule64K,
       .num_contexts = 8,
       .iotlb_sets = 128,
       .iotlb_ways = 4},
  };
  t.memory.regions = {
      {.name = "gic-its",
       .base = PhysAddr(0x0802'0000),
       .size_bytes = 128 * KiB,
       .kind = RegionKind::kMmio},
      {.name = "sram",
       .base = PhysAddr(0x1000'0000),
       .size_bytes = 4 * MiB,
       .kind = RegionKind::kRam},
      {.name = "dram0",
       .base = PhysAddr(0x8000'0000),
       .size_bytes = 2 * GiB,
       .kind = RegionKind::kRam},
      {.name = "dram1",
       .base = PhysAddr(0x8'8000'0000),
       .size_bytes = 6 * GiB,
       .kind = RegionKind::kRam},
  };
  t.memory.pools = {
      {.name = "sram", .priority = 0, .ranges = {{PhysAddr(0x1000'0000), 4 * MiB}}},
      {.name = "dram",
       .priority = 1,
       .ranges = {{PhysAddr(0x8000'0000), 2 * GiB}, {PhysAddr(0x8'8000'0000), 6 * GiB}}},
  };
  // GITS_TRANSLATER sits at offset 0x10040 of the ITS frame.
  t.devices = {
      {.name = "nic0",
       .smmu = "smmu0",
       .stream_id = 0x100,
       .dma_mask_bits = 64,
       .max_segment_size_bytes = 64 * KiB,
       .pci = true,
       .msi_doorbell = "gic-its",
       .msi_doorbell_offset = 0x10040},
      {.name = "nvme0",
       .smmu = "smmu0",
       .stream_id = 0x200,
       .dma_mask_bits = 64,
       .max_segment_size_bytes = 0xFFFFFFFF,
       .segment_boundary_mask = 0xFFFFFFFF,
       .pci = true,
       .msi_doorbell = "gic-its",
       .msi_doorbell_offset = 0x10040},
      {.name = "gpu0",
       .smmu = "smmu0",
       .stream_id = 0x300,
       .dma_mask_bits = 48,
       .max_segment_size_bytes = 0xFFFFFFFF,
       .segment_boundary_mask = ~uint64_t{0},
       .pci = true,
       .msi_doorbell = "gic-its",
       .msi_doorbell_offset = 0x10040},
      {.name = "sata0",
       .smmu = "smmu0",
       .stream_id = 0x400,
       .dma_mask_bits = 32,
       .max_segment_size_bytes = 64 * KiB,
       .pci = true,
       .msi_doorbell = "gic-its",
       .msi_doorbell_offset = 0x10040},
      {.name = "tbt0",
       .smmu = "smmu0",
       .stream_id = 0x500,
       .dma_mask_bits = 64,
       .max_segment_size_bytes = 64 * KiB,
       .trusted = false,
       .pci = true,
       .msi_doorbell = "gic-its",
       .msi_doorbell_offset = 0x10040},
      {.name = "cam0",
       .smmu = "smmu1",
       .stream_id = 0x1,
       .dma_mask_bits = 32,
       .coherent = false,
       .max_segment_size_bytes = 0xFFFFFFFF,
       .scatter_gather = false},
      {.name = "dsp0",
       .smmu = "smmu1",
       .stream_id = 0x2,
       .dma_mask_bits = 32,
       .coherent = false,
       .max_segment_size_bytes = 1 * MiB},
      {.name = "vf0",
       .smmu = "smmu2",
       .stream_id = 0x10,
       .dma_mask_bits = 40,
       .max_segment_size_bytes = 0xFFFFFFFF,
       .pci = true,
       .msi_doorbell = "gic-its",
       .msi_doorbell_offset = 0x10040},
  };
  return t;
}

}  // namespace iommu::core
