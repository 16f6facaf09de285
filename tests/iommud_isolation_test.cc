// SPDX-License-Identifier: Apache-2.0
// Integration: isolation against the real iommud, tried as an attacker
// would, in each authentication mode (--auth=none trusts the device the
// request names; --auth=token binds each bearer token, sent over TLS, and
// --auth=mtls each client certificate, to one device or the admin).
// Every finding of the isolation review has a test here that failed before
// the authorisation model (docs/security.md) was enforced.

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "tests/daemon_harness.h"
#include "tests/test_certs.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

enum class Mode { kNone, kToken, kMtls };

const char* const kIdentities[] = {"admin", "nic0", "nvme0", "gpu0", "sata0", "tbt0"};

class IsolationTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    std::vector<std::string> flags;
    if (GetParam() == Mode::kMtls) {
      flags = {"--auth=mtls", "--tls_cert=" + TestCerts() + "/server.crt",
               "--tls_key=" + TestCerts() + "/server.key", "--tls_ca=" + TestCerts() + "/ca.crt"};
    } else if (GetParam() == Mode::kToken) {
      const std::string tokens = TestCerts() + "/tokens";
      std::ofstream out(tokens);
      for (const char* who : kIdentities) out << Token(who) << " " << who << "\n";
      out.close();
      flags = {"--auth=token", "--token_file=" + tokens,
               "--tls_cert=" + TestCerts() + "/server.crt",
               "--tls_key=" + TestCerts() + "/server.key"};
    }
    ASSERT_TRUE(daemon_.Start(flags)) << daemon_.log();
  }

  // Stubs speaking as `who` ("admin" or a device name).
  Stubs& As(const std::string& who) {
    auto it = stubs_.find(who);
    if (it != stubs_.end()) return *it->second;
    std::shared_ptr<grpc::Channel> ch;
    if (GetParam() == Mode::kNone) {
      ch = Insecure(daemon_.tcp_target());
    } else {
      ch = TlsChannel(daemon_.tcp_target(), GetParam() == Mode::kMtls ? who : "");
    }
    return *stubs_.emplace(who, std::make_unique<Stubs>(ch)).first->second;
  }
  // A call context speaking as `who` (its bearer token in token mode).
  std::unique_ptr<grpc::ClientContext> C(const std::string& who, uint64_t session_id = 0) {
    return Ctx(GetParam() == Mode::kToken ? Token(who) : "", session_id);
  }
  static std::string Token(const std::string& who) { return "isolation-test-token-" + who; }
  // The `device` field a request of `who` carries (the admin acts as none).
  static std::string DeviceOf(const std::string& who) { return who == "admin" ? "" : who; }

  v1::Domain CreateDomain(const std::string& who, v1::DomainType type, grpc::Status* status,
                          std::vector<std::string> grants = {}) {
    v1::CreateDomainRequest r;
    r.set_device(DeviceOf(who));
    r.set_smmu("smmu0");
    r.set_type(type);
    for (auto& g : grants) r.add_granted_devices(g);
    v1::CreateDomainResponse out;
    *status = As(who).domains->CreateDomain(C(who).get(), r, &out);
    return out.domain();
  }
  grpc::Status Attach(const std::string& who, const std::string& device, uint64_t domain) {
    v1::AttachDeviceRequest r;
    r.set_device(DeviceOf(who));
    r.set_target_device(device);
    r.set_domain_id(domain);
    v1::AttachDeviceResponse out;
    return As(who).domains->AttachDevice(C(who).get(), r, &out);
  }
  v1::AllocResponse Alloc(const std::string& dev, uint64_t size = 64 * 1024) {
    v1::AllocRequest r;
    r.set_device(dev);
    r.set_size_bytes(size);
    r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    v1::AllocResponse out;
    EXPECT_TRUE(As(dev).dma->Alloc(C(dev).get(), r, &out).ok());
    return out;
  }
  grpc::Status Import(const std::string& dev, const std::string& token, v1::MapSgResponse* out,
                      v1::DmaDirection dir = v1::DMA_DIRECTION_TO_DEVICE) {
    v1::MapSgRequest r;
    r.set_device(dev);
    r.set_import_token(token);
    r.set_mode(v1::SG_MODE_CONTIGUOUS);
    r.set_direction(dir);
    return As(dev).dma->MapSg(C(dev).get(), r, out);
  }
  v1::TranslateResponse Translate(const std::string& dev, uint64_t iova, v1::AccessKind kind) {
    v1::TranslateRequest r;
    r.set_device(dev);
    r.set_iova(iova);
    r.set_length_bytes(4);
    r.set_access(kind);
    v1::TranslateResponse out;
    EXPECT_TRUE(As(dev).devices->Translate(C(dev).get(), r, &out).ok());
    return out;
  }

  DaemonProcess daemon_;
  std::map<std::string, std::unique_ptr<Stubs>> stubs_;
};

// Finding 1: a device (the untrusted one included) bypassed translation
// through an IDENTITY domain of its own.
TEST_P(IsolationTest, NoDeviceBypassesTranslation) {
  grpc::Status s;
  for (const char* dev : {"tbt0", "nic0"}) {
    for (auto type : {v1::DOMAIN_TYPE_IDENTITY, v1::DOMAIN_TYPE_BLOCKED}) {
      CreateDomain(dev, type, &s);
      EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << dev << " " << s.error_message();
      EXPECT_NE(s.error_message().find("type="), std::string::npos) << s.error_message();
    }
  }
  CreateDomain("tbt0", v1::DOMAIN_TYPE_DMA_FQ, &s);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED);
  const v1::Domain identity = CreateDomain("admin", v1::DOMAIN_TYPE_IDENTITY, &s);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Attach("tbt0", "tbt0", identity.domain_id()).error_code(), StatusCode::NOT_FOUND);
  const grpc::Status admin = Attach("admin", "tbt0", identity.domain_id());
  EXPECT_EQ(admin.error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(admin.error_message().find("untrusted device tbt0"), std::string::npos);
  // Whatever it tried, tbt0's accesses still translate (and fault).
  const v1::TranslateResponse t = Translate("tbt0", 0x8000'0000, v1::ACCESS_KIND_READ);
  EXPECT_TRUE(t.faulted());
}

// Finding 2: export tokens were counters and addresses a device could guess.
TEST_P(IsolationTest, ExportTokensCannotBeGuessedAndAreScopedAndRevocable) {
  const v1::AllocResponse a = Alloc("gpu0");
  v1::GetSgTableRequest g;
  g.set_device("gpu0");
  g.set_dma_addr(a.dma_addr());
  g.set_export_(true);
  g.add_export_importers("sata0");
  v1::GetSgTableResponse table;
  ASSERT_OK(As("gpu0").dma->GetSgTable(C("gpu0").get(), g, &table));
  ASSERT_EQ(table.export_token().size(), 37u) << table.export_token();
  v1::MapSgResponse out;
  // The attacker: the real token is not for it; guesses near it fail alike.
  EXPECT_EQ(Import("tbt0", table.export_token(), &out).error_code(), StatusCode::NOT_FOUND);
  for (int i = 0; i < 200; ++i) {
    std::string forged = table.export_token();
    forged[5 + i % 32] = "0123456789abcdef"[(i / 32 + 1 + (forged[5 + i % 32] & 15)) % 16];
    EXPECT_EQ(Import("tbt0", forged, &out).error_code(), StatusCode::NOT_FOUND);
  }
  // The named importer maps it read-only.
  EXPECT_EQ(
      Import("sata0", table.export_token(), &out, v1::DMA_DIRECTION_BIDIRECTIONAL).error_code(),
      StatusCode::PERMISSION_DENIED);
  ASSERT_OK(Import("sata0", table.export_token(), &out));
  EXPECT_FALSE(Translate("sata0", out.iova(), v1::ACCESS_KIND_READ).faulted());
  EXPECT_TRUE(Translate("sata0", out.iova(), v1::ACCESS_KIND_WRITE).faulted());
  // Only the exporter revokes; its Free is never blocked by the importer,
  // whose mapping is gone with it.
  v1::RevokeExportRequest rv;
  rv.set_device("sata0");
  rv.set_export_token(table.export_token());
  v1::RevokeExportResponse rv_out;
  EXPECT_EQ(As("sata0").dma->RevokeExport(C("sata0").get(), rv, &rv_out).error_code(),
            StatusCode::NOT_FOUND);
  v1::FreeRequest f;
  f.set_device("gpu0");
  f.set_dma_addr(a.dma_addr());
  v1::FreeResponse f_out;
  ASSERT_OK(As("gpu0").dma->Free(C("gpu0").get(), f, &f_out));
  EXPECT_TRUE(Translate("sata0", out.iova(), v1::ACCESS_KIND_READ).faulted());
  EXPECT_EQ(Import("sata0", table.export_token(), &out).error_code(), StatusCode::NOT_FOUND);
}

// Finding 3: admin-created domains were open to any device of the SMMU.
TEST_P(IsolationTest, AdminDomainsAdmitOnlyTheirGrants) {
  grpc::Status s;
  const v1::Domain d = CreateDomain("admin", v1::DOMAIN_TYPE_DMA, &s, {"sata0"});
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Attach("tbt0", "tbt0", d.domain_id()).error_code(), StatusCode::NOT_FOUND);
  v1::WalkDomainRequest w;
  w.set_device("tbt0");
  w.set_domain_id(d.domain_id());
  v1::WalkDomainResponse w_out;
  EXPECT_EQ(As("tbt0").domains->WalkDomain(C("tbt0").get(), w, &w_out).error_code(),
            StatusCode::NOT_FOUND);
  ASSERT_OK(Attach("sata0", "sata0", d.domain_id()));
  ASSERT_OK(Attach("admin", "gpu0", d.domain_id()));  // the admin's decision
}

// Finding 4: session ids of other devices, or of no session, were accepted.
TEST_P(IsolationTest, SessionsAreBoundToTheirDevice) {
  v1::OpenSessionRequest o;
  o.set_device("nic0");
  o.set_ttl_ms(30000);
  v1::OpenSessionResponse session;
  ASSERT_OK(As("nic0").sessions->OpenSession(C("nic0").get(), o, &session));
  for (uint64_t id : {session.session_id(), session.session_id() ^ 1, uint64_t{2}}) {
    v1::AllocBufferRequest r;
    r.set_device("gpu0");
    r.set_size_bytes(4096);
    r.set_placement(v1::PLACEMENT_SCATTERED);
    v1::AllocBufferResponse out;
    const grpc::Status st = As("gpu0").memory->AllocBuffer(C("gpu0", id).get(), r, &out);
    EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND) << id;
    EXPECT_NE(st.error_message().find("session_id="), std::string::npos) << st.error_message();
  }
  v1::ListDevicesRequest l;
  l.set_device("gpu0");
  v1::ListDevicesResponse devices;
  ASSERT_OK(As("gpu0").devices->ListDevices(C("gpu0").get(), l, &devices));
  ASSERT_EQ(devices.devices_size(), 1);
  EXPECT_EQ(devices.devices(0).buffers(), 0u);
}

// Findings 5 and 6: unknown devices and other devices' objects answered
// differently from missing ones; devices saw global fault totals.
TEST_P(IsolationTest, NotYoursAnswersAsDoesNotExist) {
  v1::AllocBufferRequest r;
  r.set_device("nic0");
  r.set_size_bytes(4096);
  r.set_placement(v1::PLACEMENT_SCATTERED);
  v1::AllocBufferResponse nic_buf;
  ASSERT_OK(As("nic0").memory->AllocBuffer(C("nic0").get(), r, &nic_buf));
  auto map = [&](uint64_t buffer_id) {
    v1::MapRequest m;
    m.set_device("gpu0");
    *m.mutable_mem() = BufferRef(buffer_id, 0, 4096);
    m.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    v1::MapResponse out;
    return As("gpu0").dma->Map(C("gpu0").get(), m, &out);
  };
  const grpc::Status foreign = map(nic_buf.buffer().buffer_id());
  const grpc::Status missing = map(nic_buf.buffer().buffer_id() + 1000);
  EXPECT_EQ(foreign.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(missing.error_code(), StatusCode::NOT_FOUND);
  auto tail = [](const std::string& m) { return m.substr(m.find(':')); };
  EXPECT_EQ(tail(foreign.error_message()), tail(missing.error_message()));
  // tbt0 faults; gpu0's stats count none of them and show no SMMU counters.
  for (int i = 0; i < 3; ++i) Translate("tbt0", 0x1000, v1::ACCESS_KIND_READ);
  v1::GetStatsRequest sr;
  sr.set_device("gpu0");
  v1::GetStatsResponse stats;
  ASSERT_OK(As("gpu0").stats->GetStats(C("gpu0").get(), sr, &stats));
  EXPECT_EQ(stats.smmus_size(), 0);
  EXPECT_EQ(stats.faults().recorded(), 0u);
  sr.set_device("");
  ASSERT_OK(As("admin").stats->GetStats(C("admin").get(), sr, &stats));
  EXPECT_GE(stats.faults().recorded(), 3u);
  if (GetParam() == Mode::kNone) {
    // A device unknown to the topology: NOT_FOUND everywhere, at once.
    v1::ListDomainsRequest ld;
    ld.set_device("ghost");
    v1::ListDomainsResponse ld_out;
    EXPECT_EQ(As("admin").domains->ListDomains(C("admin").get(), ld, &ld_out).error_code(),
              StatusCode::NOT_FOUND);
    v1::ListDevicesRequest lv;
    lv.set_device("ghost");
    v1::ListDevicesResponse lv_out;
    EXPECT_EQ(As("admin").devices->ListDevices(C("admin").get(), lv, &lv_out).error_code(),
              StatusCode::NOT_FOUND);
    v1::WatchFaultsRequest wf;
    wf.set_device("ghost");
    auto ctx = C("admin");
    auto reader = As("admin").devices->WatchFaults(ctx.get(), wf);
    v1::FaultEvent ev;
    EXPECT_FALSE(reader->Read(&ev));
    EXPECT_EQ(reader->Finish().error_code(), StatusCode::NOT_FOUND);
  }
}

// Finding 7: one device could take every page of the pools.
TEST_P(IsolationTest, OneDeviceCannotTakeThePools) {
  v1::AllocBufferRequest r;
  r.set_device("gpu0");
  r.set_size_bytes(uint64_t{8} << 30);
  r.set_placement(v1::PLACEMENT_SCATTERED);
  v1::AllocBufferResponse out;
  const grpc::Status s = As("gpu0").memory->AllocBuffer(C("gpu0").get(), r, &out);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("quota"), std::string::npos) << s.error_message();
}

INSTANTIATE_TEST_SUITE_P(AuthModes, IsolationTest,
                         ::testing::Values(Mode::kNone, Mode::kToken, Mode::kMtls),
                         [](const auto& info) {
                           switch (info.param) {
                             case Mode::kNone:
                               return "None";
                             case Mode::kToken:
                               return "Token";
                             case Mode::kMtls:
                               return "Mtls";
                           }
                           return "?";
                         });

// The quota flags: --quota_domains and --quota_sessions bound every device.
TEST(IsolationFlagsTest, QuotaFlagsBoundDomainsAndSessions) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--quota_domains=1", "--quota_sessions=1"})) << daemon.log();
  Stubs s(Insecure(daemon.tcp_target()));
  v1::CreateDomainRequest d;
  d.set_device("nic0");
  d.set_smmu("smmu0");
  d.set_type(v1::DOMAIN_TYPE_DMA);
  v1::CreateDomainResponse d_out;
  ASSERT_OK(s.domains->CreateDomain(Ctx().get(), d, &d_out));
  const grpc::Status second = s.domains->CreateDomain(Ctx().get(), d, &d_out);
  EXPECT_EQ(second.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(second.error_message().find("domain quota of 1"), std::string::npos);
  v1::OpenSessionRequest o;
  o.set_device("nic0");
  v1::OpenSessionResponse o_out;
  ASSERT_OK(s.sessions->OpenSession(Ctx().get(), o, &o_out));
  const grpc::Status again = s.sessions->OpenSession(Ctx().get(), o, &o_out);
  EXPECT_EQ(again.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(again.error_message().find("session quota of 1"), std::string::npos);
  // Another device keeps its own.
  o.set_device("gpu0");
  EXPECT_TRUE(s.sessions->OpenSession(Ctx().get(), o, &o_out).ok());
}

}  // namespace
}  // namespace iommu::testing
