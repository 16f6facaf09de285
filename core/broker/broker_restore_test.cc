// SPDX-License-Identifier: Apache-2.0
// Durable state in the model: every mutation reaches the journal, and a
// broker restored from what the journal holds is the same broker (ids,
// IOVAs, pages, page-table leaves, quotas, sessions), continues without
// reusing an id, and completes operations a crash cut short.

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "core/testing/memory_journal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using testing::FakeClock;
using ::testing::HasSubstr;
using testing::KiB;
using testing::MemoryJournal;
using testing::MiB;

Caller Dev(const std::string& name, uint64_t session = 0) { return Caller::Device(name, session); }

// Everything a client or operator can observe of the state, as text (IOTLB
// contents, magazine caches and translation contexts excepted: a restore
// starts those afresh).
std::string Fingerprint(const Broker& b) {
  std::string out;
  const Caller admin = Caller::Admin();
  for (const DomainInfo& d : testing::Value(b.ListDomains(admin))) {
    absl::StrAppend(&out, "domain ", d.domain_id, " ", d.smmu, " ", DomainTypeName(d.type),
                    " owner=", d.owner, " default=", d.is_default,
                    " granted=", absl::StrJoin(d.granted_devices, ","),
                    " granule=", d.granule_bytes, " devices=", absl::StrJoin(d.devices, ","),
                    " mappings=", d.mappings, " bytes=", d.mapped_bytes);
    if (d.msi_window)
      absl::StrAppend(&out, " msi=", d.msi_window->base.value(), "+", d.msi_window->size_bytes);
    out += "\n";
    for (const PgtableMapping& m : testing::Value(b.WalkDomain(admin, d.domain_id))) {
      absl::StrAppend(&out, "  leaf ", m.iova.value(), " -> ", m.phys.value(), " ", m.size_bytes,
                      " prot=", uint32_t(m.prot), "\n");
    }
  }
  for (const DeviceInfo& d : testing::Value(b.ListDevices(admin))) {
    absl::StrAppend(&out, "device ", d.config.name, " current=", d.current_domain_id,
                    " default=", d.default_domain_id, " mapped=", d.mapped_bytes,
                    " mappings=", d.mappings, " buffers=", d.buffers, "\n");
    auto ranges = b.GetIovaRanges(admin, d.config.name);
    for (const ReservedRegion& r : ranges->reserved) {
      absl::StrAppend(&out, "  reserved ", r.start.value(), "-", r.end.value(), " ", int(r.kind),
                      "\n");
    }
  }
  for (const DomainStats& s : testing::Value(b.GetStats(admin)).domains) {
    if (s.iova) {
      absl::StrAppend(&out, "iova ", s.domain_id, " allocated=", s.iova->allocated_pages,
                      " reserved=", s.iova->reserved_pages, "\n");
    }
  }
  for (uint64_t id = 1; id < 512; ++id) {
    auto buf = b.GetBuffer(admin, id);
    if (!buf.ok()) continue;
    absl::StrAppend(&out, "buffer ", id, " ", buf->device, " ", buf->size_bytes, " ", buf->pool,
                    " maps=", buf->map_count);
    for (const PhysRun& r : buf->runs)
      absl::StrAppend(&out, " ", r.start.value(), "+", r.size_bytes);
    out += "\n";
  }
  return out;
}

class BrokerRestoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.now = clock_.Fn();
    options_.journal = &journal_;
    broker_ = testing::MakeBroker(options_);
  }

  // A broker restored from what the journal holds now, journaling into
  // `journal` (none when null).
  std::unique_ptr<Broker> Restored(Journal* journal = nullptr, RestoreReport* report = nullptr) {
    BrokerOptions o = options_;
    o.journal = journal;
    auto b = Broker::Restore(testing::TestTopology(), o, journal_.State(), report);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return nullptr;
    (*b)->CheckInvariants();
    return *std::move(b);
  }

  // A mix of every kind of mutation across devices, domains and sessions.
  struct Made {
    uint64_t session = 0;
    uint64_t unmanaged = 0;
    uint64_t buffer = 0;
    Iova nic_map;
    std::string token;
  };
  Made MakeEverything() {
    Made made;
    auto buf = broker_->AllocBuffer(Dev("nic0"), "nic0", 64 * KiB, Placement::kScattered);
    EXPECT_TRUE(buf.ok()) << buf.status();
    made.buffer = buf->buffer_id;
    for (uint64_t off = 0; off < 64 * KiB; off += 8 * KiB) {
      auto m = broker_->Map(
          Dev("nic0"), "nic0",
          {.mem = {
               .buffer_id = buf->buffer_id, .offset_bytes = off + 0x80, .length_bytes = 4 * KiB}});
      EXPECT_TRUE(m.ok()) << m.status();
      made.nic_map = m->dma_addr;
    }
    EXPECT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {.dma_addr = made.nic_map}).ok());
    auto sg = broker_->MapSg(
        Dev("nic0"), "nic0",
        {.segments = {
             {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB},
             {.buffer_id = buf->buffer_id, .offset_bytes = 16 * KiB, .length_bytes = 4 * KiB}}});
    EXPECT_TRUE(sg.ok()) << sg.status();
    auto msi = broker_->MsiCookie(Dev("nic0"), "nic0", {});
    EXPECT_TRUE(msi.ok()) << msi.status();
    // A Batch with maps and unmaps, some of them cancelling out.
    std::vector<DmaBatchOp> ops;
    for (int i = 0; i < 6; ++i) {
      ops.push_back(MapRequest{.mem = {.buffer_id = buf->buffer_id,
                                       .offset_bytes = uint64_t(i) * 4 * KiB,
                                       .length_bytes = 4 * KiB}});
    }
    std::vector<DmaBatchResult> results(ops.size());
    broker_->MapUnmapBatch(Dev("nic0"), "nic0", ops, absl::MakeSpan(results));
    std::vector<DmaBatchOp> unmaps = {
        UnmapRequest{results[0].map.dma_addr}, UnmapRequest{results[2].map.dma_addr},
        MapRequest{.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}}};
    std::vector<DmaBatchResult> r2(unmaps.size());
    broker_->MapUnmapBatch(Dev("nic0"), "nic0", unmaps, absl::MakeSpan(r2));
    for (const auto& r : r2) EXPECT_TRUE(r.status.ok()) << r.status;

    // Alloc on a 16K-granule-capable device, exported and imported.
    auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 256 * KiB});
    EXPECT_TRUE(a.ok()) << a.status();
    auto t = broker_->GetSgTable(Dev("gpu0"), "gpu0", a->dma_addr, ExportGrant{.writable = true});
    EXPECT_TRUE(t.ok()) << t.status();
    made.token = t->export_token;
    auto imp = broker_->MapSg(Dev("sata0"), "sata0", {.import_token = t->export_token});
    EXPECT_TRUE(imp.ok()) << imp.status();

    // An UNMANAGED domain with an MSI window and caller-chosen IOVAs.
    auto dom = broker_->CreateDomain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
    EXPECT_TRUE(dom.ok()) << dom.status();
    made.unmanaged = dom->domain_id;
    EXPECT_TRUE(broker_->AttachDevice(Dev("vf0"), "vf0", dom->domain_id).ok());
    EXPECT_TRUE(broker_
                    ->MsiCookie(Dev("vf0"), "vf0",
                                {.domain_id = dom->domain_id,
                                 .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}})
                    .ok());
    auto vbuf = broker_->AllocBuffer(Dev("vf0"), "vf0", 2 * MiB, Placement::kHuge);
    EXPECT_TRUE(vbuf.ok()) << vbuf.status();
    EXPECT_TRUE(broker_
                    ->MapAt(Dev("vf0"), "vf0",
                            {.iova = Iova(0x4000'0000),
                             .mem = {.buffer_id = vbuf->buffer_id, .length_bytes = 2 * MiB},
                             .direction = DmaDirection::kBidirectional})
                    .ok());

    // A lazy (DMA_FQ) domain with a mapping and a pending invalidation.
    auto fq = broker_->CreateDomain(
        Caller::Admin(),
        {.smmu = "smmu0", .type = DomainType::kDmaFq, .granted_devices = {"nvme0"}});
    EXPECT_TRUE(fq.ok()) << fq.status();
    EXPECT_TRUE(broker_->AttachDevice(Caller::Admin(), "nvme0", fq->domain_id).ok());
    auto nb = broker_->AllocBuffer(Dev("nvme0"), "nvme0", 32 * KiB, Placement::kContiguous);
    EXPECT_TRUE(nb.ok()) << nb.status();
    auto n1 = broker_->Map(Dev("nvme0"), "nvme0",
                           {.mem = {.buffer_id = nb->buffer_id, .length_bytes = 8 * KiB}});
    auto n2 = broker_->Map(
        Dev("nvme0"), "nvme0",
        {.mem = {.buffer_id = nb->buffer_id, .offset_bytes = 8 * KiB, .length_bytes = 8 * KiB}});
    EXPECT_TRUE(n1.ok() && n2.ok());
    EXPECT_TRUE(broker_->Unmap(Dev("nvme0"), "nvme0", {.dma_addr = n2->dma_addr}).ok());

    // A session with a buffer and a mapping.
    made.session = broker_->OpenSession(Dev("cam0"), absl::Seconds(30)).value();
    auto cb =
        broker_->AllocBuffer(Dev("cam0", made.session), "cam0", 64 * KiB, Placement::kContiguous);
    EXPECT_TRUE(cb.ok()) << cb.status();
    EXPECT_TRUE(broker_
                    ->Map(Dev("cam0", made.session), "cam0",
                          {.mem = {.buffer_id = cb->buffer_id, .length_bytes = 64 * KiB}})
                    .ok());
    // Created and freed again: gone from the state, its id never reused.
    auto gone = broker_->AllocBuffer(Dev("dsp0"), "dsp0", 4 * KiB, Placement::kScattered);
    EXPECT_TRUE(gone.ok());
    EXPECT_TRUE(broker_->FreeBuffer(Dev("dsp0"), gone->buffer_id).ok());
    return made;
  }

  FakeClock clock_;
  MemoryJournal journal_;
  BrokerOptions options_;
  std::unique_ptr<Broker> broker_;
};

TEST_F(BrokerRestoreTest, RestoredBrokerIsTheSameBroker) {
  MakeEverything();
  broker_->CheckInvariants();
  RestoreReport report;
  auto restored = Restored(nullptr, &report);
  ASSERT_NE(restored, nullptr);
  // The lazy domain's pending invalidation counts as done after a restore:
  // the same as the original once it has synced.
  ASSERT_TRUE(broker_->Sync(Dev("nvme0"), "nvme0").ok());
  EXPECT_EQ(Fingerprint(*restored), Fingerprint(*broker_));
  EXPECT_EQ(report.completed, 0u) << absl::StrJoin(report.notes, "\n");
  EXPECT_GT(report.mappings, 10u);
}

TEST_F(BrokerRestoreTest, EveryCommitLeavesARestorableState) {
  // After each operation the journal alone restores the broker as it is.
  auto check = [&](const char* step) {
    auto restored = Restored();
    ASSERT_NE(restored, nullptr) << step;
    EXPECT_EQ(Fingerprint(*restored), Fingerprint(*broker_)) << step;
  };
  check("fresh");
  auto buf = broker_->AllocBuffer(Dev("nic0"), "nic0", 16 * KiB, Placement::kScattered);
  ASSERT_TRUE(buf.ok());
  check("AllocBuffer");
  auto m = broker_->Map(Dev("nic0"), "nic0",
                        {.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}});
  ASSERT_TRUE(m.ok());
  check("Map");
  auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB});
  ASSERT_TRUE(a.ok());
  check("Alloc");
  auto d = broker_->CreateDomain(Dev("gpu0"), {.smmu = "smmu0"});
  ASSERT_TRUE(d.ok());
  check("CreateDomain");
  ASSERT_TRUE(broker_->AttachDevice(Dev("gpu0"), "gpu0", d->domain_id).ok());
  check("AttachDevice");
  ASSERT_TRUE(broker_->DetachDevice(Dev("gpu0"), "gpu0").ok());
  check("DetachDevice");
  ASSERT_TRUE(broker_->DestroyDomain(Dev("gpu0"), d->domain_id).ok());
  check("DestroyDomain");
  ASSERT_TRUE(broker_->Free(Dev("gpu0"), "gpu0", a->dma_addr).ok());
  check("Free");
  ASSERT_TRUE(broker_->Unmap(Dev("nic0"), "nic0", {.dma_addr = m->dma_addr}).ok());
  check("Unmap");
  ASSERT_TRUE(broker_->FreeBuffer(Dev("nic0"), buf->buffer_id).ok());
  check("FreeBuffer");
}

TEST_F(BrokerRestoreTest, RestoredBrokerContinuesWithoutReusingIds) {
  const Made made = MakeEverything();
  const uint64_t last_buffer =
      broker_->AllocBuffer(Dev("nic0"), "nic0", 4 * KiB, Placement::kScattered)->buffer_id;
  auto last_map = broker_->Map(Dev("nic0"), "nic0",
                               {.mem = {.buffer_id = made.buffer, .length_bytes = 4 * KiB}});
  ASSERT_TRUE(last_map.ok());
  const uint64_t last_domain = broker_->CreateDomain(Dev("gpu0"), {.smmu = "smmu0"})->domain_id;

  MemoryJournal second;
  auto restored = Restored(&second);
  ASSERT_NE(restored, nullptr);
  auto buf = restored->AllocBuffer(Dev("nic0"), "nic0", 4 * KiB, Placement::kScattered);
  ASSERT_TRUE(buf.ok());
  EXPECT_GT(buf->buffer_id, last_buffer);
  auto m = restored->Map(Dev("nic0"), "nic0",
                         {.mem = {.buffer_id = made.buffer, .length_bytes = 4 * KiB}});
  ASSERT_TRUE(m.ok());
  EXPECT_GT(m->mapping_id, last_map->mapping_id);
  EXPECT_EQ(m->domain_id, last_map->domain_id);
  EXPECT_GT(restored->CreateDomain(Dev("gpu0"), {.smmu = "smmu0"})->domain_id, last_domain);
  // Sessions: the old one is alive (its lease restarted), its id is still
  // the cam0's, and a new one gets a different id.
  EXPECT_TRUE(restored->KeepAlive(Dev("cam0"), made.session).ok());
  EXPECT_EQ(restored->KeepAlive(Dev("dsp0"), made.session).code(), absl::StatusCode::kNotFound);
  const uint64_t s2 = restored->OpenSession(Dev("cam0"), absl::Seconds(5)).value();
  EXPECT_NE(s2, made.session);
  // The export token still imports, and revoking it unmaps the import.
  auto imp = restored->MapSg(Dev("sata0"), "sata0", {.import_token = made.token});
  ASSERT_TRUE(imp.ok()) << imp.status();
  EXPECT_EQ(restored->RevokeExport(Dev("gpu0"), made.token).value(), 2u);
  // Addresses mapped before the restart still translate.
  auto t = restored->Translate(
      Dev("nic0"), {.device = "nic0", .iova = last_map->dma_addr, .access = testing::Read()});
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->faulted);
  restored->CheckInvariants();
}

TEST_F(BrokerRestoreTest, SessionLeasesRestartInFullAndExpireAfterwards) {
  const Made made = MakeEverything();
  clock_.now += absl::Seconds(25);  // 5 s left of the 30 s lease
  auto restored = Restored();
  ASSERT_NE(restored, nullptr);
  clock_.now += absl::Seconds(20);  // past the old deadline, inside the restarted one
  EXPECT_EQ(restored->Tick(), 0);
  EXPECT_TRUE(restored->KeepAlive(Dev("cam0"), made.session).ok());
  clock_.now += absl::Seconds(31);
  EXPECT_EQ(restored->Tick(), 1);
  for (const DeviceInfo& d : testing::Value(restored->ListDevices(Dev("cam0")))) {
    EXPECT_EQ(d.mappings, 0u);
    EXPECT_EQ(d.buffers, 0u);
  }
  restored->CheckInvariants();
}

TEST_F(BrokerRestoreTest, FaultSequenceNumbersContinuePastTheLastIssued) {
  uint64_t last = 0;
  for (int i = 0; i < 3; ++i) {
    auto t = broker_->Translate(
        Dev("nic0"), {.device = "nic0", .iova = Iova(0x1000), .access = testing::Read()});
    ASSERT_TRUE(t.ok() && t->faulted);
    last = t->fault_seq;
  }
  auto restored = Restored();
  ASSERT_NE(restored, nullptr);
  auto t = restored->Translate(Dev("nic0"),
                               {.device = "nic0", .iova = Iova(0x1000), .access = testing::Read()});
  ASSERT_TRUE(t.ok() && t->faulted);
  EXPECT_GT(t->fault_seq, last);
}

TEST_F(BrokerRestoreTest, OperationsACrashCutShortAreCompleted) {
  const Made made = MakeEverything();
  DurableState state = journal_.State();
  // (1) An Alloc whose buffer committed but whose mapping did not.
  BufferState orphan = state.buffers.front();
  orphan.buffer_id = 900;
  orphan.backs_alloc = true;
  orphan.runs = {{PhysAddr(0x8'C000'0000), 64 * KiB}};
  orphan.pool = "dram";
  orphan.placement = Placement::kContiguous;
  orphan.device = "dsp0";
  state.buffers.push_back(orphan);
  // (2) A mapping whose buffer was freed (the free committed first).
  MappingState dangling = state.mappings.front().second;
  for (const auto& [domain, m] : state.mappings) {
    if (m.kind == internal::MappingKind::kMap) dangling = m;
  }
  ASSERT_FALSE(dangling.buffer_refs.empty());
  const uint64_t buffer = dangling.buffer_refs[0].id;
  std::erase_if(state.buffers, [&](const BufferState& b) { return b.buffer_id == buffer; });
  std::erase_if(state.exports, [&](const ExportState& e) {
    return std::find(e.buffer_ids.begin(), e.buffer_ids.end(), buffer) != e.buffer_ids.end();
  });
  // (3) An import whose export was revoked (the revocation committed first).
  std::erase_if(state.exports, [&](const ExportState& e) { return e.token == made.token; });

  RestoreReport report;
  auto b = Broker::Restore(testing::TestTopology(), options_, state, &report);
  ASSERT_TRUE(b.ok()) << b.status();
  (*b)->CheckInvariants();
  EXPECT_GE(report.completed, 3u);
  const std::string notes = absl::StrJoin(report.notes, "\n");
  EXPECT_THAT(notes, HasSubstr("buffer 900: its Alloc mapping is gone; released"));
  EXPECT_THAT(notes, HasSubstr("its buffer was freed; unmapped"));
  EXPECT_THAT(notes, HasSubstr("its export was revoked; unmapped"));
  EXPECT_EQ((*b)->GetBuffer(Caller::Admin(), 900).status().code(), absl::StatusCode::kNotFound);
  for (const DeviceInfo& d : testing::Value((*b)->ListDevices(Caller::Admin()))) {
    if (d.config.name == "sata0") {
      EXPECT_EQ(d.mappings, 0u);  // its import is gone
    }
  }
}

// An Alloc freed while another mapping of its buffer remains: the buffer
// waits for that mapping's unmap. Ordinary state, restored as it was and not
// counted as a repair (the operation-sequence fuzzer found it counted).
TEST_F(BrokerRestoreTest, AnAllocBufferWaitingForItsLastMappingIsNoRepair) {
  auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB});
  ASSERT_TRUE(a.ok()) << a.status();
  auto m = broker_->Map(Dev("gpu0"), "gpu0",
                        {.mem = {.buffer_id = a->buffer_id, .length_bytes = 4 * KiB}});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(broker_->Free(Dev("gpu0"), "gpu0", a->dma_addr).ok());

  RestoreReport report;
  std::unique_ptr<Broker> b = Restored(nullptr, &report);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(report.completed, 0u) << absl::StrJoin(report.notes, "\n");
  // The restored buffer behaves as the live one: its pages stay mapped until
  // the last mapping goes, then it is freed.
  for (Broker* broker : {broker_.get(), b.get()}) {
    auto t = broker->Translate(Dev("gpu0"),
                               {.device = "gpu0", .iova = m->dma_addr, .access = testing::Read()});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(t->pages.size(), 1u);
    EXPECT_EQ(t->pages[0].phys_addr, a->runs[0].start);
    ASSERT_TRUE(broker->Unmap(Dev("gpu0"), "gpu0", {.dma_addr = m->dma_addr}).ok());
    EXPECT_EQ(broker->GetBuffer(Caller::Admin(), a->buffer_id).status().code(),
              absl::StatusCode::kNotFound);
    broker->CheckInvariants();
  }
  EXPECT_EQ(broker_->StateDigest(), b->StateDigest());
}

TEST_F(BrokerRestoreTest, UnrestorableStatesAreRefusedNamingTheRecord) {
  MakeEverything();
  auto refused = [&](DurableState state, const std::string& what) {
    auto b = Broker::Restore(testing::TestTopology(), options_, state);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << what;
    EXPECT_THAT(b.status().message(), HasSubstr(what));
  };
  {
    DurableState s = journal_.State();
    s.mappings.push_back(s.mappings.front());
    s.mappings.back().first = 77;
    refused(s, "in domain 77, which does not exist");
  }
  {
    DurableState s = journal_.State();
    s.buffers.front().device = "ghost";
    refused(s, "names device \"ghost\", which is not in the topology");
  }
  {
    // Two mappings at one address.
    DurableState s = journal_.State();
    s.mappings.push_back(s.mappings.front());
    s.mappings.back().second.mapping_id += 1000;
    refused(s, "mapping");
  }
  {
    // A buffer on pages another buffer holds.
    DurableState s = journal_.State();
    BufferState twin = s.buffers.front();
    twin.buffer_id = 999;
    s.buffers.push_back(twin);
    refused(s, "buffer 999");
  }
  {
    DurableState s = journal_.State();
    s.session_key.reset();
    refused(s, "no session id key");
  }
  {
    // A piece the page-table ranges do not map where the record says.
    DurableState s = journal_.State();
    MappingState& m = s.mappings.front().second;
    ASSERT_FALSE(m.pieces.empty());
    m.pieces.front().phys = m.pieces.front().phys + 0x1000;
    refused(s, absl::StrFormat("mapping %d at IOVA %#x: its piece", m.mapping_id, m.iova.value()));
  }
  {
    // Page-table ranges outside the mapping's IOVA range.
    DurableState s = journal_.State();
    MappingState& m = s.mappings.front().second;
    m.pt_ranges.front().first = Iova(m.iova.value() + m.iova_size_bytes);
    refused(s, "outside its IOVA range");
  }
  {
    // A mapping containing another one, listed after it: refused whatever
    // the order of the records.
    DurableState s = journal_.State();
    auto outer = s.mappings.front();
    outer.second.mapping_id += 1000;
    outer.second.iova = Iova(outer.second.iova.value() - 0x10000);
    outer.second.iova_size_bytes += 0x20000;
    outer.second.iova_from_allocator = false;
    outer.second.pt_ranges = {{outer.second.iova, {PhysAddr(0x1000'0000), 0x1000}}};
    outer.second.pieces.clear();
    outer.second.buffer_refs.clear();
    outer.second.mapped_bytes = 0;
    s.mappings.push_back(outer);
    refused(s, "overlaps another mapping");
  }
  {
    // A default domain with an owner.
    DurableState s = journal_.State();
    ASSERT_FALSE(s.domains.front().default_of.empty());
    s.domains.front().owner = "gpu0";
    refused(s, "has an owner (gpu0)");
  }
  {
    // An untrusted device outside a strict translated domain.
    DurableState s = journal_.State();
    for (DomainState& d : s.domains) {
      if (d.default_of == "tbt0") d.type = DomainType::kIdentity;
    }
    refused(s, "untrusted device tbt0 is in a IDENTITY domain");
  }
  // A topology that lost an SMMU cannot hold the domains on it.
  Topology t = testing::TestTopology();
  std::erase_if(t.devices, [](const DeviceConfig& d) { return d.smmu == "smmu2"; });
  std::erase_if(t.smmus, [](const SmmuConfig& s) { return s.name == "smmu2"; });
  auto b = Broker::Restore(t, options_, journal_.State());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr("smmu2"));
}

TEST_F(BrokerRestoreTest, ANewDeviceInTheTopologyGetsAFreshDefaultDomain) {
  MakeEverything();
  Topology t = testing::TestTopology();
  t.devices.push_back({.name = "late0", .smmu = "smmu0", .stream_id = 0x700, .dma_mask_bits = 48});
  MemoryJournal second;
  BrokerOptions o = options_;
  o.journal = &second;
  auto b = Broker::Restore(t, o, journal_.State());
  ASSERT_TRUE(b.ok()) << b.status();
  std::vector<uint64_t> ids;
  for (const DomainInfo& d : testing::Value((*b)->ListDomains(Caller::Admin()))) {
    ids.push_back(d.domain_id);
  }
  const DeviceInfo late = (*b)->ListDevices(Dev("late0")).value()[0];
  EXPECT_EQ(std::count(ids.begin(), ids.end(), late.default_domain_id), 1);
  // Its domain took a fresh id, past every recorded one.
  EXPECT_GT(late.default_domain_id, journal_.State().domains.back().domain_id);
  EXPECT_GE(second.commits(), 1u);  // and was journaled
  (*b)->CheckInvariants();
}

TEST_F(BrokerRestoreTest, MutationsWaitForTheJournalBeforeReturning) {
  const uint64_t before = journal_.commits();
  auto buf = broker_->AllocBuffer(Dev("nic0"), "nic0", 4 * KiB, Placement::kScattered);
  ASSERT_TRUE(buf.ok());
  EXPECT_GT(journal_.commits(), before);
  EXPECT_EQ(journal_.waited(), journal_.commits());
  // A failed call journals nothing.
  const uint64_t after = journal_.commits();
  EXPECT_FALSE(
      broker_->Map(Dev("nic0"), "nic0", {.mem = {.buffer_id = 4242, .length_bytes = 4096}}).ok());
  EXPECT_EQ(journal_.commits(), after);
  // A Batch message is one commit, and a map it unmaps again writes nothing.
  std::vector<DmaBatchOp> ops;
  for (int i = 0; i < 8; ++i) {
    ops.push_back(MapRequest{.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}});
  }
  std::vector<DmaBatchResult> results(ops.size());
  broker_->MapUnmapBatch(Dev("nic0"), "nic0", ops, absl::MakeSpan(results));
  EXPECT_EQ(journal_.commits(), after + 1);
  EXPECT_EQ(journal_.State().mappings.size(), 8u);
}

}  // namespace
}  // namespace iommu::core

namespace iommu::core {
namespace {

// Commits of different domains reach the journal concurrently, each under
// its own lock: what the journal holds at the end restores the broker as it
// is (the same fingerprint), and no commit was lost or reordered for a key.
TEST_F(BrokerRestoreTest, ConcurrentCommitsJournalTheFinalState) {
  const std::vector<std::string> devices = {"nic0", "gpu0", "cam0", "vf0"};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < devices.size(); ++t) {
    threads.emplace_back([&, t] {
      const std::string& dev = devices[t];
      std::mt19937 rng(uint32_t(t) + 7);
      std::vector<uint64_t> buffers;
      std::vector<Iova> maps;
      for (int i = 0; i < 300; ++i) {
        const int dice = int(rng() % 10);
        if (buffers.size() < 2 || dice == 0) {
          auto b = broker_->AllocBuffer(Dev(dev), dev, 16 * KiB, Placement::kContiguous);
          if (b.ok()) buffers.push_back(b->buffer_id);
        } else if (dice < 6) {
          auto m = broker_->Map(
              Dev(dev), dev,
              {.mem = {.buffer_id = buffers[rng() % buffers.size()], .length_bytes = 4 * KiB}});
          if (m.ok()) maps.push_back(m->dma_addr);
        } else if (!maps.empty()) {
          const size_t k = rng() % maps.size();
          EXPECT_TRUE(broker_->Unmap(Dev(dev), dev, {.dma_addr = maps[k]}).ok());
          maps.erase(maps.begin() + long(k));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  broker_->CheckInvariants();
  auto restored = Restored();
  ASSERT_NE(restored, nullptr);
  EXPECT_EQ(Fingerprint(*restored), Fingerprint(*broker_));
}

}  // namespace
}  // namespace iommu::core
