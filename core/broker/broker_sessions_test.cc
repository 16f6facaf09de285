// SPDX-License-Identifier: Apache-2.0
// Session release (close and lease expiry): exactly what the sessions owned
// is released, nothing else is touched, and the work is what they owned, not
// what lives elsewhere (docs/design.md#sessions).

#include <algorithm>
#include <string>
#include <vector>

#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using namespace ::iommu::core::testing;  // NOLINT

constexpr absl::Duration kTtl = absl::Seconds(10);

// What one session made, to check after its release.
struct Owned {
  uint64_t session_id = 0;
  std::vector<uint64_t> buffers;                     // AllocBuffer and Alloc buffers
  std::vector<std::pair<std::string, Iova>> mapped;  // (device, dma_addr)
  std::vector<uint64_t> domains;
};

class SessionReleaseTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(); }
  void TearDown() override {
    if (broker_) broker_->CheckInvariants();
  }
  void Make() {
    BrokerOptions opts;
    opts.now = clock_.Fn();
    opts.default_quotas.max_sessions = 4096;
    broker_ = MakeBroker(opts);
  }

  // `n` mappings of one page of a buffer of `device`, made without a
  // session (what lives elsewhere while sessions expire).
  void MapElsewhere(const std::string& device, size_t n) {
    const Caller c = Caller::Device(device);
    const BufferInfo b = Value(broker_->AllocBuffer(c, device, 4 * KiB, Placement::kContiguous));
    std::vector<DmaBatchOp> ops(
        n, MapRequest{.mem = {.buffer_id = b.buffer_id, .length_bytes = 4 * KiB}});
    std::vector<DmaBatchResult> results(n);
    broker_->MapUnmapBatch(c, device, ops, absl::MakeSpan(results));
    for (const DmaBatchResult& r : results) ASSERT_TRUE(r.status.ok()) << r.status;
  }

  // A session of `device` that maps a page (Map), a two-segment MapSg, an
  // Alloc, and keeps a buffer it never maps; with `domain`, also a domain
  // made under it that the device attaches to and maps a page in.
  Owned SessionWithEverything(const std::string& device, bool domain) {
    Owned o;
    o.session_id = Value(broker_->OpenSession(Caller::Device(device), kTtl));
    const Caller c = Caller::Device(device, o.session_id);
    auto page = [&] {
      const BufferInfo b = Value(broker_->AllocBuffer(c, device, 8 * KiB, Placement::kScattered));
      o.buffers.push_back(b.buffer_id);
      const MapResult m =
          Value(broker_->Map(c, device, {.mem = {.buffer_id = b.buffer_id, .length_bytes = 4096}}));
      o.mapped.push_back({device, m.dma_addr});
    };
    page();
    const BufferInfo sg = Value(broker_->AllocBuffer(c, device, 8 * KiB, Placement::kScattered));
    o.buffers.push_back(sg.buffer_id);
    const MapSgResult s = Value(broker_->MapSg(
        c, device,
        {.segments = {{.buffer_id = sg.buffer_id, .length_bytes = 4096},
                      {.buffer_id = sg.buffer_id, .offset_bytes = 4096, .length_bytes = 4096}}}));
    o.mapped.push_back({device, s.segments[0].dma_addr});
    const AllocResult a = Value(broker_->Alloc(c, device, {.size_bytes = 16 * KiB}));
    o.buffers.push_back(a.buffer_id);
    o.mapped.push_back({device, a.dma_addr});
    o.buffers.push_back(
        Value(broker_->AllocBuffer(c, device, 4 * KiB, Placement::kContiguous)).buffer_id);
    if (domain) {
      const DomainInfo d = Value(broker_->CreateDomain(c, {.smmu = "smmu0"}));
      o.domains.push_back(d.domain_id);
      EXPECT_TRUE(broker_->AttachDevice(c, device, d.domain_id).ok());
      page();
    }
    return o;
  }

  bool Translates(const std::string& device, Iova iova) {
    auto r =
        broker_->Translate(Caller::Device(device),
                           {.device = device, .iova = iova, .length_bytes = 4, .access = Read()});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && !r->faulted;
  }

  // Everything `o` made is gone.
  void ExpectReleased(const Owned& o) {
    for (const uint64_t b : o.buffers) {
      EXPECT_EQ(broker_->GetBuffer(Caller::Admin(), b).status().code(), absl::StatusCode::kNotFound)
          << "buffer " << b;
    }
    for (const auto& [device, iova] : o.mapped) {
      EXPECT_FALSE(Translates(device, iova)) << device << " " << iova.value();
    }
    for (const uint64_t d : o.domains) {
      EXPECT_EQ(broker_->GetDomain(Caller::Admin(), d).status().code(),
                absl::StatusCode::kNotFound);
    }
  }

  // The leaves of every domain and the usage of every device: what a release
  // of other sessions must leave as it found.
  std::string Elsewhere(const std::vector<std::string>& devices) {
    std::string out;
    for (const DeviceInfo& d : Value(broker_->ListDevices(Caller::Admin()))) {
      if (std::find(devices.begin(), devices.end(), d.config.name) == devices.end()) continue;
      out += d.config.name + " domain=" + std::to_string(d.current_domain_id) +
             " mappings=" + std::to_string(d.mappings) +
             " mapped=" + std::to_string(d.mapped_bytes) + " buffers=" + std::to_string(d.buffers) +
             "\n";
      for (const PgtableMapping& m :
           Value(broker_->WalkDomain(Caller::Admin(), d.current_domain_id))) {
        out += std::to_string(m.iova.value()) + "->" + std::to_string(m.phys.value()) + "+" +
               std::to_string(m.size_bytes) + "\n";
      }
    }
    return out;
  }

  FakeClock clock_;
  std::unique_ptr<Broker> broker_;
};

// A storm of one device's sessions expiring (each with a page Map, a MapSg,
// an Alloc and an unmapped buffer; some with a domain of their own), an
// admin session with mappings in two devices' domains, and a session that
// lives on: the expired sessions' mappings, buffers and domains are gone,
// the survivor's and the other device's are exactly as they were.
TEST_F(SessionReleaseTest, ExpiryReleasesExactlyWhatTheSessionsOwned) {
  ASSERT_NO_FATAL_FAILURE(MapElsewhere("gpu0", 2000));
  const std::string gpu0_before = Elsewhere({"gpu0"});
  std::vector<Owned> expiring;
  for (int i = 0; i < 24; ++i) expiring.push_back(SessionWithEverything("nic0", i % 8 == 0));
  // The admin's session maps for two devices.
  Owned admin;
  admin.session_id = Value(broker_->OpenSession(Caller::Admin(), kTtl));
  const Caller a = {.device = "", .admin = true, .session_id = admin.session_id};
  for (const std::string device : {"nic0", "gpu0"}) {
    const BufferInfo b = Value(broker_->AllocBuffer(a, device, 4 * KiB, Placement::kContiguous));
    admin.buffers.push_back(b.buffer_id);
    const MapResult m =
        Value(broker_->Map(a, device, {.mem = {.buffer_id = b.buffer_id, .length_bytes = 4096}}));
    admin.mapped.push_back({device, m.dma_addr});
  }
  clock_.now += kTtl / 2;
  const Owned survivor = SessionWithEverything("nvme0", false);
  // nic0 back in its default domain (the attached session domains are
  // expiring), so the walks compare the domains that stay.
  ASSERT_TRUE(broker_->DetachDevice(Caller::Device("nic0"), "nic0").ok());
  const std::string nvme0_before = Elsewhere({"nvme0"});
  broker_->CheckInvariants();

  clock_.now += kTtl / 2;
  EXPECT_EQ(broker_->Tick(), 25);
  broker_->CheckInvariants();
  for (const Owned& o : expiring) ExpectReleased(o);
  ExpectReleased(admin);
  // gpu0 lost the admin session's page and buffer, and nothing else.
  EXPECT_EQ(Elsewhere({"gpu0"}), gpu0_before);
  EXPECT_EQ(Elsewhere({"nvme0"}), nvme0_before);
  const DeviceInfo nic0 = Value(broker_->ListDevices(Caller::Device("nic0")))[0];
  EXPECT_EQ(nic0.mappings, 0u);
  EXPECT_EQ(nic0.buffers, 0u);
  EXPECT_EQ(nic0.current_domain_id, nic0.default_domain_id);
  for (const auto& [device, iova] : survivor.mapped) EXPECT_TRUE(Translates(device, iova));
  for (const uint64_t b : survivor.buffers) {
    EXPECT_TRUE(broker_->GetBuffer(Caller::Admin(), b).ok()) << b;
  }
  // Its lease still runs out in its turn.
  clock_.now += kTtl;
  EXPECT_EQ(broker_->Tick(), 1);
  ExpectReleased(survivor);
}

// The work of a release is what the sessions owned: the same with 0 or
// 20,000 mappings living in another device's domain, and a few records per
// record owned.
TEST_F(SessionReleaseTest, ExpiryWorkIsWhatTheSessionsOwnedNotWhatLivesElsewhere) {
  constexpr int kSessions = 32;
  uint64_t work[2] = {};
  for (int round = 0; round < 2; ++round) {
    if (round > 0) {
      broker_->CheckInvariants();
      clock_ = FakeClock();
      Make();
    }
    if (round == 1) {
      ASSERT_NO_FATAL_FAILURE(MapElsewhere("gpu0", 20000));
    }
    for (int i = 0; i < kSessions; ++i) SessionWithEverything("nic0", false);
    clock_.now += kTtl;
    const uint64_t before = broker_->SessionReleaseWork();
    EXPECT_EQ(broker_->Tick(), kSessions);
    work[round] = broker_->SessionReleaseWork() - before;
  }
  EXPECT_EQ(work[0], work[1]);
  // Per session: 3 mappings and 3 buffers (the Alloc's goes with its
  // mapping); plus nic0's default domain, visited once for all of them.
  EXPECT_EQ(work[1], uint64_t{kSessions} * 6 + 1);
}

// A session owning many more mappings than one hold of a domain's lock
// releases (they go in chunks) still releases every one of them.
TEST_F(SessionReleaseTest, CloseReleasesASessionOwningManyMappingsInChunks) {
  ASSERT_NO_FATAL_FAILURE(MapElsewhere("nic0", 100));
  const std::string before = Elsewhere({"nic0"});
  const uint64_t sid = Value(broker_->OpenSession(Caller::Device("nic0"), kTtl));
  const Caller c = Caller::Device("nic0", sid);
  const BufferInfo b = Value(broker_->AllocBuffer(c, "nic0", 4 * KiB, Placement::kContiguous));
  constexpr size_t kMappings = 1500;  // several chunks
  std::vector<DmaBatchOp> ops(kMappings,
                              MapRequest{.mem = {.buffer_id = b.buffer_id, .length_bytes = 4096}});
  std::vector<DmaBatchResult> results(kMappings);
  broker_->MapUnmapBatch(c, "nic0", ops, absl::MakeSpan(results));
  for (const DmaBatchResult& r : results) ASSERT_TRUE(r.status.ok()) << r.status;
  broker_->CheckInvariants();
  const uint64_t work = broker_->SessionReleaseWork();
  ASSERT_TRUE(broker_->CloseSession(Caller::Device("nic0"), sid).ok());
  EXPECT_EQ(broker_->SessionReleaseWork() - work, kMappings + 1 + 1);  // + domain, buffer
  for (const DmaBatchResult& r : results) EXPECT_FALSE(Translates("nic0", r.map.dma_addr));
  EXPECT_EQ(broker_->GetBuffer(Caller::Admin(), b.buffer_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Elsewhere({"nic0"}), before);
}

// A session's mapping unmapped by its device before the release, its IOVA
// then taken by a mapping made without the session: the release leaves that
// mapping alone.
TEST_F(SessionReleaseTest, ReleaseLeavesAMappingThatReusedAnUnmappedSessionIova) {
  const uint64_t sid = Value(broker_->OpenSession(Caller::Device("nic0"), kTtl));
  const Caller in_session = Caller::Device("nic0", sid);
  const Caller plain = Caller::Device("nic0");
  const BufferInfo b = Value(broker_->AllocBuffer(plain, "nic0", 4 * KiB, Placement::kContiguous));
  const MemRef page{.buffer_id = b.buffer_id, .length_bytes = 4096};
  const MapResult first = Value(broker_->Map(in_session, "nic0", {.mem = page}));
  const MapResult kept_in_session = Value(broker_->Map(in_session, "nic0", {.mem = page}));
  ASSERT_TRUE(broker_->Unmap(plain, "nic0", {first.dma_addr}).ok());
  const MapResult reused = Value(broker_->Map(plain, "nic0", {.mem = page}));
  ASSERT_EQ(reused.dma_addr, first.dma_addr);
  ASSERT_TRUE(broker_->CloseSession(plain, sid).ok());
  EXPECT_TRUE(Translates("nic0", reused.dma_addr));
  EXPECT_FALSE(Translates("nic0", kept_in_session.dma_addr));
  // The buffer was made without the session: it stays, mapped once.
  EXPECT_EQ(Value(broker_->GetBuffer(plain, b.buffer_id)).map_count, 1u);
}

// A device's sessions are bounded by its quota, refused beyond with
// RESOURCE_EXHAUSTED naming the quota, its value and the flag; a closed
// session gives its place back.
TEST_F(SessionReleaseTest, SessionsPerDeviceAreBoundedByTheQuota) {
  BrokerOptions opts;
  opts.now = clock_.Fn();
  opts.default_quotas.max_sessions = 2;
  broker_ = MakeBroker(opts);
  const Caller nic = Caller::Device("nic0");
  const uint64_t first = Value(broker_->OpenSession(nic, kTtl));
  Value(broker_->OpenSession(nic, kTtl));
  const absl::StatusOr<uint64_t> third = broker_->OpenSession(nic, kTtl);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(third.status().message(),
            "device=\"nic0\": session quota of 2 sessions reached (--quota_sessions, or the "
            "device's quotas in the topology); close one first");
  EXPECT_TRUE(broker_->OpenSession(Caller::Device("gpu0"), kTtl).ok());
  ASSERT_TRUE(broker_->CloseSession(nic, first).ok());
  EXPECT_TRUE(broker_->OpenSession(nic, kTtl).ok());
}

}  // namespace
}  // namespace iommu::core
