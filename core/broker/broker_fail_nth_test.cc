// SPDX-License-Identifier: Apache-2.0
// The fail-nth sweep (docs/design.md#failure-injection), as the iommufd
// selftests' fail_nth: for every mutating Broker call, on a state built for
// it, fail the 1st, 2nd, ... injection hit of the call until a run reaches no
// hit. Each failed run must answer RESOURCE_EXHAUSTED naming the point that
// failed, leave the state exactly as it was (StateDigest) with every
// invariant intact, and the same call must then succeed unarmed; a Batch, whose
// other ops go on, must leave what its ops one at a time leave under the same
// injection. A run whose
// failure a fallback absorbed (Alloc retries scattered pages) must succeed
// with intact invariants. Each case also states the points it reaches, so a
// point that stops being reached (or a new one) shows here. Under ASan
// (`make asan`) the same sweep proves that no unwinding leaks.

#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/fail_nth.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;
using testing::KiB;
using testing::MiB;

Caller Dev(const std::string& name, uint64_t session = 0) { return Caller::Device(name, session); }
const Caller kAdmin = Caller::Admin();

// The test topology with small pools, so that a broker is cheap to build once
// per run.
Topology SmallTopology() {
  Topology t = testing::TestTopology();
  for (PoolConfig& p : t.memory.pools) {
    if (p.name == "dram") p.ranges = {{PhysAddr(0x8000'0000), 64 * MiB}};
  }
  return t;
}

// A broker and what a case's setup made in it, by name.
struct World {
  testing::FakeClock clock;
  std::unique_ptr<Broker> broker;
  std::map<std::string, uint64_t> v;
  std::map<std::string, std::string> token;
  // MapUnmapBatch: the ops, and which of them the call under test failed.
  std::vector<DmaBatchOp> batch;
  std::vector<bool> batch_failed;

  uint64_t Buffer(const std::string& dev, uint64_t size_bytes,
                  Placement placement = Placement::kContiguous, uint64_t session = 0) {
    auto b = broker->AllocBuffer(Dev(dev, session), dev, size_bytes, placement);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? b->buffer_id : 0;
  }
  uint64_t Map(const std::string& dev, uint64_t buffer_id, uint64_t length_bytes,
               uint64_t session = 0) {
    auto m = broker->Map(Dev(dev, session), dev,
                         {.mem = {.buffer_id = buffer_id, .length_bytes = length_bytes}});
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? m->dma_addr.value() : 0;
  }
  uint64_t Domain(const Caller& caller, CreateDomainRequest request) {
    auto d = broker->CreateDomain(caller, request);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? d->domain_id : 0;
  }
  void Attach(const std::string& dev, uint64_t domain_id) {
    EXPECT_TRUE(broker->AttachDevice(kAdmin, dev, domain_id).ok());
  }
  // gpu0 (in its current domain) exports an Alloc of `size_bytes` to anyone.
  void Export(uint64_t size_bytes) {
    auto a = broker->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = size_bytes});
    ASSERT_TRUE(a.ok()) << a.status();
    v["alloc"] = a->dma_addr.value();
    auto t = broker->GetSgTable(Dev("gpu0"), "gpu0", a->dma_addr, ExportGrant{});
    ASSERT_TRUE(t.ok()) << t.status();
    token["export"] = t->export_token;
  }
};

struct Case {
  std::string name;
  std::function<void(World&)> setup;
  std::function<absl::Status(World&)> call;
  // The points the sweep must have failed (each at least once).
  std::set<FailPoint> points;
  // For a call of several operations whose failed one leaves the others
  // done (a Batch): the same operations one at a time, whose state under the
  // same injection the call's must equal (instead of the state before).
  std::function<absl::Status(World&)> reference;
};

// gtest prints a case by its name (test listings, ctest).
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// The first failed op of a batch (OK when none failed); records which failed.
absl::Status RunBatch(World& w, const std::string& dev) {
  std::vector<DmaBatchResult> results(w.batch.size());
  w.broker->MapUnmapBatch(Dev(dev), dev, w.batch, absl::MakeSpan(results));
  absl::Status first;
  w.batch_failed.assign(w.batch.size(), false);
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].status.ok()) {
      w.batch_failed[i] = true;
      if (first.ok()) first = results[i].status;
    }
  }
  return first;
}

// The batch's ops as unary calls, one at a time (what the batch must equal).
absl::Status RunUnary(World& w, const std::string& dev) {
  absl::Status first;
  w.batch_failed.assign(w.batch.size(), false);
  for (size_t i = 0; i < w.batch.size(); ++i) {
    absl::Status s;
    if (const auto* m = std::get_if<MapRequest>(&w.batch[i])) {
      s = w.broker->Map(Dev(dev), dev, *m).status();
    } else {
      s = w.broker->Unmap(Dev(dev), dev, std::get<UnmapRequest>(w.batch[i]));
    }
    if (!s.ok()) {
      w.batch_failed[i] = true;
      if (first.ok()) first = s;
    }
  }
  return first;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  const auto none = [](World&) {};

  // --- buffers ----------------------------------------------------------------
  add({"AllocBufferContiguous",
       none,
       [](World& w) {
         return StatusOf(
             w.broker->AllocBuffer(Dev("gpu0"), "gpu0", 64 * KiB, Placement::kContiguous));
       },
       {FailPoint::kBufferRecord, FailPoint::kMemoryPages}});
  add({"AllocBufferScatteredInSession",
       [](World& w) {
         w.v["sid"] = testing::Value(w.broker->OpenSession(Dev("gpu0"), absl::Seconds(30)));
       },
       [](World& w) {
         return StatusOf(w.broker->AllocBuffer(Dev("gpu0", w.v["sid"]), "gpu0", 16 * KiB,
                                               Placement::kScattered));
       },
       {FailPoint::kBufferRecord, FailPoint::kMemoryPages}});
  add({"FreeBuffer",
       [](World& w) { w.v["b"] = w.Buffer("gpu0", 64 * KiB); },
       [](World& w) { return w.broker->FreeBuffer(Dev("gpu0"), w.v["b"]); },
       {}});

  // --- Map / Unmap / Batch ------------------------------------------------------
  // A fresh default domain: the map needs every table below the root.
  add({"MapIntoEmptyDomain",
       [](World& w) { w.v["b"] = w.Buffer("gpu0", 64 * KiB); },
       [](World& w) {
         return StatusOf(w.broker->Map(Dev("gpu0"), "gpu0",
                                       {.mem = {.buffer_id = w.v["b"], .length_bytes = 64 * KiB}}));
       },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  // 3 MiB: a 2 MiB block and 256 pages, two MapPages calls, the second of
  // which needs a new table after the first mapped its block.
  add({"MapBlockAndPages",
       [](World& w) { w.v["b"] = w.Buffer("gpu0", 3 * MiB); },
       [](World& w) {
         return StatusOf(w.broker->Map(Dev("gpu0"), "gpu0",
                                       {.mem = {.buffer_id = w.v["b"], .length_bytes = 3 * MiB}}));
       },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  add({"MapInLazyDomain",
       [](World& w) {
         w.Attach("gpu0", w.Domain(kAdmin, {.smmu = "smmu0", .type = DomainType::kDmaFq}));
         w.v["b"] = w.Buffer("gpu0", 64 * KiB);
         // A pending lazy unmap, so the call's IOVA allocation meets the queue.
         w.v["old"] = w.Map("gpu0", w.Buffer("gpu0", 4 * KiB), 4 * KiB);
         EXPECT_TRUE(w.broker->Unmap(Dev("gpu0"), "gpu0", {Iova(w.v["old"])}).ok());
       },
       [](World& w) {
         return StatusOf(w.broker->Map(Dev("gpu0"), "gpu0",
                                       {.mem = {.buffer_id = w.v["b"], .length_bytes = 64 * KiB}}));
       },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  add({"Unmap",
       [](World& w) { w.v["dma"] = w.Map("gpu0", w.Buffer("gpu0", 64 * KiB), 64 * KiB); },
       [](World& w) { return w.broker->Unmap(Dev("gpu0"), "gpu0", {Iova(w.v["dma"])}); },
       {}});
  add({"MapUnmapBatch",
       [](World& w) {
         // The 3 MiB map needs a new leaf table below the one the 8 KiB
         // mapping holds; its unmap's IOVA free meets the next map.
         const uint64_t b1 = w.Buffer("gpu0", 64 * KiB);
         const uint64_t b2 = w.Buffer("gpu0", 3 * MiB);
         const uint64_t old = w.Map("gpu0", w.Buffer("gpu0", 8 * KiB), 8 * KiB);
         w.batch = {MapRequest{.mem = {.buffer_id = b2, .length_bytes = 3 * MiB}},
                    UnmapRequest{.dma_addr = Iova(old)},
                    MapRequest{.mem = {.buffer_id = b1, .length_bytes = 64 * KiB}}};
       },
       [](World& w) { return RunBatch(w, "gpu0"); },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable},
       [](World& w) { return RunUnary(w, "gpu0"); }});

  // --- MapSg / UnmapSg / imports ------------------------------------------------
  // Three 1 MiB segments merged into one 4 MiB-aligned IOVA block: the third
  // range needs a new leaf table after the first two are mapped.
  add({"MapSg",
       [](World& w) {
         for (int i = 0; i < 3; ++i) w.v[absl::StrCat("b", i)] = w.Buffer("gpu0", 1 * MiB);
       },
       [](World& w) {
         MapSgRequest r;
         for (int i = 0; i < 3; ++i) {
           r.segments.push_back({.buffer_id = w.v[absl::StrCat("b", i)], .length_bytes = 1 * MiB});
         }
         return StatusOf(w.broker->MapSg(Dev("gpu0"), "gpu0", r));
       },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  add({"MapSgImport",
       [](World& w) { w.Export(64 * KiB); },
       [](World& w) {
         return StatusOf(w.broker->MapSg(
             Dev("nic0"), "nic0",
             {.import_token = w.token["export"], .direction = DmaDirection::kToDevice}));
       },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable,
        FailPoint::kImportRecord}});
  add({"MapSgImportIntoLazyDomain",
       [](World& w) {
         w.Export(64 * KiB);
         w.Attach("nic0", w.Domain(kAdmin, {.smmu = "smmu0", .type = DomainType::kDmaFq}));
       },
       [](World& w) {
         return StatusOf(w.broker->MapSg(
             Dev("nic0"), "nic0",
             {.import_token = w.token["export"], .direction = DmaDirection::kToDevice}));
       },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable,
        FailPoint::kImportRecord}});
  add({"UnmapSg",
       [](World& w) {
         auto m = w.broker->MapSg(
             Dev("gpu0"), "gpu0",
             {.segments = {{.buffer_id = w.Buffer("gpu0", 64 * KiB), .length_bytes = 64 * KiB}}});
         ASSERT_TRUE(m.ok()) << m.status();
         w.v["iova"] = m->iova.value();
       },
       [](World& w) { return w.broker->UnmapSg(Dev("gpu0"), "gpu0", Iova(w.v["iova"])); },
       {}});

  // --- Alloc / Free / exports ------------------------------------------------------
  add({"Alloc",
       none,
       [](World& w) {
         return StatusOf(w.broker->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB}));
       },
       {FailPoint::kBufferRecord, FailPoint::kMemoryPages, FailPoint::kMappingRecord,
        FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  add({"AllocForceContiguous",
       none,
       [](World& w) {
         return StatusOf(w.broker->Alloc(
             Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB, .attrs = {.force_contiguous = true}}));
       },
       {FailPoint::kBufferRecord, FailPoint::kMemoryPages, FailPoint::kMappingRecord,
        FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  // 2 MiB + 16 KiB of single pages: one page-table range per page, and the
  // ranges after the first 2 MiB need a second leaf table, so a failure
  // there unwinds 512 mapped ranges.
  add({"AllocSinglePagesAcrossTables",
       none,
       [](World& w) {
         return StatusOf(w.broker->Alloc(
             Dev("gpu0"), "gpu0",
             {.size_bytes = 2 * MiB + 16 * KiB, .attrs = {.alloc_single_pages = true}}));
       },
       {FailPoint::kBufferRecord, FailPoint::kMemoryPages, FailPoint::kMappingRecord,
        FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  add({"Free",
       [](World& w) {
         auto a = w.broker->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB});
         ASSERT_TRUE(a.ok()) << a.status();
         w.v["dma"] = a->dma_addr.value();
       },
       [](World& w) { return w.broker->Free(Dev("gpu0"), "gpu0", Iova(w.v["dma"])); },
       {}});
  add({"GetSgTableExport",
       [](World& w) { w.v["dma"] = w.Map("gpu0", w.Buffer("gpu0", 64 * KiB), 64 * KiB); },
       [](World& w) {
         return StatusOf(
             w.broker->GetSgTable(Dev("gpu0"), "gpu0", Iova(w.v["dma"]), ExportGrant{}));
       },
       {FailPoint::kExportRecord}});
  add({"RevokeExport",
       [](World& w) {
         w.Export(64 * KiB);
         auto imp = w.broker->MapSg(
             Dev("nic0"), "nic0",
             {.import_token = w.token["export"], .direction = DmaDirection::kToDevice});
         ASSERT_TRUE(imp.ok()) << imp.status();
       },
       [](World& w) { return StatusOf(w.broker->RevokeExport(Dev("gpu0"), w.token["export"])); },
       {}});

  // --- MSI, MapAt, UnmapRange, Sync ------------------------------------------------
  add({"MsiCookieIovaCookie",
       none,
       [](World& w) { return StatusOf(w.broker->MsiCookie(Dev("gpu0"), "gpu0", {})); },
       {FailPoint::kMappingRecord, FailPoint::kIovaRange, FailPoint::kPgtableTable}});
  // The owner of its current UNMANAGED domain sets the window: the doorbell
  // is mapped in the same call.
  add({"MsiCookieWindowOfCurrentDomain",
       [](World& w) {
         w.v["dom"] = w.Domain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
         ASSERT_TRUE(w.broker->AttachDevice(Dev("vf0"), "vf0", w.v["dom"]).ok());
       },
       [](World& w) {
         return StatusOf(
             w.broker->MsiCookie(Dev("vf0"), "vf0",
                                 {.domain_id = w.v["dom"],
                                  .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}}));
       },
       {FailPoint::kMappingRecord, FailPoint::kPgtableTable}});
  add({"MapAt",
       [](World& w) {
         w.v["dom"] = w.Domain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
         ASSERT_TRUE(w.broker->AttachDevice(Dev("vf0"), "vf0", w.v["dom"]).ok());
         w.v["b"] = w.Buffer("vf0", 64 * KiB);
       },
       [](World& w) {
         return StatusOf(
             w.broker->MapAt(Dev("vf0"), "vf0",
                             {.iova = Iova(0x4000'0000),
                              .mem = {.buffer_id = w.v["b"], .length_bytes = 64 * KiB}}));
       },
       {FailPoint::kMappingRecord, FailPoint::kPgtableTable}});
  add({"UnmapRange",
       [](World& w) {
         w.v["dom"] = w.Domain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
         ASSERT_TRUE(w.broker->AttachDevice(Dev("vf0"), "vf0", w.v["dom"]).ok());
         auto m = w.broker->MapAt(
             Dev("vf0"), "vf0",
             {.iova = Iova(0x4000'0000),
              .mem = {.buffer_id = w.Buffer("vf0", 64 * KiB), .length_bytes = 64 * KiB}});
         ASSERT_TRUE(m.ok()) << m.status();
       },
       [](World& w) {
         return StatusOf(w.broker->UnmapRange(Dev("vf0"), "vf0", Iova(0x4000'0000), 64 * KiB));
       },
       {}});
  add({"Sync",
       [](World& w) {
         w.Attach("gpu0", w.Domain(kAdmin, {.smmu = "smmu0", .type = DomainType::kDmaFq}));
         const uint64_t dma = w.Map("gpu0", w.Buffer("gpu0", 64 * KiB), 64 * KiB);
         EXPECT_TRUE(w.broker->Unmap(Dev("gpu0"), "gpu0", {Iova(dma)}).ok());
       },
       [](World& w) { return w.broker->Sync(Dev("gpu0"), "gpu0"); },
       {}});
  add({"Translate",
       [](World& w) { w.v["dma"] = w.Map("gpu0", w.Buffer("gpu0", 64 * KiB), 64 * KiB); },
       [](World& w) {
         return StatusOf(w.broker->Translate(
             Dev("gpu0"), {.device = "gpu0", .iova = Iova(w.v["dma"]), .access = testing::Read()}));
       },
       {}});

  // --- domains -----------------------------------------------------------------------
  for (const DomainType type : {DomainType::kDma, DomainType::kDmaFq, DomainType::kUnmanaged}) {
    add({absl::StrCat("CreateDomain", DomainTypeName(type)),
         none,
         [type](World& w) {
           return StatusOf(w.broker->CreateDomain(Dev("gpu0"), {.smmu = "smmu0", .type = type}));
         },
         {FailPoint::kSmmuContext, FailPoint::kPgtableTable}});
  }
  add({"CreateDomainStage2With64KGranule",
       none,
       [](World& w) {
         return StatusOf(w.broker->CreateDomain(
             Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kDma, .granule_bytes = 64 * KiB}));
       },
       {FailPoint::kSmmuContext, FailPoint::kPgtableTable}});
  add({"DestroyDomain",
       [](World& w) {
         w.v["dom"] = w.Domain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
       },
       [](World& w) { return w.broker->DestroyDomain(Dev("vf0"), w.v["dom"]); },
       {}});
  add({"AttachDevice",
       [](World& w) { w.v["dom"] = w.Domain(kAdmin, {.smmu = "smmu0"}); },
       [](World& w) { return w.broker->AttachDevice(kAdmin, "gpu0", w.v["dom"]); },
       {}});
  add({"DetachDevice",
       [](World& w) {
         w.Attach("gpu0", w.Domain(kAdmin, {.smmu = "smmu0"}));
         w.Map("gpu0", w.Buffer("gpu0", 64 * KiB), 64 * KiB);
       },
       [](World& w) { return w.broker->DetachDevice(kAdmin, "gpu0"); },
       {}});

  // --- sessions ------------------------------------------------------------------------
  add({"OpenSession",
       none,
       [](World& w) { return StatusOf(w.broker->OpenSession(Dev("gpu0"), absl::Seconds(30))); },
       {FailPoint::kSessionRecord}});
  add({"KeepAlive",
       [](World& w) {
         w.v["sid"] = testing::Value(w.broker->OpenSession(Dev("gpu0"), absl::Seconds(30)));
       },
       [](World& w) { return w.broker->KeepAlive(Dev("gpu0"), w.v["sid"]); },
       {}});
  // Closing (or expiring) a session releases what it made: a mapping, an
  // Alloc, a buffer and a domain.
  const auto session_with_resources = [](World& w) {
    const uint64_t sid = testing::Value(w.broker->OpenSession(Dev("gpu0"), absl::Seconds(30)));
    w.v["sid"] = sid;
    w.Map("gpu0", w.Buffer("gpu0", 64 * KiB, Placement::kContiguous, sid), 64 * KiB, sid);
    EXPECT_TRUE(w.broker->Alloc(Dev("gpu0", sid), "gpu0", {.size_bytes = 16 * KiB}).ok());
    w.Buffer("gpu0", 16 * KiB, Placement::kScattered, sid);
    w.Domain(Dev("gpu0", sid), {.smmu = "smmu0", .type = DomainType::kUnmanaged});
  };
  add({"CloseSession",
       session_with_resources,
       [](World& w) { return w.broker->CloseSession(Dev("gpu0"), w.v["sid"]); },
       {}});
  add({"TickExpiresSession",
       session_with_resources,
       [](World& w) {
         w.clock.now += absl::Seconds(31);
         return w.broker->Tick() == 1 ? absl::OkStatus() : absl::InternalError("no expiry");
       },
       {}});
  return cases;
}

// The digest the sweep compares sees each kind of change, and a change
// undone (a mapping unmapped, its tables freed, its IOVA cached) reads as
// the state before.
TEST(StateDigestTest, SeesChangesAndTheirUndoing) {
  World w;
  w.broker = testing::MakeBroker({}, SmallTopology());
  ASSERT_NE(w.broker, nullptr);
  const std::string empty = w.broker->StateDigest();
  EXPECT_EQ(w.broker->StateDigest(), empty) << "deterministic";
  const uint64_t b = w.Buffer("gpu0", 64 * KiB);
  const std::string with_buffer = w.broker->StateDigest();
  EXPECT_NE(with_buffer, empty);
  const uint64_t dma = w.Map("gpu0", b, 64 * KiB);
  const std::string mapped = w.broker->StateDigest();
  EXPECT_NE(mapped, with_buffer);
  EXPECT_THAT(mapped, HasSubstr(absl::StrFormat("mapping %#x+0x10000", dma)));
  ASSERT_TRUE(w.broker->Unmap(Dev("gpu0"), "gpu0", {Iova(dma)}).ok());
  EXPECT_EQ(w.broker->StateDigest(), with_buffer);
  const uint64_t sid = testing::Value(w.broker->OpenSession(Dev("gpu0"), absl::Seconds(30)));
  EXPECT_NE(w.broker->StateDigest(), with_buffer);
  ASSERT_TRUE(w.broker->CloseSession(Dev("gpu0"), sid).ok());
  EXPECT_EQ(w.broker->StateDigest(), with_buffer);
  ASSERT_TRUE(w.broker->FreeBuffer(Dev("gpu0"), b).ok());
  EXPECT_EQ(w.broker->StateDigest(), empty);
}

class FailNthSweep : public ::testing::TestWithParam<Case> {
 protected:
  std::unique_ptr<World> Build(const Case& c) {
    auto w = std::make_unique<World>();
    BrokerOptions options;
    options.now = w->clock.Fn();
    w->broker = testing::MakeBroker(options, SmallTopology());
    if (w->broker == nullptr) return nullptr;
    c.setup(*w);
    if (::testing::Test::HasFailure()) return nullptr;
    w->broker->CheckInvariants();
    return w;
  }
};

TEST_P(FailNthSweep, EveryFailureUnwindsAndTheCallThenSucceeds) {
  const Case& c = GetParam();
  std::set<FailPoint> failed_points;
  for (uint64_t n = 1;; ++n) {
    ASSERT_LT(n, 1000u) << "the sweep does not end";
    std::unique_ptr<World> w = Build(c);
    ASSERT_NE(w, nullptr) << "setup failed";
    const std::string before = w->broker->StateDigest();
    absl::Status s;
    fail_nth::Result r;
    {
      fail_nth::ScopedArm arm(n);
      s = c.call(*w);
      r = fail_nth::Get();
    }
    w->broker->CheckInvariants();
    if (!r.failed) {
      // Fewer than n hits: the sweep is done, and this unarmed run succeeded.
      EXPECT_TRUE(s.ok()) << c.name << " with " << r.hits << " hits: " << s;
      break;
    }
    const std::string point(FailPointName(*r.failed));
    failed_points.insert(*r.failed);
    SCOPED_TRACE(absl::StrCat(c.name, ": hit ", n, " failed at ", point));
    if (s.ok()) continue;  // a fallback absorbed it (invariants checked above)
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("injected failure at ", point))) << s;
    if (c.reference) {
      // The ops that did not fail are done, as one-at-a-time calls do them.
      std::unique_ptr<World> ref = Build(c);
      ASSERT_NE(ref, nullptr);
      absl::Status ref_status;
      {
        fail_nth::ScopedArm arm(n);
        ref_status = c.reference(*ref);
      }
      EXPECT_EQ(s, ref_status);
      EXPECT_EQ(w->batch_failed, ref->batch_failed);
      EXPECT_EQ(w->broker->StateDigest(), ref->broker->StateDigest())
          << "the batch left a state one-at-a-time calls do not";
    } else {
      EXPECT_EQ(w->broker->StateDigest(), before) << "the failed call changed the state";
    }
    // The same call, unarmed, succeeds (a batch retries the ops that failed).
    if (!w->batch.empty()) {
      std::vector<DmaBatchOp> retry;
      for (size_t i = 0; i < w->batch.size(); ++i) {
        if (w->batch_failed[i]) retry.push_back(w->batch[i]);
      }
      w->batch = retry;
    }
    const absl::Status again = c.call(*w);
    EXPECT_TRUE(again.ok()) << again;
    w->broker->CheckInvariants();
    if (::testing::Test::HasFailure()) break;
  }
  std::vector<std::string> got, want;
  for (FailPoint p : failed_points) got.emplace_back(FailPointName(p));
  for (FailPoint p : c.points) want.emplace_back(FailPointName(p));
  EXPECT_EQ(absl::StrJoin(got, ","), absl::StrJoin(want, ",")) << "points the sweep failed";
}

INSTANTIATE_TEST_SUITE_P(Broker, FailNthSweep, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace iommu::core
