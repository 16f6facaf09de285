// SPDX-License-Identifier: Apache-2.0
// The state store at the broker's level (docs/performance.md#store):
//
// - BM_Recover/engine/mappings: a broker journaling into a StateStore maps
//   `mappings` live 4 KiB pages (Batch runs of 1024); then the timed part
//   opens the store (reading and checking every record) and restores the
//   broker from it, as iommud does at start. Reports the store's size.
// - BM_BatchMapUnmap/engine: the broker's own Batch path with the journal,
//   each run unmapping the previous run's 512 mappings and mapping 512 more
//   (the daemon's Batch benchmark without gRPC); engine "none" runs without
//   a journal, for the ratio.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "core/broker/broker.h"
#include "store/state_store.h"

namespace iommu::store {
namespace {

constexpr uint64_t kPage = 4096;

std::string TempDir() {
  char tmpl[] = "/tmp/iommu_store_bench.XXXXXX";
  return mkdtemp(tmpl);
}

const core::Caller kNic = core::Caller::Device("nic0");

// Maps `n` pages of `buffer` through Batch runs of `run` maps.
void MapMany(core::Broker& broker, uint64_t buffer, uint64_t buffer_pages, uint64_t n,
             uint64_t run) {
  std::vector<core::DmaBatchOp> ops;
  std::vector<core::DmaBatchResult> results(run);
  for (uint64_t done = 0; done < n;) {
    ops.clear();
    for (uint64_t i = 0; i < run && done + i < n; ++i) {
      ops.push_back(core::MapRequest{.mem = {.buffer_id = buffer,
                                             .offset_bytes = ((done + i) % buffer_pages) * kPage,
                                             .length_bytes = kPage}});
    }
    broker.MapUnmapBatch(kNic, "nic0", ops, absl::MakeSpan(results.data(), ops.size()));
    for (size_t i = 0; i < ops.size(); ++i) {
      if (!results[i].status.ok()) std::abort();
    }
    done += ops.size();
  }
}

void BM_Recover(benchmark::State& state) {
  const auto engine = KvEngine(state.range(0));
  const uint64_t mappings = uint64_t(state.range(1));
  const std::string dir = TempDir() + "/state";
  const KvOptions kv{.engine = engine, .dir = dir};
  uint64_t size_bytes = 0;
  {
    core::DurableState empty;
    auto store = StateStore::Open({.kv = kv}, &empty);
    if (!store.ok()) {
      state.SkipWithError(std::string(store.status().message()).c_str());
      return;
    }
    auto broker = core::Broker::Create(core::DefaultTopology(), {.journal = store->get()});
    const uint64_t buffer_pages = 1024;
    auto buffer =
        (*broker)->AllocBuffer(kNic, "nic0", buffer_pages * kPage, core::Placement::kScattered);
    MapMany(**broker, buffer->buffer_id, buffer_pages, mappings, 1024);
    size_bytes = (*store)->Stats().size_bytes;
  }
  for (auto _ : state) {
    const absl::Time start = absl::Now();
    core::DurableState recovered;
    RecoveryInfo info;
    auto store = StateStore::Open({.kv = kv}, &recovered, &info);
    const absl::Time read = absl::Now();
    const size_t recovered_mappings = recovered.mappings.size();
    auto broker = core::Broker::Restore(core::DefaultTopology(), {.journal = store->get()},
                                        std::move(recovered));
    const absl::Time done = absl::Now();
    if (!broker.ok() || recovered_mappings != mappings) {
      state.SkipWithError("restore failed");
      return;
    }
    state.SetIterationTime(absl::ToDoubleSeconds(done - start));
    state.counters["read_s"] = absl::ToDoubleSeconds(read - start);
    state.counters["restore_s"] = absl::ToDoubleSeconds(done - read);
  }
  state.counters["store_MB"] = double(size_bytes) / 1e6;
  state.counters["bytes_per_mapping"] = double(size_bytes) / double(mappings);
  state.SetLabel(std::string(KvEngineName(engine)));
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}
BENCHMARK(BM_Recover)
    ->ArgsProduct({{int(KvEngine::kLmdb), int(KvEngine::kSqlite), int(KvEngine::kRocksdb)},
                   {100'000, 1'000'000}})
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// engine -1: no journal.
void BM_BatchMapUnmap(benchmark::State& state) {
  const int engine = int(state.range(0));
  const std::string dir = TempDir() + "/state";
  std::unique_ptr<StateStore> store;
  if (engine >= 0) {
    core::DurableState empty;
    auto s = StateStore::Open({.kv = {.engine = KvEngine(engine), .dir = dir}}, &empty);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.status().message()).c_str());
      return;
    }
    store = *std::move(s);
  }
  auto broker = core::Broker::Create(core::DefaultTopology(), {.journal = store.get()});
  constexpr uint64_t kRun = 512;
  auto buffer = (*broker)->AllocBuffer(kNic, "nic0", kRun * kPage, core::Placement::kScattered);
  std::vector<core::DmaBatchOp> ops;
  std::vector<core::DmaBatchResult> results(2 * kRun);
  std::vector<core::Iova> live;
  for (auto _ : state) {
    ops.clear();
    for (core::Iova a : live) ops.push_back(core::UnmapRequest{a});
    for (uint64_t i = 0; i < kRun; ++i) {
      ops.push_back(core::MapRequest{.mem = {.buffer_id = buffer->buffer_id,
                                             .offset_bytes = i * kPage,
                                             .length_bytes = kPage}});
    }
    (*broker)->MapUnmapBatch(kNic, "nic0", ops, absl::MakeSpan(results.data(), ops.size()));
    live.clear();
    for (size_t i = ops.size() - kRun; i < ops.size(); ++i) live.push_back(results[i].map.dma_addr);
  }
  state.SetItemsProcessed(int64_t(state.iterations() * kRun));  // map+unmap pairs
  state.SetLabel(engine < 0 ? "none" : std::string(KvEngineName(KvEngine(engine))));
  broker->reset();
  store.reset();
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}
BENCHMARK(BM_BatchMapUnmap)
    ->Arg(-1)
    ->Arg(int(KvEngine::kLmdb))
    ->Arg(int(KvEngine::kSqlite))
    ->Arg(int(KvEngine::kRocksdb));

}  // namespace
}  // namespace iommu::store
