// SPDX-License-Identifier: Apache-2.0
// Invalidation policies (strict vs lazy), sessions, faults and domains'
// lifecycle.

#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;
using namespace ::iommu::core::testing;  // NOLINT

class BrokerLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    opts_.now = clock_.Fn();
    opts_.fault_ring_capacity = 8;
    broker_ = MakeBroker(opts_);
  }
  void TearDown() override { broker_->CheckInvariants(); }
  Caller Dev(const std::string& n, uint64_t session = 0) { return Caller::Device(n, session); }

  // Maps one 4 KiB page of a fresh buffer for `dev`; returns the dma_addr.
  Iova MapPage(const std::string& dev, uint64_t session = 0) {
    auto b = broker_->AllocBuffer(Dev(dev, session), dev, 4 * KiB, Placement::kContiguous);
    EXPECT_TRUE(b.ok()) << b.status();
    auto m = broker_->Map(Dev(dev, session), dev,
                          {.mem = {.buffer_id = b->buffer_id, .length_bytes = 4 * KiB}});
    EXPECT_TRUE(m.ok()) << m.status();
    buffers_.push_back(b->buffer_id);
    return m->dma_addr;
  }
  TranslateResult Tr(const std::string& dev, Iova iova) {
    auto r = broker_->Translate(Dev(dev),
                                {.device = dev, .iova = iova, .length_bytes = 4, .access = Read()});
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }
  uint64_t StaleHits(const std::string& smmu) {
    for (const SmmuStats& s : testing::Value(broker_->GetStats(Caller::Admin())).smmus) {
      if (s.name == smmu) return s.iotlb.stale_hits;
    }
    return ~uint64_t{0};
  }

  FakeClock clock_;
  BrokerOptions opts_;
  std::unique_ptr<Broker> broker_;
  std::vector<uint64_t> buffers_;
};

TEST_F(BrokerLifecycleTest, StrictUnmapNeverServesAStaleTranslation) {
  const Iova a = MapPage("nic0");
  ASSERT_FALSE(Tr("nic0", a).faulted);
  ASSERT_TRUE(Tr("nic0", a).pages[0].iotlb_hit);
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {a}).ok());
  TranslateResult t = Tr("nic0", a);
  EXPECT_TRUE(t.faulted);
  EXPECT_EQ(StaleHits("smmu0"), 0u);
}

TEST_F(BrokerLifecycleTest, LazyUnmapCountsStaleHitsUntilTheFlush) {
  auto fq = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kDmaFq});
  ASSERT_TRUE(fq.ok()) << fq.status();
  EXPECT_FALSE(fq->strict);
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", fq->domain_id).ok());
  // A neighbour keeps the leaf table alive: freeing a table needs a walk-cache
  // invalidation, which (as on hardware) also drops the leaf entries.
  const Iova keep = MapPage("nic0");
  const Iova a = MapPage("nic0");
  ASSERT_EQ(keep - a, 4 * KiB);
  ASSERT_FALSE(Tr("nic0", a).faulted);  // fills the IOTLB
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {a}).ok());
  // The device still reaches the page through the stale entry: counted.
  TranslateResult stale = Tr("nic0", a);
  ASSERT_FALSE(stale.faulted);
  EXPECT_TRUE(stale.pages[0].stale);
  EXPECT_EQ(StaleHits("smmu0"), 1u);
  // The IOVA is not reused before its invalidation completed.
  const Iova b = MapPage("nic0");
  EXPECT_NE(b, a);
  // After the flush (Sync, or the timeout) the access faults.
  ASSERT_TRUE(broker_->Sync(Dev("nic0"), "nic0").ok());
  EXPECT_TRUE(Tr("nic0", a).faulted);
  EXPECT_EQ(StaleHits("smmu0"), 1u);
  // Timeout path: unmap b, advance the clock past the queue timeout, Tick.
  ASSERT_FALSE(Tr("nic0", b).faulted);
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {b}).ok());
  EXPECT_FALSE(Tr("nic0", b).faulted);
  clock_.now += opts_.flush_queue_timeout + absl::Milliseconds(1);
  broker_->Tick();
  EXPECT_TRUE(Tr("nic0", b).faulted);
  auto stats = broker_->GetStats(Caller::Admin()).value();
  for (const DomainStats& d : stats.domains) {
    if (d.domain_id != fq->domain_id) continue;
    ASSERT_TRUE(d.flush_queue.has_value());
    EXPECT_EQ(d.flush_queue->flushes_timeout, 1u);
    EXPECT_EQ(d.flush_queue->entries_released, 2u);
  }
}

// Tick polls only the lazy domains whose flush queue is due: idle ones and
// ones not yet due cost it nothing, however many there are.
TEST_F(BrokerLifecycleTest, TickPollsOnlyTheLazyDomainsWhoseQueueIsDue) {
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(
        broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kDmaFq}).ok());
  }
  auto lazy_domain_of = [&](const std::string& dev) {
    auto d = broker_->CreateDomain(Dev(dev), {.smmu = "smmu0", .type = DomainType::kDmaFq});
    EXPECT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(broker_->AttachDevice(Dev(dev), dev, d->domain_id).ok());
    return d->domain_id;
  };
  auto timeouts = [&](uint64_t domain_id) {
    for (const DomainStats& d : Value(broker_->GetStats(Caller::Admin())).domains) {
      if (d.domain_id == domain_id && d.flush_queue) return d.flush_queue->flushes_timeout;
    }
    return ~uint64_t{0};
  };
  const absl::Duration timeout = opts_.flush_queue_timeout;
  const uint64_t a = lazy_domain_of("nic0");
  const uint64_t b = lazy_domain_of("gpu0");
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {MapPage("nic0")}).ok());
  clock_.now += timeout / 2;
  ASSERT_TRUE(broker_->Unmap(Dev("gpu0"), "gpu0", {MapPage("gpu0")}).ok());
  broker_->Tick();
  EXPECT_EQ(broker_->FlushPolls(), 0u) << "nothing was due";

  clock_.now += timeout / 2 + absl::Milliseconds(1);  // a's entry is due, b's is not
  broker_->Tick();
  EXPECT_EQ(broker_->FlushPolls(), 1u);
  EXPECT_EQ(timeouts(a), 1u);
  EXPECT_EQ(timeouts(b), 0u);
  broker_->Tick();
  EXPECT_EQ(broker_->FlushPolls(), 1u) << "a's queue is empty";
  broker_->CheckInvariants();

  clock_.now += timeout / 2;
  broker_->Tick();
  EXPECT_EQ(broker_->FlushPolls(), 2u);
  EXPECT_EQ(timeouts(b), 1u);
}

TEST_F(BrokerLifecycleTest, UntrustedDevicesAreAlwaysStrict) {
  auto fq = broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kDmaFq});
  ASSERT_TRUE(fq.ok());
  absl::Status s = broker_->AttachDevice(Caller::Admin(), "tbt0", fq->domain_id);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("untrusted"));
}

TEST_F(BrokerLifecycleTest, SessionExpiryReleasesEverything) {
  auto sid = broker_->OpenSession(Dev("gpu0"), absl::Seconds(10));
  ASSERT_TRUE(sid.ok());
  const Iova a = MapPage("gpu0", *sid);
  auto alloc = broker_->Alloc(Dev("gpu0", *sid), "gpu0", {.size_bytes = 64 * KiB});
  ASSERT_TRUE(alloc.ok());
  auto dom = broker_->CreateDomain(Dev("gpu0", *sid), {.smmu = "smmu0"});
  ASSERT_TRUE(dom.ok());
  const Iova kept = MapPage("gpu0");  // not in the session: survives
  clock_.now += absl::Seconds(5);
  ASSERT_TRUE(broker_->KeepAlive(Dev("gpu0"), *sid).ok());
  clock_.now += absl::Seconds(9);
  EXPECT_EQ(broker_->Tick(), 0);
  EXPECT_FALSE(Tr("gpu0", a).faulted);
  // Another device cannot keep it alive or close it.
  EXPECT_EQ(broker_->KeepAlive(Dev("nic0"), *sid).code(), absl::StatusCode::kNotFound);
  clock_.now += absl::Seconds(2);
  EXPECT_EQ(broker_->Tick(), 1);
  EXPECT_TRUE(Tr("gpu0", a).faulted);
  EXPECT_TRUE(Tr("gpu0", alloc->dma_addr).faulted);
  EXPECT_FALSE(Tr("gpu0", kept).faulted);
  EXPECT_EQ(broker_->GetBuffer(Dev("gpu0"), buffers_[0]).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->GetBuffer(Dev("gpu0"), alloc->buffer_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->GetDomain(Caller::Admin(), dom->domain_id).status().code(),
            absl::StatusCode::kNotFound);
  const DeviceInfo info = broker_->ListDevices(Dev("gpu0")).value()[0];
  EXPECT_EQ(info.mappings, 1u);
  EXPECT_EQ(info.buffers, 1u);
  EXPECT_EQ(broker_->KeepAlive(Dev("gpu0"), *sid).code(), absl::StatusCode::kNotFound);
}

TEST_F(BrokerLifecycleTest, CloseSessionReleasesAndDetaches) {
  auto sid = broker_->OpenSession(Dev("nic0"), absl::Seconds(10));
  ASSERT_TRUE(sid.ok());
  auto dom = broker_->CreateDomain(Dev("nic0", *sid), {.smmu = "smmu0"});
  ASSERT_TRUE(dom.ok());
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", dom->domain_id).ok());
  ASSERT_TRUE(broker_->CloseSession(Dev("nic0"), *sid).ok());
  const DeviceInfo info = broker_->ListDevices(Dev("nic0")).value()[0];
  EXPECT_EQ(info.current_domain_id, info.default_domain_id);
  EXPECT_EQ(broker_->CloseSession(Dev("nic0"), *sid).code(), absl::StatusCode::kNotFound);
}

TEST_F(BrokerLifecycleTest, FaultsAreRecordedWithSequenceAndOverflowIsCounted) {
  const Iova a = MapPage("nic0");
  // Read-only mapping: a write is a permission fault.
  auto b = broker_->AllocBuffer(Dev("nic0"), "nic0", 4 * KiB, Placement::kContiguous);
  auto ro = broker_->Map(Dev("nic0"), "nic0",
                         {.mem = {.buffer_id = b->buffer_id, .length_bytes = 4 * KiB},
                          .direction = DmaDirection::kToDevice});
  ASSERT_TRUE(ro.ok());
  auto w = broker_->Translate(
      Dev("nic0"), {.device = "nic0", .iova = ro->dma_addr, .length_bytes = 4, .access = Write()});
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->faulted);
  EXPECT_EQ(w->fault_type, FaultType::kPermission);
  EXPECT_EQ(w->fault_seq, 1u);
  // An access running past a mapping returns the translated part and a
  // translation fault at the first unmapped byte (nic0 is PCI: its first
  // IOVA is the top page below 4 GiB, and nothing is mapped above it).
  auto span = broker_->Translate(
      Dev("nic0"), {.device = "nic0", .iova = a, .length_bytes = 8 * KiB, .access = Read()});
  ASSERT_TRUE(span.ok());
  EXPECT_TRUE(span->faulted);
  ASSERT_EQ(span->pages.size(), 1u);
  EXPECT_EQ(span->fault_iova, a + 4 * KiB);
  // BLOCKED domain; unknown stream; beyond the aperture.
  auto blocked =
      broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu1", .type = DomainType::kBlocked});
  ASSERT_TRUE(blocked.ok());
  ASSERT_TRUE(broker_->AttachDevice(Caller::Admin(), "dsp0", blocked->domain_id).ok());
  auto bl =
      broker_->Translate(Dev("dsp0"), {.device = "dsp0", .iova = Iova(0x1000), .access = Read()});
  EXPECT_EQ(bl->fault_type, FaultType::kAccessBlocked);
  auto us = broker_->Translate(
      Caller::Admin(),
      {.smmu = "smmu0", .stream_id = 0x7777, .iova = Iova(0x1000), .access = Read()});
  EXPECT_EQ(us->fault_type, FaultType::kUnknownStream);
  auto as = broker_->Translate(
      Dev("cam0"), {.device = "cam0", .iova = Iova(uint64_t{1} << 33), .access = Read()});
  EXPECT_EQ(as->fault_type, FaultType::kAddressSize);
  // A device reads only its own faults; an admin reads all, in order.
  auto mine = broker_->ReadFaults(Dev("nic0"), 0, 100);
  ASSERT_TRUE(mine.ok());
  ASSERT_EQ(mine->records.size(), 2u);
  EXPECT_EQ(mine->records[0].type, FaultType::kPermission);
  EXPECT_EQ(mine->records[1].type, FaultType::kTranslation);
  EXPECT_EQ(mine->records[1].iova, Iova(a + 4 * KiB));
  EXPECT_EQ(mine->records[1].device, "nic0");
  auto all = broker_->ReadFaults(Caller::Admin(), 0, 100);
  ASSERT_EQ(all->records.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(all->records[i].seq, i + 1);
  // Overflow of the 8-record ring is counted, never silent.
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(Tr("nic0", Iova(0x7000'0000)).faulted);
  auto late = broker_->ReadFaults(Caller::Admin(), 0, 100);
  EXPECT_EQ(late->records.size(), 8u);
  EXPECT_EQ(late->lost, 7u);
  EXPECT_EQ(broker_->GetStats(Caller::Admin()).value().faults.dropped_total, 7u);
}

TEST_F(BrokerLifecycleTest, IdentityDomainBypasses) {
  auto id =
      broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kIdentity});
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(broker_->AttachDevice(Caller::Admin(), "gpu0", id->domain_id).ok());
  auto t = broker_->Translate(
      Dev("gpu0"),
      {.device = "gpu0", .iova = Iova(0x8000'1234), .length_bytes = 16, .access = Write()});
  ASSERT_TRUE(t.ok());
  ASSERT_FALSE(t->faulted);
  EXPECT_EQ(t->pages[0].phys_addr, PhysAddr(0x8000'1234u));
}

TEST_F(BrokerLifecycleTest, DomainLifecycleAndContexts) {
  // smmu1 has four contexts; its two default domains hold two.
  auto d1 = broker_->CreateDomain(Dev("cam0"), {.smmu = "smmu1"});
  auto d2 = broker_->CreateDomain(Dev("dsp0"), {.smmu = "smmu1"});
  ASSERT_TRUE(d1.ok() && d2.ok());
  auto d3 = broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu1"});
  EXPECT_EQ(d3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(d3.status().message(), HasSubstr("translation contexts"));
  // Identity and blocked domains use no context.
  EXPECT_TRUE(
      broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu1", .type = DomainType::kBlocked}).ok());
  // Shared domain: both devices of smmu1 attach to one domain.
  ASSERT_TRUE(broker_->AttachDevice(Dev("cam0"), "cam0", d1->domain_id).ok());
  ASSERT_TRUE(broker_->AttachDevice(Caller::Admin(), "dsp0", d1->domain_id).ok());
  auto info = broker_->GetDomain(Caller::Admin(), d1->domain_id);
  EXPECT_THAT(info->devices, ::testing::UnorderedElementsAre("cam0", "dsp0"));
  // Cross-SMMU attach and destroy while attached are refused.
  EXPECT_EQ(broker_->AttachDevice(Caller::Admin(), "nic0", d1->domain_id).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(broker_->DestroyDomain(Dev("cam0"), d1->domain_id).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(broker_->DetachDevice(Dev("cam0"), "cam0").ok());
  ASSERT_TRUE(broker_->DetachDevice(Caller::Admin(), "dsp0").ok());
  ASSERT_TRUE(broker_->DestroyDomain(Dev("cam0"), d1->domain_id).ok());
  // The context is free again.
  EXPECT_TRUE(broker_->CreateDomain(Dev("cam0"), {.smmu = "smmu1"}).ok());
  // Default domains cannot be destroyed.
  const uint64_t dflt = broker_->ListDevices(Dev("cam0")).value()[0].default_domain_id;
  EXPECT_EQ(broker_->DestroyDomain(Caller::Admin(), dflt).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace iommu::core
