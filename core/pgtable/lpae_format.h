// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_PGTABLE_LPAE_FORMAT_H_
#define IOMMU_CORE_PGTABLE_LPAE_FORMAT_H_

// Arm VMSAv8-64 long-descriptor (LPAE) translation table format: descriptor
// bit encodings and level maths. Everything here is constexpr and checked by
// static_assert below; no other file repeats a shift or a mask.
//
// Level/bit split per granule (an IOVA is split into per-level table indexes
// above the granule offset; "shift" is the IOVA bit where a level's index
// starts, so an entry at that level covers 2^shift bytes):
//
//   granule  bits/level  entries  L0 shift  L1 shift  L2 shift  L3 shift  leaf sizes (levels)
//   4K       9           512      39        30        21        12        1G (L1), 2M (L2), 4K (L3)
//   16K      11          2048     47        36        25        14        32M (L2), 16K (L3)
//   64K      13          8192     -         42        29        16        512M (L2), 64K (L3)
//
//   (16K L1 64G blocks and 64K L1 4T blocks need FEAT_LPA2/LPA: not modelled.)
//
// Start level and root size follow from ias: va_bits = ias - granule_shift,
// levels = ceil(va_bits / bits_per_level), start_level = 4 - levels, and the
// root resolves the remaining pgd_bits = va_bits - (levels - 1) * bits_per_level.
//
//   ias      4K              16K             64K
//   32       L1, 4 entries   L2, 128         L2, 8
//   36       L1, 64          L2, 2048        L2, 128
//   40       L0, 2           L1, 16          L2, 2048
//   42       L0, 8           L1, 64          L2, 8192
//   44       L0, 32          L1, 256         L1, 4
//   48       L0, 512         L0, 2           L1, 64
//
// Stage 2 concatenates up to 16 tables at the initial level to save a level,
// as the architecture allows (VTCR_EL2.SL0 + concatenation) and as Linux does
// for start level 0: whenever the root would hold <= 16 entries and starting
// one level lower loses no block level of the granule (4K keeps its level-1
// 1G blocks, so it only concatenates from level 0), the walk starts one level
// lower with a root of (entries) concatenated tables. E.g. 4K ias 40 -> L1
// with 2 tables, 16K ias 48 -> L1 with 2, 64K ias 44 -> L2 with 4.
//
// Descriptor layout (bits[1:0]): 0b00/0b10 invalid; 0b01 block (levels that
// hold blocks, see above); 0b11 table at levels 0..2, page at level 3.
// Output address bits [47:granule_shift] (block: [47:block shift]).

#include <cstdint>

#include "core/base/bits.h"

namespace iommu::core::lpae {

inline constexpr int kMaxLevels = 4;
inline constexpr int kLeafLevel = kMaxLevels - 1;
inline constexpr unsigned kPteBytesLog2 = 3;  // descriptors are 64-bit
inline constexpr unsigned kMaxAddrBits = 48;
inline constexpr unsigned kMinAddrBits = 32;
inline constexpr unsigned kMaxS2ConcatTables = 16;

// --- Descriptor type, bits[1:0] (both stages) ---
inline constexpr uint64_t kPteTypeMask = uint64_t{3};
inline constexpr uint64_t kPteTypeBlock = uint64_t{1};
inline constexpr uint64_t kPteTypeTable = uint64_t{3};
inline constexpr uint64_t kPteTypePage = uint64_t{3};  // level 3 only
inline constexpr uint64_t kPteValid = uint64_t{1} << 0;

// Output address field, bits [47:12]; the low bits below the leaf size are
// zero in every descriptor this format writes.
inline constexpr uint64_t kPteAddrMask = LowMask(kMaxAddrBits) & ~LowMask(12);

// --- Table descriptor attributes (stage 1) ---
inline constexpr uint64_t kPteNsTable = uint64_t{1} << 63;

// --- Table descriptor software field (both stages) ---
// Bits [58:55] and [11:2] of a table descriptor are IGNORED by the walker
// (VMSAv8-64 without FEAT_HAFT / FEAT_LPA2, neither of which is modelled), so
// software may keep data there. This format keeps the number of valid entries
// of the next-level table in them — count bits [9:0] in descriptor bits
// [11:2], count bits [13:10] in [58:55] — so the count lives in the word the
// walk already loads, and a table is exactly one granule of descriptors.
// 14 bits hold 0..16383, enough for the 8192 entries of a 64K-granule table.
inline constexpr unsigned kPteSwCountLoShift = 2;
inline constexpr unsigned kPteSwCountLoBits = 10;
inline constexpr unsigned kPteSwCountHiShift = 55;
inline constexpr unsigned kPteSwCountHiBits = 4;
inline constexpr uint64_t kPteSwCountMask = (LowMask(kPteSwCountLoBits) << kPteSwCountLoShift) |
                                            (LowMask(kPteSwCountHiBits) << kPteSwCountHiShift);
inline constexpr uint64_t kMaxTableCount = LowMask(kPteSwCountLoBits + kPteSwCountHiBits);

// The live-entry count a table descriptor carries.
constexpr uint64_t TableCount(uint64_t table_pte) {
  return ((table_pte >> kPteSwCountLoShift) & LowMask(kPteSwCountLoBits)) |
         (((table_pte >> kPteSwCountHiShift) & LowMask(kPteSwCountHiBits)) << kPteSwCountLoBits);
}
// table_pte with its count replaced. REQUIRES: count <= kMaxTableCount.
constexpr uint64_t WithTableCount(uint64_t table_pte, uint64_t count) {
  return (table_pte & ~kPteSwCountMask) |
         ((count & LowMask(kPteSwCountLoBits)) << kPteSwCountLoShift) |
         ((count >> kPteSwCountLoBits) << kPteSwCountHiShift);
}

// --- Stage-1 leaf attributes ---
inline constexpr uint64_t kPteXn = uint64_t{1} << 54;   // UXN: EL0 execute-never
inline constexpr uint64_t kPtePxn = uint64_t{1} << 53;  // privileged execute-never
inline constexpr uint64_t kPteNg = uint64_t{1} << 11;
inline constexpr uint64_t kPteAf = uint64_t{1} << 10;
inline constexpr unsigned kPteShShift = 8;
inline constexpr uint64_t kPteShMask = uint64_t{3} << kPteShShift;
inline constexpr uint64_t kPteShNs = uint64_t{0} << kPteShShift;  // non-shareable
inline constexpr uint64_t kPteShOs = uint64_t{2} << kPteShShift;  // outer shareable
inline constexpr uint64_t kPteShIs = uint64_t{3} << kPteShShift;  // inner shareable
inline constexpr uint64_t kPteApRdonly = uint64_t{1} << 7;        // AP[2]
inline constexpr uint64_t kPteApUnpriv = uint64_t{1} << 6;        // AP[1]
inline constexpr uint64_t kPteNs = uint64_t{1} << 5;
inline constexpr unsigned kPteAttrIndxShift = 2;
inline constexpr uint64_t kPteAttrIndxMask = uint64_t{7} << kPteAttrIndxShift;

// MAIR_ELx attribute indexes and the MAIR value the context must program
// (Linux's layout: 0 normal non-cacheable, 1 normal write-back RW-allocate,
// 2 device nGnRE, 3 inner non-cacheable / outer write-back).
inline constexpr uint64_t kMairIdxNc = 0;
inline constexpr uint64_t kMairIdxCache = 1;
inline constexpr uint64_t kMairIdxDev = 2;
inline constexpr uint64_t kMairIdxIncOcache = 3;
inline constexpr uint64_t kMairAttrNc = 0x44;
inline constexpr uint64_t kMairAttrWbrwa = 0xff;
inline constexpr uint64_t kMairAttrDevice = 0x04;
inline constexpr uint64_t kMairAttrIncOwbrwa = 0xf4;
inline constexpr uint64_t kMairValue =
    (kMairAttrNc << (8 * kMairIdxNc)) | (kMairAttrWbrwa << (8 * kMairIdxCache)) |
    (kMairAttrDevice << (8 * kMairIdxDev)) | (kMairAttrIncOwbrwa << (8 * kMairIdxIncOcache));
constexpr uint64_t AttrIndx(uint64_t mair_idx) { return mair_idx << kPteAttrIndxShift; }

// --- Stage-2 leaf attributes ---
inline constexpr uint64_t kPteS2Xn = uint64_t{1} << 54;      // XN[1]: never executable
inline constexpr uint64_t kPteS2ApWrite = uint64_t{1} << 7;  // S2AP[1]
inline constexpr uint64_t kPteS2ApRead = uint64_t{1} << 6;   // S2AP[0]
inline constexpr unsigned kPteS2MemAttrShift = 2;
inline constexpr uint64_t kPteS2MemAttrMask = uint64_t{0xf} << kPteS2MemAttrShift;
inline constexpr uint64_t kPteS2MemAttrOiwb = uint64_t{0xf} << kPteS2MemAttrShift;
inline constexpr uint64_t kPteS2MemAttrNc = uint64_t{0x5} << kPteS2MemAttrShift;
inline constexpr uint64_t kPteS2MemAttrDev = uint64_t{0x1} << kPteS2MemAttrShift;

// Every attribute bit a leaf written by this format may carry, per stage.
inline constexpr uint64_t kPteS1LeafAttrs = kPteXn | kPtePxn | kPteNg | kPteAf | kPteShMask |
                                            kPteApRdonly | kPteApUnpriv | kPteNs | kPteAttrIndxMask;
inline constexpr uint64_t kPteS2LeafAttrs =
    kPteS2Xn | kPteAf | kPteShMask | kPteS2ApWrite | kPteS2ApRead | kPteS2MemAttrMask;

static_assert((kPteSwCountMask & (kPteAddrMask | kPteTypeMask | kPteNsTable)) == 0);
static_assert(kMaxTableCount >= (uint64_t{1} << 13), "a 64K-granule table's 8192 entries");
static_assert(TableCount(WithTableCount(~uint64_t{0}, 8192)) == 8192);
static_assert(TableCount(WithTableCount(0, 1023)) == 1023);
static_assert(TableCount(WithTableCount(0, 1024)) == 1024);
static_assert((WithTableCount(0, kMaxTableCount) & ~kPteSwCountMask) == 0);
static_assert((kPteS1LeafAttrs & kPteAddrMask) == 0);
static_assert((kPteS2LeafAttrs & kPteAddrMask) == 0);
static_assert(((kPteS1LeafAttrs | kPteS2LeafAttrs) & kPteTypeMask) == 0);

// --- Level maths ---

constexpr bool IsGranuleShift(unsigned granule_shift) {
  return granule_shift == 12 || granule_shift == 14 || granule_shift == 16;
}
constexpr unsigned BitsPerLevel(unsigned granule_shift) { return granule_shift - kPteBytesLog2; }
// IOVA bit where the index of `level` starts = log2 of the bytes one entry
// at `level` covers.
constexpr unsigned LevelShift(unsigned granule_shift, int level) {
  return granule_shift + unsigned(kLeafLevel - level) * BitsPerLevel(granule_shift);
}
// Whether a leaf (block or page) may sit at `level` for this granule.
constexpr bool LevelHoldsLeaves(unsigned granule_shift, int level) {
  if (level == kLeafLevel) return true;
  if (level == 2) return true;
  return level == 1 && granule_shift == 12;
}
// The lowest-numbered level holding blocks (1 for 4K, 2 for 16K and 64K).
constexpr int HighestBlockLevel(unsigned granule_shift) {
  return LevelHoldsLeaves(granule_shift, 1) ? 1 : 2;
}
// The page sizes a granule supports (Linux's arm_lpae_restrict_pgsizes).
constexpr uint64_t PgsizeBitmapForGranule(unsigned granule_shift) {
  uint64_t bitmap = 0;
  for (int level = 1; level <= kLeafLevel; ++level) {
    if (LevelHoldsLeaves(granule_shift, level)) {
      bitmap |= uint64_t{1} << LevelShift(granule_shift, level);
    }
  }
  return bitmap;
}

enum class Stage : uint8_t { kStage1, kStage2 };

// The walk geometry of one table configuration.
struct Geometry {
  unsigned granule_shift = 0;
  unsigned bits_per_level = 0;
  int start_level = 0;
  unsigned pgd_bits = 0;       // index bits resolved by the root
  unsigned concat_tables = 1;  // stage-2 concatenated tables in the root

  constexpr uint64_t RootEntries() const { return uint64_t{1} << pgd_bits; }
  constexpr uint64_t RootBytes() const { return RootEntries() << kPteBytesLog2; }
  constexpr uint64_t TableEntries() const { return uint64_t{1} << bits_per_level; }
  constexpr uint64_t GranuleBytes() const { return uint64_t{1} << granule_shift; }
  friend constexpr bool operator==(const Geometry&, const Geometry&) = default;
};

// REQUIRES: IsGranuleShift(granule_shift), kMinAddrBits <= ias <= kMaxAddrBits.
constexpr Geometry ComputeGeometry(unsigned granule_shift, unsigned ias, Stage stage) {
  Geometry g;
  g.granule_shift = granule_shift;
  g.bits_per_level = BitsPerLevel(granule_shift);
  const unsigned va_bits = ias - granule_shift;
  const unsigned levels = (va_bits + g.bits_per_level - 1) / g.bits_per_level;
  g.start_level = kMaxLevels - int(levels);
  g.pgd_bits = va_bits - (levels - 1) * g.bits_per_level;
  if (stage == Stage::kStage2 && g.start_level + 1 <= HighestBlockLevel(granule_shift) &&
      g.RootEntries() <= kMaxS2ConcatTables) {
    g.concat_tables = unsigned(g.RootEntries());
    g.pgd_bits += g.bits_per_level;
    g.start_level += 1;
  }
  return g;
}

static_assert(LevelShift(12, 0) == 39 && LevelShift(12, 1) == 30 && LevelShift(12, 2) == 21 &&
              LevelShift(12, 3) == 12);
static_assert(LevelShift(14, 0) == 47 && LevelShift(14, 2) == 25 && LevelShift(14, 3) == 14);
static_assert(LevelShift(16, 1) == 42 && LevelShift(16, 2) == 29 && LevelShift(16, 3) == 16);
static_assert(PgsizeBitmapForGranule(12) == ((1u << 12) | (1u << 21) | (1u << 30)));
static_assert(PgsizeBitmapForGranule(14) == ((1u << 14) | (1u << 25)));
static_assert(PgsizeBitmapForGranule(16) == ((1u << 16) | (1u << 29)));
static_assert(ComputeGeometry(12, 48, Stage::kStage1) == Geometry{12, 9, 0, 9, 1});
static_assert(ComputeGeometry(12, 40, Stage::kStage1) == Geometry{12, 9, 0, 1, 1});
static_assert(ComputeGeometry(12, 39, Stage::kStage1) == Geometry{12, 9, 1, 9, 1});
static_assert(ComputeGeometry(12, 32, Stage::kStage1) == Geometry{12, 9, 1, 2, 1});
static_assert(ComputeGeometry(14, 48, Stage::kStage1) == Geometry{14, 11, 0, 1, 1});
static_assert(ComputeGeometry(14, 36, Stage::kStage1) == Geometry{14, 11, 2, 11, 1});
static_assert(ComputeGeometry(16, 48, Stage::kStage1) == Geometry{16, 13, 1, 6, 1});
static_assert(ComputeGeometry(16, 42, Stage::kStage1) == Geometry{16, 13, 2, 13, 1});
static_assert(ComputeGeometry(16, 32, Stage::kStage1) == Geometry{16, 13, 2, 3, 1});
// Stage-2 concatenation.
static_assert(ComputeGeometry(12, 48, Stage::kStage2) == Geometry{12, 9, 0, 9, 1});
static_assert(ComputeGeometry(12, 40, Stage::kStage2) == Geometry{12, 9, 1, 10, 2});
static_assert(ComputeGeometry(12, 44, Stage::kStage2) == Geometry{12, 9, 0, 5, 1});
static_assert(ComputeGeometry(12, 32, Stage::kStage2) == Geometry{12, 9, 1, 2, 1});
static_assert(ComputeGeometry(14, 40, Stage::kStage2) == Geometry{14, 11, 2, 15, 16});
static_assert(ComputeGeometry(14, 48, Stage::kStage2) == Geometry{14, 11, 1, 12, 2});
static_assert(ComputeGeometry(16, 44, Stage::kStage2) == Geometry{16, 13, 2, 15, 4});
static_assert(ComputeGeometry(16, 48, Stage::kStage2) == Geometry{16, 13, 1, 6, 1});
static_assert(kMairValue == 0xf404ff44ull);

}  // namespace iommu::core::lpae

#endif  // IOMMU_CORE_PGTABLE_LPAE_FORMAT_H_
