// SPDX-License-Identifier: Apache-2.0
// LpaePgtable: read-only inspection — walks, dumps, statistics and the
// structural invariant check.

#include <cassert>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/pgtable/lpae_pgtable.h"

namespace iommu::core {

using lpae::kLeafLevel;

PgtableWalk LpaePgtable::DecodeWalk(uint64_t va, uint64_t pte, int level) const {
  PgtableWalk w;
  w.level = level;
  w.leaf_size_bytes = EntryBytes(level);
  w.leaf_iova = Iova(AlignDown(va, w.leaf_size_bytes));
  w.leaf_phys = PhysAddr(pte & lpae::kPteAddrMask);
  w.phys = w.leaf_phys + (va & offset_mask_[level]);
  w.grant = lpae::DecodeGrant(stage_, pte);
  w.prot = lpae::DecodeProt(stage_, pte);
  w.attrs = lpae::DecodeAttrs(stage_, pte);
  w.descriptor = pte;
  return w;
}

absl::StatusOr<PgtableWalk> LpaePgtable::Walk(Iova iova) const {
  const uint64_t va = iova.value();
  if (va >> ias_) return OutOfRangeField("iova", va, absl::StrFormat("beyond ias %u", ias_));
  Cursor c;
  if (!FindLeaf(va, &c)) return FieldError(absl::StatusCode::kNotFound, "iova", va, "not mapped");
  return DecodeWalk(va, *c.ptep, c.level);
}

absl::Status LpaePgtable::CheckUnmapped(Iova iova, uint64_t size_bytes) const {
  const uint64_t va = iova.value();
  const uint64_t granule = geometry_.GranuleBytes();
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  if (!IsAligned(va, granule)) return InvalidField("iova", va, "not granule-aligned");
  if (!IsAligned(size_bytes, granule)) {
    return InvalidField("size_bytes", size_bytes, "not a multiple of the granule");
  }
  const auto last = LastOfRange(va, size_bytes);
  if (!last) return InvalidField("size_bytes", size_bytes, "iova + size_bytes passes 2^64");
  if (*last >> ias_) {
    return OutOfRangeField("iova", va, absl::StrFormat("range ends beyond ias %u", ias_));
  }
  uint64_t cur = va;
  while (cur <= *last) {
    Cursor c;
    if (FindLeaf(cur, &c)) {
      return FieldError(absl::StatusCode::kAlreadyExists, "iova", cur, "already mapped");
    }
    const uint64_t bytes = EntryBytes(c.level);
    cur = AlignDown(cur, bytes) + bytes;  // the whole invalid entry is a hole
  }
  return absl::OkStatus();
}

void LpaePgtable::VisitTable(const uint64_t* table, int level, uint64_t base_va,
                             absl::FunctionRef<void(const PgtableMapping&)> fn) const {
  for (uint64_t i = 0; i < entries_[level]; ++i) {
    const uint64_t pte = table[i];
    if (!(pte & lpae::kPteValid)) continue;
    const uint64_t va = base_va + (i << shift_[level]);
    if (IsLeaf(pte, level)) {
      fn(PgtableMapping{Iova(va), PhysAddr(pte & lpae::kPteAddrMask), EntryBytes(level),
                        lpae::DecodeGrant(stage_, pte), lpae::DecodeProt(stage_, pte)});
    } else {
      VisitTable(TablePtr(pte), level + 1, va, fn);
    }
  }
}

void LpaePgtable::ForEachMapping(absl::FunctionRef<void(const PgtableMapping&)> fn) const {
  VisitTable(root_, start_level_, 0, fn);
}

PgtableStats LpaePgtable::Stats() const {
  PgtableStats stats;
  stats.table_count = table_count_;
  stats.table_bytes = table_bytes_;
  stats.cached_table_count = cached_table_count_;
  stats.cached_table_bytes = cached_table_count_ * geometry_.GranuleBytes();
  for (int level = lpae::kLeafLevel; level >= 0; --level) {
    if (!leaf_allowed_[level]) continue;
    stats.leaves.push_back({EntryBytes(level), leaf_count_[level]});
    stats.mapped_bytes += EntryBytes(level) * leaf_count_[level];
  }
  return stats;
}

// --- Invariants ------------------------------------------------------------------

struct LpaePgtable::Counts {
  uint64_t tables = 0;
  uint64_t table_bytes = 0;
  std::array<uint64_t, lpae::kMaxLevels> leaves{};
};

absl::Status LpaePgtable::CheckTable(const uint64_t* table, int level, uint64_t base_va,
                                     uint64_t live_word, Counts* counts) const {
  ++counts->tables;
  counts->table_bytes += entries_[level] * sizeof(uint64_t);
  const uint64_t leaf_attrs =
      stage_ == lpae::Stage::kStage1 ? lpae::kPteS1LeafAttrs : lpae::kPteS2LeafAttrs;
  uint64_t live = 0;
  for (uint64_t i = 0; i < entries_[level]; ++i) {
    const uint64_t pte = table[i];
    if (pte == 0) continue;
    ++live;
    const uint64_t va = base_va + (i << shift_[level]);
    const uint64_t type = pte & lpae::kPteTypeMask;
    auto bad = [&](const char* why) {
      return absl::InternalError(
          absl::StrFormat("level %d entry %u (iova %#x) pte %#x: %s", level, i, va, pte, why));
    };
    if (!(pte & lpae::kPteValid)) return bad("invalid descriptor with stray bits");
    if (level < kLeafLevel && type == lpae::kPteTypeTable) {
      if (pte & ~(lpae::kPteAddrMask | lpae::kPteTypeMask | lpae::kPteSwCountMask | table_attrs_)) {
        return bad("table descriptor with unexpected attribute bits");
      }
      const uint64_t* child = TablePtr(pte);
      if (!IsAligned(reinterpret_cast<uintptr_t>(child), geometry_.GranuleBytes())) {
        return bad("next-level table not granule-aligned");
      }
      RETURN_IF_ERROR(CheckTable(child, level + 1, va, lpae::TableCount(pte), counts));
      continue;
    }
    const bool leaf_type =
        level == kLeafLevel ? type == lpae::kPteTypePage : type == lpae::kPteTypeBlock;
    if (!leaf_type) return bad("descriptor type invalid at this level");
    if (!leaf_allowed_[level]) return bad("leaf of a size outside pgsize_bitmap");
    if (pte & ~(lpae::kPteAddrMask | lpae::kPteTypeMask | leaf_attrs)) {
      return bad("leaf with unexpected attribute bits");
    }
    if (!(pte & lpae::kPteAf)) return bad("leaf without AF");
    const uint64_t pa = pte & lpae::kPteAddrMask;
    if (!IsAligned(pa, EntryBytes(level))) return bad("output address not aligned to leaf size");
    if ((pa + EntryBytes(level) - 1) >> oas_) return bad("output address beyond oas");
    ++counts->leaves[level];
  }
  if (live != live_word) {
    return absl::InternalError(
        absl::StrFormat("level %d table at iova %#x: %u live entries, "
                        "its descriptor's count says %u",
                        level, base_va, live, live_word));
  }
  if (live == 0 && level != start_level_) {
    return absl::InternalError(
        absl::StrFormat("level %d table at iova %#x is empty but not freed", level, base_va));
  }
  return absl::OkStatus();
}

absl::Status LpaePgtable::CheckFreeList() const {
  uint64_t n = 0;
  for (const uint64_t* t = free_tables_; t != nullptr;
       t = reinterpret_cast<const uint64_t*>(t[0])) {
    if (++n > kMaxCachedTables) {
      return absl::InternalError(absl::StrFormat("free list longer than %u", kMaxCachedTables));
    }
    if (!IsAligned(reinterpret_cast<uintptr_t>(t), geometry_.GranuleBytes())) {
      return absl::InternalError("cached table not granule-aligned");
    }
    for (uint64_t i = 1; i < geometry_.TableEntries(); ++i) {
      if (t[i] != 0) {
        return absl::InternalError(
            absl::StrFormat("cached table %u: entry %u is %#x, not zero", n, i, t[i]));
      }
    }
  }
  if (n != cached_table_count_) {
    return absl::InternalError(
        absl::StrFormat("free list holds %u tables, accounted %u", n, cached_table_count_));
  }
  return absl::OkStatus();
}

absl::Status LpaePgtable::CheckInvariants() const {
  if (root_count_ & ~lpae::kPteSwCountMask) {
    return absl::InternalError(absl::StrFormat("root count word %#x has stray bits", root_count_));
  }
  Counts counts;
  RETURN_IF_ERROR(CheckTable(root_, start_level_, 0, lpae::TableCount(root_count_), &counts));
  if (counts.tables != table_count_ || counts.table_bytes != table_bytes_) {
    return absl::InternalError(absl::StrFormat("found %u tables / %u bytes, accounted %u / %u",
                                               counts.tables, counts.table_bytes, table_count_,
                                               table_bytes_));
  }
  for (int level = 0; level < lpae::kMaxLevels; ++level) {
    if (counts.leaves[level] != leaf_count_[level]) {
      return absl::InternalError(absl::StrFormat("level %d: found %u leaves, accounted %u", level,
                                                 counts.leaves[level], leaf_count_[level]));
    }
  }
  return CheckFreeList();
}

}  // namespace iommu::core
