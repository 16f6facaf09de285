// SPDX-License-Identifier: Apache-2.0
// LpaePgtable: construction, table memory, walks, argument checks and map.
// Unmap and block splits live in lpae_pgtable_unmap.cc, inspection (walk,
// dumps, invariants) in lpae_pgtable_inspect.cc.

#include "core/pgtable/lpae_pgtable.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <new>

#include "absl/base/optimization.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/fail_nth.h"
#include "core/base/status_macros.h"
#include "core/pgtable/lpae_runs.h"

namespace iommu::core {

using internal::FillLeaves;
using internal::OrAll;
using lpae::kLeafLevel;

namespace {

bool ValidProt(Prot prot) {
  const uint32_t bits = uint32_t(prot);
  return (bits & ~kProtAllBits) == 0 && (bits & uint32_t(Prot::kRead | Prot::kWrite)) != 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LpaePgtable>> LpaePgtable::Create(const IoPgtableCfg& cfg,
                                                                 FlushOps* flush_ops) {
  lpae::Stage stage;
  switch (cfg.format) {
    case IoPgtableFormat::kArm64LpaeS1:
      stage = lpae::Stage::kStage1;
      break;
    case IoPgtableFormat::kArm64LpaeS2:
      stage = lpae::Stage::kStage2;
      break;
    default:
      return InvalidField("format", uint64_t(cfg.format), "not an LPAE format");
  }
  if (flush_ops == nullptr) return InvalidField("flush_ops", 0, "must be non-null");
  if (cfg.quirks & ~kSupportedQuirks) {
    return InvalidField("quirks", cfg.quirks, "unsupported quirk bits");
  }
  if (stage == lpae::Stage::kStage2 && (cfg.quirks & kQuirkArmNs)) {
    return InvalidField("quirks", cfg.quirks, "ARM_NS is a stage-1 quirk");
  }
  if (cfg.ias < lpae::kMinAddrBits || cfg.ias > lpae::kMaxAddrBits) {
    return OutOfRangeField("ias", cfg.ias, "must be 32..48");
  }
  if (cfg.oas < lpae::kMinAddrBits || cfg.oas > lpae::kMaxAddrBits) {
    return OutOfRangeField("oas", cfg.oas, "must be 32..48");
  }
  if (cfg.pgsize_bitmap == 0) return InvalidField("pgsize_bitmap", 0, "must be non-zero");
  const unsigned granule_shift = Log2(cfg.pgsize_bitmap & (~cfg.pgsize_bitmap + 1));
  if (!lpae::IsGranuleShift(granule_shift)) {
    return InvalidField("pgsize_bitmap", cfg.pgsize_bitmap,
                        "smallest page size must be a 4K, 16K or 64K granule");
  }
  if (cfg.pgsize_bitmap & ~lpae::PgsizeBitmapForGranule(granule_shift)) {
    return InvalidField(
        "pgsize_bitmap", cfg.pgsize_bitmap,
        absl::StrFormat("holds sizes that are no leaf size of the %uK granule "
                        "(allowed: %#x)",
                        1u << (granule_shift - 10), lpae::PgsizeBitmapForGranule(granule_shift)));
  }
  const lpae::Geometry geometry = lpae::ComputeGeometry(granule_shift, cfg.ias, stage);
  const uint64_t root_entry_bytes = uint64_t{1}
                                    << lpae::LevelShift(granule_shift, geometry.start_level);
  if (cfg.pgsize_bitmap >= root_entry_bytes << 1) {
    return InvalidField("pgsize_bitmap", cfg.pgsize_bitmap,
                        "holds a page size larger than a root entry covers");
  }
  std::unique_ptr<LpaePgtable> table(new LpaePgtable(cfg, flush_ops, stage, geometry));
  table->root_ = table->AllocTable(table->start_level_);
  if (table->root_ == nullptr) {
    return NoTableMemory("ias", cfg.ias, table->start_level_);
  }
  return table;
}

LpaePgtable::LpaePgtable(const IoPgtableCfg& cfg, FlushOps* flush_ops, lpae::Stage stage,
                         const lpae::Geometry& geometry)
    : IoPgtableOps(cfg, flush_ops),
      stage_(stage),
      geometry_(geometry),
      start_level_(geometry.start_level),
      ias_(cfg.ias),
      oas_(cfg.oas),
      table_attrs_((cfg.quirks & kQuirkArmNs) ? lpae::kPteNsTable : 0),
      pool_(PgtablePagePool::Default()) {
  level_for_shift_.fill(-1);
  for (int level = 0; level < lpae::kMaxLevels; ++level) {
    shift_[level] = lpae::LevelShift(geometry.granule_shift, level);
    entries_[level] = level == start_level_ ? geometry.RootEntries() : geometry.TableEntries();
    index_mask_[level] = entries_[level] - 1;
    offset_mask_[level] = LowMask(shift_[level]);
    const uint64_t size = uint64_t{1} << shift_[level];
    leaf_allowed_[level] = level >= start_level_ &&
                           lpae::LevelHoldsLeaves(geometry.granule_shift, level) &&
                           (cfg.pgsize_bitmap & size) != 0;
    if (leaf_allowed_[level]) level_for_shift_[shift_[level]] = int8_t(level);
  }
}

LpaePgtable::~LpaePgtable() {
  flush_ops_->TlbFlushAll();
  if (root_ != nullptr) ReleaseSubtree(root_, start_level_);
  while (free_tables_ != nullptr) {
    uint64_t* table = free_tables_;
    free_tables_ = reinterpret_cast<uint64_t*>(table[0]);
    table[0] = 0;
    pool_.Free(table, geometry_.GranuleBytes());
  }
}

// --- Table memory --------------------------------------------------------------

absl::Status LpaePgtable::NoTableMemory(absl::string_view field, uint64_t value, int level) {
  return FieldError(absl::StatusCode::kResourceExhausted, field, value,
                    absl::StrFormat("no memory for a page-table table (walk to level %d)%s", level,
                                    fail_nth::Get().failed == FailPoint::kPgtableTable
                                        ? " (injected failure at pgtable.table)"
                                        : ""));
}

uint64_t* LpaePgtable::AllocTable(int level) {
  if (fail_nth::ShouldFail(FailPoint::kPgtableTable)) return nullptr;
  return TakeTable(level);
}

uint64_t* LpaePgtable::TakeTable(int level) {
  const uint64_t bytes = entries_[level] * sizeof(uint64_t);
  uint64_t* table;
  if (level != start_level_ && free_tables_ != nullptr) {
    table = free_tables_;
    free_tables_ = reinterpret_cast<uint64_t*>(table[0]);
    table[0] = 0;
    --cached_table_count_;
  } else if (bytes == geometry_.GranuleBytes()) {
    table = static_cast<uint64_t*>(pool_.Alloc(bytes));
    if (table == nullptr) return nullptr;
  } else {  // a root smaller than a granule, or concatenated
    void* mem =
        ::operator new (bytes, std::align_val_t{std::max<uint64_t>(bytes, 64)}, std::nothrow);
    if (mem == nullptr) return nullptr;
    std::memset(mem, 0, bytes);
    table = static_cast<uint64_t*>(mem);
  }
  // A table below the root is referenced by a descriptor: its host address
  // must fit the output-address field (below 2^48, granule-aligned).
  assert(
      (level == start_level_ || (reinterpret_cast<uintptr_t>(table) & ~lpae::kPteAddrMask) == 0) &&
      "host table address does not fit a table descriptor");
  ++table_count_;
  table_bytes_ += bytes;
  return table;
}

void LpaePgtable::FreeTable(uint64_t* table, int level) {
  assert(std::all_of(table, table + entries_[level], [](uint64_t pte) { return pte == 0; }) &&
         "only empty tables are freed");
  if (level == start_level_ || cached_table_count_ == kMaxCachedTables) {
    ReleaseTable(table, level, /*zeroed=*/true);
    return;
  }
  // Non-root tables are all one granule: any of them serves any level.
  table[0] = reinterpret_cast<uintptr_t>(free_tables_);
  free_tables_ = table;
  ++cached_table_count_;
  --table_count_;
  table_bytes_ -= entries_[level] * sizeof(uint64_t);
  walk_cache_.level = -1;
}

void LpaePgtable::ReleaseTable(uint64_t* table, int level, bool zeroed) {
  const uint64_t bytes = entries_[level] * sizeof(uint64_t);
  if (bytes == geometry_.GranuleBytes()) {
    if (!zeroed) std::memset(table, 0, bytes);
    pool_.Free(table, bytes);
  } else {
    ::operator delete (table, std::align_val_t{std::max<uint64_t>(bytes, 64)});
  }
  --table_count_;
  table_bytes_ -= bytes;
  walk_cache_.level = -1;
}

void LpaePgtable::ReleaseSubtree(uint64_t* table, int level) {
  if (level < kLeafLevel) {
    for (uint64_t i = 0; i < entries_[level]; ++i) {
      const uint64_t pte = table[i];
      if ((pte & lpae::kPteValid) && !IsLeaf(pte, level)) ReleaseSubtree(TablePtr(pte), level + 1);
    }
  }
  ReleaseTable(table, level, /*zeroed=*/false);
}

// --- Walks -------------------------------------------------------------------

uint64_t* LpaePgtable::WalkAlloc(uint64_t va, int level, uint64_t** count_slot, bool* no_memory) {
  if (level == start_level_) {
    *count_slot = &root_count_;
    return root_;
  }
  if (CacheHit(va, level)) {
    *count_slot = walk_cache_.count_slot;
    return walk_cache_.tables[level];
  }
  walk_cache_.level = -1;
  uint64_t* table = root_;
  uint64_t* slot = &root_count_;
  for (int l = start_level_; l < level; ++l) {
    walk_cache_.tables[l] = table;
    uint64_t* ptep = table + Index(va, l);
    const uint64_t pte = *ptep;
    if (pte == 0) {
      // An empty table until the caller fills it; nothing walks in between.
      uint64_t* const next = AllocTable(l + 1);
      if (next == nullptr) {
        // Frees the tables this walk added above (empty, never walked).
        Cursor c;
        c.tables = walk_cache_.tables;
        FreeEmptyTables(c, l, va, /*notify=*/false);
        walk_cache_.level = -1;
        *no_memory = true;
        return nullptr;
      }
      *ptep = TableDescriptor(next);
      AddLive(slot, 1);
    } else if ((pte & lpae::kPteTypeMask) != lpae::kPteTypeTable) {
      return nullptr;  // a block
    }
    slot = ptep;
    table = TablePtr(*ptep);
  }
  walk_cache_.tables[level] = table;
  walk_cache_.count_slot = slot;
  walk_cache_.prefix = va >> shift_[level - 1];
  walk_cache_.level = level;
  *count_slot = slot;
  return table;
}

bool LpaePgtable::FindLeaf(uint64_t va, Cursor* c) const {
  uint64_t* table = root_;
  for (int level = start_level_;; ++level) {
    c->tables[level] = table;
    c->level = level;
    c->ptep = table + Index(va, level);
    const uint64_t pte = *c->ptep;
    if (!(pte & lpae::kPteValid)) return false;
    if (IsLeaf(pte, level)) return true;
    table = TablePtr(pte);
  }
}

// --- Argument checks -----------------------------------------------------------

absl::Status LpaePgtable::RangeArgsError(uint64_t va, uint64_t pgsize_bytes,
                                         uint64_t pgcount) const {
  if (!IsPowerOfTwo(pgsize_bytes) || !(pgsize_bytes & cfg_.pgsize_bitmap)) {
    return InvalidField("pgsize_bytes", pgsize_bytes,
                        absl::StrFormat("not in pgsize_bitmap %#x", cfg_.pgsize_bitmap));
  }
  if (pgcount == 0) return InvalidField("pgcount", 0, "must be non-zero");
  if (!IsAligned(va, pgsize_bytes)) {
    return InvalidField("iova", va, absl::StrFormat("not aligned to pgsize %#x", pgsize_bytes));
  }
  uint64_t size = 0;
  if (__builtin_mul_overflow(pgsize_bytes, pgcount, &size)) {
    return InvalidField("pgcount", pgcount, "pgsize_bytes * pgcount passes 2^64");
  }
  if (!LastOfRange(va, size)) {
    return InvalidField("iova", va, absl::StrFormat("range of %#x bytes passes 2^64", size));
  }
  if (*LastOfRange(va, size) >> ias_) {
    return OutOfRangeField("iova", va,
                           absl::StrFormat("range of %#x bytes ends beyond ias %u", size, ias_));
  }
  return absl::OkStatus();
}

absl::Status LpaePgtable::MapArgsError(uint64_t va, uint64_t pa, uint64_t pgsize_bytes,
                                       uint64_t pgcount, Prot prot) const {
  // Same order as RangeArgsError, with prot and paddr checked beside iova.
  if (!IsPowerOfTwo(pgsize_bytes) || !(pgsize_bytes & cfg_.pgsize_bitmap) || pgcount == 0) {
    return RangeArgsError(va, pgsize_bytes, pgcount);
  }
  if (!ValidProt(prot)) {
    return InvalidField("prot", uint32_t(prot), "needs READ or WRITE and no unknown bits");
  }
  if (!IsAligned(va, pgsize_bytes)) return RangeArgsError(va, pgsize_bytes, pgcount);
  if (!IsAligned(pa, pgsize_bytes)) {
    return InvalidField("paddr", pa, absl::StrFormat("not aligned to pgsize %#x", pgsize_bytes));
  }
  uint64_t size = 0;
  if (__builtin_mul_overflow(pgsize_bytes, pgcount, &size) || !LastOfRange(va, size)) {
    return RangeArgsError(va, pgsize_bytes, pgcount);
  }
  if (!LastOfRange(pa, size)) {
    return InvalidField("paddr", pa, absl::StrFormat("range of %#x bytes passes 2^64", size));
  }
  RETURN_IF_ERROR(RangeArgsError(va, pgsize_bytes, pgcount));
  if (*LastOfRange(pa, size) >> oas_) {
    return OutOfRangeField("paddr", pa,
                           absl::StrFormat("range of %#x bytes ends beyond oas %u", size, oas_));
  }
  assert(false && "MapArgsError called with valid arguments");
  return absl::InternalError("map arguments valid");
}

// --- Map -----------------------------------------------------------------------

absl::Status LpaePgtable::MapPages(Iova iova, PhysAddr paddr, uint64_t pgsize_bytes,
                                   uint64_t pgcount, Prot prot) {
  const uint64_t va = iova.value();
  const uint64_t pa = paddr.value();
  // One combined test on the hot path; MapArgsError names the failure.
  const unsigned s = unsigned(std::countr_zero(pgsize_bytes));
  const bool args_ok = IsPowerOfTwo(pgsize_bytes) && (pgsize_bytes & cfg_.pgsize_bitmap) &&
                       ValidProt(prot) && pgcount != 0 && ((va | pa) & (pgsize_bytes - 1)) == 0 &&
                       pgcount <= (uint64_t{1} << (std::min(ias_, oas_) - s)) &&
                       va <= (uint64_t{1} << ias_) - (pgcount << s) &&
                       pa <= (uint64_t{1} << oas_) - (pgcount << s);
  if (ABSL_PREDICT_FALSE(!args_ok)) return MapArgsError(va, pa, pgsize_bytes, pgcount, prot);

  const int level = level_for_shift_[s];
  if (prot != cached_prot_) {
    cached_attrs_ = lpae::ProtToLeafAttrs(stage_, cfg_.quirks, prot);
    cached_prot_ = prot;
  }
  const uint64_t pte_bits =
      cached_attrs_ | (level == kLeafLevel ? lpae::kPteTypePage : lpae::kPteTypeBlock);
  // Fast path: one leaf into the leaf table the walk cache holds.
  if (pgcount == 1 && CacheHit(va, level)) {
    uint64_t* ptep = walk_cache_.tables[level] + Index(va, level);
    if (ABSL_PREDICT_TRUE(*ptep == 0)) {
      *ptep = pa | pte_bits;
      AddLive(walk_cache_.count_slot, 1);
      ++leaf_count_[level];
      return absl::OkStatus();
    }
  }
  uint64_t done = 0;
  uint64_t cur_va = va;
  uint64_t cur_pa = pa;
  while (true) {
    uint64_t* count_slot = nullptr;
    bool no_memory = false;
    uint64_t* table = WalkAlloc(cur_va, level, &count_slot, &no_memory);
    if (ABSL_PREDICT_FALSE(no_memory)) {
      if (done != 0) ClearRange(va, cur_va - 1, nullptr, /*notify=*/false);
      return NoTableMemory("iova", cur_va, level);
    }
    uint64_t n = 0;
    bool conflict = table == nullptr;
    if (!conflict) {
      const uint64_t idx = Index(cur_va, level);
      uint64_t* ptep = table + idx;
      const uint64_t run = std::min(pgcount - done, entries_[level] - idx);
      // Two branch-free (vectorised) passes: any existing entry, then fill.
      if (ABSL_PREDICT_TRUE(OrAll(ptep, run) == 0)) {
        FillLeaves(ptep, run, cur_pa | pte_bits, pgsize_bytes);
        n = run;
        cur_pa += run << s;
      } else {
        while (ptep[n] == 0) {  // fill up to the conflict, then roll back below
          ptep[n++] = cur_pa | pte_bits;
          cur_pa += pgsize_bytes;
        }
        conflict = true;
      }
      AddLive(count_slot, n);
      leaf_count_[level] += n;
      done += n;
      cur_va += n << s;
    }
    if (ABSL_PREDICT_FALSE(conflict)) {
      if (done != 0) ClearRange(va, cur_va - 1, nullptr, /*notify=*/false);
      return FieldError(absl::StatusCode::kAlreadyExists, "iova", cur_va,
                        "already mapped (or inside a mapped block)");
    }
    if (done == pgcount) return absl::OkStatus();
  }
}

}  // namespace iommu::core
