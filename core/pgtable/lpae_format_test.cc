// SPDX-License-Identifier: Apache-2.0
// Decode tests: the descriptors written for known inputs equal hand-computed
// bit patterns, and Walk() decodes them back (Grant, prot, attributes).

#include "core/pgtable/lpae_format.h"

#include <memory>

#include "core/pgtable/io_pgtable.h"
#include "core/pgtable/lpae_pgtable.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using lpae::Stage;

class NoFlush final : public FlushOps {
 public:
  void TlbFlushAll() override {}
  void TlbFlushWalk(Iova, uint64_t, uint64_t) override {}
  void TlbAddPage(IotlbGather*, Iova, uint64_t) override {}
};

constexpr uint64_t kSz4K = uint64_t{1} << 12;
constexpr uint64_t kSz2M = uint64_t{1} << 21;
constexpr uint64_t kPa = 0x8000'0000;

std::unique_ptr<LpaePgtable> Make(Stage stage, unsigned granule_shift, uint32_t quirks = 0) {
  static NoFlush flush;
  IoPgtableCfg cfg;
  cfg.format =
      stage == Stage::kStage1 ? IoPgtableFormat::kArm64LpaeS1 : IoPgtableFormat::kArm64LpaeS2;
  cfg.pgsize_bitmap = lpae::PgsizeBitmapForGranule(granule_shift);
  cfg.ias = 48;
  cfg.oas = 48;
  cfg.quirks = quirks;
  auto t = LpaePgtable::Create(cfg, &flush);
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

// The descriptor MapPages writes for one page of pgsize at iova == kPa.
uint64_t Descriptor(Stage stage, Prot prot, uint64_t pgsize = kSz4K, unsigned granule_shift = 12,
                    uint32_t quirks = 0) {
  auto t = Make(stage, granule_shift, quirks);
  const uint64_t pa = pgsize >= kPa ? pgsize : kPa;
  EXPECT_TRUE(t->MapPages(Iova(pa), PhysAddr(pa), pgsize, 1, prot).ok());
  EXPECT_TRUE(t->CheckInvariants().ok());
  auto w = t->Walk(Iova(pa + 42));
  EXPECT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->phys, PhysAddr(pa + 42));
  EXPECT_EQ(w->leaf_size_bytes, pgsize);
  return w->descriptor & ~lpae::kPteAddrMask;  // attributes and type
}

constexpr Prot kRW = Prot::kRead | Prot::kWrite;

TEST(LpaeDecodeTest, Stage1Encodings) {
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW), 0xE43u);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW, kSz2M), 0xE41u);
  EXPECT_EQ(Descriptor(Stage::kStage1, Prot::kRead), 0xEC3u);
  EXPECT_EQ(Descriptor(Stage::kStage1, Prot::kWrite), 0xE43u);  // AP cannot say write-only
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW | Prot::kPriv), 0xE03u);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW | Prot::kNoExec), 0x0060'0000'0000'0E43u);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW | Prot::kMmio), 0xE4Bu);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW | Prot::kMmio | Prot::kCache), 0xE4Bu);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW | Prot::kCache), 0xF47u);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW, kSz4K, 12, kQuirkArmNs), 0xE63u);
  // Blocks of the other granules: 32M (16K) and 512M (64K).
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW, uint64_t{1} << 25, 14), 0xE41u);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW, uint64_t{1} << 29, 16), 0xE41u);
  EXPECT_EQ(Descriptor(Stage::kStage1, kRW, uint64_t{1} << 16, 16), 0xE43u);
}

TEST(LpaeDecodeTest, Stage2Encodings) {
  EXPECT_EQ(Descriptor(Stage::kStage2, kRW), 0x6D7u);
  EXPECT_EQ(Descriptor(Stage::kStage2, kRW, kSz2M), 0x6D5u);
  EXPECT_EQ(Descriptor(Stage::kStage2, Prot::kRead), 0x657u);
  EXPECT_EQ(Descriptor(Stage::kStage2, Prot::kWrite), 0x697u);
  EXPECT_EQ(Descriptor(Stage::kStage2, kRW | Prot::kCache), 0x7FFu);
  EXPECT_EQ(Descriptor(Stage::kStage2, kRW | Prot::kMmio), 0x6C7u);
  EXPECT_EQ(Descriptor(Stage::kStage2, kRW | Prot::kNoExec), 0x0040'0000'0000'06D7u);
  EXPECT_EQ(Descriptor(Stage::kStage2, kRW | Prot::kPriv), 0x6D7u);  // no stage-2 privilege
}

TEST(LpaeDecodeTest, FullDescriptorCarriesPhysicalAddress) {
  auto t = Make(Stage::kStage1, 12);
  ASSERT_TRUE(t->MapPages(Iova(0x1'0000'0000), PhysAddr(0x8000'0000), kSz4K, 1, kRW).ok());
  EXPECT_EQ(t->Walk(Iova(0x1'0000'0000))->descriptor, 0x8000'0000u | 0xE43u);
  ASSERT_TRUE(t->MapPages(Iova(0x2'0000'0000), PhysAddr(0xC000'0000), kSz2M, 1, kRW).ok());
  EXPECT_EQ(t->Walk(Iova(0x2'0000'1234))->descriptor, 0xC000'0000u | 0xE41u);
  EXPECT_EQ(t->Walk(Iova(0x2'0000'1234))->level, 2);
  EXPECT_EQ(t->Walk(Iova(0x1'0000'0000))->level, 3);
}

Grant G(uint8_t bits) { return Grant(bits); }

Grant WalkGrant(Stage stage, Prot prot) {
  auto t = Make(stage, 12);
  EXPECT_TRUE(t->MapPages(Iova(kPa), PhysAddr(kPa), kSz4K, 1, prot).ok());
  return t->Walk(Iova(kPa))->grant;
}

TEST(LpaeDecodeTest, Stage1Grants) {
  // RW unprivileged: unprivileged RWX; privileged RW but not X (writable at
  // EL0 implies PXN).
  EXPECT_EQ(WalkGrant(Stage::kStage1, kRW),
            G(Grant::kReadUnpriv | Grant::kWriteUnpriv | Grant::kExecUnpriv | Grant::kReadPriv |
              Grant::kWritePriv));
  EXPECT_EQ(WalkGrant(Stage::kStage1, Prot::kRead),
            G(Grant::kReadUnpriv | Grant::kExecUnpriv | Grant::kReadPriv | Grant::kExecPriv));
  EXPECT_EQ(WalkGrant(Stage::kStage1, kRW | Prot::kPriv),
            G(Grant::kReadPriv | Grant::kWritePriv | Grant::kExecPriv));
  EXPECT_EQ(WalkGrant(Stage::kStage1, Prot::kRead | Prot::kPriv | Prot::kNoExec),
            G(Grant::kReadPriv));
  EXPECT_EQ(WalkGrant(Stage::kStage1, kRW | Prot::kNoExec),
            G(Grant::kReadUnpriv | Grant::kWriteUnpriv | Grant::kReadPriv | Grant::kWritePriv));
}

TEST(LpaeDecodeTest, Stage2Grants) {
  const uint8_t rw =
      Grant::kReadUnpriv | Grant::kWriteUnpriv | Grant::kReadPriv | Grant::kWritePriv;
  EXPECT_EQ(WalkGrant(Stage::kStage2, kRW), G(rw | Grant::kExecUnpriv | Grant::kExecPriv));
  EXPECT_EQ(WalkGrant(Stage::kStage2, kRW | Prot::kNoExec), G(rw));
  EXPECT_EQ(WalkGrant(Stage::kStage2, Prot::kWrite), G(Grant::kWriteUnpriv | Grant::kWritePriv));
  EXPECT_EQ(WalkGrant(Stage::kStage2, Prot::kRead | Prot::kNoExec),
            G(Grant::kReadUnpriv | Grant::kReadPriv));
}

TEST(LpaeDecodeTest, ProtRoundTripsAndAttributes) {
  for (Stage stage : {Stage::kStage1, Stage::kStage2}) {
    for (Prot prot : {kRW, Prot::kRead, kRW | Prot::kCache, kRW | Prot::kMmio | Prot::kNoExec,
                      Prot::kRead | Prot::kCache | Prot::kNoExec}) {
      const Prot want = stage == Stage::kStage1 ? prot : prot;
      auto t = Make(stage, 12);
      ASSERT_TRUE(t->MapPages(Iova(kPa), PhysAddr(kPa), kSz4K, 1, prot).ok());
      auto w = t->Walk(Iova(kPa));
      ASSERT_TRUE(w.ok());
      EXPECT_EQ(uint32_t(w->prot), uint32_t(want)) << "stage " << int(stage);
      EXPECT_TRUE(w->attrs.access_flag);
      EXPECT_EQ(w->attrs.not_global, stage == Stage::kStage1);
      const MemType mt = Has(prot, Prot::kMmio)    ? MemType::kDevice
                         : Has(prot, Prot::kCache) ? MemType::kNormalCacheable
                                                   : MemType::kNormalNonCacheable;
      EXPECT_EQ(w->attrs.mem_type, mt);
      EXPECT_EQ(w->attrs.shareability,
                Has(prot, Prot::kCache) ? Shareability::kInner : Shareability::kOuter);
    }
  }
  // Stage 1 decodes PRIV back; write-only decodes as read-write.
  auto t = Make(Stage::kStage1, 12);
  ASSERT_TRUE(t->MapPages(Iova(kPa), PhysAddr(kPa), kSz4K, 1, Prot::kWrite | Prot::kPriv).ok());
  EXPECT_EQ(uint32_t(t->Walk(Iova(kPa))->prot), uint32_t(kRW | Prot::kPriv));
}

TEST(LpaeGeometryTest, CoversExactlyTheIasForEveryConfig) {
  for (unsigned g : {12u, 14u, 16u}) {
    for (unsigned ias = lpae::kMinAddrBits; ias <= lpae::kMaxAddrBits; ++ias) {
      for (Stage stage : {Stage::kStage1, Stage::kStage2}) {
        const lpae::Geometry geo = lpae::ComputeGeometry(g, ias, stage);
        // Root entries * (entry coverage at the start level) == 2^ias.
        EXPECT_EQ(geo.pgd_bits + lpae::LevelShift(g, geo.start_level), ias)
            << "granule " << g << " ias " << ias;
        EXPECT_GE(geo.start_level, 0);
        EXPECT_LE(geo.start_level, 2) << "a walk starting at level 3 is never needed here";
        EXPECT_LE(geo.concat_tables, lpae::kMaxS2ConcatTables);
        if (stage == Stage::kStage1 || geo.concat_tables == 1) {
          EXPECT_LE(geo.pgd_bits, geo.bits_per_level);
        } else {
          EXPECT_EQ(geo.RootEntries(), geo.concat_tables * geo.TableEntries());
        }
      }
    }
  }
}

// The table-descriptor software count round-trips every value a table can
// hold and never disturbs the address, type or NSTable bits.
TEST(LpaeFormatTest, TableCountFieldRoundTripsAndKeepsDescriptorBits) {
  const uint64_t desc =
      (uint64_t{0xfedc'ba98'7000} & lpae::kPteAddrMask) | lpae::kPteTypeTable | lpae::kPteNsTable;
  for (uint64_t count = 0; count <= lpae::kMaxTableCount; ++count) {
    const uint64_t with = lpae::WithTableCount(desc, count);
    ASSERT_EQ(lpae::TableCount(with), count);
    ASSERT_EQ(with & ~lpae::kPteSwCountMask, desc) << count;
    ASSERT_EQ(lpae::WithTableCount(with, 0), desc);
  }
  EXPECT_EQ(lpae::kPteSwCountMask, (uint64_t{0xf} << 55) | (uint64_t{0x3ff} << 2));
  EXPECT_EQ(lpae::WithTableCount(0, 0x2401), (uint64_t{0x9} << 55) | (uint64_t{1} << 2));
}

}  // namespace
}  // namespace iommu::core
