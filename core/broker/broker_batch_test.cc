// SPDX-License-Identifier: Apache-2.0
// Broker::MapUnmapBatch against the one-at-a-time path: the same op sequence
// on two brokers built alike gives the same result per op (code, message,
// addresses, ids) and the same state after, and the batch leaves no stale
// IOTLB entry and no IOVA reused before its invalidation.

#include <random>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using testing::FakeClock;
using testing::KiB;
using testing::MakeBroker;
using testing::MiB;

// What a broker looks like from outside: per-domain mappings, IOVA space and
// page-table leaves, device quotas, buffer references, IOTLB occupancy.
std::string Snapshot(Broker& b) {
  std::string out;
  BrokerStats s = b.GetStats(Caller::Admin()).value();
  for (const DomainStats& d : s.domains) {
    absl::StrAppend(&out, "d", d.domain_id, " maps=", d.mappings, " bytes=", d.mapped_bytes,
                    " pt=", d.pgtable.mapped_bytes, "/", d.pgtable.table_count);
    if (d.iova) {
      absl::StrAppend(&out, " iova=", d.iova->allocated_pages, "/", d.iova->cached_pages, "/",
                      d.iova->free_pages, "/", d.iova->free_ranges, "/",
                      d.iova->largest_free_pages);
    }
    absl::StrAppend(&out, "\n");
    auto walk = b.WalkDomain(Caller::Admin(), d.domain_id);
    EXPECT_TRUE(walk.ok()) << walk.status();
    if (!walk.ok()) continue;
    for (const PgtableMapping& m : *walk) {
      absl::StrAppend(&out, "  ", m.iova.value(), "->", m.phys.value(), "+", m.size_bytes, "\n");
    }
  }
  for (const SmmuStats& m : s.smmus)
    absl::StrAppend(&out, m.name, " tlb=", m.iotlb.occupancy, "\n");
  for (const DeviceInfo& d : testing::Value(b.ListDevices(Caller::Admin()))) {
    absl::StrAppend(&out, d.config.name, " q=", d.mappings, "/", d.mapped_bytes, "/", d.buffers,
                    "\n");
  }
  return out;
}

std::string Describe(const DmaBatchResult& r) {
  if (!r.status.ok()) return r.status.ToString();
  return absl::StrCat("OK dma=", r.map.dma_addr.Hex(), " id=", r.map.mapping_id,
                      " dom=", r.map.domain_id, " size=", r.map.iova_size_bytes);
}

// Applies `ops` one at a time through Map/Unmap.
std::vector<DmaBatchResult> OneAtATime(Broker& b, const Caller& caller, const std::string& device,
                                       const std::vector<DmaBatchOp>& ops) {
  std::vector<DmaBatchResult> out;
  for (const DmaBatchOp& op : ops) {
    if (const MapRequest* map = std::get_if<MapRequest>(&op)) {
      auto m = b.Map(caller, device, *map);
      out.push_back(m.ok() ? DmaBatchResult{.map = *m} : DmaBatchResult{.status = m.status()});
    } else {
      out.push_back({.status = b.Unmap(caller, device, std::get<UnmapRequest>(op))});
    }
  }
  return out;
}

std::vector<DmaBatchResult> Batched(Broker& b, const Caller& caller, const std::string& device,
                                    const std::vector<DmaBatchOp>& ops) {
  std::vector<DmaBatchResult> out(ops.size());
  b.MapUnmapBatch(caller, device, ops, absl::MakeSpan(out));
  return out;
}

DmaBatchOp MapOp(uint64_t buffer_id, uint64_t offset_bytes, uint64_t length_bytes) {
  return MapRequest{
      .mem = {.buffer_id = buffer_id, .offset_bytes = offset_bytes, .length_bytes = length_bytes}};
}
DmaBatchOp UnmapOp(Iova dma_addr) { return UnmapRequest{.dma_addr = dma_addr}; }

// Two brokers built alike; every step runs on both, one through the batch.
class BrokerBatchTest : public ::testing::TestWithParam<DomainType> {
 protected:
  void SetUp() override {
    BrokerOptions opts;
    opts.default_quotas.max_mapped_bytes = 64 * KiB;  // some maps run out of quota
    // One settable clock for both: a flush-queue timeout then fires at the
    // same step in each (with the real clock a stall of one broker past the
    // 10 ms timeout made lazy domains free IOVAs at different steps).
    opts.now = clock_.Fn();
    one_ = MakeBroker(opts);
    batch_ = MakeBroker(opts);
    for (Broker* b : {one_.get(), batch_.get()}) {
      ASSERT_NE(b, nullptr);
      if (GetParam() != DomainType::kDma) {
        auto d = b->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = GetParam()});
        ASSERT_TRUE(d.ok()) << d.status();
        ASSERT_TRUE(b->AttachDevice(Caller::Admin(), "nic0", d->domain_id).ok());
      }
      auto buf = b->AllocBuffer(nic_, "nic0", 32 * KiB, Placement::kScattered);
      ASSERT_TRUE(buf.ok()) << buf.status();
      buffer_ = buf->buffer_id;
      auto other = b->AllocBuffer(Caller::Device("gpu0"), "gpu0", 8 * KiB, Placement::kContiguous);
      ASSERT_TRUE(other.ok()) << other.status();
      foreign_buffer_ = other->buffer_id;
    }
  }

  // Runs `ops` on both brokers and checks they agree op by op and after.
  std::vector<DmaBatchResult> RunBoth(const std::vector<DmaBatchOp>& ops, const Caller& caller,
                                      const std::string& device) {
    const std::vector<DmaBatchResult> want = OneAtATime(*one_, caller, device, ops);
    const std::vector<DmaBatchResult> got = Batched(*batch_, caller, device, ops);
    EXPECT_EQ(got.size(), want.size());
    for (size_t i = 0; i < ops.size() && i < got.size(); ++i) {
      EXPECT_EQ(Describe(got[i]), Describe(want[i])) << "op " << i;
    }
    EXPECT_EQ(Snapshot(*batch_), Snapshot(*one_));
    one_->CheckInvariants();
    batch_->CheckInvariants();
    return got;
  }
  std::vector<DmaBatchResult> RunBoth(const std::vector<DmaBatchOp>& ops) {
    return RunBoth(ops, nic_, "nic0");
  }

  bool Faults(Broker& b, Iova iova) {
    auto t = b.Translate(
        nic_, {.device = "nic0", .iova = iova, .length_bytes = 4, .access = testing::Read()});
    EXPECT_TRUE(t.ok()) << t.status();
    return !t.ok() || t->faulted;
  }

  const Caller nic_ = Caller::Device("nic0");
  FakeClock clock_;
  std::unique_ptr<Broker> one_;
  std::unique_ptr<Broker> batch_;
  uint64_t buffer_ = 0;
  uint64_t foreign_buffer_ = 0;
};

TEST_P(BrokerBatchTest, MixedGoodAndBadOpsMatchOneAtATime) {
  std::vector<DmaBatchOp> ops = {
      MapOp(buffer_, 0, 4 * KiB),
      MapOp(buffer_, 0, 0),                // INVALID_ARGUMENT: zero length
      MapOp(foreign_buffer_, 0, 4 * KiB),  // another device's buffer
      MapOp(buffer_, 4 * KiB, 8 * KiB),
      MapOp(buffer_, 30 * KiB, 4 * KiB),  // past the buffer's end
      MapOp(buffer_, 100, 5000),          // unaligned, two granules
      UnmapOp(Iova(0x1234)),              // NOT_FOUND
  };
  std::vector<DmaBatchResult> first = RunBoth(ops);
  ASSERT_EQ(first.size(), ops.size());
  EXPECT_TRUE(first[0].status.ok());
  EXPECT_FALSE(first[1].status.ok());
  EXPECT_FALSE(first[2].status.ok());
  EXPECT_TRUE(first[3].status.ok());
  EXPECT_FALSE(first[4].status.ok());
  EXPECT_EQ(first[6].status.code(), absl::StatusCode::kNotFound);

  // Unmaps (one twice: the second is NOT_FOUND), interleaved with maps that
  // reuse the freed IOVAs, and maps until the quota refuses.
  std::vector<DmaBatchOp> second = {UnmapOp(first[0].map.dma_addr),
                                    UnmapOp(first[3].map.dma_addr + 4 * KiB),  // inside it
                                    UnmapOp(first[0].map.dma_addr), MapOp(buffer_, 0, 4 * KiB),
                                    UnmapOp(first[5].map.dma_addr)};
  for (int i = 0; i < 20; ++i) second.push_back(MapOp(buffer_, (i % 8) * 4 * KiB, 4 * KiB));
  std::vector<DmaBatchResult> got = RunBoth(second);
  EXPECT_EQ(got[2].status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.back().status.code(), absl::StatusCode::kResourceExhausted);

  // Everything still mapped, unmapped in one run.
  std::vector<DmaBatchOp> all;
  for (const auto* results : {&first, &got}) {
    for (size_t i = 0; i < results->size(); ++i) {
      const DmaBatchResult& r = (*results)[i];
      if (r.status.ok() && r.map.dma_addr != Iova(0)) all.push_back(UnmapOp(r.map.dma_addr));
    }
  }
  RunBoth(all);
}

TEST_P(BrokerBatchTest, DeviceErrorsFailEveryOp) {
  const std::vector<DmaBatchOp> ops = {MapOp(buffer_, 0, 4 * KiB), UnmapOp(Iova(0x1000))};
  // A device caller acting as another device, and an unknown device.
  std::vector<DmaBatchResult> other = RunBoth(ops, nic_, "gpu0");
  for (const DmaBatchResult& r : other) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kPermissionDenied);
  }
  std::vector<DmaBatchResult> unknown = RunBoth(ops, Caller::Admin(), "nosuch0");
  for (const DmaBatchResult& r : unknown) EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
  // Another device may not unmap nic0's mapping; an admin may.
  std::vector<DmaBatchResult> mapped = RunBoth({MapOp(buffer_, 0, 4 * KiB)});
  ASSERT_TRUE(mapped[0].status.ok());
  std::vector<DmaBatchResult> foreign =
      RunBoth({UnmapOp(mapped[0].map.dma_addr)}, Caller::Device("gpu0"), "gpu0");
  EXPECT_EQ(foreign[0].status.code(), absl::StatusCode::kNotFound);
  std::vector<DmaBatchResult> admin =
      RunBoth({UnmapOp(mapped[0].map.dma_addr)}, Caller::Admin(), "nic0");
  EXPECT_TRUE(admin[0].status.ok());
}

TEST_P(BrokerBatchTest, RandomSequencesMatchOneAtATime) {
  std::mt19937_64 rng(42);
  std::vector<Iova> live;
  for (int round = 0; round < 30; ++round) {
    std::vector<DmaBatchOp> ops;
    const int n = 1 + static_cast<int>(rng() % 40);
    std::vector<Iova> unmapping;
    for (int i = 0; i < n; ++i) {
      const uint64_t r = rng() % 10;
      if (r < 4 && !live.empty()) {
        const size_t k = rng() % live.size();
        ops.push_back(UnmapOp(live[k] + rng() % 4096 * (r == 0)));
        unmapping.push_back(live[k]);
        live.erase(live.begin() + static_cast<ptrdiff_t>(k));
      } else if (r < 5) {
        ops.push_back(UnmapOp(Iova(rng() % (uint64_t{1} << 40))));  // usually NOT_FOUND
      } else {
        const uint64_t off = rng() % (32 * KiB);
        ops.push_back(MapOp(buffer_, off, 1 + rng() % (12 * KiB)));
      }
    }
    std::vector<DmaBatchResult> got = RunBoth(ops);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (std::holds_alternative<MapRequest>(ops[i]) && got[i].status.ok()) {
        live.push_back(got[i].map.dma_addr);
      }
    }
    // Live mappings translate through the IOTLB (filling it) on both.
    for (Iova a : live) EXPECT_EQ(Faults(*batch_, a), Faults(*one_, a));
    EXPECT_EQ(Snapshot(*batch_), Snapshot(*one_));
  }
}

// A run holds the buffer table once and remembers the buffer it looked up
// last: ops alternating between buffers, unknown buffers between them, and a
// buffer freed mid-run (its last importer's unmap) all behave as one at a time.
TEST_P(BrokerBatchTest, RunsSwitchingAndFreeingBuffersMatchOneAtATime) {
  // An admin maps nic0's and gpu0's buffers alternately, with an unknown one.
  std::vector<DmaBatchOp> ops;
  for (int i = 0; i < 6; ++i) {
    ops.push_back(MapOp(i % 2 == 0 ? buffer_ : foreign_buffer_, (i / 2) * 4 * KiB, 4 * KiB));
    if (i == 3) ops.push_back(MapOp(999999, 0, 4 * KiB));  // NOT_FOUND
  }
  std::vector<DmaBatchResult> mapped = RunBoth(ops, Caller::Admin(), "nic0");
  EXPECT_EQ(mapped[4].status.code(), absl::StatusCode::kNotFound);
  // nic0 itself may not map gpu0's buffer, after mapping its own.
  std::vector<DmaBatchResult> denied =
      RunBoth({MapOp(buffer_, 0, 4 * KiB), MapOp(foreign_buffer_, 0, 4 * KiB),
               MapOp(buffer_, 4 * KiB, 4 * KiB)});
  EXPECT_TRUE(denied[0].status.ok());
  EXPECT_EQ(denied[1].status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(denied[2].status.ok());

  // gpu0's Alloc, mapped twice by an admin for nic0, then freed by gpu0: its
  // pages live on until the second unmap of the run, after which a map of
  // the buffer is NOT_FOUND (the run does not keep the freed buffer).
  uint64_t alloc_buffer = 0;
  std::vector<Iova> alloc_dma;
  for (Broker* b : {one_.get(), batch_.get()}) {
    auto a = b->Alloc(Caller::Device("gpu0"), "gpu0", {.size_bytes = 16 * KiB});
    ASSERT_TRUE(a.ok()) << a.status();
    alloc_buffer = a->buffer_id;
    alloc_dma.push_back(a->dma_addr);
  }
  std::vector<DmaBatchResult> imported =
      RunBoth({MapOp(alloc_buffer, 0, 4 * KiB), MapOp(alloc_buffer, 4 * KiB, 4 * KiB)},
              Caller::Admin(), "nic0");
  ASSERT_TRUE(imported[0].status.ok() && imported[1].status.ok());
  ASSERT_TRUE(one_->Free(Caller::Device("gpu0"), "gpu0", alloc_dma[0]).ok());
  ASSERT_TRUE(batch_->Free(Caller::Device("gpu0"), "gpu0", alloc_dma[1]).ok());
  std::vector<DmaBatchResult> last =
      RunBoth({MapOp(alloc_buffer, 8 * KiB, 4 * KiB), UnmapOp(imported[0].map.dma_addr),
               UnmapOp(imported[1].map.dma_addr), UnmapOp(Iova(0)), MapOp(alloc_buffer, 0, 4 * KiB),
               MapOp(buffer_, 0, 4 * KiB)},
              Caller::Admin(), "nic0");
  EXPECT_TRUE(last[0].status.ok());
  EXPECT_TRUE(last[1].status.ok());
  EXPECT_TRUE(last[2].status.ok());
  EXPECT_TRUE(last[4].status.ok());  // still referenced by last[0]
  // A failed map looks the buffer up; the unmap of its last reference frees
  // it; a map of it after that is NOT_FOUND.
  std::vector<DmaBatchResult> freed = RunBoth(
      {UnmapOp(last[0].map.dma_addr), MapOp(alloc_buffer, 0, 64 * KiB),
       UnmapOp(last[4].map.dma_addr), MapOp(alloc_buffer, 0, 4 * KiB), MapOp(buffer_, 0, 4 * KiB)},
      Caller::Admin(), "nic0");
  EXPECT_TRUE(freed[0].status.ok());
  EXPECT_EQ(freed[1].status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(freed[2].status.ok());
  EXPECT_EQ(freed[3].status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(freed[4].status.ok());
}

TEST_P(BrokerBatchTest, UnmapsLeaveNoUsableIotlbEntry) {
  std::vector<DmaBatchOp> maps;
  for (int i = 0; i < 8; ++i) maps.push_back(MapOp(buffer_, i * 4 * KiB, 4 * KiB));
  std::vector<DmaBatchResult> mapped = Batched(*batch_, nic_, "nic0", maps);
  std::vector<DmaBatchOp> unmaps;
  for (const DmaBatchResult& r : mapped) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_FALSE(Faults(*batch_, r.map.dma_addr));  // now cached in the IOTLB
    unmaps.push_back(UnmapOp(r.map.dma_addr));
  }
  // Every other one, then the rest: separate and adjacent leaf ranges.
  std::vector<DmaBatchOp> odd, even;
  for (size_t i = 0; i < unmaps.size(); ++i) (i % 2 ? odd : even).push_back(unmaps[i]);
  for (const auto* run : {&odd, &even}) {
    std::vector<DmaBatchResult> got = Batched(*batch_, nic_, "nic0", *run);
    for (const DmaBatchResult& r : got) EXPECT_TRUE(r.status.ok()) << r.status;
    batch_->CheckInvariants();
  }
  if (GetParam() == DomainType::kDmaFq) {
    ASSERT_TRUE(batch_->Sync(nic_, "nic0").ok());  // lazy: invalidated at the flush
  }
  for (const DmaBatchResult& r : mapped) EXPECT_TRUE(Faults(*batch_, r.map.dma_addr));
  BrokerStats s = batch_->GetStats(Caller::Admin()).value();
  for (const DomainStats& d : s.domains) {
    if (d.iova) {
      EXPECT_EQ(d.iova->allocated_pages, 0u) << "domain " << d.domain_id;
    }
  }
  batch_->CheckInvariants();
}

TEST_P(BrokerBatchTest, MapAfterUnmapsInOneRunReusesTheInvalidatedIova) {
  std::vector<DmaBatchResult> mapped = RunBoth({MapOp(buffer_, 0, 4 * KiB)});
  ASSERT_TRUE(mapped[0].status.ok());
  EXPECT_FALSE(Faults(*batch_, mapped[0].map.dma_addr));
  EXPECT_FALSE(Faults(*one_, mapped[0].map.dma_addr));
  // The map gets the IOVA the unmap freed, as one at a time; the stale entry
  // of the old mapping must be gone first (the new one maps another page).
  std::vector<DmaBatchResult> got =
      RunBoth({UnmapOp(mapped[0].map.dma_addr), MapOp(buffer_, 8 * KiB, 4 * KiB)});
  ASSERT_TRUE(got[1].status.ok());
  auto t = batch_->Translate(nic_, {.device = "nic0",
                                    .iova = got[1].map.dma_addr,
                                    .length_bytes = 4,
                                    .access = testing::Read()});
  ASSERT_TRUE(t.ok()) << t.status();
  auto buf = batch_->GetBuffer(nic_, buffer_);
  ASSERT_TRUE(buf.ok());
  if (GetParam() == DomainType::kDma) {
    EXPECT_EQ(got[1].map.dma_addr, mapped[0].map.dma_addr);
  }
  ASSERT_FALSE(t->faulted);
  ASSERT_EQ(t->pages.size(), 1u);
  // Offset 8 KiB of the buffer, wherever its pages are.
  PhysAddr want;
  uint64_t skip = 8 * KiB;
  for (const PhysRun& r : buf->runs) {
    if (skip < r.size_bytes) {
      want = r.start + skip;
      break;
    }
    skip -= r.size_bytes;
  }
  EXPECT_EQ(t->pages[0].phys_addr, want);
}

INSTANTIATE_TEST_SUITE_P(Domains, BrokerBatchTest,
                         ::testing::Values(DomainType::kDma, DomainType::kDmaFq),
                         [](const auto& info) {
                           return std::string(DomainTypeName(info.param)) == "DMA" ? "Strict"
                                                                                   : "Lazy";
                         });

}  // namespace
}  // namespace iommu::core
