// SPDX-License-Identifier: Apache-2.0
// PhysMemory's configuration half: the names of its enums and Create, which
// validates regions and pools and builds one buddy allocator per pool range.
// The allocation half is phys_memory.cc.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/memory/phys_memory.h"

namespace iommu::core {
namespace {

// The same status with `prefix` before its message (a field path).
absl::Status Prefixed(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

// Validates one [base, base + size_bytes) of a region or pool range.
absl::Status ValidateSpan(const std::string& path, PhysAddr base, uint64_t size_bytes,
                          uint64_t page) {
  if (!IsAligned(base.value(), page)) {
    return InvalidField(path + ".base", base.value(), "must be page-aligned");
  }
  if (size_bytes == 0) return InvalidField(path + ".size_bytes", 0, "must be non-zero");
  if (!IsAligned(size_bytes, page)) {
    return InvalidField(path + ".size_bytes", size_bytes, "must be a multiple of the page size");
  }
  if (!LastOfRange(base.value(), size_bytes)) {
    return InvalidField(path + ".size_bytes", size_bytes, "range passes 2^64");
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view RegionKindName(RegionKind kind) {
  switch (kind) {
    case RegionKind::kRam:
      return "ram";
    case RegionKind::kMmio:
      return "mmio";
  }
  return "invalid";
}

absl::string_view PlacementName(Placement placement) {
  switch (placement) {
    case Placement::kScattered:
      return "scattered";
    case Placement::kContiguous:
      return "contiguous";
    case Placement::kHuge:
      return "huge";
  }
  return "invalid";
}

absl::StatusOr<std::unique_ptr<PhysMemory>> PhysMemory::Create(const PhysMemoryConfig& config) {
  const uint64_t page = config.page_size_bytes;
  if (!IsPowerOfTwo(page) || page < 4096 || page > kHugePageBytes) {
    return InvalidField("page_size_bytes", page, "must be a power of two in [4 KiB, 2 MiB]");
  }
  // Regions: named uniquely, page-aligned, disjoint.
  std::vector<MemoryRegionConfig> regions = config.regions;
  for (size_t i = 0; i < regions.size(); ++i) {
    const MemoryRegionConfig& r = regions[i];
    const std::string path = absl::StrCat("regions[", i, "]");
    if (r.name.empty())
      return FieldError(absl::StatusCode::kInvalidArgument, path + ".name", "",
                        "must be non-empty");
    if (r.kind != RegionKind::kRam && r.kind != RegionKind::kMmio) {
      return InvalidField(path + ".kind", uint64_t(r.kind), "not a region kind");
    }
    RETURN_IF_ERROR(ValidateSpan(path, r.base, r.size_bytes, page));
    for (size_t j = 0; j < i; ++j) {
      if (regions[j].name == r.name) {
        return FieldError(absl::StatusCode::kAlreadyExists, path + ".name", r.name,
                          "duplicate region name");
      }
      const MemoryRegionConfig& o = regions[j];
      if (r.base.value() <= *LastOfRange(o.base.value(), o.size_bytes) &&
          o.base.value() <= *LastOfRange(r.base.value(), r.size_bytes)) {
        return InvalidField(
            path + ".base", r.base.value(),
            absl::StrFormat("region \"%s\" of %#x bytes overlaps region \"%s\" "
                            "[%#x, +%#x)",
                            r.name, r.size_bytes, o.name, o.base.value(), o.size_bytes));
      }
    }
  }
  std::sort(
      regions.begin(), regions.end(),
      [](const MemoryRegionConfig& a, const MemoryRegionConfig& b) { return a.base < b.base; });

  // Pools: named uniquely, each range inside one RAM region, ranges disjoint.
  struct Span {
    uint64_t base, last;
    std::string path;
  };
  std::vector<Span> spans;
  std::vector<std::pair<size_t, Pool>> pools;  // (configuration index, pool)
  for (size_t i = 0; i < config.pools.size(); ++i) {
    const PoolConfig& p = config.pools[i];
    const std::string path = absl::StrCat("pools[", i, "]");
    if (p.name.empty())
      return FieldError(absl::StatusCode::kInvalidArgument, path + ".name", "",
                        "must be non-empty");
    for (size_t j = 0; j < i; ++j) {
      if (config.pools[j].name == p.name) {
        return FieldError(absl::StatusCode::kAlreadyExists, path + ".name", p.name,
                          "duplicate pool name");
      }
    }
    if (p.ranges.empty()) {
      return FieldError(absl::StatusCode::kInvalidArgument, path + ".name", p.name,
                        "pool has no ranges");
    }
    Pool pool;
    pool.name = p.name;
    pool.priority = p.priority;
    for (size_t k = 0; k < p.ranges.size(); ++k) {
      const PoolRangeConfig& r = p.ranges[k];
      const std::string rpath = absl::StrCat(path, ".ranges[", k, "]");
      RETURN_IF_ERROR(ValidateSpan(rpath, r.base, r.size_bytes, page));
      const uint64_t last = *LastOfRange(r.base.value(), r.size_bytes);
      // The region holding the base must hold the whole range and be RAM.
      auto it =
          std::upper_bound(regions.begin(), regions.end(), r.base,
                           [](PhysAddr a, const MemoryRegionConfig& reg) { return a < reg.base; });
      if (it == regions.begin() ||
          last > *LastOfRange((it - 1)->base.value(), (it - 1)->size_bytes) ||
          r.base.value() > *LastOfRange((it - 1)->base.value(), (it - 1)->size_bytes)) {
        return InvalidField(
            rpath + ".base", r.base.value(),
            absl::StrFormat("range of %#x bytes is not inside one RAM region", r.size_bytes));
      }
      if ((it - 1)->kind != RegionKind::kRam) {
        return InvalidField(rpath + ".base", r.base.value(),
                            absl::StrFormat("range lies in %s region \"%s\", not RAM",
                                            RegionKindName((it - 1)->kind), (it - 1)->name));
      }
      for (const Span& s : spans) {
        if (r.base.value() <= s.last && s.base <= last) {
          return InvalidField(
              rpath + ".base", r.base.value(),
              absl::StrFormat("range of %#x bytes overlaps %s", r.size_bytes, s.path));
        }
      }
      spans.push_back({r.base.value(), last, rpath});
      absl::StatusOr<BuddyAllocator> buddy =
          BuddyAllocator::Create(r.base, r.size_bytes, {page, std::nullopt});
      if (!buddy.ok()) return Prefixed(buddy.status(), rpath + ".");
      pool.ranges.push_back(*std::move(buddy));
    }
    pools.emplace_back(i, std::move(pool));
  }
  std::stable_sort(pools.begin(), pools.end(), [](const auto& a, const auto& b) {
    return a.second.priority < b.second.priority;
  });
  std::vector<Pool> ordered;
  for (auto& [index, pool] : pools) ordered.push_back(std::move(pool));
  return std::unique_ptr<PhysMemory>(new PhysMemory(page, std::move(regions), std::move(ordered)));
}

}  // namespace iommu::core
