// SPDX-License-Identifier: Apache-2.0
// Domain transactions: gather, then invalidate, then free IOVAs, then release
// memory, in that order, and nothing of it before the commit.

#include "core/broker/domain.h"

#include <memory>
#include <vector>

#include "core/base/bits.h"
#include "core/broker/topology.h"
#include "gtest/gtest.h"

namespace iommu::core::internal {
namespace {

constexpr uint64_t kPage = 4096;

// Builds an SMMU as the broker does, with a real IOTLB.
std::unique_ptr<Smmu> MakeSmmu() {
  auto smmu = std::make_unique<Smmu>();
  smmu->config = {.name = "smmu-test", .ias_bits = 40, .oas_bits = 40, .num_contexts = 4};
  auto iotlb = Iotlb::Create({.sets = 64, .ways = 4, .leaf_sizes_log2 = {12, 21, 30}});
  EXPECT_TRUE(iotlb.ok());
  absl::MutexLock l(&smmu->mu);
  smmu->iotlb = std::make_unique<Iotlb>(*std::move(iotlb));
  smmu->context_in_use.assign(smmu->config.num_contexts, false);
  return smmu;
}

// Records what a transaction tells it and, at release, what the domain and
// the IOTLB looked like then.
class RecordingReleaser final : public MappingReleaser {
 public:
  RecordingReleaser(Smmu& smmu, Domain& d) : smmu_(smmu), d_(d) {}
  void Unmapped(const Domain&, const MappingRecord& m) override {
    unmapped.push_back(m.iova.value());
    cached_at_unmap.push_back(Cached(m.iova));
  }
  void ReleaseUnmapped() override {
    ++releases;
    for (uint64_t iova : unmapped) cached_at_release.push_back(Cached(Iova(iova)));
  }
  bool Cached(Iova iova) {
    absl::MutexLock l(&smmu_.mu);
    return smmu_.iotlb->Lookup(d_.tag(), iova).has_value();
  }

  std::vector<uint64_t> unmapped;
  std::vector<bool> cached_at_unmap, cached_at_release;
  int releases = 0;

 private:
  Smmu& smmu_;
  Domain& d_;
};

// Maps one page at a fresh IOVA and caches its translation in the IOTLB (as a
// device access would).
Iova MapAndCache(Smmu& smmu, Domain& d, MappingReleaser& r, PhysAddr phys) {
  Domain::Transaction txn(d, r);
  auto iova = txn.AllocIova(kPage, Iova(LowMask(32)), "test");
  EXPECT_TRUE(iova.ok()) << iova.status();
  EXPECT_TRUE(txn.MapRanges({{*iova, {phys, kPage}}}, Prot::kRead | Prot::kWrite).ok());
  MappingRecord& rec = txn.Insert(*iova, kPage, kPage);
  rec.iova_from_allocator = true;
  rec.pt_ranges.push_back({*iova, {phys, kPage}});
  auto walk = txn.pgtable()->Walk(*iova);
  EXPECT_TRUE(walk.ok());
  absl::MutexLock l(&smmu.mu);
  EXPECT_TRUE(smmu.iotlb->Insert(d.tag(), walk->leaf_iova, 12, walk->leaf_phys, walk->grant).ok());
  return *iova;
}

TEST(DomainTransactionTest, StrictUnmapInvalidatesBeforeItFreesTheIovaAndReleases) {
  auto smmu = MakeSmmu();
  auto d = Domain::Create(smmu.get(), {.type = DomainType::kDma});
  ASSERT_TRUE(d.ok()) << d.status();
  RecordingReleaser r(*smmu, **d);
  const Iova iova = MapAndCache(*smmu, **d, r, PhysAddr(0x8000'0000));
  ASSERT_TRUE(r.Cached(iova));
  {
    Domain::Transaction txn(**d, r);
    txn.Remove(iova.value());
    // Gathered, not yet synced: the leaf is gone from the page table, the
    // IOTLB still holds it, and the IOVA is still allocated.
    EXPECT_FALSE(txn.pgtable()->Walk(iova).ok());
    EXPECT_TRUE(r.Cached(iova));
    EXPECT_EQ(r.releases, 1);  // the earlier transaction's commit only
  }
  ASSERT_EQ(r.unmapped.size(), 1u);
  EXPECT_TRUE(r.cached_at_unmap[0]);
  // By the release the IOTLB had forgotten it.
  EXPECT_EQ(r.releases, 2);
  ASSERT_EQ(r.cached_at_release.size(), 1u);
  EXPECT_FALSE(r.cached_at_release[0]);
  Domain::Reader reader(**d);
  const auto& cookie = std::get<IovaCookie>(reader.cookie());
  EXPECT_FALSE(cookie.iovad->AllocationSizeBytes(iova).has_value());
  EXPECT_EQ(reader.mappings().size(), 0u);
  EXPECT_EQ(reader.mapped_bytes(), 0u);
}

TEST(DomainTransactionTest, AnAllocationInTheSameTransactionSyncsFirst) {
  auto smmu = MakeSmmu();
  auto d = Domain::Create(smmu.get(), {.type = DomainType::kDma});
  ASSERT_TRUE(d.ok()) << d.status();
  RecordingReleaser r(*smmu, **d);
  const Iova first = MapAndCache(*smmu, **d, r, PhysAddr(0x8000'0000));
  Domain::Transaction txn(**d, r);
  txn.Remove(first.value());
  EXPECT_TRUE(r.Cached(first));
  // The allocator hands the address straight back (its cache is LIFO), but
  // only after the gathered invalidation completed.
  auto again = txn.AllocIova(kPage, Iova(LowMask(32)), "test");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, first);
  EXPECT_FALSE(r.Cached(first));
  txn.FreeIova(*again, kPage);
}

TEST(DomainTransactionTest, LazyUnmapKeepsTheEntryUntilTheQueueFlushes) {
  auto smmu = MakeSmmu();
  auto d = Domain::Create(smmu.get(), {.type = DomainType::kDmaFq});
  ASSERT_TRUE(d.ok()) << d.status();
  RecordingReleaser r(*smmu, **d);
  const Iova iova = MapAndCache(*smmu, **d, r, PhysAddr(0x8000'0000));
  // A neighbour keeps the leaf table alive (freeing a table ends the window
  // of the stale entries below it).
  const Iova neighbour = MapAndCache(*smmu, **d, r, PhysAddr(0x8000'1000));
  ASSERT_EQ(iova.value() >> 21, neighbour.value() >> 21);
  {
    Domain::Transaction txn(**d, r);
    txn.Remove(iova.value());
  }
  // Committed, yet the (stale) entry lives on and the IOVA is not free.
  EXPECT_TRUE(r.Cached(iova));
  {
    Domain::Reader reader(**d);
    EXPECT_TRUE(std::get<IovaCookie>(reader.cookie()).iovad->AllocationSizeBytes(iova).has_value());
  }
  {
    Domain::Transaction txn(**d, r);
    txn.FlushQueue();
  }
  EXPECT_FALSE(r.Cached(iova));
  Domain::Reader reader(**d);
  EXPECT_FALSE(std::get<IovaCookie>(reader.cookie()).iovad->AllocationSizeBytes(iova).has_value());
}

TEST(DomainTransactionTest, ContextsAreTakenAndReturned) {
  auto smmu = MakeSmmu();
  std::vector<std::shared_ptr<Domain>> domains;
  for (int i = 0; i < 4; ++i) {
    auto d = Domain::Create(smmu.get(), {.type = DomainType::kDma});
    ASSERT_TRUE(d.ok()) << d.status();
    domains.push_back(*d);
  }
  auto full = Domain::Create(smmu.get(), {.type = DomainType::kUnmanaged});
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  // IDENTITY takes no context.
  EXPECT_TRUE(Domain::Create(smmu.get(), {.type = DomainType::kIdentity}).ok());
  domains[2]->ReleaseContext();
  auto reused = Domain::Create(smmu.get(), {.type = DomainType::kUnmanaged});
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_EQ((*reused)->tag().asid, domains[2]->tag().asid);
  auto bad = Domain::Create(smmu.get(), {.type = DomainType::kDma, .granule_bytes = 3 * kPage});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace iommu::core::internal
