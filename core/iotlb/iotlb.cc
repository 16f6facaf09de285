// SPDX-License-Identifier: Apache-2.0
#include "core/iotlb/iotlb.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"

namespace iommu::core {
namespace {

// CheckInvariants' failure path: always on, NDEBUG or not (tcmalloc's Check).
[[noreturn]] void InvariantBroken(const std::string& what) {
  std::fprintf(stderr, "Iotlb invariant broken: %s\n", what.c_str());
  std::abort();
}

// The range [iova, iova + size_bytes) as inclusive ends, or INVALID_ARGUMENT.
absl::StatusOr<uint64_t> RangeLast(Iova iova, uint64_t size_bytes) {
  if (size_bytes == 0) return InvalidField("size_bytes", size_bytes, "must be non-zero");
  const std::optional<uint64_t> last = LastOfRange(iova.value(), size_bytes);
  if (!last.has_value()) {
    return InvalidField("size_bytes", size_bytes,
                        absl::StrCat("range from iova=", iova.Hex(), " passes 2^64"));
  }
  return *last;
}

}  // namespace

absl::StatusOr<Iotlb> Iotlb::Create(const IotlbConfig& config) {
  if (!IsPowerOfTwo(config.sets)) {
    return InvalidField("sets", config.sets, "must be a non-zero power of two");
  }
  if (config.ways == 0 || config.ways > kMaxWays) {
    return InvalidField("ways", config.ways, absl::StrFormat("must be in [1, %u]", kMaxWays));
  }
  const uint64_t entries = uint64_t{config.sets} * config.ways;
  if (entries > kMaxEntries) {
    return InvalidField("ways", config.ways,
                        absl::StrFormat("sets=%#x x ways = %#x entries exceeds %#x", config.sets,
                                        entries, kMaxEntries));
  }
  const auto& sizes = config.leaf_sizes_log2;
  if (sizes.empty() || sizes.size() > kMaxLeafSizes) {
    return InvalidField("leaf_sizes_log2", sizes.size(),
                        absl::StrFormat("count must be in [1, %u]", kMaxLeafSizes));
  }
  uint64_t seen = 0;
  for (const uint8_t l : sizes) {
    if (l < kMinLeafLog2 || l > kMaxLeafLog2) {
      return InvalidField("leaf_sizes_log2", l,
                          absl::StrFormat("must be in [%u, %u]", kMinLeafLog2, kMaxLeafLog2));
    }
    if ((seen >> l) & 1) return InvalidField("leaf_sizes_log2", l, "listed twice");
    seen |= uint64_t{1} << l;
  }
  return Iotlb(config.sets, config.ways, sizes);
}

Iotlb::Iotlb(uint32_t sets, uint32_t ways, absl::Span<const uint8_t> leaf_sizes_log2)
    : sets_(sets),
      ways_(ways),
      set_mask_(sets - 1),
      num_leaf_sizes_(uint8_t(leaf_sizes_log2.size())),
      entries_(new Entry[size_t{sets} * ways]) {
  static_assert(Salt(0xfedc1234, 21) == ((TagProduct(0xfedc1234) + 21 * kSaltMul) >> 32));
  for (size_t i = 0; i < leaf_sizes_log2.size(); ++i) {
    probe_order_[i] = leaf_sizes_log2[i];
    leaf_product_[i] = leaf_sizes_log2[i] * kSaltMul;
    leaf_size_mask_ |= uint64_t{1} << leaf_sizes_log2[i];
  }
  for (uint32_t s = 0; s < sets_; ++s) {
    Entry* set = SetAt(s);
    for (uint32_t w = 0; w < ways_; ++w) set[w].lru = uint8_t(w);
  }
}

absl::Status Iotlb::Insert(TlbTag tag, Iova iova, unsigned leaf_size_log2, PhysAddr phys,
                           Grant grant) {
  if (!IsLeafSize(leaf_size_log2)) {
    return InvalidField("leaf_size_log2", leaf_size_log2,
                        "not a leaf size configured for this IOTLB");
  }
  const uint64_t offset_mask = LowMask(leaf_size_log2);
  if ((phys & offset_mask) != (iova & offset_mask)) {
    return InvalidField("phys", phys.value(),
                        absl::StrCat("offset in the leaf differs from iova=", iova.Hex()));
  }
  const uint32_t packed = tag.Packed();
  const uint64_t base = AlignDown(iova.value(), uint64_t{1} << leaf_size_log2);
  const uint64_t last = base | offset_mask;
  Entry* set = SetAt(SetIndex(packed, leaf_size_log2, base >> leaf_size_log2));

  // The way to fill: an entry of this tag overlapping the new leaf (replaced
  // in place; further overlapping ones, possible only if the caller broke
  // break-before-make, are displaced and counted as evictions), else a free
  // way, else the LRU way.
  uint32_t victim = ways_;
  uint32_t free_way = ways_;
  uint32_t lru_way = 0;
  for (uint32_t w = 0; w < ways_; ++w) {
    Entry& e = set[w];
    if ((e.key & kKeyValid) == 0) {
      if (free_way == ways_) free_way = w;
      continue;
    }
    if (e.lru == ways_ - 1) lru_way = w;
    if (e.tag != packed) continue;
    const uint64_t e_base = KeyBase(e.key);
    const uint64_t e_last = e_base | LowMask(KeyLeafLog2(e.key));
    if (e_base > last || e_last < base) continue;
    if (victim == ways_) {
      victim = w;
    } else {
      e.key = 0;
      --stats_.occupancy;
      ++stats_.evictions;
    }
  }
  if (victim == ways_) {
    if (free_way != ways_) {
      victim = free_way;
      ++stats_.occupancy;
    } else {
      victim = lru_way;
      ++stats_.evictions;
    }
  }
  Entry& e = set[victim];
  e.key = MakeKey(base, leaf_size_log2);
  e.phys = AlignDown(phys.value(), uint64_t{1} << leaf_size_log2);
  e.tag = packed;
  e.grant = grant.bits();
  Touch(set, victim);
  ++stats_.fills;
  return absl::OkStatus();
}

template <typename Pred>
uint64_t Iotlb::RemoveIf(Pred pred) {
  uint64_t removed = 0;
  const uint64_t n = capacity();
  for (uint64_t i = 0; i < n; ++i) {
    Entry& e = entries_[i];
    if ((e.key & kKeyValid) == 0 || !pred(static_cast<const Entry&>(e))) continue;
    e.key = 0;
    ++removed;
  }
  stats_.occupancy -= removed;
  stats_.entries_invalidated += removed;
  return removed;
}

uint64_t Iotlb::InvalidateAll() {
  ++stats_.invalidations_all;
  return RemoveIf([](const Entry&) { return true; });
}

uint64_t Iotlb::InvalidateAsid(uint16_t asid, uint16_t vmid) {
  ++stats_.invalidations_asid;
  const uint32_t packed = TlbTag{asid, vmid}.Packed();
  return RemoveIf([packed](const Entry& e) { return e.tag == packed; });
}

uint64_t Iotlb::InvalidateVmid(uint16_t vmid) {
  ++stats_.invalidations_vmid;
  return RemoveIf([vmid](const Entry& e) { return (e.tag >> 16) == vmid; });
}

uint64_t Iotlb::ApplyToRange(uint32_t tag, uint64_t first, uint64_t last, RangeAction action) {
  uint64_t changed = 0;
  auto apply = [&](Entry& e) {
    if (action == RangeAction::kRemove) {
      e.key = 0;
      ++changed;
    } else if ((e.key & kKeyStale) == 0) {
      e.key |= kKeyStale;
      ++changed;
    }
  };

  // Probing costs (pages per size, summed) * ways; a scan costs sets * ways.
  uint64_t probe_sets = 0;
  for (uint32_t i = 0; i < num_leaf_sizes_ && probe_sets < sets_; ++i) {
    const unsigned l = probe_order_[i];
    probe_sets += (last >> l) - (first >> l) + 1;
  }
  if (probe_sets >= sets_) {
    const uint64_t n = capacity();
    for (uint64_t i = 0; i < n; ++i) {
      Entry& e = entries_[i];
      if ((e.key & kKeyValid) == 0 || e.tag != tag) continue;
      const uint64_t e_base = KeyBase(e.key);
      const uint64_t e_last = e_base | LowMask(KeyLeafLog2(e.key));
      if (e_base <= last && e_last >= first) apply(e);
    }
  } else {
    // Fewer pages than sets at every size: each page of the range has its own
    // set (the index XORs a constant into consecutive page numbers), so no
    // entry is visited twice.
    for (uint32_t i = 0; i < num_leaf_sizes_; ++i) {
      const unsigned l = probe_order_[i];
      for (uint64_t page = first >> l; page <= (last >> l); ++page) {
        const uint64_t want = MakeKey(page << l, l);
        Entry* set = SetAt(SetIndex(tag, l, page));
        for (uint32_t w = 0; w < ways_; ++w) {
          if ((set[w].key & ~kKeyStale) == want && set[w].tag == tag) apply(set[w]);
        }
      }
    }
  }
  if (action == RangeAction::kRemove) {
    stats_.occupancy -= changed;
    stats_.entries_invalidated += changed;
  } else {
    stats_.entries_marked_stale += changed;
  }
  return changed;
}

absl::StatusOr<uint64_t> Iotlb::InvalidateVa(TlbTag tag, Iova iova, uint64_t size_bytes,
                                             VaLevels levels) {
  ASSIGN_OR_RETURN(const uint64_t last, RangeLast(iova, size_bytes));
  if (levels == VaLevels::kLeafOnly) {
    ++stats_.invalidations_va_leaf;
  } else {
    ++stats_.invalidations_va;
  }
  return ApplyToRange(tag.Packed(), iova.value(), last, RangeAction::kRemove);
}

absl::StatusOr<uint64_t> Iotlb::MarkStale(TlbTag tag, Iova iova, uint64_t size_bytes) {
  ASSIGN_OR_RETURN(const uint64_t last, RangeLast(iova, size_bytes));
  ++stats_.mark_stale_calls;
  return ApplyToRange(tag.Packed(), iova.value(), last, RangeAction::kMarkStale);
}

void Iotlb::CheckInvariants() const {
  uint64_t valid = 0;
  for (uint32_t s = 0; s < sets_; ++s) {
    const Entry* set = SetAt(s);
    uint64_t ranks_seen = 0;
    for (uint32_t w = 0; w < ways_; ++w) {
      const Entry& e = set[w];
      if (e.lru >= ways_ || ((ranks_seen >> e.lru) & 1)) {
        InvariantBroken(
            absl::StrFormat("set %u: LRU ranks are not a permutation (way %u "
                            "has rank %u)",
                            s, w, e.lru));
      }
      ranks_seen |= uint64_t{1} << e.lru;
      if ((e.key & kKeyValid) == 0) continue;
      ++valid;
      const unsigned l = KeyLeafLog2(e.key);
      const uint64_t base = KeyBase(e.key);
      if (!IsLeafSize(l)) {
        InvariantBroken(absl::StrFormat("set %u way %u: leaf size 2^%u not configured", s, w, l));
      }
      if (!IsAligned(base, uint64_t{1} << l) || !IsAligned(e.phys, uint64_t{1} << l)) {
        InvariantBroken(
            absl::StrFormat("set %u way %u: iova %#x / phys %#x not aligned to "
                            "2^%u",
                            s, w, base, e.phys, l));
      }
      if (SetIndex(e.tag, l, base >> l) != s) {
        InvariantBroken(absl::StrFormat("set %u way %u: iova %#x belongs in set %u", s, w, base,
                                        SetIndex(e.tag, l, base >> l)));
      }
      for (uint32_t v = w + 1; v < ways_; ++v) {
        const Entry& o = set[v];
        if ((o.key & kKeyValid) == 0 || o.tag != e.tag) continue;
        const uint64_t o_base = KeyBase(o.key);
        const uint64_t o_last = o_base | LowMask(KeyLeafLog2(o.key));
        if (o_base <= (base | LowMask(l)) && o_last >= base) {
          InvariantBroken(
              absl::StrFormat("set %u: ways %u and %u overlap under tag %#x", s, w, v, e.tag));
        }
      }
    }
  }
  if (valid != stats_.occupancy) {
    InvariantBroken(absl::StrFormat("occupancy %u != recount %u", stats_.occupancy, valid));
  }
}

}  // namespace iommu::core
