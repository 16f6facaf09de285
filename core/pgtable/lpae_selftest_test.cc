// SPDX-License-Identifier: Apache-2.0
// The Linux LPAE selftest matrix (io-pgtable-arm.c arm_lpae_run_tests) as
// named scenarios, for every granule x ias/oas in {32,36,40,42,44,48} with
// ias <= oas x stage 1 and stage 2. CheckInvariants after every mutation.

#include <bit>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/pgtable/io_pgtable.h"
#include "core/pgtable/lpae_format.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

class NoFlush final : public FlushOps {
 public:
  void TlbFlushAll() override {}
  void TlbFlushWalk(Iova, uint64_t, uint64_t) override {}
  void TlbAddPage(IotlbGather*, Iova, uint64_t) override {}
};

constexpr uint64_t kSz1G = uint64_t{1} << 30;
constexpr Prot kRW = Prot::kRead | Prot::kWrite;

struct Config {
  unsigned granule_shift;
  unsigned ias;
  unsigned oas;
  IoPgtableFormat format;
};

std::string Name(const testing::TestParamInfo<Config>& info) {
  const Config& c = info.param;
  return absl::StrFormat("%s_%uK_ias%u_oas%u",
                         c.format == IoPgtableFormat::kArm64LpaeS1 ? "S1" : "S2",
                         1u << (c.granule_shift - 10), c.ias, c.oas);
}

std::vector<Config> AllConfigs() {
  std::vector<Config> configs;
  const unsigned bits[] = {32, 36, 40, 42, 44, 48};
  for (auto format : {IoPgtableFormat::kArm64LpaeS1, IoPgtableFormat::kArm64LpaeS2}) {
    for (unsigned g : {12u, 14u, 16u}) {
      for (unsigned ias : bits) {
        for (unsigned oas : bits) {
          if (ias <= oas) configs.push_back({g, ias, oas, format});
        }
      }
    }
  }
  return configs;
}

class LpaeSelftest : public testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    const Config& c = GetParam();
    IoPgtableCfg cfg;
    cfg.format = c.format;
    cfg.pgsize_bitmap = lpae::PgsizeBitmapForGranule(c.granule_shift);
    cfg.ias = c.ias;
    cfg.oas = c.oas;
    auto t = AllocIoPgtableOps(cfg, &flush_);
    ASSERT_TRUE(t.ok()) << t.status();
    ops_ = *std::move(t);
    for (uint64_t b = cfg.pgsize_bitmap; b != 0; b &= b - 1) sizes_.push_back(b & (~b + 1));
    ASSERT_TRUE(ops_->CheckInvariants().ok());
  }

  void Check() { ASSERT_TRUE(ops_->CheckInvariants().ok()) << ops_->CheckInvariants(); }
  uint64_t Phys(uint64_t iova) {
    auto pa = ops_->IovaToPhys(Iova(iova));
    return pa ? pa->value() : 0;
  }
  // Linux's loop: one page of each size at iova = j * 1G, identity mapped.
  void MapEachSize() {
    uint64_t iova = 0;
    for (uint64_t size : sizes_) {
      ASSERT_TRUE(
          ops_->MapPages(Iova(iova), PhysAddr(iova), size, 1, kRW | Prot::kNoExec | Prot::kCache)
              .ok())
          << "size " << size;
      Check();
      iova += kSz1G;
    }
  }

  NoFlush flush_;
  std::unique_ptr<IoPgtableOps> ops_;
  std::vector<uint64_t> sizes_;  // ascending
};

TEST_P(LpaeSelftest, EmptyTableTranslatesNothing) {
  for (uint64_t iova :
       {uint64_t{42}, kSz1G + 42, uint64_t{2} * kSz1G + 42, (uint64_t{1} << GetParam().ias) - 1}) {
    EXPECT_EQ(Phys(iova), 0u) << iova;
    EXPECT_EQ(ops_->Walk(Iova(iova)).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(ops_->Stats().table_count, 1u);
  EXPECT_EQ(ops_->Stats().mapped_bytes, 0u);
}

TEST_P(LpaeSelftest, EachPageSizeMapsIdentity) {
  MapEachSize();
  uint64_t iova = 0;
  for (uint64_t size : sizes_) {
    EXPECT_EQ(Phys(iova), iova);
    EXPECT_EQ(Phys(iova + size - 1), iova + size - 1);
    EXPECT_EQ(Phys(iova + size), 0u) << "a page maps exactly its size";
    auto w = ops_->Walk(Iova(iova));
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->leaf_size_bytes, size);
    iova += kSz1G;
  }
  uint64_t mapped = 0;
  for (uint64_t s : sizes_) mapped += s;
  EXPECT_EQ(ops_->Stats().mapped_bytes, mapped);
}

TEST_P(LpaeSelftest, OverlappingMapFails) {
  MapEachSize();
  const auto before = ops_->Stats();
  uint64_t iova = 0;
  for (uint64_t size : sizes_) {
    // Same iova, another paddr (Linux maps iova + size).
    const absl::Status s =
        ops_->MapPages(Iova(iova), PhysAddr(iova + size), size, 1, Prot::kRead | Prot::kNoExec);
    EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
    Check();
    EXPECT_EQ(Phys(iova), iova) << "the existing mapping is untouched";
    // Every other size over this one conflicts too.
    for (uint64_t other : sizes_) {
      const uint64_t at = iova & ~(other - 1);
      EXPECT_EQ(ops_->MapPages(Iova(at), PhysAddr(at), other, 1, kRW).code(),
                absl::StatusCode::kAlreadyExists)
          << "size " << size << " over " << other;
      Check();
    }
    iova += kSz1G;
  }
  EXPECT_EQ(ops_->Stats().table_count, before.table_count) << "failed maps leave no table";
  EXPECT_EQ(ops_->Stats().mapped_bytes, before.mapped_bytes);
}

TEST_P(LpaeSelftest, TranslatesAtOffset) {
  MapEachSize();
  uint64_t iova = 0;
  for (size_t j = 0; j < sizes_.size(); ++j) {
    EXPECT_EQ(Phys(iova + 42), iova + 42);
    iova += kSz1G;
  }
}

TEST_P(LpaeSelftest, FullUnmapThenRemap) {
  MapEachSize();
  uint64_t iova = 0;
  for (uint64_t size : sizes_) {
    IotlbGather gather;
    auto unmapped = ops_->UnmapPages(Iova(iova), size, 1, &gather);
    ASSERT_TRUE(unmapped.ok()) << unmapped.status();
    EXPECT_EQ(*unmapped, size);
    Check();
    EXPECT_EQ(Phys(iova + 42), 0u);
    ASSERT_TRUE(ops_->MapPages(Iova(iova), PhysAddr(iova), size, 1, kRW).ok());
    Check();
    EXPECT_EQ(Phys(iova + 42), iova + 42);
    iova += kSz1G;
  }
  // Everything off again: only the root remains.
  iova = 0;
  for (uint64_t size : sizes_) {
    IotlbGather gather;
    ASSERT_TRUE(ops_->UnmapPages(Iova(iova), size, 1, &gather).ok());
    Check();
    iova += kSz1G;
  }
  EXPECT_EQ(ops_->Stats().table_count, 1u);
  EXPECT_EQ(ops_->Stats().mapped_bytes, 0u);
}

TEST_P(LpaeSelftest, LastLargestPageOfIasMapsAndUnmaps) {
  const uint64_t size = sizes_.back();
  const uint64_t top = uint64_t{1} << GetParam().ias;
  const uint64_t iova = top - size;
  ASSERT_TRUE(ops_->MapPages(Iova(iova), PhysAddr(iova), size, 1, kRW).ok());
  Check();
  EXPECT_EQ(Phys(top - 1), top - 1);
  EXPECT_EQ(Phys(iova + 42), iova + 42);
  // One page further is beyond ias.
  EXPECT_EQ(ops_->MapPages(Iova(top), PhysAddr(iova), size, 1, kRW).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(ops_->MapPages(Iova(iova), PhysAddr(iova), size, 2, kRW).code(),
            absl::StatusCode::kOutOfRange);
  IotlbGather gather;
  auto unmapped = ops_->UnmapPages(Iova(iova), size, 1, &gather);
  ASSERT_TRUE(unmapped.ok()) << unmapped.status();
  EXPECT_EQ(*unmapped, size);
  Check();
  EXPECT_EQ(Phys(top - 1), 0u);
  EXPECT_EQ(ops_->Stats().table_count, 1u);
  // The last smallest page too, so the deepest walk reaches the top.
  const uint64_t small = sizes_.front();
  ASSERT_TRUE(ops_->MapPages(Iova(top - small), PhysAddr(top - small), small, 1, kRW).ok());
  Check();
  EXPECT_EQ(Phys(top - 1), top - 1);
  ASSERT_TRUE(ops_->UnmapPages(Iova(top - small), small, 1, &gather).ok());
  Check();
  EXPECT_EQ(ops_->Stats().table_count, 1u);
}

INSTANTIATE_TEST_SUITE_P(AllFormats, LpaeSelftest, testing::ValuesIn(AllConfigs()), Name);

}  // namespace
}  // namespace iommu::core
