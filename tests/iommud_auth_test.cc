// SPDX-License-Identifier: Apache-2.0
// Integration: identity and authorisation against the real iommud — bearer
// tokens over TLS and mTLS (certificates generated at test time with openssl
// by tests/gen_certs.sh) over TCP and the Unix socket, device isolation,
// admin-only calls, quotas.

#include <gtest/gtest.h>

#include "tests/daemon_harness.h"
#include "tests/test_certs.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

constexpr char kNic0Token[] = "tok-nic0-7d1e5a90c3";
constexpr char kNvme0Token[] = "tok-nvme0-4b28f6e1a7";
constexpr char kAdminToken[] = "tok-admin-9c3f0b72e8";

v1::AllocBufferRequest Buffer(const std::string& device, uint64_t size_bytes = 4096) {
  v1::AllocBufferRequest r;
  r.set_device(device);
  r.set_size_bytes(size_bytes);
  r.set_placement(v1::PLACEMENT_SCATTERED);
  return r;
}

class TokenAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = MakeTempDir();
    const std::string tokens = dir + "/tokens";
    std::ofstream(tokens) << "# test tokens\n"
                          << kNic0Token << " nic0\n"
                          << kNvme0Token << " nvme0\n"
                          << kAdminToken << " admin\n";
    ASSERT_TRUE(daemon_.Start({"--auth=token", "--token_file=" + tokens,
                               "--tls_cert=" + TestCerts() + "/server.crt",
                               "--tls_key=" + TestCerts() + "/server.key", "--quota_buffers=3"}))
        << daemon_.log();
    stubs_ = std::make_unique<Stubs>(TlsChannel(daemon_.tcp_target()));
  }
  DaemonProcess daemon_;
  std::unique_ptr<Stubs> stubs_;
};

TEST_F(TokenAuthTest, MissingOrBadTokenIsUnauthenticated) {
  v1::AllocBufferResponse out;
  EXPECT_CODE(stubs_->memory->AllocBuffer(Ctx().get(), Buffer("nic0"), &out), UNAUTHENTICATED);
  EXPECT_CODE(stubs_->memory->AllocBuffer(Ctx("tok-wrong-0123456789").get(), Buffer("nic0"), &out),
              UNAUTHENTICATED);
  grpc::ClientContext basic;
  basic.AddMetadata("authorization", "Basic dG9rLW5pYzA=");
  EXPECT_CODE(stubs_->memory->AllocBuffer(&basic, Buffer("nic0"), &out), UNAUTHENTICATED);
  // Streams too.
  grpc::ClientContext ctx;
  auto batch = stubs_->dma->Batch(&ctx);
  v1::BatchResponse resp;
  EXPECT_FALSE(batch->Read(&resp));
  EXPECT_CODE(batch->Finish(), UNAUTHENTICATED);
}

// Device and admin tokens, over TLS on TCP and on the Unix socket alike.
TEST_F(TokenAuthTest, TokensWorkOverTlsOnTcpAndUnixSocket) {
  for (const std::string& target : {daemon_.tcp_target(), daemon_.unix_target()}) {
    SCOPED_TRACE(target);
    Stubs s(TlsChannel(target));
    v1::AllocBufferResponse buffer;
    ASSERT_OK(s.memory->AllocBuffer(Ctx(kNic0Token).get(), Buffer(""), &buffer));
    EXPECT_EQ(buffer.buffer().device(), "nic0");
    v1::ListDevicesResponse devices;
    ASSERT_OK(s.devices->ListDevices(Ctx(kNic0Token).get(), {}, &devices));
    ASSERT_EQ(devices.devices_size(), 1);
    ASSERT_OK(s.devices->ListDevices(Ctx(kAdminToken).get(), {}, &devices));
    EXPECT_GT(devices.devices_size(), 1);
    ASSERT_OK(s.memory->AllocBuffer(Ctx(kAdminToken).get(), Buffer("gpu0"), &buffer));
    EXPECT_EQ(buffer.buffer().device(), "gpu0");
  }
}

// The token never crosses a listener in clear: a plaintext client gets no
// connection at all.
TEST_F(TokenAuthTest, PlaintextClientIsUnavailable) {
  for (const std::string& target : {daemon_.tcp_target(), daemon_.unix_target()}) {
    SCOPED_TRACE(target);
    Stubs plain(Insecure(target));
    v1::ListIommusResponse out;
    EXPECT_CODE(plain.devices->ListIommus(Ctx(kAdminToken).get(), {}, &out), UNAVAILABLE);
  }
}

TEST_F(TokenAuthTest, DeviceActsOnlyAsItself) {
  Stubs& s = *stubs_;
  v1::AllocBufferResponse buffer;
  ASSERT_OK(s.memory->AllocBuffer(Ctx(kNic0Token).get(), Buffer("nic0", 16384), &buffer));
  // The empty device means "myself" for a device credential.
  v1::AllocBufferResponse implicit;
  ASSERT_OK(s.memory->AllocBuffer(Ctx(kNic0Token).get(), Buffer(""), &implicit));
  EXPECT_EQ(implicit.buffer().device(), "nic0");
  // Acting as another device.
  v1::AllocBufferResponse out;
  EXPECT_CODE(s.memory->AllocBuffer(Ctx(kNic0Token).get(), Buffer("nvme0"), &out),
              PERMISSION_DENIED);
  // Mapping memory it does not own.
  v1::MapRequest map;
  map.set_device("nvme0");
  *map.mutable_mem() = BufferRef(buffer.buffer().buffer_id(), 0, 4096);
  map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapResponse mapped;
  // Another device's buffer answers as a missing one (no existence oracle).
  EXPECT_CODE(s.dma->Map(Ctx(kNvme0Token).get(), map, &mapped), NOT_FOUND);
  // Raw physical memory is admin-only.
  v1::MapRequest raw = map;
  raw.set_device("nic0");
  raw.mutable_mem()->set_phys_addr(0x80000000);
  EXPECT_CODE(s.dma->Map(Ctx(kNic0Token).get(), raw, &mapped), PERMISSION_DENIED);
  ASSERT_OK(s.dma->Map(Ctx(kAdminToken).get(), raw, &mapped));
  // Unmapping another's mapping: it does not exist for them.
  map.set_device("nic0");
  ASSERT_OK(s.dma->Map(Ctx(kNic0Token).get(), map, &mapped));
  v1::UnmapRequest unmap;
  unmap.set_device("nvme0");
  unmap.set_dma_addr(mapped.dma_addr());
  v1::UnmapResponse unmapped;
  EXPECT_FALSE(s.dma->Unmap(Ctx(kNvme0Token).get(), unmap, &unmapped).ok());
  unmap.set_device("nic0");
  EXPECT_CODE(s.dma->Unmap(Ctx(kNvme0Token).get(), unmap, &unmapped), PERMISSION_DENIED);
  ASSERT_OK(s.dma->Unmap(Ctx(kNic0Token).get(), unmap, &unmapped));
  // Translate by stream id is admin-only.
  v1::TranslateRequest tr;
  tr.set_smmu("smmu0");
  tr.set_stream_id(0x100);
  tr.set_iova(0x1000);
  tr.set_length_bytes(4);
  tr.set_access(v1::ACCESS_KIND_READ);
  v1::TranslateResponse translated;
  EXPECT_CODE(s.devices->Translate(Ctx(kNic0Token).get(), tr, &translated), PERMISSION_DENIED);
  ASSERT_OK(s.devices->Translate(Ctx(kAdminToken).get(), tr, &translated));
  // A device sees only itself.
  v1::ListDevicesResponse devices;
  ASSERT_OK(s.devices->ListDevices(Ctx(kNic0Token).get(), {}, &devices));
  ASSERT_EQ(devices.devices_size(), 1);
  EXPECT_EQ(devices.devices(0).config().name(), "nic0");
  ASSERT_OK(s.devices->ListDevices(Ctx(kAdminToken).get(), {}, &devices));
  EXPECT_GT(devices.devices_size(), 1);
  // Batch ops are checked one by one.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kNic0Token);
  auto batch = s.dma->Batch(&ctx);
  v1::BatchRequest req;
  v1::UnmapRequest* op = req.add_ops()->mutable_unmap();
  op->set_device("nvme0");
  op->set_dma_addr(0x1000);
  ASSERT_TRUE(batch->Write(req));
  v1::BatchResponse resp;
  ASSERT_TRUE(batch->Read(&resp));
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_EQ(resp.results(0).code(), int(StatusCode::PERMISSION_DENIED));
  batch->WritesDone();
  ASSERT_OK(batch->Finish());
}

// The daemon applies consecutive Map/Unmap ops of one device as a run; every
// op still gets the code and message the unary call gives it.
TEST_F(TokenAuthTest, BatchRunsGiveEachOpItsUnaryResult) {
  Stubs& s = *stubs_;
  v1::AllocBufferResponse buffer;
  ASSERT_OK(s.memory->AllocBuffer(Ctx(kNic0Token).get(), Buffer("nic0", 16384), &buffer));
  auto map_op = [&](v1::BatchRequest* req, const std::string& device, uint64_t page) {
    v1::MapRequest* m = req->add_ops()->mutable_map();
    m->set_device(device);
    if (page != ~uint64_t{0})
      *m->mutable_mem() = BufferRef(buffer.buffer().buffer_id(), page * 4096, 4096);
    m->set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    return *m;
  };
  auto unmap_op = [](v1::BatchRequest* req, const std::string& device, uint64_t dma_addr) {
    v1::UnmapRequest* u = req->add_ops()->mutable_unmap();
    u->set_device(device);
    u->set_dma_addr(dma_addr);
    return *u;
  };
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kNic0Token);
  auto batch = s.dma->Batch(&ctx);
  v1::BatchRequest req;
  map_op(&req, "", 0);                                               // 0: myself
  map_op(&req, "nic0", 1);                                           // 1: a new run
  const v1::MapRequest no_mem = map_op(&req, "nic0", ~uint64_t{0});  // 2: INVALID_ARGUMENT
  const v1::UnmapRequest other = unmap_op(&req, "nvme0", 0x1000);    // 3: PERMISSION_DENIED
  map_op(&req, "nvme0", 2);                                          // 4: PERMISSION_DENIED
  map_op(&req, "nic0", 3);                                           // 5
  ASSERT_TRUE(batch->Write(req));
  v1::BatchResponse resp;
  ASSERT_TRUE(batch->Read(&resp));
  ASSERT_EQ(resp.results_size(), 6);
  for (int i : {0, 1, 5}) EXPECT_EQ(resp.results(i).code(), 0) << i << resp.results(i).message();
  const uint64_t a0 = resp.results(0).map().dma_addr(), a1 = resp.results(1).map().dma_addr();
  EXPECT_NE(a0, a1);
  v1::MapResponse mapped;
  const grpc::Status no_mem_unary = s.dma->Map(Ctx(kNic0Token).get(), no_mem, &mapped);
  EXPECT_EQ(resp.results(2).code(), int(no_mem_unary.error_code()));
  EXPECT_EQ(resp.results(2).message(), no_mem_unary.error_message());
  v1::UnmapResponse unmapped;
  const grpc::Status other_unary = s.dma->Unmap(Ctx(kNic0Token).get(), other, &unmapped);
  EXPECT_EQ(resp.results(3).code(), int(StatusCode::PERMISSION_DENIED));
  EXPECT_EQ(resp.results(3).message(), other_unary.error_message());
  EXPECT_EQ(resp.results(4).code(), int(StatusCode::PERMISSION_DENIED));

  // Unmaps in one run (one of them twice), a translate between runs: the
  // unmapped page faults (strictly invalidated), the repeated unmap is
  // NOT_FOUND with the unary message.
  v1::BatchRequest second;
  unmap_op(&second, "nic0", a0);
  unmap_op(&second, "nic0", a1);
  const v1::UnmapRequest again = unmap_op(&second, "nic0", a1);
  v1::TranslateOp* t = second.add_ops()->mutable_translate();
  t->set_device("nic0");
  t->set_iova(a0);
  t->set_length_bytes(4);
  t->set_access(v1::ACCESS_KIND_READ);
  unmap_op(&second, "", resp.results(5).map().dma_addr());
  ASSERT_TRUE(batch->Write(second));
  ASSERT_TRUE(batch->Read(&resp));
  ASSERT_EQ(resp.results_size(), 5);
  for (int i : {0, 1, 3, 4}) EXPECT_EQ(resp.results(i).code(), 0) << i << resp.results(i).message();
  EXPECT_TRUE(resp.results(3).translate().faulted());
  const grpc::Status again_unary = s.dma->Unmap(Ctx(kNic0Token).get(), again, &unmapped);
  EXPECT_EQ(again_unary.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(resp.results(2).code(), int(StatusCode::NOT_FOUND));
  EXPECT_EQ(resp.results(2).message(), again_unary.error_message());

  // The message's device stands for every op that names none; an op naming
  // one acts as that.
  v1::BatchRequest third;
  third.set_device("nvme0");
  map_op(&third, "", 0);      // as nvme0: PERMISSION_DENIED
  map_op(&third, "nic0", 0);  // as nic0
  ASSERT_TRUE(batch->Write(third));
  ASSERT_TRUE(batch->Read(&resp));
  ASSERT_EQ(resp.results_size(), 2);
  EXPECT_EQ(resp.results(0).code(), int(StatusCode::PERMISSION_DENIED));
  EXPECT_NE(resp.results(0).message().find("nvme0"), std::string::npos)
      << resp.results(0).message();
  EXPECT_EQ(resp.results(1).code(), 0) << resp.results(1).message();
  v1::BatchRequest fourth;
  fourth.set_device("nic0");
  unmap_op(&fourth, "", resp.results(1).map().dma_addr());
  v1::TranslateOp* t2 = fourth.add_ops()->mutable_translate();  // inherits too
  t2->set_iova(resp.results(1).map().dma_addr());
  t2->set_length_bytes(4);
  t2->set_access(v1::ACCESS_KIND_READ);
  ASSERT_TRUE(batch->Write(fourth));
  ASSERT_TRUE(batch->Read(&resp));
  ASSERT_EQ(resp.results_size(), 2);
  EXPECT_EQ(resp.results(0).code(), 0) << resp.results(0).message();
  EXPECT_EQ(resp.results(1).code(), 0) << resp.results(1).message();
  EXPECT_TRUE(resp.results(1).translate().faulted());
  batch->WritesDone();
  ASSERT_OK(batch->Finish());
}

TEST_F(TokenAuthTest, QuotaIsResourceExhausted) {
  v1::AllocBufferResponse out;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(stubs_->memory->AllocBuffer(Ctx(kNvme0Token).get(), Buffer("nvme0"), &out));
  }
  const grpc::Status s = stubs_->memory->AllocBuffer(Ctx(kNvme0Token).get(), Buffer("nvme0"), &out);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // Another device's quota is its own.
  ASSERT_OK(stubs_->memory->AllocBuffer(Ctx(kNic0Token).get(), Buffer("nic0"), &out));
}

// --- mTLS ---------------------------------------------------------------------------

class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string& d = TestCerts();
    ASSERT_TRUE(daemon_.Start({"--auth=mtls", "--tls_cert=" + d + "/server.crt",
                               "--tls_key=" + d + "/server.key", "--tls_ca=" + d + "/ca.crt"}))
        << daemon_.log();
  }

  // A channel presenting `client` ("" for no certificate).
  std::unique_ptr<Stubs> Connect(const std::string& target, const std::string& client) {
    return std::make_unique<Stubs>(TlsChannel(target, client));
  }

  void ExpectIdentities(const std::string& target) {
    v1::AllocBufferResponse out;
    auto nic0 = Connect(target, "nic0");
    ASSERT_OK(nic0->memory->AllocBuffer(Ctx().get(), Buffer(""), &out));
    EXPECT_EQ(out.buffer().device(), "nic0");
    EXPECT_CODE(nic0->memory->AllocBuffer(Ctx().get(), Buffer("nvme0"), &out), PERMISSION_DENIED);
    auto nvme0 = Connect(target, "nvme0");  // a DNS SAN
    ASSERT_OK(nvme0->memory->AllocBuffer(Ctx().get(), Buffer("nvme0"), &out));
    auto admin = Connect(target, "admin");
    v1::ListDevicesResponse devices;
    ASSERT_OK(admin->devices->ListDevices(Ctx().get(), {}, &devices));
    EXPECT_GT(devices.devices_size(), 1);
    ASSERT_OK(admin->memory->AllocBuffer(Ctx().get(), Buffer("gpu0"), &out));
    EXPECT_EQ(out.buffer().device(), "gpu0");
    auto anonymous = Connect(target, "");
    EXPECT_CODE(anonymous->memory->AllocBuffer(Ctx().get(), Buffer("nic0"), &out), UNAUTHENTICATED);
    auto stranger = Connect(target, "stranger");
    EXPECT_CODE(stranger->memory->AllocBuffer(Ctx().get(), Buffer("nic0"), &out), UNAUTHENTICATED);
    // A certificate from another CA never completes the handshake.
    auto rogue = Connect(target, "rogue");
    EXPECT_FALSE(rogue->memory->AllocBuffer(Ctx().get(), Buffer("nic0"), &out).ok());
  }

  DaemonProcess daemon_;
};

TEST_F(MtlsTest, CertificateIdentityOverTcp) { ExpectIdentities(daemon_.tcp_target()); }
TEST_F(MtlsTest, CertificateIdentityOverUnixSocket) { ExpectIdentities(daemon_.unix_target()); }

TEST_F(MtlsTest, PlaintextClientIsRefused) {
  Stubs plain(Insecure(daemon_.tcp_target()));
  v1::ListIommusResponse out;
  EXPECT_FALSE(plain.devices->ListIommus(Ctx().get(), {}, &out).ok());
}

}  // namespace
}  // namespace iommu::testing
