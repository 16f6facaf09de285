// SPDX-License-Identifier: Apache-2.0
// Integration: the daemon's resident memory after large requests
// (docs/design.md#memory-bound). Finding: RSS high-water marks never came
// back after large MapSg and TranslateBatch calls (the allocator kept every
// page the request had used). Now the heap is returned once large calls have
// settled, and RSS comes back near where it was before them.

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

uint64_t RssKib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

// The mappings of `pid` holding the most resident memory, one a line
// ("<KiB> <range> <name>"), for a failure's message.
std::string LargestMappings(pid_t pid) {
  std::ifstream smaps("/proc/" + std::to_string(pid) + "/smaps");
  std::vector<std::pair<uint64_t, std::string>> regions;
  std::string line, header;
  while (std::getline(smaps, line)) {
    if (line.find('-') != std::string::npos && line.find(':') > line.find(' ')) {
      header = line;
    } else if (line.rfind("Rss:", 0) == 0) {
      regions.push_back({std::stoull(line.substr(4)), header});
    }
  }
  std::sort(regions.rbegin(), regions.rend());
  std::string out;
  for (size_t i = 0; i < regions.size() && i < 8; ++i) {
    out += std::to_string(regions[i].first) + " KiB " + regions[i].second + "\n";
  }
  return out;
}

// The largest requests the default limits allow, several times over: MapSg of
// --max_sg_segments (65536) segments in DMA_API mode (a reply of as many DMA
// segments), then its UnmapSg, and TranslateBatch of
// --max_translate_accesses (16384) accesses. Without the release they left
// the daemon 18-24 MiB above the baseline; now RSS returns to within 8 MiB
// of it.
TEST(MemoryReleaseTest, RssReturnsNearTheBaselineAfterLargeMapSgAndTranslateBatch) {
  constexpr int kSegments = 65536;
  constexpr int kAccesses = 16384;
  constexpr uint64_t kPages = 4096;  // the buffer the segments cycle over
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--no_store"})) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  v1::AllocBufferRequest ab;
  ab.set_device("nic0");
  ab.set_size_bytes(kPages * 4096);
  ab.set_placement(v1::PLACEMENT_SCATTERED);
  v1::AllocBufferResponse buffer;
  ASSERT_OK(s.memory->AllocBuffer(Ctx().get(), ab, &buffer));
  const uint64_t id = buffer.buffer().buffer_id();
  v1::MapRequest map;
  map.set_device("nic0");
  *map.mutable_mem() = BufferRef(id, 0, 4096);
  map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapResponse page;
  ASSERT_OK(s.dma->Map(Ctx().get(), map, &page));

  auto map_sg = [&](int segments) {
    v1::MapSgRequest r;
    r.set_device("nic0");
    r.set_mode(v1::SG_MODE_DMA_API);
    r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    for (int i = 0; i < segments; ++i) {
      *r.add_segments() = BufferRef(id, (static_cast<uint64_t>(i) % kPages) * 4096, 4096);
    }
    v1::MapSgResponse out;
    ASSERT_OK(s.dma->MapSg(Ctx().get(), r, &out));
    ASSERT_EQ(out.segment_count(), static_cast<uint32_t>(segments));
    v1::UnmapSgRequest u;
    u.set_device("nic0");
    u.set_dma_addr(out.iova());
    v1::UnmapSgResponse unmapped;
    ASSERT_OK(s.dma->UnmapSg(Ctx().get(), u, &unmapped));
  };
  auto translate_batch = [&](int accesses) {
    v1::TranslateBatchRequest r;
    for (int i = 0; i < accesses; ++i) {
      v1::TranslateRequest* a = r.add_accesses();
      a->set_device("nic0");
      a->set_iova(page.dma_addr() + static_cast<uint64_t>(i % 1024) * 4);
      a->set_length_bytes(4);
      a->set_access(v1::ACCESS_KIND_READ);
    }
    v1::TranslateBatchResponse out;
    ASSERT_OK(s.devices->TranslateBatch(Ctx().get(), r, &out));
    ASSERT_EQ(out.results_size(), accesses);
    ASSERT_FALSE(out.results(0).faulted());
  };
  // Small calls of each kind first, so that the baseline has what any call
  // costs once (code paths, gRPC's buffers).
  ASSERT_NO_FATAL_FAILURE(map_sg(16));
  ASSERT_NO_FATAL_FAILURE(translate_batch(16));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t baseline = RssKib(daemon.pid());
  ASSERT_GT(baseline, 0u);

  uint64_t peak = baseline;
  for (int round = 0; round < 3; ++round) {
    ASSERT_NO_FATAL_FAILURE(map_sg(kSegments));
    peak = std::max(peak, RssKib(daemon.pid()));
    ASSERT_NO_FATAL_FAILURE(translate_batch(kAccesses));
    peak = std::max(peak, RssKib(daemon.pid()));
  }
  // The memory is returned once the calls have settled (the daemon's timer
  // trims 100 ms after the last one); measured after that, and waited for
  // up to 10 s more.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const uint64_t bound = baseline + 8 * 1024;
  uint64_t after = RssKib(daemon.pid());
  for (int i = 0; i < 100 && after > bound; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    after = RssKib(daemon.pid());
  }
  std::printf("VmRSS: %.1f MiB before, %.1f MiB at the peak, %.1f MiB after (bound %.1f MiB)\n",
              baseline / 1024.0, peak / 1024.0, after / 1024.0, bound / 1024.0);
  EXPECT_LE(after, bound) << LargestMappings(daemon.pid());
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace iommu::testing
