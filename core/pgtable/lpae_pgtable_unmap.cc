// SPDX-License-Identifier: Apache-2.0
// LpaePgtable: unmap (validation, clearing, gathering, freeing empty tables)
// and break-before-make block splits.

#include <algorithm>
#include <cassert>
#include <cstring>

#include "absl/base/optimization.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/pgtable/lpae_pgtable.h"
#include "core/pgtable/lpae_runs.h"

namespace iommu::core {

using internal::AllOfType;
using lpae::kLeafLevel;

// --- Unmap ---------------------------------------------------------------------

absl::StatusOr<uint64_t> LpaePgtable::UnmapPages(Iova iova, uint64_t pgsize_bytes, uint64_t pgcount,
                                                 IotlbGather* gather, UnmapFlags flags) {
  assert(gather != nullptr);
  const uint64_t va = iova.value();
  const unsigned s = unsigned(std::countr_zero(pgsize_bytes));
  const bool args_ok = IsPowerOfTwo(pgsize_bytes) && (pgsize_bytes & cfg_.pgsize_bitmap) &&
                       pgcount != 0 && (va & (pgsize_bytes - 1)) == 0 &&
                       pgcount <= (uint64_t{1} << (ias_ - s)) &&
                       va <= (uint64_t{1} << ias_) - (pgcount << s);
  if (ABSL_PREDICT_FALSE(!args_ok)) return RangeArgsError(va, pgsize_bytes, pgcount);
  const uint64_t size = pgcount << s;
  const uint64_t last = va + size - 1;

  const int level = level_for_shift_[s];
  // Fast path: one leaf in the leaf table the walk cache holds (its entries
  // are pgsize_bytes, so the leaf is exactly the range).
  if (pgcount == 1 && CacheHit(va, level)) {
    uint64_t* ptep = walk_cache_.tables[level] + Index(va, level);
    if (ABSL_PREDICT_TRUE(IsLeaf(*ptep, level))) {
      *ptep = 0;
      if (!gather->queued) flush_ops_->TlbAddPage(gather, iova, size);
      --leaf_count_[level];
      if (SubLive(walk_cache_.count_slot, 1) == 0) {
        Cursor c;
        c.tables = walk_cache_.tables;
        FreeEmptyTables(c, level, va, /*notify=*/true);
      }
      return size;
    }
  }
  // One leaf exactly covering the range.
  Cursor c;
  bool found = false;
  if (level > start_level_ && CacheHit(va, level)) {
    c.tables = walk_cache_.tables;
    c.level = level;
    c.ptep = c.tables[level] + Index(va, level);
    found = IsLeaf(*c.ptep, level) || FindLeaf(va, &c);
  } else {
    found = FindLeaf(va, &c);
    if (found && c.level > start_level_) {
      walk_cache_.tables = c.tables;
      walk_cache_.count_slot = CountSlot(c.tables, c.level, va);
      walk_cache_.prefix = va >> shift_[c.level - 1];
      walk_cache_.level = c.level;
    }
  }
  if (found && EntryBytes(c.level) == size && (va & offset_mask_[c.level]) == 0) {
    *c.ptep = 0;
    if (!gather->queued) flush_ops_->TlbAddPage(gather, iova, size);
    --leaf_count_[c.level];
    if (SubLive(CountSlot(c.tables, c.level, va), 1) == 0 && c.level > start_level_) {
      FreeEmptyTables(c, c.level, va, /*notify=*/true);
    }
    return size;
  }
  // Batch fast path: pgcount leaves of pgsize_bytes, all in the leaf table
  // found at va. One vectorisable check, one clear.
  if (found && c.level == level && Index(va, level) + pgcount <= entries_[level]) {
    const uint64_t want_type = level == kLeafLevel ? lpae::kPteTypePage : lpae::kPteTypeBlock;
    uint64_t* ptep = c.ptep;
    if (AllOfType(ptep, pgcount, want_type)) {
      std::memset(ptep, 0, pgcount * sizeof(uint64_t));
      if (!gather->queued) GatherLeaves(gather, va, pgsize_bytes, pgcount);
      leaf_count_[level] -= pgcount;
      if (SubLive(CountSlot(c.tables, level, va), pgcount) == 0 && level > start_level_) {
        FreeEmptyTables(c, level, va, /*notify=*/true);
      }
      return size;
    }
  }
  RETURN_IF_ERROR(
      CheckUnmappable(va, last, (uint32_t(flags) & uint32_t(UnmapFlags::kAllowSplit)) != 0));
  ClearRange(va, last, gather, /*notify=*/true);
  return size;
}

absl::Status LpaePgtable::CheckUnmappable(uint64_t va, uint64_t last, bool allow_split) const {
  uint64_t cur = va;
  while (cur <= last) {
    Cursor c;
    if (!FindLeaf(cur, &c))
      return FieldError(absl::StatusCode::kNotFound, "iova", cur, "not mapped");
    const int level = c.level;
    const uint64_t leaf_bytes = EntryBytes(level);
    const uint64_t leaf_va = AlignDown(cur, leaf_bytes);
    if (leaf_va < va || leaf_va + (leaf_bytes - 1) > last) {
      if (!allow_split) {
        return FieldError(absl::StatusCode::kFailedPrecondition, "iova", leaf_va,
                          absl::StrFormat("the %#x-byte block mapped here lies only partly "
                                          "inside the unmap range [%#x, %#x]; it would split",
                                          leaf_bytes, va, last));
      }
      cur = leaf_va + leaf_bytes;
      continue;
    }
    // Skip the run of whole leaves in this table.
    cur += LeafRun(c, level, cur, last) * leaf_bytes;
  }
  return absl::OkStatus();
}

uint64_t LpaePgtable::LeafRun(const Cursor& c, int level, uint64_t cur, uint64_t last) const {
  const uint64_t max = EntriesInTable(cur, level, last);
  const uint64_t want_type = level == kLeafLevel ? lpae::kPteTypePage : lpae::kPteTypeBlock;
  const uint64_t* ptep = c.ptep;
  if (AllOfType(ptep, max, want_type)) return max;
  uint64_t n = 0;
  while (n < max && IsLeaf(ptep[n], level)) ++n;
  return n;
}

void LpaePgtable::ClearRange(uint64_t va, uint64_t last, IotlbGather* gather, bool notify) {
  const bool add_pages = notify && !gather->queued;
  uint64_t cur = va;
  while (cur <= last) {
    Cursor c;
    const bool found = FindLeaf(cur, &c);
    assert(found && "ClearRange over a validated range met a hole");
    (void)found;
    const int level = c.level;
    const uint64_t leaf_bytes = EntryBytes(level);
    const uint64_t leaf_va = AlignDown(cur, leaf_bytes);
    if (leaf_va < va || leaf_va + (leaf_bytes - 1) > last) {
      assert(notify && "a map rollback never splits");
      SplitBlock(c, std::max(va, leaf_va), std::min(last, leaf_va + (leaf_bytes - 1)));
      cur = leaf_va + leaf_bytes;
      continue;
    }
    // Every entry of a validated range in a last-level table is a page.
    const uint64_t n =
        level == kLeafLevel ? EntriesInTable(cur, level, last) : LeafRun(c, level, cur, last);
    std::memset(c.ptep, 0, n * sizeof(uint64_t));
    if (add_pages) GatherLeaves(gather, cur, leaf_bytes, n);
    leaf_count_[level] -= n;
    const uint64_t left = SubLive(CountSlot(c.tables, level, cur), n);
    cur += n * leaf_bytes;
    if (left == 0 && level > start_level_) FreeEmptyTables(c, level, cur - leaf_bytes, notify);
  }
}

void LpaePgtable::FreeEmptyTables(const Cursor& c, int level, uint64_t va, bool notify) {
  while (level > start_level_) {
    uint64_t* table_pte = c.tables[level - 1] + Index(va, level - 1);
    if (Live(table_pte) != 0) break;
    *table_pte = 0;
    if (notify) {
      const uint64_t range = EntryBytes(level - 1);
      flush_ops_->TlbFlushWalk(Iova(AlignDown(va, range)), range, geometry_.GranuleBytes());
    }
    FreeTable(c.tables[level], level);
    SubLive(CountSlot(c.tables, level - 1, va), 1);
    --level;
  }
}

// --- Splits --------------------------------------------------------------------

void LpaePgtable::SplitBlock(const Cursor& c, uint64_t rm_first, uint64_t rm_last) {
  const int level = c.level;
  const uint64_t block_pte = *c.ptep;
  const uint64_t block_bytes = EntryBytes(level);
  const uint64_t block_va = AlignDown(rm_first, block_bytes);
  assert(level < kLeafLevel);
  const uint64_t table_pte = BuildSplit(level, block_pte, block_va, rm_first, rm_last);
  // Break: no walk may see both the block and the table (or a mix). The
  // parent's live count is unchanged: the entry is valid again below.
  *c.ptep = 0;
  --leaf_count_[level];
  flush_ops_->TlbFlushWalk(Iova(block_va), block_bytes, block_bytes);
  // Make.
  *c.ptep = table_pte;
}

uint64_t LpaePgtable::BuildSplit(int level, uint64_t block_pte, uint64_t block_va,
                                 uint64_t rm_first, uint64_t rm_last) {
  const int child_level = level + 1;
  const uint64_t child_bytes = EntryBytes(child_level);
  const uint64_t attrs = block_pte & ~(lpae::kPteAddrMask | lpae::kPteTypeMask);
  const uint64_t block_pa = block_pte & lpae::kPteAddrMask;
  uint64_t* table = TakeTable(child_level);
  assert(table != nullptr && "no memory for a block split");
  uint64_t live = 0;
  for (uint64_t i = 0; i < entries_[child_level]; ++i) {
    const uint64_t first = block_va + i * child_bytes;
    const uint64_t last = first + (child_bytes - 1);
    const uint64_t pa = block_pa + i * child_bytes;
    if (first >= rm_first && last <= rm_last) continue;  // removed whole
    const bool keep_whole = last < rm_first || first > rm_last;
    if (keep_whole && leaf_allowed_[child_level]) {
      table[i] =
          pa | attrs | (child_level == kLeafLevel ? lpae::kPteTypePage : lpae::kPteTypeBlock);
      ++leaf_count_[child_level];
    } else {
      table[i] =
          BuildSplit(child_level, pa | attrs | lpae::kPteTypeBlock, first, rm_first, rm_last);
    }
    ++live;
  }
  assert(live > 0);
  return lpae::WithTableCount(TableDescriptor(table), live);
}

}  // namespace iommu::core
