// Many threads mapping, unmapping and translating on shared and separate
// domains at once; afterwards every invariant holds and nothing leaked.
// Run under the sanitizer builds too (make asan, make tsan).

#include <atomic>
#include <random>
#include <thread>

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
      uint64_t dma = 0;
      bool sg = rng() % 2;
      if (sg) {
        MapSgRequest req{.device = dev, .mode = SgMode::kMerge};
        uint64_t off = 0;
        for (const PhysRun& r : buf->runs) {
          req.segments.push_back(
              {.buffer_id = buf->buffer_id, .offset_bytes = off, .length_bytes = r.size_bytes});
          off += r.size_bytes;
        }
        auto m = broker->MapSg(me, req);
        ASSERT_TRUE(m.ok()) << m.status();
        dma = m->segments[0].dma_addr;
      } else {
        auto m = broker->Map(
            me,
            {.device = dev, .mem = {.buffer_id = buf->buffer_id, .length_bytes = pages * 4 * KiB}});
        ASSERT_TRUE(m.ok()) << m.status();
        dma = m->dma_addr;
      }
      // The first page must translate to the buffer's first page.
      auto t =
          broker->Translate(me, {.device = dev, .iova = dma, .length_bytes = 8, .access = Read()});
      ASSERT_TRUE(t.ok());
      if (t->faulted || t->pages[0].phys_addr != buf->runs[0].start.value()) {
        ++wrong_translations;
      }
      // Stray accesses fault (or hit stale entries in the lazy domain).
      auto stray = broker->Translate(me, {.device = dev,
                                          .iova = (rng() % (1u << 20)) << 12,
                                          .length_bytes = 4,
                                          .access = Write()});
      ASSERT_TRUE(stray.ok());
      ASSERT_TRUE(sg ? broker->UnmapSg(me, dev, dma).ok() : broker->Unmap(me, dev, dma).ok());
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

}  // namespace
}  // namespace iommu::core
