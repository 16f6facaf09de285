// SPDX-License-Identifier: Apache-2.0
// The DMA API through the whole model (ownership checks, IOVA, page table,
// IOTLB, accounting), beside the engine figures of the other benchmarks.

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "core/broker/broker.h"

namespace iommu::core {
namespace {

constexpr uint64_t KiB = 1024;

// Measured as iommud runs: Debian's abseil is built without NDEBUG, so its
// Mutex checks lock order against a global graph on every acquisition unless
// the process turns that off (the daemon does; the tests keep it).
[[maybe_unused]] const bool kNoDeadlockDetection = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

std::unique_ptr<Broker> NewBroker() {
  auto b = Broker::Create(DefaultTopology());
  if (!b.ok()) std::abort();
  return *std::move(b);
}

// dma_map_page + dma_unmap_page of one 4 KiB page of an owned buffer.
void BM_MapUnmap4K(benchmark::State& state) {
  auto broker = NewBroker();
  const Caller nic = Caller::Device("nic0");
  auto buf = broker->AllocBuffer(nic, "nic0", 4 * KiB, Placement::kContiguous);
  const MapRequest req{.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}};
  for (auto _ : state) {
    auto m = broker->Map(nic, "nic0", req);
    benchmark::DoNotOptimize(m);
    if (!broker->Unmap(nic, "nic0", {m->dma_addr}).ok()) std::abort();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MapUnmap4K);

// The same through MapUnmapBatch, as the Batch RPC applies a message of
// `batch` unmaps then `batch` maps (one device): per map+unmap pair.
void BM_MapUnmapBatch4K(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  auto broker = NewBroker();
  const Caller nic = Caller::Device("nic0");
  auto buf = broker->AllocBuffer(nic, "nic0", 4 * KiB, Placement::kContiguous);
  std::vector<DmaBatchOp> ops(2 * batch);
  std::vector<DmaBatchResult> results(2 * batch);
  for (size_t i = 0; i < batch; ++i) {
    ops[i] = UnmapRequest{};
    ops[batch + i] = MapRequest{.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}};
  }
  // The first message only maps.
  broker->MapUnmapBatch(nic, "nic0", absl::MakeConstSpan(ops).subspan(batch),
                        absl::MakeSpan(results).subspan(batch));
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) ops[i] = UnmapRequest{results[batch + i].map.dma_addr};
    broker->MapUnmapBatch(nic, "nic0", ops, absl::MakeSpan(results));
    for (const DmaBatchResult& r : results) {
      if (!r.status.ok()) std::abort();
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
}
BENCHMARK(BM_MapUnmapBatch4K)->Arg(1)->Arg(64)->Arg(1024);

// Scaling across devices: each thread is its own device mapping and
// unmapping a page of its own buffer, one call at a time (range(0) == 1) or
// in Batch messages of range(0) unmaps then range(0) maps. range(1) == 0:
// nic0 and nvme0, two domains behind one SMMU (whose IOTLB lock they share);
// 1: nic0 and cam0, behind two SMMUs. Items are map+unmap pairs, summed over
// the threads (real time), so the 2-thread figure over the 1-thread one is
// the scaling.
std::unique_ptr<Broker> scaling_broker;
uint64_t scaling_buffers[2];
constexpr const char* kScalingPairs[2][2] = {{"nic0", "nvme0"}, {"nic0", "cam0"}};

void BM_MapUnmapScaling(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  const auto& kScalingDevices = kScalingPairs[state.range(1)];
  if (state.thread_index() == 0) {
    scaling_broker = NewBroker();
    for (int t = 0; t < 2; ++t) {
      auto buf = scaling_broker->AllocBuffer(Caller::Device(kScalingDevices[t]), kScalingDevices[t],
                                             4 * KiB, Placement::kContiguous);
      if (!buf.ok()) std::abort();
      scaling_buffers[t] = buf->buffer_id;
    }
  }
  const int t = state.thread_index();
  const std::string device = kScalingDevices[t];
  const Caller caller = Caller::Device(device);
  const MemRef mem{.buffer_id = scaling_buffers[t], .length_bytes = 4 * KiB};
  std::vector<DmaBatchOp> ops(2 * batch);
  std::vector<DmaBatchResult> results(2 * batch);
  for (size_t i = 0; i < batch; ++i) {
    ops[i] = UnmapRequest{};
    ops[batch + i] = MapRequest{.mem = mem};
  }
  bool first = true;
  for (auto _ : state) {
    if (batch == 1) {
      auto m = scaling_broker->Map(caller, device, {.mem = mem});
      if (!m.ok() || !scaling_broker->Unmap(caller, device, {m->dma_addr}).ok()) std::abort();
      continue;
    }
    if (first) {  // the first message only maps
      scaling_broker->MapUnmapBatch(caller, device, absl::MakeConstSpan(ops).subspan(batch),
                                    absl::MakeSpan(results).subspan(batch));
      first = false;
    }
    for (size_t i = 0; i < batch; ++i) ops[i] = UnmapRequest{results[batch + i].map.dma_addr};
    scaling_broker->MapUnmapBatch(caller, device, ops, absl::MakeSpan(results));
    for (const DmaBatchResult& r : results) {
      if (!r.status.ok()) std::abort();
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
  if (state.thread_index() == 0) scaling_broker.reset();
}
BENCHMARK(BM_MapUnmapScaling)
    ->ArgsProduct({{1, 64}, {0, 1}})
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

// dma_map_sg (MERGE) + unmap of N scattered 4 KiB pages.
void BM_MapSgUnmap(benchmark::State& state) {
  const uint64_t n = state.range(0);
  auto broker = NewBroker();
  const Caller nic = Caller::Device("gpu0");
  auto buf = broker->AllocBuffer(nic, "gpu0", n * 4 * KiB, Placement::kScattered);
  MapSgRequest req{.mode = SgMode::kMerge};
  for (uint64_t i = 0; i < n; ++i) {
    req.segments.push_back(
        {.buffer_id = buf->buffer_id, .offset_bytes = i * 4 * KiB, .length_bytes = 4 * KiB});
  }
  for (auto _ : state) {
    auto m = broker->MapSg(nic, "gpu0", req);
    benchmark::DoNotOptimize(m);
    if (!m.ok() || !broker->UnmapSg(nic, "gpu0", m->iova).ok()) std::abort();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["segments"] = double(n);
}
BENCHMARK(BM_MapSgUnmap)->Arg(16)->Arg(256);

// A device access that hits the IOTLB; and accesses that miss, walking a
// rotating set of pages four times larger than the IOTLB.
void BM_TranslateHit(benchmark::State& state) {
  auto broker = NewBroker();
  const Caller nic = Caller::Device("nic0");
  auto buf = broker->AllocBuffer(nic, "nic0", 4 * KiB, Placement::kContiguous);
  auto m =
      broker->Map(nic, "nic0", {.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}});
  const TranslateRequest req{.device = "nic0",
                             .iova = m->dma_addr,
                             .length_bytes = 64,
                             .access = {AccessKind::kRead, false}};
  for (auto _ : state) {
    auto t = broker->Translate(nic, req);
    benchmark::DoNotOptimize(t);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TranslateHit);

void BM_TranslateMiss(benchmark::State& state) {
  auto broker = NewBroker();
  const Caller nic = Caller::Device("nic0");
  constexpr uint64_t kPages = 8192;  // 4x the IOTLB's 2048 entries
  auto buf = broker->AllocBuffer(nic, "nic0", kPages * 4 * KiB, Placement::kScattered);
  auto m = broker->Map(nic, "nic0",
                       {.mem = {.buffer_id = buf->buffer_id, .length_bytes = kPages * 4 * KiB}});
  uint64_t i = 0;
  for (auto _ : state) {
    const TranslateRequest req{.device = "nic0",
                               .iova = m->dma_addr + (i++ % kPages) * 4 * KiB,
                               .length_bytes = 64,
                               .access = {AccessKind::kRead, false}};
    auto t = broker->Translate(nic, req);
    benchmark::DoNotOptimize(t);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TranslateMiss);

}  // namespace
}  // namespace iommu::core
