// SPDX-License-Identifier: Apache-2.0
// Many threads mapping, unmapping and translating on shared and separate
// domains at once; afterwards every invariant holds and nothing leaked.
// Run under the sanitizer builds too (make asan, make tsan).

#include <atomic>
#include <random>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using namespace ::iommu::core::testing;  // NOLINT

TEST(BrokerConcurrencyTest, MapUnmapTranslateOnSharedAndSeparateDomains) {
  auto broker = MakeBroker();
  ASSERT_NE(broker, nullptr);
  // nic0 and nvme0 share a lazy domain; gpu0 and sata0 keep their own.
  auto shared =
      broker->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kDmaFq});
  ASSERT_TRUE(shared.ok());
  ASSERT_TRUE(broker->AttachDevice(Caller::Admin(), "nic0", shared->domain_id).ok());
  ASSERT_TRUE(broker->AttachDevice(Caller::Admin(), "nvme0", shared->domain_id).ok());

  const std::vector<std::string> devices = {"nic0", "nvme0", "gpu0", "sata0"};
  std::atomic<uint64_t> wrong_translations{0};
  std::atomic<uint64_t> ops{0};
  auto worker = [&](const std::string& dev, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const Caller me = Caller::Device(dev);
    for (int i = 0; i < 400; ++i) {
      const uint64_t pages = 1 + rng() % 8;
      auto buf = broker->AllocBuffer(me, dev, pages * 4 * KiB,
                                     rng() % 2 ? Placement::kScattered : Placement::kContiguous);
      ASSERT_TRUE(buf.ok()) << buf.status();
      Iova dma;
      bool sg = rng() % 2;
      if (sg) {
        MapSgRequest req{.mode = SgMode::kMerge};
        uint64_t off = 0;
        for (const PhysRun& r : buf->runs) {
          req.segments.push_back(
              {.buffer_id = buf->buffer_id, .offset_bytes = off, .length_bytes = r.size_bytes});
          off += r.size_bytes;
        }
        auto m = broker->MapSg(me, dev, req);
        ASSERT_TRUE(m.ok()) << m.status();
        dma = m->segments[0].dma_addr;
      } else {
        auto m = broker->Map(
            me, dev, {.mem = {.buffer_id = buf->buffer_id, .length_bytes = pages * 4 * KiB}});
        ASSERT_TRUE(m.ok()) << m.status();
        dma = m->dma_addr;
      }
      // The first page must translate to the buffer's first page.
      auto t =
          broker->Translate(me, {.device = dev, .iova = dma, .length_bytes = 8, .access = Read()});
      ASSERT_TRUE(t.ok());
      if (t->faulted || t->pages[0].phys_addr != buf->runs[0].start) {
        ++wrong_translations;
      }
      // Stray accesses fault (or hit stale entries in the lazy domain).
      auto stray = broker->Translate(me, {.device = dev,
                                          .iova = Iova((rng() % (1u << 20)) << 12),
                                          .length_bytes = 4,
                                          .access = Write()});
      ASSERT_TRUE(stray.ok());
      ASSERT_TRUE(sg ? broker->UnmapSg(me, dev, dma).ok() : broker->Unmap(me, dev, {dma}).ok());
      ASSERT_TRUE(broker->FreeBuffer(me, buf->buffer_id).ok());
      ops += 4;
    }
  };
  std::vector<std::thread> threads;
  for (size_t i = 0; i < devices.size(); ++i) threads.emplace_back(worker, devices[i], 100 + i);
  // An admin thread reads statistics and ticks the flush queues meanwhile.
  std::atomic<bool> done{false};
  std::thread observer([&] {
    while (!done) {
      BrokerStats s = broker->GetStats(Caller::Admin()).value();
      ASSERT_GE(s.domains.size(), devices.size());
      broker->Tick();
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  observer.join();
  EXPECT_EQ(wrong_translations.load(), 0u);
  EXPECT_EQ(ops.load(), 4u * 400u * devices.size());
  broker->CheckInvariants();
  for (const DeviceInfo& d : testing::Value(broker->ListDevices(Caller::Admin()))) {
    EXPECT_EQ(d.mappings, 0u) << d.config.name;
    EXPECT_EQ(d.buffers, 0u) << d.config.name;
  }
}

// One device's memory used from other domains while its owner frees and
// re-creates it: an admin maps gpu0's buffer for sata0 in Batch runs
// (references taken without a table lock), nic0 imports gpu0's exported
// Alloc and unmaps it, and gpu0 frees both (revoking the export, which
// unmaps nic0's imports) and makes them again. Every call answers OK or the
// documented code of losing the race; afterwards every invariant holds and
// nothing is left once the users stop.
TEST(BrokerConcurrencyTest, SharedMemoryRacesWithFreesAndRevocations) {
  auto broker = MakeBroker();
  ASSERT_NE(broker, nullptr);
  const Caller gpu = Caller::Device("gpu0");
  const Caller nic = Caller::Device("nic0");
  absl::Mutex mu;
  uint64_t buffer_id = 0;  // gpu0's buffer the admin maps
  std::string token;       // gpu0's export nic0 imports
  Iova alloc_dma;          // gpu0's Alloc behind the token
  auto remake = [&]() {
    auto buf = broker->AllocBuffer(gpu, "gpu0", 16 * KiB, Placement::kContiguous);
    ASSERT_TRUE(buf.ok()) << buf.status();
    auto a = broker->Alloc(gpu, "gpu0", {.size_bytes = 8 * KiB});
    ASSERT_TRUE(a.ok()) << a.status();
    auto sg = broker->GetSgTable(gpu, "gpu0", a->dma_addr, ExportGrant{});
    ASSERT_TRUE(sg.ok()) << sg.status();
    absl::MutexLock l(&mu);
    buffer_id = buf->buffer_id;
    token = sg->export_token;
    alloc_dma = a->dma_addr;
  };
  remake();
  auto lost_race = [](const absl::Status& s) {
    return s.ok() || s.code() == absl::StatusCode::kNotFound ||
           s.code() == absl::StatusCode::kFailedPrecondition;
  };
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> batch_maps{0}, imports{0}, frees{0};
  std::thread admin([&] {
    std::vector<DmaBatchOp> ops(16);
    std::vector<DmaBatchResult> results(16);
    while (!stop) {
      uint64_t id;
      {
        absl::MutexLock l(&mu);
        id = buffer_id;
      }
      for (size_t i = 0; i < 8; ++i) {
        ops[i] = MapRequest{
            .mem = {.buffer_id = id, .offset_bytes = (i % 4) * 4 * KiB, .length_bytes = 4 * KiB}};
      }
      broker->MapUnmapBatch(Caller::Admin(), "sata0", absl::MakeConstSpan(ops).first(8),
                            absl::MakeSpan(results).first(8));
      size_t n = 0;
      for (size_t i = 0; i < 8; ++i) {
        ASSERT_TRUE(lost_race(results[i].status)) << results[i].status;
        if (results[i].status.ok()) {
          ops[8 + n++] = UnmapRequest{.dma_addr = results[i].map.dma_addr};
        }
      }
      batch_maps += n;
      broker->MapUnmapBatch(Caller::Admin(), "sata0", absl::MakeConstSpan(ops).subspan(8, n),
                            absl::MakeSpan(results).subspan(8, n));
      for (size_t i = 8; i < 8 + n; ++i) ASSERT_TRUE(results[i].status.ok()) << results[i].status;
    }
  });
  std::thread importer([&] {
    while (!stop) {
      std::string t;
      {
        absl::MutexLock l(&mu);
        t = token;
      }
      auto m =
          broker->MapSg(nic, "nic0", {.import_token = t, .direction = DmaDirection::kToDevice});
      ASSERT_TRUE(lost_race(m.status())) << m.status();
      if (!m.ok()) continue;
      ++imports;
      const absl::Status s = broker->UnmapSg(nic, "nic0", m->iova);
      ASSERT_TRUE(lost_race(s)) << s;  // NOT_FOUND when a revocation unmapped it
    }
  });
  for (uint64_t round = 0; round < 150; ++round) {
    // Let the users in before each free.
    while (batch_maps.load() <= round || imports.load() <= round / 2) std::this_thread::yield();
    uint64_t id;
    Iova dma;
    {
      absl::MutexLock l(&mu);
      id = buffer_id;
      dma = alloc_dma;
    }
    ASSERT_TRUE(broker->Free(gpu, "gpu0", dma).ok());
    // Refused while the admin's mappings reference it; retried until free.
    absl::Status s;
    while (!(s = broker->FreeBuffer(gpu, id)).ok()) {
      ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    }
    ++frees;
    remake();
  }
  stop = true;
  admin.join();
  importer.join();
  broker->CheckInvariants();
  EXPECT_GE(batch_maps.load(), 150u);
  EXPECT_EQ(frees.load(), 150u);
  ASSERT_TRUE(broker->Free(gpu, "gpu0", alloc_dma).ok());
  ASSERT_TRUE(broker->FreeBuffer(gpu, buffer_id).ok());
  broker->CheckInvariants();
  for (const DeviceInfo& d : testing::Value(broker->ListDevices(Caller::Admin()))) {
    EXPECT_EQ(d.mappings, 0u) << d.config.name;
    EXPECT_EQ(d.buffers, 0u) << d.config.name;
  }
}

}  // namespace
}  // namespace iommu::core
