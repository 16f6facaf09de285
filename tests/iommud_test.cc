// SPDX-License-Identifier: Apache-2.0
// Integration: the real iommud, every RPC through generated stubs, over the
// Unix socket and TCP.

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
  // The page table now holds exactly the four 4 KiB leaves MapAt wrote;
  // walked two at a time, the pages chain through next_iova.
  v1::WalkDomainRequest walk;
  walk.set_device("nic0");
  walk.set_domain_id(domain_id);
  walk.set_max_leaves(2);
  std::vector<uint64_t> leaf_iovas;
  for (int page = 0; page < 3; ++page) {
    v1::WalkDomainResponse walked;
    ASSERT_OK(s.domains->WalkDomain(Ctx().get(), walk, &walked));
    EXPECT_EQ(walked.domain_id(), domain_id);
    for (const v1::PageTableLeaf& leaf : walked.leaves()) {
      leaf_iovas.push_back(leaf.iova());
      EXPECT_EQ(leaf.size_bytes(), 4096u);
      EXPECT_TRUE(leaf.read() && leaf.write()) << leaf.ShortDebugString();
    }
    if (walked.next_iova() == 0) break;
    walk.set_start_iova(walked.next_iova());
  }
  EXPECT_EQ(leaf_iovas, (std::vector<uint64_t>{0x100000, 0x101000, 0x102000, 0x103000}));
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

}  // namespace
}  // namespace iommu::testing
