// SPDX-License-Identifier: Apache-2.0
// Isolation: a device reaches only memory it owns or was granted, whatever
// it asks. One test per rule of the authorisation model (core/broker/broker_authz.cc,
// docs/security.md), then a randomised property test: random calls by
// several devices (one untrusted) and an admin, and after every step every
// leaf reachable through each device's current domain maps memory that
// device may reach.

#include <map>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/xorshift.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using testing::GiB;
using ::testing::HasSubstr;
using testing::KiB;
using testing::MiB;

Caller Dev(const std::string& name, uint64_t session = 0) { return Caller::Device(name, session); }
const Caller kAdmin = Caller::Admin();

class IsolationTest : public ::testing::Test {
 protected:
  void SetUp() override { broker_ = testing::MakeBroker(); }

  uint64_t Buffer(const std::string& dev, uint64_t size = 64 * KiB) {
    auto b = broker_->AllocBuffer(Dev(dev), dev, size, Placement::kContiguous);
    EXPECT_TRUE(b.ok()) << b.status();
    return b->buffer_id;
  }
  MapResult MapBuffer(const std::string& dev, uint64_t buffer, uint64_t size = 64 * KiB) {
    auto m = broker_->Map(Dev(dev), dev, {.mem = {.buffer_id = buffer, .length_bytes = size}});
    EXPECT_TRUE(m.ok()) << m.status();
    return *m;
  }
  // gpu0's dma_alloc, exported to anyone read-only, imported TO_DEVICE by
  // sata0.
  struct Shared {
    bool ok = false;
    AllocResult alloc;
    SgTableResult table;
    MapSgResult import;
  };
  Shared ShareGpuAllocWithSata(uint64_t size_bytes) {
    Shared out;
    auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = size_bytes});
    if (!a.ok()) return out;
    auto t = broker_->GetSgTable(Dev("gpu0"), "gpu0", a->dma_addr, ExportGrant{});
    if (!t.ok()) return out;
    auto imp =
        broker_->MapSg(Dev("sata0"), "sata0",
                       {.import_token = t->export_token, .direction = DmaDirection::kToDevice});
    if (!imp.ok()) return out;
    out = {.ok = true, .alloc = *a, .table = *t, .import = *imp};
    return out;
  }
  DeviceInfo Info(const std::string& dev) {
    for (const DeviceInfo& d : testing::Value(broker_->ListDevices(kAdmin))) {
      if (d.config.name == dev) return d;
    }
    ADD_FAILURE() << dev;
    return {};
  }

  std::unique_ptr<Broker> broker_;
};

// --- finding 1: bypass through IDENTITY (and BLOCKED, DMA_FQ for untrusted) -----

TEST_F(IsolationTest, OnlyTheAdminCreatesIdentityAndBlockedDomains) {
  for (const char* dev : {"tbt0", "nic0"}) {
    for (DomainType t : {DomainType::kIdentity, DomainType::kBlocked}) {
      auto d = broker_->CreateDomain(Dev(dev), {.smmu = "smmu0", .type = t});
      EXPECT_EQ(d.status().code(), absl::StatusCode::kPermissionDenied) << dev;
      EXPECT_THAT(d.status().message(),
                  HasSubstr(absl::StrCat("type=\"", DomainTypeName(t), "\"")));
    }
  }
  // The untrusted device gets strict translated domains only.
  auto fq = broker_->CreateDomain(Dev("tbt0"), {.smmu = "smmu0", .type = DomainType::kDmaFq});
  EXPECT_EQ(fq.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(fq.status().message(), HasSubstr("untrusted device tbt0"));
  EXPECT_TRUE(broker_->CreateDomain(Dev("tbt0"), {.smmu = "smmu0", .type = DomainType::kDma}).ok());
  EXPECT_TRUE(
      broker_->CreateDomain(Dev("tbt0"), {.smmu = "smmu0", .type = DomainType::kUnmanaged}).ok());
  EXPECT_TRUE(
      broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kDmaFq}).ok());
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, UntrustedDeviceNeverLeavesAStrictTranslatedDomain) {
  auto identity = broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .type = DomainType::kIdentity});
  ASSERT_TRUE(identity.ok());
  // Not even the admin can attach it, nor grant it.
  for (DomainType t : {DomainType::kIdentity, DomainType::kBlocked, DomainType::kDmaFq}) {
    auto d = broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .type = t});
    ASSERT_TRUE(d.ok());
    const absl::Status s = broker_->AttachDevice(kAdmin, "tbt0", d->domain_id);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << DomainTypeName(t);
    EXPECT_THAT(s.message(), HasSubstr("untrusted device tbt0 must stay in a strict"));
    auto granted =
        broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .type = t, .granted_devices = {"tbt0"}});
    EXPECT_EQ(granted.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(granted.status().message(), HasSubstr("granted_devices[0]=\"tbt0\""));
  }
  // Its own attempt on the admin's IDENTITY domain answers as for no domain.
  const absl::Status self = broker_->AttachDevice(Dev("tbt0"), "tbt0", identity->domain_id);
  EXPECT_EQ(self.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Info("tbt0").current_domain_id, Info("tbt0").default_domain_id);
  // A trusted device can be put there by the admin (the platform's choice).
  EXPECT_TRUE(broker_->AttachDevice(kAdmin, "nic0", identity->domain_id).ok());
  broker_->CheckInvariants();
}

// --- finding 2: forgeable export tokens; scoped, read-only, revocable sharing ----

TEST_F(IsolationTest, ExportTokensAre128RandomBitsAndForgeriesFail) {
  const uint64_t buf = Buffer("gpu0");
  const MapResult m = MapBuffer("gpu0", buf);
  std::set<std::string> tokens;
  for (int i = 0; i < 4; ++i) {
    auto t = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(t->export_token.size(), 5u + 32u) << t->export_token;
    EXPECT_TRUE(absl::StartsWith(t->export_token, "iexp_"));
    EXPECT_TRUE(tokens.insert(t->export_token).second);
  }
  // Near misses of a real token (every single hex digit changed) all fail,
  // and answer as a token never made.
  const std::string real = *tokens.begin();
  const auto garbage = broker_->MapSg(
      Dev("sata0"), "sata0", {.import_token = "iexp_0", .direction = DmaDirection::kToDevice});
  ASSERT_EQ(garbage.status().code(), absl::StatusCode::kNotFound);
  for (size_t i = 5; i < real.size(); ++i) {
    std::string forged = real;
    forged[i] = forged[i] == '0' ? '1' : '0';
    auto r = broker_->MapSg(Dev("sata0"), "sata0",
                            {.import_token = forged, .direction = DmaDirection::kToDevice});
    ASSERT_EQ(r.status().code(), absl::StatusCode::kNotFound) << forged;
  }
  EXPECT_EQ(Info("sata0").mappings, 0u);
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, ExportsAreBoundToImportersAndReadOnlyUnlessWritable) {
  const uint64_t buf = Buffer("gpu0");
  const MapResult m = MapBuffer("gpu0", buf);
  auto unknown =
      broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{.importers = {"ghost"}});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("export_importers[0]=\"ghost\""));
  auto t =
      broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{.importers = {"sata0"}});
  ASSERT_TRUE(t.ok());
  // Another device: the answer of an unknown token, word for word but the token.
  auto other = broker_->MapSg(
      Dev("nic0"), "nic0", {.import_token = t->export_token, .direction = DmaDirection::kToDevice});
  auto none = broker_->MapSg(Dev("nic0"), "nic0",
                             {.import_token = "iexp_x", .direction = DmaDirection::kToDevice});
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(other.status().message()).substr(other.status().message().find(':')),
            std::string(none.status().message()).substr(none.status().message().find(':')));
  // Read-only: a device-writable import is refused, TO_DEVICE is served
  // read-only and a device write through it faults.
  auto rw = broker_->MapSg(Dev("sata0"), "sata0", {.import_token = t->export_token});
  EXPECT_EQ(rw.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(rw.status().message(), HasSubstr("direction=\"BIDIRECTIONAL\""));
  auto ro = broker_->MapSg(Dev("sata0"), "sata0",
                           {.import_token = t->export_token, .direction = DmaDirection::kToDevice});
  ASSERT_TRUE(ro.ok()) << ro.status();
  auto w = broker_->Translate(Dev("sata0"),
                              {.device = "sata0", .iova = ro->iova, .access = testing::Write()});
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->faulted);
  EXPECT_EQ(w->fault_type, FaultType::kPermission);
  auto r = broker_->Translate(Dev("sata0"),
                              {.device = "sata0", .iova = ro->iova, .access = testing::Read()});
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->faulted);
  // An import cannot be exported again (no escalation to writable).
  auto again = broker_->GetSgTable(Dev("sata0"), "sata0", ro->iova, ExportGrant{.writable = true});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  // A writable export serves device writes.
  auto wt = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr,
                                ExportGrant{.importers = {"nic0"}, .writable = true});
  ASSERT_TRUE(wt.ok());
  auto nic = broker_->MapSg(Dev("nic0"), "nic0", {.import_token = wt->export_token});
  ASSERT_TRUE(nic.ok()) << nic.status();
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, RevocationUnmapsEveryImporterAndTheOwnerCanAlwaysFree) {
  Shared shared = ShareGpuAllocWithSata(64 * KiB);
  ASSERT_TRUE(shared.ok);
  const AllocResult* a = &shared.alloc;
  const SgTableResult* t = &shared.table;
  const MapSgResult* imp = &shared.import;
  // Only the exporter (or an admin) may revoke; others get "no such export".
  auto foreign = broker_->RevokeExport(Dev("sata0"), t->export_token);
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kNotFound);
  // Warm the importer's IOTLB, then free: the exporter is not blocked by the
  // import, which is unmapped and invalidated first.
  ASSERT_FALSE(broker_
                   ->Translate(Dev("sata0"),
                               {.device = "sata0", .iova = imp->iova, .access = testing::Read()})
                   ->faulted);
  ASSERT_TRUE(broker_->Free(Dev("gpu0"), "gpu0", a->dma_addr).ok());
  auto after = broker_->Translate(
      Dev("sata0"), {.device = "sata0", .iova = imp->iova, .access = testing::Read()});
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->faulted);
  EXPECT_EQ(after->fault_type, FaultType::kTranslation);
  EXPECT_EQ(Info("sata0").mappings, 0u);
  EXPECT_EQ(broker_->GetBuffer(kAdmin, a->buffer_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->RevokeExport(Dev("gpu0"), t->export_token).status().code(),
            absl::StatusCode::kNotFound);
  broker_->CheckInvariants();

  // A plain buffer: RevokeExport unmaps both importers (one in a lazy
  // domain, flushed), then FreeBuffer waits only for the owner's own mapping.
  const uint64_t buf = Buffer("gpu0");
  const MapResult m = MapBuffer("gpu0", buf);
  auto t2 = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{});
  ASSERT_TRUE(t2.ok());
  auto fq = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kDmaFq});
  ASSERT_TRUE(fq.ok());
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", fq->domain_id).ok());
  auto i1 =
      broker_->MapSg(Dev("nic0"), "nic0",
                     {.import_token = t2->export_token, .direction = DmaDirection::kToDevice});
  auto i2 =
      broker_->MapSg(Dev("sata0"), "sata0",
                     {.import_token = t2->export_token, .direction = DmaDirection::kToDevice});
  ASSERT_TRUE(i1.ok() && i2.ok());
  ASSERT_FALSE(
      broker_
          ->Translate(Dev("nic0"), {.device = "nic0", .iova = i1->iova, .access = testing::Read()})
          ->faulted);
  const absl::Status busy = broker_->FreeBuffer(Dev("gpu0"), buf);
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(busy.message(), HasSubstr("still referenced by 1 mapping(s)"));
  EXPECT_EQ(Info("nic0").mappings, 1u);  // a refused free revokes nothing
  auto revoked = broker_->RevokeExport(Dev("gpu0"), t2->export_token);
  ASSERT_TRUE(revoked.ok());
  EXPECT_EQ(*revoked, 2u);
  for (const auto& [dev, iova] : {std::pair{"nic0", i1->iova}, std::pair{"sata0", i2->iova}}) {
    auto tr =
        broker_->Translate(Dev(dev), {.device = dev, .iova = iova, .access = testing::Read()});
    EXPECT_TRUE(tr->faulted) << dev;
    EXPECT_FALSE(tr->pages.size() == 1 && tr->pages[0].stale) << dev;
  }
  auto reimport =
      broker_->MapSg(Dev("sata0"), "sata0",
                     {.import_token = t2->export_token, .direction = DmaDirection::kToDevice});
  EXPECT_EQ(reimport.status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(broker_->Unmap(Dev("gpu0"), "gpu0", {m.dma_addr}).ok());
  EXPECT_TRUE(broker_->FreeBuffer(Dev("gpu0"), buf).ok());
  broker_->CheckInvariants();
}

// --- finding 3: admin-created domains open to any device ---------------------------

TEST_F(IsolationTest, AdminDomainsAdmitOnlyGrantedDevices) {
  auto d = broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .granted_devices = {"nvme0"}});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->granted_devices, std::vector<std::string>{"nvme0"});
  const absl::Status s = broker_->AttachDevice(Dev("nic0"), "nic0", d->domain_id);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("no such domain"));
  EXPECT_EQ(broker_->GetDomain(Dev("nic0"), d->domain_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->WalkDomain(Dev("nic0"), d->domain_id).status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(broker_->AttachDevice(Dev("nvme0"), "nvme0", d->domain_id).ok());
  // Attached to it, a device still sees only its own mappings; the admin
  // can attach another device (its decision).
  ASSERT_TRUE(broker_->AttachDevice(kAdmin, "gpu0", d->domain_id).ok());
  EXPECT_EQ(Info("gpu0").current_domain_id, d->domain_id);
  // A device-owned domain is as closed: only its grants.
  auto own = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .granted_devices = {"sata0"}});
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(broker_->AttachDevice(Dev("tbt0"), "tbt0", own->domain_id).code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(broker_->AttachDevice(Dev("sata0"), "sata0", own->domain_id).ok());
  auto wrong_smmu = broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .granted_devices = {"cam0"}});
  EXPECT_EQ(wrong_smmu.status().code(), absl::StatusCode::kFailedPrecondition);
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, EveryRefusalOfTheAttachAndShareRulesNamesItsFieldAndValue) {
  // The admin cannot put a device into another device's default domain.
  const uint64_t gpu_default = Info("gpu0").default_domain_id;
  const absl::Status foreign_default = broker_->AttachDevice(kAdmin, "nic0", gpu_default);
  EXPECT_EQ(foreign_default.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      foreign_default.message(),
      HasSubstr(absl::StrFormat("domain_id=%#x: another device's default domain", gpu_default)));
  // Nor across SMMUs.
  const absl::Status cross = broker_->AttachDevice(kAdmin, "cam0", gpu_default);
  EXPECT_EQ(cross.code(), absl::StatusCode::kFailedPrecondition);
  // A granted device sees the domain, but only its owner destroys it.
  auto shared = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .granted_devices = {"gpu0"}});
  ASSERT_TRUE(shared.ok());
  const absl::Status not_owner = broker_->DestroyDomain(Dev("gpu0"), shared->domain_id);
  EXPECT_EQ(not_owner.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(
      not_owner.message(),
      HasSubstr(absl::StrFormat("domain_id=%#x: only the domain's owner", shared->domain_id)));
  // A grant listed twice is a bad request.
  auto twice =
      broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .granted_devices = {"nic0", "nic0"}});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(twice.status().message(), HasSubstr("granted_devices[1]=\"nic0\": listed twice"));
  // An import is not exported again, and the message says whose call it is.
  const Shared gpu_to_sata = ShareGpuAllocWithSata(16 * KiB);
  ASSERT_TRUE(gpu_to_sata.ok);
  const MapSgResult* imp = &gpu_to_sata.import;
  auto re = broker_->GetSgTable(Dev("sata0"), "sata0", imp->iova, ExportGrant{});
  EXPECT_EQ(re.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(re.status().message(),
              HasSubstr(absl::StrFormat("dma_addr=%#x: an imported buffer cannot be exported",
                                        imp->iova.value())));
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, DeviceListsAreBoundedBeforeAnyWork) {
  // More names than the topology has devices: refused on its size.
  const size_t domains_before = testing::Value(broker_->ListDomains(kAdmin)).size();
  std::vector<std::string> many(100000, "nic0");
  auto d = broker_->CreateDomain(kAdmin, {.smmu = "smmu0", .granted_devices = many});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("granted_devices=0x186a0: lists more devices"));
  const MapResult m = MapBuffer("gpu0", Buffer("gpu0"));
  auto e = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{.importers = many});
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("export_importers=0x186a0"));
  auto twice = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr,
                                   ExportGrant{.importers = {"sata0", "sata0"}});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(twice.status().message(), HasSubstr("export_importers[1]=\"sata0\": listed twice"));
  EXPECT_EQ(testing::Value(broker_->ListDomains(kAdmin)).size(), domains_before);
  broker_->CheckInvariants();
}

// --- finding 4: session ids trusted blindly -----------------------------------------

TEST_F(IsolationTest, ForeignAndPhantomSessionsAreRefusedAndCreateNothing) {
  auto s = broker_->OpenSession(Dev("nic0"), absl::Seconds(30));
  ASSERT_TRUE(s.ok());
  const uint64_t phantom = *s ^ 1;
  for (uint64_t id : {*s, phantom, uint64_t{12345}}) {
    auto b = broker_->AllocBuffer(Dev("gpu0", id), "gpu0", 4 * KiB, Placement::kScattered);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound) << id;
    EXPECT_THAT(b.status().message(), HasSubstr("session_id="));
    auto d = broker_->CreateDomain(Dev("gpu0", id), {.smmu = "smmu0"});
    EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound);
    auto a = broker_->Alloc(Dev("gpu0", id), "gpu0", {.size_bytes = 4 * KiB});
    EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(broker_->CloseSession(Dev("gpu0"), id).code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(broker_->KeepAlive(Dev("gpu0"), id).code(), absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(Info("gpu0").buffers, 0u);
  EXPECT_EQ(Info("gpu0").mappings, 0u);
  // Its owner uses it; once closed, it is refused too.
  auto mine = broker_->AllocBuffer(Dev("nic0", *s), "nic0", 4 * KiB, Placement::kScattered);
  ASSERT_TRUE(mine.ok());
  ASSERT_TRUE(broker_->CloseSession(Dev("nic0"), *s).ok());
  EXPECT_EQ(broker_->GetBuffer(kAdmin, mine->buffer_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      broker_->AllocBuffer(Dev("nic0", *s), "nic0", 4 * KiB, Placement::kScattered).status().code(),
      absl::StatusCode::kNotFound);
  // Ids are not a counter: consecutive sessions are far apart.
  const uint64_t x = *broker_->OpenSession(Dev("nic0"), absl::Seconds(30));
  const uint64_t y = *broker_->OpenSession(Dev("nic0"), absl::Seconds(30));
  EXPECT_GT(x > y ? x - y : y - x, uint64_t{1} << 20);
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, ConcurrentCallsNeverOutliveAClosingSession) {
  // Calls racing a CloseSession either fail or are released by it: nothing
  // created under the session survives its release.
  for (int round = 0; round < 20; ++round) {
    const uint64_t s = *broker_->OpenSession(Dev("nic0"), absl::Seconds(30));
    std::atomic<bool> stop{false};
    std::thread worker([&] {
      while (!stop.load()) {
        auto b = broker_->AllocBuffer(Dev("nic0", s), "nic0", 4 * KiB, Placement::kScattered);
        if (!b.ok()) break;
      }
    });
    std::this_thread::sleep_for(std::chrono::microseconds(200 * (round % 5)));
    ASSERT_TRUE(broker_->CloseSession(Dev("nic0"), s).ok());
    stop.store(true);
    worker.join();
    EXPECT_EQ(Info("nic0").buffers, 0u) << round;
  }
  broker_->CheckInvariants();
}

// --- findings 5 and 6: one answer for "not yours" and "does not exist" --------------

TEST_F(IsolationTest, UnknownDeviceCallersAreNotFoundEverywhere) {
  const Caller ghost = Dev("ghost");
  auto expect_nf = [](const absl::Status& s, const char* what) {
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << what;
    EXPECT_THAT(s.message(), HasSubstr("device=\"ghost\"")) << what;
  };
  expect_nf(broker_->ListDomains(ghost).status(), "ListDomains");
  expect_nf(broker_->ListDevices(ghost).status(), "ListDevices");
  expect_nf(broker_->GetStats(ghost).status(), "GetStats");
  expect_nf(broker_->ReadFaults(ghost, 0, 10).status(), "ReadFaults");
  expect_nf(broker_->DestroyDomain(ghost, Info("nic0").default_domain_id), "DestroyDomain");
  expect_nf(broker_->OpenSession(ghost, absl::Seconds(5)).status(), "OpenSession");
  expect_nf(broker_->CreateDomain(ghost, {.smmu = "smmu0"}).status(), "CreateDomain");
  expect_nf(broker_->GetDomain(ghost, 1).status(), "GetDomain");
}

TEST_F(IsolationTest, ForeignObjectsAnswerAsMissingOnes) {
  const uint64_t nic_buf = Buffer("nic0");
  uint64_t missing = nic_buf + 1000;
  auto foreign =
      broker_->Map(Dev("gpu0"), "gpu0", {.mem = {.buffer_id = nic_buf, .length_bytes = 4096}});
  auto absent =
      broker_->Map(Dev("gpu0"), "gpu0", {.mem = {.buffer_id = missing, .length_bytes = 4096}});
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kNotFound);
  auto tail = [](const absl::Status& s) {
    return std::string(s.message().substr(s.message().find(':')));
  };
  EXPECT_EQ(tail(foreign.status()), tail(absent.status()));
  EXPECT_EQ(broker_->GetBuffer(Dev("gpu0"), nic_buf).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->FreeBuffer(Dev("gpu0"), nic_buf).code(), absl::StatusCode::kNotFound);
  // Another device's domain: destroy, attach and the MSI window answer alike.
  auto own = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kUnmanaged});
  ASSERT_TRUE(own.ok());
  const uint64_t nodomain = own->domain_id + 1000;
  for (uint64_t id : {own->domain_id, nodomain}) {
    EXPECT_EQ(broker_->DestroyDomain(Dev("gpu0"), id).code(), absl::StatusCode::kNotFound) << id;
    EXPECT_EQ(broker_->AttachDevice(Dev("gpu0"), "gpu0", id).code(), absl::StatusCode::kNotFound);
    auto msi = broker_->MsiCookie(
        Dev("gpu0"), "gpu0",
        {.domain_id = id, .window = {.base = Iova(0x8000000), .size_bytes = 0x100000}});
    EXPECT_EQ(msi.status().code(), absl::StatusCode::kNotFound) << id;
  }
  EXPECT_EQ(Info("nic0").buffers, 1u);
}

TEST_F(IsolationTest, DevicesSeeOnlyTheirOwnCounters) {
  // tbt0 faults; nic0's stats show none of it, nor any SMMU-wide counter.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(broker_
                    ->Translate(Dev("tbt0"),
                                {.device = "tbt0", .iova = Iova(0x1000), .access = testing::Read()})
                    ->faulted);
  }
  const BrokerStats nic = broker_->GetStats(Dev("nic0")).value();
  EXPECT_EQ(nic.faults.pushed_total, 0u);
  EXPECT_TRUE(nic.smmus.empty());
  EXPECT_TRUE(nic.pools.empty());
  const BrokerStats tbt = broker_->GetStats(Dev("tbt0")).value();
  EXPECT_EQ(tbt.faults.pushed_total, 3u);
  EXPECT_EQ(tbt.faults.pushed_by_type[size_t(FaultType::kTranslation)], 3u);
  EXPECT_EQ(broker_->GetStats(kAdmin).value().faults.pushed_total, 3u);
  EXPECT_TRUE(broker_->ReadFaults(Dev("nic0"), 0, 10)->records.empty());
}

// --- finding 7: fair defaults ----------------------------------------------------------

TEST_F(IsolationTest, DefaultQuotasLeaveRoomForEveryDevice) {
  const std::vector<DeviceInfo> devices = broker_->ListDevices(kAdmin).value();
  uint64_t pool_bytes = 0;
  const BrokerStats admin = broker_->GetStats(kAdmin).value();
  for (const PoolStats& p : admin.pools) {
    pool_bytes += p.total_pages * p.page_size_bytes;
  }
  for (const DeviceInfo& d : devices) {
    EXPECT_LE(d.quotas.max_buffer_bytes * devices.size(), pool_bytes) << d.config.name;
    EXPECT_GT(d.quotas.max_buffer_bytes, 0u);
  }
  // One device cannot take the whole DRAM pool.
  auto hog = broker_->AllocBuffer(Dev("gpu0"), "gpu0", 8 * GiB, Placement::kScattered);
  EXPECT_EQ(hog.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(hog.status().message(), HasSubstr("buffer-bytes quota"));
  // smmu1 has 4 contexts and 2 devices: each default domain takes one, so
  // each device may create one more, and cam0 cannot take dsp0's.
  ASSERT_TRUE(broker_->CreateDomain(Dev("cam0"), {.smmu = "smmu1"}).ok());
  auto second = broker_->CreateDomain(Dev("cam0"), {.smmu = "smmu1"});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("domain quota of 1 domains"));
  auto dsp = broker_->CreateDomain(Dev("dsp0"), {.smmu = "smmu1"});
  ASSERT_TRUE(dsp.ok()) << dsp.status();
  // Destroying gives the quota back.
  ASSERT_TRUE(broker_->DestroyDomain(Dev("dsp0"), dsp->domain_id).ok());
  EXPECT_TRUE(broker_->CreateDomain(Dev("dsp0"), {.smmu = "smmu1"}).ok());
}

TEST_F(IsolationTest, ExportTokensAreBoundedPerDevice) {
  Topology t = testing::TestTopology();
  for (DeviceConfig& d : t.devices) {
    if (d.name == "gpu0") d.quotas.max_exports = 2;
  }
  broker_ = testing::MakeBroker({}, t);
  const MapResult m = MapBuffer("gpu0", Buffer("gpu0"));
  auto a = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{});
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{}).ok());
  auto third = broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{});
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("export quota of 2"));
  // The plain scatterlist needs no token and is never refused for it.
  EXPECT_TRUE(broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr).ok());
  ASSERT_TRUE(broker_->RevokeExport(Dev("gpu0"), a->export_token).ok());
  EXPECT_TRUE(broker_->GetSgTable(Dev("gpu0"), "gpu0", m.dma_addr, ExportGrant{}).ok());
  broker_->CheckInvariants();
}

TEST_F(IsolationTest, TopologyQuotasOverrideTheDefaults) {
  Topology t = testing::TestTopology();
  for (DeviceConfig& d : t.devices) {
    if (d.name == "gpu0") d.quotas.max_buffer_bytes = 3 * GiB;
    if (d.name == "nic0") d.quotas.max_sessions = 1;
  }
  BrokerOptions options;
  options.default_quotas.max_buffer_bytes = 2 * MiB;
  broker_ = testing::MakeBroker(options, t);
  EXPECT_EQ(Info("gpu0").quotas.max_buffer_bytes, 3 * GiB);
  EXPECT_EQ(Info("nvme0").quotas.max_buffer_bytes, 2 * MiB);
  ASSERT_TRUE(broker_->OpenSession(Dev("nic0"), absl::Seconds(5)).ok());
  auto second = broker_->OpenSession(Dev("nic0"), absl::Seconds(5));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("session quota of 1"));
}

// --- the property: random calls, isolation checked after every step ----------------

// A model of what each device was legitimately given, built only from the
// calls the test made and the rules of docs/security.md, never from the
// broker's state: who may use each domain, who owns each buffer, which live
// export tokens each device imported. After every step, for each device,
// every leaf of its current domain's page table must map memory owned by a
// device that may use that domain or imported by one through a live token
// (or the MSI doorbell frame), and an untrusted device must sit in a strict
// DMA or UNMANAGED domain.
class IsolationModel {
 public:
  explicit IsolationModel(Broker& broker) : b_(broker) {
    for (const DeviceInfo& d : testing::Value(b_.ListDevices(kAdmin))) {
      users_[d.default_domain_id] = {d.config.name};
      types_[d.default_domain_id] = DomainType::kDma;
      trusted_[d.config.name] = d.config.trusted;
    }
  }

  void Step(Xorshift64& rng) {
    const std::string dev = kDevices[rng.Below(std::size(kDevices))];
    switch (rng.Below(12)) {
      case 0: {  // a buffer
        auto r = b_.AllocBuffer(Dev(dev), dev, (1 + rng.Below(4)) * 4 * KiB,
                                rng.Below(2) ? Placement::kScattered : Placement::kContiguous);
        if (r.ok()) owner_[r->buffer_id] = dev;
        break;
      }
      case 1: {  // map any known buffer, another device's included
        if (owner_.empty()) break;
        const uint64_t buf = Pick(owner_, rng);
        auto r = b_.Map(Dev(dev), dev, {.mem = {.buffer_id = buf, .length_bytes = 4 * KiB}});
        if (r.ok()) {
          EXPECT_EQ(owner_[buf], dev) << "mapped another device's buffer";
          maps_.push_back({dev, r->dma_addr, buf});
        }
        break;
      }
      case 2: {  // unmap
        if (maps_.empty()) break;
        const size_t i = rng.Below(maps_.size());
        (void)b_.Unmap(Dev(maps_[i].dev), maps_[i].dev, {maps_[i].dma_addr});
        (void)b_.Free(Dev(maps_[i].dev), maps_[i].dev, maps_[i].dma_addr);
        maps_.erase(maps_.begin() + i);
        break;
      }
      case 3: {  // a domain, by a device or the admin, with random grants
        const bool admin = rng.Below(3) == 0;
        const DomainType type = kTypes[rng.Below(std::size(kTypes))];
        std::vector<std::string> grants;
        for (const char* g : kDevices) {
          if (rng.Below(4) == 0) grants.push_back(g);
        }
        auto r = b_.CreateDomain(admin ? kAdmin : Dev(dev),
                                 {.smmu = "smmu0", .type = type, .granted_devices = grants});
        if (!r.ok()) break;
        if (!admin) {
          EXPECT_TRUE(type != DomainType::kIdentity && type != DomainType::kBlocked);
          users_[r->domain_id].insert(dev);
        }
        users_[r->domain_id].insert(grants.begin(), grants.end());
        types_[r->domain_id] = type;
        break;
      }
      case 4: {  // attach: itself (to anything, as an attacker) or by the admin
        if (types_.empty()) break;
        const uint64_t domain = Pick(types_, rng);
        const bool admin = rng.Below(4) == 0;
        if (!b_.AttachDevice(admin ? kAdmin : Dev(dev), dev, domain).ok()) break;
        if (admin) {
          users_[domain].insert(dev);  // the admin's grant
        } else {
          EXPECT_TRUE(users_[domain].contains(dev)) << dev << " attached to domain " << domain;
        }
        break;
      }
      case 5:
        (void)b_.DetachDevice(Dev(dev), dev);
        break;
      case 6: {  // export whatever it has mapped at one of the known addresses
        if (maps_.empty()) break;
        const Mapping& m = maps_[rng.Below(maps_.size())];
        ExportGrant grant{.writable = rng.Below(2) == 0};
        for (const char* g : kDevices) {
          if (rng.Below(3) == 0) grant.importers.push_back(g);
        }
        auto r = b_.GetSgTable(Dev(dev), dev, m.dma_addr, grant);
        if (!r.ok()) break;
        // The buffer behind it must be the exporter's own.
        const uint64_t buf = BufferAt(r->chunks.front().start.value());
        EXPECT_NE(buf, 0u);
        EXPECT_EQ(owner_[buf], dev) << "exported memory it does not own";
        exports_[r->export_token] = {.exporter = dev, .buffer = buf, .importers = grant.importers};
        break;
      }
      case 7: {  // import: a real token (maybe not for it) or a forged one
        if (exports_.empty()) break;
        std::string token = Pick(exports_, rng);
        if (rng.Below(4) == 0) token[5 + rng.Below(32)] ^= 1;
        auto r =
            b_.MapSg(Dev(dev), dev, {.import_token = token, .direction = DmaDirection::kToDevice});
        if (!r.ok()) break;
        ASSERT_TRUE(exports_.contains(token)) << "imported a forged token";
        const Export& e = exports_[token];
        EXPECT_TRUE(e.importers.empty() ||
                    std::find(e.importers.begin(), e.importers.end(), dev) != e.importers.end());
        imported_[dev].insert(token);
        maps_.push_back({dev, r->iova, 0});
        break;
      }
      case 8: {  // revoke, as anyone
        if (exports_.empty()) break;
        const std::string token = Pick(exports_, rng);
        if (!b_.RevokeExport(Dev(dev), token).ok()) break;
        EXPECT_EQ(exports_[token].exporter, dev);
        exports_.erase(token);
        break;
      }
      case 9: {  // free any known buffer, another device's included
        if (owner_.empty()) break;
        const uint64_t buf = Pick(owner_, rng);
        if (!b_.FreeBuffer(Dev(dev), buf).ok()) break;
        EXPECT_EQ(owner_[buf], dev);
        owner_.erase(buf);
        ForgetExportsOf(buf);
        break;
      }
      case 10: {  // dma_alloc (pages it owns)
        auto r = b_.Alloc(Dev(dev), dev, {.size_bytes = 16 * KiB});
        if (!r.ok()) break;
        owner_[r->buffer_id] = dev;
        maps_.push_back({dev, r->dma_addr, r->buffer_id});
        break;
      }
      case 11: {  // destroy a domain, as anyone
        if (types_.empty()) break;
        (void)b_.DestroyDomain(Dev(dev), Pick(types_, rng));
        break;
      }
    }
    // A Free of an Alloc frees its buffer: forget what the broker forgot.
    for (auto it = owner_.begin(); it != owner_.end();) {
      if (b_.GetBuffer(kAdmin, it->first).ok()) {
        ++it;
      } else {
        const uint64_t gone = it->first;
        it = owner_.erase(it);
        ForgetExportsOf(gone);
      }
    }
  }

  void Check() {
    for (const DeviceInfo& d : testing::Value(b_.ListDevices(kAdmin))) {
      const std::string& dev = d.config.name;
      if (std::find(std::begin(kDevices), std::end(kDevices), dev) == std::end(kDevices)) continue;
      const uint64_t x = d.current_domain_id;
      auto info = b_.GetDomain(kAdmin, x);
      ASSERT_TRUE(info.ok());
      ASSERT_TRUE(users_[x].contains(dev)) << dev << " sits in domain " << x << " unpermitted";
      if (!trusted_[dev]) {
        ASSERT_TRUE(info->type == DomainType::kDma || info->type == DomainType::kUnmanaged)
            << dev << " left a strict translated domain: " << DomainTypeName(info->type);
      }
      // Memory reachable through x: its users' buffers and live imports.
      std::vector<PhysRun> allowed;
      auto allow = [&](uint64_t buf) {
        auto bi = b_.GetBuffer(kAdmin, buf);
        if (bi.ok()) allowed.insert(allowed.end(), bi->runs.begin(), bi->runs.end());
      };
      for (const auto& [buf, owner] : owner_) {
        if (users_[x].contains(owner)) allow(buf);
      }
      for (const std::string& user : users_[x]) {
        for (const std::string& token : imported_[user]) {
          if (exports_.contains(token)) allow(exports_[token].buffer);
        }
      }
      auto leaves = b_.WalkDomain(kAdmin, x);
      ASSERT_TRUE(leaves.ok());
      for (const PgtableMapping& leaf : *leaves) {
        const uint64_t lo = leaf.phys.value(), hi = lo + leaf.size_bytes;
        // MSI doorbell pages (the broker maps them; MMIO, never RAM).
        const bool mmio =
            std::any_of(b_.topology().memory.regions.begin(), b_.topology().memory.regions.end(),
                        [&](const MemoryRegionConfig& r) {
                          return r.kind == RegionKind::kMmio && lo >= r.base.value() &&
                                 hi <= r.base.value() + r.size_bytes;
                        });
        if (mmio) continue;
        const bool inside = std::any_of(allowed.begin(), allowed.end(), [&](const PhysRun& r) {
          return lo >= r.start.value() && hi <= r.start.value() + r.size_bytes;
        });
        ASSERT_TRUE(inside) << dev << " reaches phys " << std::hex << lo << "+" << leaf.size_bytes
                            << " through domain " << std::dec << x;
      }
    }
  }

 private:
  static constexpr const char* kDevices[] = {"nic0", "gpu0", "sata0", "tbt0"};
  static constexpr DomainType kTypes[] = {DomainType::kDma, DomainType::kDmaFq,
                                          DomainType::kUnmanaged, DomainType::kIdentity,
                                          DomainType::kBlocked};
  struct Mapping {
    std::string dev;
    Iova dma_addr;
    uint64_t buffer;  // 0 for an import
  };
  struct Export {
    std::string exporter;
    uint64_t buffer = 0;
    std::vector<std::string> importers;
  };
  template <typename Map>
  static typename Map::key_type Pick(const Map& m, Xorshift64& rng) {
    auto it = m.begin();
    std::advance(it, rng.Below(m.size()));
    return it->first;
  }
  // The known buffer holding physical address `phys`, or 0.
  uint64_t BufferAt(uint64_t phys) {
    for (const auto& [buf, owner] : owner_) {
      auto bi = b_.GetBuffer(kAdmin, buf);
      if (!bi.ok()) continue;
      for (const PhysRun& r : bi->runs) {
        if (phys >= r.start.value() && phys < r.start.value() + r.size_bytes) return buf;
      }
    }
    return 0;
  }
  void ForgetExportsOf(uint64_t buf) {
    for (auto it = exports_.begin(); it != exports_.end();) {
      it = it->second.buffer == buf ? exports_.erase(it) : std::next(it);
    }
  }

  Broker& b_;
  std::map<uint64_t, std::set<std::string>> users_;  // domain -> devices that may use it
  std::map<uint64_t, DomainType> types_;
  std::map<std::string, bool> trusted_;
  std::map<uint64_t, std::string> owner_;  // buffer -> owning device
  std::vector<Mapping> maps_;
  std::map<std::string, Export> exports_;  // live tokens
  std::map<std::string, std::set<std::string>> imported_;
};

TEST(IsolationPropertyTest, RandomCallsNeverReachMemoryNotOwnedOrGranted) {
  for (uint64_t seed : {1, 2, 3, 4}) {
    SCOPED_TRACE(seed);
    auto broker = testing::MakeBroker();
    IsolationModel model(*broker);
    Xorshift64 rng(seed);
    for (int step = 0; step < 600; ++step) {
      model.Step(rng);
      if (::testing::Test::HasFatalFailure()) return;
      model.Check();
      if (::testing::Test::HasFatalFailure()) {
        ADD_FAILURE() << "after step " << step;
        return;
      }
      broker->CheckInvariants();
    }
  }
}

}  // namespace
}  // namespace iommu::core
