#ifndef IOMMU_CORE_LPAE_PGTABLE_H_
#define IOMMU_CORE_LPAE_PGTABLE_H_

// The Arm VMSAv8-64 LPAE page-table format (io-pgtable-arm) behind the
// generic IoPgtableOps. Encodings and level maths: core/lpae_format.h.
//
// Layout. Tables are host memory: each table is allocated aligned to its own
// size (a granule, or the concatenated stage-2 root's size), zeroed, and a
// table descriptor's output-address field (bits [47:granule_shift]) holds the
// host address of the next-level table, not a simulated physical address —
// host pointers are below 2^48 and table-aligned, so they fit exactly (checked
// on allocation). Leaf descriptors carry the real output (physical) address.
// Each table is followed by one 64-bit software word, outside the descriptor
// array the walker indexes: the number of valid entries in the table, so a
// table is freed the moment it becomes empty (Linux keeps empty tables until
// the whole table is freed).
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
// precomputed per level) and then touches n consecutive descriptors; the only
// allocation is a new table. iova_to_phys is one load per level.
//
// Thread-compatible: the owning domain serialises every call.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io_pgtable.h"
#include "core/lpae_format.h"
#include "core/prot.h"
#include "core/types.h"

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
    int level = 0;            // level of the entry at ptep
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
  // The live-entry count in the software word after the table's descriptors.
  uint64_t& LiveCount(uint64_t* table, int level) const { return table[entries_[level]]; }

  uint64_t* AllocTable(int level);
  void FreeTable(uint64_t* table, int level);
  void FreeSubtree(uint64_t* table, int level);

  // Walks to the leaf table of `level` for va, allocating missing tables;
  // nullptr when a leaf above `level` already covers va. Uses and fills the
  // walk cache.
  uint64_t* WalkAlloc(uint64_t va, int level);
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
  // Clears every leaf in [va, last] (validated), splitting partial blocks;
  // notify=false is the silent rollback of a failed map (no flush calls:
  // nothing could have walked those entries, the caller serialises walks).
  void ClearRange(uint64_t va, uint64_t last, IotlbGather* gather, bool notify);
  // Frees tables[level] and its ancestors while they are empty and not the
  // root; va is inside tables[level]'s range.
  void FreeEmptyTables(const Cursor& c, int level, uint64_t va, bool notify);
  // Replaces the block at c (covering part of [rm_first, rm_last]) with a
  // table keeping the rest, break-before-make.
  void SplitBlock(const Cursor& c, uint64_t rm_first, uint64_t rm_last);
  uint64_t* BuildSplit(int level, uint64_t block_pte, uint64_t block_va, uint64_t rm_first,
                       uint64_t rm_last);

  void VisitTable(const uint64_t* table, int level, uint64_t base_va,
                  absl::FunctionRef<void(const PgtableMapping&)> fn) const;
  absl::Status CheckTable(const uint64_t* table, int level, uint64_t base_va,
                          Counts* counts) const;
  PgtableWalk DecodeWalk(uint64_t va, uint64_t pte, int level) const;

  const lpae::Stage stage_;
  const lpae::Geometry geometry_;
  const int start_level_;
  const unsigned ias_;
  const unsigned oas_;
  const uint64_t table_attrs_;  // NSTable under kQuirkArmNs
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
  };
  WalkCache walk_cache_;
  // ProtToLeafAttrs of the last prot mapped (kNone never maps: always stale).
  Prot cached_prot_ = Prot::kNone;
  uint64_t cached_attrs_ = 0;

  // Accounting, kept exact (CheckInvariants recounts it).
  uint64_t table_count_ = 0;
  uint64_t table_bytes_ = 0;
  std::array<uint64_t, lpae::kMaxLevels> leaf_count_{};
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_LPAE_PGTABLE_H_
