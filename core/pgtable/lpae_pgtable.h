// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_PGTABLE_LPAE_PGTABLE_H_
#define IOMMU_CORE_PGTABLE_LPAE_PGTABLE_H_

// The Arm VMSAv8-64 LPAE page-table format (io-pgtable-arm) behind the
// generic IoPgtableOps. Encodings and level maths: core/pgtable/lpae_format.h.
//
// Layout. Tables are host memory: each table is exactly its descriptors,
// allocated aligned to its own size (a granule, or the concatenated stage-2
// root's size) and zeroed, so a new table touches one fresh page at most. A
// table descriptor's output-address field (bits [47:granule_shift]) holds the
// host address of the next-level table, not a simulated physical address —
// host pointers are below 2^48 and table-aligned, so they fit exactly (checked
// on allocation). Leaf descriptors carry the real output (physical) address.
// The number of valid entries of each table below the root lives in the
// walker-ignored bits of the table descriptor pointing at it
// (lpae::TableCount: [58:55] and [11:2]); the root's lives in root_count_, a
// descriptor-shaped word of its own. So a table is freed the moment it
// becomes empty (Linux keeps empty tables until the whole table is freed).
//
// Table recycling. A freed table is all zeroes, so up to kMaxCachedTables of
// them are kept on this table's free list (linked through entry 0, no lock)
// and handed out again without allocation or zeroing; the rest go back to the
// process's PgtablePagePool (bounded, shared, mutex-protected), which hands
// zeroed pages to the next table that needs one instead of faulting in fresh
// memory. Cached tables are not part of the tree: they are reported apart as
// PgtableStats::cached_table_{count,bytes}, so the memory this table holds is
// always table_bytes + cached_table_bytes, the cache bounded to 8 granules.
// Roots that are not one granule (small or concatenated) bypass both.
//
// Policy. MapPages writes one leaf per page at the level whose entry size is
// pgsize_bytes (a block above level 3, a page at level 3); callers choose the
// size, or use IoPgtableOps::Map to get the largest sizes alignment allows.
// Unmap clears leaves, reports each to the gather and frees tables that become
// empty, bottom up, each after a TlbFlushWalk over its range. Unmapping part
// of a block splits it break-before-make when asked: the replacement subtree
// is built off-line, the block entry is written invalid, TlbFlushWalk covers
// the block, and only then is the table descriptor written.
//
// Cost. A map or unmap of n pages walks from the root once per leaf table
// touched (at most 4 levels, one indexed load each, shifts and masks
// precomputed per level; a one-entry walk cache skips them for a run of
// operations in one leaf table) and then touches n consecutive descriptors in
// one store loop per table; the only allocation is a new table, from the free
// list when it holds one. An unmap reports each run of cleared leaves in one
// table with one FlushOps::TlbAddPages call (one TlbAddPage for a single
// leaf). iova_to_phys is one load per level.
//
// Thread-compatible: the owning domain serialises every call.

#include <algorithm>
#include <array>
#include <cassert>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/base/prot.h"
#include "core/base/types.h"
#include "core/pgtable/io_pgtable.h"
#include "core/pgtable/lpae_format.h"
#include "core/pgtable/pgtable_page_pool.h"

namespace iommu::core {

namespace lpae {

// Leaf attribute bits (everything but type and address) for prot.
// REQUIRES: prot is valid (kRead or kWrite set, no unknown bits).
uint64_t ProtToLeafAttrs(Stage stage, uint32_t quirks, Prot prot);
// What a leaf descriptor grants / the canonical prot that writes it / its
// memory attributes.
Grant DecodeGrant(Stage stage, uint64_t pte);
Prot DecodeProt(Stage stage, uint64_t pte);
LeafAttrs DecodeAttrs(Stage stage, uint64_t pte);

}  // namespace lpae

class LpaePgtable final : public IoPgtableOps {
 public:
  // Errors as AllocIoPgtableOps. flush_ops must outlive the table.
  static absl::StatusOr<std::unique_ptr<LpaePgtable>> Create(const IoPgtableCfg& cfg,
                                                             FlushOps* flush_ops);
  // Calls TlbFlushAll, then frees every table.
  ~LpaePgtable() override;

  LpaePgtable(const LpaePgtable&) = delete;
  LpaePgtable& operator=(const LpaePgtable&) = delete;

  absl::Status MapPages(Iova iova, PhysAddr paddr, uint64_t pgsize_bytes, uint64_t pgcount,
                        Prot prot) override;
  absl::StatusOr<uint64_t> UnmapPages(Iova iova, uint64_t pgsize_bytes, uint64_t pgcount,
                                      IotlbGather* gather,
                                      UnmapFlags flags = UnmapFlags::kNone) override;
  std::optional<PhysAddr> IovaToPhys(Iova iova) const override {
    const uint64_t va = iova.value();
    if (va >> ias_) return std::nullopt;
    const uint64_t* table = root_;
    for (int level = start_level_;; ++level) {
      const uint64_t pte = table[(va >> shift_[level]) & index_mask_[level]];
      if (!(pte & lpae::kPteValid)) return std::nullopt;
      if (level == lpae::kLeafLevel || (pte & lpae::kPteTypeMask) == lpae::kPteTypeBlock) {
        return PhysAddr((pte & lpae::kPteAddrMask) | (va & offset_mask_[level]));
      }
      table = TablePtr(pte);
    }
  }
  absl::StatusOr<PgtableWalk> Walk(Iova iova) const override;
  absl::Status CheckUnmapped(Iova iova, uint64_t size_bytes) const override;
  void ForEachMapping(absl::FunctionRef<void(const PgtableMapping&)> fn) const override;
  PgtableStats Stats() const override;
  absl::Status CheckInvariants() const override;

  const lpae::Geometry& geometry() const { return geometry_; }
  lpae::Stage stage() const { return stage_; }

 private:
  // The tables a walk passed through, by level, and where it stopped.
  struct Cursor {
    std::array<uint64_t*, lpae::kMaxLevels> tables{};
    int level = 0;  // level of the entry at ptep
    uint64_t* ptep = nullptr;
  };
  struct Counts;

  LpaePgtable(const IoPgtableCfg& cfg, FlushOps* flush_ops, lpae::Stage stage,
              const lpae::Geometry& geometry);

  static uint64_t* TablePtr(uint64_t pte) {
    return reinterpret_cast<uint64_t*>(pte & lpae::kPteAddrMask);
  }
  uint64_t TableDescriptor(const uint64_t* table) const {
    return reinterpret_cast<uintptr_t>(table) | table_attrs_ | lpae::kPteTypeTable;
  }
  bool IsLeaf(uint64_t pte, int level) const {
    return (pte & lpae::kPteValid) &&
           (level == lpae::kLeafLevel || (pte & lpae::kPteTypeMask) == lpae::kPteTypeBlock);
  }
  uint64_t Index(uint64_t va, int level) const {
    return (va >> shift_[level]) & index_mask_[level];
  }
  uint64_t EntryBytes(int level) const { return uint64_t{1} << shift_[level]; }
  // The word holding the live-entry count of tables[level] on the walk to va:
  // the parent's table descriptor, or root_count_ for the root.
  uint64_t* CountSlot(const std::array<uint64_t*, lpae::kMaxLevels>& tables, int level,
                      uint64_t va) {
    return level == start_level_ ? &root_count_ : tables[level - 1] + Index(va, level - 1);
  }
  static uint64_t Live(const uint64_t* slot) { return lpae::TableCount(*slot); }
  static void AddLive(uint64_t* slot, uint64_t n) {
    assert(lpae::TableCount(*slot) + n <= lpae::kMaxTableCount);
    *slot = lpae::WithTableCount(*slot, lpae::TableCount(*slot) + n);
  }
  // Returns the count left.
  static uint64_t SubLive(uint64_t* slot, uint64_t n) {
    assert(lpae::TableCount(*slot) >= n);
    const uint64_t left = lpae::TableCount(*slot) - n;
    *slot = lpae::WithTableCount(*slot, left);
    return left;
  }

  // A zeroed table for `level` (from the free list below the root), or
  // nullptr when there is no memory for one (the pgtable.table injection
  // point, or the allocator out of memory).
  uint64_t* AllocTable(int level);
  // AllocTable without the injection point: a block split's tables (no
  // broker call splits; see docs/design.md#failure-injection).
  uint64_t* TakeTable(int level);
  // RESOURCE_EXHAUSTED naming field=value: a table of `level` (or, mapping,
  // one above it) could not be allocated.
  static absl::Status NoTableMemory(absl::string_view field, uint64_t value, int level);
  // Frees an empty (all-zero) table, into the free list while it has room.
  void FreeTable(uint64_t* table, int level);
  // Returns a table's memory (granule-sized ones to the page pool, zeroed
  // first unless `zeroed`).
  void ReleaseTable(uint64_t* table, int level, bool zeroed);
  void ReleaseSubtree(uint64_t* table, int level);

  // Walks to the leaf table of `level` for va, allocating missing tables;
  // nullptr when a leaf above `level` already covers va, or (*no_memory set)
  // when a table could not be allocated: the tables this walk added are then
  // freed again. *count_slot is the table's count word (CountSlot). Uses and
  // fills the walk cache.
  uint64_t* WalkAlloc(uint64_t va, int level, uint64_t** count_slot, bool* no_memory);
  bool CacheHit(uint64_t va, int level) const {
    return walk_cache_.level == level && walk_cache_.prefix == (va >> shift_[level - 1]);
  }
  // Walks towards va; true when it ends at a leaf (c->ptep), false at an
  // invalid entry (c->ptep, at c->level).
  bool FindLeaf(uint64_t va, Cursor* c) const;

  absl::Status MapArgsError(uint64_t va, uint64_t pa, uint64_t pgsize_bytes, uint64_t pgcount,
                            Prot prot) const;
  absl::Status RangeArgsError(uint64_t va, uint64_t pgsize_bytes, uint64_t pgcount) const;
  // Checks that [va, last] is mapped without holes and (unless allow_split)
  // without leaves reaching outside it.
  absl::Status CheckUnmappable(uint64_t va, uint64_t last, bool allow_split) const;
  // The number of consecutive whole leaves at c.ptep (level `level`, IOVA
  // cur) that lie inside [cur, last] within the table. REQUIRES: cur is the
  // start of the leaf at c.ptep.
  uint64_t LeafRun(const Cursor& c, int level, uint64_t cur, uint64_t last) const;
  // The number of entries of the `level` table holding cur from cur's to the
  // one holding last or the table's end.
  uint64_t EntriesInTable(uint64_t cur, int level, uint64_t last) const {
    return std::min(entries_[level] - Index(cur, level), ((last - cur) >> shift_[level]) + 1);
  }
  // Clears every leaf in [va, last] (validated), splitting partial blocks;
  // notify=false is the silent rollback of a failed map (no flush calls:
  // nothing could have walked those entries, the caller serialises walks).
  void ClearRange(uint64_t va, uint64_t last, IotlbGather* gather, bool notify);
  // Frees tables[level] and its ancestors while they are empty and not the
  // root; va is inside tables[level]'s range.
  void FreeEmptyTables(const Cursor& c, int level, uint64_t va, bool notify);
  // Reports n cleared leaves of leaf_bytes from va to the gather.
  void GatherLeaves(IotlbGather* gather, uint64_t va, uint64_t leaf_bytes, uint64_t n) {
    if (n == 1) {
      flush_ops_->TlbAddPage(gather, Iova(va), leaf_bytes);
    } else {
      flush_ops_->TlbAddPages(gather, Iova(va), leaf_bytes, n);
    }
  }
  // Replaces the block at c (covering part of [rm_first, rm_last]) with a
  // table keeping the rest, break-before-make.
  void SplitBlock(const Cursor& c, uint64_t rm_first, uint64_t rm_last);
  // Builds the subtree replacing the block at `level`; returns the table
  // descriptor (with its count) to install.
  uint64_t BuildSplit(int level, uint64_t block_pte, uint64_t block_va, uint64_t rm_first,
                      uint64_t rm_last);

  void VisitTable(const uint64_t* table, int level, uint64_t base_va,
                  absl::FunctionRef<void(const PgtableMapping&)> fn) const;
  // live is the table's count word (its descriptor's software field).
  absl::Status CheckTable(const uint64_t* table, int level, uint64_t base_va, uint64_t live,
                          Counts* counts) const;
  absl::Status CheckFreeList() const;
  PgtableWalk DecodeWalk(uint64_t va, uint64_t pte, int level) const;

  const lpae::Stage stage_;
  const lpae::Geometry geometry_;
  const int start_level_;
  const unsigned ias_;
  const unsigned oas_;
  const uint64_t table_attrs_;  // NSTable under kQuirkArmNs
  // Where granule-sized tables come from and go back to.
  PgtablePagePool& pool_;
  // Per level: IOVA shift of the index, index mask, entries (the root's at
  // start_level_), offset mask of a leaf, and whether a leaf of that level's
  // size is in pgsize_bitmap.
  std::array<unsigned, lpae::kMaxLevels> shift_{};
  std::array<uint64_t, lpae::kMaxLevels> index_mask_{};
  std::array<uint64_t, lpae::kMaxLevels> entries_{};
  std::array<uint64_t, lpae::kMaxLevels> offset_mask_{};
  std::array<bool, lpae::kMaxLevels> leaf_allowed_{};
  // log2(page size) -> level, -1 when not in pgsize_bitmap.
  std::array<int8_t, 64> level_for_shift_{};
  uint64_t* root_ = nullptr;
  // The root's live-entry count, in a table descriptor's software field.
  uint64_t root_count_ = 0;

  // A one-entry software walk cache: the path to the leaf table the last map
  // or unmap used, so a run of operations in one table skips the upper levels
  // (the sequential case: 511 of 512 4K maps). Keyed by leaf-table level and
  // va >> shift_[level - 1]; only for leaf tables below the root. Valid while
  // no table is freed: FreeTable clears it (splits only add tables, under
  // prefixes a block covered, which the cache therefore cannot hold).
  struct WalkCache {
    int level = -1;
    uint64_t prefix = 0;
    std::array<uint64_t*, lpae::kMaxLevels> tables{};
    uint64_t* count_slot = nullptr;  // CountSlot(tables, level, prefix's va)
  };
  WalkCache walk_cache_;
  // ProtToLeafAttrs of the last prot mapped (kNone never maps: always stale).
  Prot cached_prot_ = Prot::kNone;
  uint64_t cached_attrs_ = 0;

  // Free list of empty tables below the root (all granule-sized), linked
  // through entry 0; every other entry is zero. At most kMaxCachedTables.
  static constexpr uint64_t kMaxCachedTables = 8;
  uint64_t* free_tables_ = nullptr;
  uint64_t cached_table_count_ = 0;

  // Accounting, kept exact (CheckInvariants recounts it).
  uint64_t table_count_ = 0;
  uint64_t table_bytes_ = 0;
  std::array<uint64_t, lpae::kMaxLevels> leaf_count_{};
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_PGTABLE_LPAE_PGTABLE_H_
