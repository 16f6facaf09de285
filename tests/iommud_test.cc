// Integration: the real iommud, every RPC through generated stubs, over the
// Unix socket and TCP; malformed requests get the right code and leave the
// daemon's statistics unchanged.

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

class EveryRpcTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    stubs_ = std::make_unique<Stubs>(
        Insecure(GetParam() ? daemon_.unix_target() : daemon_.tcp_target()));
  }
  DaemonProcess daemon_;
  std::unique_ptr<Stubs> stubs_;
};

TEST_P(EveryRpcTest, ServesEveryRpc) {
  Stubs& s = *stubs_;
  // Topology.
  v1::ListIommusResponse iommus;
  ASSERT_OK(s.devices->ListIommus(Ctx().get(), {}, &iommus));
  EXPECT_GE(iommus.smmus_size(), 2);
  v1::ListDevicesRequest list_devices;  // empty device: admin under --auth=none
  v1::ListDevicesResponse devices;
  ASSERT_OK(s.devices->ListDevices(Ctx().get(), list_devices, &devices));
  EXPECT_GE(devices.devices_size(), 5);

  // Buffers.
  v1::AllocBufferRequest ab;
  ab.set_device("nic0");
  ab.set_size_bytes(64 << 10);
  ab.set_placement(v1::PLACEMENT_SCATTERED);
  v1::AllocBufferResponse buffer;
  ASSERT_OK(s.memory->AllocBuffer(Ctx().get(), ab, &buffer));
  const uint64_t buffer_id = buffer.buffer().buffer_id();
  EXPECT_EQ(buffer.buffer().size_bytes(), 64u << 10);
  v1::GetBufferRequest gb;
  gb.set_device("nic0");
  gb.set_buffer_id(buffer_id);
  v1::GetBufferResponse got_buffer;
  ASSERT_OK(s.memory->GetBuffer(Ctx().get(), gb, &got_buffer));
  EXPECT_EQ(got_buffer.buffer().buffer_id(), buffer_id);

  // Map, translate through the IOTLB, sg table, unmap.
  v1::MapRequest map;
  map.set_device("nic0");
  *map.mutable_mem() = BufferRef(buffer_id, 0, 4096);
  map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapResponse mapped;
  ASSERT_OK(s.dma->Map(Ctx().get(), map, &mapped));
  EXPECT_NE(mapped.dma_addr(), 0u);
  v1::TranslateRequest tr;
  tr.set_device("nic0");
  tr.set_iova(mapped.dma_addr());
  tr.set_length_bytes(4096);
  tr.set_access(v1::ACCESS_KIND_WRITE);
  v1::TranslateResponse translated;
  ASSERT_OK(s.devices->Translate(Ctx().get(), tr, &translated));
  EXPECT_FALSE(translated.faulted());
  ASSERT_EQ(translated.pages_size(), 1);
  EXPECT_EQ(translated.pages(0).phys_addr(), buffer.buffer().runs(0).phys_addr());
  v1::TranslateBatchRequest tb;
  *tb.add_accesses() = tr;
  *tb.add_accesses() = tr;
  v1::TranslateBatchResponse tb_out;
  ASSERT_OK(s.devices->TranslateBatch(Ctx().get(), tb, &tb_out));
  ASSERT_EQ(tb_out.results_size(), 2);
  EXPECT_TRUE(tb_out.results(1).pages(0).iotlb_hit());
  v1::GetSgTableRequest sgt;
  sgt.set_device("nic0");
  sgt.set_dma_addr(mapped.dma_addr());
  sgt.set_export_(true);
  v1::GetSgTableResponse table;
  ASSERT_OK(s.dma->GetSgTable(Ctx().get(), sgt, &table));
  EXPECT_EQ(table.size_bytes(), 4096u);
  EXPECT_FALSE(table.export_token().empty());
  v1::SyncRequest sync;
  sync.set_device("nic0");
  v1::SyncResponse synced;
  ASSERT_OK(s.dma->Sync(Ctx().get(), sync, &synced));
  v1::UnmapRequest unmap;
  unmap.set_device("nic0");
  unmap.set_dma_addr(mapped.dma_addr());
  v1::UnmapResponse unmapped;
  ASSERT_OK(s.dma->Unmap(Ctx().get(), unmap, &unmapped));
  EXPECT_CODE(s.dma->Unmap(Ctx().get(), unmap, &unmapped), NOT_FOUND);

  // Scatter-gather.
  v1::MapSgRequest sg;
  sg.set_device("nic0");
  *sg.add_segments() = BufferRef(buffer_id, 4096, 4096);
  *sg.add_segments() = BufferRef(buffer_id, 8192, 4096);
  sg.set_mode(v1::SG_MODE_MERGE);
  sg.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
  v1::MapSgResponse sg_out;
  ASSERT_OK(s.dma->MapSg(Ctx().get(), sg, &sg_out));
  EXPECT_GE(sg_out.segment_count(), 1u);
  EXPECT_EQ(sg_out.segment_count(), uint32_t(sg_out.segments_size()));
  v1::UnmapSgRequest usg;
  usg.set_device("nic0");
  usg.set_dma_addr(sg_out.segments(0).dma_addr());
  v1::UnmapSgResponse usg_out;
  ASSERT_OK(s.dma->UnmapSg(Ctx().get(), usg, &usg_out));

  // Coherent allocation.
  v1::AllocRequest alloc;
  alloc.set_device("nic0");
  alloc.set_size_bytes(8192);
  alloc.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::AllocResponse allocated;
  ASSERT_OK(s.dma->Alloc(Ctx().get(), alloc, &allocated));
  EXPECT_EQ(allocated.size_bytes(), 8192u);
  v1::FreeRequest free_req;
  free_req.set_device("nic0");
  free_req.set_dma_addr(allocated.dma_addr());
  v1::FreeResponse freed;
  ASSERT_OK(s.dma->Free(Ctx().get(), free_req, &freed));

  // MSI doorbell, idempotent.
  v1::MsiCookieRequest msi;
  msi.set_device("nic0");
  v1::MsiCookieResponse msi_out, msi_again;
  ASSERT_OK(s.dma->MsiCookie(Ctx().get(), msi, &msi_out));
  EXPECT_NE(msi_out.msi_addr(), 0u);
  ASSERT_OK(s.dma->MsiCookie(Ctx().get(), msi, &msi_again));
  EXPECT_EQ(msi_again.msi_addr(), msi_out.msi_addr());
  EXPECT_FALSE(msi_again.newly_mapped());

  // Domains: an UNMANAGED domain, MapAt / UnmapRange, back to default.
  v1::CreateDomainRequest cd;
  cd.set_device("nic0");
  cd.set_smmu("smmu0");
  cd.set_type(v1::DOMAIN_TYPE_UNMANAGED);
  v1::CreateDomainResponse domain;
  ASSERT_OK(s.domains->CreateDomain(Ctx().get(), cd, &domain));
  const uint64_t domain_id = domain.domain().domain_id();
  EXPECT_EQ(domain.domain().owner(), "nic0");
  v1::AttachDeviceRequest attach;
  attach.set_device("nic0");
  attach.set_domain_id(domain_id);
  v1::AttachDeviceResponse attached;
  ASSERT_OK(s.domains->AttachDevice(Ctx().get(), attach, &attached));
  v1::GetIovaRangesRequest gr;
  gr.set_device("nic0");
  v1::GetIovaRangesResponse ranges;
  ASSERT_OK(s.domains->GetIovaRanges(Ctx().get(), gr, &ranges));
  EXPECT_EQ(ranges.domain_id(), domain_id);
  EXPECT_GE(ranges.usable_size(), 1);
  v1::MapAtRequest at;
  at.set_device("nic0");
  at.set_iova(0x100000);
  *at.mutable_mem() = BufferRef(buffer_id, 0, 16384);
  at.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapAtResponse at_out;
  ASSERT_OK(s.dma->MapAt(Ctx().get(), at, &at_out));
  EXPECT_EQ(at_out.domain_id(), domain_id);
  EXPECT_CODE(s.dma->MapAt(Ctx().get(), at, &at_out), ALREADY_EXISTS);
  v1::UnmapRangeRequest ur;
  ur.set_device("nic0");
  ur.set_iova(0x100000);
  ur.set_size_bytes(16384);
  v1::UnmapRangeResponse ur_out;
  ASSERT_OK(s.dma->UnmapRange(Ctx().get(), ur, &ur_out));
  EXPECT_EQ(ur_out.unmapped_bytes(), 16384u);
  v1::GetDomainRequest gd;
  gd.set_device("nic0");
  gd.set_domain_id(domain_id);
  v1::GetDomainResponse got_domain;
  ASSERT_OK(s.domains->GetDomain(Ctx().get(), gd, &got_domain));
  ASSERT_EQ(got_domain.domain().devices_size(), 1);
  v1::ListDomainsRequest ld;
  ld.set_device("nic0");
  v1::ListDomainsResponse domains;
  ASSERT_OK(s.domains->ListDomains(Ctx().get(), ld, &domains));
  bool listed = false;  // the domain it owns and is attached to
  for (const v1::Domain& d : domains.domains()) listed |= d.domain_id() == domain_id;
  EXPECT_TRUE(listed);
  v1::DestroyDomainRequest dd;
  dd.set_device("nic0");
  dd.set_domain_id(domain_id);
  v1::DestroyDomainResponse destroyed;
  EXPECT_CODE(s.domains->DestroyDomain(Ctx().get(), dd, &destroyed), FAILED_PRECONDITION);
  v1::DetachDeviceRequest detach;
  detach.set_device("nic0");
  v1::DetachDeviceResponse detached;
  ASSERT_OK(s.domains->DetachDevice(Ctx().get(), detach, &detached));
  ASSERT_OK(s.domains->DestroyDomain(Ctx().get(), dd, &destroyed));

  // Sessions.
  v1::OpenSessionRequest os;
  os.set_device("nic0");
  v1::OpenSessionResponse session;
  ASSERT_OK(s.sessions->OpenSession(Ctx().get(), os, &session));
  EXPECT_EQ(session.ttl_ms(), 30000u);  // --session_ttl default
  v1::KeepAliveRequest ka;
  ka.set_device("nic0");
  ka.set_session_id(session.session_id());
  v1::KeepAliveResponse kept;
  ASSERT_OK(s.sessions->KeepAlive(Ctx().get(), ka, &kept));
  v1::CloseSessionRequest cs;
  cs.set_device("nic0");
  cs.set_session_id(session.session_id());
  v1::CloseSessionResponse closed;
  ASSERT_OK(s.sessions->CloseSession(Ctx().get(), cs, &closed));
  EXPECT_CODE(s.sessions->KeepAlive(Ctx().get(), ka, &kept), NOT_FOUND);

  // Batch: map, translate, unmap in one message; a bad op fails alone.
  {
    grpc::ClientContext ctx;
    auto stream = s.dma->Batch(&ctx);
    v1::BatchRequest req;
    req.set_sequence(7);
    for (int i = 0; i < 4; ++i) {
      v1::MapRequest* m = req.add_ops()->mutable_map();
      m->set_device("nic0");
      *m->mutable_mem() = BufferRef(buffer_id, uint64_t(i) * 4096, 4096);
      m->set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    }
    req.add_ops()->mutable_map()->set_device("nic0");  // no memory: INVALID_ARGUMENT
    ASSERT_TRUE(stream->Write(req));
    v1::BatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.sequence(), 7u);
    ASSERT_EQ(resp.results_size(), 5);
    v1::BatchRequest second;
    second.set_sequence(8);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(resp.results(i).code(), 0) << resp.results(i).message();
      v1::TranslateOp* t = second.add_ops()->mutable_translate();
      t->set_device("nic0");
      t->set_iova(resp.results(i).map().dma_addr());
      t->set_length_bytes(4096);
      t->set_access(v1::ACCESS_KIND_READ);
      v1::UnmapRequest* u = second.add_ops()->mutable_unmap();
      u->set_device("nic0");
      u->set_dma_addr(resp.results(i).map().dma_addr());
    }
    EXPECT_EQ(resp.results(4).code(), int(StatusCode::INVALID_ARGUMENT));
    EXPECT_NE(resp.results(4).message().find("mem"), std::string::npos);
    ASSERT_TRUE(stream->Write(second));
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_EQ(resp.results_size(), 8);
    for (const v1::BatchResult& r : resp.results()) EXPECT_EQ(r.code(), 0) << r.message();
    EXPECT_FALSE(resp.results(0).translate().faulted());
    stream->WritesDone();
    ASSERT_OK(stream->Finish());
  }

  // Faults and their stream.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::WatchFaultsRequest wf;
    wf.set_device("nic0");
    auto watch = s.devices->WatchFaults(&ctx, wf);
    v1::TranslateRequest bad = tr;
    bad.set_iova(0x10000);  // never mapped
    v1::TranslateResponse fault;
    ASSERT_OK(s.devices->Translate(Ctx().get(), bad, &fault));
    EXPECT_TRUE(fault.faulted());
    EXPECT_EQ(fault.fault_type(), v1::FAULT_TYPE_TRANSLATION);
    v1::FaultEvent event;
    ASSERT_TRUE(watch->Read(&event));
    ASSERT_GE(event.records_size(), 1);
    EXPECT_EQ(event.records(0).device(), "nic0");
    EXPECT_EQ(event.records(0).iova(), 0x10000u);
    EXPECT_EQ(event.records(0).type(), v1::FAULT_TYPE_TRANSLATION);
    EXPECT_EQ(event.records(0).seq(), fault.fault_seq());
    ctx.TryCancel();
    EXPECT_CODE(watch->Finish(), CANCELLED);
  }

  // Stats, and freeing the buffer.
  v1::GetStatsRequest gs;
  v1::GetStatsResponse stats;
  ASSERT_OK(s.stats->GetStats(Ctx().get(), gs, &stats));
  EXPECT_GE(stats.smmus_size(), 2);
  EXPECT_GE(stats.faults().recorded(), 1u);
  v1::FreeBufferRequest fb;
  fb.set_device("nic0");
  fb.set_buffer_id(buffer_id);
  v1::FreeBufferResponse fb_out;
  ASSERT_OK(s.memory->FreeBuffer(Ctx().get(), fb, &fb_out));
  EXPECT_CODE(s.memory->GetBuffer(Ctx().get(), gb, &got_buffer), NOT_FOUND);

  EXPECT_EQ(daemon_.Stop(), 0) << daemon_.log();
}

INSTANTIATE_TEST_SUITE_P(Transports, EveryRpcTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Unix" : "Tcp"; });

// --- bad input --------------------------------------------------------------------

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    stubs_ = std::make_unique<Stubs>(Insecure(daemon_.unix_target()));
    v1::AllocBufferRequest ab;
    ab.set_device("nic0");
    ab.set_size_bytes(16384);
    ab.set_placement(v1::PLACEMENT_CONTIGUOUS);
    v1::AllocBufferResponse buffer;
    ASSERT_OK(stubs_->memory->AllocBuffer(Ctx().get(), ab, &buffer));
    buffer_id_ = buffer.buffer().buffer_id();
  }
  v1::GetStatsResponse Stats() {
    v1::GetStatsResponse stats;
    EXPECT_TRUE(stubs_->stats->GetStats(Ctx().get(), {}, &stats).ok());
    return stats;
  }
  v1::MapRequest GoodMap() {
    v1::MapRequest map;
    map.set_device("nic0");
    *map.mutable_mem() = BufferRef(buffer_id_, 0, 4096);
    map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    return map;
  }
  DaemonProcess daemon_;
  std::unique_ptr<Stubs> stubs_;
  uint64_t buffer_id_ = 0;
};

TEST_F(BadInputTest, EveryFamilyGetsItsCodeAndLeavesNoTrace) {
  Stubs& s = *stubs_;
  const v1::GetStatsResponse before = Stats();
  struct Case {
    std::string name;
    std::function<grpc::Status()> call;
    StatusCode code;
  };
  std::vector<Case> cases;
  auto map_case = [&](std::string name, std::function<void(v1::MapRequest&)> edit,
                      StatusCode code) {
    cases.push_back({name, [&s, this, edit] {
                       v1::MapRequest r = GoodMap();
                       edit(r);
                       v1::MapResponse out;
                       return s.dma->Map(Ctx().get(), r, &out);
                     }, code});
  };
  map_case("map zero length", [](auto& r) { r.mutable_mem()->set_length_bytes(0); },
           StatusCode::INVALID_ARGUMENT);
  map_case("map beyond buffer", [](auto& r) { r.mutable_mem()->set_length_bytes(1 << 20); },
           StatusCode::OUT_OF_RANGE);
  map_case("map overflowing offset",
           [](auto& r) { r.mutable_mem()->set_offset_bytes(~uint64_t{0} - 100); },
           StatusCode::OUT_OF_RANGE);
  map_case("map no direction", [](auto& r) { r.set_direction(v1::DMA_DIRECTION_UNSPECIFIED); },
           StatusCode::INVALID_ARGUMENT);
  map_case("map wrong enum", [](auto& r) { r.set_direction(static_cast<v1::DmaDirection>(99)); },
           StatusCode::INVALID_ARGUMENT);
  map_case("map no memory", [](auto& r) { r.clear_mem(); }, StatusCode::INVALID_ARGUMENT);
  map_case("map unknown buffer", [](auto& r) { r.mutable_mem()->set_buffer_id(987654); },
           StatusCode::NOT_FOUND);
  map_case("map unknown device", [](auto& r) { r.set_device("nosuch0"); },
           StatusCode::NOT_FOUND);
  map_case("map another's buffer", [](auto& r) { r.set_device("nvme0"); },
           StatusCode::PERMISSION_DENIED);
  cases.push_back({"unmap unknown dma_addr", [&] {
                     v1::UnmapRequest r;
                     r.set_device("nic0");
                     r.set_dma_addr(0x1234000);
                     v1::UnmapResponse out;
                     return s.dma->Unmap(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"map_sg no mode", [&] {
                     v1::MapSgRequest r;
                     r.set_device("nic0");
                     *r.add_segments() = BufferRef(buffer_id_, 0, 4096);
                     r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
                     v1::MapSgResponse out;
                     return s.dma->MapSg(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"alloc zero size", [&] {
                     v1::AllocRequest r;
                     r.set_device("nic0");
                     r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
                     v1::AllocResponse out;
                     return s.dma->Alloc(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"get_sgtable unknown", [&] {
                     v1::GetSgTableRequest r;
                     r.set_device("nic0");
                     r.set_dma_addr(0x777000);
                     v1::GetSgTableResponse out;
                     return s.dma->GetSgTable(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"map_at on a DMA domain", [&] {
                     v1::MapAtRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x100000);
                     *r.mutable_mem() = BufferRef(buffer_id_, 0, 4096);
                     r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
                     v1::MapAtResponse out;
                     return s.dma->MapAt(Ctx().get(), r, &out);
                   }, StatusCode::FAILED_PRECONDITION});
  cases.push_back({"unmap_range on a DMA domain", [&] {
                     v1::UnmapRangeRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x100000);
                     v1::UnmapRangeResponse out;
                     return s.dma->UnmapRange(Ctx().get(), r, &out);
                   }, StatusCode::FAILED_PRECONDITION});
  cases.push_back({"alloc_buffer zero", [&] {
                     v1::AllocBufferRequest r;
                     r.set_device("nic0");
                     r.set_placement(v1::PLACEMENT_SCATTERED);
                     v1::AllocBufferResponse out;
                     return s.memory->AllocBuffer(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"alloc_buffer no placement", [&] {
                     v1::AllocBufferRequest r;
                     r.set_device("nic0");
                     r.set_size_bytes(4096);
                     v1::AllocBufferResponse out;
                     return s.memory->AllocBuffer(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"free_buffer unknown", [&] {
                     v1::FreeBufferRequest r;
                     r.set_device("nic0");
                     r.set_buffer_id(424242);
                     v1::FreeBufferResponse out;
                     return s.memory->FreeBuffer(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"create_domain no type", [&] {
                     v1::CreateDomainRequest r;
                     r.set_device("nic0");
                     r.set_smmu("smmu0");
                     v1::CreateDomainResponse out;
                     return s.domains->CreateDomain(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"create_domain bad granule", [&] {
                     v1::CreateDomainRequest r;
                     r.set_device("nic0");
                     r.set_smmu("smmu0");
                     r.set_type(v1::DOMAIN_TYPE_DMA);
                     r.set_granule_bytes(12345);
                     v1::CreateDomainResponse out;
                     return s.domains->CreateDomain(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"destroy unknown domain", [&] {
                     v1::DestroyDomainRequest r;
                     r.set_domain_id(999999);
                     v1::DestroyDomainResponse out;
                     return s.domains->DestroyDomain(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"attach unknown domain", [&] {
                     v1::AttachDeviceRequest r;
                     r.set_device("nic0");
                     r.set_domain_id(999999);
                     v1::AttachDeviceResponse out;
                     return s.domains->AttachDevice(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"translate zero length", [&] {
                     v1::TranslateRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x1000);
                     r.set_access(v1::ACCESS_KIND_READ);
                     v1::TranslateResponse out;
                     return s.devices->Translate(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"translate no access", [&] {
                     v1::TranslateRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x1000);
                     r.set_length_bytes(4);
                     v1::TranslateResponse out;
                     return s.devices->Translate(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"translate_batch one bad access", [&] {
                     v1::TranslateBatchRequest r;
                     v1::TranslateRequest* a = r.add_accesses();
                     a->set_device("nic0");
                     a->set_iova(0x1000);
                     a->set_length_bytes(4);
                     a->set_access(v1::ACCESS_KIND_READ);
                     *r.add_accesses() = *a;
                     r.mutable_accesses(1)->set_access(v1::ACCESS_KIND_UNSPECIFIED);
                     v1::TranslateBatchResponse out;
                     return s.devices->TranslateBatch(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"keepalive unknown session", [&] {
                     v1::KeepAliveRequest r;
                     r.set_device("nic0");
                     r.set_session_id(31337);
                     v1::KeepAliveResponse out;
                     return s.sessions->KeepAlive(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"open_session ttl too long", [&] {
                     v1::OpenSessionRequest r;
                     r.set_device("nic0");
                     r.set_ttl_ms(uint64_t{25} * 3600 * 1000);
                     v1::OpenSessionResponse out;
                     return s.sessions->OpenSession(Ctx().get(), r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"malformed session metadata", [&] {
                     grpc::ClientContext ctx;
                     ctx.AddMetadata("iommu-session-id", "twelve");
                     v1::MapRequest r = GoodMap();
                     v1::MapResponse out;
                     return s.dma->Map(&ctx, r, &out);
                   }, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"get_domain unknown", [&] {
                     v1::GetDomainRequest r;
                     r.set_domain_id(999999);
                     v1::GetDomainResponse out;
                     return s.domains->GetDomain(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});
  cases.push_back({"get_iova_ranges unknown device", [&] {
                     v1::GetIovaRangesRequest r;
                     r.set_device("nosuch0");
                     v1::GetIovaRangesResponse out;
                     return s.domains->GetIovaRanges(Ctx().get(), r, &out);
                   }, StatusCode::NOT_FOUND});

  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const grpc::Status status = c.call();
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    // Every message names a field and its value: "field=value: why".
    EXPECT_NE(status.error_message().find('='), std::string::npos) << status.error_message();
  }
  const v1::GetStatsResponse after = Stats();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(before, after))
      << "before:\n" << before.DebugString() << "\nafter:\n" << after.DebugString();
  EXPECT_EQ(daemon_.Stop(), 0);
}

}  // namespace
}  // namespace iommu::testing
