// SPDX-License-Identifier: Apache-2.0
// The C++ SDK against the real iommud binary: every RPC, the RAII handles,
// sessions (kept alive, reclaimed after the client dies), the Batch API,
// retries, and the token and mTLS credentials.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/batch.h"
#include "client/client.h"
#include "client/connection.h"
#include "client/session.h"
#include "client/testing/iommud_process.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "iommu/v1/memory.grpc.pb.h"

namespace iommu::client {
namespace {

using testing::IommudProcess;

#define ASSERT_OK_AND_ASSIGN(lhs, expr)            \
  auto lhs##_or = (expr);                          \
  ASSERT_TRUE(lhs##_or.ok()) << lhs##_or.status(); \
  auto lhs = *std::move(lhs##_or)

class ClientIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override { StartDaemon({}); }

  void StartDaemon(const std::vector<std::string>& flags) {
    absl::Status s = daemon_.Start(flags);
    ASSERT_TRUE(s.ok()) << s;
  }

  Client Connect(const std::string& device, const std::string& target = "") {
    Options o;
    o.target = target.empty() ? daemon_.unix_target() : target;
    o.device = device;
    absl::StatusOr<Client> c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  // The daemon's view of a device's resources.
  v1::DeviceInfo Device(const std::string& name) {
    absl::StatusOr<Client> admin = Client::Connect({.target = daemon_.unix_target()});
    v1::ListDevicesResponse devices = *admin->ListDevices();
    for (const v1::DeviceInfo& d : devices.devices()) {
      if (d.config().name() == name) return d;
    }
    ADD_FAILURE() << "no device " << name;
    return {};
  }

  IommudProcess daemon_;
};

TEST_F(ClientIntegrationTest, EveryRpcOverUnixAndTcp) {
  for (const std::string& target : {daemon_.unix_target(), daemon_.tcp_target()}) {
    SCOPED_TRACE(target);
    Client nic = Connect("nic0", target);
    ASSERT_OK_AND_ASSIGN(iommus, nic.ListIommus());
    EXPECT_GE(iommus.smmus_size(), 2);
    ASSERT_OK_AND_ASSIGN(devices, nic.ListDevices());
    ASSERT_EQ(devices.devices_size(), 1);  // a device sees itself
    EXPECT_EQ(devices.devices(0).config().name(), "nic0");

    v1::AllocBufferRequest ab;
    ab.set_size_bytes(64 * 1024);
    ab.set_placement(v1::PLACEMENT_SCATTERED);
    ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBuffer(ab));
    const uint64_t buffer_id = buffer.buffer().buffer_id();
    v1::GetBufferRequest gb;
    gb.set_buffer_id(buffer_id);
    ASSERT_OK_AND_ASSIGN(got, nic.GetBuffer(gb));
    EXPECT_EQ(got.buffer().size_bytes(), 64u * 1024);

    v1::MapRequest map;
    map.mutable_mem()->set_buffer_id(buffer_id);
    map.mutable_mem()->set_offset_bytes(0x123);
    map.mutable_mem()->set_length_bytes(256);
    map.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
    ASSERT_OK_AND_ASSIGN(mapped, nic.Map(map));
    EXPECT_EQ(mapped.dma_addr() & 0xfff, 0x123u);

    v1::TranslateRequest tr;
    tr.set_iova(mapped.dma_addr());
    tr.set_length_bytes(16);
    tr.set_access(v1::ACCESS_KIND_READ);
    ASSERT_OK_AND_ASSIGN(t, nic.Translate(tr));
    EXPECT_FALSE(t.faulted());
    ASSERT_EQ(t.pages_size(), 1);
    EXPECT_EQ(t.pages(0).phys_addr(), got.buffer().runs(0).phys_addr() + 0x123);
    v1::TranslateBatchRequest tb;
    *tb.add_accesses() = tr;
    tr.set_access(v1::ACCESS_KIND_WRITE);  // TO_DEVICE is read-only for the device
    *tb.add_accesses() = tr;
    ASSERT_OK_AND_ASSIGN(tbr, nic.TranslateBatch(tb));
    ASSERT_EQ(tbr.results_size(), 2);
    EXPECT_FALSE(tbr.results(0).faulted());
    EXPECT_TRUE(tbr.results(1).faulted());
    EXPECT_EQ(tbr.results(1).fault_type(), v1::FAULT_TYPE_PERMISSION);

    v1::GetSgTableRequest sgt;
    sgt.set_dma_addr(mapped.dma_addr());
    ASSERT_OK_AND_ASSIGN(table, nic.GetSgTable(sgt));
    EXPECT_GE(table.chunks_size(), 1);
    v1::UnmapRequest unmap;
    unmap.set_dma_addr(mapped.dma_addr());
    ASSERT_TRUE(nic.Unmap(unmap).ok());
    EXPECT_EQ(nic.Unmap(unmap).status().code(), absl::StatusCode::kNotFound);

    v1::MapSgRequest sg;
    for (int p = 0; p < 4; ++p) {
      v1::MemRef* s = sg.add_segments();
      s->set_buffer_id(buffer_id);
      s->set_offset_bytes(p * 4096);
      s->set_length_bytes(4096);
    }
    sg.set_mode(v1::SG_MODE_CONTIGUOUS);
    sg.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    ASSERT_OK_AND_ASSIGN(sgm, nic.MapSg(sg));
    EXPECT_EQ(sgm.segment_count(), 1u);
    v1::UnmapSgRequest usg;
    usg.set_dma_addr(sgm.iova());
    ASSERT_TRUE(nic.UnmapSg(usg).ok());

    v1::AllocRequest alloc;
    alloc.set_size_bytes(2 * 1024 * 1024);
    alloc.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    ASSERT_OK_AND_ASSIGN(allocated, nic.Alloc(alloc));
    v1::FreeRequest free;
    free.set_dma_addr(allocated.dma_addr());
    ASSERT_TRUE(nic.Free(free).ok());

    ASSERT_OK_AND_ASSIGN(msi, nic.MsiCookie(v1::MsiCookieRequest()));
    EXPECT_NE(msi.msi_addr(), 0u);
    ASSERT_TRUE(nic.Sync().ok());

    // An UNMANAGED domain: create, attach, MapAt, UnmapRange, detach, destroy.
    v1::CreateDomainRequest cd;
    cd.set_smmu("smmu0");
    cd.set_type(v1::DOMAIN_TYPE_UNMANAGED);
    ASSERT_OK_AND_ASSIGN(domain, nic.CreateDomain(cd));
    const uint64_t domain_id = domain.domain().domain_id();
    v1::GetDomainRequest gd;
    gd.set_domain_id(domain_id);
    ASSERT_OK_AND_ASSIGN(gotd, nic.GetDomain(gd));
    EXPECT_EQ(gotd.domain().type(), v1::DOMAIN_TYPE_UNMANAGED);
    ASSERT_OK_AND_ASSIGN(listed, nic.ListDomains());
    EXPECT_GE(listed.domains_size(), 2);
    v1::AttachDeviceRequest at;
    at.set_domain_id(domain_id);
    ASSERT_TRUE(nic.AttachDevice(at).ok());
    ASSERT_OK_AND_ASSIGN(ranges, nic.GetIovaRanges());
    EXPECT_EQ(ranges.domain_id(), domain_id);
    v1::MapAtRequest mat;
    mat.set_iova(0x100000);
    mat.mutable_mem()->set_buffer_id(buffer_id);
    mat.mutable_mem()->set_length_bytes(4096);
    mat.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    ASSERT_TRUE(nic.MapAt(mat).ok());
    EXPECT_EQ(nic.MapAt(mat).status().code(), absl::StatusCode::kAlreadyExists);
    v1::WalkDomainRequest walk;
    walk.set_domain_id(domain_id);
    ASSERT_OK_AND_ASSIGN(walked, nic.WalkDomain(walk));
    ASSERT_EQ(walked.leaves_size(), 1);
    EXPECT_EQ(walked.leaves(0).iova(), 0x100000u);
    EXPECT_EQ(walked.leaves(0).size_bytes(), 4096u);
    EXPECT_EQ(walked.next_iova(), 0u);
    v1::UnmapRangeRequest ur;
    ur.set_iova(0x100000);
    ur.set_size_bytes(4096);
    ASSERT_OK_AND_ASSIGN(unmapped, nic.UnmapRange(ur));
    EXPECT_EQ(unmapped.unmapped_bytes(), 4096u);
    v1::DestroyDomainRequest dd;
    dd.set_domain_id(domain_id);
    EXPECT_EQ(nic.DestroyDomain(dd).status().code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE(nic.DetachDevice().ok());
    ASSERT_TRUE(nic.DestroyDomain(dd).ok());

    ASSERT_OK_AND_ASSIGN(opened, nic.OpenSession());
    v1::KeepAliveRequest ka;
    ka.set_session_id(opened.session_id());
    ASSERT_TRUE(nic.KeepAlive(ka).ok());
    v1::CloseSessionRequest cs;
    cs.set_session_id(opened.session_id());
    ASSERT_TRUE(nic.CloseSession(cs).ok());
    EXPECT_EQ(nic.KeepAlive(ka).status().code(), absl::StatusCode::kNotFound);

    ASSERT_OK_AND_ASSIGN(stats, nic.GetStats());
    EXPECT_GE(stats.faults().recorded(), 1u);

    // WatchFaults from the start sees the permission fault above.
    ASSERT_OK_AND_ASSIGN(stream, nic.WatchFaults());
    v1::FaultEvent event;
    ASSERT_TRUE(stream->Read(&event));
    ASSERT_GE(event.records_size(), 1);
    EXPECT_EQ(event.records(0).device(), "nic0");
    stream->Cancel();
    while (stream->Read(&event)) {
    }
    EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kCancelled);

    v1::FreeBufferRequest fb;
    fb.set_buffer_id(buffer_id);
    ASSERT_TRUE(nic.FreeBuffer(fb).ok());
    EXPECT_EQ(nic.GetBuffer(gb).status().code(), absl::StatusCode::kNotFound);
  }
}

TEST_F(ClientIntegrationTest, ErrorsKeepTheServerCodeAndMessage) {
  Client nic = Connect("nic0");
  v1::MapRequest map;
  map.mutable_mem()->set_buffer_id(999);
  map.mutable_mem()->set_length_bytes(4096);
  map.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
  absl::Status s = nic.Map(map).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("0x3e7"), std::string::npos) << s;  // names the buffer id
  map.set_device("nvme0");  // acting as another device's buffer owner: unknown buffer for it
  v1::AllocBufferRequest ab;
  ab.set_size_bytes(0);
  EXPECT_EQ(nic.AllocBuffer(ab).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientIntegrationTest, RaiiHandlesUndoOnDestruction) {
  Client nic = Connect("nic0");
  {
    ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBufferScoped(64 * 1024));
    ASSERT_OK_AND_ASSIGN(m1, nic.MapScoped(buffer, 0, 4096));
    v1::MapSgRequest sg;
    for (int p = 0; p < 3; ++p) {
      v1::MemRef* s = sg.add_segments();
      s->set_buffer_id(buffer.id());
      s->set_offset_bytes(p * 4096);
      s->set_length_bytes(4096);
    }
    sg.set_mode(v1::SG_MODE_MERGE);
    sg.set_direction(v1::DMA_DIRECTION_FROM_DEVICE);
    ASSERT_OK_AND_ASSIGN(m2, nic.MapSgScoped(sg));
    v1::AllocRequest alloc;
    alloc.set_size_bytes(64 * 1024);
    alloc.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    ASSERT_OK_AND_ASSIGN(m3, nic.AllocScoped(alloc));
    EXPECT_EQ(m3.kind(), Mapping::Kind::kAlloc);
    v1::DeviceInfo during = Device("nic0");
    EXPECT_EQ(during.mappings(), 3u);
    EXPECT_EQ(during.buffers(), 2u);  // AllocBuffer + Alloc's own

    // Freeing a mapped buffer fails and changes nothing.
    v1::FreeBufferRequest fb;
    fb.set_buffer_id(buffer.id());
    EXPECT_EQ(nic.FreeBuffer(fb).status().code(), absl::StatusCode::kFailedPrecondition);
    // Close() reports; a second Close() is a no-op.
    EXPECT_TRUE(m1.Close().ok());
    EXPECT_TRUE(m1.Close().ok());
    EXPECT_EQ(Device("nic0").mappings(), 2u);
  }  // m3, m2, then the buffer
  v1::DeviceInfo after = Device("nic0");
  EXPECT_EQ(after.mappings(), 0u);
  EXPECT_EQ(after.buffers(), 0u);
  EXPECT_EQ(after.mapped_bytes(), 0u);

  // Release() detaches: the mapping outlives the handle.
  uint64_t dma_addr = 0;
  uint64_t buffer_id = 0;
  {
    ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBufferScoped(4096, v1::PLACEMENT_CONTIGUOUS));
    ASSERT_OK_AND_ASSIGN(m, nic.MapScoped(buffer, 0, 4096));
    dma_addr = m.Release();
    buffer_id = buffer.Release();
  }
  EXPECT_EQ(Device("nic0").mappings(), 1u);
  v1::UnmapRequest unmap;
  unmap.set_dma_addr(dma_addr);
  EXPECT_TRUE(nic.Unmap(unmap).ok());
  v1::FreeBufferRequest fb;
  fb.set_buffer_id(buffer_id);
  EXPECT_TRUE(nic.FreeBuffer(fb).ok());
}

TEST_F(ClientIntegrationTest, BatchResultsComeBackInOrder) {
  Client nic = Connect("nic0");
  ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBufferScoped(16 * 4096, v1::PLACEMENT_CONTIGUOUS));
  ASSERT_OK_AND_ASSIGN(batch, BatchStream::Open(nic));
  EXPECT_EQ(batch->AddMap(buffer.id(), 0, 4096, v1::DMA_DIRECTION_TO_DEVICE), 0u);
  EXPECT_EQ(batch->AddUnmap(0xdead000), 1u);  // not mapped: NOT_FOUND, the rest goes on
  EXPECT_EQ(batch->AddMap(buffer.id(), 4096, 8192, v1::DMA_DIRECTION_BIDIRECTIONAL), 2u);
  EXPECT_EQ(batch->AddMap(buffer.id(), 0, 0, v1::DMA_DIRECTION_TO_DEVICE), 3u);  // zero length
  ASSERT_OK_AND_ASSIGN(first, batch->Flush());
  ASSERT_EQ(first.results_size(), 4);
  EXPECT_TRUE(BatchResultStatus(first.results(0)).ok());
  EXPECT_EQ(BatchResultStatus(first.results(1)).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(BatchResultStatus(first.results(2)).ok());
  EXPECT_EQ(BatchResultStatus(first.results(3)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(first.results(0).map().dma_addr(), first.results(2).map().dma_addr());

  // Pipelined: three messages in flight, answered in order.
  batch->AddTranslate(first.results(0).map().dma_addr(), 4096, v1::ACCESS_KIND_READ);
  BatchStream::ResponseFuture f1 = batch->Send();
  batch->AddTranslate(first.results(0).map().dma_addr(), 4096, v1::ACCESS_KIND_WRITE);
  BatchStream::ResponseFuture f2 = batch->Send();
  batch->AddUnmap(first.results(0).map().dma_addr());
  batch->AddUnmap(first.results(2).map().dma_addr());
  BatchStream::ResponseFuture f3 = batch->Send();
  absl::StatusOr<BatchReply> r1 = f1.get(), r2 = f2.get(), r3 = f3.get();
  ASSERT_TRUE(r1.ok() && r2.ok() && r3.ok());
  EXPECT_LT(r1->sequence(), r2->sequence());
  EXPECT_LT(r2->sequence(), r3->sequence());
  EXPECT_FALSE(r1->results(0).translate().faulted());
  EXPECT_TRUE(r2->results(0).translate().faulted());
  ASSERT_EQ(r3->results_size(), 2);
  EXPECT_TRUE(BatchResultStatus(r3->results(0)).ok());
  EXPECT_TRUE(BatchResultStatus(r3->results(1)).ok());
  EXPECT_TRUE(batch->Close().ok());
  EXPECT_EQ(batch->Flush().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Device("nic0").mappings(), 0u);
}

// The SDK keeps a written message's operations for the next one: a reused
// Map/Unmap/Translate is rewritten whole (device, offset, direction, access),
// slots change kind from message to message, and a message with an Add()ed
// op starts over.
TEST_F(ClientIntegrationTest, BatchOpsReusedAcrossMessagesCarryNothingOver) {
  Client nic = Connect("nic0");
  ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBufferScoped(4 * 4096, v1::PLACEMENT_CONTIGUOUS));
  ASSERT_OK_AND_ASSIGN(batch, BatchStream::Open(nic));
  // A map naming another device (denied), a map at an offset, TO_DEVICE, a
  // translate naming another device.
  batch->AddMap(buffer.id(), 4096, 8192, v1::DMA_DIRECTION_TO_DEVICE, "gpu0");
  batch->AddMap(buffer.id(), 4096, 8192, v1::DMA_DIRECTION_TO_DEVICE);
  batch->AddTranslate(0x1000, 4096, v1::ACCESS_KIND_READ, "gpu0");
  ASSERT_OK_AND_ASSIGN(r1, batch->Flush());
  ASSERT_EQ(r1.results_size(), 3);
  // As gpu0, nic0's buffer is one gpu0 cannot see: NOT_FOUND, as a missing one.
  EXPECT_EQ(BatchResultStatus(r1.results(0)).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(BatchResultStatus(r1.results(1)).ok());
  EXPECT_EQ(r1.results(1).map().iova_size_bytes(), 8192u);

  // The client's device, offset 0, FROM_DEVICE in the slot that named gpu0.
  EXPECT_EQ(batch->AddMap(buffer.id(), 0, 4096, v1::DMA_DIRECTION_FROM_DEVICE), 0u);
  EXPECT_EQ(batch->AddMap(buffer.id(), 0, 4096, v1::DMA_DIRECTION_TO_DEVICE), 1u);
  EXPECT_EQ(batch->AddUnmap(r1.results(1).map().dma_addr()), 2u);  // was a translate
  EXPECT_EQ(batch->pending(), 3u);
  ASSERT_OK_AND_ASSIGN(r2, batch->Flush());
  EXPECT_EQ(batch->pending(), 0u);
  ASSERT_EQ(r2.results_size(), 3);
  for (const v1::BatchResult& r : r2.results())
    ASSERT_TRUE(BatchResultStatus(r).ok()) << r.message();
  EXPECT_EQ(r2.results(0).map().iova_size_bytes(), 4096u);

  // Writes: allowed FROM_DEVICE, a fault TO_DEVICE; both maps start at the
  // buffer's first page.
  batch->AddTranslate(r2.results(0).map().dma_addr(), 4096, v1::ACCESS_KIND_WRITE);
  batch->AddTranslate(r2.results(1).map().dma_addr(), 4096, v1::ACCESS_KIND_WRITE);
  batch->AddTranslate(r2.results(1).map().dma_addr(), 4096, v1::ACCESS_KIND_READ);
  ASSERT_OK_AND_ASSIGN(r3, batch->Flush());
  ASSERT_EQ(r3.results_size(), 3);
  for (const v1::BatchResult& r : r3.results())
    ASSERT_TRUE(BatchResultStatus(r).ok()) << r.message();
  EXPECT_FALSE(r3.results(0).translate().faulted());
  EXPECT_TRUE(r3.results(1).translate().faulted());
  EXPECT_FALSE(r3.results(2).translate().faulted());
  EXPECT_EQ(r3.results(0).translate().phys_addr(), r3.results(2).translate().phys_addr());

  // An Add()ed op among built ones, then built ones again.
  v1::BatchOp op;
  op.mutable_unmap()->set_dma_addr(r2.results(0).map().dma_addr());
  EXPECT_EQ(batch->Add(op), 0u);
  EXPECT_EQ(batch->AddUnmap(r2.results(1).map().dma_addr()), 1u);
  ASSERT_OK_AND_ASSIGN(r4, batch->Flush());
  ASSERT_EQ(r4.results_size(), 2);
  EXPECT_TRUE(BatchResultStatus(r4.results(0)).ok());
  EXPECT_TRUE(BatchResultStatus(r4.results(1)).ok());
  EXPECT_EQ(Device("nic0").mappings(), 0u);
  batch->AddMap(buffer.id(), 8192, 4096, v1::DMA_DIRECTION_BIDIRECTIONAL);
  ASSERT_OK_AND_ASSIGN(r5, batch->Flush());
  ASSERT_TRUE(BatchResultStatus(r5.results(0)).ok());
  batch->AddUnmap(r5.results(0).map().dma_addr());
  ASSERT_OK_AND_ASSIGN(r6, batch->Flush());
  EXPECT_TRUE(BatchResultStatus(r6.results(0)).ok());
  EXPECT_TRUE(batch->Close().ok());
  EXPECT_EQ(Device("nic0").mappings(), 0u);
}

// The SDK refuses what the daemon would refuse whole before sending it, and
// receives every reply the daemon sends (its receive limit is the daemon's
// --max_message_bytes), so no call applies work whose result it then drops.
class ClientLimitsTest : public ClientIntegrationTest {
 protected:
  // Room for a 2 GiB buffer in the quota: what stops it is its run list.
  void SetUp() override { StartDaemon({"--quota_buffer_bytes=4294967296"}); }
};

TEST_F(ClientLimitsTest, TooLargeIsRefusedBeforeSendingOrBeforeAnyWork) {
  Client nic = Connect("nic0");
  EXPECT_EQ(nic.options().limits.max_message_bytes, 4u << 20);
  ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBufferScoped(4096, v1::PLACEMENT_CONTIGUOUS));

  // A 300k-op Batch message: refused before it is sent, the stream usable.
  ASSERT_OK_AND_ASSIGN(batch, BatchStream::Open(nic));
  for (int i = 0; i < 300000; ++i) batch->AddMap(buffer.id(), 0, 4096, v1::DMA_DIRECTION_TO_DEVICE);
  absl::StatusOr<BatchReply> refused = batch->Flush();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find(
                "300000 operations and 0 MapSg segments, more than limits.max_batch_ops=8192"),
            absl::string_view::npos)
      << refused.status();
  EXPECT_EQ(batch->pending(), 0u);
  EXPECT_EQ(Device("nic0").mappings(), 0u);
  batch->AddMap(buffer.id(), 0, 4096, v1::DMA_DIRECTION_TO_DEVICE);
  ASSERT_OK_AND_ASSIGN(one, batch->Flush());
  ASSERT_EQ(one.results_size(), 1);
  EXPECT_TRUE(BatchResultStatus(one.results(0)).ok());
  batch->AddUnmap(one.results(0).map().dma_addr());
  ASSERT_OK_AND_ASSIGN(unmapped, batch->Flush());
  EXPECT_TRUE(batch->Close().ok());

  // A unary request larger than a message: refused before it is sent.
  v1::MapSgRequest sg;
  sg.set_mode(v1::SG_MODE_MERGE);
  sg.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
  for (int i = 0; i < 600000; ++i) {  // ~4.8 MB
    v1::MemRef* m = sg.add_segments();
    m->set_buffer_id(buffer.id());
    m->set_length_bytes(4096);
  }
  absl::StatusOr<v1::MapSgResponse> big = nic.MapSg(sg);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(big.status().message().find("more than limits.max_message_bytes=4194304"),
            absl::string_view::npos)
      << big.status();

  // A 2 GiB scattered buffer: its run list could not be sent, so the daemon
  // refuses it before taking a page. No orphaned buffer.
  v1::AllocBufferRequest huge;
  huge.set_size_bytes(uint64_t{2} << 30);
  huge.set_placement(v1::PLACEMENT_SCATTERED);
  absl::StatusOr<v1::AllocBufferResponse> allocated = nic.AllocBuffer(huge);
  EXPECT_EQ(allocated.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(allocated.status().message().find("--max_buffer_runs=131072"), absl::string_view::npos)
      << allocated.status();
  EXPECT_EQ(Device("nic0").buffers(), 1u);
  // The largest run list the daemon sends is received whole.
  huge.set_size_bytes(uint64_t{131072} * 4096);
  ASSERT_OK_AND_ASSIGN(largest, nic.AllocBuffer(huge));
  EXPECT_EQ(largest.buffer().runs_size(), 131072);
  v1::FreeBufferRequest free;
  free.set_buffer_id(largest.buffer().buffer_id());
  EXPECT_TRUE(nic.FreeBuffer(free).ok());
}

// Messages far larger than both sides' first arena blocks (the daemon grows
// its block between messages, the SDK keeps or resets its ops after each Send), then
// a small one and a large one again: every result exact, in order.
TEST_F(ClientIntegrationTest, LargeBatchesBetweenSmallOnesStayExact) {
  constexpr int kMaps = 3000;  // ~0.5 MiB of request, well past 64 KiB
  Client nic = Connect("nic0");
  ASSERT_OK_AND_ASSIGN(buffer, nic.AllocBufferScoped(2 * 4096, v1::PLACEMENT_CONTIGUOUS));
  ASSERT_OK_AND_ASSIGN(batch, BatchStream::Open(nic));
  for (int i = 0; i < kMaps; ++i) {
    // Half name the device explicitly, half take the client's: the same op.
    EXPECT_EQ(batch->AddMap(buffer.id(), (i % 2) * 4096, 4096, v1::DMA_DIRECTION_TO_DEVICE,
                            i % 2 ? "nic0" : ""),
              static_cast<size_t>(i));
  }
  ASSERT_OK_AND_ASSIGN(maps, batch->Flush());
  EXPECT_EQ(batch->pending(), 0u);
  ASSERT_EQ(maps.results_size(), kMaps);
  std::set<uint64_t> dma_addrs;
  for (const v1::BatchResult& r : maps.results()) {
    ASSERT_TRUE(BatchResultStatus(r).ok()) << r.message();
    dma_addrs.insert(r.map().dma_addr());
  }
  EXPECT_EQ(dma_addrs.size(), static_cast<size_t>(kMaps));
  EXPECT_EQ(Device("nic0").mappings(), static_cast<uint64_t>(kMaps));

  batch->AddTranslate(maps.results(1).map().dma_addr(), 4096, v1::ACCESS_KIND_READ);
  ASSERT_OK_AND_ASSIGN(small, batch->Flush());
  ASSERT_EQ(small.results_size(), 1);
  EXPECT_FALSE(small.results(0).translate().faulted());
  EXPECT_EQ(small.results(0).translate().phys_addr() % 4096, 0u);

  for (int i = 0; i < kMaps; ++i) {
    batch->AddUnmap(maps.results(i).map().dma_addr(), i % 2 ? "nic0" : "");
    if (i == kMaps / 2) batch->AddUnmap(0xdead000);  // not mapped: fails alone
  }
  ASSERT_OK_AND_ASSIGN(unmaps, batch->Flush());
  ASSERT_EQ(unmaps.results_size(), kMaps + 1);
  for (int i = 0; i < unmaps.results_size(); ++i) {
    const absl::Status s = BatchResultStatus(unmaps.results(i));
    if (i == kMaps / 2 + 1) {
      EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
      EXPECT_NE(s.message().find("dma_addr"), absl::string_view::npos) << s;
    } else {
      EXPECT_TRUE(s.ok()) << i << ": " << s;
    }
  }
  EXPECT_LT(maps.sequence(), small.sequence());
  EXPECT_LT(small.sequence(), unmaps.sequence());
  EXPECT_TRUE(batch->Close().ok());
  EXPECT_EQ(Device("nic0").mappings(), 0u);
}

TEST_F(ClientIntegrationTest, SessionIsKeptAliveThenReclaimedWhenAbandoned) {
  Client nic = Connect("nic0");
  ASSERT_OK_AND_ASSIGN(session, Session::Open(nic, absl::Milliseconds(600)));
  EXPECT_EQ(session->ttl(), absl::Milliseconds(600));
  ASSERT_OK_AND_ASSIGN(buffer, session->client().AllocBufferScoped(8192));
  ASSERT_OK_AND_ASSIGN(mapping, session->client().MapScoped(buffer, 0, 4096));
  absl::SleepFor(absl::Milliseconds(1500));  // 2.5 leases: alive only by keep-alive
  EXPECT_TRUE(session->last_keepalive_status().ok()) << session->last_keepalive_status();
  EXPECT_GE(session->keepalives_sent(), 3u);
  EXPECT_EQ(Device("nic0").mappings(), 1u);

  session->Abandon();  // as if this process died
  mapping.Release();
  buffer.Release();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline &&
         (Device("nic0").mappings() != 0 || Device("nic0").buffers() != 0)) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(Device("nic0").mappings(), 0u);
  EXPECT_EQ(Device("nic0").buffers(), 0u);
}

TEST_F(ClientIntegrationTest, SessionOfAKilledProcessIsReclaimed) {
  const pid_t ctl =
      testing::SpawnCtl({"--target=" + daemon_.unix_target(), "simulate", "--profile=untrusted",
                         "--seconds=0", "--rate=20", "--session_ttl_ms=500"});
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && Device("tbt0").buffers() == 0)
    absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(Device("tbt0").buffers(), 1u);
  kill(ctl, SIGKILL);
  waitpid(ctl, nullptr, 0);
  while (absl::Now() < deadline && Device("tbt0").buffers() != 0)
    absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(Device("tbt0").buffers(), 0u);
  EXPECT_EQ(Device("tbt0").mappings(), 0u);
}

TEST_F(ClientIntegrationTest, ClosingASessionReleasesWhatItOwns) {
  Client nic = Connect("nic0");
  {
    ASSERT_OK_AND_ASSIGN(session, Session::Open(nic));
    ASSERT_OK_AND_ASSIGN(buffer, session->client().AllocBufferScoped(4096));
    buffer.Release();
    EXPECT_EQ(Device("nic0").buffers(), 1u);
  }  // ~Session closes it
  EXPECT_EQ(Device("nic0").buffers(), 0u);
}

// Every call, a mutating one too, is retried until the daemon listens.
TEST(ClientRetryTest, CallsRetryUntilTheDaemonComesUp) {
  IommudProcess daemon;
  const std::string dir = testing::MakeTempDir();
  Options o;
  o.target = "unix:" + dir + "/late.sock";
  o.device = "nic0";
  o.default_deadline = absl::Seconds(20);
  ASSERT_OK_AND_ASSIGN(client, Client::Connect(o));
  std::thread late([&] {
    absl::SleepFor(absl::Milliseconds(300));
    // The daemon listens on the socket the client is already dialling.
    daemon.UseUnixSocket(dir + "/late.sock");
    ASSERT_TRUE(daemon.Start().ok());
  });
  v1::AllocBufferRequest alloc;
  alloc.set_size_bytes(4096);
  alloc.set_placement(v1::PLACEMENT_SCATTERED);
  absl::StatusOr<v1::AllocBufferResponse> buffer = client.AllocBuffer(alloc);
  late.join();
  ASSERT_TRUE(buffer.ok()) << buffer.status() << daemon.Log();
  absl::StatusOr<v1::ListIommusResponse> r = client.ListIommus();
  EXPECT_TRUE(r.ok()) << r.status();
  ASSERT_OK_AND_ASSIGN(admin, Client::Connect({.target = daemon.unix_target()}));
  ASSERT_OK_AND_ASSIGN(devices, admin.ListDevices());
  for (const v1::DeviceInfo& d : devices.devices()) {
    if (d.config().name() == "nic0") {
      EXPECT_EQ(d.buffers(), 1u);
    }
  }
}

// The protocol as the daemon serves it, through the generated gRPC client
// without the SDK's retries: a repeated id
// is answered with the original reply and `iommu-request-replayed: 1`, also
// after a restart, and an id reused for another request is refused.
TEST(ClientRequestIdTest, RepeatedIdIsAnsweredWithTheOriginalReply) {
  IommudProcess daemon;
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  ASSERT_OK_AND_ASSIGN(client, Client::Connect({.target = daemon.unix_target()}));
  auto alloc = [&](const std::string& id, uint64_t size_bytes, bool* replayed) {
    v1::AllocBufferRequest request;
    request.set_device("nic0");
    request.set_size_bytes(size_bytes);
    request.set_placement(v1::PLACEMENT_SCATTERED);
    // Raw calls: the first after a restart may meet the dead connection
    // (UNAVAILABLE) before the channel reconnects; retried as the SDK does.
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext context;
      client.PrepareContext(&context, absl::Seconds(10));
      context.set_wait_for_ready(true);
      context.AddMetadata("iommu-request-id", id);
      v1::AllocBufferResponse response;
      const grpc::Status s = client.connection()->memory->AllocBuffer(&context, request, &response);
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE && attempt < 20) {
        absl::SleepFor(absl::Milliseconds(50));
        continue;
      }
      const auto& trailers = context.GetServerTrailingMetadata();
      auto it = trailers.find("iommu-request-replayed");
      *replayed = it != trailers.end() && std::string(it->second.data(), it->second.size()) == "1";
      return std::make_pair(s, response);
    }
  };
  bool replayed = false;
  auto [first, original] = alloc("test-id-1", 4096, &replayed);
  ASSERT_TRUE(first.ok()) << first.error_message();
  EXPECT_FALSE(replayed);
  auto [again, repeated] = alloc("test-id-1", 4096, &replayed);
  ASSERT_TRUE(again.ok()) << again.error_message();
  EXPECT_TRUE(replayed);
  EXPECT_EQ(repeated.SerializeAsString(), original.SerializeAsString());
  auto [reused, unused] = alloc("test-id-1", 8192, &replayed);
  EXPECT_EQ(reused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << reused.error_message();
  daemon.Kill();
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  auto [after_restart, restored] = alloc("test-id-1", 4096, &replayed);
  ASSERT_TRUE(after_restart.ok()) << after_restart.error_message();
  EXPECT_TRUE(replayed);
  EXPECT_EQ(restored.buffer().buffer_id(), original.buffer().buffer_id());
}

// Device traffic while iommud is SIGKILLed and restarted 12 times:
// every call completes OK (the SDK retries through each restart), and the
// daemon holds exactly what the acknowledged calls made: an AllocBuffer or
// Map applied before a kill and retried after it is answered, not applied
// twice, and an Unmap retried after it took effect does not answer NOT_FOUND.
TEST(ClientRequestIdTest, CallsCutByDaemonKillsTakeEffectOnce) {
  IommudProcess daemon;
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  ASSERT_OK_AND_ASSIGN(client, Client::Connect({.target = daemon.unix_target(),
                                                .device = "nic0",
                                                .default_deadline = absl::Seconds(15)}));
  std::atomic<bool> stop{false};
  std::atomic<int> buffers{0}, mappings{0}, pairs{0};
  absl::Mutex mu;
  std::vector<absl::Status> failures;
  std::thread traffic([&] {
    while (!stop.load()) {
      v1::AllocBufferRequest ab;
      ab.set_size_bytes(4096);
      ab.set_placement(v1::PLACEMENT_SCATTERED);
      absl::StatusOr<v1::AllocBufferResponse> buffer = client.AllocBuffer(ab);
      if (!buffer.ok()) {
        absl::MutexLock lock(&mu);
        failures.push_back(buffer.status());
        return;
      }
      ++buffers;
      v1::MapRequest map;
      map.mutable_mem()->set_buffer_id(buffer->buffer().buffer_id());
      map.mutable_mem()->set_length_bytes(4096);
      map.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
      absl::StatusOr<v1::MapResponse> mapped = client.Map(map);
      absl::Status unmapped = mapped.status();
      if (mapped.ok()) {
        v1::UnmapRequest unmap;
        unmap.set_dma_addr(mapped->dma_addr());
        // Every other mapping stays, so the count checks Map too.
        if (pairs++ % 2 == 0) {
          unmapped = client.Unmap(unmap).status();
        } else {
          ++mappings;
        }
      }
      if (!unmapped.ok()) {
        absl::MutexLock lock(&mu);
        failures.push_back(unmapped);
        return;
      }
    }
  });
  for (int kill = 0; kill < 12; ++kill) {
    absl::SleepFor(absl::Milliseconds(50 + (37 * kill) % 150));
    daemon.Kill();
    ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  }
  absl::SleepFor(absl::Milliseconds(200));
  stop = true;
  traffic.join();
  for (const absl::Status& s : failures) ADD_FAILURE() << s;
  EXPECT_GT(pairs.load(), 8);
  ASSERT_OK_AND_ASSIGN(admin, Client::Connect({.target = daemon.unix_target()}));
  ASSERT_OK_AND_ASSIGN(devices, admin.ListDevices());
  for (const v1::DeviceInfo& d : devices.devices()) {
    if (d.config().name() != "nic0") continue;
    EXPECT_EQ(d.buffers(), static_cast<uint64_t>(buffers.load()));
    EXPECT_EQ(d.mappings(), static_cast<uint64_t>(mappings.load()));
  }
}

// A Batch stream under the same kills: each message's results are those of
// one application (every Map answered with a mapping its later Unmap
// removes), and nothing is left mapped.
TEST(ClientRequestIdTest, BatchMessagesCutByDaemonKillsTakeEffectOnce) {
  IommudProcess daemon;
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  ASSERT_OK_AND_ASSIGN(client, Client::Connect({.target = daemon.unix_target(),
                                                .device = "nic0",
                                                .default_deadline = absl::Seconds(15)}));
  ASSERT_OK_AND_ASSIGN(buffer, client.AllocBufferScoped(64 * 4096, v1::PLACEMENT_CONTIGUOUS));
  ASSERT_OK_AND_ASSIGN(batch, BatchStream::Open(client));
  std::atomic<bool> stop{false};
  std::thread killer([&] {
    for (int kill = 0; kill < 6 && !stop.load(); ++kill) {
      absl::SleepFor(absl::Milliseconds(120 + 41 * kill));
      daemon.Kill();
      ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
    }
  });
  // Each message unmaps what the one before it mapped and maps 64 pages
  // more; four in flight.
  std::deque<BatchStream::ResponseFuture> window;
  std::vector<uint64_t> to_unmap;
  int messages = 0;
  const absl::Time end = absl::Now() + absl::Seconds(3);
  while (absl::Now() < end || !window.empty()) {
    if (absl::Now() < end && window.size() < 4) {
      for (int page = 0; page < 64; ++page)
        batch->AddMap(buffer.id(), page * 4096, 4096, v1::DMA_DIRECTION_TO_DEVICE);
      window.push_back(batch->Send());
      ++messages;
      continue;
    }
    absl::StatusOr<BatchReply> reply = window.front().get();
    window.pop_front();
    ASSERT_TRUE(reply.ok()) << reply.status();
    for (const v1::BatchResult& r : reply->results()) {
      ASSERT_TRUE(BatchResultStatus(r).ok()) << BatchResultStatus(r);
      if (r.has_map()) to_unmap.push_back(r.map().dma_addr());
    }
    for (uint64_t dma_addr : to_unmap) batch->AddUnmap(dma_addr);
    to_unmap.clear();
    if (batch->pending() > 0) window.push_back(batch->Send());
  }
  stop = true;
  killer.join();
  const absl::Status closed = batch->Close();
  EXPECT_TRUE(closed.ok()) << closed;
  EXPECT_GT(messages, 6);
  ASSERT_OK_AND_ASSIGN(admin, Client::Connect({.target = daemon.unix_target()}));
  ASSERT_OK_AND_ASSIGN(devices, admin.ListDevices());
  for (const v1::DeviceInfo& d : devices.devices()) {
    if (d.config().name() == "nic0") {
      EXPECT_EQ(d.mappings(), 0u);
    }
  }
}

// A stream broken while idle (every message answered) closes OK: nothing
// was lost, and Close() does not wait for a daemon to reopen to (it used to
// answer UNAVAILABLE when a kill landed after the last reply).
TEST(ClientRequestIdTest, ClosingAStreamBrokenWhileIdleIsOk) {
  IommudProcess daemon;
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  ASSERT_OK_AND_ASSIGN(client, Client::Connect({.target = daemon.unix_target(),
                                                .device = "nic0",
                                                .default_deadline = absl::Seconds(15)}));
  ASSERT_OK_AND_ASSIGN(buffer, client.AllocBufferScoped(4 * 4096, v1::PLACEMENT_CONTIGUOUS));
  ASSERT_OK_AND_ASSIGN(batch, BatchStream::Open(client));
  batch->AddMap(buffer.id(), 0, 4096, v1::DMA_DIRECTION_TO_DEVICE);
  ASSERT_OK_AND_ASSIGN(reply, batch->Flush());
  ASSERT_EQ(reply.results_size(), 1);
  ASSERT_TRUE(BatchResultStatus(reply.results(0)).ok()) << BatchResultStatus(reply.results(0));
  EXPECT_EQ(daemon.Kill(), -SIGKILL);
  absl::SleepFor(absl::Milliseconds(300));  // the reader is waiting to reopen
  const absl::Time before = absl::Now();
  const absl::Status closed = batch->Close();
  EXPECT_TRUE(closed.ok()) << closed;
  EXPECT_LT(absl::Now() - before, absl::Seconds(5)) << "Close() waited for the daemon";
  absl::StatusOr<BatchReply> after = batch->Send().get();
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition) << after.status();
  // The answered Map survived the kill.
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  ASSERT_OK_AND_ASSIGN(admin, Client::Connect({.target = daemon.unix_target()}));
  ASSERT_OK_AND_ASSIGN(devices, admin.ListDevices());
  for (const v1::DeviceInfo& d : devices.devices()) {
    if (d.config().name() == "nic0") {
      EXPECT_EQ(d.mappings(), 1u);
    }
  }
}

// Writes a CA, a server certificate and SPIFFE client certificates with openssl.
class Pki {
 public:
  explicit Pki(std::string dir) : dir_(std::move(dir)) {}
  bool Make() {
    const std::string d = dir_;
    std::ofstream(d + "/server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
    std::ofstream(d + "/nic0.ext") << "subjectAltName=URI:spiffe://iommu-broker/device/nic0\n";
    std::ofstream(d + "/admin.ext") << "subjectAltName=URI:spiffe://iommu-broker/admin\n";
    std::string script =
        "set -e; cd " + d +
        "; openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key "
        "-out ca.pem 2>/dev/null";
    for (const char* name : {"server", "nic0", "admin"}) {
      script +=
          absl::StrCat("; openssl req -newkey rsa:2048 -nodes -subj /CN=", name, " -keyout ", name,
                       ".key -out ", name, ".csr 2>/dev/null; openssl x509 -req -in ", name,
                       ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ", name,
                       ".ext -out ", name, ".pem 2>/dev/null");
    }
    return std::system(("bash -c '" + script + "'").c_str()) == 0;
  }
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }

 private:
  std::string dir_;
};

TEST(ClientAuthTest, TokenIdentityActsOnlyAsItsDeviceOverTls) {
  const std::string dir = testing::MakeTempDir();
  Pki pki(dir);
  ASSERT_TRUE(pki.Make());
  std::ofstream(dir + "/tokens")
      << "# test tokens\ntok-nic0-5f1c9a2e7b nic0\ntok-admin-0d3b8e61f4 admin\n";
  IommudProcess daemon;
  ASSERT_TRUE(
      daemon
          .Start({"--auth=token", "--token_file=" + dir + "/tokens",
                  "--tls_cert=" + pki.Path("server.pem"), "--tls_key=" + pki.Path("server.key")})
          .ok())
      << daemon.Log();
  for (const std::string& target : {daemon.unix_target(), daemon.tcp_target()}) {
    SCOPED_TRACE(target);
    auto connect = [&](const std::string& token, const std::string& device) {
      Options o{.target = target, .device = device};
      o.credentials = {
          .kind = Credentials::Kind::kToken, .token = token, .tls_ca_file = pki.Path("ca.pem")};
      return *Client::Connect(o);
    };
    EXPECT_EQ(connect("wrong-token-0123456789", "nic0").ListDevices().status().code(),
              absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(connect("tok-nic0-5f1c9a2e7b", "nvme0").ListDevices().status().code(),
              absl::StatusCode::kPermissionDenied);
    ASSERT_OK_AND_ASSIGN(own, connect("tok-nic0-5f1c9a2e7b", "").ListDevices());
    ASSERT_EQ(own.devices_size(), 1);
    EXPECT_EQ(own.devices(0).config().name(), "nic0");
    ASSERT_OK_AND_ASSIGN(all, connect("tok-admin-0d3b8e61f4", "").ListDevices());
    EXPECT_GT(all.devices_size(), 1);
    // A plaintext client does not get through the TLS listener.
    Options plain{.target = target, .device = "nic0", .retry = {.max_attempts = 1}};
    plain.default_deadline = absl::Seconds(3);
    EXPECT_EQ(Client::Connect(plain)->ListDevices().status().code(),
              absl::StatusCode::kUnavailable);
  }
  // Without the daemon's CA the SDK refuses to send the token at all.
  Options no_ca{.target = daemon.tcp_target()};
  no_ca.credentials = {.kind = Credentials::Kind::kToken, .token = "tok-nic0-5f1c9a2e7b"};
  const absl::Status refused = Client::Connect(no_ca).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("credentials.tls_ca_file"), std::string::npos) << refused;
  // A CA that did not sign the daemon's certificate fails the handshake.
  Pki other(testing::MakeTempDir());
  ASSERT_TRUE(other.Make());
  Options wrong_ca{.target = daemon.tcp_target(), .retry = {.max_attempts = 1}};
  wrong_ca.default_deadline = absl::Seconds(3);
  wrong_ca.credentials = {.kind = Credentials::Kind::kToken,
                          .token = "tok-nic0-5f1c9a2e7b",
                          .tls_ca_file = other.Path("ca.pem")};
  EXPECT_EQ(Client::Connect(wrong_ca)->ListDevices().status().code(),
            absl::StatusCode::kUnavailable);
  // The token file form iommuctl reads.
  EXPECT_EQ(*ReadTokenFile(dir + "/tokens"), "tok-nic0-5f1c9a2e7b");

  // iommuctl: --token_file with --tls_ca, on both listeners (the unix: one
  // checks the certificate against "localhost" by default).
  for (const std::string& target : {daemon.unix_target(), daemon.tcp_target()}) {
    SCOPED_TRACE(target);
    const testing::CtlResult own =
        testing::RunCtl({"--target=" + target, "--token_file=" + dir + "/tokens",
                         "--tls_ca=" + pki.Path("ca.pem"), "--json", "list-devices"});
    EXPECT_EQ(own.exit_code, 0) << own.err;
    EXPECT_NE(own.out.find("\"nic0\""), std::string::npos) << own.out;
    EXPECT_EQ(own.out.find("\"nvme0\""), std::string::npos) << own.out;
  }
  const testing::CtlResult ctl_no_ca = testing::RunCtl(
      {"--target=" + daemon.tcp_target(), "--token_file=" + dir + "/tokens", "list-devices"});
  EXPECT_EQ(ctl_no_ca.exit_code, 3);  // INVALID_ARGUMENT, before any connection
  EXPECT_NE(ctl_no_ca.err.find("--tls_ca=\"\": a token is sent only over TLS"), std::string::npos)
      << ctl_no_ca.err;
  const testing::CtlResult with_cert = testing::RunCtl(
      {"--target=" + daemon.tcp_target(), "--token=tok-nic0-5f1c9a2e7b",
       "--tls_ca=" + pki.Path("ca.pem"), "--tls_cert=" + pki.Path("nic0.pem"), "list-devices"});
  EXPECT_EQ(with_cert.exit_code, 3);
  EXPECT_NE(with_cert.err.find("credentials.tls_cert_file"), std::string::npos) << with_cert.err;
}

TEST(ClientAuthTest, MutualTlsOverUnixAndTcp) {
  const std::string dir = testing::MakeTempDir();
  Pki pki(dir);
  ASSERT_TRUE(pki.Make());
  IommudProcess daemon;
  ASSERT_TRUE(daemon
                  .Start({"--auth=mtls", "--tls_cert=" + pki.Path("server.pem"),
                          "--tls_key=" + pki.Path("server.key"), "--tls_ca=" + pki.Path("ca.pem")})
                  .ok())
      << daemon.Log();
  for (const std::string& target : {daemon.unix_target(), daemon.tcp_target()}) {
    SCOPED_TRACE(target);
    auto connect = [&](const std::string& who, const std::string& device) {
      Options o{.target = target, .device = device};
      o.credentials = {.kind = Credentials::Kind::kMtls,
                       .tls_cert_file = pki.Path(who + ".pem"),
                       .tls_key_file = pki.Path(who + ".key"),
                       .tls_ca_file = pki.Path("ca.pem")};
      if (target.rfind("unix:", 0) != 0) o.credentials.tls_server_name = "localhost";
      return *Client::Connect(o);
    };
    ASSERT_OK_AND_ASSIGN(own, connect("nic0", "").ListDevices());
    ASSERT_EQ(own.devices_size(), 1);
    EXPECT_EQ(own.devices(0).config().name(), "nic0");
    EXPECT_EQ(connect("nic0", "gpu0").ListDevices().status().code(),
              absl::StatusCode::kPermissionDenied);
    ASSERT_OK_AND_ASSIGN(all, connect("admin", "").ListDevices());
    EXPECT_GT(all.devices_size(), 1);
    // The admin acts as the request's device.
    Client as_gpu = connect("admin", "gpu0");
    ASSERT_OK_AND_ASSIGN(buffer, as_gpu.AllocBufferScoped(4096));
    EXPECT_EQ(buffer.info().device(), "gpu0");
    // No client certificate: the call does not get through.
    absl::StatusOr<Client> plain =
        Client::Connect({.target = target, .device = "nic0", .retry = {.max_attempts = 1}});
    EXPECT_FALSE(plain->ListDevices().ok());
  }
}

}  // namespace
}  // namespace iommu::client
