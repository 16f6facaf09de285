// SPDX-License-Identifier: Apache-2.0
// Integration: the real iommud's lifecycle — health, reflection, session
// leases reclaimed when the client stops keeping alive, lost-fault counting
// on WatchFaults, and a SIGTERM drain under load (exit 0, streams end).

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "tests/daemon_harness.h"
#include "tests/health_probe.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

TEST(HealthTest, ServingPerService) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  auto channel = Insecure(daemon.unix_target());
  for (const char* service : {"", "iommu.v1.Dma", "iommu.v1.Memory", "iommu.v1.Domains",
                              "iommu.v1.Devices", "iommu.v1.Sessions", "iommu.v1.Stats"}) {
    EXPECT_EQ(HealthCheck(channel, service), 1) << service;
  }
  EXPECT_EQ(HealthCheck(channel, "nope.v1.Nothing"), -int(StatusCode::NOT_FOUND));
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(SessionTest, LeaseExpiryReclaimsEverything) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  v1::OpenSessionRequest open;
  open.set_device("gpu0");
  open.set_ttl_ms(400);
  v1::OpenSessionResponse session;
  ASSERT_OK(s.sessions->OpenSession(Ctx().get(), open, &session));
  const uint64_t id = session.session_id();
  v1::AllocBufferRequest ab;
  ab.set_device("gpu0");
  ab.set_size_bytes(1 << 20);
  ab.set_placement(v1::PLACEMENT_SCATTERED);
  v1::AllocBufferResponse buffer;
  ASSERT_OK(s.memory->AllocBuffer(Ctx("", id).get(), ab, &buffer));
  v1::MapRequest map;
  map.set_device("gpu0");
  *map.mutable_mem() = BufferRef(buffer.buffer().buffer_id(), 0, 1 << 20);
  map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapResponse mapped;
  ASSERT_OK(s.dma->Map(Ctx("", id).get(), map, &mapped));
  v1::ListDevicesRequest ld;
  ld.set_device("gpu0");
  v1::ListDevicesResponse devices;
  ASSERT_OK(s.devices->ListDevices(Ctx().get(), ld, &devices));
  EXPECT_EQ(devices.devices(0).mappings(), 1u);

  // Keeping alive holds the lease past its TTL...
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    v1::KeepAliveRequest ka;
    ka.set_device("gpu0");
    ka.set_session_id(id);
    v1::KeepAliveResponse kept;
    ASSERT_OK(s.sessions->KeepAlive(Ctx().get(), ka, &kept));
  }
  v1::GetBufferRequest gb;
  gb.set_device("gpu0");
  gb.set_buffer_id(buffer.buffer().buffer_id());
  v1::GetBufferResponse got;
  ASSERT_OK(s.memory->GetBuffer(Ctx().get(), gb, &got));

  // ...and a client that stops (dies) loses it: everything is released.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  grpc::Status status;
  while (std::chrono::steady_clock::now() < deadline) {
    status = s.memory->GetBuffer(Ctx().get(), gb, &got);
    if (!status.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_CODE(status, NOT_FOUND);
  ASSERT_OK(s.devices->ListDevices(Ctx().get(), ld, &devices));
  EXPECT_EQ(devices.devices(0).mappings(), 0u);
  EXPECT_EQ(devices.devices(0).mapped_bytes(), 0u);
  v1::TranslateRequest tr;
  tr.set_device("gpu0");
  tr.set_iova(mapped.dma_addr());
  tr.set_length_bytes(4096);
  tr.set_access(v1::ACCESS_KIND_READ);
  v1::TranslateResponse translated;
  ASSERT_OK(s.devices->Translate(Ctx().get(), tr, &translated));
  EXPECT_TRUE(translated.faulted());
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(WatchFaultsTest, CountsLostRecords) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--fault_ring_size=8"})) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  v1::TranslateRequest tr;
  tr.set_device("dsp0");
  tr.set_iova(0x40000);
  tr.set_length_bytes(4);
  tr.set_access(v1::ACCESS_KIND_READ);
  for (int i = 0; i < 20; ++i) {
    v1::TranslateResponse out;
    ASSERT_OK(s.devices->Translate(Ctx().get(), tr, &out));
    ASSERT_TRUE(out.faulted());
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::WatchFaultsRequest wf;  // admin: every device, from the start
  auto watch = s.devices->WatchFaults(&ctx, wf);
  v1::FaultEvent event;
  ASSERT_TRUE(watch->Read(&event));
  EXPECT_EQ(event.lost(), 12u);
  ASSERT_EQ(event.records_size(), 8);
  EXPECT_EQ(event.records(0).seq(), 13u);
  EXPECT_EQ(event.records(7).seq(), 20u);
  ctx.TryCancel();
  watch->Finish();
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(DrainTest, SigtermUnderLoadDrainsCleanly) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--drain_timeout=5s"})) << daemon.log();
  const std::string target = daemon.unix_target();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> maps{0};
  std::vector<std::thread> clients;
  const char* devices[] = {"nic0", "nvme0", "gpu0"};
  for (const char* device : devices) {
    clients.emplace_back([&, device] {
      Stubs s(Insecure(target));
      v1::AllocBufferRequest ab;
      ab.set_device(device);
      ab.set_size_bytes(64 << 10);
      ab.set_placement(v1::PLACEMENT_SCATTERED);
      v1::AllocBufferResponse buffer;
      if (!s.memory->AllocBuffer(Ctx().get(), ab, &buffer).ok()) return;
      while (!stop) {
        v1::MapRequest map;
        map.set_device(device);
        *map.mutable_mem() = BufferRef(buffer.buffer().buffer_id(), 0, 4096);
        map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
        v1::MapResponse mapped;
        if (!s.dma->Map(Ctx().get(), map, &mapped).ok()) return;
        v1::UnmapRequest unmap;
        unmap.set_device(device);
        unmap.set_dma_addr(mapped.dma_addr());
        v1::UnmapResponse unmapped;
        if (!s.dma->Unmap(Ctx().get(), unmap, &unmapped).ok()) return;
        ++maps;
      }
    });
  }
  // An idle Batch stream and a fault watcher must both be ended by the drain.
  Stubs s(Insecure(target));
  grpc::ClientContext batch_ctx, watch_ctx;
  auto batch = s.dma->Batch(&batch_ctx);
  v1::BatchRequest req;
  req.add_ops()->mutable_unmap()->set_device("nic0");
  ASSERT_TRUE(batch->Write(req));
  v1::BatchResponse resp;
  ASSERT_TRUE(batch->Read(&resp));
  auto watch = s.devices->WatchFaults(&watch_ctx, v1::WatchFaultsRequest());
  const auto warmup = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (maps < 200 && std::chrono::steady_clock::now() < warmup) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(maps.load(), 200u);

  const auto t0 = std::chrono::steady_clock::now();
  const std::optional<int> code = daemon.Stop(std::chrono::seconds(15));
  const double stop_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop = true;
  for (auto& c : clients) c.join();
  EXPECT_EQ(code, 0) << daemon.log();
  EXPECT_LT(stop_s, 5.0);
  // The streams ended from the server side.
  EXPECT_FALSE(batch->Read(&resp));
  EXPECT_CODE(batch->Finish(), UNAVAILABLE);
  v1::FaultEvent event;
  EXPECT_FALSE(watch->Read(&event));
  EXPECT_TRUE(watch->Finish().ok());
  EXPECT_NE(daemon.log().find("drained=true"), std::string::npos) << daemon.log();
}

}  // namespace
}  // namespace iommu::testing

namespace iommu::testing {
namespace {

TEST(StartupTest, TopologyFileDefinesTheHost) {
  const std::string dir = MakeTempDir();
  const std::string topo = dir + "/host.textproto";
  std::ofstream(topo) << R"pb(
    smmus {
      name: "smmu-a"
      stage: STAGE_1
      ias_bits: 48
      oas_bits: 48
      granules_bytes: 4096
      num_contexts: 8
      iotlb_sets: 64
      iotlb_ways: 4
    }
    regions { name: "ram" kind: REGION_KIND_RAM base_phys_addr: 0x80000000 size_bytes: 0x10000000 }
    pools {
      name: "dram"
      priority: 0
      ranges { base_phys_addr: 0x80000000 size_bytes: 0x10000000 }
    }
    devices { name: "acc0" smmu: "smmu-a" stream_id: 7 dma_mask_bits: 40 }
  )pb";
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--topology=" + topo})) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  v1::ListDevicesResponse devices;
  ASSERT_OK(s.devices->ListDevices(Ctx().get(), {}, &devices));
  ASSERT_EQ(devices.devices_size(), 1);
  EXPECT_EQ(devices.devices(0).config().name(), "acc0");
  EXPECT_EQ(devices.devices(0).config().dma_mask_bits(), 40u);
  v1::ListIommusResponse iommus;
  ASSERT_OK(s.devices->ListIommus(Ctx().get(), {}, &iommus));
  ASSERT_EQ(iommus.smmus_size(), 1);
  EXPECT_EQ(iommus.smmus(0).iotlb_sets(), 64u);
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(StartupTest, BadConfigurationFailsFastNamingTheFlag) {
  const std::string dir = MakeTempDir();
  const std::string topo = dir + "/bad.textproto";
  std::ofstream(topo) << "devices { name: \"x\" smmu: \"nowhere\" dma_mask_bits: 32 }\n";
  struct Case {
    std::vector<std::string> flags;
    std::string expect;
  } cases[] = {
      {{"--topology=/nonexistent/host.textproto"}, "topology"},
      {{"--topology=" + topo}, "topology: smmus"},
      {{"--auth=token"}, "token_file"},
      {{"--auth=mtls", "--tls_cert=/nonexistent"}, "tls_cert"},
      {{"--auth=kerberos"}, "auth"},
      {{"--log_format=xml"}, "log_format"},
  };
  for (const Case& c : cases) {
    DaemonProcess daemon;
    EXPECT_FALSE(daemon.Start(c.flags)) << c.expect;
    EXPECT_NE(daemon.log().find(c.expect), std::string::npos) << daemon.log();
  }
}

}  // namespace
}  // namespace iommu::testing
